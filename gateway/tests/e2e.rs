//! End-to-end tests of the gateway over real loopback sockets, with the real
//! backend on a fresh embedded store, run on both drivers (epoll, and
//! io_uring where the kernel has it). Each test says what it proves.

mod support;

use std::{io::Read, net::TcpStream, time::Duration};

use support::{Client, Gateway, delivered_text, drivers, text_content};
use tern_gateway::config::Driver;
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

fn error_code(f: &pb::Frame) -> Option<pb::ErrorCode> {
    match &f.body {
        Some(Body::Error(e)) => pb::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

fn each_driver(test: impl Fn(Driver)) {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        test(d);
    }
}

/// A valid token gets a Welcome carrying the configured heartbeat interval,
/// limits and node id; a ping gets a pong echoing its nonce.
#[test]
fn handshake_welcome_and_ping() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut c, w) = Client::login(gw.tcp, "alice", "phone");
        assert_eq!(w.user_id, "alice");
        assert_eq!(w.device_id, "phone");
        assert_eq!(w.node_id, "test-node");
        assert_eq!(w.heartbeat_interval_ms, 30_000);
        assert_eq!(w.limits.unwrap().frame_bytes_max, 65_536);
        let pong = c.request(Body::Ping(pb::Ping { nonce: 42 }));
        match pong.body {
            Some(Body::Pong(p)) => assert_eq!(p.nonce, 42),
            other => panic!("{other:?}"),
        }
    });
}

/// A bad token, a wrong first frame, and silence past the auth deadline
/// each get their typed error and a closed connection.
#[test]
fn auth_failures_are_typed_and_close() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| c.session.auth_timeout_ms = 300);
        let mut c = Client::connect(gw.tcp);
        let r = c.request(Body::Auth(pb::Auth {
            token: "not-a-jwt".into(),
            device_id: "d".into(),
            protocol_version: 1,
            ..Default::default()
        }));
        assert_eq!(error_code(&r), Some(pb::ErrorCode::AuthFailed));
        assert!(c.closed_within(Duration::from_secs(5)));

        let mut c = Client::connect(gw.tcp);
        c.send_frame(&pb::Frame {
            request_id: 1,
            body: Some(Body::Ping(pb::Ping { nonce: 1 })),
        });
        let f = c.next_frame().expect("an error frame");
        assert_eq!(error_code(&f), Some(pb::ErrorCode::AuthRequired));
        assert!(c.closed_within(Duration::from_secs(5)));

        let mut c = Client::connect(gw.tcp);
        let f = c.next_frame().expect("an error frame");
        assert_eq!(error_code(&f), Some(pb::ErrorCode::AuthTimeout));
        assert!(c.closed_within(Duration::from_secs(5)));

        gw.wait_metric("tern_auth_failures_total 1");
    });
}

/// A live connection that stops sending is kicked with HEARTBEAT_TIMEOUT
/// after the configured share of the interval, and counted.
#[test]
fn heartbeat_timeout_closes_silent_connections() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| {
            c.session.heartbeat_interval_ms = 200;
            c.session.heartbeat_timeout_factor_pct = 150;
        });
        let (mut c, _) = Client::login(gw.tcp, "sleepy", "d1");
        let kick = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
        let Some(Body::Kick(k)) = kick.body else {
            unreachable!()
        };
        assert_eq!(k.reason, pb::KickReason::HeartbeatTimeout as i32);
        assert!(c.closed_within(Duration::from_secs(5)));
        gw.wait_metric("tern_heartbeat_timeouts_total 1");
    });
}

/// Users on different shards: the sender gets a SendAck with the seq, the
/// recipient a Deliver of the same (conversation, seq); a resend of the
/// same client message id returns the original seq as a duplicate and
/// delivers nothing new.
#[test]
fn direct_message_across_shards_and_idempotent_resend() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        // Pick two users that live on different shards.
        let (a, b) = (
            "alice",
            (0..100)
                .map(|i| format!("bob{i}"))
                .find(|b| {
                    tern_gateway::shard::owner_shard(b, 2)
                        != tern_gateway::shard::owner_shard("alice", 2)
                })
                .unwrap(),
        );
        let (mut alice, _) = Client::login(gw.tcp, a, "phone");
        let (mut bob, _) = Client::login(gw.tcp, &b, "phone");
        let ack = alice.send_text(&b, "m1", "hello 👋");
        let Some(Body::SendAck(ack)) = ack.body else {
            panic!("{ack:?}")
        };
        assert_eq!(ack.seq, 1);
        assert!(!ack.duplicate);
        let f = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        let (conv, seq, text) = delivered_text(&f).unwrap();
        assert_eq!(
            (conv.as_str(), seq, text.as_str()),
            (ack.conversation_id.as_str(), 1, "hello 👋")
        );

        let again = alice.send_text(&b, "m1", "hello 👋");
        let Some(Body::SendAck(again)) = again.body else {
            panic!("{again:?}")
        };
        assert_eq!((again.seq, again.duplicate), (1, true));
        bob.send_frame(&pb::Frame {
            request_id: 0,
            body: Some(Body::DeliverAck(pb::DeliverAck {
                cursors: vec![pb::Cursor {
                    conversation_id: conv.clone(),
                    seq: 1,
                }],
            })),
        });
        let next = alice.send_text(&b, "m2", "second");
        let Some(Body::SendAck(next)) = next.body else {
            panic!("{next:?}")
        };
        assert_eq!(next.seq, 2);
        let f = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(
            delivered_text(&f).unwrap().1,
            2,
            "no duplicate delivery of seq 1"
        );
    });
}

/// A group message reaches every member's device (on both shards), and the
/// sender's other device, but not the sending device.
#[test]
fn group_delivery_and_multi_device() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let members: Vec<String> = (0..6).map(|i| format!("member{i}")).collect();
        let (mut owner, _) = Client::login(gw.tcp, "owner", "phone");
        let (mut owner_laptop, _) = Client::login(gw.tcp, "owner", "laptop");
        let mut clients: Vec<Client> = members
            .iter()
            .map(|m| Client::login(gw.tcp, m, "d").0)
            .collect();
        let r = owner.request(Body::GroupCreate(pb::GroupCreate {
            group_id: "team".into(),
            name: "Team".into(),
            members: members.clone(),
            ..Default::default()
        }));
        assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
        let ack = owner.send_group_text("team", "g1", "hi all");
        let Some(Body::SendAck(ack)) = ack.body else {
            panic!("{ack:?}")
        };
        assert_eq!(ack.conversation_id, "g:team");
        let is_msg = |f: &pb::Frame| delivered_text(f).is_some_and(|(_, _, t)| t == "hi all");
        for c in &mut clients {
            c.wait_push(is_msg);
        }
        owner_laptop.wait_push(is_msg);
        // The sending device got the ack, not a copy.
        assert!(!owner.pushes.iter().any(is_msg));
        assert!(
            owner
                .read_frame_until(std::time::Instant::now() + Duration::from_millis(300))
                .is_none_or(|f| !is_msg(&f))
        );
    });
}

/// Messages sent while the recipient is offline are there for it to sync
/// after it logs in, in order, with `more` false at the end.
#[test]
fn offline_then_sync() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        for i in 1..=3 {
            let r = alice.send_text("carol", &format!("c{i}"), &format!("msg {i}"));
            assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
        }
        let (mut carol, _) = Client::login(gw.tcp, "carol", "tablet");
        let r = carol.request(Body::Sync(pb::SyncRequest {
            cursors: vec![],
            limit: 0,
        }));
        let Some(Body::SyncResult(s)) = r.body else {
            panic!("{r:?}")
        };
        let texts: Vec<String> = s
            .entries
            .iter()
            .filter_map(|e| match &e.body {
                Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
                    pb::content::Kind::Text(t) => Some(t.text.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["msg 1", "msg 2", "msg 3"]);
        assert!(!s.more);
    });
}

/// A second login of the same (user, device) displaces the first, which
/// gets a DISPLACED kick and is closed; the new one works.
#[test]
fn same_device_login_displaces_the_old_connection() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut old, _) = Client::login(gw.tcp, "dave", "phone");
        let (mut new, _) = Client::login(gw.tcp, "dave", "phone");
        let kick = old.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
        let Some(Body::Kick(k)) = kick.body else {
            unreachable!()
        };
        assert_eq!(k.reason, pb::KickReason::Displaced as i32);
        assert!(old.closed_within(Duration::from_secs(5)));
        assert!(matches!(
            new.request(Body::Ping(pb::Ping { nonce: 1 })).body,
            Some(Body::Pong(_))
        ));
    });
}

/// Garbage and an oversized length prefix get a typed error and a close,
/// while a neighbour connection on the same gateway keeps working.
#[test]
fn bad_input_closes_only_the_offender() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut neighbour, _) = Client::login(gw.tcp, "nina", "d");

        let mut bad = Client::connect(gw.tcp);
        bad.send_raw(&[0xff; 11]).unwrap(); // an overlong varint
        let f = bad.next_frame().expect("error frame");
        assert_eq!(error_code(&f), Some(pb::ErrorCode::BadFrame));
        assert!(bad.closed_within(Duration::from_secs(5)));

        let (mut big, _) = Client::login(gw.tcp, "bigmouth", "d");
        let mut prefix = Vec::new();
        codec::encode_prefix(10 << 20, &mut prefix);
        big.send_raw(&prefix).unwrap();
        let f = big.wait_push(|f| error_code(f).is_some());
        assert_eq!(error_code(&f), Some(pb::ErrorCode::FrameTooLarge));
        assert!(big.closed_within(Duration::from_secs(5)));

        let mut junk = Client::connect(gw.tcp);
        let mut frame = Vec::new();
        codec::encode_prefix(3, &mut frame);
        frame.extend_from_slice(&[0x0a, 0xff, 0xff]); // a truncated field
        junk.send_raw(&frame).unwrap();
        let f = junk.next_frame().expect("error frame");
        assert_eq!(error_code(&f), Some(pb::ErrorCode::BadFrame));

        assert!(matches!(
            neighbour.request(Body::Ping(pb::Ping { nonce: 7 })).body,
            Some(Body::Pong(_))
        ));
        let r = neighbour.send_text("someone", "n1", "still here");
        assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    });
}

/// A client that never reads is closed as a slow consumer once its outbox
/// bound is hit, and counted; the sender is not slowed down.
#[test]
fn slow_consumer_is_closed_and_counted() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| {
            c.session.outbox_frames_max = 16;
            c.session.unacked_window_max = 100_000;
            c.session.frame_bytes_max = 16 * 1024;
            c.session.outbox_bytes_max = 64 * 1024;
        });
        let (sink, _) = Client::login(gw.tcp, "sink", "d");
        sink.stream.set_nonblocking(false).unwrap();
        let (mut sender, _) = Client::login(gw.tcp, "source", "d");
        let text = "x".repeat(8000);
        for i in 0..2_000 {
            let r = sender.send_text("sink", &format!("s{i}"), &text);
            assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
            if gw
                .http_get("/metrics")
                .1
                .contains("tern_slow_consumer_closes_total 1")
            {
                // The close is a reset, not a FIN queued behind what the
                // client never read: the stalled client hears of it, and the
                // server's socket and its buffers are gone at once.
                let mut sink = &sink.stream;
                sink.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match sink.read(&mut buf) {
                        Ok(0) => panic!("closed with a FIN behind unsent bytes"),
                        Ok(_) => continue,
                        Err(e) => {
                            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                            return;
                        }
                    }
                }
            }
        }
        panic!(
            "the slow consumer was never closed: {}",
            gw.http_get("/metrics").1
        );
    });
}

/// A WebSocket client (the tungstenite client) authenticates with binary
/// messages and exchanges messages with a TCP client.
#[test]
fn websocket_client_talks_to_tcp_client() {
    use prost::Message as _;
    use tungstenite::Message;
    each_driver(|d| {
        let gw = Gateway::start(d);
        let stream = TcpStream::connect(gw.ws).unwrap();
        let (mut ws, _) = tungstenite::client::client(format!("ws://{}/", gw.ws), stream).unwrap();
        let auth = pb::Frame {
            request_id: 1,
            body: Some(Body::Auth(pb::Auth {
                token: Gateway::token("webby"),
                device_id: "browser".into(),
                protocol_version: 1,
                ..Default::default()
            })),
        };
        ws.send(Message::Binary(auth.encode_to_vec().into()))
            .unwrap();
        let read = |ws: &mut tungstenite::WebSocket<TcpStream>| loop {
            match ws.read().unwrap() {
                Message::Binary(b) => return pb::Frame::decode(&b[..]).unwrap(),
                _ => continue,
            }
        };
        let w = read(&mut ws);
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
        let (mut tcp, _) = Client::login(gw.tcp, "tcpuser", "d");
        let send = pb::Frame {
            request_id: 2,
            body: Some(Body::Send(pb::Send {
                client_msg_id: "w1".into(),
                to: Some(pb::send::To::UserId("tcpuser".into())),
                content: Some(text_content("from the browser")),
                ..Default::default()
            })),
        };
        ws.send(Message::Binary(send.encode_to_vec().into()))
            .unwrap();
        let ack = read(&mut ws);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        let f = tcp.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(delivered_text(&f).unwrap().2, "from the browser");
        tcp.send_text("webby", "t1", "from tcp");
        let f = loop {
            let f = read(&mut ws);
            if matches!(f.body, Some(Body::Deliver(_))) {
                break f;
            }
        };
        assert_eq!(delivered_text(&f).unwrap().2, "from tcp");
    });
}

/// /healthz and /readyz answer; /metrics shows connections and messages.
#[test]
fn http_health_and_metrics() {
    let gw = Gateway::start(Driver::Epoll);
    assert_eq!(gw.http_get("/healthz").0, 200);
    assert_eq!(gw.http_get("/readyz").0, 200);
    let (mut c, _) = Client::login(gw.tcp, "metered", "d");
    c.send_text("other", "x1", "hi");
    let (status, body) = gw.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("tern_connections 1"), "{body}");
    assert!(body.contains("tern_messages_sent_total 1"), "{body}");
    assert!(
        body.contains("tern_send_ack_latency_seconds_count 1"),
        "{body}"
    );
    assert_eq!(gw.http_get("/nope").0, 404);
}

/// Shutdown kicks connected clients with SHUTDOWN and closes them.
#[test]
fn graceful_shutdown_kicks_clients() {
    each_driver(|d| {
        let mut gw = Gateway::start(d);
        let (mut c, _) = Client::login(gw.tcp, "leaver", "d");
        let server = gw.server.take().unwrap();
        let t = std::thread::spawn(move || server.shutdown());
        let kick = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
        let Some(Body::Kick(k)) = kick.body else {
            unreachable!()
        };
        assert_eq!(k.reason, pb::KickReason::Shutdown as i32);
        assert!(c.closed_within(Duration::from_secs(5)));
        t.join().unwrap();
    });
}

/// Friends see each other come online and go offline (presence derived from
/// connections), and typing in a 1:1 chat is pushed to the peer.
#[test]
fn presence_follows_connections_and_typing_is_pushed() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        {
            let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
            befriend(&mut alice, &mut bob);
            alice.typing("d:alice:bob");
            let t = bob.wait_typing();
            assert_eq!((t.user_id.as_str(), t.typing), ("alice", true));
        }
        // alice's only connection closed: bob sees her go offline.
        let p = bob.wait_push(|f| match &f.body {
            Some(Body::PresenceEvent(p)) => p.presence.as_ref().is_some_and(|p| {
                p.user_id == "alice" && p.state == pb::PresenceState::Offline as i32
            }),
            _ => false,
        });
        assert!(matches!(p.body, Some(Body::PresenceEvent(_))));
        let (_alice, _) = Client::login(gw.tcp, "alice", "laptop");
        bob.wait_push(|f| match &f.body {
            Some(Body::PresenceEvent(p)) => p.presence.as_ref().is_some_and(|p| {
                p.user_id == "alice" && p.state == pb::PresenceState::Online as i32
            }),
            _ => false,
        });
    });
}

/// A device that logs in with resume cursors is pushed what it lacks after
/// them (and only for the conversations it listed), as a Deliver it acks.
#[test]
fn resume_cursors_push_what_the_device_lacks() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        for i in 1..=3 {
            let r = alice.send_text("bob", &format!("r{i}"), &format!("resume {i}"));
            assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
        }
        let mut bob = Client::connect(gw.tcp);
        let w = bob.request(Body::Auth(pb::Auth {
            token: Gateway::token("bob"),
            device_id: "phone".into(),
            protocol_version: 1,
            resume_cursors: vec![pb::Cursor {
                conversation_id: "d:alice:bob".into(),
                seq: 1,
            }],
            ..Default::default()
        }));
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
        let f = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        let Some(Body::Deliver(dl)) = f.body else {
            unreachable!()
        };
        let seqs: Vec<u64> = dl.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
    });
}

/// Presence updates that meet a full backend queue (a connect storm) wait
/// and arrive in order: after many logins and logouts through a one-slot
/// queue, a friend sees the user's true final state, offline then online.
#[test]
#[allow(clippy::disallowed_methods)] // polls the server from the test thread
fn presence_survives_a_full_backend_queue_in_order() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| c.backend.queue_entries_max = 1);
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        {
            let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
            befriend(&mut alice, &mut bob);
        }
        // Many others log in and out at once, each a presence update through
        // the one-slot queue, with alice's own comings and goings among them.
        for round in 0..5 {
            let crowd: Vec<_> = (0..20)
                .map(|i| Client::login(gw.tcp, &format!("u{round}x{i}"), "d").0)
                .collect();
            let alice = Client::login(gw.tcp, "alice", &format!("d{round}")).0;
            drop(crowd);
            drop(alice);
        }
        let state = |bob: &mut Client| {
            let r = bob.request(Body::PresenceQuery(pb::PresenceQuery {
                user_ids: vec!["alice".into()],
            }));
            let Some(Body::PresenceResult(p)) = r.body else {
                panic!("{r:?}")
            };
            p.presences[0].state
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state(&mut bob) != pb::PresenceState::Offline as i32 {
            assert!(
                std::time::Instant::now() < deadline,
                "alice never went offline"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _alice = Client::login(gw.tcp, "alice", "last").0;
        while state(&mut bob) != pb::PresenceState::Online as i32 {
            assert!(
                std::time::Instant::now() < deadline,
                "alice never came online"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw.wait_metric("tern_presence_dropped_total 0");
    });
}

/// `alice` asks `bob` to be friends and `bob` accepts (presence goes to
/// friends only).
fn befriend(alice: &mut Client, bob: &mut Client) {
    let r = alice.request(Body::FriendRequest(pb::FriendRequestSend {
        user_id: "bob".into(),
        message: "hi".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = bob.request(Body::FriendAccept(pb::FriendAccept {
        user_id: "alice".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
}
