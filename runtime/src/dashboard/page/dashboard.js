// The Sluice dashboard: polls the host's /api every 2 seconds and draws it.
//
// Everything shown comes from event data or plugins, so it is only ever set
// as text (textContent, never innerHTML), and the server's
// Content-Security-Policy allows no script but this file.
'use strict';

const POLL_MS = 2000;
const TOKEN_KEY = 'sluice-admin-token';
let actionsEnabled = false;
let pendingAction = null; // [handler, action] waiting for the token form

// Builds an element: el('td', {class: 'num'}, 'text', child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const rate = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const ms = (x) => (x === null || x === undefined ? '–' : x >= 100 ? `${x.toFixed(0)} ms` : `${x.toFixed(2)} ms`);
const count = (x) => (x === null || x === undefined ? '?' : String(x));

function age(msAgo) {
  if (msAgo === null || msAgo === undefined) return '–';
  const s = Math.round(msAgo / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// Local time as YYYY-MM-DD HH:MM:SS (toLocaleString's first call costs
// tens of milliseconds).
const pad = (n) => String(n).padStart(2, '0');
function time(unixMs) {
  const d = new Date(unixMs);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A sparkline of `values` (nulls are gaps) as an SVG polyline.
function spark(values, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 120 24');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const known = values.filter((v) => v !== null);
  const max = Math.max(1e-9, ...known);
  const last = known.length ? known[known.length - 1] : null;
  svg.setAttribute('aria-label', `${label}: ${last === null ? 'no data' : rate(last)} now, peak ${rate(known.length ? max : 0)}`);
  const title = document.createElementNS(ns, 'title');
  title.textContent = svg.getAttribute('aria-label');
  svg.append(title);
  const n = values.length;
  const points = values
    .map((v, i) => (v === null ? null : `${n > 1 ? (i * 120) / (n - 1) : 0},${(22 - (v / max) * 20).toFixed(1)}`))
    .filter((p) => p !== null)
    .join(' ');
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', points);
  svg.append(line);
  return svg;
}

function notice(text, bad) {
  const n = document.getElementById('notice');
  n.textContent = text;
  n.className = bad ? 'bad' : '';
  n.hidden = false;
}

async function getJson(path) {
  // The server answers with no-store; the first call takes the preloaded answer.
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function drawHandlers(view) {
  actionsEnabled = view.actions;
  const rows = view.handlers.map((h) => {
    const r = h.recent;
    const cell = (label, field, text, cls) => el('td', { 'data-label': label, 'data-field': field, class: cls }, text);
    const buttons = el('td', { 'data-label': 'Actions' });
    for (const action of ['redrive', 'purge']) {
      const b = el('button', {
        type: 'button',
        'data-action': action,
        'data-handler': h.name,
        disabled: !view.actions,
        title: view.actions ? `${action} ${h.name}'s dead letters` : 'Actions are disabled: set [host] admin_token',
      }, action === 'redrive' ? 'Redrive' : 'Purge');
      b.addEventListener('click', () => act(h.name, action));
      buttons.append(b);
    }
    return el('tr', { 'data-handler': h.name },
      el('td', { 'data-label': 'Handler', 'data-field': 'name' }, el('strong', {}, h.name),
        el('span', { class: 'sub' }, `${h.plugin} ${h.version || ''} · ${h.streams.join(', ')}`)),
      el('td', { 'data-label': 'State', 'data-field': 'state' }, el('span', { class: `state ${h.state}` }, h.state)),
      cell('ok/s', 'ok_per_s', rate(r.ok_per_s), 'num'),
      cell('retry/s', 'retry_per_s', rate(r.retry_per_s), 'num'),
      cell('dead/s', 'dead_per_s', rate(r.dead_per_s), 'num'),
      cell('p50', 'p50', ms(r.p50_ms), 'num'),
      cell('p99', 'p99', ms(r.p99_ms), 'num'),
      cell('Lag', 'lag', count(h.lag), 'num'),
      cell('Pending', 'pending', count(h.pending), 'num'),
      cell('Oldest pending', 'oldest', age(h.oldest_pending_ms), 'num'),
      cell('Dead letters', 'dead_letters', count(h.dead_letters), 'num'),
      el('td', { 'data-label': 'Events/s, 15 min' }, spark(h.sparklines.events_per_s, 'events per second')),
      el('td', { 'data-label': 'Lag, 15 min' }, spark(h.sparklines.lag, 'lag')),
      buttons);
  });
  document.querySelector('#handlers tbody').replaceChildren(...rows);
}

function fieldsTable(d) {
  const e = d.event;
  const lines = [
    ['id', `${d.id} in ${d.dead_letter_stream}`],
    ['origin', `${e.stream} ${e.id || '?'}`],
    ['type', e.type],
    ['handler', `${d.handler} (plugin version ${d.plugin_version})`],
    ['attempts', d.attempts],
    ['failed at', time(d.failed_at)],
    ['reason', d.reason],
  ];
  for (const [i, h] of (d.history || []).entries()) lines.push([`earlier #${i + 1}`, JSON.stringify(h)]);
  for (const [k, v] of Object.entries(e.fields || {})) lines.push([`field ${k}`, v]);
  const table = el('table', {}, ...lines.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))));
  table.append(el('tr', {}, el('th', {}, 'data'), el('td', {}, el('pre', {}, JSON.stringify(e.data, null, 2)))));
  return table;
}

function drawDeadLetters(list) {
  const box = document.getElementById('dead-letters');
  const open = new Set([...box.querySelectorAll('details[open]')].map((d) => d.dataset.id));
  if (!list.length) {
    box.replaceChildren(el('p', { class: 'muted' }, 'None.'));
    return;
  }
  box.replaceChildren(...list.map((d) => el('details', { class: 'dead-letter', 'data-id': d.id, open: open.has(d.id) },
    el('summary', {},
      el('span', { class: 'when' }, time(d.failed_at)),
      el('strong', { class: 'handler' }, d.handler),
      el('span', { class: 'reason' }, d.reason)),
    fieldsTable(d))));
}

function drawReloads(list) {
  const rows = list.map((r) => el('tr', { 'data-result': r.result },
    el('td', {}, time(r.at)),
    el('td', {}, r.result),
    el('td', { class: 'what' }, r.error || Object.entries(r.versions).map(([h, v]) => `${h} ${v}`).join(', '))));
  document.querySelector('#reloads tbody').replaceChildren(...rows);
}

let refreshing = false;

async function refresh() {
  if (refreshing) return; // the last one has not finished: skip this turn
  refreshing = true;
  const started = performance.now();
  try {
    // Each part is drawn as soon as its data is here, the handlers first.
    const dead = getJson('/api/dead-letters');
    const reloads = getJson('/api/reloads');
    const handlers = await getJson('/api/handlers');
    drawHandlers(handlers);
    if (!document.body.dataset.firstDrawnMs) {
      // From navigation start: what "loads in" means to someone waiting.
      document.body.dataset.firstDrawnMs = String(Math.round(performance.now()));
    }
    drawDeadLetters((await dead).dead_letters);
    drawReloads((await reloads).reloads);
    const status = document.getElementById('status');
    status.textContent = `updated ${time(handlers.at).slice(11)}` +
      (handlers.redis_error ? ` · ${handlers.redis_error}` : '') +
      (handlers.actions ? '' : ' · read-only (actions need [host] admin_token)');
    document.body.dataset.refreshMs = String(Math.round(performance.now() - started));
  } catch (e) {
    document.getElementById('status').textContent = `cannot reach the host: ${e.message}`;
  } finally {
    refreshing = false;
  }
}

// Runs `action` on `handler`'s dead letters with the stored token, asking
// for it first if there is none.
async function act(handler, action) {
  if (!actionsEnabled) return;
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    pendingAction = [handler, action];
    const form = document.getElementById('token-form');
    form.hidden = false;
    document.getElementById('token-input').focus();
    return;
  }
  if (action === 'purge' && !window.confirm(`Delete every dead letter of ${handler}? They cannot be redriven after.`)) return;
  let r;
  try {
    r = await fetch(`/api/handlers/${encodeURIComponent(handler)}/${action}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}` },
    });
  } catch (e) {
    notice(`${action} of ${handler}: cannot reach the host (${e.message})`, true);
    return;
  }
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    notice(`Refused: ${body.error || 'wrong admin token'}. Try again with the right token.`, true);
  } else if (!r.ok) {
    notice(`${action} of ${handler} failed: ${body.error || `HTTP ${r.status}`}`, true);
  } else if (action === 'redrive') {
    notice(`Redrove ${body.redriven} dead letter(s) of ${handler}` + (body.left ? `; ${body.left} left (their data still fails its schema)` : '') + '.');
  } else {
    notice(`Purged ${body.purged} dead letter(s) of ${handler}.`);
  }
  refresh();
}

document.getElementById('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = document.getElementById('token-input');
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = '';
  document.getElementById('token-form').hidden = true;
  const next = pendingAction;
  pendingAction = null;
  if (next) act(...next);
});
document.getElementById('token-cancel').addEventListener('click', () => {
  pendingAction = null;
  document.getElementById('token-form').hidden = true;
});

refresh();
setInterval(refresh, POLL_MS);
