//! The backend workers' route cache (user → nodes, docs/cluster.md "Route
//! cache") over real `tern serve --store redis` processes on a real
//! `redis-server`: members that log in elsewhere, or come online, between
//! two group messages are still pushed every message (the route log makes
//! the sender's worker forget them), and repeated sends with no login in
//! between are answered from the cache. Every wait is bounded.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use cluster_support::{Redis, is_text, metric, nodes};
use support::Client;
use tern_protocol::pb::{self, frame::Body};

/// Members online nowhere, so that a group's batches are big enough for the
/// cache (`route_cache::BATCH_USERS_MIN` = 16 distinct recipients).
fn padding() -> Vec<String> {
    (0..16).map(|i| format!("quiet{i}")).collect()
}

const HITS: &str = "tern_cluster_route_cache_hits_total";
const MISSES: &str = "tern_cluster_route_cache_misses_total";
const RESETS: &str = "tern_cluster_route_cache_resets_total";

/// Members move between nodes while the sender's node has them cached:
/// alice (n1) sends to a group after every move (a member switching nodes,
/// an offline member coming online, a member adding a device on another
/// node) and each member device gets every push. With the cache filled and
/// no route log (or a log nobody reads), the second message would go only
/// to the nodes cached at the first — dave would get nothing, bob's push
/// would go to n2 — and the waits below would time out. Two sends with no
/// move in between are answered from the cache: the hit count rises by at
/// least the 20 recipients and the misses do not move.
#[test]
fn members_moving_between_nodes_get_every_push_and_repeats_hit() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (bob_n2, _) = Client::login(ns[1].tcp, "bob", "phone");
    let (mut carol, _) = Client::login(ns[2].tcp, "carol", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into(), "carol".into(), "dave".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    redis.wait_routes("bob", &[("phone", "n2")]);
    redis.wait_routes("carol", &[("phone", "n3")]);
    let mut bob = bob_n2;
    let ack = alice.send_group_text("crew", "g1", "one");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("one"));
    carol.wait_push(is_text("one"));

    // The same send again, nothing moved: every recipient from the cache
    // (alice, bob, carol, and dave and the padding online nowhere).
    let (hits, misses) = (metric(&ns[0], HITS), metric(&ns[0], MISSES));
    let ack = alice.send_group_text("crew", "g2", "two");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("two"));
    carol.wait_push(is_text("two"));
    assert!(metric(&ns[0], HITS) >= hits + 20, "hits did not rise by 20");
    assert_eq!(metric(&ns[0], MISSES), misses, "a repeat read Redis");

    // Moves: bob n2 → n3, dave comes online on n2, carol adds a tablet on
    // n1 (the sender's node: local delivery) and a laptop on n2.
    drop(bob);
    redis.wait_routes("bob", &[]);
    let (mut bob, _) = Client::login(ns[2].tcp, "bob", "phone");
    let (mut dave, _) = Client::login(ns[1].tcp, "dave", "phone");
    let (mut carol_tablet, _) = Client::login(ns[0].tcp, "carol", "tablet");
    let (mut carol_laptop, _) = Client::login(ns[1].tcp, "carol", "laptop");
    redis.wait_routes("bob", &[("phone", "n3")]);
    redis.wait_routes("dave", &[("phone", "n2")]);
    redis.wait_routes(
        "carol",
        &[("laptop", "n2"), ("phone", "n3"), ("tablet", "n1")],
    );
    let misses = metric(&ns[0], MISSES);
    let ack = alice.send_group_text("crew", "g3", "three");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    for c in [
        &mut bob,
        &mut dave,
        &mut carol,
        &mut carol_tablet,
        &mut carol_laptop,
    ] {
        c.wait_push(is_text("three"));
    }
    // The moved users were read again.
    assert!(
        metric(&ns[0], MISSES) >= misses + 3,
        "moved users not re-read"
    );

    // Move back and round again: bob n3 → n1 → n2, each time one send.
    for (round, node) in [(0, 0), (1, 1)] {
        drop(bob);
        redis.wait_routes("bob", &[]);
        let (b, _) = Client::login(ns[node].tcp, "bob", "phone");
        bob = b;
        redis.wait_routes("bob", &[("phone", &format!("n{}", node + 1))]);
        let text: &'static str = ["four", "five"][round];
        let ack = alice.send_group_text("crew", &format!("r{round}"), text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        for c in [&mut bob, &mut dave, &mut carol, &mut carol_laptop] {
            c.wait_push(is_text(text));
        }
    }
}

/// `route_cache_entries_max = 0` turns the cache off: every recipient of
/// every send is a Redis read, nothing is counted as a hit, and pushes still
/// cross nodes (1:1 batches are below `BATCH_USERS_MIN` and never use the
/// cache anyway; the group here is above it).
#[test]
fn cache_off_reads_every_route() {
    let redis = Redis::start();
    let ns: Vec<_> = (1..=2)
        .map(|i| {
            cluster_support::Node::start_with(
                &redis,
                &format!("n{i}"),
                "route_cache_entries_max = 0\n",
            )
        })
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    redis.wait_routes("bob", &[("phone", "n2")]);
    for (id, text) in [("m1", "first"), ("m2", "second"), ("m3", "third")] {
        let ack = alice.send_group_text("crew", id, text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        bob.wait_push(is_text(text));
    }
    let ack = alice.send_text("bob", "d1", "direct");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("direct"));
    assert_eq!(metric(&ns[0], HITS), 0);
    assert_eq!(metric(&ns[0], MISSES), 0);
}

/// The route log lost (deleted here; trimmed past a worker's cursor is the
/// same to the reader): the sender's worker no longer finds the entry its
/// cursor names, so it empties its cache and reads every route again — dave,
/// cached as online nowhere, logs in on n2 after the log is gone and still
/// gets the next push; the reset is counted.
#[test]
fn a_lost_route_log_empties_the_cache() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into(), "dave".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    redis.wait_routes("bob", &[("phone", "n2")]);
    // Two sends: the first takes a cursor, the second fills the cache.
    for (id, text) in [("g1", "one"), ("g2", "two")] {
        let ack = alice.send_group_text("crew", id, text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        bob.wait_push(is_text(text));
    }
    let resets = metric(&ns[0], RESETS);
    let _: i64 = redis::cmd("DEL")
        .arg("tern:rt:log")
        .query(&mut redis.conn())
        .unwrap();
    let (mut dave, _) = Client::login(ns[1].tcp, "dave", "phone");
    redis.wait_routes("dave", &[("phone", "n2")]);
    let ack = alice.send_group_text("crew", "g3", "three");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    dave.wait_push(is_text("three"));
    bob.wait_push(is_text("three"));
    assert!(metric(&ns[0], RESETS) > resets, "no reset counted");
}

/// The same on a 3-master Redis Cluster, where the route log and the route
/// hashes are on different primaries (the write appends to the log only
/// after its `HSET`s answered): dave, cached as online nowhere, logs in on
/// n2 and gets the next push; a repeat send is answered from the cache.
#[test]
fn cache_holds_on_redis_cluster() {
    let cluster = redis_harness::RedisCluster::start(3, true);
    let urls = cluster.urls();
    let ns: Vec<_> = (1..=2)
        .map(|i| cluster_support::Node::spawn(&urls, true, &format!("n{i}"), ""))
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    let mut c = redis::cluster::ClusterClient::new(urls.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut wait_route = |user: &str| {
        let deadline = std::time::Instant::now() + cluster_support::WAIT;
        loop {
            let r: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(format!("{{u:{user}}}:rt"))
                .query(&mut c)
                .unwrap();
            if r == [("phone".to_owned(), "n2".to_owned())] {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{user}: {r:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into(), "dave".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    wait_route("bob");
    for (id, text) in [("g1", "one"), ("g2", "two")] {
        let ack = alice.send_group_text("crew", id, text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        bob.wait_push(is_text(text));
    }
    let hits = metric(&ns[0], HITS);
    let ack = alice.send_group_text("crew", "g3", "three");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("three"));
    assert!(
        metric(&ns[0], HITS) >= hits + 19,
        "repeat not from the cache"
    );
    let (mut dave, _) = Client::login(ns[1].tcp, "dave", "phone");
    wait_route("dave");
    let ack = alice.send_group_text("crew", "g4", "four");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    dave.wait_push(is_text("four"));
    bob.wait_push(is_text("four"));
}

/// Bad input in the route log (an entry without `u`, one with a `u` that is
/// not UTF-8) is never trusted: the reading worker empties its cache and
/// starts again (a reset is counted), nothing panics, and members keep
/// getting every push — dave, who logs in right after the garbage, too.
#[test]
fn garbage_in_the_route_log_resets_the_cache() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into(), "dave".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let mut c = redis.conn();
    let garbage: [&[&[u8]]; 2] = [&[b"x", b"y"], &[b"u", b"\xff\xfe"]];
    for (round, fields) in garbage.into_iter().enumerate() {
        // Warm: the first send takes a cursor (after a reset), the second
        // fills the cache.
        for k in 0..2 {
            let text = format!("warm{round}.{k}");
            let ack = alice.send_group_text("crew", &text, &text);
            assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
            bob.wait_push(|f| support::delivered_text(f).is_some_and(|(_, _, t)| t == text));
        }
        let resets = metric(&ns[0], RESETS);
        let mut x = redis::cmd("XADD");
        x.arg("tern:rt:log").arg("*");
        for f in fields {
            x.arg(*f);
        }
        let _: String = x.query(&mut c).unwrap();
        let (mut dave, _) = Client::login(ns[1].tcp, "dave", "phone");
        redis.wait_routes("dave", &[("phone", "n2")]);
        let text: &'static str = ["after.x", "after.bad.utf-8"][round];
        let ack = alice.send_group_text("crew", text, text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        dave.wait_push(is_text(text));
        bob.wait_push(is_text(text));
        assert_eq!(metric(&ns[0], RESETS), resets + 1, "garbage not refused");
        drop(dave);
        redis.wait_routes("dave", &[]);
    }
}

/// A route written back after a lapsed lease (the recount's restore) is
/// announced in the route log like a login: bob's phone stays connected on
/// n2 (of three nodes) while n2 is stopped (SIGSTOP) past its lease; n1 routes a group
/// message, finds bob's route naming a dead node and removes it, and the
/// next message caches bob as online nowhere (cache TTL 60 s here, beyond
/// every wait). After SIGCONT n2 finds its lease lapsed and restores bob's
/// route (`HSETNX`); the next message must reach bob. Without the restore's
/// log entry n1 keeps its "nowhere" entry and bob's push never comes.
#[test]
fn a_route_restored_after_a_lapsed_lease_reaches_the_caches() {
    let redis = Redis::start();
    // Three nodes: a node alone in its view reads no routes, so n1 needs a
    // live n3 to route (and clean) while n2 is stopped.
    let ns: Vec<_> = (1..=3)
        .map(|i| {
            cluster_support::Node::start_with(
                &redis,
                &format!("n{i}"),
                "route_cache_ttl_ms = 60000\n",
            )
        })
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 3");
    }
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: [vec!["bob".into()], padding()].concat(),
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    redis.wait_routes("bob", &[("phone", "n2")]);
    // The first send takes a cursor, the second fills the cache.
    for (id, text) in [("g1", "one"), ("g2", "two")] {
        let ack = alice.send_group_text("crew", id, text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        bob.wait_push(is_text(text));
    }
    let pid = libc::pid_t::try_from(ns[1].child.id()).unwrap();
    // SAFETY: kill(2) on the PID of a child this test started and still
    // holds (not reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    ns[0].wait_metric("tern_cluster_live_nodes 2");
    // Routing finds bob's route naming a dead node: removed (and forgotten).
    let ack = alice.send_group_text("crew", "g3", "while n2 is stopped");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    redis.wait_routes("bob", &[]);
    // Bob read again: online nowhere, cached so.
    let ack = alice.send_group_text("crew", "g4", "bob cached nowhere");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    ns[1].wait_metric("tern_cluster_lease_lapses_total 1");
    redis.wait_routes("bob", &[("phone", "n2")]);
    ns[0].wait_metric("tern_cluster_live_nodes 3");
    let ack = alice.send_group_text("crew", "g5", "after the restore");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("after the restore"));
}
