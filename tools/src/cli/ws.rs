//! The client side of Tern over WebSocket (docs/protocol.md 1.1): a server
//! entry `ws://host[:port][/path]` or `wss://…`, the HTTP upgrade, and the
//! framing of one Tern frame per binary message. The upgrade key and
//! accept check are tungstenite's, the frame headers tungstenite's
//! `FrameHeader`; the bytes move over [`super::conn::Wire`] like TCP's, so
//! a reader thread and the writers share the socket as they do for TCP.
//!
//! Sent: each Tern frame as one binary message with FIN set, masked
//! (RFC 6455 5.3), a pong for each ping, a close echoed. Received: binary
//! messages whole or in fragments (control frames may come between them),
//! within [`super::conn::INCOMING_FRAME_BYTES_MAX`] checked at each header
//! before the payload is kept; a text message, a reserved bit or opcode, a
//! masked server frame or a broken fragment sequence ends the connection
//! as a bad frame. This module never reconnects and never looks inside a
//! Tern frame.

use std::io::Cursor;

use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

/// Largest HTTP upgrade response read, bytes.
pub const UPGRADE_RESPONSE_BYTES_MAX: usize = 8 * 1024;

/// A `ws://` or `wss://` server entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`: TLS under the WebSocket.
    pub tls: bool,
    /// The host as written (an IPv6 address keeps its brackets).
    pub host: String,
    /// The port (default 80, or 443 for `wss://`).
    pub port: u16,
    /// The request path (default `/`), with its query if any.
    pub path: String,
}

impl WsUrl {
    /// `Some` for an entry that starts with `ws://` or `wss://` (an error if
    /// the rest is not `host[:port][/path]`); `None` for a TCP `host:port`.
    pub fn parse(entry: &str) -> Option<Result<Self, String>> {
        let (tls, rest) = if let Some(r) = strip_prefix_ci(entry, "wss://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(entry, "ws://") {
            (false, r)
        } else {
            return None;
        };
        Some(
            Self::parse_rest(tls, rest).ok_or_else(|| {
                format!("{entry:?} is not a WebSocket URL (ws://host[:port][/path])")
            }),
        )
    }

    fn parse_rest(tls: bool, rest: &str) -> Option<Self> {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return None; // no user info: the token goes in `auth`
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')?;
            let host = &authority[..=end];
            match &authority[end + 1..] {
                "" => (host, default_port),
                p => (host, p.strip_prefix(':')?.parse().ok()?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host:port`, for the socket and the TLS server name.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The upgrade request, with `key` as `Sec-WebSocket-Key`.
    pub fn upgrade_request(&self, key: &str) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             User-Agent: {}\r\n\r\n",
            self.path,
            self.addr(),
            super::conn::CLIENT_VERSION,
        )
        .into_bytes()
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`: the prefix's length may fall inside a character of `s`.
    s.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

/// A fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// What the upgrade response says, once it is whole.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeAnswer {
    /// `101` with the right accept key: WebSocket from byte `consumed` on.
    Switched {
        /// Bytes of the response (what follows is WebSocket data).
        consumed: usize,
    },
    /// Not whole yet.
    NeedMore,
}

/// Reads the server's answer to the upgrade sent with `key`. A refusal is
/// an error naming the status (and `Retry-After` when the server gave one:
/// 429 or 503 ask the client to wait).
pub fn check_upgrade(buf: &[u8], key: &str) -> Result<UpgradeAnswer, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < UPGRADE_RESPONSE_BYTES_MAX => {
            return Ok(UpgradeAnswer::NeedMore);
        }
        Ok(httparse::Status::Partial) => {
            return Err(format!(
                "the upgrade response is over {UPGRADE_RESPONSE_BYTES_MAX} bytes"
            ));
        }
        Err(e) => return Err(format!("the upgrade response is not HTTP: {e}")),
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        let mut why = format!(
            "the server refused the WebSocket upgrade: {code} {}",
            resp.reason.unwrap_or("")
        );
        if let Some(after) = header("retry-after") {
            why.push_str(&format!(" (Retry-After: {after} s)"));
        }
        return Err(why);
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err("the upgrade response has a wrong Sec-WebSocket-Accept".into());
    }
    Ok(UpgradeAnswer::Switched { consumed })
}

/// Appends one masked frame (FIN set) of `opcode` carrying `payload`.
pub fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mask: [u8; 4] = rand::random();
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    // Writing to a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one masked binary message holding `body` (a Tern frame without
/// its length prefix).
pub fn encode_binary(body: &[u8], out: &mut Vec<u8>) {
    encode(OpCode::Data(Data::Binary), body, out);
}

/// What one WebSocket frame off the front of the buffer was.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Not a whole frame yet; nothing was consumed.
    NeedMore,
    /// A whole binary message: one Tern frame's bytes.
    Message(Vec<u8>),
    /// A fragment kept (the message is not whole yet), or a pong.
    Nothing,
    /// A ping: answer with a pong of this payload.
    Ping(Vec<u8>),
    /// The server closes: echo the close, then the connection ends.
    Close,
}

/// Why the server's WebSocket bytes are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// A header tungstenite cannot parse, or a reserved opcode.
    #[error("a bad WebSocket frame header")]
    BadHeader,
    /// RSV1–3 set (no extension was negotiated).
    #[error("a WebSocket frame with a reserved bit set")]
    ReservedBits,
    /// A server must not mask (RFC 6455 5.1).
    #[error("a masked WebSocket frame from the server")]
    Masked,
    /// A text message: Tern frames are binary.
    #[error("a WebSocket text message (Tern frames are binary)")]
    Text,
    /// A message or control frame above its limit, bytes.
    #[error("a WebSocket message of {0} bytes, above the limit")]
    TooLarge(u64),
    /// A continuation with no message started, or a new message inside one.
    #[error("a broken WebSocket fragment sequence")]
    Fragments,
    /// A control frame in fragments.
    #[error("a fragmented WebSocket control frame")]
    FragmentedControl,
}

/// Takes one WebSocket frame off the front of `buf`. `message` holds the
/// fragments of a binary message not yet whole (`None` between messages);
/// a message may grow to `message_bytes_max`.
pub fn take(
    buf: &mut Vec<u8>,
    message: &mut Option<Vec<u8>>,
    message_bytes_max: usize,
) -> Result<Taken, WsError> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Taken::NeedMore),
        Err(_) => return Err(WsError::BadHeader),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsError::ReservedBits);
    }
    if header.mask.is_some() {
        return Err(WsError::Masked);
    }
    let max = message_bytes_max as u64;
    // What the header alone decides, before any payload is kept.
    match header.opcode {
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
            return Err(WsError::BadHeader);
        }
        OpCode::Control(_) if !header.is_final => return Err(WsError::FragmentedControl),
        OpCode::Control(_) if len > 125 => return Err(WsError::TooLarge(len)),
        OpCode::Control(_) => {}
        OpCode::Data(Data::Continue) => {
            let Some(so_far) = message.as_ref() else {
                return Err(WsError::Fragments);
            };
            let total = (so_far.len() as u64).saturating_add(len);
            if total > max {
                return Err(WsError::TooLarge(total));
            }
        }
        OpCode::Data(_) if message.is_some() => return Err(WsError::Fragments),
        OpCode::Data(Data::Text) => return Err(WsError::Text),
        OpCode::Data(Data::Binary) if len > max => return Err(WsError::TooLarge(len)),
        OpCode::Data(Data::Binary) => {}
    }
    let start = cursor.position() as usize;
    // `len` is at most the message limit (or 125) here: no overflow.
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(Taken::NeedMore);
    }
    let payload = buf[start..end].to_vec();
    buf.drain(..end);
    Ok(match header.opcode {
        OpCode::Control(Control::Ping) => Taken::Ping(payload),
        OpCode::Control(Control::Close) => Taken::Close,
        OpCode::Control(_) => Taken::Nothing, // a pong
        OpCode::Data(Data::Binary) if header.is_final => Taken::Message(payload),
        OpCode::Data(Data::Binary) => {
            *message = Some(payload);
            Taken::Nothing
        }
        _ => {
            // A continuation: checked above that a message is open.
            let mut whole = message.take().unwrap_or_default();
            whole.extend_from_slice(&payload);
            if header.is_final {
                Taken::Message(whole)
            } else {
                *message = Some(whole);
                Taken::Nothing
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn urls_parse() {
        let u = WsUrl::parse("ws://127.0.0.1:7401").unwrap().unwrap();
        assert_eq!(
            (u.tls, u.addr(), u.path.as_str()),
            (false, "127.0.0.1:7401".into(), "/")
        );
        let u = WsUrl::parse("WSS://chat.example/tern?x=1")
            .unwrap()
            .unwrap();
        assert_eq!(
            (u.tls, u.addr(), u.path.as_str()),
            (true, "chat.example:443".into(), "/tern?x=1")
        );
        let u = WsUrl::parse("ws://[::1]:9/a").unwrap().unwrap();
        assert_eq!((u.addr(), u.path.as_str()), ("[::1]:9".into(), "/a"));
        assert!(WsUrl::parse("127.0.0.1:7400").is_none());
        assert!(WsUrl::parse("wsé://x").is_none());
        for bad in [
            "ws://",
            "ws://h:x",
            "ws://u@h:1",
            "ws://[::1",
            "ws://h:99999",
        ] {
            assert!(WsUrl::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_upgrade_answer_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        // A WebSocket frame's first byte may follow in the same read.
        let with_data = [ok.as_bytes(), &[0x82]].concat();
        assert_eq!(
            check_upgrade(&with_data, key),
            Ok(UpgradeAnswer::Switched { consumed: ok.len() })
        );
        assert_eq!(
            check_upgrade(&ok.as_bytes()[..20], key),
            Ok(UpgradeAnswer::NeedMore)
        );
        let wrong = ok.replace("s3pP", "AAAA");
        assert!(check_upgrade(wrong.as_bytes(), key).is_err());
        let busy = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n";
        let e = check_upgrade(busy.as_bytes(), key).unwrap_err();
        assert!(e.contains("503") && e.contains("Retry-After: 7"), "{e}");
    }

    #[test]
    fn frames_round_trip_and_fragments_join() {
        // What we send is masked and parses back to the payload.
        let mut out = Vec::new();
        encode_binary(b"hello", &mut out);
        let mut cursor = Cursor::new(&out[..]);
        let (h, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let mask = h.mask.unwrap();
        let body: Vec<u8> = out[cursor.position() as usize..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!((len, body.as_slice()), (5, &b"hello"[..]));

        let mut buf = server_frame(false, OpCode::Data(Data::Binary), b"ab");
        buf.extend(server_frame(true, OpCode::Control(Control::Ping), b"p"));
        buf.extend(server_frame(true, OpCode::Data(Data::Continue), b"cd"));
        let mut msg = None;
        let half = buf.split_off(1);
        let mut first = buf;
        assert_eq!(take(&mut first, &mut msg, 64), Ok(Taken::NeedMore));
        first.extend(half);
        let mut buf = first;
        assert_eq!(take(&mut buf, &mut msg, 64), Ok(Taken::Nothing));
        assert_eq!(take(&mut buf, &mut msg, 64), Ok(Taken::Ping(b"p".to_vec())));
        assert_eq!(
            take(&mut buf, &mut msg, 64),
            Ok(Taken::Message(b"abcd".to_vec()))
        );
        assert!(buf.is_empty() && msg.is_none());
    }

    #[test]
    fn bad_frames_are_refused_before_their_payload() {
        let mut msg = None;
        let mut text = server_frame(true, OpCode::Data(Data::Text), b"hi");
        assert_eq!(take(&mut text, &mut msg, 64), Err(WsError::Text));
        // Only the header of an oversized message is needed to refuse it.
        let mut big = server_frame(true, OpCode::Data(Data::Binary), &[0; 65]);
        big.truncate(4);
        assert_eq!(take(&mut big, &mut msg, 64), Err(WsError::TooLarge(65)));
        let mut stray = server_frame(true, OpCode::Data(Data::Continue), b"x");
        assert_eq!(take(&mut stray, &mut msg, 64), Err(WsError::Fragments));
        let mut masked = Vec::new();
        encode_binary(b"x", &mut masked);
        assert_eq!(take(&mut masked, &mut msg, 64), Err(WsError::Masked));
    }
}
