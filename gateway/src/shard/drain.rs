//! Draining a shard (`ShardMsg::Drain`): every connection is kicked with
//! `Kick{SHUTDOWN}` at the policy's bounded rate, each with its own jittered
//! `retry_after_ms`, until the shard is empty or the process deadline passes.

use std::{rc::Rc, time::Duration};

use tern_protocol::pb;

use super::Shard;
use crate::metrics::CloseReason;

/// How a shard drains: its share of the node's kick rate and the window
/// each kick's `retry_after_ms` is drawn from (`[shutdown]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// `Kick{SHUTDOWN}` frames per second from this shard (≥ 1).
    pub kick_rate: u32,
    /// Lowest `retry_after_ms` a kick carries.
    pub retry_after_min_ms: u32,
    /// Highest `retry_after_ms` a kick carries (≥ the lowest).
    pub retry_after_max_ms: u32,
}

/// How often the drain wakes to kick (and re-checks for an empty shard).
const DRAIN_TICK_MS: u64 = 10;

/// Kicks every connection (at a bounded rate) and waits until they are gone
/// or the process deadline passes (the server stops the runtime then).
///
/// The rate is a token bucket: credit accrues at `kick_rate` per second and
/// holds at most one tick's worth (`b = max(1, kick_rate / 100)` kicks), so
/// in any window of `w` ms this shard sends at most `b + kick_rate * w / 1000`
/// kicks, however late a tick runs or whenever a handoff arrives. Each kick
/// carries its own `retry_after_ms`, uniform in the policy's window.
pub(super) async fn drain(shard: &Rc<Shard>, policy: DrainPolicy) {
    let rate = u64::from(policy.kick_rate.max(1));
    // Credit in thousandths of a kick: `rate * elapsed_ms` adds exactly.
    let burst_milli = (rate * DRAIN_TICK_MS).max(1_000);
    let mut credit_milli = burst_milli;
    let mut last = shard.now_ms();
    // Seeded per shard and start: two nodes draining at once draw apart.
    let mut rng = JitterRng::new(Shard::server_time_ms() ^ ((shard.id as u64) << 48));
    let span = u64::from(
        policy
            .retry_after_max_ms
            .saturating_sub(policy.retry_after_min_ms),
    ) + 1;
    loop {
        if shard.conns.borrow().is_empty() {
            return;
        }
        let now = shard.now_ms();
        credit_milli = credit_milli
            .saturating_add(rate.saturating_mul(now.saturating_sub(last)))
            .min(burst_milli);
        last = now;
        let budget = (credit_milli / 1_000) as usize;
        let keys: Vec<u32> = shard
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .map(|(k, _)| k as u32)
            .take(budget)
            .collect();
        {
            let mut conns = shard.conns.borrow_mut();
            for key in keys {
                let c = &mut conns[key as usize];
                if c.closing.is_some() {
                    continue;
                }
                // `span` ≤ 2^32, so the draw fits the window's u32 range.
                let retry = policy.retry_after_min_ms + (rng.next() % span) as u32;
                c.session
                    .kick_after(&shard.cfg, now, pb::KickReason::Shutdown, "", retry);
                credit_milli -= 1_000;
                shard.flush(key, c);
                shard.close_soon(c, CloseReason::Shutdown);
            }
        }
        monoio::time::sleep(Duration::from_millis(DRAIN_TICK_MS)).await;
    }
}

/// splitmix64: a small, well-spread generator for the drain's jitter (no
/// need for a cryptographic one; the values only spread reconnects).
struct JitterRng(u64);

impl JitterRng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
