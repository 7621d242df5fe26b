//! Users (scope `users`): profiles, bans, kicks, a user's online devices.
//!
//! Users are not registered in Tern (the identity service issues their
//! tokens), so any valid user id may be banned or given a profile; a user
//! "exists" for `GET .../profile` once a profile was stored.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use tern_protocol::pb::{self, frame::Body};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, ApiState, Authorized, Scope,
    error::ErrorBody,
    ops::{check_user, check_user as check_device},
};

/// The user routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_profile, put_profile))
        .routes(routes!(ban, unban))
        .routes(routes!(kick))
        .routes(routes!(devices))
        .routes(routes!(logout_device))
        .routes(routes!(free_seat))
}

/// A user's profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    /// The user.
    pub user_id: String,
    /// Display name.
    pub nickname: String,
    /// A URL or media id.
    pub avatar: String,
    /// Free text.
    pub bio: String,
}

/// Fields to change; those left out keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileChange {
    /// Display name.
    #[serde(default)]
    pub nickname: Option<String>,
    /// A URL or media id.
    #[serde(default)]
    pub avatar: Option<String>,
    /// Free text.
    #[serde(default)]
    pub bio: Option<String>,
}

/// A ban to set.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// Why (kept with the ban, for operators).
    #[serde(default)]
    pub reason: String,
}

/// A kick to make.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    /// Only this device; left out: every device of the user.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// What a user-state call did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserState {
    /// The user.
    pub user_id: String,
    /// Whether the user is banned now.
    pub banned: bool,
}

/// What a kick did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Kicked {
    /// The user.
    pub user_id: String,
    /// The devices connected when the kick was made, on every live node
    /// (the kick reaches those on other nodes through the cluster's
    /// delivery channel), sorted.
    pub devices: Vec<String>,
}

/// The devices of a user connected to any live node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Devices {
    /// The user.
    pub user_id: String,
    /// The node that answered (each device names the node holding it).
    pub node_id: String,
    /// Device ids, sorted.
    pub devices: Vec<String>,
    /// The same devices with what they said at login, oldest login first
    /// (at most 256).
    pub details: Vec<DeviceDetail>,
}

/// One connected device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device id.
    pub device_id: String,
    /// `Auth.platform`: `ios`, `android`, `web`, `desktop`, `cli`, `bot`
    /// or `unspecified`.
    pub platform: String,
    /// The node that holds its connection.
    pub node_id: String,
    /// When it logged in, Unix milliseconds.
    pub login_time_ms: u64,
    /// `Auth.client_version`.
    pub client_version: String,
}

/// What a logout did.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedOut {
    /// The user.
    pub user_id: String,
    /// The device, kicked with `LOGGED_OUT`.
    pub device_id: String,
}

/// A user's profile.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/profile",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The profile", body = Profile),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
        (status = 404, description = "No profile stored for this user", body = ErrorBody),
    ),
)]
async fn get_profile(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let p = read_profile(&state, &user_id).await?;
    if p.nickname.is_empty() && p.avatar.is_empty() && p.bio.is_empty() {
        return Err(ApiError::not_found(format!("no profile for {user_id:?}")));
    }
    Ok(Json(p))
}

/// Create or update a user's profile.
///
/// Stored as if the user changed it from a device. Answers the profile as
/// stored.
#[utoipa::path(
    put,
    path = "/api/v1/users/{user_id}/profile",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    request_body = ProfileChange,
    responses(
        (status = 200, description = "The profile as stored", body = Profile),
        (status = 400, description = "Bad user id or a field too long", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
    ),
)]
async fn put_profile(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
    body: Result<Json<ProfileChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Profile>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let Json(c) = body?;
    let update = pb::ProfileUpdate {
        nickname: c.nickname,
        avatar: c.avatar,
        bio: c.bio,
    };
    // As an operator: a banned user's profile can still be managed.
    state
        .backend
        .call_admin(&user_id, Body::ProfileUpdate(update))
        .await?;
    Ok(Json(read_profile(&state, &user_id).await?))
}

async fn read_profile(state: &ApiState, user_id: &str) -> Result<Profile, ApiError> {
    let ask = Body::Profile(pb::ProfileRequest {
        user_id: user_id.to_owned(),
    });
    match state.backend.call_admin(user_id, ask).await? {
        Some(Body::ProfileResult(r)) => {
            let p = r.profile.unwrap_or_default();
            Ok(Profile {
                user_id: user_id.to_owned(),
                nickname: p.nickname,
                avatar: p.avatar,
                bio: p.bio,
            })
        }
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Ban a user.
///
/// Stored durably; every device of the user (on every node) gets a `Kick`
/// with reason `BANNED` and is closed; later logins get `Kick` `BANNED`
/// right after `Welcome` and are closed, and any request the device sent
/// meanwhile is refused, until the ban is lifted.
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/ban",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    request_body = BanRequest,
    responses(
        (status = 200, description = "Banned", body = UserState),
        (status = 400, description = "Bad user id or reason too long", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
    ),
)]
async fn ban(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
    body: Result<Json<BanRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UserState>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let Json(b) = body?;
    let kick = pb::Kick {
        reason: pb::KickReason::Banned as i32,
        message: b.reason,
        ..Default::default()
    };
    // Runs on the user's own worker, in order with their requests.
    state.backend.call_admin(&user_id, Body::Kick(kick)).await?;
    tracing::warn!(user = %user_id, key = %auth.key_name, "user banned");
    Ok(Json(UserState {
        user_id,
        banned: true,
    }))
}

/// Lift a user's ban.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user_id}/ban",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Not banned (any more)", body = UserState),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
    ),
)]
async fn unban(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
) -> Result<Json<UserState>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let lift = pb::Kick {
        reason: pb::KickReason::Unspecified as i32,
        ..Default::default()
    };
    state.backend.call_admin(&user_id, Body::Kick(lift)).await?;
    tracing::info!(user = %user_id, key = %auth.key_name, "user unbanned");
    Ok(Json(UserState {
        user_id,
        banned: false,
    }))
}

/// Kick one device of a user, or all.
///
/// The devices get a `Kick` with reason `ADMIN` and are closed once it is
/// written. They may log in again (ban the user to keep them out).
#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/kick",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    request_body = KickRequest,
    responses(
        (status = 200, description = "Kicked", body = Kicked),
        (status = 400, description = "Bad user or device id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
    ),
)]
async fn kick(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
    body: Result<Json<KickRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Kicked>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let Json(k) = body?;
    let device = k.device_id.unwrap_or_default();
    if !device.is_empty() {
        check_device("device_id", &device)?;
    }
    let mut devices: Vec<String> = state
        .ops
        .devices_everywhere(
            &state.backend,
            &state.node_id,
            &user_id,
            state_timeout(&state),
        )
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .filter(|d| device.is_empty() || *d == device)
        .collect();
    devices.sort_unstable();
    let kick = pb::Kick {
        reason: pb::KickReason::Admin as i32,
        message: device,
        ..Default::default()
    };
    state.backend.call_admin(&user_id, Body::Kick(kick)).await?;
    tracing::info!(user = %user_id, key = %auth.key_name, ?devices, "user kicked");
    Ok(Json(Kicked { user_id, devices }))
}

/// The devices of a user connected to any live node.
///
/// This node's are asked of the user's owner shard; with several nodes
/// (the Redis store) those on the other live nodes are read from Redis,
/// where each login's facts are kept beside its route. If Redis does not
/// answer, this node's alone are listed.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/devices",
    tag = "users",
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Connected devices on every live node (empty: none)", body = Devices),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
    ),
)]
async fn devices(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
) -> Result<Json<Devices>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let entries = state
        .ops
        .devices_everywhere(
            &state.backend,
            &state.node_id,
            &user_id,
            state_timeout(&state),
        )
        .await?;
    let mut devices: Vec<String> = entries.iter().map(|d| d.device_id.clone()).collect();
    devices.sort_unstable();
    let details = entries
        .into_iter()
        .map(|d| DeviceDetail {
            platform: platform_name(d.platform()).to_owned(),
            device_id: d.device_id,
            node_id: d.node_id,
            login_time_ms: d.login_time_ms,
            client_version: d.client_version,
        })
        .collect();
    Ok(Json(Devices {
        user_id,
        node_id: state.node_id.to_string(),
        devices,
        details,
    }))
}

/// Log out one device of a user.
///
/// The device gets a `Kick` with reason `LOGGED_OUT` and is closed once it
/// is written; its logins with a token issued no later than now are refused
/// (`DEVICE_LOGGED_OUT`) for `[login] logged_out_block_ms`
/// (docs/protocol.md, "Devices and login policies"). The device may be
/// connected to any live node: with several nodes (the Redis store) a
/// device on another node is sent a logout record there, and the logout is
/// remembered in Redis so that every node refuses the old token.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user_id}/devices/{device_id}",
    tag = "users",
    params(
        ("user_id" = String, Path, description = "The user"),
        ("device_id" = String, Path, description = "The device"),
    ),
    responses(
        (status = 200, description = "Logged out", body = LoggedOut),
        (status = 400, description = "Bad user or device id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope", body = ErrorBody),
        (status = 404, description = "The device is not connected to any live node", body = ErrorBody),
        (status = 500, description = "Several nodes: the device is not on this node and Redis did not answer (nothing was done)", body = ErrorBody),
    ),
)]
async fn logout_device(
    State(state): State<ApiState>,
    auth: Authorized,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<LoggedOut>, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    check_device("device_id", &device_id)?;
    let found = state
        .ops
        .logout_everywhere(&state.backend, &user_id, &device_id, state_timeout(&state))
        .await?;
    if !found {
        return Err(ApiError::not_found(format!(
            "device {device_id:?} of {user_id:?} is not connected"
        )));
    }
    tracing::info!(user = %user_id, device = %device_id, key = %auth.key_name, "device logged out");
    Ok(Json(LoggedOut { user_id, device_id }))
}

/// The lower-case name of a platform, as the API shows it.
fn platform_name(p: pb::Platform) -> &'static str {
    match p {
        pb::Platform::Unspecified => "unspecified",
        pb::Platform::Ios => "ios",
        pb::Platform::Android => "android",
        pb::Platform::Web => "web",
        pb::Platform::Desktop => "desktop",
        pb::Platform::Cli => "cli",
        pb::Platform::Bot => "bot",
    }
}

/// How long a shard may take to answer.
fn state_timeout(_state: &ApiState) -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

/// Free a user's seat of their tenant (docs/tenants.md, "Limits").
///
/// With `[chat] tenant_users_max`, a user holds a seat from their first
/// login; this gives it back (the user's next login takes one again, if
/// one is free). Devices already connected stay.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{user_id}/seat",
    tag = "users",
    params(("user_id" = String, Path, description = "The user, of a tenant")),
    responses(
        (status = 204, description = "Freed"),
        (status = 400, description = "Bad user id, or one of the default tenant (no seats)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `users` scope, or is another tenant's", body = ErrorBody),
        (status = 404, description = "The user holds no seat", body = ErrorBody),
    ),
)]
async fn free_seat(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(user_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    auth.require(Scope::Users)?;
    check_user("user_id", &user_id)?;
    let tenant = tern_protocol::ids::tenant_of(&user_id).to_owned();
    if tenant.is_empty() {
        return Err(ApiError::invalid(
            "user_id: the default tenant has no seats (no `<tenant>~`)",
        ));
    }
    let org = state.org.clone().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "ORG_UNAVAILABLE",
            "this server keeps no seats",
        )
    })?;
    let user = user_id.clone();
    let freed = super::blocking(move || org.free_seat(&tenant, &user)).await?;
    if !freed {
        return Err(ApiError::not_found(format!("{user_id:?} holds no seat")));
    }
    tracing::info!(user = %user_id, key = %auth.key_name, "seat freed");
    Ok(axum::http::StatusCode::NO_CONTENT)
}
