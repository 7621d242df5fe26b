//! The rooms routes of the server API (`/api/v1/rooms`, docs/http-api.md
//! "Rooms") over real HTTP on an in-process gateway, with real client
//! connections joined to the rooms: create, read, post as a system sender
//! (pushed to the joined connections), recent posts, delete (joined
//! connections get `room_closed`); the `rooms` scope, typed errors for bad
//! input that change nothing, and the routes in the OpenAPI document.
#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::{Value, json};
use support::{Client, Gateway};
use tern_gateway::config::{ApiKeyConfig, Driver};
use tern_protocol::pb::{self, frame::Body};

const ROOMS_KEY: &str = "rooms-key-0123456789";
const READ_KEY: &str = "read-key-0123456789ab";

fn gateway() -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![
            ApiKeyConfig {
                name: "rooms".into(),
                key: ROOMS_KEY.into(),
                scopes: vec!["rooms".into()],
                tenant: String::new(),
            },
            ApiKeyConfig {
                name: "dashboard".into(),
                key: READ_KEY.into(),
                scopes: vec!["read".into()],
                tenant: String::new(),
            },
        ];
    })
}

fn api(gw: &Gateway, method: &str, path: &str, body: &Value) -> (u16, Value) {
    gw.api(method, path, Some(ROOMS_KEY), body)
}

/// The text of the next room message `c` gets: (seq, sender, text).
fn next_room_post(c: &mut Client) -> (u64, String, String) {
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
    (e.seq, e.sender, text)
}

/// A broadcast channel made by the API for an owner, read back, posted to
/// by the system sender (a connection that joined gets it, in order, and
/// the recent posts list it), refused to a `from` that is neither a system
/// user nor an admin; then deleted: the joined connection gets
/// `room_closed`, and the room is 404 for every route.
#[test]
fn a_service_creates_posts_to_reads_and_deletes_a_room() {
    let gw = gateway();
    let (s, room) = api(
        &gw,
        "POST",
        "/api/v1/rooms",
        &json!({"room_id": "news", "name": "News", "kind": "broadcast",
                "owner": "alice", "admins": ["bob"]}),
    );
    assert_eq!(s, 200, "{room}");
    assert_eq!(room["conversation_id"], "r:news");
    assert_eq!(room["kind"], "broadcast");
    assert_eq!(room["owner"], "alice");
    assert_eq!(room["admins"], json!(["bob"]));
    assert_eq!(room["last_seq"], 0);

    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let r = carol.request(Body::RoomJoin(pb::RoomJoin {
        room_id: "news".into(),
    }));
    assert!(matches!(r.body, Some(Body::RoomJoined(_))), "{r:?}");

    let (s, posted) = api(
        &gw,
        "POST",
        "/api/v1/rooms/news/posts",
        &json!({"content": {"type": "text", "text": "from the system"}, "client_msg_id": "w1"}),
    );
    assert_eq!((s, &posted), (200, &json!({"room_id": "news", "seq": 1})));
    assert_eq!(
        next_room_post(&mut carol),
        (1, "system".into(), "from the system".into())
    );
    // An admin of the channel posts as itself; a reader may not.
    let (s, posted) = api(
        &gw,
        "POST",
        "/api/v1/rooms/news/posts",
        &json!({"from": "bob", "content": {"type": "text", "text": "from bob"}}),
    );
    assert_eq!((s, posted["seq"].as_u64()), (200, Some(2)), "{posted}");
    assert_eq!(
        next_room_post(&mut carol),
        (2, "bob".into(), "from bob".into())
    );
    let (s, err) = api(
        &gw,
        "POST",
        "/api/v1/rooms/news/posts",
        &json!({"from": "carol", "content": {"type": "text", "text": "me too"}}),
    );
    assert_eq!(
        (s, err["code"].as_str()),
        (403, Some("BROADCAST_ONLY")),
        "{err}"
    );

    let (s, info) = api(&gw, "GET", "/api/v1/rooms/news", &Value::Null);
    assert_eq!((s, info["last_seq"].as_u64()), (200, Some(2)), "{info}");
    let (s, posts) = api(&gw, "GET", "/api/v1/rooms/news/posts", &Value::Null);
    assert_eq!(s, 200, "{posts}");
    let list = posts["posts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "the refused post stored nothing: {posts}");
    assert_eq!(list[0]["seq"], 1);
    assert_eq!(list[0]["sender"], "system");
    assert_eq!(list[0]["sender_device"], "api");
    assert_eq!(list[0]["client_msg_id"], "w1");
    assert_eq!(
        list[0]["content"],
        json!({"type": "text", "text": "from the system"})
    );
    let (_, page) = api(
        &gw,
        "GET",
        "/api/v1/rooms/news/posts?before_seq=2&limit=5",
        &Value::Null,
    );
    assert_eq!(page["posts"].as_array().map(Vec::len), Some(1), "{page}");

    let (s, gone) = api(&gw, "DELETE", "/api/v1/rooms/news", &Value::Null);
    assert_eq!(
        (s, &gone),
        (200, &json!({"room_id": "news", "deleted": true}))
    );
    let f = carol.wait_push(|f| matches!(f.body, Some(Body::RoomClosed(_))));
    assert_eq!(
        f.body,
        Some(Body::RoomClosed(pb::RoomClosed {
            room_id: "news".into()
        }))
    );
    for (method, path, body) in [
        ("GET", "/api/v1/rooms/news", Value::Null),
        ("GET", "/api/v1/rooms/news/posts", Value::Null),
        ("DELETE", "/api/v1/rooms/news", Value::Null),
        (
            "POST",
            "/api/v1/rooms/news/posts",
            json!({"content": {"type": "text", "text": "late"}}),
        ),
    ] {
        let (s, err) = api(&gw, method, path, &body);
        assert_eq!(
            (s, err["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{method} {path}: {err}"
        );
    }
    let r = carol.request(Body::RoomJoin(pb::RoomJoin {
        room_id: "news".into(),
    }));
    assert!(
        matches!(&r.body, Some(Body::Error(e)) if e.code() == pb::ErrorCode::NotFound),
        "{r:?}"
    );
}

/// Bad input: a key without the `rooms` scope is 403 before anything
/// happens; a bad room id, an unknown field, a missing content, a bad kind
/// or too many admins are 400 (422 for a body that is not the call's JSON
/// shape), `INVALID_ARGUMENT`; a taken id is 409; none of them creates or
/// stores anything. The routes are in the generated OpenAPI document.
#[test]
fn bad_calls_are_refused_typed_and_change_nothing() {
    let gw = gateway();
    let (s, err) = gw.api(
        "POST",
        "/api/v1/rooms",
        Some(READ_KEY),
        &json!({"room_id": "lobby"}),
    );
    assert_eq!(
        (s, err["code"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{err}"
    );
    let (s, err) = gw.api("GET", "/api/v1/rooms/lobby", None, &Value::Null);
    assert_eq!(
        (s, err["code"].as_str()),
        (401, Some("AUTH_REQUIRED")),
        "{err}"
    );
    let (s, err) = api(&gw, "GET", "/api/v1/rooms/lobby", &Value::Null);
    assert_eq!((s, err["code"].as_str()), (404, Some("NOT_FOUND")), "{err}");

    for body in [
        json!({"room_id": "a:b"}),
        json!({"room_id": "lobby", "colour": "red"}),
        json!({"room_id": "lobby", "kind": "megaphone"}),
        json!({"room_id": "lobby", "owner": "not an id"}),
        json!({"room_id": "lobby", "kind": "broadcast",
               "admins": (0..17).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
        json!({"room_id": "lobby", "name": "x".repeat(257)}),
    ] {
        let (s, err) = api(&gw, "POST", "/api/v1/rooms", &body);
        assert!(s == 400 || s == 422, "{body}: {s} {err}");
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{body}: {err}");
    }
    let (s, err) = api(&gw, "GET", "/api/v1/rooms/lobby", &Value::Null);
    assert_eq!(s, 404, "nothing was created: {err}");

    let (s, _) = api(&gw, "POST", "/api/v1/rooms", &json!({"room_id": "lobby"}));
    assert_eq!(s, 200);
    let (s, err) = api(
        &gw,
        "POST",
        "/api/v1/rooms",
        &json!({"room_id": "lobby", "owner": "mallory"}),
    );
    assert_eq!(
        (s, err["code"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{err}"
    );
    let (_, info) = api(&gw, "GET", "/api/v1/rooms/lobby", &Value::Null);
    assert_eq!(info["owner"], "system", "the first record stays: {info}");
    for body in [
        json!({}),
        json!({"content": {"type": "text", "text": ""}}),
        json!({"content": {"type": "text", "text": "hi"}, "from": "a b"}),
        json!({"content": {"type": "text", "text": "hi"}, "client_msg_id": "not an id"}),
    ] {
        let (s, err) = api(&gw, "POST", "/api/v1/rooms/lobby/posts", &body);
        assert!(s == 400 || s == 422, "{body}: {s} {err}");
        assert_eq!(err["code"], "INVALID_ARGUMENT", "{body}: {err}");
    }
    let (s, err) = api(
        &gw,
        "GET",
        "/api/v1/rooms/lobby/posts?limit=x",
        &Value::Null,
    );
    assert_eq!(s, 400, "{err}");
    let (s, err) = api(&gw, "DELETE", "/api/v1/rooms/r:lobby", &Value::Null);
    assert_eq!(
        (s, err["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{err}"
    );
    let (_, info) = api(&gw, "GET", "/api/v1/rooms/lobby", &Value::Null);
    assert_eq!(info["last_seq"], 0, "no bad post was stored: {info}");

    let doc = gw.http_get("/api/openapi.json").1;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for (path, methods) in [
        ("/api/v1/rooms", &["post"][..]),
        ("/api/v1/rooms/{room_id}", &["get", "delete"][..]),
        ("/api/v1/rooms/{room_id}/posts", &["get", "post"][..]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} missing from the OpenAPI document"
            );
        }
    }
}
