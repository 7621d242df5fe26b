//! What the operator calls share: the `[api_ops]` settings, the counters
//! the online counts come from, and the remembered answers of list sends
//! and broadcasts (so a replayed request id gets the original answer).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{ApiBackend, ApiError};
use crate::{
    config::ApiOpsSettings,
    mailbox::Sender,
    metrics::Metrics,
    msg::{DeviceEntry, ShardMsg, owner_shard},
};
use tern_protocol::pb::{self, frame::Body};

/// Operator-call state of the API.
#[derive(Debug)]
pub struct ApiOps {
    /// The settings.
    pub settings: ApiOpsSettings,
    /// This node's counters (connections per shard); `None` for the
    /// document-only state.
    pub metrics: Option<Arc<Metrics>>,
    /// A ring into each shard (index = shard).
    shards: Vec<Mutex<Sender<ShardMsg>>>,
    remembered: Mutex<Remembered>,
    /// Cluster mode (the Redis store): the device calls also reach the
    /// user's devices on other nodes, through the user's backend worker.
    cluster: bool,
}

/// Answers by `(call, request id)`, the oldest forgotten first past
/// `request_ids_max`.
#[derive(Debug, Default)]
struct Remembered {
    answers: HashMap<(&'static str, String), serde_json::Value>,
    order: VecDeque<(&'static str, String)>,
}

impl ApiOps {
    /// With `settings`, this node's `metrics` and a ring into each shard.
    pub fn new(
        settings: ApiOpsSettings,
        metrics: Option<Arc<Metrics>>,
        shards: Vec<Sender<ShardMsg>>,
    ) -> Self {
        Self {
            settings,
            metrics,
            shards: shards.into_iter().map(Mutex::new).collect(),
            remembered: Mutex::new(Remembered::default()),
            cluster: false,
        }
    }

    /// In cluster mode (`cluster`: the Redis store), the device calls
    /// ([`Self::devices_everywhere`], [`Self::logout_everywhere`]) reach
    /// every live node.
    pub fn with_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The devices of `user` on every live node, oldest login first, at
    /// most [`crate::msg::DEVICE_LIST_MAX`], each with the node that holds
    /// it: this node's asked of the user's owner shard, the others' read
    /// from Redis by the user's backend worker (cluster mode; if Redis
    /// fails, this node's alone, as a client's `device_list`). One node:
    /// this node's.
    pub async fn devices_everywhere(
        &self,
        backend: &ApiBackend,
        node_id: &str,
        user: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<pb::DeviceInfo>, ApiError> {
        let devices: Vec<pb::DeviceInfo> = self
            .device_entries(user, timeout)
            .await?
            .into_iter()
            .map(|e| pb::DeviceInfo {
                device_id: e.device_id,
                platform: e.platform as i32,
                node_id: node_id.to_owned(),
                login_time_ms: e.login_time_ms,
                client_version: e.client_version,
                current: false,
            })
            .collect();
        if !self.cluster {
            return Ok(devices);
        }
        let here = Body::DeviceListResult(pb::DeviceListResult { devices });
        match backend.devices_across_nodes(user, here, false).await? {
            Some(Body::DeviceListResult(list)) => Ok(list.devices),
            other => Err(ApiError::internal(format!(
                "the backend answered a device list with {other:?}"
            ))),
        }
    }

    /// Logs out `device` of `user` wherever it is connected: kicked with
    /// `LOGGED_OUT` and its older tokens refused. This node's owner shard
    /// first; in cluster mode the logout is then remembered in Redis (every
    /// node refuses the old token), or, if the device is not here, sent to
    /// the live node whose route names it. False: connected nowhere.
    pub async fn logout_everywhere(
        &self,
        backend: &ApiBackend,
        user: &str,
        device: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, ApiError> {
        let here = self.logout(user, device, timeout).await?;
        if !self.cluster {
            return Ok(here);
        }
        let logout = Body::DeviceLogout(pb::DeviceLogout {
            device_id: device.to_owned(),
        });
        match backend.devices_across_nodes(user, logout, here).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == "NOT_FOUND" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The devices of `user` connected to this node with what they said at
    /// login, oldest login first.
    async fn device_entries(
        &self,
        user: &str,
        timeout: std::time::Duration,
    ) -> Result<Vec<DeviceEntry>, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = ShardMsg::Devices {
            user: user.to_owned(),
            reply: tx,
        };
        self.ask_owner(user, msg, rx, timeout).await
    }

    /// Logs out `device` of `user` on this node (kicked with `LOGGED_OUT`,
    /// its older tokens refused): true if it was connected here.
    async fn logout(
        &self,
        user: &str,
        device: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = ShardMsg::Logout {
            ident: format!("{user}\0{device}").into_boxed_str(),
            reply: tx,
        };
        self.ask_owner(user, msg, rx, timeout).await
    }

    /// Sends `msg` to `user`'s owner shard and waits for its answer.
    async fn ask_owner<T>(
        &self,
        user: &str,
        msg: ShardMsg,
        rx: tokio::sync::oneshot::Receiver<T>,
        timeout: std::time::Duration,
    ) -> Result<T, ApiError> {
        if self.shards.is_empty() {
            return Err(ApiError::overloaded("no shard"));
        }
        let shard = owner_shard(user, self.shards.len());
        if self.shards[shard].lock().send(msg).is_err() {
            return Err(ApiError::overloaded("the shard queue is full"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ApiError::overloaded("the shard is stopping")),
            Err(_) => Err(ApiError::overloaded("the shard did not answer in time")),
        }
    }

    /// The users with a device connected to this node that counts toward
    /// presence (not `presence-quiet`), asked of every shard with one
    /// deadline for all; sorted, each once. What a broadcast goes to.
    pub async fn online_users(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Vec<String>, ApiError> {
        if self.shards.is_empty() {
            return Err(ApiError::overloaded("no shard"));
        }
        let mut answers = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if shard
                .lock()
                .send(ShardMsg::OnlineUsers { reply: tx })
                .is_err()
            {
                return Err(ApiError::overloaded("a shard queue is full"));
            }
            answers.push(rx);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut users = Vec::new();
        for rx in answers {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(mut some)) => users.append(&mut some),
                Ok(Err(_)) => return Err(ApiError::overloaded("a shard is stopping")),
                Err(_) => return Err(ApiError::overloaded("a shard did not answer in time")),
            }
        }
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    /// Whether `user` is one of the configured system senders.
    /// (`system_users` are local names: `acme~system` is tenant `acme`'s
    /// `system`, docs/tenants.md.)
    pub fn is_system(&self, user: &str) -> bool {
        let local = tern_protocol::ids::local_of(user);
        self.settings
            .system_users
            .iter()
            .any(|u| u == user || u == local)
    }

    /// The user operator calls act as (group changes, bans): the first
    /// system user.
    pub fn operator(&self) -> &str {
        self.settings
            .system_users
            .first()
            .map_or("system", String::as_str)
    }

    /// The operator of `tenant` (its `<tenant>~<operator>`): an operator
    /// call about a tenant's group acts inside that tenant, since nothing
    /// crosses tenants, not even for the operator.
    pub fn operator_in(&self, tenant: &str) -> String {
        tern_protocol::ids::qualify(tenant, self.operator())
    }

    /// Runs `body` as `from`: with operator rights if `from` is a system
    /// user, else under the chat rules as that user.
    pub async fn call_from(
        &self,
        backend: &ApiBackend,
        from: &str,
        body: Body,
    ) -> Result<Option<Body>, ApiError> {
        if self.is_system(from) {
            backend.call_admin(from, body).await
        } else {
            backend.call(from, body).await
        }
    }

    /// The answer given to `request_id` of `call` before, if remembered.
    pub fn recall(&self, call: &'static str, request_id: &str) -> Option<serde_json::Value> {
        self.remembered
            .lock()
            .answers
            .get(&(call, request_id.to_owned()))
            .cloned()
    }

    /// Remembers the answer to `request_id` of `call`.
    pub fn remember(&self, call: &'static str, request_id: &str, answer: serde_json::Value) {
        let mut r = self.remembered.lock();
        let key = (call, request_id.to_owned());
        if r.answers.insert(key.clone(), answer).is_none() {
            r.order.push_back(key);
        }
        while r.order.len() > self.settings.request_ids_max {
            if let Some(old) = r.order.pop_front() {
                r.answers.remove(&old);
            }
        }
    }
}

/// Checks a request id: 1..=64 bytes of the id alphabet (it becomes each
/// message's `client_msg_id`).
pub fn check_request_id(id: &str) -> Result<(), ApiError> {
    tern_protocol::ids::check_id(id).map_err(|e| ApiError::invalid(format!("request_id: {e}")))
}

/// Checks a user id from a path or body.
pub fn check_user(what: &str, id: &str) -> Result<(), ApiError> {
    tern_protocol::ids::check_id(id).map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}
