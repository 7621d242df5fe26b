//! TLS on the client listeners (`listen.tls`, `listen.wss`) over real
//! loopback sockets, against an in-process gateway (both drivers where the
//! kernel has io_uring) or a spawned `tern` for the SIGHUP reload; the
//! certificates are made in the test with rcgen, and the clients are rustls
//! (and tungstenite over rustls for wss) or hand-written bytes. Each test
//! says what it proves.

// Tests poll with short sleeps and read with timeouts.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use prost::Message as _;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName},
};
use support::{Gateway, SECRET, WAIT, delivered_text, drivers, text_content};
use tern_gateway::config::{Config, Driver, TlsVersion};
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

/// A self-signed certificate for `localhost` and its key, as PEM, and the
/// certificate's DER (what a client sees).
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn new_cert() -> Cert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Cert {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes `cert`'s PEM files into `dir`; returns (cert file, key file).
fn write_cert(dir: &Path, cert: &Cert) -> (std::path::PathBuf, std::path::PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c, k)
}

/// A client config trusting `roots` (TLS 1.2 and 1.3, or only `versions`).
fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

const ALL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The protocol over a TLS stream: frames with their varint prefix.
struct TlsClient {
    s: Tls,
    buf: Vec<u8>,
    next_request: u64,
    pushes: Vec<pb::Frame>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Self {
        Self {
            s: tls_connect(addr, config).unwrap(),
            buf: Vec::new(),
            next_request: 1,
            pushes: Vec::new(),
        }
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> CertificateDer<'static> {
        self.s.conn.peer_certificates().unwrap()[0].clone()
    }

    fn login(addr: SocketAddr, config: &Arc<ClientConfig>, user: &str) -> Self {
        let mut c = Self::connect(addr, config);
        let reply = c.request(Body::Auth(auth(user)));
        assert!(matches!(reply.body, Some(Body::Welcome(_))), "{reply:?}");
        c
    }

    fn send_frame(&mut self, frame: &pb::Frame) {
        let mut out = Vec::new();
        codec::encode_frame(frame, &mut out);
        self.s.write_all(&out).unwrap();
        self.s.flush().unwrap();
    }

    fn request(&mut self, body: Body) -> pb::Frame {
        let id = self.next_request;
        self.next_request += 1;
        self.send_frame(&pb::Frame {
            request_id: id,
            body: Some(body),
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let f = self.read_frame_until(deadline).expect("an answer");
            if f.request_id == id {
                return f;
            }
            self.pushes.push(f);
        }
    }

    fn ping(&mut self) -> bool {
        matches!(
            self.request(Body::Ping(pb::Ping { nonce: 7 })).body,
            Some(Body::Pong(_))
        )
    }

    fn wait_push(&mut self, mut pred: impl FnMut(&pb::Frame) -> bool) -> pb::Frame {
        if let Some(i) = self.pushes.iter().position(&mut pred) {
            return self.pushes.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let f = self.read_frame_until(deadline).expect("a push");
            if pred(&f) {
                return f;
            }
            self.pushes.push(f);
        }
    }

    fn read_frame_until(&mut self, deadline: Instant) -> Option<pb::Frame> {
        loop {
            if let codec::Decoded::Frame { frame, consumed } =
                codec::decode_frame(&self.buf, 1 << 20).unwrap()
            {
                self.buf.drain(..consumed);
                return Some(frame);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.s
                .sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn auth(user: &str) -> pb::Auth {
    pb::Auth {
        token: Gateway::token(user),
        device_id: "d".into(),
        protocol_version: 1,
        ..Default::default()
    }
}

fn send_to(to: &str, id: &str, text: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: id.into(),
        to: Some(pb::send::To::UserId(to.into())),
        content: Some(text_content(text)),
        ..Default::default()
    })
}

/// A gateway with TLS and wss listeners on ephemeral ports, serving `cert`.
fn tls_gateway(
    driver: Driver,
    cert_dir: &Path,
    cert: &Cert,
    tweak: impl FnOnce(&mut Config),
) -> (Gateway, SocketAddr, SocketAddr) {
    let (c, k) = write_cert(cert_dir, cert);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let gw = Gateway::start_with(driver, |cfg| {
        cfg.listen.tls = Some(any);
        cfg.listen.wss = Some(any);
        cfg.tls.cert_file = Some(c);
        cfg.tls.key_file = Some(k);
        tweak(cfg);
    });
    let server = gw.server.as_ref().unwrap();
    let (tls, wss) = (server.tls_addr.unwrap(), server.wss_addr.unwrap());
    (gw, tls, wss)
}

/// True once the peer has closed `s` (EOF or reset) before `wait` ends;
/// whatever arrived first is returned with it.
fn closed_within(s: &mut TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (false, got);
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got);
            }
            Err(_) => return (true, got),
        }
    }
}

/// Chat end to end over TLS: alice on the TLS TCP listener and bob on the
/// wss listener (tungstenite over rustls: the WebSocket upgrade after the
/// handshake) authenticate, alice sends, bob gets the Deliver and acks it,
/// bob answers and alice gets it; alice's SendAcks carry seqs 1 and 2.
/// Sixteen more TLS logins of different users then each answer a ping:
/// with two shards, some are handed to their owner shard after auth, so
/// the TLS state moved between shards keeps working.
#[test]
fn chat_over_tls_and_wss() {
    use tungstenite::Message;
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        let dir = tempfile::tempdir().unwrap();
        let cert = new_cert();
        let (gw, tls_addr, wss_addr) = tls_gateway(d, dir.path(), &cert, |_| {});
        let config = client_config(&[&cert.der], ALL_VERSIONS);

        let mut alice = TlsClient::login(tls_addr, &config, "alice");
        let stream = tls_connect(wss_addr, &config).unwrap();
        let (mut bob, _) = tungstenite::client::client("ws://localhost/", stream).unwrap();
        let frame = |id: u64, body: Body| {
            Message::Binary(
                pb::Frame {
                    request_id: id,
                    body: Some(body),
                }
                .encode_to_vec()
                .into(),
            )
        };
        let read = |ws: &mut tungstenite::WebSocket<Tls>| loop {
            if let Message::Binary(b) = ws.read().unwrap() {
                return pb::Frame::decode(&b[..]).unwrap();
            }
        };
        bob.send(frame(1, Body::Auth(auth("bob")))).unwrap();
        let w = read(&mut bob);
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");

        let ack = alice.request(send_to("bob", "m1", "over tls"));
        let Some(Body::SendAck(ack)) = ack.body else {
            panic!("{ack:?}")
        };
        assert_eq!(ack.seq, 1);
        let f = loop {
            let f = read(&mut bob);
            if matches!(f.body, Some(Body::Deliver(_))) {
                break f;
            }
        };
        let (conv, seq, text) = delivered_text(&f).unwrap();
        assert_eq!((seq, text.as_str()), (1, "over tls"));
        bob.send(frame(
            0,
            Body::DeliverAck(pb::DeliverAck {
                cursors: vec![pb::Cursor {
                    conversation_id: conv,
                    seq: 1,
                }],
            }),
        ))
        .unwrap();
        bob.send(frame(2, send_to("alice", "b1", "over wss")))
            .unwrap();
        let f = alice.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(delivered_text(&f).unwrap().2, "over wss");
        let ack = alice.request(send_to("bob", "m2", "again"));
        let Some(Body::SendAck(ack)) = ack.body else {
            panic!("{ack:?}")
        };
        assert_eq!(ack.seq, 3, "bob's answer was seq 2");

        let mut others: Vec<TlsClient> = (0..16)
            .map(|i| TlsClient::login(tls_addr, &config, &format!("user{i}")))
            .collect();
        for c in &mut others {
            assert!(c.ping());
        }
        drop(gw);
    }
}

/// A ClientHello offering only TLS 1.1 (legacy_version 0x0302, no
/// supported_versions extension: what a TLS 1.1 client sends; with a
/// signature_algorithms extension, without which rustls answers
/// handshake_failure before it looks at the version) gets a fatal
/// protocol_version alert and the connection closes; a neighbour TLS
/// connection keeps chatting. With `min_version = "1.3"` a client limited
/// to TLS 1.2 fails its handshake too, while a TLS 1.3 client connects.
#[test]
fn old_tls_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = new_cert();
    let (gw, tls_addr, _) = tls_gateway(Driver::Epoll, dir.path(), &cert, |_| {});
    let config = client_config(&[&cert.der], ALL_VERSIONS);
    let mut neighbour = TlsClient::login(tls_addr, &config, "neighbour");

    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.write_all(&client_hello_tls11()).unwrap();
    let (closed, got) = closed_within(&mut s, WAIT);
    assert!(closed, "a TLS 1.1 hello was not closed");
    assert!(got.len() >= 7, "no alert: {got:?}");
    assert_eq!(got[0], 0x15, "not an alert record: {got:?}");
    assert_eq!((got[5], got[6]), (2, 70), "not a fatal protocol_version");
    assert!(neighbour.ping(), "the neighbour noticed");
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let (gw, tls_addr, _) = tls_gateway(Driver::Epoll, dir.path(), &cert, |cfg| {
        cfg.tls.min_version = TlsVersion::V1_3
    });
    let tls12 = client_config(&[&cert.der], &[&rustls::version::TLS12]);
    assert!(tls_connect(tls_addr, &tls12).is_err(), "TLS 1.2 was served");
    let mut c = TlsClient::login(tls_addr, &config, "modern");
    assert_eq!(
        c.s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(c.ping());
    drop(gw);
}

/// A TLS 1.1 ClientHello record: legacy_version 0x0302, two suites, one
/// extension (signature_algorithms).
fn client_hello_tls11() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x13]); // suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    // extensions: signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256)
    body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04]);
    body.extend_from_slice(&[0x04, 0x03, 0x08, 0x04]);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Plaintext to the TLS port (a whole plain Auth frame, as a client that
/// forgot TLS sends) is closed without a Welcome, and a logged-in TLS
/// neighbour and a plain TCP neighbour do not notice.
#[test]
fn plaintext_to_the_tls_port_is_closed() {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        let dir = tempfile::tempdir().unwrap();
        let cert = new_cert();
        let (gw, tls_addr, wss_addr) = tls_gateway(d, dir.path(), &cert, |_| {});
        let config = client_config(&[&cert.der], ALL_VERSIONS);
        let mut tls_neighbour = TlsClient::login(tls_addr, &config, "tlsn");
        let (mut plain_neighbour, _) = support::Client::login(gw.tcp, "plainn", "d");

        for addr in [tls_addr, wss_addr] {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut out = Vec::new();
            codec::encode_frame(
                &pb::Frame {
                    request_id: 1,
                    body: Some(Body::Auth(auth("mallory"))),
                },
                &mut out,
            );
            s.write_all(&out).unwrap();
            let (closed, got) = closed_within(&mut s, WAIT);
            assert!(closed, "plaintext to {addr} was not closed");
            // At most a TLS alert record came back, never a frame.
            assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
        }
        assert!(tls_neighbour.ping());
        assert!(matches!(
            plain_neighbour
                .request(Body::Ping(pb::Ping { nonce: 1 }))
                .body,
            Some(Body::Pong(_))
        ));
        drop(gw);
    }
}

/// A handshake that does not finish is closed at `tls.handshake_timeout_ms`
/// (300 ms here, with the auth deadline at 60 s, so nothing else closes
/// it within the test's wait): a client that connects and sends nothing,
/// and one that sends half a ClientHello. A client whose handshake is done
/// is not closed by that deadline: it authenticates after both others were
/// closed.
#[test]
fn slow_handshakes_are_closed_at_the_deadline() {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        let dir = tempfile::tempdir().unwrap();
        let cert = new_cert();
        let (gw, tls_addr, _) = tls_gateway(d, dir.path(), &cert, |cfg| {
            cfg.tls.handshake_timeout_ms = 300;
            cfg.session.auth_timeout_ms = 60_000;
        });
        let config = client_config(&[&cert.der], ALL_VERSIONS);
        let mut done = TlsClient::connect(tls_addr, &config);

        let mut silent = TcpStream::connect(tls_addr).unwrap();
        let mut half = TcpStream::connect(tls_addr).unwrap();
        let hello = client_hello_tls11();
        half.write_all(&hello[..hello.len() / 2]).unwrap();
        for (name, s) in [("silent", &mut silent), ("half hello", &mut half)] {
            let (closed, got) = closed_within(s, Duration::from_secs(30));
            assert!(closed, "{name}: not closed by the handshake deadline");
            assert!(got.is_empty(), "{name}: {got:?}");
        }
        let reply = done.request(Body::Auth(auth("late")));
        assert!(matches!(reply.body, Some(Body::Welcome(_))), "{reply:?}");
        assert!(done.ping());
        drop(gw);
    }
}

/// A `tern` process with its stderr collected.
struct Tern {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: String,
}

impl Tern {
    fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Waits (bounded) until `needle` has appeared `count` times in stderr.
    fn wait_for(&mut self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stderr.matches(needle).count() < count {
            let left = deadline.checked_duration_since(Instant::now());
            let Some(left) = left else {
                panic!("never saw {needle:?} x{count}:\n{}", self.stderr);
            };
            if let Ok(line) = self.lines.recv_timeout(left) {
                self.stderr.push_str(&line);
                self.stderr.push('\n');
            }
        }
    }

    fn hup(&self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill with the pid of our own child and a valid signal.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` loopback ports for a `tern` to listen on ([`tern_testkit::free_port`]).
fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| tern_testkit::free_port())
}

/// SIGHUP re-reads the certificate files of a running `tern` (set through
/// `TERN_TLS_CERT_FILE` / `TERN_TLS_KEY_FILE`): a connection made after it
/// is served the new certificate, while a connection made before it still
/// chats with the new one; files that no longer load are logged and the
/// certificate in use stays.
#[test]
fn sighup_serves_a_new_certificate_and_keeps_old_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_cert(), new_cert());
    let (cert_file, key_file) = write_cert(dir.path(), &a);
    let [tcp, ws, tls, http] = free_ports::<4>();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let (tcp_s, ws_s, tls_s, http_s) = (addr(tcp), addr(ws), addr(tls), addr(http));
    let mut tern = Tern::spawn(
        dir.path(),
        &[
            "serve",
            "--listen",
            &tcp_s,
            "--ws-listen",
            &ws_s,
            "--tls-listen",
            &tls_s,
            "--http",
            &http_s,
            "--shards",
            "2",
            "--data-dir",
            "data",
            "--jwt-secret",
            SECRET,
        ],
        &[
            ("TERN_TLS_CERT_FILE", cert_file.to_str().unwrap()),
            ("TERN_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ],
    );
    tern.wait_for("tern serving", 1);
    let tls_addr: SocketAddr = tls_s.parse().unwrap();
    let config = client_config(&[&a.der, &b.der], ALL_VERSIONS);

    let mut old = TlsClient::login(tls_addr, &config, "old");
    assert_eq!(old.peer_cert(), a.der);

    write_cert(dir.path(), &b);
    tern.hup();
    tern.wait_for("SIGHUP: reload done", 1);
    let mut new = TlsClient::login(tls_addr, &config, "new");
    assert_eq!(new.peer_cert(), b.der, "the new certificate is served");
    let ack = old.request(send_to("new", "o1", "from before the reload"));
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = new.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
    assert_eq!(delivered_text(&f).unwrap().2, "from before the reload");
    assert!(old.ping());

    std::fs::write(&cert_file, "not a certificate").unwrap();
    tern.hup();
    tern.wait_for("SIGHUP: reload done", 2);
    assert!(
        tern.stderr.contains("reload failed"),
        "a bad file was not logged:\n{}",
        tern.stderr
    );
    let after = TlsClient::login(tls_addr, &config, "after");
    assert_eq!(after.peer_cert(), b.der, "the last good certificate stays");
    assert!(
        !tern.stderr.contains("PRIVATE KEY"),
        "key material was logged:\n{}",
        tern.stderr
    );
}
