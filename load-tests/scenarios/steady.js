// steady: a dashboard's traffic at a constant arrival rate (STEADY_QPS, default 20/s) for
// STEADY_SECONDS (default 120). Latency stays flat; nothing is rejected or fails.
import { setupCheck } from '../lib/flight.js';
import { dashboard } from '../lib/iterations.js';
import { constant, errorGate, latencyGates } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TOKEN, TIME_SCALE, num } from '../lib/config.js';

const SECONDS = num('STEADY_SECONDS', 120);

export const options = {
  scenarios: { steady: constant(num('STEADY_QPS', 20), SECONDS) },
  thresholds: {
    ...latencyGates('outcome:ok', 250, 500),
    ...latencyGates('outcome:ok,kind:point', 100, 250),
    ...errorGate('', 0.001),
    query_rejected: ['rate==0'],
    // The open model needs free VUs to keep the rate; dropped iterations mean the client lagged.
    dropped_iterations: ['count==0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export default async function () {
  await dashboard(__ENV.TENANT || 'default', TOKEN);
}

export const handleSummary = summaryHandler('steady', [
  { name: 'steady', start: 0, end: SECONDS * TIME_SCALE },
]);
