//! Presence across nodes, and the node bookkeeping a backend worker does
//! before it handles a batch ([`RemoteRouter::note`]).
//!
//! A user is online while a device of theirs that counts toward presence
//! (not `presence-quiet`) is connected on any live node. Each node's owner
//! shard of a user already knows when the user's first counting device
//! connects there and when the last one leaves; it tells the user's backend
//! worker (`Connected` / `Disconnected`), which keeps two sets in Redis:
//!
//! - `{u:<user>}:pn`: the nodes where the user has a counting device (the
//!   user's hash tag, next to their routes);
//! - `{n:<node>}:pu`: the users with a counting device on that node (so the
//!   users of a node that dies can be found without a scan).
//!
//! `Connected` adds to both and goes on to the domain (ONLINE to friends;
//! a second ONLINE while the user is online elsewhere is harmless).
//! `Disconnected` removes this node from the user's set in one script that
//! answers the nodes left; if one of them is live, the domain is not asked
//! (no OFFLINE: the user is still online elsewhere;
//! `tern_cluster_presence_kept_total`), otherwise it is (OFFLINE).
//!
//! A node that dies cannot say so. The node whose refresh finds its lease
//! gone first claims it (its `SREM` from `tern:nodes` is the one that
//! answers 1) and its cluster thread empties the dead node's user set with
//! `SPOP` (bounded pipelines), removing the dead node from each user's
//! set; those users go into this node's [`Rechecks`] queue, and the
//! backend workers, between batches, ask the domain to set OFFLINE those of
//! them who have no counting device on a live node now. A node that starts
//! does the same at once for the set an earlier run of its id left behind
//! (before it takes clients).

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use prost::Message as _;
use redis::{Cmd, RedisResult, Value, cmd};
use tern_protocol::pb;

use super::{RemoteRouter, channel, conn, conn::Link, route_cache, routes};
use crate::config::PlatformClass;

/// Users one `SPOP` of a dead node's set takes at most (one pipeline of
/// `SREM`s follows it).
pub const REAP_CHUNK_USERS_MAX: usize = 1_024;
/// Users waiting in a node's [`Rechecks`] queue at most: the cluster
/// thread takes no more from a dead node's set while it is full (the rest
/// waits in Redis).
pub const RECHECK_USERS_MAX: usize = 1 << 20;
/// Users a worker rechecks between two batches at most (one pipeline).
pub const RECHECK_CHUNK_USERS_MAX: usize = 1_024;

/// Removes `ARGV[1]` from the set `KEYS[1]` and answers what is left.
const LEAVE_AND_LIST: &str =
    "redis.call('SREM', KEYS[1], ARGV[1]) return redis.call('SMEMBERS', KEYS[1])";

/// The nodes where `user` has a device that counts toward presence.
pub fn user_nodes_key(user: &str) -> String {
    format!("{{u:{user}}}:pn")
}

/// The users with a device that counts toward presence on `node`.
pub fn node_users_key(node: &str) -> String {
    format!("{{n:{node}}}:pu")
}

/// Node bookkeeping that a shard sends through the user's backend worker
/// ring, in order with the user's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note<'a> {
    /// A device logged in here: write its route (before its first sync).
    RouteUp {
        /// User id.
        user: &'a str,
        /// Device id.
        device: &'a str,
        /// What its login said (platform, time, version), kept beside the
        /// route for other nodes' device lists.
        info: Option<&'a pb::DeviceInfo>,
    },
    /// A device still connected here after this node's lease had lapsed:
    /// write its route only if it has none (another node may have cleaned
    /// it; a route naming another node is a newer login there and stays).
    RouteRestore {
        /// User id.
        user: &'a str,
        /// Device id.
        device: &'a str,
    },
    /// A device left here: remove its route if it still names this node.
    RouteDown {
        /// User id.
        user: &'a str,
        /// Device id.
        device: &'a str,
    },
    /// The user's first counting device on this node connected.
    Connected {
        /// User id.
        user: &'a str,
    },
    /// The user's last counting device on this node left.
    Disconnected {
        /// User id.
        user: &'a str,
    },
}

/// Users whose presence was on a node that died (or on an earlier run of
/// this node), waiting for a worker to check whether they are still online
/// elsewhere. Bounded by [`RECHECK_USERS_MAX`] for the cluster thread.
#[derive(Debug, Default)]
pub struct Rechecks {
    users: Mutex<VecDeque<String>>,
    /// `users.len()`, read without the lock by the workers between batches.
    len: AtomicUsize,
}

impl Rechecks {
    /// Room left before [`RECHECK_USERS_MAX`].
    pub fn room(&self) -> usize {
        RECHECK_USERS_MAX.saturating_sub(self.len.load(Ordering::Acquire))
    }

    /// Whether no user waits (no lock taken).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    fn push(&self, users: Vec<String>) {
        let mut q = self.users.lock();
        q.extend(users);
        self.len.store(q.len(), Ordering::Release);
    }

    fn take(&self, max: usize) -> Vec<String> {
        let mut q = self.users.lock();
        let n = q.len().min(max);
        let taken = q.drain(..n).collect();
        self.len.store(q.len(), Ordering::Release);
        taken
    }

    fn put_back(&self, users: Vec<String>) {
        let mut q = self.users.lock();
        for u in users.into_iter().rev() {
            q.push_front(u);
        }
        self.len.store(q.len(), Ordering::Release);
    }
}

impl RemoteRouter {
    /// Does a batch's node bookkeeping in one pipeline (one more for the
    /// route log on Redis Cluster, and one more when a login displaces a
    /// device connected on another node). Answers, per
    /// note, whether the domain must still handle it: a `Connected`, and a
    /// `Disconnected` of a user with no counting device on another live
    /// node; never a route change.
    ///
    /// If Redis fails, route changes are lost (counted in
    /// `tern_cluster_route_write_errors_total`; the device gets no pushes
    /// from other nodes until it logs in again, and syncs then) and
    /// presence falls back to this node's own view (both go to the domain).
    pub fn note(&mut self, notes: &[Note<'_>]) -> Vec<bool> {
        if notes.is_empty() {
            return Vec::new();
        }
        let me = self.view.me().to_owned();
        // The live nodes, whose devices the login policy counts (read once
        // per batch; a node that died since is counted until the next
        // view, as the pushes do).
        let live = self.view.live();
        let mut cmds: Vec<Cmd> = Vec::with_capacity(notes.len() * 2);
        // Index of each note's first reply.
        let mut at = Vec::with_capacity(notes.len());
        for n in notes {
            at.push(cmds.len());
            match *n {
                Note::RouteUp { user, device, info } => {
                    let facts = info.map(|i| {
                        let mut i = i.clone();
                        i.node_id.clone_from(&me);
                        i.current = false;
                        i.encode_to_vec()
                    });
                    let policy = info.map(|i| {
                        let class = PlatformClass::of(i.platform());
                        routes::Policy {
                            class: class.name(),
                            max: self.login.devices_max(class),
                            login_ms: i.login_time_ms,
                        }
                    });
                    cmds.push(routes::up(
                        user,
                        device,
                        &me,
                        facts.as_deref(),
                        policy,
                        live.iter().map(|n| &**n),
                    ));
                }
                Note::RouteDown { user, device } => {
                    cmds.push(routes::del_if_node(user, device, &me));
                }
                Note::RouteRestore { user, device } => {
                    let mut c = cmd("HSETNX");
                    c.arg(routes::key(user)).arg(device).arg(&me);
                    cmds.push(c);
                }
                Note::Connected { user } => {
                    let mut a = cmd("SADD");
                    a.arg(user_nodes_key(user)).arg(&me);
                    let mut b = cmd("SADD");
                    b.arg(node_users_key(&me)).arg(user);
                    cmds.extend([a, b]);
                }
                Note::Disconnected { user } => {
                    let mut a = cmd("EVAL");
                    a.arg(LEAVE_AND_LIST)
                        .arg(1)
                        .arg(user_nodes_key(user))
                        .arg(&me);
                    let mut b = cmd("SREM");
                    b.arg(node_users_key(&me)).arg(user);
                    cmds.extend([a, b]);
                }
            }
        }
        let routes_n = notes
            .iter()
            .filter(|n| {
                matches!(
                    n,
                    Note::RouteUp { .. } | Note::RouteDown { .. } | Note::RouteRestore { .. }
                )
            })
            .count() as u64;
        // The users this batch may give a route, for the route log that
        // keeps the workers' route caches true (docs/cluster.md, "Route
        // cache"): appended after their `HSET`s and before this returns,
        // so before the device's first sync is answered (it is behind this
        // batch in the worker's ring).
        let mut given: Vec<&str> = notes
            .iter()
            .filter_map(|n| match *n {
                Note::RouteUp { user, .. } | Note::RouteRestore { user, .. } => Some(user),
                _ => None,
            })
            .collect();
        given.sort_unstable();
        given.dedup();
        let log = (!given.is_empty()).then(|| route_cache::log_append(&given));
        // On one Redis a connection's commands run in order: the log entry
        // rides the same pipeline, after the route writes. On Redis Cluster
        // the log and the hashes are on different primaries, so it is sent
        // once the pipeline answered.
        let log_at = match &log {
            Some(l) if self.link.in_order() => {
                cmds.push(l.clone());
                Some(cmds.len() - 1)
            }
            _ => None,
        };
        let written = self.link.pipeline(cmds);
        let logged = match (&written, &log, log_at) {
            (Ok(replies), _, Some(i)) => match replies.get(i) {
                Some(Value::ServerError(e)) => Err(redis::RedisError::from(e.clone())),
                Some(_) => Ok(()),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "route log: pipeline answered fewer replies than commands",
                ))),
            },
            // Redis Cluster, or a failed pipeline some of whose writes may
            // have landed: a route that landed must not go unannounced.
            (_, Some(l), _) => self.link.command(l).map(drop),
            (_, None, _) => Ok(()),
        };
        if let Err(e) = &logged {
            // The caches could miss these routes until their entries' TTL
            // ends (counted as a failed route write).
            if written.is_ok() {
                self.metrics
                    .route_write_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "cluster: route log append failed");
        }
        let replies = match written {
            Ok(r) => r,
            Err(e) => {
                if routes_n > 0 {
                    self.metrics
                        .route_write_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(error = %e, "cluster: node bookkeeping failed");
                return notes
                    .iter()
                    .map(|n| matches!(n, Note::Connected { .. } | Note::Disconnected { .. }))
                    .collect();
            }
        };
        self.metrics
            .route_writes
            .fetch_add(routes_n, Ordering::Relaxed);
        let mut displaced: Vec<(&str, &str, String)> = Vec::new();
        let mut policy_kicks: Vec<(&str, routes::PolicyKick)> = Vec::new();
        let mut out = Vec::with_capacity(notes.len());
        for (n, &i) in notes.iter().zip(&at) {
            let reply = replies.get(i).unwrap_or(&Value::Nil);
            out.push(match *n {
                Note::RouteUp { user, device, .. } => {
                    let (before, kicks) = routes::parse_up(reply);
                    if let Some(old) = before.filter(|o| *o != me && live.contains(o.as_str())) {
                        displaced.push((user, device, old));
                    }
                    policy_kicks.extend(kicks.into_iter().map(|k| (user, k)));
                    false
                }
                Note::RouteDown { .. } | Note::RouteRestore { .. } => false,
                Note::Connected { .. } => true,
                Note::Disconnected { .. } => {
                    let elsewhere = conn::items(reply).unwrap_or_default().iter().any(|v| {
                        conn::bytes(v)
                            .and_then(|b| std::str::from_utf8(b).ok())
                            .is_some_and(|node| node != me && live.contains(node))
                    });
                    if elsewhere {
                        self.metrics.presence_kept.fetch_add(1, Ordering::Relaxed);
                    }
                    !elsewhere
                }
            });
        }
        if !policy_kicks.is_empty() {
            // Each picked once by the script (and forgotten there): a
            // record lost now leaves that device connected past the limit
            // until it closes; the next login of the class counts it no
            // more.
            let cmds = policy_kicks
                .iter()
                .map(|(u, (d, node, ms))| {
                    channel::xadd_policy_kick(node, self.records_max, u, d, *ms)
                })
                .collect();
            match self.link.pipeline(cmds) {
                Ok(_) => {
                    self.metrics
                        .policy_kicks_sent
                        .fetch_add(policy_kicks.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics
                        .records_dropped
                        .fetch_add(policy_kicks.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cluster: login policy records dropped");
                }
            }
        }
        if !displaced.is_empty() {
            let cmds = displaced
                .iter()
                .map(|(u, d, node)| channel::xadd_displace(node, self.records_max, u, d))
                .collect();
            match self.link.pipeline(cmds) {
                Ok(_) => {
                    self.metrics
                        .displacements_sent
                        .fetch_add(displaced.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // The old connection stays until it closes; its close
                    // leaves the new route alone (conditional delete).
                    self.metrics
                        .records_dropped
                        .fetch_add(displaced.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cluster: displacement records dropped");
                }
            }
        }
        out
    }

    /// Whether users whose presence was on a dead node wait for a check.
    pub fn rechecks_pending(&self) -> bool {
        !self.rechecks.is_empty()
    }

    /// Takes up to [`RECHECK_CHUNK_USERS_MAX`] users of the [`Rechecks`]
    /// queue and answers those with no counting device on a live node now:
    /// the caller sets them OFFLINE. One pipeline. If Redis fails, the
    /// users go back to the queue and the error is returned.
    pub fn rechecked(&mut self) -> RedisResult<Vec<String>> {
        let users = self.rechecks.take(RECHECK_CHUNK_USERS_MAX);
        if users.is_empty() {
            return Ok(users);
        }
        let cmds = users
            .iter()
            .map(|u| {
                let mut c = cmd("SMEMBERS");
                c.arg(user_nodes_key(u));
                c
            })
            .collect();
        let replies = match self.link.pipeline(cmds) {
            Ok(r) => r,
            Err(e) => {
                self.rechecks.put_back(users);
                return Err(e);
            }
        };
        let live = self.view.live();
        self.metrics
            .presence_reaped
            .fetch_add(users.len() as u64, Ordering::Relaxed);
        Ok(users
            .into_iter()
            .zip(replies)
            .filter(|(_, nodes)| {
                !conn::items(nodes).unwrap_or_default().iter().any(|v| {
                    conn::bytes(v)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .is_some_and(|n| live.contains(n))
                })
            })
            .map(|(u, _)| u)
            .collect())
    }
}

/// Takes up to `max` users from `node`'s user set (`SPOP`, so two takers
/// never get the same user), removes `node` from each one's node set, and
/// queues them in `rechecks`. Two round trips. Answers how many were taken:
/// fewer than `max` means the set is now empty (Redis deletes it).
pub(crate) fn reap(
    link: &mut Link,
    node: &str,
    max: usize,
    rechecks: &Rechecks,
) -> RedisResult<usize> {
    if max == 0 {
        return Ok(0);
    }
    let mut pop = cmd("SPOP");
    pop.arg(node_users_key(node)).arg(max);
    let reply = link.command(&pop)?;
    let users: Vec<String> = conn::items(&reply)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| std::str::from_utf8(conn::bytes(v)?).ok())
        .map(str::to_owned)
        .collect();
    let n = users.len();
    if n == 0 {
        return Ok(0);
    }
    let cmds = users
        .iter()
        .map(|u| {
            let mut c = cmd("SREM");
            c.arg(user_nodes_key(u)).arg(node);
            c
        })
        .collect();
    if let Err(e) = link.pipeline(cmds) {
        // Popped but not removed from their node sets: put them back so
        // the next attempt finds them.
        let mut add = cmd("SADD");
        add.arg(node_users_key(node)).arg(&users);
        let _ = link.command(&add);
        return Err(e);
    }
    rechecks.push(users);
    Ok(n)
}

/// Reaps everything an earlier run of `me` left (its user set), before this
/// run takes clients. Bounded by that set's size (at most the earlier
/// run's connections); gives up after `deadline`.
pub(crate) fn reap_own_leftovers(
    link: &mut Link,
    me: &str,
    rechecks: &Rechecks,
    deadline: Duration,
) -> RedisResult<usize> {
    let until = Instant::now() + deadline;
    let mut total = 0;
    while Instant::now() < until {
        let n = reap(link, me, REAP_CHUNK_USERS_MAX, rechecks)?;
        total += n;
        if n < REAP_CHUNK_USERS_MAX {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's presence node set is the key the Redis store checks
    /// before it writes a "last device left" record.
    #[test]
    fn user_nodes_key_is_the_stores() {
        let keys = tern_backend::redis_store::keys::UserKeys::new("alice").unwrap();
        assert_eq!(user_nodes_key("alice"), keys.presence_nodes);
    }
}
