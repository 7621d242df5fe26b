//! Start-up of the real `tern` binary (spawned as a process, on loopback
//! ports, in a fresh working directory, with a clean environment): what an
//! operator sees when things go wrong at start, the flags, the logs, dev
//! mode, and a drain on both drivers; plus one in-process test of the
//! shared listening socket at drain. Each test says what it proves.

// Tests poll a child process with short sleeps.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::{Client, SECRET, WAIT, drivers};
use tern_protocol::pb::{self, frame::Body};

/// How long a process may take to start or to exit.
const START_WAIT: Duration = Duration::from_secs(30);

/// `N` loopback ports for a `tern` to listen on ([`tern_testkit::free_port`]).
fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| tern_testkit::free_port())
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A `tern` process with its output collected line by line.
struct Tern {
    child: Child,
    out: mpsc::Receiver<(bool, String)>,
    /// Everything read from stderr so far.
    stderr: String,
    /// Everything read from stdout so far.
    stdout: String,
    status: Option<ExitStatus>,
}

impl Tern {
    /// Runs `tern ARGS` in `dir` with only `envs` in its environment.
    fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, out) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((false, line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send((true, line));
            }
        });
        Self {
            child,
            out,
            stderr: String::new(),
            stdout: String::new(),
            status: None,
        }
    }

    /// `tern serve` on the given ports with the test secret.
    fn serve(dir: &Path, [tcp, ws, http]: [u16; 3], extra: &[&str]) -> Self {
        let (tcp, ws, http) = (addr(tcp), addr(ws), addr(http));
        let mut args = vec![
            "serve",
            "--listen",
            &tcp,
            "--ws-listen",
            &ws,
            "--http",
            &http,
            "--shards",
            "2",
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--dev") && !extra.contains(&"--jwt-secret") {
            args.extend_from_slice(&["--jwt-secret", SECRET]);
        }
        Self::spawn(dir, &args, &[])
    }

    /// Reads what arrived, for at most `wait`; true once `done` holds.
    fn pump_until(&mut self, wait: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            while let Ok((is_err, line)) = self.out.try_recv() {
                let buf = if is_err {
                    &mut self.stderr
                } else {
                    &mut self.stdout
                };
                buf.push_str(&line);
                buf.push('\n');
            }
            if done(self) {
                return true;
            }
            if self.status.is_none() {
                self.status = self.child.try_wait().unwrap();
            } else if self.out.try_recv().is_err() {
                // Exited and its output is drained (the reader threads end
                // at EOF; give them a moment).
                std::thread::sleep(Duration::from_millis(20));
                if let Ok((is_err, line)) = self.out.try_recv() {
                    let buf = if is_err {
                        &mut self.stderr
                    } else {
                        &mut self.stdout
                    };
                    buf.push_str(&line);
                    buf.push('\n');
                    continue;
                }
                return done(self);
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server says it serves; panics with its output if it
    /// does not.
    fn wait_serving(&mut self) {
        let ok = self.pump_until(START_WAIT, |t| t.stderr.contains("tern serving"));
        assert!(ok, "tern did not start:\n{}", self.stderr);
    }

    /// Waits (bounded) for the process to exit; its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let ok = self.pump_until(START_WAIT, |t| t.status.is_some());
        assert!(ok, "tern did not exit:\nstderr:\n{}", self.stderr);
        self.pump_until(Duration::from_millis(200), |_| false);
        self.status.unwrap()
    }

    /// SIGTERM, then the exit status (bounded).
    fn terminate(&mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill with a pid of our own child and a valid signal.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait_exit()
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A second `tern serve` on the addresses of a running one exits at once,
/// non-zero, naming the listener and the address, and creates nothing: its
/// data dir does not exist (it binds before it opens the store). Without
/// this, SO_REUSEPORT let both run and split clients between two stores.
#[test]
fn second_serve_on_the_same_addresses_fails_at_bind() {
    let dir = tmp();
    let ports = free_ports::<3>();
    let mut first = Tern::serve(dir.path(), ports, &["--data-dir", "one"]);
    first.wait_serving();
    let mut second = Tern::serve(dir.path(), ports, &["--data-dir", "two"]);
    let status = second.wait_exit();
    assert!(!status.success(), "second tern: {status}");
    let want = format!(
        "TCP listener 127.0.0.1:{}: address already in use (is another tern running?)",
        ports[0]
    );
    assert!(second.stderr.contains(&want), "{}", second.stderr);
    assert_eq!(second.stderr.lines().count(), 1, "{}", second.stderr);
    assert!(!dir.path().join("two").exists(), "data dir was created");
    // The first one still serves.
    let (mut c, _) = Client::login(format!("127.0.0.1:{}", ports[0]).parse().unwrap(), "a", "d");
    assert!(matches!(
        c.request(Body::Ping(pb::Ping { nonce: 1 })).body,
        Some(Body::Pong(_))
    ));
    assert!(first.terminate().success());
}

/// Two servers on different ports but one data dir: the second says that
/// another tern uses that data dir (fjall's lock), once, and exits non-zero.
/// SIGHUP reloads (`tern_gateway::reload`) instead of ending the process
/// (its default action): the server logs the reload, still serves, and a
/// SIGTERM after it drains with success.
#[test]
fn sighup_reloads_and_keeps_serving() {
    let dir = tmp();
    let ports = free_ports::<3>();
    let mut tern = Tern::serve(dir.path(), ports, &["--data-dir", "d"]);
    tern.wait_serving();
    let pid = i32::try_from(tern.child.id()).unwrap();
    // SAFETY: kill with a pid of our own child and a valid signal.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let ok = tern.pump_until(START_WAIT, |t| t.stderr.contains("SIGHUP: reload done"));
    assert!(ok, "no reload logged:\n{}", tern.stderr);
    assert!(
        tern.status.is_none(),
        "tern exited on SIGHUP: {:?}",
        tern.status
    );
    std::net::TcpStream::connect(addr(ports[0])).expect("still listening after SIGHUP");
    let status = tern.terminate();
    assert!(status.success(), "{status}\n{}", tern.stderr);
}

#[test]
fn a_data_dir_in_use_is_named() {
    let dir = tmp();
    let mut first = Tern::serve(dir.path(), free_ports::<3>(), &["--data-dir", "shared"]);
    first.wait_serving();
    let mut second = Tern::serve(dir.path(), free_ports::<3>(), &["--data-dir", "shared"]);
    assert!(!second.wait_exit().success());
    assert_eq!(
        second.stderr.trim(),
        "error: opening the embedded store: another tern is using data dir shared",
        "{}",
        second.stderr
    );
    assert!(first.terminate().success());
}

/// A usage error (`tern token` without a secret) is one `error:` line and
/// exit status 1, with no backtrace even under RUST_BACKTRACE=1.
#[test]
fn usage_error_is_one_line_without_backtrace() {
    let dir = tmp();
    let mut t = Tern::spawn(
        dir.path(),
        &["token", "--user", "alice"],
        &[("RUST_BACKTRACE", "1")],
    );
    assert_eq!(t.wait_exit().code(), Some(1));
    assert_eq!(t.stderr.lines().count(), 1, "{}", t.stderr);
    assert!(t.stderr.starts_with("error: no secret"), "{}", t.stderr);
    assert!(
        !t.stderr.to_lowercase().contains("backtrace"),
        "{}",
        t.stderr
    );
}

/// A misspelt config key is reported once (not once more as its cause),
/// naming the key, and the server does not start.
#[test]
fn a_bad_config_key_is_reported_once() {
    let dir = tmp();
    std::fs::write(
        dir.path().join("tern.toml"),
        "[sesion]\nauth_timeout_ms = 5\n",
    )
    .unwrap();
    let mut t = Tern::spawn(
        dir.path(),
        &["serve", "--config", "tern.toml", "--jwt-secret", "s"],
        &[("RUST_BACKTRACE", "1")],
    );
    assert_eq!(t.wait_exit().code(), Some(1));
    assert_eq!(
        t.stderr.matches("unknown field `sesion`").count(),
        1,
        "{}",
        t.stderr
    );
    assert!(
        t.stderr.starts_with("error: bad config file tern.toml"),
        "{}",
        t.stderr
    );
    assert!(!dir.path().join("tern-data").exists());
}

/// A Redis that cannot be reached: the error names the URL and says the
/// cause once (it used to repeat it three times).
#[test]
fn an_unreachable_redis_is_named_once() {
    let dir = tmp();
    let [closed] = free_ports::<1>();
    let url = format!("redis://127.0.0.1:{closed}");
    let mut t = Tern::serve(
        dir.path(),
        free_ports::<3>(),
        &["--store", "redis", "--redis-url", &url],
    );
    assert_eq!(t.wait_exit().code(), Some(1));
    assert!(
        t.stderr
            .contains(&format!("opening the Redis store at {url}")),
        "{}",
        t.stderr
    );
    assert_eq!(t.stderr.matches("refused").count(), 1, "{}", t.stderr);
}

/// `--listen localhost:PORT` is accepted (resolved to its first address)
/// and clients reach the server there.
#[test]
fn listen_takes_a_host_name() {
    let dir = tmp();
    let [tcp, ws, http] = free_ports::<3>();
    let listen = format!("localhost:{tcp}");
    let mut t = Tern::spawn(
        dir.path(),
        &[
            "serve",
            "--listen",
            &listen,
            "--ws-listen",
            &addr(ws),
            "--http",
            &addr(http),
            "--jwt-secret",
            SECRET,
        ],
        &[],
    );
    t.wait_serving();
    let bound: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&listen)
        .unwrap()
        .next()
        .unwrap();
    assert!(t.stderr.contains(&format!("tcp={bound}")), "{}", t.stderr);
    let (_c, w) = Client::login(bound, "alice", "d");
    assert!(!w.node_id.is_empty());
    assert!(t.terminate().success());
}

/// The start line names the store, the listeners plainly (no `Some(..)`),
/// shards, driver and node; stderr (a pipe here) has no ANSI colours and no
/// INFO chatter from the storage engine.
#[test]
fn start_log_is_plain_and_quiet() {
    let dir = tmp();
    let ports = free_ports::<3>();
    let mut t = Tern::serve(dir.path(), ports, &["--node-id", "n1", "--driver", "epoll"]);
    t.wait_serving();
    assert!(t.terminate().success());
    let log = &t.stderr;
    assert!(!log.contains('\x1b'), "ANSI escapes in a pipe:\n{log}");
    assert!(!log.contains("fjall") && !log.contains("lsm_tree"), "{log}");
    assert!(!log.contains("Some("), "{log}");
    let start = log.lines().find(|l| l.contains("tern serving")).unwrap();
    for want in [
        "store=embedded (./tern-data)".to_owned(),
        format!("tcp=127.0.0.1:{}", ports[0]),
        format!("ws=127.0.0.1:{}", ports[1]),
        format!("http=127.0.0.1:{}", ports[2]),
        "shards=2".to_owned(),
        "driver=epoll".to_owned(),
        "node=n1".to_owned(),
    ] {
        assert!(start.contains(&want), "{want} not in {start}");
    }
}

/// `TERN_LOG_FORMAT=json` makes every log line a JSON object; the start
/// line's fields are JSON fields.
#[test]
fn json_logs_when_asked() {
    let dir = tmp();
    let [tcp, ws, http] = free_ports::<3>();
    let (tcp, ws, http) = (addr(tcp), addr(ws), addr(http));
    let mut t = Tern::spawn(
        dir.path(),
        &[
            "serve",
            "--listen",
            &tcp,
            "--ws-listen",
            &ws,
            "--http",
            &http,
            "--jwt-secret",
            SECRET,
        ],
        &[("TERN_LOG_FORMAT", "json")],
    );
    t.wait_serving();
    assert!(t.terminate().success());
    let lines: Vec<serde_json::Value> = t
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "tern serving")
        .unwrap();
    assert_eq!(start["fields"]["tcp"], tcp.as_str());
    assert_eq!(start["level"], "INFO");
}

/// `tern token --help` offers only what a token needs; `tern serve --help`
/// shows each flag's default.
#[test]
fn help_lists_what_each_command_takes() {
    let dir = tmp();
    let mut t = Tern::spawn(dir.path(), &["token", "--help"], &[]);
    assert!(t.wait_exit().success());
    for flag in [
        "--user",
        "--ttl",
        "--audience",
        "--jwt-secret",
        "--config",
        "--dev",
    ] {
        assert!(t.stdout.contains(flag), "{flag} missing:\n{}", t.stdout);
    }
    for flag in ["--listen", "--data-dir", "--shards", "--store", "--driver"] {
        assert!(!t.stdout.contains(flag), "{flag} listed:\n{}", t.stdout);
    }
    let mut s = Tern::spawn(dir.path(), &["serve", "--help"], &[]);
    assert!(s.wait_exit().success());
    for want in [
        "[default: 127.0.0.1:7400]",
        "[default: 127.0.0.1:7401]",
        "[default: 127.0.0.1:7480]",
        "[default: ./tern-data]",
        "[default: embedded]",
        "[default: auto]",
        "host:port",
    ] {
        assert!(s.stdout.contains(want), "{want} missing:\n{}", s.stdout);
    }
}

/// `backend.group_members_max` from a config file reaches the chat domain:
/// with a max of 3, a group of the owner and two members is created, and
/// inviting a third member is refused with LIMIT_REACHED.
#[test]
fn group_members_max_is_enforced_through_the_gateway() {
    let dir = tmp();
    std::fs::write(
        dir.path().join("tern.toml"),
        "[backend]\ngroup_members_max = 3\n",
    )
    .unwrap();
    let ports = free_ports::<3>();
    let mut t = Tern::serve(dir.path(), ports, &["--config", "tern.toml"]);
    t.wait_serving();
    let at: SocketAddr = addr(ports[0]).parse().unwrap();
    let (mut owner, _) = Client::login(at, "owner", "d");
    let r = owner.request(Body::GroupCreate(pb::GroupCreate {
        group_id: "small".into(),
        name: "Small".into(),
        members: vec!["m1".into(), "m2".into()],
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
    let r = owner.request(Body::GroupInvite(pb::GroupInvite {
        group_id: "small".into(),
        user_ids: vec!["m3".into()],
    }));
    let Some(Body::Error(e)) = r.body else {
        panic!("expected LIMIT_REACHED, got {r:?}")
    };
    assert_eq!(e.code, pb::ErrorCode::LimitReached as i32, "{e:?}");
    assert!(t.terminate().success());
}

/// `tern serve --dev` needs no secret, says loudly that it is for
/// development, and prints tern-cli commands for alice and bob whose
/// secret the server accepts; a token signed with it logs in.
#[test]
fn dev_mode_prints_working_commands() {
    let dir = tmp();
    let ports = free_ports::<3>();
    let mut t = Tern::serve(dir.path(), ports, &["--dev"]);
    t.wait_serving();
    t.pump_until(WAIT, |t| t.stdout.contains("--user bob"));
    assert!(t.stdout.contains("DEVELOPMENT MODE"), "{}", t.stdout);
    let alice = t
        .stdout
        .lines()
        .find(|l| l.contains("--user alice"))
        .unwrap()
        .to_owned();
    let words: Vec<&str> = alice.split_whitespace().collect();
    // The command is `tern-cli` on PATH, or a path to one that exists.
    assert!(
        words[0] == "tern-cli" || (words[0].ends_with("/tern-cli") && Path::new(words[0]).exists()),
        "{alice}"
    );
    let arg = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    assert_eq!(arg("--server"), addr(ports[0]));
    let token = tern_gateway::auth::mint_hs256(arg("--jwt-secret"), "alice", 60, None).unwrap();
    let mut c = Client::connect(addr(ports[0]).parse().unwrap());
    let r = c.request(Body::Auth(pb::Auth {
        token,
        device_id: "d".into(),
        protocol_version: 1,
        ..Default::default()
    }));
    assert!(matches!(r.body, Some(Body::Welcome(_))), "{r:?}");
    assert!(t.terminate().success());
}

/// `--dev` is refused beside a secret of its own or a listener off
/// loopback (its secret is public), before anything is created.
#[test]
fn dev_mode_refuses_production_settings() {
    let dir = tmp();
    for extra in [
        vec!["--dev", "--jwt-secret", "prod-secret"],
        vec!["--dev", "--listen", "0.0.0.0:0"],
    ] {
        let mut args = vec!["serve"];
        args.extend(extra.iter().copied());
        let mut t = Tern::spawn(dir.path(), &args, &[]);
        assert_eq!(t.wait_exit().code(), Some(1), "{extra:?}");
        assert!(t.stderr.starts_with("error: --dev refused"), "{}", t.stderr);
        assert!(!dir.path().join("tern-data").exists());
    }
}

/// SIGTERM drains on both drivers with all shards sharing one listening
/// socket: the client is kicked, the process exits 0 (nothing hangs), and
/// the port is free again afterwards.
#[test]
fn drain_on_both_drivers_releases_the_port() {
    for driver in drivers() {
        let driver = match driver {
            tern_gateway::config::Driver::Uring => "uring",
            _ => "epoll",
        };
        let dir = tmp();
        let ports = free_ports::<3>();
        let mut t = Tern::serve(dir.path(), ports, &["--driver", driver]);
        t.wait_serving();
        let at: SocketAddr = addr(ports[0]).parse().unwrap();
        // Several connections, so both shards' accept paths are used.
        let mut clients: Vec<Client> = (0..6)
            .map(|i| Client::login(at, &format!("u{i}"), "d").0)
            .collect();
        assert!(t.terminate().success(), "{driver}: {}", t.stderr);
        for c in &mut clients {
            let kick = c.wait_push(|f| matches!(f.body, Some(Body::Kick(_))));
            assert!(matches!(kick.body, Some(Body::Kick(_))));
        }
        TcpListener::bind(at).unwrap_or_else(|e| panic!("{driver}: port still taken: {e}"));
    }
}

/// `TERN_DEV=1` (the usual way to spell a boolean in the environment)
/// turns development mode on like `--dev`; `TERN_DEV=0` leaves it off.
#[test]
fn dev_mode_from_the_environment() {
    let dir = tmp();
    // `tern config` prints secrets redacted, with their length.
    let secret = format!(
        "jwt_secret = \"<redacted: {} bytes>\"",
        tern_gateway::config::DEV_JWT_SECRET.len()
    );
    let mut on = Tern::spawn(dir.path(), &["config"], &[("TERN_DEV", "1")]);
    assert!(on.wait_exit().success(), "{}", on.stderr);
    assert!(on.stdout.contains(&secret), "{}", on.stdout);
    let mut off = Tern::spawn(dir.path(), &["config"], &[("TERN_DEV", "0")]);
    assert!(off.wait_exit().success(), "{}", off.stderr);
    assert!(off.stdout.contains("jwt_secret = \"\""), "{}", off.stdout);
}

/// A taken HTTP port is named like the client listeners: the listener, the
/// address, and the hint, on one line, exit status 1.
#[test]
fn a_taken_http_port_is_named() {
    let dir = tmp();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().port();
    let [tcp, ws] = free_ports::<2>();
    let mut t = Tern::serve(dir.path(), [tcp, ws, http], &[]);
    assert_eq!(t.wait_exit().code(), Some(1));
    let want = format!(
        "error: HTTP listener 127.0.0.1:{http}: address already in use (is another tern running?)"
    );
    assert!(t.stderr.contains(&want), "{}", t.stderr);
}

/// Draining shuts down only sockets the shards own. All shards share one
/// listening socket, so one shard's drain `shutdown` ends the others'
/// accept tasks, which close their descriptors; a shard that then shut
/// down its listener by the stale fd number hit whatever socket the process
/// had opened since (a neighbour's listener or connection, in tests run in
/// parallel). Here the test opens listeners throughout a drain (each new
/// socket takes the lowest free fd number) and every one must still accept.
#[test]
fn drain_shuts_down_no_socket_it_does_not_own() {
    // Several gateways drain at once (more shard threads than cores) so
    // that shards see the drain at different moments, as on a busy machine.
    const GATEWAYS: usize = 4;
    const ROUNDS: usize = 4;
    for driver in drivers() {
        for _ in 0..ROUNDS {
            let mut gateways: Vec<_> = (0..GATEWAYS)
                .map(|_| support::Gateway::start(driver))
                .collect();
            let drains: Vec<_> = gateways
                .iter_mut()
                .map(|g| {
                    let server = g.server.take().unwrap();
                    std::thread::spawn(move || server.shutdown())
                })
                .collect();
            let mut mine = Vec::new();
            while drains.iter().any(|d| !d.is_finished()) && mine.len() < 500 {
                mine.push(TcpListener::bind("127.0.0.1:0").unwrap());
                std::thread::sleep(Duration::from_micros(200));
            }
            for d in drains {
                d.join().unwrap();
            }
            for l in &mine {
                let at = l.local_addr().unwrap();
                assert!(
                    std::net::TcpStream::connect(at).is_ok(),
                    "{driver:?}: listener {at} was shut down by a drain"
                );
            }
        }
    }
}
