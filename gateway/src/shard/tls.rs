//! A TLS connection on its shard: one read of ciphertext (already in the
//! shard's shared read buffer) goes through the connection's record layer
//! ([`crate::tls::TlsConn`]), its handshake answers go out at once, and its
//! plaintext (in the shard's shared `tls_plain` buffer) is fed to the
//! session exactly like a plain connection's bytes; and the handshake
//! deadline. Writes are sealed in `sock.rs`.

use std::rc::Rc;

use tracing::debug;

use super::{Conn, Shard, ingest::Read};
use crate::metrics::CloseReason;

/// Reads of a TLS connection: `incoming` is what one `recv` put in the
/// shard's read buffer (decrypted there, in place).
pub(super) fn read_tls(shard: &Rc<Shard>, key: u32, incoming: &mut [u8]) -> Read {
    let mut plain = shard.tls_plain.borrow_mut();
    plain.clear();
    let mut conns = shard.conns.borrow_mut();
    let c = &mut conns[key as usize];
    let mut out = shard.tls_out.borrow_mut();
    out.clear();
    let Some(tls) = c.tls_mut() else {
        return Read::Eof(CloseReason::Error); // only TLS connections come here
    };
    let result = tls.read(incoming, &mut plain, &mut out);
    // Handshake records (or the alert of a failure) first, in order.
    if !out.is_empty() {
        shard.send_wire(key, c, &out);
    }
    drop(out);
    let received = match result {
        Ok(r) => r,
        Err(e) => {
            // Not a TLS peer (plaintext to the TLS port), an old version,
            // a bad record: closed, after the alert if rustls had one.
            debug!(error = %e, "TLS connection closed");
            return Read::Eof(CloseReason::BadInput);
        }
    };
    if received.went_live {
        // What the session queued during the handshake can go now.
        shard.flush(key, c);
    }
    if plain.is_empty() {
        if received.peer_closed {
            return Read::Eof(c.closing.unwrap_or(CloseReason::Peer));
        }
        return Read::Ingested(super::ingest::Ingest::Continue);
    }
    // From here on as a plain connection's bytes: a partial frame first.
    let mut partial = c.take_partial();
    drop(conns);
    if partial.is_empty() {
        return Read::Ingested(shard.ingest(key, &plain));
    }
    partial.extend_from_slice(&plain);
    Read::Ingested(shard.ingest(key, &partial))
}

/// The connection is still in its TLS handshake at its deadline.
pub(super) fn handshake_expired(conn: &Conn, now_ms: u64) -> bool {
    conn.spill
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .and_then(|t| t.handshake_deadline_ms())
        .is_some_and(|at| now_ms >= at)
}
