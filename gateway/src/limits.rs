//! Edge protection shared by the shards and the HTTP edge: allow and deny
//! lists by IP/CIDR ([`EdgeLists`], re-read on SIGHUP through
//! [`crate::reload::on_hup`]), the counters of every refusal
//! ([`LimitMetrics`], in `/metrics`), and the jitter of the
//! `retry_after_ms` that kicks carry ([`Jitter`]).
//!
//! The rate limiters themselves (requests, messages, logins, connections
//! per IP, flapping) are shard-local (`shard/limits.rs`): each shard counts
//! what it sees, on its own thread, without a lock. This module never
//! touches a shard.
//!
//! A list check is a binary search over sorted, disjoint networks: the
//! lists are aggregated once when (re)loaded, so a long list costs
//! `log n` per accepted connection, and the snapshot is swapped in whole
//! (`arc-swap`), so a check never sees half a reload.

use std::{
    net::IpAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::config::ListsSettings;

/// Longest list file read, bytes (a bigger one is refused, not truncated).
pub const LIST_FILE_BYTES_MAX: u64 = 16 << 20;

/// Entries one list (inline and file together) may hold.
pub const LIST_ENTRIES_MAX: usize = 1_000_000;

/// Why a list could not be loaded. The previous lists stay in force.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// An entry is neither an address nor a CIDR network.
    #[error("{entry:?} is not an IP address or CIDR network (line {line})")]
    Entry {
        /// The entry as written (cut to 64 bytes).
        entry: String,
        /// Its 1-based line in a file; 0 for an inline entry.
        line: usize,
    },
    /// A list file could not be read.
    #[error("cannot read list file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A list file or a list is larger than the bounds.
    #[error(
        "list {what} is too large (at most {LIST_FILE_BYTES_MAX} bytes and {LIST_ENTRIES_MAX} entries)"
    )]
    TooLarge {
        /// The file or setting.
        what: String,
    },
}

/// Sorted, disjoint networks: `contains` is a binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nets {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Nets {
    /// Builds the set from networks (overlaps merged).
    fn from_nets(nets: &[IpNet]) -> Self {
        let mut v4: Vec<Ipv4Net> = Vec::new();
        let mut v6: Vec<Ipv6Net> = Vec::new();
        for n in nets {
            match n {
                IpNet::V4(n) => v4.push(*n),
                IpNet::V6(n) => v6.push(*n),
            }
        }
        let mut v4 = Ipv4Net::aggregate(&v4);
        let mut v6 = Ipv6Net::aggregate(&v6);
        v4.sort_by_key(|n| n.network());
        v6.sort_by_key(|n| n.network());
        Self { v4, v6 }
    }

    /// True if no network is listed.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// True if `ip` is in one of the networks. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, from a dual-stack listener) counts as its IPv4
    /// address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                contains_sorted(&self.v4, ip, Ipv4Net::network, |n, ip| n.contains(ip))
            }
            IpAddr::V6(ip) => {
                contains_sorted(&self.v6, ip, Ipv6Net::network, |n, ip| n.contains(ip))
            }
        }
    }
}

/// In disjoint networks sorted by their first address, only the last one
/// starting at or before `ip` can hold it.
fn contains_sorted<N, A: Ord + Copy>(
    nets: &[N],
    ip: A,
    first: impl Fn(&N) -> A,
    holds: impl Fn(&N, &A) -> bool,
) -> bool {
    let after = nets.partition_point(|n| first(n) <= ip);
    after > 0 && holds(&nets[after - 1], &ip)
}

/// Parses list entries: CIDR networks or single addresses (a host route).
pub fn parse_nets(entries: &[String]) -> Result<Nets, ListError> {
    let nets = entries
        .iter()
        .map(|e| parse_entry(e, 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Nets::from_nets(&nets))
}

fn parse_entry(entry: &str, line: usize) -> Result<IpNet, ListError> {
    let e = entry.trim();
    e.parse::<IpNet>()
        .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ListError::Entry {
            entry: e.chars().take(64).collect(),
            line,
        })
}

/// The entries of a list file: one per line; blank lines and `#` comments
/// (whole-line or trailing) are skipped. Bounded in bytes and entries.
fn read_list_file(path: &Path) -> Result<Vec<IpNet>, ListError> {
    let read = |error| ListError::Read {
        path: path.display().to_string(),
        error,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > LIST_FILE_BYTES_MAX {
        return Err(ListError::TooLarge {
            what: path.display().to_string(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if out.len() == LIST_ENTRIES_MAX {
            return Err(ListError::TooLarge {
                what: path.display().to_string(),
            });
        }
        out.push(parse_entry(entry, i + 1)?);
    }
    Ok(out)
}

/// One listener's pair of lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpLists {
    /// Non-empty: only these are admitted.
    pub allow: Nets,
    /// Never admitted (wins over `allow`).
    pub deny: Nets,
}

impl IpLists {
    /// True if `ip` may connect: not denied, and allowed when an allow list
    /// exists.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    fn load(
        allow: &[String],
        allow_file: Option<&Path>,
        deny: &[String],
        deny_file: Option<&Path>,
    ) -> Result<Self, ListError> {
        let one = |inline: &[String], file: Option<&Path>| -> Result<Nets, ListError> {
            let mut nets = inline
                .iter()
                .map(|e| parse_entry(e, 0))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(f) = file {
                nets.extend(read_list_file(f)?);
            }
            if nets.len() > LIST_ENTRIES_MAX {
                return Err(ListError::TooLarge {
                    what: "(inline and file)".into(),
                });
            }
            Ok(Nets::from_nets(&nets))
        };
        Ok(Self {
            allow: one(allow, allow_file)?,
            deny: one(deny, deny_file)?,
        })
    }
}

/// Which edge a list guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// The client listeners (TCP and WebSocket), checked by the shards.
    Client,
    /// The HTTP edge (API, metrics, health), checked by its accept loop.
    Http,
}

/// The allow/deny lists of both edges, as one snapshot each that a SIGHUP
/// replaces whole ([`EdgeLists::reload`]).
#[derive(Debug)]
pub struct EdgeLists {
    settings: ListsSettings,
    client: ArcSwap<IpLists>,
    http: ArcSwap<IpLists>,
    metrics: Arc<LimitMetrics>,
}

impl EdgeLists {
    /// Reads the lists (and their files) of `settings`.
    pub fn load(settings: &ListsSettings, metrics: Arc<LimitMetrics>) -> Result<Self, ListError> {
        let (client, http) = Self::read(settings)?;
        Ok(Self {
            settings: settings.clone(),
            client: ArcSwap::from_pointee(client),
            http: ArcSwap::from_pointee(http),
            metrics,
        })
    }

    fn read(s: &ListsSettings) -> Result<(IpLists, IpLists), ListError> {
        Ok((
            IpLists::load(
                &s.allow,
                s.allow_file.as_deref(),
                &s.deny,
                s.deny_file.as_deref(),
            )?,
            IpLists::load(
                &s.http_allow,
                s.http_allow_file.as_deref(),
                &s.http_deny,
                s.http_deny_file.as_deref(),
            )?,
        ))
    }

    /// Reads the lists again (SIGHUP). On an error the lists in force stay
    /// as they were, both of them.
    pub fn reload(&self) -> Result<(), ListError> {
        let (client, http) = Self::read(&self.settings)?;
        self.client.store(Arc::new(client));
        self.http.store(Arc::new(http));
        Ok(())
    }

    /// True if `ip` may connect to `edge`; a refusal is counted.
    pub fn admits(&self, edge: Edge, ip: IpAddr) -> bool {
        let lists = match edge {
            Edge::Client => &self.client,
            Edge::Http => &self.http,
        };
        let ok = lists.load().admits(ip);
        if !ok {
            let counter = match edge {
                Edge::Client => &self.metrics.client_denied,
                Edge::Http => &self.metrics.http_denied,
            };
            counter.fetch_add(1, Relaxed);
        }
        ok
    }
}

/// Which rate limit refused something (a label of
/// `tern_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Limit {
    /// `requests_per_connection_*`.
    ConnectionRequests,
    /// `messages_per_connection_*`.
    ConnectionMessages,
    /// `messages_per_user_*`.
    UserMessages,
    /// `logins_per_user_*`.
    UserLogins,
    /// `connections_per_ip_*` (refused at accept).
    IpConnections,
    /// Flapping: a device in its ban window (auth refused).
    Flapping,
}

impl Limit {
    const ALL: [Limit; 6] = [
        Self::ConnectionRequests,
        Self::ConnectionMessages,
        Self::UserMessages,
        Self::UserLogins,
        Self::IpConnections,
        Self::Flapping,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectionRequests => "connection_requests",
            Self::ConnectionMessages => "connection_messages",
            Self::UserMessages => "user_messages",
            Self::UserLogins => "user_logins",
            Self::IpConnections => "ip_connections",
            Self::Flapping => "flapping",
        }
    }
}

/// Counters of the edge protection: written by the shards and the HTTP
/// accept loop (relaxed atomics, only when something is refused).
#[derive(Debug, Default)]
pub struct LimitMetrics {
    /// Refusals by a rate limit, by [`Limit`].
    pub rate_limited: [AtomicU64; 6],
    /// Connections kicked for repeated refusals (`Kick{RATE_LIMITED}`).
    pub kicks: AtomicU64,
    /// Devices that started a flapping ban.
    pub flap_bans: AtomicU64,
    /// Client connections refused by the lists (before any allocation).
    pub client_denied: AtomicU64,
    /// HTTP connections refused by the lists.
    pub http_denied: AtomicU64,
    /// Checks let through untracked because a limiter was full
    /// (`limits.tracked_max`), and login counts forgotten because a login
    /// limiter's fixed table needed the slot (`shard/limits.rs`).
    pub untracked: AtomicU64,
}

impl LimitMetrics {
    /// Counts a refusal by `limit`.
    pub fn limited(&self, limit: Limit) {
        self.rate_limited[limit as usize].fetch_add(1, Relaxed);
    }

    /// Writes the families into a `/metrics` scrape.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        {
            let mut d = enc.encode_descriptor(
                "tern_rate_limited",
                "Requests, logins or connections refused by a rate limit, by limit",
                None,
                MetricType::Counter,
            )?;
            for l in Limit::ALL {
                let v = self.rate_limited[l as usize].load(Relaxed);
                ConstCounter::new(v).encode(d.encode_family(&[("limit", l.label())])?)?;
            }
        }
        {
            let mut d = enc.encode_descriptor(
                "tern_list_refused",
                "Connections refused by the allow/deny lists, by edge",
                None,
                MetricType::Counter,
            )?;
            for (edge, c) in [("client", &self.client_denied), ("http", &self.http_denied)] {
                ConstCounter::new(c.load(Relaxed)).encode(d.encode_family(&[("edge", edge)])?)?;
            }
        }
        for (name, help, c) in [
            (
                "tern_rate_limit_kicks",
                "Connections kicked for repeated rate-limit refusals",
                &self.kicks,
            ),
            (
                "tern_flap_bans",
                "Devices refused for a while for reconnecting too often",
                &self.flap_bans,
            ),
            (
                "tern_rate_limit_untracked",
                "Checks let through because a limiter tracked limits.tracked_max keys, or login counts a full login table forgot",
                &self.untracked,
            ),
        ] {
            ConstCounter::new(c.load(Relaxed)).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

/// splitmix64: a small, well-spread generator for `retry_after_ms` jitter
/// (not cryptographic: the values only spread reconnects).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator seeded with `seed` (e.g. the time and the shard id, so
    /// that two shards draw apart).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `min..=max` (`max` below `min` reads as `min`).
    pub fn between(&mut self, min: u32, max: u32) -> u32 {
        let span = u64::from(max.saturating_sub(min)) + 1;
        // `span` ≤ 2^32, so the draw fits u32 after adding `min` ≤ `max`.
        min + (self.next_u64() % span) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Nets {
        parse_nets(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    /// CIDRs of both families and single addresses match what they cover
    /// and nothing else, overlapping entries included; an IPv4-mapped IPv6
    /// peer matches its IPv4 network.
    #[test]
    fn nets_match_ipv4_ipv6_and_mapped() {
        let n = nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.7",
            "2001:db8::/32",
            "127.0.0.2/32",
        ]);
        let yes = [
            "10.2.3.4",
            "192.0.2.7",
            "2001:db8::1",
            "::ffff:10.9.9.9",
            "127.0.0.2",
        ];
        let no = ["11.0.0.1", "192.0.2.8", "2001:db9::1", "127.0.0.3", "::1"];
        for ip in yes {
            assert!(n.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in no {
            assert!(!n.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    /// Deny wins over allow; an empty allow list admits anyone not denied.
    #[test]
    fn deny_wins_and_empty_allow_admits() {
        let l = IpLists {
            allow: nets(&["10.0.0.0/8"]),
            deny: nets(&["10.0.0.1"]),
        };
        assert!(l.admits("10.0.0.2".parse().unwrap()));
        assert!(!l.admits("10.0.0.1".parse().unwrap()));
        assert!(!l.admits("192.0.2.1".parse().unwrap()));
        let open = IpLists {
            allow: Nets::default(),
            deny: nets(&["10.0.0.1"]),
        };
        assert!(open.admits("192.0.2.1".parse().unwrap()));
    }

    /// A bad entry is a typed error naming it (cut short), never a panic;
    /// a file's bad line names its line number.
    #[test]
    fn bad_entries_are_typed_errors() {
        let long = "x".repeat(1000);
        let err = parse_nets(&[long]).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("deny.txt");
        std::fs::write(&f, "# comment\n10.0.0.0/8  # office\n\n300.1.1.1\n").unwrap();
        let err = read_list_file(&f).unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
        std::fs::write(&f, "# comment\n10.0.0.0/8  # office\n\n::1\n").unwrap();
        assert_eq!(read_list_file(&f).unwrap().len(), 2);
    }

    /// The jitter stays within its window, and spreads.
    #[test]
    fn jitter_stays_in_window() {
        let mut j = Jitter::new(7);
        let draws: Vec<u32> = (0..1000).map(|_| j.between(500, 600)).collect();
        assert!(draws.iter().all(|d| (500..=600).contains(d)));
        assert!(draws.iter().any(|&d| d < 520) && draws.iter().any(|&d| d > 580));
        assert_eq!(j.between(9, 9), 9);
    }
}
