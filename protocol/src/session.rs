//! The per-connection session state machine: handshake, heartbeat, outbox and
//! the window of unacknowledged deliveries.
//!
//! A [`Session`] is sans-I/O and deterministic (the quinn-proto pattern): it
//! never touches a socket, never reads a clock, never draws a random number,
//! never logs and never blocks. Input comes in through `handle_*`, output goes
//! out through `poll_*`, and every call that depends on time takes `now_ms`:
//! milliseconds since a monotonic origin the driver picks (the same origin for
//! every call on a session). Wall-clock time, which the protocol shows to
//! clients (`Pong.server_time_ms`, `Welcome.server_time_ms`), is passed in
//! separately as `unix_ms`.
//!
//! The configuration is not stored in a session: the driver keeps one
//! [`SessionConfig`] per shard and passes it by reference, which keeps a
//! session at most [`SESSION_BYTES_MAX`] bytes. An idle session (nothing
//! queued, nothing in flight) owns no heap memory: the outbox and the window
//! are dropped back to unallocated `VecDeque`s whenever they empty.
//!
//! # Lifecycle
//!
//! [`Lifecycle::Handshaking`] → [`Lifecycle::Authenticating`] →
//! [`Lifecycle::Live`] → [`Lifecycle::Draining`] → [`Lifecycle::Closed`].
//! Every way out of the handshake other than success (a first frame that is
//! not `auth`, a wrong protocol version, an auth deadline that passes, a token
//! the driver refuses) queues an `Error` frame and drains; a live session
//! drains after a heartbeat timeout, a full outbox (slow consumer) or
//! [`Session::kick`]. Draining ends in `Closed` once the driver has taken the
//! last queued frame, or at `drain_timeout_ms`.
//!
//! # Driving a session
//!
//! 1. On accept: [`Session::new`], then arm the shard's timing wheel at
//!    [`Session::poll_timeout`].
//! 2. For every frame read from the socket: [`Session::handle_body`] with the
//!    frame's body (a WebSocket message, or a TCP frame without its length
//!    prefix). A driver that decodes with [`codec::decode_client_frame`]
//!    itself calls [`Session::handle_frame`] with the frame, or
//!    [`Session::handle_decode_error`] with the error. On EOF or a socket
//!    error: [`Session::handle_peer_closed`].
//! 3. When the timing wheel fires: [`Session::handle_timeout`].
//! 4. After **any** `handle_*` call, and after [`Session::kick`],
//!    [`Session::queue_frame`], [`Session::queue_encoded`] or
//!    [`Session::push_deliver`], in this order:
//!    1. drain [`Session::poll_event`]: hand [`Event::Authenticate`] to the
//!       token verifier, which answers with [`Session::handle_auth_ok`] or
//!       [`Session::handle_auth_err`]; hand [`Event::Request`] to the backend.
//!       The session holds one event at a time, so this must happen before
//!       the next `handle_*` call (see [`Event`]);
//!    2. drain [`Session::poll_transmit`] while the socket takes bytes, adding
//!       the TCP length prefix or the WebSocket header to each body;
//!    3. re-arm the timer at [`Session::poll_timeout`];
//!    4. if [`Session::is_closed`]: finish writing what was taken, close the
//!       socket, and count [`Session::close_reason`].
//! 5. Whenever convenient (e.g. once per event-loop turn, and at close): add
//!    [`Session::take_stats`] to the shard's counters.
//!
//! # Deliveries
//!
//! [`Session::push_deliver`] queues a pre-encoded `Deliver` frame body (one
//! [`Bytes`] shared by every recipient of a fan-out) and keeps it in the
//! window until cumulative `deliver_ack` cursors cover every conversation it
//! carries. Unacked frames are sent again after `retransmit_initial_ms`, then
//! after twice the previous wait (capped at `retransmit_max_ms`), at most
//! `retransmit_attempts_max` times; when the wait after the last retransmit
//! passes too, the frame leaves the window and is counted in
//! [`SessionStats::dropped_after_retries`]. Push is a fast path, not the source
//! of truth: the client fills any gap with `sync`, so a dropped frame delays a
//! message and never loses it.
//!
//! The defaults resend nothing (`retransmit_attempts_max` = 0): over TCP and
//! WebSocket the bytes of a frame written once either arrive or the
//! connection fails (and the client resyncs on reconnect), so a resend on the
//! same connection can only duplicate. Under load it did worse: clients that
//! acked late got every frame again, which loaded them further (measured in
//! docs/benchmarks.md, fan-out). An unacked frame then holds its window slot
//! for `retransmit_initial_ms` (10 s) and leaves it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::PROTOCOL_VERSION;
use crate::codec::{self, DecodeError};
use crate::pb::{self, ErrorCode, KickReason, frame::Body};
use crate::validate::{ClientLimits, Refusal, check_client_frame};

/// The most bytes a [`Session`] may take (checked by a test): a shard holds up
/// to millions of them.
pub const SESSION_BYTES_MAX: usize = 72;

/// Smallest valid [`SessionConfig::heartbeat_timeout_factor_pct`].
pub const HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN: u32 = 150;
/// Largest valid [`SessionConfig::heartbeat_timeout_factor_pct`].
pub const HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX: u32 = 300;
/// Largest valid [`SessionConfig::heartbeat_jitter_pct`].
pub const HEARTBEAT_JITTER_PCT_MAX: u32 = 50;
/// Largest valid [`SessionConfig::retransmit_attempts_max`].
pub const RETRANSMIT_ATTEMPTS_LIMIT_MAX: u32 = 16;

/// Bounds and timers of every session of a shard; passed by reference into
/// the calls that need it, never stored in a session.
///
/// [`SessionConfig::validate`] checks the values once at start-up. A session
/// given an invalid config still behaves in a defined way (factors and
/// percentages are clamped into their valid ranges, arithmetic saturates), it
/// just does not behave as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// A new connection must send `auth` and be accepted within this, or it
    /// gets `ERROR_CODE_AUTH_TIMEOUT` and is closed. Default 10_000.
    pub auth_timeout_ms: u64,
    /// The ping interval announced in `Welcome`. At most `u32::MAX` (its wire
    /// type). Default 30_000.
    pub heartbeat_interval_ms: u64,
    /// Silence, in percent of the heartbeat interval, after which a live
    /// connection is closed: 200 closes after two intervals without any frame.
    /// Valid 150..=300. Default 200.
    pub heartbeat_timeout_factor_pct: u32,
    /// Each connection's auth and silence deadlines are extended by a fixed
    /// share, drawn from the driver's seed, of up to this percent of their
    /// nominal length, so connections that arrived together do not time out
    /// together. The jitter only ever lengthens a deadline: no client is
    /// closed before the time it was promised. Valid 0..=50. Default 10.
    pub heartbeat_jitter_pct: u32,
    /// `Deliver` frames in flight (sent, not yet acked) per connection; more
    /// are refused with [`QueueError::WindowFull`]. Announced in `Welcome`.
    /// Default 256: a push skipped for a full window is fetched by the
    /// client's sync, and when many members of a large group fall behind at
    /// once their syncs swamp the backend, so the window must cover a
    /// loaded client's ack round trip at high push rates (measured: at 64,
    /// G = 1,000 × 1,000 msg/s collapsed to 36k deliveries/s; at 256 all
    /// 994k/s arrived, docs/benchmarks.md). A frame in flight costs its
    /// ~48-byte window entry, only while in flight.
    pub unacked_window_max: usize,
    /// Wait before the first retransmit of an unacked `Deliver`; each further
    /// wait doubles. With no retransmits, how long an unacked `Deliver`
    /// holds its window slot. Default 10_000.
    pub retransmit_initial_ms: u64,
    /// Cap on the doubled retransmit wait. Must be at least
    /// `retransmit_initial_ms`. Default 16_000.
    pub retransmit_max_ms: u64,
    /// Retransmits of one `Deliver` before it leaves the window (counted in
    /// [`SessionStats::dropped_after_retries`]; the client relies on sync).
    /// Valid 0..=16. Default 0: see the module documentation, "Deliveries".
    pub retransmit_attempts_max: u32,
    /// Frames waiting in the outbox before the connection counts as a slow
    /// consumer and is kicked. Default 256.
    pub outbox_frames_max: usize,
    /// Bytes waiting in the outbox before the connection counts as a slow
    /// consumer and is kicked. At most `u32::MAX`. Default 1_048_576 (1 MiB).
    pub outbox_bytes_max: usize,
    /// Largest frame body a client may send, checked before decoding.
    /// Announced in `Welcome`. Default 65_536
    /// ([`codec::FRAME_BYTES_MAX_DEFAULT`]).
    pub frame_bytes_max: usize,
    /// What one client frame may carry, checked by [`check_client_frame`]
    /// before the session acts on it. Its `text_bytes_max` (largest `Text`
    /// content) is announced in `Welcome`: default 16_384 here, the figure
    /// docs/protocol.md promises; the other fields keep
    /// [`ClientLimits::default`].
    pub client_limits: ClientLimits,
    /// Largest page a `sync` or `history` request may ask for. Announced in
    /// `Welcome`. Default 200.
    pub page_entries_max: usize,
    /// How long a draining session waits for the driver to take its last
    /// frames (the client to read them) before it closes anyway. Default 5_000.
    pub drain_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            auth_timeout_ms: 10_000,
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_factor_pct: 200,
            heartbeat_jitter_pct: 10,
            unacked_window_max: 256,
            retransmit_initial_ms: 10_000,
            retransmit_max_ms: 16_000,
            retransmit_attempts_max: 0,
            outbox_frames_max: 256,
            outbox_bytes_max: 1 << 20,
            frame_bytes_max: codec::FRAME_BYTES_MAX_DEFAULT,
            client_limits: ClientLimits {
                text_bytes_max: 16_384,
                ..ClientLimits::default()
            },
            page_entries_max: 200,
            drain_timeout_ms: 5_000,
        }
    }
}

/// Why a [`SessionConfig`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `heartbeat_interval_ms` is 0 or does not fit the `u32` of `Welcome`.
    #[error("heartbeat_interval_ms must be 1..=4294967295")]
    HeartbeatInterval,
    /// `heartbeat_timeout_factor_pct` is outside 150..=300.
    #[error(
        "heartbeat_timeout_factor_pct must be \
         {HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN}..={HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX}"
    )]
    HeartbeatFactor,
    /// `heartbeat_jitter_pct` is above [`HEARTBEAT_JITTER_PCT_MAX`].
    #[error("heartbeat_jitter_pct must be 0..={HEARTBEAT_JITTER_PCT_MAX}")]
    HeartbeatJitter,
    /// `retransmit_initial_ms` is 0, or `retransmit_max_ms` is below it.
    #[error("retransmit_initial_ms must be non-zero and at most retransmit_max_ms")]
    RetransmitWait,
    /// `retransmit_attempts_max` is above [`RETRANSMIT_ATTEMPTS_LIMIT_MAX`].
    #[error("retransmit_attempts_max must be 0..={RETRANSMIT_ATTEMPTS_LIMIT_MAX}")]
    RetransmitAttempts,
    /// A bound that must allow at least one item is 0 (the field is named).
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A bound does not fit the `u32` it is announced or counted in (named).
    #[error("{0} must fit in a u32")]
    TooLarge(&'static str),
}

impl SessionConfig {
    /// Checks every value against its valid range; call once at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u32_max = u32::MAX as usize;
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms > u64::from(u32::MAX) {
            return Err(ConfigError::HeartbeatInterval);
        }
        if !(HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN..=HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX)
            .contains(&self.heartbeat_timeout_factor_pct)
        {
            return Err(ConfigError::HeartbeatFactor);
        }
        if self.heartbeat_jitter_pct > HEARTBEAT_JITTER_PCT_MAX {
            return Err(ConfigError::HeartbeatJitter);
        }
        if self.retransmit_initial_ms == 0 || self.retransmit_max_ms < self.retransmit_initial_ms {
            return Err(ConfigError::RetransmitWait);
        }
        if self.retransmit_attempts_max > RETRANSMIT_ATTEMPTS_LIMIT_MAX {
            return Err(ConfigError::RetransmitAttempts);
        }
        for (name, value) in [
            ("unacked_window_max", self.unacked_window_max),
            ("outbox_frames_max", self.outbox_frames_max),
            ("outbox_bytes_max", self.outbox_bytes_max),
            ("frame_bytes_max", self.frame_bytes_max),
            (
                "client_limits.text_bytes_max",
                self.client_limits.text_bytes_max,
            ),
            ("page_entries_max", self.page_entries_max),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
            if value > u32_max {
                return Err(ConfigError::TooLarge(name));
            }
        }
        Ok(())
    }

    /// The bounds announced to clients in `Welcome.limits`.
    pub fn limits(&self) -> pb::Limits {
        pb::Limits {
            frame_bytes_max: saturate_u32(self.frame_bytes_max),
            text_bytes_max: saturate_u32(self.client_limits.text_bytes_max),
            unacked_window_max: saturate_u32(self.unacked_window_max),
            page_entries_max: saturate_u32(self.page_entries_max),
        }
    }

    /// Silence allowed before jitter: the interval times the factor.
    pub fn heartbeat_timeout_ms(&self) -> u64 {
        let factor_pct = self.heartbeat_timeout_factor_pct.clamp(
            HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN,
            HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX,
        );
        self.heartbeat_interval_ms
            .saturating_mul(u64::from(factor_pct))
            / 100
    }

    /// The jitter that may be added to a deadline `nominal_ms` away: a
    /// session adds less than this (see `heartbeat_jitter_pct`).
    pub fn jitter_span_ms(&self, nominal_ms: u64) -> u64 {
        let pct = self.heartbeat_jitter_pct.min(HEARTBEAT_JITTER_PCT_MAX);
        nominal_ms.saturating_mul(u64::from(pct)) / 100
    }

    /// The wait before the retransmit that follows `retransmits_done` earlier
    /// retransmits: `retransmit_initial_ms` doubled that many times, capped at
    /// `retransmit_max_ms`.
    pub fn retransmit_wait_ms(&self, retransmits_done: u32) -> u64 {
        let doubling = 1u64 << retransmits_done.min(63);
        self.retransmit_initial_ms
            .saturating_mul(doubling)
            .min(self.retransmit_max_ms)
    }
}

/// Where a session is in its life. Read it with [`Session::lifecycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Connected; the first frame must be `auth`, before `auth_deadline_ms`.
    Handshaking {
        /// When the connection is closed with `ERROR_CODE_AUTH_TIMEOUT`.
        auth_deadline_ms: u64,
    },
    /// `auth` arrived and went out as [`Event::Authenticate`]; waiting for the
    /// driver's verdict, still within the same deadline.
    Authenticating {
        /// When the connection is closed with `ERROR_CODE_AUTH_TIMEOUT`.
        auth_deadline_ms: u64,
        /// The `auth` frame's request id, echoed by `Welcome` or `Error`.
        request_id: u64,
    },
    /// Authenticated: requests flow, deliveries are pushed, silence is
    /// watched.
    Live {
        /// When the last frame from the client arrived (any frame counts).
        last_heard_ms: u64,
    },
    /// A final frame (`Kick` or `Error`) is queued and nothing more is taken
    /// in or queued; becomes `Closed` once the driver has taken the outbox.
    Draining {
        /// When the session closes even if the outbox was not taken.
        deadline_ms: u64,
        /// Why it is closing.
        reason: CloseReason,
    },
    /// Over: the driver writes what it took, closes the socket and drops the
    /// session.
    Closed(CloseReason),
}

/// Why a session closed (for the driver's counters and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The first frame was not `auth`.
    AuthRequired,
    /// No accepted `auth` within `auth_timeout_ms`.
    AuthTimeout,
    /// The driver refused the token ([`Session::handle_auth_err`]).
    AuthRejected,
    /// The `auth` frame itself was invalid (e.g. a bad device id); its
    /// `Error` was `INVALID_ARGUMENT`.
    BadAuth,
    /// `auth` asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// The input could not be framed or decoded where that closes: a broken
    /// length prefix, or an undecodable frame before `auth`.
    BadFrame,
    /// A frame was larger than `frame_bytes_max`.
    FrameTooLarge,
    /// The client was silent past its heartbeat deadline.
    HeartbeatTimeout,
    /// The outbox overflowed: the client does not read fast enough.
    SlowConsumer,
    /// [`Session::kick`] was called with this reason.
    Kicked(KickReason),
    /// The peer closed the connection, or the socket failed.
    PeerClosed,
}

/// What the session hands to its driver, through [`Session::poll_event`].
///
/// The session holds one event at a time: every `handle_*` call produces at
/// most one, and the driver drains it before its next `handle_*` call. A
/// request that arrives while an event is still held is not lost: it is
/// answered `ERROR_CODE_OVERLOADED` with its request id. Both payloads are
/// boxed so the slot stays two words, and so the driver can move a request to
/// the backend's queue without copying it.
#[derive(Debug)]
pub enum Event {
    /// The client sent `auth`: verify the token, then call
    /// [`Session::handle_auth_ok`] or [`Session::handle_auth_err`].
    Authenticate(Box<AuthRequest>),
    /// A validated client request with a non-zero `request_id`, for the
    /// backend. Its answer goes back through [`Session::queue_frame`] or
    /// [`Session::queue_encoded`] with the same `request_id`.
    Request(Box<pb::Frame>),
}

/// The content of the client's `auth` frame, protocol version already checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    /// The `auth` frame's request id (the session echoes it by itself).
    pub request_id: u64,
    /// The token to verify (a JWT).
    pub token: String,
    /// The device id, already checked with [`crate::ids::check_id`].
    pub device_id: String,
    /// The client's platform; values this server does not know read as
    /// `Unspecified`.
    pub platform: pb::Platform,
    /// Optional features the client understands.
    pub capabilities: Vec<String>,
    /// The last contiguous sequence the device holds, per conversation.
    pub resume_cursors: Vec<pb::Cursor>,
    /// Free-form client name and version.
    pub client_version: String,
}

/// The driver's positive verdict on an [`AuthRequest`], for `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthOk<'a> {
    /// The authenticated user (the token's subject).
    pub user_id: &'a str,
    /// The device id of the [`AuthRequest`].
    pub device_id: &'a str,
    /// This gateway node's id.
    pub node_id: &'a str,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// A misuse of the session by its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// An auth verdict arrived while the session was not waiting for one (it
    /// timed out, was kicked, or never saw `auth`); nothing was sent.
    #[error("the session is not waiting for an auth verdict")]
    NotAuthenticating,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The session is not authenticated yet; before `Welcome` only the
    /// session's own frames go out.
    #[error("the session is not live yet")]
    NotLive,
    /// The session is draining or closed; nothing more goes out.
    #[error("the session is closing")]
    Closing,
    /// The outbox was full (frames or bytes). The session now drains with
    /// `Kick` `SLOW_CONSUMER`; the driver closes it and counts it.
    #[error("outbox full: slow consumer")]
    SlowConsumer,
    /// `unacked_window_max` deliveries are in flight; nothing changed. Rely
    /// on the client's sync, or try again after acks.
    #[error("unacked delivery window full")]
    WindowFull,
    /// A delivery named no (conversation, seq ≥ 1) that an ack could cover.
    #[error("a delivery needs at least one cursor with seq >= 1")]
    NoCursors,
}

/// A body the session did not take, handed back with the reason (a full queue
/// hands the item back, so the caller decides what happens to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    /// Why it was not taken.
    pub error: QueueError,
    /// The frame body, untouched.
    pub body: Bytes,
}

/// A conversation id as the delivery window knows it: a 64-bit FNV-1a hash,
/// so the window stores no strings. Compute it once per delivery and share it
/// across a fan-out.
///
/// Two conversations whose ids collide could only make an ack clear a frame
/// early, which the client's sync repairs; a client can only do that to its
/// own window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvKey(u64);

impl ConvKey {
    /// The key of a conversation id (`d:<a>:<b>` or `g:<group>`).
    pub fn of(conversation_id: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in conversation_id.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(hash)
    }
}

/// Counters a session keeps for the gateway to aggregate; read and reset them
/// with [`Session::take_stats`]. They wrap at `u32::MAX`, so take them at least
/// that often. How sessions end (heartbeat timeouts, slow consumers, …) is
/// counted from [`Session::close_reason`] instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames (and undecodable inputs) received from the client.
    pub frames_in: u32,
    /// Frame bodies handed out by [`Session::poll_transmit`].
    pub frames_out: u32,
    /// `Deliver` frames queued again because their ack was late.
    pub retransmits: u32,
    /// `Deliver` frames that left the window unacked after the last retransmit.
    pub dropped_after_retries: u32,
}

/// One connection's protocol state. See the module documentation for the
/// order in which a driver calls its methods.
#[derive(Debug)]
pub struct Session {
    state: Lifecycle,
    /// The outbox and the window; `None` (nothing allocated, one word in
    /// the session) while both are empty, which is most of an idle
    /// connection's life — two inline queues cost 68 bytes per connection.
    queues: Option<Box<Queues>>,
    event: Option<Event>,
    stats: SessionStats,
    /// This connection's share of the deadline jitter span, in 1/2^32.
    jitter_unit: u32,
}

/// A busy session's queues.
#[derive(Debug, Default)]
struct Queues {
    /// Frame bodies waiting for the driver.
    outbox: VecDeque<Bytes>,
    /// Deliveries in flight, oldest first.
    window: VecDeque<InFlight>,
    /// Sum of the outbox's body lengths; at most `outbox_bytes_max` (≤ u32)
    /// except for the final frames of a closing session.
    outbox_bytes: u32,
}

impl Session {
    /// A new connection, accepted at `now_ms`. `seed` spreads this
    /// connection's auth and heartbeat deadlines (any value, e.g. a per-shard
    /// counter or a random number): the session draws no randomness itself.
    pub fn new(cfg: &SessionConfig, now_ms: u64, seed: u64) -> Self {
        let mut session = Self {
            state: Lifecycle::Handshaking {
                auth_deadline_ms: 0,
            },
            // Deliberately unallocated until a frame is queued.
            queues: None,
            event: None,
            stats: SessionStats::default(),
            // The high half of a splitmix64 step: consecutive seeds spread
            // evenly.
            jitter_unit: (splitmix64(seed) >> 32) as u32,
        };
        let auth_deadline_ms = session.jittered_deadline(cfg, now_ms, cfg.auth_timeout_ms);
        session.state = Lifecycle::Handshaking { auth_deadline_ms };
        session
    }

    // ---- input --------------------------------------------------------

    /// One frame body from the client: a WebSocket message, or a TCP frame
    /// without its length prefix. Decoded with
    /// [`codec::decode_client_body`], which checks the size before anything
    /// else and refuses server-only bodies before building them.
    pub fn handle_body(&mut self, cfg: &SessionConfig, now_ms: u64, unix_ms: u64, body: &[u8]) {
        match codec::decode_client_body(body, cfg.frame_bytes_max) {
            Ok(frame) => self.handle_frame(cfg, now_ms, unix_ms, frame),
            Err(error) => self.handle_decode_error(cfg, now_ms, &error),
        }
    }

    /// One decoded frame from the client.
    pub fn handle_frame(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        unix_ms: u64,
        frame: pb::Frame,
    ) {
        self.stats.frames_in = self.stats.frames_in.wrapping_add(1);
        match self.state {
            Lifecycle::Handshaking { auth_deadline_ms } => {
                self.on_first_frame(cfg, now_ms, auth_deadline_ms, frame)
            }
            Lifecycle::Authenticating { .. } => {
                self.on_frame_while_authenticating(cfg, now_ms, frame)
            }
            Lifecycle::Live { .. } => {
                self.state = Lifecycle::Live {
                    last_heard_ms: now_ms,
                };
                self.on_live_frame(cfg, now_ms, unix_ms, frame);
            }
            // A closing session answers nothing; its last frames are queued.
            Lifecycle::Draining { .. } | Lifecycle::Closed(_) => {}
        }
    }

    /// Input the codec refused. An oversized frame or a broken length prefix
    /// closes (the stream has no known frame boundary any more), as does
    /// anything before `auth`; a live connection gets an `Error` for a
    /// malformed or server-only body and stays, as
    /// [`DecodeError::closes_connection`] says. Either way the input counts as
    /// liveness: the client is there. The `Error` carries
    /// [`DecodeError::request_id`]: a server-only frame's own request id, so
    /// it answers that frame like any refused request; 0 otherwise.
    pub fn handle_decode_error(&mut self, cfg: &SessionConfig, now_ms: u64, error: &DecodeError) {
        self.stats.frames_in = self.stats.frames_in.wrapping_add(1);
        let refusal = Refusal::from(error);
        let request_id = error.request_id();
        match self.state {
            Lifecycle::Handshaking { .. } => {
                let (refusal, reason) = match error {
                    DecodeError::FrameTooLarge { .. } => (refusal, CloseReason::FrameTooLarge),
                    DecodeError::VarintOverlong | DecodeError::Malformed(_) => {
                        (refusal, CloseReason::BadFrame)
                    }
                    // A well-formed frame, just not `auth`.
                    DecodeError::ServerOnly { .. } => (auth_required(), CloseReason::AuthRequired),
                };
                self.close_with_refusal(cfg, now_ms, request_id, refusal, reason);
            }
            Lifecycle::Authenticating { .. } | Lifecycle::Live { .. } => {
                if let Lifecycle::Live { .. } = self.state {
                    self.state = Lifecycle::Live {
                        last_heard_ms: now_ms,
                    };
                }
                if error.closes_connection() {
                    let reason = match error {
                        DecodeError::FrameTooLarge { .. } => CloseReason::FrameTooLarge,
                        _ => CloseReason::BadFrame,
                    };
                    self.close_with_refusal(cfg, now_ms, 0, refusal, reason);
                } else {
                    self.queue_reply(cfg, now_ms, &refusal.into_frame(request_id));
                }
            }
            Lifecycle::Draining { .. } | Lifecycle::Closed(_) => {}
        }
    }

    /// The driver accepted the token of the [`Event::Authenticate`] it took:
    /// queue `Welcome` (heartbeat interval, limits) and go live.
    pub fn handle_auth_ok(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        ok: AuthOk<'_>,
    ) -> Result<(), SessionError> {
        let Lifecycle::Authenticating { request_id, .. } = self.state else {
            return Err(SessionError::NotAuthenticating);
        };
        self.state = Lifecycle::Live {
            last_heard_ms: now_ms,
        };
        let welcome = pb::Welcome {
            user_id: ok.user_id.to_owned(),
            device_id: ok.device_id.to_owned(),
            heartbeat_interval_ms: u32::try_from(cfg.heartbeat_interval_ms).unwrap_or(u32::MAX),
            limits: Some(cfg.limits()),
            node_id: ok.node_id.to_owned(),
            server_time_ms: ok.unix_ms,
            protocol_version: PROTOCOL_VERSION,
            tenant_id: crate::ids::tenant_of(ok.user_id).to_owned(),
        };
        self.queue_reply(cfg, now_ms, &frame(request_id, Body::Welcome(welcome)));
        Ok(())
    }

    /// The driver refused the token: `Error` with `code` (e.g.
    /// `AUTH_FAILED`, `TOKEN_EXPIRED`) and `reason`, then close.
    pub fn handle_auth_err(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), SessionError> {
        self.handle_auth_refused(cfg, now_ms, code, reason, 0)
    }

    /// [`Session::handle_auth_err`] with `Error.retry_after_ms`: the login
    /// is refused for now (e.g. `RATE_LIMITED`: too many logins or
    /// reconnects) and may be tried again after that long.
    pub fn handle_auth_refused(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        code: ErrorCode,
        reason: &str,
        retry_after_ms: u32,
    ) -> Result<(), SessionError> {
        let Lifecycle::Authenticating { request_id, .. } = self.state else {
            return Err(SessionError::NotAuthenticating);
        };
        let mut frame = Refusal::new(code, reason.to_owned()).into_frame(request_id);
        if let Some(Body::Error(e)) = frame.body.as_mut() {
            e.retry_after_ms = retry_after_ms;
        }
        self.close_with(cfg, now_ms, CloseReason::AuthRejected, &[frame]);
        Ok(())
    }

    /// The timer armed at [`Self::poll_timeout`] fired (late is fine, early
    /// does nothing): close on a passed auth, heartbeat or drain deadline, and
    /// retransmit (or drop) late deliveries.
    pub fn handle_timeout(&mut self, cfg: &SessionConfig, now_ms: u64) {
        match self.state {
            Lifecycle::Handshaking { auth_deadline_ms }
            | Lifecycle::Authenticating {
                auth_deadline_ms, ..
            } => {
                if now_ms >= auth_deadline_ms {
                    let refusal = Refusal::new(
                        ErrorCode::AuthTimeout,
                        "no accepted auth within the deadline",
                    );
                    self.close_with_refusal(cfg, now_ms, 0, refusal, CloseReason::AuthTimeout);
                }
            }
            Lifecycle::Live { last_heard_ms } => {
                if now_ms >= self.silence_deadline(cfg, last_heard_ms) {
                    self.close_heartbeat_timeout(cfg, now_ms);
                } else {
                    self.retransmit_due(cfg, now_ms);
                }
            }
            Lifecycle::Draining {
                deadline_ms,
                reason,
            } => {
                if now_ms >= deadline_ms {
                    self.close_now(reason);
                }
            }
            Lifecycle::Closed(_) => {}
        }
    }

    /// The peer closed the connection or the socket failed: closed at once,
    /// everything queued is dropped.
    pub fn handle_peer_closed(&mut self) {
        if !self.is_closed() {
            self.close_now(CloseReason::PeerClosed);
        }
    }

    /// Displacement, shutdown, ban, admin: queue a `Kick` with `reason` and
    /// `redirect` (empty: same address) and drain. Does nothing to a session
    /// that is already closing.
    pub fn kick(&mut self, cfg: &SessionConfig, now_ms: u64, reason: KickReason, redirect: &str) {
        self.kick_after(cfg, now_ms, reason, redirect, 0);
    }

    /// [`Session::kick`] with `Kick.retry_after_ms`: how long the client
    /// should wait before it reconnects (a draining node spreads these).
    pub fn kick_after(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        reason: KickReason,
        redirect: &str,
        retry_after_ms: u32,
    ) {
        if self.is_closing() {
            return;
        }
        let kick = pb::Kick {
            reason: reason as i32,
            message: kick_message(reason).to_owned(),
            redirect: redirect.to_owned(),
            retry_after_ms,
        };
        self.close_with(
            cfg,
            now_ms,
            CloseReason::Kicked(reason),
            &[frame(0, Body::Kick(kick))],
        );
    }

    // ---- output queued by the driver -----------------------------------

    /// Queues a frame for a live session (a response with its request id, or
    /// a push). The size is checked against the outbox bounds before the
    /// frame is encoded; a full outbox makes the session a slow consumer.
    pub fn queue_frame(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        frame: &pb::Frame,
    ) -> Result<(), QueueError> {
        self.check_live()?;
        self.check_room(cfg, now_ms, prost::Message::encoded_len(frame))?;
        self.push_outbox(encode(frame));
        Ok(())
    }

    /// Queues a pre-encoded frame body (no length prefix) for a live session,
    /// e.g. one shared by every recipient of a fan-out. A full outbox makes
    /// the session a slow consumer; the body is handed back on any error.
    pub fn queue_encoded(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        body: Bytes,
    ) -> Result<(), Rejected> {
        if let Err(error) = self
            .check_live()
            .and_then(|()| self.check_room(cfg, now_ms, body.len()))
        {
            return Err(Rejected { error, body });
        }
        self.push_outbox(body);
        Ok(())
    }

    /// Queues a pre-encoded `Deliver` frame body and keeps it in the window
    /// until `deliver_ack` cursors reach `max_seq` for every conversation in
    /// `cursors` (pairs with seq 0 are ignored). Refused with the body handed
    /// back when the window holds `unacked_window_max` frames
    /// ([`QueueError::WindowFull`], nothing changes) or when the outbox is
    /// full ([`QueueError::SlowConsumer`], the session drains).
    pub fn push_deliver(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        cursors: &[(ConvKey, u64)],
        body: Bytes,
    ) -> Result<(), Rejected> {
        let covered = || cursors.iter().copied().filter(|&(_, seq)| seq > 0);
        let count = covered().count();
        let check = self.check_live().and_then(|()| {
            if count == 0 {
                Err(QueueError::NoCursors)
            } else if self.unacked() >= cfg.unacked_window_max {
                Err(QueueError::WindowFull)
            } else {
                self.check_room(cfg, now_ms, body.len())
            }
        });
        if let Err(error) = check {
            return Err(Rejected { error, body });
        }
        let covers = match (count, covered().next()) {
            (1, Some((key, seq))) => Covers::One(key, seq),
            // Deliberate allocation: only batches of several conversations
            // need a list, sized by the caller's (trusted) cursors.
            _ => Covers::Many(covered().collect()),
        };
        self.push_outbox(body.clone());
        self.queues_mut().window.push_back(InFlight {
            body,
            deadline_ms: now_ms.saturating_add(cfg.retransmit_wait_ms(0)),
            covers,
            retransmits: 0,
        });
        Ok(())
    }

    // ---- output polled by the driver ----------------------------------

    /// The next event for the driver, if any. Drain after every `handle_*`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.event.take()
    }

    /// The next frame body to write (without length prefix or WebSocket
    /// header). Handing out the last frame of a draining session closes it.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let q = self.queues.as_mut()?;
        let body = q.outbox.pop_front()?;
        // `body.len()` was added to `outbox_bytes` when it was queued.
        q.outbox_bytes = q.outbox_bytes.saturating_sub(saturate_u32(body.len()));
        self.stats.frames_out = self.stats.frames_out.wrapping_add(1);
        if q.outbox.is_empty() {
            // Deliberately give the memory back: an idle session owns none.
            q.outbox = VecDeque::new();
            self.tidy_queues();
            if let Lifecycle::Draining { reason, .. } = self.state {
                self.close_now(reason);
            }
        }
        Some(body)
    }

    /// The earliest deadline (auth, heartbeat, retransmit or drain), in the
    /// driver's `now_ms` time; `None` once closed.
    pub fn poll_timeout(&self, cfg: &SessionConfig) -> Option<u64> {
        match self.state {
            Lifecycle::Handshaking { auth_deadline_ms }
            | Lifecycle::Authenticating {
                auth_deadline_ms, ..
            } => Some(auth_deadline_ms),
            Lifecycle::Live { last_heard_ms } => {
                let silence = self.silence_deadline(cfg, last_heard_ms);
                // A scan of at most `unacked_window_max` entries, in the same
                // driver turn that changed them.
                let retransmit = self
                    .queues
                    .as_ref()
                    .and_then(|q| q.window.iter().map(|f| f.deadline_ms).min());
                Some(retransmit.map_or(silence, |r| r.min(silence)))
            }
            Lifecycle::Draining { deadline_ms, .. } => Some(deadline_ms),
            Lifecycle::Closed(_) => None,
        }
    }

    // ---- inspection ---------------------------------------------------

    /// Where the session is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        self.state
    }

    /// True while authenticated and not closing.
    pub fn is_live(&self) -> bool {
        matches!(self.state, Lifecycle::Live { .. })
    }

    /// True once the session is over (the driver closes the socket).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, Lifecycle::Closed(_))
    }

    /// Why the session is draining or closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            Lifecycle::Draining { reason, .. } | Lifecycle::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// When a live session's silence closes it: the last client frame plus
    /// the configured silence plus this connection's jitter.
    pub fn heartbeat_deadline(&self, cfg: &SessionConfig) -> Option<u64> {
        match self.state {
            Lifecycle::Live { last_heard_ms } => Some(self.silence_deadline(cfg, last_heard_ms)),
            _ => None,
        }
    }

    /// Frames waiting in the outbox.
    pub fn outbox_frames(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.outbox.len())
    }

    /// Bytes waiting in the outbox.
    pub fn outbox_bytes(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.outbox_bytes as usize)
    }

    /// Deliveries in the window (sent, not yet acked nor dropped).
    pub fn unacked(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.window.len())
    }

    /// Heap memory this session owns itself (queue storage, batch cursor
    /// lists, a held event's box), not counting the frame bodies it shares.
    /// Zero for an idle session.
    pub fn heap_bytes(&self) -> usize {
        let event = match &self.event {
            Some(Event::Authenticate(_)) => std::mem::size_of::<AuthRequest>(),
            Some(Event::Request(_)) => std::mem::size_of::<pb::Frame>(),
            None => 0,
        };
        let queues = self.queues.as_ref().map_or(0, |q| {
            std::mem::size_of::<Queues>()
                + q.outbox.capacity() * std::mem::size_of::<Bytes>()
                + q.window.capacity() * std::mem::size_of::<InFlight>()
                + q.window
                    .iter()
                    .map(|f| f.covers.heap_bytes())
                    .sum::<usize>()
        });
        queues + event
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The counters since the last call, resetting them: add them to the
    /// shard's totals.
    pub fn take_stats(&mut self) -> SessionStats {
        std::mem::take(&mut self.stats)
    }

    // ---- internals ----------------------------------------------------

    /// Handshaking: anything but a valid `auth` first closes the connection.
    fn on_first_frame(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        auth_deadline_ms: u64,
        frame: pb::Frame,
    ) {
        let request_id = frame.request_id;
        let Some(Body::Auth(auth)) = &frame.body else {
            return self.close_with_refusal(
                cfg,
                now_ms,
                request_id,
                auth_required(),
                CloseReason::AuthRequired,
            );
        };
        if auth.protocol_version != PROTOCOL_VERSION {
            let refusal = Refusal::new(
                ErrorCode::UnsupportedVersion,
                "unsupported protocol_version; this server speaks 1",
            );
            let reason = CloseReason::UnsupportedVersion;
            return self.close_with_refusal(cfg, now_ms, request_id, refusal, reason);
        }
        if let Err(refusal) = check_client_frame(&frame, &cfg.client_limits) {
            let reason = CloseReason::BadAuth;
            return self.close_with_refusal(cfg, now_ms, request_id, refusal, reason);
        }
        // Matched as `auth` above; this takes its fields by move, no copy.
        let Some(Body::Auth(auth)) = frame.body else {
            unreachable!("the body was matched as auth above")
        };
        self.state = Lifecycle::Authenticating {
            auth_deadline_ms,
            request_id,
        };
        // Deliberate allocation: the verifier may run off this call stack.
        self.event = Some(Event::Authenticate(Box::new(AuthRequest {
            request_id,
            // `check_client_frame` refused platform values the schema lacks.
            platform: pb::Platform::try_from(auth.platform).unwrap_or_default(),
            token: auth.token,
            device_id: auth.device_id,
            capabilities: auth.capabilities,
            resume_cursors: auth.resume_cursors,
            client_version: auth.client_version,
        })));
    }

    /// Authenticating: the client did not wait for `Welcome`. It did
    /// authenticate first, so it is answered (with the frame's request id),
    /// not closed; nothing is acted on before the verdict.
    fn on_frame_while_authenticating(&mut self, cfg: &SessionConfig, now_ms: u64, f: pb::Frame) {
        let refusal = match f.body {
            Some(Body::Auth(_)) => already_authenticated(),
            _ => Refusal::new(
                ErrorCode::AuthRequired,
                "wait for welcome before other frames",
            ),
        };
        self.queue_reply(cfg, now_ms, &refusal.into_frame(f.request_id));
    }

    fn on_live_frame(&mut self, cfg: &SessionConfig, now_ms: u64, unix_ms: u64, f: pb::Frame) {
        let request_id = f.request_id;
        if let Some(Body::Auth(_)) = f.body {
            return self.queue_reply(cfg, now_ms, &already_authenticated().into_frame(request_id));
        }
        // Refuses frames without a body, server-only frames, requests without
        // a request id and malformed fields; the connection stays.
        if let Err(refusal) = check_client_frame(&f, &cfg.client_limits) {
            return self.queue_reply(cfg, now_ms, &refusal.into_frame(request_id));
        }
        match f.body {
            Some(Body::Ping(ping)) => {
                let pong = pb::Pong {
                    nonce: ping.nonce,
                    server_time_ms: unix_ms,
                };
                self.queue_reply(cfg, now_ms, &frame(request_id, Body::Pong(pong)));
            }
            Some(Body::DeliverAck(ack)) => self.on_deliver_ack(&ack),
            Some(body) => self.on_request(cfg, now_ms, request_id, body),
            // Refused by `check_client_frame` above.
            None => {}
        }
    }

    /// A validated request (or `typing`) for the backend.
    fn on_request(&mut self, cfg: &SessionConfig, now_ms: u64, request_id: u64, body: Body) {
        if self.event.is_some() {
            let refusal = Refusal::new(
                ErrorCode::Overloaded,
                "the previous request was not taken yet",
            );
            return self.queue_reply(cfg, now_ms, &refusal.into_frame(request_id));
        }
        // Deliberate allocation: a request crosses to a backend thread boxed,
        // so its queue slot stays one pointer.
        self.event = Some(Event::Request(Box::new(frame(request_id, body))));
    }

    /// Cumulative acks: each cursor covers its conversation up to its seq in
    /// every frame of the window. Work is at most cursors × window, both
    /// bounded (`frame_bytes_max`, `unacked_window_max`).
    fn on_deliver_ack(&mut self, ack: &pb::DeliverAck) {
        let Some(q) = self.queues.as_mut().filter(|q| !q.window.is_empty()) else {
            return;
        };
        for cursor in &ack.cursors {
            let key = ConvKey::of(&cursor.conversation_id);
            for in_flight in &mut q.window {
                in_flight.covers.ack(key, cursor.seq);
            }
        }
        q.window.retain(|f| !f.covers.is_acked());
        if q.window.is_empty() {
            // Deliberately give the memory back: an idle session owns none.
            q.window = VecDeque::new();
            self.tidy_queues();
        }
    }

    /// The queues, allocated if they were not.
    fn queues_mut(&mut self) -> &mut Queues {
        // Deliberate allocation: only while a frame is queued or in flight.
        self.queues.get_or_insert_with(Box::default)
    }

    /// Frees the queues once both are empty.
    fn tidy_queues(&mut self) {
        if self
            .queues
            .as_ref()
            .is_some_and(|q| q.outbox.is_empty() && q.window.is_empty())
        {
            self.queues = None;
        }
    }

    /// Sends late deliveries again, or drops those past their last retry.
    fn retransmit_due(&mut self, cfg: &SessionConfig, now_ms: u64) {
        let attempts_max = cfg
            .retransmit_attempts_max
            .min(RETRANSMIT_ATTEMPTS_LIMIT_MAX);
        let mut i = 0;
        while let Some(q) = self.queues.as_mut().filter(|q| i < q.window.len()) {
            let in_flight = &mut q.window[i];
            if in_flight.deadline_ms > now_ms {
                i += 1;
                continue;
            }
            let done = u32::from(in_flight.retransmits);
            if done >= attempts_max {
                q.window.remove(i);
                self.stats.dropped_after_retries = self.stats.dropped_after_retries.wrapping_add(1);
                continue;
            }
            // `done < attempts_max <= 16`, so this stays far below u8::MAX.
            in_flight.retransmits += 1;
            in_flight.deadline_ms = now_ms.saturating_add(cfg.retransmit_wait_ms(done + 1));
            let body = in_flight.body.clone();
            i += 1;
            // A copy the client has not even been handed yet needs no twin:
            // the attempt counts, the bytes are not queued twice.
            if q.outbox
                .iter()
                .any(|b| b.as_ptr() == body.as_ptr() && b.len() == body.len())
            {
                continue;
            }
            if self.check_room(cfg, now_ms, body.len()).is_err() {
                return; // Slow consumer: the session is draining, the window gone.
            }
            self.push_outbox(body);
            self.stats.retransmits = self.stats.retransmits.wrapping_add(1);
        }
        if let Some(q) = self.queues.as_mut().filter(|q| q.window.is_empty()) {
            q.window = VecDeque::new();
        }
        self.tidy_queues();
    }

    fn close_heartbeat_timeout(&mut self, cfg: &SessionConfig, now_ms: u64) {
        let reason = KickReason::HeartbeatTimeout;
        let kick = pb::Kick {
            reason: reason as i32,
            message: kick_message(reason).to_owned(),
            redirect: String::new(),
            retry_after_ms: 0,
        };
        let error = Refusal::new(ErrorCode::HeartbeatTimeout, kick_message(reason)).into_frame(0);
        self.close_with(
            cfg,
            now_ms,
            CloseReason::HeartbeatTimeout,
            &[frame(0, Body::Kick(kick)), error],
        );
    }

    fn silence_deadline(&self, cfg: &SessionConfig, last_heard_ms: u64) -> u64 {
        self.jittered_deadline(cfg, last_heard_ms, cfg.heartbeat_timeout_ms())
    }

    /// `from_ms + nominal_ms` plus this connection's share of the jitter span.
    fn jittered_deadline(&self, cfg: &SessionConfig, from_ms: u64, nominal_ms: u64) -> u64 {
        let span = u128::from(cfg.jitter_span_ms(nominal_ms));
        // `span * unit / 2^32 < span`, which fits in a u64.
        let jitter = ((span * u128::from(self.jitter_unit)) >> 32) as u64;
        from_ms.saturating_add(nominal_ms).saturating_add(jitter)
    }

    /// Queues a frame the session answers by itself (Welcome, Pong, Error).
    /// A full outbox makes the session a slow consumer instead.
    fn queue_reply(&mut self, cfg: &SessionConfig, now_ms: u64, frame: &pb::Frame) {
        if self
            .check_room(cfg, now_ms, prost::Message::encoded_len(frame))
            .is_ok()
        {
            self.push_outbox(encode(frame));
        }
    }

    fn check_live(&self) -> Result<(), QueueError> {
        match self.state {
            Lifecycle::Live { .. } => Ok(()),
            Lifecycle::Handshaking { .. } | Lifecycle::Authenticating { .. } => {
                Err(QueueError::NotLive)
            }
            Lifecycle::Draining { .. } | Lifecycle::Closed(_) => Err(QueueError::Closing),
        }
    }

    /// Ok when one more frame of `len` bytes fits the outbox; otherwise the
    /// session becomes a slow consumer.
    fn check_room(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        len: usize,
    ) -> Result<(), QueueError> {
        let bytes_max = cfg.outbox_bytes_max.min(u32::MAX as usize);
        let fits = self.outbox_frames() < cfg.outbox_frames_max
            && self.outbox_bytes().saturating_add(len) <= bytes_max;
        if fits {
            return Ok(());
        }
        // The backlog is dropped at once (frames are whole, none was handed
        // out in part): its memory is what the bound protects.
        if let Some(q) = self.queues.as_mut() {
            q.outbox = VecDeque::new();
            q.outbox_bytes = 0;
        }
        let reason = KickReason::SlowConsumer;
        let kick = pb::Kick {
            reason: reason as i32,
            message: kick_message(reason).to_owned(),
            redirect: String::new(),
            retry_after_ms: 0,
        };
        self.close_with(
            cfg,
            now_ms,
            CloseReason::SlowConsumer,
            &[frame(0, Body::Kick(kick))],
        );
        Err(QueueError::SlowConsumer)
    }

    /// Appends a body that `check_room` admitted (or a final frame).
    fn push_outbox(&mut self, body: Bytes) {
        let q = self.queues_mut();
        q.outbox_bytes = q.outbox_bytes.saturating_add(saturate_u32(body.len()));
        q.outbox.push_back(body);
    }

    fn close_with_refusal(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        request_id: u64,
        refusal: Refusal,
        reason: CloseReason,
    ) {
        self.close_with(cfg, now_ms, reason, &[refusal.into_frame(request_id)]);
    }

    /// Queues the final frames, past the outbox bounds (there are at most two
    /// and nothing follows them), and drains.
    fn close_with(
        &mut self,
        cfg: &SessionConfig,
        now_ms: u64,
        reason: CloseReason,
        last: &[pb::Frame],
    ) {
        for frame in last {
            self.push_outbox(encode(frame));
        }
        // Unacked deliveries are not retransmitted any more; the client
        // resyncs from its cursors when it reconnects.
        if let Some(q) = self.queues.as_mut() {
            q.window = VecDeque::new();
        }
        self.tidy_queues();
        self.state = Lifecycle::Draining {
            deadline_ms: now_ms.saturating_add(cfg.drain_timeout_ms),
            reason,
        };
        if self.outbox_frames() == 0 {
            self.close_now(reason);
        }
    }

    fn close_now(&mut self, reason: CloseReason) {
        self.queues = None;
        self.state = Lifecycle::Closed(reason);
    }

    fn is_closing(&self) -> bool {
        matches!(
            self.state,
            Lifecycle::Draining { .. } | Lifecycle::Closed(_)
        )
    }
}

#[derive(Debug)]
struct InFlight {
    body: Bytes,
    /// When it is sent again (or dropped, after the last retransmit).
    deadline_ms: u64,
    covers: Covers,
    retransmits: u8,
}

/// What acks must reach before a delivery leaves the window. A pair whose ack
/// arrived has its seq set to 0 (real seqs start at 1), so cumulative acks of
/// different conversations may arrive in different frames.
#[derive(Debug)]
enum Covers {
    /// The common case, stored inline: one conversation.
    One(ConvKey, u64),
    /// A batch of several conversations.
    Many(Box<[(ConvKey, u64)]>),
}

impl Covers {
    fn ack(&mut self, key: ConvKey, acked_seq: u64) {
        let ack = |(k, s): (&ConvKey, &mut u64)| {
            if *k == key && *s <= acked_seq {
                *s = 0;
            }
        };
        match self {
            Covers::One(k, s) => ack((k, s)),
            Covers::Many(pairs) => pairs.iter_mut().for_each(|(k, s)| ack((k, s))),
        }
    }

    fn is_acked(&self) -> bool {
        match self {
            Covers::One(_, s) => *s == 0,
            Covers::Many(pairs) => pairs.iter().all(|(_, s)| *s == 0),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Covers::One(..) => 0,
            Covers::Many(pairs) => std::mem::size_of_val(&**pairs),
        }
    }
}

fn frame(request_id: u64, body: Body) -> pb::Frame {
    pb::Frame {
        request_id,
        body: Some(body),
    }
}

/// A frame body as the outbox holds it. One allocation of exactly the
/// encoded length, handed out as is (the driver adds the prefix or header).
fn encode(frame: &pb::Frame) -> Bytes {
    // Exactly the encoded length, so `Bytes::from` takes the buffer over
    // without a second allocation (it needs one when capacity ≠ length).
    let mut body = Vec::with_capacity(prost::Message::encoded_len(frame));
    codec::encode_body(frame, &mut body);
    Bytes::from(body)
}

fn auth_required() -> Refusal {
    Refusal::new(ErrorCode::AuthRequired, "the first frame must be auth")
}

fn already_authenticated() -> Refusal {
    Refusal::new(
        ErrorCode::AlreadyAuthenticated,
        "auth was already sent on this connection",
    )
}

fn kick_message(reason: KickReason) -> &'static str {
    match reason {
        KickReason::Unspecified => "closed by the server",
        KickReason::Displaced => "another connection of this device logged in",
        KickReason::Shutdown => "the server is shutting down; reconnect",
        KickReason::Admin => "closed by an operator",
        KickReason::Banned => "this user is banned",
        KickReason::SlowConsumer => "the client did not read fast enough",
        KickReason::HeartbeatTimeout => "no heartbeat within the deadline",
        KickReason::TokenExpired => "the token expired; reconnect with a fresh one",
        KickReason::RateLimited => "too many requests over the rate limit; reconnect later",
        KickReason::LoginPolicy => "a newer login of this platform class took this one's place",
        KickReason::LoggedOut => "logged out from another device; log in again",
        KickReason::TenantFull => "your organization has as many users as it may",
    }
}

fn saturate_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One step of splitmix64: a fixed, well-mixed function of the seed.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_announces_its_limits() {
        // Proves the documented defaults pass validation and reach `Limits`.
        let cfg = SessionConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        let limits = cfg.limits();
        assert_eq!(limits.frame_bytes_max, 65_536);
        assert_eq!(limits.unacked_window_max, 256);
        assert_eq!(cfg.heartbeat_timeout_ms(), 60_000);
        assert_eq!(cfg.jitter_span_ms(cfg.heartbeat_timeout_ms()), 6_000);
    }

    #[test]
    fn config_out_of_range_is_refused_by_name() {
        // Proves each documented range is enforced with a typed error.
        let bad = |f: fn(&mut SessionConfig)| {
            let mut cfg = SessionConfig::default();
            f(&mut cfg);
            cfg.validate()
        };
        assert_eq!(
            bad(|c| c.heartbeat_timeout_factor_pct = 149),
            Err(ConfigError::HeartbeatFactor)
        );
        assert_eq!(
            bad(|c| c.heartbeat_timeout_factor_pct = 301),
            Err(ConfigError::HeartbeatFactor)
        );
        assert_eq!(
            bad(|c| c.heartbeat_jitter_pct = 51),
            Err(ConfigError::HeartbeatJitter)
        );
        assert_eq!(
            bad(|c| c.heartbeat_interval_ms = 0),
            Err(ConfigError::HeartbeatInterval)
        );
        assert_eq!(
            bad(|c| c.retransmit_max_ms = 1_000),
            Err(ConfigError::RetransmitWait)
        );
        assert_eq!(
            bad(|c| c.retransmit_attempts_max = 17),
            Err(ConfigError::RetransmitAttempts)
        );
        assert_eq!(
            bad(|c| c.outbox_frames_max = 0),
            Err(ConfigError::Zero("outbox_frames_max"))
        );
    }

    #[test]
    fn retransmit_waits_double_up_to_the_cap() {
        // Proves the backoff schedule 2s, 4s, 8s, 16s, 16s for a 2 s start.
        let cfg = SessionConfig {
            retransmit_initial_ms: 2_000,
            ..SessionConfig::default()
        };
        let waits: Vec<u64> = (0..5).map(|n| cfg.retransmit_wait_ms(n)).collect();
        assert_eq!(waits, [2_000, 4_000, 8_000, 16_000, 16_000]);
        assert_eq!(cfg.retransmit_wait_ms(200), 16_000);
    }
}
