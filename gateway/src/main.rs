//! `tern`: run the gateway (`serve`), print the effective configuration
//! (`config`), or mint a development token (`token`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tern_gateway::{
    auth,
    config::{Config, DEFAULT_TOML, Driver, StoreKind},
    server::Server,
    service::BackendService,
};

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

#[derive(Parser, Debug)]
#[command(name = "tern", version, about = "Tern: the connection tier for chat")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (embedded store by default; no Redis needed).
    Serve(Overrides),
    /// Print the effective configuration as TOML (`--defaults`: the
    /// commented defaults file).
    Config {
        #[command(flatten)]
        overrides: Overrides,
        /// Print the commented default configuration instead.
        #[arg(long)]
        defaults: bool,
    },
    /// Mint an HS256 token for development and load tests.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Audience (`aud`), if your config requires one.
        #[arg(long)]
        audience: Option<String>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// Settings that flags and `TERN_*` variables override (over `--config`).
#[derive(Args, Debug, Default)]
struct Overrides {
    /// TOML config file (defaults: `tern config --defaults`).
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// TCP client listener address.
    #[arg(long, env = "TERN_LISTEN")]
    listen: Option<SocketAddr>,
    /// WebSocket client listener address.
    #[arg(long, env = "TERN_WS_LISTEN")]
    ws_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "TERN_HTTP")]
    http: Option<SocketAddr>,
    /// Directory of the embedded store.
    #[arg(long, env = "TERN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store: embedded (default) or redis.
    #[arg(long, env = "TERN_STORE", value_enum)]
    store: Option<StoreKind>,
    /// Redis URL (repeat for cluster seed nodes with --redis-cluster).
    #[arg(long = "redis-url", env = "TERN_REDIS_URL", value_delimiter = ',')]
    redis_url: Vec<String>,
    /// The Redis URLs are Redis Cluster seed nodes.
    #[arg(long)]
    redis_cluster: bool,
    /// HS256 secret for client tokens.
    #[arg(long, env = "TERN_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Number of shards (0: one per core).
    #[arg(long, env = "TERN_SHARDS")]
    shards: Option<usize>,
    /// I/O driver of the shards.
    #[arg(long, env = "TERN_DRIVER", value_enum)]
    driver: Option<Driver>,
    /// This node's id.
    #[arg(long, env = "TERN_NODE_ID")]
    node_id: Option<String>,
}

impl Overrides {
    fn resolve(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen.tcp = Some(v);
        }
        if let Some(v) = self.ws_listen {
            cfg.listen.ws = Some(v);
        }
        if let Some(v) = self.http {
            cfg.listen.http = Some(v);
        }
        if let Some(v) = &self.data_dir {
            cfg.backend.data_dir = v.clone();
        }
        if let Some(v) = self.store {
            cfg.backend.store = v;
        }
        if !self.redis_url.is_empty() {
            cfg.backend.redis_urls = self.redis_url.clone();
        }
        if self.redis_cluster {
            cfg.backend.redis_cluster = true;
        }
        if let Some(v) = &self.jwt_secret {
            cfg.auth.jwt_secret = v.clone();
        }
        if let Some(v) = self.shards {
            cfg.shards.count = v;
        }
        if let Some(v) = self.driver {
            cfg.shards.driver = v;
        }
        if let Some(v) = &self.node_id {
            cfg.node_id = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> anyhow::Result<()> {
    // Transparent huge pages back the allocator's sparse arenas with 2 MiB
    // pages, which multiplied the resident memory of many small idle
    // connections (measured: ~70 MiB of 96 MiB at 19,000 connections were
    // huge pages). Like Redis, Tern opts its own process out.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and only
    // changes this process's memory policy.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(o) => serve(o.resolve()?),
        Command::Config {
            overrides,
            defaults,
        } => {
            if defaults {
                print!("{DEFAULT_TOML}");
            } else {
                print!("{}", overrides.resolve()?.to_toml());
            }
            Ok(())
        }
        Command::Token {
            user,
            ttl,
            audience,
            overrides,
        } => {
            let cfg = overrides.resolve()?;
            anyhow::ensure!(
                !cfg.auth.jwt_secret.is_empty(),
                "no secret: pass --jwt-secret or set TERN_JWT_SECRET (the same one `tern serve` uses)"
            );
            let token = auth::mint_hs256(&cfg.auth.jwt_secret, &user, ttl, audience.as_deref())?;
            println!("{token}");
            Ok(())
        }
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    if cfg.auth.jwt_secret.is_empty() && cfg.auth.algorithm == "HS256" {
        anyhow::bail!(
            "no JWT secret: pass --jwt-secret S (or TERN_JWT_SECRET); mint client tokens with `tern token --user U --jwt-secret S`"
        );
    }
    let service = Arc::new(
        BackendService::from_config(&cfg)
            .with_context(|| format!("opening the {:?} store", cfg.backend.store))?,
    );
    let server = Server::start(&cfg, service)?;
    // Wait for SIGTERM or SIGINT, then drain.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "draining");
    }
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
