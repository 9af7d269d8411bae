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
  if ((m = h.match(/^#\/experiments\/(\d+)$/))) return experimentView(Number(m[1]));
  if (h.startsWith('#/experiments')) return experimentsView();
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
    $('#submit-ok').innerHTML = `submitted <a href="#/jobs/${encodeURIComponent(job.id)}">job ${esc(job.id)}</a> (${esc(job.state)})`;
  } catch (e) { out.innerHTML = fieldErrorHtml(e); }
}

// The API names the offending field: show it next to the spec with the rule it breaks.
function fieldErrorHtml(e) {
  const lines = String(e.message).split('\n');
  return `<div class="field-error" data-field="${esc(e.field || '')}">` +
    (e.field ? `<code>${esc(e.field)}</code> ` : '') + esc(lines[0]) + '</div>' +
    lines.slice(1).map(l => `<div class="field-error">${esc(l)}</div>`).join('');
}

// ---- job view --------------------------------------------------------------------------
// The series the job view charts (the API downsamples each to max_points).
const CHARTED = ['loss', 'val_loss', 'aux_group', 'aux_expert', 'tokens_per_s', 'imbalance',
                 'imbalance_group_per_rank', 'imbalance_all_size', 'placement.experts_moved',
                 'activated_expert_params', 'group_share.*', 'comm_share', 'transport_pairs.*'];

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
        <div class="card"><div id="chart-comm" class="chart"></div></div>
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
      ...(job.experiment ? [['experiment', `<a id="job-experiment" href="#/experiments/${encodeURIComponent(job.experiment.id)}">` +
        `experiment ${esc(job.experiment.id)}</a> <span class="muted">${esc(job.experiment.group)}</span>`]] : []),
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
  // Rank 0's time inside communication calls (waits for peers included), as a share of the
  // step; the title names the transports the rank pairs use (from the attempt's first step).
  // (The latest attempt's: after a recovery the pairs may use other transports.)
  const tp = Object.keys(m).filter(k => k.startsWith('transport_pairs.') && m[k].steps.length);
  const lastStep = Math.max(-1, ...tp.map(k => m[k].steps[m[k].steps.length - 1]));
  const kinds = tp.filter(k => m[k].steps[m[k].steps.length - 1] === lastStep)
    .map(k => k.slice(16).replace(/_/g, '+') + ' × ' + m[k].values[m[k].values.length - 1]);
  const comm = lineOption('Communication share of the step' + (kinds.length ? ' (pairs: ' + kinds.join(', ') + ')' : ''),
    [{ name: 'communication', data: pairs(m.comm_share).map(p => [p[0], p[1] * 100]) }]);
  comm.yAxis = { type: 'value', min: 0, max: 100, axisLabel: { formatter: '{value} %' } };
  chart('chart-comm', comm);
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

// ---- experiments -----------------------------------------------------------------------
// An experiment is a grid of jobs compared as one (DESIGN.md §16): the API's comparison table
// has one row per variant group (a grid point minus the seed axis), each figure the mean ± std
// over the group's finished seeds.
const FINISHED = ['SUCCEEDED', 'FAILED', 'CANCELED'];
const STATE_ORDER = ['RUNNING', 'STARTING', 'RECOVERING', 'QUEUED', 'PREEMPTED', 'SUCCEEDED', 'FAILED', 'CANCELED'];
const GROUP_COLORS = ['#2f6fdb', '#d9480f', '#2e7d32', '#8e44ad', '#b26a00', '#00838f', '#c2185b', '#5d4037', '#455a64', '#7cb342'];

function jobsByState(states) {
  const order = s => (STATE_ORDER.indexOf(s) + 1) || 99;
  return Object.entries(states || {}).filter(([, n]) => n > 0).sort((a, b) => order(a[0]) - order(b[0]))
    .map(([s, n]) => `${esc(n)} ${stateSpan(s)}`).join(', ');
}
// Parameter counts in k / M / G (std in the mean's unit).
function countUnit(x) {
  const a = Math.abs(x);
  return a >= 1e9 ? [1e9, ' G'] : a >= 1e6 ? [1e6, ' M'] : a >= 1e3 ? [1e3, ' k'] : [1, ''];
}
// A table figure {"mean", "std", "n"}: "mean ± std" (std only with two or more finished seeds).
function figure(f, digits, { counts = false, std = true } = {}) {
  if (!f || f.mean === null || f.mean === undefined) return '<span class="muted">–</span>';
  const [scale, unit] = counts ? countUnit(f.mean) : [1, ''];
  const d = counts ? (scale === 1 ? 0 : 2) : digits;
  let s = (f.mean / scale).toFixed(d);
  if (std && f.std !== null && f.std !== undefined) s += ' ± ' + (f.std / scale).toFixed(d);
  return esc(s + unit);
}

async function experimentsView() {
  const v = $('#view');
  if (v.dataset.view !== 'experiments') {
    v.dataset.view = 'experiments';
    v.innerHTML = `<h2>Experiments</h2><table id="experiments"></table>
      <h3>Submit an experiment</h3>
      <p class="muted">A base job spec (without a name), named variants (spec path → value) and a grid of spec paths;
        <code>train.seed</code> is the seed axis, averaged over in the comparison table.</p>
      <form id="exp-submit"><textarea id="exp-spec" spellcheck="false"></textarea>
      <div id="exp-submit-error"></div><button type="submit">Submit</button> <span id="exp-submit-ok"></span></form>`;
    // Prefilled from the Brown example: MoHGE against itself without the group-wise loss, 3 seeds.
    fetch('examples/brown-mohge.json').then(r => r.json()).then(base => {
      delete base.name;
      base.resources = Object.assign({}, base.resources, { workers: 1 });
      const el = $('#exp-spec');
      if (el && !el.value) {
        el.value = JSON.stringify({
          name: 'brown-compare', description: 'MoHGE with and without the group-wise loss L_G, 3 seeds each',
          max_parallel: 2, base,
          variants: [{ name: 'mohge' }, { name: 'mohge-no-lg', set: { 'model.ffn.alpha_group': 0 } }],
          grid: { 'train.seed': [1, 2, 3] },
        }, null, 2);
      }
    }).catch(() => {});
    $('#exp-submit').addEventListener('submit', submitExperiment);
  }
  try {
    const r = await api('/experiments?limit=100');
    if (v.dataset.view !== 'experiments') return;
    $('#experiments').innerHTML = '<tr><th>id</th><th>name</th><th>owner</th><th>state</th><th>jobs</th><th>created</th><th>description</th></tr>' +
      (r.experiments.length ? r.experiments.map(e => {
        const href = `#/experiments/${encodeURIComponent(e.id)}`;
        return `<tr><td><a href="${href}">${esc(e.id)}</a></td><td><a href="${href}">${esc(e.name)}</a></td><td>${esc(e.user)}</td>` +
          `<td>${stateSpan(e.state)}</td><td>${esc(e.num_jobs)}: ${jobsByState(e.states)}</td><td>${age(e.created_at)} ago</td>` +
          `<td class="muted description-cell">${esc(e.description)}</td></tr>`;
      }).join('')
        : '<tr><td colspan="7" class="muted">no experiments yet</td></tr>');
  } catch (e) { return showError(e); }
  poll(experimentsView);
}

async function submitExperiment(ev) {
  ev.preventDefault();
  const out = $('#exp-submit-error');
  out.innerHTML = '';
  $('#exp-submit-ok').textContent = '';
  let request;
  try { request = JSON.parse($('#exp-spec').value); } catch (e) {
    out.innerHTML = `<div class="field-error" data-field="body">the experiment is not valid JSON: ${esc(e.message)}</div>`;
    return;
  }
  try {
    const e = await api('/experiments', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(request) });
    $('#exp-submit-ok').innerHTML = `submitted <a href="#/experiments/${encodeURIComponent(e.id)}">experiment ${esc(e.id)}</a> ` +
      `(${esc(e.num_jobs)} jobs, ${esc(e.state)})`;
  } catch (e) { out.innerHTML = fieldErrorHtml(e); }
}

async function experimentView(id) {
  const v = $('#view');
  const key = 'experiment-' + id;
  let st = v._state;
  if (v.dataset.view !== key) {
    v.dataset.view = key;
    // curves: job id → its val_loss series; finishedPolls: polls since the experiment finished.
    st = v._state = { curves: new Map(), finishedPolls: 0, chartKey: '' };
    v.innerHTML = `<h2 id="exp-title">Experiment ${esc(id)}</h2><div class="kv" id="exp-kv"></div>
      <p id="exp-description" class="description"></p>
      <div id="exp-actions"><button id="exp-cancel" hidden>Cancel its unfinished jobs</button> <span id="exp-cancel-out"></span></div>
      <h3>Comparison <span class="muted">(per variant group: mean ± std over its finished seeds; activated parameters per token)</span></h3>
      <table id="exp-table"></table>
      <h3>Validation loss <span class="muted">(every job, thin; per group the mean across its seeds with a ± std band)</span></h3>
      <div class="card"><div id="chart-exp-val" class="chart tall"></div></div>
      <h3>Difficulty routing <span class="muted">(group share in % of each bucket's assignments, validation; mean over the finished seeds' last evaluation)</span></h3>
      <div class="grid" id="exp-difficulty"></div><p class="muted" id="exp-difficulty-none"></p>
      <h3>Jobs</h3><table id="exp-jobs"></table>
      <details><summary>request (with defaults)</summary><pre class="request" id="exp-request"></pre></details>`;
    $('#exp-cancel').addEventListener('click', () => cancelExperiment(id));
  }
  let finished = false;
  try {
    const e = await api(`/experiments/${id}`);
    if (v.dataset.view !== key) return;  // the user moved on while the request ran
    finished = FINISHED.includes(e.state);
    $('#exp-title').innerHTML = `Experiment ${esc(e.id)}: ${esc(e.name)} ${stateSpan(e.state)}`;
    $('#exp-kv').innerHTML = [
      ['owner', esc(e.user)], ['jobs', `${esc(e.num_jobs)}: ${jobsByState(e.states)}`],
      ['at once (max_parallel)', e.max_parallel > 0 ? esc(e.max_parallel) : 'no limit'],
      ['variant groups', esc((e.groups || []).length)], ['created', `${age(e.created_at)} ago`],
    ].map(([k, x]) => `<div><span>${k}</span>${x}</div>`).join('');
    $('#exp-description').textContent = e.description || '';
    $('#exp-cancel').hidden = finished;
    if (!$('#exp-request').textContent) $('#exp-request').textContent = JSON.stringify(e.request, null, 2);
    drawComparison(e);
    drawExperimentJobs(e);
    drawExperimentDifficulty(e);
    await loadCurves(e, st);
    if (v.dataset.view !== key) return;
    drawExperimentCurves(e, st);
    // Metrics can land a moment after the last state change: poll a few more times unless
    // every finished seed's figures are in.
    const complete = (e.groups || []).every(g => g.val_loss && g.val_loss.n === g.seeds_finished);
    if (finished && (complete || ++st.finishedPolls > 5)) return;
  } catch (err) { return showError(err); }
  poll(() => experimentView(id));
}

async function cancelExperiment(id) {
  const out = $('#exp-cancel-out');
  out.textContent = 'canceling…';
  try {
    const r = await api(`/experiments/${id}/cancel`, { method: 'POST' });
    if (out.isConnected) out.textContent = `cancel requested for ${r.canceled.length} job${r.canceled.length === 1 ? '' : 's'}`;
  } catch (e) { if (out.isConnected) out.textContent = 'cancel failed: ' + e.message; }
}

function drawComparison(e) {
  const groups = e.groups || [];
  // The lowest mean validation loss is marked when groups can be compared.
  const losses = groups.map(g => g.val_loss && g.val_loss.mean).filter(x => x !== null && x !== undefined);
  const best = losses.length > 1 ? Math.min(...losses) : null;
  $('#exp-table').innerHTML = '<tr><th>group</th><th title="finished seeds / seeds">seeds</th><th class="num">val loss</th>' +
    '<th class="num">params</th><th class="num">FFN params</th><th class="num" title="routed-expert parameters">routed params</th>' +
    '<th class="num">activated params / token</th><th class="num">activated FFN params / token</th>' +
    '<th class="num">tokens/s</th><th class="num" title="rank imbalance: max/mean expert FLOPs">imbalance</th></tr>' +
    (groups.length ? groups.map((g, i) => {
      const isBest = best !== null && g.val_loss.mean === best;
      return `<tr data-group="${esc(g.group)}"><td class="group-cell"><span class="swatch" style="background:${GROUP_COLORS[i % GROUP_COLORS.length]}"></span>` +
        `<b>${esc(g.group)}</b>${g.group !== g.variant ? ` <span class="muted">variant ${esc(g.variant)}</span>` : ''}</td>` +
        `<td class="seeds">${esc(g.seeds_finished)}/${esc(g.seeds)}</td>` +
        `<td class="num${isBest ? ' best' : ''}">${figure(g.val_loss, 4)}</td>` +
        `<td class="num">${figure(g.params_total, 0, { counts: true, std: false })}</td>` +
        `<td class="num">${figure(g.params_ffn, 0, { counts: true, std: false })}</td>` +
        `<td class="num">${figure(g.params_routed, 0, { counts: true, std: false })}</td>` +
        `<td class="num">${figure(g.activated_params, 0, { counts: true })}</td>` +
        `<td class="num">${figure(g.activated_expert_params, 0, { counts: true })}</td>` +
        `<td class="num">${figure(g.tokens_per_s, 0)}</td><td class="num">${figure(g.imbalance, 3)}</td></tr>`;
    }).join('')
      : '<tr><td colspan="10" class="muted">no jobs</td></tr>');
}

function drawExperimentJobs(e) {
  const color = new Map((e.groups || []).map((g, i) => [g.group, GROUP_COLORS[i % GROUP_COLORS.length]]));
  $('#exp-jobs').innerHTML = '<tr><th>id</th><th>name</th><th>group</th><th>state</th><th>progress</th>' +
    '<th class="num">val loss</th><th class="num">tokens/s</th><th class="num">imbalance</th><th>reason</th></tr>' +
    (e.jobs || []).map(j => {
      const f = j.figures || {};
      const g = (j.experiment && j.experiment.group) || '';
      const href = `#/jobs/${encodeURIComponent(j.id)}`;
      return `<tr><td><a href="${href}">${esc(j.id)}</a></td><td><a href="${href}">${esc(j.name)}</a></td>` +
        `<td><span class="swatch" style="background:${color.get(g) || '#999'}"></span>${esc(g)}</td><td>${stateSpan(j.state)}</td>` +
        `<td>${progressBar(j.progress)}</td><td class="num">${fmt(f.val_loss)}</td><td class="num">${fmt(f.tokens_per_s, 0)}</td>` +
        `<td class="num">${fmt(f.imbalance, 3)}</td>` +
        `<td class="muted">${esc(j.pending_reason ? '#' + j.queue_position + ' ' + j.pending_reason : j.reason)}</td></tr>`;
    }).join('');
}

// Each job's validation curve (GET /jobs/{id}/metrics): fetched while the job may still add
// points, and once more when its last value is not yet the one the table reports.
async function loadCurves(e, st) {
  const queue = (e.jobs || []).filter(j => {
    const have = st.curves.get(j.id);
    if (!have) return j.state !== 'QUEUED' || (j.progress && j.progress.step > 0);
    if (!FINISHED.includes(j.state)) return true;
    const last = have.values.length ? have.values[have.values.length - 1] : null;
    const want = j.figures ? j.figures.val_loss : null;
    return want !== null && want !== undefined && last !== want;
  });
  // A few requests at a time: an experiment can hold hundreds of jobs.
  const fetchOne = async () => {
    for (let j; (j = queue.shift());) {
      const r = await api(`/jobs/${j.id}/metrics?names=val_loss&max_points=1000`);
      st.curves.set(j.id, (r.metrics && r.metrics.val_loss) || { steps: [], values: [] });
    }
  };
  await Promise.all(Array.from({ length: Math.min(6, queue.length) }, fetchOne));
}

function drawExperimentCurves(e, st) {
  const series = [];
  (e.groups || []).forEach((g, i) => {
    const color = GROUP_COLORS[i % GROUP_COLORS.length];
    const c = g.val_curve || { steps: [], mean: [], std: [] };
    const std = k => (c.std && c.std[k] !== null && c.std[k] !== undefined ? c.std[k] : 0);
    // Every series of a group carries its name, so its legend entry shows or hides them all.
    series.push({ id: 'mean:' + g.group, name: g.group, data: c.steps.map((s, k) => [s, c.mean[k], c.std ? c.std[k] : null]),
                  showSymbol: true, symbolSize: 6, z: 4, color, lineStyle: { width: 2.5 } });
    // The ± std band: one polygon through mean + std forwards and mean − std backwards.
    const upper = c.steps.map((s, k) => [s, c.mean[k] + std(k)]);
    const lower = c.steps.map((s, k) => [s, c.mean[k] - std(k)]);
    series.push({
      id: 'band:' + g.group, name: g.group, type: 'custom', silent: true, z: 1, color, tooltip: { show: false },
      data: c.steps.map((s, k) => [s, lower[k][1], upper[k][1]]), encode: { x: 0, y: [1, 2] },
      renderItem: (params, api) => (params.dataIndex !== 0 || upper.length < 2 ? null : {
        type: 'polygon', silent: true,
        shape: { points: upper.map(p => api.coord(p)).concat(lower.slice().reverse().map(p => api.coord(p))) },
        style: { fill: color, opacity: 0.16 },
      }),
    });
    for (const jobId of g.jobs) {
      const curve = st.curves.get(jobId);
      series.push({ id: 'job:' + jobId, name: g.group, data: pairs(curve), z: 2, color,
                    lineStyle: { width: 1, opacity: 0.5 }, emphasis: { disabled: true } });
    }
  });
  // Redraw only when the data changed, keeping the legend's selection.
  const dataKey = JSON.stringify(series.map(s => [s.id, s.data]));
  if (dataKey === st.chartKey && charts.has('chart-exp-val')) return;
  st.chartKey = dataKey;
  const prev = charts.get('chart-exp-val');
  const selected = prev ? ((prev.getOption().legend || [])[0] || {}).selected : undefined;
  const opt = lineOption('Validation loss', series, 'loss');
  opt.animation = false;  // redrawn whole when evaluations arrive: no replayed entrance animation
  opt.legend.data = (e.groups || []).map(g => g.group);
  if (selected) opt.legend.selected = selected;
  opt.tooltip.formatter = ps => {
    const rows = ps.filter(p => String(p.seriesId).startsWith('mean:'));
    if (!rows.length) return '';
    return `step ${esc(rows[0].value[0])}<br>` + rows.map(p => `${p.marker}${esc(p.seriesName)}: ${fmt(p.value[1])}` +
      (p.value[2] !== null && p.value[2] !== undefined ? ` ± ${fmt(p.value[2])}` : '')).join('<br>');
  };
  chart('chart-exp-val', opt);
}

// One card per variant group with its two difficulty tables (buckets × expert groups).
function drawExperimentDifficulty(e) {
  const withTables = (e.groups || []).filter(g => g.difficulty);
  const table = (g, kind, labels, title) => {
    const rows = (g.difficulty[kind] || []);
    const numGroups = Math.max(0, ...rows.map(r => r.length));
    const top = Math.max(1e-9, ...rows.flat());
    return `<table class="diff" data-group="${esc(g.group)}" data-kind="${esc(kind)}"><caption>${title}</caption>` +
      `<tr><th></th>${Array.from({ length: numGroups }, (_, k) => `<th class="num">group ${k}</th>`).join('')}</tr>` +
      rows.map((r, b) => `<tr><th>${esc(labels[b] ?? 'bucket ' + b)}</th>` +
        // A bucket without tokens (all shares 0) has no shares to show.
        (!r.some(x => Number(x) > 0) ? Array.from({ length: numGroups }, () => '<td class="num muted">–</td>').join('') :
        Array.from({ length: numGroups }, (_, k) => {
          const x = Number(r[k] ?? 0);
          return `<td class="num" style="background:rgba(47,111,219,${(0.05 + 0.55 * x / top).toFixed(3)})">${(100 * x).toFixed(1)}</td>`;
        }).join('')) + '</tr>').join('') + '</table>';
  };
  $('#exp-difficulty').innerHTML = withTables.map(g =>
    `<div class="card diff-card" data-group="${esc(g.group)}"><h4>${esc(g.group)}</h4>` +
    table(g, 'frequency', FREQ_BUCKETS, 'by token frequency (Table 4)') +
    table(g, 'token_loss', LOSS_BUCKETS, 'by per-token loss (Table 5)') + '</div>').join('');
  const without = (e.groups || []).filter(g => !g.difficulty).map(g => g.group);
  $('#exp-difficulty-none').textContent = without.length
    ? `No tables for ${without.join(', ')}: a model without expert groups, or no finished seed yet.` : '';
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
