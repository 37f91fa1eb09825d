// LANrage web UI: one WebSocket for live state, hash routing, DOM built with nodes only
// (never markup strings), so names coming from other players are always plain text.

import { sparkline, latencyChart, summary, fmtMs, PATHS, pathColor, svg } from './charts.js';

const API = '/api/v1';
const TOKEN_KEY = 'lanrage.token';
const THEME_KEY = 'lanrage.theme';
const TRACE_CAP = 200;
const SERIES_CAP = 300;
const READ_ONLY = 'Read-only: open the UI with `sudo lanrage ui` to control your party.';

const state = {
  status: null,
  games: null,
  lan: null,
  settings: null,
  series: new Map(), // public key -> {name, samples: [{at_unix_ms, latency_ms, path}]}
  trace: [], // LanEvent, newest first
  ws: 'connecting',
  wsFailed: false,
  token: null,
  invite: null, // {partyId, code?, error?, loading?}
  profiles: null,
  library: null,
  history: null,
};

/* ---------- tiny DOM helpers ---------- */

const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (typeof v === 'boolean' && k in el) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  add(el, kids);
  return el;
}

function add(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
  return el;
}

const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
const badge = (text, cls = '', title) => h('span', { class: `badge ${cls}`, title }, text);
const pathBadge = (p, title) => h('span', { class: `badge dot p-${p}`, title }, p);
const chips = (items, empty = 'none') =>
  items && items.length ? h('div', { class: 'chips' }, items.map((i) => h('span', { class: 'chip' }, String(i)))) : h('span', { class: 'faint' }, empty);

function kv(rows) {
  return h('dl', { class: 'kv' }, rows.filter(Boolean).map(([k, v, title]) => [h('dt', null, k), h('dd', { title }, v ?? '–')]));
}

function card(title, opts = {}, ...kids) {
  const id = opts.id || `c-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('section', { class: `card ${opts.class || ''}`, 'aria-labelledby': id },
    h('div', { class: 'card-head' }, h('div', null, h('h2', { id }, title), opts.sub ? h('p', { class: 'sub' }, opts.sub) : null), opts.extra),
    kids);
}

function table(cols, rows, { cls = 'wide', empty = 'Nothing yet.' } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', { class: cls },
    h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
    h('tbody', null, rows)));
}

/* ---------- formatting ---------- */

const pad = (n, w = 2) => String(n).padStart(w, '0');
function fmtClock(ms, withMs = false) {
  const d = new Date(ms);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${t}.${pad(d.getMilliseconds(), 3)}` : t;
}
const fmtDate = (ms) => new Date(ms).toLocaleString();
function fmtDur(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60);
  return `${hh} h${mm ? ` ${mm} min` : ''}`;
}
function fmtAgo(ms) {
  if (!ms) return '–';
  const s = (Date.now() - ms) / 1000;
  return `${s < 60 ? fmtDur(s) : s < 3600 ? `${Math.floor(s / 60)} min` : fmtDur(Math.floor(s / 60) * 60)} ago`;
}
const fmtNum = (n) => (n == null ? '–' : Number(n).toLocaleString('en-US'));
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}
const yesNo = (b) => (b == null ? 'unknown' : b ? 'yes' : 'no');
const words = (s) => (s ? s.replace(/_/g, ' ') : '–');
const port = (p) => String(p);
const confidenceWord = (c) => (c >= 0.9 ? 'definitely' : c >= 0.6 ? 'probably' : 'maybe');
const confidenceCls = (c) => (c >= 0.9 ? 'b-ok' : c >= 0.6 ? 'b-info' : 'b-warn');
const memberLabel = (m) => (m ? m.name || m.ip : '?');

/* ---------- notifications ---------- */

function toast(message, kind = 'error') {
  const region = kind === 'error' ? $('#toast') : $('#notice');
  for (const t of [...region.children]) if (t.dataset.msg === message) t.remove();
  const el = h('div', { class: `toast ${kind === 'error' ? '' : 'info'}`, dataset: { msg: message } },
    h('p', null, message),
    h('button', { type: 'button', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
  region.append(el);
  while (region.children.length > 3) region.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 3500);
}

/* ---------- token ---------- */

function store(key, value) {
  try { value == null ? localStorage.removeItem(key) : localStorage.setItem(key, value); } catch { /* private mode */ }
}
function load(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}

function takeTokenFromUrl() {
  const hash = location.hash.replace(/^#/, '');
  if (!/(^|[?&/])token=/.test(hash)) return;
  let route = '';
  for (const part of hash.split(/[?&]/)) {
    const m = part.match(/^(\/[^?&]*?)?\/?token=(.*)$/);
    if (m) {
      const t = decodeURIComponent(m[2] || '');
      if (t) store(TOKEN_KEY, t);
      if (m[1]) route = m[1];
    } else if (part.startsWith('/')) route = part;
  }
  history.replaceState(null, '', location.pathname + location.search + (route ? `#${route}` : ''));
}

function setToken(t) {
  state.token = t || null;
  store(TOKEN_KEY, state.token);
  if (state.invite && state.invite.error) state.invite = null;
  renderChrome();
  renderPage('token');
}

/* ---------- API ---------- */

class ApiError extends Error {
  constructor(message, code, status) { super(message); this.code = code; this.status = status; }
}

function errorMessage(data, text, status) {
  const e = data && data.error;
  if (e && typeof e === 'object' && typeof e.message === 'string') return e.message;
  if (typeof e === 'string') return e;
  if (data && typeof data.message === 'string') return data.message;
  const t = (text || '').trim();
  if (t && t.length < 400 && !t.startsWith('<')) return t;
  return `The daemon answered ${status}.`;
}

async function api(method, path, body, { auth = method !== 'GET' } = {}) {
  const headers = {};
  if (auth) {
    if (!state.token) {
      showReadOnly();
      throw new ApiError(READ_ONLY.replace(/`/g, ''), 'read_only', 0);
    }
    headers['x-lanrage-token'] = state.token;
  }
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch {
    throw new ApiError('The daemon is not reachable — is lanrage up running?', 'network', 0);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const msg = errorMessage(data, text, res.status);
    const code = data && data.error && typeof data.error === 'object' ? data.error.code : data && data.code;
    if (res.status === 401 && code === 'unauthorized') {
      setToken(null);
      showReadOnly();
    }
    throw new ApiError(msg, code, res.status);
  }
  return data;
}

function showReadOnly() {
  const b = $('#readonly-banner');
  b.hidden = false;
}

/** Runs a request for a button: busy while it runs, errors to the toast. */
async function act(button, fn, { onError } = {}) {
  if (button) { button.disabled = true; button.setAttribute('aria-busy', 'true'); }
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    if (onError) onError(e); else toast(e.message || String(e));
    return { ok: false, error: e };
  } finally {
    if (button) { button.disabled = false; button.removeAttribute('aria-busy'); }
  }
}

async function refreshStatus() {
  try {
    state.status = await api('GET', '/status');
    renderChrome();
    renderPage('status');
  } catch { /* the WebSocket will bring it */ }
}

/* ---------- live state ---------- */

let ws = null;
let attempt = 0;

function connect() {
  state.ws = 'connecting';
  renderChrome();
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${API}/events`;
  try {
    ws = new WebSocket(url);
  } catch {
    reconnect();
    return;
  }
  ws.onopen = () => {
    attempt = 0;
    state.ws = 'live';
    state.wsFailed = false;
    renderChrome();
  };
  ws.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (msg && typeof msg.type === 'string') handle(msg.type, msg.data);
  };
  ws.onclose = () => {
    ws = null;
    reconnect();
  };
}

function reconnect() {
  state.ws = 'offline';
  state.wsFailed = true;
  const delay = Math.min(10, 2 ** attempt);
  attempt++;
  setText($('#offline-retry'), ` (next try in ${delay} s)`);
  renderChrome();
  setTimeout(connect, delay * 1000);
}

function handle(type, data) {
  switch (type) {
    case 'status': state.status = data; break;
    case 'games': state.games = data; break;
    case 'lan': state.lan = data; break;
    case 'settings': state.settings = data; break;
    case 'quality': setQuality(data); break;
    case 'sample': addSample(data); break;
    case 'lan_events': addTrace(Array.isArray(data) ? data : [], false); break;
    default: return;
  }
  try {
    if (type === 'status' || type === 'settings') renderChrome();
    renderPage(type);
  } catch (e) {
    console.error('render failed', e);
  }
  if (type === 'status' && document.body.dataset.ready !== '1') document.body.dataset.ready = '1';
}

function setQuality(q) {
  const map = new Map();
  for (const p of (q && q.peers) || []) {
    map.set(p.public_key, { name: p.name, samples: (p.samples || []).slice(-SERIES_CAP) });
  }
  state.series = map;
}

function memberByKey(key) {
  const party = state.status && state.status.party;
  return party ? party.members.find((m) => m.public_key === key) : null;
}

function addSample(s) {
  if (!s || !Array.isArray(s.peers)) return;
  for (const p of s.peers) {
    let series = state.series.get(p.public_key);
    if (!series) {
      const m = memberByKey(p.public_key);
      series = { name: m ? m.name : p.public_key.slice(0, 8), samples: [] };
      state.series.set(p.public_key, series);
    }
    series.samples.push({ at_unix_ms: s.at_unix_ms, latency_ms: p.latency_ms, path: p.path });
    if (series.samples.length > SERIES_CAP) series.samples.splice(0, series.samples.length - SERIES_CAP);
  }
}

const traceKey = (e) => `${e.at_unix_ms}|${e.direction}|${e.via}|${e.src}|${e.dst}|${e.size}`;

function addTrace(events, snapshot) {
  if (snapshot) {
    const seen = new Set(state.trace.map(traceKey));
    const merged = state.trace.concat(events.filter((e) => !seen.has(traceKey(e))));
    merged.sort((a, b) => b.at_unix_ms - a.at_unix_ms);
    state.trace = merged.slice(0, TRACE_CAP);
  } else {
    const fresh = events.slice().reverse();
    state.trace = fresh.concat(state.trace).slice(0, TRACE_CAP);
  }
}

/* ---------- header, banners, theme ---------- */

function renderChrome() {
  const st = state.status;
  setText($('#st-name'), st ? (st.party && st.party.player_name) || st.name || '–' : '–');
  setText($('#st-ip'), st && st.virtual_ip ? st.virtual_ip : '–');
  const ctl = $('#st-control');
  const control = st ? st.control : '';
  const cstate = !st ? '' : control === 'connected' ? 'connected' : control === 'connecting' ? 'connecting' : 'error';
  setText(ctl, cstate || '–');
  ctl.className = cstate === 'connected' ? 'c-direct' : cstate === 'connecting' ? 'c-connecting' : cstate ? 'c-unreachable' : '';
  ctl.title = st ? `${control}${st.control_url ? ` — ${st.control_url}` : ''}` : '';
  const wsEl = $('#st-ws');
  wsEl.dataset.state = state.ws;
  setText(wsEl, state.ws);
  $('#offline-banner').hidden = !(state.wsFailed && state.ws !== 'live');
  $('#readonly-banner').hidden = !!state.token;
}

const media = window.matchMedia('(prefers-color-scheme: light)');
function applyTheme() {
  const theme = load(THEME_KEY) || (media.matches ? 'light' : 'dark');
  document.documentElement.dataset.theme = theme;
  const next = theme === 'dark' ? 'light' : 'dark';
  const btn = $('#theme-toggle');
  btn.setAttribute('aria-label', `Switch to ${next} theme`);
  btn.title = `Switch to ${next} theme`;
}

/* ---------- routing ---------- */

const pages = {};
let current = null;

function routeName() {
  const m = location.hash.match(/^#\/([a-z]+)/);
  return m && pages[m[1]] ? m[1] : 'party';
}

function mountPage(focus) {
  const name = routeName();
  const main = $('#main');
  const page = pages[name];
  const ctx = { name };
  current = { name, page, ctx };
  main.replaceChildren();
  page.mount(ctx, main);
  page.update(ctx, 'mount');
  for (const a of document.querySelectorAll('a[data-page]')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${page.title} · LANrage`;
  if (focus) {
    const h1 = main.querySelector('h1');
    (h1 || main).focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }
}

function renderPage(type) {
  if (!current) return;
  current.page.update(current.ctx, type);
}

function pageHead(title, sub, extra) {
  return h('div', { class: 'page-head' }, h('div', null, h('h1', { tabindex: '-1' }, title), sub ? h('p', null, sub) : null), extra);
}

const waiting = () => h('p', { class: 'loading' }, 'Waiting for the daemon…');

/* ---------- Party ---------- */

pages.party = {
  title: 'Party',
  mount(ctx, main) {
    ctx.root = h('div');
    main.append(ctx.root);
    ctx.mode = null;
  },
  update(ctx, type) {
    if (!['mount', 'status', 'sample', 'quality', 'invite', 'token'].includes(type)) return;
    const st = state.status;
    const mode = !st ? 'wait' : st.party ? 'in' : 'out';
    if (mode !== ctx.mode) {
      ctx.mode = mode;
      const hadFocus = ctx.root.contains(document.activeElement);
      ctx.root.replaceChildren(mode === 'wait' ? waiting() : mode === 'in' ? partyIn(ctx) : partyOut(ctx));
      if (hadFocus && $('h1', ctx.root)) $('h1', ctx.root).focus();
    }
    if (mode === 'out' && (type === 'status' || type === 'mount')) {
      for (const id of ['#create-player', '#join-player']) $(id, ctx.root).placeholder = st.name || '';
    }
    if (mode === 'in') updatePartyIn(ctx, st, type);
  },
};

function field(label, input, hint) {
  if (hint && !input.hasAttribute('aria-describedby')) input.setAttribute('aria-describedby', `${input.id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hint ? h('span', { class: 'hint', id: `${input.id}-hint` }, hint) : null);
}

function partyOut() {
  const createName = h('input', { id: 'create-name', name: 'name', type: 'text', required: true, maxlength: '64', autocomplete: 'off', placeholder: 'Friday night frags' });
  const createPlayer = h('input', { id: 'create-player', name: 'player_name', type: 'text', maxlength: '32', autocomplete: 'nickname' });
  const createMax = h('input', { id: 'create-max', name: 'max_members', type: 'number', min: '2', step: '1', inputmode: 'numeric', placeholder: 'no limit' });
  const createBtn = h('button', { id: 'create-submit', type: 'submit', class: 'btn btn-primary' }, 'Create party');
  const createForm = h('form', { id: 'create-form', class: 'form', 'aria-labelledby': 'create-title' },
    field('Party name', createName),
    h('div', { class: 'row' }, field('Your name (optional)', createPlayer), field('Max members (optional)', createMax)),
    h('div', { class: 'form-foot' }, createBtn));
  createForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: createName.value.trim() };
    if (createPlayer.value.trim()) body.player_name = createPlayer.value.trim();
    if (createMax.value.trim()) body.max_members = Number(createMax.value);
    const r = await act(createBtn, () => api('POST', '/party/create', body));
    if (r.ok && r.value) {
      state.invite = { partyId: r.value.party_id, code: r.value.invite };
      toast(`Party “${r.value.party_name}” created. Share the invite code.`, 'info');
      refreshStatus();
    }
  });

  const joinInvite = h('input', { id: 'join-invite', name: 'invite', type: 'text', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'lr1-…', class: 'mono' });
  const joinPlayer = h('input', { id: 'join-player', name: 'player_name', type: 'text', maxlength: '32', autocomplete: 'nickname' });
  const joinBtn = h('button', { id: 'join-submit', type: 'submit', class: 'btn btn-primary' }, 'Join party');
  const joinForm = h('form', { id: 'join-form', class: 'form', 'aria-labelledby': 'join-title' },
    field('Invite code', joinInvite),
    field('Your name (optional)', joinPlayer),
    h('div', { class: 'form-foot' }, joinBtn));
  joinForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { invite: joinInvite.value.trim() };
    if (joinPlayer.value.trim()) body.player_name = joinPlayer.value.trim();
    const r = await act(joinBtn, () => api('POST', '/party/join', body));
    if (r.ok && r.value) {
      state.invite = { partyId: r.value.party_id, code: r.value.invite };
      toast(`Joined “${r.value.party_name}”.`, 'info');
      refreshStatus();
    }
  });

  return h('div', null,
    pageHead('Party', 'Create a party and share the invite, or join a friend’s. Everyone in a party shares one virtual LAN.'),
    h('div', { class: 'grid grid-2' },
      h('section', { class: 'card', 'aria-labelledby': 'create-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'create-title' }, 'Create a party'), h('span', { class: 'sub' }, 'You become the host')),
        createForm),
      h('section', { class: 'card', 'aria-labelledby': 'join-title' },
        h('div', { class: 'card-head' }, h('h2', { id: 'join-title' }, 'Join a party'), h('span', { class: 'sub' }, 'Paste the code a friend sent')),
        joinForm)));
}

function partyIn(ctx) {
  ctx.title = h('h1', { tabindex: '-1', id: 'party-name' });
  ctx.meta = h('div', { class: 'hero-meta' });
  ctx.facts = h('div');
  ctx.invite = h('span', { id: 'invite-code', 'aria-describedby': 'invite-label' });
  ctx.invitePh = h('span', { class: 'faint small' });
  ctx.copy = h('button', { id: 'invite-copy', type: 'button', class: 'btn btn-small' }, 'Copy');
  ctx.copy.addEventListener('click', () => copyInvite(ctx));
  ctx.lock = h('button', { id: 'lock-toggle', type: 'button', class: 'btn' });
  ctx.lock.addEventListener('click', async () => {
    const party = state.status && state.status.party;
    if (!party) return;
    const locked = !party.locked;
    const r = await act(ctx.lock, () => api('POST', '/party/lock', { locked }));
    if (r.ok) {
      toast(locked ? 'Party locked: nobody new can join.' : 'Party unlocked.', 'info');
      refreshStatus();
    }
  });
  ctx.leave = h('button', { id: 'leave', type: 'button', class: 'btn btn-danger' }, 'Leave party');
  ctx.leave.addEventListener('click', async () => {
    const party = state.status && state.status.party;
    if (!party) return;
    if (!window.confirm(`Leave the party “${party.name}”?`)) return;
    const r = await act(ctx.leave, () => api('POST', '/party/leave'));
    if (r.ok) {
      state.invite = null;
      toast('You left the party.', 'info');
      refreshStatus();
    }
  });
  ctx.members = h('tbody', { id: 'members' });
  ctx.actionsTh = h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions'));
  ctx.membersSub = h('span', { class: 'sub' });
  ctx.membersEmpty = h('p', { class: 'empty' }, 'Nobody else is here yet — send your friends the invite code.');
  const cols = ['Name', 'Virtual IP', 'Path', 'Latency', 'Last 2 min', 'Playing'];
  return h('div', { class: 'stack' },
    h('section', { class: 'card', 'aria-labelledby': 'party-name' },
      h('div', { class: 'hero' },
        h('div', null, h('p', { class: 'faint small' }, 'Party'), ctx.title, ctx.meta, ctx.facts),
        h('div', null,
          h('div', { class: 'invite-box' },
            h('span', { class: 'label', id: 'invite-label' }, 'Invite code'),
            h('div', { class: 'invite-row' }, ctx.invite, ctx.invitePh, ctx.copy),
            h('p', { class: 'faint small', style: 'margin-top:6px' }, 'Anyone with this code can join while the party is unlocked.')),
          h('div', { class: 'actions' }, ctx.lock, ctx.leave)))),
    h('section', { class: 'card', 'aria-labelledby': 'members-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'members-title', tabindex: '-1' }, 'Members'), ctx.membersSub),
      h('div', { class: 'table-wrap' },
        h('table', { class: 'cards members-table', 'aria-labelledby': 'members-title' },
          h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col' }, c)), ctx.actionsTh)),
          ctx.members)),
      ctx.membersEmpty));
}

function updatePartyIn(ctx, st, type) {
  const party = st.party;
  if (type !== 'sample' && type !== 'quality') {
    setText(ctx.title, party.name);
    const online = party.members.filter((m) => m.online).length;
    ctx.meta.replaceChildren(
      party.is_host ? badge('You are the host', 'b-accent') : badge(`Host: ${party.host}`, ''),
      party.locked ? badge('Locked', 'dot b-warn') : badge('Open', 'dot b-ok'),
      badge(`${party.members.length + 1} in party`, ''));
    ctx.facts.replaceChildren(kv([
      ['Host', party.host],
      ['Your name', party.player_name || st.name],
      ['Your virtual IP', h('span', { class: 'mono' }, st.virtual_ip || '–')],
      ['Locked', party.locked ? 'yes — nobody new can join' : 'no'],
    ]));
    ctx.lock.hidden = !party.is_host;
    ctx.lock.setAttribute('aria-pressed', String(!!party.locked));
    setText(ctx.lock, party.locked ? 'Unlock party' : 'Lock party');
    ctx.actionsTh.hidden = !party.is_host;
    setText(ctx.membersSub, party.members.length ? `${online} of ${party.members.length} online` : '');
    ctx.membersEmpty.hidden = party.members.length > 0;
    ctx.members.closest('.table-wrap').hidden = party.members.length === 0;
    updateInvite(ctx, party);
  }
  syncMembers(ctx.members, party.members, party.is_host);
}

function updateInvite(ctx, party) {
  const inv = state.invite;
  if ((!inv || inv.partyId !== party.id) && state.token) {
    state.invite = { partyId: party.id, loading: true };
    api('GET', '/party/invite', undefined, { auth: true })
      .then((r) => { state.invite = { partyId: party.id, code: r.invite }; })
      .catch((e) => {
        state.invite = { partyId: party.id, error: e.message };
        toast(e.message);
      })
      .finally(() => renderPage('invite'));
  }
  const cur = state.invite && state.invite.partyId === party.id ? state.invite : null;
  const code = cur && cur.code ? cur.code : '';
  setText(ctx.invite, code);
  ctx.invitePh.hidden = !!code;
  setText(ctx.invitePh, code ? '' : !state.token ? 'Needs the API token (see the banner above).'
    : cur && cur.error ? `Could not load: ${cur.error}` : 'Loading…');
  ctx.copy.disabled = !code;
}

async function copyInvite(ctx) {
  const code = ctx.invite.textContent;
  if (!code) return;
  let ok = false;
  try {
    await navigator.clipboard.writeText(code);
    ok = true;
  } catch {
    const ta = h('textarea', { readonly: true, 'aria-hidden': 'true', style: 'position:fixed;top:0;left:0;width:1px;height:1px;opacity:0' });
    ta.value = code;
    document.body.append(ta);
    ta.select();
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    ta.remove();
    ctx.copy.focus();
  }
  if (ok) {
    setText(ctx.copy, 'Copied');
    toast('Invite code copied to the clipboard.', 'info');
    setTimeout(() => setText(ctx.copy, 'Copy'), 1800);
  } else {
    window.getSelection().selectAllChildren(ctx.invite);
    toast('Could not copy: the code is selected, press Ctrl+C.');
  }
}

function syncMembers(tbody, members, isHost) {
  // Rows are keyed by public key: two friends may well share a name.
  const rows = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  members.forEach((m, i) => {
    let tr = rows.get(m.public_key);
    if (tr) rows.delete(m.public_key);
    else tr = memberRow(m.name, m.public_key);
    fillMember(tr, m, isHost);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const tr of rows.values()) tr.remove();
}

function memberRow(name, key) {
  const td = (cls, label) => h('td', { class: cls, 'data-label': label });
  const tr = h('tr', { dataset: { member: name, key } },
    td('m-name', 'Name'), td('m-ip mono', 'Virtual IP'), td('m-path', 'Path'), td('m-latency num', 'Latency'),
    h('td', { class: 'm-trend', 'data-label': 'Last 2 min' }, svg('svg', { class: 'sparkline', role: 'img' })),
    td('m-game', 'Playing'), td('m-actions', ''));
  $('.m-name', tr).append(h('span', { class: 'presence', role: 'img' }), h('strong', null, name));
  return tr;
}

function fillMember(tr, m, isHost) {
  tr.classList.toggle('offline', !m.online);
  $('.m-name .presence', tr).setAttribute('aria-label', m.online ? 'online' : 'offline');
  $('.m-name', tr).title = m.online ? `${m.name} (online)` : `${m.name} (offline)`;
  setText($('.m-ip', tr), m.virtual_ip);
  const pathCell = $('.m-path', tr);
  const title = m.path === 'relay' && m.relay ? `via relay ${m.relay}` : m.endpoint ? `endpoint ${m.endpoint}` : '';
  const b = pathCell.firstElementChild;
  if (!b || b.textContent !== m.path || b.title !== title) pathCell.replaceChildren(pathBadge(m.path, title));
  pathCell.title = title;
  setText($('.m-latency', tr), fmtMs(m.latency_ms));
  const games = (m.games || []).map((g) => g.name).join(', ');
  setText($('.m-game', tr), games || '–');
  const series = state.series.get(m.public_key);
  sparkline($('svg.sparkline', tr), series ? series.samples : [], m.path);
  const actions = $('.m-actions', tr);
  actions.hidden = !isHost;
  let kick = $('button.kick', actions);
  if (isHost && !kick) {
    kick = h('button', { type: 'button', class: 'btn btn-small btn-danger kick', 'aria-label': `Kick ${m.name}` }, 'Kick');
    kick.addEventListener('click', async () => {
      const r = await act(kick, () => api('POST', '/party/kick', { member: m.public_key }));
      if (r.ok) {
        toast(`${m.name} was removed from the party.`, 'info');
        $('#members-title').focus();
        refreshStatus();
      }
    });
    actions.append(kick);
  } else if (!isHost && kick) kick.remove();
}

/* ---------- Network ---------- */

const natClass = (v) => ({
  endpoint_independent: 'b-ok', address_dependent: 'b-warn', address_and_port_dependent: 'b-bad', endpoint_dependent: 'b-bad',
}[v] || '');

pages.network = {
  title: 'Network',
  mount(ctx, main) {
    ctx.nat = h('div');
    ctx.conn = h('div');
    ctx.charts = h('div', { class: 'charts' });
    ctx.peerNote = h('p', { class: 'empty' });
    ctx.boxes = new Map();
    const legend = h('div', { class: 'legend', 'aria-label': 'Path colours' },
      PATHS.map((p) => h('span', null, h('i', { style: `background:${pathColor(p)}` }), p)));
    main.append(
      pageHead('Network', 'How this device reaches the internet and the path to every member.'),
      h('div', { class: 'stack' },
        h('div', { class: 'grid grid-2' },
          card('NAT', { sub: 'as seen by STUN' }, ctx.nat),
          card('Connectivity', {}, ctx.conn)),
        card('Peer quality', { sub: 'latency over the last 5 minutes', extra: legend }, ctx.peerNote, ctx.charts)));
  },
  update(ctx, type) {
    const st = state.status;
    if (!st) { ctx.nat.replaceChildren(waiting()); return; }
    if (type === 'mount' || type === 'status') renderNetFacts(ctx, st);
    if (['mount', 'status', 'sample', 'quality', 'resize'].includes(type)) renderCharts(ctx, st);
  },
};

function renderNetFacts(ctx, st) {
  const nat = st.nat;
  if (!nat) {
    ctx.nat.replaceChildren(h('p', { class: 'empty' }, 'No STUN answer yet (or the daemon runs without STUN servers).'));
  } else {
    const bl = nat.binding_lifetime;
    const life = !bl ? 'not measured yet'
      : bl.measuring ? `at least ${fmtDur(bl.at_least_s)} (measuring…)`
        : bl.below_s != null ? `${fmtDur(bl.at_least_s)} – ${fmtDur(bl.below_s)}` : `at least ${fmtDur(bl.at_least_s)}`;
    ctx.nat.replaceChildren(kv([
      ['Mapping', badge(words(nat.mapping), natClass(nat.mapping))],
      ['Filtering', badge(words(nat.filtering), natClass(nat.filtering))],
      ['Public address', h('span', { class: 'mono' }, nat.public_addr || '–')],
      ['Port preserved', yesNo(nat.port_preserved)],
      ['Binding lifetime', life],
      ['Keepalive', nat.keepalive_s ? `every ${Number(nat.keepalive_s).toFixed(nat.keepalive_s % 1 ? 1 : 0)} s` : '–'],
    ]));
  }
  const pm = st.port_mapping;
  const ctl = st.control;
  const wg = st.wireguard || {};
  ctx.conn.replaceChildren(kv([
    ['Control plane', badge(ctl === 'connected' || ctl === 'connecting' ? ctl : 'error',
      ctl === 'connected' ? 'dot b-ok' : ctl === 'connecting' ? 'dot b-info' : 'dot b-bad', ctl)],
    ctl !== 'connected' && ctl !== 'connecting' ? ['Last error', ctl] : null,
    ['Control URL', h('span', { class: 'mono' }, st.control_url || '–')],
    ['Host mode', st.host_mode ? 'yes — this daemon runs the control plane' : 'no'],
    ['Port mapping', pm ? h('span', null, `${String(pm.protocol).toUpperCase()} `, h('span', { class: 'mono' }, pm.external),
      ` via ${pm.gateway}, renews within ${fmtDur(pm.expires_in_s)}`) : 'none granted'],
    ['Relayed addresses', chips(st.relayed || [], 'none')],
    ['WireGuard', `${wg.interface || 'userspace'} · port ${wg.listen_port ?? '–'} · ${(wg.peers || []).length} peers`],
    wg.dropped_spoofed ? ['Spoofed packets dropped', fmtNum(wg.dropped_spoofed)] : null,
  ]));
}

function renderCharts(ctx, st) {
  const members = st.party ? st.party.members : [];
  ctx.peerNote.hidden = members.length > 0;
  setText(ctx.peerNote, st.party ? 'Nobody else is in the party yet.' : 'Join a party to see the quality of the path to each member.');
  const keep = new Set();
  let now = 0;
  for (const s of state.series.values()) if (s.samples.length) now = Math.max(now, s.samples[s.samples.length - 1].at_unix_ms);
  members.forEach((m, i) => {
    keep.add(m.public_key);
    let b = ctx.boxes.get(m.public_key);
    if (!b) {
      b = { title: h('h3'), badge: h('span'), box: h('div', { class: 'chart-box' }), meta: h('div', { class: 'chart-meta' }) };
      b.el = h('article', { class: 'card', style: 'box-shadow:none;background:var(--panel2)' },
        h('div', { class: 'card-head' }, b.title, b.badge), b.box, b.meta);
      ctx.boxes.set(m.public_key, b);
    }
    if (ctx.charts.children[i] !== b.el) ctx.charts.insertBefore(b.el, ctx.charts.children[i] || null);
    setText(b.title, m.name);
    const title = m.path === 'relay' && m.relay ? `via relay ${m.relay}` : '';
    b.badge.replaceChildren(pathBadge(m.path, title));
    const samples = (state.series.get(m.public_key) || { samples: [] }).samples;
    latencyChart(b.box, samples, { now: now || undefined, label: `${m.name}: ` });
    const sm = summary(samples);
    b.meta.replaceChildren(
      h('span', null, 'now ', h('b', null, fmtMs(m.latency_ms))),
      h('span', null, 'min ', h('b', null, fmtMs(sm.min))),
      h('span', null, 'avg ', h('b', null, fmtMs(sm.avg))),
      h('span', null, 'max ', h('b', null, fmtMs(sm.max))),
      h('span', null, 'no answer ', h('b', null, `${Math.round(sm.missing * 100)}%`)),
      h('span', null, 'path changes ', h('b', null, fmtNum(m.path_changes || 0))));
  });
  for (const [key, b] of ctx.boxes) if (!keep.has(key)) { b.el.remove(); ctx.boxes.delete(key); }
}

/* ---------- Games ---------- */

pages.games = {
  title: 'Games',
  mount(ctx, main) {
    ctx.scan = h('p');
    ctx.detected = h('div');
    ctx.party = h('div');
    ctx.tuning = h('div');
    ctx.history = h('div');
    ctx.library = h('div');
    ctx.profiles = h('div');
    ctx.profileErrors = h('div');
    ctx.count = h('span', { class: 'sub', 'aria-live': 'polite' });
    ctx.filter = h('input', { id: 'profile-filter', type: 'search', class: 'filter', placeholder: 'Filter by name, genre, port…', autocomplete: 'off' });
    ctx.filter.addEventListener('input', () => renderProfiles(ctx));
    const head = pageHead('Games', null);
    head.firstElementChild.append(ctx.scan);
    ctx.scan.className = 'muted';
    main.append(head, h('div', { class: 'stack' },
      h('div', { class: 'grid grid-2' },
        card('Running here', { sub: 'detected on this device' }, ctx.detected),
        card('The party plays', {}, ctx.party)),
      card('Tuning in force', { sub: 'what the running games changed' }, ctx.tuning),
      h('div', { class: 'grid grid-2' },
        card('History', { sub: 'games started and stopped' }, ctx.history),
        card('Steam library', { sub: 'installed games' }, ctx.library)),
      card('Profiles', { extra: ctx.count },
        h('div', { class: 'field', style: 'margin-bottom:12px' },
          h('label', { for: 'profile-filter', class: 'sr-only' }, 'Filter profiles'), ctx.filter),
        ctx.profileErrors, ctx.profiles)));
    const get = (path, key) => api('GET', path).then((v) => { state[key] = v; }).catch((e) => toast(e.message));
    Promise.all([
      get('/games/profiles', 'profiles'), get('/games/library', 'library'), get('/games/history', 'history'),
    ]).then(() => { if (current && current.ctx === ctx) pages.games.update(ctx, 'data'); });
  },
  update(ctx, type) {
    if (['mount', 'games', 'status', 'data'].includes(type)) renderGamesLive(ctx);
    if (type === 'mount' || type === 'data') {
      renderHistory(ctx);
      renderLibrary(ctx);
      renderProfiles(ctx);
    }
  },
};

function renderGamesLive(ctx) {
  const g = state.games;
  if (!g) { ctx.detected.replaceChildren(waiting()); return; }
  setText(ctx.scan, g.last_scan_ms
    ? `Last scan ${fmtAgo(g.last_scan_ms)} · took ${(g.scan_cpu_us / 1000).toFixed(1)} ms CPU · every ${g.scan_interval_s} s`
    : 'Not scanned yet.');
  ctx.detected.replaceChildren(table(
    [{ label: 'Game' }, { label: 'Confidence' }, { label: 'Method' }, { label: 'PID', num: true }, { label: 'Since' }],
    (g.detected || []).map((d) => h('tr', null,
      h('td', null, h('strong', null, d.name)),
      h('td', { class: 'nowrap' }, badge(confidenceWord(d.confidence), confidenceCls(d.confidence), `confidence ${d.confidence.toFixed(2)}`),
        h('span', { class: 'faint small' }, ` ${Math.round(d.confidence * 100)}%`)),
      h('td', null, d.method),
      h('td', { class: 'num mono' }, d.pid || '–'),
      h('td', { class: 'nowrap', title: d.since_ms ? fmtDate(d.since_ms) : null }, d.since_ms ? fmtAgo(d.since_ms) : '–'))),
    { empty: 'No known game is running here.' }));

  // Who plays what: from the members' status, plus ids the party reports without a member match.
  const byGame = new Map();
  const members = (state.status && state.status.party && state.status.party.members) || [];
  for (const m of members) for (const pg of m.games || []) {
    if (!byGame.has(pg.id)) byGame.set(pg.id, { name: pg.name, players: [] });
    byGame.get(pg.id).players.push(m.name);
  }
  const names = new Map(((state.profiles && state.profiles.profiles) || []).map((p) => [p.id, p.name]));
  for (const id of g.party || []) if (!byGame.has(id)) byGame.set(id, { name: names.get(id) || id, players: [] });
  ctx.party.replaceChildren(byGame.size
    ? h('ul', { class: 'plain-list', style: 'margin:0;padding-left:18px;display:grid;gap:6px' },
      [...byGame.values()].map((x) => h('li', null, h('strong', null, x.name),
        x.players.length ? h('span', { class: 'muted' }, ` — ${x.players.join(', ')}`) : null)))
    : h('p', { class: 'empty' }, state.status && state.status.party ? 'Nobody in the party plays a known game.' : 'Not in a party.'));

  const t = g.tuning;
  ctx.tuning.replaceChildren(t ? h('div', { class: 'grid grid-2' },
    kv([
      ['Priority ports', chips((t.priority_ports || []).map(port))],
      ['DSCP', `${t.dscp}${t.dscp === 46 ? ' (EF)' : t.dscp === 18 ? ' (AF21)' : ''}`],
      ['MTU', t.mtu],
    ]),
    kv([
      ['LAN ports', chips(t.lan_ports)],
      ['LAN groups', chips(t.lan_groups)],
      ['Keepalive', `every ${t.keepalive_s} s`],
    ])) : h('p', { class: 'empty' }, 'Nothing applied: nobody in the party plays a known game.'));
}

function renderHistory(ctx) {
  const hist = state.history;
  if (!hist) { ctx.history.replaceChildren(h('p', { class: 'empty' }, 'Loading…')); return; }
  const rows = hist.slice().sort((a, b) => b.at_ms - a.at_ms).slice(0, 100);
  ctx.history.replaceChildren(table(
    [{ label: 'Time' }, { label: 'Event' }, { label: 'Game' }, { label: 'Detection' }],
    rows.map((e) => h('tr', null,
      h('td', { class: 'nowrap', title: fmtDate(e.at_ms) }, fmtClock(e.at_ms)),
      h('td', null, badge(e.event, e.event === 'started' ? 'b-ok' : '')),
      h('td', null, e.name),
      h('td', { class: 'small muted nowrap' }, `${confidenceWord(e.confidence)} · ${e.method} · pid ${e.pid}`))),
    { empty: 'No game started or stopped since the daemon started.' }));
}

function renderLibrary(ctx) {
  const lib = state.library;
  if (!lib) { ctx.library.replaceChildren(h('p', { class: 'empty' }, 'Loading…')); return; }
  const rows = lib.slice().sort((a, b) => a.name.localeCompare(b.name));
  ctx.library.replaceChildren(table(
    [{ label: 'Game' }, { label: 'App ID', num: true }, { label: 'Profile' }],
    rows.map((g) => h('tr', null,
      h('td', { title: `${g.library}/${g.install_dir}` }, g.name),
      h('td', { class: 'num mono' }, g.app_id),
      h('td', null, g.profile ? badge(g.profile, 'b-accent') : h('span', { class: 'faint small' }, 'no profile')))),
    { empty: 'No Steam library found.' }));
}

function renderProfiles(ctx) {
  const data = state.profiles;
  if (!data) { ctx.profiles.replaceChildren(h('p', { class: 'empty' }, 'Loading…')); return; }
  const errs = data.errors || [];
  ctx.profileErrors.replaceChildren(errs.length ? h('div', { class: 'errors', role: 'note' },
    h('strong', null, `${errs.length} problem${errs.length === 1 ? '' : 's'} in profile files`),
    h('ul', null, errs.map((e) => h('li', null, h('span', { class: 'mono' }, `${e.file}${e.game ? `: ${e.game}${e.field ? `.${e.field}` : ''}` : ''}`), `: ${e.message}`)))) : null);
  const all = (data.profiles || []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const terms = ctx.filter.value.toLowerCase().split(/\s+/).filter(Boolean);
  const list = all.filter((p) => {
    if (!terms.length) return true;
    const hay = [p.name, p.id, p.genre, p.priority, p.protocol, ...(p.ports || []).map(port),
      ...(p.executables || []).map((x) => (typeof x === 'string' ? x : x.name))].join(' ').toLowerCase();
    return terms.every((t) => hay.includes(t));
  });
  setText(ctx.count, terms.length ? `${list.length} of ${all.length}` : `${all.length} games`);
  const prio = { high: 'b-accent', medium: 'b-info', low: '' };
  ctx.profiles.replaceChildren(table(
    [{ label: 'Game' }, { label: 'Genre' }, { label: 'Ports' }, { label: 'Priority' }, { label: 'Protocol' }],
    list.map((p) => h('tr', null,
      h('td', { title: p.description || null }, h('strong', null, p.name), h('div', { class: 'faint small mono' }, p.id)),
      h('td', null, p.genre),
      h('td', null, chips((p.ports || []).map(port), '–')),
      h('td', null, badge(p.priority, prio[p.priority] || '')),
      h('td', { class: 'small' }, p.protocol, p.broadcast ? h('span', { class: 'faint' }, ' · LAN broadcast') : null))),
    { empty: all.length ? 'No profile matches the filter.' : 'No profiles loaded.' }));
}

/* ---------- LAN ---------- */

const COUNTERS = [
  ['captured', 'Captured', 'Broadcast/multicast packets this device sent'],
  ['captured_physical', 'From physical NIC', 'Captured on the physical interface'],
  ['forwarded', 'Forwarded', 'Captured packets sent to at least one member'],
  ['copies', 'Copies sent', 'One per recipient'],
  ['not_forwarded', 'Not forwarded', 'To a port or group that is not forwarded'],
  ['received', 'Received', 'Packets that arrived from members'],
  ['injected', 'Injected', 'Written to the party interface'],
  ['deduplicated', 'Duplicates', 'Dropped as duplicates'],
  ['rate_limited', 'Rate limited', 'Dropped by the per-source limits'],
  ['unsupported', 'Unsupported', 'Not UDP, fragmented or malformed'],
];

pages.lan = {
  title: 'LAN',
  mount(ctx, main) {
    ctx.counters = h('div');
    ctx.forward = h('div');
    ctx.capture = h('div');
    ctx.trace = h('div');
    ctx.traceSub = h('span', { class: 'sub' });
    main.append(
      pageHead('LAN emulation', 'Broadcast and multicast discovery carried across the party, so games find each other as on one LAN.'),
      h('div', { class: 'stack' },
        card('Counters', { sub: 'since the daemon started' }, ctx.counters),
        h('div', { class: 'grid grid-2' }, card('Forwarded', {}, ctx.forward), card('Capture', {}, ctx.capture)),
        card('Broadcast trace', { extra: ctx.traceSub }, ctx.trace)));
    api('GET', '/lan/trace')
      .then((t) => { addTrace((t && t.events) || [], true); if (current && current.ctx === ctx) pages.lan.update(ctx, 'lan_events'); })
      .catch((e) => toast(e.message));
  },
  update(ctx, type) {
    if (type === 'mount' || type === 'lan') renderLan(ctx);
    if (type === 'mount' || type === 'lan_events') renderTrace(ctx);
  },
};

function renderLan(ctx) {
  const lan = state.lan;
  if (!lan) { ctx.counters.replaceChildren(waiting()); return; }
  const c = lan.counters || {};
  ctx.counters.replaceChildren(h('div', { class: 'stats' },
    COUNTERS.map(([k, label, title]) => h('div', { class: 'stat', title }, h('div', { class: 'v' }, fmtNum(c[k] || 0)), h('div', { class: 'k' }, label)))));
  const s = lan.settings || {};
  ctx.forward.replaceChildren(kv([
    ['Mode', s.all ? badge('every UDP port and group', 'b-warn') : badge('allow-list', 'b-ok')],
    ['Ports', s.all ? h('span', { class: 'muted' }, 'all') : chips(lan.forwarded_ports)],
    ['Groups', chips(lan.forwarded_groups)],
    ['Default ports', chips(lan.default_ports)],
    ['From game profiles', chips(lan.profile_ports)],
    ['Joined groups', chips(lan.joined_groups)],
  ]));
  ctx.capture.replaceChildren(kv([
    ['Physical interface', lan.physical_capture ? badge('watched', 'dot b-ok') : badge(s.physical ? 'not watched' : 'off', s.physical ? 'dot b-bad' : '')],
    lan.physical_error ? ['Why not', h('span', { class: 'c-unreachable' }, lan.physical_error)] : null,
    ['Rate limit', `${fmtNum(s.rate_packets_per_s)} packets/s · ${fmtBytes(s.rate_bytes_per_s || 0)}/s per source`],
  ]));
}

function traceOutcome(e) {
  const out = [];
  if (e.direction === 'in') {
    if (e.from) out.push(h('span', null, `from ${memberLabel(e.from)}`));
    out.push(e.dropped ? h('span', { class: 'drop' }, `dropped: ${e.dropped}`) : h('span', { class: 'ok' }, 'injected'));
    return out;
  }
  if (e.sent_to && e.sent_to.length) out.push(h('span', { class: 'ok' }, `→ ${e.sent_to.map(memberLabel).join(', ')}`));
  for (const s of e.skipped || []) out.push(h('span', { class: 'skip', title: s.ip }, `skipped ${memberLabel(s)} (${s.reason})`));
  if (e.dropped) out.push(h('span', { class: 'drop' }, `dropped: ${e.dropped}`));
  if (!out.length) out.push(h('span', { class: 'faint' }, 'nobody to send to'));
  return out;
}

function renderTrace(ctx) {
  const ev = state.trace;
  setText(ctx.traceSub, ev.length ? `newest first · ${ev.length}${ev.length >= TRACE_CAP ? ' (latest kept)' : ''}` : '');
  ctx.trace.replaceChildren(table(
    [{ label: 'Time' }, { label: 'Dir' }, { label: 'Kind' }, { label: 'Source → destination' }, { label: 'Size', num: true }, { label: 'Outcome' }],
    ev.map((e) => h('tr', null,
      h('td', { class: 't-time nowrap mono small', title: fmtDate(e.at_unix_ms) }, fmtClock(e.at_unix_ms, true)),
      h('td', { class: 't-dir nowrap' }, h('span', { class: `dir dir-${e.direction === 'in' ? 'in' : 'out'}` }, e.direction === 'in' ? '↓ in' : '↑ out')),
      h('td', { class: 't-kind nowrap' }, e.kind, h('span', { class: 'faint small' }, ` · ${e.via}`)),
      h('td', { class: 't-addr mono small nowrap' }, `${e.src} → ${e.dst}`),
      h('td', { class: 't-size num nowrap' }, `${e.size} B`),
      h('td', { class: 't-out' }, h('div', { class: 'outcome' }, traceOutcome(e))))),
    { cls: 'trace', empty: 'No broadcast or multicast packet yet. Start a game’s LAN browser to see discovery here.' }));
}

/* ---------- Settings ---------- */

pages.settings = {
  title: 'Settings',
  mount(ctx, main) {
    ctx.touched = new Set();
    const text = (id, attrs = {}) => h('input', { id, type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
    const sw = (id, label, hint) => {
      const input = h('input', { id, type: 'checkbox', role: 'switch', 'aria-describedby': `${id}-hint` });
      return [input, h('label', { class: 'switch', for: id }, input,
        h('span', null, h('span', { class: 'label' }, label), h('span', { class: 'hint', id: `${id}-hint` }, hint)))];
    };
    ctx.f = {
      name: text('set-player-name', { maxlength: '64', autocomplete: 'nickname' }),
      ports: text('set-lan-ports', { inputmode: 'numeric', placeholder: 'e.g. 27960, 7777', class: 'mono', 'aria-describedby': 'set-lan-ports-hint' }),
      groups: text('set-lan-groups', { placeholder: 'e.g. 239.255.255.250', class: 'mono', 'aria-describedby': 'set-lan-groups-hint' }),
      pps: h('input', { id: 'set-rate-pps', type: 'number', min: '0', step: '1', inputmode: 'numeric' }),
      bps: h('input', { id: 'set-rate-bps', type: 'number', min: '0', step: '1', inputmode: 'numeric' }),
    };
    const [all, allLabel] = sw('set-lan-all', 'Forward every UDP port and multicast group', 'Useful for games without a profile; carries more noise.');
    const [phys, physLabel] = sw('set-lan-physical', 'Capture on the physical interface', 'Also catch discovery that games send out of your real network card.');
    ctx.f.all = all;
    ctx.f.physical = phys;
    ctx.saved = h('span', { id: 'settings-status', class: 'saved', role: 'status' });
    ctx.error = h('p', { id: 'settings-error', class: 'form-error' });
    ctx.save = h('button', { id: 'settings-save', type: 'submit', class: 'btn btn-primary' }, 'Save changes');
    ctx.form = h('form', { id: 'settings-form', class: 'stack narrow', novalidate: true, 'aria-describedby': 'settings-error' },
      h('section', { class: 'card' }, h('fieldset', { class: 'form' }, h('legend', null, 'Player'),
        field('Player name', ctx.f.name, 'The name other members see, from the next party you create or join.'))),
      h('section', { class: 'card' }, h('fieldset', { class: 'form' }, h('legend', null, 'LAN emulation'),
        allLabel, physLabel,
        field('Extra UDP ports', ctx.f.ports, 'Comma-separated, besides the defaults and the running games’ ports.'),
        field('Multicast groups', ctx.f.groups, 'Comma-separated, 224.0.0.0 – 239.255.255.255.'),
        h('div', { class: 'row' },
          field('Rate limit (packets/s per source)', ctx.f.pps),
          field('Rate limit (bytes/s per source)', ctx.f.bps)))),
      h('div', { class: 'form-foot' }, ctx.save, ctx.saved, ctx.error));
    ctx.form.addEventListener('input', (e) => {
      if (e.target.id) ctx.touched.add(e.target.id);
      setText(ctx.saved, '');
    });
    ctx.form.addEventListener('submit', (e) => { e.preventDefault(); saveSettings(ctx); });
    main.append(pageHead('Settings', 'Kept by the daemon across restarts.'), ctx.form);
    if (!state.settings) {
      api('GET', '/settings').then((s) => { if (!state.settings) { state.settings = s; renderPage('settings'); } })
        .catch((e2) => toast(e2.message));
    }
  },
  update(ctx, type) {
    if (type !== 'mount' && type !== 'settings') return;
    fillSettings(ctx, false);
  },
};

function fillSettings(ctx, force) {
  const s = state.settings;
  if (!s) return;
  const lan = s.lan || {};
  const set = (el, v, prop = 'value') => {
    if (force || !ctx.touched.has(el.id)) el[prop] = v;
  };
  set(ctx.f.name, s.player_name || '');
  set(ctx.f.all, !!lan.all, 'checked');
  set(ctx.f.physical, !!lan.physical, 'checked');
  set(ctx.f.ports, (lan.ports || []).join(', '));
  set(ctx.f.groups, (lan.groups || []).join(', '));
  set(ctx.f.pps, lan.rate_packets_per_s ?? '');
  set(ctx.f.bps, lan.rate_bytes_per_s ?? '');
}

const splitList = (v) => v.split(/[\s,;]+/).map((x) => x.trim()).filter(Boolean);
const sameList = (a, b) => a.length === b.length && a.every((x, i) => String(x) === String(b[i]));

function parseSettings(ctx) {
  const bad = (el, msg) => { el.setAttribute('aria-invalid', 'true'); el.focus(); throw new Error(msg); };
  for (const el of Object.values(ctx.f)) el.removeAttribute('aria-invalid');
  const ports = [];
  for (const p of splitList(ctx.f.ports.value)) {
    const n = Number(p);
    if (!/^\d+$/.test(p) || n < 1 || n > 65535) bad(ctx.f.ports, `“${p}” is not a UDP port (1–65535).`);
    if (!ports.includes(n)) ports.push(n);
  }
  const groups = [];
  for (const g of splitList(ctx.f.groups.value)) {
    const parts = g.split('.');
    if (parts.length !== 4 || parts.some((x) => !/^\d{1,3}$/.test(x) || Number(x) > 255)) bad(ctx.f.groups, `“${g}” is not an IPv4 address.`);
    if (!groups.includes(g)) groups.push(g);
  }
  const int = (el, label) => {
    const v = el.value.trim();
    if (!/^\d+$/.test(v) || Number(v) > 4294967295) bad(el, `${label} must be a whole number (0 or more).`);
    return Number(v);
  };
  return {
    player_name: ctx.f.name.value.trim(),
    all: ctx.f.all.checked,
    physical: ctx.f.physical.checked,
    ports,
    groups,
    rate_packets_per_s: int(ctx.f.pps, 'The packet rate limit'),
    rate_bytes_per_s: int(ctx.f.bps, 'The byte rate limit'),
  };
}

async function saveSettings(ctx) {
  setText(ctx.saved, '');
  setText(ctx.error, '');
  const cur = state.settings;
  if (!cur) { setText(ctx.error, 'The settings have not loaded yet.'); return; }
  let v;
  try { v = parseSettings(ctx); } catch (e) { setText(ctx.error, e.message); return; }
  const lanCur = cur.lan || {};
  const body = {};
  if (v.player_name !== cur.player_name) body.player_name = v.player_name;
  const lan = {};
  for (const k of ['all', 'physical', 'rate_packets_per_s', 'rate_bytes_per_s']) if (v[k] !== lanCur[k]) lan[k] = v[k];
  if (!sameList(v.ports, lanCur.ports || [])) lan.ports = v.ports;
  if (!sameList(v.groups, lanCur.groups || [])) lan.groups = v.groups;
  if (Object.keys(lan).length) body.lan = lan;
  if (!Object.keys(body).length) {
    ctx.touched.clear();
    fillSettings(ctx, true);
    setText(ctx.saved, 'Nothing to save');
    return;
  }
  const r = await act(ctx.save, () => api('PATCH', '/settings', body), {
    onError: (e) => { setText(ctx.error, e.message); toast(e.message); },
  });
  if (!r.ok) return;
  if (r.value && typeof r.value === 'object') state.settings = r.value;
  ctx.touched.clear();
  fillSettings(ctx, true);
  setText(ctx.saved, 'Saved');
  renderChrome();
  setTimeout(() => { if (ctx.saved.textContent === 'Saved') setText(ctx.saved, ''); }, 5000);
}

/* ---------- start ---------- */

function start() {
  takeTokenFromUrl();
  state.token = load(TOKEN_KEY);
  applyTheme();
  media.addEventListener('change', applyTheme);
  $('#theme-toggle').addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    store(THEME_KEY, next);
    applyTheme();
  });
  $('#skip-link').addEventListener('click', (e) => {
    e.preventDefault();
    const main = $('#main');
    const h1 = main.querySelector('h1');
    (h1 || main).focus();
    (h1 || main).scrollIntoView();
  });
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('#token-input');
    const t = input.value.trim();
    if (!t) return;
    input.value = '';
    setToken(t);
    toast('Token saved: you can control your party now.', 'info');
  });
  window.addEventListener('hashchange', () => {
    if (/token=/.test(location.hash)) { takeTokenFromUrl(); setToken(load(TOKEN_KEY)); }
    if (current && current.name === routeName()) return;
    mountPage(true);
  });
  let resizeFrame = 0;
  window.addEventListener('resize', () => {
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(() => { if (current && current.name === 'network') renderPage('resize'); });
  });
  renderChrome();
  mountPage(false);
  connect();
}

start();
