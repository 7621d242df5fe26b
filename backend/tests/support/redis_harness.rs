//! Test harness: real `redis-server` processes on free loopback ports, each
//! in its own temporary directory, and a 3-master Redis Cluster built from
//! them with `redis-cli --cluster create`.
//!
//! Never mocks Redis and never touches a system Redis: every server is
//! started here, owned by the test, and killed by its PID when dropped.
//! A missing `redis-server` fails the test with a message saying how to
//! install it; it never skips (CI installs it, see `scripts/test.sh`).
//!
//! Included by the Redis test files with
//! `#[path = "support/redis_harness.rs"] mod redis_harness;`.

// Tests may sleep while they wait for a server; the workspace bans it on
// shard and worker threads only.
#![allow(clippy::disallowed_methods, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const SERVER_START_TIMEOUT_MS: u64 = 10_000;
/// How long a cluster may take to reach `cluster_state:ok` on every node.
const CLUSTER_OK_TIMEOUT_MS: u64 = 30_000;
/// How often we poll a starting server.
const POLL_INTERVAL_MS: u64 = 20;
/// How many times we try fresh ports when another process took ours between
/// probing and binding.
const PORT_ATTEMPTS_MAX: usize = 5;
/// Bytes of the server log quoted in a failure message.
const LOG_TAIL_BYTES_MAX: usize = 4_000;

/// How a server is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// `--appendonly yes --appendfsync always`: every write is in the AOF
    /// and fsynced before Redis replies. Off: no persistence at all.
    pub aof_always: bool,
    /// `--cluster-enabled yes`, for building a cluster.
    pub cluster: bool,
}

impl ServerOptions {
    /// A throwaway server: no RDB, no AOF.
    pub const EPHEMERAL: Self = Self {
        aof_always: false,
        cluster: false,
    };
    /// A durable server: AOF with `appendfsync always`.
    pub const DURABLE: Self = Self {
        aof_always: true,
        cluster: false,
    };
}

/// One `redis-server` process owned by the test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Cluster bus port (only used with `cluster`).
    bus_port: u16,
    options: ServerOptions,
    /// More `redis-server` arguments, kept for restarts.
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers
    /// PING. Panics (failing the test) with the server log when it cannot.
    pub fn start(options: ServerOptions) -> Self {
        Self::start_with(options, &[])
    }

    /// Like [`RedisServer::start`], with more `redis-server` arguments
    /// (e.g. `["--replicaof", "127.0.0.1", "6379"]`).
    pub fn start_with(options: ServerOptions, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::Builder::new()
            .prefix("tern-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS_MAX {
            let port = free_port();
            let bus_port = free_port();
            match spawn_and_wait(dir.path(), port, bus_port, options, &extra_args) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        bus_port,
                        options,
                        extra_args,
                        dir,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS_MAX} attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (AOF, RDB, nodes.conf, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PID of the running server process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the server (by its PID: `Child::kill`) and reaps it. No
    /// shutdown hook runs: whatever Redis had not written is lost, exactly
    /// as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and
    /// directory, so it reloads its AOF. Waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        loop {
            match spawn_and_wait(
                self.dir.path(),
                self.port,
                self.bus_port,
                self.options,
                &self.extra_args,
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)),
            }
        }
    }

    /// Runs one command over a raw RESP connection and returns the reply's
    /// text (simple string, bulk string, integer or error line). For the
    /// harness's own checks; stores use the redis crate.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        resp_command(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `redis-server` in `dir` on `port` and waits for PING; the child on
/// success, the reason (with the log's tail) on failure.
fn spawn_and_wait(
    dir: &Path,
    port: u16,
    bus_port: u16,
    options: ServerOptions,
    extra_args: &[String],
) -> Result<Child, String> {
    let binary = binary("REDIS_SERVER", "redis-server");
    let mut cmd = Command::new(&binary);
    cmd.arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        // No RDB snapshots: durability comes from the AOF alone, and
        // without it the server is throwaway.
        .args(["--save", ""]);
    if options.aof_always {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    if options.cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "5000"])
        .arg("--cluster-port")
        .arg(bus_port.to_string());
    }
    cmd.args(extra_args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {binary:?}: {e}. The Redis tests need redis-server >= 7: \
             `apt-get install -y redis-server redis-tools` (or set REDIS_SERVER)"
        )
    })?;
    let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(format!(
                "redis-server on port {} exited with {status}: {stderr}\n{}",
                port,
                log_tail(&dir.join("redis.log"))
            ));
        }
        // PING answers PONG only once the AOF is loaded; while loading,
        // Redis answers -LOADING.
        if resp_command(port, &["PING"]).as_deref() == Ok("PONG") {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {} did not answer PING within {SERVER_START_TIMEOUT_MS} ms\n{}",
                port,
                log_tail(&dir.join("redis.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// A Redis Cluster of `masters` primaries and no replicas, on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers (AOF `always` when
    /// `aof_always`), joins them with `redis-cli --cluster create
    /// --cluster-replicas 0`, and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize, aof_always: bool) -> Self {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let options = ServerOptions {
            aof_always,
            cluster: true,
        };
        let nodes: Vec<RedisServer> = (0..masters).map(|_| RedisServer::start(options)).collect();
        let cli = binary("REDIS_CLI", "redis-cli");
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!(
                "cannot run {cli:?}: {e}. The Redis Cluster tests need redis-cli: \
                 `apt-get install -y redis-tools` (or set REDIS_CLI)"
            )
        });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// The nodes' URLs, for `ClusterClient::new`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes themselves (to kill or restart one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Kills every node (SIGKILL) and starts each again on its port and
    /// directory (its AOF and nodes.conf), then waits for `cluster_state:ok`.
    pub fn restart_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for n in &mut self.nodes {
            n.restart();
        }
        self.wait_ok();
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let s = self.nodes[0]
            .command(&["CLUSTER", "KEYSLOT", key])
            .expect("CLUSTER KEYSLOT");
        s.parse().expect("a slot number")
    }

    /// Index (into [`RedisCluster::nodes_mut`]) of the master serving
    /// `slot`, as the first node's `CLUSTER NODES` says.
    pub fn owner_of(&self, slot: u16) -> usize {
        let text = self.nodes[0]
            .command(&["CLUSTER", "NODES"])
            .expect("CLUSTER NODES");
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") {
                continue;
            }
            let serves = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false, // an open migration: [slot->-id]
                }
            });
            if serves {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("ip:port@bus in CLUSTER NODES");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("the owner is one of ours");
            }
        }
        panic!("no master serves slot {slot}:\n{text}");
    }

    /// Moves `slot` from its owner to master `to` while the cluster serves
    /// traffic, the way `redis-cli --cluster reshard` does: `SETSLOT
    /// IMPORTING` on `to`, `SETSLOT MIGRATING` on the owner, then `MIGRATE`
    /// of the slot's keys `keys_per_step` at a time, calling `between` after
    /// each step (so clients meet the half-moved slot: `ASK` redirects, and
    /// `TRYAGAIN` for a multi-key command whose keys are split), and last
    /// `SETSLOT NODE` on `to`, the old owner and the rest (`MOVED` from
    /// then on). Returns how many keys moved. A slot already on `to` moves
    /// nothing.
    pub fn move_slot(
        &self,
        slot: u16,
        to: usize,
        keys_per_step: usize,
        mut between: impl FnMut(),
    ) -> usize {
        let from = self.owner_of(slot);
        if from == to {
            return 0;
        }
        let id = |i: usize| {
            self.nodes[i]
                .command(&["CLUSTER", "MYID"])
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot_s = slot.to_string();
        self.nodes[to]
            .command(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])
            .expect("SETSLOT IMPORTING");
        self.nodes[from]
            .command(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])
            .expect("SETSLOT MIGRATING");
        between();
        let mut conn = redis::Client::open(self.nodes[from].url())
            .expect("a redis url")
            .get_connection()
            .expect("connect to the slot's owner");
        let mut moved = 0;
        // Bounded: every step moves at least one key or ends the loop, and
        // the slot holds a finite number of keys that only the test adds.
        for _ in 0..100_000 {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(keys_per_step.max(1))
                .query(&mut conn)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut conn)
                .expect("MIGRATE");
            moved += keys.len();
            between();
        }
        // The new owner first, then the old one, then the others (the
        // order `redis-cli` uses, so no node is left pointing nowhere).
        let mut order = vec![to, from];
        order.extend((0..self.nodes.len()).filter(|i| *i != to && *i != from));
        for i in order {
            self.nodes[i]
                .command(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id])
                .expect("SETSLOT NODE");
        }
        moved
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_OK_TIMEOUT_MS);
        for n in &self.nodes {
            loop {
                let info = n.command(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {} not ok within {CLUSTER_OK_TIMEOUT_MS} ms: {info}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5));
            }
        }
    }
}

/// The binary named by `env`, else `name` from PATH. Fails the test with an
/// install hint when neither exists: Redis tests never skip.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` not found on PATH (and {env} is not set). The Redis store tests run a real \
         Redis >= 7: install it with `apt-get install -y redis-server redis-tools` \
         (scripts/test.sh does this in CI)."
    );
}

/// Ports from below the ephemeral range: see [`tern_testkit::free_port`].
use tern_testkit::free_port;

fn log_tail(path: &Path) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    let from = log.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    format!(
        "--- {} ---\n{}",
        path.display(),
        String::from_utf8_lossy(&log[from..])
    )
}

/// One command over a fresh RESP2 connection; the reply as text. Errors are
/// `Err(line)`. Arrays are not needed by the harness and are refused.
fn resp_command(port: u16, args: &[&str]) -> Result<String, String> {
    let timeout = Some(Duration::from_millis(SERVER_START_TIMEOUT_MS));
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&stream)
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches("\r\n");
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => Ok(line[1..].to_owned()),
        Some(b'-') => Err(line[1..].to_owned()),
        Some(b'$') => {
            let len: i64 = line[1..]
                .parse()
                .map_err(|_| format!("bad bulk length {line}"))?;
            if len < 0 {
                return Ok(String::new());
            }
            // Our own server's answer to our own command: trusted length.
            let mut buf = vec![0u8; len as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(len as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}
