//! The shared conformance suite (`conformance/mod.rs`, the same cases the
//! embedded store passes) against the Redis store, three times: on one real
//! `redis-server` with `appendonly yes`, `appendfsync always` (the
//! production setting, checked by `require_durable`), again there with
//! encryption at rest on, and on a real
//! 3-master Redis Cluster. Every case gets its own fresh server(s) on free
//! loopback ports, killed when the case ends.

#[macro_use]
mod conformance;

#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::sync::Arc;

use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};

/// Cases against one durable server.
mod single {
    use super::*;
    use redis_harness::{RedisServer, ServerOptions};

    fn make() -> conformance::Fixture {
        let server = RedisServer::start(ServerOptions::DURABLE);
        let config = RedisConfig::new(RedisNodes::Single(server.url()));
        let store = RedisStore::open(config).expect("open the redis store");
        conformance::Fixture::new(Arc::new(store), server)
    }

    conformance_tests!(make);
}

/// Cases against one durable server with encryption at rest on: message
/// contents reach Redis sealed, and the Redis functions (recall rewrites,
/// ranges) work on them unchanged.
mod sealed {
    use super::*;
    use redis_harness::{RedisServer, ServerOptions};
    use tern_backend::seal::{KeyRing, Keys};

    fn make() -> conformance::Fixture {
        let server = RedisServer::start(ServerOptions::DURABLE);
        let config = RedisConfig::new(RedisNodes::Single(server.url()));
        let ring = KeyRing::new(vec![("k1".into(), [7; 32])], "k1").expect("key ring");
        let store = RedisStore::open(config)
            .expect("open the redis store")
            .with_keys(Keys::new(Some(ring)));
        conformance::Fixture::new(Arc::new(store), server)
    }

    conformance_tests!(make);
}

/// Cases against a 3-master cluster (no persistence: the cluster's
/// durability is `redis_cluster.rs`'s subject).
mod cluster {
    use super::*;
    use redis_harness::RedisCluster;

    fn make() -> conformance::Fixture {
        let cluster = RedisCluster::start(3, false);
        let mut config = RedisConfig::new(RedisNodes::Cluster(cluster.urls()));
        config.require_durable = false;
        let store = RedisStore::open(config).expect("open the redis store on the cluster");
        conformance::Fixture::new(Arc::new(store), cluster)
    }

    conformance_tests!(make);
}
