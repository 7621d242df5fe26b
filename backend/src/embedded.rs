//! The embedded store: the single-node default, durable on local disk
//! through fjall (an LSM-tree key-value store with cross-keyspace atomic
//! transactions and a write-ahead journal).
//!
//! Why fjall and not redb: docs/design/embedded-store.md (durable batched
//! appends were ~3x faster on this workload, and appends are the hot path).
//!
//! Durability: every write transaction commits with
//! [`fjall::PersistMode::SyncAll`] (the journal is fsynced before `commit`
//! returns), so anything a method returned `Ok` for survives a process kill
//! or a machine crash. [`Store::append_batch`] makes a whole batch durable
//! with one fsync (group commit). Presence is kept in memory only: it is
//! ephemeral by definition and a restart means everyone reconnects.
//!
//! This module never decides chat policy (see `crate::store`) and never
//! talks to the network.
//!
//! Layout: one keyspace per record kind; keys join ids with a `0x00` byte,
//! which no id can contain (`tern_protocol::ids::check_id`), so a prefix
//! scan of `a\0` sees exactly the records of `a`. Sequence numbers are
//! big-endian so that byte order is numeric order.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
    SingleWriterWriteTx,
};
use parking_lot::Mutex;
use prost::Message as _;
use tern_protocol::pb;

use crate::seal::{self, KeyRing, Keys};
use crate::store::{
    Append, AppendEffect, AppendRefused, Appended, BanRecord, ConvHead, Credentials, FriendRecord,
    FriendRequestRecord, GroupChange, GroupConflict, GroupMeta, JoinRequestRecord, MemberRecord,
    PresenceRecord, PresenceSetting, SocialOp, Store, StoreError, StoreResult, UserConv,
    ViewChange,
};

/// Expired dedup records purged per append batch, at most. Twice a large
/// batch, so purging keeps pace with inserting without making one commit
/// arbitrarily large after a long idle period.
const DEDUP_PURGE_PER_BATCH_MAX: usize = 1024;

/// Presence records kept in memory, at most. A full table drops expired
/// records first, then refuses nothing: it evicts the oldest half (presence
/// is best-effort by design).
const PRESENCE_RECORDS_MAX: usize = 1_000_000;

/// The embedded store. Cheap to share: wrap it in an `Arc`.
pub struct EmbeddedStore {
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
    /// Seals message contents in the log (empty: stored in clear).
    keys: Arc<Keys>,
    presence: Mutex<HashMap<Box<str>, HeldPresence>>,
}

/// A presence record as the table holds it: every online user has one, so
/// it is kept small (the id is the map's key, free text is boxed only when
/// set) — 40 bytes plus the key, where a whole [`PresenceRecord`] took 96
/// plus a second copy of the id.
#[derive(Debug, Clone)]
struct HeldPresence {
    updated_ms: u64,
    expires_at_ms: u64,
    text: Option<Box<str>>,
    state: i32,
    connected: bool,
}

impl HeldPresence {
    fn of(record: &PresenceRecord) -> Self {
        Self {
            updated_ms: record.updated_ms,
            expires_at_ms: record.expires_at_ms,
            text: (!record.text.is_empty()).then(|| record.text.as_str().into()),
            state: record.state,
            connected: record.connected,
        }
    }

    fn record(&self, user_id: &str) -> PresenceRecord {
        PresenceRecord {
            user_id: user_id.to_owned(),
            state: self.state,
            text: self.text.as_deref().unwrap_or_default().to_owned(),
            updated_ms: self.updated_ms,
            expires_at_ms: self.expires_at_ms,
            connected: self.connected,
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

struct Keyspaces {
    /// `conv \0 seq_be` → encoded `pb::Entry` (with seq set), its message
    /// content sealed when keys are set (`crate::seal::encode_entry`).
    log: SingleWriterTxKeyspace,
    /// `conv` → encoded [`ConvHead`].
    head: SingleWriterTxKeyspace,
    /// `conv \0 sender \0 client_msg_id` → seq, time_ms, expires_at_ms (BE).
    dedup: SingleWriterTxKeyspace,
    /// `expires_at_be conv \0 sender \0 client_msg_id` → empty: the purge
    /// index of `dedup`.
    dedup_exp: SingleWriterTxKeyspace,
    /// `user \0 conv` → encoded [`UserConv`].
    uconv: SingleWriterTxKeyspace,
    /// `group` → encoded [`GroupMeta`].
    group: SingleWriterTxKeyspace,
    /// `group \0 user` → encoded [`MemberRecord`].
    member: SingleWriterTxKeyspace,
    /// `group \0 user` → encoded [`JoinRequestRecord`].
    joinreq: SingleWriterTxKeyspace,
    /// `user` → encoded `pb::Profile`.
    profile: SingleWriterTxKeyspace,
    /// `user \0 friend` → encoded [`FriendRecord`].
    friend: SingleWriterTxKeyspace,
    /// `from \0 to` → encoded [`FriendRequestRecord`].
    freq_out: SingleWriterTxKeyspace,
    /// `to \0 from` → encoded [`FriendRequestRecord`].
    freq_in: SingleWriterTxKeyspace,
    /// `user \0 other` → empty.
    block: SingleWriterTxKeyspace,
    /// `user` → encoded [`PresenceSetting`].
    presence_setting: SingleWriterTxKeyspace,
    /// `user` → encoded [`BanRecord`].
    ban: SingleWriterTxKeyspace,
    /// `user` → PHC string of the password hash (local accounts).
    credential: SingleWriterTxKeyspace,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        let db = SingleWriterTxDatabase::builder(dir)
            .open()
            .map_err(|e| OpenError::new(dir, e))?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| OpenError::new(dir, e))
        };
        let ks = Keyspaces {
            log: open("log")?,
            head: open("head")?,
            dedup: open("dedup")?,
            dedup_exp: open("dedup_exp")?,
            uconv: open("uconv")?,
            group: open("group")?,
            member: open("member")?,
            joinreq: open("joinreq")?,
            profile: open("profile")?,
            friend: open("friend")?,
            freq_out: open("freq_out")?,
            freq_in: open("freq_in")?,
            block: open("block")?,
            presence_setting: open("presence_setting")?,
            ban: open("ban")?,
            credential: open("credential")?,
        };
        Ok(Self {
            db,
            ks,
            keys: Arc::default(),
            presence: Mutex::new(HashMap::new()),
        })
    }

    /// Seals the message contents it writes from now on with `keys` (and
    /// opens sealed ones with it); contents stored in clear stay readable.
    /// Without it (the default) contents are stored in clear.
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// A durable write transaction: `commit` fsyncs the journal.
    fn write_tx(&self) -> SingleWriterWriteTx<'_> {
        self.db.write_tx().durability(Some(PersistMode::SyncAll))
    }

    fn get<M: prost::Message + Default>(
        &self,
        ks: &SingleWriterTxKeyspace,
        key: &[u8],
    ) -> StoreResult<Option<M>> {
        ks.get(key)
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Decoded values of every key starting with `prefix`, in key order.
    fn scan<M: prost::Message + Default>(
        &self,
        ks: &SingleWriterTxKeyspace,
        prefix: &[u8],
    ) -> StoreResult<Vec<M>> {
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap.prefix(ks, prefix) {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }
}

impl Store for EmbeddedStore {
    fn append_batch(
        &self,
        now_ms: u64,
        items: &[Append],
    ) -> StoreResult<Vec<Result<Appended, AppendRefused>>> {
        let mut tx = self.write_tx();
        let ks = &self.ks;
        let ring = self.keys.load();
        purge_dedup(&mut tx, ks, now_ms)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(append_one(&mut tx, ks, ring.as_deref(), now_ms, item)?);
        }
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    fn dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_msg_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        let key = key3(conversation, sender, client_msg_id);
        let Some(v) = self.ks.dedup.get(key).map_err(backend)? else {
            return Ok(None);
        };
        let (seq, time_ms, expires_at_ms) = decode_dedup(&v)?;
        Ok((expires_at_ms > now_ms).then_some(Appended {
            seq,
            time_ms,
            duplicate: true,
        }))
    }

    fn heads(&self, conversations: &[&str]) -> StoreResult<Vec<ConvHead>> {
        conversations
            .iter()
            .map(|c| Ok(self.get(&self.ks.head, c.as_bytes())?.unwrap_or_default()))
            .collect()
    }

    fn entries(
        &self,
        conversation: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>> {
        if from_seq > to_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let snap = self.db.read_tx();
        let ring = self.keys.load();
        let range = log_key(conversation, from_seq)..=log_key(conversation, to_seq);
        let mut out = Vec::new();
        for guard in snap.range(&self.ks.log, range).take(limit) {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(seal::decode_entry(ring.as_deref(), conversation, &v)?);
        }
        Ok(out)
    }

    fn user_conv(&self, user: &str, conversation: &str) -> StoreResult<Option<UserConv>> {
        self.get(&self.ks.uconv, &key2(user, conversation))
    }

    fn user_convs(&self, user: &str) -> StoreResult<Vec<UserConv>> {
        self.scan(&self.ks.uconv, &prefix(user))
    }

    fn group(&self, group_id: &str) -> StoreResult<Option<GroupMeta>> {
        self.get(&self.ks.group, group_id.as_bytes())
    }

    fn group_member(&self, group_id: &str, user_id: &str) -> StoreResult<Option<MemberRecord>> {
        self.get(&self.ks.member, &key2(group_id, user_id))
    }

    fn group_members(
        &self,
        group_id: &str,
        after_user_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<MemberRecord>> {
        let start = if after_user_id.is_empty() {
            Bound::Included(prefix(group_id))
        } else {
            Bound::Excluded(key2(group_id, after_user_id))
        };
        let end = Bound::Excluded(prefix_end(group_id));
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap.range(&self.ks.member, (start, end)).take(limit) {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    fn join_request(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<JoinRequestRecord>> {
        self.get(&self.ks.joinreq, &key2(group_id, user_id))
    }

    fn apply_group_change(
        &self,
        change: &GroupChange,
    ) -> StoreResult<Result<Vec<u64>, GroupConflict>> {
        let ks = &self.ks;
        let ring = self.keys.load();
        let mut tx = self.write_tx();
        let gid = change.group_id.as_str();
        let current: Option<GroupMeta> = tx_get(&tx, &ks.group, gid.as_bytes())?;
        let version = current.map_or(0, |m| m.version);
        if version != change.expect_version {
            // Dropping the transaction discards it; nothing was written.
            return Ok(Err(GroupConflict));
        }
        let mut meta = change.meta.clone();
        meta.group_id = gid.to_owned();
        meta.version = version + 1;
        tx.insert(&ks.group, gid.as_bytes().to_vec(), meta.encode_to_vec());
        for m in &change.put_members {
            tx.insert(&ks.member, key2(gid, &m.user_id), m.encode_to_vec());
        }
        for u in &change.remove_members {
            tx.remove(&ks.member, key2(gid, u));
        }
        for r in &change.put_join_requests {
            tx.insert(&ks.joinreq, key2(gid, &r.user_id), r.encode_to_vec());
        }
        for u in &change.remove_join_requests {
            tx.remove(&ks.joinreq, key2(gid, u));
        }
        let conv = format!("g:{gid}");
        let mut head: ConvHead = tx_get(&tx, &ks.head, conv.as_bytes())?.unwrap_or_default();
        let mut seqs = Vec::with_capacity(change.entries.len());
        for entry in &change.entries {
            seqs.push(write_entry(
                &mut tx,
                ks,
                ring.as_deref(),
                &conv,
                &mut head,
                entry.clone(),
                true,
            ));
        }
        if !change.entries.is_empty() {
            tx.insert(&ks.head, conv.as_bytes().to_vec(), head.encode_to_vec());
        }
        for view in &change.views {
            match view {
                ViewChange::Join {
                    user_id,
                    at,
                    history,
                } => {
                    let s = seq_at(&seqs, *at)?;
                    let uc = UserConv {
                        conversation_id: conv.clone(),
                        visible_from_seq: if *history { 1 } else { s },
                        visible_to_seq: 0,
                        read_seq: s - 1,
                    };
                    tx.insert(&ks.uconv, key2(user_id, &conv), uc.encode_to_vec());
                }
                ViewChange::Leave { user_id, at } => {
                    let s = seq_at(&seqs, *at)?;
                    let key = key2(user_id, &conv);
                    if let Some(mut uc) = tx_get::<UserConv>(&tx, &ks.uconv, &key)? {
                        uc.visible_to_seq = s;
                        tx.insert(&ks.uconv, key, uc.encode_to_vec());
                    }
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(Ok(seqs))
    }

    fn apply_social(&self, ops: &[SocialOp]) -> StoreResult<()> {
        let ks = &self.ks;
        let mut tx = self.write_tx();
        for op in ops {
            match op {
                SocialOp::PutProfile(p) => {
                    tx.insert(
                        &ks.profile,
                        p.user_id.as_bytes().to_vec(),
                        p.encode_to_vec(),
                    );
                }
                SocialOp::PutFriend(r) => {
                    tx.insert(&ks.friend, key2(&r.user, &r.friend), r.encode_to_vec());
                }
                SocialOp::DeleteFriend { user, friend } => {
                    tx.remove(&ks.friend, key2(user, friend))
                }
                SocialOp::PutFriendRequest(r) => {
                    tx.insert(&ks.freq_out, key2(&r.from, &r.to), r.encode_to_vec());
                    tx.insert(&ks.freq_in, key2(&r.to, &r.from), r.encode_to_vec());
                }
                SocialOp::DeleteFriendRequest { from, to } => {
                    tx.remove(&ks.freq_out, key2(from, to));
                    tx.remove(&ks.freq_in, key2(to, from));
                }
                SocialOp::PutBlock { user, other } => {
                    tx.insert(&ks.block, key2(user, other), Vec::new());
                }
                SocialOp::DeleteBlock { user, other } => tx.remove(&ks.block, key2(user, other)),
            }
        }
        tx.commit().map_err(backend)
    }

    fn profile(&self, user_id: &str) -> StoreResult<Option<pb::Profile>> {
        self.get(&self.ks.profile, user_id.as_bytes())
    }

    fn friend(&self, user: &str, friend: &str) -> StoreResult<Option<FriendRecord>> {
        self.get(&self.ks.friend, &key2(user, friend))
    }

    fn friends(&self, user: &str) -> StoreResult<Vec<FriendRecord>> {
        self.scan(&self.ks.friend, &prefix(user))
    }

    fn friend_request(&self, from: &str, to: &str) -> StoreResult<Option<FriendRequestRecord>> {
        self.get(&self.ks.freq_out, &key2(from, to))
    }

    fn friend_requests(
        &self,
        user: &str,
    ) -> StoreResult<(Vec<FriendRequestRecord>, Vec<FriendRequestRecord>)> {
        Ok((
            self.scan(&self.ks.freq_in, &prefix(user))?,
            self.scan(&self.ks.freq_out, &prefix(user))?,
        ))
    }

    fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool> {
        self.ks
            .block
            .contains_key(key2(user, other))
            .map_err(backend)
    }

    fn blocked(&self, user: &str) -> StoreResult<Vec<String>> {
        let snap = self.db.read_tx();
        let p = prefix(user);
        let mut out = Vec::new();
        for guard in snap.prefix(&self.ks.block, &p) {
            let k = guard.key().map_err(backend)?;
            let other = std::str::from_utf8(&k[p.len()..])
                .map_err(|_| StoreError::Corrupt("block key is not UTF-8".into()))?;
            out.push(other.to_owned());
        }
        Ok(out)
    }

    fn put_presence(&self, record: &PresenceRecord) -> StoreResult<()> {
        let mut map = self.presence.lock();
        if map.len() >= PRESENCE_RECORDS_MAX && !map.contains_key(record.user_id.as_str()) {
            let now = record.updated_ms;
            map.retain(|_, r| r.expires_at_ms > now);
            if map.len() >= PRESENCE_RECORDS_MAX {
                let mut times: Vec<u64> = map.values().map(|r| r.updated_ms).collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                map.retain(|_, r| r.updated_ms > cut);
            }
        }
        let held = HeldPresence::of(record);
        match map.get_mut(record.user_id.as_str()) {
            Some(slot) => *slot = held,
            None => {
                map.insert(record.user_id.as_str().into(), held);
            }
        }
        Ok(())
    }

    fn presences(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceRecord>>> {
        let map = self.presence.lock();
        Ok(users
            .iter()
            .map(|u| map.get(*u).map(|held| held.record(u)))
            .collect())
    }

    fn put_presence_setting(
        &self,
        user: &str,
        setting: Option<&PresenceSetting>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx();
        match setting {
            Some(s) => tx.insert(
                &self.ks.presence_setting,
                user.as_bytes(),
                s.encode_to_vec(),
            ),
            None => tx.remove(&self.ks.presence_setting, user.as_bytes()),
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    fn presence_settings(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceSetting>>> {
        users
            .iter()
            .map(|u| self.get(&self.ks.presence_setting, u.as_bytes()))
            .collect()
    }

    fn put_ban(&self, user: &str, ban: Option<&BanRecord>) -> StoreResult<()> {
        let mut tx = self.write_tx();
        match ban {
            Some(b) => tx.insert(&self.ks.ban, user.as_bytes(), b.encode_to_vec()),
            None => tx.remove(&self.ks.ban, user.as_bytes()),
        }
        tx.commit().map_err(backend)
    }

    fn ban(&self, user: &str) -> StoreResult<Option<BanRecord>> {
        self.get(&self.ks.ban, user.as_bytes())
    }
}

impl Credentials for EmbeddedStore {
    fn credential(&self, user: &str) -> StoreResult<Option<String>> {
        self.ks
            .credential
            .get(user.as_bytes())
            .map_err(backend)?
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| StoreError::Corrupt(format!("credential of {user} is not UTF-8")))
            })
            .transpose()
    }

    fn create_credential(&self, user: &str, phc: &str) -> StoreResult<bool> {
        // One writer at a time: the check and the insert are one step.
        let mut tx = self.write_tx();
        if tx
            .get(&self.ks.credential, user.as_bytes())
            .map_err(backend)?
            .is_some()
        {
            return Ok(false);
        }
        tx.insert(&self.ks.credential, user.as_bytes(), phc.as_bytes());
        tx.commit().map_err(backend)?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------
// Appends inside one write transaction
// ---------------------------------------------------------------------------

fn append_one(
    tx: &mut SingleWriterWriteTx<'_>,
    ks: &Keyspaces,
    keys: Option<&KeyRing>,
    now_ms: u64,
    item: &Append,
) -> StoreResult<Result<Appended, AppendRefused>> {
    let conv = item.conversation.as_str();
    let dedup_key = item
        .dedup
        .as_ref()
        .map(|d| key3(conv, &d.sender, &d.client_msg_id));
    if let Some(k) = &dedup_key {
        if let Some(v) = tx.get(&ks.dedup, k).map_err(backend)? {
            let (seq, time_ms, expires_at_ms) = decode_dedup(&v)?;
            if expires_at_ms > now_ms {
                return Ok(Ok(Appended {
                    seq,
                    time_ms,
                    duplicate: true,
                }));
            }
        }
    }
    if let Some(m) = &item.member_of {
        if !tx
            .contains_key(&ks.member, key2(&m.group_id, &m.user_id))
            .map_err(backend)?
        {
            return Ok(Err(AppendRefused::NotMember));
        }
    }
    // Check the effect before writing anything, so a refusal writes nothing.
    let mut recalled: Option<(Vec<u8>, pb::Entry)> = None;
    let mut reader: Option<(Vec<u8>, UserConv)> = None;
    match &item.effect {
        AppendEffect::None => {}
        AppendEffect::Recall { seq } => {
            let key = log_key(conv, *seq);
            // The content is dropped, so it is never opened: a recall works
            // without the key a sealed content was written with.
            let target = match tx.get(&ks.log, &key).map_err(backend)? {
                Some(v) => Some(seal::decode_entry_without_content(&v)?),
                None => None,
            };
            match target {
                Some(mut e) => match &mut e.body {
                    Some(pb::entry::Body::Message(m)) if !m.recalled => {
                        m.recalled = true;
                        m.content = None;
                        // A recalled message mentions nobody any more.
                        m.mentions.clear();
                        m.mention_all = false;
                        recalled = Some((key, e));
                    }
                    _ => return Ok(Err(AppendRefused::NotRecallable)),
                },
                None => return Ok(Err(AppendRefused::NotRecallable)),
            }
        }
        AppendEffect::Read { user_id, up_to_seq } => {
            let key = key2(user_id, conv);
            match tx_get::<UserConv>(tx, &ks.uconv, &key)? {
                Some(mut uc) if uc.read_seq < *up_to_seq => {
                    uc.read_seq = *up_to_seq;
                    reader = Some((key, uc));
                }
                _ => return Ok(Err(AppendRefused::ReadNotAdvanced)),
            }
        }
    }
    let mut head: ConvHead = tx_get(tx, &ks.head, conv.as_bytes())?.unwrap_or_default();
    let seq = write_entry(
        tx,
        ks,
        keys,
        conv,
        &mut head,
        item.entry.clone(),
        item.activity,
    );
    tx.insert(&ks.head, conv.as_bytes().to_vec(), head.encode_to_vec());
    if let Some((key, e)) = recalled {
        tx.insert(&ks.log, key, e.encode_to_vec());
    }
    if let Some((key, uc)) = reader {
        tx.insert(&ks.uconv, key, uc.encode_to_vec());
    }
    for user in &item.participants {
        let key = key2(user, conv);
        if !tx.contains_key(&ks.uconv, &key).map_err(backend)? {
            let uc = UserConv {
                conversation_id: conv.to_owned(),
                visible_from_seq: 1,
                visible_to_seq: 0,
                read_seq: 0,
            };
            tx.insert(&ks.uconv, key, uc.encode_to_vec());
        }
    }
    let time_ms = item.entry.time_ms;
    if let (Some(k), Some(d)) = (dedup_key, &item.dedup) {
        let mut exp_key = d.expires_at_ms.to_be_bytes().to_vec();
        exp_key.extend_from_slice(&k);
        tx.insert(&ks.dedup_exp, exp_key, Vec::new());
        tx.insert(&ks.dedup, k, encode_dedup(seq, time_ms, d.expires_at_ms));
    }
    Ok(Ok(Appended {
        seq,
        time_ms,
        duplicate: false,
    }))
}

/// Writes `entry` as the next seq of `conv` and advances `head` (the caller
/// stores `head`). Returns the seq.
fn write_entry(
    tx: &mut SingleWriterWriteTx<'_>,
    ks: &Keyspaces,
    keys: Option<&KeyRing>,
    conv: &str,
    head: &mut ConvHead,
    mut entry: pb::Entry,
    activity: bool,
) -> u64 {
    let seq = head.seq + 1;
    entry.seq = seq;
    entry.conversation_id = conv.to_owned();
    head.seq = seq;
    head.last_time_ms = entry.time_ms;
    if activity {
        head.last_activity_ms = entry.time_ms;
    }
    tx.insert(
        &ks.log,
        log_key(conv, seq),
        seal::encode_entry(keys, conv, entry),
    );
    seq
}

/// Deletes up to [`DEDUP_PURGE_PER_BATCH_MAX`] dedup records that expired
/// before `now_ms`.
fn purge_dedup(tx: &mut SingleWriterWriteTx<'_>, ks: &Keyspaces, now_ms: u64) -> StoreResult<()> {
    let end = now_ms.to_be_bytes().to_vec();
    let mut expired = Vec::new();
    for guard in tx
        .range(&ks.dedup_exp, ..end)
        .take(DEDUP_PURGE_PER_BATCH_MAX)
    {
        expired.push(guard.key().map_err(backend)?);
    }
    for k in expired {
        let dedup_key = k[8..].to_vec();
        // A later send with the same key may have rewritten the record with
        // a later expiry; only delete the record this index entry is for.
        if let Some(v) = tx.get(&ks.dedup, &dedup_key).map_err(backend)? {
            let (_, _, exp) = decode_dedup(&v)?;
            if exp.to_be_bytes() == k[..8] {
                tx.remove(&ks.dedup, dedup_key);
            }
        }
        tx.remove(&ks.dedup_exp, k);
    }
    Ok(())
}

fn seq_at(seqs: &[u64], at: usize) -> StoreResult<u64> {
    seqs.get(at).copied().ok_or_else(|| {
        StoreError::Backend(format!(
            "view change refers to entry {at} of {}",
            seqs.len()
        ))
    })
}

// ---------------------------------------------------------------------------
// Keys and values
// ---------------------------------------------------------------------------

fn prefix(a: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k
}

/// The first key after every key with `prefix(a)`.
fn prefix_end(a: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(1);
    k
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = prefix(a);
    k.extend_from_slice(b.as_bytes());
    k
}

fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

fn log_key(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn encode_dedup(seq: u64, time_ms: u64, expires_at_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&time_ms.to_be_bytes());
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v
}

fn decode_dedup(v: &[u8]) -> StoreResult<(u64, u64, u64)> {
    let word = |i: usize| -> StoreResult<u64> {
        v.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("dedup record shorter than 24 bytes".into()))
    };
    Ok((word(0)?, word(1)?, word(2)?))
}

fn tx_get<M: prost::Message + Default>(
    tx: &SingleWriterWriteTx<'_>,
    ks: &SingleWriterTxKeyspace,
    key: &[u8],
) -> StoreResult<Option<M>> {
    tx.get(ks, key)
        .map_err(backend)?
        .map(|v| decode(&v))
        .transpose()
}

fn decode<M: prost::Message + Default>(v: &[u8]) -> StoreResult<M> {
    M::decode(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Why [`EmbeddedStore::open`] failed; names the data dir.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the data dir's lock: two processes must never
    /// share one store.
    #[error("another tern is using data dir {}", .dir.display())]
    Locked {
        /// The data dir.
        dir: std::path::PathBuf,
    },
    /// The data dir could not be created, read or recovered.
    #[error("data dir {}: {reason}", .dir.display())]
    Failed {
        /// The data dir.
        dir: std::path::PathBuf,
        /// What fjall said (an I/O error's text where it is one).
        reason: String,
    },
}

impl OpenError {
    fn new(dir: &Path, e: fjall::Error) -> Self {
        let dir = dir.to_path_buf();
        match e {
            fjall::Error::Locked => Self::Locked { dir },
            fjall::Error::Io(io) => Self::Failed {
                dir,
                reason: io.to_string(),
            },
            other => Self::Failed {
                dir,
                reason: other.to_string(),
            },
        }
    }
}

fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
