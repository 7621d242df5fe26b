//! Rooms across nodes: three real `tern serve --store redis` processes on
//! one real `redis-server` (gateway/tests/support/cluster.rs). A room
//! message reaches the joined connections on every node, once, as one
//! channel record per other node whatever the number of members; a member
//! on another node posts as well; the owner's deletion reaches every
//! member on every node as `room_closed` and unsubscribes them there.
//! Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use cluster_support::{Redis, metric, nodes, records_out};
use support::{Client, text_content};
use tern_protocol::pb::{self, frame::Body};

fn room_push(c: &mut Client) -> (u64, String) {
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
    (e.seq, text)
}

fn post(c: &mut Client, text: &str) -> u64 {
    let r = c.request(Body::RoomPost(pb::RoomPost {
        room_id: "hall".into(),
        content: Some(text_content(text)),
        client_msg_id: String::new(),
    }));
    match r.body {
        Some(Body::Ok(ok)) => ok.seq,
        other => panic!("expected ok, got {other:?}"),
    }
}

#[test]
fn a_room_message_reaches_members_on_every_node_as_one_record_per_node() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut owner, _) = Client::login(ns[0].tcp, "owner", "phone");
    let r = owner.request(Body::RoomCreate(pb::RoomCreate {
        room_id: "hall".into(),
        name: "Hall".into(),
        kind: pb::RoomKind::Chat as i32,
        admins: vec![],
    }));
    assert!(matches!(r.body, Some(Body::RoomInfoResult(_))), "{r:?}");
    // Three members on each node (several shards each).
    let mut members = Vec::new();
    for (n, node) in ns.iter().enumerate() {
        for i in 0..3 {
            let (mut c, _) = Client::login(node.tcp, &format!("m{n}x{i}"), "phone");
            let r = c.request(Body::RoomJoin(pb::RoomJoin {
                room_id: "hall".into(),
            }));
            assert!(matches!(r.body, Some(Body::RoomJoined(_))), "{r:?}");
            members.push(c);
        }
    }
    let sent = records_out(&ns[0]);
    let received: Vec<u64> = ns
        .iter()
        .map(|n| metric(n, "tern_cluster_records_received_total"))
        .collect();
    assert_eq!(post(&mut owner, "to every node"), 1);
    for m in &mut members {
        assert_eq!(room_push(m), (1, "to every node".into()));
    }
    // One record per other node, not one per member.
    assert_eq!(records_out(&ns[0]) - sent, 2);
    ns[1].wait_metric(&format!(
        "tern_cluster_records_received_total {}",
        received[1] + 1
    ));
    ns[2].wait_metric(&format!(
        "tern_cluster_records_received_total {}",
        received[2] + 1
    ));
    // A member on node 3 posts: node 1's and node 2's members get it, and
    // each member's next room message is this one (exactly one copy of 1).
    assert_eq!(post(&mut members[8], "from node 3"), 2);
    for m in &mut members {
        assert_eq!(room_push(m), (2, "from node 3".into()));
    }

    // Deleted: every member on every node is told, once, and unsubscribed
    // there. The id made again (a new room) reaches none of them: each
    // one's next room message is the one of `probe` posted after it (the
    // owner's posts reach each node in order, one stream per node).
    let sent = records_out(&ns[0]);
    let r = owner.request(Body::RoomDelete(pb::RoomDelete {
        room_id: "hall".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    assert_eq!(records_out(&ns[0]) - sent, 2, "one record per other node");
    for m in &mut members {
        let f = m.wait_push(|f| matches!(f.body, Some(Body::RoomClosed(_))));
        assert_eq!(
            f.body,
            Some(Body::RoomClosed(pb::RoomClosed {
                room_id: "hall".into()
            }))
        );
    }
    for room in ["hall", "probe"] {
        let r = owner.request(Body::RoomCreate(pb::RoomCreate {
            room_id: room.into(),
            name: room.into(),
            kind: pb::RoomKind::Chat as i32,
            admins: vec![],
        }));
        assert!(matches!(r.body, Some(Body::RoomInfoResult(_))), "{r:?}");
    }
    assert_eq!(post(&mut owner, "the new hall"), 1);
    for m in &mut members {
        let r = m.request(Body::RoomJoin(pb::RoomJoin {
            room_id: "probe".into(),
        }));
        assert!(matches!(r.body, Some(Body::RoomJoined(_))), "{r:?}");
    }
    let r = owner.request(Body::RoomPost(pb::RoomPost {
        room_id: "probe".into(),
        content: Some(text_content("probe")),
        client_msg_id: String::new(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    for m in &mut members {
        assert_eq!(room_push(m), (1, "probe".into()));
    }
}
