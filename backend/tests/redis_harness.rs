//! The Redis test harness itself: servers start on free loopback ports, an
//! AOF `always` server keeps acknowledged writes across SIGKILL, and three
//! cluster-enabled servers form a cluster that serves all 16384 slots.

#[path = "support/redis_harness.rs"]
mod redis_harness;

use redis_harness::{RedisCluster, RedisServer, ServerOptions};

#[test]
fn server_starts_answers_and_dies_with_its_owner() {
    // Proves a started server answers, and that dropping it kills the
    // process (its port stops answering).
    let server = RedisServer::start(ServerOptions::EPHEMERAL);
    assert_eq!(server.command(&["PING"]).as_deref(), Ok("PONG"));
    let port = server.port();
    drop(server);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn aof_always_survives_sigkill_and_restart() {
    // Proves the restart path: a write acknowledged by an AOF-always server
    // is there after SIGKILL and a restart on the same dir and port.
    let mut server = RedisServer::start(ServerOptions::DURABLE);
    assert_eq!(server.command(&["INCR", "n"]).as_deref(), Ok("1"));
    assert_eq!(server.command(&["INCR", "n"]).as_deref(), Ok("2"));
    let old_pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), old_pid);
    assert_eq!(server.command(&["GET", "n"]).as_deref(), Ok("2"));
}

#[test]
fn three_masters_form_a_cluster() {
    // Proves the cluster builder: every node reports state ok, 16384 slots
    // assigned, 3 known nodes.
    let cluster = RedisCluster::start(3, false);
    assert_eq!(cluster.urls().len(), 3);
    let mut c = cluster;
    for n in c.nodes_mut() {
        let info = n.command(&["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
}
