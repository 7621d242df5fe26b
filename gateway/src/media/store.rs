//! Where media objects live: [`Store`], local disk ([`DiskStore`], the
//! default) or an S3-compatible bucket ([`S3Store`]), behind one enum so
//! that `api::media` does not care which.
//!
//! Both keep the same order. An upload is received into a temporary file
//! on local disk (`<dir>/tmp/`, emptied at start) — bounded, hashed and
//! sniffed there — and only then handed to the store whole, with
//! [`Store::put`]; its variants the same way; its metadata ([`Meta`]) is
//! written last with [`Store::publish`]. A reader looks up the metadata
//! first, so an object without metadata (a crash or failure half-way) is
//! never visible, and one with metadata is whole. Reads come back as a
//! stream of chunks ([`Object`]), never the whole object in memory.
//!
//! The two ends — "finished temp file → `put`" and "`get` → stream" — are
//! the only places bytes enter and leave the store: anything that must see
//! every stored byte (encryption at rest) wraps those two.
//!
//! - Disk: `<dir>/objects/<first two chars>/<id>` with the metadata beside
//!   it in `<id>.json`; `put` is a rename (same file system, so atomic).
//! - S3: `<s3_key_prefix>/<id>` and `<s3_key_prefix>/<id>.json` in the
//!   bucket. A PUT is atomic on S3; a file over [`S3_PART_BYTES`] goes up as
//!   a multipart upload of parts of that size, at most
//!   [`S3_PARTS_IN_FLIGHT`] at once, so an upload holds at most
//!   `S3_PART_BYTES × (S3_PARTS_IN_FLIGHT + 1)` bytes in memory whatever its
//!   size. Every S3 call runs under `s3_request_timeout_ms` (retries
//!   included), and a failure is typed: [`StoreError::Unavailable`] when S3
//!   cannot be reached or does not answer in time, [`StoreError::Failed`]
//!   when it answers with an error (5xx, no such bucket, access denied).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    ObjectStoreExt as _, PutPayload, WriteMultipart,
    aws::{AmazonS3, AmazonS3Builder},
    client::{HttpError, HttpErrorKind},
    path::Path as Key,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use super::Kind;
use crate::config::{MediaSettings, MediaStoreKind};

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

/// Why the store failed. `api::media` answers each with its own status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The local disk failed (internal).
    #[error("media store: {0}")]
    Io(#[from] std::io::Error),
    /// The remote store cannot be reached or did not answer in time
    /// (backend; 503, worth a retry).
    #[error("the media store cannot be reached: {0}")]
    Unavailable(String),
    /// The remote store answered with an error: a 5xx, a missing bucket,
    /// refused credentials (backend; 502).
    #[error("the media store failed: {0}")]
    Failed(String),
}

/// A stored object being read: its length and its bytes as they come.
pub struct Object {
    /// Bytes in all.
    pub size_bytes: u64,
    /// The bytes, in chunks of the store's choosing; an error ends it.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

/// The media store of this node: `[media] store`.
#[derive(Debug, Clone)]
pub enum Store {
    /// Files on local disk.
    Disk(DiskStore),
    /// An S3-compatible bucket.
    S3(S3Store),
}

impl Store {
    /// Opens the store `settings` name, with temporary files in
    /// `<dir>/tmp` (emptied: what a previous run left is gone). Opening S3
    /// makes no request: a bucket that is down or missing shows in the
    /// first call that needs it, as a typed error, and chat is not held up.
    pub fn open(dir: &Path, settings: &MediaSettings) -> Result<Self, StoreError> {
        match settings.store {
            MediaStoreKind::Disk => Ok(Self::Disk(DiskStore::open(dir)?)),
            MediaStoreKind::S3 => Ok(Self::S3(S3Store::open(fresh_tmp(dir)?, settings)?)),
        }
    }

    /// A fresh temporary path for an upload in progress (local disk).
    pub fn temp_path(&self) -> PathBuf {
        match self {
            Self::Disk(d) => d.temp_path(),
            Self::S3(s) => s.tmp.join(super::new_id()),
        }
    }

    /// Writes `bytes` (a variant the server made) to a fresh temporary
    /// file, for [`Store::put`].
    pub async fn write_temp(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.temp_path();
        if let Err(e) = tokio::fs::write(&tmp, bytes).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(tmp)
    }

    /// Stores the finished file at `tmp` as the object `id` (`id` must
    /// have passed [`super::is_id`]). The temporary file is gone afterwards
    /// on success; on failure the caller removes it.
    pub async fn put(&self, tmp: &Path, id: &str) -> Result<(), StoreError> {
        debug_assert!(super::is_id(id));
        match self {
            Self::Disk(d) => Ok(d.place(tmp, id).await?),
            Self::S3(s) => s.put(tmp, id).await,
        }
    }

    /// Publishes `meta`: from now on the object is visible.
    pub async fn publish(&self, meta: &Meta) -> Result<(), StoreError> {
        match self {
            Self::Disk(d) => Ok(d.publish(meta).await?),
            Self::S3(s) => s.publish(meta).await,
        }
    }

    /// The metadata of `id` (an original), if it exists.
    pub async fn meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        debug_assert!(super::is_id(id));
        match self {
            Self::Disk(d) => Ok(d.meta(id).await?),
            Self::S3(s) => s.meta(id).await,
        }
    }

    /// The object `id` (an original or a variant), streamed, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Object>, StoreError> {
        debug_assert!(super::is_id(id));
        match self {
            Self::Disk(d) => Ok(d.get(id).await?),
            Self::S3(s) => s.get(id).await,
        }
    }

    /// Removes the object `id` if it exists: the clean-up of an upload
    /// that failed after some of its objects were stored. Best effort: a
    /// left-over object has no metadata, so it is never served.
    pub async fn remove(&self, id: &str) {
        debug_assert!(super::is_id(id));
        match self {
            Self::Disk(d) => {
                let _ = tokio::fs::remove_file(d.object_path(id)).await;
            }
            Self::S3(s) => {
                let _ = s.call(s.s3.delete(&s.key(id))).await;
            }
        }
    }
}

/// Empties (creating) `<dir>/tmp` and returns it.
fn fresh_tmp(dir: &Path) -> std::io::Result<PathBuf> {
    let tmp = dir.join("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

// ---- local disk ----

/// Bytes per read of a download from disk (one chunk of the answer).
const DISK_READ_BYTES: usize = 64 << 10;

/// The local-disk store.
#[derive(Debug, Clone)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the store in `dir` and removes temporary files a
    /// previous run left.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fresh_tmp(dir)?;
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
        self.dir.join("objects").join(super::spread_of(id)).join(id)
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

    /// The object `id`, read in chunks as it is sent, if it exists.
    pub async fn get(&self, id: &str) -> std::io::Result<Option<Object>> {
        let file = match tokio::fs::File::open(self.object_path(id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size_bytes = file.metadata().await?.len();
        Ok(Some(Object {
            size_bytes,
            stream: tokio_util::io::ReaderStream::with_capacity(file, DISK_READ_BYTES).boxed(),
        }))
    }
}

// ---- S3-compatible ----

/// Part size of a multipart upload, and the largest object sent in one
/// PUT (S3's smallest part is 5 MiB).
pub const S3_PART_BYTES: usize = 5 << 20;
/// Parts of one multipart upload in flight at once.
pub const S3_PARTS_IN_FLIGHT: usize = 2;
/// Bytes read from the temporary file per read (the part buffer fills
/// from these).
const S3_READ_BYTES: usize = 256 << 10;
/// The longest metadata object read; a longer one is refused (it is not
/// ours).
const S3_META_BYTES_MAX: u64 = 64 << 10;

/// An S3-compatible bucket (`[media] s3_*`).
#[derive(Debug, Clone)]
pub struct S3Store {
    s3: Arc<AmazonS3>,
    /// Key prefix without slashes at its ends; empty: the bucket's root.
    prefix: String,
    /// Temporary files of uploads in progress (local disk).
    tmp: PathBuf,
    /// Each call's limit, retries included (`s3_request_timeout_ms`).
    timeout: Duration,
}

impl S3Store {
    /// A client of the bucket `settings` names (no request is made yet).
    pub fn open(tmp: PathBuf, settings: &MediaSettings) -> Result<Self, StoreError> {
        let s = settings;
        // reqwest is built without a crypto provider of its own (the `aws`
        // feature of object_store would add aws-lc): install ring's for the
        // process, unless something else already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(s.s3_request_timeout_ms);
        let options = object_store::ClientOptions::new()
            .with_allow_http(s.s3_endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_millis(s.s3_connect_timeout_ms))
            // No limit on a whole request: a large download to a slow
            // client may take long. Stalls are cut by the read timeout,
            // and every call but a download's body by `timeout` (ours).
            .with_timeout_disabled()
            .with_read_timeout(timeout);
        let retry = object_store::RetryConfig {
            max_retries: s.s3_retries_max as usize,
            retry_timeout: timeout,
            ..Default::default()
        };
        let mut b = AmazonS3Builder::new()
            .with_region(&s.s3_region)
            .with_bucket_name(&s.s3_bucket)
            .with_client_options(options)
            .with_retry(retry)
            .with_virtual_hosted_style_request(!s.s3_path_style);
        if !s.s3_endpoint.is_empty() {
            let endpoint = if s.s3_path_style {
                s.s3_endpoint.trim_end_matches('/').to_owned()
            } else {
                virtual_host(&s.s3_endpoint, &s.s3_bucket)
            };
            b = b.with_endpoint(endpoint);
        }
        if !s.s3_access_key_id.is_empty() {
            b = b
                .with_access_key_id(&s.s3_access_key_id)
                .with_secret_access_key(&s.s3_secret_access_key);
        }
        let s3 = b
            .build()
            .map_err(|e| StoreError::Failed(format!("S3 settings: {e}")))?;
        Ok(Self {
            s3: Arc::new(s3),
            prefix: s.s3_key_prefix.trim_matches('/').to_owned(),
            tmp,
            timeout,
        })
    }

    fn key(&self, id: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(id)
        } else {
            Key::from(format!("{}/{id}", self.prefix))
        }
    }

    fn meta_key(&self, id: &str) -> Key {
        self.key(&format!("{id}.json"))
    }

    /// Runs one S3 call under the timeout (a timeout is `Unavailable`).
    async fn timed<T>(
        &self,
        f: impl Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>, StoreError> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| {
            StoreError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
        })
    }

    /// Runs one S3 call under the timeout, its failure typed.
    async fn call<T>(
        &self,
        f: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        self.timed(f).await?.map_err(typed)
    }

    /// Like [`Self::call`], with "no such key" as `None`. S3 answers a
    /// missing bucket with 404 too: that one stays an error (told apart
    /// by the error code in the body).
    async fn call_found<T>(
        &self,
        f: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>, StoreError> {
        match self.timed(f).await? {
            Ok(v) => Ok(Some(v)),
            Err(e @ object_store::Error::NotFound { .. })
                if !e.to_string().contains("NoSuchBucket") =>
            {
                Ok(None)
            }
            Err(e) => Err(typed(e)),
        }
    }

    async fn put(&self, tmp: &Path, id: &str) -> Result<(), StoreError> {
        let key = self.key(id);
        let mut file = tokio::fs::File::open(tmp).await?;
        let len = file.metadata().await?.len();
        if len <= S3_PART_BYTES as u64 {
            // At most one part in memory: one PUT.
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).await?;
            self.call(self.s3.put(&key, PutPayload::from(bytes)))
                .await?;
        } else {
            let upload = self.call(self.s3.put_multipart(&key)).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
            match self.send_parts(&mut w, &mut file).await {
                Ok(()) => {
                    self.call(w.finish()).await?;
                }
                Err(e) => {
                    // Frees the parts sent; a bucket lifecycle rule for
                    // incomplete uploads catches what this cannot.
                    let _ = tokio::time::timeout(self.timeout, w.abort()).await;
                    return Err(e);
                }
            }
        }
        let _ = tokio::fs::remove_file(tmp).await;
        Ok(())
    }

    /// Feeds `file` to the multipart upload. Before each write, fewer than
    /// `S3_PARTS_IN_FLIGHT` parts are in flight, so a write that fills a
    /// part makes it at most that many, besides the part being filled.
    async fn send_parts(
        &self,
        w: &mut WriteMultipart,
        file: &mut tokio::fs::File,
    ) -> Result<(), StoreError> {
        let mut buf = vec![0u8; S3_READ_BYTES];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.call(w.wait_for_capacity(S3_PARTS_IN_FLIGHT - 1))
                .await?;
            w.write(&buf[..n]);
        }
    }

    async fn publish(&self, meta: &Meta) -> Result<(), StoreError> {
        let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        let key = self.meta_key(&meta.media_id);
        self.call(self.s3.put(&key, PutPayload::from(json))).await?;
        Ok(())
    }

    async fn meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        let Some(got) = self.call_found(self.s3.get(&self.meta_key(id))).await? else {
            return Ok(None);
        };
        if got.meta.size > S3_META_BYTES_MAX {
            return Err(StoreError::Failed(format!(
                "the metadata of {id} is {} bytes: not ours",
                got.meta.size
            )));
        }
        let bytes = self.call(got.bytes()).await?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Failed(format!("the metadata of {id}: {e}")))
    }

    async fn get(&self, id: &str) -> Result<Option<Object>, StoreError> {
        let Some(got) = self.call_found(self.s3.get(&self.key(id))).await? else {
            return Ok(None);
        };
        Ok(Some(Object {
            size_bytes: got.meta.size,
            stream: got.into_stream().map_err(std::io::Error::other).boxed(),
        }))
    }
}

/// An object_store error as ours: no connection, or a timeout, is
/// `Unavailable`; an answer that is an error is `Failed`.
fn typed(e: object_store::Error) -> StoreError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return match h.kind() {
                HttpErrorKind::Connect
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted
                | HttpErrorKind::Request => StoreError::Unavailable(e.to_string()),
                _ => StoreError::Failed(e.to_string()),
            };
        }
        source = s.source();
    }
    StoreError::Failed(e.to_string())
}

/// `https://host:port/x` with the bucket as the host's first label:
/// `https://bucket.host:port/x` (virtual-hosted addressing).
fn virtual_host(endpoint: &str, bucket: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("https://{bucket}.{endpoint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket goes in front of the endpoint's host, scheme and port
    /// kept.
    #[test]
    fn virtual_hosted_endpoints_name_the_bucket_first() {
        assert_eq!(
            virtual_host("https://s3.eu-west-1.example.com/", "b"),
            "https://b.s3.eu-west-1.example.com"
        );
        assert_eq!(
            virtual_host("http://minio.local:9000", "media"),
            "http://media.minio.local:9000"
        );
    }
}
