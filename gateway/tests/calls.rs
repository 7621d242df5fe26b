//! Call signalling through a running gateway (docs/protocol.md, "Calls"),
//! on the embedded store and on a real `redis-server` (the call record is
//! stored in the conversation's log): the invite rings every device of the
//! callee, an answer on one device tells the callee's other devices to stop
//! ringing, SDP/ICE reach the other participant only, the hang-up ends the
//! call for both and its `CallRecord` entry is pushed and synced; the bad
//! input of the issue gets typed errors; an unanswered ring ends MISSED by
//! the server's timer.

#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use support::{Client, Gateway};
use tern_gateway::config::{Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

#[path = "support/calls.rs"]
mod calls_support;

use calls_support::*;

/// The call record pushed to `c` (as a `Deliver`).
fn pushed_record(c: &mut Client) -> pb::CallRecord {
    let f = c.wait_push(|f| match &f.body {
        Some(Body::Deliver(d)) => d
            .entries
            .iter()
            .any(|e| matches!(e.body, Some(pb::entry::Body::CallRecord(_)))),
        _ => false,
    });
    let Some(Body::Deliver(d)) = f.body else {
        unreachable!()
    };
    d.entries
        .into_iter()
        .find_map(|e| match e.body {
            Some(pb::entry::Body::CallRecord(r)) => Some(r),
            _ => None,
        })
        .unwrap()
}

fn synced_records(c: &mut Client) -> Vec<pb::CallRecord> {
    let r = c.request(Body::Sync(pb::SyncRequest {
        cursors: vec![],
        limit: 0,
    }));
    let Some(Body::SyncResult(s)) = r.body else {
        panic!("{r:?}")
    };
    s.entries
        .into_iter()
        .filter_map(|e| match e.body {
            Some(pb::entry::Body::CallRecord(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn a_call_rings_is_answered_relays_and_is_recorded(tweak: impl FnOnce(&mut Config)) {
    let gw = Gateway::start_with(Driver::Epoll, tweak);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "laptop");
    let (mut phone, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut tablet, _) = Client::login(gw.tcp, "bob", "tablet");
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");

    let id = ok(&alice.request(invite(AB))).id;
    for bob in [&mut phone, &mut tablet] {
        let ring = event(bob, pb::CallEventKind::Ringing);
        assert_eq!(
            (ring.call_id.as_str(), ring.caller_id.as_str()),
            (id.as_str(), "alice")
        );
    }
    // Bad input while it rings: carol is not in the call; the SDP limit.
    let r = carol.request(signal(&id, "bob", pb::CallSignalKind::Offer, "x"));
    assert_eq!(code(&r), pb::ErrorCode::NotInCall);
    let r = carol.request(step(pb::CallActionKind::Accept, &id));
    assert_eq!(code(&r), pb::ErrorCode::NotInCall);
    let big = "a".repeat(tern_protocol::validate::CALL_SIGNAL_BYTES_MAX + 1);
    let r = alice.request(signal(&id, "bob", pb::CallSignalKind::Offer, &big));
    assert_eq!(code(&r), pb::ErrorCode::InvalidArgument);

    // Answered on the phone: the tablet hears ACCEPTED naming the phone.
    ok(&phone.request(step(pb::CallActionKind::Accept, &id)));
    let acc = event(&mut tablet, pb::CallEventKind::Accepted);
    assert_eq!(
        (acc.user_id.as_str(), acc.device_id.as_str()),
        ("bob", "phone")
    );
    event(&mut alice, pb::CallEventKind::Accepted);
    let r = tablet.request(step(pb::CallActionKind::Accept, &id));
    assert_eq!(code(&r), pb::ErrorCode::AlreadyExists, "answered elsewhere");

    ok(&alice.request(signal(&id, "bob", pb::CallSignalKind::Offer, "v=0 offer")));
    let s = signal_event(&mut phone);
    assert_eq!(
        (
            s.from_user_id.as_str(),
            s.from_device_id.as_str(),
            s.payload.as_str()
        ),
        ("alice", "laptop", "v=0 offer")
    );
    ok(&phone.request(signal(
        &id,
        "alice",
        pb::CallSignalKind::Answer,
        "v=0 answer",
    )));
    assert_eq!(signal_event(&mut alice).kind(), pb::CallSignalKind::Answer);
    ok(&phone.request(signal(&id, "alice", pb::CallSignalKind::Ice, "candidate:1")));
    assert_eq!(signal_event(&mut alice).payload, "candidate:1");

    let seq = ok(&alice.request(step(pb::CallActionKind::Hangup, &id))).seq;
    assert!(seq > 0, "the record's seq");
    for c in [&mut phone, &mut tablet] {
        let end = event(c, pb::CallEventKind::Ended);
        assert_eq!(end.outcome(), pb::CallOutcome::Completed);
    }
    let rec = pushed_record(&mut phone);
    assert_eq!(rec.call_id, id);
    assert_eq!(rec.answered, ["bob"]);
    assert_eq!(rec.outcome(), pb::CallOutcome::Completed);
    // Accepting the ended call: CALL_ENDED, nothing stored.
    let r = tablet.request(step(pb::CallActionKind::Accept, &id));
    assert_eq!(code(&r), pb::ErrorCode::CallEnded);
    // A device that comes later syncs the record.
    let (mut late, _) = Client::login(gw.tcp, "bob", "desktop");
    assert_eq!(synced_records(&mut late), [rec]);
    // No signalling ever reached carol.
    assert!(
        !carol
            .pushes
            .iter()
            .any(|f| matches!(f.body, Some(Body::CallEvent(_) | Body::CallSignalEvent(_))))
    );
}

#[test]
fn a_call_rings_is_answered_relays_and_is_recorded_embedded() {
    // Proves, on the embedded store, the call flow of the module doc.
    a_call_rings_is_answered_relays_and_is_recorded(|_| {});
}

#[test]
fn a_call_rings_is_answered_relays_and_is_recorded_on_redis() {
    // Proves the same flow on a real redis-server (the record is stored in
    // Redis; the signalling passes the node's push path).
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    a_call_rings_is_answered_relays_and_is_recorded(|c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
}

#[test]
fn an_unanswered_call_ends_missed_and_a_non_member_cannot_call_a_group() {
    // Proves the ring timeout (`[chat] call_ring_timeout_ms`, 300 ms here):
    // the callee's devices get MISSED then ENDED(MISSED) from the server's
    // timer, and the record is synced; a non-member calling a group gets
    // NOT_MEMBER and nobody is rung.
    let gw = Gateway::start_with(Driver::Epoll, |c| c.chat.call_ring_timeout_ms = 300);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "laptop");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut dave, _) = Client::login(gw.tcp, "dave", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "team".into(),
        name: "Team".into(),
        members: vec!["bob".into()],
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    let r = dave.request(invite("g:team"));
    assert_eq!(code(&r), pb::ErrorCode::NotMember);

    let id = ok(&alice.request(invite(AB))).id;
    event(&mut bob, pb::CallEventKind::Ringing);
    let missed = event(&mut bob, pb::CallEventKind::Missed);
    assert_eq!(missed.user_id, "bob");
    let end = event(&mut bob, pb::CallEventKind::Ended);
    assert_eq!(
        (end.call_id.as_str(), end.outcome()),
        (id.as_str(), pb::CallOutcome::Missed)
    );
    let rec = synced_records(&mut bob);
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].outcome(), pb::CallOutcome::Missed);
    assert!(
        !bob.pushes
            .iter()
            .any(|f| matches!(&f.body, Some(Body::CallEvent(e)) if e.conversation_id == "g:team"))
    );
}
