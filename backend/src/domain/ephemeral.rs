//! Typing and presence: pushed, never stored in a log, and expiring.
//!
//! Typing states live in this domain instance's memory (a typist's
//! requests reach the node they are connected to); presence lives in the
//! store, which may keep it in memory only (the embedded store does; Redis
//! shares it between nodes).

use std::collections::HashMap;

use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::messages::Active;
use super::{
    Caller, Domain, Effect, Handled, Outcome, Recipients, check_id, check_len, parse_conv,
};
use crate::error::DomainError;
use crate::store::{PresenceRecord, PresenceSetting};

/// What one `set_presence` asks for.
#[derive(Debug)]
enum PresenceAsk {
    /// The gateway: the user's first device that counts connected. On
    /// several gateway nodes, the first on its node (so possibly not the
    /// first overall: ONLINE again is harmless).
    Connected,
    /// The gateway: the user's last device that counts left. On several
    /// gateway nodes, sent only when no other live node holds one (the
    /// gateway checks its presence sets in Redis first; docs/cluster.md),
    /// or when the node holding the last one died.
    Disconnected,
    /// The user chose a state (and text), kept until changed.
    Choose {
        /// The chosen `pb::PresenceState`.
        state: i32,
        /// The chosen text.
        text: String,
    },
}

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
    /// a `typing = false` push for each; and calls' rings unanswered within
    /// `call_ring_timeout_ms` (`calls.rs`). The gateway calls it every
    /// second or so.
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
        self.expire_calls(now_ms, &mut out);
        out
    }

    pub(super) fn set_presence(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::SetPresenceRequest,
    ) -> Handled {
        let mut pending = vec![(0, me.clone(), req)];
        let mut outcomes = vec![None];
        self.flush_presences(now_ms, &mut pending, &mut outcomes);
        outcomes
            .pop()
            .flatten()
            .ok_or_else(|| DomainError::Internal("lost".into()))
    }

    /// Several `set_presence` requests (a login storm is one per login),
    /// handled in order with one read of the users' records, one of their
    /// settings, one store write of the records and one friends read for
    /// all of them. Each index of `pending` gets its outcome in `outcomes`.
    ///
    /// Two kinds of request arrive (see [`Caller::connection`]):
    /// - the gateway's (no device): ONLINE when a user's first device that
    ///   counts toward presence connects, OFFLINE when the last one leaves.
    ///   Online shows the user's setting (plain online when none);
    /// - a user's (from a device): their choice, kept as a setting until
    ///   changed, and shown at once when a device of theirs is connected
    ///   (otherwise when one connects; nothing is pushed meanwhile).
    ///
    /// Appearing offline (a setting of OFFLINE) pushes and stamps nothing
    /// when devices come and go, so friends see no activity.
    pub(super) fn flush_presences(
        &self,
        now_ms: u64,
        pending: &mut Vec<(usize, Caller, pb::SetPresenceRequest)>,
        outcomes: &mut [Option<Outcome>],
    ) {
        let mut asks = Vec::with_capacity(pending.len());
        for (i, me, req) in pending.drain(..) {
            match self.presence_ask(&me, req) {
                Ok(ask) => asks.push((i, me.user_id, ask)),
                Err(e) => outcomes[i] = Some(Outcome::error(&e)),
            }
        }
        if asks.is_empty() {
            return;
        }
        match self.apply_presences(now_ms, &asks) {
            Ok(done) => {
                for ((i, _, _), out) in asks.iter().zip(done) {
                    outcomes[*i] = Some(out);
                }
            }
            Err(e) => {
                for (i, _, _) in &asks {
                    outcomes[*i] = Some(Outcome::error(&e));
                }
            }
        }
    }

    /// Applies checked presence requests in order; one outcome each.
    fn apply_presences(
        &self,
        now_ms: u64,
        asks: &[(usize, String, PresenceAsk)],
    ) -> Result<Vec<Outcome>, DomainError> {
        let mut users: Vec<&str> = asks.iter().map(|(_, u, _)| u.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let records = self.store.presences(&users)?;
        let settings = self.store.presence_settings(&users)?;
        if records.len() != users.len() || settings.len() != users.len() {
            return Err(DomainError::Internal(
                "store answered the wrong number of presences".into(),
            ));
        }
        // The state as each request leaves it, for the next of the batch.
        let mut now: HashMap<&str, (Option<PresenceRecord>, Option<PresenceSetting>)> = users
            .iter()
            .copied()
            .zip(records.into_iter().zip(settings))
            .collect();
        let expires_at_ms = now_ms.saturating_add(self.config.presence_expiry_ms);
        let offline = pb::PresenceState::Offline as i32;
        let mut records_out = Vec::new();
        let mut settings_out: Vec<(&str, Option<PresenceSetting>)> = Vec::new();
        // Per request: the record friends are told of, if any.
        let mut shown: Vec<Option<PresenceRecord>> = Vec::with_capacity(asks.len());
        for (_, user, ask) in asks {
            let Some((record, setting)) = now.get_mut(user.as_str()) else {
                return Err(DomainError::Internal("a presence user was not read".into()));
            };
            let invisible = setting.as_ref().is_some_and(|s| s.state == offline);
            let was_seen = record.as_ref().map_or(0, |r| r.updated_ms);
            let connected = record.as_ref().is_some_and(|r| r.connected_at(now_ms));
            let new = match ask {
                PresenceAsk::Connected => {
                    let (state, text) = setting
                        .as_ref()
                        .map_or((pb::PresenceState::Online as i32, String::new()), |s| {
                            (s.state, s.text.clone())
                        });
                    Some(PresenceRecord {
                        user_id: user.clone(),
                        state,
                        text: if invisible { String::new() } else { text },
                        // Appearing offline keeps the old last seen.
                        updated_ms: if invisible { was_seen } else { now_ms },
                        expires_at_ms,
                        connected: true,
                    })
                }
                PresenceAsk::Disconnected => Some(PresenceRecord {
                    user_id: user.clone(),
                    state: offline,
                    text: String::new(),
                    updated_ms: if invisible { was_seen } else { now_ms },
                    expires_at_ms,
                    connected: false,
                }),
                PresenceAsk::Choose { state, text } => {
                    let chosen = (*state != pb::PresenceState::Online as i32 || !text.is_empty())
                        .then(|| PresenceSetting {
                            state: *state,
                            text: text.clone(),
                            updated_ms: now_ms,
                        });
                    *setting = chosen.clone();
                    settings_out.push((user.as_str(), chosen));
                    connected.then(|| PresenceRecord {
                        user_id: user.clone(),
                        state: *state,
                        text: if *state == offline {
                            String::new()
                        } else {
                            text.clone()
                        },
                        updated_ms: now_ms,
                        expires_at_ms,
                        connected: true,
                    })
                }
            };
            // Nothing to tell when appearing offline and a device comes or
            // goes: friends saw offline and still do.
            let quiet = invisible && !matches!(ask, PresenceAsk::Choose { .. });
            shown.push(new.clone().filter(|_| !quiet));
            if let Some(r) = new {
                records_out.push(r.clone());
                *record = Some(r);
            }
        }
        for (user, setting) in &settings_out {
            self.store.put_presence_setting(user, setting.as_ref())?;
        }
        self.store.put_presences(&records_out)?;
        let pushed: Vec<&str> = shown.iter().flatten().map(|r| r.user_id.as_str()).collect();
        let mut friends = self.store.friends_of(&pushed)?.into_iter();
        let mut out = Vec::with_capacity(asks.len());
        for record in shown {
            out.push(match record {
                None => Outcome::reply(Body::Ok(pb::Ok::default())),
                Some(r) => {
                    let friends = friends.next().ok_or_else(|| {
                        DomainError::Internal("store answered too few friend lists".into())
                    })?;
                    presence_outcome(r, friends, now_ms)
                }
            });
        }
        Ok(out)
    }

    /// What a valid `set_presence` asks for.
    fn presence_ask(
        &self,
        me: &Caller,
        req: pb::SetPresenceRequest,
    ) -> Result<PresenceAsk, DomainError> {
        let state = match pb::PresenceState::try_from(req.state) {
            Ok(pb::PresenceState::Unspecified) | Err(_) => {
                return Err(DomainError::InvalidArgument(
                    "unknown presence state".into(),
                ));
            }
            Ok(s) => s,
        };
        check_len("text", &req.text, self.config.short_text_bytes_max)?;
        if me.is_connection() {
            return match state {
                pb::PresenceState::Online => Ok(PresenceAsk::Connected),
                pb::PresenceState::Offline => Ok(PresenceAsk::Disconnected),
                _ => Err(DomainError::InvalidArgument(
                    "a connection is online or offline".into(),
                )),
            };
        }
        Ok(PresenceAsk::Choose {
            state: state as i32,
            text: req.text,
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
