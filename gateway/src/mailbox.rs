//! Bounded lock-free channels between threads: one SPSC ring (rtrb) per
//! (producer thread, consumer thread) pair, built once at start, and one
//! wake-up per consumer (an eventfd for shards, `Thread::unpark` for backend
//! workers).
//!
//! A producer pushes and wakes the consumer only if it sleeps, so a busy
//! consumer costs no syscall per item. A full ring hands the item back
//! (`Err(item)`), and the producer decides: a shard stops reading from the
//! connection that asked (back-pressure); the backend waits for the shard.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// How a consumer is woken.
#[derive(Debug)]
pub enum Wake {
    /// A shard: its inbox task waits for this eventfd to become readable.
    EventFd(OwnedFd),
    /// A backend worker thread parked with `std::thread::park`.
    Thread(std::thread::Thread),
}

/// The consumer side's doorbell, shared by all its producers.
#[derive(Debug)]
pub struct Doorbell {
    /// True while the consumer sleeps (or is about to).
    sleeping: AtomicBool,
    wake: Wake,
}

impl Doorbell {
    /// A doorbell backed by a new non-blocking eventfd (for a shard).
    pub fn eventfd() -> std::io::Result<Arc<Self>> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Self {
            sleeping: AtomicBool::new(false),
            wake: Wake::EventFd(fd),
        }))
    }

    /// A doorbell that unparks `thread` (for a backend worker).
    pub fn thread(thread: std::thread::Thread) -> Arc<Self> {
        Arc::new(Self {
            sleeping: AtomicBool::new(false),
            wake: Wake::Thread(thread),
        })
    }

    /// The eventfd, for the shard that waits on it.
    pub fn eventfd_raw(&self) -> Option<i32> {
        match &self.wake {
            Wake::EventFd(fd) => Some(fd.as_raw_fd()),
            Wake::Thread(_) => None,
        }
    }

    /// Wakes the consumer if it sleeps.
    pub fn ring(&self) {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            match &self.wake {
                Wake::EventFd(fd) => {
                    let one: u64 = 1;
                    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
                    // EAGAIN (counter saturated) still leaves it readable.
                    let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
                }
                Wake::Thread(t) => t.unpark(),
            }
        }
    }

    /// The consumer is about to sleep. It must look at its rings once more
    /// after this and sleep only if they are still empty.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// The consumer woke (or decided not to sleep).
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Clears a readable eventfd after waking.
    pub fn drain_eventfd(&self) {
        if let Wake::EventFd(fd) = &self.wake {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
            let _ = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
        }
    }
}

/// The producing end of one ring.
#[derive(Debug)]
pub struct Sender<T> {
    ring: rtrb::Producer<T>,
    bell: Arc<Doorbell>,
}

/// The consuming end of one ring.
#[derive(Debug)]
pub struct Receiver<T> {
    ring: rtrb::Consumer<T>,
}

/// A bounded ring of `entries_max` items to the consumer behind `bell`.
pub fn channel<T>(entries_max: usize, bell: Arc<Doorbell>) -> (Sender<T>, Receiver<T>) {
    let (ring, rx) = rtrb::RingBuffer::new(entries_max);
    (Sender { ring, bell }, Receiver { ring: rx })
}

impl<T> Sender<T> {
    /// Pushes `item` and wakes the consumer; a full ring hands it back.
    pub fn send(&mut self, item: T) -> Result<(), T> {
        match self.ring.push(item) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(rtrb::PushError::Full(item)) => Err(item),
        }
    }

    /// Pushes without waking (call [`Sender::flush`] after a batch).
    pub fn send_quiet(&mut self, item: T) -> Result<(), T> {
        self.ring
            .push(item)
            .map_err(|rtrb::PushError::Full(item)| item)
    }

    /// Wakes the consumer after quiet sends.
    pub fn flush(&self) {
        self.bell.ring();
    }

    /// Free slots now.
    pub fn free(&self) -> usize {
        self.ring.slots()
    }
}

impl<T> Receiver<T> {
    /// Takes one item.
    pub fn recv(&mut self) -> Option<T> {
        self.ring.pop().ok()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.ring.slots()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full ring hands the item back; a sleeping thread consumer is woken
    /// and sees every item in order.
    #[test]
    fn bounded_and_wakes_a_parked_consumer() {
        let (tx_ready, rx_ready) = std::sync::mpsc::channel();
        let consumer = std::thread::spawn(move || {
            let bell = Doorbell::thread(std::thread::current());
            let (tx, mut rx) = channel::<u32>(4, bell.clone());
            tx_ready.send((tx, bell.clone())).unwrap();
            let mut got = Vec::new();
            loop {
                while let Some(v) = rx.recv() {
                    got.push(v);
                }
                if got.len() == 100 {
                    break;
                }
                bell.prepare_sleep();
                if rx.is_empty() {
                    // Without a wake-up this would hang the test.
                    std::thread::park();
                }
                bell.awake();
            }
            got
        });
        let (mut tx, _bell) = rx_ready.recv().unwrap();
        let mut next = 0;
        while next < 100 {
            match tx.send(next) {
                Ok(()) => next += 1,
                Err(v) => {
                    assert_eq!(v, next, "a full ring hands the item back");
                    std::thread::yield_now();
                }
            }
        }
        assert_eq!(consumer.join().unwrap(), (0..100).collect::<Vec<_>>());
    }
}
