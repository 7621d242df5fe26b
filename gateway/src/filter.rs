//! The content filter: a sensitive-word list (one Aho-Corasick automaton)
//! checked on the backend worker, before the before-send webhook and the
//! store, on what clients write for others to read:
//!
//! - a `Send`'s (or an `EditRequest`'s, or a `RoomPost`'s) text
//!   (`Text.text`), a file's name (`File.name`) and a location's `name`
//!   and `address`: every human-readable string of a message; `Custom` is
//!   the application's opaque bytes, media fields are ids and types, and
//!   neither is looked at;
//! - group names (`GroupCreate.name`, `GroupRename.name`), announcements
//!   (`GroupAnnounce.announcement`) and room names (`RoomCreate.name`).
//!
//! Calls of the server API are not checked: the service that made them is
//! trusted, as with the before-send hook.
//!
//! Each listed word has a policy: `reject` refuses the whole request with
//! `CONTENT_REJECTED` (nothing is stored), `mask` stores and delivers it
//! with each character of every match replaced by `*` (never longer than
//! what was sent). A request with words of both kinds is rejected.
//!
//! Matching: words match anywhere (also inside longer words: no word
//! boundaries, which scripts without spaces need), overlapping matches
//! included, after lowercasing both the list and the text with Unicode's
//! lowercase mapping (`char::to_lowercase`, character by character): "BAD",
//! "Bad" and "bad" are one word, and so are "ΚΑΚΟ" and "κακο". There is no
//! case folding beyond lowercase ("ß" and "ss" differ) and no Unicode
//! normalization (a precomposed "é" and "e" + U+0301 differ): list each
//! form that matters. ASCII text, the common case, is searched as it is
//! (the automaton is ASCII case-insensitive); other text is lowercased into
//! a copy first.
//!
//! The lists are read at start (a bad line names its file and line) and
//! again on SIGHUP (`crate::reload`, part "filter"): the new automaton is
//! swapped in (`arc-swap`) for the next batch; a list that fails to load
//! keeps the old one. This module never touches a shard.

use std::{
    io::{BufRead as _, Read as _},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use tern_protocol::pb::{self, frame::Body};

use crate::{
    bridge::{Answer, Caller},
    config::{FilterPolicy, FilterSettings},
    metrics::FilterMetrics,
};

/// Longest line of a word list, bytes (without its line end).
pub const LINE_BYTES_MAX: usize = 1024;

/// Why the word lists could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A list could not be opened or read.
    #[error("word list {}: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A line is not UTF-8.
    #[error("word list {}, line {line}: not valid UTF-8", .path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
    },
    /// A line is longer than [`LINE_BYTES_MAX`].
    #[error("word list {}, line {line}: longer than {} bytes", .path.display(), LINE_BYTES_MAX)]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
    },
    /// A policy after the tab that is neither `reject` nor `mask`.
    #[error("word list {}, line {line}: policy {policy:?} is neither \"reject\" nor \"mask\"", .path.display())]
    BadPolicy {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What the line said.
        policy: String,
    },
    /// A policy with no word before it.
    #[error("word list {}, line {line}: a policy without a word", .path.display())]
    NoWord {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
    },
    /// More words than `filter.words_max` in all lists together.
    #[error("word list {}, line {line}: more than {max} words in all lists (filter.words_max)", .path.display())]
    TooMany {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// `filter.words_max`.
        max: usize,
    },
    /// The automaton could not be built (too large for its state ids).
    #[error("word lists: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// The filter of a node: its word lists (swapped whole on reload), where
/// they come from, and its counters. Shared by the backend workers.
#[derive(Debug)]
pub struct ContentFilter {
    words: ArcSwap<Words>,
    files: Vec<PathBuf>,
    default_policy: FilterPolicy,
    words_max: usize,
    metrics: Arc<FilterMetrics>,
}

impl ContentFilter {
    /// The filter of `cfg` (`None` when it lists no file), loaded, with its
    /// reload registered for SIGHUP.
    pub fn start(
        cfg: &FilterSettings,
        metrics: Arc<FilterMetrics>,
    ) -> Result<Option<Arc<Self>>, FilterError> {
        if cfg.word_files.is_empty() {
            return Ok(None);
        }
        let filter = Arc::new(Self::new(cfg, metrics)?);
        let f = filter.clone();
        crate::reload::on_hup("filter", move || {
            let words = f.reload()?;
            tracing::info!(words, "content filter: word lists loaded");
            Ok(())
        });
        Ok(Some(filter))
    }

    /// The filter of `cfg`, loaded (no reload registered).
    pub fn new(cfg: &FilterSettings, metrics: Arc<FilterMetrics>) -> Result<Self, FilterError> {
        let words = Words::load(&cfg.word_files, cfg.default_policy, cfg.words_max)?;
        metrics.words.store(words.len() as i64, Relaxed);
        Ok(Self {
            words: ArcSwap::from_pointee(words),
            files: cfg.word_files.clone(),
            default_policy: cfg.default_policy,
            words_max: cfg.words_max,
            metrics,
        })
    }

    /// Reads the lists again and puts them in force for the next batch;
    /// on error the lists in force stay. The number of words loaded.
    pub fn reload(&self) -> Result<usize, FilterError> {
        let words = Words::load(&self.files, self.default_policy, self.words_max)?;
        let n = words.len();
        self.words.store(Arc::new(words));
        self.metrics.words.store(n as i64, Relaxed);
        Ok(n)
    }

    /// Checks the client requests of `calls` (not those of the server API,
    /// `from_api[i]`), masking in place; per call, the error answer of those
    /// refused.
    pub fn screen(&self, calls: &mut [(Caller, Body)], from_api: &[bool]) -> Vec<Option<Body>> {
        let words = self.words.load();
        let mut out = vec![None; calls.len()];
        if words.is_empty() {
            return out;
        }
        for (i, (_, body)) in calls.iter_mut().enumerate() {
            if from_api.get(i).copied().unwrap_or(false) {
                continue;
            }
            match words.screen_body(body) {
                Screened::Clean => {}
                Screened::Masked => {
                    self.metrics.masked.fetch_add(1, Relaxed);
                }
                Screened::Rejected(reason) => {
                    self.metrics.rejected.fetch_add(1, Relaxed);
                    out[i] = Some(Body::Error(pb::Error {
                        code: pb::ErrorCode::ContentRejected as i32,
                        reason: reason.into(),
                        retry_after_ms: 0,
                    }));
                }
            }
        }
        out
    }
}

/// Runs one batch through the filter (when there is one) and then `inner`
/// (the webhooks and the domain) with the calls that passed, in order, and
/// their `from_api` marks; refused calls are answered here and never reach
/// `inner`. One answer per call, in order.
pub fn handle_batch(
    filter: Option<&ContentFilter>,
    mut calls: Vec<(Caller, Body)>,
    from_api: &[bool],
    inner: impl FnOnce(Vec<(Caller, Body)>, &[bool]) -> Vec<Answer>,
) -> Vec<Answer> {
    let Some(filter) = filter else {
        return inner(calls, from_api);
    };
    let refused = filter.screen(&mut calls, from_api);
    if refused.iter().all(Option::is_none) {
        return inner(calls, from_api);
    }
    let mut passed = Vec::with_capacity(calls.len());
    let mut passed_api = Vec::with_capacity(calls.len());
    for (i, (call, r)) in calls.into_iter().zip(&refused).enumerate() {
        if r.is_none() {
            passed.push(call);
            passed_api.push(from_api.get(i).copied().unwrap_or(false));
        }
    }
    let answers = if passed.is_empty() {
        Vec::new()
    } else {
        inner(passed, &passed_api)
    };
    crate::bridge::merge_refused(refused, answers)
}

/// What the filter made of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// Nothing listed in it.
    Clean,
    /// Listed words were masked in place.
    Masked,
    /// A `reject` word: refuse it with this reason.
    Rejected(&'static str),
}

/// What the filter made of one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing listed in it.
    Clean,
    /// Only `mask` words: the text with each of their characters as `*`.
    Masked(String),
    /// A `reject` word is in it.
    Rejected,
}

/// Loaded word lists: the automaton and each word's policy.
#[derive(Debug)]
pub struct Words {
    /// Lowercased words; ASCII case-insensitive, standard (overlapping)
    /// match semantics.
    automaton: AhoCorasick,
    /// By pattern id.
    policies: Vec<FilterPolicy>,
}

impl Words {
    /// The words of `entries` (as listed; lowercased here).
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, FilterPolicy)>,
    ) -> Result<Self, FilterError> {
        let (words, policies): (Vec<String>, Vec<FilterPolicy>) = entries
            .into_iter()
            .map(|(w, p)| (lowercase(w), p))
            .filter(|(w, _)| !w.is_empty())
            .unzip();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .build(&words)?;
        Ok(Self {
            automaton,
            policies,
        })
    }

    /// Reads every list in `files` (at most `words_max` words in all).
    pub fn load(
        files: &[PathBuf],
        default: FilterPolicy,
        words_max: usize,
    ) -> Result<Self, FilterError> {
        let mut entries: Vec<(String, FilterPolicy)> = Vec::new();
        for path in files {
            read_list(path, default, words_max, &mut entries)?;
        }
        Self::new(entries.iter().map(|(w, p)| (w.as_str(), *p)))
    }

    /// Words loaded.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Heap bytes of the automaton (what the lists cost in memory).
    pub fn memory_bytes(&self) -> usize {
        self.automaton.memory_usage() + self.policies.capacity()
    }

    /// No words: nothing is ever matched.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Checks `text`: clean, masked (a new string), or rejected. Allocates
    /// nothing for a clean ASCII text.
    pub fn check(&self, text: &str) -> Verdict {
        if self.is_empty() || text.is_empty() {
            return Verdict::Clean;
        }
        // Deliberate allocation (non-ASCII text only): the lowercased copy
        // and, per byte of it, where its character starts in `text`.
        let lowered = (!text.is_ascii()).then(|| lowercase_mapped(text));
        let haystack = lowered.as_ref().map_or(text, |(l, _)| l.as_str());
        // Per byte of `text`: the end of the furthest mask match starting
        // there (0: none); allocated at the first mask match.
        let mut reach: Vec<u32> = Vec::new();
        for m in self.automaton.find_overlapping_iter(haystack) {
            if self.policies[m.pattern().as_usize()] == FilterPolicy::Reject {
                return Verdict::Rejected;
            }
            let (start, end) = match &lowered {
                None => (m.start(), m.end()),
                Some((_, origin)) => {
                    // Matches start and end on character boundaries (the
                    // words are UTF-8); map both to `text`'s characters.
                    let start = origin[m.start()] as usize;
                    let last = origin[m.end() - 1] as usize;
                    let end = last + text[last..].chars().next().map_or(1, char::len_utf8);
                    (start, end)
                }
            };
            if reach.is_empty() {
                reach = vec![0; text.len()];
            }
            reach[start] = reach[start].max(end as u32);
        }
        if reach.is_empty() {
            return Verdict::Clean;
        }
        let mut out = String::with_capacity(text.len());
        let mut covered_to = 0usize;
        for (i, c) in text.char_indices() {
            // Matches start on characters of `text` (mapped back above).
            covered_to = covered_to.max(reach[i] as usize);
            out.push(if i < covered_to { '*' } else { c });
        }
        Verdict::Masked(out)
    }

    /// Checks the strings of one client request that others read (see the
    /// module doc), masking them in place unless one of them is rejected.
    pub fn screen_body(&self, body: &mut Body) -> Screened {
        let (fields, reason): ([Option<&mut String>; 2], &'static str) = match body {
            // An edit's new content and a room post are screened like a
            // send's.
            Body::Send(pb::Send { content, .. })
            | Body::Edit(pb::EditRequest { content, .. })
            | Body::RoomPost(pb::RoomPost { content, .. }) => {
                let reason = "the message contains a word that is not allowed here";
                match content.as_mut().and_then(|c| c.kind.as_mut()) {
                    Some(pb::content::Kind::Text(t)) => ([Some(&mut t.text), None], reason),
                    Some(pb::content::Kind::File(f)) => ([Some(&mut f.name), None], reason),
                    Some(pb::content::Kind::Location(l)) => {
                        ([Some(&mut l.name), Some(&mut l.address)], reason)
                    }
                    _ => return Screened::Clean,
                }
            }
            Body::GroupCreate(g) => (
                [Some(&mut g.name), None],
                "the group name contains a word that is not allowed here",
            ),
            Body::GroupRename(g) => (
                [Some(&mut g.name), None],
                "the group name contains a word that is not allowed here",
            ),
            Body::GroupAnnounce(g) => (
                [Some(&mut g.announcement), None],
                "the announcement contains a word that is not allowed here",
            ),
            Body::RoomCreate(r) => (
                [Some(&mut r.name), None],
                "the room name contains a word that is not allowed here",
            ),
            _ => return Screened::Clean,
        };
        let mut masked: [Option<String>; 2] = [None, None];
        for (field, out) in fields.iter().zip(masked.iter_mut()) {
            let Some(text) = field else { continue };
            match self.check(text) {
                Verdict::Clean => {}
                Verdict::Rejected => return Screened::Rejected(reason),
                Verdict::Masked(m) => *out = Some(m),
            }
        }
        let mut any = false;
        for (field, m) in fields.into_iter().zip(masked) {
            if let (Some(field), Some(m)) = (field, m) {
                *field = m;
                any = true;
            }
        }
        if any {
            Screened::Masked
        } else {
            Screened::Clean
        }
    }
}

/// Reads one list into `out`: a word (or phrase) per line, trimmed, with
/// an optional `<TAB>reject` / `<TAB>mask`; blank lines and lines starting
/// with `#` skipped; a UTF-8 byte order mark at the start ignored; CRLF
/// line ends taken.
fn read_list(
    path: &Path,
    default: FilterPolicy,
    words_max: usize,
    out: &mut Vec<(String, FilterPolicy)>,
) -> Result<(), FilterError> {
    let file = std::fs::File::open(path).map_err(|error| FilterError::Read {
        path: path.into(),
        error,
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::with_capacity(128);
    for line in 1.. {
        buf.clear();
        // At most one byte more than a line may have: a longer line is an
        // error, never a buffer as large as the file.
        let n = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|error| FilterError::Read {
                path: path.into(),
                error,
            })?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if n > LINE_BYTES_MAX {
            return Err(FilterError::LineTooLong {
                path: path.into(),
                line,
            });
        }
        if buf.len() > LINE_BYTES_MAX {
            return Err(FilterError::LineTooLong {
                path: path.into(),
                line,
            });
        }
        let text = std::str::from_utf8(&buf).map_err(|_| FilterError::NotUtf8 {
            path: path.into(),
            line,
        })?;
        let text = if line == 1 {
            text.strip_prefix('\u{feff}').unwrap_or(text)
        } else {
            text
        };
        if text.trim_start().starts_with('#') {
            continue;
        }
        let (word, policy) = match text.split_once('\t') {
            None => (text.trim(), default),
            Some((word, policy)) => {
                let policy = match policy.trim() {
                    "reject" => FilterPolicy::Reject,
                    "mask" => FilterPolicy::Mask,
                    other => {
                        return Err(FilterError::BadPolicy {
                            path: path.into(),
                            line,
                            policy: other.into(),
                        });
                    }
                };
                let word = word.trim();
                if word.is_empty() {
                    return Err(FilterError::NoWord {
                        path: path.into(),
                        line,
                    });
                }
                (word, policy)
            }
        };
        if word.is_empty() {
            continue;
        }
        if out.len() >= words_max {
            return Err(FilterError::TooMany {
                path: path.into(),
                line,
                max: words_max,
            });
        }
        out.push((word.to_owned(), policy));
    }
    Ok(())
}

/// `s` lowercased character by character (no context rules, so a text and
/// a word lowercase alike wherever they stand).
fn lowercase(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// `text` lowercased as [`lowercase`] does, and per byte of the result the
/// offset in `text` of the character it came from.
fn lowercase_mapped(text: &str) -> (String, Vec<u32>) {
    let mut lowered = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let before = lowered.len();
        lowered.extend(c.to_lowercase());
        // Texts are bounded far below 4 GiB (frame_bytes_max ≤ 16 MiB).
        origin.resize(origin.len() + lowered.len() - before, i as u32);
    }
    (lowered, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[(&str, FilterPolicy)]) -> Words {
        Words::new(list.iter().copied()).unwrap()
    }

    use FilterPolicy::{Mask, Reject};

    /// Mask words become `*` per character, in any ASCII or Unicode case,
    /// overlapping matches merged; a reject word anywhere wins.
    #[test]
    fn masks_and_rejects_in_any_case() {
        let w = words(&[("darn", Mask), ("arnold", Mask), ("Verboten", Reject)]);
        assert_eq!(w.check("hello"), Verdict::Clean);
        assert_eq!(w.check("oh DARN it"), Verdict::Masked("oh **** it".into()));
        assert_eq!(w.check("darnold"), Verdict::Masked("*******".into()));
        assert_eq!(w.check("so verBOTEN, darn"), Verdict::Rejected);
        let w = words(&[("κακό", Mask), ("bad", Mask), ("坏蛋", Mask)]);
        assert_eq!(
            w.check("ΚΑΚΌ Bad 你是坏蛋!"),
            Verdict::Masked("**** *** 你是**!".into())
        );
        // The Kelvin sign lowercases to ASCII "k": listed as such, it masks
        // the one character of the text.
        let w = words(&[("ok", Mask)]);
        assert_eq!(w.check("o\u{212a}!"), Verdict::Masked("**!".into()));
        // A match inside a character's lowercase expansion masks the whole
        // character ("İ" lowercases to "i" + U+0307).
        let w = words(&[("i", Mask)]);
        assert_eq!(w.check("İx"), Verdict::Masked("*x".into()));
    }

    /// Only the readable strings of a request are looked at, and a reject
    /// in either field of a location refuses it unchanged.
    #[test]
    fn screens_the_fields_others_read() {
        let w = words(&[("spam", Mask), ("scam", Reject)]);
        let mut send = Body::Send(pb::Send {
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Location(pb::Location {
                    name: "spam house".into(),
                    address: "1 scam road".into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
        let before = send.clone();
        assert!(matches!(w.screen_body(&mut send), Screened::Rejected(_)));
        assert_eq!(send, before, "a rejected request is left as it was");
        let mut rename = Body::GroupRename(pb::GroupRename {
            group_id: "g".into(),
            name: "Spam lovers".into(),
        });
        assert_eq!(w.screen_body(&mut rename), Screened::Masked);
        let Body::GroupRename(r) = rename else {
            unreachable!()
        };
        assert_eq!(r.name, "**** lovers");
        let mut custom = Body::Send(pb::Send {
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Custom(pb::Custom {
                    r#type: "scam".into(),
                    data: b"scam".to_vec(),
                })),
            }),
            ..Default::default()
        });
        assert_eq!(w.screen_body(&mut custom), Screened::Clean);
        let mut edit = Body::Edit(pb::EditRequest {
            content: Some(pb::Content {
                kind: Some(pb::content::Kind::Text(pb::Text {
                    text: "no spam".into(),
                })),
            }),
            ..Default::default()
        });
        assert_eq!(w.screen_body(&mut edit), Screened::Masked);
        let Body::Edit(e) = edit else { unreachable!() };
        assert_eq!(
            e.content.and_then(|c| c.kind),
            Some(pb::content::Kind::Text(pb::Text {
                text: "no ****".into()
            }))
        );
    }

    /// A list file: comments, blank lines, a byte order mark, CRLF line
    /// ends and per-word policies are read as documented; each bad file
    /// gives a typed error naming the file and the 1-based line.
    #[test]
    fn list_files_parse_and_bad_ones_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let good = file(
            "good.txt",
            "\u{feff}# comment\r\n\r\nfirst\r\n  two words \tmask\r\nthird\treject".as_bytes(),
        );
        let w = Words::load(&[good], Mask, 10).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.check("FIRST two words"),
            Verdict::Masked("***** *********".into())
        );
        assert_eq!(w.check("a third"), Verdict::Rejected);

        let err = |name: &str, bytes: &[u8], max: usize| {
            let p = file(name, bytes);
            let e = Words::load(std::slice::from_ref(&p), Reject, max).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&p.display().to_string()), "{text}");
            (e, text)
        };
        let (e, text) = err("utf8.txt", b"ok\n\xc3\x28\n", 10);
        assert!(matches!(e, FilterError::NotUtf8 { line: 2, .. }), "{text}");
        let mut long = b"ok\nok\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', LINE_BYTES_MAX + 1));
        let (e, text) = err("long.txt", &long, 10);
        assert!(
            matches!(e, FilterError::LineTooLong { line: 3, .. }),
            "{text}"
        );
        let mut fits = vec![b'x'; LINE_BYTES_MAX];
        fits.extend_from_slice(b"\r\n");
        assert_eq!(
            Words::load(&[file("fits.txt", &fits)], Reject, 10)
                .unwrap()
                .len(),
            1
        );
        let (e, text) = err("policy.txt", b"a\tdrop\n", 10);
        assert!(
            matches!(e, FilterError::BadPolicy { line: 1, .. }),
            "{text}"
        );
        let (e, text) = err("noword.txt", b"a\n \tmask\n", 10);
        assert!(matches!(e, FilterError::NoWord { line: 2, .. }), "{text}");
        let (e, text) = err("many.txt", b"a\nb\nc\nd\n", 3);
        assert!(
            matches!(
                e,
                FilterError::TooMany {
                    line: 4,
                    max: 3,
                    ..
                }
            ),
            "{text}"
        );
        let missing = dir.path().join("missing.txt");
        let e = Words::load(std::slice::from_ref(&missing), Reject, 10).unwrap_err();
        assert!(matches!(e, FilterError::Read { .. }), "{e}");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    /// A list of 50,000 words loads and checks texts (the bench measures
    /// the cost; this only shows it works at that size).
    #[test]
    fn a_large_list_loads_and_matches() {
        let list: Vec<String> = (0..50_000).map(|i| format!("w{i:06}x")).collect();
        let w = Words::new(list.iter().map(|s| (s.as_str(), Mask))).unwrap();
        assert_eq!(w.len(), 50_000);
        assert_eq!(
            w.check("say W049999X now"),
            Verdict::Masked("say ******** now".into())
        );
        assert_eq!(w.check("nothing listed"), Verdict::Clean);
    }

    /// An empty list matches nothing; empty words are dropped (an empty
    /// pattern would match everywhere).
    #[test]
    fn empty_lists_and_words_match_nothing() {
        assert_eq!(words(&[]).check("anything"), Verdict::Clean);
        let w = words(&[("", Reject)]);
        assert!(w.is_empty());
        assert_eq!(w.check("anything"), Verdict::Clean);
    }
}
