//! Facts about the host: kernel, CPU, memory, load, disk.

use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpu_flags: Vec<String>,
    pub cores: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load: [f64; 3],
}

pub fn facts() -> HostFacts {
    let mut f = HostFacts {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        ..Default::default()
    };
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        let (model, flags) = parse_cpuinfo(&cpuinfo);
        f.cpu_model = model;
        f.cpu_flags = flags;
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        f.memory_total_bytes = meminfo_kib(&meminfo, "MemTotal") * 1024;
        f.memory_available_bytes = meminfo_kib(&meminfo, "MemAvailable") * 1024;
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        for (i, v) in load.split_whitespace().take(3).enumerate() {
            f.load[i] = v.parse().unwrap_or(0.0);
        }
    }
    f
}

/// The first processor's model name and flags.
fn parse_cpuinfo(text: &str) -> (String, Vec<String>) {
    let mut model = String::new();
    let mut flags = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() && (!model.is_empty() || !flags.is_empty()) {
            break;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim() {
            "model name" | "Model" if model.is_empty() => model = v.trim().to_string(),
            "flags" | "Features" if flags.is_empty() => {
                flags = v.split_whitespace().map(str::to_string).collect()
            }
            _ => {}
        }
    }
    (model, flags)
}

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0)
}

/// True when the agent holds CAP_SYS_RESOURCE, which CRIU needs to read the resource limits of
/// a process running as another user (prlimit). Some containers drop it even for root.
pub fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// CRIU's lazy-pages transfer sizes its pipes above the default 1 MiB `fs.pipe-max-size`, which
/// only works without CAP_SYS_RESOURCE when the limit is raised.
pub fn raise_pipe_max_size() {
    const WANT: u64 = 4 * 1024 * 1024;
    let path = "/proc/sys/fs/pipe-max-size";
    let current: u64 =
        std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if current < WANT {
        if let Err(err) = std::fs::write(path, WANT.to_string()) {
            tracing::warn!(?err, "cannot raise fs.pipe-max-size to {WANT}");
        }
    }
}

/// Frees `len` bytes of `file` from `offset` (a hole: they read as zeros from now on), keeping
/// its size. Used to give back a page image's memory (tmpfs) as soon as it was sent.
pub fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_first_processor() {
        let text = "processor\t: 0\nmodel name\t: Test CPU @ 2GHz\nflags\t\t: fpu sse2 avx\n\n\
                    processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n";
        let (model, flags) = parse_cpuinfo(text);
        assert_eq!(model, "Test CPU @ 2GHz");
        assert_eq!(flags, vec!["fpu", "sse2", "avx"]);
    }

    #[test]
    fn meminfo_values() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), 24_000_000);
        assert_eq!(meminfo_kib(text, "MemAvailable"), 23_000_000);
        assert_eq!(meminfo_kib(text, "Nope"), 0);
    }

    #[test]
    fn facts_of_this_machine() {
        let f = facts();
        assert!(!f.kernel.is_empty());
        assert!(f.memory_total_bytes > 0);
        assert!(f.cores >= 1);
    }
}
