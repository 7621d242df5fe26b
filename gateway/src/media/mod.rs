//! Media: what an upload is allowed to be, and where it is kept.
//!
//! An upload streams to a temporary file under the media directory while its
//! size is counted against the limit of its kind and its SHA-256 computed;
//! its type is then sniffed from its first bytes ([`sniff`]), never taken
//! from the client. An image is measured from its header, refused when it
//! declares more pixels than allowed, and only then decoded, under
//! `image::Limits`, into a thumbnail and a compressed variant ([`images`]).
//! Each object then goes to the [`Store`] — local disk, or an S3-compatible
//! bucket — and its metadata last ([`store`]), so an object without
//! metadata never becomes visible. With encryption at rest on, objects are
//! sealed before they go to the store and opened while they stream out
//! ([`seal`]).
//!
//! This module does no HTTP and no access control: `api::media` does both.
//! It never runs on a shard thread.

pub mod images;
pub mod seal;
pub mod sniff;
pub mod store;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use store::{DiskStore, Meta, Object, S3Store, Store, StoreError};

/// What a client says it uploads; decides the size limit and which sniffed
/// types are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A picture: PNG, JPEG, GIF or WebP (what we can decode for thumbnails).
    Image,
    /// Any file.
    File,
    /// Audio (`audio/*` by its bytes).
    Voice,
    /// Video (`video/*` by its bytes).
    Video,
    /// A thumbnail or compressed variant the server made.
    Variant,
}

impl Kind {
    /// From the `kind` query parameter.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "file" => Some(Self::File),
            "voice" => Some(Self::Voice),
            "video" => Some(Self::Video),
            _ => None,
        }
    }
}

/// Why an upload was refused or failed. Each maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Bigger than the limit of its kind (client).
    #[error("{kind:?} uploads are limited to {max} bytes")]
    TooLarge {
        /// The kind.
        kind: Kind,
        /// Its limit, bytes.
        max: u64,
    },
    /// The bytes are not of the kind claimed (client).
    #[error("the bytes are {found}, not {kind:?}")]
    WrongType {
        /// The kind claimed.
        kind: Kind,
        /// The type sniffed, or "unknown".
        found: String,
    },
    /// The image declares more pixels than allowed (client; decode bomb).
    #[error("the image declares {width}x{height} pixels, more than {max}")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit, pixels.
        max: u64,
    },
    /// The image's header is right but its data is not (client).
    #[error("the image cannot be decoded: {0}")]
    BadImage(String),
    /// Empty upload (client).
    #[error("the upload is empty")]
    Empty,
    /// The local disk failed (internal).
    #[error("media store: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed (internal, or its backend: S3 down or failing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed object cannot be opened: its key is not in the key ring,
    /// or it fails authentication (internal).
    #[error("media store: {0}")]
    Sealed(#[from] tern_backend::seal::SealError),
}

/// The limits and sizes the module applies (from `[media]`).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where objects live on disk, and temporary files in any case.
    pub dir: PathBuf,
    /// The `[media]` section.
    pub settings: crate::config::MediaSettings,
}

impl MediaConfig {
    /// The byte limit of `kind`.
    pub fn bytes_max(&self, kind: Kind) -> u64 {
        let s = &self.settings;
        match kind {
            Kind::Image => s.image_bytes_max,
            Kind::File => s.file_bytes_max,
            Kind::Voice => s.voice_bytes_max,
            Kind::Video => s.video_bytes_max,
            Kind::Variant => 0,
        }
    }
}

/// A new media id: 26 characters of base32 (lower case) from 128 random
/// bits, so ids cannot be guessed or enumerated.
pub fn new_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits: u128 = rand::random();
    let mut id = String::with_capacity(26);
    for _ in 0..26 {
        id.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    id
}

/// A new media id in `tenant` (docs/tenants.md): `<tenant>~<new_id>`, or
/// [`new_id`] alone in the default tenant. Messages may carry media of
/// their own tenant only.
pub fn new_id_in(tenant: &str) -> String {
    tern_protocol::ids::qualify(tenant, &new_id())
}

/// True for a string that can be a media id (what [`new_id_in`] makes, with
/// a variant suffix): anything else is refused before touching the disk.
pub fn is_id(s: &str) -> bool {
    if let Some((tenant, _)) = s.split_once(tern_protocol::ids::TENANT_SEPARATOR)
        && tern_protocol::ids::check_tenant(tenant).is_err()
    {
        return false;
    }
    // Bytes, not `str` slicing: the 26th byte may fall inside a character.
    let Some((base, suffix)) = tern_protocol::ids::local_of(s)
        .as_bytes()
        .split_at_checked(26)
    else {
        return false;
    };
    base.iter()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
        && [
            b"".as_slice(),
            THUMB_SUFFIX.as_bytes(),
            COMPRESSED_SUFFIX.as_bytes(),
        ]
        .contains(&suffix)
}

/// The suffix of a thumbnail's id.
pub const THUMB_SUFFIX: &str = "_t";
/// The suffix of a compressed variant's id.
pub const COMPRESSED_SUFFIX: &str = "_c";

/// The media id a variant id belongs to (itself for an original). `id`
/// must have passed [`is_id`].
pub fn parent_of(id: &str) -> &str {
    let prefix = id.len() - tern_protocol::ids::local_of(id).len();
    &id[..id.len().min(prefix + 26)]
}

/// The two characters objects are spread into directories by (the random
/// part's first two, past any tenant prefix). `id` must have passed
/// [`is_id`].
pub fn spread_of(id: &str) -> &str {
    &tern_protocol::ids::local_of(id)[..2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids come from URL paths: anything but what `new_id` makes (plus a
    /// variant suffix) is refused without panicking, multi-byte characters
    /// across the 26th byte included.
    #[test]
    fn only_generated_ids_pass() {
        let id = new_id();
        assert!(is_id(&id));
        assert!(is_id(&format!("{id}{THUMB_SUFFIX}")));
        assert!(is_id(&format!("{id}{COMPRESSED_SUFFIX}")));
        assert_eq!(parent_of(&format!("{id}_t")), id);
        let in_acme = new_id_in("acme");
        assert!(in_acme.starts_with("acme~") && is_id(&in_acme));
        assert!(is_id(&format!("{in_acme}{THUMB_SUFFIX}")));
        assert_eq!(parent_of(&format!("{in_acme}_t")), in_acme);
        assert_eq!(spread_of(&in_acme), &in_acme[5..7]);
        assert!(!is_id(&format!("Acme~{id}")));
        assert!(!is_id(&format!("~{id}")));
        assert!(!is_id(&format!("../x~{id}")));
        for bad in [
            "",
            "short",
            "../../../../../../etc/passwd",
            &format!("{id}_x"),
            &format!("{}é", &id[..25]),
            &format!("{id}é"),
            &id.to_uppercase(),
        ] {
            assert!(!is_id(bad), "{bad:?}");
        }
    }
}
