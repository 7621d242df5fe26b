//! A logged-in session: one [`Connection`] and this device's [`Cursors`].
//!
//! It turns the protocol's client algorithm (protocol.md 7.4) into calls:
//! [`Session::send`] (idempotent retries with the same `client_msg_id`),
//! [`Session::sync_all`] (page until `more` is false, ack what was applied),
//! and [`Session::next_pushed`], which applies a `deliver` in order, acks it
//! cumulatively, and syncs when it finds a gap or when pushes were dropped.
//!
//! Both front ends drive it: the scripted mode from its one thread, the
//! interactive mode from the input thread (requests) and an event thread
//! (pushes) at once, which is why every method takes `&self`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use tern_protocol::pb::{self, frame::Body};

use super::{
    ClientError,
    conn::{Closed, ConnectOptions, Connection, Event},
    cursors::{Applied, Cursors},
};

/// Pages one [`Session::sync_all`] fetches at most before it reports that
/// it stopped short (a page holds up to `Limits.page_entries_max` entries).
pub const SYNC_PAGES_MAX: usize = 1000;
/// Attempts of one `send` (the first and its retries with the same
/// `client_msg_id`) on retryable failures.
pub const SEND_ATTEMPTS_MAX: u32 = 3;
/// Wait before a send is retried when the server gave no hint, in ms.
pub const SEND_RETRY_WAIT_MS_DEFAULT: u64 = 200;
/// Longest wait before a send is retried, whatever the server hints, in ms.
pub const SEND_RETRY_WAIT_MS_MAX: u64 = 5_000;

/// Takes the expected variant out of a request's answer, or says what came
/// instead.
macro_rules! expect_body {
    ($answer:expr, $variant:ident) => {
        match $answer {
            Ok(tern_protocol::pb::frame::Body::$variant(x)) => Ok(x),
            Ok(other) => Err($crate::cli::ClientError::Protocol(format!(
                "expected {}, got {}",
                stringify!($variant),
                $crate::cli::conn::body_name(Some(&other))
            ))),
            Err(e) => Err(e),
        }
    };
}
pub(crate) use expect_body;

/// What a [`Session::sync_all`] brought.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Entries new to this device, per conversation in increasing seq.
    pub entries: Vec<pb::Entry>,
    /// The newest seq of every conversation of the user (last page's).
    pub heads: Vec<pb::Cursor>,
    /// False when [`SYNC_PAGES_MAX`] pages were not enough.
    pub complete: bool,
}

/// A push, after the session did its part (apply, ack, fill gaps).
#[derive(Debug)]
pub enum Pushed {
    /// Entries new to this device, in order; possibly empty (duplicates).
    Entries(Vec<pb::Entry>),
    /// Someone types or stopped typing.
    Typing(pb::TypingEvent),
    /// A call you take part in changed.
    Call(pb::CallEvent),
    /// SDP or ICE relayed to you in a call.
    CallSignal(pb::CallSignalEvent),
    /// A friend's or group peer's presence changed.
    Presence(pb::Presence),
    /// A change to this user outside a conversation log.
    Event(pb::ServerEvent),
    /// A room this connection joined was deleted (it is no longer joined).
    RoomClosed(String),
    /// A fire-and-forget frame failed, or the connection is being closed.
    Error(pb::Error),
    /// Any other frame (a newer server's push this client does not know).
    Other(pb::Frame),
    /// The connection ended.
    Closed(Closed),
}

/// A logged-in connection with its cursors.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    opts: ConnectOptions,
    cursors: Mutex<Cursors>,
    /// `pushes_dropped` as of the last sync: growth means a sync is due.
    dropped_seen: AtomicU64,
}

impl Session {
    /// Connects and logs in, holding nothing yet.
    pub fn connect(opts: ConnectOptions) -> Result<Self, ClientError> {
        Self::resume(opts, Cursors::new())
    }

    /// Connects and logs in with cursors held from before (a reconnect):
    /// they go to the server as `resume_cursors` and stay this session's.
    pub fn resume(mut opts: ConnectOptions, cursors: Cursors) -> Result<Self, ClientError> {
        opts.resume_cursors = cursors.list();
        let conn = Connection::open(&opts)?;
        Ok(Self {
            conn,
            opts,
            cursors: Mutex::new(cursors),
            dropped_seen: AtomicU64::new(0),
        })
    }

    /// The logged-in user.
    pub fn me(&self) -> &str {
        &self.conn.welcome().user_id
    }

    /// This device.
    pub fn device(&self) -> &str {
        &self.conn.welcome().device_id
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &pb::Welcome {
        self.conn.welcome()
    }

    /// How this session was opened (for a reconnect).
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// The server address this session is connected to (one entry of the
    /// options' list).
    pub fn server(&self) -> &str {
        self.conn.server()
    }

    /// A copy of the cursors (for a reconnect, or to show).
    pub fn cursors(&self) -> Cursors {
        self.cursors.lock().clone()
    }

    /// Starts `conv` at `seq` without fetching what lies below.
    pub fn adopt(&self, conv: &str, seq: u64) {
        self.cursors.lock().adopt(conv, seq);
    }

    /// The cursor of `conv`.
    pub fn held(&self, conv: &str) -> u64 {
        self.cursors.lock().held(conv)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close();
    }

    /// Sends any request and waits for its answer.
    pub fn request(&self, body: Body) -> Result<Body, ClientError> {
        self.conn.request(body)
    }

    /// Sends a fire-and-forget frame (`typing`).
    pub fn fire(&self, body: Body) -> Result<(), ClientError> {
        self.conn.send_fire_and_forget(body)
    }

    /// Sends a message. A text longer than the server's limit is refused
    /// here. A timeout or a retryable refusal is retried with the same
    /// `client_msg_id` (at most [`SEND_ATTEMPTS_MAX`] attempts), so it is
    /// stored once whatever happened to the first attempt.
    pub fn send(&self, msg: pb::Send) -> Result<pb::SendAck, ClientError> {
        if let Some(pb::content::Kind::Text(t)) = msg.content.as_ref().and_then(|c| c.kind.as_ref())
        {
            let max = self
                .welcome()
                .limits
                .as_ref()
                .map_or(usize::MAX, |l| l.text_bytes_max as usize);
            if t.text.len() > max {
                return Err(ClientError::TextTooLong {
                    len: t.text.len(),
                    max,
                });
            }
        }
        let mut attempt = 1;
        let ack = loop {
            match expect_body!(self.request(Body::Send(msg.clone())), SendAck) {
                Ok(ack) => break ack,
                Err(e) if attempt < SEND_ATTEMPTS_MAX && retryable(&e) => {
                    attempt += 1;
                    let hint = match &e {
                        ClientError::Server { retry_after_ms, .. } => u64::from(*retry_after_ms),
                        _ => 0,
                    };
                    let wait = if hint == 0 {
                        SEND_RETRY_WAIT_MS_DEFAULT
                    } else {
                        hint
                    };
                    // A tool's own thread, waiting on purpose before a retry.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(wait.min(SEND_RETRY_WAIT_MS_MAX)));
                }
                Err(e) => return Err(e),
            }
        };
        // This device holds its own message now; the server pushes it to
        // the other devices only.
        let own = self
            .cursors
            .lock()
            .apply_pushed_seq(&ack.conversation_id, ack.seq);
        if own == Applied::Fresh {
            self.flush_acks()?;
        }
        Ok(ack)
    }

    /// Syncs until the server has nothing more (or [`SYNC_PAGES_MAX`]
    /// pages), applying and acking what arrives. `page_limit` 0 asks for
    /// the server's page size.
    pub fn sync_all(&self, page_limit: u32) -> Result<SyncOutcome, ClientError> {
        let mut out = SyncOutcome::default();
        self.dropped_seen
            .store(self.conn.pushes_dropped(), Ordering::Relaxed);
        for _ in 0..SYNC_PAGES_MAX {
            let cursors = self.cursors.lock().list();
            let page = expect_body!(
                self.request(Body::Sync(pb::SyncRequest {
                    cursors,
                    limit: page_limit,
                })),
                SyncResult
            )?;
            let mut fresh = 0usize;
            {
                let mut c = self.cursors.lock();
                for e in page.entries {
                    if c.apply_synced(&e) == Applied::Fresh {
                        fresh += 1;
                        out.entries.push(e);
                    }
                }
            }
            self.flush_acks()?;
            out.heads = page.heads;
            if !page.more {
                out.complete = true;
                return Ok(out);
            }
            if fresh == 0 {
                return Err(ClientError::Protocol(
                    "sync answered `more` with nothing new".into(),
                ));
            }
        }
        Ok(out)
    }

    /// Waits up to `wait` for the next push and handles it: a `deliver` is
    /// applied in order and acked, and a gap (or pushes dropped on a full
    /// queue) is filled by a sync whose entries are appended. `Ok(None)`:
    /// nothing arrived in time.
    pub fn next_pushed(&self, wait: Duration) -> Result<Option<Pushed>, ClientError> {
        let Some(event) = self.conn.next_event(wait) else {
            return Ok(None);
        };
        let frame = match event {
            Event::Closed(c) => return Ok(Some(Pushed::Closed(c))),
            Event::Push(f) => f,
        };
        Ok(Some(match frame.body {
            Some(Body::Deliver(d)) => Pushed::Entries(self.apply_deliver(d)?),
            // A room message: shown like an entry, never acked or synced
            // (rooms keep recent history only).
            Some(Body::RoomDeliver(d)) => Pushed::Entries(d.entry.into_iter().collect()),
            Some(Body::RoomClosed(c)) => Pushed::RoomClosed(c.room_id),
            Some(Body::TypingEvent(t)) => Pushed::Typing(t),
            Some(Body::CallEvent(c)) => Pushed::Call(c),
            Some(Body::CallSignalEvent(c)) => Pushed::CallSignal(c),
            Some(Body::PresenceEvent(p)) => match p.presence {
                Some(p) => Pushed::Presence(p),
                None => Pushed::Entries(Vec::new()),
            },
            Some(Body::Event(e)) => Pushed::Event(e),
            Some(Body::Error(e)) => Pushed::Error(e),
            body => Pushed::Other(pb::Frame {
                request_id: frame.request_id,
                body,
            }),
        }))
    }

    fn apply_deliver(&self, d: pb::Deliver) -> Result<Vec<pb::Entry>, ClientError> {
        let mut fresh = Vec::with_capacity(d.entries.len());
        let mut gap = false;
        {
            let mut c = self.cursors.lock();
            for e in d.entries {
                match c.apply_pushed(&e) {
                    Applied::Fresh => fresh.push(e),
                    Applied::Duplicate => {}
                    // Dropped: the sync below brings it with what is missing.
                    Applied::Gap => gap = true,
                }
            }
        }
        self.flush_acks()?;
        let dropped = self.conn.pushes_dropped() > self.dropped_seen.load(Ordering::Relaxed);
        if gap || dropped {
            fresh.extend(self.sync_all(0)?.entries);
        }
        Ok(fresh)
    }

    fn flush_acks(&self) -> Result<(), ClientError> {
        let acks = self.cursors.lock().take_acks();
        for cursors in acks {
            self.conn
                .send_fire_and_forget(Body::DeliverAck(pb::DeliverAck { cursors }))?;
        }
        Ok(())
    }
}

/// Whether a failed send may be retried with the same `client_msg_id`.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Timeout(_) => true,
        ClientError::Server { .. } => matches!(
            e.server_code(),
            Some(
                pb::ErrorCode::Timeout
                    | pb::ErrorCode::Overloaded
                    | pb::ErrorCode::RateLimited
                    | pb::ErrorCode::Internal
            )
        ),
        _ => false,
    }
}

/// A fresh `client_msg_id`: time and 64 random bits, so two runs (or two
/// machines) of the same user never collide within the dedup window.
pub fn new_client_msg_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("cli-{ms:x}-{:016x}", rand::random::<u64>())
}
