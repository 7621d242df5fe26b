//! The one error shape of the server API:
//! `{"error": {"code": "not_found", "message": "…"}}` with an HTTP status
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
    /// Stable, lower snake case: what a service acts on.
    pub code: &'static str,
    /// What went wrong, for logs and people.
    pub message: String,
    /// For 429/503: the `Retry-After` to send, seconds.
    pub retry_after_s: Option<u32>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What an error answer says.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unauthorized`, `forbidden`, `not_found`,
    /// `invalid_argument`, `not_member`, `overloaded`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

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
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `overloaded` with a `Retry-After`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The domain's typed error (a `pb::Error` answer), as the API says it.
    pub fn from_domain(e: &pb::Error) -> Self {
        use pb::ErrorCode as C;
        let code = C::try_from(e.code).unwrap_or(C::Unspecified);
        let (status, name) = match code {
            C::InvalidArgument | C::BadFrame | C::FrameTooLarge => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            C::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            C::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            C::NotMember => (StatusCode::FORBIDDEN, "not_member"),
            C::Blocked => (StatusCode::FORBIDDEN, "blocked"),
            C::NotFriends => (StatusCode::FORBIDDEN, "not_friends"),
            C::RecallWindowPassed => (StatusCode::CONFLICT, "recall_window_passed"),
            C::Muted => (StatusCode::FORBIDDEN, "muted"),
            C::GroupDissolved => (StatusCode::GONE, "group_dissolved"),
            C::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            C::LimitReached => (StatusCode::CONFLICT, "limit_reached"),
            C::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            C::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            C::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
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
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_argument",
        };
        Self::new(status, code, r.body_text())
    }
}
