//! Benchmarks live in `benches/`; scripts for side-by-side runs with peer
//! servers live in `scripts/`. This library holds the sample frames they share.
//!
//! The samples are what a busy chat gateway mostly moves: a short text `Send`
//! from a client, and `Deliver` pushes of text entries to devices. They are
//! built, not decoded from fixtures, so they follow the schema as it changes.
//! Nothing here does I/O.

use tern_protocol::pb::{self, frame::Body};

/// The text of the sample messages: 40 bytes, a typical short chat line.
pub const SAMPLE_TEXT: &str = "on my way, see you at the station in 10!";

/// A client's `Send` of [`SAMPLE_TEXT`] to a group, as a phone sends it.
pub fn text_send() -> pb::Frame {
    pb::Frame {
        request_id: 4_211,
        body: Some(Body::Send(pb::Send {
            client_msg_id: "01J9ZQ3V7X8K2M4N6P8R0T2V4X".into(),
            to: Some(pb::send::To::GroupId("weekend-trip".into())),
            content: Some(text_content(SAMPLE_TEXT)),
            ..Default::default()
        })),
    }
}

/// One stored text message of `g:weekend-trip` at `seq`, as the log holds it.
pub fn text_entry(seq: u64) -> pb::Entry {
    pb::Entry {
        conversation_id: "g:weekend-trip".into(),
        seq,
        sender: "alice".into(),
        sender_device: "alice-phone".into(),
        client_msg_id: format!("01J9ZQ3V7X8K2M4N6P8R{seq:06}"),
        time_ms: 1_790_000_000_000 + seq,
        body: Some(pb::entry::Body::Message(pb::Message {
            content: Some(text_content(SAMPLE_TEXT)),
            ..Default::default()
        })),
    }
}

/// A server push of `entries` consecutive text entries (seq 1000, 1001, …).
pub fn deliver(entries: usize) -> pb::Frame {
    pb::Frame {
        request_id: 0,
        body: Some(Body::Deliver(pb::Deliver {
            entries: (0..entries as u64).map(|i| text_entry(1_000 + i)).collect(),
        })),
    }
}

fn text_content(text: &str) -> pb::Content {
    pb::Content {
        kind: Some(pb::content::Kind::Text(pb::Text { text: text.into() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_the_sizes_the_benchmark_tables_quote() {
        // Proves the samples are what docs/benchmarks.md describes: a 40-byte
        // text, and Deliver sizes that grow with the entry count.
        use prost::Message as _;
        assert_eq!(SAMPLE_TEXT.len(), 40);
        let send = text_send().encoded_len();
        let one = deliver(1).encoded_len();
        let sixteen = deliver(16).encoded_len();
        assert!((60..=120).contains(&send), "{send}");
        assert!(
            one > SAMPLE_TEXT.len() && sixteen > 15 * one,
            "{one} {sixteen}"
        );
    }
}
