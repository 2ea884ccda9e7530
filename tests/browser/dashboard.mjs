// Drives fulcrum's admin dashboard in headless Chromium (run by tests/dashboard.rs):
//   node tests/browser/dashboard.mjs ADMIN_URL TOKEN ARTIFACT_DIR
// Loads the page under load, waits for the request rate to change, checks that names
// are shown as text, drains backend "a" (entering the token when asked), checks the
// page on a phone-sized screen, and keeps screenshots in ARTIFACT_DIR.
import { chromium } from "playwright-core";

const [url, token, artifacts] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const step = (what) => console.log("step: " + what);

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  // The drain without the token is refused (401) on purpose: the browser logs it.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("401")) problems.push("console: " + m.text());
  });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));

  step("load");
  await page.goto(url);
  const card = page.locator('article[data-upstream="app"]');
  await card.waitFor({ timeout: 10000 });

  step("numbers change");
  const rate = card.locator(".rate");
  const first = await rate.textContent();
  await page.waitForFunction(
    (before) => {
      const r = document.querySelector('article[data-upstream="app"] .rate');
      return r && r.textContent !== before && r.textContent !== "–" && parseFloat(r.textContent) > 0;
    },
    first,
    { timeout: 15000 },
  );
  const listenerRate = await page.locator('#listeners tr[data-key="web"] td').nth(2).textContent();
  if (!(parseFloat(listenerRate) > 0)) throw new Error("listener rate " + listenerRate);
  const p99 = await card.locator(".p99").textContent();
  if (p99 === "–") throw new Error("no p99 latency");

  step("names are text");
  const name = "<img src=x onerror=alert(1)>";
  const odd = card.locator(`tr[data-key="${name}"] td`).first();
  if ((await odd.textContent()) !== name) throw new Error("the odd name is not shown as written");
  if ((await page.locator("#upstreams img").count()) !== 0) throw new Error("a name became markup");

  step("drain asks for the token");
  if (await page.locator("#token-box").isVisible()) throw new Error("the token is asked for before it is needed");
  await page.locator('button[data-backend="a"]').click();
  await page.locator("#token").waitFor({ state: "visible", timeout: 5000 });
  await page.locator("#token").fill(token);
  await page.locator('#token-box button[type="submit"]').click();
  await page.waitForFunction(
    () => {
      const b = document.querySelector('button[data-backend="a"]');
      return b && b.dataset.action === "undrain";
    },
    null,
    { timeout: 10000 },
  );
  if (await page.locator("#token-box").isVisible()) throw new Error("the token box stayed open");
  const state = await card.locator('tr[data-key="a"] td').nth(2).textContent();
  if (state !== "draining") throw new Error("backend a shows " + state);
  if (requests.some((r) => r.includes(token))) throw new Error("the token went into a URL");
  await page.screenshot({ path: artifacts + "/dashboard.png", fullPage: true });

  step("phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(1200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error("the page is " + overflow + " px wider than a phone");
  await page.screenshot({ path: artifacts + "/dashboard-phone.png", fullPage: true });

  const foreign = requests.filter((r) => !r.startsWith(url.replace(/\/$/, "")));
  if (foreign.length) throw new Error("requests elsewhere: " + foreign.join(", "));
  if (problems.length) throw new Error(problems.join("; "));
  console.log("ok");
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error("failed: " + (failed.stack || failed));
  process.exit(1);
}
