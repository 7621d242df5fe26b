//! Typed configuration of `tern serve`: built-in defaults, then a TOML file,
//! then the `TERN_<SECTION>_<KEY>` environment variables (one per key, see
//! [`Config::load`]), then command-line flags (and the variables clap reads
//! for them), later ones winning. `tern config` prints the effective result.
//!
//! Every default sits beside its setting, in [`DEFAULT_TOML`] (printed by
//! `tern config --defaults`) and in the `Default` impls below; a test keeps
//! the two in step.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The defaults, as a commented TOML file (also the reference for operators).
pub const DEFAULT_TOML: &str = include_str!("default_config.toml");

/// Everything `tern serve` can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, announced in `Welcome.node_id` and, on the Redis
    /// store, its name in the cluster (`[A-Za-z0-9._@-]`, at most 64 bytes).
    /// Default empty: on the Redis store, an id generated once and kept in
    /// `<backend.data_dir>/node-id`; on the embedded store, the hostname.
    pub node_id: String,
    /// Client listeners.
    pub listen: ListenConfig,
    /// Shards (one monoio runtime per core).
    pub shards: ShardConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Per-session protocol bounds and timers.
    pub session: SessionSettings,
    /// The backend: store and workers.
    pub backend: BackendSettings,
    /// Chat policy.
    pub chat: ChatSettings,
    /// Logs.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// The HTTP edge: its runtime and limits.
    pub http: HttpSettings,
    /// Many nodes on one Redis (the Redis store only).
    pub cluster: ClusterSettings,
    /// The server API for existing services (`/api/v1`, on the HTTP edge).
    pub api: ApiSettings,
    /// Operator calls of the server API: system senders, lists, broadcasts.
    pub api_ops: ApiOpsSettings,
    /// Media upload and download (`/api/v1/media`, on the HTTP edge).
    pub media: MediaSettings,
    /// Webhooks: the before-send hook and the after-event feed.
    pub webhooks: WebhookSettings,
    /// Local accounts: register and log in with a password (off by default).
    pub accounts: AccountsSettings,
    /// Rate limits of the client listeners: requests, messages, logins,
    /// connections per IP, flapping (docs/security.md).
    pub limits: LimitsSettings,
    /// Allow and deny lists by IP/CIDR, for the client listeners and the
    /// HTTP edge (docs/security.md).
    pub lists: ListsSettings,
    /// The sensitive-word filter on client sends and group texts.
    pub filter: FilterSettings,
    /// Encryption at rest of message contents and media (off by default).
    pub encryption: EncryptionSettings,
    /// TLS of the `listen.tls` and `listen.wss` listeners.
    pub tls: TlsSettings,
    /// Message edit: the window and the edits a message may have.
    pub edit: EditSettings,
    /// Full-text search (issue 19): on or off, the indexer's interval.
    pub search: SearchSettings,
    /// Login policies per platform class and remote logout.
    pub login: LoginSettings,
    /// Offline push to phones through APNs and FCM (off by default).
    pub push: PushSettings,
    /// Rooms and broadcast channels (issue 19): the kept window and the
    /// bounds of the shards' subscription maps.
    pub rooms: RoomsSettings,
}

/// Where clients and operators connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP clients (length-prefixed frames). Default `127.0.0.1:7400`.
    /// `host:port` with a host name is resolved once, at start, to its
    /// first address (see [`resolve_addr`]).
    #[serde(deserialize_with = "de_addr")]
    pub tcp: Option<SocketAddr>,
    /// WebSocket clients. Default `127.0.0.1:7401`; none to disable.
    #[serde(deserialize_with = "de_addr")]
    pub ws: Option<SocketAddr>,
    /// HTTP: `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:7480`.
    #[serde(deserialize_with = "de_addr")]
    pub http: Option<SocketAddr>,
    /// TCP clients over TLS (the same frames inside TLS records), with the
    /// `[tls]` certificate. Default none.
    #[serde(deserialize_with = "de_addr")]
    pub tls: Option<SocketAddr>,
    /// WebSocket clients over TLS (`wss://`: the upgrade after the TLS
    /// handshake), with the `[tls]` certificate. Default none.
    #[serde(deserialize_with = "de_addr")]
    pub wss: Option<SocketAddr>,
    /// Listen backlog of each listener. Default 4096.
    pub backlog: u32,
    /// Accepts per second per shard before accepting pauses (absorbs
    /// reconnect storms at a bounded rate). Default 20000.
    pub accept_rate_per_shard: u32,
    /// Origins allowed to open WebSocket connections; empty allows any
    /// (non-browser clients send none). Default empty.
    pub ws_origins: Vec<String>,
}

/// How many shards, on which driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// Number of shards; 0 means one per available core. Default 0.
    pub count: usize,
    /// `auto` (io_uring, falling back to epoll where unavailable), `uring`
    /// or `epoll`. Default `auto`.
    pub driver: Driver,
    /// Connections one shard holds before it refuses new ones. Default 1000000.
    pub connections_max: usize,
    /// Entries of each shard→shard and backend→shard ring. Each slot is 80
    /// bytes and there are N·(N−1) + N·workers rings, all touched once
    /// traffic wraps them, so this is fixed memory (2 shards, 1 worker:
    /// 4 rings, 640 KiB at 2048). A full ring makes its producer wait
    /// (back-pressure), never drops. Default 2048: a shard drains up to 1024
    /// items per turn.
    pub ring_entries_max: usize,
    /// Size of each shard's shared read buffer, in bytes. Default 65536.
    pub read_buffer_bytes: usize,
    /// Provided buffers of each shard's ring on the io_uring data path: a
    /// power of two, 1..=32768. Receives take one each and give it back
    /// once their bytes are fed; when all are taken, receives wait
    /// (back-pressure, the bytes stay in the sockets). Default 128.
    pub uring_buffers: u16,
    /// Size of each provided buffer, in bytes (one receive reads at most
    /// this). Resident only once written. Default 16384.
    pub uring_buffer_bytes: u32,
}

/// The I/O driver of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring where the kernel allows it, else epoll (logged).
    Auto,
    /// io_uring only; fail to start without it.
    Uring,
    /// epoll only.
    Epoll,
}

impl Driver {
    /// The name operators know: `auto`, `io_uring` or `epoll`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Token verification (JWT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The pinned algorithm: `HS256`, `RS256` or `EdDSA`. Default `HS256`.
    pub algorithm: String,
    /// HS256 secret. Prefer `TERN_JWT_SECRET` to a file. Default empty: every
    /// token fails until one is set.
    pub jwt_secret: String,
    /// PEM public key file for RS256/EdDSA.
    pub public_key_file: Option<PathBuf>,
    /// Required `aud`, when set. Default none.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds. Default 30.
    pub leeway_secs: u64,
    /// Required `iss`, when set (every token, JWKS or not). Default none.
    pub issuer: Option<String>,
    /// A JWKS file of the issuer's public keys: a token naming a `kid` is
    /// verified with that key (RS256, EdDSA or ES256, pinned per key).
    /// Default none.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS fetched over `http://` or `https://` (like `jwks_file`; not
    /// both). Default none.
    pub jwks_url: Option<String>,
    /// PEM roots that an `https://` `jwks_url` is verified against (a
    /// private CA), instead of the system's. Default none: system roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// The JWKS is read again every this many seconds. Default 300.
    pub jwks_refresh_secs: u64,
    /// An unknown `kid` reads the JWKS again, at most once per this many
    /// seconds. Default 10.
    pub jwks_refresh_min_secs: u64,
}

/// Protocol bounds and timers of every session (see `tern_protocol::session`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// A new connection must authenticate within this. Default 10000.
    pub auth_timeout_ms: u64,
    /// Announced ping interval. Default 30000.
    pub heartbeat_interval_ms: u64,
    /// Close after this share of the interval in silence (150..=300). Default 200.
    pub heartbeat_timeout_factor_pct: u32,
    /// Largest frame accepted, bytes. Default 65536.
    pub frame_bytes_max: usize,
    /// Largest text content, bytes. Default 16384.
    pub text_bytes_max: usize,
    /// Deliver frames in flight per connection before waiting for acks. Default 256.
    pub unacked_window_max: usize,
    /// Frames queued per connection before it counts as a slow consumer. Default 256.
    pub outbox_frames_max: usize,
    /// Bytes queued per connection before it counts as a slow consumer. Default 1048576.
    pub outbox_bytes_max: usize,
}

/// The backend behind the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSettings {
    /// Where state lives: `embedded` (one node, on local disk) or `redis`.
    /// Default `embedded`.
    pub store: StoreKind,
    /// Directory of the embedded store. Default `./tern-data`.
    pub data_dir: PathBuf,
    /// Redis URLs (`redis://host:port`): one server, or the seed nodes of a
    /// cluster when `redis_cluster` is true. Default none.
    pub redis_urls: Vec<String>,
    /// The Redis URLs are Redis Cluster seed nodes. Default false.
    pub redis_cluster: bool,
    /// Backend worker threads. Default 1.
    pub workers: usize,
    /// Requests a worker takes in one batch (one durable commit). Default 1024.
    pub batch_max: usize,
    /// Entries of each shard→backend queue (a full one pauses reading from
    /// the connections that want to add to it; presence updates wait in
    /// order). 88 bytes a slot, touched once traffic wraps it. Default 2048:
    /// twice a worker's batch.
    pub queue_entries_max: usize,
    /// Most members a group may have, owner included; an invite or create
    /// beyond it is refused with `ERROR_CODE_LIMIT_REACHED`. Lowering it
    /// keeps existing larger groups (they only cannot grow). Default 10000.
    pub group_members_max: u32,
    /// Largest page of a `sync` or `history` answer, in entries; announced
    /// to clients in `Welcome.limits`. Default 200.
    pub page_entries_max: u32,
    /// Embedded store: while the data dir's filesystem has fewer free bytes
    /// than this, writes are refused with `ERROR_CODE_OVERLOADED` (nothing
    /// stored; `retry_after_ms` 1000) instead of reaching the disk, where a
    /// failed write would stop the store until a restart
    /// (docs/reliability.md, "Disk full"). 0: off. Default 67108864 (64 MiB).
    pub disk_free_min_bytes: u64,
}

/// Chat policy (the backend's settings an operator usually changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// How long a sender may recall a message (group admins: any time).
    /// Default 120000.
    pub recall_window_ms: u64,
    /// Whether users who are not friends may message each other. Default true.
    pub allow_non_friend_messages: bool,
    /// How long a call rings a participant who does not answer before they
    /// are MISSED (docs/protocol.md, "Calls"). Default 30000.
    pub call_ring_timeout_ms: u64,
    /// Calls in progress a node owns at most (those whose invite it took);
    /// an invite beyond gets `LIMIT_REACHED`. Default 10000.
    pub calls_max: u32,
    /// The lease of a call in progress in the store, renewed by the node
    /// that took the invite every third of it: if that node dies, its
    /// calls are gone this long after (docs/cluster.md, "Calls across
    /// nodes"). At least 3000. Default 60000.
    pub call_lease_ms: u64,
    /// Pairs of tenants whose users may talk to each other, `"a:b"`
    /// (docs/tenants.md, "Federation"); every other pair stays apart.
    /// Default none.
    pub tenant_federation: Vec<String>,
    /// Per-tenant message rates on each node, `"acme:500"`: that tenant's
    /// users send at most 500 messages a second through one node together
    /// (a send past it gets `RATE_LIMITED`; docs/tenants.md, "Limits").
    /// Default none.
    pub tenant_messages_per_second: Vec<String>,
    /// Users each named tenant may have, `"acme:1000"`: a user takes a
    /// seat at their first login and keeps it until freed
    /// (`DELETE /api/v1/users/{user_id}/seat`); a login without a seat when
    /// all are taken is kicked `TENANT_FULL` (docs/tenants.md, "Limits").
    /// Default none.
    pub tenant_users_max: Vec<String>,
    /// Media bytes each named tenant may store, `"acme:10737418240"`: an
    /// upload that would pass it is refused `507 TENANT_STORAGE_FULL`
    /// (docs/tenants.md, "Limits"). Default none.
    pub tenant_storage_bytes_max: Vec<String>,
}

impl ChatSettings {
    /// `tenant_messages_per_second` parsed: `(tenant, rate)`, each tenant
    /// once, rates above 0.
    pub fn tenant_rates(&self) -> Result<Vec<(String, u32)>, String> {
        per_tenant(&self.tenant_messages_per_second, "messages a second")
    }

    /// `tenant_users_max` parsed, as [`ChatSettings::tenant_rates`].
    pub fn tenant_seats(&self) -> Result<Vec<(String, u64)>, String> {
        per_tenant(&self.tenant_users_max, "users")
    }

    /// `tenant_storage_bytes_max` parsed, as [`ChatSettings::tenant_rates`].
    pub fn tenant_storage(&self) -> Result<Vec<(String, u64)>, String> {
        per_tenant(&self.tenant_storage_bytes_max, "bytes")
    }
}

/// `"<tenant>:<n>"` items: each tenant once, `n` a whole number above 0.
fn per_tenant<N: std::str::FromStr + PartialOrd + Default>(
    items: &[String],
    unit: &str,
) -> Result<Vec<(String, N)>, String> {
    let mut out: Vec<(String, N)> = Vec::new();
    for item in items {
        let (t, n) = item
            .split_once(':')
            .ok_or_else(|| format!("{item:?}: expected <tenant>:<{unit}>"))?;
        tern_protocol::ids::check_tenant(t)
            .map_err(|_| format!("{item:?}: {t:?} is not 1 to 32 of [a-z0-9-]"))?;
        let n: N = n
            .parse()
            .ok()
            .filter(|n| *n > N::default())
            .ok_or_else(|| format!("{item:?}: {unit} must be a whole number above 0"))?;
        if out.iter().any(|(o, _)| o == t) {
            return Err(format!("{item:?}: tenant {t:?} is named twice"));
        }
        out.push((t.to_owned(), n));
    }
    Ok(out)
}

impl ChatSettings {
    /// Whether every tenant setting parses (`Config::validate`).
    fn check_tenants(&self) -> Result<(), (&'static str, String)> {
        tern_backend::config::Federation::parse(self.tenant_federation.iter().map(String::as_str))
            .map_err(|why| ("chat.tenant_federation", why))?;
        self.tenant_rates()
            .map_err(|why| ("chat.tenant_messages_per_second", why))?;
        self.tenant_seats()
            .map_err(|why| ("chat.tenant_users_max", why))?;
        self.tenant_storage()
            .map_err(|why| ("chat.tenant_storage_bytes_max", why))?;
        Ok(())
    }
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            recall_window_ms: 120_000,
            allow_non_friend_messages: true,
            call_ring_timeout_ms: 30_000,
            calls_max: 10_000,
            call_lease_ms: 60_000,
            tenant_federation: Vec::new(),
            tenant_messages_per_second: Vec::new(),
            tenant_users_max: Vec::new(),
            tenant_storage_bytes_max: Vec::new(),
        }
    }
}

/// Graceful shutdown on SIGTERM/SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Give up waiting and exit after this. Default 30000. A drain of N
    /// connections takes about N / `kick_rate_per_node` seconds: keep this
    /// above that (connections still open at the deadline are closed
    /// without a kick when the process exits).
    pub deadline_ms: u64,
    /// `Kick{SHUTDOWN}` frames per second for the whole node while draining,
    /// split evenly over the shards (each shard gets at least 1/s).
    /// Default 5000: 100,000 connections drain in 20 s.
    pub kick_rate_per_node: u32,
    /// Each kick's `retry_after_ms` is drawn uniformly from
    /// `retry_after_min_ms..=retry_after_max_ms`, so clients kicked in the
    /// same instant come back spread over the window. Default 500.
    pub retry_after_min_ms: u32,
    /// Upper end of the `retry_after_ms` window; must be at least
    /// `retry_after_min_ms`. Default 5000.
    pub retry_after_max_ms: u32,
}

impl ShutdownConfig {
    /// The kick rate of shard `id` of `shards`: the node's rate split
    /// evenly (the remainder to the first shards), at least 1 per second.
    pub fn kick_rate_of_shard(&self, id: usize, shards: usize) -> u32 {
        let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        let extra = u32::from(id < self.kick_rate_per_node % shards);
        (self.kick_rate_per_node / shards + extra).max(1)
    }
}

/// Logs (to stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human lines; coloured only when stderr is a terminal and
    /// `NO_COLOR` is unset) or `json` (one object per line). Default `text`.
    pub format: LogFormat,
    /// Which events: a default level and `target=level` directives
    /// (`info`, `debug`, `info,tern_gateway::shard=debug`; tracing's
    /// `Targets` syntax, no span or field filters); `TERN_LOG` overrides it.
    /// Default `info,fjall=warn,lsm_tree=warn` (the storage engine's
    /// start-up chatter stays out).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: LOG_FILTER_DEFAULT.into(),
        }
    }
}

/// The default log filter.
pub const LOG_FILTER_DEFAULT: &str = "info,fjall=warn,lsm_tree=warn";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human text.
    Text,
    /// JSON lines.
    Json,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 7400))),
            ws: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
            tls: None,
            wss: None,
            backlog: 4096,
            accept_rate_per_shard: 20_000,
            ws_origins: Vec::new(),
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            count: 0,
            driver: Driver::Auto,
            connections_max: 1_000_000,
            ring_entries_max: 2_048,
            read_buffer_bytes: 65_536,
            uring_buffers: 128,
            uring_buffer_bytes: 16_384,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            jwt_secret: String::new(),
            public_key_file: None,
            audience: None,
            leeway_secs: 30,
            issuer: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            jwks_refresh_min_secs: 10,
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            auth_timeout_ms: 10_000,
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_factor_pct: 200,
            frame_bytes_max: 65_536,
            text_bytes_max: 16_384,
            unacked_window_max: 256,
            outbox_frames_max: 256,
            outbox_bytes_max: 1 << 20,
        }
    }
}

/// Which store the backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store in `backend.data_dir` (fjall).
    Embedded,
    /// Redis or Redis Cluster at `backend.redis_urls` (AOF `appendfsync
    /// always` required; see docs/redis.md).
    Redis,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("./tern-data"),
            redis_urls: Vec::new(),
            redis_cluster: false,
            workers: 1,
            batch_max: 1024,
            queue_entries_max: 2_048,
            group_members_max: 10_000,
            page_entries_max: 200,
            disk_free_min_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deadline_ms: 30_000,
            kick_rate_per_node: 5_000,
            retry_after_min_ms: 500,
            retry_after_max_ms: 5_000,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes below are part of the message and deliberately not
    // `source`s: a report that prints the chain would say them twice.
    /// The file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("bad config file {}: {error}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        error: toml::de::Error,
    },
    /// `--dev` together with settings that look like production.
    #[error("--dev refused: {0}")]
    DevRefused(String),
    /// A setting is out of range.
    #[error("invalid setting {name}: {why}")]
    Invalid {
        /// The setting, as `section.key`.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A `TERN_*` variable that names no config key (a typo must not be
    /// silently ignored).
    #[error(
        "unknown environment variable {var}: no config key is called that{hint} (key `section.key` \
         is TERN_SECTION_KEY, listed by `tern config --defaults`; the other variables are {reserved})"
    )]
    EnvUnknown {
        /// The variable.
        var: String,
        /// `; did you mean TERN_…?` when a key's variable is a typo away.
        hint: String,
        /// The variables the command line reads itself.
        reserved: String,
    },
    /// A `TERN_*` variable whose value does not fit its key.
    #[error("environment variable {var} (config key {key}): {why}")]
    EnvValue {
        /// The variable.
        var: String,
        /// The key, as `section.key`.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// The HS256 secret of `tern serve --dev` (and `tern token --dev`). Public
/// on purpose: development mode exists so that a newcomer's server and
/// `tern-cli` agree without setting anything up. Never a production secret:
/// [`Config::apply_dev_mode`] refuses to run with anything that looks like
/// production.
pub const DEV_JWT_SECRET: &str = "tern-dev-secret";

impl Config {
    /// Development mode (`tern serve --dev`): tokens are signed with
    /// [`DEV_JWT_SECRET`]. Refused with a secret or key of its own or with a
    /// listener off loopback, since the secret is public.
    pub fn apply_dev_mode(&mut self) -> Result<(), ConfigError> {
        let refuse = |why: String| Err(ConfigError::DevRefused(why));
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret != DEV_JWT_SECRET {
            return refuse(
                "a JWT secret is set (--jwt-secret, TERN_JWT_SECRET or auth.jwt_secret); \
                 --dev uses its own public one. Drop one or the other"
                    .into(),
            );
        }
        if self.auth.algorithm != "HS256" || self.auth.public_key_file.is_some() {
            return refuse(format!(
                "auth.algorithm is {} with a key file; --dev signs HS256 with a public secret",
                self.auth.algorithm
            ));
        }
        for (name, addr) in [
            ("listen.tcp", self.listen.tcp),
            ("listen.ws", self.listen.ws),
            ("listen.http", self.listen.http),
            ("listen.tls", self.listen.tls),
            ("listen.wss", self.listen.wss),
        ] {
            if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                return refuse(format!(
                    "{name} is {a}, off loopback; the development secret is public, so \
                     --dev listens on 127.0.0.1 or ::1 only"
                ));
            }
        }
        self.auth.jwt_secret = DEV_JWT_SECRET.into();
        Ok(())
    }

    /// Reads a TOML file over the defaults (no environment: see
    /// [`Config::load`]).
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::load(Some(path), [], &[])
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, numbers and options cannot fail.
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// [`Config::to_toml`] with every secret replaced by
    /// `<redacted: N bytes>` (what `tern config` prints): string values of
    /// keys named like a secret (`*secret*`, `*password*`, `key`, `*token*`)
    /// and the password of any URL (`redis://user:pass@host`). By key name,
    /// so settings added later are covered without a list to keep.
    pub fn to_toml_redacted(&self) -> String {
        let mut v = toml::Value::try_from(self).expect("config serializes");
        redact(&mut v, "");
        toml::to_string_pretty(&v).expect("config serializes")
    }

    /// The number of shards to run: `shards.count`, or one per core.
    pub fn shard_count(&self) -> usize {
        match self.shards.count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Checks ranges and combinations that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        let s = &self.session;
        if !(150..=300).contains(&s.heartbeat_timeout_factor_pct) {
            return invalid("session.heartbeat_timeout_factor_pct", "must be 150..=300");
        }
        if s.heartbeat_interval_ms == 0 || s.auth_timeout_ms == 0 {
            return invalid("session", "intervals and timeouts must be > 0");
        }
        if s.frame_bytes_max < 1024 || s.frame_bytes_max > 16 << 20 {
            return invalid("session.frame_bytes_max", "must be 1 KiB..=16 MiB");
        }
        if s.outbox_frames_max == 0 || s.outbox_bytes_max < s.frame_bytes_max {
            return invalid(
                "session.outbox_bytes_max",
                "must hold at least one largest frame",
            );
        }
        if !self.shards.uring_buffers.is_power_of_two() || self.shards.uring_buffers > 32_768 {
            return invalid("shards.uring_buffers", "must be a power of two up to 32768");
        }
        if !(256..=1 << 20).contains(&self.shards.uring_buffer_bytes) {
            return invalid("shards.uring_buffer_bytes", "must be 256..=1048576");
        }
        if self.shards.read_buffer_bytes < 4096 {
            return invalid("shards.read_buffer_bytes", "must be at least 4096");
        }
        if self.shards.ring_entries_max == 0 || self.backend.queue_entries_max == 0 {
            return invalid("shards.ring_entries_max", "rings and queues need room");
        }
        if self.backend.workers == 0 || self.backend.batch_max == 0 {
            return invalid("backend.workers", "need at least one worker and batch of 1");
        }
        if self.shutdown.kick_rate_per_node == 0 {
            return invalid("shutdown.kick_rate_per_node", "must be > 0");
        }
        if self.shutdown.retry_after_min_ms > self.shutdown.retry_after_max_ms {
            return invalid(
                "shutdown.retry_after_max_ms",
                "must be at least shutdown.retry_after_min_ms",
            );
        }
        if self.rooms.recent_max == 0
            || self.rooms.per_connection_max == 0
            || self.rooms.per_shard_max == 0
        {
            return invalid("rooms", "recent_max and the join bounds must be > 0");
        }
        if self.listen.accept_rate_per_shard == 0 {
            return invalid("listen.accept_rate_per_shard", "must be > 0");
        }
        if self.backend.store == StoreKind::Redis && self.backend.redis_urls.is_empty() {
            return invalid(
                "backend.redis_urls",
                "the redis store needs at least one URL",
            );
        }
        let b = &self.backend;
        for (name, v) in [
            ("backend.group_members_max", b.group_members_max),
            ("backend.page_entries_max", b.page_entries_max),
        ] {
            if v == 0 {
                return invalid(name, "must be at least 1");
            }
        }
        if let Err(e) = self
            .log
            .filter
            .parse::<tracing_subscriber::filter::Targets>()
        {
            return Err(ConfigError::Invalid {
                name: "log.filter",
                why: e.to_string(),
            });
        }
        if !matches!(self.auth.algorithm.as_str(), "HS256" | "RS256" | "EdDSA") {
            return invalid("auth.algorithm", "must be HS256, RS256 or EdDSA");
        }
        if self.auth.jwks_file.is_some() && self.auth.jwks_url.is_some() {
            return invalid("auth.jwks_url", "set jwks_file or jwks_url, not both");
        }
        if let Some(url) = &self.auth.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("auth.jwks_url", "must be an http:// or https:// URL");
            }
        }
        if self.auth.jwks_refresh_secs == 0 {
            return invalid("auth.jwks_refresh_secs", "must be at least 1");
        }
        self.accounts.validate()?;
        self.tls
            .validate(self.listen.tls.is_some() || self.listen.wss.is_some())?;
        self.http.validate()?;
        if self.backend.store == StoreKind::Embedded && self.cluster != ClusterSettings::default() {
            return invalid(
                "cluster",
                "cluster settings need --store redis: the embedded store is single-node",
            );
        }
        if !self.node_id.is_empty()
            && (self.node_id.len() > NODE_ID_BYTES_MAX
                || tern_protocol::ids::check_id(&self.node_id).is_err()
                || self.node_id.contains(tern_protocol::ids::TENANT_SEPARATOR))
        {
            return invalid("node_id", "must be 1..=64 bytes of [A-Za-z0-9._@-]");
        }
        if let Err((name, why)) = self.chat.check_tenants() {
            return invalid(name, &why);
        }
        self.cluster.validate()?;
        self.api.validate()?;
        self.api_ops.validate()?;
        self.media.validate()?;
        self.webhooks.validate()?;
        self.push.validate()?;
        self.limits.validate()?;
        self.lists.validate()?;
        self.filter.validate()?;
        Ok(())
    }
}

/// Longest node id, bytes.
pub const NODE_ID_BYTES_MAX: usize = 64;

// ---- [cluster]: many nodes on one Redis ----

/// Membership, route table and delivery channel of a node on the Redis
/// store (see docs/cluster.md). Refused with the embedded store unless left
/// at its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// A node's lease in Redis: renewed every third of it; a node whose
    /// lease lapsed is dead to the others (its routes are ignored, then
    /// cleaned up). Default 10000.
    pub node_lease_ms: u64,
    /// How often a node re-reads the list of live nodes. Default 1000.
    pub nodes_refresh_ms: u64,
    /// Records kept in each node's delivery stream (`XADD MAXLEN ~`).
    /// Default 100000.
    pub channel_records_max: u64,
    /// Records taken by one `XREAD`. Default 256.
    pub channel_read_batch_max: usize,
    /// How long one `XREAD` blocks (it is also how late a stop is seen).
    /// Default 500.
    pub channel_block_ms: u64,
    /// Timeout of one Redis round trip of the cluster threads and of the
    /// workers' route reads. Default 2000.
    pub redis_timeout_ms: u64,
    /// Users each backend worker keeps in its route cache (user → the
    /// nodes of their devices, kept true by the route log; docs/cluster.md,
    /// "Route cache"); a full cache is emptied. About 150 B per offline
    /// user, more per route held. 0 reads every recipient's routes on every
    /// batch. Default 100000.
    pub route_cache_entries_max: usize,
    /// How long a cached entry is used. Not needed for correctness (logins
    /// are logged); it bounds how long a removed route still costs a record
    /// to a node that finds nobody. Default 10000.
    pub route_cache_ttl_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_lease_ms: 10_000,
            nodes_refresh_ms: 1_000,
            channel_records_max: 100_000,
            channel_read_batch_max: 256,
            channel_block_ms: 500,
            redis_timeout_ms: 2_000,
            route_cache_entries_max: 100_000,
            route_cache_ttl_ms: 10_000,
        }
    }
}

impl ClusterSettings {
    /// Checks the ranges of the `[cluster]` settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        if self.node_lease_ms < 300 {
            return invalid("cluster.node_lease_ms", "must be at least 300");
        }
        if self.nodes_refresh_ms == 0 || self.nodes_refresh_ms > self.node_lease_ms {
            return invalid("cluster.nodes_refresh_ms", "must be 1..=node_lease_ms");
        }
        if self.channel_records_max == 0 || self.channel_read_batch_max == 0 {
            return invalid("cluster.channel_records_max", "must be > 0");
        }
        if self.channel_block_ms == 0 || self.redis_timeout_ms <= self.channel_block_ms {
            return invalid(
                "cluster.redis_timeout_ms",
                "must be > channel_block_ms > 0 (an XREAD blocks that long)",
            );
        }
        if self.route_cache_entries_max > 0 && self.route_cache_ttl_ms == 0 {
            return invalid(
                "cluster.route_cache_ttl_ms",
                "must be > 0 (or route_cache_entries_max = 0 to disable the cache)",
            );
        }
        Ok(())
    }
}

// ---- [http]: the HTTP edge (axum on hyper, off the shards) ----

/// The HTTP edge (`/metrics`, `/healthz`, `/readyz`): the size of its
/// runtime and the limit on everything a client can hold. Each limit says
/// what happens at it; see docs/gateway.md, "HTTP".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Threads of the HTTP runtime (tokio workers, never a shard thread).
    /// Default 1.
    pub worker_threads: usize,
    /// Largest request head (request line and headers), bytes; a larger one
    /// is answered 431 and the connection closed. At least 8192 (hyper's
    /// smallest read buffer). Default 16384.
    pub header_bytes_max: usize,
    /// Largest request body, bytes; a larger one is answered 413.
    /// Default 1048576.
    pub body_bytes_max: usize,
    /// HTTP connections open at once; one more is accepted, answered 503
    /// (best effort) and closed at once. Default 1024.
    pub connections_max: usize,
    /// A request head must be complete within this, counted from the
    /// connection's start or the end of the previous response (so it also
    /// bounds a keep-alive wait); beyond it the connection is closed without
    /// an answer. Default 10000.
    pub header_read_timeout_ms: u64,
    /// A request must be answered within this, from its head to the
    /// handler's response (reading the body included); beyond it the
    /// answer is 408 and the connection closes. Default 30000.
    pub request_timeout_ms: u64,
    /// A connection with no request in progress on which no byte moved
    /// either way for this long is closed (the keep-alive idle timeout;
    /// `header_read_timeout_ms` cuts a keep-alive wait too, whichever is
    /// shorter). Default 5000.
    pub idle_timeout_ms: u64,
    /// A connection whose response writes made no progress for this long
    /// (the client does not read) is dropped. Default 10000.
    pub write_stall_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            worker_threads: 1,
            header_bytes_max: 16_384,
            body_bytes_max: 1 << 20,
            connections_max: 1_024,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 5_000,
            write_stall_timeout_ms: 10_000,
        }
    }
}

impl HttpSettings {
    /// Hyper's smallest read buffer: a smaller head limit cannot be set.
    pub const HEADER_BYTES_MIN: usize = 8_192;

    /// Checks the ranges of the `[http]` settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        if !(1..=64).contains(&self.worker_threads) {
            return invalid("http.worker_threads", "must be 1..=64");
        }
        if !(Self::HEADER_BYTES_MIN..=1 << 20).contains(&self.header_bytes_max) {
            return invalid("http.header_bytes_max", "must be 8 KiB..=1 MiB");
        }
        if self.body_bytes_max > 1 << 30 {
            return invalid("http.body_bytes_max", "must be at most 1 GiB");
        }
        // The semaphore that counts connections holds at most this many.
        if !(1..=1 << 20).contains(&self.connections_max) {
            return invalid("http.connections_max", "must be 1..=1048576");
        }
        if self.header_read_timeout_ms == 0
            || self.request_timeout_ms == 0
            || self.idle_timeout_ms == 0
            || self.write_stall_timeout_ms == 0
        {
            return invalid("http", "timeouts must be > 0");
        }
        Ok(())
    }
}

/// Resolves `host:port` (or `ip:port`) to its first address: what
/// `--listen localhost:7400` and `tcp = "localhost:7400"` bind to.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not host:port or cannot be resolved: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// An optional listen address that may name a host.
fn de_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| resolve_addr(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// The hostname (the embedded store's node id when none is set).
pub fn hostname_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tern".into())
}

// ---- the environment overlay: every key is also `TERN_<SECTION>_<KEY>` ----
//
// The keys are not listed by hand: they are the leaves of the defaults'
// `toml::Value` tree (plus the optional keys, absent from that tree, that
// DEFAULT_TOML documents as commented-out `# key = example` lines), so a key
// added to a section struct and to DEFAULT_TOML gets its variable for free.

/// The prefix of every Tern environment variable.
pub const ENV_PREFIX: &str = "TERN_";

/// Variables of the other Tern tools (`tern-cli`), read by them and not by
/// `tern serve`, which therefore ignores them rather than refusing them as
/// unknown keys: an operator's shell may well set both.
pub const ENV_OF_OTHER_TOOLS: [&str; 5] = [
    "TERN_SERVER",
    "TERN_TOKEN",
    "TERN_HTTP_URL",
    "TERN_USER",
    "TERN_DEVICE",
];

/// One config key and its environment variable.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvKey {
    /// The key's path: `["node_id"]`, `["http", "body_bytes_max"]`.
    pub path: Vec<String>,
    /// `TERN_` and the path joined by `_`, upper case.
    pub var: String,
    /// The default value (for an optional key: the documented example),
    /// whose TOML type the variable is parsed with.
    pub default: toml::Value,
}

impl EnvKey {
    /// The key as written in messages: `http.body_bytes_max`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// Every key of [`Config`] with its variable, in DEFAULT_TOML's order where
/// it has one.
pub fn env_keys() -> Vec<EnvKey> {
    // Serializing plain structs of strings, numbers and options cannot fail.
    let toml::Value::Table(mut tree) =
        toml::Value::try_from(Config::default()).expect("config serializes")
    else {
        unreachable!("a struct serializes to a table");
    };
    for (section, key, example) in commented_keys() {
        let table = match section {
            Some(s) => match tree.get_mut(&s) {
                Some(toml::Value::Table(t)) => t,
                _ => continue,
            },
            None => &mut tree,
        };
        table.entry(key).or_insert(example);
    }
    let mut keys = Vec::new();
    walk_keys(&mut Vec::new(), &tree, &mut keys);
    keys
}

fn walk_keys(path: &mut Vec<String>, table: &toml::Table, out: &mut Vec<EnvKey>) {
    for (name, value) in table {
        path.push(name.clone());
        match value {
            toml::Value::Table(t) => walk_keys(path, t, out),
            v => out.push(EnvKey {
                var: format!("{ENV_PREFIX}{}", path.join("_").to_uppercase()),
                path: path.clone(),
                default: v.clone(),
            }),
        }
        path.pop();
    }
}

/// The `# key = example` lines of DEFAULT_TOML: optional keys, unset by
/// default, with their section (`None`: top level).
fn commented_keys() -> Vec<(Option<String>, String, toml::Value)> {
    let mut section = None;
    let mut out = Vec::new();
    for line in DEFAULT_TOML.lines() {
        if let Some(name) = section_header(line) {
            section = Some(name);
        } else if let Some(rest) = line.strip_prefix("# ")
            && let Some(key) = key_of(rest)
            && let Ok(mut t) = toml::from_str::<toml::Table>(rest)
            && let Some(v) = t.remove(key)
        {
            out.push((section.clone(), key.to_owned(), v));
        }
    }
    out
}

/// `[name]` at the start of a line (a comment may follow).
fn section_header(line: &str) -> Option<String> {
    let rest = line.strip_prefix('[')?;
    let end = rest.find(']')?;
    Some(rest[..end].trim().to_owned())
}

/// The bare key of a `key = value` line (prose in a comment has none).
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim_end();
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    bare.then_some(key)
}

/// DEFAULT_TOML with each key's environment variable added to its comment:
/// what `tern config --defaults` prints.
pub fn defaults_with_env() -> String {
    let vars: std::collections::HashMap<String, String> = env_keys()
        .into_iter()
        .map(|k| (k.dotted(), k.var))
        .collect();
    let mut section: Option<String> = None;
    let mut out = String::with_capacity(DEFAULT_TOML.len() * 2);
    for line in DEFAULT_TOML.lines() {
        if let Some(name) = section_header(line) {
            section = Some(name);
        }
        let body = line.strip_prefix("# ").unwrap_or(line);
        let var = key_of(body).and_then(|key| {
            let dotted = section
                .as_ref()
                .map_or_else(|| key.to_owned(), |s| format!("{s}.{key}"));
            vars.get(&dotted)
        });
        match var {
            // After the line's own comment when it has one (the line still
            // parses with the text added), else in a comment of its own.
            Some(var) => {
                let after = format!("{line}   env {var}");
                if line.starts_with('#') || toml::from_str::<toml::Table>(&after).is_ok() {
                    out.push_str(&after);
                } else {
                    out.push_str(&format!("{line}  # env {var}"));
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Config {
    /// Loads the configuration: the defaults, then the file at `path` if
    /// any, then the `TERN_*` variables among `vars` (name, value), each
    /// parsed with its key's TOML type. A `TERN_*` variable that names no
    /// key and is not in `reserved` (the variables the command line reads
    /// itself, and [`ENV_OF_OTHER_TOOLS`]) is refused by name, and so is a
    /// value that does not fit its key. Command-line flags go on top of the
    /// result; [`Config::validate`] is left to the caller.
    pub fn load(
        path: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        reserved: &[&str],
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.into(),
                    error,
                })?;
                // The file alone first, from its text: its errors name the
                // file and carry the line (a `toml::Value` has no spans).
                let parse = |error| ConfigError::Parse {
                    path: path.into(),
                    error,
                };
                toml::from_str::<Self>(&text).map_err(parse)?;
                toml::from_str::<toml::Table>(&text).map_err(parse)?
            }
            None => toml::Table::new(),
        };
        let keys = env_keys();
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .filter(|(name, _)| {
                !reserved.contains(&name.as_str()) || keys.iter().any(|k| &k.var == name)
            })
            .filter(|(name, _)| !ENV_OF_OTHER_TOOLS.contains(&name.as_str()))
            .collect();
        // Sorted, so that with several bad variables the same one is named
        // first whatever the environment's order.
        vars.sort();
        for (name, text) in vars {
            let Some(key) = keys.iter().find(|k| k.var == name) else {
                let hint = keys
                    .iter()
                    .map(|k| (edit_distance(&k.var, &name), &k.var))
                    .filter(|(d, _)| *d <= 2)
                    .min()
                    .map_or_else(String::new, |(_, v)| format!("; did you mean {v}?"));
                return Err(ConfigError::EnvUnknown {
                    var: name,
                    hint,
                    reserved: reserved.join(", "),
                });
            };
            let value = env_value(&key.default, &text).map_err(|why| ConfigError::EnvValue {
                var: name.clone(),
                key: key.dotted(),
                why,
            })?;
            // The value alone against the schema (other keys at their
            // defaults): a type or range serde checks is named by variable.
            let mut alone = toml::Table::new();
            insert_at(&mut alone, &key.path, value.clone());
            toml::Value::Table(alone)
                .try_into::<Self>()
                .map_err(|e| ConfigError::EnvValue {
                    var: name.clone(),
                    key: key.dotted(),
                    why: e.message().trim().to_owned(),
                })?;
            insert_at(&mut table, &key.path, value);
        }
        toml::Value::Table(table)
            .try_into::<Self>()
            .map_err(|e| ConfigError::EnvValue {
                var: "TERN_*".into(),
                key: "(several)".into(),
                why: e.message().trim().to_owned(),
            })
    }
}

/// Levenshtein distance of two variable names (short, operator-given: the
/// quadratic table is a few hundred cells).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Parses a variable's text with the TOML type of `default`: a string as it
/// is (no quotes), anything else as a TOML value (`8192`, `true`,
/// `["a", "b"]`, `[{ name = "x", … }]`).
fn env_value(default: &toml::Value, text: &str) -> Result<toml::Value, String> {
    if let toml::Value::String(_) = default {
        return Ok(toml::Value::String(text.to_owned()));
    }
    let mut doc: toml::Table = toml::from_str(&format!("v = {text}"))
        .map_err(|_| format!("{text:?} is not a TOML {}", default.type_str()))?;
    let value = doc
        .remove("v")
        .ok_or_else(|| format!("{text:?} is not a TOML {}", default.type_str()))?;
    if std::mem::discriminant(&value) != std::mem::discriminant(default) {
        return Err(format!(
            "{text:?} is a {}, the key takes a {}",
            value.type_str(),
            default.type_str()
        ));
    }
    Ok(value)
}

/// Sets `path` in `table`, creating the tables on the way (a section the
/// file left out) and replacing what was there.
fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, sections)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for s in sections {
        let entry = t
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            unreachable!("made a table just above");
        };
        t = next;
    }
    t.insert(last.clone(), value);
}

/// Redacts the secrets under `v` (see [`Config::to_toml_redacted`]); `name`
/// is the key `v` is the value of.
fn redact(v: &mut toml::Value, name: &str) {
    let secret_name = {
        let n = name.to_ascii_lowercase();
        n.contains("secret") || n.contains("password") || n.contains("token") || n == "key"
    };
    match v {
        toml::Value::String(s) if secret_name && !s.is_empty() => {
            *s = format!("<redacted: {} bytes>", s.len());
        }
        toml::Value::String(s) => {
            // scheme://user:password@host… → scheme://user:<redacted>@host…
            if let Some(scheme_end) = s.find("://") {
                let rest = &s[scheme_end + 3..];
                let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                if let Some(at) = rest[..auth_end].rfind('@')
                    && let Some(colon) = rest[..at].find(':')
                {
                    let start = scheme_end + 3 + colon + 1;
                    let end = scheme_end + 3 + at;
                    s.replace_range(start..end, "<redacted>");
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                redact(item, name);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                redact(item, k);
            }
        }
        _ => {}
    }
}

/// Message edit (docs/protocol.md, "Edit"): only the sender edits, within
/// the window, at most so many times per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EditSettings {
    /// How long after sending the sender may edit a message, in seconds;
    /// 0: no edits at all (`EDIT_WINDOW_PASSED`). Default 86400 (24 h).
    pub window_secs: u64,
    /// Edits one message may have (a bot streaming a reply edits it once
    /// per step); beyond: `LIMIT_REACHED`. Default 1000.
    pub max_edits_per_message: u32,
}

impl Default for EditSettings {
    fn default() -> Self {
        Self {
            window_secs: 86_400,
            max_edits_per_message: 1_000,
        }
    }
}

impl EditSettings {
    /// The window in milliseconds, as the chat domain takes it.
    pub fn window_ms(&self) -> u64 {
        self.window_secs.saturating_mul(1_000)
    }
}

/// Login policies (docs/protocol.md, "Devices and login policies"): how
/// many connections of one user each platform class may hold (on the Redis
/// store, over every live node: docs/cluster.md, "Login policies across
/// nodes"; every node should have the same limits), and how long a logged-out device stays refused. The defaults keep the
/// behaviour without policies: any number of devices per class (a second
/// login of the same device id still displaces the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginSettings {
    /// Connections of one user on `ios` and `android` together; a login
    /// past it kicks the class's oldest connection
    /// (`KICK_REASON_LOGIN_POLICY`). 0: no limit. Default 0.
    pub mobile_devices_max: u32,
    /// The same for `desktop`. Default 0.
    pub desktop_devices_max: u32,
    /// The same for `web`. Default 0.
    pub web_devices_max: u32,
    /// The same for `cli`. Default 0.
    pub cli_devices_max: u32,
    /// The same for `bot`. Default 0.
    pub bot_devices_max: u32,
    /// The same for logins that name no platform. Default 0.
    pub other_devices_max: u32,
    /// After a device is logged out, its logins with a token issued (`iat`)
    /// no later than the logout (or with no `iat`) are refused
    /// (`DEVICE_LOGGED_OUT`) for this long. 0: never refused. Default
    /// 86400000 (24 h; set it to your tokens' lifetime).
    pub logged_out_block_ms: u64,
    /// Logged-out devices each shard remembers; past it the oldest is
    /// forgotten (its device may log in again with its old token).
    /// Default 10000.
    pub logged_out_max: u32,
}

/// `[rooms]`: rooms and broadcast channels (docs/protocol.md, "Rooms").
/// Members are not stored: each shard keeps which of its connections
/// joined which room, within these bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsSettings {
    /// Messages a room keeps for `room_history`; each post drops the one
    /// this far back. Default 200.
    pub recent_max: u32,
    /// Rooms one connection may have joined at once; a join past it gets
    /// `ROOM_JOIN_LIMIT` and changes nothing. Default 64.
    pub per_connection_max: u32,
    /// Rooms with joined connections one shard holds at once; a join that
    /// would add one more gets `ROOM_CAPACITY` and changes nothing.
    /// Default 100000.
    pub per_shard_max: u32,
}

impl Default for RoomsSettings {
    fn default() -> Self {
        Self {
            recent_max: 200,
            per_connection_max: 64,
            per_shard_max: 100_000,
        }
    }
}

impl Default for LoginSettings {
    fn default() -> Self {
        Self {
            mobile_devices_max: 0,
            desktop_devices_max: 0,
            web_devices_max: 0,
            cli_devices_max: 0,
            bot_devices_max: 0,
            other_devices_max: 0,
            logged_out_block_ms: 86_400_000,
            logged_out_max: 10_000,
        }
    }
}

/// A class of platforms that shares one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformClass {
    /// `ios` and `android`.
    Mobile,
    /// `desktop`.
    Desktop,
    /// `web`.
    Web,
    /// `cli`.
    Cli,
    /// `bot`.
    Bot,
    /// No platform named.
    Other,
}

impl PlatformClass {
    /// The class of `platform`.
    pub fn of(platform: tern_protocol::pb::Platform) -> Self {
        use tern_protocol::pb::Platform as P;
        match platform {
            P::Ios | P::Android => Self::Mobile,
            P::Desktop => Self::Desktop,
            P::Web => Self::Web,
            P::Cli => Self::Cli,
            P::Bot => Self::Bot,
            P::Unspecified => Self::Other,
        }
    }

    /// Its name in the config and in kick messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mobile => "mobile",
            Self::Desktop => "desktop",
            Self::Web => "web",
            Self::Cli => "cli",
            Self::Bot => "bot",
            Self::Other => "other",
        }
    }
}

impl LoginSettings {
    /// The most connections `class` may hold per user (over every live
    /// node on the Redis store; 0: no limit).
    pub fn devices_max(&self, class: PlatformClass) -> u32 {
        match class {
            PlatformClass::Mobile => self.mobile_devices_max,
            PlatformClass::Desktop => self.desktop_devices_max,
            PlatformClass::Web => self.web_devices_max,
            PlatformClass::Cli => self.cli_devices_max,
            PlatformClass::Bot => self.bot_devices_max,
            PlatformClass::Other => self.other_devices_max,
        }
    }
}

/// Full-text search (docs/protocol.md, "Search"; docs/backend.md,
/// "Search"): an index of message words beside the store, filled after
/// each commit by an indexer thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// Serve `search` and keep the index. The index holds the words of
    /// every message in clear, encrypted at rest or not (docs/security.md):
    /// turn it off where that must not be; `search` is then answered with
    /// `SEARCH_DISABLED`. Default true.
    pub enabled: bool,
    /// How often the indexer thread indexes the conversations written to
    /// since its last turn, in milliseconds: the most a new message waits
    /// to be in the index (a search indexes what it reads first, so results
    /// never miss a message). Default 200.
    pub index_interval_ms: u64,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            index_interval_ms: 200,
        }
    }
}

#[cfg(test)]
mod tests {

    /// The tenant settings of `[chat]` are checked at start: a pair or a
    /// rate that cannot work stops `tern serve` with the key's name.
    #[test]
    fn tenant_settings_are_checked() {
        let mut cfg = Config::default();
        cfg.chat.tenant_messages_per_second = vec!["acme:500".into(), "globex:1".into()];
        cfg.chat.tenant_federation = vec!["acme:globex".into()];
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.chat.tenant_rates().unwrap(),
            [("acme".to_owned(), 500), ("globex".to_owned(), 1)]
        );
        for bad in ["acme", "acme:0", "acme:x", "Acme:5", "acme:-1"] {
            cfg.chat.tenant_messages_per_second = vec![bad.into()];
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("tenant_messages_per_second"), "{bad}: {e}");
        }
        cfg.chat.tenant_messages_per_second = vec!["acme:1".into(), "acme:2".into()];
        assert!(cfg.validate().is_err());
        cfg.chat.tenant_messages_per_second.clear();
        cfg.chat.tenant_users_max = vec!["acme:1000".into()];
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.chat.tenant_seats().unwrap(),
            [("acme".to_owned(), 1000)]
        );
        cfg.chat.tenant_users_max = vec!["acme:0".into()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("tenant_users_max"), "{e}");
        cfg.chat.tenant_users_max.clear();
        cfg.chat.tenant_federation = vec!["acme:acme".into()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("tenant_federation"), "{e}");
    }

    /// `tern config` shows no secret: the JWT secret, API keys, the
    /// webhook secret and a Redis URL's password are replaced, everything
    /// else is printed as is.
    #[test]
    fn printed_config_redacts_secrets() {
        let mut cfg = Config::default();
        cfg.auth.jwt_secret = "jwt-s3cret-value".into();
        cfg.api.keys.push(ApiKeyConfig {
            name: "crm".into(),
            key: "api-k3y-0123456789".into(),
            scopes: vec!["messages".into()],
            tenant: String::new(),
        });
        cfg.webhooks.secret = "hook-s3cret".into();
        cfg.backend.redis_urls = vec!["redis://tern:redis-pa55@10.0.0.1:6379/0".into()];
        let text = cfg.to_toml_redacted();
        for secret in [
            "jwt-s3cret-value",
            "api-k3y-0123456789",
            "hook-s3cret",
            "redis-pa55",
        ] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
        }
        assert!(text.contains("<redacted: 16 bytes>"), "{text}");
        assert!(
            text.contains("redis://tern:<redacted>@10.0.0.1:6379/0"),
            "{text}"
        );
        assert!(text.contains("name = \"crm\""), "{text}");
        // Nothing else changes: the redacted text parses back to the same
        // config but for the secrets.
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.shards, cfg.shards);
    }
    use super::*;

    /// The commented default file and the `Default` impls say the same thing.
    #[test]
    fn default_toml_matches_default_impls() {
        let from_file: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(from_file, Config::default());
        Config::default().validate().unwrap();
    }

    /// Host names resolve in the file too, and a bad address names itself.
    #[test]
    fn listen_addresses_take_host_names() {
        let c: Config = toml::from_str("[listen]\ntcp = \"localhost:7400\"\n").unwrap();
        assert_eq!(c.listen.tcp.map(|a| a.port()), Some(7400));
        assert!(c.listen.tcp.unwrap().ip().is_loopback());
        let err = toml::from_str::<Config>("[listen]\nws = \"nonsense\"\n").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    /// `store = "s3"` needs a bucket, an http(s) endpoint if any, and
    /// both halves of a static key or neither; each refusal names its key.
    #[test]
    fn s3_media_settings_are_checked_by_name() {
        let mut c = Config::default();
        c.media.store = MediaStoreKind::S3;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("media.s3_bucket"), "{err}");
        c.media.s3_bucket = "chat-media".into();
        c.validate().unwrap();
        c.media.s3_endpoint = "minio:9000".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("media.s3_endpoint"), "{err}");
        c.media.s3_endpoint = "http://127.0.0.1:9000".into();
        c.media.s3_access_key_id = "id".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("media.s3_access_key_id"), "{err}");
        c.media.s3_secret_access_key = "secret".into();
        c.validate().unwrap();
        // The disk store ignores the s3_* keys.
        c.media.store = MediaStoreKind::Disk;
        c.media.s3_bucket.clear();
        c.validate().unwrap();
    }

    /// The backend limits are checked, named by their key.
    #[test]
    fn zero_backend_limits_are_refused_by_name() {
        let mut c = Config::default();
        c.backend.group_members_max = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("backend.group_members_max"), "{err}");
    }

    /// Cluster settings with the embedded store are refused with a message
    /// naming the fix; with the Redis store they are taken.
    #[test]
    fn cluster_settings_need_the_redis_store() {
        let mut cfg: Config = toml::from_str("[cluster]\nnode_lease_ms = 3000\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--store redis"), "{err}");
        cfg.backend.store = StoreKind::Redis;
        cfg.backend.redis_urls = vec!["redis://127.0.0.1:6379".into()];
        cfg.validate().unwrap();
        cfg.node_id = "bad{id}".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("node_id"));
    }

    /// Bad `[limits]` and `[lists]` values are refused by key name: an
    /// inverted kick window, a burst of 0 with its rate on, an entry that is
    /// not an address or network.
    #[test]
    fn limits_and_lists_are_checked_by_name() {
        let mut c = Config::default();
        c.limits.kick_retry_after_min_ms = 10;
        c.limits.kick_retry_after_max_ms = 9;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.kick_retry_after_max_ms"), "{err}");
        let mut c = Config::default();
        c.limits.messages_per_user_burst = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.messages_per_user_burst"), "{err}");
        c.limits.messages_per_user_per_second = 0;
        c.validate().unwrap();
        let mut c = Config::default();
        c.lists.http_deny = vec!["10.0.0.0/8".into(), "10.0.0.300".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("lists.http_deny") && err.contains("10.0.0.300"),
            "{err}"
        );
        c.lists.http_deny = vec!["10.0.0.0/8".into(), "2001:db8::1".into()];
        c.validate().unwrap();
        let mut c = Config::default();
        c.limits.ip_exempt = vec!["loopback".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.ip_exempt")
        );
    }

    /// A typo in a key is an error naming it, not a silently ignored setting.
    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[session]\nheartbeat_intervall_ms = 5\n").unwrap_err();
        assert!(err.to_string().contains("heartbeat_intervall_ms"), "{err}");
    }
    /// The node's kick rate is split over its shards without exceeding it
    /// (the remainder to the first shards), except that every shard gets at
    /// least 1/s; a zero rate and an inverted retry window are refused.
    #[test]
    fn drain_settings_split_and_validate() {
        let mut c = Config::default();
        c.shutdown.kick_rate_per_node = 100;
        let rates: Vec<u32> = (0..3)
            .map(|i| c.shutdown.kick_rate_of_shard(i, 3))
            .collect();
        assert_eq!(rates, [34, 33, 33]);
        c.shutdown.kick_rate_per_node = 2;
        let rates: Vec<u32> = (0..4)
            .map(|i| c.shutdown.kick_rate_of_shard(i, 4))
            .collect();
        assert_eq!(rates, [1, 1, 1, 1]);
        c.shutdown.kick_rate_per_node = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("shutdown.kick_rate_per_node"), "{err}");
        c.shutdown.kick_rate_per_node = 10;
        c.shutdown.retry_after_min_ms = 10;
        c.shutdown.retry_after_max_ms = 9;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("shutdown.retry_after_max_ms"), "{err}");
        c.shutdown.retry_after_max_ms = 10;
        c.validate().unwrap();
    }

    /// `[push]` is checked only when enabled: then it needs a provider's
    /// credentials (the APNs key with its id and team), http(s) URLs, and
    /// non-zero bounds.
    #[test]
    fn push_settings_validate_when_enabled() {
        let mut c = Config::default();
        c.push.apns_url = "nonsense".into();
        c.validate().unwrap();
        c.push.enabled = true;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("push.apns_url"), "{err}");
        c.push.apns_url = "http://127.0.0.1:9".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("push.enabled"), "{err}");
        c.push.apns_key_file = Some("key.p8".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("push.apns_key_file"), "{err}");
        c.push.apns_key_id = "K".into();
        c.push.apns_team_id = "T".into();
        c.validate().unwrap();
        c.push.queue_max = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("push.queue_max"), "{err}");
        c.push.queue_max = 1;
        c.push.retry_initial_ms = c.push.retry_max_ms + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("push.retry_initial_ms"), "{err}");
    }
}

// ---- [api]: the server API for existing services ----

/// The server API (`/api/v1` on the HTTP edge, docs/http-api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// The API keys services present (`Authorization: Bearer <key>`). No
    /// key configured: every `/api/v1` call is 401. Default none.
    pub keys: Vec<ApiKeyConfig>,
    /// How long a call waits for the backend before 503. Default 5000.
    pub backend_timeout_ms: u64,
    /// Requests from the API queued to one backend worker at most; beyond,
    /// 503 with `Retry-After`. Default 1024.
    pub queue_entries_max: usize,
    /// Records kept per tenant in the audit log of admin actions
    /// (docs/tenants.md, "Audit log"); the oldest are dropped past it.
    /// 0: no audit log. Default 100000.
    pub audit_entries_max: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            backend_timeout_ms: 5_000,
            queue_entries_max: 1_024,
            audit_entries_max: 100_000,
        }
    }
}

/// One API key and what it may do.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and metrics (never the key).
    pub name: String,
    /// The secret, at least 16 bytes. Prefer `TERN_API_KEY` (one key, all
    /// scopes, named `env`) to a file.
    pub key: String,
    /// What it may call: `messages`, `users`, `groups`, `read`, `media`,
    /// `admin` (everything).
    pub scopes: Vec<String>,
    /// The tenant this key is confined to (docs/tenants.md): every id it
    /// names, and every user it acts as, must be of this tenant, and calls
    /// about the whole server (online count, broadcasts) are refused.
    /// Empty (the default): a system key, for every tenant.
    #[serde(default)]
    pub tenant: String,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// The scopes an API key may hold.
pub const API_SCOPES: [&str; 9] = [
    "messages", "users", "groups", "read", "media", "rooms", "audit", "org", "admin",
];

/// Shortest API key, bytes.
pub const API_KEY_BYTES_MIN: usize = 16;

impl ApiSettings {
    /// Checks keys and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: String| Err(ConfigError::Invalid { name, why });
        let mut names = std::collections::HashSet::new();
        for k in &self.keys {
            if k.name.is_empty() || !names.insert(k.name.as_str()) {
                return invalid(
                    "api.keys",
                    format!("key names must be set and unique ({:?})", k.name),
                );
            }
            if k.key.len() < API_KEY_BYTES_MIN {
                return invalid(
                    "api.keys",
                    format!("key {:?} is shorter than {API_KEY_BYTES_MIN} bytes", k.name),
                );
            }
            if !k.tenant.is_empty() && tern_protocol::ids::check_tenant(&k.tenant).is_err() {
                return invalid(
                    "api.keys",
                    format!(
                        "key {:?}: tenant {:?} is not 1 to {} of [a-z0-9-]",
                        k.name,
                        k.tenant,
                        tern_protocol::ids::TENANT_BYTES_MAX
                    ),
                );
            }
            if let Some(bad) = k.scopes.iter().find(|s| !API_SCOPES.contains(&s.as_str())) {
                return invalid(
                    "api.keys",
                    format!(
                        "key {:?}: unknown scope {bad:?} (known: {})",
                        k.name,
                        API_SCOPES.join(", ")
                    ),
                );
            }
        }
        if self.backend_timeout_ms == 0 || self.queue_entries_max == 0 {
            return invalid(
                "api",
                "backend_timeout_ms and queue_entries_max must be > 0".into(),
            );
        }
        Ok(())
    }
}

/// Operator calls of the server API (`[api_ops]`, docs/http-api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiOpsSettings {
    /// User ids a service may send as with operator rights (`from` of
    /// `POST /api/v1/messages` and broadcasts): no friendship or group
    /// membership needed. Other senders follow the chat rules. Also the
    /// user group and ban calls act as (the first one). Default `["system"]`.
    pub system_users: Vec<String>,
    /// Recipients of one send to a list (`to_users`) at most; more is 400.
    /// Default 1000.
    pub recipients_max: usize,
    /// Users one broadcast sends to per second at most (the rest wait).
    /// Default 1000.
    pub broadcast_users_per_second: u32,
    /// Request ids of list sends and broadcasts remembered, for a replay to
    /// get the original answer; the oldest are forgotten first. Default
    /// 10000.
    pub request_ids_max: usize,
    /// Which departments a user reads in the directory (docs/tenants.md):
    /// `tenant` (all of their tenant's), `organization` (those of the
    /// organizations they belong to), `departments` (their departments and
    /// those below them). Admins always read what they administer.
    /// Default `tenant`.
    pub directory_visibility: String,
}

impl Default for ApiOpsSettings {
    fn default() -> Self {
        Self {
            system_users: vec!["system".into()],
            recipients_max: 1_000,
            broadcast_users_per_second: 1_000,
            request_ids_max: 10_000,
            directory_visibility: "tenant".into(),
        }
    }
}

impl ApiOpsSettings {
    /// Checks the ids and bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: String| Err(ConfigError::Invalid { name, why });
        if !["tenant", "organization", "departments"].contains(&self.directory_visibility.as_str())
        {
            return invalid(
                "api_ops.directory_visibility",
                format!(
                    "{:?}: use tenant, organization or departments",
                    self.directory_visibility
                ),
            );
        }
        if self.system_users.is_empty()
            || self
                .system_users
                .iter()
                .any(|u| tern_protocol::ids::check_id(u).is_err())
        {
            return invalid(
                "api_ops.system_users",
                "give at least one valid user id".into(),
            );
        }
        if self.recipients_max == 0
            || self.broadcast_users_per_second == 0
            || self.request_ids_max == 0
        {
            return invalid(
                "api_ops",
                "recipients_max, broadcast_users_per_second and request_ids_max must be > 0".into(),
            );
        }
        Ok(())
    }
}

// ---- [media]: upload and download of images, files, voice and video ----

/// Media upload and download (`/api/v1/media`, docs/http-api.md "Media").
/// Each limit is checked from `Content-Length` before the body is read and
/// again while it streams to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Where objects are kept. Default empty: `<backend.data_dir>/media`.
    pub dir: Option<PathBuf>,
    /// Largest image upload, bytes. Default 20 MiB.
    pub image_bytes_max: u64,
    /// Largest file upload, bytes. Default 100 MiB.
    pub file_bytes_max: u64,
    /// Largest voice upload, bytes. Default 10 MiB.
    pub voice_bytes_max: u64,
    /// Largest video upload, bytes. Default 200 MiB.
    pub video_bytes_max: u64,
    /// Most pixels (width × height) an image may declare; more is refused
    /// from its header, before any pixel is decoded (decode bombs).
    /// Default 40,000,000.
    pub image_pixels_max: u64,
    /// Longest edge of a thumbnail, pixels. Default 320.
    pub thumbnail_edge_px: u32,
    /// Longest edge of the compressed variant, pixels. Default 1600.
    pub compressed_edge_px: u32,
    /// JPEG quality of thumbnails and compressed variants, 1..=100. Default 80.
    pub jpeg_quality: u8,
    /// Where objects are kept: `disk` (default: `dir`) or `s3` (an
    /// S3-compatible bucket; uploads are still received into `dir/tmp`).
    pub store: MediaStoreKind,
    /// S3 endpoint URL (`https://…`, or `http://…` for a local MinIO).
    /// Default empty: AWS S3 of `s3_region`.
    pub s3_endpoint: String,
    /// S3 region (request signing). Default `us-east-1`.
    pub s3_region: String,
    /// The bucket. Required with `store = "s3"`; it must exist.
    pub s3_bucket: String,
    /// Key prefix in the bucket: objects are `<prefix>/<id>`. Default
    /// `media`; empty: at the bucket's root.
    pub s3_key_prefix: String,
    /// Access key id. Default empty: the AWS credential chain (instance
    /// or container role, web identity).
    pub s3_access_key_id: String,
    /// Secret access key; prefer `TERN_MEDIA_S3_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: String,
    /// Path-style addressing (`<endpoint>/<bucket>/<key>`), as MinIO and
    /// most self-hosted stores want. Default false: virtual-hosted
    /// (`<bucket>.<endpoint host>/<key>`), as AWS recommends.
    pub s3_path_style: bool,
    /// Connecting to S3 must succeed within this. Default 3000.
    pub s3_connect_timeout_ms: u64,
    /// Each S3 call (retries included; for a download, until its first
    /// byte) must finish within this, and a download whose bytes stop
    /// coming for this long is cut. Default 30000.
    pub s3_request_timeout_ms: u64,
    /// Retries of a failed S3 call (5xx, connection errors), with backoff,
    /// within `s3_request_timeout_ms`. Default 2.
    pub s3_retries_max: u32,
}

/// Where media objects are kept (`[media] store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaStoreKind {
    /// Files under `[media] dir`.
    Disk,
    /// An S3-compatible bucket (`[media] s3_*`).
    S3,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            dir: None,
            image_bytes_max: 20 << 20,
            file_bytes_max: 100 << 20,
            voice_bytes_max: 10 << 20,
            video_bytes_max: 200 << 20,
            image_pixels_max: 40_000_000,
            thumbnail_edge_px: 320,
            compressed_edge_px: 1600,
            jpeg_quality: 80,
            store: MediaStoreKind::Disk,
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_bucket: String::new(),
            s3_key_prefix: "media".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_path_style: false,
            s3_connect_timeout_ms: 3000,
            s3_request_timeout_ms: 30000,
            s3_retries_max: 2,
        }
    }
}

impl MediaSettings {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        if [
            self.image_bytes_max,
            self.file_bytes_max,
            self.voice_bytes_max,
            self.video_bytes_max,
            self.image_pixels_max,
        ]
        .contains(&0)
        {
            return invalid("media", "byte and pixel limits must be > 0");
        }
        if self.thumbnail_edge_px == 0 || self.compressed_edge_px < self.thumbnail_edge_px {
            return invalid(
                "media",
                "thumbnail_edge_px must be > 0 and compressed_edge_px at least as large",
            );
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return invalid("media.jpeg_quality", "must be 1..=100");
        }
        if self.store == MediaStoreKind::S3 {
            if self.s3_bucket.is_empty() {
                return invalid("media.s3_bucket", "is required with store = \"s3\"");
            }
            if !(self.s3_endpoint.is_empty()
                || self.s3_endpoint.starts_with("https://")
                || self.s3_endpoint.starts_with("http://"))
            {
                return invalid("media.s3_endpoint", "must be an http:// or https:// URL");
            }
            if self.s3_access_key_id.is_empty() != self.s3_secret_access_key.is_empty() {
                return invalid(
                    "media.s3_access_key_id",
                    "s3_access_key_id and s3_secret_access_key go together",
                );
            }
            if self.s3_connect_timeout_ms == 0 || self.s3_request_timeout_ms == 0 {
                return invalid(
                    "media",
                    "s3_connect_timeout_ms and s3_request_timeout_ms must be > 0",
                );
            }
        }
        Ok(())
    }

    /// The media directory for a store kept in `data_dir`.
    pub fn dir_in(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("media"))
    }
}

// ---- [webhooks]: before-send hook and after-event feed ----

/// Webhooks to existing services (docs/http-api.md, "Webhooks"): a
/// synchronous before-send hook that may allow, reject or rewrite each
/// message, and an asynchronous feed of events (messages stored, recalled,
/// read; group and friend changes; users online and offline). Both off
/// while their URL is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The HMAC-SHA256 key that signs every webhook request (events and
    /// before-send). Required when a URL is set. Default empty.
    pub secret: String,
    /// Where each batch of sends is POSTed before it is stored (`http://`
    /// or `https://`). Empty: no before-send hook. Default empty.
    pub before_send_url: String,
    /// The whole before-send call (connect, request, answer) must finish
    /// within this; a batch of sends waits at most this long. Default 500.
    pub before_send_timeout_ms: u64,
    /// What a send becomes when the hook times out, fails, answers non-2xx
    /// or garbage: `open` (stored as it is) or `closed` (refused with
    /// `INTERNAL`). Default `open`.
    pub before_send_failure: FailurePolicy,
    /// Largest before-send answer read, bytes; a longer one is garbage.
    /// Default 1048576.
    pub before_send_response_bytes_max: usize,
    /// Where events are POSTed (`http://` or `https://`). Empty: no
    /// events. Default empty.
    pub events_url: String,
    /// Events waiting for delivery at most; beyond, new events are dropped
    /// and counted (`tern_webhook_events_dropped_total`): a slow receiver
    /// never blocks chat. Default 10000.
    pub events_queue_max: usize,
    /// Events in one POST at most. Default 100.
    pub events_per_post_max: usize,
    /// POSTs in flight at once at most. Default 4.
    pub events_posts_in_flight_max: usize,
    /// One delivery attempt (connect, request, answer) must finish within
    /// this. Default 5000.
    pub events_timeout_ms: u64,
    /// Attempts per POST, the first included; then its events are counted
    /// as failed. Default 5.
    pub events_attempts_max: u32,
    /// Wait before the first retry; doubled each retry up to
    /// `events_retry_max_ms`. Default 500.
    pub events_retry_initial_ms: u64,
    /// Longest wait between two attempts. Default 30000.
    pub events_retry_max_ms: u64,
    /// At shutdown, how long POSTs in flight may still finish; what is left
    /// is dropped and counted. Default 2000.
    pub events_shutdown_grace_ms: u64,
    /// PEM roots that `https://` webhook URLs are verified against (a
    /// private CA), instead of the system's. Default none: system roots.
    pub ca_file: Option<PathBuf>,
    /// Event receivers of their own for tenants (docs/tenants.md): a
    /// tenant's events go to its URL, signed with its secret, and never to
    /// `events_url`. Default none.
    pub tenant_events: Vec<TenantEvents>,
}

/// One tenant's event receiver.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEvents {
    /// The tenant.
    pub tenant: String,
    /// Where its events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC-SHA256 key its events are signed with (its own: a shared
    /// one would let one tenant sign events for another's receiver).
    pub secret: String,
}

impl std::fmt::Debug for TenantEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantEvents")
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An `http://` or `https://` URL with a host (a webhook receiver's).
fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

/// What a failed before-send call means for the sends it covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Store the sends as they are.
    Open,
    /// Refuse them (`INTERNAL`, retryable).
    Closed,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret: String::new(),
            before_send_url: String::new(),
            before_send_timeout_ms: 500,
            before_send_failure: FailurePolicy::Open,
            before_send_response_bytes_max: 1 << 20,
            events_url: String::new(),
            events_queue_max: 10_000,
            events_per_post_max: 100,
            events_posts_in_flight_max: 4,
            events_timeout_ms: 5_000,
            events_attempts_max: 5,
            events_retry_initial_ms: 500,
            events_retry_max_ms: 30_000,
            events_shutdown_grace_ms: 2_000,
            ca_file: None,
            tenant_events: Vec::new(),
        }
    }
}

impl WebhookSettings {
    /// Checks URLs, the secret and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: String| Err(ConfigError::Invalid { name, why });
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenant_events {
            if tern_protocol::ids::check_tenant(&t.tenant).is_err()
                || !seen.insert(t.tenant.as_str())
                || !is_http_url(&t.url)
                || t.secret.len() < 16
            {
                return invalid(
                    "webhooks.tenant_events",
                    format!(
                        "tenant {:?}: a tenant id (each once), an http(s) URL with a host and a secret of 16+ bytes",
                        t.tenant
                    ),
                );
            }
        }
        for (name, url) in [
            ("webhooks.before_send_url", &self.before_send_url),
            ("webhooks.events_url", &self.events_url),
        ] {
            if url.is_empty() {
                continue;
            }
            if !is_http_url(url) {
                return invalid(
                    name,
                    format!("{url:?} is not an http:// or https:// URL with a host"),
                );
            }
            if self.secret.is_empty() {
                return invalid(
                    "webhooks.secret",
                    format!("{name} needs a secret to sign with"),
                );
            }
        }
        for (name, v) in [
            (
                "webhooks.before_send_timeout_ms",
                self.before_send_timeout_ms,
            ),
            ("webhooks.events_timeout_ms", self.events_timeout_ms),
            (
                "webhooks.events_attempts_max",
                u64::from(self.events_attempts_max),
            ),
            ("webhooks.events_queue_max", self.events_queue_max as u64),
            (
                "webhooks.events_per_post_max",
                self.events_per_post_max as u64,
            ),
            (
                "webhooks.events_posts_in_flight_max",
                self.events_posts_in_flight_max as u64,
            ),
            (
                "webhooks.before_send_response_bytes_max",
                self.before_send_response_bytes_max as u64,
            ),
        ] {
            if v == 0 {
                return invalid(name, "must be at least 1".into());
            }
        }
        if self.events_retry_initial_ms > self.events_retry_max_ms {
            return invalid(
                "webhooks.events_retry_initial_ms",
                "must not exceed events_retry_max_ms".into(),
            );
        }
        Ok(())
    }
}

// ---- [push]: offline push (docs/push.md) ----

/// Offline push (issue 20; docs/push.md): notifications through APNs
/// (HTTP/2, token auth) and FCM (HTTP v1) to members none of whose devices
/// is online. Off unless `enabled`; each provider is used only when its
/// credentials are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Accept push tokens and send notifications. Off: the push frames get
    /// `PUSH_DISABLED` and nothing is queued. Default false.
    pub enabled: bool,
    /// Push tokens one user holds at most; one more gets
    /// `PUSH_TOKENS_FULL`. Default 10.
    pub tokens_per_user_max: u32,
    /// Conversations one user mutes at most; one more gets
    /// `PUSH_MUTES_FULL`. Default 500.
    pub muted_conversations_max: u32,
    /// Jobs (one per stored message with recipients) waiting for the
    /// `tern-push` thread at most; beyond, new ones are dropped and counted
    /// (`tern_push_dropped_total{reason="queue_full"}`). Default 10000.
    pub queue_max: usize,
    /// Messages to one user in one conversation within this window (from
    /// the first) make one notification: the newest preview and a count.
    /// Default 2000.
    pub collapse_window_ms: u64,
    /// Notifications being collapsed (user × conversation) at most; beyond,
    /// new ones are dropped and counted (`reason="pending_full"`). Default
    /// 100000.
    pub pending_max: usize,
    /// Show the message's text in the notification. Off: "New message"
    /// (the provider and the lock screen never see content). Default false.
    pub preview: bool,
    /// Longest preview text, bytes (cut at a character boundary). Default
    /// 256.
    pub preview_bytes_max: usize,
    /// Provider requests in flight at most. Default 32.
    pub in_flight_max: usize,
    /// One provider request (connect, send, answer) must finish within
    /// this; then it counts as a timeout and is retried. Default 10000.
    pub timeout_ms: u64,
    /// Attempts per notification and token, the first included. Default 4.
    pub attempts_max: u32,
    /// Wait before the first retry, doubled each retry up to
    /// `retry_max_ms`; a provider's `Retry-After` is honoured up to
    /// `retry_max_ms`. Default 1000.
    pub retry_initial_ms: u64,
    /// Longest wait between two attempts. Default 60000.
    pub retry_max_ms: u64,
    /// APNs base URL: production `https://api.push.apple.com`, or
    /// `https://api.sandbox.push.apple.com`; `http://` speaks HTTP/2
    /// without TLS (h2c, for a local stand-in). Default production.
    pub apns_url: String,
    /// The APNs signing key (`AuthKey_<key id>.p8`, ES256). Empty: no APNs.
    pub apns_key_file: Option<PathBuf>,
    /// The key's id (10 characters), the JWT's `kid`.
    pub apns_key_id: String,
    /// The Apple developer team id, the JWT's `iss`.
    pub apns_team_id: String,
    /// `apns-topic` (the app's bundle id) for tokens registered without a
    /// topic.
    pub apns_topic: String,
    /// `apns-expiration`: APNs keeps an undeliverable notification this
    /// long, seconds; 0: once or never. Default 86400.
    pub apns_expiration_s: u64,
    /// The FCM service account JSON (`project_id`, `client_email`,
    /// `private_key`, `token_uri`). Empty: no FCM.
    pub fcm_service_account_file: Option<PathBuf>,
    /// FCM base URL; messages go to
    /// `<fcm_url>/v1/projects/<project_id>/messages:send`. Default
    /// `https://fcm.googleapis.com`.
    pub fcm_url: String,
    /// PEM roots that `https://` provider and token URLs are verified
    /// against, instead of the system's. Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            tokens_per_user_max: 10,
            muted_conversations_max: 500,
            queue_max: 10_000,
            collapse_window_ms: 2_000,
            pending_max: 100_000,
            preview: false,
            preview_bytes_max: 256,
            in_flight_max: 32,
            timeout_ms: 10_000,
            attempts_max: 4,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            apns_url: "https://api.push.apple.com".into(),
            apns_key_file: None,
            apns_key_id: String::new(),
            apns_team_id: String::new(),
            apns_topic: String::new(),
            apns_expiration_s: 86_400,
            fcm_service_account_file: None,
            fcm_url: "https://fcm.googleapis.com".into(),
            ca_file: None,
        }
    }
}

impl PushSettings {
    /// Checks URLs, credentials named together, and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: String| Err(ConfigError::Invalid { name, why });
        if !self.enabled {
            return Ok(());
        }
        for (name, url) in [
            ("push.apns_url", &self.apns_url),
            ("push.fcm_url", &self.fcm_url),
        ] {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url
                    .parse::<hyper::Uri>()
                    .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
            if !ok {
                return invalid(
                    name,
                    format!("{url:?} is not an http:// or https:// URL with a host"),
                );
            }
        }
        if self.apns_key_file.is_some()
            && (self.apns_key_id.is_empty() || self.apns_team_id.is_empty())
        {
            return invalid(
                "push.apns_key_file",
                "needs apns_key_id and apns_team_id".into(),
            );
        }
        if self.apns_key_file.is_none() && self.fcm_service_account_file.is_none() {
            return invalid(
                "push.enabled",
                "needs apns_key_file or fcm_service_account_file (or both)".into(),
            );
        }
        for (name, v) in [
            (
                "push.tokens_per_user_max",
                u64::from(self.tokens_per_user_max),
            ),
            ("push.queue_max", self.queue_max as u64),
            ("push.pending_max", self.pending_max as u64),
            ("push.in_flight_max", self.in_flight_max as u64),
            ("push.timeout_ms", self.timeout_ms),
            ("push.attempts_max", u64::from(self.attempts_max)),
        ] {
            if v == 0 {
                return invalid(name, "must be at least 1".into());
            }
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return invalid(
                "push.retry_initial_ms",
                "must not exceed retry_max_ms".into(),
            );
        }
        Ok(())
    }
}

// ---- [tls]: the TLS client listeners ----

/// TLS of the client listeners `listen.tls` and `listen.wss` (rustls; see
/// docs/security.md, "TLS"). The files are read at start and again on
/// SIGHUP: new handshakes then use the new certificate, live connections
/// keep theirs, and files that do not load leave the old ones in use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. Required by a TLS listener.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf. Never logged.
    pub key_file: Option<PathBuf>,
    /// The oldest TLS version offered: `1.2` (1.2 and 1.3) or `1.3`. TLS
    /// 1.0 and 1.1 are never offered. Default `1.2`.
    pub min_version: TlsVersion,
    /// A TLS connection whose handshake has not completed this long after
    /// accept is closed (the auth deadline, counted from accept too, still
    /// applies after it). Default 10000.
    pub handshake_timeout_ms: u64,
}

/// The oldest TLS version the listeners accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            min_version: TlsVersion::V1_2,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl TlsSettings {
    /// Checks the settings; `listening`: a TLS listener is configured, so
    /// both files are required.
    pub fn validate(&self, listening: bool) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        if self.handshake_timeout_ms == 0 {
            return invalid("tls.handshake_timeout_ms", "must be > 0");
        }
        if listening && self.cert_file.is_none() {
            return invalid(
                "tls.cert_file",
                "listen.tls or listen.wss is set: a TLS listener needs a certificate chain",
            );
        }
        if listening && self.key_file.is_none() {
            return invalid(
                "tls.key_file",
                "listen.tls or listen.wss is set: a TLS listener needs a private key",
            );
        }
        Ok(())
    }
}

/// Local accounts (`/api/v1/accounts`): users register with a password and
/// log in for a Tern token, for deployments without an identity provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsSettings {
    /// Serve register and login. Default false (both answer 404).
    pub enabled: bool,
    /// Shortest password, characters. Default 12.
    pub password_chars_min: usize,
    /// Longest password, bytes. Default 256.
    pub password_bytes_max: usize,
    /// Lifetime of a token login issues, seconds. Default 86400.
    pub token_ttl_secs: u64,
    /// Register and login attempts per client IP per minute. Default 20.
    pub attempts_per_ip_per_minute: u32,
    /// Login attempts per user id per minute. Default 10.
    pub attempts_per_user_per_minute: u32,
    /// IPs and user ids the attempt counters remember at most; full: new
    /// ones are refused (429) until a minute passes. Default 100000.
    pub tracked_max: usize,
    /// Password hashes computed at once (each takes `argon2_memory_kib`).
    /// Default 2.
    pub hashing_concurrency: usize,
    /// argon2id memory, KiB. Default 19456 (OWASP).
    pub argon2_memory_kib: u32,
    /// argon2id iterations. Default 2 (OWASP).
    pub argon2_iterations: u32,
    /// PEM private key to sign tokens with when `auth.algorithm` is RS256 or
    /// EdDSA; with HS256 tokens are signed with `auth.jwt_secret`.
    /// Default none.
    pub signing_key_file: Option<PathBuf>,
}

impl Default for AccountsSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            password_chars_min: 12,
            password_bytes_max: 256,
            token_ttl_secs: 86_400,
            attempts_per_ip_per_minute: 20,
            attempts_per_user_per_minute: 10,
            tracked_max: 100_000,
            hashing_concurrency: 2,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            signing_key_file: None,
        }
    }
}

impl AccountsSettings {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        for (name, v) in [
            (
                "accounts.password_chars_min",
                self.password_chars_min as u64,
            ),
            ("accounts.token_ttl_secs", self.token_ttl_secs),
            (
                "accounts.attempts_per_ip_per_minute",
                u64::from(self.attempts_per_ip_per_minute),
            ),
            (
                "accounts.attempts_per_user_per_minute",
                u64::from(self.attempts_per_user_per_minute),
            ),
            ("accounts.tracked_max", self.tracked_max as u64),
            (
                "accounts.hashing_concurrency",
                self.hashing_concurrency as u64,
            ),
            (
                "accounts.argon2_iterations",
                u64::from(self.argon2_iterations),
            ),
        ] {
            if v == 0 {
                return invalid(name, "must be at least 1");
            }
        }
        if self.password_bytes_max < self.password_chars_min || self.password_bytes_max > 4096 {
            return invalid(
                "accounts.password_bytes_max",
                "must be at least password_chars_min and at most 4096",
            );
        }
        if self.argon2_memory_kib < 64 {
            return invalid("accounts.argon2_memory_kib", "must be at least 64");
        }
        Ok(())
    }
}

// ---- [limits] and [lists]: edge protection (docs/security.md) ----

/// Rate limits of the client listeners. Each rate is a GCRA (governor): a
/// steady `*_per_second` (or `*_per_minute`) with a `*_burst` allowed at
/// once; a rate of 0 turns that limit off. Over a limit a request is
/// answered `RATE_LIMITED` with `retry_after_ms` and nothing is stored.
/// The defaults are several times what a person, or a client syncing
/// after a reconnect, does (docs/security.md says why each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// Requests (every kind, typing notices included) per connection per
    /// second. Default 50.
    pub requests_per_connection_per_second: u32,
    /// Requests a connection may send at once. Default 200 (a sync of many
    /// conversations after a reconnect).
    pub requests_per_connection_burst: u32,
    /// Messages (sends) per connection per second. Default 20.
    pub messages_per_connection_per_second: u32,
    /// Messages a connection may send at once. Default 100.
    pub messages_per_connection_burst: u32,
    /// Messages per user per second, all its devices together (counted on
    /// the user's owner shard, where all its devices are). Default 30.
    pub messages_per_user_per_second: u32,
    /// Messages a user may send at once. Default 200.
    pub messages_per_user_burst: u32,
    /// Logins per user per minute, all devices together. Default 60.
    pub logins_per_user_per_minute: u32,
    /// Logins a user may make at once. Default 30.
    pub logins_per_user_burst: u32,
    /// New connections per source IP per second, counted per shard (a node
    /// of N shards admits up to N times this). Default 200.
    pub connections_per_ip_per_second: u32,
    /// New connections a source IP may open at once, per shard. Default 1000.
    pub connections_per_ip_burst: u32,
    /// Source networks the per-IP connection limit does not apply to (a
    /// load balancer, the load harness on loopback). Default loopback.
    pub ip_exempt: Vec<String>,
    /// Logins of one user and device within `flap_window_ms` beyond which
    /// it is flapping and refused for `flap_ban_ms`; 0 turns it off.
    /// Default 15 (EMQX's default).
    pub flap_connects_max: u32,
    /// The flapping window. Default 60000.
    pub flap_window_ms: u64,
    /// How long a flapping device is refused. Default 300000.
    pub flap_ban_ms: u64,
    /// Refusals (`RATE_LIMITED`) of one connection within `abuse_window_ms`
    /// beyond which it is kicked (`Kick{RATE_LIMITED}`); 0 never kicks.
    /// Default 20.
    pub refusals_before_kick: u32,
    /// The window of `refusals_before_kick`. Default 10000.
    pub abuse_window_ms: u64,
    /// A rate kick's `retry_after_ms` is uniform in
    /// `kick_retry_after_min_ms..=kick_retry_after_max_ms`. Default 5000.
    pub kick_retry_after_min_ms: u32,
    /// Upper end of that window. Default 30000.
    pub kick_retry_after_max_ms: u32,
    /// Keys (connections, users, IPs) each limiter of a shard tracks at
    /// most; idle ones are forgotten every second. Full: a new IP is
    /// refused until room frees up; a new connection or user is not
    /// limited meanwhile (counted). Default 100000.
    pub tracked_max: usize,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            requests_per_connection_per_second: 50,
            requests_per_connection_burst: 200,
            messages_per_connection_per_second: 20,
            messages_per_connection_burst: 100,
            messages_per_user_per_second: 30,
            messages_per_user_burst: 200,
            logins_per_user_per_minute: 60,
            logins_per_user_burst: 30,
            connections_per_ip_per_second: 200,
            connections_per_ip_burst: 1_000,
            ip_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            flap_connects_max: 15,
            flap_window_ms: 60_000,
            flap_ban_ms: 300_000,
            refusals_before_kick: 20,
            abuse_window_ms: 10_000,
            kick_retry_after_min_ms: 5_000,
            kick_retry_after_max_ms: 30_000,
            tracked_max: 100_000,
        }
    }
}

impl LimitsSettings {
    /// Every limit off (rates 0, no flapping ban, no kick): for test
    /// harnesses whose clients flood on purpose (fairness, back-pressure,
    /// slow consumers) and turn on only the limit they test.
    pub fn off() -> Self {
        Self {
            requests_per_connection_per_second: 0,
            messages_per_connection_per_second: 0,
            messages_per_user_per_second: 0,
            logins_per_user_per_minute: 0,
            connections_per_ip_per_second: 0,
            flap_connects_max: 0,
            refusals_before_kick: 0,
            ..Self::default()
        }
    }

    /// Checks the ranges of the `[limits]` settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, why: &str| {
            Err(ConfigError::Invalid {
                name,
                why: why.into(),
            })
        };
        for (name, rate, burst) in [
            (
                "limits.requests_per_connection_burst",
                self.requests_per_connection_per_second,
                self.requests_per_connection_burst,
            ),
            (
                "limits.messages_per_connection_burst",
                self.messages_per_connection_per_second,
                self.messages_per_connection_burst,
            ),
            (
                "limits.messages_per_user_burst",
                self.messages_per_user_per_second,
                self.messages_per_user_burst,
            ),
            (
                "limits.logins_per_user_burst",
                self.logins_per_user_per_minute,
                self.logins_per_user_burst,
            ),
            (
                "limits.connections_per_ip_burst",
                self.connections_per_ip_per_second,
                self.connections_per_ip_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return invalid(name, "must be at least 1 while its rate is on");
            }
        }
        if self.flap_connects_max > 0 && (self.flap_window_ms == 0 || self.flap_ban_ms == 0) {
            return invalid(
                "limits.flap_window_ms",
                "flap_window_ms and flap_ban_ms must be > 0 while flap_connects_max is",
            );
        }
        if self.flap_ban_ms > u64::from(u32::MAX) {
            return invalid("limits.flap_ban_ms", "must fit retry_after_ms (u32)");
        }
        if self.refusals_before_kick > 0 && self.abuse_window_ms == 0 {
            return invalid("limits.abuse_window_ms", "must be > 0");
        }
        if self.kick_retry_after_min_ms > self.kick_retry_after_max_ms {
            return invalid(
                "limits.kick_retry_after_max_ms",
                "must be at least limits.kick_retry_after_min_ms",
            );
        }
        if self.tracked_max == 0 {
            return invalid("limits.tracked_max", "must be at least 1");
        }
        if let Err(e) = crate::limits::parse_nets(&self.ip_exempt) {
            return Err(ConfigError::Invalid {
                name: "limits.ip_exempt",
                why: e.to_string(),
            });
        }
        Ok(())
    }
}

/// Allow and deny lists by IP or CIDR (`10.0.0.0/8`, `2001:db8::/32`, or a
/// single address), checked right after accept, before anything is
/// allocated for the connection. A listed deny always wins; a non-empty
/// allow list admits only what it lists. The files (one entry per line,
/// `#` comments) are read at start and again on SIGHUP, and add to the
/// inline lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListsSettings {
    /// Client listeners (TCP, WebSocket): only these networks. Default
    /// empty (any).
    pub allow: Vec<String>,
    /// Client listeners: never these networks. Default empty.
    pub deny: Vec<String>,
    /// A file of more client `allow` entries. Default none.
    pub allow_file: Option<PathBuf>,
    /// A file of more client `deny` entries. Default none.
    pub deny_file: Option<PathBuf>,
    /// The HTTP edge (API, `/metrics`, `/healthz`, `/readyz`): only these
    /// networks. Default empty (any).
    pub http_allow: Vec<String>,
    /// The HTTP edge: never these networks. Default empty.
    pub http_deny: Vec<String>,
    /// A file of more HTTP `allow` entries. Default none.
    pub http_allow_file: Option<PathBuf>,
    /// A file of more HTTP `deny` entries. Default none.
    pub http_deny_file: Option<PathBuf>,
}

impl ListsSettings {
    /// Checks that every inline entry parses (the files are read, and
    /// checked, when the server starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, list) in [
            ("lists.allow", &self.allow),
            ("lists.deny", &self.deny),
            ("lists.http_allow", &self.http_allow),
            ("lists.http_deny", &self.http_deny),
        ] {
            if let Err(e) = crate::limits::parse_nets(list) {
                return Err(ConfigError::Invalid {
                    name,
                    why: e.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The sensitive-word filter (`crate::filter`, docs/security.md "Content
/// filter"): word lists checked on every client send's text and on group
/// names and announcements, before the store. Off while `word_files` is
/// empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Word list files, UTF-8, one word or phrase per line, optionally
    /// followed by a tab and its policy (`reject` or `mask`); blank lines
    /// and lines starting with `#` are skipped. Read at start (an error
    /// names the file and line) and again on SIGHUP. Default none: no
    /// filter.
    pub word_files: Vec<PathBuf>,
    /// The policy of a word whose line names none: `reject` (the request is
    /// refused with `CONTENT_REJECTED`) or `mask` (each character of the
    /// word is stored and delivered as `*`). Default `reject`.
    pub default_policy: FilterPolicy,
    /// Words in all lists together at most; a list with more fails the
    /// start (or the reload, which keeps the old lists). Default 200000.
    pub words_max: usize,
}

/// What a listed word does to a request that contains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterPolicy {
    /// Refuse the request (`CONTENT_REJECTED`); nothing is stored.
    Reject,
    /// Store and deliver it with each character of the word replaced by `*`.
    Mask,
}

impl Default for FilterSettings {
    fn default() -> Self {
        Self {
            word_files: Vec::new(),
            default_policy: FilterPolicy::Reject,
            words_max: 200_000,
        }
    }
}

impl FilterSettings {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.words_max == 0 {
            return Err(ConfigError::Invalid {
                name: "filter.words_max",
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

// ---- [encryption]: encryption at rest ----

/// Encryption at rest (docs/security.md, "Encryption at rest"): message
/// contents in either store and media objects are sealed with
/// XChaCha20-Poly1305 under the current key of a key file; every key of the
/// file still opens what it sealed. Off (everything stored in clear) while
/// no key file is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The key file: lines `id = <base64 of 32 random bytes>`, optionally
    /// `current = <id>` (else the first key is current), `#` comments.
    /// Re-read on SIGHUP (keys may be added and `current` changed; a key
    /// still in use may not be removed then). Default none: off.
    pub keys_file: Option<PathBuf>,
}

impl EncryptionSettings {
    /// The key ring of `keys_file` (`None` when unset), shared by whoever
    /// seals with it; registers a SIGHUP reloader that re-reads the file.
    /// The error is one line naming the file (and the line at fault).
    pub fn load_keys(&self) -> anyhow::Result<std::sync::Arc<tern_backend::seal::Keys>> {
        use tern_backend::seal::{KeyRing, Keys};
        let Some(path) = self.keys_file.clone() else {
            return Ok(Keys::new(None));
        };
        let keys = Keys::new(Some(KeyRing::load(&path)?));
        let shared = keys.clone();
        crate::reload::on_hup("encryption", move || {
            let ring = KeyRing::load(&path)?;
            shared
                .replace(ring)
                .map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))
        });
        Ok(keys)
    }
}
