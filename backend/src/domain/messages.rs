//! Messages and the conversation log: send (batched), sync, history,
//! recall, read marks, read-by counts and the conversation list.

use std::collections::HashMap;

use prost::Message as _;
use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::{
    Caller, Domain, Effect, Handled, Outcome, Recipients, Request, check_id, page, parse_conv,
};
use crate::error::DomainError;
use crate::store::{
    Append, AppendEffect, AppendRefused, DedupKey, GroupMeta, MemberOf, MemberRecord, UserConv,
};

/// A send after validation.
pub(super) enum Prepared {
    /// To be stored with its batch.
    Store(PreparedSend),
    /// Already answered: a resend of a stored message.
    Answered(Outcome),
}

/// A validated send, waiting for its batch to be stored.
pub(super) struct PreparedSend {
    append: Append,
    recipients: Recipients,
}

/// The checks of the 1:1 sends of one run of consecutive sends (blocks
/// either way; friendship under the friends-only policy), read with one
/// [`crate::store::Store::blocked_pairs`] call (and one
/// [`crate::store::Store::friend_pairs`] call): on Redis one round trip
/// each instead of two, or three, per send.
#[derive(Debug, Default)]
pub(super) struct DirectChecks {
    /// `(sender, peer, what was read)`, sorted by `(sender, peer)`, each
    /// pair once.
    known: Vec<(String, String, DirectState)>,
    /// Why the read failed, if it did: the run's sends fail with it rather
    /// than each retrying a read that just failed.
    failed: Option<String>,
}

/// What was read for one `(sender, peer)`.
#[derive(Debug, Clone, Copy)]
struct DirectState {
    /// A block exists, either way.
    blocked: bool,
    /// The sender has a friendship record for the peer (`true` when the
    /// policy lets strangers message, which needs no read).
    friends: bool,
}

impl DirectChecks {
    /// What was read for `(me, peer)`: `None` if the pair was not part of
    /// the read (then the caller reads it alone).
    fn get(&self, me: &str, peer: &str) -> Option<Result<DirectState, DomainError>> {
        if let Some(reason) = &self.failed {
            return Some(Err(DomainError::Internal(reason.clone())));
        }
        self.known
            .binary_search_by(|(a, b, _)| (a.as_str(), b.as_str()).cmp(&(me, peer)))
            .ok()
            .and_then(|i| self.known.get(i))
            .map(|(_, _, state)| Ok(*state))
    }
}

/// Reads ahead the checks of a batch's 1:1 sends: for each run of
/// consecutive sends, at its first send, one read for every 1:1 send of the
/// run. Not earlier: a request between two runs (a block, say) must be seen
/// by the sends after it.
#[derive(Debug)]
pub(super) struct DirectReadAhead {
    /// Per request: `None` for a request that is not a send; for a send,
    /// its `(sender, peer)` if it is a 1:1 send with valid, distinct ids.
    /// The ids are copied because the requests are consumed as they are
    /// handled; a batch is bounded by the gateway's `batch_max`.
    sends: Vec<Option<Option<(String, String)>>>,
    /// The checks of the current run.
    current: DirectChecks,
}

impl DirectReadAhead {
    /// Notes the 1:1 sends of `requests` (reads nothing yet).
    pub(super) fn new(requests: &[Request]) -> Self {
        let sends = requests
            .iter()
            .map(|r| match &r.body {
                Body::Send(send) => Some(match &send.to {
                    Some(pb::send::To::UserId(peer))
                        if *peer != r.caller.user_id
                            && check_id("user_id", peer).is_ok()
                            && check_id("user_id", &r.caller.user_id).is_ok() =>
                    {
                        Some((r.caller.user_id.clone(), peer.clone()))
                    }
                    _ => None,
                }),
                _ => None,
            })
            .collect();
        Self {
            sends,
            current: DirectChecks::default(),
        }
    }

    /// The checks for the send at index `i`; at the first send of a run,
    /// reads those of the whole run first.
    pub(super) fn checks_for(&mut self, domain: &Domain, i: usize) -> &DirectChecks {
        let starts_run = i == 0 || self.sends.get(i - 1).is_some_and(Option::is_none);
        if starts_run {
            let run = self.sends.get(i..).unwrap_or_default();
            let pairs: Vec<(&str, &str)> = run
                .iter()
                .take_while(|s| s.is_some())
                .flatten()
                .flatten()
                .map(|(me, peer)| (me.as_str(), peer.as_str()))
                .collect();
            self.current = domain.read_direct_checks(&pairs);
        }
        &self.current
    }
}

/// What a caller may do in a conversation they currently take part in.
pub(super) enum Active {
    /// A 1:1 conversation with `peer`.
    Direct {
        /// The other user.
        peer: String,
    },
    /// A group the caller is a member of.
    Group {
        /// The group.
        meta: GroupMeta,
        /// The caller's membership.
        member: MemberRecord,
    },
}

/// The part of a conversation's log a caller may read.
pub(super) struct View {
    pub(super) conv: String,
    /// First visible seq.
    pub(super) from: u64,
    /// Last visible seq (the head for current participants).
    pub(super) to: u64,
}

impl Domain {
    // ---- send ---------------------------------------------------------------

    /// Validates a send. A send refused for the caller's rights (not a
    /// member any more, blocked, muted…) that resends a message stored
    /// before is answered with the original ack instead: a resend is
    /// idempotent even across a change of rights.
    ///
    /// `checks` holds the 1:1 checks read ahead for the batch; a 1:1 send
    /// whose pair is not in it reads its own (pass
    /// `&DirectChecks::default()` for a send on its own).
    pub(super) fn prepare_send(
        &self,
        me: &Caller,
        now_ms: u64,
        send: pb::Send,
        checks: &DirectChecks,
    ) -> Result<Prepared, DomainError> {
        check_id("client_msg_id", &send.client_msg_id)?;
        let conv = match &send.to {
            None => return Err(DomainError::InvalidArgument("send has no recipient".into())),
            Some(pb::send::To::UserId(peer)) => {
                check_id("user_id", peer)?;
                ConversationId::direct(&me.user_id, peer)
                    .ok_or_else(|| DomainError::InvalidArgument("cannot send to yourself".into()))?
            }
            Some(pb::send::To::GroupId(gid)) => {
                check_id("group_id", gid)?;
                ConversationId::group(gid)
            }
        };
        let cmid = send.client_msg_id.clone();
        match self.prepare_checked(me, now_ms, send, checks) {
            Ok(p) => Ok(Prepared::Store(p)),
            Err(e) if e.is_refusal() => {
                let conv = conv.to_string();
                match self.store.dedup_lookup(&conv, &me.user_id, &cmid, now_ms)? {
                    Some(done) => Ok(Prepared::Answered(Outcome::reply(Body::SendAck(
                        pb::SendAck {
                            client_msg_id: cmid,
                            conversation_id: conv,
                            seq: done.seq,
                            server_time_ms: done.time_ms,
                            duplicate: true,
                        },
                    )))),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn prepare_checked(
        &self,
        me: &Caller,
        now_ms: u64,
        send: pb::Send,
        checks: &DirectChecks,
    ) -> Result<PreparedSend, DomainError> {
        self.check_content(send.content.as_ref())?;
        let (conv, recipients, member_of, mentions, mention_all, participants) = match &send.to {
            None => return Err(DomainError::InvalidArgument("send has no recipient".into())),
            Some(pb::send::To::UserId(peer)) => {
                check_id("user_id", peer)?;
                let conv = ConversationId::direct(&me.user_id, peer).ok_or_else(|| {
                    DomainError::InvalidArgument("cannot send to yourself".into())
                })?;
                // An operator's sender (a system or bot user) needs no
                // friendship and is never blocked.
                if !me.admin {
                    self.check_direct_allowed(&me.user_id, peer, checks)?;
                }
                let both = vec![me.user_id.clone(), peer.clone()];
                // Mentions mean nothing in a 1:1 chat (schema: ignored).
                (
                    conv,
                    Recipients::from(both.clone()),
                    None,
                    Vec::new(),
                    false,
                    both,
                )
            }
            Some(pb::send::To::GroupId(gid)) => {
                check_id("group_id", gid)?;
                let meta = self.live_group(gid)?;
                // An operator sends to any group, member or not, muted or
                // not (no membership guard on the append).
                let guard = if me.admin {
                    None
                } else {
                    let member = self.member_of_group(gid, &me.user_id)?;
                    if member.muted_until_ms > now_ms {
                        return Err(DomainError::Muted);
                    }
                    let privileged = rank(member.role) >= rank(pb::GroupRole::Admin as i32);
                    if meta.muted_all && !privileged {
                        return Err(DomainError::Muted);
                    }
                    if send.mention_all && !privileged {
                        return Err(DomainError::PermissionDenied("only admins may mention all"));
                    }
                    Some(MemberOf {
                        group_id: gid.clone(),
                        user_id: me.user_id.clone(),
                    })
                };
                let mentions = self.check_mentions(&send.mentions)?;
                let recipients = self.member_ids(&meta)?;
                let conv = ConversationId::group(gid);
                (
                    conv,
                    recipients,
                    guard,
                    mentions,
                    send.mention_all,
                    Vec::new(),
                )
            }
        };
        let conv = conv.to_string();
        if send.reply_to_seq > 0 {
            let head = self.head_seq(&conv)?;
            if send.reply_to_seq > head {
                return Err(DomainError::InvalidArgument(
                    "reply_to_seq is past the head".into(),
                ));
            }
        }
        // A thread reply: its root must be a message the sender can see
        // that takes replies (the store checks it again atomically).
        let effect = if send.thread_root_seq > 0 {
            self.check_thread_root(me, &conv, send.thread_root_seq)?;
            AppendEffect::ThreadReply {
                root_seq: send.thread_root_seq,
            }
        } else {
            AppendEffect::None
        };
        let mut entry = Domain::entry(
            me,
            now_ms,
            pb::entry::Body::Message(pb::Message {
                content: send.content,
                mentions,
                mention_all,
                reply_to_seq: send.reply_to_seq,
                recalled: false,
                edit_count: 0,
                edited_at_ms: 0,
                reactions: vec![],
                streaming: send.streaming,
                thread_root_seq: send.thread_root_seq,
                thread: None,
            }),
        );
        entry.client_msg_id = send.client_msg_id.clone();
        let dedup = DedupKey {
            sender: me.user_id.clone(),
            client_msg_id: send.client_msg_id,
            expires_at_ms: now_ms.saturating_add(self.config.dedup_window_ms),
        };
        let append = Append {
            conversation: conv,
            entry,
            activity: true,
            dedup: Some(dedup),
            member_of,
            effect,
            participants,
        };
        Ok(PreparedSend { append, recipients })
    }

    /// Stores the pending sends in one store call and fills in their
    /// outcomes.
    pub(super) fn flush_sends(
        &self,
        now_ms: u64,
        pending: &mut Vec<(usize, PreparedSend)>,
        outcomes: &mut [Option<Outcome>],
    ) {
        if pending.is_empty() {
            return;
        }
        // The appends are moved out, not copied (an entry holds the whole
        // content), and moved on into the deliveries.
        let (slots, appends): (Vec<(usize, Recipients)>, Vec<Append>) = std::mem::take(pending)
            .into_iter()
            .map(|(i, p)| ((i, p.recipients), p.append))
            .unzip();
        match self.store.append_batch(now_ms, &appends) {
            Err(e) => {
                let e = DomainError::from(e);
                for (i, _) in slots {
                    outcomes[i] = Some(Outcome::error(&e));
                }
            }
            Ok(results) => {
                for (((i, recipients), append), result) in
                    slots.into_iter().zip(appends).zip(results)
                {
                    outcomes[i] = Some(match result {
                        Err(AppendRefused::NotMember) => Outcome::error(&DomainError::NotMember),
                        // The root was recalled since it was checked.
                        Err(AppendRefused::NotThreadable) => {
                            Outcome::error(&DomainError::MessageRecalled)
                        }
                        Err(other) => {
                            Outcome::error(&DomainError::Internal(format!("send refused: {other}")))
                        }
                        Ok(done) => {
                            let mut entry = append.entry;
                            let ack = pb::SendAck {
                                client_msg_id: std::mem::take(&mut entry.client_msg_id),
                                conversation_id: append.conversation.clone(),
                                seq: done.seq,
                                server_time_ms: done.time_ms,
                                duplicate: done.duplicate,
                            };
                            let mut effects = Vec::new();
                            if !done.duplicate {
                                self.mark_own_thread_reply(&append.conversation, &entry, done.seq);
                                entry.client_msg_id = ack.client_msg_id.clone();
                                entry.seq = done.seq;
                                entry.conversation_id = append.conversation;
                                effects.push(Effect::Deliver { entry, recipients });
                            }
                            Outcome::with(Body::SendAck(ack), effects)
                        }
                    });
                }
            }
        }
    }

    pub(super) fn check_content(&self, content: Option<&pb::Content>) -> Result<(), DomainError> {
        let invalid = |s: &str| Err(DomainError::InvalidArgument(s.into()));
        let Some(content) = content else {
            return invalid("content is missing");
        };
        let Some(kind) = &content.kind else {
            return invalid("content is empty");
        };
        if let pb::content::Kind::Text(t) = kind {
            if t.text.is_empty() {
                return invalid("text is empty");
            }
            if t.text.len() > self.config.text_bytes_max as usize {
                return invalid("text is longer than text_bytes_max");
            }
        }
        if content.encoded_len() > self.config.content_bytes_max as usize {
            return invalid("content is larger than content_bytes_max");
        }
        Ok(())
    }

    fn check_mentions(&self, mentions: &[String]) -> Result<Vec<String>, DomainError> {
        if mentions.len() > self.config.mentions_max as usize {
            return Err(DomainError::InvalidArgument("too many mentions".into()));
        }
        let mut out: Vec<String> = Vec::with_capacity(mentions.len());
        for m in mentions {
            check_id("mentions", m)?;
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        Ok(out)
    }

    /// Blocks (either way) and the friends-only policy, for a 1:1 message.
    fn check_direct_allowed(
        &self,
        me: &str,
        peer: &str,
        checks: &DirectChecks,
    ) -> Result<(), DomainError> {
        let state = match checks.get(me, peer) {
            Some(read) => read?,
            None => {
                let mut alone = self.read_direct_checks(&[(me, peer)]);
                match alone.failed.take() {
                    Some(reason) => return Err(DomainError::Internal(reason)),
                    None => alone.get(me, peer).ok_or_else(|| {
                        DomainError::Internal("a 1:1 check was read but not kept".into())
                    })??,
                }
            }
        };
        if state.blocked {
            return Err(DomainError::Blocked);
        }
        if !state.friends {
            return Err(DomainError::NotFriends);
        }
        Ok(())
    }

    /// Whether `me` blocked `peer` or `peer` blocked `me`: one store read.
    pub(super) fn blocked_either_way(&self, me: &str, peer: &str) -> Result<bool, DomainError> {
        let both = self.store.blocked_pairs(&[(peer, me), (me, peer)])?;
        match both.as_slice() {
            [a, b] => Ok(*a || *b),
            _ => Err(DomainError::Internal(
                "store answered the wrong number of block checks".into(),
            )),
        }
    }

    /// Reads, in one store call, whether a block exists either way for
    /// each `(sender, peer)` of `pairs` (ids already checked), and, under
    /// the friends-only policy, in one more, whether the sender has the
    /// peer as a friend. A failed read is kept in the result, for the sends
    /// to fail with.
    fn read_direct_checks(&self, pairs: &[(&str, &str)]) -> DirectChecks {
        let mut unique: Vec<(&str, &str)> = pairs.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return DirectChecks::default();
        }
        let failed = |reason: String| DirectChecks {
            known: Vec::new(),
            failed: Some(reason),
        };
        let miscounted = "store answered the wrong number of 1:1 checks";
        // Both directions of each pair: [peer blocks me, me blocks peer].
        let asks: Vec<(&str, &str)> = unique
            .iter()
            .flat_map(|&(me, peer)| [(peer, me), (me, peer)])
            .collect();
        let blocks = match self.store.blocked_pairs(&asks) {
            Ok(b) if b.len() == asks.len() => b,
            Ok(_) => return failed(miscounted.into()),
            Err(e) => return failed(e.to_string()),
        };
        let friends = if self.config.allow_non_friend_messages {
            vec![true; unique.len()]
        } else {
            match self.store.friend_pairs(&unique) {
                Ok(f) if f.len() == unique.len() => f,
                Ok(_) => return failed(miscounted.into()),
                Err(e) => return failed(e.to_string()),
            }
        };
        let known = unique
            .iter()
            .zip(blocks.chunks_exact(2))
            .zip(friends)
            .map(|((&(me, peer), two), friends)| {
                let state = DirectState {
                    blocked: two[0] || two[1],
                    friends,
                };
                (me.to_owned(), peer.to_owned(), state)
            })
            .collect();
        DirectChecks {
            known,
            failed: None,
        }
    }

    // ---- access -------------------------------------------------------------

    /// The newest seq of `conv` (0: empty).
    pub(super) fn head_seq(&self, conv: &str) -> Result<u64, DomainError> {
        let heads = self.store.heads(&[conv])?;
        let head = heads
            .first()
            .ok_or_else(|| DomainError::Internal("store returned no head".into()))?;
        Ok(head.seq)
    }

    /// The caller takes part in `conv` now (for recall, read, typing).
    pub(super) fn active(&self, me: &str, conv: &ConversationId) -> Result<Active, DomainError> {
        match conv {
            ConversationId::Direct { .. } => match conv.peer_of(me) {
                Some(peer) => Ok(Active::Direct {
                    peer: peer.to_owned(),
                }),
                None => Err(DomainError::NotMember),
            },
            ConversationId::Group(gid) => {
                let meta = self.live_group(gid)?;
                let member = self.member_of_group(gid, me)?;
                Ok(Active::Group { meta, member })
            }
        }
    }

    /// Who gets pushes of `conv`'s new entries.
    pub(super) fn conv_recipients(
        &self,
        conv: &ConversationId,
        active: &Active,
    ) -> Result<Recipients, DomainError> {
        match (conv, active) {
            (ConversationId::Direct { a, b }, _) => {
                Ok(Recipients::from(vec![a.clone(), b.clone()]))
            }
            (_, Active::Group { meta, .. }) => self.member_ids(meta),
            (ConversationId::Group(_), Active::Direct { .. }) => Err(DomainError::Internal(
                "group conversation with direct access".into(),
            )),
        }
    }

    /// The part of `conv` the caller may read: participants of a 1:1
    /// conversation see all of it; group members see from when they joined
    /// (or from the start if the group shows history) until they left.
    pub(super) fn view(&self, me: &str, conv: &ConversationId) -> Result<View, DomainError> {
        let conv_s = conv.to_string();
        let uc = self.store.user_conv(me, &conv_s)?;
        let uc = match (conv, uc) {
            (ConversationId::Direct { .. }, _) if conv.peer_of(me).is_none() => {
                return Err(DomainError::NotMember);
            }
            (_, Some(uc)) => uc,
            (ConversationId::Direct { .. }, None) => UserConv {
                conversation_id: conv_s.clone(),
                visible_from_seq: 1,
                visible_to_seq: 0,
                read_seq: 0,
            },
            (ConversationId::Group(_), None) => return Err(DomainError::NotMember),
        };
        let head = self.head_seq(&conv_s)?;
        Ok(View {
            conv: conv_s,
            from: uc.visible_from_seq.max(1),
            to: visible_head(&uc, head),
        })
    }

    /// The seqs of `conv` the caller may read, `(from, to)` (see `view`).
    pub(super) fn view_range(
        &self,
        me: &str,
        conv: &ConversationId,
    ) -> Result<(u64, u64), DomainError> {
        let v = self.view(me, conv)?;
        Ok((v.from, v.to))
    }

    // ---- sync and history ----------------------------------------------------

    pub(super) fn sync(&self, me: &Caller, req: pb::SyncRequest) -> Handled {
        if req.cursors.len() > self.config.sync_cursors_max as usize {
            return Err(DomainError::InvalidArgument("too many cursors".into()));
        }
        let mut held: HashMap<String, u64> = HashMap::with_capacity(req.cursors.len());
        for c in &req.cursors {
            parse_conv(&c.conversation_id)?;
            held.insert(c.conversation_id.clone(), c.seq);
        }
        let limit = page(req.limit, self.config.page_entries_max);
        let ucs = self.store.user_convs(&me.user_id)?;
        let convs: Vec<&str> = ucs.iter().map(|u| u.conversation_id.as_str()).collect();
        let heads = self.store.heads(&convs)?;
        if heads.len() != convs.len() {
            return Err(DomainError::Internal(
                "store returned the wrong number of heads".into(),
            ));
        }
        let mut result = pb::SyncResult::default();
        for (uc, head) in ucs.iter().zip(heads) {
            let to = visible_head(uc, head.seq);
            let have = held.get(&uc.conversation_id).copied().unwrap_or(0);
            let from = have.saturating_add(1).max(uc.visible_from_seq.max(1));
            result.heads.push(pb::Cursor {
                conversation_id: uc.conversation_id.clone(),
                seq: to,
            });
            if from > to {
                continue;
            }
            let budget = limit - result.entries.len();
            if budget == 0 {
                result.more = true;
                continue;
            }
            let got = self.store.entries(&uc.conversation_id, from, to, budget)?;
            if (got.len() as u64) < to - from + 1 {
                result.more = true;
            }
            result.entries.extend(got);
        }
        self.serve_edits(&mut result.entries)?;
        self.serve_reactions(&mut result.entries)?;
        Ok(Outcome::reply(Body::SyncResult(result)))
    }

    /// The part of `conv` the caller may read: [`Domain::view`], or all of
    /// it for an operator.
    pub(super) fn read_view(
        &self,
        me: &Caller,
        conv: &ConversationId,
    ) -> Result<View, DomainError> {
        if !me.admin {
            return self.view(&me.user_id, conv);
        }
        // An operator reads the whole log of any conversation.
        if let ConversationId::Group(gid) = conv {
            self.store
                .group(gid)?
                .ok_or(DomainError::NotFound("no such group"))?;
        }
        let conv_s = conv.to_string();
        let head = self.head_seq(&conv_s)?;
        Ok(View {
            conv: conv_s,
            from: 1,
            to: head,
        })
    }

    pub(super) fn history(&self, me: &Caller, req: pb::HistoryRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.thread_root_seq > 0 {
            return self.thread_history(me, &conv, &req);
        }
        let view = self.read_view(me, &conv)?;
        let limit = page(req.limit, self.config.page_entries_max) as u64;
        let upper = if req.before_seq == 0 {
            view.to
        } else {
            view.to.min(req.before_seq - 1)
        };
        if upper < view.from {
            return Ok(Outcome::reply(Body::HistoryResult(
                pb::HistoryResult::default(),
            )));
        }
        let lower = view.from.max(upper.saturating_sub(limit - 1));
        let mut entries = self
            .store
            .entries(&view.conv, lower, upper, limit as usize)?;
        self.serve_edits(&mut entries)?;
        self.serve_reactions(&mut entries)?;
        self.serve_thread_summaries(&view.conv, &mut entries)?;
        let more = lower > view.from;
        Ok(Outcome::reply(Body::HistoryResult(pb::HistoryResult {
            entries,
            more,
        })))
    }

    // ---- recall and read --------------------------------------------------

    pub(super) fn recall(&self, me: &Caller, now_ms: u64, req: pb::RecallRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.seq == 0 {
            return Err(DomainError::InvalidArgument("seq is 0".into()));
        }
        let active = self.active(&me.user_id, &conv)?;
        let conv_s = conv.to_string();
        let no_message = DomainError::NotFound("no message at this seq");
        let Some(target) = self.store.entries(&conv_s, req.seq, req.seq, 1)?.pop() else {
            return Err(no_message);
        };
        let Some(pb::entry::Body::Message(msg)) = &target.body else {
            return Err(no_message);
        };
        let already_recalled = msg.recalled;
        // Admins and the owner may recall what members of lower rank sent, at
        // any time; anyone may recall their own within the window.
        let my_rank = match &active {
            Active::Group { member, .. } => rank(member.role),
            Active::Direct { .. } => 0,
        };
        let sender_rank = match (&active, target.sender == me.user_id) {
            (_, true) => my_rank,
            (Active::Group { meta, .. }, false) => self
                .store
                .group_member(&meta.group_id, &target.sender)?
                .map_or(0, |m| rank(m.role)),
            (Active::Direct { .. }, false) => u8::MAX,
        };
        let privileged = my_rank >= rank(pb::GroupRole::Admin as i32);
        if target.sender != me.user_id {
            if !privileged || sender_rank >= my_rank {
                return Err(DomainError::PermissionDenied("not your message"));
            }
        } else if now_ms.saturating_sub(target.time_ms) > self.config.recall_window_ms
            && !privileged
        {
            return Err(DomainError::RecallWindowPassed);
        }
        if already_recalled {
            // Already in the state asked for: nothing to append.
            return Ok(Outcome::ok(0));
        }
        let member_of = match &active {
            Active::Group { meta, .. } => Some(MemberOf {
                group_id: meta.group_id.clone(),
                user_id: me.user_id.clone(),
            }),
            Active::Direct { .. } => None,
        };
        let entry = Domain::entry(
            me,
            now_ms,
            pb::entry::Body::Recalled(pb::Recalled { seq: req.seq }),
        );
        let append = Append {
            conversation: conv_s,
            entry,
            activity: true,
            dedup: None,
            member_of,
            effect: AppendEffect::Recall { seq: req.seq },
            participants: Vec::new(),
        };
        let recipients = self.conv_recipients(&conv, &active)?;
        self.append_one(now_ms, append, recipients)
    }

    pub(super) fn read(&self, me: &Caller, now_ms: u64, req: pb::ReadRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.up_to_seq == 0 {
            return Err(DomainError::InvalidArgument("up_to_seq is 0".into()));
        }
        let active = self.active(&me.user_id, &conv)?;
        let conv_s = conv.to_string();
        let head = self.head_seq(&conv_s)?;
        if req.up_to_seq > head {
            return Err(DomainError::InvalidArgument(
                "up_to_seq is past the head".into(),
            ));
        }
        let read_seq = self
            .store
            .user_conv(&me.user_id, &conv_s)?
            .map_or(0, |u| u.read_seq);
        if read_seq >= req.up_to_seq {
            // Cursors only move forward; an old read mark changes nothing.
            return Ok(Outcome::ok(0));
        }
        let member_of = match &active {
            Active::Group { meta, .. } => Some(MemberOf {
                group_id: meta.group_id.clone(),
                user_id: me.user_id.clone(),
            }),
            Active::Direct { .. } => None,
        };
        let entry = Domain::entry(
            me,
            now_ms,
            pb::entry::Body::Read(pb::ReadMark {
                up_to_seq: req.up_to_seq,
            }),
        );
        let append = Append {
            conversation: conv_s,
            entry,
            activity: false,
            dedup: None,
            member_of,
            effect: AppendEffect::Read {
                user_id: me.user_id.clone(),
                up_to_seq: req.up_to_seq,
            },
            participants: Vec::new(),
        };
        let recipients = self.conv_recipients(&conv, &active)?;
        self.append_one(now_ms, append, recipients)
    }

    /// Appends one non-message entry and answers `Ok { seq }` with a
    /// delivery of it; a refused effect (already recalled, cursor already
    /// there) is `Ok { seq: 0 }`: the state asked for holds.
    fn append_one(&self, now_ms: u64, append: Append, recipients: Recipients) -> Handled {
        let mut results = self
            .store
            .append_batch(now_ms, std::slice::from_ref(&append))?;
        let result = results
            .pop()
            .ok_or_else(|| DomainError::Internal("no result".into()))?;
        match result {
            Err(AppendRefused::NotMember) => Err(DomainError::NotMember),
            Err(AppendRefused::NotRecallable | AppendRefused::ReadNotAdvanced) => {
                Ok(Outcome::ok(0))
            }
            Err(
                AppendRefused::NotEditable
                | AppendRefused::AnnotationChanged
                | AppendRefused::NotThreadable
                | AppendRefused::TodoChanged,
            ) => Err(DomainError::Internal(
                "an edit's, annotation's, thread's or to-do's refusal for another append".into(),
            )),
            Ok(done) => {
                let mut entry = append.entry;
                entry.seq = done.seq;
                entry.conversation_id = append.conversation;
                Ok(Outcome::with(
                    Body::Ok(pb::Ok {
                        seq: done.seq,
                        id: String::new(),
                    }),
                    vec![Effect::Deliver { entry, recipients }],
                ))
            }
        }
    }

    pub(super) fn read_by(&self, me: &Caller, req: pb::ReadByQuery) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.seqs.len() > self.config.read_by_seqs_max as usize {
            return Err(DomainError::InvalidArgument("too many seqs".into()));
        }
        let view = self.view(&me.user_id, &conv)?;
        // Everyone whose cursor counts, with their cursor.
        let readers: Vec<(String, u64)> = match &conv {
            ConversationId::Direct { a, b } => {
                let mut v = Vec::with_capacity(2);
                for u in [a, b] {
                    let seq = self
                        .store
                        .user_conv(u, &view.conv)?
                        .map_or(0, |x| x.read_seq);
                    v.push((u.clone(), seq));
                }
                v
            }
            ConversationId::Group(gid) => {
                let meta = self.live_group(gid)?;
                let ids = self.member_ids(&meta)?;
                let mut v = Vec::with_capacity(ids.len());
                for u in ids.iter() {
                    let seq = self
                        .store
                        .user_conv(u, &view.conv)?
                        .map_or(0, |x| x.read_seq);
                    v.push((u.clone(), seq));
                }
                v
            }
        };
        let mut items = Vec::with_capacity(req.seqs.len());
        for &seq in &req.seqs {
            if seq < view.from || seq > view.to {
                continue;
            }
            let Some(e) = self.store.entries(&view.conv, seq, seq, 1)?.pop() else {
                continue;
            };
            let others = readers.iter().filter(|(u, _)| *u != e.sender);
            let (mut read_count, mut member_count) = (0u32, 0u32);
            for (_, cursor) in others {
                member_count += 1;
                if *cursor >= seq {
                    read_count += 1;
                }
            }
            items.push(pb::ReadBy {
                seq,
                read_count,
                member_count,
            });
        }
        Ok(Outcome::reply(Body::ReadByResult(pb::ReadByResult {
            conversation_id: view.conv,
            items,
        })))
    }

    // ---- conversation list -----------------------------------------------------

    pub(super) fn conversations(&self, me: &Caller, req: pb::ConversationListRequest) -> Handled {
        let limit = page(req.limit, self.config.conversations_page_max);
        let ucs = self.store.user_convs(&me.user_id)?;
        let convs: Vec<&str> = ucs.iter().map(|u| u.conversation_id.as_str()).collect();
        let heads = self.store.heads(&convs)?;
        if heads.len() != convs.len() {
            return Err(DomainError::Internal(
                "store returned the wrong number of heads".into(),
            ));
        }
        // (activity, uc, visible head) for every conversation with something
        // visible in it.
        let mut rows = Vec::with_capacity(ucs.len());
        for (uc, head) in ucs.iter().zip(heads) {
            let to = visible_head(uc, head.seq);
            if to < uc.visible_from_seq.max(1) {
                continue;
            }
            let activity = if to == head.seq {
                if head.last_activity_ms > 0 {
                    head.last_activity_ms
                } else {
                    head.last_time_ms
                }
            } else {
                // A former member: activity is what they could see.
                self.store
                    .entries(&uc.conversation_id, to, to, 1)?
                    .pop()
                    .map_or(0, |e| e.time_ms)
            };
            rows.push((activity, uc, to));
        }
        rows.sort_by(|x, y| {
            y.0.cmp(&x.0)
                .then_with(|| x.1.conversation_id.cmp(&y.1.conversation_id))
        });
        let offset = req.offset as usize;
        let more = rows.len() > offset.saturating_add(limit);
        let mut out = Vec::with_capacity(limit);
        for (activity, uc, to) in rows.into_iter().skip(offset).take(limit) {
            let conv = parse_conv(&uc.conversation_id)?;
            let peer = match &conv {
                ConversationId::Direct { .. } => conv.peer_of(&me.user_id).unwrap_or("").to_owned(),
                ConversationId::Group(g) => g.clone(),
            };
            let (unread, mentioned, last) = self.unread(&me.user_id, uc, to)?;
            out.push(pb::ConversationSummary {
                conversation_id: uc.conversation_id.clone(),
                peer,
                last,
                unread,
                read_seq: uc.read_seq,
                mentioned,
                last_activity_ms: activity,
            });
        }
        Ok(Outcome::reply(Body::ConversationsResult(
            pb::ConversationListResult {
                conversations: out,
                more,
            },
        )))
    }

    /// The user's unread messages over all their conversations (each
    /// counted up to `unread_count_max`, as the conversation list shows
    /// them): an app icon's badge. One heads read and one log read per
    /// conversation with something unread.
    pub(super) fn unread_total(&self, user: &str) -> Result<u64, DomainError> {
        let ucs = self.store.user_convs(user)?;
        let convs: Vec<&str> = ucs.iter().map(|u| u.conversation_id.as_str()).collect();
        let heads = self.store.heads(&convs)?;
        let mut total = 0u64;
        for (uc, head) in ucs.iter().zip(heads) {
            let to = visible_head(uc, head.seq);
            // Nothing after the read cursor: no log read.
            if to <= uc.read_seq || to < uc.visible_from_seq.max(1) {
                continue;
            }
            total = total.saturating_add(self.unread(user, uc, to)?.0);
        }
        Ok(total)
    }

    /// Messages after the read cursor that others sent (and did not
    /// recall), whether one of them mentions `me`, and the newest visible
    /// entry. Reads at most `unread_count_max` entries, the newest ones.
    fn unread(
        &self,
        me: &str,
        uc: &UserConv,
        to: u64,
    ) -> Result<(u64, bool, Option<pb::Entry>), DomainError> {
        let lo = uc
            .read_seq
            .saturating_add(1)
            .max(uc.visible_from_seq.max(1));
        let scan = u64::from(self.config.unread_count_max.max(1));
        let lo = lo.max(to.saturating_sub(scan - 1));
        let entries = if lo <= to {
            self.store
                .entries(&uc.conversation_id, lo, to, scan as usize)?
        } else {
            self.store.entries(&uc.conversation_id, to, to, 1)?
        };
        let (mut unread, mut mentioned) = (0u64, false);
        let mut entries = entries;
        if let Some(last) = entries.last_mut() {
            self.serve_edits(std::slice::from_mut(last))?;
            self.serve_reactions(std::slice::from_mut(last))?;
        }
        for e in &entries {
            if e.seq < lo || e.sender == me {
                continue;
            }
            if let Some(pb::entry::Body::Message(m)) = &e.body {
                if m.recalled {
                    continue;
                }
                unread += 1;
                mentioned |= m.mention_all || m.mentions.iter().any(|x| x == me);
            }
        }
        Ok((unread, mentioned, entries.into_iter().last()))
    }
}

/// The newest seq `uc`'s user may see, given the conversation's head.
fn visible_head(uc: &UserConv, head: u64) -> u64 {
    if uc.visible_to_seq == 0 {
        head
    } else {
        head.min(uc.visible_to_seq)
    }
}

/// Owner 3, admin 2, member 1, anything else 0.
pub(super) fn rank(role: i32) -> u8 {
    match pb::GroupRole::try_from(role) {
        Ok(pb::GroupRole::Owner) => 3,
        Ok(pb::GroupRole::Admin) => 2,
        Ok(pb::GroupRole::Member) => 1,
        _ => 0,
    }
}
