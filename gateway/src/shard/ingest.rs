//! Feeding connections: one read into the shard's shared buffer, its frames
//! fed to the session within the turn's budget (`ingest`), and what the
//! outcome asks for (`after_ingest`: close, pause behind a full backend
//! queue, or hand the connection to its owner shard after auth); failed logins
//! logged at a bounded rate.

use std::{
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    time::Instant,
};

use tern_protocol::{
    codec,
    pb::{self, frame::Body},
    session::{self, Session},
};
use tracing::{debug, info};

use super::{
    CONN_FRAMES_PER_TURN_MAX, Conn, Shard,
    backend::unblock_loop,
    finish,
    limits::{self, Verdict},
    sock::recv_nonblocking,
};
use crate::{
    bridge::BackendRequest,
    limits::Limit,
    metrics::CloseReason,
    msg::{Handoff, LoginInfo, PRESENCE_QUIET, ShardMsg, Transport, owner_shard},
    ws,
};

/// Failed-login log lines per second per shard; beyond, lines are counted
/// and one line says how many were not logged.
pub(super) const AUTH_LOG_LINES_PER_SECOND_MAX: u32 = 10;

/// Admits at most `lines_max` log lines per `window_ms`, counting the rest.
#[derive(Debug)]
pub(super) struct LogLimiter {
    window_ms: u64,
    lines_max: u32,
    window_start_ms: u64,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(super) fn new(window_ms: u64, lines_max: u32) -> Self {
        Self {
            window_ms,
            lines_max,
            window_start_ms: 0,
            lines: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this line, after saying that `n` were suppressed
    /// since the last logged one (if `n > 0`); `None`: suppressed.
    pub(super) fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            self.window_start_ms = now_ms;
            self.lines = 0;
        }
        if self.lines >= self.lines_max {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Lines suppressed in a window that has ended, taken (for a timer to
    /// report them when no further line comes).
    pub(super) fn take_expired(&mut self, now_ms: u64) -> u64 {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            std::mem::take(&mut self.suppressed)
        } else {
            0
        }
    }
}

impl Shard {
    /// Logs a failed login at `info`: the peer's address, the error code and
    /// the device id it claimed (never the token), at most
    /// [`AUTH_LOG_LINES_PER_SECOND_MAX`] lines a second per shard.
    fn log_auth_failure(&self, c: &Conn, code: pb::ErrorCode, device: &str, now_ms: u64) {
        let Some(suppressed) = self.auth_log.borrow_mut().admit(now_ms) else {
            return;
        };
        if suppressed > 0 {
            info!(
                shard = self.id,
                suppressed, "failed logins not logged (rate limit)"
            );
        }
        // getpeername(2) on the socket: one syscall, only for a logged line.
        let peer = socket2::SockRef::from(&c.fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        info!(
            shard = self.id,
            peer = ?peer,
            code = code.as_str_name(),
            device = ?device,
            "login failed"
        );
    }

    /// Feeds bytes to a connection's session. Returns what the reader
    /// should do next.
    pub(super) fn ingest(self: &Rc<Self>, key: u32, data: &[u8]) -> Ingest {
        let now = self.now_ms();
        let mut conns = self.conns.borrow_mut();
        let c = &mut conns[key as usize];
        let mut pos = 0;
        let max = self.cfg.frame_bytes_max;
        let mut frames = 0;
        while pos < data.len() {
            if frames == CONN_FRAMES_PER_TURN_MAX {
                // This turn's budget is spent: the rest waits for the next
                // turn, and the socket is not read meanwhile.
                c.backlogged = true;
                self.backlog_push(key, c.generation);
                break;
            }
            frames += 1;
            // `Ok(Some((frame or its decode error, bytes used)))`, `Ok(None)`:
            // need more input; `Err`: the framing itself is broken (close).
            let decoded: Result<Option<Whole>, codec::DecodeError> = match c.transport {
                Transport::Tcp => match codec::frame_len(&data[pos..], max) {
                    Ok(Some((prefix, body_len))) if data.len() - pos >= prefix + body_len => {
                        let body = &data[pos + prefix..pos + prefix + body_len];
                        Ok(Some((
                            codec::decode_client_body(body, max),
                            prefix + body_len,
                        )))
                    }
                    Ok(_) => Ok(None),
                    Err(e) => Err(e),
                },
                Transport::WebSocket => match ws_decode(c, &data[pos..], max) {
                    Ok(ws::WsDecoded::Frame { body, consumed }) => {
                        Ok(Some((codec::decode_client_body(&body, max), consumed)))
                    }
                    Ok(ws::WsDecoded::Fragment { consumed }) => {
                        // Kept in the spill until its last fragment.
                        pos += consumed;
                        continue;
                    }
                    Ok(ws::WsDecoded::Control {
                        consumed,
                        reply,
                        close,
                    }) => {
                        pos += consumed;
                        if let Some(r) = reply {
                            self.write_raw(key, c, &r);
                        }
                        if close {
                            return self.close_after_output(key, c, CloseReason::Peer);
                        }
                        continue;
                    }
                    Ok(ws::WsDecoded::NeedMore) => Ok(None),
                    Err(e) => {
                        // A WebSocket protocol error: close with a status
                        // (1009 too big, 1003 text, 1002 otherwise) and no
                        // Tern frame.
                        debug!(error = %e, "bad websocket frame");
                        self.write_raw(key, c, &ws::close_frame(e.close_code()));
                        return self.close_after_output(key, c, CloseReason::BadInput);
                    }
                },
                Transport::WebSocketUpgrade => {
                    match ws::accept_upgrade(&data[pos..], &self.ws_origins) {
                        Ok(ws::Upgrade::Done { consumed, response }) => {
                            pos += consumed;
                            self.send_ordered(key, c, &response);
                            c.transport = Transport::WebSocket;
                            continue;
                        }
                        Ok(ws::Upgrade::NeedMore) => Ok(None),
                        Err(response) => {
                            self.send_ordered(key, c, &response);
                            return self.close_after_output(key, c, CloseReason::BadInput);
                        }
                    }
                }
            };
            let (frame, consumed) = match decoded {
                Ok(Some((Ok(frame), consumed))) => (frame, consumed),
                Ok(Some((Err(e), consumed))) => {
                    // A whole frame that does not decode: the session answers
                    // with a typed error; it closes only where the protocol
                    // says so (e.g. before auth).
                    debug!(error = %e, "bad frame");
                    c.session.handle_decode_error(&self.cfg, now, &e);
                    self.flush(key, c);
                    if c.session.is_closed() || !c.session.is_live() {
                        return Ingest::Close(CloseReason::BadInput);
                    }
                    pos += consumed;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    // Broken framing (oversized or overlong prefix): tell the
                    // peer why, then close it.
                    debug!(error = %e, "bad frame");
                    c.session.handle_decode_error(&self.cfg, now, &e);
                    self.flush(key, c);
                    return Ingest::Close(CloseReason::BadInput);
                }
            };
            pos += consumed;
            self.metrics
                .frames_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.session
                .handle_frame(&self.cfg, now, Self::server_time_ms(), frame);
            while let Some(ev) = c.session.poll_event() {
                match ev {
                    session::Event::Authenticate(auth) => {
                        let verdict = self.verifier.verify_login(&auth.token);
                        match verdict {
                            Ok(crate::auth::Verified { user, issued_at }) => {
                                let owner = owner_shard(&user, self.shards);
                                let rest = data[pos..].to_vec();
                                let auth = *auth;
                                let quiet = auth.capabilities.iter().any(|c| c == PRESENCE_QUIET);
                                let login = LoginInfo {
                                    platform: auth.platform,
                                    client_version: auth.client_version.into(),
                                    issued_at,
                                };
                                return Ingest::Authenticated {
                                    owner,
                                    user: user.into(),
                                    device: auth.device_id.into(),
                                    rest,
                                    resume: auth.resume_cursors,
                                    quiet,
                                    login: Box::new(login),
                                };
                            }
                            Err(e) => {
                                self.metrics
                                    .auth_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                self.log_auth_failure(c, e.code(), &auth.device_id, now);
                                let _ = c.session.handle_auth_err(
                                    &self.cfg,
                                    now,
                                    e.code(),
                                    &e.to_string(),
                                );
                            }
                        }
                    }
                    session::Event::Request(frame) => {
                        let (Some(user), Some(device)) = (c.user(), c.device()) else {
                            continue;
                        };
                        let is_send = matches!(frame.body, Some(Body::Send(_)));
                        let verdict = self.limits.check_request(
                            limits::conn_id(key, c.generation),
                            self.user_hash(user),
                            is_send,
                            self.epoch.elapsed(),
                        );
                        match verdict {
                            Verdict::Pass => {}
                            Verdict::Refuse {
                                retry_after_ms,
                                limit,
                            } => {
                                // Nothing leaves for the backend: nothing is
                                // stored, and the same request (a send with
                                // the same client_msg_id) may come again.
                                // A notice (typing, request_id 0) is dropped.
                                if frame.request_id != 0 {
                                    let _ = c.session.queue_frame(
                                        &self.cfg,
                                        now,
                                        &rate_limited(frame.request_id, limit, retry_after_ms),
                                    );
                                }
                                continue;
                            }
                            Verdict::Kick { retry_after_ms } => {
                                // Logged at the failed-login lines' bounded
                                // rate (a flood of abusers is one line a
                                // tenth of a second at most).
                                if self.auth_log.borrow_mut().admit(now).is_some() {
                                    info!(
                                        shard = self.id,
                                        user,
                                        device,
                                        retry_after_ms,
                                        "kicked: repeated rate-limit refusals"
                                    );
                                }
                                c.session.kick_after(
                                    &self.cfg,
                                    now,
                                    pb::KickReason::RateLimited,
                                    "",
                                    retry_after_ms,
                                );
                                continue;
                            }
                        }
                        if matches!(
                            frame.body,
                            Some(Body::DeviceList(_) | Body::DeviceLogout(_))
                        ) {
                            // Answered here (all the user's devices on this
                            // node are on this shard), once this feed lets
                            // go of the connections: a task per such rare
                            // request (`devices.rs`).
                            let shard = self.clone();
                            let from = self.conn_ref(key, c.generation);
                            monoio::spawn(async move { shard.device_request(from, frame) });
                            continue;
                        }
                        if let Some(Body::RoomJoin(j)) = &frame.body {
                            // A join past this shard's bounds is refused here
                            // and changes nothing (checked again when the
                            // backend's answer comes back: joins in flight).
                            if let Err(refused) = self.rooms.borrow().check_join(key, &j.room_id) {
                                self.metrics
                                    .room_joins_refused
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let _ = c.session.queue_frame(
                                    &self.cfg,
                                    now,
                                    &refused.error(frame.request_id),
                                );
                                continue;
                            }
                        }
                        let mut req = BackendRequest::new(
                            self.conn_ref(key, c.generation),
                            user,
                            device,
                            frame,
                        );
                        req.started = is_send.then(Instant::now);
                        if let Err(req) = self.send_backend_in_order(req) {
                            // Back-pressure: keep this request and the rest
                            // of the input; stop reading until there is room.
                            self.metrics
                                .backend_backpressure
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.flush(key, c);
                            return Ingest::Blocked {
                                request: Box::new(req),
                                rest: data[pos..].to_vec(),
                            };
                        }
                    }
                }
            }
            // Replies are written once, after the loop (at most a budget of
            // frames, below the outbox bound): one `send` per turn, not one
            // per frame. A closing session takes nothing more.
            if c.session.close_reason().is_some() {
                break;
            }
        }
        self.flush(key, c);
        self.arm(key, c);
        if c.session.is_closed() || c.closing.is_some() {
            return Ingest::Close(c.closing.unwrap_or_else(|| close_reason(&c.session)));
        }
        // Keep only the partial frame, in a buffer sized to it.
        let rest = &data[pos..];
        if !rest.is_empty() {
            c.spill_mut().partial.extend_from_slice(rest);
        }
        Ingest::Continue
    }
}

/// The answer to a request over a rate limit.
fn rate_limited(request_id: u64, limit: Limit, retry_after_ms: u32) -> pb::Frame {
    pb::Frame {
        request_id,
        body: Some(Body::Error(pb::Error {
            code: pb::ErrorCode::RateLimited as i32,
            reason: format!("over the {} rate limit", limit.label()),
            retry_after_ms,
        })),
    }
}

/// Decodes one WebSocket frame of `c`. A fragmented message lives in the
/// connection's spill only while it is partial: taken out for the call, put
/// back if still partial, and the spill freed once nothing else is in it.
fn ws_decode(c: &mut Conn, buf: &[u8], max: usize) -> Result<ws::WsDecoded, ws::WsError> {
    let mut message = c.spill.as_mut().and_then(|s| s.ws_message.take());
    let was_partial = message.is_some();
    let decoded = ws::decode_message(buf, max, &mut message);
    match message {
        Some(m) => c.spill_mut().ws_message = Some(m),
        None if was_partial => c.tidy(),
        None => {}
    }
    decoded
}

/// The metrics label for why a session closed.
pub(super) fn close_reason(session: &Session) -> CloseReason {
    use session::CloseReason as S;
    match session.close_reason() {
        Some(
            S::AuthRequired | S::AuthTimeout | S::AuthRejected | S::BadAuth | S::UnsupportedVersion,
        ) => CloseReason::Auth,
        Some(S::BadFrame | S::FrameTooLarge) => CloseReason::BadInput,
        Some(S::HeartbeatTimeout) => CloseReason::HeartbeatTimeout,
        Some(S::SlowConsumer | S::Kicked(pb::KickReason::SlowConsumer)) => {
            CloseReason::SlowConsumer
        }
        Some(S::Kicked(pb::KickReason::Displaced)) => CloseReason::Displaced,
        Some(S::Kicked(pb::KickReason::RateLimited)) => CloseReason::RateLimited,
        Some(S::Kicked(_)) => CloseReason::Shutdown,
        Some(S::PeerClosed) | None => CloseReason::Peer,
    }
}

/// A whole frame from the input (decoded, or why not) and the bytes it took.
type Whole = (Result<pb::Frame, codec::DecodeError>, usize);

pub(super) enum Ingest {
    Continue,
    Close(CloseReason),
    Authenticated {
        owner: usize,
        user: Box<str>,
        device: Box<str>,
        rest: Vec<u8>,
        resume: Vec<pb::Cursor>,
        quiet: bool,
        login: Box<LoginInfo>,
    },
    Blocked {
        request: Box<BackendRequest>,
        rest: Vec<u8>,
    },
}

/// What one read from the socket gave.
pub(super) enum Read {
    /// EOF or a socket error: close for this reason.
    Eof(CloseReason),
    /// Nothing to read after all (a spurious wake-up).
    WouldBlock,
    /// Bytes were fed to the session.
    Ingested(Ingest),
}

/// Reads once into the shard's shared buffer and feeds the session; only an
/// incomplete frame is copied out (into `partial`, allocated on demand).
pub(super) fn read_and_ingest(shard: &Rc<Shard>, key: u32, fd: RawFd) -> Read {
    let mut buf = shard.read_buf.borrow_mut();
    let n = match recv_nonblocking(fd, &mut buf) {
        Ok(Some(0)) => {
            let closing = shard.conns.borrow()[key as usize].closing;
            return Read::Eof(closing.unwrap_or(CloseReason::Peer));
        }
        Ok(Some(n)) => n,
        Ok(None) => return Read::WouldBlock,
        Err(_) => return Read::Eof(CloseReason::Error),
    };
    shard
        .metrics
        .bytes_in
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    ingest_read(shard, key, &mut buf[..n])
}

/// Feeds what one read gave (`incoming`: in the shard's read buffer, or in a
/// provided buffer of the io_uring path) to the connection: decrypted first
/// on a TLS connection; only an incomplete frame is copied out.
pub(super) fn ingest_read(shard: &Rc<Shard>, key: u32, incoming: &mut [u8]) -> Read {
    let secure = shard.conns.borrow()[key as usize]
        .spill
        .as_ref()
        .is_some_and(|s| s.tls.is_some());
    if secure {
        return super::tls::read_tls(shard, key, incoming);
    }
    let mut conns = shard.conns.borrow_mut();
    let c = &mut conns[key as usize];
    let mut partial = c.take_partial();
    if partial.is_empty() {
        drop(conns);
        return Read::Ingested(shard.ingest(key, incoming));
    }
    // Complete the partial frame: append and feed the whole.
    partial.extend_from_slice(incoming);
    drop(conns);
    Read::Ingested(shard.ingest(key, &partial))
}

/// Acts on what feeding a connection gave: close it, pause it behind a
/// full backend queue, or move it to its owner shard after auth. Loops while
/// an outcome leaves more input to feed (pipelined frames after auth).
pub(super) fn after_ingest(shard: &Rc<Shard>, key: u32, generation: u32, mut outcome: Ingest) {
    loop {
        match outcome {
            Ingest::Continue => return,
            Ingest::Close(reason) => return finish(shard, key, generation, reason),
            Ingest::Blocked { request, rest } => {
                // Back-pressure: keep the request and the input after it,
                // stop reading this connection until the queue has room.
                let mut conns = shard.conns.borrow_mut();
                let Some(c) = conns
                    .get_mut(key as usize)
                    .filter(|c| c.generation == generation)
                else {
                    return;
                };
                let rest = [rest, c.take_partial()].concat();
                c.set_partial(rest);
                c.paused = true;
                shard.interest(key, c);
                shard
                    .blocked
                    .borrow_mut()
                    .push_back((key, generation, *request));
                if !shard.unblocking.replace(true) {
                    monoio::spawn(unblock_loop(shard.clone()));
                }
                return;
            }
            Ingest::Authenticated {
                owner,
                user,
                device,
                rest,
                resume,
                quiet,
                login,
            } => {
                if owner == shard.id {
                    shard.conns.borrow_mut()[key as usize].set_partial(rest);
                    shard.welcome(key, user, device, resume, quiet, *login);
                    let partial = shard.conns.borrow_mut()[key as usize].take_partial();
                    if partial.is_empty() {
                        return;
                    }
                    outcome = shard.ingest(key, &partial);
                    continue;
                }
                // Move to the owner shard: the fd travels over the ring.
                let conn = shard.conns.borrow_mut().remove(key as usize);
                if shard.uring.is_some() {
                    // Nothing queued on this ring may name its descriptor
                    // once it belongs to another shard.
                    shard.uring_forget(key, &conn);
                }
                if shard.uring.is_some() && Shard::uring_busy(&conn) {
                    // Not reached in practice: before auth a connection's
                    // recv is single-shot (done: its bytes are being fed)
                    // and its writes direct; only a socket that did not
                    // take a handshake answer keeps bytes here. Those cannot
                    // follow it to another ring in order: closed, the client
                    // logs in again.
                    shard.metrics.closed(CloseReason::Error);
                    return;
                }
                shard
                    .metrics
                    .connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let Conn {
                    fd,
                    session,
                    transport,
                    spill,
                    ..
                } = conn;
                // A TLS connection's record layer moves with it.
                let tls = spill.and_then(|s| s.tls);
                // SAFETY: both descriptors are alive; DEL ignores the event.
                unsafe {
                    libc::epoll_ctl(
                        shard.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
                let handoff = Box::new(Handoff {
                    fd,
                    session,
                    partial: rest,
                    user,
                    device,
                    transport,
                    resume,
                    quiet,
                    tls,
                    login: *login,
                });
                let mut to = shard.to_shards.borrow_mut();
                let tx = to[owner].as_mut().expect("a ring to every other shard");
                if tx.send(ShardMsg::Handoff(handoff)).is_err() {
                    // The owner's ring is full: the login is refused (the
                    // handoff, with its socket, is dropped: closed); the
                    // client retries.
                    shard.metrics.closed[CloseReason::Refused as usize]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
        }
    }
}
