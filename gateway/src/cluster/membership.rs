//! Node identity and membership.
//!
//! A node's id comes from the config, else from `<data_dir>/node-id`
//! (generated and written there on the first start, so a restart keeps
//! it). A live node holds a lease in Redis: the key `{n:<id>}:alive`, set
//! with `PX node_lease_ms` and renewed every third of it, and its id in the
//! set `tern:nodes` (for listing). Liveness is the key's existence, judged
//! by Redis's clock alone, so the nodes' clocks need not agree. The lease's
//! value names the run holding it ([`Lease`]), so a second live process
//! started with the same node id is refused at start, and noticed (logged,
//! counted) if it appears later.

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::RwLock;
use redis::{RedisResult, Value, cmd};

use super::{ClusterError, conn::Link};
use crate::{
    config::{Config, NODE_ID_BYTES_MAX, StoreKind, hostname_node_id},
    metrics::ClusterMetrics,
};

/// The set of every node id that registered (members are removed once their
/// lease is found gone).
pub const NODES_KEY: &str = "tern:nodes";

/// The lease key of node `id`.
pub fn lease_key(id: &str) -> String {
    format!("{{n:{id}}}:alive")
}

/// The name of the node id file in the data dir.
pub const NODE_ID_FILE: &str = "node-id";

/// This node's id: `node_id` from the config; else, on the Redis store, the
/// one kept in `<data_dir>/node-id` (generated and written on first use);
/// else the hostname.
pub fn resolve_node_id(cfg: &Config) -> Result<String, ClusterError> {
    if !cfg.node_id.is_empty() {
        return Ok(cfg.node_id.clone());
    }
    if cfg.backend.store != StoreKind::Redis {
        return Ok(hostname_node_id());
    }
    kept_node_id(&cfg.backend.data_dir)
}

/// The node id kept in `dir/node-id`, created there if missing.
pub fn kept_node_id(dir: &Path) -> Result<String, ClusterError> {
    let path = dir.join(NODE_ID_FILE);
    let io = |source| ClusterError::NodeIdFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty()
                || id.len() > NODE_ID_BYTES_MAX
                || tern_protocol::ids::check_id(id).is_err()
            {
                return Err(ClusterError::BadNodeId(path));
            }
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            let id = format!("n-{:016x}", random_u64());
            // Written to a temporary name and renamed: a crash never leaves
            // a half-written id behind.
            let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // No entropy source: time and pid still make two nodes differ.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_ne_bytes(b)
}

/// The file in the data dir naming the run that last held this node's
/// lease (so a restart after `kill -9` takes its own lease back at once).
pub const INCARNATION_FILE: &str = "node-incarnation";

/// This process's hold on its node id's lease. The lease's value is
/// `<incarnation>:<unix ms>`: a random id of this run, then the time of the
/// last renewal, so a renewal by another process with the same node id is
/// told apart from this run's own.
#[derive(Debug)]
pub(crate) struct Lease {
    node: String,
    lease_ms: u64,
    incarnation: String,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Our own lease, renewed.
    Held,
    /// No lease: it had lapsed (a stall or a Redis blip longer than the
    /// lease), and other nodes may have taken this node for dead meanwhile.
    Lapsed,
    /// The lease held another run's incarnation: a second live process
    /// has this node id.
    Twin,
}

impl Lease {
    /// Takes the lease of `node` for this run. Free, or held by the run
    /// named in `data_dir` (this node's earlier run, killed before its lease
    /// expired): taken at once. Held by another run: waits until it expires
    /// (a dead run of this id that used another data dir) or is renewed (a
    /// live one: [`ClusterError::NodeIdInUse`]), at most a lease and a
    /// third. This run is recorded in `data_dir` first.
    pub(crate) fn claim(
        link: &mut Link,
        node: &str,
        lease_ms: u64,
        data_dir: &Path,
    ) -> Result<Self, ClusterError> {
        let lease = Self {
            node: node.to_owned(),
            lease_ms,
            incarnation: format!("{:016x}", random_u64()),
        };
        let file = data_dir.join(INCARNATION_FILE);
        let earlier = std::fs::read_to_string(&file).ok();
        let earlier = earlier.as_deref().map(str::trim);
        // This run is named before it may hold the lease, so a kill at any
        // moment after leaves a file that names the lease's holder. Best
        // effort: without the file a restart waits out the lease.
        let tmp = data_dir.join(format!("{INCARNATION_FILE}.tmp"));
        if std::fs::write(&tmp, format!("{}\n", lease.incarnation))
            .and_then(|()| std::fs::rename(&tmp, &file))
            .is_err()
        {
            tracing::warn!(file = %file.display(), "cluster: cannot record this run in the data dir; a restart will wait for its lease to expire");
        }
        let key = lease_key(node);
        let mut waited: Option<(Instant, String)> = None;
        loop {
            let mut set = cmd("SET");
            set.arg(&key)
                .arg(lease.value())
                .arg("PX")
                .arg(lease_ms)
                .arg("NX");
            if !matches!(link.command(&set)?, Value::Nil) {
                break;
            }
            let held = match link.command(cmd("GET").arg(&key))? {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                // Expired between the two calls: try again.
                _ => continue,
            };
            let holder = held.split(':').next().unwrap_or_default();
            if Some(holder) == earlier {
                // This node's earlier run: ours to take over.
                let mut take = cmd("SET");
                take.arg(&key).arg(lease.value()).arg("PX").arg(lease_ms);
                link.command(&take)?;
                break;
            }
            match &waited {
                None => {
                    tracing::info!(
                        node,
                        "cluster: this node id's lease is held by another run; waiting up to {} ms for it to expire",
                        lease_ms + lease_ms / 3
                    );
                    waited = Some((Instant::now(), held));
                }
                Some((_, first)) if *first != held => {
                    return Err(ClusterError::NodeIdInUse(node.to_owned()));
                }
                Some((since, _))
                    if since.elapsed() > Duration::from_millis(lease_ms + lease_ms / 3) =>
                {
                    // Held all along without a renewal: a lease without an
                    // expiry (set by hand?) is not waited for forever.
                    return Err(ClusterError::NodeIdInUse(node.to_owned()));
                }
                Some(_) => {}
            }
            std::thread::park_timeout(Duration::from_millis((lease_ms / 10).max(10)));
        }
        let mut add = cmd("SADD");
        add.arg(NODES_KEY).arg(node);
        link.command(&add)?;
        Ok(lease)
    }

    fn value(&self) -> String {
        format!("{}:{}", self.incarnation, unix_ms())
    }

    /// Renews the lease (one pipeline) and says what it replaced.
    pub(crate) fn renew(&self, link: &mut Link) -> RedisResult<Renewal> {
        let mut set = cmd("SET");
        set.arg(lease_key(&self.node))
            .arg(self.value())
            .arg("PX")
            .arg(self.lease_ms)
            .arg("GET");
        let mut add = cmd("SADD");
        add.arg(NODES_KEY).arg(&self.node);
        let replies = link.pipeline(vec![set, add])?;
        Ok(match replies.first() {
            Some(Value::BulkString(b)) if !b.starts_with(self.incarnation.as_bytes()) => {
                Renewal::Twin
            }
            Some(Value::Nil) => Renewal::Lapsed,
            _ => Renewal::Held,
        })
    }
}

/// Leaves: the lease goes at once, and the listing too if this node holds
/// no user's presence any more (`{n:<node>}:pu` empty, as after a full
/// drain). Otherwise it stays listed, so the next node to refresh its view
/// finds the lease gone, claims the node and takes that presence back
/// (see [`live_nodes`]).
pub(crate) fn leave(link: &mut Link, node: &str) -> RedisResult<()> {
    let mut del = cmd("DEL");
    del.arg(lease_key(node));
    let mut left = cmd("SCARD");
    left.arg(super::presence::node_users_key(node));
    let replies = link.pipeline(vec![del, left])?;
    if matches!(replies.get(1), Some(Value::Int(0))) {
        let mut rem = cmd("SREM");
        rem.arg(NODES_KEY).arg(node);
        link.command(&rem)?;
    }
    Ok(())
}

/// A set of node ids.
pub type NodeSet = HashSet<Box<str>>;

/// The live nodes (`me` always included): the listed nodes whose lease
/// key exists; and the dead nodes this call claimed. Listed nodes without
/// a lease are removed from the listing, one `SREM` each: the node whose
/// `SREM` removed it (answered 1) claims it, so exactly one node reaps a
/// dead node's presence.
pub(crate) fn live_nodes(link: &mut Link, me: &str) -> RedisResult<(NodeSet, Vec<Box<str>>)> {
    let listed = link.command(cmd("SMEMBERS").arg(NODES_KEY))?;
    let ids: Vec<String> = super::conn::items(&listed)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| super::conn::bytes(v))
        .filter_map(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .collect();
    let alive = exists_each(link, &ids)?;
    let mut live: HashSet<Box<str>> = HashSet::with_capacity(ids.len() + 1);
    let mut gone = Vec::new();
    for (id, up) in ids.into_iter().zip(alive) {
        // This node never claims itself (its lease may have lapsed in a
        // Redis blip; its next renewal brings it back).
        if up || id == me {
            live.insert(id.into_boxed_str());
        } else {
            gone.push(id);
        }
    }
    let mut claimed = Vec::new();
    if !gone.is_empty() {
        // A node that comes back adds itself again with its next renewal.
        let cmds = gone
            .iter()
            .map(|id| {
                let mut rem = cmd("SREM");
                rem.arg(NODES_KEY).arg(id);
                rem
            })
            .collect();
        let replies = link.pipeline(cmds)?;
        claimed = gone
            .into_iter()
            .zip(replies)
            .filter(|(_, r)| matches!(r, Value::Int(1)))
            .map(|(id, _)| id.into_boxed_str())
            .collect();
    }
    live.insert(me.into());
    Ok((live, claimed))
}

/// Whether each node's lease key exists (one pipeline).
pub(crate) fn exists_each(link: &mut Link, nodes: &[impl AsRef<str>]) -> RedisResult<Vec<bool>> {
    let cmds = nodes
        .iter()
        .map(|n| {
            let mut c = cmd("EXISTS");
            c.arg(lease_key(n.as_ref()));
            c
        })
        .collect();
    let replies = link.pipeline(cmds)?;
    Ok(replies
        .iter()
        .map(|v| matches!(v, Value::Int(n) if *n > 0))
        .collect())
}

/// This node's view of the live nodes, refreshed by the cluster thread and
/// read by the backend workers (a read lock held for one lookup).
#[derive(Debug)]
pub struct NodeView {
    me: Arc<str>,
    live: RwLock<Arc<HashSet<Box<str>>>>,
    /// Set by the cluster thread when this node's lease had lapsed; taken
    /// by the channel thread, which asks every shard to count its devices
    /// again.
    recount: AtomicBool,
}

impl NodeView {
    /// A view that knows only `me`.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.into(),
            live: RwLock::new(Arc::new(HashSet::from([me.into()]))),
            recount: AtomicBool::new(false),
        }
    }

    /// Asks for a recount (the lease had lapsed).
    pub fn ask_recount(&self) {
        self.recount.store(true, Ordering::Release);
    }

    /// Whether a recount was asked for since the last call.
    pub fn take_recount(&self) -> bool {
        self.recount.swap(false, Ordering::AcqRel)
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The live nodes now (a snapshot).
    pub fn live(&self) -> Arc<HashSet<Box<str>>> {
        self.live.read().clone()
    }

    /// Replaces the view.
    pub fn replace(&self, live: HashSet<Box<str>>, metrics: &ClusterMetrics) {
        metrics
            .live_nodes
            .store(live.len() as i64, Ordering::Relaxed);
        *self.live.write() = Arc::new(live);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated node id is kept: the second read returns the same id,
    /// and a garbage file is a typed error, not a panic.
    #[test]
    fn node_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = kept_node_id(dir.path()).unwrap();
        let b = kept_node_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(tern_protocol::ids::check_id(&a).is_ok(), "{a}");
        std::fs::write(dir.path().join(NODE_ID_FILE), "not{an}id\n").unwrap();
        assert!(matches!(
            kept_node_id(dir.path()),
            Err(ClusterError::BadNodeId(_))
        ));
    }
}
