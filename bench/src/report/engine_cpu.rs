//! CPU time the engine and this process spend while containers are made.
//!
//! What is counted, from /proc (user + system time, in USER_HZ ticks):
//! - dockerd and containerd: their time and their reaped children's (the
//!   change over the window;
//!   they serve the whole machine, so another engineer's work on the
//!   engine at the same time counts too);
//! - the shims of the new containers (`containerd-shim-runc-v2 ... -id
//!   <container>`, started in the window, so all their time), with the
//!   time of the children they reaped: the `runc create/start/exec`
//!   processes, and every exec'd process that ended (the server's warm-up
//!   and health checks run as execs);
//! - this process: the in-process server (the bench client in it only
//!   waits meanwhile).
//!
//! The new containers' cgroups are read too (cgroup v1 cpuacct or v2
//! cpu.stat) but kept out of the total: the exec'd processes that ended
//! are already in their shim's reaped time, and what still runs there (the
//! container's idle init) costs next to nothing.

use std::path::Path;

use super::model::CpuUse;

/// USER_HZ, the unit of /proc/<pid>/stat times: 100 on every Linux
/// architecture that Docker runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// (utime + stime, cutime + cstime) of `pid`, in ticks.
fn process_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), so utime (14) is index 11.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((field(11)? + field(12)?, field(13)? + field(14)?))
}

/// Every process: (pid, comm, command line with spaces).
fn processes() -> Vec<(String, String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid = entry.ok()?.file_name().into_string().ok()?;
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        Some((pid, comm.trim().to_string(), cmdline))
    })
    .collect()
}

/// Ticks of dockerd and containerd, with what they reaped (the short-lived
/// `containerd-shim-runc-v2 start` that launches each shim). The shims
/// themselves live on and are counted per container.
fn daemon_ticks() -> u64 {
    processes()
        .iter()
        .filter(|(_, comm, _)| comm == "dockerd" || comm == "containerd")
        .filter_map(|(pid, ..)| process_ticks(pid))
        .map(|(own, reaped)| own + reaped)
        .sum()
}

/// Ticks of this process.
fn own_ticks() -> u64 {
    process_ticks("self").map_or(0, |(own, _)| own)
}

/// Ticks of the shims of `containers`, with what they reaped.
fn shim_ticks(containers: &[String]) -> u64 {
    processes()
        .iter()
        .filter(|(_, comm, cmdline)| {
            comm.starts_with("containerd-shim")
                && containers
                    .iter()
                    .any(|id| cmdline.contains(&format!("-id {id}")))
        })
        .filter_map(|(pid, ..)| process_ticks(pid))
        .map(|(own, reaped)| own + reaped)
        .sum()
}

/// CPU seconds of a container's cgroup, wherever this host keeps it.
fn cgroup_seconds(id: &str) -> Option<f64> {
    let v1 = [
        format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage"),
    ];
    for path in v1 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
        }
    }
    let v2 = [
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
    ];
    for path in v2 {
        if let Ok(text) = std::fs::read_to_string(Path::new(&path)) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|us| us / 1e6);
        }
    }
    None
}

/// Busy ticks of every core together since boot: the first line of
/// /proc/stat (user nice system idle iowait irq softirq steal ...) less
/// idle and iowait. Guest time is already in user and nice.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let (idle, iowait) = (*fields.get(3)?, *fields.get(4)?);
    Some(fields.iter().sum::<u64>() - idle - iowait)
}

/// Busy seconds of every core together since boot (see
/// `machine_busy_ticks`); `None` where /proc/stat cannot be read.
pub fn machine_busy_seconds() -> Option<f64> {
    machine_busy_ticks().map(|ticks| ticks as f64 / TICKS_PER_SECOND)
}

/// The counters at the start of a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    daemons: u64,
    own: u64,
    machine: Option<u64>,
}

impl CpuMark {
    pub fn now() -> Self {
        Self {
            daemons: daemon_ticks(),
            own: own_ticks(),
            machine: machine_busy_ticks(),
        }
    }

    /// What was spent since the mark, `containers` being the ones made in
    /// the window (still running).
    pub fn spent(&self, containers: &[String]) -> CpuUse {
        let seconds = |ticks: u64| ticks as f64 / TICKS_PER_SECOND;
        let engine_daemons = seconds(daemon_ticks().saturating_sub(self.daemons));
        let shims = seconds(shim_ticks(containers));
        let server = seconds(own_ticks().saturating_sub(self.own));
        let cgroups: Vec<f64> = containers
            .iter()
            .filter_map(|c| cgroup_seconds(c))
            .collect();
        CpuUse {
            engine_daemons,
            shims,
            server,
            containers_cgroup: (!cgroups.is_empty()).then(|| cgroups.iter().sum()),
            total: engine_daemons + shims + server,
            machine: self
                .machine
                .zip(machine_busy_ticks())
                .map(|(then, now)| seconds(now.saturating_sub(then))),
        }
    }
}

/// This process's resident set (VmRSS of /proc/self/status), in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(process_ticks("self").is_some());
        assert!(machine_busy_ticks().is_some_and(|t| t > 0));
        assert!(machine_busy_seconds().is_some_and(|s| s > 0.0));
        assert!(rss_kib() > 0);
    }
}
