//! The machine limits a c1m run runs into, read from `/proc` and
//! `getrlimit`, and the check that refuses a run which will hit one — with
//! the command that fixes it — before any connection is opened.
//!
//! Reading is the only I/O here; [`check`] is a pure function of the
//! numbers, so its refusals are unit-tested.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File descriptors a worker keeps for itself (stdio, epoll, waker, pipes).
pub const WORKER_FDS_RESERVED: u64 = 64;

/// Default and maximum connections per worker process: under a 20,000-fd
/// cap this leaves room for the reserve.
pub const WORKER_CONNS_MAX: u64 = 19_000;

/// Kernel memory per TCP socket with empty buffers, bytes (struct sock, file,
/// dentry, epoll item): an estimate; a loopback connection is two sockets.
pub const SOCKET_KERNEL_BYTES_EST: u64 = 4 * 1024;

/// User-space bytes per connection in a load worker (slot state, ids, token).
pub const CLIENT_BYTES_EST: u64 = 1024;

/// The share of a (source, target) pair's ephemeral ports a run may use:
/// the rest is left for TIME_WAIT and other programs.
pub const PORT_SHARE_PCT: u64 = 90;

/// The limits that matter, as read on this machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemLimits {
    /// This process's RLIMIT_NOFILE soft limit.
    pub nofile_soft: u64,
    /// Its hard limit (what a worker can raise itself to).
    pub nofile_hard: u64,
    /// `fs.nr_open`: the highest RLIMIT_NOFILE any process may get.
    pub nr_open: u64,
    /// `fs.file-max`: open files system-wide.
    pub file_max: u64,
    /// Files open system-wide now (`fs.file-nr`, first field).
    pub files_open: u64,
    /// `net.core.somaxconn`: the cap on a listener's backlog.
    pub somaxconn: u64,
    /// `net.ipv4.ip_local_port_range`, low end.
    pub port_lo: u64,
    /// High end.
    pub port_hi: u64,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: u64,
    /// `net.ipv4.tcp_tw_reuse`.
    pub tcp_tw_reuse: u64,
    /// MemAvailable, bytes.
    pub mem_available_bytes: u64,
}

/// Reads the limits; a value that cannot be read is 0 (and [`check`] then
/// does not refuse on it).
pub fn read() -> SystemLimits {
    let (soft, hard) = nofile();
    let (lo, hi) = read_pair("/proc/sys/net/ipv4/ip_local_port_range");
    SystemLimits {
        nofile_soft: soft,
        nofile_hard: hard,
        nr_open: read_u64("/proc/sys/fs/nr_open"),
        file_max: read_u64("/proc/sys/fs/file-max"),
        files_open: read_pair("/proc/sys/fs/file-nr").0,
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
        port_lo: lo,
        port_hi: hi,
        tcp_max_syn_backlog: read_u64("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        tcp_tw_reuse: read_u64("/proc/sys/net/ipv4/tcp_tw_reuse"),
        mem_available_bytes: meminfo_kb("MemAvailable") * 1024,
    }
}

/// RLIMIT_NOFILE (soft, hard) of this process.
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the
/// new soft limit.
pub fn raise_nofile() -> u64 {
    let (_, hard) = nofile();
    let r = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass; failure leaves the limit as is.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    nofile().0
}

/// A process's "Max open files" soft limit from `/proc/PID/limits`.
pub fn process_nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A process's resident set size in bytes (`VmRSS` of `/proc/PID/status`).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn read_u64(path: impl AsRef<Path>) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn read_pair(path: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn meminfo_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// What a run needs from the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// Client connections.
    pub conns: u64,
    /// Target addresses.
    pub targets: u64,
    /// Source addresses (0: the kernel's default source).
    pub sources: u64,
    /// Whether the targets are on this machine (every connection is then
    /// two sockets here).
    pub loopback: bool,
    /// The soft fd limit of each gateway process given with `--gateway-pid`.
    pub gateway_nofile: Vec<u64>,
}

/// Why a run would hit a limit, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// More connections per (source, target) pair than ephemeral ports.
    #[error(
        "{per_pair} connections per (source, target) pair, but only {usable} usable ephemeral ports \
         (net.ipv4.ip_local_port_range {lo}-{hi}); fix: --sources {sources_needed} (rotates over \
         127.0.0.2.., bind with IP_BIND_ADDRESS_NO_PORT), or more --target addresses"
    )]
    Ports {
        /// Connections each pair would carry.
        per_pair: u64,
        /// Ports a pair may use.
        usable: u64,
        /// Range low end.
        lo: u64,
        /// Range high end.
        hi: u64,
        /// Sources that would fit.
        sources_needed: u64,
    },
    /// More open files than fs.file-max allows.
    #[error(
        "the run needs about {need} open files system-wide but fs.file-max is {max} \
         ({open} open now); fix: sysctl -w fs.file-max={suggest}"
    )]
    FileMax {
        /// Files needed.
        need: u64,
        /// fs.file-max.
        max: u64,
        /// Open now.
        open: u64,
        /// A value that fits.
        suggest: u64,
    },
    /// A gateway process cannot hold its share of connections.
    #[error(
        "each gateway process gets about {per_gateway} connections but one has an fd limit of \
         {limit}; fix: start more gateway processes (one --target each), or start them under \
         `ulimit -n {suggest}` (at most fs.nr_open = {nr_open})"
    )]
    GatewayNofile {
        /// Connections per gateway.
        per_gateway: u64,
        /// Its limit.
        limit: u64,
        /// A limit that fits.
        suggest: u64,
        /// fs.nr_open.
        nr_open: u64,
    },
    /// A worker process cannot hold even a few connections.
    #[error(
        "RLIMIT_NOFILE hard limit is {hard}: a worker needs more than {reserved}; fix: ulimit -n 20000 (or higher) before running"
    )]
    WorkerNofile {
        /// The hard limit.
        hard: u64,
        /// Reserved fds.
        reserved: u64,
    },
    /// Not enough memory for the sockets.
    #[error(
        "the run needs about {need_mib} MiB (kernel socket memory ~{per_socket} B per socket, \
         plus user space) but only {avail_mib} MiB are available; fix: fewer --conns, or a bigger machine"
    )]
    Memory {
        /// Estimate.
        need_mib: u64,
        /// Available.
        avail_mib: u64,
        /// Per-socket estimate used.
        per_socket: u64,
    },
}

/// Connections one worker process can hold under these limits.
pub fn conns_per_worker(l: &SystemLimits) -> Result<u64, Refusal> {
    if l.nofile_hard <= WORKER_FDS_RESERVED + 1 {
        return Err(Refusal::WorkerNofile {
            hard: l.nofile_hard,
            reserved: WORKER_FDS_RESERVED,
        });
    }
    Ok((l.nofile_hard - WORKER_FDS_RESERVED).min(WORKER_CONNS_MAX))
}

/// Refuses a run that will hit a limit; returns warnings for limits it may
/// brush against.
pub fn check(l: &SystemLimits, need: &Need) -> Result<Vec<String>, Refusal> {
    let mut warnings = Vec::new();
    conns_per_worker(l)?;
    let targets = need.targets.max(1);
    // Ports: the kernel needs a distinct local port per (src, dst) 4-tuple.
    if l.port_hi > l.port_lo {
        let usable = (l.port_hi - l.port_lo + 1) * PORT_SHARE_PCT / 100;
        let per_pair = need.conns.div_ceil(targets * need.sources.max(1));
        if per_pair > usable {
            return Err(Refusal::Ports {
                per_pair,
                usable,
                lo: l.port_lo,
                hi: l.port_hi,
                sources_needed: need.conns.div_ceil(targets * usable),
            });
        }
    }
    let sockets_here = if need.loopback {
        2 * need.conns
    } else {
        need.conns
    };
    if l.file_max > 0 {
        let need_files = sockets_here + l.files_open + 1024;
        if need_files > l.file_max {
            return Err(Refusal::FileMax {
                need: need_files,
                max: l.file_max,
                open: l.files_open,
                suggest: need_files.next_power_of_two(),
            });
        }
    }
    let per_gateway = need.conns.div_ceil(targets);
    for &limit in &need.gateway_nofile {
        if limit < per_gateway + 64 {
            return Err(Refusal::GatewayNofile {
                per_gateway,
                limit,
                suggest: (per_gateway + 1024).min(l.nr_open.max(per_gateway + 1024)),
                nr_open: l.nr_open,
            });
        }
    }
    if l.mem_available_bytes > 0 {
        let need_bytes = sockets_here * SOCKET_KERNEL_BYTES_EST + need.conns * CLIENT_BYTES_EST;
        if need_bytes > l.mem_available_bytes / 10 * 9 {
            return Err(Refusal::Memory {
                need_mib: need_bytes >> 20,
                avail_mib: l.mem_available_bytes >> 20,
                per_socket: SOCKET_KERNEL_BYTES_EST,
            });
        }
    }
    if l.somaxconn > 0 && l.somaxconn < 4096 {
        warnings.push(format!(
            "net.core.somaxconn is {}: connect bursts may see SYN drops (sysctl -w net.core.somaxconn=65535)",
            l.somaxconn
        ));
    }
    if need.conns > 28_000 && need.sources == 0 {
        warnings.push("no --sources: every connection uses 127.0.0.1 as its source".into());
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> SystemLimits {
        SystemLimits {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nr_open: 1_048_576,
            file_max: 2_466_193,
            files_open: 2_000,
            somaxconn: 4096,
            port_lo: 32_768,
            port_hi: 60_999,
            tcp_max_syn_backlog: 2048,
            tcp_tw_reuse: 2,
            mem_available_bytes: 21 << 30,
        }
    }

    fn need(conns: u64, targets: u64, sources: u64) -> Need {
        Need {
            conns,
            targets,
            sources,
            loopback: true,
            gateway_nofile: vec![],
        }
    }

    #[test]
    fn a_million_fits_with_sources_and_refuses_without() {
        // Proves 1M connections to 50 gateways fit this machine's numbers with
        // 8 sources, while 100k to one target without sources is refused with
        // the --sources fix.
        assert!(check(&here(), &need(1_000_000, 50, 8)).is_ok());
        let err = check(&here(), &need(100_000, 1, 0)).unwrap_err();
        assert!(
            matches!(
                err,
                Refusal::Ports {
                    sources_needed: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--sources 4"));
    }

    #[test]
    fn file_max_memory_and_gateway_limits_refuse_with_a_fix() {
        // Proves each limit refuses with the command that fixes it.
        let mut l = here();
        l.file_max = 100_000;
        let e = check(&l, &need(60_000, 4, 4)).unwrap_err();
        assert!(e.to_string().contains("sysctl -w fs.file-max="), "{e}");
        let mut l = here();
        l.mem_available_bytes = 1 << 30;
        assert!(matches!(
            check(&l, &need(500_000, 20, 4)),
            Err(Refusal::Memory { .. })
        ));
        let mut n = need(40_000, 2, 2);
        n.gateway_nofile = vec![20_000, 20_000];
        let e = check(&here(), &n).unwrap_err();
        assert!(e.to_string().contains("ulimit -n"), "{e}");
        let mut l = here();
        l.nofile_hard = 10;
        assert!(matches!(
            conns_per_worker(&l),
            Err(Refusal::WorkerNofile { .. })
        ));
        assert_eq!(conns_per_worker(&here()).unwrap(), WORKER_CONNS_MAX);
    }

    #[test]
    fn reads_this_machine() {
        // Proves the /proc readers find real values here (Linux).
        let l = read();
        assert!(
            l.nofile_hard > 0 && l.port_hi > l.port_lo && l.mem_available_bytes > 0,
            "{l:?}"
        );
        assert!(process_rss_bytes(std::process::id()).unwrap() > 0);
        assert!(process_nofile(std::process::id()).unwrap() > 0);
    }
}
