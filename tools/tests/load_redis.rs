//! `tern-load --proto redis` against a real `redis-server` (started here by
//! the backend's harness on a `tern_testkit::free_port()`, no persistence):
//! group fan-out over Redis pub/sub counted exactly, cross-checked with
//! Redis's own command counters, and a Redis error reply counted as a
//! failure. Small and short on purpose: they prove the client counts
//! right, not how fast Redis is. Bounded: tern-load ends by itself.

#[path = "../../backend/tests/support/redis_harness.rs"]
mod redis_harness;

use std::process::Command;

use redis_harness::{RedisServer, ServerOptions};
use serde_json::Value;

/// Runs `tern-load SCENARIO --proto redis --target <redis> --json ARGS…`;
/// the exit code, the JSON report (Null if none) and stderr.
fn load(redis: &RedisServer, scenario: &str, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-load"))
        .arg(scenario)
        .args([
            "--proto",
            "redis",
            "--json",
            "--quiet",
            "--drain-ms",
            "3000",
        ])
        .args(["--target", &format!("127.0.0.1:{}", redis.port())])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// How many times Redis ran `command` (`INFO commandstats`), 0 if never.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    let key = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn group_over_redis_pubsub_reaches_every_subscriber() {
    // Proves `tern-load group --proto redis` with one group of 20 at 20
    // msg/s for 2 s: 19 members SUBSCRIBE, the one sender PUBLISHes without
    // subscribing, and every message reaches every subscriber exactly once
    // (delivered == sent × 19, as NATS and a Tern group count it), with no
    // failure, close, setup error or skipped send. Redis's own counters
    // agree: it ran exactly `sent` PUBLISHes and 19 SUBSCRIBEs. Heartbeats
    // every second go out on subscribed connections too: their `pong`
    // pushes are answers (at most one ping per connection may still be
    // unanswered when the run ends), and no connection is closed as silent.
    let redis = RedisServer::start(ServerOptions::EPHEMERAL);
    let (code, r, err) = load(
        &redis,
        "group",
        &[
            "--group-size",
            "20",
            "--rate",
            "20",
            "--duration",
            "2",
            "--heartbeat-ms",
            "1000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["proto"], "redis", "{r}");
    assert_eq!((n(&r, "established"), n(&r, "held")), (20, 20), "{r}");
    let sent = n(&r, "sent");
    assert!(sent > 0, "{r}");
    assert_eq!(n(&r, "delivered"), sent * 19, "{r}");
    assert_eq!(
        (
            n(&r, "failed"),
            n(&r, "setup_errors"),
            n(&r, "send_skipped"),
            n(&r, "silent_closes"),
        ),
        (0, 0, 0, 0),
        "{r}"
    );
    assert_eq!(r["fail_reasons"], serde_json::json!({}), "{r}");
    assert_eq!(r["close_reasons"], serde_json::json!({}), "{r}");
    let (pings, pongs) = (n(&r, "pings"), n(&r, "pongs"));
    assert!(pongs <= pings && pongs + 20 >= pings, "{r}");
    assert!(r["deliver_p50_us"].is_number(), "{r}");
    assert_eq!(calls(&redis, "publish"), sent);
    assert_eq!(calls(&redis, "subscribe"), 19);
}

#[test]
fn redis_error_reply_fails_the_connection_with_its_reason() {
    // Proves a Redis error reply is a counted failure, not a hang or a
    // panic: on a server that requires a password (set after it started),
    // the handshake PING gets `-NOAUTH …`, and every connection fails with
    // `peer_error:NOAUTH …` in the report.
    let redis = RedisServer::start(ServerOptions::EPHEMERAL);
    redis
        .command(&["CONFIG", "SET", "requirepass", "load-test"])
        .unwrap();
    let (code, r, err) = load(&redis, "idle", &["--conns", "3", "--hold", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((n(&r, "established"), n(&r, "failed")), (0, 3), "{r}");
    let reasons = r["fail_reasons"].as_object().unwrap();
    assert_eq!(reasons.len(), 1, "{r}");
    let (reason, count) = reasons.iter().next().unwrap();
    assert!(reason.starts_with("peer_error:NOAUTH"), "{r}");
    assert_eq!(count.as_u64(), Some(3), "{r}");
}

#[test]
fn a_full_redis_is_a_counted_failure_for_the_connections_past_it() {
    // Proves Redis's client bound has a reported outcome: with
    // `--maxclients 5`, 8 connections get at most 5 live, and every other
    // one fails with `peer_error:ERR max number of clients reached` (the
    // error Redis writes before closing), none with anything else. (At most
    // 5, not exactly: the harness's own start-up connection may not have
    // been reaped by Redis yet when tern-load connects.)
    let redis = RedisServer::start_with(ServerOptions::EPHEMERAL, &["--maxclients", "5"]);
    let (code, r, err) = load(&redis, "idle", &["--conns", "8", "--hold", "1"]);
    assert_eq!(code, 0, "{err}");
    let (established, failed) = (n(&r, "established"), n(&r, "failed"));
    assert_eq!(established + failed, 8, "{r}");
    assert!(established <= 5 && failed >= 3, "{r}");
    assert_eq!(
        r["fail_reasons"],
        serde_json::json!({ "peer_error:ERR max number of clients reached": failed }),
        "{r}"
    );
}

#[test]
fn redis_refuses_the_scenarios_peers_do_not_run() {
    // Proves chat (1:1 pairs) and room are refused with `--proto redis`
    // before anything connects: exit 2 and a message naming the choice.
    let redis = RedisServer::start(ServerOptions::EPHEMERAL);
    let (code, _, err) = load(&redis, "chat", &["--pairs", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--proto mqtt|nats|redis"), "{err}");
    let (code, _, err) = load(&redis, "room", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Tern only"), "{err}");
}
