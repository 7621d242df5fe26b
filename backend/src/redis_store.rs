//! The Redis store: [`Store`] over one Redis (≥ 7.0) or a Redis Cluster.
//!
//! Every atomic step of the [`Store`] contract is one Redis function call
//! (`redis_store/tern.lua`, loaded with `FUNCTION LOAD` at open) that
//! touches the keys of one hash tag only, so it runs whole on one Cluster
//! node (key schema: [`keys`]; the full story: docs/redis.md). A batch of
//! appends is pipelined: one round trip (per node in a cluster), one AOF
//! fsync on each node, then optionally one `WAIT`/`WAITAOF` ([`WaitPolicy`]).
//!
//! Per-user indexes live under the user's hash tag, in another slot than
//! the data they point to. They are written *before* the atomic step that
//! creates the record they index, are never shrunk on the write path, and
//! every read through them checks the record itself: an index is a
//! superset of the truth, so a crash between the two steps leaves an extra
//! index entry (filtered out on read), never a missing one.
//!
//! Never holds chat policy (the domain does), never retries a write whose
//! outcome is unknown (the caller gets a [`StoreError`] and the client's
//! retry is made exact by the dedup record), and never builds a key from an
//! unchecked id.

pub mod keys;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use prost::Message as _;
use redis::cluster::{ClusterClientBuilder, ClusterConnection, ClusterPipeline};
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, ConnectionLike, RedisError, ServerErrorKind, Value};
use tern_protocol::pb;

use crate::seal::{self, KeyRing, Keys};
use crate::store::{
    Annotation, Append, AppendEffect, AppendRefused, Appended, AuditLog, AuditRecord, BanRecord,
    CallSlot, ConvHead, Credentials, DeptMember, DeptRecord, FriendRecord, FriendRequestRecord,
    GroupChange, GroupConflict, GroupMeta, JoinRequestRecord, MemberRecord, OrgStore,
    PresenceRecord, PresenceSetting, PushBind, PushSettings, PushUnbind, RoomRecord, SocialOp,
    Store, StoreError, StoreResult, ThreadStat, TodoRecord, UserConv, ViewChange,
};
use keys::{ConvKeys, KeyError, PairKeys, RoomKeys, UserKeys};

/// The Redis function library, loaded (with `REPLACE`) at open.
const LIBRARY: &str = include_str!("redis_store/tern.lua");
/// Oldest Redis we run on: functions (`FUNCTION LOAD`, `FCALL`) need 7.0.
pub const REDIS_VERSION_MIN: (u32, u32, u32) = (7, 0, 0);
/// Oldest Redis with `WAITAOF`.
pub const WAITAOF_VERSION_MIN: (u32, u32, u32) = (7, 2, 0);
/// Expired dedup records an append removes at most, on top of its own
/// write: purging is amortized over appends and bounded per call.
const DEDUP_PURGE_PER_APPEND_MAX: u32 = 4;
/// Largest page limit sent to Redis: `ZRANGE … LIMIT` takes a signed 64-bit
/// count (the functions fetch pages in chunks of 1000 fields).
const RANGE_LIMIT_MAX: u64 = i64::MAX as u64;
/// Extra validity kept on a presence record beyond its own expiry, so a
/// reader whose clock is a little behind still sees it.
const PRESENCE_GRACE_MS: u64 = 60_000;
/// Longest time a presence record is kept, whatever it asks for.
const PRESENCE_TTL_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Retries of one command on Redis Cluster (a redirect, `TRYAGAIN`, a
/// lost node), each `TRYAGAIN` waiting a random 10 ms … min(200 ms,
/// 10 ms·2^retry): a command that keeps getting `TRYAGAIN` (a slot half
/// moved) fails within about 0.7 s. The `redis` crate's default (16
/// retries, each waiting at least 1.28 s) held a backend worker, and every
/// request queued behind it, for 20 s or more.
pub const CLUSTER_RETRIES_MAX: u32 = 6;
/// Shortest wait before a cluster retry, and the formula's factor.
pub const CLUSTER_RETRY_WAIT_MS_MIN: u64 = 10;
/// Longest wait before a cluster retry.
pub const CLUSTER_RETRY_WAIT_MS_MAX: u64 = 200;
/// Entries of the "already indexed" cache ([`RedisStore`]'s `indexed`);
/// at about 100 bytes each, 100k entries is about 10 MB.
const INDEXED_CACHE_ENTRIES_MAX: usize = 100_000;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Where the Redis store connects and how it makes writes durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One server or a cluster.
    pub nodes: RedisNodes,
    /// What to wait for after each write batch, before it is acknowledged.
    /// Default: [`WaitPolicy::None`] (rely on the server's `appendfsync
    /// always`, checked at open when `require_durable`).
    pub wait: WaitPolicy,
    /// Refuse to open unless writes are durable before they are
    /// acknowledged: every primary runs `appendonly yes` with `appendfsync
    /// always`, or `wait` is [`WaitPolicy::Aof`] with `local`, or
    /// [`WaitPolicy::Replicas`] with at least one replica. Default: true,
    /// because invariant 5 (no acknowledged message lost, no seq reused)
    /// depends on it. Turn it off only for throwaway data.
    pub require_durable: bool,
    /// Connections (single) or cluster connections (one socket per node
    /// each) kept open; one per concurrent caller. Default: 8.
    pub connections_max: usize,
    /// How long a caller waits for a free connection when all
    /// `connections_max` are busy, before it gets an error. Default: 5000.
    pub pool_wait_ms: u64,
    /// TCP connect timeout. Default: 2000.
    pub connect_timeout_ms: u64,
    /// Read/write timeout of one round trip (a `WAIT`'s own timeout is
    /// added to it). Default: 5000.
    pub io_timeout_ms: u64,
}

impl RedisConfig {
    /// The defaults for `nodes`.
    pub fn new(nodes: RedisNodes) -> Self {
        Self {
            nodes,
            wait: WaitPolicy::None,
            require_durable: true,
            connections_max: 8,
            pool_wait_ms: 5_000,
            connect_timeout_ms: 2_000,
            io_timeout_ms: 5_000,
        }
    }
}

/// One Redis or a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// One server: `redis://host:port/db`.
    Single(String),
    /// Seed nodes of a cluster (`redis://host:port`); the rest is
    /// discovered with `CLUSTER SLOTS`.
    Cluster(Vec<String>),
}

/// What a write batch waits for before its results are returned (and the
/// senders acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitPolicy {
    /// Nothing beyond the server's own reply. Durable iff the server runs
    /// `appendfsync always` (Redis fsyncs the AOF before it replies).
    #[default]
    None,
    /// `WAIT replicas timeout_ms` on every primary the batch touched: the
    /// writes reached `replicas` replicas (in memory, not fsynced).
    Replicas {
        /// Replicas that must have the writes.
        replicas: u32,
        /// How long to wait; fewer replicas by then is an error.
        timeout_ms: u64,
    },
    /// `WAITAOF local replicas timeout_ms` (Redis ≥ 7.2): the writes are
    /// fsynced to the primary's AOF (`local`) and to `replicas` replicas'
    /// AOFs. Makes `appendfsync everysec` durable per batch.
    Aof {
        /// Wait for the primary's own fsync.
        local: bool,
        /// Replicas that must have fsynced the writes.
        replicas: u32,
        /// How long to wait; fewer fsyncs by then is an error.
        timeout_ms: u64,
    },
}

impl WaitPolicy {
    fn timeout_ms(&self) -> u64 {
        match *self {
            Self::None => 0,
            Self::Replicas { timeout_ms, .. } | Self::Aof { timeout_ms, .. } => timeout_ms,
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the Redis store failed. Every variant becomes a [`StoreError`] at the
/// [`Store`] boundary (`Backend`, or `Corrupt` for undecodable data).
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The Redis client failed: connection refused or lost, timeout, or an
    /// error reply.
    // The client's error is in the message and deliberately not a
    // `source`: it already carries its own cause (an I/O error), and a
    // report printing the chain said the same thing three times.
    #[error("redis: {0}")]
    Redis(RedisError),
    /// The server is older than Redis 7.0 (no functions).
    #[error("redis {found} is too old: the Redis store needs {}.{}.{} or newer", REDIS_VERSION_MIN.0, REDIS_VERSION_MIN.1, REDIS_VERSION_MIN.2)]
    UnsupportedVersion {
        /// The version the server reported.
        found: String,
    },
    /// [`WaitPolicy::Aof`] asks for `WAITAOF`, which needs Redis 7.2.
    #[error(
        "WAITAOF needs redis 7.2 or newer, the server is {found}: use appendfsync always with WaitPolicy::None, or WaitPolicy::Replicas"
    )]
    WaitAofUnsupported {
        /// The version the server reported.
        found: String,
    },
    /// `require_durable` is set, but a primary would acknowledge writes it
    /// has not fsynced, and the wait policy does not make up for it.
    #[error(
        "redis node {node} runs appendonly={appendonly} appendfsync={appendfsync}: writes would be acknowledged before they are durable; set `appendonly yes` and `appendfsync always` on that server (redis.conf, or CONFIG SET; see docs/redis.md)"
    )]
    NotDurable {
        /// The node, as the client names it.
        node: String,
        /// Its `appendonly` setting.
        appendonly: String,
        /// Its `appendfsync` setting.
        appendfsync: String,
    },
    /// `WAIT`/`WAITAOF` returned before enough copies were made: the batch
    /// was written but is not known to be durable.
    #[error("{command} reached {got} of {wanted} within its timeout")]
    WaitShort {
        /// `WAIT` or `WAITAOF (local)` or `WAITAOF (replicas)`.
        command: &'static str,
        /// Copies required.
        wanted: u32,
        /// Copies made.
        got: u64,
    },
    /// An id cannot be part of a key (see [`keys`]).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A call broke the [`Store`] contract in a way the store can tell
    /// (e.g. a [`ViewChange`] pointing past the change's entries).
    #[error("invalid store call: {0}")]
    InvalidCall(String),
    /// Redis answered something the store never writes or returns.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// A stored record does not decode.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// All `connections_max` connections stayed busy for `pool_wait_ms`.
    #[error("no free redis connection within {0} ms")]
    PoolExhausted(u64),
    /// The configuration cannot work (e.g. an empty cluster node list).
    #[error("invalid redis store configuration: {0}")]
    Config(String),
}

impl RedisStoreError {
    /// The connection died under the call (EOF, reset, refused), as
    /// opposed to a timeout, an error reply or bad data.
    fn is_connection_dropped(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_connection_dropped() && !e.is_timeout())
    }
}

impl From<RedisError> for RedisStoreError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Corrupt(m) => StoreError::Corrupt(m),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

type Result<T, E = RedisStoreError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// The Redis store. Cheap to share: every call borrows a connection from a
/// small pool (`connections_max`) and returns it, so backend worker threads
/// share one `RedisStore` and never share a connection.
#[derive(Debug)]
pub struct RedisStore {
    pool: Pool,
    wait: WaitPolicy,
    version: String,
    /// `(user, conversation)` index entries known to be in Redis. Index
    /// entries are never removed, so a known one need not be written again:
    /// a steady 1:1 chat costs no index write (and in a cluster, no second
    /// round trip). Cleared when full.
    indexed: Mutex<HashSet<String>>,
    /// Seals message contents before they reach Redis (empty: in clear).
    keys: Arc<Keys>,
}

impl RedisStore {
    /// Connects, checks the server version (and, with `require_durable`,
    /// the persistence settings of every primary), and loads the function
    /// library.
    pub fn open(config: RedisConfig) -> Result<Self> {
        if config.connections_max == 0 {
            return Err(RedisStoreError::Config(
                "connections_max must be at least 1".into(),
            ));
        }
        let pool = Pool::new(&config)?;
        let mut lease = pool.get()?;
        let conn = lease.conn();
        let version = server_version(conn)?;
        let v = parse_version(&version);
        if v < REDIS_VERSION_MIN {
            return Err(RedisStoreError::UnsupportedVersion { found: version });
        }
        if matches!(config.wait, WaitPolicy::Aof { .. }) && v < WAITAOF_VERSION_MIN {
            return Err(RedisStoreError::WaitAofUnsupported { found: version });
        }
        if config.require_durable {
            let name = match &config.nodes {
                RedisNodes::Single(url) => url.clone(),
                RedisNodes::Cluster(_) => "cluster".to_owned(),
            };
            check_durable(conn, &config.wait, &name)?;
        }
        load_library(conn)?;
        drop(lease);
        Ok(Self {
            pool,
            wait: config.wait,
            version,
            indexed: Mutex::new(HashSet::new()),
            keys: Arc::default(),
        })
    }

    /// Seals the message contents it writes from now on with `keys` (and
    /// opens sealed ones with it); contents stored in clear stay readable.
    /// Without it (the default) contents are stored in clear. Sealing
    /// happens here, before the functions run: they never see a content,
    /// and recall drops it without opening it.
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// The server's version (the lowest over a cluster's primaries).
    pub fn server_version(&self) -> &str {
        &self.version
    }

    /// `GET`s one key of each user (`key` picks it from the user's keys) in
    /// one pipeline (split by slot in a cluster) and decodes each value.
    fn get_per_user<T: prost::Message + Default>(
        &self,
        users: &[&str],
        key: impl Fn(&UserKeys) -> &String,
        what: &str,
    ) -> Result<Vec<Option<T>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Pipe::default();
        for u in users {
            let k = UserKeys::new(u)?;
            let mut c = redis::cmd("GET");
            c.arg(key(&k));
            p.add(c);
        }
        let vals = self.with_conn(|conn| self.run(conn, &p))?;
        vals.into_iter().map(|v| decode_opt::<T>(v, what)).collect()
    }

    /// Runs `f` on a pooled connection. A connection that saw an error is
    /// dropped rather than reused: after a timeout or a cluster redirect its
    /// state (pending replies, slot map) is not to be trusted.
    ///
    /// When a connection taken from the idle list turns out dead (the server
    /// restarted while it was idle: EOF or reset, not a timeout), the other
    /// idle connections are as old and are dropped too, and `f` runs once
    /// more on a fresh connection. So the first call after a Redis restart
    /// succeeds instead of failing on a socket that died with the old
    /// server. Only for calls that are exact when repeated (reads, plain
    /// puts and deletes, appends that all carry a dedup record);
    /// [`RedisStore::with_conn_once`] is the rest.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let mut lease = self.pool.get()?;
        let r = f(lease.conn());
        let Err(e) = r else { return r };
        lease.discard();
        if !(lease.reused && e.is_connection_dropped()) {
            return Err(e);
        }
        drop(lease);
        self.pool.drop_idle();
        let mut fresh = self.pool.get()?;
        let r = f(fresh.conn());
        if r.is_err() {
            fresh.discard();
        }
        r
    }

    /// Like [`RedisStore::with_conn`] without the repeat: for calls whose
    /// second run could differ from the first (a group change checks and
    /// bumps a version; an append without a dedup record allocates a new
    /// seq). A dead idle connection still clears the idle list, so the
    /// caller's retry gets a fresh one.
    fn with_conn_once<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        let mut lease = self.pool.get()?;
        let r = f(lease.conn());
        if let Err(e) = &r {
            lease.discard();
            if lease.reused && e.is_connection_dropped() {
                drop(lease);
                self.pool.drop_idle();
            }
        }
        r
    }

    /// Runs `pipe` as one pipeline. On "function not found" (a node that
    /// lost its functions, e.g. a fresh cluster node) it reloads the library
    /// and, when every command that must not run twice is among those that
    /// did not run, runs the pipeline once more (the rest is idempotent:
    /// index entries, reads, plain writes).
    fn run(&self, conn: &mut Conn, pipe: &Pipe) -> Result<Vec<Value>> {
        match conn.query(pipe) {
            Ok(v) => Ok(v),
            Err(e) if is_function_missing(&e) => {
                load_library(conn)?;
                let safe_to_repeat = e.into_server_errors().is_some_and(|errs| {
                    let all_missing = errs
                        .iter()
                        .all(|(_, se)| se.to_string().contains("Function not found"));
                    let not_run: HashSet<usize> = errs.iter().map(|(i, _)| *i).collect();
                    all_missing && pipe.once.iter().all(|i| not_run.contains(i))
                });
                if safe_to_repeat {
                    Ok(conn.query(pipe)?)
                } else {
                    Err(RedisStoreError::Reply(
                        "a function was missing on a node; the library was reloaded".into(),
                    ))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Issues the configured `WAIT`/`WAITAOF` on `conn` (all primaries in
    /// a cluster: a primary the batch did not write to answers at once).
    fn wait_durable(&self, conn: &mut Conn) -> Result<()> {
        match self.wait {
            WaitPolicy::None => Ok(()),
            WaitPolicy::Replicas {
                replicas,
                timeout_ms,
            } => {
                let mut c = redis::cmd("WAIT");
                c.arg(replicas).arg(timeout_ms);
                let got = per_node(conn.command_all_primaries(&c)?)
                    .into_iter()
                    .map(|v| as_u64(&v))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .min()
                    .unwrap_or(0);
                if got < u64::from(replicas) {
                    return Err(RedisStoreError::WaitShort {
                        command: "WAIT",
                        wanted: replicas,
                        got,
                    });
                }
                Ok(())
            }
            WaitPolicy::Aof {
                local,
                replicas,
                timeout_ms,
            } => {
                let mut c = redis::cmd("WAITAOF");
                c.arg(u32::from(local)).arg(replicas).arg(timeout_ms);
                for node in per_node(conn.command_all_primaries(&c)?) {
                    let Value::Array(counts) = node else {
                        return Err(RedisStoreError::Reply(format!("WAITAOF answered {node:?}")));
                    };
                    let [l, r] = counts.as_slice() else {
                        return Err(RedisStoreError::Reply(format!(
                            "WAITAOF answered {counts:?}"
                        )));
                    };
                    let (l, r) = (as_u64(l)?, as_u64(r)?);
                    if local && l < 1 {
                        return Err(RedisStoreError::WaitShort {
                            command: "WAITAOF (local)",
                            wanted: 1,
                            got: l,
                        });
                    }
                    if r < u64::from(replicas) {
                        return Err(RedisStoreError::WaitShort {
                            command: "WAITAOF (replicas)",
                            wanted: replicas,
                            got: r,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn append_batch_inner(
        &self,
        now_ms: u64,
        items: &[Append],
    ) -> Result<Vec<Result<Appended, AppendRefused>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Everything is checked and encoded before the first write, so a bad
        // item fails the batch before anything of it is stored.
        let mut index = Pipe::default();
        let mut appends = Pipe::default();
        let mut new_index: HashSet<String> = HashSet::new();
        {
            let ring = self.keys.load();
            let known = self.indexed.lock();
            for item in items {
                let k = ConvKeys::new(&item.conversation)?;
                for p in &item.participants {
                    let uk = UserKeys::new(p)?;
                    let entry = format!("{p}\0{}", item.conversation);
                    if !known.contains(&entry) && new_index.insert(entry) {
                        index.add(zadd_lex(&uk.convs, &item.conversation));
                    }
                }
                appends.add_once(append_cmd(&k, ring.as_deref(), now_ms, item)?);
            }
        }
        // Index entries first: they must exist before the record they point
        // to. One server executes a pipeline in order, so one round trip
        // suffices; a cluster spreads it over nodes that execute
        // independently, so there the index goes first, alone.
        let (index, mut appends, skip) = if index.is_empty() || self.pool.is_cluster() {
            (index, appends, 0)
        } else {
            let n = index.cmds.len();
            let mut both = index;
            both.extend(appends);
            (Pipe::default(), both, n)
        };
        // One AOF write and one fsync for the batch (group commit).
        appends.one_turn = true;
        let batch = |conn: &mut Conn| {
            if !index.is_empty() {
                self.run(conn, &index)?;
            }
            let mut replies = self.run(conn, &appends)?;
            replies.drain(..skip);
            self.wait_durable(conn)?;
            replies
                .iter()
                .map(parse_append_reply)
                .collect::<Result<Vec<_>>>()
        };
        // An append with a dedup record is exact when repeated (the second
        // run answers the first's seq, as a duplicate); one without (a read
        // mark, a recall) would take a second seq.
        let replies = if items.iter().all(|i| i.dedup.is_some()) {
            self.with_conn(batch)?
        } else {
            self.with_conn_once(batch)?
        };
        if !new_index.is_empty() {
            let mut known = self.indexed.lock();
            if known.len() + new_index.len() > INDEXED_CACHE_ENTRIES_MAX {
                known.clear();
            }
            known.extend(new_index);
        }
        Ok(replies)
    }

    fn apply_group_change_inner(
        &self,
        change: &GroupChange,
    ) -> Result<Result<Vec<u64>, GroupConflict>> {
        let k = ConvKeys::group(&change.group_id)?;
        let conversation = format!("g:{}", change.group_id);
        let mut index = Pipe::default();
        let n_entries = change.entries.len();
        let mut c = redis::cmd("FCALL");
        c.arg("tern_group_v2").arg(8);
        c.arg(&k.group_version)
            .arg(&k.group_meta)
            .arg(&k.members)
            .arg(&k.member_order);
        c.arg(&k.join_requests)
            .arg(&k.head)
            .arg(&k.log)
            .arg(&k.user_convs);
        let mut meta = change.meta.clone();
        meta.group_id.clone_from(&change.group_id);
        meta.version = change.expect_version + 1;
        c.arg(change.expect_version).arg(meta.encode_to_vec());
        c.arg(change.put_members.len());
        for m in &change.put_members {
            keys::id("member", &m.user_id)?;
            c.arg(&m.user_id).arg(m.encode_to_vec());
        }
        c.arg(change.remove_members.len());
        for u in &change.remove_members {
            keys::id("member", u)?;
            c.arg(u);
        }
        c.arg(change.put_join_requests.len());
        for r in &change.put_join_requests {
            keys::id("user", &r.user_id)?;
            c.arg(&r.user_id).arg(r.encode_to_vec());
        }
        c.arg(change.remove_join_requests.len());
        for u in &change.remove_join_requests {
            keys::id("user", u)?;
            c.arg(u);
        }
        c.arg(n_entries);
        let ring = self.keys.load();
        for e in &change.entries {
            c.arg(stored_entry(ring.as_deref(), &conversation, e))
                .arg(e.time_ms);
        }
        c.arg(change.views.len());
        for v in &change.views {
            let (kind, user, at, history) = match v {
                ViewChange::Join {
                    user_id,
                    at,
                    history,
                } => ("j", user_id, *at, *history),
                ViewChange::Leave { user_id, at } => ("l", user_id, *at, false),
            };
            if at >= n_entries {
                return Err(RedisStoreError::InvalidCall(format!(
                    "view of {user} points at entry {at} of {n_entries}"
                )));
            }
            if kind == "j" {
                index.add(zadd_lex(&UserKeys::new(user)?.convs, &conversation));
            } else {
                keys::id("user", user)?;
            }
            c.arg(kind)
                .arg(user)
                .arg(at)
                .arg(if history { "1" } else { "0" });
        }
        let mut pipe = Pipe::default();
        pipe.add_once(c);
        self.with_conn_once(|conn| {
            if !index.is_empty() {
                self.run(conn, &index)?;
            }
            let reply = self.run(conn, &pipe)?;
            self.wait_durable(conn)?;
            let Some(Value::Array(fields)) = reply.first() else {
                return Err(RedisStoreError::Reply(format!(
                    "tern_group_v2 answered {reply:?}"
                )));
            };
            let code = fields.first().map(as_i64).transpose()?;
            match code {
                Some(-1) => Ok(Err(GroupConflict)),
                Some(0) => Ok(Ok(fields[1..]
                    .iter()
                    .map(as_u64)
                    .collect::<Result<Vec<_>>>()?)),
                _ => Err(RedisStoreError::Reply(format!(
                    "tern_group_v2 answered {fields:?}"
                ))),
            }
        })
    }

    fn apply_social_inner(&self, ops: &[SocialOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut index = Pipe::default();
        // The writes, grouped by hash tag in order of first appearance.
        let mut groups: Vec<WriteGroup> = Vec::new();
        for op in ops {
            let (key, w) = match op {
                SocialOp::PutProfile(p) => (
                    UserKeys::new(&p.user_id)?.profile,
                    Write::Set(p.encode_to_vec()),
                ),
                SocialOp::PutFriend(r) => {
                    index.add(zadd_lex(&UserKeys::new(&r.user)?.friends, &r.friend));
                    let k = PairKeys::new(&r.user, &r.friend)?;
                    (k.friends, Write::HSet(r.user.clone(), r.encode_to_vec()))
                }
                SocialOp::DeleteFriend { user, friend } => (
                    PairKeys::new(user, friend)?.friends,
                    Write::HDel(user.clone()),
                ),
                SocialOp::PutFriendRequest(r) => {
                    index.add(zadd_lex(&UserKeys::new(&r.from)?.requests_out, &r.to));
                    index.add(zadd_lex(&UserKeys::new(&r.to)?.requests_in, &r.from));
                    let k = PairKeys::new(&r.from, &r.to)?;
                    (k.requests, Write::HSet(r.from.clone(), r.encode_to_vec()))
                }
                SocialOp::DeleteFriendRequest { from, to } => {
                    (PairKeys::new(from, to)?.requests, Write::HDel(from.clone()))
                }
                SocialOp::PutBlock { user, other } => {
                    index.add(zadd_lex(&UserKeys::new(user)?.blocked, other));
                    (
                        PairKeys::new(user, other)?.blocks,
                        Write::SAdd(user.clone()),
                    )
                }
                SocialOp::DeleteBlock { user, other } => (
                    PairKeys::new(user, other)?.blocks,
                    Write::SRem(user.clone()),
                ),
            };
            let tag = keys::tag_of(&key).to_owned();
            match groups.iter_mut().find(|g| g.tag == tag) {
                Some(g) => g.push(key, w),
                None => {
                    let mut g = WriteGroup {
                        tag,
                        keys: Vec::new(),
                        writes: Vec::new(),
                    };
                    g.push(key, w);
                    groups.push(g);
                }
            }
        }
        self.with_conn_once(|conn| {
            // One function call per hash tag, each all or none. A single
            // server runs one call over the keys of every tag, so there the
            // whole call is all or none. A cluster cannot run one function
            // across slots: there a call spanning tags (one pair's records
            // and another's) is applied tag by tag, in one pipelined round
            // trip. Every op is an idempotent put or delete and ops of
            // different tags touch different keys, so a failed call that is
            // retried converges on the same state. The domain only ever
            // combines the records of one pair (or one profile) per call,
            // which is atomic everywhere. docs/redis.md says the same.
            let calls: Vec<WriteGroup> = if groups.len() > 1 && !conn.is_cluster() {
                let mut all = WriteGroup {
                    tag: String::new(),
                    keys: Vec::new(),
                    writes: Vec::new(),
                };
                for g in groups.drain(..) {
                    for (ki, w) in g.writes {
                        all.push(g.keys[ki].clone(), w);
                    }
                }
                vec![all]
            } else {
                groups
            };
            if !index.is_empty() {
                self.run(conn, &index)?;
            }
            let mut pipe = Pipe::default();
            for call in &calls {
                pipe.add(call.command());
            }
            self.run(conn, &pipe)?;
            self.wait_durable(conn)
        })
    }

    /// Reads `members` of the index `index_key` and, for each, the value
    /// `probe(member)` (one command in another slot); keeps the members
    /// whose probe answered. Indexes are supersets; the probe is the truth.
    fn filtered_index<T>(
        &self,
        index_key: &str,
        probe: impl Fn(&str) -> Result<Cmd>,
        keep: impl Fn(&str, Value) -> Result<Option<T>>,
    ) -> Result<Vec<T>> {
        self.with_conn(|conn| {
            let mut p = Pipe::default();
            let mut z = redis::cmd("ZRANGE");
            z.arg(index_key).arg(0).arg(-1);
            p.add(z);
            let members = as_strings(first(self.run(conn, &p)?)?)?;
            if members.is_empty() {
                return Ok(Vec::new());
            }
            let mut probes = Pipe::default();
            for m in &members {
                probes.add(probe(m)?);
            }
            let vals = self.run(conn, &probes)?;
            let mut out = Vec::with_capacity(members.len());
            for (m, v) in members.iter().zip(vals) {
                if let Some(t) = keep(m, v)? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// Asks `command key(pairs[i]) pairs[i].0` for every pair, in one
    /// pipeline (a set or hash membership answering 0 or 1).
    fn pair_query(
        &self,
        pairs: &[(&str, &str)],
        command: &str,
        key: impl Fn(&PairKeys) -> &String,
    ) -> StoreResult<Vec<bool>> {
        let mut p = Pipe::default();
        for (user, other) in pairs {
            let k = PairKeys::new(user, other).map_err(RedisStoreError::from)?;
            let mut c = redis::cmd(command);
            c.arg(key(&k)).arg(*user);
            p.add(c);
        }
        Ok(self.pair_flags(&p, pairs.len(), command)?)
    }

    /// Runs `p`, `n` commands that each answer 0 or 1 (`command`: their
    /// name, for the error), as one pipeline; no round trip when empty.
    fn pair_flags(&self, p: &Pipe, n: usize, command: &str) -> Result<Vec<bool>> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        let vals = self.with_conn(|conn| self.run(conn, p))?;
        if vals.len() != n {
            return Err(RedisStoreError::Reply(format!(
                "{} replies to {n} {command}",
                vals.len()
            )));
        }
        vals.iter().map(|v| as_u64(v).map(|x| x == 1)).collect()
    }

    /// Push tokens (issue 20): a token's owner key (its own slot) is the
    /// truth of who holds it; each user's hash of tokens is a superset
    /// written first and filtered on read. A bind is four steps on three
    /// slots: the user's hash (bound checked there), the replaced token's
    /// owner key, the token's owner key (`SET … GET` says who held it), the
    /// previous holder's hash. A crash between them leaves an entry that
    /// reads filter out (and remove), never a token held by two users.
    fn push_bind_inner(
        &self,
        user: &str,
        record: &pb::PushToken,
        tokens_max: usize,
    ) -> Result<PushBind> {
        let k = UserKeys::new(user)?;
        // Stale entries (left by a crash, or a token moved away) must not
        // count toward the bound: reading prunes them.
        self.push_tokens_inner(user)?;
        let field = keys::push_field(record.platform, &record.token);
        let mut c = redis::cmd("EVAL");
        c.arg(PUSH_ADD)
            .arg(2)
            .arg(&k.push_tokens)
            .arg(&k.push_devices)
            .arg(&field)
            .arg(record.encode_to_vec())
            .arg(tokens_max)
            .arg(format!("{}:{}", record.platform, record.device_id));
        let Some(old) = opt_bytes(self.one(c)?)? else {
            return Ok(PushBind::Full);
        };
        let old = String::from_utf8(old)
            .map_err(|_| RedisStoreError::Corrupt("push token field is not UTF-8".into()))?;
        let replaced = match old.split_once(':') {
            Some((platform, token)) if !old.is_empty() => {
                let platform: i32 = platform.parse().unwrap_or_default();
                let mut c = redis::cmd("EVAL");
                c.arg(PUSH_DISOWN)
                    .arg(1)
                    .arg(keys::push_owner(platform, token))
                    .arg(user);
                self.one(c)?;
                Some(token.to_owned())
            }
            _ => None,
        };
        let mut c = redis::cmd("SET");
        c.arg(keys::push_owner(record.platform, &record.token))
            .arg(user)
            .arg("GET");
        let moved_from = match opt_bytes(self.one(c)?)? {
            Some(prev) if prev != user.as_bytes() => {
                let prev = String::from_utf8(prev).map_err(|_| {
                    RedisStoreError::Corrupt("push token owner is not UTF-8".into())
                })?;
                self.push_del(&prev, &field)?;
                Some(prev)
            }
            _ => None,
        };
        Ok(PushBind::Bound {
            moved_from,
            replaced,
        })
    }

    fn push_unbind_inner(
        &self,
        user: Option<&str>,
        platform: i32,
        token: &str,
    ) -> Result<PushUnbind> {
        let owner_key = keys::push_owner(platform, token);
        let field = keys::push_field(platform, token);
        let Some(user) = user else {
            let mut c = redis::cmd("GETDEL");
            c.arg(&owner_key);
            let Some(owner) = opt_bytes(self.one(c)?)? else {
                return Ok(PushUnbind::NotFound);
            };
            let owner = String::from_utf8(owner)
                .map_err(|_| RedisStoreError::Corrupt("push token owner is not UTF-8".into()))?;
            self.push_del(&owner, &field)?;
            return Ok(PushUnbind::Removed);
        };
        let mut c = redis::cmd("GET");
        c.arg(&owner_key);
        match opt_bytes(self.one(c)?)? {
            None => {
                // A stale entry of this user's, if any, goes too.
                self.push_del(user, &field)?;
                Ok(PushUnbind::NotFound)
            }
            Some(o) if o != user.as_bytes() => Ok(PushUnbind::NotYours),
            Some(_) => {
                let mut c = redis::cmd("EVAL");
                c.arg(PUSH_DISOWN).arg(1).arg(&owner_key).arg(user);
                self.one(c)?;
                self.push_del(user, &field)?;
                Ok(PushUnbind::Removed)
            }
        }
    }

    /// Removes `field` from `user`'s token hash and device index.
    fn push_del(&self, user: &str, field: &str) -> Result<()> {
        let k = UserKeys::new(user)?;
        let mut c = redis::cmd("EVAL");
        c.arg(PUSH_DEL)
            .arg(2)
            .arg(&k.push_tokens)
            .arg(&k.push_devices)
            .arg(field);
        self.one(c)?;
        Ok(())
    }

    /// The user's tokens whose owner key names them; the others (stale)
    /// are removed from the hash on the way.
    fn push_tokens_inner(&self, user: &str) -> Result<Vec<pb::PushToken>> {
        let k = UserKeys::new(user)?;
        let mut c = redis::cmd("HGETALL");
        c.arg(&k.push_tokens);
        let Value::Array(items) = self.one(c)? else {
            return Err(RedisStoreError::Reply("HGETALL: not an array".into()));
        };
        let mut records = Vec::new();
        for v in items.into_iter().skip(1).step_by(2) {
            let Some(b) = opt_bytes(v)? else { continue };
            let r = pb::PushToken::decode(b.as_slice())
                .map_err(|e| RedisStoreError::Corrupt(format!("push token: {e}")))?;
            records.push(r);
        }
        if records.is_empty() {
            return Ok(records);
        }
        let mut p = Pipe::default();
        for r in &records {
            let mut c = redis::cmd("GET");
            c.arg(keys::push_owner(r.platform, &r.token));
            p.add(c);
        }
        let owners = self.with_conn(|conn| self.run(conn, &p))?;
        let mut out = Vec::with_capacity(records.len());
        for (r, owner) in records.into_iter().zip(owners) {
            if opt_bytes(owner)?.as_deref() == Some(user.as_bytes()) {
                out.push(r);
            } else {
                self.push_del(user, &keys::push_field(r.platform, &r.token))?;
            }
        }
        out.sort_by(|a, b| (a.platform, &a.token).cmp(&(b.platform, &b.token)));
        Ok(out)
    }

    /// `SET key value`, or `DEL key` for `None`.
    fn set_or_del(&self, key: &str, value: Option<Vec<u8>>) -> StoreResult<()> {
        let mut c = redis::cmd(if value.is_some() { "SET" } else { "DEL" });
        c.arg(key);
        if let Some(v) = value {
            c.arg(v);
        }
        self.one(c)?;
        Ok(())
    }

    fn one(&self, c: Cmd) -> Result<Value> {
        let mut p = Pipe::default();
        p.add(c);
        self.with_conn(|conn| first(self.run(conn, &p)?))
    }
}

/// Adds a push token to a user (`KEYS[1]` their tokens, `KEYS[2]` their
/// devices' fields; `ARGV`: field, record, tokens_max, device field) unless
/// they hold `tokens_max` others (nil: nothing written). The device's
/// previous token of the platform is removed and returned ("" if none).
const PUSH_ADD: &str = r"
local old = redis.call('HGET', KEYS[2], ARGV[4])
if old == ARGV[1] or (old and redis.call('HEXISTS', KEYS[1], old) == 0) then old = false end
local n = redis.call('HLEN', KEYS[1])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then n = n - 1 end
if old then n = n - 1 end
if n >= tonumber(ARGV[3]) then return false end
if old then redis.call('HDEL', KEYS[1], old) end
local devs = redis.call('HGETALL', KEYS[2])
for i = 1, #devs, 2 do
  if devs[i + 1] == ARGV[1] and devs[i] ~= ARGV[4] then redis.call('HDEL', KEYS[2], devs[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
return old or ''
";

/// Removes a push token field (`ARGV[1]`) from a user's tokens
/// (`KEYS[1]`) and any device entry (`KEYS[2]`) naming it.
const PUSH_DEL: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
local devs = redis.call('HGETALL', KEYS[2])
for i = 1, #devs, 2 do
  if devs[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[2], devs[i]) end
end
return 1
";

/// Deletes a push token's owner key (`KEYS[1]`) only if it names `ARGV[1]`.
const PUSH_DISOWN: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Writes a "last device left" presence record (`KEYS[1]`, value
/// `ARGV[1]`, TTL `ARGV[2]` ms) only while no gateway node counts a device
/// of the user (`KEYS[2]`, the user's presence node set, is empty).
const PRESENCE_SET_IF_NO_NODE: &str = "if redis.call('SCARD', KEYS[2]) == 0 then \
     return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 0";

/// Writes call `KEYS[1]` as `<ARGV[1] + 1>:<ARGV[2]>` with TTL `ARGV[3]`
/// ms if its version is `ARGV[1]` (0: absent); answers 1, else 0. The
/// version is the decimal before the first `:` (the state after it may be
/// any bytes).
const CALL_PUT: &str = "local cur = redis.call('GET', KEYS[1]) \
     local v = 0 \
     if cur then v = tonumber(string.match(cur, '^(%d+):')) or -1 end \
     if v ~= tonumber(ARGV[1]) then return 0 end \
     redis.call('SET', KEYS[1], string.format('%d', v + 1) .. ':' .. ARGV[2], 'PX', ARGV[3]) \
     return 1";

/// Deletes call `KEYS[1]` if its version is `ARGV[1]`; answers 1, else 0.
const CALL_REMOVE: &str = "local cur = redis.call('GET', KEYS[1]) \
     if not cur then return 0 end \
     if tonumber(string.match(cur, '^(%d+):')) ~= tonumber(ARGV[1]) then return 0 end \
     redis.call('DEL', KEYS[1]) return 1";

/// The command that stores a presence record with its expiry.
///
/// A record saying the user's last counting device left (`connected:
/// false`) is written only while the user's presence node set is empty:
/// with several gateway nodes, a device that connected on another node
/// after this node decided "last" has already added that node to the set,
/// and its ONLINE record must not be overwritten by this late OFFLINE. One
/// script on the user's slot, so the check and the write are atomic. On a
/// single node the set is empty here (the gateway removed itself first).
fn presence_set(record: &PresenceRecord) -> Result<Cmd> {
    let k = UserKeys::new(&record.user_id)?;
    // A relative TTL (not PXAT): the record's times come from the
    // backend's clock, which need not agree with Redis's.
    let ttl_ms = record
        .expires_at_ms
        .saturating_sub(record.updated_ms)
        .saturating_add(PRESENCE_GRACE_MS)
        .min(PRESENCE_TTL_MS_MAX);
    if !record.connected {
        let mut c = redis::cmd("EVAL");
        c.arg(PRESENCE_SET_IF_NO_NODE)
            .arg(2)
            .arg(&k.presence)
            .arg(&k.presence_nodes)
            .arg(record.encode_to_vec())
            .arg(ttl_ms);
        return Ok(c);
    }
    let mut c = redis::cmd("SET");
    c.arg(&k.presence)
        .arg(record.encode_to_vec())
        .arg("PX")
        .arg(ttl_ms);
    Ok(c)
}

impl Store for RedisStore {
    fn append_batch(
        &self,
        now_ms: u64,
        items: &[Append],
    ) -> StoreResult<Vec<Result<Appended, AppendRefused>>> {
        Ok(self.append_batch_inner(now_ms, items)?)
    }

    fn dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_msg_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let field = keys::dedup_field(sender, client_msg_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.dedup).arg(field);
        let Some(rec) = opt_bytes(self.one(c)?)? else {
            return Ok(None);
        };
        let (seq, time_ms, expires_at_ms) = parse_dedup(&rec)?;
        Ok((expires_at_ms > now_ms).then_some(Appended {
            seq,
            time_ms,
            duplicate: true,
        }))
    }

    fn heads(&self, conversations: &[&str]) -> StoreResult<Vec<ConvHead>> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Pipe::default();
        for c in conversations {
            let k = ConvKeys::new(c).map_err(RedisStoreError::from)?;
            let mut h = redis::cmd("HMGET");
            h.arg(&k.head).arg("s").arg("t").arg("a");
            p.add(h);
        }
        let replies = self.with_conn(|conn| self.run(conn, &p))?;
        let heads = replies
            .iter()
            .map(|v| {
                let Value::Array(f) = v else {
                    return Err(RedisStoreError::Reply(format!("HMGET answered {v:?}")));
                };
                let g = |i: usize| {
                    f.get(i)
                        .map(opt_u64)
                        .transpose()
                        .map(|x| x.flatten().unwrap_or(0))
                };
                Ok(ConvHead {
                    seq: g(0)?,
                    last_time_ms: g(1)?,
                    last_activity_ms: g(2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(heads)
    }

    fn entries(
        &self,
        conversation: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        if limit == 0 || to_seq < from_seq.max(1) {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("FCALL");
        c.arg("tern_range_v2").arg(2).arg(&k.head).arg(&k.log);
        c.arg(from_seq)
            .arg(to_seq)
            .arg((limit as u64).min(RANGE_LIMIT_MAX));
        let v = self.one(c)?;
        let Value::Array(vals) = v else {
            return Err(RedisStoreError::Reply(format!("tern_range_v2 answered {v:?}")).into());
        };
        let first_seq = from_seq.max(1);
        let ring = self.keys.load();
        let mut out = Vec::with_capacity(vals.len());
        for (i, v) in vals.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            if let Some(bytes) = opt_bytes(v)? {
                out.push(load_entry(ring.as_deref(), conversation, seq, &bytes)?);
            }
        }
        Ok(out)
    }

    fn user_conv(&self, user: &str, conversation: &str) -> StoreResult<Option<UserConv>> {
        keys::id("user", user).map_err(RedisStoreError::from)?;
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.user_convs).arg(user);
        let v = self.one(c)?;
        Ok(opt_bytes(v)?
            .map(|b| parse_user_conv(conversation, &b))
            .transpose()?)
    }

    fn user_convs(&self, user: &str) -> StoreResult<Vec<UserConv>> {
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        Ok(self.filtered_index(
            &uk.convs,
            |conv| {
                let k = ConvKeys::new(conv)?;
                let mut c = redis::cmd("HGET");
                c.arg(&k.user_convs).arg(user);
                Ok(c)
            },
            |conv, v| opt_bytes(v)?.map(|b| parse_user_conv(conv, &b)).transpose(),
        )?)
    }

    fn group(&self, group_id: &str) -> StoreResult<Option<GroupMeta>> {
        let k = ConvKeys::group(group_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("GET");
        c.arg(&k.group_meta);
        Ok(decode_opt::<GroupMeta>(self.one(c)?, "group record")?)
    }

    fn group_member(&self, group_id: &str, user_id: &str) -> StoreResult<Option<MemberRecord>> {
        let k = ConvKeys::group(group_id).map_err(RedisStoreError::from)?;
        keys::id("user", user_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.members).arg(user_id);
        Ok(decode_opt::<MemberRecord>(self.one(c)?, "member record")?)
    }

    fn group_members(
        &self,
        group_id: &str,
        after_user_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<MemberRecord>> {
        let k = ConvKeys::group(group_id).map_err(RedisStoreError::from)?;
        if !after_user_id.is_empty() {
            keys::id("user", after_user_id).map_err(RedisStoreError::from)?;
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("FCALL");
        c.arg("tern_members_v2")
            .arg(2)
            .arg(&k.member_order)
            .arg(&k.members);
        c.arg(after_user_id)
            .arg((limit as u64).min(RANGE_LIMIT_MAX));
        let v = self.one(c)?;
        let Value::Array(vals) = v else {
            return Err(RedisStoreError::Reply(format!("tern_members_v2 answered {v:?}")).into());
        };
        let mut out = Vec::with_capacity(vals.len());
        for v in vals {
            if let Some(m) = decode_opt::<MemberRecord>(v, "member record")? {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn join_request(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<JoinRequestRecord>> {
        let k = ConvKeys::group(group_id).map_err(RedisStoreError::from)?;
        keys::id("user", user_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.join_requests).arg(user_id);
        Ok(decode_opt::<JoinRequestRecord>(
            self.one(c)?,
            "join request",
        )?)
    }

    fn apply_group_change(
        &self,
        change: &GroupChange,
    ) -> StoreResult<Result<Vec<u64>, GroupConflict>> {
        Ok(self.apply_group_change_inner(change)?)
    }

    fn apply_social(&self, ops: &[SocialOp]) -> StoreResult<()> {
        Ok(self.apply_social_inner(ops)?)
    }

    fn profile(&self, user_id: &str) -> StoreResult<Option<pb::Profile>> {
        let k = UserKeys::new(user_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("GET");
        c.arg(&k.profile);
        Ok(decode_opt::<pb::Profile>(self.one(c)?, "profile")?)
    }

    fn friend(&self, user: &str, friend: &str) -> StoreResult<Option<FriendRecord>> {
        let k = PairKeys::new(user, friend).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.friends).arg(user);
        Ok(decode_opt::<FriendRecord>(self.one(c)?, "friend record")?)
    }

    fn friend_pairs(&self, pairs: &[(&str, &str)]) -> StoreResult<Vec<bool>> {
        // One pipeline, like `blocked_pairs`; the friendship hash of a pair
        // is in the same slot as its block set.
        self.pair_query(pairs, "HEXISTS", |k| &k.friends)
    }

    fn friends(&self, user: &str) -> StoreResult<Vec<FriendRecord>> {
        // The same two round trips as the bulk read, in one place.
        Ok(self.friends_of(&[user])?.pop().unwrap_or_default())
    }

    fn friend_request(&self, from: &str, to: &str) -> StoreResult<Option<FriendRequestRecord>> {
        let k = PairKeys::new(from, to).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.requests).arg(from);
        let r = decode_opt::<FriendRequestRecord>(self.one(c)?, "friend request")?;
        // The pair's hash holds one request per direction, keyed by sender.
        Ok(r.filter(|r| r.to == to))
    }

    fn friend_requests(
        &self,
        user: &str,
    ) -> StoreResult<(Vec<FriendRequestRecord>, Vec<FriendRequestRecord>)> {
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        let incoming =
            self.filtered_index(
                &uk.requests_in,
                |from| {
                    let mut c = redis::cmd("HGET");
                    c.arg(&PairKeys::new(user, from)?.requests).arg(from);
                    Ok(c)
                },
                |_, v| {
                    Ok(decode_opt::<FriendRequestRecord>(v, "friend request")?
                        .filter(|r| r.to == user))
                },
            )?;
        let outgoing = self.filtered_index(
            &uk.requests_out,
            |to| {
                let mut c = redis::cmd("HGET");
                c.arg(&PairKeys::new(user, to)?.requests).arg(user);
                Ok(c)
            },
            |to, v| {
                Ok(decode_opt::<FriendRequestRecord>(v, "friend request")?.filter(|r| r.to == to))
            },
        )?;
        Ok((incoming, outgoing))
    }

    fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool> {
        let k = PairKeys::new(user, other).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SISMEMBER");
        c.arg(&k.blocks).arg(user);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn blocked_pairs(&self, pairs: &[(&str, &str)]) -> StoreResult<Vec<bool>> {
        // One pipeline: one round trip on one server; in a cluster the
        // pipeline is split by slot and every node is written before any
        // is read, so still one round trip per node, not per pair. Both
        // directions of a pair are the same set (`{p:<a>:<b>}:b`), so a
        // 1:1 send's two checks land on one node.
        self.pair_query(pairs, "SISMEMBER", |k| &k.blocks)
    }

    fn blocked(&self, user: &str) -> StoreResult<Vec<String>> {
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        Ok(self.filtered_index(
            &uk.blocked,
            |other| {
                let mut c = redis::cmd("SISMEMBER");
                c.arg(&PairKeys::new(user, other)?.blocks).arg(user);
                Ok(c)
            },
            |other, v| Ok((as_u64(&v)? == 1).then(|| other.to_owned())),
        )?)
    }

    fn put_presence(&self, record: &PresenceRecord) -> StoreResult<()> {
        self.one(presence_set(record)?)?;
        Ok(())
    }

    fn put_presences(&self, records: &[PresenceRecord]) -> StoreResult<()> {
        // One pipeline for the lot (split by slot in a cluster).
        if records.is_empty() {
            return Ok(());
        }
        let mut p = Pipe::default();
        for r in records {
            p.add(presence_set(r)?);
        }
        self.with_conn(|conn| self.run(conn, &p))?;
        Ok(())
    }

    fn friends_of(&self, users: &[&str]) -> StoreResult<Vec<Vec<FriendRecord>>> {
        // Two round trips for all users (their friend indexes, then every
        // friendship record), where `friends` per user is two each.
        if users.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.with_conn(|conn| {
            let mut p = Pipe::default();
            for u in users {
                let mut z = redis::cmd("ZRANGE");
                z.arg(&UserKeys::new(u)?.friends).arg(0).arg(-1);
                p.add(z);
            }
            let indexes = self.run(conn, &p)?;
            if indexes.len() != users.len() {
                return Err(RedisStoreError::Reply(format!(
                    "{} replies to {} ZRANGE",
                    indexes.len(),
                    users.len()
                )));
            }
            let members: Vec<Vec<String>> =
                indexes.into_iter().map(as_strings).collect::<Result<_>>()?;
            let mut probes = Pipe::default();
            for (u, friends) in users.iter().zip(&members) {
                for f in friends {
                    let mut c = redis::cmd("HGET");
                    c.arg(&PairKeys::new(u, f)?.friends).arg(*u);
                    probes.add(c);
                }
            }
            let mut vals = if probes.is_empty() {
                Vec::new()
            } else {
                self.run(conn, &probes)?
            }
            .into_iter();
            let mut out = Vec::with_capacity(users.len());
            for friends in &members {
                let mut records = Vec::new();
                for _ in friends {
                    let v = vals
                        .next()
                        .ok_or_else(|| RedisStoreError::Reply("too few replies to HGET".into()))?;
                    if let Some(r) = decode_opt::<FriendRecord>(v, "friend record")? {
                        records.push(r);
                    }
                }
                out.push(records);
            }
            Ok(out)
        })?)
    }

    fn put_presence_setting(
        &self,
        user: &str,
        setting: Option<&PresenceSetting>,
    ) -> StoreResult<()> {
        let k = UserKeys::new(user).map_err(RedisStoreError::from)?;
        self.set_or_del(
            &k.presence_setting,
            setting.map(prost::Message::encode_to_vec),
        )
    }

    fn presence_settings(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceSetting>>> {
        Ok(self.get_per_user(users, |k| &k.presence_setting, "presence setting")?)
    }

    fn presences(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceRecord>>> {
        Ok(self.get_per_user(users, |k| &k.presence, "presence")?)
    }

    fn push_bind(
        &self,
        user: &str,
        record: &pb::PushToken,
        tokens_max: usize,
    ) -> StoreResult<PushBind> {
        Ok(self.push_bind_inner(user, record, tokens_max)?)
    }

    fn push_unbind(
        &self,
        user: Option<&str>,
        platform: i32,
        token: &str,
    ) -> StoreResult<PushUnbind> {
        Ok(self.push_unbind_inner(user, platform, token)?)
    }

    fn push_tokens(&self, user: &str) -> StoreResult<Vec<pb::PushToken>> {
        Ok(self.push_tokens_inner(user)?)
    }

    fn push_settings(&self, user: &str) -> StoreResult<Option<PushSettings>> {
        let mut got = self.get_per_user(&[user], |k| &k.push_settings, "push settings")?;
        Ok(got.pop().flatten())
    }

    fn put_push_settings(&self, user: &str, settings: Option<&PushSettings>) -> StoreResult<()> {
        let k = UserKeys::new(user).map_err(RedisStoreError::from)?;
        self.set_or_del(
            &k.push_settings,
            settings.map(prost::Message::encode_to_vec),
        )
    }

    fn put_ban(&self, user: &str, ban: Option<&BanRecord>) -> StoreResult<()> {
        let k = UserKeys::new(user).map_err(RedisStoreError::from)?;
        self.set_or_del(&k.ban, ban.map(prost::Message::encode_to_vec))
    }

    fn ban(&self, user: &str) -> StoreResult<Option<BanRecord>> {
        let mut got = self.get_per_user(&[user], |k| &k.ban, "ban")?;
        Ok(got.pop().flatten())
    }

    fn take_seat(&self, tenant: &str, user: &str, max: u64) -> StoreResult<bool> {
        let k = keys::seats(tenant).map_err(RedisStoreError::from)?;
        keys::id("user", user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(SEAT_TAKE).arg(1).arg(&k).arg(user).arg(max);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn bans(&self, users: &[&str]) -> StoreResult<Vec<Option<BanRecord>>> {
        Ok(self.get_per_user(users, |k| &k.ban, "ban")?)
    }

    fn annotations(
        &self,
        conversation: &str,
        keys: &[Annotation],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HMGET");
        c.arg(&k.annotations);
        for key in keys {
            c.arg(keys::annotation_field(*key));
        }
        let Value::Array(values) = self.one(c)? else {
            return Err(RedisStoreError::Reply("HMGET answered no array".into()).into());
        };
        if values.len() != keys.len() {
            return Err(RedisStoreError::Reply("HMGET answered the wrong count".into()).into());
        }
        Ok(values
            .into_iter()
            .map(opt_bytes)
            .collect::<Result<Vec<_>>>()?)
    }

    fn edit_dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_edit_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let field =
            keys::edit_dedup_field(sender, client_edit_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.dedup).arg(field);
        let Some(rec) = opt_bytes(self.one(c)?)? else {
            return Ok(None);
        };
        let (seq, time_ms, expires_at_ms) = parse_dedup(&rec)?;
        Ok((expires_at_ms > now_ms).then_some(Appended {
            seq,
            time_ms,
            duplicate: true,
        }))
    }

    fn entries_at(&self, conversation: &str, seqs: &[u64]) -> StoreResult<Vec<pb::Entry>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // Only seqs up to the head are shown, as `tern_range_v2` does (an
        // entry past the head cannot exist: seqs are allocated first).
        let mut c = redis::cmd("HMGET");
        c.arg(&k.log);
        for s in seqs {
            c.arg(*s);
        }
        let v = self.one(c)?;
        let Value::Array(vals) = v else {
            return Err(RedisStoreError::Reply(format!("HMGET answered {v:?}")).into());
        };
        let ring = self.keys.load();
        let mut out = Vec::with_capacity(vals.len());
        for (seq, v) in seqs.iter().zip(vals) {
            if let Some(bytes) = opt_bytes(v)? {
                out.push(load_entry(ring.as_deref(), conversation, *seq, &bytes)?);
            }
        }
        Ok(out)
    }

    fn thread_stats(
        &self,
        conversation: &str,
        roots: &[(u64, u64)],
    ) -> StoreResult<Vec<ThreadStat>> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        // One pipeline, three commands per root, all O(log n) on one slot.
        let mut p = Pipe::default();
        for &(root, after_seq) in roots {
            let first = format!("[{}", keys::thread_member(root, 0));
            let end = format!("[{}", keys::thread_member(root, u64::MAX));
            let mut c = redis::cmd("ZLEXCOUNT");
            c.arg(&k.threads).arg(&first).arg(&end);
            p.add(c);
            let mut c = redis::cmd("ZLEXCOUNT");
            c.arg(&k.threads)
                .arg(format!("({}", keys::thread_member(root, after_seq)))
                .arg(&end);
            p.add(c);
            let mut c = redis::cmd("ZREVRANGEBYLEX");
            c.arg(&k.threads)
                .arg(&end)
                .arg(&first)
                .arg("LIMIT")
                .arg(0)
                .arg(1);
            p.add(c);
        }
        let vals = self.with_conn(|conn| self.run(conn, &p))?;
        if vals.len() != roots.len() * 3 {
            return Err(RedisStoreError::Reply("thread stats: short pipeline reply".into()).into());
        }
        let mut out = Vec::with_capacity(roots.len());
        for chunk in vals.chunks(3) {
            let last = as_strings(chunk[2].clone())?;
            out.push(ThreadStat {
                replies: as_u64(&chunk[0])?,
                after: as_u64(&chunk[1])?,
                last_seq: match last.first() {
                    Some(m) => thread_member_seq(m)?,
                    None => 0,
                },
            });
        }
        Ok(out)
    }

    fn thread_replies(
        &self,
        conversation: &str,
        root: u64,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let upper = if before_seq == 0 {
            format!("[{}", keys::thread_member(root, u64::MAX))
        } else {
            format!("({}", keys::thread_member(root, before_seq))
        };
        let mut c = redis::cmd("ZREVRANGEBYLEX");
        c.arg(&k.threads)
            .arg(upper)
            .arg(format!("[{}", keys::thread_member(root, 0)))
            .arg("LIMIT")
            .arg(0)
            .arg((limit as u64).min(RANGE_LIMIT_MAX));
        let members = as_strings(self.one(c)?)?;
        Ok(members
            .iter()
            .map(|m| thread_member_seq(m))
            .collect::<Result<Vec<_>>>()?)
    }

    fn thread_read_marks(
        &self,
        user: &str,
        conversation: &str,
        roots: &[u64],
    ) -> StoreResult<Vec<u64>> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("ZMSCORE");
        c.arg(&uk.thread_reads);
        for &root in roots {
            c.arg(keys::user_item(conversation, root));
        }
        let Value::Array(vals) = self.one(c)? else {
            return Err(RedisStoreError::Reply("ZMSCORE answered no array".into()).into());
        };
        Ok(vals
            .iter()
            .map(|v| match v {
                Value::Nil => Ok(0),
                Value::Double(d) => Ok(*d as u64),
                other => as_u64(other),
            })
            .collect::<Result<Vec<_>>>()?)
    }

    fn mark_thread_read(
        &self,
        user: &str,
        conversation: &str,
        root: u64,
        up_to_seq: u64,
    ) -> StoreResult<()> {
        ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        // GT: the mark only moves forward, atomically (Redis >= 6.2).
        let mut c = redis::cmd("ZADD");
        c.arg(&uk.thread_reads)
            .arg("GT")
            .arg(up_to_seq)
            .arg(keys::user_item(conversation, root));
        self.one(c)?;
        Ok(())
    }

    fn room_create(&self, room: &RoomRecord) -> StoreResult<bool> {
        let k = RoomKeys::new(&room.room_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SET");
        c.arg(&k.meta).arg(room.encode_to_vec()).arg("NX");
        // `SET NX` answers OK or nil: repeating it after a dropped
        // connection answers nil for a write that did happen, so run once.
        let mut p = Pipe::default();
        p.add_once(c);
        let v = self.with_conn_once(|conn| {
            let v = first(self.run(conn, &p)?)?;
            self.wait_durable(conn)?;
            Ok(v)
        })?;
        Ok(!matches!(v, Value::Nil))
    }

    fn room(&self, room_id: &str) -> StoreResult<Option<(RoomRecord, u64)>> {
        let k = RoomKeys::new(room_id).map_err(RedisStoreError::from)?;
        let mut p = Pipe::default();
        let mut meta = redis::cmd("GET");
        meta.arg(&k.meta);
        let mut head = redis::cmd("GET");
        head.arg(&k.head);
        p.add(meta);
        p.add(head);
        let mut vals = self.with_conn(|conn| self.run(conn, &p))?.into_iter();
        let (Some(meta), Some(head)) = (vals.next(), vals.next()) else {
            return Err(RedisStoreError::Reply("room: two replies expected".into()).into());
        };
        let Some(meta) = decode_opt::<RoomRecord>(meta, "room record")? else {
            return Ok(None);
        };
        let head = match opt_bytes(head)? {
            Some(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| RedisStoreError::Corrupt("room head".into()))?,
            None => 0,
        };
        Ok(Some((meta, head)))
    }

    fn room_append(
        &self,
        room_id: &str,
        mut entry: pb::Entry,
        keep: usize,
    ) -> StoreResult<Option<u64>> {
        let k = RoomKeys::new(room_id).map_err(RedisStoreError::from)?;
        let conv = tern_protocol::ids::room_conversation(room_id);
        // Stored without its seq (the function appends it) and without the
        // conversation id (the key names it).
        entry.seq = 0;
        entry.conversation_id = String::new();
        let ring = self.keys.load();
        let bytes = seal::encode_entry(ring.as_deref(), &conv, entry);
        let mut c = redis::cmd("FCALL");
        c.arg("tern_room_post_v2")
            .arg(3)
            .arg(&k.meta)
            .arg(&k.head)
            .arg(&k.recent)
            .arg(bytes)
            .arg(keep.max(1));
        let mut p = Pipe::default();
        p.add_once(c);
        let v = self.with_conn_once(|conn| {
            let v = first(self.run(conn, &p)?)?;
            self.wait_durable(conn)?;
            Ok(v)
        })?;
        match as_u64(&v)? {
            0 => Ok(None),
            seq => Ok(Some(seq)),
        }
    }

    fn room_delete(&self, room_id: &str) -> StoreResult<bool> {
        let k = RoomKeys::new(room_id).map_err(RedisStoreError::from)?;
        // One `DEL` of the three keys (one hash tag): atomic against
        // `tern_room_post_v2`, which writes the head and the list only
        // while the record exists, so the count is > 0 exactly when the
        // room existed. Repeating it after a dropped connection would
        // answer 0 for a deletion that happened: run once.
        let mut c = redis::cmd("DEL");
        c.arg(&k.meta).arg(&k.head).arg(&k.recent);
        let mut p = Pipe::default();
        p.add_once(c);
        let v = self.with_conn_once(|conn| {
            let v = first(self.run(conn, &p)?)?;
            self.wait_durable(conn)?;
            Ok(v)
        })?;
        Ok(as_u64(&v)? > 0)
    }

    fn room_recent(
        &self,
        room_id: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>> {
        let k = RoomKeys::new(room_id).map_err(RedisStoreError::from)?;
        let conv = tern_protocol::ids::room_conversation(room_id);
        // The list holds at most the kept window (trimmed by every post):
        // read it whole and pick here.
        let mut c = redis::cmd("LRANGE");
        c.arg(&k.recent).arg(0).arg(-1);
        let Value::Array(vals) = self.one(c)? else {
            return Err(RedisStoreError::Reply("LRANGE answered no array".into()).into());
        };
        let ring = self.keys.load();
        let mut out = Vec::new();
        for v in vals {
            if out.len() >= limit {
                break;
            }
            let Some(bytes) = opt_bytes(v)? else { continue };
            let mut e = seal::decode_entry(ring.as_deref(), &conv, &bytes)?;
            if before_seq != 0 && e.seq >= before_seq {
                continue;
            }
            e.conversation_id.clone_from(&conv);
            out.push(e);
        }
        out.reverse();
        Ok(out)
    }

    fn todo(&self, conversation: &str, seq: u64) -> StoreResult<Option<TodoRecord>> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HGET");
        c.arg(&k.todos).arg(seq);
        let Some(v) = opt_bytes(self.one(c)?)? else {
            return Ok(None);
        };
        // `<version>:<record>`; the record carries the version too.
        let corrupt = || RedisStoreError::Corrupt("to-do record".into());
        let at = v.iter().position(|&b| b == b':').ok_or_else(corrupt)?;
        let mut r = TodoRecord::decode(&v[at + 1..]).map_err(|_| corrupt())?;
        r.version = std::str::from_utf8(&v[..at])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)?;
        Ok(Some(r))
    }

    fn set_todo_open(
        &self,
        user: &str,
        conversation: &str,
        seq: u64,
        open: bool,
    ) -> StoreResult<()> {
        ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        let item = keys::user_item(conversation, seq);
        let c = if open {
            zadd_lex(&uk.todos_open, &item)
        } else {
            let mut c = redis::cmd("ZREM");
            c.arg(&uk.todos_open).arg(item);
            c
        };
        self.one(c)?;
        Ok(())
    }

    fn todo_index(
        &self,
        user: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let uk = UserKeys::new(user).map_err(RedisStoreError::from)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            None => "-".to_owned(),
            Some((conv, seq)) => format!("({}", keys::user_item(conv, seq)),
        };
        let mut c = redis::cmd("ZRANGEBYLEX");
        c.arg(&uk.todos_open)
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg((limit as u64).min(RANGE_LIMIT_MAX));
        let items = as_strings(self.one(c)?)?;
        items
            .iter()
            .map(|i| {
                keys::parse_user_item(i)
                    .map(|(c, s)| (c.to_owned(), s))
                    .ok_or_else(|| RedisStoreError::Corrupt("to-do index member".into()).into())
            })
            .collect()
    }

    // ---- calls in progress (docs/redis.md, "Calls") ----

    fn call(&self, id: &str, _now_ms: u64) -> StoreResult<Option<CallSlot>> {
        let key = keys::call(id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("GET");
        c.arg(&key);
        let Some(v) = opt_bytes(self.one(c)?)? else {
            return Ok(None);
        };
        let corrupt = || RedisStoreError::Corrupt("call record".into());
        let at = v.iter().position(|&b| b == b':').ok_or_else(corrupt)?;
        let version = std::str::from_utf8(&v[..at])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)?;
        Ok(Some(CallSlot {
            version,
            state: v[at + 1..].to_vec(),
        }))
    }

    fn put_call(
        &self,
        id: &str,
        expected: u64,
        state: &[u8],
        _now_ms: u64,
        lease_ms: u64,
    ) -> StoreResult<bool> {
        let key = keys::call(id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(CALL_PUT)
            .arg(1)
            .arg(&key)
            .arg(expected)
            .arg(state)
            .arg(lease_ms.max(1));
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn remove_call(&self, id: &str, expected: u64) -> StoreResult<bool> {
        let key = keys::call(id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(CALL_REMOVE).arg(1).arg(&key).arg(expected);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn renew_calls(&self, ids: &[&str], _now_ms: u64, lease_ms: u64) -> StoreResult<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Pipe::default();
        for id in ids {
            let mut c = redis::cmd("PEXPIRE");
            c.arg(keys::call(id).map_err(RedisStoreError::from)?)
                .arg(lease_ms.max(1));
            p.add(c);
        }
        let vals = self.with_conn(|conn| self.run(conn, &p))?;
        if vals.len() != ids.len() {
            return Err(RedisStoreError::Reply(format!(
                "{} replies to {} PEXPIRE",
                vals.len(),
                ids.len()
            ))
            .into());
        }
        Ok(vals
            .iter()
            .map(|v| as_u64(v).map(|x| x == 1))
            .collect::<Result<_>>()?)
    }

    // ---- search (issue 19; docs/redis.md, "Search") ----

    fn search_indexed(&self, conversation: &str) -> StoreResult<u64> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("ZSCORE");
        c.arg(&k.search_mark).arg("m");
        Ok(opt_u64(&self.one(c)?)?.unwrap_or(0))
    }

    fn search_index(
        &self,
        conversation: &str,
        postings: &[(String, u64)],
        upto_seq: u64,
    ) -> StoreResult<()> {
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut by_token: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for (token, seq) in postings {
            by_token.entry(token.as_str()).or_default().push(*seq);
        }
        // Postings first, the mark last: a pipeline cut short leaves the
        // mark behind, and the postings are written again (ZADD is
        // idempotent). All keys share the conversation's hash tag.
        let mut p = Pipe::default();
        for (token, seqs) in by_token {
            let key = k.search_postings(token);
            let mut z = redis::cmd("ZADD");
            z.arg(&key);
            for s in seqs {
                z.arg(s).arg(s);
            }
            p.add(z);
            // Keep the newest postings only: a bound on memory per token.
            let mut trim = redis::cmd("ZREMRANGEBYRANK");
            trim.arg(&key)
                .arg(0)
                .arg(-(SEARCH_POSTINGS_PER_TOKEN_MAX as i64) - 1);
            p.add(trim);
        }
        let mut mark = redis::cmd("ZADD");
        mark.arg(&k.search_mark).arg("GT").arg(upto_seq).arg("m");
        p.add(mark);
        self.with_conn(|conn| self.run(conn, &p))?;
        Ok(())
    }

    fn search_postings(
        &self,
        conversation: &str,
        token: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        if from_seq > to_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let k = ConvKeys::new(conversation).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("ZREVRANGEBYSCORE");
        c.arg(k.search_postings(token))
            .arg(to_seq)
            .arg(from_seq)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let Value::Array(members) = self.one(c)? else {
            return Err(
                RedisStoreError::Reply("ZREVRANGEBYSCORE answered a non-array".into()).into(),
            );
        };
        Ok(members.iter().map(as_u64).collect::<Result<Vec<_>>>()?)
    }
}

/// Postings kept per (conversation, token) in Redis: the newest 100 000
/// messages holding a token are found by it; older ones only through a rarer
/// word of the same query (docs/redis.md, "Search").
pub const SEARCH_POSTINGS_PER_TOKEN_MAX: usize = 100_000;

impl Credentials for RedisStore {
    fn credential(&self, user: &str) -> StoreResult<Option<String>> {
        let k = UserKeys::new(user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("GET");
        c.arg(&k.credential);
        match self.one(c)? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("credential of {user} is not UTF-8"))),
            other => Err(StoreError::Corrupt(format!(
                "credential of {user}: unexpected reply {other:?}"
            ))),
        }
    }

    fn create_credential(&self, user: &str, phc: &str) -> StoreResult<bool> {
        let k = UserKeys::new(user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SET");
        c.arg(&k.credential).arg(phc).arg("NX");
        // OK when set, nil when the key existed.
        Ok(!matches!(self.one(c)?, Value::Nil))
    }
}

/// Appends `ARGV[1]` to an audit log (`KEYS[1]` the hash, `KEYS[2]` the
/// seq) and drops the record `ARGV[2]` back; answers the new seq. EVAL,
/// not the function library: a script needs no library version bump, so
/// nodes of the previous version keep theirs (docs/redis.md).
const AUDIT_APPEND: &str = "local s = redis.call('INCR', KEYS[2]) \
     redis.call('HSET', KEYS[1], s, ARGV[1]) \
     local old = s - tonumber(ARGV[2]) \
     if old > 0 then redis.call('HDEL', KEYS[1], old) end \
     return s";

/// Stores department `ARGV[1]`'s record `ARGV[3]` if its version
/// (`KEYS[2]`) is `ARGV[2]`, bumping it; answers 1, else 0.
const DEPT_PUT: &str = "local v = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') \
     if v ~= tonumber(ARGV[2]) then return 0 end \
     redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) \
     redis.call('HSET', KEYS[2], ARGV[1], v + 1) \
     return 1";

/// Deletes department `ARGV[1]` at version `ARGV[2]` with its members hash
/// (`KEYS[3]`) and their index entries (`KEYS[4..]`, one per member, as read
/// just before: a member added meanwhile makes it answer -1, and the caller
/// reads again); answers 1, 0 (version moved or no such department) or -1.
const DEPT_DELETE: &str = "local v = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') \
     if v == 0 or v ~= tonumber(ARGV[2]) then return 0 end \
     if redis.call('HLEN', KEYS[3]) ~= #KEYS - 3 then return -1 end \
     for i = 4, #KEYS do redis.call('SREM', KEYS[i], ARGV[1]) end \
     redis.call('HDEL', KEYS[1], ARGV[1]) \
     redis.call('HDEL', KEYS[2], ARGV[1]) \
     redis.call('DEL', KEYS[3]) \
     return 1";

/// Adds (or changes) member `ARGV[1]` of department `ARGV[2]`: the members
/// hash `KEYS[1]` and the user's set `KEYS[2]`.
const DEPT_MEMBER_PUT: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) \
     redis.call('SADD', KEYS[2], ARGV[2]) \
     return 1";

/// Removes member `ARGV[1]` of department `ARGV[2]`; answers 1, or 0 when
/// they were not one.
const DEPT_MEMBER_REMOVE: &str = "if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end \
     redis.call('SREM', KEYS[2], ARGV[2]) \
     return 1";

/// Gives `ARGV[1]` a seat of the set `KEYS[1]` unless `ARGV[2]` others
/// hold them all; answers 1 (held) or 0.
const SEAT_TAKE: &str = "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end \
     if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
     redis.call('SADD', KEYS[1], ARGV[1]) \
     return 1";

/// Adds `ARGV[1]` to the counter `KEYS[1]` unless it would pass `ARGV[2]`;
/// answers 1 (added) or 0.
const STORAGE_CHARGE: &str = "local u = tonumber(redis.call('GET', KEYS[1]) or '0') \
     if u + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end \
     redis.call('INCRBY', KEYS[1], ARGV[1]) \
     return 1";

/// Takes `ARGV[1]` off the counter `KEYS[1]`, not below 0.
const STORAGE_REFUND: &str = "local u = tonumber(redis.call('GET', KEYS[1]) or '0') \
     local left = u - tonumber(ARGV[1]) \
     if left < 0 then left = 0 end \
     redis.call('SET', KEYS[1], left) \
     return left";

/// Attempts of a department delete that races with new members.
const DEPT_DELETE_ATTEMPTS_MAX: usize = 8;

impl OrgStore for RedisStore {
    fn dept(&self, tenant: &str, id: &str) -> StoreResult<Option<DeptRecord>> {
        let (d, dv) = keys::org(tenant).map_err(RedisStoreError::from)?;
        let mut p = Pipe::default();
        let mut c = redis::cmd("HGET");
        c.arg(&d).arg(id);
        p.add(c);
        let mut c = redis::cmd("HGET");
        c.arg(&dv).arg(id);
        p.add(c);
        let vals = self.with_conn(|conn| self.run(conn, &p))?;
        match vals.as_slice() {
            [Value::BulkString(b), v] => {
                let mut r = DeptRecord::decode(b.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("department {id}: {e}")))?;
                r.version = as_u64(v)?;
                Ok(Some(r))
            }
            [Value::Nil, _] => Ok(None),
            other => Err(StoreError::Corrupt(format!(
                "department {id}: unexpected reply {other:?}"
            ))),
        }
    }

    fn depts(&self, tenant: &str) -> StoreResult<Vec<DeptRecord>> {
        let (d, dv) = keys::org(tenant).map_err(RedisStoreError::from)?;
        let mut p = Pipe::default();
        let mut c = redis::cmd("HGETALL");
        c.arg(&d);
        p.add(c);
        let mut c = redis::cmd("HGETALL");
        c.arg(&dv);
        p.add(c);
        let vals = self.with_conn(|conn| self.run(conn, &p))?;
        let [records, versions] = <[Value; 2]>::try_from(vals)
            .map_err(|_| StoreError::Corrupt("departments: two replies expected".into()))?;
        let versions: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            as_pairs(versions)?.into_iter().collect();
        let mut out = Vec::new();
        for (id, bytes) in as_pairs(records)? {
            let mut r = DeptRecord::decode(bytes.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("a department: {e}")))?;
            r.version = versions
                .get(&id)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            out.push(r);
        }
        out.sort_unstable_by(|a, b| a.dept_id.cmp(&b.dept_id));
        Ok(out)
    }

    fn put_dept(&self, tenant: &str, record: &DeptRecord, expected: u64) -> StoreResult<bool> {
        let (d, dv) = keys::org(tenant).map_err(RedisStoreError::from)?;
        keys::id("department", &record.dept_id).map_err(RedisStoreError::from)?;
        let stored = DeptRecord {
            version: 0,
            ..record.clone()
        };
        let mut c = redis::cmd("EVAL");
        c.arg(DEPT_PUT)
            .arg(2)
            .arg(&d)
            .arg(&dv)
            .arg(&record.dept_id)
            .arg(expected)
            .arg(stored.encode_to_vec());
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn delete_dept(&self, tenant: &str, id: &str, expected: u64) -> StoreResult<bool> {
        let (d, dv) = keys::org(tenant).map_err(RedisStoreError::from)?;
        let m = keys::org_members(tenant, id).map_err(RedisStoreError::from)?;
        for _ in 0..DEPT_DELETE_ATTEMPTS_MAX {
            let mut c = redis::cmd("HKEYS");
            c.arg(&m);
            let users = as_strings(self.one(c)?)?;
            let mut c = redis::cmd("EVAL");
            c.arg(DEPT_DELETE)
                .arg(3 + users.len())
                .arg(&d)
                .arg(&dv)
                .arg(&m);
            for u in &users {
                c.arg(keys::org_user(tenant, u).map_err(RedisStoreError::from)?);
            }
            c.arg(id).arg(expected);
            match self.one(c)? {
                Value::Int(1) => return Ok(true),
                Value::Int(0) => return Ok(false),
                _ => continue, // a member joined meanwhile: read them again
            }
        }
        Err(StoreError::Corrupt(format!(
            "department {id}: members kept changing during its delete"
        )))
    }

    fn put_dept_member(&self, tenant: &str, dept: &str, member: &DeptMember) -> StoreResult<()> {
        let m = keys::org_members(tenant, dept).map_err(RedisStoreError::from)?;
        let u = keys::org_user(tenant, &member.user_id).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(DEPT_MEMBER_PUT)
            .arg(2)
            .arg(&m)
            .arg(&u)
            .arg(&member.user_id)
            .arg(dept)
            .arg(member.encode_to_vec());
        self.one(c)?;
        Ok(())
    }

    fn remove_dept_member(&self, tenant: &str, dept: &str, user: &str) -> StoreResult<bool> {
        let m = keys::org_members(tenant, dept).map_err(RedisStoreError::from)?;
        let u = keys::org_user(tenant, user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(DEPT_MEMBER_REMOVE)
            .arg(2)
            .arg(&m)
            .arg(&u)
            .arg(user)
            .arg(dept);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn dept_members(
        &self,
        tenant: &str,
        dept: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeptMember>> {
        let m = keys::org_members(tenant, dept).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("HVALS");
        c.arg(&m);
        let Value::Array(items) = self.one(c)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            if let Value::BulkString(b) = v {
                out.push(
                    DeptMember::decode(b.as_slice())
                        .map_err(|e| StoreError::Corrupt(format!("member of {dept}: {e}")))?,
                );
            }
        }
        out.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        out.retain(|x| after.is_empty() || x.user_id.as_str() > after);
        out.truncate(limit);
        Ok(out)
    }

    fn free_seat(&self, tenant: &str, user: &str) -> StoreResult<bool> {
        let k = keys::seats(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SREM");
        c.arg(&k).arg(user);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn charge_storage(&self, tenant: &str, bytes: u64, max: u64) -> StoreResult<bool> {
        let k = keys::storage(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(STORAGE_CHARGE).arg(1).arg(&k).arg(bytes).arg(max);
        Ok(as_u64(&self.one(c)?)? == 1)
    }

    fn refund_storage(&self, tenant: &str, bytes: u64) -> StoreResult<()> {
        let k = keys::storage(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(STORAGE_REFUND).arg(1).arg(&k).arg(bytes);
        self.one(c)?;
        Ok(())
    }

    fn storage_used(&self, tenant: &str) -> StoreResult<u64> {
        let k = keys::storage(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("GET");
        c.arg(&k);
        match self.one(c)? {
            Value::Nil => Ok(0),
            v => Ok(as_u64(&v)?),
        }
    }

    fn seats(&self, tenant: &str) -> StoreResult<u64> {
        let k = keys::seats(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SCARD");
        c.arg(&k);
        as_u64(&self.one(c)?).map_err(Into::into)
    }

    fn user_depts(&self, tenant: &str, user: &str) -> StoreResult<Vec<String>> {
        let u = keys::org_user(tenant, user).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("SMEMBERS");
        c.arg(&u);
        let mut out = as_strings(self.one(c)?)?;
        out.sort_unstable();
        Ok(out)
    }
}

impl AuditLog for RedisStore {
    fn audit_append(&self, tenant: &str, record: &AuditRecord, keep: u64) -> StoreResult<u64> {
        let (log, head) = keys::audit(tenant).map_err(RedisStoreError::from)?;
        let mut c = redis::cmd("EVAL");
        c.arg(AUDIT_APPEND)
            .arg(2)
            .arg(&log)
            .arg(&head)
            .arg(record.encode_to_vec())
            .arg(keep.max(1));
        Ok(as_u64(&self.one(c)?)?)
    }

    fn audit_page(
        &self,
        tenant: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let (log, head) = keys::audit(tenant).map_err(RedisStoreError::from)?;
        let top = if before_seq == 0 {
            let mut c = redis::cmd("GET");
            c.arg(&head);
            match self.one(c)? {
                Value::Nil => return Ok(Vec::new()),
                v => as_u64(&v)?,
            }
        } else {
            before_seq - 1
        };
        // The newest `limit` seqs at or below `top`: the log is contiguous
        // from the newest back to the oldest kept, so a missing field means
        // the rest was dropped.
        let seqs: Vec<u64> = (1..=top).rev().take(limit).collect();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("HMGET");
        c.arg(&log);
        for s in &seqs {
            c.arg(*s);
        }
        let Value::Array(values) = self.one(c)? else {
            return Err(StoreError::Corrupt(
                "HMGET of the audit log: not an array".into(),
            ));
        };
        let mut out = Vec::with_capacity(values.len());
        for (seq, v) in seqs.iter().zip(values) {
            match v {
                Value::BulkString(b) => {
                    let mut r = AuditRecord::decode(b.as_slice()).map_err(|e| {
                        StoreError::Corrupt(format!("audit record {seq} of {tenant:?}: {e}"))
                    })?;
                    r.seq = *seq;
                    out.push(r);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Commands and replies
// ---------------------------------------------------------------------------

/// The FCALL of one append item.
fn append_cmd(k: &ConvKeys, keys: Option<&KeyRing>, now_ms: u64, item: &Append) -> Result<Cmd> {
    let mut c = redis::cmd("FCALL");
    // Keys 7 and 8 are the thread index and the to-dos (read by effects h,
    // t and r), key 9 the annotations (read by effect a only).
    c.arg("tern_append_v2").arg(9);
    c.arg(&k.head)
        .arg(&k.log)
        .arg(&k.dedup)
        .arg(&k.dedup_expiry)
        .arg(&k.user_convs);
    // The members key of the group the append depends on. For a group's own
    // conversation it is under the same tag; anything else would span slots,
    // which a cluster refuses (CROSSSLOT) and a single server allows.
    match &item.member_of {
        Some(m) => c.arg(ConvKeys::group(&m.group_id)?.members),
        None => c.arg(&k.members),
    };
    c.arg(&k.threads).arg(&k.todos).arg(&k.annotations);
    c.arg(now_ms)
        .arg(stored_entry(keys, &item.conversation, &item.entry))
        .arg(item.entry.time_ms);
    c.arg(if item.activity { "1" } else { "0" });
    match (&item.dedup, &item.effect) {
        (Some(d), AppendEffect::Edit { .. }) => c
            .arg(keys::edit_dedup_field(&d.sender, &d.client_msg_id)?)
            .arg(d.expires_at_ms),
        (Some(d), _) => c
            .arg(keys::dedup_field(&d.sender, &d.client_msg_id)?)
            .arg(d.expires_at_ms),
        (None, _) => c.arg("").arg(0),
    };
    match &item.member_of {
        Some(m) => {
            keys::id("user", &m.user_id)?;
            c.arg(&m.user_id)
        }
        None => c.arg(""),
    };
    match &item.effect {
        AppendEffect::None => c.arg("n").arg(0).arg(""),
        AppendEffect::Recall { seq } => c.arg("r").arg(*seq).arg(""),
        AppendEffect::Read { user_id, up_to_seq } => {
            keys::id("user", user_id)?;
            c.arg("d").arg(*up_to_seq).arg(user_id)
        }
        AppendEffect::Edit {
            expect_edit_count,
            message,
        } => c.arg("e").arg(message.seq).arg(*expect_edit_count),
        AppendEffect::Annotate {
            seq, live_message, ..
        } => c
            .arg("a")
            .arg(*seq)
            .arg(if *live_message { "1" } else { "0" }),
        AppendEffect::ThreadReply { root_seq } => c.arg("h").arg(*root_seq).arg(""),
        AppendEffect::Todo {
            seq,
            expect_version,
            ..
        } => c.arg("t").arg(*seq).arg(*expect_version),
    };
    c.arg(DEDUP_PURGE_PER_APPEND_MAX);
    match &item.effect {
        // The message as it is after the edit, sealed for its own context,
        // before the participants (the function reads it at a fixed place).
        AppendEffect::Edit { message, .. } => {
            c.arg(stored_entry(keys, &item.conversation, message));
        }
        // The record's field, its expected bytes and its new bytes, likewise.
        AppendEffect::Annotate {
            key, expect, new, ..
        } => {
            c.arg(keys::annotation_field(*key))
                .arg(expect.as_slice())
                .arg(new.as_slice());
        }
        _ => {}
    }
    if let AppendEffect::Todo { record, .. } = &item.effect {
        // At the same fixed place as an edit's message.
        c.arg(record.encode_to_vec());
    }
    for p in &item.participants {
        keys::id("user", p)?;
        c.arg(p);
    }
    Ok(c)
}

fn parse_append_reply(v: &Value) -> Result<Result<Appended, AppendRefused>> {
    let bad = || RedisStoreError::Reply(format!("tern_append_v2 answered {v:?}"));
    let Value::Array(f) = v else {
        return Err(bad());
    };
    match f.first().map(as_i64).transpose()? {
        Some(0) if f.len() == 4 => Ok(Ok(Appended {
            seq: as_u64(&f[1])?,
            time_ms: as_u64(&f[2])?,
            duplicate: as_u64(&f[3])? == 1,
        })),
        Some(1) => Ok(Err(AppendRefused::NotMember)),
        Some(2) => Ok(Err(AppendRefused::NotRecallable)),
        Some(3) => Ok(Err(AppendRefused::ReadNotAdvanced)),
        Some(4) => Ok(Err(AppendRefused::NotEditable)),
        Some(5) => Ok(Err(AppendRefused::NotThreadable)),
        Some(6) => Ok(Err(AppendRefused::TodoChanged)),
        Some(7) => Ok(Err(AppendRefused::AnnotationChanged)),
        _ => Err(bad()),
    }
}

/// An entry as stored: without `seq` and `conversation_id`, which the store
/// owns and sets again on read (proto3 omits the zero and the empty string,
/// so the stored bytes do not repeat the key); its content sealed when
/// `keys` are set ([`seal::encode_entry`]).
fn stored_entry(keys: Option<&KeyRing>, conversation: &str, e: &pb::Entry) -> Vec<u8> {
    // One clone per append, to clear two fields without touching the
    // caller's entry; the encoding allocates anyway.
    let mut e = e.clone();
    e.seq = 0;
    e.conversation_id.clear();
    seal::encode_entry(keys, conversation, e)
}

fn load_entry(
    keys: Option<&KeyRing>,
    conversation: &str,
    seq: u64,
    bytes: &[u8],
) -> StoreResult<pb::Entry> {
    let mut e = seal::decode_entry(keys, conversation, bytes).map_err(|e| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("entry {conversation}#{seq}: {m}")),
        other => other,
    })?;
    e.seq = seq;
    e.conversation_id = conversation.to_owned();
    Ok(e)
}

fn parse_user_conv(conversation: &str, b: &[u8]) -> Result<UserConv> {
    let corrupt = || {
        RedisStoreError::Corrupt(format!(
            "user record of {conversation}: {:?}",
            String::from_utf8_lossy(b)
        ))
    };
    let s = std::str::from_utf8(b).map_err(|_| corrupt())?;
    let mut it = s
        .split(':')
        .map(|x| x.parse::<u64>().map_err(|_| corrupt()));
    let (Some(f), Some(t), Some(r), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(corrupt());
    };
    Ok(UserConv {
        conversation_id: conversation.to_owned(),
        visible_from_seq: f?,
        visible_to_seq: t?,
        read_seq: r?,
    })
}

/// A dedup record: `<seq>:<time_ms>:<expires_at_ms>` (as `tern_append_v2`
/// writes it).
fn parse_dedup(b: &[u8]) -> Result<(u64, u64, u64)> {
    let corrupt =
        || RedisStoreError::Corrupt(format!("dedup record {:?}", String::from_utf8_lossy(b)));
    let s = std::str::from_utf8(b).map_err(|_| corrupt())?;
    let mut it = s
        .split(':')
        .map(|x| x.parse::<u64>().map_err(|_| corrupt()));
    let (Some(seq), Some(t), Some(exp), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(corrupt());
    };
    Ok((seq?, t?, exp?))
}

/// The reply seq of a thread index member (`keys::thread_member`).
fn thread_member_seq(m: &str) -> Result<u64> {
    m.rsplit_once(':')
        .and_then(|(_, s)| s.parse().ok())
        .ok_or_else(|| RedisStoreError::Corrupt("thread index member".into()))
}

fn zadd_lex(key: &str, member: &str) -> Cmd {
    let mut c = redis::cmd("ZADD");
    c.arg(key).arg(0).arg(member);
    c
}

fn decode_opt<T: prost::Message + Default>(v: Value, what: &str) -> Result<Option<T>> {
    match opt_bytes(v)? {
        None => Ok(None),
        Some(b) => T::decode(b.as_slice())
            .map(Some)
            .map_err(|e| RedisStoreError::Corrupt(format!("{what}: {e}"))),
    }
}

fn first(mut v: Vec<Value>) -> Result<Value> {
    if v.is_empty() {
        return Err(RedisStoreError::Reply("an empty pipeline reply".into()));
    }
    Ok(v.swap_remove(0))
}

fn opt_bytes(v: Value) -> Result<Option<Vec<u8>>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(RedisStoreError::Reply(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn opt_u64(v: &Value) -> Result<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        other => as_u64(other).map(Some),
    }
}

fn as_i64(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisStoreError::Reply(format!("expected an integer, got {v:?}"))),
        other => Err(RedisStoreError::Reply(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn as_u64(v: &Value) -> Result<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i)
            .map_err(|_| RedisStoreError::Reply(format!("expected a count, got {i}"))),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisStoreError::Reply(format!("expected a count, got {v:?}"))),
        other => Err(RedisStoreError::Reply(format!(
            "expected a count, got {other:?}"
        ))),
    }
}

/// An `HGETALL` answer as (field, value) pairs.
fn as_pairs(v: Value) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let Value::Array(items) = v else {
        return Err(RedisStoreError::Reply(format!(
            "expected an array, got {v:?}"
        )));
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (opt_bytes(k)?, opt_bytes(v)?) {
            out.push((k, v));
        }
    }
    Ok(out)
}

fn as_strings(v: Value) -> Result<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(RedisStoreError::Reply(format!(
            "expected an array, got {v:?}"
        )));
    };
    items
        .into_iter()
        .map(|i| match opt_bytes(i)? {
            Some(b) => String::from_utf8(b)
                .map_err(|_| RedisStoreError::Corrupt("a non-UTF-8 index member".into())),
            None => Err(RedisStoreError::Reply("a nil index member".into())),
        })
        .collect()
}

/// A command sent to every primary answers once per node in a cluster (a
/// map from node to reply, or one aggregated reply); on one server, once.
fn per_node(v: Value) -> Vec<Value> {
    match v {
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        other => vec![other],
    }
}

/// The indexes of a cluster pipeline's commands that a node refused with
/// a redirect (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the command did
/// not run there); `None` when the error is anything else or also holds
/// another error. The gateway's cluster links use it too.
pub fn redirected(e: &RedisError) -> Option<HashSet<usize>> {
    let errs = e.clone().into_server_errors()?;
    errs.iter()
        .map(|(i, se)| {
            matches!(
                se.kind(),
                Some(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
            )
            .then_some(*i)
        })
        .collect()
}

fn is_function_missing(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// `INFO server`'s `redis_version`, the lowest over a cluster's primaries.
fn server_version(conn: &mut Conn) -> Result<String> {
    let mut c = redis::cmd("INFO");
    c.arg("server");
    let mut lowest: Option<String> = None;
    for node in per_node(conn.command_all_primaries(&c)?) {
        let text = match node {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            other => return Err(RedisStoreError::Reply(format!("INFO answered {other:?}"))),
        };
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| RedisStoreError::Reply("INFO has no redis_version".into()))?;
        if lowest
            .as_ref()
            .is_none_or(|l| parse_version(&v) < parse_version(l))
        {
            lowest = Some(v);
        }
    }
    lowest.ok_or_else(|| RedisStoreError::Reply("INFO answered from no node".into()))
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Refuses a server that would acknowledge writes before they are durable,
/// unless the wait policy makes up for it.
fn check_durable(conn: &mut Conn, wait: &WaitPolicy, single_name: &str) -> Result<()> {
    match *wait {
        WaitPolicy::Aof { local: true, .. } => return Ok(()),
        WaitPolicy::Replicas { replicas, .. } | WaitPolicy::Aof { replicas, .. }
            if replicas > 0 =>
        {
            return Ok(());
        }
        _ => {}
    }
    let mut c = redis::cmd("CONFIG");
    c.arg("GET").arg("append*");
    let reply = conn.command_all_primaries(&c)?;
    let nodes: Vec<(String, Value)> = match reply {
        Value::Map(m) if conn.is_cluster() => m
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&opt_bytes(k).ok().flatten().unwrap_or_default())
                        .into_owned(),
                    v,
                )
            })
            .collect(),
        other => vec![(single_name.to_owned(), other)],
    };
    for (node, v) in nodes {
        let pairs: Vec<(String, String)> = match v {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| Ok((text(k)?, text(v)?)))
                .collect::<Result<_>>()?,
            Value::Array(a) => a
                .chunks(2)
                .map(|kv| match kv {
                    [k, v] => Ok((text(k.clone())?, text(v.clone())?)),
                    _ => Err(RedisStoreError::Reply(
                        "CONFIG GET answered an odd list".into(),
                    )),
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(RedisStoreError::Reply(format!(
                    "CONFIG GET answered {other:?}"
                )));
            }
        };
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (appendonly, appendfsync) = (get("appendonly"), get("appendfsync"));
        if appendonly != "yes" || appendfsync != "always" {
            return Err(RedisStoreError::NotDurable {
                node,
                appendonly,
                appendfsync,
            });
        }
    }
    Ok(())
}

fn text(v: Value) -> Result<String> {
    match opt_bytes(v)? {
        Some(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        None => Ok(String::new()),
    }
}

/// `FUNCTION LOAD REPLACE` (on every primary of a cluster). Idempotent.
fn load_library(conn: &mut Conn) -> Result<()> {
    let mut c = redis::cmd("FUNCTION");
    c.arg("LOAD").arg("REPLACE").arg(LIBRARY);
    conn.command_all_primaries(&c)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Social writes
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Write {
    Set(Vec<u8>),
    HSet(String, Vec<u8>),
    HDel(String),
    SAdd(String),
    SRem(String),
}

/// The writes to the keys of one hash tag, for one `tern_writes_v2` call.
#[derive(Debug)]
struct WriteGroup {
    tag: String,
    keys: Vec<String>,
    /// (index into `keys`, write), in call order.
    writes: Vec<(usize, Write)>,
}

impl WriteGroup {
    fn push(&mut self, key: String, w: Write) {
        let i = match self.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        };
        self.writes.push((i, w));
    }

    fn command(&self) -> Cmd {
        let mut c = redis::cmd("FCALL");
        c.arg("tern_writes_v2").arg(self.keys.len());
        for k in &self.keys {
            c.arg(k);
        }
        for (i, w) in &self.writes {
            let ki = i + 1; // Lua's KEYS is 1-based
            match w {
                Write::Set(v) => c.arg("set").arg(ki).arg(v.as_slice()).arg(""),
                Write::HSet(f, v) => c.arg("hset").arg(ki).arg(f).arg(v.as_slice()),
                Write::HDel(f) => c.arg("hdel").arg(ki).arg(f).arg(""),
                Write::SAdd(m) => c.arg("sadd").arg(ki).arg(m).arg(""),
                Write::SRem(m) => c.arg("srem").arg(ki).arg(m).arg(""),
            };
        }
        c
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// One connection: to the single server, or a cluster connection (one
/// socket per node, with the slot map).
enum Conn {
    Single(redis::Connection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// False once the client saw the connection fail (no round trip).
    fn is_open(&self) -> bool {
        match self {
            Self::Single(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }

    /// Runs a pipeline: one round trip (one per node in a cluster, all
    /// nodes written before any is read).
    fn query(&mut self, pipe: &Pipe) -> Result<Vec<Value>, RedisError> {
        match self {
            Self::Single(c) => {
                let mut p = redis::pipe();
                if pipe.one_turn && pipe.cmds.len() > 1 {
                    p.atomic();
                }
                for cmd in &pipe.cmds {
                    // A pipeline owns its commands; the clone copies one
                    // packed argument buffer per command.
                    p.add_command(cmd.clone());
                }
                p.query(c)
            }
            Self::Cluster(c) => {
                let mut p = ClusterPipeline::with_capacity(pipe.cmds.len());
                for cmd in &pipe.cmds {
                    p.add_command(cmd.clone());
                }
                match p.query(c) {
                    // The crate's sync cluster pipeline does not follow
                    // redirects (redis 1.2: a node's MOVED/ASK/TRYAGAIN
                    // reply comes back as an error of the pipeline), and it
                    // drops the replies of the commands that ran. A
                    // redirected command did not run, so when every command
                    // that must not run twice is among those, the pipeline
                    // is run again one command at a time: the single-command
                    // path follows MOVED (refreshing the slot map) and ASK
                    // (with ASKING), and waits out TRYAGAIN, with the
                    // client's bounded retries. This happens only while a
                    // slot moves.
                    Err(e) => match redirected(&e) {
                        Some(not_run) if pipe.once.iter().all(|i| not_run.contains(i)) => {
                            pipe.cmds.iter().map(|cmd| c.req_command(cmd)).collect()
                        }
                        _ => Err(e),
                    },
                    ok => ok,
                }
            }
        }
    }

    /// One command on every primary (one server: on it).
    fn command_all_primaries(&mut self, c: &Cmd) -> Result<Value, RedisError> {
        match self {
            Self::Single(conn) => conn.req_command(c),
            Self::Cluster(conn) => conn.route_command(
                c,
                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
            ),
        }
    }
}

/// Commands to run as one pipeline.
#[derive(Debug, Default)]
struct Pipe {
    cmds: Vec<Cmd>,
    /// Indices of commands that must not run twice (appends, group
    /// changes: each run allocates seqs).
    once: Vec<usize>,
    /// Sent to one server as `MULTI` … `EXEC` (a cluster ignores it). Not
    /// for atomicity: so that the whole pipeline runs in one turn of
    /// Redis's event loop, and so is one AOF write and, with `appendfsync
    /// always`, one fsync. A plain pipeline of many appends arrives in many
    /// reads, each followed by its own fsync: ~40 per batch of 1,000 sends
    /// were measured (docs/benchmarks.md, "Step 4").
    one_turn: bool,
}

impl Pipe {
    fn add(&mut self, c: Cmd) {
        self.cmds.push(c);
    }
    fn add_once(&mut self, c: Cmd) {
        self.once.push(self.cmds.len());
        self.cmds.push(c);
    }
    fn extend(&mut self, other: Pipe) {
        let base = self.cmds.len();
        self.once.extend(other.once.iter().map(|i| i + base));
        self.cmds.extend(other.cmds);
    }
    fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }
}

/// How new connections are made.
enum Connector {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// At most `connections_max` connections; callers wait (bounded) for one.
struct Pool {
    connector: Connector,
    state: Mutex<PoolState>,
    freed: Condvar,
    connections_max: usize,
    pool_wait_ms: u64,
    connect_timeout: Duration,
    io_timeout: Duration,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Connections that exist (idle or lent out), or are being made.
    open: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Pool")
            .field("idle", &s.idle.len())
            .field("open", &s.open)
            .field("connections_max", &self.connections_max)
            .finish()
    }
}

impl Pool {
    fn new(config: &RedisConfig) -> Result<Self> {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        // A WAIT blocks the connection for up to its own timeout.
        let io_timeout = Duration::from_millis(
            config
                .io_timeout_ms
                .max(1)
                .saturating_add(config.wait.timeout_ms()),
        );
        let connector = match &config.nodes {
            RedisNodes::Single(url) => Connector::Single(redis::Client::open(url.as_str())?),
            RedisNodes::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(RedisStoreError::Config("no cluster nodes given".into()));
                }
                Connector::Cluster(
                    ClusterClientBuilder::new(urls.clone())
                        .connection_timeout(connect_timeout)
                        .response_timeout(io_timeout)
                        .retries(CLUSTER_RETRIES_MAX)
                        .min_retry_wait(CLUSTER_RETRY_WAIT_MS_MIN)
                        .max_retry_wait(CLUSTER_RETRY_WAIT_MS_MAX)
                        .retry_wait_formula(CLUSTER_RETRY_WAIT_MS_MIN, 2)
                        .build()?,
                )
            }
        };
        Ok(Self {
            connector,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            connections_max: config.connections_max,
            pool_wait_ms: config.pool_wait_ms,
            connect_timeout,
            io_timeout,
        })
    }

    fn get(&self) -> Result<Lease<'_>> {
        let deadline = std::time::Instant::now() + Duration::from_millis(self.pool_wait_ms);
        let mut s = self.state.lock();
        loop {
            if let Some(c) = s.idle.pop() {
                if !c.is_open() {
                    // Known broken (the client saw its socket fail): close it.
                    s.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    pool: self,
                    conn: Some(c),
                    reused: true,
                });
            }
            if s.open < self.connections_max {
                s.open += 1;
                drop(s);
                // Connect outside the lock: it takes a round trip or more.
                return match self.connect() {
                    Ok(c) => Ok(Lease {
                        pool: self,
                        conn: Some(c),
                        reused: false,
                    }),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut s, deadline).timed_out() {
                return Err(RedisStoreError::PoolExhausted(self.pool_wait_ms));
            }
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.connector, Connector::Cluster(_))
    }

    /// Closes every idle connection: one of them was found dead, so the
    /// server restarted (or the network dropped) while they were idle.
    fn drop_idle(&self) {
        let mut s = self.state.lock();
        let n = s.idle.len();
        s.idle.clear();
        s.open -= n;
        drop(s);
        self.freed.notify_all();
    }

    fn connect(&self) -> Result<Conn> {
        match &self.connector {
            Connector::Single(client) => {
                let c = client.get_connection_with_timeout(self.connect_timeout)?;
                c.set_read_timeout(Some(self.io_timeout))?;
                c.set_write_timeout(Some(self.io_timeout))?;
                Ok(Conn::Single(c))
            }
            Connector::Cluster(client) => Ok(Conn::Cluster(client.get_connection()?)),
        }
    }
}

/// A connection lent by the pool; returned on drop unless discarded.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// It came from the idle list (it may have died while idle), rather
    /// than being made for this lease.
    reused: bool,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        // `conn` is `Some` from creation until `discard` or drop, and
        // neither lets the lease be used afterwards.
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// Closes the connection instead of returning it.
    fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.state.lock();
        match self.conn.take() {
            Some(c) => s.idle.push(c),
            None => s.open -= 1,
        }
        drop(s);
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        // Proves "7.10.0" counts as newer than "7.2.4" (no string compare).
        assert!(parse_version("7.10.0") > parse_version("7.2.4"));
        assert!(parse_version("7.0.15") < WAITAOF_VERSION_MIN);
        assert!(parse_version("6.2.14") < REDIS_VERSION_MIN);
        assert_eq!(parse_version("garbage"), (0, 0, 0));
    }

    #[test]
    fn dedup_records_parse_strictly() {
        // Proves a malformed dedup record is a typed Corrupt error.
        assert_eq!(parse_dedup(b"7:1000:2000").unwrap(), (7, 1000, 2000));
        for bad in [&b"7:1000"[..], b"7:1000:2000:1", b"x:1:2", b"-1:2:3", b""] {
            assert!(matches!(parse_dedup(bad), Err(RedisStoreError::Corrupt(_))));
        }
    }

    #[test]
    fn user_records_parse_strictly() {
        // Proves a malformed user record is a typed Corrupt error, not a panic.
        assert_eq!(parse_user_conv("g:x", b"1:0:5").unwrap().read_seq, 5);
        for bad in [&b"1:0"[..], b"1:0:5:6", b"a:b:c", b"\xff", b""] {
            assert!(matches!(
                parse_user_conv("g:x", bad),
                Err(RedisStoreError::Corrupt(_))
            ));
        }
    }
}
