//! Operator actions (the server API, `Caller::admin`): ban, unban, kick; and
//! the gateway's login check of a banned user.
//!
//! All of them arrive as a `Kick` body, a frame only the server may send
//! (a client's is refused by validation before it reaches here):
//!
//! | caller    | `Kick.reason` | does                                      |
//! |-----------|---------------|-------------------------------------------|
//! | admin     | `BANNED`      | stores the ban, kicks every device        |
//! | admin     | `UNSPECIFIED` | lifts the ban                             |
//! | admin     | `ADMIN`       | kicks every device, or one (`message`)    |
//! | not admin | any           | login check of the caller's device        |
//!
//! Inside the server a kick's target device travels in `Kick.message`
//! (empty: every device): the shard that closes the device builds the
//! client's `Kick` frame itself, with its own message, so a client never
//! sees this field's internal use.
//!
//! A ban is durable in the store. Each domain (one per node) also keeps
//! the users it found banned in [`BannedCache`], so a banned user's
//! requests are refused without a store read per request: the login check
//! runs first on the user's worker (the shard queues it right after
//! `Welcome`, ahead of anything the device sends), and every request of a
//! cached user after it is refused. An unban on another node is seen here
//! at the user's next login check, which clears the entry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::{Caller, Domain, Effect, Handled, Outcome, check_id, check_len};
use crate::error::DomainError;
use crate::store::BanRecord;

/// Users cached as banned at most; past it the cache starts over (bans
/// are still enforced at every login, from the store).
pub const BANNED_CACHE_USERS_MAX: usize = 100_000;

/// The users this domain found banned.
#[derive(Debug, Default)]
pub(super) struct BannedCache {
    users: Mutex<HashSet<String>>,
    /// `users.len()`, read without the lock: the common case (nobody
    /// banned) costs one atomic load per request.
    len: AtomicUsize,
}

impl BannedCache {
    fn contains(&self, user: &str) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.users.lock().contains(user)
    }

    fn insert(&self, user: &str) {
        let mut users = self.users.lock();
        if users.len() >= BANNED_CACHE_USERS_MAX {
            users.clear();
        }
        users.insert(user.to_owned());
        self.len.store(users.len(), Ordering::Release);
    }

    fn remove(&self, user: &str) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut users = self.users.lock();
        users.remove(user);
        self.len.store(users.len(), Ordering::Release);
    }
}

impl Domain {
    /// Refuses a request of a user known to be banned (not the operator's
    /// own calls, not the gateway's presence updates and login checks).
    pub(super) fn check_not_banned(&self, me: &Caller, body: &Body) -> Result<(), DomainError> {
        if me.admin || me.is_connection() || matches!(body, Body::Kick(_)) {
            return Ok(());
        }
        if self.banned.contains(&me.user_id) {
            return Err(DomainError::PermissionDenied("this user is banned"));
        }
        Ok(())
    }

    /// See the module doc.
    pub(super) fn kick_op(&self, me: &Caller, now_ms: u64, req: pb::Kick) -> Handled {
        check_id("user_id", &me.user_id)?;
        if !me.admin {
            return self.login_check(me);
        }
        let reason = pb::KickReason::try_from(req.reason)
            .map_err(|_| DomainError::InvalidArgument("unknown kick reason".into()))?;
        match reason {
            pb::KickReason::Banned => {
                check_len("reason", &req.message, self.config.long_text_bytes_max)?;
                let ban = BanRecord {
                    reason: req.message,
                    since_ms: now_ms,
                };
                self.store.put_ban(&me.user_id, Some(&ban))?;
                self.banned.insert(&me.user_id);
                Ok(Outcome::with(
                    Body::Ok(pb::Ok::default()),
                    vec![kick(&me.user_id, pb::KickReason::Banned, "")],
                ))
            }
            pb::KickReason::Unspecified => {
                self.store.put_ban(&me.user_id, None)?;
                self.banned.remove(&me.user_id);
                Ok(Outcome::ok(0))
            }
            pb::KickReason::Admin => {
                if !req.message.is_empty() {
                    check_id("device_id", &req.message)?;
                }
                Ok(Outcome::with(
                    Body::Ok(pb::Ok::default()),
                    vec![kick(&me.user_id, pb::KickReason::Admin, &req.message)],
                ))
            }
            _ => Err(DomainError::InvalidArgument(
                "an operator kicks with ADMIN or BANNED".into(),
            )),
        }
    }

    /// Whether `user` is banned, from the store (the API's user view).
    pub fn ban_of(&self, user: &str) -> Result<Option<BanRecord>, DomainError> {
        check_id("user_id", user)?;
        Ok(self.store.ban(user)?)
    }

    /// The gateway asks, right after a device logged in, whether its user
    /// is banned: no answer if not; a `Kick` BANNED for the device if so
    /// (the gateway closes it after writing the kick).
    fn login_check(&self, me: &Caller) -> Handled {
        let ban = self.store.ban(&me.user_id)?;
        Ok(self.login_answer(&me.user_id, ban))
    }

    /// Several login checks (`(index, caller)` of a batch) with one store
    /// read of their bans; each index gets its outcome in `outcomes`.
    pub(super) fn flush_login_checks(
        &self,
        pending: &mut Vec<(usize, Caller)>,
        outcomes: &mut [Option<Outcome>],
    ) {
        if pending.is_empty() {
            return;
        }
        let mut users = Vec::with_capacity(pending.len());
        for (i, me) in pending.drain(..) {
            match check_id("user_id", &me.user_id) {
                Ok(()) => users.push((i, me.user_id)),
                Err(e) => outcomes[i] = Some(Outcome::error(&e)),
            }
        }
        let ids: Vec<&str> = users.iter().map(|(_, u)| u.as_str()).collect();
        match self.store.bans(&ids) {
            Ok(bans) if bans.len() == users.len() => {
                for ((i, user), ban) in users.iter().zip(bans) {
                    let answer = match (ban, self.seat_limit(user)) {
                        (None, Some(max)) => self.seat_answer(user, max),
                        (ban, _) => self.login_answer(user, ban),
                    };
                    outcomes[*i] = Some(answer);
                }
            }
            Ok(_) => {
                let e = DomainError::Internal("store answered the wrong number of bans".into());
                for (i, _) in &users {
                    outcomes[*i] = Some(Outcome::error(&e));
                }
            }
            Err(e) => {
                let e = DomainError::from(e);
                for (i, _) in &users {
                    outcomes[*i] = Some(Outcome::error(&e));
                }
            }
        }
    }

    /// The seats of `user`'s tenant, if it has a limit.
    fn seat_limit(&self, user: &str) -> Option<u64> {
        let tenant = tern_protocol::ids::tenant_of(user);
        self.config
            .tenant_users_max
            .iter()
            .find(|(t, _)| t == tenant)
            .map(|(_, max)| *max)
    }

    /// A login check's answer for `user` (not banned) of a tenant with
    /// `max` seats: through when they hold one or take a free one, else
    /// kicked `TENANT_FULL`.
    fn seat_answer(&self, user: &str, max: u64) -> Outcome {
        let tenant = tern_protocol::ids::tenant_of(user);
        match self.store.take_seat(tenant, user, max) {
            Ok(true) => self.login_answer(user, None),
            Ok(false) => Outcome::reply(Body::Kick(pb::Kick {
                reason: pb::KickReason::TenantFull as i32,
                message: format!("your organization has its {max} users already"),
                ..Default::default()
            })),
            Err(e) => Outcome::error(&DomainError::from(e)),
        }
    }

    /// A login check's answer for `user` with this ban record.
    fn login_answer(&self, user: &str, ban: Option<BanRecord>) -> Outcome {
        match ban {
            None => {
                self.banned.remove(user);
                Outcome {
                    reply: None,
                    effects: Vec::new(),
                }
            }
            Some(ban) => {
                self.banned.insert(user);
                Outcome::reply(Body::Kick(pb::Kick {
                    reason: pb::KickReason::Banned as i32,
                    message: ban.reason,
                    ..Default::default()
                }))
            }
        }
    }
}

/// A kick of `user`'s devices (`device` empty: all of them).
fn kick(user: &str, reason: pb::KickReason, device: &str) -> Effect {
    Effect::Kick {
        user_id: user.to_owned(),
        kick: pb::Kick {
            reason: reason as i32,
            message: device.to_owned(),
            ..Default::default()
        },
    }
}
