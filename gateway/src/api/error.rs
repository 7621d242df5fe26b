//! The one error shape of the server API:
//! `{"error": {"code": "NOT_FOUND", "message": "…"}}` with an HTTP status
//! that follows the code. Codes are stable; messages are for people.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tern_protocol::pb;

/// An error answer of the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, upper snake case (the wire `ErrorCode` name where one
    /// fits): what a service acts on.
    pub code: &'static str,
    /// What went wrong, for logs and people.
    pub message: String,
    /// For 429/503: the `Retry-After` to send, seconds.
    pub retry_after_s: Option<u32>,
}

/// The body of every error answer: RFC 9457 problem details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Always `about:blank`: the status and `code` say what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// Human-readable detail.
    pub detail: String,
    /// Stable code: `AUTH_REQUIRED`, `AUTH_FAILED`, `PERMISSION_DENIED`,
    /// `NOT_FOUND`, `INVALID_ARGUMENT`, `NOT_MEMBER`, `OVERLOADED`, … (the
    /// wire protocol's `ErrorCode` names where one fits).
    pub code: String,
}

/// One failed item of a call that answers per item (a send to a list).
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, as in [`ErrorBody::code`].
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
}

/// The content type of an error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ApiError {
    /// An error with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400 `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    /// 403 `TENANT_MISMATCH`: `what` is an id of another tenant than the
    /// API key's (docs/tenants.md).
    pub fn tenant_mismatch(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "TENANT_MISMATCH",
            format!("{what} is in another tenant than this API key's"),
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 503 `overloaded` with a `Retry-After`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED", message)
        }
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// The domain's typed error (a `pb::Error` answer), as the API says it.
    pub fn from_domain(e: &pb::Error) -> Self {
        use pb::ErrorCode as C;
        let code = C::try_from(e.code).unwrap_or(C::Unspecified);
        let (status, name) = match code {
            C::InvalidArgument | C::BadFrame | C::FrameTooLarge => {
                (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
            }
            C::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            C::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            C::NotMember => (StatusCode::FORBIDDEN, "NOT_MEMBER"),
            C::Blocked => (StatusCode::FORBIDDEN, "BLOCKED"),
            C::NotFriends => (StatusCode::FORBIDDEN, "NOT_FRIENDS"),
            C::RecallWindowPassed => (StatusCode::CONFLICT, "RECALL_WINDOW_PASSED"),
            C::EditWindowPassed => (StatusCode::CONFLICT, "EDIT_WINDOW_PASSED"),
            C::Muted => (StatusCode::FORBIDDEN, "MUTED"),
            C::GroupDissolved => (StatusCode::GONE, "GROUP_DISSOLVED"),
            C::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            C::LimitReached => (StatusCode::CONFLICT, "LIMIT_REACHED"),
            C::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            C::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED"),
            C::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "TIMEOUT"),
            C::ContentRejected => (StatusCode::UNPROCESSABLE_ENTITY, "CONTENT_REJECTED"),
            C::MessageRecalled => (StatusCode::CONFLICT, "MESSAGE_RECALLED"),
            C::AssigneeNotMember => (StatusCode::BAD_REQUEST, "ASSIGNEE_NOT_MEMBER"),
            C::SearchDisabled => (StatusCode::NOT_IMPLEMENTED, "SEARCH_DISABLED"),
            C::CallEnded => (StatusCode::CONFLICT, "CALL_ENDED"),
            C::NotInCall => (StatusCode::FORBIDDEN, "NOT_IN_CALL"),
            C::BroadcastOnly => (StatusCode::FORBIDDEN, "BROADCAST_ONLY"),
            C::RoomJoinLimit => (StatusCode::CONFLICT, "ROOM_JOIN_LIMIT"),
            C::RoomCapacity => (StatusCode::SERVICE_UNAVAILABLE, "ROOM_CAPACITY"),
            C::PushDisabled => (StatusCode::NOT_IMPLEMENTED, "PUSH_DISABLED"),
            C::PushTokensFull => (StatusCode::CONFLICT, "PUSH_TOKENS_FULL"),
            C::PushTokenNotYours => (StatusCode::CONFLICT, "PUSH_TOKEN_NOT_YOURS"),
            C::PushMutesFull => (StatusCode::CONFLICT, "PUSH_MUTES_FULL"),
            C::TenantMismatch => (StatusCode::FORBIDDEN, "TENANT_MISMATCH"),
            // Every code is named here on purpose (no `_`): a new code must
            // be given its status, or it would reach API callers as a 500.
            // The rest are connection-level codes a backend answer never
            // carries.
            C::Internal
            | C::Unspecified
            | C::ServerOnlyFrame
            | C::AuthRequired
            | C::AuthFailed
            | C::TokenExpired
            | C::AuthTimeout
            | C::UnsupportedVersion
            | C::AlreadyAuthenticated
            | C::DeviceLoggedOut
            | C::HeartbeatTimeout => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let retry = (e.retry_after_ms > 0).then(|| e.retry_after_ms.div_ceil(1000).max(1));
        Self {
            retry_after_s: retry.or(matches!(status, StatusCode::SERVICE_UNAVAILABLE).then_some(1)),
            ..Self::new(status, name, e.reason.clone())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error").into(),
            status: self.status.as_u16(),
            detail: self.message,
            code: self.code.into(),
        };
        let mut r = (self.status, Json(body)).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// A JSON body that could not be read, as an [`ApiError`] (400, or 413/415
/// with axum's status), instead of axum's plain-text rejection.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
            _ => "INVALID_ARGUMENT",
        };
        Self::new(status, code, r.body_text())
    }
}
