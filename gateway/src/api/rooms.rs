//! Rooms and broadcast channels (scope `rooms`; docs/protocol.md, "Rooms"):
//! create one for an owner, read its record, post to it as a system or
//! bot sender, read its recent posts, delete it. Each call is the client request of
//! the same name run on the backend worker of the user it acts as, so the
//! domain's rules, the durable commit and the fan-out to every joined
//! connection (on every shard and node) are those of a client's request.
//! A `from` listed in `[api_ops] system_users` posts with operator rights
//! (also in a broadcast channel it does not administer); any other `from`
//! follows the room's rules as that user. Reads and deletions act as the
//! first system user, with operator rights. The server API is trusted: its posts skip the content filter and
//! the before-send hook, and are `room.posted` events like any post.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tern_protocol::{
    ids,
    pb::{self, frame::Body},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, ApiState, Authorized, Scope, error::ErrorBody, messages::MessageContent,
    ops::check_user,
};

/// The room routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_room))
        .routes(routes!(get_room, delete_room))
        .routes(routes!(post_to_room, room_posts))
}

/// Who posts in a room.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Every user posts.
    #[default]
    Chat,
    /// Only the owner and the admins post (a broadcast channel).
    Broadcast,
}

/// A room to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// Its id (1..=64 bytes of `[A-Za-z0-9._@-]`); taken: 409.
    pub room_id: String,
    /// Display name, at most 256 bytes (the backend's short text limit;
    /// clients are held to `Limits.label_bytes_max`, 128 by default).
    #[serde(default)]
    pub name: String,
    /// `chat` (the default) or `broadcast`.
    #[serde(default)]
    pub kind: RoomKind,
    /// The owner (it may delete the room and post in a broadcast channel);
    /// left out: the first of `[api_ops] system_users`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Who may post in a broadcast channel besides the owner, at most 16.
    #[serde(default)]
    pub admins: Vec<String>,
}

/// A room's record.
#[derive(Debug, Serialize, ToSchema)]
pub struct Room {
    /// Its id.
    pub room_id: String,
    /// The conversation id its entries carry (`r:<room_id>`).
    pub conversation_id: String,
    /// Display name.
    pub name: String,
    /// `chat` or `broadcast`.
    pub kind: RoomKind,
    /// The creator.
    pub owner: String,
    /// Who may post in a broadcast channel besides the owner.
    pub admins: Vec<String>,
    /// When it was created (unix ms).
    pub created_ms: u64,
    /// The seq of its newest post; 0: none yet.
    pub last_seq: u64,
}

/// A post to a room.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostToRoom {
    /// The user it is posted as; left out: the first of `[api_ops]
    /// system_users`.
    #[serde(default)]
    pub from: Option<String>,
    /// What it says.
    pub content: MessageContent,
    /// Echoed in the entry (`client_msg_id`); not deduplicated: a retried
    /// call is a second post. Empty or an id.
    #[serde(default)]
    pub client_msg_id: String,
}

/// The stored post.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomPosted {
    /// The room.
    pub room_id: String,
    /// The post's seq in the room.
    pub seq: u64,
}

/// A deleted room.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomDeleted {
    /// The room.
    pub room_id: String,
    /// Always true (a room that was not there is 404).
    pub deleted: bool,
}

/// Which posts to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PostsPage {
    /// Posts with a seq strictly below this; left out: up to the newest.
    pub before_seq: Option<u64>,
    /// At most this many, the newest of them; left out or above the kept
    /// window: the whole window.
    pub limit: Option<u32>,
}

/// A room's recent posts, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomPosts {
    /// The room.
    pub room_id: String,
    /// `{seq, sender, sender_device, client_msg_id, time_ms, content}`,
    /// in increasing seq; `content` as in the history API.
    #[schema(value_type = Vec<Object>)]
    pub posts: Vec<Value>,
}

/// Create a room or a broadcast channel.
///
/// Created as if its owner did it (`room_create`). Nobody joins it here:
/// clients join with `room_join`.
#[utoipa::path(
    post,
    path = "/api/v1/rooms",
    tag = "rooms",
    request_body = CreateRoom,
    responses(
        (status = 200, description = "Created", body = Room),
        (status = 400, description = "Invalid argument (ids, name, more than 16 admins)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `rooms` scope", body = ErrorBody),
        (status = 409, description = "The room id is taken", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn create_room(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<CreateRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Room>, ApiError> {
    auth.require(Scope::Rooms)?;
    let Json(r) = body?;
    // The room's tenant's operator by default (docs/tenants.md).
    let owner = r
        .owner
        .unwrap_or_else(|| state.ops.operator_in(ids::tenant_of(&r.room_id)));
    check_user("owner", &owner)?;
    auth.confine("owner", &owner)?;
    let kind = match r.kind {
        RoomKind::Chat => pb::RoomKind::Chat,
        RoomKind::Broadcast => pb::RoomKind::Broadcast,
    };
    let create = Body::RoomCreate(pb::RoomCreate {
        room_id: r.room_id,
        name: r.name,
        kind: kind as i32,
        admins: r.admins,
    });
    match state.backend.call_admin(&owner, create).await? {
        Some(Body::RoomInfoResult(pb::RoomInfoResult { room: Some(room) })) => {
            Ok(Json(room_json(room)))
        }
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// A room's record.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room_id}",
    tag = "rooms",
    params(("room_id" = String, Path, description = "The room")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 400, description = "Not a room id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `rooms` scope", body = ErrorBody),
        (status = 404, description = "No such room (or it was deleted)", body = ErrorBody),
    ),
)]
async fn get_room(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(room_id): Path<String>,
) -> Result<Json<Room>, ApiError> {
    auth.require(Scope::Rooms)?;
    let operator = state.ops.operator_in(ids::tenant_of(&room_id));
    let ask = Body::RoomInfo(pb::RoomInfoRequest { room_id });
    match state.backend.call_admin(&operator, ask).await? {
        Some(Body::RoomInfoResult(pb::RoomInfoResult { room: Some(room) })) => {
            Ok(Json(room_json(room)))
        }
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Delete a room.
///
/// As its owner would (`room_delete`), with operator rights: the record
/// and the recent posts are removed from the store, every joined
/// connection (on every shard and node) gets `room_closed` and is
/// unsubscribed, and later calls naming the room are 404.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room_id}",
    tag = "rooms",
    params(("room_id" = String, Path, description = "The room")),
    responses(
        (status = 200, description = "Deleted", body = RoomDeleted),
        (status = 400, description = "Not a room id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `rooms` scope", body = ErrorBody),
        (status = 404, description = "No such room (or it was deleted)", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn delete_room(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(room_id): Path<String>,
) -> Result<Json<RoomDeleted>, ApiError> {
    auth.require(Scope::Rooms)?;
    let ask = Body::RoomDelete(pb::RoomDelete {
        room_id: room_id.clone(),
    });
    match state
        .backend
        .call_admin(&state.ops.operator_in(ids::tenant_of(&room_id)), ask)
        .await?
    {
        Some(Body::Ok(_)) => Ok(Json(RoomDeleted {
            room_id,
            deleted: true,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Post to a room as a user (a system user by default).
///
/// Stored (durably, with the room's next seq), then pushed once to every
/// connection that joined the room, on every shard and node, as a
/// client's `room_post` is.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room_id}/posts",
    tag = "rooms",
    params(("room_id" = String, Path, description = "The room")),
    request_body = PostToRoom,
    responses(
        (status = 200, description = "Stored", body = RoomPosted),
        (status = 400, description = "Invalid argument (content, ids)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `rooms` scope, or `BROADCAST_ONLY`: `from` is neither a system user nor an owner or admin of this broadcast channel", body = ErrorBody),
        (status = 404, description = "No such room (or it was deleted)", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn post_to_room(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(room_id): Path<String>,
    body: Result<Json<PostToRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<RoomPosted>, ApiError> {
    auth.require(Scope::Rooms)?;
    let Json(p) = body?;
    let from = p
        .from
        .unwrap_or_else(|| state.ops.operator_in(ids::tenant_of(&room_id)));
    check_user("from", &from)?;
    auth.confine("from", &from)?;
    let post = Body::RoomPost(pb::RoomPost {
        room_id: room_id.clone(),
        content: Some(p.content.into_pb()?),
        client_msg_id: p.client_msg_id,
    });
    match state.ops.call_from(&state.backend, &from, post).await? {
        Some(Body::Ok(ok)) => Ok(Json(RoomPosted {
            room_id,
            seq: ok.seq,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// A room's recent posts.
///
/// Only the kept window (the newest `[rooms] recent_max`) is ever
/// served, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room_id}/posts",
    tag = "rooms",
    params(("room_id" = String, Path, description = "The room"), PostsPage),
    responses(
        (status = 200, description = "The recent posts", body = RoomPosts),
        (status = 400, description = "Not a room id, or a bad query", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `rooms` scope", body = ErrorBody),
        (status = 404, description = "No such room (or it was deleted)", body = ErrorBody),
    ),
)]
async fn room_posts(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(room_id): Path<String>,
    page: Result<Query<PostsPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RoomPosts>, ApiError> {
    auth.require(Scope::Rooms)?;
    let Query(page) = page.map_err(|e| ApiError::invalid(e.body_text()))?;
    let ask = Body::RoomHistory(pb::RoomHistoryRequest {
        room_id: room_id.clone(),
        before_seq: page.before_seq.unwrap_or(0),
        limit: page.limit.unwrap_or(0),
    });
    match state
        .backend
        .call_admin(&state.ops.operator_in(ids::tenant_of(&room_id)), ask)
        .await?
    {
        Some(Body::RoomHistoryResult(r)) => Ok(Json(RoomPosts {
            room_id,
            posts: r.entries.iter().map(post_json).collect(),
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

fn room_json(r: pb::RoomInfo) -> Room {
    let kind = if r.kind == pb::RoomKind::Broadcast as i32 {
        RoomKind::Broadcast
    } else {
        RoomKind::Chat
    };
    Room {
        conversation_id: tern_protocol::ids::room_conversation(&r.room_id),
        room_id: r.room_id,
        name: r.name,
        kind,
        owner: r.owner,
        admins: r.admins,
        created_ms: r.created_ms,
        last_seq: r.last_seq,
    }
}

/// One room message as the API shows it (content as webhooks show it).
fn post_json(e: &pb::Entry) -> Value {
    let content = match &e.body {
        Some(pb::entry::Body::Message(m)) => m
            .content
            .as_ref()
            .map_or(Value::Null, crate::webhooks::events::content_json),
        _ => Value::Null,
    };
    serde_json::json!({
        "seq": e.seq,
        "sender": e.sender,
        "sender_device": e.sender_device,
        "client_msg_id": e.client_msg_id,
        "time_ms": e.time_ms,
        "content": content,
    })
}
