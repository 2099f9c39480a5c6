//! What the harness asks of the operating system: descriptor limits, resident
//! memory, and a description of the machine and the versions for the report.

use std::path::Path;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft, hard)
/// as they are afterwards.
pub fn raise_nofile() -> Result<(libc::rlim_t, libc::rlim_t), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(format!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            ));
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_owned())
}

/// The machine, as the report names it.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown".to_owned());
    Machine {
        cpu,
        cores,
        memory,
        kernel,
    }
}

/// The 1-minute load average, to show whether the machine was busy.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Versions of the crates that matter, read from the workspace's Cargo.lock.
pub fn crate_versions() -> Vec<(String, String)> {
    const WANTED: [&str; 9] = [
        "agent-protocol",
        "agent-server",
        "agent-client",
        "tokio",
        "tokio-tungstenite",
        "tungstenite",
        "jsonrpsee",
        "serde_json",
        "hmac",
    ];
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut found: Vec<(String, String)> = Vec::new();
    let mut name: Option<&str> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if WANTED.contains(&n) {
                    let v = v.trim_matches('"').to_owned();
                    // Several versions of one crate can be locked: keep them all.
                    match found.iter_mut().find(|(k, _)| k == n) {
                        Some((_, vs)) if !vs.split(", ").any(|x| x == v) => {
                            vs.push_str(", ");
                            vs.push_str(&v);
                        }
                        Some(_) => {}
                        None => found.push((n.to_owned(), v)),
                    }
                }
            }
        }
    }
    found.sort_by_key(|(n, _)| WANTED.iter().position(|w| w == n));
    found
}

/// The commit the harness ran on, with `-dirty` when the tree had changes.
pub fn git_commit() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(&dir)
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str("-dirty");
    }
    Some(commit)
}

/// Counts heap allocations of the whole process, to report allocations per
/// call. One relaxed atomic add per allocation; the same for every
/// implementation.
pub struct CountingAlloc;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every method delegates to the system allocator with the caller's
// arguments unchanged; counting touches no allocator state.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// What the process has used so far: allocations, CPU time, context switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub allocations: u64,
    pub cpu: std::time::Duration,
    pub switches: u64,
}

impl Usage {
    pub fn now() -> Self {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `ru` is valid for writes of one rusage; getrusage fills it.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
        // SAFETY: zero-initialized, and filled by getrusage when `ok`.
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| {
            std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
                + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Usage {
            allocations: ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed),
            cpu: if ok {
                tv(ru.ru_utime) + tv(ru.ru_stime)
            } else {
                Default::default()
            },
            switches: if ok {
                (ru.ru_nvcsw + ru.ru_nivcsw).max(0) as u64
            } else {
                0
            },
        }
    }

    pub fn since(self, earlier: Usage) -> Usage {
        Usage {
            allocations: self.allocations.saturating_sub(earlier.allocations),
            cpu: self.cpu.saturating_sub(earlier.cpu),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.allocations += other.allocations;
        self.cpu += other.cpu;
        self.switches += other.switches;
    }
}
