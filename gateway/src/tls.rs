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
//! Once a TLS 1.3 handshake is done, rustls' connection is dropped and the
//! record layer continues in [`records`] (what kernel TLS would do, in user
//! space): rustls keeps ~3.8 KB per connection for its life (its common
//! state, two AEAD keys with their tables, the key schedule), the records
//! layer 216 B. It takes over the keys rustls extracts
//! (`dangerous_into_kernel_connection`) and the traffic secrets rustls logs
//! to [`CaptureSecrets`] (kept for `KeyUpdate`s). TLS 1.2 connections stay
//! with rustls for their life.
//!
//! Kernel TLS (the record layer in the kernel, `TLS_TX`/`TLS_RX`) could take
//! the same secrets; it is not used: the kernels this runs on so far have no
//! `tls` ULP.
//!
//! This module never logs or prints key material, and the errors it
//! returns name files, never their contents.

mod records;

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering::Relaxed},
    },
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
    /// The served leaf certificate's notAfter, Unix seconds; 0 when it could
    /// not be read (`tern_tls_cert_expiry_timestamp_seconds`).
    expiry: Arc<AtomicI64>,
}

impl TlsServer {
    /// Reads the certificate chain and key named by `settings`.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, TlsConfigError> {
        Self::load_reporting(settings, Arc::new(AtomicI64::new(0)))
    }

    /// As [`TlsServer::load`], and keeps `expiry` at the served leaf
    /// certificate's notAfter (Unix seconds), at load and at each reload:
    /// the gauge `/metrics` shows.
    pub fn load_reporting(
        settings: &TlsSettings,
        expiry: Arc<AtomicI64>,
    ) -> Result<Arc<Self>, TlsConfigError> {
        let (config, not_after) = build(settings)?;
        expiry.store(not_after.unwrap_or(0), Relaxed);
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(config),
            settings: settings.clone(),
            expiry,
        }))
    }

    /// Reads the files again and, if they make a valid configuration,
    /// serves it to new connections; on error the old one stays.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let (config, not_after) = build(&self.settings)?;
        self.current.store(Arc::new(config));
        self.expiry.store(not_after.unwrap_or(0), Relaxed);
        Ok(())
    }

    /// Starts the server side of a handshake with the current configuration.
    /// `deadline_ms` (shard time) is when an unfinished handshake is closed.
    pub(crate) fn accept(&self, deadline_ms: u64) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            layer: Layer::Rustls {
                conn: Box::new(UnbufferedServerConnection::new(self.current.load_full())?),
                phase: Phase::Handshaking { deadline_ms },
                secrets: None,
            },
            partial_in: Vec::new(),
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
/// between shards; a reconnect is a full handshake), and the TLS 1.3
/// traffic secrets handed to the connection's own record layer (secret
/// extraction on, [`CaptureSecrets`] as the key log: nothing is written
/// anywhere). Also the leaf's notAfter (Unix seconds), when its DER can
/// be read.
fn build(settings: &TlsSettings) -> Result<(ServerConfig, Option<i64>), TlsConfigError> {
    let cert_path = settings
        .cert_file
        .as_deref()
        .ok_or(TlsConfigError::Missing("cert_file"))?;
    let key_path = settings
        .key_file
        .as_deref()
        .ok_or(TlsConfigError::Missing("key_file"))?;
    let certs = read_certs(cert_path)?;
    let not_after = not_after_unix(&certs[0]);
    if not_after.is_none() {
        tracing::warn!(file = %cert_path.display(), "tls: the certificate's expiry could not be read; tern_tls_cert_expiry_timestamp_seconds is left out");
    }
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
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(CaptureSecrets);
    Ok((config, not_after))
}

/// The notAfter of an X.509 certificate (RFC 5280 4.1.2.5), Unix seconds,
/// read from its DER: `Certificate → tbsCertificate → [version], serial,
/// signature, issuer, validity → notAfter`, a UTCTime (`YYMMDDHHMMSSZ`,
/// years 1950..=2049) or a GeneralizedTime (`YYYYMMDDHHMMSSZ`). Only for the
/// expiry gauge: rustls has already accepted the chain, so `None` (a form
/// this does not read) only leaves the gauge out. Every length is checked
/// against what is left of the input; nothing is allocated.
fn not_after_unix(der: &[u8]) -> Option<i64> {
    /// One DER element: (tag, contents, the rest after it).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
            rest = &rest[n..];
            len
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, absent in v1 certificates.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, time.len()) {
        (0x17, 13) => {
            let yy = digits(&time[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &time[2..])
        }
        (0x18, 15) => (digits(&time[..4])?, &time[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let [month, day, hour, min, sec] =
        [0, 2, 4, 6, 8].map(|i| digits(&rest[i..i + 2]).unwrap_or(-1));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hour)
        || !(0..=59).contains(&min)
        || !(0..=60).contains(&sec)
    {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3_600 + min * 60 + sec)
}

/// The TLS 1.3 application traffic secrets of one handshake, as rustls
/// logs them.
#[derive(Debug, Default)]
struct Captured {
    client: Option<records::Secret>,
    server: Option<records::Secret>,
}

thread_local! {
    /// What [`CaptureSecrets`] was given during the current rustls call on
    /// this thread. A shard drives one connection's rustls at a time on its
    /// thread, and takes this right after each call, so what is here
    /// belongs to the connection just driven.
    static CAPTURED: RefCell<Captured> = RefCell::default();
}

/// A `KeyLog` that writes nothing: it keeps the two application traffic
/// secrets of a TLS 1.3 handshake for the connection's record layer
/// ([`records`]), which needs them to follow `KeyUpdate`s. Secrets of no
/// other kind are asked for.
#[derive(Debug)]
struct CaptureSecrets;

impl rustls::KeyLog for CaptureSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with_borrow_mut(|c| match label {
            "CLIENT_TRAFFIC_SECRET_0" => c.client = records::Secret::new(secret),
            "SERVER_TRAFFIC_SECRET_0" => c.server = records::Secret::new(secret),
            _ => {}
        });
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

/// Takes what [`CaptureSecrets`] kept during the last rustls call on this
/// thread (emptying it, whoever it was for).
fn take_captured() -> Captured {
    CAPTURED.with_borrow_mut(std::mem::take)
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
    /// The record layer after the handshake refused a record.
    #[error("tls: {0}")]
    Record(#[from] records::RecordError),
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

/// One connection's TLS record layer, driven by its shard with the shard's
/// buffers: rustls' unbuffered server for the handshake (and for a TLS 1.2
/// connection's life), then, on TLS 1.3, [`records::Records`].
pub(crate) struct TlsConn {
    layer: Layer,
    /// Received bytes not yet taken: an incomplete record (or handshake
    /// message). Empty, and unallocated, between whole records.
    partial_in: Vec<u8>,
}

/// Who runs a connection's record layer.
enum Layer {
    /// rustls: the handshake, and a TLS 1.2 connection for its life.
    Rustls {
        conn: Box<UnbufferedServerConnection>,
        phase: Phase,
        /// The traffic secrets rustls logged (TLS 1.3), until the switch.
        secrets: Option<Box<Captured>>,
    },
    /// A TLS 1.3 connection after its handshake: rustls dropped.
    Records(Box<records::Records>),
    /// The switch failed; the connection is being closed.
    Failed,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layer = match &self.layer {
            Layer::Rustls { phase, .. } => format!("rustls {phase:?}"),
            Layer::Records(_) => "records".into(),
            Layer::Failed => "failed".into(),
        };
        f.debug_struct("TlsConn")
            .field("layer", &layer)
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
        match self.layer {
            Layer::Rustls {
                phase: Phase::Handshaking { deadline_ms },
                ..
            } => Some(deadline_ms),
            _ => None,
        }
    }

    /// The handshake is done: application data may be written.
    pub(crate) fn is_live(&self) -> bool {
        match self.layer {
            Layer::Rustls { phase, .. } => phase == Phase::Live,
            Layer::Records(_) => true,
            Layer::Failed => false,
        }
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
        self.switch()?;
        Ok(received)
    }

    /// Runs the record layer over `buf` until it needs more input; returns
    /// how many bytes of `buf` it is done with.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        received: &mut Received,
    ) -> Result<usize, TlsError> {
        match &mut self.layer {
            Layer::Rustls {
                conn,
                phase,
                secrets,
            } => {
                let used = drive(conn, phase, buf, plain, out, received);
                let got = take_captured();
                if got.client.is_some() || got.server.is_some() {
                    let kept = secrets.get_or_insert_with(Box::default);
                    kept.client = got.client.or(kept.client.take());
                    kept.server = got.server.or(kept.server.take());
                }
                used
            }
            Layer::Records(records) => {
                let (used, closed) = records.open(buf, plain, out)?;
                received.peer_closed |= closed;
                Ok(used)
            }
            Layer::Failed => Err(TlsError::NotLive),
        }
    }

    /// A TLS 1.3 connection whose handshake is done moves from rustls to
    /// its own record layer; others stay as they are.
    fn switch(&mut self) -> Result<(), TlsError> {
        let Layer::Rustls {
            phase: Phase::Live,
            secrets: Some(s),
            ..
        } = &self.layer
        else {
            return Ok(());
        };
        if s.client.is_none() || s.server.is_none() {
            return Ok(()); // not TLS 1.3: rustls stays
        }
        let Layer::Rustls {
            conn,
            secrets: Some(s),
            ..
        } = std::mem::replace(&mut self.layer, Layer::Failed)
        else {
            return Ok(()); // not reached: matched above
        };
        let Captured {
            client: Some(client),
            server: Some(server),
        } = *s
        else {
            return Ok(()); // not reached: checked above
        };
        let (extracted, _rest) = conn.dangerous_into_kernel_connection()?;
        let records = records::Records::new(client, server, &extracted)?;
        self.layer = Layer::Records(Box::new(records));
        Ok(())
    }
}

/// Runs rustls over `buf` until it needs more input; returns how many bytes
/// of `buf` it is done with.
fn drive(
    conn: &mut UnbufferedServerConnection,
    phase: &mut Phase,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    received: &mut Received,
) -> Result<usize, TlsError> {
    let mut used = 0;
    for _ in 0..ROUNDS_PER_READ_MAX {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[used..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                used += discard;
                queue_alert(conn, &mut buf[used..], out);
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
                *phase = Phase::Live;
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
/// One call only: rustls hands out a queued record before it reads input
/// again, and reading the bad input again would fail again (and queue a
/// second fatal alert).
fn queue_alert(conn: &mut UnbufferedServerConnection, rest: &mut [u8], out: &mut Vec<u8>) {
    let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
        let _ = encode(out, |b| data.encode(b));
    }
}

impl TlsConn {
    /// Encrypts `plain` (the session's frames, or raw WebSocket bytes) and
    /// appends the records to `out`, after any TLS records rustls has to
    /// send first. Only once live.
    pub(crate) fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.is_live() {
            return Err(TlsError::NotLive);
        }
        let conn = match &mut self.layer {
            Layer::Records(records) => return Ok(records.seal(plain, out)?),
            Layer::Rustls { conn, .. } => conn,
            Layer::Failed => return Err(TlsError::NotLive),
        };
        // rustls is given the kept incoming bytes, not an empty slice: its
        // handshake-message reassembly points into them. They hold no whole
        // record (every read runs rustls until it needs more), so no
        // application data is found here.
        for _ in 0..ROUNDS_PER_READ_MAX {
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut self.partial_in);
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

    /// A client of `server`'s certificate limited to `versions`.
    fn client_with(
        dir: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConnection {
        let cert = std::fs::read(dir.join("c.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&cert).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap()
    }

    /// Runs the handshake between `client` and a new connection of
    /// `server`, whole flights at a time.
    fn handshake(server: &TlsServer, client: &mut rustls::ClientConnection) -> TlsConn {
        let mut conn = server.accept(u64::MAX).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            if !client.is_handshaking() && conn.is_live() {
                return conn;
            }
            let mut flight = client_out(client);
            conn.read(&mut flight, &mut plain, &mut out).unwrap();
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            out.clear();
        }
        panic!("the handshake does not finish")
    }

    /// What the client reads of `records`.
    fn client_reads(client: &mut rustls::ClientConnection, records: &[u8]) -> Vec<u8> {
        let (mut rest, mut got) = (records, Vec::new());
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
            // Taken as it comes: the client buffers little plaintext.
            let _ = client.reader().read_to_end(&mut got);
        }
        got
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
        assert!(matches!(conn.layer, Layer::Records(_)), "{conn:?}");
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

    /// The expiry gauge reads a certificate's notAfter in both encodings
    /// (UTCTime up to 2049, GeneralizedTime from 2050), compared with the
    /// date rcgen wrote; a reload of the files moves it; anything that is
    /// not a certificate's DER, cut anywhere, is None, never a panic.
    #[test]
    fn not_after_is_read_from_the_certificate() {
        let cert = |y: i32, m: u8, d: u8| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().unwrap();
            (params.self_signed(&key).unwrap(), key)
        };
        // 2031-05-17 and 2051-02-28, 00:00:00 UTC.
        for ((y, m, d), unix) in [
            ((2031, 5, 17), 1_936_742_400),
            ((2051, 2, 28), 2_561_155_200),
        ] {
            let (c, _) = cert(y, m, d);
            assert_eq!(not_after_unix(c.der()), Some(unix), "{y}-{m}-{d}");
            let der: &[u8] = c.der();
            for cut in 0..der.len() {
                let _ = not_after_unix(&der[..cut]);
            }
        }
        assert_eq!(not_after_unix(b""), None);
        assert_eq!(not_after_unix(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);

        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let write = |(cert, key): (rcgen::Certificate, rcgen::KeyPair)| {
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
        };
        write(cert(2031, 5, 17));
        let gauge = Arc::new(AtomicI64::new(0));
        let server = TlsServer::load_reporting(
            &TlsSettings {
                cert_file: Some(c.clone()),
                key_file: Some(k.clone()),
                ..TlsSettings::default()
            },
            gauge.clone(),
        )
        .unwrap();
        assert_eq!(gauge.load(Relaxed), 1_936_742_400);
        write(cert(2051, 2, 28));
        server.reload().unwrap();
        assert_eq!(gauge.load(Relaxed), 2_561_155_200);
    }

    /// A TLS 1.3 connection leaves rustls after its handshake and its own
    /// record layer talks to a real rustls client: data both ways (one
    /// write larger than a record, split into several), then the client's
    /// `KeyUpdate` asking for ours (`refresh_traffic_keys`): the server
    /// reads the client's records under its new key and answers with its
    /// own `KeyUpdate`, after which its records open at the client under
    /// the next key; then close_notify ends the reading.
    #[test]
    fn tls13_runs_on_its_own_record_layer_through_key_updates() {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut client) = pair(dir.path());
        let mut conn = handshake(&server, &mut client);
        assert!(matches!(conn.layer, Layer::Records(_)), "{conn:?}");
        let (mut plain, mut out) = (Vec::new(), Vec::new());

        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        client.writer().write_all(&big).unwrap();
        conn.read(&mut client_out(&mut client), &mut plain, &mut out)
            .unwrap();
        assert_eq!(plain, big);
        conn.encrypt(&big, &mut out).unwrap();
        assert_eq!(out.len(), big.len() + 3 * 22, "three records");
        assert_eq!(client_reads(&mut client, &out), big);

        for round in 0..3u8 {
            client.refresh_traffic_keys().unwrap();
            client.writer().write_all(&[round; 10]).unwrap();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            conn.read(&mut client_out(&mut client), &mut plain, &mut out)
                .unwrap();
            assert_eq!(plain, [round; 10], "read under the client's next key");
            assert!(!out.is_empty(), "our KeyUpdate answers the request");
            conn.encrypt(b"after the update", &mut out).unwrap();
            assert_eq!(client_reads(&mut client, &out), b"after the update");
        }

        client.send_close_notify();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let r = conn
            .read(&mut client_out(&mut client), &mut plain, &mut out)
            .unwrap();
        assert!(r.peer_closed);
    }

    /// A TLS 1.2 connection stays with rustls for its life (its records
    /// are not the ones the own layer speaks), and works.
    #[test]
    fn tls12_stays_with_rustls() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = pair(dir.path());
        let mut client = client_with(dir.path(), &[&rustls::version::TLS12]);
        let mut conn = handshake(&server, &mut client);
        assert!(matches!(conn.layer, Layer::Rustls { .. }), "{conn:?}");
        client.writer().write_all(b"twelve").unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        conn.read(&mut client_out(&mut client), &mut plain, &mut out)
            .unwrap();
        assert_eq!(plain, b"twelve");
        conn.encrypt(b"ok", &mut out).unwrap();
        assert_eq!(client_reads(&mut client, &out), b"ok");
    }

    /// On the own record layer a record with a flipped byte, a plaintext
    /// record and a length over the limit are typed errors, not panics, and
    /// no plaintext comes out of them.
    #[test]
    fn bad_records_after_the_handshake_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (server, mut client) = pair(dir.path());
        let mut conn = handshake(&server, &mut client);
        client.writer().write_all(b"secret").unwrap();
        let mut record = client_out(&mut client);
        let last = record.len() - 1;
        record[last] ^= 1;
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let err = conn.read(&mut record, &mut plain, &mut out);
        assert!(
            matches!(err, Err(TlsError::Record(records::RecordError::Open))),
            "{err:?}"
        );
        assert!(plain.is_empty());

        let mut conn = handshake(
            &server,
            &mut client_with(dir.path(), &[&rustls::version::TLS13]),
        );
        let mut clear = *b"\x16\x03\x03\x00\x01\x01";
        let err = conn.read(&mut clear, &mut plain, &mut out);
        assert!(matches!(err, Err(TlsError::Record(_))), "{err:?}");

        let mut long = [0x17, 3, 3, 0xff, 0xff, 0];
        let mut conn = handshake(
            &server,
            &mut client_with(dir.path(), &[&rustls::version::TLS13]),
        );
        let err = conn.read(&mut long, &mut plain, &mut out);
        assert!(
            matches!(err, Err(TlsError::Record(records::RecordError::Overflow))),
            "{err:?}"
        );
        assert!(plain.is_empty());
    }

    /// What a live TLS connection keeps, by type size (heap blocks each):
    /// rustls' connection (with its common state inline) against the own
    /// record layer, and ring's AES-GCM key that rustls keeps per direction
    /// (the own layer keeps 32 raw bytes and sets the key up per call).
    /// The figures are printed for docs/security.md; the assertion holds
    /// the point of the switch.
    #[test]
    fn sizes_of_a_live_connection() {
        let rustls_conn = std::mem::size_of::<UnbufferedServerConnection>();
        let records = std::mem::size_of::<records::Records>();
        let key = std::mem::size_of::<ring::aead::LessSafeKey>();
        let conn = std::mem::size_of::<TlsConn>();
        eprintln!(
            "rustls UnbufferedServerConnection {rustls_conn} B, ring LessSafeKey {key} B; \
             own Records {records} B, TlsConn {conn} B"
        );
        assert!(records * 2 < rustls_conn, "{records} B vs {rustls_conn} B");
        assert!(conn <= 64, "{conn} B");
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
