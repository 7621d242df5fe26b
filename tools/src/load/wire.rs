//! The minimal client side of the peers' protocols, for side-by-side runs:
//! MQTT 3.1.1 (CONNECT, SUBSCRIBE, PUBLISH at QoS 0, PINGREQ) and the NATS
//! text protocol (CONNECT, SUB, PUB, PING/PONG). Tern itself uses
//! `tern_protocol::codec`.
//!
//! Encoders append to a buffer the caller owns; decoders look at the start of
//! a buffer and return one packet and the bytes it took, `Ok(None)` when more
//! bytes are needed, or a typed error. Every length from the peer is checked
//! against [`PEER_PACKET_BYTES_MAX`] before anything is kept. No I/O, no
//! clock: the payload timestamp is passed in.

/// Largest peer packet (MQTT remaining length, NATS line or payload) the load
/// client accepts, in bytes.
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
}

/// What a peer server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPacket {
    /// MQTT CONNACK with its return code (0: accepted).
    ConnAck(u8),
    /// MQTT SUBACK.
    SubAck,
    /// A message (MQTT PUBLISH, NATS MSG), with the stamp found in its payload.
    Message(Option<u64>),
    /// MQTT PINGRESP or NATS PONG.
    Pong,
    /// NATS PING from the server: answer with PONG.
    ServerPing,
    /// NATS INFO, +OK, or another MQTT packet type the client ignores.
    Ignored,
    /// NATS -ERR.
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
}
