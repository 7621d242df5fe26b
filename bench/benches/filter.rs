//! Content filter micro benchmarks: the cost the sensitive-word filter
//! (`tern_gateway::filter`) adds to one client send, with a list of 10,000
//! words (half Latin-script words of 6–10 letters, half CJK words of 2–4
//! characters, three in four masked, one in four rejected; made from a
//! fixed seed), over chat texts of the sizes people send: a short ASCII
//! reply, a sentence, a 1 KiB paragraph, a CJK sentence, and a sentence
//! with a listed word in it (masked: the only case that allocates for ASCII
//! text). `send/*` is the whole check of a `Send` body (`screen_body`, what
//! a backend worker runs per client send); `text/*` the text check alone.
//!
//! Every case runs twice: under `filter/…` in wall time and under
//! `filter-cpu/…` in the thread's CPU time ([`ThreadCpuTime`]).
//!
//! Run: `cargo bench -p tern-bench --bench filter` (add `-- filter-cpu`
//! for the CPU-time half only). Results: docs/benchmarks.md, "Content
//! filter".

use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_bench::ThreadCpuTime;
use tern_gateway::{
    config::FilterPolicy,
    filter::{Screened, Verdict, Words},
};
use tern_protocol::pb::{self, frame::Body};

/// Words in the list, as the issue asks to measure.
const WORDS: usize = 10_000;

/// A small fixed-seed generator (xorshift64*), so every run uses one list.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The 10,000-word list; the word "bench-listed" is one of the masked ones.
fn list() -> Vec<(String, FilterPolicy)> {
    let mut rng = Rng(0x5eed_f11e_7e25_0001);
    let mut out = Vec::with_capacity(WORDS);
    out.push(("bench-listed".to_owned(), FilterPolicy::Mask));
    while out.len() < WORDS {
        let word: String = if out.len() % 2 == 0 {
            let len = 6 + rng.below(5);
            (0..len)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect()
        } else {
            let len = 2 + rng.below(3);
            // CJK Unified Ideographs.
            (0..len)
                .map(|_| char::from_u32(0x4e00 + rng.below(0x5000) as u32).unwrap_or('字'))
                .collect()
        };
        let policy = if rng.below(4) == 0 {
            FilterPolicy::Reject
        } else {
            FilterPolicy::Mask
        };
        out.push((word, policy));
    }
    out
}

/// Chat texts of typical sizes; none holds a listed word except the last.
fn texts(words: &Words) -> Vec<(&'static str, String)> {
    let sentence = "Are we still meeting at the station at half past five? I can bring the \
                    tickets if you want.";
    let paragraph = "Thanks for the notes from yesterday's call. I went through the \
                     open points again and I think we can close most of them this week: \
                     the venue is booked, the caterer confirmed the numbers, and the \
                     printing can start as soon as the final programme is approved. "
        .repeat(4);
    let cjk = "我们明天下午三点在火车站见面，记得带上车票和身份证。";
    let samples = vec![
        ("short_ascii", "ok, see you then".to_owned()),
        ("sentence_ascii", sentence.to_owned()),
        ("paragraph_ascii_1k", paragraph[..1024].to_owned()),
        ("sentence_cjk", cjk.to_owned()),
        (
            "sentence_with_masked_word",
            format!("{sentence} bench-listed"),
        ),
    ];
    // The generated list must not hit the clean samples by chance: the
    // figures are for the common case, a clean text.
    for (name, text) in &samples[..4] {
        assert_eq!(words.check(text), Verdict::Clean, "{name} hits the list");
    }
    samples
}

fn send(text: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: "bench-1".into(),
        to: Some(pb::send::To::GroupId("g1".into())),
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
        }),
        ..Default::default()
    })
}

fn all<M: Measurement>(c: &mut Criterion<M>, prefix: &str) {
    let list = list();
    let words = Words::new(list.iter().map(|(w, p)| (w.as_str(), *p))).expect("list builds");
    let texts = texts(&words);
    eprintln!(
        "filter bench: {} words, automaton {} KiB",
        words.len(),
        words.memory_bytes() / 1024
    );

    let mut group = c.benchmark_group(format!("{prefix}/text"));
    for (name, text) in &texts {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(*name, |b| b.iter(|| words.check(black_box(text))));
    }
    group.finish();

    let mut group = c.benchmark_group(format!("{prefix}/send"));
    for (name, text) in &texts {
        group.throughput(Throughput::Bytes(text.len() as u64));
        let body = send(text);
        if *name == "sentence_with_masked_word" {
            // Masking rewrites the body: each iteration gets a fresh copy
            // (the copy is outside the measured time).
            group.bench_function(*name, |b| {
                b.iter_batched_ref(
                    || body.clone(),
                    |body| assert_eq!(words.screen_body(body), Screened::Masked),
                    BatchSize::SmallInput,
                )
            });
        } else {
            let mut body = body;
            group.bench_function(*name, |b| {
                b.iter(|| words.screen_body(black_box(&mut body)))
            });
        }
    }
    group.finish();
}

fn wall_time(c: &mut Criterion) {
    all(c, "filter");
}

fn cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    all(c, "filter-cpu");
}

criterion_group!(wall, wall_time);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu_time
}
criterion_main!(wall, cpu);
