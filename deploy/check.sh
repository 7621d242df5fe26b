#!/usr/bin/env bash
# Checks of the deploy files, run by scripts/test.sh after the Rust tests
# (which built target/debug/tern and tern-cli). Each check says what it
# proves; a missing tool fails the run (scripts/test.sh installs them all):
#
#   units      systemd-analyze verify of deploy/systemd/*.service (their
#              binaries substituted by real paths), and the sample tern.toml
#              accepted by `tern config`
#   container  hadolint on deploy/container/Dockerfile
#   rules      promtool: the Prometheus config and alert rules check, the
#              rules' unit tests pass, a live tern's /metrics lints clean,
#              every dashboard query parses as PromQL
#   compose    compose.yaml agrees with the Dockerfile, prometheus.yml and the
#              Grafana provisioning (names, ports, paths, Redis durability),
#              and tern accepts its TERN_ variables
#   cluster    deploy/local-cluster.sh up, a message from a device on node 1
#              pushed to a device on node 2 (tern-cli), down: every process gone
#
# Environment: BIN (directory of tern and tern-cli; default target/debug,
# built if missing), HADOLINT (the hadolint binary), PYTHON (a python3 with
# PyYAML); default: the test venv of scripts/test.sh, then PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN=${BIN:-$ROOT/target/debug}
VENV="${MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-test-venv}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tern-deploy-check.XXXXXX")"
CLUSTER_UP=""
cleanup() {
  if [ -n "$CLUSTER_UP" ]; then
    CLUSTER_DIR="$WORK/cluster" deploy/local-cluster.sh down >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
passed=0 failed=0
ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1" >&2; failed=$((failed + 1)); }

alive() { # PID: runs (a zombie waiting for its reaper has exited)
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ]
}
tool() { # NAME [CANDIDATE...]: the first executable candidate, or NAME on PATH
  local name=$1 c; shift
  for c in "$@"; do [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return; }; done
  command -v "$name" || { echo "missing tool: $name (bash scripts/test.sh installs it)" >&2; return 1; }
}
SYSTEMD_ANALYZE=$(tool systemd-analyze)
PROMTOOL=$(tool promtool)
HADOLINT=$(tool hadolint "${HADOLINT:-}" "$VENV/bin/hadolint")
PYTHON=$(tool python3 "${PYTHON:-}" "$VENV/bin/python3")
"$PYTHON" -c 'import yaml' 2>/dev/null || { echo "missing: PyYAML for $PYTHON (bash scripts/test.sh installs it)" >&2; exit 1; }
tool redis-server >/dev/null; tool redis-cli >/dev/null; tool curl >/dev/null; tool openssl >/dev/null
if [ ! -x "$BIN/tern" ] || [ ! -x "$BIN/tern-cli" ]; then
  cargo build --locked -p tern-gateway --bin tern -p tern-tools --bin tern-cli
fi

# ---- units ----
mkdir -p "$WORK/units"
for unit in deploy/systemd/*.service; do
  # verify needs ExecStart's binary to exist: the built tern, and /bin/true
  # for tern-bot (built elsewhere).
  sed -e "s#/usr/local/bin/tern-bot #/bin/true #" -e "s#/usr/local/bin/tern #$BIN/tern #" \
    "$unit" >"$WORK/units/$(basename "$unit")"
done
# verify exits 0 on unknown keys and bad values: any output is a failure.
if out=$(cd "$WORK/units" && "$SYSTEMD_ANALYZE" verify ./*.service 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify: $(cd deploy/systemd && echo *.service)"
else
  bad "systemd-analyze verify: $out"
fi
grep -q '^TimeoutStopSec=75$' deploy/systemd/tern.service && grep -q '^LimitNOFILE=1048576$' deploy/systemd/tern.service \
  && ok "tern.service: TimeoutStopSec covers the drain, LimitNOFILE for c1m" || bad "tern.service limits"
if out=$(env -i PATH="$PATH" "$BIN/tern" config --config deploy/systemd/tern.toml --jwt-secret x 2>&1); then
  ok "deploy/systemd/tern.toml is a valid config"
else
  bad "deploy/systemd/tern.toml: $out"
fi

# ---- container ----
if out=$("$HADOLINT" --no-color deploy/container/Dockerfile 2>&1); then
  ok "hadolint deploy/container/Dockerfile"
else
  bad "hadolint: $out"
fi

# ---- rules ----
if out=$("$PROMTOOL" check config deploy/prometheus/prometheus.yml 2>&1); then
  ok "promtool check config (prometheus.yml and alerts.yml)"
else
  bad "promtool check config: $out"
fi
if out=$(cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yml 2>&1); then
  ok "promtool test rules alerts.test.yml"
else
  bad "promtool test rules: $out"
fi
# A live tern's /metrics, with a TLS listener so that the certificate
# expiry gauge is in it, passes promtool's lint (names, units, help).
mkdir -p "$WORK/metrics"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -keyout "$WORK/metrics/key.pem" -out "$WORK/metrics/cert.pem" 2>/dev/null
env -i PATH="$PATH" TERN_TLS_CERT_FILE="$WORK/metrics/cert.pem" TERN_TLS_KEY_FILE="$WORK/metrics/key.pem" \
  "$BIN/tern" serve --jwt-secret x --shards 1 --data-dir "$WORK/metrics/data" --listen 127.0.0.1:0 \
  --ws-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --http 127.0.0.1:0 >"$WORK/metrics/log" 2>&1 &
metrics_pid=$!
http=""
for _ in $(seq 1 300); do
  http=$(grep -o 'http=127.0.0.1:[0-9]*' "$WORK/metrics/log" | head -1 | cut -d= -f2) && [ -n "$http" ] && break
  sleep 0.1
done
if [ -n "$http" ] && curl -s --max-time 5 "http://$http/metrics" >"$WORK/metrics/scrape" \
  && grep -q '^tern_tls_cert_expiry_timestamp_seconds ' "$WORK/metrics/scrape" \
  && out=$("$PROMTOOL" check metrics <"$WORK/metrics/scrape" 2>&1); then
  ok "promtool check metrics on a live tern serve (TLS on)"
else
  bad "live /metrics: ${out:-no scrape} $(tail -3 "$WORK/metrics/log")"
fi
kill "$metrics_pid" 2>/dev/null || true
wait "$metrics_pid" 2>/dev/null || true

# Every dashboard query as a recording rule ($variables filled in) parses.
"$PYTHON" - deploy/grafana/tern.json >"$WORK/dashboard-rules.yml" <<'PY'
import json, sys
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str): exprs.append(x)
            else: walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(json.load(open(sys.argv[1])))
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
    print(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}")
PY
if out=$("$PROMTOOL" check rules "$WORK/dashboard-rules.yml" 2>&1); then
  ok "every dashboard query parses ($(grep -c 'record:' "$WORK/dashboard-rules.yml") queries)"
else
  bad "dashboard queries: $out"
fi

# ---- compose ----
if out=$("$PYTHON" - <<'PY' 2>&1
import json, os, re, yaml
root = os.getcwd()
cdir = os.path.join(root, "deploy/compose")
c = yaml.safe_load(open(os.path.join(cdir, "compose.yaml")))
s = c["services"]
errs = []
def need(cond, what):
    if not cond: errs.append(what)
for name in ("redis", "tern", "prometheus", "grafana"):
    need(name in s, f"no service {name}")
for name, svc in s.items():
    img = svc.get("image", "")
    need(":" in img and not img.endswith(":latest"), f"{name}: image {img!r} without a pinned tag")
# The image: what the Dockerfile listens on, exposes and keeps.
t = s["tern"]
df = os.path.join(cdir, t["build"]["context"], t["build"]["dockerfile"])
need(os.path.exists(os.path.join(cdir, t["build"]["context"], "Cargo.toml")), "tern build context is not the repository root")
text = open(df).read()
env = dict(re.findall(r"(TERN_[A-Z_]+)=(\S+)", text))
expose = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
ports = {k: v.rsplit(":", 1)[1] for k, v in env.items() if k in ("TERN_LISTEN", "TERN_WS_LISTEN", "TERN_HTTP")}
need(len(ports) == 3 and set(ports.values()) == expose, f"Dockerfile listeners {ports} vs EXPOSE {expose}")
need(f'"http://127.0.0.1:{ports.get("TERN_HTTP")}/healthz"' in text, "Dockerfile healthcheck is not the HTTP listener's /healthz")
published = {p.rsplit(":", 1)[1] for p in t["ports"]}
need(published == expose, f"tern publishes {published}, the image exposes {expose}")
need(any(v.endswith(":" + env["TERN_DATA_DIR"]) for v in t["volumes"]), "tern's volume is not the image's TERN_DATA_DIR")
# Redis: the durability the store requires, and the URL tern is given.
rc = s["redis"]["command"]
for flag, val in (("--appendonly", "yes"), ("--appendfsync", "always"), ("--maxmemory-policy", "noeviction")):
    need(flag in rc and rc[rc.index(flag) + 1] == val, f"redis command lacks {flag} {val}")
rport = rc[rc.index("--port") + 1] if "--port" in rc else "6379"
need(t["environment"]["TERN_REDIS_URL"] == f"redis://redis:{rport}", "TERN_REDIS_URL does not name the redis service")
need(t["environment"]["TERN_STORE"] == "redis", "tern is not on the Redis store")
need(t["depends_on"]["redis"]["condition"] == "service_healthy", "tern does not wait for a healthy redis")
# Drain time: the same as the systemd unit's.
unit = open(os.path.join(root, "deploy/systemd/tern.service")).read()
stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
need(t["stop_grace_period"] == f"{stop}s", f"stop_grace_period {t['stop_grace_period']} vs TimeoutStopSec={stop}")
# Mounted files exist; Prometheus scrapes tern's HTTP port and loads the rules mounted beside it.
mounts = {}
for name in ("prometheus", "grafana"):
    for v in s[name]["volumes"]:
        src, dst = v.split(":")[:2]
        if src.startswith("."):
            path = os.path.normpath(os.path.join(cdir, src))
            need(os.path.exists(path), f"{name}: mounted {src} does not exist")
            mounts[dst] = path
prom = yaml.safe_load(open(mounts["/etc/prometheus/prometheus.yml"]))
job = [j for j in prom["scrape_configs"] if j["job_name"] == "tern"]
need(job and job[0]["static_configs"][0]["targets"] == [f"tern:{ports['TERN_HTTP']}"], "prometheus does not scrape tern's HTTP port as job tern")
for r in prom["rule_files"]:
    need(os.path.join("/etc/prometheus", r) in mounts, f"rule file {r} is not mounted beside prometheus.yml")
# Grafana: the datasource is the prometheus service; the provider's path holds the dashboard.
prov = mounts["/etc/grafana/provisioning"]
ds = yaml.safe_load(open(os.path.join(prov, "datasources/prometheus.yml")))["datasources"][0]
need(ds["url"] == "http://prometheus:9090", f"datasource url {ds['url']}")
dp = yaml.safe_load(open(os.path.join(prov, "dashboards/tern.yml")))["providers"][0]["options"]["path"]
dash = [d for d in mounts if d.startswith(dp + "/") and d.endswith(".json")]
need(dash, f"no dashboard mounted under the provider's path {dp}")
if dash:
    need(json.load(open(mounts[dash[0]]))["uid"] == "tern-overview", "dashboard uid")
print("\n".join(f"{k}={v}" for k, v in t["environment"].items()) if not errs else "")
if errs:
    raise SystemExit("\n".join(errs))
PY
); then
  # tern itself accepts the variables the compose file gives it.
  args=()
  while IFS= read -r kv; do
    case $kv in TERN_JWT_SECRET=*) args+=("TERN_JWT_SECRET=x") ;; TERN_*) args+=("$kv") ;; esac
  done <<<"$out"
  if out2=$(env -i PATH="$PATH" "${args[@]}" "$BIN/tern" config 2>&1); then
    ok "compose.yaml agrees with the Dockerfile, Prometheus and Grafana files; tern accepts its variables"
  else
    bad "tern refuses compose.yaml's variables: $out2"
  fi
else
  bad "compose.yaml: $out"
fi

# ---- cluster ----
export CLUSTER_DIR="$WORK/cluster"
CLUSTER_UP=1
if out=$(BIN="$BIN" PORT_BASE=${PORT_BASE:-27600} timeout 120 deploy/local-cluster.sh up 2>&1); then
  # shellcheck disable=SC1091
  source "$CLUSTER_DIR/env"
  pids=$(awk '{ print $2 }' "$CLUSTER_DIR/pids")
  cli() { timeout 60 "$BIN/tern-cli" --jwt-secret "$SECRET" "$@"; }
  # bob listens on node 2; once ready, alice sends on node 1.
  cli --server "$NODE2_TCP" --user bob listen --count 1 --for-ms 30000 >"$WORK/listen.out" 2>&1 &
  listener=$!
  for _ in $(seq 1 200); do grep -q '^ready' "$WORK/listen.out" && break; sleep 0.1; done
  if grep -q '^ready' "$WORK/listen.out" \
    && cli --server "$NODE1_TCP" --user alice send --to bob 'across the nodes' >"$WORK/send.out" 2>&1 \
    && wait "$listener" && grep -q '^entry .*across the nodes' "$WORK/listen.out"; then
    ok "local cluster: alice on node 1 -> bob on node 2"
  else
    kill "$listener" 2>/dev/null || true
    bad "local cluster message: send: $(cat "$WORK/send.out" 2>/dev/null); listen: $(cat "$WORK/listen.out")"
  fi
  if timeout 120 deploy/local-cluster.sh down >/dev/null 2>&1; then
    CLUSTER_UP=""
    left=""
    for p in $pids; do alive "$p" && left+=" $p"; done
    [ -z "$left" ] && [ ! -e "$CLUSTER_DIR" ] && ok "local cluster down: every process stopped, its dir removed" \
      || bad "local cluster down left pids:$left"
  else
    bad "local-cluster.sh down failed"
  fi
else
  bad "local-cluster.sh up: $out"
fi

echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
