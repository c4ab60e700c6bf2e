// The dashboard's benchmark (run by loadtest/bench-dashboard.sh, which starts the
// server and fills its fleet): for the overview, nodes and KV pages,
//   - the first load's bytes on the wire (cache off, compressed as sent),
//   - the server time of every request the page makes (p50 over RUNS replays,
//     time to the response headers),
//   - axe-core's violations by impact,
//   - Lighthouse's performance and accessibility scores (desktop preset),
// with Debian's Chromium. Prints one JSON report on stdout.
//
//   node bench.mjs URL PASSWORD [KEYS] [RUNS]
import fs from 'node:fs';
import { createRequire } from 'node:module';
import puppeteer from 'puppeteer-core';
import lighthouse from 'lighthouse';
import desktop from 'lighthouse/core/config/desktop-config.js';

const [url, password, keysArg, runsArg] = process.argv.slice(2);
const KEYS = Number(keysArg || 10000);
const RUNS = Number(runsArg || 30);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

async function login() {
  const r = await fetch(`${url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password }),
  });
  if (!r.ok) throw new Error(`login: ${r.status} ${await r.text()}`);
  const cookies = r.headers.getSetCookie().map((c) => c.split(';')[0]);
  const { csrf_token: csrf } = await r.json();
  return { cookie: cookies.join('; '), csrf, pairs: cookies.map((c) => c.split('=')) };
}

async function fillKv(session) {
  const h = { cookie: session.cookie, 'x-csrf-token': session.csrf, 'content-type': 'application/json' };
  const b = await fetch(`${url}/api/v1/buckets`, { method: 'POST', headers: h, body: JSON.stringify({ name: 'bench', surface: 'kv' }) });
  if (!b.ok && b.status !== 409) throw new Error(`bucket: ${b.status} ${await b.text()}`);
  let next = 0;
  const worker = async () => {
    while (next < KEYS) {
      const i = next++;
      const key = `config/service-${String(i).padStart(5, '0')}`;
      const r = await fetch(`${url}/api/v1/kv/bench/${key}`, {
        method: 'PUT', headers: h, body: JSON.stringify({ value: { replicas: i % 7, image: `registry/app:${i}` } }),
      });
      if (!r.ok) throw new Error(`kv ${key}: ${r.status} ${await r.text()}`);
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

async function serverTime(session, requestUrl) {
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    const r = await fetch(requestUrl, { headers: { cookie: session.cookie, 'accept-encoding': 'gzip' } });
    times.push(performance.now() - t0);
    await r.arrayBuffer();
    if (!r.ok) throw new Error(`${requestUrl}: ${r.status}`);
  }
  return median(times);
}

async function main() {
  const session = await login();
  const t0 = Date.now();
  await fillKv(session);
  const fillS = (Date.now() - t0) / 1000;
  const port = 9300 + Math.floor(Math.random() * 500);
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--ignore-certificate-errors', `--remote-debugging-port=${port}`, '--window-size=1350,940'],
  });
  const host = new URL(url).hostname;
  const report = { url, keys: KEYS, kv_fill_s: fillS, runs: RUNS, pages: {} };
  for (const [name, path] of [['overview', '/ui/'], ['nodes', '/ui/nodes'], ['kv', '/ui/kv?bucket=bench']]) {
    const page = await browser.newPage();
    await page.setViewport({ width: 1350, height: 940 });
    await browser.setCookie(...session.pairs.map(([n, ...v]) => ({ name: n, value: v.join('='), domain: host, path: '/' })));
    await page.setCacheEnabled(false);
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    const requests = new Map();
    let bytes = 0;
    cdp.on('Network.requestWillBeSent', (e) => requests.set(e.requestId, e.request.url));
    cdp.on('Network.loadingFinished', (e) => { bytes += e.encodedDataLength; });
    const errors = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(url + path, { waitUntil: 'networkidle0' });
    const urls = [...new Set(requests.values())].filter((u) => u.startsWith(url));
    const times = {};
    for (const u of urls) times[u.slice(url.length)] = await serverTime(session, u);
    // axe-core, injected past the page's CSP (the page itself never allows it).
    const axePage = await browser.newPage();
    await axePage.setBypassCSP(true);
    await axePage.setViewport({ width: 1350, height: 940 });
    await axePage.goto(url + path, { waitUntil: 'networkidle0' });
    await axePage.evaluate(axeSource);
    const axe = await axePage.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    await axePage.close();
    const lh = await lighthouse(url + path, {
      port, output: 'json', logLevel: 'error', onlyCategories: ['performance', 'accessibility'],
      extraHeaders: { Cookie: session.cookie },
    }, desktop);
    const cats = lh.lhr.categories;
    report.pages[name] = {
      path,
      first_load_bytes: bytes,
      requests: urls.length,
      server_time_p50_ms: times,
      server_time_p50_ms_max: Math.max(...Object.values(times)),
      console_errors: errors,
      axe_violations: axe,
      axe_serious_or_critical: axe.filter((v) => v.impact === 'serious' || v.impact === 'critical').length,
      lighthouse_performance: Math.round(cats.performance.score * 100),
      lighthouse_accessibility: Math.round(cats.accessibility.score * 100),
      lighthouse_metrics: Object.fromEntries(['first-contentful-paint', 'largest-contentful-paint', 'total-blocking-time', 'cumulative-layout-shift', 'speed-index']
        .map((id) => [id, lh.lhr.audits[id].displayValue])),
      lighthouse_failed_accessibility_audits: cats.accessibility.auditRefs
        .filter((a) => a.weight > 0 && lh.lhr.audits[a.id].score !== null && lh.lhr.audits[a.id].score < 1).map((a) => a.id),
    };
    await page.close();
  }
  await browser.close();
  console.log(JSON.stringify(report, null, 2));
}

main().catch((e) => { console.error(e); process.exit(1); });
