//! The way from an API handler (on the HTTP runtime) into the backend
//! workers: one bounded ring per worker, its producer behind a mutex (the
//! HTTP runtime has several threads; a connection's shard has its own
//! rings). A call is a [`BackendRequest`] with a reply slot: the worker runs
//! it in its next batch under the same rules as a client's request, queues
//! its pushes, and answers through the slot.

use std::time::Duration;

use parking_lot::Mutex;
use tern_protocol::pb::frame::Body;

use super::ApiError;
use crate::{
    bridge::BackendRequest,
    mailbox::Sender,
    msg::{ConnRef, owner_shard},
};

/// The device name a call acts from when it acts as a user (a user's other
/// devices get its messages as from another device of theirs).
pub const API_DEVICE: &str = "api";

/// Producers of the workers' API rings.
#[derive(Debug)]
pub struct ApiBackend {
    workers: Vec<Mutex<Sender<BackendRequest>>>,
    timeout: Duration,
}

impl ApiBackend {
    /// Over the API ring of each worker (index = worker), waiting at most
    /// `timeout` for an answer.
    pub fn new(workers: Vec<Sender<BackendRequest>>, timeout: Duration) -> Self {
        Self {
            workers: workers.into_iter().map(Mutex::new).collect(),
            timeout,
        }
    }

    /// Runs `body` as `user` (from the device [`API_DEVICE`]) on that user's
    /// worker, the one their connections' requests go to. Returns the reply
    /// body (`None`: a fire-and-forget request that succeeded); a domain
    /// error is an [`ApiError`] with its code.
    pub async fn call(&self, user: &str, body: Body) -> Result<Option<Body>, ApiError> {
        self.call_as(user, false, body).await
    }

    /// Runs `body` as the operator `user` (`admin`: no friendship or
    /// membership needed, any group managed as its owner; see
    /// `tern_backend::domain::Caller::admin`), or as the user (`!admin`).
    pub async fn call_admin(&self, user: &str, body: Body) -> Result<Option<Body>, ApiError> {
        self.call_as(user, true, body).await
    }

    /// Completes a device call of the server API across nodes (cluster
    /// mode only: `bridge::devices_across_nodes` answers it, the domain
    /// never sees it): `body` is a `DeviceListResult` of this node's
    /// devices, answered with every live node's; or a `DeviceLogout`,
    /// remembered in Redis when `done_here` (the shard logged the device
    /// out), else sent to the node holding the device (`NOT_FOUND` if
    /// none does).
    pub async fn devices_across_nodes(
        &self,
        user: &str,
        body: Body,
        done_here: bool,
    ) -> Result<Option<Body>, ApiError> {
        let mut req = Self::request(user, body);
        req.done_here = done_here;
        self.send(user, req).await
    }

    async fn call_as(&self, user: &str, admin: bool, body: Body) -> Result<Option<Body>, ApiError> {
        let mut req = Self::request(user, body);
        req.caller.admin = admin;
        self.send(user, req).await
    }

    /// A call of `user`'s (from [`API_DEVICE`]); its reply slot is set by
    /// [`Self::send`].
    fn request(user: &str, body: Body) -> BackendRequest {
        // `from` is unused: the answer goes to `reply`.
        let from = ConnRef {
            shard: 0,
            key: 0,
            generation: 0,
        };
        BackendRequest::new(from, user, API_DEVICE, BackendRequest::frame(body))
    }

    /// Sends `req` to `user`'s worker and waits for its answer.
    async fn send(&self, user: &str, mut req: BackendRequest) -> Result<Option<Body>, ApiError> {
        if self.workers.is_empty() {
            return Err(ApiError::overloaded("no backend worker"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        req.reply = Some(Box::new(tx));
        let worker = owner_shard(user, self.workers.len());
        if self.workers[worker].lock().send(req).is_err() {
            return Err(ApiError::overloaded("the backend queue is full"));
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Some(Body::Error(e)))) => Err(ApiError::from_domain(&e)),
            Ok(Ok(reply)) => Ok(reply),
            // The worker dropped the slot: it stopped (the node is draining).
            Ok(Err(_)) => Err(ApiError::overloaded("the backend is stopping")),
            Err(_) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "TIMEOUT",
                "the backend did not answer in time; the call may still take effect",
            )),
        }
    }
}
