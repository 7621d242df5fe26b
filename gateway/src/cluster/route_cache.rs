//! A backend worker's cache of the route table: user → `(device, node)`
//! pairs as `HGETALL {u:<user>}:rt` last returned them (an empty list for a
//! user online nowhere, the common case in a big group).
//!
//! Without it a group message reads the route hash of every member (10,000
//! `HGETALL`s for a 10,000-member group). With it a batch reads only the
//! users it has not cached, plus the **route log**, `tern:rt:log`: a Redis
//! stream to which every route write appends the users it gave a route
//! (one entry per worker batch that logs a device in or restores its
//! route, `u` = the users joined by `\n`). A
//! worker reads the log from its cursor in the same pipeline as its
//! misses and forgets every user the log names.
//!
//! # Why no push is missed (docs/cluster.md, "Route cache")
//!
//! The rule the cache must keep: a route written before the device's first
//! sync was answered is seen by every routing of a message committed after
//! that sync. Let `H` be the route's `HSET` (the `UP` script of a login,
//! the `HSETNX` of a restore) and `I` its log append, `H` before `I` (one
//! in-order pipeline on one Redis, or a second round trip after the first
//! answered on Redis Cluster: [`super::RemoteRouter::note`], run by the
//! user's backend worker before it handles the batch). Both finish before
//! `note` returns, so before the device's first sync is answered (it is
//! behind the route change in the same worker's ring) — the condition the
//! uncached read needs too. A worker routing a message
//! committed later reads the log (`X`) after the commit, so after `I`:
//! - if its cached entry for the user was filled before `H`, `I` lies after
//!   the cursor the entry was filled under and `X` returns it: the entry is
//!   forgotten and read again;
//! - a fill is only kept if its log read did not name the user, and the
//!   cursor only moves to the last id that log read returned; a fill that
//!   ran before `H` (possible on Redis Cluster, where the log and the hash
//!   are on different primaries) therefore always has `I` ahead of the
//!   cursor.
//! - When the cursor's own entry is gone from the log (trimmed, or the key
//!   lost), or more than [`LOG_READ_MAX`] entries arrived since,
//!   the cache is emptied and nothing read in that pipeline is kept; a new
//!   cursor is taken by appending a marker entry, and caching starts again
//!   from the next batch.
//!
//! A route removed (`down`, or a dead node) is not logged: a stale entry
//! then sends one record to a node that finds nobody, until the entry's
//! `route_cache_ttl_ms` ends. A displacement (the same device logging in
//! on another node) is the new node's `UP`, so it is logged.
//!
//! Bounds: at most `route_cache_entries_max` users per worker (a full cache
//! is emptied: the simplest bound, and a cold batch costs what no cache
//! costs); the log keeps about [`LOG_ENTRIES_MAX`] entries
//! (`XADD MAXLEN ~`), each naming at most `backend.batch_max` users; one read
//! takes at most [`LOG_READ_MAX`]` + 1` entries.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use redis::{Cmd, RedisResult, Value, cmd};

use super::{conn, routes};
use crate::{config::ClusterSettings, metrics::ClusterMetrics};

/// The route log: a stream of the users given a route, for the caches.
pub const LOG_KEY: &str = "tern:rt:log";

/// Distinct recipients a batch needs before its routes go through the
/// cache: a smaller batch (1:1 chat) reads them directly, one round trip of
/// a few `HGETALL`s, cheaper than the log read (measured: 57 µs direct vs
/// 76 µs through a warm cache for 2 users). Skipping the cache never makes
/// it wrong: the log is read from the cursor whenever it is used.
pub const BATCH_USERS_MIN: usize = 16;

/// Entries the route log keeps (`XADD MAXLEN ~`): a worker that falls
/// further behind than this starts its cache again.
pub const LOG_ENTRIES_MAX: u64 = 1_024;
/// New log entries one read takes at most; more means the cache starts
/// again (cheaper than reading a login storm's worth of users).
pub const LOG_READ_MAX: usize = 64;

/// The command that appends `users` (who were just given a route) to the
/// route log, or a marker entry (no users) when `users` is empty.
pub fn log_append(users: &[&str]) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(LOG_KEY)
        .arg("MAXLEN")
        .arg("~")
        .arg(LOG_ENTRIES_MAX)
        .arg("*")
        .arg("u")
        .arg(users.join("\n"));
    c
}

/// Routes of one user: `(device, node)` pairs, shared (a hit is a
/// reference count, not a copy).
pub type Routes = Arc<[(String, String)]>;

/// One worker's cache (no lock: each worker has its own).
#[derive(Debug)]
pub struct RouteCache {
    entries: HashMap<Box<str>, Cached>,
    /// Id of the last log entry applied: every kept entry has had every
    /// invalidation up to it applied, and the entries after it are still to
    /// be read. `None` when the cache must start again (then `entries` is
    /// empty).
    cursor: Option<String>,
    entries_max: usize,
    ttl: Duration,
}

#[derive(Debug)]
struct Cached {
    routes: Routes,
    /// When the read that filled it was sent.
    at: Instant,
}

/// What a log read said.
enum LogRead {
    /// These users got a route since the cursor (which moved on).
    Fresh(HashSet<String>),
    /// The cache cannot be trusted: it was emptied; keep nothing read now.
    Reset,
}

impl RouteCache {
    /// A cache as `settings` ask, or `None` when `route_cache_entries_max`
    /// is 0 (every batch reads every route).
    pub fn new(settings: &ClusterSettings) -> Option<Self> {
        (settings.route_cache_entries_max > 0).then(|| Self {
            entries: HashMap::new(),
            cursor: None,
            entries_max: settings.route_cache_entries_max,
            ttl: Duration::from_millis(settings.route_cache_ttl_ms),
        })
    }

    /// Forgets `user` (its routes were just cleaned up).
    pub fn forget(&mut self, user: &str) {
        self.entries.remove(user);
    }

    /// The routes of each user, in order, as [`routes::read`] returns them:
    /// from the cache where it holds the user, otherwise from Redis. One
    /// pipeline (the log read and the misses); a second one only for
    /// cached users the log names.
    pub(crate) fn read(
        &mut self,
        link: &mut conn::Link,
        users: &[&str],
        metrics: &ClusterMetrics,
    ) -> RedisResult<Vec<Routes>> {
        let sent_at = Instant::now();
        let mut out: Vec<Option<Routes>> = Vec::with_capacity(users.len());
        let mut missed: Vec<usize> = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let hit = self
                .entries
                .get(*u)
                .filter(|c| sent_at.duration_since(c.at) < self.ttl);
            match hit {
                Some(c) => out.push(Some(c.routes.clone())),
                None => {
                    out.push(None);
                    missed.push(i);
                }
            }
        }
        let mut cmds = Vec::with_capacity(missed.len() + 1);
        cmds.push(match &self.cursor {
            // Inclusive: the cursor's own entry must still be there.
            Some(c) => {
                let mut x = cmd("XRANGE");
                x.arg(LOG_KEY)
                    .arg(c)
                    .arg("+")
                    .arg("COUNT")
                    .arg(LOG_READ_MAX + 1);
                x
            }
            None => log_append(&[]),
        });
        cmds.extend(missed.iter().map(|&i| routes::hgetall(users[i])));
        let replies = link.pipeline(cmds)?;
        let Some((log, fills)) = replies.split_first() else {
            return Err(short_reply());
        };
        if fills.len() != missed.len() {
            return Err(short_reply());
        }
        let verdict = self.apply_log(log);
        for (&i, v) in missed.iter().zip(fills) {
            let r = routes::parse_hash(v);
            if let LogRead::Fresh(named) = &verdict
                && !named.contains(users[i])
            {
                self.insert(users[i], r.clone(), sent_at);
            }
            out[i] = Some(r);
        }
        // Cached answers the log says are stale are read again; after the
        // log read, so these may be kept.
        let mut was_missed = vec![false; users.len()];
        for &i in &missed {
            was_missed[i] = true;
        }
        let again: Vec<usize> = (0..users.len())
            .filter(|&i| !was_missed[i])
            .filter(|&i| match &verdict {
                LogRead::Reset => true,
                LogRead::Fresh(named) => named.contains(users[i]),
            })
            .collect();
        let hits = users.len() - missed.len() - again.len();
        metrics
            .route_cache_hits
            .fetch_add(hits as u64, Ordering::Relaxed);
        metrics
            .route_cache_misses
            .fetch_add((missed.len() + again.len()) as u64, Ordering::Relaxed);
        if matches!(verdict, LogRead::Reset) {
            metrics.route_cache_resets.fetch_add(1, Ordering::Relaxed);
        }
        if !again.is_empty() {
            let reread_at = Instant::now();
            let replies =
                link.pipeline(again.iter().map(|&i| routes::hgetall(users[i])).collect())?;
            if replies.len() != again.len() {
                return Err(short_reply());
            }
            for (&i, v) in again.iter().zip(&replies) {
                let r = routes::parse_hash(v);
                if matches!(verdict, LogRead::Fresh(_)) {
                    self.insert(users[i], r.clone(), reread_at);
                }
                out[i] = Some(r);
            }
        }
        // Every index was a hit, a miss or read again above.
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn insert(&mut self, user: &str, routes: Routes, at: Instant) {
        if self.entries.len() >= self.entries_max && !self.entries.contains_key(user) {
            self.entries.clear();
        }
        self.entries.insert(user.into(), Cached { routes, at });
    }

    /// Applies the reply to the log command of [`Self::read`].
    fn apply_log(&mut self, log: &Value) -> LogRead {
        let Some(cursor) = self.cursor.take() else {
            // We appended a marker: its id is the new cursor. What the same
            // pipeline read may have run before it (Redis Cluster), so
            // nothing of it is kept.
            self.entries.clear();
            self.cursor = conn::bytes(log)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned);
            return LogRead::Reset;
        };
        let reset = |me: &mut Self| {
            me.entries.clear();
            me.cursor = None;
            LogRead::Reset
        };
        let Some(items) = conn::items(log) else {
            return reset(self);
        };
        if items.len() > LOG_READ_MAX {
            // More arrived than one read takes: start again.
            return reset(self);
        }
        let mut named = HashSet::new();
        let mut last = None;
        for (n, item) in items.iter().enumerate() {
            let Some([id, fields]) =
                conn::items(item).and_then(|a| <&[Value; 2]>::try_from(a).ok())
            else {
                return reset(self);
            };
            let Some(id) = conn::bytes(id).and_then(|b| std::str::from_utf8(b).ok()) else {
                return reset(self);
            };
            if n == 0 {
                if id != cursor {
                    // The cursor's entry was trimmed (or the log lost):
                    // entries between may be gone.
                    return reset(self);
                }
            } else {
                let users = conn::pairs(fields)
                    .and_then(|f| f.into_iter().find(|(k, _)| conn::bytes(k) == Some(b"u")))
                    .and_then(|(_, v)| conn::bytes(v))
                    .and_then(|b| std::str::from_utf8(b).ok());
                let Some(users) = users else {
                    return reset(self);
                };
                for u in users.split('\n').filter(|u| !u.is_empty()) {
                    self.entries.remove(u);
                    named.insert(u.to_owned());
                }
            }
            last = Some(id);
        }
        match last {
            Some(id) => {
                self.cursor = Some(id.to_owned());
                LogRead::Fresh(named)
            }
            // The log is empty: the cursor's entry is gone too.
            None => reset(self),
        }
    }
}

fn short_reply() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "route cache: pipeline answered fewer replies than commands",
    ))
}

#[cfg(test)]
#[path = "../../../backend/tests/support/redis_harness.rs"]
mod redis_harness;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{redis_harness::*, *};
    use crate::cluster::conn::Connector;

    /// CPU time (user + system) of process `pid` so far, ms.
    fn cpu_ms(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
        f.iter().sum::<u64>() * 10
    }

    /// Proves a warm cache answers exactly what Redis holds for groups of
    /// 1,000 and 10,000 members (a tenth online on another node, the rest
    /// nowhere), and measures the route read per message with and without
    /// it — the worker's wall time and Redis's CPU — for docs/cluster.md:
    /// `cargo test --release -p tern-gateway --lib route_read_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand (docs/cluster.md, Route cache)"]
    fn route_read_cost() {
        let server = RedisServer::start(ServerOptions::DURABLE);
        let pid = server.pid().unwrap();
        let connector = Connector::new(&[server.url()], false, Duration::from_secs(10)).unwrap();
        let mut link = connector.link();
        let metrics = ClusterMetrics::default();
        for g in [2usize, 1_000, 10_000] {
            let users: Vec<String> = (0..g).map(|i| format!("m{g}-{i}")).collect();
            let seed = users
                .iter()
                .step_by(10)
                .map(|u| {
                    let mut c = cmd("HSET");
                    c.arg(routes::key(u)).arg("d0").arg("n2");
                    c
                })
                .collect();
            link.pipeline(seed).unwrap();
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            let reps: u32 = 100;
            let (t, cpu) = (Instant::now(), cpu_ms(pid));
            let mut direct = Vec::new();
            for _ in 0..reps {
                direct = routes::read(&mut link, &refs).unwrap();
            }
            let (off, off_cpu) = (
                t.elapsed() / reps,
                (cpu_ms(pid) - cpu) * 1000 / u64::from(reps),
            );
            let mut cache = RouteCache::new(&ClusterSettings::default()).unwrap();
            // The first read takes a cursor, the second fills.
            for _ in 0..2 {
                cache.read(&mut link, &refs, &metrics).unwrap();
            }
            let (t, cpu) = (Instant::now(), cpu_ms(pid));
            let mut cached = Vec::new();
            for _ in 0..reps {
                cached = cache.read(&mut link, &refs, &metrics).unwrap();
            }
            let (on, on_cpu) = (
                t.elapsed() / reps,
                (cpu_ms(pid) - cpu) * 1000 / u64::from(reps),
            );
            assert_eq!(direct, cached, "G = {g}");
            assert_eq!(
                cached.iter().filter(|r| !r.is_empty()).count(),
                g.div_ceil(10)
            );
            println!(
                "G = {g}: route read per message: no cache {off:?} (Redis CPU {off_cpu} us), \
                 warm cache {on:?} (Redis CPU {on_cpu} us)"
            );
        }
    }
}
