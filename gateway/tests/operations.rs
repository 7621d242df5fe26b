//! The operator's view of a real `tern serve` process (issue 18): the
//! metric names the Grafana dashboard (`deploy/grafana/tern.json`) and the
//! Prometheus alert rules (`deploy/prometheus/alerts.yml`) query exist in
//! its `/metrics`, the TLS certificate's expiry gauge is the certificate's
//! notAfter, and its JSON logs are JSON with ids and never message content.
//! Each test spawns the `tern` binary on loopback ports and drives it with
//! the real protocol client of `support`. The deploy files' own checks
//! (systemd-analyze, hadolint, promtool, the compose file, the local
//! cluster script) are in deploy/check.sh.
// Tests poll with short sleeps.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::{Client, SECRET, WAIT, delivered_text, http_request};
use tern_protocol::pb::{self, frame::Body};

/// How long a process may take to start or to exit.
const START_WAIT: Duration = Duration::from_secs(30);

/// The repository's root (the gateway crate's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `N` loopback addresses for a `tern` to listen on ([`tern_testkit::free_port`]).
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    std::array::from_fn(|_| SocketAddr::from(([127, 0, 0, 1], tern_testkit::free_port())))
}

/// A `tern serve` process; its stderr collected line by line; killed on drop
/// if still running.
struct Tern {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    tcp: SocketAddr,
    http: SocketAddr,
}

impl Tern {
    /// `tern serve` on fresh loopback ports in `dir`, with the test secret,
    /// `extra` arguments and only `envs` in its environment.
    fn serve(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let [tcp, ws, http] = free_addrs::<3>();
        let (t, w, h) = (tcp.to_string(), ws.to_string(), http.to_string());
        let mut args = vec![
            "serve",
            "--listen",
            &t,
            "--ws-listen",
            &w,
            "--http",
            &h,
            "--shards",
            "2",
            "--jwt-secret",
            SECRET,
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(&args)
            .current_dir(dir)
            .env_clear()
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut t = Self {
            child,
            lines,
            stderr: Vec::new(),
            tcp,
            http,
        };
        let ok = t.pump_until(START_WAIT, |l| l.iter().any(|l| l.contains("tern serving")));
        assert!(ok, "tern did not start:\n{}", t.stderr.join("\n"));
        t
    }

    /// Collects stderr for at most `wait`; true once `done` holds (or the
    /// process exited and its output was read, then `done` decides).
    fn pump_until(&mut self, wait: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => self.stderr.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(&self.stderr),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if done(&self.stderr) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }

    /// SIGTERM; waits (bounded) for the exit and the rest of its stderr.
    fn terminate(&mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill with a pid of our own child and a valid signal.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // The reader thread ends at EOF, when the process has exited.
        self.pump_until(START_WAIT, |_| false);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tern exited with {status}");
    }

    /// The `/metrics` body (classic text format).
    fn metrics(&self) -> String {
        let (status, _, body) = http_request(self.http, "GET", "/metrics", &[], &[]);
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    }

    /// Waits (bounded) until `/metrics` has the line `sample`.
    fn wait_sample(&self, sample: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics();
            if text.lines().any(|l| l == sample) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{sample}` in:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sample names of a text exposition (`name{labels} value` or
/// `name value`), comments skipped.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names a PromQL expression reads: identifiers starting with
/// `tern_` or `process_`. Any other identifier right before a `{` selector
/// must be `up` (the series Prometheus makes for each target), so a name
/// outside those prefixes cannot slip past unchecked.
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(ident) {
        let tail = &rest[start..];
        let end = tail.find(|c| !ident(c)).unwrap_or(tail.len());
        let (word, after) = tail.split_at(end);
        // Label values and strings are quoted: skip what follows a quote.
        let quoted = rest[..start].ends_with('"') || rest[..start].ends_with('\'');
        if !quoted {
            if word.starts_with("tern_") || word.starts_with("process_") {
                names.push(word.to_owned());
            } else if after.starts_with('{') {
                assert_eq!(word, "up", "unexpected metric `{word}` in {expr}");
            }
        }
        rest = after;
    }
    names
}

/// Every `expr` string in a Grafana dashboard's JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Writes a self-signed `localhost` certificate valid until 2031-05-17
/// 00:00:00 UTC and its key into `dir`: (cert file, key file).
fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 17);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Every metric the dashboard and the alert rules read is a sample name of
/// a live `tern serve`'s `/metrics` (started here with a TLS listener, so the
/// certificate-expiry gauge is shown); the dashboard has the panels the
/// issue asks for; the expiry gauge is the certificate's notAfter; one
/// login and one send count in `tern_logins_total` and
/// `tern_messages_sent_total`.
#[test]
fn dashboard_and_alert_rules_query_only_metrics_tern_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let [tls] = free_addrs::<1>();
    let tls = tls.to_string();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tern = Tern::serve(
        dir.path(),
        &["--tls-listen", &tls],
        &[("TERN_TLS_CERT_FILE", cert), ("TERN_TLS_KEY_FILE", key)],
    );

    let (mut alice, _) = Client::login(tern.tcp, "alice", "phone");
    let ack = alice.send_text("bob", "m1", "hello");
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    tern.wait_sample("tern_logins_total 1");
    tern.wait_sample("tern_messages_sent_total 1");
    tern.wait_sample("tern_tls_cert_expiry_timestamp_seconds 1936742400");
    let served = sample_names(&tern.metrics());

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tern.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{} dashboard queries", exprs.len());
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Connections",
        "Logins / s",
        "Sends / s",
        "Deliveries / s",
        "Send → ack p50 / p99",
        "Store latency p50 / p99",
        "Queue depths",
        "Drops / s",
    ] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }

    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    let alerts = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert_eq!(rule_exprs.len(), alerts, "every rule's expr on one line");
    for want in [
        "TernNodeDown",
        "TernSendAckP99High",
        "TernBackendQueueSaturated",
        "TernWebhookEventsDropped",
        "TernRedisRouteWritesFailing",
        "TernTlsCertExpiresSoon",
    ] {
        assert!(rules.contains(&format!("- alert: {want}")), "no {want}");
    }

    let mut missing = Vec::new();
    for (file, expr) in exprs
        .iter()
        .map(|e| ("tern.json", e))
        .chain(rule_exprs.iter().map(|e| ("alerts.yml", e)))
    {
        let names = metric_names(expr);
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "{file}: no metric in {expr}"
        );
        for n in names {
            if !served.contains(&n) {
                missing.push(format!("{file}: {n} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics:\n{}",
        missing.join("\n")
    );
}

/// With `--log-format json` (and every target at debug), each line tern
/// writes is one JSON object with `timestamp`, `level`, `target` and
/// `fields.message`; a failed login names the shard, the peer and the
/// device and no token; an operator kick names the user and the device;
/// and neither a message's text nor any token appears anywhere, though the
/// message was sent, stored and delivered.
#[test]
fn json_logs_are_json_with_ids_and_never_message_content() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = "operations-test-api-key-0123456789";
    let mut tern = Tern::serve(
        dir.path(),
        &["--log-format", "json", "--log-filter", "debug"],
        &[("TERN_API_KEY", api_key)],
    );
    let secret_text = "the launch code is 7Q-XYZZY-42";

    // A failed login: a token signed with another secret.
    let bad_token = tern_gateway::auth::mint_hs256("not-the-secret", "mallory", 60, None).unwrap();
    let mut mallory = Client::connect(tern.tcp);
    let reply = mallory.request(Body::Auth(pb::Auth {
        token: bad_token.clone(),
        device_id: "mallory-laptop".into(),
        protocol_version: 1,
        ..Default::default()
    }));
    assert!(matches!(reply.body, Some(Body::Error(_))), "{reply:?}");

    let (mut alice, _) = Client::login(tern.tcp, "alice", "alice-phone");
    let (mut bob, _) = Client::login(tern.tcp, "bob", "bob-tablet");
    let ack = alice.send_text("bob", "m1", secret_text);
    assert!(matches!(ack.body, Some(Body::SendAck(_))), "{ack:?}");
    let push = bob.wait_push(|f| delivered_text(f).is_some());
    assert_eq!(delivered_text(&push).unwrap().2, secret_text);

    let (status, _, body) = http_request(
        tern.http,
        "POST",
        "/api/v1/users/alice/kick",
        &[
            ("Authorization", &format!("Bearer {api_key}")),
            ("Content-Type", "application/json"),
        ],
        br#"{"device_id": "alice-phone"}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(alice.closed_within(WAIT), "alice was not kicked");
    let kicked = tern.pump_until(WAIT, |l| l.iter().any(|l| l.contains("\"kicked\"")));
    assert!(kicked, "no kick line:\n{}", tern.stderr.join("\n"));
    tern.terminate();

    // A token's signature part is what must never be seen.
    let bad_signature = bad_token.rsplit('.').next().unwrap();
    let mut lines = Vec::new();
    for line in &tern.stderr {
        assert!(!line.contains(secret_text), "message text logged: {line}");
        assert!(!line.contains("XYZZY"), "message text logged: {line}");
        assert!(!line.contains(bad_signature), "a token logged: {line}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "no {key}: {line}");
        }
        assert!(v["fields"]["message"].is_string(), "no message: {line}");
        lines.push(v);
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{}", tern.stderr.join("\n")))
    };
    let failed = &find("login failed")["fields"];
    assert_eq!(failed["code"], "ERROR_CODE_AUTH_FAILED");
    assert!(
        failed["device"]
            .as_str()
            .unwrap()
            .contains("mallory-laptop")
    );
    assert!(failed["peer"].as_str().unwrap().contains("127.0.0.1"));
    assert!(failed["shard"].is_number(), "{failed}");
    let kick = &find("kicked")["fields"];
    assert_eq!(kick["user"], "alice");
    assert_eq!(kick["device"], "alice-phone");
    assert_eq!(kick["reason"], "KICK_REASON_ADMIN");
    let api_kick = &find("user kicked")["fields"];
    assert_eq!(api_kick["user"], "alice");
}
