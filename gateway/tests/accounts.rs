//! Accounts over real sockets on an in-process gateway (embedded store):
//! tokens of an existing issuer verified by its JWKS (served by a tiny HTTP
//! server in the test, rotated by `kid`), and local accounts (register,
//! login, the issued token logging in over TCP, bad input, rate limits).
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Client, Gateway, WAIT};
use tern_gateway::{auth::Claims, config::Driver};
use tern_protocol::pb::{self, ErrorCode, frame::Body};

const ED1: &str = include_str!("keys/ed.pem");
const ED2: &str = include_str!("keys/ed2.pem");
const RSA: &str = include_str!("keys/rsa.pem");
const EC: &str = include_str!("keys/ec.pem");
const RSA_PUB: &str = include_str!("keys/rsa.pub");
const JWKS_V1: &str = include_str!("keys/jwks-v1.json");
const JWKS_V2: &str = include_str!("keys/jwks-v2.json");

/// Authenticates over TCP with `token`: the Welcome, or the error code.
fn auth(addr: SocketAddr, token: &str) -> Result<pb::Welcome, ErrorCode> {
    let mut c = Client::connect(addr);
    let reply = c.request(Body::Auth(pb::Auth {
        token: token.into(),
        device_id: "d1".into(),
        protocol_version: 1,
        platform: pb::Platform::Cli as i32,
        ..Default::default()
    }));
    match reply.body {
        Some(Body::Welcome(w)) => Ok(w),
        Some(Body::Error(e)) => Err(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)),
        other => panic!("expected welcome or error, got {other:?}"),
    }
}

fn claims(user: &str) -> Claims {
    Claims {
        sub: user.into(),
        exp: jsonwebtoken::get_current_timestamp() + 600,
        nbf: None,
        aud: None,
        iss: None,
        iat: None,
        tid: None,
    }
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, user: &str) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    jsonwebtoken::encode(&h, &claims(user), key).unwrap()
}

fn ed(pem: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()
}

/// A JWKS served over HTTP/1.0 on loopback: the body can be swapped; every
/// fetch is counted. Stopped (and joined) on drop.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Answers one JWKS request on `stream` (plain or TLS) with `body`.
fn answer_jwks(stream: impl Read + Write, body: &Mutex<String>, fetches: &AtomicU32) {
    let mut reader = BufReader::new(stream);
    // Read the request head (bounded by the timeout and 100 lines).
    let mut lines = 0;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        lines += 1;
    }
    if lines == 0 {
        return; // nothing arrived (e.g. the TLS handshake failed)
    }
    let text = body.lock().clone();
    fetches.fetch_add(1, Ordering::Relaxed);
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.flush();
}

impl JwksServer {
    fn start(body: &str) -> Self {
        Self::start_on(body, None)
    }

    /// Serves over TLS with `tls` when given.
    fn start_on(body: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.to_owned()));
        let fetches = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, f, s) = (body.clone(), fetches.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                match &tls {
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        answer_jwks(rustls::StreamOwned::new(conn, stream), &b, &f);
                    }
                    None => answer_jwks(stream, &b, &f),
                }
            }
        });
        Self {
            addr,
            body,
            fetches,
            stop,
            thread: Some(thread),
        }
    }

    fn serve(&self, body: &str) {
        *self.body.lock() = body.to_owned();
    }

    fn fetches(&self) -> u32 {
        self.fetches.load(Ordering::Relaxed)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Retries `token` (a fresh connection each time) until it is accepted,
/// for at most [`WAIT`]: an unknown `kid` is refused while it asks the
/// refresh thread for a new read.
fn accepted_eventually(addr: SocketAddr, token: &str) -> pb::Welcome {
    let deadline = Instant::now() + WAIT;
    loop {
        match auth(addr, token) {
            Ok(w) => return w,
            Err(code) => {
                assert_eq!(code, ErrorCode::AuthFailed);
                assert!(
                    Instant::now() < deadline,
                    "never accepted after the JWKS changed"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn jwks_keys_are_chosen_by_kid_and_follow_rotation() {
    // Proves: with auth.jwks_url, EdDSA, RS256 and ES256 tokens verify with the
    // key their kid names; an unknown kid, alg none, and HS256 tokens made
    // with a public key or a JWKS `oct` key are refused with AUTH_FAILED;
    // after the issuer rotates (the test's HTTP server swaps the JWKS), a
    // token of the new kid is accepted once the unknown kid triggered a
    // re-read, and the removed kid is refused; kid-less tokens still use
    // the configured HS256 secret. All over real TCP logins.
    let jwks = JwksServer::start(JWKS_V1);
    let url = format!("http://{}/jwks.json", jwks.addr);
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh_secs = 3600;
        c.auth.jwks_refresh_min_secs = 0;
    });
    assert_eq!(jwks.fetches(), 1, "read once at start");

    let ed1 = signed(Algorithm::EdDSA, Some("ed-1"), &ed(ED1), "alice");
    let rsa = EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap();
    let rs1 = signed(Algorithm::RS256, Some("rsa-1"), &rsa, "bob");
    assert_eq!(auth(gw.tcp, &ed1).unwrap().user_id, "alice");
    assert_eq!(auth(gw.tcp, &rs1).unwrap().user_id, "bob");
    let ec = EncodingKey::from_ec_pem(EC.as_bytes()).unwrap();
    let es1 = signed(Algorithm::ES256, Some("ec-1"), &ec, "frank");
    assert_eq!(auth(gw.tcp, &es1).unwrap().user_id, "frank");

    // The key of another kid does not verify (kid ed-1, signed by ed2).
    let wrong_key = signed(Algorithm::EdDSA, Some("ed-1"), &ed(ED2), "alice");
    assert_eq!(auth(gw.tcp, &wrong_key), Err(ErrorCode::AuthFailed));
    // Unknown kid.
    let unknown = signed(Algorithm::EdDSA, Some("nope"), &ed(ED1), "alice");
    assert_eq!(auth(gw.tcp, &unknown), Err(ErrorCode::AuthFailed));
    // alg none, naming a known kid.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "ed-1"})),
        b64(serde_json::to_value(claims("alice")).unwrap())
    );
    assert_eq!(auth(gw.tcp, &none), Err(ErrorCode::AuthFailed));
    // HS256 keyed with the RSA public key, naming the RSA kid.
    let confused = signed(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(RSA_PUB.as_bytes()),
        "mallory",
    );
    assert_eq!(auth(gw.tcp, &confused), Err(ErrorCode::AuthFailed));
    // RS256 signature presented as EdDSA's kid: pinned per key.
    let cross = signed(Algorithm::RS256, Some("ed-1"), &rsa, "mallory");
    assert_eq!(auth(gw.tcp, &cross), Err(ErrorCode::AuthFailed));
    // Kid-less: the configured HS256 secret still works.
    assert_eq!(
        auth(gw.tcp, &Gateway::token("carol")).unwrap().user_id,
        "carol"
    );

    // Rotation: ed-1 and rsa-1 go, ed-2 (and an oct key) come.
    jwks.serve(JWKS_V2);
    let ed2 = signed(Algorithm::EdDSA, Some("ed-2"), &ed(ED2), "dave");
    assert_eq!(accepted_eventually(gw.tcp, &ed2).user_id, "dave");
    assert!(jwks.fetches() >= 2);
    assert_eq!(auth(gw.tcp, &ed1), Err(ErrorCode::AuthFailed));
    assert_eq!(auth(gw.tcp, &rs1), Err(ErrorCode::AuthFailed));
    assert_eq!(auth(gw.tcp, &es1), Err(ErrorCode::AuthFailed));
    // A symmetric JWK is never a verification key.
    let oct = signed(
        Algorithm::HS256,
        Some("hs-1"),
        &EncodingKey::from_secret(b"a shared secret is not a public key"),
        "mallory",
    );
    assert_eq!(auth(gw.tcp, &oct), Err(ErrorCode::AuthFailed));
}

#[test]
fn jwks_over_https_is_verified_against_jwks_ca_file() {
    // Proves: an https:// auth.jwks_url is fetched over TLS and its server
    // verified against auth.jwks_ca_file (a private CA): a token of one of
    // its kids logs in. Without the file (the system's roots) the same
    // server is not trusted: nothing is fetched and the token is refused
    // with AUTH_FAILED, the gateway still up. Real TCP logins, a rustls
    // server played by the test.
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = support::https_identity(dir.path());
    let jwks = JwksServer::start_on(JWKS_V1, Some(tls));
    let url = format!("https://127.0.0.1:{}/jwks.json", jwks.addr.port());
    let ed1 = signed(Algorithm::EdDSA, Some("ed-1"), &ed(ED1), "alice");

    let untrusting = Gateway::start_with(Driver::Epoll, |c| {
        c.auth.jwks_url = Some(url.clone());
        c.auth.jwks_refresh_secs = 3600;
    });
    assert_eq!(auth(untrusting.tcp, &ed1), Err(ErrorCode::AuthFailed));
    assert_eq!(
        jwks.fetches(),
        0,
        "a server the roots do not trust is never asked"
    );
    drop(untrusting);

    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.auth.jwks_url = Some(url);
        c.auth.jwks_ca_file = Some(ca);
        c.auth.jwks_refresh_secs = 3600;
    });
    assert_eq!(jwks.fetches(), 1, "read once at start, over TLS");
    assert_eq!(auth(gw.tcp, &ed1).unwrap().user_id, "alice");
}

#[test]
fn jwks_file_with_issuer_check() {
    // Proves: auth.jwks_file serves keys by kid like a URL, and with
    // auth.issuer set a token of another (or no) issuer is refused while
    // the right one logs in; an unreadable JWKS file fails the start.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, JWKS_V1).unwrap();
    let p = path.clone();
    let gw = Gateway::start_with(Driver::Epoll, move |c| {
        c.auth.jwks_file = Some(p);
        c.auth.issuer = Some("https://id.example".into());
    });
    let key = ed(ED1);
    let with_iss = |iss: Option<&str>| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ed-1".into());
        let mut c = claims("erin");
        c.iss = iss.map(Into::into);
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    };
    assert_eq!(
        auth(gw.tcp, &with_iss(Some("https://id.example")))
            .unwrap()
            .user_id,
        "erin"
    );
    assert_eq!(
        auth(gw.tcp, &with_iss(Some("https://evil.example"))),
        Err(ErrorCode::AuthFailed)
    );
    assert_eq!(auth(gw.tcp, &with_iss(None)), Err(ErrorCode::AuthFailed));

    let mut cfg = tern_gateway::config::Config::default();
    cfg.auth.jwks_file = Some(dir.path().join("missing.json"));
    assert!(tern_gateway::auth::Verifier::new(&cfg.auth).is_err());
}

// ---------------------------------------------------------------------------
// Local accounts
// ---------------------------------------------------------------------------

fn accounts_gateway(tweak: impl FnOnce(&mut tern_gateway::config::AccountsSettings)) -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.accounts.enabled = true;
        // Cheaper than OWASP's 19 MiB so debug-build tests stay quick; the
        // code path is the same.
        c.accounts.argon2_memory_kib = 1024;
        c.accounts.argon2_iterations = 1;
        tweak(&mut c.accounts);
    })
}

fn call(gw: &Gateway, route: &str, user: &str, password: &str) -> (u16, Value) {
    gw.api(
        "POST",
        &format!("/api/v1/accounts/{route}"),
        None,
        &json!({"user_id": user, "password": password}),
    )
}

#[test]
fn local_account_registers_logs_in_and_its_token_connects() {
    // Proves: register answers 201, login answers a token that
    // authenticates a real TCP client as that user; a wrong password and
    // an unknown user both answer 401 AUTH_FAILED with the same body; a
    // second register of the id is 409 ALREADY_EXISTS.
    let gw = accounts_gateway(|_| {});
    let (s, body) = call(&gw, "register", "alice", "correct horse battery");
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["user_id"], "alice");

    let (s, body) = call(&gw, "login", "alice", "correct horse battery");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["expires_in"], 86400);
    let token = body["token"].as_str().unwrap();
    let welcome = auth(gw.tcp, token).unwrap();
    assert_eq!(welcome.user_id, "alice");
    // And the session works: a send is acknowledged.
    let mut c = Client::connect(gw.tcp);
    let w = c.request(Body::Auth(pb::Auth {
        token: token.into(),
        device_id: "phone".into(),
        protocol_version: 1,
        platform: pb::Platform::Cli as i32,
        ..Default::default()
    }));
    assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
    let ack = c.send_text("bob", "m1", "hi from a local account");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");

    let (s_wrong, wrong) = call(&gw, "login", "alice", "wrong horse battery");
    let (s_unknown, unknown) = call(&gw, "login", "nobody", "correct horse battery");
    assert_eq!((s_wrong, s_unknown), (401, 401));
    assert_eq!(wrong["code"], "AUTH_FAILED");
    assert_eq!(wrong, unknown, "the two refusals must not differ");

    let (s, body) = call(&gw, "register", "alice", "another long password");
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["code"], "ALREADY_EXISTS");
    // The first password still holds.
    assert_eq!(call(&gw, "login", "alice", "correct horse battery").0, 200);
}

#[test]
fn local_accounts_refuse_bad_input_with_typed_errors() {
    // Proves: an empty, invalid or oversized user id, a short or oversized
    // password are 400 INVALID_ARGUMENT problem details, and a body of the
    // wrong JSON shape 422 INVALID_ARGUMENT, on both routes; with accounts off
    // the routes answer 404.
    let gw = accounts_gateway(|a| {
        a.attempts_per_ip_per_minute = 1000;
    });
    let long_id = "u".repeat(65);
    let long_pw = "p".repeat(257);
    for route in ["register", "login"] {
        for (user, pw) in [
            ("", "correct horse battery"),
            (long_id.as_str(), "correct horse battery"),
            ("a:b", "correct horse battery"),
            ("alice", long_pw.as_str()),
        ] {
            let (s, body) = call(&gw, route, user, pw);
            assert_eq!(s, 400, "{route} {user:?}: {body}");
            assert_eq!(body["code"], "INVALID_ARGUMENT", "{body}");
        }
        let (s, body) = gw.api(
            "POST",
            &format!("/api/v1/accounts/{route}"),
            None,
            &json!({"user": "x"}),
        );
        // Like every route of the API: a body of the wrong shape is axum's
        // 422, still a typed INVALID_ARGUMENT problem.
        assert_eq!(s, 422, "{body}");
        assert_eq!(body["code"], "INVALID_ARGUMENT");
    }
    let (s, body) = call(&gw, "register", "alice", "short");
    assert_eq!(s, 400, "{body}");

    let off = Gateway::start(Driver::Epoll);
    let (s, body) = call(&off, "register", "alice", "correct horse battery");
    assert_eq!(s, 404, "{body}");
    assert_eq!(call(&off, "login", "alice", "correct horse battery").0, 404);
}

#[test]
fn local_accounts_rate_limit_per_user_and_per_ip() {
    // Proves: login attempts past attempts_per_user_per_minute answer 429
    // RATE_LIMITED with a Retry-After (even with the right password), and
    // attempts from one IP past attempts_per_ip_per_minute likewise, for
    // every user id.
    let gw = accounts_gateway(|a| {
        a.attempts_per_user_per_minute = 3;
        a.attempts_per_ip_per_minute = 8;
    });
    assert_eq!(
        call(&gw, "register", "alice", "correct horse battery").0,
        201
    );
    for _ in 0..3 {
        assert_eq!(call(&gw, "login", "alice", "guess guess guess").0, 401);
    }
    let (status, head, body) = gw.http(
        "POST",
        "/api/v1/accounts/login",
        &[("Content-Type", "application/json")],
        json!({"user_id": "alice", "password": "correct horse battery"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("retry-after: "), "{head}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");

    // 5 attempts used from this IP; 3 more are allowed, then 429 for anyone.
    for i in 0..3 {
        let (s, _) = call(&gw, "login", &format!("user{i}"), "guess guess guess");
        assert_eq!(s, 401);
    }
    let (s, body) = call(&gw, "register", "zed", "correct horse battery");
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED");
}
