//! The server API over real HTTP on an in-process gateway (embedded store,
//! both drivers' shards irrelevant here: epoll): API keys and scopes, the
//! error shape, a send that reaches a connected device by push, idempotent
//! retries, and the generated OpenAPI document.
#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::{Value, json};
use support::{Client, Gateway, delivered_text};
use tern_gateway::config::{ApiKeyConfig, Driver};

const ADMIN_KEY: &str = "admin-key-0123456789";
const READ_KEY: &str = "read-key-0123456789ab";

fn gateway() -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![
            ApiKeyConfig {
                name: "crm".into(),
                key: ADMIN_KEY.into(),
                scopes: vec!["admin".into()],
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

fn hello(request_id: &str) -> Value {
    json!({
        "request_id": request_id,
        "from": "alice",
        "to_user": "bob",
        "content": {"type": "text", "text": "hello from the CRM"},
    })
}

/// No key, a wrong key, a key without the scope: 401/401/403 with the one
/// error shape, and nothing is sent (bob gets no push).
#[test]
fn keys_and_scopes_are_checked_before_anything_happens() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    for (key, status, code) in [
        (None, 401, "AUTH_REQUIRED"),
        (Some("not-a-key-at-all-xxxx"), 401, "AUTH_FAILED"),
        (Some(READ_KEY), 403, "PERMISSION_DENIED"),
    ] {
        let (s, body) = gw.api("POST", "/api/v1/messages", key, &hello("r1"));
        assert_eq!(s, status, "{body}");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["detail"].is_string(), "{body}");
    }
    // The 401 carries WWW-Authenticate.
    let (s, head, _) = gw.http("POST", "/api/v1/messages", &[], b"{}");
    assert_eq!(s, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(
        bob.read_frame_until(std::time::Instant::now() + std::time::Duration::from_millis(300))
            .is_none(),
        "a refused call sent something"
    );
}

/// A send as alice reaches bob's connected device as a push; a retry with
/// the same request id answers the same seq with duplicate = true and
/// pushes nothing more.
#[test]
fn send_reaches_a_device_once_and_retries_are_idempotent() {
    let gw = gateway();
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (s, first) = gw.api("POST", "/api/v1/messages", Some(ADMIN_KEY), &hello("r1"));
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["conversation_id"], "d:alice:bob");
    assert_eq!(first["duplicate"], false);
    let f = bob.wait_push(|f| delivered_text(f).is_some());
    let (conv, seq, text) = delivered_text(&f).unwrap();
    assert_eq!(
        (conv.as_str(), text.as_str()),
        ("d:alice:bob", "hello from the CRM")
    );
    assert_eq!(json!(seq), first["seq"]);
    let (s, again) = gw.api("POST", "/api/v1/messages", Some(ADMIN_KEY), &hello("r1"));
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["duplicate"], true);
    assert!(
        bob.read_frame_until(std::time::Instant::now() + std::time::Duration::from_millis(300))
            .is_none_or(|f| delivered_text(&f).is_none()),
        "the retry pushed a second copy"
    );
}

/// Bad bodies get typed errors: not JSON, an unknown field, both
/// recipients, an unknown group (the domain's NOT_FOUND).
#[test]
fn bad_bodies_get_typed_errors() {
    let gw = gateway();
    let auth = format!("Bearer {ADMIN_KEY}");
    let (s, _, body) = gw.http(
        "POST",
        "/api/v1/messages",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{not json",
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    let mut extra = hello("r2");
    extra["colour"] = json!("red");
    let (s, body) = gw.api("POST", "/api/v1/messages", Some(ADMIN_KEY), &extra);
    assert_eq!(
        (s, body["code"].as_str()),
        (422, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    let mut both = hello("r3");
    both["to_group"] = json!("g1");
    let (s, body) = gw.api("POST", "/api/v1/messages", Some(ADMIN_KEY), &both);
    assert_eq!(
        (s, body["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    let group = json!({
        "request_id": "r4", "from": "alice", "to_group": "nope",
        "content": {"type": "text", "text": "x"},
    });
    let (s, body) = gw.api("POST", "/api/v1/messages", Some(ADMIN_KEY), &group);
    assert!(matches!(s, 403 | 404), "{s} {body}");
    assert!(body["code"].is_string(), "{body}");
}

/// The OpenAPI document is served without a key and lists every route
/// with its method; each listed operation answers 401 without a key (the
/// route exists and is guarded), not 404/405.
#[test]
fn openapi_lists_every_route() {
    let gw = gateway();
    let (s, doc) = gw.api("GET", "/api/openapi.json", None, &Value::Null);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/api/v1/messages"), "{doc}");
    assert_eq!(
        doc,
        serde_json::to_value(tern_gateway::api::openapi()).unwrap()
    );
    // Public operations: they take no API key (local accounts).
    const PUBLIC: &[&str] = &["/api/v1/accounts/register", "/api/v1/accounts/login"];
    for (path, ops) in paths {
        if PUBLIC.contains(&path.as_str()) {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            // Path parameters get a placeholder value.
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let (s, body) = gw.api(&method.to_uppercase(), &concrete, None, &json!({}));
            assert_eq!(s, 401, "{method} {path}: {body}");
        }
    }
}
