//! Webhooks over real HTTP: an in-process gateway (embedded store) calls
//! receivers played by the test (std TcpListener threads that record every
//! request and answer as told: 200, 500, garbage, or never). Proves that
//! events arrive signed (checked here and by the Python example of
//! docs/http-api.md), that a before-send hook rejects and rewrites, and that
//! a hanging, failing or garbage-speaking receiver never stops chat.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Client, Gateway, WAIT, delivered_text};
use tern_gateway::config::{Config, Driver, FailurePolicy};
use tern_protocol::pb::{self, frame::Body};

const SECRET: &str = "whk-test-secret";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Recorded {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How a receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// 200 with the body the closure gives.
    Ok,
    /// 500.
    Fail,
    /// Bytes that are not HTTP.
    Garbage,
    /// Reads the request, never answers (until the receiver stops).
    Hang,
}

/// A webhook receiver on a loopback port.
struct Receiver {
    addr: SocketAddr,
    /// Serves https (with this identity) instead of http.
    tls: bool,
    got: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Answerer = Arc<dyn Fn(&Recorded) -> Value + Send + Sync>;

impl Receiver {
    fn start(mode: Mode) -> Self {
        Self::answering(mode, Arc::new(|_| json!({})))
    }

    fn answering(mode: Mode, answer: Answerer) -> Self {
        Self::answering_on(mode, answer, None)
    }

    /// An https receiver with `tls`'s identity.
    fn https(mode: Mode, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::answering_on(mode, Arc::new(|_| json!({})), Some(tls))
    }

    fn answering_on(mode: Mode, answer: Answerer, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let secure = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (g, s, answer) = (g.clone(), s.clone(), answer.clone());
                        let tls = tls.clone();
                        conns.push(std::thread::spawn(move || {
                            stream.set_nonblocking(false).unwrap();
                            stream
                                .set_read_timeout(Some(Duration::from_millis(50)))
                                .unwrap();
                            match tls {
                                Some(cfg) => {
                                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                                    let stream = rustls::StreamOwned::new(conn, stream);
                                    serve(stream, mode, &g, &s, &*answer)
                                }
                                None => serve(stream, mode, &g, &s, &*answer),
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Self {
            addr,
            tls: secure,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.got.lock().clone()
    }

    /// Waits (bounded) until `pred` holds for the requests so far.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.requests();
            if pred(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "never got {what}: {got:#?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads requests off one connection (keep-alive) and answers each.
fn serve(
    mut s: impl Read + Write,
    mode: Mode,
    got: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
    answer: &(dyn Fn(&Recorded) -> Value + Send + Sync),
) {
    let mut buf = Vec::new();
    loop {
        // One request head, then its body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::Relaxed) || !read_more(&mut s, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if stop.load(Ordering::Relaxed) || !read_more(&mut s, &mut buf) {
                return;
            }
        }
        let rec = Recorded {
            headers,
            body: buf[head_end..head_end + len].to_vec(),
        };
        buf.drain(..head_end + len);
        got.lock().push(rec.clone());
        let reply: Vec<u8> = match mode {
            Mode::Ok => {
                let body = answer(&rec).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            Mode::Fail => {
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops".to_vec()
            }
            Mode::Garbage => b"\x00\x01 this is not HTTP at all \xff\r\n\r\n".to_vec(),
            Mode::Hang => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        };
        if s.write_all(&reply).and_then(|()| s.flush()).is_err() || mode == Mode::Garbage {
            return;
        }
    }
}

/// Reads what is there into `buf`; false at EOF or error (a timeout is not
/// an error: the caller checks `stop` and calls again).
fn read_more(s: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn gateway(tweak: impl FnOnce(&mut Config)) -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.webhooks.secret = SECRET.into();
        tweak(c);
    })
}

/// The value of one sample in /metrics (0 when absent).
fn metric(gw: &Gateway, sample: &str) -> u64 {
    let text = gw.http_get("/metrics").1;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

/// Waits (bounded) until a metric sample reaches `at_least`.
fn wait_metric_at_least(gw: &Gateway, sample: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(gw, sample);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed at {v} (< {at_least})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hex_hmac(data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a recorded request's `X-Tern-Signature` the way a receiver does.
fn assert_signed(r: &Recorded) {
    let ts = &r.headers["x-tern-timestamp"];
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    assert_eq!(
        r.headers["x-tern-signature"],
        format!("sha256={}", hex_hmac(&signed)),
        "bad signature on {r:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = ts.parse().unwrap();
    assert!(now.abs_diff(ts) < 300, "timestamp {ts} vs now {now}");
    assert!(r.headers["webhook-signature"].starts_with("v1,"));
    assert!(!r.headers["webhook-id"].is_empty());
}

fn all_events(reqs: &[Recorded]) -> Vec<Value> {
    reqs.iter()
        .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn has_event(reqs: &[Recorded], pred: impl Fn(&Value) -> bool) -> bool {
    all_events(reqs).iter().any(pred)
}

fn history(c: &mut Client, conversation: &str) -> Vec<pb::Entry> {
    let r = c.request(Body::History(pb::HistoryRequest {
        conversation_id: conversation.into(),
        before_seq: 0,
        limit: 50,
        thread_root_seq: 0,
    }));
    match r.body {
        Some(Body::HistoryResult(h)) => h.entries,
        other => panic!("{other:?}"),
    }
}

fn texts(entries: &[pb::Entry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
                pb::content::Kind::Text(t) => Some(t.text.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The Python signature check of docs/http-api.md, extracted from the doc.
fn doc_verifier() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http-api.md"))
        .unwrap();
    let start = doc
        .find("```python\n# verify_tern_webhook.py")
        .expect("docs/http-api.md has the verify_tern_webhook.py example");
    let code = &doc[start + "```python\n".len()..];
    code[..code.find("```").unwrap()].to_owned()
}

/// Runs the doc's verifier on (timestamp, signature, body): its exit status.
fn run_doc_verifier(script: &std::path::Path, ts: &str, sig: &str, body: &[u8]) -> bool {
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .env("TERN_WEBHOOK_SECRET", SECRET)
        .arg(ts)
        .arg(sig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the docs example");
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().success()
}

/// Events of a small chat arrive at the receiver, each POST signed: online,
/// a 1:1 message (with its text), a read mark, an edit (with its new text),
/// a recall, a group created
/// and a group message, a friend request. The signature verifies here and
/// with the docs' Python example, which refuses a forged body and a stale
/// timestamp.
#[test]
fn events_arrive_signed() {
    let rx = Receiver::start(Mode::Ok);
    let gw = gateway(|c| c.webhooks.events_url = rx.url());
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let ack = alice.send_text("bob", "m1", "hello bob");
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("{ack:?}")
    };
    bob.wait_push(|f| delivered_text(f).is_some());
    let r = bob.request(Body::Read(pb::ReadRequest {
        conversation_id: ack.conversation_id.clone(),
        up_to_seq: ack.seq,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = alice.request(Body::Edit(pb::EditRequest {
        conversation_id: ack.conversation_id.clone(),
        seq: ack.seq,
        client_edit_id: "e1".into(),
        content: Some(support::text_content("hello bob!")),
        streaming: false,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = alice.request(Body::Recall(pb::RecallRequest {
        conversation_id: ack.conversation_id.clone(),
        seq: ack.seq,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "team".into(),
        name: "Team".into(),
        members: vec!["bob".into()],
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    let r = alice.send_group_text("team", "g1", "hi team");
    assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    let r = alice.request(Body::FriendRequest(pb::FriendRequestSend {
        user_id: "bob".into(),
        message: "hi".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");

    let got = rx.wait_for("every event", |reqs| {
        let t = |kind: &str, pred: &dyn Fn(&Value) -> bool| {
            has_event(reqs, |e| e["type"] == kind && pred(&e["data"]))
        };
        t("user.online", &|d| d["user"] == "alice")
            && t("user.online", &|d| d["user"] == "bob")
            && t("message.stored", &|d| {
                d["conversation_id"] == "d:alice:bob"
                    && d["sender"] == "alice"
                    && d["client_msg_id"] == "m1"
                    && d["content"] == json!({"type": "text", "text": "hello bob"})
            })
            && t("message.read", &|d| {
                d["sender"] == "bob" && d["up_to_seq"] == ack.seq
            })
            && t("message.edited", &|d| {
                d["edited_seq"] == ack.seq
                    && d["sender"] == "alice"
                    && d["content"] == json!({"type": "text", "text": "hello bob!"})
                    && d["edit_count"] == 1
                    && d["streaming"] == false
            })
            && t("message.recalled", &|d| d["recalled_seq"] == ack.seq)
            && t("group.changed", &|d| {
                d["group_id"] == "team" && d["change"]["kind"] == "created"
            })
            && t("message.stored", &|d| {
                d["conversation_id"] == "g:team" && d["content"]["text"] == "hi team"
            })
            && t("friend.requested", &|d| {
                d["from"] == "alice" && d["to"] == "bob"
            })
    });
    let events = all_events(&got);
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    for r in &got {
        assert_signed(r);
    }
    // The docs' verifier accepts a real one and refuses a forgery.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify_tern_webhook.py");
    std::fs::write(&script, doc_verifier()).unwrap();
    let r = &got[0];
    let (ts, sig) = (
        &r.headers["x-tern-timestamp"],
        &r.headers["x-tern-signature"],
    );
    assert!(
        run_doc_verifier(&script, ts, sig, &r.body),
        "docs verifier refused a real request"
    );
    let mut forged = r.body.clone();
    forged.extend_from_slice(b" ");
    assert!(
        !run_doc_verifier(&script, ts, sig, &forged),
        "docs verifier took a forged body"
    );
    let stale = (ts.parse::<u64>().unwrap() - 3600).to_string();
    let mut signed = format!("{stale}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let stale_sig = format!("sha256={}", hex_hmac(&signed));
    assert!(
        !run_doc_verifier(&script, &stale, &stale_sig, &r.body),
        "docs verifier took a replay from an hour ago"
    );
    wait_metric_at_least(
        &gw,
        "tern_webhook_events_delivered_total",
        events.len() as u64,
    );
    assert_eq!(metric(&gw, "tern_webhook_events_dropped_total"), 0);
}

/// A receiver that hangs, answers 500, or answers bytes that are not HTTP:
/// every send is still acked and delivered, the POSTs are retried (counted)
/// and finally counted as failed (or, hanging, still in flight).
#[test]
fn a_broken_event_receiver_never_stalls_chat() {
    for mode in [Mode::Fail, Mode::Garbage, Mode::Hang] {
        let rx = Receiver::start(mode);
        let gw = gateway(|c| {
            let w = &mut c.webhooks;
            w.events_url = rx.url();
            w.events_timeout_ms = 200;
            w.events_attempts_max = 3;
            w.events_retry_initial_ms = 10;
            w.events_retry_max_ms = 40;
            w.events_posts_in_flight_max = 1;
            w.events_shutdown_grace_ms = 100;
        });
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        for i in 0..20 {
            let r = alice.send_text("bob", &format!("m{i}"), &format!("text {i}"));
            assert!(matches!(r.body, Some(Body::SendAck(_))), "{mode:?}: {r:?}");
            let text = format!("text {i}");
            bob.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t == text));
        }
        rx.wait_for("a retried POST", |reqs| reqs.len() >= 2);
        wait_metric_at_least(&gw, "tern_webhook_events_retried_total", 1);
        if mode != Mode::Hang {
            wait_metric_at_least(&gw, "tern_webhook_events_failed_total", 1);
        }
        assert_eq!(
            metric(&gw, "tern_webhook_events_delivered_total"),
            0,
            "{mode:?}"
        );
    }
}

/// A queue of one event behind a hanging receiver: the rest is dropped and
/// counted, and chat goes on. Shutdown does not wait for the hanging POST
/// (60 s timeout, 5 attempts): after the grace its event and the queued one
/// are counted as dropped, none as failed (they would be, 5 minutes later,
/// if shutdown waited for the attempts to run out).
#[test]
fn a_full_event_queue_drops_and_counts() {
    let rx = Receiver::start(Mode::Hang);
    let gw = gateway(|c| {
        let w = &mut c.webhooks;
        w.events_url = rx.url();
        w.events_queue_max = 1;
        w.events_per_post_max = 1;
        w.events_posts_in_flight_max = 1;
        w.events_timeout_ms = 60_000;
        w.events_shutdown_grace_ms = 100;
    });
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    for i in 0..20 {
        let r = alice.send_text("bob", &format!("m{i}"), "x");
        assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    }
    wait_metric_at_least(&gw, "tern_webhook_events_dropped_total", 1);
    drop(alice);
    let mut gw = gw;
    let server = gw.server.take().unwrap();
    let metrics = server.metrics.webhooks.clone();
    let dropped = metrics.events_dropped.load(Ordering::Relaxed);
    server.shutdown();
    // The POST in flight and the event queued behind it (more may have come
    // from the logout: the offline events).
    assert!(
        metrics.events_dropped.load(Ordering::Relaxed) >= dropped + 2,
        "{metrics:?}"
    );
    assert_eq!(
        metrics.events_failed.load(Ordering::Relaxed),
        0,
        "{metrics:?}"
    );
    assert_eq!(metrics.events_queue_depth.load(Ordering::Relaxed), 0);
}

/// A hook that rejects "spam" and rewrites "darn": the rejected sender gets
/// CONTENT_REJECTED with the hook's reason and nothing is stored or pushed;
/// the rewritten message reaches the recipient (1:1 and group) with the new
/// text; the hook saw the original, signed.
#[test]
fn before_send_rejects_and_rewrites() {
    let hook = Receiver::answering(
        Mode::Ok,
        Arc::new(|r: &Recorded| {
            let results: Vec<Value> = r.json()["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let text = m["content"]["text"].as_str().unwrap_or_default();
                    if text.contains("spam") {
                        json!({"action": "reject", "reason": "no spam here"})
                    } else if text.contains("darn") {
                        json!({"action": "rewrite", "text": text.replace("darn", "d**n")})
                    } else {
                        json!({"action": "allow"})
                    }
                })
                .collect();
            json!({ "results": results })
        }),
    );
    let gw = gateway(|c| c.webhooks.before_send_url = hook.url());
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");

    let r = alice.send_text("bob", "s1", "buy spam now");
    let Some(Body::Error(e)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::ContentRejected as i32);
    assert_eq!(e.reason, "no spam here");

    let r = alice.send_text("bob", "s2", "oh darn");
    assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    let f = bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&f).unwrap().2, "oh d**n");

    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "team".into(),
        name: "Team".into(),
        members: vec!["bob".into()],
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    let r = alice.send_group_text("team", "g1", "darn it");
    assert!(matches!(r.body, Some(Body::SendAck(_))), "{r:?}");
    bob.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t == "d**n it"));

    // Pipelined (likely one batch): each answer is the one for its own
    // request, the rejected one between two stored ones.
    for (id, text) in [(101, "first"), (102, "more spam"), (103, "last")] {
        alice.send_frame(&pb::Frame {
            request_id: id,
            body: Some(Body::Send(pb::Send {
                client_msg_id: format!("p{id}"),
                to: Some(pb::send::To::UserId("bob".into())),
                content: Some(support::text_content(text)),
                ..Default::default()
            })),
        });
    }
    let mut answers = HashMap::new();
    while answers.len() < 3 {
        let f = alice.next_frame().expect("three answers");
        if f.request_id >= 101 {
            answers.insert(f.request_id, f.body);
        }
    }
    assert!(
        matches!(answers[&101], Some(Body::SendAck(_))),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[&102], Some(Body::Error(e)) if e.code == pb::ErrorCode::ContentRejected as i32),
        "{answers:?}"
    );
    assert!(
        matches!(answers[&103], Some(Body::SendAck(_))),
        "{answers:?}"
    );

    // Only what the hook let through is stored, the rewrite as rewritten.
    assert_eq!(
        texts(&history(&mut bob, "d:alice:bob")),
        ["oh d**n", "first", "last"]
    );
    let seen = hook.requests();
    assert!(seen.iter().any(|r| {
        r.json()["messages"][0]
            == json!({
                "kind": "send", "from": "alice", "device": "phone", "to_user": "bob",
                "client_msg_id": "s1",
                "content": {"type": "text", "text": "buy spam now"},
                "mentions": [], "mention_all": false, "reply_to_seq": 0,
            })
    }));
    for r in &seen {
        assert_signed(r);
    }
    assert_eq!(
        metric(&gw, "tern_webhook_before_send_total{outcome=\"rejected\"}"),
        2
    );
    assert_eq!(
        metric(&gw, "tern_webhook_before_send_total{outcome=\"rewritten\"}"),
        2
    );
}

/// Edits pass the before-send hook like sends: a rejected edit gets
/// CONTENT_REJECTED with the hook's reason and changes nothing (the stored
/// text stays, nothing is pushed, the message's edit count stays 0); a
/// rewritten edit is stored and pushed as rewritten; the hook saw the edit
/// as `"kind": "edit"` with its conversation, seq and client_edit_id.
#[test]
fn before_send_sees_edits() {
    let hook = Receiver::answering(
        Mode::Ok,
        Arc::new(|r: &Recorded| {
            let results: Vec<Value> = r.json()["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let text = m["content"]["text"].as_str().unwrap_or_default();
                    if text.contains("spam") {
                        json!({"action": "reject", "reason": "no spam in edits either"})
                    } else if text.contains("darn") {
                        json!({"action": "rewrite", "text": text.replace("darn", "d**n")})
                    } else {
                        json!({"action": "allow"})
                    }
                })
                .collect();
            json!({ "results": results })
        }),
    );
    let gw = gateway(|c| c.webhooks.before_send_url = hook.url());
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let r = alice.send_text("bob", "m1", "hello");
    let Some(Body::SendAck(ack)) = r.body else {
        panic!("{r:?}")
    };
    bob.wait_push(|f| delivered_text(f).is_some());
    let edit = |id: &str, text: &str| {
        Body::Edit(pb::EditRequest {
            conversation_id: "d:alice:bob".into(),
            seq: ack.seq,
            client_edit_id: id.into(),
            content: Some(support::text_content(text)),
            streaming: false,
        })
    };

    let r = alice.request(edit("e1", "buy spam now"));
    let Some(Body::Error(e)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::ContentRejected as i32);
    assert_eq!(e.reason, "no spam in edits either");
    let log = history(&mut bob, "d:alice:bob");
    assert_eq!(log.len(), 1, "no edit entry: {log:?}");
    assert_eq!(texts(&log), ["hello"]);
    let Some(pb::entry::Body::Message(m)) = &log[0].body else {
        panic!("{log:?}")
    };
    assert_eq!(m.edit_count, 0);

    let r = alice.request(edit("e2", "oh darn"));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    // The first push bob gets after the refused edit is the rewritten one.
    let f = bob.wait_push(|f| matches!(&f.body, Some(Body::Deliver(_))));
    let Some(Body::Deliver(d)) = &f.body else {
        unreachable!()
    };
    let Some(pb::entry::Body::Edited(x)) = &d.entries[0].body else {
        panic!("{d:?}")
    };
    assert_eq!((x.seq, x.edit_count), (ack.seq, 1));
    assert_eq!(
        x.content.as_ref().and_then(|c| c.kind.clone()),
        Some(pb::content::Kind::Text(pb::Text {
            text: "oh d**n".into()
        }))
    );
    assert_eq!(texts(&history(&mut bob, "d:alice:bob")), ["oh d**n"]);

    let seen = hook.requests();
    assert!(
        seen.iter().any(|r| {
            r.json()["messages"][0]
                == json!({
                    "kind": "edit", "from": "alice", "device": "phone",
                    "conversation_id": "d:alice:bob", "seq": ack.seq, "client_edit_id": "e1",
                    "content": {"type": "text", "text": "buy spam now"}, "streaming": false,
                })
        }),
        "{:?}",
        seen.iter().map(Recorded::json).collect::<Vec<_>>()
    );
    assert_eq!(
        metric(&gw, "tern_webhook_before_send_total{outcome=\"rejected\"}"),
        1
    );
    assert_eq!(
        metric(&gw, "tern_webhook_before_send_total{outcome=\"rewritten\"}"),
        1
    );
}

/// A before-send hook that hangs, answers 500, or answers garbage (bytes
/// that are not HTTP, or JSON of the wrong shape): fail-open stores and
/// delivers the send as it was; fail-closed refuses it with INTERNAL and
/// stores nothing. Either way the sender gets an answer.
#[test]
fn a_broken_before_send_hook_fails_open_or_closed() {
    let wrong_shape: Answerer = Arc::new(|_| json!({"results": "yes"}));
    for (mode, answer) in [
        (Mode::Hang, None),
        (Mode::Fail, None),
        (Mode::Garbage, None),
        (Mode::Ok, Some(wrong_shape)),
    ] {
        for policy in [FailurePolicy::Open, FailurePolicy::Closed] {
            let hook = match &answer {
                Some(a) => Receiver::answering(mode, a.clone()),
                None => Receiver::start(mode),
            };
            let gw = gateway(|c| {
                c.webhooks.before_send_url = hook.url();
                c.webhooks.before_send_timeout_ms = 200;
                c.webhooks.before_send_failure = policy;
            });
            let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
            let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
            let r = alice.send_text("bob", "m1", "hello");
            let stored = texts(&history(&mut bob, "d:alice:bob"));
            match policy {
                FailurePolicy::Open => {
                    assert!(matches!(r.body, Some(Body::SendAck(_))), "{mode:?}: {r:?}");
                    bob.wait_push(|f| delivered_text(f).is_some());
                    assert_eq!(stored, ["hello"]);
                    assert_eq!(
                        metric(
                            &gw,
                            "tern_webhook_before_send_total{outcome=\"failed_open\"}"
                        ),
                        1
                    );
                }
                FailurePolicy::Closed => {
                    let Some(Body::Error(e)) = r.body else {
                        panic!("{mode:?}: {r:?}")
                    };
                    assert_eq!(e.code, pb::ErrorCode::Internal as i32, "{mode:?}");
                    assert!(stored.is_empty(), "{mode:?}: {stored:?}");
                    assert_eq!(
                        metric(
                            &gw,
                            "tern_webhook_before_send_total{outcome=\"failed_closed\"}"
                        ),
                        1
                    );
                }
            }
        }
    }
}

/// Sends of the server API are not put to the before-send hook (the
/// service that made them is trusted), and requests other than sends and
/// edits never are.
#[test]
fn before_send_skips_the_server_api_and_other_requests() {
    let hook = Receiver::start(Mode::Fail);
    let gw = gateway(|c| {
        c.webhooks.before_send_url = hook.url();
        c.webhooks.before_send_failure = FailurePolicy::Closed;
        c.api.keys = vec![tern_gateway::config::ApiKeyConfig {
            name: "crm".into(),
            key: "admin-key-0123456789".into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        }];
    });
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (s, body) = gw.api(
        "POST",
        "/api/v1/messages",
        Some("admin-key-0123456789"),
        &json!({"request_id": "r1", "from": "alice", "to_user": "bob",
                "content": {"type": "text", "text": "from the CRM"}}),
    );
    assert_eq!(s, 200, "{body}");
    bob.wait_push(|f| delivered_text(f).is_some());
    let r = bob.request(Body::Read(pb::ReadRequest {
        conversation_id: "d:alice:bob".into(),
        up_to_seq: 1,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    assert!(hook.requests().is_empty(), "{:?}", hook.requests());
}

/// Bad webhook settings are refused at start with the key named.
#[test]
fn bad_settings_are_refused() {
    for (tweak, name) in [
        (
            (|c: &mut Config| c.webhooks.events_url = "ftp://example.com/h".into())
                as fn(&mut Config),
            "webhooks.events_url",
        ),
        (
            |c: &mut Config| c.webhooks.before_send_url = "not a url".into(),
            "webhooks.before_send_url",
        ),
        (
            |c: &mut Config| {
                c.webhooks.events_url = "http://127.0.0.1:1/h".into();
                c.webhooks.secret.clear();
            },
            "webhooks.secret",
        ),
        (
            |c: &mut Config| c.webhooks.events_attempts_max = 0,
            "webhooks.events_attempts_max",
        ),
    ] {
        let mut c = Config::default();
        c.webhooks.secret = SECRET.into();
        tweak(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn events_reach_an_https_receiver_trusted_by_ca_file() {
    // Proves: an https:// events_url is delivered over TLS, verified against
    // `[webhooks] ca_file` (a private CA): the events arrive signed. Without
    // the file (the system's roots) the same receiver is not trusted: no
    // request reaches it and the delivery fails and is counted. Real
    // sockets, a rustls receiver played by the test.
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = support::https_identity(dir.path());

    let rx = Receiver::https(Mode::Ok, tls.clone());
    let gw = gateway(|c| {
        c.webhooks.events_url = rx.url();
        c.webhooks.events_attempts_max = 1;
    });
    let (_alice, _) = Client::login(gw.tcp, "alice", "phone");
    wait_metric_at_least(&gw, "tern_webhook_events_failed_total", 1);
    assert!(rx.requests().is_empty(), "{:?}", rx.requests());
    drop(gw);

    let rx = Receiver::https(Mode::Ok, tls);
    let gw = gateway(|c| {
        c.webhooks.events_url = rx.url();
        c.webhooks.ca_file = Some(ca);
    });
    let (_alice, _) = Client::login(gw.tcp, "alice", "phone");
    let got = rx.wait_for("user.online over https", |reqs| {
        has_event(reqs, |e| {
            e["type"] == "user.online" && e["data"]["user"] == "alice"
        })
    });
    assert_signed(&got[0]);
}

/// The room messages (`Entry`s) `room_history` serves, as texts.
fn room_texts(c: &mut Client, room: &str) -> Vec<(u64, String)> {
    let r = c.request(Body::RoomHistory(pb::RoomHistoryRequest {
        room_id: room.into(),
        before_seq: 0,
        limit: 0,
    }));
    let Some(Body::RoomHistoryResult(h)) = r.body else {
        panic!("{r:?}")
    };
    h.entries
        .iter()
        .map(|e| (e.seq, texts(std::slice::from_ref(e)).concat()))
        .collect()
}

/// Room posts pass the before-send hook and feed the event feed like
/// sends: a rejected post gets CONTENT_REJECTED with the hook's reason,
/// stores nothing and uses no seq (the next post is seq 1, and no member
/// got a push for it); a rewritten post is stored and pushed as rewritten;
/// the hook saw the post as `"kind": "room_post"`; the feed carries one
/// signed `room.posted` event per stored post (none for the refused one),
/// server API posts included, which skip the hook; the owner's deletion is
/// one `room.deleted` event.
#[test]
fn room_posts_pass_before_send_and_become_events() {
    let hook = Receiver::answering(
        Mode::Ok,
        Arc::new(|r: &Recorded| {
            let results: Vec<Value> = r.json()["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let text = m["content"]["text"].as_str().unwrap_or_default();
                    if text.contains("spam") {
                        json!({"action": "reject", "reason": "no spam in rooms"})
                    } else if text.contains("darn") {
                        json!({"action": "rewrite", "text": text.replace("darn", "d**n")})
                    } else {
                        json!({"action": "allow"})
                    }
                })
                .collect();
            json!({ "results": results })
        }),
    );
    let events = Receiver::start(Mode::Ok);
    const KEY: &str = "rooms-key-0123456789";
    let gw = gateway(|c| {
        c.webhooks.before_send_url = hook.url();
        c.webhooks.events_url = events.url();
        c.api.keys = vec![tern_gateway::config::ApiKeyConfig {
            name: "svc".into(),
            key: KEY.into(),
            scopes: vec!["rooms".into()],
            tenant: String::new(),
        }];
    });
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let r = alice.request(Body::RoomCreate(pb::RoomCreate {
        room_id: "lobby".into(),
        name: "Lobby".into(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::RoomInfoResult(_))), "{r:?}");
    let r = bob.request(Body::RoomJoin(pb::RoomJoin {
        room_id: "lobby".into(),
    }));
    assert!(matches!(r.body, Some(Body::RoomJoined(_))), "{r:?}");
    let post = |c: &mut Client, text: &str| {
        c.request(Body::RoomPost(pb::RoomPost {
            room_id: "lobby".into(),
            content: Some(support::text_content(text)),
            client_msg_id: "p1".into(),
        }))
    };

    let r = post(&mut alice, "buy spam now");
    let Some(Body::Error(e)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::ContentRejected as i32);
    assert_eq!(e.reason, "no spam in rooms");
    let r = post(&mut alice, "oh darn");
    let Some(Body::Ok(ok)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(ok.seq, 1, "the refused post used no seq");
    // The first room push bob gets is the rewritten post.
    let f = bob.wait_push(|f| matches!(f.body, Some(Body::RoomDeliver(_))));
    let Some(Body::RoomDeliver(d)) = f.body else {
        unreachable!()
    };
    let entry = d.entry.unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(texts(&[entry]), ["oh d**n"]);
    assert_eq!(room_texts(&mut bob, "lobby"), [(1, "oh d**n".to_owned())]);

    // The server API's post is trusted: no hook, but an event.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/rooms/lobby/posts",
        Some(KEY),
        &json!({"from": "system", "content": {"type": "text", "text": "spam from the CRM"}}),
    );
    assert_eq!(s, 200, "{body}");

    let seen = hook.requests();
    assert!(
        seen.iter().any(|r| {
            r.json()["messages"][0]
                == json!({
                    "kind": "room_post", "from": "alice", "device": "phone",
                    "room_id": "lobby", "client_msg_id": "p1",
                    "content": {"type": "text", "text": "buy spam now"},
                })
        }),
        "{:?}",
        seen.iter().map(Recorded::json).collect::<Vec<_>>()
    );
    assert!(
        !seen
            .iter()
            .any(|r| r.body.windows(8).any(|w| w == b"the CRM\"")),
        "the server API's post went to the hook"
    );
    let got = events.wait_for("two room.posted events", |reqs| {
        all_events(reqs)
            .iter()
            .filter(|e| e["type"] == "room.posted")
            .count()
            >= 2
    });
    for r in &got {
        assert_signed(r);
    }
    let posted: Vec<Value> = all_events(&got)
        .into_iter()
        .filter(|e| e["type"] == "room.posted")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        posted,
        [
            json!({"room_id": "lobby", "seq": 1, "sender": "alice", "sender_device": "phone",
                   "client_msg_id": "p1", "content": {"type": "text", "text": "oh d**n"}}),
            json!({"room_id": "lobby", "seq": 2, "sender": "system", "sender_device": "api",
                   "client_msg_id": "", "content": {"type": "text", "text": "spam from the CRM"}}),
        ]
    );
    // The owner deletes it: a `room.deleted` event.
    let r = alice.request(Body::RoomDelete(pb::RoomDelete {
        room_id: "lobby".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let got = events.wait_for("a room.deleted event", |reqs| {
        has_event(reqs, |e| e["type"] == "room.deleted")
    });
    let deleted: Vec<Value> = all_events(&got)
        .into_iter()
        .filter(|e| e["type"] == "room.deleted")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(deleted, [json!({"room_id": "lobby"})]);
}

/// `tenant_events`: a tenant's events (messages, presence) go to its own
/// receiver signed with its own secret, and never to `events_url`, whose
/// receiver keeps getting everyone else's.
#[test]
fn a_tenants_events_go_to_its_own_receiver() {
    const ACME_SECRET: &str = "acme-hook-secret-0123";
    let rx = Receiver::start(Mode::Ok);
    let acme_rx = Receiver::start(Mode::Ok);
    let gw = gateway(|c| {
        c.webhooks.events_url = rx.url();
        c.webhooks.tenant_events = vec![tern_gateway::config::TenantEvents {
            tenant: "acme".into(),
            url: acme_rx.url(),
            secret: ACME_SECRET.into(),
        }];
    });
    let (mut a, _) = Client::login(gw.tcp, "acme~a", "phone");
    let (mut b, _) = Client::login(gw.tcp, "acme~b", "phone");
    let ack = a.send_text("acme~b", "t1", "acme only");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    b.wait_push(|f| delivered_text(f).is_some());
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let ack = alice.send_text("bob", "t2", "default tenant");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(|f| delivered_text(f).is_some());

    let text_is = |t: &'static str| move |e: &Value| e["data"]["content"]["text"] == t;
    let got = acme_rx.wait_for("acme's message", |r| has_event(r, text_is("acme only")));
    let default = rx.wait_for("the default tenant's message", |r| {
        has_event(r, text_is("default tenant"))
    });
    // Signed with acme's own secret.
    for r in &got {
        let ts = &r.headers["x-tern-timestamp"];
        let mut signed = format!("{ts}.").into_bytes();
        signed.extend_from_slice(&r.body);
        let mut mac = Hmac::<Sha256>::new_from_slice(ACME_SECRET.as_bytes()).unwrap();
        mac.update(&signed);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(r.headers["x-tern-signature"], format!("sha256={hex}"));
    }
    // Nothing of acme's reached the default receiver, nothing else acme's.
    for e in all_events(&default) {
        assert!(
            !e.to_string().contains("acme~"),
            "acme's event on events_url: {e}"
        );
    }
    for e in all_events(&acme_rx.requests()) {
        let s = e["data"].to_string();
        assert!(s.contains("acme~"), "another tenant's event at acme's: {e}");
    }
    acme_rx.wait_for("acme's presence", |r| {
        has_event(r, |e| e["type"] == "user.online")
    });
}
