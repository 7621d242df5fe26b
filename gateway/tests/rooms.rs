//! Rooms and broadcast channels through a running gateway (docs/protocol.md,
//! "Rooms"), over real sockets, on the embedded store and on a real
//! `redis-server`: a room message reaches every joined connection on both
//! shards exactly once; leaving or closing unsubscribes; a join flood is
//! refused with typed errors and changes nothing; only admins post in a
//! broadcast channel; the recent window is served by `room_history`; a
//! deleted room tells its members (`room_closed`), unsubscribes them and
//! answers NOT_FOUND.

#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::time::{Duration, Instant};

use support::{Client, Gateway, WAIT, text_content};
use tern_gateway::config::{Config, Driver, StoreKind};
use tern_gateway::msg::owner_shard;
use tern_protocol::pb::{self, frame::Body};

fn create(c: &mut Client, room: &str, kind: pb::RoomKind, admins: &[&str]) -> pb::Frame {
    c.request(Body::RoomCreate(pb::RoomCreate {
        room_id: room.into(),
        name: room.into(),
        kind: kind as i32,
        admins: admins.iter().map(|a| (*a).to_owned()).collect(),
    }))
}

fn join(c: &mut Client, room: &str) -> pb::Frame {
    c.request(Body::RoomJoin(pb::RoomJoin {
        room_id: room.into(),
    }))
}

fn leave(c: &mut Client, room: &str) -> pb::Frame {
    c.request(Body::RoomLeave(pb::RoomLeave {
        room_id: room.into(),
    }))
}

fn post(c: &mut Client, room: &str, text: &str) -> pb::Frame {
    c.request(Body::RoomPost(pb::RoomPost {
        room_id: room.into(),
        content: Some(text_content(text)),
        client_msg_id: String::new(),
    }))
}

#[track_caller]
fn ok_seq(f: &pb::Frame) -> u64 {
    match &f.body {
        Some(Body::Ok(ok)) => ok.seq,
        other => panic!("expected ok, got {other:?}"),
    }
}

#[track_caller]
fn error_code(f: &pb::Frame) -> pb::ErrorCode {
    match &f.body {
        Some(Body::Error(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[track_caller]
fn joined(f: &pb::Frame) -> pb::RoomInfo {
    match &f.body {
        Some(Body::RoomJoined(j)) => j.room.clone().expect("room"),
        other => panic!("expected room_joined, got {other:?}"),
    }
}

/// The next room message this client gets: (room conversation, seq, text).
fn next_room_push(c: &mut Client) -> (String, u64, String) {
    let f = c.wait_push(|f| matches!(f.body, Some(Body::RoomDeliver(_))));
    let Some(Body::RoomDeliver(d)) = f.body else {
        unreachable!()
    };
    let e = d.entry.expect("entry");
    let text = match e.body {
        Some(pb::entry::Body::Message(m)) => match m.content.and_then(|c| c.kind) {
            Some(pb::content::Kind::Text(t)) => t.text,
            _ => String::new(),
        },
        _ => String::new(),
    };
    (e.conversation_id, e.seq, text)
}

/// The sum of every sample of metric `name` (all shards, all labels).
fn metric_sum(gw: &Gateway, name: &str) -> u64 {
    let text = gw.http_get("/metrics").1;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (bounded) until metric `name` sums to `want`.
fn wait_sum(gw: &Gateway, name: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric_sum(gw, name);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Users whose owner shard (of `shards`) is 0 and 1, `n` of each.
fn users_on_each_shard(shards: usize, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for s in 0..shards {
        out.extend(
            (0..)
                .map(|i| format!("u{i}"))
                .filter(|u| owner_shard(u, shards) == s)
                .take(n),
        );
    }
    out
}

/// Join, post, deliver once to every joined connection on both shards;
/// leave and close unsubscribe; broadcast refusal; recent history.
fn scenario(gw: &Gateway) {
    let (mut owner, _) = Client::login(gw.tcp, "owner", "phone");
    let info = match create(&mut owner, "lobby", pb::RoomKind::Chat, &[]).body {
        Some(Body::RoomInfoResult(r)) => r.room.expect("room"),
        other => panic!("expected room_info_result, got {other:?}"),
    };
    assert_eq!((info.owner.as_str(), info.last_seq), ("owner", 0));
    // Two users on each shard, the first with two devices: five members.
    let users = users_on_each_shard(2, 2);
    let mut members: Vec<Client> = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (mut c, _) = Client::login(gw.tcp, u, "phone");
        assert_eq!(joined(&join(&mut c, "lobby")).room_id, "lobby");
        members.push(c);
        if i == 0 {
            let (mut tablet, _) = Client::login(gw.tcp, u, "tablet");
            joined(&join(&mut tablet, "lobby"));
            members.push(tablet);
        }
    }
    // Joining twice changes nothing (one copy per message below).
    joined(&join(&mut members[1], "lobby"));
    let (mut outsider, _) = Client::login(gw.tcp, &users[3], "laptop");
    let before = metric_sum(gw, "tern_room_deliveries_total");

    assert_eq!(ok_seq(&post(&mut owner, "lobby", "one")), 1);
    assert_eq!(ok_seq(&post(&mut owner, "lobby", "two")), 2);
    for m in &mut members {
        assert_eq!(next_room_push(m), ("r:lobby".into(), 1, "one".into()));
        assert_eq!(
            next_room_push(m),
            ("r:lobby".into(), 2, "two".into()),
            "once each"
        );
    }
    wait_sum(
        gw,
        "tern_room_deliveries_total",
        before + 2 * members.len() as u64,
    );

    // The outsider never joined: its first room message is the one after
    // its join, and the join reports the newest seq.
    assert_eq!(joined(&join(&mut outsider, "lobby")).last_seq, 2);
    assert_eq!(ok_seq(&post(&mut owner, "lobby", "three")), 3);
    assert_eq!(next_room_push(&mut outsider).1, 3);
    for m in &mut members {
        assert_eq!(next_room_push(m).1, 3);
    }

    // Leave: answered `ok`, then nothing until the next join.
    assert_eq!(ok_seq(&leave(&mut members[0], "lobby")), 0);
    assert_eq!(
        ok_seq(&leave(&mut members[0], "lobby")),
        0,
        "leaving twice is ok"
    );
    // Close: the shard forgets the connection's subscriptions.
    let closed = metric_sum(gw, "tern_connections_closed_total");
    let gone = members.pop().expect("a member");
    drop(gone);
    wait_sum(gw, "tern_connections_closed_total", closed + 1);
    let before = metric_sum(gw, "tern_room_deliveries_total");
    assert_eq!(ok_seq(&post(&mut owner, "lobby", "four")), 4);
    for m in members.iter_mut().skip(1) {
        assert_eq!(next_room_push(m).1, 4);
    }
    assert_eq!(next_room_push(&mut outsider).1, 4);
    // Members minus the one that left and the one that closed, plus the
    // outsider: exactly these got it.
    let reached = members.len() as u64 - 1 + 1;
    wait_sum(gw, "tern_room_deliveries_total", before + reached);
    joined(&join(&mut members[0], "lobby"));
    assert_eq!(ok_seq(&post(&mut owner, "lobby", "five")), 5);
    assert_eq!(next_room_push(&mut members[0]).1, 5, "nothing while away");

    // A broadcast channel: only the owner and admins post.
    create(&mut owner, "news", pb::RoomKind::Broadcast, &[&users[1]]);
    joined(&join(&mut members[0], "news"));
    // members[3] is users[2]'s phone: not an admin.
    assert_eq!(
        error_code(&post(&mut members[3], "news", "hello")),
        pb::ErrorCode::BroadcastOnly
    );
    assert_eq!(ok_seq(&post(&mut owner, "news", "from the owner")), 1);
    assert_eq!(
        next_room_push(&mut members[0]),
        ("r:news".into(), 1, "from the owner".into())
    );
    let (mut admin, _) = Client::login(gw.tcp, &users[1], "desk");
    assert_eq!(ok_seq(&post(&mut admin, "news", "from an admin")), 2);
    assert_eq!(next_room_push(&mut members[0]).1, 2);

    // The recent window, oldest first; unknown rooms are NOT_FOUND.
    let r = members[2].request(Body::RoomHistory(pb::RoomHistoryRequest {
        room_id: "lobby".into(),
        before_seq: 0,
        limit: 3,
    }));
    let Some(Body::RoomHistoryResult(h)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(
        h.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(
        error_code(&join(&mut members[2], "nope")),
        pb::ErrorCode::NotFound
    );
    assert_eq!(
        error_code(&post(&mut members[2], "nope", "x")),
        pb::ErrorCode::NotFound
    );
    // A room id is not a conversation: `send` and `history` refuse it.
    let r = members[2].request(Body::History(pb::HistoryRequest {
        conversation_id: "r:lobby".into(),
        ..Default::default()
    }));
    assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
}

#[test]
fn rooms_deliver_to_every_joined_connection_once_on_both_stores() {
    // Proves the scenario above over TCP on a real two-shard gateway, first
    // on the embedded store, then on a real redis-server (started here).
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

#[test]
fn a_join_flood_is_refused_typed_and_changes_nothing() {
    // Proves the per-connection bound (3 rooms) and the per-shard bound
    // (4 rooms with members, one shard) refuse joins with ROOM_JOIN_LIMIT
    // and ROOM_CAPACITY; a flood of 200 pipelined joins is all refused while
    // the connection stays served; a refused join subscribed nothing (the
    // room's messages do not arrive), and after a leave the join succeeds.
    let gw = Gateway::start_with(Driver::Epoll, |c: &mut Config| {
        c.shards.count = 1;
        c.rooms.per_connection_max = 3;
        c.rooms.per_shard_max = 4;
    });
    let (mut a, _) = Client::login(gw.tcp, "alice", "phone");
    for r in ["r1", "r2", "r3", "r4", "r5", "r6"] {
        create(&mut a, r, pb::RoomKind::Chat, &[]);
    }
    for r in ["r1", "r2", "r3"] {
        joined(&join(&mut a, r));
    }
    assert_eq!(
        error_code(&join(&mut a, "r4")),
        pb::ErrorCode::RoomJoinLimit
    );
    // The flood: every join in one write, every answer typed.
    let first = 1_000;
    let mut out = Vec::new();
    for i in 0..200u64 {
        let frame = pb::Frame {
            request_id: first + i,
            body: Some(Body::RoomJoin(pb::RoomJoin {
                room_id: format!("r{}", 4 + i % 3),
            })),
        };
        tern_protocol::codec::encode_frame(&frame, &mut out);
    }
    a.send_raw(&out).unwrap();
    let mut refused = 0;
    while refused < 200 {
        let f = a.next_frame().expect("an answer to every join");
        if f.request_id >= first {
            assert_eq!(error_code(&f), pb::ErrorCode::RoomJoinLimit);
            refused += 1;
        }
    }
    // Still served, and r4 was never joined.
    let (mut b, _) = Client::login(gw.tcp, "bob", "phone");
    joined(&join(&mut b, "r4"));
    assert_eq!(ok_seq(&post(&mut b, "r4", "not for alice")), 1);
    assert_eq!(next_room_push(&mut b).1, 1);
    // The shard now holds r1, r2, r3, r4: a fifth room is over capacity,
    // a room it holds is not.
    let (mut c, _) = Client::login(gw.tcp, "carol", "phone");
    assert_eq!(error_code(&join(&mut c, "r5")), pb::ErrorCode::RoomCapacity);
    joined(&join(&mut c, "r1"));
    // Alice leaves r3 and may join r4: its first message is the next one.
    ok_seq(&leave(&mut a, "r3"));
    joined(&join(&mut a, "r4"));
    assert_eq!(ok_seq(&post(&mut b, "r4", "for alice too")), 2);
    assert_eq!(
        next_room_push(&mut a),
        ("r:r4".into(), 2, "for alice too".into())
    );
    assert!(metric_sum(&gw, "tern_room_joins_refused_total") >= 202);
}

fn delete(c: &mut Client, room: &str) -> pb::Frame {
    c.request(Body::RoomDelete(pb::RoomDelete {
        room_id: room.into(),
    }))
}

/// Waits for this client's next `room_closed`, and says which room.
fn next_room_closed(c: &mut Client) -> String {
    let f = c.wait_push(|f| matches!(f.body, Some(Body::RoomClosed(_))));
    let Some(Body::RoomClosed(r)) = f.body else {
        unreachable!()
    };
    r.room_id
}

/// A room's deletion, on a gateway whose connections may join 2 rooms:
/// only the owner deletes; every joined connection on both shards gets
/// `room_closed` once and is unsubscribed (a member that had joined 2
/// rooms may join another; a room made again with the same id reaches
/// none of them); later join, post, history and info are NOT_FOUND.
fn deletion_scenario(gw: &Gateway) {
    let (mut owner, _) = Client::login(gw.tcp, "owner", "phone");
    create(&mut owner, "hall", pb::RoomKind::Chat, &[]);
    create(&mut owner, "keep", pb::RoomKind::Chat, &[]);
    create(&mut owner, "third", pb::RoomKind::Chat, &[]);
    let users = users_on_each_shard(2, 2);
    let mut members: Vec<Client> = Vec::new();
    for u in &users {
        let (mut c, _) = Client::login(gw.tcp, u, "phone");
        joined(&join(&mut c, "hall"));
        joined(&join(&mut c, "keep"));
        members.push(c);
    }
    assert_eq!(
        error_code(&join(&mut members[0], "third")),
        pb::ErrorCode::RoomJoinLimit,
        "two rooms joined: full"
    );
    assert_eq!(ok_seq(&post(&mut owner, "hall", "before")), 1);
    for m in &mut members {
        assert_eq!(next_room_push(m), ("r:hall".into(), 1, "before".into()));
    }

    // Only the owner deletes: a member's delete changes nothing.
    assert_eq!(
        error_code(&delete(&mut members[1], "hall")),
        pb::ErrorCode::PermissionDenied
    );
    assert_eq!(ok_seq(&post(&mut owner, "hall", "still here")), 2);
    for m in &mut members {
        assert_eq!(next_room_push(m).1, 2);
    }

    assert_eq!(ok_seq(&delete(&mut owner, "hall")), 0);
    for m in &mut members {
        assert_eq!(next_room_closed(m), "hall");
    }
    // Unsubscribed on the shard: the join bound has room again.
    joined(&join(&mut members[0], "third"));
    for r in [
        join(&mut members[1], "hall"),
        post(&mut members[1], "hall", "late"),
        members[1].request(Body::RoomHistory(pb::RoomHistoryRequest {
            room_id: "hall".into(),
            before_seq: 0,
            limit: 0,
        })),
        members[1].request(Body::RoomInfo(pb::RoomInfoRequest {
            room_id: "hall".into(),
        })),
        delete(&mut owner, "hall"),
    ] {
        assert_eq!(error_code(&r), pb::ErrorCode::NotFound, "{r:?}");
    }
    assert_eq!(ok_seq(&leave(&mut members[1], "hall")), 0);

    // The id made again is a new room (seq from 1) that none of the old
    // members joined: each one's next room message is the one of `keep`
    // posted after it, not the new hall's.
    let again = match create(&mut members[2], "hall", pb::RoomKind::Chat, &[]).body {
        Some(Body::RoomInfoResult(r)) => r.room.expect("room"),
        other => panic!("expected room_info_result, got {other:?}"),
    };
    assert_eq!(
        (again.owner.as_str(), again.last_seq),
        (users[2].as_str(), 0)
    );
    assert_eq!(ok_seq(&post(&mut owner, "hall", "new hall")), 1);
    assert_eq!(ok_seq(&post(&mut owner, "keep", "kept")), 1);
    for m in &mut members {
        assert_eq!(next_room_push(m), ("r:keep".into(), 1, "kept".into()));
    }
}

#[test]
fn deleting_a_room_closes_it_for_every_member_on_both_stores() {
    // Proves the deletion scenario above over TCP on a real two-shard
    // gateway, on the embedded store and on a real redis-server.
    let tweak = |c: &mut Config| c.rooms.per_connection_max = 2;
    let gw = Gateway::start_with(Driver::Epoll, tweak);
    deletion_scenario(&gw);
    drop(gw);
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    let gw = Gateway::start_with(Driver::Epoll, |c: &mut Config| {
        tweak(c);
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
    deletion_scenario(&gw);
}
