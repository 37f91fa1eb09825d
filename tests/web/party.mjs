// The web UI in headless Chromium against a real daemon (run by tests/e2e/web.rs inside the
// host player's network namespace): create a party in the UI, a friend joins with the CLI and
// appears without a reload, with path and latency; kick them from the UI; every page is
// screenshotted; keyboard, narrow window and dark mode are exercised; the first paint is
// weighed; then the local API is checked for foreign Origin/Host, a missing token, and a
// schema-driven run of bad input that must only ever get 4xx JSON errors.
//
// Environment: LANRAGE_UI (http://127.0.0.1:PORT), LANRAGE_TOKEN, LANRAGE_SHOTS (directory),
// LANRAGE_JOIN (JSON argv of the friend's join command, "{invite}" replaced), LANRAGE_MEMBER
// (the friend's player name), CHROMIUM (the browser binary).
// Prints one JSON line of results; exits non-zero with a reason on any failure.

import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import http from 'node:http';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const UI = env('LANRAGE_UI');
const TOKEN = env('LANRAGE_TOKEN');
const SHOTS = env('LANRAGE_SHOTS');
const JOIN = JSON.parse(env('LANRAGE_JOIN'));
const MEMBER = env('LANRAGE_MEMBER');
const CHROMIUM = env('CHROMIUM');

const results = { screenshots: [] };
const fail = (msg) => {
  throw new Error(msg);
};
const check = (cond, msg) => {
  if (!cond) fail(msg);
};

mkdirSync(SHOTS, { recursive: true });

async function shot(page, name) {
  const path = `${SHOTS}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  results.screenshots.push(path);
}

async function ui() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const context = await browser.newContext({
      viewport: { width: 1280, height: 720 },
      colorScheme: 'light',
    });
    const page = await context.newPage();
    const problems = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(String(e)));

    // First paint: every byte the page loads until it has drawn the first status.
    let bytes = 0;
    const counting = (resp) => {
      resp.body().then((b) => (bytes += b.length)).catch(() => {});
    };
    page.on('response', counting);
    await page.goto(`${UI}/#token=${TOKEN}`);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 10000 });
    await page.waitForLoadState('load');
    await page.waitForTimeout(200);
    page.off('response', counting);
    results.first_paint_bytes = bytes;
    check(bytes > 0 && bytes < 300 * 1024, `first paint loaded ${bytes} bytes`);
    check(!page.url().includes('token='), 'the token stays in the address bar');
    check(await page.isHidden('#readonly-banner'), 'read-only banner shown despite the token');
    await shot(page, 'party-empty');

    // Create a party in the UI.
    await page.fill('#create-name', 'Friday LAN');
    await page.fill('#create-player', 'host');
    await page.click('#create-submit');
    await page.waitForFunction(
      () => /^lr1-/.test(document.querySelector('#invite-code')?.textContent?.trim() ?? ''),
      null,
      { timeout: 10000 },
    );
    const invite = (await page.textContent('#invite-code')).trim();
    // The header shows the name this player has in the party, not the daemon's default.
    await page.waitForFunction(() => document.querySelector('#st-name')?.textContent === 'host');
    results.invite_prefix = invite.slice(0, 4);
    await shot(page, 'party-created');

    // The friend joins with the CLI; the UI shows them without a reload.
    const argv = JOIN.map((a) => (a === '{invite}' ? invite : a));
    const joined = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 30000 });
    check(joined.status === 0, `join failed: ${joined.stderr}`);
    const t0 = Date.now();
    const navigations = [];
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations.push(f.url());
    });
    const row = `#members tr[data-member="${MEMBER}"]`;
    await page.waitForSelector(row, { timeout: 2000 });
    results.member_appeared_ms = Date.now() - t0;
    await page.waitForFunction(
      (sel) => {
        const r = document.querySelector(sel);
        const path = r?.querySelector('.m-path')?.textContent?.trim();
        const lat = r?.querySelector('.m-latency')?.textContent?.trim() ?? '';
        return (path === 'direct' || path === 'relay') && /^\d+(\.\d+)? ms$/.test(lat);
      },
      row,
      { timeout: 30000 },
    );
    results.member_path = (await page.textContent(`${row} .m-path`)).trim();
    results.member_latency = (await page.textContent(`${row} .m-latency`)).trim();
    results.member_ip = (await page.textContent(`${row} .m-ip`)).trim();
    check(/^10\.66\./.test(results.member_ip), `member IP ${results.member_ip}`);
    // The sparkline fills in from the per-second samples.
    await page.waitForFunction(
      (sel) => (document.querySelector(`${sel} svg.sparkline`)?.innerHTML ?? '').includes('<path') ||
        (document.querySelector(`${sel} svg.sparkline`)?.innerHTML ?? '').includes('<polyline'),
      row,
      { timeout: 10000 },
    );
    check(navigations.length === 0, `the page reloaded: ${navigations}`);
    await shot(page, 'party-member');

    // Every page, live.
    for (const name of ['network', 'games', 'lan', 'settings']) {
      await page.click(`a[data-page="${name}"]`);
      await page.waitForFunction((n) => location.hash === `#/${n}`, name);
      await page.waitForTimeout(1500);
      await shot(page, name);
    }
    // The network page charts the member's latency over time.
    await page.click('a[data-page="network"]');
    await page.waitForFunction(
      (m) => document.querySelector('main')?.textContent?.includes(m),
      MEMBER,
      { timeout: 5000 },
    );
    check((await page.locator('main svg').count()) > 0, 'no chart on the network page');

    // Settings: a bad value gets the daemon's sentence next to the form (Chromium logs the
    // deliberate 400 on the console; that one line is expected).
    const before = problems.length;
    await page.click('a[data-page="settings"]');
    await page.fill('#set-player-name', 'x'.repeat(40));
    await page.click('#settings-save');
    await page.waitForFunction(
      () => (document.querySelector('#settings-error')?.textContent ?? '').includes('player_name'),
      null,
      { timeout: 5000 },
    );
    results.settings_error = (await page.textContent('#settings-error')).trim();
    const expected = problems.splice(before).filter((p) => !/status of 400/.test(p));
    problems.push(...expected);

    // Keyboard: Tab reaches the Games tab and Enter opens it.
    await page.click('a[data-page="party"]');
    await page.evaluate(() => document.activeElement?.blur());
    let reached = false;
    for (let i = 0; i < 40 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(
        () => document.activeElement?.getAttribute('data-page') === 'games',
      );
    }
    check(reached, 'Tab never reached the Games tab');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => location.hash === '#/games', null, { timeout: 2000 });
    await page.click('a[data-page="party"]');
    await page.waitForSelector(row);

    // Dark mode and a narrow window.
    await page.click('#theme-toggle');
    const theme = await page.evaluate(() => document.documentElement.dataset.theme);
    check(theme === 'dark', `theme toggle gave ${theme}`);
    await shot(page, 'party-dark');
    await page.setViewportSize({ width: 375, height: 740 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    check(overflow <= 1, `the narrow page scrolls sideways by ${overflow}px`);
    await shot(page, 'party-narrow-dark');
    await page.setViewportSize({ width: 1280, height: 720 });

    // Kick the friend from the UI.
    page.on('dialog', (d) => d.accept());
    await page.click(`${row} button.kick`);
    await page.waitForSelector(row, { state: 'detached', timeout: 10000 });
    await shot(page, 'party-after-kick');
    check(problems.length === 0, `browser console errors: ${problems.join(' | ')}`);
    results.console_errors = problems.length;
  } finally {
    await browser.close();
  }
}

/// A raw HTTP request (node's http lets the test set Host and Origin as an attacker would).
function request(method, path, { headers = {}, body } = {}) {
  const url = new URL(UI);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path, headers, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode, text, json });
        });
      },
    );
    // A server may answer (413) and close before reading a large body: the write then
    // fails with EPIPE or a reset although the answer arrives; wait for it a moment.
    req.on('error', (e) => {
      if (e.code === 'EPIPE' || e.code === 'ECONNRESET') {
        setTimeout(() => reject(new Error(`${method} ${path}: ${e.code} and no answer`)), 2000);
      } else {
        reject(e);
      }
    });
    req.setTimeout(10000, () => req.destroy(new Error(`${method} ${path} timed out`)));
    if (body !== undefined && headers.Expect === '100-continue') {
      // Sent only if the server asks for it; it answers a too-large body without reading it.
      req.on('continue', () => req.end(body));
    } else {
      if (body !== undefined) req.write(body);
      req.end();
    }
  });
}

const isJsonError = (r) =>
  r.json && typeof r.json.error?.code === 'string' && typeof r.json.error?.message === 'string' &&
  r.json.error.message.length > 0;

async function security() {
  const host = new URL(UI).host;
  const foreignOrigin = await request('GET', '/api/v1/status', {
    headers: { Origin: 'http://evil.example' },
  });
  check(foreignOrigin.status === 403 && isJsonError(foreignOrigin), `foreign Origin: ${foreignOrigin.status}`);
  const rebinding = await request('GET', '/api/v1/status', {
    headers: { Host: `evil.example:${new URL(UI).port}` },
  });
  check(rebinding.status === 403 && isJsonError(rebinding), `non-loopback Host: ${rebinding.status}`);
  const lanHost = await request('GET', '/', { headers: { Host: `10.99.0.2:${new URL(UI).port}` } });
  check(lanHost.status === 403, `LAN address as Host: ${lanHost.status}`);
  for (const [method, path, body] of [
    ['POST', '/api/v1/party/create', '{"name":"x"}'],
    ['POST', '/api/v1/party/leave', ''],
    ['PATCH', '/api/v1/settings', '{"player_name":"x"}'],
    ['GET', '/api/v1/party/invite', undefined],
  ]) {
    const r = await request(method, path, {
      headers: { Host: host, 'Content-Type': 'application/json' },
      body,
    });
    check(r.status === 401 && isJsonError(r), `${method} ${path} without the token: ${r.status}`);
  }
  const wrongToken = await request('POST', '/api/v1/party/lock', {
    headers: { Host: host, 'Content-Type': 'application/json', 'x-lanrage-token': 'nope' },
    body: '{"locked":true}',
  });
  check(wrongToken.status === 401, `wrong token: ${wrongToken.status}`);
  results.security_checks = 9;
}

/// Wrong values for a schema: one of each other JSON type.
function wrongValues(schema) {
  const t = [].concat(schema.type ?? []);
  const all = { string: 'x', integer: 7, number: 1.5, boolean: true, array: [1], object: { a: 1 }, null: null };
  const out = [];
  for (const [k, v] of Object.entries(all)) {
    if (t.includes(k)) continue;
    if (k === 'integer' && t.includes('number')) continue;
    if (k === 'null' && (t.length === 0 || schema.oneOf)) continue;
    out.push(v);
  }
  if (t.includes('integer')) out.push(-1, 1e12, 2.5);
  return out;
}

async function badInput() {
  const doc = (await request('GET', '/api/v1/openapi.json')).json;
  check(doc?.paths, 'no OpenAPI document');
  const resolve = (s) => (s?.$ref ? doc.components.schemas[s.$ref.split('/').pop()] : s);
  const headers = { 'Content-Type': 'application/json', 'x-lanrage-token': TOKEN };
  const cases = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const schema = resolve(op.requestBody?.content?.['application/json']?.schema);
      if (!schema) continue;
      const props = schema.properties ?? {};
      const required = schema.required ?? [];
      // A well-formed base: never sent alone (it would act), only mutated.
      const base = {};
      for (const r of required) {
        const p = resolve(props[r]);
        base[r] = [].concat(p.type ?? [])[0] === 'boolean' ? true : 'x';
      }
      const M = method.toUpperCase();
      const add = (what, body, extra = {}) => cases.push({ M, path, what, body, headers: { ...headers, ...extra } });
      for (const [name, p] of Object.entries(props)) {
        for (const v of wrongValues(resolve(p))) add(`${name}=${JSON.stringify(v)}`, JSON.stringify({ ...base, [name]: v }));
        const inner = resolve(p.oneOf?.find((s) => s.$ref) ?? p);
        for (const [sub, sp] of Object.entries(inner?.properties ?? {})) {
          for (const v of wrongValues(resolve(sp))) add(`${name}.${sub}=${JSON.stringify(v)}`, JSON.stringify({ ...base, [name]: { [sub]: v } }));
        }
      }
      for (const r of required) {
        const b = { ...base };
        delete b[r];
        add(`missing ${r}`, JSON.stringify(b));
      }
      add('unknown field', JSON.stringify({ ...base, surprise: 1 }));
      add('not JSON', '{"');
      add('empty', '');
      add('null', 'null');
      add('array', '[]');
      add('number', '42');
      add('deep nesting', '['.repeat(5000));
      add('oversized', JSON.stringify({ ...base, pad: 'x'.repeat(200 * 1024) }), { Expect: '100-continue' });
      add('wrong content type', JSON.stringify(base), { 'Content-Type': 'text/plain' });
    }
  }
  let fours = 0;
  for (const c of cases) {
    let r;
    try {
      r = await request(c.M, c.path, { headers: c.headers, body: c.body });
    } catch (e) {
      fail(`${c.M} ${c.path} with ${c.what}: ${e.message}`);
    }
    check(
      r.status >= 400 && r.status < 500 && isJsonError(r),
      `${c.M} ${c.path} with ${c.what}: ${r.status} ${r.text.slice(0, 200)}`,
    );
    fours++;
  }
  // Routes without a body: unknown methods and paths are JSON 4xx too.
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const m of ['PUT', 'DELETE']) {
      if (item[m.toLowerCase()]) continue;
      const r = await request(m, path, { headers });
      check(r.status === 405 && isJsonError(r), `${m} ${path}: ${r.status}`);
      fours++;
    }
  }
  for (const p of ['/api/v1/nope', '/api/v1/status/../../etc/passwd', '/api/v1/%ff', '/%2e%2e/Cargo.toml']) {
    const r = await request('GET', p);
    check(r.status >= 400 && r.status < 500 && isJsonError(r), `GET ${p}: ${r.status}`);
    fours++;
  }
  const alive = await request('GET', '/api/v1/status');
  check(alive.status === 200 && alive.json?.party, 'the daemon is not answering after the bad input');
  results.bad_input_requests = fours;
}

try {
  await ui();
  await security();
  await badInput();
  console.log(JSON.stringify(results));
} catch (e) {
  console.error(`web test failed: ${e?.stack ?? e}`);
  console.log(JSON.stringify({ ...results, error: String(e?.message ?? e) }));
  process.exit(1);
}
