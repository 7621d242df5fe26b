//! Merging worker results into one [`Report`]: histograms added, counters
//! summed, the history checker run; printed as a human table or as `--json`
//! with every figure under a plain name.
//!
//! Pure functions of the results; printing is the caller's.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    history::{self, History, Verdict},
    limits::SystemLimits,
    spec::{Plan, WorkerResult},
    worker::decode_hist,
};

/// Latency percentiles in µs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// 50th percentile.
    pub p50_us: u64,
    /// 90th.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// The merged result of a run; every field is a figure with a plain name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Protocol name.
    pub proto: String,
    /// Targets, comma-separated.
    pub targets: String,
    /// Run id (prefix of every id).
    pub run_id: String,
    /// Worker processes.
    pub workers: u64,
    /// Source addresses used.
    pub sources: u64,
    /// Connection slots planned.
    pub conns: u64,
    /// Connection attempts.
    pub attempts: u64,
    /// Slots that authenticated (first attempt).
    pub established: u64,
    /// Slots whose first attempt failed.
    pub failed: u64,
    /// Live at the end of the main phase.
    pub held: u64,
    /// Failure reasons.
    pub fail_reasons: BTreeMap<String, u64>,
    /// Close reasons of live connections.
    pub close_reasons: BTreeMap<String, u64>,
    /// Slowest worker's ramp, ms.
    pub ramp_ms: u64,
    /// Established per second of ramp.
    pub connect_rate_per_s: f64,
    /// Connect + handshake latency.
    pub connect: Latency,
    /// Main phase, ms (longest worker).
    pub main_ms: u64,
    /// Messages the plan offered (rate × duration): more than `sent` when
    /// the senders (or the machine) could not keep up.
    pub planned_sends: u64,
    /// Messages sent.
    pub sent: u64,
    /// Acked.
    pub acked: u64,
    /// Answered with an error.
    pub send_failed: u64,
    /// Unanswered.
    pub send_timeouts: u64,
    /// Failed sends by error code.
    pub send_fail_codes: BTreeMap<String, u64>,
    /// Skipped (sender not live, or in-flight full).
    pub send_skipped: u64,
    /// Messages per second acked in the main phase.
    pub acked_per_s: f64,
    /// Deliveries received (first arrival per device).
    pub delivered: u64,
    /// Entries received for the first time by a device, stamped by this
    /// run or not (with `--idle-acks`, what idle recipients got).
    pub entries_received: u64,
    /// Retransmitted pushes of messages already held.
    pub pushes_repeated: u64,
    /// Deliveries per second during the main phase.
    pub deliveries_per_s: f64,
    /// Send → ack.
    pub ack: Latency,
    /// Send → deliver.
    pub deliver: Latency,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Group setup failures.
    pub setup_errors: u64,
    /// Dropped: by a storm, or moving to another target (a `SHUTDOWN`
    /// kick; a server close with `--reconnect`).
    pub dropped: u64,
    /// Dropped and back.
    pub reconnected: u64,
    /// Storm: failed attempts (retried).
    pub reconnect_failures: u64,
    /// Storm: ms until every dropped connection was back (slowest worker);
    /// absent if some never came back.
    pub reconnect_all_ms: Option<u64>,
    /// Storm: drop → live again.
    pub reconnect: Latency,
    /// Connections kicked with `SHUTDOWN` by a draining node.
    pub kicked_shutdown: u64,
    /// Moving connections (kicked, or closed with `--reconnect`) live again
    /// on another target.
    pub moved: u64,
    /// Unanswered sends resent after a move.
    pub resent: u64,
    /// Live connections closed because the server stopped answering (a
    /// ping unanswered for an interval, or 1.5 intervals of silence — at
    /// least one interval + 1 s — whichever came first).
    pub silent_closes: u64,
    /// Longest last-byte-received → close time of those, ms: the most it
    /// took a client to notice a stopped server.
    pub silent_detect_max_ms: u64,
    /// `--stall` devices that stopped reading.
    pub stalled: u64,
    /// Of those, closed by their server while not reading.
    pub stall_closed: u64,
    /// Longest stop-reading → closed time, ms.
    pub stall_close_max_ms: u64,
    /// Gateway RSS before the run, bytes (sum over `--gateway-pid`).
    pub gateway_rss_before_bytes: Option<u64>,
    /// Gateway RSS with every connection held, bytes.
    pub gateway_rss_held_bytes: Option<u64>,
    /// (held − before) / established: user-space bytes per connection.
    pub gateway_bytes_per_conn: Option<f64>,
    /// Counters from `--metrics` that moved during the run (after − before).
    pub metrics_delta: BTreeMap<String, f64>,
    /// The machine's limits.
    pub sysctls: SystemLimits,
    /// Limits the run brushes against.
    pub warnings: Vec<String>,
    /// The history checker (`--verify`), flattened: `lost`, `duplicated`, ….
    #[serde(flatten)]
    pub verify: Option<Verdict>,
}

/// Sums counters and merges histograms of every worker; runs the checker
/// when the plan asks for it.
pub fn merge(plan: &Plan, workers: u64, results: Vec<WorkerResult>) -> Report {
    let mut r = Report {
        scenario: format!("{:?}", plan.scenario).to_lowercase(),
        proto: format!("{:?}", plan.proto).to_lowercase(),
        targets: plan
            .targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(","),
        run_id: plan.run_id.clone(),
        workers,
        sources: plan.sources.len() as u64,
        conns: plan.slots(),
        ..Default::default()
    };
    let rate = if plan.pairs > 0 { plan.chat_rate } else { 0.0 }
        + if plan.groups > 0 {
            plan.group_rate
        } else {
            0.0
        };
    r.planned_sends = (rate * f64::from(plan.duration_s)) as u64;
    let mut hs: [Option<Histogram<u64>>; 4] = [None, None, None, None];
    let mut history = plan.verify.then(History::default);
    let mut all_back = true;
    let mut delivered_main = 0;
    for w in results {
        r.attempts += w.attempts;
        r.established += w.established;
        r.failed += w.failed;
        r.held += w.held;
        for (k, v) in w.fail_reasons {
            *r.fail_reasons.entry(k).or_default() += v;
        }
        for (k, v) in w.close_reasons {
            *r.close_reasons.entry(k).or_default() += v;
        }
        r.ramp_ms = r.ramp_ms.max(w.ramp_ms);
        r.main_ms = r.main_ms.max(w.main_ms);
        r.sent += w.sent;
        r.acked += w.acked;
        r.send_failed += w.send_failed;
        r.send_timeouts += w.send_timeouts;
        for (k, v) in w.send_fail_codes {
            *r.send_fail_codes.entry(k).or_default() += v;
        }
        r.send_skipped += w.send_skipped;
        r.delivered += w.delivered;
        r.entries_received += w.entries;
        r.pushes_repeated += w.redelivered;
        delivered_main += w.delivered_main;
        r.pings += w.pings;
        r.pongs += w.pongs;
        r.setup_errors += w.setup_errors;
        r.dropped += w.dropped;
        r.reconnected += w.reconnected;
        r.reconnect_failures += w.reconnect_failures;
        r.kicked_shutdown += w.kicked_shutdown;
        r.moved += w.moved;
        r.resent += w.resent;
        r.silent_closes += w.silent_closes;
        r.silent_detect_max_ms = r.silent_detect_max_ms.max(w.silent_detect_max_ms);
        r.stalled += w.stalled;
        r.stall_closed += w.stall_closed;
        r.stall_close_max_ms = r.stall_close_max_ms.max(w.stall_close_max_ms);
        match w.reconnect_all_ms {
            Some(ms) => r.reconnect_all_ms = Some(r.reconnect_all_ms.unwrap_or(0).max(ms)),
            None if w.dropped > 0 => all_back = false,
            None => {}
        }
        for (slot, enc) in hs.iter_mut().zip([
            &w.connect_hist,
            &w.ack_hist,
            &w.deliver_hist,
            &w.reconnect_hist,
        ]) {
            if let Some(h) = decode_hist(enc) {
                match slot {
                    // Both come from `hist()` with the same bounds; adding fits.
                    Some(acc) => acc.add(&h).unwrap_or(()),
                    None => *slot = Some(h),
                }
            }
        }
        if let (Some(all), Some(h)) = (&mut history, w.history) {
            all.merge(h);
        }
    }
    if !all_back || r.dropped == 0 {
        r.reconnect_all_ms = None;
    }
    let lat = |h: &Option<Histogram<u64>>| h.as_ref().map(Latency::of).unwrap_or_default();
    r.connect = lat(&hs[0]);
    r.ack = lat(&hs[1]);
    r.deliver = lat(&hs[2]);
    r.reconnect = lat(&hs[3]);
    if r.ramp_ms > 0 {
        r.connect_rate_per_s = r.established as f64 * 1000.0 / r.ramp_ms as f64;
    }
    if r.main_ms > 0 {
        r.deliveries_per_s = delivered_main as f64 * 1000.0 / r.main_ms as f64;
        r.acked_per_s = r.acked as f64 * 1000.0 / r.main_ms as f64;
    }
    r.verify = history.as_ref().map(history::check);
    r
}

/// The figures a script reads, with plain names (`held`, `ack_p99_us`, …):
/// the report as JSON, with each latency also flattened to `<name>_<pct>_us`.
pub fn to_json(r: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for (name, l) in [
            ("connect", &r.connect),
            ("ack", &r.ack),
            ("deliver", &r.deliver),
            ("reconnect", &r.reconnect),
        ] {
            map.insert(format!("{name}_count"), l.count.into());
            map.insert(format!("{name}_p50_us"), l.p50_us.into());
            map.insert(format!("{name}_p90_us"), l.p90_us.into());
            map.insert(format!("{name}_p99_us"), l.p99_us.into());
            map.insert(format!("{name}_p999_us"), l.p999_us.into());
            map.insert(format!("{name}_max_us"), l.max_us.into());
        }
    }
    v
}

/// The human table.
pub fn human(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<26} {v}");
    };
    row(
        "scenario",
        format!("{} over {} → {}", r.scenario, r.proto, r.targets),
    );
    row("run id", r.run_id.clone());
    row(
        "workers / sources",
        format!("{} / {}", r.workers, r.sources),
    );
    row(
        "connections",
        format!(
            "{} planned, {} established, {} failed, {} held",
            r.conns, r.established, r.failed, r.held
        ),
    );
    if !r.fail_reasons.is_empty() {
        row("failure reasons", format!("{:?}", r.fail_reasons));
    }
    if !r.close_reasons.is_empty() {
        row("close reasons", format!("{:?}", r.close_reasons));
    }
    row(
        "connect rate",
        format!("{:.0}/s over {} ms", r.connect_rate_per_s, r.ramp_ms),
    );
    row("connect latency", lat(&r.connect));
    if let (Some(b), Some(h)) = (r.gateway_rss_before_bytes, r.gateway_rss_held_bytes) {
        row(
            "gateway RSS",
            format!(
                "{:.1} MiB → {:.1} MiB ({} B/conn, user space only)",
                b as f64 / 1048576.0,
                h as f64 / 1048576.0,
                r.gateway_bytes_per_conn
                    .map_or("-".into(), |v| format!("{v:.0}"))
            ),
        );
    }
    if r.sent > 0 || r.delivered > 0 {
        row(
            "messages",
            format!(
                "{} planned, {} sent, {} acked, {} failed, {} timed out, {} skipped",
                r.planned_sends, r.sent, r.acked, r.send_failed, r.send_timeouts, r.send_skipped
            ),
        );
        row("send → ack", lat(&r.ack));
        row(
            "deliveries",
            format!(
                "{} ({:.0}/s in the main phase), {} repeated pushes",
                r.delivered, r.deliveries_per_s, r.pushes_repeated
            ),
        );
        row("send → deliver", lat(&r.deliver));
    }
    if r.dropped > 0 {
        row(
            "storm",
            format!(
                "{} dropped, {} back, {} failed attempts, all back in {}",
                r.dropped,
                r.reconnected,
                r.reconnect_failures,
                r.reconnect_all_ms
                    .map_or("(not all)".into(), |ms| format!("{ms} ms"))
            ),
        );
        row("drop → live", lat(&r.reconnect));
    }
    if r.silent_closes > 0 {
        row(
            "silent server",
            format!(
                "{} connections closed after the server's silence, noticed at most {} ms after its last word",
                r.silent_closes, r.silent_detect_max_ms
            ),
        );
    }
    if r.stalled > 0 {
        row(
            "stalled readers",
            format!(
                "{} stopped reading, {} closed by the server (at most {} ms after)",
                r.stalled, r.stall_closed, r.stall_close_max_ms
            ),
        );
    }
    if r.kicked_shutdown > 0 {
        row(
            "drained",
            format!(
                "{} kicked (SHUTDOWN), {} moved to another target, {} sends resent",
                r.kicked_shutdown, r.moved, r.resent
            ),
        );
    }
    if let Some(v) = &r.verify {
        row(
            "verify",
            format!(
                "{} — lost {}, duplicated {}, divergent {}, out of order {}",
                if v.clean() { "CLEAN" } else { "PROBLEMS" },
                v.lost,
                v.duplicated,
                v.divergent,
                v.out_of_order
            ),
        );
        row(
            "verify detail",
            format!(
                "sends {} ok {} failed {} timeouts {}; gaps {} (filled {}, by final sync {}, fill p99 {:.1} ms); late {}; redelivered {}",
                v.sends,
                v.ok,
                v.failed,
                v.timeouts,
                v.gaps,
                v.gaps_filled,
                v.gaps_filled_by_final_sync,
                v.fill_p99_ms,
                v.late,
                v.redelivered
            ),
        );
        for e in &v.examples {
            row("  e.g.", e.clone());
        }
    }
    if !r.metrics_delta.is_empty() {
        row("gateway metrics Δ", format!("{:?}", r.metrics_delta));
    }
    let l = &r.sysctls;
    row(
        "limits",
        format!(
            "nofile {}/{}, nr_open {}, file-max {}, somaxconn {}, ports {}-{}",
            l.nofile_soft, l.nofile_hard, l.nr_open, l.file_max, l.somaxconn, l.port_lo, l.port_hi
        ),
    );
    for w in &r.warnings {
        row("warning", w.clone());
    }
    s
}

fn lat(l: &Latency) -> String {
    if l.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {} µs, p90 {}, p99 {}, p99.9 {}, max {} (n={})",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
    )
}
