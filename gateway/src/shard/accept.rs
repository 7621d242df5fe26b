//! Accepting: each listener's loop takes connections at a bounded rate (the
//! listener pauses beyond it), closes at once those the allow/deny lists
//! refuse (before anything is allocated or counted for them), refuses those
//! over their IP's rate (`[limits]`), past `connections_max` or while
//! draining, and registers each one in the shard's epoll set. A TLS
//! listener's connections start with their TLS record layer (the handshake
//! then runs on the shard as their bytes arrive, `shard/tls.rs`).

use std::{
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    rc::Rc,
    time::{Duration, Instant},
};

use monoio::net::TcpListener;
use tern_protocol::{
    codec,
    pb::{self, frame::Body},
    session::Session,
};
use tracing::warn;

use super::{
    Conn, Shard, Spill,
    sock::{send_nonblocking, set_nonblocking},
};
use crate::{limits::Edge, metrics::CloseReason, msg::Transport};

/// What one listener's connections are.
pub(super) struct Listener {
    /// How frames are carried.
    pub(super) transport: Transport,
    /// Inside TLS (the shard's `tls` configuration).
    pub(super) secure: bool,
    /// Accepts per second.
    pub(super) rate: u32,
}

/// Accepts connections at a bounded rate and starts their readers.
pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, what: Listener) {
    let Listener {
        transport,
        secure,
        rate,
    } = what;
    // Token bucket: `rate` per second, refilled every 10 ms.
    let per_tick = (rate / 100).max(1);
    let mut tokens = per_tick;
    let mut refill_at = Instant::now() + Duration::from_millis(10);
    loop {
        if shard.draining.get() {
            return;
        }
        if tokens == 0 {
            let now = Instant::now();
            if now < refill_at {
                monoio::time::sleep(refill_at - now).await;
            }
            refill_at = Instant::now() + Duration::from_millis(10);
            tokens = per_tick;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) if shard.draining.get() => return,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokens -= 1;
        if !shard.lists.admits(Edge::Client, peer.ip()) {
            // Denied: closed here; no `Conn`, no session, not counted as
            // opened (`tern_list_refused_total` counts it).
            drop(stream);
            continue;
        }
        if let Err(retry_after_ms) = shard.limits.check_accept(peer.ip(), shard.epoch.elapsed()) {
            refuse(
                stream,
                transport,
                secure,
                Refusal::RateLimited,
                retry_after_ms,
            );
            continue;
        }
        shard
            .metrics
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shard
            .metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if shard.conns.borrow().len() >= shard.connections_max || shard.draining.get() {
            shard.metrics.closed(CloseReason::Refused);
            // Jittered, so that the clients refused in one storm do not all
            // come back at the same moment.
            let retry_after_ms = shard.limits.kick_retry_after_ms();
            refuse(
                stream,
                transport,
                secure,
                Refusal::Overloaded,
                retry_after_ms,
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        // The socket leaves monoio (deregistered on the epoll driver) and
        // joins the shard's epoll set.
        // SAFETY: `into_raw_fd` hands over sole ownership of the descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        if set_nonblocking(fd.as_raw_fd()).is_err() {
            shard.metrics.closed(CloseReason::Error);
            continue;
        }
        let now = shard.now_ms();
        let spill = match (secure, shard.tls.as_ref()) {
            (false, _) => None,
            (true, Some(tls)) => {
                match tls.accept(now.saturating_add(tls.handshake_timeout_ms())) {
                    // Deliberate allocation: a TLS connection's record layer
                    // lives in its spill for the connection's life.
                    Ok(t) => Some(Box::new(Spill {
                        tls: Some(Box::new(t)),
                        ..Spill::default()
                    })),
                    Err(e) => {
                        warn!(error = %e, "TLS connection refused");
                        shard.metrics.closed(CloseReason::Error);
                        continue;
                    }
                }
            }
            // Not reached: the server starts a TLS listener only with a
            // TLS configuration. Refused rather than served in clear.
            (true, None) => {
                shard.metrics.closed(CloseReason::Error);
                continue;
            }
        };
        let generation = shard.next_gen();
        let conn = Conn {
            generation,
            fd,
            paused: false,
            touched: false,
            backlogged: false,
            session: Session::new(&shard.cfg, now, u64::from(generation) ^ now),
            ident: None,
            spill,
            transport,
            timer_at: u64::MAX,
            closing: None,
            io: 0,
            quiet: false,
        };
        let mut conns = shard.conns.borrow_mut();
        let key = conns.insert(conn) as u32;
        if shard.register(key, &mut conns[key as usize]).is_err() {
            conns.remove(key as usize);
            shard.metrics.closed(CloseReason::Error);
            continue;
        }
        shard.arm(key, &mut conns[key as usize]);
    }
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Its source IP is over `limits.connections_per_ip_*`: the exact wait.
    RateLimited,
    /// The shard holds `shards.connections_max` connections, or is draining:
    /// a wait drawn from the `[limits]` kick window.
    Overloaded,
}

/// Tells a connection refused at accept why, best effort (one non-blocking
/// send, which a fresh socket takes), and closes it: a TCP client gets
/// `Error{RATE_LIMITED}` or `Error{OVERLOADED}` with `retry_after_ms`
/// (request id 0: about the connection), a WebSocket client an HTTP 429 or
/// 503 with `Retry-After` (seconds, rounded up). A TLS listener's client is
/// closed without a word: nothing can be said to it before a handshake.
/// Nothing else is kept for it.
fn refuse(
    stream: monoio::net::TcpStream,
    transport: Transport,
    secure: bool,
    why: Refusal,
    retry_after_ms: u32,
) {
    // SAFETY: `into_raw_fd` hands over sole ownership of the descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
    if secure {
        return;
    }
    let (code, reason, status) = match why {
        Refusal::RateLimited => (
            pb::ErrorCode::RateLimited,
            "too many new connections from this address",
            "429 Too Many Requests",
        ),
        Refusal::Overloaded => (
            pb::ErrorCode::Overloaded,
            "the server holds all the connections it can; reconnect later",
            "503 Service Unavailable",
        ),
    };
    // Deliberate allocation: one short answer, freed before the next accept.
    let mut out = Vec::with_capacity(128);
    if transport == Transport::Tcp {
        let frame = pb::Frame {
            request_id: 0,
            body: Some(Body::Error(pb::Error {
                code: code as i32,
                reason: reason.into(),
                retry_after_ms,
            })),
        };
        codec::encode_frame(&frame, &mut out);
    } else {
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status}\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                retry_after_ms.div_ceil(1000)
            )
            .as_bytes(),
        );
    }
    let _ = send_nonblocking(fd.as_raw_fd(), &out);
}
