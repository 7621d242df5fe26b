//! The HTTP edge, off the shard path: an axum [`Router`] served by hyper 1
//! (HTTP/1.1) on a small tokio runtime of its own, with a limit on
//! everything a client can hold.
//!
//! [`router`] holds `/metrics` (Prometheus), `/healthz` (the process is up)
//! and `/readyz` (it accepts clients; 503 while draining). Later modules add
//! their routes to that router (`router(state).merge(..)`) before it is
//! handed to [`HttpServer::start`], which applies the limits to every route.
//!
//! The server is our own accept loop rather than `axum::serve`, because it
//! holds limits that `axum::serve` does not:
//!
//! | limit (`[http]`) | outcome |
//! |---|---|
//! | `[lists] http_allow`, `http_deny` | a refused address is closed at once, before anything is read (every route: API, metrics, health) |
//! | `connections_max` | one more connection is accepted, answered 503 (best effort) and closed at once |
//! | `header_bytes_max` | 431 and close (hyper's `max_header_size`, and its read buffer) |
//! | `body_bytes_max` | 413 |
//! | `header_read_timeout_ms` | the connection is closed without an answer (hyper's timer) |
//! | `request_timeout_ms` | 408 and close; the handler's future is dropped |
//! | `idle_timeout_ms` | a connection with no request in progress and no byte moved is closed |
//! | `write_stall_timeout_ms` | a connection whose writes made no progress is dropped |
//!
//! Every connection is a task of its own, so no client waits for another;
//! each task carries a small watchdog (one interval timer) for the idle and
//! write-stall limits, which hyper does not have.
//!
//! This module never touches a shard: it reads the shards' atomics only
//! when `/metrics` is scraped.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{debug, warn};

use crate::{
    config::HttpSettings,
    metrics::{HttpMetrics, HttpTimeout, Metrics},
};

/// Requests under this path are not held to `[http] body_bytes_max`: their
/// routes apply limits of their own, before reading and while streaming
/// (media uploads, `api::media`).
pub const OWN_BODY_LIMIT_PREFIX: &str = "/api/v1/media";

/// State the built-in routes read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// All counters.
    pub metrics: Metrics,
    /// False while starting and while draining.
    pub ready: Arc<AtomicBool>,
}

/// The built-in routes: `/metrics`, `/healthz`, `/readyz`. Anything else is
/// 404 (axum's fallback), a known path with another method 405.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The content type of the exposition `prometheus_client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the classic Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics to a scraper that accepts it (Prometheus asks for it), the
/// classic text format to anyone else (curl, `promtool check metrics`).
async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS)],
            state.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            state.metrics.render_prometheus_text(),
        )
            .into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A running HTTP edge: its runtime, listener task and connection tasks.
pub struct HttpServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    runtime: Option<Runtime>,
    stop: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    connections_max: u32,
    /// How long [`HttpServer::stop`] waits for connections to finish.
    grace: Duration,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Backoff after a failed accept (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What the accept loop and every connection task share.
struct Shared {
    router: Router,
    http1: hyper::server::conn::http1::Builder,
    settings: HttpSettings,
    metrics: Arc<HttpMetrics>,
    connections: Arc<Semaphore>,
    /// Allow/deny lists by IP (`[lists] http_*`), when configured.
    lists: Option<Arc<crate::limits::EdgeLists>>,
}

impl HttpServer {
    /// Binds `addr`, starts the HTTP runtime (`settings.worker_threads`
    /// threads named `tern-http`) and serves `router` under the limits of
    /// `settings`. `metrics` counts connections, refusals and timeouts.
    pub fn start(
        addr: SocketAddr,
        settings: &HttpSettings,
        router: Router,
        metrics: Arc<HttpMetrics>,
    ) -> io::Result<Self> {
        Self::start_with_lists(addr, settings, router, metrics, None)
    }

    /// [`HttpServer::start`] with allow/deny lists: a connection from an
    /// address they refuse is closed right after accept, for every route.
    pub fn start_with_lists(
        addr: SocketAddr,
        settings: &HttpSettings,
        router: Router,
        metrics: Arc<HttpMetrics>,
        lists: Option<Arc<crate::limits::EdgeLists>>,
    ) -> io::Result<Self> {
        settings
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.worker_threads)
            // Nothing here blocks; one thread bounds what would.
            .max_blocking_threads(1)
            .thread_name("tern-http")
            .enable_io()
            .enable_time()
            .build()?;
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(std_listener)?
        };

        let connections_max = u32::try_from(settings.connections_max)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        let connections = Arc::new(Semaphore::new(connections_max as usize));
        let body_max = settings.body_bytes_max;
        // Routes under OWN_BODY_LIMIT_PREFIX hold their bodies to limits of
        // their own (media uploads); every other route gets `body_max`.
        let own = router.clone();
        let limited = router
            // axum's extractors (Bytes, Json, ...) stop at this ...
            .layer(DefaultBodyLimit::max(body_max))
            // ... and every body, streamed or not, at this: 413.
            .layer(RequestBodyLimitLayer::new(body_max));
        let router =
            Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
                use tower::ServiceExt as _;
                let own_limit = req.uri().path().starts_with(OWN_BODY_LIMIT_PREFIX);
                let route = if own_limit {
                    own.clone()
                } else {
                    limited.clone()
                };
                route.oneshot(req)
            }));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
            .max_header_size(settings.header_bytes_max)
            // The read buffer holds one head at most, so a client that
            // pipelines cannot make it grow past the head limit either.
            .max_buf_size(
                settings
                    .header_bytes_max
                    .max(HttpSettings::HEADER_BYTES_MIN),
            )
            .keep_alive(true);
        let shared = Arc::new(Shared {
            router,
            http1,
            settings: settings.clone(),
            metrics,
            connections: connections.clone(),
            lists,
        });
        let (stop, stop_rx) = watch::channel(false);
        runtime.spawn(accept_loop(listener, shared, stop_rx));
        Ok(Self {
            addr,
            runtime: Some(runtime),
            stop,
            connections,
            connections_max,
            grace: Duration::from_millis(
                settings
                    .request_timeout_ms
                    .max(settings.write_stall_timeout_ms),
            ),
        })
    }

    /// Graceful stop: the listener closes, every connection finishes the
    /// request it is serving and closes (hyper's graceful shutdown), then
    /// the runtime ends. Waits at most the longer of the request and write
    /// stall timeouts, which bound any request still in progress.
    pub fn stop(mut self) {
        self.stop_within(self.grace);
    }

    fn stop_within(&mut self, grace: Duration) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let _ = self.stop.send(true);
        let (connections, max) = (self.connections.clone(), self.connections_max);
        runtime.block_on(async move {
            // All permits back means every connection task has ended.
            let _ = tokio::time::timeout(grace, connections.acquire_many(max)).await;
        });
        runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

impl Drop for HttpServer {
    /// Dropped without [`HttpServer::stop`]: connections get a short grace.
    fn drop(&mut self) {
        self.stop_within(Duration::from_millis(200));
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // A stop, or the server gone: stop accepting.
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "http accept failed; pausing accepts");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Some(lists) = &shared.lists
            && !lists.admits(crate::limits::Edge::Http, peer.ip())
        {
            // Refused by the lists (counted there): closed, nothing read.
            drop(stream);
            continue;
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            shared.clone(),
            stop.clone(),
            permit,
        ));
    }
    debug!("http listener closed");
}

/// The answer to a connection beyond `connections_max`.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: text/plain\r\ncontent-length: 26\r\n\r\ntoo many HTTP connections\n";

/// Writes the 503 if the socket takes it now (a fresh socket's send buffer
/// does) and closes. Never waits on the client.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
    if let Ok(s) = stream.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

/// Serves one connection until it ends, a limit ends it, or the server
/// stops. `_permit` returns its slot of `connections_max` when dropped.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let metrics = shared.metrics.clone();
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = ConnService {
        inner: TowerToHyperService::new(shared.router.clone()),
        activity: activity.clone(),
        request_timeout: Duration::from_millis(shared.settings.request_timeout_ms),
        metrics: metrics.clone(),
        peer,
    };
    let conn = shared.http1.serve_connection(io, service);
    tokio::pin!(conn);

    let idle = Duration::from_millis(shared.settings.idle_timeout_ms);
    let stall = Duration::from_millis(shared.settings.write_stall_timeout_ms);
    // Check four times per shortest limit, so a limit is overrun by at most
    // a quarter of it (and by no more than a second).
    let tick = (idle.min(stall) / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics.timed_out(HttpTimeout::HeaderRead);
                    } else if e.is_parse_too_large() {
                        metrics.header_too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(error = %e, "http connection ended");
                }
                break;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = watchdog.tick() => {
                if let Some(kind) = activity.overdue(idle, stall) {
                    metrics.timed_out(kind);
                    debug!(?kind, "http connection dropped");
                    break; // Dropping `conn` closes the socket.
                }
            }
        }
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// What the watchdog of one connection reads: when a byte last moved, since
/// when writes have been blocked, how many requests are in progress.
/// Written by [`Watched`] and [`ConnService`] in the same task.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` of the last byte read or written.
    last_progress_ms: AtomicU64,
    /// Milliseconds from `start` + 1 of the first write that found the
    /// socket full since the last one that made progress; 0 = not blocked.
    write_blocked_since_ms: AtomicU64,
    /// Requests whose response the handler has not produced yet.
    in_flight: AtomicU32,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.progressed();
        self.write_blocked_since_ms.store(0, Ordering::Relaxed);
    }

    fn write_blocked(&self) {
        if self.write_blocked_since_ms.load(Ordering::Relaxed) == 0 {
            self.write_blocked_since_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// The limit this connection is past, if any.
    fn overdue(&self, idle: Duration, stall: Duration) -> Option<HttpTimeout> {
        let now = self.now_ms();
        let blocked = self.write_blocked_since_ms.load(Ordering::Relaxed);
        if blocked != 0 && u128::from(now.saturating_sub(blocked - 1)) >= stall.as_millis() {
            return Some(HttpTimeout::WriteStall);
        }
        let quiet = now.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed));
        if self.in_flight.load(Ordering::Relaxed) == 0 && u128::from(quiet) >= idle.as_millis() {
            return Some(HttpTimeout::Idle);
        }
        None
    }
}

/// A request in progress, counted in [`Activity::in_flight`] while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The answer is ready: idleness counts from here.
        self.0.progressed();
    }
}

/// The socket, recording progress and blocked writes for the watchdog.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn after_write(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
        r
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper's service for one connection: counts requests in
/// progress and ends any that outlives `request_timeout` with 408.
struct ConnService {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    request_timeout: Duration,
    metrics: Arc<HttpMetrics>,
    /// The client's address, as `ConnectInfo` for handlers that limit per IP.
    peer: std::net::SocketAddr,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let guard = InFlight::new(self.activity.clone());
        let fut = self.inner.call(req);
        let (limit, metrics) = (self.request_timeout, self.metrics.clone());
        Box::pin(async move {
            let out = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    metrics.timed_out(HttpTimeout::Request);
                    Ok(request_timed_out())
                }
            };
            drop(guard);
            out
        })
    }
}

fn request_timed_out() -> Response {
    let mut r = Response::new(Body::from("request timed out\n"));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    // hyper closes the connection after a response that says so.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
