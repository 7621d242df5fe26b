//! Backend benchmarks over the embedded store, through the domain (what the
//! gateway's backend workers run): 1:1 sends single and batched (sends/s),
//! the send latency distribution (p50/p99/p999), a sync of 1,000 messages,
//! and a send to a 1,000-member group (deliveries/s).
//!
//! Every send is durable when it returns (fsync per batch), so these are
//! disk-bound figures. Run: `cargo bench -p tern-backend --bench store`;
//! figures are in docs/benchmarks.md ("Backend").

#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tern_backend::{Caller, Config, Domain, EmbeddedStore, Outcome, Request};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

/// Members of the fan-out group.
const GROUP_MEMBERS: usize = 1_000;
/// Messages in the conversation a sync pulls.
const SYNC_MESSAGES: usize = 1_000;
/// Conversations the 1:1 sends rotate over.
const DIRECT_CONVS: usize = 1_000;
/// Sends timed one by one for the latency distribution.
const LATENCY_SAMPLES: usize = 2_000;

/// A domain over a fresh embedded store in a temp dir.
struct Bed {
    domain: Domain,
    _dir: tempfile::TempDir,
    n: u64,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open store");
        Self {
            domain: Domain::new(Arc::new(store), Config::default()),
            _dir: dir,
            n: 0,
        }
    }

    fn now(&self) -> u64 {
        1_700_000_000_000 + self.n
    }

    /// A text send from `from` to the next of `DIRECT_CONVS` peers, or to
    /// a group.
    fn send(&mut self, from: &str, group: Option<&str>) -> Request {
        self.n += 1;
        let to = match group {
            Some(g) => pb::send::To::GroupId(g.to_owned()),
            None => pb::send::To::UserId(format!("peer{}", self.n as usize % DIRECT_CONVS)),
        };
        Request {
            caller: Caller { user_id: from.to_owned(), device_id: "bench".to_owned(), admin: false },
            body: Body::Send(pb::Send {
                client_msg_id: format!("b{}", self.n),
                to: Some(to),
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text {
                        text: "a typical short chat message, about eighty bytes long, emoji included 🙂"
                            .to_owned(),
                    })),
                }),
                mentions: Vec::new(),
                mention_all: false,
                reply_to_seq: 0,
                streaming: false,
                thread_root_seq: 0,
            }),
        }
    }

    fn run(&mut self, batch: Vec<Request>) -> Vec<Outcome> {
        let out = self.domain.handle_batch(self.now(), batch);
        assert!(
            matches!(out[0].reply, Some(Body::SendAck(_))),
            "{:?}",
            out[0].reply
        );
        out
    }
}

fn direct_sends(c: &mut Criterion) {
    let mut g = c.benchmark_group("send_1to1");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64, 256] {
        let mut bed = Bed::new();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let reqs = (0..batch).map(|_| bed.send("alice", None)).collect();
                black_box(bed.run(reqs));
            })
        });
    }
    g.finish();
}

/// The store alone (no domain): the same appends a 1:1 send makes.
fn store_appends(c: &mut Criterion) {
    use tern_backend::store::{Append, AppendEffect, DedupKey};
    let mut g = c.benchmark_group("store_append_1to1");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64, 256] {
        let mut bed = Bed::new();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let items: Vec<Append> = (0..batch)
                    .map(|_| {
                        bed.n += 1;
                        let peer = format!("peer{}", bed.n as usize % DIRECT_CONVS);
                        let cmid = format!("s{}", bed.n);
                        Append {
                            conversation: format!("d:alice:{peer}"),
                            entry: pb::Entry {
                                sender: "alice".into(),
                                client_msg_id: cmid.clone(),
                                time_ms: bed.now(),
                                body: Some(pb::entry::Body::Message(pb::Message {
                                    content: Some(pb::Content {
                                        kind: Some(pb::content::Kind::Text(pb::Text {
                                            text: "x".repeat(80),
                                        })),
                                    }),
                                    ..Default::default()
                                })),
                                ..Default::default()
                            },
                            activity: true,
                            dedup: Some(DedupKey {
                                sender: "alice".into(),
                                client_msg_id: cmid,
                                expires_at_ms: bed.now() + 86_400_000,
                            }),
                            member_of: None,
                            effect: AppendEffect::None,
                            participants: vec!["alice".into(), peer],
                        }
                    })
                    .collect();
                black_box(
                    bed.domain
                        .store()
                        .append_batch(bed.now(), &items)
                        .expect("append"),
                );
            })
        });
    }
    g.finish();
}

fn sync_1000(c: &mut Criterion) {
    let mut bed = Bed::new();
    // One conversation with 1,000 messages, written in batches.
    for _ in 0..SYNC_MESSAGES / 100 {
        let reqs = (0..100)
            .map(|_| {
                let mut r = bed.send("alice", None);
                if let Body::Send(s) = &mut r.body {
                    s.to = Some(pb::send::To::UserId("bob".into()));
                }
                r
            })
            .collect();
        bed.run(reqs);
    }
    let bob = Caller {
        user_id: "bob".into(),
        device_id: "bench".into(),
        admin: false,
    };
    let mut g = c.benchmark_group("sync");
    g.sample_size(30);
    g.throughput(Throughput::Elements(SYNC_MESSAGES as u64));
    g.bench_function("1000_messages_from_empty", |b| {
        b.iter(|| {
            // Page through with the default page size, as a device would.
            let mut cursors: Vec<pb::Cursor> = Vec::new();
            let mut got = 0;
            loop {
                let out = bed.domain.handle(
                    &bob,
                    bed.now(),
                    Body::Sync(pb::SyncRequest {
                        cursors: cursors.clone(),
                        limit: 0,
                    }),
                );
                let Some(Body::SyncResult(r)) = out.reply else {
                    panic!("sync failed")
                };
                got += r.entries.len();
                if let Some(last) = r.entries.last() {
                    cursors = vec![pb::Cursor {
                        conversation_id: last.conversation_id.clone(),
                        seq: last.seq,
                    }];
                }
                if !r.more {
                    break;
                }
            }
            assert_eq!(got, SYNC_MESSAGES);
        })
    });
    g.finish();
}

/// A bed with group `big` of `GROUP_MEMBERS` members (owner `u0`).
fn group_bed() -> Bed {
    let mut bed = Bed::new();
    let owner = Caller {
        user_id: "u0".into(),
        device_id: "bench".into(),
        admin: false,
    };
    let out = bed.domain.handle(
        &owner,
        bed.now(),
        Body::GroupCreate(pb::GroupCreate {
            group_id: "big".into(),
            name: "big".into(),
            members: Vec::new(),
            join_policy: pb::JoinPolicy::Open as i32,
            history_visible: false,
        }),
    );
    assert!(matches!(out.reply, Some(Body::GroupInfoResult(_))));
    // Invites are capped at invite_users_max per request.
    let members: Vec<String> = (1..GROUP_MEMBERS).map(|i| format!("u{i}")).collect();
    for chunk in members.chunks(bed.domain.config().invite_users_max as usize) {
        let out = bed.domain.handle(
            &owner,
            bed.now(),
            Body::GroupInvite(pb::GroupInvite {
                group_id: "big".into(),
                user_ids: chunk.to_vec(),
            }),
        );
        assert!(matches!(out.reply, Some(Body::Ok(_))), "{:?}", out.reply);
    }
    bed.n += 1;
    bed
}

fn group_sends(c: &mut Criterion) {
    let mut g = c.benchmark_group("send_group_1000_members");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64] {
        let mut bed = group_bed();
        // Throughput in deliveries: each message reaches every member.
        g.throughput(Throughput::Elements((batch * GROUP_MEMBERS) as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                let reqs = (0..batch)
                    .map(|i| bed.send(&format!("u{}", i % 50), Some("big")))
                    .collect();
                let out = bed.run(reqs);
                let deliveries: usize = out
                    .iter()
                    .flat_map(|o| &o.effects)
                    .map(|e| match e {
                        tern_backend::Effect::Deliver { recipients, .. } => recipients.len(),
                        _ => 0,
                    })
                    .sum();
                assert_eq!(deliveries, batch * GROUP_MEMBERS);
            })
        });
    }
    g.finish();
}

/// Send latency distribution (hdrhistogram), printed; criterion reports
/// means only.
fn latency_report() {
    for batch in [1usize, 64] {
        let mut bed = Bed::new();
        let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        // TERN_BENCH_LATENCY_SENDS overrides the sample count (longer runs
        // show sustained rather than burst throughput).
        let samples = std::env::var("TERN_BENCH_LATENCY_SENDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LATENCY_SAMPLES);
        let rounds = (samples / batch).max(50);
        let start = Instant::now();
        for _ in 0..rounds {
            let reqs = (0..batch).map(|_| bed.send("alice", None)).collect();
            let t = Instant::now();
            black_box(bed.run(reqs));
            // Every send of the batch is acked when the batch returns.
            h.record_n(t.elapsed().as_micros() as u64, batch as u64)
                .expect("record");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "send_1to1 latency, batch {batch}: {} sends, {:.0} sends/s, p50 {} us, p99 {} us, p999 {} us, max {} us",
            rounds * batch,
            (rounds * batch) as f64 / secs,
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    direct_sends(&mut c);
    store_appends(&mut c);
    sync_1000(&mut c);
    group_sends(&mut c);
    c.final_summary();
    // `cargo test --benches` runs this binary in test mode: skip the report.
    if !std::env::args().any(|a| a == "--test") {
        latency_report();
    }
}
