//! Message edit (issue 17): the sender replaces a message's content within
//! the edit window, at most `edits_per_message_max` times.
//!
//! Shaped like recall: an `Edited` entry is appended to the conversation's
//! log (pushed, then synced like any entry), and in the same atomic store
//! step the message itself is rewritten in its place with the new content,
//! its edit count, time and `streaming` flag ([`AppendEffect::Edit`], a
//! compare-and-set on the message's edit count). History and sync so serve
//! the latest version at the original seq.
//!
//! The content is stored once, in the message: the `Edited` entry is stored
//! without it and served with the message's current content
//! ([`Domain::serve_edits`]); only the push of a new edit carries the
//! content of that edit. So a reply streamed in many edits costs the log one
//! small entry per edit, not one copy of the text per edit, and a recall
//! takes the content back from every edit too.

use std::collections::HashMap;

use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::messages::{Active, rank};
use super::{Caller, Domain, Effect, Handled, Outcome, Recipients, check_id, parse_conv};
use crate::error::DomainError;
use crate::store::{Append, AppendEffect, AppendRefused, DedupKey, MemberOf};

/// How many times an edit is decided again when the message changed between
/// the read and the store's compare-and-set (another edit of the same
/// message won the race). Each round re-reads the message.
const EDIT_ATTEMPTS_MAX: usize = 4;

impl Domain {
    /// Handles an `EditRequest`. A refused edit whose `client_edit_id` was
    /// stored before is answered like the first time (a retry after its
    /// answer was lost), whatever changed since.
    pub(super) fn edit(&self, me: &Caller, now_ms: u64, req: pb::EditRequest) -> Handled {
        check_id("client_edit_id", &req.client_edit_id)?;
        let conv = parse_conv(&req.conversation_id)?;
        if req.seq == 0 {
            return Err(DomainError::InvalidArgument("seq is 0".into()));
        }
        self.check_content(req.content.as_ref())?;
        match self.edit_checked(me, now_ms, &conv, &req) {
            Err(e) if is_edit_refusal(&e) => {
                let conv_s = conv.to_string();
                match self.store.edit_dedup_lookup(
                    &conv_s,
                    &me.user_id,
                    &req.client_edit_id,
                    now_ms,
                )? {
                    Some(done) => Ok(Outcome::ok(done.seq)),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    fn edit_checked(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
        req: &pb::EditRequest,
    ) -> Handled {
        let (recipients, member_of) = self.edit_access(me, now_ms, conv)?;
        let conv_s = conv.to_string();
        for _ in 0..EDIT_ATTEMPTS_MAX {
            let (append, pushed) =
                self.prepare_edit(me, now_ms, &conv_s, req, member_of.as_ref())?;
            let result = self
                .store
                .append_batch(now_ms, std::slice::from_ref(&append))?
                .pop()
                .ok_or_else(|| DomainError::Internal("no result".into()))?;
            match result {
                Ok(done) if done.duplicate => return Ok(Outcome::ok(done.seq)),
                Ok(done) => {
                    let mut entry = pushed;
                    entry.seq = done.seq;
                    entry.conversation_id = conv_s;
                    return Ok(Outcome::with(
                        Body::Ok(pb::Ok {
                            seq: done.seq,
                            id: String::new(),
                        }),
                        vec![Effect::Deliver { entry, recipients }],
                    ));
                }
                Err(AppendRefused::NotMember) => return Err(DomainError::NotMember),
                // Edited (or recalled) since it was read: decide again.
                Err(AppendRefused::NotEditable) => continue,
                Err(other) => {
                    return Err(DomainError::Internal(format!("edit refused: {other}")));
                }
            }
        }
        Err(DomainError::Internal(
            "the message kept changing while it was edited".into(),
        ))
    }

    /// Whether the caller may write to `conv` now, as for a send: who gets
    /// the push, and the membership the append depends on. An operator's
    /// sender (the server API) needs no membership and is never muted or
    /// blocked, as for a send.
    fn edit_access(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
    ) -> Result<(Recipients, Option<MemberOf>), DomainError> {
        if me.admin {
            return match conv {
                ConversationId::Direct { a, b } => {
                    Ok((Recipients::from(vec![a.clone(), b.clone()]), None))
                }
                ConversationId::Group(gid) => {
                    let meta = self.live_group(gid)?;
                    Ok((self.member_ids(&meta)?, None))
                }
            };
        }
        let active = self.active(&me.user_id, conv)?;
        let member_of = match &active {
            Active::Direct { peer } => {
                if self.blocked_either_way(&me.user_id, peer)? {
                    return Err(DomainError::Blocked);
                }
                None
            }
            Active::Group { meta, member } => {
                if member.muted_until_ms > now_ms {
                    return Err(DomainError::Muted);
                }
                if meta.muted_all && rank(member.role) < rank(pb::GroupRole::Admin as i32) {
                    return Err(DomainError::Muted);
                }
                Some(MemberOf {
                    group_id: meta.group_id.clone(),
                    user_id: me.user_id.clone(),
                })
            }
        };
        let recipients = self.conv_recipients(conv, &active)?;
        Ok((recipients, member_of))
    }

    /// Reads the message and decides: the append to submit (the `Edited`
    /// entry as stored, without content, and the compare-and-set of the
    /// message) and the entry to push (with the content).
    fn prepare_edit(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &str,
        req: &pb::EditRequest,
        member_of: Option<&MemberOf>,
    ) -> Result<(Append, pb::Entry), DomainError> {
        let no_message = DomainError::NotFound("no message at this seq");
        let Some(mut target) = self
            .store
            .entries(conv, req.seq, req.seq, 1)?
            .pop()
            .filter(|e| e.seq == req.seq)
        else {
            return Err(no_message);
        };
        let Some(pb::entry::Body::Message(msg)) = &mut target.body else {
            return Err(no_message);
        };
        if target.sender != me.user_id {
            return Err(DomainError::PermissionDenied("not your message"));
        }
        if msg.recalled {
            return Err(DomainError::NotFound("the message was recalled"));
        }
        let window = self.config.edit_window_ms;
        if window == 0 || now_ms.saturating_sub(target.time_ms) > window {
            return Err(DomainError::EditWindowPassed);
        }
        if !same_kind(msg.content.as_ref(), req.content.as_ref()) {
            return Err(DomainError::InvalidArgument(
                "content is not of the message's kind".into(),
            ));
        }
        if msg.edit_count >= self.config.edits_per_message_max {
            return Err(DomainError::LimitReached("edits of this message"));
        }
        let expect_edit_count = msg.edit_count;
        let edit_count = expect_edit_count + 1;
        msg.content.clone_from(&req.content);
        msg.edit_count = edit_count;
        msg.edited_at_ms = now_ms;
        msg.streaming = req.streaming;
        let pushed = Domain::entry(
            me,
            now_ms,
            pb::entry::Body::Edited(pb::Edited {
                seq: req.seq,
                content: req.content.clone(),
                edit_count,
                streaming: req.streaming,
            }),
        );
        let mut stored = pushed.clone();
        if let Some(pb::entry::Body::Edited(x)) = &mut stored.body {
            x.content = None;
        }
        let append = Append {
            conversation: conv.to_owned(),
            entry: stored,
            // An edit does not move the conversation up the list.
            activity: false,
            dedup: Some(DedupKey {
                sender: me.user_id.clone(),
                client_msg_id: req.client_edit_id.clone(),
                expires_at_ms: now_ms.saturating_add(self.config.dedup_window_ms),
            }),
            member_of: member_of.cloned(),
            effect: AppendEffect::Edit {
                expect_edit_count,
                message: Box::new(target),
            },
            participants: Vec::new(),
        };
        Ok((append, pushed))
    }

    /// Fills the content of the `Edited` entries among `entries` (as read
    /// from the store, which keeps them without it) with the current
    /// content of the message each names; a recalled message's edits stay
    /// without. Reads each message once.
    pub(super) fn serve_edits(&self, entries: &mut [pb::Entry]) -> Result<(), DomainError> {
        let mut current: HashMap<(String, u64), Option<pb::Content>> = HashMap::new();
        for e in entries.iter_mut() {
            let Some(pb::entry::Body::Edited(x)) = &mut e.body else {
                continue;
            };
            if x.content.is_some() {
                continue;
            }
            let key = (e.conversation_id.clone(), x.seq);
            if !current.contains_key(&key) {
                let content = self
                    .store
                    .entries(&key.0, key.1, key.1, 1)?
                    .pop()
                    .filter(|m| m.seq == key.1)
                    .and_then(|m| match m.body {
                        Some(pb::entry::Body::Message(m)) if !m.recalled => m.content,
                        _ => None,
                    });
                current.insert(key.clone(), content);
            }
            x.content = current.get(&key).cloned().flatten();
        }
        Ok(())
    }
}

/// Whether an edit's error refuses the caller's right (so that a retry of
/// a stored edit is answered from its dedup record instead).
fn is_edit_refusal(e: &DomainError) -> bool {
    e.is_refusal()
        || matches!(
            e,
            DomainError::EditWindowPassed | DomainError::LimitReached(_)
        )
}

/// Whether two contents are of the same kind (text and text, image and
/// image, …).
fn same_kind(a: Option<&pb::Content>, b: Option<&pb::Content>) -> bool {
    let kind = |c: Option<&pb::Content>| {
        c.and_then(|c| c.kind.as_ref())
            .map(std::mem::discriminant::<pb::content::Kind>)
    };
    kind(a).is_some() && kind(a) == kind(b)
}
