//! Many gateway nodes on one Redis: real `tern serve --store redis`
//! processes (the built binary) on free loopback ports, with distinct node
//! ids and data dirs, on a real `redis-server` started here; clients speak
//! the raw protocol. Every wait is bounded. Fails (does not skip) when
//! redis-server is missing: the test command installs it.
#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{Client, SECRET, delivered_text};
use tern_protocol::pb::{self, frame::Body};

/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A durable `redis-server` of the backend's test harness, with the route
/// table reads these tests check.
struct Redis(redis_harness::RedisServer);

impl Redis {
    fn start() -> Self {
        Self(redis_harness::RedisServer::start(
            redis_harness::ServerOptions::DURABLE,
        ))
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The route hash of `user`: `(device, node)` sorted.
    fn routes(&self, user: &str) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(format!("{{u:{user}}}:rt"))
            .query(&mut self.conn())
            .unwrap();
        r.sort();
        r
    }

    /// Waits until `user`'s routes are exactly `want`.
    fn wait_routes(&self, user: &str, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(d, n)| ((*d).into(), (*n).into()))
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.routes(user);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "routes of {user}: {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A `tern serve --store redis` process.
struct Node {
    child: Child,
    id: String,
    tcp: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts node `id` on `redis` with a short lease (1 s, so a killed
    /// node is dead to the others within the test's bounds).
    fn start(redis: &Redis, id: &str) -> Self {
        Self::start_with(redis, id, "")
    }

    /// Like [`Node::start`], with `extra` appended to its config file.
    fn start_with(redis: &Redis, id: &str, extra: &str) -> Self {
        Self::spawn(&[redis.url()], false, id, extra)
    }

    /// A node on the Redis at `urls` (Redis Cluster seeds when `cluster`).
    fn spawn(urls: &[String], cluster: bool, id: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        std::fs::write(
            &config,
            format!("[cluster]\nnode_lease_ms = 1000\nnodes_refresh_ms = 100\n{extra}"),
        )
        .unwrap();
        let (tcp, ws, http) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--store", "redis", "--redis-url", &urls.join(",")])
            .args(cluster.then_some("--redis-cluster"))
            .args(["--listen", &format!("127.0.0.1:{tcp}")])
            .args(["--ws-listen", &format!("127.0.0.1:{ws}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--jwt-secret", SECRET, "--shards", "2", "--driver", "epoll"])
            .args(["--node-id", id])
            .arg("--data-dir")
            .arg(dir.path())
            .env("TERN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let node = Self {
            child,
            id: id.into(),
            tcp: SocketAddr::from(([127, 0, 0, 1], tcp)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(node.tcp).is_err() {
            assert!(Instant::now() < deadline, "node {id} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn metrics(&self) -> String {
        let Ok(mut s) = TcpStream::connect(self.http) else {
            return String::new();
        };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// Waits until /metrics has a line starting with `line`.
    fn wait_metric(&self, line: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics();
            if text.lines().any(|l| l.starts_with(line)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {line:?} in\n{text}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` nodes and waits until each sees all of them live.
fn nodes(redis: &Redis, n: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::start(redis, &format!("n{i}")))
        .collect();
    for node in &nodes {
        node.wait_metric(&format!("tern_cluster_live_nodes {n}"));
    }
    nodes
}

fn is_text(text: &'static str) -> impl Fn(&pb::Frame) -> bool {
    move |f| delivered_text(f).is_some_and(|(_, _, t)| t == text)
}

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

fn records_out(node: &Node) -> u64 {
    metric(node, "tern_cluster_records_sent_total")
}

/// The value of an unlabelled sample of `node`'s /metrics (0 if absent).
fn metric(node: &Node, name: &str) -> u64 {
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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
/// body) is counted and skipped, and the node keeps delivering.
#[test]
fn malformed_records_are_counted_and_skipped() {
    let redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let mut c = redis.conn();
    let garbage: [&[&[u8]]; 4] = [
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
    ];
    for fields in garbage {
        redis::cmd("XADD")
            .arg("{n:n2}:ch")
            .arg("*")
            .arg(fields)
            .query::<String>(&mut c)
            .unwrap();
    }
    ns[1].wait_metric("tern_cluster_records_malformed_total 4");
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

/// The route ring's bound has its defined outcome: with one slot and a
/// cluster thread that drains it once a second, a burst of logins overflows
/// it; the overflow is counted (`tern_cluster_route_ring_full_total`), the
/// logins themselves succeed, and the change that fit is written.
#[test]
fn a_full_route_ring_drops_and_counts() {
    let redis = Redis::start();
    let node = Node::start_with(
        &redis,
        "n1",
        "route_ring_entries_max = 1\nroute_flush_ms = 1000\n[shards]\ncount = 1\n",
    );
    let clients: Vec<Client> = (0..5)
        .map(|i| Client::login(node.tcp, &format!("u{i}"), "d").0)
        .collect();
    // Every change is either written or counted as dropped.
    let deadline = Instant::now() + WAIT;
    let (written, full) = loop {
        let (w, f) = (
            metric(&node, "tern_cluster_route_writes_total"),
            metric(&node, "tern_cluster_route_ring_full_total"),
        );
        if w + f == 5 {
            break (w, f);
        }
        assert!(Instant::now() < deadline, "writes {w} + dropped {f} != 5");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(full >= 1, "no overflow counted");
    let routes: usize = (0..5).map(|i| redis.routes(&format!("u{i}")).len()).sum();
    assert_eq!(routes as u64, written);
    drop(clients);
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
