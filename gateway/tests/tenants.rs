//! Tenants (issue 20; docs/tenants.md), end to end through real gateways:
//! the same local name in two tenants is two users; every request naming
//! another tenant's user, group, room, conversation or media is refused
//! with TENANT_MISMATCH and changes nothing, on the embedded store and on
//! a real `redis-server`; the server API confines a tenant's key to its
//! tenant and keeps even a system key's calls inside one tenant; uploads
//! are named in their tenant and only that tenant reads them.
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Gateway, delivered_text, text_content};
use tern_gateway::config::{ApiKeyConfig, Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

const SYSTEM_KEY: &str = "system-key-0123456789";
const ACME_KEY: &str = "acme-key-0123456789ab";

fn keys(c: &mut Config) {
    c.api.keys = vec![
        ApiKeyConfig {
            name: "ops".into(),
            key: SYSTEM_KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        },
        ApiKeyConfig {
            name: "acme-crm".into(),
            key: ACME_KEY.into(),
            scopes: vec!["admin".into()],
            tenant: "acme".into(),
        },
    ];
}

/// The error code of a reply (`None`: not an error).
fn error_code(f: &pb::Frame) -> Option<pb::ErrorCode> {
    match &f.body {
        Some(Body::Error(e)) => Some(e.code()),
        _ => None,
    }
}

fn send_to_user(to: &str, id: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: id.into(),
        to: Some(pb::send::To::UserId(to.into())),
        content: Some(text_content("cross")),
        ..Default::default()
    })
}

/// Nothing arrives at `c` for a short while.
fn assert_quiet(c: &mut Client, who: &str) {
    let f = c.read_frame_until(Instant::now() + Duration::from_millis(300));
    assert!(f.is_none(), "{who} got {f:?}");
}

/// Two tenants with the same local names, and the default tenant beside
/// them, on the store `tweak` picks.
fn isolation(tweak: impl FnOnce(&mut Config)) {
    let gw = Gateway::start_with(Driver::Epoll, tweak);
    let (mut a_alice, welcome) = Client::login(gw.tcp, "acme~alice", "phone");
    assert_eq!(welcome.user_id, "acme~alice");
    assert_eq!(welcome.tenant_id, "acme");
    let (mut a_bob, _) = Client::login(gw.tcp, "acme~bob", "phone");
    let (mut g_alice, welcome) = Client::login(gw.tcp, "globex~alice", "phone");
    assert_eq!(welcome.tenant_id, "globex");
    let (mut g_bob, _) = Client::login(gw.tcp, "globex~bob", "phone");
    let (mut plain, welcome) = Client::login(gw.tcp, "alice", "phone");
    assert_eq!(welcome.tenant_id, "");

    // Same local names, two conversations, each with its own seqs.
    let ack = a_alice.send_text("acme~bob", "m1", "hello acme");
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("{ack:?}")
    };
    assert_eq!(
        (ack.conversation_id.as_str(), ack.seq),
        ("d:acme~alice:acme~bob", 1)
    );
    let got = a_bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&got).unwrap().2, "hello acme");
    let ack = g_alice.send_text("globex~bob", "m1", "hello globex");
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.conversation_id, "d:globex~alice:globex~bob");
    assert_eq!(ack.seq, 1);
    let got = g_bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&got).unwrap().2, "hello globex");

    // Every kind of reference across the line is refused, typed.
    let globex_conv = "d:globex~alice:globex~bob";
    let refused: Vec<(&str, Body)> = vec![
        ("send to another tenant", send_to_user("globex~bob", "x1")),
        ("send to the default tenant", send_to_user("bob", "x2")),
        (
            "mention",
            Body::Send(pb::Send {
                client_msg_id: "x3".into(),
                to: Some(pb::send::To::UserId("acme~bob".into())),
                content: Some(text_content("hey")),
                mentions: vec!["globex~bob".into()],
                ..Default::default()
            }),
        ),
        (
            "media of another tenant",
            Body::Send(pb::Send {
                client_msg_id: "x4".into(),
                to: Some(pb::send::To::UserId("acme~bob".into())),
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Image(pb::Image {
                        media: Some(pb::MediaRef {
                            media_id: "globex~aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                            mime: "image/png".into(),
                            ..Default::default()
                        }),
                    })),
                }),
                ..Default::default()
            }),
        ),
        (
            "friend request",
            Body::FriendRequest(pb::FriendRequestSend {
                user_id: "globex~bob".into(),
                message: String::new(),
            }),
        ),
        (
            "profile",
            Body::Profile(pb::ProfileRequest {
                user_id: "globex~bob".into(),
            }),
        ),
        (
            "presence",
            Body::PresenceQuery(pb::PresenceQuery {
                user_ids: vec!["acme~bob".into(), "globex~bob".into()],
            }),
        ),
        (
            "group with a member of another tenant",
            Body::GroupCreate(pb::GroupCreate {
                name: "mixed".into(),
                members: vec!["acme~bob".into(), "globex~bob".into()],
                ..Default::default()
            }),
        ),
        (
            "group id of another tenant",
            Body::GroupCreate(pb::GroupCreate {
                group_id: "globex~team".into(),
                name: "squat".into(),
                ..Default::default()
            }),
        ),
        (
            "history",
            Body::History(pb::HistoryRequest {
                conversation_id: globex_conv.into(),
                ..Default::default()
            }),
        ),
        (
            "sync cursor",
            Body::Sync(pb::SyncRequest {
                cursors: vec![pb::Cursor {
                    conversation_id: globex_conv.into(),
                    seq: 0,
                }],
                ..Default::default()
            }),
        ),
        (
            "read mark",
            Body::Read(pb::ReadRequest {
                conversation_id: globex_conv.into(),
                up_to_seq: 1,
            }),
        ),
        (
            "search filter",
            Body::Search(pb::SearchRequest {
                query: "hello".into(),
                conversation_id: globex_conv.into(),
                ..Default::default()
            }),
        ),
        (
            "room",
            Body::RoomJoin(pb::RoomJoin {
                room_id: "globex~lobby".into(),
            }),
        ),
    ];
    for (what, body) in refused {
        let reply = a_alice.request(body);
        assert_eq!(
            error_code(&reply),
            Some(pb::ErrorCode::TenantMismatch),
            "{what}: {reply:?}"
        );
    }
    // The default tenant cannot reach a tenant either.
    let reply = plain.request(send_to_user("acme~bob", "p1"));
    assert_eq!(error_code(&reply), Some(pb::ErrorCode::TenantMismatch));

    // Nothing happened: no push anywhere, no new conversation, no group.
    assert_quiet(&mut g_bob, "globex~bob");
    assert_quiet(&mut g_alice, "globex~alice");
    let reply = g_bob.request(Body::FriendRequests(pb::FriendRequestListRequest {}));
    let Some(Body::FriendRequestListResult(list)) = reply.body else {
        panic!("{reply:?}")
    };
    assert!(list.incoming.is_empty(), "{list:?}");
    let reply = g_bob.request(Body::Conversations(pb::ConversationListRequest::default()));
    let Some(Body::ConversationsResult(list)) = reply.body else {
        panic!("{reply:?}")
    };
    let ids: Vec<&str> = list
        .conversations
        .iter()
        .map(|c| c.conversation_id.as_str())
        .collect();
    assert_eq!(ids, vec![globex_conv]);

    // Search finds only what the searcher's tenant holds: "hello" is in
    // both tenants' logs, acme~alice sees acme's only.
    // (The index is written behind the store: ask until acme's hit shows.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let reply = a_alice.request(Body::Search(pb::SearchRequest {
            query: "hello".into(),
            ..Default::default()
        }));
        let Some(Body::SearchResult(found)) = reply.body else {
            panic!("{reply:?}")
        };
        if !found.entries.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!found.entries.is_empty(), "{found:?}");
    for e in &found.entries {
        assert_eq!(e.conversation_id, "d:acme~alice:acme~bob", "{e:?}");
    }

    // A group made without an id gets one in its creator's tenant, and
    // works inside it.
    let reply = a_alice.request(Body::GroupCreate(pb::GroupCreate {
        name: "acme team".into(),
        members: vec!["acme~bob".into()],
        ..Default::default()
    }));
    let Some(Body::GroupInfoResult(info)) = reply.body else {
        panic!("{reply:?}")
    };
    let group = info.info.unwrap().group_id;
    assert!(group.starts_with("acme~"), "{group}");
    let ack = a_bob.send_group_text(&group, "g1", "in the team");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    // globex~alice cannot join, read or post to it.
    let reply = g_alice.request(Body::GroupJoin(pb::GroupJoin {
        group_id: group.clone(),
        message: String::new(),
    }));
    assert_eq!(error_code(&reply), Some(pb::ErrorCode::TenantMismatch));
    let reply = g_alice.send_group_text(&group, "g2", "intrude");
    assert_eq!(error_code(&reply), Some(pb::ErrorCode::TenantMismatch));
}

#[test]
fn tenants_are_isolated_on_the_embedded_store() {
    isolation(|_| {});
}

#[test]
fn tenants_are_isolated_on_redis() {
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    isolation(|c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
}

fn send_json(from: &str, to: &str, id: &str) -> Value {
    json!({
        "request_id": id,
        "from": from,
        "to_user": to,
        "content": {"type": "text", "text": "from the API"},
    })
}

/// A tenant's API key names its tenant's ids only (paths, bodies, the user
/// it acts as) and cannot ask about the whole server; a system key may
/// name any tenant but still acts inside one tenant per call.
#[test]
fn api_keys_are_confined_to_their_tenant() {
    let gw = Gateway::start_with(Driver::Epoll, keys);
    let (mut a_bob, _) = Client::login(gw.tcp, "acme~bob", "phone");
    let (mut g_bob, _) = Client::login(gw.tcp, "globex~bob", "phone");
    let mismatch = |(s, body): (u16, Value), what: &str| {
        assert_eq!(s, 403, "{what}: {body}");
        assert_eq!(body["code"], "TENANT_MISMATCH", "{what}: {body}");
    };

    // Inside its tenant, the acme key works.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/messages",
        Some(ACME_KEY),
        &send_json("acme~system", "acme~bob", "r1"),
    );
    assert_eq!(s, 200, "{body}");
    let got = a_bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&got).unwrap().2, "from the API");

    // Outside it, refused: as another tenant's user, to another tenant's
    // user, and any path naming another tenant.
    let calls = [
        (
            "POST",
            "/api/v1/messages".to_owned(),
            send_json("globex~system", "globex~bob", "r2"),
            "acting as another tenant's user",
        ),
        (
            "POST",
            "/api/v1/messages".to_owned(),
            send_json("acme~system", "globex~bob", "r3"),
            "sending across",
        ),
        (
            "GET",
            "/api/v1/users/globex~bob/profile".to_owned(),
            Value::Null,
            "profile path",
        ),
        (
            "GET",
            "/api/v1/users/globex~bob/devices".to_owned(),
            Value::Null,
            "devices path",
        ),
        (
            "POST",
            "/api/v1/users/globex~bob/kick".to_owned(),
            json!({}),
            "kick path",
        ),
        (
            "GET",
            "/api/v1/conversations/d:globex~alice:globex~bob/messages".to_owned(),
            Value::Null,
            "history path",
        ),
        (
            "POST",
            "/api/v1/groups".to_owned(),
            json!({"owner": "acme~system", "name": "x", "members": ["globex~bob"]}),
            "group member",
        ),
        (
            "POST",
            "/api/v1/presence".to_owned(),
            json!({"user_ids": ["globex~bob"]}),
            "presence",
        ),
        (
            "GET",
            "/api/v1/online".to_owned(),
            Value::Null,
            "the node's count",
        ),
    ];
    for (method, path, body, what) in calls {
        mismatch(gw.api(method, &path, Some(ACME_KEY), &body), what);
    }
    assert_quiet(&mut g_bob, "globex~bob");

    // The system key names any tenant, acting in the group's tenant.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/groups",
        Some(SYSTEM_KEY),
        &json!({"owner": "globex~bob", "group_id": "globex~ops", "name": "ops", "members": ["globex~alice"]}),
    );
    assert_eq!(s, 200, "{body}");
    let (s, body) = gw.api(
        "GET",
        "/api/v1/groups/globex~ops",
        Some(SYSTEM_KEY),
        &Value::Null,
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["owner"], "globex~bob", "{body}");
    let (s, body) = gw.api(
        "DELETE",
        "/api/v1/groups/globex~ops/members/globex~alice",
        Some(SYSTEM_KEY),
        &Value::Null,
    );
    assert_eq!(s, 200, "{body}");
    mismatch(
        gw.api(
            "GET",
            "/api/v1/groups/globex~ops",
            Some(ACME_KEY),
            &Value::Null,
        ),
        "another tenant's group",
    );
    // ... but even it cannot make one message cross tenants.
    mismatch(
        gw.api(
            "POST",
            "/api/v1/messages",
            Some(SYSTEM_KEY),
            &send_json("system", "acme~bob", "r4"),
        ),
        "system sender to a tenant",
    );

    // A tenant's broadcast reaches that tenant's online users only.
    let (s, body) = gw.api(
        "POST",
        "/api/v1/broadcasts",
        Some(ACME_KEY),
        &json!({"request_id": "b1", "from": "acme~system", "content": {"type": "text", "text": "acme news"}}),
    );
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["recipients"], 1, "{body}");
    let got = a_bob.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t == "acme news"));
    assert!(delivered_text(&got).is_some());
    while let Some(f) = g_bob.read_frame_until(Instant::now() + Duration::from_millis(300)) {
        assert!(
            delivered_text(&f).is_none_or(|(_, _, t)| t != "acme news"),
            "globex~bob got acme's broadcast"
        );
    }
}

/// Uploads are named in the uploader's tenant; another tenant's user or
/// key cannot fetch them, whatever it names.
#[test]
fn media_stays_in_its_tenant() {
    let gw = Gateway::start_with(Driver::Epoll, keys);
    let upload = |bearer: &str| {
        let auth = format!("Bearer {bearer}");
        let (s, _, answer) = gw.http(
            "POST",
            "/api/v1/media?kind=file",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            b"tenant file",
        );
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        assert_eq!(s, 201, "{v}");
        v["media_id"].as_str().unwrap().to_owned()
    };
    let fetch = |bearer: &str, path: &str| {
        let auth = format!("Bearer {bearer}");
        let (s, _, body) = gw.http("GET", path, &[("Authorization", &auth)], b"");
        (
            s,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let acme_alice = Gateway::token("acme~alice");
    let id = upload(&acme_alice);
    assert!(id.starts_with("acme~"), "{id}");
    let (s, _) = fetch(&acme_alice, &format!("/api/v1/media/{id}"));
    assert_eq!(s, 200);
    // A system key's upload is in the default tenant.
    assert!(!upload(SYSTEM_KEY).contains('~'));
    // Another tenant's user, even naming a message or an avatar.
    let globex_bob = Gateway::token("globex~bob");
    for path in [
        format!("/api/v1/media/{id}"),
        format!("/api/v1/media/{id}?conversation_id=d:globex~alice:globex~bob&seq=1"),
        format!("/api/v1/media/{id}?avatar_of=acme~alice"),
    ] {
        let (s, body) = fetch(&globex_bob, &path);
        assert_eq!(
            (s, body["code"].as_str()),
            (403, Some("TENANT_MISMATCH")),
            "{path}: {body}"
        );
    }
    // Another tenant's key.
    let (s, _) = fetch(SYSTEM_KEY, &format!("/api/v1/media/{id}"));
    assert_eq!(s, 200);
    let globex_id = upload(&Gateway::token("globex~carol"));
    let (s, body) = fetch(ACME_KEY, &format!("/api/v1/media/{globex_id}"));
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("TENANT_MISMATCH")),
        "{body}"
    );
}

/// Every changing call of an API key lands in its tenant's audit log once
/// answered, refusals included; message sends do not; a tenant's key reads
/// only its own log, a system key any (docs/tenants.md, "Audit log").
#[test]
fn admin_actions_are_audited_per_tenant() {
    let gw = Gateway::start_with(Driver::Epoll, keys);
    let call =
        |method: &str, path: &str, key: &str, body: Value| gw.api(method, path, Some(key), &body);
    let (s, body) = call(
        "POST",
        "/api/v1/users/acme~bob/ban",
        ACME_KEY,
        json!({"reason": "spam"}),
    );
    assert_eq!(s, 200, "{body}");
    let (s, _) = call("POST", "/api/v1/users/globex~bob/kick", ACME_KEY, json!({}));
    assert_eq!(s, 403);
    let (s, body) = call(
        "POST",
        "/api/v1/messages",
        ACME_KEY,
        send_json("acme~system", "acme~carol", "r1"),
    );
    assert_eq!(s, 200, "{body}");
    // A system key's call about a tenant's user goes to that tenant's log,
    // one about a default-tenant user to the system's own.
    let (s, body) = call(
        "DELETE",
        "/api/v1/users/acme~bob/ban",
        SYSTEM_KEY,
        Value::Null,
    );
    assert_eq!(s, 200, "{body}");
    let (s, body) = call("POST", "/api/v1/users/mallory/ban", SYSTEM_KEY, json!({}));
    assert_eq!(s, 200, "{body}");

    let (s, page) = call("GET", "/api/v1/audit", ACME_KEY, Value::Null);
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["tenant"], "acme");
    let rows: Vec<(String, String, String, u64)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |actor: &str, action: &str, target: &str, status| {
        (
            actor.to_owned(),
            action.to_owned(),
            target.to_owned(),
            status,
        )
    };
    assert_eq!(
        rows,
        [
            row(
                "key:ops",
                "DELETE /api/v1/users/{user_id}/ban",
                "/api/v1/users/acme~bob/ban",
                200
            ),
            row(
                "key:acme-crm",
                "POST /api/v1/users/{user_id}/kick",
                "/api/v1/users/globex~bob/kick",
                403
            ),
            row(
                "key:acme-crm",
                "POST /api/v1/users/{user_id}/ban",
                "/api/v1/users/acme~bob/ban",
                200
            ),
        ],
        "{page}"
    );
    assert_eq!(page["entries"][0]["level"], "system");
    assert_eq!(page["entries"][1]["level"], "tenant");

    // Only its own log for a tenant's key.
    let (s, body) = call("GET", "/api/v1/audit?tenant=globex", ACME_KEY, Value::Null);
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("TENANT_MISMATCH")),
        "{body}"
    );
    // Any for the system key; the default tenant's log is the system's own.
    let (s, page) = call("GET", "/api/v1/audit", SYSTEM_KEY, Value::Null);
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["entries"][0]["target"], "/api/v1/users/mallory/ban");
    let (s, page) = call(
        "GET",
        "/api/v1/audit?tenant=acme&limit=1",
        SYSTEM_KEY,
        Value::Null,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["entries"][0]["seq"], 3);
    assert_eq!(page["next_before_seq"], 3);
    let (s, page) = call(
        "GET",
        "/api/v1/audit?tenant=acme&before_seq=3",
        SYSTEM_KEY,
        Value::Null,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
}

/// `[chat] tenant_federation = ["acme:globex"]` lets those two tenants'
/// users talk (1:1 and in a group), and no one else: a third tenant stays
/// apart from both.
#[test]
fn federated_tenants_talk_and_others_stay_apart() {
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.chat.tenant_federation = vec!["globex:acme".into()];
    });
    let (mut a_alice, _) = Client::login(gw.tcp, "acme~alice", "phone");
    let (mut g_bob, _) = Client::login(gw.tcp, "globex~bob", "phone");
    let (mut i_carol, _) = Client::login(gw.tcp, "initech~carol", "phone");
    let ack = a_alice.send_text("globex~bob", "f1", "hello neighbour");
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.conversation_id, "d:acme~alice:globex~bob");
    let got = g_bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&got).unwrap().2, "hello neighbour");
    let reply = a_alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "acme~joint".into(),
        name: "joint".into(),
        members: vec!["globex~bob".into()],
        ..Default::default()
    }));
    assert!(
        matches!(reply.body, Some(Body::GroupInfoResult(_))),
        "{reply:?}"
    );
    let ack = g_bob.send_group_text("acme~joint", "f2", "in the joint group");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    for to in ["acme~alice", "globex~bob"] {
        let reply = i_carol.request(send_to_user(to, &format!("i-{to}")));
        assert_eq!(
            error_code(&reply),
            Some(pb::ErrorCode::TenantMismatch),
            "{to}"
        );
    }
    let reply = i_carol.send_group_text("acme~joint", "i2", "let me in");
    assert_eq!(error_code(&reply), Some(pb::ErrorCode::TenantMismatch));
}

/// `[chat] tenant_users_max = ["acme:2"]`: two acme users take the seats
/// (more devices of theirs are fine), a third is welcomed and then kicked
/// `TENANT_FULL`, another tenant is not limited, and a seat freed through
/// the server API lets the third in.
fn seats(tweak: impl FnOnce(&mut Config)) {
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        keys(c);
        c.chat.tenant_users_max = vec!["acme:2".into()];
        tweak(c);
    });
    let (_a, _) = Client::login(gw.tcp, "acme~a", "phone");
    let (_b, _) = Client::login(gw.tcp, "acme~b", "phone");
    let (_a2, _) = Client::login(gw.tcp, "acme~a", "laptop");
    let (_g, _) = Client::login(gw.tcp, "globex~z", "phone");
    let kicked = |user: &str| {
        let (mut c, _) = Client::login(gw.tcp, user, "phone");
        let f = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
        let Some(Body::Kick(k)) = f.body else {
            unreachable!()
        };
        assert_eq!(k.reason(), pb::KickReason::TenantFull, "{k:?}");
        assert!(c.closed_within(Duration::from_secs(5)));
    };
    kicked("acme~c");
    let (s, body) = gw.api(
        "DELETE",
        "/api/v1/users/acme~b/seat",
        Some(ACME_KEY),
        &Value::Null,
    );
    assert_eq!(s, 204, "{body}");
    let (s, body) = gw.api(
        "DELETE",
        "/api/v1/users/acme~b/seat",
        Some(ACME_KEY),
        &Value::Null,
    );
    assert_eq!(s, 404, "{body}");
    let (s, body) = gw.api(
        "DELETE",
        "/api/v1/users/globex~z/seat",
        Some(ACME_KEY),
        &Value::Null,
    );
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("TENANT_MISMATCH")),
        "{body}"
    );
    let (mut c, _) = Client::login(gw.tcp, "acme~c", "phone");
    let ack = c.send_text("acme~a", "s1", "in at last");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    kicked("acme~b");
}

#[test]
fn tenant_seats_hold_on_the_embedded_store() {
    seats(|_| {});
}

#[test]
fn tenant_seats_hold_on_redis() {
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    seats(|c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
}

/// `[chat] tenant_storage_bytes_max = ["acme:20"]`: acme's uploads stop at
/// 20 bytes together (507 `TENANT_STORAGE_FULL`, nothing stored), another
/// tenant's do not.
#[test]
fn a_tenants_media_stops_at_its_storage_limit() {
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        keys(c);
        c.chat.tenant_storage_bytes_max = vec!["acme:20".into()];
    });
    let upload = |user: &str| {
        let auth = format!("Bearer {}", Gateway::token(user));
        let (s, _, answer) = gw.http(
            "POST",
            "/api/v1/media?kind=file",
            &[("Authorization", &auth), ("Content-Type", "text/plain")],
            b"eleven byte",
        );
        (
            s,
            serde_json::from_slice::<Value>(&answer).unwrap_or(Value::Null),
        )
    };
    assert_eq!(upload("acme~a").0, 201);
    let (s, body) = upload("acme~b");
    assert_eq!(
        (s, body["code"].as_str()),
        (507, Some("TENANT_STORAGE_FULL")),
        "{body}"
    );
    for _ in 0..3 {
        assert_eq!(upload("globex~a").0, 201);
    }
}
