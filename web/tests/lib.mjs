// What the browser tests share: Chromium launched from Debian's package
// through playwright-core (no browser download), a bounded run that prints
// each page's text when a step fails, and helpers that read the chat page
// and the server's history.
//
// Env: WEB_URL (the gateway's HTTP edge), WEB_API_KEY (an admin key, where
// a test needs one), CHROMIUM_BIN (default /usr/bin/chromium).
import { chromium } from "playwright-core";

export const BASE = process.env.WEB_URL;
export const KEY = process.env.WEB_API_KEY;
export const STEP_MS = 15_000;

let step = "start";
export function log(s) {
  step = s;
  console.log(`browser: ${s}`);
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

/**
 * Runs `body(h)` in a fresh headless Chromium, killed after `totalMs`;
 * sets the exit code and prints every page's text on failure.
 */
export async function runBrowser(totalMs, body) {
  if (!BASE) {
    console.error("WEB_URL is required");
    process.exit(2);
  }
  const killer = setTimeout(() => {
    console.error(`browser test: over ${totalMs} ms, giving up`);
    process.exit(1);
  }, totalMs);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
    headless: true,
    // Root in CI: Chromium's sandbox needs user namespaces it may not get.
    // No background traffic: the machine's network is closed but loopback.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const pages = [];
  const h = {
    browser,
    async newPage(name, viewport = { width: 1000, height: 680 }) {
      const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
      const page = await context.newPage();
      watch(name, page);
      pages.push([name, page]);
      return { context, page };
    },
    /** Follows a page that replaced another (a reload keeps the same object). */
    watch,
  };
  function watch(name, page) {
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (e) => console.error(`${name} page error: ${e.stack || e}`));
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") console.error(`${name} console: ${m.text()}`);
    });
  }
  try {
    await body(h);
    console.log("browser: all steps passed");
  } catch (e) {
    console.error(`browser: FAILED at step "${step}": ${e.stack || e}`);
    for (const [name, p] of pages) {
      const text = await p.locator("body").innerText().catch(() => "(unreadable)");
      console.error(`---- ${name}'s page ----\n${text.slice(0, 3000)}`);
    }
    process.exitCode = 1;
  } finally {
    await browser.close();
    clearTimeout(killer);
  }
}

export async function signIn(page, user) {
  await page.goto(`${BASE}/`);
  await page.getByLabel("User id").fill(user);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator('body[data-connection="live"]').waitFor();
}

export function conv(page, id) {
  return page.locator(`button.conv[data-conv="${id}"]`);
}

export function msg(page, convId, text) {
  return page.locator(`#messages .msg[data-conv="${convId}"]`, { hasText: text });
}

export async function send(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
}

/** What the screen shows of a conversation: [seq, text] per stored message. */
export async function screenHistory(page, convId) {
  return page.$$eval(`#messages .msg[data-conv="${convId}"]`, (els) =>
    els.map((el) => {
      if (!el.dataset.seq) return ["pending", el.querySelector(".text")?.textContent ?? ""];
      let text;
      if (el.classList.contains("recalled")) text = "(recalled)";
      else if (el.querySelector("img.thumb")) text = "(image)";
      else text = el.querySelector(".text")?.textContent ?? "";
      return [Number(el.dataset.seq), text];
    }),
  );
}

/** The server's history of a conversation, read over the API with KEY. */
export async function serverHistory(convId) {
  const out = [];
  let before = 0;
  for (let page = 0; page < 20; page++) {
    const q = before ? `&before_seq=${before}` : "";
    const res = await fetch(`${BASE}/api/v1/conversations/${convId}/messages?limit=100${q}`, {
      headers: { authorization: `Bearer ${KEY}` },
    });
    assert(res.ok, `history over the API: HTTP ${res.status}`);
    const h = await res.json();
    out.unshift(...h.entries);
    if (!h.more) break;
    before = h.next_before_seq;
  }
  return out
    .filter((e) => e.type === "message")
    .map((e) => {
      if (e.recalled) return [e.seq, "(recalled)"];
      if (e.content.type === "text") return [e.seq, e.content.text];
      if (e.content.type === "image") return [e.seq, "(image)"];
      return [e.seq, `(${e.content.type})`];
    });
}

/** Asserts the screen shows exactly the server's history of `convId`, none twice. */
export async function assertScreenIsServer(page, convId) {
  const server = await serverHistory(convId);
  const screen = await screenHistory(page, convId);
  const seqs = screen.map(([s]) => s);
  assert(new Set(seqs).size === seqs.length, `no message twice on screen: ${JSON.stringify(screen)}`);
  assert(
    JSON.stringify(screen) === JSON.stringify(server),
    `screen ${JSON.stringify(screen)}\n  != server ${JSON.stringify(server)}`,
  );
  return server;
}

/** A small PNG drawn in `page` (a colored disc), as bytes. */
export async function drawPng(page, bg, fg) {
  const b64 = await page.evaluate(
    ([bg, fg]) => {
      const c = document.createElement("canvas");
      c.width = 96;
      c.height = 64;
      const x = c.getContext("2d");
      x.fillStyle = bg;
      x.fillRect(0, 0, 96, 64);
      x.fillStyle = fg;
      x.beginPath();
      x.arc(48, 32, 20, 0, Math.PI * 2);
      x.fill();
      return c.toDataURL("image/png").split(",")[1];
    },
    [bg, fg],
  );
  return Buffer.from(b64, "base64");
}
