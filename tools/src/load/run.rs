//! The parent process of a run: turns the command line into a [`Plan`],
//! checks the machine's limits (refusing with the fix), spawns `tern-load
//! __worker` processes with ≤ [`limits::WORKER_CONNS_MAX`] connections each,
//! paces them through the phases (connect → setup → go), samples the
//! gateways' RSS and `/metrics`, shows progress, and merges the results.
//!
//! It never opens a client connection itself: all load comes from workers.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    limits::{self, Need},
    report::{self, Report},
    spec::{Plan, Proto, Scenario, WorkerMsg, WorkerResult, WorkerSpec},
};

/// Slack added to every phase deadline of the parent, beyond the workers' own.
pub const PHASE_SLACK_MS: u64 = 60_000;
/// Sources at most (127.0.0.2 ..= 127.0.255.255 would allow more; this is plenty).
pub const SOURCES_MAX: u64 = 4096;
/// Automatic `--sources` keep each (source, target) pair at 1/this of its
/// usable ephemeral ports.
pub const PORT_FILL_DIV: u64 = 4;
/// Bytes of a `/metrics` answer read at most.
pub const METRICS_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Everything a scenario run takes on the command line.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Gateway (or peer) addresses, comma-separated or repeated. Devices are
    /// spread round robin by slot: slot i connects to target i mod N, slots
    /// counted pairs first (user a's devices, then b's), then group members,
    /// then idle connections. So with 2 targets and --devices 1 every 1:1
    /// pair has its sides on different nodes, with --devices 2 each user has
    /// a device on both, and a group's members spread over every target.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<SocketAddr>,
    /// HS256 secret the gateway verifies tokens with.
    #[arg(
        long,
        env = "TERN_JWT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Print the report as one JSON object (plain names: held, failed, ack_p99_us…).
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Protocol: tern, or mqtt / nats / redis (pub/sub) for peer runs.
    #[arg(long, value_enum, default_value = "tern")]
    pub proto: Proto,
    /// Idle connections (idle, storm, mixed).
    #[arg(long, default_value_t = 0)]
    pub conns: u32,
    /// Connects per second over all workers.
    #[arg(long, default_value_t = 5_000)]
    pub ramp: u32,
    /// Seconds to hold connections (idle, storm).
    #[arg(long, default_value_t = 10)]
    pub hold: u32,
    /// Chatting pairs (chat, mixed).
    #[arg(long, default_value_t = 0)]
    pub pairs: u32,
    /// Devices per chatting user (device 0 sends; all receive).
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Messages per second: 1:1 over all pairs (chat, mixed), or group
    /// messages over all groups (group) unless --group-rate is given.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Group messages per second over all groups (mixed; defaults to --rate).
    #[arg(long)]
    pub group_rate: Option<f64>,
    /// Seconds of sending (chat, group, mixed).
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Groups (group, mixed).
    #[arg(long, default_value_t = 0)]
    pub groups: u32,
    /// Members per group, owner included.
    #[arg(long, default_value_t = 100)]
    pub group_size: u32,
    /// Members of each group that send (the first ones).
    #[arg(long, default_value_t = 1)]
    pub group_senders: u32,
    /// Log every operation, sync every device at the end and check the history.
    #[arg(long)]
    pub verify: bool,
    /// Storm: fraction of connections dropped at once.
    #[arg(long, default_value_t = 0.5)]
    pub fraction: f64,
    /// Storm: seconds into the hold at which the drop happens (default 2).
    /// Given to `chat`, drops `--fraction` of the chatting devices at once at
    /// that second: they reconnect (see `--jitter-ms`), resume from their
    /// cursors and resend what was unanswered.
    #[arg(long)]
    pub storm_at: Option<u32>,
    /// Storm: 0 reconnects at once (retry every 100 ms); N > 0 waits a random
    /// 0..N ms first and retries with full-jitter exponential backoff.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u32,
    /// Ping interval of peer connections (Tern uses the Welcome's).
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_ms: u32,
    /// Source addresses 127.0.0.2.. to rotate over (default: as many as the
    /// port range needs, none for small runs).
    #[arg(long)]
    pub sources: Option<u32>,
    /// Worker processes (default: as many as the fd limit needs).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Connections per worker at most.
    #[arg(long, default_value_t = limits::WORKER_CONNS_MAX)]
    pub conns_per_worker: u64,
    /// Gateway (or peer server) PIDs: RSS before and with the connections
    /// held, and their fd limit checked. Comma-separated or repeated.
    #[arg(long, alias = "server-pid", value_delimiter = ',')]
    pub gateway_pid: Vec<u32>,
    /// Prometheus endpoints (http://host:port/metrics) sampled before and after.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Connect + handshake deadline per attempt, ms.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u32,
    /// Wait at most this long for outstanding acks and pushes after the main
    /// phase, ms (the drain ends earlier once every send is answered and no
    /// push arrived for 0.5 s). Sends still unanswered then are timeouts.
    #[arg(long, default_value_t = 30_000)]
    pub drain_ms: u32,
    /// Text payload bytes per message (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: u32,
    /// Longest a device holds back its cumulative `deliver_ack` after a push,
    /// ms; it acks at once when half the server's unacked window is pending.
    /// 0: ack at the end of every read batch.
    #[arg(long, default_value_t = 50)]
    pub ack_delay_ms: u32,
    /// A connection the server closes during the run (e.g. its node was
    /// killed) reconnects to the next --target address (then the one after
    /// on each failed attempt) and syncs what it missed; the report counts
    /// `dropped`, `reconnected` and `reconnect_all_ms` (first drop → last
    /// back).
    #[arg(long)]
    pub reconnect: bool,
    /// Idle connections ack their pushes (a cumulative `deliver_ack`, as
    /// chatting devices do) and count every entry they get in
    /// `entries_received`: the recipients of messages sent by something
    /// else, e.g. the server API (bench/scripts/push_api.sh).
    #[arg(long)]
    pub idle_acks: bool,
    /// Chat: this many devices (device 0 of side b of the first pairs) stop
    /// reading at `--stall-at` s into the run while still writing (their
    /// sends, and full-page sync requests of their conversation): slow
    /// consumers the server's outbox bound should close. Their own latencies
    /// are left out of the histograms; with `--reconnect` they come back and
    /// read again. They read again at the end of the main phase regardless.
    #[arg(long, default_value_t = 0)]
    pub stall: u32,
    /// Chat: seconds into the main phase at which the `--stall` devices stop
    /// reading.
    #[arg(long, default_value_t = 2)]
    pub stall_at: u32,
    /// The control run of `--stall`: the same devices write the same
    /// requests from `--stall-at` on but keep reading, so comparing the two
    /// runs isolates what not reading costs the other clients.
    #[arg(long, requires = "stall")]
    pub stall_reads: bool,
    /// Prefix of every id (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Connect over TLS (the targets are the gateway's `--tls-listen`
    /// addresses; Tern only).
    #[arg(long)]
    pub tls: bool,
    /// With --tls: PEM CA certificates to trust (default: the system's
    /// bundle).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<std::path::PathBuf>,
    /// With --tls: trust any certificate (benchmarks against a self-signed
    /// gateway; no protection against an active attacker).
    #[arg(long, requires = "tls")]
    pub insecure: bool,
    /// With --tls: the name the certificate must carry (default: the
    /// target's IP address).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
}

impl LoadArgs {
    /// The plan of a run of `scenario`.
    pub fn plan(&self, scenario: Scenario) -> anyhow::Result<Plan> {
        let run_id = match &self.run_id {
            Some(r) => r.clone(),
            None => format!("L{:08x}", rand::random::<u32>()),
        };
        tern_protocol::ids::check_id(&format!("{run_id}-g0m0.0"))
            .map_err(|e| anyhow::anyhow!("--run-id {run_id:?}: {e}"))?;
        let (idle, pairs, groups) = match scenario {
            Scenario::Idle | Scenario::Storm => (self.conns, 0, 0),
            Scenario::Chat => (0, self.pairs, 0),
            Scenario::Group | Scenario::Room => (0, 0, self.groups.max(1)),
            Scenario::Mixed => (self.conns, self.pairs, self.groups),
        };
        if self.proto != Proto::Tern && scenario == Scenario::Room {
            bail!("the room scenario runs on Tern only (peers: use group)");
        }
        if self.proto != Proto::Tern && pairs > 0 {
            bail!("peer protocols (--proto mqtt|nats|redis) run idle, storm and group only");
        }
        if self.proto == Proto::Tern && self.jwt_secret.is_empty() {
            bail!("--jwt-secret is required for Tern targets (the gateway's --jwt-secret)");
        }
        if groups > 0
            && (self.group_size < 2
                || self.group_senders == 0
                || self.group_senders > self.group_size)
        {
            bail!("--group-size must be ≥ 2 and --group-senders in 1..=group size");
        }
        if !(0.0..=1.0).contains(&self.fraction) || self.rate < 0.0 || self.devices == 0 {
            bail!("--fraction must be in 0..=1, --rate ≥ 0, --devices ≥ 1");
        }
        let duration_s = match scenario {
            Scenario::Idle | Scenario::Storm => self.hold,
            _ => self.duration,
        };
        let mut plan = Plan {
            scenario,
            proto: self.proto,
            run_id,
            targets: self.target.clone(),
            sources: Vec::new(),
            jwt_secret: self.jwt_secret.clone(),
            idle_conns: idle,
            ramp_per_s: self.ramp.max(1),
            pairs,
            devices: self.devices,
            chat_rate: self.rate,
            groups,
            group_size: if groups > 0 { self.group_size } else { 0 },
            group_senders: self.group_senders,
            group_rate: self.group_rate.unwrap_or(self.rate),
            duration_s,
            storm_fraction: match scenario {
                Scenario::Storm => self.fraction,
                Scenario::Chat if self.storm_at.is_some() => self.fraction,
                _ => 0.0,
            },
            storm_at_s: self.storm_at.unwrap_or(2).min(duration_s),
            jitter_ms: self.jitter_ms,
            verify: self.verify,
            peer_heartbeat_ms: self.heartbeat_ms.max(1000),
            connect_timeout_ms: self.connect_timeout_ms,
            drain_ms: self.drain_ms,
            payload_bytes: self.payload_bytes.max(32),
            ack_delay_ms: self.ack_delay_ms,
            reconnect: self.reconnect,
            idle_acks: self.idle_acks,
            tls: self.tls.then(|| crate::tls::TlsOptions {
                ca_file: self.ca.clone(),
                insecure: self.insecure,
                server_name: self.tls_server_name.clone(),
            }),
            stall_devices: if scenario == Scenario::Chat {
                self.stall.min(pairs)
            } else {
                0
            },
            stall_at_s: self.stall_at.min(duration_s),
            stall_reads: self.stall_reads,
        };
        if plan.tls.is_some() && self.proto != Proto::Tern {
            bail!("--tls is for Tern targets (the gateway's --tls-listen)");
        }
        if let Some(t) = &plan.tls {
            // Checked here, once, so a bad CA file is one clear error.
            t.client_config()?;
        }
        if plan.slots() > u64::from(u32::MAX) {
            bail!("too many connections in one run");
        }
        let lim = limits::read();
        let usable = (lim.port_hi.saturating_sub(lim.port_lo) + 1) * limits::PORT_SHARE_PCT / 100;
        // A storm's dropped connections sit in TIME_WAIT while they come
        // back, so they need their ports twice.
        let per_target = (plan.slots() as f64 * (1.0 + plan.storm_fraction)) as u64;
        let per_target = per_target.div_ceil(plan.targets.len() as u64);
        // Keep each (source, target) pair at a quarter of its ports: the
        // kernel's ephemeral port search in connect() slows down sharply as a
        // pair fills up (seconds per connect near full, measured here).
        let per_pair_max = (usable / PORT_FILL_DIV).max(1);
        let sources = match self.sources {
            Some(n) => u64::from(n),
            None if per_target > per_pair_max => per_target.div_ceil(per_pair_max),
            None => 0,
        };
        plan.sources = (0..sources.min(SOURCES_MAX))
            .map(|k| Ipv4Addr::from(0x7f00_0002u32 + k as u32))
            .collect();
        Ok(plan)
    }
}

/// Runs a scenario end to end; returns the merged report.
pub fn run(scenario: Scenario, args: &LoadArgs) -> anyhow::Result<Report> {
    let plan = args.plan(scenario)?;
    let lim = limits::read();
    let loopback = plan.targets.iter().all(|t| t.ip().is_loopback());
    let need = Need {
        conns: plan.slots(),
        targets: plan.targets.len() as u64,
        sources: plan.sources.len() as u64,
        loopback,
        gateway_nofile: args
            .gateway_pid
            .iter()
            .filter_map(|&p| limits::process_nofile(p))
            .collect(),
    };
    let warnings = limits::check(&lim, &need)?;
    let per_worker = limits::conns_per_worker(&lim)?.min(args.conns_per_worker.max(1));
    let slots = plan.slots();
    let workers = args
        .workers
        .map(u64::from)
        .unwrap_or_else(|| slots.div_ceil(per_worker))
        .max(1)
        .min(slots.max(1));
    if slots.div_ceil(workers) > per_worker {
        bail!(
            "{} connections over {workers} workers is more than {per_worker} per worker; fix: --workers {} or more",
            slots,
            slots.div_ceil(per_worker)
        );
    }
    let rss = |pids: &[u32]| -> Option<u64> {
        (!pids.is_empty()).then(|| {
            pids.iter()
                .filter_map(|&p| limits::process_rss_bytes(p))
                .sum()
        })
    };
    let rss_before = rss(&args.gateway_pid);
    let metrics_before = scrape_all(&args.metrics);

    let exe = std::env::current_exe().context("finding the tern-load binary")?;
    let mut fleet = Fleet::spawn(&exe, &plan, workers, slots)?;
    let started = Instant::now();
    let progress = !args.quiet;

    // Connect: every slot tried once.
    let ramp_ms = slots * 1000 / u64::from(plan.ramp_per_s.max(1));
    let deadline = ramp_ms + u64::from(plan.connect_timeout_ms) + PHASE_SLACK_MS;
    // The deadline moves on while connections keep completing: a loaded
    // machine ramps slower than asked, and that is a result, not a hang.
    fleet.wait_all_progressing(
        deadline,
        u64::from(plan.connect_timeout_ms) + PHASE_SLACK_MS,
        progress,
        started,
        |m| matches!(m, WorkerMsg::Connected { .. }),
    )?;
    fleet.tell("setup")?;
    fleet.wait_all(
        super::worker::SETUP_MS_MAX + PHASE_SLACK_MS,
        progress,
        started,
        |m| matches!(m, WorkerMsg::Ready),
    )?;
    let rss_held = rss(&args.gateway_pid);
    fleet.tell("go")?;
    let main = u64::from(plan.duration_s) * 1000
        + u64::from(plan.drain_ms)
        + super::worker::FINAL_SYNC_MS_MAX
        + PHASE_SLACK_MS;
    let mut results: Vec<WorkerResult> = Vec::new();
    fleet.wait_all(main, progress, started, |m| {
        if let WorkerMsg::Result(r) = m {
            results.push((**r).clone());
            true
        } else {
            false
        }
    })?;
    fleet.reap();
    let metrics_after = scrape_all(&args.metrics);

    let mut report = report::merge(&plan, workers, results);
    report.sysctls = lim;
    report.warnings = warnings;
    report.gateway_rss_before_bytes = rss_before;
    report.gateway_rss_held_bytes = rss_held;
    if let (Some(b), Some(h)) = (rss_before, rss_held)
        && report.established > 0
    {
        report.gateway_bytes_per_conn = Some((h as f64 - b as f64) / report.established as f64);
    }
    for (k, after) in metrics_after {
        let before = metrics_before.get(&k).copied().unwrap_or(0.0);
        if k.contains("_total") && after != before {
            report.metrics_delta.insert(k, after - before);
        }
    }
    Ok(report)
}

struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: mpsc::Receiver<(usize, Result<WorkerMsg, String>)>,
    last: Vec<super::spec::Progress>,
    last_print: Instant,
}

impl Fleet {
    fn spawn(exe: &PathBuf, plan: &Plan, workers: u64, slots: u64) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let per = slots.div_ceil(workers);
        for w in 0..workers {
            let start = (w * per).min(slots);
            let end = ((w + 1) * per).min(slots);
            let spec = WorkerSpec {
                plan: plan.clone(),
                index: w as u32,
                workers: workers as u32,
                slot_start: start as u32,
                slot_end: end as u32,
            };
            let mut child = Command::new(exe)
                .arg("__worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("spawning worker {w} ({})", exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let mut line = serde_json::to_vec(&spec)?;
            line.push(b'\n');
            stdin.write_all(&line)?;
            stdin.flush()?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            let idx = w as usize;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let msg = match line {
                        Ok(l) => serde_json::from_str::<WorkerMsg>(&l)
                            .map_err(|e| format!("bad line from worker: {e}")),
                        Err(e) => Err(e.to_string()),
                    };
                    let stop = msg.is_err() || matches!(msg, Ok(WorkerMsg::Result(_)));
                    if tx.send((idx, msg)).is_err() || stop {
                        return;
                    }
                }
                let _ = tx.send((idx, Err("worker exited".into())));
            });
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Self {
            last: vec![Default::default(); children.len()],
            children,
            stdins,
            rx,
            last_print: Instant::now(),
        })
    }

    fn tell(&mut self, cmd: &str) -> anyhow::Result<()> {
        for s in &mut self.stdins {
            writeln!(s, "{cmd}")?;
            s.flush()?;
        }
        Ok(())
    }

    /// Waits until every worker sent a message `done` accepts.
    fn wait_all(
        &mut self,
        deadline_ms: u64,
        progress: bool,
        started: Instant,
        done: impl FnMut(&WorkerMsg) -> bool,
    ) -> anyhow::Result<()> {
        self.wait_all_progressing(deadline_ms, 0, progress, started, done)
    }

    /// [`Fleet::wait_all`], and while the workers' connection outcomes
    /// (live + failed) keep growing, the deadline is at least
    /// `stall_ms` after the last growth.
    fn wait_all_progressing(
        &mut self,
        deadline_ms: u64,
        stall_ms: u64,
        progress: bool,
        started: Instant,
        mut done: impl FnMut(&WorkerMsg) -> bool,
    ) -> anyhow::Result<()> {
        let mut until = Instant::now() + Duration::from_millis(deadline_ms);
        let mut outcomes = 0u64;
        let mut pending: Vec<bool> = vec![true; self.children.len()];
        while pending.iter().any(|&p| p) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                bail!("workers did not finish a phase within {deadline_ms} ms");
            }
            let (w, msg) = match self.rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(x) => x,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.kill();
                    bail!("all workers went away");
                }
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) if pending[w] => {
                    self.kill();
                    bail!("worker {w}: {e}");
                }
                Err(_) => continue,
            };
            match &msg {
                WorkerMsg::Progress(p) => {
                    self.last[w] = p.clone();
                    let now_outcomes: u64 = self.last.iter().map(|p| p.live + p.failed).sum();
                    if stall_ms > 0 && now_outcomes > outcomes {
                        outcomes = now_outcomes;
                        until = until.max(Instant::now() + Duration::from_millis(stall_ms));
                    }
                    if progress && self.last_print.elapsed() >= Duration::from_secs(1) {
                        self.last_print = Instant::now();
                        let mut t = super::spec::Progress::default();
                        for p in &self.last {
                            t.live += p.live;
                            t.failed += p.failed;
                            t.sent += p.sent;
                            t.acked += p.acked;
                            t.delivered += p.delivered;
                        }
                        eprintln!(
                            "[{:>6.1}s] live {} failed {} sent {} acked {} delivered {}",
                            started.elapsed().as_secs_f64(),
                            t.live,
                            t.failed,
                            t.sent,
                            t.acked,
                            t.delivered
                        );
                    }
                }
                WorkerMsg::Fatal { error } => {
                    self.kill();
                    bail!("worker {w}: {error}");
                }
                m if done(m) => pending[w] = false,
                _ => {}
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn reap(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A worker that outlives an error of the parent would hold its
        // connections; end the ones still running (ours, by handle).
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn scrape_all(urls: &[String]) -> BTreeMap<String, f64> {
    let mut all = BTreeMap::new();
    for (k, url) in urls.iter().enumerate() {
        if let Ok(text) = http_get(url) {
            for (name, v) in parse_metrics(&text) {
                let key = if urls.len() > 1 {
                    format!("{k}:{name}")
                } else {
                    name
                };
                all.insert(key, v);
            }
        }
    }
    all
}

/// A plain HTTP/1.0 GET of `http://host:port/path` (loopback gateways).
pub fn http_get(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut body = String::new();
    s.take(METRICS_BYTES_MAX).read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map_or(body.clone(), |(_, b)| b.to_string()))
}

/// Samples of a Prometheus text exposition: `name{labels}` → value.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_parses() {
        // Proves counter lines with and without labels parse, comments do not.
        let t = "# HELP x y\nx_total 3\ny_total{reason=\"a b\"} 4.5\n";
        assert_eq!(
            parse_metrics(t),
            vec![
                ("x_total".into(), 3.0),
                ("y_total{reason=\"a b\"}".into(), 4.5)
            ]
        );
    }
}
