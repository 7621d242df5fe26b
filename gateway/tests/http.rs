//! The HTTP edge under hostile clients, over real loopback sockets against a
//! real gateway (or a real `HttpServer` with an extra route): each limit of
//! `[http]` has its defined outcome, no client blocks another, and
//! `/metrics` is a valid exposition that follows Prometheus's naming rules.
//! Each test says what it proves.
// Tests wait with short sleeps while polling a bounded deadline.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    collections::{HashMap, HashSet},
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::{Gateway, WAIT};
use tern_gateway::{
    config::{Driver, HttpSettings},
    http::{self, HttpServer, HttpState},
    metrics::Metrics,
};

/// A gateway whose `[http]` settings `tweak` changes.
fn gateway(tweak: impl FnOnce(&mut HttpSettings)) -> Gateway {
    Gateway::start_with(Driver::Epoll, |c| tweak(&mut c.http))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// One response read off a keep-alive connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one response (head, then `content-length` bytes); None if the
/// connection ends (EOF or reset) before a whole head arrived.
fn read_response(s: &mut TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            Ok(_) => return None,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("no response within {WAIT:?}: {e}"),
        }
        assert!(buf.len() < 64 << 10, "runaway head");
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// A keep-alive GET on `s`.
fn get_on(s: &mut TcpStream, path: &str, extra: &str) -> Option<Resp> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").ok()?;
    read_response(s)
}

/// A GET on a new connection.
fn get(addr: SocketAddr, path: &str, extra: &str) -> Resp {
    get_on(&mut connect(addr), path, extra).expect("a response")
}

/// Whether the server closes `s` (EOF or reset) within `wait`, reading and
/// discarding whatever it sent first.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // the read timed out: still open
        }
    }
}

/// Polls `/metrics` until it has the line `needle` (bounded).
fn wait_metric(addr: SocketAddr, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = String::from_utf8(get(addr, "/metrics", "").body).unwrap();
        if text.lines().any(|l| l == needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {needle}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `n` pipelined `GET path` on `s` from a thread and never reads;
/// returns once the thread wrote them all or the server stopped taking
/// them (the write timed out or failed).
fn pipeline_without_reading(s: &TcpStream, path: &str, n: usize) {
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(n);
    std::thread::spawn(move || {
        let _ = w.write_all(req.as_bytes());
    })
    .join()
    .unwrap();
}

/// A 1 MiB header line is refused with 431 (or the connection is closed)
/// after at most `header_bytes_max` is buffered, and the server goes on
/// serving others; the refusal is counted.
#[test]
fn oversized_header_is_refused_with_431() {
    let gw = gateway(|_| {});
    let mut s = connect(gw.http);
    let big = "a".repeat(1 << 20);
    // The server stops reading at 16 KiB, so the rest of the write may fail.
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n"
    );
    // No answer at all (closed before it could be read) is a refusal too.
    if let Some(r) = read_response(&mut s) {
        assert_eq!(r.status, 431, "{r:?}");
    }
    assert!(closed_within(&mut s, WAIT), "the connection stays open");
    wait_metric(gw.http, "tern_http_header_too_large_total 1");
    assert_eq!(get(gw.http, "/healthz", "").status, 200);
}

/// A request head that never completes is closed after
/// `header_read_timeout_ms` (300 ms here; asserted against a 10 s bound,
/// not timed), and counted as a header-read timeout.
#[test]
fn half_sent_request_is_closed_after_header_read_timeout() {
    let gw = gateway(|h| h.header_read_timeout_ms = 300);
    let mut s = connect(gw.http);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1")
        .unwrap();
    assert!(
        closed_within(&mut s, WAIT),
        "a half-sent request still open after {WAIT:?}"
    );
    wait_metric(gw.http, "tern_http_timeouts_total{kind=\"header_read\"} 1");
}

/// 300 slow clients (each holding a half-sent request) cost tasks, not
/// threads: the process's thread count grows by far less than one per
/// connection while the server holds them all. (Other tests of this binary
/// start and stop threads meanwhile; the bound of 100 leaves room for that
/// and still fails a thread-per-connection server, which adds 300.)
#[test]
fn slow_clients_cost_no_thread_each() {
    const SLOW: usize = 300;
    let gw = gateway(|h| {
        h.header_read_timeout_ms = 60_000;
        h.idle_timeout_ms = 60_000;
    });
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let held: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = connect(gw.http);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
            s
        })
        .collect();
    wait_metric(gw.http, &format!("tern_http_connections {}", SLOW + 1));
    let during = threads();
    assert!(
        during < before + 100,
        "{before} threads before, {during} with {SLOW} slow clients"
    );
    drop(held);
}

/// A keep-alive connection with nothing in progress is closed after
/// `idle_timeout_ms` (300 ms here, against a 10 s bound).
#[test]
fn idle_keep_alive_connection_is_closed() {
    let gw = gateway(|h| {
        h.idle_timeout_ms = 300;
        h.header_read_timeout_ms = 60_000;
    });
    let mut s = connect(gw.http);
    assert_eq!(get_on(&mut s, "/healthz", "").unwrap().status, 200);
    assert!(closed_within(&mut s, WAIT), "idle connection still open");
    wait_metric(gw.http, "tern_http_timeouts_total{kind=\"idle\"} 1");
}

/// One client that pipelines 6,000 `GET /metrics` and never reads its
/// answers does not block anyone else: while it is stuck, another client
/// gets `/healthz`, `/readyz` and `/metrics` with 200.
#[test]
fn a_client_that_never_reads_does_not_block_others() {
    let gw = gateway(|h| h.write_stall_timeout_ms = 60_000);
    let hog = connect(gw.http);
    pipeline_without_reading(&hog, "/metrics", 6_000);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(gw.http, path, "").status, 200, "{path}");
    }
    // The hog is still connected (held by the write stall limit, not yet
    // dropped), so the answers above were served beside it.
    let text = String::from_utf8(get(gw.http, "/metrics", "").body).unwrap();
    assert!(
        text.contains("tern_http_timeouts_total{kind=\"write_stall\"} 0"),
        "{text}"
    );
    drop(hog);
}

/// A client that stops reading its responses is dropped after
/// `write_stall_timeout_ms` (300 ms here, against a 10 s bound).
#[test]
fn a_client_that_stops_reading_is_dropped_after_the_write_stall_timeout() {
    let gw = gateway(|h| h.write_stall_timeout_ms = 300);
    let hog = connect(gw.http);
    pipeline_without_reading(&hog, "/metrics", 6_000);
    wait_metric(gw.http, "tern_http_timeouts_total{kind=\"write_stall\"} 1");
    wait_metric(gw.http, "tern_http_connections 1"); // only the scraper's
    drop(hog);
}

/// Beyond `connections_max` (4 here) a connection is refused (503 or
/// closed) while the 4 held ones keep working; once one closes, a new
/// connection is served again.
#[test]
fn connections_beyond_the_max_are_refused_while_others_work() {
    let gw = gateway(|h| {
        h.connections_max = 4;
        h.idle_timeout_ms = 60_000;
        h.header_read_timeout_ms = 60_000;
    });
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(gw.http);
            // A full exchange proves the server holds this connection.
            assert_eq!(get_on(&mut s, "/healthz", "").unwrap().status, 200);
            s
        })
        .collect();
    let mut extra = connect(gw.http);
    // No answer at all (closed before the 503 could be read) is a refusal too.
    if let Some(r) = get_on(&mut extra, "/healthz", "") {
        assert_eq!(r.status, 503, "{r:?}");
    }
    assert!(closed_within(&mut extra, WAIT));
    for s in &mut held {
        assert_eq!(get_on(s, "/readyz", "").unwrap().status, 200);
    }
    let text = String::from_utf8(get_on(&mut held[0], "/metrics", "").unwrap().body).unwrap();
    assert!(
        text.contains("tern_http_connections_refused_total 1"),
        "{text}"
    );
    // A slot frees when a held connection closes (the server sees the
    // close asynchronously: retry, bounded).
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect(gw.http);
        if let Some(r) = get_on(&mut s, "/healthz", "") {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no slot freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A body larger than `body_bytes_max` is refused with 413 from its
/// `Content-Length`, before any of it is read.
#[test]
fn oversized_body_is_refused_with_413() {
    let gw = gateway(|h| h.body_bytes_max = 1024);
    let mut s = connect(gw.http);
    write!(
        s,
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 413);
}

/// A route added by a later module (here a handler that never answers)
/// is served under the same limits: it ends with 408 after
/// `request_timeout_ms` (200 ms here, against a 10 s bound) and the
/// built-in routes keep answering meanwhile.
#[test]
fn a_slow_handler_gets_408_after_the_request_timeout() {
    let metrics = Metrics::new(1);
    let state = HttpState {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let routes = http::router(state).route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    );
    let settings = HttpSettings {
        request_timeout_ms: 200,
        ..HttpSettings::default()
    };
    let server = HttpServer::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &settings,
        routes,
        metrics.http.clone(),
    )
    .unwrap();
    let mut slow = connect(server.addr);
    write!(slow, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(get(server.addr, "/healthz", "").status, 200);
    let r = read_response(&mut slow).expect("a 408");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(closed_within(&mut slow, WAIT), "408 closes the connection");
    wait_metric(server.addr, "tern_http_timeouts_total{kind=\"request\"} 1");
    server.stop();
}

/// Stopping the edge is graceful: a request in progress (a handler taking
/// 300 ms) is still answered 200, the idle keep-alive connection is closed,
/// and the listener no longer accepts once `stop` returns.
#[test]
fn stop_finishes_requests_in_progress() {
    let metrics = Metrics::new(1);
    let state = HttpState {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let routes = http::router(state).route(
        "/slow",
        axum::routing::get(move || async move {
            flag.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done\n"
        }),
    );
    let server = HttpServer::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &HttpSettings::default(),
        routes,
        metrics.http.clone(),
    )
    .unwrap();
    let addr = server.addr;
    let mut idle = connect(addr);
    assert_eq!(get_on(&mut idle, "/healthz", "").unwrap().status, 200);
    let mut slow = connect(addr);
    write!(slow, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while !started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the handler never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopper = std::thread::spawn(move || server.stop());
    let r = read_response(&mut slow).expect("the request in progress is answered");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"done\n"[..]));
    assert!(closed_within(&mut idle, WAIT), "idle connection kept open");
    stopper.join().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after stop"
    );
}

/// `/metrics` is a valid exposition in both formats it serves: OpenMetrics
/// to a scraper that asks for it, the classic text format otherwise. One
/// `# TYPE` per family, every sample under its family's declared name,
/// counters end in `_total`, byte and second figures carry their unit,
/// and `tern_build_info` and the `process_*` metrics are there.
#[test]
fn metrics_are_a_valid_exposition() {
    let gw = gateway(|_| {});
    let om = get(
        gw.http,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(om.status, 200);
    assert!(
        header(&om, "content-type").starts_with("application/openmetrics-text"),
        "{om:?}"
    );
    let om_text = String::from_utf8(om.body).unwrap();
    let families = check_exposition(&om_text, Format::OpenMetrics);

    let classic = get(gw.http, "/metrics", "");
    assert!(header(&classic, "content-type").starts_with("text/plain; version=0.0.4"));
    let classic_text = String::from_utf8(classic.body).unwrap();
    let classic_families = check_exposition(&classic_text, Format::Classic);
    assert_eq!(families.len(), classic_families.len());

    for f in [
        "tern_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "tern_received_bytes_total",
        "tern_sent_bytes_total",
    ] {
        assert!(
            classic_families.contains_key(f),
            "{f} missing:\n{classic_text}"
        );
    }
    assert!(
        classic_text
            .lines()
            .any(|l| l.starts_with("tern_build_info{")
                && l.contains("version=\"")
                && l.ends_with(" 1")),
        "{classic_text}"
    );
    assert!(
        classic_text.contains("tern_shard_connections{shard=\"1\"}"),
        "{classic_text}"
    );
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// OpenMetrics 1.0 text: a counter family `x` has samples `x_total`.
    OpenMetrics,
    /// Prometheus text 0.0.4: a counter's `# TYPE` names `x_total` itself.
    Classic,
}

/// Checks `text` line by line against the exposition grammar and
/// Prometheus's naming rules; returns each family with its type. Panics
/// with the offending line.
fn check_exposition(text: &str, format: Format) -> HashMap<String, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut units: HashMap<String, String> = HashMap::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen: HashSet<String> = HashSet::new();
    let mut hist: HashMap<String, (f64, Option<f64>, Option<f64>)> = HashMap::new();
    let mut lines: Vec<&str> = text.lines().collect();
    match format {
        Format::OpenMetrics => {
            assert!(text.ends_with("# EOF\n"), "no final # EOF");
            lines.pop();
        }
        Format::Classic => assert!(!text.contains("# EOF"), "# EOF in the classic format"),
    }
    let mut open_family = |name: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(name) {
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            assert!(!closed.contains(name), "family {name} is interleaved");
            *current = Some(name.to_owned());
        }
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "bad name in {line:?}");
            open_family(name, &mut current);
            match kw {
                "HELP" => assert!(helps.insert(name.into()), "second HELP: {line}"),
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "unknown",
                            "untyped"
                        ]
                        .contains(&arg),
                        "bad type: {line}"
                    );
                    assert!(
                        types.insert(name.into(), arg.into()).is_none(),
                        "second TYPE: {line}"
                    );
                }
                "UNIT" if format == Format::OpenMetrics => {
                    assert!(
                        name.ends_with(&format!("_{arg}")),
                        "unit not in name: {line}"
                    );
                    units.insert(name.into(), arg.into());
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        // A sample: name{labels} value
        let (series, value) = line.rsplit_once(' ').expect(line);
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect(line), line)),
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "bad name: {line}");
        assert!(seen.insert(series.to_owned()), "duplicate sample: {line}");
        let family = family_of(name, &types, format).unwrap_or_else(|| {
            panic!("sample outside any declared family: {line}");
        });
        open_family(&family, &mut current);
        let ty = types[&family].as_str();
        match ty {
            "counter" => {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
                assert!(v >= 0.0, "negative counter: {line}");
            }
            "histogram" => {
                let h = hist.entry(family.clone()).or_insert((0.0, None, None));
                if name.ends_with("_bucket") {
                    let le = labels.iter().find(|(k, _)| k == "le").expect(line);
                    assert!(v >= h.0, "buckets not cumulative: {line}");
                    h.0 = v;
                    if le.1 == "+Inf" {
                        h.1 = Some(v);
                    }
                } else if name.ends_with("_count") {
                    h.2 = Some(v);
                }
            }
            _ => {}
        }
    }
    for (family, (_, inf, count)) in &hist {
        assert_eq!(inf, count, "{family}: +Inf bucket != count");
    }
    for family in types.keys() {
        assert!(helps.contains(family), "{family} has no HELP");
    }
    // Base units in names: a family about bytes or seconds says so.
    for (family, ty) in &types {
        let base = family.strip_suffix("_total").unwrap_or(family);
        if format == Format::Classic && ty == "counter" {
            assert!(family.ends_with("_total"), "counter {family} lacks _total");
        }
        for unit in ["bytes", "seconds"] {
            let said = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {family} ")))
                .unwrap_or("")
                .to_ascii_lowercase();
            if said.split_whitespace().any(|w| w == unit) {
                assert!(
                    base.ends_with(&format!("_{unit}")),
                    "{family} lacks _{unit}"
                );
            }
        }
        assert!(
            !family.contains("_in_") && !family.ends_with("_in") && !family.ends_with("_out"),
            "{family}: direction suffix instead of a name"
        );
    }
    types
}

/// The family a sample belongs to, by the suffixes its type allows.
fn family_of(name: &str, types: &HashMap<String, String>, format: Format) -> Option<String> {
    let candidates: Vec<(&str, &[&str])> = vec![
        ("counter", &["_total", "_created"]),
        ("histogram", &["_bucket", "_sum", "_count", "_created"]),
        ("summary", &["_sum", "_count", "_created"]),
        ("info", &["_info"]),
    ];
    if let Some(ty) = types.get(name) {
        // Classic counters are declared under their `_total` name.
        let ok = !matches!(
            (ty.as_str(), format),
            ("counter", Format::OpenMetrics) | ("histogram", _) | ("info", _)
        );
        if ok {
            return Some(name.to_owned());
        }
    }
    for (ty, suffixes) in candidates {
        for s in suffixes {
            if let Some(base) = name.strip_suffix(s) {
                if types.get(base).map(String::as_str) == Some(ty) {
                    return Some(base.to_owned());
                }
            }
        }
    }
    None
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// `a="x",b="y\"z"` → pairs; panics on anything else.
fn parse_labels(s: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"").expect(line);
        assert!(
            valid_name(k) && !k.contains(':'),
            "bad label name {k:?}: {line}"
        );
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().expect(line) {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect(line).1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}: {line}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            out.iter().all(|(o, _): &(String, String)| o != k),
            "repeated label: {line}"
        );
        out.push((k.to_owned(), value));
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out
}
