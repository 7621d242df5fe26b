//! What the Redis store's connection pool costs, measured (docs/redis.md,
//! "Connections"; figures in docs/benchmarks.md). Not a pass/fail test: it
//! is `#[ignore]`d and prints, and asserts nothing about time. Run:
//!
//! ```text
//! cargo test --release -p tern-backend --test redis_pool_cost -- --ignored --nocapture
//! ```
//!
//! On one real `redis-server` (no persistence: reads only), `THREADS_MAX`
//! threads at most each make `CALLS` single-key reads, two ways, back to
//! back in the same run:
//! - `store`: `RedisStore::profile` (a `GET` through the pool: lease a
//!   connection, build the key, run, decode, return the connection);
//! - `owned`: the same `GET` on a `redis::Connection` the thread owns (what
//!   "one connection per worker thread, no pool" would cost).
//!
//! What is compared is the CPU time the calling threads spend per call
//! (the wall time of a loopback round trip on this shared VM is mostly the
//! run queue). The difference per call bounds from above what the pool
//! adds: it also holds the store's key building, the one-command pipeline
//! and the decoding.
#![allow(clippy::disallowed_methods)]

#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::sync::Arc;

use redis_harness::{RedisServer, ServerOptions};
use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};
use tern_backend::store::Store;

/// Reads per thread per way and round.
const CALLS: usize = 5_000;
/// Rounds per thread count, the two ways alternating (owned, pooled, owned,
/// …) so that the machine's drift hits both; the median is printed.
const ROUNDS: usize = 7;
/// Largest number of threads measured (the default `connections_max` is 8).
const THREADS_MAX: usize = 8;

/// Measures pooled store reads against owned-connection reads at 1, 2, 4
/// and 8 threads and prints the median µs per call of each (no assertion
/// on time).
#[test]
#[ignore = "a measurement; run with --ignored --nocapture (docs/benchmarks.md)"]
fn pool_cost_against_owned_connections() {
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let mut config = RedisConfig::new(RedisNodes::Single(server.url()));
    config.require_durable = false;
    let store = Arc::new(RedisStore::open(config).expect("open the store"));
    let mut threads = 1;
    while threads <= THREADS_MAX {
        let mut owned = Vec::new();
        let mut pooled = Vec::new();
        for _ in 0..ROUNDS {
            owned.push(run(threads, {
                let url = server.url();
                move |_| {
                    let mut c = redis::Client::open(url.as_str())
                        .unwrap()
                        .get_connection()
                        .unwrap();
                    move |i: usize| {
                        let v: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(format!("{{u:user{}}}:p", i % 100))
                            .query(&mut c)
                            .unwrap();
                        assert!(v.is_none());
                    }
                }
            }));
            pooled.push(run(threads, {
                let store = store.clone();
                move |_| {
                    let store = store.clone();
                    move |i: usize| {
                        let p = store.profile(&format!("user{}", i % 100)).unwrap();
                        assert!(p.is_none());
                    }
                }
            }));
        }
        let (owned, pooled) = (median(owned), median(pooled));
        println!(
            "threads {threads}: CPU per call: owned connection {owned:.2} µs, store via pool \
             {pooled:.2} µs, difference {:+.2} µs ({:+.1} %)",
            pooled - owned,
            (pooled / owned - 1.0) * 100.0
        );
        threads *= 2;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `CALLS` calls on each of `threads` threads (each made by `make`)
/// and returns the CPU time the calling threads spent per call, in µs
/// (`CLOCK_THREAD_CPUTIME_ID`: on this shared 2-core VM wall time mostly
/// measures the run queue; CPU time measures the work of the call: the
/// client's encoding, the syscalls, and for the store the pool, the key
/// and the decoding).
fn run<F, G>(threads: usize, make: F) -> f64
where
    F: Fn(usize) -> G + Send + Sync + 'static + Clone,
    G: FnMut(usize),
{
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let make = make.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut call = make(t);
                // Warm up: connection made, pool filled.
                for i in 0..100 {
                    call(i);
                }
                barrier.wait();
                let start = thread_cpu_ns();
                for i in 0..CALLS {
                    call(i);
                }
                thread_cpu_ns() - start
            })
        })
        .collect();
    let total_ns: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total_ns as f64 / 1e3 / (CALLS * threads) as f64
}

/// This thread's CPU time, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
