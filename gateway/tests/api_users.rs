//! The operator side of the server API over real HTTP on an in-process
//! gateway (embedded store) with real protocol clients: system senders,
//! sends to a list and broadcasts (idempotent by request id), every content
//! kind, bans and kicks seen by connected devices, groups managed by an
//! operator, history, presence and online counts, and the typed errors of
//! bad input.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Gateway, delivered_text};
use tern_gateway::config::{ApiKeyConfig, Driver};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "admin-key-0123456789";
const USERS_ONLY: &str = "users-key-0123456789";

/// Friends-only chat (so a system sender's exemption shows), lists of at
/// most 3, one admin key and one `users`-only key.
fn gateway() -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.chat.allow_non_friend_messages = false;
        c.api_ops.recipients_max = 3;
        c.api.keys = vec![
            ApiKeyConfig {
                name: "ops".into(),
                key: KEY.into(),
                scopes: vec!["admin".into()],
                tenant: String::new(),
            },
            ApiKeyConfig {
                name: "support".into(),
                key: USERS_ONLY.into(),
                scopes: vec!["users".into()],
                tenant: String::new(),
            },
        ];
    })
}

fn call(gw: &Gateway, method: &str, path: &str, body: Value) -> (u16, Value) {
    gw.api(method, path, Some(KEY), &body)
}

fn kick_reason(f: &pb::Frame) -> Option<pb::KickReason> {
    match &f.body {
        Some(Body::Kick(k)) => pb::KickReason::try_from(k.reason).ok(),
        _ => None,
    }
}

fn quiet_for(c: &mut Client, ms: u64) -> Option<pb::Frame> {
    c.read_frame_until(Instant::now() + Duration::from_millis(ms))
}

/// The first entry of a Deliver push, whatever its content.
fn delivered(f: &pb::Frame) -> Option<pb::Entry> {
    match &f.body {
        Some(Body::Deliver(d)) => d.entries.first().cloned(),
        _ => None,
    }
}

fn content_of(e: &pb::Entry) -> Option<pb::content::Kind> {
    match &e.body {
        Some(pb::entry::Body::Message(m)) => m.content.clone()?.kind,
        _ => None,
    }
}

/// Proves a configured system user sends without friendship while anyone
/// else gets not_friends (API and client alike), and that every content
/// kind of the API arrives as that kind on a connected device.
#[test]
fn a_system_sender_needs_no_friendship_and_sends_every_kind() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (s, body) = call(
        &gw,
        "POST",
        "/api/v1/messages",
        json!({"request_id": "r0", "from": "alice", "to_user": "bob",
               "content": {"type": "text", "text": "hi"}}),
    );
    assert_eq!((s, body["code"].as_str()), (403, Some("NOT_FRIENDS")));
    // A client's request never carries operator rights.
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let refused = alice.send_text("bob", "c0", "hi");
    assert!(
        matches!(&refused.body, Some(Body::Error(e)) if e.code == pb::ErrorCode::NotFriends as i32),
        "{refused:?}"
    );
    let media =
        json!({"media_id": "m1", "mime": "image/png", "size_bytes": 10, "width": 2, "height": 3});
    let kinds = [
        json!({"type": "text", "text": "maintenance at noon"}),
        json!({"type": "image", "media": media}),
        json!({"type": "file", "media": media, "name": "a.pdf"}),
        json!({"type": "voice", "media": media}),
        json!({"type": "video", "media": media}),
        json!({"type": "location", "latitude": 52.5, "longitude": 13.4, "name": "Berlin"}),
        json!({"type": "custom", "custom_type": "order-card", "data": "{\"order\":7}"}),
    ];
    for (i, content) in kinds.iter().enumerate() {
        let (s, sent) = call(
            &gw,
            "POST",
            "/api/v1/messages",
            json!({"request_id": format!("k{i}"), "from": "system", "to_user": "bob", "content": content}),
        );
        assert_eq!(s, 200, "{content}: {sent}");
        assert_eq!(sent["conversation_id"], "d:bob:system");
        let e = delivered(&bob.wait_push(|f| delivered(f).is_some())).unwrap();
        assert_eq!(e.sender, "system");
        assert_eq!(json!(e.seq), sent["seq"]);
        let kind = content_of(&e).expect("a message");
        use pb::content::Kind as K;
        match (content["type"].as_str().unwrap(), kind) {
            ("text", K::Text(t)) => assert_eq!(t.text, "maintenance at noon"),
            ("image", K::Image(m)) => assert_eq!(m.media.unwrap().media_id, "m1"),
            ("file", K::File(f)) => assert_eq!(f.name, "a.pdf"),
            ("voice", K::Voice(_)) | ("video", K::Video(_)) => {}
            ("location", K::Location(l)) => assert_eq!(l.name, "Berlin"),
            ("custom", K::Custom(c)) => {
                assert_eq!(
                    (c.r#type.as_str(), c.data.as_slice()),
                    ("order-card", &b"{\"order\":7}"[..])
                )
            }
            (want, got) => panic!("sent {want}, got {got:?}"),
        }
    }
    // Bad content: typed 400s, nothing sent.
    for content in [
        json!({"type": "location", "latitude": 91.0, "longitude": 0.0}),
        json!({"type": "image", "media": {"media_id": "", "mime": "image/png"}}),
        json!({"type": "custom", "custom_type": "", "data": ""}),
    ] {
        let (s, body) = call(
            &gw,
            "POST",
            "/api/v1/messages",
            json!({"request_id": "bad", "from": "system", "to_user": "bob", "content": content}),
        );
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{content}"
        );
    }
    assert!(quiet_for(&mut bob, 300).is_none_or(|f| delivered(&f).is_none()));
}

/// Proves one call sends to each user of a list with a result each (a
/// refused recipient does not stop the others), that a replayed request id
/// answers the original results with duplicate = true and pushes nothing,
/// and that a list over `recipients_max` is 400.
#[test]
fn a_list_send_answers_per_recipient_and_replays_send_nothing() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let req = json!({"request_id": "notice-1", "from": "system",
                     "to_users": ["bob", "carol", "system"],
                     "content": {"type": "text", "text": "notice"}});
    let (s, first) = call(&gw, "POST", "/api/v1/messages/batch", req.clone());
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let r = first["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["to_user"], "bob");
    assert_eq!(r[0]["message"]["conversation_id"], "d:bob:system");
    assert_eq!(r[1]["message"]["conversation_id"], "d:carol:system");
    assert_eq!(r[2]["error"]["code"], "INVALID_ARGUMENT", "to oneself");
    for c in [&mut bob, &mut carol] {
        let f = c.wait_push(|f| delivered_text(f).is_some());
        assert_eq!(delivered_text(&f).unwrap().2, "notice");
    }
    let (s, again) = call(&gw, "POST", "/api/v1/messages/batch", req);
    assert_eq!(s, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["results"], first["results"]);
    assert!(quiet_for(&mut bob, 300).is_none_or(|f| delivered(&f).is_none()));
    assert!(quiet_for(&mut carol, 100).is_none_or(|f| delivered(&f).is_none()));
    let (s, body) = call(
        &gw,
        "POST",
        "/api/v1/messages/batch",
        json!({"request_id": "big", "from": "system", "to_users": ["a", "b", "c", "d"],
               "content": {"type": "text", "text": "x"}}),
    );
    assert_eq!((s, body["code"].as_str()), (400, Some("INVALID_ARGUMENT")));
}

/// Proves a broadcast reaches every user online on the node once (202 with
/// the count), a replay sends nothing more, and only a system user may
/// broadcast.
#[test]
fn a_broadcast_reaches_every_online_user_once() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let req = json!({"request_id": "b1", "from": "system",
                     "content": {"type": "text", "text": "we restart at 10"}});
    // Presence is set by the backend after login: wait until both count.
    // Each probe has its own request id: a repeated one would answer the
    // first probe's count forever (the broadcast is idempotent).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut probe = 0;
    let accepted = loop {
        probe += 1;
        let (s, a) = call(
            &gw,
            "POST",
            "/api/v1/broadcasts",
            json!({"request_id": format!("probe-{probe}"), "from": "system",
                   "content": {"type": "text", "text": "probe"}}),
        );
        assert_eq!(s, 202, "{a}");
        if a["recipients"] == 2 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(accepted["recipients"], 2, "{accepted}");
    for c in [&mut bob, &mut carol] {
        c.wait_push(|f| delivered_text(f).is_some_and(|t| t.2 == "probe"));
    }
    let (s, first) = call(&gw, "POST", "/api/v1/broadcasts", req.clone());
    assert_eq!((s, first["recipients"].as_u64()), (202, Some(2)), "{first}");
    for c in [&mut bob, &mut carol] {
        let f = c.wait_push(|f| delivered_text(f).is_some_and(|t| t.2 != "probe"));
        assert_eq!(delivered_text(&f).unwrap().2, "we restart at 10");
    }
    let (s, again) = call(&gw, "POST", "/api/v1/broadcasts", req);
    assert_eq!(s, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["recipients"], 2);
    assert!(
        quiet_for(&mut bob, 1500).is_none_or(|f| delivered(&f).is_none()),
        "a replay pushed again"
    );
    let (s, body) = call(
        &gw,
        "POST",
        "/api/v1/broadcasts",
        json!({"request_id": "b2", "from": "alice", "content": {"type": "text", "text": "x"}}),
    );
    assert_eq!((s, body["code"].as_str()), (403, Some("PERMISSION_DENIED")));
}

/// Proves a broadcast goes to the users the shards hold with a device that
/// counts toward presence, once each, on every device: with 3 shards
/// (users spread over them), a user with a normal and a presence-quiet
/// device is one recipient and both devices get the message, a user whose
/// only device is presence-quiet is no recipient and gets nothing, and a
/// user with two devices is counted once. No probing: a device counts from
/// its Welcome on, since the shards answer, not the presence updates.
#[test]
fn a_broadcast_counts_each_user_once_and_skips_quiet_only_users() {
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.shards.count = 3;
        c.api.keys = vec![ApiKeyConfig {
            name: "ops".into(),
            key: KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        }];
    });
    let (mut bob_phone, _) = Client::login(gw.tcp, "bob", "phone");
    let mut bob_tool = login_quiet(&gw, "bob", "tool");
    let (mut carol_phone, _) = Client::login(gw.tcp, "carol", "phone");
    let (mut carol_laptop, _) = Client::login(gw.tcp, "carol", "laptop");
    let (mut erin, _) = Client::login(gw.tcp, "erin", "phone");
    let mut dave = login_quiet(&gw, "dave", "tool");
    let (s, accepted) = call(
        &gw,
        "POST",
        "/api/v1/broadcasts",
        json!({"request_id": "b-quiet", "from": "system",
               "content": {"type": "text", "text": "maintenance"}}),
    );
    assert_eq!(s, 202, "{accepted}");
    // bob, carol, erin: not dave, and not carol twice.
    assert_eq!(accepted["recipients"], 3, "{accepted}");
    for c in [
        &mut bob_phone,
        &mut bob_tool,
        &mut carol_phone,
        &mut carol_laptop,
        &mut erin,
    ] {
        let f = c.wait_push(|f| delivered_text(f).is_some());
        assert_eq!(delivered_text(&f).unwrap().2, "maintenance");
    }
    assert!(
        quiet_for(&mut dave, 1000).is_none_or(|f| delivered(&f).is_none()),
        "a presence-quiet-only user got the broadcast"
    );
}

/// Logs `user` in on `device` with the `presence-quiet` capability.
fn login_quiet(gw: &Gateway, user: &str, device: &str) -> Client {
    let mut c = Client::connect(gw.tcp);
    let reply = c.request(Body::Auth(pb::Auth {
        token: Gateway::token(user),
        device_id: device.into(),
        protocol_version: 1,
        platform: pb::Platform::Cli as i32,
        capabilities: vec!["presence-quiet".into()],
        ..Default::default()
    }));
    assert!(
        matches!(reply.body, Some(Body::Welcome(_))),
        "expected welcome, got {reply:?}"
    );
    c
}

/// Proves a ban closes every device of the user with Kick BANNED, refuses
/// each new login the same way (a message sent at once is refused, not
/// stored: its group gets nothing), and that after the unban a login stays
/// and is served.
#[test]
fn a_ban_kicks_every_device_and_refuses_logins_until_lifted() {
    let gw = gateway();
    let (s, _) = call(
        &gw,
        "POST",
        "/api/v1/groups",
        json!({"owner": "carol", "name": "g", "group_id": "g1", "members": ["bob"]}),
    );
    assert_eq!(s, 200);
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let (mut phone, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut laptop, _) = Client::login(gw.tcp, "bob", "laptop");
    let (s, _) = gw.api(
        "POST",
        "/api/v1/users/bob/ban",
        Some(USERS_ONLY),
        &json!({"reason": "spam"}),
    );
    assert_eq!(s, 200);
    for c in [&mut phone, &mut laptop] {
        let f = c.wait_push(|f| kick_reason(f).is_some());
        assert_eq!(kick_reason(&f), Some(pb::KickReason::Banned));
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "not closed after the kick"
        );
    }
    // A new login: Welcome, then Kick BANNED and the close; what it sent
    // meanwhile is refused.
    let (mut again, _) = Client::login(gw.tcp, "bob", "tablet");
    again.send_frame(&pb::Frame {
        request_id: 7,
        body: Some(Body::Send(pb::Send {
            client_msg_id: "while-banned".into(),
            to: Some(pb::send::To::GroupId("g1".into())),
            content: Some(support::text_content("spam")),
            ..Default::default()
        })),
    });
    let f = again.wait_push(|f| kick_reason(f).is_some());
    assert_eq!(kick_reason(&f), Some(pb::KickReason::Banned));
    assert!(again.closed_within(Duration::from_secs(5)));
    assert!(
        quiet_for(&mut carol, 500).is_none_or(|f| delivered_text(&f).is_none()),
        "a banned device's message was stored"
    );
    let (s, body) = gw.api(
        "DELETE",
        "/api/v1/users/bob/ban",
        Some(USERS_ONLY),
        &Value::Null,
    );
    assert_eq!((s, body["banned"].as_bool()), (200, Some(false)), "{body}");
    let (mut back, _) = Client::login(gw.tcp, "bob", "phone");
    let answer = back.request(Body::Profile(pb::ProfileRequest {
        user_id: "bob".into(),
    }));
    assert!(
        matches!(answer.body, Some(Body::ProfileResult(_))),
        "{answer:?}"
    );
    assert!(back.pushes.iter().all(|f| kick_reason(f).is_none()));
}

/// Proves a kick of one device closes only it (Kick ADMIN) and a kick of
/// all closes the rest, with the devices listing following along.
#[test]
fn a_kick_closes_one_device_or_all() {
    let gw = gateway();
    let (mut phone, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut laptop, _) = Client::login(gw.tcp, "bob", "laptop");
    let (s, list) = call(&gw, "GET", "/api/v1/users/bob/devices", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(list["devices"], json!(["laptop", "phone"]), "{list}");
    assert_eq!(list["node_id"], "test-node");
    let (s, kicked) = call(
        &gw,
        "POST",
        "/api/v1/users/bob/kick",
        json!({"device_id": "phone"}),
    );
    assert_eq!(
        (s, &kicked["devices"]),
        (200, &json!(["phone"])),
        "{kicked}"
    );
    let f = phone.wait_push(|f| kick_reason(f).is_some());
    assert_eq!(kick_reason(&f), Some(pb::KickReason::Admin));
    assert!(phone.closed_within(Duration::from_secs(5)));
    let alive = laptop.request(Body::Profile(pb::ProfileRequest {
        user_id: "bob".into(),
    }));
    assert!(
        matches!(alive.body, Some(Body::ProfileResult(_))),
        "{alive:?}"
    );
    let (s, list) = call(&gw, "GET", "/api/v1/users/bob/devices", Value::Null);
    assert_eq!((s, &list["devices"]), (200, &json!(["laptop"])), "{list}");
    let (s, _) = call(&gw, "POST", "/api/v1/users/bob/kick", json!({}));
    assert_eq!(s, 200);
    let f = laptop.wait_push(|f| kick_reason(f).is_some());
    assert_eq!(kick_reason(&f), Some(pb::KickReason::Admin));
    assert!(laptop.closed_within(Duration::from_secs(5)));
    let (_, list) = call(&gw, "GET", "/api/v1/users/bob/devices", Value::Null);
    assert_eq!(list["devices"], json!([]));
    // A kicked device may come back (it was not banned).
    Client::login(gw.tcp, "bob", "phone");
    let (s, body) = call(
        &gw,
        "GET",
        "/api/v1/users/not%20an%20id/devices",
        Value::Null,
    );
    assert_eq!((s, body["code"].as_str()), (400, Some("INVALID_ARGUMENT")));
}

/// Proves profiles are created, updated and read (a banned user's too); a
/// user without one is a typed 404.
#[test]
fn profiles_are_created_updated_and_read() {
    let gw = gateway();
    let (s, body) = call(&gw, "GET", "/api/v1/users/dora/profile", Value::Null);
    assert_eq!((s, body["code"].as_str()), (404, Some("NOT_FOUND")));
    let (s, p) = call(
        &gw,
        "PUT",
        "/api/v1/users/dora/profile",
        json!({"nickname": "Dora", "bio": "hi"}),
    );
    assert_eq!(s, 200, "{p}");
    let (s, p) = call(
        &gw,
        "PUT",
        "/api/v1/users/dora/profile",
        json!({"avatar": "m:1"}),
    );
    assert_eq!(s, 200);
    assert_eq!(
        p,
        json!({"user_id": "dora", "nickname": "Dora", "avatar": "m:1", "bio": "hi"})
    );
    let (s, got) = call(&gw, "GET", "/api/v1/users/dora/profile", Value::Null);
    assert_eq!((s, &got), (200, &p));
    // A banned user's profile is still the operator's to read and change.
    let (s, _) = call(&gw, "POST", "/api/v1/users/dora/ban", json!({}));
    assert_eq!(s, 200);
    let (s, got) = call(&gw, "GET", "/api/v1/users/dora/profile", Value::Null);
    assert_eq!((s, got), (200, p));
    let (s, _) = call(
        &gw,
        "PUT",
        "/api/v1/users/dora/profile",
        json!({"bio": "banned"}),
    );
    assert_eq!(s, 200);
}

/// Proves an operator manages a group it is no member of: create for an
/// owner, add members (who get pushes), set a role, remove a member,
/// dissolve; unknown groups and members are typed 404s, a dissolved group
/// 410, and the operator may send into the group.
#[test]
fn an_operator_manages_groups_it_is_not_in() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (s, g) = call(
        &gw,
        "POST",
        "/api/v1/groups",
        json!({"owner": "alice", "name": "team", "group_id": "team1", "members": ["bob"]}),
    );
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["conversation_id"], "g:team1");
    assert_eq!(g["member_count"], 2);
    let (s, again) = call(
        &gw,
        "POST",
        "/api/v1/groups",
        json!({"owner": "alice", "name": "team", "group_id": "team1"}),
    );
    assert_eq!((s, again["code"].as_str()), (409, Some("ALREADY_EXISTS")));
    let (s, added) = call(
        &gw,
        "POST",
        "/api/v1/groups/team1/members",
        json!({"user_ids": ["carol"]}),
    );
    assert_eq!(s, 200, "{added}");
    let f =
        bob.wait_push(|f| delivered(f).is_some_and(|e| e.seq == added["seq"].as_u64().unwrap()));
    assert_eq!(delivered(&f).unwrap().sender, "system");
    let (s, _) = call(
        &gw,
        "PUT",
        "/api/v1/groups/team1/members/carol/role",
        json!({"role": "admin"}),
    );
    assert_eq!(s, 200);
    let (s, _) = call(
        &gw,
        "PUT",
        "/api/v1/groups/team1/members/carol/role",
        json!({"role": "owner"}),
    );
    assert_eq!(s, 200);
    let (s, body) = call(
        &gw,
        "PUT",
        "/api/v1/groups/team1/members/carol/role",
        json!({"role": "member"}),
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "the owner's own role"
    );
    let (s, sent) = call(
        &gw,
        "POST",
        "/api/v1/messages",
        json!({"request_id": "g1", "from": "system", "to_group": "team1",
               "content": {"type": "text", "text": "to the team"}}),
    );
    assert_eq!(s, 200, "{sent}");
    bob.wait_push(|f| delivered_text(f).is_some_and(|t| t.2 == "to the team"));
    let (s, _) = call(
        &gw,
        "DELETE",
        "/api/v1/groups/team1/members/bob",
        Value::Null,
    );
    assert_eq!(s, 200);
    let (s, body) = call(
        &gw,
        "DELETE",
        "/api/v1/groups/team1/members/nobody",
        Value::Null,
    );
    assert_eq!((s, body["code"].as_str()), (404, Some("NOT_FOUND")));
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/groups/nope/members",
            json!({"user_ids": ["bob"]}),
        ),
        ("DELETE", "/api/v1/groups/nope", Value::Null),
        (
            "PUT",
            "/api/v1/groups/nope/members/bob/role",
            json!({"role": "admin"}),
        ),
    ] {
        let (s, b) = call(&gw, method, path, body);
        assert_eq!(
            (s, b["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{method} {path}"
        );
    }
    let (s, _) = call(&gw, "DELETE", "/api/v1/groups/team1", Value::Null);
    assert_eq!(s, 200);
    let (s, b) = call(&gw, "DELETE", "/api/v1/groups/team1", Value::Null);
    assert_eq!((s, b["code"].as_str()), (410, Some("GROUP_DISSOLVED")));
}

/// Proves history pages backwards through any conversation, presence of
/// many users comes in one call (and a list over the limit is 400), and
/// the online counts follow the connections of the node.
#[test]
fn history_presence_and_online_counts() {
    let gw = gateway();
    let (_bob, _) = Client::login(gw.tcp, "bob", "phone");
    for i in 0..3 {
        let (s, _) = call(
            &gw,
            "POST",
            "/api/v1/messages",
            json!({"request_id": format!("h{i}"), "from": "system", "to_user": "bob",
                   "content": {"type": "text", "text": format!("m{i}")}}),
        );
        assert_eq!(s, 200);
    }
    let (s, page) = call(
        &gw,
        "GET",
        "/api/v1/conversations/d:bob:system/messages?limit=2",
        Value::Null,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["more"], true);
    let texts: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m1", "m2"]);
    assert_eq!(page["entries"][0]["type"], "message");
    let before = page["next_before_seq"].as_u64().unwrap();
    let (_, older) = call(
        &gw,
        "GET",
        &format!("/api/v1/conversations/d:bob:system/messages?before_seq={before}"),
        Value::Null,
    );
    assert_eq!(older["more"], false);
    assert_eq!(older["entries"][0]["content"]["text"], "m0");
    let (s, b) = call(
        &gw,
        "GET",
        "/api/v1/conversations/g:nope/messages",
        Value::Null,
    );
    assert_eq!((s, b["code"].as_str()), (404, Some("NOT_FOUND")));
    let (s, b) = call(
        &gw,
        "GET",
        "/api/v1/conversations/bogus/messages",
        Value::Null,
    );
    assert_eq!((s, b["code"].as_str()), (400, Some("INVALID_ARGUMENT")));

    let deadline = Instant::now() + Duration::from_secs(10);
    let p = loop {
        let (s, p) = call(
            &gw,
            "POST",
            "/api/v1/presence",
            json!({"user_ids": ["bob", "zed"]}),
        );
        assert_eq!(s, 200, "{p}");
        if p["presences"][0]["state"] == "online" || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(p["presences"][0]["user_id"], "bob");
    assert_eq!(p["presences"][0]["state"], "online");
    assert_eq!(p["presences"][1]["state"], "offline");
    let many: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    let (s, b) = call(&gw, "POST", "/api/v1/presence", json!({"user_ids": many}));
    assert_eq!((s, b["code"].as_str()), (400, Some("INVALID_ARGUMENT")));

    let (s, online) = call(&gw, "GET", "/api/v1/online", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(online["node_id"], "test-node");
    assert_eq!(online["connections"], 1, "{online}");
    let by_shard: i64 = online["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_i64().unwrap())
        .sum();
    assert_eq!(by_shard, 1);
    // The `users`-only key cannot read.
    let (s, _) = gw.api("GET", "/api/v1/online", Some(USERS_ONLY), &Value::Null);
    assert_eq!(s, 403);
}
