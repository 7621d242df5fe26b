//! Tenant isolation (issue 20; docs/tenants.md): a request names ids of
//! its caller's tenant only.
//!
//! Ids carry their tenant (`<tenant>~<local>`, [`tern_protocol::ids`]), so
//! whether a request crosses tenants is read from the request alone,
//! before any store access: the answer never says whether the other
//! tenant's user or group exists. The caller's tenant is its user id's,
//! for a device, for the gateway speaking for a connection, and for the
//! server API acting as a user alike; the API checks separately that a key
//! scoped to a tenant acts only as that tenant's users.
//!
//! The one exception is a federation (`Config::federation`, pairs of
//! tenants whose users may name each other's ids).
//!
//! Every client request is listed in [`check`] with every id field it
//! carries; the match has no catch-all, so a new frame does not build until
//! it is classified here.

use std::collections::HashMap;

use parking_lot::Mutex;
use tern_protocol::ids::{ConversationId, tenant_of};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::Caller;
use crate::config::Federation;
use crate::error::DomainError;

/// `Ok` when every user, group, room, conversation and media id `body`
/// names is in `caller`'s tenant, or in one `federation` pairs with it.
pub(super) fn check(
    caller: &Caller,
    federation: &Federation,
    body: &Body,
) -> Result<(), DomainError> {
    let t = Scope {
        own: tenant_of(&caller.user_id),
        federation,
    };
    match body {
        Body::Send(m) => {
            match &m.to {
                Some(pb::send::To::UserId(u)) => t.id("send.to.user_id", u)?,
                Some(pb::send::To::GroupId(g)) => t.id("send.to.group_id", g)?,
                None => {}
            }
            t.ids("send.mentions", &m.mentions)?;
            t.content(m.content.as_ref())
        }
        Body::Sync(m) => t.cursors("sync.cursors", &m.cursors),
        Body::History(m) => t.conv("history.conversation_id", &m.conversation_id),
        Body::Recall(m) => t.conv("recall.conversation_id", &m.conversation_id),
        Body::Read(m) => t.conv("read.conversation_id", &m.conversation_id),
        Body::ReadBy(m) => t.conv("read_by.conversation_id", &m.conversation_id),
        Body::Typing(m) => t.conv("typing.conversation_id", &m.conversation_id),
        Body::PresenceQuery(m) => t.ids("presence_query.user_ids", &m.user_ids),
        Body::FriendRequest(m) => t.id("friend_request.user_id", &m.user_id),
        Body::FriendAccept(m) => t.id("friend_accept.user_id", &m.user_id),
        Body::FriendReject(m) => t.id("friend_reject.user_id", &m.user_id),
        Body::FriendDelete(m) => t.id("friend_delete.user_id", &m.user_id),
        Body::Profile(m) => t.id("profile.user_id", &m.user_id),
        Body::FriendRemark(m) => t.id("friend_remark.user_id", &m.user_id),
        Body::FriendBlock(m) => t.id("friend_block.user_id", &m.user_id),
        Body::GroupCreate(m) => {
            t.id("group_create.group_id", &m.group_id)?;
            t.ids("group_create.members", &m.members)
        }
        Body::GroupInfo(m) => t.id("group_info.group_id", &m.group_id),
        Body::GroupMembers(m) => t.id("group_members.group_id", &m.group_id),
        Body::GroupJoin(m) => t.id("group_join.group_id", &m.group_id),
        Body::GroupJoinDecision(m) => {
            t.id("group_join_decision.group_id", &m.group_id)?;
            t.id("group_join_decision.user_id", &m.user_id)
        }
        Body::GroupInvite(m) => {
            t.id("group_invite.group_id", &m.group_id)?;
            t.ids("group_invite.user_ids", &m.user_ids)
        }
        Body::GroupKick(m) => {
            t.id("group_kick.group_id", &m.group_id)?;
            t.id("group_kick.user_id", &m.user_id)
        }
        Body::GroupLeave(m) => t.id("group_leave.group_id", &m.group_id),
        Body::GroupDissolve(m) => t.id("group_dissolve.group_id", &m.group_id),
        Body::GroupRename(m) => t.id("group_rename.group_id", &m.group_id),
        Body::GroupAnnounce(m) => t.id("group_announce.group_id", &m.group_id),
        Body::GroupSetNickname(m) => t.id("group_set_nickname.group_id", &m.group_id),
        Body::GroupSetRemark(m) => t.id("group_set_remark.group_id", &m.group_id),
        Body::GroupSetRole(m) => {
            t.id("group_set_role.group_id", &m.group_id)?;
            t.id("group_set_role.user_id", &m.user_id)
        }
        Body::GroupMute(m) => {
            t.id("group_mute.group_id", &m.group_id)?;
            t.id("group_mute.user_id", &m.user_id)
        }
        Body::GroupSetPolicy(m) => t.id("group_set_policy.group_id", &m.group_id),
        Body::Edit(m) => {
            t.conv("edit.conversation_id", &m.conversation_id)?;
            t.content(m.content.as_ref())
        }
        Body::Search(m) => {
            t.conv("search.conversation_id", &m.conversation_id)?;
            t.id("search.sender", &m.sender)
        }
        Body::React(m) => t.conv("react.conversation_id", &m.conversation_id),
        Body::Pin(m) => t.conv("pin.conversation_id", &m.conversation_id),
        Body::Pins(m) => t.conv("pins.conversation_id", &m.conversation_id),
        Body::ThreadRead(m) => t.conv("thread_read.conversation_id", &m.conversation_id),
        Body::ThreadInfo(m) => t.conv("thread_info.conversation_id", &m.conversation_id),
        Body::Todo(m) => {
            t.conv("todo.conversation_id", &m.conversation_id)?;
            t.ids("todo.assignees", &m.assignees)
        }
        Body::TodoList(m) => match &m.after {
            Some(c) => t.conv("todo_list.after", &c.conversation_id),
            None => Ok(()),
        },
        Body::Call(m) => {
            t.conv("call.conversation_id", &m.conversation_id)?;
            t.ids("call.invitees", &m.invitees)
        }
        Body::CallSignal(m) => t.id("call_signal.to_user_id", &m.to_user_id),
        Body::PushMute(m) => t.conv("push_mute.conversation_id", &m.conversation_id),
        Body::RoomCreate(m) => {
            t.id("room_create.room_id", &m.room_id)?;
            t.ids("room_create.admins", &m.admins)
        }
        Body::RoomJoin(m) => t.id("room_join.room_id", &m.room_id),
        Body::RoomLeave(m) => t.id("room_leave.room_id", &m.room_id),
        Body::RoomPost(m) => {
            t.id("room_post.room_id", &m.room_id)?;
            t.content(m.content.as_ref())
        }
        Body::RoomHistory(m) => t.id("room_history.room_id", &m.room_id),
        Body::RoomInfo(m) => t.id("room_info.room_id", &m.room_id),
        Body::RoomDelete(m) => t.id("room_delete.room_id", &m.room_id),
        // Requests about the caller's own records: they name no other id
        // (device ids are a user's own; call ids are checked against the
        // call's participants, all of one tenant by the invite's check).
        Body::SetPresence(_)
        | Body::Conversations(_)
        | Body::FriendList(_)
        | Body::FriendRequests(_)
        | Body::ProfileUpdate(_)
        | Body::GroupList(_)
        | Body::DeviceList(_)
        | Body::DeviceLogout(_)
        | Body::PushRegister(_)
        | Body::PushUnregister(_)
        | Body::PushList(_)
        | Body::Kick(_) => Ok(()),
        // Session frames and server-only frames: the domain answers them
        // with "not a backend request"; they name nothing to check.
        Body::Auth(_)
        | Body::Ping(_)
        | Body::DeliverAck(_)
        | Body::Welcome(_)
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
        | Body::Ok(_)
        | Body::Error(_)
        | Body::SearchResult(_)
        | Body::DeviceListResult(_)
        | Body::CallEvent(_)
        | Body::CallSignalEvent(_)
        | Body::PinsResult(_)
        | Body::ThreadInfoResult(_)
        | Body::TodoListResult(_)
        | Body::PushListResult(_)
        | Body::RoomInfoResult(_)
        | Body::RoomJoined(_)
        | Body::RoomHistoryResult(_)
        | Body::RoomDeliver(_)
        | Body::RoomClosed(_) => Ok(()),
    }
}

/// The message rate of each tenant with a limit
/// (`Config::tenant_messages_per_second`), on this node: a token bucket per
/// tenant holding one second of its rate. Bounded: one bucket per
/// configured tenant, made at start.
#[derive(Debug, Default)]
pub(super) struct TenantRates {
    buckets: HashMap<String, Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Messages a second.
    rate: u64,
    /// Thousandths of a message available (at most `rate * 1000`).
    milli: u64,
    /// When `milli` was last topped up.
    at_ms: u64,
}

/// One message, in the bucket's unit.
const MESSAGE_MILLI: u64 = 1_000;

impl TenantRates {
    /// Buckets for `limits` (a rate of 0 means no limit), full.
    pub(super) fn new(limits: &[(String, u32)]) -> Self {
        Self {
            buckets: limits
                .iter()
                .filter(|(_, rate)| *rate > 0)
                .map(|(t, rate)| {
                    let rate = u64::from(*rate);
                    let b = Bucket {
                        rate,
                        milli: rate * MESSAGE_MILLI,
                        at_ms: 0,
                    };
                    (t.clone(), Mutex::new(b))
                })
                .collect(),
        }
    }

    /// Takes one message of `user`'s tenant's rate at `now_ms`, or says
    /// how long until one is there.
    pub(super) fn admit(&self, user: &str, now_ms: u64) -> Result<(), DomainError> {
        // The common case (no tenant limited) costs no hash per send.
        if self.buckets.is_empty() {
            return Ok(());
        }
        let Some(bucket) = self.buckets.get(tenant_of(user)) else {
            return Ok(());
        };
        let mut b = bucket.lock();
        let full = b.rate * MESSAGE_MILLI;
        let elapsed = now_ms.saturating_sub(b.at_ms);
        b.milli = b
            .milli
            .saturating_add(elapsed.saturating_mul(b.rate))
            .min(full);
        b.at_ms = b.at_ms.max(now_ms);
        if b.milli >= MESSAGE_MILLI {
            b.milli -= MESSAGE_MILLI;
            return Ok(());
        }
        let wait_ms = (MESSAGE_MILLI - b.milli).div_ceil(b.rate);
        Err(DomainError::TenantRateLimited(
            u32::try_from(wait_ms).unwrap_or(u32::MAX).max(1),
        ))
    }
}

/// The tenants a request may name ids of.
#[derive(Clone, Copy)]
struct Scope<'a> {
    /// The caller's.
    own: &'a str,
    /// And those federated with it.
    federation: &'a Federation,
}

impl Scope<'_> {
    fn allows(self, tenant: &str) -> bool {
        self.federation.allows(self.own, tenant)
    }

    /// An id (empty means "none" where the schema allows it; the shape was
    /// checked elsewhere).
    fn id(self, field: &'static str, id: &str) -> Result<(), DomainError> {
        if id.is_empty() || self.allows(tenant_of(id)) {
            Ok(())
        } else {
            Err(DomainError::TenantMismatch(field))
        }
    }

    fn ids(self, field: &'static str, ids: &[String]) -> Result<(), DomainError> {
        ids.iter().try_for_each(|id| self.id(field, id))
    }

    /// A conversation id; one that does not parse is left to the handler's
    /// own check (it answers INVALID_ARGUMENT).
    fn conv(self, field: &'static str, id: &str) -> Result<(), DomainError> {
        match ConversationId::parse(id) {
            Ok(c) if !c.tenants().into_iter().all(|t| self.allows(t)) => {
                Err(DomainError::TenantMismatch(field))
            }
            _ => Ok(()),
        }
    }

    fn cursors(self, field: &'static str, cursors: &[pb::Cursor]) -> Result<(), DomainError> {
        cursors
            .iter()
            .try_for_each(|c| self.conv(field, &c.conversation_id))
    }

    /// The media a message carries: uploads are named in the uploader's
    /// tenant, so a message cannot point at another tenant's object (and
    /// its members could then download it by naming the message).
    fn content(self, content: Option<&pb::Content>) -> Result<(), DomainError> {
        use pb::content::Kind;
        let media = match content.and_then(|c| c.kind.as_ref()) {
            Some(Kind::Image(i)) => i.media.as_ref(),
            Some(Kind::File(f)) => f.media.as_ref(),
            Some(Kind::Voice(v)) => v.media.as_ref(),
            Some(Kind::Video(v)) => v.media.as_ref(),
            Some(Kind::Text(_) | Kind::Location(_) | Kind::Custom(_)) | None => None,
        };
        let Some(m) = media else { return Ok(()) };
        self.id("content.media.media_id", &m.media_id)?;
        match &m.thumbnail {
            Some(th) => self.id("content.media.thumbnail", &th.media_id),
            None => Ok(()),
        }
    }
}
