//! Criterion benchmarks of the Redis store, measured through the chat
//! domain (validation + store, what a backend worker does per request), on
//! real `redis-server`s started for the run on loopback ports:
//!
//! - `send_1to1`: one 1:1 send per call; criterion's time is the mean
//!   latency, and the run prints p50/p99/p999 of the same sends
//!   (hdrhistogram, microseconds).
//! - `send_batch_64`: 64 sends of 64 different 1:1 chats in one
//!   `handle_batch` (group commit: one pipeline, one fsync per node);
//!   throughput is in sends/s.
//! - `sync_1000`: a device that holds nothing pulls a 1,000-message chat,
//!   paging with the default page size (200) until `more` is false.
//! - `group_send_1000`: one send to a group of 1,000 members (membership
//!   check in the append; recipients from the domain's member cache).
//!
//! Each runs on one server with `appendonly yes`, `appendfsync always` (the
//! durable setting the store requires by default), on a 3-master cluster
//! with the same setting, and on one server without persistence (what the
//! fsync costs). Run: `cargo bench -p tern-backend --bench redis`.
//! Never asserts on time; figures go to docs/benchmarks.md.

#[path = "../tests/support/redis_harness.rs"]
mod redis_harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use redis_harness::{RedisCluster, RedisServer, ServerOptions};
use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};
use tern_backend::{Caller, Config, Domain, Request};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

/// Members of the benchmark group.
const GROUP_MEMBERS: usize = 1_000;
/// Messages in the synced chat.
const SYNC_MESSAGES: usize = 1_000;
/// Sends per `handle_batch` in `send_batch_64`.
const BATCH_SENDS: usize = 64;
/// Users per `GroupInvite` (the domain's default `invite_users_max`).
const INVITE_CHUNK: usize = 500;

/// The servers of a deployment under test, kept alive while its domain
/// runs (dropping them kills the processes).
type Servers = Box<dyn std::any::Any>;

/// The deployments measured: one server and a 3-master cluster with AOF
/// `always` (durable acks), and one server without persistence, to show
/// what the fsync costs on the machine at hand.
const DEPLOYMENTS: [&str; 3] = [
    "single_aof_always",
    "cluster3_aof_always",
    "single_no_persistence",
];

fn deploy(name: &str) -> (Servers, Domain) {
    let durable = name.ends_with("aof_always");
    let (dep, nodes): (Servers, _) = if name.starts_with("cluster3") {
        let c = RedisCluster::start(3, durable);
        let n = RedisNodes::Cluster(c.urls());
        (Box::new(c), n)
    } else {
        let options = if durable {
            ServerOptions::DURABLE
        } else {
            ServerOptions::EPHEMERAL
        };
        let s = RedisServer::start(options);
        let n = RedisNodes::Single(s.url());
        (Box::new(s), n)
    };
    let mut config = RedisConfig::new(nodes);
    config.require_durable = durable;
    let store = RedisStore::open(config).expect("open the redis store");
    (dep, Domain::new(Arc::new(store), Config::default()))
}

fn caller(user: &str) -> Caller {
    Caller {
        user_id: user.to_owned(),
        device_id: "bench".to_owned(),
        admin: false,
    }
}

fn text_send(cmid: String, to: pb::send::To) -> Body {
    Body::Send(pb::Send {
        client_msg_id: cmid,
        to: Some(to),
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text {
                text: "a benchmark message of ordinary length, about sixty bytes".into(),
            })),
        }),
        ..Default::default()
    })
}

fn must_ack(body: &Option<Body>) {
    match body {
        Some(Body::SendAck(_)) => {}
        other => panic!("send failed: {other:?}"),
    }
}

/// The clock the domain sees: real time, so dedup windows behave.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn print_percentiles(label: &str, h: &Histogram<u64>) {
    println!(
        "{label}: n={} p50={}us p99={}us p999={}us max={}us",
        h.len(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn benches(c: &mut Criterion) {
    for name in DEPLOYMENTS {
        let (_dep, domain) = deploy(name);
        let mut group = c.benchmark_group(format!("redis_{name}"));
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(8));

        // ---- send_1to1 --------------------------------------------------
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut n = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function("send_1to1", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let body = text_send(format!("s{n}"), pb::send::To::UserId("bob".into()));
                    let t = Instant::now();
                    let out = domain.handle(&caller("alice"), now_ms(), body);
                    let dt = t.elapsed();
                    must_ack(&out.reply);
                    total += dt;
                    hist.record(dt.as_micros().max(1) as u64)
                        .expect("in bounds");
                }
                total
            })
        });
        print_percentiles(&format!("redis_{name}/send_1to1 latency"), &hist);

        // ---- send_batch_64 ----------------------------------------------
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        group.throughput(Throughput::Elements(BATCH_SENDS as u64));
        group.bench_function("send_batch_64", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let reqs: Vec<Request> = (0..BATCH_SENDS)
                        .map(|i| Request {
                            caller: caller(&format!("a{i}")),
                            body: text_send(format!("b{n}"), pb::send::To::UserId(format!("b{i}"))),
                        })
                        .collect();
                    let t = Instant::now();
                    let outs = domain.handle_batch(now_ms(), reqs);
                    let dt = t.elapsed();
                    outs.iter().for_each(|o| must_ack(&o.reply));
                    total += dt;
                    hist.record(dt.as_micros().max(1) as u64)
                        .expect("in bounds");
                }
                total
            })
        });
        print_percentiles(&format!("redis_{name}/send_batch_64 batch latency"), &hist);

        // ---- sync_1000 --------------------------------------------------
        let t0 = now_ms();
        for chunk in 0..SYNC_MESSAGES / BATCH_SENDS + 1 {
            let reqs: Vec<Request> = (0..BATCH_SENDS)
                .map(|i| chunk * BATCH_SENDS + i)
                .take_while(|&k| k < SYNC_MESSAGES)
                .map(|k| Request {
                    caller: caller("carol"),
                    body: text_send(format!("y{k}"), pb::send::To::UserId("dave".into())),
                })
                .collect();
            if !reqs.is_empty() {
                domain
                    .handle_batch(t0, reqs)
                    .iter()
                    .for_each(|o| must_ack(&o.reply));
            }
        }
        group.throughput(Throughput::Elements(SYNC_MESSAGES as u64));
        group.bench_function("sync_1000", |b| {
            b.iter(|| {
                let mut cursors = Vec::new();
                let mut got = 0;
                loop {
                    let out = domain.handle(
                        &caller("dave"),
                        now_ms(),
                        Body::Sync(pb::SyncRequest {
                            cursors: cursors.clone(),
                            limit: 0,
                        }),
                    );
                    let Some(Body::SyncResult(r)) = out.reply else {
                        panic!("sync failed: {:?}", out.reply)
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

        // ---- group_send_1000 --------------------------------------------
        let members: Vec<String> = (1..GROUP_MEMBERS).map(|i| format!("m{i}")).collect();
        let create = domain.handle(
            &caller("owner"),
            now_ms(),
            Body::GroupCreate(pb::GroupCreate {
                group_id: "big".into(),
                name: "big".into(),
                members: members[..INVITE_CHUNK].to_vec(),
                ..Default::default()
            }),
        );
        assert!(
            matches!(create.reply, Some(Body::GroupInfoResult(_))),
            "{create:?}"
        );
        for chunk in members[INVITE_CHUNK..].chunks(INVITE_CHUNK) {
            let out = domain.handle(
                &caller("owner"),
                now_ms(),
                Body::GroupInvite(pb::GroupInvite {
                    group_id: "big".into(),
                    user_ids: chunk.to_vec(),
                }),
            );
            assert!(!matches!(out.reply, Some(Body::Error(_))), "{out:?}");
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        group.throughput(Throughput::Elements(1));
        group.bench_function("group_send_1000", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let body = text_send(format!("g{n}"), pb::send::To::GroupId("big".into()));
                    let t = Instant::now();
                    let out = domain.handle(&caller("owner"), now_ms(), body);
                    let dt = t.elapsed();
                    must_ack(&out.reply);
                    let recipients = match out.effects.first() {
                        Some(tern_backend::Effect::Deliver { recipients, .. }) => recipients.len(),
                        other => panic!("no delivery: {other:?}"),
                    };
                    assert_eq!(recipients, GROUP_MEMBERS);
                    total += dt;
                    hist.record(dt.as_micros().max(1) as u64)
                        .expect("in bounds");
                }
                total
            })
        });
        print_percentiles(&format!("redis_{name}/group_send_1000 latency"), &hist);
        group.finish();
    }
}

criterion_group!(redis_benches, benches);
criterion_main!(redis_benches);
