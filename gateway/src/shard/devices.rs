//! A user's devices on this node (docs/protocol.md, "Devices and login
//! policies"): the device list, remote logout and the logged-out devices a
//! shard remembers, and the per-platform-class login policy `welcome`
//! applies. All of a user's devices on a node are on its owner shard, so
//! each of these is a look at this shard's device index.
//!
//! What a login said of its device (platform, login time, client version)
//! rides in the connection's identity string after `user\0device`, so an
//! idle connection's slab entry does not grow:
//! `user\0device\0<p><ms>.<n>\0<v>`, `<p>` the platform's number as one
//! digit, `<ms>` the Welcome's Unix milliseconds and `<n>` the shard's count
//! of logins (orders logins of one millisecond), both in base 36, and `<v>`
//! `#` and the base-36 index of `Auth.client_version` in the shard's
//! [`ClientVersions`] (a fleet runs a handful of versions: each is kept once
//! per shard), or, once that table is full, `=` and the version itself, cut
//! to [`CLIENT_VERSION_KEPT_BYTES_MAX`]. An idle connection pays about 16
//! bytes for all of it.

use std::{collections::VecDeque, rc::Rc};

use hashbrown::HashMap;
use slab::Slab;
use tern_protocol::pb::{self, frame::Body};
use tracing::info;

use super::{Conn, Shard};
use crate::{
    bridge::BackendRequest,
    config::PlatformClass,
    msg::{ConnRef, DeviceEntry, LoginInfo},
};

pub use crate::msg::DEVICE_LIST_MAX;

/// Bytes of `Auth.client_version` a connection keeps for the device list
/// (cut at a character boundary).
pub const CLIENT_VERSION_KEPT_BYTES_MAX: usize = 32;

/// Distinct client versions a shard keeps (each once, named by index from
/// the identity strings of its connections). Past it, a new version is
/// kept inline in each connection's identity instead.
pub const CLIENT_VERSIONS_MAX: usize = 1_024;

/// The client versions a shard's connections named at login, each kept
/// once (see the module doc). Never shrinks: bounded by
/// [`CLIENT_VERSIONS_MAX`] versions of at most
/// [`CLIENT_VERSION_KEPT_BYTES_MAX`] bytes.
#[derive(Default)]
pub(super) struct ClientVersions {
    index: HashMap<Rc<str>, u32>,
    names: Vec<Rc<str>>,
}

impl ClientVersions {
    /// The index of `v`, added if new and there is room.
    fn intern(&mut self, v: &str) -> Option<u32> {
        if let Some(&i) = self.index.get(v) {
            return Some(i);
        }
        if self.names.len() >= CLIENT_VERSIONS_MAX {
            return None;
        }
        let i = u32::try_from(self.names.len()).ok()?;
        let name: Rc<str> = v.into();
        self.names.push(name.clone());
        self.index.insert(name, i);
        Some(i)
    }

    /// The version a connection's identity names by `#<index>` or `=<v>`.
    fn resolve<'a>(&'a self, kept: &'a str) -> &'a str {
        match kept.split_at_checked(1) {
            Some(("#", i)) => u32::from_str_radix(i, 36)
                .ok()
                .and_then(|i| self.names.get(i as usize))
                .map_or("", |n| n),
            Some(("=", v)) => v,
            _ => "",
        }
    }
}

/// `n` in base 36 (lower case), the identity string's compact numbers.
fn base36(mut n: u64, out: &mut String) {
    let mut digits = [0u8; 13];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// The part of a client version that is kept: its first
/// [`CLIENT_VERSION_KEPT_BYTES_MAX`] bytes, cut at a character boundary.
pub(super) fn kept_version(v: &str) -> &str {
    let mut cut = v.len().min(CLIENT_VERSION_KEPT_BYTES_MAX);
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    &v[..cut]
}

/// The identity string of a welcomed connection (see the module doc).
pub(super) fn ident(
    user: &str,
    device: &str,
    login: &LoginInfo,
    login_ms: u64,
    n: u64,
    versions: &mut ClientVersions,
) -> Box<str> {
    // A platform this build does not know was refused by validation; the
    // digit stays one character either way.
    let p = (login.platform as i32).clamp(0, 9);
    let v = kept_version(&login.client_version);
    let mut s = String::with_capacity(user.len() + device.len() + 24);
    s.push_str(user);
    s.push('\0');
    s.push_str(device);
    s.push('\0');
    s.push(char::from(b'0' + p as u8));
    base36(login_ms, &mut s);
    s.push('.');
    base36(n, &mut s);
    s.push('\0');
    match versions.intern(v) {
        Some(i) => {
            s.push('#');
            base36(u64::from(i), &mut s);
        }
        None => {
            s.push('=');
            s.push_str(v);
        }
    }
    s.into_boxed_str()
}

impl Conn {
    /// Platform, login time (Unix ms), login order and client version (as
    /// kept: resolve it with [`ClientVersions`]) of a welcomed connection.
    fn login_meta(&self) -> (pb::Platform, (u64, u64), &str) {
        let meta = self
            .ident
            .as_deref()
            .and_then(|s| s.splitn(3, '\0').nth(2))
            .unwrap_or("");
        let (stamp, version) = meta.split_once('\0').unwrap_or((meta, ""));
        let platform = stamp
            .get(..1)
            .and_then(|d| d.parse::<i32>().ok())
            .and_then(|d| pb::Platform::try_from(d).ok())
            .unwrap_or_default();
        let (ms, n) = stamp
            .get(1..)
            .and_then(|m| m.split_once('.'))
            .unwrap_or(("0", "0"));
        let order = (
            u64::from_str_radix(ms, 36).unwrap_or(0),
            u64::from_str_radix(n, 36).unwrap_or(0),
        );
        (platform, order, version)
    }

    /// Welcomed and not on its way out (kicked, displaced, closing).
    fn active(&self) -> bool {
        self.closing.is_none() && self.session.close_reason().is_none()
    }
}

/// Logged-out devices a shard remembers: `hash(user, device)` → the
/// logout's Unix ms, the oldest forgotten past `logged_out_max`.
#[derive(Debug, Default)]
pub(super) struct LoggedOut {
    at: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

impl LoggedOut {
    fn remember(&mut self, id: u64, unix_ms: u64, max: usize) {
        if max == 0 {
            return;
        }
        if self.at.insert(id, unix_ms).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > max {
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }

    /// Whether a login with a token issued at `issued_at` (seconds) is
    /// refused at `now_ms`: the device was logged out within `block_ms`, no
    /// earlier than the token was issued.
    fn refuses(&self, id: u64, issued_at: Option<u64>, now_ms: u64, block_ms: u64) -> bool {
        let Some(&at) = self.at.get(&id) else {
            return false;
        };
        if block_ms == 0 || now_ms.saturating_sub(at) >= block_ms {
            return false;
        }
        issued_at.is_none_or(|iat| iat.saturating_mul(1_000) <= at)
    }
}

impl Shard {
    fn device_id_hash(&self, user: &str, device: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.user_hasher, ("logout", user, device))
    }

    /// True (and the login is answered `DEVICE_LOGGED_OUT` and closed) if
    /// `device` was logged out after its token was issued.
    pub(super) fn refuse_logged_out(
        self: &Rc<Self>,
        key: u32,
        user: &str,
        device: &str,
        login: &LoginInfo,
        now: u64,
    ) -> bool {
        let id = self.device_id_hash(user, device);
        let refused = self.logged_out.borrow().refuses(
            id,
            login.issued_at,
            Self::server_time_ms(),
            self.login.logged_out_block_ms,
        );
        if !refused {
            return false;
        }
        if self.auth_log.borrow_mut().admit(now).is_some() {
            info!(
                shard = self.id,
                user, device, "login refused: device logged out"
            );
        }
        let mut conns = self.conns.borrow_mut();
        let c = &mut conns[key as usize];
        // The session is Authenticating: it emitted the Authenticate event.
        let _ = c.session.handle_auth_refused(
            &self.cfg,
            now,
            pb::ErrorCode::DeviceLoggedOut,
            "this device was logged out; log in again for a new token",
            0,
        );
        self.flush(key, c);
        self.close_soon(c, crate::metrics::CloseReason::Auth);
        true
    }

    /// The login policy of the class of `platform`: past its limit, the
    /// class's oldest active connections of `user` (other than `key`) are
    /// kicked with `LOGIN_POLICY`. They stay in the device index until they
    /// close (`finish` then says whether the user went offline; the new
    /// login is indexed, so it does not).
    pub(super) fn enforce_login_policy(
        self: &Rc<Self>,
        conns: &mut Slab<Conn>,
        key: u32,
        user: &str,
        platform: pb::Platform,
    ) {
        let class = PlatformClass::of(platform);
        let max = self.login.devices_max(class) as usize;
        if max == 0 {
            return;
        }
        let mut same: Vec<((u64, u64), u32)> = self
            .devices_of(conns, user)
            .iter()
            .filter(|&&k| k != key)
            .filter_map(|&k| {
                let c = conns.get(k as usize)?;
                let (p, order, _) = c.login_meta();
                (c.active() && PlatformClass::of(p) == class).then_some((order, k))
            })
            .collect();
        // The new login is one of the class: keep `max - 1` of the others.
        if same.len() < max {
            return;
        }
        same.sort_unstable();
        let excess = same.len() + 1 - max;
        let now = self.now_ms();
        for &(_, k) in &same[..excess] {
            let c = &mut conns[k as usize];
            if self.auth_log.borrow_mut().admit(now).is_some() {
                info!(
                    shard = self.id,
                    user,
                    device = c.device().unwrap_or(""),
                    class = class.name(),
                    "kicked: login policy"
                );
            }
            c.session
                .kick(&self.cfg, now, pb::KickReason::LoginPolicy, "");
            self.flush(k, c);
            self.close_soon(c, crate::metrics::CloseReason::Kicked);
        }
    }

    /// A kick the login policy decided across nodes (cluster mode: the
    /// route write of a newer login picked this node's connection of
    /// `device` as its class's oldest): kicked with `LOGIN_POLICY` if it is
    /// still active and the login of `login_ms`. A connection already
    /// kicked (here by [`Self::enforce_login_policy`], or for any other
    /// reason) gets nothing more, so each connection gets one kick; a newer
    /// login of the same device stays.
    pub(super) fn kick_by_policy(self: &Rc<Self>, user: &str, device: &str, login_ms: u64) {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        for k in self.devices_of(&conns, user) {
            let Some(c) = conns.get_mut(k as usize) else {
                continue;
            };
            if !c.active() || c.device() != Some(device) || c.login_meta().1.0 != login_ms {
                continue;
            }
            if self.auth_log.borrow_mut().admit(now).is_some() {
                info!(
                    shard = self.id,
                    user,
                    device,
                    class = PlatformClass::of(c.login_meta().0).name(),
                    "kicked: login policy (across nodes)"
                );
            }
            c.session
                .kick(&self.cfg, now, pb::KickReason::LoginPolicy, "");
            self.flush(k, c);
            self.close_soon(c, crate::metrics::CloseReason::Kicked);
        }
    }

    /// The active devices of `user` here, oldest login first, with their
    /// slab keys.
    fn device_entries(&self, conns: &Slab<Conn>, user: &str) -> Vec<(u32, DeviceEntry)> {
        let mut list: Vec<((u64, u64), u32, DeviceEntry)> = self
            .devices_of(conns, user)
            .iter()
            .filter_map(|&k| {
                let c = conns.get(k as usize).filter(|c| c.active())?;
                let (platform, order, kept) = c.login_meta();
                let version = self.client_versions.borrow().resolve(kept).to_owned();
                Some((
                    order,
                    k,
                    DeviceEntry {
                        device_id: c.device()?.to_owned(),
                        platform,
                        login_time_ms: order.0,
                        client_version: version,
                    },
                ))
            })
            .collect();
        list.sort_unstable_by_key(|e| e.0);
        list.truncate(DEVICE_LIST_MAX);
        list.into_iter().map(|(_, k, e)| (k, e)).collect()
    }

    /// The server API's list of `user`'s devices here.
    pub(super) fn devices_for_api(&self, user: &str) -> Vec<DeviceEntry> {
        let conns = self.conns.borrow();
        self.device_entries(&conns, user)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// Logs out `device` of `user`: remembered as logged out now, and its
    /// connection (if here) kicked with `LOGGED_OUT`. True if it was
    /// connected here.
    pub(super) fn logout(self: &Rc<Self>, user: &str, device: &str) -> bool {
        let mut conns = self.conns.borrow_mut();
        let keys: Vec<u32> = self
            .devices_of(&conns, user)
            .iter()
            .copied()
            .filter(|&k| {
                conns
                    .get(k as usize)
                    .is_some_and(|c| c.active() && c.device() == Some(device))
            })
            .collect();
        if keys.is_empty() {
            return false;
        }
        let id = self.device_id_hash(user, device);
        self.logged_out.borrow_mut().remember(
            id,
            Self::server_time_ms(),
            self.login.logged_out_max as usize,
        );
        let kick = pb::Kick {
            reason: pb::KickReason::LoggedOut as i32,
            ..Default::default()
        };
        for k in keys {
            self.kick_conn(k, &mut conns[k as usize], &kick);
        }
        true
    }

    /// A logout of `user`'s `device` decided on another node, or here for
    /// a device on another node: remembered (its old token is refused here
    /// too), and its connection here, if any, kicked with `LOGGED_OUT`.
    pub(super) fn logout_elsewhere(self: &Rc<Self>, user: &str, device: &str) {
        if !self.logout(user, device) {
            let id = self.device_id_hash(user, device);
            self.logged_out.borrow_mut().remember(
                id,
                Self::server_time_ms(),
                self.login.logged_out_max as usize,
            );
        }
    }

    /// Answers a connection's `device_list` or `device_logout`. Runs in a
    /// task of its own, spawned by `ingest` (which holds the connection's
    /// entry): these requests are rare (and counted by the request limits),
    /// and need every device of the user.
    ///
    /// With several nodes (cluster mode) the answer is completed by the
    /// user's backend worker, which reads what Redis knows of the user's
    /// devices on other nodes: a list goes there with this node's devices
    /// in it, a logout of a device not connected here goes there to be
    /// sent to the node holding it (docs/cluster.md, "Devices across
    /// nodes").
    pub(super) fn device_request(self: &Rc<Self>, from: ConnRef, frame: Box<pb::Frame>) {
        let (user, device) = {
            let conns = self.conns.borrow();
            let Some(c) = conns
                .get(from.key as usize)
                .filter(|c| c.generation == from.generation)
            else {
                return; // closed meanwhile
            };
            let Some(u) = c.user() else {
                return;
            };
            (u.to_owned(), c.device().unwrap_or("").to_owned())
        };
        let request_id = frame.request_id;
        let to_worker = |body: Body| {
            let frame = Box::new(pb::Frame {
                request_id,
                body: Some(body),
            });
            self.send_waiting(BackendRequest::new(from, &user, &device, frame));
        };
        let body = match frame.body {
            Some(Body::DeviceList(_)) => {
                let conns = self.conns.borrow();
                let devices = self
                    .device_entries(&conns, &user)
                    .into_iter()
                    .map(|(k, e)| pb::DeviceInfo {
                        device_id: e.device_id,
                        platform: e.platform as i32,
                        node_id: self.node_id.to_string(),
                        login_time_ms: e.login_time_ms,
                        client_version: e.client_version,
                        current: k == from.key,
                    })
                    .collect();
                let list = Body::DeviceListResult(pb::DeviceListResult { devices });
                if self.cluster {
                    drop(conns);
                    to_worker(list);
                    return;
                }
                list
            }
            Some(Body::DeviceLogout(m)) => {
                let here = self.logout(&user, &m.device_id);
                if self.cluster {
                    // Here: remembered in Redis for the other nodes before
                    // the answer. Elsewhere: sent to the node holding it.
                    let mut req = BackendRequest::new(
                        from,
                        &user,
                        &device,
                        Box::new(pb::Frame {
                            request_id,
                            body: Some(Body::DeviceLogout(m)),
                        }),
                    );
                    req.done_here = here;
                    self.send_waiting(req);
                    return;
                }
                if here {
                    Body::Ok(pb::Ok::default())
                } else {
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::NotFound as i32,
                        reason: format!("device {:?} is not connected", m.device_id),
                        retry_after_ms: 0,
                    })
                }
            }
            _ => return,
        };
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns
            .get_mut(from.key as usize)
            .filter(|c| c.generation == from.generation)
        else {
            return;
        };
        let reply = pb::Frame {
            request_id: frame.request_id,
            body: Some(body),
        };
        let _ = c.session.queue_frame(&self.cfg, now, &reply);
        self.flush(from.key, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_keeps_login_facts_and_a_short_version() {
        // Proves what a login said survives in the identity string: the
        // platform, the login time and order, and the client version cut to
        // its bound at a character boundary, kept once per shard.
        let login = LoginInfo {
            platform: pb::Platform::Android,
            client_version: format!("{}é-and-more", "v".repeat(31)).into(),
            issued_at: None,
        };
        let mut versions = ClientVersions::default();
        let id = ident(
            "alice",
            "phone",
            &login,
            1_700_000_000_123,
            7,
            &mut versions,
        );
        let parts: Vec<&str> = id.split('\0').collect();
        assert_eq!(parts[..2], ["alice", "phone"]);
        assert_eq!(parts[2], "2loyw3v5n.7", "platform 2, login ms, order");
        assert_eq!(parts[3], "#0", "the first version the shard saw");
        assert_eq!(
            versions.resolve(parts[3]),
            "v".repeat(31),
            "é would pass 32 bytes: cut before it"
        );
        let again = ident("bob", "pc", &login, 1, 8, &mut versions);
        assert!(again.ends_with("\0#0"), "{again:?}: one copy per shard");
    }

    #[test]
    fn versions_past_the_table_stay_inline() {
        let mut versions = ClientVersions::default();
        let login = |v: String| LoginInfo {
            platform: pb::Platform::Web,
            client_version: v.into(),
            issued_at: None,
        };
        for i in 0..CLIENT_VERSIONS_MAX {
            ident("u", "d", &login(format!("v{i}")), 1, 1, &mut versions);
        }
        let last = ident("u", "d", &login("new".into()), 1, 1, &mut versions);
        let kept = last.rsplit('\0').next().unwrap();
        assert_eq!(kept, "=new");
        assert_eq!(versions.resolve(kept), "new");
        let known = ident("u", "d", &login("v5".into()), 1, 1, &mut versions);
        assert_eq!(versions.resolve(known.rsplit('\0').next().unwrap()), "v5");
    }

    #[test]
    fn logged_out_devices_are_bounded_and_expire() {
        let mut l = LoggedOut::default();
        l.remember(1, 10_000, 2);
        l.remember(2, 10_000, 2);
        l.remember(3, 10_000, 2);
        assert!(!l.refuses(1, None, 10_001, 1_000), "forgotten past the max");
        assert!(l.refuses(2, None, 10_001, 1_000), "no iat: refused");
        assert!(
            l.refuses(2, Some(10), 10_001, 1_000),
            "issued at the logout"
        );
        assert!(!l.refuses(2, Some(11), 10_001, 1_000), "issued after");
        assert!(!l.refuses(2, None, 11_000, 1_000), "the block ended");
        assert!(!l.refuses(2, None, 10_001, 0), "0: never refused");
    }
}
