//! Test support: a gateway started in-process on loopback ports with a
//! fresh embedded store, and a blocking client that speaks the real
//! protocol over a real socket.
#![allow(dead_code)]
// Tests poll with short sleeps; the ban is for shard and worker threads.
#![allow(clippy::disallowed_methods)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use tern_gateway::{
    auth,
    config::{Config, Driver},
    server::Server,
    service::BackendService,
};
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

pub const SECRET: &str = "test-secret";

/// A gateway on ephemeral loopback ports, stopped on drop.
pub struct Gateway {
    pub server: Option<Server>,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(driver: Driver) -> Self {
        Self::start_with(driver, |_| {})
    }

    pub fn start_with(driver: Driver, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.listen.tcp = Some(any);
        cfg.listen.ws = Some(any);
        cfg.listen.http = Some(any);
        cfg.shards.count = 2;
        cfg.shards.driver = driver;
        cfg.auth.jwt_secret = SECRET.into();
        cfg.backend.data_dir = dir.path().to_path_buf();
        cfg.node_id = "test-node".into();
        // Tests flood on purpose (fairness, back-pressure, slow consumers):
        // the rate limits are off unless a test turns one on
        // (gateway/tests/limits.rs).
        cfg.limits = tern_gateway::config::LimitsSettings::off();
        tweak(&mut cfg);
        // As `tern serve` opens it: the chat settings of `cfg` apply.
        let service = Arc::new(BackendService::from_config(&cfg).unwrap());
        let server = Server::start(&cfg, service).unwrap();
        Self {
            tcp: server.tcp_addr.unwrap(),
            ws: server.ws_addr.unwrap(),
            http: server.http_addr.unwrap(),
            server: Some(server),
            _dir: dir,
        }
    }

    /// The gateway's `backend.data_dir`.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn token(user: &str) -> String {
        auth::mint_hs256(SECRET, user, 3600, None).unwrap()
    }

    /// Waits (bounded) until /metrics shows `needle`: the shard counts a
    /// close when it sees the socket end, which can trail the client's view.
    pub fn wait_metric(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.http_get("/metrics").1;
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed {needle}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Gateway {
    /// One HTTP/1.0 request with `headers` and `body`: (status, headers
    /// lower-cased as `name: value` lines, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        http_request(self.http, method, path, headers, body)
    }

    /// A server API call with `key` (none: no Authorization header) and a
    /// JSON body (`Value::Null`: no body): (status, JSON answer or Null).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        json: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        api_request(self.http, method, path, key, json)
    }
}

/// One HTTP/1.0 request to `addr`: (status, head lines lower-cased, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (401, 413) before reading the body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, raw[split..].to_vec())
}

/// A server API call to `addr` (see [`Gateway::api`]).
pub fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    json: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = if json.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(json).unwrap()
    };
    let (status, _, answer) = http_request(addr, method, path, &headers, &body);
    let value = serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
    (status, value)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// Both drivers where the kernel has io_uring; epoll only otherwise.
pub fn drivers() -> Vec<Driver> {
    let mut d = vec![Driver::Epoll];
    if io_uring_available() {
        d.push(Driver::Uring);
    }
    d
}

fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

/// A blocking protocol client over TCP.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    next_request: u64,
    /// Pushes seen while waiting for a response.
    pub pushes: Vec<pb::Frame>,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Self::from_stream(stream)
    }

    /// A client over a stream connected elsewhere (e.g. from another
    /// loopback source address).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            next_request: 1,
            pushes: Vec::new(),
        }
    }

    /// Connects and authenticates as `user` on `device`; returns the Welcome.
    pub fn login(addr: SocketAddr, user: &str, device: &str) -> (Self, pb::Welcome) {
        let mut c = Self::connect(addr);
        let reply = c.request(Body::Auth(pb::Auth {
            token: Gateway::token(user),
            device_id: device.into(),
            protocol_version: 1,
            platform: pb::Platform::Cli as i32,
            ..Default::default()
        }));
        match reply.body {
            Some(Body::Welcome(w)) => (c, w),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub fn send_frame(&mut self, frame: &pb::Frame) {
        let mut out = Vec::new();
        codec::encode_frame(frame, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a request and returns the response with its request id,
    /// keeping pushes that arrive meanwhile in `pushes`.
    pub fn request(&mut self, body: Body) -> pb::Frame {
        let id = self.next_request;
        self.next_request += 1;
        self.send_frame(&pb::Frame {
            request_id: id,
            body: Some(body),
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let f = self
                .read_frame_until(deadline)
                .expect("response before deadline");
            if f.request_id == id {
                return f;
            }
            self.pushes.push(f);
        }
    }

    /// The next frame (a push already seen first), or None at EOF/deadline.
    pub fn next_frame(&mut self) -> Option<pb::Frame> {
        if !self.pushes.is_empty() {
            return Some(self.pushes.remove(0));
        }
        self.read_frame_until(Instant::now() + WAIT)
    }

    /// Waits for a push matching `pred`.
    pub fn wait_push(&mut self, mut pred: impl FnMut(&pb::Frame) -> bool) -> pb::Frame {
        if let Some(i) = self.pushes.iter().position(&mut pred) {
            return self.pushes.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let f = self
                .read_frame_until(deadline)
                .expect("push before deadline");
            if pred(&f) {
                return f;
            }
            self.pushes.push(f);
        }
    }

    pub fn read_frame_until(&mut self, deadline: Instant) -> Option<pb::Frame> {
        loop {
            match codec::decode_frame(&self.buf, 1 << 20).unwrap() {
                codec::Decoded::Frame { frame, consumed } => {
                    self.buf.drain(..consumed);
                    return Some(frame);
                }
                codec::Decoded::NeedMore(_) => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// True when the server closed the connection (EOF) within the deadline.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.read_frame_until(deadline) {
                Some(f) => self.pushes.push(f),
                None => return Instant::now() < deadline,
            }
        }
    }

    pub fn send_text(&mut self, to_user: &str, client_msg_id: &str, text: &str) -> pb::Frame {
        self.request(Body::Send(pb::Send {
            client_msg_id: client_msg_id.into(),
            to: Some(pb::send::To::UserId(to_user.into())),
            content: Some(text_content(text)),
            ..Default::default()
        }))
    }

    /// Says "typing" in a conversation (a notice: no answer).
    pub fn typing(&mut self, conversation_id: &str) {
        self.send_frame(&pb::Frame {
            request_id: 0,
            body: Some(Body::Typing(pb::TypingRequest {
                conversation_id: conversation_id.into(),
                typing: true,
            })),
        });
    }

    /// Waits for the next typing push and returns its event.
    pub fn wait_typing(&mut self) -> pb::TypingEvent {
        match self
            .wait_push(|f| matches!(f.body, Some(Body::TypingEvent(_))))
            .body
        {
            Some(Body::TypingEvent(t)) => t,
            _ => unreachable!("wait_push returned the frame it matched"),
        }
    }

    pub fn send_group_text(&mut self, group: &str, client_msg_id: &str, text: &str) -> pb::Frame {
        self.request(Body::Send(pb::Send {
            client_msg_id: client_msg_id.into(),
            to: Some(pb::send::To::GroupId(group.into())),
            content: Some(text_content(text)),
            ..Default::default()
        }))
    }
}

pub fn text_content(text: &str) -> pb::Content {
    pb::Content {
        kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
    }
}

/// The text of the first entry of a Deliver push.
pub fn delivered_text(f: &pb::Frame) -> Option<(String, u64, String)> {
    let Some(Body::Deliver(d)) = &f.body else {
        return None;
    };
    let e = d.entries.first()?;
    let Some(pb::entry::Body::Message(m)) = &e.body else {
        return None;
    };
    let Some(pb::content::Kind::Text(t)) = m.content.as_ref()?.kind.as_ref() else {
        return None;
    };
    Some((e.conversation_id.clone(), e.seq, t.text.clone()))
}

// ---- moto: a real S3-compatible server for the media store (media_s3.rs) ----

/// A `moto_server` (moto's S3, from PyPI) on a free loopback port, started
/// for one test and stopped by its PID on drop. Where moto comes from: see
/// [`moto_server_binary`].
pub struct Moto {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits (bounded) until it answers. Panics, never
    /// skips, when it cannot be started.
    pub fn start() -> Self {
        let bin = moto_server_binary();
        let port = free_port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut moto = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && moto.s3("GET", "/").0 == 200 {
                return moto;
            }
            if let Some(status) = moto
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited at start: {status}", bin.display());
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its URL, for `media.s3_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One unsigned S3 request (moto does not check signatures):
    /// (status, body).
    pub fn s3(&self, method: &str, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        if s.write_all(head.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self.s3("PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }

    /// The keys in `bucket` with their sizes, listed through moto's S3 API
    /// (ListObjectsV2; a test bucket holds far fewer than a page of 1000).
    pub fn list(&self, bucket: &str) -> Vec<(String, u64)> {
        let (status, xml) = self.s3("GET", &format!("/{bucket}?list-type=2"));
        assert_eq!(status, 200, "listing {bucket}: {xml}");
        let tag = |s: &str, name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = s.find(&open)? + open.len();
            let end = s[start..].find(&format!("</{name}>"))? + start;
            Some(s[start..end].to_owned())
        };
        xml.split("<Contents>")
            .skip(1)
            .map(|c| {
                let key = tag(c, "Key").expect("a Key in Contents");
                let size = tag(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                (key, size)
            })
            .collect()
    }

    /// Stops moto (SIGKILL to its PID, then reaps it): S3 is down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ports from below the ephemeral range: see [`tern_testkit::free_port`].
pub use tern_testkit::free_port;

/// The venv `scripts/test.sh` installs moto into (Debian's python3 is
/// externally managed: pip installs only into a venv):
/// `$MOTO_VENV`, else `$XDG_CACHE_HOME/tern-test-venv`, else
/// `~/.cache/tern-test-venv`.
pub fn test_venv() -> std::path::PathBuf {
    if let Some(v) = std::env::var_os("MOTO_VENV") {
        return v.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache")
        });
    cache.join("tern-test-venv")
}

/// Where `moto_server` is: `$MOTO_SERVER_BIN` (what `scripts/test.sh`
/// found or installed), the test venv, or `PATH`. Missing: under `CI=true`
/// the test fails (CI must run it, and `scripts/test.sh` installs it);
/// elsewhere it is installed into the test venv once (`pip install
/// 'moto[server]'`, a minute or so) and the test goes on.
pub fn moto_server_binary() -> std::path::PathBuf {
    static INSTALL: parking_lot::Mutex<()> = parking_lot::const_mutex(());
    let _one_at_a_time = INSTALL.lock();
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        return p.into();
    }
    let venv = test_venv();
    let in_venv = venv.join("bin").join("moto_server");
    if in_venv.exists() {
        return in_venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "moto_server (PyPI moto[server]) is missing: `bash scripts/test.sh` installs it into {} \
         (the S3 media tests never skip in CI)",
        venv.display()
    );
    eprintln!(
        "installing moto[server] into {} for the S3 media tests (once)",
        venv.display()
    );
    let run = |cmd: &mut std::process::Command| {
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            status.success(),
            "{cmd:?} failed ({status}); on Debian: apt-get install python3-venv, or run scripts/test.sh"
        );
    };
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv));
    run(
        std::process::Command::new(venv.join("bin").join("pip")).args([
            "install",
            "-q",
            "moto[server]>=5,<6",
        ]),
    );
    in_venv
}

/// An identity for a test's own https server: a self-signed certificate
/// for `127.0.0.1` and `localhost`, as a rustls server configuration, and
/// its PEM written to `dir` (the `ca_file` a client trusts it by).
pub fn https_identity(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let pem = dir.join("server-ca.pem");
    std::fs::write(&pem, cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (Arc::new(config), pem)
}
