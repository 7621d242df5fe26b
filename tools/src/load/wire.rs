//! The minimal client side of the peers' protocols, for side-by-side runs:
//! MQTT 3.1.1 (CONNECT, SUBSCRIBE, PUBLISH at QoS 0, PINGREQ), the NATS
//! text protocol (CONNECT, SUB, PUB, PING/PONG) and Redis pub/sub over RESP2
//! (PING, SUBSCRIBE, PUBLISH). Tern itself uses `tern_protocol::codec`.
//!
//! Encoders append to a buffer the caller owns; decoders look at the start of
//! a buffer and return one packet and the bytes it took, `Ok(None)` when more
//! bytes are needed, or a typed error. Every length from the peer is checked
//! against [`PEER_PACKET_BYTES_MAX`] before anything is kept. No I/O, no
//! clock: the payload timestamp is passed in.

/// Largest peer packet (MQTT remaining length, NATS line or payload, a whole
/// RESP2 reply) the load client accepts, in bytes.
pub const PEER_PACKET_BYTES_MAX: usize = 64 * 1024;

/// Prefix of every measured payload: `lt <monotonic ns> ` then padding.
pub const STAMP_PREFIX: &str = "lt ";

/// Why bytes from a peer server are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A length beyond [`PEER_PACKET_BYTES_MAX`].
    #[error("peer packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// An MQTT remaining length longer than 4 bytes.
    #[error("MQTT remaining length is malformed")]
    BadLength,
    /// A NATS line the client does not understand.
    #[error("unexpected NATS line: {0}")]
    BadLine(String),
    /// A RESP2 reply that breaks the spec or the client's limits
    /// ([`RESP_ITEMS_MAX`], [`RESP_DEPTH_MAX`]).
    #[error("malformed RESP reply: {0}")]
    BadReply(&'static str),
}

/// What a peer server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPacket {
    /// MQTT CONNACK with its return code (0: accepted).
    ConnAck(u8),
    /// MQTT SUBACK, Redis `subscribe` confirmation.
    SubAck,
    /// A message (MQTT PUBLISH, NATS MSG, Redis `message` push), with the
    /// stamp found in its payload.
    Message(Option<u64>),
    /// MQTT PINGRESP, NATS PONG, Redis `+PONG` or (subscribed) `pong` push.
    Pong,
    /// NATS PING from the server: answer with PONG.
    ServerPing,
    /// NATS INFO, +OK, another MQTT packet type, a Redis integer (PUBLISH's
    /// receiver count) or any other reply the client ignores.
    Ignored,
    /// NATS -ERR, a Redis error reply.
    Err(String),
}

/// Writes the timestamped payload of a measured message.
pub fn stamp(now_ns: u64, bytes: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(STAMP_PREFIX.as_bytes());
    out.extend_from_slice(now_ns.to_string().as_bytes());
    out.push(b' ');
    while out.len() - start < bytes {
        out.push(b'x');
    }
}

/// Reads the stamp back from a payload.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(STAMP_PREFIX.as_bytes())?;
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The stamp of a decoded entry: a text message's payload, if it has one.
pub fn entry_stamp(e: &tern_protocol::pb::Entry) -> Option<u64> {
    use tern_protocol::pb::{content::Kind, entry::Body};
    match &e.body {
        Some(Body::Message(m)) => match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(Kind::Text(t)) => read_stamp(t.text.as_bytes()),
            _ => None,
        },
        _ => None,
    }
}

// ---- MQTT 3.1.1 -------------------------------------------------------------

fn mqtt_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &[u8], out: &mut Vec<u8>) {
    // Callers pass ids and topics far below 64 KiB.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// MQTT CONNECT with a clean session.
pub fn mqtt_connect(client_id: &str, keepalive_s: u16, out: &mut Vec<u8>) {
    let rem = 10 + 2 + client_id.len();
    out.push(0x10);
    mqtt_len(rem, out);
    mqtt_str(b"MQTT", out);
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keepalive_s.to_be_bytes());
    mqtt_str(client_id.as_bytes(), out);
}

/// MQTT SUBSCRIBE to one topic at QoS 0.
pub fn mqtt_subscribe(packet_id: u16, topic: &str, out: &mut Vec<u8>) {
    out.push(0x82);
    mqtt_len(2 + 2 + topic.len() + 1, out);
    out.extend_from_slice(&packet_id.to_be_bytes());
    mqtt_str(topic.as_bytes(), out);
    out.push(0);
}

/// MQTT PUBLISH at QoS 0.
pub fn mqtt_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    mqtt_len(2 + topic.len() + payload.len(), out);
    mqtt_str(topic.as_bytes(), out);
    out.extend_from_slice(payload);
}

/// MQTT PINGREQ.
pub fn mqtt_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xC0, 0x00]);
}

/// Decodes one MQTT packet from the start of `buf`.
pub fn mqtt_decode(buf: &[u8]) -> Result<Option<(PeerPacket, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(WireError::BadLength);
        }
    }
    if len > PEER_PACKET_BYTES_MAX {
        return Err(WireError::TooLarge(len));
    }
    let end = i + len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[i..end];
    let p = match first >> 4 {
        2 => PeerPacket::ConnAck(body.get(1).copied().unwrap_or(0xff)),
        3 => {
            // Topic (u16 length + bytes), then (QoS > 0 only) a packet id.
            let tlen = body
                .get(..2)
                .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            let qos = (first >> 1) & 0x03;
            let skip = 2 + tlen + if qos > 0 { 2 } else { 0 };
            PeerPacket::Message(body.get(skip..).and_then(read_stamp))
        }
        9 => PeerPacket::SubAck,
        13 => PeerPacket::Pong,
        _ => PeerPacket::Ignored,
    };
    Ok(Some((p, end)))
}

// ---- NATS ------------------------------------------------------------------

/// NATS CONNECT followed by PING (its PONG ends the handshake).
pub fn nats_connect(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\"}\r\nPING\r\n");
}

/// NATS SUB followed by PING (its PONG confirms the subscription).
pub fn nats_subscribe(subject: &str, sid: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes());
}

/// NATS PUB.
pub fn nats_publish(subject: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// NATS PING (client heartbeat) or PONG (answer to the server's PING).
pub fn nats_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

/// NATS PONG.
pub fn nats_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

/// Decodes one NATS server operation from the start of `buf`.
pub fn nats_decode(buf: &[u8]) -> Result<Option<(PeerPacket, usize)>, WireError> {
    let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > PEER_PACKET_BYTES_MAX {
            return Err(WireError::TooLarge(buf.len()));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let after = nl + 2;
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let p = match &line[..word_end] {
        b"MSG" => {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let size: usize = line
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                .ok_or_else(|| WireError::BadLine(String::from_utf8_lossy(line).into()))?;
            if size > PEER_PACKET_BYTES_MAX {
                return Err(WireError::TooLarge(size));
            }
            let end = after + size + 2;
            if buf.len() < end {
                return Ok(None);
            }
            return Ok(Some((
                PeerPacket::Message(read_stamp(&buf[after..after + size])),
                end,
            )));
        }
        b"PING" => PeerPacket::ServerPing,
        b"PONG" => PeerPacket::Pong,
        b"INFO" | b"+OK" => PeerPacket::Ignored,
        b"-ERR" => PeerPacket::Err(String::from_utf8_lossy(line).into()),
        _ => return Err(WireError::BadLine(String::from_utf8_lossy(line).into())),
    };
    Ok(Some((p, after)))
}

// ---- Redis pub/sub (RESP2) -------------------------------------------------
//
// RESP2 (https://redis.io/docs/latest/develop/reference/protocol-spec/): a
// reply is `+line`, `-line`, `:integer`, `$len` then `len` bytes, or `*n`
// then n replies, every line ending in CRLF; `$-1` and `*-1` are null. A
// subscribed connection gets pushes as arrays: `message <channel>
// <payload>`, `subscribe <channel> <count>`, and `pong <arg>` for PING.

/// Most elements in one RESP2 array the client reads (pub/sub pushes have 3).
pub const RESP_ITEMS_MAX: usize = 16;

/// Deepest RESP2 array nesting the client reads: a top-level array may hold
/// arrays of scalars (pub/sub pushes are flat).
pub const RESP_DEPTH_MAX: usize = 2;

/// Writes one command as a RESP2 array of bulk strings. Writes the lengths
/// straight into `out`: no allocation per PUBLISH.
fn resp_command(args: &[&[u8]], out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Redis PING: the handshake (RESP2 has none; its `+PONG` says the server
/// answers) and the heartbeat (`pong` push once subscribed).
pub fn redis_ping(out: &mut Vec<u8>) {
    resp_command(&[b"PING"], out);
}

/// Redis SUBSCRIBE to one channel.
pub fn redis_subscribe(channel: &str, out: &mut Vec<u8>) {
    resp_command(&[b"SUBSCRIBE", channel.as_bytes()], out);
}

/// Redis PUBLISH (its reply is the receiver count, ignored).
pub fn redis_publish(channel: &str, payload: &[u8], out: &mut Vec<u8>) {
    resp_command(&[b"PUBLISH", channel.as_bytes(), payload], out);
}

/// Decodes one RESP2 reply from the start of `buf`. A whole reply (nested
/// elements included) is at most [`PEER_PACKET_BYTES_MAX`] bytes, checked
/// against every declared length before waiting for its bytes.
pub fn redis_decode(buf: &[u8]) -> Result<Option<(PeerPacket, usize)>, WireError> {
    let Some((head, mut at)) = resp_head(buf, 0)? else {
        return Ok(None);
    };
    let n = match head {
        RespHead::Array(n) => n,
        RespHead::Simple(b"PONG") => return Ok(Some((PeerPacket::Pong, at))),
        RespHead::Error(line) => {
            return Ok(Some((
                PeerPacket::Err(String::from_utf8_lossy(line).into()),
                at,
            )));
        }
        RespHead::Bulk(len) => return Ok(Some((PeerPacket::Ignored, at + len + 2))),
        RespHead::Simple(_) | RespHead::Int | RespHead::Null => {
            return Ok(Some((PeerPacket::Ignored, at)));
        }
    };
    // The first three elements, if bulk strings: kind, channel, payload.
    let mut items: [Option<&[u8]>; 3] = [None; 3];
    for k in 0..n {
        let Some((bulk, next)) = resp_skip(buf, at, 1)? else {
            return Ok(None);
        };
        if let Some(slot) = items.get_mut(k) {
            *slot = bulk;
        }
        at = next;
    }
    let p = match (items[0], n) {
        (Some(b"message"), 3) => {
            let payload =
                items[2].ok_or(WireError::BadReply("message payload is not a bulk string"))?;
            PeerPacket::Message(read_stamp(payload))
        }
        (Some(b"message"), _) => {
            return Err(WireError::BadReply("message push without 3 elements"));
        }
        (Some(b"subscribe"), _) => PeerPacket::SubAck,
        (Some(b"pong"), _) => PeerPacket::Pong,
        _ => PeerPacket::Ignored,
    };
    Ok(Some((p, at)))
}

/// The type line of a RESP2 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespHead<'a> {
    /// `+line`.
    Simple(&'a [u8]),
    /// `-line`.
    Error(&'a [u8]),
    /// `:integer`.
    Int,
    /// `$len`: the string's `len` bytes and CRLF follow (and are there).
    Bulk(usize),
    /// `*n`: n elements follow (n ≤ [`RESP_ITEMS_MAX`]).
    Array(usize),
    /// `$-1` or `*-1`.
    Null,
}

/// Reads the type line at `at` (an offset from the reply's start, so the
/// size checks bound the whole reply); returns it and where the next part
/// starts. A bulk string is returned only once its bytes are all in `buf`.
fn resp_head(buf: &[u8], at: usize) -> Result<Option<(RespHead<'_>, usize)>, WireError> {
    // `at` is always a boundary this decoder found inside `buf`.
    let rest = buf.get(at..).unwrap_or_default();
    let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > PEER_PACKET_BYTES_MAX {
            return Err(WireError::TooLarge(buf.len()));
        }
        return Ok(None);
    };
    let after = at + nl + 2;
    if after > PEER_PACKET_BYTES_MAX {
        return Err(WireError::TooLarge(after));
    }
    let Some((&kind, line)) = rest[..nl].split_first() else {
        return Err(WireError::BadReply("empty line"));
    };
    let head = match kind {
        b'+' => RespHead::Simple(line),
        b'-' => RespHead::Error(line),
        b':' => {
            resp_int(line)?;
            RespHead::Int
        }
        b'$' | b'*' => match resp_int(line)? {
            -1 => RespHead::Null,
            n if n < 0 => return Err(WireError::BadReply("negative length")),
            n if kind == b'*' => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > RESP_ITEMS_MAX {
                    return Err(WireError::BadReply("array has too many elements"));
                }
                RespHead::Array(n)
            }
            n => {
                let len = usize::try_from(n).unwrap_or(usize::MAX);
                let end = after.saturating_add(len).saturating_add(2);
                if end > PEER_PACKET_BYTES_MAX {
                    return Err(WireError::TooLarge(end));
                }
                if buf.len() < end {
                    return Ok(None);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return Err(WireError::BadReply("bulk string not ended by CRLF"));
                }
                RespHead::Bulk(len)
            }
        },
        _ => return Err(WireError::BadReply("unknown type byte")),
    };
    Ok(Some((head, after)))
}

/// An element [`resp_skip`] read whole: its bytes if it is a bulk string,
/// and where the next element starts.
type Skipped<'a> = (Option<&'a [u8]>, usize);

/// Skips one element at `at`, `depth` arrays deep (`Ok(None)`: not all
/// its bytes are there yet).
fn resp_skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<Skipped<'_>>, WireError> {
    let Some((head, mut next)) = resp_head(buf, at)? else {
        return Ok(None);
    };
    match head {
        RespHead::Bulk(len) => Ok(Some((Some(&buf[next..next + len]), next + len + 2))),
        RespHead::Array(n) => {
            if depth + 1 > RESP_DEPTH_MAX {
                return Err(WireError::BadReply("arrays nested too deep"));
            }
            for _ in 0..n {
                let Some((_, after)) = resp_skip(buf, next, depth + 1)? else {
                    return Ok(None);
                };
                next = after;
            }
            Ok(Some((None, next)))
        }
        _ => Ok(Some((None, next))),
    }
}

/// A RESP2 integer (or length) line.
fn resp_int(line: &[u8]) -> Result<i64, WireError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(WireError::BadReply("not an integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_publish_round_trips_and_splits() {
        // Proves a PUBLISH we encode decodes to its stamp, needs more bytes
        // when cut anywhere, and that a huge remaining length is refused.
        let mut payload = Vec::new();
        stamp(123_456, 40, &mut payload);
        assert_eq!(payload.len(), 40);
        let mut b = Vec::new();
        mqtt_publish("t/1", &payload, &mut b);
        assert_eq!(
            mqtt_decode(&b).unwrap(),
            Some((PeerPacket::Message(Some(123_456)), b.len()))
        );
        for cut in 0..b.len() {
            assert_eq!(mqtt_decode(&b[..cut]).unwrap(), None);
        }
        assert_eq!(
            mqtt_decode(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            Err(WireError::TooLarge(268_435_455))
        );
        assert_eq!(
            mqtt_decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(WireError::BadLength)
        );
        assert_eq!(
            mqtt_decode(&[0x20, 0x02, 0x00, 0x00]).unwrap(),
            Some((PeerPacket::ConnAck(0), 4))
        );
    }

    #[test]
    fn nats_messages_and_control_lines_decode() {
        // Proves MSG (with and without reply-to), PING/PONG, INFO and -ERR
        // decode, partial input waits, and an oversized MSG is refused.
        let mut payload = Vec::new();
        stamp(42, 10, &mut payload);
        let mut b = format!("MSG a.b 1 {}\r\n", payload.len()).into_bytes();
        b.extend_from_slice(&payload);
        b.extend_from_slice(b"\r\n");
        assert_eq!(
            nats_decode(&b).unwrap(),
            Some((PeerPacket::Message(Some(42)), b.len()))
        );
        assert_eq!(nats_decode(&b[..b.len() - 1]).unwrap(), None);
        let r = nats_decode(b"MSG a.b 1 r.x 2\r\nhi\r\n").unwrap();
        assert_eq!(r, Some((PeerPacket::Message(None), 21)));
        assert_eq!(
            nats_decode(b"PING\r\n").unwrap(),
            Some((PeerPacket::ServerPing, 6))
        );
        assert_eq!(
            nats_decode(b"PONG\r\nX").unwrap(),
            Some((PeerPacket::Pong, 6))
        );
        assert_eq!(
            nats_decode(b"INFO {}\r\n").unwrap(),
            Some((PeerPacket::Ignored, 9))
        );
        assert!(matches!(
            nats_decode(b"-ERR 'x'\r\n").unwrap(),
            Some((PeerPacket::Err(_), 10))
        ));
        assert_eq!(
            nats_decode(b"MSG a 1 999999999\r\n"),
            Err(WireError::TooLarge(999_999_999))
        );
        assert!(nats_decode(b"WHAT\r\n").is_err());
    }

    /// A RESP2 `message` push of `payload` on channel `ch`, as Redis writes it.
    fn resp_message(ch: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        resp_command(&[b"message", ch.as_bytes(), payload], &mut b);
        b
    }

    #[test]
    fn redis_commands_are_resp2_arrays_of_bulk_strings() {
        // Proves the three commands the client sends are what redis-server
        // reads (byte for byte against the RESP2 spec's request form).
        let mut b = Vec::new();
        redis_ping(&mut b);
        redis_subscribe("tl.g", &mut b);
        redis_publish("tl.g", b"hi", &mut b);
        assert_eq!(
            b,
            b"*1\r\n$4\r\nPING\r\n\
              *2\r\n$9\r\nSUBSCRIBE\r\n$4\r\ntl.g\r\n\
              *3\r\n$7\r\nPUBLISH\r\n$4\r\ntl.g\r\n$2\r\nhi\r\n"
                .as_slice()
        );
    }

    #[test]
    fn redis_pushes_and_replies_decode_and_wait_when_split() {
        // Proves a `message` push decodes to its stamp and needs more bytes
        // when cut anywhere; the subscribe confirmation, both PONG forms,
        // PUBLISH's integer, +OK, nulls and an error decode; two replies in
        // one buffer come out one at a time.
        let mut payload = Vec::new();
        stamp(987_654, 40, &mut payload);
        let b = resp_message("tl.L1-g0", &payload);
        assert_eq!(
            redis_decode(&b).unwrap(),
            Some((PeerPacket::Message(Some(987_654)), b.len()))
        );
        for cut in 0..b.len() {
            assert_eq!(redis_decode(&b[..cut]).unwrap(), None, "cut at {cut}");
        }
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$4\r\ntl.g\r\n:1\r\n";
        assert_eq!(
            redis_decode(sub).unwrap(),
            Some((PeerPacket::SubAck, sub.len()))
        );
        let pong = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        assert_eq!(
            redis_decode(pong).unwrap(),
            Some((PeerPacket::Pong, pong.len()))
        );
        assert_eq!(
            redis_decode(b"+PONG\r\n:3\r\n").unwrap(),
            Some((PeerPacket::Pong, 7))
        );
        assert_eq!(
            redis_decode(b":3\r\n").unwrap(),
            Some((PeerPacket::Ignored, 4))
        );
        for ignored in [
            &b"+OK\r\n"[..],
            b"$-1\r\n",
            b"*-1\r\n",
            b"$2\r\nab\r\n",
            b"*0\r\n",
        ] {
            assert_eq!(
                redis_decode(ignored).unwrap(),
                Some((PeerPacket::Ignored, ignored.len()))
            );
        }
        // Another kind of push (nested arrays allowed one level down).
        let other = b"*2\r\n$4\r\nkind\r\n*2\r\n:1\r\n$1\r\nx\r\n";
        assert_eq!(
            redis_decode(other).unwrap(),
            Some((PeerPacket::Ignored, other.len()))
        );
        assert_eq!(
            redis_decode(b"-ERR unknown command\r\n").unwrap(),
            Some((PeerPacket::Err("ERR unknown command".into()), 22))
        );
        // A message without a stamp still counts as a message.
        let plain = resp_message("c", b"hello");
        assert_eq!(
            redis_decode(&plain).unwrap(),
            Some((PeerPacket::Message(None), plain.len()))
        );
        let mut two = b.clone();
        two.extend_from_slice(pong);
        let (_, used) = redis_decode(&two).unwrap().unwrap();
        assert_eq!(
            redis_decode(&two[used..]).unwrap(),
            Some((PeerPacket::Pong, pong.len()))
        );
    }

    #[test]
    fn redis_malformed_replies_are_typed_errors() {
        // Proves bytes that break RESP2 or the client's limits are a typed
        // error, never a wait for bytes that will not make sense, and that a
        // huge declared length is refused before anything is buffered.
        let bad = |b: &[u8]| redis_decode(b).unwrap_err();
        assert_eq!(bad(b"?what\r\n"), WireError::BadReply("unknown type byte"));
        assert_eq!(bad(b"\r\n"), WireError::BadReply("empty line"));
        assert_eq!(bad(b"$abc\r\n"), WireError::BadReply("not an integer"));
        assert_eq!(bad(b":1.5\r\n"), WireError::BadReply("not an integer"));
        assert_eq!(bad(b"$-2\r\n"), WireError::BadReply("negative length"));
        assert_eq!(
            bad(b"$3\r\nabcXY"),
            WireError::BadReply("bulk string not ended by CRLF")
        );
        assert_eq!(
            bad(b"*17\r\n"),
            WireError::BadReply("array has too many elements")
        );
        assert_eq!(
            bad(b"*1\r\n*1\r\n*1\r\n:1\r\n"),
            WireError::BadReply("arrays nested too deep")
        );
        assert_eq!(
            bad(b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n"),
            WireError::BadReply("message push without 3 elements")
        );
        assert_eq!(
            bad(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n:5\r\n"),
            WireError::BadReply("message payload is not a bulk string")
        );
        assert_eq!(
            bad(b"$999999999\r\n"),
            WireError::TooLarge(999_999_999 + 14)
        );
        assert_eq!(
            bad(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$65536\r\n"),
            WireError::TooLarge(65_536 + 34)
        );
        let endless = vec![b'+'; PEER_PACKET_BYTES_MAX + 1];
        assert_eq!(
            bad(&endless),
            WireError::TooLarge(PEER_PACKET_BYTES_MAX + 1)
        );
    }

    proptest::proptest! {
        #[test]
        fn redis_decode_survives_arbitrary_bytes(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            // Proves arbitrary input never panics the decoder and a packet
            // it returns never claims more bytes than it was given.
            if let Ok(Some((_, used))) = redis_decode(&b) {
                proptest::prop_assert!(used > 0 && used <= b.len());
            }
        }

        #[test]
        fn redis_stream_decodes_the_same_however_it_is_split(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..5),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..6),
        ) {
            // Proves the worker's way of reading (keep the undecoded tail,
            // append the next read, decode again) yields the same packets
            // whatever the read boundaries: binary payloads holding CRLF
            // included.
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for p in &payloads {
                stream.extend_from_slice(&resp_message("tl.g", p));
                want.push(PeerPacket::Message(read_stamp(p)));
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut got, mut kept, mut from) = (Vec::new(), Vec::new(), 0);
            for c in cuts {
                kept.extend_from_slice(&stream[from..c]);
                from = c;
                let mut at = 0;
                while let Some((p, used)) = redis_decode(&kept[at..]).unwrap() {
                    got.push(p);
                    at += used;
                }
                kept.drain(..at);
            }
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert!(kept.is_empty());
        }
    }
}
