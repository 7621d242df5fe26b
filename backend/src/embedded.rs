//! The embedded store: the single-node default, durable on local disk
//! through fjall (an LSM-tree key-value store with cross-keyspace atomic
//! transactions and a write-ahead journal).
//!
//! Why fjall and not redb: docs/design/embedded-store.md (durable batched
//! appends were ~3x faster on this workload, and appends are the hot path).
//!
//! Durability: anything a method returned `Ok` for survives a process kill
//! or a machine crash: every write transaction commits with
//! [`fjall::PersistMode::SyncAll`] (the journal is fsynced before `commit`
//! returns), except the appends of messages, which are pipelined (below).
//! [`Store::append_batch`] makes a whole batch durable with one fsync (group
//! commit). Presence is kept in memory only: it is ephemeral by definition
//! and a restart means everyone reconnects.
//!
//! Pipelined group commit: a batch of plain appends (no recall or read
//! effect) is committed without an fsync inside fjall's writer lock and
//! made durable by `persist` just after it, outside the lock, so the next
//! batch (another backend worker's) prepares meanwhile instead of waiting
//! for the fsync. `append_batch` returns only after that fsync, so acks
//! still follow durability; and until it is done the batch's conversations
//! are marked *unsynced* with their last durable head: [`Store::heads`] and
//! [`Store::entries`] show nothing past it, so a seq is never visible
//! before it is durable (a crash before the fsync may lose such a seq, and
//! reuse it, but nobody has seen or been acked it).
//!
//! Append caches: conversation heads and the existence of user-conversation
//! records are kept in memory for the append path (filled only after a
//! commit, so they hold only committed state), which saves the head read
//! and the two record reads of a 1:1 send. Every other write transaction
//! (`write_tx`) empties them, so a write path that moves a head or touches
//! those records (group changes, or one added later) can never leave a
//! stale head behind: a stale head would reuse a seq.
//!
//! This module never decides chat policy (see `crate::store`) and never
//! talks to the network.
//!
//! Layout: one keyspace per record kind; keys join ids with a `0x00` byte,
//! which no id can contain (`tern_protocol::ids::check_id`), so a prefix
//! scan of `a\0` sees exactly the records of `a`. Sequence numbers are
//! big-endian so that byte order is numeric order.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context as FilterContext, Factory as FilterFactory,
    ItemAccessor, Verdict,
};
use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
    SingleWriterWriteTx,
};
use parking_lot::Mutex;
use prost::Message as _;
use tern_protocol::pb;

use crate::seal::{self, KeyRing, Keys};
use crate::store::{
    Annotation, Append, AppendEffect, AppendRefused, Appended, AuditLog, AuditRecord, BanRecord,
    CallSlot, ConvHead, Credentials, DeptMember, DeptRecord, FriendRecord, FriendRequestRecord,
    GroupChange, GroupConflict, GroupMeta, JoinRequestRecord, MemberRecord, OrgStore,
    PresenceRecord, PresenceSetting, PushBind, PushSettings, PushUnbind, RoomRecord, SocialOp,
    Store, StoreError, StoreResult, ThreadStat, TodoRecord, UserConv, ViewChange,
};

/// Presence records kept in memory, at most. A full table drops expired
/// records first, then refuses nothing: it evicts the oldest half (presence
/// is best-effort by design).
const PRESENCE_RECORDS_MAX: usize = 1_000_000;

/// Conversation heads kept by the append cache, at most (~80 B each); a
/// full cache starts over (misses read the store).
const HEADS_CACHED_MAX: usize = 262_144;

/// User-conversation records the append cache knows to exist, at most
/// (~60 B each); a full set starts over.
const UCONVS_CACHED_MAX: usize = 262_144;

/// One result per item of an append batch.
type AppendResults = Vec<Result<Appended, AppendRefused>>;

/// The embedded store. Cheap to share: wrap it in an `Arc`.
pub struct EmbeddedStore {
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
    /// Seals message contents in the log (empty: stored in clear).
    keys: Arc<Keys>,
    presence: Mutex<HashMap<Box<str>, HeldPresence>>,
    /// The free-space reserve of the data dir's filesystem.
    disk: DiskReserve,
    /// The append path's caches; held by `append_batch` from before its
    /// write transaction until the caches hold what it committed, so the
    /// next batch always starts from them (see the module doc).
    append: Mutex<AppendCache>,
    /// Bumped by every write transaction but `append_batch`'s, inside
    /// fjall's writer lock: the append cache is valid only while it is
    /// unchanged.
    writes_other: AtomicU64,
    /// Conversations with appends committed but not yet fsynced, with their
    /// last durable head: what readers see of them until the fsync.
    unsynced: Mutex<HashMap<Box<str>, Unsynced>>,
    /// Calls in progress: in memory only (one node; a restart ends them,
    /// as it ends their connections). Bounded by the domain's `calls_max`
    /// plus lapsed calls, purged when the map doubles.
    calls: Mutex<HeldCalls>,
    /// The newest `now_ms` an append batch was given: the clock of
    /// [`DedupExpiry`] (0 until the first append: nothing has expired).
    appended_now_ms: Arc<AtomicU64>,
}

/// Drops expired dedup records when a compaction rewrites them (fjall's
/// compaction filter), so the append path writes one dedup record per send
/// and deletes nothing: an expired record is already treated as absent by
/// every lookup, and it leaves the disk at the next compaction of its
/// table. (It replaced a purge index: one more insert per send and a range
/// scan per batch; docs/benchmarks.md, "Step 4", for what that saved.)
///
/// Its clock is the newest `now_ms` an append was given, not the system's:
/// the same clock the lookups compare with, so a record is dropped only
/// once a lookup would no longer answer it.
struct DedupExpiry {
    now_ms: Arc<AtomicU64>,
}

impl FilterFactory for DedupExpiry {
    fn name(&self) -> &str {
        "tern-dedup-expiry"
    }

    fn make_filter(&self, _: &FilterContext) -> Box<dyn CompactionFilter> {
        Box::new(DedupExpiryFilter {
            now_ms: self.now_ms.load(Ordering::Acquire),
        })
    }
}

/// One compaction's [`DedupExpiry`], with "now" read as it started.
struct DedupExpiryFilter {
    now_ms: u64,
}

impl CompactionFilter for DedupExpiryFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &FilterContext) -> CompactionFilterResult {
        let value = item.value()?;
        // A record that does not decode is kept: the lookup reports it.
        Ok(match decode_dedup(&value) {
            Ok((_, _, expires_at_ms)) if expires_at_ms <= self.now_ms => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}

/// The calls of [`Store::call`] and the methods after it.
#[derive(Debug, Default)]
struct HeldCalls {
    /// id → (version, state, lease end in the caller's ms).
    map: HashMap<Box<str>, (u64, Vec<u8>, u64)>,
    /// The map's size after the last purge of lapsed calls.
    purged_len: usize,
}

/// The append path's caches (see the module doc), as of the last commit.
#[derive(Debug, Default)]
struct AppendCache {
    /// `writes_other` when the cache was filled.
    generation: u64,
    /// conversation → its head (durable or not: the next seq follows it).
    heads: HashMap<Box<str>, ConvHead>,
    /// `user \0 conv` keys of user-conversation records that exist (they
    /// are never deleted).
    uconvs: HashSet<Box<[u8]>>,
}

/// A conversation with appends committed but not yet fsynced.
#[derive(Debug, Clone, Copy)]
struct Unsynced {
    /// Its head before the first of those appends: durable.
    durable: ConvHead,
    /// Batches still to be fsynced that appended to it.
    batches: u32,
}

/// What one `append_batch` did, for the head writes, the caches and the
/// unsynced marks.
#[derive(Debug, Default)]
struct BatchWrites {
    /// conversation → (head before the batch, head after it). Each head is
    /// written once per batch, however many items went to it.
    heads: HashMap<String, (ConvHead, ConvHead)>,
    /// Keys of user-conversation records seen or created.
    uconvs: Vec<Vec<u8>>,
}

/// Writes are refused ([`StoreError::Full`]) while the filesystem of the
/// store's directory has less than `free_min_bytes` free: fjall treats a
/// failed journal write (ENOSPC) as fatal and refuses every later write
/// until the process restarts, so the store stops short of it and resumes
/// by itself once space returns. One `statvfs` per commit. 0: off.
#[derive(Debug)]
struct DiskReserve {
    dir: std::path::PathBuf,
    free_min_bytes: u64,
}

impl DiskReserve {
    fn check(&self) -> StoreResult<()> {
        if self.free_min_bytes == 0 {
            return Ok(());
        }
        let Ok(st) = nix::sys::statvfs::statvfs(&self.dir) else {
            // The probe failed: let fjall meet whatever is wrong.
            return Ok(());
        };
        #[allow(clippy::unnecessary_cast)] // their widths differ by platform
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        if free < self.free_min_bytes {
            return Err(StoreError::Full(format!(
                "{free} bytes free under {}, {} reserved",
                self.dir.display(),
                self.free_min_bytes
            )));
        }
        Ok(())
    }
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
    /// `conv \0 sender \0 client_msg_id` → seq, time_ms, expires_at_ms (BE);
    /// expired records are dropped by compaction ([`DedupExpiry`]).
    dedup: SingleWriterTxKeyspace,
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
    // ---- search (issue 19) ----
    /// `conv \0 token \0 seq_be` → empty: the search index's postings
    /// (tokens in clear: docs/security.md, "What is stored in clear").
    search: SingleWriterTxKeyspace,
    /// `conv` → seq_be: the index mark (the log is indexed up to it).
    search_mark: SingleWriterTxKeyspace,
    /// `conv \0 r seq_be` (a message's reactions) or `conv \0 p` (the
    /// conversation's pins) → the domain's record bytes
    /// (`crate::store::Annotation`).
    annot: SingleWriterTxKeyspace,
    /// `conv \0 root_be seq_be` → empty: the thread index (replies not
    /// recalled, per root).
    thread: SingleWriterTxKeyspace,
    /// `user \0 conv \0 root_be` → seq_be: thread read marks.
    thread_read: SingleWriterTxKeyspace,
    /// `conv \0 seq_be` → encoded [`TodoRecord`].
    todo: SingleWriterTxKeyspace,
    /// `user \0 conv \0 seq_be` → empty: the user's open to-dos (a
    /// superset, see [`Store::set_todo_open`]).
    todo_open: SingleWriterTxKeyspace,
    // ---- offline push (issue 20) ----
    /// `user \0 platform_byte token` → encoded `pb::PushToken`.
    push_token: SingleWriterTxKeyspace,
    /// `platform_byte token` → user: who holds a token (one user at a time).
    push_owner: SingleWriterTxKeyspace,
    /// `user` → encoded [`PushSettings`].
    push_settings: SingleWriterTxKeyspace,
    // ---- rooms (issue 19) ----
    /// `room` → encoded [`RoomRecord`].
    room: SingleWriterTxKeyspace,
    /// `room` → seq_be: the room's newest seq.
    room_head: SingleWriterTxKeyspace,
    /// `room \0 seq_be` → encoded `pb::Entry` (sealed like a log entry):
    /// the newest `keep` messages (older ones are removed by the append
    /// that pushes them out).
    room_log: SingleWriterTxKeyspace,
    // ---- the audit log (issue 20, docs/tenants.md) ----
    /// `tenant \0` → seq_be: the newest record's seq.
    audit_head: SingleWriterTxKeyspace,
    /// `tenant \0 seq_be` → encoded [`AuditRecord`], the newest `keep`.
    audit: SingleWriterTxKeyspace,
    // ---- departments (issue 20, docs/tenants.md) ----
    /// `tenant \0 dept` → encoded [`DeptRecord`].
    dept: SingleWriterTxKeyspace,
    /// `dept \0 user` → encoded [`DeptMember`] (dept ids carry their
    /// tenant, so they are unique across tenants).
    dept_member: SingleWriterTxKeyspace,
    /// `user \0 dept` → empty: the departments of a user.
    user_dept: SingleWriterTxKeyspace,
    /// `tenant \0 user` → empty: a held seat; `tenant \0` → count_be.
    seat: SingleWriterTxKeyspace,
    /// `tenant \0` → bytes_be: a tenant's stored media, as counted.
    storage: SingleWriterTxKeyspace,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        let appended_now_ms = Arc::new(AtomicU64::new(0));
        let expiry: Arc<dyn FilterFactory> = Arc::new(DedupExpiry {
            now_ms: Arc::clone(&appended_now_ms),
        });
        let db = SingleWriterTxDatabase::builder(dir)
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == "dedup").then(|| Arc::clone(&expiry))
            }))
            .open()
            .map_err(|e| OpenError::new(dir, e))?;
        // Stores written before the compaction filter kept a purge index
        // of the dedup records: it is dropped (the filter covers them).
        if db.keyspace_exists("dedup_exp") {
            let old = db
                .keyspace("dedup_exp", KeyspaceCreateOptions::default)
                .map_err(|e| OpenError::new(dir, e))?;
            db.inner()
                .delete_keyspace(old.inner().clone())
                .map_err(|e| OpenError::new(dir, e))?;
        }
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| OpenError::new(dir, e))
        };
        let ks = Keyspaces {
            log: open("log")?,
            head: open("head")?,
            dedup: open("dedup")?,
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
            search: open("search")?,
            search_mark: open("search_mark")?,
            annot: open("annot")?,
            thread: open("thread")?,
            thread_read: open("thread_read")?,
            todo: open("todo")?,
            todo_open: open("todo_open")?,
            push_token: open("push_token")?,
            push_owner: open("push_owner")?,
            push_settings: open("push_settings")?,
            room: open("room")?,
            room_head: open("room_head")?,
            room_log: open("room_log")?,
            audit_head: open("audit_head")?,
            audit: open("audit")?,
            dept: open("dept")?,
            dept_member: open("dept_member")?,
            user_dept: open("user_dept")?,
            seat: open("seat")?,
            storage: open("storage")?,
        };
        let disk = DiskReserve {
            dir: dir.to_path_buf(),
            free_min_bytes: 0,
        };
        Ok(Self {
            db,
            ks,
            keys: Arc::default(),
            presence: Mutex::new(HashMap::new()),
            disk,
            append: Mutex::new(AppendCache::default()),
            writes_other: AtomicU64::new(0),
            unsynced: Mutex::new(HashMap::new()),
            calls: Mutex::new(HeldCalls::default()),
            appended_now_ms,
        })
    }

    /// Refuses writes with [`StoreError::Full`] (nothing written) while the
    /// data dir's filesystem has fewer than `bytes` free (0, the default:
    /// never). See `DiskReserve`.
    pub fn with_disk_free_min(mut self, bytes: u64) -> Self {
        self.disk.free_min_bytes = bytes;
        self
    }

    /// Commits `tx` durably, unless the disk is below its reserve.
    fn commit(&self, tx: SingleWriterWriteTx<'_>) -> StoreResult<()> {
        self.disk.check()?;
        tx.commit().map_err(backend)
    }

    /// Seals the message contents it writes from now on with `keys` (and
    /// opens sealed ones with it); contents stored in clear stay readable.
    /// Without it (the default) contents are stored in clear.
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// A durable write transaction: `commit` fsyncs the journal. Empties
    /// the append cache (by bumping `writes_other` inside the writer lock),
    /// since this write may move a head: every write but `append_batch`
    /// goes through here.
    fn write_tx(&self) -> SingleWriterWriteTx<'_> {
        let tx = self.db.write_tx().durability(Some(PersistMode::SyncAll));
        self.writes_other.fetch_add(1, Ordering::AcqRel);
        tx
    }

    /// Marks the conversations `batch` appended to as unsynced (before its
    /// commit makes them visible).
    fn mark_unsynced(&self, batch: &BatchWrites) {
        let mut unsynced = self.unsynced.lock();
        for (conv, (before, _)) in &batch.heads {
            unsynced
                .entry(conv.as_str().into())
                .or_insert(Unsynced {
                    durable: *before,
                    batches: 0,
                })
                .batches += 1;
        }
    }

    /// Takes back the marks of [`Self::mark_unsynced`] (after the fsync, or
    /// a commit that failed).
    fn unmark_unsynced(&self, batch: &BatchWrites) {
        let mut unsynced = self.unsynced.lock();
        for conv in batch.heads.keys() {
            if let Some(u) = unsynced.get_mut(conv.as_str()) {
                u.batches = u.batches.saturating_sub(1);
                if u.batches == 0 {
                    unsynced.remove(conv.as_str());
                }
            }
        }
    }

    /// The last durable head of `conv` if it has unsynced appends.
    fn durable_head(&self, conv: &str) -> Option<ConvHead> {
        let unsynced = self.unsynced.lock();
        if unsynced.is_empty() {
            return None;
        }
        unsynced.get(conv).map(|u| u.durable)
    }

    /// The first stage of `append_batch`: everything up to the commit, and
    /// the append cache updated. A pipelined batch (plain appends) comes
    /// back committed but not fsynced, its conversations marked unsynced:
    /// [`Self::sync_appends`] finishes it. Any other batch is durable.
    fn commit_appends(
        &self,
        now_ms: u64,
        items: &[Append],
    ) -> StoreResult<(AppendResults, Option<BatchWrites>)> {
        // Plain appends are pipelined (module doc); a recall or a read mark
        // changes existing records, which no watermark hides: such a batch
        // is fsynced inside the lock as before.
        let pipelined = items.iter().all(|i| matches!(i.effect, AppendEffect::None));
        // Below the disk reserve nothing is written (see `DiskReserve`).
        self.disk.check()?;
        let ks = &self.ks;
        let ring = self.keys.load();
        let mut cache = self.append.lock();
        let mut tx = self
            .db
            .write_tx()
            .durability((!pipelined).then_some(PersistMode::SyncAll));
        let generation = self.writes_other.load(Ordering::Acquire);
        if cache.generation != generation {
            cache.heads.clear();
            cache.uconvs.clear();
            cache.generation = generation;
        }
        self.appended_now_ms.fetch_max(now_ms, Ordering::AcqRel);
        let mut batch = BatchWrites::default();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(append_one(
                &mut tx,
                ks,
                ring.as_deref(),
                now_ms,
                item,
                &cache,
                &mut batch,
            )?);
        }
        for (conv, (_, after)) in &batch.heads {
            tx.insert(&ks.head, conv.as_bytes().to_vec(), after.encode_to_vec());
        }
        if pipelined {
            self.mark_unsynced(&batch);
        }
        if let Err(e) = tx.commit() {
            if pipelined {
                self.unmark_unsynced(&batch);
            }
            // What the failed commit left is unknown: read it again.
            cache.heads.clear();
            cache.uconvs.clear();
            return Err(backend(e));
        }
        if cache.heads.len() + batch.heads.len() > HEADS_CACHED_MAX {
            cache.heads.clear();
        }
        for (conv, (_, after)) in &batch.heads {
            cache.heads.insert(conv.as_str().into(), *after);
        }
        if cache.uconvs.len() + batch.uconvs.len() > UCONVS_CACHED_MAX {
            cache.uconvs.clear();
        }
        for key in std::mem::take(&mut batch.uconvs) {
            cache.uconvs.insert(key.into_boxed_slice());
        }
        // The next batch may prepare (and commit) while this one fsyncs.
        drop(cache);
        Ok((out, pipelined.then_some(batch)))
    }

    /// The second stage of a pipelined `append_batch`: the fsync (when
    /// anything is to be acked), then the unsynced marks go. Also covers
    /// every commit before it (the journal is one sequential file): a
    /// duplicate found in another worker's unsynced batch is durable when
    /// this returns too. On failure the marks stay: fjall refuses every
    /// later write, and what the batch committed is never shown.
    fn sync_appends(&self, batch: &BatchWrites, acks: bool) -> StoreResult<()> {
        if acks {
            self.db.persist(PersistMode::SyncAll).map_err(backend)?;
        }
        self.unmark_unsynced(batch);
        Ok(())
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

/// The key of a push token: its platform as one byte, then the token.
fn push_key(platform: i32, token: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(token.len() + 1);
    // Platforms are small enum values (1, 2): one byte holds them.
    k.push(u8::try_from(platform).unwrap_or(u8::MAX));
    k.extend_from_slice(token.as_bytes());
    k
}

/// `user \0 push_key`.
fn user_push_key(user: &str, platform: i32, token: &str) -> Vec<u8> {
    let mut k = prefix(user);
    k.extend_from_slice(&push_key(platform, token));
    k
}

impl EmbeddedStore {
    /// The tokens `user` holds, read in `tx` (the write being prepared).
    fn push_tokens_in(
        &self,
        tx: &SingleWriterWriteTx<'_>,
        user: &str,
    ) -> StoreResult<Vec<pb::PushToken>> {
        let mut out = Vec::new();
        for guard in tx.prefix(&self.ks.push_token, prefix(user)) {
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
        let (out, unsynced) = self.commit_appends(now_ms, items)?;
        if let Some(batch) = unsynced {
            self.sync_appends(&batch, out.iter().any(Result::is_ok))?;
        }
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
        if expires_at_ms <= now_ms {
            return Ok(None);
        }
        // The record may be of a batch still being fsynced (another
        // worker's): the original ack is answered only once it is durable.
        if self.durable_head(conversation).is_some_and(|h| h.seq < seq) {
            self.db.persist(PersistMode::SyncAll).map_err(backend)?;
        }
        Ok(Some(Appended {
            seq,
            time_ms,
            duplicate: true,
        }))
    }

    fn heads(&self, conversations: &[&str]) -> StoreResult<Vec<ConvHead>> {
        conversations
            .iter()
            .map(|c| {
                // Store first, marks second: an unsynced head read here was
                // marked before its commit, and is unmarked only once durable.
                let stored = self.get(&self.ks.head, c.as_bytes())?.unwrap_or_default();
                Ok(self.durable_head(c).unwrap_or(stored))
            })
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
        // Read first, marks second (as in `heads`): nothing past the last
        // durable head is shown.
        if let Some(durable) = self.durable_head(conversation) {
            out.retain(|e| e.seq <= durable.seq);
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
        self.commit(tx)?;
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
        self.commit(tx)
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

    fn call(&self, id: &str, now_ms: u64) -> StoreResult<Option<CallSlot>> {
        let calls = self.calls.lock();
        Ok(calls
            .map
            .get(id)
            .filter(|(_, _, until)| *until > now_ms)
            .map(|(version, state, _)| CallSlot {
                version: *version,
                state: state.clone(),
            }))
    }

    fn put_call(
        &self,
        id: &str,
        expected: u64,
        state: &[u8],
        now_ms: u64,
        lease_ms: u64,
    ) -> StoreResult<bool> {
        let mut calls = self.calls.lock();
        let current = match calls.map.get(id) {
            Some((v, _, until)) if *until > now_ms => *v,
            _ => 0,
        };
        if current != expected {
            return Ok(false);
        }
        if calls.map.len() >= 2 * calls.purged_len.max(512) {
            calls.map.retain(|_, (_, _, until)| *until > now_ms);
            calls.purged_len = calls.map.len();
        }
        let until = now_ms.saturating_add(lease_ms);
        calls
            .map
            .insert(id.into(), (expected + 1, state.to_vec(), until));
        Ok(true)
    }

    fn remove_call(&self, id: &str, expected: u64) -> StoreResult<bool> {
        let mut calls = self.calls.lock();
        match calls.map.get(id) {
            Some((v, _, _)) if *v == expected => {
                calls.map.remove(id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn renew_calls(&self, ids: &[&str], now_ms: u64, lease_ms: u64) -> StoreResult<Vec<bool>> {
        let mut calls = self.calls.lock();
        Ok(ids
            .iter()
            .map(|id| match calls.map.get_mut(*id) {
                Some((_, _, until)) if *until > now_ms => {
                    *until = now_ms.saturating_add(lease_ms);
                    true
                }
                _ => false,
            })
            .collect())
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
        self.commit(tx)?;
        Ok(())
    }

    fn presence_settings(&self, users: &[&str]) -> StoreResult<Vec<Option<PresenceSetting>>> {
        users
            .iter()
            .map(|u| self.get(&self.ks.presence_setting, u.as_bytes()))
            .collect()
    }

    fn push_bind(
        &self,
        user: &str,
        record: &pb::PushToken,
        tokens_max: usize,
    ) -> StoreResult<PushBind> {
        // One writer at a time: the count, the move and the insert are one
        // step.
        let mut tx = self.write_tx();
        let held = self.push_tokens_in(&tx, user)?;
        let same = |t: &pb::PushToken| t.platform == record.platform && t.token == record.token;
        let replaced: Vec<&pb::PushToken> = held
            .iter()
            .filter(|t| {
                !same(t) && t.platform == record.platform && t.device_id == record.device_id
            })
            .collect();
        let others = held
            .iter()
            .filter(|t| !same(t) && !replaced.iter().any(|r| r.token == t.token))
            .count();
        if others >= tokens_max {
            return Ok(PushBind::Full);
        }
        for r in &replaced {
            tx.remove(
                &self.ks.push_token,
                user_push_key(user, r.platform, &r.token),
            );
            tx.remove(&self.ks.push_owner, push_key(r.platform, &r.token));
        }
        let owner_key = push_key(record.platform, &record.token);
        let moved_from = match tx.get(&self.ks.push_owner, &owner_key).map_err(backend)? {
            Some(v) if v.as_ref() != user.as_bytes() => {
                let other = String::from_utf8(v.to_vec())
                    .map_err(|_| StoreError::Corrupt("push token owner is not UTF-8".into()))?;
                tx.remove(
                    &self.ks.push_token,
                    user_push_key(&other, record.platform, &record.token),
                );
                Some(other)
            }
            _ => None,
        };
        tx.insert(&self.ks.push_owner, owner_key, user.as_bytes());
        tx.insert(
            &self.ks.push_token,
            user_push_key(user, record.platform, &record.token),
            record.encode_to_vec(),
        );
        self.commit(tx)?;
        Ok(PushBind::Bound {
            moved_from,
            replaced: replaced.first().map(|r| r.token.clone()),
        })
    }

    fn push_unbind(
        &self,
        user: Option<&str>,
        platform: i32,
        token: &str,
    ) -> StoreResult<PushUnbind> {
        let mut tx = self.write_tx();
        let owner_key = push_key(platform, token);
        let Some(owner) = tx.get(&self.ks.push_owner, &owner_key).map_err(backend)? else {
            return Ok(PushUnbind::NotFound);
        };
        let owner = String::from_utf8(owner.to_vec())
            .map_err(|_| StoreError::Corrupt("push token owner is not UTF-8".into()))?;
        if user.is_some_and(|u| u != owner) {
            return Ok(PushUnbind::NotYours);
        }
        tx.remove(&self.ks.push_owner, owner_key);
        tx.remove(&self.ks.push_token, user_push_key(&owner, platform, token));
        self.commit(tx)?;
        Ok(PushUnbind::Removed)
    }

    fn push_tokens(&self, user: &str) -> StoreResult<Vec<pb::PushToken>> {
        self.scan(&self.ks.push_token, &prefix(user))
    }

    fn push_settings(&self, user: &str) -> StoreResult<Option<PushSettings>> {
        self.get(&self.ks.push_settings, user.as_bytes())
    }

    fn put_push_settings(&self, user: &str, settings: Option<&PushSettings>) -> StoreResult<()> {
        let mut tx = self.write_tx();
        match settings {
            Some(s) => tx.insert(&self.ks.push_settings, user.as_bytes(), s.encode_to_vec()),
            None => tx.remove(&self.ks.push_settings, user.as_bytes()),
        }
        self.commit(tx)
    }

    fn put_ban(&self, user: &str, ban: Option<&BanRecord>) -> StoreResult<()> {
        let mut tx = self.write_tx();
        match ban {
            Some(b) => tx.insert(&self.ks.ban, user.as_bytes(), b.encode_to_vec()),
            None => tx.remove(&self.ks.ban, user.as_bytes()),
        }
        self.commit(tx)
    }

    fn ban(&self, user: &str) -> StoreResult<Option<BanRecord>> {
        self.get(&self.ks.ban, user.as_bytes())
    }

    fn take_seat(&self, tenant: &str, user: &str, max: u64) -> StoreResult<bool> {
        let (key, count_key) = (key2(tenant, user), prefix(tenant));
        // One writer at a time: the count read here is the one moved.
        let mut tx = self.write_tx();
        if tx.get(&self.ks.seat, &key).map_err(backend)?.is_some() {
            return Ok(true);
        }
        let held = match tx.get(&self.ks.seat, &count_key).map_err(backend)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        if held >= max {
            return Ok(false);
        }
        tx.insert(&self.ks.seat, key, []);
        tx.insert(&self.ks.seat, count_key, (held + 1).to_be_bytes().to_vec());
        self.commit(tx)?;
        Ok(true)
    }

    fn edit_dedup_lookup(
        &self,
        conversation: &str,
        sender: &str,
        client_edit_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<Appended>> {
        // Kept apart from message ids as `append_one` writes it.
        self.dedup_lookup(conversation, sender, &format!("e:{client_edit_id}"), now_ms)
    }

    fn annotations(
        &self,
        conversation: &str,
        keys: &[Annotation],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        keys.iter()
            .map(|k| {
                Ok(self
                    .ks
                    .annot
                    .get(annot_key(conversation, *k))
                    .map_err(backend)?
                    .map(|v| v.to_vec()))
            })
            .collect()
    }
    fn thread_stats(
        &self,
        conversation: &str,
        roots: &[(u64, u64)],
    ) -> StoreResult<Vec<ThreadStat>> {
        let snap = self.db.read_tx();
        let mut out = Vec::with_capacity(roots.len());
        for &(root, after_seq) in roots {
            let range =
                thread_key(conversation, root, 0)..=thread_key(conversation, root, u64::MAX);
            let mut stat = ThreadStat::default();
            // Counting walks the thread's keys (small, no values): a thread
            // of 10,000 replies is 10,000 keys of ~30 bytes.
            for guard in snap.range(&self.ks.thread, range) {
                let seq = thread_key_seq(&guard.key().map_err(backend)?)?;
                stat.replies += 1;
                if seq > after_seq {
                    stat.after += 1;
                }
                stat.last_seq = stat.last_seq.max(seq);
            }
            out.push(stat);
        }
        Ok(out)
    }

    fn thread_replies(
        &self,
        conversation: &str,
        root: u64,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        let upper = if before_seq == 0 {
            Bound::Included(thread_key(conversation, root, u64::MAX))
        } else {
            Bound::Excluded(thread_key(conversation, root, before_seq))
        };
        let lower = Bound::Included(thread_key(conversation, root, 0));
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap
            .range(&self.ks.thread, (lower, upper))
            .rev()
            .take(limit)
        {
            out.push(thread_key_seq(&guard.key().map_err(backend)?)?);
        }
        Ok(out)
    }

    fn thread_read_marks(
        &self,
        user: &str,
        conversation: &str,
        roots: &[u64],
    ) -> StoreResult<Vec<u64>> {
        let snap = self.db.read_tx();
        roots
            .iter()
            .map(|&root| {
                let v = snap
                    .get(
                        &self.ks.thread_read,
                        thread_read_key(user, conversation, root),
                    )
                    .map_err(backend)?;
                v.map_or(Ok(0), |v| be_u64(&v))
            })
            .collect()
    }

    fn mark_thread_read(
        &self,
        user: &str,
        conversation: &str,
        root: u64,
        up_to_seq: u64,
    ) -> StoreResult<()> {
        let key = thread_read_key(user, conversation, root);
        let mut tx = self.write_tx();
        let old = match tx.get(&self.ks.thread_read, &key).map_err(backend)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        if old >= up_to_seq {
            return Ok(());
        }
        tx.insert(&self.ks.thread_read, key, up_to_seq.to_be_bytes().to_vec());
        self.commit(tx)
    }

    fn room_create(&self, room: &RoomRecord) -> StoreResult<bool> {
        let mut tx = self.write_tx();
        let id = room.room_id.as_bytes();
        if tx.get(&self.ks.room, id).map_err(backend)?.is_some() {
            return Ok(false);
        }
        tx.insert(&self.ks.room, id.to_vec(), room.encode_to_vec());
        self.commit(tx)?;
        Ok(true)
    }

    fn room(&self, room_id: &str) -> StoreResult<Option<(RoomRecord, u64)>> {
        let snap = self.db.read_tx();
        let Some(v) = snap.get(&self.ks.room, room_id).map_err(backend)? else {
            return Ok(None);
        };
        let head = match snap.get(&self.ks.room_head, room_id).map_err(backend)? {
            Some(h) => be_u64(&h)?,
            None => 0,
        };
        Ok(Some((decode(&v)?, head)))
    }

    fn room_append(
        &self,
        room_id: &str,
        mut entry: pb::Entry,
        keep: usize,
    ) -> StoreResult<Option<u64>> {
        let conv = tern_protocol::ids::room_conversation(room_id);
        let ring = self.keys.load();
        // One writer at a time (fjall's single-writer transaction): the
        // head read here is the one this commit moves.
        let mut tx = self.write_tx();
        if tx.get(&self.ks.room, room_id).map_err(backend)?.is_none() {
            return Ok(None);
        }
        let head = match tx.get(&self.ks.room_head, room_id).map_err(backend)? {
            Some(h) => be_u64(&h)?,
            None => 0,
        };
        let seq = head + 1;
        entry.seq = seq;
        entry.conversation_id.clone_from(&conv);
        let bytes = seal::encode_entry(ring.as_deref(), &conv, entry);
        tx.insert(&self.ks.room_log, log_key(room_id, seq), bytes);
        // The ring: the entry `keep` back falls out (one removal per
        // append keeps it at `keep` while `keep` stays the same; a reader
        // also stops at `keep` back, for a `keep` that shrank).
        if let Some(old) = seq.checked_sub(keep as u64).filter(|&s| s > 0) {
            tx.remove(&self.ks.room_log, log_key(room_id, old));
        }
        tx.insert(
            &self.ks.room_head,
            room_id.as_bytes().to_vec(),
            seq.to_be_bytes().to_vec(),
        );
        self.commit(tx)?;
        Ok(Some(seq))
    }

    fn room_delete(&self, room_id: &str) -> StoreResult<bool> {
        // One writer at a time: no post can slip in between the read of
        // the kept messages and their removal.
        let mut tx = self.write_tx();
        if tx.get(&self.ks.room, room_id).map_err(backend)?.is_none() {
            return Ok(false);
        }
        // At most the kept window (plus what a window made smaller left).
        let mut kept = Vec::new();
        for guard in tx.prefix(&self.ks.room_log, prefix(room_id)) {
            kept.push(guard.key().map_err(backend)?);
        }
        for k in kept {
            tx.remove(&self.ks.room_log, k);
        }
        tx.remove(&self.ks.room, room_id.as_bytes().to_vec());
        tx.remove(&self.ks.room_head, room_id.as_bytes().to_vec());
        self.commit(tx)?;
        Ok(true)
    }

    fn room_recent(
        &self,
        room_id: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<pb::Entry>> {
        let conv = tern_protocol::ids::room_conversation(room_id);
        let ring = self.keys.load();
        let upper = if before_seq == 0 {
            Bound::Excluded(prefix_end(room_id))
        } else {
            Bound::Excluded(log_key(room_id, before_seq))
        };
        let lower = Bound::Included(log_key(room_id, 0));
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap
            .range(&self.ks.room_log, (lower, upper))
            .rev()
            .take(limit)
        {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(seal::decode_entry(ring.as_deref(), &conv, &v)?);
        }
        out.reverse();
        Ok(out)
    }

    fn todo(&self, conversation: &str, seq: u64) -> StoreResult<Option<TodoRecord>> {
        self.get(&self.ks.todo, &log_key(conversation, seq))
    }

    fn set_todo_open(
        &self,
        user: &str,
        conversation: &str,
        seq: u64,
        open: bool,
    ) -> StoreResult<()> {
        let key = todo_open_key(user, conversation, seq);
        let mut tx = self.write_tx();
        if open {
            tx.insert(&self.ks.todo_open, key, Vec::new());
        } else {
            tx.remove(&self.ks.todo_open, key);
        }
        self.commit(tx)
    }

    fn todo_index(
        &self,
        user: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let start = match after {
            None => Bound::Included(prefix(user)),
            Some((conv, seq)) => Bound::Excluded(todo_open_key(user, conv, seq)),
        };
        let end = Bound::Excluded(prefix_end(user));
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        let skip = user.len() + 1;
        for guard in snap.range(&self.ks.todo_open, (start, end)).take(limit) {
            let key = guard.key().map_err(backend)?;
            // `user \0 conv \0 seq_be`: the conversation is between the
            // user's separator and the 9 bytes of `\0 seq_be`.
            let corrupt = || StoreError::Corrupt("to-do index key".into());
            let body = key.get(skip..).ok_or_else(corrupt)?;
            let split = body.len().checked_sub(9).ok_or_else(corrupt)?;
            let conv = std::str::from_utf8(&body[..split]).map_err(|_| corrupt())?;
            out.push((conv.to_owned(), be_u64(&body[split + 1..])?));
        }
        Ok(out)
    }

    // ---- search (issue 19) ----

    fn search_indexed(&self, conversation: &str) -> StoreResult<u64> {
        let v = self
            .ks
            .search_mark
            .get(conversation.as_bytes())
            .map_err(backend)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn search_index(
        &self,
        conversation: &str,
        postings: &[(String, u64)],
        upto_seq: u64,
    ) -> StoreResult<()> {
        // Not `write_tx`: the index moves no head and touches no record of
        // the append cache. Not fsynced: the index is derived from the log,
        // and a write lost in a crash leaves the mark behind, so it is done
        // again (docs/backend.md, "Search").
        let mut tx = self.db.write_tx().durability(None);
        let mark = tx
            .get(&self.ks.search_mark, conversation.as_bytes())
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes);
        for (token, seq) in postings {
            tx.insert(&self.ks.search, search_key(conversation, token, *seq), []);
        }
        if upto_seq > mark {
            tx.insert(
                &self.ks.search_mark,
                conversation.as_bytes(),
                upto_seq.to_be_bytes(),
            );
        }
        self.commit(tx)
    }

    fn search_conversations(&self, after: &str, limit: usize) -> StoreResult<Option<Vec<String>>> {
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        let range = (Bound::Excluded(after.as_bytes().to_vec()), Bound::Unbounded);
        for guard in snap.range(&self.ks.head, range).take(limit) {
            let (k, _) = guard.into_inner().map_err(backend)?;
            let conv = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("a head key is not UTF-8".into()))?;
            out.push(conv);
        }
        Ok(Some(out))
    }

    fn search_postings(
        &self,
        conversation: &str,
        token: &str,
        from_seq: u64,
        to_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<u64>> {
        if from_seq > to_seq || limit == 0 {
            return Ok(Vec::new());
        }
        let snap = self.db.read_tx();
        let range =
            search_key(conversation, token, from_seq)..=search_key(conversation, token, to_seq);
        let mut out = Vec::new();
        for guard in snap.range(&self.ks.search, range).rev().take(limit) {
            let (k, _) = guard.into_inner().map_err(backend)?;
            let seq = k
                .len()
                .checked_sub(8)
                .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt("search posting key".into()))?;
            out.push(seq);
        }
        Ok(out)
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
        self.commit(tx)?;
        Ok(true)
    }
}

impl AuditLog for EmbeddedStore {
    fn audit_append(&self, tenant: &str, record: &AuditRecord, keep: u64) -> StoreResult<u64> {
        // One writer at a time: the head read here is the one this commit
        // moves.
        let mut tx = self.write_tx();
        // `tenant \0`: the default tenant's key would be empty otherwise.
        let head_key = prefix(tenant);
        let head = match tx.get(&self.ks.audit_head, &head_key).map_err(backend)? {
            Some(h) => be_u64(&h)?,
            None => 0,
        };
        let seq = head + 1;
        let record = AuditRecord {
            seq,
            ..record.clone()
        };
        tx.insert(&self.ks.audit, log_key(tenant, seq), record.encode_to_vec());
        // One removal per append keeps the log at `keep` (as the room ring).
        if let Some(old) = seq.checked_sub(keep.max(1)).filter(|&s| s > 0) {
            tx.remove(&self.ks.audit, log_key(tenant, old));
        }
        tx.insert(&self.ks.audit_head, head_key, seq.to_be_bytes().to_vec());
        self.commit(tx)?;
        Ok(seq)
    }

    fn audit_page(
        &self,
        tenant: &str,
        before_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let upper = if before_seq == 0 {
            Bound::Excluded(prefix_end(tenant))
        } else {
            Bound::Excluded(log_key(tenant, before_seq))
        };
        let lower = Bound::Included(log_key(tenant, 0));
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap.range(&self.ks.audit, (lower, upper)).rev().take(limit) {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }
}

impl OrgStore for EmbeddedStore {
    fn dept(&self, tenant: &str, id: &str) -> StoreResult<Option<DeptRecord>> {
        self.get(&self.ks.dept, &key2(tenant, id))
    }

    fn depts(&self, tenant: &str) -> StoreResult<Vec<DeptRecord>> {
        self.scan(&self.ks.dept, &prefix(tenant))
    }

    fn put_dept(&self, tenant: &str, record: &DeptRecord, expected: u64) -> StoreResult<bool> {
        let key = key2(tenant, &record.dept_id);
        // One writer at a time: the version read here is the one replaced.
        let mut tx = self.write_tx();
        let stored = match tx.get(&self.ks.dept, &key).map_err(backend)? {
            Some(v) => decode::<DeptRecord>(&v)?.version,
            None => 0,
        };
        if stored != expected {
            return Ok(false);
        }
        let record = DeptRecord {
            version: expected + 1,
            ..record.clone()
        };
        tx.insert(&self.ks.dept, key, record.encode_to_vec());
        self.commit(tx)?;
        Ok(true)
    }

    fn delete_dept(&self, tenant: &str, id: &str, expected: u64) -> StoreResult<bool> {
        let key = key2(tenant, id);
        let mut tx = self.write_tx();
        let Some(v) = tx.get(&self.ks.dept, &key).map_err(backend)? else {
            return Ok(false);
        };
        if decode::<DeptRecord>(&v)?.version != expected {
            return Ok(false);
        }
        tx.remove(&self.ks.dept, key);
        let mut members = Vec::new();
        for guard in tx.prefix(&self.ks.dept_member, prefix(id)) {
            let (k, _) = guard.into_inner().map_err(backend)?;
            members.push(k.to_vec());
        }
        for k in members {
            let user = std::str::from_utf8(&k[id.len() + 1..])
                .map_err(|_| StoreError::Corrupt("department member key".into()))?;
            tx.remove(&self.ks.user_dept, key2(user, id));
            tx.remove(&self.ks.dept_member, k.clone());
        }
        self.commit(tx)?;
        Ok(true)
    }

    fn put_dept_member(&self, _tenant: &str, dept: &str, member: &DeptMember) -> StoreResult<()> {
        let mut tx = self.write_tx();
        tx.insert(
            &self.ks.dept_member,
            key2(dept, &member.user_id),
            member.encode_to_vec(),
        );
        tx.insert(&self.ks.user_dept, key2(&member.user_id, dept), []);
        self.commit(tx)
    }

    fn remove_dept_member(&self, _tenant: &str, dept: &str, user: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx();
        let key = key2(dept, user);
        if tx
            .get(&self.ks.dept_member, &key)
            .map_err(backend)?
            .is_none()
        {
            return Ok(false);
        }
        tx.remove(&self.ks.dept_member, key);
        tx.remove(&self.ks.user_dept, key2(user, dept));
        self.commit(tx)?;
        Ok(true)
    }

    fn dept_members(
        &self,
        _tenant: &str,
        dept: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<DeptMember>> {
        let lower = if after.is_empty() {
            Bound::Included(prefix(dept))
        } else {
            Bound::Excluded(key2(dept, after))
        };
        let snap = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snap
            .range(
                &self.ks.dept_member,
                (lower, Bound::Excluded(prefix_end(dept))),
            )
            .take(limit)
        {
            let (_, v) = guard.into_inner().map_err(backend)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    fn free_seat(&self, tenant: &str, user: &str) -> StoreResult<bool> {
        let (key, count_key) = (key2(tenant, user), prefix(tenant));
        let mut tx = self.write_tx();
        if tx.get(&self.ks.seat, &key).map_err(backend)?.is_none() {
            return Ok(false);
        }
        let held = match tx.get(&self.ks.seat, &count_key).map_err(backend)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        tx.remove(&self.ks.seat, key);
        tx.insert(
            &self.ks.seat,
            count_key,
            held.saturating_sub(1).to_be_bytes().to_vec(),
        );
        self.commit(tx)?;
        Ok(true)
    }

    fn charge_storage(&self, tenant: &str, bytes: u64, max: u64) -> StoreResult<bool> {
        let key = prefix(tenant);
        let mut tx = self.write_tx();
        let used = match tx.get(&self.ks.storage, &key).map_err(backend)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        let Some(after) = used.checked_add(bytes).filter(|&a| a <= max) else {
            return Ok(false);
        };
        tx.insert(&self.ks.storage, key, after.to_be_bytes().to_vec());
        self.commit(tx)?;
        Ok(true)
    }

    fn refund_storage(&self, tenant: &str, bytes: u64) -> StoreResult<()> {
        let key = prefix(tenant);
        let mut tx = self.write_tx();
        let used = match tx.get(&self.ks.storage, &key).map_err(backend)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
        tx.insert(
            &self.ks.storage,
            key,
            used.saturating_sub(bytes).to_be_bytes().to_vec(),
        );
        self.commit(tx)
    }

    fn storage_used(&self, tenant: &str) -> StoreResult<u64> {
        match self
            .db
            .read_tx()
            .get(&self.ks.storage, prefix(tenant))
            .map_err(backend)?
        {
            Some(v) => be_u64(&v),
            None => Ok(0),
        }
    }

    fn seats(&self, tenant: &str) -> StoreResult<u64> {
        match self
            .db
            .read_tx()
            .get(&self.ks.seat, prefix(tenant))
            .map_err(backend)?
        {
            Some(v) => be_u64(&v),
            None => Ok(0),
        }
    }

    fn user_depts(&self, _tenant: &str, user: &str) -> StoreResult<Vec<String>> {
        let snap = self.db.read_tx();
        let p = prefix(user);
        let mut out = Vec::new();
        for guard in snap.prefix(&self.ks.user_dept, &p) {
            let (k, _) = guard.into_inner().map_err(backend)?;
            let dept = std::str::from_utf8(&k[p.len()..])
                .map_err(|_| StoreError::Corrupt("user department key".into()))?;
            out.push(dept.to_owned());
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Appends inside one write transaction
// ---------------------------------------------------------------------------

/// One item of `append_batch`. The conversation's head comes from `batch`
/// (an earlier item of the batch), else the append cache, else the store;
/// the caller writes `batch.heads` once at the end.
fn append_one(
    tx: &mut SingleWriterWriteTx<'_>,
    ks: &Keyspaces,
    keys: Option<&KeyRing>,
    now_ms: u64,
    item: &Append,
    cached: &AppendCache,
    batch: &mut BatchWrites,
) -> StoreResult<Result<Appended, AppendRefused>> {
    let conv = item.conversation.as_str();
    let dedup_key = item.dedup.as_ref().map(|d| match &item.effect {
        // An edit's id, kept apart from message ids: `:` is in no id.
        AppendEffect::Edit { .. } => key3(conv, &d.sender, &format!("e:{}", d.client_msg_id)),
        _ => key3(conv, &d.sender, &d.client_msg_id),
    });
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
    let mut edited: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut annotated: Option<(Vec<u8>, &[u8])> = None;
    // A recalled thread reply leaves its thread's index.
    let mut unthreaded: Option<Vec<u8>> = None;
    let mut threaded: Option<u64> = None;
    let mut todo: Option<(Vec<u8>, TodoRecord)> = None;
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
                        if m.thread_root_seq > 0 {
                            unthreaded = Some(thread_key(conv, m.thread_root_seq, *seq));
                        }
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
        AppendEffect::Edit {
            expect_edit_count,
            message,
        } => {
            let key = log_key(conv, message.seq);
            // Only the flags are compared: the content is replaced, so it is
            // never opened.
            let target = match tx.get(&ks.log, &key).map_err(backend)? {
                Some(v) => Some(seal::decode_entry_without_content(&v)?),
                None => None,
            };
            match target.and_then(|e| e.body) {
                Some(pb::entry::Body::Message(m))
                    if !m.recalled && m.edit_count == *expect_edit_count =>
                {
                    let mut e = pb::Entry::clone(message);
                    e.conversation_id = conv.to_owned();
                    edited = Some((key, seal::encode_entry(keys, conv, e)));
                }
                _ => return Ok(Err(AppendRefused::NotEditable)),
            }
        }
        AppendEffect::Annotate {
            key,
            seq,
            live_message,
            expect,
            new,
        } => {
            if *live_message {
                // Only the flags are read: the content is never opened.
                let target = match tx.get(&ks.log, log_key(conv, *seq)).map_err(backend)? {
                    Some(v) => Some(seal::decode_entry_without_content(&v)?),
                    None => None,
                };
                if !matches!(
                    target.and_then(|e| e.body),
                    Some(pb::entry::Body::Message(m)) if !m.recalled
                ) {
                    return Ok(Err(AppendRefused::AnnotationChanged));
                }
            }
            let k = annot_key(conv, *key);
            let now = tx.get(&ks.annot, &k).map_err(backend)?;
            if now.as_deref().unwrap_or_default() != expect.as_slice() {
                return Ok(Err(AppendRefused::AnnotationChanged));
            }
            annotated = Some((k, new.as_slice()));
        }
        AppendEffect::ThreadReply { root_seq } => {
            let target = match tx.get(&ks.log, log_key(conv, *root_seq)).map_err(backend)? {
                Some(v) => Some(seal::decode_entry_without_content(&v)?),
                None => None,
            };
            match target.and_then(|e| e.body) {
                Some(pb::entry::Body::Message(m)) if !m.recalled && m.thread_root_seq == 0 => {
                    threaded = Some(*root_seq);
                }
                _ => return Ok(Err(AppendRefused::NotThreadable)),
            }
        }
        AppendEffect::Todo {
            seq,
            expect_version,
            record,
        } => {
            let key = log_key(conv, *seq);
            let version = tx_get::<TodoRecord>(tx, &ks.todo, &key)?.map_or(0, |r| r.version);
            if version != *expect_version {
                return Ok(Err(AppendRefused::TodoChanged));
            }
            let mut r = TodoRecord::clone(record);
            r.version = expect_version + 1;
            todo = Some((key, r));
        }
    }
    let head = match batch.heads.entry(conv.to_owned()) {
        MapEntry::Occupied(o) => &mut o.into_mut().1,
        MapEntry::Vacant(v) => {
            let before = match cached.heads.get(conv) {
                Some(h) => *h,
                None => tx_get(tx, &ks.head, conv.as_bytes())?.unwrap_or_default(),
            };
            &mut v.insert((before, before)).1
        }
    };
    let seq = write_entry(tx, ks, keys, conv, head, item.entry.clone(), item.activity);
    if let Some((key, e)) = recalled {
        tx.insert(&ks.log, key, e.encode_to_vec());
    }
    if let Some((key, uc)) = reader {
        tx.insert(&ks.uconv, key, uc.encode_to_vec());
    }
    if let Some((key, bytes)) = edited {
        tx.insert(&ks.log, key, bytes);
    }
    match annotated {
        Some((key, [])) => tx.remove(&ks.annot, key),
        Some((key, bytes)) => tx.insert(&ks.annot, key, bytes),
        None => {}
    }
    if let Some(key) = unthreaded {
        tx.remove(&ks.thread, key);
    }
    if let Some(root) = threaded {
        tx.insert(&ks.thread, thread_key(conv, root, seq), Vec::new());
    }
    if let Some((key, r)) = todo {
        tx.insert(&ks.todo, key, r.encode_to_vec());
    }
    for user in &item.participants {
        let key = key2(user, conv);
        if cached.uconvs.contains(key.as_slice()) {
            continue;
        }
        if !tx.contains_key(&ks.uconv, &key).map_err(backend)? {
            let uc = UserConv {
                conversation_id: conv.to_owned(),
                visible_from_seq: 1,
                visible_to_seq: 0,
                read_seq: 0,
            };
            tx.insert(&ks.uconv, key.clone(), uc.encode_to_vec());
        }
        batch.uconvs.push(key);
    }
    let time_ms = item.entry.time_ms;
    if let (Some(k), Some(d)) = (dedup_key, &item.dedup) {
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

/// `conv \0 token \0 seq_be`: a posting of the search index. Tokens
/// hold no control character (`domain::search::tokens`).
fn search_key(conv: &str, token: &str, seq: u64) -> Vec<u8> {
    let mut k = key2(conv, token);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn log_key(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The key of an annotation record: `conv \0 r seq_be` or `conv \0 p`.
fn annot_key(conv: &str, key: Annotation) -> Vec<u8> {
    let mut k = prefix(conv);
    match key {
        Annotation::Reactions(seq) => {
            k.push(b'r');
            k.extend_from_slice(&seq.to_be_bytes());
        }
        Annotation::Pins => k.push(b'p'),
    }
    k
}

/// `conv \0 root_be seq_be`: a reply in the thread index.
fn thread_key(conv: &str, root: u64, seq: u64) -> Vec<u8> {
    let mut k = log_key(conv, root);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The reply seq of a [`thread_key`] (its last 8 bytes).
fn thread_key_seq(key: &[u8]) -> StoreResult<u64> {
    let at = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| StoreError::Corrupt("thread index key".into()))?;
    be_u64(&key[at..])
}

/// `user \0 conv \0 root_be`: a thread read mark.
fn thread_read_key(user: &str, conv: &str, root: u64) -> Vec<u8> {
    let mut k = key2(user, conv);
    k.push(0);
    k.extend_from_slice(&root.to_be_bytes());
    k
}

/// `user \0 conv \0 seq_be`: an open to-do of the user.
fn todo_open_key(user: &str, conv: &str, seq: u64) -> Vec<u8> {
    thread_read_key(user, conv, seq)
}

/// A big-endian u64 value.
fn be_u64(v: &[u8]) -> StoreResult<u64> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("expected 8 bytes".into()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DedupKey;

    fn send(conv: &str, cmid: &str) -> Append {
        Append {
            conversation: conv.into(),
            entry: pb::Entry {
                sender: "a".into(),
                client_msg_id: cmid.into(),
                time_ms: 1,
                body: Some(pb::entry::Body::Message(pb::Message::default())),
                ..Default::default()
            },
            activity: true,
            dedup: Some(DedupKey {
                sender: "a".into(),
                client_msg_id: cmid.into(),
                expires_at_ms: u64::MAX,
            }),
            member_of: None,
            effect: AppendEffect::None,
            participants: vec!["a".into(), "b".into()],
        }
    }

    fn shown(store: &EmbeddedStore, conv: &str) -> (u64, Vec<u64>) {
        let head = store.heads(&[conv]).unwrap()[0].seq;
        let seqs = store
            .entries(conv, 1, u64::MAX, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        (head, seqs)
    }

    #[test]
    fn a_pipelined_batch_is_shown_only_after_its_fsync() {
        // Proves the durable watermark deterministically, stopping between
        // the two stages of a pipelined append_batch: while two batches
        // are committed but not fsynced, heads and entries show the
        // conversation as it was before them (the next batch still takes
        // the next seq); once the later one is fsynced the earlier still
        // hides both; once both are, both seqs show.
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conv = "d:a:b";
        store.append_batch(1, &[send(conv, "m1")]).unwrap();
        let (out2, b2) = store.commit_appends(1, &[send(conv, "m2")]).unwrap();
        let (out3, b3) = store.commit_appends(1, &[send(conv, "m3")]).unwrap();
        let seq = |out: &[Result<Appended, AppendRefused>]| out[0].map(|a| a.seq);
        assert_eq!((seq(&out2), seq(&out3)), (Ok(2), Ok(3)));
        let (b2, b3) = (b2.expect("pipelined"), b3.expect("pipelined"));
        assert_eq!(shown(&store, conv), (1, vec![1]), "unsynced seqs shown");
        store.sync_appends(&b3, true).unwrap();
        assert_eq!(shown(&store, conv), (1, vec![1]), "seq 2 not yet durable");
        store.sync_appends(&b2, true).unwrap();
        assert_eq!(shown(&store, conv), (3, vec![1, 2, 3]));
    }

    #[test]
    fn compaction_drops_expired_dedup_records_and_keeps_live_ones() {
        // Proves dedup expiry without a purge index: once an append was
        // given a "now" past one record's expiry, a compaction of the dedup
        // keyspace drops that record and keeps the live ones; before that
        // "now", the same compaction keeps it.
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conv = "d:a:b";
        let mut old = send(conv, "old");
        old.dedup.as_mut().unwrap().expires_at_ms = 100;
        store.append_batch(1, &[old, send(conv, "live")]).unwrap();
        let ids = |store: &EmbeddedStore| -> Vec<String> {
            let ks = store.ks.dedup.inner();
            ks.rotate_memtable_and_wait().unwrap();
            ks.major_compact().unwrap();
            let p = key3(conv, "a", "");
            store
                .db
                .read_tx()
                .prefix(&store.ks.dedup, &p)
                .map(|g| String::from_utf8(g.key().unwrap()[p.len()..].to_vec()).unwrap())
                .collect()
        };
        assert_eq!(ids(&store), ["live", "old"], "not yet expired");
        store.append_batch(100, &[send(conv, "later")]).unwrap();
        assert_eq!(ids(&store), ["later", "live"]);
        assert_eq!(store.dedup_lookup(conv, "a", "old", 100).unwrap(), None);
        assert!(
            store
                .dedup_lookup(conv, "a", "live", 100)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_store_from_before_the_filter_loses_its_purge_index_on_open() {
        // Proves the upgrade path: a data dir whose store kept the old
        // `dedup_exp` purge index opens, and the index is gone after.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = SingleWriterTxDatabase::builder(dir.path()).open().unwrap();
            let old = db
                .keyspace("dedup_exp", KeyspaceCreateOptions::default)
                .unwrap();
            old.insert(b"k", b"").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(!store.db.keyspace_exists("dedup_exp"));
        store.append_batch(1, &[send("d:a:b", "m1")]).unwrap();
    }

    #[test]
    fn a_batch_with_a_recall_is_durable_at_commit() {
        // Proves a batch that changes an existing record (a recall) is not
        // pipelined: its first stage already made it durable and visible,
        // with nothing left to sync.
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conv = "d:a:b";
        store.append_batch(1, &[send(conv, "m1")]).unwrap();
        let mut recall = send(conv, "r1");
        recall.dedup = None;
        recall.effect = AppendEffect::Recall { seq: 1 };
        let (out, unsynced) = store.commit_appends(1, &[recall]).unwrap();
        assert!(out[0].is_ok(), "{out:?}");
        assert!(unsynced.is_none());
        assert_eq!(shown(&store, conv), (2, vec![1, 2]));
    }
}
