//! Side-by-side benchmark of agent-tunnel against raw tokio-tungstenite and
//! jsonrpsee (issue 4; DESIGN.md §7).
//!
//! ```text
//! cargo run --release -p bench                          # full mode, a few minutes
//! cargo run --release -p bench -- --quick               # under a minute
//! cargo run --release -p bench -- --write BENCHMARKS.md # also write the report
//! cargo run -p bench -- --smoke                         # CI: every scenario runs once, tiny counts
//! ```
//!
//! Every scenario runs for agent-tunnel and for the baselines in the same
//! process run, with the same ~100-byte JSON body, and the table shows the
//! ratios measured in that run. The fan-out and memory scenarios re-execute
//! this binary as child processes (hidden subcommands `__server` and
//! `__agents`, see `fleet.rs`). Everything stays on loopback addresses
//! (127.0.0.x) and every loop is bounded in count and time.

mod bounds;
mod common;
mod fleet;
mod raw;
mod report;
mod rpc;
mod scenarios;
mod sys;
mod tunnel;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Body, Res};
use report::Report;
use scenarios::Plan;

#[global_allocator]
static ALLOC: sys::CountingAlloc = sys::CountingAlloc;

/// The whole run stops after this, whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);

const USAGE: &str = "usage: bench [--quick | --smoke] [--write FILE]

  (default)      full mode: the figures for BENCHMARKS.md (a few minutes)
  --quick        smaller counts, under a minute
  --smoke        tiny counts, proves every scenario runs (CI); never fails on a figure
  --write FILE   also write the report (table, machine, versions, command) to FILE
  --only LIST    run only these groups (comma-separated), for profiling:
                 links, fleets, handshakes
  --impls LIST   in the link scenarios, run only these (comma-separated):
                 tunnel, signed, raw, rpc";

const GROUPS: [&str; 3] = ["links", "fleets", "handshakes"];
const IMPLS: [&str; 4] = ["tunnel", "signed", "raw", "rpc"];

struct Args {
    plan: Plan,
    write: Option<String>,
    only: Option<Vec<String>>,
    impls: Option<Vec<String>>,
}

impl Args {
    fn runs(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|g| g == group))
    }

    fn impls(&self) -> scenarios::Impls {
        let has = |i: &str| self.impls.as_ref().is_none_or(|l| l.iter().any(|x| x == i));
        scenarios::Impls {
            tunnel: has("tunnel"),
            signed: has("signed"),
            raw: has("raw"),
            rpc: has("rpc"),
        }
    }
}

fn parse_args(args: &[String]) -> Res<Args> {
    let mut plan = Plan::full();
    let mut write = None;
    let mut only = None;
    let mut impls = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => plan = Plan::quick(),
            "--smoke" => plan = Plan::smoke(),
            "--full" => plan = Plan::full(),
            "--write" => write = Some(it.next().ok_or("--write needs a file name")?.to_owned()),
            "--only" => only = Some(list(it.next(), "--only", &GROUPS)?),
            "--impls" => impls = Some(list(it.next(), "--impls", &IMPLS)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Args {
        plan,
        write,
        only,
        impls,
    })
}

fn list(arg: Option<&String>, flag: &str, allowed: &[&str]) -> Res<Vec<String>> {
    let items: Vec<String> = arg
        .ok_or_else(|| format!("{flag} needs a comma-separated list"))?
        .split(',')
        .map(str::to_owned)
        .collect();
    if let Some(bad) = items.iter().find(|g| !allowed.contains(&g.as_str())) {
        return Err(format!(
            "{flag}: unknown {bad:?}; one of {}",
            allowed.join(", ")
        ));
    }
    Ok(items)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Everything runs in a spawned task, on the runtime's workers (one per
    // core), not on the main thread: callers then compete for the same cores
    // as the tasks they call, as in a server.
    let result = runtime.block_on(async move {
        let work = tokio::spawn(async move {
            match args.first().map(String::as_str) {
                Some("__server") => fleet::server_child(&args[1..]).await,
                Some("__agents") => fleet::agents_child(&args[1..]).await,
                _ => {
                    let parsed = parse_args(&args)?;
                    match tokio::time::timeout(RUN_LIMIT, run(parsed)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("the run did not finish within {RUN_LIMIT:?}")),
                    }
                }
            }
        });
        work.await
            .unwrap_or_else(|e| Err(format!("the benchmark task failed: {e}")))
    });
    // Child processes exit here without closing every connection one by one.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Res<()> {
    let (soft, hard) = sys::raise_nofile()?;
    let plan = args.plan.clone();
    let need = plan.fan_big + 1_000;
    if soft < need as libc::rlim_t {
        eprintln!(
            "bench: warning: RLIMIT_NOFILE is {soft} (hard {hard}); {need} descriptors per process are needed for {} agents",
            plan.fan_big
        );
    }
    let body_bytes = Body::json().len();
    eprintln!(
        "bench: {} mode, {} build, body {body_bytes} bytes, descriptors {soft}",
        plan.mode,
        env!("BENCH_PROFILE")
    );
    let load_before = sys::load_average();
    if let Some(load) = load_before.filter(|l| *l > 0.5) {
        eprintln!(
            "bench: warning: the 1-minute load average is {load:.2} before the run; other work on the machine skews the figures"
        );
    }
    let t0 = Instant::now();
    let mut entries = Vec::new();
    if args.runs("links") {
        entries.extend(scenarios::links(&plan, args.impls()).await?);
    }
    if args.runs("fleets") {
        entries.extend(scenarios::fleets(&plan).await?);
    }
    if args.runs("handshakes") {
        entries.extend(scenarios::handshakes(&plan).await?);
    }
    entries.sort_by_key(|e| order(e.scenario, e.imp));
    let mut command = String::from("cargo run");
    if env!("BENCH_PROFILE") == "release" {
        command.push_str(" --release");
    }
    command.push_str(" -p bench");
    let extra: Vec<String> = std::env::args().skip(1).collect();
    if !extra.is_empty() {
        command.push_str(" -- ");
        command.push_str(&extra.join(" "));
    }
    let report = Report {
        plan,
        entries,
        elapsed: t0.elapsed(),
        command,
        body_bytes,
        load: (load_before, sys::load_average()),
    };
    println!("{}", report.text());
    if let Some(path) = args.write {
        std::fs::write(&path, report.markdown()).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!("bench: wrote {path}");
    }
    Ok(())
}

/// Table order: by scenario, then agent-tunnel, signed, raw, jsonrpsee.
fn order(s: report::Scenario, i: report::Imp) -> (usize, usize, usize) {
    use report::{Imp, Scenario};
    let (a, n) = match s {
        Scenario::SeqA2S => (0, 0),
        Scenario::SeqS2A => (1, 0),
        Scenario::FlightA2S => (2, 0),
        Scenario::FlightS2A => (3, 0),
        Scenario::FanOut(n) => (4, n),
        Scenario::MemIdle(n) => (5, n),
        Scenario::MemAfter(n) => (6, n),
        Scenario::Handshakes => (7, 0),
    };
    let b = match i {
        Imp::Tunnel => 0,
        Imp::TunnelSigned => 1,
        Imp::Raw => 2,
        Imp::Rpc => 3,
    };
    (a, n, b)
}
