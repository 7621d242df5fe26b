//! The web chat page and admin console (docs/web.md): served from the
//! binary with their types and caching headers, the development token
//! route present only in development mode, the admin console's group
//! endpoint, the browser schema generated from protocol/proto, and the
//! whole page driven in a real headless Chromium by Playwright
//! (web/tests/browser.mjs, features.mjs, accounts.mjs, rooms.mjs) against an
//! in-process gateway.
//!
//! The last two need Node.js, `npm ci` in web/ and Debian's chromium
//! (scripts/test.sh installs them). Without them these tests fail when
//! `CI` is set, and are skipped with a note otherwise.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use support::{Client, Gateway, http_request};
use tern_gateway::config::{ApiKeyConfig, DEV_JWT_SECRET, Driver};
use tern_protocol::pb::{self, frame::Body};

const KEY: &str = "admin-key-0123456789";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

fn with_key(cfg: &mut tern_gateway::config::Config) {
    cfg.api.keys.push(ApiKeyConfig {
        name: "admin".into(),
        key: KEY.into(),
        scopes: vec!["admin".into()],
        tenant: String::new(),
    });
}

/// A gateway in development mode: the public development secret, every
/// listener on loopback (as `tern serve --dev` makes it).
fn dev_gateway() -> Gateway {
    Gateway::start_with(Driver::Epoll, |cfg| {
        cfg.auth.jwt_secret = DEV_JWT_SECRET.into();
        with_key(cfg);
    })
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Each page and asset comes with its content type, `no-cache` and an ETag
/// that answers 304; unknown files are 404. Proven by real HTTP requests
/// to an in-process gateway.
#[test]
fn pages_are_served_with_types_and_revalidation() {
    let g = Gateway::start(Driver::Epoll);
    for (path, ty, needle) in [
        ("/", "text/html; charset=utf-8", "Tern chat"),
        ("/admin", "text/html; charset=utf-8", "Tern admin"),
        (
            "/web/chat.js",
            "text/javascript; charset=utf-8",
            "TernClient",
        ),
        (
            "/web/client.js",
            "text/javascript; charset=utf-8",
            "deliverAck",
        ),
        (
            "/web/admin.js",
            "text/javascript; charset=utf-8",
            "/metrics",
        ),
        ("/web/style.css", "text/css; charset=utf-8", "--accent"),
        ("/web/tern.proto.json", "application/json", "\"Frame\""),
        (
            "/web/vendor/protobuf.min.js",
            "text/javascript; charset=utf-8",
            "protobuf",
        ),
        ("/web/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let (status, head, body) = http_request(g.http, "GET", path, &[], b"");
        assert_eq!(status, 200, "{path}: {head}");
        assert_eq!(header(&head, "content-type"), Some(ty), "{path}");
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            header(&head, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
        let etag = header(&head, "etag").expect("an etag").to_owned();
        let (status, _, body) = http_request(g.http, "GET", path, &[("If-None-Match", &etag)], b"");
        assert_eq!((status, body.len()), (304, 0), "{path} revalidated");
    }
    let (status, _, _) = http_request(g.http, "GET", "/web/nope.js", &[], b"");
    assert_eq!(status, 404);
    let (status, _, _) = http_request(g.http, "GET", "/web/../Cargo.toml", &[], b"");
    assert_eq!(status, 404);
}

/// `/web/config.json` names the bound WebSocket port; outside development
/// mode `POST /web/dev-token` is 404 and mints nothing. Proven against a
/// gateway with a secret of its own.
#[test]
fn no_dev_tokens_outside_development_mode() {
    let g = Gateway::start(Driver::Epoll);
    let (status, _, body) = http_request(g.http, "GET", "/web/config.json", &[], b"");
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(cfg["ws"]["port"], g.ws.port());
    assert_eq!(cfg["ws"]["host"], "127.0.0.1");
    assert_eq!(cfg["dev"], false);
    assert_eq!(cfg["accounts"], false);
    let (status, _, body) = http_request(
        g.http,
        "POST",
        "/web/dev-token",
        &[("Content-Type", "application/json")],
        br#"{"user_id":"alice"}"#,
    );
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains("token\""));
}

/// In development mode the page can mint a token for any valid user id,
/// and that token logs in over the real protocol; a bad id is 400.
#[test]
fn dev_token_logs_in_in_development_mode() {
    let g = dev_gateway();
    let (_, _, body) = http_request(g.http, "GET", "/web/config.json", &[], b"");
    let cfg: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(cfg["dev"], true);
    let (status, _, body) = http_request(
        g.http,
        "POST",
        "/web/dev-token",
        &[("Content-Type", "application/json")],
        br#"{"user_id":"alice"}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let t: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = t["token"].as_str().unwrap().to_owned();
    let mut c = Client::connect(g.tcp);
    let reply = c.request(Body::Auth(pb::Auth {
        token,
        device_id: "web-1".into(),
        protocol_version: 1,
        platform: pb::Platform::Web as i32,
        ..Default::default()
    }));
    match reply.body {
        Some(Body::Welcome(w)) => assert_eq!(w.user_id, "alice"),
        other => panic!("expected welcome, got {other:?}"),
    }
    let (status, _, _) = http_request(
        g.http,
        "POST",
        "/web/dev-token",
        &[("Content-Type", "application/json")],
        br#"{"user_id":"no spaces"}"#,
    );
    assert_eq!(status, 400);
}

/// `GET /api/v1/groups/{id}` (the admin console's group view) answers the
/// group's settings and members to an operator key that is no member,
/// 404 for an unknown group, 401 without a key. Proven over the real API.
#[test]
fn admin_reads_a_group_and_its_members() {
    let g = Gateway::start_with(Driver::Epoll, with_key);
    let (status, created) = g.api(
        "POST",
        "/api/v1/groups",
        Some(KEY),
        &json!({"owner": "alice", "name": "team", "group_id": "team1", "members": ["bob", "carol"]}),
    );
    assert_eq!(status, 200, "{created}");
    let (status, got) = g.api("GET", "/api/v1/groups/team1", Some(KEY), &json!(null));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["name"], "team");
    assert_eq!(got["owner"], "alice");
    assert_eq!(got["member_count"], 3);
    assert_eq!(got["dissolved"], false);
    let members: Vec<(String, String)> = got["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [("alice", "owner"), ("bob", "member"), ("carol", "member")]
            .map(|(u, r)| (u.to_owned(), r.to_owned()))
    );
    let (status, page) = g.api(
        "GET",
        "/api/v1/groups/team1?after=alice",
        Some(KEY),
        &json!(null),
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["members"][0]["user_id"], "bob");
    let (status, _) = g.api("GET", "/api/v1/groups/nope", Some(KEY), &json!(null));
    assert_eq!(status, 404);
    let (status, _) = g.api("GET", "/api/v1/groups/team1", None, &json!(null));
    assert_eq!(status, 401);
    let (status, _) = g.api("DELETE", "/api/v1/groups/team1", Some(KEY), &json!(null));
    assert_eq!(status, 200);
    let (_, gone) = g.api("GET", "/api/v1/groups/team1", Some(KEY), &json!(null));
    assert_eq!(gone["dissolved"], true);
}

/// The page is told the host of a listener bound to one address, and
/// none for one bound to every address (it then uses the page's own host);
/// development mode needs both the public secret and loopback listeners.
#[test]
fn page_config_hosts_and_development_mode() {
    use tern_gateway::web::{Endpoint, dev_mode};
    let any = Endpoint::of("0.0.0.0:7401".parse().unwrap());
    assert_eq!((any.host, any.port), (None, 7401));
    let v6 = Endpoint::of("[::1]:7402".parse().unwrap());
    assert_eq!((v6.host.as_deref(), v6.port), (Some("[::1]"), 7402));
    let mut cfg = tern_gateway::config::Config::default();
    cfg.auth.jwt_secret = DEV_JWT_SECRET.into();
    cfg.listen.http = Some("127.0.0.1:7480".parse().unwrap());
    assert!(dev_mode(&cfg));
    cfg.listen.http = Some("0.0.0.0:7480".parse().unwrap());
    assert!(!dev_mode(&cfg), "a listener off loopback");
    cfg.listen.http = Some("127.0.0.1:7480".parse().unwrap());
    cfg.auth.jwt_secret = "a-secret-of-its-own".into();
    assert!(!dev_mode(&cfg), "a secret of its own");
}

/// Whether the browser tools are here; in CI their absence is a failure.
fn tools_or_skip(what: &str) -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let modules = web_dir().join("node_modules/playwright-core").exists()
        && web_dir().join("node_modules/.bin/pbjs").exists();
    if node && modules {
        return true;
    }
    let msg = format!(
        "{what}: needs node and `npm ci` in web/ (node: {node}, node_modules: {modules}); scripts/test.sh installs them"
    );
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// Runs `cmd` to its end, killing it after `limit`; its output is shown.
fn run_bounded(mut cmd: Command, limit: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The committed browser schema (web/static/tern.proto.json) and runtime
/// are what `pbjs` makes of protocol/proto now: rebuilt and compared by
/// web/build.mjs --check, so the page cannot drift from the schema.
#[test]
fn browser_schema_matches_protocol_proto() {
    if !tools_or_skip("browser schema check") {
        return;
    }
    let mut cmd = Command::new("node");
    cmd.arg("build.mjs").arg("--check").current_dir(web_dir());
    assert!(
        run_bounded(cmd, Duration::from_secs(120)),
        "web/static is stale: run `npm run build` in web/"
    );
}

/// The whole page in a real browser: two Chromium contexts sign in as
/// alice and bob, exchange 1:1 and group messages, an image, a recall and
/// read receipts; bob's network is cut and restored and his screen then
/// matches the server's history (read back over the API); the admin
/// console bans bob and bob's page says so. Playwright (web/tests/
/// browser.mjs) drives Debian's /usr/bin/chromium against this gateway.
#[test]
fn chat_and_admin_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip("browser test") else {
        return;
    };
    let g = dev_gateway();
    run_page_script("browser.mjs", &g, Some(KEY), &chromium, 300);
}

/// Profiles, scroll-back, friend refusal, group roles and mutes, removal
/// without a ban, leaving, and a reload, in a real browser: three Chromium
/// contexts (alice, bob, carol) against this gateway, driven by
/// web/tests/features.mjs (its header lists each step and what it proves).
#[test]
fn profiles_groups_history_and_reload_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip("features browser test") else {
        return;
    };
    let g = dev_gateway();
    run_page_script("features.mjs", &g, Some(KEY), &chromium, 300);
}

/// Rooms on the page in a real browser: joined by id, recent posts shown,
/// posts both ways live, a broadcast channel's refusal shown, joined again
/// after a reload, a deletion shown. web/tests/rooms.mjs (its header lists
/// each step) drives Chromium against this gateway.
#[test]
fn rooms_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip("rooms browser test") else {
        return;
    };
    let g = dev_gateway();
    run_page_script("rooms.mjs", &g, Some(KEY), &chromium, 180);
}

/// Runs `web/tests/<script>` in Node against `g`'s page, driving
/// `chromium` (with the admin API key when given), and fails the test if
/// it fails or outlasts `secs`.
fn run_page_script(script: &str, g: &Gateway, api_key: Option<&str>, chromium: &str, secs: u64) {
    let mut cmd = Command::new("node");
    cmd.arg(format!("tests/{script}"))
        .current_dir(web_dir())
        .env("WEB_URL", format!("http://{}", g.http))
        .env("CHROMIUM_BIN", chromium);
    if let Some(key) = api_key {
        cmd.env("WEB_API_KEY", key);
    }
    assert!(
        run_bounded(cmd, Duration::from_secs(secs)),
        "web/tests/{script} failed in the browser (its output is above)"
    );
}

/// The browser to drive, when it and the tools are here (see
/// [`tools_or_skip`]); in CI their absence is a failure.
fn chromium_or_skip(what: &str) -> Option<String> {
    if !tools_or_skip(what) {
        return None;
    }
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        let msg = format!("{what}: no chromium at {chromium}; scripts/test.sh installs it");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        return None;
    }
    Some(chromium)
}

/// `tern serve --dev` prints the page's URL in its banner, and that URL
/// serves the chat page in development mode. Proven by starting the real
/// binary on free loopback ports and fetching the printed URL.
#[test]
fn dev_banner_prints_the_page_url() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--dev", "--shards", "1", "--listen"])
        .arg(addr(ports[0]))
        .arg("--ws-listen")
        .arg(addr(ports[1]))
        .arg("--http")
        .arg(addr(ports[2]))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut url = None;
    while url.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            url = line
                .split_whitespace()
                .find(|w| w.starts_with("http://") && w.ends_with('/'))
                .map(str::to_owned);
        }
    }
    let url = url.expect("the banner names the page");
    assert_eq!(url, format!("http://{}/", addr(ports[2])));
    let http: std::net::SocketAddr = addr(ports[2]).parse().unwrap();
    let (status, _, body) = http_request(http, "GET", "/", &[], b"");
    let (_, _, cfg) = http_request(http, "GET", "/web/config.json", &[], b"");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("Tern chat"));
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["dev"], true);
    assert_eq!(cfg["ws"]["port"], ports[1]);
}

/// With `[accounts] enabled` the page signs in with a password: Register
/// creates the account and connects, a wrong password is refused on the
/// page, the right one connects. web/tests/accounts.mjs in Chromium.
#[test]
fn accounts_sign_in_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip("accounts browser test") else {
        return;
    };
    let g = Gateway::start_with(Driver::Epoll, |cfg| cfg.accounts.enabled = true);
    let (_, _, body) = http_request(g.http, "GET", "/web/config.json", &[], b"");
    let cfg: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (cfg["accounts"].as_bool(), cfg["dev"].as_bool()),
        (Some(true), Some(false))
    );
    run_page_script("accounts.mjs", &g, None, &chromium, 120);
}
