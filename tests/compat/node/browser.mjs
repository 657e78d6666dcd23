// Headless Chromium (Debian's, driven by playwright-core) loads a page from one
// local origin that streams a chat completion from the gateway on another with
// fetch. Prints one JSON line per page: {"title", "answer", "updates"}.
// Usage: node browser.mjs URL [URL...]
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  for (const url of process.argv.slice(2)) {
    const page = await browser.newPage();
    await page.goto(url);
    await page.waitForFunction(() => document.title.startsWith("done") || document.title.startsWith("error"), null, { timeout: 30000 });
    const result = await page.evaluate(() => ({
      title: document.title,
      answer: document.querySelector("#answer").textContent,
      updates: window.__updates,
    }));
    console.log(JSON.stringify(result));
    await page.close();
  }
} finally {
  await browser.close();
}
