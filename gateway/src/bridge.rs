//! The bridge between shards and the backend: worker threads that take
//! requests from per-shard rings in batches, hand each batch to the chat
//! backend (one durable commit per batch), and route the replies and the
//! resulting pushes back to the shards through per-shard rings.
//!
//! Deliveries are encoded once per stored entry and the same bytes are
//! shared (`Bytes`) by every shard and every recipient device. Recipients are
//! grouped by their owner shard, so a fan-out to 10,000 members is one ring
//! item per shard, not 10,000.
//!
//! On the Redis store a worker also has a [`RemoteRouter`]: before a batch
//! is handled, its node bookkeeping (route changes, and the presence
//! updates the shards send for a user's first and last device here) is
//! written in one pipeline, so a device's route exists before its first
//! sync (queued behind it) is answered; after the batch committed, the
//! pushes for devices on other nodes go to those nodes' delivery streams
//! (one record per push and node) before any SendAck of the batch is
//! released. Between batches it re-checks the users whose presence was on
//! a node that died, and sets OFFLINE those online nowhere else.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use prost::Message as _;
use tern_protocol::{
    pb::{self, frame::Body},
    session::ConvKey,
};

use crate::{
    cluster::{
        Note, RemoteRouter,
        channel::{EntryMeta, OutPush},
    },
    mailbox::{Doorbell, Receiver, Sender},
    metrics::BackendMetrics,
    msg::{ConnRef, RoomChange, ShardMsg, owner_shard},
};

/// Who sent a request.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The authenticated user.
    pub user: String,
    /// The device it came from.
    pub device: String,
    /// An operator's call through the server API (`crate::api`): the domain
    /// lets it act without friendship or group membership. Set only by
    /// `api::ApiBackend`; a connection's requests never carry it.
    pub admin: bool,
}

/// One client request on its way to the backend.
#[derive(Debug)]
pub struct BackendRequest {
    /// The connection to answer.
    pub from: ConnRef,
    /// Who asked.
    pub caller: Caller,
    /// The request frame (validated by the session).
    pub frame: Box<pb::Frame>,
    /// When a `send` left its connection (for the latency histogram).
    pub started: Option<Instant>,
    /// A sync made on behalf of a connection after `Auth.resume_cursors`:
    /// its answer is pushed as a `Deliver` of the listed conversations.
    pub resume: bool,
    /// A call of the server API (`crate::api`): the answer goes here instead
    /// of to a connection (`from` is then unused). Boxed: one word in every
    /// ring entry.
    pub reply: Option<ApiReply>,
    /// Not a request but a route change of the caller's device (cluster
    /// mode): written by the worker before it handles the batch, never
    /// answered. Riding the user's ring, it stays in order with the user's
    /// requests and the device's other route changes.
    pub route: Option<RouteChange>,
    /// A `device_logout` the shard already did for a device connected
    /// there (cluster mode): the worker only remembers it in Redis for the
    /// other nodes, then answers.
    pub done_here: bool,
}

impl BackendRequest {
    /// A request of `user`'s `device` (never an operator's), answered to
    /// `from`; the rest is set by the few callers that need it.
    pub fn new(from: ConnRef, user: &str, device: &str, frame: Box<pb::Frame>) -> Self {
        Self {
            from,
            caller: Caller {
                user: user.to_owned(),
                device: device.to_owned(),
                admin: false,
            },
            frame,
            started: None,
            resume: false,
            reply: None,
            route: None,
            done_here: false,
        }
    }

    /// A frame (request id 0) that carries `body`.
    pub fn frame(body: Body) -> Box<pb::Frame> {
        Box::new(pb::Frame {
            request_id: 0,
            body: Some(body),
        })
    }
}

/// A device logged in on this node or left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Logged in: the route names this node (and displaces the device on
    /// the node it named before).
    Up,
    /// Closed: the route goes if it still names this node.
    Down,
    /// Still connected after this node's lease had lapsed: the route is
    /// written back only if the device has none.
    Restore,
}

/// Where a server API call waits for its answer (the reply body, or `None`
/// for a fire-and-forget request that succeeded).
pub type ApiReply = Box<tokio::sync::oneshot::Sender<Option<Body>>>;

/// Something the backend wants pushed to connected devices.
#[derive(Debug)]
pub enum Effect {
    /// A stored log entry for every device of `recipients` (which include
    /// the sender, for their other devices); `origin` is the sending device,
    /// which already has the SendAck and gets no copy.
    Deliver {
        /// The entry as stored.
        entry: pb::Entry,
        /// User ids (shared: a group's member list is reused per message).
        recipients: Arc<[String]>,
        /// `(user, device)` that caused it.
        origin: Option<(String, String)>,
    },
    /// An ephemeral push (typing, presence, server event) to `recipients`.
    Push {
        /// User ids.
        recipients: Arc<[String]>,
        /// The frame body to push (request id 0).
        body: Body,
    },
    /// A room message (`RoomDeliver`) for every connection that joined
    /// `room`: one shard message per shard, one record per other node
    /// (docs/protocol.md, "Rooms"); the shards know the members. A
    /// `RoomClosed` body goes the same way, and each shard then
    /// unsubscribes the room's connections.
    Room {
        /// The room id.
        room: Arc<str>,
        /// The frame body to push (request id 0).
        body: Body,
    },
}

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The response frame body (a result, `Ok` or `Error`); `None` for
    /// fire-and-forget requests (typing) that succeeded.
    pub reply: Option<Body>,
    /// What to push because of it.
    pub effects: Vec<Effect>,
}

/// The answers of a batch some of whose calls were refused before the
/// backend (`refused[i]` is the error body of call i, or `None` if it
/// passed): a refused call gets its error, each passed one the next of
/// `passed_answers` (one per passed call, in order). Used by the content
/// filter and the before-send webhook.
pub fn merge_refused(refused: Vec<Option<Body>>, passed_answers: Vec<Answer>) -> Vec<Answer> {
    let mut passed = passed_answers.into_iter();
    refused
        .into_iter()
        .map(|r| match r {
            Some(error) => Answer {
                reply: Some(error),
                effects: Vec::new(),
            },
            None => passed.next().unwrap_or_else(|| Answer {
                reply: Some(Body::Error(pb::Error {
                    code: pb::ErrorCode::Internal as i32,
                    reason: "no answer from the backend".into(),
                    retry_after_ms: 0,
                })),
                effects: Vec::new(),
            }),
        })
        .collect()
}

/// The chat backend as the gateway sees it: a batch in, one answer per
/// request out, in order. Implemented over `tern_backend` in `server.rs`.
pub trait ChatService: Send + Sync + 'static {
    /// Handles `batch` (one durable commit for all of its writes).
    fn handle_batch(&self, now_unix_ms: u64, batch: Vec<(Caller, Body)>) -> Vec<Answer>;

    /// Called about every [`TICK_MS`]: pushes due to time passing (typing
    /// that expired).
    fn tick(&self, now_unix_ms: u64) -> Vec<Effect>;

    /// The password hashes of local accounts (`api::accounts`), read and
    /// written by the HTTP edge directly; `None` when the service has none.
    fn credentials(&self) -> Option<Arc<dyn tern_backend::store::Credentials>> {
        None
    }

    /// The audit log of admin actions (`api::audit`), written and read by
    /// the HTTP edge directly; `None` when the service keeps none.
    fn audit_log(&self) -> Option<Arc<dyn tern_backend::store::AuditLog>> {
        None
    }

    /// The departments (`api::org`), written and read by the HTTP edge
    /// directly; `None` when the service keeps none.
    fn org_store(&self) -> Option<Arc<dyn tern_backend::store::OrgStore>> {
        None
    }

    /// Offline push (`crate::push`, off the workers): whether `user`
    /// should get a notification about a message in `conversation` now,
    /// and to which tokens with which badge. The default has no push.
    fn push_target(
        &self,
        now_unix_ms: u64,
        user: &str,
        conversation: &str,
    ) -> Result<tern_backend::domain::push::PushTarget, String> {
        let _ = (now_unix_ms, user, conversation);
        Ok(tern_backend::domain::push::PushTarget::NoTokens)
    }

    /// A provider said `(platform, token)` is dead: remove it from whoever
    /// holds it; `true` if someone did.
    fn push_token_dead(&self, platform: i32, token: &str) -> bool {
        let _ = (platform, token);
        false
    }
}

/// How often a worker calls [`ChatService::tick`].
pub const TICK_MS: u64 = 1_000;

/// A worker's rings.
#[derive(Debug)]
pub struct WorkerSetup {
    /// From each shard.
    pub inbox: Vec<Receiver<BackendRequest>>,
    /// To each shard, indexed by shard id.
    pub to_shards: Vec<Sender<ShardMsg>>,
    /// This worker's doorbell.
    pub bell: Arc<Doorbell>,
    /// Requests per batch at most.
    pub batch_max: usize,
    /// Counters.
    pub metrics: Arc<BackendMetrics>,
    /// Set to stop the worker once its rings are empty.
    pub stop: Arc<AtomicBool>,
    /// Pushes to devices on other nodes (the Redis store); `None` alone.
    pub remote: Option<RemoteRouter>,
    /// Webhooks around each batch (`crate::webhooks`); `None` when none is
    /// configured.
    pub webhooks: Option<crate::webhooks::WorkerHooks>,
    /// The content filter (`crate::filter`), shared by the workers; `None`
    /// when no word list is configured.
    pub filter: Option<Arc<crate::filter::ContentFilter>>,
    /// The offline push queue (`crate::push`); `None` when push is off.
    pub push: Option<crate::push::PushSink>,
}

/// Runs a backend worker on the current thread until `stop` is set and its
/// rings are empty.
pub fn run_worker(mut w: WorkerSetup, service: Arc<dyn ChatService>) {
    let shards = w.to_shards.len();
    let mut batch: Vec<BackendRequest> = Vec::with_capacity(w.batch_max);
    let mut next_tick = Instant::now();
    let mut next_recheck = Instant::now();
    let mut next_collect = Instant::now();
    loop {
        // Users whose presence was on a dead node: a bounded chunk between
        // two batches, so chat traffic keeps flowing meanwhile.
        if let Some(remote) = w.remote.as_mut() {
            if remote.rechecks_pending() && Instant::now() >= next_recheck {
                match remote.rechecked() {
                    Ok(users) => {
                        set_offline(users, &*service, remote, &mut w.to_shards, &w.stop);
                    }
                    Err(e) => {
                        next_recheck = Instant::now() + std::time::Duration::from_millis(TICK_MS);
                        tracing::warn!(error = %e, "cluster: presence re-check failed");
                    }
                }
            }
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + std::time::Duration::from_millis(TICK_MS);
            let pushes: Vec<OutPush> = service.tick(unix_ms()).into_iter().map(encode).collect();
            if let Some(remote) = w.remote.as_mut() {
                remote.send(&pushes.iter().collect::<Vec<_>>());
            }
            for p in pushes {
                route(&mut w.to_shards, shards, p, &w.stop);
            }
        }
        // Round-robin over the shards' rings so one busy shard cannot starve
        // the others.
        let mut progress = true;
        while batch.len() < w.batch_max && progress {
            progress = false;
            for rx in &mut w.inbox {
                if batch.len() >= w.batch_max {
                    break;
                }
                if let Some(r) = rx.recv() {
                    batch.push(r);
                    progress = true;
                }
            }
        }
        let depth: usize = w.inbox.iter().map(Receiver::len).sum();
        w.metrics.queue_depth.store(depth as i64, Ordering::Relaxed);
        if batch.is_empty() {
            if w.stop.load(Ordering::Acquire) {
                return;
            }
            let rechecks = w
                .remote
                .as_ref()
                .is_some_and(|r| r.rechecks_pending() && Instant::now() >= next_recheck);
            // Idle: what a burst freed goes back to the system.
            if Instant::now() >= next_collect {
                next_collect = Instant::now()
                    + std::time::Duration::from_millis(crate::alloc::COLLECT_EVERY_MS);
                crate::alloc::collect();
            }
            w.bell.prepare_sleep();
            if w.inbox.iter().all(Receiver::is_empty)
                && !w.stop.load(Ordering::Acquire)
                && !rechecks
            {
                std::thread::park_timeout(std::time::Duration::from_millis(100));
            }
            w.bell.awake();
            continue;
        }
        match w.remote.as_mut() {
            Some(remote) => {
                node_bookkeeping(remote, &mut batch);
                devices_across_nodes(remote, &mut batch, &mut w.to_shards, &w.stop);
            }
            None => batch.retain(|r| r.route.is_none()),
        }
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        // Room joins and leaves change a shard's subscriptions when their
        // answers reach it: which requests they were, before the bodies go.
        let rooms: Vec<Option<(Box<str>, bool)>> = batch.iter().map(room_request).collect();
        let calls = batch
            .iter_mut()
            .map(|r| {
                // The session checked the body is present; `Ok` never reaches
                // here, and if it did the domain would refuse it.
                // A resume sync keeps its body: its answer is filtered by the
                // conversations it listed.
                let body = if r.resume {
                    r.frame.body.clone()
                } else {
                    r.frame.body.take()
                };
                (
                    std::mem::take(&mut r.caller),
                    body.unwrap_or(Body::Ok(pb::Ok::default())),
                )
            })
            .collect();
        // The content filter, then before-send, then the domain, then the
        // after-events. Server API calls (`from_api`) skip both checks.
        let from_api: Vec<bool> = batch.iter().map(|r| r.reply.is_some()).collect();
        let hooks = &mut w.webhooks;
        let answers = crate::filter::handle_batch(
            w.filter.as_deref(),
            calls,
            &from_api,
            |calls, from_api| match hooks.as_mut() {
                Some(hooks) => {
                    crate::webhooks::handle_batch(hooks, &*service, unix_ms(), calls, from_api)
                }
                None => service.handle_batch(unix_ms(), calls),
            },
        );
        w.metrics
            .batch_latency
            .observe_us(started.elapsed().as_micros() as u64);
        w.metrics.batches.fetch_add(1, Ordering::Relaxed);
        w.metrics
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        debug_assert_eq!(answers.len(), batch.len(), "one answer per request");
        // Stored messages to the push queue: a try_send per message, never
        // a wait (the push thread decides who is offline, later).
        if let Some(push) = w.push.as_ref() {
            push.collect(&answers);
        }
        // Every push of the batch encoded once; those for other nodes are
        // in their streams before any SendAck of the batch leaves (pushes
        // before acks, across nodes too).
        let mut answers: Vec<(Option<Body>, Vec<OutPush>)> = answers
            .into_iter()
            .map(|a| (a.reply, a.effects.into_iter().map(encode).collect()))
            .collect();
        if let Some(remote) = w.remote.as_mut() {
            let all: Vec<&OutPush> = answers.iter().flat_map(|(_, p)| p.iter()).collect();
            remote.send(&all);
        }
        for ((mut req, (reply, pushes)), room) in batch.drain(..).zip(answers.drain(..)).zip(rooms)
        {
            if let Some(to) = req.reply.take() {
                // A server API call: pushes first (as for a connection's
                // send), then its answer; a caller that gave up is gone.
                for p in pushes {
                    route(&mut w.to_shards, shards, p, &w.stop);
                }
                let _ = to.send(reply);
                continue;
            }
            if req.resume {
                // Always answered, even with nothing to push: the shard holds
                // the connection's live pushes until its resume is answered.
                let msg = resume_push(&req, reply);
                send_blocking(&mut w.to_shards[usize::from(req.from.shard)], msg, &w.stop);
                continue;
            }
            // Pushes first, then the answer: once a sender holds its ack,
            // the deliveries are already queued to their shards (so a
            // device that connects after the ack gets them from sync or its
            // resume push, not as a late live push).
            for p in pushes {
                route(&mut w.to_shards, shards, p, &w.stop);
            }
            if let (Some(reply), Some((room, join))) = (&reply, room) {
                // Answered to the shard as a room change: a join that the
                // backend refused (no such room) changes nothing there.
                let ok = matches!(reply, Body::RoomJoined(_) | Body::Ok(_));
                let frame = pb::Frame {
                    request_id: req.frame.request_id,
                    body: Some(reply.clone()),
                };
                let msg = ShardMsg::Room(Box::new(RoomChange {
                    conn: req.from,
                    room,
                    join: join && ok,
                    leave: !join && ok,
                    request_id: req.frame.request_id,
                    body: Bytes::from(frame.encode_to_vec()),
                }));
                send_blocking(&mut w.to_shards[usize::from(req.from.shard)], msg, &w.stop);
                continue;
            }
            if let Some(reply) = reply {
                let is_send_ack = matches!(reply, Body::SendAck(_));
                let frame = pb::Frame {
                    request_id: req.frame.request_id,
                    body: Some(reply),
                };
                let msg = ShardMsg::Reply {
                    conn: req.from,
                    body: Bytes::from(frame.encode_to_vec()),
                    send_started: req.started,
                    is_send_ack,
                };
                send_blocking(&mut w.to_shards[usize::from(req.from.shard)], msg, &w.stop);
            }
        }
    }
}

/// The room a request joins (`true`) or leaves (`false`), if it is one of
/// those (and from a connection: the server API has no subscriptions).
fn room_request(r: &BackendRequest) -> Option<(Box<str>, bool)> {
    if r.reply.is_some() || r.resume {
        return None;
    }
    match &r.frame.body {
        Some(Body::RoomJoin(j)) => Some((j.room_id.as_str().into(), true)),
        Some(Body::RoomLeave(l)) => Some((l.room_id.as_str().into(), false)),
        _ => None,
    }
}

/// Writes the node bookkeeping of a batch (one pipeline) and removes from
/// it what the domain must not see: route changes, and the `Disconnected`
/// of a user still online on another live node.
fn node_bookkeeping(remote: &mut RemoteRouter, batch: &mut Vec<BackendRequest>) {
    let drop: Vec<bool> = {
        let notes: Vec<(usize, Note<'_>)> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, r)| note_of(r).map(|n| (i, n)))
            .collect();
        if notes.is_empty() {
            return;
        }
        let keep = remote.note(&notes.iter().map(|(_, n)| *n).collect::<Vec<_>>());
        let mut drop = vec![false; batch.len()];
        for ((i, _), keep) in notes.iter().zip(keep) {
            drop[*i] = !keep;
        }
        drop
    };
    let mut i = 0;
    batch.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
}

/// Completes the `device_list` and `device_logout` requests a shard
/// passed on (cluster mode; `shard/devices.rs`), and the server API's
/// device calls (`api/users.rs`), and takes them out of the batch: the
/// domain never sees them. A list arrives as the shard's
/// `DeviceListResult` of this node's devices and leaves with the user's
/// devices on other live nodes added (oldest login first, at most
/// `DEVICE_LIST_MAX`); a logout of a device not connected here is sent to
/// the node holding it (`ok`, and this node remembers it too), else
/// `NOT_FOUND`. If Redis fails, a list names this node's devices only and a
/// logout is `INTERNAL`.
fn devices_across_nodes(
    remote: &mut RemoteRouter,
    batch: &mut Vec<BackendRequest>,
    to_shards: &mut [Sender<ShardMsg>],
    stop: &AtomicBool,
) {
    refuse_logged_out(remote, batch, to_shards, stop);
    // A connection's (passed on by its shard) or the server API's
    // (`ApiBackend::devices_across_nodes`): clients cannot send a
    // `DeviceListResult` (a server frame), and the API sends these only in
    // cluster mode.
    let is_device_request = |r: &BackendRequest| {
        r.route.is_none()
            && matches!(
                r.frame.body,
                Some(Body::DeviceListResult(_) | Body::DeviceLogout(_))
            )
    };
    if !batch.iter().any(is_device_request) {
        return;
    }
    let shards = to_shards.len();
    let mut rest = Vec::with_capacity(batch.len());
    for mut req in batch.drain(..) {
        if !is_device_request(&req) {
            rest.push(req);
            continue;
        }
        let user = req.caller.user.clone();
        let body = match req.frame.body.take() {
            Some(Body::DeviceListResult(mut list)) => {
                match remote.remote_devices(&user) {
                    Ok(others) => list.devices.extend(others),
                    Err(e) => tracing::warn!(error = %e, "cluster: device list of other nodes"),
                }
                list.devices
                    .sort_by_key(|d| (d.login_time_ms, d.node_id.clone()));
                list.devices.truncate(crate::msg::DEVICE_LIST_MAX);
                Body::DeviceListResult(list)
            }
            Some(Body::DeviceLogout(m)) if req.done_here => {
                // Kicked and remembered by the shard: remembered in Redis
                // before the answer, so a login on another node after it is
                // refused. Redis failing, the logout stands here.
                if let Err(e) = remote.remember_logout(&user, &m.device_id, unix_ms()) {
                    tracing::warn!(error = %e, "cluster: logout not remembered in Redis");
                }
                Body::Ok(pb::Ok::default())
            }
            Some(Body::DeviceLogout(m)) => match remote.logout_remote(&user, &m.device_id) {
                Ok(true) => {
                    let msg = ShardMsg::RemoteLogout {
                        user: user.clone(),
                        device: m.device_id,
                    };
                    send_blocking(&mut to_shards[owner_shard(&user, shards)], msg, stop);
                    Body::Ok(pb::Ok::default())
                }
                Ok(false) => Body::Error(pb::Error {
                    code: pb::ErrorCode::NotFound as i32,
                    reason: format!("device {:?} is not connected", m.device_id),
                    retry_after_ms: 0,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: device logout on another node");
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::Internal as i32,
                        reason: "the cluster store did not answer".into(),
                        retry_after_ms: 0,
                    })
                }
            },
            _ => continue,
        };
        if let Some(to) = req.reply.take() {
            // The server API's: it waits on its slot (or gave up).
            let _ = to.send(Some(body));
            continue;
        }
        let frame = pb::Frame {
            request_id: req.frame.request_id,
            body: Some(body),
        };
        let msg = ShardMsg::Reply {
            conn: req.from,
            body: Bytes::from(frame.encode_to_vec()),
            send_started: None,
            is_send_ack: false,
        };
        send_blocking(&mut to_shards[usize::from(req.from.shard)], msg, stop);
    }
    *batch = rest;
}

/// Answers the login checks of a batch whose device was logged out (on any
/// node) after its token was issued, as Redis remembers it: a `Kick`
/// `LOGGED_OUT` (the shard kicks the connection) instead of the domain's
/// ban check, and takes them out of the batch. The check's `Kick.message`
/// is the token's `iat` (seconds; empty: none, which any remembered logout
/// refuses). If Redis fails, the checks go on to the domain unchanged.
fn refuse_logged_out(
    remote: &mut RemoteRouter,
    batch: &mut Vec<BackendRequest>,
    to_shards: &mut [Sender<ShardMsg>],
    stop: &AtomicBool,
) {
    let is_login_check = |r: &BackendRequest| {
        r.route.is_none()
            && r.reply.is_none()
            && !r.caller.admin
            && matches!(r.frame.body, Some(Body::Kick(_)))
    };
    let checks: Vec<(&str, &str)> = batch
        .iter()
        .filter(|r| is_login_check(r))
        .map(|r| (r.caller.user.as_str(), r.caller.device.as_str()))
        .collect();
    if checks.is_empty() {
        return;
    }
    let at = match remote.logged_out(&checks) {
        Ok(at) => at,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: remembered logouts not read");
            return;
        }
    };
    let mut at = at.into_iter();
    let mut rest = Vec::with_capacity(batch.len());
    for req in batch.drain(..) {
        if !is_login_check(&req) {
            rest.push(req);
            continue;
        }
        let Some(Some(logout_ms)) = at.next() else {
            rest.push(req);
            continue;
        };
        let issued_at: Option<u64> = match &req.frame.body {
            Some(Body::Kick(k)) => k.message.parse().ok(),
            _ => None,
        };
        if issued_at.is_some_and(|iat| iat.saturating_mul(1_000) > logout_ms) {
            rest.push(req); // a token issued after the logout
            continue;
        }
        let frame = pb::Frame {
            request_id: req.frame.request_id,
            body: Some(Body::Kick(pb::Kick {
                reason: pb::KickReason::LoggedOut as i32,
                message: "this device was logged out; log in again for a new token".into(),
                ..Default::default()
            })),
        };
        let msg = ShardMsg::Reply {
            conn: req.from,
            body: Bytes::from(frame.encode_to_vec()),
            send_started: None,
            is_send_ack: false,
        };
        send_blocking(&mut to_shards[usize::from(req.from.shard)], msg, stop);
    }
    *batch = rest;
}

/// The node bookkeeping a request carries: a route change, or the
/// gateway's presence update (a caller without a device, as the domain
/// tells them apart) for a user's first or last counting device here.
fn note_of(r: &BackendRequest) -> Option<Note<'_>> {
    let (user, device) = (r.caller.user.as_str(), r.caller.device.as_str());
    match r.route {
        Some(RouteChange::Up) => {
            let info = match &r.frame.body {
                Some(Body::DeviceListResult(l)) => l.devices.first(),
                _ => None,
            };
            return Some(Note::RouteUp { user, device, info });
        }
        Some(RouteChange::Down) => return Some(Note::RouteDown { user, device }),
        Some(RouteChange::Restore) => return Some(Note::RouteRestore { user, device }),
        None => {}
    }
    let Some(Body::SetPresence(p)) = &r.frame.body else {
        return None;
    };
    if !device.is_empty() {
        return None;
    }
    match pb::PresenceState::try_from(p.state) {
        Ok(pb::PresenceState::Online) => Some(Note::Connected { user }),
        Ok(pb::PresenceState::Offline) => Some(Note::Disconnected { user }),
        _ => None,
    }
}

/// Sets `users` OFFLINE (the gateway's "last device left", in one domain
/// batch) and pushes the result to their friends wherever they are.
fn set_offline(
    users: Vec<String>,
    service: &dyn ChatService,
    remote: &mut RemoteRouter,
    to_shards: &mut [Sender<ShardMsg>],
    stop: &AtomicBool,
) {
    if users.is_empty() {
        return;
    }
    let calls = users
        .into_iter()
        .map(|user| {
            let body = Body::SetPresence(pb::SetPresenceRequest {
                state: pb::PresenceState::Offline as i32,
                text: String::new(),
            });
            (
                Caller {
                    user,
                    device: String::new(),
                    admin: false,
                },
                body,
            )
        })
        .collect();
    let pushes: Vec<OutPush> = service
        .handle_batch(unix_ms(), calls)
        .into_iter()
        .flat_map(|a| a.effects)
        .map(encode)
        .collect();
    remote.send(&pushes.iter().collect::<Vec<_>>());
    let shards = to_shards.len();
    for p in pushes {
        route(to_shards, shards, p, stop);
    }
}

/// Turns the answer to a resume sync into a tracked `Deliver` of the
/// conversations the device listed (others it syncs itself). Nothing to
/// push (or a failed sync) is a `Resume` with an empty body and no cursors.
fn resume_push(req: &BackendRequest, reply: Option<Body>) -> ShardMsg {
    let nothing = || ShardMsg::Resume {
        conn: req.from,
        cursors: Arc::new([]),
        body: Bytes::new(),
    };
    let Some(Body::SyncResult(result)) = reply else {
        return nothing();
    };
    let Some(Body::Sync(asked)) = &req.frame.body else {
        return nothing();
    };
    let listed: std::collections::HashSet<&str> = asked
        .cursors
        .iter()
        .map(|c| c.conversation_id.as_str())
        .collect();
    let entries: Vec<pb::Entry> = result
        .entries
        .into_iter()
        .filter(|e| listed.contains(e.conversation_id.as_str()))
        .collect();
    if entries.is_empty() {
        return nothing();
    }
    let mut newest: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for e in &entries {
        let seq = newest.entry(e.conversation_id.as_str()).or_default();
        *seq = (*seq).max(e.seq);
    }
    let cursors: Arc<[(ConvKey, u64)]> = newest.iter().map(|(c, &s)| (ConvKey::of(c), s)).collect();
    let frame = pb::Frame {
        request_id: 0,
        body: Some(Body::Deliver(pb::Deliver { entries })),
    };
    ShardMsg::Resume {
        conn: req.from,
        cursors,
        body: Bytes::from(frame.encode_to_vec()),
    }
}

/// Encodes an effect's frame once, for every shard and node it goes to.
fn encode(effect: Effect) -> OutPush {
    match effect {
        Effect::Deliver {
            entry,
            recipients,
            origin,
        } => {
            let meta = EntryMeta {
                conversation_id: entry.conversation_id.clone(),
                seq: entry.seq,
                origin: origin.map(Arc::new),
            };
            let frame = pb::Frame {
                request_id: 0,
                body: Some(Body::Deliver(pb::Deliver {
                    entries: vec![entry],
                })),
            };
            OutPush {
                recipients,
                body: Bytes::from(frame.encode_to_vec()),
                entry: Some(meta),
                room: None,
                room_closed: false,
            }
        }
        Effect::Push { recipients, body } => {
            let frame = pb::Frame {
                request_id: 0,
                body: Some(body),
            };
            OutPush {
                recipients,
                body: Bytes::from(frame.encode_to_vec()),
                entry: None,
                room: None,
                room_closed: false,
            }
        }
        Effect::Room { room, body } => {
            let room_closed = matches!(body, Body::RoomClosed(_));
            let frame = pb::Frame {
                request_id: 0,
                body: Some(body),
            };
            OutPush {
                recipients: Arc::new([]),
                body: Bytes::from(frame.encode_to_vec()),
                entry: None,
                room: Some(room),
                room_closed,
            }
        }
    }
}

/// Sends a push to the owner shards of its recipients on this node: one
/// ring item per shard, the encoded frame shared.
fn route(to_shards: &mut [Sender<ShardMsg>], shards: usize, push: OutPush, stop: &AtomicBool) {
    let OutPush {
        recipients,
        body,
        entry,
        room,
        room_closed,
    } = push;
    if let Some(room) = room {
        // One message per shard, whoever joined: each shard walks its own
        // subscribers of the room (a shard with none drops it at once).
        for tx in to_shards.iter_mut() {
            let msg = ShardMsg::RoomPush {
                room: room.clone(),
                body: body.clone(),
                closed: room_closed,
            };
            send_blocking(tx, msg, stop);
        }
        return;
    }
    match entry {
        Some(meta) => {
            let cursors: Arc<[(ConvKey, u64)]> =
                Arc::new([(ConvKey::of(&meta.conversation_id), meta.seq)]);
            for (shard, users) in by_shard(recipients, shards) {
                let msg = ShardMsg::Deliver {
                    users,
                    cursors: cursors.clone(),
                    body: body.clone(),
                    origin: meta.origin.clone(),
                };
                send_blocking(&mut to_shards[shard], msg, stop);
            }
        }
        None => {
            for (shard, users) in by_shard(recipients, shards) {
                send_blocking(
                    &mut to_shards[shard],
                    ShardMsg::Push {
                        users,
                        body: body.clone(),
                    },
                    stop,
                );
            }
        }
    }
}

/// The recipients each shard owns. A single recipient list (the common
/// 1:1 case, and every list on a one-shard node) is shared, not copied.
fn by_shard(users: Arc<[String]>, shards: usize) -> Vec<(usize, Arc<[String]>)> {
    if shards == 1 {
        return vec![(0, users)];
    }
    let mut groups: Vec<Vec<String>> = (0..shards).map(|_| Vec::new()).collect();
    for u in users.iter() {
        groups[owner_shard(u, shards)].push(u.clone());
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(i, g)| (i, g.into()))
        .collect()
}

/// A full shard ring back-pressures the worker: it waits for the shard
/// rather than dropping acknowledged work. Once the server stops the
/// workers (`stop`: every shard has drained and exited, or the drain
/// deadline passed), nobody will empty the ring, so the item is dropped: a
/// push or answer for a connection that is gone (the device syncs when it
/// reconnects).
fn send_blocking(tx: &mut Sender<ShardMsg>, mut msg: ShardMsg, stop: &AtomicBool) {
    loop {
        match tx.send(msg) {
            Ok(()) => return,
            Err(m) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                msg = m;
                std::thread::yield_now();
            }
        }
    }
}

/// The wall clock, ms since the epoch (0 before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
