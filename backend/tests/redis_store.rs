//! The Redis store on one real `redis-server` (started by the harness on a
//! loopback port): what is specific to Redis — durability across a SIGKILL,
//! the open-time checks, WAIT, the Lua recall rewrite, key validation, and
//! concurrent use of one store from several threads. The behaviour both
//! stores share is the conformance suite's (`redis_conformance.rs`).

#[path = "support/redis_harness.rs"]
mod redis_harness;

use redis_harness::{RedisServer, ServerOptions};
use tern_backend::redis_store::{
    RedisConfig, RedisNodes, RedisStore, RedisStoreError, WAITAOF_VERSION_MIN, WaitPolicy,
};
use tern_backend::store::{
    Append, AppendEffect, AppendRefused, DedupKey, SocialOp, Store, StoreError,
};
use tern_protocol::pb;

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::new(RedisNodes::Single(server.url()))
}

/// A store on a throwaway server (no durability check).
fn open(server: &RedisServer) -> RedisStore {
    let mut c = config(server);
    c.require_durable = false;
    RedisStore::open(c).expect("open the redis store")
}

fn text_entry(sender: &str, text: &str, time_ms: u64) -> pb::Entry {
    pb::Entry {
        sender: sender.into(),
        sender_device: "phone".into(),
        time_ms,
        body: Some(pb::entry::Body::Message(pb::Message {
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
            }),
            mentions: vec!["carol".into()],
            mention_all: false,
            reply_to_seq: 0,
            recalled: false,
            edit_count: 0,
            edited_at_ms: 0,
            reactions: vec![],
            streaming: false,
            thread_root_seq: 0,
            thread: None,
        })),
        ..Default::default()
    }
}

fn send(conv: &str, sender: &str, cmid: &str, text: &str, time_ms: u64) -> Append {
    let mut entry = text_entry(sender, text, time_ms);
    entry.client_msg_id = cmid.into();
    Append {
        conversation: conv.into(),
        entry,
        activity: true,
        dedup: Some(DedupKey {
            sender: sender.into(),
            client_msg_id: cmid.into(),
            expires_at_ms: time_ms + 86_400_000,
        }),
        member_of: None,
        effect: AppendEffect::None,
        participants: conv
            .strip_prefix("d:")
            .map_or(Vec::new(), |p| p.split(':').map(str::to_owned).collect()),
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_and_seqs_are_not_reused() {
    // Proves invariant 5 on Redis with `appendfsync always`: every append
    // the store acknowledged is there after a SIGKILL and restart on the
    // same AOF, and the next seq continues after the last acknowledged one.
    let mut server = RedisServer::start(ServerOptions::DURABLE);
    let store = RedisStore::open(config(&server)).expect("a durable server passes the check");
    let conv = "d:alice:bob";
    let mut acked = Vec::new();
    for batch in 0..20u64 {
        let items: Vec<Append> = (0..10u64)
            .map(|i| {
                let n = batch * 10 + i;
                send(
                    conv,
                    "alice",
                    &format!("m{n}"),
                    &format!("hello {n}"),
                    1_000 + n,
                )
            })
            .collect();
        for r in store.append_batch(1_000, &items).unwrap() {
            acked.push(r.unwrap().seq);
        }
    }
    assert_eq!(acked, (1..=200).collect::<Vec<u64>>());
    drop(store);

    server.restart();
    let store = RedisStore::open(config(&server)).unwrap();
    let entries = store.entries(conv, 1, u64::MAX, 1_000).unwrap();
    assert_eq!(entries.len(), 200);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.conversation_id, conv);
        assert_eq!(e.client_msg_id, format!("m{i}"));
    }
    assert_eq!(store.heads(&[conv]).unwrap()[0].seq, 200);
    // A resend after the crash is still recognised; a new message continues.
    let again = store
        .append_batch(2_000, &[send(conv, "alice", "m7", "x", 5)])
        .unwrap();
    assert_eq!(
        again[0],
        Ok(tern_backend::store::Appended {
            seq: 8,
            time_ms: 1_007,
            duplicate: true
        })
    );
    let next = store
        .append_batch(2_000, &[send(conv, "bob", "new", "after", 3_000)])
        .unwrap();
    assert_eq!(next[0].unwrap().seq, 201);
    // The user records written with the appends survived too.
    assert_eq!(store.user_convs("bob").unwrap().len(), 1);
}

#[test]
fn a_server_that_would_ack_before_fsync_is_refused() {
    // Proves the open-time durability check: without AOF `always` (and no
    // wait policy that makes up for it) the store refuses to open, with the
    // node's settings in a typed error; the check can be turned off.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let err = RedisStore::open(config(&server)).unwrap_err();
    match err {
        RedisStoreError::NotDurable { appendonly, .. } => assert_eq!(appendonly, "no"),
        other => panic!("expected NotDurable, got {other}"),
    }
    let everysec = RedisServer::start_with(
        ServerOptions::EPHEMERAL,
        &["--appendonly", "yes", "--appendfsync", "everysec"],
    );
    let err = RedisStore::open(config(&everysec)).unwrap_err();
    assert!(
        matches!(&err, RedisStoreError::NotDurable { appendfsync, .. } if appendfsync == "everysec"),
        "{err}"
    );
    let mut c = config(&server);
    c.require_durable = false;
    assert!(RedisStore::open(c).is_ok());
}

#[test]
fn waitaof_needs_redis_7_2_and_says_so() {
    // Proves WaitPolicy::Aof is refused with a typed error on a server
    // older than 7.2 (Debian 12 ships 7.0), and works on a newer one.
    let server = RedisServer::start(ServerOptions::DURABLE);
    let mut c = config(&server);
    c.wait = WaitPolicy::Aof {
        local: true,
        replicas: 0,
        timeout_ms: 1_000,
    };
    let probe = open(&server);
    let version = probe.server_version().to_owned();
    let v: Vec<u32> = version.split('.').map(|x| x.parse().unwrap()).collect();
    let new_enough = (v[0], v[1], v[2]) >= WAITAOF_VERSION_MIN;
    match RedisStore::open(c) {
        Err(RedisStoreError::WaitAofUnsupported { found }) => {
            assert!(!new_enough);
            assert_eq!(found, version);
        }
        Ok(store) => {
            assert!(new_enough, "WAITAOF accepted on {version}");
            let r = store
                .append_batch(1, &[send("d:a:b", "a", "1", "x", 1)])
                .unwrap();
            assert_eq!(r[0].unwrap().seq, 1);
        }
        Err(other) => panic!("unexpected {other}"),
    }
}

#[test]
fn wait_for_a_replica_before_the_ack() {
    // Proves WaitPolicy::Replicas: with a live replica the batch is acked
    // after WAIT saw it; once the replica is gone, the batch fails with a
    // typed WaitShort error (written, but not known to be replicated).
    let primary = RedisServer::start_with(
        ServerOptions::EPHEMERAL,
        &["--repl-diskless-sync-delay", "0"],
    );
    let port = primary.port().to_string();
    let mut replica = RedisServer::start_with(
        ServerOptions::EPHEMERAL,
        &["--replicaof", "127.0.0.1", &port],
    );
    // The replica answers PING before its first sync; wait for the link.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !replica
        .command(&["INFO", "replication"])
        .unwrap()
        .contains("master_link_status:up")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replica never connected"
        );
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut c = config(&primary);
    c.wait = WaitPolicy::Replicas {
        replicas: 1,
        timeout_ms: 2_000,
    };
    let store = RedisStore::open(c).expect("one replica makes up for no fsync");
    let r = store
        .append_batch(1, &[send("d:a:b", "a", "1", "x", 1)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 1);

    replica.kill();
    let err = store
        .append_batch(1, &[send("d:a:b", "a", "2", "y", 2)])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("WAIT reached 0 of 1")),
        "{err}"
    );
}

/// A rolling upgrade runs nodes of two versions on one Redis: this
/// version's function library (`tern_v2`, functions `*_v2`) loads beside
/// the previous one (`tern`, functions `*_v1`, stand-ins here) instead of
/// replacing it, so the older nodes' calls keep working until they are
/// upgraded too (docs/redis.md, "Function library versions").
#[test]
fn the_library_loads_beside_the_previous_version() {
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let old = "#!lua name=tern\n\
        local function v1() return 'v1' end\n\
        local fs = {'append', 'group', 'writes', 'range', 'members'}\n\
        for i = 1, #fs do redis.register_function('tern_' .. fs[i] .. '_v1', v1) end";
    server.command(&["FUNCTION", "LOAD", old]).unwrap();
    let store = open(&server);
    let r = store
        .append_batch(10, &[send("d:alice:bob", "alice", "c1", "hi", 10)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 1);
    for f in ["append", "group", "writes", "range", "members"] {
        assert_eq!(
            server
                .command(&["FCALL", &format!("tern_{f}_v1"), "0"])
                .unwrap(),
            "v1",
            "the older node's {f} still answers"
        );
    }
    // Opening again (every node does at start) replaces only its own.
    drop(store);
    let _again = open(&server);
    assert_eq!(
        server.command(&["FCALL", "tern_append_v1", "0"]).unwrap(),
        "v1"
    );
}

#[test]
fn recall_rewrites_the_stored_message_in_lua() {
    // Proves the function's protobuf rewrite: the recalled message keeps
    // everything but its content and mentions, is flagged recalled, and a
    // second recall
    // (or a recall of a non-message or a missing seq) is refused.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    let conv = "d:alice:bob";
    let r = store
        .append_batch(10, &[send(conv, "alice", "c1", "secret", 10)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 1);
    let recall = |target: u64| Append {
        conversation: conv.into(),
        entry: pb::Entry {
            sender: "alice".into(),
            time_ms: 20,
            body: Some(pb::entry::Body::Recalled(pb::Recalled { seq: target })),
            ..Default::default()
        },
        activity: true,
        dedup: None,
        member_of: None,
        effect: AppendEffect::Recall { seq: target },
        participants: vec![],
    };
    let r = store
        .append_batch(20, &[recall(1), recall(1), recall(2), recall(99)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 2);
    assert_eq!(r[1], Err(AppendRefused::NotRecallable));
    assert_eq!(
        r[2],
        Err(AppendRefused::NotRecallable),
        "seq 2 is a Recalled entry"
    );
    assert_eq!(r[3], Err(AppendRefused::NotRecallable));
    let e = &store.entries(conv, 1, 1, 10).unwrap()[0];
    let Some(pb::entry::Body::Message(m)) = &e.body else {
        panic!("{e:?}")
    };
    assert!(m.recalled);
    assert_eq!(m.content, None);
    assert!(m.mentions.is_empty(), "a recall takes the mentions back");
    assert_eq!(
        (e.sender.as_str(), e.client_msg_id.as_str(), e.time_ms),
        ("alice", "c1", 10)
    );
    let raw = server.command(&["HGET", "{c:d:alice:bob}:l", "1"]).unwrap();
    assert!(
        !raw.contains("secret"),
        "the content is gone from Redis too"
    );
}

#[test]
fn ids_that_could_escape_their_key_are_refused_before_any_write() {
    // Proves key safety at the Store boundary: a conversation or user id
    // with `{`, `}` or `:` gives a typed error and writes nothing.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    let bad_conv = send("g:x}{c:g:y", "alice", "m1", "x", 1);
    let mut bad_participant = send("d:alice:bob", "alice", "m1", "x", 1);
    bad_participant.participants.push("eve}:c".into());
    let mut bad_sender = send("d:alice:bob", "alice", "m1", "x", 1);
    bad_sender.dedup.as_mut().unwrap().sender = "a:b".into();
    for item in [bad_conv, bad_participant, bad_sender] {
        let good = send("d:alice:bob", "alice", "ok", "x", 1);
        let err = store.append_batch(1, &[good, item]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains("refused")),
            "{err}"
        );
    }
    assert!(store.user_convs("alice{").is_err());
    assert!(store.entries("d:b}:a", 1, 10, 10).is_err());
    assert!(store.entries("d:a:b:c", 1, 10, 10).is_err());
    assert!(
        store
            .apply_social(&[SocialOp::PutBlock {
                user: "a".into(),
                other: "}".into()
            }])
            .is_err()
    );
    assert_eq!(
        server.command(&["DBSIZE"]).as_deref(),
        Ok("0"),
        "nothing was written"
    );
}

#[test]
fn threads_sharing_a_store_get_distinct_gapless_seqs() {
    // Proves the pool: 8 threads on one store with 2 connections append to
    // one conversation concurrently; the seqs handed out are exactly
    // 1..=N, and every message is stored once.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let mut c = config(&server);
    c.require_durable = false;
    c.connections_max = 2;
    let store = RedisStore::open(c).unwrap();
    let conv = "g:crowd";
    let per_thread = 50u64;
    let mut seqs: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let store = &store;
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let item = send(conv, &format!("u{t}"), &format!("m{i}"), "x", i);
                            store.append_batch(0, &[item]).unwrap()[0].unwrap().seq
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8 * per_thread).collect::<Vec<u64>>());
    assert_eq!(store.entries(conv, 1, u64::MAX, 10_000).unwrap().len(), 400);
}

#[test]
fn expired_dedup_records_are_purged_a_few_per_append() {
    // Proves dedup expiry: an expired record no longer deduplicates, and
    // expired records are removed by later appends (bounded work each).
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    let conv = "d:alice:bob";
    let mut items = Vec::new();
    for i in 0..6u64 {
        let mut a = send(conv, "alice", &format!("old{i}"), "x", 1);
        a.dedup.as_mut().unwrap().expires_at_ms = 100;
        items.push(a);
    }
    store.append_batch(50, &items).unwrap();
    assert_eq!(
        server.command(&["HLEN", "{c:d:alice:bob}:d"]).as_deref(),
        Ok("6")
    );
    // At now=200 they are expired: a resend is new, and purging starts.
    let r = store
        .append_batch(200, &[send(conv, "alice", "old0", "again", 200)])
        .unwrap();
    assert_eq!(
        r[0].unwrap(),
        tern_backend::store::Appended {
            seq: 7,
            time_ms: 200,
            duplicate: false
        }
    );
    store
        .append_batch(200, &[send(conv, "alice", "fresh", "x", 200)])
        .unwrap();
    let left: u64 = server
        .command(&["HLEN", "{c:d:alice:bob}:d"])
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 3, "expired records were purged, {left} left");
}

#[test]
fn a_batch_of_appends_reaches_redis_as_one_transaction() {
    // Proves the group commit on one server: a batch of appends arrives as
    // one MULTI/EXEC — one turn of Redis's event loop, so one AOF write
    // and, with `appendfsync always`, one fsync (a plain pipeline of many
    // appends is read in several turns, each with its own fsync). Counted
    // by INFO commandstats: one EXEC, one FCALL per append.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    store
        .append_batch(1, &[send("d:alice:bob", "alice", "w", "warm", 1)])
        .unwrap();
    assert_eq!(
        server.command(&["CONFIG", "RESETSTAT"]).as_deref(),
        Ok("OK")
    );
    let batch: Vec<Append> = (0..50)
        .map(|i| send(&format!("d:alice:u{i}"), "alice", &format!("m{i}"), "hi", 2))
        .collect();
    let r = store.append_batch(2, &batch).unwrap();
    assert!(
        r.iter()
            .all(|a| a.is_ok_and(|a| a.seq == 1 && !a.duplicate))
    );
    let stats = server.command(&["INFO", "commandstats"]).unwrap();
    let calls = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!((calls("exec"), calls("fcall")), (1, 50), "{stats}");
}

#[test]
fn a_server_that_lost_the_functions_gets_them_back() {
    // Proves the reload path: after `FUNCTION FLUSH` (a fresh node, or a
    // server restarted without persistence), the next batch finds no
    // function, the store reloads the library and, since nothing of the
    // batch ran, runs it again: the caller sees a normal result.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    let conv = "d:alice:bob";
    store
        .append_batch(1, &[send(conv, "alice", "a", "x", 1)])
        .unwrap();
    assert_eq!(server.command(&["FUNCTION", "FLUSH"]).as_deref(), Ok("OK"));
    let r = store
        .append_batch(2, &[send(conv, "bob", "b", "y", 2)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 2);
    assert_eq!(store.entries(conv, 1, 10, 10).unwrap().len(), 2);
}

#[test]
fn a_lost_library_with_new_index_entries_in_the_same_pipeline() {
    // Proves the reload path also when the failed pipeline carried index
    // entries (which ran, and are idempotent): the batch is run again and
    // the caller sees a normal result, stored once.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    store
        .append_batch(1, &[send("d:alice:bob", "alice", "a", "x", 1)])
        .unwrap();
    assert_eq!(server.command(&["FUNCTION", "FLUSH"]).as_deref(), Ok("OK"));
    let r = store
        .append_batch(2, &[send("d:alice:carol", "alice", "b", "y", 2)])
        .unwrap();
    assert_eq!(r[0].unwrap().seq, 1);
    assert_eq!(store.user_convs("carol").unwrap().len(), 1);
    assert_eq!(store.user_convs("alice").unwrap().len(), 2);
}

#[test]
fn sigkill_in_the_middle_of_a_send_stream_loses_no_ack() {
    // Proves invariant 5 under fire: a writer streams batches while Redis
    // (AOF `always`) is SIGKILLed mid-stream. After a restart every
    // acknowledged message is at its acknowledged seq; resending everything
    // (acked or not) with the same client ids stores each message exactly
    // once, and the log has no holes.
    let mut server = RedisServer::start(ServerOptions::DURABLE);
    let mut c = config(&server);
    c.io_timeout_ms = 1_000;
    let store = RedisStore::open(c.clone()).unwrap();
    let conv = "d:alice:bob";
    let batch_len = 5u64;
    let (acked, tried) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut acked: Vec<(String, u64)> = Vec::new();
            let mut tried = 0u64;
            for b in 0.. {
                let items: Vec<Append> = (0..batch_len)
                    .map(|i| send(conv, "alice", &format!("k{}", b * batch_len + i), "x", 1))
                    .collect();
                tried += batch_len;
                match store.append_batch(1, &items) {
                    Ok(r) => {
                        for (item, r) in items.iter().zip(r) {
                            acked.push((item.entry.client_msg_id.clone(), r.unwrap().seq));
                        }
                    }
                    Err(_) => break,
                }
            }
            (acked, tried)
        });
        // Let the writer get going, then pull the plug.
        while server
            .command(&["HGET", "{c:d:alice:bob}:h", "s"])
            .unwrap_or_default()
            .parse::<u64>()
            .unwrap_or(0)
            < 50
        {
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        server.kill();
        writer.join().unwrap()
    });
    // The batch that took the server past 50 may still have been on its way
    // back when the kill came; every batch before it was acked.
    assert!(
        acked.len() as u64 >= 50 - batch_len,
        "{} acked before the kill",
        acked.len()
    );

    server.restart();
    let store = RedisStore::open(c).unwrap();
    let log = store.entries(conv, 1, u64::MAX, 100_000).unwrap();
    for (cmid, seq) in &acked {
        let e = &log[*seq as usize - 1];
        assert_eq!(
            (&e.client_msg_id, e.seq),
            (cmid, *seq),
            "acked message lost or moved"
        );
    }
    // The client's retry of everything it sent.
    let items: Vec<Append> = (0..tried)
        .map(|k| send(conv, "alice", &format!("k{k}"), "x", 1))
        .collect();
    let again = store.append_batch(2, &items).unwrap();
    for ((cmid, seq), r) in acked.iter().zip(&again) {
        let r = r.unwrap();
        assert!(r.duplicate, "{cmid} stored twice");
        assert_eq!(r.seq, *seq);
    }
    let log = store.entries(conv, 1, u64::MAX, 100_000).unwrap();
    assert_eq!(log.len() as u64, tried, "every message exactly once");
    let mut ids: Vec<&str> = log.iter().map(|e| e.client_msg_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, tried);
    assert!(log.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
}

#[test]
fn a_last_device_presence_waits_while_a_gateway_node_counts_the_user() {
    // Proves the cross-node presence rule of the Redis store: a record
    // saying the user's last device left (`connected: false`) is not
    // written while the user's presence node set (kept by the gateways,
    // `{u:<user>}:pn`) names a node — a device connected there after
    // another node decided "last" — and is written once the set is empty.
    // Before the rule, the late OFFLINE overwrote the newer ONLINE.
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    let store = open(&server);
    let record =
        |state: pb::PresenceState, connected: bool, at: u64| tern_backend::store::PresenceRecord {
            user_id: "alice".into(),
            state: state as i32,
            text: String::new(),
            updated_ms: at,
            expires_at_ms: at + 60_000,
            connected,
        };
    let online = record(pb::PresenceState::Online, true, 10);
    store.put_presence(&online).unwrap();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SADD")
        .arg("{u:alice}:pn")
        .arg("n2")
        .query::<i64>(&mut c)
        .unwrap();
    let offline = record(pb::PresenceState::Offline, false, 20);
    store.put_presences(std::slice::from_ref(&offline)).unwrap();
    assert_eq!(store.presences(&["alice"]).unwrap(), [Some(online)]);
    redis::cmd("SREM")
        .arg("{u:alice}:pn")
        .arg("n2")
        .query::<i64>(&mut c)
        .unwrap();
    store.put_presence(&offline).unwrap();
    assert_eq!(store.presences(&["alice"]).unwrap(), [Some(offline)]);
}

#[path = "support/audit.rs"]
mod audit;
#[path = "support/org.rs"]
mod org;

#[test]
fn storage_is_charged_up_to_the_limit() {
    let server = RedisServer::start(ServerOptions::DURABLE);
    org::storage_is_charged_up_to_the_limit(&open(&server));
}

#[test]
fn seats_are_taken_up_to_the_limit_and_freed() {
    let server = RedisServer::start(ServerOptions::DURABLE);
    org::seats_are_taken_up_to_the_limit_and_freed(&open(&server));
}

#[test]
fn departments_compare_and_set_and_index_members() {
    let server = RedisServer::start(ServerOptions::DURABLE);
    org::departments_compare_and_set_and_index_members(&open(&server));
}

#[test]
fn the_audit_log_is_per_tenant_bounded_and_paged() {
    let server = RedisServer::start(ServerOptions::DURABLE);
    audit::audit_log_is_per_tenant_bounded_and_paged(&open(&server));
}

#[test]
fn credentials_are_created_once_and_read_back() {
    // Proves on a real redis-server: a local account's hash is stored once
    // (a second create for the id writes nothing and says so), read back
    // as stored, and an unknown user has none.
    use tern_backend::store::Credentials;
    let server = RedisServer::start(ServerOptions::DURABLE);
    let store = open(&server);
    assert_eq!(store.credential("alice").unwrap(), None);
    assert!(store.create_credential("alice", "$argon2id$one").unwrap());
    assert!(!store.create_credential("alice", "$argon2id$two").unwrap());
    assert_eq!(
        store.credential("alice").unwrap().as_deref(),
        Some("$argon2id$one")
    );
    assert!(
        store.credential("a:b").is_err(),
        "invalid ids are typed errors"
    );
}
