//! Process figures from /proc/self (Linux): resident memory and the open
//! file limit.

/// Resident set size in KiB (`VmRSS`), or `None` where /proc is missing.
pub fn rss_kib() -> Option<u64> {
    status_field("VmRSS:")
}

/// Peak resident set size in KiB (`VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    status_field("VmHWM:")
}

fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Open file descriptors of this process.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft and hard limits on open files (`None` for unlimited).
pub fn nofile_limits() -> Option<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| -> Option<Option<u64>> {
        match s? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// Makes sure this process may open at least `needed` files: when the soft
/// limit is lower, raises it to the hard limit with `prlimit(1)` (util-linux;
/// the tests have no libc binding to call setrlimit themselves). Fails with
/// the command to run when that is not enough.
pub fn ensure_nofile(needed: u64) {
    let Some((soft, hard)) = nofile_limits() else {
        eprintln!("cannot read /proc/self/limits; assuming the open-file limit suffices");
        return;
    };
    if soft.is_none_or(|s| s >= needed) {
        return;
    }
    if hard.is_none_or(|h| h >= needed) {
        let target = hard.map_or("unlimited".to_owned(), |h| h.to_string());
        let status = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={target}:{target}"))
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => eprintln!("prlimit could not raise the open-file limit: {other:?}"),
        }
    }
    let soft = nofile_limits().and_then(|(s, _)| s);
    if let Some(s) = soft {
        assert!(
            s >= needed,
            "this test needs {needed} open files but the limit is {s} (hard {hard:?}); \
             run it from a shell with `ulimit -n {needed}` or higher"
        );
    }
}

/// True where [`trim_heap`] can hand free memory back (glibc).
pub const CAN_TRIM: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Hands the allocator's free memory back to the OS where it can (glibc's
/// `malloc_trim`), so that VmRSS shows what the process uses rather than what
/// the allocator keeps cached for later. A no-op on other C libraries.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: `malloc_trim` takes no pointer and only releases memory
        // the allocator holds free; std links glibc on this target.
        unsafe {
            malloc_trim(0);
        }
    }
}
