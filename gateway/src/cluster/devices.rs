//! A user's devices on every node (docs/cluster.md, "Devices across
//! nodes"): what the backend worker adds to a shard's `device_list` and
//! `device_logout` from Redis. The facts each login said are kept beside
//! its route (`{u:<user>}:dv`, written and removed with the route by the
//! scripts of `routes.rs`); a logout of a device held by another node is a
//! record (`k = o`) on that node's stream, like a displacement. A logout is
//! remembered in Redis (`{u:<user>}:lo:<device>`, the logout's Unix ms with
//! a TTL of `[login] logged_out_block_ms`), read by the login checks of
//! every node.

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
        self.remember_logout(user, device, unix_ms())?;
        Ok(true)
    }

    /// Remembers in Redis that `user`'s `device` was logged out at `at_ms`
    /// (Unix ms), for `logged_out_block_ms` (0: not remembered).
    pub fn remember_logout(&mut self, user: &str, device: &str, at_ms: u64) -> RedisResult<()> {
        if self.logged_out_block_ms == 0 {
            return Ok(());
        }
        let mut c = cmd("SET");
        c.arg(logout_key(user, device))
            .arg(at_ms)
            .arg("PX")
            .arg(self.logged_out_block_ms);
        self.link.command(&c).map(drop)
    }

    /// For each `(user, device)` of a batch's login checks, when that
    /// device was last logged out (Unix ms) if Redis still remembers it:
    /// one pipeline of `GET`s.
    pub fn logged_out(&mut self, devices: &[(&str, &str)]) -> RedisResult<Vec<Option<u64>>> {
        let cmds = devices
            .iter()
            .map(|(u, d)| {
                let mut c = cmd("GET");
                c.arg(logout_key(u, d));
                c
            })
            .collect();
        let replies = self.link.pipeline(cmds)?;
        Ok(devices
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let b = replies.get(i).and_then(conn::bytes)?;
                std::str::from_utf8(b).ok()?.parse().ok()
            })
            .collect())
    }
}

/// The remembered logout of `user`'s `device` (the user's hash tag).
pub fn logout_key(user: &str, device: &str) -> String {
    format!("{{u:{user}}}:lo:{device}")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
