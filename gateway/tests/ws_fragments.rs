//! Fragmented WebSocket messages (RFC 6455 5.4) over real loopback sockets
//! against an in-process gateway, on both drivers (epoll, and io_uring where
//! the kernel has it), with hand-built frame sequences: fragmented messages
//! are reassembled (control frames between their fragments, fragments split
//! across reads), a message over the limit is closed with 1009 from a
//! fragment's header alone, and broken sequences get 1002 (text: 1003).
//! Each test says what it proves.

// The test thread waits with short sleeps; the ban is for shard and worker
// threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use prost::Message as _;
use support::{Client, Gateway, delivered_text, drivers, text_content};
use tern_gateway::config::Driver;
use tern_protocol::pb::{self, frame::Body};

const BINARY: u8 = 0x2;
const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn each_driver(test: impl Fn(Driver)) {
    for d in drivers() {
        eprintln!("-- driver {d:?}");
        test(d);
    }
}

/// Connects and completes the WebSocket upgrade; the stream after the 101.
fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
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
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// A masked client frame: `fin`, `opcode`, any payload length.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// `payload` as a fragmented binary message of `pieces` fragments (the
/// last one takes the remainder).
fn fragments(payload: &[u8], pieces: usize) -> Vec<Vec<u8>> {
    let step = payload.len().div_ceil(pieces).max(1);
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let op = if i == 0 { BINARY } else { CONTINUATION };
            frame(i + 1 == chunks.len(), op, c)
        })
        .collect()
}

/// Reads one server frame (FIN set, unmasked, any length): `(opcode,
/// payload)`; `None` at EOF.
fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    assert_eq!(head[0] & 0x80, 0x80, "FIN not set: {head:?}");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            usize::try_from(u64::from_be_bytes(b)).unwrap()
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    Some((head[0] & 0x0f, payload))
}

/// The next Tern frame (binary message), skipping pongs.
fn read_tern(s: &mut TcpStream) -> pb::Frame {
    loop {
        let (op, p) = read_frame(s).expect("a frame before EOF");
        match op {
            BINARY => return pb::Frame::decode(&p[..]).unwrap(),
            PONG => continue,
            other => panic!("opcode {other:#x}: {p:?}"),
        }
    }
}

/// The status of the close frame the server sends next, and that the
/// connection then ends.
fn close_status(s: &mut TcpStream) -> u16 {
    let (op, p) = read_frame(s).expect("a close frame");
    assert_eq!(op, CLOSE, "{p:?}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    u16::from_be_bytes([p[0], p[1]])
}

fn auth_frame(user: &str) -> Vec<u8> {
    pb::Frame {
        request_id: 1,
        body: Some(Body::Auth(pb::Auth {
            token: Gateway::token(user),
            device_id: "browser".into(),
            protocol_version: 1,
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

/// An `auth` sent as three fragments with a ping between two of them, each
/// fragment in its own write (so they arrive in separate reads and the
/// partial message waits in the connection's spill), gets the pong and then
/// `Welcome`; a `send` of a 3000-byte text in 50 fragments, written in one
/// go, is acked and delivered to a TCP user whole. Before fragments were
/// accepted, the first non-FIN frame closed the connection with 1002.
#[test]
fn fragmented_messages_are_reassembled_around_control_frames() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let (mut tcp, _) = Client::login(gw.tcp, "reader", "d");
        let mut s = upgraded(gw.ws);
        let auth = auth_frame("fragile");
        let mut parts = fragments(&auth, 3);
        parts.insert(1, frame(true, PING, b"between"));
        for p in &parts {
            s.write_all(p).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let (op, p) = read_frame(&mut s).unwrap();
        assert_eq!(
            (op, &p[..]),
            (PONG, &b"between"[..]),
            "the ping's pong first"
        );
        let w = read_tern(&mut s);
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");

        let text = "fragmented ".repeat(300);
        let send = pb::Frame {
            request_id: 2,
            body: Some(Body::Send(pb::Send {
                client_msg_id: "f1".into(),
                to: Some(pb::send::To::UserId("reader".into())),
                content: Some(text_content(text.trim_end())),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert!(send.len() > 3000);
        s.write_all(&fragments(&send, 50).concat()).unwrap();
        let ack = read_tern(&mut s);
        assert!(
            matches!(ack.body, Some(Body::SendAck(_))) && ack.request_id == 2,
            "{ack:?}"
        );
        let f = tcp.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(delivered_text(&f).unwrap().2, text.trim_end());
        // Still open and serving whole messages afterwards.
        let ping = pb::Frame {
            request_id: 3,
            body: Some(Body::Ping(pb::Ping { nonce: 7 })),
        };
        s.write_all(&frame(true, BINARY, &ping.encode_to_vec()))
            .unwrap();
        let pong = read_tern(&mut s);
        assert!(matches!(pong.body, Some(Body::Pong(_))), "{pong:?}");
    });
}

/// With `frame_bytes_max` = 1024, a fragmented message whose first
/// fragment has 1000 bytes and whose next fragment announces 100 more gets
/// close 1009 from that fragment's header alone: its payload is never sent,
/// so the server cannot have waited for (or buffered) it. The same total in
/// one fragment under the limit (24 bytes) is taken.
#[test]
fn a_fragmented_message_over_the_limit_gets_1009_at_the_header() {
    each_driver(|d| {
        let gw = Gateway::start_with(d, |c| c.session.frame_bytes_max = 1024);
        let mut s = upgraded(gw.ws);
        s.write_all(&frame(false, BINARY, &[0u8; 1000])).unwrap();
        let over = frame(true, CONTINUATION, &[0u8; 100]);
        // The header only: 2 bytes, 2 of extended length, 4 of mask.
        s.write_all(&over[..8]).unwrap();
        assert_eq!(close_status(&mut s), 1009);

        // Up to the limit is fine: an auth padded to exactly 1024 bytes in
        // two fragments (an unknown field, 9, of type bytes fills the rest).
        let mut s = upgraded(gw.ws);
        let mut auth = auth_frame("limit");
        let pad = 1024 - auth.len() - 3;
        auth.extend_from_slice(&[0x4a, 0x80 | (pad & 0x7f) as u8, (pad >> 7) as u8]);
        auth.resize(1024, b'x');
        assert!(pb::Frame::decode(&auth[..]).is_ok(), "padded auth decodes");
        s.write_all(&fragments(&auth, 2).concat()).unwrap();
        let w = read_tern(&mut s);
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
    });
}

/// Broken sequences are refused with the status RFC 6455 gives them: a
/// continuation with no message started, a new binary message (or a text
/// frame) before the fragmented one ended, and a fragmented ping get 1002;
/// a text message gets 1003 (Tern frames are binary). A neighbour
/// connection in the middle of its own fragmented message is not disturbed.
#[test]
fn broken_fragment_sequences_are_closed_with_their_status() {
    each_driver(|d| {
        let gw = Gateway::start(d);
        let mut neighbour = upgraded(gw.ws);
        let auth = auth_frame("neighbour");
        let parts = fragments(&auth, 2);
        neighbour.write_all(&parts[0]).unwrap();

        let cases: [(&str, Vec<u8>, u16); 5] = [
            ("stray continuation", frame(true, CONTINUATION, b"x"), 1002),
            (
                "binary inside a fragmented message",
                [frame(false, BINARY, b"a"), frame(true, BINARY, b"b")].concat(),
                1002,
            ),
            (
                "text inside a fragmented message",
                [frame(false, BINARY, b"a"), frame(true, TEXT, b"b")].concat(),
                1002,
            ),
            ("fragmented ping", frame(false, PING, b"p"), 1002),
            ("text message", frame(true, TEXT, b"hello"), 1003),
        ];
        for (what, bytes, want) in cases {
            let mut s = upgraded(gw.ws);
            s.write_all(&bytes).unwrap();
            assert_eq!(close_status(&mut s), want, "{what}");
        }

        neighbour.write_all(&parts[1]).unwrap();
        let w = read_tern(&mut neighbour);
        assert!(matches!(w.body, Some(Body::Welcome(_))), "{w:?}");
    });
}
