//! End-to-end tests of `tern-bot`: each test starts the gateway library
//! in-process on loopback port 0 with a fresh embedded store, a stand-in
//! OpenAI-compatible server (a small HTTP server of this file on its own
//! loopback port that streams server-sent events and, told by the question,
//! answers 429 or 500, dies mid-stream, stalls, or holds its stream open
//! until the test releases it), and the built `tern-bot` binary with a TOML
//! file. Users are real protocol clients (`tern-cli`'s `Session`) that
//! watch what the bot writes. Each test says what it proves.

// Polling for what the bot writes needs short sleeps; no shard runs here.
#![allow(clippy::disallowed_methods)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;
use tern_gateway::{
    config::{Config, Driver},
    server::Server,
    service::BackendService,
};
use tern_protocol::pb::{self, frame::Body};
use tern_tools::{
    bot::runner::say,
    cli::{
        conn::ConnectOptions,
        session::{Pushed, Session},
        token::mint_hs256,
    },
};

const SECRET: &str = "bot-test-secret";
/// How long any one expectation may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// The stand-in's answer unless the question asks for something else.
const ANSWER: &str = "The answer is forty-two, of course.";
/// What the stand-in streams before it dies (`mode:die`).
const PARTIAL: &str = "I was about to say";

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// A gateway on an ephemeral loopback port, stopped on drop.
struct Gateway {
    server: Option<Server>,
    tcp: SocketAddr,
    /// The WebSocket listeners and the CA file of `wss` (its self-signed
    /// certificate for `localhost`), when started with them.
    ws: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    ca_file: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// With `websocket`, also `ws` and `wss` listeners on loopback.
    fn start_with(websocket: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cfg = Config::default();
        cfg.listen.tcp = Some(any);
        cfg.listen.ws = None;
        cfg.listen.http = None;
        let mut ca_file = None;
        if websocket {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_file, cert.pem()).unwrap();
            std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
            cfg.listen.ws = Some(any);
            cfg.listen.wss = Some(any);
            cfg.tls.cert_file = Some(cert_file.clone());
            cfg.tls.key_file = Some(key_file);
            ca_file = Some(cert_file);
        }
        cfg.shards.count = 2;
        cfg.shards.driver = Driver::Epoll;
        cfg.auth.jwt_secret = SECRET.into();
        cfg.backend.data_dir = dir.path().to_path_buf();
        cfg.node_id = "bot-test".into();
        cfg.shutdown.deadline_ms = 2_000;
        let service = Arc::new(BackendService::open(&cfg.backend).unwrap());
        let server = Server::start(&cfg, service).unwrap();
        Self {
            tcp: server.tcp_addr.unwrap(),
            ws: server.ws_addr,
            wss: server.wss_addr,
            ca_file,
            server: Some(server),
            _dir: dir,
        }
    }

    /// A logged-in user device that records what it is pushed.
    fn user(&self, user: &str, device: &str) -> Watcher {
        let token = mint_hs256(SECRET, user, 3_600, None).unwrap();
        let s = Session::connect(ConnectOptions::new(self.tcp.to_string(), token, device)).unwrap();
        Watcher::start(Arc::new(s))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------
// A user's device: what it saw
// ---------------------------------------------------------------------------

/// One message as a device holds it after applying entries.
#[derive(Debug, Clone)]
struct Msg {
    /// When this device first saw it.
    seen_at: Instant,
    sender: String,
    text: String,
    streaming: bool,
    /// Seen with `streaming = true` at some point.
    was_streaming: bool,
    /// `Edited` entries applied to it.
    edits: u32,
    reply_to_seq: u64,
}

#[derive(Debug, Default)]
struct Seen {
    /// (conversation, seq) → message.
    msgs: BTreeMap<(String, u64), Msg>,
    /// (conversation, user, typing) in arrival order.
    typing: Vec<(String, String, bool)>,
}

impl Seen {
    fn apply(&mut self, e: &pb::Entry) {
        match &e.body {
            Some(pb::entry::Body::Message(m)) => {
                let text = text_of(m.content.as_ref());
                self.msgs.insert(
                    (e.conversation_id.clone(), e.seq),
                    Msg {
                        seen_at: Instant::now(),
                        sender: e.sender.clone(),
                        text,
                        streaming: m.streaming,
                        was_streaming: m.streaming,
                        edits: 0,
                        reply_to_seq: m.reply_to_seq,
                    },
                );
            }
            Some(pb::entry::Body::Edited(ed)) => {
                if let Some(m) = self.msgs.get_mut(&(e.conversation_id.clone(), ed.seq)) {
                    m.text = text_of(ed.content.as_ref());
                    m.streaming = ed.streaming;
                    m.was_streaming |= ed.streaming;
                    m.edits += 1;
                }
            }
            _ => {}
        }
    }

    /// Messages of `sender` in `conv`, in seq order.
    fn from(&self, conv: &str, sender: &str) -> Vec<(u64, Msg)> {
        self.msgs
            .iter()
            .filter(|((c, _), m)| c == conv && m.sender == sender)
            .map(|((_, s), m)| (*s, m.clone()))
            .collect()
    }
}

fn text_of(c: Option<&pb::Content>) -> String {
    match c.and_then(|c| c.kind.as_ref()) {
        Some(pb::content::Kind::Text(t)) => t.text.clone(),
        _ => String::new(),
    }
}

/// A session whose pushes a thread applies to [`Seen`].
struct Watcher {
    session: Arc<Session>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(session: Arc<Session>) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (session, seen, stop) = (session.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match session.next_pushed(Duration::from_millis(50)) {
                        Ok(Some(Pushed::Entries(es))) => {
                            let mut s = seen.lock();
                            for e in &es {
                                s.apply(e);
                            }
                        }
                        Ok(Some(Pushed::Typing(t))) => {
                            seen.lock()
                                .typing
                                .push((t.conversation_id, t.user_id, t.typing));
                        }
                        Ok(Some(Pushed::Closed(_))) => return,
                        _ => {}
                    }
                }
            })
        };
        Self {
            session,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn me(&self) -> String {
        self.session.me().to_owned()
    }

    /// Sends a text, to a user or a group, with mentions; returns its seq.
    fn say(&self, to: pb::send::To, text: &str, mentions: &[&str]) -> (String, u64) {
        let ack = self
            .session
            .send(pb::Send {
                client_msg_id: format!("t-{}", rand::random::<u64>()),
                to: Some(to),
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
                }),
                mentions: mentions.iter().map(|m| (*m).to_owned()).collect(),
                ..Default::default()
            })
            .unwrap();
        (ack.conversation_id, ack.seq)
    }

    fn tell(&self, user: &str, text: &str) -> (String, u64) {
        self.say(pb::send::To::UserId(user.into()), text, &[])
    }

    /// Waits until `f` finds something in what this device saw.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&Seen) -> Option<T>) -> T {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(t) = f(&self.seen.lock()) {
                return t;
            }
            assert!(
                Instant::now() < until,
                "{}: no {what}: {:#?}",
                self.me(),
                self.seen.lock()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the bot's finished reply to the message at `q_seq`.
    fn final_reply(&self, conv: &str, bot: &str, q_seq: u64) -> (u64, Msg) {
        self.wait_for(&format!("final reply of {bot} to {q_seq}"), |s| {
            s.from(conv, bot)
                .into_iter()
                .find(|(_, m)| m.reply_to_seq == q_seq && !m.streaming)
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.session.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The stand-in API
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Gate {
    /// Streams that asked to be held so far.
    held: u64,
    /// Releases given so far (a hold numbered n waits for n + 1).
    released: u64,
}

/// An OpenAI-compatible chat-completions stand-in. The last message of a
/// request picks the behaviour: `mode:429`, `mode:500`, `mode:die` (two
/// chunks, then the socket closes without `[DONE]`), `mode:stall` (headers,
/// then silence), `mode:hold` (one chunk, then comments until released),
/// `mode:fast` ([`ANSWER`] at once), `mode:long` (300 words, one per
/// 10 ms); anything else streams [`ANSWER`] in small chunks 40 ms apart.
/// Every stream ends with a usage chunk of `usage_total` tokens (if > 0).
struct StandIn {
    addr: SocketAddr,
    /// Every request body, in arrival order.
    bodies: Arc<Mutex<Vec<Value>>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(usage_total: u64) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(Gate::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (bodies, gate, stop) = (bodies.clone(), gate.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (bodies, gate, stop) = (bodies.clone(), gate.clone(), stop.clone());
                    std::thread::spawn(move || serve(conn, &bodies, &gate, &stop, usage_total));
                }
            });
        }
        Self {
            addr,
            bodies,
            gate,
            stop,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Request bodies whose model is `model`.
    fn requests(&self, model: &str) -> Vec<Value> {
        self.bodies
            .lock()
            .iter()
            .filter(|b| b["model"] == model)
            .cloned()
            .collect()
    }

    /// Waits until `n` streams have been held.
    fn wait_held(&self, n: u64) {
        let until = Instant::now() + WAIT;
        while self.gate.0.lock().held < n {
            assert!(Instant::now() < until, "the stand-in held no stream");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets the oldest held stream finish.
    fn release(&self) {
        self.gate.0.lock().released += 1;
        self.gate.1.notify_all();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        {
            let mut g = self.gate.0.lock();
            g.released = u64::MAX;
        }
        self.gate.1.notify_all();
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The last message's content of a request body.
fn last_content(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn serve(
    mut conn: TcpStream,
    bodies: &Mutex<Vec<Value>>,
    gate: &(Mutex<Gate>, Condvar),
    stop: &AtomicBool,
    usage_total: u64,
) {
    let _ = conn.set_read_timeout(Some(WAIT));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut raw = vec![0u8; len.min(1 << 20)];
    if reader.read_exact(&mut raw).is_err() {
        return;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return;
    };
    let question = last_content(&body);
    bodies.lock().push(body);
    let status = |conn: &mut TcpStream, code: &str| {
        let json = r#"{"error":{"message":"stand-in says no"}}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
    };
    if question.contains("mode:429") {
        return status(&mut conn, "429 Too Many Requests");
    }
    if question.contains("mode:500") {
        return status(&mut conn, "500 Internal Server Error");
    }
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    );
    let chunk = |conn: &mut TcpStream, text: &str| {
        let data = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        write!(conn, "data: {data}\n\n").is_ok()
    };
    if question.contains("mode:stall") {
        // Silence until the client gives up (or the test ends).
        let until = Instant::now() + WAIT;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            let mut b = [0u8; 1];
            let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
            if matches!(conn.read(&mut b), Ok(0)) {
                return;
            }
        }
        return;
    }
    if question.contains("mode:die") {
        let (a, b) = PARTIAL.split_at(8);
        let _ = chunk(&mut conn, a);
        std::thread::sleep(Duration::from_millis(50));
        let _ = chunk(&mut conn, b);
        let _ = conn.flush();
        std::thread::sleep(Duration::from_millis(50));
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let _ = conn
        .write_all(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n");
    if question.contains("mode:hold") {
        let _ = chunk(&mut conn, "Thinking… ");
        let (lock, cv) = gate;
        let mut g = lock.lock();
        let ticket = g.held;
        g.held += 1;
        let until = Instant::now() + WAIT;
        while g.released <= ticket && Instant::now() < until {
            cv.wait_for(&mut g, Duration::from_millis(500));
            drop(g);
            // A comment line keeps the client's stall timeout from firing.
            if conn.write_all(b": still thinking\n\n").is_err() {
                return;
            }
            g = lock.lock();
        }
    }
    if question.contains("mode:long") {
        // The measurement's long reply: 300 words, one every 10 ms.
        for _ in 0..300 {
            if !chunk(&mut conn, "word ") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        let pause = if question.contains("mode:fast") {
            0
        } else {
            40
        };
        for piece in ANSWER.as_bytes().chunks(6) {
            if !chunk(&mut conn, std::str::from_utf8(piece).unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
    if usage_total > 0 {
        let _ = write!(
            conn,
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{},\"total_tokens\":{usage_total}}}}}\n\n",
            usage_total - 1
        );
    }
    let _ = conn.write_all(b"data: [DONE]\n\n");
}

// ---------------------------------------------------------------------------
// The bot process
// ---------------------------------------------------------------------------

/// A running `tern-bot`, killed on drop.
struct Bot {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Bot {
    /// Starts `tern-bot` with `bots` (`[[bot]]` tables) against `gw` and
    /// `api`, and waits until each of `users` has logged in.
    fn start(
        gw: &Gateway,
        api: &StandIn,
        stall_timeout_ms: u64,
        bots: &str,
        users: &[&str],
    ) -> Self {
        Self::start_at(
            &format!("server = \"{}\"", gw.tcp),
            api,
            stall_timeout_ms,
            bots,
            users,
        )
    }

    /// As [`Bot::start`], with `top` (the file's top-level keys: `server`
    /// and its TLS settings) as given.
    fn start_at(
        top: &str,
        api: &StandIn,
        stall_timeout_ms: u64,
        bots: &str,
        users: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bots.toml");
        std::fs::write(
            &path,
            format!(
                "{top}\n[api]\nbase_url = \"{}\"\nmodel = \"default-model\"\nstall_timeout_ms = {stall_timeout_ms}\nreply_timeout_ms = 30000\n{bots}",
                api.base_url()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-bot"))
            .arg("--config")
            .arg(&path)
            .env("BOT_TEST_SECRET", SECRET)
            .env("OPENAI_API_KEY", "sk-test")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_MODEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[tern-bot] {line}");
                    log.lock().push(line);
                }
            });
        }
        let bot = Self {
            child,
            log,
            _dir: dir,
        };
        let mut bot = bot;
        for u in users {
            let until = Instant::now() + WAIT;
            let needle = format!("tern-bot {u}: logged in");
            while !bot.log.lock().iter().any(|l| l.starts_with(&needle)) {
                assert!(Instant::now() < until, "{u} never logged in");
                if let Ok(Some(status)) = bot.child.try_wait() {
                    panic!("tern-bot exited ({status}): {:?}", bot.log.lock());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bot
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[[bot]]` table minting its token with the test secret.
fn bot_table(user: &str, extra: &str) -> String {
    format!(
        "[[bot]]\nuser = \"{user}\"\njwt_secret_env = \"BOT_TEST_SECRET\"\nsystem_prompt = \"You are {user}.\"\nmodel = \"m-{user}\"\nedits_per_second = 20\n{extra}\n"
    )
}

/// The (role, content) pairs of a request body.
fn roles(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn a_direct_question_streams_into_one_message_with_context_and_a_new_device_syncs_it() {
    // Proves the 1:1 path: the answer is one message sent with `streaming`
    // and edited as it grows, whose final text equals the stand-in's
    // completion; typing is shown and stopped; the second request's body
    // carries the system prompt and the earlier question and answer; and a
    // device of the user that connects afterwards syncs the final text.
    let gw = Gateway::start();
    let api = StandIn::start(0);
    let _bot = Bot::start(&gw, &api, 5_000, &bot_table("helper", ""), &["helper"]);
    let alice = gw.user("alice", "phone");

    let (conv, q1) = alice.tell("helper", "what is the answer?");
    let (a1, m1) = alice.final_reply(&conv, "helper", q1);
    assert_eq!(m1.text, ANSWER);
    assert!(m1.was_streaming, "the reply was not streamed: {m1:?}");
    assert!(m1.edits >= 2, "too few edits: {m1:?}");
    assert_eq!(
        alice.seen.lock().from(&conv, "helper").len(),
        1,
        "one message"
    );
    alice.wait_for("typing on then off", |s| {
        let t: Vec<bool> = s
            .typing
            .iter()
            .filter(|(c, u, _)| *c == conv && u == "helper")
            .map(|(_, _, on)| *on)
            .collect();
        (t.first() == Some(&true) && t.last() == Some(&false)).then_some(())
    });

    let (_, q2) = alice.tell("helper", "and why?");
    let (_, m2) = alice.final_reply(&conv, "helper", q2);
    assert_eq!(m2.text, ANSWER);
    let reqs = api.requests("m-helper");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1]["stream"], true);
    assert_eq!(
        roles(&reqs[1]),
        vec![
            ("system".into(), "You are helper.".into()),
            ("user".into(), "what is the answer?".into()),
            ("assistant".into(), ANSWER.into()),
            ("user".into(), "and why?".into()),
        ]
    );

    let laptop = gw.user("alice", "laptop");
    let synced = laptop.session.sync_all(0).unwrap();
    let first = synced
        .entries
        .iter()
        .find(|e| e.conversation_id == conv && e.seq == a1)
        .expect("the reply syncs");
    let Some(pb::entry::Body::Message(m)) = &first.body else {
        panic!("not a message: {first:?}")
    };
    assert_eq!(text_of(m.content.as_ref()), ANSWER);
    assert!(!m.streaming && m.edit_count >= 1, "{m:?}");
}

#[test]
fn the_bot_answers_over_websocket_and_websocket_over_tls() {
    // Proves `server = "ws://…"` and `"wss://…"` (with `ca_file`, the
    // gateway's self-signed certificate for localhost): the bot logs in over
    // the gateway's WebSocket listeners, and a 1:1 question (asked over TCP)
    // gets the streamed answer, typing shown, the final text the stand-in's.
    let gw = Gateway::start_with(true);
    let api = StandIn::start(0);
    let ca = gw.ca_file.as_ref().unwrap().display().to_string();
    for (bot, top) in [
        ("wsbot", format!("server = \"ws://{}/\"", gw.ws.unwrap())),
        (
            "wssbot",
            format!(
                "server = \"wss://localhost:{}/tern\"\nca_file = \"{ca}\"",
                gw.wss.unwrap().port()
            ),
        ),
    ] {
        let _bot = Bot::start_at(&top, &api, 5_000, &bot_table(bot, ""), &[bot]);
        let alice = gw.user("alice", &format!("phone-{bot}"));
        let (conv, q) = alice.tell(bot, "what is the answer?");
        let (_, m) = alice.final_reply(&conv, bot, q);
        assert_eq!(m.text, ANSWER, "{bot}");
        assert!(m.was_streaming && m.edits >= 1, "{bot}: {m:?}");
        alice.wait_for("typing on", |s| {
            s.typing
                .iter()
                .any(|(c, u, on)| *c == conv && u == bot && *on)
                .then_some(())
        });
    }
}

#[test]
fn a_group_mention_is_answered_in_the_group_and_a_plain_message_is_not() {
    // Proves the group path: a group message without a mention of the bot
    // gets no call and no answer; one that mentions it is answered in the
    // group (replying to it, seen by every member), with the group context
    // naming who spoke.
    let gw = Gateway::start();
    let api = StandIn::start(0);
    let _bot = Bot::start(&gw, &api, 5_000, &bot_table("helper", ""), &["helper"]);
    let alice = gw.user("alice", "phone");
    let bob = gw.user("bob", "phone");
    let info = alice
        .session
        .request(Body::GroupCreate(pb::GroupCreate {
            group_id: "team".into(),
            name: "Team".into(),
            members: vec!["bob".into(), "helper".into()],
            ..Default::default()
        }))
        .unwrap();
    assert!(matches!(info, Body::GroupInfoResult(_)), "{info:?}");
    let group = pb::send::To::GroupId("team".into());

    let (conv, _plain) = alice.say(group.clone(), "hello everyone", &[]);
    let (_, q) = alice.say(group, "@helper what is the answer?", &["helper"]);
    let (_, m) = bob.final_reply(&conv, "helper", q);
    assert_eq!(m.text, ANSWER);
    alice.final_reply(&conv, "helper", q);
    let reqs = api.requests("m-helper");
    assert_eq!(reqs.len(), 1, "only the mention is answered");
    assert_eq!(
        roles(&reqs[0]),
        vec![
            ("system".into(), "You are helper.".into()),
            ("user".into(), "alice: hello everyone".into()),
            ("user".into(), "alice: @helper what is the answer?".into()),
        ]
    );
    assert_eq!(alice.seen.lock().from(&conv, "helper").len(), 1);
}

#[test]
fn a_second_question_while_one_streams_is_queued_or_refused_per_config() {
    // Proves `busy`: while a reply streams (the stand-in holds it open),
    // a second question to a `refuse` bot is answered at once with the busy
    // message and never reaches the API; to a `queue` bot it waits, untouched
    // by the API, and is answered after the first reply is final.
    let gw = Gateway::start();
    let api = StandIn::start(0);
    let bots = format!(
        "{}{}",
        bot_table("refuser", "busy = \"refuse\""),
        bot_table("queuer", "busy = \"queue\"")
    );
    let _bot = Bot::start(&gw, &api, 5_000, &bots, &["refuser", "queuer"]);
    let alice = gw.user("alice", "phone");

    let (conv, q1) = alice.tell("refuser", "mode:hold first");
    api.wait_held(1);
    let (_, q2) = alice.tell("refuser", "second");
    let busy = alice.wait_for("the busy refusal", |s| {
        s.from(&conv, "refuser")
            .into_iter()
            .find(|(_, m)| m.reply_to_seq == q2)
    });
    assert_eq!(busy.1.text, say::BUSY);
    api.release();
    let (_, m1) = alice.final_reply(&conv, "refuser", q1);
    assert_eq!(m1.text, format!("Thinking… {ANSWER}"));
    assert_eq!(api.requests("m-refuser").len(), 1);

    let (conv, q1) = alice.tell("queuer", "mode:hold first");
    api.wait_held(2);
    let (_, q2) = alice.tell("queuer", "second");
    // The second waits: give it the time it would need to reach the API.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.requests("m-queuer").len(),
        1,
        "the queued question waits"
    );
    api.release();
    let (a1, m1) = alice.final_reply(&conv, "queuer", q1);
    assert_eq!(m1.text, format!("Thinking… {ANSWER}"));
    let (a2, m2) = alice.final_reply(&conv, "queuer", q2);
    assert_eq!(m2.text, ANSWER);
    assert!(a2 > a1);
    let reqs = api.requests("m-queuer");
    assert_eq!(reqs.len(), 2);
    assert_eq!(last_content(&reqs[1]), "second");
}

#[test]
fn the_rate_limit_and_the_budget_refuse_politely() {
    // Proves the limits: a user over `user_questions_per_minute` gets the
    // rate refusal (with a wait in seconds) and no API call; a bot whose
    // day's budget the API's reported `usage` used up refuses the next
    // question with the budget message and no API call.
    let gw = Gateway::start();
    let api = StandIn::start(50);
    let bots = format!(
        "{}{}",
        bot_table("limited", "user_questions_per_minute = 1"),
        bot_table("thrifty", "daily_tokens_max = 40")
    );
    let _bot = Bot::start(&gw, &api, 5_000, &bots, &["limited", "thrifty"]);
    let alice = gw.user("alice", "phone");

    let (conv, q1) = alice.tell("limited", "one");
    alice.final_reply(&conv, "limited", q1);
    let (_, q2) = alice.tell("limited", "two");
    let (_, m) = alice.final_reply(&conv, "limited", q2);
    assert!(
        m.text
            .starts_with("⏳ You're asking faster than I can answer; please wait"),
        "{m:?}"
    );
    assert_eq!(api.requests("m-limited").len(), 1);

    let (conv, q1) = alice.tell("thrifty", "one");
    let (_, m) = alice.final_reply(&conv, "thrifty", q1);
    assert_eq!(m.text, ANSWER);
    let (_, q2) = alice.tell("thrifty", "two");
    let (_, m) = alice.final_reply(&conv, "thrifty", q2);
    assert_eq!(m.text, say::BUDGET);
    assert_eq!(api.requests("m-thrifty").len(), 1);
}

#[test]
fn api_failures_end_in_a_visible_message_and_typing_stops() {
    // Proves the failure paths: a 429, a 500, a stall past the timeout and a
    // stream that dies mid-way each end in a final (not streaming) message
    // with a short error (after the text that had arrived, for the dead
    // stream), and the bot's typing indicator ends with `false` each time.
    let gw = Gateway::start();
    let api = StandIn::start(0);
    let _bot = Bot::start(&gw, &api, 1_000, &bot_table("helper", ""), &["helper"]);
    let alice = gw.user("alice", "phone");
    for (i, (question, expect)) in [
        ("mode:429", say::API_RATE_LIMITED.to_owned()),
        ("mode:500", say::API_FAILED.to_owned()),
        ("mode:stall", say::API_TIMEOUT.to_owned()),
        ("mode:die", format!("{PARTIAL}\n\n{}", say::BROKE_OFF)),
    ]
    .into_iter()
    .enumerate()
    {
        let (conv, q) = alice.tell("helper", question);
        let (_, m) = alice.final_reply(&conv, "helper", q);
        assert_eq!(m.text, expect, "{question}");
        // Each reply ends with one `typing = false`; the newest event is one.
        alice.wait_for("typing off after the error", |s| {
            let t: Vec<bool> = s
                .typing
                .iter()
                .filter(|(c, u, _)| *c == conv && u == "helper")
                .map(|(_, _, on)| *on)
                .collect();
            let offs = t.iter().filter(|on| !**on).count();
            (offs > i && t.last() == Some(&false)).then_some(())
        });
    }
    assert_eq!(api.requests("m-helper").len(), 4);
}

/// CPU time (user + system) of this process's threads whose name starts
/// with one of `prefixes`, in milliseconds (from /proc/self/task/*/stat).
fn threads_cpu_ms(prefixes: &[&str]) -> f64 {
    // /proc counts in USER_HZ, which Linux fixes at 100.
    let tck = 100.0;
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        total += ticks * 1000.0 / tck;
    }
    total
}

#[test]
#[ignore = "a measurement (bench/scripts/bot.sh), not a check"]
fn measure_first_token_latency_and_gateway_cpu_per_edit() {
    // Measures, through the gateway: the time from a user's send to the
    // bot's first visible text (the stand-in answering at once), and the
    // gateway's CPU (its shard and backend threads) per edit of a long
    // streamed reply, beside its CPU per plain 1:1 message of the same run.
    let gw = Gateway::start();
    let api = StandIn::start(0);
    let table = bot_table(
        "helper",
        "user_questions_per_minute = 0\nbot_questions_per_minute = 0",
    );
    let _bot = Bot::start(&gw, &api, 5_000, &table, &["helper"]);
    let alice = gw.user("alice", "phone");
    let bob = gw.user("bob", "phone");

    let rounds = 30;
    let mut first = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let (conv, q) = alice.tell("helper", "mode:fast hi");
        let seen = alice.wait_for("the first text", |s| {
            s.from(&conv, "helper")
                .into_iter()
                .find(|(_, m)| m.reply_to_seq == q)
                .map(|(_, m)| m.seen_at)
        });
        first.push(seen.duration_since(t0).as_secs_f64() * 1000.0);
        alice.final_reply(&conv, "helper", q);
    }
    first.sort_by(f64::total_cmp);
    let pct = |p: f64| first[((first.len() as f64 * p) as usize).min(first.len() - 1)];

    let gateway = ["tern-shard", "tern-backend"];
    let plain = 80; // within the gateway's default message burst (100)
    let c0 = threads_cpu_ms(&gateway);
    let mut last = (String::new(), 0);
    for i in 0..plain {
        last = alice.tell("bob", &format!("plain message {i}"));
    }
    bob.wait_for("the last plain message", |s| {
        s.msgs.contains_key(&last).then_some(())
    });
    let plain_cpu = threads_cpu_ms(&gateway) - c0;

    let c0 = threads_cpu_ms(&gateway);
    let t0 = Instant::now();
    let (conv, q) = alice.tell("helper", "mode:long");
    let (_, m) = alice.final_reply(&conv, "helper", q);
    let secs = t0.elapsed().as_secs_f64();
    let edit_cpu = threads_cpu_ms(&gateway) - c0;
    println!(
        "first visible text after send, ms ({rounds} questions): p50 {:.1}, p90 {:.1}, max {:.1}",
        pct(0.5),
        pct(0.9),
        first[first.len() - 1]
    );
    println!(
        "long reply: {} edits in {secs:.2} s ({:.1} edits/s), gateway CPU {edit_cpu:.0} ms = {:.2} ms per edit (incl. the question and the first send)",
        m.edits,
        f64::from(m.edits) / secs,
        edit_cpu / f64::from(m.edits + 2)
    );
    println!(
        "plain 1:1 messages: {plain} in gateway CPU {plain_cpu:.0} ms = {:.2} ms per message",
        plain_cpu / f64::from(plain)
    );
}
