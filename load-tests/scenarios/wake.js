// wake: a pool at zero, then queried. WAKE_CYCLES (3) times over: IDLE_SECONDS (10) without a
// query, long enough for the pool to scale to zero (the runner starts quiver up with
// --min-workers 0 --standby-workers 1 --scale-to-zero-after 3s), then a burst of BURST_QPS (5/s)
// for BURST_SECONDS (5). The first query of each burst arrives at a pool with no worker: the
// gateway holds it while the pool claims the standby worker, then runs it. That query is tagged
// wake:first (the others wake:burst) and its latency, arrival to last FlightData, also goes to the
// Trend wake_first_query; every query carries its cycle as a tag. No query may fail or be
// rejected, and every wake-up is bounded by WAKE_MAX_MS (5000, generous for a debug build on a
// busy 2-core machine). The runner checks that the pool really was at zero before each burst.
import exec from 'k6/execution';
import { Trend } from 'k6/metrics';
import { pickApi, runQuery, setupCheck } from '../lib/flight.js';
import { dashboardQuery } from '../lib/queries.js';
import { constant, errorGate } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { API, TOKEN, TIME_SCALE, num } from '../lib/config.js';

const CYCLES = num('WAKE_CYCLES', 3);
const IDLE = num('IDLE_SECONDS', 10);
const BURST = num('BURST_SECONDS', 5);
const QPS = num('BURST_QPS', 5);

// Whole seconds after TIME_SCALE, rounded as profiles.secs() rounds stage durations, so the
// phases below are exactly the scenarios' start times.
const scaled = (s) => Math.max(1, Math.round(s * TIME_SCALE));
const idle = scaled(IDLE);
const burst = scaled(BURST);
const burstStart = (i) => i * (idle + burst) + idle; // cycle i = 0, 1, …

const wakeFirst = new Trend('wake_first_query', true);

const scenarios = {};
for (let i = 0; i < CYCLES; i++) {
  // One arrival-rate scenario per burst: its iteration 0 starts at the scenario's start time, so
  // it is the first query the idle pool sees (later ones follow at 1/BURST_QPS intervals).
  scenarios[`burst${i + 1}`] = constant(QPS, BURST, {
    exec: 'burstQuery',
    startTime: `${burstStart(i)}s`,
    env: { WAKE_CYCLE: String(i + 1) },
  });
}

export const options = {
  scenarios,
  thresholds: {
    // No query fails or is rejected: held queries wait for the wake-up, they are not refused.
    ...errorGate('', 0),
    query_rejected: ['rate==0'],
    // Every burst's first query was answered, and none took longer than the bound.
    [`queries{wake:first,outcome:ok}`]: [`count==${CYCLES}`],
    wake_first_query: [`max<${num('WAKE_MAX_MS', 5000)}`],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export async function burstQuery() {
  const first = exec.scenario.iterationInTest === 0;
  const cycle = __ENV.WAKE_CYCLE;
  const tags = { wake: first ? 'first' : 'burst', cycle };
  const r = await runQuery({
    ...dashboardQuery(),
    token: TOKEN,
    tenant: __ENV.TENANT || 'default',
    api: pickApi(API),
    tags,
  });
  if (first) wakeFirst.add(r.ms, { cycle, outcome: r.outcome });
}

const phases = [];
for (let i = 0; i < CYCLES; i++) {
  phases.push({ name: `idle ${i + 1}`, start: burstStart(i) - idle, end: burstStart(i) });
  phases.push({ name: `burst ${i + 1}`, start: burstStart(i), end: burstStart(i) + burst });
}

export const handleSummary = summaryHandler('wake', phases);
