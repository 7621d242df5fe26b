// Rooms on the web chat in a real browser (run by gateway/tests/web.rs
// against an in-process gateway in development mode; docs/web.md, "Rooms").
//
// 1. A room and a broadcast channel made over the server API, two posts in
//    the room before anyone joins: alice joins the room by id and sees the
//    two posts (its recent window);
// 2. bob joins too: a post from either page reaches the other live, and
//    each screen then shows exactly the server's posts (read over the API),
//    none twice;
// 3. bob joins the broadcast channel: his post is refused on screen
//    (BROADCAST_ONLY), the system's post over the API reaches him live;
// 4. bob's page is reloaded: it joins the room again by itself (a join
//    lasts as long as a connection), shows what it held, and a post made
//    after the reload reaches it live;
// 5. the room is deleted over the API: alice's page says so, and its entry
//    in the list is marked.
//
// Env: WEB_URL, WEB_API_KEY (an admin key), CHROMIUM_BIN.
import { BASE, KEY, assert, log, msg, runBrowser, screenHistory, send, signIn } from "./lib.mjs";

const TOTAL_MS = 180_000;

if (!KEY) {
  console.error("WEB_URL and WEB_API_KEY are required");
  process.exit(2);
}
await runBrowser(TOTAL_MS, run);

/** A server API call with the admin key; the JSON answer. */
async function api(method, path, body) {
  const res = await fetch(`${BASE}${path}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert(res.ok, `${method} ${path}: HTTP ${res.status} ${text}`);
  return JSON.parse(text);
}

/** The room's posts as the server keeps them: [seq, text] each. */
async function serverPosts(room) {
  const r = await api("GET", `/api/v1/rooms/${room}/posts`);
  return r.posts.map((p) => [p.seq, p.content.text]);
}

async function assertScreenIsServer(page, room) {
  const server = await serverPosts(room);
  const screen = await screenHistory(page, `r:${room}`);
  assert(
    JSON.stringify(screen) === JSON.stringify(server),
    `screen ${JSON.stringify(screen)}\n  != server ${JSON.stringify(server)}`,
  );
}

/** A stored message (with its seq, not a pending send) of `convId`. */
function stored(page, convId, text) {
  return page.locator(`#messages .msg[data-seq][data-conv="${convId}"]`, { hasText: text });
}

async function joinRoom(page, room) {
  await page.getByLabel("Join room").fill(room);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await page.locator(`button.conv[data-conv="r:${room}"][aria-current="true"]`).waitFor();
}

async function run(h) {
  const lobby = "r:lobby";
  log("a room and a broadcast channel over the API; two posts in the room");
  await api("POST", "/api/v1/rooms", { room_id: "lobby", name: "The Lobby" });
  await api("POST", "/api/v1/rooms", { room_id: "news", name: "News", kind: "broadcast" });
  await api("POST", "/api/v1/rooms/lobby/posts", { content: { type: "text", text: "welcome 1" } });
  await api("POST", "/api/v1/rooms/lobby/posts", { content: { type: "text", text: "welcome 2" } });

  const A = await h.newPage("alice");
  const B = await h.newPage("bob");
  const [alice, bob] = [A.page, B.page];
  await signIn(alice, "alice");
  await signIn(bob, "bob");

  log("1. alice joins the room by id and sees its recent posts");
  await joinRoom(alice, "lobby");
  await alice.locator("#chat-title", { hasText: "The Lobby" }).waitFor();
  await msg(alice, lobby, "welcome 2").waitFor();
  await assertScreenIsServer(alice, "lobby");

  log("2. bob joins; posts go both ways live");
  await joinRoom(bob, "lobby");
  await send(bob, "hello from bob");
  await stored(alice, lobby, "hello from bob").waitFor();
  await send(alice, "hi bob");
  await stored(bob, lobby, "hi bob").waitFor();
  await stored(alice, lobby, "hi bob").waitFor();
  await assertScreenIsServer(alice, "lobby");
  await assertScreenIsServer(bob, "lobby");

  log("3. the broadcast channel: bob's post is refused, the system's reaches him");
  await joinRoom(bob, "news");
  await bob.locator("#chat-status", { hasText: "Broadcast channel" }).waitFor();
  await send(bob, "may I?");
  await bob.locator(`#messages .msg.pending.failed[data-conv="r:news"]`, { hasText: "BROADCAST_ONLY" }).waitFor();
  await api("POST", "/api/v1/rooms/news/posts", { content: { type: "text", text: "breaking news" } });
  await msg(bob, "r:news", "breaking news").waitFor();
  assert((await serverPosts("news")).length === 1, "the refused post stored nothing");

  log("4. bob reloads: his page joins the room again by itself");
  await bob.locator(`button.conv[data-conv="${lobby}"]`).click();
  await bob.reload();
  await bob.locator('body[data-connection="live"]').waitFor();
  await bob.locator(`button.conv[data-conv="${lobby}"][data-subscribed="true"]`).waitFor();
  await msg(bob, lobby, "hi bob").waitFor();
  await api("POST", "/api/v1/rooms/lobby/posts", { content: { type: "text", text: "after the reload" } });
  await msg(bob, lobby, "after the reload").waitFor();
  await assertScreenIsServer(bob, "lobby");

  log("5. the room is deleted over the API: alice's page says so");
  await api("DELETE", "/api/v1/rooms/lobby");
  await alice.locator("#chat-status", { hasText: "This room was deleted" }).waitFor();
  await alice.locator(`button.conv.left[data-conv="${lobby}"]`).waitFor();
  assert(await alice.locator("#composer").isHidden(), "no composer in a deleted room");
}
