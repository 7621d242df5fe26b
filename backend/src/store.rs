//! The `Store` trait: what the chat domain needs from a database, and the
//! records it keeps there.
//!
//! A store holds data and makes multi-key updates atomic. It holds no chat
//! policy: it never decides who may do what (the domain in `crate::domain`
//! does, next to the data it reads through this trait). Every method is
//! synchronous; the gateway calls the backend from dedicated worker threads.
//!
//! # What a store keeps
//!
//! - **Conversation logs.** A conversation (`d:<a>:<b>` or `g:<group>`, the
//!   wire form of [`tern_protocol::ids::ConversationId`]) is a log of
//!   [`pb::Entry`] with a strictly increasing `seq` starting at 1, with no
//!   holes: after an append of seq `n`, every seq `1..=n` exists. A seq is
//!   never reused, also after a crash: allocating it and storing its entry is
//!   one durable atomic step. The log head ([`ConvHead`]) is the newest seq.
//! - **Dedup records**: `(conversation, sender, client_msg_id) → (seq,
//!   time_ms)`, kept at least until their `expires_at_ms`.
//! - **User conversation records** ([`UserConv`]), one per (user,
//!   conversation) the user takes part in: what part of the log the user may
//!   see and the user's read cursor.
//! - **Groups**: the group record ([`GroupMeta`], with a version for
//!   optimistic concurrency), its members ([`MemberRecord`]) and pending join
//!   requests ([`JoinRequestRecord`]).
//! - **Social records**: profiles, friendships, pending friend requests,
//!   blocks.
//! - **Presence** ([`PresenceRecord`]): ephemeral; a store may keep it in
//!   memory only and may drop it once expired. The user's chosen presence
//!   ([`PresenceSetting`]) is durable, like a profile.
//!
//! # Atomicity: what is inside the store and what is check-then-act
//!
//! Inside the store (one atomic, durable step each):
//! - [`Store::append_batch`], per item: dedup lookup, guard check, seq
//!   allocation, the entry write, its side effect (recall rewrite, read
//!   cursor move), the [`UserConv`] records of `participants`, and the dedup
//!   record. The whole batch is made durable together (one fsync for the
//!   embedded store); an item that is refused writes nothing and does not
//!   affect the others.
//! - [`Store::apply_group_change`]: a compare-and-set on the group's
//!   version, then every write of the change, and the appends of its log
//!   entries. The domain reads the group, decides, and submits the change
//!   with the version it read; on [`GroupConflict`] it re-reads and decides
//!   again. So every group decision is made on the state it changes.
//! - [`Store::apply_social`]: all operations of the call, or none.
//!
//! Check-then-act in the domain (deliberately, because the race is harmless):
//! - block and friendship checks before a 1:1 send: a message that races a
//!   block by milliseconds is delivered, as if it had been sent just before;
//! - mute checks before a group send: same reasoning;
//! - the recall window and the recaller's role: the message and the roles
//!   that matter change rarely, and a recall is idempotent in effect (the
//!   store refuses a second recall of the same message with
//!   [`AppendRefused::NotRecallable`]);
//! - friend request / accept bookkeeping: the operations are idempotent puts
//!   and deletes, so two racing accepts end in the same state.
//!
//! What is atomic because a race would break an invariant: a group send is
//! appended only if the sender is a member at that instant
//! ([`Append::member_of`]), so a kicked member can never get a message into
//! the log after the kick entry; a read cursor only moves forward and its
//! read mark is appended only when it moved ([`AppendEffect::Read`]).
//!
//! # Notes for implementers (Redis)
//!
//! - Everything of one conversation (log, head, dedup records) can live
//!   under one hash tag, e.g. `{g:team}`, so one Lua function covers an
//!   append item. [`UserConv`] records touched by an append
//!   (`participants`, the reader of [`AppendEffect::Read`]) belong to users;
//!   in a cluster they may be written in a second, idempotent step, but a
//!   caller that got `Ok` must read its own write.
//! - Entries may be stored as prost-encoded bytes. The store assigns `seq`;
//!   a trick that avoids re-encoding in Lua: store the entry encoded with
//!   `seq = 0` (proto3 omits it) and append the field on read
//!   (`0x10` + varint(seq)), since the last occurrence of a field wins.
//! - The conformance suite (`backend/tests/conformance/mod.rs`) states every
//!   behaviour below as a test; run it against your store.
//!
//! # Changes
//!
//! Changes after the first version are additive and listed here.
//! - [`Store::dedup_lookup`] (with a default that answers `None`): lets a
//!   resend of a stored message get its original ack after the sender lost
//!   the right to send. Conformance case
//!   `send_resend_after_losing_rights_returns_original`.
//! - [`Store::blocked_pairs`] (with a default that loops
//!   [`Store::is_blocked`]): the block checks of a batch of 1:1 sends in one
//!   read. Conformance cases `store_blocked_pairs_answers_in_order` and
//!   `send_batch_refuses_only_the_blocked_send`.
//! - [`Store::friend_pairs`] (with a default that loops [`Store::friend`]):
//!   the friends-only checks of a batch of 1:1 sends in one read.
//!   Conformance cases `store_friend_pairs_answers_in_order` and
//!   `send_batch_friends_only_refuses_only_strangers`.
//! - [`Store::put_presence_setting`] and [`Store::presence_settings`]
//!   (required: a setting must be durable) and [`PresenceRecord::connected`]:
//!   a user's chosen presence outlives their connections. Conformance cases
//!   `store_presence_settings_are_kept` and
//!   `presence_setting_applies_whenever_a_device_is_connected`.
//! - Recall also clears the message's mentions ([`AppendEffect::Recall`]).
//!   Conformance case `recall_takes_the_mentions_back`.
//! - [`AppendEffect::Edit`] and [`AppendRefused::NotEditable`]: message edit
//!   (issue 17), a compare-and-set of the message with the `Edited` entry's
//!   append; an edit's dedup record is kept apart from messages' ones.
//!   Conformance cases `edit_*`.
//! - [`Store::search_indexed`], [`Store::search_index`] and
//!   [`Store::search_postings`] (required): the search index (issue 19),
//!   postings of tokens per conversation beside the log, and the mark up to
//!   which the log is indexed. Conformance cases `search_*`.
//! - [`Store::search_conversations`] (with a default that answers `None`):
//!   lets the indexer bring every index up to its log at start. Conformance
//!   case `search_index_all_catches_up_what_the_store_lists`.
//! - [`AppendEffect::Annotate`], [`AppendRefused::AnnotationChanged`] and
//!   [`Store::annotations`]: reactions and pins (issue 19), a record per
//!   message (its reactions) and per conversation (its pins) kept beside
//!   the log and changed by a compare-and-set with the entry's append.
//!   Conformance cases `reaction_*` and `pin_*`.
//! - Threads and to-dos (issue 19): [`AppendEffect::ThreadReply`] (and
//!   recall taking a reply out of its thread), [`AppendEffect::Todo`],
//!   [`AppendRefused::NotThreadable`], [`AppendRefused::TodoChanged`],
//!   and the thread and to-do reads and indexes ([`Store::thread_stats`]
//!   and the methods after it). Conformance cases `thread_*` and `todo_*`.
//! - [`Store::call`], [`Store::put_call`], [`Store::remove_call`] and
//!   [`Store::renew_calls`] (required): calls in progress kept in the store
//!   with a version and a lease, so that every gateway node on one store
//!   acts on every call (issue 19). Conformance cases `store_call_*` and
//!   `call_*`.
//! - Offline push (issue 20, required): push tokens bound to one user at a
//!   time ([`Store::push_bind`], [`Store::push_unbind`],
//!   [`Store::push_tokens`]) and a user's mutes ([`PushSettings`]).
//!   Conformance cases `push_*`.
//! - Rooms (issue 19): [`RoomRecord`], [`Store::room_create`],
//!   [`Store::room`], [`Store::room_append`] (a per-room seq and a ring
//!   of the newest messages), [`Store::room_recent`] and
//!   [`Store::room_delete`]. Conformance cases
//!   `room_*`.

use tern_protocol::pb;

/// A store failure: the database did not answer, or answered nonsense. The
/// domain maps every `StoreError` to `ERROR_CODE_INTERNAL`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O error, connection lost, transaction error).
    #[error("store backend failed: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The store's disk is below its free-space reserve: nothing was
    /// written; the same write succeeds once space returns.
    #[error("storage full: {0}")]
    Full(String),
    /// A sealed record could not be opened: its key is not in the key
    /// ring, or it fails authentication (see `crate::seal`).
    #[error(transparent)]
    Sealed(#[from] crate::seal::SealError),
}

/// The result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

// ---------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------

/// What the chat domain needs from a database. See the module doc for the
/// atomicity contract; every method is a single round trip where the
/// database allows.
pub trait Store: Send + Sync {
    // ---- conversation logs ------------------------------------------------

    /// Appends every item of `items` in one durable transaction and returns
    /// one result per item, in order. Items of the same conversation get
    /// increasing seqs in item order. `now_ms` is the caller's clock, used
    /// only to tell whether a dedup record has expired (and, optionally, to
    /// purge expired ones).
    ///
    /// Per item, atomically:
    /// 1. If `dedup` is set and a dedup record for `(conversation, sender,
    ///    client_msg_id)` exists with `expires_at_ms > now_ms` (including
    ///    one written by an earlier item of this batch): return
    ///    `Ok(Appended { duplicate: true, seq, time_ms })` of the original and
    ///    write nothing.
    /// 2. If `member_of` is set and there is no [`MemberRecord`] for it:
    ///    `Err(AppendRefused::NotMember)`.
    /// 3. Check `effect` (see [`AppendEffect`]); on refusal return it.
    /// 4. `seq = head + 1`; store `entry` with `entry.seq = seq` and
    ///    `entry.conversation_id = conversation` (whatever the caller put
    ///    there); set the head to `seq`, the head's `last_time_ms` to
    ///    `entry.time_ms`, and, if `activity`, `last_activity_ms` to
    ///    `entry.time_ms`.
    /// 5. Apply `effect`.
    /// 6. For each user of `participants` with no [`UserConv`] for this
    ///    conversation: create `UserConv { visible_from_seq: 1,
    ///    visible_to_seq: 0, read_seq: 0 }`. Existing records are untouched.
    /// 7. If `dedup` is set, write the dedup record `(seq, entry.time_ms,
    ///    expires_at_ms)`.
    ///
    /// `Err(StoreError)` means nothing of the batch is known to be durable.
    fn append_batch(
        &self,
        now_ms: u64,
        items: &[Append],
    ) -> StoreResult<Vec<Result<Appended, AppendRefused>>>;

    /// The dedup record of `(conversation, sender, client_msg_id)`, if one
    /// is kept with `expires_at_ms > now_ms`, as the `Appended { duplicate:
    /// true, .. }` a resend would get from [`Store::append_batch`]. The
    /// domain asks it only when a send is refused for the sender's rights,
    /// so that resending a message stored before the sender was kicked,
    /// blocked or muted still returns the original ack. Added after the
    /// first version; the default answers `None` (such a resend then gets
    /// the refusal), which is correct but less kind: implement it.
    fn dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_msg_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        let _ = (conversation, sender, client_msg_id, now_ms);
        Ok(None)
    }

    /// The heads of `conversations`, in order. A conversation with no entry
    /// has `ConvHead::default()` (seq 0).
    fn heads(&self, conversations: &[&str]) -> StoreResult<Vec<ConvHead>>;

    /// Entries of `conversation` with `from_seq <= seq <= to_seq`, in
    /// increasing seq, at most `limit` of them (the lowest ones). Seqs that
    /// do not exist are simply absent (an empty result for an unknown
    /// conversation).
    fn entries(
        &self,
        conversation: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>>;

    // ---- user conversation records ----------------------------------------

    /// The record of `user` for `conversation`, if any.
    fn user_conv(&self, user: &str, conversation: &str) -> StoreResult<Option<UserConv>>;

    /// Every record of `user` (current and former conversations), in
    /// increasing `conversation_id` byte order.
    fn user_convs(&self, user: &str) -> StoreResult<Vec<UserConv>>;

    // ---- groups ------------------------------------------------------------

    /// The group record, if the group was ever created (dissolved groups
    /// stay, with `dissolved = true`).
    fn group(&self, group_id: &str) -> StoreResult<Option<GroupMeta>>;

    /// One member record.
    fn group_member(&self, group_id: &str, user_id: &str) -> StoreResult<Option<MemberRecord>>;

    /// Members with `user_id > after_user_id` (byte order; empty `after`:
    /// from the start), in increasing `user_id`, at most `limit`.
    fn group_members(
        &self,
        group_id: &str,
        after_user_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<MemberRecord>>;

    /// A pending join request of `user_id` for `group_id`.
    fn join_request(&self, group_id: &str, user_id: &str)
    -> StoreResult<Option<JoinRequestRecord>>;

    /// Applies `change` atomically if the group's current version equals
    /// `change.expect_version` (0: the group must not exist), in this order:
    /// write `change.meta` with `version = expect_version + 1` (the
    /// `group_id` and `version` fields of `change.meta` are overwritten);
    /// put/remove members; put/remove join requests; append `entries` to
    /// `g:<group_id>` with consecutive seqs (each with `activity = true`,
    /// `conversation_id` and `seq` set by the store, like `append_batch`);
    /// then apply `views` (see [`ViewChange`]). Returns the seqs given to
    /// `entries`, in order. On a version mismatch nothing is written and
    /// `Ok(Err(GroupConflict))` is returned.
    fn apply_group_change(
        &self,
        change: &GroupChange,
    ) -> StoreResult<Result<Vec<u64>, GroupConflict>>;

    // ---- social ------------------------------------------------------------

    /// Applies every operation in order, atomically (all or none). Puts
    /// overwrite; deletes of missing records are no-ops.
    fn apply_social(&self, ops: &[SocialOp]) -> StoreResult<()>;

    /// A user's profile, if they ever set one.
    fn profile(&self, user_id: &str) -> StoreResult<Option<pb::Profile>>;

    /// `user`'s friendship record for `friend` (friendships are stored in
    /// both directions, as two records).
    fn friend(&self, user: &str, friend: &str) -> StoreResult<Option<FriendRecord>>;

    /// For each `(user, friend)` of `pairs`, in order: whether `user` has a
    /// friendship record for `friend` (as [`Store::friend`] being `Some`).
    /// Lets the domain check the friends-only policy for every 1:1 send of
    /// a batch with one read. Added after the first version; the default
    /// asks [`Store::friend`] pair by pair.
    fn friend_pairs(&self, pairs: &[(&str, &str)]) -> StoreResult<Vec<bool>> {
        pairs
            .iter()
            .map(|(user, friend)| self.friend(user, friend).map(|r| r.is_some()))
            .collect()
    }

    /// Every friendship record of `user`, in increasing `friend` order.
    fn friends(&self, user: &str) -> StoreResult<Vec<FriendRecord>>;

    /// The pending friend request from `from` to `to`.
    fn friend_request(&self, from: &str, to: &str) -> StoreResult<Option<FriendRequestRecord>>;

    /// Pending requests sent to `user` (incoming) and by `user` (outgoing),
    /// each in increasing order of the other user's id.
    fn friend_requests(
        &self,
        user: &str,
    ) -> StoreResult<(Vec<FriendRequestRecord>, Vec<FriendRequestRecord>)>;

    /// Whether `user` blocked `other`.
    fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool>;

    /// For each `(user, other)` of `pairs`, in order: whether `user` blocked
    /// `other` (as [`Store::is_blocked`]). Users without any record are
    /// simply not blocking anyone. Lets the domain check every 1:1 send of
    /// a batch, both ways, with one read: a networked store answers it in
    /// one round trip (per node in a cluster). Added after the first
    /// version; the default asks [`Store::is_blocked`] pair by pair, which
    /// is right for an in-process store.
    fn blocked_pairs(&self, pairs: &[(&str, &str)]) -> StoreResult<Vec<bool>> {
        pairs
            .iter()
            .map(|(user, other)| self.is_blocked(user, other))
            .collect()
    }

    /// Users `user` blocked, in increasing order.
    fn blocked(&self, user: &str) -> StoreResult<Vec<String>>;

    // ---- presence (ephemeral) ---------------------------------------------

    /// Stores `record`, replacing the user's previous one. The store may
    /// forget it any time after `record.expires_at_ms` (the domain treats an
    /// expired record as offline anyway) and need not make it durable.
    fn put_presence(&self, record: &PresenceRecord) -> StoreResult<()>;

    /// The presence records of `users`, in order (`None`: none kept).
    fn presences(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceRecord>>>;

    /// Stores several presence records, as [`Store::put_presence`] each.
    /// A store with round trips does them as one (a login storm is one
    /// presence update per login).
    fn put_presences(&self, records: &[PresenceRecord]) -> StoreResult<()> {
        records.iter().try_for_each(|r| self.put_presence(r))
    }

    /// [`Store::friends`] of each of `users`, in order.
    fn friends_of(&self, users: &[&str]) -> StoreResult<Vec<Vec<FriendRecord>>> {
        users.iter().map(|u| self.friends(u)).collect()
    }

    // ---- presence settings (durable) ---------------------------------------

    /// Stores `user`'s chosen presence, durably, replacing the previous one;
    /// `None` deletes it (the user chose plain online). Unlike a
    /// [`PresenceRecord`] it never expires: it is a setting, kept until
    /// changed.
    fn put_presence_setting(
        &self,
        user: &str,
        setting: Option<&PresenceSetting>,
    ) -> StoreResult<()>;

    /// The presence settings of `users`, in order (`None`: none chosen).
    /// One read for all of them (a login storm asks for every user logging
    /// in).
    fn presence_settings(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceSetting>>>;

    // ---- bans (durable) -----------------------------------------------------

    /// Bans `user` (`Some`, replacing an earlier ban) or lifts the ban
    /// (`None`), durably.
    fn put_ban(&self, user: &str, ban: Option<&BanRecord>) -> StoreResult<()>;

    /// `user`'s ban, if banned.
    fn ban(&self, user: &str) -> StoreResult<Option<BanRecord>>;

    /// Each user's ban, in order (a login storm's checks in one read).
    fn bans(&self, users: &[&str]) -> StoreResult<Vec<Option<BanRecord>>> {
        users.iter().map(|u| self.ban(u)).collect()
    }

    // ---- tenant seats (issue 20; docs/tenants.md, "Limits") -----------------

    /// Gives `user` a seat of `tenant`, durably: `true` when they hold one
    /// already or fewer than `max` are held (the seat is theirs from now
    /// on), `false` when `max` others hold them all. Atomic: logins racing
    /// for the last seat get it once.
    fn take_seat(&self, tenant: &str, user: &str, max: u64) -> StoreResult<bool>;

    // ---- message edit (added after the first version) ----------------------

    /// The dedup record of the edit `(conversation, sender, client_edit_id)`
    /// (as written by an [`AppendEffect::Edit`] item with a dedup key), if
    /// one is kept with `expires_at_ms > now_ms`: like
    /// [`Store::dedup_lookup`] for messages. The domain asks it when an
    /// edit is refused, so that a retry of an edit that was stored gets its
    /// first answer even after the window passed or the message was
    /// recalled. The default answers `None`: implement it.
    fn edit_dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_edit_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        let _ = (conversation, sender, client_edit_id, now_ms);
        Ok(None)
    }

    // ---- reactions and pins (added after the first version) ---------------

    /// The annotation records `keys` of `conversation` (as written by
    /// [`AppendEffect::Annotate`]), in order; `None` where there is none.
    /// The bytes are the domain's; the store never reads them.
    fn annotations(
        &self,
        conversation: &str,
        keys: &[Annotation],
    ) -> StoreResult<Vec<Option<Vec<u8>>>>;

    // ---- threads and to-dos (issue 19) -------------------------------------

    /// The entries of `conversation` at `seqs`, in the order of `seqs`;
    /// seqs with no entry are absent. The default reads them one by one
    /// with [`Store::entries`]; a networked store reads them in one trip.
    fn entries_at(&self, conversation: &str, seqs: &[u64]) -> StoreResult<Vec<pb::Entry>> {
        let mut out = Vec::with_capacity(seqs.len());
        for &s in seqs {
            out.extend(self.entries(conversation, s, s, 1)?);
        }
        Ok(out)
    }

    /// For each `(root, after_seq)` of `roots`, in order: the thread under
    /// the message at `root` of `conversation` as its index holds it (the
    /// replies appended with [`AppendEffect::ThreadReply`] and not
    /// recalled): how many, how many have `seq > after_seq`, and the newest.
    fn thread_stats(
        &self,
        conversation: &str,
        roots: &[(u64, u64)],
    ) -> StoreResult<Vec<ThreadStat>>;

    /// Seqs of the replies in the thread under `root` with `seq <
    /// before_seq` (0: no bound), newest first, at most `limit`.
    fn thread_replies(
        &self,
        conversation: &str,
        root: u64,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>>;

    /// `user`'s read marks of the threads under `roots` of `conversation`,
    /// in order (0: none).
    fn thread_read_marks(
        &self,
        user: &str,
        conversation: &str,
        roots: &[u64],
    ) -> StoreResult<Vec<u64>>;

    /// Moves `user`'s read mark of the thread under `root` to `up_to_seq`
    /// if that is past it (atomically: a mark never moves back), durably.
    fn mark_thread_read(
        &self,
        user: &str,
        conversation: &str,
        root: u64,
        up_to_seq: u64,
    ) -> StoreResult<()>;

    /// The to-do made from the message at `seq` of `conversation`, if any
    /// (as the last [`AppendEffect::Todo`] wrote it).
    fn todo(&self, conversation: &str, seq: u64) -> StoreResult<Option<TodoRecord>>;

    /// Adds (`open`) or removes the to-do `(conversation, seq)` in `user`'s
    /// index of open to-dos, durably; idempotent. The domain keeps the
    /// index a superset of the user's open to-dos (added before the to-do
    /// opens for them, removed after it closes) and checks every record it
    /// lists.
    fn set_todo_open(
        &self,
        user: &str,
        conversation: &str,
        seq: u64,
        open: bool,
    ) -> StoreResult<()>;

    /// `user`'s index of open to-dos after `(conversation, seq)` (`None`:
    /// from the start), in increasing (conversation bytes, seq), at most
    /// `limit`.
    fn todo_index(
        &self,
        user: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>>;

    // ---- rooms (issue 19; docs/backend.md, "Rooms") ----------------------

    /// Stores `room` unless a room with its id exists, durably. True if it
    /// was stored; false (nothing written) if the id was taken.
    fn room_create(&self, room: &RoomRecord) -> StoreResult<bool>;

    /// A room's record and its newest seq (0: nothing posted yet).
    fn room(&self, room_id: &str) -> StoreResult<Option<(RoomRecord, u64)>>;

    /// Appends `entry` (its `seq` and `conversation_id` are set by the
    /// store: the room's next seq, from 1, never reused; `r:<room>`) to the
    /// room's recent messages and keeps only the newest `keep` of them, in
    /// one durable step. The new seq, or `None` (nothing written) if the
    /// room does not exist.
    fn room_append(&self, room_id: &str, entry: pb::Entry, keep: usize)
    -> StoreResult<Option<u64>>;

    /// Removes room `room_id`: its record, its seq and every kept message,
    /// in one durable step. True if it existed; false (nothing written) if
    /// not. A post racing the deletion is either stored before it (and
    /// removed with the rest) or finds no room. The id may be created
    /// again afterwards, as a new room whose seq starts from 1.
    fn room_delete(&self, room_id: &str) -> StoreResult<bool>;

    /// The room's kept messages with a seq below `before_seq` (0: any), the
    /// newest `limit` of them, oldest first. Only the newest `keep` (as the
    /// last [`Store::room_append`] was given) are ever returned.
    fn room_recent(
        &self,
        room_id: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>>;

    // ---- search (issue 19; docs/backend.md, "Search") ------------------------

    /// The seq up to which `conversation`'s search index holds its log: the
    /// index mark (0: nothing indexed yet, or no index).
    fn search_indexed(&self, conversation: &str) -> StoreResult<u64>;

    /// Adds `postings`, `(token, seq)` pairs, to `conversation`'s search
    /// index and moves its index mark up to `upto_seq` (never down), in one
    /// atomic step. Idempotent: the same postings again change nothing. The
    /// index is derived from the log, so a store may make this write
    /// durable lazily: a lost write leaves the mark behind and is done
    /// again from the log.
    fn search_index(
        &self,
        conversation: &str,
        postings: &[(String, u64)],
        upto_seq: u64,
    ) -> StoreResult<()>;

    /// Up to `limit` conversation ids greater than `after` (byte order;
    /// empty: from the first), in increasing order: every conversation with
    /// a log, so that the indexer can bring every index up to its log at
    /// start. `None`: the store cannot list them cheaply (the default; the
    /// Redis store), and indexes are then caught up when a conversation is
    /// written to or searched.
    fn search_conversations(&self, after: &str, limit: usize) -> StoreResult<Option<Vec<String>>> {
        let _ = (after, limit);
        Ok(None)
    }

    /// The seqs indexed under `token` in `conversation` with `from_seq <=
    /// seq <= to_seq`, in decreasing order, at most `limit` (the highest).
    fn search_postings(
        &self,
        conversation: &str,
        token: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>>;

    // ---- offline push (issue 20) ------------------------------------------

    /// Binds `record`'s `(platform, token)` to `user`, atomically:
    /// 1. the user's tokens are counted without this token and without the
    ///    token of the same `(device_id, platform)` that this one replaces;
    ///    at `tokens_max` or more: [`PushBind::Full`], nothing written;
    /// 2. that replaced token of the device (a different token string) is
    ///    removed (tokens rotate: one per device and platform);
    /// 3. if another user holds the token, it leaves them
    ///    ([`PushBind::Bound::moved_from`]);
    /// 4. the record is stored (replacing the user's own copy, if any).
    fn push_bind(
        &self,
        user: &str,
        record: &pb::PushToken,
        tokens_max: usize,
    ) -> StoreResult<PushBind>;

    /// Removes `(platform, token)`: with `user`, only if that user holds it
    /// ([`PushUnbind::NotYours`] if another does, nothing written); without
    /// (a provider said the token is dead), whoever holds it.
    fn push_unbind(
        &self,
        user: Option<&str>,
        platform: i32,
        token: &str,
    ) -> StoreResult<PushUnbind>;

    /// `user`'s tokens, in `(platform, token)` order.
    fn push_tokens(&self, user: &str) -> StoreResult<Vec<pb::PushToken>>;

    /// `user`'s mutes, if any were set.
    fn push_settings(&self, user: &str) -> StoreResult<Option<PushSettings>>;

    /// Replaces `user`'s mutes (`None` deletes them).
    fn put_push_settings(&self, user: &str, settings: Option<&PushSettings>) -> StoreResult<()>;

    // ---- calls in progress (docs/protocol.md, "Calls") --------------------
    //
    // A call in progress is ephemeral state that every gateway node on the
    // store must see: a record per call id, bytes the domain encodes, with a
    // version for compare-and-set and a lease after which it is gone. A
    // store on one node may keep them in memory only.

    /// The call `id` if it exists and its lease has not lapsed at `now_ms`
    /// (a store may use its own clock for the lease instead).
    fn call(&self, id: &str, now_ms: u64) -> StoreResult<Option<CallSlot>>;

    /// Writes call `id` if its version is `expected` (0: it must not exist,
    /// or its lease lapsed), as version `expected + 1` with a lease of
    /// `lease_ms` from now. `Ok(false)`: the version differed; nothing was
    /// written.
    fn put_call(
        &self,
        id: &str,
        expected: u64,
        state: &[u8],
        now_ms: u64,
        lease_ms: u64,
    ) -> StoreResult<bool>;

    /// Removes call `id` if its version is `expected`. `Ok(false)`: it is
    /// gone already or its version differed; nothing was removed. Of
    /// several removers of one version, exactly one gets `true`.
    fn remove_call(&self, id: &str, expected: u64) -> StoreResult<bool>;

    /// Extends the lease of each call of `ids` that still exists to
    /// `lease_ms` from now; answers, in order, whether it existed.
    fn renew_calls(&self, ids: &[&str], now_ms: u64, lease_ms: u64) -> StoreResult<Vec<bool>>;
}

/// A call in progress as a store keeps it ([`Store::call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSlot {
    /// Bumped by every [`Store::put_call`]; at least 1.
    pub version: u64,
    /// The domain's encoding of the call.
    pub state: Vec<u8>,
}

/// What [`Store::push_bind`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushBind {
    /// Stored.
    Bound {
        /// The user who held the token before, if another one did.
        moved_from: Option<String>,
        /// The device's previous token of this platform, now removed.
        replaced: Option<String>,
    },
    /// The user holds `tokens_max` other tokens: nothing written.
    Full,
}

/// What [`Store::push_unbind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushUnbind {
    /// The token is gone.
    Removed,
    /// Nobody (or, with a user, not that user and nobody else) held it.
    NotFound,
    /// Another user holds it: nothing written.
    NotYours,
}

/// A user's notification mutes (offline push, issue 20).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PushSettings {
    /// Do not disturb until this time (0: off).
    #[prost(uint64, tag = "1")]
    pub dnd_until_ms: u64,
    /// Muted conversations, in id order, each until its time.
    #[prost(message, repeated, tag = "2")]
    pub muted: Vec<pb::MutedConversation>,
}

/// An annotation record of a conversation: data about its log kept beside
/// it (one record each), changed only by [`AppendEffect::Annotate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Annotation {
    /// The reactions on the message at this seq.
    Reactions(u64),
    /// The conversation's pinned messages.
    Pins,
}

// ---------------------------------------------------------------------------
// Credentials of local accounts
// ---------------------------------------------------------------------------

/// The password hashes of local accounts: one small record per user, the
/// PHC string of its argon2id hash (`$argon2id$v=19$m=…`). Kept next to the
/// chat data (the embedded database, or Redis for many nodes) but read and
/// written by the HTTP edge directly, never through the chat workers.
pub trait Credentials: Send + Sync + std::fmt::Debug {
    /// `user`'s password hash, if the user registered.
    fn credential(&self, user: &str) -> StoreResult<Option<String>>;

    /// Stores `phc` as `user`'s hash durably unless `user` already has one:
    /// `false` (and nothing written) when it does.
    fn create_credential(&self, user: &str, phc: &str) -> StoreResult<bool>;
}

/// The audit log of admin actions (docs/tenants.md, "Audit log"): one
/// bounded log per tenant, newest `keep` records kept. Like
/// [`Credentials`], written and read by the HTTP edge directly, never
/// through the chat workers.
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends `record` (its `seq` ignored) to `tenant`'s log (`""`: the
    /// default tenant's) durably, dropping what falls past the newest
    /// `keep`; returns the record's seq (from 1, never reused).
    fn audit_append(&self, tenant: &str, record: &AuditRecord, keep: u64) -> StoreResult<u64>;

    /// `tenant`'s records with a seq below `before_seq` (0: from the
    /// newest), newest first, at most `limit`, each with its `seq` set.
    fn audit_page(
        &self,
        tenant: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>>;
}

/// A tenant's departments (docs/tenants.md, "Org structure"): a tree per
/// organization (a root department, no parent), members with titles. Read
/// and written by the HTTP edge directly at admin rate, never through the
/// chat workers, like [`AuditLog`]. The caller checks ids and bounds; the
/// store keeps each tenant's records together (one Redis Cluster slot), so
/// a tenant's tree changes atomically.
pub trait OrgStore: Send + Sync + std::fmt::Debug {
    /// Department `id` of `tenant`.
    fn dept(&self, tenant: &str, id: &str) -> StoreResult<Option<DeptRecord>>;

    /// Every department of `tenant`, in id order (the caller bounds how
    /// many a tenant may hold).
    fn depts(&self, tenant: &str) -> StoreResult<Vec<DeptRecord>>;

    /// Stores `record` (with version `expected + 1`) if the stored one's
    /// version is `expected` (0: there is none); `false`, and nothing
    /// written, when it is not.
    fn put_dept(&self, tenant: &str, record: &DeptRecord, expected: u64) -> StoreResult<bool>;

    /// Deletes department `id` and its memberships if its version is
    /// `expected`; `false`, and nothing deleted, when it is not.
    fn delete_dept(&self, tenant: &str, id: &str, expected: u64) -> StoreResult<bool>;

    /// Adds `member` to department `dept`, or changes their title and
    /// order.
    fn put_dept_member(&self, tenant: &str, dept: &str, member: &DeptMember) -> StoreResult<()>;

    /// Removes `user` from `dept`; `false` when they were not a member.
    fn remove_dept_member(&self, tenant: &str, dept: &str, user: &str) -> StoreResult<bool>;

    /// Members of `dept` with a user id after `after` (`""`: from the
    /// first), in user id order, at most `limit`.
    fn dept_members(
        &self,
        tenant: &str,
        dept: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeptMember>>;

    /// The departments `user` is a member of, in id order.
    fn user_depts(&self, tenant: &str, user: &str) -> StoreResult<Vec<String>>;

    /// Frees `user`'s seat of `tenant` ([`Store::take_seat`]); `false` when
    /// they held none.
    fn free_seat(&self, tenant: &str, user: &str) -> StoreResult<bool>;

    /// Seats of `tenant` held now.
    fn seats(&self, tenant: &str) -> StoreResult<u64>;

    /// Counts `bytes` more of `tenant`'s stored media, durably, if that
    /// keeps it at most `max`; `false`, and nothing counted, if not.
    /// Atomic: uploads racing for the last bytes fit once.
    fn charge_storage(&self, tenant: &str, bytes: u64, max: u64) -> StoreResult<bool>;

    /// Counts `bytes` fewer (an upload that failed after its charge).
    fn refund_storage(&self, tenant: &str, bytes: u64) -> StoreResult<()>;

    /// `tenant`'s stored media bytes as counted.
    fn storage_used(&self, tenant: &str) -> StoreResult<u64>;
}

/// A department (an organization when it has no parent).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeptRecord {
    /// Its id (in its tenant: `acme~eng`).
    #[prost(string, tag = "1")]
    pub dept_id: String,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The parent department; empty for an organization.
    #[prost(string, tag = "3")]
    pub parent: String,
    /// Its place among its siblings (lower first, then by id).
    #[prost(uint32, tag = "4")]
    pub order: u32,
    /// Users who administer it and everything below it.
    #[prost(string, repeated, tag = "5")]
    pub admins: Vec<String>,
    /// The chat group kept in step with its members, if any.
    #[prost(string, tag = "6")]
    pub group_id: String,
    /// Bumped by every change (set by [`OrgStore::put_dept`]).
    #[prost(uint64, tag = "7")]
    pub version: u64,
    /// When it was made.
    #[prost(uint64, tag = "8")]
    pub created_ms: u64,
}

/// A member of a department.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeptMember {
    /// The user.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// Their title in this department.
    #[prost(string, tag = "2")]
    pub title: String,
    /// Their place in the department's list (lower first, then by id).
    #[prost(uint32, tag = "3")]
    pub order: u32,
}

/// One admin action in the audit log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuditRecord {
    /// The record's place in its tenant's log (set by the store).
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// When it was answered, ms since the epoch.
    #[prost(uint64, tag = "2")]
    pub time_ms: u64,
    /// Who: `key:<name>` for an API key, else the admin user's id.
    #[prost(string, tag = "3")]
    pub actor: String,
    /// The actor's level: `system`, `tenant`, `organization`, `department`.
    #[prost(string, tag = "4")]
    pub level: String,
    /// The call: its method and route (`DELETE /api/v1/groups/{group_id}`).
    #[prost(string, tag = "5")]
    pub action: String,
    /// The path as called, with its ids.
    #[prost(string, tag = "6")]
    pub target: String,
    /// The HTTP status it was answered with.
    #[prost(uint32, tag = "7")]
    pub status: u32,
}

// ---------------------------------------------------------------------------
// Appends
// ---------------------------------------------------------------------------

/// One item of [`Store::append_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The conversation, in wire form (`d:<a>:<b>` or `g:<group>`).
    pub conversation: String,
    /// The entry; the store sets `seq` and `conversation_id`.
    pub entry: pb::Entry,
    /// Whether this entry counts as activity for conversation ordering
    /// (messages, recalls, group changes: true; read marks: false).
    pub activity: bool,
    /// Makes the append idempotent (messages only).
    pub dedup: Option<DedupKey>,
    /// Appends only if this member record exists at that instant.
    pub member_of: Option<MemberOf>,
    /// A change to existing data made in the same atomic step.
    pub effect: AppendEffect,
    /// Users who get a [`UserConv`] for this conversation if they have none
    /// (1:1: both users; groups: none, membership creates them).
    pub participants: Vec<String>,
}

/// The dedup identity of a message within its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// The sending user.
    pub sender: String,
    /// The client's message id.
    pub client_msg_id: String,
    /// Keep the dedup record at least until this time.
    pub expires_at_ms: u64,
}

/// A membership an append depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberOf {
    /// The group.
    pub group_id: String,
    /// The user who must be a member.
    pub user_id: String,
}

/// A change to existing data, made atomically with an append. (Not `Eq`
/// since [`AppendEffect::Edit`] holds an entry, whose content may hold a
/// float.)
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AppendEffect {
    /// Nothing besides the append.
    #[default]
    None,
    /// Recall: the entry at `seq` of the same conversation must be a
    /// `Message` with `recalled == false`, else
    /// [`AppendRefused::NotRecallable`]. The store rewrites it with
    /// `recalled = true`, `content = None`, no `mentions` and
    /// `mention_all = false` (everything else kept), so the original content
    /// is never served again and the message mentions nobody any more.
    Recall {
        /// The seq of the message to recall.
        seq: u64,
    },
    /// Read: `user_id`'s [`UserConv`] for this conversation must exist with
    /// `read_seq < up_to_seq`, else [`AppendRefused::ReadNotAdvanced`]; the
    /// store sets `read_seq = up_to_seq`. (The domain checks that
    /// `up_to_seq` does not pass the head.)
    Read {
        /// The reader.
        user_id: String,
        /// The new read cursor.
        up_to_seq: u64,
    },
    /// Edit: the entry at `message.seq` of the same conversation must be a
    /// `Message` with `recalled == false` and `edit_count == expect_edit_count`,
    /// else [`AppendRefused::NotEditable`] (the domain reads it again and
    /// decides again). The store then writes `message` (the whole entry,
    /// with its `seq` and `conversation_id`) in its place, its content
    /// sealed like any message content.
    ///
    /// The item's dedup record, if any, is an edit's:
    /// `(conversation, sender, client_edit_id)` with
    /// [`DedupKey::client_msg_id`] holding the `client_edit_id`, kept
    /// apart from messages' records (an edit id never matches a message id).
    Edit {
        /// The message's `edit_count` as the domain read it.
        expect_edit_count: u32,
        /// The message's entry as it is after the edit. Boxed: an effect is
        /// small otherwise.
        message: Box<pb::Entry>,
    },
    /// Annotate: the record `key` of the same conversation must hold
    /// exactly `expect` (empty: no record), and, when `live_message`, the
    /// entry at `seq` must be a `Message` that is not recalled; else
    /// [`AppendRefused::AnnotationChanged`] (the domain reads both again and
    /// decides again). The store then writes `new` as the record (empty:
    /// deletes it).
    Annotate {
        /// The record.
        key: Annotation,
        /// The message the change is about.
        seq: u64,
        /// Whether that message must exist and not be recalled.
        live_message: bool,
        /// The record's bytes as the domain read them.
        expect: Vec<u8>,
        /// The record's bytes after the change.
        new: Vec<u8>,
    },
    /// A thread reply (the entry is a `Message` with `thread_root_seq ==
    /// root_seq`): the entry at `root_seq` of the same conversation must be
    /// a `Message` that is not recalled and is not itself a thread reply,
    /// else [`AppendRefused::NotThreadable`]. The store adds the new seq to
    /// the thread's index ([`Store::thread_stats`]). A later
    /// [`AppendEffect::Recall`] of the reply takes it out of the index.
    ThreadReply {
        /// The thread's root message.
        root_seq: u64,
    },
    /// A to-do change: the to-do record of the message at `seq` of the
    /// same conversation must have `version == expect_version` (0: no
    /// record), else [`AppendRefused::TodoChanged`] (the domain reads it
    /// again and decides again). The store then writes `record` with
    /// `version = expect_version + 1`.
    Todo {
        /// The message the to-do is about.
        seq: u64,
        /// The record's version as the domain read it (0: none).
        expect_version: u32,
        /// The record after the change. Boxed: an effect is small otherwise.
        record: Box<TodoRecord>,
    },
}

/// An append that happened (or had happened before: `duplicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The entry's seq (for a duplicate: the original's).
    pub seq: u64,
    /// The entry's `time_ms` (for a duplicate: the original's).
    pub time_ms: u64,
    /// The dedup key had been stored before; nothing new was stored.
    pub duplicate: bool,
}

/// Why one append item was refused (nothing of it was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefused {
    /// The `member_of` member record does not exist.
    #[error("the sender is not a member")]
    NotMember,
    /// The recall target is missing, not a message, or already recalled.
    #[error("the entry cannot be recalled")]
    NotRecallable,
    /// The reader has no record for the conversation, or the read cursor is
    /// already at or past `up_to_seq`.
    #[error("the read cursor did not advance")]
    ReadNotAdvanced,
    /// The edit target is missing, not a message, recalled, or was edited
    /// since the domain read it.
    #[error("the message changed or cannot be edited")]
    NotEditable,
    /// An annotation's record changed since the domain read it, or its
    /// message is gone or recalled.
    #[error("the annotation or its message changed")]
    AnnotationChanged,
    /// The thread root is missing, not a message, recalled, or itself a
    /// thread reply.
    #[error("the message takes no thread replies")]
    NotThreadable,
    /// The to-do record changed since the domain read it.
    #[error("the to-do changed")]
    TodoChanged,
}

/// One thread as its index holds it (see [`Store::thread_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadStat {
    /// Replies not recalled.
    pub replies: u64,
    /// Of them, those with a seq past the `after_seq` asked.
    pub after: u64,
    /// The newest of them; 0: none.
    pub last_seq: u64,
}

/// A room or broadcast channel (issue 19). Its members are not stored:
/// joining a room subscribes a connection in the gateway's memory.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RoomRecord {
    /// The room id (without the `r:` prefix).
    #[prost(string, tag = "1")]
    pub room_id: String,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Chat or broadcast.
    #[prost(enumeration = "pb::RoomKind", tag = "3")]
    pub kind: i32,
    /// The creator.
    #[prost(string, tag = "4")]
    pub owner: String,
    /// Who may post in a broadcast channel besides the owner.
    #[prost(string, repeated, tag = "5")]
    pub admins: Vec<String>,
    /// Creation time.
    #[prost(uint64, tag = "6")]
    pub created_ms: u64,
}

/// A to-do as the store keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TodoRecord {
    /// The to-do as clients see it.
    #[prost(message, optional, tag = "1")]
    pub todo: Option<pb::Todo>,
    /// Incremented by every [`AppendEffect::Todo`]; 1 after creation.
    #[prost(uint32, tag = "2")]
    pub version: u32,
}

/// The newest point of a conversation's log.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ConvHead {
    /// The newest seq; 0 for an empty conversation.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// `time_ms` of the newest entry.
    #[prost(uint64, tag = "2")]
    pub last_time_ms: u64,
    /// `time_ms` of the newest entry appended with `activity = true`.
    #[prost(uint64, tag = "3")]
    pub last_activity_ms: u64,
}

/// A user's relation to one conversation.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UserConv {
    /// The conversation (wire form).
    #[prost(string, tag = "1")]
    pub conversation_id: String,
    /// The first seq the user may see.
    #[prost(uint64, tag = "2")]
    pub visible_from_seq: u64,
    /// The last seq the user may see (inclusive); 0: no end (a current
    /// participant).
    #[prost(uint64, tag = "3")]
    pub visible_to_seq: u64,
    /// The user's read cursor: everything up to it is read.
    #[prost(uint64, tag = "4")]
    pub read_seq: u64,
}

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

/// A group record.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupMeta {
    /// The group id (without the `g:` prefix).
    #[prost(string, tag = "1")]
    pub group_id: String,
    /// Incremented by every [`Store::apply_group_change`]; 1 after creation.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Display name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Announcement text.
    #[prost(string, tag = "4")]
    pub announcement: String,
    /// The owner's user id.
    #[prost(string, tag = "5")]
    pub owner: String,
    /// Current number of members (maintained by the domain).
    #[prost(uint32, tag = "6")]
    pub member_count: u32,
    /// How users join.
    #[prost(enumeration = "pb::JoinPolicy", tag = "7")]
    pub join_policy: i32,
    /// New members see the history from before they joined.
    #[prost(bool, tag = "8")]
    pub history_visible: bool,
    /// Only admins and the owner may send.
    #[prost(bool, tag = "9")]
    pub muted_all: bool,
    /// The group was dissolved; it has no members any more.
    #[prost(bool, tag = "10")]
    pub dissolved: bool,
    /// Creation time.
    #[prost(uint64, tag = "11")]
    pub created_ms: u64,
}

/// A member of a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberRecord {
    /// The member.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// Owner, admin or member.
    #[prost(enumeration = "pb::GroupRole", tag = "2")]
    pub role: i32,
    /// The member's nickname in the group.
    #[prost(string, tag = "3")]
    pub nickname: String,
    /// When the member joined.
    #[prost(uint64, tag = "4")]
    pub joined_ms: u64,
    /// Muted until this time; 0: not muted.
    #[prost(uint64, tag = "5")]
    pub muted_until_ms: u64,
    /// The member's private remark for the group.
    #[prost(string, tag = "6")]
    pub remark: String,
}

/// A pending request to join a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct JoinRequestRecord {
    /// The user who asks.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// Their message to the admins.
    #[prost(string, tag = "2")]
    pub message: String,
    /// When they asked.
    #[prost(uint64, tag = "3")]
    pub time_ms: u64,
}

/// An atomic change to a group (see [`Store::apply_group_change`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChange {
    /// The group.
    pub group_id: String,
    /// The version the domain read; 0: the group must not exist yet.
    pub expect_version: u64,
    /// The new group record.
    pub meta: GroupMeta,
    /// Member records to write (insert or overwrite).
    pub put_members: Vec<MemberRecord>,
    /// Members to remove.
    pub remove_members: Vec<String>,
    /// Join requests to write.
    pub put_join_requests: Vec<JoinRequestRecord>,
    /// Join requests to remove (by user id).
    pub remove_join_requests: Vec<String>,
    /// Entries to append to the group's log, in order.
    pub entries: Vec<pb::Entry>,
    /// Changes to members' [`UserConv`] records, applied after `entries`.
    pub views: Vec<ViewChange>,
}

/// A change of what part of a group's log a user may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewChange {
    /// The user (re)joins: their [`UserConv`] for the group becomes
    /// `visible_from_seq = if history { 1 } else { s }`, `visible_to_seq = 0`,
    /// `read_seq = s - 1`, where `s` is the seq given to `entries[at]`
    /// (created if missing, overwritten otherwise).
    Join {
        /// The user.
        user_id: String,
        /// Index into [`GroupChange::entries`] of the entry that records it.
        at: usize,
        /// Whether the user sees the log from its start.
        history: bool,
    },
    /// The user stops seeing the group after `entries[at]` (inclusive):
    /// `visible_to_seq = s`. Missing records are left missing.
    Leave {
        /// The user.
        user_id: String,
        /// Index into [`GroupChange::entries`].
        at: usize,
    },
}

/// The group's version was not the expected one (or it already existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the group changed concurrently")]
pub struct GroupConflict;

// ---------------------------------------------------------------------------
// Social
// ---------------------------------------------------------------------------

/// One write of [`Store::apply_social`].
#[derive(Debug, Clone, PartialEq)]
pub enum SocialOp {
    /// Write a profile (all fields).
    PutProfile(pb::Profile),
    /// Write `record` as `record.user`'s friendship with `record.friend`
    /// (one direction; the domain writes both).
    PutFriend(FriendRecord),
    /// Delete `user`'s friendship record for `friend` (one direction).
    DeleteFriend {
        /// Whose record.
        user: String,
        /// The friend.
        friend: String,
    },
    /// Write a pending friend request.
    PutFriendRequest(FriendRequestRecord),
    /// Delete the pending request from `from` to `to`.
    DeleteFriendRequest {
        /// The requester.
        from: String,
        /// The addressee.
        to: String,
    },
    /// `user` blocks `other`.
    PutBlock {
        /// Who blocks.
        user: String,
        /// Who is blocked.
        other: String,
    },
    /// `user` unblocks `other`.
    DeleteBlock {
        /// Who unblocks.
        user: String,
        /// Who is unblocked.
        other: String,
    },
}

/// One direction of a friendship.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FriendRecord {
    /// Whose record this is.
    #[prost(string, tag = "1")]
    pub user: String,
    /// The friend.
    #[prost(string, tag = "2")]
    pub friend: String,
    /// `user`'s private remark for `friend`.
    #[prost(string, tag = "3")]
    pub remark: String,
    /// When they became friends.
    #[prost(uint64, tag = "4")]
    pub since_ms: u64,
}

/// A pending friend request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FriendRequestRecord {
    /// The requester.
    #[prost(string, tag = "1")]
    pub from: String,
    /// The addressee.
    #[prost(string, tag = "2")]
    pub to: String,
    /// The greeting.
    #[prost(string, tag = "3")]
    pub message: String,
    /// When it was sent.
    #[prost(uint64, tag = "4")]
    pub time_ms: u64,
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

/// A user's presence as they set it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PresenceRecord {
    /// The user.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// Online, busy, away, offline.
    #[prost(enumeration = "pb::PresenceState", tag = "2")]
    pub state: i32,
    /// Free text.
    #[prost(string, tag = "3")]
    pub text: String,
    /// When it was set.
    #[prost(uint64, tag = "4")]
    pub updated_ms: u64,
    /// After this time the record no longer holds (the user is offline,
    /// last seen at `updated_ms`).
    #[prost(uint64, tag = "5")]
    pub expires_at_ms: u64,
    /// A device that counts toward presence is connected. Differs from
    /// `state != OFFLINE` only for a user who chose to appear offline.
    /// (Added after the first version: a record without it that is not
    /// OFFLINE was written while connected.)
    #[prost(bool, tag = "6")]
    pub connected: bool,
}

impl PresenceRecord {
    /// Whether the user has a device connected that counts toward presence,
    /// as this record says at `now_ms`.
    pub fn connected_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
            && (self.connected || self.state != pb::PresenceState::Offline as i32)
    }
}

/// A user's chosen presence: busy, away, appear offline, or online with a
/// text. Shown to friends whenever the user has a device connected; kept
/// until the user changes it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PresenceSetting {
    /// Online, busy, away or offline (appear offline).
    #[prost(enumeration = "pb::PresenceState", tag = "1")]
    pub state: i32,
    /// Free text.
    #[prost(string, tag = "2")]
    pub text: String,
    /// When it was chosen.
    #[prost(uint64, tag = "3")]
    pub updated_ms: u64,
}

/// A ban set by an operator (the server API): the user's devices are
/// kicked and their logins refused until it is lifted.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BanRecord {
    /// Why, for the operator and the kicked devices.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// When it was set.
    #[prost(uint64, tag = "2")]
    pub since_ms: u64,
}
