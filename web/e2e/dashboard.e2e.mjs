// End-to-end test of the dashboard against a real cluster, driven by playwright-core and the
// system's Chromium. It creates a shell counter on node0 through the New-process dialog, moves
// it to node1 through Migration Control (stop-and-copy), waits for it to run there and for the
// finished migration's phase timeline, takes a checkpoint of it and restores it to that checkpoint
// through the Checkpoints panel, and saves screenshots. Any step that does not happen in
// time, any uncaught page error and any console error fails it.
//
//   FERRY_E2E_URL=http://127.0.0.1:5100 [FERRY_E2E_TOKEN=...] node e2e/dashboard.e2e.mjs
//
// Environment: FERRY_E2E_URL (required), FERRY_E2E_TOKEN (when the gateway needs one: typed into
// the login screen), FERRY_E2E_TIMEOUT_MS (per step, default 60000), CHROMIUM_PATH (default
// /usr/bin/chromium), FERRY_E2E_SCREENSHOTS (default e2e/screenshots).

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.FERRY_E2E_URL;
const TOKEN = process.env.FERRY_E2E_TOKEN ?? '';
const TIMEOUT = Number(process.env.FERRY_E2E_TIMEOUT_MS) || 60_000;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SHOTS = process.env.FERRY_E2E_SCREENSHOTS || join(here, 'screenshots');

if (!BASE) {
  console.error('dashboard e2e: set FERRY_E2E_URL to the gateway, e.g. http://127.0.0.1:5100 (e2e/run.sh starts a cluster and does)');
  process.exit(2);
}

const problems = [];
let loggedIn = false;
let current = 'start';

async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  try {
    const r = await fn();
    console.log(`  ok  ${name} (${Date.now() - t0} ms)`);
    return r;
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new Error(`step "${name}" failed after ${Date.now() - t0} ms: ${msg}`, { cause: e });
  }
}

function checkProblems() {
  if (problems.length) throw new Error(`the page reported errors:\n    ${problems.join('\n    ')}`);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'ferry-e2e-chromium-'));
mkdirSync(SHOTS, { recursive: true });

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1440, height: 1000 },
  deviceScaleFactor: 1,
  colorScheme: 'light',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
context.setDefaultTimeout(TIMEOUT);
const page = context.pages()[0] ?? (await context.newPage());

page.on('pageerror', (err) => problems.push(`[${current}] uncaught: ${err.message}`));
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  const text = msg.text();
  // Before the token is typed in, the gateway rightly answers 401 (that is what shows the login).
  if (!loggedIn && /401|Unauthorized|text\/event-stream/i.test(text)) return;
  problems.push(`[${current}] console error: ${text}`);
});

const name = `e2e-counter-${Date.now().toString(36)}`;
const command = `sh -c 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 1; done'`;
const row = (extra = '') => page.locator(`tr[data-testid="process-row"][data-process-name="${name}"]${extra}`);
let failed = false;

try {
  console.log(`dashboard e2e against ${BASE}`);
  await step('open the dashboard', async () => {
    const res = await page.goto(BASE, { waitUntil: 'domcontentloaded' });
    if (!res || !res.ok()) throw new Error(`GET ${BASE} answered ${res?.status()}: is web/dist built and served by the gateway?`);
    const title = await page.title();
    if (!/ferry/i.test(title)) throw new Error(`the page at ${BASE} is not the dashboard (title ${JSON.stringify(title)})`);
    // Either the dashboard with the cluster's data (a node shown: the gateway let it in) or the
    // login screen. The topology's frame alone renders before the first answer, which may be
    // the 401 that brings up the login screen a moment later.
    await page
      .locator('[data-testid="topology-node-node0"], [data-testid="login-screen"]')
      .first()
      .waitFor();
  });

  if (await page.locator('[data-testid="login-screen"]').isVisible()) {
    await step('sign in with the token', async () => {
      if (!TOKEN) throw new Error('the gateway asks for a token: set FERRY_E2E_TOKEN (ferry up prints it; run.sh reads <data-dir>/operator.token)');
      await page.getByLabel('Token').fill(TOKEN);
      loggedIn = true;
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator('[data-testid="topology"]').waitFor();
    });
  } else {
    loggedIn = true;
  }

  await step('see both nodes online in the topology, and the event stream live', async () => {
    await page.locator('[data-testid="topology-node-node0"][data-status="online"]').waitFor();
    await page.locator('[data-testid="topology-node-node1"][data-status="online"]').waitFor();
    await page.locator('[data-testid="live-indicator"][data-live="true"]').waitFor();
    await page.locator('[data-testid="stat-nodes-value"]', { hasText: '2/2' }).waitFor();
  });

  await step('create a shell counter on node0 through the New-process dialog', async () => {
    await page.getByTestId('new-process').click();
    const dialog = page.getByRole('dialog', { name: 'New process' });
    await dialog.waitFor();
    await dialog.getByLabel('Name').fill(name);
    await dialog.getByLabel('Command').fill(command);
    const argv = await dialog.getByTestId('argv-preview').locator('li').count();
    if (argv !== 3) throw new Error(`the argv preview shows ${argv} words, expected 3`);
    await dialog.getByLabel('Node').selectOption('node0');
    await dialog.getByLabel('Engine').selectOption('criu');
    // Protected, with an interval long enough that only the checkpoint taken below exists.
    await dialog.getByLabel('Checkpoint every').fill('1h');
    await dialog.getByTestId('new-process-submit').click();
    await dialog.waitFor({ state: 'detached' });
    await row('[data-node="node0"][data-status="running"]').waitFor();
  });
  const id = await row().getAttribute('data-process-id');

  await step('see the counter on node0 in the topology', async () => {
    await page.locator(`[data-testid="topology-node-node0"] [data-testid="topology-process-${id}"]`).waitFor();
  });

  await step("read the counter's own output", async () => {
    await row().locator('[data-action="logs"]').click();
    const out = page.getByTestId('process-output');
    await out.locator('pre', { hasText: 'tick 2' }).waitFor();
    await out.getByRole('button', { name: 'Close output' }).click();
    await out.waitFor({ state: 'detached' });
  });

  await step('save the main view (screenshots/main.png)', async () => {
    checkProblems();
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(SHOTS, 'main.png'), fullPage: true });
  });

  await step('migrate it to node1 (stop-and-copy) through Migration Control', async () => {
    await row().locator('[data-action="migrate"]').click();
    const form = page.getByTestId('migration-form');
    await form.getByLabel('Process').selectOption(id);
    const source = await form.getByLabel('Source').inputValue();
    if (source !== 'node0') throw new Error(`the source shows ${JSON.stringify(source)}, expected node0`);
    await form.getByLabel('Target').selectOption('node1');
    await form.getByLabel('Mode').selectOption('stop-and-copy');
    await form.getByTestId('migration-submit').click();
  });

  await step('see the migration complete with its phase timeline', async () => {
    const detail = page.locator('[data-testid="migration-detail"][data-status="completed"]');
    await detail.waitFor();
    await detail.getByTestId('phase-timeline').waitFor();
    const bars = await detail.getByTestId('timeline-bar').count();
    if (bars < 3) throw new Error(`the timeline shows ${bars} phase bars, expected at least 3`);
    const text = await detail.textContent();
    if (!text?.includes('node0 → node1')) throw new Error('the migration detail does not say node0 → node1');
    if (await page.getByTestId('migration-error').count()) throw new Error('a completed migration shows an error box');
  });

  await step('see the counter running on node1 (process list and topology)', async () => {
    await row('[data-node="node1"][data-status="running"]').waitFor();
    await page.locator(`[data-testid="topology-node-node1"] [data-testid="topology-process-${id}"]`).waitFor();
    await page.locator(`[data-testid="topology-node-node0"] [data-testid="topology-process-${id}"]`).waitFor({ state: 'detached' });
  });

  await step('see the migration in the live system log', async () => {
    await page.locator('[data-testid="log-entry"][data-kind="migration_completed"]').first().waitFor();
    await page.locator('[data-testid="stat-success-value"]', { hasText: '%' }).waitFor();
  });

  await step('save the finished migration (screenshots/migration.png)', async () => {
    checkProblems();
    await page.getByTestId('migration-control').scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, 'migration.png'), fullPage: true });
  });

  await step('take a checkpoint on node1 and restore the counter to it (screenshots/checkpoints.png)', async () => {
    await row().locator('[data-action="checkpoints"]').click();
    const panel = page.getByTestId('checkpoints-panel');
    await panel.waitFor();
    await panel.locator('[data-action="checkpoint-now"]').click();
    const ck = panel.getByTestId('checkpoint-row').first();
    await ck.waitFor();
    // Kept on node1 and replicated to node0 (the other agent of the cluster).
    await ck.locator('[data-testid="checkpoint-holder"][data-holder="node1"]').waitFor();
    await ck.locator('[data-testid="checkpoint-holder"][data-holder="node0"]').waitFor();
    await page.screenshot({ path: join(SHOTS, 'checkpoints.png'), fullPage: true });
    await ck.locator('[data-action="restore"]').click();
    await panel.getByTestId('restore-confirm').locator('[data-action="confirm-restore"]').click();
    // The restore takes about a second: its end, not the transient "started" note, is what counts.
    await page.locator('[data-testid="log-entry"][data-kind="restore_completed"]').first().waitFor();
    await page.locator('[data-testid="migration-detail"][data-status="completed"]', { hasText: 'restore' }).waitFor();
    if (await panel.getByTestId('restore-error').count()) throw new Error('the restore shows an error');
    await row('[data-status="running"]').waitFor();
    await page.getByRole('button', { name: 'Close checkpoints' }).click();
  });

  await step('switch to dark mode, and keep it across a reload (screenshots/dark.png)', async () => {
    await page.getByTestId('theme-toggle').click();
    await page.waitForFunction(() => document.documentElement.classList.contains('dark'));
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.locator('[data-testid="migration-detail"][data-status="completed"]').waitFor();
    const dark = await page.evaluate(() => document.documentElement.classList.contains('dark'));
    if (!dark) throw new Error('dark mode was not kept across the reload');
    await page.screenshot({ path: join(SHOTS, 'dark.png'), fullPage: true });
    await page.getByTestId('theme-toggle').click();
  });

  await step('stop the counter with the Stop button; ended, it is listed only with Show ended', async () => {
    const stop = row().locator('[data-action="stop"]');
    await stop.click();
    await stop.click();
    await row().waitFor({ state: 'detached' });
    await page.getByTestId('toggle-ended').click();
    await page.locator(`tr[data-process-name="${name}"]:is([data-status="exited"], [data-status="failed"])`).waitFor();
    await page.getByTestId('toggle-ended').click();
  });

  checkProblems();
} catch (e) {
  failed = true;
  console.error(`\ndashboard e2e FAILED: ${e instanceof Error ? e.message : e}`);
  if (problems.length) console.error(`  page errors:\n    ${problems.join('\n    ')}`);
  await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`  the page at failure: ${join(SHOTS, 'failure.png')}`);
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}

console.log(failed ? 'dashboard e2e: 0 passed, 1 failed' : `dashboard e2e: 1 passed, 0 failed (screenshots in ${SHOTS})`);
process.exit(failed ? 1 : 0);
