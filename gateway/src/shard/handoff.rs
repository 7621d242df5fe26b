//! A connection arriving on its owner shard after auth (`adopt`, `welcome`):
//! registered, indexed by user (the device index: one 4-byte slot per device,
//! `each_device`, `devices_of`), and an older connection of the same device
//! displaced — here, or when the device logged in on another node
//! (`displace`).

use std::{os::fd::AsRawFd, rc::Rc};

use slab::Slab;
use tern_protocol::{pb, session::AuthOk};
use tracing::{info, warn};

use super::{Conn, Shard, SmallKeys, Spill, inbox::Resume, ingest::after_ingest};
use crate::{
    bridge::RouteChange,
    limits::Limit,
    metrics::CloseReason,
    msg::{Handoff, LoginInfo},
};

impl Shard {
    /// The same device logged in on another node: its connection here is
    /// kicked as displaced, as by a second login here (see `welcome`), and
    /// its close writes no route change (the route is the other node's).
    /// If it was the user's last device here that counts toward presence,
    /// this node says so (the worker finds the user online on the other
    /// node, so friends see no OFFLINE).
    pub(super) fn displace(self: &Rc<Self>, user: &str, device: &str) {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let (mut others_counted, mut displaced_counted) = (false, false);
        for other in self.devices_of(&conns, user) {
            let old = &mut conns[other as usize];
            if old.device() == Some(device) {
                displaced_counted |= !old.quiet;
                self.unindex_device(other, user);
                old.session
                    .kick(&self.cfg, now, pb::KickReason::Displaced, "");
                self.flush(other, old);
                self.close_soon(old, CloseReason::Displaced);
            } else {
                others_counted |= !old.quiet;
            }
        }
        drop(conns);
        if displaced_counted && !others_counted {
            self.presence(user, pb::PresenceState::Offline);
        }
    }

    /// Calls `f(user, key, conn)` for every connection of `users` that this
    /// shard holds.
    pub(super) fn each_device(&self, users: &[String], mut f: impl FnMut(&str, u32, &mut Conn)) {
        let index = self.users.borrow();
        let mut conns = self.conns.borrow_mut();
        for user in users {
            for &key in index.iter_hash(self.user_hash(user)) {
                if let Some(c) = conns.get_mut(key as usize)
                    && c.user() == Some(user.as_str())
                {
                    f(user, key, c);
                }
            }
        }
    }

    pub(super) fn user_hash(&self, user: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.user_hasher, user)
    }

    /// Adds `key` (a live, authenticated connection in `conns`) to the
    /// device index.
    fn index_device(&self, conns: &Slab<Conn>, key: u32, user: &str) {
        let rehash = |k: &u32| {
            // Every indexed key is a live connection with an identity: keys
            // leave the index before their slab entry goes.
            self.user_hash(conns.get(*k as usize).and_then(Conn::user).unwrap_or(""))
        };
        self.users
            .borrow_mut()
            .insert_unique(self.user_hash(user), key, rehash);
    }

    /// Removes `key` from the device index. True if it was there.
    pub(super) fn unindex_device(&self, key: u32, user: &str) -> bool {
        match self
            .users
            .borrow_mut()
            .find_entry(self.user_hash(user), |k| *k == key)
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Slab keys of `user`'s indexed devices on this shard.
    pub(super) fn devices_of(&self, conns: &Slab<Conn>, user: &str) -> SmallKeys {
        self.users
            .borrow()
            .iter_hash(self.user_hash(user))
            .copied()
            .filter(|k| conns.get(*k as usize).and_then(Conn::user) == Some(user))
            .collect()
    }

    /// A connection handed over by another shard after auth: register it
    /// here, welcome it, and start its reader.
    pub(super) fn adopt(self: &Rc<Self>, h: Handoff) {
        let conn = Conn {
            generation: self.next_gen(),
            fd: h.fd,
            paused: false,
            touched: false,
            backlogged: false,
            session: h.session,
            ident: None,
            // A TLS connection keeps its record layer in its spill.
            spill: h.tls.map(|tls| {
                Box::new(Spill {
                    tls: Some(tls),
                    ..Spill::default()
                })
            }),
            transport: h.transport,
            timer_at: u64::MAX,
            closing: None,
            io: 0,
            quiet: false,
        };
        let key = self.conns.borrow_mut().insert(conn) as u32;
        let generation = self.conns.borrow()[key as usize].generation;
        let registered = self.register(key, &mut self.conns.borrow_mut()[key as usize]);
        if let Err(e) = registered {
            warn!(error = %e, "adopting a connection failed");
            self.conns.borrow_mut().remove(key as usize);
            return;
        }
        self.metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.welcome(key, h.user, h.device, h.resume, h.quiet, h.login);
        // Bytes that came with the handoff (frames pipelined after auth).
        let partial = self.conns.borrow_mut()[key as usize].take_partial();
        let partial = [partial, h.partial].concat();
        if !partial.is_empty() {
            let outcome = self.ingest(key, &partial);
            after_ingest(self, key, generation, outcome);
        }
    }

    /// The login rate of the user and the flapping count of the device
    /// (`[limits]`), checked before anything is set up for the login: over
    /// either, `auth` is answered `RATE_LIMITED` with `retry_after_ms` and
    /// the connection closes. True if it was refused.
    fn refuse_login(self: &Rc<Self>, key: u32, user: &str, device: &str, now: u64) -> bool {
        let user_device = std::hash::BuildHasher::hash_one(&self.user_hasher, (user, device));
        let verdict =
            self.limits
                .check_login(self.user_hash(user), user_device, self.epoch.elapsed());
        let Err((limit, retry_after_ms)) = verdict else {
            return false;
        };
        if self.auth_log.borrow_mut().admit(now).is_some() {
            info!(
                shard = self.id,
                user,
                device,
                limit = limit.label(),
                retry_after_ms,
                "login refused: rate limit"
            );
        }
        let reason = if limit == Limit::Flapping {
            "this device reconnects too often; wait retry_after_ms"
        } else {
            "too many logins of this user; wait retry_after_ms"
        };
        let mut conns = self.conns.borrow_mut();
        let c = &mut conns[key as usize];
        // The session is Authenticating: it emitted the Authenticate event.
        let _ = c.session.handle_auth_refused(
            &self.cfg,
            now,
            pb::ErrorCode::RateLimited,
            reason,
            retry_after_ms,
        );
        self.flush(key, c);
        self.close_soon(c, CloseReason::RateLimited);
        true
    }

    pub(super) fn next_gen(&self) -> u32 {
        let g = self.next_generation.get();
        self.next_generation.set(g.wrapping_add(1).max(1));
        g
    }

    /// Registers an authenticated connection on its owner shard (this one),
    /// displaces an older connection of the same device, queues Welcome.
    pub(super) fn welcome(
        self: &Rc<Self>,
        key: u32,
        user: Box<str>,
        device: Box<str>,
        resume: Vec<pb::Cursor>,
        quiet: bool,
        login: LoginInfo,
    ) {
        let now = self.now_ms();
        if self.refuse_login(key, &user, &device, now) {
            return;
        }
        if self.refuse_logged_out(key, &user, &device, &login, now) {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        // A login whose client has already hung up (its auth waited in a
        // queue: the process was stopped, or the shards were behind) must
        // not displace the device's newer connection: the client gave up on
        // this one and has likely connected again. Closed unwelcomed.
        if super::sock::peer_closed(conns[key as usize].fd.as_raw_fd()) {
            let c = &mut conns[key as usize];
            self.close_soon(c, CloseReason::Peer);
            return;
        }
        // Devices that count toward presence ([`PRESENCE_QUIET`] ones do not).
        let (mut others_counted, mut displaced_counted) = (false, false);
        for other in self.devices_of(&conns, &user) {
            let old = &mut conns[other as usize];
            if old.device() == Some(&*device) {
                // Displaced: out of the index now; its close follows.
                displaced_counted |= !old.quiet;
                self.unindex_device(other, &user);
                old.session
                    .kick(&self.cfg, now, pb::KickReason::Displaced, "");
                self.flush(other, old);
                self.close_soon(old, CloseReason::Displaced);
            } else {
                others_counted |= !old.quiet;
            }
        }
        // The platform class's limit (`[login]`): its oldest others kicked.
        self.enforce_login_policy(&mut conns, key, &user, login.platform);
        conns[key as usize].ident = Some(super::devices::ident(
            &user,
            &device,
            &login,
            Self::server_time_ms(),
            self.logins_seen.replace(self.logins_seen.get() + 1),
            &mut self.client_versions.borrow_mut(),
        ));
        // Before Welcome: the device's first sync queues behind it in the
        // same worker ring, so it runs once the route exists.
        self.route_change(&user, &device, RouteChange::Up);
        conns[key as usize].quiet = quiet;
        self.index_device(&conns, key, &user);
        if !quiet && !others_counted {
            self.presence(&user, pb::PresenceState::Online);
        } else if quiet && displaced_counted && !others_counted {
            // A quiet login took the place of the only counted device.
            self.presence(&user, pb::PresenceState::Offline);
        }
        let c = &mut conns[key as usize];
        let ok = AuthOk {
            user_id: &user,
            device_id: &device,
            node_id: &self.node_id,
            unix_ms: Self::server_time_ms(),
        };
        // The session is Authenticating: it emitted the Authenticate event.
        let _ = c.session.handle_auth_ok(&self.cfg, now, ok);
        self.metrics
            .logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.flush(key, c);
        self.arm(key, c);
        if !self.login_check(key, c.generation, &user, &device) {
            // Overloaded past every queue: a login that cannot be checked
            // for a ban is refused; the client reconnects later.
            let retry = self.limits.kick_retry_after_ms();
            c.session
                .kick_after(&self.cfg, now, pb::KickReason::Shutdown, "", retry);
            self.flush(key, c);
            self.close_soon(c, CloseReason::Refused);
            return;
        }
        if !resume.is_empty() {
            // Push what the device lacks after its resume cursors: a sync on
            // its behalf whose answer comes back as a tracked Deliver. Live
            // pushes in the listed conversations wait for it (`Resume`). If
            // the backend queue is full the request waits for room; if even
            // that line is full, there is no resume: live pushes flow as they
            // come and the device's own sync after Welcome covers the rest.
            let state = Resume::new(&resume);
            let req = self.resume_request(key, c.generation, &user, &device, resume);
            if self.queue_resume(req) {
                c.spill_mut().resume = Some(Box::new(state));
            }
        }
    }
}
