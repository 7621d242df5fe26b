//! Call signalling (docs/protocol.md, "Calls"): invite, ring, accept,
//! reject, cancel, hang up, and SDP/ICE relayed between participants, for
//! 1:1 and small group calls. No media.
//!
//! A call is ephemeral state kept in the store ([`Store::call`]): one record
//! per call with a version and a lease, so that every gateway node on one
//! store (the Redis store: many nodes) acts on every call, whichever node
//! each participant is connected to. Every change is a compare-and-set on
//! the version, re-decided on the state it changes when it loses a race;
//! the change that ends a call removes the record (a compare-and-set too),
//! and only that one appends the call's `CallRecord` entry — so the record
//! is appended exactly once however many nodes act on the call.
//!
//! The node that took the invite *owns* the call (this domain's `calls`
//! map, bounded by `calls_max`): it expires unanswered rings after
//! `call_ring_timeout_ms` and renews the call's lease (`call_lease_ms`)
//! every third of it, in [`Domain::poll_expired`]. If that node dies, the
//! lease lapses and the call is gone: later requests about it get
//! `CALL_ENDED`, and no record is appended (docs/cluster.md, "Calls across
//! nodes").
//!
//! [`Store::call`]: crate::store::Store::call

use std::collections::HashMap;

use tern_protocol::pb::{self, frame::Body};
use tern_protocol::validate::CALL_PARTICIPANTS_MAX;

use super::messages::Active;
use super::{Caller, Domain, Effect, Handled, Outcome, Recipients, check_id, parse_conv};
use crate::error::DomainError;
use crate::store::{Append, AppendEffect};

/// How many times a call change is re-decided after losing a race to
/// another change of the same call before the request fails as internal
/// (a call has at most 8 participants, so races are short).
const CALL_CHANGE_ATTEMPTS_MAX: usize = 16;

/// A call in progress as the store keeps it (prost bytes, so every node
/// reads what any node wrote; fields are only ever added).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Call {
    #[prost(string, tag = "1")]
    conversation: String,
    #[prost(string, tag = "2")]
    caller_device: String,
    #[prost(bool, tag = "3")]
    video: bool,
    #[prost(uint64, tag = "4")]
    started_ms: u64,
    /// The first answer; 0: none yet.
    #[prost(uint64, tag = "5")]
    answered_ms: u64,
    /// When unanswered rings become missed.
    #[prost(uint64, tag = "6")]
    ring_until_ms: u64,
    /// Everyone rung, the caller first (joined from the start).
    #[prost(message, repeated, tag = "7")]
    parties: Vec<Party>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Party {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(enumeration = "PartyState", tag = "2")]
    state: i32,
    /// `JOINED`: the device that joined.
    #[prost(string, tag = "3")]
    device: String,
    /// Answered at some point (for the record).
    #[prost(bool, tag = "4")]
    answered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
enum PartyState {
    Unspecified = 0,
    Ringing = 1,
    Joined = 2,
    Left = 3,
    Rejected = 4,
    Missed = 5,
}

/// A call this node owns (took the invite of): it expires its rings and
/// renews its lease.
#[derive(Debug, Clone)]
pub(super) struct Owned {
    ring_until_ms: u64,
    /// Rings expired (or being expired by a worker now).
    rung_out: bool,
    renew_at_ms: u64,
}

/// The calls this domain instance owns, by id.
pub(super) type Calls = HashMap<String, Owned>;

impl Party {
    fn joined(&self) -> bool {
        self.state() == PartyState::Joined
    }

    /// Rung or joined: may signal and be signalled.
    fn in_call(&self) -> bool {
        matches!(self.state(), PartyState::Ringing | PartyState::Joined)
    }
}

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
        let joined = self.parties.iter().filter(|p| p.joined()).count();
        let ringing = self
            .parties
            .iter()
            .any(|p| p.state() == PartyState::Ringing);
        if self.answered_ms != 0 {
            return (joined < 2).then_some(pb::CallOutcome::Completed);
        }
        if self.parties[0].state() == PartyState::Left {
            return Some(pb::CallOutcome::Cancelled);
        }
        if ringing {
            return None;
        }
        let missed = self.parties.iter().any(|p| p.state() == PartyState::Missed);
        Some(if missed {
            pb::CallOutcome::Missed
        } else {
            pb::CallOutcome::Rejected
        })
    }
}

/// What one step of a call did.
enum Stepped {
    /// Nothing changed (answered again from the same device).
    Unchanged,
    /// The call changed; push this event.
    Event(pb::CallEventKind),
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
            state: PartyState::Joined as i32,
            device: me.device_id.clone(),
            answered: false,
        }];
        parties.extend(invitees.into_iter().map(|user| Party {
            user,
            state: PartyState::Ringing as i32,
            device: String::new(),
            answered: false,
        }));
        let call = Call {
            conversation: conv.to_string(),
            caller_device: me.device_id.clone(),
            video: req.video,
            started_ms: now_ms,
            answered_ms: 0,
            ring_until_ms: now_ms.saturating_add(self.config.call_ring_timeout_ms),
            parties,
        };
        let ringing = call.event(&id, pb::CallEventKind::Ringing, &me.user_id, &me.device_id);
        let users = call.users();
        // Owned first (the bound), then stored; a failed store write takes
        // the reservation back.
        {
            let mut calls = self.calls.lock();
            if calls.len() >= self.config.calls_max as usize {
                return Err(DomainError::LimitReached("calls in progress on this node"));
            }
            calls.insert(
                id.clone(),
                Owned {
                    ring_until_ms: call.ring_until_ms,
                    rung_out: false,
                    renew_at_ms: now_ms.saturating_add(self.call_renew_every_ms()),
                },
            );
        }
        let stored = self.store.put_call(
            &id,
            0,
            &prost::Message::encode_to_vec(&call),
            now_ms,
            self.config.call_lease_ms,
        );
        match stored {
            Ok(true) => {}
            Ok(false) => {
                self.calls.lock().remove(&id);
                return Err(DomainError::Internal(format!("call id {id} taken")));
            }
            Err(e) => {
                self.calls.lock().remove(&id);
                return Err(e.into());
            }
        }
        Ok(Outcome::with(
            Body::Ok(pb::Ok { seq: 0, id }),
            vec![push(users, Body::CallEvent(ringing))],
        ))
    }

    /// Accept, reject, cancel or hang up `id` as `me`: decided on the
    /// stored call and written back with a compare-and-set, again on a
    /// fresh read when another node (or worker) changed it meanwhile.
    fn call_step(&self, me: &Caller, now_ms: u64, id: &str, kind: pb::CallActionKind) -> Handled {
        for _ in 0..CALL_CHANGE_ATTEMPTS_MAX {
            let (version, mut call) = self.load_call(id, now_ms)?.ok_or(DomainError::CallEnded)?;
            let event = match step(&mut call, me, now_ms, kind)? {
                Stepped::Unchanged => return Ok(Outcome::ok(0)),
                Stepped::Event(event) => event,
            };
            let mut effects = vec![push(
                call.users(),
                Body::CallEvent(call.event(id, event, &me.user_id, &me.device_id)),
            )];
            let seq = match call.over() {
                Some(outcome) => {
                    if !self.store.remove_call(id, version)? {
                        continue;
                    }
                    self.calls.lock().remove(id);
                    self.end_call(id, call, outcome, now_ms, &mut effects)
                }
                None => {
                    let state = prost::Message::encode_to_vec(&call);
                    let lease = self.config.call_lease_ms;
                    if !self.store.put_call(id, version, &state, now_ms, lease)? {
                        continue;
                    }
                    0
                }
            };
            return Ok(Outcome::with(
                Body::Ok(pb::Ok {
                    seq,
                    id: String::new(),
                }),
                effects,
            ));
        }
        Err(DomainError::Internal(format!(
            "call {id} changed {CALL_CHANGE_ATTEMPTS_MAX} times during one request"
        )))
    }

    /// `call_signal`: relays SDP or ICE to another participant's devices.
    pub(super) fn call_signal(&self, me: &Caller, now_ms: u64, req: pb::CallSignal) -> Handled {
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
        // A read, no write: a signal changes nothing of the call.
        let (_, mut call) = self
            .load_call(&req.call_id, now_ms)?
            .ok_or(DomainError::CallEnded)?;
        let from_ok = call.party(&me.user_id).is_some_and(|p| p.in_call());
        let to_ok = call.party(&req.to_user_id).is_some_and(|p| p.in_call());
        if !from_ok || !to_ok {
            return Err(DomainError::NotInCall);
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

    /// For the calls this node owns: rings unanswered for
    /// `call_ring_timeout_ms` become missed, and calls that are over then
    /// end (their records appended); every third of `call_lease_ms` their
    /// leases are renewed, and calls found gone (ended on another node, or
    /// lapsed) are forgotten. Called by [`Domain::poll_expired`]; several
    /// workers may call it at once (each call is taken by one).
    pub(super) fn expire_calls(&self, now_ms: u64, out: &mut Vec<Effect>) {
        let renew_every = self.call_renew_every_ms();
        let (ring_due, renew_due) = {
            let mut calls = self.calls.lock();
            let mut ring_due = Vec::new();
            let mut renew_due = Vec::new();
            for (id, owned) in calls.iter_mut() {
                if !owned.rung_out && owned.ring_until_ms <= now_ms {
                    owned.rung_out = true;
                    ring_due.push(id.clone());
                } else if owned.renew_at_ms <= now_ms {
                    owned.renew_at_ms = now_ms.saturating_add(renew_every);
                    renew_due.push(id.clone());
                }
            }
            (ring_due, renew_due)
        };
        for id in ring_due {
            match self.expire_rings(&id, now_ms, out) {
                Ok(true) => {}
                Ok(false) => {
                    self.calls.lock().remove(&id);
                }
                // The store failed: tried again at the next poll.
                Err(_) => {
                    if let Some(owned) = self.calls.lock().get_mut(&id) {
                        owned.rung_out = false;
                    }
                }
            }
        }
        if renew_due.is_empty() {
            return;
        }
        let ids: Vec<&str> = renew_due.iter().map(String::as_str).collect();
        match self
            .store
            .renew_calls(&ids, now_ms, self.config.call_lease_ms)
        {
            Ok(alive) => {
                let mut calls = self.calls.lock();
                for (id, alive) in renew_due.iter().zip(alive) {
                    if !alive {
                        calls.remove(id);
                    }
                }
            }
            // Tried again at the next poll.
            Err(_) => {
                let mut calls = self.calls.lock();
                for id in &renew_due {
                    if let Some(owned) = calls.get_mut(id) {
                        owned.renew_at_ms = now_ms;
                    }
                }
            }
        }
    }

    /// Marks the parties of call `id` still ringing as missed (and ends the
    /// call if that leaves it over). `Ok(false)`: the call is gone.
    fn expire_rings(
        &self,
        id: &str,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) -> Result<bool, DomainError> {
        for _ in 0..CALL_CHANGE_ATTEMPTS_MAX {
            let Some((version, mut call)) = self.load_call(id, now_ms)? else {
                return Ok(false);
            };
            let users = call.users();
            let mut effects = Vec::new();
            let mut missed = Vec::new();
            for p in &mut call.parties {
                if p.state() == PartyState::Ringing {
                    p.set_state(PartyState::Missed);
                    missed.push(p.user.clone());
                }
            }
            if missed.is_empty() {
                return Ok(true);
            }
            for user in missed {
                let ev = call.event(id, pb::CallEventKind::Missed, &user, "");
                effects.push(push(users.clone(), Body::CallEvent(ev)));
            }
            match call.over() {
                Some(outcome) => {
                    if !self.store.remove_call(id, version)? {
                        continue;
                    }
                    self.end_call(id, call, outcome, now_ms, &mut effects);
                    out.append(&mut effects);
                    return Ok(false);
                }
                None => {
                    let state = prost::Message::encode_to_vec(&call);
                    let lease = self.config.call_lease_ms;
                    if !self.store.put_call(id, version, &state, now_ms, lease)? {
                        continue;
                    }
                    out.append(&mut effects);
                    return Ok(true);
                }
            }
        }
        Err(DomainError::Internal(format!("call {id} kept changing")))
    }

    /// Call `id` as stored, with its version.
    fn load_call(&self, id: &str, now_ms: u64) -> Result<Option<(u64, Call)>, DomainError> {
        let Some(slot) = self.store.call(id, now_ms)? else {
            return Ok(None);
        };
        let call: Call = prost::Message::decode(slot.state.as_slice())
            .ok()
            .filter(|c: &Call| !c.parties.is_empty())
            .ok_or_else(|| DomainError::Internal(format!("stored call {id} is corrupt")))?;
        Ok(Some((slot.version, call)))
    }

    /// How often the owner renews a call's lease: a third of it, so two
    /// renewals may fail (or a poll come late) before it lapses.
    fn call_renew_every_ms(&self) -> u64 {
        self.config.call_lease_ms / 3
    }

    /// Ends a call whose record was just removed from the store (by this
    /// request, exactly once): `ENDED` to everyone in it, and its record
    /// appended to the conversation (pushed as any entry, to the
    /// conversation's members). Returns the record's seq (0 if the store
    /// refused it; the call ends anyway).
    fn end_call(
        &self,
        id: &str,
        call: Call,
        outcome: pb::CallOutcome,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> u64 {
        let duration_ms = match outcome {
            pb::CallOutcome::Completed if call.answered_ms != 0 => {
                now_ms.saturating_sub(call.answered_ms)
            }
            _ => 0,
        };
        let mut ended = call.event(id, pb::CallEventKind::Ended, call.caller(), "");
        ended.outcome = outcome as i32;
        ended.duration_ms = duration_ms;
        let users = call.users();
        effects.push(push(users.clone(), Body::CallEvent(ended)));
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
        // Who gets the record: the conversation's members now (a 1:1 pair,
        // or the group's members; the participants if the group is gone).
        let (recipients, direct) = match parse_conv(&call.conversation) {
            Ok(tern_protocol::ids::ConversationId::Direct { a, b }) => {
                let pair = vec![a, b];
                (Recipients::from(pair.clone()), pair)
            }
            Ok(tern_protocol::ids::ConversationId::Group(g)) => {
                let members = match self.store.group(&g) {
                    Ok(Some(meta)) => self.member_ids(&meta).unwrap_or(users),
                    _ => users,
                };
                (members, Vec::new())
            }
            Err(_) => return 0,
        };
        let entry = Domain::entry(&caller, now_ms, pb::entry::Body::CallRecord(record));
        let append = Append {
            conversation: call.conversation.clone(),
            entry,
            activity: true,
            dedup: None,
            member_of: None,
            effect: AppendEffect::None,
            participants: direct,
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
                    effects.push(Effect::Deliver { entry, recipients });
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

/// One participant's action on `call` (changed in place), or the refusal.
fn step(
    call: &mut Call,
    me: &Caller,
    now_ms: u64,
    kind: pb::CallActionKind,
) -> Result<Stepped, DomainError> {
    use pb::CallActionKind as K;
    let is_caller = call.caller() == me.user_id;
    let Some(party) = call.party(&me.user_id) else {
        return Err(DomainError::NotInCall);
    };
    let event = match (kind, party.state()) {
        (K::Accept, PartyState::Ringing) => {
            party.set_state(PartyState::Joined);
            party.device = me.device_id.clone();
            party.answered = true;
            if call.answered_ms == 0 {
                call.answered_ms = now_ms.max(1);
            }
            pb::CallEventKind::Accepted
        }
        (K::Accept, PartyState::Joined) if party.device == me.device_id => {
            return Ok(Stepped::Unchanged); // answered already, from here
        }
        (K::Accept, PartyState::Joined) => {
            return Err(DomainError::AlreadyExists("answered on another device"));
        }
        (K::Reject, PartyState::Ringing) => {
            party.set_state(PartyState::Rejected);
            pb::CallEventKind::Rejected
        }
        (K::Cancel, _) if !is_caller => {
            return Err(DomainError::PermissionDenied("only the caller cancels"));
        }
        (K::Cancel | K::Hangup, PartyState::Joined) => {
            party.set_state(PartyState::Left);
            pb::CallEventKind::Left
        }
        // Hanging up while rung is declining.
        (K::Hangup, PartyState::Ringing) => {
            party.set_state(PartyState::Rejected);
            pb::CallEventKind::Rejected
        }
        _ => return Err(DomainError::NotInCall),
    };
    Ok(Stepped::Event(event))
}
