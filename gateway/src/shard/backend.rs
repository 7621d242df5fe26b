//! Requests the shard makes of the backend workers: queued in order behind
//! those waiting for room (`blocked`, retried by `unblock_loop`), and the
//! ones no connection waits for: presence, route changes (cluster), the
//! login check for a ban, and the recount after a lapsed lease.

use std::{rc::Rc, time::Duration};

use tern_protocol::pb::{self, frame::Body};

use super::{PRESENCE_PENDING_MAX, Shard, ingest::after_ingest};
use crate::{
    bridge::{BackendRequest, RouteChange},
    msg::owner_shard,
};

impl Shard {
    /// After this node's lease had lapsed: every live device's route is
    /// written back if it has none, and every user with a device that
    /// counts toward presence is said to be connected again (their friends
    /// may have been told OFFLINE by the node that took this one for dead).
    /// Through the workers' rings like any route change; bounded the same
    /// way (a full waiting line drops and counts).
    pub(super) fn recount(self: &Rc<Self>) {
        let devices: Vec<(String, String, bool)> = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.closing.is_none())
            .filter_map(|(_, c)| Some((c.user()?.to_owned(), c.device()?.to_owned(), !c.quiet)))
            .collect();
        let mut counted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (user, device, counts) in &devices {
            self.route_change(user, device, RouteChange::Restore);
            if *counts && counted.insert(user) {
                self.presence(user, pb::PresenceState::Online);
            }
        }
    }

    /// Asks the backend whether a device that just logged in belongs to a
    /// banned user: a `Kick` request (server-only: no client can send one)
    /// to the user's worker, queued before anything the device sends. The
    /// answer is nothing, or a `Kick` BANNED (`kick_conn`). The shard never
    /// reads the store itself. If the backend ring is full the check waits
    /// in `blocked`, in order, like a presence update; if that line is full
    /// too ([`PRESENCE_PENDING_MAX`]) it returns false: the login cannot be
    /// checked, and the caller refuses it.
    ///
    /// The `Kick`'s `message` carries the token's `iat` (decimal seconds,
    /// empty if none): in cluster mode the worker first checks the device
    /// against the logouts remembered in Redis (docs/cluster.md, "Devices
    /// across nodes").
    pub(super) fn login_check(
        self: &Rc<Self>,
        key: u32,
        generation: u32,
        user: &str,
        device: &str,
        issued_at: Option<u64>,
    ) -> bool {
        let kick = pb::Kick {
            message: issued_at.map(|s| s.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        let req = BackendRequest::new(
            self.conn_ref(key, generation),
            user,
            device,
            BackendRequest::frame(Body::Kick(kick)),
        );
        self.send_or_wait(req)
    }

    /// Tells the user's backend worker (cluster mode) that a device logged
    /// in here or left, in order with the user's requests: a full backend
    /// queue makes the change wait in `blocked`, like a presence update
    /// (past [`PRESENCE_PENDING_MAX`] waiting it is dropped and counted in
    /// `tern_presence_dropped_total`: a lost login leaves the device
    /// without pushes from other nodes until it reconnects, and it syncs
    /// then; a lost close leaves a route that other nodes' pushes find
    /// empty here).
    /// The route `Up` of a welcomed device, carrying what its login said
    /// (as a `DeviceInfo` in the request's frame; the node id is the
    /// writer's) for the device lists of other nodes (docs/cluster.md,
    /// "Devices across nodes").
    pub(super) fn route_up(
        self: &Rc<Self>,
        user: &str,
        device: &str,
        login: &crate::msg::LoginInfo,
        login_ms: u64,
    ) {
        if !self.cluster {
            return;
        }
        let info = pb::DeviceInfo {
            device_id: device.to_owned(),
            platform: login.platform as i32,
            node_id: String::new(),
            login_time_ms: login_ms,
            client_version: super::devices::kept_version(&login.client_version).to_owned(),
            current: false,
        };
        let body = Body::DeviceListResult(pb::DeviceListResult {
            devices: vec![info],
        });
        let mut req =
            BackendRequest::new(self.unanswered(), user, device, BackendRequest::frame(body));
        req.route = Some(RouteChange::Up);
        self.send_waiting(req);
    }

    pub(super) fn route_change(self: &Rc<Self>, user: &str, device: &str, change: RouteChange) {
        if !self.cluster {
            return;
        }
        // Never answered; carries no request.
        let mut req = BackendRequest::new(self.unanswered(), user, device, Box::default());
        req.route = Some(change);
        self.send_waiting(req);
    }

    /// Queues a request for the backend in order: behind the requests that
    /// already wait for room (a connection's request never overtakes a
    /// presence update or route change queued before it).
    pub(super) fn send_backend_in_order(&self, req: BackendRequest) -> Result<(), BackendRequest> {
        if !self.blocked.borrow().is_empty() {
            return Err(req);
        }
        self.send_backend(req)
    }

    /// Queues a request for the backend worker of its user (one worker per
    /// user keeps each user's requests in order); a full queue hands it back.
    fn send_backend(&self, req: BackendRequest) -> Result<(), BackendRequest> {
        let mut to_backend = self.to_backend.borrow_mut();
        let worker = owner_shard(&req.caller.user, to_backend.len());
        to_backend[worker].send(req)
    }

    /// Tells the backend a user's first device connected (online) or last
    /// one left (offline). If the backend queue is full (a connect storm),
    /// the update waits in `blocked` behind earlier ones, in order, so a
    /// user is never left shown online after going offline; past
    /// [`PRESENCE_PENDING_MAX`] waiting updates it is dropped and counted.
    pub(super) fn presence(self: &Rc<Self>, user: &str, state: pb::PresenceState) {
        // No connection waits for the answer; no device: the gateway's own
        // update, as the domain tells them apart.
        let req = BackendRequest::new(
            self.unanswered(),
            user,
            "",
            BackendRequest::frame(Body::SetPresence(pb::SetPresenceRequest {
                state: state as i32,
                text: String::new(),
            })),
        );
        self.send_waiting(req);
    }

    /// Sends a request no connection waits for (presence, route change);
    /// if the backend queue is full it waits in `blocked`, in order; past
    /// [`PRESENCE_PENDING_MAX`] waiting it is dropped and counted.
    pub(super) fn send_waiting(self: &Rc<Self>, req: BackendRequest) {
        if !self.send_or_wait(req) {
            self.metrics
                .presence_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Queues `req` for the backend in order; if the queue is full (or
    /// others already wait) it waits in `blocked`, without pausing any
    /// connection. False if even that line is full
    /// ([`PRESENCE_PENDING_MAX`]): `req` is dropped.
    pub(super) fn send_or_wait(self: &Rc<Self>, req: BackendRequest) -> bool {
        let Err(req) = self.send_backend_in_order(req) else {
            return true;
        };
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= PRESENCE_PENDING_MAX {
            return false;
        }
        // No connection waits for it: the retry finds no slab entry at
        // `u32::MAX` to resume.
        blocked.push_back((u32::MAX, 0, req));
        drop(blocked);
        if !self.unblocking.replace(true) {
            monoio::spawn(unblock_loop(self.clone()));
        }
        true
    }
}

/// Retries requests that found the backend queue full, oldest first, and
/// resumes their connections; ends when none are left.
pub(super) async fn unblock_loop(shard: Rc<Shard>) {
    loop {
        // Only a shard with paused connections runs this timer.
        monoio::time::sleep(Duration::from_millis(1)).await;
        loop {
            let Some((key, generation, req)) = shard.blocked.borrow_mut().pop_front() else {
                shard.unblocking.set(false);
                return;
            };
            let sent = shard.send_backend(req);
            if let Err(req) = sent {
                shard
                    .blocked
                    .borrow_mut()
                    .push_front((key, generation, req));
                break; // still full: wait another tick
            }
            // Resume: feed what was left, then read again.
            let partial = {
                let mut conns = shard.conns.borrow_mut();
                let Some(c) = conns
                    .get_mut(key as usize)
                    .filter(|c| c.generation == generation)
                else {
                    continue;
                };
                c.paused = false;
                shard.interest(key, c);
                c.take_partial()
            };
            if !partial.is_empty() {
                let outcome = shard.ingest(key, &partial);
                after_ingest(&shard, key, generation, outcome);
            }
        }
    }
}
