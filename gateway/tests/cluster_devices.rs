//! A user's devices across gateway nodes (docs/cluster.md, "Devices across
//! nodes"): real `tern serve --store redis` processes on one real
//! `redis-server`, clients speaking the raw protocol. The device list of
//! any node names the user's devices on every live node, with what their
//! logins said; `device_logout` on one node kicks the device on another,
//! and its old token is then refused on both. The login policy's class
//! limits count the user's devices on every node, racing logins included
//! (docs/cluster.md, "Login policies across nodes"), and the server API's
//! device calls reach every node. Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use cluster_support::{Redis, WAIT, nodes};
use support::{Client, api_request};
use tern_protocol::pb::{self, frame::Body};

/// Logs `device` in at `addr` with `token` (whose user it is), as
/// `platform` with client version `<device>-1.0`; the whole answer
/// (Welcome or an error).
fn auth(
    addr: std::net::SocketAddr,
    device: &str,
    platform: pb::Platform,
    token: &str,
) -> (Client, pb::Frame) {
    let mut c = Client::connect(addr);
    let r = c.request(Body::Auth(pb::Auth {
        token: token.into(),
        device_id: device.into(),
        protocol_version: 1,
        platform: platform as i32,
        client_version: format!("{device}-1.0"),
        ..Default::default()
    }));
    (c, r)
}

fn list(c: &mut Client) -> Vec<pb::DeviceInfo> {
    match c.request(Body::DeviceList(pb::DeviceListRequest {})).body {
        Some(Body::DeviceListResult(r)) => r.devices,
        other => panic!("{other:?}"),
    }
}

fn ids(devices: &[pb::DeviceInfo]) -> Vec<(String, String)> {
    let mut v: Vec<_> = devices
        .iter()
        .map(|d| (d.device_id.clone(), d.node_id.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_device_list_of_one_node_names_devices_on_every_node() {
    // Proves the list across nodes: alice's laptop on node 1 and phone on
    // node 2 each list both devices, with the node that holds each, the
    // platform and client version its login sent, and `current` only on
    // the asking connection; once the phone closes, node 1's list no
    // longer names it (its facts go with its route).
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let token = support::Gateway::token("alice");
    let (mut laptop, r) = auth(ns[0].tcp, "laptop", pb::Platform::Desktop, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let (mut phone, r) = auth(ns[1].tcp, "phone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    redis.wait_routes("alice", &[("laptop", "n1"), ("phone", "n2")]);

    let want = [
        ("laptop".to_owned(), "n1".to_owned()),
        ("phone".to_owned(), "n2".to_owned()),
    ];
    for c in [&mut laptop, &mut phone] {
        let devices = list(c);
        assert_eq!(ids(&devices), want, "{devices:?}");
    }
    let from_laptop = list(&mut laptop);
    let phone_info = from_laptop.iter().find(|d| d.device_id == "phone").unwrap();
    assert_eq!(phone_info.platform(), pb::Platform::Ios);
    assert_eq!(phone_info.client_version, "phone-1.0");
    assert!(phone_info.login_time_ms > 0);
    assert!(!phone_info.current);
    assert!(
        from_laptop
            .iter()
            .find(|d| d.device_id == "laptop")
            .unwrap()
            .current
    );

    drop(phone);
    redis.wait_routes("alice", &[("laptop", "n1")]);
    assert_eq!(
        ids(&list(&mut laptop)),
        [("laptop".to_owned(), "n1".to_owned())]
    );
}

#[test]
fn a_logout_on_one_node_kicks_the_device_on_another_and_its_token_is_refused_on_both() {
    // Proves logout across nodes: alice's laptop on node 1 logs out her
    // phone on node 2; the phone gets Kick LOGGED_OUT and closes; the
    // phone's old token is then refused (DEVICE_LOGGED_OUT) on node 2 and
    // on node 1, which remember the logout; on node 3 the login is kicked
    // LOGGED_OUT right after its Welcome, by the logout remembered in
    // Redis; a new token gets in. A device connected nowhere is NOT_FOUND.
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let token = support::Gateway::token("alice");
    let (mut laptop, r) = auth(ns[0].tcp, "laptop", pb::Platform::Desktop, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let (mut phone, r) = auth(ns[1].tcp, "phone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    redis.wait_routes("alice", &[("laptop", "n1"), ("phone", "n2")]);

    let r = laptop.request(Body::DeviceLogout(pb::DeviceLogout {
        device_id: "nowhere".into(),
    }));
    assert!(
        matches!(&r.body, Some(Body::Error(e)) if e.code() == pb::ErrorCode::NotFound),
        "{r:?}"
    );
    let r = laptop.request(Body::DeviceLogout(pb::DeviceLogout {
        device_id: "phone".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let kick = phone.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::LoggedOut as i32);
    assert!(phone.closed_within(WAIT));
    redis.wait_routes("alice", &[("laptop", "n1")]);

    for node in &ns[..2] {
        let (_, r) = auth(node.tcp, "phone", pb::Platform::Ios, &token);
        assert!(
            matches!(&r.body, Some(Body::Error(e)) if e.code() == pb::ErrorCode::DeviceLoggedOut),
            "{}: {r:?}",
            node.id
        );
    }
    let (mut late, r) = auth(ns[2].tcp, "phone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let kick = late.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::LoggedOut as i32);
    assert!(late.closed_within(WAIT));

    // A token issued after the logout (iat in whole seconds: the next
    // second) is let in on every node.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let fresh = support::Gateway::token("alice");
    let (mut again, r) = auth(ns[2].tcp, "phone", pb::Platform::Ios, &fresh);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    // The login check runs before any request of the device: an answered
    // request means it passed, and no Kick came before the answer.
    assert_eq!(list(&mut again).len(), 2, "laptop and phone");
    assert!(
        !again
            .pushes
            .iter()
            .any(|f| matches!(f.body, Some(Body::Kick(_))))
    );
}

#[test]
fn a_logout_of_a_device_on_this_node_is_remembered_by_the_others() {
    // Proves the local logout of a device is remembered in Redis too:
    // alice's laptop logs out her phone on the same node 1; the phone's
    // old token is refused on node 1 and kicked LOGGED_OUT after its
    // Welcome on node 2.
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let token = support::Gateway::token("alice");
    let (mut laptop, _) = auth(ns[0].tcp, "laptop", pb::Platform::Desktop, &token);
    let (mut phone, r) = auth(ns[0].tcp, "phone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let r = laptop.request(Body::DeviceLogout(pb::DeviceLogout {
        device_id: "phone".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    assert!(phone.closed_within(WAIT));
    let (_, r) = auth(ns[0].tcp, "phone", pb::Platform::Ios, &token);
    assert!(
        matches!(&r.body, Some(Body::Error(e)) if e.code() == pb::ErrorCode::DeviceLoggedOut),
        "{r:?}"
    );
    let (mut other, r) = auth(ns[1].tcp, "phone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let kick = other.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::LoggedOut as i32);
}

// ---- login policies across nodes (docs/cluster.md, "Login policies
// across nodes") --------------------------------------------------------

/// Starts `n` nodes with `extra` in each config and waits until each sees
/// all of them live.
fn nodes_with(redis: &Redis, n: usize, extra: &str) -> Vec<cluster_support::Node> {
    let ns: Vec<_> = (1..=n)
        .map(|i| cluster_support::Node::start_with(redis, &format!("n{i}"), extra))
        .collect();
    for node in &ns {
        node.wait_metric(&format!("tern_cluster_live_nodes {n}"));
    }
    ns
}

/// The reason of the `Kick` `c` gets, once it has closed after it.
fn kicked_with(c: &mut Client) -> pb::KickReason {
    let f = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = f.body else {
        unreachable!()
    };
    assert!(c.closed_within(WAIT), "not closed after its kick");
    k.reason()
}

/// Waits until all but one of `clients` were closed by the server; the
/// index of the one left.
fn wait_all_closed_but_one(clients: &mut [(String, Client)]) -> usize {
    let deadline = std::time::Instant::now() + WAIT;
    let mut closed = vec![false; clients.len()];
    loop {
        for (i, (_, c)) in clients.iter_mut().enumerate() {
            // A short read: whatever came is kept in `pushes`.
            closed[i] = closed[i] || c.closed_within(std::time::Duration::from_millis(5));
        }
        let open: Vec<usize> = (0..clients.len()).filter(|&i| !closed[i]).collect();
        assert!(!open.is_empty(), "every login was kicked");
        if let [one] = open[..] {
            return one;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still connected: {open:?}"
        );
    }
}

/// The devices of `user`'s login classes hash in Redis, sorted.
fn classes(redis: &Redis, user: &str) -> Vec<String> {
    let mut d: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{{u:{user}}}:lc"))
        .query(&mut redis.conn())
        .unwrap();
    d.sort();
    d
}

/// The sum of an unlabelled sample over `nodes`.
fn metric_sum(nodes: &[cluster_support::Node], name: &str) -> u64 {
    nodes.iter().map(|n| cluster_support::metric(n, name)).sum()
}

#[test]
fn a_phone_on_another_node_is_kicked_by_the_login_policy() {
    // Proves the class limit counts across nodes: with mobile_devices_max
    // = 1, alice's iPhone on node 1 is kicked with LOGIN_POLICY when her
    // Android phone logs in on node 2 (one login policy record, sent by
    // node 2, received by node 1); her desktop on node 1 (another class)
    // stays, and so does the new phone.
    let redis = Redis::start();
    let ns = nodes_with(&redis, 2, "[login]\nmobile_devices_max = 1\n");
    let token = support::Gateway::token("alice");
    let (mut iphone, r) = auth(ns[0].tcp, "iphone", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    let (mut desk, r) = auth(ns[0].tcp, "desk", pb::Platform::Desktop, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    redis.wait_routes("alice", &[("desk", "n1"), ("iphone", "n1")]);

    let (mut android, r) = auth(ns[1].tcp, "android", pb::Platform::Android, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    assert_eq!(kicked_with(&mut iphone), pb::KickReason::LoginPolicy);
    redis.wait_routes("alice", &[("android", "n2"), ("desk", "n1")]);
    ns[1].wait_metric("tern_cluster_login_policy_kicks_sent_total 1");
    ns[0].wait_metric("tern_cluster_login_policy_kicks_received_total 1");
    assert_eq!(
        metric_sum(&ns, "tern_cluster_login_policy_kicks_sent_total"),
        1,
        "one record"
    );

    // The two left are served, neither was kicked.
    for c in [&mut android, &mut desk] {
        assert_eq!(
            ids(&list(c)),
            [
                ("android".to_owned(), "n2".to_owned()),
                ("desk".to_owned(), "n1".to_owned())
            ]
        );
        assert!(
            !c.pushes
                .iter()
                .any(|f| matches!(f.body, Some(Body::Kick(_))))
        );
    }
}

#[test]
fn the_oldest_of_the_class_is_kicked_wherever_it_is() {
    // Proves the oldest of the class goes even when it is on the node of
    // the new login and that node alone is within the limit: with
    // mobile_devices_max = 2, phones p1 (node 1), p2 (node 2), then p3
    // (node 1): node 1 holds two, the user three; p1, the oldest, is
    // kicked (LOGIN_POLICY, by the record node 1 sends to its own stream),
    // p2 and p3 stay. A login of another class kicks nothing.
    let redis = Redis::start();
    let ns = nodes_with(&redis, 2, "[login]\nmobile_devices_max = 2\n");
    let token = support::Gateway::token("alice");
    let (mut p1, _) = auth(ns[0].tcp, "p1", pb::Platform::Ios, &token);
    redis.wait_routes("alice", &[("p1", "n1")]);
    let (mut p2, _) = auth(ns[1].tcp, "p2", pb::Platform::Android, &token);
    redis.wait_routes("alice", &[("p1", "n1"), ("p2", "n2")]);
    let (mut web, r) = auth(ns[1].tcp, "web", pb::Platform::Web, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    redis.wait_routes("alice", &[("p1", "n1"), ("p2", "n2"), ("web", "n2")]);
    let (mut p3, r) = auth(ns[0].tcp, "p3", pb::Platform::Ios, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    assert_eq!(kicked_with(&mut p1), pb::KickReason::LoginPolicy);
    redis.wait_routes("alice", &[("p2", "n2"), ("p3", "n1"), ("web", "n2")]);
    ns[0].wait_metric("tern_cluster_login_policy_kicks_sent_total 1");
    ns[0].wait_metric("tern_cluster_login_policy_kicks_received_total 1");
    assert_eq!(
        metric_sum(&ns, "tern_cluster_login_policy_kicks_sent_total"),
        1,
        "one record"
    );
    for c in [&mut p2, &mut p3, &mut web] {
        assert_eq!(list(c).len(), 3);
        assert!(
            !c.pushes
                .iter()
                .any(|f| matches!(f.body, Some(Body::Kick(_))))
        );
    }
}

#[test]
fn logins_racing_on_two_nodes_end_with_at_most_the_limit() {
    // Proves the decision is atomic in Redis: with mobile_devices_max = 1,
    // three phones of one user log in at once (two on node 1, one on node
    // 2), in several rounds (a new user each). Every login is welcomed;
    // then exactly one phone is left connected (no kick, its route and
    // its entry in the login classes hash the only ones, its device list
    // naming itself alone), and each of the others got one Kick,
    // LOGIN_POLICY, and was closed.
    let redis = Redis::start();
    let ns = nodes_with(&redis, 2, "[login]\nmobile_devices_max = 1\n");
    for round in 0..4 {
        let user = format!("racer{round}");
        let token = support::Gateway::token(&user);
        let at = [ns[0].tcp, ns[1].tcp, ns[0].tcp];
        let start = std::sync::Arc::new(std::sync::Barrier::new(at.len()));
        let racers: Vec<_> = at
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (token, start) = (token.clone(), start.clone());
                std::thread::spawn(move || {
                    let device = format!("phone{i}");
                    let mut c = Client::connect(addr);
                    start.wait();
                    let r = c.request(Body::Auth(pb::Auth {
                        token,
                        device_id: device.clone(),
                        protocol_version: 1,
                        platform: pb::Platform::Android as i32,
                        ..Default::default()
                    }));
                    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
                    (device, c)
                })
            })
            .collect();
        let mut clients: Vec<(String, Client)> =
            racers.into_iter().map(|t| t.join().unwrap()).collect();
        let left = wait_all_closed_but_one(&mut clients);
        let survivor = clients[left].0.clone();
        for (device, c) in &mut clients {
            let kicks: Vec<pb::KickReason> = c
                .pushes
                .iter()
                .filter_map(|f| match &f.body {
                    Some(Body::Kick(k)) => Some(k.reason()),
                    _ => None,
                })
                .collect();
            if *device == survivor {
                assert_eq!(kicks, [], "round {round}: the survivor {survivor}");
            } else {
                assert_eq!(
                    kicks,
                    [pb::KickReason::LoginPolicy],
                    "round {round}: {device}: one kick"
                );
            }
        }
        let node = if left == 1 { "n2" } else { "n1" };
        redis.wait_routes(&user, &[(&survivor, node)]);
        // The decision's own state: the class entries of the others are
        // gone (picked, or removed with their routes).
        assert_eq!(
            classes(&redis, &user),
            std::slice::from_ref(&survivor),
            "round {round}"
        );
        let devices = list(&mut clients[left].1);
        assert_eq!(
            ids(&devices),
            [(survivor, node.to_owned())],
            "round {round}"
        );
        assert!(
            !clients[left]
                .1
                .pushes
                .iter()
                .any(|f| matches!(f.body, Some(Body::Kick(_)))),
            "round {round}: the survivor was kicked"
        );
    }
}

// ---- the server API across nodes --------------------------------------

const API_KEY: &str = "admin-key-0123456789";

#[test]
fn the_server_api_lists_and_logs_out_devices_on_every_node() {
    // Proves the API's device calls reach every live node: node 1's
    // GET /users/alice/devices names alice's laptop (node 1) and phone
    // (node 2), each with its node and login facts; DELETE of the phone on
    // node 1 kicks it on node 2 (LOGGED_OUT) and its old token is refused
    // on both nodes; DELETE of the laptop, on node 1 itself, is remembered
    // in Redis (node 2 kicks the old token after Welcome); a device
    // connected nowhere is 404; a kick through node 2 names bob's devices
    // on both nodes and closes both.
    let redis = Redis::start();
    let api = format!(
        "[api]\nkeys = [{{ name = \"ops\", key = \"{API_KEY}\", scopes = [\"admin\"] }}]\n"
    );
    let ns = nodes_with(&redis, 2, &api);
    let token = support::Gateway::token("alice");
    let (mut laptop, _) = auth(ns[0].tcp, "laptop", pb::Platform::Desktop, &token);
    let (mut phone, _) = auth(ns[1].tcp, "phone", pb::Platform::Ios, &token);
    redis.wait_routes("alice", &[("laptop", "n1"), ("phone", "n2")]);

    for (node, name) in [(&ns[0], "n1"), (&ns[1], "n2")] {
        let (s, body) = api_request(
            node.http,
            "GET",
            "/api/v1/users/alice/devices",
            Some(API_KEY),
            &serde_json::Value::Null,
        );
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["node_id"], name);
        assert_eq!(body["devices"], serde_json::json!(["laptop", "phone"]));
        let details = body["details"].as_array().unwrap();
        assert_eq!(details.len(), 2, "{body}");
        let phone_detail = details.iter().find(|d| d["device_id"] == "phone").unwrap();
        assert_eq!(phone_detail["node_id"], "n2");
        assert_eq!(phone_detail["platform"], "ios");
        assert_eq!(phone_detail["client_version"], "phone-1.0");
        let laptop_detail = details.iter().find(|d| d["device_id"] == "laptop").unwrap();
        assert_eq!(laptop_detail["node_id"], "n1");
        assert_eq!(laptop_detail["platform"], "desktop");
    }

    let delete = |node: &cluster_support::Node, device: &str| {
        api_request(
            node.http,
            "DELETE",
            &format!("/api/v1/users/alice/devices/{device}"),
            Some(API_KEY),
            &serde_json::Value::Null,
        )
    };
    let (s, body) = delete(&ns[0], "nowhere");
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");

    let (s, body) = delete(&ns[0], "phone");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["device_id"], "phone");
    assert_eq!(kicked_with(&mut phone), pb::KickReason::LoggedOut);
    redis.wait_routes("alice", &[("laptop", "n1")]);
    for node in &ns {
        let (_, r) = auth(node.tcp, "phone", pb::Platform::Ios, &token);
        assert!(
            matches!(&r.body, Some(Body::Error(e)) if e.code() == pb::ErrorCode::DeviceLoggedOut),
            "{}: {r:?}",
            node.id
        );
    }
    let (s, body) = api_request(
        ns[1].http,
        "GET",
        "/api/v1/users/alice/devices",
        Some(API_KEY),
        &serde_json::Value::Null,
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["devices"], serde_json::json!(["laptop"]));

    let (s, body) = delete(&ns[0], "laptop");
    assert_eq!(s, 200, "{body}");
    assert_eq!(kicked_with(&mut laptop), pb::KickReason::LoggedOut);
    let (mut again, r) = auth(ns[1].tcp, "laptop", pb::Platform::Desktop, &token);
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    assert_eq!(kicked_with(&mut again), pb::KickReason::LoggedOut);

    let bob = support::Gateway::token("bob");
    let (mut desk, _) = auth(ns[0].tcp, "desk", pb::Platform::Desktop, &bob);
    let (mut tab, _) = auth(ns[1].tcp, "tab", pb::Platform::Web, &bob);
    redis.wait_routes("bob", &[("desk", "n1"), ("tab", "n2")]);
    let (s, body) = api_request(
        ns[1].http,
        "POST",
        "/api/v1/users/bob/kick",
        Some(API_KEY),
        &serde_json::json!({}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["devices"], serde_json::json!(["desk", "tab"]));
    for c in [&mut desk, &mut tab] {
        assert_eq!(kicked_with(c), pb::KickReason::Admin);
    }
}
