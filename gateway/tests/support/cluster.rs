//! Cluster test harness: a durable `redis-server` (the backend's test
//! harness) and real `tern serve --store redis` processes (the built
//! binary) on free loopback ports, with distinct node ids and data dirs.
//! Included by the cluster test files with
//! `#[path = "support/cluster.rs"] mod cluster_support;` next to
//! `mod support;` and the `redis_harness` module.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::redis_harness;
use super::support::{SECRET, delivered_text};
use tern_protocol::pb;

/// Bound of every wait in the cluster tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// Ports from below the ephemeral range: see [`tern_testkit::free_port`].
pub use tern_testkit::free_port;

/// A durable `redis-server` of the backend's test harness, with the route
/// table reads these tests check.
pub struct Redis(pub redis_harness::RedisServer);

impl Redis {
    pub fn start() -> Self {
        Self(redis_harness::RedisServer::start(
            redis_harness::ServerOptions::DURABLE,
        ))
    }

    pub fn url(&self) -> String {
        self.0.url()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The route hash of `user`: `(device, node)` sorted.
    pub fn routes(&self, user: &str) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(format!("{{u:{user}}}:rt"))
            .query(&mut self.conn())
            .unwrap();
        r.sort();
        r
    }

    /// Waits until `user`'s routes are exactly `want`.
    pub fn wait_routes(&self, user: &str, want: &[(&str, &str)]) {
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
pub struct Node {
    pub child: Child,
    pub id: String,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub _dir: tempfile::TempDir,
}

/// A `[limits]` section with every rate limit off.
const LIMITS_OFF: &str = "[limits]\nrequests_per_connection_per_second = 0\n\
    messages_per_connection_per_second = 0\nmessages_per_user_per_second = 0\n\
    logins_per_user_per_minute = 0\nconnections_per_ip_per_second = 0\n\
    flap_connects_max = 0\nrefusals_before_kick = 0\n";

impl Node {
    /// Starts node `id` on `redis` with a short lease (1 s, so a killed
    /// node is dead to the others within the test's bounds).
    pub fn start(redis: &Redis, id: &str) -> Self {
        Self::start_with(redis, id, "")
    }

    /// Like [`Node::start`], with `extra` appended to its config file.
    pub fn start_with(redis: &Redis, id: &str, extra: &str) -> Self {
        Self::spawn(&[redis.url()], false, id, extra)
    }

    /// A node on the Redis at `urls` (Redis Cluster seeds when `cluster`).
    pub fn spawn(urls: &[String], cluster: bool, id: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        std::fs::write(
            &config,
            // The rate limits are off: the tests send and reconnect as fast
            // as they can (gateway/tests/limits.rs tests the limits). First,
            // so that `extra`'s bare keys stay in [cluster].
            format!("{LIMITS_OFF}[cluster]\nnode_lease_ms = 1000\nnodes_refresh_ms = 100\n{extra}"),
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

    pub fn metrics(&self) -> String {
        let Ok(mut s) = TcpStream::connect(self.http) else {
            return String::new();
        };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// Waits until /metrics has a line starting with `line`.
    pub fn wait_metric(&self, line: &str) {
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

    pub fn kill9(&mut self) {
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
pub fn nodes(redis: &Redis, n: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::start(redis, &format!("n{i}")))
        .collect();
    for node in &nodes {
        node.wait_metric(&format!("tern_cluster_live_nodes {n}"));
    }
    nodes
}

pub fn is_text(text: &'static str) -> impl Fn(&pb::Frame) -> bool {
    move |f| delivered_text(f).is_some_and(|(_, _, t)| t == text)
}

pub fn records_out(node: &Node) -> u64 {
    metric(node, "tern_cluster_records_sent_total")
}

/// The value of an unlabelled sample of `node`'s /metrics (0 if absent).
pub fn metric(node: &Node, name: &str) -> u64 {
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `a` asks `b` to be friends and `b` accepts (presence goes to friends
/// only); `a_id` and `b_id` are their user ids.
pub fn befriend(
    a: &mut super::support::Client,
    b: &mut super::support::Client,
    a_id: &str,
    b_id: &str,
) {
    use tern_protocol::pb::frame::Body;
    let r = a.request(Body::FriendRequest(pb::FriendRequestSend {
        user_id: b_id.into(),
        message: "hi".into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = b.request(Body::FriendAccept(pb::FriendAccept {
        user_id: a_id.into(),
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
}

/// Whether `f` is a presence push saying `user` is in `state`.
pub fn is_presence(user: &'static str, state: pb::PresenceState) -> impl Fn(&pb::Frame) -> bool {
    move |f| match &f.body {
        Some(pb::frame::Body::PresenceEvent(p)) => p
            .presence
            .as_ref()
            .is_some_and(|p| p.user_id == user && p.state == state as i32),
        _ => false,
    }
}

/// `user`'s presence state as `c` reads it (a `PresenceQuery`).
pub fn presence_state(c: &mut super::support::Client, user: &str) -> i32 {
    let r = c.request(pb::frame::Body::PresenceQuery(pb::PresenceQuery {
        user_ids: vec![user.into()],
    }));
    let Some(pb::frame::Body::PresenceResult(p)) = r.body else {
        panic!("{r:?}")
    };
    p.presences[0].state
}

/// The texts of the message entries of a `SyncResult` answer.
pub fn synced_texts(f: &pb::Frame) -> Vec<String> {
    let Some(pb::frame::Body::SyncResult(r)) = &f.body else {
        panic!("not a sync result: {f:?}")
    };
    r.entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
                pb::content::Kind::Text(t) => Some(t.text.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

// ---- drain (cluster_drain.rs) ----------------------------------------------

impl Node {
    /// Sends SIGTERM (a clean stop: the node drains).
    pub fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the PID of a child this test started and has
        // not reaped (the Child is still held).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits (bounded by `wait`) for the process to exit; its status.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Redis {
    /// Whether node `id` holds a lease or is listed in `tern:nodes`.
    pub fn node_present(&self, id: &str) -> (bool, bool) {
        let mut c = self.conn();
        let lease: bool = redis::cmd("EXISTS")
            .arg(format!("{{n:{id}}}:alive"))
            .query(&mut c)
            .unwrap();
        let listed: bool = redis::cmd("SISMEMBER")
            .arg("tern:nodes")
            .arg(id)
            .query(&mut c)
            .unwrap();
        (lease, listed)
    }
}
