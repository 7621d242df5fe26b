//! The conformance suite: one set of tests that every [`Store`] must pass,
//! through the chat domain (every feature and every authorization rule) and
//! directly on the store (the atomicity contract of `tern_backend::store`).
//!
//! # Running it against a store
//!
//! Add one test file, e.g. `backend/tests/redis_conformance.rs`:
//!
//! ```ignore
//! #[macro_use]
//! mod conformance;            // this directory: backend/tests/conformance/
//!
//! fn make() -> conformance::Fixture {
//!     let server = /* start your store's server, or pick a fresh key prefix */;
//!     let store = /* open the store on it */;
//!     // `keep` lives as long as the test: put the server (or temp dir) in it.
//!     conformance::Fixture::new(std::sync::Arc::new(store), server)
//! }
//!
//! conformance_tests!(make);
//! ```
//!
//! `conformance_tests!(make)` expands to one `#[test]` per case (named like
//! the case), each calling `make()` for a fresh, empty store. The module
//! must be declared as `mod conformance;` at the root of the test crate (the
//! macro calls `crate::conformance::<case>`). Cases are plain functions
//! taking a [`Fixture`]; adding one means adding it to the list in the
//! macro at the end of this file.
//!
//! Time is simulated: each [`World`] has its own clock, moved with
//! [`World::advance`]; no test sleeps.

#![allow(dead_code, clippy::disallowed_methods)]

use std::any::Any;
use std::cell::Cell;
use std::sync::Arc;

use tern_backend::store::{
    Annotation, Append, AppendEffect, AppendRefused, DedupKey, FriendRecord, FriendRequestRecord,
    GroupChange, GroupMeta, MemberOf, MemberRecord, PresenceRecord, PresenceSetting, SocialOp,
    Store, UserConv, ViewChange,
};
use tern_backend::{Caller, Config, Domain, Effect, Outcome, Request};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

/// A fresh store and whatever must outlive it (temp dir, server process).
pub struct Fixture {
    /// The store under test, empty.
    pub store: Arc<dyn Store>,
    /// Dropped after the test.
    pub keep: Box<dyn Any>,
}

impl Fixture {
    /// A fixture keeping `keep` alive for the test's duration.
    pub fn new(store: Arc<dyn Store>, keep: impl Any) -> Self {
        Self {
            store,
            keep: Box::new(keep),
        }
    }
}

// ---------------------------------------------------------------------------
// The test world: a domain, a clock, helpers
// ---------------------------------------------------------------------------

/// Start of simulated time (2023-11-14).
const T0: u64 = 1_700_000_000_000;

/// A domain over the fixture's store, with a simulated clock.
pub struct World {
    pub domain: Domain,
    now: Cell<u64>,
    _keep: Box<dyn Any>,
}

impl World {
    pub fn new(f: Fixture) -> Self {
        Self::with_config(f, Config::default())
    }

    pub fn with_config(f: Fixture, config: Config) -> Self {
        Self {
            domain: Domain::new(f.store, config),
            now: Cell::new(T0),
            _keep: f.keep,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.domain.store()
    }

    pub fn now(&self) -> u64 {
        self.now.get()
    }

    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    pub fn caller(user: &str) -> Caller {
        Caller {
            user_id: user.to_owned(),
            device_id: format!("{user}-phone"),
            admin: false,
        }
    }

    /// One request; the clock ticks 1 ms after it so times are distinct.
    pub fn call(&self, user: &str, body: Body) -> Outcome {
        let out = self.domain.handle(&Self::caller(user), self.now(), body);
        self.advance(1);
        out
    }

    /// The gateway's presence for `user`'s connections: `online` when the
    /// first device that counts connects, else the last one left.
    pub fn connection(&self, user: &str, online: bool) -> Outcome {
        let state = if online {
            pb::PresenceState::Online
        } else {
            pb::PresenceState::Offline
        };
        let body = Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
            text: String::new(),
        });
        let out = self
            .domain
            .handle(&Caller::connection(user), self.now(), body);
        self.advance(1);
        assert!(
            matches!(out.reply, Some(Body::Ok(_))),
            "connection presence of {user}: {:?}",
            out.reply
        );
        out
    }

    /// A request that must succeed.
    #[track_caller]
    pub fn ok(&self, user: &str, body: Body) -> Outcome {
        let out = self.call(user, body);
        if let Some(Body::Error(e)) = &out.reply {
            panic!("{user}: expected success, got {:?}: {}", e.code(), e.reason);
        }
        out
    }

    /// A request that must fail; returns its code.
    #[track_caller]
    pub fn err(&self, user: &str, body: Body) -> pb::ErrorCode {
        let out = self.call(user, body);
        match &out.reply {
            Some(Body::Error(e)) => {
                assert!(out.effects.is_empty(), "a failed request has no effects");
                e.code()
            }
            other => panic!("{user}: expected an error, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn send_dm(&self, from: &str, to: &str, text: &str) -> pb::SendAck {
        let cmid = self.next_cmid();
        ack(&self.ok(from, send_body(&cmid, To::User(to), text)))
    }

    #[track_caller]
    pub fn send_group(&self, from: &str, group: &str, text: &str) -> pb::SendAck {
        let cmid = self.next_cmid();
        ack(&self.ok(from, send_body(&cmid, To::Group(group), text)))
    }

    pub fn next_cmid(&self) -> String {
        format!("m{}", self.now())
    }

    #[track_caller]
    pub fn create_group(&self, owner: &str, gid: &str, members: &[&str]) -> pb::GroupInfo {
        self.create_group_with(owner, gid, members, pb::JoinPolicy::Open, false)
    }

    #[track_caller]
    pub fn create_group_with(
        &self,
        owner: &str,
        gid: &str,
        members: &[&str],
        policy: pb::JoinPolicy,
        history_visible: bool,
    ) -> pb::GroupInfo {
        let out = self.ok(
            owner,
            Body::GroupCreate(pb::GroupCreate {
                group_id: gid.into(),
                name: format!("{gid} name"),
                members: members.iter().map(|s| s.to_string()).collect(),
                join_policy: policy as i32,
                history_visible,
            }),
        );
        match out.reply {
            Some(Body::GroupInfoResult(r)) => r.info.expect("info"),
            other => panic!("expected group info, got {other:?}"),
        }
    }

    /// Every entry `user` may read in `conv`, oldest first.
    #[track_caller]
    pub fn history(&self, user: &str, conv: &str) -> Vec<pb::Entry> {
        let mut all = Vec::new();
        let mut before = 0;
        loop {
            let out = self.ok(
                user,
                Body::History(pb::HistoryRequest {
                    conversation_id: conv.into(),
                    before_seq: before,
                    limit: 0,
                    thread_root_seq: 0,
                }),
            );
            let Some(Body::HistoryResult(r)) = out.reply else {
                panic!("not a history result")
            };
            let first = r.entries.first().map(|e| e.seq);
            all.splice(0..0, r.entries);
            match (r.more, first) {
                (true, Some(f)) => before = f,
                _ => return all,
            }
        }
    }

    /// A whole sync from empty cursors, paging until done.
    #[track_caller]
    pub fn sync_all(&self, user: &str) -> Vec<pb::Entry> {
        let mut cursors: Vec<pb::Cursor> = Vec::new();
        let mut all = Vec::new();
        loop {
            let r = self.sync(user, &cursors, 0);
            for e in &r.entries {
                match cursors
                    .iter_mut()
                    .find(|c| c.conversation_id == e.conversation_id)
                {
                    Some(c) => c.seq = e.seq,
                    None => cursors.push(pb::Cursor {
                        conversation_id: e.conversation_id.clone(),
                        seq: e.seq,
                    }),
                }
            }
            all.extend(r.entries);
            if !r.more {
                return all;
            }
        }
    }

    #[track_caller]
    pub fn sync(&self, user: &str, cursors: &[pb::Cursor], limit: u32) -> pb::SyncResult {
        let out = self.ok(
            user,
            Body::Sync(pb::SyncRequest {
                cursors: cursors.to_vec(),
                limit,
            }),
        );
        match out.reply {
            Some(Body::SyncResult(r)) => r,
            other => panic!("expected a sync result, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn conversations(&self, user: &str) -> Vec<pb::ConversationSummary> {
        let out = self.ok(
            user,
            Body::Conversations(pb::ConversationListRequest::default()),
        );
        match out.reply {
            Some(Body::ConversationsResult(r)) => r.conversations,
            other => panic!("expected conversations, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn summary(&self, user: &str, conv: &str) -> pb::ConversationSummary {
        self.conversations(user)
            .into_iter()
            .find(|c| c.conversation_id == conv)
            .unwrap_or_else(|| panic!("{user} has no conversation {conv}"))
    }

    #[track_caller]
    pub fn read(&self, user: &str, conv: &str, up_to: u64) -> Outcome {
        self.ok(
            user,
            Body::Read(pb::ReadRequest {
                conversation_id: conv.into(),
                up_to_seq: up_to,
            }),
        )
    }

    #[track_caller]
    pub fn members(&self, user: &str, gid: &str) -> Vec<pb::GroupMember> {
        let out = self.ok(
            user,
            Body::GroupMembers(pb::GroupMembersRequest {
                group_id: gid.into(),
                after_user_id: String::new(),
                limit: 0,
            }),
        );
        match out.reply {
            Some(Body::GroupMembersResult(r)) => r.members,
            other => panic!("expected members, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn group_info(&self, user: &str, gid: &str) -> pb::GroupInfoResult {
        let out = self.ok(
            user,
            Body::GroupInfo(pb::GroupInfoRequest {
                group_id: gid.into(),
            }),
        );
        match out.reply {
            Some(Body::GroupInfoResult(r)) => r,
            other => panic!("expected group info, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn befriend(&self, a: &str, b: &str) {
        self.ok(
            a,
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: b.into(),
                message: "hi".into(),
            }),
        );
        self.ok(
            b,
            Body::FriendAccept(pb::FriendAccept { user_id: a.into() }),
        );
    }
}

pub enum To<'a> {
    User(&'a str),
    Group(&'a str),
}

pub fn send_body(cmid: &str, to: To<'_>, text: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: cmid.into(),
        to: Some(match to {
            To::User(u) => pb::send::To::UserId(u.into()),
            To::Group(g) => pb::send::To::GroupId(g.into()),
        }),
        content: Some(text_content(text)),
        mentions: Vec::new(),
        mention_all: false,
        reply_to_seq: 0,
        streaming: false,
        thread_root_seq: 0,
    })
}

pub fn text_content(text: &str) -> pb::Content {
    pb::Content {
        kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
    }
}

#[track_caller]
pub fn ack(out: &Outcome) -> pb::SendAck {
    match &out.reply {
        Some(Body::SendAck(a)) => a.clone(),
        other => panic!("expected a send ack, got {other:?}"),
    }
}

#[track_caller]
pub fn ok_seq(out: &Outcome) -> u64 {
    match &out.reply {
        Some(Body::Ok(o)) => o.seq,
        other => panic!("expected ok, got {other:?}"),
    }
}

pub fn text_of(e: &pb::Entry) -> Option<&str> {
    match &e.body {
        Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
            pb::content::Kind::Text(t) => Some(&t.text),
            _ => None,
        },
        _ => None,
    }
}

pub fn texts(entries: &[pb::Entry]) -> Vec<&str> {
    entries.iter().filter_map(text_of).collect()
}

/// The deliveries among `effects`, as (entry, recipients sorted).
pub fn deliveries(effects: &[Effect]) -> Vec<(pb::Entry, Vec<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { entry, recipients } => {
                let mut r = recipients.to_vec();
                r.sort();
                Some((entry.clone(), r))
            }
            _ => None,
        })
        .collect()
}

/// The server events among `effects`, as (user, event kind).
pub fn events(effects: &[Effect]) -> Vec<(String, pb::server_event::Kind)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event { user_id, event } => Some((user_id.clone(), event.kind.clone()?)),
            _ => None,
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const AB: &str = "d:alice:bob";
const G: &str = "g:team";

fn group_event(e: &pb::Entry) -> Option<&pb::group_event::Kind> {
    match &e.body {
        Some(pb::entry::Body::GroupEvent(g)) => g.kind.as_ref(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Store contract (directly on the store)
// ---------------------------------------------------------------------------

fn msg_entry(sender: &str, cmid: &str, time_ms: u64, text: &str) -> pb::Entry {
    pb::Entry {
        conversation_id: String::new(),
        seq: 0,
        sender: sender.into(),
        sender_device: "dev".into(),
        client_msg_id: cmid.into(),
        time_ms,
        body: Some(pb::entry::Body::Message(pb::Message {
            content: Some(text_content(text)),
            mentions: vec![],
            mention_all: false,
            reply_to_seq: 0,
            recalled: false,
            edit_count: 0,
            edited_at_ms: 0,
            reactions: vec![],
            streaming: false,
            thread_root_seq: 0,
            thread: None,
        })),
    }
}

fn plain_append(conv: &str, sender: &str, cmid: &str, time_ms: u64) -> Append {
    Append {
        conversation: conv.into(),
        entry: msg_entry(sender, cmid, time_ms, cmid),
        activity: true,
        dedup: Some(DedupKey {
            sender: sender.into(),
            client_msg_id: cmid.into(),
            expires_at_ms: time_ms + 86_400_000,
        }),
        member_of: None,
        effect: AppendEffect::None,
        participants: vec![],
    }
}

fn new_group(gid: &str, members: &[&str]) -> GroupChange {
    GroupChange {
        group_id: gid.into(),
        expect_version: 0,
        meta: GroupMeta {
            name: gid.into(),
            member_count: members.len() as u32,
            ..Default::default()
        },
        put_members: members
            .iter()
            .map(|u| MemberRecord {
                user_id: u.to_string(),
                role: 1,
                ..Default::default()
            })
            .collect(),
        remove_members: vec![],
        put_join_requests: vec![],
        remove_join_requests: vec![],
        entries: vec![msg_entry("x", "", T0, "created")],
        views: members
            .iter()
            .map(|u| ViewChange::Join {
                user_id: u.to_string(),
                at: 0,
                history: true,
            })
            .collect(),
    }
}

pub fn store_append_assigns_consecutive_seqs_per_conversation(f: Fixture) {
    // Proves seqs start at 1, grow by one per conversation in item order
    // within one batch and across batches, and are stored with the entry.
    let s = f.store;
    let batch: Vec<Append> = (0..6)
        .map(|i| {
            plain_append(
                if i % 2 == 0 { "d:a:b" } else { "d:a:c" },
                "a",
                &format!("c{i}"),
                T0 + i,
            )
        })
        .collect();
    let r = s.append_batch(T0, &batch).unwrap();
    let seqs: Vec<u64> = r.iter().map(|x| x.unwrap().seq).collect();
    assert_eq!(seqs, [1, 1, 2, 2, 3, 3]);
    let r = s
        .append_batch(T0, &[plain_append("d:a:b", "a", "c9", T0 + 9)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 4);
    let heads = s.heads(&["d:a:b", "d:a:c", "d:x:y"]).unwrap();
    assert_eq!(heads.iter().map(|h| h.seq).collect::<Vec<_>>(), [4, 3, 0]);
    assert_eq!(heads[0].last_time_ms, T0 + 9);
    let e = s.entries("d:a:b", 1, 10, 100).unwrap();
    assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(e.iter().all(|e| e.conversation_id == "d:a:b"));
    assert_eq!(e[1].client_msg_id, "c2");
    assert_eq!(s.entries("d:a:b", 2, 3, 100).unwrap().len(), 2);
    assert_eq!(
        s.entries("d:a:b", 1, 10, 2)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(s.entries("d:nobody:here", 1, 10, 10).unwrap().is_empty());
}

pub fn store_dedup_within_and_across_batches_until_expiry(f: Fixture) {
    // Proves a dedup key seen before (earlier batch or earlier in the same
    // batch) returns the original seq and time and stores nothing, and that
    // an expired record no longer deduplicates.
    let s = f.store;
    let a = plain_append("d:a:b", "a", "same", T0);
    let mut later = plain_append("d:a:b", "a", "same", T0 + 5);
    later.entry = msg_entry("a", "same", T0 + 5, "other text");
    let r = s.append_batch(T0, &[a.clone(), later.clone()]).unwrap();
    assert!(!r[0].unwrap().duplicate);
    assert!(r[1].unwrap().duplicate);
    assert_eq!(r[1].unwrap().seq, 1);
    assert_eq!(r[1].unwrap().time_ms, T0);
    let r = s.append_batch(T0 + 10, &[later.clone()]).unwrap();
    assert_eq!((r[0].unwrap().seq, r[0].unwrap().duplicate), (1, true));
    assert_eq!(s.heads(&["d:a:b"]).unwrap()[0].seq, 1);
    // Same client id from another sender, or in another conversation: new.
    let other_sender = plain_append("d:a:b", "b", "same", T0);
    let other_conv = plain_append("d:a:c", "a", "same", T0);
    let r = s.append_batch(T0, &[other_sender, other_conv]).unwrap();
    assert_eq!((r[0].unwrap().seq, r[0].unwrap().duplicate), (2, false));
    assert_eq!((r[1].unwrap().seq, r[1].unwrap().duplicate), (1, false));
    // After expiry the key is free again.
    let r = s.append_batch(T0 + 86_400_001, &[later]).unwrap();
    assert_eq!((r[0].unwrap().seq, r[0].unwrap().duplicate), (3, false));
}

pub fn store_refused_item_writes_nothing_and_others_proceed(f: Fixture) {
    // Proves per-item failure: a member guard that fails refuses only its
    // item (no seq taken, no dedup record), the rest of the batch is stored.
    let s = f.store;
    s.apply_group_change(&new_group("grp", &["m1"]))
        .unwrap()
        .unwrap();
    let mut ok1 = plain_append("g:grp", "m1", "a", T0);
    ok1.member_of = Some(MemberOf {
        group_id: "grp".into(),
        user_id: "m1".into(),
    });
    let mut bad = plain_append("g:grp", "stranger", "b", T0);
    bad.member_of = Some(MemberOf {
        group_id: "grp".into(),
        user_id: "stranger".into(),
    });
    let mut ok2 = plain_append("g:grp", "m1", "c", T0);
    ok2.member_of = ok1.member_of.clone();
    let r = s.append_batch(T0, &[ok1, bad.clone(), ok2]).unwrap();
    assert_eq!(r[0].unwrap().seq, 2);
    assert_eq!(r[1], Err(AppendRefused::NotMember));
    assert_eq!(r[2].unwrap().seq, 3);
    // The refused item left no dedup record: once a member, it is new.
    let mut change = new_group("grp", &[]);
    change.expect_version = 1;
    change.put_members = vec![MemberRecord {
        user_id: "stranger".into(),
        role: 1,
        ..Default::default()
    }];
    change.entries.clear();
    change.views.clear();
    s.apply_group_change(&change).unwrap().unwrap();
    let r = s.append_batch(T0, &[bad]).unwrap();
    assert_eq!((r[0].unwrap().seq, r[0].unwrap().duplicate), (4, false));
}

pub fn store_recall_effect_rewrites_once(f: Fixture) {
    // Proves the recall effect clears the content and sets `recalled` on the
    // original, appends the tombstone, and refuses a second recall or a
    // recall of something that is not a message.
    let s = f.store;
    s.append_batch(T0, &[plain_append("d:a:b", "a", "x", T0)])
        .unwrap();
    let tomb = |seq| Append {
        conversation: "d:a:b".into(),
        entry: pb::Entry {
            sender: "a".into(),
            time_ms: T0 + 1,
            body: Some(pb::entry::Body::Recalled(pb::Recalled { seq })),
            ..Default::default()
        },
        activity: true,
        dedup: None,
        member_of: None,
        effect: AppendEffect::Recall { seq },
        participants: vec![],
    };
    let r = s.append_batch(T0 + 1, &[tomb(1)]).unwrap();
    assert_eq!(r[0].unwrap().seq, 2);
    let e = s.entries("d:a:b", 1, 1, 1).unwrap().remove(0);
    match e.body {
        Some(pb::entry::Body::Message(m)) => {
            assert!(m.recalled);
            assert_eq!(m.content, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.client_msg_id, "x", "everything but the content is kept");
    let r = s
        .append_batch(T0 + 2, &[tomb(1), tomb(2), tomb(99)])
        .unwrap();
    assert!(r.iter().all(|x| *x == Err(AppendRefused::NotRecallable)));
    assert_eq!(s.heads(&["d:a:b"]).unwrap()[0].seq, 2);
}

pub fn store_read_effect_moves_forward_only(f: Fixture) {
    // Proves the read effect needs the reader's record, moves the cursor
    // only forward, and that participants get a record once.
    let s = f.store;
    let mut a = plain_append("d:a:b", "a", "x", T0);
    a.participants = strings(&["a", "b"]);
    s.append_batch(T0, &[a.clone(), a.clone()]).unwrap();
    let mut b = plain_append("d:a:b", "a", "y", T0);
    b.participants = strings(&["a", "b"]);
    s.append_batch(T0, &[b]).unwrap();
    assert_eq!(
        s.user_conv("b", "d:a:b").unwrap(),
        Some(UserConv {
            conversation_id: "d:a:b".into(),
            visible_from_seq: 1,
            visible_to_seq: 0,
            read_seq: 0
        })
    );
    let read = |user: &str, up_to| Append {
        conversation: "d:a:b".into(),
        entry: pb::Entry {
            sender: user.into(),
            time_ms: T0,
            body: Some(pb::entry::Body::Read(pb::ReadMark { up_to_seq: up_to })),
            ..Default::default()
        },
        activity: false,
        dedup: None,
        member_of: None,
        effect: AppendEffect::Read {
            user_id: user.into(),
            up_to_seq: up_to,
        },
        participants: vec![],
    };
    let r = s
        .append_batch(
            T0,
            &[read("b", 2), read("b", 1), read("b", 2), read("zed", 1)],
        )
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 3);
    assert_eq!(&r[1..], &[Err(AppendRefused::ReadNotAdvanced); 3]);
    assert_eq!(s.user_conv("b", "d:a:b").unwrap().unwrap().read_seq, 2);
    let h = s.heads(&["d:a:b"]).unwrap()[0];
    assert_eq!(h.seq, 3);
    assert!(h.last_activity_ms <= h.last_time_ms);
    assert_eq!(s.user_convs("a").unwrap().len(), 1);
}

pub fn store_group_change_is_compare_and_set(f: Fixture) {
    // Proves a group change applies only at the expected version (0: the
    // group must not exist), writes nothing on conflict, bumps the version,
    // assigns entry seqs and applies join/leave views with those seqs.
    let s = f.store;
    assert_eq!(
        s.apply_group_change(&new_group("grp", &["u1", "u2"]))
            .unwrap(),
        Ok(vec![1])
    );
    assert!(
        s.apply_group_change(&new_group("grp", &["u3"]))
            .unwrap()
            .is_err()
    );
    let meta = s.group("grp").unwrap().unwrap();
    assert_eq!(
        (meta.version, meta.group_id.as_str(), meta.member_count),
        (1, "grp", 2)
    );
    assert!(s.group_member("grp", "u3").unwrap().is_none());
    let mut change = new_group("grp", &[]);
    change.expect_version = 1;
    change.meta = meta.clone();
    change.remove_members = strings(&["u2"]);
    change.put_members = vec![MemberRecord {
        user_id: "u4".into(),
        role: 1,
        ..Default::default()
    }];
    change.entries = vec![msg_entry("u1", "", T0, "e2"), msg_entry("u1", "", T0, "e3")];
    change.views = vec![
        ViewChange::Leave {
            user_id: "u2".into(),
            at: 0,
        },
        ViewChange::Join {
            user_id: "u4".into(),
            at: 1,
            history: false,
        },
    ];
    let stale = GroupChange {
        expect_version: 7,
        ..change.clone()
    };
    assert!(s.apply_group_change(&stale).unwrap().is_err());
    assert_eq!(
        s.heads(&["g:grp"]).unwrap()[0].seq,
        1,
        "a conflict writes nothing"
    );
    assert_eq!(s.apply_group_change(&change).unwrap(), Ok(vec![2, 3]));
    assert_eq!(s.group("grp").unwrap().unwrap().version, 2);
    let ids: Vec<String> = s
        .group_members("grp", "", 10)
        .unwrap()
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(ids, strings(&["u1", "u4"]));
    assert_eq!(s.group_members("grp", "u1", 10).unwrap().len(), 1);
    assert_eq!(s.group_members("grp", "", 1).unwrap().len(), 1);
    let u2 = s.user_conv("u2", "g:grp").unwrap().unwrap();
    assert_eq!((u2.visible_from_seq, u2.visible_to_seq), (1, 2));
    let u4 = s.user_conv("u4", "g:grp").unwrap().unwrap();
    assert_eq!(
        (u4.visible_from_seq, u4.visible_to_seq, u4.read_seq),
        (3, 0, 2)
    );
    let e = s.entries("g:grp", 1, 3, 10).unwrap();
    assert!(e.iter().all(|e| e.conversation_id == "g:grp"));
}

pub fn store_social_records(f: Fixture) {
    // Proves friend, request, block and profile records round-trip, list in
    // id order, and that deletes of missing records are no-ops.
    let s = f.store;
    let fr = |u: &str, f: &str| FriendRecord {
        user: u.into(),
        friend: f.into(),
        remark: "r".into(),
        since_ms: 5,
    };
    let rq = |a: &str, b: &str| FriendRequestRecord {
        from: a.into(),
        to: b.into(),
        message: "hi".into(),
        time_ms: 7,
    };
    s.apply_social(&[
        SocialOp::PutFriend(fr("a", "c")),
        SocialOp::PutFriend(fr("a", "b")),
        SocialOp::PutFriendRequest(rq("x", "a")),
        SocialOp::PutFriendRequest(rq("a", "y")),
        SocialOp::PutBlock {
            user: "a".into(),
            other: "z".into(),
        },
        SocialOp::PutProfile(pb::Profile {
            user_id: "a".into(),
            nickname: "A".into(),
            ..Default::default()
        }),
        SocialOp::DeleteFriend {
            user: "q".into(),
            friend: "r".into(),
        },
    ])
    .unwrap();
    assert_eq!(s.friend("a", "b").unwrap(), Some(fr("a", "b")));
    assert_eq!(s.friend("b", "a").unwrap(), None);
    assert_eq!(s.friends("a").unwrap(), vec![fr("a", "b"), fr("a", "c")]);
    assert_eq!(s.friend_request("x", "a").unwrap(), Some(rq("x", "a")));
    assert_eq!(
        s.friend_requests("a").unwrap(),
        (vec![rq("x", "a")], vec![rq("a", "y")])
    );
    assert!(s.is_blocked("a", "z").unwrap());
    assert!(!s.is_blocked("z", "a").unwrap());
    assert_eq!(s.blocked("a").unwrap(), strings(&["z"]));
    assert_eq!(s.profile("a").unwrap().unwrap().nickname, "A");
    assert_eq!(s.profile("nobody").unwrap(), None);
    s.apply_social(&[
        SocialOp::DeleteFriend {
            user: "a".into(),
            friend: "b".into(),
        },
        SocialOp::DeleteFriendRequest {
            from: "x".into(),
            to: "a".into(),
        },
        SocialOp::DeleteBlock {
            user: "a".into(),
            other: "z".into(),
        },
    ])
    .unwrap();
    assert_eq!(s.friends("a").unwrap(), vec![fr("a", "c")]);
    assert_eq!(s.friend_requests("a").unwrap().0, vec![]);
    assert!(!s.is_blocked("a", "z").unwrap());
}

pub fn store_blocked_pairs_answers_in_order(f: Fixture) {
    // Proves `Store::blocked_pairs` answers "does .0 block .1" per pair, in
    // the order asked, agreeing with `is_blocked`: one-way and two-way
    // blocks, pairs of unknown users, a repeated pair, an empty ask, and
    // many pairs spread over many keys (several nodes in a cluster).
    let s = f.store;
    let block = |u: &str, o: &str| SocialOp::PutBlock {
        user: u.into(),
        other: o.into(),
    };
    assert_eq!(s.blocked_pairs(&[]).unwrap(), Vec::<bool>::new());
    assert_eq!(
        s.blocked_pairs(&[("a", "b"), ("b", "a")]).unwrap(),
        [false, false],
        "nothing blocked yet"
    );
    s.apply_social(&[
        block("a", "b"),
        block("c", "a"),
        block("d", "e"),
        block("e", "d"),
    ])
    .unwrap();
    let asks = [
        ("a", "b"),
        ("b", "a"),
        ("c", "a"),
        ("a", "c"),
        ("d", "e"),
        ("e", "d"),
        ("nobody", "a"),
        ("a", "nobody"),
        ("x", "y"),
        ("b", "c"),
        ("a", "b"),
    ];
    let want = [
        true, false, true, false, true, true, false, false, false, false, true,
    ];
    assert_eq!(s.blocked_pairs(&asks).unwrap(), want);
    for ((u, o), w) in asks.iter().zip(want) {
        assert_eq!(s.is_blocked(u, o).unwrap(), w, "{u} blocks {o}");
    }
    // Many pairs: every third u<i> blocks v<i>.
    let users: Vec<(String, String)> = (0..60)
        .map(|i| (format!("u{i}"), format!("v{i}")))
        .collect();
    let ops: Vec<SocialOp> = users
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(_, (u, v))| block(u, v))
        .collect();
    s.apply_social(&ops).unwrap();
    let many: Vec<(&str, &str)> = users
        .iter()
        .flat_map(|(u, v)| [(u.as_str(), v.as_str()), (v.as_str(), u.as_str())])
        .collect();
    let got = s.blocked_pairs(&many).unwrap();
    let want: Vec<bool> = (0..60).flat_map(|i| [i % 3 == 0, false]).collect();
    assert_eq!(got, want);
    // An unblock shows at once.
    s.apply_social(&[SocialOp::DeleteBlock {
        user: "a".into(),
        other: "b".into(),
    }])
    .unwrap();
    assert_eq!(
        s.blocked_pairs(&[("a", "b"), ("c", "a")]).unwrap(),
        [false, true]
    );
}

pub fn store_friend_pairs_answers_in_order(f: Fixture) {
    // Proves `Store::friend_pairs` answers "has .0 a friendship record for
    // .1" per pair, in order, agreeing with `friend`: records are one
    // direction each, unknown users have none, and a delete shows at once.
    let s = f.store;
    let fr = |u: &str, f: &str| {
        SocialOp::PutFriend(FriendRecord {
            user: u.into(),
            friend: f.into(),
            remark: String::new(),
            since_ms: 1,
        })
    };
    assert_eq!(s.friend_pairs(&[]).unwrap(), Vec::<bool>::new());
    s.apply_social(&[fr("a", "b"), fr("b", "a"), fr("c", "d")])
        .unwrap();
    let asks = [
        ("a", "b"),
        ("b", "a"),
        ("c", "d"),
        ("d", "c"),
        ("a", "c"),
        ("nobody", "a"),
        ("a", "b"),
    ];
    let want = [true, true, true, false, false, false, true];
    assert_eq!(s.friend_pairs(&asks).unwrap(), want);
    for ((u, o), w) in asks.iter().zip(want) {
        assert_eq!(s.friend(u, o).unwrap().is_some(), w, "{u} has {o}");
    }
    s.apply_social(&[SocialOp::DeleteFriend {
        user: "a".into(),
        friend: "b".into(),
    }])
    .unwrap();
    assert_eq!(
        s.friend_pairs(&[("a", "b"), ("b", "a")]).unwrap(),
        [false, true]
    );
}

pub fn store_presence_records(f: Fixture) {
    // Proves presence records are kept per user, replaced on put.
    let s = f.store;
    let p = |state, t| PresenceRecord {
        user_id: "a".into(),
        state,
        text: "t".into(),
        updated_ms: t,
        expires_at_ms: t + 1000,
        connected: state != 4,
    };
    s.put_presence(&p(1, T0)).unwrap();
    s.put_presence(&p(2, T0 + 1)).unwrap();
    let got = s.presences(&["a", "b"]).unwrap();
    assert_eq!(got, vec![Some(p(2, T0 + 1)), None]);
    s.put_presence(&p(4, T0 + 2)).unwrap();
    assert_eq!(s.presences(&["a"]).unwrap(), vec![Some(p(4, T0 + 2))]);
}

pub fn store_presence_settings_are_kept(f: Fixture) {
    // Proves presence settings are kept per user until replaced or deleted
    // (no expiry), and the bulk read answers in order, `None` for a user
    // without one.
    let s = f.store;
    let set = |state: pb::PresenceState, text: &str, t| PresenceSetting {
        state: state as i32,
        text: text.into(),
        updated_ms: t,
    };
    assert!(s.presence_settings(&[]).unwrap().is_empty());
    assert_eq!(s.presence_settings(&["a"]).unwrap(), vec![None]);
    s.put_presence_setting("a", Some(&set(pb::PresenceState::Busy, "x", T0)))
        .unwrap();
    s.put_presence_setting("b", Some(&set(pb::PresenceState::Away, "", T0)))
        .unwrap();
    s.put_presence_setting("a", Some(&set(pb::PresenceState::Offline, "", T0 + 1)))
        .unwrap();
    assert_eq!(
        s.presence_settings(&["b", "nobody", "a"]).unwrap(),
        vec![
            Some(set(pb::PresenceState::Away, "", T0)),
            None,
            Some(set(pb::PresenceState::Offline, "", T0 + 1))
        ]
    );
    s.put_presence_setting("b", None).unwrap();
    s.put_presence_setting("nobody", None).unwrap();
    assert_eq!(
        s.presence_settings(&["b", "nobody"]).unwrap(),
        vec![None, None]
    );
}

pub fn store_presences_and_friends_of_in_bulk(f: Fixture) {
    // Proves the bulk forms agree with the single ones: `put_presences`
    // stores each record (the last of a user wins), `friends_of` answers
    // `friends` per user in order, unknown users with none.
    let s = f.store;
    let p = |user: &str, state, t| PresenceRecord {
        user_id: user.into(),
        state,
        text: String::new(),
        updated_ms: t,
        expires_at_ms: t + 1000,
        connected: true,
    };
    s.put_presences(&[]).unwrap();
    s.put_presences(&[p("a", 1, T0), p("b", 2, T0), p("a", 3, T0 + 1)])
        .unwrap();
    assert_eq!(
        s.presences(&["a", "b", "c"]).unwrap(),
        vec![Some(p("a", 3, T0 + 1)), Some(p("b", 2, T0)), None]
    );
    let fr = |u: &str, f: &str| {
        SocialOp::PutFriend(FriendRecord {
            user: u.into(),
            friend: f.into(),
            remark: String::new(),
            since_ms: 1,
        })
    };
    s.apply_social(&[fr("a", "b"), fr("a", "c"), fr("b", "a")])
        .unwrap();
    assert!(s.friends_of(&[]).unwrap().is_empty());
    let users = ["a", "nobody", "b", "c"];
    let bulk = s.friends_of(&users).unwrap();
    assert_eq!(bulk.len(), users.len());
    for (u, got) in users.iter().zip(&bulk) {
        assert_eq!(got, &s.friends(u).unwrap(), "friends of {u}");
    }
    let names = |v: &[FriendRecord]| v.iter().map(|f| f.friend.clone()).collect::<Vec<_>>();
    assert_eq!(names(&bulk[0]), ["b", "c"]);
    assert!(bulk[1].is_empty() && bulk[3].is_empty());
}

pub fn presence_updates_in_one_batch_each_answer_and_push(f: Fixture) {
    // Proves presence updates batched among sends (a login storm) each get
    // their own answer and push to their own friends, a bad one fails alone,
    // requests of one user in one batch apply in order (bob connects, then
    // chooses away), and the sends around them are stored as usual.
    let w = World::new(f);
    w.befriend("alice", "bob");
    let req = |u: &str, body: Body| Request {
        caller: World::caller(u),
        body,
    };
    let gateway = |u: &str, body: Body| Request {
        caller: Caller::connection(u),
        body,
    };
    let presence = |state: pb::PresenceState| {
        Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
            text: String::new(),
        })
    };
    let reqs = vec![
        gateway("alice", presence(pb::PresenceState::Online)),
        req("carol", send_body("p1", To::User("dave"), "one")),
        gateway("bob", presence(pb::PresenceState::Online)),
        req("bob", presence(pb::PresenceState::Away)),
        req("erin", presence(pb::PresenceState::Unspecified)),
        gateway("erin", presence(pb::PresenceState::Busy)),
        req("carol", send_body("p2", To::User("dave"), "two")),
    ];
    let out = w.domain.handle_batch(w.now(), reqs);
    assert_eq!(out.len(), 7);
    let pushed = |o: &Outcome| match &o.effects[..] {
        [Effect::Presence { recipients, event }] => (
            recipients.to_vec(),
            event.presence.as_ref().map_or(0, |p| p.state),
        ),
        e => panic!("{e:?}"),
    };
    let online = pb::PresenceState::Online as i32;
    assert!(matches!(out[0].reply, Some(Body::Ok(_))));
    assert_eq!(pushed(&out[0]), (strings(&["bob"]), online));
    assert!(matches!(out[2].reply, Some(Body::Ok(_))));
    assert_eq!(pushed(&out[2]), (strings(&["alice"]), online));
    assert_eq!(
        pushed(&out[3]),
        (strings(&["alice"]), pb::PresenceState::Away as i32)
    );
    for bad in [4, 5] {
        assert!(
            matches!(&out[bad].reply, Some(Body::Error(e)) if e.code() == pb::ErrorCode::InvalidArgument),
            "{:?}",
            out[bad]
        );
    }
    assert_eq!((ack(&out[1]).seq, ack(&out[6]).seq), (1, 2));
    let states = w.store().presences(&["alice", "bob", "erin"]).unwrap();
    let states: Vec<_> = states.iter().map(|p| p.as_ref().map(|p| p.state)).collect();
    assert_eq!(
        states,
        [
            Some(pb::PresenceState::Online as i32),
            Some(pb::PresenceState::Away as i32),
            None
        ]
    );
}

// ---------------------------------------------------------------------------
// Messages: send, dedup, sync, history, unread, conversation list
// ---------------------------------------------------------------------------

pub fn send_direct_stores_and_delivers(f: Fixture) {
    // Proves a 1:1 send returns increasing seqs in the conversation `d:a:b`,
    // stores every field, and delivers the entry to both users.
    let w = World::new(f);
    let out = w.ok("alice", send_body("c1", To::User("bob"), "hello"));
    let a1 = ack(&out);
    assert_eq!(
        (a1.conversation_id.as_str(), a1.seq, a1.duplicate),
        (AB, 1, false)
    );
    assert_eq!(a1.client_msg_id, "c1");
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert_eq!((d[0].0.seq, text_of(&d[0].0)), (1, Some("hello")));
    let a2 = w.send_dm("bob", "alice", "hi back");
    assert_eq!((a2.conversation_id.as_str(), a2.seq), (AB, 2));
    let h = w.history("bob", AB);
    assert_eq!(texts(&h), ["hello", "hi back"]);
    let e = &h[0];
    assert_eq!(
        (e.sender.as_str(), e.sender_device.as_str()),
        ("alice", "alice-phone")
    );
    assert_eq!(
        (e.client_msg_id.as_str(), e.time_ms),
        ("c1", a1.server_time_ms)
    );
}

pub fn send_with_reply_and_mentions_is_stored(f: Fixture) {
    // Proves reply_to, mentions and content kinds other than text are stored
    // as sent, and a reply to a seq past the head is refused.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let first = w.send_group("bob", "team", "question");
    let out = w.ok(
        "alice",
        Body::Send(pb::Send {
            client_msg_id: "r1".into(),
            to: Some(pb::send::To::GroupId("team".into())),
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Custom(pb::Custom {
                    r#type: "card".into(),
                    data: vec![1, 2, 3],
                })),
            }),
            mentions: strings(&["bob", "bob", "carol"]),
            mention_all: false,
            reply_to_seq: first.seq,
            streaming: false,
            thread_root_seq: 0,
        }),
    );
    let seq = ack(&out).seq;
    let e = w
        .history("carol", G)
        .into_iter()
        .find(|e| e.seq == seq)
        .unwrap();
    let Some(pb::entry::Body::Message(m)) = e.body else {
        panic!()
    };
    assert_eq!(m.reply_to_seq, first.seq);
    assert_eq!(m.mentions, strings(&["bob", "carol"]), "deduplicated");
    assert!(
        matches!(m.content.unwrap().kind, Some(pb::content::Kind::Custom(c)) if c.data == [1, 2, 3])
    );
    let mut bad = send_body("r2", To::Group("team"), "x");
    if let Body::Send(s) = &mut bad {
        s.reply_to_seq = 999;
    }
    assert_eq!(w.err("alice", bad), pb::ErrorCode::InvalidArgument);
}

pub fn send_dedup_returns_original(f: Fixture) {
    // Proves the same (sender, client_msg_id) resent returns the original
    // seq and time with duplicate = true, stores nothing, delivers nothing;
    // another sender's same id is a new message.
    let w = World::new(f);
    let first = ack(&w.ok("alice", send_body("same", To::User("bob"), "one")));
    w.advance(60_000);
    let out = w.ok("alice", send_body("same", To::User("bob"), "one again"));
    let again = ack(&out);
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.server_time_ms),
        (first.seq, first.server_time_ms)
    );
    assert!(out.effects.is_empty());
    let other = ack(&w.ok("bob", send_body("same", To::User("alice"), "bob's")));
    assert_eq!((other.seq, other.duplicate), (2, false));
    assert_eq!(texts(&w.history("alice", AB)), ["one", "bob's"]);
    // Still deduplicated near the end of the window (24 h by default).
    w.advance(23 * 3_600_000);
    assert!(ack(&w.ok("alice", send_body("same", To::User("bob"), "x"))).duplicate);
}

pub fn send_resend_after_losing_rights_returns_original(f: Fixture) {
    // Proves idempotency across a change of rights: a message stored before
    // its sender was kicked (group) or blocked (1:1) is answered, when
    // resent, with its original ack; a new message is refused. Needs
    // `Store::dedup_lookup`.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let first = ack(&w.ok("bob", send_body("keep", To::Group("team"), "sent")));
    w.ok("alice", kick_body("team", "bob"));
    let again = ack(&w.ok("bob", send_body("keep", To::Group("team"), "sent")));
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.server_time_ms),
        (first.seq, first.server_time_ms)
    );
    assert_eq!(
        w.err("bob", send_body("new", To::Group("team"), "x")),
        pb::ErrorCode::NotMember
    );
    let dm = w.send_dm("carol", "dave", "hi");
    w.ok(
        "dave",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "carol".into(),
            blocked: true,
        }),
    );
    let cmid = dm.client_msg_id.clone();
    let again = ack(&w.ok("carol", send_body(&cmid, To::User("dave"), "hi")));
    assert_eq!((again.seq, again.duplicate), (dm.seq, true));
    assert_eq!(
        w.err("carol", send_body("other", To::User("dave"), "hi")),
        pb::ErrorCode::Blocked
    );
}

pub fn send_batch_fails_bad_items_alone(f: Fixture) {
    // Proves the batch entry point: valid sends of one batch are all stored
    // (in order), an invalid one fails alone, and a non-send request in the
    // middle sees the sends before it.
    let w = World::new(f);
    let c = |u: &str| World::caller(u);
    let reqs = vec![
        Request {
            caller: c("alice"),
            body: send_body("b1", To::User("bob"), "one"),
        },
        Request {
            caller: c("alice"),
            body: send_body("", To::User("bob"), "no id"),
        },
        Request {
            caller: c("bob"),
            body: send_body("b2", To::User("alice"), "two"),
        },
        Request {
            caller: c("bob"),
            body: Body::Read(pb::ReadRequest {
                conversation_id: AB.into(),
                up_to_seq: 2,
            }),
        },
        Request {
            caller: c("alice"),
            body: send_body("b3", To::User("bob"), "three"),
        },
        Request {
            caller: c("alice"),
            body: send_body("b1", To::User("bob"), "dup"),
        },
    ];
    let out = w.domain.handle_batch(w.now(), reqs);
    assert_eq!(out.len(), 6);
    assert_eq!(ack(&out[0]).seq, 1);
    assert!(
        matches!(&out[1].reply, Some(Body::Error(e)) if e.code() == pb::ErrorCode::InvalidArgument)
    );
    assert_eq!(ack(&out[2]).seq, 2);
    assert_eq!(ok_seq(&out[3]), 3);
    assert_eq!(ack(&out[4]).seq, 4);
    assert!(ack(&out[5]).duplicate);
    assert_eq!(ack(&out[5]).seq, 1);
    assert_eq!(texts(&w.history("alice", AB)), ["one", "two", "three"]);
}

pub fn send_batch_refuses_only_the_blocked_send(f: Fixture) {
    // Proves the batched block check: in one batch, sends blocked either
    // way get BLOCKED and store nothing while the others are stored; a
    // blocked resend of a stored message still gets its original ack; and
    // a block made by a request in the middle of the batch stops the sends
    // after it.
    let w = World::new(f);
    let before = w.send_dm("mallory", "alice", "before");
    w.ok(
        "alice",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "mallory".into(),
            blocked: true,
        }),
    );
    let req = |u: &str, body: Body| Request {
        caller: World::caller(u),
        body,
    };
    let reqs = vec![
        req("bob", send_body("k1", To::User("alice"), "one")),
        req("mallory", send_body("k2", To::User("alice"), "spam")),
        req("alice", send_body("k3", To::User("mallory"), "reply")),
        req("carol", send_body("k4", To::User("dave"), "two")),
        req(
            "mallory",
            send_body(&before.client_msg_id, To::User("alice"), "before"),
        ),
        req("mallory", send_body("k5", To::User("carol"), "hi")),
        req(
            "carol",
            Body::FriendBlock(pb::FriendBlock {
                user_id: "dave".into(),
                blocked: true,
            }),
        ),
        req(
            "dave",
            send_body("k6", To::User("carol"), "after the block"),
        ),
        req("bob", send_body("k7", To::User("alice"), "three")),
    ];
    let out = w.domain.handle_batch(w.now(), reqs);
    assert_eq!(out.len(), 9);
    let blocked = |o: &Outcome| {
        matches!(&o.reply, Some(Body::Error(e)) if e.code() == pb::ErrorCode::Blocked)
            && o.effects.is_empty()
    };
    assert_eq!(ack(&out[0]).seq, 1);
    assert!(blocked(&out[1]), "{:?}", out[1]);
    assert!(blocked(&out[2]), "{:?}", out[2]);
    assert_eq!(ack(&out[3]).seq, 1);
    let again = ack(&out[4]);
    assert_eq!((again.seq, again.duplicate), (before.seq, true));
    assert_eq!(ack(&out[5]).seq, 1);
    assert!(
        !matches!(out[6].reply, Some(Body::Error(_))),
        "{:?}",
        out[6]
    );
    assert!(blocked(&out[7]), "{:?}", out[7]);
    assert_eq!(ack(&out[8]).seq, 2);
    assert_eq!(texts(&w.history("alice", AB)), ["one", "three"]);
    assert_eq!(texts(&w.history("alice", "d:alice:mallory")), ["before"]);
    assert_eq!(texts(&w.history("carol", "d:carol:dave")), ["two"]);
    assert_eq!(texts(&w.history("carol", "d:carol:mallory")), ["hi"]);
}

pub fn send_validation_refuses_bad_input(f: Fixture) {
    // Proves bad sends get INVALID_ARGUMENT: no content, empty text, text
    // over the limit, bad ids, no recipient, messaging yourself, a bad
    // mention; and that a non-backend frame is refused the same way.
    let w = World::new(f);
    let invalid = pb::ErrorCode::InvalidArgument;
    let mut no_content = send_body("x1", To::User("bob"), "");
    if let Body::Send(s) = &mut no_content {
        s.content = None;
    }
    assert_eq!(w.err("alice", no_content), invalid);
    assert_eq!(
        w.err("alice", send_body("x2", To::User("bob"), "")),
        invalid
    );
    let long = "x".repeat(w.domain.config().text_bytes_max as usize + 1);
    assert_eq!(
        w.err("alice", send_body("x3", To::User("bob"), &long)),
        invalid
    );
    assert_eq!(
        w.err("alice", send_body("bad id", To::User("bob"), "t")),
        invalid
    );
    assert_eq!(
        w.err("alice", send_body("x4", To::User("b:ob"), "t")),
        invalid
    );
    assert_eq!(
        w.err("alice", send_body("x5", To::User("alice"), "t")),
        invalid
    );
    let mut no_to = send_body("x6", To::User("bob"), "t");
    if let Body::Send(s) = &mut no_to {
        s.to = None;
    }
    assert_eq!(w.err("alice", no_to), invalid);
    w.create_group("alice", "team", &["bob"]);
    let mut bad_mention = send_body("x7", To::Group("team"), "t");
    if let Body::Send(s) = &mut bad_mention {
        s.mentions = strings(&["no spaces allowed"]);
    }
    assert_eq!(w.err("alice", bad_mention), invalid);
    assert_eq!(w.err("alice", Body::Ping(pb::Ping { nonce: 1 })), invalid);
    assert_eq!(w.store().heads(&[AB]).unwrap()[0].seq, 0);
}

pub fn history_pages_backwards(f: Fixture) {
    // Proves history pages go backwards from the newest (or from
    // before_seq), are returned oldest first, and say whether more exist.
    let w = World::new(f);
    for i in 1..=7 {
        w.send_dm("alice", "bob", &format!("m{i}"));
    }
    let page = |before, limit| {
        let out = w.ok(
            "bob",
            Body::History(pb::HistoryRequest {
                conversation_id: AB.into(),
                before_seq: before,
                limit,
                thread_root_seq: 0,
            }),
        );
        let Some(Body::HistoryResult(r)) = out.reply else {
            panic!()
        };
        (r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), r.more)
    };
    assert_eq!(page(0, 3), (vec![5, 6, 7], true));
    assert_eq!(page(5, 3), (vec![2, 3, 4], true));
    assert_eq!(page(2, 3), (vec![1], false));
    assert_eq!(page(1, 3), (vec![], false));
    assert_eq!(page(0, 0).0.len(), 7);
    let w2 = World::with_config(
        Fixture::new(w.store().clone(), ()),
        Config {
            page_entries_max: 2,
            ..Config::default()
        },
    );
    let out = w2.ok(
        "bob",
        Body::History(pb::HistoryRequest {
            conversation_id: AB.into(),
            before_seq: 0,
            limit: 50,
            thread_root_seq: 0,
        }),
    );
    let Some(Body::HistoryResult(r)) = out.reply else {
        panic!()
    };
    assert_eq!(r.entries.len(), 2, "capped by page_entries_max");
}

pub fn sync_returns_exactly_what_is_missing(f: Fixture) {
    // Proves sync from per-conversation cursors returns exactly the entries
    // after each cursor (all of a conversation not listed), pages with
    // `more`, and reports every conversation's head.
    let w = World::new(f);
    for i in 1..=5 {
        w.send_dm("alice", "bob", &format!("ab{i}"));
    }
    for i in 1..=3 {
        w.send_dm("carol", "bob", &format!("bc{i}"));
    }
    let cur = |c: &str, s| pb::Cursor {
        conversation_id: c.into(),
        seq: s,
    };
    let r = w.sync("bob", &[cur(AB, 3), cur("d:bob:carol", 3)], 0);
    assert_eq!(texts(&r.entries), ["ab4", "ab5"]);
    assert!(!r.more);
    let mut heads: Vec<(String, u64)> = r
        .heads
        .iter()
        .map(|c| (c.conversation_id.clone(), c.seq))
        .collect();
    heads.sort();
    assert_eq!(
        heads,
        vec![(AB.to_string(), 5), ("d:bob:carol".to_string(), 3)]
    );
    let r = w.sync("bob", &[cur(AB, 4)], 0);
    let mut got = texts(&r.entries);
    got.sort();
    assert_eq!(got, ["ab5", "bc1", "bc2", "bc3"]);
    // Paging: 3 at a time until done, never a duplicate or a gap.
    let mut cursors: Vec<pb::Cursor> = vec![];
    let mut seen = Vec::new();
    loop {
        let r = w.sync("bob", &cursors, 3);
        assert!(r.entries.len() <= 3);
        for e in &r.entries {
            match cursors
                .iter_mut()
                .find(|c| c.conversation_id == e.conversation_id)
            {
                Some(c) => {
                    assert_eq!(e.seq, c.seq + 1, "no gap, no repeat");
                    c.seq = e.seq;
                }
                None => {
                    assert_eq!(e.seq, 1);
                    cursors.push(cur(&e.conversation_id, e.seq));
                }
            }
            seen.push(e.seq);
        }
        if !r.more {
            break;
        }
    }
    assert_eq!(seen.len(), 8);
    assert!(w.sync("bob", &cursors, 0).entries.is_empty());
    assert_eq!(
        w.err(
            "bob",
            Body::Sync(pb::SyncRequest {
                cursors: vec![cur("nonsense", 1)],
                limit: 0
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn sync_reaches_every_device_of_the_sender(f: Fixture) {
    // Proves multi-device convergence: a message sent from one device is in
    // the sync of the sender's other device and of the recipient, identical.
    let w = World::new(f);
    w.send_dm("alice", "bob", "from phone");
    let laptop = Caller {
        user_id: "alice".into(),
        device_id: "alice-laptop".into(),
        admin: false,
    };
    let out = w
        .domain
        .handle(&laptop, w.now(), Body::Sync(pb::SyncRequest::default()));
    let Some(Body::SyncResult(r)) = out.reply else {
        panic!()
    };
    assert_eq!(texts(&r.entries), ["from phone"]);
    assert_eq!(r.entries, w.sync_all("bob"));
}

pub fn unread_counts_messages_of_others_after_the_cursor(f: Fixture) {
    // Proves unread = messages after the read cursor not sent by the user:
    // own messages, read marks and recalled messages do not count; reading
    // resets it; it is capped at unread_count_max.
    let w = World::new(f);
    w.send_dm("alice", "bob", "1");
    w.send_dm("alice", "bob", "2");
    w.send_dm("bob", "alice", "mine");
    let third = w.send_dm("alice", "bob", "3");
    assert_eq!(w.summary("bob", AB).unread, 3);
    assert_eq!(w.summary("alice", AB).unread, 1);
    w.read("bob", AB, 2);
    let s = w.summary("bob", AB);
    assert_eq!((s.unread, s.read_seq), (1, 2));
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: third.seq,
        }),
    );
    assert_eq!(
        w.summary("bob", AB).unread,
        0,
        "a recalled message is not unread"
    );
    // The peer's read mark is an entry, but not an unread message.
    w.read("alice", AB, 3);
    assert_eq!(w.summary("bob", AB).unread, 0);
    let w2 = World::with_config(
        Fixture::new(w.store().clone(), ()),
        Config {
            unread_count_max: 2,
            ..Config::default()
        },
    );
    for i in 0..5 {
        w2.send_dm("carol", "bob", &format!("c{i}"));
    }
    assert_eq!(w2.summary("bob", "d:bob:carol").unread, 2, "capped");
}

pub fn conversation_list_orders_by_activity(f: Fixture) {
    // Proves the conversation list is ordered by last activity (newest
    // first), carries the last entry, peer, unread and read cursor, and
    // pages with offset/limit.
    let w = World::new(f);
    w.send_dm("carol", "bob", "c1");
    w.create_group("alice", "team", &["bob"]);
    w.send_dm("alice", "bob", "a1");
    w.send_group("alice", "team", "g1");
    let list = w.conversations("bob");
    let ids: Vec<&str> = list.iter().map(|c| c.conversation_id.as_str()).collect();
    assert_eq!(ids, [G, AB, "d:bob:carol"]);
    assert_eq!(list[0].peer, "team");
    assert_eq!(list[1].peer, "alice");
    assert_eq!(text_of(list[0].last.as_ref().unwrap()), Some("g1"));
    assert_eq!(list[1].unread, 1);
    assert!(list[0].last_activity_ms > list[1].last_activity_ms);
    w.send_dm("carol", "bob", "c2");
    assert_eq!(w.conversations("bob")[0].conversation_id, "d:bob:carol");
    // A read mark is not activity: the order stays.
    w.read("bob", AB, 1);
    assert_eq!(w.conversations("bob")[0].conversation_id, "d:bob:carol");
    let out = w.ok(
        "bob",
        Body::Conversations(pb::ConversationListRequest {
            limit: 2,
            offset: 1,
        }),
    );
    let Some(Body::ConversationsResult(r)) = out.reply else {
        panic!()
    };
    assert_eq!(r.conversations.len(), 2);
    assert!(!r.more);
    let out = w.ok(
        "bob",
        Body::Conversations(pb::ConversationListRequest {
            limit: 1,
            offset: 0,
        }),
    );
    let Some(Body::ConversationsResult(r)) = out.reply else {
        panic!()
    };
    assert!(r.more);
}

// ---------------------------------------------------------------------------
// Receipts, recall, mentions
// ---------------------------------------------------------------------------

pub fn read_receipt_moves_cursor_and_reaches_the_peer(f: Fixture) {
    // Proves a read moves the reader's cursor, is an entry in the log
    // delivered to both users, only moves forward, and that read_by shows
    // whether the peer read a message.
    let w = World::new(f);
    let s1 = w.send_dm("alice", "bob", "one").seq;
    let s2 = w.send_dm("alice", "bob", "two").seq;
    let out = w.read("bob", AB, s1);
    let seq = ok_seq(&out);
    let d = deliveries(&out.effects);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert!(
        matches!(d[0].0.body, Some(pb::entry::Body::Read(pb::ReadMark { up_to_seq })) if up_to_seq == s1)
    );
    assert_eq!(w.history("alice", AB).last().unwrap().seq, seq);
    assert_eq!(ok_seq(&w.read("bob", AB, s1)), 0, "no move, no entry");
    let out = w.ok(
        "alice",
        Body::ReadBy(pb::ReadByQuery {
            conversation_id: AB.into(),
            seqs: vec![s1, s2],
        }),
    );
    let Some(Body::ReadByResult(r)) = out.reply else {
        panic!()
    };
    let counts: Vec<(u64, u32, u32)> = r
        .items
        .iter()
        .map(|i| (i.seq, i.read_count, i.member_count))
        .collect();
    assert_eq!(counts, vec![(s1, 1, 1), (s2, 0, 1)]);
    assert_eq!(
        w.err(
            "bob",
            Body::Read(pb::ReadRequest {
                conversation_id: AB.into(),
                up_to_seq: 99
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn read_by_counts_group_readers(f: Fixture) {
    // Proves read-by counts in a group: members other than the sender whose
    // cursor reached the seq, out of all members other than the sender.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol", "dave"]);
    let s = w.send_group("alice", "team", "hello").seq;
    w.read("bob", G, s);
    w.read("carol", G, s);
    let out = w.ok(
        "dave",
        Body::ReadBy(pb::ReadByQuery {
            conversation_id: G.into(),
            seqs: vec![s],
        }),
    );
    let Some(Body::ReadByResult(r)) = out.reply else {
        panic!()
    };
    assert_eq!((r.items[0].read_count, r.items[0].member_count), (2, 3));
    assert_eq!(
        w.err(
            "eve",
            Body::ReadBy(pb::ReadByQuery {
                conversation_id: G.into(),
                seqs: vec![s]
            })
        ),
        pb::ErrorCode::NotMember
    );
}

pub fn recall_own_message_within_window(f: Fixture) {
    // Proves a sender recalls within the window: a `recalled` entry joins
    // the log and is delivered, the original is served with recalled = true
    // and no content, and recalling it again changes nothing.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "oops").seq;
    w.advance(119_000);
    let out = w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: s,
        }),
    );
    let tomb = ok_seq(&out);
    let d = deliveries(&out.effects);
    assert!(
        matches!(d[0].0.body, Some(pb::entry::Body::Recalled(pb::Recalled { seq })) if seq == s)
    );
    for user in ["alice", "bob"] {
        let h = w.history(user, AB);
        let Some(pb::entry::Body::Message(m)) = &h[0].body else {
            panic!()
        };
        assert!(m.recalled);
        assert_eq!(m.content, None, "content is not served after a recall");
        assert_eq!(h[1].seq, tomb);
    }
    let synced = w.sync_all("bob");
    assert!(texts(&synced).is_empty());
    assert_eq!(
        ok_seq(&w.ok(
            "alice",
            Body::Recall(pb::RecallRequest {
                conversation_id: AB.into(),
                seq: s
            })
        )),
        0
    );
    assert_eq!(
        w.err(
            "alice",
            Body::Recall(pb::RecallRequest {
                conversation_id: AB.into(),
                seq: tomb
            })
        ),
        pb::ErrorCode::NotFound
    );
}

pub fn recall_after_window_is_refused(f: Fixture) {
    // Proves the recall window: past recall_window_ms the sender gets
    // RECALL_WINDOW_PASSED and the message stays.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "said").seq;
    w.advance(w.domain.config().recall_window_ms + 1);
    assert_eq!(
        w.err(
            "alice",
            Body::Recall(pb::RecallRequest {
                conversation_id: AB.into(),
                seq: s
            })
        ),
        pb::ErrorCode::RecallWindowPassed
    );
    assert_eq!(texts(&w.history("bob", AB)), ["said"]);
}

pub fn recall_of_someone_elses_message_is_refused(f: Fixture) {
    // Proves nobody recalls another's message in a 1:1 chat, members cannot
    // in a group, and an admin cannot recall the owner's.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "mine").seq;
    let denied = pb::ErrorCode::PermissionDenied;
    assert_eq!(
        w.err(
            "bob",
            Body::Recall(pb::RecallRequest {
                conversation_id: AB.into(),
                seq: s
            })
        ),
        denied
    );
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let by_bob = w.send_group("bob", "team", "bob's").seq;
    let by_owner = w.send_group("alice", "team", "owner's").seq;
    let recall = |seq| {
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq,
        })
    };
    assert_eq!(w.err("dave", recall(by_bob)), pb::ErrorCode::NotMember);
    w.ok(
        "alice",
        Body::GroupInvite(pb::GroupInvite {
            group_id: "team".into(),
            user_ids: strings(&["dave"]),
        }),
    );
    assert_eq!(w.err("dave", recall(by_bob)), denied);
    assert_eq!(w.err("carol", recall(by_owner)), denied);
    assert_eq!(texts(&w.history("bob", G)), ["bob's", "owner's"]);
}

pub fn admins_recall_members_messages_any_time(f: Fixture) {
    // Proves group admins and the owner recall members' messages after the
    // window has passed.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let s1 = w.send_group("bob", "team", "one").seq;
    let s2 = w.send_group("bob", "team", "two").seq;
    w.advance(10 * w.domain.config().recall_window_ms);
    w.ok(
        "carol",
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq: s1,
        }),
    );
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq: s2,
        }),
    );
    assert!(texts(&w.history("bob", G)).is_empty());
}

pub fn mentions_flag_the_mentioned(f: Fixture) {
    // Proves @user sets `mentioned` in that user's conversation entry only,
    // @all (by an admin) sets it for everyone, reading clears it, and a
    // plain member may not @all.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let mut m = send_body("mm1", To::Group("team"), "hey bob");
    if let Body::Send(s) = &mut m {
        s.mentions = strings(&["bob"]);
    }
    w.ok("carol", m);
    assert!(w.summary("bob", G).mentioned);
    assert!(!w.summary("alice", G).mentioned);
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    w.read("bob", G, head);
    assert!(!w.summary("bob", G).mentioned);
    let mut all = send_body("mm2", To::Group("team"), "everyone");
    if let Body::Send(s) = &mut all {
        s.mention_all = true;
    }
    assert_eq!(w.err("carol", all.clone()), pb::ErrorCode::PermissionDenied);
    w.ok("alice", all);
    assert!(w.summary("bob", G).mentioned);
    assert!(w.summary("carol", G).mentioned);
    assert!(!w.summary("alice", G).mentioned, "not by your own message");
}

pub fn recall_takes_the_mentions_back(f: Fixture) {
    // Proves a recalled message mentions nobody any more: its stored copy
    // (history, sync) loses `mentions` and `mention_all` in the store's
    // recall rewrite, and the mentioned users' conversation entries stop
    // saying `mentioned` (nor count it unread), while an earlier live
    // mention still counts.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let mut named = send_body("rm1", To::Group("team"), "@bob look");
    if let Body::Send(s) = &mut named {
        s.mentions = strings(&["bob"]);
    }
    let first = ack(&w.ok("alice", named)).seq;
    let mut all = send_body("rm2", To::Group("team"), "@all oops");
    if let Body::Send(s) = &mut all {
        s.mentions = strings(&["carol"]);
        s.mention_all = true;
    }
    let second = ack(&w.ok("alice", all)).seq;
    assert!(w.summary("bob", G).mentioned && w.summary("carol", G).mentioned);
    let recall = |seq| {
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq,
        })
    };
    w.ok("alice", recall(second));
    let carol = w.summary("carol", G);
    assert!(
        !carol.mentioned,
        "carol was mentioned only by the recalled one"
    );
    assert_eq!(carol.unread, 1);
    assert!(w.summary("bob", G).mentioned, "bob's own mention stands");
    w.ok("alice", recall(first));
    assert!(!w.summary("bob", G).mentioned);
    assert_eq!(w.summary("bob", G).unread, 0);
    for entries in [w.history("carol", G), w.sync_all("carol")] {
        for seq in [first, second] {
            let e = entries.iter().find(|e| e.seq == seq).expect("entry kept");
            let Some(pb::entry::Body::Message(m)) = &e.body else {
                panic!("{e:?}")
            };
            assert!(m.recalled);
            assert!(m.mentions.is_empty(), "seq {seq} kept {:?}", m.mentions);
            assert!(!m.mention_all, "seq {seq} kept mention_all");
        }
    }
}

// ---------------------------------------------------------------------------
// Friends
// ---------------------------------------------------------------------------

pub fn friend_request_accept_list_delete(f: Fixture) {
    // Proves the friend flow: a request with a message reaches the
    // addressee (event, pending lists), accepting makes both friends (events
    // to both, both lists), deleting removes both directions.
    let w = World::new(f);
    let out = w.ok(
        "alice",
        Body::FriendRequest(pb::FriendRequestSend {
            user_id: "bob".into(),
            message: "hi, it's alice".into(),
        }),
    );
    let ev = events(&out.effects);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0, "bob");
    assert!(
        matches!(&ev[0].1, pb::server_event::Kind::FriendRequested(r) if r.message == "hi, it's alice" && r.from_user_id == "alice")
    );
    let lists = |u: &str| {
        let Some(Body::FriendRequestListResult(r)) = w
            .ok(u, Body::FriendRequests(pb::FriendRequestListRequest {}))
            .reply
        else {
            panic!()
        };
        (r.incoming.len(), r.outgoing.len())
    };
    assert_eq!(lists("bob"), (1, 0));
    assert_eq!(lists("alice"), (0, 1));
    assert_eq!(
        w.err(
            "alice",
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: "bob".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::AlreadyExists
    );
    let out = w.ok(
        "bob",
        Body::FriendAccept(pb::FriendAccept {
            user_id: "alice".into(),
        }),
    );
    let mut ev: Vec<String> = events(&out.effects).into_iter().map(|(u, _)| u).collect();
    ev.sort();
    assert_eq!(ev, strings(&["alice", "bob"]));
    assert_eq!(lists("bob"), (0, 0));
    let friends = |u: &str| {
        let Some(Body::FriendListResult(r)) =
            w.ok(u, Body::FriendList(pb::FriendListRequest {})).reply
        else {
            panic!()
        };
        r.friends
            .into_iter()
            .map(|f| f.profile.unwrap().user_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(friends("alice"), strings(&["bob"]));
    assert_eq!(friends("bob"), strings(&["alice"]));
    assert_eq!(
        w.err(
            "alice",
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: "bob".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::AlreadyExists
    );
    w.ok(
        "bob",
        Body::FriendDelete(pb::FriendDelete {
            user_id: "alice".into(),
        }),
    );
    assert!(friends("alice").is_empty());
    assert!(friends("bob").is_empty());
    assert_eq!(
        w.err(
            "bob",
            Body::FriendDelete(pb::FriendDelete {
                user_id: "alice".into()
            })
        ),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err(
            "bob",
            Body::FriendAccept(pb::FriendAccept {
                user_id: "alice".into()
            })
        ),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err(
            "bob",
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: "bob".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn friend_reject_and_mutual_request(f: Fixture) {
    // Proves rejecting removes the request without a friendship, and that
    // two users asking each other become friends.
    let w = World::new(f);
    w.ok(
        "alice",
        Body::FriendRequest(pb::FriendRequestSend {
            user_id: "bob".into(),
            message: String::new(),
        }),
    );
    w.ok(
        "bob",
        Body::FriendReject(pb::FriendReject {
            user_id: "alice".into(),
        }),
    );
    assert_eq!(
        w.err(
            "bob",
            Body::FriendReject(pb::FriendReject {
                user_id: "alice".into()
            })
        ),
        pb::ErrorCode::NotFound
    );
    assert!(w.store().friend("alice", "bob").unwrap().is_none());
    w.ok(
        "alice",
        Body::FriendRequest(pb::FriendRequestSend {
            user_id: "bob".into(),
            message: String::new(),
        }),
    );
    w.ok(
        "bob",
        Body::FriendRequest(pb::FriendRequestSend {
            user_id: "alice".into(),
            message: String::new(),
        }),
    );
    assert!(w.store().friend("alice", "bob").unwrap().is_some());
    assert!(w.store().friend("bob", "alice").unwrap().is_some());
}

pub fn profile_and_remark(f: Fixture) {
    // Proves profile updates keep unset fields, profile info shows the
    // caller's remark and friendship, and only friends get a remark.
    let w = World::new(f);
    w.ok(
        "bob",
        Body::ProfileUpdate(pb::ProfileUpdate {
            nickname: Some("Bobby".into()),
            avatar: Some("https://a/b.png".into()),
            bio: None,
        }),
    );
    w.ok(
        "bob",
        Body::ProfileUpdate(pb::ProfileUpdate {
            nickname: None,
            avatar: None,
            bio: Some("hello".into()),
        }),
    );
    assert_eq!(
        w.err(
            "alice",
            Body::FriendRemark(pb::FriendRemark {
                user_id: "bob".into(),
                remark: "B".into()
            })
        ),
        pb::ErrorCode::NotFound
    );
    w.befriend("alice", "bob");
    w.ok(
        "alice",
        Body::FriendRemark(pb::FriendRemark {
            user_id: "bob".into(),
            remark: "my Bob".into(),
        }),
    );
    let Some(Body::ProfileResult(p)) = w
        .ok(
            "alice",
            Body::Profile(pb::ProfileRequest {
                user_id: "bob".into(),
            }),
        )
        .reply
    else {
        panic!()
    };
    let prof = p.profile.unwrap();
    assert_eq!(
        (
            prof.nickname.as_str(),
            prof.avatar.as_str(),
            prof.bio.as_str()
        ),
        ("Bobby", "https://a/b.png", "hello")
    );
    assert_eq!(
        (p.remark.as_str(), p.is_friend, p.blocked),
        ("my Bob", true, false)
    );
    let Some(Body::ProfileResult(p)) = w
        .ok(
            "carol",
            Body::Profile(pb::ProfileRequest {
                user_id: "bob".into(),
            }),
        )
        .reply
    else {
        panic!()
    };
    assert_eq!((p.remark.as_str(), p.is_friend), ("", false));
    let Some(Body::ProfileResult(p)) = w
        .ok(
            "carol",
            Body::Profile(pb::ProfileRequest {
                user_id: "nobody".into(),
            }),
        )
        .reply
    else {
        panic!()
    };
    assert_eq!(p.profile.unwrap().user_id, "nobody");
    let Some(Body::FriendListResult(r)) = w
        .ok("alice", Body::FriendList(pb::FriendListRequest {}))
        .reply
    else {
        panic!()
    };
    assert_eq!(r.friends[0].remark, "my Bob");
    assert_eq!(r.friends[0].profile.as_ref().unwrap().nickname, "Bobby");
    let long = "x".repeat(5000);
    assert_eq!(
        w.err(
            "bob",
            Body::ProfileUpdate(pb::ProfileUpdate {
                nickname: Some(long),
                avatar: None,
                bio: None
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn blocked_users_cannot_message(f: Fixture) {
    // Proves a block stops messages both ways (BLOCKED), friend requests
    // and typing from the blocked user, shows in the blocker's lists, and
    // that unblocking restores messaging.
    let w = World::new(f);
    w.send_dm("bob", "alice", "before");
    w.ok(
        "alice",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "bob".into(),
            blocked: true,
        }),
    );
    assert_eq!(
        w.err("bob", send_body("b1", To::User("alice"), "hey")),
        pb::ErrorCode::Blocked
    );
    assert_eq!(
        w.err("alice", send_body("b2", To::User("bob"), "hey")),
        pb::ErrorCode::Blocked
    );
    assert_eq!(
        w.err(
            "bob",
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: "alice".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::Blocked
    );
    assert_eq!(
        w.err(
            "bob",
            Body::Typing(pb::TypingRequest {
                conversation_id: AB.into(),
                typing: true
            })
        ),
        pb::ErrorCode::Blocked
    );
    let Some(Body::FriendListResult(r)) = w
        .ok("alice", Body::FriendList(pb::FriendListRequest {}))
        .reply
    else {
        panic!()
    };
    assert_eq!(r.blocked, strings(&["bob"]));
    let Some(Body::ProfileResult(p)) = w
        .ok(
            "alice",
            Body::Profile(pb::ProfileRequest {
                user_id: "bob".into(),
            }),
        )
        .reply
    else {
        panic!()
    };
    assert!(p.blocked);
    w.ok(
        "alice",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "bob".into(),
            blocked: false,
        }),
    );
    w.send_dm("bob", "alice", "after");
    assert_eq!(texts(&w.history("alice", AB)), ["before", "after"]);
}

pub fn friends_only_policy(f: Fixture) {
    // Proves the policy switch: by default strangers may message; with
    // allow_non_friend_messages = false they get NOT_FRIENDS and friends
    // still may.
    let w = World::new(f);
    w.send_dm("alice", "bob", "allowed by default");
    let strict = World::with_config(
        Fixture::new(w.store().clone(), ()),
        Config {
            allow_non_friend_messages: false,
            ..Config::default()
        },
    );
    assert_eq!(
        strict.err("carol", send_body("n1", To::User("dave"), "hi")),
        pb::ErrorCode::NotFriends
    );
    strict.befriend("carol", "dave");
    strict.send_dm("carol", "dave", "hi friend");
}

pub fn send_batch_friends_only_refuses_only_strangers(f: Fixture) {
    // Proves the batched friends-only check: under
    // allow_non_friend_messages = false, one batch stores the sends between
    // friends and refuses those to strangers with NOT_FRIENDS; a block
    // still wins over a friendship (BLOCKED); and a friendship made in the
    // middle of the batch lets the sends after it through.
    let w = World::with_config(
        f,
        Config {
            allow_non_friend_messages: false,
            ..Config::default()
        },
    );
    w.befriend("alice", "bob");
    w.befriend("carol", "erin");
    w.ok(
        "erin",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "carol".into(),
            blocked: true,
        }),
    );
    w.ok(
        "carol",
        Body::FriendRequest(pb::FriendRequestSend {
            user_id: "dave".into(),
            message: String::new(),
        }),
    );
    let req = |u: &str, body: Body| Request {
        caller: World::caller(u),
        body,
    };
    let reqs = vec![
        req("alice", send_body("f1", To::User("bob"), "one")),
        req("alice", send_body("f2", To::User("dave"), "stranger")),
        req("carol", send_body("f3", To::User("erin"), "blocked friend")),
        req("bob", send_body("f4", To::User("alice"), "two")),
        req("dave", send_body("f5", To::User("carol"), "too early")),
        req(
            "dave",
            Body::FriendAccept(pb::FriendAccept {
                user_id: "carol".into(),
            }),
        ),
        req("dave", send_body("f6", To::User("carol"), "now friends")),
    ];
    let out = w.domain.handle_batch(w.now(), reqs);
    let code = |o: &Outcome| match &o.reply {
        Some(Body::Error(e)) if o.effects.is_empty() => Some(e.code()),
        _ => None,
    };
    assert_eq!(ack(&out[0]).seq, 1);
    assert_eq!(code(&out[1]), Some(pb::ErrorCode::NotFriends));
    assert_eq!(code(&out[2]), Some(pb::ErrorCode::Blocked));
    assert_eq!(ack(&out[3]).seq, 2);
    assert_eq!(code(&out[4]), Some(pb::ErrorCode::NotFriends));
    assert_eq!(code(&out[5]), None, "{:?}", out[5]);
    assert_eq!(ack(&out[6]).seq, 1);
    assert_eq!(texts(&w.history("alice", AB)), ["one", "two"]);
    assert_eq!(w.history("alice", "d:alice:dave"), vec![]);
    assert_eq!(w.history("carol", "d:carol:erin"), vec![]);
    assert_eq!(texts(&w.history("carol", "d:carol:dave")), ["now friends"]);
}

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

fn role_body(gid: &str, user: &str, role: pb::GroupRole) -> Body {
    Body::GroupSetRole(pb::GroupSetRole {
        group_id: gid.into(),
        user_id: user.into(),
        role: role as i32,
    })
}

fn kick_body(gid: &str, user: &str) -> Body {
    Body::GroupKick(pb::GroupKick {
        group_id: gid.into(),
        user_id: user.into(),
    })
}

pub fn group_create_info_and_members(f: Fixture) {
    // Proves group creation: the creator owns it, initial members join, the
    // log starts with `created` and `joined`, everyone gets a group_joined
    // event and the entries; info and a paged member list with roles and
    // nicknames follow; a taken id is refused; an empty id is generated.
    let w = World::new(f);
    let out = w.ok(
        "alice",
        Body::GroupCreate(pb::GroupCreate {
            group_id: "team".into(),
            name: "The Team".into(),
            members: strings(&["bob", "carol", "bob", "alice"]),
            join_policy: pb::JoinPolicy::Approval as i32,
            history_visible: true,
        }),
    );
    let Some(Body::GroupInfoResult(r)) = &out.reply else {
        panic!()
    };
    let info = r.info.clone().unwrap();
    assert_eq!(
        (info.name.as_str(), info.owner.as_str(), info.member_count),
        ("The Team", "alice", 3)
    );
    assert_eq!(info.conversation_id, G);
    assert_eq!(r.me.as_ref().unwrap().role, pb::GroupRole::Owner as i32);
    let mut joined: Vec<String> = events(&out.effects).into_iter().map(|(u, _)| u).collect();
    joined.sort();
    assert_eq!(joined, strings(&["alice", "bob", "carol"]));
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 2);
    assert!(
        matches!(group_event(&d[0].0), Some(pb::group_event::Kind::Created(c)) if c.owner == "alice")
    );
    assert!(
        matches!(group_event(&d[1].0), Some(pb::group_event::Kind::Joined(m)) if m.user_ids == strings(&["bob", "carol"]))
    );
    let gi = w.group_info("bob", "team");
    assert_eq!(
        gi.info.unwrap().join_policy,
        pb::JoinPolicy::Approval as i32
    );
    assert_eq!(gi.me.unwrap().role, pb::GroupRole::Member as i32);
    let page = |after: &str, limit| {
        let Some(Body::GroupMembersResult(r)) = w
            .ok(
                "bob",
                Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: "team".into(),
                    after_user_id: after.into(),
                    limit,
                }),
            )
            .reply
        else {
            panic!()
        };
        (
            r.members
                .into_iter()
                .map(|m| (m.user_id, m.role))
                .collect::<Vec<_>>(),
            r.more,
        )
    };
    let (p1, more) = page("", 2);
    assert_eq!(p1, vec![("alice".to_string(), 3), ("bob".to_string(), 1)]);
    assert!(more);
    let (p2, more) = page("bob", 2);
    assert_eq!(p2, vec![("carol".to_string(), 1)]);
    assert!(!more);
    assert_eq!(
        w.err(
            "bob",
            Body::GroupCreate(pb::GroupCreate {
                group_id: "team".into(),
                ..Default::default()
            })
        ),
        pb::ErrorCode::AlreadyExists
    );
    let generated = w.create_group("bob", "", &[]);
    assert!(!generated.group_id.is_empty());
    assert_eq!(
        w.group_info("bob", &generated.group_id).info.unwrap().owner,
        "bob"
    );
    let Some(Body::GroupListResult(l)) =
        w.ok("bob", Body::GroupList(pb::GroupListRequest {})).reply
    else {
        panic!()
    };
    let mut ids: Vec<String> = l.groups.into_iter().map(|g| g.group_id).collect();
    ids.sort();
    let mut want = vec![generated.group_id.clone(), "team".to_string()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        w.err(
            "bob",
            Body::GroupInfo(pb::GroupInfoRequest {
                group_id: "nope".into()
            })
        ),
        pb::ErrorCode::NotFound
    );
}

pub fn group_send_reaches_every_member(f: Fixture) {
    // Proves a group message is delivered to every member (sender included,
    // for their other devices) and is in every member's sync.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let out = w.ok("bob", send_body("g1", To::Group("team"), "hi all"));
    let d = deliveries(&out.effects);
    assert_eq!(d[0].1, strings(&["alice", "bob", "carol"]));
    assert_eq!(ack(&out).seq, 3, "after created and joined");
    for u in ["alice", "bob", "carol"] {
        assert_eq!(texts(&w.sync_all(u)), ["hi all"]);
    }
}

pub fn group_join_follows_the_policy(f: Fixture) {
    // Proves joining: open groups let anyone in (joined entry, event), an
    // approval group files a request the admins see and decide on, an
    // invite-only group refuses joins.
    let w = World::new(f);
    w.create_group_with("alice", "open", &[], pb::JoinPolicy::Open, false);
    let out = w.ok(
        "bob",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "open".into(),
            message: String::new(),
        }),
    );
    assert!(ok_seq(&out) > 0);
    assert_eq!(
        events(&out.effects)[0],
        (
            "bob".to_string(),
            pb::server_event::Kind::GroupJoined("open".into())
        )
    );
    assert_eq!(
        w.err(
            "bob",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "open".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::AlreadyExists
    );
    w.create_group_with("alice", "club", &["carol"], pb::JoinPolicy::Approval, false);
    w.ok("alice", role_body("club", "carol", pb::GroupRole::Admin));
    let out = w.ok(
        "dave",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "club".into(),
            message: "let me in".into(),
        }),
    );
    let mut told: Vec<String> = events(&out.effects).into_iter().map(|(u, _)| u).collect();
    told.sort();
    assert_eq!(
        told,
        strings(&["alice", "carol"]),
        "the owner and admins are asked"
    );
    assert!(w.store().group_member("club", "dave").unwrap().is_none());
    assert_eq!(
        w.err(
            "dave",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "club".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::AlreadyExists
    );
    let decide = |u: &str, approve| {
        Body::GroupJoinDecision(pb::GroupJoinDecision {
            group_id: "club".into(),
            user_id: u.into(),
            approve,
        })
    };
    w.ok(
        "erin",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "club".into(),
            message: String::new(),
        }),
    );
    assert_eq!(
        w.err("erin", decide("dave", true)),
        pb::ErrorCode::NotMember
    );
    w.ok("carol", decide("dave", true));
    assert!(w.store().group_member("club", "dave").unwrap().is_some());
    w.ok("alice", decide("erin", false));
    assert!(w.store().group_member("club", "erin").unwrap().is_none());
    assert_eq!(
        w.err("alice", decide("erin", true)),
        pb::ErrorCode::NotFound
    );
    w.create_group_with("alice", "vip", &[], pb::JoinPolicy::InviteOnly, false);
    assert_eq!(
        w.err(
            "bob",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "vip".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.err(
            "bob",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "nope".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::NotFound
    );
}

pub fn group_invite_rules(f: Fixture) {
    // Proves inviting: admins invite anywhere, members only into open
    // groups, non-members never; existing members are skipped; the group
    // size limit holds.
    let w = World::with_config(
        f,
        Config {
            group_members_max: 4,
            ..Config::default()
        },
    );
    w.create_group_with("alice", "vip", &["bob"], pb::JoinPolicy::InviteOnly, false);
    let invite = |g: &str, users: &[&str]| {
        Body::GroupInvite(pb::GroupInvite {
            group_id: g.into(),
            user_ids: strings(users),
        })
    };
    assert_eq!(
        w.err("bob", invite("vip", &["carol"])),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.err("zed", invite("vip", &["carol"])),
        pb::ErrorCode::NotMember
    );
    let out = w.ok("alice", invite("vip", &["carol", "bob"]));
    let d = deliveries(&out.effects);
    assert!(
        matches!(group_event(&d[0].0), Some(pb::group_event::Kind::Joined(m)) if m.user_ids == strings(&["carol"]))
    );
    assert_eq!(
        w.err("alice", invite("vip", &["bob"])),
        pb::ErrorCode::AlreadyExists
    );
    assert_eq!(
        w.err("alice", invite("vip", &["d1", "d2"])),
        pb::ErrorCode::LimitReached
    );
    w.create_group_with("alice", "open", &["bob"], pb::JoinPolicy::Open, false);
    w.ok("bob", invite("open", &["carol"]));
    assert_eq!(w.group_info("carol", "open").info.unwrap().member_count, 3);
    assert_eq!(
        w.err("alice", invite("open", &[])),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn group_kick_rules(f: Fixture) {
    // Proves kicking: only admins and the owner kick (non-admin kick is
    // PERMISSION_DENIED), nobody kicks the owner, admins do not kick admins,
    // the owner kicks admins; the kicked user gets the entry and an event.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol", "dave"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    w.ok("alice", role_body("team", "dave", pb::GroupRole::Admin));
    let denied = pb::ErrorCode::PermissionDenied;
    assert_eq!(
        w.err("bob", kick_body("team", "carol")),
        denied,
        "member kicks"
    );
    assert_eq!(
        w.err("carol", kick_body("team", "alice")),
        denied,
        "kick the owner"
    );
    assert_eq!(
        w.err("carol", kick_body("team", "dave")),
        denied,
        "admin kicks admin"
    );
    assert_eq!(
        w.err("carol", kick_body("team", "zed")),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err("zed", kick_body("team", "bob")),
        pb::ErrorCode::NotMember
    );
    assert_eq!(
        w.err("alice", kick_body("team", "alice")),
        pb::ErrorCode::InvalidArgument
    );
    let out = w.ok("carol", kick_body("team", "bob"));
    let d = deliveries(&out.effects);
    assert!(
        d[0].1.contains(&"bob".to_string()),
        "the kicked user learns it"
    );
    assert!(
        matches!(group_event(&d[0].0), Some(pb::group_event::Kind::Kicked(m)) if m.user_ids == strings(&["bob"]))
    );
    assert_eq!(
        events(&out.effects),
        vec![(
            "bob".to_string(),
            pb::server_event::Kind::GroupLeft("team".into())
        )]
    );
    w.ok("alice", kick_body("team", "dave"));
    assert_eq!(w.group_info("alice", "team").info.unwrap().member_count, 2);
}

pub fn group_leave_rules(f: Fixture) {
    // Proves a member leaves (left entry, event) and the owner cannot leave
    // without handing over ownership.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let out = w.ok(
        "bob",
        Body::GroupLeave(pb::GroupLeave {
            group_id: "team".into(),
        }),
    );
    assert!(matches!(
        group_event(&deliveries(&out.effects)[0].0),
        Some(pb::group_event::Kind::Left(_))
    ));
    assert_eq!(
        w.err(
            "bob",
            Body::GroupLeave(pb::GroupLeave {
                group_id: "team".into()
            })
        ),
        pb::ErrorCode::NotMember
    );
    assert_eq!(
        w.err(
            "alice",
            Body::GroupLeave(pb::GroupLeave {
                group_id: "team".into()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn departed_members_cannot_read_after_leaving(f: Fixture) {
    // Proves a kicked (or departed) member keeps what they saw up to and
    // including their removal, and reads nothing after: not in history, not
    // in sync, not as a push; they cannot send; the group leaves their list.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.send_group("alice", "team", "before");
    let kick_seq = ok_seq(&w.ok("alice", kick_body("team", "bob")));
    let out = w.ok("alice", send_body("after1", To::Group("team"), "after"));
    assert!(!deliveries(&out.effects)[0].1.contains(&"bob".to_string()));
    w.ok(
        "carol",
        Body::GroupLeave(pb::GroupLeave {
            group_id: "team".into(),
        }),
    );
    w.send_group("alice", "team", "after carol");
    let h = w.history("bob", G);
    assert_eq!(texts(&h), ["before"]);
    assert_eq!(h.last().unwrap().seq, kick_seq);
    let s = w.sync_all("bob");
    assert_eq!(texts(&s), ["before"]);
    assert_eq!(texts(&w.history("carol", G)), ["before", "after"]);
    assert_eq!(
        w.err("bob", send_body("x", To::Group("team"), "let me")),
        pb::ErrorCode::NotMember
    );
    assert_eq!(
        w.err(
            "bob",
            Body::Read(pb::ReadRequest {
                conversation_id: G.into(),
                up_to_seq: 1
            })
        ),
        pb::ErrorCode::NotMember
    );
    let Some(Body::GroupListResult(l)) =
        w.ok("bob", Body::GroupList(pb::GroupListRequest {})).reply
    else {
        panic!()
    };
    assert!(l.groups.is_empty());
    assert_eq!(
        w.err(
            "bob",
            Body::GroupMembers(pb::GroupMembersRequest {
                group_id: "team".into(),
                ..Default::default()
            })
        ),
        pb::ErrorCode::NotMember
    );
}

pub fn new_members_see_history_only_if_allowed(f: Fixture) {
    // Proves a member who joins later sees the log from their join on,
    // unless the group shows history; rejoining after a kick starts again.
    let w = World::new(f);
    w.create_group_with("alice", "closed", &[], pb::JoinPolicy::Open, false);
    w.send_group("alice", "closed", "old");
    w.ok(
        "bob",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "closed".into(),
            message: String::new(),
        }),
    );
    w.send_group("alice", "closed", "new");
    assert_eq!(texts(&w.history("bob", "g:closed")), ["new"]);
    assert_eq!(texts(&w.sync_all("bob")), ["new"]);
    assert_eq!(
        w.summary("bob", "g:closed").unread,
        1,
        "history before joining is not unread"
    );
    w.create_group_with("alice", "public", &[], pb::JoinPolicy::Open, true);
    w.send_group("alice", "public", "old");
    w.ok(
        "bob",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "public".into(),
            message: String::new(),
        }),
    );
    assert_eq!(texts(&w.history("bob", "g:public")), ["old"]);
    w.ok("alice", kick_body("closed", "bob"));
    w.send_group("alice", "closed", "while away");
    w.ok(
        "bob",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "closed".into(),
            message: String::new(),
        }),
    );
    w.send_group("alice", "closed", "back");
    assert_eq!(texts(&w.history("bob", "g:closed")), ["back"]);
}

pub fn non_members_cannot_read_or_write(f: Fixture) {
    // Proves a user who never was a member cannot read a group's history,
    // members, or read-by, cannot send, read, recall or type there, and gets
    // nothing of it in sync; nor can a third user read a 1:1 chat.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    w.send_group("alice", "team", "secret");
    w.send_dm("alice", "bob", "private");
    let nm = pb::ErrorCode::NotMember;
    let hist = |c: &str| {
        Body::History(pb::HistoryRequest {
            conversation_id: c.into(),
            before_seq: 0,
            limit: 0,
            thread_root_seq: 0,
        })
    };
    assert_eq!(w.err("eve", hist(G)), nm);
    assert_eq!(w.err("eve", hist(AB)), nm);
    assert_eq!(w.err("eve", send_body("e1", To::Group("team"), "hi")), nm);
    assert_eq!(
        w.err(
            "eve",
            Body::Read(pb::ReadRequest {
                conversation_id: G.into(),
                up_to_seq: 1
            })
        ),
        nm
    );
    assert_eq!(
        w.err(
            "eve",
            Body::Recall(pb::RecallRequest {
                conversation_id: AB.into(),
                seq: 1
            })
        ),
        nm
    );
    assert_eq!(
        w.err(
            "eve",
            Body::Typing(pb::TypingRequest {
                conversation_id: G.into(),
                typing: true
            })
        ),
        nm
    );
    assert_eq!(
        w.err(
            "eve",
            Body::GroupMembers(pb::GroupMembersRequest {
                group_id: "team".into(),
                ..Default::default()
            })
        ),
        nm
    );
    assert!(w.sync_all("eve").is_empty());
    let stranger_cursor = pb::Cursor {
        conversation_id: G.into(),
        seq: 0,
    };
    assert!(w.sync("eve", &[stranger_cursor], 0).entries.is_empty());
}

pub fn group_dissolve_rules(f: Fixture) {
    // Proves only the owner dissolves; afterwards every action on the group
    // is GROUP_DISSOLVED, members get the entry and a group_left event, and
    // info still says it is dissolved.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let diss = Body::GroupDissolve(pb::GroupDissolve {
        group_id: "team".into(),
    });
    assert_eq!(w.err("bob", diss.clone()), pb::ErrorCode::PermissionDenied);
    assert_eq!(
        w.err("carol", diss.clone()),
        pb::ErrorCode::PermissionDenied
    );
    let out = w.ok("alice", diss.clone());
    let d = deliveries(&out.effects);
    assert_eq!(d[0].1, strings(&["alice", "bob", "carol"]));
    assert!(matches!(
        group_event(&d[0].0),
        Some(pb::group_event::Kind::Dissolved(true))
    ));
    assert_eq!(events(&out.effects).len(), 3);
    let gone = pb::ErrorCode::GroupDissolved;
    assert_eq!(w.err("alice", diss), gone);
    assert_eq!(
        w.err("bob", send_body("d1", To::Group("team"), "hello?")),
        gone
    );
    assert_eq!(w.err("alice", kick_body("team", "bob")), gone);
    assert_eq!(
        w.err(
            "alice",
            Body::GroupRename(pb::GroupRename {
                group_id: "team".into(),
                name: "x".into()
            })
        ),
        gone
    );
    assert_eq!(
        w.err(
            "dave",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "team".into(),
                message: String::new()
            })
        ),
        gone
    );
    assert_eq!(
        w.err(
            "alice",
            Body::GroupInvite(pb::GroupInvite {
                group_id: "team".into(),
                user_ids: strings(&["dave"])
            })
        ),
        gone
    );
    assert_eq!(
        w.err(
            "alice",
            Body::Read(pb::ReadRequest {
                conversation_id: G.into(),
                up_to_seq: 1
            })
        ),
        gone
    );
    assert!(w.group_info("bob", "team").info.unwrap().dissolved);
    let h = w.history("bob", G);
    assert!(matches!(
        group_event(h.last().unwrap()),
        Some(pb::group_event::Kind::Dissolved(true))
    ));
}

pub fn group_rename_announce_and_policy_are_admin_only(f: Fixture) {
    // Proves rename, announcement and policy changes need an admin or the
    // owner, update the info, and are entries in the log members sync.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let rename = Body::GroupRename(pb::GroupRename {
        group_id: "team".into(),
        name: "New".into(),
    });
    let announce = Body::GroupAnnounce(pb::GroupAnnounce {
        group_id: "team".into(),
        announcement: "Read me".into(),
    });
    let policy = Body::GroupSetPolicy(pb::GroupSetPolicy {
        group_id: "team".into(),
        join_policy: pb::JoinPolicy::InviteOnly as i32,
        history_visible: true,
    });
    for b in [&rename, &announce, &policy] {
        assert_eq!(w.err("bob", b.clone()), pb::ErrorCode::PermissionDenied);
    }
    w.ok("carol", rename);
    w.ok("alice", announce);
    w.ok("carol", policy);
    let info = w.group_info("bob", "team").info.unwrap();
    assert_eq!(
        (info.name.as_str(), info.announcement.as_str()),
        ("New", "Read me")
    );
    assert_eq!(
        (info.join_policy, info.history_visible),
        (pb::JoinPolicy::InviteOnly as i32, true)
    );
    let kinds: Vec<pb::group_event::Kind> = w
        .sync_all("bob")
        .iter()
        .filter_map(|e| group_event(e).cloned())
        .collect();
    assert!(kinds.contains(&pb::group_event::Kind::Renamed("New".into())));
    assert!(kinds.contains(&pb::group_event::Kind::Announcement("Read me".into())));
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, pb::group_event::Kind::PolicyChanged(_)))
    );
    assert_eq!(
        w.err(
            "alice",
            Body::GroupSetPolicy(pb::GroupSetPolicy {
                group_id: "team".into(),
                join_policy: 9,
                history_visible: false
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn group_nickname_and_remark(f: Fixture) {
    // Proves a member sets their group nickname (an entry others see, and in
    // the member list) and a private remark (in no log, shown only to them).
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let out = w.ok(
        "bob",
        Body::GroupSetNickname(pb::GroupSetNickname {
            group_id: "team".into(),
            nickname: "Bobster".into(),
        }),
    );
    assert!(
        matches!(group_event(&deliveries(&out.effects)[0].0), Some(pb::group_event::Kind::NicknameChanged(n)) if n.nickname == "Bobster")
    );
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    let out = w.ok(
        "bob",
        Body::GroupSetRemark(pb::GroupSetRemark {
            group_id: "team".into(),
            remark: "work stuff".into(),
        }),
    );
    assert!(out.effects.is_empty());
    assert_eq!(
        w.store().heads(&[G]).unwrap()[0].seq,
        head,
        "a remark is not in the log"
    );
    assert_eq!(w.group_info("bob", "team").me.unwrap().remark, "work stuff");
    let seen_by_alice = w.members("alice", "team");
    let bob = seen_by_alice.iter().find(|m| m.user_id == "bob").unwrap();
    assert_eq!(
        (bob.nickname.as_str(), bob.remark.as_str()),
        ("Bobster", "")
    );
    let seen_by_bob = w.members("bob", "team");
    assert_eq!(
        seen_by_bob
            .iter()
            .find(|m| m.user_id == "bob")
            .unwrap()
            .remark,
        "work stuff"
    );
    assert_eq!(
        w.err(
            "carol",
            Body::GroupSetNickname(pb::GroupSetNickname {
                group_id: "team".into(),
                nickname: "x".into()
            })
        ),
        pb::ErrorCode::NotMember
    );
}

pub fn group_roles_and_ownership_transfer(f: Fixture) {
    // Proves only the owner sets roles (self-promotion by a member or admin
    // is refused), roles show in the member list, and handing over
    // ownership makes the old owner an admin, with entries for both.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let denied = pb::ErrorCode::PermissionDenied;
    assert_eq!(
        w.err("bob", role_body("team", "bob", pb::GroupRole::Admin)),
        denied,
        "self-promotion"
    );
    w.ok("alice", role_body("team", "bob", pb::GroupRole::Admin));
    assert_eq!(
        w.err("bob", role_body("team", "bob", pb::GroupRole::Owner)),
        denied,
        "admin self-promotion"
    );
    assert_eq!(
        w.err("bob", role_body("team", "carol", pb::GroupRole::Admin)),
        denied,
        "admin sets roles"
    );
    assert_eq!(
        w.err("alice", role_body("team", "alice", pb::GroupRole::Member)),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.err("alice", role_body("team", "zed", pb::GroupRole::Admin)),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err(
            "alice",
            role_body("team", "bob", pb::GroupRole::Unspecified)
        ),
        pb::ErrorCode::InvalidArgument
    );
    let out = w.ok("alice", role_body("team", "carol", pb::GroupRole::Owner));
    assert_eq!(deliveries(&out.effects).len(), 2);
    let info = w.group_info("alice", "team");
    assert_eq!(info.info.unwrap().owner, "carol");
    assert_eq!(info.me.unwrap().role, pb::GroupRole::Admin as i32);
    let roles: Vec<(String, i32)> = w
        .members("bob", "team")
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(
        roles,
        vec![("alice".into(), 2), ("bob".into(), 2), ("carol".into(), 3)]
    );
    // The new owner can now demote the old one, who can no longer set roles.
    w.ok("carol", role_body("team", "alice", pb::GroupRole::Member));
    assert_eq!(
        w.err("alice", role_body("team", "bob", pb::GroupRole::Member)),
        denied
    );
    w.ok(
        "alice",
        Body::GroupLeave(pb::GroupLeave {
            group_id: "team".into(),
        }),
    );
}

pub fn group_mute_member_and_all(f: Fixture) {
    // Proves muting: admins mute a member for a duration (MUTED until it
    // ends), mute-all silences members but not admins, members cannot mute,
    // admins cannot mute the owner; all are log entries.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let mute = |user: &str, ms| {
        Body::GroupMute(pb::GroupMute {
            group_id: "team".into(),
            user_id: user.into(),
            duration_ms: ms,
        })
    };
    assert_eq!(
        w.err("bob", mute("carol", 60_000)),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.err("carol", mute("alice", 60_000)),
        pb::ErrorCode::PermissionDenied
    );
    let out = w.ok("carol", mute("bob", 60_000));
    assert!(
        matches!(group_event(&deliveries(&out.effects)[0].0), Some(pb::group_event::Kind::MuteChanged(m)) if m.user_id == "bob" && m.muted_until_ms > 0)
    );
    assert_eq!(
        w.err("bob", send_body("mu1", To::Group("team"), "hi")),
        pb::ErrorCode::Muted
    );
    w.advance(60_001);
    w.send_group("bob", "team", "free again");
    w.ok("carol", mute("bob", 60_000));
    w.ok("carol", mute("bob", 0));
    w.send_group("bob", "team", "unmuted");
    w.ok("alice", mute("", 1));
    assert!(w.group_info("bob", "team").info.unwrap().muted_all);
    assert_eq!(
        w.err("bob", send_body("mu2", To::Group("team"), "hi")),
        pb::ErrorCode::Muted
    );
    w.send_group("carol", "team", "admins still speak");
    w.ok("alice", mute("", 0));
    w.send_group("bob", "team", "everyone again");
}

pub fn group_changes_sync_to_member_devices(f: Fixture) {
    // Proves every group change is an entry in the group's log, in order,
    // so a member's device that syncs later sees the same sequence of
    // changes as one that got the pushes.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    w.ok(
        "alice",
        Body::GroupInvite(pb::GroupInvite {
            group_id: "team".into(),
            user_ids: strings(&["carol"]),
        }),
    );
    w.ok(
        "alice",
        Body::GroupRename(pb::GroupRename {
            group_id: "team".into(),
            name: "T2".into(),
        }),
    );
    w.ok("alice", role_body("team", "bob", pb::GroupRole::Admin));
    w.ok("bob", kick_body("team", "carol"));
    let kinds: Vec<&'static str> = w
        .sync_all("bob")
        .iter()
        .map(|e| match group_event(e) {
            Some(pb::group_event::Kind::Created(_)) => "created",
            Some(pb::group_event::Kind::Joined(_)) => "joined",
            Some(pb::group_event::Kind::Renamed(_)) => "renamed",
            Some(pb::group_event::Kind::RoleChanged(_)) => "role",
            Some(pb::group_event::Kind::Kicked(_)) => "kicked",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["created", "joined", "joined", "renamed", "role", "kicked"]
    );
    let seqs: Vec<u64> = w.sync_all("alice").iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
}

pub fn group_size_limit(f: Fixture) {
    // Proves group_members_max bounds creation and joins (LIMIT_REACHED).
    let w = World::with_config(
        f,
        Config {
            group_members_max: 3,
            ..Config::default()
        },
    );
    assert_eq!(
        w.err(
            "alice",
            Body::GroupCreate(pb::GroupCreate {
                group_id: "big".into(),
                members: strings(&["b", "c", "d"]),
                ..Default::default()
            })
        ),
        pb::ErrorCode::LimitReached
    );
    w.create_group("alice", "team", &["bob", "carol"]);
    assert_eq!(
        w.err(
            "dave",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "team".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::LimitReached
    );
}

// ---------------------------------------------------------------------------
// Typing and presence
// ---------------------------------------------------------------------------

pub fn typing_is_pushed_expires_and_is_not_stored(f: Fixture) {
    // Proves typing goes to the other participants only, is not answered,
    // is not in any log, and expires: poll_expired emits typing = false after
    // typing_expiry_ms unless repeated.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    let out = w.call(
        "bob",
        Body::Typing(pb::TypingRequest {
            conversation_id: G.into(),
            typing: true,
        }),
    );
    assert_eq!(out.reply, None);
    let Effect::Typing { recipients, event } = &out.effects[0] else {
        panic!()
    };
    let mut r = recipients.to_vec();
    r.sort();
    assert_eq!(r, strings(&["alice", "carol"]));
    assert!(event.typing && event.user_id == "bob");
    assert_eq!(
        w.store().heads(&[G]).unwrap()[0].seq,
        head,
        "not stored in the log"
    );
    let expiry = w.domain.config().typing_expiry_ms;
    w.advance(expiry - 100);
    assert!(w.domain.poll_expired(w.now()).is_empty());
    w.call(
        "bob",
        Body::Typing(pb::TypingRequest {
            conversation_id: G.into(),
            typing: true,
        }),
    );
    w.advance(expiry - 100);
    assert!(
        w.domain.poll_expired(w.now()).is_empty(),
        "repeating keeps it alive"
    );
    w.advance(200);
    let expired = w.domain.poll_expired(w.now());
    assert_eq!(expired.len(), 1);
    assert!(
        matches!(&expired[0], Effect::Typing { event, .. } if !event.typing && event.user_id == "bob")
    );
    assert!(w.domain.poll_expired(w.now() + expiry).is_empty());
    w.call(
        "alice",
        Body::Typing(pb::TypingRequest {
            conversation_id: AB.into(),
            typing: true,
        }),
    );
    let out = w.call(
        "alice",
        Body::Typing(pb::TypingRequest {
            conversation_id: AB.into(),
            typing: false,
        }),
    );
    assert!(
        matches!(&out.effects[0], Effect::Typing { recipients, event } if !event.typing && recipients.to_vec() == strings(&["bob"]))
    );
    assert!(
        w.domain.poll_expired(w.now() + expiry).is_empty(),
        "stopped explicitly"
    );
}

pub fn presence_set_query_and_expiry(f: Fixture) {
    // Proves presence: setting it while connected pushes to friends and
    // shows in queries with its text; it reads as offline (with last seen)
    // after expiry or when set offline; users who blocked you look offline
    // with no last seen.
    let w = World::new(f);
    w.befriend("alice", "bob");
    w.connection("alice", true);
    let out = w.ok(
        "alice",
        Body::SetPresence(pb::SetPresenceRequest {
            state: pb::PresenceState::Busy as i32,
            text: "in a meeting".into(),
        }),
    );
    let Effect::Presence { recipients, event } = &out.effects[0] else {
        panic!()
    };
    assert_eq!(recipients.to_vec(), strings(&["bob"]));
    assert_eq!(
        event.presence.as_ref().unwrap().state,
        pb::PresenceState::Busy as i32
    );
    let set_at = w.now() - 1;
    let query = |who: &str| {
        let Some(Body::PresenceResult(r)) = w
            .ok(
                who,
                Body::PresenceQuery(pb::PresenceQuery {
                    user_ids: strings(&["alice", "nobody"]),
                }),
            )
            .reply
        else {
            panic!()
        };
        r.presences
    };
    let p = query("bob");
    assert_eq!(
        (p[0].state, p[0].text.as_str()),
        (pb::PresenceState::Busy as i32, "in a meeting")
    );
    assert_eq!(
        (p[1].state, p[1].last_seen_ms),
        (pb::PresenceState::Offline as i32, 0)
    );
    w.ok(
        "alice",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "carol".into(),
            blocked: true,
        }),
    );
    let p = query("carol");
    assert_eq!(
        (p[0].state, p[0].last_seen_ms),
        (pb::PresenceState::Offline as i32, 0)
    );
    w.advance(w.domain.config().presence_expiry_ms + 1);
    let p = query("bob");
    assert_eq!(
        (p[0].state, p[0].last_seen_ms),
        (pb::PresenceState::Offline as i32, set_at)
    );
    w.connection("alice", true);
    assert_eq!(query("bob")[0].state, pb::PresenceState::Busy as i32);
    w.ok(
        "alice",
        Body::SetPresence(pb::SetPresenceRequest {
            state: pb::PresenceState::Online as i32,
            text: String::new(),
        }),
    );
    assert_eq!(query("bob")[0].state, pb::PresenceState::Online as i32);
    w.ok(
        "alice",
        Body::SetPresence(pb::SetPresenceRequest {
            state: pb::PresenceState::Offline as i32,
            text: String::new(),
        }),
    );
    assert_eq!(query("bob")[0].state, pb::PresenceState::Offline as i32);
    assert_eq!(
        w.err(
            "alice",
            Body::SetPresence(pb::SetPresenceRequest {
                state: 0,
                text: String::new()
            })
        ),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn presence_setting_applies_whenever_a_device_is_connected(f: Fixture) {
    // Proves a chosen presence is the user's setting, kept until changed:
    // chosen with no device connected (a quiet script) it pushes nothing
    // and reads offline, then shows when a device connects, survives
    // disconnects (offline meanwhile), applies at once while connected, is
    // cleared by choosing plain online, and "appear offline" hides every
    // connect and disconnect (no push, last seen unchanged).
    let w = World::new(f);
    w.befriend("alice", "bob");
    let set = |state: pb::PresenceState, text: &str| {
        Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
            text: text.into(),
        })
    };
    let shown = |o: &Outcome| match &o.effects[..] {
        [Effect::Presence { recipients, event }] => {
            assert_eq!(recipients.to_vec(), strings(&["bob"]));
            let p = event.presence.clone().unwrap();
            Some((pb::PresenceState::try_from(p.state).unwrap(), p.text))
        }
        [] => None,
        e => panic!("{e:?}"),
    };
    let query = || {
        let Some(Body::PresenceResult(r)) = w
            .ok(
                "bob",
                Body::PresenceQuery(pb::PresenceQuery {
                    user_ids: strings(&["alice"]),
                }),
            )
            .reply
        else {
            panic!()
        };
        let p = r.presences[0].clone();
        (
            pb::PresenceState::try_from(p.state).unwrap(),
            p.text,
            p.last_seen_ms,
        )
    };
    use pb::PresenceState::{Away, Busy, Offline, Online};
    let busy = (Busy, "in a meeting".to_owned());

    let out = w.ok("alice", set(Busy, "in a meeting"));
    assert_eq!(shown(&out), None, "nobody sees a choice made offline");
    assert_eq!(query().0, Offline);
    assert_eq!(shown(&w.connection("alice", true)), Some(busy.clone()));
    assert_eq!(query(), (Busy, "in a meeting".into(), 0));
    let gone = shown(&w.connection("alice", false));
    let left_at = w.now() - 1;
    assert_eq!(gone, Some((Offline, String::new())));
    assert_eq!(query(), (Offline, String::new(), left_at));
    assert_eq!(shown(&w.connection("alice", true)), Some(busy), "kept");
    assert_eq!(
        shown(&w.ok("alice", set(Away, ""))),
        Some((Away, String::new()))
    );
    assert_eq!(
        w.store().presence_settings(&["alice"]).unwrap()[0]
            .as_ref()
            .map(|s| s.state),
        Some(Away as i32)
    );
    assert_eq!(
        shown(&w.ok("alice", set(Online, ""))),
        Some((Online, String::new()))
    );
    assert_eq!(w.store().presence_settings(&["alice"]).unwrap(), vec![None]);
    w.connection("alice", false);
    assert_eq!(
        shown(&w.connection("alice", true)),
        Some((Online, String::new()))
    );

    // Appear offline: friends see it once, then nothing of the devices.
    let hidden = shown(&w.ok("alice", set(Offline, "")));
    let hidden_at = w.now() - 1;
    assert_eq!(hidden, Some((Offline, String::new())));
    assert_eq!(shown(&w.connection("alice", false)), None);
    w.advance(5_000);
    assert_eq!(shown(&w.connection("alice", true)), None);
    assert_eq!(query(), (Offline, String::new(), hidden_at));
    assert_eq!(
        shown(&w.ok("alice", set(Busy, "back"))),
        Some((Busy, "back".into()))
    );

    // In one batch: the choice, then the connect that shows it.
    let out = w.domain.handle_batch(
        w.now(),
        vec![
            Request {
                caller: World::caller("bob"),
                body: set(Away, "lunch"),
            },
            Request {
                caller: Caller::connection("bob"),
                body: set(Online, ""),
            },
        ],
    );
    assert!(out[0].effects.is_empty(), "{:?}", out[0]);
    let [Effect::Presence { event, .. }] = &out[1].effects[..] else {
        panic!("{:?}", out[1])
    };
    let p = event.presence.clone().unwrap();
    assert_eq!((p.state, p.text.as_str()), (Away as i32, "lunch"));
}

/// A tiny deterministic generator (xorshift64*), so the hostile-input case
/// needs no dependency and replays identically.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize].clone()
    }

    fn id(&mut self) -> String {
        self.pick(&[
            "alice".to_string(),
            "bob".to_string(),
            "team".to_string(),
            String::new(),
            "x".repeat(65),
            "bad id".to_string(),
            "a:b".to_string(),
            "{tag}".to_string(),
            "é".to_string(),
        ])
    }

    fn conv(&mut self) -> String {
        self.pick(&[
            AB.to_string(),
            G.to_string(),
            "d:bob:alice".to_string(),
            "d:alice:alice".to_string(),
            "g:".to_string(),
            "g:nope".to_string(),
            String::new(),
            "x:y".to_string(),
        ])
    }

    fn num(&mut self) -> u64 {
        self.pick(&[
            0,
            1,
            2,
            3,
            1_000,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ])
    }

    fn small(&mut self) -> u32 {
        self.pick(&[0, 1, 7, 200, 1_000_000, u32::MAX])
    }

    fn text(&mut self) -> String {
        self.pick(&[String::new(), "hi".to_string(), "x".repeat(70_000)])
    }
}

fn hostile_body(r: &mut Rng) -> Body {
    let ids = |r: &mut Rng| (0..r.next() % 4).map(|_| r.id()).collect::<Vec<_>>();
    match r.next() % 24 {
        0 => Body::Send(pb::Send {
            client_msg_id: r.id(),
            to: match r.next() % 3 {
                0 => None,
                1 => Some(pb::send::To::UserId(r.id())),
                _ => Some(pb::send::To::GroupId(r.id())),
            },
            content: match r.next() % 3 {
                0 => None,
                1 => Some(pb::Content { kind: None }),
                _ => Some(text_content(&r.text())),
            },
            mentions: ids(r),
            mention_all: r.next() % 2 == 0,
            reply_to_seq: r.num(),
            streaming: false,
            thread_root_seq: 0,
        }),
        1 => Body::Sync(pb::SyncRequest {
            cursors: (0..r.next() % 3)
                .map(|_| pb::Cursor {
                    conversation_id: r.conv(),
                    seq: r.num(),
                })
                .collect(),
            limit: r.small(),
        }),
        2 => Body::History(pb::HistoryRequest {
            conversation_id: r.conv(),
            before_seq: r.num(),
            limit: r.small(),
            thread_root_seq: 0,
        }),
        3 => Body::Recall(pb::RecallRequest {
            conversation_id: r.conv(),
            seq: r.num(),
        }),
        4 => Body::Read(pb::ReadRequest {
            conversation_id: r.conv(),
            up_to_seq: r.num(),
        }),
        5 => Body::ReadBy(pb::ReadByQuery {
            conversation_id: r.conv(),
            seqs: (0..r.next() % 4).map(|_| r.num()).collect(),
        }),
        6 => Body::Conversations(pb::ConversationListRequest {
            limit: r.small(),
            offset: r.small(),
        }),
        7 => Body::Typing(pb::TypingRequest {
            conversation_id: r.conv(),
            typing: true,
        }),
        8 => Body::SetPresence(pb::SetPresenceRequest {
            state: r.small() as i32,
            text: r.text(),
        }),
        9 => Body::PresenceQuery(pb::PresenceQuery { user_ids: ids(r) }),
        10 => Body::FriendRequest(pb::FriendRequestSend {
            user_id: r.id(),
            message: r.text(),
        }),
        11 => Body::FriendAccept(pb::FriendAccept { user_id: r.id() }),
        12 => Body::FriendRemark(pb::FriendRemark {
            user_id: r.id(),
            remark: r.text(),
        }),
        13 => Body::Profile(pb::ProfileRequest { user_id: r.id() }),
        14 => Body::GroupCreate(pb::GroupCreate {
            group_id: r.id(),
            name: r.text(),
            members: ids(r),
            join_policy: r.small() as i32,
            history_visible: true,
        }),
        15 => Body::GroupMembers(pb::GroupMembersRequest {
            group_id: r.id(),
            after_user_id: r.id(),
            limit: r.small(),
        }),
        16 => Body::GroupInvite(pb::GroupInvite {
            group_id: r.id(),
            user_ids: ids(r),
        }),
        17 => Body::GroupKick(pb::GroupKick {
            group_id: r.id(),
            user_id: r.id(),
        }),
        18 => Body::GroupSetRole(pb::GroupSetRole {
            group_id: r.id(),
            user_id: r.id(),
            role: r.small() as i32,
        }),
        19 => Body::GroupMute(pb::GroupMute {
            group_id: r.id(),
            user_id: r.id(),
            duration_ms: r.num(),
        }),
        20 => Body::GroupJoinDecision(pb::GroupJoinDecision {
            group_id: r.id(),
            user_id: r.id(),
            approve: true,
        }),
        21 => Body::GroupRename(pb::GroupRename {
            group_id: r.id(),
            name: r.text(),
        }),
        22 => Body::GroupSetPolicy(pb::GroupSetPolicy {
            group_id: r.id(),
            join_policy: r.small() as i32,
            history_visible: false,
        }),
        _ => Body::Pong(pb::Pong {
            nonce: 1,
            server_time_ms: 2,
        }),
    }
}

pub fn hostile_requests_get_typed_answers(f: Fixture) {
    // Proves bad input never panics and always gets an answer: 3,000
    // requests with extreme values (u64::MAX seqs, invalid and oversized
    // ids, 70 KB texts, unknown enum values, huge limits) on a store with a
    // group and a 1:1 chat; every one is answered (typing may be silent on
    // success) and every error is a domain code, never INTERNAL.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    w.send_dm("alice", "bob", "hi");
    w.send_group("bob", "team", "hi");
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3_000 {
        let user = r.pick(&["alice", "bob", "eve"]);
        let body = hostile_body(&mut r);
        let typing = matches!(body, Body::Typing(_));
        let out = w.call(user, body.clone());
        match &out.reply {
            Some(Body::Error(e)) => {
                assert_ne!(
                    e.code(),
                    pb::ErrorCode::Internal,
                    "{body:?} -> {}",
                    e.reason
                )
            }
            Some(_) => {}
            None => assert!(typing, "{body:?} got no answer"),
        }
    }
}

// ---------------------------------------------------------------------------
// Authorization: one test per rule (the feature tests above cover them in
// context too)
// ---------------------------------------------------------------------------

/// A group `team` owned by alice, bob admin, carol and dave members.
fn auth_world(f: Fixture) -> World {
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol", "dave"]);
    w.ok("alice", role_body("team", "bob", pb::GroupRole::Admin));
    w.send_group("carol", "team", "hello");
    w
}

fn history_body(conv: &str) -> Body {
    Body::History(pb::HistoryRequest {
        conversation_id: conv.into(),
        before_seq: 0,
        limit: 0,
        thread_root_seq: 0,
    })
}

pub fn auth_non_member_cannot_read_group(f: Fixture) {
    // Proves a user who never was a member gets NOT_MEMBER for a group's
    // history.
    let w = auth_world(f);
    assert_eq!(w.err("eve", history_body(G)), pb::ErrorCode::NotMember);
}

pub fn auth_third_user_cannot_read_direct_chat(f: Fixture) {
    // Proves only the two users of a 1:1 chat read it.
    let w = World::new(f);
    w.send_dm("alice", "bob", "private");
    assert_eq!(w.err("carol", history_body(AB)), pb::ErrorCode::NotMember);
}

pub fn auth_non_member_cannot_send_to_group(f: Fixture) {
    // Proves a non-member's group send is NOT_MEMBER and stores nothing.
    let w = auth_world(f);
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    assert_eq!(
        w.err("eve", send_body("e1", To::Group("team"), "hi")),
        pb::ErrorCode::NotMember
    );
    assert_eq!(w.store().heads(&[G]).unwrap()[0].seq, head);
}

pub fn auth_non_admin_cannot_kick(f: Fixture) {
    // Proves a plain member's kick is PERMISSION_DENIED.
    let w = auth_world(f);
    assert_eq!(
        w.err("carol", kick_body("team", "dave")),
        pb::ErrorCode::PermissionDenied
    );
    assert!(w.store().group_member("team", "dave").unwrap().is_some());
}

pub fn auth_nobody_kicks_the_owner(f: Fixture) {
    // Proves an admin cannot kick the owner.
    let w = auth_world(f);
    assert_eq!(
        w.err("bob", kick_body("team", "alice")),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_admin_cannot_kick_admin(f: Fixture) {
    // Proves admins cannot kick each other (only the owner kicks admins).
    let w = auth_world(f);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    assert_eq!(
        w.err("bob", kick_body("team", "carol")),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_cannot_recall_someone_elses_message(f: Fixture) {
    // Proves a member cannot recall another member's message.
    let w = auth_world(f);
    let s = w.send_group("carol", "team", "mine").seq;
    assert_eq!(
        w.err(
            "dave",
            Body::Recall(pb::RecallRequest {
                conversation_id: G.into(),
                seq: s
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_recall_window_binds_the_sender(f: Fixture) {
    // Proves a member's own recall after the window is RECALL_WINDOW_PASSED.
    let w = auth_world(f);
    let s = w.send_group("carol", "team", "late").seq;
    w.advance(w.domain.config().recall_window_ms + 1);
    assert_eq!(
        w.err(
            "carol",
            Body::Recall(pb::RecallRequest {
                conversation_id: G.into(),
                seq: s
            })
        ),
        pb::ErrorCode::RecallWindowPassed
    );
}

pub fn auth_self_promotion_is_refused(f: Fixture) {
    // Proves a member cannot make themself admin, nor an admin themself owner.
    let w = auth_world(f);
    assert_eq!(
        w.err("carol", role_body("team", "carol", pb::GroupRole::Admin)),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.err("bob", role_body("team", "bob", pb::GroupRole::Owner)),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_only_the_owner_dissolves(f: Fixture) {
    // Proves an admin's dissolve is PERMISSION_DENIED.
    let w = auth_world(f);
    assert_eq!(
        w.err(
            "bob",
            Body::GroupDissolve(pb::GroupDissolve {
                group_id: "team".into()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_no_action_after_dissolve(f: Fixture) {
    // Proves acting on a dissolved group is GROUP_DISSOLVED, also for its
    // former owner.
    let w = auth_world(f);
    w.ok(
        "alice",
        Body::GroupDissolve(pb::GroupDissolve {
            group_id: "team".into(),
        }),
    );
    assert_eq!(
        w.err("alice", send_body("x", To::Group("team"), "hi")),
        pb::ErrorCode::GroupDissolved
    );
    assert_eq!(
        w.err(
            "alice",
            Body::GroupAnnounce(pb::GroupAnnounce {
                group_id: "team".into(),
                announcement: "x".into()
            })
        ),
        pb::ErrorCode::GroupDissolved
    );
}

pub fn auth_member_cannot_change_group_settings(f: Fixture) {
    // Proves rename by a plain member is PERMISSION_DENIED.
    let w = auth_world(f);
    assert_eq!(
        w.err(
            "carol",
            Body::GroupRename(pb::GroupRename {
                group_id: "team".into(),
                name: "mine".into()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_muted_member_cannot_send(f: Fixture) {
    // Proves a muted member's send is MUTED.
    let w = auth_world(f);
    w.ok(
        "bob",
        Body::GroupMute(pb::GroupMute {
            group_id: "team".into(),
            user_id: "carol".into(),
            duration_ms: 60_000,
        }),
    );
    assert_eq!(
        w.err("carol", send_body("m", To::Group("team"), "hi")),
        pb::ErrorCode::Muted
    );
}

pub fn auth_admin_cannot_mute_the_owner(f: Fixture) {
    // Proves an admin cannot mute the owner.
    let w = auth_world(f);
    assert_eq!(
        w.err(
            "bob",
            Body::GroupMute(pb::GroupMute {
                group_id: "team".into(),
                user_id: "alice".into(),
                duration_ms: 60_000
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_member_cannot_mention_all(f: Fixture) {
    // Proves @all by a plain member is PERMISSION_DENIED.
    let w = auth_world(f);
    let mut b = send_body("all", To::Group("team"), "everyone!");
    if let Body::Send(s) = &mut b {
        s.mention_all = true;
    }
    assert_eq!(w.err("carol", b), pb::ErrorCode::PermissionDenied);
}

pub fn auth_member_cannot_decide_join_requests(f: Fixture) {
    // Proves a plain member cannot approve a join request.
    let w = World::new(f);
    w.create_group_with("alice", "club", &["carol"], pb::JoinPolicy::Approval, false);
    w.ok(
        "eve",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "club".into(),
            message: String::new(),
        }),
    );
    assert_eq!(
        w.err(
            "carol",
            Body::GroupJoinDecision(pb::GroupJoinDecision {
                group_id: "club".into(),
                user_id: "eve".into(),
                approve: true
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_invite_only_group_refuses_joins(f: Fixture) {
    // Proves joining an invite-only group is PERMISSION_DENIED.
    let w = World::new(f);
    w.create_group_with("alice", "vip", &[], pb::JoinPolicy::InviteOnly, false);
    assert_eq!(
        w.err(
            "eve",
            Body::GroupJoin(pb::GroupJoin {
                group_id: "vip".into(),
                message: String::new()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_kicked_member_cannot_read_later_messages(f: Fixture) {
    // Proves a kicked member's history ends at the kick entry.
    let w = auth_world(f);
    let kick = ok_seq(&w.ok("bob", kick_body("team", "dave")));
    w.send_group("carol", "team", "after the kick");
    let h = w.history("dave", G);
    assert_eq!(h.last().unwrap().seq, kick);
    assert_eq!(texts(&h), ["hello"]);
}

pub fn auth_owner_cannot_leave(f: Fixture) {
    // Proves the owner cannot leave (and orphan the group).
    let w = auth_world(f);
    assert_eq!(
        w.err(
            "alice",
            Body::GroupLeave(pb::GroupLeave {
                group_id: "team".into()
            })
        ),
        pb::ErrorCode::PermissionDenied
    );
}

pub fn auth_blocked_user_cannot_message(f: Fixture) {
    // Proves a user you blocked gets BLOCKED when messaging you.
    let w = World::new(f);
    w.ok(
        "alice",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "bob".into(),
            blocked: true,
        }),
    );
    assert_eq!(
        w.err("bob", send_body("b", To::User("alice"), "hi")),
        pb::ErrorCode::Blocked
    );
}

pub fn auth_non_friends_refused_when_policy_says_so(f: Fixture) {
    // Proves NOT_FRIENDS under allow_non_friend_messages = false.
    let w = World::with_config(
        f,
        Config {
            allow_non_friend_messages: false,
            ..Config::default()
        },
    );
    assert_eq!(
        w.err("bob", send_body("b", To::User("alice"), "hi")),
        pb::ErrorCode::NotFriends
    );
}

// ---------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Operators (the server API): bans, kicks, rights
// ---------------------------------------------------------------------------

fn operator(user: &str) -> Caller {
    Caller {
        user_id: user.to_owned(),
        device_id: "api".to_owned(),
        admin: true,
    }
}

fn error_code(out: &Outcome) -> Option<pb::ErrorCode> {
    match &out.reply {
        Some(Body::Error(e)) => Some(e.code()),
        _ => None,
    }
}

fn operator_kick(reason: pb::KickReason, message: &str) -> Body {
    Body::Kick(pb::Kick {
        reason: reason as i32,
        message: message.to_owned(),
        ..Default::default()
    })
}

/// Proves a ban is stored (both stores), kicks every device, makes the
/// login check answer `Kick` BANNED and later requests of the user be
/// refused; an unban clears both.
pub fn admin_ban_kicks_refuses_and_unban_lifts(f: Fixture) {
    let w = World::new(f);
    let t = w.now();
    let out = w.domain.handle(
        &operator("bob"),
        t,
        operator_kick(pb::KickReason::Banned, "spam"),
    );
    assert!(matches!(out.reply, Some(Body::Ok(_))), "{out:?}");
    assert!(
        matches!(&out.effects[..], [Effect::Kick { user_id, kick }]
            if user_id == "bob" && kick.reason == pb::KickReason::Banned as i32 && kick.message.is_empty()),
        "{out:?}"
    );
    let ban = w.store().ban("bob").unwrap().expect("stored");
    assert_eq!((ban.reason.as_str(), ban.since_ms), ("spam", t));
    // The gateway's login check of a device.
    let check = w.call("bob", operator_kick(pb::KickReason::Unspecified, ""));
    assert!(
        matches!(&check.reply, Some(Body::Kick(k)) if k.reason == pb::KickReason::Banned as i32),
        "{check:?}"
    );
    let refused = w.call(
        "bob",
        Body::Profile(pb::ProfileRequest {
            user_id: "bob".into(),
        }),
    );
    assert_eq!(error_code(&refused), Some(pb::ErrorCode::PermissionDenied));
    let out = w.domain.handle(
        &operator("bob"),
        w.now(),
        operator_kick(pb::KickReason::Unspecified, ""),
    );
    assert!(matches!(out.reply, Some(Body::Ok(_))), "{out:?}");
    assert!(w.store().ban("bob").unwrap().is_none());
    let check = w.call("bob", operator_kick(pb::KickReason::Unspecified, ""));
    assert_eq!(check.reply, None, "not banned: no answer");
    let served = w.call(
        "bob",
        Body::Profile(pb::ProfileRequest {
            user_id: "bob".into(),
        }),
    );
    assert!(
        matches!(served.reply, Some(Body::ProfileResult(_))),
        "{served:?}"
    );
}

/// Proves a login storm's batch (per device: the gateway's presence update
/// and the device's login check, interleaved) answers every login check
/// from one read of the bans, in order: the banned user's device gets its
/// `Kick` BANNED, the others nothing, everyone's presence is stored, and a
/// request of the banned user later in the same batch is refused (its
/// login check was answered first).
pub fn admin_login_checks_of_a_storm_batch(f: Fixture) {
    let w = World::new(f);
    let out = w.domain.handle(
        &operator("bob"),
        w.now(),
        operator_kick(pb::KickReason::Banned, "spam"),
    );
    assert!(matches!(out.reply, Some(Body::Ok(_))), "{out:?}");
    let users = ["alice", "bob", "carol", "dave"];
    let mut reqs = Vec::new();
    for u in users {
        reqs.push(Request {
            caller: Caller::connection(u),
            body: Body::SetPresence(pb::SetPresenceRequest {
                state: pb::PresenceState::Online as i32,
                text: String::new(),
            }),
        });
        reqs.push(Request {
            caller: World::caller(u),
            body: operator_kick(pb::KickReason::Unspecified, ""),
        });
    }
    reqs.push(Request {
        caller: World::caller("bob"),
        body: Body::Profile(pb::ProfileRequest {
            user_id: "bob".into(),
        }),
    });
    let out = w.domain.handle_batch(w.now(), reqs);
    assert_eq!(out.len(), 9);
    for (k, u) in users.iter().enumerate() {
        assert!(
            matches!(out[2 * k].reply, Some(Body::Ok(_))),
            "{u}: {:?}",
            out[2 * k]
        );
        let check = &out[2 * k + 1];
        if *u == "bob" {
            assert!(
                matches!(&check.reply, Some(Body::Kick(k)) if k.reason == pb::KickReason::Banned as i32 && k.message == "spam"),
                "{check:?}"
            );
        } else {
            assert_eq!(check.reply, None, "{u} is not banned: {check:?}");
        }
    }
    assert_eq!(error_code(&out[8]), Some(pb::ErrorCode::PermissionDenied));
    let stored = w.store().presences(&users).unwrap();
    assert!(
        stored
            .iter()
            .all(|p| p.as_ref().is_some_and(|p| p.connected)),
        "{stored:?}"
    );
}

/// Proves an operator kick names one device (or none: all) and stores
/// nothing; a kick reason an operator may not use is refused.
pub fn admin_kick_names_a_device(f: Fixture) {
    let w = World::new(f);
    let out = w.domain.handle(
        &operator("bob"),
        w.now(),
        operator_kick(pb::KickReason::Admin, "phone"),
    );
    assert!(
        matches!(&out.effects[..], [Effect::Kick { kick, .. }]
            if kick.reason == pb::KickReason::Admin as i32 && kick.message == "phone"),
        "{out:?}"
    );
    assert!(w.store().ban("bob").unwrap().is_none());
    let bad = w.domain.handle(
        &operator("bob"),
        w.now(),
        operator_kick(pb::KickReason::Shutdown, ""),
    );
    assert_eq!(error_code(&bad), Some(pb::ErrorCode::InvalidArgument));
}

/// Proves an operator sends 1:1 without friendship under the friends-only
/// policy, sends into a group it is not in, manages that group as its
/// owner would (invite, role, kick, dissolve) and reads its history; the
/// same calls from a plain caller are refused.
pub fn admin_acts_without_friendship_or_membership(f: Fixture) {
    let w = World::with_config(
        f,
        Config {
            allow_non_friend_messages: false,
            ..Config::default()
        },
    );
    let sys = operator("system");
    let send = |to: pb::send::To, id: &str| {
        Body::Send(pb::Send {
            client_msg_id: id.into(),
            to: Some(to),
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text { text: "hi".into() })),
            }),
            ..Default::default()
        })
    };
    let refused = w.call("system", send(pb::send::To::UserId("bob".into()), "m0"));
    assert_eq!(error_code(&refused), Some(pb::ErrorCode::NotFriends));
    let out = w.domain.handle(
        &sys,
        w.now(),
        send(pb::send::To::UserId("bob".into()), "m1"),
    );
    assert!(matches!(out.reply, Some(Body::SendAck(_))), "{out:?}");
    let created = w.call(
        "alice",
        Body::GroupCreate(pb::GroupCreate {
            group_id: "g1".into(),
            name: "g".into(),
            members: vec!["bob".into()],
            ..Default::default()
        }),
    );
    assert!(
        matches!(created.reply, Some(Body::GroupInfoResult(_))),
        "{created:?}"
    );
    let not_member = w.call("system", send(pb::send::To::GroupId("g1".into()), "m2"));
    assert_eq!(error_code(&not_member), Some(pb::ErrorCode::NotMember));
    let out = w.domain.handle(
        &sys,
        w.now(),
        send(pb::send::To::GroupId("g1".into()), "m3"),
    );
    assert!(matches!(out.reply, Some(Body::SendAck(_))), "{out:?}");
    let invite = Body::GroupInvite(pb::GroupInvite {
        group_id: "g1".into(),
        user_ids: vec!["carol".into()],
    });
    assert_eq!(
        error_code(&w.call("system", invite.clone())),
        Some(pb::ErrorCode::NotMember)
    );
    let ok = |out: Outcome| assert!(matches!(out.reply, Some(Body::Ok(_))), "{out:?}");
    ok(w.domain.handle(&sys, w.now(), invite));
    ok(w.domain.handle(
        &sys,
        w.now(),
        Body::GroupSetRole(pb::GroupSetRole {
            group_id: "g1".into(),
            user_id: "carol".into(),
            role: pb::GroupRole::Owner as i32,
        }),
    ));
    let alice = w.store().group_member("g1", "alice").unwrap().unwrap();
    assert_eq!(
        alice.role,
        pb::GroupRole::Admin as i32,
        "the old owner is an admin"
    );
    assert_eq!(w.store().group("g1").unwrap().unwrap().owner, "carol");
    assert!(
        w.store().group_member("g1", "system").unwrap().is_none(),
        "never a member"
    );
    ok(w.domain.handle(
        &sys,
        w.now(),
        Body::GroupKick(pb::GroupKick {
            group_id: "g1".into(),
            user_id: "bob".into(),
        }),
    ));
    let history = w.domain.handle(
        &sys,
        w.now(),
        Body::History(pb::HistoryRequest {
            conversation_id: "g:g1".into(),
            ..Default::default()
        }),
    );
    assert!(
        matches!(&history.reply, Some(Body::HistoryResult(h)) if h.entries.len() >= 4),
        "{history:?}"
    );
    ok(w.domain.handle(
        &sys,
        w.now(),
        Body::GroupDissolve(pb::GroupDissolve {
            group_id: "g1".into(),
        }),
    ));
    let unknown = w.domain.handle(
        &sys,
        w.now(),
        Body::GroupDissolve(pb::GroupDissolve {
            group_id: "nope".into(),
        }),
    );
    assert_eq!(error_code(&unknown), Some(pb::ErrorCode::NotFound));
}

/// Proves the domain keeps no list of the users online (a broadcast asks
/// the gateway's shards, which hold their connections anyway): after the
/// gateway's presence updates, an operator's `PresenceQuery` with no ids is
/// an empty answer, like anyone's.
pub fn empty_presence_query_lists_nobody(f: Fixture) {
    let w = World::new(f);
    w.connection("bob", true);
    w.connection("dave", true);
    for caller in [operator("system"), World::caller("bob")] {
        let out = w.domain.handle(
            &caller,
            w.now(),
            Body::PresenceQuery(pb::PresenceQuery::default()),
        );
        assert!(
            matches!(&out.reply, Some(Body::PresenceResult(r)) if r.presences.is_empty()),
            "{out:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// ---- message edit ----
// ---------------------------------------------------------------------------

pub fn edit_body(conv: &str, seq: u64, id: &str, text: &str, streaming: bool) -> Body {
    Body::Edit(pb::EditRequest {
        conversation_id: conv.into(),
        seq,
        client_edit_id: id.into(),
        content: Some(text_content(text)),
        streaming,
    })
}

/// The message at `seq` of `entries`.
#[track_caller]
fn message_at(entries: &[pb::Entry], seq: u64) -> pb::Message {
    match entries.iter().find(|e| e.seq == seq).map(|e| &e.body) {
        Some(Some(pb::entry::Body::Message(m))) => m.clone(),
        other => panic!("no message at {seq}: {other:?}"),
    }
}

/// The `Edited` bodies among `entries`, in order.
fn edits_in(entries: &[pb::Entry]) -> Vec<pb::Edited> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::Edited(x)) => Some(x.clone()),
            _ => None,
        })
        .collect()
}

fn text_in(c: Option<&pb::Content>) -> Option<&str> {
    match c?.kind.as_ref()? {
        pb::content::Kind::Text(t) => Some(&t.text),
        _ => None,
    }
}

pub fn edit_by_sender_is_stored_pushed_and_served(f: Fixture) {
    // Proves a sender's edit appends an `Edited` entry that is pushed to both
    // users with the new content, and that history and a fresh sync serve
    // the message at its original seq with the latest content, its edit
    // count and time, followed by the `Edited` entry (served with content).
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "helo").seq;
    w.send_dm("bob", "alice", "what?");
    let at = w.now();
    let out = w.ok("alice", edit_body(AB, s, "e1", "hello", false));
    let seq = ok_seq(&out);
    assert_eq!(seq, 3, "the Edited entry is the next entry of the log");
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert_eq!(d[0].0.seq, seq);
    assert_eq!(d[0].0.sender, "alice");
    assert_eq!(
        d[0].0.body,
        Some(pb::entry::Body::Edited(pb::Edited {
            seq: s,
            content: Some(text_content("hello")),
            edit_count: 1,
            streaming: false,
        }))
    );
    for user in ["alice", "bob"] {
        let h = w.history(user, AB);
        assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let m = message_at(&h, s);
        assert_eq!(text_in(m.content.as_ref()), Some("hello"));
        assert_eq!((m.edit_count, m.edited_at_ms, m.streaming), (1, at, false));
        let x = edits_in(&h);
        assert_eq!(x.len(), 1);
        assert_eq!((x[0].seq, x[0].edit_count), (s, 1));
        assert_eq!(text_in(x[0].content.as_ref()), Some("hello"));
    }
    let synced = w.sync_all("bob");
    assert_eq!(texts(&synced), ["hello", "what?"]);
    assert_eq!(edits_in(&synced).len(), 1);
    assert_eq!(
        w.summary("bob", AB).unread,
        1,
        "alice's message, once: an edit is not a new message"
    );
}

pub fn edit_by_someone_else_is_refused(f: Fixture) {
    // Proves only the sender edits: the peer of a 1:1 chat, a group member,
    // the group's owner and admins all get PERMISSION_DENIED, a non-member
    // NOT_MEMBER, and the message stays as sent.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "mine").seq;
    let denied = pb::ErrorCode::PermissionDenied;
    assert_eq!(w.err("bob", edit_body(AB, s, "e1", "yours", false)), denied);
    w.create_group("alice", "team", &["bob", "carol"]);
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let g = w.send_group("bob", "team", "bob's").seq;
    for user in ["alice", "carol"] {
        assert_eq!(w.err(user, edit_body(G, g, "e2", "x", false)), denied);
    }
    assert_eq!(
        w.err("dave", edit_body(G, g, "e3", "x", false)),
        pb::ErrorCode::NotMember
    );
    assert_eq!(texts(&w.history("bob", AB)), ["mine"]);
    assert_eq!(texts(&w.history("bob", G)), ["bob's"]);
}

pub fn edit_after_window_is_refused(f: Fixture) {
    // Proves the edit window: at the window's end the edit passes, one ms
    // later EDIT_WINDOW_PASSED; and a window of 0 allows no edit at all.
    let w = World::new(f);
    let window = w.domain.config().edit_window_ms;
    let s = w.send_dm("alice", "bob", "one").seq;
    let t = w.send_dm("alice", "bob", "two").seq;
    w.advance(window - 2);
    w.ok("alice", edit_body(AB, s, "e1", "uno", false));
    w.ok("alice", edit_body(AB, t, "e2", "dos", false));
    assert_eq!(
        w.err("alice", edit_body(AB, s, "e3", "eins", false)),
        pb::ErrorCode::EditWindowPassed
    );
    assert_eq!(texts(&w.history("bob", AB)), ["uno", "dos"]);
}

pub fn edit_window_zero_turns_edits_off(f: Fixture) {
    // Proves `edit_window_ms = 0` refuses every edit, even at once.
    let w = World::with_config(
        f,
        Config {
            edit_window_ms: 0,
            ..Config::default()
        },
    );
    let s = w.send_dm("alice", "bob", "one").seq;
    w.advance(0);
    assert_eq!(
        w.err("alice", edit_body(AB, s, "e1", "uno", false)),
        pb::ErrorCode::EditWindowPassed
    );
}

pub fn edit_of_recalled_message_is_refused(f: Fixture) {
    // Proves a recalled message cannot be edited (NOT_FOUND), and that the
    // content of an edit made before the recall is not served after it.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "secret").seq;
    w.ok("alice", edit_body(AB, s, "e1", "secret 2", false));
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: s,
        }),
    );
    assert_eq!(
        w.err("alice", edit_body(AB, s, "e2", "back", false)),
        pb::ErrorCode::NotFound
    );
    let h = w.history("bob", AB);
    let m = message_at(&h, s);
    assert!(m.recalled);
    assert_eq!(m.content, None);
    let x = edits_in(&h);
    assert_eq!(x.len(), 1);
    assert_eq!(
        x[0].content, None,
        "the recall took the edit's content back"
    );
    assert!(
        edits_in(&w.sync_all("bob"))
            .iter()
            .all(|x| x.content.is_none())
    );
}

pub fn edit_retry_is_idempotent(f: Fixture) {
    // Proves an edit resent with the same client_edit_id answers the first
    // seq and changes nothing (no new entry, no push, the count stays), also
    // after the window has passed (within the dedup window); a new id is a
    // new edit; and an edit id equal to a message's client_msg_id is not
    // taken for that message.
    let w = World::with_config(
        f,
        Config {
            edit_window_ms: 60_000,
            ..Config::default()
        },
    );
    let sent = w.ok("alice", send_body("same-id", To::User("bob"), "v0"));
    let s = ack(&sent).seq;
    let first = ok_seq(&w.ok("alice", edit_body(AB, s, "same-id", "v1", false)));
    assert_ne!(first, s, "the edit id did not match the message id");
    let again = w.ok("alice", edit_body(AB, s, "same-id", "v1", false));
    assert_eq!(ok_seq(&again), first);
    assert!(again.effects.is_empty(), "a retry pushes nothing");
    let head = w.store().heads(&[AB]).unwrap()[0].seq;
    assert_eq!(head, first);
    let m = message_at(&w.history("bob", AB), s);
    assert_eq!(m.edit_count, 1);
    w.advance(w.domain.config().edit_window_ms + 1);
    let late = w.ok("alice", edit_body(AB, s, "same-id", "v1", false));
    assert_eq!(ok_seq(&late), first, "a late retry still gets its answer");
    assert_eq!(
        w.err("alice", edit_body(AB, s, "new-id", "v2", false)),
        pb::ErrorCode::EditWindowPassed
    );
    // The message's own resend is still answered as the message.
    let resend = ack(&w.ok("alice", send_body("same-id", To::User("bob"), "v0")));
    assert_eq!((resend.seq, resend.duplicate), (s, true));
}

pub fn edit_in_group_reaches_every_member(f: Fixture) {
    // Proves a group edit is pushed to every member, a member who syncs
    // later sees the latest text at the original seq, and a muted member
    // cannot edit (MUTED).
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let s = w.send_group("bob", "team", "draft").seq;
    let out = w.ok("bob", edit_body(G, s, "e1", "final", false));
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob", "carol"]));
    let synced = w.sync_all("carol");
    assert_eq!(
        text_in(message_at(&synced, s).content.as_ref()),
        Some("final")
    );
    w.ok(
        "alice",
        Body::GroupMute(pb::GroupMute {
            group_id: "team".into(),
            user_id: "bob".into(),
            duration_ms: 60_000,
        }),
    );
    assert_eq!(
        w.err("bob", edit_body(G, s, "e2", "again", false)),
        pb::ErrorCode::Muted
    );
}

pub fn edit_streaming_is_set_then_cleared(f: Fixture) {
    // Proves the streaming flow: a send with `streaming` stores the message
    // streaming, edits with `streaming` keep it and the final edit clears
    // it; every edit counts and the served text is the last one.
    let w = World::new(f);
    let mut body = send_body("r1", To::User("alice"), "The");
    if let Body::Send(s) = &mut body {
        s.streaming = true;
    }
    let s = ack(&w.ok("bot", body)).seq;
    let conv = "d:alice:bot";
    let m = message_at(&w.history("alice", conv), s);
    assert!(m.streaming);
    assert_eq!(m.edit_count, 0);
    let out = w.ok("bot", edit_body(conv, s, "r1-1", "The answer", true));
    let d = deliveries(&out.effects);
    assert!(matches!(
        &d[0].0.body,
        Some(pb::entry::Body::Edited(x)) if x.streaming && x.edit_count == 1
    ));
    assert!(message_at(&w.history("alice", conv), s).streaming);
    w.ok(
        "bot",
        edit_body(conv, s, "r1-2", "The answer is 42.", false),
    );
    let m = message_at(&w.history("alice", conv), s);
    assert!(!m.streaming);
    assert_eq!(m.edit_count, 2);
    assert_eq!(text_in(m.content.as_ref()), Some("The answer is 42."));
}

pub fn edit_checks_kind_size_target_and_count(f: Fixture) {
    // Proves an edit must keep the content's kind and size limits
    // (INVALID_ARGUMENT), name a message (NOT_FOUND for a seq past the head
    // or an entry that is not a message), and stop at
    // `edits_per_message_max` (LIMIT_REACHED).
    let w = World::with_config(
        f,
        Config {
            edits_per_message_max: 2,
            ..Config::default()
        },
    );
    let s = w.send_dm("alice", "bob", "text").seq;
    let mut image = edit_body(AB, s, "e1", "x", false);
    if let Body::Edit(e) = &mut image {
        e.content = Some(pb::Content {
            kind: Some(pb::content::Kind::Location(pb::Location {
                latitude: 1.0,
                longitude: 2.0,
                ..Default::default()
            })),
        });
    }
    let invalid = pb::ErrorCode::InvalidArgument;
    assert_eq!(w.err("alice", image), invalid);
    let long = "x".repeat(w.domain.config().text_bytes_max as usize + 1);
    assert_eq!(
        w.err("alice", edit_body(AB, s, "e2", &long, false)),
        invalid
    );
    assert_eq!(w.err("alice", edit_body(AB, s, "e3", "", false)), invalid);
    let read = ok_seq(&w.read("bob", AB, s));
    assert_eq!(
        w.err("alice", edit_body(AB, read, "e4", "x", false)),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err("alice", edit_body(AB, 99, "e5", "x", false)),
        pb::ErrorCode::NotFound
    );
    w.ok("alice", edit_body(AB, s, "e6", "one", false));
    w.ok("alice", edit_body(AB, s, "e7", "two", false));
    assert_eq!(
        w.err("alice", edit_body(AB, s, "e8", "three", false)),
        pb::ErrorCode::LimitReached
    );
    assert_eq!(texts(&w.history("bob", AB)), ["two"]);
}

pub fn store_edit_effect_is_compare_and_set(f: Fixture) {
    // Proves the store's edit effect rewrites the message only while its
    // edit count is the one expected and it is not recalled, appends nothing
    // otherwise, and answers a dedup'd repeat as a duplicate.
    let s = f.store;
    s.append_batch(T0, &[plain_append("d:a:b", "a", "x", T0)])
        .unwrap();
    let original = s.entries("d:a:b", 1, 1, 1).unwrap().remove(0);
    let edit = |expect: u32, count: u32, text: &str, id: &str| {
        let mut message = original.clone();
        if let Some(pb::entry::Body::Message(m)) = &mut message.body {
            m.content = Some(text_content(text));
            m.edit_count = count;
            m.edited_at_ms = T0 + 1;
        }
        Append {
            conversation: "d:a:b".into(),
            entry: pb::Entry {
                sender: "a".into(),
                time_ms: T0 + 1,
                body: Some(pb::entry::Body::Edited(pb::Edited {
                    seq: 1,
                    content: None,
                    edit_count: count,
                    streaming: false,
                })),
                ..Default::default()
            },
            activity: false,
            dedup: Some(DedupKey {
                sender: "a".into(),
                client_msg_id: id.into(),
                expires_at_ms: T0 + 1_000,
            }),
            member_of: None,
            effect: AppendEffect::Edit {
                expect_edit_count: expect,
                message: Box::new(message),
            },
            participants: vec![],
        }
    };
    let r = s.append_batch(T0 + 1, &[edit(0, 1, "y", "e1")]).unwrap();
    assert_eq!((r[0].unwrap().seq, r[0].unwrap().duplicate), (2, false));
    let r = s
        .append_batch(T0 + 2, &[edit(0, 1, "z", "e2"), edit(1, 2, "w", "e1")])
        .unwrap();
    assert_eq!(r[0], Err(AppendRefused::NotEditable), "stale count");
    assert_eq!((r[1].unwrap().seq, r[1].unwrap().duplicate), (2, true));
    assert_eq!(s.heads(&["d:a:b"]).unwrap()[0].seq, 2);
    let e = s.entries("d:a:b", 1, 1, 1).unwrap().remove(0);
    let Some(pb::entry::Body::Message(m)) = &e.body else {
        panic!("{e:?}")
    };
    assert_eq!(text_in(m.content.as_ref()), Some("y"));
    assert_eq!(m.edit_count, 1);
    assert_eq!(e.client_msg_id, "x", "everything else is kept");
    assert_eq!(
        s.edit_dedup_lookup("d:a:b", "a", "e1", T0 + 2).unwrap(),
        Some(tern_backend::store::Appended {
            seq: 2,
            time_ms: T0 + 1,
            duplicate: true
        })
    );
    assert_eq!(s.dedup_lookup("d:a:b", "a", "e1", T0 + 2).unwrap(), None);
    // Not a message: nothing to edit.
    let mut wrong = edit(1, 2, "v", "e3");
    if let AppendEffect::Edit { message, .. } = &mut wrong.effect {
        message.seq = 2;
    }
    assert_eq!(
        s.append_batch(T0 + 3, &[wrong]).unwrap()[0],
        Err(AppendRefused::NotEditable)
    );
}

// ---------------------------------------------------------------------------
// ---- reactions and pins (issue 19) ----
// ---------------------------------------------------------------------------

pub fn react_body(conv: &str, seq: u64, emoji: &str, remove: bool) -> Body {
    Body::React(pb::ReactRequest {
        conversation_id: conv.into(),
        seq,
        emoji: emoji.into(),
        remove,
    })
}

pub fn pin_body(conv: &str, seq: u64, unpin: bool) -> Body {
    Body::Pin(pb::PinRequest {
        conversation_id: conv.into(),
        seq,
        unpin,
    })
}

fn recall_body(conv: &str, seq: u64) -> Body {
    Body::Recall(pb::RecallRequest {
        conversation_id: conv.into(),
        seq,
    })
}

const THUMBS: &str = "\u{1f44d}";
const HEART: &str = "\u{2764}\u{fe0f}";

/// `(emoji, count, users)` of a message's reactions.
fn reactions_of(m: &pb::Message) -> Vec<(String, u32, Vec<String>)> {
    m.reactions
        .iter()
        .map(|k| (k.emoji.clone(), k.count, k.users.clone()))
        .collect()
}

/// The pins `user` is shown in `conv`, as `(seq, pinned_by)`.
#[track_caller]
fn pins_of(w: &World, user: &str, conv: &str) -> Vec<(u64, String)> {
    let out = w.ok(
        user,
        Body::Pins(pb::PinListRequest {
            conversation_id: conv.into(),
        }),
    );
    match out.reply {
        Some(Body::PinsResult(r)) => {
            assert_eq!(r.conversation_id, conv);
            r.pins.into_iter().map(|p| (p.seq, p.pinned_by)).collect()
        }
        other => panic!("expected pins, got {other:?}"),
    }
}

pub fn reaction_is_pushed_counted_once_and_served(f: Fixture) {
    // Proves a reaction appends a `reaction` entry pushed to both users of a
    // 1:1 chat; history and a fresh sync serve the message with its totals
    // (kind, count, who, in order) and the entries in order; adding a
    // reaction twice or removing one you do not have is `ok` with seq 0 and
    // no push; removing the last one of a kind drops the kind; a sync from
    // a cursor gets the later changes; reactions are not unread messages.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "lunch?").seq;
    let out = w.ok("bob", react_body(AB, s, THUMBS, false));
    let seq = ok_seq(&out);
    assert_eq!(seq, 2);
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert_eq!((d[0].0.seq, d[0].0.sender.as_str()), (2, "bob"));
    assert_eq!(
        d[0].0.body,
        Some(pb::entry::Body::Reaction(pb::ReactionChange {
            seq: s,
            emoji: THUMBS.into(),
            removed: false,
        }))
    );
    w.ok("alice", react_body(AB, s, THUMBS, false));
    w.ok("alice", react_body(AB, s, HEART, false));
    // Again: nothing changes, nothing is appended or pushed.
    let again = w.ok("bob", react_body(AB, s, THUMBS, false));
    assert_eq!(ok_seq(&again), 0);
    assert!(again.effects.is_empty());
    let none = w.ok("bob", react_body(AB, s, HEART, true));
    assert_eq!(ok_seq(&none), 0);
    assert!(none.effects.is_empty());
    let want = vec![
        (THUMBS.to_owned(), 2, strings(&["bob", "alice"])),
        (HEART.to_owned(), 1, strings(&["alice"])),
    ];
    for user in ["alice", "bob"] {
        let h = w.history(user, AB);
        assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(reactions_of(&message_at(&h, s)), want, "{user}");
    }
    let synced = w.sync_all("bob");
    assert_eq!(reactions_of(&message_at(&synced, s)), want);
    let changes: Vec<_> = synced
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::Reaction(r)) => Some((e.sender.clone(), r.emoji.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("bob".to_owned(), THUMBS.to_owned()),
            ("alice".to_owned(), THUMBS.to_owned()),
            ("alice".to_owned(), HEART.to_owned())
        ]
    );
    // Take back: the heart was alice's only, so the kind goes.
    let out = w.ok("alice", react_body(AB, s, HEART, true));
    assert_eq!(ok_seq(&out), 5);
    let out = w.ok("bob", react_body(AB, s, THUMBS, true));
    assert_eq!(
        deliveries(&out.effects)[0].0.body,
        Some(pb::entry::Body::Reaction(pb::ReactionChange {
            seq: s,
            emoji: THUMBS.into(),
            removed: true,
        }))
    );
    let h = w.history("bob", AB);
    assert_eq!(
        reactions_of(&message_at(&h, s)),
        [(THUMBS.to_owned(), 1, strings(&["alice"]))]
    );
    // A sync that holds the message already gets only the changes after it.
    let later = w.sync(
        "alice",
        &[pb::Cursor {
            conversation_id: AB.into(),
            seq: 4,
        }],
        0,
    );
    assert_eq!(
        later.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(w.summary("bob", AB).unread, 1, "only alice's message");
}

pub fn reaction_in_group_reaches_members_and_respects_visibility(f: Fixture) {
    // Proves in a group a member's reaction is pushed to every member, and
    // that a reaction on what the caller cannot see is refused with a typed
    // error and changes nothing: not a member (NOT_MEMBER), a message from
    // before the caller joined a group that hides history, a seq past the
    // head, a seq of an entry that is not a message, a recalled message (all
    // NOT_FOUND), and a muted member (MUTED).
    let w = World::new(f);
    w.create_group_with("alice", "team", &["bob"], pb::JoinPolicy::Open, false);
    let old = w.send_group("alice", "team", "before carol").seq;
    w.ok(
        "alice",
        Body::GroupInvite(pb::GroupInvite {
            group_id: "team".into(),
            user_ids: strings(&["carol"]),
        }),
    );
    let s = w.send_group("bob", "team", "after carol").seq;
    let out = w.ok("carol", react_body(G, s, THUMBS, false));
    assert_eq!(
        deliveries(&out.effects)[0].1,
        strings(&["alice", "bob", "carol"])
    );
    let gone = w.send_group("bob", "team", "oops").seq;
    w.ok("bob", recall_body(G, gone));
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    let not_found = pb::ErrorCode::NotFound;
    assert_eq!(
        w.err("dave", react_body(G, s, THUMBS, false)),
        pb::ErrorCode::NotMember
    );
    assert_eq!(w.err("carol", react_body(G, old, THUMBS, false)), not_found);
    assert_eq!(
        w.err("carol", react_body(G, head + 1, THUMBS, false)),
        not_found
    );
    assert_eq!(w.err("alice", react_body(G, 1, THUMBS, false)), not_found);
    assert_eq!(
        w.err("carol", react_body(G, gone, THUMBS, false)),
        not_found
    );
    assert_eq!(w.err("alice", react_body(G, gone, THUMBS, true)), not_found);
    w.ok(
        "alice",
        Body::GroupMute(pb::GroupMute {
            group_id: "team".into(),
            user_id: "bob".into(),
            duration_ms: 60_000,
        }),
    );
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    assert_eq!(
        w.err("bob", react_body(G, s, HEART, false)),
        pb::ErrorCode::Muted
    );
    assert_eq!(
        w.store().heads(&[G]).unwrap()[0].seq,
        head,
        "nothing appended"
    );
    let h = w.history("alice", G);
    assert!(message_at(&h, old).reactions.is_empty());
    assert!(message_at(&h, gone).reactions.is_empty());
    assert_eq!(
        reactions_of(&message_at(&h, s)),
        [(THUMBS.to_owned(), 1, strings(&["carol"]))]
    );
    // A 1:1 chat between users one of whom blocked the other: BLOCKED.
    let d = w.send_dm("alice", "bob", "hi").seq;
    w.ok(
        "bob",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "alice".into(),
            blocked: true,
        }),
    );
    assert_eq!(
        w.err("alice", react_body(AB, d, THUMBS, false)),
        pb::ErrorCode::Blocked
    );
}

pub fn reaction_limits_and_bad_strings_are_refused(f: Fixture) {
    // Proves the documented limits: a reaction string that is empty, over 32
    // bytes or holds whitespace is INVALID_ARGUMENT; the 21st kind on one
    // message and the 101st user of one kind are LIMIT_REACHED; each refusal
    // changes nothing.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "x").seq;
    let long = "\u{1f600}".repeat(9);
    for bad in ["", "a b", "\t", long.as_str()] {
        assert_eq!(
            w.err("bob", react_body(AB, s, bad, false)),
            pb::ErrorCode::InvalidArgument,
            "{bad:?}"
        );
    }
    for i in 0..20 {
        w.ok("bob", react_body(AB, s, &format!(":k{i}:"), false));
    }
    assert_eq!(
        w.err("alice", react_body(AB, s, ":k20:", false)),
        pb::ErrorCode::LimitReached
    );
    // An existing kind still takes another user.
    w.ok("alice", react_body(AB, s, ":k3:", false));
    let m = message_at(&w.history("alice", AB), s);
    assert_eq!(m.reactions.len(), 20);
    let members: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    w.create_group("alice", "team", &refs);
    let g = w.send_group("alice", "team", "vote").seq;
    for u in &members[..100] {
        w.ok(u, react_body(G, g, THUMBS, false));
    }
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    assert_eq!(
        w.err("u100", react_body(G, g, THUMBS, false)),
        pb::ErrorCode::LimitReached
    );
    assert_eq!(w.store().heads(&[G]).unwrap()[0].seq, head);
    let m = message_at(&w.history("alice", G), g);
    assert_eq!((m.reactions.len(), m.reactions[0].count), (1, 100));
    assert_eq!(m.reactions[0].users.len(), 100);
}

pub fn pin_and_unpin_are_pushed_and_listed(f: Fixture) {
    // Proves either user of a 1:1 chat pins a message: a `pin` entry is
    // pushed to both and the pin is listed (newest first, with who pinned
    // it); pinning a pinned message and unpinning one that is not pinned are
    // `ok` with seq 0; a recalled message cannot be pinned (NOT_FOUND) but
    // its pin can be taken off; no such seq is NOT_FOUND; a stranger gets
    // NOT_MEMBER.
    let w = World::new(f);
    let a = w.send_dm("alice", "bob", "address").seq;
    let b = w.send_dm("alice", "bob", "time").seq;
    let out = w.ok("bob", pin_body(AB, a, false));
    assert_eq!(ok_seq(&out), 3);
    let d = deliveries(&out.effects);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert_eq!(
        d[0].0.body,
        Some(pb::entry::Body::Pin(pb::PinChange {
            seq: a,
            unpinned: false
        }))
    );
    w.ok("alice", pin_body(AB, b, false));
    let again = w.ok("alice", pin_body(AB, a, false));
    assert_eq!((ok_seq(&again), again.effects.len()), (0, 0));
    let want = vec![(b, "alice".to_owned()), (a, "bob".to_owned())];
    assert_eq!(pins_of(&w, "alice", AB), want);
    assert_eq!(pins_of(&w, "bob", AB), want);
    w.ok("alice", recall_body(AB, b));
    assert_eq!(pins_of(&w, "bob", AB), want, "a recall leaves the pin");
    let head = w.store().heads(&[AB]).unwrap()[0].seq;
    assert_eq!(
        w.err("alice", pin_body(AB, head + 1, false)),
        pb::ErrorCode::NotFound
    );
    let c = w.send_dm("bob", "alice", "later").seq;
    w.ok("bob", recall_body(AB, c));
    assert_eq!(
        w.err("bob", pin_body(AB, c, false)),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err("carol", pin_body(AB, a, false)),
        pb::ErrorCode::NotMember
    );
    let out = w.ok("bob", pin_body(AB, b, true));
    assert!(ok_seq(&out) > 0, "the recalled message's pin comes off");
    let none = w.ok("bob", pin_body(AB, b, true));
    assert_eq!((ok_seq(&none), none.effects.len()), (0, 0));
    assert_eq!(pins_of(&w, "alice", AB), [(a, "bob".to_owned())]);
    let pins_in_log = w
        .sync_all("alice")
        .iter()
        .filter(|e| matches!(e.body, Some(pb::entry::Body::Pin(_))))
        .count();
    assert_eq!(pins_in_log, 3, "pin, pin, unpin");
}

pub fn pin_in_group_needs_an_admin_and_is_bounded(f: Fixture) {
    // Proves in a group only the owner and admins pin or unpin (a member
    // gets PERMISSION_DENIED and nothing changes); a member who joined a
    // group hiding history is not shown pins of messages before their join;
    // the 51st pin is LIMIT_REACHED.
    let w = World::new(f);
    w.create_group_with(
        "alice",
        "team",
        &["bob", "carol"],
        pb::JoinPolicy::Open,
        false,
    );
    w.ok("alice", role_body("team", "carol", pb::GroupRole::Admin));
    let first = w.send_group("bob", "team", "first").seq;
    let head = w.store().heads(&[G]).unwrap()[0].seq;
    assert_eq!(
        w.err("bob", pin_body(G, first, false)),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(w.store().heads(&[G]).unwrap()[0].seq, head);
    w.ok("carol", pin_body(G, first, false));
    w.ok(
        "alice",
        Body::GroupInvite(pb::GroupInvite {
            group_id: "team".into(),
            user_ids: strings(&["dave"]),
        }),
    );
    let mut seqs = vec![first];
    for i in 1..50 {
        let s = w.send_group("bob", "team", &format!("m{i}")).seq;
        w.ok("alice", pin_body(G, s, false));
        seqs.push(s);
    }
    let extra = w.send_group("bob", "team", "one too many").seq;
    assert_eq!(
        w.err("alice", pin_body(G, extra, false)),
        pb::ErrorCode::LimitReached
    );
    assert_eq!(pins_of(&w, "bob", G).len(), 50);
    let dave = pins_of(&w, "dave", G);
    assert_eq!(
        dave.len(),
        49,
        "the pin of a message before dave joined is hidden"
    );
    assert!(dave.iter().all(|(s, _)| *s != first));
    assert_eq!(
        w.err("bob", pin_body(G, first, true)),
        pb::ErrorCode::PermissionDenied
    );
    w.ok("alice", pin_body(G, first, true));
    w.ok("alice", pin_body(G, extra, false));
    assert_eq!(pins_of(&w, "bob", G)[0], (extra, "alice".to_owned()));
}

pub fn store_annotate_effect_is_compare_and_set(f: Fixture) {
    // Proves the store's annotate effect writes the record only while it
    // holds the bytes expected (and, when asked, the message is live),
    // appends nothing otherwise, and deletes the record when the new bytes
    // are empty.
    let s = f.store;
    s.append_batch(T0, &[plain_append("d:a:b", "a", "x", T0)])
        .unwrap();
    let key = Annotation::Reactions(1);
    let annotate = |seq: u64, live: bool, expect: &[u8], new: &[u8]| Append {
        conversation: "d:a:b".into(),
        entry: pb::Entry {
            sender: "b".into(),
            time_ms: T0 + 1,
            body: Some(pb::entry::Body::Reaction(pb::ReactionChange {
                seq,
                emoji: "x".into(),
                removed: false,
            })),
            ..Default::default()
        },
        activity: false,
        dedup: None,
        member_of: None,
        effect: AppendEffect::Annotate {
            key,
            seq,
            live_message: live,
            expect: expect.to_vec(),
            new: new.to_vec(),
        },
        participants: vec![],
    };
    assert_eq!(s.annotations("d:a:b", &[key]).unwrap(), [None]);
    let r = s
        .append_batch(T0 + 1, &[annotate(1, true, b"", b"one")])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 2);
    let r = s
        .append_batch(
            T0 + 2,
            &[
                annotate(1, true, b"", b"two"),
                annotate(2, true, b"one", b"two"),
                annotate(1, true, b"one", b"two"),
            ],
        )
        .unwrap();
    assert_eq!(r[0], Err(AppendRefused::AnnotationChanged), "stale bytes");
    assert_eq!(r[1], Err(AppendRefused::AnnotationChanged), "not a message");
    assert_eq!(r[2].unwrap().seq, 3);
    assert_eq!(s.heads(&["d:a:b"]).unwrap()[0].seq, 3);
    assert_eq!(
        s.annotations("d:a:b", &[key, Annotation::Pins]).unwrap(),
        [Some(b"two".to_vec()), None]
    );
    let r = s
        .append_batch(T0 + 3, &[annotate(1, false, b"two", b"")])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 4);
    assert_eq!(s.annotations("d:a:b", &[key]).unwrap(), [None]);
}

// ---------------------------------------------------------------------------
// Threads and to-dos (issue 19)
// ---------------------------------------------------------------------------

/// A thread reply in `group` under `root`.
#[track_caller]
fn thread_reply(w: &World, from: &str, to: To<'_>, root: u64, text: &str) -> Outcome {
    let cmid = w.next_cmid();
    let Body::Send(mut s) = send_body(&cmid, to, text) else {
        unreachable!()
    };
    s.thread_root_seq = root;
    w.call(from, Body::Send(s))
}

/// One page of a thread.
#[track_caller]
fn thread_page(
    w: &World,
    user: &str,
    conv: &str,
    root: u64,
    before: u64,
    limit: u32,
) -> pb::HistoryResult {
    let out = w.ok(
        user,
        Body::History(pb::HistoryRequest {
            conversation_id: conv.into(),
            before_seq: before,
            limit,
            thread_root_seq: root,
        }),
    );
    match out.reply {
        Some(Body::HistoryResult(r)) => r,
        other => panic!("expected a history result, got {other:?}"),
    }
}

/// `user`'s view of the threads under `roots`.
#[track_caller]
fn thread_info(w: &World, user: &str, conv: &str, roots: &[u64]) -> Vec<pb::ThreadInfo> {
    let out = w.ok(
        user,
        Body::ThreadInfo(pb::ThreadInfoRequest {
            conversation_id: conv.into(),
            root_seqs: roots.to_vec(),
        }),
    );
    match out.reply {
        Some(Body::ThreadInfoResult(r)) => r.threads,
        other => panic!("expected thread info, got {other:?}"),
    }
}

fn thread_read_body(conv: &str, root: u64, up_to: u64) -> Body {
    Body::ThreadRead(pb::ThreadReadRequest {
        conversation_id: conv.into(),
        root_seq: root,
        up_to_seq: up_to,
    })
}

fn todo_body(conv: &str, seq: u64, action: pb::TodoAction, assignees: &[&str]) -> Body {
    Body::Todo(pb::TodoRequest {
        conversation_id: conv.into(),
        seq,
        action: action as i32,
        assignees: strings(assignees),
    })
}

#[track_caller]
fn todo_list(w: &World, user: &str, after: Option<pb::Cursor>, limit: u32) -> pb::TodoListResult {
    match w
        .ok(user, Body::TodoList(pb::TodoListRequest { limit, after }))
        .reply
    {
        Some(Body::TodoListResult(r)) => r,
        other => panic!("expected a to-do list, got {other:?}"),
    }
}

fn head_of(w: &World, conv: &str) -> u64 {
    w.store().heads(&[conv]).expect("heads")[0].seq
}

fn summary_of(entries: &[pb::Entry], seq: u64) -> Option<pb::ThreadSummary> {
    message_at(entries, seq).thread
}

pub fn thread_replies_are_log_entries_with_summary_and_history(f: Fixture) {
    // Proves a thread reply is a message of the parent conversation's log
    // carrying thread_root_seq, pushed to every member and synced to a
    // device that was offline; history serves the root with its summary
    // (reply count, last reply) and pages the thread newest page first.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let root = w.send_group("alice", "team", "lunch?").seq;
    w.send_group("carol", "team", "unrelated");
    let r1 = ack(&thread_reply(&w, "bob", To::Group("team"), root, "yes")).seq;
    let out = thread_reply(&w, "carol", To::Group("team"), root, "me too");
    let r2 = ack(&out).seq;
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob", "carol"]));
    assert!(matches!(&d[0].0.body, Some(pb::entry::Body::Message(m)) if m.thread_root_seq == root));
    w.send_group("alice", "team", "after");
    let r3 = ack(&thread_reply(&w, "alice", To::Group("team"), root, "noon")).seq;

    let h = w.history("bob", G);
    assert_eq!(
        summary_of(&h, root),
        Some(pb::ThreadSummary {
            reply_count: 3,
            last_reply_seq: r3,
        })
    );
    assert_eq!(message_at(&h, r1).thread_root_seq, root);
    assert_eq!(summary_of(&h, r1), None, "a reply has no thread of its own");

    let p = thread_page(&w, "bob", G, root, 0, 2);
    assert_eq!(
        p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [r2, r3]
    );
    assert!(p.more);
    let p = thread_page(&w, "bob", G, root, r2, 2);
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [r1]);
    assert_eq!(texts(&p.entries), ["yes"]);
    assert!(!p.more);

    // A device that was offline gets the replies by sync, in log order.
    let synced = w.sync_all("bob");
    let replies: Vec<u64> = synced
        .iter()
        .filter(
            |e| matches!(&e.body, Some(pb::entry::Body::Message(m)) if m.thread_root_seq == root),
        )
        .map(|e| e.seq)
        .collect();
    assert_eq!(replies, [r1, r2, r3]);

    // 1:1 chats have threads too.
    let s = w.send_dm("alice", "bob", "q").seq;
    ack(&thread_reply(&w, "bob", To::User("alice"), s, "a"));
    assert_eq!(
        summary_of(&w.history("alice", AB), s).map(|t| t.reply_count),
        Some(1)
    );
}

pub fn thread_unread_per_reader(f: Fixture) {
    // Proves each reader has a read mark per thread: unread counts the
    // replies after it, a reader's own reply moves their mark, the mark only
    // moves forward, and every device of the reader sees it.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let root = w.send_group("alice", "team", "plan").seq;
    let r1 = ack(&thread_reply(&w, "bob", To::Group("team"), root, "a")).seq;
    let r2 = ack(&thread_reply(&w, "carol", To::Group("team"), root, "b")).seq;
    let other = w.send_group("alice", "team", "no thread").seq;

    let t = &thread_info(&w, "alice", G, &[root, other])[..];
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].root_seq, t[0].read_seq, t[0].unread), (root, 0, 2));
    assert_eq!(
        t[0].summary.map(|s| (s.reply_count, s.last_reply_seq)),
        Some((2, r2))
    );
    assert_eq!((t[1].root_seq, t[1].unread), (other, 0));
    let t = thread_info(&w, "bob", G, &[root]);
    assert_eq!(
        (t[0].read_seq, t[0].unread),
        (r1, 1),
        "bob's own reply is read"
    );

    assert_eq!(ok_seq(&w.ok("alice", thread_read_body(G, root, r1))), 0);
    assert_eq!(thread_info(&w, "alice", G, &[root])[0].unread, 1);
    w.ok("alice", thread_read_body(G, root, r2));
    w.ok("alice", thread_read_body(G, root, r1));
    let t = thread_info(&w, "alice", G, &[root]);
    assert_eq!(
        (t[0].read_seq, t[0].unread),
        (r2, 0),
        "a mark never moves back"
    );
    let later = ack(&thread_reply(&w, "bob", To::Group("team"), root, "c")).seq;
    let t = thread_info(&w, "alice", G, &[root]);
    assert_eq!((t[0].read_seq, t[0].unread), (r2, 1));
    assert_eq!(t[0].summary.map(|s| s.last_reply_seq), Some(later));

    // Bad marks change nothing.
    let bad = pb::ErrorCode::InvalidArgument;
    assert_eq!(w.err("alice", thread_read_body(G, root, root)), bad);
    assert_eq!(w.err("alice", thread_read_body(G, root, later + 100)), bad);
    assert_eq!(
        w.err("dave", thread_read_body(G, root, later)),
        pb::ErrorCode::NotMember
    );
    assert_eq!(thread_info(&w, "alice", G, &[root])[0].read_seq, r2);
}

pub fn thread_reply_bad_input_is_refused(f: Fixture) {
    // Proves a thread reply to a recalled, missing, non-message, unseen or
    // non-root message gets a typed error and stores nothing.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let root = w.send_group("alice", "team", "x").seq;
    let reply = ack(&thread_reply(&w, "bob", To::Group("team"), root, "r")).seq;
    let gone = w.send_group("alice", "team", "gone").seq;
    let tomb = ok_seq(&w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq: gone,
        }),
    ));
    // carol joins without history: she does not see `root`.
    w.ok(
        "carol",
        Body::GroupJoin(pb::GroupJoin {
            group_id: "team".into(),
            message: String::new(),
        }),
    );
    let head = head_of(&w, G);
    let code = |user: &str, root: u64| {
        let out = thread_reply(&w, user, To::Group("team"), root, "no");
        match out.reply {
            Some(Body::Error(e)) => e.code(),
            other => panic!("expected an error, got {other:?}"),
        }
    };
    assert_eq!(code("bob", gone), pb::ErrorCode::MessageRecalled);
    assert_eq!(code("bob", head + 5), pb::ErrorCode::NotFound);
    assert_eq!(
        code("bob", tomb),
        pb::ErrorCode::NotFound,
        "a recall entry is no message"
    );
    assert_eq!(code("carol", root), pb::ErrorCode::NotFound, "unseen");
    assert_eq!(
        code("bob", reply),
        pb::ErrorCode::InvalidArgument,
        "threads do not nest"
    );
    assert_eq!(code("dave", root), pb::ErrorCode::NotMember);
    assert_eq!(head_of(&w, G), head, "nothing was stored");
    let t = thread_info(&w, "alice", G, &[root, gone]);
    assert_eq!(t[0].summary.map(|s| s.reply_count), Some(1));
    assert_eq!(t[1].summary.map(|s| s.reply_count), Some(0));
    assert_eq!(
        w.err(
            "carol",
            Body::History(pb::HistoryRequest {
                conversation_id: G.into(),
                before_seq: 0,
                limit: 0,
                thread_root_seq: root,
            })
        ),
        pb::ErrorCode::NotFound,
        "an unseen thread's history"
    );
}

pub fn thread_recall_of_a_reply_updates_the_summary(f: Fixture) {
    // Proves recalling a thread reply takes it out of the thread: the
    // summary's count and last reply go back, thread history skips it, and
    // the recall entry reaches every member like any recall.
    let w = World::new(f);
    let root = w.send_dm("alice", "bob", "q").seq;
    let r1 = ack(&thread_reply(&w, "bob", To::User("alice"), root, "a1")).seq;
    let r2 = ack(&thread_reply(&w, "bob", To::User("alice"), root, "a2")).seq;
    let out = w.ok(
        "bob",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: r2,
        }),
    );
    assert_eq!(deliveries(&out.effects)[0].1, strings(&["alice", "bob"]));
    let h = w.history("alice", AB);
    assert_eq!(
        summary_of(&h, root),
        Some(pb::ThreadSummary {
            reply_count: 1,
            last_reply_seq: r1,
        })
    );
    let p = thread_page(&w, "alice", AB, root, 0, 0);
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [r1]);
    w.ok(
        "bob",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: r1,
        }),
    );
    assert_eq!(summary_of(&w.history("alice", AB), root), None);
    // A recalled root keeps its replies readable but takes no new ones.
    let r3 = ack(&thread_reply(&w, "bob", To::User("alice"), root, "a3")).seq;
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: root,
        }),
    );
    let p = thread_page(&w, "bob", AB, root, 0, 0);
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [r3]);
    let out = thread_reply(&w, "bob", To::User("alice"), root, "a4");
    assert!(
        matches!(out.reply, Some(Body::Error(e)) if e.code() == pb::ErrorCode::MessageRecalled)
    );
}

pub fn todo_create_done_undo_and_list(f: Fixture) {
    // Proves a message becomes a to-do for some members: a `todo` entry is
    // pushed to every member, each assignee lists it as open until they
    // mark it done (for themself), undo opens it again, and every device
    // converges on the entries by sync.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol", "dave"]);
    let s = w.send_group("alice", "team", "ship it").seq;
    let out = w.ok(
        "alice",
        todo_body(G, s, pb::TodoAction::Create, &["bob", "carol", "bob"]),
    );
    let created = ok_seq(&out);
    let d = deliveries(&out.effects);
    assert_eq!(d[0].1, strings(&["alice", "bob", "carol", "dave"]));
    assert_eq!(
        d[0].0.body,
        Some(pb::entry::Body::Todo(pb::TodoEvent {
            seq: s,
            action: pb::TodoAction::Create as i32,
            assignees: strings(&["bob", "carol"]),
        }))
    );
    for user in ["bob", "carol"] {
        let l = todo_list(&w, user, None, 0);
        assert_eq!(l.todos.len(), 1, "{user}");
        let t = &l.todos[0];
        assert_eq!(
            (t.conversation_id.as_str(), t.seq, t.creator.as_str()),
            (G, s, "alice")
        );
        assert_eq!(t.assignees.len(), 2);
        assert!(l.next.is_none());
    }
    assert!(todo_list(&w, "dave", None, 0).todos.is_empty());

    let done = ok_seq(&w.ok("bob", todo_body(G, s, pb::TodoAction::Done, &[])));
    assert!(done > created);
    assert!(todo_list(&w, "bob", None, 0).todos.is_empty());
    let carol = todo_list(&w, "carol", None, 0).todos;
    assert_eq!(carol.len(), 1, "done is per assignee");
    assert!(
        carol[0]
            .assignees
            .iter()
            .any(|a| a.user_id == "bob" && a.done && a.done_ms > 0)
    );
    assert_eq!(
        ok_seq(&w.ok("bob", todo_body(G, s, pb::TodoAction::Done, &[]))),
        0,
        "already done"
    );
    let undo = ok_seq(&w.ok("bob", todo_body(G, s, pb::TodoAction::Undo, &[])));
    assert!(undo > done);
    assert_eq!(todo_list(&w, "bob", None, 0).todos.len(), 1);

    let actions: Vec<(String, i32)> = w
        .sync_all("carol")
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::Todo(t)) if t.seq == s => Some((e.sender.clone(), t.action)),
            _ => None,
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("alice".to_owned(), pb::TodoAction::Create as i32),
            ("bob".to_owned(), pb::TodoAction::Done as i32),
            ("bob".to_owned(), pb::TodoAction::Undo as i32),
        ]
    );
}

pub fn todo_bad_input_is_refused(f: Fixture) {
    // Proves a to-do for a non-member, too many assignees, on a recalled or
    // missing message, twice on one message, and done by a non-assignee or
    // a non-member each get a typed error and change nothing.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let s = w.send_group("alice", "team", "task").seq;
    let gone = w.send_group("alice", "team", "gone").seq;
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: G.into(),
            seq: gone,
        }),
    );
    let head = head_of(&w, G);
    let create = pb::TodoAction::Create;
    assert_eq!(
        w.err("alice", todo_body(G, s, create, &["bob", "zed"])),
        pb::ErrorCode::AssigneeNotMember
    );
    let many: Vec<String> = (0..21).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        w.err("alice", todo_body(G, s, create, &many)),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.err("alice", todo_body(G, s, create, &[])),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.err("alice", todo_body(G, gone, create, &["bob"])),
        pb::ErrorCode::MessageRecalled
    );
    assert_eq!(
        w.err("alice", todo_body(G, head + 9, create, &["bob"])),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        w.err("zed", todo_body(G, s, create, &["bob"])),
        pb::ErrorCode::NotMember
    );
    assert_eq!(
        w.err("bob", todo_body(G, s, pb::TodoAction::Done, &[])),
        pb::ErrorCode::NotFound
    );
    assert_eq!(head_of(&w, G), head, "nothing was stored");
    assert!(todo_list(&w, "bob", None, 0).todos.is_empty());

    w.ok("alice", todo_body(G, s, create, &["bob"]));
    assert_eq!(
        w.err("bob", todo_body(G, s, create, &["alice"])),
        pb::ErrorCode::AlreadyExists
    );
    assert_eq!(
        w.err("alice", todo_body(G, s, pb::TodoAction::Done, &[])),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.err("zed", todo_body(G, s, pb::TodoAction::Done, &[])),
        pb::ErrorCode::NotMember
    );
    let l = todo_list(&w, "bob", None, 0);
    assert_eq!(l.todos.len(), 1);
    assert!(l.todos[0].assignees.iter().all(|a| !a.done));
    // In a 1:1 chat only its two users can be assignees.
    let d = w.send_dm("alice", "bob", "dm task").seq;
    assert_eq!(
        w.err("alice", todo_body(AB, d, create, &["carol"])),
        pb::ErrorCode::AssigneeNotMember
    );
    w.ok("alice", todo_body(AB, d, create, &["alice", "bob"]));
    assert_eq!(todo_list(&w, "alice", None, 0).todos.len(), 1);
}

pub fn todo_list_pages(f: Fixture) {
    // Proves "my open to-dos" pages in (conversation, seq) order with a
    // cursor, bounded by the page size.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let mut seqs = Vec::new();
    for i in 0..3 {
        let s = w.send_group("alice", "team", &format!("t{i}")).seq;
        w.ok("alice", todo_body(G, s, pb::TodoAction::Create, &["bob"]));
        seqs.push(s);
    }
    let dm = w.send_dm("alice", "bob", "t3").seq;
    w.ok("alice", todo_body(AB, dm, pb::TodoAction::Create, &["bob"]));
    let mut got = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let l = todo_list(&w, "bob", after.take(), 3);
        assert!(l.todos.len() <= 3);
        got.extend(l.todos.iter().map(|t| (t.conversation_id.clone(), t.seq)));
        match l.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut want = vec![(AB.to_owned(), dm)];
    want.extend(seqs.iter().map(|&s| (G.to_owned(), s)));
    assert_eq!(got, want);
}

pub fn store_thread_index_and_todo_effects(f: Fixture) {
    // Proves the store side: a thread reply appends only under a message
    // that is not recalled and not itself a reply, the index answers counts
    // and pages, recall takes a reply out, and a to-do write is a
    // compare-and-set on its version.
    let s = f.store;
    let conv = "d:x:y";
    let reply = |root: u64, cmid: &str| {
        let mut a = plain_append(conv, "x", cmid, T0);
        if let Some(pb::entry::Body::Message(m)) = &mut a.entry.body {
            m.thread_root_seq = root;
        }
        a.effect = AppendEffect::ThreadReply { root_seq: root };
        a
    };
    let r = s
        .append_batch(
            T0,
            &[
                plain_append(conv, "x", "root", T0),
                reply(1, "a"),
                reply(1, "b"),
            ],
        )
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let r = s
        .append_batch(T0, &[reply(2, "c"), reply(9, "d"), reply(1, "e")])
        .unwrap();
    assert_eq!(r[0], Err(AppendRefused::NotThreadable), "under a reply");
    assert_eq!(r[1], Err(AppendRefused::NotThreadable), "missing root");
    assert_eq!(r[2].map(|a| a.seq), Ok(4));
    let st = s.thread_stats(conv, &[(1, 2), (2, 0), (7, 0)]).unwrap();
    assert_eq!((st[0].replies, st[0].after, st[0].last_seq), (3, 2, 4));
    assert_eq!(st[1].replies, 0);
    assert_eq!(st[2].replies, 0);
    assert_eq!(s.thread_replies(conv, 1, 0, 2).unwrap(), [4, 3]);
    assert_eq!(s.thread_replies(conv, 1, 3, 10).unwrap(), [2]);
    let mut recall = plain_append(conv, "x", "", T0);
    recall.dedup = None;
    recall.effect = AppendEffect::Recall { seq: 4 };
    assert!(s.append_batch(T0, &[recall]).unwrap()[0].is_ok());
    let st = s.thread_stats(conv, &[(1, 0)]).unwrap();
    assert_eq!((st[0].replies, st[0].last_seq), (2, 3));
    let got = s.entries_at(conv, &[3, 99, 1]).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 1]);

    s.mark_thread_read("x", conv, 1, 3).unwrap();
    s.mark_thread_read("x", conv, 1, 2).unwrap();
    assert_eq!(s.thread_read_marks("x", conv, &[1, 2]).unwrap(), [3, 0]);

    let todo = |version: u32| {
        let mut a = plain_append(conv, "x", "", T0);
        a.dedup = None;
        a.entry.body = Some(pb::entry::Body::Todo(pb::TodoEvent {
            seq: 1,
            action: 1,
            assignees: vec![],
        }));
        a.effect = AppendEffect::Todo {
            seq: 1,
            expect_version: version,
            record: Box::new(tern_backend::store::TodoRecord {
                todo: Some(pb::Todo {
                    conversation_id: conv.into(),
                    seq: 1,
                    creator: format!("v{version}"),
                    ..Default::default()
                }),
                version: 0,
            }),
        };
        a
    };
    let r = s.append_batch(T0, &[todo(0), todo(0), todo(1)]).unwrap();
    assert!(r[0].is_ok());
    assert_eq!(r[1], Err(AppendRefused::TodoChanged));
    assert!(r[2].is_ok());
    let rec = s.todo(conv, 1).unwrap().expect("record");
    assert_eq!(
        (rec.version, rec.todo.map(|t| t.creator)),
        (2, Some("v1".to_owned()))
    );
    assert_eq!(s.todo(conv, 2).unwrap(), None);

    s.set_todo_open("x", conv, 5, true).unwrap();
    s.set_todo_open("x", "g:a", 1, true).unwrap();
    s.set_todo_open("x", conv, 1, true).unwrap();
    s.set_todo_open("x", conv, 1, true).unwrap();
    s.set_todo_open("xx", conv, 1, true).unwrap();
    let all = s.todo_index("x", None, 10).unwrap();
    assert_eq!(
        all,
        [
            (conv.to_owned(), 1),
            (conv.to_owned(), 5),
            ("g:a".to_owned(), 1)
        ]
    );
    assert_eq!(
        s.todo_index("x", Some((conv, 1)), 1).unwrap(),
        [(conv.to_owned(), 5)]
    );
    s.set_todo_open("x", conv, 5, false).unwrap();
    assert_eq!(
        s.todo_index("x", Some((conv, 1)), 10).unwrap(),
        [("g:a".to_owned(), 1)]
    );
}

// ---- calls (docs/protocol.md, "Calls") ----

pub fn invite_body(conv: &str, invitees: &[&str]) -> Body {
    Body::Call(pb::CallAction {
        kind: pb::CallActionKind::Invite as i32,
        call_id: String::new(),
        conversation_id: conv.into(),
        invitees: strings(invitees),
        video: false,
    })
}

pub fn call_body(kind: pb::CallActionKind, id: &str) -> Body {
    Body::Call(pb::CallAction {
        kind: kind as i32,
        call_id: id.into(),
        ..Default::default()
    })
}

pub fn signal_body(id: &str, to: &str, payload: &str) -> Body {
    Body::CallSignal(pb::CallSignal {
        call_id: id.into(),
        to_user_id: to.into(),
        to_device_id: String::new(),
        kind: pb::CallSignalKind::Offer as i32,
        payload: payload.into(),
    })
}

fn ok_id(out: &Outcome) -> String {
    match &out.reply {
        Some(Body::Ok(o)) => o.id.clone(),
        other => panic!("expected ok, got {other:?}"),
    }
}

/// The call pushes of `effects`: (event or signal body, sorted recipients).
fn call_pushes(effects: &[Effect]) -> Vec<(Body, Vec<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Call { recipients, body } => {
                let mut r = recipients.to_vec();
                r.sort();
                Some((body.clone(), r))
            }
            _ => None,
        })
        .collect()
}

fn call_event_kinds(effects: &[Effect]) -> Vec<pb::CallEventKind> {
    call_pushes(effects)
        .into_iter()
        .filter_map(|(b, _)| match b {
            Body::CallEvent(e) => Some(e.kind()),
            _ => None,
        })
        .collect()
}

fn call_records(entries: &[pb::Entry]) -> Vec<pb::CallRecord> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::CallRecord(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub fn call_ring_accept_signal_hangup_records_the_call(f: Fixture) {
    // Proves a 1:1 call end to end in the domain: the invite answers `ok`
    // with the call id and rings both users' devices (bob rung, alice's
    // other devices told); bob's accept pushes ACCEPTED (with his device,
    // so his other devices stop ringing); SDP is relayed to bob only; bob's
    // hang-up ends it: LEFT and ENDED (COMPLETED, duration from the answer)
    // to both, and a `CallRecord` entry appended to the conversation that
    // both users read in history and sync. The ended call then refuses an
    // accept and a signal with CALL_ENDED.
    let w = World::new(f);
    let started = w.now();
    let out = w.ok("alice", invite_body(AB, &[]));
    let id = ok_id(&out);
    assert!(!id.is_empty());
    let pushes = call_pushes(&out.effects);
    assert_eq!(pushes.len(), 1);
    let Body::CallEvent(ring) = &pushes[0].0 else {
        panic!("{pushes:?}")
    };
    assert_eq!(pushes[0].1, strings(&["alice", "bob"]));
    assert_eq!(ring.kind(), pb::CallEventKind::Ringing);
    assert_eq!(
        (ring.caller_id.as_str(), ring.conversation_id.as_str()),
        ("alice", AB)
    );
    assert_eq!(ring.participants, strings(&["alice", "bob"]));

    let out = w.ok("bob", call_body(pb::CallActionKind::Accept, &id));
    let pushes = call_pushes(&out.effects);
    let Body::CallEvent(acc) = &pushes[0].0 else {
        panic!("{pushes:?}")
    };
    assert_eq!(acc.kind(), pb::CallEventKind::Accepted);
    assert_eq!(
        (acc.user_id.as_str(), acc.device_id.as_str()),
        ("bob", "bob-phone")
    );
    assert_eq!(pushes[0].1, strings(&["alice", "bob"]));
    let answered_at = w.now() - 1;

    let out = w.ok("alice", signal_body(&id, "bob", "v=0 offer"));
    let pushes = call_pushes(&out.effects);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].1, strings(&["bob"]));
    let Body::CallSignalEvent(sig) = &pushes[0].0 else {
        panic!("{pushes:?}")
    };
    assert_eq!(
        (sig.from_user_id.as_str(), sig.payload.as_str()),
        ("alice", "v=0 offer")
    );
    w.ok("bob", signal_body(&id, "alice", "v=0 answer"));

    w.advance(5_000);
    let ended_at = w.now();
    let out = w.ok("bob", call_body(pb::CallActionKind::Hangup, &id));
    assert_eq!(
        call_event_kinds(&out.effects),
        [pb::CallEventKind::Left, pb::CallEventKind::Ended]
    );
    let d = deliveries(&out.effects);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, strings(&["alice", "bob"]));
    assert_eq!(ok_seq(&out), d[0].0.seq);
    assert_eq!(d[0].0.sender, "alice", "the record is the caller's entry");
    let want = pb::CallRecord {
        call_id: id.clone(),
        outcome: pb::CallOutcome::Completed as i32,
        participants: strings(&["alice", "bob"]),
        answered: strings(&["bob"]),
        video: false,
        started_ms: started,
        duration_ms: ended_at - answered_at,
    };
    for user in ["alice", "bob"] {
        assert_eq!(
            call_records(&w.history(user, AB)),
            std::slice::from_ref(&want)
        );
        assert_eq!(call_records(&w.sync_all(user)), std::slice::from_ref(&want));
    }
    assert_eq!(
        w.err("bob", call_body(pb::CallActionKind::Accept, &id)),
        pb::ErrorCode::CallEnded
    );
    assert_eq!(
        w.err("alice", signal_body(&id, "bob", "late")),
        pb::ErrorCode::CallEnded
    );
}

pub fn call_unanswered_rejected_or_cancelled_ends_with_that_outcome(f: Fixture) {
    // Proves the other three endings, each with its record: a ring nobody
    // answers becomes MISSED once `call_ring_timeout_ms` passed (poll_expired
    // pushes MISSED then ENDED, not before); bob declining ends REJECTED;
    // alice hanging up before an answer ends CANCELLED; records carry no
    // duration and nobody answered.
    let w = World::new(f);
    let timeout = w.domain.config().call_ring_timeout_ms;
    let id = ok_id(&w.ok("alice", invite_body(AB, &[])));
    w.advance(timeout - 10);
    assert!(call_pushes(&w.domain.poll_expired(w.now())).is_empty());
    w.advance(10);
    let expired = w.domain.poll_expired(w.now());
    assert_eq!(
        call_event_kinds(&expired),
        [pb::CallEventKind::Missed, pb::CallEventKind::Ended]
    );
    assert_eq!(deliveries(&expired).len(), 1);
    assert_eq!(
        w.err("bob", call_body(pb::CallActionKind::Accept, &id)),
        pb::ErrorCode::CallEnded
    );

    let id2 = ok_id(&w.ok("alice", invite_body(AB, &[])));
    let out = w.ok("bob", call_body(pb::CallActionKind::Reject, &id2));
    assert_eq!(
        call_event_kinds(&out.effects),
        [pb::CallEventKind::Rejected, pb::CallEventKind::Ended]
    );
    let id3 = ok_id(&w.ok("alice", invite_body(AB, &[])));
    assert_eq!(
        w.err("bob", call_body(pb::CallActionKind::Cancel, &id3)),
        pb::ErrorCode::PermissionDenied,
        "only the caller cancels"
    );
    w.ok("alice", call_body(pb::CallActionKind::Cancel, &id3));

    let records = call_records(&w.history("bob", AB));
    let outcomes: Vec<_> = records
        .iter()
        .map(|r| (r.call_id.clone(), r.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (id, pb::CallOutcome::Missed),
            (id2, pb::CallOutcome::Rejected),
            (id3, pb::CallOutcome::Cancelled)
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.duration_ms == 0 && r.answered.is_empty())
    );
    assert!(w.domain.poll_expired(w.now() + timeout).is_empty());
}

pub fn group_call_rings_members_and_ends_when_one_is_left(f: Fixture) {
    // Proves a group call: the invite rings every other member (or only the
    // named invitees); one answers, one declines; when the caller leaves,
    // one participant is left and the call ends COMPLETED with its record in
    // the group's log for every member. A group larger than the participant
    // limit needs named invitees (LIMIT_REACHED otherwise), and an invitee
    // who is not a member is INVALID_ARGUMENT.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob", "carol"]);
    let out = w.ok("alice", invite_body(G, &[]));
    let id = ok_id(&out);
    let pushes = call_pushes(&out.effects);
    assert_eq!(pushes[0].1, strings(&["alice", "bob", "carol"]));
    w.ok("bob", call_body(pb::CallActionKind::Accept, &id));
    w.ok("carol", call_body(pb::CallActionKind::Reject, &id));
    let out = w.ok("alice", call_body(pb::CallActionKind::Hangup, &id));
    assert_eq!(
        call_event_kinds(&out.effects),
        [pb::CallEventKind::Left, pb::CallEventKind::Ended]
    );
    for user in ["alice", "bob", "carol"] {
        let r = call_records(&w.history(user, G));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome(), pb::CallOutcome::Completed);
        assert_eq!(r[0].answered, strings(&["bob"]));
    }

    let many: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    w.create_group("alice", "big", &refs);
    assert_eq!(
        w.err("alice", invite_body("g:big", &[])),
        pb::ErrorCode::LimitReached
    );
    let out = w.ok("alice", invite_body("g:big", &["m1", "m2"]));
    assert_eq!(
        call_pushes(&out.effects)[0].1,
        strings(&["alice", "m1", "m2"])
    );
    assert_eq!(
        w.err("alice", invite_body("g:big", &["bob"])),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn store_call_records_are_compare_and_set(f: Fixture) {
    // Proves the store's call records (issue 19, calls across nodes): a
    // create (expected version 0) succeeds once; each write needs the
    // version it read and bumps it, a stale write or remove changes
    // nothing; renewal answers which calls exist; of two removers of one
    // version only the first succeeds, and the call is then gone.
    let s = f.store;
    let (now, lease) = (T0, 60_000);
    assert_eq!(s.call("c1", now).unwrap(), None);
    assert!(s.put_call("c1", 0, b"one", now, lease).unwrap());
    assert!(!s.put_call("c1", 0, b"again", now, lease).unwrap());
    let slot = s.call("c1", now).unwrap().expect("stored");
    assert_eq!((slot.version, slot.state.as_slice()), (1, &b"one"[..]));
    assert!(s.put_call("c1", 1, b"two:\x00bytes", now, lease).unwrap());
    assert!(!s.put_call("c1", 1, b"stale", now, lease).unwrap());
    assert!(!s.remove_call("c1", 1).unwrap(), "stale remove");
    let slot = s.call("c1", now).unwrap().expect("stored");
    assert_eq!(
        (slot.version, slot.state.as_slice()),
        (2, &b"two:\x00bytes"[..])
    );
    assert_eq!(
        s.renew_calls(&["c1", "c2"], now, lease).unwrap(),
        [true, false]
    );
    assert!(s.remove_call("c1", 2).unwrap());
    assert!(!s.remove_call("c1", 2).unwrap(), "removed once");
    assert_eq!(s.call("c1", now).unwrap(), None);
    assert_eq!(s.renew_calls(&["c1"], now, lease).unwrap(), [false]);
}

pub fn store_call_lease_lapses_unless_renewed(f: Fixture) {
    // Proves a call's lease: a record not renewed is gone once its lease
    // has passed (renewal answers false, a create over it succeeds). The
    // Redis store uses Redis's clock for the lease, the embedded store the
    // time passed in, so this case moves both: the lease is 50 ms and the
    // case waits 300 ms of real time and passes a time 1 s later (a wait
    // past an expiry, not a speed threshold).
    let s = f.store;
    assert!(s.put_call("c1", 0, b"one", T0, 50).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let later = T0 + 1_000;
    assert_eq!(s.call("c1", later).unwrap(), None);
    assert_eq!(s.renew_calls(&["c1"], later, 50).unwrap(), [false]);
    assert!(s.put_call("c1", 0, b"new", later, 60_000).unwrap());
    assert_eq!(s.call("c1", later).unwrap().map(|c| c.version), Some(1));
}

pub fn call_taken_on_one_node_is_answered_and_recorded_on_another(f: Fixture) {
    // Proves calls across nodes on one store: two domains (two gateway
    // nodes) over the same store. Alice invites through node A; bob
    // accepts, signals and hangs up through node B, alice signals through
    // A; the call's events come from whichever node acted, and exactly one
    // `CallRecord` lands in the conversation (appended by node B, whose
    // hang-up ended it). Node A then forgets the call at its next lease
    // renewal, and a late action on either node is CALL_ENDED.
    let w = World::new(f);
    let b = Domain::new(w.store().clone(), Config::default());
    let on_b = |user: &str, body: Body| {
        let out = b.handle(&World::caller(user), w.now(), body);
        w.advance(1);
        out
    };
    let id = ok_id(&w.ok("alice", invite_body(AB, &[])));
    let out = on_b("bob", call_body(pb::CallActionKind::Accept, &id));
    assert_eq!(
        call_event_kinds(&out.effects),
        [pb::CallEventKind::Accepted]
    );
    let out = w.ok("alice", signal_body(&id, "bob", "v=0 offer"));
    assert_eq!(call_pushes(&out.effects)[0].1, strings(&["bob"]));
    let out = on_b("bob", signal_body(&id, "alice", "v=0 answer"));
    let pushes = call_pushes(&out.effects);
    assert_eq!(pushes.len(), 1, "{:?}", out.reply);
    assert_eq!(pushes[0].1, strings(&["alice"]));
    w.advance(2_000);
    let out = on_b("bob", call_body(pb::CallActionKind::Hangup, &id));
    assert_eq!(
        call_event_kinds(&out.effects),
        [pb::CallEventKind::Left, pb::CallEventKind::Ended]
    );
    assert_eq!(deliveries(&out.effects).len(), 1);
    let records = call_records(&w.history("alice", AB));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome(), pb::CallOutcome::Completed);
    assert_eq!(records[0].answered, strings(&["bob"]));
    assert!(records[0].duration_ms >= 2_000);
    // Node A's next polls (past a renewal) push nothing and append nothing.
    let lease = w.domain.config().call_lease_ms;
    w.advance(lease);
    assert!(w.domain.poll_expired(w.now()).is_empty());
    w.advance(w.domain.config().call_ring_timeout_ms);
    assert!(w.domain.poll_expired(w.now()).is_empty());
    assert_eq!(call_records(&w.history("alice", AB)).len(), 1);
    assert_eq!(
        w.err("alice", call_body(pb::CallActionKind::Hangup, &id)),
        pb::ErrorCode::CallEnded
    );
}

pub fn call_ring_timeout_is_the_owning_nodes_and_happens_once(f: Fixture) {
    // Proves who expires a ring with several nodes: the node that took the
    // invite. Node B polling past the timeout changes nothing; node A's
    // poll pushes MISSED and ENDED once and appends one record; polls of
    // both nodes afterwards push nothing. And a node renews the leases of
    // the calls it owns: an answered call outlives several leases while
    // its owner polls.
    let w = World::new(f);
    let b = Domain::new(w.store().clone(), Config::default());
    let timeout = w.domain.config().call_ring_timeout_ms;
    let id = ok_id(&w.ok("alice", invite_body(AB, &[])));
    w.advance(timeout + 1);
    assert!(b.poll_expired(w.now()).is_empty(), "not node B's call");
    let expired = w.domain.poll_expired(w.now());
    assert_eq!(
        call_event_kinds(&expired),
        [pb::CallEventKind::Missed, pb::CallEventKind::Ended]
    );
    assert_eq!(deliveries(&expired).len(), 1);
    assert!(w.domain.poll_expired(w.now() + 1).is_empty());
    assert!(b.poll_expired(w.now() + 1).is_empty());
    let records = call_records(&w.history("bob", AB));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].call_id, id);
    assert_eq!(records[0].outcome(), pb::CallOutcome::Missed);

    let id = ok_id(&w.ok("alice", invite_body(AB, &[])));
    let on_b = |user: &str, body: Body| b.handle(&World::caller(user), w.now(), body);
    on_b("bob", call_body(pb::CallActionKind::Accept, &id));
    let step = w.domain.config().call_lease_ms / 3;
    for _ in 0..10 {
        w.advance(step);
        assert!(w.domain.poll_expired(w.now()).is_empty());
    }
    let out = on_b("bob", signal_body(&id, "alice", "still here"));
    assert!(
        matches!(out.reply, Some(Body::Ok(_))),
        "the call lives on: {:?}",
        out.reply
    );
}

pub fn call_bad_input_gets_typed_errors_and_changes_nothing(f: Fixture) {
    // Proves each bad call request is refused with its code, pushes nothing
    // and writes nothing: a non-member calling a group (NOT_MEMBER) or a
    // third user calling into a 1:1 chat (NOT_MEMBER); a blocked peer
    // (BLOCKED); signalling from or to someone not in the call
    // (NOT_IN_CALL); an SDP over the limit (INVALID_ARGUMENT); an accept by
    // someone not rung (NOT_IN_CALL) or of an unknown call (CALL_ENDED);
    // the call itself goes on.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let heads = |w: &World| (w.history("alice", AB).len(), w.history("alice", G).len());
    let before = heads(&w);
    assert_eq!(w.err("dave", invite_body(G, &[])), pb::ErrorCode::NotMember);
    assert_eq!(
        w.err("carol", invite_body(AB, &[])),
        pb::ErrorCode::NotMember
    );
    let id = ok_id(&w.ok("alice", invite_body(AB, &[])));
    assert_eq!(
        w.err("carol", signal_body(&id, "bob", "x")),
        pb::ErrorCode::NotInCall
    );
    assert_eq!(
        w.err("alice", signal_body(&id, "carol", "x")),
        pb::ErrorCode::NotInCall
    );
    let big = "a".repeat(tern_protocol::validate::CALL_SIGNAL_BYTES_MAX + 1);
    assert_eq!(
        w.err("alice", signal_body(&id, "bob", &big)),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.err("carol", call_body(pb::CallActionKind::Accept, &id)),
        pb::ErrorCode::NotInCall
    );
    assert_eq!(
        w.err("bob", call_body(pb::CallActionKind::Accept, "c-none")),
        pb::ErrorCode::CallEnded
    );
    assert_eq!(heads(&w), before, "nothing written");
    // The call goes on: bob can still answer.
    w.ok("bob", call_body(pb::CallActionKind::Accept, &id));
    w.ok(
        "bob",
        Body::FriendBlock(pb::FriendBlock {
            user_id: "alice".into(),
            blocked: true,
        }),
    );
    assert_eq!(w.err("alice", invite_body(AB, &[])), pb::ErrorCode::Blocked);
}

// ---------------------------------------------------------------------------
// ---- search (issue 19) ----
// ---------------------------------------------------------------------------

/// A search request for `query` with every other field at its default.
pub fn search_req(query: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: query.into(),
        ..Default::default()
    }
}

impl World {
    /// One page of `user`'s search: its entries and cursor.
    #[track_caller]
    pub fn search(&self, user: &str, req: pb::SearchRequest) -> (Vec<pb::Entry>, String) {
        match self.ok(user, Body::Search(req)).reply {
            Some(Body::SearchResult(r)) => (r.entries, r.cursor),
            other => panic!("expected a search result, got {other:?}"),
        }
    }

    /// Every result of `user`'s search, page after page (at most 100 pages).
    #[track_caller]
    pub fn search_all(&self, user: &str, mut req: pb::SearchRequest) -> Vec<pb::Entry> {
        let mut all = Vec::new();
        for _ in 0..100 {
            let (page, cursor) = self.search(user, req.clone());
            all.extend(page);
            if cursor.is_empty() {
                return all;
            }
            req.cursor = cursor;
        }
        panic!("a search did not end within 100 pages");
    }

    /// `(conversation, seq)` of every result of `user`'s search for `query`.
    #[track_caller]
    pub fn found(&self, user: &str, query: &str) -> Vec<(String, u64)> {
        self.search_all(user, search_req(query))
            .into_iter()
            .map(|e| (e.conversation_id, e.seq))
            .collect()
    }
}

fn at(conv: &str, seqs: &[u64]) -> Vec<(String, u64)> {
    seqs.iter().map(|s| (conv.to_owned(), *s)).collect()
}

pub fn search_finds_every_word_case_folded_newest_first(f: Fixture) {
    // Proves a message matches when it holds every query word, whatever
    // the case; results come newest first with their whole entry; a word
    // nobody wrote finds nothing; and the results hold the latest text.
    let w = World::new(f);
    let a = w.send_dm("alice", "bob", "Hello World").seq;
    let b = w.send_dm("bob", "alice", "hello there, Alice!").seq;
    w.send_dm("alice", "bob", "goodbye world");
    assert_eq!(w.found("bob", "HELLO"), at(AB, &[b, a]));
    assert_eq!(w.found("alice", "world hello"), at(AB, &[a]));
    assert_eq!(w.found("alice", "hello nobody"), at(AB, &[]));
    let (page, cursor) = w.search("alice", search_req("there"));
    assert_eq!(texts(&page), ["hello there, Alice!"]);
    assert_eq!(page[0].sender, "bob");
    assert!(cursor.is_empty(), "a complete search has no cursor");
}

pub fn search_finds_chinese_by_character_pairs(f: Fixture) {
    // Proves text without spaces is searchable: any run of two or more
    // characters of the message finds it, one character finds it, a pair
    // that is not in it does not, and Latin words inside it stay words.
    let w = World::new(f);
    let s = w
        .send_dm("alice", "bob", "我们明天去北京开会，带上Rust书")
        .seq;
    let t = w.send_dm("bob", "alice", "北京天气很好").seq;
    assert_eq!(w.found("bob", "北京"), at(AB, &[t, s]));
    assert_eq!(w.found("bob", "明天去北京"), at(AB, &[s]));
    assert_eq!(w.found("bob", "北京 开会"), at(AB, &[s]));
    assert_eq!(w.found("bob", "会"), at(AB, &[s]));
    assert_eq!(w.found("bob", "rust"), at(AB, &[s]));
    assert_eq!(w.found("bob", "京北"), at(AB, &[]));
    assert_eq!(
        w.found("bob", "明天开会"),
        at(AB, &[]),
        "明天开会 is not in it"
    );
}

pub fn search_returns_only_what_the_user_may_read(f: Fixture) {
    // Proves results are limited to what the caller may read: a member who
    // joined a group without history finds only messages from their join
    // on, a kicked member nothing after the kick, a non-member nothing (and
    // NOT_MEMBER naming the group), nobody another pair's 1:1 messages.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let old = w.send_group("alice", "team", "secret plan").seq;
    w.ok(
        "alice",
        Body::GroupInvite(pb::GroupInvite {
            group_id: "team".into(),
            user_ids: strings(&["carol"]),
        }),
    );
    let new = w.send_group("bob", "team", "plan two").seq;
    w.ok("alice", kick_body("team", "bob"));
    let after_kick = w.send_group("alice", "team", "plan three").seq;
    let dm = w.send_dm("alice", "dave", "plan for dave").seq;
    assert_eq!(w.found("alice", "plan"), {
        let mut v = at("d:alice:dave", &[dm]);
        v.extend(at(G, &[after_kick, new, old]));
        v
    });
    assert_eq!(w.found("carol", "plan"), at(G, &[after_kick, new]));
    assert_eq!(w.found("bob", "plan"), at(G, &[new, old]));
    assert_eq!(w.found("dave", "plan"), at("d:alice:dave", &[dm]));
    assert_eq!(w.found("erin", "plan"), at(G, &[]));
    let mut only_team = search_req("plan");
    only_team.conversation_id = G.into();
    assert_eq!(
        w.err("dave", Body::Search(only_team.clone())),
        pb::ErrorCode::NotMember
    );
    let mut other_pair = search_req("plan");
    other_pair.conversation_id = "d:alice:dave".into();
    assert_eq!(
        w.err("bob", Body::Search(other_pair)),
        pb::ErrorCode::NotMember
    );
    let got: Vec<u64> = w
        .search_all("carol", only_team)
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, [after_kick, new]);
}

pub fn search_never_returns_recalled_and_matches_edits_by_latest_text(f: Fixture) {
    // Proves a recalled message is never found (recalled before or after
    // it was indexed), and an edited one is found by its latest text only,
    // served with that text (edited before or after it was indexed).
    let w = World::new(f);
    let early = w.send_dm("alice", "bob", "draft alpha").seq;
    let gone = w.send_dm("alice", "bob", "oops gamma").seq;
    w.domain.search_index_pending().expect("index");
    w.ok("alice", edit_body(AB, early, "e1", "final beta", false));
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: gone,
        }),
    );
    let late = w.send_dm("alice", "bob", "second alpha").seq;
    w.ok("alice", edit_body(AB, late, "e2", "second delta", false));
    let never = w.send_dm("alice", "bob", "quick gamma").seq;
    w.ok(
        "alice",
        Body::Recall(pb::RecallRequest {
            conversation_id: AB.into(),
            seq: never,
        }),
    );
    assert_eq!(w.found("bob", "alpha"), at(AB, &[]));
    assert_eq!(w.found("bob", "gamma"), at(AB, &[]));
    assert_eq!(w.found("bob", "beta"), at(AB, &[early]));
    assert_eq!(w.found("bob", "delta"), at(AB, &[late]));
    assert_eq!(w.found("bob", "second"), at(AB, &[late]));
    let (page, _) = w.search("bob", search_req("beta"));
    assert_eq!(texts(&page), ["final beta"]);
    w.domain.search_index_pending().expect("index");
    assert_eq!(w.found("bob", "alpha"), at(AB, &[]));
    assert_eq!(w.found("bob", "beta"), at(AB, &[early]));
}

pub fn search_filters_by_sender_time_and_conversation(f: Fixture) {
    // Proves the sender filter, the time range (from inclusive, to
    // exclusive) and the conversation filter, alone and together.
    let w = World::new(f);
    w.create_group("alice", "team", &["bob"]);
    let t0 = w.now();
    let a1 = w.send_dm("alice", "bob", "report one").seq;
    let b1 = w.send_dm("bob", "alice", "report two").seq;
    w.advance(1_000);
    let t1 = w.now();
    let g1 = w.send_group("bob", "team", "report three").seq;
    let a2 = w.send_dm("alice", "bob", "report four").seq;
    let mut r = search_req("report");
    r.sender = "bob".into();
    let got: Vec<_> = w
        .search_all("alice", r.clone())
        .into_iter()
        .map(|e| (e.conversation_id, e.seq))
        .collect();
    let mut want = at(AB, &[b1]);
    want.extend(at(G, &[g1]));
    assert_eq!(got, want);
    r.conversation_id = AB.into();
    assert_eq!(texts(&w.search_all("alice", r)), ["report two"]);
    let mut r = search_req("report");
    r.from_ms = t1;
    let got: Vec<_> = w
        .search_all("bob", r.clone())
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, [a2, g1]);
    r.from_ms = t0;
    r.to_ms = t1;
    let got: Vec<_> = w.search_all("bob", r).iter().map(|e| e.seq).collect();
    assert_eq!(got, [b1, a1]);
}

pub fn search_pages_with_a_cursor(f: Fixture) {
    // Proves paging: pages of `limit` in order, across conversations,
    // each result once, the last page without a cursor; a tiny candidate
    // budget gives short pages with cursors that still reach every result;
    // the page size is capped by the server.
    let w = World::with_config(
        f,
        Config {
            search_page_max: 4,
            ..Config::default()
        },
    );
    w.create_group("alice", "team", &["bob"]);
    let mut want = Vec::new();
    for i in 0..5 {
        want.push((
            AB.to_owned(),
            w.send_dm("alice", "bob", &format!("item {i}")).seq,
        ));
    }
    for i in 0..3 {
        w.send_dm("alice", "bob", &format!("other {i}"));
        want.push((
            G.to_owned(),
            w.send_group("bob", "team", &format!("item g{i}")).seq,
        ));
    }
    // Newest first within a conversation, conversations in id order.
    want[..5].reverse();
    want[5..].reverse();
    let mut r = search_req("item");
    r.limit = 3;
    let mut pages = Vec::new();
    let mut got = Vec::new();
    for _ in 0..10 {
        let (page, cursor) = w.search("bob", r.clone());
        pages.push(page.len());
        got.extend(page.into_iter().map(|e| (e.conversation_id, e.seq)));
        if cursor.is_empty() {
            break;
        }
        r.cursor = cursor;
    }
    assert_eq!(got, want);
    assert_eq!(pages[0], 3);
    r.cursor.clear();
    r.limit = 100;
    assert_eq!(w.search("bob", r).0.len(), 4, "capped at search_page_max");

    let w2 = World::with_config(
        Fixture::new(w.store().clone(), ()),
        Config {
            search_scan_max: 2,
            ..Config::default()
        },
    );
    assert_eq!(
        w2.found("bob", "item"),
        want,
        "short pages reach everything"
    );
}

pub fn search_bad_input_is_a_typed_error_or_nothing(f: Fixture) {
    // Proves hostile queries change nothing and never fail untyped: an
    // empty query, one of query syntax only, a forged cursor, a bad
    // conversation id are INVALID_ARGUMENT; syntax characters around words
    // are ignored; a very long word is cut and still finds its message;
    // the log is unchanged after all of it.
    let w = World::new(f);
    let s = w.send_dm("alice", "bob", "quote \"this\" * star").seq;
    let long = "x".repeat(200);
    let l = w.send_dm("alice", "bob", &long).seq;
    let invalid = pb::ErrorCode::InvalidArgument;
    for q in [
        "",
        "   ",
        "\"*\"",
        "* OR -:",
        "()[]{}\\",
        "'; DROP TABLE --",
    ] {
        let code = match w.call("bob", Body::Search(search_req(q))).reply {
            Some(Body::Error(e)) => e.code(),
            Some(Body::SearchResult(r)) => {
                assert!(r.entries.is_empty(), "{q:?}");
                continue;
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(code, invalid, "{q:?}");
    }
    assert_eq!(w.found("bob", "\"quote\" +star* -this"), at(AB, &[s]));
    assert_eq!(
        w.found("bob", "quote OR nothing"),
        at(AB, &[]),
        "OR is a word like any other"
    );
    assert_eq!(w.found("bob", &"x".repeat(250)), at(AB, &[l]));
    assert_eq!(
        w.err("bob", Body::Search(search_req(&"y".repeat(1000)))),
        invalid,
        "longer than the query limit"
    );
    for cursor in ["x", "1", "abc/d:alice:bob", "5/not a conv", "5/g:"] {
        let mut r = search_req("quote");
        r.cursor = cursor.into();
        assert_eq!(w.err("bob", Body::Search(r)), invalid, "{cursor:?}");
    }
    let mut r = search_req("quote");
    r.conversation_id = "nonsense".into();
    assert_eq!(w.err("bob", Body::Search(r)), invalid);
    let head = w.store().heads(&[AB]).unwrap()[0].seq;
    assert_eq!(head, l, "searching wrote nothing to the log");
}

pub fn search_disabled_is_refused(f: Fixture) {
    // Proves `search_enabled = false` answers SEARCH_DISABLED and indexes
    // nothing.
    let w = World::with_config(
        f,
        Config {
            search_enabled: false,
            ..Config::default()
        },
    );
    w.send_dm("alice", "bob", "hello");
    assert_eq!(w.domain.search_index_pending().unwrap(), 0);
    assert_eq!(w.store().search_indexed(AB).unwrap(), 0);
    assert_eq!(
        w.err("bob", Body::Search(search_req("hello"))),
        pb::ErrorCode::SearchDisabled
    );
}

pub fn search_index_follows_the_log_from_its_mark(f: Fixture) {
    // Proves the indexer: nothing is indexed at the send (the ack does not
    // wait), `search_index_pending` indexes the written conversations up to
    // their heads, and a search indexes what the indexer has not yet.
    let w = World::new(f);
    w.send_dm("alice", "bob", "one apple");
    w.send_dm("bob", "alice", "two apples");
    assert_eq!(w.store().search_indexed(AB).unwrap(), 0);
    assert_eq!(w.domain.search_index_pending().unwrap(), 2);
    assert_eq!(w.store().search_indexed(AB).unwrap(), 2);
    assert_eq!(
        w.store().search_postings(AB, "apple", 1, 2, 10).unwrap(),
        [1]
    );
    assert_eq!(w.domain.search_index_pending().unwrap(), 0, "nothing new");
    let s = w.send_dm("alice", "bob", "three apple").seq;
    assert_eq!(w.found("bob", "apple"), at(AB, &[s, 1]));
    assert_eq!(w.store().search_indexed(AB).unwrap(), s);
}

pub fn search_indexer_indexes_handed_texts_and_reads_the_log_after_a_gap(f: Fixture) {
    // Proves the indexer's two ways agree: texts handed over with their
    // conversation (a read receipt between two messages keeps them
    // gapless), texts at or below a mark a search already moved are
    // skipped, and after a gap the indexer notes nothing of (a receipt
    // while the conversation was not queued) it reads the log instead;
    // every message is found exactly once either way.
    let w = World::new(f);
    let one = w.send_dm("alice", "bob", "one kiwi").seq;
    w.read("bob", AB, one);
    let two = w.send_dm("alice", "bob", "two kiwis kiwi").seq;
    assert_eq!(w.domain.search_index_pending().unwrap(), two);
    assert_eq!(w.store().search_indexed(AB).unwrap(), two);
    assert_eq!(
        w.store().search_postings(AB, "kiwi", 1, two, 10).unwrap(),
        [two, one]
    );
    let three = w.send_dm("bob", "alice", "three kiwi").seq;
    assert_eq!(w.found("alice", "kiwi"), at(AB, &[three, two, one]));
    assert_eq!(
        w.domain.search_index_pending().unwrap(),
        0,
        "indexed by the search"
    );
    w.read("alice", AB, three);
    let four = w.send_dm("alice", "bob", "four kiwi").seq;
    assert_eq!(w.domain.search_index_pending().unwrap(), four - three);
    assert_eq!(w.store().search_indexed(AB).unwrap(), four);
    assert_eq!(w.found("bob", "kiwi"), at(AB, &[four, three, two, one]));
}

pub fn search_index_all_catches_up_what_the_store_lists(f: Fixture) {
    // Proves the start-up catch-up: a store that lists its conversations
    // gets every index up to its log (as after an index was lost); one that
    // cannot (None) reads nothing and still serves searches (caught up
    // then).
    let w = World::new(f);
    w.send_dm("alice", "bob", "one pear");
    w.create_group("alice", "team", &["bob"]);
    let g = w.send_group("bob", "team", "two pears").seq;
    let listed = w.store().search_conversations("", 10).unwrap();
    let read = w.domain.search_index_all().unwrap();
    match listed {
        Some(convs) => {
            assert_eq!(convs, strings(&[AB, G]));
            assert!(read >= 2, "{read}");
            assert_eq!(w.store().search_indexed(AB).unwrap(), 1);
            assert_eq!(w.store().search_indexed(G).unwrap(), g);
            let after = w.store().search_conversations(AB, 10).unwrap();
            assert_eq!(after, Some(strings(&[G])));
        }
        None => assert_eq!(read, 0),
    }
    assert_eq!(w.found("alice", "pears"), at(G, &[g]));
}

pub fn store_search_postings_and_mark(f: Fixture) {
    // Proves the store's index contract: postings read newest first within
    // the seq range and limit, per conversation and token; writes are
    // idempotent; the mark only moves up.
    let st = f.store;
    let p = |t: &str, s: u64| (t.to_owned(), s);
    st.search_index(AB, &[p("a", 1), p("a", 3), p("b", 3), p("a", 7)], 7)
        .unwrap();
    st.search_index(G, &[p("a", 2)], 2).unwrap();
    assert_eq!(st.search_postings(AB, "a", 1, 100, 10).unwrap(), [7, 3, 1]);
    assert_eq!(st.search_postings(AB, "a", 2, 7, 10).unwrap(), [7, 3]);
    assert_eq!(st.search_postings(AB, "a", 1, 6, 1).unwrap(), [3]);
    assert_eq!(st.search_postings(AB, "b", 1, 100, 10).unwrap(), [3]);
    assert!(st.search_postings(AB, "ab", 1, 100, 10).unwrap().is_empty());
    assert!(st.search_postings(AB, "a", 5, 4, 10).unwrap().is_empty());
    assert_eq!(st.search_postings(G, "a", 1, 100, 10).unwrap(), [2]);
    assert_eq!(st.search_indexed(AB).unwrap(), 7);
    st.search_index(AB, &[p("a", 3)], 3).unwrap();
    assert_eq!(
        st.search_indexed(AB).unwrap(),
        7,
        "the mark never moves down"
    );
    assert_eq!(st.search_postings(AB, "a", 1, 100, 10).unwrap(), [7, 3, 1]);
    assert_eq!(st.search_indexed("d:x:y").unwrap(), 0);
}

// ---------------------------------------------------------------------------
// Rooms and broadcast channels (issue 19)
// ---------------------------------------------------------------------------

pub fn room_create_body(room: &str, kind: pb::RoomKind, admins: &[&str]) -> Body {
    Body::RoomCreate(pb::RoomCreate {
        room_id: room.into(),
        name: format!("Room {room}"),
        kind: kind as i32,
        admins: admins.iter().map(|a| (*a).to_owned()).collect(),
    })
}

pub fn room_post_body(room: &str, text: &str) -> Body {
    Body::RoomPost(pb::RoomPost {
        room_id: room.into(),
        content: Some(text_content(text)),
        client_msg_id: String::new(),
    })
}

pub fn room_history_of(
    w: &World,
    user: &str,
    room: &str,
    before: u64,
    limit: u32,
) -> Vec<pb::Entry> {
    let out = w.ok(
        user,
        Body::RoomHistory(pb::RoomHistoryRequest {
            room_id: room.into(),
            before_seq: before,
            limit,
        }),
    );
    match out.reply {
        Some(Body::RoomHistoryResult(r)) => r.entries,
        other => panic!("expected room_history_result, got {other:?}"),
    }
}

#[track_caller]
fn room_info_of(out: &Outcome) -> pb::RoomInfo {
    match &out.reply {
        Some(Body::RoomInfoResult(r)) => r.room.clone().expect("room"),
        Some(Body::RoomJoined(r)) => r.room.clone().expect("room"),
        other => panic!("expected a room, got {other:?}"),
    }
}

pub fn room_metadata_is_kept_and_ids_are_unique(f: Fixture) {
    // Proves a room's record (name, kind, owner, admins, creation time) is
    // stored and served by info and join, UNSPECIFIED kind means CHAT, a
    // taken id is ALREADY_EXISTS (the first record stays), an unknown room
    // is NOT_FOUND for info, join and post, and a bad id is INVALID_ARGUMENT.
    let w = World::new(f);
    let created = room_info_of(&w.ok(
        "alice",
        room_create_body("news", pb::RoomKind::Broadcast, &["bob", "bob", "alice"]),
    ));
    assert_eq!(created.owner, "alice");
    assert_eq!(
        created.admins,
        vec!["bob".to_owned()],
        "deduplicated, owner not repeated"
    );
    assert_eq!(created.kind, pb::RoomKind::Broadcast as i32);
    assert_eq!(created.last_seq, 0);
    assert!(created.created_ms >= T0);
    let chat = room_info_of(&w.ok(
        "bob",
        room_create_body("lobby", pb::RoomKind::Unspecified, &[]),
    ));
    assert_eq!(chat.kind, pb::RoomKind::Chat as i32);
    assert_eq!(
        w.err("carol", room_create_body("news", pb::RoomKind::Chat, &[])),
        pb::ErrorCode::AlreadyExists
    );
    let info = room_info_of(&w.ok(
        "carol",
        Body::RoomInfo(pb::RoomInfoRequest {
            room_id: "news".into(),
        }),
    ));
    assert_eq!(info, created, "the first record stays");
    let joined = room_info_of(&w.ok(
        "carol",
        Body::RoomJoin(pb::RoomJoin {
            room_id: "news".into(),
        }),
    ));
    assert_eq!(joined, created);
    for body in [
        Body::RoomInfo(pb::RoomInfoRequest {
            room_id: "nope".into(),
        }),
        Body::RoomJoin(pb::RoomJoin {
            room_id: "nope".into(),
        }),
        room_post_body("nope", "hi"),
    ] {
        assert_eq!(w.err("carol", body), pb::ErrorCode::NotFound);
    }
    assert!(w.store().room("nope").unwrap().is_none());
    assert_eq!(
        w.err("carol", room_create_body("a:b", pb::RoomKind::Chat, &[])),
        pb::ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.err("carol", room_post_body("r:lobby", "hi")),
        pb::ErrorCode::InvalidArgument
    );
}

pub fn room_posts_get_consecutive_seqs_and_one_room_effect(f: Fixture) {
    // Proves every post to a chat room gets the room's next seq (1, 2, ...,
    // per room) in an `ok`, is stored durably before the answer (the store
    // reads it back), and yields exactly one `Room` effect carrying the
    // entry (sender, device, content, `r:<room>`) and no per-member
    // delivery; info and join report the newest seq.
    let w = World::new(f);
    w.ok("alice", room_create_body("lobby", pb::RoomKind::Chat, &[]));
    w.ok("alice", room_create_body("other", pb::RoomKind::Chat, &[]));
    for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
        let out = w.ok(user, room_post_body("lobby", &format!("hello {i}")));
        assert_eq!(ok_seq(&out), i as u64 + 1);
        assert_eq!(out.effects.len(), 1);
        match &out.effects[0] {
            Effect::Room { room_id, entry } => {
                assert_eq!(room_id, "lobby");
                assert_eq!(entry.conversation_id, "r:lobby");
                assert_eq!(entry.seq, i as u64 + 1);
                assert_eq!(entry.sender, *user);
                assert_eq!(entry.sender_device, format!("{user}-phone"));
                assert_eq!(text_of(entry), Some(format!("hello {i}").as_str()));
            }
            other => panic!("expected a room effect, got {other:?}"),
        }
    }
    assert_eq!(
        ok_seq(&w.ok("dave", room_post_body("other", "x"))),
        1,
        "per room"
    );
    let joined = room_info_of(&w.ok(
        "dave",
        Body::RoomJoin(pb::RoomJoin {
            room_id: "lobby".into(),
        }),
    ));
    assert_eq!(joined.last_seq, 3);
    let (_, head) = w.store().room("lobby").unwrap().unwrap();
    assert_eq!(head, 3);
    let h = room_history_of(&w, "dave", "lobby", 0, 0);
    assert_eq!(texts(&h), vec!["hello 0", "hello 1", "hello 2"]);
    assert!(h.iter().all(|e| e.conversation_id == "r:lobby"));
    assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Leaving is answered and stores nothing.
    let left = w.ok(
        "dave",
        Body::RoomLeave(pb::RoomLeave {
            room_id: "lobby".into(),
        }),
    );
    assert_eq!((ok_seq(&left), left.effects.len()), (0, 0));
}

pub fn room_recent_ring_keeps_only_the_newest(f: Fixture) {
    // Proves a room keeps only `room_recent_max` messages: after 12 posts
    // with a window of 5, history serves seqs 8..=12 (oldest first), pages
    // back with `before_seq` and `limit` inside the window only, and the
    // store itself holds no more than the window; seqs keep counting.
    let config = Config {
        room_recent_max: 5,
        ..Config::default()
    };
    let w = World::with_config(f, config);
    w.ok("alice", room_create_body("lobby", pb::RoomKind::Chat, &[]));
    for i in 1..=12u64 {
        assert_eq!(
            ok_seq(&w.ok("alice", room_post_body("lobby", &format!("m{i}")))),
            i
        );
    }
    let seqs = |v: &[pb::Entry]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&room_history_of(&w, "bob", "lobby", 0, 0)),
        vec![8, 9, 10, 11, 12]
    );
    assert_eq!(
        seqs(&room_history_of(&w, "bob", "lobby", 0, 2)),
        vec![11, 12]
    );
    assert_eq!(
        seqs(&room_history_of(&w, "bob", "lobby", 11, 2)),
        vec![9, 10]
    );
    assert_eq!(seqs(&room_history_of(&w, "bob", "lobby", 9, 100)), vec![8]);
    assert_eq!(
        seqs(&room_history_of(&w, "bob", "lobby", 8, 0)),
        Vec::<u64>::new()
    );
    let stored = w.store().room_recent("lobby", 0, 1_000).unwrap();
    assert_eq!(
        seqs(&stored),
        vec![8, 9, 10, 11, 12],
        "the store keeps the window only"
    );
    assert_eq!(texts(&stored), vec!["m8", "m9", "m10", "m11", "m12"]);
}

pub fn room_broadcast_channel_refuses_non_admins(f: Fixture) {
    // Proves only the owner and the admins post in a broadcast channel:
    // anyone else gets BROADCAST_ONLY, nothing is stored and the seq does
    // not move; an operator (the server API) may post; anyone may join
    // and read its history.
    let w = World::new(f);
    w.ok(
        "alice",
        room_create_body("news", pb::RoomKind::Broadcast, &["bob"]),
    );
    assert_eq!(ok_seq(&w.ok("alice", room_post_body("news", "owner"))), 1);
    assert_eq!(ok_seq(&w.ok("bob", room_post_body("news", "admin"))), 2);
    assert_eq!(
        w.err("carol", room_post_body("news", "reader")),
        pb::ErrorCode::BroadcastOnly
    );
    let (_, head) = w.store().room("news").unwrap().unwrap();
    assert_eq!(head, 2, "a refused post stores nothing");
    let op = Caller {
        user_id: "ops".into(),
        device_id: String::new(),
        admin: true,
    };
    let out = w
        .domain
        .handle(&op, w.now(), room_post_body("news", "operator"));
    assert_eq!(ok_seq(&out), 3);
    w.ok(
        "carol",
        Body::RoomJoin(pb::RoomJoin {
            room_id: "news".into(),
        }),
    );
    assert_eq!(
        texts(&room_history_of(&w, "carol", "news", 0, 0)),
        vec!["owner", "admin", "operator"]
    );
}

pub fn room_delete_removes_record_and_ring(f: Fixture) {
    // Proves a room's deletion: only its owner (or an operator) deletes it
    // (anyone else gets PERMISSION_DENIED and nothing changes); the answer
    // is `ok` with one `RoomClosed` effect; afterwards the store holds
    // neither the record nor a kept message, and info, join, post, history
    // and a second delete answer NOT_FOUND while leave stays `ok`; the id
    // may be created again, as a new room whose seq starts from 1 and
    // whose history holds nothing of the old one; another room is
    // untouched.
    let config = Config {
        room_recent_max: 3,
        ..Config::default()
    };
    let w = World::with_config(f, config);
    let delete = |room: &str| {
        Body::RoomDelete(pb::RoomDelete {
            room_id: room.into(),
        })
    };
    w.ok("alice", room_create_body("lobby", pb::RoomKind::Chat, &[]));
    w.ok("alice", room_create_body("other", pb::RoomKind::Chat, &[]));
    for i in 1..=5 {
        w.ok("bob", room_post_body("lobby", &format!("m{i}")));
    }
    w.ok("bob", room_post_body("other", "stays"));
    assert_eq!(
        w.err("bob", delete("lobby")),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(
        w.store().room("lobby").unwrap().map(|(_, head)| head),
        Some(5),
        "a refused delete changes nothing"
    );
    assert_eq!(
        texts(&room_history_of(&w, "bob", "lobby", 0, 0)),
        vec!["m3", "m4", "m5"]
    );

    let out = w.ok("alice", delete("lobby"));
    assert_eq!(ok_seq(&out), 0);
    match out.effects.as_slice() {
        [Effect::RoomClosed { room_id }] => assert_eq!(room_id, "lobby"),
        other => panic!("expected one RoomClosed effect, got {other:?}"),
    }
    assert!(w.store().room("lobby").unwrap().is_none());
    assert!(w.store().room_recent("lobby", 0, 1_000).unwrap().is_empty());
    assert!(!w.store().room_delete("lobby").unwrap(), "gone already");
    for body in [
        Body::RoomInfo(pb::RoomInfoRequest {
            room_id: "lobby".into(),
        }),
        Body::RoomJoin(pb::RoomJoin {
            room_id: "lobby".into(),
        }),
        room_post_body("lobby", "late"),
        Body::RoomHistory(pb::RoomHistoryRequest {
            room_id: "lobby".into(),
            before_seq: 0,
            limit: 0,
        }),
        delete("lobby"),
    ] {
        assert_eq!(w.err("alice", body), pb::ErrorCode::NotFound);
    }
    w.ok(
        "bob",
        Body::RoomLeave(pb::RoomLeave {
            room_id: "lobby".into(),
        }),
    );
    assert!(
        w.store().room("lobby").unwrap().is_none(),
        "the late post stored nothing"
    );
    assert_eq!(
        texts(&room_history_of(&w, "bob", "other", 0, 0)),
        vec!["stays"]
    );

    // The id again: a new room.
    let again = room_info_of(&w.ok("carol", room_create_body("lobby", pb::RoomKind::Chat, &[])));
    assert_eq!((again.owner.as_str(), again.last_seq), ("carol", 0));
    assert!(room_history_of(&w, "bob", "lobby", 0, 0).is_empty());
    assert_eq!(ok_seq(&w.ok("bob", room_post_body("lobby", "new"))), 1);
    assert_eq!(
        texts(&room_history_of(&w, "bob", "lobby", 0, 0)),
        vec!["new"]
    );

    // An operator (the server API) deletes any room.
    let op = Caller {
        user_id: "ops".into(),
        device_id: String::new(),
        admin: true,
    };
    let out = w.domain.handle(&op, w.now(), delete("other"));
    assert_eq!(ok_seq(&out), 0);
    assert!(w.store().room("other").unwrap().is_none());
    assert!(w.store().room_recent("other", 0, 1_000).unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Offline push (issue 20)
// ---------------------------------------------------------------------------

fn push_token(platform: pb::PushPlatform, token: &str, device: &str, t: u64) -> pb::PushToken {
    pb::PushToken {
        platform: platform as i32,
        token: token.into(),
        topic: String::new(),
        device_id: device.into(),
        registered_ms: t,
    }
}

fn push_names(s: &Arc<dyn Store>, user: &str) -> Vec<String> {
    s.push_tokens(user)
        .unwrap()
        .into_iter()
        .map(|t| t.token)
        .collect()
}

pub fn push_store_binds_moves_replaces_and_bounds_tokens(f: Fixture) {
    // Proves the push token contract of the store: a token is held by one
    // user at a time (binding it to another moves it), a device's new
    // token of a platform replaces its old one, the per-user bound refuses
    // a new token and writes nothing (a token already held or a device's
    // replacement is never refused), and unbinding checks the holder.
    use pb::PushPlatform::{Apns, Fcm};
    use tern_backend::store::{PushBind, PushUnbind};
    let s = f.store;
    let bound = |moved: Option<&str>, replaced: Option<&str>| PushBind::Bound {
        moved_from: moved.map(Into::into),
        replaced: replaced.map(Into::into),
    };
    assert!(s.push_tokens("alice").unwrap().is_empty());
    let a1 = push_token(Apns, "a1", "p1", T0);
    assert_eq!(s.push_bind("alice", &a1, 3).unwrap(), bound(None, None));
    assert_eq!(
        s.push_bind("alice", &push_token(Fcm, "f1", "p1", T0), 3)
            .unwrap(),
        bound(None, None)
    );
    // Same token again: an update, not a second token.
    assert_eq!(s.push_bind("alice", &a1, 3).unwrap(), bound(None, None));
    assert_eq!(push_names(&s, "alice"), ["a1", "f1"]);
    // The device's APNs token rotates: a2 replaces a1.
    assert_eq!(
        s.push_bind("alice", &push_token(Apns, "a2", "p1", T0 + 1), 3)
            .unwrap(),
        bound(None, Some("a1"))
    );
    assert_eq!(push_names(&s, "alice"), ["a2", "f1"]);
    assert_eq!(
        s.push_unbind(None, Apns as i32, "a1").unwrap(),
        PushUnbind::NotFound
    );
    // The phone changes accounts: bob registers a2, alice loses it.
    assert_eq!(
        s.push_bind("bob", &push_token(Apns, "a2", "b1", T0 + 2), 3)
            .unwrap(),
        bound(Some("alice"), None)
    );
    assert_eq!(push_names(&s, "alice"), ["f1"]);
    let bobs = s.push_tokens("bob").unwrap();
    assert_eq!(bobs, vec![push_token(Apns, "a2", "b1", T0 + 2)]);
    // The bound: alice holds f1, x2, x3; a fourth token is refused.
    s.push_bind("alice", &push_token(Apns, "x2", "p2", T0), 3)
        .unwrap();
    s.push_bind("alice", &push_token(Apns, "x3", "p3", T0), 3)
        .unwrap();
    assert_eq!(
        s.push_bind("alice", &push_token(Apns, "x4", "p4", T0), 3)
            .unwrap(),
        PushBind::Full
    );
    assert_eq!(push_names(&s, "alice"), ["x2", "x3", "f1"]);
    assert_eq!(
        s.push_unbind(None, Apns as i32, "x4").unwrap(),
        PushUnbind::NotFound
    );
    // ... and a full bound still lets a device replace its token.
    assert_eq!(
        s.push_bind("alice", &push_token(Apns, "x5", "p3", T0), 3)
            .unwrap(),
        bound(None, Some("x3"))
    );
    assert_eq!(push_names(&s, "alice"), ["x2", "x5", "f1"]);
    // Unbinding: not alice's (bob's a2), nobody's, alice's own.
    assert_eq!(
        s.push_unbind(Some("alice"), Apns as i32, "a2").unwrap(),
        PushUnbind::NotYours
    );
    assert_eq!(push_names(&s, "bob"), ["a2"]);
    assert_eq!(
        s.push_unbind(Some("alice"), Apns as i32, "nope").unwrap(),
        PushUnbind::NotFound
    );
    // Platform is part of the token's identity.
    assert_eq!(
        s.push_unbind(Some("alice"), Fcm as i32, "x2").unwrap(),
        PushUnbind::NotFound
    );
    assert_eq!(
        s.push_unbind(Some("alice"), Apns as i32, "x2").unwrap(),
        PushUnbind::Removed
    );
    // A provider's "dead token": whoever holds it.
    assert_eq!(
        s.push_unbind(None, Apns as i32, "a2").unwrap(),
        PushUnbind::Removed
    );
    assert!(s.push_tokens("bob").unwrap().is_empty());
    assert_eq!(push_names(&s, "alice"), ["x5", "f1"]);
}

pub fn push_store_settings_are_kept(f: Fixture) {
    // Proves a user's mutes are kept until replaced or deleted.
    use tern_backend::store::PushSettings;
    let s = f.store;
    assert_eq!(s.push_settings("alice").unwrap(), None);
    let set = PushSettings {
        dnd_until_ms: T0,
        muted: vec![pb::MutedConversation {
            conversation_id: "g:team".into(),
            until_ms: u64::MAX,
        }],
    };
    s.put_push_settings("alice", Some(&set)).unwrap();
    assert_eq!(s.push_settings("alice").unwrap(), Some(set));
    assert_eq!(s.push_settings("bob").unwrap(), None);
    s.put_push_settings("alice", None).unwrap();
    assert_eq!(s.push_settings("alice").unwrap(), None);
}

fn push_world(f: Fixture, tweak: impl FnOnce(&mut Config)) -> World {
    let mut config = Config {
        push_enabled: true,
        ..Config::default()
    };
    tweak(&mut config);
    World::with_config(f, config)
}

fn register(platform: pb::PushPlatform, token: &str) -> Body {
    Body::PushRegister(pb::PushTokenRegister {
        platform: platform as i32,
        token: token.into(),
        topic: String::new(),
    })
}

fn push_list(w: &World, user: &str) -> pb::PushListResult {
    match w.ok(user, Body::PushList(pb::PushListRequest {})).reply {
        Some(Body::PushListResult(r)) => r,
        other => panic!("push_list: {other:?}"),
    }
}

pub fn push_frames_register_list_unregister_and_refuse(f: Fixture) {
    // Proves the push frames through the domain: a device registers its
    // token (listed with its device id), the bound answers
    // PUSH_TOKENS_FULL, another user's token cannot be unregistered
    // (PUSH_TOKEN_NOT_YOURS, nothing changes) but registering it moves it,
    // and a server without push answers PUSH_DISABLED to every push frame.
    use pb::PushPlatform::{Apns, Fcm};
    let w = push_world(f, |c| c.push_tokens_per_user_max = 2);
    w.ok("alice", register(Apns, "tok-a"));
    w.ok("alice", register(Fcm, "tok-f"));
    let l = push_list(&w, "alice");
    assert_eq!(l.tokens.len(), 2);
    assert!(l.tokens.iter().all(|t| t.device_id == "alice-phone"));
    assert_eq!(l.tokens[0].registered_ms, T0);
    // A third token of another device of alice's: over the bound.
    let other_device = Caller {
        user_id: "alice".into(),
        device_id: "alice-tablet".into(),
        admin: false,
    };
    let out = w
        .domain
        .handle(&other_device, w.now(), register(Apns, "tok-t"));
    assert!(
        matches!(&out.reply, Some(Body::Error(e)) if e.code == pb::ErrorCode::PushTokensFull as i32),
        "{:?}",
        out.reply
    );
    assert_eq!(push_list(&w, "alice").tokens.len(), 2);
    // Bob cannot unregister alice's token ...
    let unreg = |t: &str| {
        Body::PushUnregister(pb::PushTokenUnregister {
            platform: Apns as i32,
            token: t.into(),
        })
    };
    assert_eq!(
        w.err("bob", unreg("tok-a")),
        pb::ErrorCode::PushTokenNotYours
    );
    assert_eq!(push_list(&w, "alice").tokens.len(), 2);
    assert_eq!(w.err("bob", unreg("nobodys")), pb::ErrorCode::NotFound);
    // ... but his phone registering it takes it over.
    w.ok("bob", register(Apns, "tok-a"));
    assert_eq!(push_list(&w, "alice").tokens.len(), 1);
    assert_eq!(push_list(&w, "bob").tokens[0].token, "tok-a");
    w.ok("bob", unreg("tok-a"));
    assert!(push_list(&w, "bob").tokens.is_empty());

    let off = World::new(Fixture::new(w.store().clone(), ()));
    for body in [
        register(Apns, "x"),
        unreg("x"),
        Body::PushList(pb::PushListRequest {}),
        Body::PushMute(pb::PushMute::default()),
    ] {
        assert_eq!(off.err("alice", body), pb::ErrorCode::PushDisabled);
    }
}

pub fn push_mutes_and_target_follow_presence_mutes_and_unread(f: Fixture) {
    // Proves what the push thread is told per user: online users get
    // nothing, muted ones (do not disturb, or the conversation) nothing, a
    // user without tokens nothing, else every token with the badge =
    // unread messages over all conversations; mutes expire; the mute bound
    // answers PUSH_MUTES_FULL; a conversation one does not take part in
    // cannot be muted.
    use tern_backend::domain::push::PushTarget;
    let w = push_world(f, |c| c.push_muted_conversations_max = 1);
    let dm = "d:alice:bob";
    w.send_dm("alice", "bob", "one");
    w.create_group("alice", "team", &["bob"]);
    w.send_group("alice", "team", "two");
    w.send_dm("alice", "bob", "three");
    let target = |user: &str, conv: &str| w.domain.push_target(w.now(), user, conv).unwrap();
    assert_eq!(target("bob", dm), PushTarget::NoTokens);
    w.ok("bob", register(pb::PushPlatform::Fcm, "bob-f"));
    match target("bob", dm) {
        PushTarget::Notify { tokens, badge } => {
            assert_eq!(tokens.len(), 1);
            assert_eq!(badge, 3);
        }
        other => panic!("{other:?}"),
    }
    w.connection("bob", true);
    assert_eq!(target("bob", dm), PushTarget::Online);
    w.connection("bob", false);
    // Reading the DM leaves the group's one message.
    w.read("bob", dm, 2);
    assert!(matches!(
        target("bob", dm),
        PushTarget::Notify { badge: 1, .. }
    ));
    // Mute the DM for a minute: muted there, not in the group.
    let mute = |conv: &str, until_ms: u64| {
        Body::PushMute(pb::PushMute {
            conversation_id: conv.into(),
            until_ms,
        })
    };
    w.ok("bob", mute(dm, w.now() + 60_000));
    assert_eq!(target("bob", dm), PushTarget::Muted);
    assert!(matches!(target("bob", "g:team"), PushTarget::Notify { .. }));
    // The bound: one muted conversation.
    assert_eq!(
        w.err("bob", mute("g:team", u64::MAX)),
        pb::ErrorCode::PushMutesFull
    );
    assert_eq!(
        w.err("carol", mute("g:team", u64::MAX)),
        pb::ErrorCode::NotMember
    );
    assert_eq!(w.err("carol", mute(dm, u64::MAX)), pb::ErrorCode::NotMember);
    let l = push_list(&w, "bob");
    assert_eq!(l.muted.len(), 1);
    assert_eq!(l.muted[0].conversation_id, dm);
    // The mute expires; then the group can be muted (expired mutes do not
    // count).
    w.advance(60_001);
    assert!(matches!(target("bob", dm), PushTarget::Notify { .. }));
    w.ok("bob", mute("g:team", u64::MAX));
    assert_eq!(target("bob", "g:team"), PushTarget::Muted);
    // Do not disturb: everything muted, until it is lifted.
    w.ok("bob", mute("", u64::MAX));
    assert_eq!(target("bob", dm), PushTarget::Muted);
    assert_eq!(push_list(&w, "bob").dnd_until_ms, u64::MAX);
    w.ok("bob", mute("", 0));
    assert!(matches!(target("bob", dm), PushTarget::Notify { .. }));
    // A dead token (the provider said so) is gone.
    assert!(
        w.domain
            .push_token_dead(pb::PushPlatform::Fcm as i32, "bob-f")
            .unwrap()
    );
    assert_eq!(target("bob", dm), PushTarget::NoTokens);
}

/// Expands to one `#[test]` per conformance case, each on a fresh store
/// from `$make` (a `fn() -> conformance::Fixture`).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@cases $make;
            store_append_assigns_consecutive_seqs_per_conversation,
            store_dedup_within_and_across_batches_until_expiry,
            store_refused_item_writes_nothing_and_others_proceed,
            store_recall_effect_rewrites_once,
            store_read_effect_moves_forward_only,
            store_group_change_is_compare_and_set,
            store_social_records,
            store_blocked_pairs_answers_in_order,
            store_friend_pairs_answers_in_order,
            store_presence_records,
            store_presences_and_friends_of_in_bulk,
            store_presence_settings_are_kept,
            push_store_binds_moves_replaces_and_bounds_tokens,
            push_store_settings_are_kept,
            push_frames_register_list_unregister_and_refuse,
            push_mutes_and_target_follow_presence_mutes_and_unread,
            presence_updates_in_one_batch_each_answer_and_push,
            send_direct_stores_and_delivers,
            send_with_reply_and_mentions_is_stored,
            send_dedup_returns_original,
            send_resend_after_losing_rights_returns_original,
            send_batch_fails_bad_items_alone,
            send_batch_refuses_only_the_blocked_send,
            send_validation_refuses_bad_input,
            history_pages_backwards,
            sync_returns_exactly_what_is_missing,
            sync_reaches_every_device_of_the_sender,
            unread_counts_messages_of_others_after_the_cursor,
            conversation_list_orders_by_activity,
            read_receipt_moves_cursor_and_reaches_the_peer,
            read_by_counts_group_readers,
            recall_own_message_within_window,
            recall_after_window_is_refused,
            recall_of_someone_elses_message_is_refused,
            admins_recall_members_messages_any_time,
            mentions_flag_the_mentioned,
            recall_takes_the_mentions_back,
            friend_request_accept_list_delete,
            friend_reject_and_mutual_request,
            profile_and_remark,
            blocked_users_cannot_message,
            friends_only_policy,
            send_batch_friends_only_refuses_only_strangers,
            group_create_info_and_members,
            group_send_reaches_every_member,
            group_join_follows_the_policy,
            group_invite_rules,
            group_kick_rules,
            group_leave_rules,
            departed_members_cannot_read_after_leaving,
            new_members_see_history_only_if_allowed,
            non_members_cannot_read_or_write,
            group_dissolve_rules,
            group_rename_announce_and_policy_are_admin_only,
            group_nickname_and_remark,
            group_roles_and_ownership_transfer,
            group_mute_member_and_all,
            group_changes_sync_to_member_devices,
            group_size_limit,
            typing_is_pushed_expires_and_is_not_stored,
            presence_set_query_and_expiry,
            presence_setting_applies_whenever_a_device_is_connected,
            hostile_requests_get_typed_answers,
            auth_non_member_cannot_read_group,
            auth_third_user_cannot_read_direct_chat,
            auth_non_member_cannot_send_to_group,
            auth_non_admin_cannot_kick,
            auth_nobody_kicks_the_owner,
            auth_admin_cannot_kick_admin,
            auth_cannot_recall_someone_elses_message,
            auth_recall_window_binds_the_sender,
            auth_self_promotion_is_refused,
            auth_only_the_owner_dissolves,
            auth_no_action_after_dissolve,
            auth_member_cannot_change_group_settings,
            auth_muted_member_cannot_send,
            auth_admin_cannot_mute_the_owner,
            auth_member_cannot_mention_all,
            auth_member_cannot_decide_join_requests,
            auth_invite_only_group_refuses_joins,
            auth_kicked_member_cannot_read_later_messages,
            auth_owner_cannot_leave,
            auth_blocked_user_cannot_message,
            auth_non_friends_refused_when_policy_says_so,
            admin_ban_kicks_refuses_and_unban_lifts,
            admin_login_checks_of_a_storm_batch,
            admin_kick_names_a_device,
            admin_acts_without_friendship_or_membership,
            empty_presence_query_lists_nobody,
            store_edit_effect_is_compare_and_set,
            edit_by_sender_is_stored_pushed_and_served,
            edit_by_someone_else_is_refused,
            edit_after_window_is_refused,
            edit_window_zero_turns_edits_off,
            edit_of_recalled_message_is_refused,
            edit_retry_is_idempotent,
            edit_in_group_reaches_every_member,
            edit_streaming_is_set_then_cleared,
            edit_checks_kind_size_target_and_count,
            // ---- search (issue 19) ----
            search_finds_every_word_case_folded_newest_first,
            search_finds_chinese_by_character_pairs,
            search_returns_only_what_the_user_may_read,
            search_never_returns_recalled_and_matches_edits_by_latest_text,
            search_filters_by_sender_time_and_conversation,
            search_pages_with_a_cursor,
            search_bad_input_is_a_typed_error_or_nothing,
            search_disabled_is_refused,
            search_index_follows_the_log_from_its_mark,
            search_indexer_indexes_handed_texts_and_reads_the_log_after_a_gap,
            store_search_postings_and_mark,
            search_index_all_catches_up_what_the_store_lists,
            call_ring_accept_signal_hangup_records_the_call,
            call_unanswered_rejected_or_cancelled_ends_with_that_outcome,
            group_call_rings_members_and_ends_when_one_is_left,
            call_bad_input_gets_typed_errors_and_changes_nothing,
            store_call_records_are_compare_and_set,
            store_call_lease_lapses_unless_renewed,
            call_taken_on_one_node_is_answered_and_recorded_on_another,
            call_ring_timeout_is_the_owning_nodes_and_happens_once,
            thread_replies_are_log_entries_with_summary_and_history,
            thread_unread_per_reader,
            thread_reply_bad_input_is_refused,
            thread_recall_of_a_reply_updates_the_summary,
            todo_create_done_undo_and_list,
            todo_bad_input_is_refused,
            todo_list_pages,
            store_thread_index_and_todo_effects,
            store_annotate_effect_is_compare_and_set,
            reaction_is_pushed_counted_once_and_served,
            reaction_in_group_reaches_members_and_respects_visibility,
            reaction_limits_and_bad_strings_are_refused,
            pin_and_unpin_are_pushed_and_listed,
            pin_in_group_needs_an_admin_and_is_bounded,
            room_metadata_is_kept_and_ids_are_unique,
            room_posts_get_consecutive_seqs_and_one_room_effect,
            room_recent_ring_keeps_only_the_newest,
            room_broadcast_channel_refuses_non_admins,
            room_delete_removes_record_and_ring,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::$case($make());
            }
        )*
    };
}
