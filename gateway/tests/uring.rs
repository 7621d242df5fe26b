//! The io_uring data path (docs/gateway.md, "Data path"), over real loopback
//! sockets with the real backend: that `--driver io_uring` really moves
//! bytes through the shard's ring (and epoll does not), that exhausting the
//! provided buffers loses no byte, that a connection closed with a send and
//! a receive in flight does not disturb the connections after it, and that
//! where io_uring is forbidden (a seccomp filter, as in a container) the
//! server says so and serves on epoll. Each test says what it proves.

// Tests poll a child process with short sleeps.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{Arc, Barrier, mpsc},
    time::{Duration, Instant},
};

use support::{Client, Gateway, SECRET, delivered_text, drivers, text_content};
use tern_gateway::config::Driver;
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

/// The io_uring driver where this kernel has it. CI runs on kernels that do,
/// so there a missing io_uring fails the run instead of skipping.
fn uring() -> Option<Driver> {
    let has = drivers().contains(&Driver::Uring);
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "io_uring unavailable on CI"
        );
        eprintln!("io_uring unavailable here: skipped");
    }
    has.then_some(Driver::Uring)
}

/// The value of an unlabelled sample in the metrics text.
fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = gw.http_get("/metrics").1;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or_else(|| panic!("no {name} in\n{text}"), |v| v as u64)
}

fn send(to: &str, id: &str, text: &str) -> Body {
    Body::Send(pb::Send {
        client_msg_id: id.into(),
        to: Some(pb::send::To::UserId(to.into())),
        content: Some(text_content(text)),
        ..Default::default()
    })
}

/// Which path runs is visible: after a login and a ping, the io_uring driver
/// has reaped completions on its ring (`tern_uring_completions_total` > 0)
/// and the epoll driver none, on the same exchange.
#[test]
fn the_io_uring_driver_moves_bytes_through_the_ring() {
    for d in drivers() {
        let gw = Gateway::start(d);
        let (mut c, _) = Client::login(gw.tcp, "alice", "phone");
        let pong = c.request(Body::Ping(pb::Ping { nonce: 7 }));
        assert!(matches!(pong.body, Some(Body::Pong(_))), "{pong:?}");
        let reaped = metric(&gw, "tern_uring_completions_total");
        match d {
            Driver::Uring => assert!(reaped > 0, "no completions on io_uring"),
            _ => assert_eq!(reaped, 0, "completions on {d:?}"),
        }
    }
    let _ = uring();
}

/// Buffer ring exhaustion is back-pressure, not loss: with two 256-byte
/// provided buffers per shard, 40 clients send a 12 kB message each at the
/// same moment; the receives run out of buffers (counted), and still every
/// sender gets its ack and the receiver every text, byte for byte.
#[test]
fn buffer_ring_exhaustion_loses_no_byte() {
    let Some(d) = uring() else { return };
    let gw = Gateway::start_with(d, |c| {
        c.shards.uring_buffers = 2;
        c.shards.uring_buffer_bytes = 256;
    });
    let (mut rx, _) = Client::login(gw.tcp, "sink", "d");
    const SENDERS: usize = 40;
    let text_of = |i: usize| -> String {
        (0..12_000)
            .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
            .collect()
    };
    let mut clients: Vec<Client> = (0..SENDERS)
        .map(|i| Client::login(gw.tcp, &format!("src{i}"), "d").0)
        .collect();
    let start = Arc::new(Barrier::new(SENDERS));
    let threads: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            let text = text_of(i);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                codec::encode_frame(
                    &pb::Frame {
                        request_id: 1,
                        body: Some(send("sink", &format!("m{i}"), &text)),
                    },
                    &mut out,
                );
                start.wait();
                c.stream.write_all(&out).unwrap();
                let ack = c
                    .read_frame_until(Instant::now() + support::WAIT)
                    .expect("an ack");
                assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut got: Vec<String> = (0..SENDERS)
        .map(|_| {
            let f = rx.wait_push(|f| delivered_text(f).is_some());
            delivered_text(&f).unwrap().2
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..SENDERS).map(text_of).collect();
    want.sort();
    assert!(got == want, "a delivered text differs from what was sent");
    assert!(
        metric(&gw, "tern_uring_buffers_exhausted_total") > 0,
        "the burst never exhausted the provided buffers"
    );
}

/// A connection closed while a send (its socket full: the client does not
/// read) and a receive are in flight leaves nothing behind: the same
/// device logs in again (displacing it), and the new connection — on a
/// slot and descriptor number the old one freed, over rounds — gets a clean
/// stream: its Welcome first, a pong, and a new message intact.
#[test]
fn a_close_with_io_in_flight_does_not_disturb_the_next_connection() {
    let Some(d) = uring() else { return };
    let gw = Gateway::start(d);
    let (mut sender, _) = Client::login(gw.tcp, "writer", "d");
    let big: String = "x".repeat(12_000);
    for round in 0..3 {
        // A reader that never reads, with a small receive window.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&gw.tcp.into()).unwrap();
        let mut stuck = Client::from_stream(sock.into());
        let w = stuck.request(Body::Auth(pb::Auth {
            token: Gateway::token("reader"),
            device_id: "d".into(),
            protocol_version: 1,
            ..Default::default()
        }));
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
        for i in 0..60 {
            let ack = sender.request(send("reader", &format!("r{round}-{i}"), &big));
            assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        }
        // The same device again: the stuck connection is displaced and
        // closed with its output in flight.
        let (mut fresh, _) = Client::login(gw.tcp, "reader", "d");
        let pong = fresh.request(Body::Ping(pb::Ping { nonce: round }));
        assert!(
            matches!(pong.body, Some(Body::Pong(ref p)) if p.nonce == round),
            "{pong:?}"
        );
        let text = format!("round {round} after the close");
        let ack = sender.request(send("reader", &format!("after{round}"), &text));
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        // Everything the new connection reads decodes (the client panics on
        // a broken stream); the newest message arrives intact.
        let f = fresh.wait_push(|f| delivered_text(f).is_some_and(|(_, _, t)| t == text));
        assert!(delivered_text(&f).is_some());
        drop(stuck);
        drop(fresh);
    }
    let pong = sender.request(Body::Ping(pb::Ping { nonce: 99 }));
    assert!(matches!(pong.body, Some(Body::Pong(_))), "{pong:?}");
}

/// `N` loopback ports for a `tern` to listen on ([`tern_testkit::free_port`]).
fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| tern_testkit::free_port())
}

/// Installs a seccomp filter in the calling (child) process that fails
/// `io_uring_setup` with EPERM, as a container's default profile does.
fn forbid_io_uring() -> std::io::Result<()> {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const NR_IO_URING_SETUP: u32 = 425; // the same on every architecture
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let mut filter = [
        // seccomp_data.nr is at offset 0.
        libc::sock_filter {
            code: ld,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: jeq,
            jt: 0,
            jf: 1,
            k: NR_IO_URING_SETUP,
        },
        libc::sock_filter {
            code: ret,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: ret,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `prog` outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `tern serve --driver DRIVER` under a seccomp filter forbidding
/// io_uring; returns its output lines as they come.
fn serve_forbidden(
    dir: &std::path::Path,
    driver: &str,
    [tcp, ws, http]: [u16; 3],
) -> (std::process::Child, mpsc::Receiver<String>) {
    use std::os::unix::process::CommandExt;
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["serve", "--listen", &addr(tcp), "--ws-listen", &addr(ws)])
        .args(["--http", &addr(http), "--shards", "2", "--driver", driver])
        .args(["--jwt-secret", SECRET])
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe prctl calls.
    unsafe { cmd.pre_exec(forbid_io_uring) };
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    (child, rx)
}

/// Lines until one contains `needle` (or the process's output ends or the
/// wait is over): all lines read, and whether it was found.
fn lines_until(rx: &mpsc::Receiver<String>, needle: &str) -> (String, bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                all.push_str(&line);
                all.push('\n');
                if line.contains(needle) {
                    return (all, true);
                }
            }
            Err(_) => break,
        }
    }
    (all, false)
}

/// Where io_uring is forbidden (a seccomp filter failing `io_uring_setup`
/// with EPERM, as container profiles do), `--driver auto` says at start
/// that io_uring is unavailable and why, names the epoll data path, and
/// serves; `--driver io_uring` refuses to start and says why.
#[test]
fn where_io_uring_is_forbidden_auto_falls_back_to_epoll() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports::<3>();
    let (mut child, rx) = serve_forbidden(dir.path(), "auto", ports);
    let (log, serving) = lines_until(&rx, "tern serving");
    let served = serving.then(|| {
        let tcp = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let (mut c, _) = Client::login(tcp, "alice", "phone");
        c.request(Body::Ping(pb::Ping { nonce: 1 }))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "never served:\n{log}");
    assert!(log.contains("io_uring unavailable"), "{log}");
    assert!(
        log.contains("Operation not permitted") || log.contains("forbidden"),
        "{log}"
    );
    assert!(log.contains("data_path=epoll"), "{log}");
    assert!(matches!(served.unwrap().body, Some(Body::Pong(_))));

    let ports = free_ports::<3>();
    let (mut child, rx) = serve_forbidden(dir.path(), "uring", ports);
    let (log, _) = lines_until(&rx, "tern serving");
    let status = child.wait().unwrap();
    assert!(!status.success(), "started without io_uring:\n{log}");
    assert!(log.contains("io_uring unavailable"), "{log}");
}
