//! `tern-cli --tls` and `tern-load --tls` against a real gateway's TLS
//! listener (the gateway library in-process on loopback port 0, a fresh
//! embedded store, a self-signed certificate made with rcgen), running the
//! built binaries. Each test says what it proves.

use std::{net::SocketAddr, path::PathBuf, process::Command, sync::Arc};

use tern_gateway::{
    config::{Config, Driver},
    server::Server,
    service::BackendService,
};

const SECRET: &str = "tls-clients-secret";

/// A gateway with a TLS listener on an ephemeral loopback port, serving a
/// fresh self-signed certificate for `localhost`; stopped on drop.
struct Gateway {
    server: Option<Server>,
    tls: SocketAddr,
    /// The certificate, as a PEM file a client can be told to trust.
    cert_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cfg = Config::default();
        cfg.listen.tcp = Some(any);
        cfg.listen.ws = None;
        cfg.listen.http = Some(any);
        cfg.listen.tls = Some(any);
        cfg.tls.cert_file = Some(cert_file.clone());
        cfg.tls.key_file = Some(key_file);
        cfg.shards.count = 2;
        cfg.shards.driver = Driver::Epoll;
        cfg.auth.jwt_secret = SECRET.into();
        cfg.backend.data_dir = dir.path().join("data");
        cfg.node_id = "tls-test".into();
        cfg.shutdown.deadline_ms = 2_000;
        let service = Arc::new(BackendService::open(&cfg.backend).unwrap());
        let server = Server::start(&cfg, service).unwrap();
        Self {
            tls: server.tls_addr.unwrap(),
            server: Some(server),
            cert_file,
            _dir: dir,
        }
    }

    /// `tern-cli --tls --server localhost:PORT --jwt-secret … --user USER ARGS…`.
    fn cli(&self, user: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tern-cli"))
            .args(["--tls", "--server"])
            .arg(format!("localhost:{}", self.tls.port()))
            .args(["--jwt-secret", SECRET, "--user", user])
            .args(args)
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_DEVICE")
            .env_remove("TERN_SERVER")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

#[test]
fn tern_cli_chats_over_tls_and_checks_the_certificate() {
    // Proves `tern-cli --tls --ca FILE` sends over the TLS listener (the
    // durable seq comes back), `--insecure` reads it back as the other
    // user, and without either the self-signed certificate is refused by
    // the system's CA bundle (connection error, exit 3), so --tls does check
    // the certificate.
    let gw = Gateway::start();
    let ca = gw.cert_file.to_str().unwrap().to_owned();
    let sent = gw.cli("alice", &["--ca", &ca, "send", "--to", "bob", "over tls"]);
    let out = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(out.contains("seq=1"), "{out}");
    let history = gw.cli("bob", &["--insecure", "history", "--conv", "alice"]);
    assert!(history.status.success());
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("over tls"),
        "{}",
        String::from_utf8_lossy(&history.stdout)
    );
    let refused = gw.cli("carol", &["send", "--to", "bob", "unchecked"]);
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn tern_load_holds_idle_connections_over_tls() {
    // Proves `tern-load idle --tls --insecure` authenticates every
    // connection over the TLS listener and holds them all (pinging inside
    // TLS), with RSS sampled for --gateway-pid as for plain runs.
    let gw = Gateway::start();
    let pid = std::process::id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tern-load"))
        .arg("idle")
        .args(["--target", &gw.tls.to_string(), "--tls", "--insecure"])
        .args(["--jwt-secret", SECRET, "--json", "--quiet"])
        .args(["--conns", "40", "--hold", "2", "--gateway-pid", &pid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        (
            r["established"].as_u64(),
            r["held"].as_u64(),
            r["failed"].as_u64()
        ),
        (Some(40), Some(40), Some(0)),
        "{r}"
    );
    assert!(r["gateway_bytes_per_conn"].is_number(), "{r}");
}
