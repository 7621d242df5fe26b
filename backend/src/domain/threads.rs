//! Threads (issue 19): replies in a thread under a message.
//!
//! The scheme (docs/protocol.md "Threads"): a thread reply is an ordinary
//! `Message` entry of the parent conversation's log carrying
//! `thread_root_seq`, so ordering, pushes, sync, durability, recall and edit
//! need nothing new. Next to the log the store keeps a per-thread index of
//! the replies that are not recalled ([`AppendEffect::ThreadReply`] adds,
//! recall removes, both in the append's atomic step); summaries, thread
//! history and unread counts are read from it. A root is a message that is
//! not recalled and not itself a thread reply (threads do not nest).
//!
//! A reader's mark per thread is a small record of the user's
//! ([`Store::mark_thread_read`]), not a log entry: it is private and
//! converges across the user's devices through `thread_info`. Sending a
//! reply moves the sender's own mark to it.
//!
//! [`AppendEffect::ThreadReply`]: crate::store::AppendEffect::ThreadReply
//! [`Store::mark_thread_read`]: crate::store::Store::mark_thread_read

use std::collections::HashMap;

use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;

use super::{Caller, Domain, Handled, Outcome, page, parse_conv};
use crate::error::DomainError;

impl Domain {
    /// Checks that a thread reply may go under the message at `root` of
    /// `conv`: the sender sees it, it is a message, not recalled, not a
    /// thread reply itself.
    pub(super) fn check_thread_root(
        &self,
        me: &Caller,
        conv: &str,
        root: u64,
    ) -> Result<(), DomainError> {
        let conv_id = parse_conv(conv)?;
        let view = self.read_view(me, &conv_id)?;
        self.thread_root(&view.conv, view.from, view.to, root)
            .map(|_| ())
    }

    /// The root message at `root`, if it lies in `from..=to` and takes
    /// replies.
    fn thread_root(
        &self,
        conv: &str,
        from: u64,
        to: u64,
        root: u64,
    ) -> Result<pb::Message, DomainError> {
        let missing = DomainError::NotFound("no message at thread_root_seq");
        if root < from || root > to {
            return Err(missing);
        }
        let Some(entry) = self.store.entries(conv, root, root, 1)?.pop() else {
            return Err(missing);
        };
        let Some(pb::entry::Body::Message(m)) = entry.body else {
            return Err(missing);
        };
        if m.recalled {
            return Err(DomainError::MessageRecalled);
        }
        if m.thread_root_seq > 0 {
            return Err(DomainError::InvalidArgument(
                "thread_root_seq names a thread reply; reply under its root".into(),
            ));
        }
        Ok(m)
    }

    /// After a thread reply is stored: its sender has read the thread up to
    /// it. Best effort: the reply is stored and acked whatever happens here
    /// (a failed write leaves the sender's own reply counted as unread).
    pub(super) fn mark_own_thread_reply(&self, conv: &str, entry: &pb::Entry, seq: u64) {
        if let Some(pb::entry::Body::Message(m)) = &entry.body {
            if m.thread_root_seq > 0 {
                let _ = self
                    .store
                    .mark_thread_read(&entry.sender, conv, m.thread_root_seq, seq);
            }
        }
    }

    /// `history` with `thread_root_seq`: a page of the thread's replies
    /// (newest page first, entries in increasing seq), limited to the part
    /// of the log the caller may read.
    pub(super) fn thread_history(
        &self,
        me: &Caller,
        conv: &ConversationId,
        req: &pb::HistoryRequest,
    ) -> Handled {
        let view = self.read_view(me, conv)?;
        let root = req.thread_root_seq;
        // The root must be visible; it may since have been recalled (its
        // replies stay readable).
        if root < view.from || root > view.to {
            return Err(DomainError::NotFound("no message at thread_root_seq"));
        }
        let limit = page(req.limit, self.config.page_entries_max);
        let before = match req.before_seq {
            0 => view.to.saturating_add(1),
            b => b.min(view.to.saturating_add(1)),
        };
        // One more than the page, to tell whether more follow.
        let mut seqs = self
            .store
            .thread_replies(&view.conv, root, before, limit + 1)?;
        seqs.retain(|&s| s >= view.from);
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        seqs.reverse();
        let mut entries = self.store.entries_at(&view.conv, &seqs)?;
        self.serve_edits(&mut entries)?;
        Ok(Outcome::reply(Body::HistoryResult(pb::HistoryResult {
            entries,
            more,
        })))
    }

    /// Sets the thread summary of every root message in `entries` (of
    /// `conv`) that has replies. One store read for the page.
    pub(super) fn serve_thread_summaries(
        &self,
        conv: &str,
        entries: &mut [pb::Entry],
    ) -> Result<(), DomainError> {
        let roots: Vec<(u64, u64)> = entries
            .iter()
            .filter_map(|e| match &e.body {
                Some(pb::entry::Body::Message(m)) if m.thread_root_seq == 0 && !m.recalled => {
                    Some((e.seq, u64::MAX))
                }
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            return Ok(());
        }
        let stats = self.store.thread_stats(conv, &roots)?;
        let mut by_root: HashMap<u64, pb::ThreadSummary> = roots
            .iter()
            .zip(stats)
            .filter(|(_, s)| s.replies > 0)
            .map(|(&(root, _), s)| {
                (
                    root,
                    pb::ThreadSummary {
                        reply_count: u32::try_from(s.replies).unwrap_or(u32::MAX),
                        last_reply_seq: s.last_seq,
                    },
                )
            })
            .collect();
        for e in entries.iter_mut() {
            if let Some(pb::entry::Body::Message(m)) = &mut e.body {
                if let Some(summary) = by_root.remove(&e.seq) {
                    m.thread = Some(summary);
                }
            }
        }
        Ok(())
    }

    pub(super) fn thread_read(&self, me: &Caller, req: pb::ThreadReadRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.root_seq == 0 || req.up_to_seq == 0 {
            return Err(DomainError::InvalidArgument(
                "root_seq and up_to_seq must not be 0".into(),
            ));
        }
        let view = self.view(&me.user_id, &conv)?;
        if req.root_seq < view.from || req.root_seq > view.to {
            return Err(DomainError::NotFound("no message at root_seq"));
        }
        if req.up_to_seq <= req.root_seq || req.up_to_seq > view.to {
            return Err(DomainError::InvalidArgument(
                "up_to_seq must lie after root_seq, up to the head".into(),
            ));
        }
        self.store
            .mark_thread_read(&me.user_id, &view.conv, req.root_seq, req.up_to_seq)?;
        Ok(Outcome::ok(0))
    }

    pub(super) fn thread_info(&self, me: &Caller, req: pb::ThreadInfoRequest) -> Handled {
        let conv = parse_conv(&req.conversation_id)?;
        if req.root_seqs.len() > self.config.read_by_seqs_max as usize {
            return Err(DomainError::InvalidArgument("too many root_seqs".into()));
        }
        let view = self.view(&me.user_id, &conv)?;
        let roots: Vec<u64> = req
            .root_seqs
            .iter()
            .copied()
            .filter(|&r| r >= view.from && r <= view.to)
            .collect();
        let marks = self
            .store
            .thread_read_marks(&me.user_id, &view.conv, &roots)?;
        let asked: Vec<(u64, u64)> = roots.iter().copied().zip(marks.iter().copied()).collect();
        let stats = self.store.thread_stats(&view.conv, &asked)?;
        let threads = asked
            .iter()
            .zip(stats)
            .map(|(&(root, mark), s)| pb::ThreadInfo {
                root_seq: root,
                summary: Some(pb::ThreadSummary {
                    reply_count: u32::try_from(s.replies).unwrap_or(u32::MAX),
                    last_reply_seq: s.last_seq,
                }),
                read_seq: mark,
                unread: u32::try_from(s.after).unwrap_or(u32::MAX),
            })
            .collect();
        Ok(Outcome::reply(Body::ThreadInfoResult(
            pb::ThreadInfoResult {
                conversation_id: view.conv,
                threads,
            },
        )))
    }
}
