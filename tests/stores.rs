//! Issue 2, item 3: stores. `FileStore` keeps private JSON and leaves no
//! temporary files; a corrupt or unreadable store stops start-up instead of
//! starting fresh; the `NameStore` trait is pluggable, and the server
//! persists a new name before it answers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_tunnel::client::Backoff;
use agent_tunnel::server::{ServerEvent, StoreError, StoreFuture};
use agent_tunnel::{codes, FileStore, MemoryStore, NameStore};
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_server_store_stops_start_up_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for content in ["{ not json", "[1, 2, 3]", r#"{"version": 1}"#] {
        let path = dir.path().join("server.json");
        std::fs::write(&path, content).unwrap();
        let err = within(
            server_builder()
                .store(FileStore::new(&path))
                .start("127.0.0.1:0"),
        )
        .await
        .expect_err("a corrupt store must stop start-up");
        assert_eq!(err.code(), codes::STORE, "{content}: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_client_store_stops_the_client_and_is_left_alone() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    std::fs::write(&path, "{ not json").unwrap();

    let err = within(
        client_builder(&server)
            .store(FileStore::new(&path))
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a corrupt store must stop the client");
    assert_eq!(err.code(), codes::STORE, "{err}");
    let err = within(client_builder(&server).store(FileStore::new(&path)).start())
        .await
        .expect_err("a corrupt store must stop the client");
    assert_eq!(err.code(), codes::STORE, "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    assert!(server.agents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_is_an_error_not_a_fresh_start() {
    // A directory where the file should be cannot be read as one.
    let dir = tempfile::tempdir().unwrap();
    let err = within(
        server_builder()
            .store(FileStore::new(dir.path()))
            .start("127.0.0.1:0"),
    )
    .await
    .expect_err("an unreadable store must stop start-up");
    assert_eq!(err.code(), codes::STORE, "{err}");

    let server = start_server().await;
    let err = within(
        client_builder(&server)
            .store(FileStore::new(dir.path()))
            .start(),
    )
    .await
    .expect_err("an unreadable store must stop the client");
    assert_eq!(err.code(), codes::STORE, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_keep_private_json_and_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let server_file = dir.path().join("server.json");
    let agent_file = dir.path().join("agent.json");
    let server = start(server_builder().store(FileStore::new(&server_file))).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let (c, n) = connect_plain(&server).await;
        names.push((c, n));
    }
    let client = connect(
        &server,
        client_builder(&server).store(FileStore::new(&agent_file)),
    )
    .await;
    let name = client.name().unwrap();

    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["agent.json", "server.json"], "temporary files left");

    for path in [&server_file, &agent_file] {
        let text = std::fs::read_to_string(path).unwrap();
        let doc: Value = serde_json::from_str(&text).expect("the store holds JSON");
        assert!(doc.is_object(), "{text}");
        assert!(
            !text.contains(SECRET),
            "the shared secret was stored: {text}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    // The agent keeps its name.
    let agent_doc = std::fs::read_to_string(&agent_file).unwrap();
    assert!(agent_doc.contains(&name), "{agent_doc}");
}

/// A store of the test's own: counts saves, and can be told to fail them or
/// its load.
#[derive(Default)]
struct Flaky {
    doc: Mutex<Option<Value>>,
    saves: AtomicUsize,
    fail_saves: AtomicBool,
    fail_load: bool,
}

impl NameStore for Flaky {
    fn load(&self) -> StoreFuture<'_, Option<Value>> {
        let result = if self.fail_load {
            Err(StoreError::new("backend unavailable"))
        } else {
            Ok(self.doc.lock().unwrap().clone())
        };
        Box::pin(async move { result })
    }

    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.fail_saves.load(Ordering::SeqCst) {
                return Err(StoreError::new("disk full"));
            }
            *self.doc.lock().unwrap() = Some(doc.clone());
            self.saves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_store_plugs_in_and_a_name_is_persisted_before_the_answer() {
    let store = Arc::new(Flaky::default());
    let server = start(server_builder().store_arc(store.clone())).await;
    let mut events = server.events();
    let at_start = store.saves.load(Ordering::SeqCst);

    let (_a, a_name) = connect_plain(&server).await;
    assert!(
        store.saves.load(Ordering::SeqCst) > at_start,
        "the new name was not saved before the agent was welcomed"
    );
    let _ = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == a_name => Some(()),
        _ => None,
    })
    .await;

    // When the name cannot be saved, the agent is not given it.
    store.fail_saves.store(true, Ordering::SeqCst);
    let err = within(
        client_builder(&server)
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("an unsaved name must not be handed out");
    assert_eq!(err.code(), codes::STORE, "{err}");
    let names: Vec<String> = server
        .agents()
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(names, std::slice::from_ref(&a_name));

    // Once the store works again, so does naming; no name is given twice.
    store.fail_saves.store(false, Ordering::SeqCst);
    let (_b, b_name) = connect_plain(&server).await;
    assert_ne!(b_name, a_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_store_that_fails_to_load_stops_start_up() {
    let failing = Arc::new(Flaky {
        fail_load: true,
        ..Flaky::default()
    });
    let err = within(
        server_builder()
            .store_arc(failing.clone())
            .start("127.0.0.1:0"),
    )
    .await
    .expect_err("a store that fails to load must stop start-up");
    assert_eq!(err.code(), codes::STORE, "{err}");

    let server = start_server().await;
    let err = within(client_builder(&server).store_arc(failing).start())
        .await
        .expect_err("a store that fails to load must stop the client");
    assert_eq!(err.code(), codes::STORE, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_its_name_and_token_in_its_store() {
    let server = start_server().await;
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());
    assert_eq!(store.load().await.unwrap(), None);
    let client = connect(
        &server,
        client_builder(&server).store_arc(Arc::clone(&store)),
    )
    .await;
    let doc = store.load().await.unwrap().expect("the identity was saved");
    let text = doc.to_string();
    assert!(text.contains(&client.name().unwrap()), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

// ------------------------------------------------------------------ issue 8
// Item 12: a client store that cannot save.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_with_store_when_the_first_name_cannot_be_saved() {
    let server = start_server().await;
    let mut events = server.events();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("agent.json");

    let err = within(
        client_builder(&server)
            .store(FileStore::new(&path))
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a name the agent cannot keep must fail connect");
    assert_eq!(err.code(), codes::STORE, "{err}");

    // The server welcomed the agent, then saw it close with 1011: no live
    // agent is left behind.
    let name = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) => Some(a.name().to_owned()),
        _ => None,
    })
    .await;
    assert_eq!(
        wait_disconnected(&mut events, &name).await,
        agent_tunnel::protocol::close::INTERNAL_ERROR
    );
    assert!(server.agents().is_empty());
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_retries_an_unsaved_first_name_and_keeps_it_once_the_store_works() {
    use agent_tunnel::client::ClientEvent;

    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let path = missing.join("agent.json");
    let builder = client_builder(&server)
        .store(FileStore::new(&path))
        .reconnect(
            Backoff::default()
                .initial_delay(std::time::Duration::from_millis(10))
                .max_delay(std::time::Duration::from_millis(50)),
        );
    let mut events = builder.events();
    let client = within(builder.start()).await.unwrap();
    // Two attempts fail on the store; the client is never ready meanwhile.
    let mut failures = 0;
    wait_for(&mut events, |e| match e {
        ClientEvent::Error(e) if e.code() == codes::STORE => {
            failures += 1;
            (failures == 2).then_some(())
        }
        ClientEvent::Ready { name, .. } => panic!("ready as {name} with an unsaved name"),
        ClientEvent::GaveUp(e) => panic!("gave up: {e}"),
        _ => None,
    })
    .await;
    assert!(!client.is_ready());

    // Once the directory exists, the agent is ready under the name it was
    // given first (reclaimed, not a new one), and that name is stored.
    std::fs::create_dir(&missing).unwrap();
    let (name, first_time) = wait_for(&mut events, |e| match e {
        ClientEvent::Ready { name, first_time } => Some((name, first_time)),
        ClientEvent::GaveUp(e) => panic!("gave up: {e}"),
        _ => None,
    })
    .await;
    assert_eq!(name, "A0001", "no name was burnt on the failed saves");
    assert!(!first_time, "the name given first is reclaimed");
    let doc = std::fs::read_to_string(&path).unwrap();
    assert!(doc.contains("A0001"), "{doc}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_save_failure_is_reported_and_the_agent_stays_online() {
    use agent_tunnel::client::ClientEvent;
    use agent_tunnel::HookError;

    let s1 = start_server().await;
    let addr = s1.local_addr();
    let store = Arc::new(Flaky::default());
    let builder = client_builder(&s1).store_arc(store.clone()).reconnect(
        Backoff::default()
            .initial_delay(std::time::Duration::from_millis(10))
            .max_delay(std::time::Duration::from_millis(50)),
    );
    let mut events = builder.events();
    let client = connect(&s1, builder).await;
    assert_eq!(client.name().as_deref(), Some("A0001"));

    // The store breaks, and the server restarts with an empty store: the
    // agent must take a new name it cannot save.
    store.fail_saves.store(true, Ordering::SeqCst);
    within(s1.shutdown()).await;
    let s2 = within(server_builder().start(addr)).await.unwrap();
    s2.on_hook("whoami", |_: Value, call| async move {
        Ok::<_, HookError>(call.peer.name().to_owned())
    });
    let mut store_errors = 0;
    let new = wait_for(&mut events, |e| match e {
        ClientEvent::Error(e) if e.code() == codes::STORE => {
            store_errors += 1;
            None
        }
        ClientEvent::Renamed { new, .. } => Some(new),
        ClientEvent::GaveUp(e) => panic!("gave up: {e}"),
        _ => None,
    })
    .await;
    within(client.wait_ready(LIMIT)).await.unwrap();
    // Reported: the failed drop of the stale name before the new
    // handshake, and the failed save of the new one right after it.
    let rest: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let after = rest
        .iter()
        .filter(|e| matches!(e, ClientEvent::Error(e) if e.code() == codes::STORE))
        .count();
    assert!(store_errors + after >= 2, "{store_errors} + {rest:?}");
    assert!(!rest.iter().any(|e| matches!(e, ClientEvent::GaveUp(_))));
    // Online under the new name, kept in memory.
    let me: String = within(client.send("whoami", &())).await.unwrap();
    assert_eq!(me, new);
    assert!(client.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_save_failed_is_given_on_the_retry() {
    let store = Arc::new(Flaky::default());
    let server = start(server_builder().store_arc(store.clone())).await;
    let once = |name: Option<&str>| {
        let b = client_builder(&server).reconnect(Backoff::disabled());
        match name {
            Some(n) => b.name(n),
            None => b,
        }
    };

    // A chosen name: refused with STORE, then the retry gets it, new.
    store.fail_saves.store(true, Ordering::SeqCst);
    let err = within(once(Some("keeper")).connect())
        .await
        .expect_err("an unsaved name must not be handed out");
    assert_eq!(err.code(), codes::STORE, "{err}");
    store.fail_saves.store(false, Ordering::SeqCst);
    let keeper = connect(&server, once(Some("keeper"))).await;
    assert_eq!(keeper.name().as_deref(), Some("keeper"));
    assert!(server.agent("keeper").unwrap().first_time());

    // An assigned name: the number whose save failed is not burned.
    store.fail_saves.store(true, Ordering::SeqCst);
    let err = within(once(None).connect())
        .await
        .expect_err("an unsaved name must not be handed out");
    assert_eq!(err.code(), codes::STORE, "{err}");
    store.fail_saves.store(false, Ordering::SeqCst);
    let (_first, first) = connect_plain(&server).await;
    assert_eq!(first, "A0001");
    let (_second, second) = connect_plain(&server).await;
    assert_eq!(second, "A0002");
    // And what the store holds agrees.
    let doc = store.doc.lock().unwrap().clone().expect("saved");
    assert_eq!(doc["next"], 3, "{doc}");
    assert_eq!(doc["chosen"], serde_json::json!(["keeper"]), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_cannot_be_saved_changes_nothing() {
    let store = Arc::new(Flaky::default());
    let server = start(server_builder().store_arc(store.clone())).await;
    let (client, name) = connect_plain(&server).await;
    store.fail_saves.store(true, Ordering::SeqCst);
    let err = within(server.revoke(&name, "decommissioned"))
        .await
        .expect_err("an unsaved revocation must not take effect");
    assert_eq!(err.code(), codes::STORE, "{err}");
    assert!(!server.is_revoked(&name));
    assert!(server.agent(&name).is_some_and(|a| a.is_connected()));
    assert!(client.is_ready());
    store.fail_saves.store(false, Ordering::SeqCst);
    within(server.revoke(&name, "decommissioned"))
        .await
        .expect("revoked");
    assert!(server.is_revoked(&name));
}
