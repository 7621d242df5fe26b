//! Many gateway nodes on one Redis: real `tern serve --store redis`
//! processes (the built binary) on free loopback ports, with distinct node
//! ids and data dirs, on a real `redis-server` started here; clients speak
//! the raw protocol. Every wait is bounded. Fails (does not skip) when
//! redis-server is missing: the test command installs it.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::time::{Duration, Instant};

use cluster_support::{
    Node, Redis, WAIT, befriend, is_presence, is_text, metric, nodes, presence_state, records_out,
    synced_texts,
};
use support::{Client, delivered_text};
use tern_protocol::pb::{self, frame::Body};

/// 1:1 across nodes: alice on node 1 sends to bob on node 2, and bob gets
/// the Deliver as a push (not by sync), once. Today's code stores it but
/// pushes only on the sender's node, so bob's wait times out.
#[test]
fn one_to_one_push_crosses_nodes() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, welcome) = Client::login(ns[1].tcp, "bob", "phone");
    assert_eq!(welcome.node_id, "n2");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let ack = alice.send_text("bob", "m1", "across");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let f = bob.wait_push(is_text("across"));
    assert_eq!(delivered_text(&f).unwrap().1, 1);
    ns[0].wait_metric("tern_cluster_records_sent_total 1");
    ns[1].wait_metric("tern_cluster_records_received_total 1");
    // Exactly one copy.
    assert!(
        bob.read_frame_until(Instant::now() + Duration::from_millis(300))
            .is_none_or(|f| !is_text("across")(&f))
    );
    // Ephemeral pushes cross too: alice's typing reaches bob.
    alice.typing("d:alice:bob");
    let t = bob.wait_typing();
    assert_eq!((t.user_id.as_str(), t.typing), ("alice", true));
    // On close, the route goes (written by the node that held it).
    drop(bob);
    redis.wait_routes("bob", &[]);
}

/// A group with members on three nodes: one send, each member device gets
/// the push, and so does the sender's other device on another node; the
/// sending device gets only its ack. Each node gets one record for the
/// message (not one per member).
#[test]
fn group_push_reaches_members_on_every_node() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut alice_tablet, _) = Client::login(ns[2].tcp, "alice", "tablet");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let (mut carol, _) = Client::login(ns[2].tcp, "carol", "phone");
    let (mut dave, _) = Client::login(ns[1].tcp, "dave", "phone");
    let r = alice.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "crew".into(),
        name: "Crew".into(),
        members: vec!["bob".into(), "carol".into(), "dave".into()],
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    for (user, node) in [("bob", "n2"), ("carol", "n3"), ("dave", "n2")] {
        redis.wait_routes(user, &[("phone", node)]);
    }
    redis.wait_routes("alice", &[("phone", "n1"), ("tablet", "n3")]);
    let before = records_out(&ns[0]);
    let ack = alice.send_group_text("crew", "g1", "hello crew");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    for c in [&mut bob, &mut carol, &mut dave, &mut alice_tablet] {
        c.wait_push(is_text("hello crew"));
    }
    // Two other nodes hold recipients: two records, whatever the members.
    assert_eq!(records_out(&ns[0]) - before, 2);
    assert!(!alice.pushes.iter().any(is_text("hello crew")));
}

/// A route to a dead node: bob's phone and laptop are on node 2, which is
/// killed (-9). Once its lease lapses, bob's phone reconnects to node 3
/// and alice (node 1) sends: the phone gets the push, and the laptop's
/// stale route (still naming node 2) is removed by the sending node.
#[test]
fn route_to_a_killed_node_is_ignored_and_cleaned() {
    let redis = Redis::start();
    let mut ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (bob_phone, _) = Client::login(ns[1].tcp, "bob", "phone");
    let (bob_laptop, _) = Client::login(ns[1].tcp, "bob", "laptop");
    redis.wait_routes("bob", &[("laptop", "n2"), ("phone", "n2")]);
    ns[1].kill9();
    drop((bob_phone, bob_laptop));
    // Dead to the others once its lease key is gone.
    let deadline = Instant::now() + WAIT;
    while redis::cmd("EXISTS")
        .arg("{n:n2}:alive")
        .query::<i64>(&mut redis.conn())
        .unwrap()
        == 1
    {
        assert!(Instant::now() < deadline, "n2's lease never lapsed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The sender's node trusts the nodes in its view (refreshed every
    // second): only once n2 has left that view are routes to it dead.
    ns[0].wait_metric("tern_cluster_live_nodes 2");
    let (mut bob, _) = Client::login(ns[2].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("laptop", "n2"), ("phone", "n3")]);
    let ack = alice.send_text("bob", "m1", "after the crash");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("after the crash"));
    redis.wait_routes("bob", &[("phone", "n3")]);
    ns[0].wait_metric("tern_cluster_routes_cleaned_total 1");
}

/// Bad input on the channel: garbage added to a node's stream (wrong
/// fields, a body that is not a frame, a kind that does not match its
/// body, a displacement with bad ids) is counted and skipped, and the node
/// keeps delivering.
#[test]
fn malformed_records_are_counted_and_skipped() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let mut c = redis.conn();
    let garbage: [&[&[u8]]; 6] = [
        &[b"x", b"y"],
        &[b"k", b"d", b"u", b"bob", b"b", b"\xff\xff\xff\xff"],
        &[b"k", b"p", b"u", b"bob", b"b", b""],
        &[
            b"k",
            b"d",
            b"u",
            b"",
            b"c",
            b"d:alice:bob",
            b"s",
            b"nan",
            b"b",
            b"\x08\x01",
        ],
        // Displacements naming a bad device id, or two users.
        &[b"k", b"x", b"u", b"bob", b"v", b"not an id"],
        &[b"k", b"x", b"u", b"bob\nalice", b"v", b"phone"],
    ];
    for fields in garbage {
        redis::cmd("XADD")
            .arg("{n:n2}:ch")
            .arg("*")
            .arg(fields)
            .query::<String>(&mut c)
            .unwrap();
    }
    ns[1].wait_metric("tern_cluster_records_malformed_total 6");
    ns[1].wait_metric("tern_cluster_displacements_received_total 0");
    let ack = alice.send_text("bob", "m1", "still here");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("still here"));
}

/// A drain that closes more connections than a backend→shard ring holds
/// ends: the shard exits once empty, and the answers to its last presence
/// updates (more than the ring's 32 slots) are dropped once the workers
/// are told to stop, instead of the worker waiting forever for a shard
/// that is gone (before the fix: `tern` never exited after SIGTERM, its
/// worker spinning on the full ring).
#[test]
fn drain_ends_when_answers_outnumber_a_ring() {
    let redis = Redis::start();
    let mut node = Node::start_with(&redis, "n1", "[shards]\nring_entries_max = 32\n");
    let clients: Vec<Client> = (0..200)
        .map(|i| Client::login(node.tcp, &format!("u{i}"), "d").0)
        .collect();
    // SAFETY: kill with a pid we spawned and a plain signal number.
    assert_eq!(
        unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + WAIT + Duration::from_secs(30);
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tern did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    node.kill9();
}

/// Route changes ride the backend queue: with a one-slot queue and one
/// shard, a burst of logins from several threads finds it full; the route
/// changes wait in order with the presence updates (none is dropped), so
/// every device's route is written, and every one is removed again when
/// the devices close.
#[test]
fn route_changes_wait_behind_a_full_backend_queue() {
    let redis = Redis::start();
    let node = Node::start_with(
        &redis,
        "n1",
        "[shards]\ncount = 1\n[backend]\nqueue_entries_max = 1\n",
    );
    let tcp = node.tcp;
    let clients: Vec<Client> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..10)
                        .map(|i| Client::login(tcp, &format!("u{t}x{i}"), "d").0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for t in 0..4 {
        for i in 0..10 {
            redis.wait_routes(&format!("u{t}x{i}"), &[("d", "n1")]);
        }
    }
    drop(clients);
    for t in 0..4 {
        for i in 0..10 {
            redis.wait_routes(&format!("u{t}x{i}"), &[]);
        }
    }
    node.wait_metric("tern_presence_dropped_total 0");
}

/// On a 3-master Redis Cluster (keys of a user, of a node, spread over
/// slots): alice on n1 sends to bob on n2, bob gets the push, and his route
/// goes when he closes (the conditional delete routed to his slot).
#[test]
fn one_to_one_push_crosses_nodes_on_redis_cluster() {
    let cluster = redis_harness::RedisCluster::start(3, true);
    let urls = cluster.urls();
    let ns: Vec<Node> = (1..=2)
        .map(|i| Node::spawn(&urls, true, &format!("n{i}"), ""))
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let mut c = redis::cluster::ClusterClient::new(urls.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    let routes = |c: &mut redis::cluster::ClusterConnection| -> Vec<(String, String)> {
        redis::cmd("HGETALL").arg("{u:bob}:rt").query(c).unwrap()
    };
    let deadline = Instant::now() + WAIT;
    while routes(&mut c) != [("phone".to_owned(), "n2".to_owned())] {
        assert!(Instant::now() < deadline, "bob's route never written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ack = alice.send_text("bob", "m1", "across slots");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("across slots"));
    drop(bob);
    let deadline = Instant::now() + WAIT;
    while !routes(&mut c).is_empty() {
        assert!(Instant::now() < deadline, "bob's route never removed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No gap after login: a message committed on node 1 for bob while bob's
/// device is logging in on node 2 is either in the answer to his first
/// sync or pushed to him. Each attempt logs a new device of bob in, sends
/// its sync at once, and has alice send after a delay swept over 0–10 ms,
/// so some commit lands between bob's sync and the moment his route
/// existed before the fix (it was written by the cluster thread up to
/// 5 ms + a round trip after Welcome): such a message was neither synced
/// nor pushed, and the wait for its push timed out.
#[test]
fn a_message_during_login_is_synced_or_pushed() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    for attempt in 0..40u32 {
        let text = format!("m{attempt}");
        let (mut bob, _) = Client::login(ns[1].tcp, "bob", &format!("d{attempt}"));
        let sync_id = 1_000 + u64::from(attempt);
        bob.send_frame(&pb::Frame {
            request_id: sync_id,
            body: Some(Body::Sync(pb::SyncRequest::default())),
        });
        std::thread::sleep(Duration::from_micros(u64::from(attempt % 20) * 500));
        let ack = alice.send_text("bob", &text, &text);
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        let deadline = Instant::now() + WAIT;
        let synced = loop {
            let f = bob
                .read_frame_until(deadline)
                .expect("sync answer before deadline");
            if f.request_id == sync_id {
                break f;
            }
            bob.pushes.push(f);
        };
        if synced_texts(&synced).contains(&text) {
            continue;
        }
        // Not in the sync: committed after it, so it must be pushed.
        bob.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t == text));
    }
}

/// Presence across nodes: alice's friend bob (node 3) sees her ONLINE when
/// her phone logs in on node 1; no OFFLINE when the phone closes while her
/// laptop is connected on node 2 (node 1 counts it as kept, and bob's
/// query still reads ONLINE); OFFLINE when the laptop closes too. Before
/// the fix node 1 pushed OFFLINE when her phone closed.
#[test]
fn presence_is_online_while_any_node_holds_a_device() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut bob, _) = Client::login(ns[2].tcp, "bob", "phone");
    {
        let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
        befriend(&mut alice, &mut bob, "alice", "bob");
    }
    bob.wait_push(is_presence("alice", pb::PresenceState::Offline));
    let (phone, _) = Client::login(ns[0].tcp, "alice", "phone");
    bob.wait_push(is_presence("alice", pb::PresenceState::Online));
    let (laptop, _) = Client::login(ns[1].tcp, "alice", "laptop");
    // Node 2 counted the laptop (its ONLINE reaches bob again); a phone
    // closing before that is a real race: friends may see OFFLINE, then
    // ONLINE again.
    bob.wait_push(is_presence("alice", pb::PresenceState::Online));
    redis.wait_routes("alice", &[("laptop", "n2"), ("phone", "n1")]);
    drop(phone);
    // Until node 1 has handled the close: it counts the presence as kept,
    // or (before the fix) bob gets an OFFLINE.
    let offline = is_presence("alice", pb::PresenceState::Offline);
    let deadline = Instant::now() + WAIT;
    while metric(&ns[0], "tern_cluster_presence_kept_total") == 0
        && !bob.pushes.iter().any(&offline)
    {
        assert!(Instant::now() < deadline, "node 1 never handled the close");
        if let Some(f) = bob.read_frame_until(Instant::now() + Duration::from_millis(20)) {
            bob.pushes.push(f);
        }
    }
    assert_eq!(
        presence_state(&mut bob, "alice"),
        pb::PresenceState::Online as i32
    );
    assert!(
        !bob.pushes
            .iter()
            .any(is_presence("alice", pb::PresenceState::Offline)),
        "{:?}; users re-checked after a node death: {:?}",
        bob.pushes,
        ns.iter()
            .map(|n| metric(n, "tern_cluster_presence_reaped_total"))
            .collect::<Vec<_>>()
    );
    drop(laptop);
    bob.wait_push(is_presence("alice", pb::PresenceState::Offline));
    assert_eq!(
        presence_state(&mut bob, "alice"),
        pb::PresenceState::Offline as i32
    );
}

/// A killed node's devices stop counting: alice's only device is on node
/// 2, which is killed (-9); once its lease lapses (1 s here) a live node
/// claims it, re-checks the users it held, and bob (node 3) gets alice's
/// OFFLINE. Before the fix nothing ever said so.
#[test]
fn presence_of_a_killed_node_goes_offline() {
    let redis = Redis::start();
    let mut ns = nodes(&redis, 3);
    let (mut bob, _) = Client::login(ns[2].tcp, "bob", "phone");
    let (mut alice, _) = Client::login(ns[1].tcp, "alice", "laptop");
    befriend(&mut alice, &mut bob, "alice", "bob");
    assert_eq!(
        presence_state(&mut bob, "alice"),
        pb::PresenceState::Online as i32
    );
    ns[1].kill9();
    drop(alice);
    bob.wait_push(is_presence("alice", pb::PresenceState::Offline));
    let reaped = metric(&ns[0], "tern_cluster_presence_reaped_total")
        + metric(&ns[2], "tern_cluster_presence_reaped_total");
    assert!(reaped >= 1, "no node re-checked alice");
}

/// Displacement across nodes: bob's phone on node 1, then the same device
/// logs in on node 2: the node 1 connection gets `Kick { DISPLACED }` and
/// is closed, the route ends naming node 2 (node 1's close leaves it), and
/// alice's messages sent before and after reach the node 2 client exactly
/// once (the one before by its sync, the one after by push). Before the
/// fix both connections stayed open and the node 1 close could remove the
/// new route.
#[test]
fn same_device_on_another_node_is_displaced() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[2].tcp, "alice", "phone");
    let (mut old, _) = Client::login(ns[0].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n1")]);
    let ack = alice.send_text("bob", "m1", "before");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    old.wait_push(is_text("before"));
    let (mut new, _) = Client::login(ns[1].tcp, "bob", "phone");
    let kick = old.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::Displaced as i32);
    assert!(
        old.closed_within(WAIT),
        "the displaced connection stayed open"
    );
    ns[1].wait_metric("tern_cluster_displacements_sent_total 1");
    ns[0].wait_metric("tern_cluster_displacements_received_total 1");
    ns[0].wait_metric("tern_connections 0");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let ack = alice.send_text("bob", "m2", "after");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    new.wait_push(is_text("after"));
    let r = new.request(Body::Sync(pb::SyncRequest::default()));
    let mut texts = synced_texts(&r);
    texts.sort();
    assert_eq!(texts, ["after", "before"]);
    // Exactly once by push: "after" once, "before" never.
    let _ = new.read_frame_until(Instant::now() + Duration::from_millis(300));
    assert!(
        !new.pushes.iter().any(is_text("before")),
        "{:?}",
        new.pushes
    );
    assert!(!new.pushes.iter().any(is_text("after")), "{:?}", new.pushes);
    assert_eq!(redis.routes("bob"), [("phone".into(), "n2".into())]);
}

/// Ephemeral pushes of a user on node 1 reach their friend's devices on
/// nodes 2 and 3: alice's typing, and the presence she chooses (AWAY).
#[test]
fn typing_and_chosen_presence_reach_devices_on_every_node() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob_phone, _) = Client::login(ns[1].tcp, "bob", "phone");
    let (mut bob_laptop, _) = Client::login(ns[2].tcp, "bob", "laptop");
    befriend(&mut alice, &mut bob_phone, "alice", "bob");
    redis.wait_routes("bob", &[("laptop", "n3"), ("phone", "n2")]);
    alice.typing("d:alice:bob");
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let t = bob.wait_typing();
        assert_eq!((t.user_id.as_str(), t.typing), ("alice", true));
    }
    let r = alice.request(Body::SetPresence(pb::SetPresenceRequest {
        state: pb::PresenceState::Away as i32,
        text: "lunch".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    for bob in [&mut bob_phone, &mut bob_laptop] {
        bob.wait_push(is_presence("alice", pb::PresenceState::Away));
    }
}

/// A node that stalls past its lease is taken for dead, then recounts:
/// alice's phone is on node 1, which is stopped (SIGSTOP) until node 2
/// claims it and tells bob alice is OFFLINE; once node 1 runs again
/// (SIGCONT) its next renewal finds its lease had lapsed, its shards count
/// their devices again, and bob sees alice ONLINE, in a push and in a
/// query. Before the recount she stayed OFFLINE while connected.
#[test]
fn a_node_whose_lease_lapsed_recounts_its_devices() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    befriend(&mut alice, &mut bob, "alice", "bob");
    let pid = libc::pid_t::try_from(ns[0].child.id()).unwrap();
    // SAFETY: kill(2) on the PID of a child this test started and still
    // holds (not reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    bob.wait_push(is_presence("alice", pb::PresenceState::Offline));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    bob.wait_push(is_presence("alice", pb::PresenceState::Online));
    ns[0].wait_metric("tern_cluster_lease_lapses_total 1");
    assert_eq!(
        presence_state(&mut bob, "alice"),
        pb::PresenceState::Online as i32
    );
    redis.wait_routes("alice", &[("phone", "n1")]);
}

/// `tern serve` with node id `id` on `redis`, data in `dir`, info logs to
/// `dir/tern.log` (a twin of a harness node, or a restart of one).
fn serve_as(redis: &Redis, id: &str, dir: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(dir.join("tern.log")).unwrap();
    let port = || cluster_support::free_port().to_string();
    std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--store", "redis", "--redis-url", &redis.url()])
        .args(["--listen", &format!("127.0.0.1:{}", port())])
        .args(["--ws-listen", &format!("127.0.0.1:{}", port())])
        .args(["--http", &format!("127.0.0.1:{}", port())])
        .args(["--jwt-secret", "cluster-test-secret", "--node-id", id])
        .arg("--data-dir")
        .arg(dir)
        .env("TERN_CLUSTER_NODE_LEASE_MS", "1000")
        .env("TERN_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Two processes started with one node id would share its lease, routes
/// and stream, each reaping the other's presence: the second is refused at
/// start, naming the id, while the first (renewing its lease) keeps
/// serving. Before the lease named its run, the second simply took it.
#[test]
fn a_second_node_with_the_same_id_is_refused() {
    let redis = Redis::start();
    let first = Node::start(&redis, "twin");
    first.wait_metric("tern_cluster_live_nodes 1");
    let dir = tempfile::tempdir().unwrap();
    let mut second = serve_as(&redis, "twin", dir.path());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the twin is still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.path().join("tern.log")).unwrap();
    assert!(!status.success(), "{status}\n{log}");
    assert!(log.contains("node id twin is in use"), "{log}");
    assert_eq!(metric(&first, "tern_cluster_node_id_conflicts_total"), 0);
    let (_c, welcome) = Client::login(first.tcp, "alice", "phone");
    assert_eq!(welcome.node_id, "twin");
}

/// A node killed with -9 and started again on its data dir takes its own
/// lease back at once (the data dir names the run that held it), instead
/// of waiting for it to expire like a stranger with its id would.
#[test]
fn a_killed_node_takes_its_own_lease_back_at_once() {
    use redis::Commands;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve_as(&redis, "phoenix", dir.path());
    let key = "{n:phoenix}:alive";
    let deadline = Instant::now() + WAIT;
    while !redis.conn().exists::<_, bool>(key).unwrap() {
        assert!(Instant::now() < deadline, "no lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = first.kill();
    let _ = first.wait();
    let held: String = redis.conn().get(key).unwrap();
    let mut again = serve_as(&redis, "phoenix", dir.path());
    // Serving (its lease renewed by the new run) while the old run's value
    // would still be there had it waited.
    let deadline = Instant::now() + WAIT;
    loop {
        let now: Option<String> = redis.conn().get(key).unwrap();
        if now
            .as_deref()
            .is_some_and(|v| v.split(':').next() != held.split(':').next())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restart did not take its lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.path().join("tern.log")).unwrap();
    assert!(!log.contains("waiting up to"), "{log}");
    let _ = again.kill();
    let _ = again.wait();
}

/// A node killed with -9 leaves its delivery stream behind; the node that
/// claims it deletes the stream once its users are re-checked (before, the
/// stream stayed in Redis for good, up to `channel_records_max` records).
#[test]
fn a_dead_nodes_stream_is_deleted_once_claimed() {
    use redis::Commands;
    let redis = Redis::start();
    let mut ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    alice.send_text("bob", "m1", "into n2's stream");
    bob.wait_push(is_text("into n2's stream"));
    let stream = "{n:n2}:ch";
    assert!(redis.conn().exists::<_, bool>(stream).unwrap());
    ns[1].kill9();
    let deadline = Instant::now() + WAIT;
    while redis.conn().exists::<_, bool>(stream).unwrap() {
        assert!(Instant::now() < deadline, "n2's stream is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    ns[0].wait_metric("tern_cluster_live_nodes 1");
}

/// Logs `user` in on `device` as an iOS phone (the `[login]` mobile class).
fn login_phone(addr: std::net::SocketAddr, user: &str, device: &str) -> Client {
    let mut c = Client::connect(addr);
    let r = c.request(Body::Auth(pb::Auth {
        token: support::Gateway::token(user),
        device_id: device.into(),
        protocol_version: 1,
        platform: pb::Platform::Ios as i32,
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    c
}

/// With `[login] mobile_devices_max = 1` on every node (docs/protocol.md,
/// "Devices and login policies"): the same device logging in on another
/// node is still DISPLACED across nodes (the policy does not turn it into a
/// policy kick, nor kick anything else); a second phone, on the other node
/// or on the same one, kicks the older one with LOGIN_POLICY (class limits
/// count the user's devices on every node: docs/cluster.md, "Login
/// policies across nodes"); each node lists the devices on both.
#[test]
fn login_policies_keep_displacement_across_nodes() {
    let redis = Redis::start();
    let policy = "\n[login]\nmobile_devices_max = 1\n";
    let ns: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|id| Node::start_with(&redis, id, policy))
        .collect();
    let mut old = login_phone(ns[0].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n1")]);
    let mut new = login_phone(ns[1].tcp, "bob", "phone");
    let kick = old.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::Displaced as i32);
    assert!(old.closed_within(WAIT));
    redis.wait_routes("bob", &[("phone", "n2")]);
    let list = |c: &mut Client| -> Vec<String> {
        match c.request(Body::DeviceList(pb::DeviceListRequest {})).body {
            Some(Body::DeviceListResult(r)) => r.devices.into_iter().map(|d| d.device_id).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(list(&mut new), ["phone"], "displaced, not listed twice");

    // Another phone on n1: the class holds one phone over both nodes, so
    // the older phone, on n2, is kicked by the policy.
    let mut other = login_phone(ns[0].tcp, "bob", "phone-2");
    let kick = new.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::LoginPolicy as i32);
    assert!(new.closed_within(WAIT));
    redis.wait_routes("bob", &[("phone-2", "n1")]);
    // A third phone on n1: the older phone there is kicked by the policy.
    let mut third = login_phone(ns[0].tcp, "bob", "phone-3");
    let kick = other.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
    let Some(Body::Kick(k)) = kick.body else {
        unreachable!()
    };
    assert_eq!(k.reason, pb::KickReason::LoginPolicy as i32);
    assert!(other.closed_within(WAIT));
    redis.wait_routes("bob", &[("phone-3", "n1")]);
    assert_eq!(list(&mut third), ["phone-3"]);
}
