//! Operator calls across nodes: real `tern serve --store redis` processes
//! on one real `redis-server`, the server API called over HTTP on one node,
//! protocol clients on the others. Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::time::Duration;

use cluster_support::{Node, Redis};
use serde_json::{Value, json};
use support::{Client, api_request};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "admin-key-0123456789";

fn node(redis: &Redis, id: &str) -> Node {
    Node::start_with(
        redis,
        id,
        &format!("[api]\nkeys = [{{ name = \"ops\", key = \"{KEY}\", scopes = [\"admin\"] }}]\n"),
    )
}

fn kicked_with(c: &mut Client) -> Option<pb::KickReason> {
    let f = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = f.body else {
        return None;
    };
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "not closed after the kick"
    );
    pb::KickReason::try_from(k.reason).ok()
}

/// Proves a ban made through node 1's API closes the user's device on node
/// 2 (the kick travels as a push through node 2's delivery stream), that a
/// login on either node is then refused from the ban in Redis, and that an
/// unban on node 1 lets a login on node 2 be served again (node 2's
/// in-memory record of the ban is cleared by its login check).
#[test]
fn a_ban_on_one_node_kicks_and_refuses_on_another() {
    let redis = Redis::start();
    let n1 = node(&redis, "n1");
    let n2 = node(&redis, "n2");
    for n in [&n1, &n2] {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    let (mut phone, _) = Client::login(n2.tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let (s, body) = api_request(
        n1.http,
        "POST",
        "/api/v1/users/bob/ban",
        Some(KEY),
        &json!({}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(kicked_with(&mut phone), Some(pb::KickReason::Banned));
    for n in [&n1, &n2] {
        let (mut again, _) = Client::login(n.tcp, "bob", "tablet");
        assert_eq!(
            kicked_with(&mut again),
            Some(pb::KickReason::Banned),
            "{}",
            n.id
        );
    }
    let (s, body) = api_request(
        n1.http,
        "DELETE",
        "/api/v1/users/bob/ban",
        Some(KEY),
        &Value::Null,
    );
    assert_eq!(s, 200, "{body}");
    let (mut back, _) = Client::login(n2.tcp, "bob", "phone");
    let answer = back.request(Body::Profile(pb::ProfileRequest {
        user_id: "bob".into(),
    }));
    assert!(
        matches!(answer.body, Some(Body::ProfileResult(_))),
        "{answer:?}"
    );
    // A kick of one device through node 1 reaches it on node 2.
    redis.wait_routes("bob", &[("phone", "n2")]);
    let (s, _) = api_request(
        n1.http,
        "POST",
        "/api/v1/users/bob/kick",
        Some(KEY),
        &json!({"device_id": "phone"}),
    );
    assert_eq!(s, 200);
    assert_eq!(kicked_with(&mut back), Some(pb::KickReason::Admin));
}
