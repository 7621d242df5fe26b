// The web chat's profile, history, friends, group-role and reload features
// in a real browser (run by gateway/tests/web.rs against an in-process
// gateway in development mode; browser.mjs covers the rest).
//
// alice, bob and carol sign in in three Chromium contexts:
// 1. alice sets a nickname, a bio and an avatar (uploaded through the media
//    API); bob's chat with her shows all three, the avatar decoded; her
//    reloaded page reads them back from the server;
// 2. 120 messages from carol (sent over the API before bob signs in): his
//    page shows the last 50 and pages back by scrolling to the top until it
//    holds all 120, the same as the server's history, none twice;
// 3. carol asks bob to be friends and bob rejects: the request is gone on
//    both pages and neither lists the other;
// 4. alice's group with bob and carol: she makes bob an admin (he sees it,
//    and may mute carol but not change roles); she mutes carol (carol's
//    message is refused, then goes through once unmuted); she mutes
//    everyone (carol is refused, bob as admin still writes); she removes
//    carol, who sees it, and invites her back (a removal is no ban);
//    bob leaves, and alice's member list drops him;
// 5. bob's page is reloaded while messages wait for him: he is still signed
//    in, the open conversation is open again, what came meanwhile shows
//    once, and the other conversation's unread count is the server's.
//
// Env: WEB_URL, WEB_API_KEY (an admin key: messages over the API),
// CHROMIUM_BIN, WEB_SCREENSHOTS (a directory: when set, web-profile.png and
// web-group-admin.png of docs/images/ are written there).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  BASE,
  KEY,
  STEP_MS,
  assert,
  assertScreenIsServer,
  conv,
  drawPng,
  log,
  msg,
  runBrowser,
  screenHistory,
  send,
  serverHistory,
  signIn,
} from "./lib.mjs";

const SHOTS = process.env.WEB_SCREENSHOTS;
const TOTAL_MS = 240_000;
const HISTORY_MESSAGES = 120;

if (!KEY) {
  console.error("WEB_URL and WEB_API_KEY are required");
  process.exit(2);
}
await runBrowser(TOTAL_MS, run);

/** Sends a text from `from` to user `to` over the server API. */
async function apiSend(id, from, to, text) {
  const res = await fetch(`${BASE}/api/v1/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ request_id: id, from, to_user: to, content: { type: "text", text } }),
  });
  assert(res.ok, `POST /api/v1/messages: HTTP ${res.status} ${await res.text()}`);
}

/** The message of `convId` whose text is exactly `text`. */
function exact(page, convId, text) {
  return page.locator(`#messages .msg[data-conv="${convId}"]`).filter({ has: page.getByText(text, { exact: true }) });
}

/** Waits until the <img> of `selector` shows a decoded image. */
async function decodedImage(page, selector) {
  await page.waitForFunction((sel) => {
    const i = document.querySelector(sel);
    return i && !i.hidden && i.complete && i.naturalWidth > 0;
  }, selector);
}

async function run(h) {
  const A = await h.newPage("alice");
  const B = await h.newPage("bob");
  const C = await h.newPage("carol");
  const [alice, bob, carol] = [A.page, B.page, C.page];
  const ab = "d:alice:bob";
  const bc = "d:bob:carol";

  // Before bob's page exists: it learns of them from the conversation list
  // and fetches history pages, as a new device does.
  log(`carol sends bob ${HISTORY_MESSAGES} messages over the API`);
  for (let i = 1; i <= HISTORY_MESSAGES; i++) await apiSend(`hist-${i}`, "carol", "bob", `history ${i}`);

  log("alice, bob and carol sign in");
  await signIn(alice, "alice");
  await signIn(bob, "bob");
  await signIn(carol, "carol");

  // ---- 1. profiles -------------------------------------------------------------
  log("alice sets her nickname, bio and avatar");
  await alice.locator("#profile summary").click();
  await alice.getByLabel("Nickname").fill("Alice Liddell");
  await alice.getByLabel("Bio").fill("Down the rabbit hole");
  await alice.getByLabel("Avatar image").setInputFiles({
    name: "me.png",
    mimeType: "image/png",
    buffer: await drawPng(alice, "#8b1f5f", "#f0e500"),
  });
  await alice.getByRole("button", { name: "Save profile" }).click();
  await alice.locator("#profile-status", { hasText: "Profile saved" }).waitFor();
  await alice.locator("#me-name", { hasText: "Alice Liddell (alice)" }).waitFor();
  await decodedImage(alice, "#me-avatar");

  log("bob opens a chat with alice: her nickname, bio and avatar show");
  await bob.getByLabel("Chat with").fill("alice");
  await bob.getByRole("button", { name: "Open" }).click();
  await bob.locator("#chat-title", { hasText: "Alice Liddell" }).waitFor();
  await bob.locator("#chat-bio", { hasText: "Down the rabbit hole" }).waitFor();
  await decodedImage(bob, "#chat-avatar");
  await send(bob, "nice avatar");
  await bob.locator(`#messages .msg[data-seq][data-conv="${ab}"]`, { hasText: "nice avatar" }).waitFor();
  if (SHOTS) {
    mkdirSync(SHOTS, { recursive: true });
    await bob.screenshot({ path: join(SHOTS, "web-profile.png") });
  }

  log("alice reloads: her profile is read back from the server");
  await alice.reload();
  await alice.locator('body[data-connection="live"]').waitFor();
  await alice.locator("#me-name", { hasText: "Alice Liddell (alice)" }).waitFor();
  await alice.locator("#profile summary").click();
  assert((await alice.getByLabel("Nickname").inputValue()) === "Alice Liddell", "nickname read back");
  assert((await alice.getByLabel("Bio").inputValue()) === "Down the rabbit hole", "bio read back");
  await alice.locator("#profile summary").click();

  // ---- 2. scroll-back ----------------------------------------------------------
  log("bob opens his chat with carol: the latest 50 messages");
  await conv(bob, bc).click();
  await exact(bob, bc, `history ${HISTORY_MESSAGES}`).waitFor();
  const firstPage = (await screenHistory(bob, bc)).length;
  assert(firstPage === 50, `one history page of 50 first, got ${firstPage}`);

  log("bob scrolls to the top: older pages load until the first message");
  for (let page = 0; page < 5; page++) {
    const held = (await screenHistory(bob, bc)).length;
    if (held >= HISTORY_MESSAGES) break;
    await bob.locator("#messages").evaluate((el) => (el.scrollTop = 0));
    await bob.waitForFunction(
      ([c, n]) => document.querySelectorAll(`#messages .msg[data-conv="${c}"]`).length > n,
      [bc, held],
      { timeout: STEP_MS },
    );
  }
  const all = await assertScreenIsServer(bob, bc);
  assert(all.length === HISTORY_MESSAGES && all[0][1] === "history 1", `all ${HISTORY_MESSAGES} held`);
  await bob.locator("#load-older").waitFor({ state: "hidden" });

  // ---- 3. friend request rejected ------------------------------------------------
  log("carol asks bob to be friends; bob rejects");
  await carol.locator("#friends summary").click();
  await carol.getByLabel("Add friend").fill("bob");
  await carol.getByRole("button", { name: "Ask" }).click();
  await carol.locator("#friend-requests", { hasText: "Waiting for bob" }).waitFor();
  await bob.locator("#friends summary").click();
  await bob.getByRole("button", { name: "Reject carol" }).click();
  await bob.getByRole("button", { name: "Reject carol" }).waitFor({ state: "detached" });
  assert(!(await bob.locator("#friend-list").innerText()).includes("carol"), "bob lists no carol");
  // The asker gets no push for a refusal: her list is read again when opened.
  await carol.locator("#friends summary").click();
  await carol.locator("#friends summary").click();
  await carol.locator("#friend-requests", { hasText: "Waiting for bob" }).waitFor({ state: "detached" });
  assert(!(await carol.locator("#friend-list").innerText()).includes("bob"), "carol lists no bob");
  await bob.locator("#friends summary").click();
  await carol.locator("#friends summary").click();

  // ---- 4. group roles, mutes, removal, leaving -----------------------------------
  log("alice creates a group with bob and carol and makes bob an admin");
  await alice.locator("#new-group summary").click();
  await alice.getByLabel("Group name").fill("crew");
  await alice.getByLabel("Members (comma separated)").fill("bob, carol");
  await alice.getByRole("button", { name: "Create group" }).click();
  await alice.locator("#chat-title", { hasText: "# crew" }).waitFor();
  const g = await alice.locator("button.conv.active").getAttribute("data-conv");
  await alice.getByRole("button", { name: "Members" }).click();
  await alice.getByRole("button", { name: "Make bob an admin" }).click();
  await alice.locator('#member-list li[data-user="bob"][data-role="GROUP_ROLE_ADMIN"]').waitFor();
  await conv(bob, g).click();
  await bob.locator("#messages .system", { hasText: "bob is now admin" }).waitFor();
  await bob.getByRole("button", { name: "Members" }).click();
  await bob.getByRole("button", { name: "Mute carol" }).waitFor();
  assert((await bob.getByRole("button", { name: /Make carol/ }).count()) === 0, "only the owner changes roles");
  assert((await bob.getByRole("button", { name: "Mute alice" }).count()) === 0, "an admin cannot mute the owner");

  log("alice mutes carol: carol's message is refused; unmuted, it goes through");
  await alice.getByRole("button", { name: "Mute carol" }).click();
  await alice.locator('#member-list li[data-user="carol"][data-muted="true"]').waitFor();
  await conv(carol, g).click();
  await send(carol, "can I speak?");
  await carol
    .locator(`#messages .msg.pending.failed[data-conv="${g}"]`, { hasText: "can I speak?" })
    .locator(".receipt", { hasText: "Not sent" })
    .waitFor();
  await alice.getByRole("button", { name: "Unmute carol" }).click();
  await alice.getByRole("button", { name: "Mute carol" }).waitFor();
  await send(carol, "now I can");
  await msg(alice, g, "now I can").waitFor();

  log("alice mutes everyone: carol is refused, bob (an admin) still writes");
  await alice.getByRole("button", { name: "Mute everyone" }).click();
  await alice.locator("#chat-status", { hasText: "only admins can write" }).waitFor();
  await carol.locator("#chat-status", { hasText: "only admins can write" }).waitFor();
  await send(carol, "anyone there?");
  await carol.locator(`#messages .msg.pending.failed[data-conv="${g}"]`, { hasText: "anyone there?" }).waitFor();
  await send(bob, "admins still talk");
  await msg(alice, g, "admins still talk").waitFor();
  if (SHOTS) await alice.screenshot({ path: join(SHOTS, "web-group-admin.png") });
  await alice.getByRole("button", { name: "Unmute everyone" }).click();
  await carol.locator("#chat-status", { hasText: "only admins can write" }).waitFor({ state: "hidden" });
  await alice.getByRole("button", { name: "Mute everyone" }).waitFor();

  log("alice removes carol: carol's page says so; invited again, she is back");
  await alice.getByRole("button", { name: "Remove carol from the group" }).click();
  await carol.locator("#chat-status", { hasText: "You are not a member" }).waitFor();
  await carol.locator("#composer").waitFor({ state: "hidden" });
  await alice.getByLabel("Invite").fill("carol");
  await alice.locator("#invite-form").getByRole("button", { name: "Invite" }).click();
  await carol.locator("#composer").waitFor({ state: "visible" });
  await send(carol, "back again");
  await msg(alice, g, "back again").waitFor();

  log("bob leaves the group: his page says so; alice's list drops him");
  await bob.getByRole("button", { name: "Leave group" }).click();
  await bob.locator("#chat-status", { hasText: "You are not a member" }).waitFor();
  await alice.locator("#messages .system", { hasText: "bob left" }).waitFor();
  await alice.locator('#member-list li[data-user="bob"]').waitFor({ state: "detached" });

  // ---- 5. reload ---------------------------------------------------------------
  log("bob's page goes away with his chat with carol open; messages wait for him");
  await conv(bob, bc).click();
  await exact(bob, bc, `history ${HISTORY_MESSAGES}`).waitFor();
  const device = await bob.evaluate(() => localStorage.getItem("tern-device-bob"));
  await B.context.setOffline(true);
  await bob.locator("#banner", { hasText: "Disconnected" }).waitFor();
  await apiSend("late-1", "carol", "bob", "while reloading 1");
  await apiSend("late-2", "carol", "bob", "while reloading 2");
  await apiSend("late-3", "alice", "bob", "unread after reload");
  await B.context.setOffline(false);

  log("bob's page reloads: signed in, the same chat open, what came meanwhile once");
  await bob.reload();
  await bob.locator('body[data-connection="live"]').waitFor();
  assert(await bob.locator("#signin").isHidden(), "still signed in");
  await bob.locator("#chat-title", { hasText: "carol" }).waitFor();
  await msg(bob, bc, "while reloading 2").waitFor();
  await apiSend("late-4", "carol", "bob", "after the reload");
  await msg(bob, bc, "after the reload").waitFor();
  assert((await bob.evaluate(() => localStorage.getItem("tern-device-bob"))) === device, "the same device");
  const screen = await screenHistory(bob, bc);
  const server = await serverHistory(bc);
  const seqs = screen.map(([s]) => s);
  assert(new Set(seqs).size === seqs.length, `no message twice: ${JSON.stringify(screen)}`);
  assert(
    JSON.stringify(screen) === JSON.stringify(server.slice(-screen.length)),
    `the screen is the server's latest messages: ${JSON.stringify(screen.slice(-5))} vs ${JSON.stringify(server.slice(-5))}`,
  );
  assert(screen.length >= 10, `a page of history on screen, got ${screen.length}`);
  await conv(bob, ab).locator(".badge.unread", { hasText: /^1$/ }).waitFor();
  await bob.waitForTimeout(500); // a doubled count would show by now
  assert((await conv(bob, ab).locator(".badge.unread").innerText()) === "1", "unread counted once");
}
