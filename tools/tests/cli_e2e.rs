//! End-to-end tests of `tern-cli` against a real gateway: each test starts
//! `tern serve`'s library in-process on loopback port 0 with a fresh
//! embedded store, then runs the built `tern-cli` binary — in scripted mode
//! reading its stdout records, stderr and exit code, and in interactive
//! mode through a pseudo-terminal, typing lines and reading the screen.
//! Each test says what it proves.

// Polling a child's output needs short sleeps; no shard or worker runs here.
#![allow(clippy::disallowed_methods)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tern_gateway::{
    config::{Config, Driver},
    server::Server,
    service::BackendService,
};
use tern_tools::cli::record::parse_line;

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;

const SECRET: &str = "cli-test-secret";
/// How long any one expectation may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// A gateway on an ephemeral loopback port, stopped on drop.
struct Gateway {
    server: Option<Server>,
    tcp: SocketAddr,
    /// The HTTP edge (media uploads).
    http: SocketAddr,
    cfg: Config,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.listen.tcp = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.listen.ws = None;
        cfg.listen.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.shards.count = 2;
        cfg.shards.driver = Driver::Epoll;
        cfg.auth.jwt_secret = SECRET.into();
        cfg.backend.data_dir = dir.path().to_path_buf();
        cfg.node_id = "cli-test".into();
        cfg.shutdown.deadline_ms = 2_000;
        tweak(&mut cfg);
        let server = Self::serve(&cfg);
        Self {
            tcp: server.tcp_addr.unwrap(),
            http: server.http_addr.unwrap(),
            server: Some(server),
            cfg,
            _dir: dir,
        }
    }

    fn serve(cfg: &Config) -> Server {
        // As `tern serve` opens it: the chat settings of `cfg` apply.
        let service = Arc::new(BackendService::from_config(cfg).unwrap());
        Server::start(cfg, service).unwrap()
    }

    /// Drains and stops the server (its clients get a SHUTDOWN kick).
    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    /// Starts it again on the same address and store.
    fn restart(&mut self) {
        self.stop();
        let mut cfg = self.cfg.clone();
        cfg.listen.tcp = Some(self.tcp);
        cfg.listen.http = Some(self.http);
        self.server = Some(Self::serve(&cfg));
    }

    /// `tern-cli --server … --jwt-secret … --user USER ARGS…`.
    fn cli(&self, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern-cli"));
        c.args([
            "--server",
            &self.tcp.to_string(),
            "--jwt-secret",
            SECRET,
            "--user",
            user,
            "--http",
            &format!("http://{}", self.http),
        ])
        .args(args)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_DEVICE")
        .stdin(Stdio::null());
        c
    }

    fn run(&self, user: &str, args: &[&str]) -> Run {
        Run::from(self.cli(user, args).output().unwrap())
    }

    /// Runs and insists on success.
    fn ok(&self, user: &str, args: &[&str]) -> Vec<Rec> {
        let r = self.run(user, args);
        assert_eq!(r.code, 0, "{user} {args:?}: stderr {}", r.stderr);
        r.records()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A finished run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8(o.stdout).unwrap(),
            stderr: String::from_utf8(o.stderr).unwrap(),
        }
    }
}

impl Run {
    fn records(&self) -> Vec<Rec> {
        self.stdout
            .lines()
            .map(|l| Rec::parse(l).unwrap_or_else(|| panic!("not a record: {l:?}")))
            .collect()
    }
}

/// One parsed output line.
#[derive(Debug, Clone)]
struct Rec {
    kind: String,
    fields: Vec<(String, String)>,
}

impl Rec {
    fn parse(line: &str) -> Option<Self> {
        let (kind, fields) = parse_line(line)?;
        Some(Self { kind, fields })
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.fields.iter().any(|(k, v)| k == key && v == value)
    }
}

fn of_kind<'a>(recs: &'a [Rec], kind: &str) -> Vec<&'a Rec> {
    recs.iter().filter(|r| r.kind == kind).collect()
}

#[test]
fn alice_sends_to_bob_and_bobs_history_sync_and_list_show_it() {
    // Proves the scripted 1:1 path: `send` prints the durable (conv, seq);
    // bob's `history`, `sync` and `convs` show the same message (text with
    // spaces and emoji intact) and one unread; `--json` carries the same.
    let gw = Gateway::start();
    let sent = gw.ok(
        "alice",
        &["send", "--to", "bob", "hello bob 👋 how are you?"],
    );
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, "sent");
    assert_eq!(sent[0].get("conv"), "d:alice:bob");
    assert_eq!(sent[0].get("seq"), "1");
    assert_eq!(sent[0].get("duplicate"), "false");

    let history = gw.ok("bob", &["history", "--conv", "alice"]);
    let entries = of_kind(&history, "entry");
    assert_eq!(entries.len(), 1, "{history:?}");
    let e = entries[0];
    assert_eq!(
        (
            e.get("conv"),
            e.get("seq"),
            e.get("from"),
            e.get("kind"),
            e.get("text")
        ),
        (
            "d:alice:bob",
            "1",
            "alice",
            "text",
            "hello bob 👋 how are you?"
        )
    );

    let json = gw.run("bob", &["history", "--conv", "d:alice:bob", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["type"], "entry");
    assert_eq!(v["text"], "hello bob 👋 how are you?");
    assert_eq!(v["seq"], 1);

    let sync = gw.ok("bob", &["sync"]);
    assert!(
        of_kind(&sync, "entry")
            .iter()
            .any(|r| r.has("text", "hello bob 👋 how are you?"))
    );
    let heads = of_kind(&sync, "head");
    assert!(
        heads
            .iter()
            .any(|h| h.has("conv", "d:alice:bob") && h.has("seq", "1")),
        "{sync:?}"
    );

    let convs = gw.ok("bob", &["convs"]);
    let c = of_kind(&convs, "conv");
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].get("peer"), c[0].get("unread")), ("alice", "1"));

    // Marking it read clears the count.
    gw.ok("bob", &["read", "--conv", "alice"]);
    let convs = gw.ok("bob", &["convs"]);
    assert_eq!(of_kind(&convs, "conv")[0].get("unread"), "0");
}

#[test]
fn tern_cli_speaks_websocket() {
    // Proves `--server ws://…`: alice sends over the gateway's WebSocket
    // listener (a text long enough for a 16-bit WebSocket length) and bob,
    // also over WebSocket, reads it back whole with `history`; a ws://
    // address where nothing listens fails to connect (exit 3), and one that
    // is not a URL is a usage error.
    let gw = Gateway::start_with(|c| c.listen.ws = Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    let ws = format!(
        "ws://{}/",
        gw.server.as_ref().unwrap().ws_addr.expect("a ws listener")
    );
    let cli = |user: &str, server: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tern-cli"))
            .args(["--server", server, "--jwt-secret", SECRET, "--user", user])
            .args(args)
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_DEVICE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from(out)
    };
    let long = "websocket ".repeat(300);
    let sent = cli("alice", &ws, &["send", "--to", "bob", long.trim_end()]);
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    assert_eq!(of_kind(&sent.records(), "sent")[0].get("seq"), "1");
    let history = cli("bob", &ws, &["history", "--conv", "alice"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let recs = history.records();
    let entries = of_kind(&recs, "entry");
    assert_eq!(entries.len(), 1, "{recs:?}");
    assert_eq!(entries[0].get("text"), long.trim_end());

    let nobody = format!("ws://127.0.0.1:{}/", tern_testkit::free_port());
    assert_eq!(cli("alice", &nobody, &["sync"]).code, 3);
    assert_ne!(cli("alice", "ws://host:port/", &["sync"]).code, 0);
}

#[test]
fn edit_changes_the_message_and_history_shows_it_edited() {
    // Proves the scripted `edit`: alice's edit answers `ok op=edit` with the
    // `edited` entry's seq; bob's history shows the message at its seq with
    // the new text and its edit count, then the edit entry naming it; bob
    // editing alice's message exits 1 with ERROR_CODE_PERMISSION_DENIED.
    let gw = Gateway::start();
    gw.ok("alice", &["send", "--to", "bob", "helo"]);
    let ok = gw.ok("alice", &["edit", "--conv", "bob", "1", "hello", "bob"]);
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!((ok[0].kind.as_str(), ok[0].get("op")), ("ok", "edit"));
    assert_eq!(ok[0].get("seq"), "2");
    let history = gw.ok("bob", &["history", "--conv", "alice"]);
    let entries = of_kind(&history, "entry");
    assert_eq!(entries.len(), 2, "{history:?}");
    assert_eq!(
        (
            entries[0].get("seq"),
            entries[0].get("text"),
            entries[0].get("edits")
        ),
        ("1", "hello bob", "1")
    );
    assert_eq!(
        (entries[1].get("kind"), entries[1].get("target")),
        ("edit", "1")
    );
    let r = gw.run("bob", &["edit", "--conv", "alice", "1", "mine now"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_PERMISSION_DENIED"),
        "{}",
        r.stderr
    );
}

#[test]
fn reactions_and_pins_from_scripts_and_the_chat() {
    // Proves the scripted `react`, `unreact`, `pin`, `unpin` and `pins`:
    // each answers `ok op=…` with its entry's seq (0 when nothing changed),
    // bob's history shows the message with its reaction totals and the
    // reaction and pin entries, `pins` lists the pin; a bad reaction string
    // is a usage error (exit 2) before any round trip; then the same as
    // slash commands in the interactive chat (`/react`, `/pin`, `/pins`).
    let gw = Gateway::start();
    gw.ok("alice", &["send", "--to", "bob", "ship it?"]);
    let ok = gw.ok("bob", &["react", "--conv", "alice", "1", "\u{1f44d}"]);
    assert_eq!((ok[0].get("op"), ok[0].get("seq")), ("react", "2"));
    let ok = gw.ok("alice", &["react", "--conv", "bob", "1", "\u{1f44d}"]);
    assert_eq!(ok[0].get("seq"), "3");
    let ok = gw.ok("alice", &["react", "--conv", "bob", "1", "\u{1f44d}"]);
    assert_eq!(ok[0].get("seq"), "0", "already there: nothing changes");
    let ok = gw.ok("alice", &["unreact", "--conv", "bob", "1", "\u{1f44d}"]);
    assert_eq!((ok[0].get("op"), ok[0].get("seq")), ("unreact", "4"));
    let ok = gw.ok("bob", &["pin", "--conv", "alice", "1"]);
    assert_eq!((ok[0].get("op"), ok[0].get("seq")), ("pin", "5"));
    let listed = gw.ok("alice", &["pins", "--conv", "bob"]);
    let pins = of_kind(&listed, "pin");
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].get("seq"), pins[0].get("by")), ("1", "bob"));
    let history = gw.ok("bob", &["history", "--conv", "alice"]);
    let entries = of_kind(&history, "entry");
    assert_eq!(entries.len(), 5, "{history:?}");
    assert_eq!(entries[0].get("reactions"), "\u{1f44d}=1");
    assert_eq!(
        (entries[1].get("kind"), entries[1].get("target")),
        ("reaction", "1")
    );
    assert_eq!(
        (entries[4].get("kind"), entries[4].get("target")),
        ("pin", "1")
    );
    let r = gw.run("bob", &["react", "--conv", "alice", "1", "thumbs up"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let ok = gw.ok("bob", &["unpin", "--conv", "alice", "1"]);
    assert_eq!((ok[0].get("op"), ok[0].get("seq")), ("unpin", "6"));
    assert!(of_kind(&gw.ok("alice", &["pins", "--conv", "bob"]), "pin").is_empty());

    let mut alice = Pty::spawn(&mut gw.cli("alice", &[]));
    alice.expect("logged in as alice");
    alice.type_line("/open bob");
    alice.expect("@bob> ");
    alice.type_line("/react 1 \u{2764}\u{fe0f}");
    alice.expect("\u{2713} react (log entry 7)");
    alice.type_line("/pin 1");
    alice.expect("\u{2713} pin (log entry 8)");
    alice.type_line("/pins");
    alice.expect("pinned by alice");
    alice.type_line("/unreact 1 \u{2764}\u{fe0f}");
    alice.expect("\u{2713} unreact (log entry 9)");
    alice.type_line("/unpin 1");
    alice.expect("\u{2713} unpin (log entry 10)");
    alice.type_line("/quit");
    assert_eq!(alice.wait_exit().code(), Some(0), "{}", alice.screen());
}

#[test]
fn threads_and_todos_from_the_command_line() {
    // Proves the scripted `thread`, `threadlog`, `todo`, `done` and `todos`:
    // bob's thread reply is stored under alice's message; alice's
    // `threadlog` lists it with the thread's unread count and marks it read
    // (a second look shows 0 unread); history shows the root's reply count;
    // a to-do for bob is listed until he marks it done; alice (not an
    // assignee) marking it exits 1 with PERMISSION_DENIED; a reply under a
    // recalled message exits 1 with MESSAGE_RECALLED.
    let gw = Gateway::start();
    gw.ok("alice", &["send", "--to", "bob", "plan?"]);
    let sent = gw.ok("bob", &["thread", "--conv", "alice", "1", "friday", "noon"]);
    assert_eq!((sent[0].kind.as_str(), sent[0].get("seq")), ("sent", "2"));
    let log = gw.ok("alice", &["threadlog", "--conv", "bob", "1"]);
    let entries = of_kind(&log, "entry");
    assert_eq!(entries.len(), 1, "{log:?}");
    assert_eq!(
        (
            entries[0].get("seq"),
            entries[0].get("thread"),
            entries[0].get("text")
        ),
        ("2", "1", "friday noon")
    );
    let thread = of_kind(&log, "thread");
    assert_eq!(
        (thread[0].get("replies"), thread[0].get("unread")),
        ("1", "1"),
        "{log:?}"
    );
    let again = gw.ok("alice", &["threadlog", "--conv", "bob", "1"]);
    assert_eq!(of_kind(&again, "thread")[0].get("unread"), "0");
    let history = gw.ok("alice", &["history", "--conv", "bob"]);
    assert_eq!(of_kind(&history, "entry")[0].get("replies"), "1");

    let ok = gw.ok("alice", &["todo", "--conv", "bob", "1", "bob"]);
    assert_eq!((ok[0].get("op"), ok[0].get("seq")), ("todo", "3"));
    let todos = gw.ok("bob", &["todos"]);
    let todos = of_kind(&todos, "todo");
    assert_eq!(todos.len(), 1);
    assert_eq!(
        (todos[0].get("conv"), todos[0].get("seq")),
        ("d:alice:bob", "1")
    );
    let r = gw.run("alice", &["done", "--conv", "bob", "1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_PERMISSION_DENIED"),
        "{}",
        r.stderr
    );
    gw.ok("bob", &["done", "--conv", "alice", "1"]);
    assert!(of_kind(&gw.ok("bob", &["todos"]), "todo").is_empty());

    gw.ok("alice", &["recall", "--conv", "bob", "1"]);
    let r = gw.run("bob", &["thread", "--conv", "alice", "1", "late"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_MESSAGE_RECALLED"),
        "{}",
        r.stderr
    );
}

#[test]
fn search_from_a_script_and_from_the_chat() {
    // Proves `search`: scripted, it prints the matching entries of the
    // user's conversations (conversations in id order, newest first),
    // Chinese included; `--from` and `--conv` filter; `--limit` pages end
    // with a `more cursor=` record that `--cursor` continues; a query of
    // punctuation only exits 1 with ERROR_CODE_INVALID_ARGUMENT. In the
    // chat, `/search` prints the matching message as a chat line.
    let gw = Gateway::start();
    gw.ok("alice", &["send", "--to", "bob", "hello bob 你好世界"]);
    gw.ok("bob", &["send", "--to", "alice", "Hello alice"]);
    gw.ok("alice", &["send", "--to", "carol", "hello carol"]);
    let at = |recs: &[Rec]| -> Vec<(String, String)> {
        of_kind(recs, "entry")
            .iter()
            .map(|e| (e.get("conv").to_owned(), e.get("seq").to_owned()))
            .collect()
    };
    let pair = |c: &str, s: &str| (c.to_owned(), s.to_owned());
    let all = gw.ok("alice", &["search", "hello"]);
    assert_eq!(
        at(&all),
        [
            pair("d:alice:bob", "2"),
            pair("d:alice:bob", "1"),
            pair("d:alice:carol", "1")
        ]
    );
    assert!(of_kind(&all, "more").is_empty(), "{all:?}");
    let cjk = gw.ok("bob", &["search", "世界"]);
    assert_eq!(of_kind(&cjk, "entry")[0].get("text"), "hello bob 你好世界");
    assert_eq!(at(&cjk).len(), 1);
    let from = gw.ok("alice", &["search", "--from", "bob", "hello"]);
    assert_eq!(at(&from), [pair("d:alice:bob", "2")]);
    let conv = gw.ok("alice", &["search", "--conv", "carol", "hello"]);
    assert_eq!(at(&conv), [pair("d:alice:carol", "1")]);
    let page = gw.ok("alice", &["search", "--limit", "2", "hello"]);
    assert_eq!(at(&page).len(), 2);
    let more = of_kind(&page, "more");
    let cursor = more.first().map(|m| m.get("cursor")).expect("a cursor");
    let next = gw.ok(
        "alice",
        &["search", "--limit", "2", "--cursor", cursor, "hello"],
    );
    assert_eq!(at(&next), [pair("d:alice:carol", "1")]);
    let r = gw.run("alice", &["search", "***"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_INVALID_ARGUMENT"),
        "{}",
        r.stderr
    );

    let mut alice = Pty::spawn(&mut gw.cli("alice", &[]));
    alice.expect("tern> ");
    alice.type_line("/search 你好");
    alice.expect("alice: hello bob 你好世界");
    alice.type_line("/quit");
    let status = alice.wait_exit();
    assert_eq!(status.code(), Some(0), "screen:\n{}", alice.screen());
}

#[test]
fn a_resend_with_the_same_id_is_stored_once() {
    // Proves `send --id` makes a script's rerun idempotent: the same seq
    // comes back marked duplicate and history holds one message.
    let gw = Gateway::start();
    let first = gw.ok(
        "alice",
        &["send", "--to", "bob", "--id", "order-42", "once"],
    );
    let again = gw.ok(
        "alice",
        &["send", "--to", "bob", "--id", "order-42", "once"],
    );
    assert_eq!(first[0].get("seq"), again[0].get("seq"));
    assert_eq!(again[0].get("duplicate"), "true");
    let history = gw.ok("bob", &["history", "--conv", "alice"]);
    assert_eq!(of_kind(&history, "entry").len(), 1);
}

#[test]
fn group_create_send_mention_and_history() {
    // Proves the group path: create with members, a message whose @word
    // becomes a mention, members and history as a member sees them.
    let gw = Gateway::start();
    let created = gw.ok(
        "alice",
        &[
            "group",
            "create",
            "Launch",
            "team",
            "--id",
            "launch",
            "-m",
            "bob,carol",
        ],
    );
    assert_eq!(created[0].kind, "group");
    assert_eq!(
        (
            created[0].get("id"),
            created[0].get("name"),
            created[0].get("role")
        ),
        ("launch", "Launch team", "owner")
    );
    let sent = gw.ok(
        "alice",
        &["send", "--group", "launch", "ready for launch, @bob?"],
    );
    assert_eq!(sent[0].get("conv"), "g:launch");

    let members = gw.ok("bob", &["group", "members", "launch"]);
    let roles: Vec<(&str, &str)> = of_kind(&members, "member")
        .iter()
        .map(|m| (m.get("user"), m.get("role")))
        .collect();
    assert_eq!(
        roles,
        [("alice", "owner"), ("bob", "member"), ("carol", "member")]
    );

    let history = gw.ok("bob", &["history", "--conv", "#launch"]);
    let entries = of_kind(&history, "entry");
    assert!(
        entries.iter().any(|e| e.has("event", "created")),
        "{history:?}"
    );
    let msg = entries
        .iter()
        .find(|e| e.has("kind", "text"))
        .expect("the message");
    assert_eq!(msg.get("text"), "ready for launch, @bob?");
    assert_eq!(msg.get("mentions"), "bob");

    let convs = gw.ok("bob", &["convs"]);
    let c = of_kind(&convs, "conv");
    assert_eq!(
        (c[0].get("conv"), c[0].get("mentioned")),
        ("g:launch", "true")
    );
}

#[test]
fn a_bare_conversation_name_means_the_same_for_every_command() {
    // Proves `--conv launch` names the group launch for history, read-by,
    // send and read, as the group commands do (the issue: read-by and
    // history read it as a 1:1 peer and printed nothing); a bare name that is
    // no group of yours stays a user; a name that is both your group and a
    // peer is a usage error naming both spellings, which then work.
    let gw = Gateway::start();
    gw.ok(
        "alice",
        &["group", "create", "Launch", "--id", "launch", "-m", "bob"],
    );
    let sent = gw.ok("alice", &["send", "--conv", "launch", "go?"]);
    assert_eq!(sent[0].get("conv"), "g:launch");
    let seq = sent[0].get("seq").to_owned();

    let history = gw.ok("bob", &["history", "--conv", "launch"]);
    let texts: Vec<&str> = of_kind(&history, "entry")
        .iter()
        .filter(|e| e.has("kind", "text"))
        .map(|e| e.get("text"))
        .collect();
    assert_eq!(texts, ["go?"], "{history:?}");
    assert!(
        of_kind(&history, "entry")
            .iter()
            .all(|e| e.has("conv", "g:launch"))
    );
    let read = gw.ok("bob", &["read", "--conv", "launch"]);
    assert_eq!(read[0].kind, "ok");
    let read_by = gw.ok("alice", &["read-by", "--conv", "launch", &seq]);
    assert_eq!(read_by.len(), 1, "{read_by:?}");
    assert_eq!(
        (
            read_by[0].get("conv"),
            read_by[0].get("read"),
            read_by[0].get("members")
        ),
        ("g:launch", "1", "1")
    );

    // Not a group of carol's: a user, as before.
    let dm = gw.ok("carol", &["send", "--conv", "alice", "hi alice"]);
    assert_eq!(dm[0].get("conv"), "d:alice:carol");
    let outsider = gw.ok("carol", &["send", "--conv", "launch", "hi user launch"]);
    assert_eq!(outsider[0].get("conv"), "d:carol:launch");

    // The user `launch` now chats with alice: for her the name is both.
    gw.ok("launch", &["send", "--to", "alice", "I am a user"]);
    let r = gw.run("alice", &["history", "--conv", "launch"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("CLI_USAGE"), "{}", r.stderr);
    assert!(
        r.stderr.contains("'#launch'") && r.stderr.contains("'@launch'"),
        "{}",
        r.stderr
    );
    let group = gw.ok("alice", &["history", "--conv", "#launch"]);
    assert!(
        of_kind(&group, "entry")
            .iter()
            .all(|e| e.has("conv", "g:launch"))
    );
    let direct = gw.ok("alice", &["history", "--conv", "@launch"]);
    let e = of_kind(&direct, "entry");
    assert_eq!((e.len(), e[0].get("conv")), (1, "d:alice:launch"));
    // bob has no chat with the user launch: still his group.
    let bobs = gw.ok("bob", &["history", "--conv", "launch"]);
    assert!(!of_kind(&bobs, "entry").is_empty());
    assert!(
        of_kind(&bobs, "entry")
            .iter()
            .all(|e| e.has("conv", "g:launch"))
    );
}

#[test]
fn send_file_uploads_an_image_and_bob_sees_and_fetches_its_media_ref() {
    // Proves `send-file`: alice uploads a PNG over the HTTP edge and sends
    // it as an image message (the record carries conv and seq); bob's
    // history shows kind=image with the media id and the sniffed type, bob
    // fetches the bytes by naming that message, and a text file named .png
    // is refused by the server's sniffing (exit 1, MEDIA_UNSUPPORTED_MEDIA_TYPE).
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let pic = dir.path().join("cat.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(&pic)
        .unwrap();
    let sent = gw.ok(
        "alice",
        &["send-file", "--to", "bob", pic.to_str().unwrap()],
    );
    let sent = of_kind(&sent, "sent")[0].clone();
    let (conv, seq) = (sent.get("conv").to_owned(), sent.get("seq").to_owned());

    let hist = gw.ok("bob", &["history", "--conv", "alice"]);
    let entry = of_kind(&hist, "entry")
        .into_iter()
        .find(|e| e.get("seq") == seq)
        .unwrap()
        .clone();
    assert!(entry.has("kind", "image"), "{entry:?}");
    assert!(entry.has("mime", "image/png"), "{entry:?}");
    let media = entry.get("media").to_owned();

    let token = tern_gateway::auth::mint_hs256(SECRET, "bob", 60, None).unwrap();
    let mut s = std::net::TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /api/v1/media/{media}?conversation_id={conv}&seq={seq} HTTP/1.0\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.ends_with(&std::fs::read(&pic).unwrap()));

    let fake = dir.path().join("fake.png");
    std::fs::write(&fake, "not a picture").unwrap();
    let r = gw.run(
        "alice",
        &["send-file", "--to", "bob", fake.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("MEDIA_UNSUPPORTED_MEDIA_TYPE"),
        "{}",
        r.stderr
    );
}

#[test]
fn typed_errors_exit_non_zero_with_the_code_name() {
    // Proves the exit-code contract: a server refusal (sending to a group
    // you are not in, a bad token) exits 1 with its ERROR_CODE_* name on
    // stderr and nothing on stdout; usage, connection and not-available
    // failures exit 2, 3 and 4 with CLI_* names.
    let gw = Gateway::start();
    gw.ok("alice", &["group", "create", "private", "--id", "inner"]);

    let r = gw.run("mallory", &["send", "--group", "inner", "let me in"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let err = Rec::parse(r.stderr.trim()).unwrap();
    assert_eq!(err.kind, "error");
    assert_eq!(err.get("code"), "ERROR_CODE_NOT_MEMBER");

    let r = gw.run("mallory", &["history", "--conv", "#inner", "--json"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(r.stderr.trim()).unwrap();
    assert_eq!(v["code"], "ERROR_CODE_NOT_MEMBER");

    let r = Run::from(
        Command::new(env!("CARGO_BIN_EXE_tern-cli"))
            .args([
                "--server",
                &gw.tcp.to_string(),
                "--user",
                "alice",
                "--jwt-secret",
                "wrong",
            ])
            .args(["convs"])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("ERROR_CODE_AUTH_FAILED"), "{}", r.stderr);

    let r = gw.run("alice", &["history"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("CLI_USAGE"), "{}", r.stderr);

    let r = gw.run("alice", &["send", "--to", "bad id!", "x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("CLI_USAGE"), "{}", r.stderr);

    // The media API's refusal (an empty upload) exits 1 with MEDIA_*.
    let file = tempfile::NamedTempFile::new().unwrap();
    let r = gw.run(
        "alice",
        &["send-file", "--to", "bob", file.path().to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("MEDIA_INVALID_ARGUMENT"), "{}", r.stderr);
    let r = gw.run("alice", &["send-file", "--to", "bob", "/no/such/file.png"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("CLI_USAGE"), "{}", r.stderr);

    // A port nobody listens on.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], tern_testkit::free_port()));
    let r = Run::from(
        Command::new(env!("CARGO_BIN_EXE_tern-cli"))
            .args([
                "--server",
                &closed.to_string(),
                "--user",
                "a",
                "--jwt-secret",
                "s",
                "convs",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("CLI_CONNECT_FAILED"), "{}", r.stderr);
}

#[test]
fn listen_shows_messages_recalls_receipts_and_events_live() {
    // Proves pushes reach a scripted listener as they happen: a friend
    // request, a message, its recall and bob's read receipt, in order.
    let gw = Gateway::start();
    let mut listener = Lines::spawn(
        gw.cli("alice", &["listen", "--for-ms", "30000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    listener.wait_for(|l| l.starts_with("ready user=alice"));

    gw.ok("bob", &["friend", "add", "alice", "hi, it's bob"]);
    listener.wait_for(|l| l.starts_with("event kind=friend_requested from=bob"));
    gw.ok("alice", &["friend", "accept", "bob"]);
    listener.wait_for(|l| l.starts_with("event kind=friend_added user=bob"));

    let sent = gw.ok("bob", &["send", "--to", "alice", "oops, wrong chat"]);
    let seq = sent[0].get("seq").to_owned();
    listener.wait_for(|l| l.contains("text=\"oops, wrong chat\""));
    gw.ok("bob", &["recall", "--conv", "alice", &seq]);
    listener.wait_for(|l| l.contains("kind=recall") && l.contains(&format!("target={seq}")));
}

#[test]
fn scripts_make_no_presence_flap_and_a_scripted_busy_is_kept() {
    // Proves issue 10 through real runs: alice's scripted runs (presence,
    // send) push no presence to her friend bob, who listens; the `busy` one
    // of them set is kept and is what bob sees when alice's interactive
    // device (a client without `presence-quiet`) comes online; it goes
    // offline when that device leaves. Ordering: alice's presence and sends
    // go through one backend worker, so any presence from her first runs
    // reaches bob before the message of her last. A quiet script that
    // displaces her only counted device takes her offline.
    let gw = Gateway::start();
    gw.ok("alice", &["friend", "add", "bob"]);
    gw.ok("bob", &["friend", "accept", "alice"]);
    let mut bob = Lines::spawn(
        gw.cli("bob", &["listen", "--for-ms", "30000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    bob.wait_for(|l| l.starts_with("ready user=bob"));

    let set = gw.ok("alice", &["presence", "busy", "in", "a", "meeting"]);
    assert_eq!(set[0].get("op"), "presence");
    gw.ok("alice", &["send", "--to", "bob", "first"]);
    gw.ok("alice", &["convs"]);
    gw.ok("alice", &["send", "--to", "bob", "last"]);
    bob.wait_for(|l| l.contains("text=last"));
    let before: Vec<String> = bob
        .text()
        .lines()
        .filter(|l| l.starts_with("presence "))
        .map(str::to_owned)
        .collect();
    assert!(before.is_empty(), "scripts flapped presence: {before:?}");
    let got = gw.ok("bob", &["presence", "get", "alice"]);
    assert_eq!(got[0].get("state"), "offline", "{got:?}");

    // Alice's phone: a client that counts toward presence.
    let token = tern_tools::cli::token::mint_hs256(SECRET, "alice", 600, None).unwrap();
    let phone = tern_tools::cli::session::Session::connect(
        tern_tools::cli::conn::ConnectOptions::new(gw.tcp.to_string(), token, "phone"),
    )
    .unwrap();
    let online = bob.wait_for(|l| l.starts_with("presence user=alice"));
    let rec = Rec::parse(&online).unwrap();
    assert_eq!(
        (rec.get("state"), rec.get("text")),
        ("busy", "in a meeting"),
        "{online}"
    );
    phone.close();
    let offline = bob.wait_for(|l| l.starts_with("presence user=alice"));
    assert!(offline.contains("state=offline"), "{offline}");

    // A quiet script that takes the phone's device id displaces it: alice
    // has no counted device left, so she goes offline (not stuck online).
    let token = tern_tools::cli::token::mint_hs256(SECRET, "alice", 600, None).unwrap();
    let _phone = tern_tools::cli::session::Session::connect(
        tern_tools::cli::conn::ConnectOptions::new(gw.tcp.to_string(), token, "phone"),
    )
    .unwrap();
    let back = bob.wait_for(|l| l.starts_with("presence user=alice"));
    assert!(back.contains("state=busy"), "{back}");
    gw.ok("alice", &["--device", "phone", "convs"]);
    let displaced = bob.wait_for(|l| l.starts_with("presence user=alice"));
    assert!(displaced.contains("state=offline"), "{displaced}");
}

#[test]
fn interactive_chat_through_a_pty() {
    // Proves the interactive mode on a real terminal: alice logs in, opens
    // bob, types a line (an emoji shortcode expands); bob, listening, gets
    // it live; bob's answer and read receipt appear on alice's screen; a
    // slash command runs; /quit exits 0.
    let gw = Gateway::start();
    let mut bob = Lines::spawn(
        gw.cli("bob", &["listen", "--for-ms", "30000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    bob.wait_for(|l| l.starts_with("ready user=bob"));

    let mut alice = Pty::spawn(&mut gw.cli("alice", &[]));
    alice.expect("logged in as alice");
    alice.expect("tern> ");
    alice.type_line("/open bob");
    alice.expect("── @bob ──");
    alice.expect("@bob> ");
    alice.type_line("hello from a terminal :wave:");
    alice.expect("alice: hello from a terminal 👋  ✓");

    let got = bob.wait_for(|l| l.starts_with("entry ") && l.contains("kind=text"));
    let rec = Rec::parse(&got).unwrap();
    assert_eq!(
        (rec.get("conv"), rec.get("from"), rec.get("text")),
        ("d:alice:bob", "alice", "hello from a terminal 👋")
    );

    gw.ok("bob", &["send", "--to", "alice", "hi alice, bob here"]);
    alice.expect("bob: hi alice, bob here");
    // Alice has the chat open, so the message is marked read at once:
    // bob's listener sees her read receipt.
    let read = bob.wait_for(|l| l.contains("kind=read"));
    assert!(read.contains("from=alice"), "{read}");
    gw.ok("bob", &["read", "--conv", "alice"]);
    alice.expect("✓✓ bob read up to");

    alice.type_line("/group create pty people -m bob --id ptyg");
    alice.expect("#ptyg \"pty people\" owner alice");

    // Another connection on alice's device displaces the chat, which says
    // so and does not reconnect (the two would displace each other forever).
    let _other = Lines::spawn(
        gw.cli("alice", &["--device", "cli", "listen", "--for-ms", "30000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    alice.expect("KICK_REASON_DISPLACED");
    alice.expect("not reconnecting");
    // The prompt is redrawn for the next line: it says alice is offline.
    alice.type_line("");
    alice.expect("(offline)> ");
    alice.type_line("/quit");
    let status = alice.wait_exit();
    assert_eq!(status.code(), Some(0), "screen:\n{}", alice.screen());
}

#[test]
fn calls_and_devices_from_scripts() {
    // Proves the scripted `call`, `accept`, `hangup`, `devices` and
    // `logout`: bob's listener sees the call ring, his answer and the end,
    // then the call's record entry; bob's history shows it (`kind=call
    // outcome=completed`); accepting the ended call exits 1 with
    // ERROR_CODE_CALL_ENDED; `devices` lists bob's listener and the asking
    // run (current); `logout` closes the listener with
    // KICK_REASON_LOGGED_OUT, and logging out a device that is not
    // connected exits 1 with ERROR_CODE_NOT_FOUND.
    let gw = Gateway::start();
    let mut bob = Lines::spawn(
        gw.cli(
            "bob",
            &["--device", "bob-listen", "listen", "--for-ms", "30000"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    bob.wait_for(|l| l.starts_with("ready user=bob"));
    let ok = gw.ok("alice", &["call", "bob"]);
    assert_eq!((ok[0].kind.as_str(), ok[0].get("op")), ("ok", "call"));
    let id = ok[0].get("id").to_owned();
    assert!(!id.is_empty(), "{ok:?}");
    bob.wait_for(|l| l.starts_with("call ") && l.contains("event=ringing") && l.contains(&id));
    gw.ok("bob", &["accept", &id]);
    bob.wait_for(|l| l.starts_with("call ") && l.contains("event=accepted"));
    let ok = gw.ok("alice", &["hangup", &id]);
    assert_eq!(ok[0].get("op"), "hangup");
    bob.wait_for(|l| l.contains("event=ended") && l.contains("outcome=completed"));
    bob.wait_for(|l| l.starts_with("entry ") && l.contains("kind=call"));
    let history = gw.ok("bob", &["history", "--conv", "alice"]);
    let calls: Vec<_> = of_kind(&history, "entry")
        .into_iter()
        .filter(|e| e.has("kind", "call"))
        .collect();
    assert_eq!(calls.len(), 1, "{history:?}");
    assert_eq!(
        (
            calls[0].get("call"),
            calls[0].get("outcome"),
            calls[0].get("answered")
        ),
        (id.as_str(), "completed", "bob")
    );
    let r = gw.run("bob", &["accept", &id]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ERROR_CODE_CALL_ENDED"), "{}", r.stderr);

    let devices = gw.ok("bob", &["devices"]);
    let devices = of_kind(&devices, "device");
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(
        (
            devices[0].get("device"),
            devices[0].get("platform"),
            devices[0].get("current")
        ),
        ("bob-listen", "cli", "false")
    );
    assert_eq!(devices[1].get("current"), "true");
    let ok = gw.ok("bob", &["logout", "bob-listen"]);
    assert_eq!(ok[0].get("op"), "device_logout");
    let closed = bob.wait_for(|l| l.starts_with("closed"));
    assert!(closed.contains("KICK_REASON_LOGGED_OUT"), "{closed}");
    let r = gw.run("bob", &["logout", "bob-listen"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ERROR_CODE_NOT_FOUND"), "{}", r.stderr);
}

#[test]
fn interactive_call_accept_and_hangup() {
    // Proves the chat's `/call USER`, `/accept` and `/hangup` on real
    // terminals: bob's screen shows alice calling, `/accept` (no id: the
    // call he is rung for) answers it, alice sees the answer, her `/hangup`
    // ends it on both screens with the call's record line; `/devices` shows
    // the chat's own device.
    let gw = Gateway::start();
    let mut bob = Pty::spawn(&mut gw.cli("bob", &[]));
    bob.expect("logged in as bob");
    let mut alice = Pty::spawn(&mut gw.cli("alice", &[]));
    alice.expect("logged in as alice");
    alice.expect("tern> ");
    alice.type_line("/call bob");
    alice.expect("calling bob");
    bob.expect("alice is calling you");
    bob.type_line("/accept");
    alice.expect("bob answered");
    alice.type_line("/hangup");
    alice.expect("ended: completed");
    bob.expect("ended: completed");
    bob.expect("alice called bob: 0m");
    alice.type_line("/devices");
    alice.expect("(this one) (cli)");
    alice.type_line("/quit");
    assert_eq!(
        alice.wait_exit().code(),
        Some(0),
        "screen:\n{}",
        alice.screen()
    );
    bob.type_line("/quit");
    assert_eq!(bob.wait_exit().code(), Some(0), "screen:\n{}", bob.screen());
}

/// A child whose stdout is read line by line on a thread.
struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    seen: usize,
}

impl Lines {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().push(line);
            }
        });
        Self {
            child,
            lines,
            seen: 0,
        }
    }

    /// Waits for the next line (after those already matched) that passes.
    fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let lines = self.lines.lock();
                if let Some(i) = lines[self.seen..].iter().position(|l| pred(l)) {
                    self.seen += i + 1;
                    return lines[self.seen - 1].clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no such line in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(&self) -> String {
        self.lines.lock().join("\n")
    }

    /// Waits for the child to exit; its status and all of its stderr.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child on a pseudo-terminal: what it draws accumulates in `screen`.
struct Pty {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<String>>,
    /// Bytes of `screen` already matched by `expect`.
    seen: usize,
}

impl Pty {
    fn spawn(cmd: &mut Command) -> Self {
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        let child = cmd
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and every slave copy are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            master,
            screen,
            seen: 0,
        }
    }

    /// Waits until `text` appears after what was matched before.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let screen = self.screen.lock();
                if let Some(i) = screen[self.seen..].find(text) {
                    self.seen += i + text.len();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not on screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a line and Enter (a carriage return, as a terminal sends it).
    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
        self.master.flush().unwrap();
    }

    fn screen(&self) -> String {
        self.screen.lock().clone()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit; screen:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_client_pings_at_the_welcome_interval() {
    // Proves heartbeats follow Welcome: with a 300 ms interval and a 300 %
    // timeout the server closes a connection silent for 900 ms, yet a
    // listener that sends nothing of its own stays connected for 2.5 s and
    // exits 0 (the slack absorbs a loaded CI machine).
    let gw = Gateway::start_with(|c| {
        c.session.heartbeat_interval_ms = 300;
        c.session.heartbeat_timeout_factor_pct = 300;
    });
    let r = gw.run("alice", &["listen", "--for-ms", "2500"]);
    assert_eq!(r.code, 0, "stdout {} stderr {}", r.stdout, r.stderr);
    let recs = r.records();
    assert_eq!(recs[0].kind, "ready");
    assert_eq!(recs[0].get("heartbeat_ms"), "300");
    assert!(of_kind(&recs, "closed").is_empty(), "{}", r.stdout);
}

#[test]
fn a_displaced_listener_reports_the_kick_and_exits_3() {
    // Proves a kick is reported with its reason: a second login on the same
    // device displaces the first, which prints `closed` and fails CLI_CLOSED.
    let gw = Gateway::start();
    let mut first = Lines::spawn(
        gw.cli("alice", &["--device", "phone", "listen"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    first.wait_for(|l| l.starts_with("ready user=alice device=phone"));
    let _second = Lines::spawn(
        gw.cli(
            "alice",
            &["--device", "phone", "listen", "--for-ms", "30000"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null()),
    );
    let closed = first.wait_for(|l| l.starts_with("closed"));
    assert!(closed.contains("KICK_REASON_DISPLACED"), "{closed}");
    let (status, stderr) = first.wait_exit();
    assert_eq!(status.code(), Some(3));
    assert!(stderr.contains("CLI_CLOSED"), "{stderr}");
}

#[test]
fn the_chat_reconnects_after_a_server_restart_and_catches_up() {
    // Proves the reconnect path: the gateway drains (SHUTDOWN kick), the
    // chat backs off and reconnects with its cursors when the gateway is
    // back on the same address and store, and then shows a message sent
    // while it was away and one sent after.
    let mut gw = Gateway::start();
    gw.ok("bob", &["send", "--to", "alice", "before the restart"]);
    let mut alice = Pty::spawn(&mut gw.cli("alice", &[]));
    alice.expect("logged in as alice");
    alice.type_line("/open bob");
    alice.expect("before the restart");
    alice.expect("@bob> ");

    gw.stop();
    alice.expect("KICK_REASON_SHUTDOWN");
    alice.expect("reconnecting in");
    gw.restart();
    // Sent while alice may still be away: she gets it by push or by the
    // sync that follows her reconnect.
    gw.ok("bob", &["send", "--to", "alice", "while you were away"]);
    alice.expect("reconnected");
    alice.expect("bob: while you were away");
    gw.ok("bob", &["send", "--to", "alice", "welcome back"]);
    alice.expect("bob: welcome back");
    alice.type_line("/quit");
    assert_eq!(alice.wait_exit().code(), Some(0), "{}", alice.screen());
}

#[test]
fn the_chat_moves_to_the_next_server_when_its_node_drains() {
    // Proves the move off a draining node: two nodes on one Redis, the chat
    // started with `--server n1,n2` logs in on n1; n1 drains (SHUTDOWN kick
    // with a retry_after_ms), the chat waits, reconnects to n2 (the next
    // entry, not n1 again), and shows a message sent there after the move.
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let cluster_node = |id: &'static str| {
        let url = redis.url();
        move |c: &mut Config| {
            c.backend.store = tern_gateway::config::StoreKind::Redis;
            c.backend.redis_urls = vec![url];
            c.node_id = id.into();
            c.cluster.node_lease_ms = 1_000;
            c.cluster.nodes_refresh_ms = 100;
            c.shutdown.retry_after_min_ms = 100;
            c.shutdown.retry_after_max_ms = 500;
        }
    };
    let mut n1 = Gateway::start_with(cluster_node("n1"));
    let n2 = Gateway::start_with(cluster_node("n2"));
    n2.ok("bob", &["send", "--to", "alice", "before the move"]);
    let servers = format!("{},{}", n1.tcp, n2.tcp);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-cli"));
    cmd.args([
        "--server",
        &servers,
        "--jwt-secret",
        SECRET,
        "--user",
        "alice",
    ])
    .env_remove("TERN_TOKEN")
    .env_remove("TERN_DEVICE");
    let mut alice = Pty::spawn(&mut cmd);
    alice.expect("logged in as alice");
    alice.type_line("/open bob");
    alice.expect("before the move");
    alice.expect("@bob> ");

    n1.stop();
    alice.expect("KICK_REASON_SHUTDOWN");
    alice.expect("reconnecting in");
    alice.expect(&format!("reconnected to {}", n2.tcp));
    n2.ok("bob", &["send", "--to", "alice", "after the move"]);
    alice.expect("bob: after the move");
    alice.type_line("/quit");
    assert_eq!(alice.wait_exit().code(), Some(0), "{}", alice.screen());
}

#[test]
fn rooms_from_the_command_line() {
    // Proves the `room` commands end to end through a real gateway: create
    // a chat room and a broadcast channel, a `listen --room` subscriber
    // gets posts live (joined before `ready`), `room history` serves the
    // recent window oldest first, `room info` the newest seq, and a
    // non-admin post to the broadcast channel exits 1 with
    // ERROR_CODE_BROADCAST_ONLY; `room delete` by the owner reaches the
    // listener as `room_closed`, by anyone else exits 1.
    let gw = Gateway::start();
    let made = gw.ok("alice", &["room", "create", "lobby", "The", "Lobby"]);
    assert_eq!(made[0].kind, "room");
    assert!(made[0].has("name", "The Lobby") && made[0].has("kind", "chat"));
    gw.ok(
        "alice",
        &["room", "create", "news", "--broadcast", "--admin", "bob"],
    );
    let mut listener = Lines::spawn(
        gw.cli(
            "carol",
            &["listen", "--room", "lobby,news", "--for-ms", "30000"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    );
    listener.wait_for(|l| l.starts_with("ready user=carol"));
    let posted = gw.ok("bob", &["room", "post", "lobby", "hello", "room"]);
    assert!(posted[0].has("op", "room_post") && posted[0].has("seq", "1"));
    listener.wait_for(|l| l.contains("conv=r:lobby") && l.contains("text=\"hello room\""));
    gw.ok("bob", &["room", "post", "news", "admins only"]);
    listener.wait_for(|l| l.contains("conv=r:news") && l.contains("text=\"admins only\""));
    gw.ok("alice", &["room", "post", "lobby", "second"]);

    let h = gw.ok("dave", &["room", "history", "lobby"]);
    let texts: Vec<&str> = of_kind(&h, "entry").iter().map(|r| r.get("text")).collect();
    assert_eq!(texts, ["hello room", "second"]);
    let h = gw.ok("dave", &["room", "history", "lobby", "--before", "2"]);
    assert_eq!(of_kind(&h, "entry").len(), 1);
    let info = gw.ok("dave", &["room", "info", "lobby"]);
    assert!(info[0].has("last_seq", "2"), "{info:?}");

    let r = gw.run("carol", &["room", "post", "news", "me too"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_BROADCAST_ONLY"),
        "{}",
        r.stderr
    );

    // Only the owner deletes; the listener is told, and the room is gone.
    let r = gw.run("bob", &["room", "delete", "news"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_PERMISSION_DENIED"),
        "{}",
        r.stderr
    );
    let gone = gw.ok("alice", &["room", "delete", "news"]);
    assert!(gone[0].has("op", "room_delete"), "{gone:?}");
    listener.wait_for(|l| l.starts_with("room_closed") && l.contains("room=news"));
    let r = gw.run("dave", &["room", "info", "news"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ERROR_CODE_NOT_FOUND"), "{}", r.stderr);
}

#[test]
fn push_tokens_and_mutes_from_scripts() {
    // Proves `push register|list|unregister|mute` (docs/push.md): the
    // token is listed with this run's device, mutes of a conversation and
    // do-not-disturb are listed, another user's unregister exits 1 with
    // PUSH_TOKEN_NOT_YOURS and changes nothing, and a server without push
    // answers PUSH_DISABLED.
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/keys");
    let gw = Gateway::start_with(|c| {
        c.push.enabled = true;
        c.push.apns_key_file = Some(keys.join("ec.pem"));
        c.push.apns_key_id = "KEY1234567".into();
        c.push.apns_team_id = "TEAM123456".into();
        // Nothing is sent in this test: no message has an offline
        // recipient with a token.
        c.push.apns_url = "http://127.0.0.1:9".into();
    });
    gw.ok(
        "bob",
        &[
            "push",
            "register",
            "apns",
            "abcd01",
            "--topic",
            "com.example.x",
        ],
    );
    let l = gw.ok("bob", &["push", "list"]);
    let tokens = of_kind(&l, "push_token");
    assert_eq!(tokens.len(), 1, "{l:?}");
    assert!(tokens[0].has("token", "abcd01"));
    assert!(tokens[0].has("platform", "apns"));
    assert!(tokens[0].has("topic", "com.example.x"));
    gw.ok("bob", &["push", "mute", "--conv", "alice"]);
    gw.ok("bob", &["push", "mute"]);
    let l = gw.ok("bob", &["push", "list"]);
    let mutes: Vec<&str> = of_kind(&l, "push_mute")
        .iter()
        .map(|m| m.get("conv"))
        .collect();
    assert_eq!(mutes, ["all", "d:alice:bob"], "{l:?}");
    let r = gw.run("carol", &["push", "unregister", "apns", "abcd01"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_PUSH_TOKEN_NOT_YOURS"),
        "{}",
        r.stderr
    );
    gw.ok("bob", &["push", "mute", "--off"]);
    gw.ok("bob", &["push", "unregister", "apns", "abcd01"]);
    let l = gw.ok("bob", &["push", "list"]);
    assert!(of_kind(&l, "push_token").is_empty(), "{l:?}");
    assert_eq!(of_kind(&l, "push_mute").len(), 1, "{l:?}");

    let off = Gateway::start();
    let r = off.run("bob", &["push", "list"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR_CODE_PUSH_DISABLED"),
        "{}",
        r.stderr
    );
}
