//! Offline push over real HTTP/2 and HTTP/1.1: an in-process gateway
//! (embedded store) notifies through stand-ins of APNs (an h2c server) and
//! of FCM with its OAuth token endpoint (an HTTP/1.1 server), both played
//! by the test on loopback ports with hyper; they record every request and
//! answer as each test scripts (200, 410, 404, 429, or never). Proves that
//! an offline member gets one notification per collapsed burst with the
//! right badge and headers (the provider token verified with the test
//! keys' public halves), that online and muted members get none, that dead
//! tokens are removed, that 429 is retried and delivers once, that a
//! hanging provider times out while chat goes on, and that a full queue
//! drops and counts.
#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Client, Gateway, WAIT};
use tern_gateway::config::{Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const TOPIC: &str = "com.example.tern";

/// One request a stand-in got.
#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How a stand-in answers one request.
#[derive(Debug, Clone)]
enum Reply {
    /// This status, these headers, this JSON body.
    Status(u16, Vec<(&'static str, String)>, Value),
    /// Never (the request hangs until the client gives up).
    Hang,
}

fn ok() -> Reply {
    Reply::Status(200, Vec::new(), json!({}))
}

/// A provider stand-in on a loopback port: HTTP/2 without TLS (APNs) or
/// HTTP/1.1 (FCM, with its token endpoint at `/token`). Sends are answered
/// from `script` in order, then with `default`.
struct StandIn {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Recorded>>>,
    tokens: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    fn start(h2: bool, default: Reply) -> Self {
        let port = tern_testkit::free_port();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (g, t, s) = (got.clone(), tokens.clone(), script.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        a = listener.accept() => a.unwrap().0,
                        _ = &mut stop_rx => break,
                    };
                    let (g, t, s, default) = (g.clone(), t.clone(), s.clone(), default.clone());
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (g, t, s, default) = (g.clone(), t.clone(), s.clone(), default.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let rec = Recorded { path, headers, body };
                            let reply = if rec.path == "/token" {
                                t.lock().push(rec);
                                Reply::Status(
                                    200,
                                    Vec::new(),
                                    json!({"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer"}),
                                )
                            } else {
                                g.lock().push(rec);
                                s.lock().pop_front().unwrap_or(default)
                            };
                            match reply {
                                Reply::Hang => std::future::pending::<()>().await,
                                Reply::Status(..) => {}
                            }
                            let Reply::Status(status, headers, body) = reply else {
                                unreachable!("a hang never gets here")
                            };
                            let mut resp = Response::builder().status(status);
                            for (k, v) in headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    tokio::spawn(async move {
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, svc)
                            .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    });
                }
            });
        });
        Self {
            addr,
            got,
            tokens,
            script,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn then(&self, reply: Reply) {
        self.script.lock().push_back(reply);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.got.lock().clone()
    }

    /// Waits (bounded) until it got `n` requests.
    fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "got {} requests, not {n}: {got:#?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// Both providers pointed at the stand-ins; `tweak` changes the rest.
fn push_config(
    c: &mut Config,
    apns: &StandIn,
    fcm: &StandIn,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) {
    let sa = dir.join("service-account.json");
    std::fs::write(
        &sa,
        json!({
            "type": "service_account",
            "project_id": "demo",
            "private_key_id": "kid-1",
            "private_key": std::fs::read_to_string(key("rsa.pem")).unwrap(),
            "client_email": "tern@demo.iam.gserviceaccount.com",
            "token_uri": format!("{}/token", fcm.url()),
        })
        .to_string(),
    )
    .unwrap();
    let p = &mut c.push;
    p.enabled = true;
    p.collapse_window_ms = 1_500;
    p.timeout_ms = 2_000;
    p.attempts_max = 3;
    p.retry_initial_ms = 20;
    p.retry_max_ms = 2_000;
    p.apns_url = apns.url();
    p.apns_key_file = Some(key("ec.pem"));
    p.apns_key_id = KEY_ID.into();
    p.apns_team_id = TEAM.into();
    p.apns_topic = TOPIC.into();
    p.fcm_url = fcm.url();
    p.fcm_service_account_file = Some(sa);
    tweak(c);
}

/// A gateway, its two stand-ins, and the temp dir of the service account.
struct Setup {
    gw: Gateway,
    apns: StandIn,
    fcm: StandIn,
    _dir: tempfile::TempDir,
}

fn setup(apns_default: Reply, fcm_default: Reply, tweak: impl FnOnce(&mut Config)) -> Setup {
    let apns = StandIn::start(true, apns_default);
    let fcm = StandIn::start(false, fcm_default);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        push_config(c, &apns, &fcm, dir.path(), tweak);
    });
    Setup {
        gw,
        apns,
        fcm,
        _dir: dir,
    }
}

fn register(c: &mut Client, platform: pb::PushPlatform, token: &str) {
    let r = c.request(Body::PushRegister(pb::PushTokenRegister {
        platform: platform as i32,
        token: token.into(),
        topic: String::new(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
}

/// `user` logs in on `device`, registers `token`, and leaves: offline.
fn offline_with_token(
    gw: &Gateway,
    user: &str,
    device: &str,
    platform: pb::PushPlatform,
    token: &str,
) {
    let (mut c, _) = Client::login(gw.tcp, user, device);
    register(&mut c, platform, token);
}

/// The value of one metric line (0 when absent).
fn metric(gw: &Gateway, line_start: &str) -> u64 {
    let text = gw.http_get("/metrics").1;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `metric(line_start) >= at_least`.
fn wait_metric_at_least(gw: &Gateway, line_start: &str, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(gw, line_start);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line_start} stayed at {v}, not {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `user` is offline as the backend sees it (their last
/// connection's close went through their worker).
fn wait_offline(gw: &Gateway, asker: &mut Client, user: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = asker.request(Body::PresenceQuery(pb::PresenceQuery {
            user_ids: vec![user.into()],
        }));
        if let Some(Body::PresenceResult(p)) = &r.body {
            if p.presences
                .iter()
                .all(|p| p.state == pb::PresenceState::Offline as i32)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{user} never went offline: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        let _ = gw;
    }
}

#[test]
fn an_offline_member_gets_one_notification_per_burst_with_the_badge() {
    // Proves the whole path: bob, offline, holds an APNs and an FCM token;
    // three messages from alice within the collapse window become one
    // notification per token, with badge 3 (his unread), count 3, no
    // message text (previews are off), the APNs headers and a provider
    // token signed with the team's key, and FCM's collapse key after an
    // OAuth grant signed with the service account's key.
    let s = setup(ok(), ok(), |_| {});
    offline_with_token(
        &s.gw,
        "bob",
        "phone",
        pb::PushPlatform::Apns,
        &"ab".repeat(32),
    );
    offline_with_token(&s.gw, "bob", "pixel", pb::PushPlatform::Fcm, "fcm-bob-1");
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    for (i, text) in ["one", "two", "secret three"].iter().enumerate() {
        let ack = alice.send_text("bob", &format!("m{i}"), text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    }
    let apns = s.apns.wait_for(1);
    let fcm = s.fcm.wait_for(1);
    wait_metric_at_least(&s.gw, "tern_push_sent_total{platform=\"fcm\"}", 1);
    assert_eq!(metric(&s.gw, "tern_push_collapsed_total"), 2);

    let a = &apns[0];
    assert_eq!(a.path, format!("/3/device/{}", "ab".repeat(32)));
    assert_eq!(a.headers["apns-topic"], TOPIC);
    assert_eq!(a.headers["apns-push-type"], "alert");
    assert_eq!(a.headers["apns-collapse-id"].len(), 32);
    assert!(a.headers["apns-expiration"].parse::<u64>().unwrap() > 1_700_000_000);
    let jwt = a.headers["authorization"].strip_prefix("bearer ").unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let pub_key =
        jsonwebtoken::DecodingKey::from_ec_pem(&std::fs::read(key("ec.pub")).unwrap()).unwrap();
    let t = jsonwebtoken::decode::<Value>(jwt, &pub_key, &v).unwrap();
    assert_eq!(t.header.kid.as_deref(), Some(KEY_ID));
    assert_eq!(t.claims["iss"], TEAM);
    let body = a.json();
    assert_eq!(body["aps"]["badge"], 3);
    assert_eq!(body["count"], 3);
    assert_eq!(body["conversation_id"], "d:alice:bob");
    assert_eq!(body["aps"]["alert"]["body"], "3 new messages");
    assert!(!String::from_utf8_lossy(&a.body).contains("secret"));

    let f = &fcm[0];
    assert_eq!(f.path, "/v1/projects/demo/messages:send");
    assert_eq!(f.headers["authorization"], "Bearer at-1");
    let m = &f.json()["message"];
    assert_eq!(m["token"], "fcm-bob-1");
    assert_eq!(
        m["android"]["collapse_key"],
        a.headers["apns-collapse-id"].as_str()
    );
    assert_eq!(m["android"]["notification"]["notification_count"], 3);
    assert_eq!(m["data"]["count"], "3");
    let grants = s.fcm.tokens.lock().clone();
    assert_eq!(grants.len(), 1);
    let form = String::from_utf8(grants[0].body.clone()).unwrap();
    let assertion = form.split("assertion=").nth(1).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[format!("{}/token", s.fcm.url())]);
    let rsa =
        jsonwebtoken::DecodingKey::from_rsa_pem(&std::fs::read(key("rsa.pub")).unwrap()).unwrap();
    let g = jsonwebtoken::decode::<Value>(assertion, &rsa, &v).unwrap();
    assert_eq!(
        g.claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(g.header.kid.as_deref(), Some("kid-1"));

    // One more message after the window: a new notification, badge 4; the
    // access token is reused.
    alice.send_text("bob", "m4", "four");
    let apns = s.apns.wait_for(2);
    assert_eq!(apns[1].json()["aps"]["badge"], 4);
    assert_eq!(apns[1].json()["count"], 1);
    s.fcm.wait_for(2);
    assert_eq!(s.fcm.tokens.lock().len(), 1);
}

#[test]
fn online_and_muted_members_get_no_notification() {
    // Proves that a member with a device online gets no notification, nor
    // one who muted the conversation or turned on do not disturb, while an
    // offline, unmuted one does; the stand-in sees only that one.
    let s = setup(ok(), ok(), |_| {});
    let (mut bob, _) = Client::login(s.gw.tcp, "bob", "phone");
    register(&mut bob, pb::PushPlatform::Apns, "bob-token");
    offline_with_token(
        &s.gw,
        "carol",
        "phone",
        pb::PushPlatform::Apns,
        "carol-token",
    );
    offline_with_token(&s.gw, "dave", "phone", pb::PushPlatform::Apns, "dave-token");
    offline_with_token(&s.gw, "erin", "phone", pb::PushPlatform::Apns, "erin-token");
    {
        let (mut carol, _) = Client::login(s.gw.tcp, "carol", "tablet");
        let r = carol.request(Body::PushMute(pb::PushMute {
            conversation_id: "d:alice:carol".into(),
            until_ms: u64::MAX,
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
        let (mut dave, _) = Client::login(s.gw.tcp, "dave", "tablet");
        let r = dave.request(Body::PushMute(pb::PushMute {
            conversation_id: String::new(),
            until_ms: u64::MAX,
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    }
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    for u in ["carol", "dave", "erin"] {
        wait_offline(&s.gw, &mut alice, u);
    }
    for u in ["bob", "carol", "dave", "erin"] {
        alice.send_text(u, &format!("to-{u}"), "hi");
    }
    wait_metric_at_least(&s.gw, "tern_push_sent_total{platform=\"apns\"}", 1);
    wait_metric_at_least(&s.gw, "tern_push_skipped_total{reason=\"online\"}", 1);
    wait_metric_at_least(&s.gw, "tern_push_skipped_total{reason=\"muted\"}", 2);
    let got = s.apns.requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].path, "/3/device/erin-token");
}

#[test]
fn dead_tokens_are_removed() {
    // Proves APNs 410 Unregistered and FCM 404 UNREGISTERED each remove
    // the token (the user's list no longer shows it), are not retried,
    // and are counted.
    let s = setup(
        Reply::Status(410, Vec::new(), json!({"reason": "Unregistered"})),
        Reply::Status(
            404,
            Vec::new(),
            json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}),
        ),
        |_| {},
    );
    offline_with_token(&s.gw, "bob", "phone", pb::PushPlatform::Apns, "dead-apns");
    offline_with_token(&s.gw, "bob", "pixel", pb::PushPlatform::Fcm, "dead-fcm");
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    alice.send_text("bob", "m1", "hi");
    wait_metric_at_least(&s.gw, "tern_push_tokens_removed_total", 2);
    assert_eq!(s.apns.requests().len(), 1);
    assert_eq!(s.fcm.requests().len(), 1);
    assert_eq!(metric(&s.gw, "tern_push_retried_total"), 0);
    let (mut bob, _) = Client::login(s.gw.tcp, "bob", "phone");
    let r = bob.request(Body::PushList(pb::PushListRequest {}));
    let Some(Body::PushListResult(l)) = r.body else {
        panic!("{r:?}")
    };
    assert!(l.tokens.is_empty(), "{l:?}");
}

#[test]
fn rate_limited_then_accepted_is_delivered_once() {
    // Proves a 429 with Retry-After is retried after it, and the retry's
    // 200 ends it: two requests, one notification sent, one retry.
    let s = setup(ok(), ok(), |_| {});
    s.apns.then(Reply::Status(
        429,
        vec![("retry-after", "1".into())],
        json!({"reason": "TooManyRequests"}),
    ));
    offline_with_token(&s.gw, "bob", "phone", pb::PushPlatform::Apns, "bob-token");
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    alice.send_text("bob", "m1", "hi");
    wait_metric_at_least(&s.gw, "tern_push_sent_total{platform=\"apns\"}", 1);
    assert_eq!(s.apns.requests().len(), 2);
    assert_eq!(metric(&s.gw, "tern_push_retried_total"), 1);
    assert_eq!(
        metric(&s.gw, "tern_push_failed_total{reason=\"rate_limited\"}"),
        0
    );
}

#[test]
fn a_hanging_provider_times_out_and_chat_goes_on() {
    // Proves a provider that never answers costs each attempt its
    // timeout, is retried within the bound, then counted as failed by
    // timeout, while chat between others is served meanwhile.
    let s = setup(Reply::Hang, ok(), |c| {
        c.push.timeout_ms = 300;
        c.push.attempts_max = 2;
    });
    offline_with_token(&s.gw, "bob", "phone", pb::PushPlatform::Apns, "bob-token");
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    let (mut carol, _) = Client::login(s.gw.tcp, "carol", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    alice.send_text("bob", "m1", "hi");
    s.apns.wait_for(1);
    // The provider hangs now: chat goes on.
    for i in 0..5 {
        let ack = alice.send_text("carol", &format!("c{i}"), "still here");
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        let f = carol.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(support::delivered_text(&f).unwrap().2, "still here");
    }
    wait_metric_at_least(&s.gw, "tern_push_failed_total{reason=\"timeout\"}", 1);
    assert_eq!(s.apns.requests().len(), 2);
    assert_eq!(metric(&s.gw, "tern_push_retried_total"), 1);
}

#[test]
fn a_full_queue_drops_and_counts() {
    // Proves the queue's bound: with one request in flight at most and a
    // provider that hangs, the push thread waits and its queue (one job)
    // fills; further messages are still stored and acked, and their jobs
    // are dropped and counted.
    let s = setup(Reply::Hang, ok(), |c| {
        c.push.queue_max = 1;
        c.push.in_flight_max = 1;
        c.push.collapse_window_ms = 1;
        c.push.timeout_ms = 60_000;
        c.push.attempts_max = 1;
    });
    for u in ["bob", "carol"] {
        offline_with_token(
            &s.gw,
            u,
            "phone",
            pb::PushPlatform::Apns,
            &format!("{u}-token"),
        );
    }
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    wait_offline(&s.gw, &mut alice, "carol");
    alice.send_text("bob", "m0", "hi");
    // bob's notification holds the only slot, hanging.
    s.apns.wait_for(1);
    for i in 1..=20 {
        let ack = alice.send_text("carol", &format!("m{i}"), "hi");
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    }
    wait_metric_at_least(&s.gw, "tern_push_dropped_total{reason=\"queue_full\"}", 1);
    assert_eq!(s.apns.requests().len(), 1);
}

#[test]
fn on_the_redis_store_offline_members_are_notified_and_online_ones_not() {
    // Proves the same path on the Redis store (a real redis-server):
    // tokens and presence are read from Redis, an offline member gets the
    // notification with the badge, an online one none.
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    let s = setup(ok(), ok(), |c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
        c.push.collapse_window_ms = 200;
    });
    offline_with_token(&s.gw, "bob", "phone", pb::PushPlatform::Fcm, "fcm-bob");
    let (mut carol, _) = Client::login(s.gw.tcp, "carol", "phone");
    register(&mut carol, pb::PushPlatform::Fcm, "fcm-carol");
    let (mut alice, _) = Client::login(s.gw.tcp, "alice", "laptop");
    wait_offline(&s.gw, &mut alice, "bob");
    alice.send_text("bob", "m1", "hi");
    alice.send_text("carol", "m2", "hi");
    let got = s.fcm.wait_for(1);
    wait_metric_at_least(&s.gw, "tern_push_skipped_total{reason=\"online\"}", 1);
    assert_eq!(s.fcm.requests().len(), 1);
    let m = &got[0].json()["message"];
    assert_eq!(m["token"], "fcm-bob");
    assert_eq!(m["data"]["badge"], "1");
}

#[test]
fn a_key_that_cannot_be_read_stops_the_start() {
    // Proves the provider credentials are read at start: a missing APNs
    // key, or a service account that is not one, is an error naming the
    // setting, and nothing starts.
    let apns = StandIn::start(true, ok());
    let fcm = StandIn::start(false, ok());
    let dir = tempfile::tempdir().unwrap();
    let start = |tweak: &dyn Fn(&mut Config)| {
        let mut cfg = Config::default();
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.listen.tcp = Some(any);
        cfg.listen.ws = None;
        cfg.listen.http = None;
        cfg.shards.count = 1;
        cfg.shards.driver = Driver::Epoll;
        cfg.auth.jwt_secret = support::SECRET.into();
        let data = tempfile::tempdir().unwrap();
        cfg.backend.data_dir = data.path().to_path_buf();
        push_config(&mut cfg, &apns, &fcm, dir.path(), |_| {});
        tweak(&mut cfg);
        let service = Arc::new(tern_gateway::service::BackendService::from_config(&cfg).unwrap());
        tern_gateway::server::Server::start(&cfg, service).map(drop)
    };
    let err = start(&|c| c.push.apns_key_file = Some(dir.path().join("missing.p8"))).unwrap_err();
    assert!(format!("{err:#}").contains("push.apns_key_file"), "{err:#}");
    let bad = dir.path().join("not-an-account.json");
    std::fs::write(&bad, "{}").unwrap();
    let err = start(&|c| c.push.fcm_service_account_file = Some(bad.clone())).unwrap_err();
    assert!(
        format!("{err:#}").contains("push.fcm_service_account_file"),
        "{err:#}"
    );
}
