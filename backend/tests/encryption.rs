//! Encryption at rest on both stores (the embedded store and one real
//! `redis-server`): key rotation, a missing key, and turning encryption on
//! for a store written in clear. Each case reopens a store on the same data
//! with another key ring and reads through the `Store` trait, so what each
//! record was sealed with is shown by which ring opens it.

#![allow(clippy::disallowed_methods)]

#[macro_use]
mod conformance;

#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::sync::Arc;

use tern_backend::redis_store::{RedisConfig, RedisNodes, RedisStore};
use tern_backend::seal::{KeyRing, Keys, SealError};
use tern_backend::store::StoreError;
use tern_backend::{Caller, Config, Domain, EmbeddedStore, Store};
use tern_protocol::pb;

use conformance::{To, ack, edit_body, send_body, text_of};

const CONV: &str = "d:alice:bob";
const T0: u64 = 1_700_000_000_000;

/// A ring of the keys `ids` (key bytes derived from the id, so "k1" is the
/// same key in every ring), the first one current unless `current` says.
fn ring(ids: &[&str], current: &str) -> Option<KeyRing> {
    let keys = ids
        .iter()
        .map(|id| {
            let mut k = [0u8; 32];
            k[..id.len()].copy_from_slice(id.as_bytes());
            ((*id).to_owned(), k)
        })
        .collect();
    Some(KeyRing::new(keys, current).expect("key ring"))
}

/// Opens the store under test on its (persistent) data with `keys`.
trait Opener {
    fn open(&self, keys: Option<KeyRing>) -> Arc<dyn Store>;
}

struct Embedded(tempfile::TempDir);

impl Opener for Embedded {
    fn open(&self, keys: Option<KeyRing>) -> Arc<dyn Store> {
        Arc::new(
            EmbeddedStore::open(self.0.path())
                .expect("open store")
                .with_keys(Keys::new(keys)),
        )
    }
}

struct Redis(redis_harness::RedisServer);

impl Opener for Redis {
    fn open(&self, keys: Option<KeyRing>) -> Arc<dyn Store> {
        let config = RedisConfig::new(RedisNodes::Single(self.0.url()));
        Arc::new(
            RedisStore::open(config)
                .expect("open the redis store")
                .with_keys(Keys::new(keys)),
        )
    }
}

fn embedded() -> Embedded {
    Embedded(tempfile::tempdir().expect("temp dir"))
}

fn redis() -> Redis {
    Redis(redis_harness::RedisServer::start(
        redis_harness::ServerOptions::DURABLE,
    ))
}

/// Sends `text` from alice to bob on a fresh domain over `store`; the seq.
fn send(store: &Arc<dyn Store>, cmid: &str, text: &str) -> u64 {
    let d = Domain::new(store.clone(), Config::default());
    let alice = Caller {
        user_id: "alice".into(),
        device_id: "phone".into(),
        admin: false,
    };
    ack(&d.handle(&alice, T0, send_body(cmid, To::User("bob"), text))).seq
}

/// The text at `seq`, read straight from the store.
fn read(store: &Arc<dyn Store>, seq: u64) -> Result<String, StoreError> {
    let entries = store.entries(CONV, seq, seq, 1)?;
    let [e] = entries.as_slice() else {
        panic!("no entry at {seq}");
    };
    Ok(text_of(e).expect("a text message").to_owned())
}

#[track_caller]
fn assert_missing_key(r: Result<String, StoreError>, id: &str) {
    match r {
        Err(StoreError::Sealed(SealError::UnknownKey { id: got })) => assert_eq!(got, id),
        other => panic!("expected a missing key {id:?}, got {other:?}"),
    }
}

fn rotation(o: &dyn Opener) {
    let s = o.open(ring(&["k1"], "k1"));
    assert_eq!(send(&s, "c1", "under k1"), 1);
    drop(s);
    // Rotate: k2 current, k1 kept for what it sealed.
    let s = o.open(ring(&["k2", "k1"], "k2"));
    assert_eq!(send(&s, "c2", "under k2"), 2);
    assert_eq!(read(&s, 1).unwrap(), "under k1");
    assert_eq!(read(&s, 2).unwrap(), "under k2");
    drop(s);
    // Only k2: the new message opens, so it was sealed with k2; the old one
    // names the key it lacks.
    let s = o.open(ring(&["k2"], "k2"));
    assert_eq!(read(&s, 2).unwrap(), "under k2");
    assert_missing_key(read(&s, 1), "k1");
    // Through the domain a missing key is INTERNAL, never a panic.
    let d = Domain::new(s.clone(), Config::default());
    let bob = Caller {
        user_id: "bob".into(),
        device_id: "laptop".into(),
        admin: false,
    };
    let out = d.handle(
        &bob,
        T0,
        pb::frame::Body::History(pb::HistoryRequest {
            conversation_id: CONV.into(),
            before_seq: 0,
            limit: 10,
            thread_root_seq: 0,
        }),
    );
    match out.reply {
        Some(pb::frame::Body::Error(e)) => assert_eq!(e.code, pb::ErrorCode::Internal as i32),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn plaintext_then_on(o: &dyn Opener) {
    let s = o.open(None);
    assert_eq!(send(&s, "c1", "in clear"), 1);
    drop(s);
    let s = o.open(ring(&["k1"], "k1"));
    assert_eq!(send(&s, "c2", "sealed"), 2);
    assert_eq!(read(&s, 1).unwrap(), "in clear");
    assert_eq!(read(&s, 2).unwrap(), "sealed");
    drop(s);
    // Encryption off again: the clear record reads, the sealed one names
    // its key.
    let s = o.open(None);
    assert_eq!(read(&s, 1).unwrap(), "in clear");
    assert_missing_key(read(&s, 2), "k1");
}

fn recall_needs_no_key(o: &dyn Opener) {
    let s = o.open(ring(&["k1"], "k1"));
    assert_eq!(send(&s, "c1", "to recall"), 1);
    drop(s);
    // The store drops a recalled content without opening it.
    let s = o.open(ring(&["k2"], "k2"));
    let item = tern_backend::store::Append {
        conversation: CONV.into(),
        entry: pb::Entry {
            sender: "alice".into(),
            time_ms: T0 + 1,
            body: Some(pb::entry::Body::Recalled(pb::Recalled { seq: 1 })),
            ..Default::default()
        },
        activity: true,
        dedup: None,
        member_of: None,
        effect: tern_backend::store::AppendEffect::Recall { seq: 1 },
        participants: Vec::new(),
    };
    let res = s.append_batch(T0 + 1, &[item]).expect("append");
    assert!(matches!(res.as_slice(), [Ok(a)] if a.seq == 2), "{res:?}");
    let e = &s.entries(CONV, 1, 1, 1).expect("read")[0];
    let Some(pb::entry::Body::Message(m)) = &e.body else {
        panic!("not a message: {e:?}");
    };
    assert!(m.recalled && m.content.is_none());
}

fn edit_is_sealed(o: &dyn Opener) {
    let s = o.open(ring(&["k1"], "k1"));
    assert_eq!(send(&s, "c1", "draft"), 1);
    let d = Domain::new(s.clone(), Config::default());
    let alice = Caller {
        user_id: "alice".into(),
        device_id: "phone".into(),
        admin: false,
    };
    let out = d.handle(&alice, T0 + 1, edit_body(CONV, 1, "e1", "final", false));
    assert!(matches!(out.reply, Some(pb::frame::Body::Ok(_))), "{out:?}");
    assert_eq!(read(&s, 1).unwrap(), "final");
    drop(d);
    drop(s);
    // Without keys the edited message names its key: its new content was
    // sealed, not written in clear; the `Edited` entry holds no content.
    let s = o.open(None);
    assert_missing_key(read(&s, 1), "k1");
    let e = &s.entries(CONV, 2, 2, 1).expect("read")[0];
    assert!(
        matches!(&e.body, Some(pb::entry::Body::Edited(x)) if x.content.is_none()),
        "{e:?}"
    );
}

#[test]
fn embedded_edited_content_is_sealed() {
    // Proves an edit's new content is sealed at rest on the embedded store:
    // it reads with the key and names the key without it.
    edit_is_sealed(&embedded());
}

#[test]
fn redis_edited_content_is_sealed() {
    // Proves the same on a real redis-server.
    edit_is_sealed(&redis());
}

#[test]
fn embedded_rotation_keeps_old_keys_and_names_a_missing_one() {
    // Proves on the embedded store: a message sealed with k1 reads after
    // the current key moved to k2, the next one is sealed with k2 (a ring
    // of k2 alone opens it), and without k1 the old one is a typed error
    // naming k1 (INTERNAL through the domain).
    rotation(&embedded());
}

#[test]
fn redis_rotation_keeps_old_keys_and_names_a_missing_one() {
    // Proves the same on a real redis-server.
    rotation(&redis());
}

#[test]
fn embedded_store_written_in_clear_reads_after_encryption_is_on() {
    // Proves on the embedded store: records written without keys read
    // after keys are set, new ones are sealed, and turning keys off again
    // names the missing key for sealed records only.
    plaintext_then_on(&embedded());
}

#[test]
fn redis_store_written_in_clear_reads_after_encryption_is_on() {
    // Proves the same on a real redis-server.
    plaintext_then_on(&redis());
}

#[test]
fn embedded_recall_of_a_sealed_message_needs_no_key() {
    // Proves a recall rewrites a sealed message without opening it (here
    // with its key gone), on the embedded store.
    recall_needs_no_key(&embedded());
}

#[test]
fn redis_recall_of_a_sealed_message_needs_no_key() {
    // Proves the same on a real redis-server, where the Lua function drops
    // the sealed content.
    recall_needs_no_key(&redis());
}
