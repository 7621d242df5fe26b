//! Calls across gateway nodes (docs/cluster.md, "Calls across nodes"):
//! real `tern serve --store redis` processes on one real `redis-server`,
//! the caller on one node and the callee on another, speaking the raw
//! protocol. A call is kept in Redis, so either node's worker acts on it:
//! it rings, is answered, relays SDP/ICE both ways and hangs up across the
//! nodes with one `CallRecord`; a ring times out once although two nodes
//! poll; a call whose owning node is killed ends when its lease lapses.
//! Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::time::{Duration, Instant};

use cluster_support::{Node, Redis, WAIT};
use support::Client;
use tern_protocol::pb::{self, frame::Body};

#[path = "support/calls.rs"]
mod calls_support;

use calls_support::*;

fn is_record(f: &pb::Frame) -> bool {
    match &f.body {
        Some(Body::Deliver(d)) => d
            .entries
            .iter()
            .any(|e| matches!(e.body, Some(pb::entry::Body::CallRecord(_)))),
        _ => false,
    }
}

/// The call records a full sync of `c` returns.
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

/// The pushes `c` gets within `settle` (to show nothing more comes).
fn pushes_within(c: &mut Client, settle: Duration) -> Vec<pb::Frame> {
    let mut out = std::mem::take(&mut c.pushes);
    let deadline = Instant::now() + settle;
    while let Some(f) = c.read_frame_until(deadline) {
        out.push(f);
    }
    out
}

/// Two nodes with `chat` as their `[chat]` section, both seeing both live.
fn two_nodes(redis: &Redis, chat: &str) -> (Node, Node) {
    let extra = format!("[chat]\n{chat}");
    let n1 = Node::start_with(redis, "n1", &extra);
    let n2 = Node::start_with(redis, "n2", &extra);
    for n in [&n1, &n2] {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    (n1, n2)
}

#[test]
fn a_call_between_users_on_two_nodes_rings_answers_relays_and_records_once() {
    // Proves a 1:1 call whose participants are on different nodes: alice
    // (node 1) invites, bob (node 2) is rung and accepts on node 2, SDP and
    // ICE cross both ways, bob hangs up on node 2; both get ENDED and the
    // record push, and each syncs exactly one record (so neither node
    // appended a second), after both nodes' timers have run past the ring
    // timeout and a lease renewal.
    let redis = Redis::start();
    let (n1, n2) = two_nodes(
        &redis,
        "call_ring_timeout_ms = 1000\ncall_lease_ms = 3000\n",
    );
    let (mut alice, _) = Client::login(n1.tcp, "alice", "laptop");
    let (mut bob, welcome) = Client::login(n2.tcp, "bob", "phone");
    assert_eq!(welcome.node_id, "n2");
    redis.wait_routes("bob", &[("phone", "n2")]);

    let id = ok(&alice.request(invite(AB))).id;
    let ring = event(&mut bob, pb::CallEventKind::Ringing);
    assert_eq!(
        (ring.call_id.as_str(), ring.caller_id.as_str()),
        (id.as_str(), "alice")
    );
    // Accepted on node 2, a call node 1 took: before, CALL_ENDED.
    ok(&bob.request(step(pb::CallActionKind::Accept, &id)));
    let acc = event(&mut alice, pb::CallEventKind::Accepted);
    assert_eq!(
        (acc.user_id.as_str(), acc.device_id.as_str()),
        ("bob", "phone")
    );
    ok(&alice.request(signal(&id, "bob", pb::CallSignalKind::Offer, "v=0 offer")));
    let s = signal_event(&mut bob);
    assert_eq!(
        (s.from_user_id.as_str(), s.payload.as_str()),
        ("alice", "v=0 offer")
    );
    ok(&bob.request(signal(
        &id,
        "alice",
        pb::CallSignalKind::Answer,
        "v=0 answer",
    )));
    assert_eq!(signal_event(&mut alice).payload, "v=0 answer");
    ok(&bob.request(signal(&id, "alice", pb::CallSignalKind::Ice, "candidate:b")));
    assert_eq!(signal_event(&mut alice).payload, "candidate:b");
    ok(&alice.request(signal(&id, "bob", pb::CallSignalKind::Ice, "candidate:a")));
    assert_eq!(signal_event(&mut bob).payload, "candidate:a");

    let seq = ok(&bob.request(step(pb::CallActionKind::Hangup, &id))).seq;
    assert!(seq > 0, "the record's seq");
    for c in [&mut alice, &mut bob] {
        let end = event(c, pb::CallEventKind::Ended);
        assert_eq!(end.outcome(), pb::CallOutcome::Completed);
        c.wait_push(is_record);
    }
    // Both nodes' timers pass the ring timeout and a renewal: nothing more.
    let later = pushes_within(&mut alice, Duration::from_millis(2_500));
    assert!(!later.iter().any(is_record), "{later:?}");
    for c in [&mut alice, &mut bob] {
        let records = synced_records(c);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].call_id, id);
        assert_eq!(records[0].answered, ["bob"]);
        assert_eq!(records[0].outcome(), pb::CallOutcome::Completed);
    }
    let r = alice.request(step(pb::CallActionKind::Hangup, &id));
    assert_eq!(code(&r), pb::ErrorCode::CallEnded);
}

#[test]
fn a_ringing_call_times_out_once_with_two_nodes() {
    // Proves the ring timeout with two nodes polling: bob (node 2) never
    // answers a call alice took on node 1; both get MISSED and ENDED
    // (MISSED) once, and exactly one record is synced. Node 2's timer does
    // not expire node 1's call (the invite's node owns it).
    let redis = Redis::start();
    let (n1, n2) = two_nodes(&redis, "call_ring_timeout_ms = 1000\n");
    let (mut alice, _) = Client::login(n1.tcp, "alice", "laptop");
    let (mut bob, _) = Client::login(n2.tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);

    let id = ok(&alice.request(invite(AB))).id;
    event(&mut bob, pb::CallEventKind::Ringing);
    for c in [&mut alice, &mut bob] {
        assert_eq!(event(c, pb::CallEventKind::Missed).user_id, "bob");
        let end = event(c, pb::CallEventKind::Ended);
        assert_eq!(
            (end.call_id.as_str(), end.outcome()),
            (id.as_str(), pb::CallOutcome::Missed)
        );
    }
    let later = pushes_within(&mut bob, Duration::from_millis(2_500));
    let again = later.iter().filter(|f| {
        matches!(&f.body, Some(Body::CallEvent(e))
            if matches!(e.kind(), pb::CallEventKind::Missed | pb::CallEventKind::Ended))
    });
    assert_eq!(again.count(), 0, "{later:?}");
    for c in [&mut alice, &mut bob] {
        let records = synced_records(c);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].outcome(), pb::CallOutcome::Missed);
    }
}

#[test]
fn a_call_outlives_its_lease_while_its_node_lives_and_ends_when_it_is_killed() {
    // Proves the call lease (`[chat] call_lease_ms`, 3 s here): while the
    // node that took the invite lives, it renews the lease and an answered
    // call goes on past two leases; once that node is killed, the call is
    // gone within a lease and bob's signal on node 2 gets CALL_ENDED, so
    // a dead node never leaves a call alive forever.
    let redis = Redis::start();
    let (mut n1, n2) = two_nodes(&redis, "call_lease_ms = 3000\n");
    let (mut alice, _) = Client::login(n1.tcp, "alice", "laptop");
    let (mut bob, _) = Client::login(n2.tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let id = ok(&alice.request(invite(AB))).id;
    event(&mut bob, pb::CallEventKind::Ringing);
    ok(&bob.request(step(pb::CallActionKind::Accept, &id)));
    event(&mut alice, pb::CallEventKind::Accepted);

    std::thread::sleep(Duration::from_millis(6_500));
    ok(&bob.request(signal(&id, "alice", pb::CallSignalKind::Ice, "still")));
    assert_eq!(signal_event(&mut alice).payload, "still");

    n1.kill9();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = bob.request(signal(&id, "alice", pb::CallSignalKind::Ice, "hello?"));
        match &r.body {
            Some(Body::Ok(_)) => {}
            _ => {
                assert_eq!(code(&r), pb::ErrorCode::CallEnded);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the call outlived its node");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = bob.request(step(pb::CallActionKind::Hangup, &id));
    assert_eq!(code(&r), pb::ErrorCode::CallEnded);
}
