//! Full-text search through a running gateway (docs/protocol.md, "Search"),
//! on the embedded store and on a real `redis-server`: a client's `search`
//! frame is answered with the messages of its conversations that hold the
//! words (Chinese included), recalls and edits are followed, hostile input
//! gets a typed error and the connection goes on, and `[search] enabled =
//! false` answers SEARCH_DISABLED.

#![allow(clippy::disallowed_methods)]

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use support::{Client, Gateway, text_content};
use tern_gateway::config::{Config, Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

const AB: &str = "d:alice:bob";

fn search(c: &mut Client, query: &str) -> Result<pb::SearchResult, pb::Error> {
    search_with(
        c,
        pb::SearchRequest {
            query: query.into(),
            ..Default::default()
        },
    )
}

fn search_with(c: &mut Client, req: pb::SearchRequest) -> Result<pb::SearchResult, pb::Error> {
    let r = c.request(Body::Search(req));
    match r.body {
        Some(Body::SearchResult(r)) => Ok(r),
        Some(Body::Error(e)) => Err(e),
        other => panic!("expected a search answer, got {other:?}"),
    }
}

fn seqs(r: &pb::SearchResult) -> Vec<(String, u64)> {
    r.entries
        .iter()
        .map(|e| (e.conversation_id.clone(), e.seq))
        .collect()
}

fn sent_seq(f: &pb::Frame) -> u64 {
    match &f.body {
        Some(Body::SendAck(a)) => a.seq,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

/// The whole scenario on one gateway configured by `tweak`.
fn search_end_to_end(tweak: impl FnOnce(&mut Config)) {
    let gw = Gateway::start_with(Driver::Epoll, tweak);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
    let (mut carol, _) = Client::login(gw.tcp, "carol", "phone");
    let hello = sent_seq(&alice.send_text("bob", "m1", "Hello Bob, 明天去北京开会"));
    let _ = sent_seq(&bob.send_text("alice", "m2", "see you in 北京"));
    let draft = sent_seq(&alice.send_text("bob", "m3", "draft alpha"));
    let gone = sent_seq(&alice.send_text("bob", "m4", "secret gamma"));
    let _ = sent_seq(&alice.send_text("carol", "m5", "hello carol"));

    // Words, case folded; Chinese by pairs of characters; newest first.
    let r = search(&mut bob, "HELLO").unwrap();
    assert_eq!(seqs(&r), [(AB.to_owned(), hello)]);
    assert!(r.cursor.is_empty());
    let Some(pb::entry::Body::Message(m)) = &r.entries[0].body else {
        panic!("{r:?}")
    };
    assert_eq!(m.content, Some(text_content("Hello Bob, 明天去北京开会")));
    let r = search(&mut bob, "北京").unwrap();
    assert_eq!(seqs(&r), [(AB.to_owned(), 2), (AB.to_owned(), hello)]);
    assert_eq!(
        seqs(&search(&mut bob, "去北京").unwrap()),
        [(AB.into(), hello)]
    );
    // Only your own conversations: carol finds her message, not bob's.
    let r = search(&mut carol, "hello").unwrap();
    assert_eq!(seqs(&r), [("d:alice:carol".to_owned(), 1)]);

    // Edits by their latest text, recalls never.
    let r = alice.request(Body::Edit(pb::EditRequest {
        conversation_id: AB.into(),
        seq: draft,
        client_edit_id: "e1".into(),
        content: Some(text_content("final beta")),
        streaming: false,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    let r = alice.request(Body::Recall(pb::RecallRequest {
        conversation_id: AB.into(),
        seq: gone,
    }));
    assert!(matches!(r.body, Some(Body::Ok(_))), "{r:?}");
    assert!(search(&mut bob, "alpha").unwrap().entries.is_empty());
    assert!(search(&mut bob, "gamma").unwrap().entries.is_empty());
    assert_eq!(
        seqs(&search(&mut bob, "beta").unwrap()),
        [(AB.into(), draft)]
    );

    // Hostile input: typed errors, and the connection goes on.
    let invalid = pb::ErrorCode::InvalidArgument;
    for q in ["", "\"*\" -:", &"x".repeat(300)] {
        assert_eq!(search(&mut bob, q).unwrap_err().code(), invalid, "{q:?}");
    }
    assert!(search(&mut bob, "' OR 1=1; --").unwrap().entries.is_empty());
    let not_mine = pb::SearchRequest {
        query: "hello".into(),
        conversation_id: "d:alice:carol".into(),
        ..Default::default()
    };
    assert_eq!(
        search_with(&mut bob, not_mine).unwrap_err().code(),
        pb::ErrorCode::NotMember
    );
    let forged = pb::SearchRequest {
        query: "hello".into(),
        cursor: "9/../../etc".into(),
        ..Default::default()
    };
    assert_eq!(search_with(&mut bob, forged).unwrap_err().code(), invalid);
    assert_eq!(
        seqs(&search(&mut bob, "hello").unwrap()),
        [(AB.into(), hello)]
    );
}

#[test]
fn search_over_a_gateway_on_the_embedded_store() {
    // Proves the scenario above over TCP, embedded store, indexer on.
    search_end_to_end(|c| c.search.index_interval_ms = 20);
}

#[test]
fn search_over_a_gateway_on_redis() {
    // Proves the same scenario on the Redis store (a real redis-server).
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    search_end_to_end(|c| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    });
}

#[test]
fn search_disabled_by_config_is_refused() {
    // Proves `[search] enabled = false` reaches the domain: SEARCH_DISABLED.
    let gw = Gateway::start_with(Driver::Epoll, |c| c.search.enabled = false);
    let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
    alice.send_text("bob", "m1", "hello");
    assert_eq!(
        search(&mut alice, "hello").unwrap_err().code(),
        pb::ErrorCode::SearchDisabled
    );
}
