//! Every config key is also an environment variable `TERN_<SECTION>_<KEY>`:
//! proved over the real `tern` binary (`tern config` prints the effective
//! configuration, `tern config --defaults` the commented defaults, `tern
//! serve` refuses a bad environment before it binds anything), and for every
//! key in-process through `Config::load`. Each test says what it proves.

use std::process::{Command, Output};

use tern_gateway::config::{self, Config, EnvKey};

/// Runs `tern ARGS` with only `envs` in its environment, in a fresh
/// directory (so a stray `tern-data` is never touched).
fn tern(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("tern runs")
}

/// `tern config` with `envs`: the effective configuration it printed.
fn effective(args: &[&str], envs: &[(&str, &str)]) -> Config {
    let out = tern(&[&["config"], args].concat(), envs);
    assert!(
        out.status.success(),
        "tern config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).expect("tern config prints TOML")
}

/// The text a variable takes to mean `value`: a string as it is, anything
/// else in TOML inline syntax.
fn env_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The value at `path` of `cfg`'s TOML tree.
fn value_at(cfg: &Config, path: &[String]) -> Option<toml::Value> {
    let mut v = toml::Value::try_from(cfg).unwrap();
    for p in path {
        v = v.as_table()?.get(p)?.clone();
    }
    Some(v)
}

/// The keys whose default is a value (not an optional key documented only
/// by an example).
fn keys_with_defaults() -> Vec<EnvKey> {
    let d = Config::default();
    config::env_keys()
        .into_iter()
        .filter(|k| value_at(&d, &k.path).is_some())
        .collect()
}

// Proves a representative key of each TOML type, set by its variable alone,
// reaches the effective config of the real binary: integer, bool, string,
// enum, address, array of strings, array of tables, a top-level key, an
// optional key absent from the defaults, a cluster key, a secret.
#[test]
fn a_key_of_each_type_is_set_by_its_variable() {
    let api_keys = r#"[{ name = "crm", key = "0123456789abcdef", scopes = ["read", "media"] }]"#;
    let cfg = effective(
        &[],
        &[
            ("TERN_HTTP_BODY_BYTES_MAX", "2048"),
            ("TERN_CHAT_ALLOW_NON_FRIEND_MESSAGES", "false"),
            ("TERN_WEBHOOKS_SECRET", "hook secret with spaces"),
            ("TERN_SHARDS_DRIVER", "epoll"),
            ("TERN_LISTEN_TCP", "127.0.0.1:7999"),
            ("TERN_API_OPS_SYSTEM_USERS", r#"["system", "bot"]"#),
            ("TERN_API_KEYS", api_keys),
            ("TERN_NODE_ID", "node-7"),
            ("TERN_AUTH_AUDIENCE", "my-app"),
            ("TERN_MEDIA_DIR", "/srv/media"),
            ("TERN_BACKEND_STORE", "redis"),
            ("TERN_BACKEND_REDIS_URLS", r#"["redis://127.0.0.1:6390"]"#),
            ("TERN_CLUSTER_NODE_LEASE_MS", "4500"),
        ],
    );
    assert_eq!(cfg.http.body_bytes_max, 2048);
    assert!(!cfg.chat.allow_non_friend_messages);
    // `tern config` prints secrets redacted, with their length.
    assert_eq!(cfg.webhooks.secret, "<redacted: 23 bytes>");
    assert_eq!(cfg.shards.driver, config::Driver::Epoll);
    assert_eq!(cfg.listen.tcp, Some("127.0.0.1:7999".parse().unwrap()));
    assert_eq!(cfg.api_ops.system_users, ["system", "bot"]);
    assert_eq!(cfg.api.keys.len(), 1);
    assert_eq!(cfg.api.keys[0].name, "crm");
    assert_eq!(cfg.api.keys[0].scopes, ["read", "media"]);
    assert_eq!(cfg.node_id, "node-7");
    assert_eq!(cfg.auth.audience.as_deref(), Some("my-app"));
    assert_eq!(cfg.media.dir, Some("/srv/media".into()));
    assert_eq!(cfg.backend.store, config::StoreKind::Redis);
    assert_eq!(cfg.backend.redis_urls, ["redis://127.0.0.1:6390"]);
    assert_eq!(cfg.cluster.node_lease_ms, 4500);
}

// Proves every key has a working variable, in-process: each variable set
// alone changes its key to the value it carries (integers to default + 1,
// booleans flipped, strings, arrays and optional keys to their default or
// documented example, checked to arrive where the key is).
#[test]
fn every_key_is_set_by_its_variable() {
    let keys = config::env_keys();
    assert!(keys.len() > 80, "only {} keys found", keys.len());
    for key in &keys {
        let want = match &key.default {
            toml::Value::Integer(i) => toml::Value::Integer(i + 1),
            toml::Value::Boolean(b) => toml::Value::Boolean(!b),
            v => v.clone(),
        };
        let vars = [(key.var.clone(), env_text(&want))];
        let cfg =
            Config::load(None, vars, &[]).unwrap_or_else(|e| panic!("{} = {want}: {e}", key.var));
        assert_eq!(
            value_at(&cfg, &key.path).as_ref(),
            Some(&want),
            "{} did not set {}",
            key.var,
            key.dotted()
        );
    }
    // No two keys share a variable (`api` + `ops_x` against `api_ops` + `x`).
    let mut vars: Vec<&str> = keys.iter().map(|k| k.var.as_str()).collect();
    vars.sort_unstable();
    let before = vars.len();
    vars.dedup();
    assert_eq!(vars.len(), before, "two keys share a variable");
    // The names the design and the operators' docs use are among them.
    for var in [
        "TERN_HTTP_BODY_BYTES_MAX",
        "TERN_WEBHOOKS_SECRET",
        "TERN_CLUSTER_NODE_LEASE_MS",
        "TERN_NODE_ID",
        "TERN_API_OPS_SYSTEM_USERS",
        "TERN_API_KEYS",
        "TERN_AUTH_PUBLIC_KEY_FILE",
    ] {
        assert!(keys.iter().any(|k| k.var == var), "no key for {var}");
    }
}

// Proves, over the real binary and for all keys at once, that each variable
// set to its key's default (as text) leaves the effective config exactly as
// the defaults: every variable is accepted and parsed with its key's type.
#[test]
fn all_variables_round_trip_the_defaults() {
    let vars: Vec<(String, String)> = keys_with_defaults()
        .iter()
        .map(|k| (k.var.clone(), env_text(&k.default)))
        .collect();
    let envs: Vec<(&str, &str)> = vars.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert!(envs.len() > 80);
    assert_eq!(effective(&[], &envs), effective(&[], &[]));
}

// Proves the order defaults < file < env < flags, and that where a flag's
// variable is also a key's (TERN_NODE_ID, TERN_LOG_FORMAT) the two agree,
// while a flag's own variable (TERN_DATA_DIR) wins over the generic one.
#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    std::fs::write(
        &file,
        "[http]\nbody_bytes_max = 1000\nidle_timeout_ms = 1234\n[session]\ntext_bytes_max = 100\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let cfg = effective(
        &["--config", file, "--node-id", "from-flag"],
        &[
            ("TERN_HTTP_BODY_BYTES_MAX", "2000"),
            ("TERN_SESSION_TEXT_BYTES_MAX", "200"),
            ("TERN_NODE_ID", "from-env"),
            ("TERN_LOG_FORMAT", "json"),
            ("TERN_BACKEND_DATA_DIR", "/generic"),
            ("TERN_DATA_DIR", "/flag-var"),
        ],
    );
    assert_eq!(cfg.http.body_bytes_max, 2000, "env over file");
    assert_eq!(cfg.http.idle_timeout_ms, 1234, "file over defaults");
    assert_eq!(cfg.session.text_bytes_max, 200);
    assert_eq!(cfg.node_id, "from-flag", "flag over env");
    assert_eq!(cfg.log.format, config::LogFormat::Json);
    assert_eq!(cfg.backend.data_dir, std::path::Path::new("/flag-var"));
    // Without the flag, the one variable TERN_NODE_ID is both the flag's and
    // the key's, and sets the key.
    let cfg = effective(&[], &[("TERN_NODE_ID", "from-env")]);
    assert_eq!(cfg.node_id, "from-env");
}

// Proves a `TERN_` variable that names no key (a typo) stops `tern serve`
// and `tern config` with an error naming it, before anything is bound or
// created; that a value of the wrong type is refused naming its variable;
// and that the command line's own variables and tern-cli's are not refused.
#[test]
fn unknown_variables_and_bad_values_are_refused_by_name() {
    for args in [&["serve", "--dev"][..], &["config"][..]] {
        let out = tern(args, &[("TERN_HTTP_BODY_BYTE_MAX", "5")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("TERN_HTTP_BODY_BYTE_MAX"), "{err}");
        assert!(err.contains("unknown environment variable"), "{err}");
        assert!(
            err.contains("did you mean TERN_HTTP_BODY_BYTES_MAX?"),
            "{err}"
        );
    }
    for (var, text) in [
        ("TERN_HTTP_BODY_BYTES_MAX", "lots"),
        ("TERN_SESSION_TEXT_BYTES_MAX", "-1"),
        ("TERN_CHAT_ALLOW_NON_FRIEND_MESSAGES", "yes please"),
        ("TERN_API_OPS_SYSTEM_USERS", "system"),
        ("TERN_API_KEYS", r#"[{ name = "x" }]"#),
        ("TERN_LISTEN_WS", "not an address"),
        ("TERN_MEDIA_JPEG_QUALITY", "1000"),
    ] {
        let out = tern(&["config"], &[(var, text)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={text}: {err}");
        assert!(err.contains(var), "{var}={text}: {err}");
    }
    let cfg = effective(
        &[],
        &[
            ("TERN_LOG", "warn"),
            ("TERN_SHARDS", "3"),
            ("TERN_HTTP", "127.0.0.1:7999"),
            ("TERN_SERVER", "127.0.0.1:1"),
            ("TERN_TOKEN", "for tern-cli"),
            ("TERN_HTTP_URL", "http://127.0.0.1:1"),
        ],
    );
    assert_eq!(cfg.log.filter, "warn");
    assert_eq!(cfg.shards.count, 3);
}

// Proves `tern config --defaults` prints every key, each on its line in its
// section with its variable, and is still a TOML file equal to the defaults.
#[test]
fn defaults_print_every_key_with_its_variable() {
    let out = tern(&["config", "--defaults"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, Config::default());
    for key in config::env_keys() {
        let (section, name) = match key.path.as_slice() {
            [name] => (None, name),
            [section, name] => (Some(section), name),
            _ => panic!("unexpected depth {}", key.dotted()),
        };
        let body = match section {
            None => text.as_str(),
            Some(s) => {
                let start = text
                    .find(&format!("\n[{s}]"))
                    .unwrap_or_else(|| panic!("no [{s}]"));
                let rest = &text[start + 1..];
                let end = rest[1..].find("\n[").map_or(rest.len(), |e| e + 1);
                &rest[..end]
            }
        };
        let line = body
            .lines()
            .find(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}="))
            })
            .unwrap_or_else(|| panic!("{} not printed", key.dotted()));
        assert!(
            line.ends_with(&format!("env {}", key.var)),
            "{}: {line}",
            key.dotted()
        );
        assert!(
            line.contains('#'),
            "{} has no comment: {line}",
            key.dotted()
        );
    }
}

// Proves `tern token` takes its secret from the key variable
// TERN_AUTH_JWT_SECRET as `tern serve` would, and refuses a misspelt one.
#[test]
fn token_reads_the_secret_variable() {
    let out = tern(
        &["token", "--user", "alice"],
        &[("TERN_AUTH_JWT_SECRET", "a secret of the service")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = tern_gateway::auth::Verifier::new(&config::AuthConfig {
        jwt_secret: "a secret of the service".into(),
        ..config::AuthConfig::default()
    })
    .unwrap();
    assert!(verifier.verify(token.trim()).is_ok());
    let out = tern(
        &["token", "--user", "alice"],
        &[("TERN_AUTH_JWT_SECRT", "x")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_AUTH_JWT_SECRT"));
}

// Proves a bad key in the config file is still reported with the file and
// its line, although the file is now merged with the environment as a TOML
// tree (which has no positions) before it is read into the config.
#[test]
fn a_bad_file_key_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    std::fs::write(&file, "[session]\nheartbeat_intervall_ms = 5\n").unwrap();
    let out = tern(
        &["config", "--config", file.to_str().unwrap()],
        &[("TERN_HTTP_BODY_BYTES_MAX", "2048")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tern.toml"), "{err}");
    assert!(err.contains("heartbeat_intervall_ms"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}
