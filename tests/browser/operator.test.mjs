// The operator page in a real browser: Debian's Chromium, driven by playwright-core, against a
// real `kensa serve` (real ONNX Runtime, the demo model with a decision section, SQLite store,
// image retention) on free ports. Screenshots go to tests/browser/screenshots/ (git-ignored).
//
// Run by scripts/test.sh after `cargo test` built target/debug/kensa (KENSA_BIN names another
// binary, CHROMIUM another browser).

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { demo, launchBrowser, sample, shots, startKensa } from './kensa.mjs';

let scratch;
let kensa;
let base;
let context;

/** Posts one fixture sample as a unit over HTTP, as a station would; returns the verdict. */
async function inspect(station, id, unit, line = 'L3') {
  const form = new FormData();
  form.append('image', new Blob([readFileSync(path.join(demo, 'fixtures', unit.image))]), 'unit.png');
  form.append('note', unit.note);
  form.append('station_id', station);
  form.append('inspection_id', id);
  form.append('line', line);
  const response = await fetch(`${base}/v1/inspections`, { method: 'POST', body: form });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function openPage(query = '', viewport = { width: 1366, height: 768 }) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${base}/${query}`);
  await page.locator('#live[data-state="live"]').waitFor({ timeout: 10_000 });
  page.errors = errors;
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`) });
}

async function noHorizontalScroll(page) {
  const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width, `the page is ${scroll}px wide in a ${width}px window`);
}

before(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'kensa-browser-'));
  mkdirSync(shots, { recursive: true });
  ({ kensa, url: base } = await startKensa(scratch));
  context = await launchBrowser(scratch);
});

after(async () => {
  if (context) await context.close();
  if (kensa) kensa.kill('SIGTERM');
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('the operator page', () => {
  test('a verdict posted over HTTP shows on its station tile within 2 s, big and in words', async () => {
    await inspect('aoi-12', 'quiet-1', sample('normal'), 'L4');
    const quietSince = Date.now();
    const page = await openPage('?silent=0.1');
    const started = Date.now();
    const verdict = await inspect('aoi-07', 'L2438-12-S5-R2C03', sample('void'));
    const latest = page.locator('[data-station="aoi-07"] .latest[data-inspection="L2438-12-S5-R2C03"]');
    await latest.waitFor({ timeout: 2000 });
    const seen = Date.now() - started;
    assert.ok(seen < 2000, `shown after ${seen} ms`);
    assert.equal(verdict.disposition, 'review');
    assert.equal(await latest.locator('.word').textContent(), 'REVIEW');
    const size = await latest.locator('.word').evaluate((node) => parseFloat(getComputedStyle(node).fontSize));
    assert.ok(size >= 32, `the status word is ${size}px`);

    // aoi-12 then stays quiet past the page's silence limit (?silent=0.1: 6 s) while the rest of
    // the line keeps sending units.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, quietSince + 7000 - Date.now())));
    for (const [station, id, unit, line] of [
      ['aoi-07', 'u2', sample('normal'), 'L3'], ['aoi-07', 'u3', sample('oversize'), 'L3'],
      ['aoi-08', 'u4', sample('offset'), 'L3'], ['aoi-08', 'u5', sample('normal', 1), 'L3'],
      ['aoi-09', 'u6', sample('residue'), 'L3'], ['aoi-09', 'u7', sample('void', 1), 'L3'],
      ['aoi-11', 'u8', sample('normal'), 'L4'], ['aoi-11', 'u9', sample('normal', 1), 'L4'],
      ['aoi-07', 'u10', sample('normal', 1), 'L3'],
    ]) {
      await inspect(station, id, unit, line);
    }
    await page.locator('[data-station="aoi-07"] .latest[data-inspection="u10"]').waitFor({ timeout: 2000 });
    await page.locator('[data-station="aoi-12"].silent .silent-badge').waitFor({ timeout: 2000 });
    assert.match(await page.locator('[data-station="aoi-12"] .silent-badge').textContent(), /SILENT/);
    assert.equal(await page.locator('[data-station="aoi-07"].silent').count(), 0);
    assert.match(await page.locator('[data-station="aoi-07"] .mix-words').textContent(), /pass 2 · fail 1 · review 1/);
    // The rate counts units failed, not the model's defect calls (the unit sent to review is one).
    assert.match(await page.locator('[data-station="aoi-07"] .rate').textContent(), /^25 %failed, last hour$/);
    assert.match(await page.locator('[data-station="aoi-07"] .spark-caption').textContent(), /^failed per 5 min/);
    assert.equal(await page.locator('[data-station="aoi-07"] .spark rect').count(), 12);
    assert.match(await page.locator('#models').textContent(), /kensa-demo v1/);
    await noHorizontalScroll(page);
    await shot(page, 'overview-1366x768');
    assert.deepEqual(page.errors, []);
    await page.close();
  });

  test('opening a verdict shows its heat map, probabilities, note and thresholds', async () => {
    await inspect('aoi-07', 'detail-1', sample('void'));
    const page = await openPage();
    await page.locator('[data-station="aoi-07"] .latest[data-inspection="detail-1"]').click();
    const dialog = page.locator('dialog#detail[open]');
    await dialog.waitFor();
    const heatmap = dialog.locator('img.heatmap');
    await heatmap.waitFor();
    await page.waitForFunction(() => {
      const img = document.querySelector('dialog img.heatmap');
      return img && img.complete && img.naturalWidth > 0;
    }, null, { timeout: 10_000 });
    assert.ok(await heatmap.evaluate((img) => img.naturalWidth) >= 384);
    assert.equal(await dialog.locator('.detail-head .word').textContent(), 'REVIEW');
    assert.equal(await dialog.locator('.probs tr').count(), 5);
    assert.equal(await dialog.locator('.note').textContent(), sample('void').note);
    assert.match(await dialog.locator('.facts').textContent(), /pass if normal ≥ 0.85, fail if a defect ≥ 0.975/);
    assert.match(await dialog.locator('.facts').textContent(), /kensa-demo version 1/);
    await shot(page, 'detail-1366x768');
    assert.deepEqual(page.errors, []);
    await page.close();
  });

  test('a review submitted in the page is readable through the API, its comment inert', async () => {
    await inspect('aoi-09', 'queue-1', sample('void', 1));
    const page = await openPage();
    await page.fill('#reviewer', 'Aiko Tanaka');
    await page.locator('#reviewer').dispatchEvent('change');
    await page.click('#tab-queue');
    const item = page.locator('.queue-item[data-inspection="queue-1"]');
    await item.waitFor({ timeout: 5000 });
    await shot(page, 'queue-1366x768');
    await item.click();
    const dialog = page.locator('dialog#detail[open]');
    await dialog.locator('.review-form').waitFor();
    const comment = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> dust film, not a void';
    await dialog.locator('select[name="label"]').selectOption('normal');
    await dialog.locator('textarea[name="comment"]').fill(comment);
    await dialog.locator('button.override').click();
    await dialog.locator('.review-done').waitFor({ timeout: 5000 });

    const stored = await (await fetch(`${base}/v1/verdicts/aoi-09/queue-1`)).json();
    assert.equal(stored.label, 'void', "the model's verdict stays");
    assert.equal(stored.review.label, 'normal');
    assert.equal(stored.review.reviewer, 'Aiko Tanaka');
    assert.equal(stored.review.outcome, 'overridden');
    assert.equal(stored.review.comment, comment);

    await page.click('dialog .close');
    await page.click('#tab-overview');
    await page.locator('[data-station="aoi-09"] .latest[data-inspection="queue-1"]').click();
    const shown = page.locator('dialog#detail[open] .review-done .comment');
    await shown.waitFor();
    assert.equal(await shown.textContent(), comment, 'shown as text');
    assert.equal(await page.locator('dialog img[src="x"]').count(), 0, 'no element was made from it');
    assert.equal(await page.evaluate(() => window.__pwned), undefined, 'no script ran');
    assert.equal(await page.locator('dialog#detail[open] .review-form').count(), 0, 'a reviewer reviews once');
    await shot(page, 'reviewed-1366x768');
    await page.click('dialog .close');
    await page.click('#tab-queue');
    await page.locator('.queue-item[data-inspection="queue-1"]').waitFor({ state: 'detached', timeout: 5000 });
    assert.deepEqual(page.errors, []);
    await page.close();
  });

  test('the upload form returns a verdict with its heat map', async () => {
    const page = await openPage();
    await page.click('#tab-try');
    await page.setInputFiles('#try-image', path.join(demo, 'fixtures', sample('oversize').image));
    await page.fill('#try-note', sample('oversize').note);
    await page.fill('#try-station', 'bench-1');
    await page.fill('#try-line', 'L9');
    await page.click('#try-submit');
    const result = page.locator('#try-result .latest');
    await result.waitFor({ timeout: 10_000 });
    assert.equal(await result.locator('.word').textContent(), 'FAIL');
    assert.match(await result.locator('.what').textContent(), /Oversize/i);
    await page.waitForFunction(() => {
      const img = document.querySelector('#try-result img');
      return img && img.complete && img.naturalWidth > 0;
    });
    await shot(page, 'try-it-1366x768');
    const id = await result.getAttribute('data-inspection');
    const stored = await (await fetch(`${base}/v1/verdicts/bench-1/${id}`)).json();
    assert.equal(stored.label, 'oversize');
    assert.deepEqual(page.errors, []);
    await page.close();
  });

  test('works on a tablet, landscape and portrait', async () => {
    for (const viewport of [{ width: 1024, height: 768 }, { width: 768, height: 1024 }]) {
      const page = await openPage('', viewport);
      await page.locator('[data-station="aoi-07"]').waitFor();
      await page.waitForFunction(() => document.querySelectorAll('[data-station="aoi-07"] .chip').length > 1);
      await noHorizontalScroll(page);
      await shot(page, `overview-${viewport.width}x${viewport.height}`);
      await page.locator('[data-station="aoi-07"] .latest').click();
      await page.locator('dialog#detail[open] .review-form').waitFor();
      await noHorizontalScroll(page);
      await shot(page, `detail-${viewport.width}x${viewport.height}`);
      assert.deepEqual(page.errors, []);
      await page.close();
    }
  });
});
