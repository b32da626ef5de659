// spike: BASE_QPS (5/s) for 15 s, a 2-second climb to SPIKE_QPS (80/s) held for 10 s, then back
// to the base rate for 30 s. Warm spares take the first queries of the spike, the pool scales
// up during it and down afterwards; no query fails.
import { setupCheck } from '../lib/flight.js';
import { dashboard } from '../lib/iterations.js';
import { stages, errorGate, latencyGates } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TOKEN, TIME_SCALE, num } from '../lib/config.js';

const base = num('BASE_QPS', 5);
const peak = num('SPIKE_QPS', 80);
const plan = [[base, 15], [peak, 2], [peak, 10], [base, 2], [base, 30]];
const at = (i) => plan.slice(0, i).reduce((s, [, d]) => s + d, 0) * TIME_SCALE;

export const options = {
  scenarios: { spike: stages(base, plan) },
  thresholds: {
    ...latencyGates('outcome:ok', 2000, 4000),
    ...errorGate('', 0.01),
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export default async function () {
  await dashboard(__ENV.TENANT || 'default', TOKEN);
}

export const handleSummary = summaryHandler('spike', [
  { name: 'base', start: 0, end: at(1) },
  { name: 'spike', start: at(1), end: at(4) },
  { name: 'after', start: at(4), end: at(5) },
]);
