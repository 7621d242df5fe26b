//! Overload refusals over real sockets (issue 13): a connection a full shard
//! refuses at accept is told why, with a `retry_after_ms` of its own drawn
//! from the `[limits]` kick window, so the clients refused in one storm come
//! back spread out instead of all at once.

mod support;

use std::{collections::BTreeSet, io::Read, net::TcpStream, time::Instant};

use support::{Client, Gateway, WAIT};
use tern_gateway::config::{Config, Driver};
use tern_protocol::pb::{self, frame::Body};

const MIN_MS: u32 = 1_000;
const MAX_MS: u32 = 60_000;

/// One shard that holds one connection; the kick window 1–60 s.
fn full_gateway(driver: Driver) -> Gateway {
    Gateway::start_with(driver, |c: &mut Config| {
        c.shards.count = 1;
        c.shards.connections_max = 1;
        c.limits.kick_retry_after_min_ms = MIN_MS;
        c.limits.kick_retry_after_max_ms = MAX_MS;
    })
}

/// Proves that TCP clients refused because the shard holds
/// `shards.connections_max` connections are each answered
/// `Error{OVERLOADED}` (request id 0) with a `retry_after_ms` inside the
/// `[limits]` kick window, and that the waits differ (jitter): eight refused
/// clients over real sockets, on both drivers, the refusals counted. Before
/// the jitter such a client was closed without a word.
#[test]
fn clients_refused_for_overload_get_jittered_retry_after() {
    for driver in support::drivers() {
        let gw = full_gateway(driver);
        let (_held, _) = Client::login(gw.tcp, "alice", "phone");
        let mut waits = Vec::new();
        for _ in 0..8 {
            let mut c = Client::connect(gw.tcp);
            let f = c
                .read_frame_until(Instant::now() + WAIT)
                .unwrap_or_else(|| panic!("{driver:?}: a refused client is told why"));
            assert_eq!(f.request_id, 0, "{f:?}");
            let Some(Body::Error(e)) = f.body else {
                panic!("{driver:?}: an error frame: {f:?}")
            };
            assert_eq!(e.code, pb::ErrorCode::Overloaded as i32, "{e:?}");
            assert!(
                (MIN_MS..=MAX_MS).contains(&e.retry_after_ms),
                "{driver:?}: {e:?}"
            );
            assert!(c.closed_within(WAIT), "{driver:?}: closed after the answer");
            waits.push(e.retry_after_ms);
        }
        // 8 draws from 59,001 values: a constant wait gives 1 distinct
        // value; uniform draws collide rarely (two pairs: ~1e-7).
        let distinct: BTreeSet<u32> = waits.iter().copied().collect();
        assert!(
            distinct.len() >= 6,
            "{driver:?}: retry_after_ms not spread: {waits:?}"
        );
        gw.wait_metric("tern_connections_closed_total{reason=\"refused\"} 8\n");
    }
}

/// Proves that a WebSocket client refused for overload gets an HTTP
/// `503 Service Unavailable` with a `Retry-After` (seconds) inside the kick
/// window, then the close; several refused clients get different waits.
#[test]
fn websocket_clients_refused_for_overload_get_503_with_jittered_retry_after() {
    let gw = full_gateway(support::drivers()[0]);
    let (_held, _) = Client::login(gw.tcp, "alice", "phone");
    let mut waits = BTreeSet::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(gw.ws).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text:?}"
        );
        let secs: u32 = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("retry-after: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After: {text:?}"));
        assert!(
            (MIN_MS / 1000..=MAX_MS / 1000).contains(&secs),
            "{secs} s: {text:?}"
        );
        waits.insert(secs);
    }
    // 8 draws from 60 values: at least 3 distinct except with probability
    // ~1e-9; a constant gives 1.
    assert!(waits.len() >= 3, "Retry-After not spread: {waits:?}");
}
