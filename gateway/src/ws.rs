//! WebSocket over the shard's own buffers: the HTTP upgrade (parsed with
//! httparse, answered with tungstenite's accept key) and frame headers
//! (tungstenite's `FrameHeader`), never a per-connection `WebSocket<S>`
//! with buffers of its own.
//!
//! One binary message carries one Tern frame. A message may come in
//! fragments (RFC 6455 5.4): the caller keeps the message being reassembled
//! (`decode_message`'s `message`, `None` while no message is partial) and
//! control frames may come between its fragments; the whole message stays
//! within the frame limit, checked at each fragment's header before its
//! payload is buffered (close 1009). A continuation without a start, a new
//! data message inside a fragmented one, a fragmented control frame or a
//! reserved bit is a protocol error (1002). Text messages are refused (1003):
//! a Tern frame is protobuf, which is not UTF-8. Pings are answered with
//! pongs; a valid close is echoed (an invalid one is answered with 1002) and
//! ends the connection.

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
    /// A whole binary message (unfragmented, or the last fragment of one):
    /// its unmasked payload is one Tern frame body.
    Frame {
        /// The payload (unmasked; for a fragmented message, the message
        /// taken out of the caller's `message`).
        body: Vec<u8>,
        /// Bytes of input used.
        consumed: usize,
    },
    /// A fragment of a message that is not complete yet: its payload was
    /// added to the caller's `message`.
    Fragment {
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

/// Why a WebSocket frame was refused; [`WsError::close_code`] is the status
/// the connection is closed with.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The header could not be parsed, or has a reserved opcode.
    #[error("bad websocket frame header")]
    BadHeader,
    /// Client frames must be masked (RFC 6455 5.1).
    #[error("unmasked client frame")]
    Unmasked,
    /// The payload, or a fragmented message so far, is larger than the
    /// frame limit (control frames: 125 bytes).
    #[error("websocket message of {0} bytes is larger than the limit")]
    TooLarge(u64),
    /// A reserved bit is set, and no extension was negotiated (RFC 6455 5.2).
    #[error("websocket frame with a reserved bit set")]
    ReservedBits,
    /// A text message: Tern frames travel in binary messages.
    #[error("websocket text message: Tern frames travel in binary messages")]
    Text,
    /// A continuation frame while no fragmented message was started.
    #[error("websocket continuation frame without a message to continue")]
    StrayContinuation,
    /// A new data message started before the fragmented one ended.
    #[error("websocket data frame inside a fragmented message")]
    Interleaved,
    /// A control frame without FIN: control frames are never fragmented.
    #[error("fragmented websocket control frame")]
    FragmentedControl,
}

impl WsError {
    /// The close status this error is answered with: 1009 (message too
    /// big), 1003 (unsupported data: text), 1002 (protocol error) for the
    /// rest.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 1009,
            Self::Text => 1003,
            _ => 1002,
        }
    }
}

/// Decodes one client frame from `buf`, checking the payload length against
/// `frame_bytes_max` before anything is copied.
///
/// `message` is the fragmented message being reassembled: `None` while
/// there is none. A first fragment sets it, each continuation adds to it
/// (never past `frame_bytes_max` in length or capacity), the last one takes
/// it out again as a [`WsDecoded::Frame`].
pub fn decode_message(
    buf: &[u8],
    frame_bytes_max: usize,
    message: &mut Option<Vec<u8>>,
) -> Result<WsDecoded, WsError> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(WsDecoded::NeedMore),
        Err(_) => return Err(WsError::BadHeader),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsError::ReservedBits);
    }
    let max = frame_bytes_max as u64;
    // Everything the header alone decides, before a byte of payload is
    // looked at or kept.
    match header.opcode {
        // FrameHeader::parse refuses reserved opcodes already.
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
            return Err(WsError::BadHeader);
        }
        OpCode::Control(_) => {
            if !header.is_final {
                return Err(WsError::FragmentedControl);
            }
            if len > 125 {
                return Err(WsError::TooLarge(len));
            }
        }
        OpCode::Data(Data::Continue) => {
            let Some(so_far) = message.as_ref() else {
                return Err(WsError::StrayContinuation);
            };
            let total = (so_far.len() as u64).saturating_add(len);
            if total > max {
                return Err(WsError::TooLarge(total));
            }
        }
        OpCode::Data(_) if message.is_some() => return Err(WsError::Interleaved),
        OpCode::Data(Data::Binary) => {
            if len > max {
                return Err(WsError::TooLarge(len));
            }
        }
        OpCode::Data(Data::Text) => return Err(WsError::Text),
    }
    let Some(mask) = header.mask else {
        return Err(WsError::Unmasked);
    };
    let start = cursor.position() as usize;
    // `len` is at most frame_bytes_max (or 125) here, so this cannot
    // overflow.
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(WsDecoded::NeedMore);
    }
    let payload = &buf[start..end];
    match header.opcode {
        OpCode::Data(Data::Binary) if header.is_final => Ok(WsDecoded::Frame {
            body: unmasked(payload, mask, Vec::with_capacity(payload.len())),
            consumed: end,
        }),
        OpCode::Data(Data::Binary) => {
            // Deliberate allocation: a fragmented message is kept only
            // while it is partial, and never beyond the frame limit.
            let mut m = Vec::new();
            grow_within(&mut m, payload.len(), frame_bytes_max);
            *message = Some(unmasked(payload, mask, m));
            Ok(WsDecoded::Fragment { consumed: end })
        }
        OpCode::Data(_) => {
            // A continuation: checked above that a message is partial and
            // that this fragment keeps it within the limit.
            let Some(mut m) = message.take() else {
                return Err(WsError::StrayContinuation);
            };
            grow_within(&mut m, payload.len(), frame_bytes_max);
            let m = unmasked(payload, mask, m);
            if header.is_final {
                return Ok(WsDecoded::Frame {
                    body: m,
                    consumed: end,
                });
            }
            *message = Some(m);
            Ok(WsDecoded::Fragment { consumed: end })
        }
        OpCode::Control(control) => Ok(control_frame(
            control,
            &unmasked(payload, mask, Vec::new()),
            end,
        )),
    }
}

/// Appends `payload` unmasked to `out`.
fn unmasked(payload: &[u8], mask: [u8; 4], mut out: Vec<u8>) -> Vec<u8> {
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Makes room for `more` bytes in a message that stays within `max`:
/// doubling (so many small fragments cost amortized linear copying), but
/// never reserving past `max`.
fn grow_within(m: &mut Vec<u8>, more: usize, max: usize) {
    let need = m.len() + more;
    if need > m.capacity() {
        let target = need.max(m.capacity().saturating_mul(2)).min(max.max(need));
        m.reserve_exact(target - m.len());
    }
}

/// What a control frame with `payload` (at most 125 bytes) asks for.
fn control_frame(control: Control, payload: &[u8], consumed: usize) -> WsDecoded {
    match control {
        Control::Ping => WsDecoded::Control {
            consumed,
            reply: Some(server_frame(OpCode::Control(Control::Pong), payload)),
            close: false,
        },
        Control::Close => {
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
            WsDecoded::Control {
                consumed,
                reply: Some(reply),
                close: true,
            }
        }
        // A pong (unsolicited ones included, RFC 6455 5.5.3) asks nothing;
        // reserved opcodes were refused with the header.
        Control::Pong | Control::Reserved(_) => WsDecoded::Control {
            consumed,
            reply: None,
            close: false,
        },
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

/// A close frame with `code`: 1002 (protocol error), 1003 (unsupported
/// data), 1009 (too big), or the peer's own code echoed.
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

    /// Decodes with no fragmented message in progress.
    fn decode(buf: &[u8], max: usize) -> Result<WsDecoded, WsError> {
        decode_message(buf, max, &mut None)
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
    /// oversized, unmasked and text frames are refused; ping gets a pong and
    /// close is echoed.
    #[test]
    fn frames_decode_and_bad_ones_are_typed() {
        let f = client_frame(OpCode::Data(Data::Binary), true, b"hello");
        match decode(&f, 64).unwrap() {
            WsDecoded::Frame { body, consumed } => {
                assert_eq!(body, b"hello");
                assert_eq!(consumed, f.len());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&f[..f.len() - 1], 64),
            Ok(WsDecoded::NeedMore)
        ));
        assert!(matches!(decode(&f[..1], 64), Ok(WsDecoded::NeedMore)));
        let big = client_frame(OpCode::Data(Data::Binary), true, &[0; 100]);
        assert!(matches!(
            decode(&big[..10], 64),
            Err(WsError::TooLarge(100))
        ));
        let text = client_frame(OpCode::Data(Data::Text), true, b"hi");
        assert!(matches!(decode(&text, 64), Err(WsError::Text)));
        let mut unmasked = Vec::new();
        encode_binary_header(2, &mut unmasked);
        unmasked.extend_from_slice(b"hi");
        assert!(matches!(decode(&unmasked, 64), Err(WsError::Unmasked)));
        let ping = client_frame(OpCode::Control(Control::Ping), true, b"p");
        assert!(matches!(
            decode(&ping, 64),
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
            decode(&close, 64),
            Ok(WsDecoded::Control { close: true, .. })
        ));
    }

    /// A fragmented binary message is reassembled across a ping between
    /// its fragments; its total is held to the limit at each fragment's
    /// header (1009 before the payload arrives); a stray continuation, a new
    /// data frame inside the message, a fragmented control frame and a
    /// reserved bit are protocol errors (1002); text is 1003.
    #[test]
    fn fragments_reassemble_within_the_limit() {
        let mut m = None;
        let first = client_frame(OpCode::Data(Data::Binary), false, b"he");
        assert!(matches!(
            decode_message(&first, 8, &mut m),
            Ok(WsDecoded::Fragment { consumed }) if consumed == first.len()
        ));
        assert_eq!(m.as_deref(), Some(&b"he"[..]));
        let ping = client_frame(OpCode::Control(Control::Ping), true, b"p");
        assert!(matches!(
            decode_message(&ping, 8, &mut m),
            Ok(WsDecoded::Control { reply: Some(_), .. })
        ));
        let mid = client_frame(OpCode::Data(Data::Continue), false, b"ll");
        assert!(matches!(
            decode_message(&mid, 8, &mut m),
            Ok(WsDecoded::Fragment { .. })
        ));
        let last = client_frame(OpCode::Data(Data::Continue), true, b"o");
        match decode_message(&last, 8, &mut m).unwrap() {
            WsDecoded::Frame { body, .. } => assert_eq!(body, b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(m.is_none(), "the message is gone once whole");
        // An empty first fragment starts a message too.
        let empty = client_frame(OpCode::Data(Data::Binary), false, b"");
        assert!(matches!(
            decode_message(&empty, 8, &mut m),
            Ok(WsDecoded::Fragment { .. })
        ));
        assert!(m.as_ref().is_some_and(Vec::is_empty));
        // Over the limit in total: refused from the header alone.
        let mut m = Some(b"1234567".to_vec());
        let over = client_frame(OpCode::Data(Data::Continue), false, b"89");
        let err = decode_message(&over[..6], 8, &mut m).unwrap_err();
        assert!(matches!(err, WsError::TooLarge(9)), "{err:?}");
        assert_eq!(err.close_code(), 1009);
        // A message of exactly the limit passes, its capacity within it.
        let mut m = Some(b"1234567".to_vec());
        let fits = client_frame(OpCode::Data(Data::Continue), true, b"8");
        match decode_message(&fits, 8, &mut m).unwrap() {
            WsDecoded::Frame { body, .. } => {
                assert_eq!(body.len(), 8);
                assert!(body.capacity() <= 8, "{}", body.capacity());
            }
            other => panic!("{other:?}"),
        }
        let code = |r: Result<WsDecoded, WsError>| r.unwrap_err().close_code();
        let cont = client_frame(OpCode::Data(Data::Continue), true, b"x");
        assert_eq!(code(decode_message(&cont, 8, &mut None)), 1002);
        let bin = client_frame(OpCode::Data(Data::Binary), true, b"x");
        assert_eq!(code(decode_message(&bin, 8, &mut Some(Vec::new()))), 1002);
        let text = client_frame(OpCode::Data(Data::Text), false, b"x");
        assert_eq!(code(decode_message(&text, 8, &mut Some(Vec::new()))), 1002);
        assert_eq!(code(decode_message(&text, 8, &mut None)), 1003);
        let ping = client_frame(OpCode::Control(Control::Ping), false, b"p");
        assert_eq!(code(decode_message(&ping, 8, &mut None)), 1002);
        let mut rsv = client_frame(OpCode::Data(Data::Binary), true, b"x");
        rsv[0] |= 0x40;
        assert_eq!(code(decode_message(&rsv, 8, &mut None)), 1002);
    }

    /// Many one-byte fragments grow the message by doubling, never past the
    /// limit.
    #[test]
    fn many_small_fragments_grow_by_doubling_within_the_limit() {
        let max = 1000;
        let mut m = None;
        let first = client_frame(OpCode::Data(Data::Binary), false, b"a");
        decode_message(&first, max, &mut m).unwrap();
        let mut grows = 0;
        let mut cap = m.as_ref().map_or(0, Vec::capacity);
        for _ in 1..max - 1 {
            let f = client_frame(OpCode::Data(Data::Continue), false, b"a");
            decode_message(&f, max, &mut m).unwrap();
            let now = m.as_ref().map_or(0, Vec::capacity);
            grows += usize::from(now != cap);
            cap = now;
            assert!(cap <= max, "{cap}");
        }
        assert!(grows <= 12, "{grows} reallocations");
        let last = client_frame(OpCode::Data(Data::Continue), true, b"a");
        match decode_message(&last, max, &mut m).unwrap() {
            WsDecoded::Frame { body, .. } => assert_eq!(body.len(), max),
            other => panic!("{other:?}"),
        }
    }

    /// A valid close code is echoed; an empty close gets an empty close; a
    /// 1-byte payload, a reserved or unassigned code, or a reason that is
    /// not UTF-8 gets 1002 (RFC 6455 7.4).
    #[test]
    fn invalid_close_codes_get_protocol_error() {
        let answer = |payload: &[u8]| {
            let f = client_frame(OpCode::Control(Control::Close), true, payload);
            match decode(&f, 64).unwrap() {
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
