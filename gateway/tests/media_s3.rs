//! Media on an S3-compatible store (`[media] store = "s3"`) against a real
//! S3 server: moto in server mode on a loopback port (PyPI `moto[server]`,
//! started and stopped by PID per test; `scripts/test.sh` installs it, and
//! in CI these tests fail rather than skip without it). Uploads go through
//! `/api/v1/media` of an in-process gateway, objects are checked by listing
//! the bucket through moto's own S3 API, downloads follow the conversation
//! rules, and a store that is down or has no bucket is a typed 503/502
//! while chat and health go on.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use support::{Client, Gateway, Moto, delivered_text};
use tern_gateway::config::{ApiKeyConfig, Config, Driver, MediaStoreKind};
use tern_protocol::pb::{self, frame::Body};

const MEDIA_KEY: &str = "media-key-0123456789";
const BUCKET: &str = "tern-media";

/// The tests of this file run one at a time: the memory test measures the
/// peak of the whole process.
static SERIAL: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// A gateway whose media store is `bucket` on `moto`, with short S3
/// timeouts (a stopped store answers within a second or two).
fn gateway(moto: &Moto, bucket: &str) -> Gateway {
    gateway_at(moto.endpoint(), bucket)
}

/// A gateway whose media store is `bucket` at `endpoint`.
fn gateway_at(endpoint: String, bucket: &str) -> Gateway {
    let bucket = bucket.to_owned();
    Gateway::start_with(Driver::Epoll, move |c: &mut Config| {
        c.api.keys = vec![ApiKeyConfig {
            name: "cms".into(),
            key: MEDIA_KEY.into(),
            scopes: vec!["media".into()],
            tenant: String::new(),
        }];
        let m = &mut c.media;
        m.store = MediaStoreKind::S3;
        m.s3_endpoint = endpoint;
        m.s3_bucket = bucket;
        m.s3_region = "us-east-1".into();
        m.s3_key_prefix = "chat/media".into();
        m.s3_access_key_id = "test-key-id".into();
        m.s3_secret_access_key = "test-secret".into();
        m.s3_path_style = true;
        m.s3_connect_timeout_ms = 1000;
        m.s3_request_timeout_ms = 5000;
        m.s3_retries_max = 1;
    })
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 77])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn upload(gw: &Gateway, bearer: &str, kind: &str, body: &[u8]) -> (u16, String, Value) {
    let auth = format!("Bearer {bearer}");
    let (s, head, answer) = gw.http(
        "POST",
        &format!("/api/v1/media?kind={kind}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        body,
    );
    (
        s,
        head,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

fn fetch(gw: &Gateway, bearer: &str, path: &str) -> (u16, String, Vec<u8>) {
    let auth = format!("Bearer {bearer}");
    gw.http("GET", path, &[("Authorization", &auth)], b"")
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Alice sends `media` to bob as `content`; the ack's (conversation, seq).
fn send_media(alice: &mut Client, id: &str, content: pb::content::Kind) -> (String, u64) {
    let ack = alice.request(Body::Send(pb::Send {
        client_msg_id: format!("m-{id}"),
        to: Some(pb::send::To::UserId("bob".into())),
        content: Some(pb::Content {
            kind: Some(content),
        }),
        ..Default::default()
    }));
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("no ack: {ack:?}")
    };
    (ack.conversation_id, ack.seq)
}

fn media_ref(m: &Value) -> pb::MediaRef {
    pb::MediaRef {
        media_id: m["media_id"].as_str().unwrap().into(),
        mime: m["mime"].as_str().unwrap().into(),
        size_bytes: m["size_bytes"].as_u64().unwrap(),
        ..Default::default()
    }
}

/// Proves an image and a file uploaded through /api/v1/media land in the
/// bucket under the key prefix (the image with its thumbnail, compressed
/// variant and metadata; a 6 MiB file as a multipart upload, whole), that
/// nothing is left in the local media dir, and that bob — sent both over
/// TCP — downloads them byte for byte (and the thumbnail, a JPEG of the
/// announced size) while carol, no member of the conversation, gets 403.
#[test]
fn uploads_land_in_the_bucket_and_members_fetch_them() {
    let _one_at_a_time = SERIAL.lock();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let gw = gateway(&moto, BUCKET);
    let (alice_t, bob_t, carol_t) = (
        Gateway::token("alice"),
        Gateway::token("bob"),
        Gateway::token("carol"),
    );

    let picture = png(640, 480);
    let (s, _, img) = upload(&gw, &alice_t, "image", &picture);
    assert_eq!(s, 201, "{img}");
    let id = img["media_id"].as_str().unwrap().to_owned();
    let thumb = img["thumbnail"]["media_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            img["thumbnail"]["width"].as_u64(),
            img["thumbnail"]["height"].as_u64()
        ),
        (Some(320), Some(240))
    );
    // Over one part (5 MiB): a multipart upload of two parts.
    let file: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let (s, _, doc) = upload(&gw, &alice_t, "file", &file);
    assert_eq!(s, 201, "{doc}");
    let fid = doc["media_id"].as_str().unwrap().to_owned();

    let listed = moto.list(BUCKET);
    let size_of = |key: String| {
        listed
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{key} not in the bucket: {listed:?}"))
    };
    assert_eq!(size_of(format!("chat/media/{id}")), picture.len() as u64);
    assert!(size_of(format!("chat/media/{thumb}")) > 0);
    assert!(size_of(format!("chat/media/{id}_c")) > 0);
    assert!(size_of(format!("chat/media/{id}.json")) > 0);
    assert_eq!(size_of(format!("chat/media/{fid}")), file.len() as u64);
    assert!(size_of(format!("chat/media/{fid}.json")) > 0);
    assert_eq!(listed.len(), 6, "{listed:?}");
    // Temporary files only ever on local disk, and gone.
    let tmp = gw.data_dir().join("media/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(!gw.data_dir().join("media/objects").exists());

    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (conv, img_seq) = send_media(
        &mut alice,
        &id,
        pb::content::Kind::Image(pb::Image {
            media: Some(media_ref(&img)),
        }),
    );
    let (_, file_seq) = send_media(
        &mut alice,
        &fid,
        pb::content::Kind::File(pb::File {
            media: Some(media_ref(&doc)),
            name: "data.bin".into(),
        }),
    );
    let at =
        |media: &str, seq: u64| format!("/api/v1/media/{media}?conversation_id={conv}&seq={seq}");

    let (s, head, body) = fetch(&gw, &bob_t, &at(&id, img_seq));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("content-type: image/png"), "{head}");
    assert_eq!(body, picture);
    let (s, head, body) = fetch(&gw, &bob_t, &at(&thumb, img_seq));
    assert_eq!(s, 200);
    assert!(head.contains("content-type: image/jpeg"), "{head}");
    let decoded = image::load_from_memory(&body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    let (s, head, body) = fetch(&gw, &bob_t, &at(&fid, file_seq));
    assert_eq!(s, 200);
    assert!(
        head.contains(&format!("content-length: {}", file.len())),
        "{head}"
    );
    assert!(body == file, "the file came back different");

    let (s, _, body) = fetch(&gw, &carol_t, &at(&id, img_seq));
    assert_eq!((s, json(&body)["code"].as_str()), (403, Some("NOT_MEMBER")));
    let (s, _, body) = fetch(&gw, &bob_t, &format!("/api/v1/media/{id}"));
    assert_eq!(
        (s, json(&body)["code"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    // An id that is not in the bucket: 404, as on disk.
    let (s, _, _) = fetch(&gw, MEDIA_KEY, "/api/v1/media/aaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(s, 404);
}

/// Proves a stopped S3 (moto killed by its PID) makes uploads and
/// downloads answer 503 MEDIA_STORE_UNAVAILABLE with Retry-After — typed,
/// within the S3 timeouts, without the S3 address in the answer — while
/// /healthz answers and two users still chat over TCP.
#[test]
fn a_store_that_is_down_is_a_typed_503_and_chat_goes_on() {
    let _one_at_a_time = SERIAL.lock();
    let mut moto = Moto::start();
    moto.create_bucket(BUCKET);
    let gw = gateway(&moto, BUCKET);
    let alice_t = Gateway::token("alice");
    let (s, _, m) = upload(&gw, &alice_t, "image", &png(40, 30));
    assert_eq!(s, 201, "{m}");
    let id = m["media_id"].as_str().unwrap().to_owned();

    moto.stop();
    let (s, head, v) = upload(&gw, &alice_t, "image", &png(40, 30));
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("MEDIA_STORE_UNAVAILABLE")),
        "{v}"
    );
    assert!(head.contains("retry-after:"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(!v.to_string().contains("127.0.0.1"), "{v}");
    let (s, _, body) = fetch(&gw, MEDIA_KEY, &format!("/api/v1/media/{id}"));
    assert_eq!(
        (s, json(&body)["code"].as_str()),
        (503, Some("MEDIA_STORE_UNAVAILABLE"))
    );
    // Nothing of the refused upload is left on local disk.
    let tmp = gw.data_dir().join("media/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    assert_eq!(gw.http_get("/healthz").0, 200);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let ack = alice.send_text("bob", "t-1", "still here");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&f).unwrap().2, "still here");
}

/// Proves a bucket that does not exist on a running S3 is 502
/// MEDIA_STORE_ERROR for an upload (S3 answered, with an error), and a
/// download of an unknown id there is 502 too, not a 404 that would hide
/// the misconfiguration.
#[test]
fn a_missing_bucket_is_a_typed_502() {
    let _one_at_a_time = SERIAL.lock();
    let moto = Moto::start();
    let gw = gateway(&moto, "no-such-bucket");
    let alice_t = Gateway::token("alice");
    let (s, _, v) = upload(&gw, &alice_t, "file", b"some bytes");
    assert_eq!(
        (s, v["code"].as_str()),
        (502, Some("MEDIA_STORE_ERROR")),
        "{v}"
    );
    let (s, _, body) = fetch(&gw, MEDIA_KEY, "/api/v1/media/aaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(
        (s, json(&body)["code"].as_str()),
        (502, Some("MEDIA_STORE_ERROR")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(gw.http_get("/healthz").0, 200);
}

/// Proves an S3 endpoint that takes connections but never answers (a
/// listening socket nobody accepts from) makes an upload and a download
/// answer 503 MEDIA_STORE_UNAVAILABLE once `s3_request_timeout_ms` passes,
/// instead of hanging the request (the client gives up after 10 s).
#[test]
fn a_store_that_never_answers_is_a_503_not_a_hung_request() {
    let _one_at_a_time = SERIAL.lock();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let gw = Gateway::start_with(Driver::Epoll, |c| {
        c.media.store = MediaStoreKind::S3;
        c.media.s3_endpoint = endpoint;
        c.media.s3_bucket = BUCKET.into();
        c.media.s3_path_style = true;
        c.media.s3_access_key_id = "id".into();
        c.media.s3_secret_access_key = "secret".into();
        c.media.s3_request_timeout_ms = 1000;
    });
    let alice_t = Gateway::token("alice");
    let (s, _, v) = upload(&gw, &alice_t, "file", b"into the void");
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("MEDIA_STORE_UNAVAILABLE")),
        "{v}"
    );
    let (s, _, body) = fetch(&gw, &alice_t, "/api/v1/media/aaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(
        (s, json(&body)["code"].as_str()),
        (503, Some("MEDIA_STORE_UNAVAILABLE"))
    );
    drop(silent);
}

/// (resident now, peak since the last reset) of this process, bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (kib("VmRSS:") << 10, kib("VmHWM:") << 10)
}

/// Resets the peak resident size (Linux ≥ 4.0: `5` to `clear_refs`).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// The byte at `i` of the big test object.
fn big_byte(i: usize) -> u8 {
    (i % 253) as u8 ^ (i >> 20) as u8
}

/// Uploads `len` bytes of [`big_byte`] as a file, streamed from a small
/// buffer (the test holds no copy): (status, answer).
fn stream_upload(gw: &Gateway, bearer: &str, len: usize) -> (u16, Value) {
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /api/v1/media?kind=file HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        for (j, b) in chunk[..n].iter_mut().enumerate() {
            *b = big_byte(sent + j);
        }
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Downloads `path`, hashing the body as it comes: (status, body bytes,
/// SHA-256 of the body).
fn stream_download(gw: &Gateway, bearer: &str, path: &str) -> (u16, usize, Vec<u8>) {
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut sha = Sha256::new();
    let mut body_len = 0;
    loop {
        let n = s.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        if body_len == 0 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            head.extend_from_slice(&chunk[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = head.split_off(end + 4);
                sha.update(&rest);
                body_len += rest.len();
            }
        } else {
            sha.update(&chunk[..n]);
            body_len += n;
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body_len, sha.finalize().to_vec())
}

/// Proves a large object goes to S3 and back without being held in memory
/// whole: a 64 MiB file, streamed by the test from a 1 MiB buffer, is
/// uploaded (multipart, 13 parts) and downloaded (hashed as it comes) while
/// the peak resident size of this process — test and in-process gateway
/// together, reset just before — grows by less than half the object. Held
/// whole on either path, it would grow by at least the object.
#[test]
fn a_large_object_streams_through_in_bounded_memory() {
    let _one_at_a_time = SERIAL.lock();
    const LEN: usize = 64 << 20;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let gw = gateway(&moto, BUCKET);
    let alice_t = Gateway::token("alice");
    // Warm up the paths (client pools, runtimes) with a small object.
    let (s, v) = stream_upload(&gw, &alice_t, 100 << 10);
    assert_eq!(s, 201, "{v}");
    let small = v["media_id"].as_str().unwrap().to_owned();
    assert_eq!(
        stream_download(&gw, &alice_t, &format!("/api/v1/media/{small}")).0,
        200
    );

    reset_peak_rss();
    let (before, _) = rss();
    let (s, v) = stream_upload(&gw, &alice_t, LEN);
    assert_eq!(s, 201, "{v}");
    let id = v["media_id"].as_str().unwrap().to_owned();
    let (s, len, sha) = stream_download(&gw, &alice_t, &format!("/api/v1/media/{id}"));
    let (_, peak) = rss();
    assert_eq!((s, len), (200, LEN));
    let mut want = Sha256::new();
    let mut i = 0;
    let mut chunk = vec![0u8; 1 << 20];
    while i < LEN {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = big_byte(i + j);
        }
        want.update(&chunk);
        i += chunk.len();
    }
    assert_eq!(
        sha,
        want.finalize().to_vec(),
        "the object came back different"
    );
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    let growth = peak.saturating_sub(before);
    assert!(
        growth < (LEN / 2) as u64,
        "peak resident size grew by {} MiB for a {} MiB object",
        growth >> 20,
        LEN >> 20
    );
}
