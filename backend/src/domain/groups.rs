//! Groups: creation, membership (join by policy, invite, kick, leave),
//! roles, mutes, names, announcements, nicknames, remarks, dissolution.
//!
//! Every change is decided on the group's current record and stored with a
//! compare-and-set on its version ([`crate::store::Store::apply_group_change`]), so two
//! admins acting at once cannot both act on a state that no longer holds.
//! Every visible change is an entry in the group's log, delivered to the
//! members (and to whoever it removed), so members' devices sync it.

use tern_protocol::ids::{qualify, tenant_of};
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::pb::group_event::Kind as Ev;

use super::messages::rank;
use super::{Caller, Domain, Effect, GROUP_CHANGE_ATTEMPTS_MAX, Handled, Outcome, Recipients};
use super::{check_id, check_len, page};
use crate::error::DomainError;
use crate::store::{GroupChange, GroupMeta, JoinRequestRecord, MemberRecord, ViewChange};

const OWNER: i32 = pb::GroupRole::Owner as i32;
const ADMIN: i32 = pb::GroupRole::Admin as i32;
const MEMBER: i32 = pb::GroupRole::Member as i32;

impl Domain {
    // ---- lookups --------------------------------------------------------------

    /// The group, if it exists and is not dissolved.
    pub(super) fn live_group(&self, group_id: &str) -> Result<GroupMeta, DomainError> {
        check_id("group_id", group_id)?;
        let meta = self
            .store
            .group(group_id)?
            .ok_or(DomainError::NotFound("no such group"))?;
        if meta.dissolved {
            return Err(DomainError::GroupDissolved);
        }
        Ok(meta)
    }

    /// The caller's membership, or `NotMember`.
    pub(super) fn member_of_group(
        &self,
        group_id: &str,
        user: &str,
    ) -> Result<MemberRecord, DomainError> {
        self.store
            .group_member(group_id, user)?
            .ok_or(DomainError::NotMember)
    }

    /// The caller's standing in a group: their membership, or for an
    /// operator (`Caller::admin`) a stand-in with the owner's rank that is
    /// never stored.
    fn acting_member(&self, group_id: &str, me: &Caller) -> Result<MemberRecord, DomainError> {
        if me.admin {
            return Ok(MemberRecord {
                user_id: me.user_id.clone(),
                role: OWNER,
                nickname: String::new(),
                joined_ms: 0,
                muted_until_ms: 0,
                remark: String::new(),
            });
        }
        self.member_of_group(group_id, &me.user_id)
    }

    /// The caller's membership, which must be admin or owner.
    fn admin_of(&self, group_id: &str, me: &Caller) -> Result<MemberRecord, DomainError> {
        let m = self.acting_member(group_id, me)?;
        if rank(m.role) < rank(ADMIN) {
            return Err(DomainError::PermissionDenied("admins and the owner only"));
        }
        Ok(m)
    }

    // ---- the change loop ------------------------------------------------------

    /// Reads the live group, lets `decide` build a change from it, stores it
    /// if the group did not change meanwhile (else decides again), and turns
    /// the stored entries into deliveries. `decide` returns the change and
    /// the reply's `Ok.seq` index (`None`: no entry to report).
    fn change_group(
        &self,
        me: &Caller,
        now_ms: u64,
        group_id: &str,
        mut decide: impl FnMut(&GroupMeta) -> Result<GroupChange, DomainError>,
    ) -> Result<(GroupChange, Vec<u64>, Vec<Effect>), DomainError> {
        for _ in 0..GROUP_CHANGE_ATTEMPTS_MAX {
            let meta = self.live_group(group_id)?;
            let mut change = decide(&meta)?;
            for e in &mut change.entries {
                e.sender = me.user_id.clone();
                e.sender_device = me.device_id.clone();
                e.time_ms = now_ms;
            }
            if let Ok(seqs) = self.store.apply_group_change(&change)? {
                let effects = self.change_effects(&change, &seqs)?;
                return Ok((change, seqs, effects));
            }
        }
        Err(DomainError::Internal(
            "group changed too often to decide".into(),
        ))
    }

    /// Deliveries of a stored change's entries (to the members after it and
    /// to everyone it removed) and `group_joined` / `group_left` events.
    fn change_effects(
        &self,
        change: &GroupChange,
        seqs: &[u64],
    ) -> Result<Vec<Effect>, DomainError> {
        let mut effects = Vec::new();
        if !change.entries.is_empty() {
            let mut meta = change.meta.clone();
            meta.version = change.expect_version + 1;
            let members = self.member_ids(&meta)?;
            let recipients: Recipients = if change.remove_members.is_empty() {
                members
            } else {
                members
                    .iter()
                    .chain(change.remove_members.iter())
                    .cloned()
                    .collect()
            };
            let conv = format!("g:{}", change.group_id);
            for (entry, &seq) in change.entries.iter().zip(seqs) {
                let mut entry = entry.clone();
                entry.seq = seq;
                entry.conversation_id = conv.clone();
                effects.push(Effect::Deliver {
                    entry,
                    recipients: recipients.clone(),
                });
            }
        }
        for v in &change.views {
            let (user_id, kind) = match v {
                ViewChange::Join { user_id, .. } => (
                    user_id,
                    pb::server_event::Kind::GroupJoined(change.group_id.clone()),
                ),
                ViewChange::Leave { user_id, .. } => (
                    user_id,
                    pb::server_event::Kind::GroupLeft(change.group_id.clone()),
                ),
            };
            effects.push(Effect::Event {
                user_id: user_id.clone(),
                event: pb::ServerEvent { kind: Some(kind) },
            });
        }
        Ok(effects)
    }

    // ---- create, info, lists ------------------------------------------------------

    pub(super) fn group_create(&self, me: &Caller, now_ms: u64, req: pb::GroupCreate) -> Handled {
        check_len("name", &req.name, self.config.short_text_bytes_max)?;
        let policy = pb::JoinPolicy::try_from(req.join_policy)
            .map_err(|_| DomainError::InvalidArgument("unknown join_policy".into()))?;
        if req.members.len() > self.config.invite_users_max as usize {
            return Err(DomainError::InvalidArgument(
                "too many initial members".into(),
            ));
        }
        let mut others: Vec<String> = Vec::with_capacity(req.members.len());
        for m in &req.members {
            check_id("members", m)?;
            if *m != me.user_id && !others.contains(m) {
                others.push(m.clone());
            }
        }
        if others.len() + 1 > self.config.group_members_max as usize {
            return Err(DomainError::LimitReached("group_members_max"));
        }
        let chosen = !req.group_id.is_empty();
        if chosen {
            check_id("group_id", &req.group_id)?;
        }
        for _ in 0..GROUP_CHANGE_ATTEMPTS_MAX {
            let gid = if chosen {
                req.group_id.clone()
            } else {
                // A generated id is in the creator's tenant, like a chosen
                // one must be (tenant.rs).
                qualify(tenant_of(&me.user_id), &self.new_group_id(now_ms))
            };
            let meta = GroupMeta {
                group_id: gid.clone(),
                version: 0,
                name: req.name.clone(),
                announcement: String::new(),
                owner: me.user_id.clone(),
                member_count: (others.len() + 1) as u32,
                join_policy: policy as i32,
                history_visible: req.history_visible,
                muted_all: false,
                dissolved: false,
                created_ms: now_ms,
            };
            let member = |user_id: &String, role: i32| MemberRecord {
                user_id: user_id.clone(),
                role,
                nickname: String::new(),
                joined_ms: now_ms,
                muted_until_ms: 0,
                remark: String::new(),
            };
            let mut put_members = vec![member(&me.user_id, OWNER)];
            put_members.extend(others.iter().map(|u| member(u, MEMBER)));
            let mut entries = vec![event(
                me,
                now_ms,
                Ev::Created(pb::GroupCreated {
                    name: req.name.clone(),
                    owner: me.user_id.clone(),
                }),
            )];
            if !others.is_empty() {
                entries.push(event(
                    me,
                    now_ms,
                    Ev::Joined(pb::MembersChanged {
                        user_ids: others.clone(),
                    }),
                ));
            }
            let views = put_members
                .iter()
                .map(|m| ViewChange::Join {
                    user_id: m.user_id.clone(),
                    at: 0,
                    history: true,
                })
                .collect();
            let change = GroupChange {
                group_id: gid.clone(),
                expect_version: 0,
                meta: meta.clone(),
                put_members,
                remove_members: Vec::new(),
                put_join_requests: Vec::new(),
                remove_join_requests: Vec::new(),
                entries,
                views,
            };
            match self.store.apply_group_change(&change)? {
                Ok(seqs) => {
                    let effects = self.change_effects(&change, &seqs)?;
                    let mut meta = meta;
                    meta.version = 1;
                    let me_member = self.store.group_member(&gid, &me.user_id)?;
                    let result = pb::GroupInfoResult {
                        info: Some(info(&meta)),
                        me: me_member.map(|m| member_pb(m, true)),
                    };
                    return Ok(Outcome::with(Body::GroupInfoResult(result), effects));
                }
                Err(_) if chosen => return Err(DomainError::AlreadyExists("group id taken")),
                Err(_) => continue,
            }
        }
        Err(DomainError::Internal(
            "could not pick a free group id".into(),
        ))
    }

    pub(super) fn group_info(&self, me: &Caller, req: pb::GroupInfoRequest) -> Handled {
        check_id("group_id", &req.group_id)?;
        // Info stays readable after dissolution, so former members learn it.
        let meta = self
            .store
            .group(&req.group_id)?
            .ok_or(DomainError::NotFound("no such group"))?;
        let me_member = self.store.group_member(&req.group_id, &me.user_id)?;
        Ok(Outcome::reply(Body::GroupInfoResult(pb::GroupInfoResult {
            info: Some(info(&meta)),
            me: me_member.map(|m| member_pb(m, true)),
        })))
    }

    pub(super) fn group_members(&self, me: &Caller, req: pb::GroupMembersRequest) -> Handled {
        self.live_group(&req.group_id)?;
        self.member_of_group(&req.group_id, &me.user_id)?;
        if !req.after_user_id.is_empty() {
            check_id("after_user_id", &req.after_user_id)?;
        }
        let limit = page(req.limit, self.config.members_page_max);
        let mut members = self
            .store
            .group_members(&req.group_id, &req.after_user_id, limit + 1)?;
        let more = members.len() > limit;
        members.truncate(limit);
        let members = members
            .into_iter()
            .map(|m| {
                let mine = m.user_id == me.user_id;
                member_pb(m, mine)
            })
            .collect();
        Ok(Outcome::reply(Body::GroupMembersResult(
            pb::GroupMembersResult { members, more },
        )))
    }

    pub(super) fn group_list(&self, me: &Caller) -> Handled {
        let mut groups = Vec::new();
        for uc in self.store.user_convs(&me.user_id)? {
            let Some(gid) = uc.conversation_id.strip_prefix("g:") else {
                continue;
            };
            if uc.visible_to_seq != 0 {
                continue;
            }
            if let Some(meta) = self.store.group(gid)? {
                if !meta.dissolved {
                    groups.push(info(&meta));
                }
            }
        }
        Ok(Outcome::reply(Body::GroupListResult(pb::GroupListResult {
            groups,
        })))
    }

    // ---- membership -----------------------------------------------------------------

    pub(super) fn group_join(&self, me: &Caller, now_ms: u64, req: pb::GroupJoin) -> Handled {
        check_len("message", &req.message, self.config.short_text_bytes_max)?;
        let meta = self.live_group(&req.group_id)?;
        match pb::JoinPolicy::try_from(meta.join_policy) {
            Ok(pb::JoinPolicy::Open) => {
                let users = vec![me.user_id.clone()];
                self.add_members(me, now_ms, &req.group_id, users, Ev::Joined)
            }
            Ok(pb::JoinPolicy::Approval) => self.request_join(me, now_ms, req),
            _ => Err(DomainError::PermissionDenied("this group is invite-only")),
        }
    }

    /// Files a join request and tells the admins.
    fn request_join(&self, me: &Caller, now_ms: u64, req: pb::GroupJoin) -> Handled {
        let (change, _, _) = self.change_group(me, now_ms, &req.group_id, |meta| {
            if self
                .store
                .group_member(&meta.group_id, &me.user_id)?
                .is_some()
            {
                return Err(DomainError::AlreadyExists("already a member"));
            }
            if self
                .store
                .join_request(&meta.group_id, &me.user_id)?
                .is_some()
            {
                return Err(DomainError::AlreadyExists("join request pending"));
            }
            let mut change = unchanged(meta);
            change.put_join_requests.push(JoinRequestRecord {
                user_id: me.user_id.clone(),
                message: req.message.clone(),
                time_ms: now_ms,
            });
            Ok(change)
        })?;
        let mut effects = Vec::new();
        for admin in self.admins(&change.meta)? {
            effects.push(Effect::Event {
                user_id: admin,
                event: pb::ServerEvent {
                    kind: Some(pb::server_event::Kind::GroupJoinRequested(
                        pb::GroupJoinRequested {
                            group_id: req.group_id.clone(),
                            user_id: me.user_id.clone(),
                            message: req.message.clone(),
                        },
                    )),
                },
            });
        }
        Ok(Outcome::with(Body::Ok(pb::Ok::default()), effects))
    }

    /// The owner and admins of a group.
    fn admins(&self, meta: &GroupMeta) -> Result<Vec<String>, DomainError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store.group_members(&meta.group_id, &after, 1_000)?;
            let Some(last) = page.last() else { break };
            after = last.user_id.clone();
            let full = page.len() == 1_000;
            out.extend(
                page.into_iter()
                    .filter(|m| rank(m.role) >= rank(ADMIN))
                    .map(|m| m.user_id),
            );
            if !full {
                break;
            }
        }
        Ok(out)
    }

    pub(super) fn group_join_decision(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupJoinDecision,
    ) -> Handled {
        check_id("user_id", &req.user_id)?;
        self.live_group(&req.group_id)?;
        self.admin_of(&req.group_id, me)?;
        if self
            .store
            .join_request(&req.group_id, &req.user_id)?
            .is_none()
        {
            return Err(DomainError::NotFound("no such join request"));
        }
        if req.approve {
            return self.add_members(me, now_ms, &req.group_id, vec![req.user_id], Ev::Joined);
        }
        self.change_group(me, now_ms, &req.group_id, |meta| {
            let mut change = unchanged(meta);
            change.remove_join_requests.push(req.user_id.clone());
            Ok(change)
        })?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn group_invite(&self, me: &Caller, now_ms: u64, req: pb::GroupInvite) -> Handled {
        if req.user_ids.is_empty() || req.user_ids.len() > self.config.invite_users_max as usize {
            return Err(DomainError::InvalidArgument(
                "user_ids: 1 to invite_users_max".into(),
            ));
        }
        for u in &req.user_ids {
            check_id("user_ids", u)?;
        }
        let meta = self.live_group(&req.group_id)?;
        let inviter = self.acting_member(&req.group_id, me)?;
        // Members may invite into open groups only; elsewhere inviting is how
        // admins let people in, so it is theirs.
        let open = meta.join_policy == pb::JoinPolicy::Open as i32;
        if !open && rank(inviter.role) < rank(ADMIN) {
            return Err(DomainError::PermissionDenied("only admins may invite here"));
        }
        self.add_members(me, now_ms, &req.group_id, req.user_ids, Ev::Joined)
    }

    /// Adds `users` who are not members yet (join, invite, approval) with one
    /// `joined` entry.
    fn add_members(
        &self,
        me: &Caller,
        now_ms: u64,
        group_id: &str,
        users: Vec<String>,
        kind: fn(pb::MembersChanged) -> Ev,
    ) -> Handled {
        let (_, seqs, effects) = self.change_group(me, now_ms, group_id, |meta| {
            let mut new = Vec::with_capacity(users.len());
            for u in &users {
                if !new.contains(u) && self.store.group_member(group_id, u)?.is_none() {
                    new.push(u.clone());
                }
            }
            if new.is_empty() {
                return Err(DomainError::AlreadyExists("already members"));
            }
            let count = meta.member_count as usize + new.len();
            if count > self.config.group_members_max as usize {
                return Err(DomainError::LimitReached("group_members_max"));
            }
            let mut change = unchanged(meta);
            change.meta.member_count = count as u32;
            for u in &new {
                change.put_members.push(MemberRecord {
                    user_id: u.clone(),
                    role: MEMBER,
                    nickname: String::new(),
                    joined_ms: now_ms,
                    muted_until_ms: 0,
                    remark: String::new(),
                });
                change.remove_join_requests.push(u.clone());
                change.views.push(ViewChange::Join {
                    user_id: u.clone(),
                    at: 0,
                    history: meta.history_visible,
                });
            }
            change.entries.push(event(
                me,
                now_ms,
                kind(pb::MembersChanged { user_ids: new }),
            ));
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    pub(super) fn group_kick(&self, me: &Caller, now_ms: u64, req: pb::GroupKick) -> Handled {
        check_id("user_id", &req.user_id)?;
        if req.user_id == me.user_id {
            return Err(DomainError::InvalidArgument(
                "leave instead of kicking yourself".into(),
            ));
        }
        self.remove_member(me, now_ms, &req.group_id, &req.user_id, |meta, d| {
            let mine = d.admin_of(&meta.group_id, me)?;
            let target = d
                .store
                .group_member(&meta.group_id, &req.user_id)?
                .ok_or(DomainError::NotFound("not a member"))?;
            if rank(target.role) >= rank(mine.role) {
                return Err(DomainError::PermissionDenied(
                    "cannot kick an equal or higher role",
                ));
            }
            Ok(Ev::Kicked(pb::MembersChanged {
                user_ids: vec![req.user_id.clone()],
            }))
        })
    }

    pub(super) fn group_leave(&self, me: &Caller, now_ms: u64, req: pb::GroupLeave) -> Handled {
        self.remove_member(me, now_ms, &req.group_id, &me.user_id, |meta, d| {
            let mine = d.member_of_group(&meta.group_id, &me.user_id)?;
            if mine.role == OWNER {
                return Err(DomainError::PermissionDenied(
                    "the owner hands over ownership or dissolves the group",
                ));
            }
            Ok(Ev::Left(pb::MembersChanged {
                user_ids: vec![me.user_id.clone()],
            }))
        })
    }

    /// Removes `user` (kick or leave) after `check` allowed it and named the
    /// entry to record.
    fn remove_member(
        &self,
        me: &Caller,
        now_ms: u64,
        group_id: &str,
        user: &str,
        check: impl Fn(&GroupMeta, &Domain) -> Result<Ev, DomainError>,
    ) -> Handled {
        let (_, seqs, effects) = self.change_group(me, now_ms, group_id, |meta| {
            let ev = check(meta, self)?;
            let mut change = unchanged(meta);
            change.meta.member_count = meta.member_count.saturating_sub(1);
            change.remove_members.push(user.to_owned());
            change.entries.push(event(me, now_ms, ev));
            change.views.push(ViewChange::Leave {
                user_id: user.to_owned(),
                at: 0,
            });
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    pub(super) fn group_dissolve(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupDissolve,
    ) -> Handled {
        let (_, seqs, effects) = self.change_group(me, now_ms, &req.group_id, |meta| {
            let mine = self.acting_member(&meta.group_id, me)?;
            if mine.role != OWNER {
                return Err(DomainError::PermissionDenied("only the owner may dissolve"));
            }
            let members = self.member_ids(meta)?;
            let mut change = unchanged(meta);
            change.meta.dissolved = true;
            change.meta.member_count = 0;
            change.remove_members = members.to_vec();
            change.entries.push(event(me, now_ms, Ev::Dissolved(true)));
            change.views = members
                .iter()
                .map(|u| ViewChange::Leave {
                    user_id: u.clone(),
                    at: 0,
                })
                .collect();
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    // ---- settings ----------------------------------------------------------------------

    /// An admin-only change of the group record, recorded as one entry.
    fn admin_setting(
        &self,
        me: &Caller,
        now_ms: u64,
        group_id: &str,
        apply: impl Fn(&mut GroupMeta) -> Ev,
    ) -> Handled {
        let (_, seqs, effects) = self.change_group(me, now_ms, group_id, |meta| {
            self.admin_of(&meta.group_id, me)?;
            let mut change = unchanged(meta);
            let ev = apply(&mut change.meta);
            change.entries.push(event(me, now_ms, ev));
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    pub(super) fn group_rename(&self, me: &Caller, now_ms: u64, req: pb::GroupRename) -> Handled {
        check_len("name", &req.name, self.config.short_text_bytes_max)?;
        self.admin_setting(me, now_ms, &req.group_id, |m| {
            m.name = req.name.clone();
            Ev::Renamed(req.name.clone())
        })
    }

    pub(super) fn group_announce(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupAnnounce,
    ) -> Handled {
        check_len(
            "announcement",
            &req.announcement,
            self.config.long_text_bytes_max,
        )?;
        self.admin_setting(me, now_ms, &req.group_id, |m| {
            m.announcement = req.announcement.clone();
            Ev::Announcement(req.announcement.clone())
        })
    }

    pub(super) fn group_set_policy(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupSetPolicy,
    ) -> Handled {
        let policy = pb::JoinPolicy::try_from(req.join_policy)
            .map_err(|_| DomainError::InvalidArgument("unknown join_policy".into()))?;
        self.admin_setting(me, now_ms, &req.group_id, |m| {
            m.join_policy = policy as i32;
            m.history_visible = req.history_visible;
            Ev::PolicyChanged(pb::PolicyChanged {
                join_policy: policy as i32,
                history_visible: req.history_visible,
            })
        })
    }

    pub(super) fn group_set_nickname(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupSetNickname,
    ) -> Handled {
        check_len("nickname", &req.nickname, self.config.short_text_bytes_max)?;
        let (_, seqs, effects) = self.change_group(me, now_ms, &req.group_id, |meta| {
            let mut mine = self.member_of_group(&meta.group_id, &me.user_id)?;
            mine.nickname = req.nickname.clone();
            let mut change = unchanged(meta);
            change.put_members.push(mine);
            change.entries.push(event(
                me,
                now_ms,
                Ev::NicknameChanged(pb::NicknameChanged {
                    user_id: me.user_id.clone(),
                    nickname: req.nickname.clone(),
                }),
            ));
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    /// A private remark: stored on the caller's membership, in no log.
    pub(super) fn group_set_remark(&self, me: &Caller, req: pb::GroupSetRemark) -> Handled {
        check_len("remark", &req.remark, self.config.short_text_bytes_max)?;
        // Time is irrelevant: the change has no entry.
        self.change_group(me, 0, &req.group_id, |meta| {
            let mut mine = self.member_of_group(&meta.group_id, &me.user_id)?;
            mine.remark = req.remark.clone();
            let mut change = unchanged(meta);
            change.put_members.push(mine);
            Ok(change)
        })?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn group_set_role(
        &self,
        me: &Caller,
        now_ms: u64,
        req: pb::GroupSetRole,
    ) -> Handled {
        check_id("user_id", &req.user_id)?;
        let role = match pb::GroupRole::try_from(req.role) {
            Ok(r @ (pb::GroupRole::Member | pb::GroupRole::Admin | pb::GroupRole::Owner)) => r,
            _ => {
                return Err(DomainError::InvalidArgument(
                    "role must be member, admin or owner".into(),
                ));
            }
        };
        let (_, seqs, effects) = self.change_group(me, now_ms, &req.group_id, |meta| {
            let mut mine = self.acting_member(&meta.group_id, me)?;
            if mine.role != OWNER {
                return Err(DomainError::PermissionDenied("only the owner sets roles"));
            }
            if me.admin {
                // An operator hands ownership over from the owner, not from
                // itself (it is no member).
                if req.user_id == meta.owner {
                    return Err(DomainError::InvalidArgument(
                        "make another member the owner instead".into(),
                    ));
                }
                mine = self
                    .store
                    .group_member(&meta.group_id, &meta.owner)?
                    .ok_or_else(|| DomainError::Internal("the owner is no member".into()))?;
            }
            if req.user_id == me.user_id {
                return Err(DomainError::InvalidArgument(
                    "the owner hands over ownership instead".into(),
                ));
            }
            let mut target = self
                .store
                .group_member(&meta.group_id, &req.user_id)?
                .ok_or(DomainError::NotFound("not a member"))?;
            let mut change = unchanged(meta);
            target.role = role as i32;
            change.entries.push(event(
                me,
                now_ms,
                Ev::RoleChanged(pb::RoleChanged {
                    user_id: req.user_id.clone(),
                    role: role as i32,
                }),
            ));
            if role == pb::GroupRole::Owner {
                mine.role = ADMIN;
                change.meta.owner = req.user_id.clone();
                change.entries.push(event(
                    me,
                    now_ms,
                    Ev::RoleChanged(pb::RoleChanged {
                        user_id: mine.user_id.clone(),
                        role: ADMIN,
                    }),
                ));
                change.put_members.push(mine);
            }
            change.put_members.push(target);
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }

    pub(super) fn group_mute(&self, me: &Caller, now_ms: u64, req: pb::GroupMute) -> Handled {
        if !req.user_id.is_empty() {
            check_id("user_id", &req.user_id)?;
        }
        let (_, seqs, effects) = self.change_group(me, now_ms, &req.group_id, |meta| {
            let mine = self.admin_of(&meta.group_id, me)?;
            let mut change = unchanged(meta);
            let ev = if req.user_id.is_empty() {
                change.meta.muted_all = req.duration_ms > 0;
                pb::MuteChanged {
                    user_id: String::new(),
                    muted_until_ms: 0,
                    muted_all: change.meta.muted_all,
                }
            } else {
                let mut target = self
                    .store
                    .group_member(&meta.group_id, &req.user_id)?
                    .ok_or(DomainError::NotFound("not a member"))?;
                if rank(target.role) >= rank(mine.role) {
                    return Err(DomainError::PermissionDenied(
                        "cannot mute an equal or higher role",
                    ));
                }
                target.muted_until_ms = if req.duration_ms == 0 {
                    0
                } else {
                    now_ms.saturating_add(req.duration_ms)
                };
                let ev = pb::MuteChanged {
                    user_id: req.user_id.clone(),
                    muted_until_ms: target.muted_until_ms,
                    muted_all: meta.muted_all,
                };
                change.put_members.push(target);
                ev
            };
            change.entries.push(event(me, now_ms, Ev::MuteChanged(ev)));
            Ok(change)
        })?;
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: seqs.first().copied().unwrap_or(0),
                id: String::new(),
            }),
            effects,
        ))
    }
}

/// A change that keeps the group as it is (the caller adds to it).
fn unchanged(meta: &GroupMeta) -> GroupChange {
    GroupChange {
        group_id: meta.group_id.clone(),
        expect_version: meta.version,
        meta: meta.clone(),
        put_members: Vec::new(),
        remove_members: Vec::new(),
        put_join_requests: Vec::new(),
        remove_join_requests: Vec::new(),
        entries: Vec::new(),
        views: Vec::new(),
    }
}

/// A group event entry by `me`.
fn event(me: &Caller, now_ms: u64, kind: Ev) -> pb::Entry {
    Domain::entry(
        me,
        now_ms,
        pb::entry::Body::GroupEvent(pb::GroupEvent { kind: Some(kind) }),
    )
}

/// The client's view of a group record.
pub(super) fn info(meta: &GroupMeta) -> pb::GroupInfo {
    pb::GroupInfo {
        group_id: meta.group_id.clone(),
        name: meta.name.clone(),
        announcement: meta.announcement.clone(),
        owner: meta.owner.clone(),
        member_count: meta.member_count,
        join_policy: meta.join_policy,
        history_visible: meta.history_visible,
        muted_all: meta.muted_all,
        dissolved: meta.dissolved,
        created_ms: meta.created_ms,
        conversation_id: format!("g:{}", meta.group_id),
    }
}

/// A member as clients see it; the remark is private to its owner.
fn member_pb(m: MemberRecord, with_remark: bool) -> pb::GroupMember {
    pb::GroupMember {
        user_id: m.user_id,
        role: m.role,
        nickname: m.nickname,
        joined_ms: m.joined_ms,
        muted_until_ms: m.muted_until_ms,
        remark: if with_remark { m.remark } else { String::new() },
    }
}
