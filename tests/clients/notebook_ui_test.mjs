// SPDX-License-Identifier: BSD-3-Clause
//
// The classic Jupyter Notebook 6.4 UI (Debian's python3-notebook) as a front end with --gateway-url
// pointing at the gateway under test, driven in headless Chromium through playwright-core:
// open a notebook, type print(6*7) into the first cell, Shift+Enter, and see 42 in the output area.
// The notebook server keeps no kernels of its own in gateway mode: every kernel REST call and the
// kernel websocket (legacy protocol, no subprotocol) are proxied to the gateway.
//
// Run: node --test tests/clients/notebook_ui_test.mjs   (needs `npm ci --prefix tests/clients` first;
// the gateway comes from KG_BIN, or KG_REFERENCE=jupyter-server; see lib/gateway.mjs).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import {
  requireNodeModules, startGateway, startGatewayFront, waitUntil, withDeadline, dumpLogsOnFailure,
} from './lib/gateway.mjs';

requireNodeModules(['playwright-core']);
const { chromium } = await import('playwright-core');

const CHROMIUM = process.env.KG_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** A one-cell nbformat 4 notebook bound to the python3 kernelspec. */
function notebookJson() {
  return JSON.stringify({
    cells: [{ cell_type: 'code', execution_count: null, id: 'kg-cell-1', metadata: {}, outputs: [], source: [] }],
    metadata: {
      kernelspec: { display_name: 'Python 3', language: 'python', name: 'python3' },
      language_info: { name: 'python' },
    },
    nbformat: 4,
    nbformat_minor: 5,
  }, null, 1);
}

describe('classic notebook UI through --gateway-url', () => {
  let gw;
  let front;
  let browser;
  let page;
  const pageLog = [];
  let shotDir;
  let failed = false;

  before(async () => {
    gw = await startGateway({ label: 'notebook-ui' });
    process.stderr.write(`# ${gw.kind} at ${gw.baseUrl}, log ${gw.logFile}\n`);
    front = await dumpLogsOnFailure([gw], () => startGatewayFront(gw, { kind: 'notebook' }));
    process.stderr.write(`# notebook front at ${front.baseUrl}, log ${front.proc.logFile}\n`);
    shotDir = path.join(gw.root, 'screenshots');
    mkdirSync(shotDir, { recursive: true });
  });

  after(async () => {
    if (page && shotDir && !existsSync(path.join(shotDir, 'notebook-42.png'))) {
      const p = path.join(shotDir, 'notebook-at-failure.png');
      await page.screenshot({ path: p, fullPage: true }).catch(() => {});
      process.stderr.write(`# screenshot at failure: ${p}\n`);
    }
    if (failed && pageLog.length) process.stderr.write(`# browser console:\n${pageLog.map((l) => `#   ${l}`).join('\n')}\n`);
    await browser?.close().catch(() => {});
    await front?.proc.stop();
    await gw?.stop();
  });

  const step = (name, fn) =>
    it(name, { timeout: 90_000 }, () =>
      dumpLogsOnFailure([gw, front?.proc], fn).catch((e) => {
        failed = true;
        throw e;
      }));

  step('runs print(6*7) in a notebook cell and shows 42', async () => {
    writeFileSync(path.join(front.nbDir, 'x.ipynb'), notebookJson());

    browser = await withDeadline(
      chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }),
      30_000,
      `launching ${CHROMIUM}`
    );
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(30_000);
    page.on('console', (m) => pageLog.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`pageerror: ${e.message}`));

    const resp = await page.goto(`${front.baseUrl}/notebooks/x.ipynb?token=${front.token}`, { waitUntil: 'domcontentloaded' });
    assert.equal(resp.status(), 200, `notebook page answered ${resp.status()}`);

    // The kernel is started on the gateway and its websocket is up once the indicator says idle.
    await page.waitForFunction(
      () => window.IPython?.notebook?.kernel?.is_connected?.() && document.querySelector('#kernel_indicator_icon.kernel_idle_icon'),
      null,
      { timeout: 60_000, polling: 200 }
    );
    const kernelId = await page.evaluate(() => window.IPython.notebook.kernel.id);
    const kernelName = await page.evaluate(() => window.IPython.notebook.kernel.name);
    assert.equal(kernelName, 'python3');

    // That kernel lives on the gateway under test.
    const r = await fetch(`${gw.baseUrl}/api/kernels/${kernelId}`, { headers: { Authorization: `token ${gw.token}` } });
    const model = await r.json();
    assert.equal(r.status, 200, `gateway does not know kernel ${kernelId}: ${JSON.stringify(model)}`);
    assert.equal(model.id, kernelId);
    assert.equal(model.name, 'python3');
    assert.ok(model.connections >= 1, `gateway counts ${model.connections} connections for the notebook's kernel`);

    // Type into the first cell and run it.
    const cell = page.locator('#notebook-container .cell.code_cell').first();
    await cell.locator('.CodeMirror').click();
    await page.keyboard.type('print(6*7)');
    await assert.doesNotReject(
      cell.locator('.CodeMirror-code').filter({ hasText: 'print(6*7)' }).waitFor({ timeout: 10_000 }),
      'the typed code did not appear in the cell'
    );
    await page.keyboard.press('Shift+Enter');

    const output = cell.locator('.output_area .output_subarea');
    await output.first().waitFor({ state: 'visible', timeout: 30_000 });
    await waitUntil(async () => (await output.first().innerText()).trim() === '42', {
      timeoutMs: 20_000,
      what: 'the output area to show 42',
    });
    assert.equal((await output.first().innerText()).trim(), '42');
    assert.equal(await output.count(), 1, 'more than one output');
    assert.equal(await cell.locator('.output_area .output_error, .output_stderr').count(), 0, 'an error or stderr output');
    // Executed: the prompt shows an execution count.
    assert.match(await cell.locator('.input_prompt').innerText(), /\[1\]/);
    // Back to idle after the run.
    await page.waitForSelector('#kernel_indicator_icon.kernel_idle_icon', { timeout: 20_000 });

    const shot = path.join(shotDir, 'notebook-42.png');
    await page.screenshot({ path: shot, fullPage: true });
    process.stderr.write(`# screenshot: ${shot}\n`);
    assert.ok(existsSync(shot));
  });

  step('input() gets its answer from the page and an exception shows a traceback', async () => {
    // Shift+Enter on the last cell added a second one; run input() there.
    const cells = page.locator('#notebook-container .cell.code_cell');
    await waitUntil(async () => (await cells.count()) >= 2, { timeoutMs: 10_000, what: 'a second cell' });
    const second = cells.nth(1);
    await second.locator('.CodeMirror').click();
    await page.keyboard.type("name = input('Who? ')");
    await page.keyboard.press('Enter');
    await page.keyboard.type("print('hello ' + name)");
    await page.keyboard.press('Shift+Enter');
    // The kernel's input_request comes back over the stdin channel as a text box in the output area.
    const box = second.locator('.output_area input.raw_input');
    await box.waitFor({ state: 'visible', timeout: 20_000 });
    assert.match(await second.locator('.output_area .raw_input_prompt').innerText(), /Who\?/);
    await box.fill('kernelgate');
    await box.press('Enter');
    await waitUntil(async () => (await second.locator('.output_area').innerText()).includes('hello kernelgate'), {
      timeoutMs: 20_000,
      what: "the output 'hello kernelgate'",
    });
    await page.waitForSelector('#kernel_indicator_icon.kernel_idle_icon', { timeout: 20_000 });

    const third = cells.nth(2);
    await waitUntil(async () => (await cells.count()) >= 3, { timeoutMs: 10_000, what: 'a third cell' });
    await third.locator('.CodeMirror').click();
    await page.keyboard.type('1/0');
    await page.keyboard.press('Shift+Enter');
    const err = third.locator('.output_area .output_error');
    await err.waitFor({ state: 'visible', timeout: 20_000 });
    assert.match(await err.innerText(), /ZeroDivisionError/);
    await page.waitForSelector('#kernel_indicator_icon.kernel_idle_icon', { timeout: 20_000 });
    const shot = path.join(shotDir, 'notebook-input-error.png');
    await page.screenshot({ path: shot, fullPage: true });
    process.stderr.write(`# screenshot: ${shot}\n`);
  });

  step('the notebook front and the gateway stop cleanly on SIGTERM', async () => {
    await browser.close();
    browser = null;
    const f = await front.proc.stop();
    assert.ok(f.graceful, 'notebook front did not exit within 15 s of SIGTERM');
    const g = await gw.stop();
    assert.ok(g.graceful, 'gateway did not exit within 15 s of SIGTERM');
    assert.equal(g.code, 0, `gateway exit code ${g.code} signal ${g.signal}`);
    assert.deepEqual(g.leftovers, [], 'processes left running after the gateway exited');
  });
});
