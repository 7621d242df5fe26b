//! The session state machine driven by a simulated client, in simulated time.
//!
//! [`Pair`] plays both the client and a perfect driver: it encodes client
//! frames and feeds their bodies to the session, drains what the session
//! transmits and decodes it, and moves time forward by firing the session's
//! timer exactly at [`Session::poll_timeout`]. Time is a plain `u64` of
//! milliseconds: nothing sleeps, nothing touches a socket or a clock.
//!
//! Memory claims are shown with a counting global allocator (this test binary
//! only). Tests run on parallel threads, so its counters are thread-local.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;

use bytes::Bytes;
use tern_protocol::codec;
use tern_protocol::pb::{self, ErrorCode, KickReason, frame::Body};
use tern_protocol::session::{
    AuthOk, CloseReason, ConvKey, Event, Lifecycle, QueueError, SESSION_BYTES_MAX, Session,
    SessionConfig, SessionError,
};

// ---- the counting allocator --------------------------------------------------

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
        // SAFETY: `ptr` came from `System` through `alloc` or `realloc` here.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        let _ = LIVE.try_with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Bytes this thread holds on the heap right now (relative to thread start).
fn live_bytes() -> isize {
    LIVE.with(Cell::get)
}

/// Allocations this thread has made so far.
fn allocations() -> usize {
    COUNT.with(Cell::get)
}

// ---- the simulated client and driver ----------------------------------------

/// Wall-clock time at the simulation's monotonic 0.
const UNIX_AT_ZERO_MS: u64 = 1_800_000_000_000;
const SEED: u64 = 7;

struct Pair {
    cfg: SessionConfig,
    session: Session,
    now_ms: u64,
    next_request_id: u64,
}

impl Pair {
    /// A connection accepted at time 0.
    fn new(cfg: SessionConfig) -> Self {
        Self::with_seed(cfg, SEED)
    }

    fn with_seed(cfg: SessionConfig, seed: u64) -> Self {
        let session = Session::new(&cfg, 0, seed);
        Self {
            cfg,
            session,
            now_ms: 0,
            next_request_id: 1,
        }
    }

    /// A connection that authenticated as alice/phone-1 and read its Welcome.
    fn live(cfg: SessionConfig) -> Self {
        let mut pair = Self::new(cfg);
        pair.send(auth("phone-1"));
        let Some(Event::Authenticate(_)) = pair.event() else {
            panic!("no Authenticate event")
        };
        pair.auth_ok();
        let welcome = pair.recv();
        assert!(matches!(
            welcome[..],
            [pb::Frame {
                body: Some(Body::Welcome(_)),
                ..
            }]
        ));
        assert!(pair.session.is_live());
        pair
    }

    fn auth_ok(&mut self) {
        let ok = AuthOk {
            user_id: "alice",
            device_id: "phone-1",
            node_id: "node-a",
            unix_ms: UNIX_AT_ZERO_MS + self.now_ms,
        };
        self.session
            .handle_auth_ok(&self.cfg, self.now_ms, ok)
            .expect("waiting for a verdict");
    }

    /// Sends `body` with a fresh request id, which it returns.
    fn send(&mut self, body: Body) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send_frame(pb::Frame {
            request_id,
            body: Some(body),
        });
        request_id
    }

    fn send_frame(&mut self, frame: pb::Frame) {
        let mut bytes = Vec::new();
        codec::encode_body(&frame, &mut bytes);
        self.send_bytes(&bytes);
    }

    /// Feeds raw bytes as one frame body (as a WebSocket message would).
    fn send_bytes(&mut self, body: &[u8]) {
        let unix_ms = UNIX_AT_ZERO_MS + self.now_ms;
        self.session
            .handle_body(&self.cfg, self.now_ms, unix_ms, body);
    }

    fn event(&mut self) -> Option<Event> {
        self.session.poll_event()
    }

    /// Everything the session transmits now, decoded.
    fn recv(&mut self) -> Vec<pb::Frame> {
        std::iter::from_fn(|| self.session.poll_transmit())
            .map(|body| codec::decode_body(&body, usize::MAX).expect("the session encodes frames"))
            .collect()
    }

    /// Moves time to `t_ms`, firing the session's timer at each deadline on
    /// the way, exactly when it is due (a perfect timing wheel).
    fn run_until(&mut self, t_ms: u64) {
        for _ in 0..10_000 {
            match self.session.poll_timeout(&self.cfg) {
                Some(deadline) if deadline <= t_ms => {
                    self.now_ms = self.now_ms.max(deadline);
                    self.session.handle_timeout(&self.cfg, self.now_ms);
                }
                _ => break,
            }
        }
        self.now_ms = t_ms;
    }

    fn timeout(&self) -> Option<u64> {
        self.session.poll_timeout(&self.cfg)
    }

    /// Fires the timer at exactly `t_ms`, whatever it was armed for.
    fn fire_at(&mut self, t_ms: u64) {
        self.now_ms = t_ms;
        self.session.handle_timeout(&self.cfg, t_ms);
    }
}

fn auth(device_id: &str) -> Body {
    Body::Auth(pb::Auth {
        token: "header.payload.signature".into(),
        device_id: device_id.into(),
        platform: pb::Platform::Ios as i32,
        protocol_version: tern_protocol::PROTOCOL_VERSION,
        capabilities: vec!["batch-deliver".into()],
        resume_cursors: vec![pb::Cursor {
            conversation_id: "g:team".into(),
            seq: 41,
        }],
        client_version: "ios/2.3.0".into(),
    })
}

fn ping(nonce: u64) -> Body {
    Body::Ping(pb::Ping { nonce })
}

fn send_text(text: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: "01HZX3".into(),
        to: Some(pb::send::To::UserId("bob".into())),
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
        }),
        ..Default::default()
    })
}

fn ack(cursors: &[(&str, u64)]) -> Body {
    Body::DeliverAck(pb::DeliverAck {
        cursors: cursors
            .iter()
            .map(|&(c, seq)| pb::Cursor {
                conversation_id: c.into(),
                seq,
            })
            .collect(),
    })
}

/// A pre-encoded `Deliver` body with one entry per `(conversation, seq)`,
/// and the window cursors it must be acked by.
fn deliver(entries: &[(&str, u64)]) -> (Vec<(ConvKey, u64)>, Bytes) {
    let frame = pb::Frame {
        request_id: 0,
        body: Some(Body::Deliver(pb::Deliver {
            entries: entries
                .iter()
                .map(|&(c, seq)| pb::Entry {
                    conversation_id: c.into(),
                    seq,
                    ..Default::default()
                })
                .collect(),
        })),
    };
    let mut body = Vec::new();
    codec::encode_body(&frame, &mut body);
    let cursors = entries
        .iter()
        .map(|&(c, seq)| (ConvKey::of(c), seq))
        .collect();
    (cursors, Bytes::from(body))
}

/// The `(conversation, seq)`s of a received `Deliver`.
fn delivered(frame: &pb::Frame) -> Vec<(String, u64)> {
    let Some(Body::Deliver(d)) = &frame.body else {
        panic!("not a deliver: {frame:?}")
    };
    d.entries
        .iter()
        .map(|e| (e.conversation_id.clone(), e.seq))
        .collect()
}

fn error_of(frame: &pb::Frame) -> (u64, ErrorCode) {
    let Some(Body::Error(e)) = &frame.body else {
        panic!("not an error: {frame:?}")
    };
    (
        frame.request_id,
        ErrorCode::try_from(e.code).expect("a known code"),
    )
}

fn kick_of(frame: &pb::Frame) -> (KickReason, String) {
    let Some(Body::Kick(k)) = &frame.body else {
        panic!("not a kick: {frame:?}")
    };
    (
        KickReason::try_from(k.reason).expect("a known reason"),
        k.redirect.clone(),
    )
}

// ---- size and memory ---------------------------------------------------------

#[test]
fn a_session_is_at_most_session_bytes_max() {
    // Proves the per-connection state stays within its byte budget.
    let size = std::mem::size_of::<Session>();
    assert!(size <= SESSION_BYTES_MAX, "Session is {size} bytes");
    eprintln!("size_of::<Session>() = {size} bytes");
}

#[test]
fn an_idle_live_session_holds_no_heap_memory() {
    // Proves a session that handshook, exchanged requests, pings and acked
    // deliveries gives every byte back once idle: its own accounting says 0,
    // and the thread's live heap returns to where it was before the session.
    let before = live_bytes();
    let mut pair = Pair::new(SessionConfig::default());
    assert_eq!(
        pair.session.heap_bytes(),
        0,
        "a new session allocates nothing"
    );
    pair.send(auth("phone-1"));
    drop(pair.event());
    pair.auth_ok();
    drop(pair.recv());
    for i in 0..5 {
        pair.send(ping(i));
        let request_id = pair.send(send_text("hi"));
        let Some(Event::Request(request)) = pair.event() else {
            panic!("no request")
        };
        let answer = pb::Frame {
            request_id,
            body: Some(Body::Ok(pb::Ok::default())),
        };
        pair.session
            .queue_frame(&pair.cfg, pair.now_ms, &answer)
            .unwrap();
        drop(request);
        let (cursors, body) = deliver(&[("d:alice:bob", 2 * i + 1), ("g:team", i + 1)]);
        pair.session
            .push_deliver(&pair.cfg, pair.now_ms, &cursors, body)
            .unwrap();
        drop(cursors);
        drop(pair.recv());
        pair.send(ack(&[("d:alice:bob", 2 * i + 1), ("g:team", i + 1)]));
    }
    assert!(pair.session.is_live());
    assert_eq!(pair.session.unacked(), 0);
    assert_eq!(pair.session.heap_bytes(), 0);
    assert_eq!(live_bytes(), before, "heap bytes held by the idle session");
}

#[test]
fn allocations_per_round_trip_are_few_and_fixed() {
    // Proves (and records, for docs) how many allocations the session adds
    // per exchange: a ping/pong costs the Pong's body, the box holding the
    // session's queues and the outbox's storage (all given back when it
    // drains: an idle session keeps one word for its queues, not 68 bytes);
    // a push/ack cycle the box and the window's and outbox's storage. The client side of the count (encoding, decoding) is
    // measured separately and subtracted.
    let mut pair = Pair::live(SessionConfig::default());
    let mut ping_body = Vec::new();
    codec::encode_body(
        &pb::Frame {
            request_id: 9,
            body: Some(ping(1)),
        },
        &mut ping_body,
    );
    let unix_ms = UNIX_AT_ZERO_MS;
    let start = allocations();
    for _ in 0..100 {
        pair.session.handle_body(&pair.cfg, 0, unix_ms, &ping_body);
        while let Some(pong) = pair.session.poll_transmit() {
            drop(pong);
        }
    }
    let per_ping = (allocations() - start) as f64 / 100.0;
    assert!(per_ping <= 3.0, "{per_ping} allocations per ping/pong");

    let (cursors, body) = deliver(&[("g:team", 1)]);
    let mut ack_body = Vec::new();
    codec::encode_body(
        &pb::Frame {
            request_id: 0,
            body: Some(ack(&[("g:team", 1)])),
        },
        &mut ack_body,
    );
    let start = allocations();
    for _ in 0..100 {
        pair.session
            .push_deliver(&pair.cfg, 0, &cursors, body.clone())
            .unwrap();
        while let Some(out) = pair.session.poll_transmit() {
            drop(out);
        }
        pair.session.handle_body(&pair.cfg, 0, unix_ms, &ack_body);
    }
    let per_push = (allocations() - start) as f64 / 100.0;
    // The queues' box, outbox storage, window storage, and the decoded
    // ack's cursor list and strings (validate parses the conversation id
    // once more).
    assert!(per_push <= 8.0, "{per_push} allocations per push/ack");
    eprintln!("allocations: {per_ping} per ping/pong, {per_push} per push/ack");
    assert_eq!(pair.session.heap_bytes(), 0);
}

// ---- handshake ---------------------------------------------------------------

#[test]
fn a_happy_handshake_gets_welcome_with_the_configured_interval_and_limits() {
    // Proves auth → Authenticate event → verdict → Welcome echoing the auth's
    // request id, carrying the configured interval, limits, ids and time.
    let mut cfg = SessionConfig {
        heartbeat_interval_ms: 25_000,
        unacked_window_max: 32,
        page_entries_max: 150,
        ..SessionConfig::default()
    };
    cfg.client_limits.text_bytes_max = 4_000;
    let mut pair = Pair::new(cfg);
    pair.now_ms = 120;
    let auth_id = pair.send(auth("phone-1"));
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Authenticating { .. }
    ));
    assert!(pair.recv().is_empty(), "nothing is sent before the verdict");

    let Some(Event::Authenticate(request)) = pair.event() else {
        panic!("no Authenticate")
    };
    assert_eq!(request.request_id, auth_id);
    assert_eq!(request.token, "header.payload.signature");
    assert_eq!(request.device_id, "phone-1");
    assert_eq!(request.platform, pb::Platform::Ios);
    assert_eq!(request.capabilities, ["batch-deliver"]);
    assert_eq!(request.resume_cursors[0].seq, 41);
    assert_eq!(request.client_version, "ios/2.3.0");
    assert!(pair.event().is_none(), "one event per frame");

    pair.now_ms = 130;
    pair.auth_ok();
    let frames = pair.recv();
    let [
        pb::Frame {
            request_id,
            body: Some(Body::Welcome(welcome)),
        },
    ] = &frames[..]
    else {
        panic!("expected one Welcome: {frames:?}")
    };
    assert_eq!(*request_id, auth_id);
    assert_eq!(welcome.user_id, "alice");
    assert_eq!(welcome.device_id, "phone-1");
    assert_eq!(welcome.node_id, "node-a");
    assert_eq!(welcome.heartbeat_interval_ms, 25_000);
    assert_eq!(welcome.server_time_ms, UNIX_AT_ZERO_MS + 130);
    assert_eq!(welcome.protocol_version, tern_protocol::PROTOCOL_VERSION);
    let limits = welcome.limits.expect("limits");
    assert_eq!(limits.frame_bytes_max, 65_536);
    assert_eq!(limits.text_bytes_max, 4_000);
    assert_eq!(limits.unacked_window_max, 32);
    assert_eq!(limits.page_entries_max, 150);
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Live { last_heard_ms: 130 }
    );
}

#[test]
fn a_frame_before_auth_gets_auth_required_and_closes() {
    // Proves that anything but auth first (a client frame, a server-only
    // frame, undecodable bytes) is answered with a typed error and closed.
    let mut pair = Pair::new(SessionConfig::default());
    let id = pair.send(ping(1));
    let frames = pair.recv();
    assert_eq!(frames.len(), 1);
    assert_eq!(error_of(&frames[0]), (id, ErrorCode::AuthRequired));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::AuthRequired)
    );
    assert!(pair.event().is_none());
    assert_eq!(pair.timeout(), None, "a closed session arms no timer");

    // A server-only first frame is refused by the codec before it is built;
    // its AUTH_REQUIRED still answers it with its request_id.
    let mut pair = Pair::new(SessionConfig::default());
    let id = pair.send(Body::Welcome(pb::Welcome::default()));
    assert_eq!(error_of(&pair.recv()[0]), (id, ErrorCode::AuthRequired));
    assert!(pair.session.is_closed());

    let mut pair = Pair::new(SessionConfig::default());
    pair.send_bytes(&[0xff, 0xff, 0xff]);
    assert_eq!(error_of(&pair.recv()[0]), (0, ErrorCode::BadFrame));
    assert_eq!(pair.session.close_reason(), Some(CloseReason::BadFrame));
    assert!(pair.session.is_closed());
}

#[test]
fn the_auth_deadline_closes_with_auth_timeout() {
    // Proves the (jittered) auth deadline: one ms before it nothing happens,
    // at it AUTH_TIMEOUT is sent and the session closes; it also bounds the
    // wait for a verdict that never comes.
    let cfg = SessionConfig::default();
    let mut pair = Pair::new(cfg.clone());
    let deadline = pair.timeout().expect("an auth deadline");
    assert!((10_000..11_000).contains(&deadline), "deadline {deadline}");
    pair.fire_at(deadline - 1);
    assert!(pair.recv().is_empty());
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Handshaking { .. }
    ));
    pair.fire_at(deadline);
    let frames = pair.recv();
    assert_eq!(error_of(&frames[0]), (0, ErrorCode::AuthTimeout));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::AuthTimeout)
    );

    let mut pair = Pair::new(cfg);
    pair.now_ms = 3_000;
    pair.send(auth("phone-1"));
    drop(pair.event());
    assert_eq!(
        pair.timeout(),
        Some(deadline),
        "auth does not move the deadline"
    );
    pair.run_until(deadline);
    assert_eq!(error_of(&pair.recv()[0]).1, ErrorCode::AuthTimeout);
    assert!(pair.session.is_closed());
    let late = pair.session.handle_auth_ok(
        &pair.cfg,
        deadline + 5,
        AuthOk {
            user_id: "alice",
            device_id: "phone-1",
            node_id: "n",
            unix_ms: 0,
        },
    );
    assert_eq!(late, Err(SessionError::NotAuthenticating));
    assert!(pair.recv().is_empty(), "a late verdict sends nothing");
}

#[test]
fn a_rejected_token_gets_the_drivers_error_and_closes() {
    // Proves handle_auth_err sends the driver's code with the auth's request
    // id and closes.
    let mut pair = Pair::new(SessionConfig::default());
    let id = pair.send(auth("phone-1"));
    drop(pair.event());
    pair.session
        .handle_auth_err(
            &pair.cfg,
            5,
            ErrorCode::TokenExpired,
            "token expired 3 s ago",
        )
        .unwrap();
    let frames = pair.recv();
    assert_eq!(frames.len(), 1);
    assert_eq!(error_of(&frames[0]), (id, ErrorCode::TokenExpired));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::AuthRejected)
    );
}

#[test]
fn a_wrong_protocol_version_gets_unsupported_version_and_closes() {
    // Proves a version mismatch is refused before anything is handed out.
    let mut pair = Pair::new(SessionConfig::default());
    let Body::Auth(mut a) = auth("phone-1") else {
        unreachable!()
    };
    a.protocol_version = 2;
    let id = pair.send(Body::Auth(a));
    assert!(pair.event().is_none());
    assert_eq!(
        error_of(&pair.recv()[0]),
        (id, ErrorCode::UnsupportedVersion)
    );
    assert_eq!(
        pair.session.close_reason(),
        Some(CloseReason::UnsupportedVersion)
    );
    assert!(pair.session.is_closed());
}

#[test]
fn an_invalid_auth_gets_invalid_argument_and_closes() {
    // Proves auth fields are validated (here a device id with a space)
    // before the token is handed out.
    let mut pair = Pair::new(SessionConfig::default());
    let id = pair.send(auth("my phone"));
    assert!(pair.event().is_none());
    assert_eq!(error_of(&pair.recv()[0]), (id, ErrorCode::InvalidArgument));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::BadAuth)
    );
}

#[test]
fn a_second_auth_gets_already_authenticated_and_the_connection_stays() {
    // Proves a second auth, before and after Welcome, is answered with its
    // request id and changes nothing; other frames sent before Welcome are
    // answered AUTH_REQUIRED, not acted on, and do not close either.
    let mut pair = Pair::new(SessionConfig::default());
    pair.send(auth("phone-1"));
    drop(pair.event());
    let early_auth = pair.send(auth("phone-1"));
    let early_send = pair.send(send_text("too early"));
    assert!(
        pair.event().is_none(),
        "nothing acted on before the verdict"
    );
    let frames = pair.recv();
    assert_eq!(
        error_of(&frames[0]),
        (early_auth, ErrorCode::AlreadyAuthenticated)
    );
    assert_eq!(error_of(&frames[1]), (early_send, ErrorCode::AuthRequired));
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Authenticating { .. }
    ));
    pair.auth_ok();
    drop(pair.recv());

    let late_auth = pair.send(auth("phone-1"));
    assert!(pair.event().is_none());
    assert_eq!(
        error_of(&pair.recv()[0]),
        (late_auth, ErrorCode::AlreadyAuthenticated)
    );
    assert!(pair.session.is_live());
}

// ---- heartbeat ---------------------------------------------------------------

#[test]
fn pings_keep_a_session_alive_and_are_answered_with_pong() {
    // Proves a client pinging at the announced interval is never closed, and
    // each Pong echoes the nonce and request id with the server's time.
    let mut pair = Pair::live(SessionConfig::default());
    for i in 1..=20u64 {
        pair.run_until(i * 30_000);
        let id = pair.send(ping(1000 + i));
        let frames = pair.recv();
        let [
            pb::Frame {
                request_id,
                body: Some(Body::Pong(pong)),
            },
        ] = &frames[..]
        else {
            panic!("expected a Pong: {frames:?}")
        };
        assert_eq!(*request_id, id);
        assert_eq!(pong.nonce, 1000 + i);
        assert_eq!(pong.server_time_ms, UNIX_AT_ZERO_MS + i * 30_000);
    }
    assert!(pair.session.is_live());
}

#[test]
fn any_client_frame_counts_as_liveness() {
    // Proves requests and acks move the silence deadline like pings do.
    let mut pair = Pair::live(SessionConfig::default());
    let silence = pair.timeout().unwrap(); // measured from t = 0
    for i in 1..=10u64 {
        pair.run_until(i * 50_000);
        if i % 2 == 0 {
            pair.send(send_text("still here"));
            drop(pair.event());
        } else {
            pair.send(ack(&[("g:team", i)]));
        }
        assert!(pair.session.is_live(), "closed at {}", pair.now_ms);
        assert_eq!(pair.timeout(), Some(pair.now_ms + silence));
    }
    drop(pair.recv());
}

#[test]
fn silence_closes_at_exactly_the_jittered_deadline() {
    // Proves the heartbeat deadline to the millisecond: at deadline - 1 the
    // session is alive, at the deadline it sends Kick HEARTBEAT_TIMEOUT and
    // Error HEARTBEAT_TIMEOUT, then closes once they are taken.
    let cfg = SessionConfig::default();
    let mut pair = Pair::live(cfg.clone());
    pair.run_until(10_000);
    pair.send(ping(1));
    drop(pair.recv());
    let deadline = pair.session.heartbeat_deadline(&cfg).unwrap();
    assert_eq!(pair.timeout(), Some(deadline));
    let silence = deadline - 10_000;
    assert!((60_000..66_000).contains(&silence), "silence {silence}");

    pair.fire_at(deadline - 1);
    assert!(pair.session.is_live());
    assert!(pair.recv().is_empty());

    pair.fire_at(deadline);
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Draining {
            reason: CloseReason::HeartbeatTimeout,
            ..
        }
    ));
    let frames = pair.recv();
    assert_eq!(frames.len(), 2);
    assert_eq!(kick_of(&frames[0]).0, KickReason::HeartbeatTimeout);
    assert_eq!(error_of(&frames[1]), (0, ErrorCode::HeartbeatTimeout));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::HeartbeatTimeout)
    );
}

#[test]
fn jitter_stays_within_bounds_and_spreads_over_many_seeds() {
    // Proves, over 10,000 seeds, that deadlines are never earlier than the
    // configured silence (or auth timeout), never later by the jitter
    // percentage or more, and are spread across that range.
    let cfg = SessionConfig::default();
    let silence_ms = cfg.heartbeat_timeout_ms();
    let span_ms = silence_ms * u64::from(cfg.heartbeat_jitter_pct) / 100;
    let mut heartbeat = BTreeSet::new();
    for seed in 0..10_000u64 {
        let mut pair = Pair::with_seed(cfg.clone(), seed);
        let auth_deadline = pair.timeout().unwrap();
        assert!(
            (10_000..11_000).contains(&auth_deadline),
            "seed {seed}: {auth_deadline}"
        );
        pair.send(auth("phone-1"));
        drop(pair.event());
        pair.auth_ok();
        let jitter = pair.session.heartbeat_deadline(&cfg).unwrap() - silence_ms;
        assert!(jitter < span_ms, "seed {seed}: jitter {jitter}");
        heartbeat.insert(jitter);
    }
    assert!(
        heartbeat.len() > 3_000,
        "only {} distinct deadlines",
        heartbeat.len()
    );
    assert!(*heartbeat.first().unwrap() < span_ms / 100);
    assert!(*heartbeat.last().unwrap() > span_ms * 99 / 100);
    // Each tenth of the span gets roughly a tenth of the seeds.
    for tenth in 0..10 {
        let range = (span_ms * tenth / 10)..(span_ms * (tenth + 1) / 10);
        let n = heartbeat.range(range).count();
        assert!(n > 300, "tenth {tenth}: {n}");
    }
}

// ---- requests ----------------------------------------------------------------

#[test]
fn requests_pass_through_with_their_request_ids() {
    // Proves a valid request leaves as Event::Request, untouched, and the
    // driver's answer reaches the client with the same request id.
    let mut pair = Pair::live(SessionConfig::default());
    let id = pair.send(send_text("hello bob"));
    let Some(Event::Request(request)) = pair.event() else {
        panic!("no request")
    };
    assert_eq!(
        *request,
        pb::Frame {
            request_id: id,
            body: Some(send_text("hello bob"))
        }
    );
    assert!(
        pair.recv().is_empty(),
        "the session does not answer requests itself"
    );

    let typing = Body::Typing(pb::TypingRequest {
        conversation_id: "g:team".into(),
        typing: true,
    });
    pair.send_frame(pb::Frame {
        request_id: 0,
        body: Some(typing.clone()),
    });
    let Some(Event::Request(request)) = pair.event() else {
        panic!("no typing")
    };
    assert_eq!(request.body, Some(typing), "typing may carry request id 0");

    let ack_frame = pb::Frame {
        request_id: id,
        body: Some(Body::SendAck(pb::SendAck {
            client_msg_id: "01HZX3".into(),
            conversation_id: "d:alice:bob".into(),
            seq: 12,
            ..Default::default()
        })),
    };
    pair.session
        .queue_frame(&pair.cfg, pair.now_ms, &ack_frame)
        .unwrap();
    assert_eq!(pair.recv(), [ack_frame]);
}

#[test]
fn an_invalid_request_gets_an_error_and_the_connection_stays() {
    // Proves validation failures answer with the request id and a typed code,
    // hand nothing to the backend, and keep the session live.
    let mut pair = Pair::live(SessionConfig::default());
    let long = "x".repeat(16_385);
    let id = pair.send(send_text(&long));
    assert!(pair.event().is_none());
    assert_eq!(error_of(&pair.recv()[0]), (id, ErrorCode::InvalidArgument));

    pair.send_frame(pb::Frame {
        request_id: 0,
        body: Some(send_text("no id")),
    });
    assert!(pair.event().is_none());
    assert_eq!(error_of(&pair.recv()[0]), (0, ErrorCode::InvalidArgument));

    pair.send_frame(pb::Frame {
        request_id: 77,
        body: None,
    });
    assert_eq!(error_of(&pair.recv()[0]), (77, ErrorCode::BadFrame));

    pair.send_bytes(&[0x0a, 0x05, 0x01]); // a truncated field: malformed body
    assert_eq!(error_of(&pair.recv()[0]), (0, ErrorCode::BadFrame));

    assert!(pair.session.is_live());
    let id = pair.send(send_text("valid again"));
    assert!(matches!(pair.event(), Some(Event::Request(r)) if r.request_id == id));
}

#[test]
fn a_server_only_frame_gets_server_only_frame_and_the_connection_stays() {
    // Proves server-only frames are refused with their own request_id
    // (section 4: an answer carries its request's id) whether the session
    // decodes them (refused by the codec before they are built) or the
    // driver did, and that the connection stays.
    let mut pair = Pair::live(SessionConfig::default());
    let id = pair.send(Body::Deliver(pb::Deliver::default()));
    assert!(pair.event().is_none());
    assert_ne!(id, 0);
    assert_eq!(error_of(&pair.recv()[0]), (id, ErrorCode::ServerOnlyFrame));

    let kick = Body::Kick(pb::Kick::default());
    pair.session.handle_frame(
        &pair.cfg,
        1,
        UNIX_AT_ZERO_MS,
        pb::Frame {
            request_id: id + 1,
            body: Some(kick),
        },
    );
    assert_eq!(
        error_of(&pair.recv()[0]),
        (id + 1, ErrorCode::ServerOnlyFrame)
    );
    // Bytes whose request_id follows the server-only body (any field order
    // is valid protobuf): the refusal still carries it.
    let mut body = Vec::new();
    codec::encode_body(
        &pb::Frame {
            request_id: 0,
            body: Some(Body::Ok(pb::Ok::default())),
        },
        &mut body,
    );
    body.extend_from_slice(&[0x08, 0xd2, 0x09]); // request_id (1, VARINT) = 1234
    pair.send_bytes(&body);
    assert_eq!(
        error_of(&pair.recv()[0]),
        (1234, ErrorCode::ServerOnlyFrame)
    );
    assert!(pair.session.is_live());
}

#[test]
fn an_oversized_frame_gets_frame_too_large_and_closes() {
    // Proves the frame bound is checked before decoding and closes.
    let cfg = SessionConfig {
        frame_bytes_max: 100,
        ..SessionConfig::default()
    };
    let mut pair = Pair::live(cfg);
    pair.send_bytes(&[0u8; 101]);
    assert_eq!(error_of(&pair.recv()[0]), (0, ErrorCode::FrameTooLarge));
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::FrameTooLarge)
    );
}

#[test]
fn a_request_while_an_event_is_held_gets_overloaded() {
    // Proves the one-event slot is a bound with a defined outcome: a driver
    // that did not drain poll_event loses nothing silently.
    let mut pair = Pair::live(SessionConfig::default());
    let first = pair.send(send_text("one"));
    let second = pair.send(send_text("two"));
    assert_eq!(error_of(&pair.recv()[0]), (second, ErrorCode::Overloaded));
    assert!(matches!(pair.event(), Some(Event::Request(r)) if r.request_id == first));
    assert!(pair.event().is_none());
}

// ---- outbox ------------------------------------------------------------------

#[test]
fn a_full_outbox_by_frames_makes_a_slow_consumer() {
    // Proves outbox_frames_max: the frame past it is refused with
    // SlowConsumer, the backlog is dropped, only Kick SLOW_CONSUMER remains,
    // and the session closes once that is taken.
    let cfg = SessionConfig {
        outbox_frames_max: 8,
        ..SessionConfig::default()
    };
    let mut pair = Pair::live(cfg);
    let push = pb::Frame {
        request_id: 0,
        body: Some(Body::TypingEvent(pb::TypingEvent::default())),
    };
    for _ in 0..8 {
        pair.session.queue_frame(&pair.cfg, 1, &push).unwrap();
    }
    assert_eq!(pair.session.outbox_frames(), 8);
    assert_eq!(
        pair.session.queue_frame(&pair.cfg, 1, &push),
        Err(QueueError::SlowConsumer)
    );
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Draining {
            reason: CloseReason::SlowConsumer,
            ..
        }
    ));
    assert_eq!(
        pair.session.queue_frame(&pair.cfg, 1, &push),
        Err(QueueError::Closing)
    );
    let frames = pair.recv();
    assert_eq!(frames.len(), 1);
    assert_eq!(kick_of(&frames[0]).0, KickReason::SlowConsumer);
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::SlowConsumer)
    );
}

#[test]
fn a_full_outbox_by_bytes_makes_a_slow_consumer_and_hands_the_body_back() {
    // Proves outbox_bytes_max with shared pre-encoded bodies: the one that
    // does not fit comes back untouched, and the session drains.
    let mut pair = Pair::live(SessionConfig::default());
    let body = Bytes::from(vec![0u8; 300 * 1024]);
    for _ in 0..3 {
        pair.session
            .queue_encoded(&pair.cfg, 1, body.clone())
            .unwrap();
    }
    assert_eq!(pair.session.outbox_bytes(), 900 * 1024);
    let rejected = pair
        .session
        .queue_encoded(&pair.cfg, 1, body.clone())
        .unwrap_err();
    assert_eq!(rejected.error, QueueError::SlowConsumer);
    assert_eq!(
        rejected.body.as_ptr(),
        body.as_ptr(),
        "the same body is handed back"
    );
    let frames = pair.recv();
    assert_eq!(
        frames.len(),
        1,
        "the backlog was dropped, only the kick is left"
    );
    assert_eq!(kick_of(&frames[0]).0, KickReason::SlowConsumer);
    assert!(pair.session.is_closed());
    assert_eq!(pair.session.heap_bytes(), 0);
}

#[test]
fn frames_go_out_in_order_and_only_to_live_sessions() {
    // Proves the outbox is FIFO, and that nothing but the session's own
    // frames is queued before Welcome.
    let mut pair = Pair::new(SessionConfig::default());
    let frame = pb::Frame {
        request_id: 0,
        body: Some(Body::Ok(pb::Ok::default())),
    };
    assert_eq!(
        pair.session.queue_frame(&pair.cfg, 0, &frame),
        Err(QueueError::NotLive)
    );
    let mut pair = Pair::live(SessionConfig::default());
    for seq in 1..=5 {
        let ok = pb::Frame {
            request_id: seq,
            body: Some(Body::Ok(pb::Ok {
                seq,
                id: String::new(),
            })),
        };
        pair.session.queue_frame(&pair.cfg, 0, &ok).unwrap();
    }
    let ids: Vec<u64> = pair.recv().iter().map(|f| f.request_id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

// ---- the unacked-delivery window ---------------------------------------------

#[test]
fn a_cumulative_ack_clears_several_frames_at_once() {
    // Proves one cursor covers every frame of its conversation up to its seq,
    // and leaves later ones in flight.
    let mut pair = Pair::live(SessionConfig::default());
    for seq in 1..=4 {
        let (cursors, body) = deliver(&[("d:alice:bob", seq)]);
        pair.session
            .push_deliver(&pair.cfg, 0, &cursors, body)
            .unwrap();
    }
    assert_eq!(pair.recv().len(), 4);
    assert_eq!(pair.session.unacked(), 4);
    pair.send(ack(&[("d:alice:bob", 3)]));
    assert_eq!(pair.session.unacked(), 1);
    pair.send(ack(&[("d:alice:bob", 2)]));
    assert_eq!(pair.session.unacked(), 1, "a lower cursor changes nothing");
    pair.send(ack(&[("d:alice:bob", 4)]));
    assert_eq!(pair.session.unacked(), 0);
    assert_eq!(pair.session.heap_bytes(), 0);
    assert!(pair.recv().is_empty(), "acks are not answered");
}

#[test]
fn a_partial_ack_does_not_clear_a_frame_of_two_conversations() {
    // Proves a frame carrying two conversations stays until both are covered,
    // even when their acks arrive in separate frames, and that an ack of
    // another conversation does not count.
    let mut pair = Pair::live(SessionConfig::default());
    let (cursors, body) = deliver(&[("d:alice:bob", 5), ("g:team", 9), ("g:team", 10)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, body)
        .unwrap();
    drop(pair.recv());
    pair.send(ack(&[("d:alice:bob", 5), ("g:other", 10)]));
    assert_eq!(pair.session.unacked(), 1);
    pair.send(ack(&[("g:team", 9)]));
    assert_eq!(pair.session.unacked(), 1, "g:team is needed up to 10");
    pair.send(ack(&[("g:team", 10)]));
    assert_eq!(pair.session.unacked(), 0);
}

#[test]
fn a_full_window_hands_the_frame_back() {
    // Proves unacked_window_max: the frame past it is returned with
    // WindowFull, nothing is queued, the session stays live, and an ack makes
    // room again.
    let cfg = SessionConfig {
        unacked_window_max: 3,
        ..SessionConfig::default()
    };
    let mut pair = Pair::live(cfg);
    for seq in 1..=3 {
        let (cursors, body) = deliver(&[("g:team", seq)]);
        pair.session
            .push_deliver(&pair.cfg, 0, &cursors, body)
            .unwrap();
    }
    let (cursors, body) = deliver(&[("g:team", 4)]);
    let rejected = pair
        .session
        .push_deliver(&pair.cfg, 0, &cursors, body.clone())
        .unwrap_err();
    assert_eq!(rejected.error, QueueError::WindowFull);
    assert_eq!(rejected.body, body);
    assert_eq!(pair.recv().len(), 3);
    assert!(pair.session.is_live());
    pair.send(ack(&[("g:team", 1)]));
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, rejected.body)
        .unwrap();
    assert_eq!(pair.session.unacked(), 3);

    let (_, body) = deliver(&[("g:team", 5)]);
    let rejected = pair
        .session
        .push_deliver(&pair.cfg, 0, &[(ConvKey::of("g:team"), 0)], body);
    assert_eq!(rejected.unwrap_err().error, QueueError::NoCursors);
}

/// A configuration that resends unacked deliveries (the defaults do not):
/// after 2 s, then 4 s and 8 s, the wait capped at 16 s, three times.
fn retransmitting() -> SessionConfig {
    SessionConfig {
        retransmit_initial_ms: 2_000,
        retransmit_max_ms: 16_000,
        retransmit_attempts_max: 3,
        ..SessionConfig::default()
    }
}

#[test]
fn by_default_an_unacked_frame_is_never_resent_and_leaves_the_window_after_10_s() {
    // Proves the default: nothing is written twice on one connection; an
    // unacked deliver holds its window slot for 10 s, then leaves it and is
    // counted as dropped (the client syncs what it lacks).
    let mut pair = Pair::live(SessionConfig::default());
    let (cursors, body) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, body)
        .unwrap();
    assert_eq!(pair.recv().len(), 1);
    assert_eq!(pair.timeout(), Some(10_000));
    pair.run_until(9_999);
    assert_eq!(pair.session.unacked(), 1);
    pair.run_until(10_000);
    assert!(pair.recv().is_empty(), "never resent");
    assert_eq!(pair.session.unacked(), 0, "left the window at 10 s");
    let stats = pair.session.take_stats();
    assert_eq!(stats.retransmits, 0);
    assert_eq!(stats.dropped_after_retries, 1);
}

#[test]
fn unacked_frames_are_retransmitted_at_2_4_8_s_then_dropped() {
    // Proves the retransmit schedule when configured: the same bytes again
    // at +2 s, +4 s and +8 s after the previous send, then (after the capped
    // 16 s wait) the frame leaves the window and is counted; an acked frame
    // pushed alongside is never resent.
    let mut pair = Pair::live(retransmitting());
    let (cursors, body) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, body.clone())
        .unwrap();
    let (other_cursors, other) = deliver(&[("d:alice:bob", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &other_cursors, other)
        .unwrap();
    assert_eq!(pair.recv().len(), 2);
    pair.send(ack(&[("d:alice:bob", 1)]));
    let mut resent_at = Vec::new();
    while let Some(t) = pair.timeout().filter(|&t| t < 60_000) {
        pair.run_until(t);
        for frame in pair.recv() {
            assert_eq!(delivered(&frame), [("g:team".to_owned(), 1)]);
            resent_at.push(t);
        }
    }
    assert_eq!(resent_at, [2_000, 6_000, 14_000]);
    assert_eq!(pair.session.unacked(), 0, "dropped at 30 s");
    let stats = pair.session.take_stats();
    assert_eq!(stats.retransmits, 3);
    assert_eq!(stats.dropped_after_retries, 1);
    assert_eq!(
        pair.session.take_stats().retransmits,
        0,
        "take_stats resets"
    );
    assert!(
        pair.session.is_live(),
        "silence is measured from the last ack at 0 s"
    );
}

#[test]
fn a_copy_still_in_the_outbox_is_not_queued_twice() {
    // Proves a retransmit deadline that passes while the client has not yet
    // been handed the frame does not duplicate it (the attempt still counts).
    let mut pair = Pair::live(retransmitting());
    let (cursors, body) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, body)
        .unwrap();
    pair.run_until(2_000);
    assert_eq!(pair.session.outbox_frames(), 1);
    assert_eq!(pair.session.stats().retransmits, 0);
    assert_eq!(pair.timeout(), Some(6_000));
    assert_eq!(pair.recv().len(), 1);
}

// ---- kick and close ----------------------------------------------------------

#[test]
fn a_kick_drains_what_was_queued_then_closes() {
    // Proves kick: the frames already queued go first, the Kick (with its
    // redirect) last; nothing more is accepted; the session closes once the
    // driver has taken the Kick.
    let mut pair = Pair::live(SessionConfig::default());
    let ok = pb::Frame {
        request_id: 3,
        body: Some(Body::Ok(pb::Ok::default())),
    };
    pair.session.queue_frame(&pair.cfg, 10, &ok).unwrap();
    let (cursors, body) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 10, &cursors, body.clone())
        .unwrap();
    pair.session
        .kick(&pair.cfg, 10, KickReason::Shutdown, "10.0.0.2:7400");
    assert!(matches!(
        pair.session.lifecycle(),
        Lifecycle::Draining {
            reason: CloseReason::Kicked(KickReason::Shutdown),
            ..
        }
    ));
    assert_eq!(
        pair.session.unacked(),
        0,
        "nothing is retransmitted while draining"
    );
    assert_eq!(
        pair.session.queue_frame(&pair.cfg, 10, &ok),
        Err(QueueError::Closing)
    );
    let rejected = pair
        .session
        .push_deliver(&pair.cfg, 10, &cursors, body)
        .unwrap_err();
    assert_eq!(rejected.error, QueueError::Closing);
    pair.send(send_text("ignored"));
    assert!(pair.event().is_none(), "a draining session acts on nothing");
    pair.session.kick(&pair.cfg, 10, KickReason::Admin, "");

    let first = pair.session.poll_transmit().unwrap();
    assert!(
        !pair.session.is_closed(),
        "closed only after the last frame"
    );
    let first = codec::decode_body(&first, usize::MAX).unwrap();
    assert_eq!(first.request_id, 3);
    let rest = pair.recv();
    assert_eq!(rest.len(), 2);
    assert_eq!(delivered(&rest[0]), [("g:team".to_owned(), 1)]);
    assert_eq!(
        kick_of(&rest[1]),
        (KickReason::Shutdown, "10.0.0.2:7400".to_owned())
    );
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::Kicked(KickReason::Shutdown))
    );
    assert_eq!(pair.session.heap_bytes(), 0);
}

#[test]
fn a_drain_that_is_never_read_closes_at_its_deadline() {
    // Proves the drain deadline bounds how long a kicked session that never
    // reads stays around, and that it frees its outbox then.
    let cfg = SessionConfig::default();
    let mut pair = Pair::live(cfg.clone());
    pair.session.kick(&cfg, 100, KickReason::Displaced, "");
    assert_eq!(pair.timeout(), Some(100 + cfg.drain_timeout_ms));
    pair.fire_at(100 + cfg.drain_timeout_ms - 1);
    assert!(!pair.session.is_closed());
    pair.fire_at(100 + cfg.drain_timeout_ms);
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::Kicked(KickReason::Displaced))
    );
    assert!(pair.recv().is_empty(), "the unsent kick was dropped");
    assert_eq!(pair.session.heap_bytes(), 0);
}

#[test]
fn a_peer_that_goes_away_closes_the_session_at_once() {
    // Proves handle_peer_closed drops everything queued or in flight.
    let mut pair = Pair::live(SessionConfig::default());
    let (cursors, body) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&pair.cfg, 0, &cursors, body)
        .unwrap();
    pair.session.handle_peer_closed();
    assert_eq!(
        pair.session.lifecycle(),
        Lifecycle::Closed(CloseReason::PeerClosed)
    );
    assert_eq!(pair.session.outbox_frames(), 0);
    assert_eq!(pair.session.unacked(), 0);
    assert_eq!(pair.timeout(), None);
}

#[test]
fn stats_count_frames_in_and_out() {
    // Proves the frame counters and that take_stats hands out and resets them.
    let mut pair = Pair::live(SessionConfig::default());
    pair.take_stats_reset();
    pair.send(ping(1));
    pair.send(ping(2));
    pair.send_bytes(&[0x0a, 0x05, 0x01]);
    assert_eq!(pair.recv().len(), 3);
    let stats = pair.session.take_stats();
    assert_eq!((stats.frames_in, stats.frames_out), (3, 3));
    assert_eq!(pair.session.stats(), Default::default());
}

impl Pair {
    fn take_stats_reset(&mut self) {
        let _ = self.session.take_stats();
    }
}

// ---- timers ------------------------------------------------------------------

#[test]
fn poll_timeout_is_always_the_earliest_deadline() {
    // Proves, through a scripted life (handshake, pushes at different times,
    // acks, pings, kick), that poll_timeout names the earliest of the auth,
    // heartbeat, retransmit and drain deadlines, and that firing the timer
    // any earlier changes nothing.
    let cfg = retransmitting();
    let mut pair = Pair::new(cfg.clone());
    let auth_deadline = pair.timeout().unwrap();
    assert_no_change_before(&mut pair, auth_deadline);
    pair.now_ms = 500;
    pair.send(auth("phone-1"));
    drop(pair.event());
    assert_eq!(pair.timeout(), Some(auth_deadline));
    pair.now_ms = 1_000;
    pair.auth_ok();
    drop(pair.recv());
    let silence = pair.session.heartbeat_deadline(&cfg).unwrap() - 1_000;
    assert_eq!(
        pair.timeout(),
        Some(1_000 + silence),
        "only the heartbeat is armed"
    );

    // Deliveries at 1 s and 1.5 s: first retransmits at 3 s and 3.5 s.
    let (a_cursors, a) = deliver(&[("g:team", 1)]);
    pair.session
        .push_deliver(&cfg, 1_000, &a_cursors, a)
        .unwrap();
    let (b_cursors, b) = deliver(&[("d:alice:bob", 1)]);
    pair.session
        .push_deliver(&cfg, 1_500, &b_cursors, b)
        .unwrap();
    drop(pair.recv());
    assert_eq!(pair.timeout(), Some(3_000));
    assert_no_change_before(&mut pair, 3_000);
    pair.run_until(3_000);
    drop(pair.recv());
    assert_eq!(
        pair.timeout(),
        Some(3_500),
        "b's deadline is now the earliest"
    );
    pair.now_ms = 3_200;
    pair.send(ack(&[("d:alice:bob", 1)]));
    assert_eq!(
        pair.timeout(),
        Some(7_000),
        "a's second retransmit (3 s + 4 s)"
    );
    pair.send(ack(&[("g:team", 1)]));
    assert_eq!(
        pair.timeout(),
        Some(3_200 + silence),
        "the ack moved the heartbeat"
    );
    assert_no_change_before(&mut pair, 3_200 + silence);

    // A heartbeat earlier than a retransmit wins.
    let mut short = cfg.clone();
    short.heartbeat_interval_ms = 500;
    let (c_cursors, c) = deliver(&[("g:team", 2)]);
    pair.session
        .push_deliver(&short, 3_200, &c_cursors, c)
        .unwrap();
    let heartbeat = pair.session.heartbeat_deadline(&short).unwrap();
    assert!(heartbeat < 5_200);
    assert_eq!(pair.session.poll_timeout(&short), Some(heartbeat));

    pair.session.kick(&cfg, 4_000, KickReason::Admin, "");
    assert_eq!(pair.timeout(), Some(4_000 + cfg.drain_timeout_ms));
    drop(pair.recv());
    assert_eq!(pair.timeout(), None);
}

/// Fires the timer at a few instants before `deadline` and checks that
/// nothing is sent and the lifecycle does not change.
fn assert_no_change_before(pair: &mut Pair, deadline: u64) {
    let state = pair.session.lifecycle();
    let unacked = pair.session.unacked();
    let outbox = pair.session.outbox_frames();
    for t in [pair.now_ms, (pair.now_ms + deadline) / 2, deadline - 1] {
        pair.session.handle_timeout(&pair.cfg, t);
        assert_eq!(
            pair.session.lifecycle(),
            state,
            "changed at {t}, deadline {deadline}"
        );
        assert_eq!(pair.session.unacked(), unacked);
        assert_eq!(pair.session.outbox_frames(), outbox);
    }
}
