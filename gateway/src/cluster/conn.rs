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
            let c = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
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
        let r = match self.conn()? {
            Conn::Single(c) => {
                let mut p = redis::pipe();
                p.ignore_errors();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c)
            }
            Conn::Cluster(c) => {
                let mut p = ClusterPipeline::with_capacity(cmds.len());
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c)
            }
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Whether the commands of one pipeline run in their order (one
    /// server); on Redis Cluster they run on several primaries at once.
    pub(crate) fn in_order(&self) -> bool {
        matches!(self.connector, Connector::Single(..))
    }

    /// Runs one command.
    pub(crate) fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let r = match self.conn()? {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.req_command(cmd),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }
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
