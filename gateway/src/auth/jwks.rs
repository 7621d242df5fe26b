//! Keys of an existing issuer from a JWKS (a file or an `http://` URL),
//! chosen by a token's `kid`.
//!
//! The shards read an immutable snapshot ([`ArcSwap`]: one atomic load per
//! verification, never a lock, never I/O). One small thread per process
//! (`tern-jwks`) reads the JWKS again every `jwks_refresh_secs`, and sooner
//! when a shard meets an unknown `kid` (it sets a flag and unparks the
//! thread; it does not wait), at most once per `jwks_refresh_min_secs`. A
//! key removed from the JWKS is gone at the next read; a read that fails
//! keeps the last good snapshot.
//!
//! Each key's algorithm is pinned from the JWK: its `alg` when present,
//! else its type (RSA → RS256, OKP Ed25519 → EdDSA, EC P-256 → ES256).
//! Symmetric (`oct`) keys, encryption keys and other algorithms are
//! skipped: a JWKS publishes public keys.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    thread::Thread,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use tracing::{info, warn};

/// Longest JWKS document read, bytes.
pub const JWKS_BYTES_MAX: u64 = 1 << 20;
/// Most keys kept from one JWKS; the rest are skipped.
pub const JWKS_KEYS_MAX: usize = 64;
/// One fetch of a JWKS URL must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL; https is verified against the roots.
    Url(String, crate::outbound::Roots),
}

/// One usable key: its decoding key and the validation pinned to its
/// algorithm.
pub struct JwkEntry {
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

impl std::fmt::Debug for JwkEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwkEntry")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

/// The keys by `kid`.
pub type KeySet = HashMap<String, JwkEntry>;

/// What the shards and the refresh thread share.
struct JwksShared {
    keys: ArcSwap<KeySet>,
    /// Set by a shard that met an unknown `kid`; cleared by the thread.
    wanted: AtomicBool,
    thread: std::sync::OnceLock<Thread>,
}

/// The JWKS of a [`super::Verifier`]: the snapshot and its refresh thread
/// (which ends when this is dropped).
pub struct Jwks {
    shared: Arc<JwksShared>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("kids", &self.shared.keys.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a JWKS could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Reading the file or fetching the URL failed.
    #[error("reading the JWKS from {0}: {1}")]
    Read(String, String),
    /// The document is not a JWKS.
    #[error("the JWKS from {0} is not a JSON Web Key Set: {1}")]
    Parse(String, String),
}

impl JwksSource {
    fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Url(u, _) => u.clone(),
        }
    }

    /// Reads the document (bounded by [`JWKS_BYTES_MAX`]).
    fn read(&self) -> Result<String, JwksError> {
        let err = |e: String| JwksError::Read(self.name(), e);
        match self {
            Self::File(path) => {
                use std::io::Read as _;
                let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
                let mut text = String::new();
                file.take(JWKS_BYTES_MAX + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| err(e.to_string()))?;
                if text.len() as u64 > JWKS_BYTES_MAX {
                    return Err(err(format!("longer than {JWKS_BYTES_MAX} bytes")));
                }
                Ok(text)
            }
            Self::Url(url, roots) => {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(FETCH_TIMEOUT))
                    .tls_config(roots.ureq_tls())
                    .build()
                    .into();
                let mut answer = agent.get(url).call().map_err(|e| err(e.to_string()))?;
                answer
                    .body_mut()
                    .with_config()
                    .limit(JWKS_BYTES_MAX)
                    .read_to_string()
                    .map_err(|e| err(e.to_string()))
            }
        }
    }
}

/// The usable keys of a JWKS document, by `kid`; `base` carries the
/// leeway and the `iss`/`aud` checks every key shares.
pub fn parse(source: &str, text: &str, base: &Validation) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc =
        serde_json::from_str(text).map_err(|e| JwksError::Parse(source.into(), e.to_string()))?;
    let mut out = KeySet::new();
    for value in doc.keys {
        if out.len() == JWKS_KEYS_MAX {
            warn!(
                source,
                "JWKS has more than {JWKS_KEYS_MAX} keys; the rest are skipped"
            );
            break;
        }
        // One key Tern cannot use does not spoil the others.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let Some(alg) = pinned_algorithm(&jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let mut validation = base.clone();
        validation.algorithms = vec![alg];
        out.insert(kid, JwkEntry { key, validation });
    }
    Ok(out)
}

/// The one algorithm a JWK may verify, or `None` when Tern does not use it.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(_) => None,
    }
}

impl Jwks {
    /// Reads the JWKS once and starts the refresh thread. A file that cannot
    /// be read is an error; a URL that cannot be fetched yet starts empty
    /// (every `kid` unknown) and is tried again every `min_interval`.
    pub fn start(
        source: JwksSource,
        base: Validation,
        interval: Duration,
        min_interval: Duration,
    ) -> Result<Self, JwksError> {
        let first = source
            .read()
            .and_then(|text| parse(&source.name(), &text, &base));
        let (keys, retry) = match (first, &source) {
            (Ok(keys), _) => (keys, false),
            (Err(e), JwksSource::File(_)) => return Err(e),
            (Err(e), JwksSource::Url(..)) => {
                warn!(error = %e, "JWKS not available yet; every kid is unknown until it is");
                (KeySet::new(), true)
            }
        };
        info!(source = %source.name(), keys = keys.len(), "JWKS loaded");
        let shared = Arc::new(JwksShared {
            keys: ArcSwap::from_pointee(keys),
            wanted: AtomicBool::new(retry),
            thread: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new()
            .name("tern-jwks".into())
            .spawn(move || refresh_loop(&weak, &source, &base, interval, min_interval))
            .map_err(|e| JwksError::Read("the JWKS thread".into(), e.to_string()))?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Self { shared })
    }

    /// The key of `kid` in the current snapshot, if any. An unknown `kid`
    /// asks the refresh thread for a new read (never waits for it).
    pub fn with_key<T>(&self, kid: &str, f: impl FnOnce(&JwkEntry) -> T) -> Option<T> {
        let keys = self.shared.keys.load();
        match keys.get(kid) {
            Some(entry) => Some(f(entry)),
            None => {
                if !self.shared.wanted.swap(true, Ordering::AcqRel) {
                    if let Some(t) = self.shared.thread.get() {
                        t.unpark();
                    }
                }
                None
            }
        }
    }

    /// The `kid`s of the current snapshot.
    pub fn kids(&self) -> Vec<String> {
        self.shared.keys.load().keys().cloned().collect()
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        // The thread holds a `Weak`: woken, it finds it dead and ends.
        if let Some(t) = self.shared.thread.get() {
            t.unpark();
        }
    }
}

fn refresh_loop(
    shared: &Weak<JwksShared>,
    source: &JwksSource,
    base: &Validation,
    interval: Duration,
    min_interval: Duration,
) {
    let mut last_read = Instant::now();
    loop {
        // Sleep until the next periodic read, or until a shard asks.
        let due = last_read + interval;
        loop {
            let Some(s) = shared.upgrade() else { return };
            let now = Instant::now();
            if now >= due {
                break;
            }
            if s.wanted.load(Ordering::Acquire) {
                // Rate limit: at most one asked-for read per `min_interval`.
                let earliest = last_read + min_interval;
                if now >= earliest {
                    break;
                }
                drop(s);
                std::thread::park_timeout(earliest - now);
                continue;
            }
            drop(s);
            std::thread::park_timeout(due - now);
        }
        let Some(s) = shared.upgrade() else { return };
        s.wanted.store(false, Ordering::Release);
        last_read = Instant::now();
        match source
            .read()
            .and_then(|text| parse(&source.name(), &text, base))
        {
            Ok(keys) => {
                info!(source = %source.name(), keys = keys.len(), "JWKS read again");
                s.keys.store(Arc::new(keys));
            }
            Err(e) => warn!(error = %e, "JWKS read failed; the last good keys stay"),
        }
    }
}
