// The Developer UI page: one EventSource for live data, fetch for the rest. No framework, no
// build step; every piece of server data goes into the page as text, never as HTML.
'use strict';

const LOG_ROWS = 300;

const ui = {
  flows: [],
  flow: null, // the selected flow
  examples: new Map(), // flow name -> example JSON text
  inputs: new Map(), // flow name -> what the user typed
  traces: new Map(), // traceId -> TraceData
  selectedTrace: null,
  run: null, // { traceId, controller }
  selfName: 'devui',
  pid: null,
};

const $ = (id) => document.getElementById(id);

/** Builds an element; `props` are properties (className, textContent, ...) or `on*` listeners. */
function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'attrs') for (const [a, v] of Object.entries(value)) node.setAttribute(a, v);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function fmtUptime(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${String(mm).padStart(2, '0')}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, '0')}s`;
  return `${ss}s`;
}

function fmtTime(epochMs) {
  const d = new Date(epochMs);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** A JSON attribute that holds a JSON document as text: parse it for display when possible. */
function prettyAttr(text) {
  if (typeof text !== 'string') return pretty(text);
  try {
    return pretty(JSON.parse(text));
  } catch {
    return text;
  }
}

const STATE_CLASS = {
  live: 'ok', serving: 'ok', starting: 'info', pending: 'info',
  draining: 'warn', stopped: 'quiet', failed: 'bad',
};

function badge(node, text, cls) {
  node.textContent = text;
  node.className = `badge ${cls || ''}`.trim();
}

// ---------------------------------------------------------------------------------------------
// Servers and process

function renderServers(snapshot) {
  const { process, readiness } = snapshot;
  ui.selfName = snapshot.self || ui.selfName;
  ui.pid = process.pid;
  badge($('process-state'), `process ${process.state}`, STATE_CLASS[process.state]);
  if (readiness.ready) badge($('readiness'), 'ready', 'ok');
  else badge($('readiness'), `not ready: ${readiness.reason || readiness.state}`, 'bad');
  $('process-meta').textContent =
    `pid ${process.pid} · v${process.version} · up ${fmtUptime(process.uptime_seconds)}`;
  $('ready-fail').disabled = process.readiness_forced_fail;
  $('ready-ok').disabled = !process.readiness_forced_fail;

  const body = $('servers-table').tBodies[0];
  const rows = process.servers.map((s) => {
    const r = s.requests;
    // A client (the Reflection API v2 link to the genkit CLI) listens on nothing: it shows
    // the URL it dials and what it last said of itself.
    const address = s.dials
      ? h('span', { attrs: { 'data-dials': s.dials } }, `dials ${s.dials}`,
        s.status ? h('div', { className: 'sub' }, s.status) : null)
      : s.url
        ? h('a', { href: s.url, target: '_blank', rel: 'noopener' }, s.address)
        : h('span', { className: 'empty' }, `ports ${s.ports}`);
    const state = h('span', { className: `badge ${STATE_CLASS[s.state] || ''}`, title: s.error || '' }, s.state);
    const name = h('td', {}, h('strong', {}, s.name),
      s.name === ui.selfName ? h('span', { className: 'sub' }, '(this page)') : null,
      s.required ? null : h('span', { className: 'sub' }, '(optional)'));
    return h('tr', { attrs: { 'data-server': s.name } },
      name,
      h('td', {}, state, s.error ? h('div', { className: 'sub' }, s.error) : null),
      h('td', {}, address),
      h('td', {}, s.framework),
      h('td', { className: 'num' }, fmtUptime(s.uptime_seconds)),
      h('td', { className: 'num' }, r.served),
      h('td', { className: 'num' }, r.in_flight),
      h('td', { className: `num ${r.server_errors ? 'st-5' : ''}` }, r.server_errors),
      h('td', { className: 'num' }, r.aborted),
      h('td', { className: 'num' }, fmtMs(r.latency_p50_ms)),
      h('td', { className: 'num' }, fmtMs(r.latency_p99_ms)));
  });
  patchRows(body, rows, 'server');
}

/**
 * Puts `rows` into `body`, changing only cells whose content changed, so a focused link or
 * button in an unchanged cell keeps its focus across the once-a-second updates.
 */
function patchRows(body, rows, key) {
  const old = new Map([...body.rows].filter((r) => r.dataset[key]).map((r) => [r.dataset[key], r]));
  const next = rows.map((row) => {
    const prev = old.get(row.dataset[key]);
    if (!prev || prev.cells.length !== row.cells.length) return row;
    [...row.cells].forEach((cell, i) => {
      const target = prev.cells[i];
      if (target.innerHTML !== cell.innerHTML || target.className !== cell.className) {
        target.className = cell.className;
        target.replaceChildren(...cell.childNodes);
      }
    });
    return prev;
  });
  next.forEach((row, i) => {
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
  });
  while (body.rows.length > next.length) body.deleteRow(body.rows.length - 1);
}

// A process started with an admin token answers 401 to a change without it: ask once, keep it
// for this tab only (sessionStorage), and send it as the admin endpoints expect.
async function post(path, retried = false) {
  const headers = { 'content-type': 'application/json' };
  const token = sessionStorage.getItem('adminToken');
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(path, { method: 'POST', headers, body: '{}' });
  const body = await res.json().catch(() => ({}));
  if (res.status === 401 && !retried) {
    const given = prompt(`${body.error || 'An admin token is required'}.\nAdmin token:`);
    if (given) {
      sessionStorage.setItem('adminToken', given.trim());
      return post(path, true);
    }
  }
  if (res.status === 401) sessionStorage.removeItem('adminToken');
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

async function refreshServers() {
  const res = await fetch('/api/servers');
  if (res.ok) renderServers(await res.json());
}

function setupControls() {
  $('ready-fail').addEventListener('click', () => post('/api/readiness/fail').then(refreshServers).catch(showProblem));
  $('ready-ok').addEventListener('click', () => post('/api/readiness/ok').then(refreshServers).catch(showProblem));
  const dialog = $('quit-dialog');
  $('quit').addEventListener('click', () => {
    $('quit-text').textContent =
      `Every server of this process${ui.pid ? ` (pid ${ui.pid})` : ''} drains and stops, and this page goes offline.`;
    dialog.showModal();
  });
  $('quit-keep').addEventListener('click', () => dialog.close());
  $('quit-confirm').addEventListener('click', () => {
    dialog.close();
    post('/api/quit')
      .then(() => badge($('connection'), 'quit requested: the process is stopping', 'warn'))
      .catch(showProblem);
  });
}

function showProblem(err) {
  badge($('connection'), String(err.message || err), 'bad');
}

// ---------------------------------------------------------------------------------------------
// Flows

async function loadFlows() {
  const res = await fetch('/api/flows');
  const body = await res.json();
  ui.flows = body.flows || [];
  for (const f of ui.flows) ui.examples.set(f.name, pretty(f.example === undefined ? null : f.example));
  const list = $('flow-list');
  if (!ui.flows.length) {
    list.replaceChildren(h('p', { className: 'empty' }, 'No flows are registered.'));
    $('run').disabled = true;
    return;
  }
  list.replaceChildren(...ui.flows.map((f) =>
    h('button', {
      type: 'button', textContent: f.name, title: f.description,
      attrs: { 'aria-pressed': 'false', 'data-flow': f.name },
      onclick: () => selectFlow(f.name),
    })));
  selectFlow(ui.flows[0].name);
}

function selectFlow(name) {
  if (ui.flow) ui.inputs.set(ui.flow.name, $('flow-input').value);
  const flow = ui.flows.find((f) => f.name === name);
  if (!flow) return;
  ui.flow = flow;
  for (const b of $('flow-list').querySelectorAll('button')) {
    b.setAttribute('aria-pressed', String(b.dataset.flow === name));
  }
  $('flow-desc').textContent = flow.description || '';
  $('input-schema').textContent = flow.inputSchema ? pretty(flow.inputSchema) : '';
  $('output-schema').textContent = flow.outputSchema ? pretty(flow.outputSchema) : '';
  $('flow-input').value = ui.inputs.get(name) ?? ui.examples.get(name) ?? 'null';
  $('flow-input').setAttribute('aria-label', `Input of ${name} (JSON)`);
  $('run').textContent = `Run ${name}`;
}

function clearOutput() {
  $('chunks').replaceChildren();
  $('chunk-count').textContent = '0';
  $('result').textContent = '';
  $('run-error').hidden = true;
  $('run-error').replaceChildren();
}

function showError(title, message) {
  const box = $('run-error');
  box.replaceChildren(h('strong', {}, title), message);
  box.hidden = false;
}

function chunkText(chunk) {
  if (chunk && typeof chunk === 'object' && typeof chunk.text === 'string') return chunk.text;
  return typeof chunk === 'string' ? chunk : JSON.stringify(chunk);
}

async function runFlow(event) {
  event.preventDefault();
  if (ui.run || !ui.flow) return;
  const flow = ui.flow;
  clearOutput();
  let input;
  try {
    input = JSON.parse($('flow-input').value);
  } catch (err) {
    showError('The input is not valid JSON', err.message);
    $('run-status').textContent = 'not started';
    return;
  }
  const controller = new AbortController();
  ui.run = { traceId: null, controller };
  $('run').disabled = true;
  $('run-status').textContent = `running ${flow.name}…`;
  const started = performance.now();
  try {
    const res = await fetch(`/api/flows/${encodeURIComponent(flow.name)}/run`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input }),
      signal: controller.signal,
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      const title = body.code === 'INVALID_ARGUMENT' ? 'Input rejected by the schema' : `Error ${res.status}`;
      showError(title, body.error || res.statusText);
      $('run-status').textContent = `failed (HTTP ${res.status})`;
      if (body.traceId) selectTrace(body.traceId);
      return;
    }
    await readLines(res.body, (line) => onRunLine(line, flow));
    $('run-status').textContent += ` in ${fmtMs(performance.now() - started)}`;
  } catch (err) {
    if (err.name === 'AbortError') $('run-status').textContent = 'cancelled';
    else {
      showError('The request failed', err.message);
      $('run-status').textContent = 'failed';
    }
  } finally {
    ui.run = null;
    $('run').disabled = false;
    $('cancel').disabled = true;
  }
}

function onRunLine(msg, flow) {
  switch (msg.type) {
    case 'start':
      ui.run.traceId = msg.traceId;
      $('cancel').disabled = false;
      selectTrace(msg.traceId);
      break;
    case 'chunk': {
      const list = $('chunks');
      list.append(h('li', { title: JSON.stringify(msg.chunk) }, chunkText(msg.chunk)));
      list.scrollTop = list.scrollHeight;
      $('chunk-count').textContent = String(list.children.length);
      break;
    }
    case 'result':
      $('result').textContent = pretty(msg.result);
      $('run-status').textContent = `${flow.name} succeeded`;
      break;
    case 'error': {
      const e = msg.error || {};
      const title = e.code === 'CANCELLED' ? 'Cancelled' : `${e.code || 'Error'}`;
      showError(title, e.message || 'the flow failed');
      $('run-status').textContent = `${flow.name} ${e.code === 'CANCELLED' ? 'was cancelled' : 'failed'}`;
      break;
    }
    default:
      break;
  }
}

/** Reads an NDJSON body line by line as it arrives. */
async function readLines(stream, onLine) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
  if (buffer.trim()) onLine(JSON.parse(buffer));
}

async function cancelRun() {
  const run = ui.run;
  if (!run) return;
  $('cancel').disabled = true;
  if (run.traceId) {
    // The server ends the stream with a CANCELLED error line.
    try {
      await post(`/api/runs/${encodeURIComponent(run.traceId)}/cancel`);
      return;
    } catch {
      // Already finished, or unknown: stop reading instead.
    }
  }
  run.controller.abort();
}

function setupFlows() {
  $('run-form').addEventListener('submit', runFlow);
  $('cancel').addEventListener('click', cancelRun);
  $('reset-example').addEventListener('click', () => {
    if (!ui.flow) return;
    $('flow-input').value = ui.examples.get(ui.flow.name) ?? 'null';
    ui.inputs.delete(ui.flow.name);
    $('flow-input').focus();
  });
  $('flow-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) $('run-form').requestSubmit();
  });
}

// ---------------------------------------------------------------------------------------------
// Traces

function rootSpan(trace) {
  return Object.values(trace.spans || {}).find((s) => !s.parentSpanId);
}

function traceState(trace) {
  const root = rootSpan(trace);
  if (!trace.endTime || !root || !root.status) return 'run';
  return root.status.code === 2 ? 'bad' : 'ok';
}

function upsertTrace(trace) {
  ui.traces.set(trace.traceId, trace);
  renderTraceList();
  if (ui.selectedTrace === trace.traceId) renderTraceDetail();
}

function renderTraceList() {
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.trace : undefined;
  const traces = [...ui.traces.values()].sort((a, b) => b.startTime - a.startTime).slice(0, 100);
  const list = $('trace-list');
  if (!traces.length) {
    list.replaceChildren(h('li', { className: 'empty', textContent: 'No runs yet: run a flow.' }));
    return;
  }
  list.replaceChildren(...traces.map((t) => {
    const state = traceState(t);
    const dur = t.endTime ? fmtMs(t.endTime - t.startTime) : 'running';
    const label = { ok: 'succeeded', bad: 'failed', run: 'running' }[state];
    return h('li', {}, h('button', {
      type: 'button',
      attrs: { 'aria-pressed': String(t.traceId === ui.selectedTrace), 'data-trace': t.traceId },
      title: `trace ${t.traceId}`,
      onclick: () => selectTrace(t.traceId),
    },
    h('span', { className: `dot ${state}`, attrs: { 'aria-label': label, role: 'img' } }),
    h('span', { className: 'name' }, t.displayName || '(unnamed)'),
    h('span', { className: 'dur' }, dur),
    h('span', { className: 'when' }, fmtTime(t.startTime))));
  }));
  if (focused) {
    const again = list.querySelector(`button[data-trace="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

async function selectTrace(traceId) {
  ui.selectedTrace = traceId;
  if (!ui.traces.has(traceId)) {
    const res = await fetch(`/api/traces/${encodeURIComponent(traceId)}`);
    if (res.ok) ui.traces.set(traceId, await res.json());
  }
  renderTraceList();
  renderTraceDetail();
}

function spanDepth(span, spans) {
  let depth = 0;
  let cur = span;
  while (cur && cur.parentSpanId && depth < 20) {
    cur = spans[cur.parentSpanId];
    depth += 1;
  }
  return depth;
}

function renderTraceDetail() {
  const box = $('trace-detail');
  const trace = ui.traces.get(ui.selectedTrace);
  if (!trace) {
    box.replaceChildren(h('p', { className: 'empty' }, 'Select a run to see its trace.'));
    return;
  }
  const spans = trace.spans || {};
  const list = Object.values(spans).sort((a, b) => a.startTime - b.startTime);
  const now = Date.now();
  const start = trace.startTime;
  const end = Math.max(trace.endTime || now, ...list.map((s) => s.endTime || now));
  const total = Math.max(end - start, 0.001);
  const state = traceState(trace);

  const rows = list.map((s) => {
    const sEnd = s.endTime || now;
    const left = ((s.startTime - start) / total) * 100;
    const width = ((sEnd - s.startTime) / total) * 100;
    const st = !s.endTime ? 'run' : s.status && s.status.code === 2 ? 'bad' : 'ok';
    const bar = h('div', { className: `bar ${st === 'ok' ? '' : st}` });
    bar.style.left = `${Math.min(Math.max(left, 0), 100)}%`;
    bar.style.width = `${Math.min(Math.max(width, 0), 100 - Math.min(Math.max(left, 0), 100))}%`;
    const name = h('div', { className: 'span-name', title: s.attributes['genkit:path'] || s.displayName }, s.displayName);
    name.style.paddingLeft = `${spanDepth(s, spans) * 14}px`;
    return h('div', { className: 'span-row', attrs: { 'data-span': s.spanId, role: 'listitem' } },
      name,
      h('div', { className: 'track', attrs: { 'aria-hidden': 'true' } }, bar),
      h('div', { className: 'span-dur' }, s.endTime ? fmtMs(s.endTime - s.startTime) : 'running'));
  });

  // Under the timeline: each span's input, output and error; the root span's open, and
  // whatever the user opened or closed stays so while the trace updates.
  const wasOpen = box.dataset.trace === trace.traceId
    ? new Map([...box.querySelectorAll('details.span-io')].map((d) => [d.dataset.span, d.open]))
    : new Map();
  box.dataset.trace = trace.traceId;
  const details = list.map((s) => {
    const input = s.attributes['genkit:input'];
    const output = s.attributes['genkit:output'];
    const error = s.status && s.status.code === 2 ? s.status.message : null;
    if (input === undefined && output === undefined && !error) return null;
    const parts = [input !== undefined && 'input', output !== undefined && 'output', error && 'error'];
    const open = wasOpen.has(s.spanId) ? wasOpen.get(s.spanId) : !s.parentSpanId;
    return h('details', { className: 'span-io', open, attrs: { 'data-span': s.spanId } },
      h('summary', {}, `${s.displayName}: ${parts.filter(Boolean).join(', ')}`),
      input !== undefined ? h('div', {}, h('h3', {}, 'Input'), h('pre', { className: 'code' }, prettyAttr(input))) : null,
      output !== undefined ? h('div', {}, h('h3', {}, 'Output'), h('pre', { className: 'code' }, prettyAttr(output))) : null,
      error ? h('div', { className: 'error' }, h('strong', {}, 'Error'), error) : null);
  }).filter(Boolean);

  const status = { ok: ['succeeded', 'ok'], bad: ['failed', 'bad'], run: ['running', 'info'] }[state];
  box.replaceChildren(
    h('h3', {}, trace.displayName || 'trace', ' ',
      h('span', { className: `badge ${status[1]}` }, status[0]), ' ',
      h('span', { className: 'sub' }, trace.endTime ? fmtMs(trace.endTime - trace.startTime) : '')),
    h('div', { className: 'trace-id' }, `trace ${trace.traceId} · started ${fmtTime(trace.startTime)} · ${list.length} span(s)`),
    h('div', { className: 'timeline', attrs: { role: 'list', 'aria-label': 'Spans' } }, ...rows),
    h('div', { className: 'span-details' }, ...details));
}

async function loadTraces() {
  const res = await fetch('/api/traces');
  const body = await res.json();
  for (const t of body.traces || []) ui.traces.set(t.traceId, t);
  renderTraceList();
  renderTraceDetail();
}

// ---------------------------------------------------------------------------------------------
// Request log

function logVisible(row) {
  const filter = $('log-filter').value.trim().toLowerCase();
  if ($('log-hide-self').checked && row.dataset.server === ui.selfName) return false;
  return !filter || row.dataset.text.includes(filter);
}

function addLog(ev) {
  const status = ev.status === null || ev.status === undefined ? `aborted (${ev.aborted})` : String(ev.status);
  const cls = ev.status ? `st-${String(ev.status)[0]}` : 'st-x';
  const row = h('tr', {},
    h('td', { className: 'time' }, fmtTime(ev.at_ms)),
    h('td', {}, ev.server),
    h('td', {}, ev.method),
    h('td', { className: 'path' }, ev.path),
    h('td', { className: `num ${cls}` }, status),
    h('td', { className: 'num' }, fmtMs(ev.latency_ms)),
    h('td', { className: 'num' }, ev.id));
  row.dataset.server = ev.server;
  row.dataset.text = `${ev.server} ${ev.method} ${ev.path} ${status}`.toLowerCase();
  row.hidden = !logVisible(row);
  const body = $('log-table').tBodies[0];
  body.prepend(row);
  while (body.rows.length > LOG_ROWS) body.deleteRow(body.rows.length - 1);
  updateLogCount();
}

function updateLogCount() {
  const rows = [...$('log-table').tBodies[0].rows];
  const shown = rows.filter((r) => !r.hidden).length;
  $('log-count').textContent = rows.length ? `${shown} of ${rows.length} shown (newest first)` : 'no requests yet';
}

function setupLog() {
  const refilter = () => {
    for (const row of $('log-table').tBodies[0].rows) row.hidden = !logVisible(row);
    updateLogCount();
  };
  $('log-filter').addEventListener('input', refilter);
  $('log-hide-self').addEventListener('change', refilter);
  $('log-clear').addEventListener('click', () => {
    $('log-table').tBodies[0].replaceChildren();
    updateLogCount();
  });
  updateLogCount();
}

// ---------------------------------------------------------------------------------------------
// Charts: the last five minutes from /api/history, one point a second, drawn as SVG here.

const SVG = 'http://www.w3.org/2000/svg';
const charted = { samples: [], capacity: 300, last: 0 };

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [a, v] of Object.entries(attrs || {})) node.setAttribute(a, v);
  for (const child of children) if (child) node.append(child);
  return node;
}

function fmtNum(value, unit) {
  if (value === null || value === undefined) return '–';
  const digits = Number.isInteger(value) || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)}${unit}`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

/**
 * One chart, built once and updated in place each second (so focus and a hover tooltip
 * survive the updates): a line per series over the samples (null points leave a gap), a
 * transparent column per second whose <title> gives its numbers on hover, and an aria-label
 * and a text line with the latest and highest values for a screen reader and for the eye.
 */
function makeChart(title, unit, names) {
  const width = charted.capacity;
  const height = 50;
  const paths = names.map((_, k) => svg('path', { d: 'M0 0', class: k ? 'area second' : 'area' }));
  const hits = Array.from({ length: width }, (_, i) => {
    const tip = svg('title');
    return { rect: svg('rect', { x: i - 0.5, y: 0, width: 1, height, class: 'hit' }, tip), tip };
  });
  const summary = svg('title');
  const node = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', class: 'chart',
    role: 'img', tabindex: '0',
  }, svg('line', { x1: 0, y1: height - 1, x2: width, y2: height - 1, class: 'axis' }),
  ...paths, ...hits.map((hit) => hit.rect), summary);
  const now = h('span', { className: 'now', attrs: { 'data-chart': title } });
  const keys = names.length > 1
    ? names.map((name, k) => h('span', { className: `key-${k + 1}` }, `${k ? '┄' : '—'} ${name}`)) : [];
  const row = h('div', { className: 'chart-row' },
    h('div', { className: 'chart-label' }, h('span', {}, title, ' ', ...keys), now), node);

  function update(series, times) {
    const named = (s, v) => (series.length > 1 ? `${s.name} ${fmtNum(v, unit)}` : fmtNum(v, unit));
    const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
    const highest = Math.max(...values, 0);
    const top = highest || 1;
    const offset = width - times.length;
    const y = (v) => (height - 2 - (v / top) * (height - 4)).toFixed(1);
    series.forEach((s, k) => {
      let d = '';
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${offset + i} ${y(v)} `;
        pen = true;
      });
      paths[k].setAttribute('d', d.trim() || 'M0 0');
    });
    hits.forEach((hit, i) => {
      const j = i - offset;
      const text = j < 0 ? '' : `${clock(times[j])}: ${series.map((s) => named(s, s.values[j])).join(', ')}`;
      if (hit.tip.textContent !== text) hit.tip.textContent = text;
    });
    const latest = series.map((s) => named(s, s.values[s.values.length - 1])).join(', ');
    const label = `${title}, last five minutes: now ${latest}; highest ${fmtNum(highest, unit)}`;
    node.setAttribute('aria-label', label);
    summary.textContent = label;
    now.textContent = `now ${latest} · max ${fmtNum(highest, unit)}`;
  }
  return { row, update };
}

/** The card of `key` in `container`, made by `make` the first time (in arrival order). */
function card(cards, container, key, make) {
  let found = cards.get(key);
  if (!found) {
    found = make();
    cards.set(key, found);
    container.querySelector('.empty')?.remove();
    container.append(found.node);
  }
  return found;
}

const serverCards = new Map();
const flowCards = new Map();

function renderCharts() {
  const samples = charted.samples;
  const times = samples.map((s) => s.at_ms);
  const names = [...new Set(samples.flatMap((s) => s.servers.map((p) => p.name)))];
  const point = (s, name) => s.servers.find((p) => p.name === name) || {};
  for (const name of names) {
    const c = card(serverCards, $('server-charts'), name, () => {
      const charts = {
        rps: makeChart('requests/s', '/s', ['req']),
        latency: makeChart('latency', ' ms', ['p50', 'p99']),
        inFlight: makeChart('in flight', '', ['now']),
      };
      const node = h('div', { className: 'chart-card', attrs: { 'data-server-chart': name } },
        h('h4', {}, name), charts.rps.row, charts.latency.row, charts.inFlight.row);
      return { node, charts };
    });
    const of = (field) => samples.map((s) => point(s, name)[field] ?? null);
    c.charts.rps.update([{ name: 'req', values: of('rps') }], times);
    c.charts.latency.update([{ name: 'p50', values: of('p50_ms') }, { name: 'p99', values: of('p99_ms') }], times);
    c.charts.inFlight.update([{ name: 'now', values: of('in_flight') }], times);
  }
  const flows = [...new Set(samples.flatMap((s) => s.flows.map((f) => f.name)))];
  const flowPoint = (s, name) => s.flows.find((f) => f.name === name) || {};
  for (const name of flows) {
    const c = card(flowCards, $('flow-charts'), name, () => {
      const totals = h('span', { className: 'sub' });
      const chart = makeChart('runs/s', '/s', ['runs', 'errors']);
      const node = h('div', { className: 'chart-card', attrs: { 'data-flow-chart': name } },
        h('h4', {}, name, totals), chart.row);
      return { node, chart, totals };
    });
    const total = flowPoint(samples[samples.length - 1], name);
    const rate = total.runs ? (100 * total.errors) / total.runs : 0;
    c.totals.textContent = `${total.runs ?? 0} runs · ${total.errors ?? 0} errors (${rate.toFixed(1)}%) since start`;
    c.chart.update([
      { name: 'runs', values: samples.map((s) => flowPoint(s, name).runs_per_s ?? null) },
      { name: 'errors', values: samples.map((s) => flowPoint(s, name).errors_per_s ?? null) },
    ], times);
  }
}

// One fetch at a time: two with the same `since` would append the same samples twice.
let historyPending = false;

async function refreshHistory() {
  if (historyPending) return;
  historyPending = true;
  try {
    const res = await fetch(`/api/history?since=${charted.last}`);
    if (!res.ok) return;
    const body = await res.json();
    const fresh = body.samples.filter((s) => s.at_ms > charted.last);
    if (fresh.length) {
      charted.samples = charted.samples.concat(fresh).slice(-charted.capacity);
      charted.last = charted.samples[charted.samples.length - 1].at_ms;
      renderCharts();
    }
  } finally {
    historyPending = false;
  }
}

function setupCharts() {
  refreshHistory().catch(() => {});
  setInterval(() => refreshHistory().catch(() => {}), 1000);
}

// ---------------------------------------------------------------------------------------------
// Live feed

function connect() {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => badge($('connection'), 'live updates', 'quiet'));
  source.addEventListener('servers', (e) => renderServers(JSON.parse(e.data)));
  source.addEventListener('request', (e) => addLog(JSON.parse(e.data)));
  source.addEventListener('trace', (e) => upsertTrace(JSON.parse(e.data)));
  source.addEventListener('lagged', (e) => {
    const { feed, missed } = JSON.parse(e.data);
    badge($('connection'), `missed ${missed} ${feed} event(s)`, 'warn');
  });
  source.addEventListener('error', () => {
    badge($('connection'), source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting…', 'warn');
  });
}

function start() {
  setupControls();
  setupFlows();
  setupLog();
  setupCharts();
  connect();
  loadFlows().catch(showProblem);
  loadTraces().catch(showProblem);
}

start();
