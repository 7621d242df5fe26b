//! Full-text search of a user's conversations (issue 19; docs/backend.md,
//! "Search").
//!
//! The index is an inverted index per conversation, kept by the store
//! beside the log ([`Store::search_index`]): `(conversation, token) → seqs`
//! plus an *index mark*, the seq up to which the log is indexed. It is
//! derived from the log and written after the log's commit, never in the
//! send's own step, so a send is never slower to ack for it:
//!
//! - the gateway's indexer thread calls [`Domain::search_index_pending`]
//!   now and then (`[search] index_interval_ms`): the conversations that
//!   got messages or edits since its last call are indexed from their mark
//!   to their head. The new messages' texts are handed over with them
//!   ([`PendingIndex`]), so where they follow the mark without a gap they
//!   are indexed without reading the log back (~3 µs of CPU per message
//!   saved, docs/benchmarks.md, "Step 4"); otherwise (an edit, a gap, the
//!   texts' bound) the log is read, in batches of [`INDEX_BATCH_ENTRIES`];
//! - a search indexes each conversation it reads up to its head first, so
//!   a result never misses a stored message, whatever the indexer's lag,
//!   and a missing or lost index (a new store, an index written lazily and
//!   lost in a crash) is rebuilt from the log on the first search.
//!
//! The index only finds *candidates*: every candidate is read from the log
//! and its current text tokenized again before it is returned. So an
//! edited message matches only its latest text (the old text's postings
//! stay, and are skipped), a recalled one never matches, and what a user
//! may read is checked on the entry itself (membership window, filters).
//!
//! Tokens ([`tokens`]): UAX #29 word boundaries, lowercased (full Unicode
//! case folding is not in std: `to_lowercase`, which covers what users type
//! in practice); runs of Han, Hiragana and Katakana, which are written
//! without spaces, become every single character and every pair of
//! neighbours (bigrams), so a query of one character or of any run of two
//! or more finds them. A query matches a message that holds every query
//! token (AND); no query syntax exists, so quotes, `*`, `-`, `:` are
//! punctuation and are ignored.

use std::collections::{HashMap, HashSet};

use tern_protocol::ids::ConversationId;
use tern_protocol::pb;
use tern_protocol::pb::frame::Body;
use tern_protocol::validate::SEARCH_QUERY_BYTES_MAX;
use unicode_segmentation::UnicodeSegmentation;

use super::{Caller, Domain, Handled, Outcome, page, parse_conv};
use crate::error::DomainError;
use crate::store::{StoreResult, UserConv};

/// Longest token, in characters: longer words are cut to it (the same in
/// the index and in queries, so they still match on their start).
pub const TOKEN_CHARS_MAX: usize = 32;

/// Distinct tokens indexed per message, at most (a text of 8 KiB of
/// distinct words is cut there; the text is still returned whole).
pub const TOKENS_PER_MESSAGE_MAX: usize = 512;

/// Distinct tokens of one query, at most: more is `INVALID_ARGUMENT`. Only
/// one token's postings are read (the others are checked on candidates),
/// so the cost of a query barely grows with it; a query of
/// `SEARCH_QUERY_BYTES_MAX` (256) bytes of Chinese is ~85 bigrams.
pub const QUERY_TOKENS_MAX: usize = 128;

/// Log entries read per store call while indexing a conversation.
pub const INDEX_BATCH_ENTRIES: usize = 512;

/// Conversations waiting for the indexer, at most. Past it a conversation
/// is not queued: its next search indexes it (nothing is lost, the lag of
/// that conversation's index grows).
pub const PENDING_CONVERSATIONS_MAX: usize = 65_536;

/// Bytes held for the indexer, at most: message texts plus
/// [`PENDING_ENTRY_BYTES`] per noted entry. Past it a conversation's new
/// messages are read back from the log instead.
pub const PENDING_TEXT_BYTES_MAX: usize = 8 << 20;

/// What one noted entry is counted as besides its text: its `(seq,
/// String)` slot.
const PENDING_ENTRY_BYTES: usize = std::mem::size_of::<(u64, String)>();

/// Postings read per store call while searching.
const POSTINGS_PAGE: usize = 256;

impl Domain {
    /// `search`: see the module doc and docs/protocol.md, "Search".
    pub(super) fn search(&self, me: &Caller, req: pb::SearchRequest) -> Handled {
        if !self.config.search_enabled {
            return Err(DomainError::SearchDisabled);
        }
        // Checked by the gateway's frame validation too; the API and tests
        // reach here without it.
        if req.query.len() > SEARCH_QUERY_BYTES_MAX {
            return Err(DomainError::InvalidArgument(format!(
                "search.query is longer than {SEARCH_QUERY_BYTES_MAX} bytes"
            )));
        }
        let query = query_tokens(&req.query)?;
        let driver = driving_token(&query);
        let cursor = Cursor::parse(&req.cursor)?;
        let limit = page(req.limit, self.config.search_page_max);
        let mut budget = self.config.search_scan_max.max(1) as usize;

        // The conversations to read, in increasing id order, each with the
        // part of its log the caller may read.
        let views: Vec<UserConv> = if req.conversation_id.is_empty() {
            self.store.user_convs(&me.user_id)?
        } else {
            let conv = parse_conv(&req.conversation_id)?;
            vec![self.search_view(me, &conv)?]
        };
        let filter = Filter {
            sender: &req.sender,
            from_ms: req.from_ms,
            to_ms: req.to_ms,
        };

        let mut found = Vec::new();
        let mut next: Option<Cursor> = None;
        'convs: for uc in &views {
            let conv = uc.conversation_id.as_str();
            let mut before = u64::MAX;
            if let Some(c) = &cursor {
                match conv.cmp(c.conversation.as_str()) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => before = c.before_seq,
                    std::cmp::Ordering::Greater => {}
                }
            }
            let head = self.search_catch_up(conv)?;
            let from = uc.visible_from_seq.max(1);
            let to = if uc.visible_to_seq == 0 {
                head
            } else {
                uc.visible_to_seq.min(head)
            };
            let mut upper = to.min(before.saturating_sub(1));
            while upper >= from {
                // Every postings read costs a unit too, so a query over
                // many conversations without matches is bounded as well.
                if budget == 0 {
                    next = Some(Cursor::at(conv, upper + 1));
                    break 'convs;
                }
                budget -= 1;
                let seqs = self.store.search_postings(
                    conv,
                    driver,
                    from,
                    upper,
                    POSTINGS_PAGE.min(budget.max(1)),
                )?;
                let Some(&lowest) = seqs.last() else {
                    break;
                };
                for seq in seqs {
                    if budget == 0 {
                        next = Some(Cursor::at(conv, seq + 1));
                        break 'convs;
                    }
                    budget -= 1;
                    if let Some(entry) = self.search_match(conv, seq, &query, &filter)? {
                        found.push(entry);
                        if found.len() == limit {
                            next = Some(Cursor::at(conv, seq));
                            break 'convs;
                        }
                    }
                }
                upper = lowest.saturating_sub(1);
            }
        }
        // A page that ends exactly at the last candidate still gets a
        // cursor; the next page is then empty without one.
        Ok(Outcome::reply(Body::SearchResult(pb::SearchResult {
            entries: found,
            cursor: next.map(|c| c.to_string()).unwrap_or_default(),
        })))
    }

    /// Indexes the conversations that got messages or edits since the last
    /// call, each up to its head; returns how many log entries were read.
    /// The gateway's indexer thread calls it (docs/backend.md, "Search").
    pub fn search_index_pending(&self) -> StoreResult<u64> {
        if !self.config.search_enabled {
            return Ok(0);
        }
        let pending = std::mem::take(&mut *self.search_pending.lock());
        let mut read = 0;
        let mut postings = Vec::new();
        let mut words = Vec::new();
        for (conv, texts) in pending.convs {
            let before = self.store.search_indexed(&conv)?;
            // The handed texts, if they continue the index without a gap
            // (any seq at or below the mark is indexed already).
            if let Some(mut texts) = texts {
                texts.sort_unstable_by_key(|(seq, _)| *seq);
                texts.retain(|(seq, _)| *seq > before);
                let gapless = texts
                    .iter()
                    .zip(before + 1..)
                    .all(|((seq, _), want)| *seq == want);
                if gapless && !texts.is_empty() {
                    // As many entries per store call as when the log is read.
                    for chunk in texts.chunks(INDEX_BATCH_ENTRIES) {
                        postings.clear();
                        for (seq, text) in chunk {
                            add_postings(text, *seq, &mut words, &mut postings);
                        }
                        let last = chunk.last().map_or(before, |(seq, _)| *seq);
                        self.store.search_index(&conv, &postings, last)?;
                        read += chunk.len() as u64;
                    }
                    continue;
                }
            }
            let head = self.search_catch_up(&conv)?;
            read += head.saturating_sub(before);
        }
        Ok(read)
    }

    /// Brings the index of every conversation the store can list up to its
    /// log (a new index, one behind after a crash or an upgrade): the
    /// indexer thread runs it once at start, before its first turn. Returns
    /// how many log entries were read. A store that cannot list its
    /// conversations (Redis) skips it: those indexes catch up when written
    /// to or searched.
    pub fn search_index_all(&self) -> StoreResult<u64> {
        if !self.config.search_enabled {
            return Ok(0);
        }
        let mut after = String::new();
        let mut read = 0;
        loop {
            let Some(page) = self.store.search_conversations(&after, 1_000)? else {
                return Ok(read);
            };
            for conv in &page {
                let before = self.store.search_indexed(conv)?;
                read += self.search_catch_up(conv)?.saturating_sub(before);
            }
            match page.last() {
                Some(last) => after = last.clone(),
                None => return Ok(read),
            }
        }
    }

    /// Queues the conversations of `outcomes`' new messages and edits for
    /// the indexer, with the messages' texts (bounded: see
    /// [`PendingIndex`]). Any other entry of a conversation already queued
    /// is noted as a text-less seq, so that its messages still follow one
    /// another without a gap.
    pub(super) fn search_note(&self, outcomes: &[Outcome]) {
        if !self.config.search_enabled {
            return;
        }
        let mut pending = None;
        for effect in outcomes.iter().flat_map(|o| o.effects.iter()) {
            let super::Effect::Deliver { entry, .. } = effect else {
                continue;
            };
            let set = pending.get_or_insert_with(|| self.search_pending.lock());
            set.note(entry);
        }
    }

    /// Indexes `conv` from its index mark up to its head; returns the head.
    fn search_catch_up(&self, conv: &str) -> StoreResult<u64> {
        let head = self
            .store
            .heads(&[conv])?
            .first()
            .map(|h| h.seq)
            .unwrap_or(0);
        let mut mark = self.store.search_indexed(conv)?;
        while mark < head {
            let entries = self
                .store
                .entries(conv, mark + 1, head, INDEX_BATCH_ENTRIES)?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                break;
            };
            let mut postings = Vec::new();
            let mut words = Vec::new();
            for e in &entries {
                let current;
                let (seq, m) = match &e.body {
                    Some(pb::entry::Body::Message(m)) => (e.seq, m),
                    // The message is stored with its latest content: index
                    // that under the message's seq.
                    Some(pb::entry::Body::Edited(x)) => {
                        current = self.store.entries(conv, x.seq, x.seq, 1)?;
                        match current.first().and_then(|c| match &c.body {
                            Some(pb::entry::Body::Message(m)) if c.seq == x.seq => Some(m),
                            _ => None,
                        }) {
                            Some(m) => (x.seq, m),
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                add_postings(text_of(m), seq, &mut words, &mut postings);
            }
            self.store.search_index(conv, &postings, last)?;
            mark = last;
        }
        Ok(head)
    }

    /// The entry at `seq` if it is a message the query and filter match.
    fn search_match(
        &self,
        conv: &str,
        seq: u64,
        query: &[String],
        filter: &Filter<'_>,
    ) -> StoreResult<Option<pb::Entry>> {
        let Some(entry) = self.store.entries(conv, seq, seq, 1)?.pop() else {
            return Ok(None);
        };
        let Some(pb::entry::Body::Message(m)) = &entry.body else {
            return Ok(None);
        };
        if entry.seq != seq || m.recalled || !filter.admits(&entry) {
            return Ok(None);
        }
        let mut words = Vec::new();
        tokens(text_of(m), Cut::Index, &mut words, TOKENS_PER_MESSAGE_MAX);
        let words: HashSet<&str> = words.iter().map(String::as_str).collect();
        Ok(query
            .iter()
            .all(|q| words.contains(q.as_str()))
            .then_some(entry))
    }

    /// What `me` may read of `conv`, for a search restricted to it.
    fn search_view(&self, me: &Caller, conv: &ConversationId) -> Result<UserConv, DomainError> {
        let conv_s = conv.to_string();
        if let Some(uc) = self.store.user_conv(&me.user_id, &conv_s)? {
            return Ok(uc);
        }
        // A 1:1 conversation of the caller's with no record yet has no
        // messages; anything else is not theirs.
        match conv {
            ConversationId::Direct { .. } if conv.peer_of(&me.user_id).is_some() => Ok(UserConv {
                conversation_id: conv_s,
                visible_from_seq: 1,
                visible_to_seq: 0,
                read_seq: 0,
            }),
            _ => Err(DomainError::NotMember),
        }
    }
}

/// The filters of a request besides the words.
struct Filter<'a> {
    sender: &'a str,
    from_ms: u64,
    to_ms: u64,
}

impl Filter<'_> {
    fn admits(&self, e: &pb::Entry) -> bool {
        (self.sender.is_empty() || e.sender == self.sender)
            && e.time_ms >= self.from_ms
            && (self.to_ms == 0 || e.time_ms < self.to_ms)
    }
}

/// Where the next page starts: entries of `conversation` below
/// `before_seq`, then the conversations after it. On the wire:
/// `<before_seq>/<conversation>` (docs/protocol.md, "Search").
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    conversation: String,
    before_seq: u64,
}

impl Cursor {
    fn at(conv: &str, before_seq: u64) -> Self {
        Self {
            conversation: conv.to_owned(),
            before_seq,
        }
    }

    /// An empty cursor is `None` (the first page).
    fn parse(s: &str) -> Result<Option<Self>, DomainError> {
        if s.is_empty() {
            return Ok(None);
        }
        let bad =
            || DomainError::InvalidArgument("search.cursor is not one the server gave".into());
        let (seq, conv) = s.split_once('/').ok_or_else(bad)?;
        let before_seq: u64 = seq.parse().map_err(|_| bad())?;
        let conv = ConversationId::parse(conv).map_err(|_| bad())?;
        Ok(Some(Self {
            conversation: conv.to_string(),
            before_seq,
        }))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.before_seq, self.conversation)
    }
}

/// The tokens of a query: at least one, at most [`QUERY_TOKENS_MAX`].
fn query_tokens(query: &str) -> Result<Vec<String>, DomainError> {
    let mut out = Vec::new();
    // One more than allowed, to tell "too many" from "exactly the maximum".
    tokens(query, Cut::Query, &mut out, QUERY_TOKENS_MAX + 1);
    if out.is_empty() {
        return Err(DomainError::InvalidArgument(
            "search.query has no words".into(),
        ));
    }
    if out.len() > QUERY_TOKENS_MAX {
        return Err(DomainError::InvalidArgument(format!(
            "search.query has more than {QUERY_TOKENS_MAX} words"
        )));
    }
    Ok(out)
}

/// The query token whose postings are read: the longest (in characters,
/// then bytes), the best guess at the rarest. `query` is never empty.
fn driving_token(query: &[String]) -> &str {
    query
        .iter()
        .max_by_key(|t| (t.chars().count(), t.len()))
        .map(String::as_str)
        .unwrap_or_default()
}

/// What waits for the indexer: the conversations to index and, for each,
/// the seqs and texts of its new entries in the order they were stored, or
/// `None` when its log must be read (an edit, or the texts' bound).
/// Bounded: at most [`PENDING_CONVERSATIONS_MAX`] conversations (past it a
/// conversation is not queued: its next search indexes it) and
/// [`PENDING_TEXT_BYTES_MAX`] bytes of text (past it a conversation's log is
/// read instead).
#[derive(Debug, Default)]
pub(super) struct PendingIndex {
    convs: HashMap<String, Option<Vec<(u64, String)>>>,
    text_bytes: usize,
}

impl PendingIndex {
    /// Notes a stored entry (see [`Domain::search_note`]).
    fn note(&mut self, entry: &pb::Entry) {
        let conv = entry.conversation_id.as_str();
        let text = match &entry.body {
            Some(pb::entry::Body::Message(m)) => Some(text_of(m)),
            Some(pb::entry::Body::Edited(_)) => None,
            // Indexes nothing, but keeps a queued conversation's seqs
            // without a gap (an unqueued one is not queued for it).
            _ if matches!(self.convs.get(conv), Some(Some(_))) => Some(""),
            _ => return,
        };
        if !self.convs.contains_key(conv) && self.convs.len() >= PENDING_CONVERSATIONS_MAX {
            return;
        }
        let held = self
            .convs
            .entry(conv.to_owned())
            .or_insert_with(|| Some(Vec::new()));
        let bytes = text.map_or(0, str::len) + PENDING_ENTRY_BYTES;
        match (text, held.as_mut()) {
            (Some(text), Some(texts)) if self.text_bytes + bytes <= PENDING_TEXT_BYTES_MAX => {
                self.text_bytes += bytes;
                // Deliberate copy on the worker, once per message: the
                // entry itself moves on to delivery, and the copy spares
                // the indexer reading the message back from the store.
                texts.push((entry.seq, text.to_owned()));
            }
            _ => *held = None,
        }
    }
}

/// Appends the index postings of `text` at `seq` to `postings` (`words`
/// is scratch, reused across calls).
fn add_postings(text: &str, seq: u64, words: &mut Vec<String>, postings: &mut Vec<(String, u64)>) {
    words.clear();
    tokens(text, Cut::Index, words, TOKENS_PER_MESSAGE_MAX);
    postings.extend(words.drain(..).map(|w| (w, seq)));
}

/// The searchable text of a message: the text of a `Text` content (other
/// kinds have none indexed), empty for a recalled one.
fn text_of(m: &pb::Message) -> &str {
    match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(pb::content::Kind::Text(t)) if !m.recalled => &t.text,
        _ => "",
    }
}

/// How CJK runs are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// For the index and for checking a candidate: every character and
    /// every bigram of a run.
    Index,
    /// For a query: the bigrams of a run of two or more characters, the
    /// character of a run of one (a subset of what `Index` gives the same
    /// text, so a message always matches a query of its own words).
    Query,
}

/// Appends the distinct tokens of `text` to `out` (see the module doc),
/// in order of first appearance, until `out` holds `max`.
pub fn tokens(text: &str, cut: Cut, out: &mut Vec<String>, max: usize) {
    let mut t = Tokens {
        seen: out.iter().cloned().collect(),
        out,
        max,
        cut,
        run: Vec::new(),
    };
    for word in text.split_word_bounds() {
        if t.out.len() >= t.max {
            return;
        }
        if word.chars().all(is_cjk) {
            // UAX #29 makes each ideograph a word of its own: the run
            // continues across them.
            t.run.extend(word.chars());
            continue;
        }
        t.flush();
        if !word.chars().any(char::is_alphanumeric) {
            continue;
        }
        // A word mixing CJK and other letters (rare): its CJK parts as runs
        // of their own, its other parts as words.
        let mut plain = String::new();
        for c in word.chars() {
            if is_cjk(c) {
                if !plain.is_empty() {
                    t.push(fold(&plain));
                    plain.clear();
                }
                t.run.push(c);
            } else {
                t.flush();
                if !c.is_control() {
                    plain.push(c);
                }
            }
        }
        t.flush();
        if !plain.is_empty() {
            t.push(fold(&plain));
        }
    }
    t.flush();
}

/// The state of [`tokens`].
struct Tokens<'a> {
    out: &'a mut Vec<String>,
    seen: HashSet<String>,
    max: usize,
    cut: Cut,
    /// The current run of CJK characters.
    run: Vec<char>,
}

impl Tokens<'_> {
    fn push(&mut self, t: String) {
        if self.out.len() < self.max && !self.seen.contains(&t) {
            self.seen.insert(t.clone());
            self.out.push(t);
        }
    }

    fn flush(&mut self) {
        let run = std::mem::take(&mut self.run);
        if run.len() == 1 || self.cut == Cut::Index {
            for (i, c) in run.iter().enumerate() {
                self.push(c.to_string());
                if let Some(n) = run.get(i + 1) {
                    self.push([*c, *n].iter().collect());
                }
            }
        } else {
            for pair in run.windows(2) {
                self.push(pair.iter().collect());
            }
        }
    }
}

/// Lowercased and cut to [`TOKEN_CHARS_MAX`] characters.
fn fold(word: &str) -> String {
    word.to_lowercase().chars().take(TOKEN_CHARS_MAX).collect()
}

/// Han ideographs, Hiragana and Katakana: scripts written without spaces
/// between words. (Hangul is written with spaces: plain words.)
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // Hiragana, Katakana
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK Extension A
        | 0x4E00..=0x9FFF   // CJK Unified Ideographs
        | 0xF900..=0xFAFF   // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F   // Halfwidth Katakana
        | 0x20000..=0x3134F // CJK Extensions B..G
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        tokens(s, Cut::Index, &mut out, 100);
        out
    }

    fn message(conv: &str, seq: u64, text: &str) -> pb::Entry {
        pb::Entry {
            conversation_id: conv.into(),
            seq,
            body: Some(pb::entry::Body::Message(pb::Message {
                content: Some(pb::Content {
                    kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn pending_texts_are_bounded_and_fall_back_to_the_log() {
        // Proves the indexer's hand-over bounds: past
        // PENDING_TEXT_BYTES_MAX a conversation's texts are dropped and it
        // is marked for a log read (None), others keep theirs; an edit
        // marks its conversation the same way; a non-message entry of a
        // queued conversation is a text-less seq, of an unqueued one
        // nothing; past PENDING_CONVERSATIONS_MAX nothing new is queued.
        let mut p = PendingIndex::default();
        p.note(&message("d:a:b", 1, "hello"));
        let mut receipt = message("d:a:b", 2, "");
        receipt.body = Some(pb::entry::Body::Read(pb::ReadMark::default()));
        p.note(&receipt);
        receipt.conversation_id = "d:a:c".into();
        p.note(&receipt);
        assert_eq!(
            p.convs.get("d:a:b"),
            Some(&Some(vec![(1, "hello".into()), (2, String::new())]))
        );
        assert!(!p.convs.contains_key("d:a:c"));
        let big = "x".repeat(PENDING_TEXT_BYTES_MAX);
        p.note(&message("d:a:d", 1, &big));
        assert_eq!(
            p.convs.get("d:a:d"),
            Some(&None),
            "over the bound: read the log"
        );
        p.note(&message("d:a:d", 2, "more"));
        assert_eq!(p.convs.get("d:a:d"), Some(&None), "stays a log read");
        let mut edit = message("d:a:b", 3, "");
        edit.body = Some(pb::entry::Body::Edited(pb::Edited::default()));
        p.note(&edit);
        assert_eq!(p.convs.get("d:a:b"), Some(&None), "an edit reads the log");
        for i in 0..PENDING_CONVERSATIONS_MAX {
            p.note(&message(&format!("d:z:{i}"), 1, ""));
        }
        assert_eq!(p.convs.len(), PENDING_CONVERSATIONS_MAX);
    }

    #[test]
    fn words_are_folded_and_punctuation_is_dropped() {
        // Proves case folding, UAX #29 boundaries, and that query syntax
        // characters are not tokens.
        assert_eq!(
            toks("Hello, WORLD! \"*\" -x: a*b"),
            ["hello", "world", "x", "a", "b"]
        );
        assert_eq!(toks("Straße ÉTÉ"), ["straße", "été"]);
        assert!(toks("*** \" ' - : ()").is_empty());
    }

    #[test]
    fn cjk_runs_become_characters_and_bigrams() {
        // Proves Chinese text (no spaces) is indexed as single characters
        // and neighbour pairs, and that Latin words inside it stay words.
        assert_eq!(
            toks("你好世界"),
            ["你", "你好", "好", "好世", "世", "世界", "界"]
        );
        assert_eq!(toks("我用Rust写"), ["我", "我用", "用", "rust", "写"]);
    }

    #[test]
    fn long_words_are_cut_and_counts_are_bounded() {
        // Proves the per-token and per-text bounds.
        let long = "a".repeat(1000);
        assert_eq!(toks(&long), ["a".repeat(TOKEN_CHARS_MAX)]);
        let mut out = Vec::new();
        let many: String = (0..1000).map(|i| format!("w{i} ")).collect();
        tokens(&many, Cut::Index, &mut out, 10);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn queries_need_words_and_keep_only_bigrams_of_cjk_runs() {
        // Proves empty and punctuation-only queries are refused, too many
        // words are refused, and a CJK query holds its bigrams only.
        assert!(query_tokens("").is_err());
        assert!(query_tokens("\"*\"").is_err());
        let many: String = (0..=QUERY_TOKENS_MAX).map(|i| format!("{i} ")).collect();
        assert!(query_tokens(&many).is_err());
        assert_eq!(query_tokens("世界").ok(), Some(vec!["世界".to_owned()]));
        assert_eq!(
            query_tokens("你好世界").ok(),
            Some(vec![
                "你好".to_owned(),
                "好世".to_owned(),
                "世界".to_owned()
            ])
        );
        assert_eq!(query_tokens("世").ok(), Some(vec!["世".to_owned()]));
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        // Proves the cursor's wire form and that a forged one is a typed error.
        let c = Cursor::at("g:team", 42);
        assert_eq!(Cursor::parse(&c.to_string()).ok().flatten(), Some(c));
        assert!(Cursor::parse("x/g:team").is_err());
        assert!(Cursor::parse("1/nonsense").is_err());
        assert!(Cursor::parse("1").is_err());
    }
}
