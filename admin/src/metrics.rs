//! `/metrics`: the server's counts in the Prometheus text format (0.0.4),
//! rendered at each scrape from [`AgentServer::stats`] and
//! [`AgentServer::counters`].
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
//! | `agent_tunnel_links_opened_total` | counter | handshakes that succeeded |
//! | `agent_tunnel_bytes_total{direction}` | counter | bytes read (`in`) and written (`out`) |
//! | `agent_tunnel_calls_total{direction,code}` | counter | calls to agents (`out`) and from agents (`in`) by outcome (`OK` or the error code; at most 64 codes per direction, then `OTHER`) |
//! | `agent_tunnel_call_seconds` | histogram | latency of calls to agents, buckets [`CALL_LATENCY_BUCKETS`] |

use std::fmt::Write;

use agent_protocol::link::CALL_LATENCY_BUCKETS;
use agent_server::AgentServer;

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
pub(crate) fn render(server: &AgentServer) -> String {
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
    let c = server.counters();
    let name = "agent_tunnel_links_opened_total";
    let _ = writeln!(
        out,
        "# HELP {name} Handshakes that succeeded.\n# TYPE {name} counter\n{name} {}",
        c.links_opened
    );
    let name = "agent_tunnel_bytes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Bytes of frames read (in) and written (out).\n# TYPE {name} counter"
    );
    let _ = writeln!(out, "{name}{{direction=\"in\"}} {}", c.bytes_in);
    let _ = writeln!(out, "{name}{{direction=\"out\"}} {}", c.bytes_out);
    let name = "agent_tunnel_calls_total";
    let _ = writeln!(
        out,
        "# HELP {name} Calls to agents (out) and from agents (in) by outcome.\n# TYPE {name} counter"
    );
    for (direction, calls) in [("out", &c.calls_out), ("in", &c.calls_in)] {
        for (code, n) in calls {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{direction}\",code=\"{}\"}} {n}",
                label(code)
            );
        }
    }
    let name = "agent_tunnel_call_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of calls to agents.\n# TYPE {name} histogram"
    );
    for (bound, n) in CALL_LATENCY_BUCKETS.iter().zip(&c.call_latency_buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.call_latency_count);
    let _ = writeln!(out, "{name}_sum {}", c.call_latency_sum);
    let _ = writeln!(out, "{name}_count {}", c.call_latency_count);
    out
}
