//! The shell examples of docs/http-api.md, run as written: each ```sh
//! block is taken from the document, its `curl` commands run with `sh` and
//! the real curl against an in-process gateway (the document's
//! `http://127.0.0.1:7480` swapped for the gateway's port), in document
//! order, and each answer is held to what the document shows. One
//! extractor and one runner serve every section; each test sets up what
//! its section's prose says is there (keys, tokens, files, a receiver).
//!
//! What a block may hold, and how its answers are checked:
//! - `curl …` commands (a `\` at a line's end, or an open single quote,
//!   continues the command), and `NAME=…` assignments, which are run
//!   before every later command of the block (so a block may compute a
//!   signature and then send it);
//! - a comment `# <status> {json}` or `# {json}` right after a command:
//!   that command's answer has that status (or the JSON's `status`), the
//!   same top-level fields and the same `code`; any other comment is prose;
//! - no such comment: the answer is 2xx, and JSON when it has a body
//!   (`-o file` writes it to the test's directory instead);
//! - the first ```json block after a ```sh block, under the same heading,
//!   shows the answer of its last command: the real one has the same
//!   top-level fields.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    time::Duration,
};

use serde_json::Value;
use support::{Client, Gateway};
use tern_gateway::config::{ApiKeyConfig, Driver};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "admin-key-0123456789";
const DOC: &str = include_str!("../../docs/http-api.md");

/// The part of the document from the heading `from` (none: the start) up
/// to the heading `to` after it.
fn section(from: Option<&str>, to: &str) -> &'static str {
    let start = from.map_or(0, |h| {
        DOC.find(&format!("\n{h}\n"))
            .unwrap_or_else(|| panic!("docs/http-api.md has no {h:?}"))
    });
    let rest = &DOC[start..];
    let end = rest
        .find(&format!("\n{to}\n"))
        .unwrap_or_else(|| panic!("docs/http-api.md has no {to:?} after {from:?}"));
    &rest[..end]
}

/// One command of a block and the answer a comment after it shows.
#[derive(Debug)]
struct Command {
    text: String,
    /// (status, JSON) from a `# <status> {json}` / `# {json}` comment.
    expect: Option<(Option<u16>, Value)>,
}

/// One ```sh block and the ```json block shown after it, if any.
#[derive(Debug)]
struct Example {
    commands: Vec<Command>,
    shown: Option<String>,
}

/// The examples of `doc`, in order.
fn examples(doc: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    // A heading since the last ```sh block: a ```json block in another
    // part shows something else (a webhook's payload), not its answer.
    let mut heading_since_sh = true;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let fence = line.trim();
        if fence != "```sh" && fence != "```json" {
            heading_since_sh |= fence.starts_with('#');
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if fence == "```json" {
            if !heading_since_sh
                && let Some(Example {
                    shown: shown @ None,
                    ..
                }) = out.last_mut()
            {
                *shown = Some(block.join("\n"));
            }
            continue;
        }
        heading_since_sh = false;
        let mut commands: Vec<Command> = Vec::new();
        let mut current = String::new();
        for l in block {
            if let Some(comment) = l.trim_start().strip_prefix('#') {
                if current.is_empty()
                    && let Some(last) = commands.last_mut()
                    && last.expect.is_none()
                {
                    last.expect = shown_answer(comment.trim());
                }
                continue;
            }
            // A line goes on after a `\` or inside a single-quoted string.
            match l.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(l);
                    if current.matches('\'').count() % 2 == 1 {
                        current.push('\n');
                    } else {
                        commands.push(Command {
                            text: std::mem::take(&mut current),
                            expect: None,
                        });
                    }
                }
            }
        }
        out.push(Example {
            commands,
            shown: None,
        });
    }
    out
}

/// `<status> {json}` or `{json}` of a comment, if that is what it holds.
fn shown_answer(comment: &str) -> Option<(Option<u16>, Value)> {
    let (status, json) = match comment.split_once(' ') {
        Some((n, rest)) if n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
            (n.parse().ok(), rest)
        }
        _ => (None, comment),
    };
    let v: Value = serde_json::from_str(json.trim()).ok()?;
    v.is_object().then_some((status, v))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Runs one example in `dir` with `env`, `http://127.0.0.1:7480` (and each
/// `replace` pair) swapped in the commands; checks each answer as the
/// module says and returns them (JSON, or Null when written to a file).
fn run(
    example: &Example,
    base: &str,
    env: &[(String, String)],
    dir: &Path,
    replace: &[(&str, &str)],
) -> Vec<Value> {
    let mut prelude = String::new();
    let mut answers = Vec::new();
    for cmd in &example.commands {
        let text = cmd.text.trim_start();
        let is_assignment = text.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        if is_assignment {
            prelude.push_str(text);
            prelude.push('\n');
            continue;
        }
        assert!(text.starts_with("curl "), "neither curl nor NAME=…: {text}");
        let mut text = text.replace("http://127.0.0.1:7480", base);
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("set -e\n{prelude}{text} -w '\\n%{{http_code}}'"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .output()
            .expect("sh and curl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or_else(|| {
            panic!(
                "{text}\n→ {stdout:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let status: u16 = status
            .parse()
            .unwrap_or_else(|_| panic!("{text}\n→ no status: {stdout:?}"));
        let answer = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{text}\n→ {body}: {e}"))
        };
        match &cmd.expect {
            Some((want_status, shown)) => {
                let want = want_status
                    .or_else(|| shown["status"].as_u64().and_then(|s| u16::try_from(s).ok()))
                    .unwrap_or(200);
                assert_eq!(status, want, "{text}\n→ {body}");
                assert_eq!(keys(&answer), keys(shown), "{text}\n→ {body}");
                assert_eq!(answer.get("code"), shown.get("code"), "{text}\n→ {body}");
            }
            None => assert!((200..300).contains(&status), "{text}\n→ {status} {body}"),
        }
        answers.push(answer);
    }
    if let Some(shown) = &example.shown {
        let shown: Value = serde_json::from_str(shown)
            .unwrap_or_else(|e| panic!("the document's JSON: {e}\n{shown}"));
        let last = answers.last().expect("a ```json block after commands");
        assert_eq!(
            keys(last),
            keys(&shown),
            "{:?}\nserver: {last}",
            example.commands
        );
    }
    answers
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Proves the curl examples of the server API sections (everything before
/// "## Media") work as written: run in document order against a gateway
/// with `$TERN_API_KEY` set (bob online on two devices first), each answers
/// 2xx with a JSON body, and where the document shows the answer, the real
/// one has the same top-level fields.
#[test]
fn the_server_api_examples_answer_as_documented() {
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![ApiKeyConfig {
            name: "ops".into(),
            key: KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        }];
    });
    let (_phone, _) = Client::login(gw.tcp, "bob", "phone");
    let (_laptop, _) = Client::login(gw.tcp, "bob", "laptop");
    let all = examples(section(None, "## Media"));
    assert!(all.len() >= 12, "found {} examples", all.len());
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://{}", gw.http);
    let env = env(&[("TERN_API_KEY", KEY)]);
    for ex in &all {
        run(ex, &base, &env, dir.path(), &[]);
    }
}

/// Proves the examples of "## Media" work as written, on the default disk
/// store: alice (`$TOKEN`) uploads `cat.png` and gets the documented
/// MediaRef; `notes.txt` claiming to be an image is the documented 415;
/// once the upload is sent to bob in a message (`$ID`, `$SEQ`), bob
/// (`$BOB_TOKEN`) downloads it byte for byte into `received.png`, and
/// without naming the message gets the documented 403.
#[test]
fn the_media_examples_answer_as_documented() {
    let gw = Gateway::start(Driver::Epoll);
    let dir = tempfile::tempdir().unwrap();
    let picture = {
        let img = image::RgbImage::from_fn(800, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 40])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    std::fs::write(dir.path().join("cat.png"), &picture).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "buy milk\n").unwrap();
    let all = examples(section(Some("## Media"), "## Webhooks"));
    assert!(all.len() >= 3, "found {} examples", all.len());
    let base = format!("http://{}", gw.http);
    let mut vars = env(&[
        ("TOKEN", &Gateway::token("alice")),
        ("BOB_TOKEN", &Gateway::token("bob")),
    ]);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let mut sent = false;
    for ex in &all {
        let answers = run(ex, &base, &vars, dir.path(), &[]);
        // The first upload is what alice sends bob: the download examples
        // name it and that message.
        if let Some(m) = answers.iter().find(|a| a["media_id"].is_string())
            && !sent
        {
            let ack = alice.request(Body::Send(pb::Send {
                client_msg_id: "cat".into(),
                to: Some(pb::send::To::UserId("bob".into())),
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Image(pb::Image {
                        media: Some(pb::MediaRef {
                            media_id: m["media_id"].as_str().unwrap().into(),
                            mime: m["mime"].as_str().unwrap().into(),
                            size_bytes: m["size_bytes"].as_u64().unwrap(),
                            ..Default::default()
                        }),
                    })),
                }),
                ..Default::default()
            }));
            let Some(Body::SendAck(ack)) = ack.body else {
                panic!("no ack: {ack:?}")
            };
            assert_eq!(ack.conversation_id, "d:alice:bob");
            vars.extend(env(&[
                ("ID", m["media_id"].as_str().unwrap()),
                ("SEQ", &ack.seq.to_string()),
            ]));
            sent = true;
        }
    }
    assert!(sent, "no example uploaded media");
    let received = std::fs::read(dir.path().join("received.png"))
        .expect("the download example writes received.png");
    assert!(received == picture, "the download differs from cat.png");
}

/// Proves the signing example of "## Webhooks" (openssl and curl, with
/// `$TERN_WEBHOOK_SECRET`) signs exactly as Tern does: a receiver on a
/// loopback port (standing in for `127.0.0.1:9000`) recomputes
/// `X-Tern-Signature` with the gateway's own signer over the raw body and
/// the timestamp sent, and answers 200 only when they match (401 else).
#[test]
fn the_webhook_signing_example_signs_as_tern_does() {
    const SECRET: &str = "whk-secret-0123456789";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = format!("http://{}", listener.local_addr().unwrap());
    // One request, then the thread ends; bounded by the read timeout.
    let serve = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "request ended early");
            raw.extend_from_slice(&chunk[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                break (head, raw[end + 4..end + 4 + len].to_vec());
            }
        };
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let ts: u64 = header("x-tern-timestamp").parse().unwrap_or(0);
        let signer = tern_gateway::webhooks::sign::Signer::new(SECRET);
        let ok = header("x-tern-signature") == signer.tern_signature(ts, &body);
        let answer = format!("{{\"verified\":{ok}}}");
        let status = if ok { "200 OK" } else { "401 Unauthorized" };
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        ok
    });
    let all = examples(section(Some("## Webhooks"), "## Accounts"));
    assert_eq!(all.len(), 1, "{all:?}");
    let dir = tempfile::tempdir().unwrap();
    let answers = run(
        &all[0],
        "http://127.0.0.1:7480",
        &env(&[("TERN_WEBHOOK_SECRET", SECRET)]),
        dir.path(),
        &[("http://127.0.0.1:9000", &receiver)],
    );
    assert_eq!(answers.last().unwrap()["verified"], true);
    assert!(serve.join().unwrap());
}
