// soak: the steady dashboard mix (SOAK_QPS, default 15/s) for SOAK_SECONDS (default 1800).
// Latency must not drift and the gateway's memory must not grow (the runner's gates compare the
// last window with the first).
import { setupCheck } from '../lib/flight.js';
import { dashboard } from '../lib/iterations.js';
import { constant, errorGate, latencyGates } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TOKEN, TIME_SCALE, num } from '../lib/config.js';

const SECONDS = num('SOAK_SECONDS', 1800);

export const options = {
  scenarios: { soak: constant(num('SOAK_QPS', 15), SECONDS) },
  thresholds: {
    ...latencyGates('outcome:ok', 250, 500),
    ...errorGate('', 0.001),
    query_rejected: ['rate==0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export default async function () {
  await dashboard(__ENV.TENANT || 'default', TOKEN);
}

export const handleSummary = summaryHandler('soak', [
  { name: 'soak', start: 0, end: SECONDS * TIME_SCALE },
]);
