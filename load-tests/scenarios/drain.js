// drain: long queries (LONG_QPS, default 0.4/s; LONG_ROWS sets their length, default 150 million
// rows: about 3 s on a debug build) plus a trickle of dashboard queries while the pool shrinks. With autoscaling, the long
// queries raise demand in the first phase and the rate falls in the second, so the pool scales
// down while long queries still run; without it, the runner stops workers with SIGTERM at 12 s
// and 24 s. Either way a draining worker must finish its queries: none may fail.
import { setupCheck } from '../lib/flight.js';
import { dashboard, long } from '../lib/iterations.js';
import { constant, stages, errorGate, secs } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TOKEN, TIME_SCALE, num } from '../lib/config.js';

const LONG_QPS = num('LONG_QPS', 0.4);
const BUSY = 20;
const QUIET = 25;

export const options = {
  scenarios: {
    long: stages(LONG_QPS, [[LONG_QPS, BUSY], [0.1, 2], [0.1, QUIET - 2]], { exec: 'longQuery' }),
    dashboard: constant(num('DASHBOARD_QPS', 5), BUSY + QUIET, { exec: 'dashboardQuery' }),
  },
  thresholds: {
    // No query may fail while workers drain: not the long ones, not the short ones.
    ...errorGate('kind:long', 0),
    ...errorGate('', 0),
    'queries{kind:long,outcome:ok}': ['count>0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export async function longQuery() {
  await long(__ENV.TENANT || 'default', TOKEN);
}

export async function dashboardQuery() {
  await dashboard(__ENV.TENANT || 'default', TOKEN);
}

export const handleSummary = summaryHandler('drain', [
  { name: 'busy', start: 0, end: BUSY * TIME_SCALE },
  { name: 'load falls', start: BUSY * TIME_SCALE, end: (BUSY + QUIET) * TIME_SCALE },
]);
