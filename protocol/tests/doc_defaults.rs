//! docs/protocol.md states the server's defaults; these tests hold it to
//! them. The figures are read from the document itself (the table of
//! section 2.1 and every inline "`setting` (default …)") and compared with
//! `SessionConfig::default()` and `ClientLimits::default()`, so a default
//! changed in code without the document, or the reverse, fails here.

use tern_protocol::session::{
    HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX, HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN, SessionConfig,
};
use tern_protocol::validate::ClientLimits;

/// The protocol reference, read at compile time.
const DOC: &str = include_str!("../../docs/protocol.md");

/// The heading of the table the test reads.
const TABLE_HEADING: &str = "### 2.1 Connection settings";

/// What a figure measures; its unit must be one of this kind's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bytes,
    Millis,
    Percent,
    Count,
}

/// A number with its unit, converted to the kind's base unit (bytes,
/// milliseconds, percent, items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figure {
    kind: Kind,
    value: u64,
}

fn bytes(value: usize) -> Figure {
    Figure {
        kind: Kind::Bytes,
        value: value as u64,
    }
}

fn millis(value: u64) -> Figure {
    Figure {
        kind: Kind::Millis,
        value,
    }
}

fn percent(value: u32) -> Figure {
    Figure {
        kind: Kind::Percent,
        value: u64::from(value),
    }
}

fn count(value: usize) -> Figure {
    Figure {
        kind: Kind::Count,
        value: value as u64,
    }
}

/// Every setting the document states a default for, with the figures its
/// Default cell must state, in order.
fn expected() -> Vec<(&'static str, Vec<Figure>)> {
    let cfg = SessionConfig::default();
    let limits = &cfg.client_limits;
    // The session's limits start from ClientLimits::default() (only the
    // announced text limit differs); the document describes the session's.
    assert_eq!(
        ClientLimits {
            text_bytes_max: limits.text_bytes_max,
            ..ClientLimits::default()
        },
        *limits
    );
    vec![
        ("frame_bytes_max", vec![bytes(cfg.frame_bytes_max)]),
        ("text_bytes_max", vec![bytes(limits.text_bytes_max)]),
        ("unacked_window_max", vec![count(cfg.unacked_window_max)]),
        ("page_entries_max", vec![count(cfg.page_entries_max)]),
        ("auth_timeout_ms", vec![millis(cfg.auth_timeout_ms)]),
        (
            "heartbeat_interval_ms",
            vec![millis(cfg.heartbeat_interval_ms)],
        ),
        (
            "heartbeat_timeout_factor_pct",
            vec![
                percent(cfg.heartbeat_timeout_factor_pct),
                millis(cfg.heartbeat_timeout_ms()),
                percent(HEARTBEAT_TIMEOUT_FACTOR_PCT_MIN),
                percent(HEARTBEAT_TIMEOUT_FACTOR_PCT_MAX),
            ],
        ),
        (
            "heartbeat_jitter_pct",
            vec![percent(cfg.heartbeat_jitter_pct)],
        ),
        (
            "retransmit_initial_ms",
            vec![millis(cfg.retransmit_initial_ms)],
        ),
        (
            "retransmit_attempts_max",
            vec![count(cfg.retransmit_attempts_max as usize)],
        ),
        ("retransmit_max_ms", vec![millis(cfg.retransmit_max_ms)]),
        ("outbox_frames_max", vec![count(cfg.outbox_frames_max)]),
        ("outbox_bytes_max", vec![bytes(cfg.outbox_bytes_max)]),
        ("drain_timeout_ms", vec![millis(cfg.drain_timeout_ms)]),
        ("token_bytes_max", vec![bytes(limits.token_bytes_max)]),
        ("label_bytes_max", vec![bytes(limits.label_bytes_max)]),
        ("note_bytes_max", vec![bytes(limits.note_bytes_max)]),
        ("about_bytes_max", vec![bytes(limits.about_bytes_max)]),
        (
            "custom_data_bytes_max",
            vec![bytes(limits.custom_data_bytes_max)],
        ),
        ("mentions_max", vec![count(limits.mentions_max)]),
        (
            "invite_user_ids_max",
            vec![count(limits.invite_user_ids_max)],
        ),
        ("query_user_ids_max", vec![count(limits.query_user_ids_max)]),
        ("cursors_max", vec![count(limits.cursors_max)]),
        ("seqs_max", vec![count(limits.seqs_max)]),
        ("capabilities_max", vec![count(limits.capabilities_max)]),
    ]
}

/// The unit word's kind and its factor to the base unit.
fn unit(word: &str) -> Option<(Kind, u64)> {
    Some(match word {
        "B" => (Kind::Bytes, 1),
        "KiB" => (Kind::Bytes, 1 << 10),
        "MiB" => (Kind::Bytes, 1 << 20),
        "ms" => (Kind::Millis, 1),
        "s" => (Kind::Millis, 1_000),
        "min" => (Kind::Millis, 60_000),
        "h" => (Kind::Millis, 3_600_000),
        "%" => (Kind::Percent, 1),
        "frames" | "entries" | "users" | "cursors" | "seqs" | "names" | "resends" => {
            (Kind::Count, 1)
        }
        _ => return None,
    })
}

/// Every "number unit" pair in `text`, in order (`65,536 B`, `(60 s);`).
fn figures(text: &str) -> Vec<Figure> {
    let strip = |w: &str| w.trim_matches(|c: char| "()[],;:.*".contains(c)).to_owned();
    let words: Vec<String> = text.split_whitespace().map(strip).collect();
    let mut out = Vec::new();
    for pair in words.windows(2) {
        let digits = pair[0].replace(',', "");
        let Ok(number) = digits.parse::<u64>() else {
            continue;
        };
        if let Some((kind, factor)) = unit(&pair[1]) {
            out.push(Figure {
                kind,
                value: number * factor,
            });
        }
    }
    out
}

/// The rows of the section 2.1 table: (setting name, Default cell).
fn table_rows() -> Vec<(String, String)> {
    let start = DOC
        .find(TABLE_HEADING)
        .expect("docs/protocol.md has section 2.1");
    let section = &DOC[start..];
    let section = &section[..section[TABLE_HEADING.len()..]
        .find("\n#")
        .map_or(section.len(), |end| end + TABLE_HEADING.len())];
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let name = cells[0]
            .trim()
            .strip_prefix('`')
            .and_then(|c| c.split_once("`:"))
            .map(|(name, _)| name.to_owned())
            .unwrap_or_else(|| panic!("a row of 2.1 must start with `setting`: {line}"));
        rows.push((name, cells[1].to_owned()));
    }
    rows
}

#[test]
fn section_2_1_states_every_session_default_exactly() {
    // Proves the default column of section 2.1 equals the server's defaults,
    // setting by setting, and that it lists every setting the test knows
    // and no other (so a new row or a new setting cannot go unchecked).
    let expected = expected();
    let rows = table_rows();
    for (name, cell) in &rows {
        let (_, want) = expected
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("section 2.1 names `{name}`, which this test does not know"));
        assert_eq!(
            &figures(cell),
            want,
            "section 2.1, `{name}`: the Default cell {cell:?} is not the server's default"
        );
    }
    for (name, _) in &expected {
        let n = rows.iter().filter(|(r, _)| r == name).count();
        assert_eq!(n, 1, "section 2.1 must have one row for `{name}`, has {n}");
    }
}

#[test]
fn every_inline_default_in_the_doc_is_the_servers() {
    // Proves each "`setting` (default …)" anywhere in docs/protocol.md names
    // a known setting and states its default (the first figure of its row).
    let expected = expected();
    let marker = "` (default ";
    let mut checked = 0;
    let mut rest = DOC;
    while let Some(at) = rest.find(marker) {
        let before = &rest[..at];
        let name = &before[before.rfind('`').expect("an opening backtick") + 1..];
        let after = &rest[at + marker.len()..];
        let figure_text = &after[..after.find(')').expect("a closing parenthesis")];
        let (_, want) = expected
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("\"`{name}` (default …)\" names an unknown setting"));
        assert_eq!(
            figures(figure_text),
            want[..1],
            "\"`{name}` (default {figure_text})\" is not the server's default"
        );
        checked += 1;
        rest = after;
    }
    assert!(checked > 0, "the doc quotes defaults inline (section 7.2)");
}

#[test]
fn the_figure_reader_reads_units() {
    // Proves the parser this test relies on: thousands separators, binary
    // units, seconds, percent and punctuation around figures.
    assert_eq!(figures("65,536 B"), [bytes(65_536)]);
    assert_eq!(figures("1 MiB"), [bytes(1 << 20)]);
    assert_eq!(
        figures("200 % (60 s); valid from 150 % to 300 %"),
        [percent(200), millis(60_000), percent(150), percent(300)]
    );
    assert_eq!(figures("0 resends"), [count(0)]);
    assert!(figures("see section 7").is_empty());
}
