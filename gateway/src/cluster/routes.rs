//! The route table: `(user, device) → node`, one Redis hash per user,
//! `{u:<user>}:rt`, field = device id, value = node id (the hash tag puts
//! it in the user's slot on Redis Cluster); beside it the device facts
//! `{u:<user>}:dv` (what each login said, for the device list of any node)
//! and the login classes `{u:<user>}:lc` (what the login policy counts
//! across nodes), written and removed by the same scripts.
//!
//! Written by the backend worker of the user (the one every request of the
//! user goes to), in the pipeline it sends before it handles a batch
//! ([`super::RemoteRouter::note`]): on login the script [`UP`] (set, and
//! return the node named before, so that a device still connected on
//! another node is displaced, and the devices past its class's limit, to
//! be kicked wherever they are); on close a conditional delete
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

/// Sets a route, applies the login policy of its class across nodes, and
/// answers `[node named before or nil, device, node, login ms, …]`:
/// `KEYS[1]` the user's route hash, `KEYS[2]` their device facts hash,
/// `KEYS[3]` their login classes hash; `ARGV[1]` the device, `ARGV[2]` the
/// node, `ARGV[3]` the device's facts (a `DeviceInfo`; empty: none, and
/// facts of an earlier login go), `ARGV[4]` its platform class (empty:
/// none, and it counts toward no class), `ARGV[5]` the class's limit (0:
/// none), `ARGV[6]` its login's Unix ms (the node's clock), `ARGV[7..]` the
/// live nodes.
///
/// The login classes hash keeps, per device, `<class> <order> <login ms>`,
/// `<order>` the Redis clock at the write (`TIME`, seconds and zero-padded
/// microseconds: one string compare orders them). Past the limit, the
/// class's other devices whose route names a live node are taken oldest
/// order first until the limit holds with this one, each answered as a
/// `(device, node, login ms)` triple and removed from the classes hash, so
/// no later login counts or picks it again: each is picked once. The
/// script runs alone in Redis (all three keys share the user's hash tag),
/// so two logins racing on two nodes are decided one after the other.
const UP: &str = r"local o = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[1])
else redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
local out = {o or false}
if ARGV[4] == '' then redis.call('HDEL', KEYS[3], ARGV[1]) return out end
local t = redis.call('TIME')
redis.call('HSET', KEYS[3], ARGV[1],
  ARGV[4] .. ' ' .. t[1] .. string.format('%06d', tonumber(t[2])) .. ' ' .. ARGV[6])
local max = tonumber(ARGV[5]) or 0
if max <= 0 then return out end
local live = {}
for i = 7, #ARGV do live[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[3])
local same = {}
for i = 1, #all, 2 do
  local d = all[i]
  local class, order, ms = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')
  if d ~= ARGV[1] and class == ARGV[4] then
    local node = redis.call('HGET', KEYS[1], d)
    if not node then redis.call('HDEL', KEYS[3], d)
    elseif live[node] then same[#same + 1] = {order, d, node, ms} end
  end
end
if #same < max then return out end
table.sort(same, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
for i = 1, #same + 1 - max do
  local s = same[i]
  redis.call('HDEL', KEYS[3], s[2])
  out[#out + 1] = s[2]
  out[#out + 1] = s[3]
  out[#out + 1] = s[4]
end
return out";

/// Deletes a route (and the device's facts and login class) only if it
/// still names the given node: `KEYS[1]` the user's route hash, `KEYS[2]`
/// their device facts hash, `KEYS[3]` their login classes hash, `ARGV[1]`
/// the device, `ARGV[2]` the node.
const DEL_IF_NODE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     redis.call('HDEL', KEYS[2], ARGV[1]) redis.call('HDEL', KEYS[3], ARGV[1]) \
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

/// The login classes hash of `user`: field = device id, value = `<class>
/// <order> <login ms>` (see [`UP`]); written and removed with the route,
/// in the same scripts. What the login policy counts across nodes
/// (docs/cluster.md, "Login policies across nodes").
pub fn classes_key(user: &str) -> String {
    format!("{{u:{user}}}:lc")
}

/// What a login says to the route write for the login policy: its
/// platform class, the class's limit (0: none) and the login's Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy<'a> {
    /// The platform class's name (`PlatformClass::name`).
    pub class: &'a str,
    /// `[login] <class>_devices_max` (0: no limit).
    pub max: u32,
    /// The login's Unix ms on the node that welcomed it: a kick names it,
    /// so that a newer login of the same device is not the one kicked.
    pub login_ms: u64,
}

/// The command that names `node` as `device`'s route (with its login
/// `facts`, a `DeviceInfo`, and its login `policy`) and answers the node
/// named before and the devices the policy kicks (see [`UP`]; read it with
/// [`parse_up`]). `live`: the live nodes, whose devices count.
pub fn up<'a>(
    user: &str,
    device: &str,
    node: &str,
    facts: Option<&[u8]>,
    policy: Option<Policy<'_>>,
    live: impl IntoIterator<Item = &'a str>,
) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(UP)
        .arg(3)
        .arg(key(user))
        .arg(facts_key(user))
        .arg(classes_key(user))
        .arg(device)
        .arg(node)
        .arg(facts.unwrap_or_default());
    match policy {
        Some(p) => c.arg(p.class).arg(p.max).arg(p.login_ms),
        None => c.arg("").arg(0).arg(0),
    };
    if policy.is_some_and(|p| p.max > 0) {
        for n in live {
            c.arg(n);
        }
    }
    c
}

/// A device the login policy kicks: `(device, node, login ms)`.
pub type PolicyKick = (String, String, u64);

/// Reads the answer of [`up`]: the node named before, and the devices the
/// policy kicks. A reply of another shape reads as neither.
pub fn parse_up(v: &Value) -> (Option<String>, Vec<PolicyKick>) {
    let text = |v: &Value| {
        super::conn::bytes(v)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    let Some(items) = super::conn::items(v) else {
        return (None, Vec::new());
    };
    let before = items.first().and_then(text);
    let kicks = items
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(3)
        .filter_map(|k| Some((text(&k[0])?, text(&k[1])?, text(&k[2])?.parse().ok()?)))
        .collect();
    (before, kicks)
}

/// The command that removes `device`'s route of `user` if it names `node`.
pub fn del_if_node(user: &str, device: &str, node: &str) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(DEL_IF_NODE)
        .arg(3)
        .arg(key(user))
        .arg(facts_key(user))
        .arg(classes_key(user))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn up_answers_are_read_and_garbage_reads_as_nothing() {
        // Proves how the worker reads the `up` script's answer: the node
        // named before (or nil), then whole `(device, node, login ms)`
        // triples; a triple cut short or with a bad number is left out,
        // and a reply of another shape names nothing.
        let v = Value::Array(vec![
            bulk("n2"),
            bulk("phone"),
            bulk("n1"),
            bulk("1700000000123"),
            bulk("tab"),
            bulk("n3"),
            bulk("x"),
            bulk("cut"),
        ]);
        assert_eq!(
            parse_up(&v),
            (
                Some("n2".into()),
                vec![("phone".into(), "n1".into(), 1_700_000_000_123)]
            )
        );
        let fresh = Value::Array(vec![Value::Nil]);
        assert_eq!(parse_up(&fresh), (None, vec![]));
        assert_eq!(parse_up(&Value::SimpleString("OK".into())), (None, vec![]));
        assert_eq!(parse_up(&Value::Nil), (None, vec![]));
    }
}
