//! The Redis store on a real 3-master Redis Cluster (three `redis-server`
//! processes joined by `redis-cli --cluster create`): one conversation's
//! keys share a slot, a batch spanning many conversations (hence nodes) is
//! one pipelined call, per-user indexes (in another slot than their
//! records) only ever list records that exist, and acknowledged messages
//! survive a SIGKILL of every node.
//! The shared behaviour is the conformance suite's
//! (`redis_conformance.rs`, cluster case).

#[path = "support/redis_harness.rs"]
mod redis_harness;

use redis_harness::RedisCluster;
use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};
use tern_backend::store::{Append, AppendEffect, DedupKey, FriendRecord, SocialOp, Store};
use tern_protocol::pb;

fn store(cluster: &RedisCluster, require_durable: bool) -> RedisStore {
    let mut c = RedisConfig::new(RedisNodes::Cluster(cluster.urls()));
    c.require_durable = require_durable;
    RedisStore::open(c).expect("open the redis store on the cluster")
}

fn send(conv: &str, sender: &str, cmid: &str, time_ms: u64) -> Append {
    Append {
        conversation: conv.into(),
        entry: pb::Entry {
            sender: sender.into(),
            client_msg_id: cmid.into(),
            time_ms,
            body: Some(pb::entry::Body::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: cmid.into() })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        },
        activity: true,
        dedup: Some(DedupKey {
            sender: sender.into(),
            client_msg_id: cmid.into(),
            expires_at_ms: u64::MAX,
        }),
        member_of: None,
        effect: AppendEffect::None,
        participants: conv
            .strip_prefix("d:")
            .map_or(Vec::new(), |p| p.split(':').map(str::to_owned).collect()),
    }
}

#[test]
fn one_batch_spans_nodes_and_each_conversation_stays_in_one_slot() {
    // Proves the cluster layout: 60 conversations appended in one batch
    // land on all three nodes, every key of one conversation is in one slot,
    // and each conversation's seqs and user records are right.
    let mut cluster = RedisCluster::start(3, false);
    let s = store(&cluster, false);
    let convs: Vec<String> = (0..60).map(|i| format!("d:u{i:02}:v{i:02}")).collect();
    let mut items = Vec::new();
    for round in 0..3u64 {
        for c in &convs {
            items.push(send(c, &c[2..5], &format!("m{round}"), round));
        }
    }
    let results = s.append_batch(0, &items).unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.unwrap().seq, (i / convs.len()) as u64 + 1, "item {i}");
    }
    let refs: Vec<&str> = convs.iter().map(String::as_str).collect();
    assert!(s.heads(&refs).unwrap().iter().all(|h| h.seq == 3));
    assert_eq!(s.user_convs("v07").unwrap()[0].conversation_id, "d:u07:v07");

    let nodes = cluster.nodes_mut();
    for n in nodes.iter() {
        let keys: u64 = n.command(&["DBSIZE"]).unwrap().parse().unwrap();
        assert!(keys > 0, "node {} holds none of 60 conversations", n.port());
    }
    let slot = |n: &redis_harness::RedisServer, key: &str| -> String {
        n.command(&["CLUSTER", "KEYSLOT", key]).unwrap()
    };
    let n0 = &nodes[0];
    for c in &convs {
        let slots: Vec<String> = ["h", "l", "d", "x", "u", "m"]
            .iter()
            .map(|role| slot(n0, &format!("{{c:{c}}}:{role}")))
            .collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{c}: {slots:?}");
    }
}

#[test]
fn index_entries_without_their_record_are_filtered_out() {
    // Proves the superset-index rule across slots: a pair's records are
    // written atomically in the pair's slot; an index entry whose record
    // never got written (a crash between the two steps, simulated by
    // writing the index entry alone) is not listed; a call spanning several
    // pairs is applied pair by pair.
    let mut cluster = RedisCluster::start(3, false);
    let s = store(&cluster, false);
    let fr = |user: &str, friend: &str| {
        SocialOp::PutFriend(FriendRecord {
            user: user.into(),
            friend: friend.into(),
            remark: String::new(),
            since_ms: 5,
        })
    };
    s.apply_social(&[fr("alice", "bob"), fr("bob", "alice")])
        .unwrap();
    assert_eq!(s.friend("bob", "alice").unwrap().unwrap().since_ms, 5);

    // Write the orphan index entry on the node owning alice's slot (the
    // others answer MOVED, an error reply).
    let written = cluster
        .nodes_mut()
        .iter()
        .filter(|n| n.command(&["ZADD", "{u:alice}:f", "0", "zed"]).is_ok())
        .count();
    assert_eq!(written, 1);
    let friends: Vec<String> = s
        .friends("alice")
        .unwrap()
        .into_iter()
        .map(|f| f.friend)
        .collect();
    assert_eq!(
        friends,
        vec!["bob".to_owned()],
        "the orphan entry is filtered"
    );

    s.apply_social(&[fr("alice", "carol"), fr("dave", "erin")])
        .unwrap();
    assert!(s.friend("alice", "carol").unwrap().is_some());
    assert!(s.friend("dave", "erin").unwrap().is_some());
    assert_eq!(s.friends("alice").unwrap().len(), 2);
}

#[test]
fn acknowledged_messages_survive_sigkill_of_every_node() {
    // Proves invariant 5 on a cluster with `appendfsync always` on every
    // primary: after SIGKILL and restart of all three nodes, every
    // acknowledged message is there and seqs continue.
    let mut cluster = RedisCluster::start(3, true);
    let s = store(&cluster, true);
    let convs: Vec<String> = (0..12).map(|i| format!("g:room{i}")).collect();
    let mut last = vec![0u64; convs.len()];
    for round in 0..10u64 {
        let items: Vec<Append> = convs
            .iter()
            .map(|c| send(c, "alice", &format!("r{round}"), round))
            .collect();
        for (i, r) in s.append_batch(0, &items).unwrap().into_iter().enumerate() {
            last[i] = r.unwrap().seq;
        }
    }
    drop(s);
    cluster.restart_all();
    let s = store(&cluster, true);
    for (i, c) in convs.iter().enumerate() {
        let e = s.entries(c, 1, u64::MAX, 100).unwrap();
        assert_eq!(e.len() as u64, last[i], "{c}");
        assert_eq!(e.last().unwrap().client_msg_id, "r9");
        let next = s.append_batch(0, &[send(c, "bob", "after", 99)]).unwrap();
        assert_eq!(next[0].unwrap().seq, last[i] + 1);
    }
}
