//! TLS for the client listeners (`listen.tls`, `listen.wss`): the server
//! configuration built from the `[tls]` PEM files and swapped on SIGHUP
//! ([`TlsServer`]), and one connection's record layer ([`TlsConn`]), driven
//! by its shard over the shard's shared buffers.
//!
//! The record layer is rustls' *unbuffered* API: rustls keeps no buffer of
//! its own per connection. The shard reads ciphertext into its one shared
//! read buffer, [`TlsConn::read`] decrypts it there (application data goes
//! to a second shared buffer, handshake answers to a shared output buffer),
//! and [`TlsConn::encrypt`] seals what the session writes into the shared
//! output buffer. What a connection keeps between reads is rustls' state
//! (keys, sequence numbers) and, only while a record is incomplete, the
//! record's bytes so far (`partial_in`, freed when empty). See
//! docs/security.md, "TLS", for the figures.
//!
//! Kernel TLS (the record layer in the kernel, after the handshake in
//! rustls) would replace [`TlsConn`] once live by the socket's own
//! `TLS_TX`/`TLS_RX` state: rustls'
//! `dangerous_into_kernel_connection` hands over the secrets. It is not
//! used: the kernels this runs on so far have no `tls` ULP.
//!
//! This module never logs or prints key material, and the errors it
//! returns name files, never their contents.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
};

use crate::config::{TlsSettings, TlsVersion};

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// `listen.tls` or `listen.wss` is set but a file is not.
    #[error("[tls] {0} is not set (a TLS listener needs tls.cert_file and tls.key_file)")]
    Missing(&'static str),
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("tls.cert_file {}: {why}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        why: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("tls.key_file {}: {why}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's contents).
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not match the
    /// certificate, or an unsupported key type).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS server configuration of the client listeners, shared by every
/// shard: a new handshake reads the current one (lock-free), and
/// [`TlsServer::reload`] swaps in a new one built from the files, which
/// connections accepted from then on use; live connections keep theirs.
#[derive(Debug)]
pub struct TlsServer {
    current: ArcSwap<ServerConfig>,
    settings: TlsSettings,
}

impl TlsServer {
    /// Reads the certificate chain and key named by `settings`.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, TlsConfigError> {
        let config = build(settings)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(config),
            settings: settings.clone(),
        }))
    }

    /// Reads the files again and, if they make a valid configuration,
    /// serves it to new connections; on error the old one stays.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let config = build(&self.settings)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Starts the server side of a handshake with the current configuration.
    /// `deadline_ms` (shard time) is when an unfinished handshake is closed.
    pub(crate) fn accept(&self, deadline_ms: u64) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: UnbufferedServerConnection::new(self.current.load_full())?,
            partial_in: Vec::new(),
            phase: Phase::Handshaking { deadline_ms },
        })
    }

    /// Milliseconds a handshake may take (`tls.handshake_timeout_ms`).
    pub fn handshake_timeout_ms(&self) -> u64 {
        self.settings.handshake_timeout_ms
    }
}

/// The rustls configuration of `settings`: its certificate chain (leaf
/// first) and key, TLS 1.3 (and 1.2 unless `min_version` is 1.3), no client
/// certificates, no session resumption (no ticket or cache state shared
/// between shards; a reconnect is a full handshake).
fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsConfigError> {
    let cert_path = settings
        .cert_file
        .as_deref()
        .ok_or(TlsConfigError::Missing("cert_file"))?;
    let key_path = settings
        .key_file
        .as_deref()
        .ok_or(TlsConfigError::Missing("key_file"))?;
    let certs = read_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsConfigError::Key {
        path: key_path.to_owned(),
        why: pem_reason(&e, "PRIVATE KEY"),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let err = |why: String| TlsConfigError::Cert {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(&e, "CERTIFICATE")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(&e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(err("no PEM CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// A PEM error in words, without any of the file's contents.
fn pem_reason(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => format!("no PEM {what} in the file"),
        _ => "not valid PEM".into(),
    }
}

/// Why a connection's TLS layer failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol (a bad record, an old version, no common
    /// cipher suite, plaintext where a record was expected...).
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    /// rustls would not encrypt (the sequence numbers ran out).
    #[error("tls: encrypter exhausted")]
    Exhausted,
    /// Application data before the handshake finished.
    #[error("tls: handshake not complete")]
    NotLive,
}

/// Where a connection's handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshake records are exchanged; the session's frames wait (nothing
    /// can be said to the peer yet). Closed at `deadline_ms` (shard time).
    Handshaking {
        /// When an unfinished handshake is closed.
        deadline_ms: u64,
    },
    /// Application data flows both ways.
    Live,
}

/// One connection's TLS record layer (rustls' unbuffered server), driven by
/// its shard with the shard's buffers.
pub(crate) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Received bytes not yet taken by rustls: an incomplete record (or
    /// handshake message). Empty, and unallocated, between whole records.
    partial_in: Vec<u8>,
    phase: Phase,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("phase", &self.phase)
            .field("partial_in", &self.partial_in.len())
            .finish_non_exhaustive()
    }
}

/// What one [`TlsConn::read`] gave besides the bytes it appended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The handshake completed during this read.
    pub(crate) went_live: bool,
    /// The peer sent close_notify: nothing more will come.
    pub(crate) peer_closed: bool,
}

/// Rounds of [`UnbufferedStatus`] handled for one read: far more than a
/// read of the shard's buffer holds records (each round takes at least a
/// record or emits something), so reaching it means rustls stopped making
/// progress, and the connection is closed rather than spun on.
const ROUNDS_PER_READ_MAX: usize = 1 << 16;

/// Bytes first tried for one handshake record's encoding; a larger one is
/// retried with the size rustls asks for.
const ENCODE_BYTES_FIRST: usize = 4096;

impl TlsConn {
    /// When an unfinished handshake is closed (shard time), if it is.
    pub(crate) fn handshake_deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Handshaking { deadline_ms } => Some(deadline_ms),
            Phase::Live => None,
        }
    }

    /// The handshake is done: application data may be written.
    pub(crate) fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Takes received ciphertext (`incoming`, decrypted in place where it
    /// lies): application data is appended to `plain`, TLS records to send
    /// (handshake answers, alerts) to `out`, in the order they must go.
    /// An incomplete record is kept for the next read. On error `out` may
    /// hold an alert to send before closing.
    pub(crate) fn read(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Received, TlsError> {
        let was_live = self.is_live();
        let mut received = Received::default();
        let result = if self.partial_in.is_empty() {
            let used = self.process(incoming, plain, out, &mut received);
            if let Ok(used) = used {
                // Deliberate allocation: only an incomplete record is kept.
                self.partial_in.extend_from_slice(&incoming[used..]);
            }
            used
        } else {
            let mut buf = std::mem::take(&mut self.partial_in);
            buf.extend_from_slice(incoming);
            let used = self.process(&mut buf, plain, out, &mut received);
            if let Ok(used) = used {
                buf.drain(..used);
                if !buf.is_empty() {
                    self.partial_in = buf; // keeps the capacity it has
                }
            }
            used
        };
        result?;
        received.went_live = !was_live && self.is_live();
        Ok(received)
    }

    /// Runs rustls over `buf` until it needs more input; returns how many
    /// bytes of `buf` it is done with.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        received: &mut Received,
    ) -> Result<usize, TlsError> {
        let mut used = 0;
        for _ in 0..ROUNDS_PER_READ_MAX {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    used += discard;
                    self.queue_alert(&mut buf[used..], out);
                    return Err(e.into());
                }
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        // Each record's plaintext, copied once into the
                        // shard's shared plaintext buffer.
                        plain.extend_from_slice(record?.payload);
                    }
                    true
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    // Early data is off (max_early_data_size 0); drained
                    // like application data should a peer send it anyway.
                    while let Some(record) = records.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(out, |b| data.encode(b))?;
                    true
                }
                ConnectionState::TransmitTlsData(data) => {
                    // The caller sends `out` after this read, in order.
                    data.done();
                    true
                }
                ConnectionState::WriteTraffic(_) => {
                    self.phase = Phase::Live;
                    false
                }
                ConnectionState::BlockedHandshake => false,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    received.peer_closed = true;
                    false
                }
                _ => return Err(rustls::Error::General("unexpected TLS state".into()).into()),
            };
            used += discard;
            if !more {
                return Ok(used);
            }
        }
        Err(rustls::Error::General("TLS made no progress".into()).into())
    }

    /// After an error, the alert rustls queued (if any), encoded into `out`.
    /// One call only: rustls hands out a queued record before it reads
    /// input again, and reading the bad input again would fail again (and
    /// queue a second fatal alert).
    fn queue_alert(&mut self, rest: &mut [u8], out: &mut Vec<u8>) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
            let _ = encode(out, |b| data.encode(b));
        }
    }

    /// Encrypts `plain` (the session's frames, or raw WebSocket bytes) and
    /// appends the records to `out`, after any TLS records rustls has to
    /// send first. Only once live.
    pub(crate) fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.is_live() {
            return Err(TlsError::NotLive);
        }
        // rustls is given the kept incoming bytes, not an empty slice: its
        // handshake-message reassembly points into them. They hold no whole
        // record (every read runs rustls until it needs more), so no
        // application data is found here.
        for _ in 0..ROUNDS_PER_READ_MAX {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial_in);
            let done = match state? {
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(out, |b| data.encode(b))?;
                    false
                }
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    false
                }
                ConnectionState::WriteTraffic(mut w) => {
                    let start = out.len();
                    // Records add a header, a tag and a content byte each.
                    let mut room = plain.len() + plain.len() / 1024 + 64;
                    loop {
                        out.resize(start + room, 0);
                        match w.encrypt(plain, &mut out[start..]) {
                            Ok(n) => {
                                out.truncate(start + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(e)) if e.required_size > room => {
                                room = e.required_size;
                            }
                            Err(_) => {
                                out.truncate(start);
                                return Err(TlsError::Exhausted);
                            }
                        }
                    }
                    true
                }
                // A peer's close_notify or data arrived meanwhile: not
                // expected here (see above); the connection is done.
                _ => return Err(rustls::Error::General("unexpected TLS state".into()).into()),
            };
            if discard > 0 {
                self.partial_in.drain(..discard);
            }
            if done {
                return Ok(());
            }
        }
        Err(rustls::Error::General("TLS made no progress".into()).into())
    }
}

/// Appends one handshake record's encoding to `out`, growing it to the size
/// rustls asks for.
fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = ENCODE_BYTES_FIRST;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) if e.required_size > room => {
                room = e.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(e.to_string()).into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::config::TlsSettings;

    /// A server for a fresh self-signed `localhost` certificate, and a
    /// rustls client that trusts it.
    fn pair(dir: &Path) -> (Arc<TlsServer>, rustls::ClientConnection) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, signing_key.serialize_pem()).unwrap();
        let server = TlsServer::load(&TlsSettings {
            cert_file: Some(c),
            key_file: Some(k),
            ..TlsSettings::default()
        })
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        (server, client)
    }

    /// The client's pending TLS bytes.
    fn client_out(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The handshake and application data survive arriving one byte at a
    /// time (every record, and the handshake messages joined across them,
    /// incomplete at every read but the last): the server keeps only the
    /// incomplete bytes between reads, in a buffer freed once a read ends
    /// on a record boundary, and the plaintext comes out whole, in order.
    /// The server's answer, sealed by `encrypt`, reads back at the client.
    #[test]
    fn records_split_into_single_bytes_are_reassembled() {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut client) = pair(dir.path());
        let mut conn = server.accept(u64::MAX).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let mut rounds = 0;
        while client.is_handshaking() {
            rounds += 1;
            assert!(rounds < 10, "the handshake does not finish");
            for b in client_out(&mut client) {
                conn.read(&mut [b], &mut plain, &mut out).unwrap();
            }
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            out.clear();
        }
        client
            .writer()
            .write_all(b"hello, one byte at a time")
            .unwrap();
        for b in client_out(&mut client) {
            conn.read(&mut [b], &mut plain, &mut out).unwrap();
        }
        assert!(conn.is_live());
        assert_eq!(plain, b"hello, one byte at a time");
        assert_eq!(
            conn.partial_in.capacity(),
            0,
            "a whole record keeps nothing"
        );

        out.clear();
        conn.encrypt(b"welcome", &mut out).unwrap();
        client.read_tls(&mut &out[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut answer = [0u8; 7];
        client.reader().read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"welcome");
    }

    /// Garbage where a ClientHello should be is a typed error with the
    /// alert to send, not a panic; encrypting before the handshake is
    /// refused.
    #[test]
    fn garbage_is_an_error_with_an_alert() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = pair(dir.path());
        let mut conn = server.accept(0).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        assert!(matches!(
            conn.encrypt(b"x", &mut out),
            Err(TlsError::NotLive)
        ));
        let mut garbage = *b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let err = conn.read(&mut garbage, &mut plain, &mut out);
        assert!(matches!(err, Err(TlsError::Protocol(_))), "{err:?}");
        assert_eq!(out.first(), Some(&0x15), "an alert record: {out:?}");
        assert!(plain.is_empty());
    }
}
