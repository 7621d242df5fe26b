//! Per-shard counters, written by their shard with relaxed atomics (no lock
//! on the data path) and summed only when Prometheus scrapes `/metrics`.

use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Why a connection closed (a label of `tern_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed it.
    Peer,
    /// Auth failed or timed out.
    Auth,
    /// No heartbeat in time.
    HeartbeatTimeout,
    /// The outbox filled up.
    SlowConsumer,
    /// Undecodable or oversized input.
    BadInput,
    /// Another connection of the same device logged in.
    Displaced,
    /// Graceful shutdown.
    Shutdown,
    /// A socket error.
    Error,
    /// The shard was full.
    Refused,
}

impl CloseReason {
    const ALL: [CloseReason; 9] = [
        Self::Peer,
        Self::Auth,
        Self::HeartbeatTimeout,
        Self::SlowConsumer,
        Self::BadInput,
        Self::Displaced,
        Self::Shutdown,
        Self::Error,
        Self::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Auth => "auth",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::BadInput => "bad_input",
            Self::Displaced => "displaced",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
            Self::Refused => "refused",
        }
    }
}

/// Upper bounds (µs) of the latency histogram buckets.
const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A fixed-bucket latency histogram made of atomics.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// The counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Connections held now.
    pub connections: AtomicI64,
    /// Connections accepted.
    pub opened: AtomicU64,
    /// Connections closed, by [`CloseReason`].
    pub closed: [AtomicU64; 9],
    /// Auth attempts refused.
    pub auth_failures: AtomicU64,
    /// Frames and bytes from clients.
    pub frames_in: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Frames to clients.
    pub frames_out: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Messages acknowledged to their senders.
    pub messages_sent: AtomicU64,
    /// Deliver frames pushed to devices.
    pub delivered: AtomicU64,
    /// Deliver frames dropped after their last retransmit (the device syncs).
    pub deliveries_dropped: AtomicU64,
    /// Deliveries not pushed because the device's unacked window was full.
    pub window_full: AtomicU64,
    /// Presence updates dropped: the backend queue was full and too many
    /// were already waiting.
    pub presence_dropped: AtomicU64,
    /// Connections closed for heartbeat silence.
    pub heartbeat_timeouts: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: AtomicU64,
    /// Times a connection paused reading because the backend queue was full.
    pub backend_backpressure: AtomicU64,
    /// Items waiting in this shard's inbound rings (sampled).
    pub inbox_depth: AtomicI64,
    /// Send → SendAck latency as seen by the gateway.
    pub send_ack_latency: LatencyHistogram,
}

impl ShardMetrics {
    /// Counts a close.
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Relaxed);
        self.connections.fetch_sub(1, Relaxed);
    }
}

/// Counters of the backend workers.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Batches handled.
    pub batches: AtomicU64,
    /// Requests handled.
    pub requests: AtomicU64,
    /// Requests waiting in the shard→backend queues (sampled).
    pub queue_depth: AtomicI64,
    /// Time to handle one batch, including the durable commit.
    pub batch_latency: LatencyHistogram,
}

/// Everything `/metrics` shows; registered once, read at scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// One per shard, indexed by shard id.
    pub shards: Arc<[Arc<ShardMetrics>]>,
    /// The backend workers (shared).
    pub backend: Arc<BackendMetrics>,
}

impl Metrics {
    /// Metrics for `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| Arc::new(ShardMetrics::default()))
                .collect(),
            backend: Arc::new(BackendMetrics::default()),
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode metrics");
        out
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    hists: &[&LatencyHistogram],
) -> std::fmt::Result {
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_US.len() + 1);
    let (mut count, mut sum_us) = (0u64, 0u64);
    for i in 0..=LATENCY_BUCKETS_US.len() {
        let n: u64 = hists.iter().map(|h| h.buckets[i].load(Relaxed)).sum();
        count += n;
        let upper = LATENCY_BUCKETS_US
            .get(i)
            .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
        buckets.push((upper, n));
    }
    for h in hists {
        sum_us += h.sum_us.load(Relaxed);
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_us as f64 / 1e6,
        count,
        &buckets,
        None,
    )
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = |f: fn(&ShardMetrics) -> &AtomicU64| self.sum(|m| f(m).load(Relaxed));
        let current: i64 = self
            .shards
            .iter()
            .map(|m| m.connections.load(Relaxed))
            .sum();
        gauge(
            &mut enc,
            "tern_connections",
            "Connections held now",
            current,
        )?;
        for (i, m) in self.shards.iter().enumerate() {
            let mut d = enc.encode_descriptor(
                "tern_shard_connections",
                "Connections held now, per shard",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("shard", i.to_string())];
            ConstGauge::new(m.connections.load(Relaxed)).encode(d.encode_family(&labels)?)?;
        }
        counter(
            &mut enc,
            "tern_connections_opened",
            "Connections accepted",
            s(|m| &m.opened),
        )?;
        {
            let mut d = enc.encode_descriptor(
                "tern_connections_closed",
                "Connections closed, by reason",
                None,
                MetricType::Counter,
            )?;
            for r in CloseReason::ALL {
                let v = self.sum(|m| m.closed[r as usize].load(Relaxed));
                ConstCounter::new(v).encode(d.encode_family(&[("reason", r.label())])?)?;
            }
        }
        counter(
            &mut enc,
            "tern_auth_failures",
            "Auth attempts refused",
            s(|m| &m.auth_failures),
        )?;
        counter(
            &mut enc,
            "tern_frames_in",
            "Frames received",
            s(|m| &m.frames_in),
        )?;
        counter(
            &mut enc,
            "tern_frames_out",
            "Frames sent",
            s(|m| &m.frames_out),
        )?;
        counter(
            &mut enc,
            "tern_bytes_in",
            "Bytes received",
            s(|m| &m.bytes_in),
        )?;
        counter(
            &mut enc,
            "tern_bytes_out",
            "Bytes sent",
            s(|m| &m.bytes_out),
        )?;
        counter(
            &mut enc,
            "tern_messages_sent",
            "Messages acked to senders",
            s(|m| &m.messages_sent),
        )?;
        counter(
            &mut enc,
            "tern_deliveries",
            "Deliver frames pushed",
            s(|m| &m.delivered),
        )?;
        counter(
            &mut enc,
            "tern_deliveries_dropped",
            "Deliver frames that left the unacked window without an ack",
            s(|m| &m.deliveries_dropped),
        )?;
        counter(
            &mut enc,
            "tern_deliveries_window_full",
            "Deliveries skipped: unacked window full",
            s(|m| &m.window_full),
        )?;
        counter(
            &mut enc,
            "tern_presence_dropped",
            "Presence updates dropped behind a full backend queue",
            s(|m| &m.presence_dropped),
        )?;
        counter(
            &mut enc,
            "tern_heartbeat_timeouts",
            "Connections closed for silence",
            s(|m| &m.heartbeat_timeouts),
        )?;
        counter(
            &mut enc,
            "tern_slow_consumer_closes",
            "Connections closed as slow consumers",
            s(|m| &m.slow_consumer_closes),
        )?;
        counter(
            &mut enc,
            "tern_backend_backpressure",
            "Reads paused: backend queue full",
            s(|m| &m.backend_backpressure),
        )?;
        let inbox: i64 = self
            .shards
            .iter()
            .map(|m| m.inbox_depth.load(Relaxed))
            .sum();
        gauge(
            &mut enc,
            "tern_shard_inbox_depth",
            "Items in shard inbound rings",
            inbox,
        )?;
        let b = &self.backend;
        gauge(
            &mut enc,
            "tern_backend_queue_depth",
            "Requests queued for the backend",
            b.queue_depth.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "tern_backend_batches",
            "Backend batches",
            b.batches.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "tern_backend_requests",
            "Backend requests",
            b.requests.load(Relaxed),
        )?;
        let send: Vec<&LatencyHistogram> =
            self.shards.iter().map(|m| &m.send_ack_latency).collect();
        histogram(
            &mut enc,
            "tern_send_ack_latency_seconds",
            "Send to SendAck at the gateway",
            &send,
        )?;
        histogram(
            &mut enc,
            "tern_backend_batch_latency_seconds",
            "Backend batch handling incl. durable commit",
            &[&b.batch_latency],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-shard counters are summed at scrape and rendered in the text format.
    #[test]
    fn scrape_sums_shards() {
        let m = Metrics::new(2);
        m.shards[0].opened.fetch_add(3, Relaxed);
        m.shards[1].opened.fetch_add(4, Relaxed);
        m.shards[1].connections.fetch_add(2, Relaxed);
        m.shards[0].closed(CloseReason::SlowConsumer);
        m.shards[1].send_ack_latency.observe_us(700);
        let text = m.render();
        assert!(text.contains("tern_connections_opened_total 7"), "{text}");
        assert!(text.contains("tern_connections 1"), "{text}");
        assert!(
            text.contains("tern_connections_closed_total{reason=\"slow_consumer\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_send_ack_latency_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
    }
}
