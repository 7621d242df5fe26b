//! One shard: a monoio runtime on its own thread that owns its connections
//! (DESIGN invariant 1). Everything here runs on that one thread, so shard
//! state sits in `RefCell`s and no lock is taken on the data path.
//!
//! A connection's life on a shard:
//! 1. accepted on the listening socket all shards share (at a bounded rate);
//! 2. its session state machine is fed from the shard's shared read buffer;
//!    only a partial frame is kept per connection, in a buffer allocated on
//!    demand and freed when empty (invariant 2);
//! 3. after auth it moves to its *owner shard*, `owner_shard(user)`, so all
//!    devices of a user live on one shard (the fd travels over a ring);
//! 4. requests go to the backend through bounded rings; replies and
//!    deliveries come back through this shard's inbox;
//! 5. deadlines (auth, heartbeat, retransmit) live in the shard's wheel.
//!
//! Connections have no task of their own: each shard keeps its sockets in one
//! epoll set (level-triggered), waits for that set to become readable through
//! monoio (an io_uring poll, or the epoll driver), and then serves every ready
//! connection in a batch. Writes are attempted directly (non-blocking); only a
//! connection whose socket is full asks for write readiness until it drains.
//! An idle connection is therefore its slab entry, its kernel socket and its
//! epoll registration (kernel memory), nothing else.

use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hashbrown::HashTable;
use monoio::net::{TcpListener, TcpStream};
use slab::Slab;
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
    session::{self, AuthOk, ConvKey, QueueError, Rejected, Session, SessionConfig},
};
use tracing::{debug, info, warn};

use crate::{
    auth::Verifier,
    bridge::{BackendRequest, Caller, RouteChange},
    mailbox::{Doorbell, Receiver, Sender},
    metrics::{CloseReason, ShardMetrics},
    wheel::Wheel,
    ws,
};

/// Identifies a connection across threads: shard, slab key, generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// The shard that holds it.
    pub shard: u16,
    /// Its slab key on that shard.
    pub key: u32,
    /// Distinguishes reuses of the same slab key.
    pub generation: u32,
}

/// What arrives in a shard's inbox.
#[derive(Debug)]
pub enum ShardMsg {
    /// A connection that authenticated on another shard, for its owner.
    Handoff(Box<Handoff>),
    /// The backend's answer to one request: an encoded `Frame` body.
    Reply {
        /// Who asked.
        conn: ConnRef,
        /// The response frame, encoded (no length prefix).
        body: Bytes,
        /// When the request left the connection, for a `send`.
        send_started: Option<Instant>,
        /// The answer is a SendAck.
        is_send_ack: bool,
    },
    /// Entries one connection lacked after its `Auth.resume_cursors`: an
    /// encoded `Deliver`, tracked in its ack window.
    Resume {
        /// The connection that authenticated.
        conn: ConnRef,
        /// `(conversation, newest seq)` per conversation in the frame.
        cursors: Arc<[(ConvKey, u64)]>,
        /// The encoded `Deliver` frame body.
        body: Bytes,
    },
    /// Push stored entries to every device of `users` held by this shard.
    Deliver {
        /// Recipients owned by this shard.
        users: Arc<[String]>,
        /// `(conversation, newest seq)` the frame carries, for the ack window.
        cursors: Arc<[(ConvKey, u64)]>,
        /// An encoded `Deliver` frame body, shared by every recipient.
        body: Bytes,
        /// The device that sent it (it has the SendAck; it gets no copy).
        origin: Option<Arc<(String, String)>>,
    },
    /// An ephemeral push (typing, presence, server events): no ack window.
    Push {
        /// Recipients owned by this shard.
        users: Arc<[String]>,
        /// An encoded `Frame` body.
        body: Bytes,
    },
    /// Start draining: stop accepting, kick connections at a bounded rate.
    Drain,
    /// This node's lease had lapsed: other nodes may have taken its users'
    /// presence and routes. Send every device's route (if it has none) and
    /// every user's presence again.
    Recount,
    /// The device logged in on another node, which now holds its route:
    /// kick this node's connection of it as displaced.
    Displace {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// The server API asks which devices of `user` this shard holds.
    Devices {
        /// The user (owned by this shard).
        user: String,
        /// Where the device ids go.
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// A connection moving to its owner shard after auth.
#[derive(Debug)]
pub struct Handoff {
    fd: OwnedFd,
    session: Session,
    partial: Vec<u8>,
    user: Box<str>,
    device: Box<str>,
    transport: Transport,
    /// `Auth.resume_cursors`: what to push after Welcome.
    resume: Vec<pb::Cursor>,
    /// Authenticated with [`PRESENCE_QUIET`]: does not count toward presence.
    quiet: bool,
}

/// The `Auth.capabilities` name of a connection that does not count toward
/// its user's presence (scripts, one-shot tools): it causes no ONLINE at
/// welcome and no OFFLINE at close, and receives pushes as usual.
pub const PRESENCE_QUIET: &str = "presence-quiet";

/// How frames are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Varint length prefix per frame.
    Tcp,
    /// One binary WebSocket message per frame (after the HTTP upgrade).
    WebSocket,
    /// A WebSocket connection still in its HTTP upgrade.
    WebSocketUpgrade,
}

/// The owner shard of a user: a plain function of the user id.
pub fn owner_shard(user: &str, shards: usize) -> usize {
    // FNV-1a: stable across processes and releases (std's hasher is not
    // promised to be), cheap, and good enough to spread ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Everything a shard thread is started with.
#[derive(Debug)]
pub struct ShardSetup {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub shards: usize,
    /// Node id, for Welcome.
    pub node_id: Arc<str>,
    /// Session bounds and timers.
    pub session: SessionConfig,
    /// Shared read buffer size.
    pub read_buffer_bytes: usize,
    /// Accepts per second.
    pub accept_rate: u32,
    /// Connections held at most.
    pub connections_max: usize,
    /// Allowed WebSocket origins (empty: any).
    pub ws_origins: Vec<String>,
    /// Token verifier.
    pub verifier: Arc<Verifier>,
    /// Counters.
    pub metrics: Arc<ShardMetrics>,
    /// This shard's doorbell (eventfd).
    pub bell: Arc<Doorbell>,
    /// Inbound rings: from every other shard and every backend worker.
    pub inbox: Vec<Receiver<ShardMsg>>,
    /// To other shards, indexed by shard id (`None` at our own index).
    pub to_shards: Vec<Option<Sender<ShardMsg>>>,
    /// To the backend workers.
    pub to_backend: Vec<Sender<BackendRequest>>,
    /// Listeners (std, non-blocking; this shard's descriptor of the one
    /// socket all shards accept on), TCP then WebSocket.
    pub tcp_listener: Option<std::net::TcpListener>,
    /// The WebSocket listener.
    pub ws_listener: Option<std::net::TcpListener>,
    /// How this shard drains (kick rate, `retry_after_ms` window).
    pub drain: DrainPolicy,
    /// Time origin shared by all shards.
    pub epoch: Instant,
    /// A member of a cluster (the Redis store): route changes go to the
    /// backend workers.
    pub cluster: bool,
}

/// Per-connection state, in the shard's slab. Kept small: an idle
/// connection is this struct, its task and the kernel's socket.
struct Conn {
    session: Session,
    /// The socket (closed when the entry is removed, which also removes it
    /// from the shard's epoll set).
    fd: OwnedFd,
    /// Reading is paused (the backend queue was full).
    paused: bool,
    /// Frames were queued from the inbox; written at the end of the batch.
    touched: bool,
    /// Does not count toward its user's presence ([`PRESENCE_QUIET`]).
    quiet: bool,
    /// Its input holds whole frames beyond this turn's budget: it is in the
    /// shard's `backlog` and is not read from its socket until they are fed.
    backlogged: bool,
    /// The deadline this connection has in the wheel (u64::MAX: none).
    timer_at: u64,
    /// `user\0device` once authenticated: one allocation for both ids.
    ident: Option<Box<str>>,
    /// Buffers only a busy connection has; `None` (nothing allocated) while
    /// idle.
    spill: Option<Box<Spill>>,
    generation: u32,
    transport: Transport,
    /// Why it is closing, once decided.
    closing: Option<CloseReason>,
}

/// A connection's rarely needed buffers.
#[derive(Default)]
struct Spill {
    /// A partial inbound frame (or input left over after back-pressure).
    partial: Vec<u8>,
    /// Bytes the socket did not take; a writer task drains them.
    pending_out: Vec<u8>,
    /// The ordering state of a resume (`Auth.resume_cursors`), while its
    /// sync is in flight and for a short while after its answer.
    resume: Option<Box<Resume>>,
}

/// Live `Deliver`s held at most per connection while its resume is in
/// flight; beyond, all held ones are dropped and one more resume sync is
/// issued after the answer (from the resume's newest cursors).
const RESUME_HOLD_FRAMES_MAX: usize = 64;
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
struct Resume {
    /// Each listed conversation: its key, its id (to sync again), and the
    /// newest seq the device holds or the resume carried (the fence).
    convs: Vec<(ConvKey, String, u64)>,
    /// The sync is in flight (or waiting for room in the backend queue).
    in_flight: bool,
    /// Live pushes held while in flight, oldest first.
    held: Vec<Pushed>,
    /// More than [`RESUME_HOLD_FRAMES_MAX`] arrived: the held ones were
    /// dropped; sync again once the answer is pushed.
    overflowed: bool,
    /// When the fence ends (shard ms), once the answer arrived.
    fence_until_ms: u64,
}

/// A `Deliver` as the shard pushes it: `(conversation, newest seq)` of its
/// entries, and the encoded frame.
type Pushed = (Arc<[(ConvKey, u64)]>, Bytes);

/// What the resume rule does with a live `Deliver`.
enum Gate {
    /// Push it (possibly re-encoded without entries the resume carried).
    Pass(Arc<[(ConvKey, u64)]>, Bytes),
    /// Held until the resume's answer, or dropped (already carried).
    Taken,
}

impl Resume {
    fn new(cursors: &[pb::Cursor]) -> Self {
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
    fn gate(&mut self, cursors: Arc<[(ConvKey, u64)]>, body: Bytes) -> Gate {
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
    fn answered(&mut self, carried: &[(ConvKey, u64)]) {
        for (k, seq) in carried {
            if let Some(c) = self.convs.iter_mut().find(|c| c.0 == *k) {
                c.2 = c.2.max(*seq);
            }
        }
    }

    /// The cursors to sync again from after an overflow.
    fn cursors(&self) -> Vec<pb::Cursor> {
        self.convs
            .iter()
            .map(|(_, id, seq)| pb::Cursor {
                conversation_id: id.clone(),
                seq: *seq,
            })
            .collect()
    }
}

impl Conn {
    fn user(&self) -> Option<&str> {
        self.ident
            .as_deref()
            .map(|s| s.split_once('\0').map_or(s, |(u, _)| u))
    }

    fn device(&self) -> Option<&str> {
        self.ident
            .as_deref()
            .and_then(|s| s.split_once('\0'))
            .map(|(_, d)| d)
    }

    fn pending_out(&self) -> &[u8] {
        self.spill.as_ref().map_or(&[], |s| &s.pending_out)
    }

    fn spill_mut(&mut self) -> &mut Spill {
        // Deliberate allocation: only while a frame is partial or a write blocked.
        self.spill.get_or_insert_with(Box::default)
    }

    fn take_partial(&mut self) -> Vec<u8> {
        let partial = self
            .spill
            .as_mut()
            .map(|s| std::mem::take(&mut s.partial))
            .unwrap_or_default();
        self.tidy();
        partial
    }

    fn set_partial(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            self.tidy();
        } else {
            self.spill_mut().partial = bytes;
        }
    }

    /// Frees the spill buffers once both are empty and no resume is kept.
    fn tidy(&mut self) {
        if self
            .spill
            .as_ref()
            .is_some_and(|s| s.partial.is_empty() && s.pending_out.is_empty() && s.resume.is_none())
        {
            self.spill = None;
        }
    }

    fn resume_mut(&mut self) -> Option<&mut Resume> {
        self.spill.as_mut().and_then(|s| s.resume.as_deref_mut())
    }

    /// Ends the resume fence once its time has come.
    fn expire_resume(&mut self, now_ms: u64) {
        let over = self
            .resume_mut()
            .is_some_and(|r| !r.in_flight && (now_ms >= r.fence_until_ms || r.convs.is_empty()));
        if over {
            if let Some(s) = self.spill.as_mut() {
                s.resume = None;
            }
            self.tidy();
        }
    }
}

struct Shard {
    id: usize,
    shards: usize,
    node_id: Arc<str>,
    /// A member of a cluster: devices' route changes go to the backend
    /// workers (false: single node, no routes).
    cluster: bool,
    cfg: SessionConfig,
    verifier: Arc<Verifier>,
    metrics: Arc<ShardMetrics>,
    epoch: Instant,
    connections_max: usize,
    ws_origins: Vec<String>,
    read_buf: RefCell<Vec<u8>>,
    write_buf: RefCell<Vec<u8>>,
    conns: RefCell<Slab<Conn>>,
    next_generation: Cell<u32>,
    /// user → slab keys of its devices on this shard: one 4-byte slot per
    /// device, hashed by user id. The ids themselves are read from the
    /// connections (`Conn::user`), so the index allocates nothing per user
    /// (a map keyed by a boxed id cost ~90 B per connection).
    users: RefCell<HashTable<u32>>,
    /// Hashes user ids for `users` (seeded per process).
    user_hasher: hashbrown::DefaultHashBuilder,
    wheel: RefCell<Wheel<(u32, u32)>>,
    to_shards: RefCell<Vec<Option<Sender<ShardMsg>>>>,
    to_backend: RefCell<Vec<Sender<BackendRequest>>>,
    draining: Cell<bool>,
    /// The shard's epoll set of connection sockets.
    epoll: OwnedFd,
    /// Requests that found the backend queue full, oldest first; their
    /// connections are paused until these are taken.
    blocked: RefCell<std::collections::VecDeque<(u32, u32, BackendRequest)>>,
    /// The task retrying `blocked` runs.
    unblocking: Cell<bool>,
    /// Connections given frames by the current inbox batch, written once
    /// each when the batch ends (so a device that gets many pushes in one
    /// batch costs one `send`, not one per push).
    touched: RefCell<Vec<(u32, u32)>>,
    /// Connections with whole frames left over after their budget, served
    /// first next turn (at most one budget per connection per turn).
    backlog: RefCell<Vec<(u32, u32)>>,
    /// Wakes the poll loop while it waits for readiness, when another task
    /// adds to `backlog`.
    poll_waker: Cell<Option<std::task::Waker>>,
    /// Rate limit of the failed-login log lines.
    auth_log: RefCell<LogLimiter>,
    /// Inbound rings: from every other shard and every backend worker.
    inbox: RefCell<Vec<Receiver<ShardMsg>>>,
}

/// Failed-login log lines per second per shard; beyond, lines are counted
/// and one line says how many were not logged.
const AUTH_LOG_LINES_PER_SECOND_MAX: u32 = 10;

/// Admits at most `lines_max` log lines per `window_ms`, counting the rest.
#[derive(Debug)]
struct LogLimiter {
    window_ms: u64,
    lines_max: u32,
    window_start_ms: u64,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new(window_ms: u64, lines_max: u32) -> Self {
        Self {
            window_ms,
            lines_max,
            window_start_ms: 0,
            lines: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this line, after saying that `n` were suppressed
    /// since the last logged one (if `n > 0`); `None`: suppressed.
    fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            self.window_start_ms = now_ms;
            self.lines = 0;
        }
        if self.lines >= self.lines_max {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines suppressed in a window that has ended, taken (for a timer to
    /// report them when no further line comes).
    fn take_expired(&mut self, now_ms: u64) -> u64 {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            std::mem::take(&mut self.suppressed)
        } else {
            0
        }
    }
}

/// Slab keys of one user's devices (inline for up to four).
type SmallKeys = smallvec::SmallVec<[u32; 4]>;

/// Presence updates that may wait for room in a full backend queue (in
/// `Shard::blocked`, with the paused connections' requests); beyond, an
/// update is dropped and counted (`tern_presence_dropped_total`).
const PRESENCE_PENDING_MAX: usize = 65_536;

/// Wheel granularity: deadlines fire within this of their time.
const WHEEL_TICK_MS: u64 = 50;
/// Wheel buckets (one turn = 4096 × 50 ms ≈ 205 s).
const WHEEL_SLOTS: usize = 4096;
/// Items taken from the inbox before yielding to connections.
const INBOX_BATCH_MAX: usize = 1024;
/// Ready sockets handled per epoll_wait.
const EPOLL_BATCH_MAX: usize = 256;
/// Frames (requests, pings, WebSocket control frames) fed to one
/// connection's session per loop turn; whole frames beyond wait in its
/// partial buffer for the next turn (DESIGN invariant 7). One read is at
/// most the shared read buffer, so the input kept is bounded too.
const CONN_FRAMES_PER_TURN_MAX: usize = 64;
/// How long a busy loop may go on yielding only to ready tasks before it
/// also lets the runtime park once (which fires due timers).
const TIMER_YIELD_MS: u64 = 10;

/// Slab entries to reserve up front: as many connections as this shard may
/// hold, and no more than the process may open. Reserving address space
/// costs nothing until entries are written (pages become resident as the
/// slab fills, from the lowest keys up); growing by doubling instead copied
/// the whole slab at each step and left the old copies resident in the
/// allocator — ~4 MiB at 19,000 connections, 200 bytes a connection.
fn slab_reserve(connections_max: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        0
    };
    connections_max.min(fds)
}

/// Runs shard `setup.id` on the current thread until it has drained.
pub fn run(setup: ShardSetup, driver: crate::config::Driver) -> io::Result<()> {
    use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
    let use_uring = match driver {
        crate::config::Driver::Uring => true,
        crate::config::Driver::Epoll => false,
        crate::config::Driver::Auto => monoio::utils::detect_uring(),
    };
    if use_uring {
        let mut rt = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()?;
        rt.block_on(shard_main(setup, "io_uring"))
    } else {
        if driver == crate::config::Driver::Auto {
            info!("io_uring unavailable; shard uses epoll");
        }
        let mut rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?;
        rt.block_on(shard_main(setup, "epoll"))
    }
}

async fn shard_main(setup: ShardSetup, driver: &'static str) -> io::Result<()> {
    let now = setup.epoch.elapsed().as_millis() as u64;
    let shard = Rc::new(Shard {
        id: setup.id,
        shards: setup.shards,
        node_id: setup.node_id,
        cluster: setup.cluster,
        cfg: setup.session,
        verifier: setup.verifier,
        metrics: setup.metrics,
        epoch: setup.epoch,
        connections_max: setup.connections_max,
        ws_origins: setup.ws_origins,
        read_buf: RefCell::new(vec![0; setup.read_buffer_bytes]),
        write_buf: RefCell::new(Vec::with_capacity(setup.read_buffer_bytes)),
        conns: RefCell::new(Slab::with_capacity(slab_reserve(setup.connections_max))),
        next_generation: Cell::new(1),
        users: RefCell::new(HashTable::new()),
        user_hasher: hashbrown::DefaultHashBuilder::default(),
        wheel: RefCell::new(Wheel::new(now, WHEEL_TICK_MS, WHEEL_SLOTS)),
        to_shards: RefCell::new(setup.to_shards),
        to_backend: RefCell::new(setup.to_backend),
        draining: Cell::new(false),
        epoll: new_epoll()?,
        blocked: RefCell::new(std::collections::VecDeque::new()),
        unblocking: Cell::new(false),
        touched: RefCell::new(Vec::new()),
        backlog: RefCell::new(Vec::new()),
        poll_waker: Cell::new(None),
        auth_log: RefCell::new(LogLimiter::new(1_000, AUTH_LOG_LINES_PER_SECOND_MAX)),
        inbox: RefCell::new(setup.inbox),
    });
    debug!(shard = shard.id, driver, "shard started");
    // A descriptor of each listening socket kept here for the drain's
    // `shutdown`: the socket is shared by all shards, so another shard's
    // shutdown can end this shard's accept task (closing its descriptor)
    // first, and a raw fd number could by then name someone else's socket.
    let mut listener_fds: Vec<OwnedFd> = Vec::new();
    for (l, transport) in [
        (setup.tcp_listener, Transport::Tcp),
        (setup.ws_listener, Transport::WebSocketUpgrade),
    ] {
        if let Some(l) = l {
            listener_fds.push(l.try_clone()?.into());
            let l = TcpListener::from_std(l)?;
            monoio::spawn(accept_loop(shard.clone(), l, transport, setup.accept_rate));
        }
    }
    monoio::spawn(tick_loop(shard.clone()));
    monoio::spawn(poll_loop(shard.clone()));
    monoio::spawn(inbox_loop(shard.clone(), setup.bell));
    // Run until told to drain (the inbox loop sets `draining`).
    while !shard.draining.get() {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    // Drain: listeners stop (shutdown wakes a pending accept with an error,
    // and the accept loop sees `draining`), connections are kicked at a
    // bounded rate.
    for fd in &listener_fds {
        // SAFETY: `fd` is an open descriptor this function owns; shutdown
        // does not close it.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
    drop(listener_fds);
    drain(&shard, setup.drain).await;
    Ok(())
}

impl Shard {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn server_time_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Re-arms the connection's wheel entry when its deadline moved earlier.
    fn arm(&self, key: u32, conn: &mut Conn) {
        let fence = conn
            .spill
            .as_ref()
            .and_then(|s| s.resume.as_ref())
            .filter(|r| !r.in_flight)
            .map(|r| r.fence_until_ms);
        let session = conn.session.poll_timeout(&self.cfg);
        let at = match (session, fence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = at {
            if at < conn.timer_at {
                conn.timer_at = at;
                self.wheel.borrow_mut().insert((key, conn.generation), at);
            }
        }
    }

    /// Writes what the session has to send. Returns false if the socket is
    /// broken (the reader will see it and close).
    fn flush(self: &Rc<Self>, key: u32, conn: &mut Conn) {
        if !conn.pending_out().is_empty() {
            return; // waiting for write readiness; order of bytes is kept
        }
        if conn.transport == Transport::WebSocketUpgrade {
            // No WebSocket yet: the session's frames (its auth-timeout error,
            // or a shutdown kick) would be garbage to an HTTP client; it gets
            // an HTTP response instead, and is closed after it.
            let mut any = false;
            while conn.session.poll_transmit().is_some() {
                any = true;
            }
            if any {
                let timed_out =
                    conn.session.close_reason() == Some(session::CloseReason::AuthTimeout);
                self.send_ordered(key, conn, &ws::upgrade_abandoned_response(timed_out));
            }
            return;
        }
        let fd = conn.fd.as_raw_fd();
        let mut buf = self.write_buf.borrow_mut();
        loop {
            buf.clear();
            let mut frames = 0u64;
            while buf.len() < 64 * 1024 {
                let Some(body) = conn.session.poll_transmit() else {
                    break;
                };
                match conn.transport {
                    Transport::Tcp => codec::encode_prefix(body.len(), &mut buf),
                    Transport::WebSocket | Transport::WebSocketUpgrade => {
                        ws::encode_binary_header(body.len(), &mut buf)
                    }
                }
                buf.extend_from_slice(&body);
                frames += 1;
            }
            if buf.is_empty() {
                return;
            }
            self.metrics
                .frames_out
                .fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
            let sent = send_nonblocking(fd, &buf);
            match sent {
                Ok(n) if n == buf.len() => {
                    self.metrics
                        .bytes_out
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(n) => {
                    self.metrics
                        .bytes_out
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    // A deliberate allocation: only a connection whose socket
                    // buffer is full keeps its unsent bytes.
                    conn.spill_mut().pending_out = buf[n..].to_vec();
                    self.interest(key, conn);
                    return;
                }
                Err(_) => {
                    self.close_soon(conn, CloseReason::Error);
                    return;
                }
            }
        }
    }

    /// Writes raw bytes (a WebSocket control frame, the upgrade response, an
    /// HTTP error) in order with everything else the connection writes:
    /// after the session's queued frames and behind bytes already pending.
    fn write_raw(self: &Rc<Self>, key: u32, conn: &mut Conn, bytes: &[u8]) {
        self.flush(key, conn);
        self.send_ordered(key, conn, bytes);
    }

    /// The one ordered output path: bytes go to the socket only when nothing
    /// is pending; a short write keeps the rest pending (written on write
    /// readiness, before anything later). Pending bytes beyond
    /// `outbox_bytes_max` make the connection a slow consumer.
    fn send_ordered(&self, key: u32, conn: &mut Conn, bytes: &[u8]) {
        if !conn.pending_out().is_empty() {
            if conn.pending_out().len().saturating_add(bytes.len()) > self.cfg.outbox_bytes_max {
                self.close_soon(conn, CloseReason::SlowConsumer);
                return;
            }
            conn.spill_mut().pending_out.extend_from_slice(bytes);
            return;
        }
        match send_nonblocking(conn.fd.as_raw_fd(), bytes) {
            Ok(n) => {
                self.metrics
                    .bytes_out
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if n < bytes.len() {
                    // A deliberate allocation: only while the socket is full.
                    conn.spill_mut().pending_out = bytes[n..].to_vec();
                    self.interest(key, conn);
                }
            }
            Err(_) => self.close_soon(conn, CloseReason::Error),
        }
    }

    /// Closes a connection once what it has to write is written: at once if
    /// nothing is pending, else it stops being read and is closed when its
    /// pending bytes drain (or at its session's next deadline).
    fn close_after_output(&self, key: u32, conn: &mut Conn, reason: CloseReason) -> Ingest {
        if conn.pending_out().is_empty() {
            return Ingest::Close(reason);
        }
        conn.closing.get_or_insert(reason);
        conn.paused = true;
        self.interest(key, conn);
        Ingest::Continue
    }

    /// Before a frame of `len` bytes is queued: if it would not fit the
    /// outbox, the outbox is written to the socket first. Only a connection
    /// whose socket does not take the bytes (output already pending) keeps a
    /// full outbox, and the frame then makes it a slow consumer. Frames
    /// queued by one inbox batch are otherwise written when the batch ends.
    fn make_room(self: &Rc<Self>, key: u32, conn: &mut Conn, len: usize) {
        let full = conn.session.outbox_frames() >= self.cfg.outbox_frames_max
            || conn.session.outbox_bytes().saturating_add(len) > self.cfg.outbox_bytes_max;
        if full {
            self.flush(key, conn);
        }
    }

    /// Marks a connection closing and wakes its reader (EOF after shutdown).
    fn close_soon(&self, conn: &mut Conn, reason: CloseReason) {
        if conn.closing.is_none() {
            conn.closing = Some(reason);
        }
        // SAFETY: shutdown on a descriptor this connection owns; errors
        // (already shut) are harmless.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Tells epoll what this connection waits for: input unless paused,
    /// write readiness while bytes are pending.
    fn interest(&self, key: u32, conn: &Conn) {
        let mut events = 0u32;
        if !conn.paused {
            events |= libc::EPOLLIN as u32;
        }
        if !conn.pending_out().is_empty() {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: token(key, conn.generation),
        };
        // SAFETY: both descriptors are alive; `ev` is a valid event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                conn.fd.as_raw_fd(),
                &mut ev,
            )
        };
    }

    /// Adds a connection's socket to the epoll set.
    fn register(&self, key: u32, conn: &Conn) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token(key, conn.generation),
        };
        // SAFETY: both descriptors are alive; `ev` is a valid event.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                conn.fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

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
            ShardMsg::Drain => self.draining.set(true),
            ShardMsg::Devices { user, reply } => {
                let conns = self.conns.borrow();
                let devices = self
                    .devices_of(&conns, &user)
                    .iter()
                    .filter_map(|&k| conns.get(k as usize)?.device().map(str::to_owned))
                    .collect();
                let _ = reply.send(devices);
            }
            ShardMsg::Displace { user, device } => self.displace(&user, &device),
            ShardMsg::Recount => self.recount(),
        }
    }

    /// After this node's lease had lapsed: every live device's route is
    /// written back if it has none, and every user with a device that
    /// counts toward presence is said to be connected again (their friends
    /// may have been told OFFLINE by the node that took this one for dead).
    /// Through the workers' rings like any route change; bounded the same
    /// way (a full waiting line drops and counts).
    fn recount(self: &Rc<Self>) {
        let devices: Vec<(String, String, bool)> = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .filter_map(|(_, c)| Some((c.user()?.to_owned(), c.device()?.to_owned(), !c.quiet)))
            .collect();
        let mut counted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (user, device, counts) in &devices {
            self.route_change(user, device, RouteChange::Restore);
            if *counts && counted.insert(user) {
                self.presence(user, pb::PresenceState::Online);
            }
        }
    }

    /// The same device logged in on another node: its connection here is
    /// kicked as displaced, as by a second login here (see `welcome`), and
    /// its close writes no route change (the route is the other node's).
    /// If it was the user's last device here that counts toward presence,
    /// this node says so (the worker finds the user online on the other
    /// node, so friends see no OFFLINE).
    fn displace(self: &Rc<Self>, user: &str, device: &str) {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let (mut others_counted, mut displaced_counted) = (false, false);
        for other in self.devices_of(&conns, user) {
            let old = &mut conns[other as usize];
            if old.device() == Some(device) {
                displaced_counted |= !old.quiet;
                self.unindex_device(other, user);
                old.session
                    .kick(&self.cfg, now, pb::KickReason::Displaced, "");
                self.flush(other, old);
                self.close_soon(old, CloseReason::Displaced);
            } else {
                others_counted |= !old.quiet;
            }
        }
        drop(conns);
        if displaced_counted && !others_counted {
            self.presence(user, pb::PresenceState::Offline);
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
    fn kick_conn(self: &Rc<Self>, key: u32, c: &mut Conn, kick: &pb::Kick) {
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

    /// Asks the backend whether a device that just logged in belongs to a
    /// banned user: a `Kick` request (server-only: no client can send one)
    /// to the user's worker, queued before anything the device sends. The
    /// answer is nothing, or a `Kick` BANNED (`kick_conn`). The shard never
    /// reads the store itself. If the backend ring is full the check waits
    /// in `blocked`, in order, like a presence update; if that line is full
    /// too ([`PRESENCE_PENDING_MAX`]) it returns false: the login cannot be
    /// checked, and the caller refuses it.
    fn login_check(self: &Rc<Self>, key: u32, generation: u32, user: &str, device: &str) -> bool {
        let req = BackendRequest {
            from: ConnRef {
                shard: self.id as u16,
                key,
                generation,
            },
            caller: Caller {
                user: user.to_owned(),
                device: device.to_owned(),
                admin: false,
            },
            frame: Box::new(pb::Frame {
                request_id: 0,
                body: Some(Body::Kick(pb::Kick::default())),
            }),
            started: None,
            resume: false,
            route: None,
            reply: None,
        };
        let req = if self.blocked.borrow().is_empty() {
            match self.send_backend(req) {
                Ok(()) => return true,
                Err(full) => full,
            }
        } else {
            req
        };
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= PRESENCE_PENDING_MAX {
            return false;
        }
        // `u32::MAX`: no connection is paused behind it.
        blocked.push_back((u32::MAX, 0, req));
        drop(blocked);
        if !self.unblocking.replace(true) {
            monoio::spawn(unblock_loop(self.clone()));
        }
        true
    }

    /// Logs a failed login at `info`: the peer's address, the error code and
    /// the device id it claimed (never the token), at most
    /// [`AUTH_LOG_LINES_PER_SECOND_MAX`] lines a second per shard.
    fn log_auth_failure(&self, c: &Conn, code: pb::ErrorCode, device: &str, now_ms: u64) {
        let Some(suppressed) = self.auth_log.borrow_mut().admit(now_ms) else {
            return;
        };
        if suppressed > 0 {
            info!(
                shard = self.id,
                suppressed, "failed logins not logged (rate limit)"
            );
        }
        // getpeername(2) on the socket: one syscall, only for a logged line.
        let peer = socket2::SockRef::from(&c.fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        info!(
            shard = self.id,
            peer = ?peer,
            code = code.as_str_name(),
            device = ?device,
            "login failed"
        );
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
    fn resume_request(
        &self,
        key: u32,
        generation: u32,
        user: &str,
        device: &str,
        cursors: Vec<pb::Cursor>,
    ) -> BackendRequest {
        BackendRequest {
            from: ConnRef {
                shard: self.id as u16,
                key,
                generation,
            },
            caller: Caller {
                user: user.to_owned(),
                device: device.to_owned(),
                admin: false,
            },
            frame: Box::new(pb::Frame {
                request_id: 0,
                body: Some(Body::Sync(pb::SyncRequest { cursors, limit: 0 })),
            }),
            started: None,
            resume: true,
            route: None,
            reply: None,
        }
    }

    /// Queues a resume sync; if the backend queue is full it waits in
    /// `blocked` (without pausing its connection). False if even that line
    /// is full ([`PRESENCE_PENDING_MAX`]): no resume is in flight then.
    fn queue_resume(self: &Rc<Self>, req: BackendRequest) -> bool {
        let Err(req) = self.send_backend_in_order(req) else {
            return true;
        };
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= PRESENCE_PENDING_MAX {
            return false;
        }
        // No connection is paused for it: the retry finds no slab entry at
        // `u32::MAX` to resume.
        blocked.push_back((u32::MAX, 0, req));
        drop(blocked);
        if !self.unblocking.replace(true) {
            monoio::spawn(unblock_loop(self.clone()));
        }
        true
    }

    /// Handles up to [`INBOX_BATCH_MAX`] inbox items, then writes every
    /// connection they gave frames to. Called by the inbox loop, and by the
    /// connection loop at the end of every turn, so a busy shard serves its
    /// inbox whatever its sockets keep sending. Returns the items handled.
    fn drain_inbox(self: &Rc<Self>) -> usize {
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

    /// Queues a connection whose input holds frames beyond its budget for
    /// the next turn, and wakes the poll loop if it waits for readiness.
    fn backlog_push(&self, key: u32, generation: u32) {
        self.backlog.borrow_mut().push((key, generation));
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Marks a connection that got frames from the inbox: written (and its
    /// deadline re-armed) once when the batch ends, see [`Self::write_touched`].
    fn touch(&self, key: u32, conn: &mut Conn) {
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

    /// Calls `f(user, key, conn)` for every connection of `users` that this
    /// shard holds.
    fn each_device(&self, users: &[String], mut f: impl FnMut(&str, u32, &mut Conn)) {
        let index = self.users.borrow();
        let mut conns = self.conns.borrow_mut();
        for user in users {
            for &key in index.iter_hash(self.user_hash(user)) {
                if let Some(c) = conns.get_mut(key as usize)
                    && c.user() == Some(user.as_str())
                {
                    f(user, key, c);
                }
            }
        }
    }

    fn user_hash(&self, user: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.user_hasher, user)
    }

    /// Adds `key` (a live, authenticated connection in `conns`) to the
    /// device index.
    fn index_device(&self, conns: &Slab<Conn>, key: u32, user: &str) {
        let rehash = |k: &u32| {
            // Every indexed key is a live connection with an identity: keys
            // leave the index before their slab entry goes.
            self.user_hash(conns.get(*k as usize).and_then(Conn::user).unwrap_or(""))
        };
        self.users
            .borrow_mut()
            .insert_unique(self.user_hash(user), key, rehash);
    }

    /// Removes `key` from the device index. True if it was there.
    fn unindex_device(&self, key: u32, user: &str) -> bool {
        match self
            .users
            .borrow_mut()
            .find_entry(self.user_hash(user), |k| *k == key)
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Slab keys of `user`'s indexed devices on this shard.
    fn devices_of(&self, conns: &Slab<Conn>, user: &str) -> SmallKeys {
        self.users
            .borrow()
            .iter_hash(self.user_hash(user))
            .copied()
            .filter(|k| conns.get(*k as usize).and_then(Conn::user) == Some(user))
            .collect()
    }

    /// A connection handed over by another shard after auth: register it
    /// here, welcome it, and start its reader.
    fn adopt(self: &Rc<Self>, h: Handoff) {
        let conn = Conn {
            generation: self.next_gen(),
            fd: h.fd,
            paused: false,
            touched: false,
            backlogged: false,
            session: h.session,
            ident: None,
            spill: None,
            transport: h.transport,
            timer_at: u64::MAX,
            closing: None,
            quiet: false,
        };
        let key = self.conns.borrow_mut().insert(conn) as u32;
        let generation = self.conns.borrow()[key as usize].generation;
        if let Err(e) = self.register(key, &self.conns.borrow()[key as usize]) {
            warn!(error = %e, "adopting a connection failed");
            self.conns.borrow_mut().remove(key as usize);
            return;
        }
        self.metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.welcome(key, h.user, h.device, h.resume, h.quiet);
        // Bytes that came with the handoff (frames pipelined after auth).
        let partial = self.conns.borrow_mut()[key as usize].take_partial();
        let partial = [partial, h.partial].concat();
        if !partial.is_empty() {
            let outcome = self.ingest(key, &partial);
            after_ingest(self, key, generation, outcome);
        }
    }

    fn next_gen(&self) -> u32 {
        let g = self.next_generation.get();
        self.next_generation.set(g.wrapping_add(1).max(1));
        g
    }

    /// Registers an authenticated connection on its owner shard (this one),
    /// displaces an older connection of the same device, queues Welcome.
    fn welcome(
        self: &Rc<Self>,
        key: u32,
        user: Box<str>,
        device: Box<str>,
        resume: Vec<pb::Cursor>,
        quiet: bool,
    ) {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        // Devices that count toward presence ([`PRESENCE_QUIET`] ones do not).
        let (mut others_counted, mut displaced_counted) = (false, false);
        for other in self.devices_of(&conns, &user) {
            let old = &mut conns[other as usize];
            if old.device() == Some(&*device) {
                // Displaced: out of the index now; its close follows.
                displaced_counted |= !old.quiet;
                self.unindex_device(other, &user);
                old.session
                    .kick(&self.cfg, now, pb::KickReason::Displaced, "");
                self.flush(other, old);
                self.close_soon(old, CloseReason::Displaced);
            } else {
                others_counted |= !old.quiet;
            }
        }
        conns[key as usize].ident = Some(format!("{user}\0{device}").into_boxed_str());
        // Before Welcome: the device's first sync queues behind it in the
        // same worker ring, so it runs once the route exists.
        self.route_change(&user, &device, RouteChange::Up);
        conns[key as usize].quiet = quiet;
        self.index_device(&conns, key, &user);
        if !quiet && !others_counted {
            self.presence(&user, pb::PresenceState::Online);
        } else if quiet && displaced_counted && !others_counted {
            // A quiet login took the place of the only counted device.
            self.presence(&user, pb::PresenceState::Offline);
        }
        let c = &mut conns[key as usize];
        let ok = AuthOk {
            user_id: &user,
            device_id: &device,
            node_id: &self.node_id,
            unix_ms: Self::server_time_ms(),
        };
        // The session is Authenticating: it emitted the Authenticate event.
        let _ = c.session.handle_auth_ok(&self.cfg, now, ok);
        self.flush(key, c);
        self.arm(key, c);
        if !self.login_check(key, c.generation, &user, &device) {
            // Overloaded past every queue: a login that cannot be checked
            // for a ban is refused; the client reconnects later.
            c.session.kick(&self.cfg, now, pb::KickReason::Shutdown, "");
            self.flush(key, c);
            self.close_soon(c, CloseReason::Refused);
            return;
        }
        if !resume.is_empty() {
            // Push what the device lacks after its resume cursors: a sync on
            // its behalf whose answer comes back as a tracked Deliver. Live
            // pushes in the listed conversations wait for it (`Resume`). If
            // the backend queue is full the request waits for room; if even
            // that line is full, there is no resume: live pushes flow as they
            // come and the device's own sync after Welcome covers the rest.
            let state = Resume::new(&resume);
            let req = self.resume_request(key, c.generation, &user, &device, resume);
            if self.queue_resume(req) {
                c.spill_mut().resume = Some(Box::new(state));
            }
        }
    }

    /// Tells the user's backend worker (cluster mode) that a device logged
    /// in here or left, in order with the user's requests: a full backend
    /// queue makes the change wait in `blocked`, like a presence update
    /// (past [`PRESENCE_PENDING_MAX`] waiting it is dropped and counted in
    /// `tern_presence_dropped_total`: a lost login leaves the device
    /// without pushes from other nodes until it reconnects, and it syncs
    /// then; a lost close leaves a route that other nodes' pushes find
    /// empty here).
    fn route_change(self: &Rc<Self>, user: &str, device: &str, change: RouteChange) {
        if !self.cluster {
            return;
        }
        self.send_waiting(BackendRequest {
            // Never answered.
            from: ConnRef {
                shard: self.id as u16,
                key: u32::MAX,
                generation: 0,
            },
            caller: Caller {
                user: user.to_owned(),
                device: device.to_owned(),
                admin: false,
            },
            frame: Box::default(),
            started: None,
            resume: false,
            route: Some(change),
            reply: None,
        });
    }

    /// Queues a request for the backend in order: behind the requests that
    /// already wait for room (a connection's request never overtakes a
    /// presence update or route change queued before it).
    fn send_backend_in_order(&self, req: BackendRequest) -> Result<(), BackendRequest> {
        if !self.blocked.borrow().is_empty() {
            return Err(req);
        }
        self.send_backend(req)
    }

    /// Queues a request for the backend worker of its user (one worker per
    /// user keeps each user's requests in order); a full queue hands it back.
    fn send_backend(&self, req: BackendRequest) -> Result<(), BackendRequest> {
        let mut to_backend = self.to_backend.borrow_mut();
        let worker = owner_shard(&req.caller.user, to_backend.len());
        to_backend[worker].send(req)
    }

    /// Tells the backend a user's first device connected (online) or last
    /// one left (offline). If the backend queue is full (a connect storm),
    /// the update waits in `blocked` behind earlier ones, in order, so a
    /// user is never left shown online after going offline; past
    /// [`PRESENCE_PENDING_MAX`] waiting updates it is dropped and counted.
    fn presence(self: &Rc<Self>, user: &str, state: pb::PresenceState) {
        let req = BackendRequest {
            // No connection waits for the answer.
            from: ConnRef {
                shard: self.id as u16,
                key: u32::MAX,
                generation: 0,
            },
            caller: Caller {
                user: user.to_owned(),
                device: String::new(),
                admin: false,
            },
            frame: Box::new(pb::Frame {
                request_id: 0,
                body: Some(Body::SetPresence(pb::SetPresenceRequest {
                    state: state as i32,
                    text: String::new(),
                })),
            }),
            started: None,
            resume: false,
            route: None,
            reply: None,
        };
        self.send_waiting(req);
    }

    /// Sends a request no connection waits for (presence, route change);
    /// if the backend queue is full it waits in `blocked`, in order; past
    /// [`PRESENCE_PENDING_MAX`] waiting it is dropped and counted.
    fn send_waiting(self: &Rc<Self>, req: BackendRequest) {
        let Err(req) = self.send_backend_in_order(req) else {
            return;
        };
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= PRESENCE_PENDING_MAX {
            self.metrics
                .presence_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        // No connection waits for it: the retry finds no slab entry at
        // `u32::MAX` to resume.
        blocked.push_back((u32::MAX, 0, req));
        drop(blocked);
        if !self.unblocking.replace(true) {
            monoio::spawn(unblock_loop(self.clone()));
        }
    }

    /// Feeds bytes to a connection's session. Returns what the reader
    /// should do next.
    fn ingest(self: &Rc<Self>, key: u32, data: &[u8]) -> Ingest {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let c = &mut conns[key as usize];
        let mut pos = 0;
        let max = self.cfg.frame_bytes_max;
        let mut frames = 0;
        while pos < data.len() {
            if frames == CONN_FRAMES_PER_TURN_MAX {
                // This turn's budget is spent: the rest waits for the next
                // turn, and the socket is not read meanwhile.
                c.backlogged = true;
                self.backlog_push(key, c.generation);
                break;
            }
            frames += 1;
            // `Ok(Some((frame or its decode error, bytes used)))`, `Ok(None)`:
            // need more input; `Err`: the framing itself is broken (close).
            let decoded: Result<Option<Whole>, codec::DecodeError> = match c.transport {
                Transport::Tcp => match codec::frame_len(&data[pos..], max) {
                    Ok(Some((prefix, body_len))) if data.len() - pos >= prefix + body_len => {
                        let body = &data[pos + prefix..pos + prefix + body_len];
                        Ok(Some((
                            codec::decode_client_body(body, max),
                            prefix + body_len,
                        )))
                    }
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                },
                Transport::WebSocket => match ws::decode_message(&data[pos..], max) {
                    Ok(ws::WsDecoded::Frame { body, consumed }) => {
                        Ok(Some((codec::decode_client_body(&body, max), consumed)))
                    }
                    Ok(ws::WsDecoded::Control {
                        consumed,
                        reply,
                        close,
                    }) => {
                        pos += consumed;
                        if let Some(r) = reply {
                            self.write_raw(key, c, &r);
                        }
                        if close {
                            return self.close_after_output(key, c, CloseReason::Peer);
                        }
                        continue;
                    }
                    Ok(ws::WsDecoded::NeedMore) => Ok(None),
                    Err(e) => {
                        // A WebSocket protocol error: close with a status
                        // (1009 too big, 1002 otherwise) and no Tern frame.
                        debug!(error = %e, "bad websocket frame");
                        let code = if matches!(e, ws::WsError::TooLarge(_)) {
                            1009
                        } else {
                            1002
                        };
                        self.write_raw(key, c, &ws::close_frame(code));
                        return self.close_after_output(key, c, CloseReason::BadInput);
                    }
                },
                Transport::WebSocketUpgrade => {
                    match ws::accept_upgrade(&data[pos..], &self.ws_origins) {
                        Ok(ws::Upgrade::Done { consumed, response }) => {
                            pos += consumed;
                            self.send_ordered(key, c, &response);
                            c.transport = Transport::WebSocket;
                            continue;
                        }
                        Ok(ws::Upgrade::NeedMore) => Ok(None),
                        Err(response) => {
                            self.send_ordered(key, c, &response);
                            return self.close_after_output(key, c, CloseReason::BadInput);
                        }
                    }
                }
            };
            let (frame, consumed) = match decoded {
                Ok(Some((Ok(frame), consumed))) => (frame, consumed),
                Ok(Some((Err(e), consumed))) => {
                    // A whole frame that does not decode: the session answers
                    // with a typed error; it closes only where the protocol
                    // says so (e.g. before auth).
                    debug!(error = %e, "bad frame");
                    c.session.handle_decode_error(&self.cfg, now, &e);
                    self.flush(key, c);
                    if c.session.is_closed() || !c.session.is_live() {
                        return Ingest::Close(CloseReason::BadInput);
                    }
                    pos += consumed;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    // Broken framing (oversized or overlong prefix): tell the
                    // peer why, then close it.
                    debug!(error = %e, "bad frame");
                    c.session.handle_decode_error(&self.cfg, now, &e);
                    self.flush(key, c);
                    return Ingest::Close(CloseReason::BadInput);
                }
            };
            pos += consumed;
            self.metrics
                .frames_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.session
                .handle_frame(&self.cfg, now, Self::server_time_ms(), frame);
            while let Some(ev) = c.session.poll_event() {
                match ev {
                    session::Event::Authenticate(auth) => {
                        let verdict = self.verifier.verify(&auth.token);
                        match verdict {
                            Ok(user) => {
                                let owner = owner_shard(&user, self.shards);
                                let rest = data[pos..].to_vec();
                                let auth = *auth;
                                let quiet = auth.capabilities.iter().any(|c| c == PRESENCE_QUIET);
                                return Ingest::Authenticated {
                                    owner,
                                    user: user.into(),
                                    device: auth.device_id.into(),
                                    rest,
                                    resume: auth.resume_cursors,
                                    quiet,
                                };
                            }
                            Err(e) => {
                                self.metrics
                                    .auth_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                self.log_auth_failure(c, e.code(), &auth.device_id, now);
                                let _ = c.session.handle_auth_err(
                                    &self.cfg,
                                    now,
                                    e.code(),
                                    &e.to_string(),
                                );
                            }
                        }
                    }
                    session::Event::Request(frame) => {
                        let (Some(user), Some(device)) = (c.user(), c.device()) else {
                            continue;
                        };
                        let is_send = matches!(frame.body, Some(Body::Send(_)));
                        let req = BackendRequest {
                            from: ConnRef {
                                shard: self.id as u16,
                                key,
                                generation: c.generation,
                            },
                            caller: Caller {
                                user: user.to_string(),
                                device: device.to_string(),
                                admin: false,
                            },
                            frame,
                            started: is_send.then(Instant::now),
                            resume: false,
                            route: None,
                            reply: None,
                        };
                        if let Err(req) = self.send_backend_in_order(req) {
                            // Back-pressure: keep this request and the rest
                            // of the input; stop reading until there is room.
                            self.metrics
                                .backend_backpressure
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.flush(key, c);
                            return Ingest::Blocked {
                                request: Box::new(req),
                                rest: data[pos..].to_vec(),
                            };
                        }
                    }
                }
            }
            // Replies are written once, after the loop (at most a budget of
            // frames, below the outbox bound): one `send` per turn, not one
            // per frame. A closing session takes nothing more.
            if c.session.close_reason().is_some() {
                break;
            }
        }
        self.flush(key, c);
        self.arm(key, c);
        if c.session.is_closed() || c.closing.is_some() {
            return Ingest::Close(c.closing.unwrap_or_else(|| close_reason(&c.session)));
        }
        // Keep only the partial frame, in a buffer sized to it.
        let rest = &data[pos..];
        if !rest.is_empty() {
            c.spill_mut().partial.extend_from_slice(rest);
        }
        Ingest::Continue
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

/// The metrics label for why a session closed.
fn close_reason(session: &Session) -> CloseReason {
    use session::CloseReason as S;
    match session.close_reason() {
        Some(
            S::AuthRequired | S::AuthTimeout | S::AuthRejected | S::BadAuth | S::UnsupportedVersion,
        ) => CloseReason::Auth,
        Some(S::BadFrame | S::FrameTooLarge) => CloseReason::BadInput,
        Some(S::HeartbeatTimeout) => CloseReason::HeartbeatTimeout,
        Some(S::SlowConsumer | S::Kicked(pb::KickReason::SlowConsumer)) => {
            CloseReason::SlowConsumer
        }
        Some(S::Kicked(pb::KickReason::Displaced)) => CloseReason::Displaced,
        Some(S::Kicked(_)) => CloseReason::Shutdown,
        Some(S::PeerClosed) | None => CloseReason::Peer,
    }
}

/// A whole frame from the input (decoded, or why not) and the bytes it took.
type Whole = (Result<pb::Frame, codec::DecodeError>, usize);

enum Ingest {
    Continue,
    Close(CloseReason),
    Authenticated {
        owner: usize,
        user: Box<str>,
        device: Box<str>,
        rest: Vec<u8>,
        resume: Vec<pb::Cursor>,
        quiet: bool,
    },
    Blocked {
        request: Box<BackendRequest>,
        rest: Vec<u8>,
    },
}

fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: `buf[off..]` is a live, initialized slice; MSG_NOSIGNAL
        // turns a closed peer into EPIPE instead of a signal.
        let n = unsafe {
            libc::send(
                fd,
                buf[off..].as_ptr().cast(),
                buf.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            off += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(off),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
    Ok(off)
}

fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a live, writable slice of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Accepts connections at a bounded rate and starts their readers.
async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, transport: Transport, rate: u32) {
    // Token bucket: `rate` per second, refilled every 10 ms.
    let per_tick = (rate / 100).max(1);
    let mut tokens = per_tick;
    let mut refill_at = Instant::now() + Duration::from_millis(10);
    loop {
        if shard.draining.get() {
            return;
        }
        if tokens == 0 {
            let now = Instant::now();
            if now < refill_at {
                monoio::time::sleep(refill_at - now).await;
            }
            refill_at = Instant::now() + Duration::from_millis(10);
            tokens = per_tick;
        }
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) if shard.draining.get() => return,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokens -= 1;
        shard
            .metrics
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shard
            .metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if shard.conns.borrow().len() >= shard.connections_max || shard.draining.get() {
            shard.metrics.closed(CloseReason::Refused);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // The socket leaves monoio (deregistered on the epoll driver) and
        // joins the shard's epoll set.
        // SAFETY: `into_raw_fd` hands over sole ownership of the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        if set_nonblocking(fd.as_raw_fd()).is_err() {
            shard.metrics.closed(CloseReason::Error);
            continue;
        }
        let now = shard.now_ms();
        let generation = shard.next_gen();
        let conn = Conn {
            generation,
            fd,
            paused: false,
            touched: false,
            backlogged: false,
            session: Session::new(&shard.cfg, now, u64::from(generation) ^ now),
            ident: None,
            spill: None,
            transport,
            timer_at: u64::MAX,
            closing: None,
            quiet: false,
        };
        let mut conns = shard.conns.borrow_mut();
        let key = conns.insert(conn) as u32;
        if shard.register(key, &conns[key as usize]).is_err() {
            conns.remove(key as usize);
            shard.metrics.closed(CloseReason::Error);
            continue;
        }
        shard.arm(key, &mut conns[key as usize]);
    }
}

/// What one read from the socket gave.
enum Read {
    /// EOF or a socket error: close for this reason.
    Eof(CloseReason),
    /// Nothing to read after all (a spurious wake-up).
    WouldBlock,
    /// Bytes were fed to the session.
    Ingested(Ingest),
}

/// Reads once into the shard's shared buffer and feeds the session; only an
/// incomplete frame is copied out (into `partial`, allocated on demand).
fn read_and_ingest(shard: &Rc<Shard>, key: u32, fd: RawFd) -> Read {
    let mut buf = shard.read_buf.borrow_mut();
    let n = match recv_nonblocking(fd, &mut buf) {
        Ok(Some(0)) => {
            let closing = shard.conns.borrow()[key as usize].closing;
            return Read::Eof(closing.unwrap_or(CloseReason::Peer));
        }
        Ok(Some(n)) => n,
        Ok(None) => return Read::WouldBlock,
        Err(_) => return Read::Eof(CloseReason::Error),
    };
    shard
        .metrics
        .bytes_in
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    let mut conns = shard.conns.borrow_mut();
    let c = &mut conns[key as usize];
    let mut partial = c.take_partial();
    if partial.is_empty() {
        drop(conns);
        return Read::Ingested(shard.ingest(key, &buf[..n]));
    }
    // Complete the partial frame: append and feed the whole.
    partial.extend_from_slice(&buf[..n]);
    drop(conns);
    Read::Ingested(shard.ingest(key, &partial))
}

/// Acts on what feeding a connection gave: close it, pause it behind a
/// full backend queue, or move it to its owner shard after auth. Loops while
/// an outcome leaves more input to feed (pipelined frames after auth).
fn after_ingest(shard: &Rc<Shard>, key: u32, generation: u32, mut outcome: Ingest) {
    loop {
        match outcome {
            Ingest::Continue => return,
            Ingest::Close(reason) => return finish(shard, key, generation, reason),
            Ingest::Blocked { request, rest } => {
                // Back-pressure: keep the request and the input after it,
                // stop reading this connection until the queue has room.
                let mut conns = shard.conns.borrow_mut();
                let Some(c) = conns
                    .get_mut(key as usize)
                    .filter(|c| c.generation == generation)
                else {
                    return;
                };
                let rest = [rest, c.take_partial()].concat();
                c.set_partial(rest);
                c.paused = true;
                shard.interest(key, c);
                shard
                    .blocked
                    .borrow_mut()
                    .push_back((key, generation, *request));
                if !shard.unblocking.replace(true) {
                    monoio::spawn(unblock_loop(shard.clone()));
                }
                return;
            }
            Ingest::Authenticated {
                owner,
                user,
                device,
                rest,
                resume,
                quiet,
            } => {
                if owner == shard.id {
                    shard.conns.borrow_mut()[key as usize].set_partial(rest);
                    shard.welcome(key, user, device, resume, quiet);
                    let partial = shard.conns.borrow_mut()[key as usize].take_partial();
                    if partial.is_empty() {
                        return;
                    }
                    outcome = shard.ingest(key, &partial);
                    continue;
                }
                // Move to the owner shard: the fd travels over the ring.
                let conn = shard.conns.borrow_mut().remove(key as usize);
                shard
                    .metrics
                    .connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let Conn {
                    fd,
                    session,
                    transport,
                    ..
                } = conn;
                // SAFETY: both descriptors are alive; DEL ignores the event.
                unsafe {
                    libc::epoll_ctl(
                        shard.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
                let handoff = Box::new(Handoff {
                    fd,
                    session,
                    partial: rest,
                    user,
                    device,
                    transport,
                    resume,
                    quiet,
                });
                let mut to = shard.to_shards.borrow_mut();
                let tx = to[owner].as_mut().expect("a ring to every other shard");
                if tx.send(ShardMsg::Handoff(handoff)).is_err() {
                    // The owner's ring is full: the login is refused (the
                    // handoff, with its socket, is dropped: closed); the
                    // client retries.
                    shard.metrics.closed[CloseReason::Refused as usize]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

/// Retries requests that found the backend queue full, oldest first, and
/// resumes their connections; ends when none are left.
async fn unblock_loop(shard: Rc<Shard>) {
    loop {
        // Only a shard with paused connections runs this timer.
        monoio::time::sleep(Duration::from_millis(1)).await;
        loop {
            let Some((key, generation, req)) = shard.blocked.borrow_mut().pop_front() else {
                shard.unblocking.set(false);
                return;
            };
            let sent = shard.send_backend(req);
            if let Err(req) = sent {
                shard
                    .blocked
                    .borrow_mut()
                    .push_front((key, generation, req));
                break; // still full: wait another tick
            }
            // Resume: feed what was left, then read again.
            let partial = {
                let mut conns = shard.conns.borrow_mut();
                let Some(c) = conns
                    .get_mut(key as usize)
                    .filter(|c| c.generation == generation)
                else {
                    continue;
                };
                c.paused = false;
                shard.interest(key, c);
                c.take_partial()
            };
            if !partial.is_empty() {
                let outcome = shard.ingest(key, &partial);
                after_ingest(&shard, key, generation, outcome);
            }
        }
    }
}

/// Serves the shard's connections, one turn at a time. A turn: the
/// connections left over from the last turn (`backlog`) get their next
/// budget, then up to [`EPOLL_BATCH_MAX`] ready sockets are served (one read
/// of the shared buffer and at most [`CONN_FRAMES_PER_TURN_MAX`] frames
/// each), then the loop yields so that the inbox (replies, pushes) and the
/// timers run, whatever one socket keeps sending (DESIGN invariant 7). With
/// nothing ready it waits (through monoio) for the epoll set to be readable
/// or for the backlog to fill.
async fn poll_loop(shard: Rc<Shard>) {
    let epfd = shard.epoll.as_raw_fd();
    // SAFETY: the epoll fd lives as long as the shard; the wrapper never
    // closes it (ManuallyDrop) and is only used to wait for readability.
    let waiter = std::mem::ManuallyDrop::new(
        TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(epfd) })
            .expect("register epoll fd"),
    );
    let legacy = monoio::utils::is_legacy();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH_MAX];
    let mut due = Vec::new();
    let mut turn = Turn::new();
    loop {
        // Taken before the sockets are served: a connection that spends its
        // budget in this turn waits for the next one.
        std::mem::swap(&mut due, &mut *shard.backlog.borrow_mut());
        // SAFETY: `events` has room for EPOLL_BATCH_MAX entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EPOLL_BATCH_MAX as i32, 0) };
        if n <= 0 && due.is_empty() {
            // Idle: wait for a socket, or for another task to fill the
            // backlog (a connection resumed after back-pressure).
            let readable = waiter.readable(!legacy);
            let mut readable = std::pin::pin!(readable);
            let woke = std::future::poll_fn(|cx| {
                if !shard.backlog.borrow().is_empty() {
                    return std::task::Poll::Ready(Ok(()));
                }
                shard.poll_waker.set(Some(cx.waker().clone()));
                readable.as_mut().poll(cx)
            })
            .await;
            shard.poll_waker.set(None);
            if woke.is_err() {
                return;
            }
            turn.parked();
            continue;
        }
        serve_backlog(&shard, &mut due);
        for ev in &events[..n.max(0) as usize] {
            let (key, generation) = ((ev.u64 >> 32) as u32, ev.u64 as u32);
            let flags = ev.events;
            if flags & libc::EPOLLOUT as u32 != 0 {
                on_writable(&shard, key, generation);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                on_readable(&shard, key, generation);
            }
        }
        // The inbox every turn: replies and pushes never wait for a quiet
        // socket (nor for the runtime to wake the inbox loop).
        shard.drain_inbox();
        turn.end().await;
    }
}

/// Feeds each backlogged connection its next budget of buffered frames.
fn serve_backlog(shard: &Rc<Shard>, due: &mut Vec<(u32, u32)>) {
    for (key, generation) in due.drain(..) {
        let partial = {
            let mut conns = shard.conns.borrow_mut();
            let Some(c) = conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation && c.backlogged)
            else {
                continue; // closed or moved meanwhile
            };
            c.backlogged = false;
            c.take_partial()
        };
        if partial.is_empty() {
            continue;
        }
        let outcome = shard.ingest(key, &partial);
        after_ingest(shard, key, generation, outcome);
    }
}

/// Yields at the end of a loop turn. Every turn lets the tasks that are
/// ready run (the runtime reaps I/O completions first, so the inbox's
/// doorbell is seen); at least every [`TIMER_YIELD_MS`] the turn instead
/// sleeps for zero time, which makes the runtime park once and fire due
/// timers (monoio runs timers only when it parks, and a task that always
/// wakes itself would keep it from parking).
struct Turn {
    parked_at: Instant,
}

impl Turn {
    fn new() -> Self {
        Self {
            parked_at: Instant::now(),
        }
    }

    /// The loop waited (the runtime parked meanwhile).
    fn parked(&mut self) {
        self.parked_at = Instant::now();
    }

    async fn end(&mut self) {
        if self.parked_at.elapsed() >= Duration::from_millis(TIMER_YIELD_MS) {
            monoio::time::sleep(Duration::ZERO).await;
            self.parked_at = Instant::now();
        } else {
            yield_now().await;
        }
    }
}

/// Returns `Pending` once, after waking its task: the task goes to the back
/// of the runtime's queue, behind every task that is ready.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

fn on_readable(shard: &Rc<Shard>, key: u32, generation: u32) {
    let fd = {
        let conns = shard.conns.borrow();
        match conns.get(key as usize) {
            // A backlogged connection is fed from its buffered input first;
            // its socket is read once that is used up.
            Some(c) if c.generation == generation && !c.backlogged => c.fd.as_raw_fd(),
            _ => return,
        }
    };
    match read_and_ingest(shard, key, fd) {
        Read::Eof(reason) => finish(shard, key, generation, reason),
        Read::WouldBlock => {}
        Read::Ingested(outcome) => after_ingest(shard, key, generation, outcome),
    }
}

fn on_writable(shard: &Rc<Shard>, key: u32, generation: u32) {
    let mut conns = shard.conns.borrow_mut();
    let Some(c) = conns
        .get_mut(key as usize)
        .filter(|c| c.generation == generation)
    else {
        return;
    };
    match send_nonblocking(c.fd.as_raw_fd(), c.pending_out()) {
        Ok(n) if n == c.pending_out().len() => {
            c.spill_mut().pending_out = Vec::new(); // give the memory back
            c.tidy();
            shard.interest(key, c);
            shard.flush(key, c);
            if c.paused && c.pending_out().is_empty() {
                if let Some(reason) = c.closing {
                    // Its last bytes are written (`close_after_output`).
                    shard.close_soon(c, reason);
                }
            }
        }
        Ok(n) => {
            c.spill_mut().pending_out.drain(..n);
        }
        Err(_) => shard.close_soon(c, CloseReason::Error),
    }
}

fn token(key: u32, generation: u32) -> u64 {
    (u64::from(key) << 32) | u64::from(generation)
}

fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: no memory preconditions; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a closed connection: unregisters it, counts it, closes the fd.
fn finish(shard: &Rc<Shard>, key: u32, generation: u32, reason: CloseReason) {
    let mut conns = shard.conns.borrow_mut();
    let Some(c) = conns.get(key as usize) else {
        return;
    };
    if c.generation != generation {
        return; // moved away (handoff) or already finished
    }
    let c = conns.remove(key as usize);
    if let Some(user) = c.user() {
        // A displaced connection left the index when it was displaced: the
        // user is still online on the device that displaced it.
        let last_counted = || {
            let left = shard.devices_of(&conns, user);
            left.iter().all(|k| conns[*k as usize].quiet)
        };
        let indexed = shard.unindex_device(key, user);
        if indexed && !c.quiet && last_counted() {
            shard.presence(user, pb::PresenceState::Offline);
        }
        if indexed {
            // A displaced connection's route is its successor's.
            shard.route_change(user, c.device().unwrap_or(""), RouteChange::Down);
        }
    }
    drop(conns);
    let reason = c.closing.unwrap_or(reason);
    if reason == CloseReason::SlowConsumer {
        shard
            .metrics
            .slow_consumer_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if reason == CloseReason::HeartbeatTimeout {
        shard
            .metrics
            .heartbeat_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    shard.metrics.closed(reason);
}

/// Drives the wheel: fires due deadlines every tick.
async fn tick_loop(shard: Rc<Shard>) {
    let mut due = Vec::new();
    loop {
        monoio::time::sleep(Duration::from_millis(WHEEL_TICK_MS)).await;
        let now = shard.now_ms();
        let suppressed = shard.auth_log.borrow_mut().take_expired(now);
        if suppressed > 0 {
            info!(
                shard = shard.id,
                suppressed, "failed logins not logged (rate limit)"
            );
        }
        shard.wheel.borrow_mut().expire(now, |t| due.push(t.key));
        let mut conns = shard.conns.borrow_mut();
        for (key, generation) in due.drain(..) {
            let Some(c) = conns.get_mut(key as usize) else {
                continue;
            };
            if c.generation != generation {
                continue;
            }
            c.timer_at = u64::MAX;
            c.session.handle_timeout(&shard.cfg, now);
            c.expire_resume(now);
            shard.flush(key, c);
            let stats = c.session.take_stats();
            if stats.dropped_after_retries > 0 {
                shard.metrics.deliveries_dropped.fetch_add(
                    u64::from(stats.dropped_after_retries),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            if c.session.is_closed() {
                let reason = close_reason(&c.session);
                shard.close_soon(c, reason);
            } else {
                shard.arm(key, c);
            }
        }
    }
}

/// Drains the inbox rings until told to drain the shard.
async fn inbox_loop(shard: Rc<Shard>, bell: Arc<Doorbell>) {
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

/// How a shard drains: its share of the node's kick rate and the window
/// each kick's `retry_after_ms` is drawn from (`[shutdown]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// `Kick{SHUTDOWN}` frames per second from this shard (≥ 1).
    pub kick_rate: u32,
    /// Lowest `retry_after_ms` a kick carries.
    pub retry_after_min_ms: u32,
    /// Highest `retry_after_ms` a kick carries (≥ the lowest).
    pub retry_after_max_ms: u32,
}

/// How often the drain wakes to kick (and re-checks for an empty shard).
const DRAIN_TICK_MS: u64 = 10;

/// Kicks every connection (at a bounded rate) and waits until they are gone
/// or the process deadline passes (the server stops the runtime then).
///
/// The rate is a token bucket: credit accrues at `kick_rate` per second and
/// holds at most one tick's worth (`b = max(1, kick_rate / 100)` kicks), so
/// in any window of `w` ms this shard sends at most `b + kick_rate * w / 1000`
/// kicks, however late a tick runs or whenever a handoff arrives. Each kick
/// carries its own `retry_after_ms`, uniform in the policy's window.
async fn drain(shard: &Rc<Shard>, policy: DrainPolicy) {
    let rate = u64::from(policy.kick_rate.max(1));
    // Credit in thousandths of a kick: `rate * elapsed_ms` adds exactly.
    let burst_milli = (rate * DRAIN_TICK_MS).max(1_000);
    let mut credit_milli = burst_milli;
    let mut last = shard.now_ms();
    // Seeded per shard and start: two nodes draining at once draw apart.
    let mut rng = JitterRng::new(Shard::server_time_ms() ^ ((shard.id as u64) << 48));
    let span = u64::from(
        policy
            .retry_after_max_ms
            .saturating_sub(policy.retry_after_min_ms),
    ) + 1;
    loop {
        if shard.conns.borrow().is_empty() {
            return;
        }
        let now = shard.now_ms();
        credit_milli = credit_milli
            .saturating_add(rate.saturating_mul(now.saturating_sub(last)))
            .min(burst_milli);
        last = now;
        let budget = (credit_milli / 1_000) as usize;
        let keys: Vec<u32> = shard
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .map(|(k, _)| k as u32)
            .take(budget)
            .collect();
        {
            let mut conns = shard.conns.borrow_mut();
            for key in keys {
                let c = &mut conns[key as usize];
                if c.closing.is_some() {
                    continue;
                }
                // `span` ≤ 2^32, so the draw fits the window's u32 range.
                let retry = policy.retry_after_min_ms + (rng.next() % span) as u32;
                c.session
                    .kick_after(&shard.cfg, now, pb::KickReason::Shutdown, "", retry);
                credit_milli -= 1_000;
                shard.flush(key, c);
                shard.close_soon(c, CloseReason::Shutdown);
            }
        }
        monoio::time::sleep(Duration::from_millis(DRAIN_TICK_MS)).await;
    }
}

/// splitmix64: a small, well-spread generator for the drain's jitter (no
/// need for a cryptographic one; the values only spread reconnects).
struct JitterRng(u64);

impl JitterRng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection slab entry stays small: it is most of what an
    /// idle connection costs besides its task and socket.
    #[test]
    fn connection_state_is_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 120,
            "{}",
            std::mem::size_of::<Conn>()
        );
        assert!(
            std::mem::size_of::<ShardMsg>() <= 80,
            "{}",
            std::mem::size_of::<ShardMsg>()
        );
    }

    fn deliver(conv: &str, seqs: &[u64]) -> (Arc<[(ConvKey, u64)]>, Bytes) {
        use prost::Message as _;
        let frame = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver {
                entries: seqs
                    .iter()
                    .map(|&seq| pb::Entry {
                        conversation_id: conv.into(),
                        seq,
                        ..Default::default()
                    })
                    .collect(),
            })),
        };
        let newest = seqs.iter().copied().max().unwrap_or(0);
        (
            Arc::new([(ConvKey::of(conv), newest)]),
            Bytes::from(frame.encode_to_vec()),
        )
    }

    fn seqs_of(body: &Bytes) -> Vec<u64> {
        use prost::Message as _;
        match pb::Frame::decode(&body[..]).unwrap().body {
            Some(Body::Deliver(d)) => d.entries.iter().map(|e| e.seq).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// The resume rule without sockets: pushes of unlisted conversations
    /// pass; listed ones are held while the resume is in flight, and past
    /// the bound all are dropped and a sync from the resume's newest cursor
    /// is asked for; after the answer, entries it carried are dropped (a
    /// frame partly carried is re-encoded without them), and the first push
    /// beyond the fence ends the fence for its conversation.
    #[test]
    fn resume_holds_then_fences_live_pushes() {
        let (a, b) = ("d:a:b", "d:a:c");
        let mut r = Resume::new(&[pb::Cursor {
            conversation_id: a.into(),
            seq: 5,
        }]);
        let (cur, body) = deliver(b, &[1]);
        assert!(matches!(r.gate(cur, body), Gate::Pass(..)));
        for seq in 6..6 + RESUME_HOLD_FRAMES_MAX as u64 {
            let (cur, body) = deliver(a, &[seq]);
            assert!(matches!(r.gate(cur, body), Gate::Taken));
        }
        assert_eq!(r.held.len(), RESUME_HOLD_FRAMES_MAX);
        assert!(!r.overflowed);
        let (cur, body) = deliver(a, &[70]);
        assert!(matches!(r.gate(cur, body), Gate::Taken));
        assert!(r.overflowed && r.held.is_empty());
        // The answer carried up to 80: the next sync starts there.
        r.answered(&[(ConvKey::of(a), 80)]);
        assert_eq!(r.cursors()[0].seq, 80);
        r.overflowed = false;
        r.in_flight = false;
        let (cur, body) = deliver(a, &[80]);
        assert!(matches!(r.gate(cur, body), Gate::Taken), "carried: dropped");
        let (cur, body) = deliver(a, &[79, 80, 81]);
        let Gate::Pass(cur, body) = r.gate(cur, body) else {
            panic!("81 is new")
        };
        assert_eq!(seqs_of(&body), [81]);
        assert_eq!(&cur[..], &[(ConvKey::of(a), 81)]);
        assert!(r.convs.is_empty(), "the fence ended for a");
    }

    /// The failed-login limiter admits 10 lines a second, counts the rest,
    /// and reports the count with the next admitted line or, when none
    /// comes, once the window has ended.
    #[test]
    fn log_limiter_admits_ten_a_second_and_counts_the_rest() {
        let mut l = LogLimiter::new(1_000, 10);
        for _ in 0..10 {
            assert_eq!(l.admit(5), Some(0));
        }
        assert_eq!(l.admit(6), None);
        assert_eq!(l.admit(999), None);
        assert_eq!(l.take_expired(999), 0, "the window is still open");
        assert_eq!(l.admit(1_000), Some(2), "the next window reports them");
        for _ in 0..9 {
            assert_eq!(l.admit(1_001), Some(0));
        }
        assert_eq!(l.admit(1_002), None);
        assert_eq!(l.take_expired(2_000), 1);
        assert_eq!(l.take_expired(2_001), 0);
    }

    /// Users spread over shards, and the function is stable (it decides
    /// where a user's devices live, so it must not change between releases).
    #[test]
    fn owner_shard_is_stable_and_spreads() {
        assert_eq!(owner_shard("alice", 4), owner_shard("alice", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(&format!("user{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner_shard("alice", 1), 0);
    }
}
