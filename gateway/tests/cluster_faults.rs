//! Cluster faults under a history checker: real `tern serve --store redis`
//! processes (the built binary) on a real `redis-server` (AOF `appendfsync
//! always`) or a real 3-master Redis Cluster, with devices spread over the
//! nodes chatting 1:1 and in a group from their own threads, while the test
//! kills a node (-9), stops and restarts Redis, or moves slots. Every device
//! records what it was pushed and what it synced; the checker then proves
//! that every acked message is on every member device, exactly once per
//! `client_msg_id`, and that no `(conversation, seq)` carries two contents.
//! Every wait is bounded. Fails (does not skip) when redis-server is missing.
#![allow(clippy::disallowed_methods)]

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cluster_support::{Node, Redis, WAIT, is_text, nodes};
use parking_lot::Mutex;
use support::{Client, Gateway, text_content};
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
};

/// Sends per device in one chat run.
const SENDS_PER_DEVICE: usize = 40;
/// Pause between two sends of one device, so the chat spans the fault.
const SEND_PAUSE: Duration = Duration::from_millis(25);
/// How long one send is retried (errors, reconnects) before the test fails.
const SEND_RETRY_FOR: Duration = Duration::from_secs(30);
/// Bound of one request's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(8);
/// Sync pages per catch-up, at most.
const SYNC_PAGES_MAX: usize = 1_000;
const GROUP: &str = "crew";

// ---------------------------------------------------------------------------
// kill -9 of a node mid-chat
// ---------------------------------------------------------------------------

/// kill -9 mid-chat: 3 nodes on one durable Redis; six devices (three
/// users, two devices each, every node holding two) chat 1:1 and in a
/// group from their own threads; node 2 is killed (-9) after a third of the
/// sends. Its devices see their socket end, reconnect to the other nodes,
/// resend what was unacked (same client_msg_id) and sync. The checker finds
/// 0 lost / 0 duplicated / 0 divergent on every device, and the test prints
/// the time from the kill to the last of the killed node's devices being
/// back and caught up.
#[test]
fn kill9_of_a_node_mid_chat_loses_nothing() {
    let redis = Redis::start();
    let mut ns = nodes(&redis, 3);
    let addrs: Vec<SocketAddr> = ns.iter().map(|n| n.tcp).collect();
    let chat = Chat::start(&addrs, &standard_devices());
    chat.wait_acked(SENDS_PER_DEVICE * chat.devices() / 3);
    chat.note_fault(Instant::now());
    ns[1].kill9();
    let report = chat.finish();
    report.assert_clean();
    let killed: Vec<&DeviceReport> = report.devices.iter().filter(|d| d.home == 1).collect();
    assert!(!killed.is_empty());
    let back = killed
        .iter()
        .map(|d| {
            d.caught_up_after_fault
                .unwrap_or_else(|| panic!("{} never came back after the kill", d.name))
        })
        .max()
        .unwrap();
    eprintln!(
        "kill -9: {} devices of the killed node back and caught up {} ms after the kill \
         ({} messages acked, {} resent after a fault)",
        killed.len(),
        back.as_millis(),
        report.acked,
        report.resent
    );
}

// ---------------------------------------------------------------------------
// Redis stopped and restarted mid-chat
// ---------------------------------------------------------------------------

/// Redis stopped (SIGKILL) and restarted on the same port and AOF dir
/// mid-chat: 3 nodes, six devices chatting. While Redis is away sends are
/// answered with the typed `INTERNAL` error (never a `SendAck`, never a
/// hang: every request is answered within its bound) and no gateway exits;
/// after the restart the devices resend with the same client_msg_id and
/// every message is on every member device exactly once. Then each node's
/// lease is back in Redis and a fresh 1:1 message crosses nodes as a push.
#[test]
fn redis_restart_mid_chat_loses_nothing_and_pushes_resume() {
    let mut redis = Redis::start();
    let mut ns = nodes(&redis, 3);
    let addrs: Vec<SocketAddr> = ns.iter().map(|n| n.tcp).collect();
    let chat = Chat::start(&addrs, &standard_devices());
    chat.wait_acked(SENDS_PER_DEVICE * chat.devices() / 4);
    chat.note_fault(Instant::now());
    redis.0.kill();
    // Away long enough for every device to try a few sends and for the
    // nodes' 1 s leases to lapse.
    chat.wait_errors(chat.devices());
    std::thread::sleep(Duration::from_millis(1_500));
    redis.0.restart();
    let report = chat.finish();
    report.assert_clean();
    assert!(
        report
            .errors
            .get(&(pb::ErrorCode::Internal as i32))
            .copied()
            >= Some(1),
        "no send failed while Redis was away: {:?}",
        report.errors
    );
    assert_eq!(
        report.errors.keys().copied().collect::<Vec<_>>(),
        vec![pb::ErrorCode::Internal as i32],
        "only INTERNAL while Redis is away: {:?}",
        report.errors
    );
    assert_eq!(report.timeouts, 0, "a request went unanswered");
    for n in &mut ns {
        assert!(
            n.child.try_wait().unwrap().is_none(),
            "node {} exited",
            n.id
        );
        wait_until(&format!("{}'s lease renewed", n.id), || {
            redis::cmd("EXISTS")
                .arg(format!("{{n:{}}}:alive", n.id))
                .query::<i64>(&mut redis.conn())
                .is_ok_and(|e| e == 1)
        });
        n.wait_metric("tern_cluster_live_nodes 3");
    }
    // Cross-node pushes resume, over connections that lived through the
    // outage and over fresh ones.
    let (mut alice, _) = Client::login(ns[0].tcp, "zoe", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "yann", "phone");
    redis.wait_routes("yann", &[("phone", "n2")]);
    let ack = alice.send_text("yann", "after-restart", "after the restart");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("after the restart"));
}

/// A quiet Redis restart: alice (node 1) and bob (node 2) chat, then Redis
/// is stopped and restarted while nobody sends. Once the nodes' leases are
/// back, the very first sends are acked at once (not refused with
/// `INTERNAL` by a pooled connection that died with the old server) and
/// pushed across nodes (not dropped by a worker's dead link). Before the
/// store and the links retried a dead idle connection once, the first send
/// after the restart failed and its push was lost.
#[test]
fn first_sends_after_a_quiet_redis_restart_are_acked_and_pushed() {
    let mut redis = Redis::start();
    let ns = nodes(&redis, 2);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let ack = alice.send_text("bob", "before", "before");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("before"));
    redis.0.kill();
    std::thread::sleep(Duration::from_millis(300));
    redis.0.restart();
    for n in &ns {
        wait_until(&format!("{}'s lease renewed", n.id), || {
            redis::cmd("EXISTS")
                .arg(format!("{{n:{}}}:alive", n.id))
                .query::<i64>(&mut redis.conn())
                .is_ok_and(|e| e == 1)
        });
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    for (i, text) in ["first", "second", "third"].into_iter().enumerate() {
        let ack = alice.send_text("bob", &format!("after-{i}"), text);
        assert!(
            matches!(ack.body, Some(Body::SendAck(_))),
            "send {i} after the restart: {ack:?}"
        );
        bob.wait_push(is_text(text));
    }
}

/// A device that stays connected while its node's lease lapses keeps its
/// pushes. After a Redis restart the lease keys are gone (their TTL ran out
/// while Redis was away) until each node renews its own, up to
/// `node_lease_ms / 3` later; the test makes that state exactly by deleting
/// node 2's lease key, while bob's phone stays connected to node 2 and
/// alice (node 1) sends to him in a loop. Node 1 may find bob's route
/// naming a node without a lease in that window; once node 2 has renewed,
/// bob's route must name node 2 again and a new message must reach him as
/// a push, without a reconnect. Today node 1 deletes the route and node 2
/// never writes it back: bob gets no push from another node until he
/// reconnects (sync still finds every message). Ignored until a node
/// re-writes its routes when it finds its lease had lapsed (docs/cluster.md,
/// Faults); the route writes are being reworked (routes through the
/// workers' rings), which is where that belongs.
#[test]

fn routes_of_connected_devices_survive_a_lapsed_lease() {
    let redis = Redis::start();
    let ns = nodes(&redis, 3);
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "phone");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    redis.wait_routes("bob", &[("phone", "n2")]);
    let _: i64 = redis::cmd("DEL")
        .arg("{n:n2}:alive")
        .query(&mut redis.conn())
        .unwrap();
    let until = Instant::now() + Duration::from_millis(600);
    let mut i = 0;
    while Instant::now() < until {
        let ack = alice.send_text("bob", &format!("race-{i}"), "during the lapse");
        assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 3");
    }
    redis.wait_routes("bob", &[("phone", "n2")]);
    let ack = alice.send_text("bob", "after", "after the lapse");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("after the lapse"));
}

// ---------------------------------------------------------------------------
// Redis Cluster slot moves
// ---------------------------------------------------------------------------

/// Slot moves mid-chat on a 3-master Redis Cluster (AOF always): three
/// nodes, six devices chatting; the test moves, one after the other, the
/// slots of a 1:1 conversation, of the group, of a user's routes and of
/// node 2's stream and lease to another master, two keys per `MIGRATE`
/// with a pause between, so the chat meets `ASK` redirects, `TRYAGAIN` on
/// half-moved multi-key functions and then `MOVED`. Sends either succeed
/// or fail with the typed `INTERNAL` (and are resent with the same
/// client_msg_id); the checker finds 0 lost / 0 duplicated / 0 divergent;
/// afterwards a 1:1 message crosses nodes as a push.
#[test]
fn slot_moves_mid_chat_lose_nothing_and_pushes_resume() {
    let cluster = redis_harness::RedisCluster::start(3, true);
    let urls = cluster.urls();
    let ns: Vec<Node> = (1..=3)
        .map(|i| Node::spawn(&urls, true, &format!("n{i}"), ""))
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 3");
    }
    let addrs: Vec<SocketAddr> = ns.iter().map(|n| n.tcp).collect();
    let chat = Chat::start(&addrs, &standard_devices());
    chat.wait_acked(SENDS_PER_DEVICE * chat.devices() / 5);
    let mut moved = Vec::new();
    for key in [
        "{c:d:alice:bob}:l",
        "{c:g:crew}:l",
        "{u:bob}:rt",
        "{n:n2}:ch",
        "{n:n2}:alive",
    ] {
        let slot = cluster.slot_of(key);
        let to = (cluster.owner_of(slot) + 1) % 3;
        let keys = cluster.move_slot(slot, to, 2, || {
            std::thread::sleep(Duration::from_millis(40));
        });
        assert_eq!(cluster.owner_of(slot), to);
        moved.push((key, slot, keys));
    }
    let report = chat.finish();
    eprintln!(
        "slot moves: {moved:?}; errors {:?}, resent {}",
        report.errors, report.resent
    );
    report.assert_clean();
    assert!(
        report
            .errors
            .keys()
            .all(|c| *c == pb::ErrorCode::Internal as i32),
        "only INTERNAL during slot moves: {:?}",
        report.errors
    );
    assert_eq!(report.timeouts, 0, "a request went unanswered");
    let (mut alice, _) = Client::login(ns[0].tcp, "alice", "desk");
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "desk");
    wait_until("bob's desk route", || {
        let mut c = redis::cluster::ClusterClient::new(urls.clone())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("HGET")
            .arg("{u:bob}:rt")
            .arg("desk")
            .query::<Option<String>>(&mut c)
            .unwrap()
            .as_deref()
            == Some("n2")
    });
    let ack = alice.send_text("bob", "after-moves", "after the moves");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    bob.wait_push(is_text("after the moves"));
}

/// Pipelines follow a half-moved slot: the slot of bob's keys (his route
/// hash and his conversation index), then the slot of node 2's stream,
/// move to another master one key per `MIGRATE`; at every step (slot
/// MIGRATING/IMPORTING, keys split between the two, then all moved) a new
/// sender on node 1 writes to bob (node 2): the send is acked (its index
/// pipeline writes `{u:bob}`) and bob is pushed the message (the route
/// read and the `XADD` are pipelines). Before the pipelines re-ran
/// redirected commands one at a time, the crate's cluster pipeline
/// returned the `ASK` as an error: the send failed `INTERNAL` or its push
/// was dropped.
#[test]
fn pipelines_follow_ask_and_moved_during_a_slot_move() {
    let cluster = redis_harness::RedisCluster::start(3, true);
    let urls = cluster.urls();
    let ns: Vec<Node> = (1..=2)
        .map(|i| Node::spawn(&urls, true, &format!("n{i}"), ""))
        .collect();
    for n in &ns {
        n.wait_metric("tern_cluster_live_nodes 2");
    }
    let (mut bob, _) = Client::login(ns[1].tcp, "bob", "phone");
    let mut step = 0;
    let mut check = || {
        step += 1;
        let sender = format!("s{step}");
        let text: &'static str = Box::leak(format!("step {step}").into_boxed_str());
        let (mut s, _) = Client::login(ns[0].tcp, &sender, "phone");
        let ack = s.send_text("bob", "m", text);
        assert!(
            matches!(ack.body, Some(Body::SendAck(_))),
            "step {step}: {ack:?}"
        );
        bob.wait_push(is_text(text));
    };
    check();
    for key in ["{u:bob}:rt", "{n:n2}:ch"] {
        let slot = cluster.slot_of(key);
        let to = (cluster.owner_of(slot) + 1) % 3;
        let moved = cluster.move_slot(slot, to, 1, &mut check);
        assert!(moved >= 1, "{key}: no key moved");
        check();
    }
}

/// A slot move never stalls a node: while the slot of alice and bob's 1:1
/// conversation moves to another master one key per `MIGRATE` (its
/// append function names keys on both masters, or one that does not exist
/// yet: Redis answers `TRYAGAIN` until the slot settles), alice's sends to
/// bob are answered (acked, or refused with `INTERNAL`) and carol's sends
/// to dave, in a slot that does not move, are acked, at every step. With
/// the `redis` crate's default retry policy for `TRYAGAIN` (16 retries,
/// each waiting at least 1.28 s) one such send held the node's backend
/// worker for 20 s or more, and every other request on the node waited
/// behind it.
#[test]
fn a_slot_move_does_not_stall_other_requests() {
    let cluster = redis_harness::RedisCluster::start(3, true);
    let urls = cluster.urls();
    let node = Node::spawn(&urls, true, "n1", "");
    let (mut alice, _) = Client::login(node.tcp, "alice", "phone");
    let (mut carol, _) = Client::login(node.tcp, "carol", "phone");
    let ack = alice.send_text("bob", "a0", "first");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let moving = cluster.slot_of("{c:d:alice:bob}:l");
    assert_ne!(cluster.slot_of("{c:d:carol:dave}:l"), moving);
    let mut step = 0;
    let mut refused = 0;
    let mut check = || {
        step += 1;
        let r = alice.send_text("bob", &format!("a{step}"), "during the move");
        match &r.body {
            Some(Body::SendAck(_)) => {}
            Some(Body::Error(e)) if e.code == pb::ErrorCode::Internal as i32 => refused += 1,
            other => panic!("step {step}: alice's send answered {other:?}"),
        }
        let r = carol.send_text("dave", &format!("c{step}"), "elsewhere");
        assert!(
            matches!(r.body, Some(Body::SendAck(_))),
            "step {step}: {r:?}"
        );
    };
    let to = (cluster.owner_of(moving) + 1) % 3;
    cluster.move_slot(moving, to, 1, &mut check);
    check();
    eprintln!("{step} steps, {refused} of alice's sends refused during the move");
}

// ---------------------------------------------------------------------------
// The chat and its checker
// ---------------------------------------------------------------------------

/// Three users with two devices each, every node holding two devices.
fn standard_devices() -> Vec<(&'static str, &'static str, usize)> {
    vec![
        ("alice", "phone", 0),
        ("alice", "laptop", 1),
        ("bob", "phone", 1),
        ("bob", "tablet", 2),
        ("carol", "phone", 2),
        ("carol", "laptop", 0),
    ]
}

/// Who each user writes to 1:1.
fn peer_of(user: &str) -> &'static str {
    match user {
        "alice" => "bob",
        "bob" => "carol",
        _ => "alice",
    }
}

/// A message the store acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    conversation: String,
    seq: u64,
    client_msg_id: String,
    text: String,
}

#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<Acked>>,
    acked_count: AtomicUsize,
    error_count: AtomicUsize,
    fault_at: Mutex<Option<Instant>>,
    stop: AtomicBool,
    /// Sends of all devices together.
    total: AtomicUsize,
}

/// Devices chatting, one thread each.
struct Chat {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<DeviceReport>>,
}

impl Chat {
    /// Creates the group (all three users), then starts every device's
    /// thread: it logs in on its node and sends `SENDS_PER_DEVICE`
    /// messages, alternating between its 1:1 peer and the group.
    fn start(addrs: &[SocketAddr], devices: &[(&'static str, &'static str, usize)]) -> Self {
        let (mut owner, _) = Client::login(addrs[0], "alice", "setup");
        let r = owner.request(Body::GroupCreate(pb::GroupCreate {
            group_id: GROUP.into(),
            name: "Crew".into(),
            members: vec!["bob".into(), "carol".into()],
            ..Default::default()
        }));
        assert!(matches!(r.body, Some(Body::GroupInfoResult(_))), "{r:?}");
        drop(owner);
        let shared = Arc::new(Shared::default());
        shared
            .total
            .store(SENDS_PER_DEVICE * devices.len(), Ordering::Relaxed);
        let threads = devices
            .iter()
            .map(|&(user, device, home)| {
                let shared = shared.clone();
                let addrs = addrs.to_vec();
                std::thread::Builder::new()
                    .name(format!("{user}-{device}"))
                    .spawn(move || run_device(user, device, home, &addrs, &shared))
                    .unwrap()
            })
            .collect();
        Self { shared, threads }
    }

    fn devices(&self) -> usize {
        self.threads.len()
    }

    fn wait_acked(&self, n: usize) {
        wait_until(&format!("{n} acks"), || {
            self.shared.acked_count.load(Ordering::Relaxed) >= n
        });
    }

    fn wait_errors(&self, n: usize) {
        wait_until(&format!("{n} send errors"), || {
            self.shared.error_count.load(Ordering::Relaxed) >= n
        });
    }

    fn note_fault(&self, at: Instant) {
        *self.shared.fault_at.lock() = Some(at);
    }

    /// Waits for every device to finish its sends, then has every device
    /// sync to the end, and checks the histories.
    fn finish(self) -> Report {
        let devices: Vec<DeviceReport> = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("a device thread panicked"))
            .collect();
        self.shared.stop.store(true, Ordering::Relaxed);
        let acked = self.shared.acked.lock().clone();
        Report::check(acked, devices)
    }
}

/// What one device saw.
struct DeviceReport {
    name: String,
    user: &'static str,
    /// Index of the node it first logged in on.
    home: usize,
    /// `(conversation, seq)` → `(client_msg_id, text)` of every message
    /// entry it was pushed or synced.
    held: BTreeMap<(String, u64), (String, String)>,
    /// `(conversation, seq)` that arrived twice with different contents.
    divergent: Vec<String>,
    /// From the fault to its first completed catch-up after a reconnect
    /// forced by the fault (None: it never had to reconnect).
    caught_up_after_fault: Option<Duration>,
    errors: HashMap<i32, usize>,
    timeouts: usize,
    resent: usize,
}

struct Report {
    devices: Vec<DeviceReport>,
    acked: usize,
    resent: usize,
    errors: HashMap<i32, usize>,
    timeouts: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
    divergent: Vec<String>,
}

impl Report {
    fn check(acked: Vec<Acked>, devices: Vec<DeviceReport>) -> Self {
        let mut lost = Vec::new();
        let mut duplicated = Vec::new();
        let mut divergent = Vec::new();
        // Acks themselves: one client_msg_id, one seq; one seq, one id.
        let mut by_id: HashMap<(&str, &str), u64> = HashMap::new();
        let mut by_seq: HashMap<(&str, u64), &str> = HashMap::new();
        for a in &acked {
            if let Some(s) = by_id.insert((&a.conversation, &a.client_msg_id), a.seq)
                && s != a.seq
            {
                duplicated.push(format!(
                    "{} acked at seq {s} and {}",
                    a.client_msg_id, a.seq
                ));
            }
            if let Some(id) = by_seq.insert((&a.conversation, a.seq), &a.client_msg_id)
                && id != a.client_msg_id
            {
                divergent.push(format!(
                    "{}#{} acked for {id} and {}",
                    a.conversation, a.seq, a.client_msg_id
                ));
            }
        }
        for d in &devices {
            divergent.extend(d.divergent.iter().map(|x| format!("{}: {x}", d.name)));
            let member_of = |conv: &str| {
                conv == format!("g:{GROUP}") || conv.split(':').skip(1).any(|u| u == d.user)
            };
            for a in acked.iter().filter(|a| member_of(&a.conversation)) {
                match d.held.get(&(a.conversation.clone(), a.seq)) {
                    None => lost.push(format!("{}: {}#{}", d.name, a.conversation, a.seq)),
                    Some((id, text)) if *id != a.client_msg_id || *text != a.text => divergent
                        .push(format!(
                            "{}: {}#{} holds {id:?} {text:?}, acked {:?}",
                            d.name, a.conversation, a.seq, a.client_msg_id
                        )),
                    Some(_) => {}
                }
            }
            // After dedup by (conversation, seq): one client_msg_id at most
            // once per conversation.
            let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
            for ((conv, seq), (id, _)) in &d.held {
                if let Some(first) = seen.insert((conv, id), *seq) {
                    duplicated.push(format!("{}: {id} at {conv}#{first} and #{seq}", d.name));
                }
            }
        }
        let mut errors = HashMap::new();
        for d in &devices {
            for (code, n) in &d.errors {
                *errors.entry(*code).or_default() += n;
            }
        }
        Self {
            acked: acked.len(),
            resent: devices.iter().map(|d| d.resent).sum(),
            timeouts: devices.iter().map(|d| d.timeouts).sum(),
            errors,
            devices,
            lost,
            duplicated,
            divergent,
        }
    }

    fn assert_clean(&self) {
        let expected = SENDS_PER_DEVICE * self.devices.len();
        eprintln!(
            "checker: {} acked of {expected}, {} lost, {} duplicated, {} divergent",
            self.acked,
            self.lost.len(),
            self.duplicated.len(),
            self.divergent.len()
        );
        assert!(self.lost.is_empty(), "lost: {:?}", self.lost);
        assert!(
            self.duplicated.is_empty(),
            "duplicated: {:?}",
            self.duplicated
        );
        assert!(self.divergent.is_empty(), "divergent: {:?}", self.divergent);
        assert_eq!(self.acked, expected, "every send is acked in the end");
    }
}

/// One device's life: log in on `addrs[home]`, send, reconnect elsewhere
/// when its connection ends, resend unacked messages with their
/// client_msg_id, catch up by sync, and finally sync to the end.
fn run_device(
    user: &'static str,
    device: &'static str,
    home: usize,
    addrs: &[SocketAddr],
    shared: &Shared,
) -> DeviceReport {
    let name = format!("{user}/{device}");
    let mut d = Device::new(user, device);
    let mut report = DeviceReport {
        name: name.clone(),
        user,
        home,
        held: BTreeMap::new(),
        divergent: Vec::new(),
        caught_up_after_fault: None,
        errors: HashMap::new(),
        timeouts: 0,
        resent: 0,
    };
    let mut at = home;
    connect_somewhere(&mut d, addrs, &mut at, &name);
    catch_up(&mut d, &name);
    for i in 0..SENDS_PER_DEVICE {
        let to = if i % 2 == 0 {
            pb::send::To::UserId(peer_of(user).into())
        } else {
            pb::send::To::GroupId(GROUP.into())
        };
        let id = format!("{user}-{device}-{i}");
        let text = format!("{id} says hi");
        let deadline = Instant::now() + SEND_RETRY_FOR;
        let mut attempts = 0;
        loop {
            assert!(Instant::now() < deadline, "{name}: {id} never acked");
            attempts += 1;
            let send = Body::Send(pb::Send {
                client_msg_id: id.clone(),
                to: Some(to.clone()),
                content: Some(text_content(&text)),
                ..Default::default()
            });
            match d.request(send) {
                Ok(Body::SendAck(a)) => {
                    assert_eq!(a.client_msg_id, id, "{name}: ack of another message");
                    d.record(&a.conversation_id, a.seq, &id, &text);
                    shared.acked.lock().push(Acked {
                        conversation: a.conversation_id,
                        seq: a.seq,
                        client_msg_id: id,
                        text,
                    });
                    shared.acked_count.fetch_add(1, Ordering::Relaxed);
                    if attempts > 1 {
                        report.resent += 1;
                    }
                    break;
                }
                Ok(Body::Error(e)) => {
                    *report.errors.entry(e.code).or_default() += 1;
                    shared.error_count.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(other) => panic!("{name}: send answered {other:?}"),
                Err(Fault::Timeout) => {
                    report.timeouts += 1;
                    d.disconnect();
                }
                Err(Fault::Closed) => d.disconnect(),
            }
            if !d.is_connected() {
                // The connection ended (a killed node): go elsewhere and
                // catch up before resending.
                at = (at + 1) % addrs.len();
                connect_somewhere(&mut d, addrs, &mut at, &name);
                catch_up(&mut d, &name);
                if let Some(fault) = *shared.fault_at.lock()
                    && report.caught_up_after_fault.is_none()
                {
                    report.caught_up_after_fault = Some(fault.elapsed());
                }
            }
        }
        std::thread::sleep(SEND_PAUSE);
    }
    // Wait for the others to finish sending, reading pushes meanwhile,
    // then sync to the end.
    let deadline = Instant::now() + SEND_RETRY_FOR * 2;
    while shared.acked_count.load(Ordering::Relaxed) < shared.total.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && !shared.stop.load(Ordering::Relaxed)
    {
        if d.poll(Duration::from_millis(50)).is_err() {
            d.disconnect();
            at = (at + 1) % addrs.len();
            connect_somewhere(&mut d, addrs, &mut at, &name);
        }
    }
    catch_up(&mut d, &name);
    report.held = std::mem::take(&mut d.held);
    report.divergent = std::mem::take(&mut d.divergent);
    report
}

/// Connects to `addrs[*at]`, moving on to the next address while one
/// refuses, for at most `SEND_RETRY_FOR`.
fn connect_somewhere(d: &mut Device, addrs: &[SocketAddr], at: &mut usize, name: &str) {
    let deadline = Instant::now() + SEND_RETRY_FOR;
    loop {
        match d.connect(addrs[*at]) {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "{name}: cannot reconnect: {e}");
                *at = (*at + 1) % addrs.len();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Syncs until the server says nothing more is missing.
fn catch_up(d: &mut Device, name: &str) {
    let deadline = Instant::now() + SEND_RETRY_FOR;
    for _ in 0..SYNC_PAGES_MAX {
        assert!(Instant::now() < deadline, "{name}: sync did not finish");
        match d.sync_page() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                // Redis away: the sync fails typed; try again shortly.
                std::thread::sleep(Duration::from_millis(100));
                let _ = e;
            }
        }
    }
    panic!("{name}: more than {SYNC_PAGES_MAX} sync pages");
}

// ---------------------------------------------------------------------------
// A device that survives its connection
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Fault {
    /// The connection ended (EOF, reset, write error).
    Closed,
    /// No answer within `ANSWER_WAIT`.
    Timeout,
}

/// A protocol client that records every message entry it receives and
/// outlives its connection.
struct Device {
    user: &'static str,
    device: &'static str,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    next_request: u64,
    held: BTreeMap<(String, u64), (String, String)>,
    divergent: Vec<String>,
}

impl Device {
    fn new(user: &'static str, device: &'static str) -> Self {
        Self {
            user,
            device,
            stream: None,
            buf: Vec::new(),
            next_request: 1,
            held: BTreeMap::new(),
            divergent: Vec::new(),
        }
    }

    fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    fn disconnect(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    fn connect(&mut self, addr: SocketAddr) -> Result<(), String> {
        self.disconnect();
        let s = TcpStream::connect_timeout(&addr, ANSWER_WAIT).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        self.stream = Some(s);
        let auth = Body::Auth(pb::Auth {
            token: Gateway::token(self.user),
            device_id: self.device.into(),
            protocol_version: 1,
            platform: pb::Platform::Cli as i32,
            ..Default::default()
        });
        match self.request(auth) {
            Ok(Body::Welcome(_)) => Ok(()),
            Ok(other) => {
                self.disconnect();
                Err(format!("auth answered {other:?}"))
            }
            Err(f) => {
                self.disconnect();
                Err(format!("auth: {f:?}"))
            }
        }
    }

    /// One sync page from the device's contiguous cursors; true when the
    /// server has more.
    fn sync_page(&mut self) -> Result<bool, String> {
        let mut cursors: BTreeMap<&str, u64> = BTreeMap::new();
        for (conv, seq) in self.held.keys() {
            let c = cursors.entry(conv).or_insert(0);
            if *seq == *c + 1 {
                *c = *seq;
            }
        }
        let cursors = cursors
            .into_iter()
            .map(|(c, s)| pb::Cursor {
                conversation_id: c.to_owned(),
                seq: s,
            })
            .collect();
        match self.request(Body::Sync(pb::SyncRequest { cursors, limit: 0 })) {
            Ok(Body::SyncResult(r)) => {
                for e in &r.entries {
                    self.record_entry(e);
                }
                Ok(r.more)
            }
            Ok(other) => Err(format!("sync answered {other:?}")),
            Err(f) => {
                self.disconnect();
                Err(format!("sync: {f:?}"))
            }
        }
    }

    fn request(&mut self, body: Body) -> Result<Body, Fault> {
        let id = self.next_request;
        self.next_request += 1;
        let mut out = Vec::new();
        codec::encode_frame(
            &pb::Frame {
                request_id: id,
                body: Some(body),
            },
            &mut out,
        );
        let Some(s) = self.stream.as_mut() else {
            return Err(Fault::Closed);
        };
        if s.write_all(&out).is_err() {
            self.disconnect();
            return Err(Fault::Closed);
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let f = self.read_frame(deadline)?;
            if f.request_id == id {
                return f.body.ok_or(Fault::Closed);
            }
            self.on_push(&f);
        }
    }

    /// Reads pushes for up to `wait`.
    fn poll(&mut self, wait: Duration) -> Result<(), Fault> {
        let deadline = Instant::now() + wait;
        loop {
            match self.read_frame(deadline) {
                Ok(f) => self.on_push(&f),
                Err(Fault::Timeout) => return Ok(()),
                Err(f) => return Err(f),
            }
        }
    }

    fn on_push(&mut self, f: &pb::Frame) {
        if let Some(Body::Deliver(d)) = &f.body {
            for e in &d.entries {
                self.record_entry(e);
            }
        }
    }

    fn record_entry(&mut self, e: &pb::Entry) {
        let Some(pb::entry::Body::Message(m)) = &e.body else {
            return;
        };
        let text = match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(pb::content::Kind::Text(t)) => t.text.clone(),
            _ => String::new(),
        };
        self.record(&e.conversation_id, e.seq, &e.client_msg_id, &text);
    }

    fn record(&mut self, conv: &str, seq: u64, id: &str, text: &str) {
        let key = (conv.to_owned(), seq);
        match self.held.get(&key) {
            Some((i, t)) if i != id || t != text => self
                .divergent
                .push(format!("{conv}#{seq}: {i:?} {t:?} then {id:?} {text:?}")),
            Some(_) => {}
            None => {
                self.held.insert(key, (id.to_owned(), text.to_owned()));
            }
        }
    }

    fn read_frame(&mut self, deadline: Instant) -> Result<pb::Frame, Fault> {
        loop {
            match codec::decode_frame(&self.buf, 1 << 20) {
                Ok(codec::Decoded::Frame { frame, consumed }) => {
                    self.buf.drain(..consumed);
                    return Ok(frame);
                }
                Ok(codec::Decoded::NeedMore(_)) => {}
                Err(e) => panic!("{}/{}: undecodable frame: {e:?}", self.user, self.device),
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(Fault::Timeout);
            };
            let Some(s) = self.stream.as_mut() else {
                return Err(Fault::Closed);
            };
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|_| Fault::Closed)?;
            let mut chunk = [0u8; 16 * 1024];
            match s.read(&mut chunk) {
                Ok(0) => {
                    self.disconnect();
                    return Err(Fault::Closed);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Fault::Timeout);
                }
                Err(_) => {
                    self.disconnect();
                    return Err(Fault::Closed);
                }
            }
        }
    }
}

/// Polls `ok` every 20 ms until it holds, failing after `WAIT`.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT * 2;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
