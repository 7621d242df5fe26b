//! `POST /api/v1/messages` (one user or group), `POST
//! /api/v1/messages/batch` (a list of users, a result each), `POST
//! /api/v1/broadcasts` (every user online on this node, at a bounded
//! rate) and `PATCH /api/v1/conversations/{id}/messages/{seq}` (an edit,
//! as the message's sender). A `from` listed in `[api_ops] system_users` sends with operator
//! rights (no friendship or membership needed); any other `from` follows
//! the chat rules as that user.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use tern_protocol::{
    ids::tenant_of,
    pb::{self, frame::Body},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    ApiError, ApiState, Authorized, Scope,
    error::ErrorBody,
    ops::{check_request_id, check_user},
};

/// The message routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(send_message))
        .routes(routes!(send_batch))
        .routes(routes!(broadcast))
        .routes(routes!(edit_message))
}

/// A message to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Makes the call idempotent: a retry with the same `request_id` (and
    /// the same `from` and conversation) stores nothing new and answers the
    /// original `seq` with `duplicate: true`. 1..=64 bytes.
    pub request_id: String,
    /// The user it is sent as.
    pub from: String,
    /// A 1:1 message to this user (give this or `to_group`).
    #[serde(default)]
    pub to_user: Option<String>,
    /// A message to this group (`from` must be a member).
    #[serde(default)]
    pub to_group: Option<String>,
    /// What it says.
    pub content: MessageContent,
}

/// What a message carries.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MessageContent {
    /// Text (emoji are text).
    Text {
        /// UTF-8, at most the server's text limit.
        text: String,
    },
    /// An uploaded image.
    Image {
        /// The upload.
        media: Media,
    },
    /// An uploaded file.
    File {
        /// The upload.
        media: Media,
        /// The file's name as shown.
        #[serde(default)]
        name: String,
    },
    /// An uploaded voice clip.
    Voice {
        /// The upload.
        media: Media,
    },
    /// An uploaded video.
    Video {
        /// The upload.
        media: Media,
    },
    /// A place.
    Location {
        /// WGS 84 degrees, -90..=90.
        latitude: f64,
        /// WGS 84 degrees, -180..=180.
        longitude: f64,
        /// Place name.
        #[serde(default)]
        name: String,
        /// Address.
        #[serde(default)]
        address: String,
    },
    /// Anything your application defines; stored and delivered untouched.
    Custom {
        /// Your type name, e.g. `order-card`.
        custom_type: String,
        /// The payload, as UTF-8 text (e.g. JSON); delivered as the bytes
        /// of `Custom.data`.
        data: String,
    },
}

/// A reference to uploaded media (`MediaRef` on the wire), by the id the
/// media API returned.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// The id the upload returned.
    pub media_id: String,
    /// MIME type, e.g. `image/jpeg`.
    pub mime: String,
    /// Size in bytes.
    #[serde(default)]
    pub size_bytes: u64,
    /// Pixels (images, videos); 0 when unknown.
    #[serde(default)]
    pub width: u32,
    /// Pixels (images, videos); 0 when unknown.
    #[serde(default)]
    pub height: u32,
    /// Milliseconds (voice, video); 0 when unknown.
    #[serde(default)]
    pub duration_ms: u32,
}

impl Media {
    fn into_pb(self) -> Result<pb::MediaRef, ApiError> {
        if self.media_id.is_empty() || self.media_id.len() > 256 {
            return Err(ApiError::invalid("media.media_id: 1..=256 bytes"));
        }
        if self.mime.is_empty() || self.mime.len() > 128 {
            return Err(ApiError::invalid("media.mime: 1..=128 bytes"));
        }
        Ok(pb::MediaRef {
            media_id: self.media_id,
            mime: self.mime,
            size_bytes: self.size_bytes,
            width: self.width,
            height: self.height,
            duration_ms: self.duration_ms,
            ..Default::default()
        })
    }
}

impl MessageContent {
    /// The wire form; the domain checks sizes.
    pub fn into_pb(self) -> Result<pb::Content, ApiError> {
        use pb::content::Kind;
        let kind = match self {
            Self::Text { text } => Kind::Text(pb::Text { text }),
            Self::Image { media } => Kind::Image(pb::Image {
                media: Some(media.into_pb()?),
            }),
            Self::File { media, name } => Kind::File(pb::File {
                media: Some(media.into_pb()?),
                name,
            }),
            Self::Voice { media } => Kind::Voice(pb::Voice {
                media: Some(media.into_pb()?),
            }),
            Self::Video { media } => Kind::Video(pb::Video {
                media: Some(media.into_pb()?),
            }),
            Self::Location {
                latitude,
                longitude,
                name,
                address,
            } => {
                if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
                    return Err(ApiError::invalid(
                        "latitude must be in -90..=90 and longitude in -180..=180",
                    ));
                }
                Kind::Location(pb::Location {
                    latitude,
                    longitude,
                    name,
                    address,
                })
            }
            Self::Custom { custom_type, data } => {
                if custom_type.is_empty() || custom_type.len() > 64 {
                    return Err(ApiError::invalid("custom_type: 1..=64 bytes"));
                }
                Kind::Custom(pb::Custom {
                    r#type: custom_type,
                    data: data.into_bytes(),
                })
            }
        };
        Ok(pb::Content { kind: Some(kind) })
    }
}

/// The stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct SentMessage {
    /// The conversation it is in (`d:<a>:<b>` or `g:<group>`).
    pub conversation_id: String,
    /// Its sequence in that conversation.
    pub seq: u64,
    /// When the server stored it (unix ms).
    pub server_time_ms: u64,
    /// True when this `request_id` was sent before: nothing new was stored.
    pub duplicate: bool,
}

/// Send a message as a user.
///
/// Stored first, then pushed to every device of the recipients (and the
/// sender's own devices), exactly as if the user had sent it from a device.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body = SendMessage,
    responses(
        (status = 200, description = "Stored (or a duplicate of an earlier call)", body = SentMessage),
        (status = 400, description = "Invalid argument", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `messages` scope, or the sender may not send there", body = ErrorBody),
        (status = 404, description = "Unknown group", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn send_message(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<SendMessage>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SentMessage>, ApiError> {
    auth.require(Scope::Messages)?;
    let Json(m) = body?;
    // The domain keeps the rest of the call in `from`'s tenant.
    auth.confine("from", &m.from)?;
    let to = match (m.to_user, m.to_group) {
        (Some(u), None) => pb::send::To::UserId(u),
        (None, Some(g)) => pb::send::To::GroupId(g),
        _ => return Err(ApiError::invalid("give exactly one of to_user, to_group")),
    };
    let content = m.content.into_pb()?;
    send_one(&state, &m.from, &m.request_id, to, content)
        .await
        .map(Json)
}

/// One send as `from` (with operator rights if a system user).
async fn send_one(
    state: &ApiState,
    from: &str,
    request_id: &str,
    to: pb::send::To,
    content: pb::Content,
) -> Result<SentMessage, ApiError> {
    let send = pb::Send {
        client_msg_id: request_id.to_owned(),
        to: Some(to),
        content: Some(content),
        ..Default::default()
    };
    match state
        .ops
        .call_from(&state.backend, from, Body::Send(send))
        .await?
    {
        Some(Body::SendAck(ack)) => Ok(SentMessage {
            conversation_id: ack.conversation_id,
            seq: ack.seq,
            server_time_ms: ack.server_time_ms,
            duplicate: ack.duplicate,
        }),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// An edit of a message, made as its sender.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// Makes the call idempotent: a retry with the same `request_id` (and
    /// the same `from` and conversation) changes nothing and answers the
    /// first `edit_seq`. 1..=64 bytes.
    pub request_id: String,
    /// The message's sender: only the sender edits a message.
    pub from: String,
    /// The new content, of the same kind as the message's.
    pub content: MessageContent,
    /// More edits follow (a reply still being written); false or left out:
    /// this is the final text.
    #[serde(default)]
    pub streaming: bool,
}

/// Where an edit was stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EditedMessage {
    /// The conversation.
    pub conversation_id: String,
    /// The edited message's seq.
    pub seq: u64,
    /// The seq of the `edited` entry this edit appended (for a retried
    /// `request_id`, the first one's).
    pub edit_seq: u64,
}

/// Edit a message as its sender.
///
/// The same rules as a client's `edit` (docs/protocol.md, "Edit"): only the
/// sender, within the edit window, not a recalled message, the same kind of
/// content. The message is rewritten in place and an `edited` entry is
/// pushed to every device of the conversation.
#[utoipa::path(
    patch,
    path = "/api/v1/conversations/{conversation_id}/messages/{seq}",
    tag = "messages",
    params(
        ("conversation_id" = String, Path, description = "`d:<a>:<b>` or `g:<group>`"),
        ("seq" = u64, Path, description = "The message's seq"),
    ),
    request_body = EditMessage,
    responses(
        (status = 200, description = "Edited (or a retry of an earlier call)", body = EditedMessage),
        (status = 400, description = "Invalid argument (also: another kind of content)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `messages` scope, or `from` is not the message's sender or may not write there", body = ErrorBody),
        (status = 404, description = "No message at this seq, or it was recalled", body = ErrorBody),
        (status = 409, description = "`EDIT_WINDOW_PASSED`, or `LIMIT_REACHED` (edits of this message)", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry after `Retry-After`", body = ErrorBody),
    ),
)]
async fn edit_message(
    State(state): State<ApiState>,
    auth: Authorized,
    Path((conversation_id, seq)): Path<(String, u64)>,
    body: Result<Json<EditMessage>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EditedMessage>, ApiError> {
    auth.require(Scope::Messages)?;
    let Json(m) = body?;
    check_user("from", &m.from)?;
    auth.confine("from", &m.from)?;
    let edit = pb::EditRequest {
        conversation_id: conversation_id.clone(),
        seq,
        client_edit_id: m.request_id,
        content: Some(m.content.into_pb()?),
        streaming: m.streaming,
    };
    match state
        .ops
        .call_from(&state.backend, &m.from, Body::Edit(edit))
        .await?
    {
        Some(Body::Ok(ok)) => Ok(Json(EditedMessage {
            conversation_id,
            seq,
            edit_seq: ok.seq,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// A message to a list of users.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    /// Makes the call idempotent (also each message's `client_msg_id`).
    pub request_id: String,
    /// The user it is sent as (a system user needs no friendship).
    pub from: String,
    /// 1..=`[api_ops] recipients_max` user ids; repeats are sent once.
    pub to_users: Vec<String>,
    /// What it says.
    pub content: MessageContent,
}

/// The outcome for each recipient, in the order given.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// One per distinct recipient.
    pub results: Vec<RecipientResult>,
    /// True when this `request_id` was answered before: this is that
    /// answer, and nothing was sent now.
    pub duplicate: bool,
}

/// What became of one recipient's message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecipientResult {
    /// The recipient.
    pub to_user: String,
    /// Stored: where and at which seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<SentMessageView>,
    /// Refused: the error code and message (same codes as error bodies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<super::error::ErrorDetail>,
}

/// A stored message (in batch results).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SentMessageView {
    /// The conversation.
    pub conversation_id: String,
    /// Its seq there.
    pub seq: u64,
    /// True when that conversation already had this request id.
    pub duplicate: bool,
}

/// Send one message to each of a list of users.
///
/// One call, one result per recipient (a refusal for one does not stop the
/// others). Each message is its own 1:1 conversation with `from`, with
/// `request_id` as its `client_msg_id`; a replay of the `request_id` answers
/// the remembered result with `duplicate: true` and sends nothing.
#[utoipa::path(
    post,
    path = "/api/v1/messages/batch",
    tag = "messages",
    request_body = SendBatch,
    responses(
        (status = 200, description = "A result per recipient", body = BatchResult),
        (status = 400, description = "Invalid argument, or more recipients than `recipients_max`", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `messages` scope", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping; retry with the same request_id", body = ErrorBody),
    ),
)]
async fn send_batch(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<SendBatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<BatchResult>, ApiError> {
    auth.require(Scope::Messages)?;
    let Json(m) = body?;
    check_request_id(&m.request_id)?;
    check_user("from", &m.from)?;
    auth.confine("from", &m.from)?;
    let max = state.ops.settings.recipients_max;
    if m.to_users.is_empty() || m.to_users.len() > max {
        return Err(ApiError::invalid(format!("to_users: 1..={max} user ids")));
    }
    let mut users: Vec<String> = Vec::with_capacity(m.to_users.len());
    for u in m.to_users {
        check_user("to_users", &u)?;
        if !users.contains(&u) {
            users.push(u);
        }
    }
    if let Some(original) = state.ops.recall("batch", &m.request_id) {
        let mut r: BatchResult = serde_json::from_value(original)
            .map_err(|e| ApiError::internal(format!("remembered answer: {e}")))?;
        r.duplicate = true;
        return Ok(Json(r));
    }
    let content = m.content.into_pb()?;
    // All at once: the sender's worker stores them in as few batches (and
    // commits) as it takes.
    let mut calls = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let (state, from, rid, user, content) = (
            state.clone(),
            m.from.clone(),
            m.request_id.clone(),
            user.clone(),
            content.clone(),
        );
        calls.spawn(async move {
            let r = send_one(&state, &from, &rid, pb::send::To::UserId(user), content).await;
            (i, r)
        });
    }
    let mut outcomes: Vec<Option<Result<SentMessage, ApiError>>> =
        (0..users.len()).map(|_| None).collect();
    while let Some(done) = calls.join_next().await {
        let (i, r) = done.map_err(|e| ApiError::internal(format!("send task: {e}")))?;
        outcomes[i] = Some(r);
    }
    let mut retry = false;
    let results = users
        .into_iter()
        .zip(outcomes)
        .map(|(to_user, r)| match r {
            Some(Ok(sent)) => RecipientResult {
                to_user,
                message: Some(SentMessageView {
                    conversation_id: sent.conversation_id,
                    seq: sent.seq,
                    duplicate: sent.duplicate,
                }),
                error: None,
            },
            Some(Err(e)) => {
                retry |= e.status.is_server_error();
                RecipientResult {
                    to_user,
                    message: None,
                    error: Some(super::error::ErrorDetail {
                        code: e.code.into(),
                        detail: e.message,
                    }),
                }
            }
            None => RecipientResult {
                to_user,
                message: None,
                error: Some(super::error::ErrorDetail {
                    code: "INTERNAL".into(),
                    detail: "no outcome".into(),
                }),
            },
        })
        .collect();
    let result = BatchResult {
        results,
        duplicate: false,
    };
    // A result with a retryable failure is not remembered: a retry with the
    // same request id sends to those (the others answer duplicate).
    if !retry {
        let v = serde_json::to_value(&result)
            .map_err(|e| ApiError::internal(format!("encode: {e}")))?;
        state.ops.remember("batch", &m.request_id, v);
    }
    Ok(Json(result))
}

/// A message to everyone online.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    /// Makes the call idempotent (also each message's `client_msg_id`).
    pub request_id: String,
    /// A system user (`[api_ops] system_users`); others are refused.
    pub from: String,
    /// What it says.
    pub content: MessageContent,
}

/// A broadcast under way.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BroadcastAccepted {
    /// The call's request id.
    pub request_id: String,
    /// Users online on this node when it was accepted: each gets one
    /// message (on every device), in the background.
    pub recipients: usize,
    /// Seconds it takes at most at `broadcast_users_per_second`.
    pub duration_s_max: u64,
    /// True when this `request_id` was accepted before: this is that
    /// answer, and nothing more is sent.
    pub duplicate: bool,
}

/// Broadcast a message to every user online on this node.
///
/// Only users of `from`'s tenant get it (`system` reaches the default
/// tenant's users, `acme~system` tenant `acme`'s; docs/tenants.md).
///
/// Accepted at once (202); the messages (one 1:1 message from `from` to
/// each user online now, `request_id` as its `client_msg_id`) are stored
/// and pushed in the background, at most `broadcast_users_per_second`
/// users a second. A replayed `request_id` answers the original acceptance
/// with `duplicate: true` and sends nothing.
#[utoipa::path(
    post,
    path = "/api/v1/broadcasts",
    tag = "messages",
    request_body = Broadcast,
    responses(
        (status = 202, description = "Accepted (or a replay of an accepted call)", body = BroadcastAccepted),
        (status = 400, description = "Invalid argument", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `messages` scope, or `from` is not a system user", body = ErrorBody),
        (status = 503, description = "Overloaded or stopping", body = ErrorBody),
    ),
)]
async fn broadcast(
    State(state): State<ApiState>,
    auth: Authorized,
    body: Result<Json<Broadcast>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<BroadcastAccepted>), ApiError> {
    auth.require(Scope::Messages)?;
    let Json(m) = body?;
    check_request_id(&m.request_id)?;
    auth.confine("from", &m.from)?;
    if !state.ops.is_system(&m.from) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "a broadcast is sent as one of [api_ops] system_users",
        ));
    }
    let content = m.content.into_pb()?;
    if let Some(original) = state.ops.recall("broadcast", &m.request_id) {
        let mut r: BroadcastAccepted = serde_json::from_value(original)
            .map_err(|e| ApiError::internal(format!("remembered answer: {e}")))?;
        r.duplicate = true;
        return Ok((StatusCode::ACCEPTED, Json(r)));
    }
    let mut users = state.ops.online_users(SHARDS_ANSWER_TIMEOUT).await?;
    // A broadcast stays in its sender's tenant, like every message.
    let tenant = tenant_of(&m.from);
    users.retain(|u| *u != m.from && tenant_of(u) == tenant);
    let rate = state.ops.settings.broadcast_users_per_second.max(1) as usize;
    let accepted = BroadcastAccepted {
        request_id: m.request_id.clone(),
        recipients: users.len(),
        duration_s_max: users.len().div_ceil(rate) as u64,
        duplicate: false,
    };
    let v =
        serde_json::to_value(&accepted).map_err(|e| ApiError::internal(format!("encode: {e}")))?;
    state.ops.remember("broadcast", &m.request_id, v);
    tokio::spawn(run_broadcast(
        state,
        m.from,
        m.request_id,
        users,
        content,
        rate,
    ));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// How long a broadcast waits for the shards to name their online users
/// (503 past it).
const SHARDS_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Retries of one broadcast message after a 5xx (full ring, timeout).
const BROADCAST_RETRIES_MAX: u32 = 3;

/// Sends a broadcast's messages, `rate` users a second: each second's
/// users at once, then a wait for the rest of the second.
async fn run_broadcast(
    state: ApiState,
    from: String,
    request_id: String,
    users: Vec<String>,
    content: pb::Content,
    rate: usize,
) {
    let mut failed = 0usize;
    for chunk in users.chunks(rate) {
        let second = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut calls = tokio::task::JoinSet::new();
        for user in chunk {
            let (state, from, rid, user, content) = (
                state.clone(),
                from.clone(),
                request_id.clone(),
                user.clone(),
                content.clone(),
            );
            calls.spawn(async move {
                // A full ring or a slow backend is retried a few times: each
                // message is idempotent by its client_msg_id.
                let mut tries = 0;
                loop {
                    let to = pb::send::To::UserId(user.clone());
                    match send_one(&state, &from, &rid, to, content.clone()).await {
                        Err(e) if e.status.is_server_error() && tries < BROADCAST_RETRIES_MAX => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        other => return other,
                    }
                }
            });
        }
        while let Some(done) = calls.join_next().await {
            if !matches!(done, Ok(Ok(_))) {
                failed += 1;
            }
        }
        tokio::time::sleep_until(second).await;
    }
    tracing::info!(
        request_id,
        recipients = users.len(),
        failed,
        "broadcast done"
    );
}
