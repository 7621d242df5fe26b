//! Offline push (issue 20; docs/push.md): the push tokens a device
//! registers, the user's mutes, and what the gateway's push thread asks
//! before it notifies: is the user offline, not muted, holding tokens, and
//! what is their badge.
//!
//! Never talks to a push provider (the gateway's `push` module does) and
//! never decides when to push: it answers for one user at a time.

use tern_protocol::ids::ConversationId;
use tern_protocol::pb::{self, frame::Body};

use super::{Caller, Domain, Handled, Outcome, parse_conv};
use crate::error::DomainError;
use crate::store::{PushBind, PushSettings, PushUnbind};

/// What the push thread should do for one user and conversation, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// A device of theirs that counts toward presence is connected.
    Online,
    /// Do not disturb, or the conversation is muted.
    Muted,
    /// They hold no token.
    NoTokens,
    /// Notify these tokens, with this badge (total unread).
    Notify {
        /// Every token the user holds.
        tokens: Vec<pb::PushToken>,
        /// The user's unread messages over all conversations.
        badge: u64,
    },
}

impl Domain {
    pub(super) fn push_register(
        &self,
        me: &Caller,
        now_ms: u64,
        r: pb::PushTokenRegister,
    ) -> Handled {
        self.push_enabled()?;
        if me.device_id.is_empty() {
            return Err(DomainError::InvalidArgument(
                "a push token belongs to a device: register it from a connection".into(),
            ));
        }
        let record = pb::PushToken {
            platform: r.platform,
            token: r.token,
            topic: r.topic,
            device_id: me.device_id.clone(),
            registered_ms: now_ms,
        };
        let max = self.config.push_tokens_per_user_max as usize;
        match self.store.push_bind(&me.user_id, &record, max)? {
            PushBind::Full => Err(DomainError::PushTokensFull),
            PushBind::Bound { .. } => Ok(Outcome::ok(0)),
        }
    }

    pub(super) fn push_unregister(&self, me: &Caller, r: pb::PushTokenUnregister) -> Handled {
        self.push_enabled()?;
        match self
            .store
            .push_unbind(Some(&me.user_id), r.platform, &r.token)?
        {
            PushUnbind::Removed => Ok(Outcome::ok(0)),
            PushUnbind::NotFound => Err(DomainError::NotFound("push token")),
            PushUnbind::NotYours => Err(DomainError::PushTokenNotYours),
        }
    }

    pub(super) fn push_list(&self, me: &Caller, now_ms: u64) -> Handled {
        self.push_enabled()?;
        let tokens = self.store.push_tokens(&me.user_id)?;
        let s = self.store.push_settings(&me.user_id)?.unwrap_or_default();
        Ok(Outcome::reply(Body::PushListResult(pb::PushListResult {
            tokens,
            dnd_until_ms: if s.dnd_until_ms > now_ms {
                s.dnd_until_ms
            } else {
                0
            },
            muted: s
                .muted
                .into_iter()
                .filter(|m| m.until_ms > now_ms)
                .collect(),
        })))
    }

    /// Do not disturb (no conversation) or one conversation's mute, until
    /// `until_ms` (0 unmutes). Expired mutes are dropped on each change, so
    /// only live ones count toward the bound.
    pub(super) fn push_mute(&self, me: &Caller, now_ms: u64, r: pb::PushMute) -> Handled {
        self.push_enabled()?;
        let mut s = self.store.push_settings(&me.user_id)?.unwrap_or_default();
        s.muted.retain(|m| m.until_ms > now_ms);
        if r.conversation_id.is_empty() {
            s.dnd_until_ms = r.until_ms;
        } else {
            self.check_takes_part(&me.user_id, &r.conversation_id)?;
            let at = s
                .muted
                .binary_search_by(|m| m.conversation_id.as_str().cmp(&r.conversation_id));
            match (at, r.until_ms > now_ms) {
                (Ok(i), true) => s.muted[i].until_ms = r.until_ms,
                (Ok(i), false) => {
                    s.muted.remove(i);
                }
                (Err(i), true) => {
                    if s.muted.len() >= self.config.push_muted_conversations_max as usize {
                        return Err(DomainError::PushMutesFull);
                    }
                    s.muted.insert(
                        i,
                        pb::MutedConversation {
                            conversation_id: r.conversation_id,
                            until_ms: r.until_ms,
                        },
                    );
                }
                (Err(_), false) => {}
            }
        }
        if s.dnd_until_ms <= now_ms {
            s.dnd_until_ms = 0;
        }
        let keep = (s != PushSettings::default()).then_some(&s);
        self.store.put_push_settings(&me.user_id, keep)?;
        Ok(Outcome::ok(0))
    }

    /// What to do for `user` about a new message in `conversation` at
    /// `now_ms` (the push thread asks, after its collapse window).
    pub fn push_target(
        &self,
        now_ms: u64,
        user: &str,
        conversation: &str,
    ) -> Result<PushTarget, DomainError> {
        let online = self
            .store
            .presences(&[user])?
            .pop()
            .flatten()
            .is_some_and(|p| p.connected_at(now_ms));
        if online {
            return Ok(PushTarget::Online);
        }
        if let Some(s) = self.store.push_settings(user)? {
            let conv_muted = s
                .muted
                .iter()
                .any(|m| m.conversation_id == conversation && m.until_ms > now_ms);
            if s.dnd_until_ms > now_ms || conv_muted {
                return Ok(PushTarget::Muted);
            }
        }
        let tokens = self.store.push_tokens(user)?;
        if tokens.is_empty() {
            return Ok(PushTarget::NoTokens);
        }
        let badge = self.unread_total(user)?;
        Ok(PushTarget::Notify { tokens, badge })
    }

    /// A provider said the token is dead (unregistered, bad): whoever holds
    /// it loses it. `true` if it was held.
    pub fn push_token_dead(&self, platform: i32, token: &str) -> Result<bool, DomainError> {
        Ok(self.store.push_unbind(None, platform, token)? == PushUnbind::Removed)
    }

    fn push_enabled(&self) -> Result<(), DomainError> {
        if self.config.push_enabled {
            Ok(())
        } else {
            Err(DomainError::PushDisabled)
        }
    }

    /// `user` is one of a 1:1 pair, or a member of the group.
    fn check_takes_part(&self, user: &str, conversation: &str) -> Result<(), DomainError> {
        match parse_conv(conversation)? {
            c @ ConversationId::Direct { .. } => {
                if c.peer_of(user).is_none() {
                    return Err(DomainError::NotMember);
                }
            }
            ConversationId::Group(g) => {
                if self.store.group_member(&g, user)?.is_none() {
                    return Err(DomainError::NotMember);
                }
            }
        }
        Ok(())
    }
}
