//! The HTTP API over real HTTP, against a real server with real agents.

use std::time::Duration;

use agent_client::AgentClient;
use agent_protocol::HookError;
use agent_server::AgentServer;
use agent_tunnel_admin::client::{Client, HttpMethod as M};
use agent_tunnel_admin::{router, AdminConfig};
use serde_json::{json, Value};

const SECRET: &str = "test-secret";
const TOKEN: &str = "full-token";
const READ_TOKEN: &str = "read-token";

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("did not finish within 30 s")
}

struct Fixture {
    server: AgentServer,
    url: String,
    agents: Vec<AgentClient>,
}

impl Fixture {
    fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.url, token.map(str::to_owned)).unwrap()
    }

    fn admin(&self) -> Client {
        self.client(Some(TOKEN))
    }
}

async fn agent(server: &AgentServer, name: &str) -> AgentClient {
    // Agents whose name ends in an odd digit are in group "odd".
    let odd = name
        .bytes()
        .last()
        .is_some_and(|b| b.is_ascii_digit() && (b - b'0') % 2 == 1);
    AgentClient::builder(&format!("ws://{}", server.local_addr()), SECRET)
        .name(name)
        .label("group", if odd { "odd" } else { "even" })
        .meta("role", "test")
        .no_heartbeat()
        .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
        .on_hook("fail", |_: Value, _| async move {
            Err::<(), _>(HookError::new("NOPE", "refused").with_data(json!({"why": 1})))
        })
        .on_hook("slow", |ms: u64, _| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HookError>(ms)
        })
        .connect()
        .await
        .unwrap()
}

async fn fixture(names: &[&str], config: AdminConfig) -> Fixture {
    let server = AgentServer::builder()
        .secret(SECRET)
        .no_heartbeat()
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let mut agents = Vec::new();
    for name in names {
        agents.push(within(agent(&server, name)).await);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(server.clone(), config);
    tokio::spawn(agent_tunnel_admin::serve(
        listener,
        app,
        std::future::pending(),
    ));
    Fixture {
        server,
        url,
        agents,
    }
}

fn config() -> AdminConfig {
    AdminConfig::new(TOKEN).read_only_token(READ_TOKEN)
}

async fn get(c: &Client, path: &str) -> (u16, Value) {
    let r = within(c.request(M::GET, path, None)).await.unwrap();
    (r.status, r.json())
}

async fn post(c: &Client, path: &str, body: &str) -> (u16, Value) {
    let r = within(c.request(M::POST, path, Some(body.as_bytes().to_vec())))
        .await
        .unwrap();
    (r.status, r.json())
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn every_route_but_health_needs_a_valid_token() {
    let f = fixture(&["a1"], config()).await;
    for token in [None, Some("wrong"), Some("full-tokenx"), Some("")] {
        let c = f.client(token);
        for path in [
            "/v1/agents",
            "/v1/stats",
            "/v1/info",
            "/metrics",
            "/v1/agents/a1",
            "/v1/nope",
        ] {
            let (status, body) = get(&c, path).await;
            assert_eq!(
                (status, code(&body)),
                (401, "UNAUTHORIZED"),
                "{path} with {token:?}"
            );
        }
        let (status, body) = post(&c, "/v1/agents/a1/call/echo", "1").await;
        assert_eq!((status, code(&body)), (401, "UNAUTHORIZED"));
    }
    // A token sent another way than as a bearer token is not one.
    let r = within(
        Client::new(&f.url, Some(format!("x{TOKEN}")))
            .unwrap()
            .request(M::GET, "/v1/agents", None),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let anon = f.client(None);
    assert_eq!(get(&anon, "/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(
        get(&anon, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
    assert_eq!(get(&f.admin(), "/v1/stats").await.0, 200);
}

#[tokio::test]
async fn a_read_only_token_reads_but_changes_nothing() {
    let f = fixture(&["a1"], config()).await;
    let ro = f.client(Some(READ_TOKEN));
    assert_eq!(get(&ro, "/v1/agents").await.0, 200);
    assert_eq!(get(&ro, "/v1/agents/a1").await.0, 200);
    for path in [
        "/v1/agents/a1/call/echo",
        "/v1/call/echo",
        "/v1/agents/a1/disconnect",
        "/v1/agents/a1/revoke",
        "/v1/agents/a1/unrevoke",
    ] {
        let (status, body) = post(&ro, path, "").await;
        assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{path}");
    }
    assert!(f.server.agent("a1").is_some(), "nothing was done");
}

#[tokio::test]
async fn agents_are_listed_paginated_and_shown() {
    let f = fixture(&["a1", "a2", "a3"], config()).await;
    let c = f.admin();
    let (status, page) = get(&c, "/v1/agents?limit=2").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = page["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2"]);
    assert_eq!(page["next"], "a2");
    assert_eq!(page["agents"][0]["meta"]["role"], "test");
    let (_, page) = get(&c, "/v1/agents?limit=2&after=a2").await;
    assert_eq!(page["agents"][0]["name"], "a3");
    assert_eq!(page["next"], Value::Null);
    let (status, one) = get(&c, "/v1/agents/a2").await;
    assert_eq!(status, 200);
    assert_eq!(one["name"], "a2");
    assert!(one["connection_id"].as_u64().is_some());
    assert_eq!(get(&c, "/v1/agents/zz").await.0, 404);
    assert_eq!(code(&get(&c, "/v1/agents/zz").await.1), "UNKNOWN_AGENT");
    for bad in [
        "/v1/agents?limit=0",
        "/v1/agents?limit=abc",
        "/v1/agents?bogus=1",
    ] {
        let (status, body) = get(&c, bad).await;
        assert_eq!((status, code(&body)), (400, "BAD_REQUEST"), "{bad}");
    }
}

#[tokio::test]
async fn a_call_returns_the_agents_result_or_its_error() {
    let f = fixture(&["a1"], config()).await;
    let c = f.admin();
    assert_eq!(
        post(&c, "/v1/agents/a1/call/echo", r#"{"x":[1,2]}"#).await,
        (200, json!({"x": [1, 2]}))
    );
    assert_eq!(
        post(&c, "/v1/agents/a1/call/echo", "").await,
        (200, Value::Null)
    );
    let (status, body) = post(&c, "/v1/agents/a1/call/fail", "{}").await;
    assert_eq!(status, 502);
    assert_eq!(
        body["error"],
        json!({"code": "NOPE", "message": "refused", "remote": true, "data": {"why": 1}})
    );
    let (status, body) = post(&c, "/v1/agents/a1/call/missing", "{}").await;
    assert_eq!((status, code(&body)), (502, "UNKNOWN_ACTION"));
    let (status, body) = post(&c, "/v1/agents/a1/call/slow?timeout_ms=50", "5000").await;
    assert_eq!((status, code(&body)), (504, "TIMEOUT"));
    let (status, body) = post(&c, "/v1/agents/a1/call/echo", "{not json").await;
    assert_eq!((status, code(&body)), (400, "INVALID_MESSAGE"));
    let (status, body) = post(&c, "/v1/agents/nobody/call/echo", "1").await;
    assert_eq!((status, code(&body)), (404, "UNKNOWN_AGENT"));
    let (status, body) = post(&c, "/v1/agents/a1/call/echo?timeout_ms=x", "1").await;
    assert_eq!((status, code(&body)), (400, "BAD_REQUEST"));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let f = fixture(&["a1"], config().max_body_bytes(1024)).await;
    let c = f.admin();
    let big = format!("\"{}\"", "x".repeat(2048));
    let (status, body) = post(&c, "/v1/agents/a1/call/echo", &big).await;
    assert_eq!((status, code(&body)), (413, "PAYLOAD_TOO_LARGE"));
    let (status, body) = post(&c, "/v1/call/echo", &big).await;
    assert_eq!((status, code(&body)), (413, "PAYLOAD_TOO_LARGE"));
    let small = format!("\"{}\"", "x".repeat(500));
    assert_eq!(post(&c, "/v1/agents/a1/call/echo", &small).await.0, 200);
}

#[tokio::test]
async fn a_call_to_many_gives_each_agents_result() {
    let f = fixture(&["a1", "a2"], config()).await;
    let c = f.admin();
    let (status, body) = post(&c, "/v1/call/echo", "7").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"results": [{"agent": "a1", "ok": 7}, {"agent": "a2", "ok": 7}]})
    );
    let (_, body) = post(&c, "/v1/call/fail", "7").await;
    assert_eq!(body["results"][1]["error"]["code"], "NOPE");
}

#[tokio::test]
async fn ndjson_streams_each_result_as_it_arrives() {
    let f = fixture(&["fast", "slow"], config()).await;
    let c = f.admin();
    // Every agent sleeps for the body's milliseconds; "slow" is held back
    // until the fast line has been read, so the order proves streaming.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    f.agents[1].on_hook("race", move |_: Value, _| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok::<_, HookError>("slow")
        }
    });
    f.agents[0].on_hook(
        "race",
        |_: Value, _| async move { Ok::<_, HookError>("fast") },
    );
    let mut lines = within(c.lines(
        M::POST,
        "/v1/call/race",
        Some(b"null".to_vec()),
        "application/x-ndjson",
    ))
    .await
    .unwrap();
    assert_eq!(lines.status, 200);
    let first: Value =
        serde_json::from_str(&within(lines.next_line()).await.unwrap().unwrap()).unwrap();
    assert_eq!(first, json!({"agent": "fast", "ok": "fast"}));
    gate.notify_one();
    let second: Value =
        serde_json::from_str(&within(lines.next_line()).await.unwrap().unwrap()).unwrap();
    assert_eq!(second, json!({"agent": "slow", "ok": "slow"}));
    assert_eq!(within(lines.next_line()).await.unwrap(), None);
}

#[tokio::test]
async fn no_agents_selected_is_404() {
    let f = fixture(&[], config()).await;
    let (status, body) = post(&f.admin(), "/v1/call/echo", "1").await;
    assert_eq!((status, code(&body)), (404, "NO_CONNECTED_AGENTS"));
}

#[tokio::test]
async fn disconnect_revoke_and_unrevoke() {
    let f = fixture(&["a1"], config()).await;
    let c = f.admin();
    let mut events = f.server.events();
    assert_eq!(
        post(&c, "/v1/agents/a1/disconnect", r#"{"reason":"bye"}"#)
            .await
            .0,
        204
    );
    assert!(f.server.agent("a1").is_none());
    let (status, body) = post(&c, "/v1/agents/a1/disconnect", "").await;
    assert_eq!((status, code(&body)), (409, "AGENT_NOT_CONNECTED"));
    let (status, body) = get(&c, "/v1/agents/a1").await;
    assert_eq!((status, code(&body)), (409, "AGENT_NOT_CONNECTED"));
    let (status, body) = post(&c, "/v1/agents/a1/disconnect", "[1]").await;
    assert_eq!((status, code(&body)), (400, "INVALID_MESSAGE"));
    assert_eq!(post(&c, "/v1/agents/a1/revoke", "").await.0, 204);
    assert!(f.server.is_revoked("a1"));
    let (status, body) = post(&c, "/v1/agents/a1/call/echo", "1").await;
    assert_eq!((status, code(&body)), (410, "REVOKED"));
    assert_eq!(post(&c, "/v1/agents/a1/unrevoke", "").await.0, 204);
    assert!(!f.server.is_revoked("a1"));
    drop(events.try_recv());
}

#[tokio::test]
async fn info_stats_and_unknown_routes() {
    let f = fixture(&["a1"], config()).await;
    let c = f.admin();
    let (status, info) = get(&c, "/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["listen"], f.server.local_addr().to_string());
    let (_, stats) = get(&c, "/v1/stats").await;
    assert_eq!(stats["agents"], 1);
    assert!(stats["handshake_failures"].is_object());
    let (status, body) = get(&c, "/v2/whatever").await;
    assert_eq!((status, code(&body)), (404, "NOT_FOUND"));
    let (status, body) = get(&c, "/v1/call/echo").await;
    assert_eq!((status, code(&body)), (405, "METHOD_NOT_ALLOWED"));
    let (status, body) = post(&c, "/v1/stats", "").await;
    assert_eq!((status, code(&body)), (405, "METHOD_NOT_ALLOWED"));
    f.server.shutdown().await;
    let (status, body) = get(&f.client(None), "/readyz").await;
    assert_eq!((status, body), (503, json!({"status": "stopping"})));
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_the_documented_series() {
    let f = fixture(&["a1", "a2"], config()).await;
    let c = f.admin();
    post(&c, "/v1/call/echo", "1").await;
    post(&c, "/v1/agents/a1/call/fail", "1").await;
    // One failed handshake: a wrong secret.
    let wrong = AgentClient::builder(&format!("ws://{}", f.server.local_addr()), "not-the-secret")
        .no_heartbeat()
        .connect()
        .await;
    assert!(wrong.is_err());
    let r = within(c.request(M::GET, "/metrics", None)).await.unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, code: Option<&str>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && code.is_none_or(|c| s.labels.get("code") == Some(c)))
            .unwrap_or_else(|| panic!("no sample {name} {code:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    assert_eq!(value("agent_tunnel_agents", None), 2.0);
    for gauge in [
        "agent_tunnel_handshakes_pending",
        "agent_tunnel_connections",
        "agent_tunnel_reserved_names",
        "agent_tunnel_pending_requests",
        "agent_tunnel_serving_requests",
        "agent_tunnel_running_hooks",
        "agent_tunnel_queued_bytes",
    ] {
        assert!(value(gauge, None) >= 0.0);
    }
    assert_eq!(
        value(
            "agent_tunnel_handshake_failures_total",
            Some("WRONG_SECRET")
        ),
        1.0
    );
    assert_eq!(value("agent_tunnel_links_opened_total", None), 2.0);
    assert_eq!(value("agent_tunnel_calls_total", Some("OK")), 2.0);
    assert_eq!(value("agent_tunnel_calls_total", Some("NOPE")), 1.0);
    assert!(value("agent_tunnel_bytes_total", None) > 0.0);
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "agent_tunnel_call_seconds")
        .expect("the latency histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(
                buckets.len(),
                agent_protocol::link::CALL_LATENCY_BUCKETS.len() + 1
            );
            assert_eq!(buckets.last().map(|b| b.count), Some(3.0));
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn notifications_reach_one_agent_or_all() {
    let f = fixture(&["a1", "a2"], config()).await;
    let c = f.admin();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
    for (agent, name) in f.agents.iter().zip(["a1", "a2"]) {
        let tx = tx.clone();
        agent.on_hook("note", move |v: Value, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((name.to_owned(), v));
                Ok::<_, HookError>(())
            }
        });
    }
    let (status, _) = post(&c, "/v1/agents/a2/notify/note", r#"{"n":1}"#).await;
    assert_eq!(status, 202);
    assert_eq!(
        within(rx.recv()).await,
        Some(("a2".to_owned(), json!({"n": 1})))
    );
    let (status, body) = post(&c, "/v1/notify/note", "2").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"results": [{"agent": "a1", "sent": true}, {"agent": "a2", "sent": true}]})
    );
    let mut got = vec![
        within(rx.recv()).await.unwrap(),
        within(rx.recv()).await.unwrap(),
    ];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [("a1".to_owned(), json!(2)), ("a2".to_owned(), json!(2))]
    );
    let (status, body) = post(&c, "/v1/agents/zz/notify/note", "1").await;
    assert_eq!((status, code(&body)), (404, "UNKNOWN_AGENT"));
    let ro = f.client(Some(READ_TOKEN));
    assert_eq!(post(&ro, "/v1/notify/note", "1").await.0, 403);
}

#[tokio::test]
async fn the_openapi_description_lists_every_route() {
    let f = fixture(&[], config()).await;
    let (status, doc) = get(&f.admin(), "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/info", "get"),
        ("/v1/stats", "get"),
        ("/v1/agents", "get"),
        ("/v1/agents/{name}", "get"),
        ("/v1/agents/{name}/call/{action}", "post"),
        ("/v1/agents/{name}/notify/{action}", "post"),
        ("/v1/agents/{name}/disconnect", "post"),
        ("/v1/agents/{name}/revoke", "post"),
        ("/v1/agents/{name}/unrevoke", "post"),
        ("/v1/call/{action}", "post"),
        ("/v1/notify/{action}", "post"),
        ("/v1/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // It is behind the token like the rest.
    assert_eq!(get(&f.client(None), "/v1/openapi.json").await.0, 401);
}

#[tokio::test]
async fn selectors_choose_the_agents_listed_called_and_notified() {
    let f = fixture(&["a1", "a2", "a3", "a4"], config()).await;
    let c = f.admin();
    let names = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a[if key == "agents" { "name" } else { "agent" }]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let (status, page) = get(&c, "/v1/agents?selector=group%3Dodd").await;
    assert_eq!(status, 200);
    assert_eq!(names(&page, "agents"), ["a1", "a3"]);
    assert_eq!(page["agents"][0]["labels"], json!({"group": "odd"}));
    let (_, page) = get(&c, "/v1/agents?selector=group%3Deven&limit=1").await;
    assert_eq!(
        (names(&page, "agents"), page["next"].clone()),
        (vec!["a2".to_owned()], json!("a2"))
    );
    let (_, page) = get(&c, "/v1/agents?selector=group%3Deven&limit=1&after=a2").await;
    assert_eq!(names(&page, "agents"), ["a4"]);
    let (_, page) = get(&c, "/v1/agents?selector=name%20in%20(a2%2Ca3)").await;
    assert_eq!(names(&page, "agents"), ["a2", "a3"]);

    let (status, body) = post(&c, "/v1/call/echo?selector=group%3Deven&concurrency=1", "5").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"results": [{"agent": "a2", "ok": 5}, {"agent": "a4", "ok": 5}]})
    );
    let mut lines = within(c.lines(
        M::POST,
        "/v1/call/echo?selector=group%3Dodd",
        Some(b"6".to_vec()),
        "application/x-ndjson",
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    while let Some(line) = within(lines.next_line()).await.unwrap() {
        got.push(
            serde_json::from_str::<Value>(&line).unwrap()["agent"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    got.sort();
    assert_eq!(got, ["a1", "a3"]);

    let (status, body) = post(&c, "/v1/call/echo?selector=group%3Dnone", "1").await;
    assert_eq!((status, code(&body)), (404, "NO_CONNECTED_AGENTS"));
    for bad in [
        "/v1/call/echo?selector=%3D%3D",
        "/v1/notify/echo?selector=a%20in%20()",
    ] {
        let (status, body) = post(&c, bad, "1").await;
        assert_eq!((status, code(&body)), (400, "BAD_REQUEST"), "{bad}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("selector: "));
    }
    let (status, body) = get(&c, "/v1/agents?selector=%21").await;
    assert_eq!((status, code(&body)), (400, "BAD_REQUEST"));

    let (status, body) = post(&c, "/v1/notify/echo?selector=group%3Dodd", "1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"results": [{"agent": "a1", "sent": true}, {"agent": "a3", "sent": true}]})
    );
}

#[test]
fn debug_output_never_shows_a_token() {
    let config = AdminConfig::new("full-secret-token").read_only_token("read-secret-token");
    let client = Client::new("http://127.0.0.1:1", Some("client-secret-token".into())).unwrap();
    let text = format!(
        "{config:?} {client:?} {:?}",
        agent_tunnel_admin::Token::new("tok-secret")
    );
    for secret in [
        "full-secret-token",
        "read-secret-token",
        "client-secret-token",
        "tok-secret",
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("redacted"));
}
