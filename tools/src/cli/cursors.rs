//! This device's position in each conversation log, and what it still has
//! to acknowledge (protocol.md 7.2, 7.4). Pure bookkeeping: no I/O, no clock.
//!
//! A cursor is the last seq held with nothing missing below it. A pushed
//! entry right after the cursor advances it; one at or below is a duplicate;
//! one further on is a gap, which the caller fills with `sync`. A synced
//! entry is taken at any seq above the cursor: the server's sync serves what
//! this user may see, which for a group joined without history starts at
//! the join, not at 1. A conversation this device never held starts at its
//! first pushed entry, whatever its seq: the cli shows what happens from now
//! on and `history` shows what came before, as a new device does
//! (protocol.md 7.3), rather than pulling a whole group log on a join.

use std::collections::{BTreeSet, HashMap};

use tern_protocol::pb;

/// Cursors in one `deliver_ack` or `sync` frame (the protocol's bound).
pub const CURSORS_PER_FRAME_MAX: usize = 1000;

/// What applying one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New: the cursor moved to it.
    Fresh,
    /// Held already (a retransmission, or synced before).
    Duplicate,
    /// Entries are missing below it; it was not applied.
    Gap,
}

/// Per-conversation cursors and the set advanced since the last ack.
#[derive(Debug, Default, Clone)]
pub struct Cursors {
    held: HashMap<String, u64>,
    /// Conversations whose cursor moved since [`Cursors::take_acks`].
    unacked: BTreeSet<String>,
}

impl Cursors {
    /// No conversation held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cursor of `conv` (0: nothing held).
    pub fn held(&self, conv: &str) -> u64 {
        self.held.get(conv).copied().unwrap_or(0)
    }

    /// Moves `conv`'s cursor up to `seq` without entries: used for a
    /// conversation's head when the device starts from the conversation
    /// list, as a new device does (protocol.md 7.3). Never moves back.
    pub fn adopt(&mut self, conv: &str, seq: u64) {
        let c = self.held.entry(conv.to_owned()).or_insert(0);
        if seq > *c {
            *c = seq;
        }
    }

    /// Applies a pushed entry: only the next seq is taken (any seq in a
    /// conversation never held).
    pub fn apply_pushed(&mut self, e: &pb::Entry) -> Applied {
        self.apply_pushed_seq(&e.conversation_id, e.seq)
    }

    /// [`Cursors::apply_pushed`] for a seq known without its entry: this
    /// device's own message, from its `SendAck` (the server does not push a
    /// message back to the device that sent it).
    pub fn apply_pushed_seq(&mut self, conv: &str, seq: u64) -> Applied {
        let Some(&held) = self.held.get(conv) else {
            self.advance(conv, seq);
            return Applied::Fresh;
        };
        if seq <= held {
            Applied::Duplicate
        } else if seq == held + 1 {
            self.advance(conv, seq);
            Applied::Fresh
        } else {
            Applied::Gap
        }
    }

    /// Applies an entry from a `sync_result`: anything above the cursor.
    pub fn apply_synced(&mut self, e: &pb::Entry) -> Applied {
        if e.seq <= self.held(&e.conversation_id) {
            Applied::Duplicate
        } else {
            self.advance(&e.conversation_id, e.seq);
            Applied::Fresh
        }
    }

    /// The cursors moved since the last call, in frames of at most
    /// [`CURSORS_PER_FRAME_MAX`], ready for `deliver_ack`.
    pub fn take_acks(&mut self) -> Vec<Vec<pb::Cursor>> {
        let moved = std::mem::take(&mut self.unacked);
        let all: Vec<pb::Cursor> = moved
            .into_iter()
            .map(|c| {
                let seq = self.held(&c);
                pb::Cursor {
                    conversation_id: c,
                    seq,
                }
            })
            .collect();
        all.chunks(CURSORS_PER_FRAME_MAX)
            .map(<[_]>::to_vec)
            .collect()
    }

    /// Every held cursor, for `sync` and `Auth.resume_cursors`, at most
    /// [`CURSORS_PER_FRAME_MAX`] (the highest seqs first beyond that: a
    /// conversation left out is synced from its beginning, which is correct,
    /// only slower).
    pub fn list(&self) -> Vec<pb::Cursor> {
        let mut all: Vec<pb::Cursor> = self
            .held
            .iter()
            .filter(|(_, seq)| **seq > 0)
            .map(|(c, seq)| pb::Cursor {
                conversation_id: c.clone(),
                seq: *seq,
            })
            .collect();
        if all.len() > CURSORS_PER_FRAME_MAX {
            all.sort_by_key(|c| std::cmp::Reverse(c.seq));
            all.truncate(CURSORS_PER_FRAME_MAX);
        }
        all.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        all
    }

    fn advance(&mut self, conv: &str, seq: u64) {
        self.held.insert(conv.to_owned(), seq);
        self.unacked.insert(conv.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conv: &str, seq: u64) -> pb::Entry {
        pb::Entry {
            conversation_id: conv.into(),
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn pushes_advance_in_order_and_gaps_wait_for_sync() {
        // Proves the 7.2 rules: next seq applies, old ones are duplicates, a
        // hole is a gap that does not move the cursor.
        let mut c = Cursors::new();
        assert_eq!(c.apply_pushed(&entry("d:a:b", 1)), Applied::Fresh);
        assert_eq!(c.apply_pushed(&entry("d:a:b", 2)), Applied::Fresh);
        assert_eq!(c.apply_pushed(&entry("d:a:b", 2)), Applied::Duplicate);
        assert_eq!(c.apply_pushed(&entry("d:a:b", 4)), Applied::Gap);
        assert_eq!(c.held("d:a:b"), 2);
        // Sync fills the hole from wherever the server starts.
        assert_eq!(c.apply_synced(&entry("d:a:b", 3)), Applied::Fresh);
        assert_eq!(c.apply_synced(&entry("g:x", 7)), Applied::Fresh);
        assert_eq!(c.held("g:x"), 7);
        // A conversation never held starts at its first push; one adopted
        // at a head is strict from there.
        assert_eq!(c.apply_pushed(&entry("g:new", 5)), Applied::Fresh);
        c.adopt("g:old", 9);
        assert_eq!(c.apply_pushed(&entry("g:old", 11)), Applied::Gap);
        assert_eq!(c.apply_pushed_seq("g:old", 10), Applied::Fresh);
    }

    #[test]
    fn acks_are_cumulative_once_per_move() {
        // Proves an ack names each moved conversation once at its newest
        // cursor, and nothing until the next move.
        let mut c = Cursors::new();
        for s in 1..=3 {
            c.apply_pushed(&entry("d:a:b", s));
        }
        c.apply_pushed(&entry("g:x", 1));
        let acks = c.take_acks();
        assert_eq!(acks.len(), 1);
        let seqs: Vec<_> = acks[0]
            .iter()
            .map(|k| (k.conversation_id.as_str(), k.seq))
            .collect();
        assert_eq!(seqs, [("d:a:b", 3), ("g:x", 1)]);
        assert!(c.take_acks().is_empty());
        c.adopt("g:y", 5);
        assert!(c.take_acks().is_empty(), "adopting a head acks nothing");
        assert_eq!(c.list().len(), 3);
    }

    #[test]
    fn frames_stay_within_the_protocol_bound() {
        // Proves acks are chunked and the sync list capped at 1,000 cursors.
        let mut c = Cursors::new();
        for i in 0..(CURSORS_PER_FRAME_MAX + 5) {
            c.apply_pushed(&entry(&format!("g:c{i}"), 1));
        }
        let acks = c.take_acks();
        assert_eq!(acks.len(), 2);
        assert_eq!(acks[0].len(), CURSORS_PER_FRAME_MAX);
        assert_eq!(acks[1].len(), 5);
        assert_eq!(c.list().len(), CURSORS_PER_FRAME_MAX);
    }
}
