//! The io_uring data path: the shard's own ring (besides monoio's) moves
//! the bytes of its connections. Chosen at start by [`probe`] (docs/gateway.md,
//! "Data path"); the epoll path (`poll.rs`, `sock.rs`) is the fallback.
//!
//! - **Receives** are multishot `recv`s that pick their buffer from a
//!   provided buffer ring shared by the shard ([`BufRing`]): an idle
//!   connection holds no buffer, only its armed request in the kernel. A
//!   completion's bytes go to the same ingest code the epoll path uses
//!   (`ingest::ingest_read`), then the buffer goes back to the ring. A
//!   connection that is not authenticated yet gets a single-shot `recv`
//!   instead, so that nothing of it is in flight on this ring when it moves
//!   to its owner shard after auth.
//! - **Buffer ring exhaustion** (`-ENOBUFS`: the multishot ends) is
//!   back-pressure: the bytes stay in the socket and the `recv` is armed again
//!   when the turn's submissions go in (by then the turn's buffers are back).
//! - **Sends** are submissions: bytes wait in the connection's
//!   `pending_out` until the turn ends, then one `send` per connection goes
//!   in, all with one `io_uring_enter`. A connection has at most one send in
//!   flight (its bytes held here, in [`Uring::sends`], until the completion,
//!   whatever happens to the connection meanwhile); a partial send is
//!   submitted again for the rest before anything queued after it.
//! - **Close** shuts the socket down (an in-flight send fails, the `recv`
//!   ends) and cancels the `recv`; completions name their connection by slab
//!   key and generation, so one for a closed connection never touches a new
//!   one in the same slot or on the same descriptor number.
//! - Connections not yet authenticated write directly (`send(2)`), as on the
//!   epoll path: nothing of theirs is in flight when they move shards.

use std::{
    cell::{Cell, RefCell},
    io,
    os::fd::{AsRawFd, FromRawFd, RawFd},
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use monoio::net::TcpStream;
use slab::Slab;

use super::{
    Conn, Shard, finish,
    ingest::{Read, after_ingest, ingest_read},
    poll::{Turn, serve_backlog},
};
use crate::metrics::CloseReason;

/// Submission queue entries of a shard's ring (the completion queue has
/// twice as many; the kernel keeps overflowing completions, `FEAT_NODROP`).
const RING_ENTRIES: u32 = 4096;
/// Completions handled per loop turn; the rest wait for the next turn (the
/// inbox and timers run in between, DESIGN invariant 7).
const REAP_BATCH_MAX: usize = 1024;
/// The buffer group id of the shard's provided buffers.
const BGID: u16 = 0;

/// `Conn::io` bits: what this connection has in flight on the ring.
pub(super) const RECV_ARMED: u8 = 1;
/// The armed `recv` is multishot.
const RECV_MULTI: u8 = 2;
/// A cancel of the armed `recv` was submitted.
const RECV_CANCELING: u8 = 4;
/// A send is in flight.
const SEND_IN_FLIGHT: u8 = 8;

/// `user_data` kinds (top two bits).
const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1;
const KIND_CANCEL: u64 = 2;
/// Slab keys fit 30 bits in a `recv`'s `user_data` (a shard holds at most
/// its `connections_max`, far below 2^30, and no more than the fd limit).
const KEY_MASK: u64 = (1 << 30) - 1;

fn recv_token(key: u32, generation: u32) -> u64 {
    (KIND_RECV << 62) | ((u64::from(key) & KEY_MASK) << 32) | u64::from(generation)
}

/// Why the io_uring data path is not used.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `io_uring_setup` failed (ENOSYS: no io_uring; EPERM: forbidden, e.g.
    /// by a seccomp profile or `kernel.io_uring_disabled`).
    #[error("io_uring_setup failed: {0}")]
    Setup(io::Error),
    /// The kernel has no provided buffer rings (before 5.19).
    #[error("no provided buffer rings: {0}")]
    BufRing(io::Error),
    /// A multishot `recv` did not work (before 6.0).
    #[error("no multishot recv: {0}")]
    Multishot(String),
}

/// Checks that this kernel (and its seccomp profile) gives the data path what
/// it needs: a ring, a provided buffer ring, and a multishot `recv` that
/// receives a byte into it and stays armed (tried on a socket pair). Runs on
/// a thread of its own: the kernel signals a ring's completions to the
/// thread that submitted them, and a late one (the probe's receive ending)
/// would interrupt a blocking call of the caller with EINTR.
pub fn probe() -> Result<(), Unavailable> {
    std::thread::Builder::new()
        .name("tern-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| Unavailable::Multishot(e.to_string()))?
        .join()
        .unwrap_or_else(|_| Err(Unavailable::Multishot("the probe panicked".into())))
}

fn probe_here() -> Result<(), Unavailable> {
    let mut ring = IoUring::new(8).map_err(Unavailable::Setup)?;
    let bufs = BufRing::new(&ring, 2, 64).map_err(Unavailable::BufRing)?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } < 0 {
        return Err(Unavailable::Multishot(
            io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: fresh descriptors nothing else owns (closed on drop).
    let (a, b) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let sqe = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), BGID)
        .build()
        .user_data(1);
    // SAFETY: the entry names no memory but the registered buffer ring.
    let _ = unsafe { ring.submission().push(&sqe) };
    ring.submit()
        .map_err(|e| Unavailable::Multishot(e.to_string()))?;
    // SAFETY: a one-byte buffer that lives for the call.
    unsafe { libc::send(b.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
    ring.submit_and_wait(1)
        .map_err(|e| Unavailable::Multishot(e.to_string()))?;
    let first = ring.completion().next().map(|c| (c.result(), c.flags()));
    let ok = first.is_some_and(|(res, flags)| res == 1 && cqueue::more(flags));
    // The peer's end closes: the receive ends (with no buffer) before the
    // ring and then the buffers go.
    drop(b);
    if ok {
        let _ = ring.submit_and_wait(1);
    }
    drop(ring);
    drop(bufs);
    drop(a);
    if ok {
        Ok(())
    } else {
        Err(Unavailable::Multishot(format!(
            "probe completion {first:?}"
        )))
    }
}

/// The shard's provided buffers: `count` buffers of `size` bytes in one
/// allocation, and the ring of their descriptors the kernel takes them from.
pub(super) struct BufRing {
    /// The descriptor ring, page-aligned (`count` entries of 16 bytes).
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    /// The buffers, back to back (allocated zeroed: pages become resident
    /// only as the kernel writes into them).
    data: *mut u8,
    data_layout: std::alloc::Layout,
    count: u16,
    size: u32,
    /// Our copy of the ring's tail (the kernel reads it from the ring).
    tail: Cell<u16>,
}

impl BufRing {
    /// Registers `count` (a power of two) buffers of `size` bytes with
    /// `ring` as buffer group [`BGID`].
    fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<Self> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        if !count.is_power_of_two() || size == 0 {
            return Err(invalid());
        }
        let entries_layout = std::alloc::Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(|_| invalid())?;
        let data_layout =
            std::alloc::Layout::from_size_align(usize::from(count) * size as usize, 4096)
                .map_err(|_| invalid())?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, size ≥ 1).
        let entries: *mut types::BufRingEntry =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast();
        // SAFETY: as above.
        let data = unsafe { std::alloc::alloc_zeroed(data_layout) };
        if entries.is_null() || data.is_null() {
            std::alloc::handle_alloc_error(data_layout);
        }
        let bufs = Self {
            entries,
            entries_layout,
            data,
            data_layout,
            count,
            size,
            tail: Cell::new(0),
        };
        // SAFETY: the entry ring lives until `self` drops, which happens
        // after the ring unregisters it (`Uring` drops its ring first) or
        // with the ring itself (probe).
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, count, BGID)?
        };
        for bid in 0..count {
            bufs.give(bid);
        }
        Ok(bufs)
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn give(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.count - 1));
        // SAFETY: `slot < count`: inside the entry ring; the kernel reads
        // only entries before the tail we publish below.
        let entry = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: `bid < count`: inside the data allocation.
        entry.set_addr(unsafe { self.data.add(usize::from(bid) * self.size as usize) } as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field of the first entry, shared with the kernel;
        // written with release ordering after the entry.
        unsafe {
            let at = types::BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(at).store(tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and
    /// does not touch until it is given back.
    ///
    /// # Safety
    /// `bid` came from a completion and has not been given back yet.
    #[allow(
        clippy::mut_from_ref,
        reason = "the buffers are raw memory shared with the kernel, not data of `self`; the contract makes the caller the only user of `bid` until it is given back"
    )]
    unsafe fn slice(&self, bid: u16, len: usize) -> &mut [u8] {
        let len = len.min(self.size as usize);
        // SAFETY: per the contract, the buffer is ours until `give`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data
                    .add(usize::from(bid % self.count) * self.size as usize),
                len,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.data, self.data_layout);
        }
    }
}

/// A send in flight: its bytes, held until its completion.
struct InFlight {
    key: u32,
    generation: u32,
    buf: Vec<u8>,
    /// Bytes of `buf` the kernel has taken.
    off: usize,
}

/// One shard's ring and what is in flight on it.
pub(super) struct Uring {
    // Dropped before `bufs`: the kernel stops using the buffers first.
    ring: RefCell<IoUring>,
    bufs: BufRing,
    /// Signalled by the kernel for each completion posted to `ring`; the
    /// poll loop waits for it through monoio, as the inbox waits for its
    /// doorbell.
    eventfd: std::os::fd::OwnedFd,
    sends: RefCell<Slab<InFlight>>,
    /// Connections with bytes queued to send (`pending_out`), submitted when
    /// the turn ends.
    sendq: RefCell<Vec<(u32, u32)>>,
    /// Sockets to shut after this turn's submissions (deferred closes).
    to_close: RefCell<Vec<std::os::fd::OwnedFd>>,
}

impl Uring {
    /// A ring with `buffers` provided buffers of `buffer_bytes` each.
    pub(super) fn new(buffers: u16, buffer_bytes: u32) -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let bufs = BufRing::new(&ring, buffers, buffer_bytes)?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let eventfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd)?;
        Ok(Self {
            ring: RefCell::new(ring),
            bufs,
            eventfd,
            sends: RefCell::new(Slab::new()),
            sendq: RefCell::new(Vec::new()),
            to_close: RefCell::new(Vec::new()),
        })
    }

    /// Clears the eventfd after a wake-up (non-blocking; completions
    /// posted after this signal it again).
    fn drain_eventfd(&self) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
        unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&raw mut n).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Queues one entry (submitted at the end of the turn); a full queue is
    /// submitted first.
    fn push(&self, sqe: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every entry pushed here names memory that outlives
            // its operation: the provided buffers (owned by `self`), a send's
            // bytes (held in `sends` until its completion), or none.
            if unsafe { ring.submission().push(sqe) }.is_ok() {
                return;
            }
            // Full: hand the queue to the kernel now.
            if let Err(e) = ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::warn!(error = %e, "io_uring submit failed");
                }
            }
        }
    }

    /// Whether anything waits to be submitted.
    fn has_work(&self) -> bool {
        !self.sendq.borrow().is_empty()
            || !self.to_close.borrow().is_empty()
            || !self.ring.borrow_mut().submission().is_empty()
    }
}

impl Shard {
    fn uring(&self) -> &Uring {
        self.uring.as_ref().expect("the io_uring data path")
    }

    /// Wakes the poll loop when it waits, so that entries queued by
    /// another task are submitted.
    fn uring_wake(&self) {
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }

    /// Brings the connection's `recv` in line with what it wants: armed
    /// while it is read (not paused behind the backend, not backlogged, or
    /// closing: then it is read to its end), cancelled otherwise (a
    /// multishot one; a single-shot one ends by itself).
    pub(super) fn uring_interest(&self, key: u32, conn: &mut Conn) {
        let want = conn.closing.is_some() || (!conn.paused && !conn.backlogged);
        let u = self.uring();
        if want && conn.io & RECV_ARMED == 0 {
            let fd = types::Fd(conn.fd.as_raw_fd());
            let token = recv_token(key, conn.generation);
            // Multishot once authenticated here (it never moves again);
            // single-shot before, so nothing is in flight at a handoff.
            let sqe = if conn.ident.is_some() {
                conn.io |= RECV_MULTI;
                opcode::RecvMulti::new(fd, BGID).build()
            } else {
                opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                    .buf_group(BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            };
            conn.io |= RECV_ARMED;
            u.push(&sqe.user_data(token));
            self.uring_wake();
        } else if !want && conn.io & (RECV_MULTI | RECV_CANCELING) == RECV_MULTI {
            conn.io |= RECV_CANCELING;
            let token = recv_token(key, conn.generation);
            u.push(
                &opcode::AsyncCancel::new(token)
                    .build()
                    .user_data(KIND_CANCEL << 62),
            );
            self.uring_wake();
        }
        if !conn.pending_out().is_empty() && conn.io & SEND_IN_FLIGHT == 0 {
            u.sendq.borrow_mut().push((key, conn.generation));
            self.uring_wake();
        }
    }

    /// Queues wire bytes of an authenticated connection: they go out with
    /// the turn's submissions, after everything queued before them. Queued
    /// bytes beyond `outbox_bytes_max` make it a slow consumer.
    pub(super) fn uring_send(&self, key: u32, conn: &mut Conn, bytes: &[u8]) {
        let queued = conn.pending_out().len();
        if queued.saturating_add(bytes.len()) > self.cfg.outbox_bytes_max {
            self.close_soon(conn, CloseReason::SlowConsumer);
            return;
        }
        // A deliberate allocation: bytes wait here until the turn's
        // submissions (freed, or handed to the send, then).
        conn.spill_mut().pending_out.extend_from_slice(bytes);
        if queued == 0 && conn.io & SEND_IN_FLIGHT == 0 {
            self.uring().sendq.borrow_mut().push((key, conn.generation));
            self.uring_wake();
        }
    }

    /// A connection leaves (closed, or moving to another shard): entries
    /// queued but not submitted yet that name its descriptor are submitted
    /// first — a descriptor number is resolved when its entry is submitted,
    /// and once closed the number may name another socket of the process.
    /// Then, if anything of it is in flight, its socket is shut down (an
    /// in-flight send fails, a `recv` ends) and its `recv` cancelled, before
    /// its descriptor closes; late completions find another generation and
    /// are dropped.
    pub(super) fn uring_forget(&self, key: u32, conn: &Conn) {
        self.uring_submit_queued();
        if conn.io & (RECV_ARMED | SEND_IN_FLIGHT) == 0 {
            return;
        }
        // SAFETY: shutdown on a descriptor this connection still owns.
        unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if conn.io & RECV_ARMED != 0 {
            let token = recv_token(key, conn.generation);
            self.uring().push(
                &opcode::AsyncCancel::new(token)
                    .build()
                    .user_data(KIND_CANCEL << 62),
            );
            self.uring_wake();
        }
    }

    /// Submits what is queued in the submission queue now (one
    /// `io_uring_enter`, only when something is queued).
    fn uring_submit_queued(&self) {
        let mut ring = self.uring().ring.borrow_mut();
        if ring.submission().is_empty() {
            return;
        }
        if let Err(e) = ring.submit() {
            if e.raw_os_error() != Some(libc::EBUSY) {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Whether the connection still has anything of this ring's in flight
    /// or queued (it then cannot move to another shard).
    pub(super) fn uring_busy(conn: &Conn) -> bool {
        conn.io & (SEND_IN_FLIGHT | RECV_ARMED) != 0 || !conn.pending_out().is_empty()
    }

    /// Whether this connection's writes are ring submissions: on the
    /// io_uring path, once authenticated here (it never moves again).
    pub(super) fn uring_path(&self, conn: &Conn) -> bool {
        self.uring.is_some() && conn.ident.is_some()
    }

    /// Whether a send of this connection is in flight.
    pub(super) fn uring_sending(&self, conn: &Conn) -> bool {
        conn.io & SEND_IN_FLIGHT != 0
    }

    /// On the io_uring path, a close of a connection with bytes queued
    /// waits for the end of the turn: its socket is shut right after the
    /// turn's submissions (which hand its bytes to the kernel, so a kick's
    /// or a timeout's last frame is said, as the epoll path writes it
    /// before the shutdown). A slow consumer or an error closes at once.
    /// True if the close was deferred.
    pub(super) fn uring_close_later(&self, conn: &Conn, reason: CloseReason) -> bool {
        let Some(u) = self.uring.as_ref() else {
            return false;
        };
        if conn.pending_out().is_empty()
            || matches!(reason, CloseReason::SlowConsumer | CloseReason::Error)
        {
            return false;
        }
        // A second descriptor of the socket (one syscall, only for such a
        // close), so that the shutdown cannot hit another socket that got
        // this descriptor's number after the connection finished.
        let Ok(dup) = conn.fd.try_clone() else {
            return false;
        };
        u.to_close.borrow_mut().push(dup);
        self.uring_wake();
        true
    }

    /// Shuts the sockets of the turn's deferred closes, after its
    /// submissions; each `recv` then sees the end and its connection is
    /// finished as any other.
    fn uring_close_due(&self) {
        let list = std::mem::take(&mut *self.uring().to_close.borrow_mut());
        for fd in list {
            // SAFETY: shutdown on a descriptor we own (closed on drop).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Writes the queued bytes of a connection about to close at once
    /// (one non-blocking `send`, as the epoll path would have), unless a
    /// send is in flight (they would overtake it).
    pub(super) fn uring_write_now(&self, conn: &mut Conn) {
        if conn.io & SEND_IN_FLIGHT != 0 || conn.pending_out().is_empty() {
            return;
        }
        let _ = super::sock::send_nonblocking(conn.fd.as_raw_fd(), conn.pending_out());
        conn.spill_mut().pending_out = Vec::new();
        conn.tidy();
    }

    /// Submits the turn's sends (one per queued connection without a send
    /// in flight) and everything else queued: one `io_uring_enter`.
    fn uring_submit(&self) {
        let u = self.uring();
        let queued = std::mem::take(&mut *u.sendq.borrow_mut());
        {
            let mut conns = self.conns.borrow_mut();
            for (key, generation) in queued {
                let Some(c) = conns
                    .get_mut(key as usize)
                    .filter(|c| c.generation == generation)
                else {
                    continue;
                };
                if c.io & SEND_IN_FLIGHT != 0 || c.pending_out().is_empty() {
                    continue;
                }
                let buf = std::mem::take(&mut c.spill_mut().pending_out);
                c.tidy();
                c.io |= SEND_IN_FLIGHT;
                let fd = c.fd.as_raw_fd();
                let idx = u.sends.borrow_mut().insert(InFlight {
                    key,
                    generation,
                    buf,
                    off: 0,
                });
                self.push_send(fd, idx);
            }
        }
        let ring = u.ring.borrow();
        let r = ring.submit();
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::EBUSY) {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Queues the send of what is left of in-flight buffer `idx`.
    fn push_send(&self, fd: RawFd, idx: usize) {
        let u = self.uring();
        let sqe = {
            let sends = u.sends.borrow();
            let s = &sends[idx];
            let rest = &s.buf[s.off..];
            opcode::Send::new(
                types::Fd(fd),
                rest.as_ptr(),
                rest.len().min(u32::MAX as usize) as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data((KIND_SEND << 62) | idx as u64)
        };
        u.push(&sqe);
    }

    fn on_completion(self: &Rc<Self>, user_data: u64, res: i32, flags: u32) {
        self.metrics
            .uring_completions
            .fetch_add(1, Ordering::Relaxed);
        match user_data >> 62 {
            KIND_RECV => {
                let key = ((user_data >> 32) & KEY_MASK) as u32;
                self.on_recv(key, user_data as u32, res, flags);
            }
            KIND_SEND => self.on_send((user_data & ((1 << 62) - 1)) as usize, res),
            _ => {} // a cancel's own completion
        }
    }

    fn on_recv(self: &Rc<Self>, key: u32, generation: u32, res: i32, flags: u32) {
        let u = self.uring();
        let bid = cqueue::buffer_select(flags);
        // Given back however this ends.
        let _give = scopeguard(|| {
            if let Some(bid) = bid {
                u.bufs.give(bid);
            }
        });
        let (closing, taken_aside) = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation)
            else {
                return; // closed or moved: nothing of it is touched
            };
            if !cqueue::more(flags) {
                c.io &= !(RECV_ARMED | RECV_MULTI | RECV_CANCELING);
            }
            // Not to be fed now: kept behind its buffered input, in order.
            let aside = c.closing.is_none() && (c.paused || c.backlogged);
            if res > 0 && aside {
                if let Some(bid) = bid {
                    // SAFETY: `bid` came with this completion; given back
                    // by `_give` after this copy.
                    let data = unsafe { u.bufs.slice(bid, res as usize) };
                    self.metrics
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    // A deliberate allocation: input of a connection that
                    // is not read this turn, bounded by the buffers the
                    // cancelled recv had taken.
                    c.spill_mut().partial.extend_from_slice(data);
                }
            }
            (c.closing, aside)
        };
        let read = match res {
            0 => Read::Eof(closing.unwrap_or(CloseReason::Peer)),
            n if n > 0 && taken_aside => Read::WouldBlock,
            n if n > 0 => match bid {
                Some(bid) => {
                    // SAFETY: as above; the slice is used only in this call.
                    let data = unsafe { u.bufs.slice(bid, n as usize) };
                    self.metrics
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    ingest_read(self, key, data)
                }
                None => Read::Eof(CloseReason::Error),
            },
            e if e == -libc::ENOBUFS => {
                // Back-pressure: the bytes stay in the socket; armed again
                // below, submitted when the turn's buffers are back.
                self.metrics.uring_enobufs.fetch_add(1, Ordering::Relaxed);
                Read::WouldBlock
            }
            e if e == -libc::ECANCELED || e == -libc::EINTR || e == -libc::EAGAIN => {
                Read::WouldBlock
            }
            _ => Read::Eof(closing.unwrap_or(CloseReason::Error)),
        };
        match read {
            Read::Eof(reason) => return finish(self, key, generation, reason),
            Read::WouldBlock => {}
            Read::Ingested(outcome) => after_ingest(self, key, generation, outcome),
        }
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
        {
            self.uring_interest(key, c);
        }
    }

    fn on_send(self: &Rc<Self>, idx: usize, res: i32) {
        let u = self.uring();
        let (key, generation, done) = {
            let mut sends = u.sends.borrow_mut();
            let Some(s) = sends.get_mut(idx) else {
                return;
            };
            if res > 0 {
                s.off += res as usize;
                self.metrics
                    .bytes_out
                    .fetch_add(res as u64, Ordering::Relaxed);
            }
            (s.key, s.generation, s.off >= s.buf.len())
        };
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
        else {
            // Its connection is gone: the bytes are dropped with the entry.
            u.sends.borrow_mut().remove(idx);
            return;
        };
        let fd = c.fd.as_raw_fd();
        if res == -libc::EAGAIN || res == -libc::EINTR || (res > 0 && !done) {
            // The rest of this buffer before anything queued after it.
            return self.push_send(fd, idx);
        }
        let s = u.sends.borrow_mut().remove(idx);
        c.io &= !SEND_IN_FLIGHT;
        if res <= 0 {
            return self.close_soon(c, CloseReason::Error);
        }
        if !c.pending_out().is_empty() {
            // Queued meanwhile: it goes next, in the buffer just sent
            // (kept allocated while the connection is busy).
            let mut buf = s.buf;
            buf.clear();
            std::mem::swap(&mut buf, &mut c.spill_mut().pending_out);
            let idx = u.sends.borrow_mut().insert(InFlight {
                key,
                generation,
                buf,
                off: 0,
            });
            c.io |= SEND_IN_FLIGHT;
            return self.push_send(fd, idx);
        }
        c.tidy();
        // As on write readiness on the epoll path: frames that waited in
        // the outbox, and a close that waited for the last bytes.
        self.flush(key, c);
        if c.paused && c.pending_out().is_empty() && c.io & SEND_IN_FLIGHT == 0 {
            if let Some(reason) = c.closing {
                self.close_soon(c, reason);
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The io_uring poll loop: a turn serves the backlog, then up to
/// [`REAP_BATCH_MAX`] completions, then the inbox, then submits everything
/// the turn queued with one `io_uring_enter`, and yields (DESIGN invariant
/// 7). With nothing to do it waits (through monoio) for the ring's eventfd
/// to be readable (a completion was posted), or to be woken by a task that
/// queued entries or filled the backlog.
pub(super) async fn uring_loop(shard: Rc<Shard>) {
    let fd = shard.uring().eventfd.as_raw_fd();
    // SAFETY: the eventfd lives as long as the shard; the wrapper never
    // closes it (ManuallyDrop) and is only used to wait for readability.
    let waiter = std::mem::ManuallyDrop::new(
        TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(fd) })
            .expect("register the ring's eventfd"),
    );
    let legacy = monoio::utils::is_legacy();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(REAP_BATCH_MAX);
    let mut due = Vec::new();
    let mut turn = Turn::new();
    loop {
        std::mem::swap(&mut due, &mut *shard.backlog.borrow_mut());
        {
            let mut ring = shard.uring().ring.borrow_mut();
            cqes.extend(
                ring.completion()
                    .take(REAP_BATCH_MAX)
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
        }
        if cqes.is_empty() && due.is_empty() {
            if shard.uring().has_work() {
                shard.drain_inbox();
                shard.uring_submit();
                shard.uring_close_due();
                turn.end().await;
                continue;
            }
            let readable = waiter.readable(!legacy);
            let mut readable = std::pin::pin!(readable);
            let woke = std::future::poll_fn(|cx| {
                if !shard.backlog.borrow().is_empty() || shard.uring().has_work() {
                    return std::task::Poll::Ready(Ok(()));
                }
                shard.poll_waker.set(Some(cx.waker().clone()));
                readable.as_mut().poll(cx)
            })
            .await;
            shard.poll_waker.set(None);
            if woke.is_err() {
                return;
            }
            shard.uring().drain_eventfd();
            turn.parked();
            continue;
        }
        serve_backlog(&shard, &mut due);
        for (user_data, res, flags) in cqes.drain(..) {
            shard.on_completion(user_data, res, flags);
        }
        shard.drain_inbox();
        shard.uring_submit();
        shard.uring_close_due();
        turn.end().await;
    }
}
