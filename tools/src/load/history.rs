//! The history checker behind `--verify`: the operation log a run keeps
//! ([`History`]) and the pure function that judges it ([`check`]).
//!
//! During the run every send is logged with its outcome (ok with
//! `(conversation, seq)`, a typed failure, or a timeout, which is
//! indeterminate), and every entry every device receives (by push, by sync, or
//! for the sender's own device by its `SendAck`). After the run every device
//! syncs its conversations from the start; that final log is the truth the
//! run-time log is compared with.
//!
//! What counts as what:
//! - **lost**: an acked message missing from the final log of a device that
//!   takes part in its conversation and finished its final sync (counted once per message; `lost_copies`
//!   counts the devices).
//! - **duplicated**: one `(sender, client_msg_id)` stored at more than one seq.
//! - **divergent**: two devices (or an ack and a device) disagree about which
//!   message sits at `(conversation, seq)`.
//! - **out of order**: a device was pushed an entry with a lower seq than one
//!   pushed before in the same conversation (retransmissions of an entry it
//!   holds are `redelivered`, which is allowed).
//! - **gaps**: seqs a device noticed missing (it received a later one first);
//!   each is filled in the run (by a push or its own sync: time-to-fill) or by
//!   the final sync, or never (then it is also lost).
//! - **late**: acked messages a participant device received only in the final
//!   sync.
//!
//! The checker never does I/O and bounds its work by the log's size: a gap
//! wider than [`GAP_SPAN_MAX`] seqs is counted, not walked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The widest seq gap the checker walks seq by seq; a wider one (a server
/// bug or a hostile peer) counts as that many gaps without enumerating them.
pub const GAP_SPAN_MAX: u64 = 100_000;

/// Problem examples kept in a [`Verdict`], for the human report.
pub const EXAMPLES_MAX: usize = 10;

/// Everything one worker (or, merged, the whole run) logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// Every send, in invocation order per device.
    pub sends: Vec<SendOp>,
    /// Every entry every device received, in arrival order per device.
    pub deliveries: Vec<Delivery>,
    /// Every device: what it takes part in, and its final sync.
    pub devices: Vec<DeviceLog>,
}

impl History {
    /// Appends another worker's log.
    pub fn merge(&mut self, other: History) {
        self.sends.extend(other.sends);
        self.deliveries.extend(other.deliveries);
        self.devices.extend(other.devices);
    }
}

/// One send and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendOp {
    /// Sending user.
    pub sender: String,
    /// Sending device.
    pub device: String,
    /// The send's client message id.
    pub cmid: String,
    /// The recipient user or group id.
    pub to: String,
    /// Monotonic ns at invocation.
    pub invoke_ns: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// How a send ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Outcome {
    /// `SendAck`: durable at `(conv, seq)`.
    Ok {
        /// Conversation id.
        conv: String,
        /// Its seq.
        seq: u64,
        /// The server said it had stored it before.
        duplicate: bool,
        /// Monotonic ns of the ack.
        at_ns: u64,
    },
    /// An `Error` answer.
    Fail {
        /// The error code's name.
        code: String,
    },
    /// No answer by the end of the run: it may or may not be stored.
    Timeout,
}

/// How a device came to hold an entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A `Deliver` push.
    Push,
    /// A `SyncResult` during the run.
    Sync,
    /// The device's own `SendAck`.
    Ack,
}

/// One entry received by one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// Receiving user.
    pub user: String,
    /// Receiving device.
    pub device: String,
    /// Conversation id.
    pub conv: String,
    /// Entry seq.
    pub seq: u64,
    /// Monotonic ns of arrival.
    pub at_ns: u64,
    /// How it arrived.
    pub via: Via,
}

/// One entry of a conversation's log as a final sync returned it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct LogEntry {
    /// Conversation id.
    pub conv: String,
    /// Seq.
    pub seq: u64,
    /// Entry sender (user).
    pub sender: String,
    /// Client message id; empty for entries that are not messages.
    pub cmid: String,
}

/// A device, the conversations it takes part in, and its final log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceLog {
    /// User.
    pub user: String,
    /// Device.
    pub device: String,
    /// Conversations it takes part in.
    pub convs: Vec<String>,
    /// Whether the final sync completed (else `entries` is partial).
    pub synced: bool,
    /// The final sync's entries.
    pub entries: Vec<LogEntry>,
}

/// The checker's findings. Every count is a plain number for `--json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// Sends invoked.
    pub sends: u64,
    /// Sends acked.
    pub ok: u64,
    /// Sends answered with an error.
    pub failed: u64,
    /// Sends unanswered (indeterminate).
    pub timeouts: u64,
    /// Acked messages missing on at least one participant device.
    pub lost: u64,
    /// (message, device) pairs missing.
    pub lost_copies: u64,
    /// Extra stored copies of one `(sender, client_msg_id)`.
    pub duplicated: u64,
    /// `(conversation, seq)` positions on which logs or acks disagree.
    pub divergent: u64,
    /// Pushes below an earlier push's seq in the same conversation.
    pub out_of_order: u64,
    /// Pushes of an entry the device already held (allowed).
    pub redelivered: u64,
    /// Missing seqs a device noticed during the run.
    pub gaps: u64,
    /// Of those, filled during the run.
    pub gaps_filled: u64,
    /// Of those, filled only by the final sync.
    pub gaps_filled_by_final_sync: u64,
    /// Time to fill a gap in the run, p50, ms.
    pub fill_p50_ms: f64,
    /// Time to fill, p99, ms.
    pub fill_p99_ms: f64,
    /// Time to fill, max, ms.
    pub fill_max_ms: f64,
    /// Acked messages a participant device got only from the final sync.
    pub late: u64,
    /// Timed-out sends that were stored after all.
    pub timeouts_stored: u64,
    /// Sends answered with an error that were stored anyway.
    pub failed_but_stored: u64,
    /// Devices whose final sync did not complete.
    pub devices_unsynced: u64,
    /// A few problems, described.
    pub examples: Vec<String>,
}

impl Verdict {
    /// True when nothing was lost, duplicated, divergent or out of order.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.divergent == 0
            && self.out_of_order == 0
            && self.failed_but_stored == 0
            && self.devices_unsynced == 0
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(s);
        }
    }
}

type DeviceKey<'a> = (&'a str, &'a str);

/// Judges a run's log.
pub fn check(h: &History) -> Verdict {
    let mut v = Verdict::default();

    // 1. The canonical log: what the final syncs agree sits at each position.
    let mut canon: HashMap<(&str, u64), (&str, &str)> = HashMap::new();
    let mut divergent_at: HashSet<(&str, u64)> = HashSet::new();
    let mut final_has: HashMap<DeviceKey<'_>, HashSet<(&str, u64)>> = HashMap::new();
    for d in &h.devices {
        if !d.synced {
            v.devices_unsynced += 1;
            v.example(format!(
                "device {}/{} did not finish its final sync",
                d.user, d.device
            ));
        }
        // An unsynced device's log is cut short: what it lacks is unknown,
        // not lost (the verdict is unclean through `devices_unsynced`).
        let mut none = HashSet::new();
        let held = if d.synced {
            final_has.entry((&d.user, &d.device)).or_default()
        } else {
            &mut none
        };
        for e in &d.entries {
            held.insert((&e.conv, e.seq));
            let here = (e.sender.as_str(), e.cmid.as_str());
            match canon.get(&(e.conv.as_str(), e.seq)) {
                None => {
                    canon.insert((&e.conv, e.seq), here);
                }
                Some(&there) if there != here => {
                    if divergent_at.insert((&e.conv, e.seq)) {
                        v.example(format!(
                            "{} seq {}: {}/{} on {}/{} but {}/{} elsewhere",
                            e.conv, e.seq, here.0, here.1, d.user, d.device, there.0, there.1
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }

    // 2. Duplicates: one (conversation, sender, cmid) at several seqs.
    let mut stored: HashMap<(&str, &str, &str), BTreeSet<u64>> = HashMap::new();
    for (&(conv, seq), &(sender, cmid)) in &canon {
        if !cmid.is_empty() {
            stored.entry((conv, sender, cmid)).or_default().insert(seq);
        }
    }
    let mut dup_list: Vec<_> = stored.iter().filter(|(_, s)| s.len() > 1).collect();
    dup_list.sort();
    for ((conv, sender, cmid), seqs) in dup_list {
        v.duplicated += seqs.len() as u64 - 1;
        v.example(format!(
            "{sender}/{cmid} stored {} times in {conv}: seqs {seqs:?}",
            seqs.len()
        ));
    }
    let stored_ids: HashSet<(&str, &str)> = stored.keys().map(|&(_, s, c)| (s, c)).collect();

    // Who takes part in each conversation.
    let mut participants: HashMap<&str, Vec<DeviceKey<'_>>> = HashMap::new();
    for d in &h.devices {
        for c in &d.convs {
            participants
                .entry(c)
                .or_default()
                .push((&d.user, &d.device));
        }
    }
    let mut delivered: HashSet<(DeviceKey<'_>, &str, u64)> = HashSet::new();
    for d in &h.deliveries {
        delivered.insert(((&d.user, &d.device), &d.conv, d.seq));
    }

    // 3. Every send against the canonical log.
    let mut acked_at: HashMap<(&str, &str), (&str, u64)> = HashMap::new();
    for s in &h.sends {
        v.sends += 1;
        match &s.outcome {
            Outcome::Ok { conv, seq, .. } => {
                v.ok += 1;
                if let Some(prev) = acked_at.insert((&s.sender, &s.cmid), (conv, *seq))
                    && prev != (conv.as_str(), *seq)
                {
                    v.divergent += 1;
                    v.example(format!(
                        "{}/{} acked at {conv}#{seq} and at {}#{}",
                        s.sender, s.cmid, prev.0, prev.1
                    ));
                }
                if let Some(&(sender, cmid)) = canon.get(&(conv.as_str(), *seq))
                    && (sender, cmid) != (s.sender.as_str(), s.cmid.as_str())
                    && divergent_at.insert((conv, *seq))
                {
                    v.example(format!(
                        "{}/{} acked at {conv}#{seq}, but the log has {sender}/{cmid} there",
                        s.sender, s.cmid
                    ));
                }
                let mut missing = 0;
                let mut missing_on = String::new();
                for &dev in participants
                    .get(conv.as_str())
                    .map_or(&[][..], |p| p.as_slice())
                {
                    let Some(held) = final_has.get(&dev) else {
                        continue;
                    };
                    if !held.contains(&(conv.as_str(), *seq)) {
                        missing += 1;
                        if missing_on.is_empty() {
                            let top = held
                                .iter()
                                .filter(|(c, _)| *c == conv.as_str())
                                .map(|(_, s)| *s)
                                .max();
                            missing_on =
                                format!(" (e.g. {}/{}, whose log ends at {top:?})", dev.0, dev.1);
                        }
                        continue;
                    }
                    let own = dev == (s.sender.as_str(), s.device.as_str());
                    if !own && !delivered.contains(&(dev, conv.as_str(), *seq)) {
                        v.late += 1;
                    }
                }
                if missing > 0 {
                    v.lost += 1;
                    v.lost_copies += missing;
                    v.example(format!(
                        "{}/{} acked at {conv}#{seq} is missing on {missing} device(s){missing_on}",
                        s.sender, s.cmid
                    ));
                }
            }
            Outcome::Fail { code } => {
                v.failed += 1;
                if stored_ids.contains(&(s.sender.as_str(), s.cmid.as_str())) {
                    v.failed_but_stored += 1;
                    v.example(format!(
                        "{}/{} failed with {code} but is stored",
                        s.sender, s.cmid
                    ));
                }
            }
            Outcome::Timeout => {
                v.timeouts += 1;
                if stored_ids.contains(&(s.sender.as_str(), s.cmid.as_str())) {
                    v.timeouts_stored += 1;
                }
            }
        }
    }
    v.divergent += divergent_at.len() as u64;

    // 4. Run-time order and gaps, per device and conversation, in arrival order.
    let mut streams: BTreeMap<(DeviceKey<'_>, &str), Vec<&Delivery>> = BTreeMap::new();
    for d in &h.deliveries {
        streams
            .entry(((&d.user, &d.device), &d.conv))
            .or_default()
            .push(d);
    }
    let mut fills_ms: Vec<f64> = Vec::new();
    for ((dev, conv), list) in &streams {
        let mut st = StreamState::default();
        for d in list {
            st.apply(d, &mut v, &mut fills_ms);
        }
        let held = final_has.get(dev);
        for &s in st.open.keys() {
            if held.is_some_and(|h| h.contains(&(*conv, s))) {
                v.gaps_filled_by_final_sync += 1;
            }
        }
    }
    fills_ms.sort_by(f64::total_cmp);
    v.fill_p50_ms = percentile(&fills_ms, 0.50);
    v.fill_p99_ms = percentile(&fills_ms, 0.99);
    v.fill_max_ms = fills_ms.last().copied().unwrap_or(0.0);
    v
}

/// One device's view of one conversation while replaying its arrivals.
#[derive(Debug, Default)]
struct StreamState {
    started: bool,
    /// The first seq seen: the baseline.
    floor: u64,
    /// Seqs below the baseline that arrived later.
    below: BTreeSet<u64>,
    /// Every seq up to here is held.
    contiguous: u64,
    /// Seqs held above `contiguous`.
    above: BTreeSet<u64>,
    /// Highest pushed seq so far.
    max_push: u64,
    /// Missing seqs noticed, with the ns they were noticed at.
    open: BTreeMap<u64, u64>,
}

impl StreamState {
    fn apply(&mut self, d: &Delivery, v: &mut Verdict, fills_ms: &mut Vec<f64>) {
        if !self.started {
            // The first entry a device sees sets its baseline: a member who
            // joined late may not see the log's start (history_visible).
            self.started = true;
            self.floor = d.seq;
            self.contiguous = d.seq.saturating_sub(1);
        }
        if d.seq < self.floor {
            // Below the baseline: no gap accounting, but order and repeats count.
            if !self.below.insert(d.seq) {
                if d.via == Via::Push {
                    v.redelivered += 1;
                }
                return;
            }
            if d.via == Via::Push && d.seq < self.max_push {
                v.out_of_order += 1;
                v.example(format!(
                    "{}/{} pushed {}#{} after #{}",
                    d.user, d.device, d.conv, d.seq, self.max_push
                ));
            }
            return;
        }
        let held = d.seq <= self.contiguous || self.above.contains(&d.seq);
        if held {
            if d.via == Via::Push {
                v.redelivered += 1;
            }
            return;
        }
        if d.via == Via::Push {
            if d.seq < self.max_push {
                v.out_of_order += 1;
                v.example(format!(
                    "{}/{} pushed {}#{} after #{}",
                    d.user, d.device, d.conv, d.seq, self.max_push
                ));
            }
            self.max_push = self.max_push.max(d.seq);
        }
        if let Some(noticed) = self.open.remove(&d.seq) {
            v.gaps_filled += 1;
            fills_ms.push(d.at_ns.saturating_sub(noticed) as f64 / 1e6);
        }
        // Seqs between what is held and this one are now known missing.
        let top_held = self.above.last().copied().unwrap_or(self.contiguous);
        if d.seq > top_held.saturating_add(1) {
            let span = d.seq - top_held - 1;
            if span > GAP_SPAN_MAX {
                v.gaps = v.gaps.saturating_add(span);
            } else {
                for s in top_held + 1..d.seq {
                    self.open.insert(s, d.at_ns);
                    v.gaps += 1;
                }
            }
        }
        self.above.insert(d.seq);
        while self.contiguous < u64::MAX && self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "d:a:b";

    fn send(cmid: &str, seq: Option<u64>) -> SendOp {
        SendOp {
            sender: "a".into(),
            device: "d0".into(),
            cmid: cmid.into(),
            to: "b".into(),
            invoke_ns: 0,
            outcome: match seq {
                Some(seq) => Outcome::Ok {
                    conv: C.into(),
                    seq,
                    duplicate: false,
                    at_ns: 1,
                },
                None => Outcome::Timeout,
            },
        }
    }

    fn entry(seq: u64, cmid: &str) -> LogEntry {
        LogEntry {
            conv: C.into(),
            seq,
            sender: "a".into(),
            cmid: cmid.into(),
        }
    }

    fn dev(user: &str, entries: Vec<LogEntry>) -> DeviceLog {
        DeviceLog {
            user: user.into(),
            device: "d0".into(),
            convs: vec![C.into()],
            synced: true,
            entries,
        }
    }

    fn push(user: &str, seq: u64, at_ms: u64, via: Via) -> Delivery {
        Delivery {
            user: user.into(),
            device: "d0".into(),
            conv: C.into(),
            seq,
            at_ns: at_ms * 1_000_000,
            via,
        }
    }

    /// Three messages, acked, pushed in order, and in both final logs.
    fn clean() -> History {
        let log = vec![entry(1, "m1"), entry(2, "m2"), entry(3, "m3")];
        History {
            sends: vec![
                send("m1", Some(1)),
                send("m2", Some(2)),
                send("m3", Some(3)),
            ],
            deliveries: (1..=3)
                .flat_map(|s| [push("a", s, s, Via::Ack), push("b", s, s, Via::Push)])
                .collect(),
            devices: vec![dev("a", log.clone()), dev("b", log)],
        }
    }

    #[test]
    fn a_clean_history_is_clean() {
        // Proves the checker reports nothing for a run where every ack, push
        // and final log agree.
        let v = check(&clean());
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.sends, v.ok, v.lost, v.gaps, v.late), (3, 3, 0, 0, 0));
    }

    #[test]
    fn a_lost_message_is_found() {
        // Proves an acked message missing from a participant's final log is
        // lost (and the run-time gap it left is not counted as filled).
        let mut h = clean();
        h.devices[1].entries.retain(|e| e.seq != 2);
        h.deliveries.retain(|d| !(d.user == "b" && d.seq == 2));
        let v = check(&h);
        assert_eq!((v.lost, v.lost_copies), (1, 1), "{v:?}");
        assert_eq!(
            (v.gaps, v.gaps_filled, v.gaps_filled_by_final_sync),
            (1, 0, 0)
        );
        assert!(!v.clean());
    }

    #[test]
    fn an_unsynced_device_is_unsynced_not_lossy() {
        // Proves a device whose final sync did not finish (its log cut
        // short) makes the verdict unclean as unsynced, without counting
        // what its short log lacks as lost: only a finished log can show a
        // loss.
        let mut h = clean();
        h.devices[1].entries.retain(|e| e.seq == 1);
        h.devices[1].synced = false;
        let v = check(&h);
        assert_eq!((v.lost, v.devices_unsynced), (0, 1), "{v:?}");
        assert!(!v.clean());
    }

    #[test]
    fn a_duplicate_is_found() {
        // Proves one client message id stored at two seqs counts as one
        // duplicate, while a retransmitted push only counts as redelivered.
        let mut h = clean();
        for d in &mut h.devices {
            d.entries.push(entry(4, "m3"));
        }
        h.deliveries.push(push("b", 3, 5, Via::Push));
        let v = check(&h);
        assert_eq!(v.duplicated, 1, "{v:?}");
        assert_eq!(v.redelivered, 1);
        assert_eq!(v.divergent, 0);
    }

    #[test]
    fn a_gap_filled_by_sync_has_a_fill_time() {
        // Proves a device that got seq 3 before seq 2 notices one gap, and
        // that the later sync fills it after the measured time.
        let mut h = clean();
        h.deliveries.retain(|d| d.user != "b");
        h.deliveries.push(push("b", 1, 1, Via::Push));
        h.deliveries.push(push("b", 3, 3, Via::Push));
        h.deliveries.push(push("b", 2, 10, Via::Sync));
        let v = check(&h);
        assert_eq!((v.gaps, v.gaps_filled), (1, 1), "{v:?}");
        assert_eq!(v.fill_max_ms, 7.0);
        assert_eq!(v.out_of_order, 0);
        assert!(v.clean());
    }

    #[test]
    fn out_of_order_pushes_and_late_messages_are_counted() {
        // Proves a push below an earlier push is out of order, and a message
        // seen only in the final sync is late (not lost).
        let mut h = clean();
        h.deliveries.retain(|d| d.user != "b");
        h.deliveries.push(push("b", 2, 2, Via::Push));
        h.deliveries.push(push("b", 1, 3, Via::Push));
        let v = check(&h);
        assert_eq!(v.out_of_order, 1, "{v:?}");
        assert_eq!(v.late, 1);
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn divergent_logs_and_stored_timeouts_are_found() {
        // Proves two devices disagreeing at one seq is one divergence, and a
        // timed-out send found in the log is reported as stored.
        let mut h = clean();
        h.devices[1].entries[1].cmid = "other".into();
        h.sends.push(send("m9", None));
        h.devices[0].entries.push(entry(4, "m9"));
        h.devices[1].entries.push(entry(4, "m9"));
        let v = check(&h);
        assert_eq!(v.divergent, 1, "{v:?}");
        assert_eq!((v.timeouts, v.timeouts_stored), (1, 1));
    }

    #[test]
    fn a_huge_gap_is_counted_not_walked() {
        // Proves a seq far beyond the last held one costs no per-seq work.
        let mut st = StreamState::default();
        let mut v = Verdict::default();
        let mut fills = Vec::new();
        st.apply(&push("b", 1, 1, Via::Push), &mut v, &mut fills);
        st.apply(&push("b", u64::MAX / 2, 2, Via::Push), &mut v, &mut fills);
        assert_eq!(v.gaps, u64::MAX / 2 - 2);
        assert!(st.open.is_empty());
        st.apply(&push("b", u64::MAX, 3, Via::Push), &mut v, &mut fills);
        st.apply(&push("b", u64::MAX, 4, Via::Push), &mut v, &mut fills);
        assert_eq!(v.redelivered, 1);
    }
}
