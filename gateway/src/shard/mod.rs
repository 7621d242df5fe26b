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
//!
//! Which file holds what (all one thread; `Shard` and `Conn` are here):
//! - `mod.rs`: `ShardSetup`, `Conn`, `Shard`, the shard's bounds, `run`
//!   (start-up and its tasks), the wheel's tick loop, `finish` (removing a
//!   closed connection);
//! - `accept.rs`: the rate-limited accept loop;
//! - `poll.rs`: the poll loop served in turns, the backlog, readable and
//!   writable sockets;
//! - `ingest.rs`: reading into the shared buffer, feeding sessions,
//!   `after_ingest`, the failed-login log limit;
//! - `inbox.rs`: `ShardMsg` handling in batches, pushes (`push_to`), kicks,
//!   and the resume gate (`Resume`);
//! - `handoff.rs`: adopting a connection after auth, `welcome`,
//!   displacement, the device index;
//! - `backend.rs`: requests to the backend workers (in order, `blocked`
//!   and its retry loop), presence, route changes, login check, recount;
//! - `drain.rs`: `DrainPolicy` and the rate-limited drain;
//! - `rooms.rs`: the room subscriptions of the shard's connections, room
//!   pushes, joins and leaves (docs/protocol.md, "Rooms");
//! - `sock.rs`: the ordered write path, the epoll set, non-blocking
//!   `send`/`recv`;
//! - `tls.rs`: a TLS connection's reads (decrypted from the shared read
//!   buffer) and its handshake deadline; writes are sealed in `sock.rs`
//!   (the record layer itself is [`crate::tls`]).
//!
//! What crosses threads to a shard (`ShardMsg`, `Handoff`, `ConnRef`,
//! `owner_shard`) lives in [`crate::msg`] and is re-exported here.

use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::{AsRawFd, OwnedFd},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use hashbrown::HashTable;
use monoio::net::TcpListener;
use slab::Slab;
use tern_protocol::{
    pb,
    session::{Session, SessionConfig},
};
use tracing::{debug, info};

pub use self::drain::DrainPolicy;
use self::{
    accept::accept_loop,
    drain::drain,
    inbox::{Resume, inbox_loop},
    ingest::{AUTH_LOG_LINES_PER_SECOND_MAX, LogLimiter, close_reason},
    limits::ShardLimits,
    poll::poll_loop,
    sock::new_epoll,
};
pub use crate::msg::{ConnRef, Handoff, PRESENCE_QUIET, ShardMsg, Transport, owner_shard};
use crate::{
    auth::Verifier,
    bridge::{BackendRequest, RouteChange},
    mailbox::{Doorbell, Receiver, Sender},
    metrics::{CloseReason, ShardMetrics},
    tls::TlsConn,
    wheel::Wheel,
};

mod accept;
mod backend;
mod devices;
mod drain;
mod handoff;
mod inbox;
mod ingest;
mod limits;
mod poll;
mod rooms;
mod sock;
mod tls;
mod uring;

pub use self::uring::{Unavailable as UringUnavailable, probe as probe_uring};

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
    /// The TCP-over-TLS listener.
    pub tls_listener: Option<std::net::TcpListener>,
    /// The WebSocket-over-TLS listener.
    pub wss_listener: Option<std::net::TcpListener>,
    /// The TLS configuration (set when a TLS listener is).
    pub tls: Option<Arc<crate::tls::TlsServer>>,
    /// How this shard drains (kick rate, `retry_after_ms` window).
    pub drain: DrainPolicy,
    /// Time origin shared by all shards.
    pub epoch: Instant,
    /// A member of a cluster (the Redis store): route changes go to the
    /// backend workers.
    pub cluster: bool,
    /// Rate limits (`[limits]`); each shard counts on its own.
    pub limits: crate::config::LimitsSettings,
    /// Where refusals are counted.
    pub limit_metrics: Arc<crate::limits::LimitMetrics>,
    /// The allow/deny lists of the client listeners (shared, swapped whole
    /// on SIGHUP).
    pub lists: Arc<crate::limits::EdgeLists>,
    /// Provided buffers of the io_uring data path (`[shards]`): how many
    /// (a power of two) and their size.
    pub uring_buffers: u16,
    /// The size of each provided buffer, in bytes.
    pub uring_buffer_bytes: u32,
    /// Login policies and remote logout (`[login]`).
    pub login: crate::config::LoginSettings,
    /// Room subscription bounds (`[rooms]`).
    pub rooms: crate::config::RoomsSettings,
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
    /// What it has in flight on the shard's ring (io_uring path; `uring.rs`).
    io: u8,
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
    /// A fragmented WebSocket message, while it is partial (`ws.rs`).
    ws_message: Option<Vec<u8>>,
    /// A TLS connection's record layer, for its whole life: a TLS
    /// connection always has a spill (64 B) besides its rustls state, so a
    /// plain one's slab entry stays as small as it was.
    tls: Option<Box<TlsConn>>,
}

impl Conn {
    fn user(&self) -> Option<&str> {
        self.ident
            .as_deref()
            .map(|s| s.split_once('\0').map_or(s, |(u, _)| u))
    }

    fn device(&self) -> Option<&str> {
        // `user\0device\0<login meta>` (`devices.rs`).
        self.ident.as_deref().and_then(|s| s.split('\0').nth(1))
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

    /// Frees the spill buffers once both are empty and no resume or
    /// partial WebSocket message is kept.
    fn tidy(&mut self) {
        if self.spill.as_ref().is_some_and(|s| {
            s.partial.is_empty()
                && s.pending_out.is_empty()
                && s.resume.is_none()
                && s.ws_message.is_none()
                && s.tls.is_none()
        }) {
            self.spill = None;
        }
    }

    /// The TLS record layer of a connection from a TLS listener.
    fn tls_mut(&mut self) -> Option<&mut TlsConn> {
        self.spill.as_mut().and_then(|s| s.tls.as_deref_mut())
    }

    /// A TLS connection still in its handshake: nothing can be written to
    /// it yet (the session's frames wait in its outbox).
    fn tls_handshaking(&self) -> bool {
        self.spill
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .is_some_and(|t| !t.is_live())
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
    /// The TLS configuration new TLS connections start with.
    tls: Option<Arc<crate::tls::TlsServer>>,
    /// Shared by the TLS connections: the plaintext of one read (allocated
    /// on the first TLS read, then kept).
    tls_plain: RefCell<Vec<u8>>,
    /// Shared by the TLS connections: records sealed for one write.
    tls_out: RefCell<Vec<u8>>,
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
    /// Rate limiters of this shard (`limits.rs`).
    limits: ShardLimits,
    /// Allow/deny lists, checked at accept.
    lists: Arc<crate::limits::EdgeLists>,
    /// The io_uring data path's ring (`None`: the epoll path).
    uring: Option<uring::Uring>,
    /// Login policies and remote logout (`[login]`; `devices.rs`).
    login: crate::config::LoginSettings,
    /// Devices logged out recently (bounded by `login.logged_out_max`).
    logged_out: RefCell<devices::LoggedOut>,
    /// Client versions named at login, each kept once (the identity
    /// strings name them by index).
    client_versions: RefCell<devices::ClientVersions>,
    /// Logins welcomed here: orders the logins of one millisecond.
    logins_seen: Cell<u64>,
    /// Room subscriptions of this shard's connections (`rooms.rs`): empty
    /// for connections in no room.
    rooms: RefCell<rooms::Rooms>,
}

/// Slab keys of one user's devices (inline for up to four).
type SmallKeys = smallvec::SmallVec<[u32; 4]>;

/// Presence updates that may wait for room in a full backend queue (in
/// `Shard::blocked`, with the paused connections' requests); beyond, an
/// update is dropped and counted (`tern_presence_dropped_total`).
const PRESENCE_PENDING_MAX: usize = 65_536;

/// How often the rate limiters forget idle keys and ended bans.
const LIMITS_SWEEP_MS: u64 = 1_000;
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
/// `uring_path`: the io_uring data path (`shard/uring.rs`; only with the
/// io_uring driver), else the epoll data path.
pub fn run(setup: ShardSetup, driver: crate::config::Driver, uring_path: bool) -> io::Result<()> {
    use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
    // `auto` is decided once by the server (`server::resolve_driver`),
    // which also probes what the io_uring data path needs.
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
        rt.block_on(shard_main(setup, "io_uring", uring_path))
    } else {
        if driver == crate::config::Driver::Auto {
            info!("io_uring unavailable; shard uses epoll");
        }
        let mut rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()?;
        rt.block_on(shard_main(setup, "epoll", false))
    }
}

async fn shard_main(setup: ShardSetup, driver: &'static str, uring_path: bool) -> io::Result<()> {
    let now = setup.epoch.elapsed().as_millis() as u64;
    let uring = if uring_path {
        match uring::Uring::new(setup.uring_buffers, setup.uring_buffer_bytes) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::error!(shard = setup.id, error = %e, "the shard's io_uring ring failed");
                return Err(e);
            }
        }
    } else {
        None
    };
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
        tls: setup.tls,
        tls_plain: RefCell::new(Vec::new()),
        tls_out: RefCell::new(Vec::new()),
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
        limits: ShardLimits::new(
            &setup.limits,
            setup.limit_metrics,
            Shard::server_time_ms() ^ ((setup.id as u64) << 48),
        ),
        lists: setup.lists,
        uring,
        login: setup.login,
        logged_out: RefCell::new(devices::LoggedOut::default()),
        client_versions: RefCell::new(devices::ClientVersions::default()),
        logins_seen: Cell::new(0),
        rooms: RefCell::new(rooms::Rooms::new(
            setup.rooms.per_connection_max as usize,
            setup.rooms.per_shard_max as usize,
        )),
    });
    debug!(shard = shard.id, driver, "shard started");
    // A descriptor of each listening socket kept here for the drain's
    // `shutdown`: the socket is shared by all shards, so another shard's
    // shutdown can end this shard's accept task (closing its descriptor)
    // first, and a raw fd number could by then name someone else's socket.
    let mut listener_fds: Vec<OwnedFd> = Vec::new();
    for (l, transport, secure) in [
        (setup.tcp_listener, Transport::Tcp, false),
        (setup.ws_listener, Transport::WebSocketUpgrade, false),
        (setup.tls_listener, Transport::Tcp, true),
        (setup.wss_listener, Transport::WebSocketUpgrade, true),
    ] {
        if let Some(l) = l {
            listener_fds.push(l.try_clone()?.into());
            let l = TcpListener::from_std(l)?;
            let listener = accept::Listener {
                transport,
                secure,
                rate: setup.accept_rate,
            };
            monoio::spawn(accept_loop(shard.clone(), l, listener));
        }
    }
    monoio::spawn(tick_loop(shard.clone()));
    if shard.uring.is_some() {
        monoio::spawn(uring::uring_loop(shard.clone()));
    } else {
        monoio::spawn(poll_loop(shard.clone()));
    }
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
    /// This shard's connection `key` of `generation`, as answers find it.
    fn conn_ref(&self, key: u32, generation: u32) -> ConnRef {
        ConnRef {
            shard: self.id as u16,
            key,
            generation,
        }
    }

    /// Where a request no connection waits for is "answered": nowhere
    /// (no slab key is `u32::MAX`).
    fn unanswered(&self) -> ConnRef {
        self.conn_ref(u32::MAX, 0)
    }

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
        let handshake = conn
            .spill
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .and_then(|t| t.handshake_deadline_ms());
        let at = [session, fence, handshake].into_iter().flatten().min();
        if let Some(at) = at {
            if at < conn.timer_at {
                conn.timer_at = at;
                self.wheel.borrow_mut().insert((key, conn.generation), at);
            }
        }
    }
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
    let mut c = conns.remove(key as usize);
    // Its room subscriptions end with it (a reconnecting client joins
    // again); nothing to do for a connection in no room.
    shard.rooms.borrow_mut().leave_all(key);
    if shard.uring.is_some() {
        // Its queued bytes go out now (as the epoll path writes them before
        // it sees the end); its ring operations end before its fd closes.
        shard.uring_write_now(&mut c);
        shard.uring_forget(key, &c);
    }
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
    if matches!(
        reason,
        CloseReason::SlowConsumer | CloseReason::HeartbeatTimeout
    ) {
        sock::reset_if_stuck(c.fd.as_raw_fd());
    }
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
    let mut swept_ms = 0;
    let mut collected_ms = 0;
    loop {
        monoio::time::sleep(Duration::from_millis(WHEEL_TICK_MS)).await;
        let now = shard.now_ms();
        if now.saturating_sub(swept_ms) >= LIMITS_SWEEP_MS {
            swept_ms = now;
            shard.limits.housekeep(shard.epoch.elapsed());
        }
        if now.saturating_sub(collected_ms) >= crate::alloc::COLLECT_EVERY_MS {
            collected_ms = now;
            crate::alloc::collect();
        }
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
            if tls::handshake_expired(c, now) {
                // Nothing can be said before the handshake: just closed.
                shard.close_soon(c, CloseReason::Auth);
                continue;
            }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tern_protocol::{pb::frame::Body, session::ConvKey};

    use super::{
        inbox::{Gate, RESUME_HOLD_FRAMES_MAX},
        *,
    };

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
