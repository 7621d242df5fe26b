//! `POST /api/v1/messages`: a service sends a message as one of its users.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use tern_protocol::pb::{self, frame::Body};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiState, Authorized, Scope, error::ErrorBody};

/// The message routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(send_message))
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MessageContent {
    /// Text (emoji are text).
    Text {
        /// UTF-8, at most the server's text limit.
        text: String,
    },
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
    let to = match (m.to_user, m.to_group) {
        (Some(u), None) => pb::send::To::UserId(u),
        (None, Some(g)) => pb::send::To::GroupId(g),
        _ => return Err(ApiError::invalid("give exactly one of to_user, to_group")),
    };
    let content = match m.content {
        MessageContent::Text { text } => pb::content::Kind::Text(pb::Text { text }),
    };
    let send = pb::Send {
        client_msg_id: m.request_id,
        to: Some(to),
        content: Some(pb::Content {
            kind: Some(content),
        }),
        ..Default::default()
    };
    match state.backend.call(&m.from, Body::Send(send)).await? {
        Some(Body::SendAck(ack)) => Ok(Json(SentMessage {
            conversation_id: ack.conversation_id,
            seq: ack.seq,
            server_time_ms: ack.server_time_ms,
            duplicate: ack.duplicate,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}
