//! The route table: `(user, device) → node`, one Redis hash per user,
//! `{u:<user>}:rt`, field = device id, value = node id (the hash tag puts
//! it in the user's slot on Redis Cluster).
//!
//! Written by the cluster thread in batches (one pipeline per
//! `route_flush_ms` or `route_batch_max` changes): `HSET` on login; on close
//! a conditional delete (the script below), so a device that already
//! logged in on another node keeps that node's route. Read by the backend
//! workers, one pipeline of `HGETALL` per batch of pushes. A route naming a
//! node whose lease lapsed is ignored and removed with the same conditional
//! delete. Every write that gives users a route also appends them to the
//! route log that keeps the workers' route caches true (`route_cache.rs`).

use std::sync::atomic::Ordering;

use redis::{Cmd, RedisResult, Value, cmd};

use super::{
    RouteChange,
    conn::Link,
    route_cache::{self, Routes},
};
use crate::metrics::ClusterMetrics;

/// Deletes a route only if it still names the given node:
/// `KEYS[1]` the user's hash, `ARGV[1]` the device, `ARGV[2]` the node.
const DEL_IF_NODE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     return redis.call('HDEL', KEYS[1], ARGV[1]) else return 0 end";

/// The route hash of `user`.
pub fn key(user: &str) -> String {
    format!("{{u:{user}}}:rt")
}

/// The command that removes `device`'s route of `user` if it names `node`.
pub fn del_if_node(user: &str, device: &str, node: &str) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(DEL_IF_NODE)
        .arg(1)
        .arg(key(user))
        .arg(device)
        .arg(node);
    c
}

/// Writes a batch of route changes of this node in one pipeline, then
/// appends the users given a route to the route log (the caches'
/// invalidation, `route_cache.rs`): in the same pipeline after the `HSET`s
/// on one Redis (a connection's commands run in order), in a second round
/// trip on Redis Cluster (the log and the hashes are on different
/// primaries). Returns once both are in Redis: a caller that answers the
/// device's first sync after this keeps every cache correct.
pub(crate) fn write(
    link: &mut Link,
    node: &str,
    batch: &[RouteChange],
    metrics: &ClusterMetrics,
) -> RedisResult<()> {
    let mut ups: Vec<&str> = batch.iter().filter(|c| c.up).map(|c| c.parts().0).collect();
    ups.sort_unstable();
    ups.dedup();
    let mut cmds: Vec<Cmd> = batch
        .iter()
        .map(|c| {
            let (user, device) = c.parts();
            if c.up {
                let mut h = cmd("HSET");
                h.arg(key(user)).arg(device).arg(node);
                h
            } else {
                del_if_node(user, device, node)
            }
        })
        .collect();
    let log = (!ups.is_empty()).then(|| route_cache::log_append(&ups));
    match log {
        Some(log) if link.in_order() => {
            cmds.push(log);
            check_log(&link.pipeline(cmds)?)?;
        }
        Some(log) => {
            // Appended even if some `HSET` failed: a route that did land
            // must not go unannounced to the caches.
            let written = link.pipeline(cmds);
            link.command(&log)?;
            written?;
        }
        None => {
            link.pipeline(cmds)?;
        }
    }
    metrics
        .route_writes
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// A failed log append fails the write: a route the caches were not told of
/// could be missed by them (docs/cluster.md, "Route cache").
fn check_log(replies: &[Value]) -> RedisResult<()> {
    match replies.last() {
        Some(Value::ServerError(e)) => Err(e.clone().into()),
        _ => Ok(()),
    }
}

/// The command that reads the routes of `user`.
pub(crate) fn hgetall(user: &str) -> Cmd {
    let mut c = cmd("HGETALL");
    c.arg(key(user));
    c
}

/// The routes of each user, in order: `(device, node)` pairs. One pipeline.
/// A reply that is not a hash (a server error on one key) reads as no
/// routes for that user.
pub(crate) fn read(link: &mut Link, users: &[&str]) -> RedisResult<Vec<Routes>> {
    let cmds = users.iter().map(|u| hgetall(u)).collect();
    let replies = link.pipeline(cmds)?;
    Ok(replies.iter().map(parse_hash).collect())
}

pub(crate) fn parse_hash(v: &Value) -> Routes {
    let Some(pairs) = super::conn::pairs(v) else {
        return Routes::default();
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let k = std::str::from_utf8(super::conn::bytes(k)?).ok()?;
            let v = std::str::from_utf8(super::conn::bytes(v)?).ok()?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}
