//! The commands that operate a running server through its HTTP API.

use std::io::{IsTerminal, Write};
use std::time::UNIX_EPOCH;

use agent_tunnel_admin::client::{Client, HttpMethod as M, Reply};
use serde_json::{json, Value};

use crate::{exit, ApiArgs};

fn client(api: &ApiArgs) -> Result<Client, u8> {
    let token = match &api.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("error: --token-file {}: {e}", path.display());
                return Err(exit::USAGE);
            }
        },
        None => std::env::var("AGENT_TUNNEL_TOKEN").ok(),
    };
    Client::new(&api.api, token).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// A path segment with everything but unreserved characters escaped.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends a request; prints why it failed and gives the exit code, if it did.
async fn request(api: &ApiArgs, method: M, path: &str, body: Option<Vec<u8>>) -> Result<Reply, u8> {
    let c = client(api)?;
    let reply = c.request(method, path, body).await.map_err(|e| {
        eprintln!("error: cannot reach the API at {}: {e}", api.api);
        exit::UNREACHABLE
    })?;
    if reply.status >= 400 {
        print_error(&reply.json(), reply.status);
        return Err(exit::API_ERROR);
    }
    Ok(reply)
}

fn print_error(body: &Value, status: u16) {
    let e = &body["error"];
    let code = e["code"].as_str().unwrap_or("HTTP_ERROR");
    let message = e["message"].as_str().unwrap_or("");
    eprintln!("error: {code}: {message} (HTTP {status})");
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn age(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

pub async fn list(api: &ApiArgs, selector: Option<&str>) -> u8 {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/agents?limit=1000".to_owned();
        if let Some(sel) = selector {
            path.push_str(&format!("&selector={}", segment(sel)));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", segment(a)));
        }
        let page = match request(api, M::GET, &path, None).await {
            Ok(r) => r.json(),
            Err(code) => return code,
        };
        for a in page["agents"].as_array().into_iter().flatten() {
            let labels = a["labels"].as_object().map(|m| {
                m.iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            });
            rows.push([
                a["name"].as_str().unwrap_or("").to_owned(),
                a["peer_addr"].as_str().unwrap_or("").to_owned(),
                age(a["connected_at_ms"].as_u64().unwrap_or(0)),
                labels.unwrap_or_default(),
            ]);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let header = ["NAME", "PEER", "UP", "LABELS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 3 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    exit::OK
}

pub async fn show(api: &ApiArgs, name: &str) -> u8 {
    match request(api, M::GET, &format!("/v1/agents/{}", segment(name)), None).await {
        Ok(r) => {
            print_json(&r.json());
            exit::OK
        }
        Err(code) => code,
    }
}

fn body_arg(json_arg: Option<&String>) -> Result<Vec<u8>, u8> {
    let Some(text) = json_arg else {
        return Ok(b"null".to_vec());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(_) => Ok(text.as_bytes().to_vec()),
        Err(e) => {
            eprintln!("error: the body is not JSON: {e}");
            Err(exit::USAGE)
        }
    }
}

pub async fn call(
    api: &ApiArgs,
    selector: Option<&str>,
    concurrency: Option<usize>,
    timeout_ms: Option<u64>,
    args: &[String],
) -> u8 {
    let mut query = timeout_ms
        .map(|t| format!("?timeout_ms={t}"))
        .unwrap_or_default();
    let Some(selector) = selector else {
        let (Some(name), Some(action)) = (args.first(), args.get(1)) else {
            eprintln!("error: call NAME ACTION [JSON], or call -l SELECTOR ACTION [JSON]");
            return exit::USAGE;
        };
        let body = match body_arg(args.get(2)) {
            Ok(b) => b,
            Err(code) => return code,
        };
        let path = format!(
            "/v1/agents/{}/call/{}{query}",
            segment(name),
            segment(action)
        );
        return match request(api, M::POST, &path, Some(body)).await {
            Ok(r) => {
                print_json(&r.json());
                exit::OK
            }
            Err(code) => code,
        };
    };
    if args.len() > 2 {
        eprintln!("error: call -l SELECTOR ACTION [JSON] takes no agent name");
        return exit::USAGE;
    }
    for (key, value) in [
        (
            "selector",
            (!selector.is_empty()).then(|| segment(selector)),
        ),
        ("concurrency", concurrency.map(|n| n.to_string())),
    ] {
        if let Some(value) = value {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(&format!("{key}={value}"));
        }
    }
    let action = &args[0];
    let body = match body_arg(args.get(1)) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let c = match client(api) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = format!("/v1/call/{}{query}", segment(action));
    let mut lines = match c
        .lines(M::POST, &path, Some(body), "application/x-ndjson")
        .await
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot reach the API at {}: {e}", api.api);
            return exit::UNREACHABLE;
        }
    };
    if lines.status >= 400 {
        let mut text = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
        }
        print_error(
            &serde_json::from_str(&text).unwrap_or(Value::Null),
            lines.status,
        );
        return exit::API_ERROR;
    }
    // A terminal gets one readable line per agent and a progress bar on
    // stderr; a pipe gets the JSON lines as they come.
    let tty = std::io::stdout().is_terminal();
    let bar = if std::io::stderr().is_terminal() {
        // The total is the count just before the call: only a guide.
        let total = match request(api, M::GET, "/v1/stats", None).await {
            Ok(r) => r.json()["agents"].as_u64().unwrap_or(0),
            Err(_) => 0,
        };
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} answered {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let (mut done, mut failed) = (0u64, 0u64);
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.is_empty() => {}
            Ok(Some(line)) => {
                let v: Value = serde_json::from_str(&line).unwrap_or(json!({ "raw": line }));
                done += 1;
                if v.get("error").is_some() {
                    failed += 1;
                }
                let text = if tty {
                    let name = v["agent"].as_str().unwrap_or("?");
                    match v.get("ok") {
                        Some(ok) => format!("{name}: {ok}"),
                        None => format!(
                            "{name}: error {}: {}",
                            v["error"]["code"].as_str().unwrap_or(""),
                            v["error"]["message"].as_str().unwrap_or("")
                        ),
                    }
                } else {
                    line
                };
                match &bar {
                    Some(bar) => {
                        bar.suspend(|| println!("{text}"));
                        if done > bar.length().unwrap_or(0) {
                            bar.set_length(done);
                        }
                        bar.set_position(done);
                        if failed > 0 {
                            bar.set_message(format!("({failed} failed)"));
                        }
                    }
                    None => println!("{text}"),
                }
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("error: the stream broke: {e}");
                return exit::UNREACHABLE;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    let _ = std::io::stdout().flush();
    if failed > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    }
}

fn reason_body(reason: Option<String>) -> Option<Vec<u8>> {
    reason.map(|r| json!({ "reason": r }).to_string().into_bytes())
}

pub async fn kick(api: &ApiArgs, name: &str, reason: Option<String>) -> u8 {
    let path = format!("/v1/agents/{}/disconnect", segment(name));
    match request(api, M::POST, &path, reason_body(reason)).await {
        Ok(_) => {
            println!("{name} disconnected");
            exit::OK
        }
        Err(code) => code,
    }
}

pub async fn revoke(api: &ApiArgs, name: &str, reason: Option<String>, on: bool) -> u8 {
    let verb = if on { "revoke" } else { "unrevoke" };
    let path = format!("/v1/agents/{}/{verb}", segment(name));
    match request(api, M::POST, &path, reason_body(reason)).await {
        Ok(_) => {
            println!("{name} {verb}d");
            exit::OK
        }
        Err(code) => code,
    }
}

pub async fn stats(api: &ApiArgs) -> u8 {
    match request(api, M::GET, "/v1/stats", None).await {
        Ok(r) => {
            print_json(&r.json());
            exit::OK
        }
        Err(code) => code,
    }
}
