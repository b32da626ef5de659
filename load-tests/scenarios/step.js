// step: the arrival rate steps from BASE_QPS (5/s) to STEP_QPS (40/s) for 40 s, then back for
// 30 s. With autoscaling (quiver up --min-workers …) the ready workers rise within seconds of the
// step (the runner's gate: STEP_REACTION_S, default 2 s) and fall after it.
import { setupCheck } from '../lib/flight.js';
import { dashboard } from '../lib/iterations.js';
import { stages, errorGate, latencyGates } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TOKEN, TIME_SCALE, num } from '../lib/config.js';

const base = num('BASE_QPS', 5);
const high = num('STEP_QPS', 40);
// [qps, seconds]: hold, step (1 s), hold, step down (1 s), hold.
const plan = [[base, 20], [high, 1], [high, 40], [base, 1], [base, 30]];
const at = (i) => plan.slice(0, i).reduce((s, [, d]) => s + d, 0) * TIME_SCALE;

export const options = {
  scenarios: { step: stages(base, plan) },
  thresholds: {
    ...latencyGates('outcome:ok', 1000, 2500),
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

export const handleSummary = summaryHandler('step', [
  { name: 'base', start: 0, end: at(1) },
  { name: 'step up', start: at(1), end: at(3) },
  { name: 'back down', start: at(3), end: at(5) },
]);
