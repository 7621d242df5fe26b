//! The gateway on the Redis store, end to end: a real `redis-server`
//! (AOF `appendfsync always`, started here on a free loopback port) behind a
//! real gateway; a message is acked, delivered, and synced after a restart
//! of the gateway. Fails (does not skip) when redis-server is missing: the
//! test command installs it.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{Client, Gateway, delivered_text};
use tern_gateway::config::{Driver, StoreKind};
use tern_protocol::pb::{self, frame::Body};

struct Redis {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}); install redis-server (bash scripts/test.sh does)")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::yield_now();
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Through the Redis store: ack, delivery to an online peer, and after the
/// gateway restarts, the messages are there for a sync.
#[test]
fn gateway_on_redis_delivers_and_keeps_messages() {
    let redis = Redis::start();
    let url = format!("redis://{}", redis.addr);
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
