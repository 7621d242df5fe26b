//! Reads (scope `read`): a conversation's history, paged backwards; the
//! presence of many users in one call; connection counts of this node by
//! shard.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tern_protocol::{
    ids::{self, ConversationId},
    pb::{self, frame::Body},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Authorized, Scope, error::ErrorBody, ops::check_user};

/// The read routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(presence))
        .routes(routes!(online))
}

/// Which page of history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryPage {
    /// Entries with a seq strictly below this; left out: from the newest.
    pub before_seq: Option<u64>,
    /// At most this many (capped by the server's page size).
    pub limit: Option<u32>,
}

/// A page of a conversation's log, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// The conversation.
    pub conversation_id: String,
    /// Entries in increasing seq: `{seq, sender, sender_device,
    /// client_msg_id, time_ms, type, ...}` where `type` is `message` (with
    /// `content`, `mentions`, `reply_to_seq`, `recalled`, `edit_count`,
    /// `edited_at_ms`, `streaming`), `recalled` (with `recalled_seq`),
    /// `edited` (with `edited_seq`, `content`, `edit_count`, `streaming`),
    /// `read` (with `up_to_seq`) or `group_event`.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Value>,
    /// Older entries exist: ask again with `before_seq` = `next_before_seq`.
    pub more: bool,
    /// The seq of the oldest entry here (`before_seq` of the next page).
    pub next_before_seq: Option<u64>,
}

/// Users whose presence to read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// 1..=500 user ids (the server's `presence_users_max`).
    pub user_ids: Vec<String>,
}

/// Presence of each user asked, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Presences {
    /// One per user.
    pub presences: Vec<UserPresence>,
}

/// One user's presence.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPresence {
    /// The user.
    pub user_id: String,
    /// `online`, `busy`, `away` or `offline`.
    pub state: String,
    /// Their status text, if any.
    pub text: String,
    /// For `offline`: when it was last set (unix ms); 0 if never.
    pub last_seen_ms: u64,
}

/// Connections of this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Online {
    /// This node.
    pub node_id: String,
    /// Client connections open now (authenticated or not).
    pub connections: i64,
    /// The same by shard.
    pub shards: Vec<ShardCount>,
}

/// One shard's count.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardCount {
    /// Shard index.
    pub shard: usize,
    /// Connections open on it now.
    pub connections: i64,
}

/// A conversation's history, newest page first.
///
/// The whole log of any conversation (`d:<a>:<b>` or `g:<group>`), as an
/// operator reads it: recalled messages show `recalled: true` and no
/// content.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{conversation_id}/messages",
    tag = "read",
    params(
        ("conversation_id" = String, Path, description = "`d:<a>:<b>` or `g:<group>`"),
        HistoryPage,
    ),
    responses(
        (status = 200, description = "A page", body = History),
        (status = 400, description = "Bad conversation id", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
)]
async fn history(
    State(state): State<ApiState>,
    auth: Authorized,
    Path(conversation_id): Path<String>,
    page: Result<Query<HistoryPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<History>, ApiError> {
    auth.require(Scope::Read)?;
    let Query(page) = page.map_err(|e| ApiError::invalid(e.body_text()))?;
    // Read as the operator of the conversation's tenant (a bad id is the
    // domain's INVALID_ARGUMENT; the key's tenant was checked from the
    // path).
    let tenant = ConversationId::parse(&conversation_id)
        .map(|c| c.tenants()[0].to_owned())
        .unwrap_or_default();
    let ask = Body::History(pb::HistoryRequest {
        conversation_id: conversation_id.clone(),
        before_seq: page.before_seq.unwrap_or(0),
        limit: page.limit.unwrap_or(0),
        thread_root_seq: 0,
    });
    let operator = state.ops.operator_in(&tenant);
    match state.backend.call_admin(&operator, ask).await? {
        Some(Body::HistoryResult(r)) => Ok(Json(History {
            conversation_id,
            next_before_seq: r.entries.first().map(|e| e.seq),
            entries: r.entries.into_iter().map(entry_json).collect(),
            more: r.more,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Presence of many users in one call.
#[utoipa::path(
    post,
    path = "/api/v1/presence",
    tag = "read",
    request_body = PresenceQuery,
    responses(
        (status = 200, description = "One presence per user", body = Presences),
        (status = 400, description = "Bad ids, none, or more than the server's limit", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
    ),
)]
async fn presence(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<PresenceQuery>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Presences>, ApiError> {
    auth.require(Scope::Read)?;
    let Json(q) = body?;
    if q.user_ids.is_empty() {
        return Err(ApiError::invalid("user_ids is empty"));
    }
    for u in &q.user_ids {
        check_user("user_ids", u)?;
    }
    auth.confine_all("user_ids", &q.user_ids)?;
    // Asked as the operator of the first user's tenant: one tenant per
    // call (the domain refuses the others with TENANT_MISMATCH).
    let operator = state.ops.operator_in(ids::tenant_of(&q.user_ids[0]));
    let ask = Body::PresenceQuery(pb::PresenceQuery {
        user_ids: q.user_ids,
    });
    match state.backend.call_admin(&operator, ask).await? {
        Some(Body::PresenceResult(r)) => Ok(Json(Presences {
            presences: r
                .presences
                .into_iter()
                .map(|p| UserPresence {
                    state: presence_name(p.state).into(),
                    user_id: p.user_id,
                    text: p.text,
                    last_seen_ms: p.last_seen_ms,
                })
                .collect(),
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Connection counts of this node, by shard (system keys only: the count
/// covers every tenant).
///
/// From the same counters as `/metrics` (`tern_shard_connections`). Other
/// nodes answer for themselves.
#[utoipa::path(
    get,
    path = "/api/v1/online",
    tag = "read",
    responses(
        (status = 200, description = "Counts", body = Online),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope, or is a tenant's key", body = ErrorBody),
    ),
)]
async fn online(State(state): State<ApiState>, auth: Authorized) -> Result<Json<Online>, ApiError> {
    auth.require(Scope::Read)?;
    auth.require_system("the node's connection count")?;
    let shards: Vec<ShardCount> = state
        .ops
        .metrics
        .iter()
        .flat_map(|m| m.shards.iter())
        .enumerate()
        .map(|(shard, m)| ShardCount {
            shard,
            connections: m.connections.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    Ok(Json(Online {
        node_id: state.node_id.to_string(),
        connections: shards.iter().map(|s| s.connections).sum(),
        shards,
    }))
}

fn presence_name(state: i32) -> &'static str {
    match pb::PresenceState::try_from(state) {
        Ok(pb::PresenceState::Online) => "online",
        Ok(pb::PresenceState::Busy) => "busy",
        Ok(pb::PresenceState::Away) => "away",
        _ => "offline",
    }
}

/// A to-do action's JSON name.
pub(crate) fn todo_action_name(action: i32) -> &'static str {
    match pb::TodoAction::try_from(action) {
        Ok(pb::TodoAction::Create) => "create",
        Ok(pb::TodoAction::Done) => "done",
        Ok(pb::TodoAction::Undo) => "undo",
        _ => "unspecified",
    }
}

/// A log entry as JSON.
fn entry_json(e: pb::Entry) -> Value {
    let mut v = json!({
        "seq": e.seq,
        "sender": e.sender,
        "sender_device": e.sender_device,
        "client_msg_id": e.client_msg_id,
        "time_ms": e.time_ms,
    });
    let extra = match e.body {
        Some(pb::entry::Body::Message(m)) => json!({
            "type": "message",
            "content": m.content.map_or(Value::Null, content_json),
            "mentions": m.mentions,
            "mention_all": m.mention_all,
            "reply_to_seq": m.reply_to_seq,
            "recalled": m.recalled,
            "edit_count": m.edit_count,
            "edited_at_ms": m.edited_at_ms,
            "streaming": m.streaming,
            "reactions": m.reactions.iter().map(|k| json!({
                "emoji": k.emoji,
                "count": k.count,
                "users": k.users,
            })).collect::<Vec<_>>(),
            "thread_root_seq": m.thread_root_seq,
            "thread": m.thread.map_or(Value::Null, |t| json!({
                "reply_count": t.reply_count,
                "last_reply_seq": t.last_reply_seq,
            })),
        }),
        Some(pb::entry::Body::Recalled(r)) => json!({"type": "recalled", "recalled_seq": r.seq}),
        Some(pb::entry::Body::Edited(x)) => json!({
            "type": "edited",
            "edited_seq": x.seq,
            "content": x.content.map_or(Value::Null, content_json),
            "edit_count": x.edit_count,
            "streaming": x.streaming,
        }),
        Some(pb::entry::Body::Read(r)) => json!({"type": "read", "up_to_seq": r.up_to_seq}),
        Some(pb::entry::Body::GroupEvent(_)) => json!({"type": "group_event"}),
        Some(pb::entry::Body::CallRecord(c)) => json!({
            "type": "call_record",
            "call_id": c.call_id,
            "outcome": call_outcome_name(c.outcome),
            "participants": c.participants,
            "answered": c.answered,
            "video": c.video,
            "started_ms": c.started_ms,
            "duration_ms": c.duration_ms,
        }),
        Some(pb::entry::Body::Reaction(r)) => json!({
            "type": "reaction",
            "reaction_seq": r.seq,
            "emoji": r.emoji,
            "removed": r.removed,
        }),
        Some(pb::entry::Body::Pin(p)) => json!({
            "type": "pin",
            "pin_seq": p.seq,
            "unpinned": p.unpinned,
        }),
        Some(pb::entry::Body::Todo(t)) => json!({
            "type": "todo",
            "todo_seq": t.seq,
            "action": todo_action_name(t.action),
            "assignees": t.assignees,
        }),
        None => json!({"type": "unknown"}),
    };
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// A call's outcome as the API names it: `completed`, `missed`, `rejected`,
/// `cancelled` (or `unspecified`).
pub(crate) fn call_outcome_name(o: i32) -> &'static str {
    match pb::CallOutcome::try_from(o).unwrap_or_default() {
        pb::CallOutcome::Unspecified => "unspecified",
        pb::CallOutcome::Completed => "completed",
        pb::CallOutcome::Missed => "missed",
        pb::CallOutcome::Rejected => "rejected",
        pb::CallOutcome::Cancelled => "cancelled",
    }
}

/// Message content as JSON, in the shape `POST /api/v1/messages` takes.
fn content_json(c: pb::Content) -> Value {
    use pb::content::Kind;
    let media = |m: Option<pb::MediaRef>| {
        let m = m.unwrap_or_default();
        json!({
            "media_id": m.media_id, "mime": m.mime, "size_bytes": m.size_bytes,
            "width": m.width, "height": m.height, "duration_ms": m.duration_ms,
        })
    };
    match c.kind {
        Some(Kind::Text(t)) => json!({"type": "text", "text": t.text}),
        Some(Kind::Image(i)) => json!({"type": "image", "media": media(i.media)}),
        Some(Kind::File(f)) => json!({"type": "file", "media": media(f.media), "name": f.name}),
        Some(Kind::Voice(v)) => json!({"type": "voice", "media": media(v.media)}),
        Some(Kind::Video(v)) => json!({"type": "video", "media": media(v.media)}),
        Some(Kind::Location(l)) => json!({
            "type": "location", "latitude": l.latitude, "longitude": l.longitude,
            "name": l.name, "address": l.address,
        }),
        Some(Kind::Custom(c)) => json!({
            "type": "custom", "custom_type": c.r#type,
            "data": String::from_utf8_lossy(&c.data),
        }),
        None => Value::Null,
    }
}
