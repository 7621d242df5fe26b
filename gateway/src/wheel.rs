//! One hashed timing wheel per shard: every connection deadline (auth,
//! heartbeat, retransmit) lives here instead of in a runtime timer per
//! connection (DESIGN invariant 2).
//!
//! Entries are `(key, deadline)`; the wheel never cancels. The shard keeps
//! at most one live entry per connection and checks on expiry whether the
//! connection's deadline is still due (lazy deletion), so a heartbeat that
//! moves a deadline later costs nothing here.

/// One scheduled wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer<K> {
    /// Whose deadline (a connection key with its generation).
    pub key: K,
    /// When, in ms on the shard's monotonic clock.
    pub deadline_ms: u64,
}

/// A hashed wheel of `slots` buckets of `tick_ms` each. Deadlines beyond one
/// turn stay in their bucket and are skipped until their turn comes.
#[derive(Debug)]
pub struct Wheel<K> {
    slots: Vec<Vec<Timer<K>>>,
    tick_ms: u64,
    /// The next tick to expire, in ticks since 0.
    next_tick: u64,
    len: usize,
}

impl<K: Copy> Wheel<K> {
    /// A wheel starting at `now_ms` with `slots` buckets of `tick_ms`.
    pub fn new(now_ms: u64, tick_ms: u64, slots: usize) -> Self {
        assert!(tick_ms > 0 && slots > 0, "wheel needs a tick and slots");
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick_ms,
            next_tick: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Entries scheduled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `key` at `deadline_ms` (a past deadline fires at the next
    /// expiry).
    pub fn insert(&mut self, key: K, deadline_ms: u64) {
        let tick = (deadline_ms / self.tick_ms).max(self.next_tick);
        let slot = (tick % self.slots.len() as u64) as usize;
        self.slots[slot].push(Timer { key, deadline_ms });
        self.len += 1;
    }

    /// Moves the wheel to `now_ms`, handing every entry due by then to `fire`.
    pub fn expire(&mut self, now_ms: u64, mut fire: impl FnMut(Timer<K>)) {
        let now_tick = now_ms / self.tick_ms;
        let turn = self.slots.len() as u64;
        // Walk at most one full turn: later ticks map onto the same buckets.
        // The current tick's bucket is walked again next time (it may hold
        // entries due later within this tick), so `next_tick` stops at it.
        let last = now_tick.min(self.next_tick + turn - 1);
        let mut tick = self.next_tick;
        while tick <= last {
            let slot = (tick % turn) as usize;
            let bucket = &mut self.slots[slot];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].deadline_ms <= now_ms {
                    fire(bucket.swap_remove(i));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            // Give memory back after a burst (e.g. a reconnect storm) passed.
            if bucket.is_empty() && bucket.capacity() > 64 {
                *bucket = Vec::new();
            }
            tick += 1;
        }
        self.next_tick = self.next_tick.max(now_tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries fire once, not before their deadline, in the right expiry
    /// call, including ones more than a full turn ahead.
    #[test]
    fn fires_each_entry_once_at_or_after_its_deadline() {
        let mut w = Wheel::new(1_000, 100, 8);
        w.insert(1u32, 1_050);
        w.insert(2, 1_250);
        w.insert(3, 5_000); // several turns ahead
        w.insert(4, 10); // in the past: next expiry
        let mut fired = Vec::new();
        w.expire(1_099, |t| fired.push(t.key));
        fired.sort_unstable();
        assert_eq!(fired, vec![1, 4]);
        fired.clear();
        w.expire(1_200, |t| fired.push(t.key));
        assert!(fired.is_empty());
        w.insert(5, 1_230); // due later within the current tick
        w.expire(1_220, |t| fired.push(t.key));
        assert!(fired.is_empty());
        w.expire(1_230, |t| fired.push(t.key));
        assert_eq!(fired, vec![5]);
        fired.clear();
        w.expire(1_250, |t| fired.push(t.key));
        assert_eq!(fired, vec![2]);
        fired.clear();
        w.expire(4_999, |t| fired.push(t.key));
        assert!(fired.is_empty());
        assert_eq!(w.len(), 1);
        w.expire(5_000, |t| fired.push(t.key));
        assert_eq!(fired, vec![3]);
        assert!(w.is_empty());
    }

    /// A long pause between expiries (a stalled shard) still fires everything due.
    #[test]
    fn a_long_gap_fires_everything_due() {
        let mut w = Wheel::new(0, 10, 4);
        for k in 0..100u32 {
            w.insert(k, u64::from(k) * 7);
        }
        let mut n = 0;
        w.expire(10_000, |_| n += 1);
        assert_eq!(n, 100);
        assert!(w.is_empty());
    }
}
