//! The route table: `(user, device) → node`, one Redis hash per user,
//! `{u:<user>}:rt`, field = device id, value = node id (the hash tag puts
//! it in the user's slot on Redis Cluster); beside it the device facts
//! `{u:<user>}:dv` (what each login said, for the device list of any node),
//! written and removed by the same scripts.
//!
//! Written by the backend worker of the user (the one every request of the
//! user goes to), in the pipeline it sends before it handles a batch
//! ([`super::RemoteRouter::note`]): on login the script [`UP`] (set, and
//! return the node named before, so that a device still connected on
//! another node is displaced); on close a conditional delete
//! ([`DEL_IF_NODE`]), so a device that already logged in on another node
//! keeps that node's route. Both ride the worker's ring in order with the
//! user's requests: the route exists before the device's first sync is
//! answered, and the changes of one device keep their order. Read by the
//! backend workers, one pipeline of `HGETALL` per batch of pushes. A route
//! naming a node whose lease lapsed is ignored and removed with the same
//! conditional delete. Every write that gives a user a route (`UP`, the
//! `HSETNX` of a restore) also appends the user to the route log that keeps
//! the workers' route caches true (`route_cache.rs`), before the write
//! returns.

use redis::{Cmd, RedisResult, Value, cmd};

use super::{conn::Link, route_cache::Routes};

/// Sets a route and returns the node it named before (nil if none):
/// `KEYS[1]` the user's route hash, `KEYS[2]` their device facts hash,
/// `ARGV[1]` the device, `ARGV[2]` the node, `ARGV[3]` the device's facts
/// (a `DeviceInfo`; empty: none, and facts of an earlier login go).
const UP: &str = "local o = redis.call('HGET', KEYS[1], ARGV[1]) \
     redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
     if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[1]) \
     else redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end return o";

/// Deletes a route (and the device's facts) only if it still names the
/// given node: `KEYS[1]` the user's route hash, `KEYS[2]` their device
/// facts hash, `ARGV[1]` the device, `ARGV[2]` the node.
const DEL_IF_NODE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     redis.call('HDEL', KEYS[2], ARGV[1]) \
     return redis.call('HDEL', KEYS[1], ARGV[1]) else return 0 end";

/// The route hash of `user`.
pub fn key(user: &str) -> String {
    format!("{{u:{user}}}:rt")
}

/// The device facts hash of `user`: field = device id, value = a
/// `DeviceInfo` (prost) naming the node that holds it; written and removed
/// with the route, in the same scripts.
pub fn facts_key(user: &str) -> String {
    format!("{{u:{user}}}:dv")
}

/// The command that names `node` as `device`'s route (with its login
/// `facts`, a `DeviceInfo`) and answers the node named before (a bulk
/// string) or nil.
pub fn up(user: &str, device: &str, node: &str, facts: Option<&[u8]>) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(UP)
        .arg(2)
        .arg(key(user))
        .arg(facts_key(user))
        .arg(device)
        .arg(node)
        .arg(facts.unwrap_or_default());
    c
}

/// The command that removes `device`'s route of `user` if it names `node`.
pub fn del_if_node(user: &str, device: &str, node: &str) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(DEL_IF_NODE)
        .arg(2)
        .arg(key(user))
        .arg(facts_key(user))
        .arg(device)
        .arg(node);
    c
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
