//! What the tests of every Tern crate share (a dev-dependency only).

use std::{
    net::TcpListener,
    sync::atomic::{AtomicU32, Ordering},
};

/// A loopback port for a server a test starts (a `tern`, a `redis-server`,
/// moto) and then dials.
///
/// Not `bind("127.0.0.1:0")` and drop: that hands out a port of the
/// kernel's ephemeral range, which any outgoing connection of the test (a
/// Redis client, a test client) may take as its local port before the
/// server binds it — CI failed on exactly that ("address already in use").
/// These ports come from below the ephemeral range, where the kernel never
/// picks a local port by itself; each is handed out once per process (a
/// counter, so tests running side by side never get the same one) and is
/// free at the moment it is handed out. The start of the walk depends on
/// the process id, so test binaries run one after another do not walk the
/// same ports (a listener of the previous one may linger in TIME_WAIT).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = port_range();
    let span = high - low;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + i) % span).expect("range is below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// `[low, high)`: the 10,000 ports below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768 by default).
fn port_range() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.clamp(11_024, 65_535);
    (high - 10_000, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let (low, high) = port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice");
        assert!(ports.iter().all(|&p| (low..high).contains(&u32::from(p))));
        // A port handed out can be bound (nothing else holds it).
        let p = free_port();
        TcpListener::bind(("127.0.0.1", p)).expect("a free port binds");
    }
}
