//! WebSocket edges over real loopback sockets against an in-process
//! gateway, on both drivers (epoll, and io_uring where the kernel has it),
//! with a hand-written client so every byte on the wire is checked: control
//! replies are never cut, a client that never upgrades gets an HTTP answer,
//! and invalid close codes get a protocol error. Each test says what it
//! proves.

// The test thread waits with a short sleep; the ban is for shard and
// worker threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use support::{Gateway, drivers};
use tern_gateway::config::Driver;

fn each_driver(test: impl Fn(Driver)) {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        test(d);
    }
}

/// Connects (with a receive buffer of `rcvbuf` bytes if given) and
/// completes the WebSocket upgrade; returns the stream after the 101.
fn upgraded(addr: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n).unwrap();
    }
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "upgrade response cut");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame (FIN set) with a payload of at most 125 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Reads one unmasked server frame with a payload of at most 125 bytes:
/// `(opcode, payload)`; `None` at EOF.
fn read_server_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    assert_eq!(head[0] & 0x80, 0x80, "FIN not set: {head:?}");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked: {head:?}");
    let len = usize::from(head[1] & 0x7f);
    assert!(len <= 125, "a control-sized frame was expected: {head:?}");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    Some((head[0] & 0x0f, payload))
}

/// A client that floods 125-byte pings while not reading (a 4 KiB receive
/// buffer; ~5 MiB of pongs, more than the kernel's socket buffers hold, so
/// the server's writes come up short), then reads everything, gets one
/// whole pong per ping, in order, each echoing its ping's payload: no
/// control reply is cut or reordered. (The outbox byte bound, which also
/// bounds bytes waiting for the socket, is raised above the flood.)
#[test]
fn pongs_are_never_cut_when_the_client_reads_slowly() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| c.session.outbox_bytes_max = 16 << 20);
        let mut s = upgraded(gw.ws, Some(4096));
        let pings = 40_000usize;
        let payload = |i: usize| {
            let mut p = format!("{i:08}").into_bytes();
            p.resize(125, b'.');
            p
        };
        let mut out = Vec::new();
        for i in 0..pings {
            out.extend_from_slice(&client_frame(0x9, &payload(i)));
        }
        // One write of ~5 MiB of pings; nothing is read meanwhile.
        s.write_all(&out).unwrap();
        // Let the server answer into a full socket before reading.
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..pings {
            let (op, p) =
                read_server_frame(&mut s).unwrap_or_else(|| panic!("closed after {i} pongs"));
            assert_eq!(op, 0xA, "pong {i}: opcode {op:#x}");
            assert_eq!(p, payload(i), "pong {i} does not echo its ping");
        }
    });
}

/// A client that connects to the WebSocket port and never upgrades gets an
/// HTTP `408 Request Timeout` with `Connection: close` when its auth
/// deadline passes (not a WebSocket frame), then the connection closes.
#[test]
fn a_client_that_never_upgrades_gets_http_408() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| c.session.auth_timeout_ms = 300);
        let mut s = TcpStream::connect(gw.ws).unwrap();
        s.set_read_timeout(Some(support::WAIT)).unwrap();
        // Half a request, never finished.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(started.elapsed() < support::WAIT, "no answer, no close");
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text:?}"
        );
        assert!(text.contains("\r\nConnection: close\r\n"), "{text:?}");
    });
}

/// A close frame with an invalid code (reserved, unassigned, a 1-byte
/// payload, a reason that is not UTF-8) is answered with close 1002
/// (protocol error) and the connection closes; a valid code is echoed.
#[test]
fn invalid_close_codes_are_answered_with_1002() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let answer = |payload: &[u8]| {
            let mut s = upgraded(gw.ws, None);
            s.write_all(&client_frame(0x8, payload)).unwrap();
            let (op, p) = read_server_frame(&mut s).expect("a close frame");
            assert_eq!(op, 0x8);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.is_empty(), "nothing after the close: {rest:?}");
            p
        };
        let code = |c: u16| c.to_be_bytes().to_vec();
        for bad in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(answer(&code(bad)), code(1002), "code {bad}");
        }
        assert_eq!(answer(&[0x03]), code(1002), "1-byte payload");
        let mut bad_reason = code(1000);
        bad_reason.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(answer(&bad_reason), code(1002), "reason not UTF-8");
        assert_eq!(answer(&code(1000)), code(1000));
        assert_eq!(answer(&code(4000)), code(4000));
    });
}
