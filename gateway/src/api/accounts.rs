//! Local accounts, for deployments without an identity provider:
//! `POST /api/v1/accounts/register` (a user id and a password) and
//! `POST /api/v1/accounts/login` (the same, answered with a Tern token the
//! TCP and WebSocket listeners accept). Both are public: they take no API
//! key. Off unless `[accounts] enabled = true` (then both answer 404).
//!
//! Passwords are kept as argon2id hashes (PHC strings, OWASP parameters by
//! default) in the chat store ([`Credentials`]). Hashing and verifying run
//! on tokio's blocking threads, at most `hashing_concurrency` at once, never
//! on the HTTP runtime's async threads. A wrong password and an unknown
//! user answer the same 401 `AUTH_FAILED` after the same work: an unknown
//! user is verified against a hash made at start with the same parameters.
//!
//! Attempts are counted per client IP (register and login) and per user id
//! (login) in fixed one-minute windows, in memory, for at most
//! `tracked_max` keys; over the limit, or with the table full, the answer
//! is 429 `RATE_LIMITED` with `Retry-After`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _,
    password_hash::{SaltString, rand_core::OsRng},
};
use axum::{Extension, Json, extract::ConnectInfo, http::StatusCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tern_backend::store::Credentials;
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, error::ErrorBody};
use crate::{auth::Signer, config::AccountsSettings};

/// The account routes (public: no API key).
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
}

/// How long a call waits for a hashing slot before 503.
const HASH_WAIT: Duration = Duration::from_secs(5);
/// The window of the attempt counters.
const WINDOW: Duration = Duration::from_secs(60);

/// Local accounts: settings, store, signer and the attempt counters.
pub struct Accounts {
    settings: AccountsSettings,
    store: Arc<dyn Credentials>,
    signer: Signer,
    argon2: Argon2<'static>,
    /// Hash of a random password, verified for unknown users.
    decoy: String,
    hashing: Arc<Semaphore>,
    limits: Mutex<Limiter>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why local accounts could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The argon2 parameters are out of the crate's range.
    #[error("accounts.argon2_*: {0}")]
    Params(String),
    /// No key to sign tokens with.
    #[error("accounts need a signing key: {0}")]
    Key(#[from] crate::auth::KeyError),
}

impl Accounts {
    /// Local accounts over `store`, signing with `signer`. Computes the
    /// decoy hash (one argon2id hash: call it off the async threads).
    pub fn new(
        settings: AccountsSettings,
        store: Arc<dyn Credentials>,
        signer: Signer,
    ) -> Result<Self, AccountsError> {
        let params = argon2::Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            1,
            None,
        )
        .map_err(|e| AccountsError::Params(e.to_string()))?;
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let random = SaltString::generate(&mut OsRng);
        let decoy = argon2
            .hash_password(
                random.as_str().as_bytes(),
                &SaltString::generate(&mut OsRng),
            )
            .map_err(|e| AccountsError::Params(e.to_string()))?
            .to_string();
        Ok(Self {
            hashing: Arc::new(Semaphore::new(settings.hashing_concurrency)),
            limits: Mutex::new(Limiter::new(settings.tracked_max)),
            settings,
            store,
            signer,
            argon2,
            decoy,
        })
    }

    /// 429 when `key` used up its attempts this window.
    fn count(&self, key: LimitKey, per_window: u32) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut limits = self.limits.lock();
        limits.hit(key, per_window, now).map_err(|wait| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many attempts; retry later",
            );
            e.retry_after_s = Some(u32::try_from(wait.as_secs().max(1)).unwrap_or(60));
            e
        })
    }

    fn check_password(&self, password: &str) -> Result<(), ApiError> {
        if password.len() > self.settings.password_bytes_max {
            return Err(ApiError::invalid(format!(
                "password: longer than {} bytes",
                self.settings.password_bytes_max
            )));
        }
        if password.chars().count() < self.settings.password_chars_min {
            return Err(ApiError::invalid(format!(
                "password: shorter than {} characters",
                self.settings.password_chars_min
            )));
        }
        Ok(())
    }

    /// Runs `f` on a blocking thread holding a hashing slot.
    async fn hashing<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(HASH_WAIT, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::overloaded("password hashing is busy"))?
            .map_err(|_| ApiError::overloaded("stopping"))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&me)
        })
        .await
        .map_err(|e| ApiError::internal(format!("hashing task: {e}")))
    }
}

/// What an attempt is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    Ip(IpAddr),
    User(String),
}

/// Fixed-window attempt counters for at most `max` keys.
#[derive(Debug)]
struct Limiter {
    max: usize,
    windows: HashMap<LimitKey, (Instant, u32)>,
}

impl Limiter {
    fn new(max: usize) -> Self {
        Self {
            max,
            windows: HashMap::new(),
        }
    }

    /// Counts one attempt of `key`; `Err(wait)` when over `per_window`.
    fn hit(&mut self, key: LimitKey, per_window: u32, now: Instant) -> Result<(), Duration> {
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.windows.len() >= self.max {
                // Full of live windows: refuse new keys until one ends.
                let oldest = self.windows.values().map(|(s, _)| *s).min().unwrap_or(now);
                return Err(WINDOW.saturating_sub(now.duration_since(oldest)));
            }
        }
        let (start, count) = self.windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= per_window {
            return Err(WINDOW.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

/// A user id and a password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountRequest {
    /// The user id (`[A-Za-z0-9._@-]`, 1..=64 bytes).
    pub user_id: String,
    /// The password: at least `password_chars_min` characters, at most
    /// `password_bytes_max` bytes.
    pub password: String,
}

/// A registered account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The user id.
    pub user_id: String,
}

/// A Tern token for the TCP and WebSocket listeners.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoggedIn {
    /// The user id.
    pub user_id: String,
    /// The token (a JWT): the `token` of the `Auth` frame.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

fn enabled(ext: Option<Extension<Arc<Accounts>>>) -> Result<Arc<Accounts>, ApiError> {
    ext.map(|Extension(a)| a)
        .ok_or_else(|| ApiError::not_found("local accounts are off ([accounts] enabled = false)"))
}

fn check_user(id: &str) -> Result<(), ApiError> {
    super::ops::check_user("user_id", id)?;
    // Local accounts are the default tenant's (docs/tenants.md): a tenant's
    // users come with their tenant's tokens.
    if id.contains(tern_protocol::ids::TENANT_SEPARATOR) {
        return Err(ApiError::invalid(
            "user_id: local accounts belong to the default tenant (no `~`)",
        ));
    }
    Ok(())
}

/// Registers a local account.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/register",
    tag = "accounts",
    security(()),
    request_body = AccountRequest,
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 400, description = "Empty or invalid user id, password too short or too long", body = ErrorBody),
        (status = 404, description = "Local accounts are off", body = ErrorBody),
        (status = 409, description = "The user id is taken (ALREADY_EXISTS)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this IP; retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "Hashing busy; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn register(
    accounts: Option<Extension<Arc<Accounts>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<AccountRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let accounts = enabled(accounts)?;
    accounts.count(
        LimitKey::Ip(peer.ip()),
        accounts.settings.attempts_per_ip_per_minute,
    )?;
    let Json(req) = body?;
    check_user(&req.user_id)?;
    accounts.check_password(&req.password)?;
    let user = req.user_id.clone();
    let created = accounts
        .hashing(move |a| -> Result<bool, ApiError> {
            // Taken ids answer before the costly hash.
            if a.store
                .credential(&req.user_id)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .is_some()
            {
                return Ok(false);
            }
            let phc = a
                .argon2
                .hash_password(req.password.as_bytes(), &SaltString::generate(&mut OsRng))
                .map_err(|e| ApiError::internal(e.to_string()))?
                .to_string();
            a.store
                .create_credential(&req.user_id, &phc)
                .map_err(|e| ApiError::internal(e.to_string()))
        })
        .await??;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_EXISTS",
            format!("user {user:?} is already registered"),
        ));
    }
    Ok((StatusCode::CREATED, Json(Registered { user_id: user })))
}

/// Logs in to a local account: answers a Tern token.
#[utoipa::path(
    post,
    path = "/api/v1/accounts/login",
    tag = "accounts",
    security(()),
    request_body = AccountRequest,
    responses(
        (status = 200, description = "A token for the TCP and WebSocket listeners", body = LoggedIn),
        (status = 400, description = "Empty or invalid user id, or an oversized password", body = ErrorBody),
        (status = 401, description = "Unknown user or wrong password (AUTH_FAILED, the same answer for both)", body = ErrorBody),
        (status = 404, description = "Local accounts are off", body = ErrorBody),
        (status = 429, description = "Too many attempts from this IP or for this user; retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "Hashing busy; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn login(
    accounts: Option<Extension<Arc<Accounts>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<AccountRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<LoggedIn>, ApiError> {
    let accounts = enabled(accounts)?;
    accounts.count(
        LimitKey::Ip(peer.ip()),
        accounts.settings.attempts_per_ip_per_minute,
    )?;
    let Json(req) = body?;
    check_user(&req.user_id)?;
    if req.password.is_empty() || req.password.len() > accounts.settings.password_bytes_max {
        return Err(ApiError::invalid(format!(
            "password: 1..={} bytes",
            accounts.settings.password_bytes_max
        )));
    }
    accounts.count(
        LimitKey::User(req.user_id.clone()),
        accounts.settings.attempts_per_user_per_minute,
    )?;
    let user = req.user_id.clone();
    let ok = accounts
        .hashing(move |a| -> Result<bool, ApiError> {
            let stored = a
                .store
                .credential(&req.user_id)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            // An unknown user costs the same verification as a known one.
            let phc = stored.as_deref().unwrap_or(&a.decoy);
            let hash = PasswordHash::new(phc)
                .map_err(|e| ApiError::internal(format!("stored hash: {e}")))?;
            let matches = a
                .argon2
                .verify_password(req.password.as_bytes(), &hash)
                .is_ok();
            Ok(matches && stored.is_some())
        })
        .await??;
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_FAILED",
            "unknown user or wrong password",
        ));
    }
    let ttl = accounts.settings.token_ttl_secs;
    let token = accounts
        .signer
        .mint(&user, ttl)
        .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    Ok(Json(LoggedIn {
        user_id: user,
        token,
        expires_in: ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limiter refuses the attempt past the limit with the rest of the
    /// window, starts a new window after a minute, and, full of live keys,
    /// refuses new keys instead of growing.
    #[test]
    fn limiter_counts_per_window_and_stays_bounded() {
        let mut l = Limiter::new(2);
        let t0 = Instant::now();
        let u = |s: &str| LimitKey::User(s.into());
        assert!(l.hit(u("a"), 2, t0).is_ok());
        assert!(l.hit(u("a"), 2, t0).is_ok());
        let wait = l.hit(u("a"), 2, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.hit(u("a"), 2, t0 + WINDOW).is_ok());
        assert!(l.hit(u("b"), 2, t0 + WINDOW).is_ok());
        assert!(l.hit(u("c"), 2, t0 + WINDOW).is_err());
        assert_eq!(l.windows.len(), 2);
        assert!(l.hit(u("c"), 2, t0 + WINDOW * 2).is_ok());
        assert!(l.windows.len() <= 2);
    }
}
