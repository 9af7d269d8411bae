// The MoHGE Train dashboard (DESIGN.md §9). It reads only the public REST API (/api/v1, see
// api/openapi.yaml) with the user's token, kept in the browser's localStorage. Charts are
// Apache ECharts (served by the coordinator from vendor/, no CDN). Views poll with `since`
// cursors and update in place; metric series come downsampled by the server (max_points).

const API = '/api/v1';
const POLL_MS = 2000;
const charts = new Map();  // element id → echarts instance (window.mohgeCharts for tests)
window.mohgeCharts = charts;
let timer = null;

// ---- REST ------------------------------------------------------------------------------
function token() { return localStorage.getItem('mohge.token') || ''; }

async function api(path, options = {}) {
  const headers = Object.assign({ 'Authorization': 'Bearer ' + token() }, options.headers || {});
  const resp = await fetch(API + path, Object.assign({}, options, { headers }));
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!resp.ok) {
    const err = (body && body.error) || { code: 'http_' + resp.status, message: text };
    const e = new Error(err.message);
    e.status = resp.status; e.code = err.code; e.field = err.field;
    throw e;
  }
  return body;
}

// ---- helpers ---------------------------------------------------------------------------
const $ = (sel, root = document) => root.querySelector(sel);
function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function age(t) {
  if (!t) return '';
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 90) return Math.round(s) + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return Math.round(s / 86400) + ' d';
}
function fmt(x, digits = 4) { return x === undefined || x === null ? '–' : Number(x).toFixed(digits); }
function stateSpan(s) { return `<span class="state ${esc(s)}">${esc(s)}</span>`; }
function progressBar(p) {
  const f = Math.max(0, Math.min(1, (p && p.fraction) || 0));
  return `<span class="bar"><span style="width:${(100 * f).toFixed(1)}%"></span></span> ` +
         `<span class="muted">${esc(p ? p.step : 0)}/${esc(p ? p.steps : 0)}</span>`;
}
function showError(e) {
  const v = $('#view');
  if (e.status === 401) {
    v.innerHTML = '<p class="error">This needs an API token: paste it above (the first admin token is in STORAGE/admin.token).</p>';
  } else {
    v.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}
function chart(id, option) {
  const el = document.getElementById(id);
  if (!el) return null;
  let c = charts.get(id);
  if (!c || c.getDom() !== el) {
    c = echarts.init(el);
    charts.set(id, c);
  }
  c.setOption(option, true);
  return c;
}
function lineOption(title, series, yName = '') {
  return {
    title: { text: title, textStyle: { fontSize: 13 } },
    tooltip: { trigger: 'axis' },
    legend: { top: 22, left: 'center', type: 'scroll' },
    grid: { left: 72, right: 24, top: 56, bottom: 28 },
    xAxis: { type: 'value', name: 'step', nameGap: 4, min: 'dataMin' },
    yAxis: { type: 'value', scale: true, name: yName },
    series: series.map(s => Object.assign({ type: 'line', showSymbol: false }, s)),
  };
}
function pairs(m) { return m ? m.steps.map((s, i) => [s, m.values[i]]) : []; }

// ---- router ----------------------------------------------------------------------------
function route() {
  if (timer) { clearTimeout(timer); timer = null; }
  charts.forEach(c => c.dispose());
  charts.clear();
  const h = location.hash || '#/jobs';
  document.querySelectorAll('header nav a').forEach(a => a.classList.toggle('active', h.startsWith(a.getAttribute('href'))));
  let m;
  if ((m = h.match(/^#\/jobs\/(\d+)$/))) return jobView(Number(m[1]));
  if (h.startsWith('#/cluster')) return clusterView();
  return jobsView();
}
function poll(fn) { timer = setTimeout(async () => { await fn(); }, POLL_MS); }

// ---- cluster view ----------------------------------------------------------------------
async function clusterView() {
  const v = $('#view');
  if (!v.dataset.view || v.dataset.view !== 'cluster') {
    v.dataset.view = 'cluster';
    v.innerHTML = `<h2>Cluster</h2><div class="kv" id="cluster-kv"></div>
      <h3>Workers</h3><table id="workers"></table>
      <h3>Queue</h3><table id="queue"></table>`;
  }
  try {
    const c = await api('/cluster');
    $('#cluster-kv').innerHTML =
      `<div><span>workers online</span>${esc(c.workers.online)} of ${esc(c.workers.total)}</div>` +
      `<div><span>busy</span>${esc(c.workers.busy)}</div>` +
      Object.entries(c.jobs).filter(([, n]) => n > 0).map(([s, n]) => `<div><span>${esc(s)}</span>${n}</div>`).join('');
    $('#workers').innerHTML = '<tr><th>worker</th><th>state</th><th>device</th><th>threads</th><th>job / rank</th><th>load</th><th>memory</th><th>last seen</th></tr>' +
      c.worker_list.map(w => {
        const r = (w.running || []).map(x => `<a href="#/jobs/${encodeURIComponent(x.job)}">job ${esc(x.job)}</a> rank ${esc(x.rank)}/${esc(x.world)} step ${esc(x.step)}`).join('<br>');
        // A GPU's figures from the last heartbeat (NVML): utilisation and memory in use.
        const gpuLoad = d => ((w.load && w.load.gpus) || []).find(g => g.index === d.index);
        const dev = (w.devices || []).map(d => `${esc(d.kind || w.backend)}:${esc(d.index)}` +
          (d.name ? ` <span class="muted">${esc(d.name)}</span>` : '') +
          (d.memory_mb ? ` <span class="muted">${esc((Number(d.memory_mb) / 1024).toFixed(0))} GiB</span>` : '') +
          (gpuLoad(d) ? `<div class="gpu-load">${esc(Number(gpuLoad(d).utilization_pct).toFixed(0))}% busy, ` +
            `${esc((Number(gpuLoad(d).memory_used_mb) / 1024).toFixed(1))} of ` +
            `${esc((Number(gpuLoad(d).memory_total_mb) / 1024).toFixed(0))} GiB in use</div>` : '')).join(', ');
        const load = w.load && w.load.load1 !== undefined ? `${Number(w.load.load1).toFixed(2)} / ${esc(w.load.cores)} cores` : '';
        const mem = w.load && w.load.rss_bytes ? (Number(w.load.rss_bytes) / 2 ** 20).toFixed(0) + ' MiB' : '';
        return `<tr><td>${esc(w.name)}<div class="muted">${esc(w.host)}</div></td><td>${esc(w.state)}</td><td>${dev}</td>` +
               `<td>${esc(w.threads || 'all')}</td><td>${r || '<span class="muted">idle</span>'}</td><td>${load}</td><td>${mem}</td><td>${age(w.last_seen)}</td></tr>`;
      }).join('');
    $('#queue').innerHTML = '<tr><th>#</th><th>job</th><th>user</th><th>priority</th><th>workers</th><th>why it waits</th></tr>' +
      (c.queue.length ? c.queue.map(q => `<tr><td>${esc(q.queue_position)}</td><td><a href="#/jobs/${encodeURIComponent(q.id)}">${esc(q.id)} ${esc(q.name)}</a></td><td>${esc(q.user)}</td>` +
        `<td>${esc(q.priority)}</td><td>${esc(q.workers)}</td><td>${esc(q.pending_reason)}</td></tr>`).join('')
        : '<tr><td colspan="6" class="muted">nothing is waiting</td></tr>');
  } catch (e) { return showError(e); }
  poll(clusterView);
}

// ---- jobs view -------------------------------------------------------------------------
async function jobsView() {
  const v = $('#view');
  if (v.dataset.view !== 'jobs') {
    v.dataset.view = 'jobs';
    v.innerHTML = `<h2>Jobs</h2><table id="jobs"></table>
      <h3>Submit a job</h3>
      <form id="submit"><textarea id="spec" spellcheck="false"></textarea>
      <div id="submit-error"></div><button type="submit">Submit</button> <span id="submit-ok"></span></form>`;
    fetch('examples/brown-mohge.json').then(r => r.text()).then(t => {
      const el = $('#spec');
      if (el && !el.value) el.value = t;  // the view may have changed meanwhile
    });
    $('#submit').addEventListener('submit', submitJob);
  }
  try {
    const r = await api('/jobs?limit=100');
    $('#jobs').innerHTML = '<tr><th>id</th><th>name</th><th>state</th><th>owner</th><th>progress</th><th>workers</th><th>age</th><th>reason</th></tr>' +
      (r.jobs.length ? r.jobs.map(j => `<tr><td><a href="#/jobs/${encodeURIComponent(j.id)}">${esc(j.id)}</a></td><td><a href="#/jobs/${encodeURIComponent(j.id)}">${esc(j.name)}</a></td>` +
        `<td>${stateSpan(j.state)}</td><td>${esc(j.user)}</td><td>${progressBar(j.progress)}</td><td>${esc(j.workers)}</td>` +
        `<td>${age(j.submitted_at)}</td><td class="muted">${esc(j.pending_reason ? '#' + j.queue_position + ' ' + j.pending_reason : j.reason)}</td></tr>`).join('')
        : '<tr><td colspan="8" class="muted">no jobs yet</td></tr>');
  } catch (e) { return showError(e); }
  poll(jobsView);
}

async function submitJob(ev) {
  ev.preventDefault();
  const out = $('#submit-error');
  out.innerHTML = '';
  $('#submit-ok').textContent = '';
  let spec;
  try { spec = JSON.parse($('#spec').value); } catch (e) {
    out.innerHTML = `<div class="field-error" data-field="body">the spec is not valid JSON: ${esc(e.message)}</div>`;
    return;
  }
  try {
    const job = await api('/jobs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(spec) });
    $('#submit-ok').innerHTML = `submitted <a href="#/jobs/${job.id}">job ${job.id}</a> (${esc(job.state)})`;
  } catch (e) {
    // The API names the offending field: show it next to the spec with the rule it breaks.
    const lines = String(e.message).split('\n');
    out.innerHTML = `<div class="field-error" data-field="${esc(e.field || '')}">` +
      (e.field ? `<code>${esc(e.field)}</code> ` : '') + esc(lines[0]) + '</div>' +
      lines.slice(1).map(l => `<div class="field-error">${esc(l)}</div>`).join('');
  }
}

// ---- job view --------------------------------------------------------------------------
// The series the job view charts (the API downsamples each to max_points).
const CHARTED = ['loss', 'val_loss', 'aux_group', 'aux_expert', 'tokens_per_s', 'imbalance',
                 'imbalance_group_per_rank', 'imbalance_all_size', 'placement.experts_moved',
                 'activated_expert_params', 'group_share.*'];

async function jobView(id) {
  const v = $('#view');
  const key = 'job-' + id;
  let st = v._state;
  if (v.dataset.view !== key) {
    v.dataset.view = key;
    st = v._state = { events: 0, logs: 0, layer: 'all' };
    v.innerHTML = `<h2 id="job-title">Job ${esc(id)}</h2><div class="kv" id="job-kv"></div>
      <div class="grid">
        <div class="card"><div id="chart-loss" class="chart"></div></div>
        <div class="card"><div id="chart-aux" class="chart"></div></div>
        <div class="card"><div id="chart-tps" class="chart"></div></div>
        <div class="card"><div id="chart-active" class="chart"></div></div>
      </div>
      <h3>GPU balance <span class="muted" id="balance-step"></span>
        <select id="layer"><option value="all">all layers (mean)</option></select></h3>
      <div class="grid">
        <div class="card"><div id="chart-heatmap" class="chart"></div></div>
        <div class="card"><div id="chart-flops" class="chart"></div></div>
        <div class="card"><div id="chart-imbalance" class="chart"></div></div>
        <div class="card"><div id="chart-groups" class="chart"></div></div>
      </div>
      <div id="expert-map"></div>
      <h3>Difficulty routing <span class="muted" id="difficulty-step"></span></h3>
      <div class="grid">
        <div class="card"><div id="chart-diff-freq" class="chart"></div></div>
        <div class="card"><div id="chart-diff-loss" class="chart"></div></div>
      </div>
      <h3>Checkpoints</h3><table id="checkpoints"></table>
      <h3>Events</h3><table id="events"><tr><th>time</th><th>state</th><th>reason</th></tr></table>
      <h3>Logs</h3><pre class="log" id="logs"></pre>`;
    $('#layer').addEventListener('change', e => { st.layer = e.target.value; drawRouting(st); });
  }
  try {
    const [job, metrics, routing, cks, ev, logs] = await Promise.all([
      api(`/jobs/${id}`),
      api(`/jobs/${id}/metrics?max_points=1000&names=${CHARTED.join(',')}`),
      api(`/jobs/${id}/routing`),
      api(`/jobs/${id}/checkpoints`),
      api(`/jobs/${id}/events?since=${st.events}`),
      api(`/jobs/${id}/logs?since=${st.logs}`),
    ]);
    if (v.dataset.view !== key) return;  // the user moved on while the requests ran
    const p = job.progress || {};
    $('#job-title').innerHTML = `Job ${esc(job.id)}: ${esc(job.name)} ${stateSpan(job.state)}`;
    $('#job-kv').innerHTML = [
      ['owner', esc(job.user)], ['progress', progressBar(p)], ['loss', fmt(p.loss)], ['validation loss', fmt(p.val_loss)],
      ['tokens/s', fmt(p.tokens_per_s, 0)], ['imbalance', fmt(p.imbalance, 3)], ['workers', esc((job.assigned || []).join(', ') || job.workers)],
      ['restarts', `${esc(job.restarts)}/${esc(job.max_restarts)}`],
      ['reason', esc(job.pending_reason ? `#${job.queue_position} ${job.pending_reason}` : job.reason)],
    ].map(([k, x]) => `<div><span>${k}</span>${x}</div>`).join('');
    drawMetrics(metrics.metrics);
    st.routing = routing;
    drawRouting(st);
    $('#checkpoints').innerHTML = '<tr><th>step</th><th>size</th><th>created</th><th></th></tr>' +
      (cks.checkpoints.length ? cks.checkpoints.map(c => `<tr><td>${esc(c.step)}</td><td>${(Number(c.bytes) / 2 ** 20).toFixed(1)} MiB</td>` +
        `<td>${age(c.created_at)} ago</td><td><a href="#" class="download" data-id="${esc(c.id)}" data-step="${esc(c.step)}">download safetensors</a></td></tr>`).join('')
        : '<tr><td colspan="4" class="muted">none yet</td></tr>');
    document.querySelectorAll('a.download').forEach(a => a.addEventListener('click', download));
    const evTable = $('#events');
    for (const e of ev.events) {
      evTable.insertAdjacentHTML('beforeend', `<tr><td>${new Date(e.at * 1000).toLocaleString()}</td><td>${stateSpan(e.to)}</td><td>${esc(e.reason)}</td></tr>`);
    }
    st.events = ev.next;
    const pre = $('#logs');
    for (const l of logs.logs) pre.textContent += `${new Date(l.at * 1000).toLocaleTimeString()} [rank ${l.rank}] ${l.line}\n`;
    if (logs.logs.length) pre.scrollTop = pre.scrollHeight;
    st.logs = logs.next;
    // Difficulty routing of the latest evaluation (group shares per token bucket).
    const val = metrics.metrics.val_loss;
    if (!val || !val.steps.length) $('#difficulty-step').textContent = '(after the first evaluation)';
    if (val && val.steps.length) {
      const last = val.steps[val.steps.length - 1];
      const d = await api(`/jobs/${id}/metrics?names=difficulty.*&since=${last - 1}&max_points=1`);
      if (v.dataset.view === key) drawDifficulty(d.metrics, last);
    }
  } catch (e) { return showError(e); }
  poll(() => jobView(id));
}

function drawMetrics(m) {
  chart('chart-loss', lineOption('Loss (train, validation)', [
    { name: 'train', data: pairs(m.loss) }, { name: 'validation', data: pairs(m.val_loss), showSymbol: true }]));
  chart('chart-aux', lineOption('Auxiliary losses', [
    { name: 'L_G (group)', data: pairs(m.aux_group) }, { name: 'L_E (expert)', data: pairs(m.aux_expert) }]));
  chart('chart-tps', lineOption('Tokens per second', [{ name: 'tokens/s', data: pairs(m.tokens_per_s) }]));
  chart('chart-active', lineOption('Activated expert parameters per token', [
    { name: 'activated', data: pairs(m.activated_expert_params) }]));
  // An adaptive run also shows static All-size for the same routing, and marks its moves.
  const moves = pairs(m['placement.experts_moved']).map(p => ({ xAxis: p[0], label: { show: false } }));
  const imbSeries = [
    { name: 'this placement', data: pairs(m.imbalance), markLine: moves.length ? { symbol: 'none', data: moves, lineStyle: { type: 'dotted' } } : undefined },
    { name: 'group-per-rank (same routing)', data: pairs(m.imbalance_group_per_rank), lineStyle: { type: 'dashed' } }];
  if (m.imbalance_all_size && m.imbalance_all_size.steps.length)
    imbSeries.splice(1, 0, { name: 'static All-size (same routing)', data: pairs(m.imbalance_all_size), lineStyle: { type: 'dashed' } });
  chart('chart-imbalance', lineOption('Rank imbalance (max/mean expert FLOPs)', imbSeries));
  const groups = Object.keys(m).filter(k => k.startsWith('group_share.')).sort((a, b) => Number(a.slice(12)) - Number(b.slice(12)));
  const opt = lineOption('Group share over time (Fig. 3)', groups.map(g => ({ name: 'group ' + g.slice(12), data: pairs(m[g]) })));
  opt.yAxis = { type: 'value', min: 0 };
  chart('chart-groups', opt);
}

function drawRouting(st) {
  const r = st.routing;
  if (!r || r.step === null || r.step === undefined) {
    $('#balance-step').textContent = '(no routing yet)';
    return;
  }
  $('#balance-step').textContent = `step ${r.step}`;
  const sel = $('#layer');
  if (sel.options.length !== 1 + r.layers.length) {
    sel.innerHTML = '<option value="all">all layers (mean)</option>' + r.layers.map((l, i) => `<option value="${i}">layer ${esc(l.layer ?? i)}</option>`).join('');
    sel.value = st.layer;
  }
  // Share of token-expert assignments per rank and group (the paper's Table 3).
  let share = r.token_share, flops = r.flops, imb = r.imbalance, cf = r.imbalance_group_per_rank;
  if (st.layer !== 'all' && r.layers[Number(st.layer)]) {
    const l = r.layers[Number(st.layer)];
    const total = l.ranks.reduce((a, k) => a + k.tokens.reduce((x, y) => x + y, 0), 0) || 1;
    share = l.ranks.map(k => k.tokens.map(t => t / total));
    flops = l.ranks.map(k => k.flops);
    imb = l.imbalance; cf = l.imbalance_group_per_rank;
  }
  const data = [];
  let max = 0;
  share.forEach((row, rank) => row.forEach((v, g) => { data.push([g, rank, +(100 * v).toFixed(2)]); max = Math.max(max, 100 * v); }));
  chart('chart-heatmap', {
    title: { text: 'Token share by rank × group (%)', textStyle: { fontSize: 13 } },
    tooltip: { formatter: p => `rank ${p.value[1]}, group ${p.value[0]}: ${p.value[2]} %` },
    grid: { left: 60, right: 16, top: 36, bottom: 60 },
    xAxis: { type: 'category', name: 'group', data: (share[0] || []).map((_, g) => String(g)) },
    yAxis: { type: 'category', name: 'rank', data: share.map((_, k) => String(k)) },
    visualMap: { min: 0, max: Math.max(max, 1e-6), calculable: true, orient: 'horizontal', left: 'center', bottom: 0, itemHeight: 120 },
    series: [{ type: 'heatmap', data, label: { show: share.length * (share[0] || []).length <= 64 } }],
  });
  // The expert → rank map of the shown layer (layer 0 for the mean): which experts each rank
  // holds now (an adaptive placement changes it while training).
  const mapLayer = r.layers[st.layer === 'all' ? 0 : Number(st.layer)];
  const ranksOf = mapLayer && Array.isArray(mapLayer.ranks) ? mapLayer.ranks : [];
  $('#expert-map').innerHTML = ranksOf.some(k => Array.isArray(k.experts))
    ? `<table class="expert-map"><tr><th>rank</th><th>experts held (layer ${esc(mapLayer.layer ?? 0)})</th></tr>` +
      ranksOf.map(k => `<tr><td>${esc(k.rank)}</td><td>${(k.experts || []).map(e => esc(e)).join(', ')}</td></tr>`).join('') +
      '</table>'
    : '';
  const top = Math.max(...flops, 0);
  const [scale, unit] = top >= 1e9 ? [1e9, 'GFLOP'] : top >= 1e6 ? [1e6, 'MFLOP'] : [1e3, 'kFLOP'];
  chart('chart-flops', {
    title: { text: `Expert ${unit} per rank`, subtext: `imbalance ${fmt(imb, 3)}` +
      (r.imbalance_all_size !== undefined && st.layer === 'all' ? ` · static All-size ${fmt(r.imbalance_all_size, 3)}` : '') +
      ` · group-per-rank would give ${fmt(cf, 3)}`, textStyle: { fontSize: 13 } },
    tooltip: {},
    grid: { left: 50, right: 16, top: 56, bottom: 28 },
    xAxis: { type: 'category', name: 'rank', data: flops.map((_, k) => String(k)) },
    yAxis: { type: 'value' },
    series: [{ type: 'bar', data: flops.map(f => Number((f / scale).toPrecision(4))) }],
  });
}

const FREQ_BUCKETS = ['most frequent 25 %', '25–50 %', '50–75 %', 'rarest 25 %'];
const LOSS_BUCKETS = ['loss < 2', '2–4', '4–6', '≥ 6'];

function drawDifficulty(m, step) {
  $('#difficulty-step').textContent = `(validation, step ${step})`;
  const draw = (elId, kind, labels, title) => {
    const data = [];
    let groups = 0;
    for (const [name, series] of Object.entries(m)) {
      const parts = name.split('.');  // difficulty.<kind>.<bucket>.<group>
      if (parts[1] !== kind || !series.values.length) continue;
      const b = Number(parts[2]), g = Number(parts[3]);
      groups = Math.max(groups, g + 1);
      data.push([g, b, +(100 * series.values[series.values.length - 1]).toFixed(1)]);
    }
    chart(elId, {
      title: { text: title, textStyle: { fontSize: 13 } },
      tooltip: { formatter: p => `${labels[p.value[1]]}, group ${p.value[0]}: ${p.value[2]} % of its assignments` },
      grid: { left: 110, right: 16, top: 36, bottom: 60 },
      xAxis: { type: 'category', name: 'group (small → large)', nameLocation: 'middle', nameGap: 24,
               data: Array.from({ length: groups }, (_, g) => String(g)) },
      yAxis: { type: 'category', data: labels },
      visualMap: { min: 0, max: Math.max(1, ...data.map(x => x[2])), orient: 'horizontal', left: 'center', bottom: 0, itemHeight: 120, calculable: true },
      series: [{ type: 'heatmap', data, label: { show: groups <= 8 } }],
    });
  };
  draw('chart-diff-freq', 'frequency', FREQ_BUCKETS, 'Group share by token frequency (Table 4)');
  draw('chart-diff-loss', 'token_loss', LOSS_BUCKETS, 'Group share by token loss (Table 5)');
}

async function download(ev) {
  ev.preventDefault();
  const a = ev.currentTarget;
  a.textContent = 'downloading…';
  try {
    const resp = await fetch(`${API}/checkpoints/${a.dataset.id}/download`, { headers: { 'Authorization': 'Bearer ' + token() } });
    if (!resp.ok) throw new Error('HTTP ' + resp.status);
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = `checkpoint-step-${a.dataset.step}.safetensors`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    a.textContent = 'download safetensors';
  } catch (e) { a.textContent = 'download failed: ' + e.message; }
}

// ---- start -----------------------------------------------------------------------------
async function whoami() {
  if (!token()) { $('#whoami').textContent = 'not signed in'; return; }
  try {
    await api('/jobs?limit=1');
    $('#whoami').textContent = 'signed in';
  } catch (e) { $('#whoami').textContent = e.status === 401 ? 'token refused' : ''; }
}
$('#token').value = token();
$('#login').addEventListener('submit', e => {
  e.preventDefault();
  localStorage.setItem('mohge.token', $('#token').value.trim());
  $('#view').dataset.view = '';
  whoami();
  route();
});
window.addEventListener('hashchange', () => { $('#view').dataset.view = ''; route(); });
window.addEventListener('resize', () => charts.forEach(c => c.resize()));
whoami();
route();
