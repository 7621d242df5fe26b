//! Benchmarks live in `benches/`; scripts for side-by-side runs with peer
//! servers live in `scripts/`. This library holds the sample frames they share,
//! and [`ThreadCpuTime`], a criterion measurement for shared machines.
//!
//! The samples are what a busy chat gateway mostly moves: a short text `Send`
//! from a client, and `Deliver` pushes of text entries to devices. They are
//! built, not decoded from fixtures, so they follow the schema as it changes.
//! Nothing here does I/O.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use tern_protocol::pb::{self, frame::Body};

/// A criterion measurement of the benchmark thread's CPU time
/// (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time.
///
/// On a machine shared with other work (our 2-core VM runs other builds),
/// wall time counts the time the benchmark thread sat preempted, and runs
/// vary by 2–3×; thread CPU time leaves that out. It still counts what
/// contention does to caches, so it is not a clean-room figure either, and
/// it says nothing about code that blocks or spreads across threads: use it
/// for single-threaded, CPU-bound micro benchmarks, next to wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }

    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time: criterion's own formatter fits.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration, and
    // CLOCK_THREAD_CPUTIME_ID is supported on every Linux we run.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    // Both fields are non-negative for a CPU-time clock.
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

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
    fn thread_cpu_time_advances_with_work() {
        // Proves the measurement counts this thread's work: a busy loop moves
        // it forward, and it never goes backwards.
        let m = ThreadCpuTime;
        let start = m.start();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = m.end(start);
        assert!(spent > Duration::ZERO, "{spent:?} for {x}");
        assert_eq!(m.add(&spent, &m.zero()), spent);
    }

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
