//! The shard's inbox: `ShardMsg`s from other shards, the backend workers and
//! the node channel, handled in bounded batches (`drain_inbox`), each
//! connection given frames written once per batch; pushes (`push_to`),
//! kicks, and the resume gate (`Resume`) that keeps a connection's pushes in
//! seq order around its resume sync.

use std::{os::fd::FromRawFd, rc::Rc, sync::Arc};

use bytes::Bytes;
use monoio::net::TcpStream;
use tern_protocol::{
    pb::{self, frame::Body},
    session::{ConvKey, QueueError, Rejected},
};
use tracing::info;

use super::{Conn, INBOX_BATCH_MAX, Shard, SmallKeys, poll::Turn};
use crate::{
    bridge::BackendRequest,
    mailbox::Doorbell,
    metrics::CloseReason,
    msg::{ConnRef, ShardMsg},
};

/// Live `Deliver`s held at most per connection while its resume is in
/// flight; beyond, all held ones are dropped and one more resume sync is
/// issued after the answer (from the resume's newest cursors).
pub(super) const RESUME_HOLD_FRAMES_MAX: usize = 64;

/// How long after a resume's answer live pushes are still checked against
/// what the resume carried: a push routed by another backend worker just
/// before the resume ran can reach the shard just after its answer.
const RESUME_FENCE_MS: u64 = 2_000;

/// Keeps a connection's pushes in seq order around its resume. While the
/// resume sync is in flight, live `Deliver`s touching a conversation it
/// lists are held (bounded); its answer is pushed first, then the held
/// frames without the entries it already carried. For
/// [`RESUME_FENCE_MS`] after, late live pushes of entries it carried are
/// dropped (the fence). Conversations the resume does not list pass
/// through: it pushes nothing of them.
pub(super) struct Resume {
    /// Each listed conversation: its key, its id (to sync again), and the
    /// newest seq the device holds or the resume carried (the fence).
    pub(super) convs: Vec<(ConvKey, String, u64)>,
    /// The sync is in flight (or waiting for room in the backend queue).
    pub(super) in_flight: bool,
    /// Live pushes held while in flight, oldest first.
    pub(super) held: Vec<Pushed>,
    /// More than [`RESUME_HOLD_FRAMES_MAX`] arrived: the held ones were
    /// dropped; sync again once the answer is pushed.
    pub(super) overflowed: bool,
    /// When the fence ends (shard ms), once the answer arrived.
    pub(super) fence_until_ms: u64,
}

/// A `Deliver` as the shard pushes it: `(conversation, newest seq)` of its
/// entries, and the encoded frame.
type Pushed = (Arc<[(ConvKey, u64)]>, Bytes);

/// What the resume rule does with a live `Deliver`.
pub(super) enum Gate {
    /// Push it (possibly re-encoded without entries the resume carried).
    Pass(Arc<[(ConvKey, u64)]>, Bytes),
    /// Held until the resume's answer, or dropped (already carried).
    Taken,
}

impl Resume {
    pub(super) fn new(cursors: &[pb::Cursor]) -> Self {
        Self {
            convs: cursors
                .iter()
                .map(|c| {
                    (
                        ConvKey::of(&c.conversation_id),
                        c.conversation_id.clone(),
                        c.seq,
                    )
                })
                .collect(),
            in_flight: true,
            held: Vec::new(),
            overflowed: false,
            fence_until_ms: u64::MAX,
        }
    }

    fn fence(&self, key: ConvKey) -> Option<u64> {
        self.convs.iter().find(|c| c.0 == key).map(|c| c.2)
    }

    /// Applies the rule to one live `Deliver`.
    pub(super) fn gate(&mut self, cursors: Arc<[(ConvKey, u64)]>, body: Bytes) -> Gate {
        if !cursors.iter().any(|(k, _)| self.fence(*k).is_some()) {
            return Gate::Pass(cursors, body);
        }
        if self.in_flight {
            if self.overflowed || self.held.len() >= RESUME_HOLD_FRAMES_MAX {
                // Dropped, with every frame held so far: the sync issued
                // after the answer carries them all, in order.
                self.overflowed = true;
                self.held = Vec::new();
            } else {
                self.held.push((cursors, body));
            }
            return Gate::Taken;
        }
        match self.strip(&cursors, body) {
            Some((cursors, body)) => {
                // A push beyond the fence arrived: later ones are beyond too.
                for (k, _) in cursors.iter() {
                    if let Some(i) = self.convs.iter().position(|c| c.0 == *k) {
                        self.convs.swap_remove(i);
                    }
                }
                Gate::Pass(cursors, body)
            }
            None => Gate::Taken,
        }
    }

    /// The frame without the entries at or below the fence: `None` if all
    /// are, the frame itself if none are, else re-encoded (rare: decoding).
    fn strip(&self, cursors: &Arc<[(ConvKey, u64)]>, body: Bytes) -> Option<Pushed> {
        let covered = |k: ConvKey, seq: u64| self.fence(k).is_some_and(|f| seq <= f);
        // A frame's cursors hold each conversation's newest seq in it.
        if cursors.iter().all(|&(k, s)| covered(k, s)) {
            return None;
        }
        use prost::Message as _;
        let Ok(pb::Frame {
            body: Some(Body::Deliver(mut d)),
            ..
        }) = pb::Frame::decode(&body[..])
        else {
            return Some((cursors.clone(), body)); // not a Deliver: untouched
        };
        let before = d.entries.len();
        d.entries
            .retain(|e| !covered(ConvKey::of(&e.conversation_id), e.seq));
        if d.entries.len() == before {
            return Some((cursors.clone(), body));
        }
        let mut newest: Vec<(ConvKey, u64)> = Vec::new();
        for e in &d.entries {
            let k = ConvKey::of(&e.conversation_id);
            match newest.iter_mut().find(|(nk, _)| *nk == k) {
                Some((_, s)) => *s = (*s).max(e.seq),
                None => newest.push((k, e.seq)),
            }
        }
        let frame = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(d)),
        };
        Some((newest.into(), Bytes::from(frame.encode_to_vec())))
    }

    /// The resume's answer arrived, carrying `carried` (newest seq per
    /// conversation): the fence moves up to it.
    pub(super) fn answered(&mut self, carried: &[(ConvKey, u64)]) {
        for (k, seq) in carried {
            if let Some(c) = self.convs.iter_mut().find(|c| c.0 == *k) {
                c.2 = c.2.max(*seq);
            }
        }
    }

    /// The cursors to sync again from after an overflow.
    pub(super) fn cursors(&self) -> Vec<pb::Cursor> {
        self.convs
            .iter()
            .map(|(_, id, seq)| pb::Cursor {
                conversation_id: id.clone(),
                seq: *seq,
            })
            .collect()
    }
}

impl Shard {
    fn handle_inbox(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Handoff(h) => self.adopt(*h),
            ShardMsg::Reply {
                conn,
                body,
                send_started,
                is_send_ack,
            } => {
                let mut conns = self.conns.borrow_mut();
                let Some(c) = conns.get_mut(conn.key as usize) else {
                    return;
                };
                if c.generation != conn.generation {
                    return; // the connection is gone; the client will retry or sync
                }
                if let Some(kick) = as_kick(&body) {
                    // The login check found the user banned.
                    self.kick_conn(conn.key, c, &kick);
                    return;
                }
                if is_send_ack {
                    self.metrics
                        .messages_sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(t) = send_started {
                        self.metrics
                            .send_ack_latency
                            .observe_us(t.elapsed().as_micros() as u64);
                    }
                }
                self.make_room(conn.key, c, body.len());
                let slow = matches!(
                    c.session.queue_encoded(&self.cfg, self.now_ms(), body),
                    Err(Rejected {
                        error: QueueError::SlowConsumer,
                        ..
                    })
                );
                if slow {
                    self.flush(conn.key, c);
                    self.close_soon(c, CloseReason::SlowConsumer);
                } else {
                    self.touch(conn.key, c);
                }
            }
            ShardMsg::Resume {
                conn,
                cursors,
                body,
            } => self.on_resume(conn, &cursors, body),
            ShardMsg::Deliver {
                users,
                cursors,
                body,
                origin,
            } => {
                let now = self.now_ms();
                self.each_device(&users, |user, key, c| {
                    if let Some((ou, od)) = origin.as_deref() {
                        if ou == user && c.device() == Some(od.as_str()) {
                            return;
                        }
                    }
                    // Around a resume, live pushes wait for it (see `Resume`).
                    let (cursors, body) = match c.resume_mut() {
                        Some(r) => match r.gate(cursors.clone(), body.clone()) {
                            Gate::Pass(cursors, body) => (cursors, body),
                            Gate::Taken => return,
                        },
                        None => (cursors.clone(), body.clone()),
                    };
                    self.push_to(key, c, now, &cursors, body);
                });
            }
            ShardMsg::Push { users, body } => {
                if let Some(kick) = as_kick(&body) {
                    self.kick_devices(&users, &kick);
                    return;
                }
                let now = self.now_ms();
                self.each_device(&users, |_, key, c| {
                    self.make_room(key, c, body.len());
                    let pushed = c.session.queue_encoded(&self.cfg, now, body.clone());
                    if let Err(Rejected {
                        error: QueueError::SlowConsumer,
                        ..
                    }) = pushed
                    {
                        self.flush(key, c);
                        self.close_soon(c, CloseReason::SlowConsumer);
                    } else {
                        self.touch(key, c);
                    }
                });
            }
            ShardMsg::RoomPush { room, body, closed } => {
                self.room_push(&room, &body, closed);
            }
            ShardMsg::Room(change) => self.room_change(&change),
            ShardMsg::Drain => self.draining.set(true),
            ShardMsg::Devices { user, reply } => {
                let _ = reply.send(self.devices_for_api(&user));
            }
            ShardMsg::Logout { ident, reply } => {
                let (user, device) = ident.split_once('\0').unwrap_or((&ident, ""));
                let _ = reply.send(self.logout(user, device));
            }
            ShardMsg::OnlineUsers { reply } => {
                // One pass over the device index: indexed devices are the
                // welcomed ones not displaced or finished, as the presence
                // updates this shard sends count them.
                let index = self.users.borrow();
                let conns = self.conns.borrow();
                let users = index
                    .iter()
                    .filter_map(|&k| conns.get(k as usize).filter(|c| !c.quiet)?.user())
                    .map(str::to_owned)
                    .collect();
                let _ = reply.send(users);
            }
            ShardMsg::Displace { user, device } => self.displace(&user, &device),
            ShardMsg::RemoteLogout { user, device } => self.logout_elsewhere(&user, &device),
            ShardMsg::PolicyKick {
                user,
                device,
                login_ms,
            } => self.kick_by_policy(&user, &device, login_ms),
            ShardMsg::Recount => self.recount(),
        }
    }

    /// An operator's kick or a ban pushed by the backend: the devices of
    /// `users` it names (all, or the one in `kick.message`: see
    /// `tern_backend::domain` admin.rs) get a `Kick` and are closed once it
    /// is written.
    fn kick_devices(self: &Rc<Self>, users: &[String], kick: &pb::Kick) {
        let index = self.users.borrow();
        let mut conns = self.conns.borrow_mut();
        for user in users {
            let keys: SmallKeys = index.iter_hash(self.user_hash(user)).copied().collect();
            for key in keys {
                let Some(c) = conns.get_mut(key as usize) else {
                    continue;
                };
                let named = kick.message.is_empty() || c.device() == Some(kick.message.as_str());
                if c.user() == Some(user.as_str()) && named {
                    self.kick_conn(key, c, kick);
                }
            }
        }
    }

    /// Sends one connection a `Kick` (the session's own frame, with its
    /// message for the reason) and closes it after its output is written.
    pub(super) fn kick_conn(self: &Rc<Self>, key: u32, c: &mut Conn, kick: &pb::Kick) {
        let reason = pb::KickReason::try_from(kick.reason).unwrap_or(pb::KickReason::Admin);
        let now = self.now_ms();
        // Rate-limited with the failed logins: a banned client that keeps
        // reconnecting is one line a login.
        if let Some(suppressed) = self.auth_log.borrow_mut().admit(now) {
            info!(
                shard = self.id,
                user = c.user().unwrap_or(""),
                device = c.device().unwrap_or(""),
                reason = reason.as_str_name(),
                suppressed,
                "kicked"
            );
        }
        c.session.kick(&self.cfg, now, reason, "");
        self.flush(key, c);
        if c.pending_out().is_empty() {
            self.close_soon(c, CloseReason::Kicked);
        } else {
            // Closed by `on_writable` once the kick is out.
            let _ = self.close_after_output(key, c, CloseReason::Kicked);
        }
    }

    /// Pushes one `Deliver` to a connection and counts what became of it.
    fn push_to(
        self: &Rc<Self>,
        key: u32,
        c: &mut Conn,
        now: u64,
        cursors: &[(ConvKey, u64)],
        body: Bytes,
    ) {
        self.make_room(key, c, body.len());
        match c.session.push_deliver(&self.cfg, now, cursors, body) {
            Ok(()) => {
                self.metrics
                    .delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The device is behind: it syncs what it lacks.
            Err(Rejected {
                error: QueueError::WindowFull,
                ..
            }) => {
                self.metrics
                    .window_full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(Rejected {
                error: QueueError::SlowConsumer,
                ..
            }) => {
                self.flush(key, c);
                self.close_soon(c, CloseReason::SlowConsumer);
                return;
            }
            // Not live (closing or not yet welcomed): sync covers it.
            Err(_) => {}
        }
        self.touch(key, c);
    }

    /// The answer to a connection's resume sync: pushed first, then the
    /// live pushes held meanwhile, without the entries it carried; after an
    /// overflow of the hold, one more resume sync instead.
    fn on_resume(self: &Rc<Self>, conn: ConnRef, cursors: &[(ConvKey, u64)], body: Bytes) {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns
            .get_mut(conn.key as usize)
            .filter(|c| c.generation == conn.generation)
        else {
            return; // gone; the device resumes again when it reconnects
        };
        let key = conn.key;
        if !body.is_empty() {
            // A full window or outbox: the device's own sync covers it.
            self.push_to(key, c, now, cursors, body);
        }
        let Some(r) = c.resume_mut().filter(|r| r.in_flight) else {
            return;
        };
        r.answered(cursors);
        if r.overflowed {
            // Live pushes were dropped while the resume was in flight: they
            // are all after the fence now, so a sync from it carries them.
            r.overflowed = false;
            let again = r.cursors();
            let (Some(user), Some(device)) = (c.user(), c.device()) else {
                return;
            };
            let req = self.resume_request(key, c.generation, user, device, again);
            if !self.queue_resume(req) {
                // No room even to wait: no resume in flight any more; the
                // device's own sync after Welcome covers what was dropped.
                if let Some(r) = c.resume_mut() {
                    r.in_flight = false;
                    r.fence_until_ms = now.saturating_add(RESUME_FENCE_MS);
                }
                self.arm(key, c);
            }
            return;
        }
        r.in_flight = false;
        r.fence_until_ms = now.saturating_add(RESUME_FENCE_MS);
        let held = std::mem::take(&mut r.held);
        for (cursors, body) in held {
            let Some(Gate::Pass(cursors, body)) = c.resume_mut().map(|r| r.gate(cursors, body))
            else {
                continue; // carried by the resume already
            };
            self.push_to(key, c, now, &cursors, body);
            if c.closing.is_some() {
                return;
            }
        }
        self.touch(key, c);
    }

    /// A sync on a connection's behalf whose answer comes back as a
    /// [`ShardMsg::Resume`].
    pub(super) fn resume_request(
        &self,
        key: u32,
        generation: u32,
        user: &str,
        device: &str,
        cursors: Vec<pb::Cursor>,
    ) -> BackendRequest {
        let mut req = BackendRequest::new(
            self.conn_ref(key, generation),
            user,
            device,
            BackendRequest::frame(Body::Sync(pb::SyncRequest { cursors, limit: 0 })),
        );
        req.resume = true;
        req
    }

    /// Queues a resume sync; if the backend queue is full it waits in
    /// `blocked` (without pausing its connection). False if even that line
    /// is full ([`super::PRESENCE_PENDING_MAX`]): no resume is in flight then.
    pub(super) fn queue_resume(self: &Rc<Self>, req: BackendRequest) -> bool {
        self.send_or_wait(req)
    }

    /// Handles up to [`INBOX_BATCH_MAX`] inbox items, then writes every
    /// connection they gave frames to. Called by the inbox loop, and by the
    /// connection loop at the end of every turn, so a busy shard serves its
    /// inbox whatever its sockets keep sending. Returns the items handled.
    pub(super) fn drain_inbox(self: &Rc<Self>) -> usize {
        let mut handled = 0;
        let mut depth = 0;
        // Not re-entered: nothing `handle_inbox` calls reads the inbox.
        let mut inbox = self.inbox.borrow_mut();
        for rx in inbox.iter_mut() {
            while handled < INBOX_BATCH_MAX {
                let Some(msg) = rx.recv() else { break };
                handled += 1;
                // Replies keep flowing while draining: in-flight acks reach
                // their clients before the kick.
                self.handle_inbox(msg);
            }
            depth += rx.len();
        }
        drop(inbox);
        self.write_touched();
        self.metrics
            .inbox_depth
            .store(depth as i64, std::sync::atomic::Ordering::Relaxed);
        handled
    }

    /// Marks a connection that got frames from the inbox: written (and its
    /// deadline re-armed) once when the batch ends, see [`Self::write_touched`].
    pub(super) fn touch(&self, key: u32, conn: &mut Conn) {
        if !conn.touched {
            conn.touched = true;
            self.touched.borrow_mut().push((key, conn.generation));
        }
    }

    /// Writes every connection the inbox batch gave frames to.
    fn write_touched(self: &Rc<Self>) {
        // Taken out while writing (flushing touches nothing), then put back
        // empty to keep its buffer for the next batch.
        let mut touched = std::mem::take(&mut *self.touched.borrow_mut());
        if touched.is_empty() {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        for &(key, generation) in &touched {
            let Some(c) = conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation)
            else {
                continue; // closed meanwhile
            };
            c.touched = false;
            self.flush(key, c);
            self.arm(key, c);
        }
        touched.clear();
        *self.touched.borrow_mut() = touched;
    }
}

/// The `Kick` in an encoded push or reply frame, if it is one (request id
/// 0, then field 120 `kick`: the frame starts with its tag bytes, so other
/// frames are told apart without decoding).
fn as_kick(frame: &[u8]) -> Option<pb::Kick> {
    const KICK_TAG: [u8; 2] = [0xC2, 0x07]; // (120 << 3) | 2 as a varint
    if !frame.starts_with(&KICK_TAG) {
        return None;
    }
    match prost::Message::decode(frame) {
        Ok(pb::Frame {
            body: Some(Body::Kick(k)),
            ..
        }) => Some(k),
        _ => None,
    }
}

/// Drains the inbox rings until told to drain the shard.
pub(super) async fn inbox_loop(shard: Rc<Shard>, bell: Arc<Doorbell>) {
    let efd = bell.eventfd_raw().expect("shards wait on an eventfd");
    // The eventfd is waited on through monoio's readiness machinery.
    // SAFETY: `efd` stays open for the shard's life (the doorbell owns it);
    // the wrapper never closes it (ManuallyDrop below).
    let waiter = std::mem::ManuallyDrop::new(
        TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(efd) })
            .expect("register eventfd"),
    );
    let legacy = monoio::utils::is_legacy();
    let mut turn = Turn::new();
    loop {
        if shard.drain_inbox() > 0 {
            // Let connections run between batches.
            turn.end().await;
            continue;
        }
        bell.prepare_sleep();
        if shard.inbox.borrow().iter().any(|rx| !rx.is_empty()) {
            bell.awake();
            continue;
        }
        let _ = waiter.readable(!legacy).await;
        turn.parked();
        bell.drain_eventfd();
        bell.awake();
    }
}
