//! A TLS 1.3 connection's record layer once its handshake is done, in user
//! space and without rustls: what kernel TLS would do in the kernel
//! (rustls' own connection state, ~3.8 KB per connection, is dropped after
//! the handshake; what stays is two traffic secrets, keys, IVs and sequence
//! numbers, 216 B).
//!
//! It does what RFC 8446 asks of an established connection and no more:
//! seals application data into records of at most 2^14 bytes (section 5.2,
//! no padding), opens records in place, strips their padding, follows the
//! peer's `KeyUpdate` (and answers one that asks for it), updates its own
//! key before AES-GCM's confidentiality limit (section 5.5), and reads the
//! peer's `close_notify`. Anything else after the handshake (a plaintext
//! record, an unknown content type, another handshake message, a record too
//! long, one that fails to open, a fatal alert) is a [`RecordError`] and
//! the connection is closed.
//!
//! Keys are derived from the traffic secrets with HKDF-Expand-Label
//! (section 7.1) by ring, the provider rustls uses; the derived key and IV
//! are checked against the ones rustls extracts at the switch, so a
//! mistake here cannot go unnoticed. Each key is set up (`LessSafeKey`) per
//! `seal`/`open` call rather than kept: ring's AES-GCM key with its GHASH
//! table is ~0.5 KB, the raw key 32 B. Secrets and keys are wiped when
//! dropped.

use ring::{aead, hkdf};
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// Most plaintext bytes in one record (RFC 8446 section 5.1).
const RECORD_PLAIN_MAX: usize = 1 << 14;
/// Most bytes of a protected record's body: plaintext, content type,
/// padding and tag (RFC 8446 section 5.2: 2^14 + 256).
const RECORD_BODY_MAX: usize = RECORD_PLAIN_MAX + 256;
/// A record header: type, legacy version, length.
const HEADER_BYTES: usize = 5;
/// The AEAD tag of every TLS 1.3 suite.
const TAG_BYTES: usize = 16;
/// Records sealed under one key before it is updated: below AES-GCM's
/// confidentiality limit (2^24.5 records), for every suite alike.
const RECORDS_PER_KEY_MAX: u64 = 1 << 23;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;

/// Why a record could not be sealed or opened; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The peer sent something an established TLS 1.3 connection does not
    /// carry (the detail says what).
    #[error("unexpected record: {0}")]
    Unexpected(&'static str),
    /// A record longer than the protocol allows.
    #[error("record too long")]
    Overflow,
    /// A record failed to open (tampered, or not from this peer's key).
    #[error("record failed to open")]
    Open,
    /// The peer sent a fatal alert (its description code).
    #[error("peer sent alert {0}")]
    Alert(u8),
    /// A sequence number ran out, or a key could not be made (not reached).
    #[error("record layer exhausted")]
    Exhausted,
    /// The secrets rustls logged do not make the keys it extracted.
    #[error("traffic secrets do not match the handshake's keys")]
    Mismatch,
}

/// A TLS 1.3 cipher suite: its AEAD and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Self::Aes256Gcm => hkdf::HKDF_SHA384,
            Self::Aes128Gcm | Self::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    fn hash_bytes(self) -> usize {
        match self {
            Self::Aes256Gcm => 48,
            Self::Aes128Gcm | Self::Chacha20Poly1305 => 32,
        }
    }

    fn key_bytes(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::Chacha20Poly1305 => 32,
        }
    }
}

/// A traffic secret (up to SHA-384's 48 bytes), wiped when dropped.
pub(crate) struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    /// A copy of `secret`, or `None` if it is longer than any TLS 1.3 hash.
    pub(crate) fn new(secret: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; 48];
        bytes.get_mut(..secret.len())?.copy_from_slice(secret);
        Some(Self {
            bytes,
            len: u8::try_from(secret.len()).ok()?,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One direction's keys: its traffic secret, the key and IV made from it,
/// and the sequence number of its next record.
struct Direction {
    secret: Secret,
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Direction {
    fn new(suite: Suite, secret: Secret, seq: u64) -> Self {
        let mut d = Self {
            secret,
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        d.derive(suite);
        d
    }

    /// The key and IV of the current secret (RFC 8446 section 7.3).
    fn derive(&mut self, suite: Suite) {
        let (key, iv) = (&mut self.key[..suite.key_bytes()], &mut self.iv);
        expand_label(suite, self.secret.as_slice(), b"key", key);
        expand_label(suite, self.secret.as_slice(), b"iv", iv);
    }

    /// The next generation of keys (RFC 8446 section 7.2), from record 0.
    fn update(&mut self, suite: Suite) {
        let mut next = [0u8; 48];
        let len = suite.hash_bytes();
        expand_label(
            suite,
            self.secret.as_slice(),
            b"traffic upd",
            &mut next[..len],
        );
        self.secret.bytes = next;
        next.zeroize();
        self.derive(suite);
        self.seq = 0;
    }

    fn key(&self, suite: Suite) -> Result<aead::LessSafeKey, RecordError> {
        let key = aead::UnboundKey::new(suite.aead(), &self.key[..suite.key_bytes()])
            .map_err(|_| RecordError::Exhausted)?;
        Ok(aead::LessSafeKey::new(key))
    }

    /// The rustls-extracted key and IV are the ones this direction made.
    fn matches(&self, suite: Suite, extracted: &ConnectionTrafficSecrets) -> bool {
        let (key, iv) = match extracted {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return false,
        };
        key.as_ref() == &self.key[..suite.key_bytes()] && iv.as_ref() == self.iv
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 section 7.1).
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    // Lengths here are at most 48 and labels at most 11 bytes (constants).
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    // Not reached: `out` is at most 48 bytes, far below 255 hash lengths.
    let okm = prk
        .expand(&info, Len(out.len()))
        .expect("a short HKDF output");
    okm.fill(out).expect("the length asked for");
}

/// An established TLS 1.3 connection's record layer (see the module doc).
pub(crate) struct Records {
    suite: Suite,
    /// What the server sends.
    tx: Direction,
    /// What the client sends.
    rx: Direction,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// The record layer of a finished handshake: the traffic secrets rustls
    /// logged (client's, server's) and the sequence numbers and keys it
    /// extracted; the keys made from the secrets must be the extracted ones.
    pub(crate) fn new(
        client: Secret,
        server: Secret,
        extracted: &rustls::ExtractedSecrets,
    ) -> Result<Self, RecordError> {
        let suite = match &extracted.tx.1 {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Suite::Aes128Gcm,
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Suite::Aes256Gcm,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Suite::Chacha20Poly1305,
            _ => return Err(RecordError::Mismatch),
        };
        if client.as_slice().len() != suite.hash_bytes()
            || server.as_slice().len() != suite.hash_bytes()
        {
            return Err(RecordError::Mismatch);
        }
        let records = Self {
            suite,
            tx: Direction::new(suite, server, extracted.tx.0),
            rx: Direction::new(suite, client, extracted.rx.0),
        };
        if !records.tx.matches(suite, &extracted.tx.1)
            || !records.rx.matches(suite, &extracted.rx.1)
        {
            return Err(RecordError::Mismatch);
        }
        Ok(records)
    }

    /// Seals `plain` as application data records appended to `out`.
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let mut key = self.tx.key(self.suite)?;
        for chunk in plain.chunks(RECORD_PLAIN_MAX) {
            if self.tx.seq >= RECORDS_PER_KEY_MAX {
                key = self.update_tx(&key, out)?;
            }
            self.seal_one(&key, APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Opens the whole records at the start of `buf` (in place): application
    /// data is appended to `plain`, records to send (a `KeyUpdate` the peer
    /// asked for) to `out`. Returns the bytes of `buf` it is done with (an
    /// incomplete record is left) and whether the peer sent close_notify
    /// (nothing after it is read).
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), RecordError> {
        let mut key = self.rx.key(self.suite)?;
        let mut used = 0;
        loop {
            let rest = &mut buf[used..];
            let Some(&[typ, v1, v2, l1, l2]) = rest.get(..HEADER_BYTES) else {
                return Ok((used, false));
            };
            // After the handshake every record is protected (section 5.2).
            if typ != APPLICATION_DATA || [v1, v2] != [3, 3] {
                return Err(RecordError::Unexpected("not a protected record"));
            }
            let len = usize::from(u16::from_be_bytes([l1, l2]));
            if len > RECORD_BODY_MAX {
                return Err(RecordError::Overflow);
            }
            if rest.len() < HEADER_BYTES + len {
                return Ok((used, false));
            }
            let seq = self.rx.seq;
            self.rx.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
            let mut nonce_of = self.rx.nonce_at(seq);
            let header = [typ, v1, v2, l1, l2];
            let body = &mut rest[HEADER_BYTES..HEADER_BYTES + len];
            let opened = key
                .open_in_place(nonce_of.take(), aead::Aad::from(header), body)
                .map_err(|_| RecordError::Open)?;
            used += HEADER_BYTES + len;
            // The content type is the last byte that is not padding.
            let Some(end) = opened.iter().rposition(|&b| b != 0) else {
                return Err(RecordError::Unexpected("no content type"));
            };
            let (content, inner) = (&opened[..end], opened[end]);
            if content.len() > RECORD_PLAIN_MAX {
                return Err(RecordError::Overflow);
            }
            match inner {
                APPLICATION_DATA => plain.extend_from_slice(content),
                ALERT => {
                    return match content {
                        [_, CLOSE_NOTIFY] => Ok((used, true)),
                        [_, description] => Err(RecordError::Alert(*description)),
                        _ => Err(RecordError::Unexpected("malformed alert")),
                    };
                }
                HANDSHAKE => {
                    // Only KeyUpdate follows a server's handshake, alone in
                    // its record (it must end on a record boundary).
                    let &[KEY_UPDATE, 0, 0, 1, request] = content else {
                        return Err(RecordError::Unexpected("post-handshake message"));
                    };
                    match request {
                        0 => {}
                        1 => {
                            let tx_key = self.tx.key(self.suite)?;
                            self.update_tx(&tx_key, out)?;
                        }
                        _ => return Err(RecordError::Unexpected("key update request")),
                    }
                    self.rx.update(self.suite);
                    key = self.rx.key(self.suite)?;
                }
                _ => return Err(RecordError::Unexpected("content type")),
            }
        }
    }

    /// Sends `KeyUpdate(update_not_requested)` under the current key, then
    /// moves to the next; returns the new key.
    fn update_tx(
        &mut self,
        key: &aead::LessSafeKey,
        out: &mut Vec<u8>,
    ) -> Result<aead::LessSafeKey, RecordError> {
        self.seal_one(key, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx.update(self.suite);
        self.tx.key(self.suite)
    }

    /// One record of `inner` type holding `payload` (≤ 2^14 bytes).
    fn seal_one(
        &mut self,
        key: &aead::LessSafeKey,
        inner: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        debug_assert!(payload.len() <= RECORD_PLAIN_MAX);
        let len = payload.len() + 1 + TAG_BYTES;
        // At most 2^14 + 17: fits the 16-bit length.
        let [l1, l2] = (len as u16).to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, l1, l2];
        let seq = self.tx.seq;
        self.tx.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        out.reserve(HEADER_BYTES + len);
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(payload);
        out.push(inner);
        let tag = key
            .seal_in_place_separate_tag(
                self.tx.nonce_at(seq).take(),
                aead::Aad::from(header),
                &mut out[start..],
            )
            .map_err(|_| RecordError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// A nonce handed out once.
struct OnceNonce(Option<aead::Nonce>);

impl OnceNonce {
    fn take(&mut self) -> aead::Nonce {
        // Not reached twice: each nonce is made for one seal or open.
        self.0.take().expect("a nonce is used once")
    }
}

impl Direction {
    /// The nonce of record `seq` of the current key: the IV xor the
    /// sequence number (RFC 8446 section 5.3).
    fn nonce_at(&self, seq: u64) -> OnceNonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        OnceNonce(Some(aead::Nonce::assume_unique_for_key(nonce)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HKDF-Expand-Label against RFC 8448 (TLS 1.3 traces), section 3: the
    /// server's application traffic secret gives its key and IV.
    #[test]
    fn expand_label_matches_rfc_8448() {
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let (mut key, mut iv) = ([0u8; 16], [0u8; 12]);
        expand_label(Suite::Aes128Gcm, &secret, b"key", &mut key);
        expand_label(Suite::Aes128Gcm, &secret, b"iv", &mut iv);
        assert_eq!(key.to_vec(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        assert_eq!(iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
