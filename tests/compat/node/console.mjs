// Headless Chromium (Debian's, driven by playwright-core) uses the console
// page as an operator would. Driven by tests/compat/test_console.py, in two
// phases: it prints one JSON line and waits for a line on stdin between them
// (the Python side spends with the new token through the official SDK).
// Usage: node console.mjs GATEWAY_URL EVIL_PAGE_URL SCREENSHOT_DIR  (ADMIN_TOKEN in the environment)
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [base, evilPage, shots] = process.argv.slice(2);
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const XSS = "<img src=x onerror=window.__xss=1>";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const foreign = [];
const errors = [];
page.on("request", (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
page.on("pageerror", (e) => errors.push(String(e)));
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const tokenRows = () => page.$$eval("#tokens-table tbody tr", (rows) =>
  rows.map((r) => [...r.cells].map((c) => c.textContent)));
const out = {};

try {
  // A wrong token first, on a page of its own (its 401 is the browser's
  // console error there): refused, and said so.
  const probe = await context.newPage();
  await probe.goto(base + "/admin");
  await probe.getByLabel("Admin token").fill("not-the-token");
  await probe.getByRole("button", { name: "Log in" }).click();
  await probe.locator("#login-error").filter({ hasText: "invalid" }).waitFor();
  out.wrongLogin = await probe.locator("#login-error").textContent();
  await probe.close();

  await page.goto(base + "/admin");
  await page.getByLabel("Admin token").waitFor();
  await shot("1-login");
  await page.getByLabel("Admin token").fill(process.env.ADMIN_TOKEN);
  await page.getByLabel("Admin token").press("Enter");
  await page.locator("#console").waitFor();
  out.who = await page.locator("#who").textContent();
  const cookies = await context.cookies();
  out.cookie = cookies.find((c) => c.name === "gw_session");

  // A token with limits, by keyboard and labels only.
  await page.getByLabel("Name", { exact: true }).fill("sdk-user");
  await page.getByLabel(/^Models/).fill("gpt-4o-mini*");
  await page.getByLabel(/^Limits/).fill("requests_per_minute=100, usd_per_month=5");
  await page.getByRole("button", { name: "Create token" }).click();
  await page.locator("#secret-section").waitFor();
  out.secret = await page.getByLabel("Token", { exact: true }).inputValue();
  out.warning = await page.locator("#secret-section").textContent();
  await shot("2-token-created");
  await page.getByRole("button", { name: "Done" }).click();
  // The XSS canary as a name.
  await page.getByLabel("Name", { exact: true }).fill(XSS);
  await page.getByRole("button", { name: "Create token" }).click();
  await page.locator("#secret-section").waitFor();
  await page.getByRole("button", { name: "Done" }).click();
  await page.locator("#tokens-table tbody tr", { hasText: XSS }).waitFor();
  console.log(JSON.stringify({ phase: 1, secret: out.secret }));

  await lines.next(); // the SDK spent
  await page.reload();
  await page.locator("#console").waitFor();
  await page.locator("#chart svg rect").first().waitFor();
  out.rects = await page.locator("#chart svg rect").count();
  out.legend = await page.locator("#legend").textContent();
  out.models = await page.locator("#models-table tbody").textContent();
  out.rowsAfterSpend = await tokenRows();
  out.xss = await page.evaluate(() => ({
    flag: window.__xss === 1,
    images: document.querySelectorAll("main img").length,
  }));
  await shot("3-spend");

  // Raise the limit through the edit form.
  await page.getByRole("button", { name: "Edit sdk-user" }).click();
  await page.getByLabel(/^Limits/).fill("requests_per_minute=200, usd_per_month=5");
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.locator("#tokens-table tbody tr", { hasText: "requests_per_minute: 3 / 200" }).waitFor();
  out.rowsAfterRaise = await tokenRows();

  // Another site's page posts to the admin API with the browser's cookies.
  const evil = await context.newPage();
  await evil.goto(evilPage);
  await evil.waitForFunction(() => document.title === "sent", null, { timeout: 10000 });
  await evil.close();
  await page.reload();
  await page.locator("#console").waitFor();
  out.rowsAfterEvil = await tokenRows();

  // Revoke, confirming the dialog.
  page.once("dialog", (d) => { out.dialog = d.message(); d.accept(); });
  await page.getByRole("button", { name: "Revoke sdk-user" }).click();
  await page.locator("#tokens-table tbody tr", { hasText: "revoked" }).waitFor();
  out.rowsAfterRevoke = await tokenRows();
  await shot("4-revoked");
  await page.setViewportSize({ width: 360, height: 800 });
  await shot("5-narrow");
  out.narrowOverflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await page.setViewportSize({ width: 1280, height: 900 });

  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByLabel("Admin token").waitFor();
  await shot("6-logged-out");
  out.foreign = foreign;
  out.errors = errors;
  console.log(JSON.stringify({ phase: 2, ...out }));
} catch (error) {
  await shot("failure").catch(() => {});
  console.log(JSON.stringify({ phase: "error", error: String(error), ...out, foreign, errors }));
  process.exitCode = 1;
} finally {
  input.close();
  await browser.close();
}
