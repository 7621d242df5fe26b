//! A user's devices across gateway nodes (docs/cluster.md, "Devices across
//! nodes"): real `tern serve --store redis` processes on one real
//! `redis-server`, clients speaking the raw protocol. The device list of
//! any node names the user's devices on every live node, with what their
//! logins said; `device_logout` on one node kicks the device on another,
//! and its old token is then refused on both. Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use cluster_support::{Redis, WAIT, nodes};
use support::Client;
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
