//! Codec micro benchmarks: encode and decode of the frames a chat gateway
//! moves most (a text `Send`, a `Deliver` of 1 and of 16 text entries), plus
//! the client-side decode and validation the gateway runs on every `Send`.
//!
//! Every case runs twice: under `codec/…` in wall time (criterion's default)
//! and under `codec-cpu/…` in the thread's CPU time ([`ThreadCpuTime`]), which
//! leaves out the time the thread sat preempted on a shared machine.
//!
//! Run: `cargo bench -p tern-bench --bench codec` (add `-- codec-cpu` for the
//! CPU-time half only). Throughput is reported in bytes of the encoded frame,
//! prefix included, so MB/s compares across frame sizes. Results and the
//! machine they came from: docs/benchmarks.md.

use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tern_bench::{ThreadCpuTime, deliver, text_send};
use tern_protocol::codec::{
    Decoded, FRAME_BYTES_MAX_DEFAULT, decode_client_frame, decode_frame, encode_frame,
};
use tern_protocol::pb;
use tern_protocol::validate::{ClientLimits, check_client_frame};

fn samples() -> [(&'static str, pb::Frame); 3] {
    [
        ("send_text", text_send()),
        ("deliver_1", deliver(1)),
        ("deliver_16", deliver(16)),
    ]
}

fn encode<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let mut group = c.benchmark_group(format!("{prefix}/encode"));
    for (name, frame) in samples() {
        let mut wire = Vec::new();
        encode_frame(&frame, &mut wire);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        // The caller's buffer is reused, as a connection's write buffer is:
        // after the first iteration encoding allocates nothing.
        let mut out = Vec::with_capacity(wire.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode_frame(black_box(&frame), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let mut group = c.benchmark_group(format!("{prefix}/decode"));
    for (name, frame) in samples() {
        let mut wire = Vec::new();
        encode_frame(&frame, &mut wire);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| {
            b.iter(
                || match decode_frame(black_box(&wire), FRAME_BYTES_MAX_DEFAULT) {
                    Ok(Decoded::Frame { frame, .. }) => frame,
                    other => panic!("sample must decode: {other:?}"),
                },
            )
        });
    }
    group.finish();
}

/// What the gateway does with each client frame: client decode (which also
/// refuses server-only bodies unbuilt) and validation.
fn client_path<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let mut group = c.benchmark_group(format!("{prefix}/client"));
    let mut wire = Vec::new();
    encode_frame(&text_send(), &mut wire);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode_client_send_text", |b| {
        b.iter(|| decode_client_frame(black_box(&wire), FRAME_BYTES_MAX_DEFAULT))
    });
    group.finish();

    // Validation reads a decoded frame: no bytes, so no throughput.
    let mut group = c.benchmark_group(format!("{prefix}/validate"));
    let limits = ClientLimits::default();
    let frame = text_send();
    group.bench_function("send_text", |b| {
        b.iter(|| check_client_frame(black_box(&frame), &limits))
    });
    group.finish();
}

fn all<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    encode(c, prefix);
    decode(c, prefix);
    client_path(c, prefix);
}

fn wall_time(c: &mut Criterion) {
    all(c, "codec");
}

fn cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    all(c, "codec-cpu");
}

criterion_group!(wall, wall_time);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu_time
}
criterion_main!(wall, cpu);
