//! Search latency over a filled store (issue 19; docs/benchmarks.md,
//! "Search"): fills `TERN_SEARCH_BENCH_MESSAGES` messages (default
//! 1,000,000) through the domain, as the gateway's workers store them,
//! spread over 100 1:1 conversations of one user (English words drawn
//! from a skewed vocabulary, one message in ten Chinese), indexes them,
//! then times the first page (20 results) of searches of several kinds and
//! prints p50/p99/max per kind (hdrhistogram).
//!
//! Run: `cargo bench -p tern-backend --bench search` (embedded store, a
//! temp dir); `TERN_SEARCH_BENCH_MESSAGES=10000` for a quick check;
//! `TERN_SEARCH_BENCH_REDIS_URL=redis://127.0.0.1:6379/` to run it on a
//! Redis server instead (it must be empty: the bench writes to it).
//! `cargo test --all-targets` runs it with 1,000 messages (no `--bench`
//! argument), as a check that it still works.

#![allow(clippy::disallowed_methods, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};
use tern_backend::{Caller, Config, Domain, EmbeddedStore, Request, Store};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

/// Conversations the messages are spread over (all of `alice`'s).
const CONVERSATIONS: usize = 100;
/// Sends per domain batch (one durable commit each).
const BATCH: usize = 256;
/// Words in the English vocabulary.
const VOCABULARY: usize = 5_000;
/// Words per English message.
const WORDS_PER_MESSAGE: usize = 12;
/// Timed searches per kind.
const SAMPLES: usize = 200;

const CHINESE: &[&str] = &[
    "我们明天去北京开会",
    "今天的天气很好",
    "请把文件发给我",
    "这个问题我们下周再讨论",
    "晚上一起吃饭吗",
    "项目进度已经更新到系统里了",
    "上海的办公室下个月搬家",
    "谢谢你的帮助",
];

/// A small deterministic generator (xorshift64*): the same data every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A word index skewed toward the start (a few words are very common,
    /// most are rare, as in chat text).
    fn word(&mut self) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((u * u * u) * VOCABULARY as f64) as usize
    }
}

fn word(i: usize) -> String {
    format!("w{i}")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // target too, without it: then a small fill, as a check that it works.
    let benching = std::env::args().any(|a| a == "--bench");
    let messages: usize = std::env::var("TERN_SEARCH_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 1_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, kind): (Arc<dyn Store>, &str) = match std::env::var("TERN_SEARCH_BENCH_REDIS_URL") {
        Ok(url) => (
            Arc::new(
                RedisStore::open(RedisConfig::new(RedisNodes::Single(url))).expect("open redis"),
            ),
            "redis",
        ),
        Err(_) => (
            Arc::new(EmbeddedStore::open(dir.path()).expect("open store")),
            "embedded",
        ),
    };
    let domain = Domain::new(store, Config::default());
    let alice = Caller {
        user_id: "alice".into(),
        device_id: "bench".into(),
        admin: false,
    };
    println!(
        "search bench: {messages} messages on the {kind} store, {CONVERSATIONS} conversations"
    );

    // ---- fill ----
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t0 = 1_700_000_000_000u64;
    let started = Instant::now();
    let mut n = 0;
    while n < messages {
        let batch: Vec<Request> = (n..(n + BATCH).min(messages))
            .map(|i| {
                let text = if i % 10 == 9 {
                    CHINESE[rng.next() as usize % CHINESE.len()].to_owned()
                } else {
                    (0..WORDS_PER_MESSAGE)
                        .map(|_| word(rng.word()))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                Request {
                    caller: alice.clone(),
                    body: Body::Send(pb::Send {
                        client_msg_id: format!("b{i}"),
                        to: Some(pb::send::To::UserId(format!("peer{}", i % CONVERSATIONS))),
                        content: Some(pb::Content {
                            kind: Some(pb::content::Kind::Text(pb::Text { text })),
                        }),
                        mentions: Vec::new(),
                        mention_all: false,
                        reply_to_seq: 0,
                        streaming: false,
                        thread_root_seq: 0,
                    }),
                }
            })
            .collect();
        n += batch.len();
        let out = domain.handle_batch(t0 + n as u64, batch);
        assert!(
            out.iter()
                .all(|o| matches!(o.reply, Some(Body::SendAck(_)))),
            "a send failed: {:?}",
            out.iter()
                .find(|o| !matches!(o.reply, Some(Body::SendAck(_))))
        );
    }
    let fill = started.elapsed();
    println!(
        "fill: {:.1} s ({:.0} messages/s)",
        fill.as_secs_f64(),
        messages as f64 / fill.as_secs_f64()
    );

    // ---- index (what the gateway's indexer thread does after commits) ----
    let started = Instant::now();
    let read = domain.search_index_pending().expect("index");
    let took = started.elapsed();
    println!(
        "index: {read} entries in {:.1} s ({:.0} entries/s)",
        took.as_secs_f64(),
        read as f64 / took.as_secs_f64()
    );

    // ---- searches ----
    let all = |q: &str| pb::SearchRequest {
        query: q.into(),
        limit: 20,
        ..Default::default()
    };
    let one = |q: &str| pb::SearchRequest {
        conversation_id: "d:alice:peer7".into(),
        ..all(q)
    };
    let kinds: Vec<(&str, MakeQuery<'_>)> = vec![
        (
            "common word, all conversations",
            Box::new(move |r: &mut Rng| all(&word((r.next() % 5) as usize))),
        ),
        (
            "rare word, all conversations",
            Box::new(move |r: &mut Rng| all(&word(VOCABULARY - 1 - (r.next() % 500) as usize))),
        ),
        (
            "two words, all conversations",
            Box::new(move |r: &mut Rng| {
                all(&format!("{} {}", word(rng_word(r)), word(rng_word(r))))
            }),
        ),
        (
            "Chinese (bigrams), all conversations",
            Box::new(|r: &mut Rng| all(["北京", "天气", "文件", "办公室"][r.next() as usize % 4])),
        ),
        (
            "common word, one conversation",
            Box::new(move |r: &mut Rng| one(&word((r.next() % 5) as usize))),
        ),
        (
            "no match, all conversations",
            Box::new(|_: &mut Rng| all("zzzznothing")),
        ),
    ];
    println!("searches ({SAMPLES} each, first page of 20; microseconds):");
    for (name, make) in kinds {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut found = 0;
        for _ in 0..SAMPLES {
            let req = make(&mut rng);
            let started = Instant::now();
            let out = domain.handle(&alice, t0 + messages as u64 + 1, Body::Search(req));
            let us = started.elapsed().as_micros() as u64;
            match out.reply {
                Some(Body::SearchResult(r)) => found += r.entries.len(),
                other => panic!("{name}: {other:?}"),
            }
            h.record(us.max(1)).expect("record");
        }
        println!(
            "  {name:<40} p50 {:>8}  p99 {:>8}  max {:>8}  (results/search {:.1})",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.max(),
            found as f64 / SAMPLES as f64
        );
    }
}

/// Makes the next query of one kind.
type MakeQuery<'a> = Box<dyn Fn(&mut Rng) -> pb::SearchRequest + 'a>;

/// A word from the vocabulary's skew.
fn rng_word(r: &mut Rng) -> usize {
    r.word()
}
