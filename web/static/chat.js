// The chat page: sign-in, conversation list, 1:1 and group chat, media,
// receipts, typing, presence, friends and groups, rooms (joined by id:
// their recent posts, live posts, posting), over TernClient (client.js)
// and the server API (media, accounts). Plain ES module, no framework:
// state in `S`, one `render*` function per part of the screen.
//
// On screen, a conversation shows the entries it holds keyed by seq (so a
// message synced twice is drawn once) plus this device's sends not yet
// acked, keyed by client_msg_id (replaced by the stored entry on ack).
//
// A reload keeps the tab's state (sessionStorage, `tern-state-<user>`): the
// session, the open conversation, the cursors and the sends not yet acked.
// The reloaded page connects with those cursors as `resume_cursors`, syncs
// what came meanwhile, and resends the pending sends with their
// client_msg_id (the server stores each once).

import { TernClient, loadSchema, newId } from "./client.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
const TYPING_RENEW_MS = 3000;
const TYPING_EXPIRE_MS = 6000;
const MEDIA_CACHE_MAX = 200;
const PROFILES_MAX = 500;
const SAVED_CURSORS_MAX = 1000;
const SAVED_OUTBOX_MAX = 100;
const SAVED_ROOMS_MAX = 64; // the server's default rooms per connection
const MUTE_MEMBER_MS = 60 * 60 * 1000;
// An id, optionally in a tenant (`acme~alice`, docs/tenants.md).
const ID_RE = /^(?:[a-z0-9-]{1,32}~)?[A-Za-z0-9._@-]{1,64}$/;
const MEDIA_ID_RE = /^(?:[a-z0-9-]{1,32}~)?[a-z2-7]{26}$/;
const OWNER = "GROUP_ROLE_OWNER";
const ADMIN = "GROUP_ROLE_ADMIN";
const MEMBER = "GROUP_ROLE_MEMBER";

const S = {
  cfg: null,
  me: null,
  token: null,
  client: null,
  convs: new Map(), // conversation id → conv (see convFor)
  open: null, // the open conversation id
  presence: new Map(), // user → Presence
  typing: new Map(), // conversation → Map(user → expiry ms)
  media: new Map(), // media id → Promise<object URL>
  friends: [],
  requests: { incoming: [], outgoing: [] },
  members: [], // members of the open group
  myRole: null, // my role in the open group
  lastTypingSent: 0,
  profiles: new Map(), // user → Promise<Profile | null>
  names: new Map(), // user → nickname, once its profile is known
  restored: false, // cursors came from before a reload
  quiet: false, // syncing after a reload: the list's unread counts stand
};

// ---- sign-in ----------------------------------------------------------------

async function boot() {
  try {
    await loadSchema();
    S.cfg = await (await fetch("/web/config.json")).json();
  } catch (e) {
    showError(`Cannot load the page's configuration: ${e.message}`);
    return;
  }
  const mode = S.cfg.accounts ? "accounts" : S.cfg.dev ? "dev" : "token";
  $("password-row").hidden = mode === "dev";
  $("register-button").hidden = mode !== "accounts";
  if (mode === "token") {
    document.querySelector('label[for="signin-password"]').textContent = "Token (JWT)";
    $("signin-mode").textContent = "Paste a token issued by your identity service.";
  } else if (mode === "dev") {
    $("signin-mode").textContent = "Development mode: pick any user id.";
  }
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn(mode, false);
  });
  $("register-button").addEventListener("click", () => signIn(mode, true));
  // Until here a click would have submitted the form natively (a reload).
  $("signin-button").disabled = false;
  $("register-button").disabled = false;
  const saved = sessionStorage.getItem("tern-session");
  if (saved) {
    const { user, token } = JSON.parse(saved);
    start(user, token);
  }
}

function showError(text) {
  $("signin-error").textContent = text;
}

async function signIn(mode, register) {
  const user = $("signin-user").value.trim();
  const secret = $("signin-password").value;
  showError("");
  if (!ID_RE.test(user)) return showError("A user id is 1 to 64 letters, digits or . _ - @");
  try {
    let token;
    if (mode === "dev") {
      token = (await postJson("/web/dev-token", { user_id: user })).token;
    } else if (mode === "accounts") {
      if (register) await postJson("/api/v1/accounts/register", { user_id: user, password: secret });
      token = (await postJson("/api/v1/accounts/login", { user_id: user, password: secret })).token;
    } else {
      token = secret.trim();
    }
    sessionStorage.setItem("tern-session", JSON.stringify({ user, token }));
    start(user, token);
  } catch (e) {
    showError(e.message);
  }
}

async function postJson(url, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.detail || json.title || `HTTP ${res.status}`);
  return json;
}

function wsUrl() {
  const secure = location.protocol === "https:" && S.cfg.wss;
  const ep = secure ? S.cfg.wss : S.cfg.ws || S.cfg.wss;
  if (!ep) throw new Error("this server has no WebSocket listener");
  const scheme = ep === S.cfg.wss ? "wss" : "ws";
  return `${scheme}://${ep.host ?? location.hostname}:${ep.port}/`;
}

function deviceId(user) {
  const key = `tern-device-${user}`;
  let id = localStorage.getItem(key);
  if (!id) {
    id = `web-${newId().replaceAll("-", "").slice(0, 16)}`;
    localStorage.setItem(key, id);
  }
  return id;
}

function start(user, token) {
  S.me = user;
  S.token = token;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = user;
  document.title = `${user} · Tern chat`;
  let url;
  try {
    url = wsUrl();
  } catch (e) {
    setBanner(e.message, "error");
    return;
  }
  S.client = new TernClient({
    url,
    token: () => S.token,
    deviceId: deviceId(user),
    on: {
      status: onStatus,
      welcome: onWelcome,
      entry: onEntry,
      sendAck: onSendAck,
      sendFailed: onSendFailed,
      push: onPush,
      kick: onKick,
      authError: (e) => setBanner(`Sign-in refused: ${e.reason || e.code}`, "error"),
    },
  });
  restoreState();
  S.client.connect();
  wireApp();
  if (S.open) openConv(S.open);
}

// ---- state across a reload ------------------------------------------------------

function stateKey() {
  return `tern-state-${S.me}`;
}

/** Puts back what the tab held before a reload (see the top of this file). */
function restoreState() {
  let st;
  try {
    st = JSON.parse(sessionStorage.getItem(stateKey()) || "null");
  } catch {
    st = null;
  }
  if (!st || st.v !== 1) return;
  for (const [c, seq] of (st.cursors || []).slice(0, SAVED_CURSORS_MAX)) {
    if (typeof c === "string" && Number.isSafeInteger(seq) && seq > 0) {
      convFor(c);
      S.client.cursors.set(c, seq);
    }
  }
  S.restored = S.client.cursors.size > 0;
  for (const send of (st.outbox || []).slice(0, SAVED_OUTBOX_MAX)) {
    if (!send || !send.clientMsgId) continue;
    const id = send.groupId ? `g:${send.groupId}` : send.userId ? dmId(S.me, send.userId) : null;
    if (!id) continue;
    S.client.outbox.set(send.clientMsgId, send);
    convFor(id).pending.set(send.clientMsgId, { send, status: "sending" });
  }
  for (const id of (st.rooms || []).slice(0, SAVED_ROOMS_MAX)) {
    if (typeof id === "string" && ID_RE.test(id)) convFor(`r:${id}`).joined = true;
  }
  if (typeof st.open === "string" && S.convs.has(st.open)) S.open = st.open;
  else if (typeof st.open === "string" && /^[dg]:/.test(st.open)) S.open = convFor(st.open).id;
}

function saveState() {
  if (!S.client || !S.me) return;
  const st = {
    v: 1,
    open: S.open,
    cursors: [...S.client.cursors].slice(0, SAVED_CURSORS_MAX),
    outbox: [...S.client.outbox.values()].slice(0, SAVED_OUTBOX_MAX),
    rooms: [...S.convs.values()].filter((c) => c.room && c.joined).map((c) => c.peer),
  };
  try {
    sessionStorage.setItem(stateKey(), JSON.stringify(st));
  } catch (e) {
    console.warn("saving the tab's state", e);
  }
}

function saveSoon() {
  debounce("save", 300, saveState);
}

// ---- connection status ------------------------------------------------------

function setBanner(text, kind) {
  const b = $("banner");
  b.textContent = text || "";
  b.className = `banner ${kind || ""}`;
  b.hidden = !text;
}

let everLive = false;
function onStatus(state, detail) {
  document.body.dataset.connection = state;
  if (state === "live") {
    everLive = true;
    setBanner("");
  } else if (state === "disconnected") {
    setBanner(`Disconnected${detail ? ` (${detail})` : ""}. Reconnecting…`, "warn");
  } else if (state === "connecting" && everLive) {
    setBanner("Reconnecting…", "warn");
  }
}

function onKick(k) {
  const texts = {
    KICK_REASON_BANNED: "You have been banned from this server.",
    KICK_REASON_DISPLACED: "You signed in with this browser elsewhere; this tab is disconnected.",
    KICK_REASON_ADMIN: "An administrator disconnected you. Reconnecting…",
    KICK_REASON_TOKEN_EXPIRED: "Your sign-in expired. Sign out and in again.",
  };
  const text = texts[k.reason] || `Disconnected by the server (${k.message || k.reason}).`;
  // After the client's own status change, so this text stays.
  setTimeout(() => setBanner(text, k.reason === "KICK_REASON_BANNED" ? "error" : "warn"), 0);
  if (k.reason === "KICK_REASON_BANNED") document.body.dataset.banned = "true";
}

async function onWelcome(w, first) {
  if (first) {
    // A new device: the list gives each conversation's head (its cursor)
    // and unread count; history is fetched when one is opened. After a
    // reload, the conversations held keep their cursors (sync brings what
    // came since) and only new ones adopt their head.
    const held = new Set(S.restored ? S.client.cursors.keys() : []);
    const list = await S.client.listConversations();
    for (const s of list) {
      const c = convFor(s.conversationId, s.peer);
      const head = s.last ? s.last.seq : 0;
      if (!held.has(c.id)) S.client.adoptHead(c.id, head);
      c.unread = Number(s.unread);
      c.readSeq = s.readSeq;
      c.mentioned = s.mentioned;
      c.lastMs = s.lastActivityMs;
      if (s.last && s.last.body === "message") c.last = s.last;
    }
    for (const c of S.convs.values()) if (c.group) loadGroupInfo(c);
    renderConversations();
    if (S.restored) {
      // The list's unread counts include what this sync brings.
      S.quiet = true;
      try {
        await S.client.syncAll();
      } finally {
        S.quiet = false;
      }
    }
    loadMyProfile();
  }
  rejoinRooms();
  refreshFriends();
  queryPresence();
  if (S.open) {
    const c = S.convs.get(S.open);
    if (c && !c.historyLoaded) loadHistory(c);
    queryReadBy(c);
  }
}

// ---- conversations ------------------------------------------------------------

function convFor(id, peer) {
  let c = S.convs.get(id);
  if (c) return c;
  const group = id.startsWith("g:");
  const room = id.startsWith("r:");
  if (!peer) {
    if (group || room) peer = id.slice(2);
    else {
      const [a, b] = id.slice(2).split(":");
      peer = a === S.me ? b : a;
    }
  }
  c = {
    id,
    peer,
    group,
    name: group ? peer : peer,
    entries: new Map(), // seq → entry
    pending: new Map(), // client_msg_id → { send, status }
    unread: 0,
    readSeq: 0,
    mentioned: false,
    last: null,
    lastMs: 0,
    oldest: 0,
    more: true,
    historyLoaded: false,
    readBy: new Map(), // seq → { readCount, memberCount }
    left: false,
    room, // a room (`r:<id>`): no cursor, no receipts; see "rooms" below
    joined: false, // this page keeps the room joined (joins it on each connection)
    subscribed: false, // the current connection's join was answered
    closed: false, // the room was deleted (`room_closed`) or is gone
  };
  S.convs.set(id, c);
  return c;
}

function dmId(a, b) {
  return a < b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

function isOpenAndVisible(c) {
  return S.open === c.id && document.visibilityState === "visible";
}

function onEntry(e, live) {
  const c = convFor(e.conversationId);
  applyEntry(c, e, live);
  scheduleRender(c.id);
  saveSoon();
}

/** Applies one log entry to a conversation (from push, sync or history). */
function applyEntry(c, e, live) {
  const old = c.entries.has(e.seq);
  c.entries.set(e.seq, e);
  const fromOthers = e.sender !== S.me;
  switch (e.body) {
    case "message": {
      if (!fromOthers && e.clientMsgId) c.pending.delete(e.clientMsgId);
      if (!c.last || e.seq >= c.last.seq) {
        c.last = e;
        c.lastMs = Math.max(c.lastMs, e.timeMs);
      }
      if (live && !S.quiet && !old && fromOthers && e.seq > c.readSeq && !e.message.recalled) {
        if (!isOpenAndVisible(c)) {
          c.unread++;
          if (e.message.mentionAll || (e.message.mentions || []).includes(S.me)) c.mentioned = true;
        }
      }
      const t = S.typing.get(c.id);
      if (t) t.delete(e.sender);
      break;
    }
    case "recalled": {
      const target = c.entries.get(e.recalled.seq);
      if (target && target.body === "message") {
        target.message.recalled = true;
        target.message.content = null;
        if (live && fromOthers && target.seq > c.readSeq && c.unread > 0) c.unread--;
      }
      break;
    }
    case "edited": {
      const target = c.entries.get(e.edited.seq);
      if (target && target.body === "message" && !target.message.recalled) {
        if (e.edited.content) target.message.content = e.edited.content;
        target.message.editCount = e.edited.editCount;
        target.message.streaming = e.edited.streaming;
      }
      break;
    }
    case "read": {
      const upTo = e.read.upToSeq;
      if (!fromOthers) {
        // Read on this or another of my devices.
        if (upTo > c.readSeq) c.readSeq = upTo;
        if (c.last && upTo >= c.last.seq) {
          c.unread = 0;
          c.mentioned = false;
        }
      } else if (!c.group) {
        for (const m of c.entries.values()) {
          if (m.body === "message" && m.sender === S.me && m.seq <= upTo) {
            m.readByPeer = true;
          }
        }
      } else if (S.open === c.id) {
        debounce("readby", 300, () => queryReadBy(c));
      }
      break;
    }
    case "groupEvent": {
      const g = e.groupEvent;
      if (g.renamed) c.name = g.renamed;
      if (g.created) c.name = g.created.name;
      const gone = (g.left && g.left.userIds) || (g.kicked && g.kicked.userIds) || [];
      if (gone.includes(S.me)) c.left = true;
      if (g.joined && g.joined.userIds.includes(S.me)) c.left = false;
      if (g.dissolved) c.left = true;
      if (g.muteChanged && !g.muteChanged.userId && c.info) c.info.mutedAll = g.muteChanged.mutedAll;
      c.lastMs = Math.max(c.lastMs, e.timeMs);
      if (S.open === c.id && (g.joined || g.left || g.kicked || g.roleChanged || g.muteChanged)) {
        debounce("members", 200, () => loadMembers(c));
        if (live) debounce("groupinfo", 200, () => loadGroupInfo(c));
      }
      break;
    }
    default:
      break;
  }
  if (live && S.open === c.id) debounce("read", 200, () => markRead(c));
}

async function loadHistory(c) {
  if (!S.client || S.client.state !== "live") return;
  if (c.room) return loadRoomHistory(c);
  const before = c.historyLoaded ? c.oldest : 0;
  try {
    const res = await S.client.request("history", {
      conversationId: c.id,
      beforeSeq: before,
      limit: HISTORY_PAGE,
    });
    // Recalls first seen here apply to messages of the same page.
    for (const e of res.entries) applyEntry(c, e, false);
    const seqs = res.entries.map((e) => e.seq);
    if (seqs.length) c.oldest = Math.min(...seqs, c.oldest || Infinity);
    c.more = res.more;
    const wasLoaded = c.historyLoaded;
    c.historyLoaded = true;
    renderMessages(wasLoaded ? "keep" : "bottom");
    queryReadBy(c);
    markRead(c);
  } catch (e) {
    console.warn("history", e);
  }
}

async function markRead(c) {
  if (c.room) {
    // No read marks in rooms: opening one clears its count on this page.
    if (isOpenAndVisible(c)) c.unread = 0;
    return;
  }
  if (!S.client || S.client.state !== "live" || !isOpenAndVisible(c)) return;
  let upTo = 0;
  for (const e of c.entries.values()) {
    if (e.body === "message" && e.sender !== S.me && e.seq > upTo) upTo = e.seq;
  }
  if (upTo <= c.readSeq) {
    if (c.unread) {
      c.unread = 0;
      renderConversations();
    }
    return;
  }
  c.readSeq = upTo;
  c.unread = 0;
  c.mentioned = false;
  renderConversations();
  try {
    await S.client.request("read", { conversationId: c.id, upToSeq: upTo });
  } catch (e) {
    console.warn("read", e);
  }
}

async function queryReadBy(c) {
  if (!c || c.room || !S.client || S.client.state !== "live") return;
  const mine = [...c.entries.values()]
    .filter((e) => e.body === "message" && e.sender === S.me && !e.message.recalled)
    .map((e) => e.seq)
    .sort((a, b) => b - a)
    .slice(0, 50);
  if (!mine.length) return;
  try {
    const res = await S.client.request("readBy", { conversationId: c.id, seqs: mine });
    for (const it of res.items) {
      c.readBy.set(it.seq, it);
      const e = c.entries.get(it.seq);
      if (e && !c.group && it.readCount > 0) e.readByPeer = true;
    }
    if (S.open === c.id) renderMessages("keep");
  } catch (e) {
    console.warn("read_by", e);
  }
}

// ---- groups, friends, presence ------------------------------------------------

async function loadGroupInfo(c) {
  try {
    const res = await S.client.request("groupInfo", { groupId: c.peer });
    c.name = res.info.name || c.peer;
    c.info = res.info;
    if (res.info.dissolved) c.left = true;
    if (S.open === c.id) S.myRole = res.me ? res.me.role : null;
    renderConversations();
    if (S.open === c.id) {
      renderHead();
      renderMembers();
    }
  } catch (e) {
    if (e.code === "ERROR_CODE_NOT_MEMBER") c.left = true;
  }
}

async function loadMembers(c) {
  try {
    const res = await S.client.request("groupMembers", { groupId: c.peer, limit: 0 });
    S.members = res.members;
    const mine = res.members.find((m) => m.userId === S.me);
    S.myRole = mine ? mine.role : null;
    renderMembers();
  } catch (e) {
    S.members = [];
    renderMembers();
  }
}

async function refreshFriends() {
  try {
    const [list, reqs] = await Promise.all([
      S.client.request("friendList", {}),
      S.client.request("friendRequests", {}),
    ]);
    S.friends = list.friends.map((f) => f.profile.userId);
    S.requests = reqs;
    renderFriends();
    queryPresence();
  } catch (e) {
    console.warn("friends", e);
  }
}

async function queryPresence() {
  const users = new Set(S.friends);
  for (const c of S.convs.values()) if (!c.group) users.add(c.peer);
  const ids = [...users].filter((u) => ID_RE.test(u)).slice(0, 200);
  if (!ids.length || S.client.state !== "live") return;
  try {
    const res = await S.client.request("presenceQuery", { userIds: ids });
    for (const p of res.presences) S.presence.set(p.userId, p);
    renderConversations();
    renderHead();
  } catch (e) {
    console.warn("presence", e);
  }
}

// ---- profiles -------------------------------------------------------------------

/** A user's profile (cached; `fresh` asks again). Null when it cannot be read. */
function profileOf(user, fresh) {
  if (!fresh && S.profiles.has(user)) return S.profiles.get(user);
  if (S.profiles.size >= PROFILES_MAX) S.profiles.delete(S.profiles.keys().next().value);
  const p = S.client
    .request("profile", { userId: user })
    .then((r) => {
      const prof = r.profile || { userId: user, nickname: "", avatar: "", bio: "" };
      const before = S.names.get(user) || "";
      if (prof.nickname) S.names.set(user, prof.nickname);
      else S.names.delete(user);
      if ((prof.nickname || "") !== before) scheduleRender();
      return prof;
    })
    .catch(() => {
      S.profiles.delete(user);
      return null;
    });
  S.profiles.set(user, p);
  return p;
}

/** How a user is shown: their nickname, else their id. */
function displayName(user) {
  return S.names.get(user) || user;
}

/** Shows `user`'s avatar (a media id uploaded as an image, or an https URL) in `img`. */
function showAvatar(img, user, prof) {
  const a = prof ? prof.avatar : "";
  img.dataset.user = user;
  if (!a) {
    img.hidden = true;
    img.removeAttribute("src");
    return;
  }
  img.alt = `${displayName(user)}'s avatar`;
  let src;
  if (MEDIA_ID_RE.test(a)) src = avatarUrl(user, a);
  else if (/^https:\/\//.test(a)) src = Promise.resolve(a);
  else {
    img.hidden = true;
    return;
  }
  src
    .then((u) => {
      if (img.dataset.user !== user) return; // another user's since
      img.src = u;
      img.hidden = false;
    })
    .catch(() => (img.hidden = true));
}

/** An avatar's thumbnail as an object URL: anyone may fetch it by naming its user. */
function avatarUrl(user, mediaId) {
  const key = `avatar:${user}:${mediaId}`;
  if (S.media.has(key)) return S.media.get(key);
  const p = fetch(`/api/v1/media/${mediaId}_t?avatar_of=${encodeURIComponent(user)}`, {
    headers: { authorization: `Bearer ${S.token}` },
  }).then(async (res) => {
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return URL.createObjectURL(await res.blob());
  });
  p.catch(() => S.media.delete(key));
  S.media.set(key, p);
  return p;
}

async function loadMyProfile() {
  const prof = await profileOf(S.me, true);
  if (!prof) return;
  $("profile-nickname").value = prof.nickname || "";
  $("profile-bio").value = prof.bio || "";
  $("profile-avatar-clear").hidden = !prof.avatar;
  $("me-name").textContent = prof.nickname ? `${prof.nickname} (${S.me})` : S.me;
  showAvatar($("me-avatar"), S.me, prof);
}

async function saveProfile() {
  const status = $("profile-status");
  const update = { nickname: $("profile-nickname").value.trim(), bio: $("profile-bio").value.trim() };
  try {
    const file = $("profile-avatar-file").files[0];
    if (file) {
      status.textContent = "Uploading the avatar…";
      update.avatar = (await uploadMedia(file, "image")).media_id;
    }
    await S.client.request("profileUpdate", update);
    $("profile-avatar-file").value = "";
    status.textContent = "Profile saved";
    await loadMyProfile();
  } catch (e) {
    status.textContent = `Profile not saved: ${e.message}`;
  }
}

async function clearAvatar() {
  try {
    await S.client.request("profileUpdate", { avatar: "" });
    $("profile-status").textContent = "Avatar removed";
    await loadMyProfile();
  } catch (e) {
    $("profile-status").textContent = `Profile not saved: ${e.message}`;
  }
}

function onPush(kind, f) {
  switch (kind) {
    case "typingEvent": {
      const t = f.typingEvent;
      let m = S.typing.get(t.conversationId);
      if (!m) S.typing.set(t.conversationId, (m = new Map()));
      if (t.typing) m.set(t.userId, Date.now() + TYPING_EXPIRE_MS);
      else m.delete(t.userId);
      renderTyping();
      break;
    }
    case "presenceEvent":
      S.presence.set(f.presenceEvent.presence.userId, f.presenceEvent.presence);
      renderConversations();
      renderHead();
      break;
    case "event": {
      const ev = f.event;
      if (ev.friendRequested || ev.friendAdded || ev.friendRemoved) refreshFriends();
      if (ev.groupJoined) {
        const c = convFor(`g:${ev.groupJoined}`, ev.groupJoined);
        c.left = false;
        loadGroupInfo(c);
        // Its log (creation, invites) comes by sync: nothing of it is held.
        S.client.syncAll().catch(() => {});
      }
      if (ev.groupLeft) {
        const c = convFor(`g:${ev.groupLeft}`, ev.groupLeft);
        c.left = true;
      }
      renderConversations();
      if (S.open) renderHead();
      break;
    }
    case "roomDeliver": {
      const e = f.roomDeliver.entry;
      if (!e) break;
      const c = convFor(e.conversationId);
      applyEntry(c, e, true);
      scheduleRender(c.id);
      break;
    }
    case "roomClosed": {
      const c = S.convs.get(`r:${f.roomClosed.roomId}`);
      if (!c) break;
      c.joined = false;
      c.subscribed = false;
      c.closed = true;
      renderConversations();
      if (S.open === c.id) renderHead();
      saveSoon();
      break;
    }
    case "error":
      if (f.error.code && f.requestId === 0) setBanner(`Server: ${f.error.reason || f.error.code}`, "warn");
      break;
    default:
      break;
  }
}

// ---- rooms ------------------------------------------------------------------
//
// A room (docs/protocol.md, "Rooms") is joined by this connection, not
// stored as a membership: the page keeps the ids it joined (in the tab's
// state) and joins them again after every welcome, then reads the recent
// window (`room_history`), which fills what came while it was away. Posts
// arrive as `room_deliver` pushes, keyed by seq like any entry; there are
// no cursors, acks, receipts or typing. A deleted room (`room_closed`, or
// NOT_FOUND on a join) stays on screen, marked, with what it held.

async function joinRoom(id) {
  const c = convFor(`r:${id}`);
  try {
    const res = await S.client.request("roomJoin", { roomId: id });
    roomJoined(c, res.room);
  } catch (e) {
    if (e.code === "ERROR_CODE_NOT_FOUND") roomGone(c);
    throw e;
  }
  return c;
}

function roomJoined(c, info) {
  c.joined = true;
  c.subscribed = true;
  c.closed = false;
  c.left = false;
  if (info) {
    c.info = info;
    c.name = info.name || c.peer;
    c.lastMs = Math.max(c.lastMs, Number(info.createdMs) || 0);
  }
  saveSoon();
}

function roomGone(c) {
  c.joined = false;
  c.subscribed = false;
  c.closed = true;
  saveSoon();
}

/** Joins again the rooms this page had joined (a join ends with the connection). */
function rejoinRooms() {
  for (const c of S.convs.values()) {
    if (!c.room || !c.joined) continue;
    c.subscribed = false; // a new connection: not joined until answered
    joinRoom(c.peer)
      .then(() => loadRoomHistory(c, true))
      .catch((e) => e.code !== "DISCONNECTED" && console.warn("room join", c.peer, e))
      .finally(() => {
        renderConversations();
        if (S.open === c.id) renderHead();
      });
  }
}

/** A page of the room's recent window (`fresh`: the newest one again). */
async function loadRoomHistory(c, fresh = false) {
  const before = c.historyLoaded && !fresh ? c.oldest : 0;
  try {
    const res = await S.client.request("roomHistory", {
      roomId: c.peer,
      beforeSeq: before,
      limit: HISTORY_PAGE,
    });
    for (const e of res.entries) applyEntry(c, e, false);
    const seqs = res.entries.map((e) => e.seq);
    if (seqs.length) c.oldest = Math.min(...seqs, c.oldest || Infinity);
    // Only the kept window is served: a short page is its oldest end.
    if (!fresh || !c.historyLoaded) c.more = seqs.length >= HISTORY_PAGE && c.oldest > 1;
    const wasLoaded = c.historyLoaded;
    c.historyLoaded = true;
    if (S.open === c.id) renderMessages(wasLoaded && !fresh ? "keep" : "bottom");
    renderConversations();
  } catch (e) {
    if (e.code === "ERROR_CODE_NOT_FOUND") {
      roomGone(c);
      if (S.open === c.id) renderHead();
    } else console.warn("room history", e);
  }
}

/** Posts to a room: shown as sending until the server's `ok`. */
async function postToRoom(c, content) {
  const clientMsgId = newId();
  const p = { send: { clientMsgId, content }, status: "sending" };
  c.pending.set(clientMsgId, p);
  renderMessages("bottom");
  try {
    await S.client.request("roomPost", { roomId: c.peer, content, clientMsgId });
    // Stored; a joined page also gets it as a push (keyed by seq).
    c.pending.delete(clientMsgId);
    if (!c.joined) loadRoomHistory(c, true);
  } catch (e) {
    p.status = "failed";
    p.error = e.code ? e.code.replace("ERROR_CODE_", "") : e.message;
    if (e.code === "ERROR_CODE_NOT_FOUND") {
      roomGone(c);
      renderHead();
    }
  }
  renderMessages("auto");
}

// ---- sending ----------------------------------------------------------------

function target(c) {
  return c.group ? { groupId: c.peer } : { userId: c.peer };
}

function sendContent(c, content, extra = {}) {
  if (c.room) return postToRoom(c, content);
  const send = S.client.send({ ...target(c), content, ...extra });
  c.pending.set(send.clientMsgId, { send, status: "sending" });
  renderMessages("bottom");
  saveState();
}

function sendText(c, text) {
  if (c.room) return postToRoom(c, { text: { text } });
  const extra = {};
  if (c.group) {
    const names = [...text.matchAll(/@((?:[a-z0-9-]{1,32}~)?[A-Za-z0-9._@-]{1,64})/g)].map((m) => m[1]);
    extra.mentionAll = names.includes("all");
    extra.mentions = [...new Set(names.filter((n) => n !== "all"))].slice(0, 50);
  }
  sendContent(c, { text: { text } }, extra);
}

function onSendAck(ack, send) {
  const c = convFor(ack.conversationId);
  const p = send ? c.pending.get(send.clientMsgId) : null;
  if (!send) return;
  c.pending.delete(send.clientMsgId);
  const entry = {
    conversationId: ack.conversationId,
    seq: ack.seq,
    sender: S.me,
    senderDevice: S.client.deviceId,
    clientMsgId: ack.clientMsgId,
    timeMs: ack.serverTimeMs,
    body: "message",
    message: {
      content: send.content,
      mentions: send.mentions || [],
      mentionAll: !!send.mentionAll,
      replyToSeq: 0,
      recalled: false,
    },
    localMedia: p?.localMedia,
  };
  if (S.client.ingest(entry, true)) S.client.syncAll().catch(() => {});
  scheduleRender(c.id);
  saveSoon();
}

function onSendFailed(send, err) {
  for (const c of S.convs.values()) {
    const p = c.pending.get(send.clientMsgId);
    if (p) {
      p.status = "failed";
      p.error = err.reason || err.code;
      scheduleRender(c.id);
    }
  }
}

async function uploadAndSend(c, file) {
  const image = /^image\/(png|jpeg|gif|webp)$/.test(file.type);
  const kind = image ? "image" : "file";
  setStatusLine(`Uploading ${file.name}…`);
  try {
    const m = await uploadMedia(file, kind);
    const media = {
      mediaId: m.media_id,
      mime: m.mime,
      sizeBytes: m.size_bytes,
      width: m.width || 0,
      height: m.height || 0,
      sha256: m.sha256 || "",
    };
    if (m.thumbnail) {
      media.thumbnail = {
        mediaId: m.thumbnail.media_id,
        mime: m.thumbnail.mime,
        width: m.thumbnail.width,
        height: m.thumbnail.height,
      };
    }
    const content = image ? { image: { media } } : { file: { media, name: file.name } };
    sendContent(c, content);
    setStatusLine("");
  } catch (e) {
    setStatusLine(`Upload failed: ${e.message}`);
  }
}

/** Uploads `file` as `kind` (POST /api/v1/media); the server's answer. */
async function uploadMedia(file, kind) {
  const res = await fetch(`/api/v1/media?kind=${kind}`, {
    method: "POST",
    headers: { authorization: `Bearer ${S.token}` },
    body: file,
  });
  const m = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(m.detail || `HTTP ${res.status}`);
  return m;
}

/** A media object as an object URL, fetched with the token (cached). */
function mediaUrl(mediaId, c, seq) {
  if (S.media.has(mediaId)) return S.media.get(mediaId);
  if (S.media.size >= MEDIA_CACHE_MAX) {
    const [k, v] = S.media.entries().next().value;
    S.media.delete(k);
    v.then((u) => URL.revokeObjectURL(u)).catch(() => {});
  }
  const q = seq ? `?conversation_id=${encodeURIComponent(c.id)}&seq=${seq}` : "";
  const p = fetch(`/api/v1/media/${encodeURIComponent(mediaId)}${q}`, {
    headers: { authorization: `Bearer ${S.token}` },
  }).then(async (res) => {
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return URL.createObjectURL(await res.blob());
  });
  p.catch(() => S.media.delete(mediaId));
  S.media.set(mediaId, p);
  return p;
}

// ---- rendering ----------------------------------------------------------------

let renderQueued = false;
function scheduleRender(convId) {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderConversations();
    if (S.open) renderMessages("auto");
    renderTyping();
  });
  void convId;
}

const timers = new Map();
function debounce(key, ms, f) {
  clearTimeout(timers.get(key));
  timers.set(key, setTimeout(f, ms));
}

function presenceLabel(user) {
  const p = S.presence.get(user);
  if (!p) return "";
  const names = {
    PRESENCE_STATE_ONLINE: "online",
    PRESENCE_STATE_BUSY: "busy",
    PRESENCE_STATE_AWAY: "away",
    PRESENCE_STATE_OFFLINE: "offline",
  };
  const s = names[p.state] || "offline";
  return p.text ? `${s} · ${p.text}` : s;
}

function summary(e) {
  if (!e || e.body !== "message") return "";
  const m = e.message;
  if (m.recalled) return "(recalled)";
  const who = e.sender === S.me ? "You: " : "";
  const ct = m.content || {};
  if (ct.text) return who + ct.text.text;
  if (ct.image) return `${who}📷 Image`;
  if (ct.file) return `${who}📎 ${ct.file.name}`;
  return `${who}(message)`;
}

function renderConversations() {
  const ul = $("conversations");
  const convs = [...S.convs.values()].sort((a, b) => b.lastMs - a.lastMs || a.id.localeCompare(b.id));
  ul.replaceChildren(
    ...convs.map((c) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = `conv${S.open === c.id ? " active" : ""}${c.left || c.closed ? " left" : ""}`;
      b.dataset.conv = c.id;
      if (c.room && c.subscribed) b.dataset.subscribed = "true";
      if (S.open === c.id) b.setAttribute("aria-current", "true");
      const name = document.createElement("span");
      name.className = "conv-name";
      name.textContent = c.room ? `» ${c.name}` : c.group ? `# ${c.name}` : displayName(c.peer);
      const pres = c.group || c.room ? "" : presenceLabel(c.peer);
      if (pres) {
        const dot = document.createElement("span");
        dot.className = `dot ${pres.split(" ")[0]}`;
        dot.title = pres;
        name.prepend(dot);
      }
      const last = document.createElement("span");
      last.className = "conv-last";
      last.textContent = summary(c.last);
      b.append(name, last);
      if (c.unread > 0) {
        const badge = document.createElement("span");
        badge.className = "badge unread";
        badge.textContent = c.mentioned ? `@${c.unread}` : String(c.unread);
        badge.setAttribute("aria-label", `${c.unread} unread`);
        b.append(badge);
      }
      b.addEventListener("click", () => openConv(c.id));
      li.append(b);
      return li;
    }),
  );
}

function renderHead() {
  const c = S.open && S.convs.get(S.open);
  if (!c) return;
  // Rooms take text only (media links name a conversation).
  $("composer").classList.toggle("room", c.room);
  if (c.room) {
    renderRoomHead(c);
    return;
  }
  $("chat-title").textContent = c.group ? `# ${c.name}` : displayName(c.peer);
  let status = c.group ? `${c.info ? c.info.memberCount : "?"} members` : presenceLabel(c.peer);
  if (c.group && c.info && c.info.mutedAll) status += " · only admins can write";
  if (c.left) status = "You are not a member of this group";
  $("chat-status").textContent = status;
  if (c.group) {
    $("chat-avatar").hidden = true;
    $("chat-bio").hidden = true;
  } else {
    profileOf(c.peer).then((prof) => {
      if (S.open !== c.id) return;
      showAvatar($("chat-avatar"), c.peer, prof);
      $("chat-bio").textContent = prof ? prof.bio : "";
      $("chat-bio").hidden = !(prof && prof.bio);
    });
  }
  $("members-toggle").hidden = !c.group;
  $("composer").hidden = c.left;
}

function renderRoomHead(c) {
  $("chat-title").textContent = `» ${c.name}`;
  const broadcast = c.info && c.info.kind === "ROOM_KIND_BROADCAST";
  let status = broadcast ? "Broadcast channel" : "Room";
  if (c.closed) status = "This room was deleted";
  else if (!c.joined) status += " · not joined";
  else if (!c.subscribed) status += " · joining…";
  $("chat-status").textContent = status;
  $("chat-avatar").hidden = true;
  $("chat-bio").hidden = true;
  $("members-toggle").hidden = true;
  $("composer").hidden = c.closed;
}

function renderTyping() {
  const now = Date.now();
  const m = S.open && S.typing.get(S.open);
  const who = m ? [...m].filter(([, exp]) => exp > now).map(([u]) => u) : [];
  $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}

function renderMessages(scroll) {
  const c = S.open && S.convs.get(S.open);
  const box = $("messages");
  if (!c) {
    box.replaceChildren();
    return;
  }
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const prevHeight = box.scrollHeight;
  const items = [];
  const seqs = [...c.entries.keys()].sort((a, b) => a - b);
  for (const seq of seqs) {
    const e = c.entries.get(seq);
    if (e.body === "message") items.push(messageEl(c, e));
    else if (e.body === "groupEvent") items.push(systemEl(e));
  }
  for (const [cmid, p] of c.pending) items.push(pendingEl(c, cmid, p));
  box.replaceChildren(...items);
  $("load-older").hidden = !(c.historyLoaded && c.more);
  if (scroll === "bottom" || (scroll === "auto" && atBottom)) box.scrollTop = box.scrollHeight;
  else if (scroll === "keep") box.scrollTop = box.scrollHeight - prevHeight + box.scrollTop;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function textWithMentions(text) {
  const span = document.createElement("span");
  span.className = "text";
  const parts = text.split(/(@(?:[a-z0-9-]{1,32}~)?[A-Za-z0-9._@-]{1,64})/g);
  for (const part of parts) {
    if (part.startsWith("@")) {
      const m = document.createElement("mark");
      m.className = part.slice(1) === S.me || part === "@all" ? "mention me" : "mention";
      m.textContent = part;
      span.append(m);
    } else if (part) span.append(document.createTextNode(part));
  }
  return span;
}

function contentEl(c, e, content, seq) {
  const ct = content || {};
  if (ct.text) return textWithMentions(ct.text.text);
  if (ct.image) {
    const media = ct.image.media;
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = `Image from ${e.sender}`;
    const t = media.thumbnail && media.thumbnail.mediaId ? media.thumbnail : media;
    img.width = Math.min(t.width || 240, 240);
    mediaUrl(t.mediaId, c, seq).then((u) => (img.src = u)).catch(() => (img.alt = "Image unavailable"));
    const a = document.createElement("a");
    a.href = "#";
    a.className = "image-link";
    a.append(img);
    a.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const u = await mediaUrl(media.mediaId, c, seq);
      window.open(u, "_blank", "noopener");
    });
    return a;
  }
  if (ct.file) {
    const a = document.createElement("a");
    a.href = "#";
    a.className = "file";
    a.textContent = `📎 ${ct.file.name || "file"} (${Math.ceil((ct.file.media.sizeBytes || 0) / 1024)} KiB)`;
    a.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const u = await mediaUrl(ct.file.media.mediaId, c, seq);
      const d = document.createElement("a");
      d.href = u;
      d.download = ct.file.name || "file";
      d.click();
    });
    return a;
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = "(a message this page cannot show)";
  return span;
}

function messageEl(c, e) {
  const m = e.message;
  const mine = e.sender === S.me;
  const div = document.createElement("div");
  div.className = `msg${mine ? " mine" : ""}${m.recalled ? " recalled" : ""}`;
  div.dataset.conv = c.id;
  div.dataset.seq = String(e.seq);
  div.dataset.sender = e.sender;
  if (e.clientMsgId) div.dataset.cmid = e.clientMsgId;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = displayName(e.sender);
  div.append(who);
  if (m.recalled) {
    const t = document.createElement("span");
    t.className = "text";
    t.textContent = mine ? "You recalled a message" : `${e.sender} recalled a message`;
    div.append(t);
  } else {
    div.append(contentEl(c, e, m.content, e.seq));
    if (m.streaming || m.editCount > 0) {
      const ed = document.createElement("span");
      ed.className = "hint edited";
      ed.textContent = m.streaming ? "writing…" : "(edited)";
      div.append(ed);
    }
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = new Date(e.timeMs || 0).toISOString();
  time.textContent = fmtTime(e.timeMs);
  meta.append(time);
  if (mine && !m.recalled && !c.room) {
    const r = document.createElement("span");
    r.className = "receipt";
    if (c.group) {
      const rb = c.readBy.get(e.seq);
      r.textContent = rb ? `Read by ${rb.readCount}/${rb.memberCount}` : "Sent";
    } else {
      r.textContent = e.readByPeer ? "Read" : "Sent";
    }
    meta.append(r);
    const recall = document.createElement("button");
    recall.type = "button";
    recall.className = "recall";
    recall.textContent = "Recall";
    recall.setAttribute("aria-label", `Recall message ${e.seq}`);
    recall.addEventListener("click", () => recallMsg(c, e.seq));
    meta.append(recall);
  }
  div.append(meta);
  return div;
}

function pendingEl(c, cmid, p) {
  const div = document.createElement("div");
  div.className = `msg mine pending ${p.status}`;
  div.dataset.conv = c.id;
  div.dataset.cmid = cmid;
  div.dataset.sender = S.me;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = S.me;
  div.append(who, contentEl(c, { sender: S.me }, p.send.content, 0));
  const meta = document.createElement("span");
  meta.className = "meta";
  const r = document.createElement("span");
  r.className = "receipt";
  r.textContent = p.status === "failed" ? `Not sent: ${p.error}` : "Sending…";
  meta.append(r);
  div.append(meta);
  return div;
}

function systemEl(e) {
  const g = e.groupEvent;
  const div = document.createElement("div");
  div.className = "system";
  div.dataset.seq = String(e.seq);
  const list = (x) => (x && x.userIds ? x.userIds.join(", ") : "");
  let text = "";
  if (g.created) text = `${e.sender} created the group “${g.created.name}”`;
  else if (g.joined) text = `${list(g.joined)} joined`;
  else if (g.left) text = `${list(g.left)} left`;
  else if (g.kicked) text = `${e.sender} removed ${list(g.kicked)}`;
  else if (g.renamed) text = `${e.sender} renamed the group to “${g.renamed}”`;
  else if (g.announcement) text = `Announcement: ${g.announcement}`;
  else if (g.dissolved) text = `${e.sender} dissolved the group`;
  else if (g.roleChanged) text = `${g.roleChanged.userId} is now ${g.roleChanged.role.replace("GROUP_ROLE_", "").toLowerCase()}`;
  else if (g.muteChanged && g.muteChanged.userId) {
    const mc = g.muteChanged;
    text = mc.mutedUntilMs > 0 ? `${e.sender} muted ${mc.userId} until ${fmtTime(mc.mutedUntilMs)}` : `${e.sender} unmuted ${mc.userId}`;
  } else if (g.muteChanged) text = g.muteChanged.mutedAll ? `${e.sender} muted everyone but the admins` : `${e.sender} unmuted everyone`;
  else text = "The group changed";
  div.textContent = text;
  return div;
}

function renderMembers() {
  const c = S.open && S.convs.get(S.open);
  const ul = $("member-list");
  if (!c || !c.group) return;
  const owner = S.myRole === OWNER;
  const admin = owner || S.myRole === ADMIN;
  const now = Date.now();
  const button = (text, label, f) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", f);
    return b;
  };
  const gid = c.peer;
  ul.replaceChildren(
    ...S.members.map((m) => {
      const u = m.userId;
      const li = document.createElement("li");
      li.dataset.user = u;
      li.dataset.role = m.role;
      const name = document.createElement("span");
      name.className = "member-name";
      const role = m.role.replace("GROUP_ROLE_", "").toLowerCase();
      name.textContent = `${displayName(u)} (${role})`;
      li.append(name);
      const muted = m.mutedUntilMs > now;
      if (muted) {
        li.dataset.muted = "true";
        const t = document.createElement("span");
        t.className = "muted-tag";
        t.textContent = `muted until ${fmtTime(m.mutedUntilMs)}`;
        li.append(t);
      }
      if (u === S.me || m.role === OWNER) return li;
      if (owner) {
        li.append(
          m.role === ADMIN
            ? button("Make member", `Make ${u} a member`, () =>
                groupAction("groupSetRole", { groupId: gid, userId: u, role: MEMBER }),
              )
            : button("Make admin", `Make ${u} an admin`, () =>
                groupAction("groupSetRole", { groupId: gid, userId: u, role: ADMIN }),
              ),
        );
      }
      // The owner acts on admins and members, an admin on members only.
      if (owner || (admin && m.role === MEMBER)) {
        li.append(
          muted
            ? button("Unmute", `Unmute ${u}`, () => groupAction("groupMute", { groupId: gid, userId: u, durationMs: 0 }))
            : button("Mute 1 h", `Mute ${u}`, () =>
                groupAction("groupMute", { groupId: gid, userId: u, durationMs: MUTE_MEMBER_MS }),
              ),
          button("Remove", `Remove ${u} from the group`, () => groupAction("groupKick", { groupId: gid, userId: u })),
        );
      }
      return li;
    }),
  );
  const all = $("mute-all");
  const mutedAll = !!(c.info && c.info.mutedAll);
  all.hidden = !admin || c.left;
  all.textContent = mutedAll ? "Unmute everyone" : "Mute everyone";
  all.dataset.muted = String(mutedAll);
  $("group-mode").textContent = mutedAll ? "Everyone is muted: only the owner and admins can write." : "";
  $("invite-form").hidden = c.left;
  $("leave-group").hidden = c.left;
}

function renderFriends() {
  const inc = S.requests.incoming || [];
  const badge = $("friend-requests-count");
  badge.hidden = inc.length === 0;
  badge.textContent = String(inc.length);
  $("friend-requests").replaceChildren(
    ...inc.map((r) => {
      const li = document.createElement("li");
      li.textContent = `${r.fromUserId}${r.message ? `: ${r.message}` : ""} `;
      const ok = document.createElement("button");
      ok.type = "button";
      ok.textContent = "Accept";
      ok.setAttribute("aria-label", `Accept ${r.fromUserId}`);
      ok.addEventListener("click", () => friendAction("friendAccept", r.fromUserId));
      const no = document.createElement("button");
      no.type = "button";
      no.textContent = "Reject";
      no.setAttribute("aria-label", `Reject ${r.fromUserId}`);
      no.addEventListener("click", () => friendAction("friendReject", r.fromUserId));
      li.append(ok, no);
      return li;
    }),
    ...(S.requests.outgoing || []).map((r) => {
      const li = document.createElement("li");
      li.className = "hint";
      li.textContent = `Waiting for ${r.toUserId}`;
      return li;
    }),
  );
  $("friend-list").replaceChildren(
    ...S.friends.map((u) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.textContent = `${u} ${presenceLabel(u) ? `(${presenceLabel(u)})` : ""}`;
      b.addEventListener("click", () => openConv(dmId(S.me, u)));
      li.append(b);
      return li;
    }),
  );
}

function setStatusLine(text) {
  $("typing").textContent = text;
}

// ---- actions ------------------------------------------------------------------

function openConv(id) {
  const c = convFor(id);
  S.open = id;
  S.members = [];
  $("members").hidden = true;
  $("members-toggle").setAttribute("aria-expanded", "false");
  document.body.classList.add("chat-open");
  renderHead();
  renderConversations();
  renderMessages("bottom");
  renderTyping();
  if (!c.historyLoaded) loadHistory(c);
  else {
    markRead(c);
    queryReadBy(c);
  }
  if (c.room) {
    // Nothing else to read: no members, presence or profile.
  } else if (c.group) loadGroupInfo(c);
  else {
    queryPresence();
    if (S.client.state === "live") profileOf(c.peer, true).then(() => S.open === c.id && renderHead());
  }
  $("message-input").focus();
  saveState();
}

async function recallMsg(c, seq) {
  try {
    await S.client.request("recall", { conversationId: c.id, seq });
  } catch (e) {
    setStatusLine(`Recall failed: ${e.message}`);
  }
}

async function groupAction(field, body) {
  try {
    await S.client.request(field, body);
    const c = S.convs.get(S.open);
    if (c) {
      loadMembers(c);
      loadGroupInfo(c);
    }
  } catch (e) {
    setStatusLine(`${field}: ${e.message}`);
  }
}

async function friendAction(field, user) {
  try {
    await S.client.request(field, { userId: user });
  } catch (e) {
    setStatusLine(`${field}: ${e.message}`);
  }
  refreshFriends();
}

let wired = false;
function wireApp() {
  if (wired) return;
  wired = true;
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = S.convs.get(S.open);
    const input = $("message-input");
    const text = input.value.trim();
    if (!c || !text) return;
    const limit = S.client.welcome?.limits?.textBytesMax || 4096;
    if (new TextEncoder().encode(text).length > limit) {
      setStatusLine(`Too long: at most ${limit} bytes`);
      return;
    }
    sendText(c, text);
    input.value = "";
    S.lastTypingSent = 0;
    if (!c.room) S.client.tell("typing", { conversationId: c.id, typing: false });
  });
  $("message-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("message-input").addEventListener("input", () => {
    const c = S.convs.get(S.open);
    if (!c || c.room || S.client.state !== "live") return;
    const now = Date.now();
    if (now - S.lastTypingSent > TYPING_RENEW_MS) {
      S.lastTypingSent = now;
      S.client.tell("typing", { conversationId: c.id, typing: true });
    }
  });
  for (const b of $("emoji").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      const input = $("message-input");
      input.setRangeText(b.textContent, input.selectionStart, input.selectionEnd, "end");
      input.focus();
    });
  }
  $("attach").addEventListener("change", () => {
    const c = S.convs.get(S.open);
    const f = $("attach").files[0];
    if (c && f) uploadAndSend(c, f);
    $("attach").value = "";
  });
  // Scrolling to the top pages back through history (the button does too).
  $("messages").addEventListener("scroll", () => {
    const c = S.convs.get(S.open);
    if (c && c.historyLoaded && c.more && $("messages").scrollTop < 30) {
      debounce("older", 250, () => loadHistory(c));
    }
  });
  $("load-older").addEventListener("click", () => {
    const c = S.convs.get(S.open);
    if (c) loadHistory(c);
  });
  $("open-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const u = $("open-user").value.trim();
    if (!ID_RE.test(u) || u === S.me) return;
    $("open-user").value = "";
    openConv(dmId(S.me, u));
  });
  $("room-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = $("room-id").value.trim();
    if (!ID_RE.test(id)) return;
    try {
      const c = await joinRoom(id);
      $("room-id").value = "";
      c.historyLoaded = false;
      openConv(c.id);
    } catch (e) {
      setStatusLine(`Could not join the room: ${e.message}`);
      renderConversations();
    }
  });
  $("group-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("group-name").value.trim();
    const members = $("group-members")
      .value.split(/[\s,]+/)
      .filter((u) => ID_RE.test(u) && u !== S.me);
    try {
      const res = await S.client.request("groupCreate", { name, members });
      const c = convFor(res.info.conversationId, res.info.groupId);
      c.name = res.info.name;
      c.info = res.info;
      $("group-name").value = "";
      $("group-members").value = "";
      $("new-group").open = false;
      openConv(c.id);
      S.client.syncAll().catch(() => {});
    } catch (e) {
      setStatusLine(`Could not create the group: ${e.message}`);
    }
  });
  $("friend-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const u = $("friend-user").value.trim();
    try {
      await S.client.request("friendRequest", { userId: u, message: "" });
      $("friend-user").value = "";
    } catch (e) {
      setStatusLine(`Friend request: ${e.message}`);
    }
    refreshFriends();
  });
  $("members-toggle").addEventListener("click", () => {
    const c = S.convs.get(S.open);
    const show = $("members").hidden;
    $("members").hidden = !show;
    $("members-toggle").setAttribute("aria-expanded", String(show));
    if (show && c) loadMembers(c);
  });
  $("invite-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = S.convs.get(S.open);
    const u = $("invite-user").value.trim();
    $("invite-user").value = "";
    if (c) groupAction("groupInvite", { groupId: c.peer, userIds: [u] });
  });
  $("leave-group").addEventListener("click", () => {
    const c = S.convs.get(S.open);
    if (c) groupAction("groupLeave", { groupId: c.peer });
  });
  $("presence-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await S.client.request("setPresence", {
        state: $("presence-state").value,
        text: $("presence-text").value,
      });
      setStatusLine("Presence set");
    } catch (e) {
      setStatusLine(`Presence: ${e.message}`);
    }
  });
  $("profile-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveProfile();
  });
  $("profile-avatar-clear").addEventListener("click", clearAvatar);
  // No push tells an asker their request was refused: the lists are read
  // again whenever the panel opens.
  $("friends").addEventListener("toggle", () => {
    if ($("friends").open && S.client.state === "live") refreshFriends();
  });
  $("mute-all").addEventListener("click", () => {
    const c = S.convs.get(S.open);
    if (!c) return;
    const muted = $("mute-all").dataset.muted === "true";
    groupAction("groupMute", { groupId: c.peer, userId: "", durationMs: muted ? 0 : 1 });
  });
  window.addEventListener("pagehide", saveState);
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(stateKey());
    sessionStorage.removeItem("tern-session");
    S.client?.stop();
    location.reload();
  });
  $("back").addEventListener("click", () => {
    document.body.classList.remove("chat-open");
    S.open = null;
    renderConversations();
    saveState();
  });
  document.addEventListener("visibilitychange", () => {
    const c = S.open && S.convs.get(S.open);
    if (c) markRead(c);
  });
  setInterval(renderTyping, 1000);
}

boot();
