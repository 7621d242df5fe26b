// The admin console: an API key (kept in this tab's sessionStorage only)
// against the server API (docs/http-api.md), and `/metrics` for the live
// charts, drawn on <canvas> with no library. Polls every POLL_MS while open.

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const POINTS_MAX = 90; // 3 minutes of samples per chart

let key = sessionStorage.getItem("tern-admin-key");
let timer = null;
let prev = null; // the previous /metrics sample
let currentUser = null;
let currentGroup = null;
const series = { connections: [], sends: [], deliveries: [], p99: [] };

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(json.detail || json.title || `HTTP ${res.status}`);
    e.status = res.status;
    e.code = json.code;
    throw e;
  }
  return json;
}

function banner(text, kind) {
  const b = $("banner");
  b.textContent = text || "";
  b.className = `banner ${kind || ""}`;
  b.hidden = !text;
}

// ---- sign-in -----------------------------------------------------------------

async function signIn(k) {
  key = k;
  try {
    await api("GET", "/api/v1/online");
  } catch (e) {
    key = null;
    sessionStorage.removeItem("tern-admin-key");
    $("signin-error").textContent = e.status === 401 ? "Unknown API key." : e.status === 403 ? "This key lacks the read scope." : e.message;
    return;
  }
  sessionStorage.setItem("tern-admin-key", key);
  $("signin").hidden = true;
  $("console").hidden = false;
  poll();
  timer = setInterval(poll, POLL_MS);
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  signIn($("api-key").value.trim());
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem("tern-admin-key");
  clearInterval(timer);
  location.reload();
});

// ---- metrics -----------------------------------------------------------------

/** Parses the Prometheus text format into name → [{labels, value}]. */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const v = Number(m[4]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: v });
  }
  return out;
}

function sum(metrics, name) {
  return (metrics.get(name) || []).reduce((a, s) => a + s.value, 0);
}

/** Buckets of a histogram summed over its labels: le → cumulative count. */
function buckets(metrics, name) {
  const b = new Map();
  for (const s of metrics.get(`${name}_bucket`) || []) {
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    b.set(le, (b.get(le) || 0) + s.value);
  }
  return b;
}

/** The p99 of what a histogram counted between two samples (bucket bound). */
function p99(now, before) {
  const les = [...now.keys()].sort((a, b) => a - b);
  const d = les.map((le) => [le, (now.get(le) || 0) - ((before && before.get(le)) || 0)]);
  const total = d.length ? d[d.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = total * 0.99;
  for (const [le, c] of d) if (c >= rank) return le;
  return null;
}

function push(name, v) {
  const s = series[name];
  s.push(v);
  if (s.length > POINTS_MAX) s.shift();
}

function fmtSecs(s) {
  if (s == null) return "–";
  if (s === Infinity) return "> top bucket";
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms` : `${s.toFixed(2)} s`;
}

async function pollMetrics() {
  const res = await fetch("/metrics");
  if (!res.ok) throw new Error(`/metrics: HTTP ${res.status}`);
  const m = parseMetrics(await res.text());
  const t = performance.now();
  const sample = {
    t,
    connections: sum(m, "tern_connections"),
    sends: sum(m, "tern_messages_sent_total"),
    deliveries: sum(m, "tern_deliveries_total"),
    latency: buckets(m, "tern_send_ack_latency_seconds"),
  };
  push("connections", sample.connections);
  $("v-connections").textContent = String(sample.connections);
  if (prev) {
    const dt = (t - prev.t) / 1000;
    const sends = Math.max(0, (sample.sends - prev.sends) / dt);
    const deliveries = Math.max(0, (sample.deliveries - prev.deliveries) / dt);
    const q = p99(sample.latency, prev.latency);
    push("sends", sends);
    push("deliveries", deliveries);
    push("p99", q === Infinity ? null : q == null ? null : q * 1000);
    $("v-sends").textContent = sends.toFixed(1);
    $("v-deliveries").textContent = deliveries.toFixed(1);
    $("v-p99").textContent = fmtSecs(q);
  }
  prev = sample;
  for (const name of Object.keys(series)) draw(name);
  const hooks = [...m.keys()].filter((n) => n.startsWith("tern_webhook_") && !/_bucket$|_sum$|_count$|_created$/.test(n)).sort();
  $("webhooks").replaceChildren(
    ...hooks.flatMap((n) =>
      m.get(n).map((s) => {
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        const l = Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).join(",");
        const short = n.replace(/^tern_webhook_/, "");
        th.textContent = l ? `${short}{${l}}` : short;
        th.title = n;
        const td = document.createElement("td");
        td.textContent = String(s.value);
        tr.append(th, td);
        return tr;
      }),
    ),
  );
}

/** A line chart of one series on its canvas, scaled to its own maximum. */
function draw(name) {
  const canvas = $(`c-${name}`);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth * dpr;
  const h = canvas.clientHeight * dpr;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const pts = series[name];
  const max = Math.max(1, ...pts.filter((v) => v != null));
  ctx.fillStyle = "#5b6570";
  ctx.font = `${10 * dpr}px system-ui`;
  ctx.fillText(name === "p99" ? `${max.toFixed(1)} ms` : max.toFixed(max < 10 ? 1 : 0), 4 * dpr, 11 * dpr);
  ctx.strokeStyle = "#1f5f8b";
  ctx.lineWidth = 2 * dpr;
  ctx.beginPath();
  let started = false;
  pts.forEach((v, i) => {
    if (v == null) {
      started = false;
      return;
    }
    // The newest sample at the right edge, older ones to its left.
    const x = w - ((pts.length - 1 - i) / (POINTS_MAX - 1)) * w;
    const y = h - (v / max) * (h - 16 * dpr) - 2 * dpr;
    if (started) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    started = true;
  });
  ctx.stroke();
}

async function pollOnline() {
  const o = await api("GET", "/api/v1/online");
  $("online-total").textContent = String(o.connections);
  $("online-node").textContent = o.node_id;
  $("node").textContent = `node ${o.node_id}`;
  $("shards").replaceChildren(
    ...o.shards.map((s) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = String(s.shard);
      tr.children[1].textContent = String(s.connections);
      return tr;
    }),
  );
}

async function poll() {
  try {
    await Promise.all([pollOnline(), pollMetrics()]);
    if ($("banner").dataset.kind === "poll") banner("");
  } catch (e) {
    banner(`Cannot reach the server: ${e.message}`, "warn");
    $("banner").dataset.kind = "poll";
  }
}

// ---- users -------------------------------------------------------------------

async function showUser(user, keepResult) {
  currentUser = user;
  if (!keepResult) $("user-result").textContent = "";
  $("user-view").hidden = false;
  $("user-name").textContent = user;
  $("user-profile").textContent = "";
  try {
    const p = await api("GET", `/api/v1/users/${encodeURIComponent(user)}/profile`);
    $("user-profile").textContent = [p.nickname, p.bio].filter(Boolean).join(" · ");
  } catch {
    /* no profile stored: fine */
  }
  try {
    const pr = await api("POST", "/api/v1/presence", { user_ids: [user] });
    const p = pr.presences[0];
    $("user-presence").textContent = `Presence: ${p.state}${p.text ? ` (${p.text})` : ""}`;
  } catch (e) {
    $("user-presence").textContent = `Presence: ${e.message}`;
  }
  try {
    const d = await api("GET", `/api/v1/users/${encodeURIComponent(user)}/devices`);
    $("user-devices").replaceChildren(
      ...(d.devices.length
        ? d.devices.map((dev) => {
            const li = document.createElement("li");
            li.textContent = `${dev} `;
            const b = document.createElement("button");
            b.type = "button";
            b.textContent = "Kick";
            b.setAttribute("aria-label", `Kick device ${dev}`);
            b.addEventListener("click", () => kick(dev));
            li.append(b);
            return li;
          })
        : [Object.assign(document.createElement("li"), { textContent: "No device connected", className: "hint" })]),
    );
  } catch (e) {
    $("user-devices").replaceChildren();
    $("user-result").textContent = e.message;
  }
}

async function kick(device) {
  try {
    const r = await api("POST", `/api/v1/users/${encodeURIComponent(currentUser)}/kick`, device ? { device_id: device } : {});
    $("user-result").textContent = `Kicked: ${r.devices.join(", ") || "no device here"}`;
  } catch (e) {
    $("user-result").textContent = `Kick failed: ${e.message}`;
  }
  setTimeout(() => showUser(currentUser, true), 300);
}

$("user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  showUser($("user-id").value.trim());
});
$("kick-all").addEventListener("click", () => kick(null));
$("ban-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", `/api/v1/users/${encodeURIComponent(currentUser)}/ban`, { reason: $("ban-reason").value });
    $("user-result").textContent = r.banned ? `${r.user_id} is banned` : "";
  } catch (e) {
    $("user-result").textContent = `Ban failed: ${e.message}`;
  }
  setTimeout(() => showUser(currentUser, true), 300);
});
$("unban").addEventListener("click", async () => {
  try {
    const r = await api("DELETE", `/api/v1/users/${encodeURIComponent(currentUser)}/ban`);
    $("user-result").textContent = r.banned ? "" : `${r.user_id} is not banned`;
  } catch (e) {
    $("user-result").textContent = `Unban failed: ${e.message}`;
  }
});

// ---- groups ------------------------------------------------------------------

async function showGroup(id) {
  currentGroup = id;
  $("group-result").textContent = "";
  try {
    const g = await api("GET", `/api/v1/groups/${encodeURIComponent(id)}`);
    $("group-view").hidden = false;
    $("group-name").textContent = `${g.name} (${g.group_id})`;
    $("group-meta").textContent = `${g.member_count} members · owner ${g.owner} · ${g.join_policy}${g.dissolved ? " · dissolved" : ""}`;
    $("dissolve").disabled = g.dissolved;
    $("group-members").replaceChildren(
      ...g.members.map((m) => {
        const tr = document.createElement("tr");
        tr.dataset.user = m.user_id;
        tr.innerHTML = "<td></td><td></td><td></td>";
        tr.children[0].textContent = m.user_id;
        tr.children[1].textContent = m.role;
        if (m.role !== "owner" && !g.dissolved) {
          const b = document.createElement("button");
          b.type = "button";
          b.textContent = "Remove";
          b.setAttribute("aria-label", `Remove ${m.user_id}`);
          b.addEventListener("click", () => groupCall("DELETE", `/members/${encodeURIComponent(m.user_id)}`));
          tr.children[2].append(b);
        }
        return tr;
      }),
    );
    if (g.more) $("group-result").textContent = "More members than shown (first page).";
  } catch (e) {
    $("group-view").hidden = true;
    $("group-result").textContent = e.message;
  }
}

async function groupCall(method, suffix) {
  try {
    await api(method, `/api/v1/groups/${encodeURIComponent(currentGroup)}${suffix}`);
  } catch (e) {
    $("group-result").textContent = e.message;
    return;
  }
  showGroup(currentGroup);
}

$("group-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  showGroup($("group-id").value.trim());
});
$("dissolve").addEventListener("click", () => {
  if (confirm(`Dissolve ${currentGroup}? Members can no longer send to it.`)) groupCall("DELETE", "");
});

if (key) signIn(key);
