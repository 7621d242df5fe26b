//! Threads and to-dos through a running gateway (docs/protocol.md,
//! "Threads" and "To-dos", issue 19): pushes to every member, a device that
//! was offline syncs them, thread history and unread counts, and the typed
//! refusals of bad input, over real TCP connections.

#![allow(clippy::disallowed_methods)]

mod support;

use support::{Client, Gateway, text_content};
use tern_protocol::pb::{self, frame::Body};

const G: &str = "g:crew";

fn sent_seq(f: &pb::Frame) -> u64 {
    match &f.body {
        Some(Body::SendAck(a)) => a.seq,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

fn error_code(f: &pb::Frame) -> pb::ErrorCode {
    match &f.body {
        Some(Body::Error(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn thread_reply(c: &mut Client, id: &str, root: u64, text: &str) -> pb::Frame {
    c.request(Body::Send(pb::Send {
        client_msg_id: id.into(),
        to: Some(pb::send::To::GroupId("crew".into())),
        content: Some(text_content(text)),
        thread_root_seq: root,
        ..Default::default()
    }))
}

/// The thread root of the first message entry of a pushed `deliver`.
fn pushed_reply(f: &pb::Frame) -> Option<u64> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    d.entries.iter().find_map(|e| match &e.body {
        Some(pb::entry::Body::Message(m)) if m.thread_root_seq != 0 => Some(m.thread_root_seq),
        _ => None,
    })
}

/// The `TodoEvent` of a pushed `deliver`.
fn pushed_todo(f: &pb::Frame) -> Option<pb::TodoEvent> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    d.entries.iter().find_map(|e| match &e.body {
        Some(pb::entry::Body::Todo(t)) => Some(t.clone()),
        _ => None,
    })
}

fn todo(seq: u64, action: pb::TodoAction, assignees: &[&str]) -> Body {
    Body::Todo(pb::TodoRequest {
        conversation_id: G.into(),
        seq,
        action: action as i32,
        assignees: assignees.iter().map(|s| s.to_string()).collect(),
    })
}

fn open_todos(c: &mut Client) -> Vec<pb::Todo> {
    match c
        .request(Body::TodoList(pb::TodoListRequest::default()))
        .body
    {
        Some(Body::TodoListResult(r)) => r.todos,
        other => panic!("expected a to-do list, got {other:?}"),
    }
}

#[test]
fn threads_and_todos_reach_members_and_sync() {
    // Proves, on a real gateway over TCP: a thread reply is pushed to every
    // member with its thread_root_seq and synced by a device that was
    // offline; thread history and thread_info (unread, read mark) answer;
    // a reply under a recalled root is refused with MESSAGE_RECALLED; a
    // to-do is pushed to its assignee, listed, marked done, and refused for
    // a non-member assignee and a non-assignee.
    for driver in support::drivers() {
        let gw = Gateway::start(driver);
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        let r = alice.request(Body::GroupCreate(pb::GroupCreate {
            group_id: "crew".into(),
            name: "crew".into(),
            members: vec!["bob".into(), "carol".into()],
            ..Default::default()
        }));
        assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
        let root = sent_seq(&alice.send_group_text("crew", "m1", "release?"));
        let reply = sent_seq(&thread_reply(&mut bob, "r1", root, "friday"));
        assert_eq!(
            pushed_reply(&alice.wait_push(|f| pushed_reply(f).is_some())),
            Some(root)
        );

        // carol was offline: she syncs the reply with the rest of the log.
        let (mut carol, _) = Client::login(gw.tcp, "carol", "laptop");
        let r = carol.request(Body::Sync(pb::SyncRequest::default()));
        let Some(Body::SyncResult(s)) = r.body else {
            panic!("{r:?}")
        };
        assert!(s.entries.iter().any(|e| e.seq == reply
            && matches!(&e.body, Some(pb::entry::Body::Message(m)) if m.thread_root_seq == root)));

        let r = carol.request(Body::History(pb::HistoryRequest {
            conversation_id: G.into(),
            thread_root_seq: root,
            ..Default::default()
        }));
        let Some(Body::HistoryResult(h)) = r.body else {
            panic!("{r:?}")
        };
        assert_eq!(h.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [reply]);
        let info = |c: &mut Client| match c
            .request(Body::ThreadInfo(pb::ThreadInfoRequest {
                conversation_id: G.into(),
                root_seqs: vec![root],
            }))
            .body
        {
            Some(Body::ThreadInfoResult(r)) => r.threads[0],
            other => panic!("expected thread info, got {other:?}"),
        };
        let t = info(&mut carol);
        assert_eq!((t.unread, t.summary.map(|s| s.reply_count)), (1, Some(1)));
        let r = carol.request(Body::ThreadRead(pb::ThreadReadRequest {
            conversation_id: G.into(),
            root_seq: root,
            up_to_seq: reply,
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        let t = info(&mut carol);
        assert_eq!((t.unread, t.read_seq), (0, reply));

        // To-dos.
        let task = sent_seq(&alice.send_group_text("crew", "m2", "write notes"));
        let r = alice.request(todo(task, pb::TodoAction::Create, &["bob"]));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        let t = pushed_todo(&bob.wait_push(|f| pushed_todo(f).is_some())).unwrap();
        assert_eq!((t.seq, t.assignees.clone()), (task, vec!["bob".to_owned()]));
        assert_eq!(open_todos(&mut bob).len(), 1);
        assert_eq!(
            error_code(&carol.request(todo(task, pb::TodoAction::Done, &[]))),
            pb::ErrorCode::PermissionDenied
        );
        let r = bob.request(todo(task, pb::TodoAction::Done, &[]));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        assert!(open_todos(&mut bob).is_empty());
        let other = sent_seq(&alice.send_group_text("crew", "m3", "another"));
        assert_eq!(
            error_code(&alice.request(todo(other, pb::TodoAction::Create, &["zed"]))),
            pb::ErrorCode::AssigneeNotMember
        );

        // A recalled root takes no new replies.
        let r = alice.request(Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq: root,
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        assert_eq!(
            error_code(&thread_reply(&mut bob, "r2", root, "late")),
            pb::ErrorCode::MessageRecalled
        );
    }
}
