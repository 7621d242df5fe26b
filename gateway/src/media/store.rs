//! Objects on local disk: `<dir>/objects/<first two chars>/<id>` with the
//! metadata beside it in `<id>.json`. Uploads stream into `<dir>/tmp/` and
//! are renamed into place (same file system, so the rename is atomic); the
//! metadata is written the same way and last, so a reader that finds
//! metadata always finds the whole object. A crash leaves at worst a
//! temporary file (swept at start) or an object without metadata
//! (invisible).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Kind;

/// What is known of a stored object; what `MediaRef` is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The id.
    pub media_id: String,
    /// What it was uploaded as.
    pub kind: Kind,
    /// Sniffed MIME type.
    pub mime: String,
    /// Bytes.
    pub size_bytes: u64,
    /// Pixels (images); 0 otherwise.
    pub width: u32,
    /// Pixels (images); 0 otherwise.
    pub height: u32,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// Who uploaded it: a user id, or `key:<name>` for an API key.
    pub owner: String,
    /// The thumbnail's id, if one was made.
    pub thumbnail: Option<VariantMeta>,
    /// The compressed variant's id, if one was made.
    pub compressed: Option<VariantMeta>,
    /// The object and its variants are sealed (encryption at rest,
    /// `super::seal`). Absent in metadata written before it existed: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

/// A variant as listed in its original's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantMeta {
    /// Its own media id (the original's id plus a suffix).
    pub media_id: String,
    /// Its MIME type.
    pub mime: String,
    /// Bytes.
    pub size_bytes: u64,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// The local-disk store.
#[derive(Debug, Clone)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the store in `dir` and removes temporary files a
    /// previous run left.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(dir.join("objects"))?;
        Ok(Self { dir: dir.into() })
    }

    /// A fresh temporary path for an upload in progress.
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(super::new_id())
    }

    /// Where the object `id` is (whether or not it exists). `id` must have
    /// passed [`super::is_id`], so it cannot climb out of the directory.
    pub fn object_path(&self, id: &str) -> PathBuf {
        debug_assert!(super::is_id(id));
        self.dir.join("objects").join(&id[..2]).join(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        let mut p = self.object_path(id).into_os_string();
        p.push(".json");
        p.into()
    }

    /// Moves the finished upload at `tmp` into place as `id`.
    pub async fn place(&self, tmp: &Path, id: &str) -> std::io::Result<()> {
        let path = self.object_path(id);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(tmp, &path).await
    }

    /// Writes `bytes` as the object `id` (a variant the server made).
    pub async fn put(&self, id: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.temp_path();
        tokio::fs::write(&tmp, bytes).await?;
        self.place(&tmp, id).await
    }

    /// Publishes `meta`: from now on the object is visible.
    pub async fn publish(&self, meta: &Meta) -> std::io::Result<()> {
        let tmp = self.temp_path();
        let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        tokio::fs::write(&tmp, json).await?;
        tokio::fs::rename(&tmp, self.meta_path(&meta.media_id)).await
    }

    /// The metadata of `id` (an original), if it exists.
    pub async fn meta(&self, id: &str) -> std::io::Result<Option<Meta>> {
        match tokio::fs::read(self.meta_path(id)).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
