//! The shard's room subscriptions (docs/protocol.md, "Rooms"): which of
//! its connections joined which room. Room members are stored nowhere
//! else: a join subscribes one connection here, a leave or the
//! connection's end unsubscribes it, and a room message reaches this shard
//! as one `ShardMsg::RoomPush` whatever the number of members.
//!
//! Two maps, both empty for connections in no room (nothing is added to
//! `Conn`): room → slab keys, and slab key → rooms (to unsubscribe a
//! closing connection without a scan). A slab key names one live
//! connection: it leaves both maps in `finish`, before the key can be
//! reused. Bounded: rooms per connection and rooms per shard.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tern_protocol::{
    pb::{self, frame::Body},
    session::{QueueError, Rejected},
};

use super::Shard;
use crate::{metrics::CloseReason, msg::RoomChange};

/// Rooms one connection has joined (inline for two).
type JoinedRooms = smallvec::SmallVec<[Arc<str>; 2]>;

/// Why a join is refused at the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JoinRefused {
    /// The connection has joined `per_connection_max` rooms.
    ConnectionLimit,
    /// The shard holds `per_shard_max` rooms with members.
    ShardCapacity,
}

impl JoinRefused {
    /// The answer a client gets.
    pub(super) fn error(self, request_id: u64) -> pb::Frame {
        let (code, reason, retry_after_ms) = match self {
            Self::ConnectionLimit => (
                pb::ErrorCode::RoomJoinLimit,
                "this connection joined as many rooms as it may; leave one first",
                0,
            ),
            Self::ShardCapacity => (
                pb::ErrorCode::RoomCapacity,
                "this server holds as many rooms as it may",
                ROOM_CAPACITY_RETRY_AFTER_MS,
            ),
        };
        pb::Frame {
            request_id,
            body: Some(Body::Error(pb::Error {
                code: code as i32,
                reason: reason.into(),
                retry_after_ms,
            })),
        }
    }
}

/// `retry_after_ms` of a `ROOM_CAPACITY` answer.
const ROOM_CAPACITY_RETRY_AFTER_MS: u32 = 5_000;

/// One shard's subscriptions.
#[derive(Debug)]
pub(super) struct Rooms {
    /// Room → the slab keys of the connections that joined it.
    members: HashMap<Arc<str>, HashSet<u32>>,
    /// Slab key → the rooms it joined; only connections in a room.
    joined: HashMap<u32, JoinedRooms>,
    per_connection_max: usize,
    per_shard_max: usize,
}

impl Rooms {
    pub(super) fn new(per_connection_max: usize, per_shard_max: usize) -> Self {
        Self {
            members: HashMap::new(),
            joined: HashMap::new(),
            per_connection_max,
            per_shard_max,
        }
    }

    /// Whether connection `key` may join `room` now (a room it joined
    /// already: yes, it changes nothing).
    pub(super) fn check_join(&self, key: u32, room: &str) -> Result<(), JoinRefused> {
        let rooms = self.joined.get(&key);
        if rooms.is_some_and(|r| r.iter().any(|x| &**x == room)) {
            return Ok(());
        }
        if rooms.is_some_and(|r| r.len() >= self.per_connection_max) {
            return Err(JoinRefused::ConnectionLimit);
        }
        if !self.members.contains_key(room) && self.members.len() >= self.per_shard_max {
            return Err(JoinRefused::ShardCapacity);
        }
        Ok(())
    }

    /// Subscribes connection `key` to `room` (idempotent), within the bounds.
    pub(super) fn join(&mut self, key: u32, room: &str) -> Result<(), JoinRefused> {
        self.check_join(key, room)?;
        let rooms = self.joined.entry(key).or_default();
        if rooms.iter().any(|x| &**x == room) {
            return Ok(());
        }
        // The room's id is kept once per shard, shared by its members' lists.
        let (name, keys) = match self.members.get_key_value(room) {
            Some((name, _)) => (name.clone(), None),
            None => (Arc::<str>::from(room), Some(HashSet::new())),
        };
        if let Some(keys) = keys {
            self.members.insert(name.clone(), keys);
        }
        rooms.push(name.clone());
        if let Some(keys) = self.members.get_mut(&name) {
            keys.insert(key);
        }
        Ok(())
    }

    /// Unsubscribes connection `key` from `room`; false if it had not joined.
    pub(super) fn leave(&mut self, key: u32, room: &str) -> bool {
        let Some(rooms) = self.joined.get_mut(&key) else {
            return false;
        };
        let Some(i) = rooms.iter().position(|x| &**x == room) else {
            return false;
        };
        rooms.swap_remove(i);
        if rooms.is_empty() {
            self.joined.remove(&key);
        }
        self.forget(key, room);
        true
    }

    /// Unsubscribes connection `key` from every room (it is closing).
    pub(super) fn leave_all(&mut self, key: u32) {
        let Some(rooms) = self.joined.remove(&key) else {
            return; // the common case: in no room, nothing to do
        };
        for room in rooms {
            self.forget(key, &room);
        }
    }

    fn forget(&mut self, key: u32, room: &str) {
        if let Some(keys) = self.members.get_mut(room) {
            keys.remove(&key);
            if keys.is_empty() {
                self.members.remove(room);
            }
        }
    }

    /// Unsubscribes every connection of this shard from `room` (it was
    /// deleted); the number that were subscribed.
    pub(super) fn close(&mut self, room: &str) -> usize {
        let Some(keys) = self.members.remove(room) else {
            return 0;
        };
        for key in &keys {
            if let Some(rooms) = self.joined.get_mut(key) {
                rooms.retain(|x| &**x != room);
                if rooms.is_empty() {
                    self.joined.remove(key);
                }
            }
        }
        keys.len()
    }

    /// The connections that joined `room` here.
    pub(super) fn members(&self, room: &str) -> Option<&HashSet<u32>> {
        self.members.get(room)
    }

    /// Rooms with members on this shard.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

impl Shard {
    /// Pushes a room message to every connection of this shard that joined
    /// the room. Like any push: a full outbox is written first and a peer
    /// that takes nothing more is closed as a slow consumer, which never
    /// holds up the others. `closed`: the push is the room's `RoomClosed`,
    /// after which no connection here is subscribed to it.
    pub(super) fn room_push(self: &Rc<Self>, room: &str, body: &Bytes, closed: bool) {
        self.push_to_room(room, body, closed);
        if closed {
            self.rooms.borrow_mut().close(room);
        }
    }

    fn push_to_room(self: &Rc<Self>, room: &str, body: &Bytes, closed: bool) {
        let rooms = self.rooms.borrow();
        let Some(keys) = rooms.members(room) else {
            return;
        };
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let mut pushed = 0u64;
        for &key in keys {
            let Some(c) = conns.get_mut(key as usize) else {
                continue;
            };
            if c.closing.is_some() {
                continue;
            }
            self.make_room(key, c, body.len());
            match c.session.queue_encoded(&self.cfg, now, body.clone()) {
                Err(Rejected {
                    error: QueueError::SlowConsumer,
                    ..
                }) => {
                    self.flush(key, c);
                    self.close_soon(c, CloseReason::SlowConsumer);
                }
                Ok(()) => {
                    pushed += 1;
                    self.touch(key, c);
                }
                Err(_) => self.touch(key, c),
            }
        }
        if !closed {
            self.metrics
                .room_delivered
                .fetch_add(pushed, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The backend's answer to a connection's join or leave: subscribe or
    /// unsubscribe it (a join past the bounds is answered with the typed
    /// error instead, and changes nothing), then write the answer.
    pub(super) fn room_change(self: &Rc<Self>, change: &RoomChange) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns
            .get_mut(change.conn.key as usize)
            .filter(|c| c.generation == change.conn.generation)
        else {
            return; // gone: a reconnecting client joins again
        };
        let key = change.conn.key;
        let mut body = change.body.clone();
        if change.join {
            if let Err(refused) = self.rooms.borrow_mut().join(key, &change.room) {
                self.metrics
                    .room_joins_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                use prost::Message as _;
                body = Bytes::from(refused.error(change.request_id).encode_to_vec());
            }
        } else if change.leave {
            self.rooms.borrow_mut().leave(key, &change.room);
        }
        self.make_room(key, c, body.len());
        if let Err(Rejected {
            error: QueueError::SlowConsumer,
            ..
        }) = c.session.queue_encoded(&self.cfg, self.now_ms(), body)
        {
            self.flush(key, c);
            self.close_soon(c, CloseReason::SlowConsumer);
        } else {
            self.touch(key, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_are_bounded_idempotent_and_leave_all_forgets_everything() {
        // Proves the per-connection and per-shard bounds refuse a join and
        // change nothing, a repeated join is accepted without counting
        // twice, and a closing connection leaves every room (an emptied
        // room is forgotten).
        let mut r = Rooms::new(2, 3);
        r.join(1, "a").unwrap();
        r.join(1, "a").unwrap();
        r.join(1, "b").unwrap();
        assert_eq!(r.join(1, "c"), Err(JoinRefused::ConnectionLimit));
        assert_eq!(r.members("c"), None, "a refused join changes nothing");
        r.join(2, "c").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.join(3, "d"), Err(JoinRefused::ShardCapacity));
        r.join(3, "a").unwrap();
        assert_eq!(r.members("a").map(HashSet::len), Some(2));
        assert!(r.leave(1, "a"));
        assert!(!r.leave(1, "a"));
        r.leave_all(1);
        r.leave_all(3);
        assert_eq!(r.members("a"), None);
        assert_eq!(r.len(), 1);
        r.join(4, "d").unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn closing_a_room_unsubscribes_every_member_and_nothing_else() {
        // Proves a deleted room leaves both maps (its members keep their
        // other rooms; a member in no other room leaves `joined`), frees
        // its place in the per-shard bound, and closing a room nobody
        // joined here changes nothing.
        let mut r = Rooms::new(4, 2);
        r.join(1, "a").unwrap();
        r.join(1, "b").unwrap();
        r.join(2, "a").unwrap();
        assert_eq!(r.join(3, "c"), Err(JoinRefused::ShardCapacity));
        assert_eq!(r.close("a"), 2);
        assert_eq!(r.members("a"), None);
        assert_eq!(r.joined.get(&1).map(|x| x.len()), Some(1));
        assert!(!r.joined.contains_key(&2));
        assert_eq!(r.close("a"), 0);
        r.join(3, "c").unwrap();
        assert_eq!(r.len(), 2);
        assert!(!r.leave(2, "a"), "no longer joined");
    }
}
