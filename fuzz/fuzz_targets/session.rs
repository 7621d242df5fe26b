//! Sequences of client frames, raw bytes, clock steps and driver actions fed
//! to the session state machine (`tern_protocol::session`), driven the way
//! its module documentation says a driver must (drain `poll_event` after
//! every call, fire the timer when `poll_timeout` passes).
//!
//! Beyond "no panic", each step checks:
//!
//! - the lifecycle only moves forward (Handshaking → Authenticating → Live →
//!   Draining → Closed) and `poll_timeout` is `None` exactly when closed;
//! - the outbox and the unacked window stay within their bounds (the outbox
//!   may exceed its frame bound only by the final frames of a closing
//!   session);
//! - every body the session hands out decodes as a frame only the server
//!   sends;
//! - an idle session (empty outbox and window, event drained) owns no heap.
//!
//! The input is structured with `arbitrary`: a config choice, a jitter seed
//! and a list of operations.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tern_protocol::codec::{self, DecodeError};
use tern_protocol::pb::{self, frame::Body};
use tern_protocol::session::{
    AuthOk, ConvKey, Event, Lifecycle, QueueError, Session, SessionConfig,
};
use tern_protocol::validate::{Sender, body_kind};

/// Operations per input; longer inputs are cut here to keep runs fast.
const OPS_MAX: usize = 512;
/// Requests the fuzz driver remembers for answering (the backend's queue).
const PENDING_REQUESTS_MAX: usize = 64;
/// Frames a closing session may queue beyond `outbox_frames_max`: the final
/// `Kick` and `Error` of a heartbeat timeout.
const FINAL_FRAMES_MAX: usize = 2;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Small bounds and short timers reach every limit in a few steps.
    small_config: bool,
    seed: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A well-formed client frame, as bytes (`handle_body`) or decoded
    /// (`handle_frame`).
    Client {
        frame: ClientFrame,
        as_bytes: bool,
    },
    /// Arbitrary bytes as one frame body.
    Raw(Vec<u8>),
    /// A framing error from a TCP driver.
    DecodeError(u8),
    /// Time passes (milliseconds); the timer fires if due.
    Advance(u16),
    /// The timer fires at `now`, whether due or not.
    Timeout,
    /// The token verifier accepts the pending `auth`.
    AuthOk,
    /// The token verifier refuses it with this error code.
    AuthErr(u8),
    /// The backend answers the oldest pending request with a frame whose
    /// `Ok.id` is this many bytes (large ones fill the outbox).
    Reply(u16),
    /// A pre-encoded frame of this many bytes is queued.
    QueueEncoded(u16),
    /// A `Deliver` of `entries` text entries of conversation `conv`, up to
    /// `seq`.
    PushDeliver {
        conv: u8,
        seq: u16,
        entries: u8,
    },
    /// The driver writes up to this many frames.
    Transmit(u8),
    Kick(u8),
    PeerClosed,
    TakeStats,
}

#[derive(Arbitrary, Debug)]
enum ClientFrame {
    Auth {
        request_id: u8,
        version_one: bool,
        bad_device: bool,
    },
    Ping(u64),
    Send {
        request_id: u8,
        text_bytes: u16,
    },
    DeliverAck {
        conv: u8,
        seq: u16,
    },
    Sync {
        cursors: u8,
    },
    Typing {
        conv: u8,
    },
    GroupLeave {
        request_id: u8,
    },
    /// A frame only the server sends.
    Pong,
    /// A frame with no body.
    Empty,
}

fuzz_target!(|input: Input| {
    let cfg = if input.small_config {
        small_config()
    } else {
        SessionConfig::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
    let mut d = Driver {
        session: Session::new(&cfg, 0, input.seed),
        cfg,
        now_ms: 0,
        awaiting_auth: false,
        requests: Vec::new(),
        rank: 0,
    };
    d.after_call();
    for op in input.ops.into_iter().take(OPS_MAX) {
        d.apply(op);
        d.after_call();
    }
});

struct Driver {
    session: Session,
    cfg: SessionConfig,
    now_ms: u64,
    /// An `Event::Authenticate` was taken and not answered yet.
    awaiting_auth: bool,
    /// Request ids taken from `Event::Request`, not answered yet.
    requests: Vec<u64>,
    /// The highest lifecycle rank seen so far.
    rank: u8,
}

impl Driver {
    fn apply(&mut self, op: Op) {
        let (cfg, now) = (&self.cfg, self.now_ms);
        let unix_ms = 1_790_000_000_000 + now;
        match op {
            Op::Client { frame, as_bytes } => {
                let frame = client_frame(frame);
                if as_bytes {
                    let mut body = Vec::new();
                    codec::encode_body(&frame, &mut body);
                    self.session.handle_body(cfg, now, unix_ms, &body);
                } else {
                    self.session.handle_frame(cfg, now, unix_ms, frame);
                }
            }
            Op::Raw(bytes) => self.session.handle_body(cfg, now, unix_ms, &bytes),
            Op::DecodeError(kind) => {
                let error = match kind % 4 {
                    0 => DecodeError::FrameTooLarge {
                        len: u64::MAX,
                        max: cfg.frame_bytes_max,
                    },
                    1 => DecodeError::VarintOverlong,
                    2 => DecodeError::ServerOnly {
                        field: 100 + u32::from(kind % 21),
                        request_id: u64::from(kind),
                    },
                    // A real prost error: field number 0.
                    _ => codec::decode_body(&[0x00], 16).expect_err("field 0 is malformed"),
                };
                self.session.handle_decode_error(cfg, now, &error);
            }
            Op::Advance(ms) => {
                self.now_ms += u64::from(ms);
                if self
                    .session
                    .poll_timeout(cfg)
                    .is_some_and(|t| t <= self.now_ms)
                {
                    self.session.handle_timeout(cfg, self.now_ms);
                }
            }
            Op::Timeout => self.session.handle_timeout(cfg, now),
            Op::AuthOk => {
                let waiting = self.awaiting_auth_now();
                let ok = AuthOk {
                    user_id: "alice",
                    device_id: "d1",
                    node_id: "n1",
                    unix_ms,
                };
                let r = self.session.handle_auth_ok(cfg, now, ok);
                // The verdict is accepted exactly while the session waits for it.
                assert_eq!(r.is_ok(), waiting, "{r:?}");
                assert_eq!(
                    waiting, self.awaiting_auth,
                    "the driver saw the Authenticate event"
                );
                self.awaiting_auth = false;
            }
            Op::AuthErr(code) => {
                let code = pb::ErrorCode::try_from(i32::from(code % 12))
                    .unwrap_or(pb::ErrorCode::AuthFailed);
                let waiting = self.awaiting_auth_now();
                let r = self.session.handle_auth_err(cfg, now, code, "refused");
                assert_eq!(r.is_ok(), waiting, "{r:?}");
                self.awaiting_auth = false;
            }
            Op::Reply(id_bytes) => {
                let request_id = if self.requests.is_empty() {
                    1
                } else {
                    self.requests.remove(0)
                };
                let ok = pb::Ok {
                    seq: 7,
                    id: "x".repeat(usize::from(id_bytes)),
                };
                let frame = pb::Frame {
                    request_id,
                    body: Some(Body::Ok(ok)),
                };
                let r = self.session.queue_frame(cfg, now, &frame);
                self.check_queue_result(r.err());
            }
            Op::QueueEncoded(len) => {
                let frame = pb::Frame {
                    request_id: 0,
                    body: Some(Body::Ok(pb::Ok {
                        seq: 0,
                        id: "y".repeat(usize::from(len)),
                    })),
                };
                let mut body = Vec::new();
                codec::encode_body(&frame, &mut body);
                let body = Bytes::from(body);
                match self.session.queue_encoded(cfg, now, body.clone()) {
                    Ok(()) => {}
                    Err(rejected) => {
                        assert_eq!(rejected.body, body, "a refused body is handed back");
                        self.check_queue_result(Some(rejected.error));
                    }
                }
            }
            Op::PushDeliver { conv, seq, entries } => {
                let conversation = conversation(conv);
                let first = u64::from(seq).saturating_sub(u64::from(entries % 16));
                let deliver = pb::Deliver {
                    entries: (first..=u64::from(seq))
                        .map(|s| pb::Entry {
                            conversation_id: conversation.clone(),
                            seq: s,
                            sender: "bob".into(),
                            ..Default::default()
                        })
                        .collect(),
                };
                let frame = pb::Frame {
                    request_id: 0,
                    body: Some(Body::Deliver(deliver)),
                };
                let mut body = Vec::new();
                codec::encode_body(&frame, &mut body);
                let body = Bytes::from(body);
                let cursors = [(ConvKey::of(&conversation), u64::from(seq))];
                let unacked_before = self.session.unacked();
                match self.session.push_deliver(cfg, now, &cursors, body.clone()) {
                    Ok(()) => assert_eq!(self.session.unacked(), unacked_before + 1),
                    Err(rejected) => {
                        assert_eq!(rejected.body, body, "a refused body is handed back");
                        if rejected.error == QueueError::NoCursors {
                            assert_eq!(seq, 0);
                        }
                        self.check_queue_result(Some(rejected.error));
                    }
                }
            }
            Op::Transmit(n) => {
                for _ in 0..n {
                    let Some(body) = self.session.poll_transmit() else {
                        break;
                    };
                    let frame = codec::decode_body(&body, usize::MAX)
                        .expect("the session sends only decodable frames");
                    let body = frame.body.expect("the session sends no empty frame");
                    assert_eq!(body_kind(&body).1, Sender::Server, "{}", body_kind(&body).0);
                }
            }
            Op::Kick(reason) => {
                let reason = pb::KickReason::try_from(i32::from(reason % 8))
                    .unwrap_or(pb::KickReason::Admin);
                self.session.kick(cfg, now, reason, "");
            }
            Op::PeerClosed => {
                self.session.handle_peer_closed();
                assert!(self.session.is_closed());
            }
            Op::TakeStats => {
                let _ = self.session.take_stats();
            }
        }
    }

    fn awaiting_auth_now(&self) -> bool {
        matches!(self.session.lifecycle(), Lifecycle::Authenticating { .. })
    }

    /// A refused queue call names a reason the session's state explains.
    fn check_queue_result(&self, error: Option<QueueError>) {
        match error {
            None => {}
            Some(QueueError::NotLive) => assert!(matches!(
                self.session.lifecycle(),
                Lifecycle::Handshaking { .. } | Lifecycle::Authenticating { .. }
            )),
            Some(QueueError::Closing | QueueError::SlowConsumer) => {
                assert!(matches!(
                    self.session.lifecycle(),
                    Lifecycle::Draining { .. } | Lifecycle::Closed(_)
                ));
            }
            Some(QueueError::WindowFull) => {
                assert_eq!(self.session.unacked(), self.cfg.unacked_window_max);
            }
            Some(QueueError::NoCursors) => {}
        }
    }

    /// Step 4 of the driving order, then the invariants.
    fn after_call(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Authenticate(auth) => {
                    assert!(!self.awaiting_auth, "one auth at a time");
                    assert_eq!(tern_protocol::ids::check_id(&auth.device_id), Ok(()));
                    self.awaiting_auth = true;
                }
                Event::Request(frame) => {
                    // Requests carry a request id; `typing` is a notice the
                    // backend also gets, without one.
                    let typing = matches!(frame.body, Some(Body::Typing(_)));
                    assert!(frame.request_id != 0 || typing, "{frame:?}");
                    if !typing && self.requests.len() < PENDING_REQUESTS_MAX {
                        self.requests.push(frame.request_id);
                    }
                }
            }
        }
        let s = &self.session;
        let rank = match s.lifecycle() {
            Lifecycle::Handshaking { .. } => 0,
            Lifecycle::Authenticating { .. } => 1,
            Lifecycle::Live { .. } => 2,
            Lifecycle::Draining { .. } => 3,
            Lifecycle::Closed(_) => 4,
        };
        assert!(
            rank >= self.rank,
            "lifecycle went back: {:?}",
            s.lifecycle()
        );
        self.rank = rank;
        if !matches!(s.lifecycle(), Lifecycle::Authenticating { .. }) {
            self.awaiting_auth = false;
        }
        assert_eq!(s.poll_timeout(&self.cfg).is_none(), s.is_closed());
        assert!(s.outbox_frames() <= self.cfg.outbox_frames_max + FINAL_FRAMES_MAX);
        assert!(s.unacked() <= self.cfg.unacked_window_max);
        if s.is_closed() {
            assert_eq!((s.outbox_frames(), s.unacked()), (0, 0));
        }
        if s.outbox_frames() == 0 && s.unacked() == 0 {
            assert_eq!(s.heap_bytes(), 0, "an idle session owns no heap");
        }
    }
}

fn small_config() -> SessionConfig {
    SessionConfig {
        auth_timeout_ms: 100,
        heartbeat_interval_ms: 50,
        heartbeat_timeout_factor_pct: 150,
        heartbeat_jitter_pct: 50,
        unacked_window_max: 3,
        retransmit_initial_ms: 10,
        retransmit_max_ms: 40,
        retransmit_attempts_max: 2,
        outbox_frames_max: 4,
        outbox_bytes_max: 2_048,
        frame_bytes_max: 1_024,
        page_entries_max: 10,
        drain_timeout_ms: 30,
        ..SessionConfig::default()
    }
}

fn conversation(conv: u8) -> String {
    match conv % 3 {
        0 => "g:team".into(),
        1 => "d:alice:bob".into(),
        _ => format!("g:g{conv}"),
    }
}

fn client_frame(spec: ClientFrame) -> pb::Frame {
    let (request_id, body) = match spec {
        ClientFrame::Auth {
            request_id,
            version_one,
            bad_device,
        } => (
            u64::from(request_id),
            Some(Body::Auth(pb::Auth {
                token: "jwt".into(),
                device_id: if bad_device {
                    "bad device".into()
                } else {
                    "d1".into()
                },
                protocol_version: if version_one { 1 } else { 2 },
                ..Default::default()
            })),
        ),
        ClientFrame::Ping(nonce) => (0, Some(Body::Ping(pb::Ping { nonce }))),
        ClientFrame::Send {
            request_id,
            text_bytes,
        } => (
            u64::from(request_id),
            Some(Body::Send(pb::Send {
                client_msg_id: format!("m{request_id}"),
                to: Some(pb::send::To::UserId("bob".into())),
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text {
                        text: "t".repeat(usize::from(text_bytes)),
                    })),
                }),
                ..Default::default()
            })),
        ),
        ClientFrame::DeliverAck { conv, seq } => (
            0,
            Some(Body::DeliverAck(pb::DeliverAck {
                cursors: vec![pb::Cursor {
                    conversation_id: conversation(conv),
                    seq: seq.into(),
                }],
            })),
        ),
        ClientFrame::Sync { cursors } => (
            9,
            Some(Body::Sync(pb::SyncRequest {
                cursors: (0..cursors % 8)
                    .map(|c| pb::Cursor {
                        conversation_id: conversation(c),
                        seq: 0,
                    })
                    .collect(),
                limit: 0,
            })),
        ),
        ClientFrame::Typing { conv } => (
            0,
            Some(Body::Typing(pb::TypingRequest {
                conversation_id: conversation(conv),
                typing: true,
            })),
        ),
        ClientFrame::GroupLeave { request_id } => (
            u64::from(request_id),
            Some(Body::GroupLeave(pb::GroupLeave {
                group_id: "team".into(),
            })),
        ),
        ClientFrame::Pong => (0, Some(Body::Pong(pb::Pong::default()))),
        ClientFrame::Empty => (3, None),
    };
    pb::Frame { request_id, body }
}
