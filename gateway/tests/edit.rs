//! Message edit through a running gateway (docs/protocol.md, "Edit"): the
//! `Edited` entry is pushed to every device of both users, a device that
//! was offline syncs the latest text, the server API edits as the sender
//! (`PATCH /api/v1/conversations/{id}/messages/{seq}`), the content filter
//! screens edits, and the `[edit]` config section reaches the domain.

#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::json;
use support::{Client, Gateway, text_content};
use tern_gateway::config::{ApiKeyConfig, Driver};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "edit-key-0123456789ab";
const AB: &str = "d:alice:bob";

fn edit(seq: u64, id: &str, text: &str, streaming: bool) -> Body {
    Body::Edit(pb::EditRequest {
        conversation_id: AB.into(),
        seq,
        client_edit_id: id.into(),
        content: Some(text_content(text)),
        streaming,
    })
}

/// The `Edited` body of a pushed `deliver`, if that is what `f` is.
fn pushed_edit(f: &pb::Frame) -> Option<pb::Edited> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    d.entries.iter().find_map(|e| match &e.body {
        Some(pb::entry::Body::Edited(x)) => Some(x.clone()),
        _ => None,
    })
}

fn text_of(c: Option<&pb::Content>) -> Option<&str> {
    match c?.kind.as_ref()? {
        pb::content::Kind::Text(t) => Some(&t.text),
        _ => None,
    }
}

fn sent_seq(f: &pb::Frame) -> u64 {
    match &f.body {
        Some(Body::SendAck(a)) => a.seq,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

#[test]
fn an_edit_reaches_every_device_and_a_late_device_syncs_the_latest() {
    // Proves, over TCP on a real gateway: the sender's other device, the
    // requesting device and the peer all get the `Edited` push with the new
    // text and `streaming` as sent; the answer is `ok` with the entry's seq;
    // a device that logs in afterwards syncs the message at its original
    // seq with the final text, its edit count and `streaming` cleared.
    for driver in support::drivers() {
        let gw = Gateway::start(driver);
        let (mut phone, _) = Client::login(gw.tcp, "alice", "phone");
        let (mut laptop, _) = Client::login(gw.tcp, "alice", "laptop");
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        let seq = sent_seq(&phone.send_text("bob", "m1", "helo"));
        let r = phone.request(edit(seq, "e1", "hello", true));
        let Some(Body::Ok(ok)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(ok.seq, seq + 1);
        for c in [&mut phone, &mut laptop, &mut bob] {
            let x = pushed_edit(&c.wait_push(|f| pushed_edit(f).is_some())).unwrap();
            assert_eq!((x.seq, x.edit_count, x.streaming), (seq, 1, true));
            assert_eq!(text_of(x.content.as_ref()), Some("hello"));
        }
        let r = phone.request(edit(seq, "e2", "hello, bob", false));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        let (mut tablet, _) = Client::login(gw.tcp, "bob", "tablet");
        let r = tablet.request(Body::Sync(pb::SyncRequest::default()));
        let Some(Body::SyncResult(s)) = r.body else {
            panic!("{r:?}")
        };
        let first = s
            .entries
            .iter()
            .find(|e| e.seq == seq)
            .expect("the message");
        let Some(pb::entry::Body::Message(m)) = &first.body else {
            panic!("{first:?}")
        };
        assert_eq!(text_of(m.content.as_ref()), Some("hello, bob"));
        assert_eq!((m.edit_count, m.streaming), (2, false));
        assert_eq!(s.entries.len(), 3, "the message and its two edits");
    }
}

#[test]
fn the_api_edits_as_the_sender_and_retries_are_idempotent() {
    // Proves PATCH /api/v1/conversations/{id}/messages/{seq}: the sender's
    // edit answers 200 with the `edited` entry's seq and is pushed to the
    // peer; the same request_id again answers the same seq and pushes
    // nothing; another `from` gets 403 PERMISSION_DENIED; a seq with no
    // message 404.
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![ApiKeyConfig {
            name: "crm".into(),
            key: KEY.into(),
            scopes: vec!["messages".into()],
            tenant: String::new(),
        }];
    });
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let seq = sent_seq(&alice.send_text("bob", "m1", "draft"));
    let path = format!("/api/v1/conversations/{AB}/messages/{seq}");
    let body = |from: &str, id: &str| {
        json!({
            "request_id": id,
            "from": from,
            "content": {"type": "text", "text": "final"},
        })
    };
    let (s, first) = gw.api("PATCH", &path, Some(KEY), &body("alice", "r1"));
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["conversation_id"], AB);
    assert_eq!(first["seq"], seq);
    let edit_seq = first["edit_seq"].as_u64().unwrap();
    assert_eq!(edit_seq, seq + 1);
    let x = pushed_edit(&bob.wait_push(|f| pushed_edit(f).is_some())).unwrap();
    assert_eq!(text_of(x.content.as_ref()), Some("final"));
    let (s, again) = gw.api("PATCH", &path, Some(KEY), &body("alice", "r1"));
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["edit_seq"], edit_seq);
    let (s, denied) = gw.api("PATCH", &path, Some(KEY), &body("bob", "r2"));
    assert_eq!(
        (s, denied["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let missing = format!("/api/v1/conversations/{AB}/messages/99");
    let (s, nf) = gw.api("PATCH", &missing, Some(KEY), &body("alice", "r3"));
    assert_eq!((s, nf["code"].as_str()), (404, Some("NOT_FOUND")), "{nf}");
    // The retry pushed nothing: the next push bob sees is a later message.
    alice.send_text("bob", "m2", "next");
    let next = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
    assert!(
        pushed_edit(&next).is_none(),
        "a retried edit was pushed again"
    );
}

#[test]
fn edit_settings_and_the_content_filter_apply() {
    // Proves the `[edit]` section reaches the domain (window_secs = 0: every
    // edit EDIT_WINDOW_PASSED) and, with a word list, an edit with a refused
    // word is CONTENT_REJECTED while a masked word is stored masked.
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "forbidden\treject\ndarn\tmask\n").unwrap();
    let off = Gateway::start_with(Driver::Epoll, |c| c.edit.window_secs = 0);
    let (mut alice, _) = Client::login(off.tcp, "alice", "phone");
    let seq = sent_seq(&alice.send_text("bob", "m1", "hi"));
    let r = alice.request(edit(seq, "e1", "hey", false));
    let Some(Body::Error(e)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(e.code(), pb::ErrorCode::EditWindowPassed);
    drop(alice);
    drop(off);

    let gw = Gateway::start_with(Driver::Epoll, |c| c.filter.word_files = vec![words.clone()]);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let seq = sent_seq(&alice.send_text("bob", "m1", "hi"));
    let r = alice.request(edit(seq, "e1", "a forbidden word", false));
    let Some(Body::Error(e)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(e.code(), pb::ErrorCode::ContentRejected);
    let r = alice.request(edit(seq, "e2", "oh darn", false));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let x = pushed_edit(&bob.wait_push(|f| pushed_edit(f).is_some())).unwrap();
    assert_eq!(text_of(x.content.as_ref()), Some("oh ****"));
}
