// noisy-neighbour: two tenants of config/admission.yaml. quiet sends 10 queries/s for the whole
// run; noisy sends 200 queries/s (10x its 20 qps quota, policy noisy-cap) in the middle phase.
// The noisy tenant is held to its quota and rejected with RESOURCE_EXHAUSTED; the quiet tenant is
// never rejected, and the runner compares its p99 beside the noisy one with its p99 alone.
import { setupCheck } from '../lib/flight.js';
import { dashboard } from '../lib/iterations.js';
import { constant, errorGate, latencyGates, secs } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { TIME_SCALE, num, str } from '../lib/config.js';

const QUIET = str('QUIET_TOKEN', 'quiet-token-1');
const NOISY = str('NOISY_TOKEN', 'noisy-token-1');
const ALONE = num('ALONE_SECONDS', 20);
const BESIDE = num('BESIDE_SECONDS', 30);
const QUIET_QPS = num('QUIET_QPS', 10);
const NOISY_QPS = num('NOISY_QPS', 200);

export const options = {
  scenarios: {
    quiet_alone: constant(QUIET_QPS, ALONE, { exec: 'quiet' }),
    quiet_beside: constant(QUIET_QPS, BESIDE, { exec: 'quiet', startTime: secs(ALONE) }),
    noisy: constant(NOISY_QPS, BESIDE, { exec: 'noisy', startTime: secs(ALONE) }),
  },
  thresholds: {
    ...latencyGates('tenant:quiet,outcome:ok', 250, 500),
    // The quiet tenant is never rejected and nothing fails for anyone.
    'query_rejected{tenant:quiet}': ['rate==0'],
    ...errorGate('', 0.001),
    // The noisy tenant, at 10x its quota, has most of its queries rejected (about 90 %).
    'query_rejected{tenant:noisy}': [`rate>=${num('NOISY_MIN_REJECTED', 0.8)}`],
    'queries{tenant:noisy,outcome:ok}': ['count>0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  setupCheck(NOISY);
  return setupCheck(QUIET);
}

export async function quiet() {
  await dashboard('quiet', QUIET);
}

export async function noisy() {
  await dashboard('noisy', NOISY);
}

export const handleSummary = summaryHandler('noisy-neighbour', [
  { name: 'quiet alone', start: 0, end: ALONE * TIME_SCALE },
  { name: 'noisy beside quiet', start: ALONE * TIME_SCALE, end: (ALONE + BESIDE) * TIME_SCALE },
]);
