//! Friends, profiles and blocks.
//!
//! Users are not registered here: any valid id is a user (the existing
//! service that issues tokens owns accounts). A user without a stored
//! profile has an empty one.

use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::pb::server_event::Kind as Sev;

use super::{Caller, Domain, Effect, Handled, Outcome, check_id, check_len};
use crate::error::DomainError;
use crate::store::{FriendRecord, FriendRequestRecord, SocialOp};

impl Domain {
    /// The other user of a friend operation: a valid id that is not `me`.
    fn other_user(me: &Caller, user_id: &str) -> Result<(), DomainError> {
        check_id("user_id", user_id)?;
        if user_id == me.user_id {
            return Err(DomainError::InvalidArgument("that is yourself".into()));
        }
        Ok(())
    }

    pub(super) fn friend_request(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::FriendRequestSend,
    ) -> Handled {
        Self::other_user(me, &req.user_id)?;
        check_len("message", &req.message, self.config.short_text_bytes_max)?;
        let (me_id, them) = (me.user_id.as_str(), req.user_id.as_str());
        if self.store.is_blocked(them, me_id)? || self.store.is_blocked(me_id, them)? {
            return Err(DomainError::Blocked);
        }
        if self.store.friend(me_id, them)?.is_some() {
            return Err(DomainError::AlreadyExists("already friends"));
        }
        if self.store.friend_request(me_id, them)?.is_some() {
            return Err(DomainError::AlreadyExists("request pending"));
        }
        if self.store.friend_request(them, me_id)?.is_some() {
            // They asked first: asking back is saying yes.
            return self.friend_accept(
                me,
                now_ms,
                pb::FriendAccept {
                    user_id: req.user_id,
                },
            );
        }
        let record = FriendRequestRecord {
            from: me_id.to_owned(),
            to: them.to_owned(),
            message: req.message,
            time_ms: now_ms,
        };
        self.store
            .apply_social(&[SocialOp::PutFriendRequest(record.clone())])?;
        let event = pb::ServerEvent {
            kind: Some(Sev::FriendRequested(pb::PendingFriendRequest {
                from_user_id: record.from,
                to_user_id: record.to,
                message: record.message,
                time_ms: record.time_ms,
            })),
        };
        Ok(Outcome::with(
            Body::Ok(pb::Ok::default()),
            vec![Effect::Event {
                user_id: req.user_id,
                event,
            }],
        ))
    }

    pub(super) fn friend_accept(&self, me: &Caller, now_ms: u64, req: pb::FriendAccept) -> Handled {
        Self::other_user(me, &req.user_id)?;
        let (me_id, them) = (me.user_id.as_str(), req.user_id.as_str());
        if self.store.friend_request(them, me_id)?.is_none() {
            return Err(DomainError::NotFound("no request from this user"));
        }
        let record = |user: &str, friend: &str| FriendRecord {
            user: user.to_owned(),
            friend: friend.to_owned(),
            remark: String::new(),
            since_ms: now_ms,
        };
        self.store.apply_social(&[
            SocialOp::DeleteFriendRequest {
                from: them.to_owned(),
                to: me_id.to_owned(),
            },
            SocialOp::DeleteFriendRequest {
                from: me_id.to_owned(),
                to: them.to_owned(),
            },
            SocialOp::PutFriend(record(me_id, them)),
            SocialOp::PutFriend(record(them, me_id)),
        ])?;
        let added = |user: &str, friend: &str| Effect::Event {
            user_id: user.to_owned(),
            event: pb::ServerEvent {
                kind: Some(Sev::FriendAdded(friend.to_owned())),
            },
        };
        Ok(Outcome::with(
            Body::Ok(pb::Ok::default()),
            vec![added(me_id, them), added(them, me_id)],
        ))
    }

    pub(super) fn friend_reject(&self, me: &Caller, req: pb::FriendReject) -> Handled {
        Self::other_user(me, &req.user_id)?;
        if self
            .store
            .friend_request(&req.user_id, &me.user_id)?
            .is_none()
        {
            return Err(DomainError::NotFound("no request from this user"));
        }
        // The requester is not told: a refusal is silent, as in most apps.
        self.store.apply_social(&[SocialOp::DeleteFriendRequest {
            from: req.user_id,
            to: me.user_id.clone(),
        }])?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn friend_delete(&self, me: &Caller, req: pb::FriendDelete) -> Handled {
        Self::other_user(me, &req.user_id)?;
        let (me_id, them) = (me.user_id.as_str(), req.user_id.as_str());
        if self.store.friend(me_id, them)?.is_none() {
            return Err(DomainError::NotFound("not a friend"));
        }
        self.store.apply_social(&[
            SocialOp::DeleteFriend {
                user: me_id.to_owned(),
                friend: them.to_owned(),
            },
            SocialOp::DeleteFriend {
                user: them.to_owned(),
                friend: me_id.to_owned(),
            },
        ])?;
        let removed = |user: &str, friend: &str| Effect::Event {
            user_id: user.to_owned(),
            event: pb::ServerEvent {
                kind: Some(Sev::FriendRemoved(friend.to_owned())),
            },
        };
        Ok(Outcome::with(
            Body::Ok(pb::Ok::default()),
            vec![removed(me_id, them), removed(them, me_id)],
        ))
    }

    pub(super) fn friend_list(&self, me: &Caller) -> Handled {
        let mut friends = Vec::new();
        for f in self.store.friends(&me.user_id)? {
            let profile = self.profile_or_empty(&f.friend)?;
            friends.push(pb::Friend {
                profile: Some(profile),
                remark: f.remark,
                since_ms: f.since_ms,
            });
        }
        let blocked = self.store.blocked(&me.user_id)?;
        Ok(Outcome::reply(Body::FriendListResult(
            pb::FriendListResult { friends, blocked },
        )))
    }

    pub(super) fn friend_requests(&self, me: &Caller) -> Handled {
        let (incoming, outgoing) = self.store.friend_requests(&me.user_id)?;
        let pending = |r: FriendRequestRecord| pb::PendingFriendRequest {
            from_user_id: r.from,
            to_user_id: r.to,
            message: r.message,
            time_ms: r.time_ms,
        };
        Ok(Outcome::reply(Body::FriendRequestListResult(
            pb::FriendRequestListResult {
                incoming: incoming.into_iter().map(pending).collect(),
                outgoing: outgoing.into_iter().map(pending).collect(),
            },
        )))
    }

    pub(super) fn profile(&self, me: &Caller, req: pb::ProfileRequest) -> Handled {
        check_id("user_id", &req.user_id)?;
        let profile = self.profile_or_empty(&req.user_id)?;
        let friend = self.store.friend(&me.user_id, &req.user_id)?;
        let blocked = self.store.is_blocked(&me.user_id, &req.user_id)?;
        Ok(Outcome::reply(Body::ProfileResult(pb::ProfileResult {
            profile: Some(profile),
            is_friend: friend.is_some(),
            remark: friend.map(|f| f.remark).unwrap_or_default(),
            blocked,
        })))
    }

    fn profile_or_empty(&self, user_id: &str) -> Result<pb::Profile, DomainError> {
        Ok(self.store.profile(user_id)?.unwrap_or_else(|| pb::Profile {
            user_id: user_id.to_owned(),
            ..Default::default()
        }))
    }

    pub(super) fn profile_update(&self, me: &Caller, req: pb::ProfileUpdate) -> Handled {
        let short = self.config.short_text_bytes_max;
        let long = self.config.long_text_bytes_max;
        check_len("nickname", req.nickname.as_deref().unwrap_or(""), short)?;
        check_len("avatar", req.avatar.as_deref().unwrap_or(""), long)?;
        check_len("bio", req.bio.as_deref().unwrap_or(""), long)?;
        let mut p = self.profile_or_empty(&me.user_id)?;
        if let Some(n) = req.nickname {
            p.nickname = n;
        }
        if let Some(a) = req.avatar {
            p.avatar = a;
        }
        if let Some(b) = req.bio {
            p.bio = b;
        }
        self.store.apply_social(&[SocialOp::PutProfile(p)])?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn friend_remark(&self, me: &Caller, req: pb::FriendRemark) -> Handled {
        Self::other_user(me, &req.user_id)?;
        check_len("remark", &req.remark, self.config.short_text_bytes_max)?;
        let mut f = self
            .store
            .friend(&me.user_id, &req.user_id)?
            .ok_or(DomainError::NotFound("not a friend"))?;
        f.remark = req.remark;
        self.store.apply_social(&[SocialOp::PutFriend(f)])?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn friend_block(&self, me: &Caller, req: pb::FriendBlock) -> Handled {
        Self::other_user(me, &req.user_id)?;
        let (user, other) = (me.user_id.clone(), req.user_id.clone());
        let ops = if req.blocked {
            // A pending request from the blocked user goes too: they cannot
            // reach you that way either.
            vec![
                SocialOp::PutBlock {
                    user: user.clone(),
                    other: other.clone(),
                },
                SocialOp::DeleteFriendRequest {
                    from: other,
                    to: user,
                },
            ]
        } else {
            vec![SocialOp::DeleteBlock { user, other }]
        };
        self.store.apply_social(&ops)?;
        Ok(Outcome::ok(0))
    }
}
