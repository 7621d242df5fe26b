//! Reactions and pins (issue 19).
//!
//! Both are log entries, like an edit or a recall: a `ReactionChange` or a
//! `PinChange` is appended to the conversation's log, pushed to its members
//! and synced by devices that were offline, so applying the log in seq order
//! gives every device the same state. The current state is also kept beside
//! the log, one annotation record each (`crate::store::Annotation`): a
//! message's reactions, and a conversation's pins. A reaction record is
//! served with its message by sync and history (`Message.reactions`); the
//! pin record answers `pins`.
//!
//! A change reads the record, decides, and appends its entry with a
//! compare-and-set of the record ([`AppendEffect::Annotate`]); when another
//! change won the race in between, it reads and decides again.
//!
//! Adding a reaction the user already has, removing one they do not have,
//! pinning a pinned message and unpinning one that is not pinned change
//! nothing and append nothing: they are answered `ok` with seq 0.

use std::collections::HashMap;

use prost::Message as _;
use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::validate::check_reaction;

use super::messages::rank;
use super::{Caller, Domain, Effect, Handled, Outcome, Recipients, parse_conv};
use crate::error::DomainError;
use crate::store::{Annotation, Append, AppendEffect, AppendRefused, MemberOf};

/// Distinct reactions (kinds) on one message, at most; one more kind is
/// `LIMIT_REACHED`.
pub const REACTION_KINDS_MAX: usize = 20;

/// Users who reacted with one kind on one message, at most (all of them are
/// listed in `ReactionSummary.users`); one more is `LIMIT_REACHED`.
pub const REACTORS_PER_KIND_MAX: usize = 100;

/// Pinned messages of one conversation, at most; one more is
/// `LIMIT_REACHED`.
pub const PINS_MAX: usize = 50;

/// How many times a change is decided again when its record (or message)
/// changed between the read and the store's compare-and-set.
const ANNOTATE_ATTEMPTS_MAX: usize = 8;

/// The reaction record of a message, as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct ReactionsRecord {
    /// One per kind, in the order kinds were first added; never an empty
    /// kind.
    #[prost(message, repeated, tag = "1")]
    kinds: Vec<pb::ReactionSummary>,
}

/// The pin record of a conversation, as stored.
#[derive(Clone, PartialEq, prost::Message)]
struct PinsRecord {
    /// Newest first.
    #[prost(message, repeated, tag = "1")]
    pins: Vec<pb::Pin>,
}

/// What the caller may do in a conversation, for reactions and pins.
struct Access {
    /// Who gets the pushes.
    recipients: Recipients,
    /// The membership the append depends on (groups).
    member_of: Option<MemberOf>,
    /// First seq the caller may see.
    visible_from: u64,
    /// Whether the caller may pin: either peer of a 1:1 chat, a group's
    /// admins and owner, an operator.
    may_pin: bool,
}

impl Domain {
    /// Handles a `ReactRequest`.
    pub(super) fn react(&self, me: &Caller, now_ms: u64, req: pb::ReactRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.seq == 0 {
            return Err(DomainError::InvalidArgument("seq is 0".into()));
        }
        check_reaction(&req.emoji)
            .map_err(|why| DomainError::InvalidArgument(format!("emoji {why}")))?;
        let access = self.annotate_access(me, now_ms, &conv)?;
        let conv_s = conv.to_string();
        if req.seq < access.visible_from {
            return Err(DomainError::NotFound("no message at this seq"));
        }
        let key = Annotation::Reactions(req.seq);
        for _ in 0..ANNOTATE_ATTEMPTS_MAX {
            self.live_message(&conv_s, req.seq)?;
            let expect = self.annotation(&conv_s, key)?;
            let mut record = ReactionsRecord::decode(expect.as_slice())
                .map_err(|e| DomainError::Internal(format!("reaction record: {e}")))?;
            let changed = if req.remove {
                remove_reaction(&mut record, &req.emoji, &me.user_id)
            } else {
                add_reaction(&mut record, &req.emoji, &me.user_id)?
            };
            if !changed {
                return Ok(Outcome::ok(0));
            }
            let entry = Domain::entry(
                me,
                now_ms,
                pb::entry::Body::Reaction(pb::ReactionChange {
                    seq: req.seq,
                    emoji: req.emoji.clone(),
                    removed: req.remove,
                }),
            );
            let effect = AppendEffect::Annotate {
                key,
                seq: req.seq,
                live_message: true,
                expect,
                new: record.encode_to_vec(),
            };
            if let Some(out) = self.annotate(now_ms, &conv_s, entry, &access, effect)? {
                return Ok(out);
            }
        }
        Err(DomainError::Internal(
            "the reactions kept changing while they were changed".into(),
        ))
    }

    /// Handles a `PinRequest`.
    pub(super) fn pin(&self, me: &Caller, now_ms: u64, req: pb::PinRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.seq == 0 {
            return Err(DomainError::InvalidArgument("seq is 0".into()));
        }
        let access = self.annotate_access(me, now_ms, &conv)?;
        if !access.may_pin {
            return Err(DomainError::PermissionDenied(
                "only the group's admins and owner pin messages",
            ));
        }
        let conv_s = conv.to_string();
        if req.seq < access.visible_from {
            return Err(DomainError::NotFound("no message at this seq"));
        }
        for _ in 0..ANNOTATE_ATTEMPTS_MAX {
            let expect = self.annotation(&conv_s, Annotation::Pins)?;
            let mut record = PinsRecord::decode(expect.as_slice())
                .map_err(|e| DomainError::Internal(format!("pin record: {e}")))?;
            let at = record.pins.iter().position(|p| p.seq == req.seq);
            if req.unpin {
                // A recalled (or any) pinned message can be unpinned.
                let Some(i) = at else {
                    return Ok(Outcome::ok(0));
                };
                record.pins.remove(i);
            } else {
                self.live_message(&conv_s, req.seq)?;
                if at.is_some() {
                    return Ok(Outcome::ok(0));
                }
                if record.pins.len() >= PINS_MAX {
                    return Err(DomainError::LimitReached("pins of this conversation"));
                }
                record.pins.insert(
                    0,
                    pb::Pin {
                        seq: req.seq,
                        pinned_by: me.user_id.clone(),
                        pinned_at_ms: now_ms,
                    },
                );
            }
            let entry = Domain::entry(
                me,
                now_ms,
                pb::entry::Body::Pin(pb::PinChange {
                    seq: req.seq,
                    unpinned: req.unpin,
                }),
            );
            let effect = AppendEffect::Annotate {
                key: Annotation::Pins,
                seq: req.seq,
                live_message: !req.unpin,
                expect,
                new: record.encode_to_vec(),
            };
            if let Some(out) = self.annotate(now_ms, &conv_s, entry, &access, effect)? {
                return Ok(out);
            }
        }
        Err(DomainError::Internal(
            "the pins kept changing while they were changed".into(),
        ))
    }

    /// Handles a `PinListRequest`: the pins of the messages the caller may
    /// see (a group member who joined after a message, in a group that
    /// hides older history, does not see its pin; a former member sees the
    /// pins up to when they left).
    pub(super) fn pins(&self, me: &Caller, req: pb::PinListRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        let conv_s = conv.to_string();
        let (from, to) = if me.admin {
            (1, u64::MAX)
        } else {
            let view = self.view_range(&me.user_id, &conv)?;
            (view.0, view.1)
        };
        let record = PinsRecord::decode(self.annotation(&conv_s, Annotation::Pins)?.as_slice())
            .map_err(|e| DomainError::Internal(format!("pin record: {e}")))?;
        let pins = record
            .pins
            .into_iter()
            .filter(|p| p.seq >= from && p.seq <= to)
            .collect();
        Ok(Outcome::reply(Body::PinsResult(pb::PinListResult {
            conversation_id: conv_s,
            pins,
        })))
    }

    /// Fills `Message.reactions` of the messages among `entries` (as read
    /// from the store) from their reaction records; a recalled message
    /// shows none. One store read per conversation.
    pub(super) fn serve_reactions(&self, entries: &mut [pb::Entry]) -> Result<(), DomainError> {
        let mut by_conv: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(pb::entry::Body::Message(m)) = &e.body {
                if !m.recalled {
                    by_conv
                        .entry(e.conversation_id.clone())
                        .or_default()
                        .push(i);
                }
            }
        }
        for (conv, at) in by_conv {
            let keys: Vec<Annotation> = at
                .iter()
                .map(|&i| Annotation::Reactions(entries[i].seq))
                .collect();
            let records = self.store.annotations(&conv, &keys)?;
            if records.len() != keys.len() {
                return Err(DomainError::Internal(
                    "store returned the wrong number of annotations".into(),
                ));
            }
            for (i, bytes) in at.into_iter().zip(records) {
                let Some(bytes) = bytes else { continue };
                let record = ReactionsRecord::decode(bytes.as_slice())
                    .map_err(|e| DomainError::Internal(format!("reaction record: {e}")))?;
                if let Some(pb::entry::Body::Message(m)) = &mut entries[i].body {
                    m.reactions = record.kinds;
                }
            }
        }
        Ok(())
    }

    // ---- helpers ------------------------------------------------------------

    /// Whether the caller takes part in `conv` and may write to it now (as
    /// for a send: a member, not muted; in a 1:1 chat not blocked either
    /// way). An operator (the server API) needs none of that.
    fn annotate_access(
        &self,
        me: &Caller,
        now_ms: u64,
        conv: &ConversationId,
    ) -> Result<Access, DomainError> {
        if me.admin {
            let recipients = match conv {
                ConversationId::Direct { a, b } => Recipients::from(vec![a.clone(), b.clone()]),
                ConversationId::Group(gid) => {
                    let meta = self.live_group(gid)?;
                    self.member_ids(&meta)?
                }
            };
            return Ok(Access {
                recipients,
                member_of: None,
                visible_from: 1,
                may_pin: true,
            });
        }
        let active = self.active(&me.user_id, conv)?;
        let (member_of, may_pin) = match &active {
            super::messages::Active::Direct { peer } => {
                if self.blocked_either_way(&me.user_id, peer)? {
                    return Err(DomainError::Blocked);
                }
                (None, true)
            }
            super::messages::Active::Group { meta, member } => {
                let privileged = rank(member.role) >= rank(pb::GroupRole::Admin as i32);
                if member.muted_until_ms > now_ms || (meta.muted_all && !privileged) {
                    return Err(DomainError::Muted);
                }
                (
                    Some(MemberOf {
                        group_id: meta.group_id.clone(),
                        user_id: me.user_id.clone(),
                    }),
                    privileged,
                )
            }
        };
        let visible_from = self
            .store
            .user_conv(&me.user_id, &conv.to_string())?
            .map_or(1, |uc| uc.visible_from_seq.max(1));
        let recipients = self.conv_recipients(conv, &active)?;
        Ok(Access {
            recipients,
            member_of,
            visible_from,
            may_pin,
        })
    }

    /// `Ok` when the entry at `seq` of `conv` is a message that is not
    /// recalled, else `NOT_FOUND`.
    fn live_message(&self, conv: &str, seq: u64) -> Result<(), DomainError> {
        let live = self
            .store
            .entries(conv, seq, seq, 1)?
            .pop()
            .filter(|e| e.seq == seq)
            .is_some_and(|e| matches!(e.body, Some(pb::entry::Body::Message(m)) if !m.recalled));
        if live {
            Ok(())
        } else {
            Err(DomainError::NotFound("no message at this seq"))
        }
    }

    /// The bytes of an annotation record (empty: none).
    fn annotation(&self, conv: &str, key: Annotation) -> Result<Vec<u8>, DomainError> {
        Ok(self
            .store
            .annotations(conv, &[key])?
            .pop()
            .flatten()
            .unwrap_or_default())
    }

    /// Appends `entry` with `effect`; `None` when the record or message
    /// changed since it was read (decide again).
    fn annotate(
        &self,
        now_ms: u64,
        conv: &str,
        entry: pb::Entry,
        access: &Access,
        effect: AppendEffect,
    ) -> Result<Option<Outcome>, DomainError> {
        let append = Append {
            conversation: conv.to_owned(),
            entry,
            // Reactions and pins do not move the conversation up the list.
            activity: false,
            dedup: None,
            member_of: access.member_of.clone(),
            effect,
            participants: Vec::new(),
        };
        let result = self
            .store
            .append_batch(now_ms, std::slice::from_ref(&append))?
            .pop()
            .ok_or_else(|| DomainError::Internal("no result".into()))?;
        match result {
            Ok(done) => {
                let mut entry = append.entry;
                entry.seq = done.seq;
                entry.conversation_id = append.conversation;
                Ok(Some(Outcome::with(
                    Body::Ok(pb::Ok {
                        seq: done.seq,
                        id: String::new(),
                    }),
                    vec![Effect::Deliver {
                        entry,
                        recipients: access.recipients.clone(),
                    }],
                )))
            }
            Err(AppendRefused::AnnotationChanged) => Ok(None),
            Err(AppendRefused::NotMember) => Err(DomainError::NotMember),
            Err(other) => Err(DomainError::Internal(format!(
                "annotation refused: {other}"
            ))),
        }
    }
}

/// Adds `user`'s reaction `emoji`; false when they had it already.
fn add_reaction(
    record: &mut ReactionsRecord,
    emoji: &str,
    user: &str,
) -> Result<bool, DomainError> {
    match record.kinds.iter_mut().find(|k| k.emoji == emoji) {
        Some(kind) => {
            if kind.users.iter().any(|u| u == user) {
                return Ok(false);
            }
            if kind.users.len() >= REACTORS_PER_KIND_MAX {
                return Err(DomainError::LimitReached("users with this reaction"));
            }
            kind.users.push(user.to_owned());
            kind.count = count(&kind.users);
        }
        None => {
            if record.kinds.len() >= REACTION_KINDS_MAX {
                return Err(DomainError::LimitReached("reaction kinds on this message"));
            }
            record.kinds.push(pb::ReactionSummary {
                emoji: emoji.to_owned(),
                count: 1,
                users: vec![user.to_owned()],
            });
        }
    }
    Ok(true)
}

/// Removes `user`'s reaction `emoji`; false when they did not have it.
fn remove_reaction(record: &mut ReactionsRecord, emoji: &str, user: &str) -> bool {
    let Some(k) = record.kinds.iter().position(|k| k.emoji == emoji) else {
        return false;
    };
    let kind = &mut record.kinds[k];
    let Some(u) = kind.users.iter().position(|u| u == user) else {
        return false;
    };
    kind.users.remove(u);
    kind.count = count(&kind.users);
    if kind.users.is_empty() {
        record.kinds.remove(k);
    }
    true
}

/// A kind's count: at most [`REACTORS_PER_KIND_MAX`], so it fits.
fn count(users: &[String]) -> u32 {
    u32::try_from(users.len()).unwrap_or(u32::MAX)
}
