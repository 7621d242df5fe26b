//! How the interactive mode shows things to a person: chat lines with local
//! timestamps, conversation labels (`@bob`, `#team`), seqs to recall by, and
//! one line per event. Items without a chat form fall back to their record.
//!
//! Everything that came from other users is made inert before it reaches
//! the terminal: control characters (escape sequences could move the
//! cursor, retitle the window or fake other messages) are shown escaped.

use chrono::{Local, TimeZone as _};
use tern_protocol::pb;

use super::{
    record::{Item, policy_word, presence_word, role_word},
    target,
};

/// A person's view of an item, seen by user `me`. `None`: nothing to show
/// (this device's own read marks).
pub fn show(me: &str, item: &Item) -> Option<String> {
    Some(match item {
        Item::Ready(w) => format!(
            "logged in as {} (device {}) on node {}",
            clean(&w.user_id),
            clean(&w.device_id),
            clean(&w.node_id)
        ),
        Item::Sent(a) => format!(
            "{} [{}:{}] sent ✓{}",
            time(a.server_time_ms),
            target::label(me, &a.conversation_id),
            a.seq,
            if a.duplicate { " (duplicate)" } else { "" }
        ),
        Item::Entry(e) => return entry(me, e),
        Item::Conv(c) => conversation(me, c),
        Item::Friend(f) => {
            let p = f.profile.clone().unwrap_or_default();
            let mut s = format!("friend {}", clean(&p.user_id));
            if !p.nickname.is_empty() {
                s.push_str(&format!(" \"{}\"", clean(&p.nickname)));
            }
            if !f.remark.is_empty() {
                s.push_str(&format!(" (remark: {})", clean(&f.remark)));
            }
            s
        }
        Item::Group { info, me: mine } => {
            let mut s = format!(
                "#{} \"{}\" owner {} · {} members · {}{}{}",
                clean(&info.group_id),
                clean(&info.name),
                clean(&info.owner),
                info.member_count,
                policy_word(info.join_policy),
                if info.muted_all { " · muted" } else { "" },
                if info.dissolved { " · dissolved" } else { "" },
            );
            if let Some(m) = mine {
                s.push_str(&format!(" · you: {}", role_word(m.role)));
            }
            if !info.announcement.is_empty() {
                s.push_str(&format!("\n  announcement: {}", clean(&info.announcement)));
            }
            s
        }
        Item::Call(c) => call_event(me, c),
        Item::CallSignal(c) => format!(
            "  (call {}: {} bytes of signalling from {})",
            clean(&c.call_id),
            c.payload.len(),
            clean(&c.from_user_id)
        ),
        Item::Device(d) => format!(
            "  {}{} ({}) on {} since {}{}",
            clean(&d.device_id),
            if d.current { " (this one)" } else { "" },
            super::record::platform_word(d.platform),
            clean(&d.node_id),
            time(d.login_time_ms),
            if d.client_version.is_empty() {
                String::new()
            } else {
                format!(", {}", clean(&d.client_version))
            },
        ),
        Item::PushToken(t) => format!(
            "  {} token {} of device {} since {}",
            super::record::push_platform_word(t.platform),
            clean(&t.token),
            clean(&t.device_id),
            time(t.registered_ms),
        ),
        Item::PushMute { conv, until_ms } => format!(
            "  muted {} until {}",
            if conv.is_empty() {
                "everything".to_owned()
            } else {
                clean(conv)
            },
            if *until_ms == u64::MAX {
                "unmuted".to_owned()
            } else {
                time(*until_ms)
            },
        ),
        Item::Member { member, .. } => {
            let mut s = format!("  {} ({})", clean(&member.user_id), role_word(member.role));
            if !member.nickname.is_empty() {
                s.push_str(&format!(" \"{}\"", clean(&member.nickname)));
            }
            if member.muted_until_ms != 0 {
                s.push_str(&format!(" muted until {}", time(member.muted_until_ms)));
            }
            s
        }
        Item::Presence(p) => presence(p),
        Item::ReadBy { conv, item } => read_by(me, conv, item),
        Item::Pin { conv, pin } => format!(
            "📌 [{}:{}] pinned by {} at {}",
            target::label(me, conv),
            pin.seq,
            clean(&pin.pinned_by),
            time(pin.pinned_at_ms)
        ),
        Item::Typing(t) => format!(
            "… {} {} in {}",
            clean(&t.user_id),
            if t.typing {
                "is typing"
            } else {
                "stopped typing"
            },
            target::label(me, &t.conversation_id)
        ),
        Item::Event(e) => event(e),
        Item::PushError(e) => format!(
            "! {}: {}",
            super::error::code_name(e.code),
            clean(&e.reason)
        ),
        Item::Closed(why) => format!("! {}", clean(why)),
        Item::More { flag, value } if *flag == "sync" => format!("(sync stopped short: {value})"),
        Item::More { flag, value } => format!("(more: --{flag} {value})"),
        Item::Thread { conv, info } => {
            let summary = info.summary.unwrap_or_default();
            format!(
                "[{}:{}] thread: {} replies, {} unread",
                target::label(me, conv),
                info.root_seq,
                summary.reply_count,
                info.unread
            )
        }
        Item::RoomClosed(room) => format!("room {} was deleted", clean(room)),
        Item::Room(r) => format!(
            "room {} \"{}\" ({}) owner {}{}, newest seq {}",
            clean(&r.room_id),
            clean(&r.name),
            if r.kind == pb::RoomKind::Broadcast as i32 {
                "broadcast"
            } else {
                "chat"
            },
            clean(&r.owner),
            if r.admins.is_empty() {
                String::new()
            } else {
                format!(", admins {}", clean(&r.admins.join(",")))
            },
            r.last_seq
        ),
        Item::Todo(t) => format!(
            "☐ [{}:{}] to-do from {} (/done --conv {} {})",
            target::label(me, &t.conversation_id),
            t.seq,
            clean(&t.creator),
            t.conversation_id,
            t.seq
        ),
        Item::Ok { op, ok } => {
            let mut s = format!("✓ {}", op.replace('_', " "));
            if !ok.id.is_empty() {
                s.push_str(&format!(": {}", clean(&ok.id)));
            }
            if ok.seq != 0 {
                s.push_str(&format!(" (log entry {})", ok.seq));
            }
            s
        }
        Item::Pong {
            rtt_us,
            server_time_ms,
        } => format!(
            "pong: round trip {:.1} ms, server clock {}",
            *rtt_us as f64 / 1000.0,
            time(*server_time_ms)
        ),
        other => other.record().to_line(),
    })
}

/// A log entry as a chat line: `12:00:01 [#team:5] alice: hello`.
pub fn entry(me: &str, e: &pb::Entry) -> Option<String> {
    use pb::entry::Body;
    let head = format!(
        "{} [{}:{}]",
        time(e.time_ms),
        target::label(me, &e.conversation_id),
        e.seq
    );
    let who = clean(&e.sender);
    Some(match &e.body {
        Some(Body::Message(m)) => {
            let mut s = format!("{head} {who}: ");
            if m.thread_root_seq != 0 {
                s.push_str(&format!("(thread {}) ", m.thread_root_seq));
            }
            if m.reply_to_seq != 0 {
                s.push_str(&format!("(↪ {}) ", m.reply_to_seq));
            }
            s.push_str(&content(m));
            s.push_str(edit_mark(m.edit_count, m.streaming, m.recalled));
            if let Some(t) = &m.thread {
                s.push_str(&format!(
                    "  [{} in thread: /threadlog {}]",
                    t.reply_count, e.seq
                ));
            }
            if !m.reactions.is_empty() {
                let kinds: Vec<String> = m
                    .reactions
                    .iter()
                    .map(|k| format!("{} {}", clean(&k.emoji), k.count))
                    .collect();
                s.push_str(&format!("  [{}]", kinds.join(" · ")));
            }
            if mentions(me, e, m) {
                s.push_str("  ← mentions you");
            }
            s
        }
        Some(Body::Recalled(r)) => format!("{head} * {who} recalled message {}", r.seq),
        Some(Body::Edited(x)) => {
            let shown = pb::Message {
                content: x.content.clone(),
                ..Default::default()
            };
            format!(
                "{head} * {who} edited message {}: {}{}",
                x.seq,
                content(&shown),
                edit_mark(x.edit_count, x.streaming, false)
            )
        }
        // This user's own read marks (from any device) say nothing new here.
        Some(Body::Read(_)) if e.sender == me => return None,
        Some(Body::Read(r)) => format!("{head} ✓✓ {who} read up to {}", r.up_to_seq),
        Some(Body::GroupEvent(g)) => format!("{head} * {who} {}", group_event(g)),
        Some(Body::CallRecord(c)) => format!("{head} * {}", call_record(&who, c)),
        Some(Body::Todo(t)) => match pb::TodoAction::try_from(t.action) {
            Ok(pb::TodoAction::Create) => format!(
                "{head} * {who} made message {} a to-do for {}",
                t.seq,
                t.assignees
                    .iter()
                    .map(|a| clean(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(pb::TodoAction::Done) => format!("{head} * {who} finished to-do {}", t.seq),
            _ => format!("{head} * {who} reopened to-do {}", t.seq),
        },
        Some(Body::Reaction(r)) => format!(
            "{head} * {who} {} {} on message {}",
            if r.removed { "took back" } else { "reacted" },
            clean(&r.emoji),
            r.seq
        ),
        Some(Body::Pin(p)) => format!(
            "{head} * {who} {} message {}",
            if p.unpinned { "unpinned" } else { "pinned" },
            p.seq
        ),
        None => format!("{head} {who}: (an entry this client does not know)"),
    })
}

/// Whether message `m` of entry `e` mentions `me`: it names `me` or says
/// `@all`, someone else sent it (nobody is mentioned by their own message),
/// and it was not recalled (a recall takes its mentions back).
pub fn mentions(me: &str, e: &pb::Entry, m: &pb::Message) -> bool {
    e.sender != me && !m.recalled && (m.mention_all || m.mentions.iter().any(|u| u == me))
}

/// Read counts as a person says them: `[#team:3] ✓✓ read by 2 of 3`, or in
/// a 1:1 chat `[@bob:3] ✓✓ read` / `not read yet`.
fn read_by(me: &str, conv: &str, r: &pb::ReadBy) -> String {
    let head = format!("[{}:{}]", target::label(me, conv), r.seq);
    let direct = conv.starts_with("d:");
    match (direct, r.read_count, r.member_count) {
        (true, 0, _) => format!("{head} not read yet"),
        (true, _, _) => format!("{head} ✓✓ read"),
        (false, _, 0) => format!("{head} nobody else is in the group"),
        (false, n, all) if n >= all => format!("{head} ✓✓ read by all {all}"),
        (false, 0, all) => format!("{head} read by none of {all}"),
        (false, n, all) => format!("{head} read by {n} of {all}"),
    }
}

/// How a message shows that it was edited, or that its sender is still
/// writing it: `  (edited)`, `  (writing…)`, or nothing.
fn edit_mark(edit_count: u32, streaming: bool, recalled: bool) -> &'static str {
    match (recalled, streaming, edit_count) {
        (true, _, _) => "",
        (false, true, _) => "  (writing…)",
        (false, false, 0) => "",
        (false, false, _) => "  (edited)",
    }
}

fn content(m: &pb::Message) -> String {
    use pb::content::Kind;
    if m.recalled {
        return "(recalled)".into();
    }
    let size = |md: &Option<pb::MediaRef>| {
        let md = md.clone().unwrap_or_default();
        format!(
            "{}, {}, media {}",
            clean(&md.mime),
            bytes(md.size_bytes),
            clean(&md.media_id)
        )
    };
    match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(t)) => clean_multiline(&t.text),
        Some(Kind::Image(i)) => format!("[image {}]", size(&i.media)),
        Some(Kind::File(f)) => format!("[file {} {}]", clean(&f.name), size(&f.media)),
        Some(Kind::Voice(v)) => format!("[voice {}]", size(&v.media)),
        Some(Kind::Video(v)) => format!("[video {}]", size(&v.media)),
        Some(Kind::Location(l)) => format!(
            "[location {:.5},{:.5} {}]",
            l.latitude,
            l.longitude,
            clean(&l.name)
        ),
        Some(Kind::Custom(c)) => format!("[{} · {} bytes]", clean(&c.r#type), c.data.len()),
        None => "(empty)".into(),
    }
}

fn group_event(g: &pb::GroupEvent) -> String {
    use pb::group_event::Kind;
    let users = |m: &pb::MembersChanged| {
        m.user_ids
            .iter()
            .map(|u| clean(u))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &g.kind {
        Some(Kind::Created(c)) => format!("created the group \"{}\"", clean(&c.name)),
        Some(Kind::Joined(m)) => format!("added {}", users(m)),
        Some(Kind::Left(m)) => format!("saw {} leave", users(m)),
        Some(Kind::Kicked(m)) => format!("removed {}", users(m)),
        Some(Kind::Renamed(n)) => format!("renamed the group to \"{}\"", clean(n)),
        Some(Kind::Announcement(a)) if a.is_empty() => "cleared the announcement".into(),
        Some(Kind::Announcement(a)) => format!("announced: {}", clean_multiline(a)),
        Some(Kind::RoleChanged(c)) => format!("made {} {}", clean(&c.user_id), role_word(c.role)),
        Some(Kind::MuteChanged(c)) if c.user_id.is_empty() => {
            if c.muted_all {
                "muted the group".into()
            } else {
                "unmuted the group".into()
            }
        }
        Some(Kind::MuteChanged(c)) if c.muted_until_ms == 0 => {
            format!("unmuted {}", clean(&c.user_id))
        }
        Some(Kind::MuteChanged(c)) => format!(
            "muted {} until {}",
            clean(&c.user_id),
            time(c.muted_until_ms)
        ),
        Some(Kind::Dissolved(_)) => "dissolved the group".into(),
        Some(Kind::NicknameChanged(c)) if c.nickname.is_empty() => {
            format!("cleared {}'s nickname", clean(&c.user_id))
        }
        Some(Kind::NicknameChanged(c)) => format!(
            "set {}'s nickname to \"{}\"",
            clean(&c.user_id),
            clean(&c.nickname)
        ),
        Some(Kind::PolicyChanged(c)) => format!(
            "set joining to {}, history {}",
            policy_word(c.join_policy),
            if c.history_visible {
                "visible to new members"
            } else {
                "hidden from new members"
            }
        ),
        None => "changed the group".into(),
    }
}

fn conversation(me: &str, c: &pb::ConversationSummary) -> String {
    let mut s = format!("  {:<20}", target::label(me, &c.conversation_id));
    if c.unread > 0 {
        s.push_str(&format!(" {:>3} unread", c.unread));
    } else {
        s.push_str("           ");
    }
    s.push_str(if c.mentioned { " @you" } else { "     " });
    if let Some(last) = &c.last {
        let line = match (entry(me, last), &last.body) {
            (Some(line), _) => line,
            (None, Some(pb::entry::Body::Read(r))) => format!("] you read up to {}", r.up_to_seq),
            (None, _) => String::new(),
        };
        // Drop the `[label:seq]` part: the row already names the chat.
        let short = line.split_once("] ").map_or(line.as_str(), |(_, r)| r);
        s.push_str(&format!(
            "  {} {}",
            time(last.time_ms),
            ellipsize(short, 60)
        ));
    }
    s
}

fn presence(p: &pb::Presence) -> String {
    let state = presence_word(p.state);
    let dot = if p.state == pb::PresenceState::Offline as i32 {
        "○"
    } else {
        "●"
    };
    let mut s = format!("{dot} {} is {state}", clean(&p.user_id));
    if !p.text.is_empty() {
        s.push_str(&format!(" \"{}\"", clean(&p.text)));
    }
    if p.last_seen_ms != 0 {
        s.push_str(&format!(" (last seen {})", time(p.last_seen_ms)));
    }
    s
}

fn event(e: &pb::ServerEvent) -> String {
    use pb::server_event::Kind;
    match &e.kind {
        Some(Kind::FriendRequested(q)) => {
            let mut s = format!("+ friend request from {}", clean(&q.from_user_id));
            if !q.message.is_empty() {
                s.push_str(&format!(": \"{}\"", clean(&q.message)));
            }
            s.push_str(&format!(
                "  (/friend accept {0} · /friend reject {0})",
                clean(&q.from_user_id)
            ));
            s
        }
        Some(Kind::FriendAdded(u)) => format!("+ {} is now your friend", clean(u)),
        Some(Kind::FriendRemoved(u)) => format!("- {} is no longer your friend", clean(u)),
        Some(Kind::GroupJoined(g)) => format!("+ you are in #{} now  (/open #{0})", clean(g)),
        Some(Kind::GroupLeft(g)) => format!("- you are no longer in #{}", clean(g)),
        Some(Kind::GroupJoinRequested(q)) => {
            let mut s = format!(
                "? {} asks to join #{}",
                clean(&q.user_id),
                clean(&q.group_id)
            );
            if !q.message.is_empty() {
                s.push_str(&format!(": \"{}\"", clean(&q.message)));
            }
            s.push_str(&format!(
                "  (/group decide {} {} approve|reject)",
                clean(&q.group_id),
                clean(&q.user_id)
            ));
            s
        }
        None => "(an event this client does not know)".into(),
    }
}

/// `HH:MM:SS` in local time today, `YYYY-MM-DD HH:MM` on other days.
pub fn time(ms: u64) -> String {
    let Ok(ms) = i64::try_from(ms) else {
        return "?".into();
    };
    let Some(t) = Local.timestamp_millis_opt(ms).single() else {
        return "?".into();
    };
    if t.date_naive() == Local::now().date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M").to_string()
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// Text from others, with control characters shown escaped.
pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// [`clean`], keeping line breaks as indented continuation lines.
fn clean_multiline(s: &str) -> String {
    s.split('\n').map(clean).collect::<Vec<_>>().join("\n    ")
}

fn ellipsize(s: &str, max_chars: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() <= max_chars && first.len() == s.len() {
        first.to_owned()
    } else {
        let mut out: String = first.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

/// A call event as a line for people.
fn call_event(me: &str, c: &pb::CallEvent) -> String {
    let who = clean(&c.user_id);
    let id = clean(&c.call_id);
    let kind = pb::CallEventKind::try_from(c.kind).unwrap_or_default();
    match kind {
        pb::CallEventKind::Ringing if c.caller_id == me => {
            let others: Vec<String> = c.participants.iter().skip(1).map(|u| clean(u)).collect();
            format!(
                "📞 calling {} … (call {id}; /hangup to cancel)",
                others.join(", ")
            )
        }
        pb::CallEventKind::Ringing => format!(
            "📞 {who} is calling you in {} (call {id}): /accept or /reject",
            target::label(me, &c.conversation_id)
        ),
        pb::CallEventKind::Accepted if c.user_id == me => {
            format!("📞 answered on {} (call {id})", clean(&c.device_id))
        }
        pb::CallEventKind::Accepted => format!("📞 {who} answered (call {id})"),
        pb::CallEventKind::Rejected => format!("📞 {who} declined (call {id})"),
        pb::CallEventKind::Missed => format!("📞 {who} did not answer (call {id})"),
        pb::CallEventKind::Left => format!("📞 {who} left (call {id})"),
        pb::CallEventKind::Ended => format!(
            "📞 call {id} ended: {}",
            super::record::call_outcome_word(c.outcome)
        ),
        pb::CallEventKind::Unspecified => format!("📞 call {id} changed"),
    }
}

/// A call's record as a sentence: `alice called bob, carol: 1m05s` or
/// `alice called bob: missed`.
fn call_record(who: &str, c: &pb::CallRecord) -> String {
    let others: Vec<String> = c.participants.iter().skip(1).map(|u| clean(u)).collect();
    let how = match pb::CallOutcome::try_from(c.outcome).unwrap_or_default() {
        pb::CallOutcome::Completed => {
            let s = c.duration_ms / 1_000;
            format!("{}m{:02}s", s / 60, s % 60)
        }
        pb::CallOutcome::Missed => "missed".to_owned(),
        pb::CallOutcome::Rejected => "declined".to_owned(),
        pb::CallOutcome::Cancelled => "cancelled".to_owned(),
        pb::CallOutcome::Unspecified => "ended".to_owned(),
    };
    let kind = if c.video { "video-called" } else { "called" };
    format!("{who} {kind} {}: {how}", others.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_entry(sender: &str, text: &str) -> pb::Entry {
        pb::Entry {
            conversation_id: "d:alice:bob".into(),
            seq: 4,
            sender: sender.into(),
            body: Some(pb::entry::Body::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn chat_lines_name_the_peer_and_neutralize_escapes() {
        // Proves a 1:1 line is labelled with the other user, carries the seq,
        // and that an ANSI escape in a message cannot reach the terminal.
        let line = entry("alice", &text_entry("bob", "hi \u{1b}[2Jthere")).unwrap();
        assert!(line.ends_with("[@bob:4] bob: hi \\u{1b}[2Jthere"), "{line}");
        assert!(!line.contains('\u{1b}'));
        let own_read = pb::Entry {
            sender: "alice".into(),
            body: Some(pb::entry::Body::Read(pb::ReadMark { up_to_seq: 3 })),
            ..text_entry("alice", "")
        };
        assert_eq!(entry("alice", &own_read), None);
        assert!(
            entry("bob", &own_read)
                .unwrap()
                .contains("✓✓ alice read up to 3")
        );
    }

    fn mentioning(sender: &str, mentions: &[&str], all: bool, recalled: bool) -> pb::Entry {
        let mut e = text_entry(sender, "ready? @all");
        e.conversation_id = "g:launch".into();
        if let Some(pb::entry::Body::Message(m)) = &mut e.body {
            m.mentions = mentions.iter().map(|u| (*u).to_owned()).collect();
            m.mention_all = all;
            m.recalled = recalled;
        }
        e
    }

    #[test]
    fn only_others_live_messages_mention_you() {
        // Proves `← mentions you` is shown for another member's @you or @all,
        // never on your own message (issue: @all marked the sender's own
        // line), and never on a recalled message whose mentions a server
        // still sends.
        let says = |me: &str, e: &pb::Entry| entry(me, e).unwrap().contains("mentions you");
        assert!(says("bob", &mentioning("alice", &[], true, false)));
        assert!(says("bob", &mentioning("alice", &["bob"], false, false)));
        assert!(!says("carol", &mentioning("alice", &["bob"], false, false)));
        assert!(!says("alice", &mentioning("alice", &[], true, false)));
        assert!(!says(
            "alice",
            &mentioning("alice", &["alice"], false, false)
        ));
        assert!(!says("bob", &mentioning("alice", &["bob"], true, true)));
    }

    #[test]
    fn reactions_and_pins_read_as_sentences() {
        // Proves a reaction entry reads `* bob reacted 👍 on message 3` (or
        // `took back`), a pin entry `* alice pinned message 3`, and a
        // message with reactions ends with its totals.
        let react = |removed| pb::Entry {
            body: Some(pb::entry::Body::Reaction(pb::ReactionChange {
                seq: 3,
                emoji: "\u{1f44d}".into(),
                removed,
            })),
            ..text_entry("bob", "")
        };
        let line = entry("alice", &react(false)).unwrap();
        assert!(
            line.ends_with("* bob reacted \u{1f44d} on message 3"),
            "{line}"
        );
        let line = entry("alice", &react(true)).unwrap();
        assert!(
            line.ends_with("* bob took back \u{1f44d} on message 3"),
            "{line}"
        );
        let pin = pb::Entry {
            body: Some(pb::entry::Body::Pin(pb::PinChange {
                seq: 3,
                unpinned: false,
            })),
            ..text_entry("alice", "")
        };
        let line = entry("bob", &pin).unwrap();
        assert!(line.ends_with("* alice pinned message 3"), "{line}");
        let mut m = text_entry("alice", "ship it?");
        if let Some(pb::entry::Body::Message(x)) = &mut m.body {
            for (emoji, count) in [("\u{1f44d}", 2), (":tada:", 1)] {
                x.reactions.push(pb::ReactionSummary {
                    emoji: emoji.into(),
                    count,
                    users: Vec::new(),
                });
            }
        }
        let line = entry("bob", &m).unwrap();
        assert!(
            line.ends_with("ship it?  [\u{1f44d} 2 \u{b7} :tada: 1]"),
            "{line}"
        );
    }

    #[test]
    fn edits_show_as_such() {
        // Proves an edit entry reads `* alice edited message 3: new text`, a
        // message edited before ends with `(edited)` and one still being
        // written (streaming) with `(writing…)` instead.
        let edit = pb::Entry {
            seq: 4,
            body: Some(pb::entry::Body::Edited(pb::Edited {
                seq: 3,
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text {
                        text: "new text".into(),
                    })),
                }),
                edit_count: 1,
                streaming: false,
            })),
            ..text_entry("alice", "")
        };
        let line = entry("bob", &edit).unwrap();
        assert!(
            line.ends_with("* alice edited message 3: new text  (edited)"),
            "{line}"
        );
        let mut m = text_entry("alice", "The answer");
        if let Some(pb::entry::Body::Message(x)) = &mut m.body {
            x.edit_count = 2;
        }
        assert!(entry("bob", &m).unwrap().ends_with("The answer  (edited)"));
        if let Some(pb::entry::Body::Message(x)) = &mut m.body {
            x.streaming = true;
        }
        assert!(
            entry("bob", &m)
                .unwrap()
                .ends_with("The answer  (writing…)")
        );
    }

    #[test]
    fn read_counts_read_like_a_sentence() {
        // Proves `/read-by` shows counts as words with the conversation and
        // seq, not as a `read_by key=value` record.
        let item = |conv: &str, read_count, member_count| Item::ReadBy {
            conv: conv.into(),
            item: pb::ReadBy {
                seq: 3,
                read_count,
                member_count,
            },
        };
        let shown = |conv: &str, r, m| show("alice", &item(conv, r, m)).unwrap();
        assert_eq!(shown("g:launch", 2, 3), "[#launch:3] read by 2 of 3");
        assert_eq!(shown("g:launch", 3, 3), "[#launch:3] ✓✓ read by all 3");
        assert_eq!(shown("g:launch", 0, 3), "[#launch:3] read by none of 3");
        assert_eq!(shown("d:alice:bob", 1, 1), "[@bob:3] ✓✓ read");
        assert_eq!(shown("d:alice:bob", 0, 1), "[@bob:3] not read yet");
        assert!(!shown("g:launch", 2, 3).contains('='));
    }
}
