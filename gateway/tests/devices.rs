//! A user's devices through a running gateway (docs/protocol.md, "Devices
//! and login policies"): the device list, the `[login]` per-platform-class
//! limits (a login past its class's limit kicks the class's oldest with
//! `LOGIN_POLICY`, while the same device id still displaces), remote logout
//! (`device_logout`: kicked with `LOGGED_OUT`, its old token refused with
//! `DEVICE_LOGGED_OUT`, a newer token let in) and the server API's
//! `GET`/`DELETE /api/v1/users/{id}/devices[/{device}]`. Real clients over
//! TCP on loopback; devices are not stored, so there is no store to vary.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Gateway, SECRET};
use tern_gateway::{
    auth::Claims,
    config::{ApiKeyConfig, Driver},
};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "devices-key-0123456789";

/// An HS256 token for `user` issued at `iat` (seconds since the epoch).
fn token_issued_at(user: &str, iat: u64) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: jsonwebtoken::get_current_timestamp() + 3600,
        nbf: None,
        aud: None,
        iss: None,
        iat: Some(iat),
        tid: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Logs in with `token` on `device` and `platform`: Welcome or the error.
fn login_as(
    gw: &Gateway,
    token: String,
    device: &str,
    platform: pb::Platform,
    version: &str,
) -> (Client, Result<pb::Welcome, pb::Error>) {
    let mut c = Client::connect(gw.tcp);
    let reply = c.request(Body::Auth(pb::Auth {
        token,
        device_id: device.into(),
        protocol_version: 1,
        platform: platform as i32,
        client_version: version.into(),
        ..Default::default()
    }));
    let r = match reply.body {
        Some(Body::Welcome(w)) => Ok(w),
        Some(Body::Error(e)) => Err(e),
        other => panic!("expected welcome or error, got {other:?}"),
    };
    (c, r)
}

fn login(gw: &Gateway, user: &str, device: &str, platform: pb::Platform) -> Client {
    let (c, r) = login_as(gw, Gateway::token(user), device, platform, "test/1");
    r.expect("welcome");
    c
}

fn devices(c: &mut Client) -> Vec<pb::DeviceInfo> {
    match c.request(Body::DeviceList(pb::DeviceListRequest {})).body {
        Some(Body::DeviceListResult(r)) => r.devices,
        other => panic!("expected device_list_result, got {other:?}"),
    }
}

fn ids(list: &[pb::DeviceInfo]) -> Vec<&str> {
    list.iter().map(|d| d.device_id.as_str()).collect()
}

/// The kick `c` got, waiting for it (bounded by the client's deadline).
fn kicked(c: &mut Client) -> pb::Kick {
    match c.wait_push(|f| matches!(f.body, Some(Body::Kick(_)))).body {
        Some(Body::Kick(k)) => k,
        _ => unreachable!("the predicate matched a kick"),
    }
}

fn error_code(f: &pb::Frame) -> pb::ErrorCode {
    match &f.body {
        Some(Body::Error(e)) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The device list of the asking user, in the order the server gives it,
/// eventually equal to `want` (a kicked connection leaves the list as soon
/// as it is kicked; this waits only for the kick to be handled).
fn wait_devices(c: &mut Client, want: &[&str]) -> Vec<pb::DeviceInfo> {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let list = devices(c);
        if ids(&list) == want {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "devices stayed {:?}, want {want:?}",
            ids(&list)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_device_list_names_each_device_with_platform_node_and_version() {
    // Proves: `device_list` answers every connected device of the user on
    // this node, oldest login first, each with its platform, the node id,
    // its login time and client version, and `current` on the asking one;
    // another user's devices are not listed; with the default `[login]`
    // (no limits) three phones stay connected together.
    for driver in support::drivers() {
        let gw = Gateway::start(driver);
        let (mut p1, r) = login_as(
            &gw,
            Gateway::token("alice"),
            "phone-1",
            pb::Platform::Ios,
            "tern-ios/2.1",
        );
        r.unwrap();
        let _p2 = login(&gw, "alice", "phone-2", pb::Platform::Android);
        let _p3 = login(&gw, "alice", "phone-3", pb::Platform::Ios);
        let _bob = login(&gw, "bob", "phone-9", pb::Platform::Ios);
        let mut web = login(&gw, "alice", "web", pb::Platform::Web);
        let list = devices(&mut web);
        assert_eq!(
            ids(&list),
            ["phone-1", "phone-2", "phone-3", "web"],
            "{list:?}"
        );
        assert!(
            list.windows(2)
                .all(|w| w[0].login_time_ms <= w[1].login_time_ms)
        );
        let first = &list[0];
        assert_eq!(first.platform(), pb::Platform::Ios);
        assert_eq!(first.client_version, "tern-ios/2.1");
        assert_eq!(first.node_id, "test-node");
        assert!(first.login_time_ms > 0);
        assert!(!first.current);
        assert!(list[3].current, "{list:?}");
        assert_eq!(list[3].platform(), pb::Platform::Web);
        // The first phone's view: it is the current one.
        let mine = devices(&mut p1);
        assert!(mine[0].current && !mine[3].current, "{mine:?}");
    }
}

#[test]
fn a_login_past_its_class_limit_kicks_the_class_oldest() {
    // Proves, with `[login] mobile_devices_max = 1` and
    // `desktop_devices_max = 2`: an Android login kicks the user's older
    // iOS phone with `LOGIN_POLICY` (ios and android are one class) and
    // closes it; web logins (no limit) are untouched; a third desktop kicks
    // the oldest desktop only; the same device id logging in again is still
    // `DISPLACED` (not a policy kick), and another user is never affected.
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.login.mobile_devices_max = 1;
        c.login.desktop_devices_max = 2;
    });
    let mut phone = login(&gw, "alice", "phone", pb::Platform::Ios);
    let mut bob_phone = login(&gw, "bob", "phone", pb::Platform::Ios);
    let mut web1 = login(&gw, "alice", "web-1", pb::Platform::Web);
    let _web2 = login(&gw, "alice", "web-2", pb::Platform::Web);
    let tablet = login(&gw, "alice", "tablet", pb::Platform::Android);
    let k = kicked(&mut phone);
    assert_eq!(k.reason(), pb::KickReason::LoginPolicy, "{k:?}");
    assert!(
        phone.closed_within(support::WAIT),
        "the kicked phone closes"
    );
    wait_devices(&mut web1, &["web-1", "web-2", "tablet"]);

    let mut d1 = login(&gw, "alice", "desk-1", pb::Platform::Desktop);
    let mut d2 = login(&gw, "alice", "desk-2", pb::Platform::Desktop);
    let _d3 = login(&gw, "alice", "desk-3", pb::Platform::Desktop);
    assert_eq!(kicked(&mut d1).reason(), pb::KickReason::LoginPolicy);
    wait_devices(&mut web1, &["web-1", "web-2", "tablet", "desk-2", "desk-3"]);
    // desk-2 again: displaced as before, and no desktop beyond it kicked.
    let _d2_again = login(&gw, "alice", "desk-2", pb::Platform::Desktop);
    assert_eq!(kicked(&mut d2).reason(), pb::KickReason::Displaced);
    wait_devices(&mut web1, &["web-1", "web-2", "tablet", "desk-3", "desk-2"]);
    // Neither web nor the tablet nor bob got anything but answers.
    assert!(
        !tablet
            .pushes
            .iter()
            .chain(&web1.pushes)
            .any(|f| matches!(f.body, Some(Body::Kick(_))))
    );
    assert_eq!(devices(&mut bob_phone).len(), 1);
    assert!(
        !bob_phone
            .pushes
            .iter()
            .any(|f| matches!(f.body, Some(Body::Kick(_))))
    );
}

#[test]
fn a_logged_out_device_is_kicked_and_its_old_token_refused() {
    // Proves: `device_logout` of one of your connected devices answers
    // `ok`; that device gets `Kick{LOGGED_OUT}` and closes; logging it in
    // again with its old token is refused with `DEVICE_LOGGED_OUT` and the
    // connection closes; a token issued after the logout logs it in. Bad
    // input changes nothing: a device that is not connected (or is
    // another user's) is `NOT_FOUND`, a bad id `INVALID_ARGUMENT`, and the
    // other user's device stays connected.
    for driver in support::drivers() {
        let gw = Gateway::start(driver);
        let old_token = Gateway::token("alice");
        let (mut phone, r) = login_as(&gw, old_token.clone(), "phone", pb::Platform::Ios, "");
        r.unwrap();
        let mut web = login(&gw, "alice", "web", pb::Platform::Web);
        let mut bob = login(&gw, "bob", "bob-phone", pb::Platform::Ios);

        let r = web.request(Body::DeviceLogout(pb::DeviceLogout {
            device_id: "bob-phone".into(),
        }));
        assert_eq!(error_code(&r), pb::ErrorCode::NotFound);
        let r = web.request(Body::DeviceLogout(pb::DeviceLogout {
            device_id: "ghost".into(),
        }));
        assert_eq!(error_code(&r), pb::ErrorCode::NotFound);
        let r = web.request(Body::DeviceLogout(pb::DeviceLogout {
            device_id: String::new(),
        }));
        assert_eq!(error_code(&r), pb::ErrorCode::InvalidArgument);
        assert_eq!(ids(&devices(&mut bob)), ["bob-phone"]);
        assert_eq!(ids(&devices(&mut web)), ["phone", "web"]);

        let r = web.request(Body::DeviceLogout(pb::DeviceLogout {
            device_id: "phone".into(),
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        assert_eq!(kicked(&mut phone).reason(), pb::KickReason::LoggedOut);
        assert!(phone.closed_within(support::WAIT));
        wait_devices(&mut web, &["web"]);

        let (mut again, r) = login_as(&gw, old_token, "phone", pb::Platform::Ios, "");
        let e = r.expect_err("the old token is refused");
        assert_eq!(e.code(), pb::ErrorCode::DeviceLoggedOut, "{e:?}");
        assert!(again.closed_within(support::WAIT));
        // A token issued after the logout (the user logged in again).
        let fresh = token_issued_at("alice", jsonwebtoken::get_current_timestamp() + 1);
        let (_phone, r) = login_as(&gw, fresh, "phone", pb::Platform::Ios, "");
        r.expect("a newer token logs the device in");
        assert_eq!(ids(&devices(&mut web)), ["web", "phone"]);
        assert_eq!(ids(&devices(&mut bob)), ["bob-phone"]);
    }
}

#[test]
fn the_server_api_lists_and_logs_out_devices() {
    // Proves: `GET /api/v1/users/{id}/devices` lists the user's devices
    // here with platform, node, login time and client version;
    // `DELETE .../devices/{device}` kicks it with `LOGGED_OUT` (200) and
    // refuses its old token; a device not connected is 404, a bad id 400,
    // and a key without the `users` scope 403.
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![
            ApiKeyConfig {
                name: "ops".into(),
                key: KEY.into(),
                scopes: vec!["users".into()],
                tenant: String::new(),
            },
            ApiKeyConfig {
                name: "crm".into(),
                key: "devices-msgs-0123456789".into(),
                scopes: vec!["messages".into()],
                tenant: String::new(),
            },
        ];
    });
    let old_token = Gateway::token("alice");
    let (mut phone, r) = login_as(
        &gw,
        old_token.clone(),
        "phone",
        pb::Platform::Android,
        "droid/3",
    );
    r.unwrap();
    let _web = login(&gw, "alice", "web", pb::Platform::Web);

    let (status, body) = gw.api(
        "GET",
        "/api/v1/users/alice/devices",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"], json!(["phone", "web"]));
    let first = &body["details"][0];
    assert_eq!(first["device_id"], "phone");
    assert_eq!(first["platform"], "android");
    assert_eq!(first["client_version"], "droid/3");
    assert_eq!(first["node_id"], "test-node");
    assert!(first["login_time_ms"].as_u64().unwrap() > 0);

    let (status, _) = gw.api(
        "DELETE",
        "/api/v1/users/alice/devices/phone",
        Some("devices-msgs-0123456789"),
        &json!(null),
    );
    assert_eq!(status, 403);
    let (status, body) = gw.api(
        "DELETE",
        "/api/v1/users/alice/devices/ghost",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 404, "{body}");
    let (status, _) = gw.api(
        "DELETE",
        "/api/v1/users/alice/devices/bad%20id",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 400);
    assert!(
        !phone
            .pushes
            .iter()
            .any(|f| matches!(f.body, Some(Body::Kick(_))))
    );

    let (status, body) = gw.api(
        "DELETE",
        "/api/v1/users/alice/devices/phone",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "phone");
    assert_eq!(kicked(&mut phone).reason(), pb::KickReason::LoggedOut);
    let (_c, r) = login_as(&gw, old_token, "phone", pb::Platform::Android, "");
    assert_eq!(r.unwrap_err().code(), pb::ErrorCode::DeviceLoggedOut);
    let (status, body) = gw.api(
        "GET",
        "/api/v1/users/alice/devices",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 200);
    assert_eq!(body["devices"], json!(["web"]));
}
