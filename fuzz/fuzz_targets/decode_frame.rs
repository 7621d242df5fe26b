//! Arbitrary bytes through the TCP framing decoder, the way a connection
//! driver feeds it (reads of varying sizes, unconsumed bytes kept), then
//! through client validation. Beyond "no panic, no overflow, no huge
//! allocation" it checks:
//!
//! - the frames decoded do not depend on how the stream was split into reads;
//! - `NeedMore(n)` never asks for more than the frame limit allows;
//! - every decoded frame re-encodes to something that decodes to itself;
//! - `decode_client_frame` agrees with `decode_frame`, except that it refuses
//!   exactly the server-only bodies;
//! - a frame that passes validation has a client body, and a refusal makes
//!   an `Error` frame that encodes.
//!
//! Input layout: byte 0 picks the frame limit, byte 1 seeds the read sizes,
//! the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tern_protocol::codec::{
    DecodeError, Decoded, PREFIX_BYTES_MAX, SERVER_ONLY_FIELDS, decode_body, decode_client_frame,
    decode_frame, encode_frame, frame_len,
};
use tern_protocol::pb;
use tern_protocol::validate::{ClientLimits, Refusal, Sender, body_kind, check_client_frame};

/// Frame limits to try; small ones reach FrameTooLarge with short inputs.
const LIMITS: [usize; 6] = [0, 1, 16, 300, 4096, 64 * 1024];

/// What a connection sees: frames, then possibly the error that ended it.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<pb::Frame>,
    /// Decode errors that did not close the connection (skipped frames).
    skipped: Vec<DecodeError>,
    /// The error that closed the connection, if any.
    fatal: Option<DecodeError>,
}

fuzz_target!(|data: &[u8]| {
    let [limit_pick, seed, stream @ ..] = data else {
        return;
    };
    let limit = LIMITS[usize::from(*limit_pick) % LIMITS.len()];

    let whole = drive(stream, limit, &mut std::iter::repeat(usize::MAX));
    let mut sizes = read_sizes(*seed);
    let split = drive(stream, limit, &mut sizes);
    assert_eq!(whole, split, "decoding must not depend on read boundaries");

    let limits = ClientLimits::default();
    for frame in &whole.frames {
        // Re-encoding a decoded frame round-trips (unknown fields are dropped,
        // so compare decoded forms, not bytes).
        let mut wire = Vec::new();
        encode_frame(frame, &mut wire);
        let Ok(Decoded::Frame {
            frame: again,
            consumed,
        }) = decode_frame(&wire, usize::MAX)
        else {
            panic!("a re-encoded frame must decode");
        };
        assert_eq!(consumed, wire.len());
        assert_eq!(&again, frame);
        assert_eq!(
            decode_body(&frame.encode_to_vec(), usize::MAX).as_ref(),
            Ok(frame)
        );

        match check_client_frame(frame, &limits) {
            Ok(()) => {
                let body = frame.body.as_ref().expect("a valid frame has a body");
                assert_ne!(body_kind(body).1, Sender::Server);
            }
            Err(refusal) => error_frame_encodes(refusal, frame.request_id),
        }
    }
    for e in whole.skipped.iter().chain(&whole.fatal) {
        error_frame_encodes(Refusal::from(e), 0);
    }
});

/// The driver loop of a connection. `sizes` yields read sizes (≥ 1 after
/// clamping). After a decode error that keeps the connection open, the bad
/// frame is skipped using `frame_len`, as the gateway does.
fn drive(stream: &[u8], limit: usize, sizes: &mut dyn Iterator<Item = usize>) -> Outcome {
    let mut out = Outcome {
        frames: Vec::new(),
        skipped: Vec::new(),
        fatal: None,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(usize::MAX).clamp(1, rest.len());
        pending.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let plain = decode_frame(&pending, limit);
            let client = decode_client_frame(&pending, limit);
            check_client_decode_agrees(&plain, &client);
            match plain {
                Ok(Decoded::Frame { frame, consumed }) => {
                    assert!(consumed <= pending.len());
                    assert!(consumed <= PREFIX_BYTES_MAX + limit);
                    out.frames.push(frame);
                    pending.drain(..consumed);
                }
                Ok(Decoded::NeedMore(more)) => {
                    assert!(more >= 1);
                    assert!(pending.len() + more <= PREFIX_BYTES_MAX + limit);
                    // The driver keeps at most one partial frame.
                    assert!(pending.len() < PREFIX_BYTES_MAX + limit);
                    break;
                }
                Err(e) if e.closes_connection() => {
                    out.fatal = Some(e);
                    return out;
                }
                Err(e) => {
                    // The frame's extent is known: skip it and go on.
                    let Ok(Some((prefix, body))) = frame_len(&pending, limit) else {
                        panic!("a non-fatal error comes from a whole frame: {e}");
                    };
                    out.skipped.push(e);
                    pending.drain(..prefix + body);
                }
            }
        }
    }
    out
}

fn check_client_decode_agrees(
    plain: &Result<Decoded, DecodeError>,
    client: &Result<Decoded, DecodeError>,
) {
    match (plain, client) {
        (
            Ok(Decoded::Frame { frame, .. }),
            Err(DecodeError::ServerOnly { field, request_id }),
        ) => {
            // Refused from a server-only key; prost's frame may still hold a
            // client body (a oneof keeps the last variant seen), so only the
            // field's range is checked. The request id read from the
            // envelope is the one prost reads.
            assert!(SERVER_ONLY_FIELDS.contains(field));
            assert_eq!(*request_id, frame.request_id);
        }
        (Ok(Decoded::Frame { frame, .. }), client) => {
            if let Some(body) = &frame.body {
                assert_ne!(
                    body_kind(body).1,
                    Sender::Server,
                    "server body slipped through"
                );
            }
            assert_eq!(client, plain);
        }
        (Err(DecodeError::Malformed(_)), Err(DecodeError::ServerOnly { .. })) => {}
        (plain, client) => assert_eq!(client, plain),
    }
}

fn error_frame_encodes(refusal: Refusal, request_id: u64) {
    let code = refusal.code;
    let frame = refusal.into_frame(request_id);
    let mut wire = Vec::new();
    encode_frame(&frame, &mut wire);
    let Ok(Decoded::Frame { frame, .. }) = decode_frame(&wire, usize::MAX) else {
        panic!("an error frame must decode");
    };
    let Some(pb::frame::Body::Error(e)) = frame.body else {
        panic!("an error frame")
    };
    assert_eq!(e.code, code as i32);
}

/// Read sizes from a tiny xorshift generator: mostly small reads (1 to 16
/// bytes), sometimes large ones, so frames straddle reads in every way.
fn read_sizes(seed: u8) -> impl Iterator<Item = usize> {
    let mut x = u32::from(seed) | 0x9E37_0000;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        Some(if x % 8 == 0 {
            (x >> 8) as usize % 4096
        } else {
            1 + (x >> 8) as usize % 16
        })
    })
}
