//! One Redis link of a cluster thread or a backend worker: a sync
//! connection of the `redis` crate (`Connection`, or `ClusterConnection` on
//! Redis Cluster), made on first use and made again after an error. Each
//! thread owns its link: no pool, no lock.

use std::time::Duration;

use redis::{
    Cmd, ConnectionLike as _, RedisResult, Value,
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, ClusterPipeline},
};

use super::ClusterError;

/// How links are made.
#[derive(Clone)]
pub(crate) enum Connector {
    Single(redis::Client, Duration),
    Cluster(ClusterClient),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(..) => "Connector::Single",
            Self::Cluster(_) => "Connector::Cluster",
        })
    }
}

impl Connector {
    /// A connector to `urls` (one server, or Cluster seeds), with `timeout`
    /// on connecting and on every round trip.
    pub(crate) fn new(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        if cluster {
            // The store's bounded retry policy (the crate's default waits
            // 1.28 s or more per TRYAGAIN, 16 times).
            use tern_backend::redis_store::{
                CLUSTER_RETRIES_MAX, CLUSTER_RETRY_WAIT_MS_MAX, CLUSTER_RETRY_WAIT_MS_MIN,
            };
            let c = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(CLUSTER_RETRIES_MAX)
                .min_retry_wait(CLUSTER_RETRY_WAIT_MS_MIN)
                .max_retry_wait(CLUSTER_RETRY_WAIT_MS_MAX)
                .retry_wait_formula(CLUSTER_RETRY_WAIT_MS_MIN, 2)
                .build()?;
            return Ok(Self::Cluster(c));
        }
        let url = urls.first().ok_or(ClusterError::NoRedis)?;
        Ok(Self::Single(redis::Client::open(url.as_str())?, timeout))
    }

    /// A link that connects on first use.
    pub(crate) fn link(&self) -> Link {
        Link {
            connector: self.clone(),
            conn: None,
        }
    }
}

enum Conn {
    Single(redis::Connection),
    Cluster(ClusterConnection),
}

/// A connection made on demand and dropped after any error (the next call
/// connects again).
pub(crate) struct Link {
    connector: Connector,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Link {
    fn conn(&mut self) -> RedisResult<&mut Conn> {
        if self.conn.is_none() {
            let c = match &self.connector {
                Connector::Single(client, timeout) => {
                    let c = client.get_connection_with_timeout(*timeout)?;
                    c.set_read_timeout(Some(*timeout))?;
                    c.set_write_timeout(Some(*timeout))?;
                    Conn::Single(c)
                }
                Connector::Cluster(client) => Conn::Cluster(client.get_connection()?),
            };
            self.conn = Some(c);
        }
        // Set just above when it was empty.
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs `cmds` as one pipeline (one round trip; one per primary on a
    /// Cluster). A reply that is a server error is returned as
    /// `Value::ServerError` in its place, so one bad command does not hide
    /// the others' replies.
    pub(crate) fn pipeline(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.connector {
            Connector::Single(..) => {
                let mut p = redis::pipe();
                p.ignore_errors();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                self.run(|conn| match conn {
                    Conn::Single(c) => p.query(c),
                    Conn::Cluster(_) => unreachable!("a single-server connector makes Single"),
                })
            }
            Connector::Cluster(_) => {
                let mut p = ClusterPipeline::with_capacity(cmds.len());
                for cmd in cmds {
                    p.add_command(cmd);
                }
                self.run(|conn| match conn {
                    Conn::Cluster(c) => match p.query(c) {
                        // The crate's sync cluster pipeline does not follow
                        // redirects (redis 1.2: MOVED/ASK/TRYAGAIN come back
                        // as an error of the pipeline, the other replies
                        // lost). While a slot moves, run the commands one at
                        // a time: that path follows MOVED and ASK and waits
                        // out TRYAGAIN. Every caller's commands may run
                        // twice (see `run`).
                        Err(e) if tern_backend::redis_store::redirected(&e).is_some() => {
                            p.cmd_iter().map(|cmd| c.req_command(cmd)).collect()
                        }
                        r => r,
                    },
                    Conn::Single(_) => unreachable!("a cluster connector makes Cluster"),
                })
            }
        }
    }

    /// Whether the commands of one pipeline run in their order (one
    /// server); on Redis Cluster they run on several primaries at once.
    pub(crate) fn in_order(&self) -> bool {
        matches!(self.connector, Connector::Single(..))
    }

    /// Runs one command.
    pub(crate) fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.run(|conn| match conn {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.req_command(cmd),
        })
    }

    /// Runs `f` on the connection, connecting first if there is none; any
    /// error drops the connection. When a connection made before this call
    /// turns out dead (EOF or reset: Redis restarted while it sat idle, as
    /// a worker's link does between two remote pushes), `f` runs once more
    /// on a fresh one, so the first push after a restart is not lost. Every
    /// caller's commands are exact or harmless when repeated: reads, `SET`,
    /// `SADD`, `HSET`, the conditional delete; a repeated `XADD` adds a
    /// second record for the same entry, which the device drops by its seq.
    fn run<T>(&mut self, mut f: impl FnMut(&mut Conn) -> RedisResult<T>) -> RedisResult<T> {
        // A blocking socket call interrupted by a signal (EINTR; seen about
        // once in 20 node starts) is not a failure of Redis: run it again on
        // a fresh connection, a bounded number of times.
        let mut interrupted = 0;
        loop {
            match self.run_once(&mut f) {
                Err(e) if is_interrupted(&e) && interrupted < INTERRUPTED_RETRIES_MAX => {
                    self.conn = None;
                    interrupted += 1;
                }
                r => return r,
            }
        }
    }

    fn run_once<T>(&mut self, f: &mut impl FnMut(&mut Conn) -> RedisResult<T>) -> RedisResult<T> {
        let reused = self.conn.is_some();
        let r = f(self.conn()?);
        match r {
            Err(e) if reused && e.is_connection_dropped() && !e.is_timeout() => {
                self.conn = None;
                let r = f(self.conn()?);
                if r.is_err() {
                    self.conn = None;
                }
                r
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
            ok => ok,
        }
    }
}

/// Times a call interrupted by a signal is run again.
const INTERRUPTED_RETRIES_MAX: u32 = 3;

/// Whether `e` is an interrupted system call (`EINTR`). The crate keeps
/// the `io::Error` behind an `Arc` it does not expose (redis 1.2), so this
/// reads the message: the OS's (`os error 4`) or std's for the kind.
fn is_interrupted(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.is_io_error() && (text.contains("(os error 4)") || text.contains("operation interrupted"))
}

/// The bytes of a bulk or simple string reply.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The items of an array-like reply (`Nil` is empty).
pub(crate) fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// The pairs of a map reply: a RESP3 map, or a RESP2 flat array of
/// alternating keys and values.
pub(crate) fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        _ => {
            let a = items(v)?;
            if a.len() % 2 != 0 {
                return None;
            }
            Some(a.chunks_exact(2).map(|p| (&p[0], &p[1])).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EINTR from a socket call is told apart from a real failure (a
    /// refused connection, a timeout), so only it is run again.
    #[test]
    fn only_an_interrupted_call_is_retried() {
        let e = |k| redis::RedisError::from(std::io::Error::from(k));
        assert!(is_interrupted(&e(std::io::ErrorKind::Interrupted)));
        assert!(is_interrupted(&redis::RedisError::from(
            std::io::Error::from_raw_os_error(libc::EINTR)
        )));
        assert!(!is_interrupted(&e(std::io::ErrorKind::ConnectionRefused)));
        assert!(!is_interrupted(&e(std::io::ErrorKind::TimedOut)));
    }
}
