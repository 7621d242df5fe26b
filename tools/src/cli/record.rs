//! What a command or a push produced ([`Item`]), and its stable form for
//! scripts ([`Record`]): one line `KIND key=value key=value …`, or with
//! `--json` one JSON object per line with `"type": KIND`.
//!
//! The line format: a value is written bare when it is non-empty printable
//! ASCII without spaces, quotes or backslashes; otherwise it is a JSON
//! string literal (`text="hello world"`), so every line splits unambiguously
//! ([`parse_line`] does it). Lists (user ids) are comma-separated; ids never
//! hold a comma. Times are milliseconds since the Unix epoch. Optional
//! fields (a reply, mentions) appear only when set; the others always do.
//! New fields may be added at the end of a kind; existing ones keep their
//! name and meaning.

use serde_json::{Map, Value as Json};
use tern_protocol::pb;

/// One result of a command, or one push.
#[derive(Debug, Clone)]
pub enum Item {
    /// Logged in.
    Ready(pb::Welcome),
    /// A send was stored.
    Sent(pb::SendAck),
    /// A log entry (history, sync, or pushed).
    Entry(pb::Entry),
    /// A conversation's newest seq (after `sync`).
    Head(pb::Cursor),
    /// There is more: ask again with `--<flag> <value>` (`before` for
    /// history, `offset` for convs, `after` for group members; `sync` when a
    /// sync stopped short).
    More {
        /// The flag that continues the listing.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// A conversation in the list.
    Conv(pb::ConversationSummary),
    /// A friend.
    Friend(pb::Friend),
    /// A user you blocked.
    Blocked(String),
    /// A pending friend request.
    FriendRequest {
        /// Sent to you (true) or by you.
        incoming: bool,
        /// The request.
        request: pb::PendingFriendRequest,
    },
    /// A group, and your membership in it.
    Group {
        /// The group.
        info: pb::GroupInfo,
        /// You in it, when a member.
        me: Option<pb::GroupMember>,
    },
    /// A call changed (pushed).
    Call(pb::CallEvent),
    /// SDP or ICE relayed in a call (pushed).
    CallSignal(pb::CallSignalEvent),
    /// One of your connected devices (`devices`).
    Device(pb::DeviceInfo),
    /// One of your push tokens (`push list`).
    PushToken(pb::PushToken),
    /// A mute of yours (`push list`): a conversation's, or do not disturb
    /// (`conv` empty).
    PushMute {
        /// The conversation; empty: all notifications.
        conv: String,
        /// Muted until (Unix ms).
        until_ms: u64,
    },
    /// A member of a group.
    Member {
        /// The group id.
        group: String,
        /// The member.
        member: pb::GroupMember,
    },
    /// Someone's presence.
    Presence(pb::Presence),
    /// A profile.
    Profile(pb::ProfileResult),
    /// Read counts of one message.
    ReadBy {
        /// The conversation.
        conv: String,
        /// The counts.
        item: pb::ReadBy,
    },
    /// A pinned message.
    Pin {
        /// The conversation.
        conv: String,
        /// The pin.
        pin: pb::Pin,
    },
    /// A thread's summary and the caller's unread count.
    Thread {
        /// The conversation.
        conv: String,
        /// The thread.
        info: pb::ThreadInfo,
    },
    /// An open to-do of the caller's.
    Todo(pb::Todo),
    /// A room or broadcast channel (`room create`, `info`, `join`).
    Room(pb::RoomInfo),
    /// A joined room was deleted (a push).
    RoomClosed(String),
    /// A request succeeded.
    Ok {
        /// What was done (`friend_add`, `group_kick`, …).
        op: &'static str,
        /// The server's answer.
        ok: pb::Ok,
    },
    /// Someone types.
    Typing(pb::TypingEvent),
    /// A change to you outside a conversation.
    Event(pb::ServerEvent),
    /// An error the server pushed (a fire-and-forget frame failed).
    PushError(pb::Error),
    /// A minted token.
    Token(String),
    /// A round trip measured with `ping`.
    Pong {
        /// Round-trip time in microseconds.
        rtt_us: u64,
        /// The server's clock.
        server_time_ms: u64,
    },
    /// The connection ended.
    Closed(String),
}

/// A value in a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A count, seq or time.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Degrees.
    F64(f64),
    /// Ids.
    List(Vec<String>),
}

/// A kind and its fields, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// What it is: `entry`, `sent`, `conv`, …
    pub kind: &'static str,
    /// Its fields, in a fixed order per kind.
    pub fields: Vec<(&'static str, Value)>,
}

impl Record {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            fields: Vec::new(),
        }
    }

    fn s(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.fields.push((k, Value::Str(v.into())));
        self
    }

    fn n(mut self, k: &'static str, v: u64) -> Self {
        self.fields.push((k, Value::U64(v)));
        self
    }

    fn b(mut self, k: &'static str, v: bool) -> Self {
        self.fields.push((k, Value::Bool(v)));
        self
    }

    fn f(mut self, k: &'static str, v: f64) -> Self {
        self.fields.push((k, Value::F64(v)));
        self
    }

    fn list(mut self, k: &'static str, v: &[String]) -> Self {
        self.fields.push((k, Value::List(v.to_vec())));
        self
    }

    /// Adds a string field only when it is not empty.
    fn s_opt(self, k: &'static str, v: &str) -> Self {
        if v.is_empty() { self } else { self.s(k, v) }
    }

    /// The line form.
    pub fn to_line(&self) -> String {
        let mut out = String::from(self.kind);
        for (k, v) in &self.fields {
            out.push(' ');
            out.push_str(k);
            out.push('=');
            match v {
                Value::Str(s) => push_str_value(&mut out, s),
                Value::U64(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Value::F64(x) => out.push_str(&x.to_string()),
                Value::List(l) => push_str_value(&mut out, &l.join(",")),
            }
        }
        out
    }

    /// The JSON form: `{"type": kind, …fields}`.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("type".into(), Json::String(self.kind.into()));
        for (k, v) in &self.fields {
            let j = match v {
                Value::Str(s) => Json::String(s.clone()),
                Value::U64(n) => Json::from(*n),
                Value::Bool(b) => Json::Bool(*b),
                Value::F64(x) => Json::from(*x),
                Value::List(l) => Json::Array(l.iter().cloned().map(Json::String).collect()),
            };
            m.insert((*k).into(), j);
        }
        Json::Object(m)
    }
}

fn is_bare(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

fn push_str_value(out: &mut String, s: &str) {
    if is_bare(s) {
        out.push_str(s);
    } else {
        // serde_json escapes quotes, backslashes and control characters;
        // serializing a &str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Splits a line of the line format into its kind and `(key, value)`
/// pairs, unquoting quoted values. `None` when the line is not one.
pub fn parse_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, mut rest) = match line.split_once(' ') {
        Some((k, r)) => (k, r),
        None => (line, ""),
    };
    if kind.is_empty() {
        return None;
    }
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if after.starts_with('"') {
            // A JSON string literal: find its end by letting serde read it.
            let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let value = de.next()?.ok()?;
            let used = de.byte_offset();
            fields.push((key.to_owned(), value));
            rest = after[used..].strip_prefix(' ').unwrap_or(&after[used..]);
        } else {
            let (value, r) = after.split_once(' ').unwrap_or((after, ""));
            fields.push((key.to_owned(), value.to_owned()));
            rest = r;
        }
    }
    Some((kind.to_owned(), fields))
}

/// `GROUP_ROLE_ADMIN` → `admin`: an enum's schema name without its prefix,
/// lower case.
pub fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// `member`, `admin`, `owner` (or `unspecified`).
pub fn role_word(role: i32) -> String {
    pb::GroupRole::try_from(role).map_or_else(
        |_| format!("role{role}"),
        |r| enum_word(r.as_str_name(), "GROUP_ROLE_"),
    )
}

/// `open`, `approval`, `invite_only`.
pub fn policy_word(policy: i32) -> String {
    pb::JoinPolicy::try_from(policy).map_or_else(
        |_| format!("policy{policy}"),
        |p| enum_word(p.as_str_name(), "JOIN_POLICY_"),
    )
}

/// `online`, `busy`, `away`, `offline`.
pub fn presence_word(state: i32) -> String {
    pb::PresenceState::try_from(state).map_or_else(
        |_| format!("state{state}"),
        |s| enum_word(s.as_str_name(), "PRESENCE_STATE_"),
    )
}

impl Item {
    /// The stable record of this item.
    pub fn record(&self) -> Record {
        match self {
            Self::Ready(w) => Record::new("ready")
                .s("user", &w.user_id)
                .s("device", &w.device_id)
                .s("node", &w.node_id)
                .n("heartbeat_ms", u64::from(w.heartbeat_interval_ms))
                .n("server_time", w.server_time_ms),
            Self::Sent(a) => Record::new("sent")
                .s("conv", &a.conversation_id)
                .n("seq", a.seq)
                .n("time", a.server_time_ms)
                .s("id", &a.client_msg_id)
                .b("duplicate", a.duplicate),
            Self::Entry(e) => entry_record(e),
            Self::Head(c) => Record::new("head")
                .s("conv", &c.conversation_id)
                .n("seq", c.seq),
            Self::More { flag, value } => Record::new("more").s(flag, value),
            Self::Conv(c) => {
                let last = c.last.clone().unwrap_or_default();
                let mut r = Record::new("conv")
                    .s("conv", &c.conversation_id)
                    .s("peer", &c.peer)
                    .n("unread", c.unread)
                    .b("mentioned", c.mentioned)
                    .n("read_seq", c.read_seq)
                    .n("last_seq", last.seq)
                    .n("last_activity", c.last_activity_ms);
                if !last.sender.is_empty() {
                    r = r.s("last_from", &last.sender);
                }
                if let Some(t) = entry_text(&last) {
                    r = r.s("last_text", t);
                }
                r
            }
            Self::Friend(f) => {
                let p = f.profile.clone().unwrap_or_default();
                Record::new("friend")
                    .s("user", &p.user_id)
                    .s("nickname", &p.nickname)
                    .s("remark", &f.remark)
                    .n("since", f.since_ms)
            }
            Self::Blocked(u) => Record::new("blocked").s("user", u),
            Self::FriendRequest { incoming, request } => Record::new("request")
                .s("dir", if *incoming { "in" } else { "out" })
                .s("from", &request.from_user_id)
                .s("to", &request.to_user_id)
                .s("message", &request.message)
                .n("time", request.time_ms),
            Self::Group { info, me } => {
                let mut r = Record::new("group")
                    .s("id", &info.group_id)
                    .s("conv", &info.conversation_id)
                    .s("name", &info.name)
                    .s("owner", &info.owner)
                    .n("members", u64::from(info.member_count))
                    .s("policy", policy_word(info.join_policy))
                    .b("history_visible", info.history_visible)
                    .b("muted_all", info.muted_all)
                    .b("dissolved", info.dissolved)
                    .n("created", info.created_ms)
                    .s("announcement", &info.announcement);
                if let Some(m) = me {
                    r = r.s("role", role_word(m.role));
                }
                r
            }
            Self::Device(d) => Record::new("device")
                .s("device", &d.device_id)
                .s("platform", platform_word(d.platform))
                .s("node", &d.node_id)
                .n("login", d.login_time_ms)
                .s("client", &d.client_version)
                .b("current", d.current),
            Self::PushToken(t) => Record::new("push_token")
                .s("platform", push_platform_word(t.platform))
                .s("token", &t.token)
                .s("topic", &t.topic)
                .s("device", &t.device_id)
                .n("registered", t.registered_ms),
            Self::PushMute { conv, until_ms } => Record::new("push_mute")
                .s("conv", if conv.is_empty() { "all" } else { conv })
                .n("until", *until_ms),
            Self::Member { group, member } => Record::new("member")
                .s("group", group)
                .s("user", &member.user_id)
                .s("role", role_word(member.role))
                .s("nickname", &member.nickname)
                .n("joined", member.joined_ms)
                .n("muted_until", member.muted_until_ms),
            Self::Presence(p) => Record::new("presence")
                .s("user", &p.user_id)
                .s("state", presence_word(p.state))
                .s("text", &p.text)
                .n("last_seen", p.last_seen_ms),
            Self::Profile(p) => {
                let pr = p.profile.clone().unwrap_or_default();
                Record::new("profile")
                    .s("user", &pr.user_id)
                    .s("nickname", &pr.nickname)
                    .s("avatar", &pr.avatar)
                    .s("bio", &pr.bio)
                    .s("remark", &p.remark)
                    .b("friend", p.is_friend)
                    .b("blocked", p.blocked)
            }
            Self::ReadBy { conv, item } => Record::new("read_by")
                .s("conv", conv)
                .n("seq", item.seq)
                .n("read", u64::from(item.read_count))
                .n("members", u64::from(item.member_count)),
            Self::Thread { conv, info } => {
                let summary = info.summary.unwrap_or_default();
                Record::new("thread")
                    .s("conv", conv)
                    .n("root", info.root_seq)
                    .n("replies", u64::from(summary.reply_count))
                    .n("last", summary.last_reply_seq)
                    .n("read_seq", info.read_seq)
                    .n("unread", u64::from(info.unread))
            }
            Self::Room(r) => Record::new("room")
                .s("room", &r.room_id)
                .s("name", &r.name)
                .s(
                    "kind",
                    if r.kind == pb::RoomKind::Broadcast as i32 {
                        "broadcast"
                    } else {
                        "chat"
                    },
                )
                .s("owner", &r.owner)
                .list("admins", &r.admins)
                .n("last_seq", r.last_seq),
            Self::RoomClosed(room) => Record::new("room_closed").s("room", room),
            Self::Todo(t) => {
                let open: Vec<String> = t
                    .assignees
                    .iter()
                    .filter(|a| !a.done)
                    .map(|a| a.user_id.clone())
                    .collect();
                let done: Vec<String> = t
                    .assignees
                    .iter()
                    .filter(|a| a.done)
                    .map(|a| a.user_id.clone())
                    .collect();
                Record::new("todo")
                    .s("conv", &t.conversation_id)
                    .n("seq", t.seq)
                    .s("creator", &t.creator)
                    .n("created", t.created_ms)
                    .list("open", &open)
                    .list("done", &done)
            }
            Self::Pin { conv, pin } => Record::new("pin")
                .s("conv", conv)
                .n("seq", pin.seq)
                .s("by", &pin.pinned_by)
                .n("time", pin.pinned_at_ms),
            Self::Ok { op, ok } => Record::new("ok")
                .s("op", *op)
                .n("seq", ok.seq)
                .s_opt("id", &ok.id),
            Self::Call(c) => Record::new("call")
                .s("call", &c.call_id)
                .s("event", call_event_word(c.kind))
                .s("conv", &c.conversation_id)
                .s("user", &c.user_id)
                .s_opt("device", &c.device_id)
                .s("caller", &c.caller_id)
                .list("participants", &c.participants)
                .b("video", c.video)
                .s("outcome", call_outcome_word(c.outcome))
                .n("duration", c.duration_ms),
            Self::CallSignal(c) => Record::new("signal")
                .s("call", &c.call_id)
                .s("from", &c.from_user_id)
                .s("from_device", &c.from_device_id)
                .s_opt("to_device", &c.to_device_id)
                .s(
                    "kind",
                    match pb::CallSignalKind::try_from(c.kind).unwrap_or_default() {
                        pb::CallSignalKind::Offer => "offer",
                        pb::CallSignalKind::Answer => "answer",
                        pb::CallSignalKind::Ice => "ice",
                        pb::CallSignalKind::Unspecified => "unspecified",
                    },
                )
                .n("bytes", c.payload.len() as u64),
            Self::Typing(t) => Record::new("typing")
                .s("conv", &t.conversation_id)
                .s("user", &t.user_id)
                .b("typing", t.typing),
            Self::Event(e) => event_record(e),
            Self::PushError(e) => Record::new("error")
                .s("code", super::error::code_name(e.code))
                .s("reason", &e.reason),
            Self::Token(t) => Record::new("token").s("token", t),
            Self::Pong {
                rtt_us,
                server_time_ms,
            } => Record::new("pong")
                .n("rtt_us", *rtt_us)
                .n("server_time", *server_time_ms),
            Self::Closed(why) => Record::new("closed").s("reason", why),
        }
    }

    /// The line scripts read. A token is printed bare, so that
    /// `$(tern-cli token …)` is the token.
    pub fn to_line(&self) -> String {
        match self {
            Self::Token(t) => t.clone(),
            other => other.record().to_line(),
        }
    }
}

/// The text of an entry, when it is a text message.
pub fn entry_text(e: &pb::Entry) -> Option<&str> {
    match &e.body {
        Some(pb::entry::Body::Message(m)) => match m.content.as_ref()?.kind.as_ref()? {
            pb::content::Kind::Text(t) => Some(&t.text),
            _ => None,
        },
        _ => None,
    }
}

fn entry_record(e: &pb::Entry) -> Record {
    let mut r = Record::new("entry")
        .s("conv", &e.conversation_id)
        .n("seq", e.seq)
        .n("time", e.time_ms)
        .s("from", &e.sender)
        .s_opt("device", &e.sender_device)
        .s_opt("id", &e.client_msg_id);
    match &e.body {
        Some(pb::entry::Body::Message(m)) => {
            r = content_fields(r, m);
            if !m.mentions.is_empty() {
                r = r.list("mentions", &m.mentions);
            }
            if m.mention_all {
                r = r.b("mention_all", true);
            }
            if m.reply_to_seq != 0 {
                r = r.n("reply_to", m.reply_to_seq);
            }
            if m.edit_count != 0 {
                r = r.n("edits", u64::from(m.edit_count));
            }
            if m.streaming {
                r = r.b("streaming", true);
            }
            if !m.reactions.is_empty() {
                let kinds: Vec<String> = m
                    .reactions
                    .iter()
                    .map(|k| format!("{}={}", k.emoji, k.count))
                    .collect();
                r = r.list("reactions", &kinds);
            }
            if m.thread_root_seq != 0 {
                r = r.n("thread", m.thread_root_seq);
            }
            if let Some(t) = &m.thread {
                r = r
                    .n("replies", u64::from(t.reply_count))
                    .n("last_reply", t.last_reply_seq);
            }
        }
        Some(pb::entry::Body::Recalled(x)) => r = r.s("kind", "recall").n("target", x.seq),
        Some(pb::entry::Body::Edited(x)) => {
            r = r
                .s("kind", "edit")
                .n("target", x.seq)
                .n("edits", u64::from(x.edit_count));
            if let Some(pb::content::Kind::Text(t)) =
                x.content.as_ref().and_then(|c| c.kind.as_ref())
            {
                r = r.s("text", &t.text);
            }
            if x.streaming {
                r = r.b("streaming", true);
            }
        }
        Some(pb::entry::Body::Read(x)) => r = r.s("kind", "read").n("up_to", x.up_to_seq),
        Some(pb::entry::Body::Reaction(x)) => {
            r = r
                .s("kind", "reaction")
                .n("target", x.seq)
                .s("emoji", &x.emoji)
                .b("removed", x.removed);
        }
        Some(pb::entry::Body::Pin(x)) => {
            r = r
                .s("kind", "pin")
                .n("target", x.seq)
                .b("unpinned", x.unpinned);
        }
        Some(pb::entry::Body::GroupEvent(g)) => r = group_event_fields(r.s("kind", "group"), g),
        Some(pb::entry::Body::Todo(t)) => {
            let action = match pb::TodoAction::try_from(t.action) {
                Ok(pb::TodoAction::Create) => "create",
                Ok(pb::TodoAction::Done) => "done",
                Ok(pb::TodoAction::Undo) => "undo",
                _ => "unknown",
            };
            r = r.s("kind", "todo").n("target", t.seq).s("action", action);
            if !t.assignees.is_empty() {
                r = r.list("assignees", &t.assignees);
            }
        }
        Some(pb::entry::Body::CallRecord(c)) => {
            r = r
                .s("kind", "call")
                .s("call", &c.call_id)
                .s("outcome", call_outcome_word(c.outcome))
                .list("participants", &c.participants)
                .list("answered", &c.answered)
                .b("video", c.video)
                .n("duration", c.duration_ms);
        }
        None => r = r.s("kind", "unknown"),
    }
    r
}

fn content_fields(r: Record, m: &pb::Message) -> Record {
    use pb::content::Kind;
    if m.recalled {
        return r.s("kind", "recalled");
    }
    let media = |r: Record, media: &Option<pb::MediaRef>| {
        let md = media.clone().unwrap_or_default();
        r.s("media", md.media_id)
            .s("mime", md.mime)
            .n("size", md.size_bytes)
    };
    match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(t)) => r.s("kind", "text").s("text", &t.text),
        Some(Kind::Image(i)) => media(r.s("kind", "image"), &i.media),
        Some(Kind::File(f)) => media(r.s("kind", "file"), &f.media).s("name", &f.name),
        Some(Kind::Voice(v)) => media(r.s("kind", "voice"), &v.media),
        Some(Kind::Video(v)) => media(r.s("kind", "video"), &v.media),
        Some(Kind::Location(l)) => r
            .s("kind", "location")
            .f("lat", l.latitude)
            .f("lon", l.longitude)
            .s("name", &l.name)
            .s("address", &l.address),
        Some(Kind::Custom(c)) => r
            .s("kind", "custom")
            .s("custom_type", &c.r#type)
            .n("bytes", c.data.len() as u64),
        None => r.s("kind", "empty"),
    }
}

fn group_event_fields(r: Record, g: &pb::GroupEvent) -> Record {
    use pb::group_event::Kind;
    match &g.kind {
        Some(Kind::Created(c)) => r
            .s("event", "created")
            .s("name", &c.name)
            .s("owner", &c.owner),
        Some(Kind::Joined(m)) => r.s("event", "joined").list("users", &m.user_ids),
        Some(Kind::Left(m)) => r.s("event", "left").list("users", &m.user_ids),
        Some(Kind::Kicked(m)) => r.s("event", "kicked").list("users", &m.user_ids),
        Some(Kind::Renamed(n)) => r.s("event", "renamed").s("name", n),
        Some(Kind::Announcement(a)) => r.s("event", "announcement").s("text", a),
        Some(Kind::RoleChanged(c)) => r
            .s("event", "role_changed")
            .s("user", &c.user_id)
            .s("role", role_word(c.role)),
        Some(Kind::MuteChanged(c)) => r
            .s("event", "mute_changed")
            .s("user", &c.user_id)
            .n("until", c.muted_until_ms)
            .b("all", c.muted_all),
        Some(Kind::Dissolved(_)) => r.s("event", "dissolved"),
        Some(Kind::NicknameChanged(c)) => r
            .s("event", "nickname_changed")
            .s("user", &c.user_id)
            .s("nickname", &c.nickname),
        Some(Kind::PolicyChanged(c)) => r
            .s("event", "policy_changed")
            .s("policy", policy_word(c.join_policy))
            .b("history_visible", c.history_visible),
        None => r.s("event", "unknown"),
    }
}

fn event_record(e: &pb::ServerEvent) -> Record {
    use pb::server_event::Kind;
    let r = Record::new("event");
    match &e.kind {
        Some(Kind::FriendRequested(q)) => r
            .s("kind", "friend_requested")
            .s("from", &q.from_user_id)
            .s("to", &q.to_user_id)
            .s("message", &q.message),
        Some(Kind::FriendAdded(u)) => r.s("kind", "friend_added").s("user", u),
        Some(Kind::FriendRemoved(u)) => r.s("kind", "friend_removed").s("user", u),
        Some(Kind::GroupJoined(g)) => r.s("kind", "group_joined").s("group", g),
        Some(Kind::GroupLeft(g)) => r.s("kind", "group_left").s("group", g),
        Some(Kind::GroupJoinRequested(q)) => r
            .s("kind", "group_join_requested")
            .s("group", &q.group_id)
            .s("user", &q.user_id)
            .s("message", &q.message),
        None => r.s("kind", "unknown"),
    }
}

/// The lower-case name of a call event.
pub fn call_event_word(k: i32) -> &'static str {
    match pb::CallEventKind::try_from(k).unwrap_or_default() {
        pb::CallEventKind::Unspecified => "unspecified",
        pb::CallEventKind::Ringing => "ringing",
        pb::CallEventKind::Accepted => "accepted",
        pb::CallEventKind::Rejected => "rejected",
        pb::CallEventKind::Missed => "missed",
        pb::CallEventKind::Left => "left",
        pb::CallEventKind::Ended => "ended",
    }
}

/// The lower-case name of a call outcome.
pub fn call_outcome_word(o: i32) -> &'static str {
    match pb::CallOutcome::try_from(o).unwrap_or_default() {
        pb::CallOutcome::Unspecified => "unspecified",
        pb::CallOutcome::Completed => "completed",
        pb::CallOutcome::Missed => "missed",
        pb::CallOutcome::Rejected => "rejected",
        pb::CallOutcome::Cancelled => "cancelled",
    }
}

/// The lower-case name of a platform.
/// `apns`, `fcm`, or `unspecified`.
pub fn push_platform_word(p: i32) -> &'static str {
    match pb::PushPlatform::try_from(p).unwrap_or_default() {
        pb::PushPlatform::Unspecified => "unspecified",
        pb::PushPlatform::Apns => "apns",
        pb::PushPlatform::Fcm => "fcm",
    }
}

pub fn platform_word(p: i32) -> &'static str {
    match pb::Platform::try_from(p).unwrap_or_default() {
        pb::Platform::Unspecified => "unspecified",
        pb::Platform::Ios => "ios",
        pb::Platform::Android => "android",
        pb::Platform::Web => "web",
        pb::Platform::Desktop => "desktop",
        pb::Platform::Cli => "cli",
        pb::Platform::Bot => "bot",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_through_the_parser() {
        // Proves bare and quoted values (spaces, quotes, newlines, emoji,
        // empty) split back exactly, in order.
        let r = Record::new("entry")
            .s("conv", "d:alice:bob")
            .n("seq", 3)
            .s("text", "hi \"there\"\n😀 a=b")
            .s("empty", "")
            .b("flag", true)
            .list("users", &["a".into(), "b".into()]);
        let line = r.to_line();
        assert_eq!(
            line,
            r#"entry conv=d:alice:bob seq=3 text="hi \"there\"\n😀 a=b" empty="" flag=true users=a,b"#
        );
        let (kind, fields) = parse_line(&line).unwrap();
        assert_eq!(kind, "entry");
        let got: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("conv", "d:alice:bob"),
                ("seq", "3"),
                ("text", "hi \"there\"\n😀 a=b"),
                ("empty", ""),
                ("flag", "true"),
                ("users", "a,b")
            ]
        );
        assert_eq!(r.to_json()["text"], "hi \"there\"\n😀 a=b");
        assert_eq!(r.to_json()["type"], "entry");
        assert_eq!(parse_line("ok"), Some(("ok".into(), vec![])));
        assert_eq!(parse_line("x k=\"unterminated"), None);
    }

    #[test]
    fn entries_name_their_kind() {
        // Proves a recalled message, a recall and a group event each get a
        // kind scripts can match without knowing the protobuf.
        let e = pb::Entry {
            conversation_id: "g:t".into(),
            seq: 2,
            sender: "alice".into(),
            body: Some(pb::entry::Body::GroupEvent(pb::GroupEvent {
                kind: Some(pb::group_event::Kind::Joined(pb::MembersChanged {
                    user_ids: vec!["bob".into(), "carol".into()],
                })),
            })),
            ..Default::default()
        };
        assert_eq!(
            Item::Entry(e).to_line(),
            "entry conv=g:t seq=2 time=0 from=alice kind=group event=joined users=bob,carol"
        );
        let recalled = pb::Entry {
            conversation_id: "g:t".into(),
            seq: 3,
            sender: "alice".into(),
            body: Some(pb::entry::Body::Message(pb::Message {
                recalled: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(Item::Entry(recalled).to_line().ends_with("kind=recalled"));
    }
}
