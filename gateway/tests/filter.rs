//! The content filter (`[filter]`) end to end: real sockets against an
//! in-process gateway for what a client sees (rejected with
//! `CONTENT_REJECTED`, or stored and delivered masked; group names and
//! announcements too; the server API not filtered; counts in /metrics), and
//! the real `tern` binary for what an operator sees (a bad list stops the
//! start naming its file and line; SIGHUP reloads the lists and a bad
//! reload keeps the old ones). Each test says what it proves.

// Tests poll with short sleeps.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::json;
use support::{Client, Gateway, SECRET, delivered_text};
use tern_gateway::config::{ApiKeyConfig, Driver, FilterPolicy};
use tern_protocol::pb::{self, frame::Body};

const ADMIN_KEY: &str = "admin-key-0123456789";

/// The error code and reason of an `Error` answer, or panics.
fn error_of(f: &pb::Frame) -> (pb::ErrorCode, String) {
    match &f.body {
        Some(Body::Error(e)) => (e.code(), e.reason.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A list with a mask word, a reject word and a word without a policy
/// (the config's default, `mask` here): a client's text with the mask word
/// (in another case) is acked and delivered with the word's characters as
/// `*`, and so is the default-policy word; a text with the reject word is
/// answered `CONTENT_REJECTED` with a reason and never delivered (the next
/// push the reader gets is the message after it). Group names and
/// announcements are masked or refused the same way; a send of the server
/// API with the reject word is stored as it is (a trusted service). The
/// counts show in /metrics.
#[test]
fn listed_words_are_rejected_or_masked_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("words.txt");
    std::fs::write(
        &list,
        "# test list\ndarn\tmask\nForbidden\treject\n\nheck\n",
    )
    .unwrap();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.filter.word_files = vec![list.clone()];
        c.filter.default_policy = FilterPolicy::Mask;
        c.api.keys = vec![ApiKeyConfig {
            name: "crm".into(),
            key: ADMIN_KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        }];
    });
    gw.wait_metric("tern_content_filter_words 3");
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");

    let ack = alice.send_text("bob", "m1", "oh DARN it, heck");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&f).unwrap().2, "oh **** it, ****");

    let refused = alice.send_text("bob", "m2", "this is fORBIDDEN talk");
    let (code, reason) = error_of(&refused);
    assert_eq!(code, pb::ErrorCode::ContentRejected);
    assert!(reason.contains("not allowed"), "{reason}");
    let ack = alice.send_text("bob", "m3", "clean");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(
        delivered_text(&f).unwrap().2,
        "clean",
        "the rejected message was delivered"
    );

    // Group names and announcements.
    let create = |c: &mut Client, name: &str| {
        c.request(Body::GroupCreate(pb::GroupCreate {
            name: name.into(),
            members: vec!["bob".into()],
            ..Default::default()
        }))
    };
    let (code, reason) = error_of(&create(&mut alice, "forbidden club"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);
    assert!(reason.contains("group name"), "{reason}");
    let group = match create(&mut alice, "Darn club").body {
        Some(Body::GroupInfoResult(r)) => r.info.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(group.name, "**** club");
    let announce = |c: &mut Client, text: &str| {
        c.request(Body::GroupAnnounce(pb::GroupAnnounce {
            group_id: group.group_id.clone(),
            announcement: text.into(),
        }))
    };
    let (code, _) = error_of(&announce(&mut alice, "FORBIDDEN news"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);
    let ok = announce(&mut alice, "heck news");
    assert!(matches!(ok.body, Some(Body::Ok(_))), "{ok:?}");
    let info = match alice
        .request(Body::GroupInfo(pb::GroupInfoRequest {
            group_id: group.group_id.clone(),
        }))
        .body
    {
        Some(Body::GroupInfoResult(r)) => r.info.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(info.announcement, "**** news");

    // The server API is a trusted service: not filtered.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/messages",
        Some(ADMIN_KEY),
        &json!({
            "request_id": "api-1",
            "from": "alice",
            "to_user": "bob",
            "content": {"type": "text", "text": "forbidden by the CRM"},
        }),
    );
    assert_eq!(s, 200, "{body}");
    let f = bob.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t.contains("by the CRM")));
    assert_eq!(delivered_text(&f).unwrap().2, "forbidden by the CRM");

    // Requests, not words: two masked sends, one masked group create, one
    // masked announcement; a rejected send, create and announcement.
    gw.wait_metric("tern_content_filter_total{outcome=\"masked\"} 3");
    gw.wait_metric("tern_content_filter_total{outcome=\"rejected\"} 3");
}

/// Room posts pass the filter like sends (docs/protocol.md, "Rooms"): a
/// post with a reject word is answered CONTENT_REJECTED, stores nothing and
/// uses no seq (the joined reader's next room message is the post after
/// it, seq 1, and the room's history holds only what passed); a mask word
/// is stored and delivered as `*`. A room name is checked like a group's:
/// a reject word refuses the create (the id stays free), a mask word is
/// stored masked. The server API's post is not filtered.
#[test]
fn room_posts_and_names_are_filtered_like_messages() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("words.txt");
    std::fs::write(&list, "darn\tmask\nForbidden\treject\n").unwrap();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.filter.word_files = vec![list.clone()];
        c.api.keys = vec![ApiKeyConfig {
            name: "crm".into(),
            key: ADMIN_KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        }];
    });
    gw.wait_metric("tern_content_filter_words 2");
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let create = |c: &mut Client, id: &str, name: &str| {
        c.request(Body::RoomCreate(pb::RoomCreate {
            room_id: id.into(),
            name: name.into(),
            ..Default::default()
        }))
    };
    let (code, reason) = error_of(&create(&mut alice, "lobby", "Forbidden lobby"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);
    assert!(reason.contains("room name"), "{reason}");
    let room = match create(&mut alice, "lobby", "DARN lobby").body {
        Some(Body::RoomInfoResult(r)) => r.room.unwrap(),
        other => panic!("the id stayed free: {other:?}"),
    };
    assert_eq!(room.name, "**** lobby");
    let r = bob.request(Body::RoomJoin(pb::RoomJoin {
        room_id: "lobby".into(),
    }));
    assert!(matches!(r.body, Some(Body::RoomJoined(_))), "{r:?}");
    let post = |c: &mut Client, text: &str| {
        c.request(Body::RoomPost(pb::RoomPost {
            room_id: "lobby".into(),
            content: Some(support::text_content(text)),
            client_msg_id: String::new(),
        }))
    };
    let (code, reason) = error_of(&post(&mut alice, "this is fORBIDDEN talk"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);
    assert!(reason.contains("not allowed"), "{reason}");
    let r = post(&mut alice, "oh darn");
    assert!(
        matches!(r.body, Some(Body::Ok(pb::Ok { seq: 1, .. }))),
        "{r:?}"
    );
    let room_text = |f: &pb::Frame| match &f.body {
        Some(Body::RoomDeliver(d)) => {
            let e = d.entry.as_ref()?;
            match &e.body {
                Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
                    pb::content::Kind::Text(t) => Some((e.seq, t.text.clone())),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    };
    let f = bob.wait_push(|f| room_text(f).is_some());
    assert_eq!(room_text(&f), Some((1, "oh ****".into())));

    // The server API is trusted: its post is stored as it is.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/rooms/lobby/posts",
        Some(ADMIN_KEY),
        &json!({"content": {"type": "text", "text": "forbidden by the CRM"}}),
    );
    assert_eq!(s, 200, "{body}");
    let f = bob.wait_push(|f| room_text(f).is_some());
    assert_eq!(room_text(&f), Some((2, "forbidden by the CRM".into())));
    let r = bob.request(Body::RoomHistory(pb::RoomHistoryRequest {
        room_id: "lobby".into(),
        before_seq: 0,
        limit: 0,
    }));
    let Some(Body::RoomHistoryResult(h)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(
        h.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2],
        "the refused post stored nothing"
    );
    gw.wait_metric("tern_content_filter_total{outcome=\"masked\"} 2");
    gw.wait_metric("tern_content_filter_total{outcome=\"rejected\"} 2");
}

/// An empty list starts a filter that matches nothing (sends pass as they
/// are); no list at all starts no filter and shows no words.
#[test]
fn an_empty_list_lets_everything_through() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("empty.txt");
    std::fs::write(&list, "").unwrap();
    let gw = Gateway::start_with(Driver::Epoll, |c| c.filter.word_files = vec![list.clone()]);
    gw.wait_metric("tern_content_filter_words 0");
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let ack = alice.send_text("bob", "m1", "anything at all");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
}

// ---- the real `tern` binary ------------------------------------------------

/// How long a process may take to start, reload or exit.
const PROCESS_WAIT: Duration = Duration::from_secs(30);

/// A `tern serve` process with its stderr collected.
struct Tern {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: String,
    tcp: String,
    http: String,
}

impl Tern {
    /// `tern serve --config <dir>/tern.toml` on free loopback ports, the
    /// file holding `config`.
    fn serve(dir: &Path, config: &str) -> Self {
        let addr = || format!("127.0.0.1:{}", tern_testkit::free_port());
        let (tcp, ws, http) = (addr(), addr(), addr());
        let file = dir.join("tern.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--config"])
            .arg(&file)
            .args(["--listen", &tcp, "--ws-listen", &ws, "--http", &http])
            .args(["--shards", "1", "--jwt-secret", SECRET, "--data-dir"])
            .arg(dir.join("data"))
            .current_dir(dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr: String::new(),
            tcp,
            http,
        }
    }

    /// Reads stderr until `done` holds or the process exits (bounded):
    /// whether `done` held.
    fn wait_for(&mut self, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + PROCESS_WAIT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if done(&self.stderr) {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(&self.stderr),
            }
        }
        false
    }

    fn sighup(&self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill with the pid of our own child and a valid signal.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    fn metrics(&self) -> String {
        support::http_request(self.http.parse().unwrap(), "GET", "/metrics", &[], b"")
            .2
            .into_iter()
            .map(char::from)
            .collect()
    }

    /// Polls /metrics (bounded) until it shows `needle`.
    fn wait_metric(&self, needle: &str) {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            let text = self.metrics();
            if text.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "never showed {needle}:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn filter_config(list: &Path) -> String {
    format!(
        "[filter]\nword_files = [{:?}]\ndefault_policy = \"reject\"\n",
        list.display().to_string()
    )
}

/// A list with a line that is not UTF-8 stops `tern serve` at start with a
/// non-zero exit and an error naming the file and the line.
#[test]
fn a_list_that_is_not_utf8_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("bad.txt");
    std::fs::write(&list, b"fine\nalso fine\nbad \xff\xfe byte\n").unwrap();
    let mut tern = Tern::serve(dir.path(), &filter_config(&list));
    let status = tern.child.wait().unwrap();
    tern.wait_for(|_| false);
    assert!(!status.success(), "{status}\n{}", tern.stderr);
    let want = format!("word list {}, line 3: not valid UTF-8", list.display());
    assert!(tern.stderr.contains(&want), "{}", tern.stderr);
}

/// SIGHUP reloads the word lists of a running `tern serve`: a word added
/// to the file is refused after the reload (and was delivered before it);
/// a reload from a file that became invalid is logged with its file and
/// line and keeps the lists in force.
#[test]
fn sighup_reloads_the_lists_and_a_bad_reload_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("words.txt");
    std::fs::write(&list, "omega\n").unwrap();
    let mut tern = Tern::serve(dir.path(), &filter_config(&list));
    assert!(
        tern.wait_for(|e| e.contains("tern serving")),
        "did not start:\n{}",
        tern.stderr
    );
    tern.wait_metric("tern_content_filter_words 1");
    let (mut alice, _) = Client::login(tern.tcp.parse().unwrap(), "alice", "phone");
    let ack = alice.send_text("bob", "m1", "alpha before the reload");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");

    std::fs::write(&list, "omega\nalpha\treject\n").unwrap();
    tern.sighup();
    tern.wait_metric("tern_content_filter_words 2");
    let (code, _) = error_of(&alice.send_text("bob", "m2", "alpha after the reload"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);

    std::fs::write(&list, b"omega\n\xff\n").unwrap();
    tern.sighup();
    let want = format!("word list {}, line 2: not valid UTF-8", list.display());
    assert!(
        tern.wait_for(|e| e.contains("reload failed") && e.contains(&want)),
        "no failed reload logged:\n{}",
        tern.stderr
    );
    tern.wait_metric("tern_content_filter_words 2");
    let (code, _) = error_of(&alice.send_text("bob", "m3", "alpha still refused"));
    assert_eq!(code, pb::ErrorCode::ContentRejected);
}
