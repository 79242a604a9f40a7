// The operator page behind kensa's access control, in a real browser: the page's shell loads
// without a token, the page asks for one when the API answers 401, and a review made with a
// line lead's token is stored under the client's name from the client file.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { demo, launchBrowser, sample, startKensa } from './kensa.mjs';

const STATION_TOKEN = 'browser-station-token-0123456789ab';
const LINE_LEAD_TOKEN = 'browser-line-lead-token-0123456789';

let scratch;
let kensa;
let base;
let context;

/** A client file: one station, and a line lead with the operator and mes scopes. */
function clientFile(dir) {
  const sha = (token) => createHash('sha256').update(token).digest('hex');
  const file = path.join(dir, 'clients.toml');
  writeFileSync(file, [
    '[[client]]', 'name = "aoi-07"', `token_sha256 = "${sha(STATION_TOKEN)}"`, 'scopes = ["station"]', '',
    '[[client]]', 'name = "line-lead-3"', `token_sha256 = "${sha(LINE_LEAD_TOKEN)}"`,
    'scopes = ["operator", "mes"]', '',
  ].join('\n'));
  return file;
}

before(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'kensa-browser-access-'));
  ({ kensa, url: base } = await startKensa(scratch, ['--auth-clients', clientFile(scratch)]));
  context = await launchBrowser(scratch);
});

after(async () => {
  if (context) await context.close();
  if (kensa) kensa.kill('SIGTERM');
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the operator page with access control', () => {
  test('asks once for a token and reviews under the token holder\'s name', async () => {
    const unit = sample('void');
    const form = new FormData();
    form.append('image', new Blob([readFileSync(path.join(demo, 'fixtures', unit.image))]), 'unit.png');
    form.append('note', unit.note);
    form.append('station_id', 'aoi-07');
    form.append('inspection_id', 'guarded-1');
    const submitted = await fetch(`${base}/v1/inspections`, {
      method: 'POST', body: form, headers: { Authorization: `Bearer ${STATION_TOKEN}` },
    });
    assert.equal(submitted.status, 200, await submitted.clone().text());
    assert.equal((await fetch(`${base}/v1/stations`)).status, 401, 'the data needs a token');

    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error));
    const prompts = [];
    page.on('dialog', async (dialog) => {
      prompts.push(dialog.message());
      await dialog.accept(LINE_LEAD_TOKEN);
    });
    await page.goto(`${base}/`);
    await page.locator('#live[data-state="live"]').waitFor({ timeout: 10_000 });
    assert.equal(prompts.length, 1, `asked once: ${prompts}`);
    assert.match(prompts[0], /token/);

    await page.fill('#reviewer', 'someone else');
    await page.locator('#reviewer').dispatchEvent('change');
    await page.locator('[data-station="aoi-07"] .latest[data-inspection="guarded-1"]').click();
    const dialog = page.locator('dialog#detail[open]');
    await dialog.locator('.review-form').waitFor();
    await dialog.locator('button.confirm').click();
    await dialog.locator('.review-done').waitFor({ timeout: 5000 });

    const stored = await (await fetch(`${base}/v1/verdicts/aoi-07/guarded-1`, {
      headers: { Authorization: `Bearer ${LINE_LEAD_TOKEN}` },
    })).json();
    assert.equal(stored.review.reviewer, 'line-lead-3', 'the client file names the reviewer');
    assert.equal(stored.review.outcome, 'confirmed');
    assert.equal(prompts.length, 1, 'the token was kept for the tab');
    assert.deepEqual(errors, []);
    await page.close();
  });
});
