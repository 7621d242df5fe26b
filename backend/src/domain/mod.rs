//! The chat domain: validation, authorization, what goes into a log, and
//! who gets what. Written once over [`Store`]; every store gets the same
//! behaviour.
//!
//! The gateway calls [`Domain::handle_batch`] (or [`Domain::handle`]) from a
//! backend worker thread with the requests that arrived together and the
//! current time; it gets back one [`Outcome`] per request: the reply frame
//! body for the requester and the [`Effect`]s to push to other devices.
//! [`Domain::poll_expired`] is called now and then to expire typing states.
//!
//! This module never does I/O itself (only through the store), never reads a
//! clock (time is passed in) and never panics on client input.
//!
//! Submodules: `messages` (send, sync, history, recall, read, read-by,
//! conversation list), `groups`, `social` (friends, profiles, blocks),
//! `ephemeral` (typing and presence), `edit`, `react` (reactions and
//! pins), `threads`, `todos` and `rooms` (issue 19); `tenant` (no request
//! names another tenant's ids, issue 20).

mod admin;
mod calls;
mod edit;
mod ephemeral;
mod groups;
mod messages;
pub mod push;
mod react;
mod rooms;
pub mod search;
mod social;
mod tenant;
mod threads;
mod todos;

use messages::{DirectChecks, DirectReadAhead, Prepared};

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use crate::config::Config;
use crate::error::{DomainError, bad_id};
use crate::store::{GroupMeta, Store};

/// The user whose device made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated user id (the token's `sub`).
    pub user_id: String,
    /// The device id from `Auth`; empty when the gateway speaks for the
    /// user's connections ([`Caller::connection`]).
    pub device_id: String,
    /// An operator acting through the server API: may send without
    /// friendship or membership, manage any group as if its owner, read any
    /// conversation, ban and kick. Only the gateway's API path sets it;
    /// nothing a client sends can (see docs/http-api.md).
    pub admin: bool,
}

impl Caller {
    /// The gateway speaking for `user`'s connections: its `set_presence`
    /// ONLINE says the user's first device that counts toward presence
    /// connected, OFFLINE that the last one left (a user's own
    /// `set_presence` is a choice kept as their setting instead).
    pub fn connection(user: &str) -> Self {
        Self {
            user_id: user.to_owned(),
            device_id: String::new(),
            admin: false,
        }
    }

    /// Whether this is [`Caller::connection`] (no device: clients always
    /// have one, checked at auth).
    pub fn is_connection(&self) -> bool {
        self.device_id.is_empty()
    }
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Who asks.
    pub caller: Caller,
    /// What they ask (a client frame body).
    pub body: Body,
}

/// User ids that get an effect. Shared (`Arc`) because a group's member
/// list is reused for every message to that group.
pub type Recipients = Arc<[String]>;

/// What the gateway does with one request's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The frame body to answer the request with (a response, `Ok`, or
    /// `Error`); `None` for requests the protocol does not answer on
    /// success (`typing`).
    pub reply: Option<Body>,
    /// Pushes to make, in order.
    pub effects: Vec<Effect>,
}

/// A push the gateway must make after a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new log entry: push it (as a `Deliver`) to every device of every
    /// recipient, the requester's other devices included (the gateway may
    /// skip the requesting device itself for messages, which it acks).
    Deliver {
        /// The stored entry, with its seq.
        entry: pb::Entry,
        /// Users whose devices get it.
        recipients: Recipients,
    },
    /// A change about one user outside any log (friend request, added to a
    /// group…): push it to every device of `user_id`.
    Event {
        /// The user.
        user_id: String,
        /// What happened.
        event: pb::ServerEvent,
    },
    /// Someone types (or stopped) in a conversation.
    Typing {
        /// Users whose devices get it (never the typist).
        recipients: Recipients,
        /// The event.
        event: pb::TypingEvent,
    },
    /// Someone's presence changed.
    Presence {
        /// Users whose devices get it (the user's friends).
        recipients: Recipients,
        /// The event.
        event: pb::PresenceEvent,
    },
    /// A call's signalling (`CallEvent`, `CallSignalEvent`): push `body` to
    /// every device of `recipients` (docs/protocol.md, "Calls").
    Call {
        /// Users whose devices get it.
        recipients: Recipients,
        /// The frame body.
        body: Body,
    },
    /// A message posted to a room (`rooms.rs`): push it (as a
    /// `RoomDeliver`) to every connection that joined the room, on every
    /// shard and node. Its recipients are not known here: the gateway
    /// keeps them.
    Room {
        /// The room.
        room_id: String,
        /// The stored entry, with its seq and `r:<room>` conversation id.
        entry: pb::Entry,
    },
    /// A room was deleted (`rooms.rs`): push `RoomClosed` to every
    /// connection that joined it, on every shard and node, and unsubscribe
    /// them there.
    RoomClosed {
        /// The room.
        room_id: String,
    },
    /// Close devices of `user_id` with `kick` (an operator's kick or ban):
    /// every device, or only `kick.device_id` when set.
    Kick {
        /// The user.
        user_id: String,
        /// The frame the devices get before they are closed.
        kick: pb::Kick,
    },
}

impl Outcome {
    fn reply(body: Body) -> Self {
        Self {
            reply: Some(body),
            effects: Vec::new(),
        }
    }

    fn with(body: Body, effects: Vec<Effect>) -> Self {
        Self {
            reply: Some(body),
            effects,
        }
    }

    fn ok(seq: u64) -> Self {
        Self::reply(Body::Ok(pb::Ok {
            seq,
            id: String::new(),
        }))
    }

    /// The outcome of a failed request: an `Error` reply, no effects.
    pub fn error(e: &DomainError) -> Self {
        Self::reply(Body::Error(e.to_pb()))
    }
}

/// The result of one request handler.
type Handled = Result<Outcome, DomainError>;

/// How many times a group change is re-decided after losing a race to
/// another change of the same group before the request fails as internal.
const GROUP_CHANGE_ATTEMPTS_MAX: usize = 16;

/// Members read per store call when loading a member list.
const MEMBER_PAGE_LOAD: usize = 1_000;

/// The chat domain over one store. Share it between worker threads with an
/// `Arc`; every method takes `&self`.
pub struct Domain {
    store: Arc<dyn Store>,
    config: Config,
    /// group id → (group version, member ids): fan-out lists, valid while
    /// the group's version is unchanged (every membership change bumps it).
    member_cache: Mutex<HashMap<String, (u64, Recipients)>>,
    /// (typist, conversation) → typing state, for server-side expiry.
    typing: Mutex<HashMap<(String, String), ephemeral::TypingState>>,
    /// Calls in progress, by id (`calls.rs`).
    calls: Mutex<calls::Calls>,
    /// Makes generated group ids unique across processes.
    id_seed: u64,
    /// Makes generated group ids unique within this process.
    id_counter: AtomicU64,
    /// Users found banned (by a ban here or a login check): their requests
    /// are refused without a store read. See `admin.rs`.
    banned: admin::BannedCache,
    /// Conversations with messages or edits not yet handed to the search
    /// indexer, with the new messages' texts where they are known
    /// (bounded: see `search::PendingIndex`).
    search_pending: Mutex<search::PendingIndex>,
    /// Per-tenant message rates on this node (tenant.rs).
    tenant_rates: tenant::TenantRates,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// A domain over `store` with `config` (see [`Config::validate`]).
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        // A random seed from the standard library's per-process hash keys:
        // generated group ids need uniqueness, not secrecy.
        let id_seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let tenant_rates = tenant::TenantRates::new(&config.tenant_messages_per_second);
        Self {
            store,
            config,
            member_cache: Mutex::new(HashMap::new()),
            typing: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            id_seed,
            id_counter: AtomicU64::new(0),
            banned: admin::BannedCache::default(),
            search_pending: Mutex::new(search::PendingIndex::default()),
            tenant_rates,
        }
    }

    /// The settings this domain runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Handles one request. Same as a batch of one.
    pub fn handle(&self, caller: &Caller, now_ms: u64, body: Body) -> Outcome {
        let mut out = self.handle_batch(
            now_ms,
            vec![Request {
                caller: caller.clone(),
                body,
            }],
        );
        // A batch returns exactly one outcome per request.
        out.pop()
            .unwrap_or_else(|| Outcome::error(&DomainError::Internal("no outcome".into())))
    }

    /// Handles requests that arrived together; returns one outcome per
    /// request, in order.
    ///
    /// Consecutive sends are validated one by one and then stored in one
    /// store transaction (one fsync for the embedded store: group commit);
    /// the block (and friends-only) checks of their 1:1 sends are read
    /// together first, in one store call each.
    /// Any other request first stores the sends before it, then runs alone,
    /// so each caller's requests take effect in the order they were sent.
    pub fn handle_batch(&self, now_ms: u64, requests: Vec<Request>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; requests.len()];
        let mut pending = Vec::new();
        // Presence updates neither read nor write messages: they wait and go
        // to the store together (and do not split the sends' group commit).
        let mut presences = Vec::new();
        // Login checks (a device's user banned?) read one record each: they
        // wait and are read together too (a login storm is a login check
        // and a presence update per device, which would otherwise split
        // each other's batches), but before any later request of a device,
        // whose ban check needs their answer.
        let mut logins = Vec::new();
        let mut checks = DirectReadAhead::new(&requests);
        for (i, req) in requests.into_iter().enumerate() {
            let Request { caller, body } = req;
            let login_check = matches!(body, Body::Kick(_)) && !caller.admin;
            let gateway_presence = matches!(body, Body::SetPresence(_)) && caller.is_connection();
            if !(login_check || gateway_presence) {
                self.flush_login_checks(&mut logins, &mut outcomes);
            }
            let allowed = tenant::check(&caller, &self.config.federation, &body)
                .and_then(|()| self.check_not_banned(&caller, &body))
                .and_then(|()| match body {
                    Body::Send(_) | Body::RoomPost(_) => {
                        self.tenant_rates.admit(&caller.user_id, now_ms)
                    }
                    _ => Ok(()),
                });
            if let Err(e) = allowed {
                outcomes[i] = Some(Outcome::error(&e));
                continue;
            }
            if login_check {
                logins.push((i, caller));
                continue;
            }
            match body {
                Body::Send(send) => {
                    match self.prepare_send(&caller, now_ms, send, checks.checks_for(self, i)) {
                        Ok(Prepared::Store(p)) => pending.push((i, p)),
                        Ok(Prepared::Answered(out)) => outcomes[i] = Some(out),
                        Err(e) => outcomes[i] = Some(Outcome::error(&e)),
                    }
                }
                Body::SetPresence(r) => presences.push((i, caller, r)),
                body => {
                    self.flush_sends(now_ms, &mut pending, &mut outcomes);
                    self.flush_presences(now_ms, &mut presences, &mut outcomes);
                    let out = self.dispatch(&caller, now_ms, body);
                    outcomes[i] = Some(out.unwrap_or_else(|e| Outcome::error(&e)));
                }
            }
        }
        self.flush_login_checks(&mut logins, &mut outcomes);
        self.flush_sends(now_ms, &mut pending, &mut outcomes);
        self.flush_presences(now_ms, &mut presences, &mut outcomes);
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            // Every index got an outcome above: errors at once, sends at a
            // flush, everything else when dispatched.
            .map(|o| o.unwrap_or_else(|| Outcome::error(&DomainError::Internal("lost".into()))))
            .collect();
        self.search_note(&outcomes);
        outcomes
    }

    fn dispatch(&self, caller: &Caller, now_ms: u64, body: Body) -> Handled {
        let me = caller;
        match body {
            Body::Send(s) => {
                let p = match self.prepare_send(me, now_ms, s, &DirectChecks::default())? {
                    Prepared::Store(p) => p,
                    Prepared::Answered(out) => return Ok(out),
                };
                let mut pending = vec![(0, p)];
                let mut out = vec![None];
                self.flush_sends(now_ms, &mut pending, &mut out);
                out.pop()
                    .flatten()
                    .ok_or_else(|| DomainError::Internal("lost".into()))
            }
            Body::Sync(r) => self.sync(me, r),
            Body::History(r) => self.history(me, r),
            Body::Recall(r) => self.recall(me, now_ms, r),
            Body::Read(r) => self.read(me, now_ms, r),
            Body::ReadBy(r) => self.read_by(me, r),
            Body::Conversations(r) => self.conversations(me, r),
            Body::Typing(r) => self.typing(me, now_ms, r),
            Body::SetPresence(r) => self.set_presence(me, now_ms, r),
            Body::PresenceQuery(r) => self.presence_query(me, now_ms, r),
            Body::FriendRequest(r) => self.friend_request(me, now_ms, r),
            Body::FriendAccept(r) => self.friend_accept(me, now_ms, r),
            Body::FriendReject(r) => self.friend_reject(me, r),
            Body::FriendDelete(r) => self.friend_delete(me, r),
            Body::FriendList(_) => self.friend_list(me),
            Body::Profile(r) => self.profile(me, r),
            Body::FriendRemark(r) => self.friend_remark(me, r),
            Body::FriendBlock(r) => self.friend_block(me, r),
            Body::ProfileUpdate(r) => self.profile_update(me, r),
            Body::FriendRequests(_) => self.friend_requests(me),
            Body::GroupCreate(r) => self.group_create(me, now_ms, r),
            Body::GroupInfo(r) => self.group_info(me, r),
            Body::GroupMembers(r) => self.group_members(me, r),
            Body::GroupJoin(r) => self.group_join(me, now_ms, r),
            Body::GroupJoinDecision(r) => self.group_join_decision(me, now_ms, r),
            Body::GroupInvite(r) => self.group_invite(me, now_ms, r),
            Body::GroupKick(r) => self.group_kick(me, now_ms, r),
            Body::GroupLeave(r) => self.group_leave(me, now_ms, r),
            Body::GroupDissolve(r) => self.group_dissolve(me, now_ms, r),
            Body::GroupRename(r) => self.group_rename(me, now_ms, r),
            Body::GroupAnnounce(r) => self.group_announce(me, now_ms, r),
            Body::GroupSetNickname(r) => self.group_set_nickname(me, now_ms, r),
            Body::GroupSetRemark(r) => self.group_set_remark(me, r),
            Body::GroupSetRole(r) => self.group_set_role(me, now_ms, r),
            Body::GroupMute(r) => self.group_mute(me, now_ms, r),
            Body::GroupSetPolicy(r) => self.group_set_policy(me, now_ms, r),
            Body::GroupList(_) => self.group_list(me),
            Body::Edit(r) => self.edit(me, now_ms, r),
            Body::Search(r) => self.search(me, r),
            Body::Call(r) => self.call(me, now_ms, r),
            Body::CallSignal(r) => self.call_signal(me, now_ms, r),
            // Reactions and pins (react.rs).
            Body::React(r) => self.react(me, now_ms, r),
            Body::Pin(r) => self.pin(me, now_ms, r),
            Body::Pins(r) => self.pins(me, r),
            // Threads and to-dos (issue 19).
            Body::ThreadRead(r) => self.thread_read(me, r),
            Body::ThreadInfo(r) => self.thread_info(me, r),
            Body::Todo(r) => self.todo(me, now_ms, r),
            Body::TodoList(r) => self.todo_list(me, r),
            // Offline push (push.rs, issue 20).
            Body::PushRegister(r) => self.push_register(me, now_ms, r),
            Body::PushUnregister(r) => self.push_unregister(me, r),
            Body::PushList(_) => self.push_list(me, now_ms),
            Body::PushMute(r) => self.push_mute(me, now_ms, r),
            // Rooms and broadcast channels (rooms.rs).
            Body::RoomCreate(r) => self.room_create(me, now_ms, r),
            Body::RoomJoin(r) => self.room_join(&r),
            Body::RoomLeave(r) => self.room_leave(&r),
            Body::RoomPost(r) => self.room_post(me, now_ms, r),
            Body::RoomHistory(r) => self.room_history(&r),
            Body::RoomInfo(r) => self.room_info(&r),
            Body::RoomDelete(r) => self.room_delete(me, &r),
            // Server-only: a client's never passes validation. From the API
            // (admin) it bans, unbans or kicks; from the gateway (not
            // admin) it is the login check of a connection.
            Body::Kick(r) => self.kick_op(me, now_ms, r),
            // Session frames (auth, ping, deliver_ack) belong to the gateway;
            // server-only frames never reach here from a validated client.
            _ => Err(DomainError::InvalidArgument("not a backend request".into())),
        }
    }

    // ---- helpers shared by the submodules ---------------------------------

    /// A new entry made by `caller` now (seq and conversation set by the
    /// store).
    fn entry(caller: &Caller, now_ms: u64, body: pb::entry::Body) -> pb::Entry {
        pb::Entry {
            conversation_id: String::new(),
            seq: 0,
            sender: caller.user_id.clone(),
            sender_device: caller.device_id.clone(),
            client_msg_id: String::new(),
            time_ms: now_ms,
            body: Some(body),
        }
    }

    /// The ids of a group's current members, cached per group version.
    fn member_ids(&self, meta: &GroupMeta) -> Result<Recipients, DomainError> {
        if let Some((version, ids)) = self.member_cache.lock().get(&meta.group_id) {
            if *version == meta.version {
                return Ok(ids.clone());
            }
        }
        let mut ids = Vec::with_capacity(meta.member_count as usize);
        let mut after = String::new();
        loop {
            let page = self
                .store
                .group_members(&meta.group_id, &after, MEMBER_PAGE_LOAD)?;
            let full = page.len() == MEMBER_PAGE_LOAD;
            ids.extend(page.into_iter().map(|m| m.user_id));
            match ids.last() {
                Some(last) if full => after = last.clone(),
                _ => break,
            }
        }
        let ids: Recipients = ids.into();
        let mut cache = self.member_cache.lock();
        if cache.len() >= self.config.member_cache_groups_max as usize {
            // Crude but bounded: start over rather than track recency.
            cache.clear();
        }
        cache.insert(meta.group_id.clone(), (meta.version, ids.clone()));
        Ok(ids)
    }

    /// A fresh group id: `g` + time + seed + counter, base 36.
    fn new_group_id(&self, now_ms: u64) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        let mix = self.id_seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!("g{}{}", base36(now_ms), base36(mix))
    }
}

/// Parses a conversation id field.
fn parse_conv(s: &str) -> Result<ConversationId, DomainError> {
    ConversationId::parse(s).map_err(|e| bad_id("conversation_id", e))
}

/// Checks an id field.
fn check_id(what: &str, id: &str) -> Result<(), DomainError> {
    tern_protocol::ids::check_id(id).map_err(|e| bad_id(what, e))
}

/// Checks a free-text field's length.
fn check_len(what: &str, s: &str, max: u32) -> Result<(), DomainError> {
    if s.len() > max as usize {
        return Err(DomainError::InvalidArgument(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// A page size: `asked` (0: the maximum) capped at `max`; never 0.
fn page(asked: u32, max: u32) -> usize {
    // At least 1, so an unvalidated zero maximum cannot underflow a range.
    let max = max.max(1);
    if asked == 0 {
        max as usize
    } else {
        asked.min(max) as usize
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    // Only ASCII digits and letters were pushed.
    String::from_utf8(out).unwrap_or_default()
}
