//! The node tier: many `tern serve --store redis` processes on one Redis
//! (or Redis Cluster) working as one. See docs/cluster.md.
//!
//! - [`membership`]: the node's id, its lease in Redis, the view of live
//!   nodes.
//! - [`routes`]: the route table `(user, device) → node` — written and read
//!   by the backend workers (a device's route changes ride its user's
//!   worker ring, in order with its requests).
//! - [`route_cache`]: each worker's cache of the route table, kept true by
//!   the route log every route write appends to.
//! - [`presence`]: which nodes hold a user's counting devices, the node
//!   bookkeeping a worker does before a batch ([`RemoteRouter::note`]), and
//!   the re-check of users whose node died.
//! - [`channel`]: the per-node delivery stream — records written by the
//!   backend workers ([`RemoteRouter`]), consumed by this node's channel
//!   thread and turned into [`ShardMsg`]s for its shards.
//!
//! Imports go one way: `bridge` and `server` use this module; it uses only
//! the public message types of `shard` ([`ShardMsg`], `owner_shard`). It
//! never runs on a shard thread: a shard's route and presence changes reach
//! it through the backend worker rings.

pub mod channel;
mod conn;
mod devices;
pub mod membership;
pub mod presence;
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
pub use presence::Note;
use tracing::warn;

use crate::{
    config::{ClusterSettings, Config},
    mailbox::{self, Doorbell, Receiver},
    metrics::ClusterMetrics,
    msg::ShardMsg,
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
    /// Another live process renews the lease of this node id.
    #[error(
        "node id {0} is in use by another live node (its lease in Redis was renewed while this one waited): give every node its own id (--node-id, or leave it unset to use the one kept in the data dir)"
    )]
    NodeIdInUse(String),
}

/// The node tier of a running gateway: the cluster thread (lease, view of
/// live nodes, reaping the presence of dead nodes) and the channel thread
/// (this node's stream).
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
    /// One ring per shard from the channel thread, indexed by shard id: to
    /// be added to each shard's inbox.
    pub shard_inboxes: Vec<Receiver<ShardMsg>>,
    /// One per backend worker.
    pub routers: Vec<RemoteRouter>,
}

impl Cluster {
    /// Registers this node (its first lease and view are taken before this
    /// returns: a Redis that cannot be reached fails the start), takes back
    /// the presence an earlier run of this node id left in Redis, and
    /// starts the cluster and channel threads.
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
        let rechecks = Arc::new(presence::Rechecks::default());
        let mut link = connector.link();
        // The lease first: a second live process with this id is refused
        // before it touches anything of the first's.
        let lease = membership::Lease::claim(
            &mut link,
            node_id,
            settings.node_lease_ms,
            &cfg.backend.data_dir,
        )?;
        // Before any client: the users an earlier run of this id counted
        // are this run's to re-check (none of them is connected here yet).
        presence::reap_own_leftovers(&mut link, node_id, &rechecks, timeout * 10)?;
        let (live, dead) = membership::live_nodes(&mut link, node_id)?;
        view.replace(live, &metrics);
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

        let t = {
            let (view, stop, metrics, settings, rechecks) = (
                view.clone(),
                stop.clone(),
                metrics.clone(),
                settings.clone(),
                rechecks.clone(),
            );
            let node = node_id.to_owned();
            std::thread::Builder::new()
                .name("tern-cluster".into())
                .spawn(move || {
                    let mut t = ClusterThread {
                        lease,
                        link,
                        node: &node,
                        view: &view,
                        settings: &settings,
                        metrics: &metrics,
                        rechecks: &rechecks,
                        dead,
                    };
                    t.run(&stop);
                })
                .map_err(ClusterError::Spawn)?
        };
        let mut threads = vec![t];

        let (to_shards, shard_inboxes): (Vec<_>, Vec<_>) = shard_bells
            .iter()
            .map(|b| mailbox::channel(cfg.shards.ring_entries_max, b.clone()))
            .unzip();
        let consumer = channel::Consumer {
            view: view.clone(),
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
            .map(|_| {
                RemoteRouter::new(
                    connector.link(),
                    view.clone(),
                    &settings,
                    metrics.clone(),
                    rechecks.clone(),
                )
            })
            .collect();
        Ok(ClusterParts {
            cluster: Self {
                view,
                stop,
                threads,
            },
            shard_inboxes,
            routers,
        })
    }

    /// Stops the threads (after the workers, which wrote the route changes
    /// of the drain): the cluster thread leaves (its lease is deleted, so
    /// the others see it gone at once rather than after its lease, and the
    /// first to notice takes back whatever presence it still held).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Dead nodes' users taken per turn of the cluster thread at most, so a
/// big dead node never delays the lease renewal by more than a few round
/// trips.
const REAP_USERS_PER_TURN_MAX: usize = 8 * presence::REAP_CHUNK_USERS_MAX;

/// How often the cluster thread wakes: lease, view and reaping are checked
/// this often.
const CLUSTER_TURN_MS: u64 = 20;

/// The cluster thread: renews the lease, refreshes the view, and reaps the
/// presence of the dead nodes this node claimed.
struct ClusterThread<'a> {
    lease: membership::Lease,
    link: conn::Link,
    node: &'a str,
    view: &'a NodeView,
    settings: &'a ClusterSettings,
    metrics: &'a ClusterMetrics,
    rechecks: &'a presence::Rechecks,
    /// Dead nodes this node claimed whose user sets are not empty yet.
    dead: Vec<Box<str>>,
}

impl ClusterThread<'_> {
    /// Returns once `stop` is set (after leaving).
    fn run(&mut self, stop: &AtomicBool) {
        let renew_every = Duration::from_millis((self.settings.node_lease_ms / 3).max(1));
        let refresh_every = Duration::from_millis(self.settings.nodes_refresh_ms);
        let turn = Duration::from_millis(CLUSTER_TURN_MS.min(self.settings.nodes_refresh_ms));
        let mut next_renew = Instant::now() + renew_every;
        let mut next_refresh = Instant::now() + refresh_every;
        let mut warned_at: Option<Instant> = None;
        let mut warn = |what: &str, e: &redis::RedisError| {
            // At most one line per 10 s: Redis away is one cause, not many.
            if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warned_at = Some(Instant::now());
                warn!(error = %e, "cluster: {what}");
            }
        };
        loop {
            if stop.load(Ordering::Acquire) {
                if let Err(e) = membership::leave(&mut self.link, self.node) {
                    warn("leaving failed", &e);
                }
                return;
            }
            let now = Instant::now();
            if now >= next_renew {
                next_renew = now + renew_every;
                match self.lease.renew(&mut self.link) {
                    Ok(membership::Renewal::Held) => {}
                    Ok(membership::Renewal::Twin) => {
                        self.metrics
                            .node_id_conflicts
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            node = self.node,
                            "cluster: another live process renews this node id's lease; give every node its own id"
                        );
                    }
                    Ok(membership::Renewal::Lapsed) => {
                        // Our lease had lapsed (a stall or a Redis blip
                        // longer than the lease): another node may have
                        // claimed this one and taken its users' presence
                        // and routes. The shards count their devices again.
                        self.metrics.lease_lapses.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            node = self.node,
                            "cluster: this node's lease had lapsed; recounting its devices"
                        );
                        self.view.ask_recount();
                    }
                    Err(e) => warn("lease renewal failed", &e),
                }
            }
            if now >= next_refresh {
                next_refresh = now + refresh_every;
                match membership::live_nodes(&mut self.link, self.node) {
                    Ok((live, dead)) => {
                        self.view.replace(live, self.metrics);
                        self.dead.extend(dead);
                    }
                    Err(e) => warn("reading the live nodes failed", &e),
                }
            }
            if let Err(e) = self.reap_some() {
                warn("reaping a dead node's presence failed", &e);
            }
            std::thread::park_timeout(turn);
        }
    }

    /// Takes up to [`REAP_USERS_PER_TURN_MAX`] users of the claimed dead
    /// nodes into the re-check queue (while it has room).
    fn reap_some(&mut self) -> redis::RedisResult<()> {
        let mut budget = REAP_USERS_PER_TURN_MAX;
        while let Some(node) = self.dead.last() {
            let want = presence::REAP_CHUNK_USERS_MAX
                .min(budget)
                .min(self.rechecks.room());
            if want == 0 {
                return Ok(());
            }
            let got = presence::reap(&mut self.link, node, want, self.rechecks)?;
            budget -= got;
            if got < want {
                // Its users are re-checked: its stream goes too (unless the
                // node came back meanwhile).
                channel::delete_if_dead(&mut self.link, node)?;
                self.dead.pop();
            }
        }
        Ok(())
    }
}
