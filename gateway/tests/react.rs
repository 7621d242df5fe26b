//! Reactions and pins through a running gateway (docs/protocol.md,
//! "Reactions and pins"), on the embedded store and on a real
//! `redis-server`: a reaction and a pin in a group are pushed to every
//! member's devices, a device that logs in later syncs the message with its
//! reaction totals, `pins` lists the pin, and a member who is not an admin
//! cannot pin.

#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use support::{Client, Gateway};
use tern_gateway::config::{Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

const G: &str = "g:crew";
const THUMBS: &str = "\u{1f44d}";

/// The entry body of a pushed `deliver` that `pick` accepts.
fn pushed<T>(f: &pb::Frame, pick: impl Fn(&pb::entry::Body) -> Option<T>) -> Option<T> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    d.entries
        .iter()
        .find_map(|e| e.body.as_ref().and_then(&pick))
}

fn reaction(b: &pb::entry::Body) -> Option<pb::ReactionChange> {
    match b {
        pb::entry::Body::Reaction(r) => Some(r.clone()),
        _ => None,
    }
}

fn pin(b: &pb::entry::Body) -> Option<pb::PinChange> {
    match b {
        pb::entry::Body::Pin(p) => Some(*p),
        _ => None,
    }
}

#[track_caller]
fn ok_seq(f: &pb::Frame) -> u64 {
    match &f.body {
        Some(Body::Ok(ok)) => ok.seq,
        other => panic!("expected ok, got {other:?}"),
    }
}

/// The whole scenario on one gateway.
fn scenario(gw: &Gateway) {
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: vec!["bob".into(), "carol".into()],
        join_policy: pb::JoinPolicy::Open as i32,
        history_visible: true,
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    let ack = alice.send_group_text("crew", "m1", "ship it?");
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("{ack:?}")
    };
    let seq = ack.seq;

    let r = bob.request(Body::React(pb::ReactRequest {
        conversation_id: G.into(),
        seq,
        emoji: THUMBS.into(),
        remove: false,
    }));
    let reaction_seq = ok_seq(&r);
    assert!(reaction_seq > seq);
    for c in [&mut alice, &mut bob, &mut carol] {
        let f = c.wait_push(|f| pushed(f, reaction).is_some());
        let x = pushed(&f, reaction).unwrap();
        assert_eq!((x.seq, x.emoji.as_str(), x.removed), (seq, THUMBS, false));
    }

    let r = carol.request(Body::Pin(pb::PinRequest {
        conversation_id: G.into(),
        seq,
        unpin: false,
    }));
    match &r.body {
        Some(Body::Error(e)) => assert_eq!(e.code(), pb::ErrorCode::PermissionDenied),
        other => panic!("a member's pin: {other:?}"),
    }
    let r = alice.request(Body::Pin(pb::PinRequest {
        conversation_id: G.into(),
        seq,
        unpin: false,
    }));
    assert!(ok_seq(&r) > reaction_seq);
    for c in [&mut alice, &mut bob, &mut carol] {
        let f = c.wait_push(|f| pushed(f, pin).is_some());
        assert_eq!(pushed(&f, pin).unwrap().seq, seq);
    }

    // A device that was offline syncs the message with its totals.
    let (mut tablet, _) = Client::login(gw.tcp, "carol", "tablet");
    let r = tablet.request(Body::Sync(pb::SyncRequest::default()));
    let Some(Body::SyncResult(s)) = r.body else {
        panic!("{r:?}")
    };
    let m = s
        .entries
        .iter()
        .find(|e| e.conversation_id == G && e.seq == seq)
        .and_then(|e| match &e.body {
            Some(pb::entry::Body::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .expect("the message");
    assert_eq!(m.reactions.len(), 1);
    assert_eq!(
        (m.reactions[0].emoji.as_str(), m.reactions[0].count),
        (THUMBS, 1)
    );
    assert_eq!(m.reactions[0].users, ["bob"]);

    let r = tablet.request(Body::Pins(pb::PinListRequest {
        conversation_id: G.into(),
    }));
    let Some(Body::PinsResult(p)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(p.pins.len(), 1);
    assert_eq!(
        (p.pins[0].seq, p.pins[0].pinned_by.as_str()),
        (seq, "alice")
    );
}

#[test]
fn reactions_and_pins_reach_every_member_and_sync_on_both_stores() {
    // Proves the scenario above over TCP on a real gateway, first on the
    // embedded store, then on a real redis-server (started here).
    let gw = Gateway::start(Driver::Epoll);
    scenario(&gw);
    drop(gw);
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    let gw = Gateway::start_with(Driver::Epoll, |c: &mut Config| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
    scenario(&gw);
}
