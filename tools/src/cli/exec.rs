//! Runs one [`SharedCommand`] on a [`Session`] and returns what it produced
//! as [`Item`]s, for either front end to show. Ids and arguments are checked
//! here first, so a typo is a usage error and never a round trip.

use std::time::Instant;

use tern_protocol::pb::{self, frame::Body};

use super::{
    ClientError,
    args::{
        Decision, FriendCommand, GroupCommand, OnOff, PolicyArg, PresenceVerb, RoleArg,
        RoomCommand, SendArgs, SharedCommand, ToArgs, parse_duration_ms,
    },
    record::Item,
    session::{Session, expect_body, new_client_msg_id},
    target::{self, Target, checked},
};

/// Users one message may mention (the protocol's bound).
pub const MENTIONS_PER_MESSAGE_MAX: usize = 64;

/// Where a command runs.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The logged-in session.
    pub session: &'a Session,
    /// The chat's open conversation; `None` in scripts.
    pub open: Option<&'a Target>,
    /// The chat's current call (rung for, or in); `None` in scripts.
    pub call: Option<&'a str>,
}

impl Context<'_> {
    fn me(&self) -> &str {
        self.session.me()
    }

    /// The recipient named by `to` (`--conv` as [`resolve`] reads it),
    /// else the open conversation.
    pub fn target(&self, to: &ToArgs) -> Result<Target, ClientError> {
        if let Some(u) = &to.to {
            return Target::parse(self.me(), u).and_then(|t| match t {
                Target::User(_) => Ok(t),
                Target::Group(_) => Err(ClientError::Usage(format!(
                    "--to takes a user; use --group for {u}"
                ))),
            });
        }
        if let Some(g) = &to.group {
            return Target::group(g);
        }
        if let Some(c) = &to.conv {
            return resolve(self.session, c);
        }
        self.open.cloned().ok_or_else(|| {
            ClientError::Usage("name the recipient: --to USER, --group GROUP or --conv CONV".into())
        })
    }

    /// The call named by `id`, else the chat's current one.
    fn call_id(&self, id: Option<&String>) -> Result<String, ClientError> {
        match (id, self.call) {
            (Some(id), _) => checked(id, "call id"),
            (None, Some(id)) => Ok(id.to_owned()),
            (None, None) => Err(ClientError::Usage(
                "name the call: its id (from `ok op=call id=…` or a call event)".into(),
            )),
        }
    }

    /// The conversation id named by `conv` (as [`resolve`] reads it), else
    /// the open one.
    pub fn conversation(&self, conv: Option<&String>) -> Result<String, ClientError> {
        match (conv, self.open) {
            (Some(c), _) => resolve(self.session, c)?.conversation(self.me()),
            (None, Some(t)) => t.conversation(self.me()),
            (None, None) => Err(ClientError::Usage(
                "name the conversation: --conv bob | '#team' | d:alice:bob | g:team".into(),
            )),
        }
    }
}

/// Runs `cmd`.
pub fn run(ctx: &Context<'_>, cmd: &SharedCommand) -> Result<Vec<Item>, ClientError> {
    let s = ctx.session;
    match cmd {
        SharedCommand::Send(a) => {
            let target = ctx.target(&a.to)?;
            let msg = text_message(&target, a)?;
            Ok(vec![Item::Sent(s.send(msg)?)])
        }
        SharedCommand::SendFile(a) => {
            file_exists(&a.path)?;
            let target = ctx.target(&a.to)?;
            let client_msg_id = match &a.client_msg_id {
                Some(id) => checked(id, "client message id")?,
                None => new_client_msg_id(),
            };
            let msg = super::media::upload_message(s, &target, &a.path, client_msg_id)?;
            Ok(vec![Item::Sent(s.send(msg)?)])
        }
        SharedCommand::History(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            history(s, &conv, a.before.unwrap_or(0), a.limit)
        }
        SharedCommand::Sync(a) => {
            for c in &a.cursors {
                let (conv, seq) = c
                    .split_once('=')
                    .and_then(|(c, n)| Some((c, n.parse::<u64>().ok()?)))
                    .ok_or_else(|| {
                        ClientError::Usage(format!("--cursor {c:?}: expected CONV=SEQ"))
                    })?;
                s.adopt(&resolve(s, conv)?.conversation(s.me())?, seq);
            }
            let out = s.sync_all(a.limit)?;
            let mut items: Vec<Item> = out.entries.into_iter().map(Item::Entry).collect();
            items.extend(out.heads.into_iter().map(Item::Head));
            if !out.complete {
                items.push(Item::More {
                    flag: "sync",
                    value: "incomplete".into(),
                });
            }
            Ok(items)
        }
        SharedCommand::Convs(a) => {
            let r = expect_body!(
                s.request(Body::Conversations(pb::ConversationListRequest {
                    limit: a.limit,
                    offset: a.offset,
                })),
                ConversationsResult
            )?;
            let n = r.conversations.len();
            let mut items: Vec<Item> = r.conversations.into_iter().map(Item::Conv).collect();
            if r.more {
                let next = u64::from(a.offset) + n as u64;
                items.push(Item::More {
                    flag: "offset",
                    value: next.to_string(),
                });
            }
            Ok(items)
        }
        SharedCommand::Recall(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            ok(
                "recall",
                s.request(Body::Recall(pb::RecallRequest {
                    conversation_id: conv,
                    seq: a.seq,
                })),
            )
        }
        SharedCommand::Search(a) => {
            let conversation_id = match &a.conv {
                Some(c) => resolve(s, c)?.conversation(s.me())?,
                None => String::new(),
            };
            let r = expect_body!(
                s.request(Body::Search(pb::SearchRequest {
                    query: words(&a.text),
                    conversation_id,
                    sender: a.from.as_deref().map(user).transpose()?.unwrap_or_default(),
                    from_ms: a.since_ms.unwrap_or(0),
                    to_ms: a.until_ms.unwrap_or(0),
                    limit: a.limit,
                    cursor: a.cursor.clone().unwrap_or_default(),
                })),
                SearchResult
            )?;
            let mut items: Vec<Item> = r.entries.into_iter().map(Item::Entry).collect();
            if !r.cursor.is_empty() {
                items.push(Item::More {
                    flag: "cursor",
                    value: r.cursor,
                });
            }
            Ok(items)
        }
        SharedCommand::Push(a) => push(s, a),
        SharedCommand::Devices => {
            let r = expect_body!(
                s.request(Body::DeviceList(pb::DeviceListRequest {})),
                DeviceListResult
            )?;
            Ok(r.devices.into_iter().map(Item::Device).collect())
        }
        SharedCommand::Logout(a) => ok(
            "device_logout",
            s.request(Body::DeviceLogout(pb::DeviceLogout {
                device_id: checked(&a.device_id, "device id")?,
            })),
        ),
        SharedCommand::Call(a) => {
            let conversation_id = ctx.conversation(a.target.as_ref())?;
            ok(
                "call",
                s.request(Body::Call(pb::CallAction {
                    kind: pb::CallActionKind::Invite as i32,
                    call_id: String::new(),
                    conversation_id,
                    invitees: a
                        .invitees
                        .iter()
                        .map(|u| user(u))
                        .collect::<Result<_, _>>()?,
                    video: a.video,
                })),
            )
        }
        SharedCommand::Accept(a) | SharedCommand::Reject(a) | SharedCommand::Hangup(a) => {
            let (op, kind) = match cmd {
                SharedCommand::Accept(_) => ("accept", pb::CallActionKind::Accept),
                SharedCommand::Reject(_) => ("reject", pb::CallActionKind::Reject),
                _ => ("hangup", pb::CallActionKind::Hangup),
            };
            ok(
                op,
                s.request(Body::Call(pb::CallAction {
                    kind: kind as i32,
                    call_id: ctx.call_id(a.call_id.as_ref())?,
                    ..Default::default()
                })),
            )
        }
        SharedCommand::Edit(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let client_edit_id = match &a.client_edit_id {
                Some(id) => checked(id, "client edit id")?,
                None => new_client_msg_id(),
            };
            ok(
                "edit",
                s.request(Body::Edit(pb::EditRequest {
                    conversation_id: conv,
                    seq: a.seq,
                    client_edit_id,
                    content: Some(pb::Content {
                        kind: Some(pb::content::Kind::Text(pb::Text {
                            text: words(&a.text),
                        })),
                    }),
                    streaming: a.streaming,
                })),
            )
        }
        SharedCommand::React(a) | SharedCommand::Unreact(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let remove = matches!(cmd, SharedCommand::Unreact(_));
            tern_protocol::validate::check_reaction(&a.emoji)
                .map_err(|why| ClientError::Usage(format!("the reaction {why}")))?;
            ok(
                if remove { "unreact" } else { "react" },
                s.request(Body::React(pb::ReactRequest {
                    conversation_id: conv,
                    seq: a.seq,
                    emoji: a.emoji.clone(),
                    remove,
                })),
            )
        }
        SharedCommand::Pin(a) | SharedCommand::Unpin(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let unpin = matches!(cmd, SharedCommand::Unpin(_));
            ok(
                if unpin { "unpin" } else { "pin" },
                s.request(Body::Pin(pb::PinRequest {
                    conversation_id: conv,
                    seq: a.seq,
                    unpin,
                })),
            )
        }
        SharedCommand::Pins(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let r = expect_body!(
                s.request(Body::Pins(pb::PinListRequest {
                    conversation_id: conv,
                })),
                PinsResult
            )?;
            Ok(r.pins
                .into_iter()
                .map(|pin| Item::Pin {
                    conv: r.conversation_id.clone(),
                    pin,
                })
                .collect())
        }
        SharedCommand::Thread(a) => {
            let target = ctx.target(&ToArgs {
                conv: a.conv.clone(),
                ..ToArgs::default()
            })?;
            let send = SendArgs {
                to: ToArgs::default(),
                mentions: Vec::new(),
                mention_all: false,
                reply_to: None,
                client_msg_id: a.client_msg_id.clone(),
                text: a.text.clone(),
            };
            let mut msg = text_message(&target, &send)?;
            msg.thread_root_seq = a.seq;
            Ok(vec![Item::Sent(s.send(msg)?)])
        }
        SharedCommand::Threadlog(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            thread_log(s, &conv, a.seq, a.before.unwrap_or(0), a.limit)
        }
        SharedCommand::Todo(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let users = a
                .users
                .iter()
                .map(|u| checked(u.strip_prefix('@').unwrap_or(u), "assignee"))
                .collect::<Result<Vec<_>, _>>()?;
            ok(
                "todo",
                s.request(Body::Todo(pb::TodoRequest {
                    conversation_id: conv,
                    seq: a.seq,
                    action: pb::TodoAction::Create as i32,
                    assignees: users,
                })),
            )
        }
        SharedCommand::Done(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let action = if a.undo {
                pb::TodoAction::Undo
            } else {
                pb::TodoAction::Done
            };
            ok(
                if a.undo { "undo" } else { "done" },
                s.request(Body::Todo(pb::TodoRequest {
                    conversation_id: conv,
                    seq: a.seq,
                    action: action as i32,
                    assignees: Vec::new(),
                })),
            )
        }
        SharedCommand::Todos(a) => todos(s, a.limit),
        SharedCommand::Read(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let up_to = match a.seq {
                Some(seq) => seq,
                None => head(s, &conv)?
                    .ok_or_else(|| ClientError::Usage(format!("{conv} has nothing to read")))?,
            };
            ok(
                "read",
                s.request(Body::Read(pb::ReadRequest {
                    conversation_id: conv,
                    up_to_seq: up_to,
                })),
            )
        }
        SharedCommand::ReadBy(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            let r = expect_body!(
                s.request(Body::ReadBy(pb::ReadByQuery {
                    conversation_id: conv,
                    seqs: a.seqs.clone(),
                })),
                ReadByResult
            )?;
            Ok(r.items
                .into_iter()
                .map(|item| Item::ReadBy {
                    conv: r.conversation_id.clone(),
                    item,
                })
                .collect())
        }
        SharedCommand::Typing(a) => {
            let conv = ctx.conversation(a.conv.as_ref())?;
            s.fire(Body::Typing(pb::TypingRequest {
                conversation_id: conv,
                typing: a.state == OnOff::On,
            }))?;
            Ok(vec![Item::Ok {
                op: "typing",
                ok: pb::Ok::default(),
            }])
        }
        SharedCommand::Presence(a) => presence(s, a.verb, &a.rest),
        SharedCommand::Profile(a) => {
            if a.nickname.is_some() || a.avatar.is_some() || a.bio.is_some() {
                if a.user.is_some() {
                    return Err(ClientError::Usage(
                        "only your own profile can be changed".into(),
                    ));
                }
                return ok(
                    "profile_update",
                    s.request(Body::ProfileUpdate(pb::ProfileUpdate {
                        nickname: a.nickname.clone(),
                        avatar: a.avatar.clone(),
                        bio: a.bio.clone(),
                    })),
                );
            }
            let user = match &a.user {
                Some(u) => checked(u.strip_prefix('@').unwrap_or(u), "user id")?,
                None => s.me().to_owned(),
            };
            let r = expect_body!(
                s.request(Body::Profile(pb::ProfileRequest { user_id: user })),
                ProfileResult
            )?;
            Ok(vec![Item::Profile(r)])
        }
        SharedCommand::Ping => {
            let started = Instant::now();
            let nonce = rand::random::<u64>();
            let p = expect_body!(s.request(Body::Ping(pb::Ping { nonce })), Pong)?;
            if p.nonce != nonce {
                return Err(ClientError::Protocol("pong with another nonce".into()));
            }
            Ok(vec![Item::Pong {
                rtt_us: started.elapsed().as_micros() as u64,
                server_time_ms: p.server_time_ms,
            }])
        }
        SharedCommand::Friend(f) => friend(s, f),
        SharedCommand::Group(g) => group(s, g),
        SharedCommand::Room(r) => room(s, r),
    }
}

/// `room …`: the answers as items (a room, `ok`, entries).
fn room(s: &Session, r: &RoomCommand) -> Result<Vec<Item>, ClientError> {
    let info = |answer| -> Result<Vec<Item>, ClientError> {
        let r = expect_body!(answer, RoomInfoResult)?;
        Ok(r.room.map(Item::Room).into_iter().collect())
    };
    match r {
        RoomCommand::Create {
            room,
            name,
            broadcast,
            admins,
        } => {
            let room_id = checked(room, "room id")?;
            let name = if name.is_empty() {
                room_id.clone()
            } else {
                words(name)
            };
            let kind = if *broadcast {
                pb::RoomKind::Broadcast
            } else {
                pb::RoomKind::Chat
            };
            info(s.request(Body::RoomCreate(pb::RoomCreate {
                room_id,
                name,
                kind: kind as i32,
                admins: admins.iter().map(|a| user(a)).collect::<Result<_, _>>()?,
            })))
        }
        RoomCommand::Info { room } => info(s.request(Body::RoomInfo(pb::RoomInfoRequest {
            room_id: checked(room, "room id")?,
        }))),
        RoomCommand::Join { room } => {
            let r = expect_body!(
                s.request(Body::RoomJoin(pb::RoomJoin {
                    room_id: checked(room, "room id")?,
                })),
                RoomJoined
            )?;
            Ok(r.room.map(Item::Room).into_iter().collect())
        }
        RoomCommand::Leave { room } => ok(
            "room_leave",
            s.request(Body::RoomLeave(pb::RoomLeave {
                room_id: checked(room, "room id")?,
            })),
        ),
        RoomCommand::Post { room, text } => ok(
            "room_post",
            s.request(Body::RoomPost(pb::RoomPost {
                room_id: checked(room, "room id")?,
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: words(text) })),
                }),
                client_msg_id: new_client_msg_id(),
            })),
        ),
        RoomCommand::Delete { room } => ok(
            "room_delete",
            s.request(Body::RoomDelete(pb::RoomDelete {
                room_id: checked(room, "room id")?,
            })),
        ),
        RoomCommand::History {
            room,
            before,
            limit,
        } => {
            let r = expect_body!(
                s.request(Body::RoomHistory(pb::RoomHistoryRequest {
                    room_id: checked(room, "room id")?,
                    before_seq: before.unwrap_or(0),
                    limit: *limit,
                })),
                RoomHistoryResult
            )?;
            Ok(r.entries.into_iter().map(Item::Entry).collect())
        }
    }
}

/// The conversation a person names, the same way for every command:
/// `@bob`, `#team`, `d:alice:bob` and `g:team` are what they say; a bare
/// name is the group of that id if you are a member of it, else the user.
/// A bare name that is both a group you are in and a peer (a friend, or a
/// 1:1 chat with history) is ambiguous: a usage error naming both
/// spellings. Costs one request for a bare name (`group_info`), two more
/// only when it is a group of yours; none otherwise.
pub fn resolve(s: &Session, spec: &str) -> Result<Target, ClientError> {
    let me = s.me();
    let target = Target::parse(me, spec)?;
    let Target::User(name) = &target else {
        return Ok(target);
    };
    if !target::is_bare(spec) {
        return Ok(target);
    }
    let info = s.request(Body::GroupInfo(pb::GroupInfoRequest {
        group_id: name.clone(),
    }));
    let my_group = match expect_body!(info, GroupInfoResult) {
        Ok(r) => r.me.is_some() && r.info.is_some_and(|i| !i.dissolved),
        Err(e) if e.server_code() == Some(pb::ErrorCode::NotFound) => false,
        Err(e) => return Err(e),
    };
    if !my_group {
        return Ok(target);
    }
    if name != me && is_peer(s, name)? {
        return Err(ClientError::Usage(format!(
            "{name:?} is both your group #{name} and your chat with @{name}: \
             say '#{name}' or '@{name}'"
        )));
    }
    Ok(Target::Group(name.clone()))
}

/// Whether `user` is a friend of this session's user or shares a 1:1 chat
/// with history with them.
fn is_peer(s: &Session, user: &str) -> Result<bool, ClientError> {
    let profile = expect_body!(
        s.request(Body::Profile(pb::ProfileRequest {
            user_id: user.to_owned(),
        })),
        ProfileResult
    )?;
    if profile.is_friend {
        return Ok(true);
    }
    let conv = Target::User(user.to_owned()).conversation(s.me())?;
    Ok(head(s, &conv)?.is_some())
}

/// `send-file`'s first check: a missing file is a usage error, said before
/// any upload.
pub fn file_exists(path: &std::path::Path) -> Result<(), ClientError> {
    if !path.is_file() {
        return Err(ClientError::Usage(format!(
            "{}: no such file",
            path.display()
        )));
    }
    Ok(())
}

/// Builds the `Send` of a text: `@user` words (and `--mention`) become
/// mentions and `@all` sets `mention_all`, in groups only (a 1:1 chat has
/// no one else to mention).
pub fn text_message(target: &Target, a: &SendArgs) -> Result<pb::Send, ClientError> {
    let text = a.text.join(" ");
    if text.is_empty() {
        return Err(ClientError::Usage("nothing to send".into()));
    }
    let (mut mentions, all_in_text) = mentions_in(&text);
    for m in &a.mentions {
        let m = checked(m.strip_prefix('@').unwrap_or(m), "mentioned user")?;
        if !mentions.contains(&m) {
            mentions.push(m);
        }
    }
    if mentions.len() > MENTIONS_PER_MESSAGE_MAX {
        return Err(ClientError::Usage(format!(
            "{} mentions; a message mentions at most {MENTIONS_PER_MESSAGE_MAX}",
            mentions.len()
        )));
    }
    let client_msg_id = match &a.client_msg_id {
        Some(id) => checked(id, "client message id")?,
        None => new_client_msg_id(),
    };
    let (to, in_group) = match target {
        Target::User(u) => (pb::send::To::UserId(u.clone()), false),
        Target::Group(g) => (pb::send::To::GroupId(g.clone()), true),
    };
    Ok(pb::Send {
        client_msg_id,
        to: Some(to),
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text { text })),
        }),
        mentions: if in_group { mentions } else { Vec::new() },
        mention_all: in_group && (a.mention_all || all_in_text),
        reply_to_seq: a.reply_to.unwrap_or(0),
        streaming: false,
        thread_root_seq: 0,
    })
}

/// The users a text mentions (`@bob`, in order, once each) and whether it
/// says `@all`. A word must start with `@`; trailing punctuation is not
/// part of the name; what is not a valid id is not a mention.
pub fn mentions_in(text: &str) -> (Vec<String>, bool) {
    let mut users = Vec::new();
    let mut all = false;
    for word in text.split_whitespace() {
        let Some(name) = word.strip_prefix('@') else {
            continue;
        };
        let name = name.trim_end_matches([',', '.', ':', ';', '!', '?', ')']);
        if name == "all" {
            all = true;
        } else if tern_protocol::ids::check_id(name).is_ok() && !users.iter().any(|u| u == name) {
            users.push(name.to_owned());
        }
    }
    (users, all)
}

/// One page of history (oldest first), and where the next page starts.
pub fn history(s: &Session, conv: &str, before: u64, limit: u32) -> Result<Vec<Item>, ClientError> {
    let r = expect_body!(
        s.request(Body::History(pb::HistoryRequest {
            conversation_id: conv.to_owned(),
            before_seq: before,
            limit,
            thread_root_seq: 0,
        })),
        HistoryResult
    )?;
    let first = r.entries.first().map(|e| e.seq);
    let mut items: Vec<Item> = r.entries.into_iter().map(Item::Entry).collect();
    if r.more
        && let Some(first) = first
    {
        items.push(Item::More {
            flag: "before",
            value: first.to_string(),
        });
    }
    Ok(items)
}

/// One page of the thread under `root` (oldest first), where the next page
/// starts, and the thread's summary with the caller's unread count as it
/// was before this page marked the thread read.
pub fn thread_log(
    s: &Session,
    conv: &str,
    root: u64,
    before: u64,
    limit: u32,
) -> Result<Vec<Item>, ClientError> {
    let r = expect_body!(
        s.request(Body::History(pb::HistoryRequest {
            conversation_id: conv.to_owned(),
            before_seq: before,
            limit,
            thread_root_seq: root,
        })),
        HistoryResult
    )?;
    let info = expect_body!(
        s.request(Body::ThreadInfo(pb::ThreadInfoRequest {
            conversation_id: conv.to_owned(),
            root_seqs: vec![root],
        })),
        ThreadInfoResult
    )?;
    let first = r.entries.first().map(|e| e.seq);
    let last = r.entries.last().map(|e| e.seq);
    let mut items: Vec<Item> = r.entries.into_iter().map(Item::Entry).collect();
    if r.more
        && let Some(first) = first
    {
        items.push(Item::More {
            flag: "before",
            value: first.to_string(),
        });
    }
    items.extend(info.threads.into_iter().map(|t| Item::Thread {
        conv: conv.to_owned(),
        info: t,
    }));
    // Shown is read (the newest page only: an older page moves nothing).
    if let (0, Some(last)) = (before, last) {
        expect_body!(
            s.request(Body::ThreadRead(pb::ThreadReadRequest {
                conversation_id: conv.to_owned(),
                root_seq: root,
                up_to_seq: last,
            })),
            Ok
        )?;
    }
    Ok(items)
}

/// Pages of the caller's open to-dos, at most `limit` in all.
pub fn todos(s: &Session, limit: u32) -> Result<Vec<Item>, ClientError> {
    // Each page asks for what is still wanted; a page may hold fewer
    // to-dos than asked (the server skips stale index entries), so the
    // pages are bounded too.
    const PAGES_MAX: usize = 20;
    let mut items = Vec::new();
    let mut after = None;
    for _ in 0..PAGES_MAX {
        let want = limit.saturating_sub(items.len() as u32);
        if want == 0 {
            break;
        }
        let r = expect_body!(
            s.request(Body::TodoList(pb::TodoListRequest {
                limit: want.min(100),
                after: after.take(),
            })),
            TodoListResult
        )?;
        items.extend(r.todos.into_iter().map(Item::Todo));
        match r.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(items)
}

/// The newest seq of a conversation (`None`: empty).
pub fn head(s: &Session, conv: &str) -> Result<Option<u64>, ClientError> {
    let r = expect_body!(
        s.request(Body::History(pb::HistoryRequest {
            conversation_id: conv.to_owned(),
            before_seq: 0,
            limit: 1,
            thread_root_seq: 0,
        })),
        HistoryResult
    )?;
    Ok(r.entries.last().map(|e| e.seq))
}

/// `push register|unregister|list|mute` (docs/push.md).
fn push(s: &Session, a: &super::args::PushArgs) -> Result<Vec<Item>, ClientError> {
    use super::args::{PushAction, PushPlatformArg};
    let platform = |p: &PushPlatformArg| match p {
        PushPlatformArg::Apns => pb::PushPlatform::Apns as i32,
        PushPlatformArg::Fcm => pb::PushPlatform::Fcm as i32,
    };
    match &a.action {
        PushAction::Register {
            platform: p,
            push_token: token,
            topic,
        } => ok(
            "push_register",
            s.request(Body::PushRegister(pb::PushTokenRegister {
                platform: platform(p),
                token: token.clone(),
                topic: topic.clone().unwrap_or_default(),
            })),
        ),
        PushAction::Unregister {
            platform: p,
            push_token: token,
        } => ok(
            "push_unregister",
            s.request(Body::PushUnregister(pb::PushTokenUnregister {
                platform: platform(p),
                token: token.clone(),
            })),
        ),
        PushAction::List => {
            let r = expect_body!(
                s.request(Body::PushList(pb::PushListRequest {})),
                PushListResult
            )?;
            let mut items: Vec<Item> = r.tokens.into_iter().map(Item::PushToken).collect();
            if r.dnd_until_ms > 0 {
                items.push(Item::PushMute {
                    conv: String::new(),
                    until_ms: r.dnd_until_ms,
                });
            }
            items.extend(r.muted.into_iter().map(|m| Item::PushMute {
                conv: m.conversation_id,
                until_ms: m.until_ms,
            }));
            Ok(items)
        }
        PushAction::Mute {
            conv,
            until_ms,
            off,
        } => {
            let conversation_id = match conv {
                Some(c) => resolve(s, c)?.conversation(s.me())?,
                None => String::new(),
            };
            let until_ms = if *off {
                0
            } else {
                until_ms.unwrap_or(u64::MAX)
            };
            ok(
                "push_mute",
                s.request(Body::PushMute(pb::PushMute {
                    conversation_id,
                    until_ms,
                })),
            )
        }
    }
}

fn ok(op: &'static str, answer: Result<Body, ClientError>) -> Result<Vec<Item>, ClientError> {
    let ok = expect_body!(answer, Ok)?;
    Ok(vec![Item::Ok { op, ok }])
}

fn words(w: &[String]) -> String {
    w.join(" ")
}

fn user(u: &str) -> Result<String, ClientError> {
    checked(u.strip_prefix('@').unwrap_or(u), "user id")
}

fn group_id(g: &str) -> Result<String, ClientError> {
    checked(g.strip_prefix('#').unwrap_or(g), "group id")
}

fn presence(s: &Session, verb: PresenceVerb, rest: &[String]) -> Result<Vec<Item>, ClientError> {
    let state = match verb {
        PresenceVerb::Get => {
            if rest.is_empty() {
                return Err(ClientError::Usage("presence get USER...".into()));
            }
            let user_ids = rest.iter().map(|u| user(u)).collect::<Result<_, _>>()?;
            let r = expect_body!(
                s.request(Body::PresenceQuery(pb::PresenceQuery { user_ids })),
                PresenceResult
            )?;
            return Ok(r.presences.into_iter().map(Item::Presence).collect());
        }
        PresenceVerb::Online => pb::PresenceState::Online,
        PresenceVerb::Busy => pb::PresenceState::Busy,
        PresenceVerb::Away => pb::PresenceState::Away,
        PresenceVerb::Offline => pb::PresenceState::Offline,
    };
    ok(
        "presence",
        s.request(Body::SetPresence(pb::SetPresenceRequest {
            state: state as i32,
            text: words(rest),
        })),
    )
}

fn friend(s: &Session, f: &FriendCommand) -> Result<Vec<Item>, ClientError> {
    match f {
        FriendCommand::Add { user: u, message } => ok(
            "friend_add",
            s.request(Body::FriendRequest(pb::FriendRequestSend {
                user_id: user(u)?,
                message: words(message),
            })),
        ),
        FriendCommand::Accept { user: u } => ok(
            "friend_accept",
            s.request(Body::FriendAccept(pb::FriendAccept { user_id: user(u)? })),
        ),
        FriendCommand::Reject { user: u } => ok(
            "friend_reject",
            s.request(Body::FriendReject(pb::FriendReject { user_id: user(u)? })),
        ),
        FriendCommand::Delete { user: u } => ok(
            "friend_delete",
            s.request(Body::FriendDelete(pb::FriendDelete { user_id: user(u)? })),
        ),
        FriendCommand::List => {
            let r = expect_body!(
                s.request(Body::FriendList(pb::FriendListRequest {})),
                FriendListResult
            )?;
            let mut items: Vec<Item> = r.friends.into_iter().map(Item::Friend).collect();
            items.extend(r.blocked.into_iter().map(Item::Blocked));
            Ok(items)
        }
        FriendCommand::Requests => {
            let r = expect_body!(
                s.request(Body::FriendRequests(pb::FriendRequestListRequest {})),
                FriendRequestListResult
            )?;
            let mut items: Vec<Item> = r
                .incoming
                .into_iter()
                .map(|request| Item::FriendRequest {
                    incoming: true,
                    request,
                })
                .collect();
            items.extend(r.outgoing.into_iter().map(|request| Item::FriendRequest {
                incoming: false,
                request,
            }));
            Ok(items)
        }
        FriendCommand::Remark { user: u, remark } => ok(
            "friend_remark",
            s.request(Body::FriendRemark(pb::FriendRemark {
                user_id: user(u)?,
                remark: words(remark),
            })),
        ),
        FriendCommand::Block { user: u } => ok(
            "friend_block",
            s.request(Body::FriendBlock(pb::FriendBlock {
                user_id: user(u)?,
                blocked: true,
            })),
        ),
        FriendCommand::Unblock { user: u } => ok(
            "friend_unblock",
            s.request(Body::FriendBlock(pb::FriendBlock {
                user_id: user(u)?,
                blocked: false,
            })),
        ),
    }
}

fn role(r: RoleArg) -> pb::GroupRole {
    match r {
        RoleArg::Member => pb::GroupRole::Member,
        RoleArg::Admin => pb::GroupRole::Admin,
        RoleArg::Owner => pb::GroupRole::Owner,
    }
}

fn policy(p: PolicyArg) -> pb::JoinPolicy {
    match p {
        PolicyArg::Open => pb::JoinPolicy::Open,
        PolicyArg::Approval => pb::JoinPolicy::Approval,
        PolicyArg::InviteOnly => pb::JoinPolicy::InviteOnly,
    }
}

fn group(s: &Session, g: &GroupCommand) -> Result<Vec<Item>, ClientError> {
    match g {
        GroupCommand::Create {
            name,
            id,
            members,
            policy: p,
            history_visible,
        } => {
            let r = expect_body!(
                s.request(Body::GroupCreate(pb::GroupCreate {
                    group_id: id.as_deref().map(group_id).transpose()?.unwrap_or_default(),
                    name: words(name),
                    members: members.iter().map(|m| user(m)).collect::<Result<_, _>>()?,
                    join_policy: policy(*p) as i32,
                    history_visible: *history_visible,
                })),
                GroupInfoResult
            )?;
            Ok(group_info_item(r))
        }
        GroupCommand::List => {
            let r = expect_body!(
                s.request(Body::GroupList(pb::GroupListRequest {})),
                GroupListResult
            )?;
            Ok(r.groups
                .into_iter()
                .map(|info| Item::Group { info, me: None })
                .collect())
        }
        GroupCommand::Info { group } => {
            let r = expect_body!(
                s.request(Body::GroupInfo(pb::GroupInfoRequest {
                    group_id: group_id(group)?,
                })),
                GroupInfoResult
            )?;
            Ok(group_info_item(r))
        }
        GroupCommand::Members {
            group,
            after,
            limit,
        } => {
            let gid = group_id(group)?;
            let r = expect_body!(
                s.request(Body::GroupMembers(pb::GroupMembersRequest {
                    group_id: gid.clone(),
                    after_user_id: after.as_deref().map(user).transpose()?.unwrap_or_default(),
                    limit: *limit,
                })),
                GroupMembersResult
            )?;
            let last = r.members.last().map(|m| m.user_id.clone());
            let mut items: Vec<Item> = r
                .members
                .into_iter()
                .map(|member| Item::Member {
                    group: gid.clone(),
                    member,
                })
                .collect();
            if r.more
                && let Some(last) = last
            {
                items.push(Item::More {
                    flag: "after",
                    value: last,
                });
            }
            Ok(items)
        }
        GroupCommand::Join { group, message } => ok(
            "group_join",
            s.request(Body::GroupJoin(pb::GroupJoin {
                group_id: group_id(group)?,
                message: words(message),
            })),
        ),
        GroupCommand::Invite { group, users } => ok(
            "group_invite",
            s.request(Body::GroupInvite(pb::GroupInvite {
                group_id: group_id(group)?,
                user_ids: users.iter().map(|u| user(u)).collect::<Result<_, _>>()?,
            })),
        ),
        GroupCommand::Kick { group, user: u } => ok(
            "group_kick",
            s.request(Body::GroupKick(pb::GroupKick {
                group_id: group_id(group)?,
                user_id: user(u)?,
            })),
        ),
        GroupCommand::Leave { group } => ok(
            "group_leave",
            s.request(Body::GroupLeave(pb::GroupLeave {
                group_id: group_id(group)?,
            })),
        ),
        GroupCommand::Dissolve { group } => ok(
            "group_dissolve",
            s.request(Body::GroupDissolve(pb::GroupDissolve {
                group_id: group_id(group)?,
            })),
        ),
        GroupCommand::Rename { group, name } => ok(
            "group_rename",
            s.request(Body::GroupRename(pb::GroupRename {
                group_id: group_id(group)?,
                name: words(name),
            })),
        ),
        GroupCommand::Announce { group, text } => ok(
            "group_announce",
            s.request(Body::GroupAnnounce(pb::GroupAnnounce {
                group_id: group_id(group)?,
                announcement: words(text),
            })),
        ),
        GroupCommand::Nick { group, nickname } => ok(
            "group_nick",
            s.request(Body::GroupSetNickname(pb::GroupSetNickname {
                group_id: group_id(group)?,
                nickname: words(nickname),
            })),
        ),
        GroupCommand::Remark { group, remark } => ok(
            "group_remark",
            s.request(Body::GroupSetRemark(pb::GroupSetRemark {
                group_id: group_id(group)?,
                remark: words(remark),
            })),
        ),
        GroupCommand::Role {
            group,
            user: u,
            role: r,
        } => ok(
            "group_role",
            s.request(Body::GroupSetRole(pb::GroupSetRole {
                group_id: group_id(group)?,
                user_id: user(u)?,
                role: role(*r) as i32,
            })),
        ),
        GroupCommand::Mute {
            group,
            user: u,
            duration,
        } => {
            let ms = parse_duration_ms(duration)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    ClientError::Usage(format!(
                        "--for {duration:?}: expected e.g. 90s, 10m, 2h, 1d"
                    ))
                })?;
            ok(
                "group_mute",
                s.request(Body::GroupMute(pb::GroupMute {
                    group_id: group_id(group)?,
                    user_id: u.as_deref().map(user).transpose()?.unwrap_or_default(),
                    duration_ms: ms,
                })),
            )
        }
        GroupCommand::Unmute { group, user: u } => ok(
            "group_unmute",
            s.request(Body::GroupMute(pb::GroupMute {
                group_id: group_id(group)?,
                user_id: u.as_deref().map(user).transpose()?.unwrap_or_default(),
                duration_ms: 0,
            })),
        ),
        GroupCommand::Decide {
            group,
            user: u,
            decision,
        } => ok(
            "group_decide",
            s.request(Body::GroupJoinDecision(pb::GroupJoinDecision {
                group_id: group_id(group)?,
                user_id: user(u)?,
                approve: *decision == Decision::Approve,
            })),
        ),
        GroupCommand::Policy {
            group,
            policy: p,
            history_visible,
        } => ok(
            "group_policy",
            s.request(Body::GroupSetPolicy(pb::GroupSetPolicy {
                group_id: group_id(group)?,
                join_policy: policy(*p) as i32,
                history_visible: *history_visible,
            })),
        ),
    }
}

fn group_info_item(r: pb::GroupInfoResult) -> Vec<Item> {
    match r.info {
        Some(info) => vec![Item::Group { info, me: r.me }],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_come_from_at_words() {
        // Proves @words become mentions once each, @all sets the flag, and
        // an e-mail address or punctuation is not a mention.
        let (users, all) = mentions_in("hi @bob, @carol! mail bob@x.org @bob @all @");
        assert_eq!(users, ["bob", "carol"]);
        assert!(all);
        assert_eq!(mentions_in("no one"), (vec![], false));
    }

    #[test]
    fn a_text_to_a_user_carries_no_mentions() {
        // Proves mentions and @all apply to groups only, and that an id the
        // user chose is checked before anything is sent.
        let args = SendArgs {
            to: ToArgs::default(),
            mentions: vec!["dave".into()],
            mention_all: false,
            reply_to: Some(3),
            client_msg_id: Some("m1".into()),
            text: vec!["hey".into(), "@bob".into(), "@all".into()],
        };
        let direct = text_message(&Target::User("bob".into()), &args).unwrap();
        assert!(direct.mentions.is_empty() && !direct.mention_all);
        assert_eq!(
            (direct.client_msg_id.as_str(), direct.reply_to_seq),
            ("m1", 3)
        );
        let group = text_message(&Target::Group("t".into()), &args).unwrap();
        assert_eq!(group.mentions, ["bob", "dave"]);
        assert!(group.mention_all);
        let bad = SendArgs {
            client_msg_id: Some("a b".into()),
            ..args
        };
        assert!(matches!(
            text_message(&Target::Group("t".into()), &bad),
            Err(ClientError::Usage(_))
        ));
    }
}
