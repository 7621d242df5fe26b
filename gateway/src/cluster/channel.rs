//! The per-node delivery channel: one Redis stream per node,
//! `{n:<id>}:ch`, written with `XADD … MAXLEN ~ channel_records_max` by
//! every node's backend workers and read by its owner with `XREAD BLOCK`
//! from the last id it read.
//!
//! One record per (push, node): the encoded frame once, plus the
//! recipients on that node. Fields:
//! - `k`: `d` (a stored entry: `Deliver`, tracked in the ack window) or `p`
//!   (an ephemeral push: typing, presence, server event);
//! - `u`: the recipients' user ids, joined by `\n` (ids cannot hold it);
//! - `b`: the encoded `Frame` (request id 0), pushed to the devices as is;
//! - for `d`: `c` the conversation id, `s` its seq, `o` the sending
//!   `user\0device` (it has the SendAck and gets no copy) or empty.
//!
//! A room message (`k = r`, docs/protocol.md, "Rooms") names no
//! recipients: `r` the room id, `b` the encoded `RoomDeliver` frame. It
//! goes to every other live node, one record each, and the channel thread
//! hands it to each of its shards, which push it to the connections that
//! joined the room there (members are not stored anywhere). A deleted
//! room's `RoomClosed` frame travels the same way, in `b` of a `k = r`
//! record: each shard pushes it, then drops the room's subscriptions.
//!
//! A fourth kind, `x`, displaces a device: `u` one user id, `v` the device
//! id, no body. The same device logged in on the sending node, whose
//! route named this one: this node kicks its connection of that device
//! (`Kick { reason: DISPLACED }`, as for a second login on one node).
//! Two more name a device the same way: `o` logs it out (`LOGGED_OUT`,
//! docs/cluster.md, "Devices across nodes") and `l` kicks it for its
//! class's login limit (`LOGIN_POLICY`; `t` the Unix ms of the login it
//! means, so a newer login of that device stays; "Login policies across
//! nodes").
//!
//! A record that does not decode is counted
//! (`tern_cluster_records_malformed_total`) and skipped.
//!
//! Why a stream and no consumer group: a node's stream has exactly one
//! reader, itself, so the reader's own last-read id is all the state a
//! group would keep, without `XACK` traffic or a pending list to trim. A
//! stream (unlike pub/sub) keeps what arrives while the reader is between
//! two reads or reconnecting. Pushes are an accelerator: what is lost
//! (node restarted, stream trimmed) is recovered by the device's sync
//! (docs/protocol.md §7).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message as _;
use redis::{Cmd, Value, cmd};
use tern_protocol::{
    pb::{self, frame::Body},
    session::ConvKey,
};
use tracing::warn;

use super::{
    NodeView, conn, membership,
    presence::Rechecks,
    route_cache::{self, RouteCache},
    routes,
};
use crate::{
    config::{ClusterSettings, LoginSettings},
    mailbox::Sender,
    metrics::ClusterMetrics,
    msg::{ShardMsg, owner_shard},
};

/// The delivery stream of node `id`.
pub fn stream_key(id: &str) -> String {
    format!("{{n:{id}}}:ch")
}

/// Recipients one record may name at most (a larger one is malformed).
pub const RECORD_RECIPIENTS_MAX: usize = 1 << 20;
/// Largest encoded frame a record may carry, bytes (the largest
/// `session.frame_bytes_max`).
pub const RECORD_BODY_BYTES_MAX: usize = 16 << 20;

/// A push on its way to devices, as the backend worker built it (the
/// frame encoded once for local shards and remote nodes alike).
#[derive(Debug, Clone)]
pub struct OutPush {
    /// User ids.
    pub recipients: Arc<[String]>,
    /// The encoded `Frame` (request id 0).
    pub body: Bytes,
    /// `Some` for a stored entry (a `Deliver`), `None` for an ephemeral push.
    pub entry: Option<EntryMeta>,
    /// `Some` for a room message: it goes to every node (and shard), whose
    /// joined connections get it; `recipients` is then empty.
    pub room: Option<Arc<str>>,
    /// The room push is a `RoomClosed`: after it, every shard drops the
    /// room's subscriptions.
    pub room_closed: bool,
}

/// What a `Deliver` record carries beside its frame.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    /// The conversation.
    pub conversation_id: String,
    /// The entry's seq.
    pub seq: u64,
    /// `(user, device)` that sent it.
    pub origin: Option<Arc<(String, String)>>,
}

/// A backend worker's way to other nodes: reads the routes of a batch's
/// recipients and adds one record per (push, node) to the nodes' streams,
/// in two pipelines (three when a route names a node not in the view).
#[derive(Debug)]
pub struct RemoteRouter {
    pub(super) link: conn::Link,
    pub(super) view: Arc<NodeView>,
    /// The worker's route cache; `None` when `route_cache_entries_max` is 0.
    pub(super) cache: Option<RouteCache>,
    pub(super) records_max: u64,
    pub(super) metrics: Arc<ClusterMetrics>,
    /// Users whose presence was on a dead node (filled by the cluster
    /// thread, emptied by the workers).
    pub(super) rechecks: Arc<Rechecks>,
    /// `[login] logged_out_block_ms`: how long a logout is remembered in
    /// Redis (`devices.rs`); 0: not at all.
    pub(super) logged_out_block_ms: u64,
    /// `[login]`: the class limits the route writes apply across nodes
    /// (`routes::UP`).
    pub(super) login: LoginSettings,
}

impl RemoteRouter {
    pub(super) fn new(
        link: conn::Link,
        view: Arc<NodeView>,
        settings: &ClusterSettings,
        metrics: Arc<ClusterMetrics>,
        rechecks: Arc<Rechecks>,
    ) -> Self {
        Self {
            link,
            view,
            cache: RouteCache::new(settings),
            records_max: settings.channel_records_max,
            metrics,
            rechecks,
            logged_out_block_ms: 0,
            login: LoginSettings::default(),
        }
    }

    /// Applies `[login]` across nodes: logouts are remembered in Redis for
    /// `logged_out_block_ms`, so that every node refuses a logged-out
    /// device's old token, and each route write applies the class limits
    /// (`*_devices_max`) to the user's devices on every live node.
    pub fn with_login(mut self, login: &LoginSettings) -> Self {
        self.logged_out_block_ms = login.logged_out_block_ms;
        self.login = login.clone();
        self
    }

    /// Sends `pushes` to the other nodes holding their recipients. Returns
    /// when the records are in Redis (so a caller that then releases the
    /// sender's ack keeps "pushes before acks"), or when Redis failed: the
    /// pushes are then counted as dropped (recipients sync).
    pub fn send(&mut self, pushes: &[&OutPush]) {
        // Alone in the view: no other node can hold a device, so no route
        // is read (a single-node Redis deployment pays nothing). A node
        // that joins waits until every other node has seen it before it
        // takes clients (`Cluster::start`), so this never skips a node
        // that holds devices.
        if pushes.is_empty() || self.view.live().len() <= 1 {
            return;
        }
        if let Err(e) = self.try_send(pushes) {
            self.metrics
                .records_dropped
                .fetch_add(pushes.len() as u64, Ordering::Relaxed);
            warn!(error = %e, pushes = pushes.len(), "cluster: remote pushes dropped");
        }
    }

    fn try_send(&mut self, pushes: &[&OutPush]) -> redis::RedisResult<()> {
        let me = self.view.me().to_owned();
        // Room messages: one record per other live node, no route read.
        let (rooms, pushes): (Vec<&OutPush>, Vec<&OutPush>) =
            pushes.iter().copied().partition(|p| p.room.is_some());
        if !rooms.is_empty() {
            let live = self.view.live();
            let mut cmds = Vec::new();
            for p in &rooms {
                for node in live.iter().filter(|n| n.as_ref() != me.as_str()) {
                    cmds.push(xadd_room(node, self.records_max, p));
                }
            }
            let records = cmds.len();
            self.link.pipeline(cmds)?;
            self.metrics
                .records_out
                .fetch_add(records as u64, Ordering::Relaxed);
        }
        if pushes.is_empty() {
            return Ok(());
        }
        let pushes = pushes.as_slice();
        // Every recipient once.
        let mut seen: HashSet<&str> = HashSet::new();
        let users: Vec<&str> = pushes
            .iter()
            .flat_map(|p| p.recipients.iter())
            .map(String::as_str)
            .filter(|u| seen.insert(u))
            .collect();
        let started = Instant::now();
        let routes = match self.cache.as_mut() {
            Some(cache) if users.len() >= route_cache::BATCH_USERS_MIN => {
                cache.read(&mut self.link, &users, &self.metrics)?
            }
            _ => routes::read(&mut self.link, &users)?,
        };
        self.metrics
            .route_read_latency
            .observe_us(started.elapsed().as_micros() as u64);
        let live = self.view.live();
        // Borrowed from `routes`: no string is copied per recipient.
        let mut nodes_of: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut unknown: Vec<(&str, &str, &str)> = Vec::new();
        for (user, devices) in users.iter().zip(&routes) {
            for (device, node) in devices.iter() {
                if *node == me {
                    continue;
                }
                if live.contains(node.as_str()) {
                    push_unique(nodes_of.entry(user).or_default(), node);
                } else {
                    unknown.push((user, device, node));
                }
            }
        }
        // Nodes the view does not list may have just joined: ask Redis.
        let mut cleanup = Vec::new();
        if !unknown.is_empty() {
            let mut nodes: Vec<&str> = unknown.iter().map(|(_, _, n)| *n).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let alive = membership::exists_each(&mut self.link, &nodes)?;
            let alive: HashSet<&str> = nodes
                .iter()
                .zip(alive)
                .filter_map(|(n, a)| a.then_some(*n))
                .collect();
            for (user, device, node) in &unknown {
                if alive.contains(node) {
                    push_unique(nodes_of.entry(user).or_default(), node);
                } else {
                    cleanup.push(routes::del_if_node(user, device, node));
                    if let Some(cache) = self.cache.as_mut() {
                        cache.forget(user);
                    }
                }
            }
        }
        let mut cmds: Vec<Cmd> = Vec::new();
        for p in pushes {
            let mut by_node: HashMap<&str, Vec<&str>> = HashMap::new();
            for u in p.recipients.iter() {
                for n in nodes_of.get(u.as_str()).into_iter().flatten() {
                    by_node.entry(n).or_default().push(u);
                }
            }
            for (node, users) in by_node {
                cmds.push(xadd(node, self.records_max, p, &users));
            }
        }
        let records = cmds.len();
        let cleanups = cleanup.len();
        cmds.extend(cleanup);
        let replies = self.link.pipeline(cmds)?;
        let cleaned = replies
            .get(records..)
            .unwrap_or_default()
            .iter()
            .filter(|v| matches!(v, Value::Int(1)))
            .count();
        let m = &self.metrics;
        m.records_out.fetch_add(records as u64, Ordering::Relaxed);
        if cleanups > 0 {
            m.routes_cleaned
                .fetch_add(cleaned as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn push_unique<'a>(v: &mut Vec<&'a str>, node: &'a str) {
    if !v.contains(&node) {
        v.push(node);
    }
}

fn xadd(node: &str, records_max: u64, p: &OutPush, users: &[&str]) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(stream_key(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(records_max)
        .arg("*");
    c.arg("k").arg(if p.entry.is_some() { "d" } else { "p" });
    c.arg("u").arg(users.join("\n"));
    if let Some(e) = &p.entry {
        c.arg("c").arg(&e.conversation_id).arg("s").arg(e.seq);
        let origin = e
            .origin
            .as_ref()
            .map(|o| format!("{}\0{}", o.0, o.1))
            .unwrap_or_default();
        c.arg("o").arg(origin);
    }
    c.arg("b").arg(p.body.as_ref());
    c
}

/// A room message's record for `node`'s stream.
fn xadd_room(node: &str, records_max: u64, p: &OutPush) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(stream_key(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(records_max)
        .arg("*")
        .arg("k")
        .arg("r")
        .arg("r")
        .arg(p.room.as_deref().unwrap_or_default())
        .arg("b")
        .arg(p.body.as_ref());
    c
}

/// A displacement record for `node`'s stream: `user`'s `device` logged in
/// on the sending node.
/// Deletes the stream of `node` if its lease is gone (one script: the two
/// keys share the node's hash tag). A claimed dead node's records are for
/// connections that no longer exist; records sent after it (to routes not
/// cleaned yet) start a new stream, bounded like any other.
pub(super) fn delete_if_dead(link: &mut super::conn::Link, node: &str) -> redis::RedisResult<()> {
    let mut c = cmd("EVAL");
    c.arg(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end return 0",
    )
    .arg(2)
    .arg(super::membership::lease_key(node))
    .arg(stream_key(node));
    link.command(&c).map(|_| ())
}

pub(super) fn xadd_displace(node: &str, records_max: u64, user: &str, device: &str) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(stream_key(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(records_max)
        .arg("*")
        .arg("k")
        .arg("x")
        .arg("u")
        .arg(user)
        .arg("v")
        .arg(device);
    c
}

/// A logout record for `node`'s stream: `user`'s `device`, connected
/// there, was logged out from the sending node (docs/cluster.md, "Devices
/// across nodes").
pub(super) fn xadd_logout(node: &str, records_max: u64, user: &str, device: &str) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(stream_key(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(records_max)
        .arg("*")
        .arg("k")
        .arg("o")
        .arg("u")
        .arg(user)
        .arg("v")
        .arg(device);
    c
}

/// A login policy record for `node`'s stream: `user`'s `device`, connected
/// there since `login_ms` (that node's clock), is past its platform class's
/// limit since a newer login (docs/cluster.md, "Login policies across
/// nodes"). Sent to this node's own stream too, for a device here.
pub(super) fn xadd_policy_kick(
    node: &str,
    records_max: u64,
    user: &str,
    device: &str,
    login_ms: u64,
) -> Cmd {
    let mut c = cmd("XADD");
    c.arg(stream_key(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(records_max)
        .arg("*")
        .arg("k")
        .arg("l")
        .arg("u")
        .arg(user)
        .arg("v")
        .arg(device)
        .arg("t")
        .arg(login_ms);
    c
}

/// Why a record of the stream was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The reply is not shaped like a stream entry.
    #[error("not a stream entry")]
    Shape,
    /// A required field is missing.
    #[error("field {0:?} missing")]
    Missing(&'static str),
    /// A field's value is out of range or not what it must be.
    #[error("field {0:?} invalid")]
    Invalid(&'static str),
}

/// What a `Deliver` record names beside its recipients: conversation, seq,
/// and the sending `(user, device)`.
pub type RecordEntry = (String, u64, Option<(String, String)>);

/// A record, decoded and checked.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// `k = d` or `p`: a push to the recipients on this node.
    Push {
        /// The recipients on this node.
        users: Vec<String>,
        /// The encoded `Frame`.
        body: Bytes,
        /// `Some((conversation, seq, origin))` for a stored entry.
        entry: Option<RecordEntry>,
    },
    /// `k = r`: a room message for the connections that joined `room` here.
    Room {
        /// The room id.
        room: Arc<str>,
        /// The encoded `RoomDeliver` (or `RoomClosed`) frame.
        body: Bytes,
        /// The frame is a `RoomClosed`: the room was deleted.
        closed: bool,
    },
    /// `k = x`: kick this node's connection of `user`'s `device`.
    Displace {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// `k = o`: log out this node's connection of `user`'s `device` (kick
    /// it with `LOGGED_OUT` and remember the logout).
    Logout {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// `k = l`: kick this node's connection of `user`'s `device` that
    /// logged in at `login_ms` with `LOGIN_POLICY`.
    PolicyKick {
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// The login's Unix ms (this node's clock), field `t`.
        login_ms: u64,
    },
}

/// Decodes a record's fields. Never panics; allocates only what Redis
/// already sent (bounded by the checks on recipient count and body size).
pub fn decode(fields: &[(&Value, &Value)]) -> Result<Record, RecordError> {
    let get = |name: &'static str| {
        fields
            .iter()
            .find(|(k, _)| conn::bytes(k) == Some(name.as_bytes()))
            .and_then(|(_, v)| conn::bytes(v))
            .ok_or(RecordError::Missing(name))
    };
    let text = |name: &'static str| {
        get(name).and_then(|b| std::str::from_utf8(b).map_err(|_| RecordError::Invalid(name)))
    };
    let kind = get("k")?;
    if kind == b"x" || kind == b"o" || kind == b"l" {
        let user = text("u")?;
        let device = text("v")?;
        tern_protocol::ids::check_id(user).map_err(|_| RecordError::Invalid("u"))?;
        tern_protocol::ids::check_id(device).map_err(|_| RecordError::Invalid("v"))?;
        let (user, device) = (user.to_owned(), device.to_owned());
        return Ok(match kind {
            b"x" => Record::Displace { user, device },
            b"o" => Record::Logout { user, device },
            _ => Record::PolicyKick {
                user,
                device,
                login_ms: text("t")?.parse().map_err(|_| RecordError::Invalid("t"))?,
            },
        });
    }
    if kind == b"r" {
        let room = text("r")?;
        tern_protocol::ids::check_id(room).map_err(|_| RecordError::Invalid("r"))?;
        let body = get("b")?;
        if body.len() > RECORD_BODY_BYTES_MAX {
            return Err(RecordError::Invalid("b"));
        }
        let frame = pb::Frame::decode(body).map_err(|_| RecordError::Invalid("b"))?;
        let closed = match &frame.body {
            Some(Body::RoomDeliver(_)) => false,
            Some(Body::RoomClosed(c)) if c.room_id == room => true,
            _ => return Err(RecordError::Invalid("b")),
        };
        if frame.request_id != 0 {
            return Err(RecordError::Invalid("b"));
        }
        return Ok(Record::Room {
            room: room.into(),
            body: Bytes::copy_from_slice(body),
            closed,
        });
    }
    let users = text("u")?;
    if users.is_empty() || users.bytes().filter(|&b| b == b'\n').count() >= RECORD_RECIPIENTS_MAX {
        return Err(RecordError::Invalid("u"));
    }
    let users: Vec<String> = users.split('\n').map(str::to_owned).collect();
    if users.iter().any(String::is_empty) {
        return Err(RecordError::Invalid("u"));
    }
    let body = get("b")?;
    if body.len() > RECORD_BODY_BYTES_MAX {
        return Err(RecordError::Invalid("b"));
    }
    let frame = pb::Frame::decode(body).map_err(|_| RecordError::Invalid("b"))?;
    let is_deliver = matches!(frame.body, Some(Body::Deliver(_)));
    if frame.request_id != 0 || frame.body.is_none() {
        return Err(RecordError::Invalid("b"));
    }
    let body = Bytes::copy_from_slice(body);
    match kind {
        b"p" if !is_deliver => Ok(Record::Push {
            users,
            body,
            entry: None,
        }),
        b"d" if is_deliver => {
            let conv = text("c")?.to_owned();
            let seq = text("s")?
                .parse::<u64>()
                .map_err(|_| RecordError::Invalid("s"))?;
            let origin = match text("o")? {
                "" => None,
                o => {
                    let (u, d) = o.split_once('\0').ok_or(RecordError::Invalid("o"))?;
                    Some((u.to_owned(), d.to_owned()))
                }
            };
            Ok(Record::Push {
                users,
                body,
                entry: Some((conv, seq, origin)),
            })
        }
        _ => Err(RecordError::Invalid("k")),
    }
}

/// This node's channel reader (the `tern-channel` thread).
#[derive(Debug)]
pub(super) struct Consumer {
    pub(super) view: Arc<NodeView>,
    pub(super) link: conn::Link,
    pub(super) node: String,
    pub(super) to_shards: Vec<Sender<ShardMsg>>,
    pub(super) settings: ClusterSettings,
    pub(super) metrics: Arc<ClusterMetrics>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Consumer {
    /// Reads until `stop`, turning records into shard messages.
    pub(super) fn run(mut self) {
        let key = stream_key(&self.node);
        let mut last: Option<String> = None;
        let mut warned_at: Option<Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            if self.view.take_recount() {
                for shard in 0..self.to_shards.len() {
                    self.send_to_shard(shard, ShardMsg::Recount);
                }
            }
            // Start after the newest record already there: what was sent to
            // an earlier run of this node is for connections it no longer
            // holds (they resynced).
            let from = match &last {
                Some(id) => id.clone(),
                None => match self.link.command(
                    cmd("XREVRANGE")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                ) {
                    Ok(v) => newest_id(&v).unwrap_or_else(|| "0-0".into()),
                    Err(e) => {
                        self.backoff(&mut warned_at, &e);
                        continue;
                    }
                },
            };
            last = Some(from.clone());
            let mut read = cmd("XREAD");
            read.arg("COUNT")
                .arg(self.settings.channel_read_batch_max)
                .arg("BLOCK")
                .arg(self.settings.channel_block_ms)
                .arg("STREAMS")
                .arg(&key)
                .arg(&from);
            match self.link.command(&read) {
                Ok(v) => {
                    if let Some(id) = self.handle_reply(&v) {
                        last = Some(id);
                    }
                }
                Err(e) => self.backoff(&mut warned_at, &e),
            }
        }
    }

    fn backoff(&self, warned_at: &mut Option<Instant>, e: &redis::RedisError) {
        if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *warned_at = Some(Instant::now());
            warn!(error = %e, "cluster: reading the delivery channel failed");
        }
        std::thread::park_timeout(Duration::from_millis(200));
    }

    /// Dispatches every entry of an XREAD reply; returns the last id seen.
    fn handle_reply(&mut self, v: &Value) -> Option<String> {
        let mut last = None;
        for entries in stream_entries(v) {
            for entry in conn::items(entries).unwrap_or_default() {
                let Some([id, fields]) =
                    conn::items(entry).and_then(|a| <&[Value; 2]>::try_from(a).ok())
                else {
                    self.metrics
                        .records_malformed
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some(id) = conn::bytes(id).and_then(|b| std::str::from_utf8(b).ok()) {
                    last = Some(id.to_owned());
                }
                self.metrics.records_in.fetch_add(1, Ordering::Relaxed);
                match conn::pairs(fields)
                    .ok_or(RecordError::Shape)
                    .and_then(|f| decode(&f))
                {
                    Ok(r) => self.dispatch(r),
                    Err(_) => {
                        self.metrics
                            .records_malformed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        last
    }

    /// One shard message per owner shard of the record's recipients.
    fn dispatch(&mut self, r: Record) {
        let shards = self.to_shards.len();
        let (users, body, entry) = match r {
            Record::Push { users, body, entry } => (users, body, entry),
            Record::Room { room, body, closed } => {
                // Every shard: each walks its own subscribers of the room.
                for shard in 0..shards {
                    let msg = ShardMsg::RoomPush {
                        room: room.clone(),
                        body: body.clone(),
                        closed,
                    };
                    self.send_to_shard(shard, msg);
                }
                return;
            }
            Record::Displace { user, device } => {
                self.metrics
                    .displacements_received
                    .fetch_add(1, Ordering::Relaxed);
                let shard = owner_shard(&user, shards);
                self.send_to_shard(shard, ShardMsg::Displace { user, device });
                return;
            }
            Record::Logout { user, device } => {
                let shard = owner_shard(&user, shards);
                self.send_to_shard(shard, ShardMsg::RemoteLogout { user, device });
                return;
            }
            Record::PolicyKick {
                user,
                device,
                login_ms,
            } => {
                self.metrics
                    .policy_kicks_received
                    .fetch_add(1, Ordering::Relaxed);
                let shard = owner_shard(&user, shards);
                let msg = ShardMsg::PolicyKick {
                    user,
                    device,
                    login_ms,
                };
                self.send_to_shard(shard, msg);
                return;
            }
        };
        let mut groups: Vec<Vec<String>> = (0..shards).map(|_| Vec::new()).collect();
        for u in users {
            groups[owner_shard(&u, shards)].push(u);
        }
        let entry = entry.map(|(conv, seq, origin)| {
            let cursors: Arc<[(ConvKey, u64)]> = Arc::new([(ConvKey::of(&conv), seq)]);
            (cursors, origin.map(Arc::new))
        });
        for (shard, users) in groups.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let users: Arc<[String]> = users.into();
            let msg = match &entry {
                Some((cursors, origin)) => ShardMsg::Deliver {
                    users,
                    cursors: cursors.clone(),
                    body: body.clone(),
                    origin: origin.clone(),
                },
                None => ShardMsg::Push {
                    users,
                    body: body.clone(),
                },
            };
            self.send_to_shard(shard, msg);
        }
    }

    /// A full shard ring makes the reader wait for the shard, as a backend
    /// worker does; once stopping, the push is dropped instead (the shard
    /// may have exited).
    fn send_to_shard(&mut self, shard: usize, mut msg: ShardMsg) {
        loop {
            match self.to_shards[shard].send(msg) {
                Ok(()) => return,
                Err(m) => {
                    if self.stop.load(Ordering::Acquire) {
                        self.metrics.records_dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    msg = m;
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// The id of the single entry of an `XREVRANGE … COUNT 1` reply.
fn newest_id(v: &Value) -> Option<String> {
    let first = conn::items(v)?.first()?;
    let id = conn::items(first)?.first()?;
    std::str::from_utf8(conn::bytes(id)?)
        .ok()
        .map(str::to_owned)
}

/// The entry lists of an XREAD reply: RESP2 `[[key, entries], …]` or a
/// RESP3 map `{key: entries}`; nothing for a timeout (`Nil`).
fn stream_entries(v: &Value) -> Vec<&Value> {
    match v {
        Value::Map(m) => m.iter().map(|(_, e)| e).collect(),
        _ => conn::items(v)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| conn::items(s).and_then(|a| a.get(1)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn fields(v: &[(&str, Vec<u8>)]) -> Vec<(Value, Value)> {
        v.iter()
            .map(|(k, v)| (bulk(k.as_bytes()), bulk(v)))
            .collect()
    }

    /// A room record (`k = r`) decodes to its room and frame; one whose
    /// room id is not an id, or whose frame is not a `RoomDeliver` with
    /// request id 0, is a typed error.
    #[test]
    fn room_records_decode_and_garbage_is_refused() {
        let deliver = pb::Frame {
            request_id: 0,
            body: Some(Body::RoomDeliver(pb::RoomDeliver { entry: None })),
        }
        .encode_to_vec();
        let other = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver { entries: vec![] })),
        }
        .encode_to_vec();
        let good = fields(&[
            ("k", b"r".to_vec()),
            ("r", b"lobby".to_vec()),
            ("b", deliver.clone()),
        ]);
        let refs: Vec<(&Value, &Value)> = good.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(
            decode(&refs),
            Ok(Record::Room {
                room: "lobby".into(),
                body: Bytes::from(deliver.clone()),
                closed: false,
            })
        );
        // A deleted room's `RoomClosed`, for the same room only.
        let closed = pb::Frame {
            request_id: 0,
            body: Some(Body::RoomClosed(pb::RoomClosed {
                room_id: "lobby".into(),
            })),
        }
        .encode_to_vec();
        let f = fields(&[
            ("k", b"r".to_vec()),
            ("r", b"lobby".to_vec()),
            ("b", closed.clone()),
        ]);
        let refs: Vec<(&Value, &Value)> = f.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(
            decode(&refs),
            Ok(Record::Room {
                room: "lobby".into(),
                body: Bytes::from(closed.clone()),
                closed: true,
            })
        );
        let f = fields(&[("k", b"r".to_vec()), ("r", b"hall".to_vec()), ("b", closed)]);
        let refs: Vec<(&Value, &Value)> = f.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(decode(&refs), Err(RecordError::Invalid("b")));
        for (room, body, why) in [
            (&b"a:b"[..], deliver.clone(), RecordError::Invalid("r")),
            (&b""[..], deliver.clone(), RecordError::Invalid("r")),
            (&b"lobby"[..], other, RecordError::Invalid("b")),
            (
                &b"lobby"[..],
                b"\xff\xff".to_vec(),
                RecordError::Invalid("b"),
            ),
        ] {
            let f = fields(&[("k", b"r".to_vec()), ("r", room.to_vec()), ("b", body)]);
            let refs: Vec<(&Value, &Value)> = f.iter().map(|(k, v)| (k, v)).collect();
            assert_eq!(decode(&refs), Err(why));
        }
        let f = fields(&[("k", b"r".to_vec()), ("b", deliver)]);
        let refs: Vec<(&Value, &Value)> = f.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(decode(&refs), Err(RecordError::Missing("r")));
    }

    /// A record built by `xadd`'s field layout decodes to what was sent,
    /// and garbage in any field is a typed error, never a panic.
    #[test]
    fn records_decode_and_garbage_is_refused() {
        let frame = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver { entries: vec![] })),
        };
        let body = frame.encode_to_vec();
        let good = fields(&[
            ("k", b"d".to_vec()),
            ("u", b"alice\nbob".to_vec()),
            ("c", b"d:alice:bob".to_vec()),
            ("s", b"7".to_vec()),
            ("o", b"alice\0phone".to_vec()),
            ("b", body.clone()),
        ]);
        let refs: Vec<(&Value, &Value)> = good.iter().map(|(k, v)| (k, v)).collect();
        let Record::Push { users, entry, .. } = decode(&refs).unwrap() else {
            panic!("not a push");
        };
        assert_eq!(users, ["alice", "bob"]);
        assert_eq!(
            entry,
            Some((
                "d:alice:bob".into(),
                7,
                Some(("alice".into(), "phone".into()))
            ))
        );
        let x = fields(&[
            ("k", b"x".to_vec()),
            ("u", b"alice".to_vec()),
            ("v", b"phone".to_vec()),
        ]);
        let refs: Vec<(&Value, &Value)> = x.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(
            decode(&refs),
            Ok(Record::Displace {
                user: "alice".into(),
                device: "phone".into()
            })
        );
        let o = fields(&[
            ("k", b"o".to_vec()),
            ("u", b"alice".to_vec()),
            ("v", b"phone".to_vec()),
        ]);
        let refs: Vec<(&Value, &Value)> = o.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(
            decode(&refs),
            Ok(Record::Logout {
                user: "alice".into(),
                device: "phone".into()
            })
        );
        let l = fields(&[
            ("k", b"l".to_vec()),
            ("u", b"alice".to_vec()),
            ("v", b"phone".to_vec()),
            ("t", b"1700000000123".to_vec()),
        ]);
        let refs: Vec<(&Value, &Value)> = l.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(
            decode(&refs),
            Ok(Record::PolicyKick {
                user: "alice".into(),
                device: "phone".into(),
                login_ms: 1_700_000_000_123,
            })
        );
        let cases: Vec<Vec<(Value, Value)>> = vec![
            fields(&[
                ("k", b"x".to_vec()),
                ("u", b"a".to_vec()),
                ("b", body.clone()),
            ]),
            fields(&[
                ("k", b"p".to_vec()),
                ("u", b"a".to_vec()),
                ("b", body.clone()),
            ]),
            fields(&[
                ("k", b"p".to_vec()),
                ("u", b"".to_vec()),
                ("b", body.clone()),
            ]),
            fields(&[
                ("k", b"p".to_vec()),
                ("u", b"a".to_vec()),
                ("b", b"\xff\xff\xff".to_vec()),
            ]),
            fields(&[
                ("k", b"d".to_vec()),
                ("u", b"a".to_vec()),
                ("b", body.clone()),
                ("c", b"c".to_vec()),
                ("s", b"x".to_vec()),
                ("o", b"".to_vec()),
            ]),
            fields(&[("u", b"a".to_vec())]),
            fields(&[
                ("k", b"x".to_vec()),
                ("u", b"a\nb".to_vec()),
                ("v", b"d".to_vec()),
            ]),
            fields(&[
                ("k", b"x".to_vec()),
                ("u", b"a".to_vec()),
                ("v", b"".to_vec()),
            ]),
            fields(&[("k", b"x".to_vec()), ("u", b"a".to_vec())]),
            fields(&[
                ("k", b"o".to_vec()),
                ("u", b"a".to_vec()),
                ("v", b"not an id!".to_vec()),
            ]),
            fields(&[
                ("k", b"l".to_vec()),
                ("u", b"a".to_vec()),
                ("v", b"d".to_vec()),
            ]),
            fields(&[
                ("k", b"l".to_vec()),
                ("u", b"a".to_vec()),
                ("v", b"d".to_vec()),
                ("t", b"-1".to_vec()),
            ]),
        ];
        for c in cases {
            let refs: Vec<(&Value, &Value)> = c.iter().map(|(k, v)| (k, v)).collect();
            assert!(decode(&refs).is_err(), "{c:?}");
        }
    }
}
