//! `send-file`: uploads a file to the gateway's media API over HTTP (with
//! this session's token) and builds the message that carries it.
//!
//! The upload streams the file (never read whole into memory). The server
//! sniffs the type from the bytes; the kind asked for is chosen from the
//! extension (`png`, `jpg`, `jpeg`, `gif`, `webp` → image, anything else →
//! file), and an image the server does not take as one is an error, not a
//! silent file.

use std::{path::Path, time::Duration};

use serde::Deserialize;
use tern_protocol::pb;

use super::{ClientError, session::Session, target::Target};

/// Longest answer body read from the media API, bytes.
const ANSWER_BYTES_MAX: u64 = 64 << 10;

/// What the media API answers to an upload (`UploadedMedia`).
#[derive(Debug, Deserialize)]
struct Uploaded {
    media_id: String,
    mime: String,
    size_bytes: u64,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default)]
    sha256: String,
    thumbnail: Option<Variant>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    media_id: String,
    mime: String,
    width: u32,
    height: u32,
}

/// An RFC 9457 problem, as the server API answers errors.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    detail: String,
}

/// What the extension says the file is: `image` or `file`.
pub fn kind_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png" | "jpg" | "jpeg" | "gif" | "webp") => "image",
        _ => "file",
    }
}

/// Uploads `path` to the media API of `s`'s server and returns the `Send`
/// of an image or file message to `target` carrying it.
pub fn upload_message(
    s: &Session,
    target: &Target,
    path: &Path,
    client_msg_id: String,
) -> Result<pb::Send, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let kind = kind_of(path);
    let opts = s.options();
    let base = opts.http_url.trim_end_matches('/');
    let url = format!("{base}/api/v1/media?kind={kind}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(opts.request_timeout_ms.max(1))))
        .build()
        .into();
    let mut reader = file;
    let mut answer = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", opts.token))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", &len.to_string())
        .send(ureq::SendBody::from_reader(&mut reader))
        .map_err(|e| ClientError::Connect {
            addr: base.to_owned(),
            source: std::io::Error::other(e),
        })?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .with_config()
        .limit(ANSWER_BYTES_MAX)
        .read_to_string()
        .map_err(|e| ClientError::Protocol(format!("media answer: {e}")))?;
    if status != 201 {
        let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(b) => (b.code, b.detail),
            Err(_) => (format!("http_{status}"), body),
        };
        return Err(ClientError::Media {
            status,
            code,
            message,
        });
    }
    let up: Uploaded = serde_json::from_str(&body)
        .map_err(|e| ClientError::Protocol(format!("media answer: {e}")))?;
    let media = Some(pb::MediaRef {
        media_id: up.media_id,
        mime: up.mime,
        size_bytes: up.size_bytes,
        width: up.width,
        height: up.height,
        duration_ms: 0,
        thumbnail: up.thumbnail.map(|t| pb::Thumbnail {
            media_id: t.media_id,
            mime: t.mime,
            width: t.width,
            height: t.height,
        }),
        sha256: up.sha256,
    });
    let content = if kind == "image" {
        pb::content::Kind::Image(pb::Image { media })
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        pb::content::Kind::File(pb::File { media, name })
    };
    let to = match target {
        Target::User(u) => pb::send::To::UserId(u.clone()),
        Target::Group(g) => pb::send::To::GroupId(g.clone()),
    };
    Ok(pb::Send {
        client_msg_id,
        to: Some(to),
        content: Some(pb::Content {
            kind: Some(content),
        }),
        ..Default::default()
    })
}
