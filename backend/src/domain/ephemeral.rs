//! Typing and presence: pushed, never stored in a log, and expiring.
//!
//! Typing states live in this domain instance's memory (a typist's
//! requests reach the node they are connected to); presence lives in the
//! store, which may keep it in memory only (the embedded store does; Redis
//! shares it between nodes).

use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::messages::Active;
use super::{
    Caller, Domain, Effect, Handled, Outcome, Recipients, check_id, check_len, parse_conv,
};
use crate::error::DomainError;
use crate::store::PresenceRecord;

/// A typist's state in one conversation.
#[derive(Debug, Clone)]
pub(super) struct TypingState {
    /// When it ends unless repeated.
    expires_at_ms: u64,
    /// Who was told it started (and so must be told it stopped).
    recipients: Recipients,
}

impl Domain {
    pub(super) fn typing(&self, me: &Caller, now_ms: u64, req: pb::TypingRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        let active = self.active(&me.user_id, &conv)?;
        if let Active::Direct { peer } = &active {
            if self.blocked_either_way(&me.user_id, peer)? {
                return Err(DomainError::Blocked);
            }
        }
        let recipients: Recipients = self
            .conv_recipients(&conv, &active)?
            .iter()
            .filter(|u| **u != me.user_id)
            .cloned()
            .collect();
        let key = (me.user_id.clone(), conv.to_string());
        {
            let mut states = self.typing.lock();
            if req.typing {
                let full = states.len() >= self.config.typing_states_max as usize;
                if !full || states.contains_key(&key) {
                    let expires_at_ms = now_ms.saturating_add(self.config.typing_expiry_ms);
                    let state = TypingState {
                        expires_at_ms,
                        recipients: recipients.clone(),
                    };
                    states.insert(key.clone(), state);
                }
            } else {
                states.remove(&key);
            }
        }
        let event = pb::TypingEvent {
            conversation_id: key.1,
            user_id: me.user_id.clone(),
            typing: req.typing,
        };
        // Not answered on success (schema: typing).
        Ok(Outcome {
            reply: None,
            effects: vec![Effect::Typing { recipients, event }],
        })
    }

    /// Expires typing states not repeated within `typing_expiry_ms`: returns
    /// a `typing = false` push for each. The gateway calls it every second
    /// or so.
    pub fn poll_expired(&self, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        self.typing.lock().retain(|(user, conv), state| {
            if state.expires_at_ms > now_ms {
                return true;
            }
            out.push(Effect::Typing {
                recipients: state.recipients.clone(),
                event: pb::TypingEvent {
                    conversation_id: conv.clone(),
                    user_id: user.clone(),
                    typing: false,
                },
            });
            false
        });
        out
    }

    pub(super) fn set_presence(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::SetPresenceRequest,
    ) -> Handled {
        let record = self.presence_record(me, now_ms, req)?;
        self.store.put_presence(&record)?;
        let friends = self.store.friends(&me.user_id)?;
        Ok(presence_outcome(record, friends, now_ms))
    }

    /// Several `set_presence` requests (a login storm is one per login) with
    /// one store write and one friends read for all of them. Each index of
    /// `pending` gets its outcome in `outcomes`.
    pub(super) fn flush_presences(
        &self,
        now_ms: u64,
        pending: &mut Vec<(usize, Caller, pb::SetPresenceRequest)>,
        outcomes: &mut [Option<Outcome>],
    ) {
        let mut records = Vec::with_capacity(pending.len());
        let mut at = Vec::with_capacity(pending.len());
        for (i, me, req) in pending.drain(..) {
            match self.presence_record(&me, now_ms, req) {
                Ok(record) => {
                    records.push(record);
                    at.push(i);
                }
                Err(e) => outcomes[i] = Some(Outcome::error(&e)),
            }
        }
        if records.is_empty() {
            return;
        }
        let users: Vec<&str> = records.iter().map(|r| r.user_id.as_str()).collect();
        let friends = self
            .store
            .put_presences(&records)
            .and_then(|()| self.store.friends_of(&users));
        match friends {
            Ok(friends) => {
                for ((i, record), friends) in at.into_iter().zip(records).zip(friends) {
                    outcomes[i] = Some(presence_outcome(record, friends, now_ms));
                }
            }
            Err(e) => {
                let e = DomainError::from(e);
                for i in at {
                    outcomes[i] = Some(Outcome::error(&e));
                }
            }
        }
    }

    /// The record a valid `set_presence` stores.
    fn presence_record(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::SetPresenceRequest,
    ) -> Result<PresenceRecord, DomainError> {
        let state = match pb::PresenceState::try_from(req.state) {
            Ok(pb::PresenceState::Unspecified) | Err(_) => {
                return Err(DomainError::InvalidArgument(
                    "unknown presence state".into(),
                ));
            }
            Ok(s) => s,
        };
        check_len("text", &req.text, self.config.short_text_bytes_max)?;
        Ok(PresenceRecord {
            user_id: me.user_id.clone(),
            state: state as i32,
            text: req.text,
            updated_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.config.presence_expiry_ms),
        })
    }

    pub(super) fn presence_query(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::PresenceQuery,
    ) -> Handled {
        if req.user_ids.len() > self.config.presence_users_max as usize {
            return Err(DomainError::InvalidArgument("too many user_ids".into()));
        }
        for u in &req.user_ids {
            check_id("user_ids", u)?;
        }
        let ids: Vec<&str> = req.user_ids.iter().map(String::as_str).collect();
        let records = self.store.presences(&ids)?;
        let mut presences = Vec::with_capacity(ids.len());
        for (id, record) in ids.iter().zip(records) {
            // Someone who blocked you looks offline to you, with no last seen.
            let record = if self.store.is_blocked(id, &me.user_id)? {
                None
            } else {
                record
            };
            presences.push(presence_pb(record, id, now_ms));
        }
        Ok(Outcome::reply(Body::PresenceResult(pb::PresenceResult {
            presences,
        })))
    }
}

/// What clients see of a presence record at `now_ms`: expired or explicit
/// offline is `OFFLINE` with the time it was last set.
/// `Ok`, and the new presence pushed to the user's friends.
fn presence_outcome(
    record: PresenceRecord,
    friends: Vec<crate::store::FriendRecord>,
    now_ms: u64,
) -> Outcome {
    let recipients: Recipients = friends.into_iter().map(|f| f.friend).collect();
    let user_id = record.user_id.clone();
    let event = pb::PresenceEvent {
        presence: Some(presence_pb(Some(record), &user_id, now_ms)),
    };
    Outcome::with(
        Body::Ok(pb::Ok::default()),
        vec![Effect::Presence { recipients, event }],
    )
}

fn presence_pb(record: Option<PresenceRecord>, user_id: &str, now_ms: u64) -> pb::Presence {
    let offline = pb::PresenceState::Offline as i32;
    match record {
        Some(r) if r.expires_at_ms > now_ms && r.state != offline => pb::Presence {
            user_id: user_id.to_owned(),
            state: r.state,
            text: r.text,
            last_seen_ms: 0,
        },
        Some(r) => pb::Presence {
            user_id: user_id.to_owned(),
            state: offline,
            text: String::new(),
            last_seen_ms: r.updated_ms,
        },
        None => pb::Presence {
            user_id: user_id.to_owned(),
            state: offline,
            text: String::new(),
            last_seen_ms: 0,
        },
    }
}
