//! Binary payloads (capability `binary`): bodies, results and stream items
//! that are bytes travel in WebSocket binary frames, both ways, over ws://
//! and wss://, with and without signed frames; a peer without the
//! capability gets JSON arrays; corrupted or malformed binary frames end
//! only the offending link, with 4002 (signed) or 4000.

mod support;

use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff};
use agent_tunnel::protocol::binary::{self, BinFrame, Kind};
use agent_tunnel::protocol::frame::{Frame, Outcome};
use agent_tunnel::protocol::handshake::{ClientHandshake, Established, Identity};
use agent_tunnel::protocol::signed::{Signer, Verifier, AGENT_TO_SERVER, SERVER_TO_AGENT};
use agent_tunnel::protocol::{close, codec, Bytes, Caps, Event, Secret, StreamOptions};
use agent_tunnel::server::AgentServer;
use agent_tunnel::HookError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::certs::pki;
use support::raw;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "binary-secret";

/// Deterministic bytes that do not compress or repeat in short runs.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Setup {
    server: AgentServer,
    agent: AgentClient,
    name: String,
    _dir: tempfile::TempDir,
}

/// A server (TLS and signing as asked) and one connected agent; both serve
/// `rev` (the bytes reversed) and `len` (how many bytes).
async fn setup(tls: bool, sign: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = AgentServer::builder().secret(SECRET).sign_frames(sign);
    let pki = pki("binary CA");
    if tls {
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &pki.server_cert_pem).unwrap();
        std::fs::write(&key, &pki.server_key_pem).unwrap();
        builder = builder.tls_pem_files(&cert, &key);
    }
    let server = builder.start("127.0.0.1:0").await.unwrap();
    server.on_hook(
        "len",
        |b: Bytes, _| async move { Ok::<_, HookError>(b.len()) },
    );
    server.on_hook("rev", |b: Bytes, _| async move {
        Ok::<_, HookError>(Bytes::from(b.iter().rev().copied().collect::<Vec<u8>>()))
    });
    let url = match tls {
        true => format!("wss://localhost:{}", server.local_addr().port()),
        false => format!("ws://{}", server.local_addr()),
    };
    let mut client = AgentClient::builder(&url, SECRET)
        .reconnect(Backoff::disabled())
        .on_hook(
            "len",
            |b: Bytes, _| async move { Ok::<_, HookError>(b.len()) },
        )
        .on_hook("rev", |b: Bytes, _| async move {
            Ok::<_, HookError>(Bytes::from(b.iter().rev().copied().collect::<Vec<u8>>()))
        });
    if tls {
        client = client.tls_ca_pem(pki.ca_pem.clone());
    }
    let agent = client.connect().await.unwrap();
    let name = agent.name().unwrap().to_string();
    Setup {
        server,
        agent,
        name,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_travel_as_binary_frames_both_ways_over_ws_and_wss_signed_or_not() {
    for (tls, sign) in [(false, false), (false, true), (true, false), (true, true)] {
        let Setup {
            server,
            agent,
            name,
            _dir,
        } = setup(tls, sign).await;
        let link = server.agent(&name).unwrap().link().clone();
        assert!(link.peer_caps().contains(Caps::BINARY));
        let body = Bytes::from(noise(256 * 1024, 7));
        let out_before = server.counters().bytes_out;

        // Server → agent: a binary request, a binary result.
        let back: Bytes = server.send_to(name.as_str(), "rev", &body).await.unwrap();
        let mut expected = body.to_vec();
        expected.reverse();
        assert_eq!(&back[..], &expected[..], "tls {tls} sign {sign}");
        // Bytes went as bytes: the same as a JSON array of numbers would
        // have been at least three times bigger.
        let sent = server.counters().bytes_out - out_before;
        assert!(
            sent < body.len() as u64 + 1024,
            "{sent} bytes written for a body of {}",
            body.len()
        );

        // Agent → server, and a JSON result for a binary body.
        let n: usize = agent.send("len", &body).await.unwrap();
        assert_eq!(n, body.len());
        let back: Bytes = agent
            .send("rev", &Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(&back[..], b"cba");
        // Empty bytes are bytes too.
        let n: usize = agent.send("len", &Bytes::new()).await.unwrap();
        assert_eq!(n, 0);
        // A `Vec<u8>` is a JSON array, and `Bytes` reads from one.
        let n: usize = agent.send("len", &vec![1u8, 2, 3]).await.unwrap();
        assert_eq!(n, 3);
        // Untyped: a binary result is the JSON array of its bytes.
        let v: Value = server
            .send_to(name.as_str(), "rev", &Bytes::from_static(&[1, 2]))
            .await
            .unwrap();
        assert_eq!(v, json!([2, 1]));
        agent.close().await;
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_message_limit_fails_locally_with_invalid_message() {
    let Setup {
        server,
        agent,
        name,
        _dir,
    } = setup(false, false).await;
    let limit = server
        .agent(&name)
        .unwrap()
        .link()
        .config()
        .max_message_bytes;
    let big = Bytes::from(vec![0u8; limit + 1]);
    let err = agent.send::<_, usize>("len", &big).await.unwrap_err();
    assert_eq!(err.code(), "INVALID_MESSAGE", "{err}");
    // The link is fine afterwards.
    let n: usize = agent.send("len", &Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(n, 2);
    agent.close().await;
    server.shutdown().await;
}

/// The process's resident memory, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

const FILE_BYTES: usize = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_file_streams_from_agent_to_server_byte_identical_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.dump");
    let mut sum = Sha256::new();
    {
        let mut file = std::fs::File::create(&path).unwrap();
        for i in 0..(FILE_BYTES / (1024 * 1024)) {
            let block = noise(1024 * 1024, i as u64 + 1);
            sum.update(&block);
            std::io::Write::write_all(&mut file, &block).unwrap();
        }
    }
    let expected = hex::encode(sum.finalize());

    let server = AgentServer::builder()
        .secret(SECRET)
        .sign_frames(true)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let agent = AgentClient::builder(&format!("ws://{}", server.local_addr()), SECRET)
        .reconnect(Backoff::disabled())
        // Streams the file as 64 KiB chunks of bytes; answers its SHA-256.
        .on_hook("fetch", |path: String, call| async move {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| HookError::new("IO", e.to_string()))?;
            let mut sink = call.stream::<Bytes>();
            let mut sum = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| HookError::new("IO", e.to_string()))?;
                if n == 0 {
                    break;
                }
                let chunk = buf.get(..n).unwrap_or_default();
                sum.update(chunk);
                sink.send(&Bytes::copy_from_slice(chunk))
                    .await
                    .map_err(|e| HookError::new("STREAM", e.to_string()))?;
            }
            Ok::<_, HookError>(hex::encode(sum.finalize()))
        })
        .connect()
        .await
        .unwrap();
    let name = agent.name().unwrap().to_string();
    let queue_bound = server
        .agent(&name)
        .unwrap()
        .link()
        .config()
        .queued_bytes_limit();

    let base = rss();
    let mut peak_rss = base;
    let mut peak_queued = 0usize;
    let mut stream = server
        .send_to_streaming::<_, Bytes, String>(
            name.as_str(),
            "fetch",
            &path.to_string_lossy(),
            StreamOptions::new(Duration::from_secs(300)),
        )
        .await
        .unwrap();
    let mut got = Sha256::new();
    let mut received = 0usize;
    let mut chunks = 0usize;
    let agents_sum = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("stream stalled")
            .expect("stream ended without its result")
            .unwrap();
        match event {
            Event::Item(chunk) => {
                received += chunk.len();
                got.update(&chunk);
                chunks += 1;
                if chunks % 16 == 0 {
                    peak_rss = peak_rss.max(rss());
                    peak_queued = peak_queued.max(agent.stats().queued_bytes);
                }
            }
            Event::Progress(_) => {}
            Event::End(sum) => break sum,
        }
    };
    assert_eq!(received, FILE_BYTES);
    assert_eq!(hex::encode(got.finalize()), expected);
    assert_eq!(agents_sum, expected);
    assert!(stream.peak_buffered() <= agent_tunnel::protocol::DEFAULT_CREDIT as usize);
    assert!(
        peak_queued <= queue_bound,
        "agent queued {peak_queued} bytes, bound {queue_bound}"
    );
    // Neither side held the file: growth stays well under its 50 MiB.
    let growth = peak_rss.saturating_sub(base);
    eprintln!(
        "50 MiB streamed in {chunks} chunks; RSS growth {} KiB, agent queue peak {} KiB",
        growth / 1024,
        peak_queued / 1024
    );
    assert!(growth < 32 * 1024 * 1024, "RSS grew by {growth} bytes");
    agent.close().await;
    server.shutdown().await;
}

/// A raw agent that announces `caps`.
async fn raw_session(server: &AgentServer, caps: Caps) -> (raw::Ws, Established) {
    let mut ws = raw::open(server.local_addr()).await;
    let secret = Secret::from(SECRET);
    let mut hs = ClientHandshake::new(Identity::default(), Default::default()).with_caps(caps);
    let hello = codec::decode(&raw::next_text(&mut ws).await).unwrap();
    let auth = hs.on_hello(&secret, hello).unwrap();
    raw::send(&mut ws, &codec::encode(&auth)).await;
    let answer = codec::decode(&raw::next_text(&mut ws).await).unwrap();
    let est = hs.on_answer(&secret, answer).expect("welcome");
    (ws, est)
}

async fn next_binary(ws: &mut raw::Ws) -> Bytes {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out reading")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Binary(b) => return b,
            Message::Close(c) => panic!("closed while waiting for a binary frame: {c:?}"),
            _ => continue,
        }
    }
}

async fn plain_server() -> AgentServer {
    let server = AgentServer::builder()
        .secret(SECRET)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    server.on_hook("blob", |n: usize, _| async move {
        Ok::<_, HookError>(Bytes::from(vec![7u8; n]))
    });
    server.on_hook(
        "len",
        |b: Bytes, _| async move { Ok::<_, HookError>(b.len()) },
    );
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_capability_gets_json_arrays_and_may_not_send_binary() {
    let server = plain_server().await;
    let (mut ws, est) = raw_session(&server, Caps::NONE).await;
    assert!(!est.session.caps.contains(Caps::BINARY));
    raw::send(&mut ws, &raw::req(1, "blob", "3")).await;
    match raw::decode(&raw::next_text(&mut ws).await) {
        Frame::Res(res) => {
            assert_eq!(res.id, 1);
            assert!(matches!(res.outcome, Outcome::Ok(b) if b.get() == "[7,7,7]"));
        }
        other => panic!("expected res, got {other:?}"),
    }
    // Its JSON array reaches a hook that takes bytes.
    raw::send(&mut ws, &raw::req(2, "len", "[1,2,3,4]")).await;
    match raw::decode(&raw::next_text(&mut ws).await) {
        Frame::Res(res) => assert!(matches!(res.outcome, Outcome::Ok(b) if b.get() == "4")),
        other => panic!("expected res, got {other:?}"),
    }
    // A binary frame from it breaks the protocol.
    let frame = binary::encode(Kind::Req, 3, br#"{"action":"len"}"#, b"xy");
    ws.send(Message::Binary(Bytes::from(frame))).await.unwrap();
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::PROTOCOL_ERROR, "{reason}");
    assert!(reason.contains("capability"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_binary_frame_with_signing_on_closes_with_4002() {
    let server = AgentServer::builder()
        .secret(SECRET)
        .sign_frames(true)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    server.on_hook(
        "len",
        |b: Bytes, _| async move { Ok::<_, HookError>(b.len()) },
    );
    server.on_hook("blob", |n: usize, _| async move {
        Ok::<_, HookError>(Bytes::from(vec![9u8; n]))
    });
    let (mut ws, est) = raw_session(&server, Caps::SUPPORTED).await;
    assert!(est.session.sign && est.session.caps.contains(Caps::BINARY));
    let mut signer = Signer::new(est.session.key.clone(), AGENT_TO_SERVER);
    let mut verifier = Verifier::new(est.session.key.clone(), SERVER_TO_AGENT);
    let signed = |signer: &mut Signer, frame: Vec<u8>| {
        let mut msg = vec![0u8; agent_tunnel::protocol::signed::BINARY_PREFIX];
        msg.extend_from_slice(&frame);
        signer.sign_binary(&mut msg);
        msg
    };

    // A good signed binary request, then a text one: one sequence for both.
    let head = binary::req_head("len", Some(5_000), None, None);
    let msg = signed(&mut signer, binary::encode(Kind::Req, 1, &head, b"12345"));
    ws.send(Message::Binary(Bytes::from(msg))).await.unwrap();
    let answer = raw::next_text(&mut ws).await;
    match raw::decode(verifier.verify(&answer).expect("server frame verifies")) {
        Frame::Res(res) => assert!(matches!(res.outcome, Outcome::Ok(b) if b.get() == "5")),
        other => panic!("expected res, got {other:?}"),
    }
    raw::send(&mut ws, &signer.sign(&raw::req(2, "blob", "4"))).await;
    let answer = next_binary(&mut ws).await;
    let frame = verifier
        .verify_binary(&answer)
        .expect("server binary frame verifies");
    assert_eq!(
        binary::decode(&frame).unwrap(),
        BinFrame::Res {
            id: 2,
            body: Bytes::from_static(&[9, 9, 9, 9])
        }
    );

    // One flipped bit in the body.
    let mut msg = signed(&mut signer, binary::encode(Kind::Req, 3, &head, b"12345"));
    if let Some(last) = msg.last_mut() {
        *last ^= 1;
    }
    ws.send(Message::Binary(Bytes::from(msg))).await.unwrap();
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    assert!(reason.contains("MAC"), "{reason}");

    // An unsigned binary frame on a signed link: 4002 too.
    let (mut ws, _) = raw_session(&server, Caps::SUPPORTED).await;
    let frame = binary::encode(Kind::Req, 1, &head, b"12345");
    ws.send(Message::Binary(Bytes::from(frame))).await.unwrap();
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_frames_end_only_the_offending_link() {
    let server = plain_server().await;
    let agent = AgentClient::builder(&format!("ws://{}", server.local_addr()), SECRET)
        .reconnect(Backoff::disabled())
        .connect()
        .await
        .unwrap();
    let head = binary::req_head("len", None, None, None);
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("short", vec![1, 0, 0]),
        ("unknown kind", binary::encode(Kind::Req, 1, &head, b"")),
        ("head overrun", {
            let mut f = binary::encode(Kind::Req, 1, &head, b"");
            if let Some(len) = f.get_mut(9..13) {
                len.copy_from_slice(&u32::MAX.to_be_bytes());
            }
            f
        }),
        (
            "bad head",
            binary::encode(Kind::Req, 1, br#"{"act":1}"#, b""),
        ),
        ("head on res", binary::encode(Kind::Res, 1, b"{}", b"")),
        (
            "res nobody waits for",
            binary::encode(Kind::Res, 99, b"", b"x"),
        ),
        (
            "item for no stream",
            binary::encode(Kind::Item, 5, b"", b"x"),
        ),
        (
            "stream credit 0",
            binary::encode(
                Kind::Req,
                1,
                br#"{"action":"len","stream":{"credit":0}}"#,
                b"",
            ),
        ),
        (
            "relay name from an agent",
            binary::encode(Kind::Req, 1, br#"{"action":"len","from":"A0009"}"#, b""),
        ),
    ];
    if let Some((_, f)) = bad.get_mut(1) {
        if let Some(kind) = f.first_mut() {
            *kind = 9;
        }
    }
    for (what, frame) in bad {
        let (mut ws, _) = raw_session(&server, Caps::SUPPORTED).await;
        ws.send(Message::Binary(Bytes::from(frame))).await.unwrap();
        if what == "res nobody waits for" {
            // A late or unknown result is dropped quietly, as in text: the
            // link stays up and answers.
            let ok = binary::encode(Kind::Req, 2, &head, b"abc");
            ws.send(Message::Binary(Bytes::from(ok))).await.unwrap();
            match raw::decode(&raw::next_text(&mut ws).await) {
                Frame::Res(res) => assert_eq!(res.id, 2),
                other => panic!("{what}: expected res, got {other:?}"),
            }
            continue;
        }
        let (code, reason) = raw::close_code(&mut ws).await;
        assert_eq!(code, close::PROTOCOL_ERROR, "{what}: {reason}");
        // The well-behaved agent is untouched.
        let n: usize = agent
            .send("len", &Bytes::from_static(b"fine"))
            .await
            .unwrap();
        assert_eq!(n, 4, "{what}");
    }
    agent.close().await;
    server.shutdown().await;
}
