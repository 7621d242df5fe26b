//! Encryption at rest: the key ring, sealed records, and the stored form of
//! a log entry that both stores write and read (docs/security.md,
//! "Encryption at rest").
//!
//! **What is sealed.** The `content` of a message entry (text, image, file,
//! voice, video, location, custom: everything a user wrote) and media
//! objects (through [`StreamSealer`] / [`StreamOpener`], used by the
//! gateway's media module). Ids, seqs, senders, devices, times, mentions,
//! reply links, the recalled flag and every other record stay readable: the
//! stores and their Redis functions route, sync, recall and count unread on
//! them.
//!
//! **Cipher.** XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`): its
//! 192-bit nonces are drawn at random for every record, so many nodes can
//! write with one key and no nonce counter has to be kept or coordinated
//! (a random 96-bit nonce would make collisions a concern after ~2^32
//! records per key; at 192 bits they are not). Media use the same AEAD in
//! the STREAM construction (`aead::stream`, big-endian 32-bit counter and a
//! last-chunk flag), so an object is sealed and opened chunk by chunk and a
//! truncated, reordered or spliced object fails to open.
//!
//! **Sealed record layout** (version 1, a message body):
//!
//! ```text
//! 0x00 | 0x01 | id_len: u8 | key id (id_len bytes) | nonce (24) | ciphertext | tag (16)
//! ```
//!
//! The leading `0x00` makes a sealed body unambiguous beside a plaintext
//! one: the plaintext is an encoded `Content` message, and no protobuf
//! message starts with `0x00` (field number 0 is invalid; prost refuses
//! it), so a store written without encryption keeps reading after it is
//! turned on, record by record. The associated data binds the ciphertext to
//! the header and to the entry around it (conversation, sender, device,
//! client message id, time): a body copied into another message, of another
//! conversation or sender, fails to open. (The seq is not in it: the Redis
//! store learns the seq inside its append function, after the body was
//! sealed.)
//!
//! **Media object layout** (version 2):
//!
//! ```text
//! 0x00 | 0x02 | id_len: u8 | key id | nonce prefix (19) | chunk* ; chunk = ciphertext (<= 64 KiB) | tag (16)
//! ```
//!
//! A media object's plaintext can be anything, so whether an object is
//! sealed is recorded in its metadata, not guessed from its bytes.
//!
//! This module never logs, and never prints a key: [`KeyRing`]'s `Debug`
//! shows key ids only.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
// Arrays convert into the AEAD's `GenericArray` types with `From`: its
// `from_slice` is deprecated in generic-array 0.14.9, which aead 0.5 uses.
use prost::Message as _;
use rand::RngCore as _;
use tern_protocol::pb;
use zeroize::Zeroizing;

use crate::store::StoreError;

/// Longest key id, bytes.
pub const KEY_ID_BYTES_MAX: usize = 32;
/// Bytes of one key (XChaCha20-Poly1305 takes 256-bit keys).
pub const KEY_BYTES: usize = 32;
/// Keys one key ring holds at most (a key file longer than this is refused).
pub const KEYS_MAX: usize = 256;
/// Longest key file read, bytes (a few hundred keys fit easily).
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Plaintext bytes per media chunk; each sealed chunk is 16 bytes longer.
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of the authentication tag after each ciphertext.
pub const TAG_BYTES: usize = 16;

/// First byte of every sealed record: never the first byte of a protobuf
/// message.
const MARKER: u8 = 0x00;
/// A sealed message body.
const VERSION_BODY: u8 = 1;
/// A sealed media object (STREAM).
const VERSION_STREAM: u8 = 2;
/// XChaCha20 nonce.
const NONCE_BYTES: usize = 24;
/// STREAM's nonce prefix with XChaCha20: 24 bytes minus the 4-byte counter
/// and the last-chunk flag byte.
const STREAM_NONCE_PREFIX_BYTES: usize = 19;
/// Domain separation of the associated data of entries and of media.
const AD_ENTRY: &[u8] = b"tern/entry/v1";
const AD_MEDIA: &[u8] = b"tern/media/v1";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a sealed record could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The record was sealed with a key the ring does not hold (removed from
    /// the key file, or encryption turned off while sealed data remains).
    #[error("record sealed with key id {id:?}, which is not in the key ring")]
    UnknownKey {
        /// The key id stored with the record.
        id: String,
    },
    /// The tag did not verify: the record was altered or moved to another
    /// place, or the key stored under that id is not the one that sealed it.
    #[error(
        "record sealed with key id {id:?} failed authentication (altered, moved, or a different key under that id)"
    )]
    Forged {
        /// The key id stored with the record.
        id: String,
    },
    /// The sealed header is cut short or names an unknown format version.
    #[error("sealed record is malformed: {0}")]
    Malformed(&'static str),
}

/// Why a key file was refused. Names the file and, where one is at fault,
/// the line; never shows a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("key file {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is not a valid key ring.
    #[error("key file {}: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (with its line number where one is at fault).
        reason: String,
    },
}

// ---------------------------------------------------------------------------
// The key ring
// ---------------------------------------------------------------------------

/// The keys records are sealed and opened with: each has an id, stored with
/// every record it seals; one is current (new records use it); the others
/// still open what they sealed. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    current: usize,
    /// Tenants with a key of their own (docs/tenants.md): the tenant and
    /// the index of its current key. Others use `current`.
    tenants: Vec<(String, usize)>,
}

#[derive(Clone)]
struct RingKey {
    id: String,
    /// Zeroes its key when dropped.
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: a key never reaches a log.
        f.debug_struct("KeyRing")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("current", &self.current_id())
            .field(
                "tenants",
                &self
                    .tenants
                    .iter()
                    .map(|(t, i)| (t.as_str(), self.keys[*i].id.as_str()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// A ring of `keys` (`(id, key bytes)`), `current` naming the one new
    /// records are sealed with. Refuses an empty ring, a bad or repeated id,
    /// or a `current` that is not one of the ids.
    pub fn new(keys: Vec<(String, [u8; KEY_BYTES])>, current: &str) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no key".into());
        }
        if keys.len() > KEYS_MAX {
            return Err(format!("more than {KEYS_MAX} keys"));
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            check_key_id(&id)?;
            if ring.iter().any(|k: &RingKey| k.id == id) {
                return Err(format!("key id {id:?} appears twice"));
            }
            let key = Zeroizing::new(key);
            ring.push(RingKey {
                id,
                cipher: XChaCha20Poly1305::new(&Key::from(*key)),
            });
        }
        let current = ring
            .iter()
            .position(|k| k.id == current)
            .ok_or_else(|| format!("current key {current:?} is not one of the keys"))?;
        Ok(Self {
            keys: ring,
            current,
            tenants: Vec::new(),
        })
    }

    /// The same ring, sealing `tenant`'s records with the key `id` (one of
    /// the ring's) instead of the current key: a tenant's own key
    /// (docs/tenants.md). Refuses a bad tenant id, an unknown key id, or a
    /// tenant named twice.
    pub fn with_tenant_key(mut self, tenant: &str, id: &str) -> Result<Self, String> {
        tern_protocol::ids::check_tenant(tenant)
            .map_err(|_| format!("tenant {tenant:?} is not 1 to 32 of [a-z0-9-]"))?;
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| format!("tenant {tenant:?}'s key {id:?} is not one of the keys"))?;
        if self.tenants.iter().any(|(t, _)| t == tenant) {
            return Err(format!("tenant {tenant:?} is given a key twice"));
        }
        self.tenants.push((tenant.to_owned(), index));
        Ok(self)
    }

    /// Parses a key file (see [`KeyRing::load`] for the format).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        let mut current: Option<String> = None;
        let mut tenants: Vec<(String, String)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: String| format!("line {}: {why}", n + 1);
            let Some((name, value)) = line.split_once('=') else {
                return Err(at("expected `id = base64 key` or `current = id`".into()));
            };
            let (name, value) = (name.trim(), value.trim());
            if name == "current" {
                if current.is_some() {
                    return Err(at("a second `current` line".into()));
                }
                current = Some(value.to_owned());
                continue;
            }
            if let Some(tenant) = name.strip_prefix("tenant.") {
                tenants.push((tenant.to_owned(), value.to_owned()));
                continue;
            }
            check_key_id(name).map_err(at)?;
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|_| at(format!("key {name:?} is not base64")))?,
            );
            let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                at(format!(
                    "key {name:?} is {} bytes, must be {KEY_BYTES}",
                    bytes.len()
                ))
            })?;
            keys.push((name.to_owned(), key));
        }
        let current = match current {
            Some(c) => c,
            None => keys
                .first()
                .map(|(id, _)| id.clone())
                .ok_or_else(|| "no key".to_owned())?,
        };
        let mut ring = Self::new(keys, &current)?;
        for (tenant, id) in tenants {
            ring = ring.with_tenant_key(&tenant, &id)?;
        }
        Ok(ring)
    }

    /// Reads a key file: one key per line, `id = <base64 of 32 bytes>` (ids
    /// of `[A-Za-z0-9._-]`, at most 32 bytes), and optionally `current =
    /// <id>` naming the key new records are sealed with (without it, the
    /// first key), and `tenant.<tenant> = <id>` naming the key a tenant's
    /// records are sealed with instead (docs/tenants.md). Blank lines and
    /// `#` comments are ignored. Generate a key with
    /// `head -c 32 /dev/urandom | base64`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        use std::io::Read as _;
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = Zeroizing::new(String::new());
        file.take(KEY_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > KEY_FILE_BYTES_MAX {
            return Err(KeyFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!("longer than {KEY_FILE_BYTES_MAX} bytes"),
            });
        }
        Self::parse(&text).map_err(|reason| KeyFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The id new records are sealed with.
    pub fn current_id(&self) -> &str {
        &self.keys[self.current].id
    }

    /// The id new records of `tenant` are sealed with: its own key, or the
    /// current one.
    pub fn current_id_for(&self, tenant: &str) -> &str {
        &self.keys[self.current_for(tenant)].id
    }

    fn current_for(&self, tenant: &str) -> usize {
        self.tenants
            .iter()
            .find(|(t, _)| t == tenant)
            .map_or(self.current, |(_, i)| *i)
    }

    /// Every key id, in file order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    fn key(&self, id: &[u8]) -> Result<&RingKey, SealError> {
        self.keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .ok_or_else(|| SealError::UnknownKey {
                id: String::from_utf8_lossy(id).into_owned(),
            })
    }

    /// Seals `plaintext` with the current key into a version-1 record,
    /// bound to `context` (associated data, along with the header).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_for("", context, plaintext)
    }

    /// [`KeyRing::seal`] with `tenant`'s key (its own, or the current one).
    pub fn seal_for(&self, tenant: &str, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[self.current_for(tenant)];
        let mut out =
            Vec::with_capacity(3 + key.id.len() + NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&[MARKER, VERSION_BODY, key.id.len() as u8]);
        out.extend_from_slice(key.id.as_bytes());
        let header_len = out.len();
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let ad = associated(&out[..header_len], context);
        let body = &mut out[start..];
        let tag = key
            .cipher
            .encrypt_in_place_detached(&XNonce::from(nonce), &ad, body)
            // Invariant: XChaCha20-Poly1305 refuses only plaintexts over
            // 256 GiB; a message body is bounded by the frame limit.
            .expect("a body is far below the AEAD's length limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a record [`KeyRing::seal`] made with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (header_len, id) = parse_header(sealed, VERSION_BODY)?;
        let rest = &sealed[header_len..];
        if rest.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SealError::Malformed("shorter than nonce and tag"));
        }
        let key = self.key(id)?;
        let (nonce, ct) = rest.split_at(NONCE_BYTES);
        let (ct, tag) = ct.split_at(ct.len() - TAG_BYTES);
        // Lengths checked above: both conversions succeed.
        let nonce: [u8; NONCE_BYTES] = nonce
            .try_into()
            .map_err(|_| SealError::Malformed("nonce"))?;
        let tag: [u8; TAG_BYTES] = tag.try_into().map_err(|_| SealError::Malformed("tag"))?;
        let mut buf = ct.to_vec();
        let ad = associated(&sealed[..header_len], context);
        key.cipher
            .decrypt_in_place_detached(&XNonce::from(nonce), &ad, &mut buf, &Tag::from(tag))
            .map_err(|_| SealError::Forged { id: key.id.clone() })?;
        Ok(buf)
    }

    /// Starts sealing a media object named `object_id` with the key of its
    /// tenant (the id's, docs/tenants.md; the current key for the default
    /// tenant): returns its header (write it first) and the sealer of its
    /// chunks.
    pub fn stream_sealer(&self, object_id: &str) -> (Vec<u8>, StreamSealer) {
        let key = &self.keys[self.current_for(tern_protocol::ids::tenant_of(object_id))];
        let mut header = Vec::with_capacity(3 + key.id.len() + STREAM_NONCE_PREFIX_BYTES);
        header.extend_from_slice(&[MARKER, VERSION_STREAM, key.id.len() as u8]);
        header.extend_from_slice(key.id.as_bytes());
        let mut prefix = [0u8; STREAM_NONCE_PREFIX_BYTES];
        rand::rng().fill_bytes(&mut prefix);
        header.extend_from_slice(&prefix);
        let ad = associated(&header, &media_context(object_id));
        let enc = EncryptorBE32::from_aead(key.cipher.clone(), &prefix.into());
        (header, StreamSealer { enc, ad })
    }

    /// Opens a media object named `object_id` whose header is `header`
    /// (exactly [`stream_header_len`] bytes).
    pub fn stream_opener(&self, object_id: &str, header: &[u8]) -> Result<StreamOpener, SealError> {
        let (header_len, id) = parse_header(header, VERSION_STREAM)?;
        if header.len() != header_len + STREAM_NONCE_PREFIX_BYTES {
            return Err(SealError::Malformed("media header has the wrong length"));
        }
        let key = self.key(id)?;
        let prefix: [u8; STREAM_NONCE_PREFIX_BYTES] = header[header_len..]
            .try_into()
            .map_err(|_| SealError::Malformed("media nonce prefix"))?;
        let ad = associated(header, &media_context(object_id));
        let dec = DecryptorBE32::from_aead(key.cipher.clone(), &prefix.into());
        Ok(StreamOpener {
            dec,
            ad,
            id: key.id.clone(),
        })
    }
}

/// The key ring stores seal with, shared with whoever reloads it: readers
/// take a snapshot per call (no lock), a reload swaps in a new ring (keys
/// added, current key changed) while records keep flowing. Empty: no
/// encryption, and nothing is sealed.
#[derive(Debug, Default)]
pub struct Keys(arc_swap::ArcSwapOption<KeyRing>);

impl Keys {
    /// Shared keys holding `ring` (`None`: encryption off).
    pub fn new(ring: Option<KeyRing>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(arc_swap::ArcSwapOption::from_pointee(ring)))
    }

    /// The ring now (held for one record or batch).
    pub fn load(&self) -> arc_swap::Guard<Option<std::sync::Arc<KeyRing>>> {
        self.0.load()
    }

    /// The ring now, as an owned handle (to hold across an `await`).
    pub fn load_full(&self) -> Option<std::sync::Arc<KeyRing>> {
        self.0.load_full()
    }

    /// Replaces the ring: records sealed from now on use `ring`'s current
    /// key. Refused when `ring` lacks a key id of the ring it replaces, so a
    /// reload never makes stored records unreadable by dropping a key.
    pub fn replace(&self, ring: KeyRing) -> Result<(), String> {
        if let Some(old) = self.0.load().as_deref() {
            if let Some(lost) = old.ids().find(|id| !ring.ids().any(|n| n == *id)) {
                return Err(format!(
                    "key {lost:?} is missing: records sealed with it would become unreadable (a key leaves the ring only with a restart)"
                ));
            }
        }
        self.0.store(Some(std::sync::Arc::new(ring)));
        Ok(())
    }
}

/// Seals a media object chunk by chunk: every chunk but the last is exactly
/// [`STREAM_CHUNK_BYTES`] of plaintext; the last one (possibly empty) goes
/// to [`StreamSealer::seal_last`].
pub struct StreamSealer {
    enc: EncryptorBE32<XChaCha20Poly1305>,
    ad: Vec<u8>,
}

impl std::fmt::Debug for StreamSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSealer").finish_non_exhaustive()
    }
}

impl StreamSealer {
    /// Seals one full chunk in place (the tag is appended).
    pub fn seal_next(&mut self, chunk: &mut Vec<u8>) {
        self.enc
            .encrypt_next_in_place(&self.ad, chunk)
            // Invariant: fails only after 2^32 chunks (256 TiB at 64 KiB),
            // far beyond any media limit.
            .expect("a media object is far below STREAM's chunk limit");
    }

    /// Seals the last chunk in place.
    pub fn seal_last(self, chunk: &mut Vec<u8>) {
        self.enc
            .encrypt_last_in_place(&self.ad, chunk)
            .expect("a media object is far below STREAM's chunk limit");
    }
}

/// Opens a media object chunk by chunk: every sealed chunk but the last is
/// exactly [`STREAM_CHUNK_BYTES`] + [`TAG_BYTES`] bytes.
pub struct StreamOpener {
    dec: DecryptorBE32<XChaCha20Poly1305>,
    ad: Vec<u8>,
    id: String,
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOpener")
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamOpener {
    /// Opens one full chunk in place (the tag is removed).
    pub fn open_next(&mut self, chunk: &mut Vec<u8>) -> Result<(), SealError> {
        let id = &self.id;
        self.dec
            .decrypt_next_in_place(&self.ad, chunk)
            .map_err(|_| SealError::Forged { id: id.clone() })
    }

    /// Opens the last chunk in place: fails if the object was cut short.
    pub fn open_last(self, chunk: &mut Vec<u8>) -> Result<(), SealError> {
        let id = self.id;
        self.dec
            .decrypt_last_in_place(&self.ad, chunk)
            .map_err(|_| SealError::Forged { id })
    }
}

/// The length of a media object's header from its first 3 bytes (`None`
/// when they are not a version-2 header).
pub fn stream_header_len(first3: &[u8]) -> Option<usize> {
    match first3 {
        [MARKER, VERSION_STREAM, n] if (1..=KEY_ID_BYTES_MAX).contains(&usize::from(*n)) => {
            Some(3 + usize::from(*n) + STREAM_NONCE_PREFIX_BYTES)
        }
        _ => None,
    }
}

/// Whether `bytes` starts like a sealed record (of any version).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MARKER)
}

fn check_key_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > KEY_ID_BYTES_MAX {
        return Err(format!(
            "key id {id:?} must be 1..={KEY_ID_BYTES_MAX} bytes"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!("key id {id:?} may hold only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Splits a sealed header: `(its length up to the nonce, key id)`.
fn parse_header(b: &[u8], version: u8) -> Result<(usize, &[u8]), SealError> {
    match b {
        [MARKER, v, n, rest @ ..] if *v == version => {
            let n = usize::from(*n);
            if n == 0 || n > KEY_ID_BYTES_MAX || rest.len() < n {
                return Err(SealError::Malformed("bad key id length"));
            }
            Ok((3 + n, &rest[..n]))
        }
        [MARKER, _, ..] => Err(SealError::Malformed("unknown sealed format version")),
        _ => Err(SealError::Malformed("no sealed header")),
    }
}

/// The associated data: the record's header, then the caller's context.
fn associated(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(header.len() + context.len());
    ad.extend_from_slice(header);
    ad.extend_from_slice(context);
    ad
}

// ---------------------------------------------------------------------------
// Log entries as stored
// ---------------------------------------------------------------------------

/// Encodes `entry` of `conversation` as a store keeps it: plain protobuf,
/// except that with a key ring the message content is sealed in place
/// (field 1 of the `Message`, as a sealed record instead of an encoded
/// `Content`). Everything else is encoded as usual, so the Redis functions
/// can still read and rewrite the entry (recall drops field 1 whatever it
/// holds). Without a key ring this is `entry.encode_to_vec()`.
pub fn encode_entry(keys: Option<&KeyRing>, conversation: &str, mut entry: pb::Entry) -> Vec<u8> {
    let Some(ring) = keys else {
        return entry.encode_to_vec();
    };
    let content = match &mut entry.body {
        Some(pb::entry::Body::Message(m)) => m.content.take(),
        _ => None,
    };
    let Some(content) = content else {
        // Not a message, or one without content (recalled): nothing to seal.
        return entry.encode_to_vec();
    };
    let Some(pb::entry::Body::Message(message)) = entry.body.take() else {
        unreachable!("the content was taken from a message body just above");
    };
    // One allocation each for the plaintext, the sealed record and the
    // result; the plaintext is wiped when dropped.
    let plain = Zeroizing::new(content.encode_to_vec());
    let sealed = ring.seal_for(
        conversation_tenant(conversation),
        &entry_context(conversation, &entry),
        &plain,
    );
    let rest = message.encode_to_vec();
    let inner_len =
        1 + prost::encoding::encoded_len_varint(sealed.len() as u64) + sealed.len() + rest.len();
    let mut out = Vec::with_capacity(entry.encoded_len() + 11 + inner_len);
    // prost writes fields in tag order and `body` (10..=13) comes last, so
    // the fields, then the body, is the canonical encoding; so is the
    // content (field 1) before the message's other fields.
    entry.encode(&mut out).expect("a Vec grows as needed");
    out.push(ENTRY_MESSAGE_KEY);
    prost::encoding::encode_varint(inner_len as u64, &mut out);
    out.push(MESSAGE_CONTENT_KEY);
    prost::encoding::encode_varint(sealed.len() as u64, &mut out);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&rest);
    out
}

/// The tenant of a conversation (`d:<a>:<b>`, `g:<group>`, or a room's
/// `r:<room>`): its first id's.
fn conversation_tenant(conversation: &str) -> &str {
    let ids = conversation.get(2..).unwrap_or_default();
    tern_protocol::ids::tenant_of(ids.split(':').next().unwrap_or_default())
}

/// Decodes an entry [`encode_entry`] wrote (or any plain one). A sealed
/// content is opened with `keys`: a key id the ring lacks, or no ring at
/// all, is [`SealError::UnknownKey`] naming it.
pub fn decode_entry(
    keys: Option<&KeyRing>,
    conversation: &str,
    bytes: &[u8],
) -> Result<pb::Entry, StoreError> {
    if keys.is_none() {
        // Off: a plain decode, nothing more. Only a failure looks further,
        // to name the key of a sealed body.
        return pb::Entry::decode(bytes).map_err(|e| match sealed_span(bytes) {
            Ok(Some(span)) => match parse_header(&bytes[span.content.clone()], VERSION_BODY) {
                Ok((_, id)) => StoreError::Sealed(SealError::UnknownKey {
                    id: String::from_utf8_lossy(id).into_owned(),
                }),
                Err(s) => StoreError::Sealed(s),
            },
            _ => corrupt(e),
        });
    }
    let Some(span) = sealed_span(bytes)? else {
        return pb::Entry::decode(bytes).map_err(corrupt);
    };
    let (mut entry, mut message) = decode_around(bytes, &span)?;
    let ring = keys.expect("checked above");
    let plain = Zeroizing::new(ring.open(
        &entry_context(conversation, &entry),
        &bytes[span.content.clone()],
    )?);
    message.content = Some(pb::Content::decode(plain.as_slice()).map_err(corrupt)?);
    entry.body = Some(pb::entry::Body::Message(message));
    Ok(entry)
}

/// Decodes an entry without its message content, sealed or not, and
/// without any key: what a recall keeps of a message.
pub fn decode_entry_without_content(bytes: &[u8]) -> Result<pb::Entry, StoreError> {
    let Some(span) = sealed_span(bytes)? else {
        let mut e = pb::Entry::decode(bytes).map_err(corrupt)?;
        if let Some(pb::entry::Body::Message(m)) = &mut e.body {
            m.content = None;
        }
        return Ok(e);
    };
    let (mut entry, message) = decode_around(bytes, &span)?;
    entry.body = Some(pb::entry::Body::Message(message));
    Ok(entry)
}

/// Key of `Entry.message` (field 10, length-delimited).
const ENTRY_MESSAGE_KEY: u8 = (10 << 3) | 2;
/// Key of `Message.content` (field 1, length-delimited).
const MESSAGE_CONTENT_KEY: u8 = (1 << 3) | 2;

/// Where a sealed content sits in a stored entry (byte ranges of `bytes`).
struct SealedSpan {
    /// The whole `message` field (key, length, payload).
    message_field: std::ops::Range<usize>,
    /// The message's payload.
    message: std::ops::Range<usize>,
    /// The whole `content` field within the payload (absolute).
    content_field: std::ops::Range<usize>,
    /// The sealed record (absolute).
    content: std::ops::Range<usize>,
}

/// Finds a sealed content; `None` for an entry without one (plain, or not
/// a message).
fn sealed_span(bytes: &[u8]) -> Result<Option<SealedSpan>, StoreError> {
    let Some((message_field, message)) = find_field(bytes, 0, ENTRY_MESSAGE_KEY)? else {
        return Ok(None);
    };
    let Some((content_field, content)) =
        find_field(&bytes[message.clone()], message.start, MESSAGE_CONTENT_KEY)?
    else {
        return Ok(None);
    };
    if !is_sealed(&bytes[content.clone()]) {
        return Ok(None);
    }
    Ok(Some(SealedSpan {
        message_field,
        message,
        content_field,
        content,
    }))
}

/// The entry without its message field, and the message without its
/// content field, both decoded.
fn decode_around(bytes: &[u8], span: &SealedSpan) -> Result<(pb::Entry, pb::Message), StoreError> {
    let mut outer = Vec::with_capacity(bytes.len() - span.message_field.len());
    outer.extend_from_slice(&bytes[..span.message_field.start]);
    outer.extend_from_slice(&bytes[span.message_field.end..]);
    let mut inner = Vec::with_capacity(span.message.len() - span.content_field.len());
    inner.extend_from_slice(&bytes[span.message.start..span.content_field.start]);
    inner.extend_from_slice(&bytes[span.content_field.end..span.message.end]);
    let entry = pb::Entry::decode(outer.as_slice()).map_err(corrupt)?;
    let message = pb::Message::decode(inner.as_slice()).map_err(corrupt)?;
    Ok((entry, message))
}

/// The last field with key byte `key` in the protobuf message `b` (whose
/// first byte is at `base` of the whole record): `(whole field, payload)`
/// as absolute ranges. Only single-byte keys are looked for; every field is
/// walked with bounds checked, so a corrupt record is an error, never a
/// panic.
#[allow(clippy::type_complexity)]
fn find_field(
    b: &[u8],
    base: usize,
    key: u8,
) -> Result<Option<(std::ops::Range<usize>, std::ops::Range<usize>)>, StoreError> {
    let bad = || StoreError::Corrupt("stored entry is not well-formed protobuf".into());
    let mut found = None;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let (k, n) = varint(&b[i..]).ok_or_else(bad)?;
        i += n;
        let (payload, end) = match k & 7 {
            0 => {
                let (_, n) = varint(&b[i..]).ok_or_else(bad)?;
                (i..i, i + n)
            }
            1 => (i..i, i + 8),
            2 => {
                let (len, n) = varint(&b[i..]).ok_or_else(bad)?;
                let from = i + n;
                let to = usize::try_from(len)
                    .ok()
                    .and_then(|l| from.checked_add(l))
                    .ok_or_else(bad)?;
                (from..to, to)
            }
            5 => (i..i, i + 4),
            _ => return Err(bad()),
        };
        if end > b.len() {
            return Err(bad());
        }
        if k == u64::from(key) {
            found = Some((
                base + start..base + end,
                base + payload.start..base + payload.end,
            ));
        }
        i = end;
    }
    Ok(found)
}

/// A varint at the start of `b`: `(value, bytes)`.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What a sealed body is bound to: the entry around it, each field
/// length-prefixed so no two entries share a context.
fn entry_context(conversation: &str, e: &pb::Entry) -> Vec<u8> {
    let fields: [&[u8]; 5] = [
        conversation.as_bytes(),
        e.sender.as_bytes(),
        e.sender_device.as_bytes(),
        e.client_msg_id.as_bytes(),
        &e.time_ms.to_be_bytes(),
    ];
    let mut ad =
        Vec::with_capacity(AD_ENTRY.len() + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    ad.extend_from_slice(AD_ENTRY);
    for f in fields {
        ad.extend_from_slice(&(f.len() as u32).to_be_bytes());
        ad.extend_from_slice(f);
    }
    ad
}

/// What a sealed media object is bound to: its id.
fn media_context(object_id: &str) -> Vec<u8> {
    let mut ad = AD_MEDIA.to_vec();
    ad.extend_from_slice(object_id.as_bytes());
    ad
}

fn corrupt(e: prost::DecodeError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str], current: &str) -> KeyRing {
        KeyRing::new(
            ids.iter()
                .enumerate()
                .map(|(i, id)| ((*id).to_owned(), [i as u8 + 1; KEY_BYTES]))
                .collect(),
            current,
        )
        .unwrap()
    }

    fn message(text: &str) -> pb::Entry {
        pb::Entry {
            conversation_id: "d:a:b".into(),
            seq: 7,
            sender: "a".into(),
            sender_device: "phone".into(),
            client_msg_id: "c1".into(),
            time_ms: 1_700_000_000_000,
            body: Some(pb::entry::Body::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
                }),
                mentions: vec!["b".into()],
                mention_all: false,
                reply_to_seq: 3,
                recalled: false,
                edit_count: 0,
                edited_at_ms: 0,
                reactions: vec![],
                streaming: false,
                thread_root_seq: 0,
                thread: None,
            })),
        }
    }

    #[test]
    fn a_sealed_entry_round_trips_and_hides_the_text() {
        // Proves: sealed bytes lack the text, keep the readable fields, and
        // decode back to the same entry; without keys the encoding is plain.
        let keys = ring(&["k1"], "k1");
        let e = message("secret marker 42");
        let stored = encode_entry(Some(&keys), "d:a:b", e.clone());
        assert!(!contains(&stored, b"secret marker 42"));
        assert!(contains(&stored, b"phone") && contains(&stored, b"c1"));
        assert_eq!(decode_entry(Some(&keys), "d:a:b", &stored).unwrap(), e);
        let plain = encode_entry(None, "d:a:b", e.clone());
        assert_eq!(plain, e.encode_to_vec());
        assert_eq!(decode_entry(Some(&keys), "d:a:b", &plain).unwrap(), e);
        // Entries without content are stored as they are, body included.
        let mark = pb::Entry {
            body: Some(pb::entry::Body::Read(pb::ReadMark { up_to_seq: 5 })),
            ..e.clone()
        };
        assert_eq!(
            encode_entry(Some(&keys), "d:a:b", mark.clone()),
            mark.encode_to_vec()
        );
        // Stored bytes without the key: a typed error naming the key id.
        assert_eq!(
            decode_entry(None, "d:a:b", &stored)
                .unwrap_err()
                .to_string(),
            StoreError::Sealed(SealError::UnknownKey { id: "k1".into() }).to_string()
        );
        // What recall keeps opens without a key.
        let kept = decode_entry_without_content(&stored).unwrap();
        let Some(pb::entry::Body::Message(m)) = kept.body else {
            panic!("not a message")
        };
        assert_eq!(
            (m.content, m.mentions, m.reply_to_seq),
            (None, vec!["b".to_owned()], 3)
        );
    }

    #[test]
    fn a_body_moved_to_another_entry_or_altered_fails() {
        // Proves the associated data binds a body to its entry: the same
        // bytes read under another conversation or with a changed byte fail
        // with Forged, never a panic or garbage.
        let keys = ring(&["k1"], "k1");
        let stored = encode_entry(Some(&keys), "d:a:b", message("x"));
        assert!(matches!(
            decode_entry(Some(&keys), "d:a:c", &stored),
            Err(StoreError::Sealed(SealError::Forged { .. }))
        ));
        let span = sealed_span(&stored).unwrap().unwrap();
        let mut bad = stored.clone();
        bad[span.content.end - 1] ^= 1;
        assert!(matches!(
            decode_entry(Some(&keys), "d:a:b", &bad),
            Err(StoreError::Sealed(SealError::Forged { id })) if id == "k1"
        ));
        // Every truncation is an error, not a panic.
        for n in 0..stored.len() {
            let _ = decode_entry(Some(&keys), "d:a:b", &stored[..n]);
            let _ = decode_entry(None, "d:a:b", &stored[..n]);
            let _ = decode_entry_without_content(&stored[..n]);
        }
    }

    #[test]
    fn rotation_keeps_old_records_readable() {
        // Proves records sealed with an old key open after the current key
        // changed, and new ones use the new key.
        let old = ring(&["k1"], "k1");
        let new = ring(&["k1", "k2"], "k2");
        let a = encode_entry(Some(&old), "d:a:b", message("old"));
        let b = encode_entry(Some(&new), "d:a:b", message("new"));
        assert!(contains(&a, b"\x00\x01\x02k1") && contains(&b, b"\x00\x01\x02k2"));
        assert!(decode_entry(Some(&new), "d:a:b", &a).is_ok());
        assert!(matches!(
            decode_entry(Some(&old), "d:a:b", &b),
            Err(StoreError::Sealed(SealError::UnknownKey { id })) if id == "k2"
        ));
    }

    #[test]
    fn a_tenant_with_its_own_key_is_sealed_with_it() {
        // Proves `tenant.<t> = <id>`: a tenant's messages (1:1, group and
        // room) and media are sealed with its key, other tenants' and the
        // default tenant's with the current key; a ring without the
        // tenant's key cannot open them (crypto-shredding), and the file's
        // tenant lines are checked.
        let k = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let j = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let r = KeyRing::parse(&format!(
            "k1 = {k}
acme1 = {j}
tenant.acme = acme1
"
        ))
        .unwrap();
        assert_eq!(r.current_id_for("acme"), "acme1");
        assert_eq!(r.current_id_for("globex"), "k1");
        assert_eq!(r.current_id_for(""), "k1");
        for conv in ["d:acme~a:acme~b", "g:acme~team", "r:acme~lobby"] {
            let stored = encode_entry(Some(&r), conv, message("secret"));
            assert!(contains(&stored, b"\x00\x01\x05acme1"), "{conv}");
            assert!(decode_entry(Some(&r), conv, &stored).is_ok());
        }
        for conv in ["d:globex~a:globex~b", "d:a:b", "g:team"] {
            let stored = encode_entry(Some(&r), conv, message("x"));
            assert!(contains(&stored, b"\x00\x01\x02k1"), "{conv}");
        }
        let (header, _) = r.stream_sealer("acme~aaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert!(contains(&header, b"\x00\x02\x05acme1"));
        let (header, _) = r.stream_sealer("aaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert!(contains(&header, b"\x00\x02\x02k1"));
        // Without acme's key (removed from the file), acme's data is gone.
        let shredded = KeyRing::parse(&format!(
            "k1 = {k}
"
        ))
        .unwrap();
        let stored = encode_entry(Some(&r), "d:acme~a:acme~b", message("secret"));
        assert!(matches!(
            decode_entry(Some(&shredded), "d:acme~a:acme~b", &stored),
            Err(StoreError::Sealed(SealError::UnknownKey { id })) if id == "acme1"
        ));
        for (text, want) in [
            (format!("k1={k}\ntenant.acme=k9"), "not one of the keys"),
            (format!("k1={k}\ntenant.Acme=k1"), "is not 1 to 32"),
            (format!("k1={k}\ntenant.acme=k1\ntenant.acme=k1"), "twice"),
        ] {
            let err = KeyRing::parse(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(!format!("{r:?}").contains(&j));
    }

    #[test]
    fn key_files_parse_strictly() {
        // Proves the key file format: comments, `current`, and one-line
        // errors for bad lengths, ids, repeats and an unknown current key.
        let k = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let r = KeyRing::parse(&format!("# keys\nk1 = {k}\n\nk2={k}\ncurrent = k2\n")).unwrap();
        assert_eq!(r.current_id(), "k2");
        assert_eq!(
            KeyRing::parse(&format!("a={k}\nb={k}"))
                .unwrap()
                .current_id(),
            "a"
        );
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        for (text, want) in [
            (
                format!("k1 = {short}"),
                "line 1: key \"k1\" is 16 bytes, must be 32",
            ),
            ("k1 = !!".to_owned(), "line 1: key \"k1\" is not base64"),
            (format!("bad id = {k}"), "may hold only"),
            (format!("k1={k}\nk1={k}"), "appears twice"),
            (format!("k1={k}\ncurrent=k9"), "current key \"k9\""),
            ("# nothing".to_owned(), "no key"),
            ("k1".to_owned(), "line 1: expected"),
        ] {
            let err = KeyRing::parse(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(&k), "a key leaked into {err}");
        }
        assert!(!format!("{r:?}").contains(&k));
    }

    #[test]
    fn media_streams_round_trip_and_refuse_truncation() {
        // Proves STREAM chunks open in order, and a cut-short object or one
        // read under another id fails to open.
        let keys = ring(&["k1"], "k1");
        let (header, mut sealer) = keys.stream_sealer("obj");
        assert_eq!(stream_header_len(&header[..3]), Some(header.len()));
        let mut c1 = vec![1u8; STREAM_CHUNK_BYTES];
        let mut c2 = b"tail".to_vec();
        sealer.seal_next(&mut c1);
        sealer.seal_last(&mut c2);
        let mut opener = keys.stream_opener("obj", &header).unwrap();
        let (mut a, mut b) = (c1.clone(), c2.clone());
        opener.open_next(&mut a).unwrap();
        opener.open_last(&mut b).unwrap();
        assert_eq!(
            (a.len(), b.as_slice()),
            (STREAM_CHUNK_BYTES, b"tail".as_slice())
        );
        let opener = keys.stream_opener("obj", &header).unwrap();
        assert!(opener.open_last(&mut c1.clone()).is_err(), "truncated");
        let mut other = keys.stream_opener("obj2", &header).unwrap();
        assert!(other.open_next(&mut c1.clone()).is_err(), "moved");
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}
