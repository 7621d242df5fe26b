//! WebSocket over the shard's own buffers: the HTTP upgrade (parsed with
//! httparse, answered with tungstenite's accept key) and frame headers
//! (tungstenite's `FrameHeader`), never a per-connection `WebSocket<S>`
//! with buffers of its own.
//!
//! One binary message carries one Tern frame. Text messages and fragmented
//! messages are refused (close 1003); clients send each frame as one binary
//! message. Pings are answered with pongs; a valid close is echoed (an
//! invalid one is answered with 1002) and ends the connection.

use std::io::Cursor;

use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

/// Largest HTTP upgrade request accepted, bytes.
pub const UPGRADE_BYTES_MAX: usize = 8 * 1024;

/// The result of feeding upgrade bytes.
#[derive(Debug)]
pub enum Upgrade {
    /// The request is complete and valid; send `response` and switch.
    Done {
        /// Bytes of the request (anything after is WebSocket data).
        consumed: usize,
        /// The `101 Switching Protocols` response.
        response: Vec<u8>,
    },
    /// The request is not complete yet.
    NeedMore,
}

/// Parses an HTTP upgrade request. `Err` carries the HTTP error response to
/// send before closing.
pub fn accept_upgrade(buf: &[u8], origins: &[String]) -> Result<Upgrade, Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < UPGRADE_BYTES_MAX => {
            return Ok(Upgrade::NeedMore);
        }
        _ => return Err(http_error(400, "bad upgrade request")),
    };
    if req.method != Some("GET") {
        return Err(http_error(405, "websocket upgrade needs GET"));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(http_error(426, "expected a websocket upgrade"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(http_error(426, "websocket version 13 required"));
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err(http_error(400, "missing sec-websocket-key"));
    };
    if !origins.is_empty() {
        let allowed = header("origin").is_some_and(|o| origins.iter().any(|a| a == o));
        if !allowed {
            return Err(http_error(403, "origin not allowed"));
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(Upgrade::Done {
        consumed,
        response: response.into_bytes(),
    })
}

fn http_error(status: u16, why: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Upgrade Required",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n\r\n{why}",
        why.len()
    )
    .into_bytes()
}

/// What one WebSocket frame from a client was.
#[derive(Debug)]
pub enum WsDecoded {
    /// A binary message: its unmasked payload is one Tern frame body.
    Frame {
        /// The payload (a copy, unmasked).
        body: Vec<u8>,
        /// Bytes of input used.
        consumed: usize,
    },
    /// A control frame, handled here.
    Control {
        /// Bytes of input used.
        consumed: usize,
        /// A frame to send back (pong, close echo).
        reply: Option<Vec<u8>>,
        /// The peer closed; close after sending `reply`.
        close: bool,
    },
    /// Not a whole frame yet.
    NeedMore,
}

/// Why a WebSocket frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The header could not be parsed.
    #[error("bad websocket frame header")]
    BadHeader,
    /// Client frames must be masked (RFC 6455 5.1).
    #[error("unmasked client frame")]
    Unmasked,
    /// The payload is larger than the frame limit.
    #[error("websocket payload of {0} bytes is larger than the frame limit")]
    TooLarge(u64),
    /// Text, continuation or reserved opcodes, or a fragmented message.
    #[error("unsupported websocket frame: only whole binary messages carry frames")]
    Unsupported,
}

/// Decodes one client frame from `buf`, checking the payload length against
/// `frame_bytes_max` before anything is copied.
pub fn decode_message(buf: &[u8], frame_bytes_max: usize) -> Result<WsDecoded, WsError> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(WsDecoded::NeedMore),
        Err(_) => return Err(WsError::BadHeader),
    };
    let max = frame_bytes_max as u64;
    let is_control = matches!(header.opcode, OpCode::Control(_));
    if (is_control && len > 125) || (!is_control && len > max) {
        return Err(WsError::TooLarge(len));
    }
    let Some(mask) = header.mask else {
        return Err(WsError::Unmasked);
    };
    let start = cursor.position() as usize;
    // `len` is at most frame_bytes_max here, so this cannot overflow.
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(WsDecoded::NeedMore);
    }
    let mut payload = buf[start..end].to_vec();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    match header.opcode {
        OpCode::Data(Data::Binary) if header.is_final => Ok(WsDecoded::Frame {
            body: payload,
            consumed: end,
        }),
        OpCode::Control(Control::Ping) => Ok(WsDecoded::Control {
            consumed: end,
            reply: Some(server_frame(OpCode::Control(Control::Pong), &payload)),
            close: false,
        }),
        OpCode::Control(Control::Pong) => Ok(WsDecoded::Control {
            consumed: end,
            reply: None,
            close: false,
        }),
        OpCode::Control(Control::Close) => {
            // Echo a valid status code (first two bytes), as RFC 6455 5.5.1
            // asks; an invalid close (a 1-byte payload, a reserved or
            // unassigned code, a reason that is not UTF-8) is answered with
            // 1002 (protocol error), never echoed (7.4).
            let code = match payload.len() {
                0 => None,
                1 => Some(1002),
                _ => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason_ok = std::str::from_utf8(&payload[2..]).is_ok();
                    Some(if valid_close_code(code) && reason_ok {
                        code
                    } else {
                        1002
                    })
                }
            };
            let reply = match code {
                Some(code) => close_frame(code),
                None => server_frame(OpCode::Control(Control::Close), &[]),
            };
            Ok(WsDecoded::Control {
                consumed: end,
                reply: Some(reply),
                close: true,
            })
        }
        _ => Err(WsError::Unsupported),
    }
}

/// True for a close code a peer may send (RFC 6455 7.4): 1000-1003,
/// 1007-1014 (registered), 3000-4999 (libraries, applications). 1004-1006
/// and 1015 are reserved, the rest of 1000-2999 unassigned.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The HTTP response for a connection that did not complete its upgrade:
/// 408 when its auth deadline passed, 503 when the server is closing it
/// (shutdown); it is closed after.
pub fn upgrade_abandoned_response(timed_out: bool) -> Vec<u8> {
    if timed_out {
        http_error(408, "no websocket upgrade within the deadline")
    } else {
        http_error(503, "the server is closing this connection")
    }
}

/// A close frame with status 1003 (unsupported data) or 1009 (too big).
pub fn close_frame(code: u16) -> Vec<u8> {
    server_frame(OpCode::Control(Control::Close), &code.to_be_bytes())
}

/// Appends the header of an unmasked, final binary frame of `len` bytes.
pub fn encode_binary_header(len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Binary),
        mask: None,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    header.format(len as u64, out).expect("write to Vec");
}

fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: None,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 4);
    header
        .format(payload.len() as u64, &mut out)
        .expect("write to Vec");
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// The RFC 6455 sample key gives the RFC's accept value; a missing key,
    /// a wrong version or a foreign origin get HTTP errors.
    #[test]
    fn upgrade_accepts_valid_requests_and_refuses_others() {
        let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://a.example\r\n\r\nXX";
        match accept_upgrade(req, &[]).unwrap() {
            Upgrade::Done { consumed, response } => {
                assert_eq!(consumed, req.len() - 2);
                let text = String::from_utf8(response).unwrap();
                assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
            }
            Upgrade::NeedMore => panic!("complete request"),
        }
        assert!(matches!(
            accept_upgrade(&req[..20], &[]),
            Ok(Upgrade::NeedMore)
        ));
        assert!(accept_upgrade(req, &["https://b.example".into()]).is_err());
        assert!(accept_upgrade(req, &["https://a.example".into()]).is_ok());
        let v12 = String::from_utf8_lossy(req).replace("Version: 13", "Version: 12");
        assert!(accept_upgrade(v12.as_bytes(), &[]).is_err());
        assert!(accept_upgrade(&vec![b'A'; UPGRADE_BYTES_MAX + 1], &[]).is_err());
    }

    /// Binary frames unmask to their payload; partial input needs more;
    /// oversized, unmasked, text and fragmented frames are refused; ping
    /// gets a pong and close is echoed.
    #[test]
    fn frames_decode_and_bad_ones_are_typed() {
        let f = client_frame(OpCode::Data(Data::Binary), true, b"hello");
        match decode_message(&f, 64).unwrap() {
            WsDecoded::Frame { body, consumed } => {
                assert_eq!(body, b"hello");
                assert_eq!(consumed, f.len());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_message(&f[..f.len() - 1], 64),
            Ok(WsDecoded::NeedMore)
        ));
        assert!(matches!(
            decode_message(&f[..1], 64),
            Ok(WsDecoded::NeedMore)
        ));
        let big = client_frame(OpCode::Data(Data::Binary), true, &[0; 100]);
        assert!(matches!(
            decode_message(&big[..10], 64),
            Err(WsError::TooLarge(100))
        ));
        let text = client_frame(OpCode::Data(Data::Text), true, b"hi");
        assert!(matches!(
            decode_message(&text, 64),
            Err(WsError::Unsupported)
        ));
        let frag = client_frame(OpCode::Data(Data::Binary), false, b"hi");
        assert!(matches!(
            decode_message(&frag, 64),
            Err(WsError::Unsupported)
        ));
        let mut unmasked = Vec::new();
        encode_binary_header(2, &mut unmasked);
        unmasked.extend_from_slice(b"hi");
        assert!(matches!(
            decode_message(&unmasked, 64),
            Err(WsError::Unmasked)
        ));
        let ping = client_frame(OpCode::Control(Control::Ping), true, b"p");
        assert!(matches!(
            decode_message(&ping, 64),
            Ok(WsDecoded::Control {
                reply: Some(_),
                close: false,
                ..
            })
        ));
        let close = client_frame(
            OpCode::Control(Control::Close),
            true,
            &1000u16.to_be_bytes(),
        );
        assert!(matches!(
            decode_message(&close, 64),
            Ok(WsDecoded::Control { close: true, .. })
        ));
    }

    /// A valid close code is echoed; an empty close gets an empty close; a
    /// 1-byte payload, a reserved or unassigned code, or a reason that is
    /// not UTF-8 gets 1002 (RFC 6455 7.4).
    #[test]
    fn invalid_close_codes_get_protocol_error() {
        let answer = |payload: &[u8]| {
            let f = client_frame(OpCode::Control(Control::Close), true, payload);
            match decode_message(&f, 64).unwrap() {
                WsDecoded::Control {
                    reply: Some(r),
                    close: true,
                    ..
                } => r[2..].to_vec(),
                other => panic!("{other:?}"),
            }
        };
        let code = |c: u16| c.to_be_bytes().to_vec();
        assert_eq!(answer(&[]), Vec::<u8>::new());
        for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(answer(&code(ok)), code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(answer(&code(bad)), code(1002), "{bad}");
        }
        assert_eq!(answer(&[0x03]), code(1002));
        let mut bad_utf8 = code(1000);
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(answer(&bad_utf8), code(1002));
        let mut good_reason = code(1000);
        good_reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(answer(&good_reason), code(1000));
    }
}
