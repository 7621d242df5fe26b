//! The gateway on the Redis store, end to end: a real `redis-server`
//! (AOF `appendfsync always`, started here on a free loopback port) behind a
//! real gateway; a message is acked, delivered, and synced after a restart
//! of the gateway. Fails (does not skip) when redis-server is missing: the
//! test command installs it.

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;
mod support;

use support::{Client, Gateway, delivered_text};
use tern_gateway::config::{Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

/// Through the Redis store: ack, delivery to an online peer, and after the
/// gateway restarts, the messages are there for a sync.
#[test]
fn gateway_on_redis_delivers_and_keeps_messages() {
    let redis = redis_harness::RedisServer::start(redis_harness::ServerOptions::DURABLE);
    let url = redis.url();
    let on_redis = |c: &mut tern_gateway::config::Config| {
        c.backend.store = StoreKind::Redis;
        c.backend.redis_urls = vec![url.clone()];
    };
    {
        let gw = Gateway::start_with(Driver::Epoll, on_redis);
        let (mut alice, _) = Client::login(gw.tcp, "alice", "phone");
        let (mut bob, _) = Client::login(gw.tcp, "bob", "phone");
        let ack = alice.send_text("bob", "x1", "via redis");
        let Some(Body::SendAck(ack)) = ack.body else {
            panic!("{ack:?}")
        };
        assert_eq!((ack.conversation_id.as_str(), ack.seq), ("d:alice:bob", 1));
        let f = bob.wait_push(|f| matches!(f.body, Some(Body::Deliver(_))));
        assert_eq!(delivered_text(&f).unwrap().2, "via redis");
        let again = alice.send_text("bob", "x1", "via redis");
        assert!(
            matches!(
                again.body,
                Some(Body::SendAck(pb::SendAck {
                    duplicate: true,
                    seq: 1,
                    ..
                }))
            ),
            "{again:?}"
        );
    }
    let gw = Gateway::start_with(Driver::Epoll, on_redis);
    let (mut bob, _) = Client::login(gw.tcp, "bob", "tablet");
    let r = bob.request(Body::Sync(pb::SyncRequest {
        cursors: vec![],
        limit: 0,
    }));
    let Some(Body::SyncResult(s)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].seq, 1);
}
