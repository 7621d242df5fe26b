// The web chat and admin console in a real browser (run by
// gateway/tests/web.rs against an in-process gateway in development mode).
//
// Two Chromium contexts sign in as alice and bob and exchange 1:1 and group
// messages, an image, a recall and read receipts; bob's network is cut and
// restored, and his screen then matches the server's history (read over
// the API); the admin console bans bob and bob's page shows it.
//
// Env: WEB_URL (the gateway's HTTP edge), WEB_API_KEY (an admin key),
// CHROMIUM_BIN (default /usr/bin/chromium), WEB_SCREENSHOTS (a directory:
// when set, the chat and admin screenshots of docs/images/ are written
// there). Playwright is pointed at the system browser: it downloads none.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  KEY,
  BASE,
  assert,
  assertScreenIsServer,
  conv,
  drawPng,
  log,
  msg,
  runBrowser,
  send,
  signIn,
} from "./lib.mjs";

const SHOTS = process.env.WEB_SCREENSHOTS;
const TOTAL_MS = 240_000;

if (!KEY) {
  console.error("WEB_URL and WEB_API_KEY are required");
  process.exit(2);
}
await runBrowser(TOTAL_MS, run);

async function run(h) {
  const dm = "d:alice:bob";
  const A = await h.newPage("alice");
  const B = await h.newPage("bob");
  const alice = A.page;
  const bob = B.page;

  log("alice and bob sign in (development tokens)");
  await signIn(alice, "alice");
  await signIn(bob, "bob");

  log("alice opens a chat with bob and sends text with emoji");
  await alice.getByLabel("Chat with").fill("bob");
  await alice.getByRole("button", { name: "Open" }).click();
  await send(alice, "hi bob 👋");
  await alice.locator(`#messages .msg[data-seq][data-conv="${dm}"]`, { hasText: "hi bob" }).waitFor();

  log("bob's list shows the conversation, unread 1, with its last message");
  await conv(bob, dm).locator(".badge.unread", { hasText: "1" }).waitFor();
  assert((await conv(bob, dm).locator(".conv-last").innerText()).includes("hi bob"), "last message in the list");

  log("bob opens it; alice's message shows Read");
  await conv(bob, dm).click();
  await msg(bob, dm, "hi bob 👋").waitFor();
  await msg(alice, dm, "hi bob 👋").locator(".receipt", { hasText: "Read" }).waitFor();
  assert((await conv(bob, dm).locator(".badge.unread").count()) === 0, "unread cleared");

  log("bob types: alice sees it; bob replies");
  await bob.getByLabel("Message", { exact: true }).pressSequentially("hel");
  await alice.locator("#typing", { hasText: "bob is typing" }).waitFor();
  await send(bob, "hello alice");
  await msg(alice, dm, "hello alice").waitFor();

  log("alice sends an image; bob sees its thumbnail");
  const png = await drawPng(alice, "#1f5f8b", "#f0a500");
  await alice.locator("#attach").setInputFiles({
    name: "dot.png",
    mimeType: "image/png",
    buffer: png,
  });
  const thumb = bob.locator(`#messages .msg[data-conv="${dm}"] img.thumb`);
  await thumb.waitFor();
  await bob.waitForFunction(
    (id) => [...document.querySelectorAll(`#messages .msg[data-conv="${id}"] img.thumb`)].some((i) => i.complete && i.naturalWidth > 0),
    dm,
  );

  log("alice sends and recalls a message; bob sees it recalled");
  await send(alice, "oops, wrong chat");
  await msg(bob, dm, "oops, wrong chat").waitFor();
  const oops = alice.locator(`#messages .msg[data-seq][data-conv="${dm}"]`, { hasText: "oops, wrong chat" });
  await oops.getByRole("button", { name: /Recall/ }).click();
  await bob.locator(`#messages .msg.recalled[data-conv="${dm}"]`, { hasText: "alice recalled a message" }).waitFor();
  assert((await msg(bob, dm, "oops, wrong chat").count()) === 0, "the recalled text is gone from bob's screen");

  log("alice creates a group with bob and mentions him");
  await alice.locator("#new-group summary").click();
  await alice.getByLabel("Group name").fill("team");
  await alice.getByLabel("Members (comma separated)").fill("bob");
  await alice.getByRole("button", { name: "Create group" }).click();
  await alice.locator("#chat-title", { hasText: "# team" }).waitFor();
  const groupConv = await alice.locator("button.conv.active").getAttribute("data-conv");
  assert(groupConv && groupConv.startsWith("g:"), `group conversation id ${groupConv}`);
  await send(alice, "welcome to the team @bob");
  await conv(bob, groupConv).locator(".badge.unread").waitFor();
  await conv(bob, groupConv).click();
  await bob.locator(`#messages .msg[data-conv="${groupConv}"] mark.mention.me`, { hasText: "@bob" }).waitFor();
  await send(bob, "thanks, glad to be here");
  await msg(alice, groupConv, "thanks, glad to be here").waitFor();
  await msg(alice, groupConv, "welcome to the team").locator(".receipt", { hasText: "Read by 1/1" }).waitFor();

  log("alice sets her presence to busy; bob's list shows it after a friend request");
  await bob.locator("#friends summary").click();
  await bob.getByLabel("Add friend").fill("alice");
  await bob.getByRole("button", { name: "Ask" }).click();
  await alice.locator("#friends summary").click();
  await alice.getByRole("button", { name: "Accept bob" }).click();
  await bob.locator("#friend-list", { hasText: "alice" }).waitFor();
  await alice.getByLabel("Presence", { exact: true }).selectOption("PRESENCE_STATE_BUSY");
  await alice.getByLabel("Status text").fill("in a meeting");
  await alice.locator("#presence-form").getByRole("button", { name: "Set" }).click();
  await conv(bob, dm).locator(".dot.busy").waitFor();

  log("bob's network drops: the banner shows; alice sends; bob sends offline");
  await conv(bob, dm).click();
  await B.context.setOffline(true);
  await bob.locator("#banner", { hasText: "Disconnected" }).waitFor();
  await conv(alice, dm).click();
  await send(alice, "while you were away 1");
  await send(alice, "while you were away 2");
  await alice.locator(`#messages .msg[data-seq][data-conv="${dm}"]`, { hasText: "while you were away 2" }).waitFor();
  await send(bob, "written offline");
  await bob.locator(`#messages .msg.pending[data-conv="${dm}"]`, { hasText: "written offline" }).waitFor();

  log("bob's network is back: the banner goes, both sides converge");
  await B.context.setOffline(false);
  await bob.locator("#banner").waitFor({ state: "hidden", timeout: 30_000 });
  await msg(bob, dm, "while you were away 2").waitFor();
  await alice.locator(`#messages .msg[data-seq][data-conv="${dm}"]`, { hasText: "written offline" }).waitFor();
  await bob.locator(`#messages .msg.pending[data-conv="${dm}"]`).waitFor({ state: "detached" });

  log("bob's screen matches the server's history, with nothing lost or doubled");
  const server = await assertScreenIsServer(bob, dm);
  assert(server.length === 7, `7 messages in the 1:1 chat, got ${server.length}`);
  if (SHOTS) {
    mkdirSync(SHOTS, { recursive: true });
    await alice.locator("#friends summary").click(); // closed again: more room for the list
    await alice.screenshot({ path: join(SHOTS, "web-chat.png") });
  }

  log("the admin console signs in, finds bob and the group");
  const Adm = await h.newPage("admin", { width: 1200, height: 860 });
  const admin = Adm.page;
  await admin.goto(`${BASE}/admin`);
  await admin.getByLabel("API key").fill(KEY);
  await admin.getByRole("button", { name: "Sign in" }).click();
  await admin.locator("#online-total", { hasText: /^[0-9]+$/ }).waitFor();

  await admin.waitForFunction(() => document.getElementById("v-sends").textContent !== "–");
  await admin.getByLabel("Find a group").fill(groupConv.slice(2));
  await admin.locator("#group-form").getByRole("button", { name: "Find" }).click();
  await admin.locator('#group-members tr[data-user="bob"]').waitFor();
  await admin.getByLabel("Find a user").fill("bob");
  await admin.locator("#user-form").getByRole("button", { name: "Find" }).click();
  await admin.locator("#user-devices", { hasText: "web-" }).waitFor();

  log("the admin bans bob; bob's page says so");
  await admin.getByLabel("Ban reason").fill("testing bans");
  await admin.getByRole("button", { name: "Ban", exact: true }).click();
  await admin.locator("#user-result", { hasText: "bob is banned" }).waitFor();
  await bob.locator("#banner", { hasText: "banned" }).waitFor();
  await bob.locator('body[data-banned="true"]').waitFor();
  if (SHOTS) {
    // Some traffic for the charts of the screenshot, sampled every 2 s.
    for (let i = 1; i <= 8; i++) {
      await send(alice, `chart traffic ${i}`);
      await admin.waitForTimeout(600);
    }
    await admin.screenshot({ path: join(SHOTS, "web-admin.png"), fullPage: true });
    const phone = await h.newPage("phone", { width: 390, height: 760 });
    await signIn(phone.page, "alice");
    await conv(phone.page, groupConv).click();
    await msg(phone.page, groupConv, "thanks, glad").waitFor();
    await phone.page.screenshot({ path: join(SHOTS, "web-phone.png") });
  }
  await admin.getByRole("button", { name: "Unban" }).click();
  await admin.locator("#user-result", { hasText: "bob is not banned" }).waitFor();
}
