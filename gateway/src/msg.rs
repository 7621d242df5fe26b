//! What crosses threads to a shard: the messages of its inbox (`ShardMsg`),
//! the connection handed to its owner shard after auth (`Handoff`), the
//! cross-thread name of a connection (`ConnRef`), and `owner_shard`, the
//! plain function that picks a user's shard. The shard, the backend workers
//! (`bridge`), the node tier (`cluster`) and the server API (`api`) all
//! import these from here, so none of them imports the shard's internals
//! (and `bridge` and `shard` do not import each other).

use std::{os::fd::OwnedFd, sync::Arc, time::Instant};

use bytes::Bytes;
use tern_protocol::{
    pb,
    session::{ConvKey, Session},
};

/// Identifies a connection across threads: shard, slab key, generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// The shard that holds it.
    pub shard: u16,
    /// Its slab key on that shard.
    pub key: u32,
    /// Distinguishes reuses of the same slab key.
    pub generation: u32,
}

/// What arrives in a shard's inbox.
#[derive(Debug)]
pub enum ShardMsg {
    /// A connection that authenticated on another shard, for its owner.
    Handoff(Box<Handoff>),
    /// The backend's answer to one request: an encoded `Frame` body.
    Reply {
        /// Who asked.
        conn: ConnRef,
        /// The response frame, encoded (no length prefix).
        body: Bytes,
        /// When the request left the connection, for a `send`.
        send_started: Option<Instant>,
        /// The answer is a SendAck.
        is_send_ack: bool,
    },
    /// Entries one connection lacked after its `Auth.resume_cursors`: an
    /// encoded `Deliver`, tracked in its ack window.
    Resume {
        /// The connection that authenticated.
        conn: ConnRef,
        /// `(conversation, newest seq)` per conversation in the frame.
        cursors: Arc<[(ConvKey, u64)]>,
        /// The encoded `Deliver` frame body.
        body: Bytes,
    },
    /// Push stored entries to every device of `users` held by this shard.
    Deliver {
        /// Recipients owned by this shard.
        users: Arc<[String]>,
        /// `(conversation, newest seq)` the frame carries, for the ack window.
        cursors: Arc<[(ConvKey, u64)]>,
        /// An encoded `Deliver` frame body, shared by every recipient.
        body: Bytes,
        /// The device that sent it (it has the SendAck; it gets no copy).
        origin: Option<Arc<(String, String)>>,
    },
    /// An ephemeral push (typing, presence, server events): no ack window.
    Push {
        /// Recipients owned by this shard.
        users: Arc<[String]>,
        /// An encoded `Frame` body.
        body: Bytes,
    },
    /// A message posted to a room: push it to this shard's connections
    /// that joined `room` (docs/protocol.md, "Rooms"). Not tracked in the
    /// ack window.
    RoomPush {
        /// The room id.
        room: Arc<str>,
        /// An encoded `RoomDeliver` frame, shared by every shard; or, with
        /// `closed`, a `RoomClosed` one.
        body: Bytes,
        /// The room was deleted: after the push, the shard drops every
        /// subscription to it.
        closed: bool,
    },
    /// The backend's answer to a connection's `room_join` or `room_leave`:
    /// the shard changes the connection's subscription, then writes it.
    /// Boxed: one word in every ring entry.
    Room(Box<RoomChange>),
    /// Start draining: stop accepting, kick connections at a bounded rate.
    Drain,
    /// This node's lease had lapsed: other nodes may have taken its users'
    /// presence and routes. Send every device's route (if it has none) and
    /// every user's presence again.
    Recount,
    /// The device logged in on another node, which now holds its route:
    /// kick this node's connection of it as displaced.
    Displace {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// `user`'s `device` was logged out on another node (a `device_logout`
    /// there, or here for a device on another node): remember the logout
    /// (so its old token is refused here too) and kick this node's
    /// connection of it, if any, with `LOGGED_OUT`.
    RemoteLogout {
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
    /// A login on some node put `user`'s platform class past its limit and
    /// Redis picked this node's connection of `device` as the class's
    /// oldest (docs/cluster.md, "Login policies across nodes"): kick it
    /// with `LOGIN_POLICY` if it is still the login of `login_ms` and not
    /// already on its way out.
    PolicyKick {
        /// User id.
        user: String,
        /// Device id.
        device: String,
        /// The login's Unix ms (this node's clock).
        login_ms: u64,
    },
    /// The server API asks which devices of `user` this shard holds.
    Devices {
        /// The user (owned by this shard).
        user: String,
        /// Where the devices go.
        reply: tokio::sync::oneshot::Sender<Vec<DeviceEntry>>,
    },
    /// The server API logs out one device of `user` (owned by this shard):
    /// kicked with `LOGGED_OUT` and remembered as logged out.
    Logout {
        /// The user and the device, `user\0device`.
        ident: Box<str>,
        /// Whether the device was connected here.
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// The server API asks which users this shard holds with a device that
    /// counts toward presence (not [`PRESENCE_QUIET`]): a broadcast's
    /// recipients. The node keeps no other list of them.
    OnlineUsers {
        /// Where the user ids go: one per such device, in no order (a
        /// user with two devices is named twice; the API sorts and
        /// deduplicates off the shard thread).
        reply: tokio::sync::oneshot::Sender<Vec<String>>,
    },
}

/// The answer to a `room_join` or `room_leave` on its way to the shard of
/// the connection that asked, which subscribes or unsubscribes it.
#[derive(Debug)]
pub struct RoomChange {
    /// Who asked.
    pub conn: ConnRef,
    /// The room.
    pub room: Box<str>,
    /// The backend found the room: subscribe (if the shard's bounds allow;
    /// else the answer becomes `ROOM_JOIN_LIMIT` or `ROOM_CAPACITY`).
    pub join: bool,
    /// Unsubscribe.
    pub leave: bool,
    /// The request's id, for an error answer made at the shard.
    pub request_id: u64,
    /// The encoded answer frame (`room_joined`, `ok` or an `error`).
    pub body: Bytes,
}

/// A connection moving to its owner shard after auth.
#[derive(Debug)]
pub struct Handoff {
    pub(crate) fd: OwnedFd,
    pub(crate) session: Session,
    pub(crate) partial: Vec<u8>,
    pub(crate) user: Box<str>,
    pub(crate) device: Box<str>,
    pub(crate) transport: Transport,
    /// `Auth.resume_cursors`: what to push after Welcome.
    pub(crate) resume: Vec<pb::Cursor>,
    /// Authenticated with [`PRESENCE_QUIET`]: does not count toward presence.
    pub(crate) quiet: bool,
    /// A TLS connection's record layer (keys, sequence numbers).
    pub(crate) tls: Option<Box<crate::tls::TlsConn>>,
    /// What the login said of its device.
    pub(crate) login: LoginInfo,
}

/// What a login said of its device, for the device list and the login
/// policies (docs/protocol.md, "Devices and login policies").
#[derive(Debug, Clone, Default)]
pub struct LoginInfo {
    /// `Auth.platform`.
    pub platform: pb::Platform,
    /// `Auth.client_version` (bounded by the session's label limit).
    pub client_version: Box<str>,
    /// The token's `iat`, seconds since the epoch.
    pub issued_at: Option<u64>,
}

/// Devices a `device_list` answer names at most (a user past it sees the
/// oldest logins).
pub const DEVICE_LIST_MAX: usize = 256;

/// One device of a user on this node, as the server API lists it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// Its device id.
    pub device_id: String,
    /// Its platform.
    pub platform: pb::Platform,
    /// When it logged in, Unix milliseconds.
    pub login_time_ms: u64,
    /// Its client version.
    pub client_version: String,
}

/// The `Auth.capabilities` name of a connection that does not count toward
/// its user's presence (scripts, one-shot tools): it causes no ONLINE at
/// welcome and no OFFLINE at close, and receives pushes as usual.
pub const PRESENCE_QUIET: &str = "presence-quiet";

/// How frames are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Varint length prefix per frame.
    Tcp,
    /// One binary WebSocket message per frame (after the HTTP upgrade).
    WebSocket,
    /// A WebSocket connection still in its HTTP upgrade.
    WebSocketUpgrade,
}

/// The owner shard of a user: a plain function of the user id.
pub fn owner_shard(user: &str, shards: usize) -> usize {
    // FNV-1a: stable across processes and releases (std's hasher is not
    // promised to be), cheap, and good enough to spread ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}
