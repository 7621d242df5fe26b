//! Edge protection over real sockets (issue 13): rate limits answered
//! `RATE_LIMITED` with `retry_after_ms` and nothing lost, repeated abuse
//! kicked, connection floods from one IP throttled while another IP chats,
//! allow/deny lists on the client listeners and the HTTP edge (and their
//! SIGHUP reload in a real `tern` process), flapping devices refused for a
//! while. Sources other than 127.0.0.1 are other loopback addresses
//! (127.0.0.0/8 is all loopback). Each test says what it proves.

// Tests wait with short sleeps.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{Client, Gateway, SECRET, WAIT, text_content};
use tern_gateway::config::{Config, Driver};
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), WAIT)?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// What a login attempt from `from` came to.
enum Login {
    /// Welcomed: the client, ready to chat.
    Welcome(Client),
    /// Answered with an error (code, retry_after_ms) and closed.
    Refused(pb::ErrorCode, u32),
    /// Closed (or reset) without an answer.
    Closed,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Welcome(_) => f.write_str("Welcome"),
            Self::Refused(code, retry) => write!(f, "Refused({code:?}, {retry} ms)"),
            Self::Closed => f.write_str("Closed"),
        }
    }
}

/// Connects from `from` and sends `auth` as `user` on `device`.
fn login_from(from: [u8; 4], to: SocketAddr, user: &str, device: &str) -> Login {
    let Ok(stream) = connect_from(from, to) else {
        return Login::Closed;
    };
    let mut c = Client::from_stream(stream);
    let auth = pb::Frame {
        request_id: 1,
        body: Some(Body::Auth(pb::Auth {
            token: Gateway::token(user),
            device_id: device.into(),
            protocol_version: 1,
            platform: pb::Platform::Cli as i32,
            ..Default::default()
        })),
    };
    let mut out = Vec::new();
    codec::encode_frame(&auth, &mut out);
    if c.send_raw(&out).is_err() {
        return Login::Closed;
    }
    match c
        .read_frame_until(Instant::now() + WAIT)
        .and_then(|f| f.body)
    {
        Some(Body::Welcome(_)) => Login::Welcome(c),
        Some(Body::Error(e)) => Login::Refused(
            pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
            e.retry_after_ms,
        ),
        _ => Login::Closed,
    }
}

fn gateway(tweak: impl FnOnce(&mut Config)) -> Gateway {
    Gateway::start_with(Driver::Epoll, tweak)
}

fn send(c: &mut Client, to: &str, id: &str, text: &str) -> pb::Frame {
    c.request(Body::Send(pb::Send {
        client_msg_id: id.into(),
        to: Some(pb::send::To::UserId(to.into())),
        content: Some(text_content(text)),
        ..Default::default()
    }))
}

/// Proves a user over its message rate is answered RATE_LIMITED with a
/// retry_after_ms, that nothing of the refused send is stored, and that the
/// same send (same client_msg_id) resent after retry_after_ms is stored
/// exactly once: bob's history holds one copy of each message.
#[test]
fn over_the_message_rate_nothing_is_lost_and_the_resend_is_stored_once() {
    let gw = gateway(|c| {
        c.limits.messages_per_user_per_second = 1;
        c.limits.messages_per_user_burst = 2;
        c.limits.refusals_before_kick = 0;
    });
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    for (id, text) in [("m1", "one"), ("m2", "two")] {
        let r = send(&mut alice, "bob", id, text);
        assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    }
    let r = send(&mut alice, "bob", "m3", "three");
    let Some(Body::Error(e)) = r.body else {
        panic!("third send within the burst of 2: {r:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::RateLimited as i32, "{e:?}");
    assert!((1..=1_000).contains(&e.retry_after_ms), "{e:?}");
    std::thread::sleep(Duration::from_millis(u64::from(e.retry_after_ms)));
    let r = send(&mut alice, "bob", "m3", "three");
    let Some(Body::SendAck(ack)) = r.body else {
        panic!("the resend after retry_after_ms: {r:?}")
    };
    assert!(!ack.duplicate, "the refused send stored nothing: {ack:?}");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "laptop");
    let r = bob.request(Body::History(pb::HistoryRequest {
        conversation_id: ack.conversation_id.clone(),
        ..Default::default()
    }));
    let Some(Body::HistoryResult(h)) = r.body else {
        panic!("{r:?}")
    };
    let texts: Vec<String> = h
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
    assert_eq!(texts, ["one", "two", "three"]);
    gw.wait_metric("tern_rate_limited_total{limit=\"user_messages\"} 1\n");
}

/// Proves repeated refusals kick: with room for one request a second and
/// three refusals allowed, a burst of sends gets RATE_LIMITED answers, then
/// `Kick{RATE_LIMITED}` with a retry_after_ms inside the configured window,
/// then the close, counted under its own close reason.
#[test]
fn repeated_abuse_is_kicked_with_a_reason_and_retry_after() {
    let gw = gateway(|c| {
        c.limits.requests_per_connection_per_second = 1;
        c.limits.requests_per_connection_burst = 1;
        c.limits.refusals_before_kick = 3;
        c.limits.kick_retry_after_min_ms = 2_000;
        c.limits.kick_retry_after_max_ms = 4_000;
    });
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    // All ten in one write: the server kicks and closes after the fourth,
    // and a write after that close would fail (broken pipe) on a busy
    // machine where the server is quicker than the test.
    let mut burst = Vec::new();
    for i in 0..10u64 {
        tern_protocol::codec::encode_frame(
            &pb::Frame {
                request_id: 100 + i,
                body: Some(Body::Send(pb::Send {
                    client_msg_id: format!("x{i}"),
                    to: Some(pb::send::To::UserId("bob".into())),
                    content: Some(text_content("spam")),
                    ..Default::default()
                })),
            },
            &mut burst,
        );
    }
    alice.send_raw(&burst).unwrap();
    let (mut limited, mut kick) = (0, None);
    while let Some(f) = alice.next_frame() {
        match f.body {
            Some(Body::Error(e)) if e.code == pb::ErrorCode::RateLimited as i32 => {
                assert!(e.retry_after_ms >= 1, "{e:?}");
                limited += 1;
            }
            Some(Body::Kick(k)) => kick = Some(k),
            _ => {}
        }
    }
    let kick = kick.expect("a kick before the close");
    assert_eq!(kick.reason, pb::KickReason::RateLimited as i32, "{kick:?}");
    assert!((2_000..=4_000).contains(&kick.retry_after_ms), "{kick:?}");
    assert_eq!(limited, 3, "three refusals, then the kick");
    gw.wait_metric("tern_connections_closed_total{reason=\"rate_limited\"} 1\n");
    gw.wait_metric("tern_rate_limit_kicks_total 1\n");
}

/// Proves a flood of connections from 127.0.0.2 is throttled per IP while a
/// client from 127.0.0.3 still connects and chats: the flood's admitted
/// logins stay within what the limit allows for the time the flood took
/// (burst + rate × seconds, per shard), the rest are refused and counted,
/// and 127.0.0.3's two users log in and a message reaches the other.
#[test]
fn a_flood_from_one_ip_is_throttled_while_another_ip_chats() {
    let (rate, burst, shards) = (1u64, 3u64, 2u64);
    let gw = gateway(|c| {
        c.limits.connections_per_ip_per_second = rate as u32;
        c.limits.connections_per_ip_burst = burst as u32;
        c.limits.ip_exempt = Vec::new();
    });
    let started = Instant::now();
    let (mut admitted, mut refused) = (Vec::new(), 0u64);
    for i in 0..40 {
        match login_from([127, 0, 0, 2], gw.tcp, &format!("flood{i}"), "d") {
            Login::Welcome(c) => admitted.push(c),
            Login::Refused(code, retry) => {
                assert_eq!(code, pb::ErrorCode::RateLimited);
                assert!(retry >= 1);
                refused += 1;
            }
            Login::Closed => refused += 1,
        }
    }
    let secs = started.elapsed().as_secs() + 1;
    let allowed = shards * (burst + rate * secs);
    assert!(
        (admitted.len() as u64) <= allowed,
        "{} admitted, at most {allowed} allowed in {secs} s",
        admitted.len()
    );
    assert!(refused > 0);
    gw.wait_metric(&format!(
        "tern_rate_limited_total{{limit=\"ip_connections\"}} {refused}\n"
    ));
    // The neighbour on another address is not throttled.
    let Login::Welcome(mut carol) = login_from([127, 0, 0, 3], gw.tcp, "carol", "d") else {
        panic!("127.0.0.3 refused")
    };
    let Login::Welcome(mut dave) = login_from([127, 0, 0, 3], gw.tcp, "dave", "d") else {
        panic!("127.0.0.3 refused")
    };
    let r = send(&mut carol, "dave", "c1", "hello dave");
    assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    let push = dave.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
    assert_eq!(support::delivered_text(&push).unwrap().2, "hello dave");
}

/// Proves a WebSocket client over its IP's connection rate is told so in
/// HTTP terms: `429 Too Many Requests` with a `Retry-After`, then closed.
#[test]
fn a_websocket_connection_over_the_ip_rate_gets_429() {
    let gw = gateway(|c| {
        c.shards.count = 1;
        c.limits.connections_per_ip_per_second = 1;
        c.limits.connections_per_ip_burst = 1;
        c.limits.ip_exempt = Vec::new();
    });
    let _first = connect_from([127, 0, 0, 2], gw.ws).unwrap();
    let mut second = connect_from([127, 0, 0, 2], gw.ws).unwrap();
    second.set_read_timeout(Some(WAIT)).unwrap();
    let mut text = String::new();
    let _ = second.read_to_string(&mut text);
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text:?}"
    );
    assert!(text.contains("retry-after: 1\r\n"), "{text:?}");
    gw.wait_metric("tern_rate_limited_total{limit=\"ip_connections\"} 1\n");
}

/// Proves a denied CIDR is refused right after accept, before anything is
/// allocated for the connection: each connection from 127.0.0.2 is closed
/// without a byte, the list refusals are counted, and neither the opened
/// counter nor the connections gauge moves; 127.0.0.1 is still served.
#[test]
fn a_denied_cidr_is_refused_before_allocation() {
    let gw = gateway(|c| c.lists.deny = vec!["127.0.0.2/31".into()]);
    for i in 0..5 {
        let mut s = connect_from([127, 0, 0, 2], gw.tcp).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        // EOF (0) or a reset: closed, nothing written.
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "connection {i} got bytes");
    }
    gw.wait_metric("tern_list_refused_total{edge=\"client\"} 5\n");
    let text = gw.http_get("/metrics").1;
    assert!(text.contains("tern_connections_opened_total 0\n"), "{text}");
    assert!(text.contains("tern_connections 0\n"), "{text}");
    let (mut c, _) = Client::login(gw.tcp, "alice", "d");
    assert!(matches!(
        c.request(Body::Ping(pb::Ping { nonce: 1 })).body,
        Some(Body::Pong(_))
    ));
    gw.wait_metric("tern_connections_opened_total 1\n");
}

/// One HTTP/1.0 GET from `from`: the status (0 when closed unanswered).
fn http_get_from(from: [u8; 4], to: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = connect_from(from, to) else {
        return 0;
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Proves the HTTP edge refuses a denied IP on every route (health too):
/// 127.0.0.2 gets no answer, 127.0.0.1 gets 200, and the refusals are
/// counted apart from the client listeners'.
#[test]
fn the_http_edge_refuses_a_denied_ip() {
    let gw = gateway(|c| c.lists.http_deny = vec!["127.0.0.2".into()]);
    assert_eq!(http_get_from([127, 0, 0, 2], gw.http, "/healthz"), 0);
    assert_eq!(http_get_from([127, 0, 0, 2], gw.http, "/metrics"), 0);
    assert_eq!(http_get_from([127, 0, 0, 1], gw.http, "/healthz"), 200);
    gw.wait_metric("tern_list_refused_total{edge=\"http\"} 2\n");
    gw.wait_metric("tern_list_refused_total{edge=\"client\"} 0\n");
    // The client listeners are not behind the HTTP list.
    assert!(matches!(
        login_from([127, 0, 0, 2], gw.tcp, "alice", "d"),
        Login::Welcome(_)
    ));
}

/// Proves a device that logs in more than `flap_connects_max` times within
/// the window is refused with RATE_LIMITED and a retry_after_ms covering
/// the ban (another device of the same user is not), and that a login after
/// retry_after_ms is accepted.
#[test]
fn a_flapping_device_is_refused_then_accepted_after_the_ban() {
    let gw = gateway(|c| {
        c.limits.flap_connects_max = 3;
        c.limits.flap_window_ms = 60_000;
        c.limits.flap_ban_ms = 1_500;
    });
    for _ in 0..3 {
        let Login::Welcome(c) = login_from([127, 0, 0, 1], gw.tcp, "alice", "phone") else {
            panic!("within the flapping count")
        };
        drop(c);
    }
    let Login::Refused(code, retry) = login_from([127, 0, 0, 1], gw.tcp, "alice", "phone") else {
        panic!("the fourth login within a minute flaps")
    };
    assert_eq!(code, pb::ErrorCode::RateLimited);
    assert!((1_000..=1_650).contains(&retry), "retry_after_ms {retry}");
    assert!(matches!(
        login_from([127, 0, 0, 1], gw.tcp, "alice", "laptop"),
        Login::Welcome(_)
    ));
    gw.wait_metric("tern_flap_bans_total 1\n");
    std::thread::sleep(Duration::from_millis(u64::from(retry)));
    assert!(matches!(
        login_from([127, 0, 0, 1], gw.tcp, "alice", "phone"),
        Login::Welcome(_)
    ));
}

/// A `tern serve` process on free loopback ports, killed on drop.
struct Tern {
    child: Child,
    tcp: SocketAddr,
}

impl Drop for Tern {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ports from below the ephemeral range: see [`tern_testkit::free_port`].
use tern_testkit::free_port;

/// Proves a SIGHUP to a running `tern` re-reads the client deny file:
/// 127.0.0.2 logs in, its address is written to the file, and after the
/// signal its connections are refused while 127.0.0.1 still logs in.
#[test]
fn a_sighup_reloads_the_deny_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deny.txt"), "# nobody yet\n").unwrap();
    std::fs::write(
        dir.path().join("tern.toml"),
        "[lists]\ndeny_file = \"deny.txt\"\n",
    )
    .unwrap();
    let [tcp, ws, http] = [free_port(), free_port(), free_port()];
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let log = std::fs::File::create(dir.path().join("tern.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--config", "tern.toml", "--listen", &addr(tcp)])
        .args(["--ws-listen", &addr(ws), "--http", &addr(http)])
        .args([
            "--shards",
            "1",
            "--data-dir",
            "data",
            "--jwt-secret",
            SECRET,
        ])
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let tern = Tern {
        child,
        tcp: addr(tcp).parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(tern.tcp).is_err() {
        assert!(Instant::now() < deadline, "tern did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(
        login_from([127, 0, 0, 2], tern.tcp, "alice", "d1"),
        Login::Welcome(_)
    ));
    std::fs::write(dir.path().join("deny.txt"), "127.0.0.2/32 # now denied\n").unwrap();
    let pid = i32::try_from(tern.child.id()).unwrap();
    // SAFETY: kill with the pid of our own child and a valid signal.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        match login_from([127, 0, 0, 2], tern.tcp, &format!("u{n}"), "d") {
            Login::Closed => break,
            other => assert!(
                Instant::now() < deadline,
                "still admitted after SIGHUP: {other:?}\n{}",
                std::fs::read_to_string(dir.path().join("tern.log")).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(
        login_from([127, 0, 0, 1], tern.tcp, "bob", "d"),
        Login::Welcome(_)
    ));
}
