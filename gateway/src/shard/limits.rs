//! The shard's rate limiters (`[limits]`, docs/security.md): GCRA cells from
//! governor, kept in maps of this thread only ([`LocalStore`]: no lock, no
//! atomics), on the shard's own clock ([`ShardClock`]: time is passed in, so
//! the rules are tested in simulated time below).
//!
//! What is counted where:
//! - connections per source IP: at accept, on the accepting shard (so per
//!   shard: a node admits up to `shards ×` the rate);
//! - requests and messages per connection, messages per user: when a
//!   request leaves the session, on the user's owner shard, which holds all
//!   the user's devices (so per user and node);
//! - logins per user and flapping per user and device: in `welcome`, on the
//!   owner shard, before anything is set up for the login.
//!
//! Memory: no state sits in `Conn`. A key has a cell (a `u64` and its key
//! in a hash map, ~24 B) only while it is not back at a fresh state: a
//! connection that sent nothing for a burst period has none, so an idle
//! connection costs nothing here. Every map is bounded by
//! `limits.tracked_max` and swept every second (`housekeep`).
//!
//! The two login limiters (logins per user, flapping per device) are
//! different: every login takes a cell, which stays seconds (the flapping
//! cell 4 s with the defaults), so a login storm would fill a map with one
//! cell per connection, and the map's growth and the pages it leaves behind
//! would cost every connection of the storm ~100 B. They keep their cells
//! in a [`RecentCells`] table instead: a fixed number of slots allocated
//! once, where a new key takes a free slot or, with none free, the slot of
//! the key nearest to its fresh state (a device that logged in once, long
//! before) — a key near its limit has the most state and stays.

use std::{
    cell::{Cell, RefCell},
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{StateStore, keyed::ShrinkableKeyedStateStore},
};
use hashbrown::HashMap;

use crate::{
    config::LimitsSettings,
    limits::{Jitter, Limit, LimitMetrics, Nets},
};

/// The shard's time for the limiters, set by the shard before each check:
/// the limiters read no clock of their own.
#[derive(Debug, Clone, Default)]
pub(super) struct ShardClock(Rc<Cell<Duration>>);

impl Clock for ShardClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.get()
    }
}

/// A keyed GCRA state store for one thread: each key's theoretical arrival
/// time, in a plain hash map behind a `RefCell` (the shard is one thread;
/// governor's own keyed stores lock).
#[derive(Debug)]
pub(super) struct LocalStore<K>(Rc<RefCell<HashMap<K, Nanos>>>);

impl<K> Clone for LocalStore<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Hash + Eq + Clone> StateStore for LocalStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.borrow_mut();
        let (out, next) = f(map.get(key).copied())?;
        match map.get_mut(key) {
            Some(tat) => *tat = next,
            // Deliberate allocation: a key gets a cell on its first
            // conforming use, bounded by `tracked_max` (checked before).
            None => {
                map.insert(key.clone(), next);
            }
        }
        Ok(out)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for LocalStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.borrow_mut().retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.borrow_mut().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.borrow().len()
    }

    fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// Slots of one set of a [`RecentCells`] table: a key lives in one set
/// (two cache lines), found by a scan of its slots.
const SET_SLOTS: usize = 8;

/// Slots of each login limiter's [`RecentCells`] table per shard (16 B
/// each: 64 KiB). A login storm keeps a cell per login for seconds; more
/// logins than this within that time only evict cells of keys that are far
/// from their limit (each such cell holds one or two logins).
const LOGIN_CELLS: usize = 4096;

/// A GCRA state store of a fixed size, for keys that are rarely near their
/// limit: `(key, theoretical arrival time)` slots in sets of
/// [`SET_SLOTS`], allocated once. A slot whose time has passed is free (a
/// cell at or before `now` limits exactly like no cell). A key not found
/// takes a free slot of its set or, with none free, the slot with the
/// earliest time: the key nearest to fresh, whose count is forgotten
/// (counted in `tern_rate_limit_untracked_total`). Nothing is swept,
/// nothing grows, nothing is freed: the table costs the same for 10 logins
/// and for 10 million.
#[derive(Debug, Clone)]
pub(super) struct RecentCells(Rc<RecentInner>);

#[derive(Debug)]
struct RecentInner {
    /// `[key, tat in ns of shard time]`; `LOGIN_CELLS` slots, zeroed (free).
    slots: RefCell<Box<[[u64; 2]]>>,
    clock: ShardClock,
    metrics: Arc<LimitMetrics>,
}

impl RecentCells {
    /// A table of `slots` (a power of two, at least [`SET_SLOTS`]).
    fn new(slots: usize, clock: &ShardClock, metrics: Arc<LimitMetrics>) -> Self {
        assert!(
            slots.is_power_of_two() && slots >= SET_SLOTS,
            "{slots} slots"
        );
        // Deliberate allocation: the table's one allocation, for its life.
        Self(Rc::new(RecentInner {
            slots: RefCell::new(vec![[0u64; 2]; slots].into_boxed_slice()),
            clock: clock.clone(),
            metrics,
        }))
    }

    /// The first slot of `key`'s set.
    fn set_of(key: u64, slots: usize) -> usize {
        // Keys are hashes already; the multiply spreads their high bits.
        let mixed = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        (mixed as usize & (slots / SET_SLOTS - 1)) * SET_SLOTS
    }

    fn now_ns(&self) -> u64 {
        Nanos::from(self.0.clock.now()).as_u64()
    }

    /// Forgets `key` (it starts fresh).
    fn forget(&self, key: u64) {
        let mut slots = self.0.slots.borrow_mut();
        let at = Self::set_of(key, slots.len());
        for slot in &mut slots[at..at + SET_SLOTS] {
            if slot[0] == key {
                slot[1] = 0; // free: a time long passed
            }
        }
    }

    /// Keys with a cell that is not fresh.
    #[cfg(test)]
    fn live(&self) -> usize {
        let now = self.now_ns();
        self.0.slots.borrow().iter().filter(|s| s[1] > now).count()
    }
}

impl StateStore for RecentCells {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let now = self.now_ns();
        let mut slots = self.0.slots.borrow_mut();
        let at = Self::set_of(*key, slots.len());
        let set = &mut slots[at..at + SET_SLOTS];
        // At most one slot of a set holds a key with a time still to come
        // (a key is only inserted where it has none such).
        if let Some(slot) = set.iter_mut().find(|s| s[0] == *key && s[1] > now) {
            let (out, next) = f(Some(Nanos::from(slot[1])))?;
            slot[1] = next.as_u64();
            return Ok(out);
        }
        let (out, next) = f(None)?;
        // `SET_SLOTS` > 0: a set always has a slot with a least time.
        let victim = set
            .iter_mut()
            .min_by_key(|s| s[1])
            .expect("a set has slots");
        if victim[1] > now {
            self.0
                .metrics
                .untracked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *victim = [*key, next.as_u64()];
        Ok(out)
    }
}

/// A login limit (per user, or per user and device): governor's GCRA over a
/// [`RecentCells`] table of [`LOGIN_CELLS`] slots.
struct LoginLimiter {
    gcra: RateLimiter<u64, RecentCells, ShardClock, NoOpMiddleware<Duration>>,
    cells: RecentCells,
    clock: ShardClock,
}

impl LoginLimiter {
    /// `burst` cells, one back every `period`; `None` when `burst` is 0 or
    /// the period is zero (the limit is off).
    fn new(
        period: Duration,
        burst: u32,
        clock: &ShardClock,
        metrics: &Arc<LimitMetrics>,
    ) -> Option<Self> {
        let burst = NonZeroU32::new(burst)?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let cells = RecentCells::new(LOGIN_CELLS, clock, metrics.clone());
        Some(Self {
            gcra: RateLimiter::new(quota, cells.clone(), clock.clone()),
            cells,
            clock: clock.clone(),
        })
    }

    /// `Pass`, or `Wait(ms)` until `key` conforms again (never `Full`: a
    /// new key evicts the one nearest to fresh).
    fn check(&self, key: u64) -> Check {
        match self.gcra.check_key(&key) {
            Ok(_) => Check::Pass,
            Err(not_until) => Check::Wait(wait_ms(not_until.wait_time_from(self.clock.now()))),
        }
    }
}

/// A wait in whole milliseconds, rounded up, at least 1.
fn wait_ms(wait: Duration) -> u32 {
    let ms = wait.as_micros().div_ceil(1000).max(1);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// One keyed limit: governor's GCRA over a [`LocalStore`], bounded.
struct Limiter<K: Hash + Eq + Clone> {
    gcra: RateLimiter<K, LocalStore<K>, ShardClock, NoOpMiddleware<Duration>>,
    store: LocalStore<K>,
    clock: ShardClock,
    tracked_max: usize,
}

/// A check's outcome when the key could not be tracked (the map is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Conforms.
    Pass,
    /// Over the limit: conforms again in this many ms (≥ 1).
    Wait(u32),
    /// The map is full of keys that are not fresh: not tracked.
    Full,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `burst` cells, one back every `period`; `None` when `burst` is 0 or
    /// the period is zero (the limit is off).
    fn new(period: Duration, burst: u32, clock: &ShardClock, tracked_max: usize) -> Option<Self> {
        let burst = NonZeroU32::new(burst)?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let store = LocalStore(Rc::default());
        Some(Self {
            gcra: RateLimiter::new(quota, store.clone(), clock.clone()),
            store,
            clock: clock.clone(),
            tracked_max,
        })
    }

    /// `rate` per second with `burst`; off when either is 0.
    fn per_second(rate: u32, burst: u32, clock: &ShardClock, max: usize) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        Self::new(Duration::from_secs(1) / rate, burst, clock, max)
    }

    fn check(&self, key: &K) -> Check {
        let tracked = self.store.0.borrow().contains_key(key);
        if !tracked && self.store.len() >= self.tracked_max {
            self.gcra.retain_recent();
            if self.store.len() >= self.tracked_max {
                return Check::Full;
            }
        }
        match self.gcra.check_key(key) {
            Ok(_) => Check::Pass,
            Err(not_until) => Check::Wait(wait_ms(not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// Forgets `key` (it starts fresh).
    fn forget(&self, key: &K) {
        self.store.0.borrow_mut().remove(key);
    }

    /// Drops the cells that are back at a fresh state.
    fn housekeep(&self) {
        self.gcra.retain_recent();
        let map = self.store.0.borrow();
        let sparse = map.capacity() > 64 && map.len() < map.capacity() / 4;
        drop(map);
        if sparse {
            self.gcra.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.store.len()
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Go on.
    Pass,
    /// Answer `RATE_LIMITED` with this `retry_after_ms`; nothing else.
    Refuse {
        /// The wait until the limit that refused conforms again.
        retry_after_ms: u32,
        /// Which limit refused.
        limit: Limit,
    },
    /// Too many refusals: kick with `Kick{RATE_LIMITED}` and this jittered
    /// `retry_after_ms`.
    Kick {
        /// From `kick_retry_after_min_ms..=kick_retry_after_max_ms`.
        retry_after_ms: u32,
    },
}

/// A connection's id for the limiters: its slab key and generation (a
/// reused slab entry starts fresh).
pub(super) fn conn_id(key: u32, generation: u32) -> u64 {
    (u64::from(key) << 32) | u64::from(generation)
}

/// Every limiter of one shard.
pub(super) struct ShardLimits {
    clock: ShardClock,
    conn_requests: Option<Limiter<u64>>,
    conn_messages: Option<Limiter<u64>>,
    user_messages: Option<Limiter<u64>>,
    /// Logins per user (a fixed table: see the module doc).
    user_logins: Option<LoginLimiter>,
    ip_connects: Option<Limiter<IpAddr>>,
    /// Logins per user and device (the flapping count; a fixed table).
    flaps: Option<LoginLimiter>,
    /// Refusals per connection (the abuse count).
    abuse: Option<Limiter<u64>>,
    /// Flapping devices (user and device hash) → end of their ban, ms.
    banned: RefCell<HashMap<u64, u64>>,
    ip_exempt: Nets,
    flap_ban_ms: u64,
    kick_window_ms: (u32, u32),
    tracked_max: usize,
    jitter: RefCell<Jitter>,
    metrics: Arc<LimitMetrics>,
}

impl ShardLimits {
    /// The limiters of `s` (those with a rate of 0 are off). `seed` spreads
    /// the jitter of kicks between shards.
    pub(super) fn new(s: &LimitsSettings, metrics: Arc<LimitMetrics>, seed: u64) -> Self {
        let clock = ShardClock::default();
        let max = s.tracked_max;
        let flap_period = Duration::from_millis(s.flap_window_ms)
            .checked_div(s.flap_connects_max)
            .unwrap_or_default();
        let abuse_period = Duration::from_millis(s.abuse_window_ms)
            .checked_div(s.refusals_before_kick)
            .unwrap_or_default();
        let per_minute = Duration::from_secs(60)
            .checked_div(s.logins_per_user_per_minute)
            .unwrap_or_default();
        Self {
            conn_requests: Limiter::per_second(
                s.requests_per_connection_per_second,
                s.requests_per_connection_burst,
                &clock,
                max,
            ),
            conn_messages: Limiter::per_second(
                s.messages_per_connection_per_second,
                s.messages_per_connection_burst,
                &clock,
                max,
            ),
            user_messages: Limiter::per_second(
                s.messages_per_user_per_second,
                s.messages_per_user_burst,
                &clock,
                max,
            ),
            user_logins: LoginLimiter::new(per_minute, s.logins_per_user_burst, &clock, &metrics),
            ip_connects: Limiter::per_second(
                s.connections_per_ip_per_second,
                s.connections_per_ip_burst,
                &clock,
                max,
            ),
            flaps: LoginLimiter::new(flap_period, s.flap_connects_max, &clock, &metrics),
            abuse: Limiter::new(abuse_period, s.refusals_before_kick, &clock, max),
            banned: RefCell::new(HashMap::new()),
            // Checked by `LimitsSettings::validate`.
            ip_exempt: crate::limits::parse_nets(&s.ip_exempt).unwrap_or_default(),
            flap_ban_ms: s.flap_ban_ms,
            kick_window_ms: (s.kick_retry_after_min_ms, s.kick_retry_after_max_ms),
            tracked_max: max,
            jitter: RefCell::new(Jitter::new(seed)),
            clock,
            metrics,
        }
    }

    fn at(&self, now: Duration) {
        self.clock.0.set(now);
    }

    /// A `retry_after_ms` for a kick that asks the client to come back:
    /// uniform in the `[limits]` kick window.
    pub(super) fn kick_retry_after_ms(&self) -> u32 {
        let (min, max) = self.kick_window_ms;
        self.jitter.borrow_mut().between(min, max)
    }

    /// A new connection from `ip`: `Err(retry_after_ms)` when the IP is over
    /// its rate. An IP that cannot be tracked (`tracked_max` IPs are
    /// already counted) is refused too: a flood from many addresses must
    /// not grow the map.
    pub(super) fn check_accept(&self, ip: IpAddr, now: Duration) -> Result<(), u32> {
        let Some(l) = &self.ip_connects else {
            return Ok(());
        };
        let ip = ip.to_canonical();
        if self.ip_exempt.contains(ip) {
            return Ok(());
        }
        self.at(now);
        let wait = match l.check(&ip) {
            Check::Pass => return Ok(()),
            Check::Wait(ms) => ms,
            Check::Full => 1_000,
        };
        self.metrics.limited(Limit::IpConnections);
        Err(wait)
    }

    /// A request of connection `conn` of the user hashed `user`: every
    /// request counts against the connection's request rate, a send also
    /// against the connection's and the user's message rates. A refusal
    /// counts against the connection's refusals; past them the verdict is
    /// a kick. A refused request still used its cell in the limits checked
    /// before the one that refused it (refused requests are not free).
    pub(super) fn check_request(
        &self,
        conn: u64,
        user: u64,
        is_send: bool,
        now: Duration,
    ) -> Verdict {
        self.at(now);
        let mut checks: [(Option<&Limiter<u64>>, u64, Limit); 3] = [
            (self.conn_requests.as_ref(), conn, Limit::ConnectionRequests),
            (None, conn, Limit::ConnectionMessages),
            (None, user, Limit::UserMessages),
        ];
        if is_send {
            checks[1].0 = self.conn_messages.as_ref();
            checks[2].0 = self.user_messages.as_ref();
        }
        for (limiter, key, limit) in checks {
            let Some(l) = limiter else { continue };
            match l.check(&key) {
                Check::Pass => {}
                Check::Full => {
                    self.metrics
                        .untracked
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Check::Wait(retry_after_ms) => {
                    self.metrics.limited(limit);
                    if let Some(a) = &self.abuse
                        && matches!(a.check(&conn), Check::Wait(_))
                    {
                        a.forget(&conn);
                        self.metrics
                            .kicks
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Verdict::Kick {
                            retry_after_ms: self.kick_retry_after_ms(),
                        };
                    }
                    return Verdict::Refuse {
                        retry_after_ms,
                        limit,
                    };
                }
            }
        }
        Verdict::Pass
    }

    /// A login of `user` (hashed) on `device` (`user_device`: both hashed
    /// together), on the user's owner shard: `Err((limit, retry_after_ms))`
    /// while the device is banned for flapping (what is left of the ban,
    /// plus up to a tenth of it as jitter), when this login makes it flap
    /// (the ban starts), or when the user is over its login rate.
    pub(super) fn check_login(
        &self,
        user: u64,
        user_device: u64,
        now: Duration,
    ) -> Result<(), (Limit, u32)> {
        self.at(now);
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        if let Some(flaps) = &self.flaps {
            let until = self.banned.borrow().get(&user_device).copied();
            let until = match until {
                Some(until) if until > now_ms => Some(until),
                Some(_) => {
                    self.banned.borrow_mut().remove(&user_device);
                    None
                }
                None => match flaps.check(user_device) {
                    Check::Wait(_) => self.ban(flaps, user_device, now_ms),
                    Check::Pass | Check::Full => None,
                },
            };
            if let Some(until) = until {
                self.metrics.limited(Limit::Flapping);
                let left = until - now_ms;
                let extra = self.jitter.borrow_mut().next_u64() % (left / 10 + 1);
                let retry = u32::try_from(left + extra).unwrap_or(u32::MAX);
                return Err((Limit::Flapping, retry));
            }
        }
        if let Some(l) = &self.user_logins
            && let Check::Wait(ms) = l.check(user)
        {
            self.metrics.limited(Limit::UserLogins);
            return Err((Limit::UserLogins, ms));
        }
        Ok(())
    }

    /// Starts a ban of `user_device`; its end, unless the ban list is full
    /// (then the device is not banned: counted as untracked).
    fn ban(&self, flaps: &LoginLimiter, user_device: u64, now_ms: u64) -> Option<u64> {
        let mut banned = self.banned.borrow_mut();
        if banned.len() >= self.tracked_max {
            banned.retain(|_, until| *until > now_ms);
        }
        if banned.len() >= self.tracked_max {
            self.metrics
                .untracked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        // After the ban the device starts with a fresh count.
        flaps.cells.forget(user_device);
        let until = now_ms.saturating_add(self.flap_ban_ms);
        banned.insert(user_device, until);
        self.metrics
            .flap_bans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(until)
    }

    /// Forgets the cells that are back at a fresh state and the bans that
    /// ended (the shard's tick calls this every second).
    pub(super) fn housekeep(&self, now: Duration) {
        self.at(now);
        let limiters = [
            &self.conn_requests,
            &self.conn_messages,
            &self.user_messages,
            &self.abuse,
        ];
        // The login limiters' tables need no sweep: a passed time is free.
        for l in limiters.into_iter().flatten() {
            l.housekeep();
        }
        if let Some(l) = &self.ip_connects {
            l.housekeep();
        }
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.banned.borrow_mut().retain(|_, until| *until > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tweak: impl FnOnce(&mut LimitsSettings)) -> ShardLimits {
        let mut s = LimitsSettings::default();
        tweak(&mut s);
        ShardLimits::new(&s, Arc::default(), 1)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sizes behind the memory budget: governor's direct limiter is too big
    /// to sit in every `Conn` (it carries its clock and start time besides
    /// the 8-byte cell), which is why cells live in the shard's maps, only
    /// for connections that are not back at a fresh state.
    #[test]
    fn sizes_of_the_alternatives() {
        let direct = std::mem::size_of::<governor::DefaultDirectRateLimiter>();
        let cell = std::mem::size_of::<governor::state::InMemoryState>();
        let ours = std::mem::size_of::<Limiter<u64>>();
        eprintln!("direct limiter {direct} B, its cell {cell} B, a shard's keyed limiter {ours} B");
        assert_eq!(cell, 8);
        assert!(direct > cell, "direct limiter {direct} B");
        assert_eq!(std::mem::size_of::<(u64, Nanos)>(), 16);
    }

    /// Simulated time: a connection gets its burst, then one message per
    /// period; the refusal says how long to wait, and a request at exactly
    /// that time passes.
    #[test]
    fn message_rate_refuses_with_the_exact_wait() {
        let l = limits(|s| {
            s.messages_per_connection_per_second = 2;
            s.messages_per_connection_burst = 3;
            s.refusals_before_kick = 0;
        });
        let conn = conn_id(1, 1);
        for _ in 0..3 {
            assert_eq!(l.check_request(conn, 9, true, ms(1000)), Verdict::Pass);
        }
        let Verdict::Refuse {
            retry_after_ms,
            limit,
        } = l.check_request(conn, 9, true, ms(1000))
        else {
            panic!("the fourth send conforms")
        };
        assert_eq!(limit, Limit::ConnectionMessages);
        assert_eq!(retry_after_ms, 500);
        assert!(matches!(
            l.check_request(conn, 9, true, ms(1499)),
            Verdict::Refuse { .. }
        ));
        assert_eq!(l.check_request(conn, 9, true, ms(1500)), Verdict::Pass);
        // Other requests are not messages.
        assert_eq!(l.check_request(conn, 9, false, ms(1500)), Verdict::Pass);
    }

    /// The user's rate is shared by its connections.
    #[test]
    fn user_rate_spans_connections() {
        let l = limits(|s| {
            s.messages_per_user_per_second = 1;
            s.messages_per_user_burst = 2;
            s.refusals_before_kick = 0;
        });
        assert_eq!(
            l.check_request(conn_id(1, 1), 7, true, ms(0)),
            Verdict::Pass
        );
        assert_eq!(
            l.check_request(conn_id(2, 1), 7, true, ms(0)),
            Verdict::Pass
        );
        assert!(matches!(
            l.check_request(conn_id(3, 1), 7, true, ms(0)),
            Verdict::Refuse {
                limit: Limit::UserMessages,
                ..
            }
        ));
        assert_eq!(
            l.check_request(conn_id(3, 1), 8, true, ms(0)),
            Verdict::Pass
        );
    }

    /// Refusals beyond `refusals_before_kick` within the window kick, with a
    /// `retry_after_ms` inside the kick window.
    #[test]
    fn repeated_refusals_kick() {
        let l = limits(|s| {
            s.requests_per_connection_per_second = 1;
            s.requests_per_connection_burst = 1;
            s.refusals_before_kick = 3;
            s.abuse_window_ms = 10_000;
            s.kick_retry_after_min_ms = 100;
            s.kick_retry_after_max_ms = 200;
        });
        let c = conn_id(4, 2);
        assert_eq!(l.check_request(c, 1, false, ms(0)), Verdict::Pass);
        for _ in 0..3 {
            assert!(matches!(
                l.check_request(c, 1, false, ms(1)),
                Verdict::Refuse { .. }
            ));
        }
        let Verdict::Kick { retry_after_ms } = l.check_request(c, 1, false, ms(2)) else {
            panic!("the fourth refusal kicks")
        };
        assert!((100..=200).contains(&retry_after_ms), "{retry_after_ms}");
    }

    /// More than `flap_connects_max` logins of one device within the window
    /// ban it for `flap_ban_ms` (other devices and users are untouched);
    /// after the ban it starts with a fresh count.
    #[test]
    fn flapping_bans_then_lets_in() {
        let l = limits(|s| {
            s.flap_connects_max = 3;
            s.flap_window_ms = 60_000;
            s.flap_ban_ms = 10_000;
        });
        for t in 0..3 {
            assert_eq!(l.check_login(1, 11, ms(t)), Ok(()));
        }
        let Err((Limit::Flapping, retry)) = l.check_login(1, 11, ms(10)) else {
            panic!("the fourth login flaps")
        };
        assert!((10_000..=11_000).contains(&retry), "{retry}");
        let Err((Limit::Flapping, retry)) = l.check_login(1, 11, ms(5_010)) else {
            panic!("still banned")
        };
        assert!((5_000..=5_500).contains(&retry), "{retry}");
        assert_eq!(l.check_login(1, 12, ms(5_010)), Ok(()));
        assert_eq!(l.check_login(1, 11, ms(10_010)), Ok(()));
    }

    /// The login at which a device that logs in every `every_ms` is first
    /// refused for flapping, with time in steps of 500 µs; with `storm`,
    /// another device (each once, of a user of its own) logs in at every
    /// step (2,000 a second) on the same shard, and every storm login must
    /// pass (the fixed table forgets, it never refuses wrongly).
    fn flapping_login_under_a_storm(l: &ShardLimits, every_ms: u64, storm: bool) -> u32 {
        let step_us = 500;
        let mut keys = Jitter::new(99);
        let (mut t_us, mut next_flap_us, mut logins) = (0u64, 0u64, 0u32);
        loop {
            if t_us >= next_flap_us {
                logins += 1;
                if l.check_login(7, 77, Duration::from_micros(t_us)).is_err() {
                    return logins;
                }
                assert!(logins < 1_000, "never refused");
                next_flap_us += every_ms * 1_000;
            }
            if storm {
                let (user, device) = (keys.next_u64(), keys.next_u64());
                let verdict = l.check_login(user, device, Duration::from_micros(t_us));
                assert_eq!(verdict, Ok(()), "a storm login at {t_us} µs");
            }
            t_us += step_us;
        }
    }

    /// The login limiters keep a fixed table: a storm of 2,000 logins a
    /// second of distinct devices (8 times what the table holds within a
    /// flapping cell's 4 s) refuses none of them, leaves the table at its
    /// size (evictions counted as untracked), and a device in a reconnect
    /// loop (every 500 ms) is still refused at the same login as on a quiet
    /// shard: its cell, the furthest from fresh, is never the one evicted.
    #[test]
    fn a_login_storm_keeps_a_fixed_table_and_still_catches_a_flapping_device() {
        let quiet = limits(|_| {});
        let expected = flapping_login_under_a_storm(&quiet, 500, false);
        assert!((15..=20).contains(&expected), "{expected}");
        let metrics = Arc::new(LimitMetrics::default());
        let busy = ShardLimits::new(&LimitsSettings::default(), metrics.clone(), 1);
        assert_eq!(flapping_login_under_a_storm(&busy, 500, true), expected);
        let flaps = &busy.flaps.as_ref().unwrap().cells;
        assert_eq!(
            flaps.0.slots.borrow().len(),
            LOGIN_CELLS,
            "the table never grows"
        );
        assert!(flaps.live() <= LOGIN_CELLS);
        assert!(
            metrics.untracked.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the storm overflowed the table"
        );
    }

    /// Connections per IP: the burst, then refused with the wait; exempt
    /// networks are never counted; a full map refuses new IPs.
    #[test]
    fn ip_rate_with_exemptions_and_bound() {
        let l = limits(|s| {
            s.connections_per_ip_per_second = 10;
            s.connections_per_ip_burst = 2;
            s.ip_exempt = vec!["127.0.0.0/8".into()];
            s.tracked_max = 2;
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.check_accept(a, ms(0)), Ok(()));
        assert_eq!(l.check_accept(a, ms(0)), Ok(()));
        assert_eq!(l.check_accept(a, ms(0)), Err(100));
        for _ in 0..100 {
            assert_eq!(l.check_accept("127.0.0.2".parse().unwrap(), ms(0)), Ok(()));
        }
        assert_eq!(l.check_accept("192.0.2.2".parse().unwrap(), ms(0)), Ok(()));
        assert!(l.check_accept("192.0.2.3".parse().unwrap(), ms(0)).is_err());
        // Once the cells are fresh again they are swept.
        l.housekeep(ms(10_000));
        assert_eq!(l.ip_connects.as_ref().unwrap().tracked(), 0);
        assert_eq!(
            l.check_accept("192.0.2.3".parse().unwrap(), ms(10_000)),
            Ok(())
        );
    }

    /// A connection that stopped sending leaves no cell behind after a
    /// sweep: idle connections cost nothing here.
    #[test]
    fn idle_connections_leave_no_state() {
        let l = limits(|_| {});
        for k in 0..1000 {
            assert_eq!(
                l.check_request(conn_id(k, 1), u64::from(k), true, ms(0)),
                Verdict::Pass
            );
        }
        assert_eq!(l.conn_requests.as_ref().unwrap().tracked(), 1000);
        l.housekeep(ms(60_000));
        for lim in [&l.conn_requests, &l.conn_messages, &l.user_messages] {
            assert_eq!(lim.as_ref().unwrap().tracked(), 0);
        }
    }
}
