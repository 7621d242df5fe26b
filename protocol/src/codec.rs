//! Framing: how a [`pb::Frame`] travels over a byte stream (TCP) or a message
//! stream (WebSocket).
//!
//! Over TCP every frame body is preceded by its length as a protobuf varint
//! (protobuf's "delimited" format). Over WebSocket one binary message is one
//! frame body, with no prefix.
//!
//! The decoder is defensive: it reads the length prefix first and
//! checks it against the caller's `frame_bytes_max` before it looks at, keeps
//! or allocates anything for the body, so a peer that claims 2^63 bytes costs
//! ten bytes of reading. Short input is [`Decoded::NeedMore`], never an error:
//! the caller keeps the unconsumed bytes and calls again when more arrive.
//! The body itself is parsed by prost, which bounds nesting (100 levels) and
//! checks every inner length against the bytes that remain; `tests/bad_input.rs`
//! shows both rather than trusting them.
//!
//! [`decode_client_frame`] and [`decode_client_body`] also refuse a frame
//! whose body is one only the server sends (field numbers 100..=199) before
//! prost builds it: a 64 KiB `deliver` of empty entries would otherwise cost
//! about 10 MiB of structs just to be refused (see `tests/bad_input.rs`).
//!
//! The encoder appends to a buffer the caller owns and allocates nothing
//! else.
//!
//! This module never does I/O, never reads a clock, and never decides what a
//! frame may *mean*: that is [`crate::validate`].

use prost::Message as _;

use crate::pb;

/// Default for the largest frame body a peer may send, in bytes, without the
/// length prefix. Announced to clients as `Limits.frame_bytes_max`.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Longest length prefix, in bytes: a varint carries 7 bits per byte, and 64
/// bits need 10 bytes.
pub const PREFIX_BYTES_MAX: usize = 10;

/// Field numbers of `Frame.body` variants only the server sends (the schema
/// reserves 100..=199 for them).
pub const SERVER_ONLY_FIELDS: std::ops::RangeInclusive<u32> = 100..=199;

/// What [`decode_frame`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A whole frame: it took the first `consumed` bytes (prefix and body).
    Frame {
        /// The decoded frame.
        frame: pb::Frame,
        /// Bytes of the input the frame took, prefix included.
        consumed: usize,
    },
    /// The buffer holds the start of a frame but not all of it: at least this
    /// many more bytes (always ≥ 1) must arrive before the frame is whole.
    /// Exact once the length prefix is complete; 1 while it is not.
    NeedMore(usize),
}

/// Why bytes from a peer are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame body is longer than the limit. Detected from the length
    /// prefix alone, before any of the body was kept.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the peer claimed (or, over WebSocket, sent).
        len: u64,
        /// The limit it exceeded.
        max: usize,
    },
    /// The length prefix is not a valid varint: more than 10 bytes, or a
    /// 10th byte that would overflow 64 bits.
    #[error("frame length prefix is not a valid varint (overlong or overflowing)")]
    VarintOverlong,
    /// The body is not a valid `Frame`: bad protobuf (wire type, field number
    /// 0, truncated field, nesting beyond prost's limit) or a string that is
    /// not UTF-8. prost's message says which field.
    #[error("malformed frame: {0}")]
    Malformed(#[source] prost::DecodeError),
    /// A client sent a body only the server sends (its field number is in
    /// [`SERVER_ONLY_FIELDS`]). Only the `decode_client_*` functions check.
    #[error("frame field {field} is sent only by the server")]
    ServerOnly {
        /// The body's field number in `Frame`.
        field: u32,
        /// The frame's `request_id` (0 when it carried none), read from the
        /// envelope without building the body, so the `Error` that refuses
        /// the frame answers it like any other request (docs/protocol.md
        /// section 4).
        request_id: u64,
    },
}

impl DecodeError {
    /// The protocol's error code for this error, for the `Error` frame sent
    /// back to the peer.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => pb::ErrorCode::FrameTooLarge,
            Self::VarintOverlong | Self::Malformed(_) => pb::ErrorCode::BadFrame,
            Self::ServerOnly { .. } => pb::ErrorCode::ServerOnlyFrame,
        }
    }

    /// The `request_id` the `Error` answering this input carries: the
    /// frame's own for a server-only body, whose envelope was read; 0 for
    /// everything else (a body that does not decode has no trustworthy
    /// request id, and broken framing has no frame at all).
    pub fn request_id(&self) -> u64 {
        match self {
            Self::ServerOnly { request_id, .. } => *request_id,
            Self::FrameTooLarge { .. } | Self::VarintOverlong | Self::Malformed(_) => 0,
        }
    }

    /// Whether the connection must be closed after reporting this error.
    ///
    /// A bad length prefix or an oversized frame leaves a TCP stream with no
    /// known frame boundary (skipping an oversized body would mean reading
    /// data we promised not to keep), and the protocol says an oversized
    /// frame closes the connection on every transport. A malformed body has a
    /// known end, so the connection can answer with an error and go on.
    pub fn closes_connection(&self) -> bool {
        match self {
            Self::FrameTooLarge { .. } | Self::VarintOverlong => true,
            Self::Malformed(_) | Self::ServerOnly { .. } => false,
        }
    }
}

/// Decodes the first length-prefixed frame (TCP) from `buf`.
///
/// `buf` may hold less than one frame (then [`Decoded::NeedMore`]) or several
/// (then call again on `&buf[consumed..]`). A body longer than
/// `frame_bytes_max` is refused from its prefix alone.
///
/// After an error that does not [close the connection], the bad frame's
/// extent is known: [`frame_len`] gives it, and the caller skips
/// `prefix_len + body_len` bytes to reach the next frame.
///
/// [close the connection]: DecodeError::closes_connection
pub fn decode_frame(buf: &[u8], frame_bytes_max: usize) -> Result<Decoded, DecodeError> {
    decode_frame_with(buf, frame_bytes_max, parse_body)
}

/// [`decode_frame`] for bytes from a client: also refuses a server-only body
/// as [`DecodeError::ServerOnly`] before building it. What the gateway uses.
pub fn decode_client_frame(buf: &[u8], frame_bytes_max: usize) -> Result<Decoded, DecodeError> {
    decode_frame_with(buf, frame_bytes_max, parse_client_body)
}

fn decode_frame_with(
    buf: &[u8],
    frame_bytes_max: usize,
    parse: fn(&[u8]) -> Result<pb::Frame, DecodeError>,
) -> Result<Decoded, DecodeError> {
    let Some((prefix_len, body_len)) = frame_len(buf, frame_bytes_max)? else {
        // A partial prefix: at least one more byte ends or extends it.
        return Ok(Decoded::NeedMore(1));
    };
    // Both terms are bounded (≤ 10 and ≤ frame_bytes_max), so no overflow.
    let frame_end = prefix_len + body_len;
    if buf.len() < frame_end {
        return Ok(Decoded::NeedMore(frame_end - buf.len()));
    }
    let frame = parse(&buf[prefix_len..frame_end])?;
    Ok(Decoded::Frame {
        frame,
        consumed: frame_end,
    })
}

/// Reads only the length prefix at the start of `buf`: `Some((prefix_len,
/// body_len))`, or `None` while the prefix itself is incomplete.
///
/// The gateway uses it to decide how much of a partial frame to keep: with
/// `Some`, it knows the whole frame is `prefix_len + body_len` bytes, and that
/// this is within the limit.
pub fn frame_len(
    buf: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(PREFIX_BYTES_MAX).enumerate() {
        // The 10th byte holds bit 63 only: anything above 1 overflows, and a
        // continuation bit there would make the varint longer than 10 bytes.
        if i == PREFIX_BYTES_MAX - 1 && byte > 1 {
            return Err(DecodeError::VarintOverlong);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Compare as u64: the claimed length may not fit a usize.
            if value > frame_bytes_max as u64 {
                return Err(DecodeError::FrameTooLarge {
                    len: value,
                    max: frame_bytes_max,
                });
            }
            // `value ≤ frame_bytes_max`, a usize, so the cast is lossless.
            return Ok(Some((i + 1, value as usize)));
        }
    }
    Ok(None)
}

/// Decodes one frame body without prefix (one WebSocket binary message).
pub fn decode_body(body: &[u8], frame_bytes_max: usize) -> Result<pb::Frame, DecodeError> {
    if body.len() > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            len: body.len() as u64,
            max: frame_bytes_max,
        });
    }
    parse_body(body)
}

/// [`decode_body`] for a message from a client: also refuses a server-only
/// body as [`DecodeError::ServerOnly`] before building it.
pub fn decode_client_body(body: &[u8], frame_bytes_max: usize) -> Result<pb::Frame, DecodeError> {
    if body.len() > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            len: body.len() as u64,
            max: frame_bytes_max,
        });
    }
    parse_client_body(body)
}

/// Appends `frame` with its length prefix to `out` (TCP).
///
/// Reserves the exact size once, so `out` grows at most once; allocates
/// nothing else.
pub fn encode_frame(frame: &pb::Frame, out: &mut Vec<u8>) {
    let body_len = frame.encoded_len();
    out.reserve(prefix_len(body_len) + body_len);
    encode_prefix(body_len, out);
    encode_body_exact(frame, body_len, out);
}

/// Appends `frame`'s body, without prefix, to `out`: a WebSocket message, or
/// a body encoded once and sent to many connections (with [`encode_prefix`]
/// on TCP).
pub fn encode_body(frame: &pb::Frame, out: &mut Vec<u8>) {
    let body_len = frame.encoded_len();
    out.reserve(body_len);
    encode_body_exact(frame, body_len, out);
}

/// Appends the length prefix of a `body_len`-byte body to `out`.
pub fn encode_prefix(body_len: usize, out: &mut Vec<u8>) {
    prost::encoding::encode_varint(body_len as u64, out);
}

/// Bytes the length prefix of a `body_len`-byte body takes (1 to 10).
pub fn prefix_len(body_len: usize) -> usize {
    prost::encoding::encoded_len_varint(body_len as u64)
}

/// prost's decoder on an exact body. Every allocation it makes is bounded by
/// a length already checked against the bytes present in `body`.
fn parse_body(body: &[u8]) -> Result<pb::Frame, DecodeError> {
    pb::Frame::decode(body).map_err(DecodeError::Malformed)
}

fn parse_client_body(body: &[u8]) -> Result<pb::Frame, DecodeError> {
    let envelope = walk_envelope(body);
    if let Some(field) = envelope.server_only_field {
        return Err(DecodeError::ServerOnly {
            field,
            request_id: envelope.request_id,
        });
    }
    parse_body(body)
}

/// What [`walk_envelope`] read of a `Frame` without building it.
#[derive(Debug, Default)]
struct Envelope {
    /// The first top-level field whose number is server-only.
    server_only_field: Option<u32>,
    /// `Frame.request_id` as protobuf reads it (the last one wins), 0 when
    /// absent; only meaningful with `server_only_field`.
    request_id: u64,
}

/// Walks the top-level field keys of `body`, skipping values by their
/// lengths (no allocation, no recursion), for the first server-only field
/// and the request id. The walk goes on past the server-only field because
/// `request_id` may come after it. It stops at bytes that are not protobuf:
/// without a server-only field before them, prost then reports them (as
/// `Malformed`) in its own words.
fn walk_envelope(body: &[u8]) -> Envelope {
    let mut found = Envelope::default();
    let mut rest = body;
    // Start-group fields nest; inside them field numbers are not `Frame`'s.
    let mut group_depth: u32 = 0;
    while !rest.is_empty() {
        let Some(key) = take_varint(&mut rest) else {
            break;
        };
        let Ok(field) = u32::try_from(key >> 3) else {
            break;
        };
        let wire_type = key & 0x7;
        // An end-group key closes a group; any other key at depth 0 is a
        // field of `Frame` itself.
        let top_level = group_depth == 0 && wire_type != 4;
        if top_level && found.server_only_field.is_none() && SERVER_ONLY_FIELDS.contains(&field) {
            found.server_only_field = Some(field);
        }
        let skipped = match wire_type {
            0 => take_varint(&mut rest).map(|value| {
                if top_level && field == 1 {
                    found.request_id = value;
                }
            }),
            1 => rest.get(8..).map(|r| rest = r),
            2 => take_varint(&mut rest)
                .and_then(|len| usize::try_from(len).ok())
                .and_then(|len| rest.get(len..))
                .map(|r| rest = r),
            3 => group_depth.checked_add(1).map(|d| group_depth = d),
            4 => group_depth.checked_sub(1).map(|d| group_depth = d),
            5 => rest.get(4..).map(|r| rest = r),
            _ => None,
        };
        if skipped.is_none() {
            break;
        }
    }
    found
}

/// Reads a protobuf varint (at most 10 bytes) off the front of `rest`.
fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, &byte) in rest.iter().take(PREFIX_BYTES_MAX).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Encodes a body whose length the caller computed, so the message tree is
/// walked for its length once, not twice (`Message::encode` would recompute
/// it for a capacity check that a `Vec` always passes).
fn encode_body_exact(frame: &pb::Frame, body_len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    frame.encode_raw(out);
    debug_assert_eq!(
        out.len() - start,
        body_len,
        "prost wrote what encoded_len announced"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(request_id: u64, nonce: u64) -> pb::Frame {
        pb::Frame {
            request_id,
            body: Some(pb::frame::Body::Ping(pb::Ping { nonce })),
        }
    }

    #[test]
    fn a_frame_round_trips_with_and_without_prefix() {
        // Proves encode_frame = encode_prefix + encode_body and that both decode back.
        let frame = ping(7, 42);
        let mut tcp = Vec::new();
        encode_frame(&frame, &mut tcp);
        let mut ws = Vec::new();
        encode_body(&frame, &mut ws);
        let mut manual = Vec::new();
        encode_prefix(ws.len(), &mut manual);
        manual.extend_from_slice(&ws);
        assert_eq!(tcp, manual);
        assert_eq!(prefix_len(ws.len()), tcp.len() - ws.len());

        let Decoded::Frame {
            frame: got,
            consumed,
        } = decode_frame(&tcp, 64).unwrap()
        else {
            panic!("whole frame expected")
        };
        assert_eq!((got, consumed), (frame.clone(), tcp.len()));
        assert_eq!(decode_body(&ws, 64), Ok(frame));
    }

    #[test]
    fn short_input_needs_exactly_the_missing_bytes() {
        // Proves NeedMore counts the bytes still missing, for prefix and body.
        let mut buf = Vec::new();
        encode_frame(&ping(1, 300), &mut buf);
        assert_eq!(decode_frame(&[], 64), Ok(Decoded::NeedMore(1)));
        for cut in 1..buf.len() {
            assert_eq!(
                decode_frame(&buf[..cut], 64),
                Ok(Decoded::NeedMore(buf.len() - cut))
            );
        }
        // A prefix cut inside its varint needs at least one more byte.
        assert_eq!(
            decode_frame(&[0x80, 0x80], 1 << 20),
            Ok(Decoded::NeedMore(1))
        );
    }

    #[test]
    fn error_codes_and_closing_follow_the_protocol() {
        // Proves the mapping to pb::ErrorCode and which errors close the connection.
        let too_large = DecodeError::FrameTooLarge { len: 10, max: 9 };
        assert_eq!(too_large.code(), pb::ErrorCode::FrameTooLarge);
        assert!(too_large.closes_connection());
        assert_eq!(DecodeError::VarintOverlong.code(), pb::ErrorCode::BadFrame);
        assert!(DecodeError::VarintOverlong.closes_connection());
        let malformed = decode_body(&[0x00], 64).unwrap_err();
        assert!(matches!(malformed, DecodeError::Malformed(_)));
        assert_eq!(malformed.code(), pb::ErrorCode::BadFrame);
        assert!(!malformed.closes_connection());
    }
}
