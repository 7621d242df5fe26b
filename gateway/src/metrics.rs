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
    registry::Unit,
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
    /// An operator kicked the device or banned its user (server API).
    Kicked,
    /// Kicked for repeated rate-limit refusals (`[limits]`).
    RateLimited,
}

impl CloseReason {
    const ALL: [CloseReason; 11] = [
        Self::Peer,
        Self::Auth,
        Self::HeartbeatTimeout,
        Self::SlowConsumer,
        Self::BadInput,
        Self::Displaced,
        Self::Shutdown,
        Self::Error,
        Self::Refused,
        Self::Kicked,
        Self::RateLimited,
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
            Self::Kicked => "kicked",
            Self::RateLimited => "rate_limited",
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
    pub closed: [AtomicU64; 11],
    /// Auth attempts refused.
    pub auth_failures: AtomicU64,
    /// Logins welcomed (a `Welcome` queued on the owner shard).
    pub logins: AtomicU64,
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
    /// Room messages pushed to joined connections (`RoomDeliver`).
    pub room_delivered: AtomicU64,
    /// Joins refused at the shard's bounds (`ROOM_JOIN_LIMIT`,
    /// `ROOM_CAPACITY`).
    pub room_joins_refused: AtomicU64,
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
    /// Completions reaped by the io_uring data path.
    pub uring_completions: AtomicU64,
    /// Receives that found the provided buffers all taken (io_uring path).
    pub uring_enobufs: AtomicU64,
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

/// Counters of the node tier (cluster threads and the workers' remote
/// routing); all zero on the embedded store.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Route entries written to Redis (set on login, conditional delete on
    /// close), by the backend workers.
    pub route_writes: AtomicU64,
    /// Route pipelines that failed (Redis away); their changes are lost.
    pub route_write_errors: AtomicU64,
    /// Stale routes (naming a dead node) removed.
    pub routes_cleaned: AtomicU64,
    /// Records added to other nodes' delivery streams.
    pub records_out: AtomicU64,
    /// Records read from this node's delivery stream.
    pub records_in: AtomicU64,
    /// Records of this node's stream that could not be decoded (skipped).
    pub records_malformed: AtomicU64,
    /// Remote pushes given up (Redis away while routing; recipients sync).
    pub records_dropped: AtomicU64,
    /// Live nodes in this node's view (itself included).
    pub live_nodes: AtomicI64,
    /// Displacement records sent: a login here took the route of the same
    /// device connected on another node.
    pub displacements_sent: AtomicU64,
    /// Displacement records received (a connection here to kick).
    pub displacements_received: AtomicU64,
    /// Login policy records sent (a login here put the user's platform
    /// class past its limit: the oldest of the class, on any node, kicked).
    pub policy_kicks_sent: AtomicU64,
    /// Login policy records received (a connection here to kick, if still
    /// the login the record names).
    pub policy_kicks_received: AtomicU64,
    /// A user's last counting device here left while one was connected on
    /// another live node: no OFFLINE.
    pub presence_kept: AtomicU64,
    /// Users re-checked because their presence was on a node that died.
    pub presence_reaped: AtomicU64,
    /// Renewals that found this node's own lease lapsed (its devices were
    /// counted again).
    pub lease_lapses: AtomicU64,
    /// Renewals that found this node id's lease renewed by another live
    /// process (two nodes configured with one id).
    pub node_id_conflicts: AtomicU64,
    /// Recipients whose routes the workers' route caches answered.
    pub route_cache_hits: AtomicU64,
    /// Recipients whose routes were read from Redis (not cached, expired,
    /// or named by the route log).
    pub route_cache_misses: AtomicU64,
    /// Times a worker's route cache started again (log trimmed past its
    /// cursor, too far behind, first use).
    pub route_cache_resets: AtomicU64,
    /// Time a worker spent reading the routes of one batch's recipients
    /// (cache and Redis), before its records are written.
    pub route_read_latency: LatencyHistogram,
}

/// Counters of the HTTP edge, written by its connection tasks.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// HTTP connections open now.
    pub connections: AtomicI64,
    /// Connections refused at `http.connections_max`.
    pub refused: AtomicU64,
    /// Connections closed or requests ended by a limit, by [`HttpTimeout`].
    pub timeouts: [AtomicU64; 4],
    /// Request heads refused as too large (431).
    pub header_too_large: AtomicU64,
}

/// Which HTTP limit ended a connection or a request (a label of
/// `tern_http_timeouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HttpTimeout {
    /// The request head was not complete in time.
    HeaderRead,
    /// The handler did not answer in time (408).
    Request,
    /// Nothing moved on a connection with no request in progress.
    Idle,
    /// The client did not read its responses.
    WriteStall,
}

impl HttpTimeout {
    const ALL: [HttpTimeout; 4] = [
        Self::HeaderRead,
        Self::Request,
        Self::Idle,
        Self::WriteStall,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::HeaderRead => "header_read",
            Self::Request => "request",
            Self::Idle => "idle",
            Self::WriteStall => "write_stall",
        }
    }
}

impl HttpMetrics {
    /// Counts one timeout.
    pub fn timed_out(&self, kind: HttpTimeout) {
        self.timeouts[kind as usize].fetch_add(1, Relaxed);
    }
}

/// Counters of the webhooks (`crate::webhooks`): the before-send outcomes
/// per message, written by the backend workers, and the after-event
/// delivery, written by the webhook thread and (enqueue, drop) the workers.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Sends the before-send hook allowed.
    pub before_allowed: AtomicU64,
    /// Sends it rejected (the client got `CONTENT_REJECTED`).
    pub before_rejected: AtomicU64,
    /// Sends it rewrote.
    pub before_rewritten: AtomicU64,
    /// Sends stored as they were because the hook failed (fail-open).
    pub before_failed_open: AtomicU64,
    /// Sends refused because the hook failed (fail-closed).
    pub before_failed_closed: AtomicU64,
    /// Time of one before-send call (one per batch with sends).
    pub before_latency: LatencyHistogram,
    /// Events delivered (a 2xx answer to their POST).
    pub events_delivered: AtomicU64,
    /// Attempts repeated after a failed one (per POST, not per event).
    pub events_retried: AtomicU64,
    /// Events dropped: the queue was full, or left at shutdown.
    pub events_dropped: AtomicU64,
    /// Events given up after the last attempt.
    pub events_failed: AtomicU64,
    /// Events waiting in the queue (sampled).
    pub events_queue_depth: AtomicI64,
}

/// Counters of the content filter (`crate::filter`), written by the backend
/// workers; the word count by whoever loads the lists (start, SIGHUP).
#[derive(Debug, Default)]
pub struct FilterMetrics {
    /// Client requests refused for a listed word (`CONTENT_REJECTED`).
    pub rejected: AtomicU64,
    /// Client requests stored with listed words masked.
    pub masked: AtomicU64,
    /// Words in the lists in force.
    pub words: AtomicI64,
}

/// Counters of offline push (`crate::push`): written by the backend workers
/// (queueing) and the `tern-push` thread (everything else).
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Notifications a provider accepted, by platform (`PUSH_PLATFORMS`).
    pub sent: [AtomicU64; 2],
    /// Notifications given up, by reason (`PUSH_FAIL_REASONS`).
    pub failed: [AtomicU64; PUSH_FAIL_REASONS.len()],
    /// Provider requests made again after a failed attempt.
    pub retried: AtomicU64,
    /// Jobs dropped: the queue was full (0), or too many notifications
    /// were being collapsed (1), or left at shutdown (2).
    pub dropped: [AtomicU64; 3],
    /// Messages folded into a notification already pending.
    pub collapsed: AtomicU64,
    /// Notifications not sent: the user was online (0), muted (1), held no
    /// token (2).
    pub skipped: [AtomicU64; 3],
    /// Tokens removed because a provider said they are dead.
    pub tokens_removed: AtomicU64,
    /// Jobs waiting in the queue (sampled).
    pub queue_depth: AtomicI64,
}

/// `tern_push_sent_total{platform}` labels, in `PushMetrics::sent` order.
pub const PUSH_PLATFORMS: [&str; 2] = ["apns", "fcm"];
/// `tern_push_failed_total{reason}` labels, in `PushMetrics::failed` order.
/// `store` stays last (`crate::push` counts it by position).
pub const PUSH_FAIL_REASONS: [&str; 8] = [
    "timeout",
    "rate_limited",
    "server_error",
    "rejected",
    "transport",
    "auth",
    "unconfigured",
    "store",
];

/// Everything `/metrics` shows; registered once, read at scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// One per shard, indexed by shard id.
    pub shards: Arc<[Arc<ShardMetrics>]>,
    /// The backend workers (shared).
    pub backend: Arc<BackendMetrics>,
    /// The HTTP edge.
    pub http: Arc<HttpMetrics>,
    /// The node tier.
    pub cluster: Arc<ClusterMetrics>,
    /// Webhooks (before-send and after-events).
    pub webhooks: Arc<WebhookMetrics>,
    /// Rate limits and allow/deny lists (`crate::limits`).
    pub limits: Arc<crate::limits::LimitMetrics>,
    /// The content filter.
    pub filter: Arc<FilterMetrics>,
    /// Offline push.
    pub push: Arc<PushMetrics>,
    /// The served TLS certificate's notAfter, Unix seconds, kept by
    /// `crate::tls::TlsServer`; 0 (no TLS listener, or unreadable): the
    /// gauge is left out.
    pub tls_cert_expiry: Arc<AtomicI64>,
}

impl Metrics {
    /// Metrics for `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| Arc::new(ShardMetrics::default()))
                .collect(),
            backend: Arc::new(BackendMetrics::default()),
            http: Arc::new(HttpMetrics::default()),
            cluster: Arc::new(ClusterMetrics::default()),
            webhooks: Arc::new(WebhookMetrics::default()),
            limits: Arc::new(crate::limits::LimitMetrics::default()),
            filter: Arc::new(FilterMetrics::default()),
            push: Arc::new(PushMetrics::default()),
            tls_cert_expiry: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Renders the OpenMetrics text exposition (which Prometheus reads):
    /// one `# TYPE` per family, base units in names, counters ending in
    /// `_total`, then `# EOF`.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode metrics");
        out
    }

    /// Renders the classic Prometheus text format (version 0.0.4), for
    /// scrapers and tools that do not ask for OpenMetrics (`promtool check
    /// metrics`, curl): the same samples, with a counter's `# HELP` and
    /// `# TYPE` naming its `_total` sample, and no `# UNIT` or `# EOF`.
    pub fn render_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.render())
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }
}

/// The OpenMetrics exposition `prometheus_client` writes, as the classic
/// text format: OpenMetrics names a counter family without its `_total`
/// suffix, the classic format names it with it.
fn openmetrics_to_prometheus_text(om: &str) -> String {
    let counters: hashbrown::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 8 * counters.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A counter family without labels. `name` has neither unit nor `_total`:
/// the encoder appends `_<unit>` and the sample's `_total`.
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

/// A gauge family without labels (`name` without its unit).
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> std::fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// A gauge family with one sample per shard, labelled `shard`.
fn shard_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    shards: &[Arc<ShardMetrics>],
    f: fn(&ShardMetrics) -> i64,
) -> std::fmt::Result {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (i, m) in shards.iter().enumerate() {
        let labels = [("shard", i.to_string())];
        ConstGauge::new(f(m)).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
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
    // Per-bucket counts: the encoder makes them cumulative.
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_us as f64 / 1e6,
        count,
        &buckets,
        None,
    )
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let enc = &mut enc;
        let s = |f: fn(&ShardMetrics) -> &AtomicU64| self.sum(|m| f(m).load(Relaxed));
        let current: i64 = self
            .shards
            .iter()
            .map(|m| m.connections.load(Relaxed))
            .sum();
        gauge(
            enc,
            "tern_connections",
            "Connections held now",
            None,
            current,
        )?;
        shard_gauge(
            enc,
            "tern_shard_connections",
            "Connections held now, per shard",
            &self.shards,
            |m| m.connections.load(Relaxed),
        )?;
        counter(
            enc,
            "tern_connections_opened",
            "Connections accepted",
            None,
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
            enc,
            "tern_auth_failures",
            "Auth attempts refused",
            None,
            s(|m| &m.auth_failures),
        )?;
        counter(
            enc,
            "tern_logins",
            "Logins welcomed",
            None,
            s(|m| &m.logins),
        )?;
        counter(
            enc,
            "tern_received_frames",
            "Frames received from clients",
            None,
            s(|m| &m.frames_in),
        )?;
        counter(
            enc,
            "tern_sent_frames",
            "Frames sent to clients",
            None,
            s(|m| &m.frames_out),
        )?;
        counter(
            enc,
            "tern_received",
            "Bytes received from clients",
            Some(&Unit::Bytes),
            s(|m| &m.bytes_in),
        )?;
        counter(
            enc,
            "tern_sent",
            "Bytes sent to clients",
            Some(&Unit::Bytes),
            s(|m| &m.bytes_out),
        )?;
        counter(
            enc,
            "tern_messages_sent",
            "Messages acked to senders",
            None,
            s(|m| &m.messages_sent),
        )?;
        counter(
            enc,
            "tern_deliveries",
            "Deliver frames pushed",
            None,
            s(|m| &m.delivered),
        )?;
        counter(
            enc,
            "tern_room_deliveries",
            "Room messages pushed to joined connections",
            None,
            s(|m| &m.room_delivered),
        )?;
        counter(
            enc,
            "tern_room_joins_refused",
            "Room joins refused at a shard's bounds (per connection, per shard)",
            None,
            s(|m| &m.room_joins_refused),
        )?;
        counter(
            enc,
            "tern_deliveries_dropped",
            "Deliver frames that left the unacked window without an ack",
            None,
            s(|m| &m.deliveries_dropped),
        )?;
        counter(
            enc,
            "tern_deliveries_window_full",
            "Deliveries skipped: unacked window full",
            None,
            s(|m| &m.window_full),
        )?;
        counter(
            enc,
            "tern_presence_dropped",
            "Presence updates dropped behind a full backend queue",
            None,
            s(|m| &m.presence_dropped),
        )?;
        counter(
            enc,
            "tern_heartbeat_timeouts",
            "Connections closed for silence",
            None,
            s(|m| &m.heartbeat_timeouts),
        )?;
        counter(
            enc,
            "tern_slow_consumer_closes",
            "Connections closed as slow consumers",
            None,
            s(|m| &m.slow_consumer_closes),
        )?;
        counter(
            enc,
            "tern_backend_backpressure",
            "Reads paused: backend queue full",
            None,
            s(|m| &m.backend_backpressure),
        )?;
        counter(
            enc,
            "tern_uring_completions",
            "Completions reaped by the io_uring data path",
            None,
            s(|m| &m.uring_completions),
        )?;
        counter(
            enc,
            "tern_uring_buffers_exhausted",
            "Receives that found every provided buffer taken (back-pressure)",
            None,
            s(|m| &m.uring_enobufs),
        )?;
        shard_gauge(
            enc,
            "tern_shard_inbox_depth",
            "Items in the shard's inbound rings (sampled)",
            &self.shards,
            |m| m.inbox_depth.load(Relaxed),
        )?;
        let b = &self.backend;
        gauge(
            enc,
            "tern_backend_queue_depth",
            "Requests queued for the backend",
            None,
            b.queue_depth.load(Relaxed),
        )?;
        counter(
            enc,
            "tern_backend_batches",
            "Backend batches",
            None,
            b.batches.load(Relaxed),
        )?;
        counter(
            enc,
            "tern_backend_requests",
            "Backend requests",
            None,
            b.requests.load(Relaxed),
        )?;
        let send: Vec<&LatencyHistogram> =
            self.shards.iter().map(|m| &m.send_ack_latency).collect();
        histogram(
            enc,
            "tern_send_ack_latency",
            "Send to SendAck at the gateway",
            &send,
        )?;
        histogram(
            enc,
            "tern_backend_batch_latency",
            "Backend batch handling incl. durable commit",
            &[&b.batch_latency],
        )?;
        self.limits.encode(enc)?;
        let h = &self.http;
        gauge(
            enc,
            "tern_http_connections",
            "HTTP connections open now",
            None,
            h.connections.load(Relaxed),
        )?;
        counter(
            enc,
            "tern_http_connections_refused",
            "HTTP connections refused at http.connections_max",
            None,
            h.refused.load(Relaxed),
        )?;
        counter(
            enc,
            "tern_http_header_too_large",
            "HTTP request heads refused as too large (431)",
            None,
            h.header_too_large.load(Relaxed),
        )?;
        {
            let mut d = enc.encode_descriptor(
                "tern_http_timeouts",
                "HTTP connections or requests ended by a timeout, by kind",
                None,
                MetricType::Counter,
            )?;
            for k in HttpTimeout::ALL {
                let v = h.timeouts[k as usize].load(Relaxed);
                ConstCounter::new(v).encode(d.encode_family(&[("kind", k.label())])?)?;
            }
        }
        {
            let c = &self.cluster;
            let rows: [(&str, &str, &AtomicU64); 18] = [
                (
                    "tern_cluster_lease_lapses",
                    "Renewals that found this node's own lease lapsed (devices recounted)",
                    &c.lease_lapses,
                ),
                (
                    "tern_cluster_node_id_conflicts",
                    "Renewals that found this node id's lease renewed by another live process",
                    &c.node_id_conflicts,
                ),
                (
                    "tern_cluster_route_writes",
                    "Route entries written to Redis",
                    &c.route_writes,
                ),
                (
                    "tern_cluster_displacements_sent",
                    "Displacement records sent to the node holding the same device",
                    &c.displacements_sent,
                ),
                (
                    "tern_cluster_displacements_received",
                    "Displacement records received (a connection here kicked)",
                    &c.displacements_received,
                ),
                (
                    "tern_cluster_login_policy_kicks_sent",
                    "Login policy records sent (the oldest of a platform class past its limit, on any node)",
                    &c.policy_kicks_sent,
                ),
                (
                    "tern_cluster_login_policy_kicks_received",
                    "Login policy records received (a connection here kicked, if still that login)",
                    &c.policy_kicks_received,
                ),
                (
                    "tern_cluster_presence_kept",
                    "Last device here left while the user is online on another node",
                    &c.presence_kept,
                ),
                (
                    "tern_cluster_presence_reaped",
                    "Users re-checked after the node holding their presence died",
                    &c.presence_reaped,
                ),
                (
                    "tern_cluster_route_write_errors",
                    "Route pipelines that failed",
                    &c.route_write_errors,
                ),
                (
                    "tern_cluster_routes_cleaned",
                    "Stale routes to dead nodes removed",
                    &c.routes_cleaned,
                ),
                (
                    "tern_cluster_records_sent",
                    "Records added to other nodes' delivery streams",
                    &c.records_out,
                ),
                (
                    "tern_cluster_records_received",
                    "Records read from this node's delivery stream",
                    &c.records_in,
                ),
                (
                    "tern_cluster_records_malformed",
                    "Records of this node's stream skipped as malformed",
                    &c.records_malformed,
                ),
                (
                    "tern_cluster_records_dropped",
                    "Remote pushes given up (Redis away; recipients sync)",
                    &c.records_dropped,
                ),
                (
                    "tern_cluster_route_cache_hits",
                    "Recipients whose routes a worker's route cache answered",
                    &c.route_cache_hits,
                ),
                (
                    "tern_cluster_route_cache_misses",
                    "Recipients whose routes were read from Redis",
                    &c.route_cache_misses,
                ),
                (
                    "tern_cluster_route_cache_resets",
                    "Times a worker's route cache was emptied to start again",
                    &c.route_cache_resets,
                ),
            ];
            for (name, help, v) in rows {
                counter(enc, name, help, None, v.load(Relaxed))?;
            }
            histogram(
                enc,
                "tern_cluster_route_read_latency",
                "A worker's route read for one batch (cache and Redis)",
                &[&c.route_read_latency],
            )?;
            gauge(
                enc,
                "tern_cluster_live_nodes",
                "Live nodes in this node's view, itself included",
                None,
                c.live_nodes.load(Relaxed),
            )?;
        }
        {
            let w = &self.webhooks;
            {
                let mut d = enc.encode_descriptor(
                    "tern_webhook_before_send",
                    "Sends seen by the before-send hook, by outcome",
                    None,
                    MetricType::Counter,
                )?;
                for (outcome, v) in [
                    ("allowed", &w.before_allowed),
                    ("rejected", &w.before_rejected),
                    ("rewritten", &w.before_rewritten),
                    ("failed_open", &w.before_failed_open),
                    ("failed_closed", &w.before_failed_closed),
                ] {
                    ConstCounter::new(v.load(Relaxed))
                        .encode(d.encode_family(&[("outcome", outcome)])?)?;
                }
            }
            let rows: [(&str, &str, &AtomicU64); 4] = [
                (
                    "tern_webhook_events_delivered",
                    "Webhook events delivered (2xx)",
                    &w.events_delivered,
                ),
                (
                    "tern_webhook_events_retried",
                    "Webhook POSTs attempted again after a failure",
                    &w.events_retried,
                ),
                (
                    "tern_webhook_events_dropped",
                    "Webhook events dropped: queue full, or left at shutdown",
                    &w.events_dropped,
                ),
                (
                    "tern_webhook_events_failed",
                    "Webhook events given up after the last attempt",
                    &w.events_failed,
                ),
            ];
            for (name, help, v) in rows {
                counter(enc, name, help, None, v.load(Relaxed))?;
            }
            gauge(
                enc,
                "tern_webhook_events_queue_depth",
                "Webhook events waiting for delivery",
                None,
                w.events_queue_depth.load(Relaxed),
            )?;
            histogram(
                enc,
                "tern_webhook_before_send_latency",
                "One before-send call (one per batch with sends)",
                &[&w.before_latency],
            )?;
        }
        {
            let p = &self.push;
            // (family, help, label name, label values, counters in order)
            type Labelled<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [AtomicU64]);
            let labelled: [Labelled<'_>; 4] = [
                (
                    "tern_push_sent",
                    "Push notifications a provider accepted, by platform",
                    "platform",
                    &PUSH_PLATFORMS,
                    &p.sent,
                ),
                (
                    "tern_push_failed",
                    "Push notifications given up, by reason",
                    "reason",
                    &PUSH_FAIL_REASONS,
                    &p.failed,
                ),
                (
                    "tern_push_dropped",
                    "Push jobs dropped: queue full, too many pending, or left at shutdown",
                    "reason",
                    &["queue_full", "pending_full", "shutdown"],
                    &p.dropped,
                ),
                (
                    "tern_push_skipped",
                    "Push notifications not sent: the user was online, muted, or held no token",
                    "reason",
                    &["online", "muted", "no_tokens"],
                    &p.skipped,
                ),
            ];
            for (name, help, label, values, counters) in labelled {
                let mut d = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (value, v) in values.iter().zip(counters) {
                    ConstCounter::new(v.load(Relaxed))
                        .encode(d.encode_family(&[(label, *value)])?)?;
                }
            }
            let rows: [(&str, &str, &AtomicU64); 3] = [
                (
                    "tern_push_retried",
                    "Push provider requests made again after a failure",
                    &p.retried,
                ),
                (
                    "tern_push_collapsed",
                    "Messages folded into a push notification already pending",
                    &p.collapsed,
                ),
                (
                    "tern_push_tokens_removed",
                    "Push tokens removed because their provider said they are dead",
                    &p.tokens_removed,
                ),
            ];
            for (name, help, v) in rows {
                counter(enc, name, help, None, v.load(Relaxed))?;
            }
            gauge(
                enc,
                "tern_push_queue_depth",
                "Push jobs waiting for the tern-push thread",
                None,
                p.queue_depth.load(Relaxed),
            )?;
        }
        {
            let f = &self.filter;
            {
                let mut d = enc.encode_descriptor(
                    "tern_content_filter",
                    "Client requests (sends, group names and announcements) the content filter changed, by outcome",
                    None,
                    MetricType::Counter,
                )?;
                for (outcome, v) in [("rejected", &f.rejected), ("masked", &f.masked)] {
                    ConstCounter::new(v.load(Relaxed))
                        .encode(d.encode_family(&[("outcome", outcome)])?)?;
                }
            }
            gauge(
                enc,
                "tern_content_filter_words",
                "Words in the content filter's lists in force",
                None,
                f.words.load(Relaxed),
            )?;
        }
        let expiry = self.tls_cert_expiry.load(Relaxed);
        if expiry != 0 {
            ConstGauge::new(expiry).encode(enc.encode_descriptor(
                "tern_tls_cert_expiry_timestamp",
                "notAfter of the TLS certificate served to new handshakes, Unix seconds",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut d = enc.encode_descriptor(
                "tern_build_info",
                "Build of this tern binary (always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "profile",
                    if cfg!(debug_assertions) {
                        "debug"
                    } else {
                        "release"
                    },
                ),
            ];
            ConstGauge::new(1i64).encode(d.encode_family(&labels)?)?;
        }
        process::encode(enc)
    }
}

/// The `process_*` metrics every Prometheus client library exports, read
/// from `/proc/self` at scrape (Linux). Elsewhere, or if `/proc` is not
/// mounted, they are left out rather than reported as zero.
mod process {
    use prometheus_client::{
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
        registry::Unit,
    };

    /// What one scrape reads.
    #[derive(Debug, Default, Clone, Copy, PartialEq)]
    pub(super) struct Stats {
        pub cpu_seconds: f64,
        pub resident_bytes: i64,
        pub virtual_bytes: i64,
        pub start_time_seconds: f64,
        pub open_fds: Option<i64>,
        pub max_fds: Option<i64>,
    }

    pub(super) fn encode(enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(st) = read() else {
            return Ok(());
        };
        ConstCounter::new(st.cpu_seconds).encode(enc.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        gauge_i(
            enc,
            "process_resident_memory",
            "Resident memory size in bytes",
            Some(&Unit::Bytes),
            st.resident_bytes,
        )?;
        gauge_i(
            enc,
            "process_virtual_memory",
            "Virtual memory size in bytes",
            Some(&Unit::Bytes),
            st.virtual_bytes,
        )?;
        ConstGauge::new(st.start_time_seconds).encode(enc.encode_descriptor(
            "process_start_time",
            "Start time of the process since unix epoch in seconds",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        if let Some(n) = st.open_fds {
            gauge_i(
                enc,
                "process_open_fds",
                "Number of open file descriptors",
                None,
                n,
            )?;
        }
        if let Some(n) = st.max_fds {
            gauge_i(
                enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                n,
            )?;
        }
        Ok(())
    }

    fn gauge_i(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        v: i64,
    ) -> std::fmt::Result {
        ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
    }

    /// Reads this process's figures, or None where `/proc` is unreadable.
    pub(super) fn read() -> Option<Stats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_btime(&s));
        let mut st = parse_stat(&stat, ticks, page, boot?)?;
        // Counting the fd directory is what every client library does;
        // it costs one readdir per open descriptor, at scrape only.
        st.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX));
        st.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| parse_max_fds(&s));
        Some(st)
    }

    /// Parses `/proc/self/stat` (proc(5)): the command name is in
    /// parentheses and may hold spaces, so fields are counted after the
    /// last `)`. `ticks` is `_SC_CLK_TCK`, `page` the page size in bytes,
    /// `boot` the boot time in seconds since the epoch.
    pub(super) fn parse_stat(stat: &str, ticks: i64, page: i64, boot: u64) -> Option<Stats> {
        if ticks <= 0 || page <= 0 {
            return None;
        }
        let rest = &stat[stat.rfind(')')? + 1..];
        // Fields after the name, starting at field 3 (state).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
        let (utime, stime) = (field(14)?, field(15)?);
        let start_ticks = field(22)?;
        let vsize = field(23)?;
        let rss_pages = field(24)?;
        Some(Stats {
            cpu_seconds: (utime + stime) as f64 / ticks as f64,
            resident_bytes: i64::try_from(rss_pages)
                .unwrap_or(i64::MAX)
                .saturating_mul(page),
            virtual_bytes: i64::try_from(vsize).unwrap_or(i64::MAX),
            start_time_seconds: boot as f64 + start_ticks as f64 / ticks as f64,
            open_fds: None,
            max_fds: None,
        })
    }

    /// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
    pub(super) fn parse_btime(s: &str) -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The soft limit of "Max open files" in `/proc/self/limits`.
    pub(super) fn parse_max_fds(s: &str) -> Option<i64> {
        let line = s.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line["Max open files".len()..].split_whitespace().next()?;
        match soft {
            "unlimited" => Some(i64::MAX),
            n => n.parse().ok(),
        }
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
        m.shards[0].bytes_in.fetch_add(10, Relaxed);
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
        assert!(text.contains("tern_received_bytes_total 10"), "{text}");
    }

    /// The per-shard gauge is one family (one `# TYPE`) with a `shard`
    /// label per sample, not one family per shard.
    #[test]
    fn shard_gauge_is_one_family() {
        let m = Metrics::new(3);
        m.shards[2].connections.fetch_add(5, Relaxed);
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE tern_shard_connections gauge").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("tern_shard_connections{shard=\"2\"} 5"),
            "{text}"
        );
    }

    /// `/proc/self/stat` parses with a command name holding spaces and
    /// parentheses; `/proc/stat` and `/proc/self/limits` give boot time
    /// and the fd limit.
    #[test]
    fn proc_files_parse() {
        // Fields 1..=24 of proc(5), utime=250 stime=150 starttime=1000
        // vsize=4096000 rss=10 pages.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 \
                    1000 4096000 10 18446744073709551615";
        let st = process::parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(st.cpu_seconds, 4.0);
        assert_eq!(st.resident_bytes, 40_960);
        assert_eq!(st.virtual_bytes, 4_096_000);
        assert_eq!(st.start_time_seconds, 1_700_000_010.0);
        assert!(process::parse_stat("garbage", 100, 4096, 0).is_none());
        assert!(process::parse_stat("1 (x) S 2", 100, 4096, 0).is_none());
        assert_eq!(
            process::parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(process::parse_max_fds(limits), Some(1024));
        assert!(process::read().is_some(), "/proc is readable on Linux");
    }
}
