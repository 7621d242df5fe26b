// The chat page's sign-in with local accounts (run by gateway/tests/web.rs
// against a gateway with `[accounts] enabled`): the page offers a password
// and Register; registering signs in and connects; a wrong password is
// refused with the server's words. Env: WEB_URL, CHROMIUM_BIN.
import { chromium } from "playwright-core";

const BASE = process.env.WEB_URL;
const killer = setTimeout(() => {
  console.error("accounts test: over 90 s, giving up");
  process.exit(1);
}, 90_000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(`${BASE}/`);
  await page.getByLabel("User id").fill("carol");
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByRole("button", { name: "Register" }).click();
  await page.locator('body[data-connection="live"]').waitFor();
  console.log("accounts: registered and connected");

  const other = await (await browser.newContext()).newPage();
  other.setDefaultTimeout(15_000);
  await other.goto(`${BASE}/`);
  await other.getByLabel("User id").fill("carol");
  await other.getByLabel("Password").fill("not the password");
  await other.getByRole("button", { name: "Sign in" }).click();
  await other.locator("#signin-error", { hasText: /./ }).waitFor();
  await other.getByLabel("Password").fill("correct horse battery");
  await other.getByRole("button", { name: "Sign in" }).click();
  await other.locator('body[data-connection="live"]').waitFor();
  console.log("accounts: a wrong password refused, the right one signed in");
} catch (e) {
  console.error(`accounts: FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  clearTimeout(killer);
}
