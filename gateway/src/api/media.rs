//! `/api/v1/media`: upload and download of images, files, voice and video.
//!
//! Who may call: a client with its user token (`Authorization: Bearer
//! <JWT>`, verified like a connection's `Auth`), or a service with an API
//! key holding the `media` scope. A key is tried first, then the token.
//!
//! Who may download: a service key, the uploader, or a member of a
//! conversation the media was sent to. The downloader names the message
//! that carries it (`?conversation_id=…&seq=…`); the gateway reads that one
//! entry as the downloader through the backend, so the domain's own rule
//! (only members read a conversation) decides, and the entry must reference
//! the media. No signed URLs: a URL that works for anyone who holds it
//! would outlive a member's removal from the group. An image that is a
//! user's avatar (`Profile.avatar` holds its media id, and that user
//! uploaded it) is named by that user instead (`?avatar_of=…`): profiles
//! are public, so is the avatar, until its owner sets another.
//!
//! The body limit of `[http]` does not apply under `/api/v1/media`
//! (`http::OWN_BODY_LIMIT_PREFIX`): an upload is held to the limit of its
//! kind instead, from `Content-Length` before the body is read and while it
//! streams to disk, so no upload is ever held in memory whole.
//!
//! Where objects are kept is the [`Store`]'s business (local disk or an
//! S3-compatible bucket): a failing S3 is 503 `MEDIA_STORE_UNAVAILABLE`
//! (cannot be reached, no answer in time) or 502 `MEDIA_STORE_ERROR` (it
//! answered with an error); the cause is logged, never sent to the caller.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Body,
    extract::{FromRequestParts, Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tern_protocol::pb::{self, frame::Body as PbBody};
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use tern_backend::seal::Keys;

use super::{ApiError, ApiState, Authorized, Scope, error::ErrorBody};
use crate::{
    auth::Verifier,
    media::{
        self, COMPRESSED_SUFFIX, Kind, MediaConfig, MediaError, Meta, Store, StoreError,
        THUMB_SUFFIX, images, sniff, store::VariantMeta,
    },
};

/// What the media handlers use besides [`ApiState`]; added to the router
/// as an `Extension` by the server (absent: the handlers answer 503).
#[derive(Debug)]
pub struct MediaService {
    /// Limits and where objects live.
    pub config: MediaConfig,
    /// The objects.
    pub store: Store,
    /// Verifies user tokens.
    pub verifier: Arc<Verifier>,
    /// Seals objects at rest (empty: stored in clear).
    pub keys: Arc<Keys>,
    /// Tenants whose users may read each other's media (through the
    /// messages that carry it; docs/tenants.md).
    pub federation: tern_backend::config::Federation,
    /// Tenants' media byte limits and where their use is counted.
    pub storage: Option<TenantStorage>,
}

/// `[chat] tenant_storage_bytes_max` and the counter behind it.
#[derive(Debug, Clone)]
pub struct TenantStorage {
    /// The counts.
    pub store: Arc<dyn tern_backend::store::OrgStore>,
    /// `(tenant, bytes)`.
    pub limits: Vec<(String, u64)>,
}

impl MediaService {
    /// Opens the store `config` names (temporary files in `config.dir`).
    pub fn open(config: MediaConfig, verifier: Arc<Verifier>) -> Result<Self, StoreError> {
        let store = Store::open(&config.dir, &config.settings)?;
        let s = &config.settings;
        match &store {
            Store::Disk(_) => tracing::info!(dir = %config.dir.display(), "media on local disk"),
            Store::S3(_) => tracing::info!(
                endpoint = %s.s3_endpoint,
                bucket = %s.s3_bucket,
                prefix = %s.s3_key_prefix,
                "media in an S3 bucket"
            ),
        }
        Ok(Self {
            config,
            store,
            verifier,
            keys: Keys::new(None),
            federation: Default::default(),
            storage: None,
        })
    }

    /// Lets the users of `federation`'s tenant pairs read each other's
    /// media.
    pub fn with_federation(mut self, federation: tern_backend::config::Federation) -> Self {
        self.federation = federation;
        self
    }

    /// Holds tenants to their media byte limits (none when `limits` is
    /// empty).
    pub fn with_tenant_storage(
        mut self,
        store: Option<Arc<dyn tern_backend::store::OrgStore>>,
        limits: Vec<(String, u64)>,
    ) -> Self {
        self.storage = store
            .filter(|_| !limits.is_empty())
            .map(|store| TenantStorage { store, limits });
        self
    }

    /// Seals new objects with `keys` (and opens sealed ones with it).
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = keys;
        self
    }
}

/// The media routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(download))
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A service's API key with the `media` scope (its name and tenant).
    Service(String, Option<String>),
    /// A user, by their token.
    User(String),
}

impl Caller {
    fn owner(&self) -> String {
        match self {
            Self::Service(k, _) => format!("key:{k}"),
            Self::User(u) => u.clone(),
        }
    }

    /// The tenant uploads are named in (docs/tenants.md): the user's, or
    /// the key's (a system key's: the default tenant).
    fn tenant(&self) -> &str {
        match self {
            Self::Service(_, t) => t.as_deref().unwrap_or_default(),
            Self::User(u) => tern_protocol::ids::tenant_of(u),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key_error = match Authorized::from_request_parts(parts, state).await {
            Ok(auth) => {
                auth.require(Scope::Media)?;
                return Ok(Self::Service(auth.key_name, auth.tenant));
            }
            Err(e) => e,
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let service = parts.extensions.get::<Arc<MediaService>>();
        match (token, service) {
            (Some(t), Some(s)) if t.split('.').count() == 3 => match s.verifier.verify(t) {
                Ok(user) => Ok(Self::User(user)),
                Err(e) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "AUTH_FAILED",
                    format!("token refused: {e}"),
                )),
            },
            _ => Err(key_error),
        }
    }
}

/// The upload's kind.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// `image`, `file`, `voice` or `video`: decides the size limit and which
    /// types the bytes may be.
    pub kind: String,
}

/// A stored upload: what goes into `MediaRef`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedMedia {
    /// `MediaRef.media_id`.
    pub media_id: String,
    /// `MediaRef.mime`: sniffed from the bytes.
    pub mime: String,
    /// `MediaRef.size_bytes`.
    pub size_bytes: u64,
    /// `MediaRef.width` (images; 0 otherwise).
    pub width: u32,
    /// `MediaRef.height` (images; 0 otherwise).
    pub height: u32,
    /// `MediaRef.sha256`, hex.
    pub sha256: String,
    /// `MediaRef.thumbnail` (images).
    pub thumbnail: Option<MediaVariant>,
    /// A compressed JPEG for display (images); fetch it like any media.
    pub compressed: Option<MediaVariant>,
}

/// A variant the server made of an image.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaVariant {
    /// Its own media id: download it as `/api/v1/media/{media_id}`.
    pub media_id: String,
    /// Its type (`image/jpeg`).
    pub mime: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

impl From<&VariantMeta> for MediaVariant {
    fn from(v: &VariantMeta) -> Self {
        Self {
            media_id: v.media_id.clone(),
            mime: v.mime.clone(),
            width: v.width,
            height: v.height,
        }
    }
}

impl From<&Meta> for UploadedMedia {
    fn from(m: &Meta) -> Self {
        Self {
            media_id: m.media_id.clone(),
            mime: m.mime.clone(),
            size_bytes: m.size_bytes,
            width: m.width,
            height: m.height,
            sha256: m.sha256.clone(),
            thumbnail: m.thumbnail.as_ref().map(Into::into),
            compressed: m.compressed.as_ref().map(Into::into),
        }
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        let message = e.to_string();
        match e {
            MediaError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
            }
            MediaError::WrongType { .. } => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                message,
            ),
            MediaError::TooManyPixels { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "IMAGE_TOO_LARGE", message)
            }
            MediaError::BadImage(_) => Self::new(StatusCode::BAD_REQUEST, "BAD_IMAGE", message),
            MediaError::Empty => Self::invalid(message),
            MediaError::Io(_) | MediaError::Sealed(_) | MediaError::Store(StoreError::Io(_)) => {
                Self::internal(message)
            }
            MediaError::Store(StoreError::Unavailable(cause)) => {
                store_failure_logged(&cause);
                Self {
                    retry_after_s: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "MEDIA_STORE_UNAVAILABLE",
                        "the media store cannot be reached; retry later",
                    )
                }
            }
            MediaError::Store(StoreError::Failed(cause)) => {
                store_failure_logged(&cause);
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "MEDIA_STORE_ERROR",
                    "the media store answered with an error",
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        MediaError::from(e).into()
    }
}

/// Logs why the store failed (its endpoint and bucket are the operator's
/// business, not the caller's), at most once a second.
fn store_failure_logged(cause: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_S: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_S.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(%cause, "media store failed");
    }
}

fn service(ext: Option<Extension<Arc<MediaService>>>) -> Result<Arc<MediaService>, ApiError> {
    ext.map(|Extension(s)| s)
        .ok_or_else(|| ApiError::overloaded("media is not enabled on this node"))
}

/// Upload media.
///
/// The body is the raw bytes (any `Content-Type`; the type is sniffed from
/// the bytes). Answers what goes into `MediaRef`. Images also get a JPEG
/// thumbnail and a compressed JPEG variant.
#[utoipa::path(
    post,
    path = "/api/v1/media",
    tag = "media",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored", body = UploadedMedia),
        (status = 400, description = "Unknown kind, empty body, an image that does not decode (`bad_image`) or declares too many pixels (`image_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid API key or user token", body = ErrorBody),
        (status = 403, description = "The key lacks the `media` scope", body = ErrorBody),
        (status = 413, description = "Larger than the limit of its kind (`too_large`)", body = ErrorBody),
        (status = 415, description = "The bytes are not of the kind claimed (`unsupported_media_type`)", body = ErrorBody),
        (status = 502, description = "The media store (S3) answered with an error (`MEDIA_STORE_ERROR`)", body = ErrorBody),
        (status = 503, description = "The media store (S3) cannot be reached (`MEDIA_STORE_UNAVAILABLE`)", body = ErrorBody),
    ),
)]
async fn upload(
    caller: Caller,
    ext: Option<Extension<Arc<MediaService>>>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let svc = service(ext)?;
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let kind = Kind::parse(&q.kind)
        .ok_or_else(|| ApiError::invalid("kind must be image, file, voice or video"))?;
    let max = svc.config.bytes_max(kind);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(MediaError::TooLarge { kind, max }.into());
    }
    let tmp = svc.store.temp_path();
    let result = receive(&svc, kind, max, &caller, request.into_body(), &tmp).await;
    if result.is_err() {
        // Whatever failed, the partial upload goes (it may not exist).
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    let meta = result?;
    Ok((StatusCode::CREATED, Json(UploadedMedia::from(&meta))).into_response())
}

/// Streams the body to `tmp`, checks it and stores it with its variants.
async fn receive(
    svc: &Arc<MediaService>,
    kind: Kind,
    max: u64,
    caller: &Caller,
    mut body: Body,
    tmp: &std::path::Path,
) -> Result<Meta, ApiError> {
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(MediaError::from)?;
    let mut size = 0u64;
    let mut sha = Sha256::new();
    // The first bytes, for sniffing; bounded by HEAD_BYTES.
    let mut head = Vec::with_capacity(sniff::HEAD_BYTES);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("reading the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        size += chunk.len() as u64;
        if size > max {
            return Err(MediaError::TooLarge { kind, max }.into());
        }
        let room = sniff::HEAD_BYTES - head.len();
        head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        sha.update(&chunk);
        file.write_all(&chunk).await.map_err(MediaError::from)?;
    }
    file.flush().await.map_err(MediaError::from)?;
    file.sync_all().await.map_err(MediaError::from)?;
    drop(file);
    if size == 0 {
        return Err(MediaError::Empty.into());
    }
    let mime = sniff::check(kind, &head)?;
    let processed = if kind == Kind::Image {
        let (path, settings) = (tmp.to_owned(), svc.config.settings.clone());
        let p = tokio::task::spawn_blocking(move || images::process(&path, &settings))
            .await
            .map_err(|e| ApiError::internal(format!("image task: {e}")))??;
        Some(p)
    } else {
        None
    };

    // A tenant with a byte limit is charged before anything is stored, and
    // refunded if the store then fails.
    let charged = charge(svc, caller.tenant(), size).await?;
    let ring = svc.keys.load_full();
    let mut meta = Meta {
        media_id: media::new_id_in(caller.tenant()),
        kind,
        mime,
        size_bytes: size,
        width: 0,
        height: 0,
        sha256: hex(&sha.finalize()),
        owner: caller.owner(),
        thumbnail: None,
        compressed: None,
        sealed: ring.is_some(),
    };
    // What was stored before a failure goes again (it has no metadata, so
    // it would never be served, but it would take room) — in the
    // background: the answer does not wait on a store that is failing.
    let mut stored = Vec::with_capacity(3);
    let result = store_upload(
        &svc.store,
        ring.as_deref(),
        tmp,
        &mut meta,
        processed,
        &mut stored,
    )
    .await;
    if let (Err(_), Some((store, tenant))) = (&result, charged) {
        let _ = tokio::task::spawn_blocking(move || store.refund_storage(&tenant, size)).await;
    }
    if result.is_err() && !stored.is_empty() {
        let store = svc.store.clone();
        tokio::spawn(async move {
            for id in &stored {
                store.remove(id).await;
            }
        });
    }
    result?;
    Ok(meta)
}

/// Counts `size` bytes against `tenant`'s limit, if it has one: the counter
/// and tenant to refund on a later failure, or 507 `TENANT_STORAGE_FULL`.
async fn charge(
    svc: &MediaService,
    tenant: &str,
    size: u64,
) -> Result<Option<(Arc<dyn tern_backend::store::OrgStore>, String)>, ApiError> {
    let Some(s) = &svc.storage else {
        return Ok(None);
    };
    let Some((_, max)) = s.limits.iter().find(|(t, _)| t == tenant) else {
        return Ok(None);
    };
    let (store, t, max) = (s.store.clone(), tenant.to_owned(), *max);
    let ok = super::blocking(move || store.charge_storage(&t, size, max)).await?;
    if !ok {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "TENANT_STORAGE_FULL",
            format!("your organization's media would pass its {max} bytes"),
        ));
    }
    Ok(Some((s.store.clone(), tenant.to_owned())))
}

/// Stores the upload at `tmp`, its variants, and last its metadata, noting
/// in `stored` each object stored.
async fn store_upload(
    store: &Store,
    ring: Option<&tern_backend::seal::KeyRing>,
    tmp: &std::path::Path,
    meta: &mut Meta,
    processed: Option<images::Processed>,
    stored: &mut Vec<String>,
) -> Result<(), MediaError> {
    let id = meta.media_id.clone();
    match ring {
        // Encryption at rest: the checked upload is sealed into a second
        // temporary file, which is what the store takes; the clear one goes.
        Some(ring) => {
            let sealed = store.temp_path();
            let put = async {
                media::seal::seal_file(ring, &id, tmp, &sealed).await?;
                store.put(&sealed, &id).await?;
                Ok::<_, MediaError>(())
            }
            .await;
            if put.is_err() {
                let _ = tokio::fs::remove_file(&sealed).await;
            }
            put?;
            tokio::fs::remove_file(tmp).await?;
        }
        None => store.put(tmp, &id).await?,
    }
    stored.push(id.clone());
    if let Some(p) = processed {
        meta.width = p.width;
        meta.height = p.height;
        for (suffix, v) in [
            (THUMB_SUFFIX, p.thumbnail),
            (COMPRESSED_SUFFIX, p.compressed),
        ] {
            let vid = format!("{id}{suffix}");
            let vtmp = match ring {
                Some(ring) => {
                    store
                        .write_temp(&media::seal::seal_bytes(ring, &vid, &v.jpeg))
                        .await?
                }
                None => store.write_temp(&v.jpeg).await?,
            };
            if let Err(e) = store.put(&vtmp, &vid).await {
                let _ = tokio::fs::remove_file(&vtmp).await;
                return Err(e.into());
            }
            stored.push(vid.clone());
            let variant = VariantMeta {
                media_id: vid,
                mime: "image/jpeg".into(),
                size_bytes: v.jpeg.len() as u64,
                width: v.width,
                height: v.height,
            };
            if suffix == THUMB_SUFFIX {
                meta.thumbnail = Some(variant);
            } else {
                meta.compressed = Some(variant);
            }
        }
    }
    Ok(store.publish(meta).await?)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The message that carries the media, which a member names to download it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// The conversation of the message (`d:<a>:<b>` or `g:<group>`).
    pub conversation_id: Option<String>,
    /// The message's sequence in it.
    pub seq: Option<u64>,
    /// Or the user whose profile's avatar is this (image) media.
    pub avatar_of: Option<String>,
}

/// Download media (an original, a thumbnail or a compressed variant).
///
/// A service key with the `media` scope and the uploader may always
/// download; anyone else names the message that carries the media with
/// `conversation_id` and `seq`, and must be able to read that conversation,
/// or names the user whose avatar the image is with `avatar_of`.
#[utoipa::path(
    get,
    path = "/api/v1/media/{media_id}",
    tag = "media",
    params(("media_id" = String, Path, description = "The id from the upload (or a variant's id)"), DownloadQuery),
    responses(
        (status = 200, description = "The bytes, with their sniffed `Content-Type`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No valid API key or user token", body = ErrorBody),
        (status = 403, description = "Not the uploader and no message named (`forbidden`), or not a member of its conversation (`not_member`)", body = ErrorBody),
        (status = 404, description = "No such media, or the named message (or user's avatar) is not it", body = ErrorBody),
        (status = 502, description = "The media store (S3) answered with an error (`MEDIA_STORE_ERROR`)", body = ErrorBody),
        (status = 503, description = "The media store (S3) cannot be reached (`MEDIA_STORE_UNAVAILABLE`)", body = ErrorBody),
    ),
)]
async fn download(
    State(state): State<ApiState>,
    caller: Caller,
    ext: Option<Extension<Arc<MediaService>>>,
    Path(media_id): Path<String>,
    query: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let svc = service(ext)?;
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let not_found = || ApiError::not_found(format!("no media {media_id:?}"));
    if !media::is_id(&media_id) {
        return Err(not_found());
    }
    let parent = media::parent_of(&media_id);
    let meta = svc.store.meta(parent).await?.ok_or_else(not_found)?;
    // The size is the object's as uploaded (a sealed object is stored
    // longer).
    let (mime, size) = if media_id == parent {
        (meta.mime.clone(), meta.size_bytes)
    } else {
        let v = [&meta.thumbnail, &meta.compressed]
            .into_iter()
            .flatten()
            .find(|v| v.media_id == media_id)
            .ok_or_else(not_found)?;
        (v.mime.clone(), v.size_bytes)
    };
    // A tenant's key was confined to the id's tenant from the path; a
    // user reads their own tenant's objects only.
    if let Caller::User(user) = &caller
        && !svc.federation.allows(
            tern_protocol::ids::tenant_of(user),
            tern_protocol::ids::tenant_of(&media_id),
        )
    {
        return Err(ApiError::tenant_mismatch("media_id"));
    }
    if let Caller::User(user) = &caller
        && *user != meta.owner
    {
        if let Some(of) = q.avatar_of {
            // Only an image `of` uploaded: an avatar never republishes
            // media that came to its user in a conversation.
            if meta.kind != Kind::Image
                || meta.owner != of
                || !is_avatar_of(&state, user, of.clone(), parent).await?
            {
                return Err(ApiError::not_found(format!(
                    "media {parent:?} is not the avatar of {of:?}"
                )));
            }
            return serve(&svc, &meta, &media_id, mime, size).await;
        }
        let (Some(conversation_id), Some(seq)) = (q.conversation_id, q.seq) else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "only the uploader may fetch media without naming the message that carries it \
                 (?conversation_id=…&seq=…), or the user whose avatar it is (?avatar_of=…)",
            ));
        };
        let carried = carried_by(&state, user, conversation_id, seq, parent).await?;
        if !carried {
            return Err(ApiError::not_found(format!(
                "message {seq} does not carry media {parent:?}"
            )));
        }
    }
    serve(&svc, &meta, &media_id, mime, size).await
}

/// The bytes of `media_id` (the original or a variant of `meta`), with the
/// headers every download carries.
async fn serve(
    svc: &MediaService,
    meta: &Meta,
    media_id: &str,
    mime: String,
    size: u64,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no media {media_id:?}"));
    // Streamed from the store as the client takes it (and opened on the
    // way when sealed): never whole in memory.
    let object = svc.store.get(media_id).await?.ok_or_else(not_found)?;
    let body = if meta.sealed {
        let ring = svc.keys.load_full();
        let reader = tokio_util::io::StreamReader::new(object.stream);
        let stream = media::seal::open_stream(ring.as_deref(), media_id, reader)
            .await
            .map_err(|e| match e {
                media::seal::OpenError::Io(e) => MediaError::Io(e),
                media::seal::OpenError::Sealed(e) => MediaError::Sealed(e),
            })?;
        Body::from_stream(stream)
    } else {
        Body::from_stream(object.stream)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let ct = HeaderValue::from_str(&mime)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    // The type is ours (sniffed); a browser must not guess another.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Nothing served here may run as a page on the gateway's origin: files
    // (which may be HTML or SVG) are attachments, and everything is
    // sandboxed.
    if meta.kind == Kind::File {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    // Objects never change under an id.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(r)
}

/// Reads the profile of `of` as `user` and tells whether its avatar is
/// media `id` (an original: a variant goes with it).
async fn is_avatar_of(
    state: &ApiState,
    user: &str,
    of: String,
    id: &str,
) -> Result<bool, ApiError> {
    let req = pb::ProfileRequest { user_id: of };
    match state.backend.call(user, PbBody::Profile(req)).await? {
        Some(PbBody::ProfileResult(r)) => Ok(r.profile.is_some_and(|p| p.avatar == id)),
        _ => Err(ApiError::internal("unexpected answer to a profile request")),
    }
}

/// Reads entry `seq` of `conversation_id` as `user` (the domain refuses a
/// non-member) and tells whether its message carries media `id`.
async fn carried_by(
    state: &ApiState,
    user: &str,
    conversation_id: String,
    seq: u64,
    id: &str,
) -> Result<bool, ApiError> {
    let req = pb::HistoryRequest {
        conversation_id,
        before_seq: seq.saturating_add(1),
        limit: 1,
        thread_root_seq: 0,
    };
    let Some(PbBody::HistoryResult(page)) = state.backend.call(user, PbBody::History(req)).await?
    else {
        return Err(ApiError::internal("unexpected answer to a history request"));
    };
    Ok(page.entries.iter().any(|e| {
        e.seq == seq
            && matches!(&e.body, Some(pb::entry::Body::Message(m))
                if m.content.as_ref().and_then(media_ref).is_some_and(|r| r.media_id == id))
    }))
}

/// The media a message's content carries, if any.
pub fn media_ref(c: &pb::Content) -> Option<&pb::MediaRef> {
    use pb::content::Kind as K;
    match c.kind.as_ref()? {
        K::Image(i) => i.media.as_ref(),
        K::File(f) => f.media.as_ref(),
        K::Voice(v) => v.media.as_ref(),
        K::Video(v) => v.media.as_ref(),
        _ => None,
    }
}
