//! Media upload and download over real HTTP on an in-process gateway
//! (embedded store, media on local disk in its temp dir): per-kind limits
//! (from Content-Length and while streaming), types sniffed from the bytes,
//! thumbnails and the decode-bomb refusal, and who may download what — a
//! real client sends the image message over TCP, and membership of its
//! conversation decides.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;
use support::{Client, Gateway};
use tern_gateway::config::{ApiKeyConfig, Driver};
use tern_protocol::pb::{self, frame::Body};

const MEDIA_KEY: &str = "media-key-0123456789";
const READ_KEY: &str = "read-key-0123456789ab";

fn gateway() -> Gateway {
    gateway_with(|_| {})
}

fn gateway_with(tweak: impl FnOnce(&mut tern_gateway::config::Config)) -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| {
        c.api.keys = vec![
            ApiKeyConfig {
                name: "cms".into(),
                key: MEDIA_KEY.into(),
                scopes: vec!["media".into()],
                tenant: String::new(),
            },
            ApiKeyConfig {
                name: "dashboard".into(),
                key: READ_KEY.into(),
                scopes: vec!["read".into()],
                tenant: String::new(),
            },
        ];
        tweak(c);
    })
}

/// A PNG of `w`×`h` with a gradient (so it does not compress to nothing).
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Uploads `body` as `kind` with `bearer` (a user token or API key),
/// claiming `Content-Type: claimed`: (status, JSON answer).
fn upload(gw: &Gateway, bearer: &str, kind: &str, claimed: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {bearer}");
    let (s, _, answer) = gw.http(
        "POST",
        &format!("/api/v1/media?kind={kind}"),
        &[("Authorization", &auth), ("Content-Type", claimed)],
        body,
    );
    (s, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

/// GET `path` with `bearer`: (status, head, body).
fn fetch(gw: &Gateway, bearer: Option<&str>, path: &str) -> (u16, String, Vec<u8>) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    gw.http("GET", path, &headers, b"")
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

/// Objects stored under the gateway's media dir (variants included,
/// metadata files not).
fn stored_objects(gw: &Gateway) -> usize {
    let dir = gw.data_dir().join("media/objects");
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| f.as_ref().unwrap().path().extension().is_none())
        .count()
}

/// A user uploads an 800×600 PNG while claiming text/plain: the answer is
/// the MediaRef (type from the bytes, size, pixels, sha256) with a 320×240
/// JPEG thumbnail and a compressed variant, each downloadable by the
/// uploader and decoding to the size announced.
#[test]
fn an_image_upload_answers_its_media_ref_and_variants() {
    let gw = gateway();
    let alice = Gateway::token("alice");
    let bytes = png(800, 600);
    let (s, m) = upload(&gw, &alice, "image", "text/plain", &bytes);
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["mime"], "image/png");
    assert_eq!(m["size_bytes"], bytes.len() as u64);
    assert_eq!(
        (m["width"].as_u64(), m["height"].as_u64()),
        (Some(800), Some(600))
    );
    use sha2::Digest as _;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(m["sha256"], sha);
    let thumb = &m["thumbnail"];
    assert_eq!(thumb["mime"], "image/jpeg");
    assert_eq!(
        (thumb["width"].as_u64(), thumb["height"].as_u64()),
        (Some(320), Some(240))
    );
    // The compressed variant never scales up: 800 px already fits.
    assert_eq!(m["compressed"]["width"], 800);

    let id = m["media_id"].as_str().unwrap();
    let (s, head, body) = fetch(&gw, Some(&alice), &format!("/api/v1/media/{id}"));
    assert_eq!(s, 200);
    assert!(head.contains("content-type: image/png"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(body, bytes);
    let tid = thumb["media_id"].as_str().unwrap();
    let (s, head, body) = fetch(&gw, Some(&alice), &format!("/api/v1/media/{tid}"));
    assert_eq!(s, 200);
    assert!(head.contains("content-type: image/jpeg"), "{head}");
    let decoded = image::load_from_memory(&body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
}

/// Alice sends her image to bob over TCP as an Image message. Bob, naming
/// that message, downloads it; carol (no member of the conversation)
/// naming the same message gets 403 not_member; bob without naming a
/// message gets 403, naming another message 404; a `media` key fetches
/// anything, a key without the scope is 403, no credentials 401, an unknown
/// id 404.
#[test]
fn downloads_follow_the_conversation_the_media_was_sent_to() {
    let gw = gateway();
    let (alice_t, bob_t, carol_t) = (
        Gateway::token("alice"),
        Gateway::token("bob"),
        Gateway::token("carol"),
    );
    let (_, m) = upload(&gw, &alice_t, "image", "image/png", &png(64, 48));
    let id = m["media_id"].as_str().unwrap().to_owned();
    let thumb = m["thumbnail"]["media_id"].as_str().unwrap().to_owned();

    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let media = pb::MediaRef {
        media_id: id.clone(),
        mime: "image/png".into(),
        size_bytes: m["size_bytes"].as_u64().unwrap(),
        width: 64,
        height: 48,
        ..Default::default()
    };
    let ack = alice.request(Body::Send(pb::Send {
        client_msg_id: "img-1".into(),
        to: Some(pb::send::To::UserId("bob".into())),
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Image(pb::Image { media: Some(media) })),
        }),
        ..Default::default()
    }));
    let Some(Body::SendAck(ack)) = ack.body else {
        panic!("no ack: {ack:?}")
    };
    let text = alice.send_text("bob", "txt-1", "no media here");
    let Some(Body::SendAck(text_ack)) = text.body else {
        panic!("no ack: {text:?}")
    };
    let at = |seq: u64| {
        format!(
            "/api/v1/media/{id}?conversation_id={}&seq={seq}",
            ack.conversation_id
        )
    };

    let (s, _, body) = fetch(&gw, Some(&bob_t), &at(ack.seq));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    // The thumbnail goes with its original.
    let thumb_at = format!(
        "/api/v1/media/{thumb}?conversation_id={}&seq={}",
        ack.conversation_id, ack.seq
    );
    assert_eq!(fetch(&gw, Some(&bob_t), &thumb_at).0, 200);

    let (s, _, body) = fetch(&gw, Some(&carol_t), &at(ack.seq));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (403, "NOT_MEMBER"), "{v}");
    let (s, _, body) = fetch(&gw, Some(&bob_t), &format!("/api/v1/media/{id}"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (403, "PERMISSION_DENIED"), "{v}");
    let (s, _, body) = fetch(&gw, Some(&bob_t), &at(text_ack.seq));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (404, "NOT_FOUND"), "{v}");

    assert_eq!(
        fetch(&gw, Some(MEDIA_KEY), &format!("/api/v1/media/{id}")).0,
        200
    );
    let (s, _, body) = fetch(&gw, Some(READ_KEY), &format!("/api/v1/media/{id}"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (403, "PERMISSION_DENIED"), "{v}");
    assert_eq!(fetch(&gw, None, &format!("/api/v1/media/{id}")).0, 401);
    assert_eq!(
        fetch(&gw, Some("not.a.token"), &format!("/api/v1/media/{id}")).0,
        401
    );
    let (s, _, _) = fetch(
        &gw,
        Some(MEDIA_KEY),
        "/api/v1/media/aaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    assert_eq!(s, 404);
    let (s, _, _) = fetch(&gw, Some(MEDIA_KEY), "/api/v1/media/..%2F..%2Fetc");
    assert_eq!(s, 404);
    // A multi-byte character across the id's 26th byte: 404, no panic.
    let (s, _, _) = fetch(
        &gw,
        Some(MEDIA_KEY),
        "/api/v1/media/aaaaaaaaaaaaaaaaaaaaaaaaa%C3%A9",
    );
    assert_eq!(s, 404);
}

/// An avatar: alice uploads an image and sets it as her profile's avatar;
/// bob (not the uploader, sharing no conversation) downloads it and its
/// thumbnail by naming her (`?avatar_of=alice`); naming another user, or
/// naming alice after she set another avatar, is 404; a file upload set as
/// the avatar is not served this way, nor is alice's image once bob sets it
/// as his own avatar (an avatar republishes only its user's uploads).
#[test]
fn an_avatar_is_served_to_anyone_who_names_its_user() {
    let gw = gateway();
    let (alice_t, bob_t) = (Gateway::token("alice"), Gateway::token("bob"));
    let (_, m) = upload(&gw, &alice_t, "image", "image/png", &png(64, 64));
    let id = m["media_id"].as_str().unwrap().to_owned();
    let thumb = m["thumbnail"]["media_id"].as_str().unwrap().to_owned();
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let set_avatar = |alice: &mut Client, avatar: &str| {
        let r = alice.request(Body::ProfileUpdate(pb::ProfileUpdate {
            avatar: Some(avatar.into()),
            ..Default::default()
        }));
        assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    };
    set_avatar(&mut alice, &id);

    let (s, _, body) = fetch(
        &gw,
        Some(&bob_t),
        &format!("/api/v1/media/{id}?avatar_of=alice"),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        fetch(
            &gw,
            Some(&bob_t),
            &format!("/api/v1/media/{thumb}?avatar_of=alice")
        )
        .0,
        200
    );
    let (s, _, body) = fetch(
        &gw,
        Some(&bob_t),
        &format!("/api/v1/media/{id}?avatar_of=carol"),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (404, "NOT_FOUND"), "{v}");

    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    set_avatar(&mut bob, &id);
    assert_eq!(
        fetch(
            &gw,
            Some(&Gateway::token("carol")),
            &format!("/api/v1/media/{id}?avatar_of=bob")
        )
        .0,
        404
    );

    set_avatar(&mut alice, "https://example.com/me.png");
    assert_eq!(
        fetch(
            &gw,
            Some(&bob_t),
            &format!("/api/v1/media/{id}?avatar_of=alice")
        )
        .0,
        404
    );

    let (_, f) = upload(&gw, &alice_t, "file", "text/plain", b"secret notes");
    let file = f["media_id"].as_str().unwrap().to_owned();
    set_avatar(&mut alice, &file);
    assert_eq!(
        fetch(
            &gw,
            Some(&bob_t),
            &format!("/api/v1/media/{file}?avatar_of=alice")
        )
        .0,
        404
    );
}

/// Text claiming to be an image is 415; PNG magic over garbage is 400
/// bad_image; a voice upload that is not audio is 415; a file is taken as
/// anything (its sniffed type recorded) and always served as an attachment
/// in a sandbox, so an uploaded HTML page never runs on the gateway's
/// origin. Nothing refused is stored.
#[test]
fn types_are_sniffed_from_the_bytes() {
    let gw = gateway();
    let t = Gateway::token("alice");
    let (s, v) = upload(
        &gw,
        &t,
        "image",
        "image/png",
        b"I am definitely a PNG, trust me",
    );
    assert_eq!((s, code(&v)), (415, "UNSUPPORTED_MEDIA_TYPE"), "{v}");
    let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
    fake.extend_from_slice(&[0x55; 200]);
    let (s, v) = upload(&gw, &t, "image", "image/png", &fake);
    assert_eq!((s, code(&v)), (400, "BAD_IMAGE"), "{v}");
    let (s, v) = upload(&gw, &t, "voice", "audio/ogg", &png(4, 4));
    assert_eq!((s, code(&v)), (415, "UNSUPPORTED_MEDIA_TYPE"), "{v}");
    let (s, v) = upload(&gw, &t, "sticker", "image/png", &png(4, 4));
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    let (s, v) = upload(&gw, &t, "image", "image/png", b"");
    assert_eq!((s, code(&v)), (400, "INVALID_ARGUMENT"), "{v}");
    assert_eq!(stored_objects(&gw), 0);
    let (s, v) = upload(&gw, &t, "file", "text/html", b"<html>hi</html>");
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["mime"], "text/html");
    assert!(v["thumbnail"].is_null());
    assert_eq!(stored_objects(&gw), 1);
    let id = v["media_id"].as_str().unwrap();
    let (s, head, _) = fetch(&gw, Some(&t), &format!("/api/v1/media/{id}"));
    assert_eq!(s, 200);
    assert!(head.contains("content-disposition: attachment"), "{head}");
    assert!(head.contains("content-security-policy: sandbox"), "{head}");
}

/// A 60-byte PNG whose header claims 100000×100000 pixels is refused from
/// its header (400 image_too_large) and nothing is stored; the gateway
/// still answers.
#[test]
fn a_decode_bomb_is_refused_from_its_header() {
    let gw = gateway();
    let t = Gateway::token("alice");
    let bomb = png_header_claiming(100_000, 100_000);
    assert!(bomb.len() < 100);
    let (s, v) = upload(&gw, &t, "image", "image/png", &bomb);
    assert_eq!((s, code(&v)), (400, "IMAGE_TOO_LARGE"), "{v}");
    assert_eq!(stored_objects(&gw), 0);
    assert_eq!(upload(&gw, &t, "image", "image/png", &png(10, 10)).0, 201);
}

/// With `[http] body_bytes_max` at 64 KiB and image uploads limited to
/// 256 KiB: a 200 KiB image upload passes (media has its own limit); a
/// Content-Length over the limit is 413 before any body byte is sent; a
/// chunked body with no length is cut at the limit while streaming (413);
/// and other routes keep the 64 KiB limit.
#[test]
fn uploads_are_held_to_the_limit_of_their_kind() {
    let gw = gateway_with(|c| {
        c.http.body_bytes_max = 64 << 10;
        c.media.image_bytes_max = 256 << 10;
        c.media.file_bytes_max = 256 << 10;
    });
    let t = Gateway::token("alice");
    let mut big = png(16, 16);
    big.resize(200 << 10, 0); // trailing bytes after IEND: still a PNG
    let (s, v) = upload(&gw, &t, "file", "application/octet-stream", &big);
    assert_eq!(s, 201, "{v}");

    // Declared too large: answered before the body is sent at all.
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/media?kind=image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Length: 104857600\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");

    // No length: chunked, cut while streaming.
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/media?kind=image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; 16 << 10];
    // 40 chunks of 16 KiB = 640 KiB, well past 256 KiB; the server may stop
    // reading (and close) once it has answered.
    for _ in 0..40 {
        if write!(s, "{:x}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(stored_objects(&gw), 1);

    // Other routes keep [http] body_bytes_max.
    let (s, _, _) = gw.http(
        "POST",
        "/api/v1/messages",
        &[("Authorization", &format!("Bearer {MEDIA_KEY}"))],
        &vec![b' '; 100 << 10],
    );
    assert_eq!(s, 413);
}

/// The smallest PNG whose IHDR claims `w`×`h` (8-bit RGB), with one empty
/// IDAT and IEND: the header is valid, the pixels are not there.
fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
