// Tern's protocol client for the browser: one WebSocket, one binary message
// per protobuf `Frame` (docs/protocol.md, section 1.1), the client algorithm
// of docs/protocol.md section 7.4: auth with resume cursors, sync until
// `more` is false, cumulative deliver_acks, a gap in seq → sync, pending
// sends resent with the same client_msg_id after every reconnect.
//
// The schema is not typed by hand: it is `tern.proto.json`, made by
// protobufjs' pbjs from protocol/proto (web/build.mjs), loaded into the
// protobufjs "light" runtime (vendor/protobuf.min.js, a global `protobuf`).
//
// The client keeps, per conversation, the cursor (the last seq it holds with
// nothing missing below) and hands every new entry to its `onEntry` once, in
// seq order per conversation: the page dedupes nothing itself.

/* global protobuf */

let Frame = null;

/** Loads the schema once. */
export async function loadSchema() {
  if (Frame) return;
  const res = await fetch("/web/tern.proto.json");
  if (!res.ok) throw new Error(`schema: HTTP ${res.status}`);
  const root = protobuf.Root.fromJSON(await res.json());
  Frame = root.lookupType("tern.v1.Frame");
}

const TO_OBJECT = { longs: Number, enums: String, defaults: true, oneofs: true };

/** Encodes a plain `Frame` object (camelCase fields, enums by name). */
export function encodeFrame(obj) {
  return Frame.encode(Frame.fromObject(obj)).finish();
}

/** Decodes bytes into a plain object; `body` names the oneof field set. */
export function decodeFrame(bytes) {
  return Frame.toObject(Frame.decode(bytes), TO_OBJECT);
}

/** A fresh, globally unique client_msg_id (a UUID). */
export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// Bounds: every loop and queue here has one.
const REQUEST_TIMEOUT_MS = 15000;
const SYNC_PAGES_MAX = 100;
const LIST_PAGES_MAX = 20;
const RESUME_CURSORS_MAX = 1000;
const OUTBOX_MAX = 500;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;

/** Send errors worth a retry with the same client_msg_id. */
const RETRYABLE = new Set([
  "ERROR_CODE_TIMEOUT",
  "ERROR_CODE_OVERLOADED",
  "ERROR_CODE_INTERNAL",
  "ERROR_CODE_RATE_LIMITED",
]);

/** Kick reasons after which the client must not reconnect. */
const FINAL_KICKS = new Set(["KICK_REASON_BANNED", "KICK_REASON_DISPLACED"]);

export class TernClient {
  /**
   * @param {object} o
   * @param {string} o.url        ws:// or wss:// URL of the gateway
   * @param {() => string} o.token the current token (read at each connect)
   * @param {string} o.deviceId   stable per browser and user
   * @param {object} o.on         callbacks: status(state, detail), welcome(w, first),
   *                              entry(e, live) (live: new to this device, by push or sync),
   *                              sendAck(ack, send), sendFailed(send, error), push(body, frame),
   *                              kick(k), heads(cursors), authError(error)
   */
  constructor({ url, token, deviceId, on }) {
    this.url = url;
    this.token = token;
    this.deviceId = deviceId;
    this.on = on;
    this.ws = null;
    this.state = "idle"; // idle → connecting → live → (disconnected → connecting …) | stopped
    this.cursors = new Map(); // conversation → last contiguous seq held
    this.ahead = new Map(); // conversation → Map(seq → entry) held above the cursor
    this.pending = new Map(); // request_id → { resolve, reject, timer }
    this.outbox = new Map(); // client_msg_id → Send (insertion order = write order)
    this.sendIds = new Map(); // request_id of a send in flight → its client_msg_id
    this.nextRequestId = 1;
    this.welcome = null;
    this.welcomes = 0;
    this.backoff = BACKOFF_MIN_MS;
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.lastHeard = 0;
    this.syncing = null;
    this.onOnline = () => {
      if (this.state === "disconnected") this.connectSoon(0);
    };
    this.onOffline = () => this.drop("offline");
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  }

  // ---- connection ---------------------------------------------------------

  connect() {
    if (this.state === "stopped" || this.state === "connecting" || this.state === "live") return;
    clearTimeout(this.reconnectTimer);
    if (!navigator.onLine) {
      this.setState("disconnected", "offline");
      return; // `online` reconnects
    }
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.setState("disconnected", String(e));
      this.connectSoon();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      const cursors = [...this.cursors]
        .slice(0, RESUME_CURSORS_MAX)
        .map(([conversationId, seq]) => ({ conversationId, seq }));
      this.sendRaw({
        requestId: this.takeRequestId(),
        auth: {
          token: this.token(),
          deviceId: this.deviceId,
          platform: "PLATFORM_WEB",
          protocolVersion: 1,
          resumeCursors: cursors,
          clientVersion: "tern-web/0.1",
        },
      });
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let f;
      try {
        f = decodeFrame(new Uint8Array(ev.data));
      } catch (e) {
        console.warn("undecodable frame", e);
        return;
      }
      this.handle(f);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.afterClose(ev.reason || `closed (${ev.code})`);
    };
  }

  /** Closes the socket as if the network dropped; reconnects when it can. */
  drop(why) {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close();
      } catch {
        /* already closing */
      }
      this.afterClose(why);
    }
  }

  /** Signs out: closes and never reconnects. */
  stop() {
    this.setState("stopped");
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
  }

  afterClose(why) {
    clearInterval(this.pingTimer);
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(Object.assign(new Error("connection lost"), { code: "DISCONNECTED" }));
    }
    this.pending.clear();
    if (this.state === "stopped" || this.state === "kicked") return;
    this.setState("disconnected", why);
    this.connectSoon();
  }

  connectSoon(delay) {
    clearTimeout(this.reconnectTimer);
    const wait = delay ?? this.backoff * (0.75 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.reconnectTimer = setTimeout(() => this.connect(), wait);
  }

  setState(state, detail) {
    this.state = state;
    this.on.status?.(state, detail);
  }

  takeRequestId() {
    return this.nextRequestId++;
  }

  sendRaw(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(encodeFrame(frame));
    return true;
  }

  /** Sends a request and resolves with the answering frame's body object. */
  request(field, body) {
    return new Promise((resolve, reject) => {
      if (this.state !== "live") {
        reject(Object.assign(new Error("not connected"), { code: "DISCONNECTED" }));
        return;
      }
      const requestId = this.takeRequestId();
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(Object.assign(new Error("timed out"), { code: "TIMEOUT" }));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(requestId, { resolve, reject, timer });
      this.sendRaw({ requestId, [field]: body });
    });
  }

  /** A fire-and-forget frame (typing, deliver_ack). */
  tell(field, body) {
    return this.sendRaw({ requestId: field === "typing" ? this.takeRequestId() : 0, [field]: body });
  }

  // ---- frames from the server ---------------------------------------------

  handle(f) {
    const body = f.body;
    if (f.requestId && this.pending.has(f.requestId)) {
      const p = this.pending.get(f.requestId);
      this.pending.delete(f.requestId);
      clearTimeout(p.timer);
      if (body === "error") {
        p.reject(Object.assign(new Error(f.error.reason || f.error.code), { code: f.error.code }));
      } else {
        p.resolve(f[body]);
      }
      return;
    }
    switch (body) {
      case "welcome":
        this.onWelcome(f.welcome);
        break;
      case "pong":
        break;
      case "deliver":
        this.onDeliver(f.deliver.entries);
        break;
      case "sendAck":
        this.sendIds.delete(f.requestId);
        this.onSendAck(f.sendAck);
        break;
      case "kick":
        this.onKick(f.kick);
        break;
      case "error":
        if (this.sendIds.has(f.requestId)) {
          const id = this.sendIds.get(f.requestId);
          this.sendIds.delete(f.requestId);
          this.onSendError(id, f.error);
          break;
        }
        if (this.state === "connecting") {
          // The handshake failed: the server closes; a bad token will not heal.
          const final = ["ERROR_CODE_AUTH_FAILED", "ERROR_CODE_TOKEN_EXPIRED"].includes(f.error.code);
          if (final) this.setState("kicked", f.error.reason || f.error.code);
          this.on.authError?.(f.error);
        }
        this.on.push?.(body, f);
        break;
      default:
        this.on.push?.(body, f);
    }
  }

  async onWelcome(w) {
    this.welcome = w;
    this.welcomes++;
    this.backoff = BACKOFF_MIN_MS;
    this.setState("live");
    const interval = Math.max(1000, w.heartbeatIntervalMs || 30000);
    clearInterval(this.pingTimer);
    this.lastHeard = Date.now();
    this.pingTimer = setInterval(() => {
      // Nothing heard for two intervals (a pong is due every one): the
      // connection is dead even if the socket does not know it yet.
      if (Date.now() - this.lastHeard > 2 * interval + 1000) {
        this.drop("no answer to heartbeats");
        return;
      }
      this.sendRaw({ requestId: this.takeRequestId(), ping: { nonce: Date.now() } });
    }, interval);
    const first = this.welcomes === 1;
    try {
      await this.on.welcome?.(w, first);
      await this.syncAll();
      await this.flushOutbox();
    } catch (e) {
      if (e.code !== "DISCONNECTED") console.warn("after welcome", e);
    }
  }

  onKick(k) {
    this.on.kick?.(k);
    if (FINAL_KICKS.has(k.reason)) {
      this.setState("kicked", k.reason);
      clearInterval(this.pingTimer);
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.close();
      }
    } else {
      // Reconnect after retry_after_ms (plus our own jitter).
      this.backoff = Math.max(BACKOFF_MIN_MS, k.retryAfterMs || 0);
      this.drop(k.message || k.reason);
    }
  }

  // ---- the log ------------------------------------------------------------

  cursor(c) {
    return this.cursors.get(c) ?? 0;
  }

  /** Adopts `seq` as the cursor of `c` (a new device, from the list). */
  adoptHead(c, seq) {
    if (seq > this.cursor(c)) this.cursors.set(c, seq);
  }

  /**
   * Takes one entry: applied (and handed to the page) when it is the next
   * one, kept aside when above a hole, dropped when already held.
   * Returns true when a hole was seen.
   */
  ingest(e, live) {
    const c = e.conversationId;
    const cur = this.cursor(c);
    if (e.seq <= cur) return false;
    if (e.seq > cur + 1) {
      let a = this.ahead.get(c);
      if (!a) this.ahead.set(c, (a = new Map()));
      if (!a.has(e.seq)) {
        a.set(e.seq, e);
        // Shown at once (it is stored on the server); the cursor waits.
        this.on.entry?.(e, live);
      }
      return true;
    }
    this.cursors.set(c, e.seq);
    const a = this.ahead.get(c);
    if (!a || !a.has(e.seq)) this.on.entry?.(e, live);
    a?.delete(e.seq);
    // Entries kept aside that now follow on.
    while (a && a.has(this.cursor(c) + 1)) {
      const n = this.cursor(c) + 1;
      a.delete(n);
      this.cursors.set(c, n);
    }
    if (a && a.size === 0) this.ahead.delete(c);
    if (e.sender === this.welcome?.userId && e.clientMsgId) this.outbox.delete(e.clientMsgId);
    return false;
  }

  onDeliver(entries) {
    const touched = new Set();
    let gap = false;
    for (const e of entries) {
      gap = this.ingest(e, true) || gap;
      touched.add(e.conversationId);
    }
    this.ackTouched(touched);
    if (gap) this.syncAll().catch(() => {});
  }

  ackTouched(touched) {
    const cursors = [...touched]
      .filter((c) => this.cursor(c) > 0)
      .map((c) => ({ conversationId: c, seq: this.cursor(c) }));
    if (cursors.length) this.tell("deliverAck", { cursors });
  }

  /** Syncs until `more` is false (one sync at a time). */
  syncAll() {
    if (this.syncing) return this.syncing;
    this.syncing = (async () => {
      try {
        for (let page = 0; page < SYNC_PAGES_MAX; page++) {
          const cursors = [...this.cursors].map(([conversationId, seq]) => ({ conversationId, seq }));
          const res = await this.request("sync", { cursors, limit: 0 });
          const touched = new Set();
          for (const e of res.entries) {
            // New to this device, as a push would have been.
            this.ingest(e, true);
            touched.add(e.conversationId);
          }
          this.ackTouched(touched);
          this.on.heads?.(res.heads);
          if (!res.more) break;
        }
      } finally {
        this.syncing = null;
      }
    })();
    return this.syncing;
  }

  /** Pages through the conversation list (newest activity first). */
  async listConversations() {
    const all = [];
    for (let page = 0; page < LIST_PAGES_MAX; page++) {
      const res = await this.request("conversations", { limit: 0, offset: all.length });
      all.push(...res.conversations);
      if (!res.more || res.conversations.length === 0) break;
    }
    return all;
  }

  // ---- sending ------------------------------------------------------------

  /**
   * Sends a message: kept in the outbox until acked, resent with the same
   * client_msg_id after a reconnect. `send` is a `Send` object without id.
   */
  send(send) {
    if (this.outbox.size >= OUTBOX_MAX) throw new Error("too many messages waiting to be sent");
    const msg = { ...send, clientMsgId: send.clientMsgId || newId() };
    this.outbox.set(msg.clientMsgId, msg);
    if (this.state === "live") this.sendOne(msg);
    return msg;
  }

  sendOne(msg) {
    const requestId = this.takeRequestId();
    if (this.sendIds.size >= OUTBOX_MAX) this.sendIds.delete(this.sendIds.keys().next().value);
    this.sendIds.set(requestId, msg.clientMsgId);
    this.sendRaw({ requestId, send: msg });
  }

  async flushOutbox() {
    for (const msg of [...this.outbox.values()]) {
      if (this.state !== "live") return;
      this.sendOne(msg);
    }
  }

  /** A send answered by an error: retried later, or given up and reported. */
  onSendError(clientMsgId, err) {
    const msg = this.outbox.get(clientMsgId);
    if (!msg) return;
    if (RETRYABLE.has(err.code)) {
      setTimeout(() => {
        if (this.state === "live" && this.outbox.has(clientMsgId)) this.sendOne(msg);
      }, Math.max(1000, err.retryAfterMs || 0));
      return;
    }
    this.outbox.delete(clientMsgId);
    this.on.sendFailed?.(msg, err);
  }

  onSendAck(ack) {
    const msg = this.outbox.get(ack.clientMsgId);
    this.outbox.delete(ack.clientMsgId);
    this.on.sendAck?.(ack, msg);
  }
}
