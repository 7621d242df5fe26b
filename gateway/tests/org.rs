//! Departments and admin levels (issue 20; docs/tenants.md, "Org
//! structure and admin levels"), through the server API of a real gateway
//! on the embedded store and on a real `redis-server`: what a system key,
//! a tenant's key, an organization admin, a department admin and a plain
//! user may and may not do, each refusal typed and changing nothing, and
//! every permitted change in the tenant's audit log with its level.
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;

use serde_json::{Value, json};
use support::Gateway;
use tern_gateway::config::{ApiKeyConfig, Config, Driver, StoreKind};

const SYSTEM_KEY: &str = "system-key-0123456789";
const ACME_KEY: &str = "acme-key-0123456789ab";
const READ_KEY: &str = "read-key-0123456789ab";

fn keys(c: &mut Config) {
    c.api.keys = vec![
        ApiKeyConfig {
            name: "ops".into(),
            key: SYSTEM_KEY.into(),
            scopes: vec!["admin".into()],
            tenant: String::new(),
        },
        ApiKeyConfig {
            name: "acme-hr".into(),
            key: ACME_KEY.into(),
            scopes: vec!["org".into(), "audit".into()],
            tenant: "acme".into(),
        },
        ApiKeyConfig {
            name: "reader".into(),
            key: READ_KEY.into(),
            scopes: vec!["read".into()],
            tenant: String::new(),
        },
    ];
}

/// (status, code) of a call; `bearer` is a key or a user token.
fn call(gw: &Gateway, method: &str, path: &str, bearer: &str, body: Value) -> (u16, Value) {
    gw.api(method, path, Some(bearer), &body)
}

fn code(r: &(u16, Value)) -> (u16, &str) {
    (r.0, r.1["code"].as_str().unwrap_or(""))
}

fn levels(gw: &Gateway) {
    let olga = Gateway::token("acme~olga"); // admin of the organization acme~hq
    let erin = Gateway::token("acme~erin"); // admin of the department acme~eng
    let bob = Gateway::token("acme~bob"); // a member, no admin
    let gina = Gateway::token("globex~gina"); // admin in another tenant

    // Organizations: keys only, each in its tenant.
    let r = call(
        gw,
        "POST",
        "/api/v1/departments",
        ACME_KEY,
        json!({"dept_id": "acme~hq", "name": "Acme", "admins": ["acme~olga"]}),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["version"], 1);
    let r = call(
        gw,
        "POST",
        "/api/v1/departments",
        SYSTEM_KEY,
        json!({"dept_id": "globex~hq", "name": "Globex", "admins": ["globex~gina"]}),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    let refused = [
        (
            ACME_KEY,
            json!({"dept_id": "globex~x", "name": "x"}),
            (403, "TENANT_MISMATCH"),
        ),
        (
            olga.as_str(),
            json!({"dept_id": "acme~second", "name": "x"}),
            (403, "PERMISSION_DENIED"),
        ),
        (
            READ_KEY,
            json!({"dept_id": "acme~y", "name": "y"}),
            (403, "PERMISSION_DENIED"),
        ),
        (
            ACME_KEY,
            json!({"dept_id": "acme~z", "name": "z", "admins": ["globex~gina"]}),
            (403, "TENANT_MISMATCH"),
        ),
        (
            ACME_KEY,
            json!({"dept_id": "a b", "name": "z"}),
            (400, "INVALID_ARGUMENT"),
        ),
    ];
    for (who, body, want) in refused {
        let r = call(gw, "POST", "/api/v1/departments", who, body.clone());
        assert_eq!(code(&r), want, "{body}: {}", r.1);
    }

    // The organization admin makes departments in it and names their admins.
    for (id, admins) in [("acme~eng", json!(["acme~erin"])), ("acme~ops", json!([]))] {
        let r = call(
            gw,
            "POST",
            "/api/v1/departments",
            &olga,
            json!({"dept_id": id, "name": id, "parent": "acme~hq", "admins": admins}),
        );
        assert_eq!(r.0, 201, "{id}: {}", r.1);
    }

    // The department admin: its department's contents, nothing else.
    let r = call(
        gw,
        "PUT",
        "/api/v1/departments/acme~eng/members/acme~bob",
        &erin,
        json!({"title": "engineer"}),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    let r = call(
        gw,
        "POST",
        "/api/v1/departments",
        &erin,
        json!({"dept_id": "acme~web", "name": "Web", "parent": "acme~eng"}),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    let r = call(
        gw,
        "PUT",
        "/api/v1/departments/acme~web/members/acme~bob",
        &erin,
        json!({"title": "lead"}),
    );
    assert_eq!(r.0, 200, "below its department: {}", r.1);
    let outside = [
        (
            "PUT",
            "/api/v1/departments/acme~ops/members/acme~bob",
            json!({}),
            (403, "PERMISSION_DENIED"),
            "a sibling department",
        ),
        (
            "PATCH",
            "/api/v1/departments/acme~eng",
            json!({"name": "mine"}),
            (403, "PERMISSION_DENIED"),
            "its own record",
        ),
        (
            "DELETE",
            "/api/v1/departments/acme~eng",
            Value::Null,
            (403, "PERMISSION_DENIED"),
            "its own deletion",
        ),
        (
            "PATCH",
            "/api/v1/departments/acme~hq",
            json!({"name": "mine"}),
            (403, "PERMISSION_DENIED"),
            "the organization",
        ),
        (
            "PUT",
            "/api/v1/departments/globex~hq/members/acme~bob",
            json!({}),
            (403, "TENANT_MISMATCH"),
            "another tenant",
        ),
        (
            "PUT",
            "/api/v1/departments/acme~eng/members/globex~gina",
            json!({}),
            (403, "TENANT_MISMATCH"),
            "a member of another tenant",
        ),
    ];
    for (method, path, body, want, what) in outside {
        let r = call(gw, method, path, &erin, body);
        assert_eq!(code(&r), want, "{what}: {}", r.1);
    }
    // A plain member and another tenant's admin change nothing here; the
    // member reads the directory (tenant-wide), the other tenant cannot.
    for who in [&bob, &gina] {
        let r = call(
            gw,
            "PUT",
            "/api/v1/departments/acme~eng/members/acme~carol",
            who,
            json!({}),
        );
        assert_eq!(r.0, 403, "{}", r.1);
    }
    let r = call(gw, "GET", "/api/v1/departments/acme~ops", &bob, Value::Null);
    assert_eq!(r.0, 200, "{}", r.1);
    let r = call(gw, "GET", "/api/v1/departments/acme~hq", &gina, Value::Null);
    assert_eq!(code(&r), (403, "TENANT_MISMATCH"), "{}", r.1);

    // The organization admin changes what is below it, with versions.
    let r = call(
        gw,
        "PATCH",
        "/api/v1/departments/acme~eng",
        &olga,
        json!({"name": "Engineering", "admins": ["acme~erin", "acme~bob"]}),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["version"], 2);
    let r = call(
        gw,
        "DELETE",
        "/api/v1/departments/acme~eng",
        &olga,
        Value::Null,
    );
    assert_eq!(code(&r), (409, "HAS_CHILDREN"), "{}", r.1);
    let r = call(
        gw,
        "DELETE",
        "/api/v1/departments/acme~web",
        &olga,
        Value::Null,
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let r = call(
        gw,
        "DELETE",
        "/api/v1/departments/acme~web",
        &olga,
        Value::Null,
    );
    assert_eq!(code(&r), (404, "NOT_FOUND"), "{}", r.1);

    // What the tree holds now, read by the tenant's key.
    let (s, d) = call(
        gw,
        "GET",
        "/api/v1/departments/acme~hq",
        ACME_KEY,
        Value::Null,
    );
    assert_eq!(s, 200, "{d}");
    let children: Vec<&str> = d["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["dept_id"].as_str().unwrap())
        .collect();
    assert_eq!(children, ["acme~eng", "acme~ops"]);
    let (s, d) = call(
        gw,
        "GET",
        "/api/v1/departments/acme~eng",
        &erin,
        Value::Null,
    );
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["department"]["name"], "Engineering");
    assert_eq!(
        d["members"],
        json!([{"user_id": "acme~bob", "title": "engineer", "order": 0}])
    );
    let r = call(
        gw,
        "DELETE",
        "/api/v1/departments/acme~eng/members/acme~bob",
        &erin,
        Value::Null,
    );
    assert_eq!(r.0, 204, "{}", r.1);

    // Every permitted change is in acme's audit log with its level;
    // refusals of user calls changed nothing and are not.
    let (s, page) = call(gw, "GET", "/api/v1/audit", ACME_KEY, Value::Null);
    assert_eq!(s, 200, "{page}");
    let rows: Vec<(String, String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"].as_u64().unwrap() < 300)
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["level"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let row = |a: &str, l: &str, act: &str| (a.to_owned(), l.to_owned(), act.to_owned());
    assert_eq!(
        rows,
        [
            row(
                "acme~erin",
                "department",
                "DELETE /api/v1/departments/{dept_id}/members/{user_id}"
            ),
            row(
                "acme~olga",
                "organization",
                "DELETE /api/v1/departments/{dept_id}"
            ),
            row(
                "acme~olga",
                "organization",
                "PATCH /api/v1/departments/{dept_id}"
            ),
            row(
                "acme~erin",
                "department",
                "PUT /api/v1/departments/{dept_id}/members/{user_id}"
            ),
            row("acme~erin", "department", "POST /api/v1/departments"),
            row(
                "acme~erin",
                "department",
                "PUT /api/v1/departments/{dept_id}/members/{user_id}"
            ),
            row("acme~olga", "organization", "POST /api/v1/departments"),
            row("acme~olga", "organization", "POST /api/v1/departments"),
            row("key:acme-hr", "tenant", "POST /api/v1/departments"),
        ],
        "{page}"
    );
}

#[test]
fn admin_levels_on_the_embedded_store() {
    let gw = Gateway::start_with(Driver::Epoll, keys);
    levels(&gw);
}

#[test]
fn admin_levels_on_redis() {
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        keys(c);
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
    levels(&gw);
}

/// A department made with `group: true` keeps a chat group of its id in
/// step with its members (added members can post, removed ones cannot, a
/// deleted department's group is dissolved), and any user of the tenant
/// reads the directory while another tenant's cannot.
#[test]
fn department_groups_follow_membership_and_the_directory_is_tenant_wide() {
    use support::Client;
    use tern_protocol::pb::{self, frame::Body};
    let gw = Gateway::start_with(Driver::Epoll, keys);
    let r = call(
        &gw,
        "POST",
        "/api/v1/departments",
        ACME_KEY,
        json!({"dept_id": "acme~hq", "name": "Acme"}),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    let r = call(
        &gw,
        "POST",
        "/api/v1/departments",
        ACME_KEY,
        json!({"dept_id": "acme~eng", "name": "Eng", "parent": "acme~hq", "group": true}),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    assert_eq!(r.1["group_id"], "acme~eng");
    let (mut bob, _) = Client::login(gw.tcp, "acme~bob", "phone");
    let refused = bob.send_group_text("acme~eng", "g0", "before");
    assert!(matches!(refused.body, Some(Body::Error(_))), "{refused:?}");

    let r = call(
        &gw,
        "PUT",
        "/api/v1/departments/acme~eng/members/acme~bob",
        ACME_KEY,
        json!({"title": "engineer"}),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    // Again: the group already has bob, the call still succeeds.
    let r = call(
        &gw,
        "PUT",
        "/api/v1/departments/acme~eng/members/acme~bob",
        ACME_KEY,
        json!({"title": "lead"}),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    let ack = bob.send_group_text("acme~eng", "g1", "hello team");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");

    // The directory: bob reads it, a user of another tenant does not.
    let (s, d) = call(
        &gw,
        "GET",
        "/api/v1/departments/acme~hq",
        &Gateway::token("acme~bob"),
        Value::Null,
    );
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["children"][0]["dept_id"], "acme~eng");
    let r = call(
        &gw,
        "GET",
        "/api/v1/departments/acme~hq",
        &Gateway::token("globex~gina"),
        Value::Null,
    );
    assert_eq!(code(&r), (403, "TENANT_MISMATCH"), "{}", r.1);
    let r = call(
        &gw,
        "PUT",
        "/api/v1/departments/acme~eng/members/acme~carol",
        &Gateway::token("acme~bob"),
        json!({}),
    );
    assert_eq!(
        code(&r),
        (403, "PERMISSION_DENIED"),
        "reading is not administering: {}",
        r.1
    );

    let r = call(
        &gw,
        "DELETE",
        "/api/v1/departments/acme~eng/members/acme~bob",
        ACME_KEY,
        Value::Null,
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let refused = bob.send_group_text("acme~eng", "g2", "after");
    let Some(Body::Error(e)) = refused.body else {
        panic!("{refused:?}")
    };
    assert_eq!(e.code(), pb::ErrorCode::NotMember);

    let r = call(
        &gw,
        "PUT",
        "/api/v1/departments/acme~eng/members/acme~dan",
        ACME_KEY,
        json!({}),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    let r = call(
        &gw,
        "DELETE",
        "/api/v1/departments/acme~eng",
        ACME_KEY,
        Value::Null,
    );
    assert_eq!(r.0, 204, "{}", r.1);
    let (mut dan, _) = Client::login(gw.tcp, "acme~dan", "phone");
    let reply = dan.request(Body::GroupInfo(pb::GroupInfoRequest {
        group_id: "acme~eng".into(),
    }));
    let Some(Body::GroupInfoResult(info)) = reply.body else {
        panic!("{reply:?}")
    };
    assert!(
        info.info.unwrap().dissolved,
        "the department's group is dissolved"
    );
}

/// The directory search finds department names, member ids and titles,
/// limited by `[api_ops] directory_visibility`: with `organization` a user
/// reads only the organizations they belong to (a department outside is
/// 403 and never in their results), with `tenant` all of their tenant's;
/// keys read everything of their tenant.
#[test]
fn the_directory_is_searched_within_what_the_viewer_may_see() {
    for mode in ["organization", "tenant"] {
        let gw = Gateway::start_with(Driver::Epoll, |c| {
            keys(c);
            c.api_ops.directory_visibility = mode.into();
        });
        for (id, parent) in [
            ("acme~hq", None),
            ("acme~eng", Some("acme~hq")),
            ("acme~sub", None),
        ] {
            let mut body = json!({"dept_id": id, "name": format!("{id} dept")});
            if let Some(p) = parent {
                body["parent"] = json!(p);
            }
            let r = call(&gw, "POST", "/api/v1/departments", ACME_KEY, body);
            assert_eq!(r.0, 201, "{}", r.1);
        }
        for (dept, user, title) in [
            ("acme~eng", "acme~bob", "Rust engineer"),
            ("acme~sub", "acme~carol", "rust lead"),
        ] {
            let r = call(
                &gw,
                "PUT",
                &format!("/api/v1/departments/{dept}/members/{user}"),
                ACME_KEY,
                json!({"title": title}),
            );
            assert_eq!(r.0, 200, "{}", r.1);
        }
        let bob = Gateway::token("acme~bob");
        let (s, hits) = call(&gw, "GET", "/api/v1/directory?q=RUST", &bob, Value::Null);
        assert_eq!(s, 200, "{hits}");
        let users: Vec<&str> = hits["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        let (s, sub) = call(
            &gw,
            "GET",
            "/api/v1/departments/acme~sub",
            &bob,
            Value::Null,
        );
        if mode == "organization" {
            assert_eq!(users, ["acme~bob"], "{mode}: {hits}");
            assert_eq!(
                (s, sub["code"].as_str()),
                (403, Some("PERMISSION_DENIED")),
                "{sub}"
            );
        } else {
            assert_eq!(users, ["acme~bob", "acme~carol"], "{mode}: {hits}");
            assert_eq!(s, 200, "{sub}");
        }
        let (s, hits) = call(
            &gw,
            "GET",
            "/api/v1/directory?q=dept",
            ACME_KEY,
            Value::Null,
        );
        assert_eq!(s, 200, "{hits}");
        assert_eq!(hits["departments"].as_array().unwrap().len(), 3, "{hits}");
        assert_eq!(hits["partial"], false);
        let r = call(
            &gw,
            "GET",
            "/api/v1/directory?q=x&tenant=globex",
            &bob,
            Value::Null,
        );
        assert_eq!(code(&r), (403, "TENANT_MISMATCH"), "{}", r.1);
        let r = call(&gw, "GET", "/api/v1/directory?q=", &bob, Value::Null);
        assert_eq!(r.0, 400, "{}", r.1);
    }
}
