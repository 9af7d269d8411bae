// Browser test of the dashboard (DESIGN.md §9): a real coordinator and two worker daemons on
// localhost, a short job submitted through the REST API, and Debian's Chromium driven by
// playwright-core. Asserts that the job view's loss chart and balance heatmap hold data from
// that job, that a checkpoint downloads, and that a bad spec in the submit form shows the
// field's error; then a small experiment (MoHGE against dense, two seeds each): its list entry,
// its page's comparison table, overlaid validation curves with each group's mean ± std and
// difficulty tables. Screenshots go to ARTIFACTS (argv[3]).
//
//   node tests/web/dashboard.test.mjs BUILD_BIN_DIR ARTIFACTS_DIR
import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const [binDir, artifacts] = process.argv.slice(2);
if (!binDir || !artifacts) {
  console.error('usage: node dashboard.test.mjs BUILD_BIN_DIR ARTIFACTS_DIR');
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(chromiumPath)) {
  console.error(`FAIL: no Chromium at ${chromiumPath} (deploy/install-deps.sh installs Debian's chromium)`);
  process.exit(1);
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mohge-web-'));
const children = [];
let failed = false;

function check(cond, what) {
  if (cond) {
    console.log('ok   ' + what);
  } else {
    console.log('FAIL ' + what);
    failed = true;
  }
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function start(name, args) {
  const log = fs.openSync(path.join(root, name + '.log'), 'a');
  const child = spawn(path.join(binDir, args[0]), args.slice(1), { stdio: ['ignore', log, log] });
  children.push(child);
  return child;
}

function tokenFile(file, n) {
  // llm.c token layout (storage/token_file.hpp): 256 int32 header, then uint16 tokens.
  const header = Buffer.alloc(1024);
  header.writeInt32LE(20240520, 0);
  header.writeInt32LE(1, 4);
  header.writeInt32LE(n, 8);
  const body = Buffer.alloc(2 * n);
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    body.writeUInt16LE((x >> 8) % 10 < 7 ? (i * 5) % 32 : (x >> 4) % 32, 2 * i);
  }
  fs.writeFileSync(file, Buffer.concat([header, body]));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(fn, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { /* not yet */ }
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(200);
  }
}

async function main() {
  fs.mkdirSync(path.join(root, 'data'));
  tokenFile(path.join(root, 'data/train.bin'), 4000);
  tokenFile(path.join(root, 'data/val.bin'), 4000);
  const http = await freePort();
  const control = await freePort();
  const url = `http://127.0.0.1:${http}`;
  start('coordinator', ['mohge-coordinator', '--http', `127.0.0.1:${http}`, '--control', `127.0.0.1:${control}`,
                        '--storage', root, '--heartbeat-timeout', '5']);
  await waitFor(async () => (await fetch(url + '/api/v1/healthz')).ok, 20000, 'the coordinator');
  const token = fs.readFileSync(path.join(root, 'admin.token'), 'utf8').trim();
  for (const w of ['cpu-0', 'cpu-1']) {
    start(w, ['mohge-worker', '--coordinator', `127.0.0.1:${control}`, '--storage', root, '--name', w, '--threads', '1']);
  }
  const auth = { Authorization: 'Bearer ' + token };
  await waitFor(async () => (await (await fetch(url + '/api/v1/cluster', { headers: auth })).json()).workers.online === 2,
                20000, 'two workers');

  const spec = {
    name: 'web-test',
    model: { vocab_size: 32, seq_len: 8, layers: 2, d_model: 16, heads: 2, init_std: 0.2,
             ffn: { kind: 'mohge', groups: 4, experts_per_group: 2, widths: [6, 10, 14, 18], top_groups: 2,
                    top_experts: 3, shared_experts: 1, shared_width: 8 } },
    data: { train: 'data/train.bin', val: 'data/val.bin' },
    train: { steps: 60, batch_size: 4, lr: 1e-2, warmup_steps: 1, eval_every: 20, eval_batches: 1, seed: 5 },
    resources: { workers: 2, device: 'cpu' },
    // Adaptive placement, re-planned every 10 steps: the balance view shows its moves.
    placement: 'all-size-adaptive', placement_every: 10, placement_min_gain: 0,
    checkpoint: { every: 20, keep: 2 },
  };
  const sub = await fetch(url + '/api/v1/jobs', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
                                                  body: JSON.stringify(spec) });
  check(sub.status === 201, 'the job is submitted (201)');
  const job = await sub.json();
  await waitFor(async () => (await (await fetch(`${url}/api/v1/jobs/${job.id}`, { headers: auth })).json()).state === 'SUCCEEDED',
                120000, 'the job to succeed');
  await waitFor(async () => (await (await fetch(`${url}/api/v1/jobs/${job.id}/checkpoints`, { headers: auth })).json()).checkpoints.length > 0,
                20000, 'a checkpoint');

  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 1800 } });
    const page = await context.newPage();
    const consoleErrors = [];
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    await page.goto(url + '/');
    // Sign in with the token (kept in the browser's storage).
    await page.fill('#token', token);
    await page.click('#login button');
    await page.waitForSelector('#jobs tr:nth-child(2)');
    check((await page.textContent('#jobs')).includes('web-test'), 'the jobs table lists the job');
    await page.screenshot({ path: path.join(artifacts, 'jobs.png'), fullPage: true });

    // The job view: charts hold this job's data.
    const t0 = Date.now();
    await page.goto(`${url}/#/jobs/${job.id}`);
    await page.waitForFunction(() => {
      const c = window.mohgeCharts && window.mohgeCharts.get('chart-loss');
      const h = window.mohgeCharts && window.mohgeCharts.get('chart-heatmap');
      return c && h && c.getOption().series[0].data.length > 0 && h.getOption().series[0].data.length > 0;
    }, null, { timeout: 15000 });
    console.log(`     job view rendered with data in ${Date.now() - t0} ms`);
    const loss = await page.evaluate(() => window.mohgeCharts.get('chart-loss').getOption().series[0].data);
    check(loss.length === 60 && loss[0][0] === 1 && loss[59][0] === 60, `the loss chart holds steps 1..60 of the job (${loss.length} points)`);
    const heat = await page.evaluate(() => window.mohgeCharts.get('chart-heatmap').getOption().series[0].data);
    check(heat.length === 2 * 4, `the balance heatmap holds 2 ranks × 4 groups (${heat.length} cells)`);
    const sum = heat.reduce((a, c) => a + c[2], 0);
    check(Math.abs(sum - 100) < 0.5, `its shares add up to 100 % (${sum.toFixed(2)})`);
    const flops = await page.evaluate(() => window.mohgeCharts.get('chart-flops').getOption().series[0].data);
    check(flops.length === 2 && flops.every((f) => f > 0), 'the per-rank FLOPs bars have both ranks');
    const imb = await page.evaluate(() => window.mohgeCharts.get('chart-imbalance').getOption().series.map((s) => ({
      name: s.name, points: s.data.length, moves: s.markLine && s.markLine.data ? s.markLine.data.length : 0 })));
    check(imb.length === 3 && imb.every((s) => s.points === 60),
          `imbalance over time next to static All-size and group-per-rank for the same routing (${imb.map((s) => s.name).join(' | ')})`);
    check(imb[0].moves > 0, `the adaptive placement's moves are marked (${imb[0].moves})`);
    const comm = await page.evaluate(() => {
      const o = window.mohgeCharts.get('chart-comm').getOption();
      return { title: o.title[0].text, data: o.series[0].data };
    });
    check(comm.data.length === 60 && comm.data.every((p) => p[1] >= 0 && p[1] <= 100),
          `the communication share of each step is charted in % (${comm.data.length} points)`);
    check(comm.title.includes('shm × 1'), `its title names the pair's transport (${comm.title})`);
    const map = await page.evaluate(() => [...document.querySelectorAll('#expert-map tr')].map((tr) => tr.textContent));
    check(map.length === 3, `the expert → rank map lists both ranks (${map.slice(1).join(' / ')})`);
    await page.waitForFunction(() => {
      const c = window.mohgeCharts.get('chart-diff-freq');
      return c && c.getOption().series[0].data.length > 0;
    }, null, { timeout: 10000 });
    const diff = await page.evaluate(() => ['chart-diff-freq', 'chart-diff-loss'].map((id) => window.mohgeCharts.get(id).getOption().series[0].data));
    const perBucket = {};
    for (const [, b, v] of diff[0]) perBucket[b] = (perBucket[b] || 0) + v;
    check(diff[0].length === 4 * 4 && Object.values(perBucket).every((v) => Math.abs(v - 100) < 1),
          `difficulty routing by frequency: 4 buckets × 4 groups, each bucket's shares add to 100 % (${diff[0].length} cells)`);
    check(diff[1].length === 4 * 4, 'difficulty routing by token loss: 4 buckets × 4 groups');
    check((await page.textContent('#events')).includes('SUCCEEDED'), 'the events list the end');
    await page.screenshot({ path: path.join(artifacts, 'job.png'), fullPage: true });

    // The checkpoint link downloads a safetensors file.
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 15000 }),
                                          page.click('a.download >> nth=-1')]);
    const saved = path.join(artifacts, 'checkpoint.safetensors');
    await download.saveAs(saved);
    const bytes = fs.readFileSync(saved);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
    check('model.embed_tokens.weight' in header, `the checkpoint downloads (${bytes.length} bytes, safetensors header parses)`);

    // A bad spec in the submit form shows the field's error next to it.
    await page.goto(url + '/#/jobs');
    await page.waitForSelector('#spec');
    const bad = { ...spec, model: { ...spec.model, layers: 'four' } };
    await page.fill('#spec', JSON.stringify(bad, null, 2));
    await page.click('#submit button');
    await page.waitForSelector('.field-error', { timeout: 10000 });
    const field = await page.getAttribute('.field-error', 'data-field');
    const text = await page.textContent('#submit-error');
    check(field === 'model.layers' && text.includes('model.layers'), `the form shows the field error: "${text.trim()}"`);
    await page.screenshot({ path: path.join(artifacts, 'submit-error.png'), fullPage: true });

    // An experiment: the same tiny model, MoHGE against a dense FFN, two seeds each, two jobs
    // at a time. Its page shows the comparison table, every job's validation curve with each
    // group's mean ± std, and the difficulty-routing tables of the grouped model.
    const { name: _name, placement_every: _every, placement_min_gain: _gain, ...base } = spec;
    const expBase = { ...base, train: { ...spec.train, steps: 40, eval_every: 10 }, resources: { workers: 1, device: 'cpu' },
                      placement: 'all-size', checkpoint: { every: 0, keep: 1 } };
    const expSub = await fetch(url + '/api/v1/experiments', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'web-exp', description: 'MoHGE against a dense FFN, 2 seeds each', base: expBase,
                             variants: [{ name: 'mohge' }, { name: 'dense', set: { 'model.ffn': { kind: 'dense', width: 24 } } }],
                             grid: { 'train.seed': [1, 2] }, max_parallel: 2 }) });
    check(expSub.status === 201, `the experiment is submitted (${expSub.status})`);
    const exp = await expSub.json();
    const getExp = async (id) => (await fetch(`${url}/api/v1/experiments/${id}`, { headers: auth })).json();
    // Metrics may land a moment after the last state change: wait for both groups' two seeds.
    const expDone = await waitFor(async () => {
      const e = await getExp(exp.id);
      return e.state === 'SUCCEEDED' && e.groups.length === 2 && e.groups.every((g) => g.val_loss.n === 2) && e;
    }, 180000, 'the experiment to succeed');
    check(expDone.jobs.length === 4, `the experiment ran its 4 jobs (${expDone.jobs.map((j) => j.name).join(', ')})`);

    await page.goto(url + '/#/experiments');
    await page.waitForFunction(() => document.querySelector('#experiments') && document.querySelector('#experiments').textContent.includes('web-exp'),
                               null, { timeout: 10000 });
    const expRow = await page.evaluate((id) => {
      const a = document.querySelector(`#experiments a[href="#/experiments/${id}"]`);
      return a ? a.closest('tr').textContent : '';
    }, exp.id);
    check(expRow.includes('web-exp') && expRow.includes('SUCCEEDED') && expRow.includes('4 SUCCEEDED'),
          `the experiments table lists it with its jobs by state: "${expRow.replace(/\s+/g, ' ').trim()}"`);

    // A bad point in the submit form: the API's error names the spec field and the point.
    await page.fill('#exp-spec', JSON.stringify({ name: 'web-exp-bad', base: expBase,
      variants: [{ name: 'mohge' }, { name: 'dense', set: { 'model.ffn': { kind: 'dense', width: 'wide' } } }] }, null, 2));
    await page.click('#exp-submit button');
    await page.waitForSelector('#exp-submit-error .field-error', { timeout: 10000 });
    const expField = await page.getAttribute('#exp-submit-error .field-error', 'data-field');
    const expError = await page.textContent('#exp-submit-error');
    check(expField === 'model.ffn.width' && expError.includes('variant "dense"'), `the experiment form shows the bad point's field: "${expError.trim()}"`);

    await page.click(`#experiments a[href="#/experiments/${exp.id}"]`);
    await page.waitForFunction(() => {
      const c = window.mohgeCharts && window.mohgeCharts.get('chart-exp-val');
      const jobs = c ? c.getOption().series.filter((s) => String(s.id).startsWith('job:')) : [];
      return jobs.length > 0 && jobs.every((s) => s.data.length > 0);
    }, null, { timeout: 15000 });
    const overlay = await page.evaluate(() => window.mohgeCharts.get('chart-exp-val').getOption().series.map((s) => ({
      id: String(s.id), name: s.name, data: s.data })));
    const jobCurves = overlay.filter((s) => s.id.startsWith('job:'));
    check(jobCurves.length === 4 && jobCurves.every((s) => s.data.map((d) => d[0]).join() === '10,20,30,40'),
          `the overlay holds every job's validation curve, evaluations at steps 10..40 (${jobCurves.map((s) => s.data.length).join(', ')} points)`);
    check(expDone.jobs.every((j) => {
      const s = jobCurves.find((c) => c.id === 'job:' + j.id);
      return s && s.name === j.experiment.group && s.data[s.data.length - 1][1] === j.figures.val_loss;
    }), "each job's curve is coloured by its group and ends at the job's final val loss");
    const meansMatch = expDone.groups.map((g) => {
      const s = overlay.find((c) => c.id === 'mean:' + g.group);
      return !!s && s.data.map((d) => d[0]).join() === g.val_curve.steps.join() &&
             s.data.every((d, k) => d[1] === g.val_curve.mean[k]);
    });
    check(meansMatch.length === 2 && meansMatch.every(Boolean) && expDone.groups.every((g) => overlay.some((c) => c.id === 'band:' + g.group)),
          `a mean line (the API's val_curve.mean) and a ± std band per group (${expDone.groups.map((g) => g.group).join(', ')})`);
    const cmp = await page.evaluate(() => [...document.querySelectorAll('#exp-table tr[data-group]')].map((tr) => ({
      group: tr.dataset.group, seeds: tr.querySelector('.seeds').textContent, text: tr.textContent.replace(/\s+/g, ' ') })));
    check(cmp.length === 2 && cmp.every((r) => r.seeds === '2/2' && r.text.includes('±')) &&
          cmp.every((r) => r.text.includes(expDone.groups.find((g) => g.group === r.group).val_loss.mean.toFixed(4))),
          `the comparison table has both groups, 2/2 seeds, mean ± std (${cmp.map((r) => r.text.trim()).join(' | ')})`);
    const diffTables = await page.evaluate(() => [...document.querySelectorAll('#exp-difficulty table.diff')].map((t) => ({
      group: t.dataset.group, kind: t.dataset.kind,
      rows: [...t.querySelectorAll('tr')].slice(1).map((tr) => [...tr.querySelectorAll('td')].map((td) => Number(td.textContent))) })));
    const mohgeFreq = diffTables.find((t) => t.group === 'mohge' && t.kind === 'frequency');
    check(diffTables.filter((t) => t.group === 'mohge').length === 2 && !diffTables.some((t) => t.group === 'dense'),
          'two difficulty tables for the mohge group, none for dense');
    check(mohgeFreq && mohgeFreq.rows.length === 4 && mohgeFreq.rows.every((r) => r.length === 4 && Math.abs(r.reduce((a, x) => a + x, 0) - 100) < 0.5),
          'its frequency table: 4 buckets × 4 groups, each bucket adds up to 100 %');
    await page.screenshot({ path: path.join(artifacts, 'experiment.png'), fullPage: true });

    // A job of the experiment links back to it.
    await page.goto(`${url}/#/jobs/${expDone.jobs[0].id}`);
    await page.waitForSelector('#job-experiment', { timeout: 10000 });
    check(await page.getAttribute('#job-experiment', 'href') === `#/experiments/${exp.id}`, "a job's page links to its experiment");

    // An experiment whose description is markup (it cannot run: 8 workers): shown as text, and
    // canceled from its page.
    const hostileExp = await fetch(url + '/api/v1/experiments', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'web-exp-queued', description: '<img src=x onerror="window.__xss=7">',
                             base: { ...expBase, resources: { workers: 8, device: 'cpu' },
                                     model: { ...spec.model, ffn: { ...spec.model.ffn, experts_per_group: 8 } } } }) });
    check(hostileExp.status === 201, 'an experiment described with markup is queued');
    const hostile = await hostileExp.json();
    await page.goto(url + '/#/experiments');
    await page.waitForFunction(() => document.querySelector('#experiments') && document.querySelector('#experiments').textContent.includes('web-exp-queued'),
                               null, { timeout: 10000 });
    check(await page.evaluate(() => document.querySelector('#experiments').textContent.includes('<img src=x onerror="window.__xss=7">') &&
                                    document.querySelectorAll('#view img').length === 0 && window.__xss === undefined),
          'the experiments table shows the hostile description as text');
    await page.screenshot({ path: path.join(artifacts, 'experiments.png'), fullPage: true });
    await page.click(`#experiments a[href="#/experiments/${hostile.id}"]`);
    await page.waitForFunction(() => document.querySelector('#exp-title') && document.querySelector('#exp-title').textContent.includes('QUEUED'),
                               null, { timeout: 10000 });
    check(await page.evaluate(() => document.querySelector('#exp-description').textContent === '<img src=x onerror="window.__xss=7">' &&
                                    document.querySelectorAll('#view img').length === 0 && window.__xss === undefined),
          "the experiment's page shows it as text too");
    await page.click('#exp-cancel');
    await page.waitForFunction(() => document.querySelector('#exp-title').textContent.includes('CANCELED') &&
                                     document.querySelector('#exp-cancel').hidden, null, { timeout: 10000 });
    check((await getExp(hostile.id)).state === 'CANCELED', 'its Cancel button cancels it');

    // Hostile values: a worker that has the join secret registers with markup as its host and
    // its GPU's model, and a user queues a job whose name is markup. Both must render as text, and nothing runs.
    const markup = (n) => `<img src=x onerror="window.__xss=${n}">`;
    const secret = fs.readFileSync(path.join(root, 'join.secret'), 'utf8').trim();
    const frame = (m) => { const b = Buffer.from(JSON.stringify(m)); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); };
    const evil = net.connect(control, '127.0.0.1');
    evil.on('error', () => {});
    evil.write(frame({ type: 'hello', protocol: 2, name: 'evil-0', host: markup(1), backend: 'cpu', secret,
                       instance: 'evil', version: markup(3), threads: 1, running: [],
                       devices: [{ index: 0, kind: 'cuda', name: markup(6), memory_mb: 81920 }] }));
    // Its heartbeats carry markup where numbers belong (the coordinator refuses them and closes
    // the connection; the worker's hello, with its hostile host, stays on record).
    const beat = setInterval(() => evil.write(frame({ type: 'heartbeat', load: { load1: 0.5, cores: markup(5) },
                                                      running: [{ job: markup(4), attempt: 1, rank: 0, world: 1, step: 0 }] })), 500);
    // A well-behaved GPU worker: its heartbeats carry the GPU's utilisation and memory (NVML).
    const gpuWorker = net.connect(control, '127.0.0.1');
    gpuWorker.on('error', () => {});
    gpuWorker.write(frame({ type: 'hello', protocol: 2, name: 'gpu-1', host: 'node-gpu', backend: 'cuda', secret,
                            instance: 'gpu-1', version: 'test', threads: 1, running: [],
                            devices: [{ index: 0, kind: 'cuda', name: 'NVIDIA H200', memory_mb: 143771 }] }));
    const gpuBeat = setInterval(() => gpuWorker.write(frame({ type: 'heartbeat', running: [],
      load: { load1: 1.0, cores: 16, gpus: [{ index: 0, utilization_pct: 87, memory_used_mb: 61440, memory_total_mb: 143771 }] } })), 500);
    const queued = await fetch(url + '/api/v1/jobs', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
                                                       body: JSON.stringify({ ...spec, name: markup(2), resources: { workers: 8, device: 'cpu' },
                                                                              model: { ...spec.model, ffn: { ...spec.model.ffn, experts_per_group: 8 } } }) });
    check(queued.status === 201, 'a job named with markup is queued');

    // The cluster view shows the workers.
    await page.goto(url + '/#/cluster');
    await page.waitForFunction(() => document.querySelector('#workers') && document.querySelector('#workers').textContent.includes('cpu-1') &&
                                     document.querySelector('#workers').textContent.includes('evil-0'));
    check(true, 'the cluster view lists the workers');
    const shown = await page.evaluate(() => ({
      workers: document.querySelector('#workers').textContent,
      queue: document.querySelector('#queue').textContent,
      images: document.querySelectorAll('#view img').length,
      xss: window.__xss,
    }));
    check(shown.workers.includes(markup(1)) && shown.queue.includes(markup(2)),
          'hostile host and job name are shown as text');
    check(shown.workers.includes(markup(6)) && shown.workers.includes('80 GiB'),
          "a GPU's announced model (hostile here) and memory are shown, as text");
    check(shown.images === 0 && shown.xss === undefined, 'no hostile markup became an element or ran');
    await page.waitForFunction(() => document.querySelector('#workers').textContent.includes('87% busy'), null, { timeout: 10000 });
    const gpuText = await page.evaluate(() => document.querySelector('#workers').textContent);
    check(gpuText.includes('87% busy, 60.0 of 140 GiB in use'), "a GPU worker's heartbeat figures are shown (87% busy, 60.0 of 140 GiB in use)");
    const workersApi = await (await fetch(url + '/api/v1/workers', { headers: auth })).text();
    check(!workersApi.includes('__xss=4') && !workersApi.includes('__xss=5'), 'hostile heartbeat values never reach the API');
    await page.goto(url + '/#/jobs');
    await page.waitForFunction(() => document.querySelector('#jobs') && document.querySelector('#jobs').textContent.includes('onerror'));
    check(await page.evaluate(() => document.querySelectorAll('#view img').length === 0 && window.__xss === undefined),
          'the jobs table shows the hostile name as text');
    const csp = (await fetch(url + '/')).headers.get('content-security-policy') || '';
    check(csp.includes("script-src 'self'"), `static files carry a Content-Security-Policy (${csp})`);
    await page.goto(url + '/#/cluster');
    await page.waitForFunction(() => document.querySelector('#workers') && document.querySelector('#workers').textContent.includes('evil-0'));
    await page.screenshot({ path: path.join(artifacts, 'cluster.png'), fullPage: true });
    clearInterval(beat);
    clearInterval(gpuBeat);
    evil.destroy();
    gpuWorker.destroy();
    check(consoleErrors.length === 0, 'no errors in the page' + (consoleErrors.length ? ': ' + consoleErrors.join('; ') : ''));

    // A long job: 100,000 steps of every metric, seeded into the database while the
    // coordinator is stopped. Its page renders from server-side downsampled series.
    for (const c of children) c.kill('SIGTERM');
    await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r() : c.on('exit', r)))));
    children.length = 0;
    const seeded = spawnSync(path.join(binDir, 'seed_metrics'), [path.join(root, 'mohge.db'), '100000'], { encoding: 'utf8' });
    check(seeded.status === 0, 'seeded a job with 100,000 steps of metrics ' + (seeded.stderr || '').trim());
    const longId = Number(seeded.stdout.trim());
    start('coordinator2', ['mohge-coordinator', '--http', `127.0.0.1:${http}`, '--control', `127.0.0.1:${control}`,
                           '--storage', root]);
    await waitFor(async () => (await fetch(url + '/api/v1/healthz')).ok, 20000, 'the coordinator again');
    const times = [];
    for (let i = 0; i < 3; i++) {
      if (i === 0) await page.goto(`${url}/#/jobs/${longId}`);
      const t1 = Date.now();
      await page.reload();  // a fresh page load: HTML, scripts, REST calls, charts
      await page.waitForFunction(() => {
        const c = window.mohgeCharts && window.mohgeCharts.get('chart-loss');
        const h = window.mohgeCharts && window.mohgeCharts.get('chart-heatmap');
        return c && h && c.getOption().series[0].data.length > 0 && h.getOption().series[0].data.length > 0;
      }, null, { timeout: 20000 });
      times.push(Date.now() - t1);
    }
    const longLoss = await page.evaluate(() => window.mohgeCharts.get('chart-loss').getOption().series[0].data);
    check(longLoss.length > 100 && longLoss.length <= 1000 && longLoss[longLoss.length - 1][0] === 100000,
          `the 100,000-step job's loss chart holds ${longLoss.length} downsampled points up to step 100000`);
    console.log(`     100,000-step job page: load to charts with data in ${times.join(', ')} ms`);
    fs.writeFileSync(path.join(artifacts, 'long-job-render-ms.txt'), times.join('\n') + '\n');
    await page.screenshot({ path: path.join(artifacts, 'long-job.png'), fullPage: true });
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  console.log('FAIL ' + e.message);
  failed = true;
} finally {
  for (const c of children) c.kill('SIGTERM');
  await sleep(500);
  if (!failed) fs.rmSync(root, { recursive: true, force: true });
  else console.log('logs kept in ' + root);
}
console.log(failed ? 'FAILED' : 'PASSED');
process.exit(failed ? 1 : 0);
