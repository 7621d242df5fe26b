//! The shard's sockets: the one ordered write path (`flush`, `send_ordered`,
//! raw writes, closing after output), the epoll set (`interest`, `register`,
//! `new_epoll`, tokens) and the non-blocking `send`/`recv` calls. On a TLS
//! connection the write path seals bytes into TLS records (in the shard's
//! shared `tls_out` buffer) just before they go to the socket, so what is
//! kept pending is always wire bytes, in wire order.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    rc::Rc,
};

use tern_protocol::{codec, session};

use super::{Conn, Shard, ingest::Ingest};
use crate::{metrics::CloseReason, msg::Transport, ws};

impl Shard {
    /// Writes what the session has to send. Returns false if the socket is
    /// broken (the reader will see it and close).
    pub(super) fn flush(self: &Rc<Self>, key: u32, conn: &mut Conn) {
        // On the io_uring path an authenticated connection's bytes queue
        // behind what is pending, in order, and go with the turn's
        // submissions (`uring.rs`).
        let queued = self.uring_path(conn);
        if !queued && !conn.pending_out().is_empty() {
            return; // waiting for write readiness; order of bytes is kept
        }
        if conn.tls_handshaking() {
            return; // the frames wait in the outbox until the handshake is done
        }
        if conn.transport == Transport::WebSocketUpgrade {
            // No WebSocket yet: the session's frames (its auth-timeout error,
            // or a shutdown kick) would be garbage to an HTTP client; it gets
            // an HTTP response instead, and is closed after it.
            let mut any = false;
            while conn.session.poll_transmit().is_some() {
                any = true;
            }
            if any {
                let timed_out =
                    conn.session.close_reason() == Some(session::CloseReason::AuthTimeout);
                self.send_ordered(key, conn, &ws::upgrade_abandoned_response(timed_out));
            }
            return;
        }
        let fd = conn.fd.as_raw_fd();
        let mut buf = self.write_buf.borrow_mut();
        loop {
            buf.clear();
            let mut frames = 0u64;
            while buf.len() < 64 * 1024 {
                let Some(body) = conn.session.poll_transmit() else {
                    break;
                };
                match conn.transport {
                    Transport::Tcp => codec::encode_prefix(body.len(), &mut buf),
                    Transport::WebSocket | Transport::WebSocketUpgrade => {
                        ws::encode_binary_header(body.len(), &mut buf)
                    }
                }
                buf.extend_from_slice(&body);
                frames += 1;
            }
            if buf.is_empty() {
                return;
            }
            self.metrics
                .frames_out
                .fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
            let mut sealed = self.tls_out.borrow_mut();
            let wire: &[u8] = match conn.tls_mut() {
                Some(tls) => {
                    sealed.clear();
                    if tls.encrypt(&buf, &mut sealed).is_err() {
                        drop(sealed);
                        self.close_soon(conn, CloseReason::Error);
                        return;
                    }
                    &sealed[..]
                }
                None => &buf[..],
            };
            if queued {
                self.uring_send(key, conn, wire);
                if conn.closing.is_some() {
                    return;
                }
                continue;
            }
            let sent = send_nonblocking(fd, wire);
            match sent {
                Ok(n) if n == wire.len() => {
                    self.metrics
                        .bytes_out
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(n) => {
                    self.metrics
                        .bytes_out
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    // A deliberate allocation: only a connection whose socket
                    // buffer is full keeps its unsent bytes.
                    conn.spill_mut().pending_out = wire[n..].to_vec();
                    drop(sealed);
                    self.interest(key, conn);
                    return;
                }
                Err(_) => {
                    drop(sealed);
                    self.close_soon(conn, CloseReason::Error);
                    return;
                }
            }
        }
    }

    /// Writes raw bytes (a WebSocket control frame, the upgrade response, an
    /// HTTP error) in order with everything else the connection writes:
    /// after the session's queued frames and behind bytes already pending.
    pub(super) fn write_raw(self: &Rc<Self>, key: u32, conn: &mut Conn, bytes: &[u8]) {
        self.flush(key, conn);
        self.send_ordered(key, conn, bytes);
    }

    /// The one ordered output path for bytes outside the session's frames
    /// (WebSocket control frames, HTTP answers): sealed into TLS records
    /// first on a TLS connection (dropped before its handshake is done:
    /// nothing can be said to that peer yet), then [`Self::send_wire`].
    pub(super) fn send_ordered(&self, key: u32, conn: &mut Conn, bytes: &[u8]) {
        let Some(tls) = conn.tls_mut() else {
            return self.send_wire(key, conn, bytes);
        };
        if !tls.is_live() {
            return;
        }
        let mut sealed = self.tls_out.borrow_mut();
        sealed.clear();
        if tls.encrypt(bytes, &mut sealed).is_err() {
            drop(sealed);
            return self.close_soon(conn, CloseReason::Error);
        }
        self.send_wire(key, conn, &sealed);
    }

    /// Wire bytes (already sealed on a TLS connection) go to the socket only
    /// when nothing is pending; a short write keeps the rest pending
    /// (written on write readiness, before anything later). Pending bytes
    /// beyond `outbox_bytes_max` make the connection a slow consumer.
    pub(super) fn send_wire(&self, key: u32, conn: &mut Conn, bytes: &[u8]) {
        if self.uring_path(conn) {
            return self.uring_send(key, conn, bytes);
        }
        if !conn.pending_out().is_empty() {
            if conn.pending_out().len().saturating_add(bytes.len()) > self.cfg.outbox_bytes_max {
                self.close_soon(conn, CloseReason::SlowConsumer);
                return;
            }
            conn.spill_mut().pending_out.extend_from_slice(bytes);
            return;
        }
        match send_nonblocking(conn.fd.as_raw_fd(), bytes) {
            Ok(n) => {
                self.metrics
                    .bytes_out
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if n < bytes.len() {
                    // A deliberate allocation: only while the socket is full.
                    conn.spill_mut().pending_out = bytes[n..].to_vec();
                    self.interest(key, conn);
                }
            }
            Err(_) => self.close_soon(conn, CloseReason::Error),
        }
    }

    /// Closes a connection once what it has to write is written: at once if
    /// nothing is pending, else it stops being read and is closed when its
    /// pending bytes drain (or at its session's next deadline).
    pub(super) fn close_after_output(
        &self,
        key: u32,
        conn: &mut Conn,
        reason: CloseReason,
    ) -> Ingest {
        if conn.pending_out().is_empty() && !self.uring_sending(conn) {
            return Ingest::Close(reason);
        }
        conn.closing.get_or_insert(reason);
        conn.paused = true;
        self.interest(key, conn);
        Ingest::Continue
    }

    /// Before a frame of `len` bytes is queued: if it would not fit the
    /// outbox, the outbox is written to the socket first. Only a connection
    /// whose socket does not take the bytes (output already pending) keeps a
    /// full outbox, and the frame then makes it a slow consumer. Frames
    /// queued by one inbox batch are otherwise written when the batch ends.
    pub(super) fn make_room(self: &Rc<Self>, key: u32, conn: &mut Conn, len: usize) {
        let full = conn.session.outbox_frames() >= self.cfg.outbox_frames_max
            || conn.session.outbox_bytes().saturating_add(len) > self.cfg.outbox_bytes_max;
        if full {
            self.flush(key, conn);
        }
    }

    /// Marks a connection closing and wakes its reader (EOF after shutdown).
    pub(super) fn close_soon(&self, conn: &mut Conn, reason: CloseReason) {
        if conn.closing.is_none() {
            conn.closing = Some(reason);
        }
        if self.uring_close_later(conn, reason) {
            return; // its queued bytes go first (`uring.rs`)
        }
        // SAFETY: shutdown on a descriptor this connection owns; errors
        // (already shut) are harmless.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Tells epoll what this connection waits for: input unless paused,
    /// write readiness while bytes are pending (on the io_uring path: arms
    /// or cancels its `recv`, queues its pending bytes).
    pub(super) fn interest(&self, key: u32, conn: &mut Conn) {
        if self.uring.is_some() {
            return self.uring_interest(key, conn);
        }
        let mut events = 0u32;
        if !conn.paused {
            events |= libc::EPOLLIN as u32;
        }
        if !conn.pending_out().is_empty() {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: token(key, conn.generation),
        };
        // SAFETY: both descriptors are alive; `ev` is a valid event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                conn.fd.as_raw_fd(),
                &mut ev,
            )
        };
    }

    /// Adds a connection's socket to the epoll set.
    pub(super) fn register(&self, key: u32, conn: &mut Conn) -> io::Result<()> {
        if self.uring.is_some() {
            self.uring_interest(key, conn);
            return Ok(());
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token(key, conn.generation),
        };
        // SAFETY: both descriptors are alive; `ev` is a valid event.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                conn.fd.as_raw_fd(),
                &mut ev,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

pub(super) fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: `buf[off..]` is a live, initialized slice; MSG_NOSIGNAL
        // turns a closed peer into EPIPE instead of a signal.
        let n = unsafe {
            libc::send(
                fd,
                buf[off..].as_ptr().cast(),
                buf.len() - off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            off += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(off),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
    Ok(off)
}

pub(super) fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a live, writable slice of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Makes the coming close of `fd` a reset (RST) if the peer has not taken
/// what is queued to it: more than the FIN unacknowledged. A slow consumer
/// or a peer that went silent would otherwise keep the kernel's socket and
/// its send buffer (up to megabytes) alive for minutes, probing a window
/// that never opens, and a stalled client would never hear of the close.
pub(super) fn reset_if_stuck(fd: RawFd) {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int into a live local.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) } != 0 || queued <= 1 {
        return;
    }
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER with a live `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const abort).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// The peer has closed its side and everything it sent before was read:
/// the next read would be the end of the stream. Peeks one byte, consumes
/// nothing; false when bytes are waiting, when nothing is, or on an error.
pub(super) fn peer_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte peek into a live local.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return false;
    }
}

fn token(key: u32, generation: u32) -> u64 {
    (u64::from(key) << 32) | u64::from(generation)
}

pub(super) fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: no memory preconditions; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
