//! Builds a running gateway from a [`Config`]: listeners, rings, shard
//! threads, backend workers and the HTTP thread; and stops it gracefully.
//!
//! Threads and rings are created once, here, before any traffic (STYLE 6):
//! shard i → shard j rings for handoffs, shard → worker rings for requests,
//! worker → shard rings for replies and pushes.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tern_protocol::session::SessionConfig;
use tracing::info;

use crate::{
    auth::Verifier,
    bridge::{self, ChatService, WorkerSetup},
    cluster::{Cluster, ClusterParts},
    config::{Config, Driver, StoreKind},
    http::{self, HttpServer, HttpState},
    mailbox::{self, Doorbell, Sender},
    metrics::Metrics,
    msg::ShardMsg,
    shard::{self, ShardSetup},
};

/// A running gateway.
#[derive(Debug)]
pub struct Server {
    shard_threads: Vec<JoinHandle<std::io::Result<()>>>,
    worker_threads: Vec<JoinHandle<()>>,
    /// To each shard, for the drain signal.
    control: Vec<Sender<ShardMsg>>,
    stop_workers: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    http: Option<HttpServer>,
    /// The node tier (Redis store only).
    cluster: Option<Cluster>,
    /// The after-event webhook thread, if configured.
    events: Option<crate::webhooks::EventFeed>,
    /// The offline push thread, if `[push]` is enabled.
    push: Option<crate::push::PushFeed>,
    /// This node's id (configured, or kept in the data dir).
    pub node_id: String,
    /// Counters of every shard and worker.
    pub metrics: Metrics,
    /// Where TCP clients connect (the bound address, useful with port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// Where WebSocket clients connect.
    pub ws_addr: Option<SocketAddr>,
    /// Where TCP clients connect over TLS.
    pub tls_addr: Option<SocketAddr>,
    /// Where WebSocket clients connect over TLS (wss).
    pub wss_addr: Option<SocketAddr>,
    /// Where `/metrics` is served.
    pub http_addr: Option<SocketAddr>,
    deadline: Duration,
}

/// Local accounts (`[accounts] enabled`): over the service's store,
/// signing with the `[auth]` key.
fn accounts(
    cfg: &Config,
    service: &Arc<dyn ChatService>,
) -> anyhow::Result<Arc<crate::api::accounts::Accounts>> {
    let store = service
        .credentials()
        .context("[accounts] enabled, but this chat service keeps no credentials")?;
    let signer = crate::auth::Signer::new(&cfg.auth, cfg.accounts.signing_key_file.as_deref())
        .context("[accounts] signing key")?;
    Ok(Arc::new(
        crate::api::accounts::Accounts::new(cfg.accounts.clone(), store, signer)
            .context("[accounts]")?,
    ))
}

/// The session settings of the config, in the protocol crate's terms.
pub fn session_config(cfg: &Config) -> SessionConfig {
    let s = &cfg.session;
    let mut out = SessionConfig {
        auth_timeout_ms: s.auth_timeout_ms,
        heartbeat_interval_ms: s.heartbeat_interval_ms,
        heartbeat_timeout_factor_pct: s.heartbeat_timeout_factor_pct,
        unacked_window_max: s.unacked_window_max,
        outbox_frames_max: s.outbox_frames_max,
        outbox_bytes_max: s.outbox_bytes_max,
        frame_bytes_max: s.frame_bytes_max,
        ..SessionConfig::default()
    };
    out.client_limits.text_bytes_max = s.text_bytes_max;
    // The page the backend answers with is the page `Welcome` announces.
    out.page_entries_max = cfg.backend.page_entries_max as usize;
    out
}

impl Server {
    /// Binds the listeners, then starts everything; returns once shards
    /// run. `tern serve` binds first with [`Listeners::bind`] and opens the
    /// store only once that worked; this is the short form for tests and
    /// embedders that already hold a service.
    pub fn start(cfg: &Config, service: Arc<dyn ChatService>) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(cfg)?;
        Self::start_on(cfg, listeners, service)
    }

    /// Starts everything on listeners bound by [`Listeners::bind`]; returns
    /// once shards run.
    pub fn start_on(
        cfg: &Config,
        listeners: Listeners,
        service: Arc<dyn ChatService>,
    ) -> anyhow::Result<Self> {
        cfg.validate()?;
        let session = session_config(cfg);
        session
            .validate()
            .map_err(|e| anyhow::anyhow!("session config: {e}"))?;
        let verifier = Arc::new(Verifier::new(&cfg.auth)?);
        let shards = cfg.shard_count();
        let workers = cfg.backend.workers;
        let metrics = Metrics::new(shards);
        // The word lists are read before anything starts (a bad line stops
        // the start, naming its file and line); reloaded on SIGHUP.
        let filter = crate::filter::ContentFilter::start(&cfg.filter, metrics.filter.clone())
            .context("content filter")?;
        let epoch = Instant::now();
        // Allow/deny lists: read now (a bad entry or file stops the start),
        // again on every SIGHUP (a bad one then keeps the lists in force).
        let lists = Arc::new(
            crate::limits::EdgeLists::load(&cfg.lists, metrics.limits.clone())
                .context("[lists]")?,
        );
        {
            // A weak handle: a server stopped in-process (tests, embedders)
            // leaves a reloader that does nothing.
            let lists = Arc::downgrade(&lists);
            crate::reload::on_hup("lists", move || match lists.upgrade() {
                Some(l) => l.reload().map_err(anyhow::Error::from),
                None => Ok(()),
            });
        }
        let (driver, uring_path, why) = resolve_driver(cfg.shards.driver)?;

        // Every shard accepts on the same socket: one descriptor each
        // (`try_clone`), so a shard's drain `shutdown()` stops accepting for
        // all of them, which is what a drain wants. Which shard accepts does
        // not matter: a connection moves to its user's owner shard after auth.
        let tcp_addr = listeners.tcp_addr();
        let ws_addr = listeners.ws_addr();
        let tcp = listeners.tcp_per_shard(shards)?;
        let ws = listeners.ws_per_shard(shards)?;
        let (tls_addr, wss_addr) = (listeners.tls_addr(), listeners.wss_addr());
        let tls_tcp = per_shard(listeners.tls.as_ref(), shards)?;
        let tls_ws = per_shard(listeners.wss.as_ref(), shards)?;
        // The TLS configuration, shared by the shards; SIGHUP re-reads its
        // files (new handshakes get the new certificate).
        let tls = if tls_addr.is_some() || wss_addr.is_some() {
            let tls =
                crate::tls::TlsServer::load_reporting(&cfg.tls, metrics.tls_cert_expiry.clone())?;
            let reloaded = tls.clone();
            crate::reload::on_hup("tls", move || Ok(reloaded.reload()?));
            Some(tls)
        } else {
            None
        };

        // Doorbells and rings.
        let shard_bells: Vec<_> = (0..shards)
            .map(|_| Doorbell::eventfd())
            .collect::<Result<_, _>>()?;
        // inboxes[j] collects receivers for shard j.
        let mut inboxes: Vec<Vec<mailbox::Receiver<ShardMsg>>> =
            (0..shards).map(|_| Vec::new()).collect();
        let mut to_shards: Vec<Vec<Option<Sender<ShardMsg>>>> =
            (0..shards).map(|_| Vec::new()).collect();
        for (i, row) in to_shards.iter_mut().enumerate() {
            for (j, inbox) in inboxes.iter_mut().enumerate() {
                if i == j {
                    row.push(None);
                } else {
                    let (tx, rx) =
                        mailbox::channel(cfg.shards.ring_entries_max, shard_bells[j].clone());
                    row.push(Some(tx));
                    inbox.push(rx);
                }
            }
        }
        // The node tier, on the Redis store: this node's lease and delivery
        // channel (see docs/cluster.md).
        let node_id = crate::cluster::membership::resolve_node_id(cfg)?;
        let (cluster, mut routers) = if cfg.backend.store == StoreKind::Redis {
            let ClusterParts {
                cluster,
                shard_inboxes,
                routers,
            } = Cluster::start(
                cfg,
                &node_id,
                &shard_bells,
                workers,
                metrics.cluster.clone(),
            )
            .context("joining the cluster in Redis")?;
            for (inbox, rx) in inboxes.iter_mut().zip(shard_inboxes) {
                inbox.push(rx);
            }
            (Some(cluster), routers.into_iter().map(Some).collect())
        } else {
            (None, Vec::new())
        };
        // Control rings (main thread → shard), for drain.
        let mut control = Vec::new();
        for (j, inbox) in inboxes.iter_mut().enumerate() {
            let (tx, rx) = mailbox::channel(16, shard_bells[j].clone());
            control.push(tx);
            inbox.push(rx);
        }
        // Webhooks: the after-event thread, before the workers that feed it.
        let events =
            crate::webhooks::EventFeed::start(&cfg.webhooks, &node_id, metrics.webhooks.clone())
                .context("starting the webhook thread")?;
        // Offline push: the tern-push thread, before the workers that feed it.
        let push = crate::push::PushFeed::start(&cfg.push, service.clone(), metrics.push.clone())
            .context("starting the push thread")?;
        // Workers: spawned first so their doorbells can unpark them.
        let stop_workers = Arc::new(AtomicBool::new(false));
        let mut worker_threads = Vec::new();
        let mut to_backend: Vec<Vec<Sender<bridge::BackendRequest>>> =
            (0..shards).map(|_| Vec::new()).collect();
        // The server API's ring into each worker (crate::api::backend).
        let mut api_rings = Vec::new();
        for w in 0..workers {
            let (setup_tx, setup_rx) = std::sync::mpsc::channel::<WorkerSetup>();
            let service = service.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tern-backend-{w}"))
                .spawn(move || {
                    // The setup arrives once the rings exist (they need our
                    // Thread handle for the doorbell).
                    if let Ok(setup) = setup_rx.recv() {
                        bridge::run_worker(setup, service);
                    }
                })?;
            let bell = Doorbell::thread(handle.thread().clone());
            let mut worker_inbox = Vec::new();
            for row in to_backend.iter_mut() {
                let (tx, rx) = mailbox::channel(cfg.backend.queue_entries_max, bell.clone());
                row.push(tx);
                worker_inbox.push(rx);
            }
            let (api_tx, api_rx) = mailbox::channel(cfg.api.queue_entries_max, bell.clone());
            api_rings.push(api_tx);
            worker_inbox.push(api_rx);
            let mut worker_to_shards = Vec::new();
            for (j, inbox) in inboxes.iter_mut().enumerate() {
                let (tx, rx) =
                    mailbox::channel(cfg.shards.ring_entries_max, shard_bells[j].clone());
                worker_to_shards.push(tx);
                inbox.push(rx);
            }
            setup_tx
                .send(WorkerSetup {
                    inbox: worker_inbox,
                    to_shards: worker_to_shards,
                    bell,
                    batch_max: cfg.backend.batch_max,
                    metrics: metrics.backend.clone(),
                    stop: stop_workers.clone(),
                    remote: routers
                        .get_mut(w)
                        .and_then(Option::take)
                        .map(|r| r.with_login(&cfg.login)),
                    webhooks: worker_hooks(cfg, &node_id, w, events.as_ref(), &metrics)?,
                    filter: filter.clone(),
                    push: push.as_ref().and_then(crate::push::PushFeed::sink),
                })
                .map_err(|_| anyhow::anyhow!("backend worker {w} died at start"))?;
            worker_threads.push(handle);
        }

        // The server API's ring into each shard (device listings).
        let mut api_shard_rings = Vec::new();
        for (j, inbox) in inboxes.iter_mut().enumerate() {
            let (tx, rx) = mailbox::channel(API_SHARD_RING_ENTRIES, shard_bells[j].clone());
            api_shard_rings.push(tx);
            inbox.push(rx);
        }
        let shard_node_id: Arc<str> = node_id.as_str().into();
        let mut tcp = tcp.into_iter();
        let mut ws = ws.into_iter();
        let mut tls_tcp = tls_tcp.into_iter();
        let mut tls_ws = tls_ws.into_iter();
        let mut shard_threads = Vec::new();
        for (id, ((inbox, to), to_backend)) in inboxes
            .into_iter()
            .zip(to_shards)
            .zip(to_backend)
            .enumerate()
        {
            let setup = ShardSetup {
                id,
                shards,
                node_id: shard_node_id.clone(),
                session: session.clone(),
                read_buffer_bytes: cfg.shards.read_buffer_bytes,
                accept_rate: cfg.listen.accept_rate_per_shard,
                connections_max: cfg.shards.connections_max,
                ws_origins: cfg.listen.ws_origins.clone(),
                verifier: verifier.clone(),
                metrics: metrics.shards[id].clone(),
                bell: shard_bells[id].clone(),
                inbox,
                to_shards: to,
                to_backend,
                tcp_listener: tcp.next(),
                ws_listener: ws.next(),
                tls_listener: tls_tcp.next(),
                wss_listener: tls_ws.next(),
                tls: tls.clone(),
                drain: shard::DrainPolicy {
                    kick_rate: cfg.shutdown.kick_rate_of_shard(id, shards),
                    retry_after_min_ms: cfg.shutdown.retry_after_min_ms,
                    retry_after_max_ms: cfg.shutdown.retry_after_max_ms,
                },
                epoch,
                cluster: cluster.is_some(),
                limits: cfg.limits.clone(),
                login: cfg.login.clone(),
                rooms: cfg.rooms.clone(),
                limit_metrics: metrics.limits.clone(),
                lists: lists.clone(),
                uring_buffers: cfg.shards.uring_buffers,
                uring_buffer_bytes: cfg.shards.uring_buffer_bytes,
            };
            shard_threads.push(
                std::thread::Builder::new()
                    .name(format!("tern-shard-{id}"))
                    .spawn(move || shard::run(setup, driver, uring_path))?,
            );
        }

        let ready = Arc::new(AtomicBool::new(true));
        let http = match cfg.listen.http {
            Some(addr) => {
                let media = Arc::new(
                    crate::api::media::MediaService::open(
                        crate::media::MediaConfig {
                            dir: cfg.media.dir_in(&cfg.backend.data_dir),
                            settings: cfg.media.clone(),
                        },
                        verifier.clone(),
                    )
                    .context("opening the media store")?
                    .with_keys(cfg.encryption.load_keys()?)
                    .with_federation(
                        // Checked by `Config::validate`.
                        tern_backend::config::Federation::parse(
                            cfg.chat.tenant_federation.iter().map(String::as_str),
                        )
                        .unwrap_or_default(),
                    )
                    .with_tenant_storage(
                        service.org_store(),
                        // Checked by `Config::validate`.
                        cfg.chat.tenant_storage().unwrap_or_default(),
                    ),
                );
                let api = crate::api::ApiState {
                    keys: Arc::new(crate::api::ApiKeys::new(&cfg.api.keys)),
                    backend: Arc::new(crate::api::ApiBackend::new(
                        std::mem::take(&mut api_rings),
                        Duration::from_millis(cfg.api.backend_timeout_ms),
                    )),
                    node_id: node_id.as_str().into(),
                    ops: Arc::new(
                        crate::api::ApiOps::new(
                            cfg.api_ops.clone(),
                            Some(Arc::new(metrics.clone())),
                            std::mem::take(&mut api_shard_rings),
                        )
                        .with_cluster(cluster.is_some()),
                    ),
                    audit: (cfg.api.audit_entries_max > 0)
                        .then(|| service.audit_log())
                        .flatten()
                        .map(|log| crate::api::audit::Audit {
                            log,
                            keep: cfg.api.audit_entries_max,
                        }),
                    org: service.org_store(),
                    verifier: Some(verifier.clone()),
                };
                let mut api_router = crate::api::router(api).layer(axum::Extension(media));
                if cfg.accounts.enabled {
                    api_router = api_router.layer(axum::Extension(accounts(cfg, &service)?));
                }
                let routes = http::router(HttpState {
                    metrics: metrics.clone(),
                    ready: ready.clone(),
                })
                .merge(api_router)
                // The web chat page and admin console (docs/web.md).
                .merge(crate::web::router(crate::web::WebState::new(
                    cfg, ws_addr, wss_addr,
                )));
                Some(
                    HttpServer::start_with_lists(
                        addr,
                        &cfg.http,
                        routes,
                        metrics.http.clone(),
                        Some(lists.clone()),
                    )
                    .map_err(|error| BindError {
                        listener: "HTTP",
                        addr,
                        error,
                    })?,
                )
            }
            None => None,
        };
        let http_addr = http.as_ref().map(|h| h.addr);
        info!(
            store = %store_label(cfg),
            tcp = %addr_label(tcp_addr),
            ws = %addr_label(ws_addr),
            tls = %addr_label(tls_addr),
            wss = %addr_label(wss_addr),
            http = %addr_label(http_addr),
            shards,
            driver = %driver.label(),
            data_path = %if uring_path { "io_uring" } else { "epoll" },
            why,
            workers,
            node = %node_id,
            "tern serving"
        );
        Ok(Self {
            shard_threads,
            worker_threads,
            control,
            stop_workers,
            ready,
            http,
            cluster,
            events,
            push,
            node_id,
            metrics,
            tcp_addr,
            ws_addr,
            tls_addr,
            wss_addr,
            http_addr,
            deadline: Duration::from_millis(cfg.shutdown.deadline_ms),
        })
    }

    /// Graceful shutdown: readiness flips, shards stop accepting and kick
    /// their connections at a bounded rate; returns when they are empty or
    /// at the deadline (the process then exits regardless).
    pub fn shutdown(mut self) {
        self.ready.store(false, Ordering::Relaxed);
        for tx in &mut self.control {
            let _ = tx.send(ShardMsg::Drain);
        }
        let until = Instant::now() + self.deadline;
        for t in self.shard_threads.drain(..) {
            while !t.is_finished() && Instant::now() < until {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.stop_workers.store(true, Ordering::Release);
        for t in self.worker_threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
        // After the workers, which feed it: what is queued gets its grace.
        if let Some(events) = self.events.take() {
            events.stop();
        }
        if let Some(push) = self.push.take() {
            push.stop();
        }
        // After the shards and workers (which wrote the route changes of
        // the drain): the node leaves.
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        // Last, so /readyz said 503 through the whole drain.
        if let Some(http) = self.http.take() {
            http.stop();
        }
    }
}

/// Worker `w`'s webhooks: its own before-send client and a handle on the
/// event queue; `None` when no webhook is configured.
fn worker_hooks(
    cfg: &Config,
    node_id: &str,
    w: usize,
    events: Option<&crate::webhooks::EventFeed>,
    metrics: &Metrics,
) -> anyhow::Result<Option<crate::webhooks::WorkerHooks>> {
    let before_send = crate::webhooks::BeforeSend::new(
        &cfg.webhooks,
        cfg.session.text_bytes_max,
        format!("{node_id}.{}.w{w}", crate::webhooks::unix_s()),
        metrics.webhooks.clone(),
    )
    .context("starting the before-send hook")?;
    let events = events.and_then(crate::webhooks::EventFeed::sink);
    Ok(
        (before_send.is_some() || events.is_some()).then_some(crate::webhooks::WorkerHooks {
            before_send,
            events,
        }),
    )
}

/// The client listeners (TCP and WebSocket), bound once each.
///
/// Bound without `SO_REUSEPORT`: a second `tern` on the same address fails
/// here with `EADDRINUSE` instead of silently sharing the port (and
/// splitting clients between two stores). `SO_REUSEADDR` stays, so a
/// restart does not wait for the old connections' `TIME_WAIT`.
#[derive(Debug)]
pub struct Listeners {
    tcp: Option<std::net::TcpListener>,
    ws: Option<std::net::TcpListener>,
    /// TCP over TLS.
    tls: Option<std::net::TcpListener>,
    /// WebSocket over TLS.
    wss: Option<std::net::TcpListener>,
}

/// A listener that could not be bound; says which one, where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{listener} listener {addr}: {}", bind_reason(.error))]
pub struct BindError {
    /// `TCP`, `WebSocket`, `TLS` or `WebSocket TLS`.
    pub listener: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the kernel said (shown in the message, not as a source, so it
    /// is printed once).
    pub error: std::io::Error,
}

impl Listeners {
    /// Binds the configured TCP and WebSocket listeners (none where the
    /// config has none). HTTP is bound by the HTTP server.
    pub fn bind(cfg: &Config) -> Result<Self, BindError> {
        let backlog = cfg.listen.backlog;
        Ok(Self {
            tcp: bind_one("TCP", cfg.listen.tcp, backlog)?,
            ws: bind_one("WebSocket", cfg.listen.ws, backlog)?,
            tls: bind_one("TLS", cfg.listen.tls, backlog)?,
            wss: bind_one("WebSocket TLS", cfg.listen.wss, backlog)?,
        })
    }

    /// The bound TCP-over-TLS address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound WebSocket-over-TLS address.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound TCP address (the real port when the config said 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound WebSocket address.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn tcp_per_shard(&self, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
        per_shard(self.tcp.as_ref(), n)
    }

    fn ws_per_shard(&self, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
        per_shard(self.ws.as_ref(), n)
    }
}

/// Binds one non-blocking listener on `addr` (none when `addr` is None).
fn bind_one(
    listener: &'static str,
    addr: Option<SocketAddr>,
    backlog: u32,
) -> Result<Option<std::net::TcpListener>, BindError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(s.into())
    };
    bind().map(Some).map_err(|error| BindError {
        listener,
        addr,
        error,
    })
}

/// One descriptor of the same listening socket per shard.
fn per_shard(
    listener: Option<&std::net::TcpListener>,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let Some(l) = listener else {
        return Ok(Vec::new());
    };
    (0..n).map(|_| l.try_clone()).collect()
}

/// The kernel's reason, with what to check for the common ones.
fn bind_reason(e: &std::io::Error) -> String {
    // An error wrapped by a server library still has the kernel's inside.
    let kind = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .map_or(e.kind(), std::io::Error::kind);
    match kind {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (is another tern running?)".to_owned()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{e} (no interface of this machine has that address)")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("{e} (ports below 1024 need privileges)")
        }
        _ => e.to_string(),
    }
}

/// The driver the shards run, whether their data path is io_uring, and why:
/// `auto` is decided here, once, so the start line says which data path
/// runs. `auto` keeps the epoll data path (on monoio's io_uring runtime
/// where the kernel has it): the io_uring data path becomes the default
/// only once it has measured at least as good (docs/benchmarks.md,
/// "io_uring data path"). `uring` runs the io_uring data path, which needs
/// a ring (`io_uring_setup` fails with ENOSYS without io_uring, EPERM under
/// a seccomp profile), provided buffer rings and multishot receives, all
/// probed ([`shard::probe_uring`]); without them it refuses to start.
fn resolve_driver(driver: Driver) -> std::io::Result<(Driver, bool, String)> {
    let probe = || {
        if !monoio::utils::detect_uring() {
            return Err("io_uring_setup failed (not in this kernel, or forbidden)".to_owned());
        }
        shard::probe_uring().map_err(|e| e.to_string())
    };
    match driver {
        Driver::Auto if monoio::utils::detect_uring() => Ok((
            Driver::Uring,
            false,
            "auto: the io_uring data path is opt-in (--driver uring) until measured".into(),
        )),
        Driver::Auto => {
            let why = "io_uring_setup failed (not in this kernel, or forbidden)";
            info!(%why, "io_uring unavailable; shards use the epoll data path");
            Ok((
                Driver::Epoll,
                false,
                format!("auto: io_uring unavailable ({why})"),
            ))
        }
        Driver::Uring => match probe() {
            Ok(()) => Ok((Driver::Uring, true, "configured".into())),
            Err(why) => Err(std::io::Error::other(format!(
                "driver io_uring: io_uring unavailable ({why}); use --driver epoll or auto"
            ))),
        },
        Driver::Epoll => Ok((Driver::Epoll, false, "configured".into())),
    }
}

/// `embedded (./tern-data)` or `redis (redis://…)` for the start line.
fn store_label(cfg: &Config) -> String {
    match cfg.backend.store {
        StoreKind::Embedded => format!("embedded ({})", cfg.backend.data_dir.display()),
        StoreKind::Redis if cfg.backend.redis_cluster => {
            format!("redis cluster ({})", cfg.backend.redis_urls.join(", "))
        }
        StoreKind::Redis => format!("redis ({})", cfg.backend.redis_urls.join(", ")),
    }
}

/// An address for the start line: `127.0.0.1:7400`, or `off`.
fn addr_label(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

/// Entries of the server API's ring into each shard (device listings; a
/// full ring is 503).
const API_SHARD_RING_ENTRIES: usize = 64;
