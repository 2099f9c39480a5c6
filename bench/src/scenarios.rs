//! The scenarios, each run for agent-tunnel and the baselines with the same
//! body, counts and harness code.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;

use std::collections::HashMap;

use crate::common::{
    bind_addr, in_flight_trial, median, percentile, sequential_trial, warm_up, Body, Context,
    Recorder, Res, Throughput,
};
use crate::fleet::{Fleet, Kind};
use crate::report::{fmt_duration, thousands, Entry, Imp, PerCall, Scenario, Value};
use crate::{raw, rpc, tunnel};

/// Counts for one mode.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    pub seq_warmup: usize,
    pub seq_trials: usize,
    pub seq_calls: usize,
    pub depth: usize,
    pub flight_warmup: usize,
    pub flight_trials: usize,
    pub flight_calls: usize,
    pub fan_small: usize,
    pub fan_small_rounds: usize,
    pub fan_big: usize,
    pub fan_big_rounds: usize,
    pub connect_concurrency: usize,
    pub settle: Duration,
    pub hs_n: usize,
    pub hs_trials: usize,
    pub hs_concurrency: usize,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            mode: "full",
            seq_warmup: 500,
            seq_trials: 15,
            seq_calls: 2_000,
            depth: 64,
            flight_warmup: 2_000,
            flight_trials: 15,
            flight_calls: 20_000,
            fan_small: 1_000,
            fan_small_rounds: 15,
            fan_big: 10_000,
            fan_big_rounds: 7,
            connect_concurrency: 256,
            settle: Duration::from_secs(1),
            hs_n: 2_000,
            hs_trials: 5,
            hs_concurrency: 64,
        }
    }

    pub fn quick() -> Self {
        Plan {
            mode: "quick",
            seq_warmup: 200,
            seq_trials: 5,
            seq_calls: 1_000,
            flight_warmup: 500,
            flight_trials: 5,
            flight_calls: 5_000,
            fan_small: 1_000,
            fan_small_rounds: 5,
            fan_big: 2_000,
            fan_big_rounds: 3,
            settle: Duration::from_millis(500),
            hs_n: 500,
            hs_trials: 3,
            ..Self::full()
        }
    }

    /// Tiny counts: proves every scenario runs, measures nothing worth reading.
    pub fn smoke() -> Self {
        Plan {
            mode: "smoke",
            seq_warmup: 10,
            seq_trials: 2,
            seq_calls: 50,
            flight_warmup: 64,
            flight_trials: 2,
            flight_calls: 200,
            fan_small: 20,
            fan_small_rounds: 2,
            fan_big: 50,
            fan_big_rounds: 2,
            connect_concurrency: 16,
            settle: Duration::from_millis(100),
            hs_n: 20,
            hs_trials: 2,
            hs_concurrency: 8,
            ..Self::full()
        }
    }
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn rate_entry(scenario: Scenario, imp: Imp, t: &Throughput) -> Entry {
    Entry {
        scenario,
        imp,
        value: Value::Rate(t.rate),
        p50: t.p50,
        p99: t.p99,
        note: format!(
            "{} calls in {} trials (slowest {}, fastest {}); per call: {:.1} µs CPU, {:.1} allocations, {:.2} context switches",
            thousands(t.calls),
            t.trials.len(),
            thousands(t.trials.iter().copied().fold(f64::INFINITY, f64::min) as usize),
            thousands(t.trials.iter().copied().fold(0.0, f64::max) as usize),
            t.cpu_per_call.as_secs_f64() * 1e6,
            t.allocs_per_call,
            t.switches_per_call,
        ),
        per_call: Some(PerCall {
            cpu: t.cpu_per_call,
            allocs: t.allocs_per_call,
            switches: t.switches_per_call,
        }),
    }
}

/// Which implementations the link scenarios run (all by default).
#[derive(Debug, Clone, Copy)]
pub struct Impls {
    pub tunnel: bool,
    pub signed: bool,
    pub raw: bool,
    pub rpc: bool,
}

struct TunnelPair {
    server: agent_server::AgentServer,
    client: agent_client::AgentClient,
    a2s: tunnel::AgentToServer,
    s2a: tunnel::ServerToAgent,
}

impl TunnelPair {
    async fn start(sign: bool, plan: &Plan) -> Res<Self> {
        let server = tunnel::server(bind_addr(), sign).await?;
        let client = tunnel::agent(&tunnel::url(server.local_addr())).await?;
        let name = client
            .name()
            .ok_or("the agent has no name after connecting")?;
        let mut pair = TunnelPair {
            a2s: tunnel::AgentToServer {
                client: client.clone(),
                body: Body::sample(),
            },
            s2a: tunnel::ServerToAgent {
                server: server.clone(),
                name,
                body: Body::sample(),
            },
            server,
            client,
        };
        warm_up(&mut pair.a2s, plan.seq_warmup).await?;
        warm_up(&mut pair.s2a, plan.seq_warmup).await?;
        in_flight_trial(&pair.a2s, plan.depth, plan.flight_warmup, None).await?;
        in_flight_trial(&pair.s2a, plan.depth, plan.flight_warmup, None).await?;
        Ok(pair)
    }

    async fn stop(self) {
        self.client.close().await;
        shutdown(&self.server).await;
    }
}

type Recorders = HashMap<(Scenario, Imp), Recorder>;

fn rec(recs: &mut Recorders, s: Scenario, i: Imp) -> &mut Recorder {
    recs.entry((s, i)).or_default()
}

/// Sequential and in-flight calls on one link for every implementation,
/// with their trials interleaved: trial k of every implementation runs
/// before trial k + 1 of any.
pub async fn links(plan: &Plan, impls: Impls) -> Res<Vec<Entry>> {
    progress("links: connecting and warming up");
    let mut tunnel = match impls.tunnel {
        true => Some(TunnelPair::start(false, plan).await?),
        false => None,
    };
    let mut signed = match impls.signed {
        true => Some(TunnelPair::start(true, plan).await?),
        false => None,
    };
    let mut raw = match impls.raw {
        true => {
            let addr = raw::echo_server(bind_addr()).await?;
            let mut c = raw::RawCaller {
                ws: raw::connect(addr).await?,
                body: Body::sample(),
            };
            warm_up(&mut c, plan.seq_warmup).await?;
            let body = Body::sample();
            raw::in_flight_trial(&mut c.ws, &body, plan.depth, plan.flight_warmup, None).await?;
            Some(c)
        }
        false => None,
    };
    let mut rpc = match impls.rpc {
        true => {
            let (handle, addr) = rpc::server(bind_addr()).await?;
            let mut c = rpc::RpcCaller {
                client: rpc::client(addr).await?,
                body: Body::sample(),
            };
            warm_up(&mut c, plan.seq_warmup).await?;
            in_flight_trial(&c, plan.depth, plan.flight_warmup, None).await?;
            Some((handle, c))
        }
        false => None,
    };

    let mut recs = Recorders::new();
    let n = plan.seq_calls;
    progress(&format!(
        "sequential round trips: {} interleaved trials of {n} calls",
        plan.seq_trials
    ));
    for _ in 0..plan.seq_trials {
        for (pair, imp) in [(&mut tunnel, Imp::Tunnel), (&mut signed, Imp::TunnelSigned)] {
            if let Some(p) = pair {
                sequential_trial(&mut p.a2s, n, rec(&mut recs, Scenario::SeqA2S, imp)).await?;
                sequential_trial(&mut p.s2a, n, rec(&mut recs, Scenario::SeqS2A, imp)).await?;
            }
        }
        if let Some(c) = &mut raw {
            sequential_trial(c, n, rec(&mut recs, Scenario::SeqA2S, Imp::Raw)).await?;
        }
        if let Some((_, c)) = &mut rpc {
            sequential_trial(c, n, rec(&mut recs, Scenario::SeqA2S, Imp::Rpc)).await?;
        }
    }
    let (d, n) = (plan.depth, plan.flight_calls);
    progress(&format!(
        "{d} calls in flight: {} interleaved trials of {n} calls",
        plan.flight_trials
    ));
    for _ in 0..plan.flight_trials {
        for (pair, imp) in [(&tunnel, Imp::Tunnel), (&signed, Imp::TunnelSigned)] {
            if let Some(p) = pair {
                let r = rec(&mut recs, Scenario::FlightA2S, imp);
                in_flight_trial(&p.a2s, d, n, Some(r)).await?;
                let r = rec(&mut recs, Scenario::FlightS2A, imp);
                in_flight_trial(&p.s2a, d, n, Some(r)).await?;
            }
        }
        if let Some(c) = &mut raw {
            let r = rec(&mut recs, Scenario::FlightA2S, Imp::Raw);
            raw::in_flight_trial(&mut c.ws, &c.body, d, n, Some(r)).await?;
        }
        if let Some((_, c)) = &rpc {
            let r = rec(&mut recs, Scenario::FlightA2S, Imp::Rpc);
            in_flight_trial(c, d, n, Some(r)).await?;
        }
    }

    for pair in [tunnel, signed].into_iter().flatten() {
        pair.stop().await;
    }
    if let Some(mut c) = raw {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.ws.close(None)).await;
    }
    if let Some((handle, c)) = rpc {
        drop(c);
        let _ = handle.stop();
    }
    Ok(recs
        .into_iter()
        .map(|((s, i), r)| rate_entry(s, i, &r.finish()))
        .collect())
}

async fn shutdown(server: &agent_server::AgentServer) {
    let _ = tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await;
}

/// Connects `n` clients `concurrency` at a time with `connect`, which returns
/// the connection and its own handshake time; returns the connections, the
/// rate and the sorted per-connection times.
async fn connect_all<T, F, Fut>(
    n: usize,
    concurrency: usize,
    connect: F,
) -> Res<(Vec<T>, f64, Vec<Duration>)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Res<T>>,
{
    let t0 = Instant::now();
    let results: Vec<Res<(T, Duration)>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let f = connect();
            async move {
                let t = Instant::now();
                let c = crate::common::timed(f).await?;
                Ok((c, t.elapsed()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for r in results {
        let (c, t) = r?;
        conns.push(c);
        times.push(t);
    }
    times.sort_unstable();
    Ok((conns, rate, times))
}

fn handshake_entry(imp: Imp, rates: &[f64], times: &mut [Duration], what: &str) -> Entry {
    times.sort_unstable();
    Entry {
        scenario: Scenario::Handshakes,
        imp,
        value: Value::Rate(median(rates)),
        p50: Some(percentile(times, 50.0)),
        p99: Some(percentile(times, 99.0)),
        note: what.to_owned(),
        per_call: None,
    }
}

/// Handshakes per second: `hs_n` clients connecting `hs_concurrency` at a
/// time, median of `hs_trials`; p50/p99 of one connection's handshake.
pub async fn handshakes(plan: &Plan) -> Res<Vec<Entry>> {
    let (n, conc) = (plan.hs_n, plan.hs_concurrency);
    let what = format!(
        "{n} clients, {conc} at a time, {} trials; p50/p99: one handshake",
        plan.hs_trials
    );
    let mut out = Vec::new();

    progress("handshakes: agent-tunnel");
    let server = tunnel::server(bind_addr(), false).await?;
    let url = tunnel::url(server.local_addr());
    let (mut rates, mut times) = (Vec::new(), Vec::new());
    for _ in 0..plan.hs_trials {
        let (clients, rate, t) = connect_all(n, conc, || tunnel::agent(&url)).await?;
        rates.push(rate);
        times.extend(t);
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            join_all(clients.iter().map(|c| c.close())),
        )
        .await;
        drop(clients);
        tunnel::wait_gone(&server, Duration::from_secs(30)).await;
    }
    out.push(handshake_entry(
        Imp::Tunnel,
        &rates,
        &mut times,
        &format!("TCP + upgrade + hello/auth/welcome with HMAC proofs both ways; {what}"),
    ));
    shutdown(&server).await;

    progress("handshakes: raw tokio-tungstenite");
    let addr = raw::echo_server(bind_addr()).await?;
    let (mut rates, mut times) = (Vec::new(), Vec::new());
    for _ in 0..plan.hs_trials {
        let (conns, rate, t) = connect_all(n, conc, || raw::connect(addr)).await?;
        rates.push(rate);
        times.extend(t);
        drop(conns);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.push(handshake_entry(
        Imp::Raw,
        &rates,
        &mut times,
        &format!("TCP + WebSocket upgrade only, no authentication; {what}"),
    ));

    progress("handshakes: jsonrpsee");
    let (handle, addr) = rpc::server(bind_addr()).await?;
    let (mut rates, mut times) = (Vec::new(), Vec::new());
    for _ in 0..plan.hs_trials {
        let (conns, rate, t) = connect_all(n, conc, || rpc::client(addr)).await?;
        rates.push(rate);
        times.extend(t);
        drop(conns);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.push(handshake_entry(
        Imp::Rpc,
        &rates,
        &mut times,
        &format!("TCP + WebSocket upgrade only, no authentication; {what}"),
    ));
    let _ = handle.stop();
    Ok(out)
}

/// Fan-out and memory: fleets of agents in child processes. The agent-tunnel
/// and raw fleets of one size are up at the same time and their rounds
/// alternate.
pub async fn fleets(plan: &Plan) -> Res<Vec<Entry>> {
    let mut out = Vec::new();
    let conc = plan.connect_concurrency;
    for (n, rounds) in [
        (plan.fan_small, plan.fan_small_rounds),
        (plan.fan_big, plan.fan_big_rounds),
    ] {
        let mut fleets = Vec::new();
        for (kind, imp) in [(Kind::Tunnel, Imp::Tunnel), (Kind::Raw, Imp::Raw)] {
            progress(&format!("fan-out: connecting {n} agents ({})", imp.label()));
            let f = Fleet::start(kind, n, conc, plan.settle)
                .await
                .ctx(&format!("fan-out to {n} ({})", imp.label()))?;
            fleets.push((imp, f));
        }
        progress(&format!(
            "fan-out to {n} agents: {rounds} alternating rounds"
        ));
        // The first round ran at start; it is counted with the others.
        for _ in 1..rounds {
            for (_, f) in &mut fleets {
                f.round().await?;
            }
        }
        let mut rpc_fleet = None;
        let mut done = Vec::new();
        for (imp, f) in fleets {
            let secs: Vec<f64> = f.rounds.iter().map(Duration::as_secs_f64).collect();
            let mut sorted = f.rounds.clone();
            sorted.sort_unstable();
            out.push(Entry {
                scenario: Scenario::FanOut(n),
                imp,
                value: Value::Time(Duration::from_secs_f64(median(&secs))),
                p50: None,
                p99: None,
                note: format!(
                    "{} rounds, fastest {}, slowest {}; {} agents connected in {:.1} s",
                    f.rounds.len(),
                    fmt_duration(sorted.first().copied().unwrap_or_default()),
                    fmt_duration(sorted.last().copied().unwrap_or_default()),
                    thousands(n),
                    f.connect.as_secs_f64()
                ),
                per_call: None,
            });
            done.push((imp, f.idle_per_agent, f.after_per_agent, f.client_per_agent));
            f.finish().await;
        }
        if n == plan.fan_big {
            // The fan-out fleets are gone: jsonrpsee's server is measured alone.
            progress(&format!("memory with {n} clients (jsonrpsee)"));
            let f = Fleet::start(Kind::Rpc, n, conc, plan.settle)
                .await
                .ctx(&format!("memory with {n} clients (jsonrpsee)"))?;
            done.push((
                Imp::Rpc,
                f.idle_per_agent,
                f.after_per_agent,
                f.client_per_agent,
            ));
            rpc_fleet = Some(f);
            for (imp, idle, after, client) in done {
                out.push(Entry {
                    scenario: Scenario::MemIdle(n),
                    imp,
                    value: Value::Bytes(idle),
                    p50: None,
                    p99: None,
                    note: format!("client side: {:.1} KiB per connection", client / 1024.0),
                    per_call: None,
                });
                let traffic = match imp {
                    Imp::Rpc => "after each client called once",
                    _ => "after one fan-out round",
                };
                out.push(Entry {
                    scenario: Scenario::MemAfter(n),
                    imp,
                    value: Value::Bytes(after),
                    p50: None,
                    p99: None,
                    note: traffic.to_owned(),
                    per_call: None,
                });
            }
        }
        if let Some(f) = rpc_fleet {
            f.finish().await;
        }
    }
    Ok(out)
}
