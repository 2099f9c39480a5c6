//! The results table, the targets of issue 4, and BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::Duration;

use crate::scenarios::Plan;
use crate::sys;

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    SeqA2S,
    SeqS2A,
    FlightA2S,
    FlightS2A,
    FanOut(usize),
    MemIdle(usize),
    MemAfter(usize),
    Handshakes,
}

impl Scenario {
    fn label(self, depth: usize) -> String {
        match self {
            Scenario::SeqA2S => "Sequential round trips, agent → server".into(),
            Scenario::SeqS2A => "Sequential round trips, server → agent".into(),
            Scenario::FlightA2S => format!("{depth} calls in flight on one link, agent → server"),
            Scenario::FlightS2A => format!("{depth} calls in flight on one link, server → agent"),
            Scenario::FanOut(n) => format!("`send_all` to {} agents, one full round", thousands(n)),
            Scenario::MemIdle(n) => {
                format!("Server memory per idle agent ({} agents)", thousands(n))
            }
            Scenario::MemAfter(n) => format!(
                "Server memory per agent after one round of traffic ({} agents)",
                thousands(n)
            ),
            Scenario::Handshakes => "Handshakes per second".into(),
        }
    }

    /// The scenario whose baselines this one is compared with: baselines have
    /// no server → agent direction (jsonrpsee servers cannot call clients; a
    /// raw echo is the same code either way), so that direction is compared
    /// with the agent → server baselines.
    fn baseline(self) -> Scenario {
        match self {
            Scenario::SeqS2A => Scenario::SeqA2S,
            Scenario::FlightS2A => Scenario::FlightA2S,
            other => other,
        }
    }
}

/// Who was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Imp {
    Tunnel,
    TunnelSigned,
    Raw,
    Rpc,
}

impl Imp {
    pub fn label(self) -> &'static str {
        match self {
            Imp::Tunnel => "agent-tunnel",
            Imp::TunnelSigned => "agent-tunnel, signed frames",
            Imp::Raw => "raw tokio-tungstenite",
            Imp::Rpc => "jsonrpsee",
        }
    }
}

/// One figure.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    /// Per second; higher is better.
    Rate(f64),
    /// Lower is better.
    Time(Duration),
    /// Bytes; lower is better.
    Bytes(f64),
}

impl Value {
    fn raw(self) -> f64 {
        match self {
            Value::Rate(r) => r,
            Value::Time(d) => d.as_secs_f64(),
            Value::Bytes(b) => b,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub scenario: Scenario,
    pub imp: Imp,
    pub value: Value,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub note: String,
    /// What one call cost the whole process, where measured.
    pub per_call: Option<PerCall>,
}

/// Process-wide cost of one call: CPU time (user + system, both ends),
/// heap allocations and context switches.
#[derive(Debug, Clone, Copy)]
pub struct PerCall {
    pub cpu: Duration,
    pub allocs: f64,
    pub switches: f64,
}

pub struct Report {
    pub plan: Plan,
    pub entries: Vec<Entry>,
    pub elapsed: Duration,
    pub command: String,
    pub body_bytes: usize,
    /// 1-minute load average before and after the run.
    pub load: (Option<f64>, Option<f64>),
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn fmt_value(scenario: Scenario, v: Value) -> String {
    match v {
        Value::Rate(r) => {
            let unit = match scenario {
                Scenario::Handshakes => "handshakes/s",
                _ => "calls/s",
            };
            format!("{} {unit}", thousands(r.round() as usize))
        }
        Value::Time(d) => fmt_duration(d),
        Value::Bytes(b) => format!("{:.1} KiB", b / 1024.0),
    }
}

impl Report {
    fn find(&self, scenario: Scenario, imp: Imp) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.scenario == scenario && e.imp == imp)
    }

    /// `imp`'s figure divided by the baseline's, in the same scenario.
    fn ratio(&self, scenario: Scenario, imp: Imp, base: Imp) -> Option<f64> {
        let a = self.find(scenario, imp)?.value.raw();
        let b = self.find(scenario.baseline(), base)?.value.raw();
        (b > 0.0).then(|| a / b)
    }

    fn ratio_cell(&self, e: &Entry, base: Imp) -> String {
        if e.imp == base || matches!(e.imp, Imp::Raw | Imp::Rpc) {
            return "—".into();
        }
        self.ratio(e.scenario, e.imp, base)
            .map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
    }

    /// The results as a Markdown table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        t.push_str("| Scenario | Implementation | Median | p50 | p99 | vs raw tungstenite | vs jsonrpsee | Notes |\n");
        t.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
        for e in &self.entries {
            let mut note = e.note.clone();
            if e.imp == Imp::TunnelSigned {
                if let Some(r) = self.ratio(e.scenario, Imp::TunnelSigned, Imp::Tunnel) {
                    note = format!("signed/unsigned {r:.2}×; {note}");
                }
            }
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                e.scenario.label(self.plan.depth),
                e.imp.label(),
                fmt_value(e.scenario, e.value),
                e.p50.map_or_else(|| "—".into(), fmt_duration),
                e.p99.map_or_else(|| "—".into(), fmt_duration),
                self.ratio_cell(e, Imp::Raw),
                self.ratio_cell(e, Imp::Rpc),
                note,
            );
        }
        t
    }

    /// The targets of issue 4 item 3, each with its measured ratio.
    pub fn targets(&self) -> String {
        let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
        let mut ratio_row = |what: String, r: Option<f64>, min: Option<f64>, max: Option<f64>| {
            let met = r.map(|r| min.is_none_or(|m| r >= m) && max.is_none_or(|m| r <= m));
            rows.push((
                what,
                r.map_or_else(|| "—".into(), |r| format!("{r:.2}×")),
                met,
            ));
        };
        for (s, dir) in [
            (Scenario::SeqA2S, "agent → server"),
            (Scenario::SeqS2A, "server → agent"),
        ] {
            ratio_row(
                format!("Sequential ≥ 0.85× raw tungstenite ({dir})"),
                self.ratio(s, Imp::Tunnel, Imp::Raw),
                Some(0.85),
                None,
            );
            ratio_row(
                format!("Sequential ≥ 1.5× jsonrpsee ({dir})"),
                self.ratio(s, Imp::Tunnel, Imp::Rpc),
                Some(1.5),
                None,
            );
        }
        for (s, dir) in [
            (Scenario::FlightA2S, "agent → server"),
            (Scenario::FlightS2A, "server → agent"),
        ] {
            ratio_row(
                format!(
                    "{} in flight ≥ 0.6× raw tungstenite ({dir})",
                    self.plan.depth
                ),
                self.ratio(s, Imp::Tunnel, Imp::Raw),
                Some(0.6),
                None,
            );
            ratio_row(
                format!("{} in flight ≥ 2.5× jsonrpsee ({dir})", self.plan.depth),
                self.ratio(s, Imp::Tunnel, Imp::Rpc),
                Some(2.5),
                None,
            );
        }
        let small = Scenario::FanOut(self.plan.fan_small);
        ratio_row(
            format!(
                "`send_all` to {} within 1.5× of the raw fan-out (time ratio)",
                thousands(self.plan.fan_small)
            ),
            self.ratio(small, Imp::Tunnel, Imp::Raw),
            None,
            Some(1.5),
        );
        let big = Scenario::FanOut(self.plan.fan_big);
        let big_time = self.find(big, Imp::Tunnel).map(|e| e.value);
        rows.push((
            format!(
                "`send_all` to {} works; its time is reported",
                thousands(self.plan.fan_big)
            ),
            big_time.map_or_else(
                || "—".into(),
                |v| {
                    let r = self
                        .ratio(big, Imp::Tunnel, Imp::Raw)
                        .map_or_else(String::new, |r| format!(" ({r:.2}× raw)"));
                    format!("{}{r}", fmt_value(big, v))
                },
            ),
            Some(big_time.is_some()),
        ));
        let after = self.find(Scenario::MemAfter(self.plan.fan_big), Imp::Tunnel);
        rows.push((
            "Server memory per agent after traffic ≤ 16 KiB".into(),
            after.map_or_else(|| "—".into(), |e| fmt_value(e.scenario, e.value)),
            after.map(|e| e.value.raw() <= 16.0 * 1024.0),
        ));
        let cost = |s: Scenario| {
            self.ratio(s, Imp::TunnelSigned, Imp::Tunnel)
                .map(|r| (1.0 - r) * 100.0)
        };
        for (s, dir) in [
            (Scenario::SeqA2S, "agent → server"),
            (Scenario::SeqS2A, "server → agent"),
        ] {
            let c = cost(s);
            rows.push((
                format!("Signing costs ≤ 15% of sequential throughput ({dir})"),
                c.map_or_else(|| "—".into(), |c| format!("{c:.1}%")),
                c.map(|c| c <= 15.0),
            ));
        }
        let mut t = String::from("| Target (issue 4, item 3) | Measured | Met |\n|---|---:|---|\n");
        for (what, measured, met) in rows {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(t, "| {what} | {measured} | {met} |");
        }
        t
    }

    fn method(&self) -> String {
        let p = &self.plan;
        format!(
            "Body: one typed struct, {body} bytes of JSON, parsed and serialized again by every \
             implementation on both ends. Rates are the median of the trials; p50/p99 are over \
             every call. Sequential: {st} trials of {sc} calls after {sw} warm-up calls. In \
             flight: {depth} calls kept in flight from one task on one connection, {ft} trials of \
             {fc} calls. Fan-out: the server and the agents run in two child processes (this \
             binary re-executed with a hidden subcommand); one round is one `send_all` (or, raw, \
             one write to every connection and a wait for every reply), timed inside the server \
             process; median of the rounds. Memory: the server child's VmRSS (from \
             /proc/self/status) before any agent connects, after all agents connected and \
             {settle} ms of rest, and after one round of traffic; the growth divided by the \
             number of agents. The agents live in the other child process, so none of their \
             memory is counted. Handshakes: {hn} clients connect {hc} at a time to a server in \
             the same process, median of {ht} trials. Every server and baseline uses the same \
             WebSocket buffer sizes (agent-tunnel's `LinkConfig` defaults) and runs on a \
             multi-threaded tokio runtime with one worker per core; everything is on loopback.",
            body = self.body_bytes,
            st = p.seq_trials,
            sc = thousands(p.seq_calls),
            sw = p.seq_warmup,
            depth = p.depth,
            ft = p.flight_trials,
            fc = thousands(p.flight_calls),
            settle = p.settle.as_millis(),
            hn = thousands(p.hs_n),
            hc = p.hs_concurrency,
            ht = p.hs_trials,
        )
    }

    /// What the terminal shows.
    pub fn text(&self) -> String {
        let caveat = if self.plan.mode == "smoke" {
            "Smoke mode: tiny counts; these figures only show that every scenario runs.\n\n"
        } else {
            ""
        };
        format!(
            "\n## Results ({} mode, {} build, {:.0} s)\n\n{caveat}{}\n## Targets\n\n{}\n{}\n",
            self.plan.mode,
            env!("BENCH_PROFILE"),
            self.elapsed.as_secs_f64(),
            self.table(),
            self.targets(),
            self.method()
        )
    }

    /// BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let m = sys::machine();
        let mut s = String::new();
        s.push_str("# Benchmarks\n\n");
        s.push_str(
            "agent-tunnel side by side with raw tokio-tungstenite (an echo over one connection: \
             the limit of this stack) and jsonrpsee (server and WebSocket client, a method that \
             returns its params), measured in one process run on one machine. Ratios compare \
             with the baselines of the same run. Written by the `bench` package; see \
             `bench/src/main.rs`.\n\n",
        );
        let _ = writeln!(
            s,
            "Command (from the workspace root):\n\n```sh\n{}\n```\n",
            self.command
        );
        let _ = writeln!(
            s,
            "The quick mode (`-- --quick`, under a minute) and the CI smoke (`.ci/bench-smoke`, a \
             debug build with tiny counts that only proves every scenario runs) use the same code.\n"
        );
        s.push_str("## Machine and versions\n\n");
        let _ = writeln!(s, "- CPU: {}, {} cores", m.cpu, m.cores);
        let _ = writeln!(s, "- Memory: {}", m.memory);
        let _ = writeln!(s, "- OS: {}", m.kernel);
        let _ = writeln!(
            s,
            "- Compiler: {} ({} profile)",
            env!("BENCH_RUSTC_VERSION"),
            env!("BENCH_PROFILE")
        );
        let crates: Vec<String> = sys::crate_versions()
            .into_iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(s, "- Crates: {}", crates.join(", "));
        if let Some(c) = sys::git_commit() {
            let _ = writeln!(s, "- Commit: {c}");
        }
        let _ = writeln!(
            s,
            "- Mode: {}, whole run {:.0} s",
            self.plan.mode,
            self.elapsed.as_secs_f64()
        );
        let load = |l: Option<f64>| l.map_or_else(|| "unknown".into(), |l| format!("{l:.2}"));
        let _ = writeln!(
            s,
            "- 1-minute load average: {} before the run, {} after (the harness's own load \
             shows in the second; a first figure well above 0 means other work skewed the run)\n",
            load(self.load.0),
            load(self.load.1)
        );
        s.push_str("## Results\n\n");
        s.push_str(
            "Ratios are agent-tunnel's figure divided by the baseline's: above 1 is better for \
             rates, below 1 is better for times and memory. Server → agent rows are compared \
             with the baselines' client → server figures (jsonrpsee servers cannot call their \
             clients; the raw echo is the same code either way).\n\n",
        );
        s.push_str(&self.table());
        s.push_str("\n## Targets\n\n");
        s.push_str(&self.targets());
        s.push_str("\n## Method\n\n");
        s.push_str(&self.method());
        s.push_str("\n\n## What bounds each scenario\n\n");
        s.push_str(&crate::bounds::paragraphs(self));
        s
    }

    pub fn figure(&self, scenario: Scenario, imp: Imp) -> Option<f64> {
        self.find(scenario, imp).map(|e| e.value.raw())
    }

    pub fn per_call(&self, scenario: Scenario, imp: Imp) -> Option<PerCall> {
        self.find(scenario, imp).and_then(|e| e.per_call)
    }

    pub fn ratio_of(&self, scenario: Scenario, imp: Imp, base: Imp) -> Option<f64> {
        self.ratio(scenario, imp, base)
    }
}
