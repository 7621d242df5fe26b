//! Call signalling (docs/protocol.md, "Calls"): invite, ring, accept,
//! reject, cancel, hang up, and SDP/ICE relayed between participants, for
//! 1:1 and small group calls. No media.
//!
//! A call is ephemeral state, like typing: it lives in this domain
//! instance's memory (one gateway node), bounded by `calls_max`, and is
//! gone when it ends. What stays is its `CallRecord` entry, appended to the
//! conversation's log when it ends (who, how long, how it ended), which
//! syncs like any entry. Unanswered rings expire after
//! `call_ring_timeout_ms` in [`Domain::poll_expired`].

use std::collections::HashMap;

use tern_protocol::pb::{self, frame::Body};
use tern_protocol::validate::CALL_PARTICIPANTS_MAX;

use super::messages::Active;
use super::{Caller, Domain, Effect, Handled, Outcome, Recipients, check_id, parse_conv};
use crate::error::DomainError;
use crate::store::{Append, AppendEffect};

/// One call in progress.
#[derive(Debug, Clone)]
pub(super) struct Call {
    conversation: String,
    caller_device: String,
    video: bool,
    started_ms: u64,
    /// The first answer.
    answered_ms: Option<u64>,
    /// When unanswered rings become missed.
    ring_until_ms: u64,
    /// Everyone rung, the caller first (joined from the start).
    parties: Vec<Party>,
    /// Who gets the call's record entry (the conversation's members).
    recipients: Recipients,
    /// 1:1: both users (they get a conversation entry if they had none).
    direct: Vec<String>,
}

#[derive(Debug, Clone)]
struct Party {
    user: String,
    state: PartyState,
    /// Answered at some point (for the record).
    answered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PartyState {
    Ringing,
    Joined { device: String },
    Left,
    Rejected,
    Missed,
}

/// The calls of one domain instance.
pub(super) type Calls = HashMap<String, Call>;

impl Call {
    fn caller(&self) -> &str {
        &self.parties[0].user
    }

    fn party(&mut self, user: &str) -> Option<&mut Party> {
        self.parties.iter_mut().find(|p| p.user == user)
    }

    fn users(&self) -> Recipients {
        self.parties.iter().map(|p| p.user.clone()).collect()
    }

    fn event(&self, id: &str, kind: pb::CallEventKind, user: &str, device: &str) -> pb::CallEvent {
        pb::CallEvent {
            call_id: id.to_owned(),
            kind: kind as i32,
            conversation_id: self.conversation.clone(),
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            caller_id: self.caller().to_owned(),
            participants: self.parties.iter().map(|p| p.user.clone()).collect(),
            video: self.video,
            outcome: 0,
            duration_ms: 0,
        }
    }

    /// The outcome if the call is over now: answered and fewer than two
    /// still in it, or unanswered with nobody left ringing (or the caller
    /// gone).
    fn over(&self) -> Option<pb::CallOutcome> {
        let joined = self
            .parties
            .iter()
            .filter(|p| matches!(p.state, PartyState::Joined { .. }))
            .count();
        let ringing = self.parties.iter().any(|p| p.state == PartyState::Ringing);
        if self.answered_ms.is_some() {
            return (joined < 2).then_some(pb::CallOutcome::Completed);
        }
        if self.parties[0].state == PartyState::Left {
            return Some(pb::CallOutcome::Cancelled);
        }
        if ringing {
            return None;
        }
        let missed = self.parties.iter().any(|p| p.state == PartyState::Missed);
        Some(if missed {
            pb::CallOutcome::Missed
        } else {
            pb::CallOutcome::Rejected
        })
    }
}

fn push(recipients: Recipients, body: Body) -> Effect {
    Effect::Call { recipients, body }
}

impl Domain {
    /// `call`: one of invite, accept, reject, cancel, hang up.
    pub(super) fn call(&self, me: &Caller, now_ms: u64, req: pb::CallAction) -> Handled {
        use pb::CallActionKind as K;
        match K::try_from(req.kind) {
            Ok(K::Invite) => self.call_invite(me, now_ms, req),
            Ok(kind @ (K::Accept | K::Reject | K::Cancel | K::Hangup)) => {
                check_id("call_id", &req.call_id)?;
                self.call_step(me, now_ms, &req.call_id, kind)
            }
            Ok(K::Unspecified) | Err(_) => {
                Err(DomainError::InvalidArgument("call.kind is not set".into()))
            }
        }
    }

    fn call_invite(&self, me: &Caller, now_ms: u64, req: pb::CallAction) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        let active = self.active(&me.user_id, &conv)?;
        let members = self.conv_recipients(&conv, &active)?;
        let mut invitees: Vec<String> = match &active {
            Active::Direct { peer } => {
                if self.blocked_either_way(&me.user_id, peer)? {
                    return Err(DomainError::Blocked);
                }
                vec![peer.clone()]
            }
            Active::Group { .. } if req.invitees.is_empty() => members
                .iter()
                .filter(|u| **u != me.user_id)
                .cloned()
                .collect(),
            Active::Group { .. } => {
                for u in &req.invitees {
                    check_id("invitees", u)?;
                    if *u == me.user_id || !members.contains(u) {
                        return Err(DomainError::InvalidArgument(format!(
                            "invitee {u:?} is not another member of the group"
                        )));
                    }
                }
                req.invitees.clone()
            }
        };
        invitees.sort_unstable();
        invitees.dedup();
        if invitees.is_empty() {
            return Err(DomainError::InvalidArgument(
                "nobody else to call in this group".into(),
            ));
        }
        if invitees.len() + 1 > CALL_PARTICIPANTS_MAX {
            return Err(DomainError::LimitReached(
                "a call has at most 8 participants: name the invitees",
            ));
        }
        let id = self.new_call_id(now_ms);
        let mut parties = vec![Party {
            user: me.user_id.clone(),
            state: PartyState::Joined {
                device: me.device_id.clone(),
            },
            answered: false,
        }];
        parties.extend(invitees.into_iter().map(|user| Party {
            user,
            state: PartyState::Ringing,
            answered: false,
        }));
        let direct = match &conv {
            tern_protocol::ids::ConversationId::Direct { a, b } => vec![a.clone(), b.clone()],
            tern_protocol::ids::ConversationId::Group(_) => Vec::new(),
        };
        let call = Call {
            conversation: conv.to_string(),
            caller_device: me.device_id.clone(),
            video: req.video,
            started_ms: now_ms,
            answered_ms: None,
            ring_until_ms: now_ms.saturating_add(self.config.call_ring_timeout_ms),
            parties,
            recipients: members,
            direct,
        };
        let ringing = call.event(&id, pb::CallEventKind::Ringing, &me.user_id, &me.device_id);
        let users = call.users();
        {
            let mut calls = self.calls.lock();
            if calls.len() >= self.config.calls_max as usize {
                return Err(DomainError::LimitReached("calls in progress on this node"));
            }
            calls.insert(id.clone(), call);
        }
        Ok(Outcome::with(
            Body::Ok(pb::Ok { seq: 0, id }),
            vec![push(users, Body::CallEvent(ringing))],
        ))
    }

    /// Accept, reject, cancel or hang up `id` as `me`.
    fn call_step(&self, me: &Caller, now_ms: u64, id: &str, kind: pb::CallActionKind) -> Handled {
        use pb::CallActionKind as K;
        let mut effects = Vec::new();
        let ended = {
            let mut calls = self.calls.lock();
            let call = calls.get_mut(id).ok_or(DomainError::CallEnded)?;
            let is_caller = call.caller() == me.user_id;
            let Some(party) = call.party(&me.user_id) else {
                return Err(DomainError::NotInCall);
            };
            let event = match (kind, &party.state) {
                (K::Accept, PartyState::Ringing) => {
                    party.state = PartyState::Joined {
                        device: me.device_id.clone(),
                    };
                    party.answered = true;
                    call.answered_ms.get_or_insert(now_ms);
                    pb::CallEventKind::Accepted
                }
                (K::Accept, PartyState::Joined { device }) if *device == me.device_id => {
                    return Ok(Outcome::ok(0)); // answered already, from here
                }
                (K::Accept, PartyState::Joined { .. }) => {
                    return Err(DomainError::AlreadyExists("answered on another device"));
                }
                (K::Reject, PartyState::Ringing) => {
                    party.state = PartyState::Rejected;
                    pb::CallEventKind::Rejected
                }
                (K::Cancel, _) if !is_caller => {
                    return Err(DomainError::PermissionDenied("only the caller cancels"));
                }
                (K::Cancel | K::Hangup, PartyState::Joined { .. }) => {
                    party.state = PartyState::Left;
                    pb::CallEventKind::Left
                }
                // Hanging up while rung is declining.
                (K::Hangup, PartyState::Ringing) => {
                    party.state = PartyState::Rejected;
                    pb::CallEventKind::Rejected
                }
                _ => return Err(DomainError::NotInCall),
            };
            let users = call.users();
            effects.push(push(
                users,
                Body::CallEvent(call.event(id, event, &me.user_id, &me.device_id)),
            ));
            match call.over() {
                Some(outcome) => calls.remove(id).map(|c| (c, outcome)),
                None => None,
            }
        };
        let seq = match ended {
            Some((call, outcome)) => self.end_call(id, call, outcome, now_ms, &mut effects),
            None => 0,
        };
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq,
                id: String::new(),
            }),
            effects,
        ))
    }

    /// `call_signal`: relays SDP or ICE to another participant's devices.
    pub(super) fn call_signal(&self, me: &Caller, req: pb::CallSignal) -> Handled {
        check_id("call_id", &req.call_id)?;
        check_id("to_user_id", &req.to_user_id)?;
        if req.payload.len() > tern_protocol::validate::CALL_SIGNAL_BYTES_MAX {
            return Err(DomainError::InvalidArgument(
                "call_signal.payload is too long".into(),
            ));
        }
        if req.to_user_id == me.user_id {
            return Err(DomainError::InvalidArgument(
                "call_signal.to_user_id is yourself".into(),
            ));
        }
        let in_call = |s: &PartyState| matches!(s, PartyState::Ringing | PartyState::Joined { .. });
        {
            let mut calls = self.calls.lock();
            let call = calls.get_mut(&req.call_id).ok_or(DomainError::CallEnded)?;
            let from_ok = call.party(&me.user_id).is_some_and(|p| in_call(&p.state));
            let to_ok = call
                .party(&req.to_user_id)
                .is_some_and(|p| in_call(&p.state));
            if !from_ok || !to_ok {
                return Err(DomainError::NotInCall);
            }
        }
        let event = pb::CallSignalEvent {
            call_id: req.call_id,
            from_user_id: me.user_id.clone(),
            from_device_id: me.device_id.clone(),
            to_device_id: req.to_device_id,
            kind: req.kind,
            payload: req.payload,
        };
        Ok(Outcome::with(
            Body::Ok(pb::Ok::default()),
            vec![push(
                Recipients::from(vec![req.to_user_id]),
                Body::CallSignalEvent(event),
            )],
        ))
    }

    /// Rings unanswered for `call_ring_timeout_ms` become missed; calls
    /// that are over then end (their records appended). Called by
    /// [`Domain::poll_expired`].
    pub(super) fn expire_calls(&self, now_ms: u64, out: &mut Vec<Effect>) {
        let mut ended = Vec::new();
        {
            let mut calls = self.calls.lock();
            calls.retain(|id, call| {
                if call.ring_until_ms > now_ms {
                    return true;
                }
                let users = call.users();
                let mut missed = Vec::new();
                for p in &mut call.parties {
                    if p.state == PartyState::Ringing {
                        p.state = PartyState::Missed;
                        missed.push(p.user.clone());
                    }
                }
                for user in missed {
                    let ev = call.event(id, pb::CallEventKind::Missed, &user, "");
                    out.push(push(users.clone(), Body::CallEvent(ev)));
                }
                match call.over() {
                    Some(outcome) => {
                        ended.push((id.clone(), call.clone(), outcome));
                        false
                    }
                    None => true,
                }
            });
        }
        for (id, call, outcome) in ended {
            self.end_call(&id, call, outcome, now_ms, out);
        }
    }

    /// Ends a call taken out of the map: `ENDED` to everyone in it, and its
    /// record appended to the conversation (pushed as any entry). Returns
    /// the record's seq (0 if the store refused it; the call ends anyway).
    fn end_call(
        &self,
        id: &str,
        call: Call,
        outcome: pb::CallOutcome,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> u64 {
        let duration_ms = match (outcome, call.answered_ms) {
            (pb::CallOutcome::Completed, Some(at)) => now_ms.saturating_sub(at),
            _ => 0,
        };
        let mut ended = call.event(id, pb::CallEventKind::Ended, call.caller(), "");
        ended.outcome = outcome as i32;
        ended.duration_ms = duration_ms;
        effects.push(push(call.users(), Body::CallEvent(ended)));
        let record = pb::CallRecord {
            call_id: id.to_owned(),
            outcome: outcome as i32,
            participants: call.parties.iter().map(|p| p.user.clone()).collect(),
            answered: call
                .parties
                .iter()
                .skip(1)
                .filter(|p| p.answered)
                .map(|p| p.user.clone())
                .collect(),
            video: call.video,
            started_ms: call.started_ms,
            duration_ms,
        };
        let caller = Caller {
            user_id: call.caller().to_owned(),
            device_id: call.caller_device.clone(),
            admin: false,
        };
        let entry = Domain::entry(&caller, now_ms, pb::entry::Body::CallRecord(record));
        let append = Append {
            conversation: call.conversation.clone(),
            entry,
            activity: true,
            dedup: None,
            member_of: None,
            effect: AppendEffect::None,
            participants: call.direct.clone(),
        };
        match self
            .store
            .append_batch(now_ms, std::slice::from_ref(&append))
        {
            Ok(mut results) => match results.pop() {
                Some(Ok(done)) => {
                    let mut entry = append.entry;
                    entry.seq = done.seq;
                    entry.conversation_id = append.conversation;
                    effects.push(Effect::Deliver {
                        entry,
                        recipients: call.recipients,
                    });
                    done.seq
                }
                _ => 0,
            },
            // The store failed: the call ends without its record (the
            // participants got ENDED; nothing else depends on it).
            Err(_) => 0,
        }
    }

    /// A fresh call id: `c` + time + seed + counter, base 36.
    fn new_call_id(&self, now_ms: u64) -> String {
        let g = self.new_group_id(now_ms);
        format!("c{}", &g[1..])
    }
}
