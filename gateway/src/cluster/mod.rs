//! The node tier: many `tern serve --store redis` processes on one Redis
//! (or Redis Cluster) working as one. See docs/cluster.md.
//!
//! - [`membership`]: the node's id, its lease in Redis, the view of live
//!   nodes.
//! - [`routes`]: the route table `(user, device) → node` — written from the
//!   shards' route rings in batches by the cluster thread, read by the
//!   backend workers.
//! - [`route_cache`]: each worker's cache of the route table, kept true by
//!   the route log every route write appends to.
//! - [`channel`]: the per-node delivery stream — records written by the
//!   backend workers ([`RemoteRouter`]), consumed by this node's channel
//!   thread and turned into [`ShardMsg`]s for its shards.
//!
//! Imports go one way: `bridge` and `server` use this module; it uses only
//! the public message types of `shard` ([`ShardMsg`], `owner_shard`). It
//! never runs on a shard thread: a shard only pushes a [`RouteChange`] into
//! a bounded ring.

pub mod channel;
mod conn;
pub mod membership;
pub mod route_cache;
pub mod routes;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use channel::RemoteRouter;
pub use membership::NodeView;
use tracing::warn;

use crate::{
    config::{ClusterSettings, Config},
    mailbox::{self, Doorbell, Receiver, Sender},
    metrics::ClusterMetrics,
    shard::ShardMsg,
};

/// Why the node tier could not start or work.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No Redis URL was configured.
    #[error("cluster mode needs a Redis URL")]
    NoRedis,
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The node id file could not be read or written.
    #[error("node id file {path}: {source}")]
    NodeIdFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node id file holds something that is not a node id.
    #[error("node id file {0} does not hold a valid node id ([A-Za-z0-9._@-], 1..=64 bytes)")]
    BadNodeId(std::path::PathBuf),
    /// A thread could not be spawned.
    #[error("spawning a cluster thread: {0}")]
    Spawn(std::io::Error),
}

/// A device logged in on this node (`up`) or left it. Sent by the owner
/// shard of the user, so the changes of one device arrive in order.
#[derive(Debug)]
pub struct RouteChange {
    /// `user\0device` (the shard's own identity string, cloned: one
    /// allocation per change).
    pub ident: Box<str>,
    /// Logged in (true) or closed (false).
    pub up: bool,
}

impl RouteChange {
    /// The user and device ids.
    pub fn parts(&self) -> (&str, &str) {
        self.ident.split_once('\0').unwrap_or((&self.ident, ""))
    }
}

/// A shard's end of its route ring to the cluster thread.
#[derive(Debug)]
pub struct RouteSender {
    ring: Sender<RouteChange>,
    metrics: Arc<ClusterMetrics>,
}

impl RouteSender {
    /// Queues a route change (`ident` is `user\0device`). Never blocks: a
    /// full ring drops the change and counts it
    /// (`tern_cluster_route_ring_full_total`).
    pub fn send(&mut self, ident: &str, up: bool) {
        let change = RouteChange {
            ident: ident.into(),
            up,
        };
        // No doorbell: the cluster thread polls every `route_flush_ms`.
        if self.ring.send_quiet(change).is_err() {
            self.metrics.route_ring_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The node tier of a running gateway: the cluster thread (lease, view of
/// live nodes, route writes) and the channel thread (this node's stream).
#[derive(Debug)]
pub struct Cluster {
    /// This node's view of the live nodes.
    pub view: Arc<NodeView>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What [`Cluster::start`] hands to the rest of the server.
#[derive(Debug)]
pub struct ClusterParts {
    /// The running node tier.
    pub cluster: Cluster,
    /// One route ring per shard, indexed by shard id.
    pub route_rings: Vec<RouteSender>,
    /// One ring per shard from the channel thread, indexed by shard id: to
    /// be added to each shard's inbox.
    pub shard_inboxes: Vec<Receiver<ShardMsg>>,
    /// One per backend worker.
    pub routers: Vec<RemoteRouter>,
}

impl Cluster {
    /// Registers this node (its first lease and view are taken before this
    /// returns: a Redis that cannot be reached fails the start) and starts
    /// the cluster and channel threads.
    pub fn start(
        cfg: &Config,
        node_id: &str,
        shard_bells: &[Arc<Doorbell>],
        workers: usize,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<ClusterParts, ClusterError> {
        let settings = cfg.cluster.clone();
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let connector =
            conn::Connector::new(&cfg.backend.redis_urls, cfg.backend.redis_cluster, timeout)?;
        let view = Arc::new(NodeView::new(node_id));
        let mut link = connector.link();
        membership::renew(&mut link, node_id, settings.node_lease_ms)?;
        view.replace(membership::live_nodes(&mut link, node_id)?, &metrics);
        if view.live().len() > 1 {
            // Other nodes learn of this one at their next view refresh; a
            // node alone in its view reads no routes, so clients are taken
            // only once every other node has refreshed since our lease
            // exists (one refresh interval, plus a margin for the round
            // trips).
            let until = Instant::now() + Duration::from_millis(settings.nodes_refresh_ms + 100);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                std::thread::park_timeout(left);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));

        // The cluster thread: spawned first so its handle can back the
        // rings' doorbell. It polls its rings every `route_flush_ms` and
        // never sleeps on the doorbell, so a shard's push never wakes it.
        let (setup_tx, setup_rx) = std::sync::mpsc::channel::<Vec<Receiver<RouteChange>>>();
        let t = {
            let (view, stop, metrics, settings) = (
                view.clone(),
                stop.clone(),
                metrics.clone(),
                settings.clone(),
            );
            let node = node_id.to_owned();
            std::thread::Builder::new()
                .name("tern-cluster".into())
                .spawn(move || {
                    if let Ok(rings) = setup_rx.recv() {
                        run_cluster_thread(link, &node, rings, &view, &settings, &metrics, &stop);
                    }
                })
                .map_err(ClusterError::Spawn)?
        };
        let bell = Doorbell::thread(t.thread().clone());
        let (route_rings, rx): (Vec<_>, Vec<_>) = shard_bells
            .iter()
            .map(|_| {
                let (ring, rx) = mailbox::channel(settings.route_ring_entries_max, bell.clone());
                let tx = RouteSender {
                    ring,
                    metrics: metrics.clone(),
                };
                (tx, rx)
            })
            .unzip();
        // The thread waits for exactly this message.
        let _ = setup_tx.send(rx);
        let mut threads = vec![t];

        let (to_shards, shard_inboxes): (Vec<_>, Vec<_>) = shard_bells
            .iter()
            .map(|b| mailbox::channel(cfg.shards.ring_entries_max, b.clone()))
            .unzip();
        let consumer = channel::Consumer {
            link: connector.link(),
            node: node_id.to_owned(),
            to_shards,
            settings: settings.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("tern-channel".into())
                .spawn(move || consumer.run())
                .map_err(ClusterError::Spawn)?,
        );
        let routers = (0..workers)
            .map(|_| RemoteRouter::new(connector.link(), view.clone(), &settings, metrics.clone()))
            .collect();
        Ok(ClusterParts {
            cluster: Self {
                view,
                stop,
                threads,
            },
            route_rings,
            shard_inboxes,
            routers,
        })
    }

    /// Stops the threads: the cluster thread writes the route changes still
    /// queued, then leaves (its lease and node entry are deleted, so the
    /// others see it gone at once rather than after its lease).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The cluster thread: renews the lease, refreshes the view, writes route
/// changes in batches. Returns once `stop` is set and the rings are empty.
fn run_cluster_thread(
    mut link: conn::Link,
    node: &str,
    mut rings: Vec<Receiver<RouteChange>>,
    view: &NodeView,
    settings: &ClusterSettings,
    metrics: &ClusterMetrics,
    stop: &AtomicBool,
) {
    let renew_every = Duration::from_millis((settings.node_lease_ms / 3).max(1));
    let refresh_every = Duration::from_millis(settings.nodes_refresh_ms);
    let flush_every = Duration::from_millis(settings.route_flush_ms);
    let mut next_renew = Instant::now() + renew_every;
    let mut next_refresh = Instant::now() + refresh_every;
    let mut batch: Vec<RouteChange> = Vec::with_capacity(settings.route_batch_max);
    let mut warned_at: Option<Instant> = None;
    let mut warn = |what: &str, e: &redis::RedisError| {
        // At most one line per 10 s: Redis away is one cause, not many.
        if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            warned_at = Some(Instant::now());
            warn!(error = %e, "cluster: {what}");
        }
    };
    loop {
        let now = Instant::now();
        if now >= next_renew {
            next_renew = now + renew_every;
            if let Err(e) = membership::renew(&mut link, node, settings.node_lease_ms) {
                warn("lease renewal failed", &e);
            }
        }
        if now >= next_refresh {
            next_refresh = now + refresh_every;
            match membership::live_nodes(&mut link, node) {
                Ok(live) => view.replace(live, metrics),
                Err(e) => warn("reading the live nodes failed", &e),
            }
        }
        // Drain the rings in batches of at most `route_batch_max`.
        loop {
            for rx in &mut rings {
                while batch.len() < settings.route_batch_max {
                    let Some(c) = rx.recv() else { break };
                    batch.push(c);
                }
            }
            if batch.is_empty() {
                break;
            }
            if let Err(e) = routes::write(&mut link, node, &batch, metrics) {
                metrics.route_write_errors.fetch_add(1, Ordering::Relaxed);
                warn("route write failed", &e);
            }
            batch.clear();
        }
        if stop.load(Ordering::Acquire) && rings.iter().all(Receiver::is_empty) {
            if let Err(e) = membership::leave(&mut link, node) {
                warn("leaving failed", &e);
            }
            return;
        }
        std::thread::park_timeout(flush_every);
    }
}
