//! Rooms and broadcast channels (issue 19; docs/protocol.md, "Rooms").
//!
//! A room is a record (name, kind, owner, admins) and a per-room seq with a
//! ring of the newest messages ([`crate::Config::room_recent_max`]). Its
//! members are not stored: joining subscribes a connection in the
//! gateway's memory, so the domain only checks that the room exists and
//! answers with its record. A post is stored (durably, with its seq) and
//! becomes one [`Effect::Room`], which the gateway fans out per shard and
//! per node, never per member. A deletion (by the owner, or an operator
//! of the server API) removes the record and the ring and becomes one
//! [`Effect::RoomClosed`], fanned out the same way.

use tern_protocol::ids::room_conversation;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::validate::ROOM_ADMINS_MAX;

use super::{Caller, Domain, Effect, Handled, Outcome, check_id, check_len, page};
use crate::error::DomainError;
use crate::store::RoomRecord;

impl Domain {
    pub(super) fn room_create(&self, me: &Caller, now_ms: u64, req: pb::RoomCreate) -> Handled {
        check_id("room_id", &req.room_id)?;
        check_len("name", &req.name, self.config.short_text_bytes_max)?;
        if req.admins.len() > ROOM_ADMINS_MAX {
            return Err(DomainError::InvalidArgument(format!(
                "admins: more than {ROOM_ADMINS_MAX}"
            )));
        }
        for a in &req.admins {
            check_id("admins", a)?;
        }
        let kind = match pb::RoomKind::try_from(req.kind) {
            Ok(pb::RoomKind::Unspecified) => pb::RoomKind::Chat,
            Ok(k) => k,
            Err(_) => return Err(DomainError::InvalidArgument("kind: unknown".into())),
        };
        let mut admins = req.admins;
        admins.sort_unstable();
        admins.dedup();
        admins.retain(|a| *a != me.user_id);
        let record = RoomRecord {
            room_id: req.room_id,
            name: req.name,
            kind: kind as i32,
            owner: me.user_id.clone(),
            admins,
            created_ms: now_ms,
        };
        if !self.store.room_create(&record)? {
            return Err(DomainError::AlreadyExists("room id"));
        }
        Ok(Outcome::reply(Body::RoomInfoResult(pb::RoomInfoResult {
            room: Some(room_info(record, 0)),
        })))
    }

    pub(super) fn room_info(&self, req: &pb::RoomInfoRequest) -> Handled {
        let (record, head) = self.room_of(&req.room_id)?;
        Ok(Outcome::reply(Body::RoomInfoResult(pb::RoomInfoResult {
            room: Some(room_info(record, head)),
        })))
    }

    /// The room exists: the gateway subscribes the connection when it sees
    /// this answer (`room_joined`) go by. Nothing is stored.
    pub(super) fn room_join(&self, req: &pb::RoomJoin) -> Handled {
        let (record, head) = self.room_of(&req.room_id)?;
        Ok(Outcome::reply(Body::RoomJoined(pb::RoomJoined {
            room: Some(room_info(record, head)),
        })))
    }

    /// Nothing to check or store: the gateway unsubscribes the connection
    /// when this answer goes by (in order with the connection's joins).
    pub(super) fn room_leave(&self, req: &pb::RoomLeave) -> Handled {
        check_id("room_id", &req.room_id)?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn room_post(&self, me: &Caller, now_ms: u64, req: pb::RoomPost) -> Handled {
        if !req.client_msg_id.is_empty() {
            check_id("client_msg_id", &req.client_msg_id)?;
        }
        self.check_content(req.content.as_ref())?;
        let (record, _) = self.room_of(&req.room_id)?;
        let broadcast = record.kind == pb::RoomKind::Broadcast as i32;
        if broadcast && !me.admin && !may_broadcast(&record, &me.user_id) {
            return Err(DomainError::BroadcastOnly);
        }
        let mut entry = Domain::entry(
            me,
            now_ms,
            pb::entry::Body::Message(pb::Message {
                content: req.content,
                ..Default::default()
            }),
        );
        entry.client_msg_id = req.client_msg_id;
        let keep = self.config.room_recent_max as usize;
        let Some(seq) = self.store.room_append(&req.room_id, entry.clone(), keep)? else {
            return Err(DomainError::NotFound("room"));
        };
        entry.seq = seq;
        entry.conversation_id = room_conversation(&req.room_id);
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq,
                id: String::new(),
            }),
            vec![Effect::Room {
                room_id: req.room_id,
                entry,
            }],
        ))
    }

    /// Deletes a room: its owner, or an operator (the server API). The
    /// record and the kept messages go in one durable step; the gateway
    /// then tells the joined connections and unsubscribes them.
    pub(super) fn room_delete(&self, me: &Caller, req: &pb::RoomDelete) -> Handled {
        let (record, _) = self.room_of(&req.room_id)?;
        if !me.admin && record.owner != me.user_id {
            return Err(DomainError::PermissionDenied(
                "only its owner deletes a room",
            ));
        }
        if !self.store.room_delete(&req.room_id)? {
            // Deleted meanwhile by another request.
            return Err(DomainError::NotFound("room"));
        }
        Ok(Outcome::with(
            Body::Ok(pb::Ok {
                seq: 0,
                id: String::new(),
            }),
            vec![Effect::RoomClosed {
                room_id: req.room_id.clone(),
            }],
        ))
    }

    pub(super) fn room_history(&self, req: &pb::RoomHistoryRequest) -> Handled {
        let (_, head) = self.room_of(&req.room_id)?;
        let keep = self.config.room_recent_max;
        let mut entries =
            self.store
                .room_recent(&req.room_id, req.before_seq, page(req.limit, keep))?;
        // Only the window: a store may still hold older ones after the
        // window was made smaller.
        let oldest = head.saturating_sub(u64::from(keep));
        entries.retain(|e| e.seq > oldest);
        Ok(Outcome::reply(Body::RoomHistoryResult(
            pb::RoomHistoryResult { entries },
        )))
    }

    fn room_of(&self, room_id: &str) -> Result<(RoomRecord, u64), DomainError> {
        check_id("room_id", room_id)?;
        self.store
            .room(room_id)?
            .ok_or(DomainError::NotFound("room"))
    }
}

/// Whether `user` posts in a broadcast channel: its owner or an admin.
fn may_broadcast(room: &RoomRecord, user: &str) -> bool {
    room.owner == user || room.admins.iter().any(|a| a == user)
}

fn room_info(r: RoomRecord, last_seq: u64) -> pb::RoomInfo {
    pb::RoomInfo {
        room_id: r.room_id,
        name: r.name,
        kind: r.kind,
        owner: r.owner,
        admins: r.admins,
        created_ms: r.created_ms,
        last_seq,
    }
}
