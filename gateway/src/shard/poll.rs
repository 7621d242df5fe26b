//! Serving connections in turns: the poll loop waits for the shard's epoll
//! set, serves the backlog and then the ready sockets (a bounded budget each),
//! and yields every turn (`Turn`) so the inbox and the timers run (DESIGN
//! invariant 7); `on_readable`/`on_writable` act on one ready socket.

use std::{
    os::fd::{AsRawFd, FromRawFd},
    rc::Rc,
    time::{Duration, Instant},
};

use monoio::net::TcpStream;

use super::{
    EPOLL_BATCH_MAX, Shard, TIMER_YIELD_MS, finish,
    ingest::{Read, after_ingest, read_and_ingest},
    sock::send_nonblocking,
};
use crate::metrics::CloseReason;

impl Shard {
    /// Queues a connection whose input holds frames beyond its budget for
    /// the next turn, and wakes the poll loop if it waits for readiness.
    pub(super) fn backlog_push(&self, key: u32, generation: u32) {
        self.backlog.borrow_mut().push((key, generation));
        if let Some(w) = self.poll_waker.take() {
            w.wake();
        }
    }
}

/// Serves the shard's connections, one turn at a time. A turn: the
/// connections left over from the last turn (`backlog`) get their next
/// budget, then up to [`EPOLL_BATCH_MAX`] ready sockets are served (one read
/// of the shared buffer and at most [`CONN_FRAMES_PER_TURN_MAX`] frames
/// each), then the loop yields so that the inbox (replies, pushes) and the
/// timers run, whatever one socket keeps sending (DESIGN invariant 7). With
/// nothing ready it waits (through monoio) for the epoll set to be readable
/// or for the backlog to fill.
///
/// [`CONN_FRAMES_PER_TURN_MAX`]: super::CONN_FRAMES_PER_TURN_MAX
pub(super) async fn poll_loop(shard: Rc<Shard>) {
    let epfd = shard.epoll.as_raw_fd();
    // SAFETY: the epoll fd lives as long as the shard; the wrapper never
    // closes it (ManuallyDrop) and is only used to wait for readability.
    let waiter = std::mem::ManuallyDrop::new(
        TcpStream::from_std(unsafe { std::net::TcpStream::from_raw_fd(epfd) })
            .expect("register epoll fd"),
    );
    let legacy = monoio::utils::is_legacy();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH_MAX];
    let mut due = Vec::new();
    let mut turn = Turn::new();
    loop {
        // Taken before the sockets are served: a connection that spends its
        // budget in this turn waits for the next one.
        std::mem::swap(&mut due, &mut *shard.backlog.borrow_mut());
        // SAFETY: `events` has room for EPOLL_BATCH_MAX entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EPOLL_BATCH_MAX as i32, 0) };
        if n <= 0 && due.is_empty() {
            // Idle: wait for a socket, or for another task to fill the
            // backlog (a connection resumed after back-pressure).
            let readable = waiter.readable(!legacy);
            let mut readable = std::pin::pin!(readable);
            let woke = std::future::poll_fn(|cx| {
                if !shard.backlog.borrow().is_empty() {
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
            turn.parked();
            continue;
        }
        serve_backlog(&shard, &mut due);
        for ev in &events[..n.max(0) as usize] {
            let (key, generation) = ((ev.u64 >> 32) as u32, ev.u64 as u32);
            let flags = ev.events;
            if flags & libc::EPOLLOUT as u32 != 0 {
                on_writable(&shard, key, generation);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                on_readable(&shard, key, generation);
            }
        }
        // The inbox every turn: replies and pushes never wait for a quiet
        // socket (nor for the runtime to wake the inbox loop).
        shard.drain_inbox();
        turn.end().await;
    }
}

/// Feeds each backlogged connection its next budget of buffered frames.
pub(super) fn serve_backlog(shard: &Rc<Shard>, due: &mut Vec<(u32, u32)>) {
    for (key, generation) in due.drain(..) {
        let partial = {
            let mut conns = shard.conns.borrow_mut();
            let Some(c) = conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation && c.backlogged)
            else {
                continue; // closed or moved meanwhile
            };
            c.backlogged = false;
            c.take_partial()
        };
        if !partial.is_empty() {
            let outcome = shard.ingest(key, &partial);
            after_ingest(shard, key, generation, outcome);
        }
        if shard.uring.is_some() {
            // Its buffered input is used up: its receive is armed again
            // (the epoll path's level-triggered interest needs nothing).
            let mut conns = shard.conns.borrow_mut();
            if let Some(c) = conns
                .get_mut(key as usize)
                .filter(|c| c.generation == generation)
            {
                shard.interest(key, c);
            }
        }
    }
}

/// Yields at the end of a loop turn. Every turn lets the tasks that are
/// ready run (the runtime reaps I/O completions first, so the inbox's
/// doorbell is seen); at least every [`TIMER_YIELD_MS`] the turn instead
/// sleeps for zero time, which makes the runtime park once and fire due
/// timers (monoio runs timers only when it parks, and a task that always
/// wakes itself would keep it from parking).
pub(super) struct Turn {
    parked_at: Instant,
}

impl Turn {
    pub(super) fn new() -> Self {
        Self {
            parked_at: Instant::now(),
        }
    }

    /// The loop waited (the runtime parked meanwhile).
    pub(super) fn parked(&mut self) {
        self.parked_at = Instant::now();
    }

    pub(super) async fn end(&mut self) {
        if self.parked_at.elapsed() >= Duration::from_millis(TIMER_YIELD_MS) {
            monoio::time::sleep(Duration::ZERO).await;
            self.parked_at = Instant::now();
        } else {
            yield_now().await;
        }
    }
}

/// Returns `Pending` once, after waking its task: the task goes to the back
/// of the runtime's queue, behind every task that is ready.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

fn on_readable(shard: &Rc<Shard>, key: u32, generation: u32) {
    let fd = {
        let conns = shard.conns.borrow();
        match conns.get(key as usize) {
            // A backlogged connection is fed from its buffered input first;
            // its socket is read once that is used up.
            Some(c) if c.generation == generation && !c.backlogged => c.fd.as_raw_fd(),
            _ => return,
        }
    };
    match read_and_ingest(shard, key, fd) {
        Read::Eof(reason) => finish(shard, key, generation, reason),
        Read::WouldBlock => {}
        Read::Ingested(outcome) => after_ingest(shard, key, generation, outcome),
    }
}

fn on_writable(shard: &Rc<Shard>, key: u32, generation: u32) {
    let mut conns = shard.conns.borrow_mut();
    let Some(c) = conns
        .get_mut(key as usize)
        .filter(|c| c.generation == generation)
    else {
        return;
    };
    match send_nonblocking(c.fd.as_raw_fd(), c.pending_out()) {
        Ok(n) if n == c.pending_out().len() => {
            c.spill_mut().pending_out = Vec::new(); // give the memory back
            c.tidy();
            shard.interest(key, c);
            shard.flush(key, c);
            if c.paused && c.pending_out().is_empty() {
                if let Some(reason) = c.closing {
                    // Its last bytes are written (`close_after_output`).
                    shard.close_soon(c, reason);
                }
            }
        }
        Ok(n) => {
            c.spill_mut().pending_out.drain(..n);
        }
        Err(_) => shard.close_soon(c, CloseReason::Error),
    }
}
