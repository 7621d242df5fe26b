//! A worker process: one thread, one mio event loop, up to
//! [`limits::WORKER_CONNS_MAX`] connections (its [`WorkerSpec`] slice of the
//! run), driven through the phases the parent paces over stdin.
//!
//! Phases, in order ([`Phase`]): open every slot at the ramp rate and
//! authenticate (`Connect`), wait for `setup`, create groups or subscribe
//! (`Setup`), wait for `go`, run the workload for the planned duration
//! (`Main`, where a storm drops and reconnects its share), let outstanding
//! acks and pushes arrive (`Drain`), with `--verify` sync every device from
//! the start (`FinalSync`), then report one `result` line and exit.
//!
//! Why mio: readiness on epoll lets one thread hold thousands of sockets
//! with no task, stack or buffer per connection; a read goes into one shared
//! buffer and only a partial frame is kept per connection (as the gateway
//! does). Every loop is bounded per iteration (`*_BATCH_MAX`) and every
//! phase has a deadline, so a worker always ends by itself.
//!
//! A worker never talks to anything but its targets, and never retries a
//! failed first connection (that is a result); only a storm's dropped
//! connections reconnect, and connections that *move*: kicked with
//! `SHUTDOWN` (a node draining; they wait the kick's `retry_after_ms` plus
//! their own jitter) or, with `--reconnect`, closed by their server. A move
//! goes to the next target of the list, resumes from the cursors, syncs
//! them, and resends the unanswered sends (same `client_msg_id`:
//! idempotent).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque},
    io::{self, BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, mpsc},
    time::Duration,
};

use hdrhistogram::{Histogram, serialization::Serializer as _};
use mio::{Events, Interest, Poll, Token, Waker, net::TcpStream};
use prost::Message as _;
use rand::Rng as _;
use serde::Serialize;
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

use super::{
    history::{Delivery, DeviceLog, History, LogEntry, Outcome, SendOp, Via},
    limits, push,
    spec::{Plan, Proto, Role, Scenario, SendTo, WorkerMsg, WorkerResult, WorkerSpec},
    wire::{self, PeerPacket},
};

/// Largest Tern frame the load client accepts (the gateway's default).
pub const FRAME_BYTES_MAX: usize = codec::FRAME_BYTES_MAX_DEFAULT;
/// Connections opened per loop iteration at most.
pub const OPEN_BATCH_MAX: usize = 1_000;
/// Sends per loop iteration at most.
pub const SEND_BATCH_MAX: usize = 2_000;
/// Sends awaiting their ack, per worker; beyond it sends are skipped.
pub const INFLIGHT_SENDS_MAX: usize = 100_000;
/// Bytes queued for one socket before the connection is closed as stuck.
pub const WRITE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Shared read buffer of the worker.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How often deadlines (ping, connect timeout, gap sync) are swept.
pub const SWEEP_INTERVAL_MS: u64 = 250;
/// How long a noticed gap waits for its push before the device syncs.
pub const GAP_GRACE_MS: u64 = 500;
/// Members per `GroupCreate` / `GroupInvite` request (the server's cap).
pub const GROUP_BATCH_MEMBERS_MAX: u32 = 200;
/// Pages one device's final sync may take.
pub const FINAL_SYNC_PAGES_MAX: u32 = 10_000;
/// Deadline of the final sync of all devices.
pub const FINAL_SYNC_MS_MAX: u64 = 120_000;
/// Deadline of the setup phase.
pub const SETUP_MS_MAX: u64 = 300_000;
/// Reconnect attempts of one dropped connection (storm).
pub const RECONNECT_ATTEMPTS_MAX: u32 = 30;
/// Retry delay without jitter (storm, `--jitter-ms 0`).
pub const RETRY_FIXED_MS: u64 = 100;
/// Cap of the exponential backoff base (storm with jitter).
pub const BACKOFF_CAP_MS: u64 = 30_000;
/// Own jitter added to a `SHUTDOWN` kick's `retry_after_ms`: 0..=this ms.
pub const KICK_JITTER_MS_MAX: u64 = 500;
/// Largest `retry_after_ms` honoured (a hostile server cannot park us).
pub const KICK_RETRY_AFTER_MS_MAX: u64 = 60_000;
/// Entries of the operation log per worker (`--verify`).
pub const HISTORY_ENTRIES_MAX: usize = 20_000_000;
/// Token lifetime minted for load users.
pub const TOKEN_TTL_SECS: u64 = 86_400;
/// Idle time after which the drain ends early once no send is in flight.
pub const DRAIN_QUIET_MS: u64 = 1_000;
/// Shortest ping interval the client accepts from a server.
pub const HEARTBEAT_MS_MIN: u64 = 1_000;
/// Progress lines, at most one per this interval.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Pushes a device lets go unacked before it acks at once, whatever the
/// delay: well inside the gateway's default unacked window (256 frames), so
/// the server never stalls on us (lowered to half the window a Welcome
/// announces).
pub const ACK_PENDING_FRAMES_MAX: u32 = 32;
/// Silence (nothing received) after which a live connection is taken for
/// dead, in % of the heartbeat interval: a healthy server answers every ping
/// within the interval, so 150 % notices a stopped server within 1.5
/// intervals of its last word (issue 15).
pub const SILENCE_PCT: u64 = 150;
/// ...but never less than one interval plus this, so a pong delayed by a
/// busy machine is not taken for a dead server at short intervals.
pub const SILENCE_SLACK_MS_MIN: u64 = 1_000;
/// Full-page sync requests a stalled device (`--stall`) writes per sweep
/// (128 a second), while its own write buffer holds less than
/// [`STALL_WBUF_BYTES_MAX`].
pub const STALL_SYNCS_PER_SWEEP: usize = 32;
/// A stalled device writes no more while this much is unwritten.
pub const STALL_WBUF_BYTES_MAX: usize = 64 * 1024;

const WAKER: Token = Token(usize::MAX);

/// Commands from the parent, one per stdin line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Create groups / subscriptions.
    Setup,
    /// Start the main phase.
    Go,
    /// The parent went away: stop now and report.
    Stop,
}

/// Why a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The spec line on stdin was missing or not valid JSON.
    #[error("bad worker spec: {0}")]
    Spec(String),
    /// The event loop failed (epoll, waker).
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// The TLS client settings do not load (CA file).
    #[error("tls: {0}")]
    Tls(String),
    /// Writing to the parent failed.
    #[error("report: {0}")]
    Report(#[from] serde_json::Error),
}

/// Monotonic clock in ns, the same in every process of the machine (so a
/// stamp written by one worker can be read by another).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Entry point of `tern-load __worker`: reads the spec line from `input`,
/// then commands; writes JSON lines to `out`.
pub fn main(mut input: impl BufRead + Send + 'static, out: impl Write) -> Result<(), WorkerError> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| WorkerError::Spec(e.to_string()))?;
    let spec: WorkerSpec =
        serde_json::from_str(&line).map_err(|e| WorkerError::Spec(e.to_string()))?;
    limits::raise_nofile();
    let mut w = Worker::new(spec, out)?;
    let (tx, rx) = mpsc::channel();
    w.cmds = Some(rx);
    let waker = w.waker.clone();
    // A plain thread turns stdin lines into commands; EOF means the parent is gone.
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            let cmd = match input.read_line(&mut line) {
                Ok(0) | Err(_) => Cmd::Stop,
                Ok(_) => match line.trim() {
                    "setup" => Cmd::Setup,
                    "go" => Cmd::Go,
                    _ => Cmd::Stop,
                },
            };
            let stop = cmd == Cmd::Stop;
            if tx.send(cmd).is_err() || waker.wake().is_err() || stop {
                return;
            }
        }
    });
    w.run()
}

/// The phases of a worker, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening every slot once at the ramp rate.
    Connect,
    /// Every slot tried; waiting for the parent's `setup`.
    AwaitSetup,
    /// Creating groups (Tern) or subscribing (peers).
    Setup,
    /// Ready; waiting for `go`.
    AwaitGo,
    /// The workload.
    Main,
    /// Waiting for outstanding acks and pushes.
    Drain,
    /// `--verify`: every device syncs from the start.
    FinalSync,
    /// Reporting.
    Done,
}

/// A `--stall` device's slow-consumer episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Not a stalling device.
    Never,
    /// Will stop reading at `stall_at_s`.
    Planned,
    /// Not reading since this instant (ns); still writing.
    Since(u64),
    /// Read again (closed by its server, or the main phase ended).
    Over,
}

/// The life of one connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not opened yet, or waiting to reconnect.
    Pending,
    /// TCP connect in progress.
    Connecting,
    /// Connected; auth (or CONNECT) sent, waiting for the answer.
    Handshaking,
    /// Authenticated.
    Live,
    /// Closed for good.
    Dead,
}

struct Conn {
    state: State,
    sock: Option<TcpStream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// When the current attempt started.
    since_ns: u64,
    next_ping_ns: u64,
    /// When the outstanding ping was sent; 0: none.
    ping_sent_ns: u64,
    hb_ms: u64,
    /// Whether the first attempt's outcome was counted.
    first_done: bool,
    attempt: u32,
    /// Storm: when this connection was dropped; 0 when it is not.
    dropped_at_ns: u64,
    /// Moves to the next target so far (a kick with `SHUTDOWN`, a server
    /// close with `--reconnect`, and each failed attempt while moving):
    /// added to the slot's target index.
    moves: u32,
    /// Left its target (kicked with `SHUTDOWN`, or closed by its server with
    /// `--reconnect`) and not yet live again: a failed attempt tries the
    /// next target, and once live it catches up.
    moving: bool,
    dev: Option<Box<Device>>,
    /// When the last bytes came from the server (the silence rule).
    last_rx_ns: u64,
    /// `--stall`: this device's slow-consumer episode.
    stall: Stall,
    /// `--tls`: the connection's TLS client (rustls' buffered connection:
    /// a load client, not the gateway, so its buffers do not matter).
    tls: Option<Box<rustls::ClientConnection>>,
}

/// Per-device state of a slot that takes part in conversations.
#[derive(Default)]
struct Device {
    cursors: HashMap<String, Cursor>,
    /// Request id of the gap sync in flight; 0: none.
    sync_rid: u64,
    /// Final sync: cursors reached so far, entries, done.
    final_cursors: BTreeMap<String, u64>,
    final_entries: Vec<LogEntry>,
    final_pages: u32,
    final_done: bool,
    /// Peers: a subscription is awaiting its ack.
    sub_pending: bool,
    /// Pushes taken since the last `deliver_ack`.
    unacked_frames: u32,
    /// Ack at once from this many unacked pushes on.
    ack_frames_max: u32,
    /// In the worker's ack queue.
    ack_queued: bool,
}

#[derive(Default)]
struct Cursor {
    contiguous: u64,
    /// A push touched this conversation since the last `deliver_ack`.
    touched: bool,
    above: BTreeSet<u64>,
    /// When a gap was first noticed; 0: none open.
    gap_since_ns: u64,
}

impl Cursor {
    /// Records `seq`; returns whether it was new.
    fn take(&mut self, seq: u64, now: u64) -> bool {
        if self.contiguous == 0 && self.above.is_empty() {
            self.contiguous = seq.saturating_sub(1);
        }
        // The common case, the next seq with no gap open: no set node is
        // allocated and freed per delivery.
        if self.above.is_empty() && seq != 0 && seq == self.contiguous.wrapping_add(1) {
            self.contiguous = seq;
            self.gap_since_ns = 0;
            return true;
        }
        if seq <= self.contiguous || !self.above.insert(seq) {
            return false;
        }
        // A hostile server may send seq u64::MAX: never step past it.
        while self.contiguous < u64::MAX && self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        if self.above.is_empty() {
            self.gap_since_ns = 0;
        } else if self.gap_since_ns == 0 {
            self.gap_since_ns = now;
        }
        true
    }
}

enum Pending {
    Send {
        local: usize,
        sent_ns: u64,
        op: Option<usize>,
        /// Index in `senders` and the sender's message number: enough to
        /// resend it with the same `client_msg_id` after a move.
        sender: usize,
        n: u64,
    },
    Setup {
        group: u32,
        next_member: u32,
    },
    /// A room member's `room_create` (answered by the room or
    /// ALREADY_EXISTS: either way the room exists before its join).
    RoomCreate,
    /// A room member's `room_join`.
    RoomJoin,
    Sync {
        local: usize,
        fin: bool,
    },
}

struct Sender {
    local: usize,
    to: SendTo,
    period_ns: u64,
    n: u64,
}

struct Worker<W: Write> {
    spec: WorkerSpec,
    out: W,
    poll: Poll,
    waker: Arc<Waker>,
    cmds: Option<mpsc::Receiver<Cmd>>,
    conns: Vec<Conn>,
    tokens: Vec<String>,
    buf: Vec<u8>,
    /// `--tls`: the client configuration every connection starts from.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `--tls`: decrypted bytes of one read (shared by all connections).
    plain: Vec<u8>,
    phase: Phase,
    next_open: usize,
    connect_start_ns: u64,
    last_first_outcome_ns: u64,
    retries: BinaryHeap<Reverse<(u64, usize)>>,
    senders: Vec<Sender>,
    send_queue: BinaryHeap<Reverse<(u64, usize)>>,
    inflight: HashMap<u64, Pending>,
    next_rid: u64,
    setup_open: u32,
    main_start_ns: u64,
    main_end_ns: u64,
    phase_deadline_ns: u64,
    storm_done: bool,
    storm_drop_ns: u64,
    last_reconnect_ns: u64,
    last_activity_ns: u64,
    last_sweep_ns: u64,
    last_progress_ns: u64,
    res: WorkerResult,
    live: u64,
    connect_h: Histogram<u64>,
    ack_h: Histogram<u64>,
    deliver_h: Histogram<u64>,
    reconnect_h: Histogram<u64>,
    history: Option<History>,
    history_full: bool,
    payload: Vec<u8>,
    /// The connection whose read batch is being handled: `queue` appends to
    /// it without writing (the batch ends with one write); frames for other
    /// connections (a group invite sent by the owner) are written at once.
    batching: Option<usize>,
    /// Devices holding back a `deliver_ack`, by when it is due. The delay is
    /// one constant, so due times only grow and a FIFO keeps them in order;
    /// each device is in it at most once (`Device::ack_queued`), so it is
    /// bounded by the worker's connections.
    ack_queue: VecDeque<(u64, usize)>,
    /// Sends of connections kicked with `SHUTDOWN` that got no answer,
    /// resent when the connection is live again (bounded by
    /// `INFLIGHT_SENDS_MAX`: they were in `inflight`).
    resend: Vec<Resend>,
}

/// An unanswered send of a moving connection.
struct Resend {
    local: usize,
    sender: usize,
    n: u64,
    sent_ns: u64,
    op: Option<usize>,
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits; the bounds are valid constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// hdrhistogram V2 serialization, hex-encoded for JSON.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    if hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .is_err()
    {
        return String::new();
    }
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes [`encode_hist`]'s output; `None` if it is not one.
pub fn decode_hist(s: &str) -> Option<Histogram<u64>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes?))
        .ok()
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

impl<W: Write> Worker<W> {
    fn new(spec: WorkerSpec, out: W) -> Result<Self, WorkerError> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let plan = &spec.plan;
        let n = (spec.slot_end - spec.slot_start) as usize;
        let mut conns = Vec::with_capacity(n);
        let mut tokens = Vec::new();
        let key = jsonwebtoken::EncodingKey::from_secret(plan.jwt_secret.as_bytes());
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let exp = jsonwebtoken::get_current_timestamp() + TOKEN_TTL_SECS;
        let mut senders = Vec::new();
        for local in 0..n {
            let slot = spec.slot_start + local as u32;
            let (user, _) = plan.identity(slot);
            if plan.proto == Proto::Tern {
                tokens.push(jsonwebtoken::encode(
                    &header,
                    &Claims { sub: &user, exp },
                    &key,
                )?);
            }
            let dev = (plan.idle_acks || !matches!(plan.role(slot), Role::Idle { .. }))
                .then(|| Box::new(Device::default()));
            conns.push(Conn {
                state: State::Pending,
                sock: None,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                since_ns: 0,
                next_ping_ns: 0,
                ping_sent_ns: 0,
                hb_ms: u64::from(plan.peer_heartbeat_ms),
                first_done: false,
                attempt: 0,
                dropped_at_ns: 0,
                moves: 0,
                moving: false,
                dev,
                last_rx_ns: 0,
                stall: if plan.stalls(slot) {
                    Stall::Planned
                } else {
                    Stall::Never
                },
                tls: None,
            });
            if let Some(to) = plan.send_target(slot) {
                let rate = plan.rate_per_sender(slot);
                if rate > 0.0 {
                    senders.push(Sender {
                        local,
                        to,
                        period_ns: (1e9 / rate).max(1.0) as u64,
                        n: 0,
                    });
                }
            }
        }
        let history = plan.verify.then(History::default);
        let tls = match &plan.tls {
            Some(t) => Some(
                t.client_config()
                    .map_err(|e| WorkerError::Tls(format!("{e:#}")))?,
            ),
            None => None,
        };
        let mut payload = Vec::new();
        wire::stamp(0, plan.payload_bytes as usize, &mut payload);
        Ok(Self {
            res: WorkerResult {
                slots: n as u64,
                ..Default::default()
            },
            spec,
            out,
            poll,
            waker,
            cmds: None,
            conns,
            tokens,
            buf: vec![0; READ_BUFFER_BYTES],
            tls,
            plain: Vec::new(),
            phase: Phase::Connect,
            next_open: 0,
            connect_start_ns: 0,
            last_first_outcome_ns: 0,
            retries: BinaryHeap::new(),
            senders,
            send_queue: BinaryHeap::new(),
            inflight: HashMap::new(),
            next_rid: 1,
            setup_open: 0,
            main_start_ns: 0,
            main_end_ns: 0,
            phase_deadline_ns: 0,
            storm_done: false,
            storm_drop_ns: 0,
            last_reconnect_ns: 0,
            last_activity_ns: 0,
            last_sweep_ns: 0,
            last_progress_ns: 0,
            live: 0,
            connect_h: hist(),
            ack_h: hist(),
            deliver_h: hist(),
            reconnect_h: hist(),
            history,
            history_full: false,
            payload,
            batching: None,
            ack_queue: VecDeque::new(),
            resend: Vec::new(),
        })
    }

    fn plan(&self) -> &Plan {
        &self.spec.plan
    }

    fn slot(&self, local: usize) -> u32 {
        self.spec.slot_start + local as u32
    }

    fn emit(&mut self, msg: &WorkerMsg) -> Result<(), WorkerError> {
        serde_json::to_writer(&mut self.out, msg)?;
        self.out.write_all(b"\n").map_err(WorkerError::Io)?;
        self.out.flush().map_err(WorkerError::Io)?;
        Ok(())
    }

    fn run(mut self) -> Result<(), WorkerError> {
        let mut events = Events::with_capacity(4096);
        let start = mono_ns();
        self.connect_start_ns = start;
        let ramp_per_worker =
            f64::from(self.plan().ramp_per_s.max(1)) / f64::from(self.spec.workers.max(1));
        loop {
            let now = mono_ns();
            self.commands(now)?;
            match self.phase {
                Phase::Connect => {
                    let due = ((now - start) as f64 / 1e9 * ramp_per_worker) as usize + 1;
                    let upto = due
                        .min(self.conns.len())
                        .min(self.next_open + OPEN_BATCH_MAX);
                    while self.next_open < upto {
                        let i = self.next_open;
                        self.next_open += 1;
                        self.open(i, now);
                    }
                    // Each slot's first attempt ends exactly once, as one or the other.
                    if self.next_open == self.conns.len()
                        && self.res.established + self.res.failed == self.conns.len() as u64
                    {
                        self.res.ramp_ms =
                            self.last_first_outcome_ns.saturating_sub(start) / 1_000_000;
                        self.phase = Phase::AwaitSetup;
                        let msg = WorkerMsg::Connected {
                            established: self.res.established,
                            failed: self.res.failed,
                        };
                        self.emit(&msg)?;
                    }
                }
                Phase::Setup => {
                    if self.setup_open == 0 || now > self.phase_deadline_ns {
                        self.res.setup_errors += u64::from(self.setup_open);
                        self.phase = Phase::AwaitGo;
                        self.emit(&WorkerMsg::Ready)?;
                    }
                }
                Phase::Main => {
                    self.send_due(now);
                    self.storm(now);
                    self.stall_start(now);
                    if now >= self.main_end_ns {
                        self.stall_end(now);
                        self.res.held = self.live;
                        self.res.main_ms = (now - self.main_start_ns) / 1_000_000;
                        self.phase = Phase::Drain;
                        self.phase_deadline_ns = now + u64::from(self.plan().drain_ms) * 1_000_000;
                    }
                }
                Phase::Drain => {
                    let sends_open = self
                        .inflight
                        .values()
                        .any(|p| matches!(p, Pending::Send { .. }));
                    let quiet =
                        now.saturating_sub(self.last_activity_ns) > DRAIN_QUIET_MS * 1_000_000;
                    if now > self.phase_deadline_ns || (!sends_open && quiet) {
                        self.end_drain(now);
                    }
                }
                Phase::FinalSync => {
                    let open = self.conns.iter().any(|c| {
                        c.state == State::Live && c.dev.as_ref().is_some_and(|d| !d.final_done)
                    });
                    if !open || now > self.phase_deadline_ns {
                        self.phase = Phase::Done;
                    }
                }
                Phase::Done => return self.finish(),
                Phase::AwaitSetup | Phase::AwaitGo => {}
            }
            self.reconnect_due(now);
            self.acks_due(now);
            if now - self.last_sweep_ns >= SWEEP_INTERVAL_MS * 1_000_000 {
                self.last_sweep_ns = now;
                self.sweep(now);
            }
            if now - self.last_progress_ns >= PROGRESS_INTERVAL_MS * 1_000_000 {
                self.last_progress_ns = now;
                let p = WorkerMsg::Progress(super::spec::Progress {
                    live: self.live,
                    failed: self.res.failed,
                    sent: self.res.sent,
                    acked: self.res.acked,
                    delivered: self.res.delivered,
                });
                self.emit(&p)?;
            }
            // Sleep until the next thing is due (an open, a send, a retry),
            // at most 20 ms: a hundred workers polling every millisecond would
            // take the cores from the servers they load.
            let mut wake = now + 20_000_000;
            if self.phase == Phase::Connect && self.next_open < self.conns.len() {
                wake = wake.min(start + (self.next_open as f64 / ramp_per_worker * 1e9) as u64);
            }
            if self.phase == Phase::Main
                && let Some(&Reverse((at, _))) = self.send_queue.peek()
            {
                wake = wake.min(at);
            }
            if let Some(&Reverse((at, _))) = self.retries.peek() {
                wake = wake.min(at);
            }
            if let Some(&(at, _)) = self.ack_queue.front() {
                wake = wake.min(at);
            }
            let timeout = Duration::from_nanos(wake.saturating_sub(mono_ns()));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e.into());
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                // Per event, not per batch: a batch of a thousand sockets
                // takes long enough to skew latencies read late in it.
                let now = mono_ns();
                let i = ev.token().0;
                if i >= self.conns.len() {
                    continue;
                }
                if ev.is_writable() || ev.is_error() {
                    self.on_writable(i, now);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i, ev.is_read_closed() || ev.is_error(), now);
                }
            }
        }
    }

    fn commands(&mut self, now: u64) -> Result<(), WorkerError> {
        let Some(rx) = &self.cmds else { return Ok(()) };
        let cmds: Vec<Cmd> = rx.try_iter().collect();
        for cmd in cmds {
            match (cmd, self.phase) {
                (Cmd::Setup, Phase::AwaitSetup) => {
                    self.phase = Phase::Setup;
                    self.phase_deadline_ns = now + SETUP_MS_MAX * 1_000_000;
                    self.start_setup(now);
                }
                (Cmd::Go, Phase::AwaitGo) => {
                    self.phase = Phase::Main;
                    self.main_start_ns = now;
                    self.main_end_ns = now + u64::from(self.plan().duration_s) * 1_000_000_000;
                    for (k, s) in self.senders.iter().enumerate() {
                        // Spread first sends over one period so senders do not beat in step.
                        let offset = rand::rng().random_range(0..s.period_ns.max(1));
                        self.send_queue.push(Reverse((now + offset, k)));
                    }
                }
                (Cmd::Stop, _) => {
                    if self.phase == Phase::Main {
                        self.res.held = self.live;
                        self.res.main_ms = (now - self.main_start_ns) / 1_000_000;
                    }
                    self.phase = Phase::Done;
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- connections -----------------------------------------------------

    fn open(&mut self, i: usize, now: u64) {
        let slot = self.slot(i);
        let moves = self.conns[i].moves;
        let (src, dst) = (
            self.plan().source(slot),
            self.plan().target_after(slot, moves),
        );
        self.res.attempts += 1;
        let c = &mut self.conns[i];
        c.since_ns = now;
        c.last_rx_ns = now;
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
        c.tls = None;
        if let (Some(config), Some(opts)) = (&self.tls, &self.spec.plan.tls) {
            let name = opts.server_name(&dst.to_string());
            match name.and_then(|n| Ok(rustls::ClientConnection::new(config.clone(), n)?)) {
                Ok(t) => c.tls = Some(Box::new(t)),
                Err(e) => return self.fail(i, &format!("tls:{e}"), now),
            }
        }
        match connect(src, dst) {
            Ok(mut sock) => {
                let reg = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                );
                c.sock = Some(sock);
                c.state = State::Connecting;
                if let Err(e) = reg {
                    self.fail(i, &reason_of(&e), now);
                }
            }
            Err(e) => self.fail(i, &reason_of(&e), now),
        }
    }

    fn on_writable(&mut self, i: usize, now: u64) {
        if self.conns[i].state == State::Connecting {
            let c = &mut self.conns[i];
            let Some(sock) = c.sock.as_ref() else { return };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.fail(i, &reason_of(&e), now),
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(i, &reason_of(&e), now),
            }
            c.state = State::Handshaking;
            self.send_hello(i);
        }
        self.flush(i, now);
    }

    fn send_hello(&mut self, i: usize) {
        let slot = self.slot(i);
        let (user, device) = self.plan().identity(slot);
        let mut out = std::mem::take(&mut self.conns[i].wbuf);
        match self.plan().proto {
            Proto::Tern => {
                let rid = self.rid();
                // A device coming back resumes from what it holds; the
                // server pushes what it missed.
                let resume_cursors = self.conns[i]
                    .dev
                    .as_ref()
                    .map(|d| {
                        d.cursors
                            .iter()
                            .filter(|(_, c)| c.contiguous > 0)
                            .map(|(k, c)| pb::Cursor {
                                conversation_id: k.clone(),
                                seq: c.contiguous,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let auth = pb::Auth {
                    token: self.tokens[i].clone(),
                    device_id: device,
                    platform: pb::Platform::Bot as i32,
                    protocol_version: tern_protocol::PROTOCOL_VERSION,
                    resume_cursors,
                    client_version: "tern-load".into(),
                    ..Default::default()
                };
                frame(rid, Body::Auth(auth), &mut out);
            }
            Proto::Mqtt => {
                let ka = (self.plan().peer_heartbeat_ms / 1000 * 2).clamp(1, u32::from(u16::MAX));
                wire::mqtt_connect(&format!("{user}.{device}"), ka as u16, &mut out);
            }
            Proto::Nats => wire::nats_connect(&user, &mut out),
            // RESP2 has no handshake: the PING's `+PONG` makes it live.
            Proto::Redis => wire::redis_ping(&mut out),
        }
        self.conns[i].wbuf = out;
    }

    fn flush(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_mut() else { return };
        if c.state == State::Connecting {
            return;
        }
        if let Some(tls) = c.tls.as_mut() {
            return match tls_flush(tls, sock, &mut c.wbuf) {
                Ok(()) => {}
                Err(r) => self.close(i, &r, now),
            };
        }
        let mut done = 0;
        let mut err = None;
        while done < c.wbuf.len() {
            match sock.write(&c.wbuf[done..]) {
                Ok(0) => {
                    err = Some("write_zero".to_string());
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(reason_of(&e));
                    break;
                }
            }
        }
        c.wbuf.drain(..done);
        if c.wbuf.is_empty() && c.wbuf.capacity() > 4096 {
            c.wbuf = Vec::new();
        }
        if err.is_none() && c.wbuf.len() > WRITE_BUFFER_BYTES_MAX {
            err = Some("write_buffer_full".into());
        }
        if let Some(r) = err {
            self.close(i, &r, now);
        }
    }

    /// Appends a frame to the connection's write buffer and writes it, or,
    /// while a read batch is being handled, leaves the write to the batch's
    /// end (one write per batch).
    fn queue(&mut self, i: usize, now: u64, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.conns[i].wbuf);
        if self.batching != Some(i) {
            self.flush(i, now);
        }
    }

    /// Reads what the socket holds and handles every whole frame in place,
    /// then answers the batch with at most one `DeliverAck` and one write.
    ///
    /// Frames are decoded straight from the shared read buffer; only the
    /// tail of a partial frame is copied to the connection's own buffer (so
    /// an idle connection holds none, and a whole frame is never copied).
    /// `closing`: the event said the peer closed or errored, so read on to
    /// the end rather than stop at a short read.
    fn on_readable(&mut self, i: usize, closing: bool, now: u64) {
        if let Stall::Since(_) = self.conns[i].stall
            && !self.spec.plan.stall_reads
        {
            // A slow consumer reads nothing; it only notices its server
            // closing it (`close` counts that).
            if closing {
                self.close(i, "stalled:closed", now);
            }
            return;
        }
        let mut end: Option<String> = None;
        {
            let c = &mut self.conns[i];
            let Some(sock) = c.sock.as_ref() else { return };
            if c.state == State::Connecting {
                match sock.take_error() {
                    Ok(Some(e)) | Err(e) => end = Some(reason_of(&e)),
                    Ok(None) => return,
                }
            }
        }
        // Taken for the batch so handlers may borrow the worker; put back below.
        let mut buf = std::mem::take(&mut self.buf);
        self.batching = Some(i);
        while end.is_none() {
            let Some(sock) = self.conns[i].sock.as_mut() else {
                break;
            };
            match sock.read(&mut buf) {
                Ok(0) => end = Some("eof".into()),
                Ok(n) => {
                    self.conns[i].last_rx_ns = now;
                    let taken = if self.conns[i].tls.is_some() {
                        self.take_tls_bytes(i, &buf[..n], now)
                    } else {
                        self.take_bytes(i, &buf[..n], now)
                    };
                    if let Err(e) = taken {
                        end = Some(e);
                    }
                    // Edge-triggered epoll reports data that arrives after
                    // this read as a new event, so a short read means the
                    // socket is drained: skip the read that would say
                    // EAGAIN (one syscall per round trip), unless the peer
                    // is closing and the EOF is still to be read.
                    if n < buf.len() && !closing {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => end = Some(reason_of(&e)),
            }
        }
        self.buf = buf;
        self.batching = None;
        if self.conns[i].sock.is_some() {
            self.ack_or_defer(i, now);
            self.flush(i, now);
        }
        let c = &mut self.conns[i];
        if c.rbuf.is_empty() && c.rbuf.capacity() > 0 {
            // An idle connection keeps no read buffer.
            c.rbuf = Vec::new();
        }
        if let Some(r) = end
            && self.conns[i].sock.is_some()
        {
            if self.conns[i].state == State::Live {
                self.close(i, &r, now);
            } else {
                self.fail(i, &r, now);
            }
        }
    }

    /// `--tls`: ciphertext just read goes through the connection's TLS
    /// client; the plaintext it gives is handled as a plain read's bytes.
    fn take_tls_bytes(&mut self, i: usize, data: &[u8], now: u64) -> Result<(), String> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let read = (|| {
            let Some(tls) = self.conns[i].tls.as_mut() else {
                return Ok(());
            };
            let mut rest = data;
            while !rest.is_empty() {
                tls.read_tls(&mut rest).map_err(|e| format!("tls:{e}"))?;
                tls.process_new_packets().map_err(|e| format!("tls:{e}"))?;
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match tls.reader().read(&mut chunk) {
                        Ok(0) => return Err("eof".to_string()),
                        Ok(n) => plain.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("tls:{e}")),
                    }
                }
            }
            Ok(())
        })();
        let taken = match read {
            Ok(()) if plain.is_empty() => Ok(()),
            Ok(()) => self.take_bytes(i, &plain, now),
            Err(e) => Err(e),
        };
        self.plain = plain;
        taken
    }

    /// Handles the whole frames of `data` (just read) after any partial frame
    /// kept from before, and keeps the new partial tail.
    fn take_bytes(&mut self, i: usize, data: &[u8], now: u64) -> Result<(), String> {
        if self.conns[i].rbuf.is_empty() {
            let used = self.take_frames(i, data, now)?;
            if let Some(c) = self.conns.get_mut(i)
                && c.sock.is_some()
            {
                // Deliberate allocation: only the tail of a partial frame.
                c.rbuf.extend_from_slice(&data[used..]);
            }
            return Ok(());
        }
        let mut kept = std::mem::take(&mut self.conns[i].rbuf);
        kept.extend_from_slice(data);
        let used = self.take_frames(i, &kept, now);
        let c = &mut self.conns[i];
        if c.sock.is_some() {
            kept.drain(..*used.as_ref().unwrap_or(&0));
            c.rbuf = kept;
        }
        used.map(|_| ())
    }

    /// Handles every whole frame at the start of `data`; returns the bytes
    /// they took. Stops early if a handler closed the connection.
    fn take_frames(&mut self, i: usize, data: &[u8], now: u64) -> Result<usize, String> {
        let proto = self.plan().proto;
        let mut at = 0;
        while at < data.len() && self.conns[i].sock.is_some() {
            let rest = &data[at..];
            match proto {
                Proto::Tern => {
                    let (prefix, body_len) = match codec::frame_len(rest, FRAME_BYTES_MAX) {
                        Ok(Some(l)) => l,
                        Ok(None) => break,
                        Err(e) => return Err(format!("decode:{e}")),
                    };
                    // Both bounded by `frame_len` (≤ 10, ≤ FRAME_BYTES_MAX).
                    let Some(body) = rest.get(prefix..prefix + body_len) else {
                        break;
                    };
                    at += prefix + body_len;
                    self.on_tern_body(i, body, now)?;
                }
                Proto::Mqtt | Proto::Nats | Proto::Redis => {
                    let d = match proto {
                        Proto::Mqtt => wire::mqtt_decode(rest),
                        Proto::Nats => wire::nats_decode(rest),
                        _ => wire::redis_decode(rest),
                    };
                    match d {
                        Ok(Some((p, used))) => {
                            at += used;
                            self.on_peer(i, p, now);
                        }
                        Ok(None) => break,
                        Err(e) => return Err(format!("decode:{e}")),
                    }
                }
            }
        }
        Ok(at)
    }

    /// One Tern frame body: a push or a gap sync's answer read in place,
    /// anything else (and anything the in-place reader leaves) by prost.
    fn on_tern_body(&mut self, i: usize, body: &[u8], now: u64) -> Result<(), String> {
        if let Some(f) = push::parse_entries(body) {
            let via = match f.kind {
                push::EntriesKind::Deliver => Some(Via::Push),
                // Only the answer to this device's gap sync; a final sync's
                // pages need the senders and ids, which prost decodes.
                push::EntriesKind::SyncResult => match self.inflight.get(&f.request_id) {
                    Some(&Pending::Sync { local, fin: false }) if local == i => {
                        self.inflight.remove(&f.request_id);
                        if let Some(d) = self.conns[i].dev.as_mut() {
                            d.sync_rid = 0;
                        }
                        Some(Via::Sync)
                    }
                    _ => None,
                },
            };
            if let Some(via) = via {
                for e in f.entries() {
                    self.take_entry(i, e.conv, e.seq, e.stamp, via, now);
                }
                if via == Via::Push
                    && let Some(d) = self.conns[i].dev.as_mut()
                {
                    d.unacked_frames = d.unacked_frames.saturating_add(1);
                }
                return Ok(());
            }
        }
        match codec::decode_body(body, FRAME_BYTES_MAX) {
            Ok(f) => {
                self.on_frame(i, f, now);
                Ok(())
            }
            Err(e) => Err(format!("decode:{e}")),
        }
    }

    fn became_live(&mut self, i: usize, hb_ms: u64, now: u64) {
        let hb_ms = hb_ms.max(HEARTBEAT_MS_MIN);
        let jitter = rand::rng().random_range(hb_ms / 2..=hb_ms);
        let c = &mut self.conns[i];
        c.state = State::Live;
        // A server announcing a tiny interval must not make us spin.
        c.hb_ms = hb_ms.max(HEARTBEAT_MS_MIN);
        c.next_ping_ns = now + jitter * 1_000_000;
        c.ping_sent_ns = 0;
        let took = now - c.since_ns;
        self.connect_h.saturating_record(took / 1000);
        self.live += 1;
        if !c.first_done {
            c.first_done = true;
            self.res.established += 1;
            self.last_first_outcome_ns = now;
        }
        if c.dropped_at_ns != 0 {
            self.reconnect_h
                .saturating_record((now - c.dropped_at_ns) / 1000);
            c.dropped_at_ns = 0;
            c.attempt = 0;
            self.res.reconnected += 1;
            self.last_reconnect_ns = now;
        }
        if std::mem::take(&mut c.moving) {
            self.res.moved += 1;
            self.catch_up(i, now);
        }
    }

    /// A connection that left its target (a kick with `SHUTDOWN`, or its
    /// server closed it with `--reconnect`) is live again on another one: it
    /// catches up as a client does after a reconnect (docs/protocol.md
    /// §7.3). It authenticated with its cursors as `resume_cursors` (the
    /// server pushes what follows them), now syncs every conversation it
    /// knows from its cursor, and resends its unanswered sends with their
    /// original `client_msg_id`s (a send the old node stored is answered as
    /// a duplicate at its first seq).
    fn catch_up(&mut self, i: usize, now: u64) {
        if let Some(d) = self.conns[i].dev.as_mut() {
            for c in d.cursors.values_mut() {
                if c.gap_since_ns == 0 {
                    c.gap_since_ns = now;
                }
            }
        }
        self.sync_gaps(i, now, 0);
        let mine: Vec<Resend> = {
            let (mine, rest) = std::mem::take(&mut self.resend)
                .into_iter()
                .partition(|r| r.local == i);
            self.resend = rest;
            mine
        };
        for r in mine {
            self.res.resent += 1;
            let to = self.senders[r.sender].to.clone();
            self.transmit(i, to, r.sender, r.n, r.sent_ns, r.op, now);
        }
    }

    /// A `Kick` with `SHUTDOWN`: the node drains. Leave for the next target
    /// after the kick's `retry_after_ms` plus our own jitter.
    fn moved_by_kick(&mut self, i: usize, retry_after_ms: u32, now: u64) {
        self.end_live(i, "kick:shutdown");
        self.res.kicked_shutdown += 1;
        let delay_ms = u64::from(retry_after_ms).min(KICK_RETRY_AFTER_MS_MAX)
            + rand::rng().random_range(0..=KICK_JITTER_MS_MAX);
        self.leave(i, delay_ms, now);
    }

    /// Connection `i` (no longer live) leaves its target for the next one
    /// of the list, in `delay_ms`: its unanswered sends are kept for
    /// resending, its pending syncs forgotten (never answered now), a group
    /// set up through it counted failed; it counts as dropped until it is
    /// live again ([`Self::catch_up`] then).
    fn leave(&mut self, i: usize, delay_ms: u64, now: u64) {
        let rids: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Send { local, .. } if *local == i))
            .map(|(&rid, _)| rid)
            .collect();
        for rid in rids {
            if let Some(Pending::Send {
                local,
                sent_ns,
                op,
                sender,
                n,
            }) = self.inflight.remove(&rid)
            {
                self.resend.push(Resend {
                    local,
                    sender,
                    n,
                    sent_ns,
                    op,
                });
            }
        }
        if let Some(d) = self.conns[i].dev.as_mut() {
            d.sync_rid = 0;
        }
        self.inflight
            .retain(|_, p| !matches!(p, Pending::Sync { local, fin: false } if *local == i));
        // A group being set up through this connection gets no more answers
        // here: count it failed now rather than at the setup deadline.
        let (plan, start) = (&self.spec.plan, self.spec.slot_start);
        let before = self.inflight.len();
        self.inflight.retain(|_, p| match p {
            Pending::Setup { group, .. } => {
                plan.slot_of(Role::Group {
                    group: *group,
                    member: 0,
                }) != start + i as u32
            }
            _ => true,
        });
        let lost = (before - self.inflight.len()) as u32;
        self.res.setup_errors += u64::from(lost);
        self.setup_open = self.setup_open.saturating_sub(lost);
        self.res.dropped += 1;
        if self.storm_drop_ns == 0 {
            self.storm_drop_ns = now;
        }
        let c = &mut self.conns[i];
        c.state = State::Pending;
        c.dropped_at_ns = now;
        c.attempt = 0;
        c.moving = true;
        c.moves = c.moves.wrapping_add(1);
        self.retries.push(Reverse((now + delay_ms * 1_000_000, i)));
    }

    /// A connection attempt failed (before Live).
    fn fail(&mut self, i: usize, reason: &str, now: u64) {
        self.drop_sock(i);
        *self.res.fail_reasons.entry(reason.to_string()).or_default() += 1;
        let c = &mut self.conns[i];
        if !c.first_done {
            c.first_done = true;
            self.res.failed += 1;
            self.last_first_outcome_ns = now;
        }
        if c.dropped_at_ns != 0 && c.attempt < RECONNECT_ATTEMPTS_MAX {
            self.res.reconnect_failures += 1;
            c.attempt += 1;
            if c.moving {
                // That target did not take us either: try the next one.
                c.moves = c.moves.wrapping_add(1);
            }
            let jitter_ms = u64::from(self.spec.plan.jitter_ms);
            let delay_ms = if jitter_ms == 0 {
                RETRY_FIXED_MS
            } else {
                let base = (500u64 << c.attempt.min(16)).min(BACKOFF_CAP_MS);
                rand::rng().random_range(0..=base)
            };
            c.state = State::Pending;
            self.retries.push(Reverse((now + delay_ms * 1_000_000, i)));
        } else {
            c.state = State::Dead;
        }
    }

    /// A live connection ended. With `--reconnect`, during the workload,
    /// it leaves for the next target (its server went away).
    fn close(&mut self, i: usize, reason: &str, now: u64) {
        if let Stall::Since(since) = self.conns[i].stall {
            // Whatever the socket said (EOF, reset, a failed write): the
            // server closed a device that stopped reading.
            self.conns[i].stall = Stall::Over;
            self.res.stall_closed += 1;
            self.res.stall_close_max_ms = self
                .res
                .stall_close_max_ms
                .max(now.saturating_sub(since) / 1_000_000);
        }
        if self.conns[i].state != State::Live {
            return self.fail(i, reason, now);
        }
        self.end_live(i, reason);
        if self.spec.plan.reconnect && matches!(self.phase, Phase::Main | Phase::Drain) {
            self.leave(i, RETRY_FIXED_MS, now);
        }
    }

    /// Closes live connection `i` for `reason` (counted); it is `Dead`.
    fn end_live(&mut self, i: usize, reason: &str) {
        self.drop_sock(i);
        self.live -= 1;
        *self
            .res
            .close_reasons
            .entry(reason.to_string())
            .or_default() += 1;
        self.conns[i].state = State::Dead;
    }

    fn drop_sock(&mut self, i: usize) {
        if let Some(mut s) = self.conns[i].sock.take() {
            // Deregistering a socket we are about to close cannot matter if it fails.
            let _ = self.poll.registry().deregister(&mut s);
        }
        let c = &mut self.conns[i];
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
        c.tls = None;
    }

    fn reconnect_due(&mut self, now: u64) {
        let mut n = 0;
        while let Some(&Reverse((at, i))) = self.retries.peek() {
            if at > now || n >= OPEN_BATCH_MAX {
                break;
            }
            self.retries.pop();
            n += 1;
            if self.conns[i].state == State::Pending {
                self.open(i, now);
            }
        }
    }

    fn sweep(&mut self, now: u64) {
        let timeout_ns = u64::from(self.plan().connect_timeout_ms) * 1_000_000;
        let proto = self.plan().proto;
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Connecting | State::Handshaking => {
                    if now - self.conns[i].since_ns > timeout_ns {
                        self.fail(i, "timeout", now);
                    }
                }
                State::Live => {
                    let c = &self.conns[i];
                    if let Stall::Since(_) = c.stall {
                        self.stall_writes(i, now);
                        continue;
                    }
                    // The server stopped answering: a ping unanswered for
                    // an interval, or nothing at all for the silence limit,
                    // whichever comes first.
                    // Less one sweep: the sweep that finds it is at most one
                    // interval late, so the close lands within 1.5 intervals.
                    let silence_ms = (c.hb_ms * SILENCE_PCT / 100)
                        .saturating_sub(SWEEP_INTERVAL_MS)
                        .max(c.hb_ms + SILENCE_SLACK_MS_MIN);
                    let silent_ns = now.saturating_sub(c.last_rx_ns);
                    let dead = if c.ping_sent_ns != 0 && now - c.ping_sent_ns > c.hb_ms * 1_000_000
                    {
                        Some("pong_timeout")
                    } else if silent_ns > silence_ms * 1_000_000 {
                        Some("silent")
                    } else {
                        None
                    };
                    if let Some(reason) = dead {
                        self.res.silent_closes += 1;
                        self.res.silent_detect_max_ms =
                            self.res.silent_detect_max_ms.max(silent_ns / 1_000_000);
                        self.close(i, reason, now);
                        continue;
                    }
                    if now >= c.next_ping_ns {
                        self.ping(i, proto, now);
                    }
                    self.gap_sync(i, now);
                }
                State::Pending | State::Dead => {}
            }
        }
    }

    fn ping(&mut self, i: usize, proto: Proto, now: u64) {
        let rid = self.rid();
        let c = &mut self.conns[i];
        c.next_ping_ns = now + c.hb_ms * 1_000_000;
        c.ping_sent_ns = now;
        self.res.pings += 1;
        self.queue(i, now, |out| match proto {
            Proto::Tern => frame(rid, Body::Ping(pb::Ping { nonce: rid }), out),
            Proto::Mqtt => wire::mqtt_ping(out),
            Proto::Nats => wire::nats_ping(out),
            Proto::Redis => wire::redis_ping(out),
        });
    }

    fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    // ---- Tern frames ------------------------------------------------------

    fn on_frame(&mut self, i: usize, f: pb::Frame, now: u64) {
        let Some(body) = f.body else { return };
        match body {
            Body::Welcome(w) if self.conns[i].state == State::Handshaking => {
                let window = w.limits.map_or(0, |l| l.unacked_window_max);
                if let Some(d) = self.conns[i].dev.as_mut() {
                    d.ack_frames_max = match window / 2 {
                        0 => ACK_PENDING_FRAMES_MAX,
                        half => half.min(ACK_PENDING_FRAMES_MAX),
                    };
                }
                self.became_live(i, u64::from(w.heartbeat_interval_ms), now);
            }
            Body::Pong(_) => {
                self.conns[i].ping_sent_ns = 0;
                self.res.pongs += 1;
            }
            Body::SendAck(a) => self.on_send_ack(f.request_id, a, now),
            Body::Deliver(d) => {
                self.on_entries(i, d.entries, Via::Push, now);
                if let Some(d) = self.conns[i].dev.as_mut() {
                    d.unacked_frames = d.unacked_frames.saturating_add(1);
                }
            }
            Body::SyncResult(r) => self.on_sync(i, f.request_id, r, now),
            Body::Ok(_)
                if matches!(self.inflight.get(&f.request_id), Some(Pending::Send { .. })) =>
            {
                self.on_post_ack(f.request_id, now);
            }
            Body::GroupInfoResult(_) | Body::Ok(_) => self.on_setup_step(f.request_id, None, now),
            Body::RoomInfoResult(_) => {
                self.inflight.remove(&f.request_id);
            }
            Body::RoomJoined(_) => {
                if let Some(Pending::RoomJoin) = self.inflight.remove(&f.request_id) {
                    self.setup_open = self.setup_open.saturating_sub(1);
                }
            }
            Body::RoomDeliver(d) => {
                let stamp = d.entry.as_ref().and_then(wire::entry_stamp);
                self.take_room_entry(i, stamp, now);
            }
            Body::Error(e) => {
                let code = pb::ErrorCode::try_from(e.code)
                    .map(|c| {
                        c.as_str_name()
                            .trim_start_matches("ERROR_CODE_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_else(|_| format!("code_{}", e.code));
                if f.request_id == 0 || self.conns[i].state == State::Handshaking {
                    let r = format!("error:{code}");
                    if self.conns[i].state == State::Live {
                        self.close(i, &r, now);
                    } else {
                        self.fail(i, &r, now);
                    }
                } else {
                    self.on_request_error(f.request_id, code, now);
                }
            }
            Body::Kick(k)
                if k.reason == pb::KickReason::Shutdown as i32
                    && self.plan().proto == Proto::Tern
                    && self.conns[i].state == State::Live
                    && !matches!(self.phase, Phase::FinalSync | Phase::Done) =>
            {
                self.moved_by_kick(i, k.retry_after_ms, now);
            }
            Body::Kick(k) => {
                let r = pb::KickReason::try_from(k.reason)
                    .map(|c| {
                        c.as_str_name()
                            .trim_start_matches("KICK_REASON_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_else(|_| "unknown".into());
                self.close(i, &format!("kick:{r}"), now);
            }
            _ => {}
        }
    }

    fn on_send_ack(&mut self, rid: u64, a: pb::SendAck, now: u64) {
        let Some(Pending::Send {
            local, sent_ns, op, ..
        }) = self.inflight.remove(&rid)
        else {
            return;
        };
        self.last_activity_ns = now;
        self.res.acked += 1;
        if self.conns[local].stall == Stall::Never {
            // A `--stall` device's own latencies are not the others'.
            self.ack_h.saturating_record((now - sent_ns) / 1000);
        }
        if let Some(h) = &mut self.history
            && let Some(op) = op.and_then(|k| h.sends.get_mut(k))
        {
            op.outcome = Outcome::Ok {
                conv: a.conversation_id.clone(),
                seq: a.seq,
                duplicate: a.duplicate,
                at_ns: now,
            };
        }
        self.take_entry(local, &a.conversation_id, a.seq, None, Via::Ack, now);
    }

    /// The `ok` of a room post: acked (durable) with its seq. Rooms have no
    /// cursors to advance (recent history only).
    fn on_post_ack(&mut self, rid: u64, now: u64) {
        let Some(Pending::Send { local, sent_ns, .. }) = self.inflight.remove(&rid) else {
            return;
        };
        self.last_activity_ns = now;
        self.res.acked += 1;
        if self.conns[local].stall == Stall::Never {
            self.ack_h.saturating_record((now - sent_ns) / 1000);
        }
    }

    /// A room message that reached connection `i`: counted and, stamped,
    /// timed like a delivery. No cursor, no ack, no sync: a room keeps no
    /// per-member state.
    fn take_room_entry(&mut self, i: usize, stamp: Option<u64>, now: u64) {
        self.res.entries += 1;
        let Some(ts) = stamp else { return };
        self.last_activity_ns = now;
        self.res.delivered += 1;
        if self.phase == Phase::Main {
            self.res.delivered_main += 1;
        }
        if self.conns[i].stall == Stall::Never {
            self.deliver_h
                .saturating_record(now.saturating_sub(ts) / 1000);
        }
    }

    fn on_request_error(&mut self, rid: u64, code: String, now: u64) {
        match self.inflight.remove(&rid) {
            Some(Pending::RoomCreate) => {}
            Some(Pending::RoomJoin) => {
                self.res.setup_errors += 1;
                self.setup_open = self.setup_open.saturating_sub(1);
            }
            Some(Pending::Send { op, .. }) => {
                self.res.send_failed += 1;
                *self.res.send_fail_codes.entry(code.clone()).or_default() += 1;
                self.last_activity_ns = now;
                if let Some(h) = &mut self.history
                    && let Some(op) = op.and_then(|k| h.sends.get_mut(k))
                {
                    op.outcome = Outcome::Fail { code };
                }
            }
            Some(p @ Pending::Setup { .. }) => {
                self.inflight.insert(rid, p);
                self.on_setup_step(rid, Some(code), now);
            }
            Some(Pending::Sync { local, fin }) => {
                if let Some(d) = self.conns[local].dev.as_mut() {
                    d.sync_rid = 0;
                    if fin {
                        d.final_done = true;
                    }
                }
            }
            None => {}
        }
    }

    /// Entries decoded by prost (a sync page, or a push the in-place reader
    /// left to prost).
    fn on_entries(&mut self, i: usize, entries: Vec<pb::Entry>, via: Via, now: u64) {
        for e in entries {
            let stamp = wire::entry_stamp(&e);
            self.take_entry(i, &e.conversation_id, e.seq, stamp, via, now);
        }
    }

    /// One entry that reached device `i`: advances its cursor, counts and
    /// times a stamped delivery, logs it for `--verify`, and (for a push)
    /// notes the cursor for the batch's `DeliverAck`.
    fn take_entry(
        &mut self,
        i: usize,
        conv: &str,
        seq: u64,
        stamp: Option<u64>,
        via: Via,
        now: u64,
    ) {
        let in_run = matches!(self.phase, Phase::Main | Phase::Drain);
        let has_dev = self.conns[i].dev.is_some();
        // New to this device, or a retransmission of an entry it holds?
        let fresh = match self.conns[i].dev.as_mut() {
            Some(dev) => {
                // Look up by &str first: a String is built only for a new conversation.
                let cur = match dev.cursors.get_mut(conv) {
                    Some(c) => c,
                    None => dev.cursors.entry(conv.to_owned()).or_default(),
                };
                let fresh = cur.take(seq, now);
                if via == Via::Push {
                    cur.touched = true;
                }
                fresh
            }
            None => true,
        };
        if fresh && via != Via::Ack {
            self.res.entries += 1;
        }
        if via != Via::Ack
            && let Some(ts) = stamp
        {
            self.last_activity_ns = now;
            if fresh {
                self.res.delivered += 1;
                if self.phase == Phase::Main {
                    self.res.delivered_main += 1;
                }
                if self.conns[i].stall == Stall::Never {
                    self.deliver_h
                        .saturating_record(now.saturating_sub(ts) / 1000);
                }
            } else {
                self.res.redelivered += 1;
            }
        }
        if !has_dev {
            return;
        }
        if in_run && let Some(h) = &mut self.history {
            if h.deliveries.len() >= HISTORY_ENTRIES_MAX {
                self.history_full = true;
                return;
            }
            let (user, device) = self.spec.plan.identity(self.spec.slot_start + i as u32);
            h.deliveries.push(Delivery {
                user,
                device,
                conv: conv.to_owned(),
                seq,
                at_ns: now,
                via,
            });
        }
    }

    /// After a read batch: acks the device's pushes now if half the
    /// server's window is pending (or acks are not delayed), else makes sure
    /// an ack is due at most `--ack-delay-ms` from now.
    fn ack_or_defer(&mut self, i: usize, now: u64) {
        let delay_ns = u64::from(self.spec.plan.ack_delay_ms) * 1_000_000;
        let Some(d) = self.conns[i].dev.as_mut() else {
            return;
        };
        if d.unacked_frames == 0 {
            return;
        }
        if delay_ns == 0 || d.unacked_frames >= d.ack_frames_max.max(1) {
            return self.send_acks(i);
        }
        if !d.ack_queued {
            d.ack_queued = true;
            self.ack_queue.push_back((now + delay_ns, i));
        }
    }

    /// Sends the acks that came due (each device at most once per turn).
    fn acks_due(&mut self, now: u64) {
        while let Some(&(at, i)) = self.ack_queue.front() {
            if at > now {
                break;
            }
            self.ack_queue.pop_front();
            if let Some(d) = self.conns[i].dev.as_mut() {
                d.ack_queued = false;
            }
            if self.conns[i].state == State::Live {
                self.send_acks(i);
                self.flush(i, now);
            }
        }
    }

    /// Queues one cumulative `DeliverAck`: for every conversation a push
    /// touched since the last one, the contiguous cursor now (so a
    /// retransmitted push is acked again, as the server needs). Writes it
    /// from the cursor map, without building a message.
    fn send_acks(&mut self, i: usize) {
        let rid = self.rid();
        let c = &mut self.conns[i];
        let Some(d) = c.dev.as_mut() else { return };
        d.unacked_frames = 0;
        let touched = d
            .cursors
            .iter()
            .filter(|(_, c)| c.touched && c.contiguous > 0)
            .map(|(k, c)| (k.as_str(), c.contiguous));
        if touched.clone().next().is_some() {
            push::encode_deliver_ack(rid, touched, &mut c.wbuf);
        }
        for cur in d.cursors.values_mut() {
            cur.touched = false;
        }
    }

    fn gap_sync(&mut self, i: usize, now: u64) {
        self.sync_gaps(i, now, GAP_GRACE_MS * 1_000_000);
    }

    /// Syncs the conversations whose gap is older than `grace` ns.
    fn sync_gaps(&mut self, i: usize, now: u64, grace: u64) {
        let Some(dev) = self.conns[i].dev.as_ref() else {
            return;
        };
        if dev.sync_rid != 0 || self.spec.plan.proto != Proto::Tern {
            return;
        }
        let cursors: Vec<pb::Cursor> = dev
            .cursors
            .iter()
            .filter(|(_, c)| c.gap_since_ns != 0 && now - c.gap_since_ns >= grace)
            .map(|(k, c)| pb::Cursor {
                conversation_id: k.clone(),
                seq: c.contiguous,
            })
            .collect();
        if cursors.is_empty() {
            return;
        }
        let rid = self.rid();
        if let Some(d) = self.conns[i].dev.as_mut() {
            d.sync_rid = rid;
        }
        self.inflight.insert(
            rid,
            Pending::Sync {
                local: i,
                fin: false,
            },
        );
        self.queue(i, now, |out| {
            frame(rid, Body::Sync(pb::SyncRequest { cursors, limit: 0 }), out)
        });
    }

    fn on_sync(&mut self, i: usize, rid: u64, r: pb::SyncResult, now: u64) {
        let Some(Pending::Sync { local, fin }) = self.inflight.remove(&rid) else {
            return;
        };
        if local != i {
            // A server answered another connection's request id here: not ours to apply.
            return;
        }
        if !fin {
            if let Some(d) = self.conns[i].dev.as_mut() {
                d.sync_rid = 0;
            }
            let more = r.more;
            self.on_entries(i, r.entries, Via::Sync, now);
            if more {
                // The server has more after this page: fetch it now, as a
                // client catching up would, not after the next grace.
                self.sync_gaps(i, now, 0);
            }
            return;
        }
        let Some(d) = self.conns[i].dev.as_mut() else {
            return;
        };
        for e in r.entries {
            let c = d
                .final_cursors
                .entry(e.conversation_id.clone())
                .or_default();
            *c = (*c).max(e.seq);
            d.final_entries.push(LogEntry {
                conv: e.conversation_id,
                seq: e.seq,
                sender: e.sender,
                cmid: e.client_msg_id,
            });
        }
        d.final_pages += 1;
        if r.more && d.final_pages < FINAL_SYNC_PAGES_MAX {
            self.final_sync(i, now);
        } else {
            d.final_done = !r.more;
            if r.more {
                // Out of pages: stays unsynced, and the checker says so.
                d.final_pages = FINAL_SYNC_PAGES_MAX;
                d.final_done = true;
                d.final_entries.clear();
            }
        }
    }

    fn final_sync(&mut self, i: usize, now: u64) {
        let Some(d) = self.conns[i].dev.as_ref() else {
            return;
        };
        let cursors: Vec<pb::Cursor> = d
            .final_cursors
            .iter()
            .map(|(k, &seq)| pb::Cursor {
                conversation_id: k.clone(),
                seq,
            })
            .collect();
        let rid = self.rid();
        self.inflight.insert(
            rid,
            Pending::Sync {
                local: i,
                fin: true,
            },
        );
        self.queue(i, now, |out| {
            frame(rid, Body::Sync(pb::SyncRequest { cursors, limit: 0 }), out)
        });
    }

    // ---- setup ------------------------------------------------------------

    fn start_setup(&mut self, now: u64) {
        let plan = self.spec.plan.clone();
        for i in 0..self.conns.len() {
            let Role::Group { group, member } = plan.role(self.slot(i)) else {
                continue;
            };
            let live = self.conns[i].state == State::Live;
            match plan.proto {
                Proto::Tern if plan.scenario == Scenario::Room => {
                    // Senders post without joining; every other member
                    // creates the room (all but one get ALREADY_EXISTS) and
                    // joins it on the same connection, so its join runs
                    // after a create, in order.
                    if member < plan.group_senders {
                        continue;
                    }
                    if !live {
                        self.res.setup_errors += 1;
                        continue;
                    }
                    let room_id = plan.group_id(group);
                    let create = pb::RoomCreate {
                        room_id: room_id.clone(),
                        name: format!("load {group}"),
                        kind: pb::RoomKind::Chat as i32,
                        admins: Vec::new(),
                    };
                    let rid = self.rid();
                    self.inflight.insert(rid, Pending::RoomCreate);
                    self.queue(i, now, |out| frame(rid, Body::RoomCreate(create), out));
                    let rid = self.rid();
                    self.inflight.insert(rid, Pending::RoomJoin);
                    self.setup_open += 1;
                    self.queue(i, now, |out| {
                        frame(rid, Body::RoomJoin(pb::RoomJoin { room_id }), out);
                    });
                }
                Proto::Tern if member == 0 => {
                    if !live {
                        self.res.setup_errors += 1;
                        continue;
                    }
                    let upto = plan.group_size.min(1 + GROUP_BATCH_MEMBERS_MAX);
                    let members = (1..upto)
                        .map(|m| {
                            plan.identity(plan.slot_of(Role::Group { group, member: m }))
                                .0
                        })
                        .collect();
                    let rid = self.rid();
                    self.inflight.insert(
                        rid,
                        Pending::Setup {
                            group,
                            next_member: upto,
                        },
                    );
                    self.setup_open += 1;
                    let create = pb::GroupCreate {
                        group_id: plan.group_id(group),
                        name: format!("load {group}"),
                        members,
                        join_policy: pb::JoinPolicy::InviteOnly as i32,
                        history_visible: true,
                    };
                    self.queue(i, now, |out| frame(rid, Body::GroupCreate(create), out));
                }
                Proto::Mqtt | Proto::Nats | Proto::Redis
                    if member >= plan.group_senders && live =>
                {
                    let topic = peer_topic(plan.proto, &plan.group_id(group));
                    if let Some(d) = self.conns[i].dev.as_mut() {
                        d.sub_pending = true;
                    }
                    self.setup_open += 1;
                    self.queue(i, now, |out| match plan.proto {
                        Proto::Mqtt => wire::mqtt_subscribe(1, &topic, out),
                        Proto::Redis => wire::redis_subscribe(&topic, out),
                        _ => wire::nats_subscribe(&topic, 1, out),
                    });
                }
                _ => {}
            }
        }
    }

    fn on_setup_step(&mut self, rid: u64, err: Option<String>, now: u64) {
        let Some(Pending::Setup { group, next_member }) = self.inflight.remove(&rid) else {
            return;
        };
        let plan = &self.spec.plan;
        if err.is_some() || next_member >= plan.group_size {
            if err.is_some() {
                self.res.setup_errors += 1;
            }
            self.setup_open -= 1;
            return;
        }
        let upto = plan.group_size.min(next_member + GROUP_BATCH_MEMBERS_MAX);
        let user_ids = (next_member..upto)
            .map(|m| {
                plan.identity(plan.slot_of(Role::Group { group, member: m }))
                    .0
            })
            .collect();
        let owner = plan.slot_of(Role::Group { group, member: 0 });
        let invite = pb::GroupInvite {
            group_id: plan.group_id(group),
            user_ids,
        };
        let i = (owner - self.spec.slot_start) as usize;
        let rid = self.rid();
        self.inflight.insert(
            rid,
            Pending::Setup {
                group,
                next_member: upto,
            },
        );
        self.queue(i, now, |out| frame(rid, Body::GroupInvite(invite), out));
    }

    // ---- peers ------------------------------------------------------------

    fn on_peer(&mut self, i: usize, p: PeerPacket, now: u64) {
        let hb = u64::from(self.plan().peer_heartbeat_ms);
        let state = self.conns[i].state;
        match p {
            PeerPacket::ConnAck(0) if state == State::Handshaking => self.became_live(i, hb, now),
            PeerPacket::ConnAck(rc) => self.fail(i, &format!("connack:{rc}"), now),
            PeerPacket::Pong if state == State::Handshaking => self.became_live(i, hb, now),
            PeerPacket::SubAck => self.sub_acked(i),
            PeerPacket::Pong => {
                // NATS confirms a SUB with the PONG of the PING after it;
                // Redis confirms SUBSCRIBE itself and answers in order, so
                // a heartbeat's pong there is only a pong.
                let sub = self.plan().proto != Proto::Redis
                    && self.conns[i].dev.as_ref().is_some_and(|d| d.sub_pending);
                if sub {
                    self.sub_acked(i);
                } else {
                    self.conns[i].ping_sent_ns = 0;
                    self.res.pongs += 1;
                }
            }
            PeerPacket::ServerPing => self.queue(i, now, wire::nats_pong),
            PeerPacket::Message(ts) => {
                self.res.delivered += 1;
                if self.phase == Phase::Main {
                    self.res.delivered_main += 1;
                }
                self.last_activity_ns = now;
                if let Some(ts) = ts {
                    self.deliver_h
                        .saturating_record(now.saturating_sub(ts) / 1000);
                }
            }
            PeerPacket::Err(e) => {
                let r = format!("peer_error:{}", e.chars().take(40).collect::<String>());
                if state == State::Live {
                    self.close(i, &r, now);
                } else {
                    self.fail(i, &r, now);
                }
            }
            PeerPacket::Ignored => {}
        }
    }

    fn sub_acked(&mut self, i: usize) {
        if let Some(d) = self.conns[i].dev.as_mut()
            && d.sub_pending
        {
            d.sub_pending = false;
            self.setup_open = self.setup_open.saturating_sub(1);
        }
    }

    // ---- workload ---------------------------------------------------------

    fn send_due(&mut self, now: u64) {
        let mut n = 0;
        while let Some(&Reverse((at, k))) = self.send_queue.peek() {
            if at > now || n >= SEND_BATCH_MAX {
                break;
            }
            self.send_queue.pop();
            n += 1;
            let s = &mut self.senders[k];
            s.n += 1;
            let next = at + s.period_ns;
            let (local, to, seq) = (s.local, s.to.clone(), s.n);
            if next < self.main_end_ns {
                self.send_queue.push(Reverse((next, k)));
            }
            self.send_one(local, to, k, seq, now);
        }
    }

    fn send_one(&mut self, i: usize, to: SendTo, sender: usize, n: u64, now: u64) {
        if self.conns[i].state != State::Live || self.inflight.len() >= INFLIGHT_SENDS_MAX {
            self.res.send_skipped += 1;
            return;
        }
        self.res.sent += 1;
        let op = if self.plan().proto == Proto::Tern {
            let slot = self.slot(i);
            let cmid = format!("{}.{slot}.{n}", self.plan().run_id);
            self.log_send(i, &cmid, &to, now)
        } else {
            None
        };
        self.transmit(i, to, sender, n, now, op, now);
    }

    /// Writes send number `n` of `sender` (first sent at `sent_ns`, logged
    /// as `op`) on connection `i`: its `client_msg_id` is a function of the
    /// slot and `n`, so a resend repeats it.
    #[allow(clippy::too_many_arguments)]
    fn transmit(
        &mut self,
        i: usize,
        to: SendTo,
        sender: usize,
        n: u64,
        sent_ns: u64,
        op: Option<usize>,
        now: u64,
    ) {
        let proto = self.plan().proto;
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        wire::stamp(sent_ns, self.plan().payload_bytes as usize, &mut payload);
        match proto {
            Proto::Tern => {
                let slot = self.slot(i);
                let cmid = format!("{}.{slot}.{n}", self.plan().run_id);
                let rid = self.rid();
                self.inflight.insert(
                    rid,
                    Pending::Send {
                        local: i,
                        sent_ns,
                        op,
                        sender,
                        n,
                    },
                );
                // The stamp is ASCII, so this is valid UTF-8.
                let text = String::from_utf8_lossy(&payload).into_owned();
                if let SendTo::Room(room_id) = to {
                    let post = pb::RoomPost {
                        room_id,
                        content: Some(pb::Content {
                            kind: Some(pb::content::Kind::Text(pb::Text { text })),
                        }),
                        client_msg_id: cmid,
                    };
                    self.queue(i, now, |out| frame(rid, Body::RoomPost(post), out));
                    self.payload = payload;
                    return;
                }
                let send = pb::Send {
                    client_msg_id: cmid,
                    to: Some(match to {
                        SendTo::User(u) => pb::send::To::UserId(u),
                        SendTo::Group(g) | SendTo::Room(g) => pb::send::To::GroupId(g),
                    }),
                    content: Some(pb::Content {
                        kind: Some(pb::content::Kind::Text(pb::Text { text })),
                    }),
                    ..Default::default()
                };
                self.queue(i, now, |out| frame(rid, Body::Send(send), out));
            }
            Proto::Mqtt | Proto::Nats | Proto::Redis => {
                let target = match &to {
                    SendTo::User(u) | SendTo::Group(u) | SendTo::Room(u) => peer_topic(proto, u),
                };
                self.queue(i, now, |out| match proto {
                    Proto::Mqtt => wire::mqtt_publish(&target, &payload, out),
                    Proto::Redis => wire::redis_publish(&target, &payload, out),
                    _ => wire::nats_publish(&target, &payload, out),
                });
            }
        }
        self.payload = payload;
    }

    fn log_send(&mut self, i: usize, cmid: &str, to: &SendTo, now: u64) -> Option<usize> {
        let (sender, device) = self.spec.plan.identity(self.slot(i));
        let h = self.history.as_mut()?;
        if h.sends.len() >= HISTORY_ENTRIES_MAX {
            self.history_full = true;
            return None;
        }
        h.sends.push(SendOp {
            sender,
            device,
            cmid: cmid.to_string(),
            to: match to {
                SendTo::User(u) | SendTo::Group(u) | SendTo::Room(u) => u.clone(),
            },
            invoke_ns: now,
            outcome: Outcome::Timeout,
        });
        Some(h.sends.len() - 1)
    }

    fn storm(&mut self, now: u64) {
        let plan = &self.spec.plan;
        if self.storm_done
            || plan.storm_fraction <= 0.0
            || now < self.main_start_ns + u64::from(plan.storm_at_s) * 1_000_000_000
        {
            return;
        }
        let (jitter_ms, tern) = (u64::from(plan.jitter_ms), plan.proto == Proto::Tern);
        let per_mille = (plan.storm_fraction.min(1.0) * 1000.0) as u64;
        self.storm_done = true;
        self.storm_drop_ns = now;
        let slot_start = self.spec.slot_start;
        for i in 0..self.conns.len() {
            let slot = u64::from(slot_start) + i as u64;
            // A fixed spread over slots: (slot * a prime) mod 1000.
            if self.conns[i].state != State::Live || (slot * 7919) % 1000 >= per_mille {
                continue;
            }
            let delay = if jitter_ms == 0 {
                0
            } else {
                rand::rng().random_range(0..=jitter_ms)
            };
            if tern && self.conns[i].dev.is_some() {
                // A chatting device comes back as after a server close:
                // resumes from its cursors, resends what was unanswered.
                self.end_live(i, "storm");
                self.leave(i, delay, now);
                continue;
            }
            self.drop_sock(i);
            self.live -= 1;
            self.res.dropped += 1;
            let c = &mut self.conns[i];
            c.state = State::Pending;
            c.dropped_at_ns = now;
            c.attempt = 0;
            self.retries.push(Reverse((now + delay * 1_000_000, i)));
        }
    }

    /// `--stall`: at `stall_at_s` into the main phase, the stalling devices
    /// stop reading (they still write: see [`Self::stall_writes`]).
    fn stall_start(&mut self, now: u64) {
        let plan = &self.spec.plan;
        if plan.stall_devices == 0
            || now < self.main_start_ns + u64::from(plan.stall_at_s) * 1_000_000_000
        {
            return;
        }
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.stall == Stall::Planned && c.state == State::Live {
                c.stall = Stall::Since(now);
                self.res.stalled += 1;
                self.stall_writes(i, now);
            }
        }
    }

    /// At the end of the main phase, devices still stalled read again (what
    /// waits in their socket is then read as a late batch).
    fn stall_end(&mut self, now: u64) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            match c.stall {
                Stall::Since(_) => {
                    c.stall = Stall::Over;
                    if c.sock.is_some() {
                        self.on_readable(i, false, now);
                    }
                }
                Stall::Planned => c.stall = Stall::Over,
                Stall::Never | Stall::Over => {}
            }
        }
    }

    /// A stalled device keeps writing as a client whose reading stopped but
    /// whose requests go on would: full-page syncs of its conversation from
    /// the start, whose answers pile up in its server's outbox (not in
    /// `inflight`: nobody reads them). Bounded per sweep and by its own
    /// unwritten bytes.
    fn stall_writes(&mut self, i: usize, now: u64) {
        if self.conns[i].wbuf.len() >= STALL_WBUF_BYTES_MAX {
            return self.flush(i, now);
        }
        let Some(conv) = self.spec.plan.conversations(self.slot(i)).pop() else {
            return;
        };
        for _ in 0..STALL_SYNCS_PER_SWEEP {
            let rid = self.rid();
            let cursors = vec![pb::Cursor {
                conversation_id: conv.clone(),
                seq: 0,
            }];
            frame(
                rid,
                Body::Sync(pb::SyncRequest { cursors, limit: 0 }),
                &mut self.conns[i].wbuf,
            );
        }
        self.flush(i, now);
    }

    fn end_drain(&mut self, now: u64) {
        // Sends still unanswered are timeouts from here on, and stay
        // `Timeout` in the log: an ack arriving after a device's final sync
        // was requested would otherwise read as a lost message.
        let before = self.inflight.len();
        self.inflight
            .retain(|_, p| !matches!(p, Pending::Send { .. }));
        self.res.send_timeouts += (before - self.inflight.len()) as u64;
        // Sends of a connection that never came back stay `Timeout` too.
        self.res.send_timeouts += self.resend.len() as u64;
        self.resend.clear();
        if !self.spec.plan.verify || self.spec.plan.proto != Proto::Tern {
            self.phase = Phase::Done;
            return;
        }
        self.phase = Phase::FinalSync;
        self.phase_deadline_ns = now + FINAL_SYNC_MS_MAX * 1_000_000;
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Live && self.conns[i].dev.is_some() {
                self.final_sync(i, now);
            }
        }
    }

    fn finish(mut self) -> Result<(), WorkerError> {
        if self.storm_drop_ns != 0
            && self.res.dropped > 0
            && self.res.reconnected == self.res.dropped
        {
            self.res.reconnect_all_ms =
                Some((self.last_reconnect_ns - self.storm_drop_ns) / 1_000_000);
        }
        // Sends still unanswered (a Stop before the drain ended) stay `Timeout`.
        self.res.send_timeouts += self
            .inflight
            .values()
            .filter(|p| matches!(p, Pending::Send { .. }))
            .count() as u64
            + self.resend.len() as u64;
        if let Some(mut h) = self.history.take() {
            for i in 0..self.conns.len() {
                let slot = self.slot(i);
                let Some(d) = self.conns[i].dev.as_mut() else {
                    continue;
                };
                let (user, device) = self.spec.plan.identity(slot);
                h.devices.push(DeviceLog {
                    user,
                    device,
                    convs: self.spec.plan.conversations(slot),
                    synced: d.final_done && !self.history_full,
                    entries: std::mem::take(&mut d.final_entries),
                });
            }
            self.res.history = Some(h);
        }
        self.res.connect_hist = encode_hist(&self.connect_h);
        self.res.ack_hist = encode_hist(&self.ack_h);
        self.res.deliver_hist = encode_hist(&self.deliver_h);
        self.res.reconnect_hist = encode_hist(&self.reconnect_h);
        let res = std::mem::take(&mut self.res);
        self.emit(&WorkerMsg::Result(Box::new(res)))?;
        // Close every socket before exiting so the server sees FINs, not a crash.
        for i in 0..self.conns.len() {
            self.drop_sock(i);
        }
        Ok(())
    }
}

/// A group's topic on a peer: `tl/<id>` for MQTT, `tl.<id>` for a NATS
/// subject or a Redis channel.
fn peer_topic(proto: Proto, id: &str) -> String {
    match proto {
        Proto::Mqtt => format!("tl/{id}"),
        _ => format!("tl.{id}"),
    }
}

fn frame(request_id: u64, body: Body, out: &mut Vec<u8>) {
    let f = pb::Frame {
        request_id,
        body: Some(body),
    };
    out.reserve(f.encoded_len() + codec::PREFIX_BYTES_MAX);
    codec::encode_frame(&f, out);
}

/// A short, stable reason name for an I/O error (the keys of `fail_reasons`).
pub fn reason_of(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
        Some(libc::EADDRINUSE) => "addr_in_use".into(),
        Some(libc::EMFILE) => "fd_limit_process".into(),
        Some(libc::ENFILE) => "fd_limit_system".into(),
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "no_memory".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        Some(n) => format!("errno_{n}"),
        None => e.kind().to_string().replace(' ', "_"),
    }
}

/// Opens a non-blocking TCP connection from `src` (port chosen at connect
/// time, `IP_BIND_ADDRESS_NO_PORT`) to `dst`.
/// `--tls`: hands the connection's queued plaintext (`wbuf`) to its TLS
/// client and writes the records it has to the socket, as far as the socket
/// takes them; what the TLS client cannot take yet stays in `wbuf`.
fn tls_flush(
    tls: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    wbuf: &mut Vec<u8>,
) -> Result<(), String> {
    if !wbuf.is_empty() {
        let n = tls.writer().write(wbuf).map_err(|e| format!("tls:{e}"))?;
        wbuf.drain(..n);
        if wbuf.is_empty() && wbuf.capacity() > 4096 {
            *wbuf = Vec::new();
        }
    }
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err("write_zero".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(reason_of(&e)),
        }
    }
    if wbuf.len() > WRITE_BUFFER_BYTES_MAX {
        return Err("write_buffer_full".into());
    }
    Ok(())
}

pub fn connect(src: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(src) = src {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd, a pointer to a c_int and its size, as setsockopt expects.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        s.bind(&SockAddr::from(SocketAddr::new(src.into(), 0)))?;
    }
    match s.connect(&SockAddr::from(dst)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_hex_v2() {
        // Proves a histogram encoded for the parent decodes to the same counts.
        let mut h = hist();
        for v in [1u64, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = decode_hist(&encode_hist(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert!(decode_hist("zz").is_none());
        assert!(decode_hist("").is_none());
    }

    #[test]
    fn cursor_tracks_contiguity_and_gaps() {
        // Proves the run-time cursor starts at the first seq seen, holds back
        // at a gap (noting when it opened), and closes it when filled.
        let mut c = Cursor::default();
        assert!(c.take(5, 1));
        assert_eq!(c.contiguous, 5);
        assert!(!c.take(5, 2));
        assert!(c.take(7, 3));
        assert_eq!((c.contiguous, c.gap_since_ns), (5, 3));
        assert!(c.take(6, 4));
        assert_eq!((c.contiguous, c.gap_since_ns), (7, 0));
    }

    #[test]
    fn cursor_survives_the_largest_seq() {
        // Proves a server sending seq u64::MAX cannot overflow the cursor.
        let mut c = Cursor::default();
        assert!(c.take(u64::MAX - 1, 1));
        assert!(c.take(u64::MAX, 2));
        assert_eq!(c.contiguous, u64::MAX);
        assert!(!c.take(u64::MAX, 3));
    }

    #[test]
    fn connect_binds_a_source_address_without_a_port() {
        // Proves a connection from 127.0.0.2 reaches a loopback listener and
        // the listener sees that source address.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c = connect(Some(Ipv4Addr::new(127, 0, 0, 2)), addr).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // Nothing listens there once the listener above is dropped.
        let _ = refused;
    }
}
