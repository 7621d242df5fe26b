//! The load client's hot path for Tern deliveries: a borrowing reader of
//! `Deliver` (push) and `SyncResult` frames and a direct writer of
//! `DeliverAck` frames.
//!
//! Why hand-rolled: prost builds an owned `pb::Frame` per push (five
//! `String`s per entry, a `Vec` of entries), and the load client only needs
//! three things of each entry: the conversation id, the seq and the stamp in
//! the text. At fan-out saturation the client shares the cores with the
//! gateway, so every allocation per delivery is throughput the figures lose.
//! [`parse_entries`] reads a frame body in place and returns `None` for
//! anything it does not fully understand (a frame that is neither, a
//! body kind other than a text `Message`, a repeated sub-message prost would
//! merge, a group, bad UTF-8, a truncated field); the caller then decodes
//! with prost as before, so prost stays the judge of malformed input. The
//! tests check, on arbitrary frames, that whenever this reader answers,
//! prost decodes the same bytes to the same conversation ids, seqs and stamps.
//!
//! [`encode_deliver_ack`] writes exactly the bytes prost would for a
//! `Frame { request_id, deliver_ack }`, from borrowed ids, into the caller's
//! buffer.
//!
//! No I/O, no clock, no allocation.

use prost::encoding::{encode_varint, encoded_len_varint};

use super::wire;

/// One entry of a pushed `Deliver`, borrowed from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushEntry<'a> {
    /// `Entry.conversation_id`.
    pub conv: &'a str,
    /// `Entry.seq`.
    pub seq: u64,
    /// The stamp of a text message (`Message.content.text`), if it has one.
    pub stamp: Option<u64>,
}

/// Which frame carried the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntriesKind {
    /// A push (`Frame.deliver`).
    Deliver,
    /// The answer to a sync (`Frame.sync_result`).
    SyncResult,
}

/// A `Deliver` or `SyncResult` frame that [`parse_entries`] checked from end
/// to end.
#[derive(Debug, Clone, Copy)]
pub struct EntriesFrame<'a> {
    /// `Frame.request_id` (0 for a push).
    pub request_id: u64,
    /// Which frame it is.
    pub kind: EntriesKind,
    /// The body of the `Deliver` or `SyncResult` message; both carry their
    /// entries as field 1.
    body: &'a [u8],
}

impl<'a> EntriesFrame<'a> {
    /// The entries, in wire order.
    pub fn entries(&self) -> Entries<'a> {
        Entries { rest: self.body }
    }
}

/// Iterator over a checked frame's entries.
#[derive(Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = PushEntry<'a>;

    fn next(&mut self) -> Option<PushEntry<'a>> {
        // The body was walked once by `parse_entries` with the same code, so
        // every step succeeds; a `None` here would only end the iteration.
        loop {
            let mut r = Reader { buf: self.rest };
            if r.buf.is_empty() {
                return None;
            }
            let (field, wt) = r.key()?;
            if field == ENTRIES && wt == WT_LEN {
                let e = r.bytes()?;
                self.rest = r.buf;
                return parse_entry(e);
            }
            r.skip(wt)?;
            self.rest = r.buf;
        }
    }
}

/// Reads a `Frame` body (no length prefix) that carries a `Deliver` or a
/// `SyncResult`, without copying: `None` if it is anything else or anything
/// this reader does not handle, and the caller falls back to prost.
pub fn parse_entries(frame_body: &[u8]) -> Option<EntriesFrame<'_>> {
    let mut r = Reader { buf: frame_body };
    let mut request_id = 0;
    let mut found = None;
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            // A scalar: the last one wins, as in prost.
            (FRAME_REQUEST_ID, WT_VARINT) => request_id = r.varint()?,
            // A second body prost would merge or replace: let prost do it.
            (FRAME_DELIVER, WT_LEN) if found.is_none() => {
                found = Some((EntriesKind::Deliver, r.bytes()?));
            }
            (FRAME_SYNC_RESULT, WT_LEN) if found.is_none() => {
                found = Some((EntriesKind::SyncResult, r.bytes()?));
            }
            _ => return None,
        }
    }
    let (kind, body) = found?;
    // Walk every field now, so iterating later cannot meet a surprise.
    let mut r = Reader { buf: body };
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (kind, field, wt) {
            (_, ENTRIES, WT_LEN) => {
                parse_entry(r.bytes()?)?;
            }
            (EntriesKind::SyncResult, SYNC_HEADS, WT_LEN) => parse_cursor(r.bytes()?)?,
            (EntriesKind::SyncResult, SYNC_MORE, WT_VARINT) => {
                r.varint()?;
            }
            (_, ENTRIES, _) => return None,
            (EntriesKind::SyncResult, SYNC_HEADS | SYNC_MORE, _) => return None,
            (_, _, wt) => r.skip(wt)?,
        }
    }
    Some(EntriesFrame {
        request_id,
        kind,
        body,
    })
}

/// Appends a length-prefixed `Frame { request_id, deliver_ack: DeliverAck {
/// cursors } }` to `out`, byte for byte what prost encodes for the same
/// message (fields in order, defaults omitted). Reserves once.
/// `cursors` is walked twice (sizes, then bytes), hence `Clone`.
pub fn encode_deliver_ack<'a>(
    request_id: u64,
    cursors: impl Iterator<Item = (&'a str, u64)> + Clone,
    out: &mut Vec<u8>,
) {
    let ack_len: usize = cursors
        .clone()
        .map(|(conv, seq)| {
            let n = cursor_len(conv, seq);
            1 + encoded_len_varint(n as u64) + n
        })
        .sum();
    let mut body_len = 1 + encoded_len_varint(ack_len as u64) + ack_len;
    if request_id != 0 {
        body_len += 1 + encoded_len_varint(request_id);
    }
    out.reserve(encoded_len_varint(body_len as u64) + body_len);
    encode_varint(body_len as u64, out);
    if request_id != 0 {
        out.push(key_byte(FRAME_REQUEST_ID, WT_VARINT));
        encode_varint(request_id, out);
    }
    out.push(key_byte(FRAME_DELIVER_ACK, WT_LEN));
    encode_varint(ack_len as u64, out);
    for (conv, seq) in cursors {
        out.push(key_byte(DELIVER_ACK_CURSORS, WT_LEN));
        encode_varint(cursor_len(conv, seq) as u64, out);
        if !conv.is_empty() {
            out.push(key_byte(CURSOR_CONV, WT_LEN));
            encode_varint(conv.len() as u64, out);
            out.extend_from_slice(conv.as_bytes());
        }
        if seq != 0 {
            out.push(key_byte(CURSOR_SEQ, WT_VARINT));
            encode_varint(seq, out);
        }
    }
}

// ---- schema (protocol/proto/tern/v1/tern.proto) ------------------------------

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

const FRAME_REQUEST_ID: u32 = 1;
const FRAME_DELIVER_ACK: u32 = 13;
const FRAME_DELIVER: u32 = 103;
const FRAME_SYNC_RESULT: u32 = 104;
/// `Deliver.entries` and `SyncResult.entries`.
const ENTRIES: u32 = 1;
const SYNC_HEADS: u32 = 2;
const SYNC_MORE: u32 = 3;
const DELIVER_ACK_CURSORS: u32 = 1;
const CURSOR_CONV: u32 = 1;
const CURSOR_SEQ: u32 = 2;
const ENTRY_CONV: u32 = 1;
const ENTRY_SEQ: u32 = 2;
const ENTRY_SENDER: u32 = 3;
const ENTRY_SENDER_DEVICE: u32 = 4;
const ENTRY_CLIENT_MSG_ID: u32 = 5;
const ENTRY_TIME_MS: u32 = 6;
const ENTRY_MESSAGE: u32 = 10;
const ENTRY_BODY_OTHERS: std::ops::RangeInclusive<u32> = 11..=13;
const MESSAGE_CONTENT: u32 = 1;
const MESSAGE_MENTIONS: u32 = 2;
const MESSAGE_SCALARS: std::ops::RangeInclusive<u32> = 3..=5;
const CONTENT_TEXT: u32 = 1;
const CONTENT_KINDS_OTHERS: std::ops::RangeInclusive<u32> = 2..=7;
const TEXT_TEXT: u32 = 1;

/// Longest varint, in bytes.
const VARINT_BYTES_MAX: usize = 10;

fn key_byte(field: u32, wt: u8) -> u8 {
    // Every field written here is below 16, so its key fits one byte.
    debug_assert!(field < 16);
    ((field << 3) as u8) | wt
}

fn cursor_len(conv: &str, seq: u64) -> usize {
    let mut n = 0;
    if !conv.is_empty() {
        n += 1 + encoded_len_varint(conv.len() as u64) + conv.len();
    }
    if seq != 0 {
        n += 1 + encoded_len_varint(seq);
    }
    n
}

/// `Cursor` (a sync's heads): checked only, as prost would (UTF-8 id).
fn parse_cursor(buf: &[u8]) -> Option<()> {
    let mut r = Reader { buf };
    while !r.buf.is_empty() {
        match r.key()? {
            (CURSOR_CONV, WT_LEN) => {
                r.string()?;
            }
            (CURSOR_SEQ, WT_VARINT) => {
                r.varint()?;
            }
            (CURSOR_CONV | CURSOR_SEQ, _) => return None,
            (_, wt) => r.skip(wt)?,
        }
    }
    Some(())
}

/// `Entry`: conversation id, seq, and the stamp of a text message.
fn parse_entry(buf: &[u8]) -> Option<PushEntry<'_>> {
    let mut r = Reader { buf };
    let mut conv = "";
    let mut seq = 0;
    let mut message: Option<&[u8]> = None;
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            // Scalars: the last one wins, as in prost.
            (ENTRY_CONV, WT_LEN) => conv = r.string()?,
            (ENTRY_SEQ, WT_VARINT) => seq = r.varint()?,
            (ENTRY_SENDER | ENTRY_SENDER_DEVICE | ENTRY_CLIENT_MSG_ID, WT_LEN) => {
                r.string()?;
            }
            (ENTRY_TIME_MS, WT_VARINT) => {
                r.varint()?;
            }
            (ENTRY_MESSAGE, WT_LEN) if message.is_none() => message = Some(r.bytes()?),
            // Another body kind, a second body (prost merges), a known field
            // with the wrong wire type: prost decides.
            (ENTRY_CONV..=ENTRY_TIME_MS | ENTRY_MESSAGE, _) => return None,
            (f, _) if ENTRY_BODY_OTHERS.contains(&f) => return None,
            (_, wt) => r.skip(wt)?,
        }
    }
    let stamp = match message {
        Some(m) => parse_message(m)?,
        None => None,
    };
    Some(PushEntry { conv, seq, stamp })
}

/// `Message`: `Some(stamp)` when its content is a text (the stamp itself may
/// be absent), `None` for anything left to prost.
fn parse_message(buf: &[u8]) -> Option<Option<u64>> {
    let mut r = Reader { buf };
    let mut content: Option<&[u8]> = None;
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (MESSAGE_CONTENT, WT_LEN) if content.is_none() => content = Some(r.bytes()?),
            (MESSAGE_MENTIONS, WT_LEN) => {
                r.string()?;
            }
            (f, WT_VARINT) if MESSAGE_SCALARS.contains(&f) => {
                r.varint()?;
            }
            (f, _) if f <= *MESSAGE_SCALARS.end() => return None,
            (_, wt) => r.skip(wt)?,
        }
    }
    let Some(content) = content else {
        return Some(None);
    };
    let mut r = Reader { buf: content };
    let mut text: Option<&[u8]> = None;
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (CONTENT_TEXT, WT_LEN) if text.is_none() => text = Some(r.bytes()?),
            (CONTENT_TEXT, _) => return None,
            (f, _) if CONTENT_KINDS_OTHERS.contains(&f) => return None,
            (_, wt) => r.skip(wt)?,
        }
    }
    let Some(text) = text else {
        return Some(None);
    };
    let mut r = Reader { buf: text };
    let mut s: &[u8] = b"";
    while !r.buf.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (TEXT_TEXT, WT_LEN) => s = r.string()?.as_bytes(),
            (TEXT_TEXT, _) => return None,
            (_, wt) => r.skip(wt)?,
        }
    }
    Some(wire::read_stamp(s))
}

/// A cursor over protobuf wire data; every method returns `None` where prost
/// would fail (or might: this reader is never more lenient than prost).
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for (i, &b) in self.buf.iter().take(VARINT_BYTES_MAX).enumerate() {
            // The 10th byte may only carry bit 63 (prost refuses more).
            if i == VARINT_BYTES_MAX - 1 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u32, u8)> {
        let k = self.varint()?;
        let k = u32::try_from(k).ok()?;
        let (field, wt) = (k >> 3, (k & 7) as u8);
        // Field 0 is invalid; groups (3, 4) and wire types 6, 7 go to prost.
        if field == 0 || !matches!(wt, WT_VARINT | WT_I64 | WT_LEN | WT_I32) {
            return None;
        }
        Some((field, wt))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(b)
    }

    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn skip(&mut self, wt: u8) -> Option<()> {
        match wt {
            WT_VARINT => {
                self.varint()?;
            }
            WT_I64 | WT_I32 => {
                let n = if wt == WT_I64 { 8 } else { 4 };
                self.buf = self.buf.get(n..)?;
            }
            WT_LEN => {
                self.bytes()?;
            }
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;
    use tern_protocol::pb::{self, frame::Body};

    use super::*;

    type Seen = (u64, EntriesKind, Vec<(String, u64, Option<u64>)>);

    /// What prost makes of a frame body, in the reader's terms.
    fn by_prost(body: &[u8]) -> Option<Seen> {
        let f = pb::Frame::decode(body).ok()?;
        let (kind, entries) = match f.body {
            Some(Body::Deliver(d)) => (EntriesKind::Deliver, d.entries),
            Some(Body::SyncResult(r)) => (EntriesKind::SyncResult, r.entries),
            _ => return None,
        };
        let entries = entries
            .into_iter()
            .map(|e| {
                let stamp = wire::entry_stamp(&e);
                (e.conversation_id, e.seq, stamp)
            })
            .collect();
        Some((f.request_id, kind, entries))
    }

    fn by_reader(body: &[u8]) -> Option<Seen> {
        let v = parse_entries(body)?;
        let entries = v
            .entries()
            .map(|e| (e.conv.to_string(), e.seq, e.stamp))
            .collect();
        Some((v.request_id, v.kind, entries))
    }

    fn text_entry(conv: &str, seq: u64, text: &str) -> pb::Entry {
        pb::Entry {
            conversation_id: conv.into(),
            seq,
            sender: "alice".into(),
            sender_device: "d0".into(),
            client_msg_id: "r.1.1".into(),
            time_ms: 1_700_000_000_000,
            body: Some(pb::entry::Body::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
                }),
                mentions: vec!["bob".into()],
                mention_all: true,
                reply_to_seq: 3,
                recalled: false,
                edit_count: 0,
                edited_at_ms: 0,
                reactions: vec![],
                streaming: false,
                thread_root_seq: 0,
                thread: None,
            })),
        }
    }

    fn body_of(f: &pb::Frame) -> Vec<u8> {
        f.encode_to_vec()
    }

    #[test]
    fn a_server_push_reads_like_prost() {
        // Proves a push as the gateway sends it (one text entry with a stamp)
        // is read in place to the same conversation, seq and stamp as prost.
        let f = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver {
                entries: vec![text_entry("g:load-g0", 42, "lt 123456789 xxxx")],
            })),
        };
        let b = body_of(&f);
        let got = by_reader(&b).unwrap();
        let want = vec![("g:load-g0".to_string(), 42, Some(123_456_789))];
        assert_eq!(got, (0, EntriesKind::Deliver, want.clone()));
        assert_eq!(Some(got), by_prost(&b));
        // The same entry in a sync answer, with heads and `more`.
        let f = pb::Frame {
            request_id: 9,
            body: Some(Body::SyncResult(pb::SyncResult {
                entries: vec![text_entry("g:load-g0", 42, "lt 123456789 xxxx")],
                heads: vec![pb::Cursor {
                    conversation_id: "g:load-g0".into(),
                    seq: 50,
                }],
                more: true,
            })),
        };
        let b = body_of(&f);
        let got = by_reader(&b).unwrap();
        assert_eq!(got, (9, EntriesKind::SyncResult, want));
        assert_eq!(Some(got), by_prost(&b));
    }

    #[test]
    fn what_the_reader_does_not_handle_goes_to_prost() {
        // Proves other frames, other entry kinds and non-text content make the
        // reader step aside (None), so prost decodes them as before.
        let pong = pb::Frame {
            request_id: 7,
            body: Some(Body::Pong(pb::Pong {
                nonce: 7,
                server_time_ms: 1,
            })),
        };
        assert!(parse_entries(&body_of(&pong)).is_none());
        let recalled = pb::Entry {
            conversation_id: "c".into(),
            seq: 1,
            body: Some(pb::entry::Body::Recalled(pb::Recalled { seq: 1 })),
            ..Default::default()
        };
        let f = pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver {
                entries: vec![recalled],
            })),
        };
        assert!(parse_entries(&body_of(&f)).is_none());
        let mut b = body_of(&pb::Frame {
            request_id: 0,
            body: Some(Body::Deliver(pb::Deliver {
                entries: vec![text_entry("c", 1, "lt 5 x")],
            })),
        });
        // A second Deliver field: prost merges, the reader steps aside.
        let again = b.clone();
        b.extend_from_slice(&again);
        assert!(parse_entries(&b).is_none());
        assert!(by_prost(&b).is_some());
        // Truncated anywhere: never an answer prost would not give.
        for cut in 0..again.len() {
            if let Some(v) = by_reader(&again[..cut]) {
                assert_eq!(Some(v), by_prost(&again[..cut]));
            }
        }
    }

    #[test]
    fn deliver_ack_bytes_are_prosts() {
        // Proves the hand-written DeliverAck is byte for byte prost's, with a
        // request id and without, and with defaults (empty id, seq 0) omitted.
        let cases: &[(u64, &[(&str, u64)])] = &[
            (5, &[("g:load-g0", 7)]),
            (0, &[("a", 1), ("b", u64::MAX)]),
            (u64::MAX, &[("", 0), ("x", 300)]),
        ];
        for &(rid, cursors) in cases {
            let mut mine = Vec::new();
            encode_deliver_ack(rid, cursors.iter().copied(), &mut mine);
            let f = pb::Frame {
                request_id: rid,
                body: Some(Body::DeliverAck(pb::DeliverAck {
                    cursors: cursors
                        .iter()
                        .map(|&(c, s)| pb::Cursor {
                            conversation_id: c.into(),
                            seq: s,
                        })
                        .collect(),
                })),
            };
            let mut theirs = Vec::new();
            tern_protocol::codec::encode_frame(&f, &mut theirs);
            assert_eq!(mine, theirs);
        }
    }

    fn arb_entry() -> impl Strategy<Value = pb::Entry> {
        let text = prop_oneof![
            any::<u64>().prop_map(|ns| format!("lt {ns} xx")),
            "\\PC{0,12}",
            Just("lt ".to_string()),
        ];
        (
            "\\PC{0,10}",
            any::<u64>(),
            "\\PC{0,6}",
            text,
            0u8..5,
            any::<u64>(),
        )
            .prop_map(|(conv, seq, sender, text, kind, n)| {
                let mut e = text_entry(&conv, seq, &text);
                e.sender = sender;
                e.body = match kind {
                    0 => None,
                    1 => Some(pb::entry::Body::Recalled(pb::Recalled { seq: n })),
                    2 => Some(pb::entry::Body::Message(pb::Message {
                        content: None,
                        ..Default::default()
                    })),
                    3 => Some(pb::entry::Body::Message(pb::Message {
                        content: Some(pb::Content {
                            kind: Some(pb::content::Kind::Custom(pb::Custom {
                                r#type: "t".into(),
                                data: vec![1, 2],
                            })),
                        }),
                        ..Default::default()
                    })),
                    _ => e.body,
                };
                e
            })
    }

    proptest! {
        #[test]
        fn reader_agrees_with_prost_on_valid_frames(
            rid in any::<u64>(),
            entries in proptest::collection::vec(arb_entry(), 0..4),
            sync in any::<bool>(),
            more in any::<bool>(),
        ) {
            // Proves: for any Deliver prost encodes, whenever the reader
            // answers it answers exactly what prost decodes, and for the
            // shape the server sends (text messages) it always answers.
            let all_text = entries.iter().all(|e| {
                matches!(&e.body, Some(pb::entry::Body::Message(m))
                    if matches!(m.content.as_ref().and_then(|c| c.kind.as_ref()),
                        Some(pb::content::Kind::Text(_))))
                    || e.body.is_none()
            });
            let body = if sync {
                let heads = entries.iter().map(|e| pb::Cursor { conversation_id: e.conversation_id.clone(), seq: e.seq }).collect();
                Body::SyncResult(pb::SyncResult { entries, heads, more })
            } else {
                Body::Deliver(pb::Deliver { entries })
            };
            let b = body_of(&pb::Frame { request_id: rid, body: Some(body) });
            let mine = by_reader(&b);
            if all_text {
                prop_assert!(mine.is_some());
            }
            if mine.is_some() {
                prop_assert_eq!(mine, by_prost(&b));
            }
        }

        #[test]
        fn reader_never_answers_where_prost_would_not(
            entries in proptest::collection::vec(arb_entry(), 1..3),
            sync in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            // Proves on corrupted and truncated frames (and arbitrary bytes)
            // that the reader never panics and never returns anything prost
            // would not: it either steps aside or agrees with prost.
            let body = if sync {
                Body::SyncResult(pb::SyncResult { entries, heads: vec![], more: true })
            } else {
                Body::Deliver(pb::Deliver { entries })
            };
            let mut b = body_of(&pb::Frame { request_id: 3, body: Some(body) });
            for (at, byte) in flips {
                let k = at.index(b.len());
                b[k] = byte;
            }
            let b = &b[..cut.index(b.len() + 1)];
            if let Some(v) = by_reader(b) {
                prop_assert_eq!(Some(v), by_prost(b));
            }
        }

        #[test]
        fn reader_survives_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Proves arbitrary input never panics the reader and any answer is prost's.
            if let Some(v) = by_reader(&b) {
                prop_assert_eq!(Some(v), by_prost(&b));
            }
        }
    }
}
