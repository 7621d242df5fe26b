//! `tern`: run the gateway (`serve`), print the effective configuration
//! (`config`), or mint a development token (`token`).
//!
//! Errors end here: each is printed once, as one `error: …` line with its
//! causes (`{:#}`), and the process exits with status 1 (clap's usage
//! errors: 2). No backtrace, whatever `RUST_BACKTRACE` says: these are
//! operator errors, not bugs.

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use clap::{
    Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, builder::BoolishValueParser,
};
use tern_gateway::{
    auth,
    config::{self, Config, DEV_JWT_SECRET, Driver, LogFormat, StoreKind},
    server::{Listeners, Server},
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
    /// Print the effective configuration as TOML, secrets redacted (`--defaults`: the
    /// commented defaults file, with each key's `TERN_*` variable).
    Config {
        #[command(flatten)]
        overrides: Overrides,
        /// Print the commented default configuration instead.
        #[arg(long)]
        defaults: bool,
    },
    /// Mint an HS256 token for development and load tests.
    Token(TokenArgs),
}

/// Settings that flags and their `TERN_*` variables override, over the
/// config file and the generic `TERN_<SECTION>_<KEY>` variables.
/// `--help` shows each one's built-in default (added from
/// `Config::default()` by [`with_defaults`]).
#[derive(Args, Debug, Default)]
struct Overrides {
    /// TOML config file (all settings: `tern config --defaults`).
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: sign tokens with a fixed, public development
    /// secret and print the `tern-cli` commands to chat as alice and bob.
    /// Refused with a JWT secret or key, or a listener off loopback.
    #[arg(long, env = "TERN_DEV", value_parser = BoolishValueParser::new())]
    dev: bool,
    /// TCP client listener: ip:port or host:port (a host name binds its
    /// first address).
    #[arg(long, env = "TERN_LISTEN", value_name = "ADDR", value_parser = config::resolve_addr)]
    listen: Option<SocketAddr>,
    /// WebSocket client listener: ip:port or host:port.
    #[arg(long, env = "TERN_WS_LISTEN", value_name = "ADDR", value_parser = config::resolve_addr)]
    ws_listen: Option<SocketAddr>,
    /// TCP-over-TLS client listener: ip:port or host:port (needs
    /// `[tls] cert_file` and `key_file`).
    #[arg(long, env = "TERN_TLS_LISTEN", value_name = "ADDR", value_parser = config::resolve_addr)]
    tls_listen: Option<SocketAddr>,
    /// WebSocket-over-TLS (wss://) client listener: ip:port or host:port.
    #[arg(long, env = "TERN_WSS_LISTEN", value_name = "ADDR", value_parser = config::resolve_addr)]
    wss_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz: ip:port or host:port.
    #[arg(long, env = "TERN_HTTP", value_name = "ADDR", value_parser = config::resolve_addr)]
    http: Option<SocketAddr>,
    /// Directory of the embedded store.
    #[arg(long, env = "TERN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store: embedded or redis.
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
    /// A server API key with every scope, named `env` (more keys and
    /// scopes: `[[api.keys]]` in the config file).
    #[arg(long, env = "TERN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Number of shards (0: one per core).
    #[arg(long, env = "TERN_SHARDS")]
    shards: Option<usize>,
    /// I/O driver of the shards.
    #[arg(long, env = "TERN_DRIVER", value_enum)]
    driver: Option<Driver>,
    /// This node's id.
    #[arg(long, env = "TERN_NODE_ID")]
    node_id: Option<String>,
    /// Log lines as human text or JSON.
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Which log events, as a tracing filter (e.g. `debug`).
    #[arg(long, env = "TERN_LOG")]
    log_filter: Option<String>,
}

/// `tern token`: only what a token needs.
#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    /// Audience (`aud`), if the server requires one.
    #[arg(long)]
    audience: Option<String>,
    /// HS256 secret: the one `tern serve` verifies with.
    #[arg(long, env = "TERN_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Take the secret from this config file (`auth.jwt_secret`).
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Sign with the development secret of `tern serve --dev`.
    #[arg(long, env = "TERN_DEV", value_parser = BoolishValueParser::new())]
    dev: bool,
}

impl Overrides {
    fn resolve(&self) -> anyhow::Result<Config> {
        let mut cfg = load_config(self.config.as_deref())?;
        if let Some(v) = self.listen {
            cfg.listen.tcp = Some(v);
        }
        if let Some(v) = self.ws_listen {
            cfg.listen.ws = Some(v);
        }
        if let Some(v) = self.tls_listen {
            cfg.listen.tls = Some(v);
        }
        if let Some(v) = self.wss_listen {
            cfg.listen.wss = Some(v);
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
        if let Some(v) = &self.api_key {
            cfg.api.keys.push(tern_gateway::config::ApiKeyConfig {
                name: "env".into(),
                key: v.clone(),
                scopes: vec!["admin".into()],
                tenant: String::new(),
            });
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
        if let Some(v) = self.log_format {
            cfg.log.format = v;
        }
        if let Some(v) = &self.log_filter {
            cfg.log.filter = v.clone();
        }
        if self.dev {
            cfg.apply_dev_mode()?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The defaults, the config file if any, then this process's
/// `TERN_<SECTION>_<KEY>` variables (flags go on top; not yet validated).
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let reserved = flag_env_vars();
    let reserved: Vec<&str> = reserved.iter().map(String::as_str).collect();
    Ok(Config::load(path, tern_env_vars()?, &reserved)?)
}

/// The variables clap reads for flags of any subcommand (`TERN_CONFIG`,
/// `TERN_DEV`, `TERN_LOG`, `TERN_LISTEN`, …): not config keys, so the
/// generic overlay leaves them to clap. Where one is also a key's variable
/// (`TERN_NODE_ID`, `TERN_LOG_FORMAT`) both read the same value into the
/// same key.
fn flag_env_vars() -> Vec<String> {
    let cmd = Cli::command();
    let mut vars: Vec<String> = cmd
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .filter_map(|arg| arg.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    vars.sort();
    vars.dedup();
    vars
}

/// The `TERN_*` variables of this process; one that is not UTF-8 is an
/// error naming it.
fn tern_env_vars() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !name
            .as_encoded_bytes()
            .starts_with(config::ENV_PREFIX.as_bytes())
        {
            continue;
        }
        let name = name
            .into_string()
            .map_err(|n| anyhow::anyhow!("environment variable {n:?} is not UTF-8"))?;
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("environment variable {name}: value is not UTF-8"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// Appends `[default: …]` to the help of every `serve`/`config` flag that
/// has one, taken from `Config::default()` so it cannot drift. (A clap
/// `default_value` would instead always override the config file.)
fn with_defaults(cmd: clap::Command) -> clap::Command {
    let d = Config::default();
    let addr = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let defaults = [
        ("listen", addr(d.listen.tcp)),
        ("ws_listen", addr(d.listen.ws)),
        ("tls_listen", addr(d.listen.tls)),
        ("wss_listen", addr(d.listen.wss)),
        ("http", addr(d.listen.http)),
        ("data_dir", d.backend.data_dir.display().to_string()),
        ("store", "embedded".to_owned()),
        ("shards", d.shards.count.to_string()),
        ("driver", d.shards.driver.label().to_owned()),
        ("node_id", "the hostname".to_owned()),
        ("log_format", "text".to_owned()),
        ("log_filter", d.log.filter.clone()),
    ];
    let add = |mut sub: clap::Command| {
        for (id, value) in &defaults {
            sub = sub.mut_arg(*id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
        sub
    };
    cmd.mut_subcommand("serve", add)
        .mut_subcommand("config", add)
}

fn main() -> ExitCode {
    // Transparent huge pages back the allocator's sparse arenas with 2 MiB
    // pages, which multiplied the resident memory of many small idle
    // connections (measured: ~70 MiB of 96 MiB at 19,000 connections were
    // huge pages). Like Redis, Tern opts its own process out.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and only
    // changes this process's memory policy.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let matches = with_defaults(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(o) => serve(&o),
        Command::Config {
            overrides,
            defaults,
        } => {
            if defaults {
                print!("{}", config::defaults_with_env());
            } else {
                print!("{}", overrides.resolve()?.to_toml_redacted());
            }
            Ok(())
        }
        Command::Token(t) => {
            let secret = match (&t.jwt_secret, &t.config, t.dev) {
                (Some(s), _, _) => s.clone(),
                (None, _, true) => DEV_JWT_SECRET.to_owned(),
                // The config file and the key variables, as `serve` reads
                // them (`TERN_AUTH_JWT_SECRET` too).
                (None, path, false) => load_config(path.as_deref())?.auth.jwt_secret,
            };
            anyhow::ensure!(
                !secret.is_empty(),
                "no secret: pass --jwt-secret S or set TERN_JWT_SECRET (the one `tern serve` uses), or --dev for a `tern serve --dev` server"
            );
            let token = auth::mint_hs256(&secret, &t.user, t.ttl, t.audience.as_deref())?;
            println!("{token}");
            Ok(())
        }
    }
}

fn serve(overrides: &Overrides) -> anyhow::Result<()> {
    let cfg = overrides.resolve()?;
    init_logs(&cfg.log);
    if cfg.auth.jwt_secret.is_empty() && cfg.auth.algorithm == "HS256" {
        anyhow::bail!(
            "no JWT secret: pass --jwt-secret S (or TERN_JWT_SECRET) and mint client tokens with `tern token --user U --jwt-secret S`; or try Tern on this machine with --dev"
        );
    }
    // Everything that can be checked without side effects first, then the
    // listeners, and only then the store: a second tern on the same ports
    // stops at the bind and never creates or locks a data dir.
    auth::Verifier::new(&cfg.auth).context("auth")?;
    // Catch SIGTERM/SIGINT before anything starts: a signal that arrives
    // while the store opens or the shards start is then a drain once they
    // run, not the default action (killed mid-start, a failed exit status).
    // SIGHUP reloads what lives in files (`tern_gateway::reload`).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let listeners = Listeners::bind(&cfg)?;
    let service = Arc::new(open_store(&cfg)?);
    let server = Server::start_on(&cfg, listeners, service)?;
    if overrides.dev {
        print_dev_banner(server.tcp_addr, server.http_addr, !cfg.api.keys.is_empty());
    }
    // Reload on each SIGHUP; drain on SIGTERM or SIGINT.
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            let failed = tern_gateway::reload::reload_all();
            tracing::info!(failed, "SIGHUP: reload done");
            continue;
        }
        tracing::info!(signal = sig, "draining");
        break;
    }
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Opens the configured store; errors name the data dir or the Redis URLs.
fn open_store(cfg: &Config) -> anyhow::Result<BackendService> {
    match cfg.backend.store {
        StoreKind::Embedded => {
            let dir = &cfg.backend.data_dir;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create data dir {}", dir.display()))?;
            BackendService::from_config(cfg).context("opening the embedded store")
        }
        StoreKind::Redis => BackendService::from_config(cfg).with_context(|| {
            format!(
                "opening the Redis store at {}",
                cfg.backend.redis_urls.join(", ")
            )
        }),
    }
}

/// Logs go to stderr: text (ANSI colours only on a terminal, and not with
/// `NO_COLOR`) or JSON lines.
fn init_logs(log: &config::LogConfig) {
    use tracing_subscriber::{
        filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
    };
    // `validate` checked the configured filter; `TERN_LOG` was folded into
    // it by the `--log-filter` flag's env. `Targets` rather than
    // `EnvFilter`: the same `level,target=level` syntax without a regex
    // engine in the build.
    let filter: Targets = log
        .filter
        .parse()
        .unwrap_or_else(|_| config::LOG_FILTER_DEFAULT.parse().unwrap_or_default());
    let registry = tracing_subscriber::registry().with(filter);
    match log.format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi);
            registry.with(layer).init();
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_ansi(false);
            registry.with(layer).init();
        }
    }
}

/// The development-mode notice, with the page to open and the exact
/// commands to chat.
fn print_dev_banner(tcp: Option<SocketAddr>, http: Option<SocketAddr>, api_key: bool) {
    let cli = tern_cli_path();
    let server = match tcp {
        Some(a) if a.to_string() == "127.0.0.1:7400" => String::new(),
        Some(a) => format!(" --server {a}"),
        None => " --server (no TCP listener!)".to_owned(),
    };
    let line = "=".repeat(72);
    let page = match http {
        Some(a) => {
            let admin = if api_key {
                format!("Admin console: http://{a}/admin (sign in with your API key).")
            } else {
                format!("Admin console: http://{a}/admin (start with --api-key K to sign in).")
            };
            format!(
                "Chat in a browser: open http://{a}/ in two windows, sign in as alice\n\
                 and as bob (any user id works in development mode).\n{admin}\n\n\
                 Or chat in terminals:\n"
            )
        }
        None => "Chat as alice and as bob, each in a terminal of its own:\n".to_owned(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{line}\n\
         DEVELOPMENT MODE: tokens are signed with the public secret \"{DEV_JWT_SECRET}\",\n\
         so anyone who can reach this server can log in as anyone. Never expose it.\n\
         \n\
         {page}\
         \n    {cli}{server} --user alice --jwt-secret {DEV_JWT_SECRET}\
         \n    {cli}{server} --user bob --jwt-secret {DEV_JWT_SECRET}\n\
         \n\
         then type /open bob as alice, and a line of text. Ctrl-C stops the server.\n\
         {line}"
    );
    let _ = out.flush();
}

/// `tern-cli` beside this binary, spelt the way this binary was started
/// (`./target/release/tern` gives `./target/release/tern-cli`, so the
/// printed command works from the same directory), else its absolute path,
/// else the bare name (on `PATH`).
fn tern_cli_path() -> String {
    let typed = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .map(|p| p.with_file_name("tern-cli"));
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("tern-cli"));
    typed
        .into_iter()
        .chain(beside)
        .find(|p| p.exists())
        .map_or_else(|| "tern-cli".to_owned(), |p| p.display().to_string())
}
