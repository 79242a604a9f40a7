// What the browser tests share: a real `kensa serve` on free ports with a copy of the demo
// model, and Debian's Chromium driven by playwright-core.

import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '../..');
export const demo = path.join(root, 'models/demo');
export const shots = path.join(here, 'screenshots');
const binary = process.env.KENSA_BIN || path.join(root, 'target/debug/kensa');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Normal fixtures pass (0.91), voids go to review (0.96 < 0.975), oversize and offset fail. */
export const DECISION = {
  temperature: 1.0,
  pass_threshold: 0.85,
  fail_threshold: 0.975,
  target_missed_defect_rate: 0.01,
  validation: { split: 'test fixture', n: 10 },
};

export const samples = readFileSync(path.join(demo, 'fixtures/samples.jsonl'), 'utf8')
  .split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
export const sample = (label, n = 0) => samples.filter((s) => s.label === label)[n];

/** A copy of the demo model (files linked) whose manifest has DECISION. */
function modelWithDecision(dir) {
  mkdirSync(dir);
  for (const name of readdirSync(demo)) {
    if (name !== 'manifest.json') symlinkSync(path.join(demo, name), path.join(dir, name));
  }
  const manifest = JSON.parse(readFileSync(path.join(demo, 'manifest.json'), 'utf8'));
  manifest.decision = DECISION;
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
}

/**
 * Starts kensa on free ports in `scratch` with `extra` flags; resolves with the process and
 * its HTTP base URL once it is ready.
 */
export async function startKensa(scratch, extra = []) {
  const model = path.join(scratch, 'model');
  modelWithDecision(model);
  const kensa = spawn(binary, [
    '--log-format', 'json', 'serve',
    '--http-host', '127.0.0.1', '--http-port', '0', '--grpc-host', '127.0.0.1', '--grpc-port', '0',
    '--model-repository', model, '--data-dir', path.join(scratch, 'data'), '--device', 'cpu',
    '--warmup-batches', '1', '--retain-images', ...extra,
  ], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  const address = await new Promise((resolve, reject) => {
    let buffer = '';
    kensa.stderr.on('data', (chunk) => {
      buffer += chunk;
      for (const line of buffer.split('\n')) {
        try {
          const fields = JSON.parse(line).fields || {};
          if (fields.message === 'HTTP API listening') resolve(fields.http_addr);
        } catch (_) { /* a partial line */ }
      }
    });
    kensa.on('exit', (code) => reject(new Error(`kensa exited with ${code}:\n${buffer}`)));
  });
  const url = `http://${address}`;
  for (let i = 0; i < 600; i += 1) {
    const ready = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ready) return { kensa, url };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('kensa did not become ready');
}

/** Headless Chromium with its profile in `scratch`. */
export function launchBrowser(scratch) {
  return chromium.launchPersistentContext(path.join(scratch, 'profile'), {
    executablePath: browserPath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}
