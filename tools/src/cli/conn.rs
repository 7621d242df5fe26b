//! One connection to a Tern gateway, on blocking sockets and two threads:
//! TCP in clear or inside TLS ([`ConnectOptions::tls`]: the gateway's
//! `--tls-listen`), or WebSocket (a server entry `ws://host:port/path`, or
//! `wss://…` over TLS; [`super::ws`]). See [`Wire`].
//!
//! - [`Connection::open`] connects, sends `auth` and waits for `Welcome` on
//!   the calling thread; a refusal is the server's typed error.
//! - The reader thread owns the read half. A frame whose `request_id`
//!   belongs to a waiting [`Connection::request`] goes to that request; a
//!   `pong` to a heartbeat is dropped; a `kick` is kept for the close
//!   report; everything else is a push, queued in a bounded queue of
//!   [`PUSH_QUEUE_FRAMES_MAX`] frames. When the queue is full the push is
//!   dropped and counted ([`Connection::pushes_dropped`]): pushes are only
//!   the fast path, and a dropped `deliver` is found again by `sync`.
//! - The heartbeat thread pings at `Welcome.heartbeat_interval_ms` and, if
//!   nothing at all arrived within one interval after a ping, declares the
//!   connection dead and shuts the socket (protocol.md 3.5).
//! - When the socket ends, every waiting request fails with
//!   [`ClientError::Closed`] and the push queue ends with [`Event::Closed`]
//!   (after the pushes still queued; the reader never blocks on the queue).
//!
//! This module knows frames, not chat: it never looks inside a push, never
//! acks a delivery and never reconnects (that is [`super::session`] and the
//! front ends).

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream, ToSocketAddrs as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use prost::Message as _;
use tern_protocol::{
    codec::{self, Decoded},
    pb::{self, frame::Body},
};

use super::ClientError;

/// Largest frame this client accepts from the server, in bytes. The server
/// announces no bound for what it sends; results are paged so they stay far
/// below this (protocol.md 2 suggests 16 MiB). A larger length prefix is a
/// broken connection, refused before anything of the body is kept.
pub const INCOMING_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Pushes queued for the consumer before new ones are dropped (and counted).
pub const PUSH_QUEUE_FRAMES_MAX: usize = 4096;
/// Requests waiting for their answer at once on one connection.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Bytes read from the socket per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Default wait for an answer (and for a blocked write), in milliseconds.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default wait for the TCP connect, in milliseconds.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Shortest heartbeat interval this client follows, in milliseconds; a
/// smaller announced value is raised to it rather than spinning.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 50;
/// What the client tells the server it is (`Auth.client_version`).
pub const CLIENT_VERSION: &str = concat!("tern-cli/", env!("CARGO_PKG_VERSION"));

/// The `Auth.capabilities` name of a connection that does not count toward
/// its user's presence: friends see no online/offline for it (the gateway's
/// `PRESENCE_QUIET`). Scripted runs use it.
pub const PRESENCE_QUIET: &str = "presence-quiet";

/// The request id of `auth`; later requests count up from the next one.
const AUTH_REQUEST_ID: u64 = 1;

/// How to reach and log in to a server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the gateway's TCP listener, or `ws://host:port/path`
    /// (`wss://…`) of its WebSocket one; several, comma-separated
    /// (`a:7400,ws://b:7401`), are tried in order until one connects.
    pub server: String,
    /// A JWT whose `sub` is the user.
    pub token: String,
    /// This installation's device id.
    pub device_id: String,
    /// What this device already holds, per conversation (`Auth.resume_cursors`).
    pub resume_cursors: Vec<pb::Cursor>,
    /// `Auth.capabilities`, e.g. [`PRESENCE_QUIET`].
    pub capabilities: Vec<String>,
    /// Wait for each answer (and each blocked write), in milliseconds.
    pub request_timeout_ms: u64,
    /// Wait for the TCP connect, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Base URL of the gateway's HTTP edge (media upload), e.g.
    /// `http://127.0.0.1:7480`.
    pub http_url: String,
    /// Connect over TLS with these settings (`--tls`); `None`: plain TCP.
    /// A `wss://` entry always uses TLS: these settings, or the defaults
    /// (the system's CAs) when `None`.
    pub tls: Option<crate::tls::TlsOptions>,
    /// `Auth.platform` (`tern-bot` logs in as `PLATFORM_BOT`).
    pub platform: pb::Platform,
}

/// Default base URL of the HTTP edge (the gateway's default `listen.http`).
pub const HTTP_URL_DEFAULT: &str = "http://127.0.0.1:7480";

impl ConnectOptions {
    /// Options with the default timeouts and no resume cursors.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        Self {
            server: server.into(),
            token: token.into(),
            device_id: device_id.into(),
            resume_cursors: Vec::new(),
            capabilities: Vec::new(),
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            http_url: HTTP_URL_DEFAULT.to_owned(),
            tls: None,
            platform: pb::Platform::Cli,
        }
    }
}

/// What the reader thread hands the consumer.
#[derive(Debug)]
pub enum Event {
    /// A frame that answers no waiting request: a push (`request_id` 0), or
    /// the error of a fire-and-forget frame.
    Push(pb::Frame),
    /// The connection ended; nothing follows.
    Closed(Closed),
}

/// How and why a connection ended.
#[derive(Debug, Clone)]
pub struct Closed {
    /// What ended it on this side's view.
    pub cause: CloseCause,
    /// The server's `kick`, if it sent one (always its last frame).
    pub kick: Option<pb::Kick>,
    /// The last connection-level `error` (request_id 0) the server sent.
    pub error: Option<pb::Error>,
}

/// What ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The server closed the socket.
    Eof,
    /// Reading failed.
    Io(String),
    /// Nothing arrived within one heartbeat interval after a ping.
    HeartbeatLost,
    /// The server sent bytes that are not a frame (or a frame above
    /// [`INCOMING_FRAME_BYTES_MAX`]).
    BadFrame(String),
    /// This side closed it.
    Local,
}

impl Closed {
    /// One line for people.
    pub fn describe(&self) -> String {
        let mut s = match &self.cause {
            CloseCause::Eof => "the server closed the connection".to_owned(),
            CloseCause::Io(e) => format!("connection lost: {e}"),
            CloseCause::HeartbeatLost => "no answer to heartbeats: connection lost".to_owned(),
            CloseCause::BadFrame(e) => format!("the server sent a bad frame: {e}"),
            CloseCause::Local => "closed".to_owned(),
        };
        if let Some(k) = &self.kick {
            let reason = pb::KickReason::try_from(k.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("KICK_REASON_UNKNOWN");
            s.push_str(&format!(" (kicked: {reason}"));
            if !k.message.is_empty() {
                s.push_str(&format!(": {}", k.message));
            }
            s.push(')');
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(
                " ({}: {})",
                super::error::code_name(e.code),
                e.reason
            ));
        }
        s
    }

    /// Whether reconnecting makes sense (protocol.md 3.4, 3.6): not after a
    /// local close, a displacement (the two would displace each other
    /// forever), a login-policy kick or a logout (the user chose another
    /// device), a ban, or a refused token.
    pub fn may_reconnect(&self) -> bool {
        if self.cause == CloseCause::Local {
            return false;
        }
        if let Some(k) = &self.kick {
            let reason = pb::KickReason::try_from(k.reason).unwrap_or(pb::KickReason::Unspecified);
            if matches!(
                reason,
                pb::KickReason::Displaced
                    | pb::KickReason::Banned
                    | pb::KickReason::LoginPolicy
                    | pb::KickReason::LoggedOut
            ) {
                return false;
            }
        }
        if let Some(e) = &self.error {
            let code = pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified);
            if matches!(
                code,
                pb::ErrorCode::AuthFailed
                    | pb::ErrorCode::UnsupportedVersion
                    | pb::ErrorCode::DeviceLoggedOut
            ) {
                return false;
            }
        }
        true
    }

    /// The kick asks to wait this long before reconnecting, in milliseconds.
    pub fn retry_after_ms(&self) -> u64 {
        self.kick
            .as_ref()
            .map_or(0, |k| u64::from(k.retry_after_ms))
    }
}

/// A live, authenticated connection. Dropping it closes the socket.
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    events: Mutex<Receiver<Event>>,
    welcome: pb::Welcome,
    /// The entry of `ConnectOptions::server` that took the connection.
    server: String,
    request_timeout: Duration,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// For shutdown from any thread.
    socket: TcpStream,
    writer: Mutex<Wire>,
    pending: Mutex<Pending>,
    next_request: AtomicU64,
    /// Milliseconds since `epoch` when the last frame arrived.
    last_rx_ms: AtomicU64,
    epoch: Instant,
    pushes_dropped: AtomicU64,
    heartbeat_lost: AtomicBool,
    local_close: AtomicBool,
    /// `Limits.frame_bytes_max`: never send a larger frame.
    frame_bytes_max: usize,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    /// The close, when the push queue was full as the reader ended.
    final_event: Mutex<Option<Closed>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Set once the reader ended: no request may wait any more.
    closed: Option<String>,
    /// One slot per waiting request (capacity-1 channels).
    waiters: HashMap<u64, SyncSender<pb::Frame>>,
}

impl Connection {
    /// Connects, authenticates and starts the reader and heartbeat threads.
    pub fn open(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let request_timeout = Duration::from_millis(opts.request_timeout_ms.max(1));
        let (stream, server, ws) = dial(
            &opts.server,
            Duration::from_millis(opts.connect_timeout_ms.max(1)),
        )?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(request_timeout))?;
        stream.set_read_timeout(Some(request_timeout))?;
        // TCP entries follow `--tls`; a WebSocket entry its scheme.
        let tls = match &ws {
            None => opts.tls.clone(),
            Some(url) => url.tls.then(|| opts.tls.clone().unwrap_or_default()),
        };
        let host_port = ws
            .as_ref()
            .map_or_else(|| server.clone(), super::ws::WsUrl::addr);
        let mut wire = match &tls {
            None => Wire::plain(stream.try_clone()?),
            Some(tls) => {
                let config = tls
                    .client_config()
                    .map_err(|e| ClientError::Usage(format!("--tls: {e:#}")))?;
                let name = tls
                    .server_name(&host_port)
                    .map_err(|e| ClientError::Usage(format!("--tls: {e:#}")))?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
                Wire::tls(stream.try_clone()?, conn).map_err(|e| match e {
                    e if is_timeout(&e) => ClientError::Timeout(opts.request_timeout_ms),
                    e => ClientError::Connect {
                        addr: server.clone(),
                        source: e,
                    },
                })?
            }
        };
        // Bytes the server sent after its upgrade response.
        let mut buf = Vec::new();
        if let Some(url) = &ws {
            buf = ws_upgrade(&wire, url).map_err(|e| match e {
                ReadError::Io(e) if is_timeout(&e) => ClientError::Timeout(opts.request_timeout_ms),
                ReadError::Io(e) => ClientError::Connect {
                    addr: server.clone(),
                    source: e,
                },
                other => ClientError::Protocol(other.to_string()),
            })?;
            wire.ws = true;
        }

        let auth = pb::Frame {
            request_id: AUTH_REQUEST_ID,
            body: Some(Body::Auth(pb::Auth {
                token: opts.token.clone(),
                device_id: opts.device_id.clone(),
                platform: opts.platform as i32,
                protocol_version: tern_protocol::PROTOCOL_VERSION,
                capabilities: opts.capabilities.clone(),
                resume_cursors: opts.resume_cursors.clone(),
                client_version: CLIENT_VERSION.to_owned(),
            })),
        };
        let mut out = Vec::new();
        wire.encode(&auth, &mut out);
        wire.write_all(&out)?;

        // The handshake runs here, before any thread exists: nothing but the
        // answer to `auth` can arrive first.
        let mut message = None;
        let frame = match next_frame(&wire, &mut buf, &mut message, |b| wire.write_all(b)) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ClientError::Closed(
                    "the server closed the connection during auth".into(),
                ));
            }
            Err(ReadError::Io(e)) if is_timeout(&e) => {
                return Err(ClientError::Timeout(opts.request_timeout_ms));
            }
            Err(ReadError::Io(e)) => return Err(ClientError::Io(e)),
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        let welcome = match frame.body {
            Some(Body::Welcome(w)) => w,
            Some(Body::Error(e)) => return Err(ClientError::from_server(e)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected welcome, got {}",
                    body_name(other.as_ref())
                )));
            }
        };
        stream.set_read_timeout(None)?;

        let frame_bytes_max = welcome
            .limits
            .as_ref()
            .map_or(codec::FRAME_BYTES_MAX_DEFAULT, |l| {
                l.frame_bytes_max as usize
            });
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            socket: stream.try_clone()?,
            writer: Mutex::new(wire.clone()),
            pending: Mutex::new(Pending::default()),
            next_request: AtomicU64::new(AUTH_REQUEST_ID + 1),
            last_rx_ms: AtomicU64::new(0),
            epoch,
            pushes_dropped: AtomicU64::new(0),
            heartbeat_lost: AtomicBool::new(false),
            local_close: AtomicBool::new(false),
            frame_bytes_max,
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            final_event: Mutex::new(None),
        });
        let (tx, rx) = mpsc::sync_channel(PUSH_QUEUE_FRAMES_MAX);
        let mut threads = Vec::with_capacity(2);
        let reader_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tern-cli-reader".into())
                .spawn(move || read_loop(&reader_shared, wire, buf, message, &tx))?,
        );
        let interval = Duration::from_millis(
            u64::from(welcome.heartbeat_interval_ms).max(HEARTBEAT_INTERVAL_MS_MIN),
        );
        let hb_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tern-cli-heartbeat".into())
                .spawn(move || heartbeat_loop(&hb_shared, interval))?,
        );
        Ok(Self {
            shared,
            events: Mutex::new(rx),
            welcome,
            server,
            request_timeout,
            threads,
        })
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &pb::Welcome {
        &self.welcome
    }

    /// The address this connection went to (one entry of the options'
    /// `server` list).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a request and waits for its answer. A server `error` becomes
    /// [`ClientError::Server`]; any other answer is returned as is.
    pub fn request(&self, body: Body) -> Result<Body, ClientError> {
        let id = self.next_request_id();
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut pending = self.shared.pending.lock();
            if let Some(why) = &pending.closed {
                return Err(ClientError::Closed(why.clone()));
            }
            if pending.waiters.len() >= REQUESTS_IN_FLIGHT_MAX {
                return Err(ClientError::TooManyInFlight(REQUESTS_IN_FLIGHT_MAX));
            }
            pending.waiters.insert(id, tx);
        }
        let sent = self.write_frame(&pb::Frame {
            request_id: id,
            body: Some(body),
        });
        if let Err(e) = sent {
            self.shared.pending.lock().waiters.remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(self.request_timeout) {
            Ok(frame) => match frame.body {
                Some(Body::Error(e)) => Err(ClientError::from_server(e)),
                Some(body) => Ok(body),
                None => Err(ClientError::Protocol("an answer without a body".into())),
            },
            Err(RecvTimeoutError::Timeout) => {
                self.shared.pending.lock().waiters.remove(&id);
                Err(ClientError::Timeout(self.request_timeout.as_millis() as u64))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = self.shared.pending.lock().closed.clone();
                Err(ClientError::Closed(
                    why.unwrap_or_else(|| "connection ended".into()),
                ))
            }
        }
    }

    /// Sends a frame that gets no answer (`deliver_ack`, `typing`). It
    /// carries a fresh request id so that an `error` for it, which arrives
    /// as a push, can be told from a connection-level one.
    pub fn send_fire_and_forget(&self, body: Body) -> Result<(), ClientError> {
        let id = self.next_request_id();
        self.write_frame(&pb::Frame {
            request_id: id,
            body: Some(body),
        })
    }

    /// The next push or the close, waiting at most `wait`. After the
    /// close has been returned, `None` at once.
    pub fn next_event(&self, wait: Duration) -> Option<Event> {
        match self.events.lock().recv_timeout(wait) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            // The reader has ended and everything it queued was taken.
            Err(RecvTimeoutError::Disconnected) => {
                self.shared.final_event.lock().take().map(Event::Closed)
            }
        }
    }

    /// Pushes dropped because the queue was full; the consumer syncs when
    /// this grows.
    pub fn pushes_dropped(&self) -> u64 {
        self.shared.pushes_dropped.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.pending.lock().closed.is_some()
    }

    /// Closes the socket; the reader reports [`CloseCause::Local`].
    pub fn close(&self) {
        self.shared.local_close.store(true, Ordering::Relaxed);
        self.shared.stop_heartbeat();
        let _ = self.shared.socket.shutdown(Shutdown::Both);
    }

    fn next_request_id(&self) -> u64 {
        self.shared.next_request.fetch_add(1, Ordering::Relaxed)
    }

    fn write_frame(&self, frame: &pb::Frame) -> Result<(), ClientError> {
        self.shared.write_frame(frame)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
        // Both threads end promptly once the socket is shut: the reader sees
        // EOF, the heartbeat its stop flag.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn write_frame(&self, frame: &pb::Frame) -> Result<(), ClientError> {
        let len = frame.encoded_len();
        if len > self.frame_bytes_max {
            return Err(ClientError::FrameTooLarge {
                len,
                max: self.frame_bytes_max,
            });
        }
        // One buffer per frame: a cli sends at human speed. (The prefix and
        // a WebSocket header are at most 14 bytes.)
        let mut out = Vec::with_capacity(len + 14);
        let w = self.writer.lock();
        w.encode(frame, &mut out);
        w.write_all(&out)?;
        Ok(())
    }

    fn stop_heartbeat(&self) {
        *self.stop.lock() = true;
        self.stop_cv.notify_all();
    }
}

/// Connects to the first entry of the comma-separated `servers` that
/// takes the connection; returns it with that entry (and its WebSocket URL
/// when it is one). The error names the last entry tried.
fn dial(
    servers: &str,
    timeout: Duration,
) -> Result<(TcpStream, String, Option<super::ws::WsUrl>), ClientError> {
    let mut last = None;
    for server in server_list(servers) {
        let ws = match super::ws::WsUrl::parse(server) {
            None => None,
            Some(Ok(url)) => Some(url),
            Some(Err(e)) => {
                last = Some(ClientError::Usage(e));
                continue;
            }
        };
        let addr = ws
            .as_ref()
            .map_or_else(|| server.to_owned(), super::ws::WsUrl::addr);
        match dial_one(&addr, timeout) {
            Ok(s) => return Ok((s, server.to_owned(), ws)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Connect {
        addr: servers.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no server address given"),
    }))
}

fn dial_one(server: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let connect_err = |source| ClientError::Connect {
        addr: server.to_owned(),
        source,
    };
    let addrs = server.to_socket_addrs().map_err(connect_err)?;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the name resolved to no address",
    );
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(connect_err(last))
}

/// The non-empty entries of a comma-separated server list.
pub fn server_list(servers: &str) -> impl Iterator<Item = &str> {
    servers.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The server list to reconnect with after `closed` ended a connection to
/// `current` (protocol.md 3.6): after a `SHUTDOWN` kick, the kick's
/// `redirect` first (when it is a `host:port`), then the entries after
/// `current`, `current` last (its node is draining); after anything else,
/// `current` first (it may only have blipped), then the others.
pub fn reconnect_order(servers: &str, current: &str, closed: &Closed) -> String {
    let list: Vec<&str> = server_list(servers).collect();
    let at = list.iter().position(|s| *s == current).unwrap_or(0);
    let shutdown = closed
        .kick
        .as_ref()
        .is_some_and(|k| k.reason == pb::KickReason::Shutdown as i32);
    let mut order: Vec<&str> = Vec::with_capacity(list.len() + 1);
    if shutdown {
        if let Some(k) = &closed.kick
            && !k.redirect.is_empty()
            && !k.redirect.contains("://")
        {
            order.push(k.redirect.as_str());
        }
        order.extend(list.iter().cycle().skip(at + 1).take(list.len()));
    } else {
        order.extend(list.iter().cycle().skip(at).take(list.len()));
    }
    let mut seen = std::collections::HashSet::new();
    order.retain(|s| seen.insert(*s));
    order.join(",")
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Decode(codec::DecodeError),
    #[error("{0}")]
    Ws(super::ws::WsError),
    /// The WebSocket upgrade was refused or answered wrongly.
    #[error("{0}")]
    Upgrade(String),
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Takes one whole frame off the front of `buf`, if it holds one.
fn take_frame(buf: &mut Vec<u8>) -> Result<Option<pb::Frame>, codec::DecodeError> {
    match codec::decode_frame(buf, INCOMING_FRAME_BYTES_MAX)? {
        Decoded::Frame { frame, consumed } => {
            buf.drain(..consumed);
            Ok(Some(frame))
        }
        Decoded::NeedMore(_) => Ok(None),
    }
}

/// The byte stream under the frames: the TCP socket, or TLS over it. The
/// TLS state is shared by the reader thread and the writers (behind a
/// mutex held only while bytes are handed over, never during a blocking
/// socket read, so a write never waits for the server to speak).
#[derive(Debug, Clone)]
pub struct Wire {
    sock: Arc<TcpStream>,
    tls: Option<Arc<Mutex<rustls::ClientConnection>>>,
    /// Frames are WebSocket binary messages (after the upgrade), not
    /// length-prefixed.
    ws: bool,
}

impl Wire {
    fn plain(sock: TcpStream) -> Self {
        Self {
            sock: Arc::new(sock),
            tls: None,
            ws: false,
        }
    }

    /// Appends `frame` as this wire carries it: length-prefixed, or one
    /// masked WebSocket binary message.
    fn encode(&self, frame: &pb::Frame, out: &mut Vec<u8>) {
        if self.ws {
            let body = frame.encode_to_vec();
            super::ws::encode_binary(&body, out);
        } else {
            codec::encode_frame(frame, out);
        }
    }

    /// Runs the TLS handshake of `conn` over `sock` (with its timeouts).
    fn tls(sock: TcpStream, mut conn: rustls::ClientConnection) -> std::io::Result<Self> {
        let mut s = &sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s)?;
        }
        Ok(Self {
            sock: Arc::new(sock),
            tls: Some(Arc::new(Mutex::new(conn))),
            ws: false,
        })
    }

    /// Writes all of `bytes` (sealed first over TLS).
    fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(tls) = &self.tls else {
            return (&*self.sock).write_all(bytes);
        };
        let mut conn = tls.lock();
        conn.writer().write_all(bytes)?;
        let mut s = &*self.sock;
        while conn.wants_write() {
            conn.write_tls(&mut s)?;
        }
        Ok(())
    }

    /// Reads what is there (at least one byte, or 0 at EOF).
    fn read(&self, out: &mut [u8]) -> std::io::Result<usize> {
        let Some(tls) = &self.tls else {
            return (&*self.sock).read(out);
        };
        let mut raw = vec![0u8; READ_CHUNK_BYTES];
        loop {
            {
                let mut conn = tls.lock();
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            // Not under the lock: this read blocks until the server speaks.
            let n = (&*self.sock).read(&mut raw)?;
            if n == 0 {
                return Ok(0); // closed without close_notify: EOF all the same
            }
            let mut conn = tls.lock();
            let mut rest = &raw[..n];
            while !rest.is_empty() {
                conn.read_tls(&mut rest)?;
                conn.process_new_packets()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            }
            let mut s = &*self.sock;
            while conn.wants_write() {
                conn.write_tls(&mut s)?;
            }
        }
    }
}

/// Sends the WebSocket upgrade for `url` and reads the answer; returns
/// what the server sent after it (WebSocket data).
fn ws_upgrade(wire: &Wire, url: &super::ws::WsUrl) -> Result<Vec<u8>, ReadError> {
    use super::ws::UpgradeAnswer;
    let key = super::ws::new_key();
    wire.write_all(&url.upgrade_request(&key))
        .map_err(ReadError::Io)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match super::ws::check_upgrade(&buf, &key).map_err(ReadError::Upgrade)? {
            UpgradeAnswer::Switched { consumed } => {
                buf.drain(..consumed);
                return Ok(buf);
            }
            UpgradeAnswer::NeedMore => {}
        }
        match wire.read(&mut chunk) {
            Ok(0) => {
                return Err(ReadError::Upgrade(
                    "the server closed the connection during the WebSocket upgrade".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Reads until one frame is whole; `None` at EOF. `buf` keeps what follows.
#[cfg(test)]
fn read_frame(stream: &Wire, buf: &mut Vec<u8>) -> Result<Option<pb::Frame>, ReadError> {
    next_frame(stream, buf, &mut None, |b| stream.write_all(b))
}

/// Reads until one frame is whole; `None` at EOF (or a WebSocket close).
/// `buf` keeps the bytes that follow, `message` a WebSocket message not
/// yet whole; `write` sends the answers to WebSocket pings and closes.
fn next_frame(
    stream: &Wire,
    buf: &mut Vec<u8>,
    message: &mut Option<Vec<u8>>,
    write: impl Fn(&[u8]) -> std::io::Result<()>,
) -> Result<Option<pb::Frame>, ReadError> {
    use super::ws::{self, Taken};
    use tungstenite::protocol::frame::coding::{Control, OpCode};
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        if stream.ws {
            let mut out = Vec::new();
            match ws::take(buf, message, INCOMING_FRAME_BYTES_MAX).map_err(ReadError::Ws)? {
                Taken::Message(body) => {
                    return codec::decode_body(&body, INCOMING_FRAME_BYTES_MAX)
                        .map(Some)
                        .map_err(ReadError::Decode);
                }
                Taken::Nothing => continue,
                Taken::Ping(payload) => {
                    ws::encode(OpCode::Control(Control::Pong), &payload, &mut out);
                    write(&out).map_err(ReadError::Io)?;
                    continue;
                }
                Taken::Close => {
                    ws::encode(OpCode::Control(Control::Close), &[], &mut out);
                    let _ = write(&out);
                    return Ok(None);
                }
                Taken::NeedMore => {}
            }
        } else if let Some(f) = take_frame(buf).map_err(ReadError::Decode)? {
            return Ok(Some(f));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

fn read_loop(
    shared: &Shared,
    stream: Wire,
    mut buf: Vec<u8>,
    mut message: Option<Vec<u8>>,
    tx: &SyncSender<Event>,
) {
    let mut kick = None;
    let mut error = None;
    // Pongs and close echoes go in order with the frames the writers send.
    let write = |b: &[u8]| shared.writer.lock().write_all(b);
    let cause = loop {
        match next_frame(&stream, &mut buf, &mut message, write) {
            Ok(Some(frame)) => {
                shared.last_rx_ms.store(shared.now_ms(), Ordering::Relaxed);
                dispatch(shared, frame, tx, &mut kick, &mut error);
            }
            Ok(None) => break CloseCause::Eof,
            Err(ReadError::Io(e)) => break CloseCause::Io(e.to_string()),
            Err(e) => break CloseCause::BadFrame(e.to_string()),
        }
    };
    let cause = if shared.local_close.load(Ordering::Relaxed) {
        CloseCause::Local
    } else if shared.heartbeat_lost.load(Ordering::Relaxed) {
        CloseCause::HeartbeatLost
    } else {
        cause
    };
    let closed = Closed { cause, kick, error };
    {
        let mut pending = shared.pending.lock();
        pending.closed = Some(closed.describe());
        // Dropping the senders wakes every waiting request with Disconnected.
        pending.waiters.clear();
    }
    shared.stop_heartbeat();
    let _ = shared.socket.shutdown(Shutdown::Both);
    // Never blocking (a consumer that stopped reading would hang this
    // thread, and a Drop joining it): on a full queue the close waits in
    // `final_event` until the consumer has drained the queue.
    if let Err(TrySendError::Full(Event::Closed(c))) = tx.try_send(Event::Closed(closed)) {
        *shared.final_event.lock() = Some(c);
    }
}

fn dispatch(
    shared: &Shared,
    frame: pb::Frame,
    tx: &SyncSender<Event>,
    kick: &mut Option<pb::Kick>,
    error: &mut Option<pb::Error>,
) {
    if frame.request_id != 0 {
        let waiter = shared.pending.lock().waiters.remove(&frame.request_id);
        if let Some(w) = waiter {
            // A capacity-1 channel used once: this never finds it full. A
            // requester that timed out meanwhile is gone; that is fine.
            let _ = w.try_send(frame);
            return;
        }
    }
    match &frame.body {
        // Answers to our heartbeats: their arrival (last_rx_ms) is the point.
        Some(Body::Pong(_)) => return,
        // A late answer to a request that stopped waiting (it reported a
        // timeout): nobody asks for it any more. Errors still go on: they
        // are how a fire-and-forget frame learns that it failed.
        Some(b) if frame.request_id != 0 && !matches!(b, Body::Error(_)) => return,
        // The last frame of a connection: reported with the close.
        Some(Body::Kick(k)) => {
            *kick = Some(k.clone());
            return;
        }
        Some(Body::Error(e)) if frame.request_id == 0 => *error = Some(e.clone()),
        _ => {}
    }
    match tx.try_send(Event::Push(frame)) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full(_)) => {
            shared.pushes_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn heartbeat_loop(shared: &Shared, interval: Duration) {
    let mut last_ping_ms: Option<u64> = None;
    let mut nonce: u64 = 0;
    loop {
        let deadline = Instant::now() + interval;
        {
            let mut stop = shared.stop.lock();
            while !*stop && Instant::now() < deadline {
                shared.stop_cv.wait_until(&mut stop, deadline);
            }
            if *stop {
                return;
            }
        }
        if let Some(sent) = last_ping_ms
            && shared.last_rx_ms.load(Ordering::Relaxed) < sent
        {
            // Nothing, not even the pong, within one interval after the
            // ping: the server or the path is gone. Shutting the socket
            // wakes the reader, which reports HeartbeatLost.
            shared.heartbeat_lost.store(true, Ordering::Relaxed);
            let _ = shared.socket.shutdown(Shutdown::Both);
            return;
        }
        nonce = nonce.wrapping_add(1);
        let ping = pb::Frame {
            request_id: shared.next_request.fetch_add(1, Ordering::Relaxed),
            body: Some(Body::Ping(pb::Ping { nonce })),
        };
        last_ping_ms = Some(shared.now_ms());
        if shared.write_frame(&ping).is_err() {
            // The reader sees the broken socket and reports it.
            return;
        }
    }
}

/// The name of a frame body, for messages about unexpected frames.
pub fn body_name(body: Option<&Body>) -> String {
    match body {
        None => "a frame without a body".into(),
        Some(b) => {
            let dbg = format!("{b:?}");
            // `Welcome(Welcome { .. })` → `Welcome`.
            dbg.split(['(', ' ']).next().unwrap_or("?").to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    //! A scripted fake server on a loopback socket plays the server's side,
    //! including what a real one never sends.
    // The fake server and the polling test thread sleep; no shard runs here.
    #![allow(clippy::disallowed_methods)]

    use std::net::TcpListener;

    use super::*;

    fn welcome(heartbeat_interval_ms: u32) -> pb::Frame {
        pb::Frame {
            request_id: AUTH_REQUEST_ID,
            body: Some(Body::Welcome(pb::Welcome {
                user_id: "alice".into(),
                device_id: "d".into(),
                heartbeat_interval_ms,
                ..Default::default()
            })),
        }
    }

    fn write(mut s: &TcpStream, f: &pb::Frame) {
        let mut out = Vec::new();
        codec::encode_frame(f, &mut out);
        s.write_all(&out).unwrap();
    }

    /// Accepts one connection, reads its `auth`, and hands it to `script`.
    fn fake_server(script: impl FnOnce(TcpStream) + Send + 'static) -> ConnectOptions {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            let Ok(Some(f)) = read_frame(&Wire::plain(s.try_clone().unwrap()), &mut buf) else {
                return;
            };
            assert!(matches!(f.body, Some(Body::Auth(_))), "auth comes first");
            script(s);
        });
        let mut o = ConnectOptions::new(addr.to_string(), "t", "d");
        o.request_timeout_ms = 5_000;
        o
    }

    fn next_closed(c: &Connection) -> Closed {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Some(Event::Closed(c)) = c.next_event(Duration::from_millis(100)) {
                return c;
            }
        }
        panic!("no close")
    }

    #[test]
    fn a_refused_auth_is_the_servers_typed_error() {
        // Proves the handshake returns the server's code, not a generic one.
        let opts = fake_server(|s| {
            write(
                &s,
                &pb::Frame {
                    request_id: AUTH_REQUEST_ID,
                    body: Some(Body::Error(pb::Error {
                        code: pb::ErrorCode::TokenExpired as i32,
                        reason: "expired".into(),
                        retry_after_ms: 0,
                    })),
                },
            );
        });
        let e = Connection::open(&opts).unwrap_err();
        assert_eq!(e.code_name(), "ERROR_CODE_TOKEN_EXPIRED");
    }

    #[test]
    fn an_oversized_length_prefix_closes_and_fails_waiting_requests() {
        // Proves a 2^35-byte claim is refused from its prefix (nothing is
        // buffered for it), ends the connection as a bad frame, and wakes a
        // request waiting for its answer with a typed error.
        let opts = fake_server(|s| {
            write(&s, &welcome(30_000));
            let mut buf = Vec::new();
            let _ = read_frame(&Wire::plain(s.try_clone().unwrap()), &mut buf); // the request below
            (&s).write_all(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01])
                .unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        let c = Connection::open(&opts).unwrap();
        let e = c.request(Body::Ping(pb::Ping { nonce: 1 })).unwrap_err();
        assert!(matches!(e, ClientError::Closed(_)), "{e:?}");
        assert!(matches!(next_closed(&c).cause, CloseCause::BadFrame(_)));
    }

    #[test]
    fn a_full_push_queue_drops_counts_and_still_reports_the_close() {
        // Proves the push bound: a consumer that does not read loses pushes
        // beyond the queue (counted, for a sync), never blocks the reader,
        // and still gets the close after the queued pushes.
        let extra = 10;
        let opts = fake_server(move |s| {
            write(&s, &welcome(30_000));
            let typing = pb::Frame {
                request_id: 0,
                body: Some(Body::TypingEvent(pb::TypingEvent {
                    conversation_id: "d:alice:bob".into(),
                    user_id: "bob".into(),
                    typing: true,
                })),
            };
            let mut out = Vec::new();
            for _ in 0..PUSH_QUEUE_FRAMES_MAX + extra {
                codec::encode_frame(&typing, &mut out);
            }
            (&s).write_all(&out).unwrap();
        });
        let c = Connection::open(&opts).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !c.is_closed() {
            assert!(Instant::now() < until, "the reader never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(c.pushes_dropped(), extra as u64);
        let mut pushes = 0;
        let closed = loop {
            match c.next_event(Duration::from_secs(1)) {
                Some(Event::Push(_)) => pushes += 1,
                Some(Event::Closed(closed)) => break closed,
                None => panic!("the close was lost after {pushes} pushes"),
            }
        };
        assert_eq!(pushes, PUSH_QUEUE_FRAMES_MAX);
        assert_eq!(closed.cause, CloseCause::Eof);
    }

    #[test]
    fn a_silent_server_is_declared_dead_after_one_interval() {
        // Proves the heartbeat: the client pings at the Welcome interval and
        // closes a connection that answers nothing within one more.
        let opts = fake_server(|s| {
            write(&s, &welcome(50));
            // Read the pings, answer nothing.
            let mut buf = Vec::new();
            while let Ok(Some(f)) = read_frame(&Wire::plain(s.try_clone().unwrap()), &mut buf) {
                assert!(matches!(f.body, Some(Body::Ping(_))), "{f:?}");
            }
        });
        let c = Connection::open(&opts).unwrap();
        let closed = next_closed(&c);
        assert_eq!(closed.cause, CloseCause::HeartbeatLost);
        assert!(closed.may_reconnect());
    }
    #[test]
    fn a_shutdown_kick_moves_to_the_next_server_and_a_blip_retries_the_same() {
        // Proves the reconnect order: after SHUTDOWN the kick's redirect
        // first, then the entries after the current one, the draining one
        // last; after a plain loss the current one first; a URL redirect
        // (WebSocket) is not a TCP address and is skipped.
        let kick = |redirect: &str| Closed {
            cause: CloseCause::Eof,
            kick: Some(pb::Kick {
                reason: pb::KickReason::Shutdown as i32,
                redirect: redirect.into(),
                ..Default::default()
            }),
            error: None,
        };
        let list = "a:1, b:2,c:3";
        assert_eq!(reconnect_order(list, "b:2", &kick("")), "c:3,a:1,b:2");
        assert_eq!(reconnect_order(list, "c:3", &kick("")), "a:1,b:2,c:3");
        assert_eq!(
            reconnect_order(list, "a:1", &kick("d:4")),
            "d:4,b:2,c:3,a:1"
        );
        assert_eq!(reconnect_order(list, "a:1", &kick("c:3")), "c:3,b:2,a:1");
        assert_eq!(
            reconnect_order(list, "a:1", &kick("ws://x/")),
            "b:2,c:3,a:1"
        );
        let lost = Closed {
            cause: CloseCause::Eof,
            kick: None,
            error: None,
        };
        assert_eq!(reconnect_order(list, "b:2", &lost), "b:2,c:3,a:1");
        assert_eq!(reconnect_order("a:1", "a:1", &kick("")), "a:1");
    }
}
