//! Encryption at rest, per message body size: the stored form of a text
//! entry encoded and decoded with a key ring (seal + open, XChaCha20-
//! Poly1305) beside the plain encoding both stores use without one, and a
//! media object sealed and opened by 64 KiB STREAM chunks (throughput).
//!
//! In memory only (no disk, no store): the CPU cost encryption adds to each
//! append and each read. Run: `cargo bench -p tern-backend --bench seal`;
//! figures are in docs/benchmarks.md ("Encryption at rest").

#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use tern_backend::seal::{self, KeyRing, STREAM_CHUNK_BYTES};
use tern_protocol::pb;

/// Text sizes of the body benchmarks, bytes.
const BODY_BYTES: [usize; 4] = [16, 256, 4096, 65_536];
/// Size of the media object, bytes (16 chunks).
const MEDIA_BYTES: usize = 1 << 20;

fn entry(text_bytes: usize) -> pb::Entry {
    pb::Entry {
        conversation_id: "d:alice:bob".into(),
        seq: 42,
        sender: "alice".into(),
        sender_device: "phone".into(),
        client_msg_id: "01HZX3J5Q8".into(),
        time_ms: 1_700_000_000_000,
        body: Some(pb::entry::Body::Message(pb::Message {
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text {
                    text: "x".repeat(text_bytes),
                })),
            }),
            ..Default::default()
        })),
    }
}

fn bodies(c: &mut Criterion) {
    let ring = KeyRing::new(vec![("k1".into(), [7; 32])], "k1").expect("ring");
    let conv = "d:alice:bob";
    let mut g = c.benchmark_group("seal/body");
    for n in BODY_BYTES {
        let e = entry(n);
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_with_input(BenchmarkId::new("encode_plain", n), &e, |b, e| {
            b.iter(|| black_box(seal::encode_entry(None, conv, e.clone())))
        });
        g.bench_with_input(BenchmarkId::new("encode_sealed", n), &e, |b, e| {
            b.iter(|| black_box(seal::encode_entry(Some(&ring), conv, e.clone())))
        });
        let plain = seal::encode_entry(None, conv, e.clone());
        let sealed = seal::encode_entry(Some(&ring), conv, e.clone());
        g.bench_with_input(BenchmarkId::new("decode_plain", n), &plain, |b, v| {
            b.iter(|| black_box(seal::decode_entry(None, conv, v).expect("decode")))
        });
        g.bench_with_input(BenchmarkId::new("decode_sealed", n), &sealed, |b, v| {
            b.iter(|| black_box(seal::decode_entry(Some(&ring), conv, v).expect("open")))
        });
    }
    g.finish();
}

fn media(c: &mut Criterion) {
    let ring = KeyRing::new(vec![("k1".into(), [7; 32])], "k1").expect("ring");
    let data = vec![0x5au8; MEDIA_BYTES];
    let mut g = c.benchmark_group("seal/media");
    g.throughput(Throughput::Bytes(MEDIA_BYTES as u64));
    g.bench_function("seal_1MiB", |b| {
        b.iter(|| {
            let (_, mut s) = ring.stream_sealer("obj");
            let mut chunks = data.chunks(STREAM_CHUNK_BYTES).peekable();
            let mut buf = Vec::with_capacity(STREAM_CHUNK_BYTES + 16);
            while let Some(c) = chunks.next() {
                buf.clear();
                buf.extend_from_slice(c);
                if chunks.peek().is_some() {
                    s.seal_next(&mut buf);
                } else {
                    s.seal_last(&mut buf);
                    break;
                }
                black_box(&buf);
            }
            black_box(buf)
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bodies(&mut c);
    media(&mut c);
    c.final_summary();
}
