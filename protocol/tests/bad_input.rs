//! Bad input from the network: every case gives a typed error or `NeedMore`,
//! never a panic, and never an allocation sized by a length the peer claimed.
//!
//! The allocation half is shown with a counting global allocator (this test
//! binary only): [`measure`] records, for the current thread, how many
//! allocations a closure made, the largest one, and the peak of live bytes.
//! Tests run on parallel threads, so the counters are thread-local.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use prost::Message as _;
use tern_protocol::codec::{
    DecodeError, Decoded, FRAME_BYTES_MAX_DEFAULT, SERVER_ONLY_FIELDS, decode_body,
    decode_client_body, decode_client_frame, decode_frame, encode_frame, frame_len,
};
use tern_protocol::pb::{self, frame::Body};
use tern_protocol::validate::{ClientLimits, Refusal, Sender, body_kind, check_client_frame};

// ---- the counting allocator --------------------------------------------------

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn on_alloc(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            COUNT.with(|c| c.set(c.get() + 1));
            LARGEST.with(|l| l.set(l.get().max(size)));
            LIVE.with(|live| {
                live.set(live.get() + size as isize);
                PEAK.with(|p| p.set(p.get().max(live.get())));
            });
        }
    });
}

fn on_dealloc(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            LIVE.with(|live| live.set(live.get() - size as isize));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping touches only const-initialised thread-locals,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract; we pass it on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_dealloc(layout.size());
        // SAFETY: `ptr` came from `System` with this layout (we only forward).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_dealloc(layout.size());
        on_alloc(new_size);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What one closure allocated on this thread.
#[derive(Debug, Clone, Copy)]
struct Allocs {
    count: usize,
    largest: usize,
    peak_live: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocs) {
    COUNT.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    let allocs = Allocs {
        count: COUNT.with(Cell::get),
        largest: LARGEST.with(Cell::get),
        peak_live: PEAK.with(Cell::get).max(0) as usize,
    };
    (out, allocs)
}

// ---- wire helpers ------------------------------------------------------------

const MAX: usize = FRAME_BYTES_MAX_DEFAULT;

/// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

fn varint(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(v, &mut out);
    out
}

fn key(field: u32, wire: u8) -> Vec<u8> {
    varint(u64::from(field) << 3 | u64::from(wire))
}

/// A length-delimited field.
fn ld(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = key(field, LEN);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

fn with_prefix(body: &[u8]) -> Vec<u8> {
    let mut out = varint(body.len() as u64);
    out.extend_from_slice(body);
    out
}

fn frame(request_id: u64, body: Body) -> pb::Frame {
    pb::Frame {
        request_id,
        body: Some(body),
    }
}

fn ping(nonce: u64) -> pb::Frame {
    frame(0, Body::Ping(pb::Ping { nonce }))
}

fn text_send(request_id: u64, text: &str) -> pb::Frame {
    frame(
        request_id,
        Body::Send(pb::Send {
            client_msg_id: format!("m{request_id}"),
            to: Some(pb::send::To::GroupId("team".into())),
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
            }),
            mentions: vec!["alice".into()],
            ..Default::default()
        }),
    )
}

/// A valid `Frame` body of exactly `n` bytes (n = 0 or n ≥ 2): a `ping` padded
/// with an unknown field 9, which decoders skip.
fn body_of_len(n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    for head in [
        &[0x5A, 0x00][..],
        &[0x5A, 0x00, 0x08, 0x01],
        &[0x5A, 0x00, 0x08, 0x81, 0x01],
    ] {
        for pad in n.saturating_sub(12)..n {
            let mut body = head.to_vec();
            body.extend(ld(9, &vec![0xAB; pad]));
            if body.len() == n {
                return body;
            }
        }
    }
    unreachable!("some padding of {n} bytes fits")
}

/// The driver loop a transport runs: append what arrived, decode every whole
/// frame, keep the unconsumed tail for the next read.
fn drive<'a>(
    reads: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> Result<(Vec<pb::Frame>, usize), DecodeError> {
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    for read in reads {
        pending.extend_from_slice(read);
        loop {
            match decode_frame(&pending, max)? {
                Decoded::Frame { frame, consumed } => {
                    frames.push(frame);
                    pending.drain(..consumed);
                }
                Decoded::NeedMore(n) => {
                    assert!(n >= 1);
                    break;
                }
            }
        }
    }
    Ok((frames, pending.len()))
}

fn malformed(r: Result<Decoded, DecodeError>) -> String {
    match r {
        Err(e @ DecodeError::Malformed(_)) => {
            assert_eq!(e.code(), pb::ErrorCode::BadFrame);
            assert!(!e.closes_connection());
            e.to_string()
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn refusal(f: &pb::Frame) -> Refusal {
    check_client_frame(f, &ClientLimits::default()).expect_err("validation must refuse")
}

// ---- lengths ---------------------------------------------------------------

#[test]
fn a_claim_of_2_pow_63_bytes_is_refused_from_ten_bytes_without_allocating() {
    // Proves the limit is checked on the prefix alone: ten bytes claiming 2^63
    // give FrameTooLarge and the decoder allocates nothing at all.
    let buf = varint(1 << 63);
    assert_eq!(buf.len(), 10);
    let (r, allocs) = measure(|| decode_frame(&buf, MAX));
    assert_eq!(
        r,
        Err(DecodeError::FrameTooLarge {
            len: 1 << 63,
            max: MAX
        })
    );
    assert_eq!(allocs.count, 0, "{allocs:?}");
    let e = r.unwrap_err();
    assert_eq!(e.code(), pb::ErrorCode::FrameTooLarge);
    assert!(e.closes_connection());
}

#[test]
fn lengths_around_the_limit_and_far_beyond() {
    // Proves 0, limit−1 and limit are accepted (NeedMore until the body is
    // there, then a frame), limit+1, 2^32−1 and 2^64−1 are FrameTooLarge from
    // the prefix alone, and no decode allocates more than the body it holds.
    for len in [MAX - 1, MAX] {
        let body = body_of_len(len);
        let wire = with_prefix(&body);
        let prefix = wire.len() - len;
        // Only the prefix has arrived: the decoder asks for the body, keeps nothing.
        let (r, allocs) = measure(|| decode_frame(&wire[..prefix], MAX));
        assert_eq!(r, Ok(Decoded::NeedMore(len)));
        assert_eq!(allocs.count, 0);
        assert_eq!(frame_len(&wire, MAX), Ok(Some((prefix, len))));
        let (r, allocs) = measure(|| decode_frame(&wire, MAX));
        let Ok(Decoded::Frame { frame, consumed }) = r else {
            panic!("{len}: {r:?}")
        };
        assert_eq!(consumed, wire.len());
        assert!(allocs.largest <= len, "{len}: {allocs:?}");
        assert!(matches!(frame.body, Some(Body::Ping(_))));
    }

    // Length 0: a valid, empty frame; validation refuses it as BAD_FRAME.
    let r = decode_frame(&[0x00, 0xFF], MAX);
    let Ok(Decoded::Frame { frame, consumed: 1 }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(frame, pb::Frame::default());
    assert_eq!(refusal(&frame).code, pb::ErrorCode::BadFrame);
    assert_eq!(decode_body(&[], MAX), Ok(pb::Frame::default()));

    for len in [MAX as u64 + 1, u64::from(u32::MAX), u64::MAX] {
        let wire = varint(len);
        let (r, allocs) = measure(|| decode_frame(&wire, MAX));
        assert_eq!(r, Err(DecodeError::FrameTooLarge { len, max: MAX }));
        assert_eq!(
            frame_len(&wire, MAX),
            Err(DecodeError::FrameTooLarge { len, max: MAX })
        );
        assert_eq!(allocs.count, 0, "{len}");
    }
    // 2^64−1 is the largest 10-byte varint: 9 × 0xFF, then 0x01.
    assert_eq!(varint(u64::MAX), [&[0xFF; 9][..], &[0x01]].concat());

    // Over WebSocket the message length is the body length.
    let body = body_of_len(MAX + 1);
    let (r, allocs) = measure(|| decode_body(&body, MAX));
    assert_eq!(
        r,
        Err(DecodeError::FrameTooLarge {
            len: MAX as u64 + 1,
            max: MAX
        })
    );
    assert_eq!(allocs.count, 0);
    assert!(decode_body(&body_of_len(MAX), MAX).is_ok());
}

#[test]
fn overlong_varints_are_errors_and_partial_ones_need_more() {
    // Proves a prefix of more than 10 bytes, or a 10th byte above 1, is
    // VarintOverlong (closing the connection), while up to 9 continuation
    // bytes are still a partial prefix (NeedMore).
    let overlong = [0x80u8; 11];
    assert_eq!(
        decode_frame(&overlong, MAX),
        Err(DecodeError::VarintOverlong)
    );
    assert_eq!(
        decode_frame(&overlong[..10], MAX),
        Err(DecodeError::VarintOverlong)
    );
    let mut tenth_is_2 = vec![0x80u8; 9];
    tenth_is_2.push(0x02);
    assert_eq!(
        decode_frame(&tenth_is_2, MAX),
        Err(DecodeError::VarintOverlong)
    );
    assert!(DecodeError::VarintOverlong.closes_connection());
    assert_eq!(DecodeError::VarintOverlong.code(), pb::ErrorCode::BadFrame);
    for n in 1..=9 {
        assert_eq!(
            decode_frame(&overlong[..n], MAX),
            Ok(Decoded::NeedMore(1)),
            "{n}"
        );
        assert_eq!(frame_len(&overlong[..n], MAX), Ok(None));
    }
    // A non-minimal but valid 10-byte encoding of 0 is a 0-length frame.
    let mut zero = vec![0x80u8; 9];
    zero.push(0x00);
    assert_eq!(
        decode_frame(&zero, MAX),
        Ok(Decoded::Frame {
            frame: pb::Frame::default(),
            consumed: 10
        })
    );
}

#[test]
fn truncated_frames_need_more_and_inner_truncation_is_malformed() {
    // Proves a stream cut anywhere inside a frame is NeedMore, and a body
    // whose inner lengths run past the frame's own length is Malformed.
    let mut wire = Vec::new();
    encode_frame(&text_send(1, "hello there"), &mut wire);
    for cut in 0..wire.len() {
        assert!(
            matches!(decode_frame(&wire[..cut], MAX), Ok(Decoded::NeedMore(_))),
            "{cut}"
        );
    }
    // [08 01] is request_id; from byte 2 on, every cut falls inside `send`.
    let body = text_send(1, "hello there").encode_to_vec();
    for kept in 3..body.len() {
        malformed(decode_frame(&with_prefix(&body[..kept]), MAX));
    }
}

// ---- streams -----------------------------------------------------------------

#[test]
fn one_byte_reads_decode_a_stream_of_frames() {
    // Proves frames arriving one byte per read decode to the same frames, in
    // order, with nothing left over.
    let frames: Vec<_> = (1..=20)
        .map(|i| {
            if i % 3 == 0 {
                ping(i)
            } else {
                text_send(i, &"x".repeat(i as usize * 13))
            }
        })
        .collect();
    let mut wire = Vec::new();
    for f in &frames {
        encode_frame(f, &mut wire);
    }
    let (got, left) = drive(wire.chunks(1), MAX).unwrap();
    assert_eq!(got, frames);
    assert_eq!(left, 0);
}

#[test]
fn many_frames_in_one_read_all_decode() {
    // Proves one read holding 1,000 frames (and a partial one) yields every
    // whole frame and keeps only the partial tail.
    let mut wire = Vec::new();
    let frames: Vec<_> = (1..=1000).map(|i| text_send(i, "hi")).collect();
    for f in &frames {
        encode_frame(f, &mut wire);
    }
    let whole = wire.len();
    encode_frame(&ping(7), &mut wire);
    let (got, left) = drive([&wire[..wire.len() - 1]], MAX).unwrap();
    assert_eq!(got, frames);
    assert_eq!(left, wire.len() - 1 - whole);
}

// ---- protobuf-level malformations -------------------------------------------

#[test]
fn unknown_fields_are_skipped() {
    // Proves fields this schema does not know (every wire type, at the top and
    // nested inside known messages) are skipped: the frame decodes as if they
    // were absent, which is how newer clients stay compatible.
    let known = text_send(3, "hello");
    let mut unknown = Vec::new();
    unknown.extend([key(99, VARINT), varint(123456)].concat());
    unknown.extend([key(500, I64), vec![1; 8]].concat());
    unknown.extend([key(501, I32), vec![2; 4]].concat());
    unknown.extend(ld(502, b"future"));
    unknown.extend(
        [
            key(503, SGROUP),
            key(1, VARINT),
            varint(5),
            key(503, EGROUP),
        ]
        .concat(),
    );

    // At the top of the frame.
    let mut body = known.encode_to_vec();
    body.extend(&unknown);
    let wire = with_prefix(&body);
    assert_eq!(
        decode_frame(&wire, MAX),
        Ok(Decoded::Frame {
            frame: known.clone(),
            consumed: wire.len()
        })
    );
    // Inside Send (field 12), next to the known fields.
    let Some(Body::Send(send)) = &known.body else {
        unreachable!()
    };
    let mut send_bytes = send.encode_to_vec();
    send_bytes.extend(&unknown);
    let body = [key(1, VARINT), varint(3), ld(12, &send_bytes)].concat();
    assert_eq!(decode_body(&body, MAX), Ok(known));
}

#[test]
fn wrong_wire_types_are_malformed() {
    // Proves a known field sent with another wire type is Malformed.
    let cases: [Vec<u8>; 4] = [
        ld(1, b"x"),                           // request_id (varint) as bytes
        [key(10, VARINT), varint(1)].concat(), // auth (message) as varint
        [key(11, I32), vec![0; 4]].concat(),   // ping (message) as fixed32
        ld(11, &ld(1, b"nonce")),              // ping.nonce (varint) as bytes
    ];
    for body in cases {
        let msg = malformed(decode_frame(&with_prefix(&body), MAX));
        assert!(msg.contains("wire type"), "{msg}");
    }
}

#[test]
fn field_number_zero_and_bad_keys_are_malformed() {
    // Proves field number 0, the reserved wire types 6 and 7, a stray end
    // group and a key above u32 are Malformed, not skipped.
    let cases: [Vec<u8>; 5] = [
        [key(0, VARINT), varint(1)].concat(),
        ld(0, b"x"),
        vec![(9 << 3) | 6, 0],
        vec![(9 << 3) | 7, 0],
        key(9, EGROUP),
    ];
    for body in cases {
        malformed(decode_frame(&with_prefix(&body), MAX));
    }
    malformed(decode_frame(
        &with_prefix(&varint(u64::from(u32::MAX) + 1)),
        MAX,
    ));
}

#[test]
fn invalid_utf8_in_strings_is_malformed() {
    // Proves a string field holding invalid UTF-8 is Malformed, at the top
    // and nested (Send.content.text.text).
    let auth = ld(10, &ld(1, &[0xC3, 0x28]));
    malformed(decode_frame(&with_prefix(&auth), MAX));
    let text = ld(1, &[0x66, 0x6F, 0xFF]);
    let send = ld(12, &ld(4, &ld(1, &text)));
    let msg = malformed(decode_frame(&with_prefix(&send), MAX));
    assert!(msg.contains("UTF-8") || msg.contains("utf-8"), "{msg}");
}

// ---- nesting -------------------------------------------------------------------

#[test]
fn the_deepest_schema_nesting_decodes() {
    // Proves crafted bytes for the schema's deepest paths decode: a GroupEvent
    // inside an Entry inside a Deliver, and a thumbnail of an image of a
    // message of an entry. The schema has no recursive message, so known
    // fields cannot nest deeper than this (8 levels).
    let members = ld(1, b"alice");
    let group_event = ld(2, &members); // GroupEvent.joined = MembersChanged
    let entry = [
        ld(1, b"g:team"),
        key(2, VARINT),
        varint(7),
        ld(13, &group_event),
    ]
    .concat();
    let thumbnail = ld(1, b"thumb-1");
    let media = [ld(1, b"img-1"), ld(7, &thumbnail)].concat();
    let content = ld(2, &ld(1, &media)); // Content.image.media
    let message = ld(1, &content);
    let entry2 = [
        ld(1, b"g:team"),
        key(2, VARINT),
        varint(8),
        ld(10, &message),
    ]
    .concat();
    let deliver = [ld(1, &entry), ld(1, &entry2)].concat();
    let body = ld(103, &deliver);
    let Decoded::Frame { frame, .. } = decode_frame(&with_prefix(&body), MAX).unwrap() else {
        panic!("whole frame")
    };
    let Some(Body::Deliver(d)) = &frame.body else {
        panic!("deliver")
    };
    assert_eq!(d.entries.len(), 2);
    let Some(pb::entry::Body::GroupEvent(ev)) = &d.entries[0].body else {
        panic!("event")
    };
    let Some(pb::group_event::Kind::Joined(m)) = &ev.kind else {
        panic!("joined")
    };
    assert_eq!(m.user_ids, ["alice"]);
    // And a client may not send it.
    assert_eq!(refusal(&frame).code, pb::ErrorCode::ServerOnlyFrame);
}

#[test]
fn unknown_groups_nested_beyond_the_recursion_limit_are_malformed() {
    // Proves start-group fields nested past prost's limit of 100 levels are
    // Malformed (no stack overflow), even when a 64 KiB frame nests 16,000
    // levels, while 50 levels are skipped like any unknown field.
    fn nested_groups(depth: usize) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..depth {
            body.extend(key(9, SGROUP));
        }
        for _ in 0..depth {
            body.extend(key(9, EGROUP));
        }
        body
    }
    assert_eq!(
        decode_body(&nested_groups(50), MAX),
        Ok(pb::Frame::default())
    );
    for depth in [101, 1_000, MAX / 4] {
        let body = nested_groups(depth);
        let msg = malformed(decode_frame(&with_prefix(&body), MAX));
        assert!(msg.contains("recursion"), "{depth}: {msg}");
    }
}

#[test]
fn unknown_length_delimited_fields_nested_deeply_are_skipped_whole() {
    // Proves an unknown length-delimited field is skipped by its length,
    // without looking inside: 5,000 levels of nesting decode in one step.
    let mut inner = b"core".to_vec();
    for _ in 0..5_000 {
        inner = ld(9, &inner);
    }
    assert!(inner.len() < MAX);
    let body = [ld(11, &[]), inner].concat();
    assert_eq!(decode_body(&body, MAX), Ok(ping(0)));
}

// ---- packed fields and memory bounds -----------------------------------------

#[test]
fn millions_of_packed_elements_are_bounded_by_the_frame_limit() {
    // Proves a packed field with 3 million elements decodes when the limit
    // allows its 3 MB (memory at most 16 bytes per body byte: 8 per u64 and
    // ×2 for Vec growth), validation refuses the list, and under the default
    // 64 KiB limit the same frame is FrameTooLarge from its prefix alone.
    const N: usize = 3_000_000;
    let seqs = vec![0x01u8; N]; // N one-byte varints, each 1
    let read_by = [ld(1, b"g:team"), ld(2, &seqs)].concat();
    let body = [key(1, VARINT), varint(9), ld(22, &read_by)].concat();
    let wire = with_prefix(&body);

    let big_limit = 4 * 1024 * 1024;
    let (r, allocs) = measure(|| decode_frame(&wire, big_limit));
    let Ok(Decoded::Frame { frame, .. }) = r else {
        panic!("{r:?}")
    };
    let Some(Body::ReadBy(q)) = &frame.body else {
        panic!("read_by")
    };
    assert_eq!(q.seqs.len(), N);
    assert!(
        allocs.peak_live <= 16 * body.len(),
        "{allocs:?} for {} bytes",
        body.len()
    );
    let r = refusal(&frame);
    assert_eq!(r.code, pb::ErrorCode::InvalidArgument);
    assert!(r.reason.starts_with("read_by.seqs"), "{r}");

    let (r, allocs) = measure(|| decode_frame(&wire, MAX));
    assert_eq!(
        r,
        Err(DecodeError::FrameTooLarge {
            len: body.len() as u64,
            max: MAX
        })
    );
    assert_eq!(allocs.count, 0);
}

#[test]
fn decoded_memory_stays_within_a_fixed_multiple_of_the_frame() {
    // Proves the worst amplification we know of (many empty sub-messages, two
    // bytes each, each becoming a whole struct) stays within a fixed multiple
    // of the frame: at most CLIENT_AMPLIFICATION_MAX for what a client may
    // send, and server-only bodies from a client are refused before they are
    // built. Prints the measured ratios (`-- --nocapture`).
    const CLIENT_AMPLIFICATION_MAX: usize = 32;
    // Server frames decoded by a client (tools, tests): a struct per entry.
    const SERVER_AMPLIFICATION_MAX: usize = 256;
    let empties = |field: u32| -> Vec<u8> {
        let mut v = Vec::new();
        while v.len() + 2 <= MAX - 8 {
            v.extend(ld(field, &[]));
        }
        v
    };
    let client_cases = [
        ("deliver_ack.cursors", 13, empties(1)),
        ("sync.cursors", 14, empties(1)),
        ("auth.resume_cursors", 10, empties(6)),
        ("auth.capabilities", 10, empties(5)),
        ("presence_query.user_ids", 20, empties(1)),
        (
            "read_by.seqs (unpacked)",
            22,
            [key(2, VARINT), varint(1)].concat().repeat(MAX / 3),
        ),
    ];
    for (name, field, inner) in client_cases {
        let body = ld(field, &inner);
        assert!(body.len() <= MAX);
        let (r, allocs) = measure(|| decode_client_body(&body, MAX));
        assert!(r.is_ok(), "{name}: {r:?}");
        let ratio = allocs.peak_live / body.len();
        println!(
            "{name}: {} bytes -> peak {} bytes live ({ratio}x)",
            body.len(),
            allocs.peak_live
        );
        assert!(ratio <= CLIENT_AMPLIFICATION_MAX, "{name}: {allocs:?}");
    }
    for (name, field) in [("deliver.entries", 103), ("sync_result.entries", 104)] {
        let body = ld(field, &empties(1));
        let (r, allocs) = measure(|| decode_body(&body, MAX));
        assert!(r.is_ok(), "{name}: {r:?}");
        let ratio = allocs.peak_live / body.len();
        println!(
            "{name} (as a client decodes it): peak {} bytes ({ratio}x)",
            allocs.peak_live
        );
        assert!(ratio <= SERVER_AMPLIFICATION_MAX, "{name}: {allocs:?}");
        // The same bytes from a client: refused from the field key, unbuilt.
        let (r, allocs) = measure(|| decode_client_body(&body, MAX));
        assert_eq!(
            r,
            Err(DecodeError::ServerOnly {
                field,
                request_id: 0
            })
        );
        assert_eq!(allocs.count, 0, "{name}");
    }
}

#[test]
fn client_decoding_refuses_server_only_bodies_and_nothing_else() {
    // Proves decode_client_* refuses every server-only field number (even
    // after unknown fields and groups), with SERVER_ONLY_FRAME and without
    // closing, and decodes client frames, unknown server-range fields inside
    // groups, and malformed bytes exactly like decode_frame does.
    for field in SERVER_ONLY_FIELDS {
        let body = [key(1, VARINT), varint(4), ld(9, b"pad"), ld(field, &[])].concat();
        let refused = DecodeError::ServerOnly {
            field,
            request_id: 4,
        };
        let r = decode_client_frame(&with_prefix(&body), MAX);
        assert_eq!(r, Err(refused.clone()));
        let e = r.unwrap_err();
        assert_eq!(e.code(), pb::ErrorCode::ServerOnlyFrame);
        assert_eq!(e.request_id(), 4);
        assert!(!e.closes_connection());
        assert_eq!(decode_client_body(&body, MAX), Err(refused));
    }
    let mut wire = Vec::new();
    encode_frame(&text_send(2, "hi"), &mut wire);
    assert_eq!(decode_client_frame(&wire, MAX), decode_frame(&wire, MAX));
    // Field 103 inside an unknown group belongs to the group, not to Frame.
    let grouped = [ld(11, &[]), key(9, SGROUP), ld(103, &[]), key(9, EGROUP)].concat();
    assert_eq!(decode_client_body(&grouped, MAX), Ok(ping(0)));
    for bad in [vec![0x00], vec![0x5A, 0x05], vec![(9 << 3) | 7, 0]] {
        assert_eq!(
            decode_client_frame(&with_prefix(&bad), MAX),
            decode_frame(&with_prefix(&bad), MAX)
        );
    }
    // Limits come first.
    assert!(matches!(
        decode_client_frame(&varint(u64::MAX), MAX),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

// ---- validation of decoded frames ----------------------------------------------

#[test]
fn a_server_only_body_is_refused_with_the_frames_request_id() {
    // Proves the refusal of a server-only body names the request it answers:
    // the envelope's request_id is read wherever it sits (before or after the
    // body, last one wins, as protobuf decodes it), is 0 when absent, and is
    // not taken from inside the body or a group; still without building it.
    let cases: [(&str, Vec<u8>, u64); 6] = [
        (
            "before",
            [key(1, VARINT), varint(7), ld(103, &[])].concat(),
            7,
        ),
        (
            "after",
            [ld(119, &[]), key(1, VARINT), varint(300)].concat(),
            300,
        ),
        (
            "twice",
            [
                key(1, VARINT),
                varint(1),
                ld(120, &[]),
                key(1, VARINT),
                varint(2),
            ]
            .concat(),
            2,
        ),
        ("absent", ld(100, &[]), 0),
        (
            "inside the body",
            ld(101, &[key(1, VARINT), varint(9)].concat()),
            0,
        ),
        (
            "inside a group",
            [
                ld(118, &[]),
                key(9, SGROUP),
                key(1, VARINT),
                varint(5),
                key(9, EGROUP),
            ]
            .concat(),
            0,
        ),
    ];
    for (name, body, request_id) in cases {
        let (r, allocs) = measure(|| decode_client_body(&body, MAX));
        let e = r.expect_err(name);
        assert!(matches!(e, DecodeError::ServerOnly { .. }), "{name}: {e:?}");
        assert_eq!(e.request_id(), request_id, "{name}");
        assert_eq!(allocs.count, 0, "{name}");
        assert_eq!(
            Refusal::from(&e).into_frame(e.request_id()).request_id,
            request_id
        );
    }
    // Every other decode error answers with request_id 0.
    assert_eq!(DecodeError::VarintOverlong.request_id(), 0);
    let malformed =
        decode_client_body(&[key(1, VARINT), varint(3), vec![0x00]].concat(), MAX).unwrap_err();
    assert!(matches!(malformed, DecodeError::Malformed(_)));
    assert_eq!(malformed.request_id(), 0);
}

#[test]
fn out_of_range_enums_decode_but_validation_refuses_them() {
    // Proves enum values the schema does not define survive decoding (proto3
    // keeps them as i32) and are refused by validation as INVALID_ARGUMENT
    // naming the field.
    let auth = |platform| pb::Auth {
        token: "t".into(),
        device_id: "d1".into(),
        platform,
        ..Default::default()
    };
    let cases = [
        (frame(0, Body::Auth(auth(99))), "auth.platform"),
        (frame(0, Body::Auth(auth(-1))), "auth.platform"),
        (
            frame(
                1,
                Body::SetPresence(pb::SetPresenceRequest {
                    state: 9,
                    text: String::new(),
                }),
            ),
            "set_presence.state",
        ),
        (
            frame(
                1,
                Body::GroupSetRole(pb::GroupSetRole {
                    group_id: "g1".into(),
                    user_id: "u1".into(),
                    role: 4,
                }),
            ),
            "group_set_role.role",
        ),
        (
            frame(
                1,
                Body::GroupSetPolicy(pb::GroupSetPolicy {
                    group_id: "g1".into(),
                    join_policy: 3,
                    history_visible: false,
                }),
            ),
            "group_set_policy.join_policy",
        ),
        (
            frame(
                1,
                Body::GroupCreate(pb::GroupCreate {
                    join_policy: i32::MIN,
                    ..Default::default()
                }),
            ),
            "group_create.join_policy",
        ),
    ];
    for (f, field) in cases {
        let wire = f.encode_to_vec();
        let decoded = decode_body(&wire, MAX).expect("unknown enum values decode");
        assert_eq!(decoded, f);
        let r = refusal(&decoded);
        assert_eq!(r.code, pb::ErrorCode::InvalidArgument, "{field}");
        assert!(r.reason.starts_with(field), "{field}: {r}");
    }
}

#[test]
fn empty_zero_and_malformed_ids_are_refused() {
    // Proves empty ids, ids outside the alphabet, bad conversation ids,
    // request_id 0 on requests and seq 0 where a seq is needed are refused as
    // INVALID_ARGUMENT, with the field named.
    let send = |id: &str, to: &str| {
        let mut f = text_send(1, "hi");
        let Some(Body::Send(s)) = &mut f.body else {
            unreachable!()
        };
        s.client_msg_id = id.into();
        s.to = Some(pb::send::To::UserId(to.into()));
        f
    };
    let cases = [
        (send("", "bob"), "send.client_msg_id"),
        (send("m1", ""), "send.to.user_id"),
        (send("m1", "bob:x"), "send.to.user_id"),
        (send("m1", &"b".repeat(65)), "send.to.user_id"),
        (text_send(0, "hi"), "`send` is a request"),
        (
            frame(
                1,
                Body::FriendAccept(pb::FriendAccept {
                    user_id: String::new(),
                }),
            ),
            "friend_accept",
        ),
        (
            frame(
                1,
                Body::Recall(pb::RecallRequest {
                    conversation_id: "g:team".into(),
                    seq: 0,
                }),
            ),
            "recall.seq",
        ),
        (
            frame(
                1,
                Body::Read(pb::ReadRequest {
                    conversation_id: "d:bob:alice".into(),
                    up_to_seq: 1,
                }),
            ),
            "read.conversation_id",
        ),
        (
            frame(
                0,
                Body::DeliverAck(pb::DeliverAck {
                    cursors: vec![pb::Cursor {
                        conversation_id: "g:team".into(),
                        seq: 0,
                    }],
                }),
            ),
            "deliver_ack.cursors[0].seq",
        ),
        (
            frame(
                1,
                Body::History(pb::HistoryRequest {
                    conversation_id: String::new(),
                    ..Default::default()
                }),
            ),
            "history.conversation_id",
        ),
        (
            frame(
                0,
                Body::Auth(pb::Auth {
                    token: "t".into(),
                    ..Default::default()
                }),
            ),
            "auth.device_id",
        ),
    ];
    for (f, field) in cases {
        let r = refusal(&f);
        assert_eq!(r.code, pb::ErrorCode::InvalidArgument, "{field}");
        assert!(r.reason.contains(field), "{field}: {r}");
    }
}

#[test]
fn every_server_only_frame_from_a_client_is_refused() {
    // Proves each of the server's body variants, decoded from a client, is
    // refused with SERVER_ONLY_FRAME, whatever its request_id.
    let bodies = [
        Body::Welcome(Default::default()),
        Body::Pong(Default::default()),
        Body::SendAck(Default::default()),
        Body::Deliver(Default::default()),
        Body::SyncResult(Default::default()),
        Body::HistoryResult(Default::default()),
        Body::TypingEvent(Default::default()),
        Body::PresenceEvent(Default::default()),
        Body::PresenceResult(Default::default()),
        Body::ConversationsResult(Default::default()),
        Body::ReadByResult(Default::default()),
        Body::Event(Default::default()),
        Body::FriendListResult(Default::default()),
        Body::ProfileResult(Default::default()),
        Body::FriendRequestListResult(Default::default()),
        Body::GroupInfoResult(Default::default()),
        Body::GroupMembersResult(Default::default()),
        Body::GroupListResult(Default::default()),
        Body::DeviceListResult(Default::default()),
        Body::CallEvent(Default::default()),
        Body::CallSignalEvent(Default::default()),
        Body::Ok(Default::default()),
        Body::Error(Default::default()),
        Body::Kick(Default::default()),
        Body::PinsResult(Default::default()),
        Body::PushListResult(Default::default()),
        Body::RoomInfoResult(Default::default()),
        Body::RoomJoined(Default::default()),
        Body::RoomHistoryResult(Default::default()),
        Body::RoomDeliver(Default::default()),
        Body::RoomClosed(Default::default()),
    ];
    for body in bodies {
        assert_eq!(body_kind(&body).1, Sender::Server);
        for request_id in [0, 5] {
            let wire = frame(request_id, body.clone()).encode_to_vec();
            let decoded = decode_body(&wire, MAX).unwrap();
            let r = refusal(&decoded);
            assert_eq!(
                r.code,
                pb::ErrorCode::ServerOnlyFrame,
                "{}",
                body_kind(&body).0
            );
            let answer = r.into_frame(request_id);
            assert_eq!(answer.request_id, request_id);
            assert!(matches!(answer.body, Some(Body::Error(_))));
        }
    }
}

#[test]
fn decode_errors_become_error_frames() {
    // Proves a decode error converts into the Refusal (and Error frame) the
    // peer gets, with the protocol's code.
    let e = decode_frame(&varint(u64::MAX), MAX).unwrap_err();
    let r = Refusal::from(&e);
    assert_eq!(r.code, pb::ErrorCode::FrameTooLarge);
    let Some(Body::Error(err)) = r.into_frame(0).body else {
        panic!("error frame")
    };
    assert_eq!(err.code, pb::ErrorCode::FrameTooLarge as i32);
    assert!(err.reason.contains("exceeds"), "{}", err.reason);
}

#[test]
fn encoding_allocates_only_the_callers_buffer() {
    // Proves encode_frame/encode_body allocate nothing when the caller's
    // buffer has room, and grow it at most once when it has not.
    let frame = text_send(1, &"x".repeat(300));
    let mut out = Vec::with_capacity(1024);
    let ((), allocs) = measure(|| encode_frame(&frame, &mut out));
    assert_eq!(allocs.count, 0, "{allocs:?}");
    out.clear();
    let ((), allocs) = measure(|| tern_protocol::codec::encode_body(&frame, &mut out));
    assert_eq!(allocs.count, 0, "{allocs:?}");
    let mut empty = Vec::new();
    let ((), allocs) = measure(|| encode_frame(&frame, &mut empty));
    assert_eq!(allocs.count, 1, "{allocs:?}");
    assert_eq!(allocs.largest, empty.len());
}
