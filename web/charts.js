// Inline SVG charts: a latency sparkline for the members table and a latency-over-time
// chart with the path as colour. Everything is built with DOM calls (no markup strings).

const NS = 'http://www.w3.org/2000/svg';
export const PATHS = ['direct', 'relay', 'connecting', 'unreachable'];
const PATH_VAR = { direct: 'var(--ok)', relay: 'var(--warn)', connecting: 'var(--info)', unreachable: 'var(--bad)' };
export const pathColor = (p) => PATH_VAR[p] || 'var(--faint)';

export function svg(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  for (const k of kids) if (k != null) el.append(k);
  return el;
}

const f1 = (n) => (Math.round(n * 10) / 10).toString();

// Runs of consecutive samples with a latency and the same path, as polyline point lists.
function runs(samples, x, y) {
  const out = [];
  let cur = null;
  for (const s of samples) {
    if (s.latency_ms == null) { cur = null; continue; }
    const pt = `${f1(x(s.at_unix_ms))},${f1(y(s.latency_ms))}`;
    if (!cur || cur.path !== s.path) {
      // Join the new run to the previous point so the line stays continuous across a path change.
      const prev = cur && cur.pts[cur.pts.length - 1];
      cur = { path: s.path, pts: prev ? [prev] : [] };
      out.push(cur);
    }
    cur.pts.push(pt);
  }
  return out;
}

/** Redraws `el` (an svg.sparkline) from the samples of the last `windowS` seconds. */
export function sparkline(el, samples, path, windowS = 120) {
  const W = 120, H = 28;
  el.setAttribute('viewBox', `0 0 ${W} ${H}`);
  el.setAttribute('preserveAspectRatio', 'none');
  const end = samples.length ? samples[samples.length - 1].at_unix_ms : Date.now();
  const start = end - windowS * 1000;
  const pts = samples.filter((s) => s.at_unix_ms >= start);
  const vals = pts.map((s) => s.latency_ms).filter((v) => v != null);
  const kids = [];
  if (vals.length) {
    const max = Math.max(...vals) * 1.15 || 1;
    const min = Math.min(0, ...vals);
    const x = (t) => ((t - start) / (windowS * 1000)) * W;
    const y = (v) => H - 2 - ((v - min) / (max - min)) * (H - 4);
    for (const r of runs(pts, x, y)) {
      kids.push(svg('polyline', {
        points: r.pts.join(' '), fill: 'none', stroke: pathColor(r.path), 'stroke-width': 1.6,
        'stroke-linejoin': 'round', 'stroke-linecap': 'round', 'vector-effect': 'non-scaling-stroke',
      }));
    }
    const last = pts[pts.length - 1];
    if (last && last.latency_ms != null) {
      kids.push(svg('circle', { cx: f1(x(last.at_unix_ms)), cy: f1(y(last.latency_ms)), r: 2, fill: pathColor(last.path) }));
    }
  } else {
    kids.push(svg('line', { x1: 0, x2: W, y1: H - 2, y2: H - 2, stroke: pathColor(path), 'stroke-dasharray': '2 3', 'stroke-width': 1, 'vector-effect': 'non-scaling-stroke' }));
  }
  el.replaceChildren(...kids);
  const last = vals[vals.length - 1];
  el.setAttribute('aria-label', vals.length
    ? `Latency over the last ${Math.round(windowS / 60)} minutes: ${fmtMs(Math.min(...vals))} to ${fmtMs(Math.max(...vals))}, now ${last == null ? 'unknown' : fmtMs(last)}`
    : 'No latency samples yet');
}

export const fmtMs = (v) => (v == null ? '–' : `${v.toFixed(2)} ms`);

function niceStep(range, ticks) {
  const raw = range / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * mag;
}

/**
 * Draws latency against time for the last `windowS` seconds into `box` (a div), sized to
 * the box's width. The line and a strip under the plot take the colour of the path.
 */
export function latencyChart(box, samples, { windowS = 300, now, label = '' } = {}) {
  const W = Math.max(260, Math.round(box.clientWidth || 560));
  const H = 190;
  const m = { l: 60, r: 12, t: 12, b: 40 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const end = now ?? (samples.length ? samples[samples.length - 1].at_unix_ms : Date.now());
  const start = end - windowS * 1000;
  const pts = samples.filter((s) => s.at_unix_ms >= start && s.at_unix_ms <= end);
  const vals = pts.map((s) => s.latency_ms).filter((v) => v != null);
  const top = Math.max(vals.length ? Math.max(...vals) * 1.1 : 1, 0.1);
  const step = niceStep(top, 4);
  const ymax = Math.ceil(top / step) * step;
  const x = (t) => m.l + ((t - start) / (windowS * 1000)) * pw;
  const y = (v) => m.t + ph - (v / ymax) * ph;
  const kids = [];
  let dec = 0;
  while (dec < 3 && Math.abs(step * 10 ** dec - Math.round(step * 10 ** dec)) > 1e-6) dec++;
  for (let v = 0; v <= ymax + step / 2; v += step) {
    kids.push(svg('line', { class: 'grid-line', x1: m.l, x2: W - m.r, y1: f1(y(v)), y2: f1(y(v)) }));
    kids.push(svg('text', { class: 'axis-text', x: m.l - 8, y: f1(y(v) + 4), 'text-anchor': 'end' }, `${v.toFixed(dec)} ms`));
  }
  const stripY = m.t + ph + 6;
  const every = pw < 300 ? 120 : 60;
  for (let s = windowS % every; s <= windowS; s += every) {
    const xt = x(start + s * 1000);
    const left = windowS - s;
    kids.push(svg('text', { class: 'axis-text', x: f1(xt), y: H - 6, 'text-anchor': s === 0 ? 'start' : s === windowS ? 'end' : 'middle' },
      left === 0 ? 'now' : `−${left / 60}m`));
  }
  // Path strip: one rectangle per run of the same path (including samples without latency).
  let runStart = null;
  for (let i = 0; i < pts.length; i++) {
    const s = pts[i];
    if (!runStart) runStart = s;
    const next = pts[i + 1];
    if (!next || next.path !== s.path || next.at_unix_ms - s.at_unix_ms > 3000) {
      const x0 = x(runStart.at_unix_ms), x1 = x(s.at_unix_ms + 1000);
      kids.push(svg('rect', { x: f1(x0), y: stripY, width: f1(Math.max(1.5, Math.min(x1, W - m.r) - x0)), height: 6, rx: 1.5, fill: pathColor(s.path) },
        svg('title', {}, s.path)));
      runStart = null;
    }
  }
  for (const r of runs(pts, x, y)) {
    kids.push(svg('polyline', {
      points: r.pts.join(' '), fill: 'none', stroke: pathColor(r.path), 'stroke-width': 2,
      'stroke-linejoin': 'round', 'stroke-linecap': 'round',
    }));
  }
  if (!vals.length) {
    kids.push(svg('text', { class: 'axis-text', x: m.l + pw / 2, y: m.t + ph / 2, 'text-anchor': 'middle' },
      pts.length ? 'No answer in this window' : 'No samples yet'));
  }
  const el = svg('svg', {
    viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${label}Latency over the last ${windowS / 60} minutes` + (vals.length
      ? `: min ${fmtMs(Math.min(...vals))}, max ${fmtMs(Math.max(...vals))}` : ': no samples yet'),
  }, ...kids);
  box.replaceChildren(el);
}

/** Summary of the samples of the window: min/avg/max latency, loss share, current path. */
export function summary(samples) {
  const vals = samples.map((s) => s.latency_ms).filter((v) => v != null);
  const sum = vals.reduce((a, b) => a + b, 0);
  return {
    min: vals.length ? Math.min(...vals) : null,
    max: vals.length ? Math.max(...vals) : null,
    avg: vals.length ? sum / vals.length : null,
    missing: samples.length ? (samples.length - vals.length) / samples.length : 0,
    count: samples.length,
  };
}
