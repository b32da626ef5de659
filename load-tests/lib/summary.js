// handleSummary for every scenario: the full k6 summary as JSON (SUMMARY_JSON, default
// k6-summary.json) and a short text on stdout: thresholds with pass/fail, then queries by outcome.
// (k6's own text summary lives in a remote jslib; the runner has no network, so this is local.)

function fmt(v) {
  if (v === undefined || v === null) return '-';
  if (typeof v !== 'number') return String(v);
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(2);
  return v.toFixed(4);
}

function text(scenario, data) {
  const lines = [];
  const dur = (data.state && data.state.testRunDurationMs) || 0;
  lines.push('');
  lines.push(`scenario ${scenario}: ${(dur / 1000).toFixed(1)} s`);
  lines.push('thresholds:');
  let failed = 0;
  for (const [name, metric] of Object.entries(data.metrics).sort()) {
    if (!metric.thresholds) continue;
    for (const [expr, res] of Object.entries(metric.thresholds)) {
      if (!res.ok) failed += 1;
      const key = expr.match(/^(p\(\d+(\.\d+)?\)|avg|min|max|med|rate|count)/);
      const val = key ? metric.values[key[1]] : undefined;
      lines.push(`  ${res.ok ? 'PASS' : 'FAIL'}  ${name}  ${expr}  (actual ${fmt(val)})`);
    }
  }
  lines.push('queries:');
  for (const [name, metric] of Object.entries(data.metrics).sort()) {
    if (name.startsWith('queries{')) lines.push(`  ${name}: ${metric.values.count}`);
  }
  const q = data.metrics.queries;
  const d = data.metrics.query_duration;
  if (q) lines.push(`  total: ${q.values.count} (${fmt(q.values.rate)}/s)`);
  if (d) {
    const v = d.values;
    lines.push(`  duration ms: p50 ${fmt(v.med)}  p90 ${fmt(v['p(90)'])}  p95 ${fmt(v['p(95)'])}  p99 ${fmt(v['p(99)'])}  max ${fmt(v.max)}`);
  }
  lines.push(failed ? `${failed} threshold(s) FAILED` : 'all thresholds passed');
  lines.push('');
  return lines.join('\n');
}

/**
 * handleSummary for `scenario`. `phases` ([{name, start, end}] in seconds from the start of the
 * load) go into the JSON so the runner can mark them on its plots and compare them.
 */
export function summaryHandler(scenario, phases = []) {
  return function handleSummary(data) {
    const out = { stdout: text(scenario, data) };
    const json = { quiver: { scenario, phases }, ...data };
    out[__ENV.SUMMARY_JSON || 'k6-summary.json'] = JSON.stringify(json, null, 1);
    return out;
  };
}

/** Trend statistics every scenario reports (p99 included). */
export const SUMMARY_TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];
