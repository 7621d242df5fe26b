//! A node draining on SIGTERM, among others on one Redis: real
//! `tern serve --store redis` processes (the built binary) on free loopback
//! ports on a real `redis-server` started here; clients speak the raw
//! protocol. Every wait is bounded; rates are checked as counts per window
//! against the configured rate (with slack), never as latencies.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cluster_support::{Node, Redis, WAIT, metric};
use support::{Client, Gateway};
use tern_protocol::pb::{self, frame::Body};

/// The drain settings of the draining node in these tests.
fn drain_config(rate: u32, min_ms: u32, max_ms: u32) -> String {
    format!(
        "[shutdown]\nkick_rate_per_node = {rate}\nretry_after_min_ms = {min_ms}\n\
         retry_after_max_ms = {max_ms}\n"
    )
}

/// Starts n1 (with `n1_extra`), n2 and n3 and waits until each sees all three.
fn three_nodes(redis: &Redis, n1_extra: &str) -> Vec<Node> {
    let ns = vec![
        Node::start_with(redis, "n1", n1_extra),
        Node::start(redis, "n2"),
        Node::start(redis, "n3"),
    ];
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 3");
    }
    ns
}

/// Connects and authenticates with resume cursors; returns the Welcome.
fn login_resume(
    addr: SocketAddr,
    user: &str,
    device: &str,
    cursors: Vec<pb::Cursor>,
) -> (Client, pb::Welcome) {
    let mut c = Client::connect(addr);
    let reply = c.request(Body::Auth(pb::Auth {
        token: Gateway::token(user),
        device_id: device.into(),
        protocol_version: 1,
        platform: pb::Platform::Cli as i32,
        resume_cursors: cursors,
        ..Default::default()
    }));
    match reply.body {
        Some(Body::Welcome(w)) => (c, w),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Reads until a Kick (returned with when it arrived) or EOF/deadline.
fn wait_kick(c: &mut Client, deadline: Instant) -> Option<(Instant, pb::Kick)> {
    loop {
        let f = c.read_frame_until(deadline)?;
        if let Some(Body::Kick(k)) = f.body {
            return Some((Instant::now(), k));
        }
    }
}

/// SIGTERM on a node holding 200 clients, with `kick_rate_per_node = 100`
/// and a 200..=2000 ms retry window: every client gets `Kick{SHUTDOWN}`
/// whose `retry_after_ms` is inside the window, the values are spread (not
/// all equal), the kicks are spread over time (no 1 s window holds more than
/// the rate allows with 50 % slack — a window long enough that this test's
/// readers stalling for a few hundred ms cannot fake a burst — and first to
/// last kick spans at least half of 200 / rate), the node exits 0, and its
/// lease, its `tern:nodes` entry and its clients' routes are gone. Before:
/// every `retry_after_ms` was 0 and the 200 kicks left within one 10 ms tick.
#[test]
fn drain_kicks_at_a_bounded_rate_with_spread_retry_after() {
    const CLIENTS: usize = 200;
    const RATE: u32 = 100;
    const WINDOW_MS: u64 = 1_000;
    let (min_ms, max_ms) = (200, 2_000);
    let redis = Redis::start();
    let mut ns = three_nodes(&redis, &drain_config(RATE, min_ms, max_ms));
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::login(ns[0].tcp, &format!("u{i}"), "d").0)
        .collect();
    for i in [0, CLIENTS - 1] {
        redis.wait_routes(&format!("u{i}"), &[("d", "n1")]);
    }
    let kicks: Vec<Option<(Instant, pb::Kick)>> = std::thread::scope(|s| {
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut c| s.spawn(move || wait_kick(&mut c, Instant::now() + WAIT * 2)))
            .collect();
        ns[0].sigterm();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut times = Vec::new();
    let mut retries = Vec::new();
    for (i, k) in kicks.into_iter().enumerate() {
        let (at, kick) = k.unwrap_or_else(|| panic!("client u{i} got no kick"));
        assert_eq!(kick.reason, pb::KickReason::Shutdown as i32, "{kick:?}");
        assert!(
            (min_ms..=max_ms).contains(&kick.retry_after_ms),
            "u{i}: retry_after_ms {} outside {min_ms}..={max_ms}",
            kick.retry_after_ms
        );
        times.push(at);
        retries.push(kick.retry_after_ms);
    }
    retries.sort_unstable();
    retries.dedup();
    assert!(
        retries.len() >= CLIENTS / 4,
        "retry_after_ms not spread: {} distinct values of {CLIENTS}",
        retries.len()
    );
    times.sort_unstable();
    // At the configured rate a window holds RATE * WINDOW_MS / 1000 kicks,
    // plus one burst per shard (2 shards, 1 kick each at this rate).
    let allowed = (u64::from(RATE) * WINDOW_MS / 1000) * 3 / 2 + 2;
    let window = Duration::from_millis(WINDOW_MS);
    let busiest = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|&&t| t - times[i] < window)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest as u64 <= allowed,
        "{busiest} kicks within {WINDOW_MS} ms; the rate allows {allowed}"
    );
    let span = *times.last().unwrap() - times[0];
    let floor = Duration::from_millis((CLIENTS as u64 - 2) * 1000 / u64::from(RATE) / 2);
    assert!(span >= floor, "200 kicks within {span:?} (< {floor:?})");
    let status = ns[0].wait_exit(WAIT).expect("n1 exits after its drain");
    assert!(status.success(), "n1 exit status {status:?}");
    assert_eq!(redis.node_present("n1"), (false, false));
    for i in 0..CLIENTS {
        assert_eq!(redis.routes(&format!("u{i}")), Vec::new(), "u{i}");
    }
}

/// A chat survives a drain: alice on n2 sends to bob on n1 every 20 ms
/// while n1 drains (100 idle clients beside bob, kicked at 50/s, so the
/// drain lasts ~2 s); bob, kicked with SHUTDOWN, waits its
/// `retry_after_ms`, logs in on n3 with his resume cursor, syncs, and keeps
/// taking pushes. In the end every message alice got a `SendAck` for is in
/// bob's log exactly once, at its acked seq, and n1 exits 0.
#[test]
fn chat_survives_a_drain_by_reconnecting_elsewhere() {
    let redis = Redis::start();
    let mut ns = three_nodes(&redis, &drain_config(50, 100, 500));
    let _idle: Vec<Client> = (0..100)
        .map(|i| Client::login(ns[0].tcp, &format!("idle{i}"), "d").0)
        .collect();
    let (mut alice, _) = Client::login(ns[1].tcp, "alice", "phone");
    let (bob, _) = Client::login(ns[0].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n1")]);
    let n3 = ns[2].tcp;
    let back = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let bob_thread = {
        let (back, stop) = (back.clone(), stop.clone());
        std::thread::spawn(move || bob_moves(bob, n3, &back, &stop))
    };
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = Instant::now() + WAIT * 2;
    let mut after_back = 0;
    for k in 0..600 {
        if k == 10 {
            ns[0].sigterm();
        }
        let cmid = format!("c{k}");
        let f = alice.send_text("bob", &cmid, &format!("msg {k}"));
        match f.body {
            Some(Body::SendAck(a)) => {
                assert_eq!(a.conversation_id, "d:alice:bob");
                acked.insert(cmid, a.seq);
            }
            other => panic!("send {k}: {other:?}"),
        }
        if back.load(Ordering::Relaxed) {
            after_back += 1;
            if after_back == 10 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "bob never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(after_back, 10, "bob never came back within 600 sends");
    stop.store(true, Ordering::Relaxed);
    let log = bob_thread.join().unwrap();
    for (cmid, seq) in &acked {
        assert_eq!(log.get(seq), Some(cmid), "acked {cmid} at seq {seq}");
    }
    let mut cmids: Vec<&String> = log.values().collect();
    cmids.sort();
    let before = cmids.len();
    cmids.dedup();
    assert_eq!(before, cmids.len(), "a message is at two seqs in bob's log");
    let status = ns[0].wait_exit(WAIT).expect("n1 exits after its drain");
    assert!(status.success(), "n1 exit status {status:?}");
    // n3 pushed to bob after he came back (not only his syncs).
    assert!(metric(&ns[2], "tern_cluster_records_received_total") > 0);
}

/// Bob's side of the chat test: takes pushes on n1 until his kick, waits
/// its `retry_after_ms` plus his own jitter, resumes on `n3`, syncs, takes
/// pushes until `stop`, then syncs once more. Returns seq → client_msg_id
/// of `d:alice:bob`; panics if one seq ever carries two messages.
fn bob_moves(
    mut bob: Client,
    n3: SocketAddr,
    back: &AtomicBool,
    stop: &AtomicBool,
) -> BTreeMap<u64, String> {
    let mut log: BTreeMap<u64, String> = BTreeMap::new();
    let deadline = Instant::now() + WAIT * 2;
    let kick = loop {
        let f = bob
            .read_frame_until(deadline)
            .expect("bob's connection ends with a kick");
        match f.body {
            Some(Body::Deliver(d)) => take(&mut log, d.entries),
            Some(Body::Kick(k)) => break k,
            _ => {}
        }
    };
    assert_eq!(kick.reason, pb::KickReason::Shutdown as i32, "{kick:?}");
    assert!((100..=500).contains(&kick.retry_after_ms), "{kick:?}");
    let jitter = u64::from(std::process::id() % 50);
    std::thread::sleep(Duration::from_millis(
        u64::from(kick.retry_after_ms) + jitter,
    ));
    let cursor = |log: &BTreeMap<u64, String>| {
        let mut held = 0;
        while log.contains_key(&(held + 1)) {
            held += 1;
        }
        vec![pb::Cursor {
            conversation_id: "d:alice:bob".into(),
            seq: held,
        }]
    };
    let (mut bob, welcome) = login_resume(n3, "bob", "phone", cursor(&log));
    assert_eq!(welcome.node_id, "n3");
    sync(&mut bob, &mut log, &cursor);
    back.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "never told to stop");
        if let Some(f) = bob.read_frame_until(Instant::now() + Duration::from_millis(50))
            && let Some(Body::Deliver(d)) = f.body
        {
            take(&mut log, d.entries);
        }
    }
    for f in std::mem::take(&mut bob.pushes) {
        if let Some(Body::Deliver(d)) = f.body {
            take(&mut log, d.entries);
        }
    }
    sync(&mut bob, &mut log, &cursor);
    for f in std::mem::take(&mut bob.pushes) {
        if let Some(Body::Deliver(d)) = f.body {
            take(&mut log, d.entries);
        }
    }
    log
}

/// Syncs from the contiguous cursor until the server has no more.
fn sync(
    bob: &mut Client,
    log: &mut BTreeMap<u64, String>,
    cursor: &dyn Fn(&BTreeMap<u64, String>) -> Vec<pb::Cursor>,
) {
    for _ in 0..100 {
        let r = bob.request(Body::Sync(pb::SyncRequest {
            cursors: cursor(log),
            limit: 0,
        }));
        let Some(Body::SyncResult(r)) = r.body else {
            panic!("sync: {r:?}");
        };
        take(log, r.entries);
        if !r.more {
            return;
        }
    }
    panic!("sync never ended");
}

/// Adds entries of `d:alice:bob` to `log`; the same seq twice must be the
/// same message.
fn take(log: &mut BTreeMap<u64, String>, entries: Vec<pb::Entry>) {
    for e in entries {
        if e.conversation_id != "d:alice:bob" {
            continue;
        }
        let prev = log.insert(e.seq, e.client_msg_id.clone());
        assert!(
            prev.as_ref().is_none_or(|p| *p == e.client_msg_id),
            "seq {} holds {prev:?} and {}",
            e.seq,
            e.client_msg_id
        );
    }
}
