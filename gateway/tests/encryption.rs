//! Encryption at rest through a real gateway: a text sent over TCP and a
//! file and an image uploaded over HTTP, then every byte the stores keep is
//! searched for them — every file under the embedded store's data dir
//! (fjall's journal and tables, the media objects), and on the Redis store
//! the AOF and every key's value — with `[encryption] keys_file` set, and,
//! so that the search is shown able to fail, without it. Clients still read
//! what they sent: sync, push and download give back the original bytes.
#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::path::Path;

use base64::Engine as _;
use support::{Client, Gateway, delivered_text};
use tern_gateway::config::{ApiKeyConfig, Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

const MEDIA_KEY: &str = "media-key-0123456789";

/// A marker no other byte sequence of the test produces by chance.
fn marker(tag: &str) -> String {
    format!("tern-plaintext-marker-{tag}-{:016x}", rand::random::<u64>())
}

/// Writes a key file with one key in `dir` and returns its path.
fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keys");
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    std::fs::write(&path, format!("# test key\nk1 = {key}\n")).unwrap();
    path
}

/// Whether any file under `dir` (recursively) contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a store's data dir holds a few hundred files at most here.
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            seen += 1;
            assert!(seen < 100_000, "unexpectedly many files under {dir:?}");
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && contains(&bytes, needle)
            {
                return true;
            }
        }
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends `text` from alice to bob (online) and checks the push and a sync
/// both carry it.
fn chat(gw: &Gateway, text: &str) {
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let ack = alice.send_text("bob", "m1", text);
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
    assert_eq!(delivered_text(&f).unwrap().2, text);
    let r = bob.request(Body::Sync(pb::SyncRequest {
        cursors: vec![],
        limit: 0,
    }));
    let Some(Body::SyncResult(s)) = r.body else {
        panic!("{r:?}")
    };
    let Some(pb::entry::Body::Message(m)) = &s.entries[0].body else {
        panic!("{s:?}")
    };
    let Some(pb::content::Kind::Text(t)) = m.content.as_ref().unwrap().kind.as_ref() else {
        panic!("{m:?}")
    };
    assert_eq!(t.text, text);
}

/// Uploads `body` as `kind` with the media key, downloads the original and
/// checks it is `body`; the JSON answer.
fn upload_and_fetch(gw: &Gateway, kind: &str, body: &[u8]) -> serde_json::Value {
    let auth = format!("Bearer {MEDIA_KEY}");
    let (s, _, answer) = gw.http(
        "POST",
        &format!("/api/v1/media?kind={kind}"),
        &[("Authorization", &auth)],
        body,
    );
    let m: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(s, 201, "{m}");
    let id = m["media_id"].as_str().unwrap();
    let (s, _, got) = gw.http(
        "GET",
        &format!("/api/v1/media/{id}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(s, 200);
    assert!(got == body, "download differs from the upload");
    m
}

/// A file of `n` bytes: `marker` every 1000 bytes, filler between.
fn file_with(marker: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend_from_slice(marker.as_bytes());
        out.extend(std::iter::repeat_n(b'.', 1000 - marker.len()));
    }
    out.truncate(n);
    out
}

fn with_media_key(c: &mut Config) {
    c.api.keys = vec![ApiKeyConfig {
        name: "cms".into(),
        key: MEDIA_KEY.into(),
        scopes: vec!["media".into()],
        tenant: String::new(),
    }];
}

/// One run on the embedded store: whether the data dir still shows the
/// text and the file's marker, after the gateway stopped.
fn embedded_run(encrypted: bool) -> (bool, bool) {
    let keys = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_with(Driver::Epoll, |c| {
        with_media_key(c);
        if encrypted {
            c.encryption.keys_file = Some(key_file(keys.path()));
        }
    });
    let text = marker("text");
    chat(&gw, &text);
    let file_marker = marker("file");
    // Several 64 KiB chunks and a short last one; then an exact multiple.
    upload_and_fetch(&gw, "file", &file_with(&file_marker, 200_000));
    upload_and_fetch(&gw, "file", &file_with(&file_marker, 2 * 65_536));
    gw.server.take().unwrap().shutdown();
    (
        dir_contains(gw.data_dir(), text.as_bytes()),
        dir_contains(gw.data_dir(), file_marker.as_bytes()),
    )
}

#[test]
fn embedded_data_dir_holds_no_plaintext_with_encryption_on() {
    // Proves, through a real gateway on the embedded store: with a key file
    // neither a sent text nor an uploaded file's content appears in any file
    // of the data dir (store and media), while both still read back; with
    // encryption off the same search finds both (so it can fail).
    assert_eq!(
        embedded_run(false),
        (true, true),
        "the search must see clear data"
    );
    assert_eq!(
        embedded_run(true),
        (false, false),
        "plaintext found on disk"
    );
}

#[test]
fn sealed_image_variants_download_as_images() {
    // Proves the server-made variants (thumbnail, compressed) are sealed
    // and open back into JPEGs of the announced size.
    let keys = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        with_media_key(c);
        c.encryption.keys_file = Some(key_file(keys.path()));
    });
    let img = image::RgbImage::from_fn(400, 300, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let m = upload_and_fetch(&gw, "image", &png.into_inner());
    let tid = m["thumbnail"]["media_id"].as_str().unwrap();
    let auth = format!("Bearer {MEDIA_KEY}");
    let (s, _, thumb) = gw.http(
        "GET",
        &format!("/api/v1/media/{tid}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(s, 200);
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    // On disk the thumbnail is not a JPEG (sealed, header 0x00 0x02).
    let on_disk = std::fs::read(
        gw.data_dir()
            .join("media/objects")
            .join(&tid[..2])
            .join(tid),
    )
    .unwrap();
    assert_eq!(&on_disk[..2], &[0x00, 0x02]);
}

#[test]
fn a_bad_key_file_stops_the_start_with_a_line_naming_it() {
    // Proves a key of the wrong length is refused at start with one line
    // that names the file and the line, and shows no key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
    std::fs::write(&path, format!("k1 = {short}\n")).unwrap();
    let mut cfg = Config::default();
    cfg.backend.data_dir = dir.path().join("data");
    cfg.encryption.keys_file = Some(path.clone());
    let err = tern_gateway::service::BackendService::from_config(&cfg).unwrap_err();
    let line = format!("{err:#}");
    assert!(
        line.contains(&path.display().to_string()) && line.contains("line 1"),
        "{line}"
    );
    assert!(!line.contains(&short) && !line.contains('\n'), "{line}");
}

/// Every value of every key in `server`, as raw bytes.
fn redis_values(server: &redis_harness::RedisServer) -> Vec<Vec<u8>> {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut out = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query(&mut conn).unwrap();
        let vals: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&k).query(&mut conn).unwrap()],
            "hash" => redis::cmd("HGETALL").arg(&k).query(&mut conn).unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&k).query(&mut conn).unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
            // Streams (node delivery channels) carry pushes in flight, not
            // the log: read them whole.
            _ => {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap_or(redis::Value::Nil);
                vec![format!("{v:?}").into_bytes()]
            }
        };
        out.extend(vals);
    }
    out
}

/// One run on the Redis store: whether the AOF and whether any key's value
/// shows the text.
fn redis_run(encrypted: bool) -> (bool, bool) {
    let server = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let keys = tempfile::tempdir().unwrap();
    let url = server.url();
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url];
        if encrypted {
            c.encryption.keys_file = Some(key_file(keys.path()));
        }
    });
    let text = marker("redis");
    chat(&gw, &text);
    drop(gw);
    let in_values = redis_values(&server)
        .iter()
        .any(|v| contains(v, text.as_bytes()));
    (dir_contains(server.dir(), text.as_bytes()), in_values)
}

#[test]
fn redis_holds_no_plaintext_with_encryption_on() {
    // Proves, through a real gateway on a real redis-server: with a key
    // file a sent text is in neither the AOF nor any key's value, while it
    // reads back; without it both searches find it (so they can fail).
    assert_eq!(
        redis_run(false),
        (true, true),
        "the search must see clear data"
    );
    assert_eq!(redis_run(true), (false, false), "plaintext found in redis");
}

/// A `tern serve` process on the embedded store with `[encryption]`, its
/// stderr in a file.
struct Serve {
    child: std::process::Child,
    log: std::path::PathBuf,
    tcp: std::net::SocketAddr,
}

impl Serve {
    fn start(dir: &Path, keys: &Path) -> Self {
        let config = dir.join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[encryption]\nkeys_file = {:?}\n",
                keys.display().to_string()
            ),
        )
        .unwrap();
        let ports: Vec<u16> = (0..3).map(|_| tern_testkit::free_port()).collect();
        let log = dir.join("stderr.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
            .args(["--ws-listen", &format!("127.0.0.1:{}", ports[1])])
            .args(["--http", &format!("127.0.0.1:{}", ports[2])])
            .args([
                "--jwt-secret",
                support::SECRET,
                "--shards",
                "1",
                "--driver",
                "epoll",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("TERN_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let s = Self { child, log, tcp };
        s.wait_log(|l| std::net::TcpStream::connect(tcp).is_ok() || l.contains("Error"));
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until `done` holds of the log so far.
    fn wait_log(&self, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + support::WAIT;
        while !done(&self.log()) {
            assert!(
                std::time::Instant::now() < deadline,
                "tern never got there; its log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the PID of a child this test started and has
        // not reaped (the Child is still held).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGHUP, then waits for the `n`-th "reload done".
    fn reload(&self, n: usize) {
        self.signal(libc::SIGHUP);
        self.wait_log(|l| l.matches("SIGHUP: reload done").count() >= n);
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + support::WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "tern did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key_line(id: &str, byte: u8) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    format!("{id} = {key}\n")
}

#[test]
fn sighup_rotates_the_current_key_and_refuses_to_drop_one() {
    // Proves on a real `tern serve`: after the key file gains k2 as current
    // and SIGHUP, new messages are sealed with k2 while k1's still read; a
    // reload that drops k2 is refused (logged) and k2 stays current. Which
    // key sealed what is read back from the data dir afterwards with rings
    // that hold one key each.
    use tern_backend::seal::{KeyRing, Keys, SealError};
    use tern_backend::store::{Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, key_line("k1", 1)).unwrap();
    let tern = Serve::start(dir.path(), &keys);
    let (mut alice, _) = Client::login(tern.tcp, "alice", "phone");
    assert!(matches!(
        alice.send_text("bob", "m1", "one").body,
        Some(Body::SendAck(_))
    ));
    std::fs::write(
        &keys,
        format!("{}{}current = k2\n", key_line("k1", 1), key_line("k2", 2)),
    )
    .unwrap();
    tern.reload(1);
    assert!(matches!(
        alice.send_text("bob", "m2", "two").body,
        Some(Body::SendAck(_))
    ));
    std::fs::write(&keys, key_line("k3", 3)).unwrap();
    tern.reload(2);
    assert!(
        tern.log().contains("is missing") && tern.log().contains("reload failed"),
        "{}",
        tern.log()
    );
    assert!(matches!(
        alice.send_text("bob", "m3", "three").body,
        Some(Body::SendAck(_))
    ));
    drop(alice);
    tern.stop();

    let ring = |id: &str, byte: u8| KeyRing::new(vec![(id.to_owned(), [byte; 32])], id).unwrap();
    let open = |r: KeyRing| {
        tern_backend::EmbeddedStore::open(dir.path().join("data"))
            .unwrap()
            .with_keys(Keys::new(Some(r)))
    };
    let text = |s: &dyn Store, seq: u64| -> Result<(), StoreError> {
        s.entries("d:alice:bob", seq, seq, 1)
            .map(|e| assert_eq!(e.len(), 1))
    };
    let missing = |r: Result<(), StoreError>| match r {
        Err(StoreError::Sealed(SealError::UnknownKey { id })) => id,
        other => panic!("{other:?}"),
    };
    let s = open(ring("k2", 2));
    assert_eq!(missing(text(&s, 1)), "k1");
    text(&s, 2).unwrap();
    text(&s, 3).unwrap();
    drop(s);
    let s = open(ring("k1", 1));
    text(&s, 1).unwrap();
    assert_eq!(missing(text(&s, 2)), "k2");
}
