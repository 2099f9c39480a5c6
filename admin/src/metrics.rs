//! `/metrics`: the server's counts in the Prometheus text format (0.0.4),
//! rendered from [`AgentServer::stats`] at each scrape, plus the calls made
//! through this API.
//!
//! Series (no per-agent labels, so their number stays fixed whatever the
//! fleet's size):
//!
//! | series | type | meaning |
//! |---|---|---|
//! | `agent_tunnel_agents` | gauge | agents connected |
//! | `agent_tunnel_handshakes_pending` | gauge | connections not authenticated yet |
//! | `agent_tunnel_connections` | gauge | connection tasks alive |
//! | `agent_tunnel_reserved_names` | gauge | names held by unfinished handshakes |
//! | `agent_tunnel_pending_requests` | gauge | calls to agents waiting for an answer |
//! | `agent_tunnel_serving_requests` | gauge | agents' calls being served |
//! | `agent_tunnel_running_hooks` | gauge | hook tasks alive |
//! | `agent_tunnel_queued_bytes` | gauge | bytes waiting to be written to agents |
//! | `agent_tunnel_handshake_failures_total{code}` | counter | failed handshakes by code |
//! | `agent_tunnel_api_calls_total{code}` | counter | calls to agents through this API, by outcome (`OK` or the error code) |
//! | `agent_tunnel_api_call_seconds` | histogram | their latency |

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use agent_server::AgentServer;
use parking_lot::Mutex;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Codes kept apart in `agent_tunnel_api_calls_total`; an agent's own codes
/// beyond this many distinct ones count as `OTHER`, so an agent cannot grow
/// the series without bound.
const MAX_CODES: usize = 64;

#[derive(Default)]
struct Counts {
    by_code: BTreeMap<String, u64>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Calls made through the API: outcome codes and latency.
#[derive(Default)]
pub(crate) struct CallMetrics(Mutex<Counts>);

impl CallMetrics {
    /// Records one call's outcome (`OK` or an error code) and duration.
    pub(crate) fn record(&self, code: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut c = self.0.lock();
        let key = if c.by_code.contains_key(code) || c.by_code.len() < MAX_CODES {
            code
        } else {
            "OTHER"
        };
        *c.by_code.entry(key.to_owned()).or_default() += 1;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(c.buckets.iter_mut()) {
            if secs <= *bound {
                *n += 1;
            }
        }
        c.count += 1;
        c.sum += secs;
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// A label value escaped as the text format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of `server`'s counts and the API's calls.
pub(crate) fn render(server: &AgentServer, calls: &CallMetrics) -> String {
    let s = server.stats();
    let mut out = String::with_capacity(2048);
    gauge(
        &mut out,
        "agent_tunnel_agents",
        "Agents connected.",
        s.agents,
    );
    gauge(
        &mut out,
        "agent_tunnel_handshakes_pending",
        "Connections not authenticated yet.",
        s.handshakes,
    );
    gauge(
        &mut out,
        "agent_tunnel_connections",
        "Connection tasks alive.",
        s.connections,
    );
    gauge(
        &mut out,
        "agent_tunnel_reserved_names",
        "Names held by unfinished handshakes.",
        s.reserved_names,
    );
    gauge(
        &mut out,
        "agent_tunnel_pending_requests",
        "Calls to agents waiting for an answer.",
        s.pending_requests,
    );
    gauge(
        &mut out,
        "agent_tunnel_serving_requests",
        "Agents' calls being served.",
        s.serving_requests,
    );
    gauge(
        &mut out,
        "agent_tunnel_running_hooks",
        "Hook tasks alive.",
        s.running_hooks,
    );
    gauge(
        &mut out,
        "agent_tunnel_queued_bytes",
        "Bytes waiting to be written to agents.",
        s.queued_bytes,
    );
    let name = "agent_tunnel_handshake_failures_total";
    let _ = writeln!(
        out,
        "# HELP {name} Failed handshakes by code.\n# TYPE {name} counter"
    );
    for (code, n) in server.handshake_failure_counts() {
        let _ = writeln!(out, "{name}{{code=\"{}\"}} {n}", label(code));
    }
    let c = calls.0.lock();
    let name = "agent_tunnel_api_calls_total";
    let _ = writeln!(
        out,
        "# HELP {name} Calls to agents through the HTTP API by outcome.\n# TYPE {name} counter"
    );
    for (code, n) in &c.by_code {
        let _ = writeln!(out, "{name}{{code=\"{}\"}} {n}", label(code));
    }
    let name = "agent_tunnel_api_call_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of calls to agents through the HTTP API.\n# TYPE {name} histogram"
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(c.buckets.iter()) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.count);
    let _ = writeln!(out, "{name}_sum {}", c.sum);
    let _ = writeln!(out, "{name}_count {}", c.count);
    out
}
