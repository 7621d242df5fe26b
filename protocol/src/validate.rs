//! What a client may send: the checks a decoded [`pb::Frame`] from a client
//! must pass before the session or the backend acts on it.
//!
//! [`check_client_frame`] refuses, with a typed [`Refusal`] that names the
//! field: a frame without a body, a frame only the server may send, a request
//! without a `request_id`, malformed ids and conversation ids, enum values the
//! schema does not define, texts and lists over their [`ClientLimits`], and
//! missing parts (a `send` without a recipient or content, seq 0 where a seq
//! is needed).
//!
//! It checks shape only. It never looks anything up (does the user exist, is
//! the sender a member: the backend decides), never checks the token (the
//! session does), and never does I/O.

use std::borrow::Cow;

use crate::ids::{self, ConversationId};
use crate::pb::{self, frame::Body};

/// Bounds on what one client frame may carry. Each list bound is a count of
/// items; each text bound is in bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// `Text.text` of a message. Announced as `Limits.text_bytes_max`.
    pub text_bytes_max: usize,
    /// `Auth.token` (a JWT).
    pub token_bytes_max: usize,
    /// Short labels: group names, nicknames, remarks, file and place names,
    /// MIME and custom types, capability names, `Auth.client_version`.
    pub label_bytes_max: usize,
    /// Short notes a human writes alongside a request: presence text, friend
    /// request greeting, group join message (the schema promises 256).
    pub note_bytes_max: usize,
    /// Longer free text: group announcement, profile bio and avatar URL,
    /// location address.
    pub about_bytes_max: usize,
    /// `Custom.data`, the opaque payload of an application-defined message.
    pub custom_data_bytes_max: usize,
    /// `Send.mentions`.
    pub mentions_max: usize,
    /// Users named in one `group_invite` or `group_create`.
    pub invite_user_ids_max: usize,
    /// Users asked about in one `presence_query`.
    pub query_user_ids_max: usize,
    /// Cursors in one `auth` (resume), `deliver_ack` or `sync`.
    pub cursors_max: usize,
    /// `ReadByQuery.seqs`.
    pub seqs_max: usize,
    /// `Auth.capabilities`.
    pub capabilities_max: usize,
}

/// `SearchRequest.query`, in bytes (docs/protocol.md, "Search").
pub const SEARCH_QUERY_BYTES_MAX: usize = 256;
/// `SearchRequest.cursor`, in bytes: a seq and a conversation id.
pub const SEARCH_CURSOR_BYTES_MAX: usize = 256;

/// Default for [`ClientLimits::text_bytes_max`] (docs/protocol.md section 2).
pub const TEXT_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Default for [`ClientLimits::token_bytes_max`].
pub const TOKEN_BYTES_MAX_DEFAULT: usize = 4 * 1024;
/// Default for [`ClientLimits::label_bytes_max`].
pub const LABEL_BYTES_MAX_DEFAULT: usize = 128;
/// Default for [`ClientLimits::note_bytes_max`]; the schema promises 256.
pub const NOTE_BYTES_MAX_DEFAULT: usize = 256;
/// Default for [`ClientLimits::about_bytes_max`].
pub const ABOUT_BYTES_MAX_DEFAULT: usize = 2 * 1024;
/// Default for [`ClientLimits::custom_data_bytes_max`].
pub const CUSTOM_DATA_BYTES_MAX_DEFAULT: usize = 32 * 1024;
/// Default for [`ClientLimits::mentions_max`].
pub const MENTIONS_MAX_DEFAULT: usize = 64;
/// Default for [`ClientLimits::invite_user_ids_max`].
pub const INVITE_USER_IDS_MAX_DEFAULT: usize = 200;
/// Default for [`ClientLimits::query_user_ids_max`].
pub const QUERY_USER_IDS_MAX_DEFAULT: usize = 200;
/// Default for [`ClientLimits::cursors_max`]: a device in 1,000
/// conversations still resumes in one `auth` (about 40 bytes per cursor, so
/// this fits the default 64 KiB frame).
pub const CURSORS_MAX_DEFAULT: usize = 1_000;
/// Default for [`ClientLimits::seqs_max`]; the backend's `read_by_seqs_max`
/// has the same default.
pub const SEQS_MAX_DEFAULT: usize = 100;
/// Most assignees of one to-do (`TodoRequest.assignees`, duplicates
/// included), as docs/protocol.md states.
pub const TODO_ASSIGNEES_MAX: usize = 20;
/// Default for [`ClientLimits::capabilities_max`].
pub const CAPABILITIES_MAX_DEFAULT: usize = 32;
/// Largest `CallSignal.payload` (an SDP or an ICE candidate), in bytes
/// (docs/protocol.md, "Calls"): a typical SDP is 2 to 6 KiB.
pub const CALL_SIGNAL_BYTES_MAX: usize = 16 * 1024;
/// Longest push token (`PushTokenRegister.token`), in bytes: APNs device
/// tokens are 64 hex digits, FCM registration tokens about 160 bytes.
pub const PUSH_TOKEN_BYTES_MAX: usize = 512;
/// Longest APNs topic (`PushTokenRegister.topic`, a bundle id), in bytes.
pub const PUSH_TOPIC_BYTES_MAX: usize = 128;
/// Participants of one call, the caller included (docs/protocol.md,
/// "Calls"): `CallAction.invitees` holds at most one less.
pub const CALL_PARTICIPANTS_MAX: usize = 8;

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            text_bytes_max: TEXT_BYTES_MAX_DEFAULT,
            token_bytes_max: TOKEN_BYTES_MAX_DEFAULT,
            label_bytes_max: LABEL_BYTES_MAX_DEFAULT,
            note_bytes_max: NOTE_BYTES_MAX_DEFAULT,
            about_bytes_max: ABOUT_BYTES_MAX_DEFAULT,
            custom_data_bytes_max: CUSTOM_DATA_BYTES_MAX_DEFAULT,
            mentions_max: MENTIONS_MAX_DEFAULT,
            invite_user_ids_max: INVITE_USER_IDS_MAX_DEFAULT,
            query_user_ids_max: QUERY_USER_IDS_MAX_DEFAULT,
            cursors_max: CURSORS_MAX_DEFAULT,
            seqs_max: SEQS_MAX_DEFAULT,
            capabilities_max: CAPABILITIES_MAX_DEFAULT,
        }
    }
}

/// A client frame refused: the code and reason for the `Error` frame that
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", code.as_str_name())]
pub struct Refusal {
    /// What the client should act on.
    pub code: pb::ErrorCode,
    /// For humans and logs; names the offending field.
    pub reason: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: pb::ErrorCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// The `Error` frame that answers the refused request (`request_id` 0
    /// when the refusal is about the connection rather than one request).
    pub fn into_frame(self, request_id: u64) -> pb::Frame {
        pb::Frame {
            request_id,
            body: Some(Body::Error(pb::Error {
                code: self.code as i32,
                reason: self.reason.into_owned(),
                retry_after_ms: 0,
            })),
        }
    }

    fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(pb::ErrorCode::InvalidArgument, reason)
    }
}

impl From<&crate::codec::DecodeError> for Refusal {
    fn from(e: &crate::codec::DecodeError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

/// Who may send a body variant, and whether it is a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client request: needs a non-zero `request_id`, gets an answer.
    ClientRequest,
    /// A client frame that is not a request (`auth`, `ping`, `deliver_ack`,
    /// `typing`): `request_id` may be 0.
    ClientNotice,
    /// Only the server sends it (field numbers 100..=199).
    Server,
}

/// The schema's field name of a body variant (`"send"`, `"deliver_ack"`), and
/// who may send it. Exhaustive, so a variant added to the schema does not
/// compile until it is placed here.
pub fn body_kind(body: &Body) -> (&'static str, Sender) {
    use Sender::{ClientNotice as Notice, ClientRequest as Request, Server};
    match body {
        Body::Auth(_) => ("auth", Notice),
        Body::Ping(_) => ("ping", Notice),
        Body::Send(_) => ("send", Request),
        Body::DeliverAck(_) => ("deliver_ack", Notice),
        Body::Sync(_) => ("sync", Request),
        Body::History(_) => ("history", Request),
        Body::Recall(_) => ("recall", Request),
        Body::Read(_) => ("read", Request),
        Body::Typing(_) => ("typing", Notice),
        Body::SetPresence(_) => ("set_presence", Request),
        Body::PresenceQuery(_) => ("presence_query", Request),
        Body::Conversations(_) => ("conversations", Request),
        Body::ReadBy(_) => ("read_by", Request),
        Body::FriendRequest(_) => ("friend_request", Request),
        Body::FriendAccept(_) => ("friend_accept", Request),
        Body::FriendReject(_) => ("friend_reject", Request),
        Body::FriendDelete(_) => ("friend_delete", Request),
        Body::FriendList(_) => ("friend_list", Request),
        Body::Profile(_) => ("profile", Request),
        Body::FriendRemark(_) => ("friend_remark", Request),
        Body::FriendBlock(_) => ("friend_block", Request),
        Body::ProfileUpdate(_) => ("profile_update", Request),
        Body::FriendRequests(_) => ("friend_requests", Request),
        Body::GroupCreate(_) => ("group_create", Request),
        Body::GroupInfo(_) => ("group_info", Request),
        Body::GroupMembers(_) => ("group_members", Request),
        Body::GroupJoin(_) => ("group_join", Request),
        Body::GroupInvite(_) => ("group_invite", Request),
        Body::GroupKick(_) => ("group_kick", Request),
        Body::GroupLeave(_) => ("group_leave", Request),
        Body::GroupDissolve(_) => ("group_dissolve", Request),
        Body::GroupRename(_) => ("group_rename", Request),
        Body::GroupAnnounce(_) => ("group_announce", Request),
        Body::GroupSetNickname(_) => ("group_set_nickname", Request),
        Body::GroupSetRemark(_) => ("group_set_remark", Request),
        Body::GroupSetRole(_) => ("group_set_role", Request),
        Body::GroupMute(_) => ("group_mute", Request),
        Body::GroupJoinDecision(_) => ("group_join_decision", Request),
        Body::GroupSetPolicy(_) => ("group_set_policy", Request),
        Body::GroupList(_) => ("group_list", Request),
        Body::Edit(_) => ("edit", Request),
        Body::Search(_) => ("search", Request),
        Body::DeviceList(_) => ("device_list", Request),
        Body::DeviceLogout(_) => ("device_logout", Request),
        Body::Call(_) => ("call", Request),
        Body::CallSignal(_) => ("call_signal", Request),
        Body::PushRegister(_) => ("push_register", Request),
        Body::PushUnregister(_) => ("push_unregister", Request),
        Body::PushList(_) => ("push_list", Request),
        Body::PushMute(_) => ("push_mute", Request),
        Body::PushListResult(_) => ("push_list_result", Server),
        Body::DeviceListResult(_) => ("device_list_result", Server),
        Body::CallEvent(_) => ("call_event", Server),
        Body::CallSignalEvent(_) => ("call_signal_event", Server),
        Body::React(_) => ("react", Request),
        Body::Pin(_) => ("pin", Request),
        Body::Pins(_) => ("pins", Request),
        Body::ThreadRead(_) => ("thread_read", Request),
        Body::ThreadInfo(_) => ("thread_info", Request),
        Body::Todo(_) => ("todo", Request),
        Body::TodoList(_) => ("todo_list", Request),
        Body::ThreadInfoResult(_) => ("thread_info_result", Server),
        Body::TodoListResult(_) => ("todo_list_result", Server),
        Body::Welcome(_) => ("welcome", Server),
        Body::Pong(_) => ("pong", Server),
        Body::SendAck(_) => ("send_ack", Server),
        Body::Deliver(_) => ("deliver", Server),
        Body::SyncResult(_) => ("sync_result", Server),
        Body::HistoryResult(_) => ("history_result", Server),
        Body::TypingEvent(_) => ("typing_event", Server),
        Body::PresenceEvent(_) => ("presence_event", Server),
        Body::PresenceResult(_) => ("presence_result", Server),
        Body::ConversationsResult(_) => ("conversations_result", Server),
        Body::ReadByResult(_) => ("read_by_result", Server),
        Body::Event(_) => ("event", Server),
        Body::FriendListResult(_) => ("friend_list_result", Server),
        Body::ProfileResult(_) => ("profile_result", Server),
        Body::FriendRequestListResult(_) => ("friend_request_list_result", Server),
        Body::GroupInfoResult(_) => ("group_info_result", Server),
        Body::GroupMembersResult(_) => ("group_members_result", Server),
        Body::GroupListResult(_) => ("group_list_result", Server),
        Body::Ok(_) => ("ok", Server),
        Body::Error(_) => ("error", Server),
        Body::Kick(_) => ("kick", Server),
        Body::SearchResult(_) => ("search_result", Server),
        Body::PinsResult(_) => ("pins_result", Server),
        Body::RoomCreate(_) => ("room_create", Request),
        Body::RoomJoin(_) => ("room_join", Request),
        Body::RoomLeave(_) => ("room_leave", Request),
        Body::RoomPost(_) => ("room_post", Request),
        Body::RoomHistory(_) => ("room_history", Request),
        Body::RoomInfo(_) => ("room_info", Request),
        Body::RoomDelete(_) => ("room_delete", Request),
        Body::RoomClosed(_) => ("room_closed", Server),
        Body::RoomInfoResult(_) => ("room_info_result", Server),
        Body::RoomJoined(_) => ("room_joined", Server),
        Body::RoomHistoryResult(_) => ("room_history_result", Server),
        Body::RoomDeliver(_) => ("room_deliver", Server),
    }
}

/// Admins a room may name besides its owner (`RoomCreate.admins`).
pub const ROOM_ADMINS_MAX: usize = 16;

/// Longest reaction string (`ReactRequest.emoji`), in bytes.
pub const REACTION_BYTES_MAX: usize = 32;

/// Checks a reaction string: 1 to [`REACTION_BYTES_MAX`] bytes with no
/// whitespace and no control characters (an emoji, possibly several code
/// points joined, or a short code such as `:+1:`). The error says why, to
/// follow a field name.
pub fn check_reaction(emoji: &str) -> Result<(), &'static str> {
    if emoji.is_empty() {
        return Err("is empty");
    }
    if emoji.len() > REACTION_BYTES_MAX {
        return Err("is longer than 32 bytes");
    }
    if emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds whitespace or a control character");
    }
    Ok(())
}

/// Checks a frame a client sent. `Ok(())` means its shape is valid; the
/// session and backend still decide whether it is allowed.
pub fn check_client_frame(frame: &pb::Frame, limits: &ClientLimits) -> Result<(), Refusal> {
    let Some(body) = &frame.body else {
        return Err(Refusal::new(pb::ErrorCode::BadFrame, "frame has no body"));
    };
    let (name, sender) = body_kind(body);
    match sender {
        Sender::Server => return Err(server_only(name)),
        Sender::ClientRequest if frame.request_id == 0 => {
            return Err(Refusal::invalid(format!(
                "`{name}` is a request: request_id must not be 0"
            )));
        }
        Sender::ClientRequest | Sender::ClientNotice => {}
    }
    let c = Checker { l: limits };
    // One line per client variant: the checks of its fields. Server variants
    // were refused above.
    match body {
        Body::Auth(m) => c.auth(m),
        Body::Ping(_) => Ok(()),
        Body::Send(m) => c.send(m),
        Body::DeliverAck(m) => {
            c.non_empty("deliver_ack.cursors", &m.cursors)?;
            c.cursors("deliver_ack.cursors", &m.cursors, Seq::Required)
        }
        Body::Sync(m) => c.cursors("sync.cursors", &m.cursors, Seq::Any),
        Body::History(m) => c.conv("history.conversation_id", &m.conversation_id),
        Body::Recall(m) => {
            c.conv("recall.conversation_id", &m.conversation_id)?;
            c.seq("recall.seq", m.seq)
        }
        Body::Read(m) => {
            c.conv("read.conversation_id", &m.conversation_id)?;
            c.seq("read.up_to_seq", m.up_to_seq)
        }
        Body::Typing(m) => c.conv("typing.conversation_id", &m.conversation_id),
        Body::SetPresence(m) => {
            c.presence_state("set_presence.state", m.state)?;
            c.text("set_presence.text", &m.text, c.l.note_bytes_max)
        }
        Body::PresenceQuery(m) => {
            c.non_empty("presence_query.user_ids", &m.user_ids)?;
            c.ids(
                "presence_query.user_ids",
                &m.user_ids,
                c.l.query_user_ids_max,
            )
        }
        Body::Conversations(_) => Ok(()),
        Body::ReadBy(m) => {
            c.conv("read_by.conversation_id", &m.conversation_id)?;
            c.non_empty("read_by.seqs", &m.seqs)?;
            c.list_len("read_by.seqs", &m.seqs, c.l.seqs_max)?;
            m.seqs.iter().try_for_each(|&s| c.seq("read_by.seqs", s))
        }
        Body::FriendRequest(m) => {
            c.id("friend_request.user_id", &m.user_id)?;
            c.text("friend_request.message", &m.message, c.l.note_bytes_max)
        }
        Body::FriendAccept(m) => c.id("friend_accept.user_id", &m.user_id),
        Body::FriendReject(m) => c.id("friend_reject.user_id", &m.user_id),
        Body::FriendDelete(m) => c.id("friend_delete.user_id", &m.user_id),
        Body::FriendList(_) => Ok(()),
        Body::Profile(m) => c.id("profile.user_id", &m.user_id),
        Body::FriendRemark(m) => {
            c.id("friend_remark.user_id", &m.user_id)?;
            c.text("friend_remark.remark", &m.remark, c.l.label_bytes_max)
        }
        Body::FriendBlock(m) => c.id("friend_block.user_id", &m.user_id),
        Body::ProfileUpdate(m) => {
            let nickname = m.nickname.as_deref().unwrap_or_default();
            c.text("profile_update.nickname", nickname, c.l.label_bytes_max)?;
            let avatar = m.avatar.as_deref().unwrap_or_default();
            c.text("profile_update.avatar", avatar, c.l.about_bytes_max)?;
            let bio = m.bio.as_deref().unwrap_or_default();
            c.text("profile_update.bio", bio, c.l.about_bytes_max)
        }
        Body::FriendRequests(_) => Ok(()),
        Body::GroupCreate(m) => {
            // An empty group_id asks the server to pick one.
            c.optional_id("group_create.group_id", &m.group_id)?;
            c.text("group_create.name", &m.name, c.l.label_bytes_max)?;
            c.ids("group_create.members", &m.members, c.l.invite_user_ids_max)?;
            c.join_policy("group_create.join_policy", m.join_policy)
        }
        Body::GroupInfo(m) => c.id("group_info.group_id", &m.group_id),
        Body::GroupMembers(m) => {
            c.id("group_members.group_id", &m.group_id)?;
            c.optional_id("group_members.after_user_id", &m.after_user_id)
        }
        Body::GroupJoin(m) => {
            c.id("group_join.group_id", &m.group_id)?;
            c.text("group_join.message", &m.message, c.l.note_bytes_max)
        }
        Body::GroupInvite(m) => {
            c.id("group_invite.group_id", &m.group_id)?;
            c.non_empty("group_invite.user_ids", &m.user_ids)?;
            c.ids(
                "group_invite.user_ids",
                &m.user_ids,
                c.l.invite_user_ids_max,
            )
        }
        Body::GroupKick(m) => {
            c.id("group_kick.group_id", &m.group_id)?;
            c.id("group_kick.user_id", &m.user_id)
        }
        Body::GroupLeave(m) => c.id("group_leave.group_id", &m.group_id),
        Body::GroupDissolve(m) => c.id("group_dissolve.group_id", &m.group_id),
        Body::GroupRename(m) => {
            c.id("group_rename.group_id", &m.group_id)?;
            c.non_empty_text("group_rename.name", &m.name, c.l.label_bytes_max)
        }
        Body::GroupAnnounce(m) => {
            c.id("group_announce.group_id", &m.group_id)?;
            c.text(
                "group_announce.announcement",
                &m.announcement,
                c.l.about_bytes_max,
            )
        }
        Body::GroupSetNickname(m) => {
            c.id("group_set_nickname.group_id", &m.group_id)?;
            c.text(
                "group_set_nickname.nickname",
                &m.nickname,
                c.l.label_bytes_max,
            )
        }
        Body::GroupSetRemark(m) => {
            c.id("group_set_remark.group_id", &m.group_id)?;
            c.text("group_set_remark.remark", &m.remark, c.l.label_bytes_max)
        }
        Body::GroupSetRole(m) => {
            c.id("group_set_role.group_id", &m.group_id)?;
            c.id("group_set_role.user_id", &m.user_id)?;
            c.group_role("group_set_role.role", m.role)
        }
        Body::GroupMute(m) => {
            c.id("group_mute.group_id", &m.group_id)?;
            // An empty user_id mutes the whole group.
            c.optional_id("group_mute.user_id", &m.user_id)
        }
        Body::GroupJoinDecision(m) => {
            c.id("group_join_decision.group_id", &m.group_id)?;
            c.id("group_join_decision.user_id", &m.user_id)
        }
        Body::GroupSetPolicy(m) => {
            c.id("group_set_policy.group_id", &m.group_id)?;
            c.join_policy("group_set_policy.join_policy", m.join_policy)
        }
        Body::GroupList(_) => Ok(()),
        Body::Edit(m) => c.edit(m),
        Body::Search(m) => c.search(m),
        Body::DeviceList(_) => Ok(()),
        Body::DeviceLogout(m) => c.id("device_logout.device_id", &m.device_id),
        Body::Call(m) => c.call(m),
        Body::CallSignal(m) => c.call_signal(m),
        Body::PushRegister(m) => {
            c.push_platform("push_register.platform", m.platform)?;
            c.push_token("push_register.token", &m.token, PUSH_TOKEN_BYTES_MAX)?;
            if m.topic.is_empty() {
                return Ok(());
            }
            c.push_token("push_register.topic", &m.topic, PUSH_TOPIC_BYTES_MAX)
        }
        Body::PushUnregister(m) => {
            c.push_platform("push_unregister.platform", m.platform)?;
            c.push_token("push_unregister.token", &m.token, PUSH_TOKEN_BYTES_MAX)
        }
        Body::PushList(_) => Ok(()),
        Body::PushMute(m) => {
            if m.conversation_id.is_empty() {
                return Ok(());
            }
            c.conv("push_mute.conversation_id", &m.conversation_id)
        }
        Body::React(m) => {
            c.conv("react.conversation_id", &m.conversation_id)?;
            c.seq("react.seq", m.seq)?;
            check_reaction(&m.emoji).map_err(|why| Refusal::invalid(format!("react.emoji {why}")))
        }
        Body::Pin(m) => {
            c.conv("pin.conversation_id", &m.conversation_id)?;
            c.seq("pin.seq", m.seq)
        }
        Body::Pins(m) => c.conv("pins.conversation_id", &m.conversation_id),
        Body::ThreadRead(m) => {
            c.conv("thread_read.conversation_id", &m.conversation_id)?;
            c.seq("thread_read.root_seq", m.root_seq)?;
            c.seq("thread_read.up_to_seq", m.up_to_seq)
        }
        Body::ThreadInfo(m) => {
            c.conv("thread_info.conversation_id", &m.conversation_id)?;
            c.non_empty("thread_info.root_seqs", &m.root_seqs)?;
            c.list_len("thread_info.root_seqs", &m.root_seqs, c.l.seqs_max)?;
            m.root_seqs
                .iter()
                .try_for_each(|&s| c.seq("thread_info.root_seqs", s))
        }
        Body::Todo(m) => c.todo(m),
        Body::TodoList(m) => match &m.after {
            Some(a) => {
                c.conv("todo_list.after.conversation_id", &a.conversation_id)?;
                c.seq("todo_list.after.seq", a.seq)
            }
            None => Ok(()),
        },
        Body::RoomCreate(m) => {
            c.id("room_create.room_id", &m.room_id)?;
            c.text("room_create.name", &m.name, c.l.label_bytes_max)?;
            c.room_kind("room_create.kind", m.kind)?;
            c.ids("room_create.admins", &m.admins, ROOM_ADMINS_MAX)
        }
        Body::RoomJoin(m) => c.id("room_join.room_id", &m.room_id),
        Body::RoomLeave(m) => c.id("room_leave.room_id", &m.room_id),
        Body::RoomPost(m) => {
            c.id("room_post.room_id", &m.room_id)?;
            c.optional_id("room_post.client_msg_id", &m.client_msg_id)?;
            let Some(content) = &m.content else {
                return Err(Refusal::invalid("room_post.content is missing"));
            };
            c.content(content)
        }
        Body::RoomHistory(m) => c.id("room_history.room_id", &m.room_id),
        Body::RoomInfo(m) => c.id("room_info.room_id", &m.room_id),
        Body::RoomDelete(m) => c.id("room_delete.room_id", &m.room_id),
        // Refused above already; listed so that this match stays exhaustive.
        Body::RoomInfoResult(_)
        | Body::RoomJoined(_)
        | Body::RoomHistoryResult(_)
        | Body::RoomDeliver(_)
        | Body::RoomClosed(_) => Err(server_only(name)),
        Body::Welcome(_)
        | Body::Pong(_)
        | Body::SendAck(_)
        | Body::Deliver(_)
        | Body::SyncResult(_)
        | Body::HistoryResult(_)
        | Body::TypingEvent(_)
        | Body::PresenceEvent(_)
        | Body::PresenceResult(_)
        | Body::ConversationsResult(_)
        | Body::ReadByResult(_)
        | Body::Event(_)
        | Body::FriendListResult(_)
        | Body::ProfileResult(_)
        | Body::FriendRequestListResult(_)
        | Body::GroupInfoResult(_)
        | Body::GroupMembersResult(_)
        | Body::GroupListResult(_)
        | Body::DeviceListResult(_)
        | Body::CallEvent(_)
        | Body::CallSignalEvent(_)
        | Body::Ok(_)
        | Body::Error(_)
        | Body::Kick(_)
        | Body::PinsResult(_)
        | Body::SearchResult(_)
        | Body::PushListResult(_) => Err(server_only(name)),
        Body::ThreadInfoResult(_) | Body::TodoListResult(_) => Err(server_only(name)),
    }
}

/// Whether a cursor's seq may be 0.
#[derive(Clone, Copy)]
enum Seq {
    /// 0 is meaningful ("holds nothing yet": resume and sync cursors).
    Any,
    /// The cursor acknowledges an entry, which has seq ≥ 1.
    Required,
}

/// The field checks, each producing a refusal that names the field. Reasons
/// are built only on the refusal path.
struct Checker<'l> {
    l: &'l ClientLimits,
}

impl Checker<'_> {
    fn auth(&self, m: &pb::Auth) -> Result<(), Refusal> {
        self.non_empty_text("auth.token", &m.token, self.l.token_bytes_max)?;
        self.id("auth.device_id", &m.device_id)?;
        self.platform("auth.platform", m.platform)?;
        self.list_len(
            "auth.capabilities",
            &m.capabilities,
            self.l.capabilities_max,
        )?;
        for cap in &m.capabilities {
            self.text("auth.capabilities", cap, self.l.label_bytes_max)?;
        }
        self.cursors("auth.resume_cursors", &m.resume_cursors, Seq::Any)?;
        self.text(
            "auth.client_version",
            &m.client_version,
            self.l.label_bytes_max,
        )
    }

    fn send(&self, m: &pb::Send) -> Result<(), Refusal> {
        self.id("send.client_msg_id", &m.client_msg_id)?;
        match &m.to {
            Some(pb::send::To::UserId(u)) => self.id("send.to.user_id", u)?,
            Some(pb::send::To::GroupId(g)) => self.id("send.to.group_id", g)?,
            None => return Err(Refusal::invalid("send.to is missing (user_id or group_id)")),
        }
        let Some(content) = &m.content else {
            return Err(Refusal::invalid("send.content is missing"));
        };
        self.content(content)?;
        self.ids("send.mentions", &m.mentions, self.l.mentions_max)
        // reply_to_seq: 0 means "not a reply"; any other value is looked up
        // by the backend.
    }

    fn edit(&self, m: &pb::EditRequest) -> Result<(), Refusal> {
        self.conv("edit.conversation_id", &m.conversation_id)?;
        self.seq("edit.seq", m.seq)?;
        self.id("edit.client_edit_id", &m.client_edit_id)?;
        let Some(content) = &m.content else {
            return Err(Refusal::invalid("edit.content is missing"));
        };
        // The same checks as a send's content; the reason names the field
        // as `edit.content…`.
        self.content(content).map_err(|mut r| {
            if let Some(rest) = r.reason.strip_prefix("send.") {
                r.reason = Cow::Owned(format!("edit.{rest}"));
            }
            r
        })
    }

    fn todo(&self, m: &pb::TodoRequest) -> Result<(), Refusal> {
        self.conv("todo.conversation_id", &m.conversation_id)?;
        self.seq("todo.seq", m.seq)?;
        match pb::TodoAction::try_from(m.action) {
            Ok(pb::TodoAction::Create) => {
                self.non_empty("todo.assignees", &m.assignees)?;
                self.ids("todo.assignees", &m.assignees, TODO_ASSIGNEES_MAX)
            }
            Ok(pb::TodoAction::Done | pb::TodoAction::Undo) => {
                if m.assignees.is_empty() {
                    Ok(())
                } else {
                    Err(Refusal::invalid("todo.assignees is for create only"))
                }
            }
            Ok(pb::TodoAction::Unspecified) | Err(_) => Err(Refusal::invalid(format!(
                "todo.action {} is not create, done or undo",
                m.action
            ))),
        }
    }

    fn call(&self, m: &pb::CallAction) -> Result<(), Refusal> {
        use pb::CallActionKind as K;
        match K::try_from(m.kind) {
            Ok(K::Invite) => {
                self.conv("call.conversation_id", &m.conversation_id)?;
                self.ids("call.invitees", &m.invitees, CALL_PARTICIPANTS_MAX - 1)?;
                if !m.call_id.is_empty() {
                    return Err(Refusal::invalid("call.call_id must be empty for INVITE"));
                }
                Ok(())
            }
            Ok(K::Accept | K::Reject | K::Cancel | K::Hangup) => {
                self.id("call.call_id", &m.call_id)
            }
            Ok(K::Unspecified) | Err(_) => Err(bad_enum("call.kind", m.kind)),
        }
    }

    fn call_signal(&self, m: &pb::CallSignal) -> Result<(), Refusal> {
        self.id("call_signal.call_id", &m.call_id)?;
        self.id("call_signal.to_user_id", &m.to_user_id)?;
        self.optional_id("call_signal.to_device_id", &m.to_device_id)?;
        match pb::CallSignalKind::try_from(m.kind) {
            Ok(pb::CallSignalKind::Unspecified) | Err(_) => {
                return Err(bad_enum("call_signal.kind", m.kind));
            }
            Ok(_) => {}
        }
        self.non_empty_text("call_signal.payload", &m.payload, CALL_SIGNAL_BYTES_MAX)
    }

    fn search(&self, m: &pb::SearchRequest) -> Result<(), Refusal> {
        // An empty query (or one of punctuation only) is the backend's to
        // refuse: it knows what a word is.
        self.text("search.query", &m.query, SEARCH_QUERY_BYTES_MAX)?;
        if !m.conversation_id.is_empty() {
            self.conv("search.conversation_id", &m.conversation_id)?;
        }
        self.optional_id("search.sender", &m.sender)?;
        self.text("search.cursor", &m.cursor, SEARCH_CURSOR_BYTES_MAX)
    }

    fn content(&self, c: &pb::Content) -> Result<(), Refusal> {
        use pb::content::Kind;
        let Some(kind) = &c.kind else {
            return Err(Refusal::invalid("send.content has no kind"));
        };
        match kind {
            Kind::Text(t) => {
                self.non_empty_text("send.content.text", &t.text, self.l.text_bytes_max)
            }
            Kind::Image(i) => self.media("send.content.image.media", i.media.as_ref()),
            Kind::File(f) => {
                self.media("send.content.file.media", f.media.as_ref())?;
                self.text("send.content.file.name", &f.name, self.l.label_bytes_max)
            }
            Kind::Voice(v) => self.media("send.content.voice.media", v.media.as_ref()),
            Kind::Video(v) => self.media("send.content.video.media", v.media.as_ref()),
            Kind::Location(l) => {
                self.degrees("send.content.location.latitude", l.latitude, 90.0)?;
                self.degrees("send.content.location.longitude", l.longitude, 180.0)?;
                self.text(
                    "send.content.location.name",
                    &l.name,
                    self.l.label_bytes_max,
                )?;
                self.text(
                    "send.content.location.address",
                    &l.address,
                    self.l.about_bytes_max,
                )
            }
            Kind::Custom(x) => {
                self.non_empty_text(
                    "send.content.custom.type",
                    &x.r#type,
                    self.l.label_bytes_max,
                )?;
                let max = self.l.custom_data_bytes_max;
                if x.data.len() > max {
                    return Err(too_long("send.content.custom.data", x.data.len(), max));
                }
                Ok(())
            }
        }
    }

    /// Media ids come from the media API and are storage keys, so they follow
    /// the id alphabet.
    fn media(&self, field: &'static str, m: Option<&pb::MediaRef>) -> Result<(), Refusal> {
        let Some(m) = m else {
            return Err(Refusal::invalid(format!("{field} is missing")));
        };
        self.id(field, &m.media_id)?;
        self.text(field, &m.mime, self.l.label_bytes_max)?;
        if !(m.sha256.is_empty() || is_sha256_hex(&m.sha256)) {
            return Err(Refusal::invalid(format!(
                "{field}.sha256 is not 64 hex digits"
            )));
        }
        if let Some(t) = &m.thumbnail {
            self.id(field, &t.media_id)?;
            self.text(field, &t.mime, self.l.label_bytes_max)?;
        }
        Ok(())
    }

    fn cursors(&self, field: &'static str, cs: &[pb::Cursor], seq: Seq) -> Result<(), Refusal> {
        self.list_len(field, cs, self.l.cursors_max)?;
        for (i, cursor) in cs.iter().enumerate() {
            if let Err(e) = ConversationId::parse(&cursor.conversation_id) {
                return Err(Refusal::invalid(format!(
                    "{field}[{i}].conversation_id: {e}"
                )));
            }
            if matches!(seq, Seq::Required) && cursor.seq == 0 {
                return Err(Refusal::invalid(format!("{field}[{i}].seq must not be 0")));
            }
        }
        Ok(())
    }

    fn id(&self, field: &'static str, id: &str) -> Result<(), Refusal> {
        ids::check_id(id).map_err(|e| Refusal::invalid(format!("{field}: {e}")))
    }

    /// An id, or empty where the schema gives empty a meaning.
    fn optional_id(&self, field: &'static str, id: &str) -> Result<(), Refusal> {
        if id.is_empty() {
            Ok(())
        } else {
            self.id(field, id)
        }
    }

    /// At most `max` ids, each valid.
    fn ids(&self, field: &'static str, list: &[String], max: usize) -> Result<(), Refusal> {
        self.list_len(field, list, max)?;
        for (i, id) in list.iter().enumerate() {
            if let Err(e) = ids::check_id(id) {
                return Err(Refusal::invalid(format!("{field}[{i}]: {e}")));
            }
        }
        Ok(())
    }

    fn conv(&self, field: &'static str, id: &str) -> Result<(), Refusal> {
        ConversationId::parse(id)
            .map(drop)
            .map_err(|e| Refusal::invalid(format!("{field}: {e}")))
    }

    fn seq(&self, field: &'static str, seq: u64) -> Result<(), Refusal> {
        if seq == 0 {
            return Err(Refusal::invalid(format!(
                "{field} must not be 0 (seqs start at 1)"
            )));
        }
        Ok(())
    }

    fn text(&self, field: &'static str, text: &str, max: usize) -> Result<(), Refusal> {
        if text.len() > max {
            return Err(too_long(field, text.len(), max));
        }
        Ok(())
    }

    fn non_empty_text(&self, field: &'static str, text: &str, max: usize) -> Result<(), Refusal> {
        if text.is_empty() {
            return Err(Refusal::invalid(format!("{field} is empty")));
        }
        self.text(field, text, max)
    }

    fn list_len<T>(&self, field: &'static str, list: &[T], max: usize) -> Result<(), Refusal> {
        if list.len() > max {
            return Err(Refusal::invalid(format!(
                "{field} has {} items, more than {max}",
                list.len()
            )));
        }
        Ok(())
    }

    fn non_empty<T>(&self, field: &'static str, list: &[T]) -> Result<(), Refusal> {
        if list.is_empty() {
            return Err(Refusal::invalid(format!("{field} is empty")));
        }
        Ok(())
    }

    fn degrees(&self, field: &'static str, value: f64, max: f64) -> Result<(), Refusal> {
        // NaN fails the range test too.
        if !(-max..=max).contains(&value) {
            return Err(Refusal::invalid(format!(
                "{field} is not within ±{max} degrees"
            )));
        }
        Ok(())
    }

    fn platform(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        // UNSPECIFIED is allowed: a client that does not say is still a client.
        pb::Platform::try_from(v)
            .map(drop)
            .map_err(|_| bad_enum(field, v))
    }

    fn push_platform(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        match pb::PushPlatform::try_from(v) {
            Ok(pb::PushPlatform::Unspecified) | Err(_) => Err(bad_enum(field, v)),
            Ok(_) => Ok(()),
        }
    }

    /// A push token or topic: 1 to `max` bytes of printable ASCII, no
    /// spaces (it goes into a provider's URL path or header).
    fn push_token(&self, field: &'static str, s: &str, max: usize) -> Result<(), Refusal> {
        if s.is_empty() {
            return Err(Refusal::invalid(format!("{field} is empty")));
        }
        if s.len() > max {
            return Err(too_long(field, s.len(), max));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::invalid(format!(
                "{field} holds a byte that is not printable ASCII"
            )));
        }
        Ok(())
    }

    fn presence_state(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        match pb::PresenceState::try_from(v) {
            Ok(pb::PresenceState::Unspecified) | Err(_) => Err(bad_enum(field, v)),
            Ok(_) => Ok(()),
        }
    }

    fn group_role(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        match pb::GroupRole::try_from(v) {
            Ok(pb::GroupRole::Unspecified) | Err(_) => Err(bad_enum(field, v)),
            Ok(_) => Ok(()),
        }
    }

    fn room_kind(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        // UNSPECIFIED means CHAT (docs/protocol.md, "Rooms").
        pb::RoomKind::try_from(v)
            .map(drop)
            .map_err(|_| bad_enum(field, v))
    }

    fn join_policy(&self, field: &'static str, v: i32) -> Result<(), Refusal> {
        // JOIN_POLICY_OPEN is 0 in the schema: every defined value is a choice.
        pb::JoinPolicy::try_from(v)
            .map(drop)
            .map_err(|_| bad_enum(field, v))
    }
}

fn server_only(name: &'static str) -> Refusal {
    Refusal::new(
        pb::ErrorCode::ServerOnlyFrame,
        format!("`{name}` is sent only by the server"),
    )
}

fn too_long(field: &'static str, len: usize, max: usize) -> Refusal {
    Refusal::invalid(format!("{field} is {len} bytes, more than {max}"))
}

fn bad_enum(field: &'static str, v: i32) -> Refusal {
    Refusal::invalid(format!("{field}: {v} is not an allowed value"))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(request_id: u64, body: Body) -> pb::Frame {
        pb::Frame {
            request_id,
            body: Some(body),
        }
    }

    fn check(f: &pb::Frame) -> Result<(), Refusal> {
        check_client_frame(f, &ClientLimits::default())
    }

    fn code(f: &pb::Frame) -> Option<pb::ErrorCode> {
        check(f).err().map(|r| r.code)
    }

    fn text_send(text: &str) -> pb::Send {
        pb::Send {
            client_msg_id: "m1".into(),
            to: Some(pb::send::To::UserId("bob".into())),
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn valid_frames_pass() {
        // Proves typical well-formed client frames are accepted.
        let auth = pb::Auth {
            token: "t.o.k".into(),
            device_id: "phone-1".into(),
            platform: pb::Platform::Ios as i32,
            protocol_version: 1,
            capabilities: vec!["batch-deliver".into()],
            resume_cursors: vec![pb::Cursor {
                conversation_id: "g:team".into(),
                seq: 0,
            }],
            client_version: "tern-cli 0.1".into(),
        };
        assert_eq!(check(&frame(0, Body::Auth(auth))), Ok(()));
        assert_eq!(check(&frame(0, Body::Ping(pb::Ping { nonce: 1 }))), Ok(()));
        assert_eq!(check(&frame(5, Body::Send(text_send("hi")))), Ok(()));
        let ack = pb::DeliverAck {
            cursors: vec![pb::Cursor {
                conversation_id: "d:alice:bob".into(),
                seq: 3,
            }],
        };
        assert_eq!(check(&frame(0, Body::DeliverAck(ack))), Ok(()));
    }

    #[test]
    fn shape_errors_get_their_codes() {
        // Proves no body, server-only bodies and a missing request_id get the
        // protocol's codes, and the Error frame carries code and request_id.
        assert_eq!(code(&pb::Frame::default()), Some(pb::ErrorCode::BadFrame));
        let pong = frame(0, Body::Pong(pb::Pong::default()));
        assert_eq!(code(&pong), Some(pb::ErrorCode::ServerOnlyFrame));
        let r = check(&frame(0, Body::Send(text_send("hi")))).unwrap_err();
        assert_eq!(r.code, pb::ErrorCode::InvalidArgument);
        assert!(r.reason.contains("request_id"), "{r}");
        let f = r.into_frame(9);
        assert_eq!(f.request_id, 9);
        let Some(Body::Error(e)) = f.body else {
            panic!("an Error frame")
        };
        assert_eq!(e.code, pb::ErrorCode::InvalidArgument as i32);
    }

    /// One valid example of every client body variant, and a broken copy of
    /// it with the field its refusal must name.
    fn every_client_variant() -> Vec<(Body, Body, &'static str)> {
        use pb::content::Kind;
        let cursor = |c: &str, seq| pb::Cursor {
            conversation_id: c.into(),
            seq,
        };
        let media = |id: &str| pb::MediaRef {
            media_id: id.into(),
            mime: "image/png".into(),
            sha256: "ab".repeat(32),
            thumbnail: Some(pb::Thumbnail {
                media_id: "t1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let send = |kind: Kind| pb::Send {
            client_msg_id: "m1".into(),
            to: Some(pb::send::To::GroupId("team".into())),
            content: Some(pb::Content { kind: Some(kind) }),
            mentions: vec!["alice".into()],
            ..Default::default()
        };
        let auth = pb::Auth {
            token: "jwt".into(),
            device_id: "d1".into(),
            resume_cursors: vec![cursor("g:team", 0)],
            ..Default::default()
        };
        let location = pb::Location {
            latitude: 48.8,
            longitude: 2.3,
            ..Default::default()
        };
        let custom = pb::Custom {
            r#type: "card".into(),
            data: vec![1, 2],
        };
        vec![
            (
                Body::Auth(auth.clone()),
                Body::Auth(pb::Auth {
                    resume_cursors: vec![cursor("x", 1)],
                    ..auth
                }),
                "auth.resume_cursors[0].conversation_id",
            ),
            (
                Body::Ping(pb::Ping { nonce: 1 }),
                Body::Ping(pb::Ping { nonce: 2 }),
                "",
            ),
            (
                Body::Send(send(Kind::Text(pb::Text { text: "hi".into() }))),
                Body::Send(send(Kind::Text(pb::Text {
                    text: String::new(),
                }))),
                "send.content.text",
            ),
            (
                Body::Send(send(Kind::Image(pb::Image {
                    media: Some(media("i1")),
                }))),
                Body::Send(send(Kind::Image(pb::Image { media: None }))),
                "send.content.image.media",
            ),
            (
                Body::Send(send(Kind::File(pb::File {
                    media: Some(media("f1")),
                    name: "a.pdf".into(),
                }))),
                Body::Send(send(Kind::File(pb::File {
                    media: Some(media("f 1")),
                    name: "a".into(),
                }))),
                "send.content.file.media",
            ),
            (
                Body::Send(send(Kind::Voice(pb::Voice {
                    media: Some(media("v1")),
                }))),
                Body::Send(send(Kind::Voice(pb::Voice {
                    media: Some(pb::MediaRef {
                        sha256: "xyz".into(),
                        ..media("v1")
                    }),
                }))),
                "send.content.voice.media.sha256",
            ),
            (
                Body::Send(send(Kind::Video(pb::Video {
                    media: Some(media("v1")),
                }))),
                Body::Send(send(Kind::Video(pb::Video {
                    media: Some(media("")),
                }))),
                "send.content.video.media",
            ),
            (
                Body::Send(send(Kind::Location(location.clone()))),
                Body::Send(send(Kind::Location(pb::Location {
                    latitude: f64::NAN,
                    ..location
                }))),
                "send.content.location.latitude",
            ),
            (
                Body::Send(send(Kind::Custom(custom.clone()))),
                Body::Send(send(Kind::Custom(pb::Custom {
                    data: vec![0; 40_000],
                    ..custom
                }))),
                "send.content.custom.data",
            ),
            (
                Body::Send(send(Kind::Text(pb::Text { text: "hi".into() }))),
                Body::Send(pb::Send {
                    to: None,
                    ..send(Kind::Text(pb::Text { text: "hi".into() }))
                }),
                "send.to",
            ),
            (
                Body::Send(send(Kind::Text(pb::Text { text: "hi".into() }))),
                Body::Send(pb::Send {
                    mentions: vec!["x".into(); 65],
                    ..send(Kind::Text(pb::Text { text: "hi".into() }))
                }),
                "send.mentions",
            ),
            (
                Body::Send(send(Kind::Text(pb::Text { text: "hi".into() }))),
                Body::Send(pb::Send {
                    content: None,
                    ..send(Kind::Text(pb::Text { text: "hi".into() }))
                }),
                "send.content",
            ),
            (
                Body::DeliverAck(pb::DeliverAck {
                    cursors: vec![cursor("d:a:b", 1)],
                }),
                Body::DeliverAck(pb::DeliverAck { cursors: vec![] }),
                "deliver_ack.cursors",
            ),
            (
                Body::Sync(pb::SyncRequest {
                    cursors: vec![cursor("d:a:b", 0)],
                    limit: 0,
                }),
                Body::Sync(pb::SyncRequest {
                    cursors: vec![cursor("d:a:b", 0); 1_001],
                    limit: 0,
                }),
                "sync.cursors",
            ),
            (
                Body::History(pb::HistoryRequest {
                    conversation_id: "g:t".into(),
                    ..Default::default()
                }),
                Body::History(pb::HistoryRequest {
                    conversation_id: "g:".into(),
                    ..Default::default()
                }),
                "history.conversation_id",
            ),
            (
                Body::Recall(pb::RecallRequest {
                    conversation_id: "g:t".into(),
                    seq: 3,
                }),
                Body::Recall(pb::RecallRequest {
                    conversation_id: "g:t".into(),
                    seq: 0,
                }),
                "recall.seq",
            ),
            (
                Body::Read(pb::ReadRequest {
                    conversation_id: "g:t".into(),
                    up_to_seq: 3,
                }),
                Body::Read(pb::ReadRequest {
                    conversation_id: "g:t".into(),
                    up_to_seq: 0,
                }),
                "read.up_to_seq",
            ),
            (
                Body::Typing(pb::TypingRequest {
                    conversation_id: "d:a:b".into(),
                    typing: true,
                }),
                Body::Typing(pb::TypingRequest {
                    conversation_id: "d:b:a".into(),
                    typing: true,
                }),
                "typing.conversation_id",
            ),
            (
                Body::SetPresence(pb::SetPresenceRequest {
                    state: 1,
                    text: "hi".into(),
                }),
                Body::SetPresence(pb::SetPresenceRequest {
                    state: 1,
                    text: "x".repeat(257),
                }),
                "set_presence.text",
            ),
            (
                Body::PresenceQuery(pb::PresenceQuery {
                    user_ids: vec!["a".into()],
                }),
                Body::PresenceQuery(pb::PresenceQuery { user_ids: vec![] }),
                "presence_query.user_ids",
            ),
            (
                Body::Conversations(Default::default()),
                Body::Conversations(pb::ConversationListRequest {
                    limit: 5,
                    offset: 9,
                }),
                "",
            ),
            (
                Body::ReadBy(pb::ReadByQuery {
                    conversation_id: "g:t".into(),
                    seqs: vec![1, 2],
                }),
                Body::ReadBy(pb::ReadByQuery {
                    conversation_id: "g:t".into(),
                    seqs: vec![1, 0],
                }),
                "read_by.seqs",
            ),
            (
                Body::FriendRequest(pb::FriendRequestSend {
                    user_id: "b".into(),
                    message: "hi".into(),
                }),
                Body::FriendRequest(pb::FriendRequestSend {
                    user_id: "b".into(),
                    message: "x".repeat(300),
                }),
                "friend_request.message",
            ),
            (
                Body::FriendAccept(pb::FriendAccept {
                    user_id: "b".into(),
                }),
                Body::FriendAccept(pb::FriendAccept {
                    user_id: "b\n".into(),
                }),
                "friend_accept.user_id",
            ),
            (
                Body::FriendReject(pb::FriendReject {
                    user_id: "b".into(),
                }),
                Body::FriendReject(pb::FriendReject {
                    user_id: String::new(),
                }),
                "friend_reject.user_id",
            ),
            (
                Body::FriendDelete(pb::FriendDelete {
                    user_id: "b".into(),
                }),
                Body::FriendDelete(pb::FriendDelete {
                    user_id: "{b}".into(),
                }),
                "friend_delete.user_id",
            ),
            (
                Body::FriendList(pb::FriendListRequest {}),
                Body::FriendList(pb::FriendListRequest {}),
                "",
            ),
            (
                Body::Profile(pb::ProfileRequest {
                    user_id: "b".into(),
                }),
                Body::Profile(pb::ProfileRequest {
                    user_id: String::new(),
                }),
                "profile.user_id",
            ),
            (
                Body::FriendRemark(pb::FriendRemark {
                    user_id: "b".into(),
                    remark: String::new(),
                }),
                Body::FriendRemark(pb::FriendRemark {
                    user_id: "b".into(),
                    remark: "r".repeat(129),
                }),
                "friend_remark.remark",
            ),
            (
                Body::FriendBlock(pb::FriendBlock {
                    user_id: "b".into(),
                    blocked: true,
                }),
                Body::FriendBlock(pb::FriendBlock {
                    user_id: "b b".into(),
                    blocked: true,
                }),
                "friend_block.user_id",
            ),
            (
                Body::ProfileUpdate(pb::ProfileUpdate {
                    bio: Some("hi".into()),
                    ..Default::default()
                }),
                Body::ProfileUpdate(pb::ProfileUpdate {
                    bio: Some("x".repeat(3000)),
                    ..Default::default()
                }),
                "profile_update.bio",
            ),
            (
                Body::FriendRequests(Default::default()),
                Body::FriendRequests(Default::default()),
                "",
            ),
            (
                Body::GroupCreate(pb::GroupCreate {
                    name: "t".into(),
                    ..Default::default()
                }),
                Body::GroupCreate(pb::GroupCreate {
                    members: vec!["ok".into(), "".into()],
                    ..Default::default()
                }),
                "group_create.members[1]",
            ),
            (
                Body::GroupInfo(pb::GroupInfoRequest {
                    group_id: "g1".into(),
                }),
                Body::GroupInfo(pb::GroupInfoRequest {
                    group_id: String::new(),
                }),
                "group_info.group_id",
            ),
            (
                Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: "g1".into(),
                    ..Default::default()
                }),
                Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: "g1".into(),
                    after_user_id: "a:b".into(),
                    limit: 0,
                }),
                "group_members.after_user_id",
            ),
            (
                Body::GroupJoin(pb::GroupJoin {
                    group_id: "g1".into(),
                    message: String::new(),
                }),
                Body::GroupJoin(pb::GroupJoin {
                    group_id: "g:1".into(),
                    message: String::new(),
                }),
                "group_join.group_id",
            ),
            (
                Body::GroupInvite(pb::GroupInvite {
                    group_id: "g1".into(),
                    user_ids: vec!["a".into()],
                }),
                Body::GroupInvite(pb::GroupInvite {
                    group_id: "g1".into(),
                    user_ids: vec!["a".into(); 201],
                }),
                "group_invite.user_ids",
            ),
            (
                Body::GroupKick(pb::GroupKick {
                    group_id: "g1".into(),
                    user_id: "a".into(),
                }),
                Body::GroupKick(pb::GroupKick {
                    group_id: "g1".into(),
                    user_id: String::new(),
                }),
                "group_kick.user_id",
            ),
            (
                Body::GroupLeave(pb::GroupLeave {
                    group_id: "g1".into(),
                }),
                Body::GroupLeave(pb::GroupLeave {
                    group_id: String::new(),
                }),
                "group_leave.group_id",
            ),
            (
                Body::GroupDissolve(pb::GroupDissolve {
                    group_id: "g1".into(),
                }),
                Body::GroupDissolve(pb::GroupDissolve {
                    group_id: String::new(),
                }),
                "group_dissolve.group_id",
            ),
            (
                Body::GroupRename(pb::GroupRename {
                    group_id: "g1".into(),
                    name: "n".into(),
                }),
                Body::GroupRename(pb::GroupRename {
                    group_id: "g1".into(),
                    name: String::new(),
                }),
                "group_rename.name",
            ),
            (
                Body::GroupAnnounce(pb::GroupAnnounce {
                    group_id: "g1".into(),
                    announcement: "a".into(),
                }),
                Body::GroupAnnounce(pb::GroupAnnounce {
                    group_id: "g1".into(),
                    announcement: "a".repeat(2049),
                }),
                "group_announce.announcement",
            ),
            (
                Body::GroupSetNickname(pb::GroupSetNickname {
                    group_id: "g1".into(),
                    nickname: "n".into(),
                }),
                Body::GroupSetNickname(pb::GroupSetNickname {
                    group_id: "g1".into(),
                    nickname: "n".repeat(129),
                }),
                "group_set_nickname.nickname",
            ),
            (
                Body::GroupSetRemark(pb::GroupSetRemark {
                    group_id: "g1".into(),
                    remark: "r".into(),
                }),
                Body::GroupSetRemark(pb::GroupSetRemark {
                    group_id: "g1".into(),
                    remark: "r".repeat(129),
                }),
                "group_set_remark.remark",
            ),
            (
                Body::GroupSetRole(pb::GroupSetRole {
                    group_id: "g1".into(),
                    user_id: "a".into(),
                    role: 2,
                }),
                Body::GroupSetRole(pb::GroupSetRole {
                    group_id: "g1".into(),
                    user_id: "a".into(),
                    role: 0,
                }),
                "group_set_role.role",
            ),
            (
                Body::GroupMute(pb::GroupMute {
                    group_id: "g1".into(),
                    ..Default::default()
                }),
                Body::GroupMute(pb::GroupMute {
                    group_id: "g1".into(),
                    user_id: "é".into(),
                    duration_ms: 1,
                }),
                "group_mute.user_id",
            ),
            (
                Body::GroupJoinDecision(pb::GroupJoinDecision {
                    group_id: "g1".into(),
                    user_id: "a".into(),
                    approve: true,
                }),
                Body::GroupJoinDecision(pb::GroupJoinDecision {
                    group_id: "g1".into(),
                    ..Default::default()
                }),
                "group_join_decision.user_id",
            ),
            (
                Body::GroupSetPolicy(pb::GroupSetPolicy {
                    group_id: "g1".into(),
                    ..Default::default()
                }),
                Body::GroupSetPolicy(pb::GroupSetPolicy {
                    group_id: "g1".into(),
                    join_policy: 7,
                    history_visible: true,
                }),
                "group_set_policy.join_policy",
            ),
            (
                Body::GroupList(pb::GroupListRequest {}),
                Body::GroupList(pb::GroupListRequest {}),
                "",
            ),
            (
                Body::Edit(pb::EditRequest {
                    conversation_id: "d:alice:bob".into(),
                    seq: 3,
                    client_edit_id: "e1".into(),
                    content: text_send("new").content,
                    streaming: true,
                }),
                Body::Edit(pb::EditRequest {
                    conversation_id: "d:alice:bob".into(),
                    seq: 3,
                    client_edit_id: "e1".into(),
                    content: text_send("").content,
                    streaming: false,
                }),
                "edit.content.text",
            ),
            (
                Body::React(pb::ReactRequest {
                    conversation_id: "d:alice:bob".into(),
                    seq: 3,
                    emoji: "\u{1f44d}".into(),
                    remove: false,
                }),
                Body::React(pb::ReactRequest {
                    conversation_id: "d:alice:bob".into(),
                    seq: 3,
                    emoji: "thumbs up".into(),
                    remove: false,
                }),
                "react.emoji",
            ),
            (
                Body::Pin(pb::PinRequest {
                    conversation_id: "g:g1".into(),
                    seq: 3,
                    unpin: false,
                }),
                Body::Pin(pb::PinRequest {
                    conversation_id: "g:g1".into(),
                    seq: 0,
                    unpin: true,
                }),
                "pin.seq",
            ),
            (
                Body::Pins(pb::PinListRequest {
                    conversation_id: "g:g1".into(),
                }),
                Body::Pins(pb::PinListRequest {
                    conversation_id: "g:".into(),
                }),
                "pins.conversation_id",
            ),
            (
                Body::ThreadRead(pb::ThreadReadRequest {
                    conversation_id: "d:alice:bob".into(),
                    root_seq: 3,
                    up_to_seq: 5,
                }),
                Body::ThreadRead(pb::ThreadReadRequest {
                    conversation_id: "d:alice:bob".into(),
                    root_seq: 0,
                    up_to_seq: 5,
                }),
                "thread_read.root_seq",
            ),
            (
                Body::ThreadInfo(pb::ThreadInfoRequest {
                    conversation_id: "g:g1".into(),
                    root_seqs: vec![3],
                }),
                Body::ThreadInfo(pb::ThreadInfoRequest {
                    conversation_id: "g:g1".into(),
                    root_seqs: vec![1; SEQS_MAX_DEFAULT + 1],
                }),
                "thread_info.root_seqs",
            ),
            (
                Body::Todo(pb::TodoRequest {
                    conversation_id: "g:g1".into(),
                    seq: 3,
                    action: pb::TodoAction::Create as i32,
                    assignees: vec!["bob".into()],
                }),
                Body::Todo(pb::TodoRequest {
                    conversation_id: "g:g1".into(),
                    seq: 3,
                    action: pb::TodoAction::Create as i32,
                    assignees: (0..=TODO_ASSIGNEES_MAX).map(|i| format!("u{i}")).collect(),
                }),
                "todo.assignees",
            ),
            (
                Body::TodoList(pb::TodoListRequest {
                    limit: 10,
                    after: None,
                }),
                Body::TodoList(pb::TodoListRequest {
                    limit: 10,
                    after: Some(pb::Cursor {
                        conversation_id: "x".into(),
                        seq: 1,
                    }),
                }),
                "todo_list.after.conversation_id",
            ),
            (
                Body::DeviceList(pb::DeviceListRequest {}),
                Body::DeviceList(pb::DeviceListRequest {}),
                "",
            ),
            (
                Body::DeviceLogout(pb::DeviceLogout {
                    device_id: "phone".into(),
                }),
                Body::DeviceLogout(pb::DeviceLogout {
                    device_id: String::new(),
                }),
                "device_logout.device_id",
            ),
            (
                Body::Call(pb::CallAction {
                    kind: pb::CallActionKind::Accept as i32,
                    call_id: "c1".into(),
                    ..Default::default()
                }),
                Body::Call(pb::CallAction {
                    kind: pb::CallActionKind::Accept as i32,
                    call_id: String::new(),
                    ..Default::default()
                }),
                "call.call_id",
            ),
            (
                Body::CallSignal(pb::CallSignal {
                    call_id: "c1".into(),
                    to_user_id: "bob".into(),
                    kind: pb::CallSignalKind::Offer as i32,
                    payload: "v=0".into(),
                    ..Default::default()
                }),
                Body::CallSignal(pb::CallSignal {
                    call_id: "c1".into(),
                    to_user_id: "bob".into(),
                    kind: pb::CallSignalKind::Offer as i32,
                    payload: "v".repeat(CALL_SIGNAL_BYTES_MAX + 1),
                    ..Default::default()
                }),
                "call_signal.payload",
            ),
            (
                Body::Search(pb::SearchRequest {
                    query: "\"*\" OR -x:".into(),
                    ..Default::default()
                }),
                Body::Search(pb::SearchRequest {
                    query: "a".repeat(SEARCH_QUERY_BYTES_MAX + 1),
                    ..Default::default()
                }),
                "search.query",
            ),
            (
                Body::RoomCreate(pb::RoomCreate {
                    room_id: "lobby".into(),
                    name: "Lobby".into(),
                    kind: pb::RoomKind::Broadcast as i32,
                    admins: vec!["bob".into()],
                }),
                Body::RoomCreate(pb::RoomCreate {
                    room_id: "lobby".into(),
                    admins: (0..=ROOM_ADMINS_MAX).map(|i| format!("u{i}")).collect(),
                    ..Default::default()
                }),
                "room_create.admins",
            ),
            (
                Body::RoomJoin(pb::RoomJoin {
                    room_id: "lobby".into(),
                }),
                Body::RoomJoin(pb::RoomJoin {
                    room_id: "r:lobby".into(),
                }),
                "room_join.room_id",
            ),
            (
                Body::RoomLeave(pb::RoomLeave {
                    room_id: "lobby".into(),
                }),
                Body::RoomLeave(pb::RoomLeave {
                    room_id: String::new(),
                }),
                "room_leave.room_id",
            ),
            (
                Body::RoomPost(pb::RoomPost {
                    room_id: "lobby".into(),
                    content: text_send("hi").content,
                    client_msg_id: "m1".into(),
                }),
                Body::RoomPost(pb::RoomPost {
                    room_id: "lobby".into(),
                    content: None,
                    client_msg_id: "m1".into(),
                }),
                "room_post.content",
            ),
            (
                Body::RoomHistory(pb::RoomHistoryRequest {
                    room_id: "lobby".into(),
                    before_seq: 0,
                    limit: 10,
                }),
                Body::RoomHistory(pb::RoomHistoryRequest {
                    room_id: "a b".into(),
                    before_seq: 0,
                    limit: 10,
                }),
                "room_history.room_id",
            ),
            (
                Body::RoomInfo(pb::RoomInfoRequest {
                    room_id: "lobby".into(),
                }),
                Body::RoomInfo(pb::RoomInfoRequest {
                    room_id: "x".repeat(65),
                }),
                "room_info.room_id",
            ),
            (
                Body::RoomDelete(pb::RoomDelete {
                    room_id: "lobby".into(),
                }),
                Body::RoomDelete(pb::RoomDelete {
                    room_id: "r:lobby".into(),
                }),
                "room_delete.room_id",
            ),
            (
                Body::PushRegister(pb::PushTokenRegister {
                    platform: pb::PushPlatform::Apns as i32,
                    token: "ab".repeat(32),
                    topic: "com.example.tern".into(),
                }),
                Body::PushRegister(pb::PushTokenRegister {
                    platform: pb::PushPlatform::Apns as i32,
                    token: "a b".into(),
                    topic: String::new(),
                }),
                "push_register.token",
            ),
            (
                Body::PushUnregister(pb::PushTokenUnregister {
                    platform: pb::PushPlatform::Fcm as i32,
                    token: "fcm:token-1".into(),
                }),
                Body::PushUnregister(pb::PushTokenUnregister {
                    platform: pb::PushPlatform::Unspecified as i32,
                    token: "fcm:token-1".into(),
                }),
                "push_unregister.platform",
            ),
            (
                Body::PushList(pb::PushListRequest {}),
                Body::PushList(pb::PushListRequest {}),
                "",
            ),
            (
                Body::PushMute(pb::PushMute {
                    conversation_id: "g:team".into(),
                    until_ms: u64::MAX,
                }),
                Body::PushMute(pb::PushMute {
                    conversation_id: "x:team".into(),
                    until_ms: 1,
                }),
                "push_mute.conversation_id",
            ),
        ]
    }

    #[test]
    fn every_client_variant_has_a_passing_and_a_refused_example() {
        // Proves each client body variant is checked: a valid example passes,
        // a broken copy is refused as INVALID_ARGUMENT naming the field ("" marks
        // variants with nothing to get wrong), and that the table covers every
        // client variant `body_kind` knows.
        let table = every_client_variant();
        let mut seen = std::collections::BTreeSet::new();
        for (good, bad, field) in table {
            let (name, sender) = body_kind(&good);
            assert_ne!(sender, Sender::Server, "{name}");
            seen.insert(name);
            assert_eq!(check(&frame(1, good)), Ok(()), "{name}");
            let r = check(&frame(1, bad));
            if field.is_empty() {
                assert_eq!(r, Ok(()), "{name}");
            } else {
                let r = r.expect_err(field);
                assert_eq!(r.code, pb::ErrorCode::InvalidArgument, "{field}");
                assert!(r.reason.starts_with(field), "{field}: {r}");
            }
        }
        assert_eq!(
            seen.len(),
            64,
            "client variants in the schema (tags 10..=67, 70..=88, 90..=93): {seen:?}"
        );
    }

    #[test]
    fn reaction_strings() {
        // Proves the reaction rule: emoji (joined ones too) and short codes
        // pass; empty, over 32 bytes, whitespace and control characters do not.
        for ok in [
            "\u{1f44d}",
            "\u{2764}\u{fe0f}",
            "\u{1f469}\u{200d}\u{1f4bb}",
            ":+1:",
            "ok",
        ] {
            assert_eq!(check_reaction(ok), Ok(()), "{ok:?}");
        }
        let long = "\u{1f600}".repeat(9);
        for bad in ["", " ", "a b", "\n", "\u{7}", long.as_str()] {
            assert!(check_reaction(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notices_need_no_request_id_and_requests_do() {
        // Proves auth, ping, deliver_ack and typing pass with request_id 0 and
        // every other client variant is refused without one.
        for (good, _, _) in every_client_variant() {
            let (name, sender) = body_kind(&good);
            let r = check(&frame(0, good));
            match sender {
                Sender::ClientNotice => assert_eq!(r, Ok(()), "{name}"),
                _ => assert!(r.unwrap_err().reason.contains("request_id"), "{name}"),
            }
        }
    }

    #[test]
    fn text_bound_is_inclusive() {
        // Proves text_bytes_max bytes pass and one more is refused, naming the field.
        let l = ClientLimits {
            text_bytes_max: 4,
            ..Default::default()
        };
        let ok = frame(1, Body::Send(text_send("abcd")));
        assert_eq!(check_client_frame(&ok, &l), Ok(()));
        let long = frame(1, Body::Send(text_send("abcde")));
        let r = check_client_frame(&long, &l).unwrap_err();
        assert!(r.reason.starts_with("send.content.text"), "{r}");
    }
}
