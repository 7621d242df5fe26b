//! What a run is: the [`Plan`] the parent makes from the command line, the
//! [`WorkerSpec`] slice of it each worker process runs, the identity of every
//! connection slot, and the messages a worker sends back ([`WorkerMsg`]).
//!
//! Plain serde data and pure functions: this module never does I/O. Every id
//! of a run starts with its `run_id`, so runs against a persistent store never
//! collide (a group id, once taken, is taken for good).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use tern_protocol::ids::ConversationId;

use super::history::History;

/// Which workload a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Open N authenticated connections at a ramp rate and hold them with
    /// heartbeats.
    Idle,
    /// P pairs of users send 1:1 messages at a total rate.
    Chat,
    /// Groups of size G; a few members per group send; everyone else receives.
    Group,
    /// Like idle, then drop a fraction of the connections at once and
    /// reconnect them (with or without jittered backoff).
    Storm,
    /// A blend: idle connections, chatting pairs and groups at once.
    Mixed,
    /// Rooms (docs/protocol.md, "Rooms"): --groups rooms of --group-size
    /// connections; the first --group-senders of each post, every other
    /// member joins and receives. Nobody is stored as a member.
    Room,
}

/// The wire protocol the connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// Tern v1 over TCP (varint-prefixed protobuf frames).
    Tern,
    /// MQTT 3.1.1 (CONNECT, SUBSCRIBE, PUBLISH QoS 0, PINGREQ) — peer runs.
    Mqtt,
    /// NATS text protocol (CONNECT, SUB, PUB, PING) — peer runs.
    Nats,
    /// Redis pub/sub over RESP2 (PING, SUBSCRIBE, PUBLISH) — peer runs.
    Redis,
}

/// The whole run, as the parent planned it. Every worker gets a copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The workload.
    pub scenario: Scenario,
    /// The protocol of every connection.
    pub proto: Proto,
    /// Prefix of every user, device, group and message id of this run.
    pub run_id: String,
    /// Gateway (or peer server) addresses; slot i connects to `targets[i % T]`.
    pub targets: Vec<SocketAddr>,
    /// Source addresses to bind before connecting; empty: the kernel picks.
    pub sources: Vec<Ipv4Addr>,
    /// HS256 secret for minting tokens (Tern only).
    pub jwt_secret: String,
    /// Idle connections (idle, storm, mixed).
    pub idle_conns: u32,
    /// New connections per second over the whole run (all workers).
    pub ramp_per_s: u32,
    /// Chatting pairs of users (chat, mixed).
    pub pairs: u32,
    /// Devices per chatting user; device 0 sends, every other device receives.
    pub devices: u32,
    /// 1:1 messages per second over all pairs.
    pub chat_rate: f64,
    /// Groups (group, mixed).
    pub groups: u32,
    /// Members per group, owner included.
    pub group_size: u32,
    /// Members per group that send (members 0..senders).
    pub group_senders: u32,
    /// Group messages per second over all groups.
    pub group_rate: f64,
    /// Seconds of the main phase (hold for idle and storm).
    pub duration_s: u32,
    /// Storm: the fraction of live connections dropped at once (0..=1).
    pub storm_fraction: f64,
    /// Storm: seconds into the main phase at which the drop happens.
    pub storm_at_s: u32,
    /// Storm: full-jitter exponential backoff capped at this (0: no jitter,
    /// reconnect at once and retry every `retry_fixed_ms`).
    pub jitter_ms: u32,
    /// Log every operation and run the history checker after a final sync.
    pub verify: bool,
    /// Ping interval for peers (Tern uses the Welcome's interval).
    pub peer_heartbeat_ms: u32,
    /// Connect plus handshake deadline per attempt.
    pub connect_timeout_ms: u32,
    /// Wait for outstanding acks and deliveries after the main phase.
    pub drain_ms: u32,
    /// Text payload size in bytes (at least the timestamp).
    pub payload_bytes: u32,
    /// Longest a device holds back its `deliver_ack`, ms; 0: per read batch.
    pub ack_delay_ms: u32,
    /// A connection the server closes during the run (a killed node) opens
    /// again, on the slot's next target, and syncs what it missed.
    #[serde(default)]
    pub reconnect: bool,
    /// Idle connections ack their pushes and count every entry they get
    /// (`entries_received`), stamped or not: the recipients of sends made
    /// by something else (the server API under an HTTP load tool).
    #[serde(default)]
    pub idle_acks: bool,
    /// Tern over TLS (the gateway's `listen.tls`), with these client
    /// settings; `None`: plain TCP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsOptions>,
    /// Chat: devices that stop reading at `stall_at_s` (a slow consumer):
    /// device 0 of side b of pairs `0..stall_devices`.
    #[serde(default)]
    pub stall_devices: u32,
    /// Chat: seconds into the main phase at which they stop reading.
    #[serde(default)]
    pub stall_at_s: u32,
    /// The control run of `--stall`: the same devices write the same
    /// requests from the same moment but keep reading.
    #[serde(default)]
    pub stall_reads: bool,
}

/// Users per chatting pair.
pub const PAIR_SIDES: u32 = 2;

/// What a connection slot does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Device `device` of side `side` (0 = a, 1 = b) of pair `pair`.
    Pair {
        /// Pair index.
        pair: u32,
        /// 0 or 1.
        side: u32,
        /// Device index of that user.
        device: u32,
    },
    /// Member `member` of group `group` (member 0 owns it).
    Group {
        /// Group index.
        group: u32,
        /// Member index; 0 is the owner.
        member: u32,
    },
    /// An idle connection.
    Idle {
        /// Index among the idle connections.
        idle: u32,
    },
}

impl Plan {
    /// Connection slots of the run: pair devices, then group members, then
    /// idle connections.
    pub fn slots(&self) -> u64 {
        self.pair_slots() + self.group_slots() + u64::from(self.idle_conns)
    }

    fn pair_slots(&self) -> u64 {
        u64::from(self.pairs) * u64::from(PAIR_SIDES) * u64::from(self.devices)
    }

    fn group_slots(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.group_size)
    }

    /// The role of slot `slot` (< [`Plan::slots`]).
    pub fn role(&self, slot: u32) -> Role {
        let s = u64::from(slot);
        let ps = self.pair_slots();
        let gs = self.group_slots();
        if s < ps {
            let per_pair = u64::from(PAIR_SIDES) * u64::from(self.devices);
            // All three fit in u32: they are parts of a u32 slot.
            let pair = (s / per_pair) as u32;
            let rest = (s % per_pair) as u32;
            Role::Pair {
                pair,
                side: rest / self.devices,
                device: rest % self.devices,
            }
        } else if s < ps + gs {
            let g = s - ps;
            Role::Group {
                group: (g / u64::from(self.group_size)) as u32,
                member: (g % u64::from(self.group_size)) as u32,
            }
        } else {
            Role::Idle {
                idle: (s - ps - gs) as u32,
            }
        }
    }

    /// The slot of a role (inverse of [`Plan::role`]).
    pub fn slot_of(&self, role: Role) -> u32 {
        let v = match role {
            Role::Pair { pair, side, device } => {
                (u64::from(pair) * u64::from(PAIR_SIDES) + u64::from(side))
                    * u64::from(self.devices)
                    + u64::from(device)
            }
            Role::Group { group, member } => {
                self.pair_slots()
                    + u64::from(group) * u64::from(self.group_size)
                    + u64::from(member)
            }
            Role::Idle { idle } => self.pair_slots() + self.group_slots() + u64::from(idle),
        };
        // Slots are counted in u32 (the parent refuses larger runs).
        v as u32
    }

    /// The user id and device id of a slot.
    pub fn identity(&self, slot: u32) -> (String, String) {
        match self.role(slot) {
            Role::Pair { pair, side, device } => (self.pair_user(pair, side), format!("d{device}")),
            Role::Group { group, member } => {
                (format!("{}-g{group}m{member}", self.run_id), "d0".into())
            }
            Role::Idle { idle } => (format!("{}-i{idle}", self.run_id), "d0".into()),
        }
    }

    /// The user id of one side of a pair.
    pub fn pair_user(&self, pair: u32, side: u32) -> String {
        let s = if side == 0 { 'a' } else { 'b' };
        format!("{}-p{pair}{s}", self.run_id)
    }

    /// The group id (Tern) or topic/subject suffix (peers) of group `g`.
    pub fn group_id(&self, group: u32) -> String {
        format!("{}-g{group}", self.run_id)
    }

    /// The target of a slot: round robin by slot.
    pub fn target(&self, slot: u32) -> SocketAddr {
        self.target_after(slot, 0)
    }

    /// The target of a slot that has moved `moves` times (reconnected after
    /// the server closed it, or failed to reconnect): the next address of
    /// the list each time, so a slot leaves a dead node for the one after.
    pub fn target_after(&self, slot: u32, moves: u32) -> SocketAddr {
        self.targets[(slot as usize + moves as usize) % self.targets.len()]
    }

    /// The source address of a slot: rotates so that every (source, target)
    /// pair carries the same share of connections.
    pub fn source(&self, slot: u32) -> Option<Ipv4Addr> {
        if self.sources.is_empty() {
            return None;
        }
        let per_target = slot as usize / self.targets.len();
        Some(self.sources[per_target % self.sources.len()])
    }

    /// Whether this slot sends messages, and to whom.
    pub fn send_target(&self, slot: u32) -> Option<SendTo> {
        match self.role(slot) {
            Role::Pair {
                pair,
                side,
                device: 0,
            } => Some(SendTo::User(self.pair_user(pair, 1 - side))),
            Role::Group { group, member }
                if member < self.group_senders && self.scenario == Scenario::Room =>
            {
                Some(SendTo::Room(self.group_id(group)))
            }
            Role::Group { group, member } if member < self.group_senders => {
                Some(SendTo::Group(self.group_id(group)))
            }
            _ => None,
        }
    }

    /// Messages per second one sending slot sends.
    pub fn rate_per_sender(&self, slot: u32) -> f64 {
        match self.role(slot) {
            Role::Pair { .. } if self.pairs > 0 => {
                self.chat_rate / f64::from(self.pairs * PAIR_SIDES)
            }
            Role::Group { .. } if self.groups > 0 && self.group_senders > 0 => {
                self.group_rate / f64::from(self.groups * self.group_senders)
            }
            _ => 0.0,
        }
    }

    /// Whether the slot's device stops reading at `stall_at_s` (`--stall`).
    pub fn stalls(&self, slot: u32) -> bool {
        matches!(self.role(slot), Role::Pair { pair, side: 1, device: 0 } if pair < self.stall_devices)
    }

    /// The conversations a slot's device takes part in (for the checker).
    pub fn conversations(&self, slot: u32) -> Vec<String> {
        match self.role(slot) {
            Role::Pair { pair, .. } => {
                let (a, b) = (self.pair_user(pair, 0), self.pair_user(pair, 1));
                // The two sides differ by their last letter, so `direct` is Some.
                ConversationId::direct(&a, &b)
                    .map(|c| c.to_string())
                    .into_iter()
                    .collect()
            }
            // A room has no log to check: recent history only.
            Role::Group { .. } if self.scenario == Scenario::Room => Vec::new(),
            Role::Group { group, .. } => {
                vec![ConversationId::group(&self.group_id(group)).to_string()]
            }
            Role::Idle { .. } => Vec::new(),
        }
    }
}

/// Where a sending slot sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTo {
    /// A 1:1 message to this user.
    User(String),
    /// A group message (or, for peers, a publish on the group's topic).
    Group(String),
    /// A post to a room (Tern only).
    Room(String),
}

/// One worker's share of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The whole plan.
    pub plan: Plan,
    /// This worker's index.
    pub index: u32,
    /// Workers in the run.
    pub workers: u32,
    /// First slot (inclusive) this worker holds.
    pub slot_start: u32,
    /// Last slot (exclusive).
    pub slot_end: u32,
}

/// A line a worker writes to its stdout (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Every slot was tried once: established or failed.
    Connected {
        /// Connections live now.
        established: u64,
        /// Connections that failed.
        failed: u64,
    },
    /// Setup (groups, subscriptions) done: ready for the main phase.
    Ready,
    /// Counters so far, about once a second.
    Progress(Progress),
    /// The final result; the worker exits after it.
    Result(Box<WorkerResult>),
    /// The worker cannot go on.
    Fatal {
        /// Why.
        error: String,
    },
}

/// Running counters of a worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Connections live now.
    pub live: u64,
    /// Connections that failed (any attempt).
    pub failed: u64,
    /// Messages sent.
    pub sent: u64,
    /// Sends acknowledged.
    pub acked: u64,
    /// Messages delivered (pushes received).
    pub delivered: u64,
}

/// What one worker measured. Histograms are hdrhistogram V2, hex-encoded;
/// the parent merges them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Slots this worker held.
    pub slots: u64,
    /// Connection attempts (first ones and reconnects).
    pub attempts: u64,
    /// Connections that completed the handshake at least once.
    pub established: u64,
    /// Slots whose first attempt failed.
    pub failed: u64,
    /// Connections live at the end of the main phase.
    pub held: u64,
    /// Why attempts failed, by reason.
    pub fail_reasons: BTreeMap<String, u64>,
    /// Why established connections closed before the end, by reason.
    pub close_reasons: BTreeMap<String, u64>,
    /// Milliseconds from the first connect to the last first-attempt outcome.
    pub ramp_ms: u64,
    /// Milliseconds the main phase lasted.
    pub main_ms: u64,
    /// Connect + handshake latency, µs.
    pub connect_hist: String,
    /// Send → ack latency, µs.
    pub ack_hist: String,
    /// Send → deliver latency, µs (at each receiving device).
    pub deliver_hist: String,
    /// Drop → live again latency per reconnected connection (storm), µs.
    pub reconnect_hist: String,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Messages sent (Tern sends, peer publishes).
    pub sent: u64,
    /// Sends acknowledged (Tern only).
    pub acked: u64,
    /// Sends answered with an error.
    pub send_failed: u64,
    /// Sends with no answer by the end of the drain.
    pub send_timeouts: u64,
    /// Failed sends by error code (`internal`, `unavailable`, …).
    #[serde(default)]
    pub send_fail_codes: BTreeMap<String, u64>,
    /// Sends skipped because the sender was not live or in-flight was full.
    pub send_skipped: u64,
    /// Deliveries of measured messages received during the main phase and
    /// drain.
    pub delivered: u64,
    /// Pushes of a message the device already held (retransmissions; not
    /// in `delivered` nor in the latency histogram).
    pub redelivered: u64,
    /// Deliveries received during the main phase only (for deliveries/s).
    pub delivered_main: u64,
    /// Entries that reached a device for the first time, stamped or not.
    pub entries: u64,
    /// Group setup requests that failed.
    pub setup_errors: u64,
    /// Connections dropped: by a storm, or moving to another target (a
    /// `SHUTDOWN` kick; a server close with `--reconnect`).
    pub dropped: u64,
    /// Dropped connections live again.
    pub reconnected: u64,
    /// Storm: reconnect attempts that failed (and were retried).
    pub reconnect_failures: u64,
    /// Storm: ms from the drop until the last dropped connection was live
    /// again (only when all came back).
    pub reconnect_all_ms: Option<u64>,
    /// Connections kicked with `SHUTDOWN` (a node draining), each moved to
    /// the next target.
    pub kicked_shutdown: u64,
    /// Moving connections (kicked, or closed with `--reconnect`) live again
    /// on another target (also counted in `reconnected`).
    pub moved: u64,
    /// Unanswered sends resent after a move (same `client_msg_id`).
    pub resent: u64,
    /// Live connections closed because their server stopped answering: a
    /// ping unanswered for an interval (`pong_timeout`), or nothing received
    /// for the silence limit (`silent`: 1.5 heartbeat intervals, at least
    /// 1 s more than one), whichever came first.
    #[serde(default)]
    pub silent_closes: u64,
    /// The longest time from the last byte received to such a close, ms:
    /// an upper bound of how long after the server stopped the client
    /// noticed.
    #[serde(default)]
    pub silent_detect_max_ms: u64,
    /// Devices that stopped reading (`--stall`).
    #[serde(default)]
    pub stalled: u64,
    /// Of those, how many their server closed while they did not read.
    #[serde(default)]
    pub stall_closed: u64,
    /// The longest time from stopping to read to that close, ms.
    #[serde(default)]
    pub stall_close_max_ms: u64,
    /// The operation log, with `--verify`.
    pub history: Option<History>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            scenario: Scenario::Mixed,
            proto: Proto::Tern,
            run_id: "r1".into(),
            targets: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            sources: vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)],
            jwt_secret: "s".into(),
            idle_conns: 5,
            ramp_per_s: 100,
            pairs: 3,
            devices: 2,
            chat_rate: 12.0,
            groups: 2,
            group_size: 4,
            group_senders: 2,
            group_rate: 8.0,
            duration_s: 1,
            storm_fraction: 0.0,
            storm_at_s: 0,
            jitter_ms: 0,
            verify: false,
            peer_heartbeat_ms: 30_000,
            connect_timeout_ms: 1000,
            drain_ms: 1000,
            payload_bytes: 32,
            ack_delay_ms: 0,
            reconnect: false,
            idle_acks: false,
            tls: None,
            stall_devices: 0,
            stall_at_s: 0,
            stall_reads: false,
        }
    }

    #[test]
    fn roles_and_slots_are_inverse() {
        // Proves every slot maps to a role and back, in the documented order
        // (pairs, groups, idle), so workers agree on who is who.
        let p = plan();
        assert_eq!(p.slots(), 3 * 2 * 2 + 2 * 4 + 5);
        for s in 0..p.slots() as u32 {
            assert_eq!(p.slot_of(p.role(s)), s);
        }
        assert_eq!(
            p.role(0),
            Role::Pair {
                pair: 0,
                side: 0,
                device: 0
            }
        );
        assert_eq!(
            p.role(3),
            Role::Pair {
                pair: 0,
                side: 1,
                device: 1
            }
        );
        assert_eq!(
            p.role(12),
            Role::Group {
                group: 0,
                member: 0
            }
        );
        assert_eq!(p.role(20), Role::Idle { idle: 0 });
        assert_eq!(p.identity(2), ("r1-p0b".into(), "d0".into()));
    }

    #[test]
    fn senders_rates_and_sources_spread() {
        // Proves only device 0 of pair users and the first group members
        // send, rates add up to the plan's, and each (source, target) pair
        // gets an even share.
        let p = plan();
        let senders: Vec<u32> = (0..p.slots() as u32)
            .filter(|&s| p.send_target(s).is_some())
            .collect();
        assert_eq!(senders.len(), 3 * 2 + 2 * 2);
        let total: f64 = senders.iter().map(|&s| p.rate_per_sender(s)).sum();
        assert!((total - 20.0).abs() < 1e-9);
        assert_eq!(p.send_target(0), Some(SendTo::User("r1-p0b".into())));
        let mut pairs = BTreeMap::new();
        for s in 0..8 {
            *pairs.entry((p.source(s), p.target(s))).or_insert(0) += 1;
        }
        assert_eq!(pairs.len(), 4);
        assert!(pairs.values().all(|&n| n == 2));
    }

    #[test]
    fn devices_spread_over_targets_round_robin() {
        // Proves the spread `--target` documents: slot i on target i mod N,
        // so with two targets and one device per user every 1:1 pair's sides
        // are on different targets (the cross-node chat of
        // bench/scripts/cluster.sh), with two devices each user is on both,
        // and a group's members cover every target.
        let mut p = plan();
        p.devices = 1;
        for pair in 0..p.pairs {
            let a = p.slot_of(Role::Pair {
                pair,
                side: 0,
                device: 0,
            });
            let b = p.slot_of(Role::Pair {
                pair,
                side: 1,
                device: 0,
            });
            assert_ne!(p.target(a), p.target(b), "pair {pair} on one target");
        }
        let p = plan();
        for side in 0..2 {
            let t: Vec<SocketAddr> = (0..2)
                .map(|device| {
                    p.target(p.slot_of(Role::Pair {
                        pair: 1,
                        side,
                        device,
                    }))
                })
                .collect();
            assert_ne!(t[0], t[1], "a user's two devices on one target");
        }
        for group in 0..p.groups {
            let targets: std::collections::BTreeSet<SocketAddr> = (0..p.group_size)
                .map(|member| p.target(p.slot_of(Role::Group { group, member })))
                .collect();
            assert_eq!(targets.len(), p.targets.len(), "group {group}");
        }
        // A slot that moves goes to the next address, and wraps.
        assert_eq!(p.target_after(0, 0), p.targets[0]);
        assert_eq!(p.target_after(0, 1), p.targets[1]);
        assert_eq!(p.target_after(1, 1), p.targets[0]);
    }
}
