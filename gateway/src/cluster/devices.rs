//! A user's devices on every node (docs/cluster.md, "Devices across
//! nodes"): what the backend worker adds to a shard's `device_list` and
//! `device_logout` from Redis. The facts each login said are kept beside
//! its route (`{u:<user>}:dv`, written and removed with the route by the
//! scripts of `routes.rs`); a logout of a device held by another node is a
//! record (`k = o`) on that node's stream, like a displacement.

use prost::Message as _;
use redis::{RedisResult, cmd};
use tern_protocol::pb;

use super::{RemoteRouter, channel, conn, routes};

impl RemoteRouter {
    /// The devices of `user` on other live nodes, as their logins said
    /// (one `HGETALL`). Facts that do not decode, or name this node or a
    /// node not live, are left out.
    pub fn remote_devices(&mut self, user: &str) -> RedisResult<Vec<pb::DeviceInfo>> {
        let mut c = cmd("HGETALL");
        c.arg(routes::facts_key(user));
        let reply = self.link.command(&c)?;
        let me = self.view.me().to_owned();
        let live = self.view.live();
        Ok(conn::pairs(&reply)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| pb::DeviceInfo::decode(conn::bytes(v)?).ok())
            .filter(|d| d.node_id != me && live.contains(d.node_id.as_str()))
            .collect())
    }

    /// Logs out `user`'s `device` held by another live node: a logout
    /// record on that node's stream. `Ok(false)`: no live node other than
    /// this one holds it.
    pub fn logout_remote(&mut self, user: &str, device: &str) -> RedisResult<bool> {
        let mut c = cmd("HGET");
        c.arg(routes::key(user)).arg(device);
        let reply = self.link.command(&c)?;
        let Some(node) = conn::bytes(&reply).and_then(|b| std::str::from_utf8(b).ok()) else {
            return Ok(false);
        };
        if node == self.view.me() || !self.view.live().contains(node) {
            return Ok(false);
        }
        let node = node.to_owned();
        self.link
            .command(&channel::xadd_logout(&node, self.records_max, user, device))?;
        Ok(true)
    }
}
