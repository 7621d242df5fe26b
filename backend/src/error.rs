//! Domain errors: why a client request failed, one variant per
//! `pb::ErrorCode` the domain can answer with.
//!
//! Never carries a panic or a store's internals to the client: a store
//! failure becomes `Internal`, whose reason is logged server-side and sent
//! as a generic text.

use tern_protocol::ids::IdError;
use tern_protocol::pb;

use crate::store::StoreError;

/// Why a request failed. Maps 1:1 onto [`pb::ErrorCode`] via
/// [`DomainError::code`].
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A field is missing, empty, too long, or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing named does not exist (group, message, request, friend).
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The caller's role or ownership does not allow this.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// The caller is not a member of the group or conversation.
    #[error("not a member")]
    NotMember,
    /// The recipient blocked the caller, or the caller blocked them.
    #[error("blocked")]
    Blocked,
    /// Policy allows messages between friends only.
    #[error("not friends")]
    NotFriends,
    /// The recall window of the message has passed.
    #[error("recall window passed")]
    RecallWindowPassed,
    /// The caller (or the whole group) is muted.
    #[error("muted")]
    Muted,
    /// The group was dissolved.
    #[error("group dissolved")]
    GroupDissolved,
    /// It already exists (friend, member, pending request, group id).
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
    /// The group is full, or another count limit was hit.
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The edit window of the message has passed (or edits are off).
    #[error("edit window passed")]
    EditWindowPassed,
    /// Search is turned off on this server (`Config::search_enabled`).
    #[error("search is disabled on this server")]
    SearchDisabled,
    /// The call has ended, or no call has this id here.
    #[error("the call has ended")]
    CallEnded,
    /// The caller (or the user signalled to) does not take part in the call.
    #[error("not in this call")]
    NotInCall,
    /// The message was recalled (a thread reply or a to-do on it).
    #[error("message recalled")]
    MessageRecalled,
    /// A to-do's assignee is not a member of the conversation.
    #[error("assignee not a member: {0}")]
    AssigneeNotMember(String),
    /// Only the owner and admins post in this broadcast channel.
    #[error("only the owner and admins post in this broadcast channel")]
    BroadcastOnly,
    /// The request names an id (the field says which) of another tenant
    /// than the caller's (docs/tenants.md).
    #[error("{0} is in another tenant")]
    TenantMismatch(&'static str),
    /// The caller's tenant sent its `messages_per_second` on this node
    /// already; retry after the given ms.
    #[error("your organization's message rate is used up: retry after {0} ms")]
    TenantRateLimited(u32),
    /// Push is not configured on this server.
    #[error("push notifications are not enabled on this server")]
    PushDisabled,
    /// The user holds `push_tokens_per_user_max` tokens already.
    #[error("too many push tokens: unregister one first")]
    PushTokensFull,
    /// The token is registered to another user.
    #[error("this push token is registered to another user")]
    PushTokenNotYours,
    /// The user mutes `push_muted_conversations_max` conversations already.
    #[error("too many muted conversations: unmute one first")]
    PushMutesFull,
    /// The store failed, or a group kept changing under us.
    #[error("internal: {0}")]
    Internal(String),
    /// The store cannot take writes now (its disk is below the free-space
    /// reserve); nothing was done. Retry later: sends are idempotent.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// `retry_after_ms` of an [`DomainError::Overloaded`] answer.
pub const OVERLOADED_RETRY_AFTER_MS: u32 = 1_000;

impl DomainError {
    /// The wire code of this error.
    pub fn code(&self) -> pb::ErrorCode {
        match self {
            Self::InvalidArgument(_) => pb::ErrorCode::InvalidArgument,
            Self::NotFound(_) => pb::ErrorCode::NotFound,
            Self::PermissionDenied(_) => pb::ErrorCode::PermissionDenied,
            Self::NotMember => pb::ErrorCode::NotMember,
            Self::Blocked => pb::ErrorCode::Blocked,
            Self::NotFriends => pb::ErrorCode::NotFriends,
            Self::RecallWindowPassed => pb::ErrorCode::RecallWindowPassed,
            Self::Muted => pb::ErrorCode::Muted,
            Self::GroupDissolved => pb::ErrorCode::GroupDissolved,
            Self::AlreadyExists(_) => pb::ErrorCode::AlreadyExists,
            Self::LimitReached(_) => pb::ErrorCode::LimitReached,
            Self::EditWindowPassed => pb::ErrorCode::EditWindowPassed,
            Self::SearchDisabled => pb::ErrorCode::SearchDisabled,
            Self::CallEnded => pb::ErrorCode::CallEnded,
            Self::NotInCall => pb::ErrorCode::NotInCall,
            Self::MessageRecalled => pb::ErrorCode::MessageRecalled,
            Self::AssigneeNotMember(_) => pb::ErrorCode::AssigneeNotMember,
            Self::PushDisabled => pb::ErrorCode::PushDisabled,
            Self::PushTokensFull => pb::ErrorCode::PushTokensFull,
            Self::PushTokenNotYours => pb::ErrorCode::PushTokenNotYours,
            Self::PushMutesFull => pb::ErrorCode::PushMutesFull,
            Self::BroadcastOnly => pb::ErrorCode::BroadcastOnly,
            Self::TenantMismatch(_) => pb::ErrorCode::TenantMismatch,
            Self::TenantRateLimited(_) => pb::ErrorCode::RateLimited,
            Self::Internal(_) => pb::ErrorCode::Internal,
            Self::Overloaded(_) => pb::ErrorCode::Overloaded,
        }
    }

    /// Whether this refuses the caller's right to do something (as opposed
    /// to malformed input or a server failure).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_)
                | Self::PermissionDenied(_)
                | Self::NotMember
                | Self::Blocked
                | Self::NotFriends
                | Self::Muted
                | Self::GroupDissolved
                | Self::MessageRecalled
                | Self::BroadcastOnly
                | Self::TenantMismatch(_)
        )
    }

    /// The error frame body sent to the client. Internal details stay out.
    pub fn to_pb(&self) -> pb::Error {
        let reason = match self {
            Self::Internal(_) => "internal error".to_owned(),
            Self::Overloaded(_) => "storage full: nothing was stored, retry later".to_owned(),
            other => other.to_string(),
        };
        let retry_after_ms = match self {
            Self::Overloaded(_) => OVERLOADED_RETRY_AFTER_MS,
            Self::TenantRateLimited(ms) => *ms,
            _ => 0,
        };
        pb::Error {
            code: self.code() as i32,
            reason,
            retry_after_ms,
        }
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full(why) => Self::Overloaded(why),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Turns an id check failure on field `what` into `InvalidArgument`.
pub(crate) fn bad_id(what: &str, e: IdError) -> DomainError {
    DomainError::InvalidArgument(format!("{what}: {e}"))
}
