// smoke: a short dashboard mix over both APIs (plain DoGet and Flight SQL) at a low constant
// rate. It proves the path end to end in under a minute and is what CI runs.
import { pickApi, runQuery, setupCheck } from '../lib/flight.js';
import { dashboardQuery } from '../lib/queries.js';
import { constant, errorGate, latencyGates } from '../lib/profiles.js';
import { summaryHandler, SUMMARY_TREND_STATS } from '../lib/summary.js';
import { API, TOKEN, TIME_SCALE, num } from '../lib/config.js';

const SECONDS = num('SMOKE_SECONDS', 15);

export const options = {
  scenarios: {
    smoke: constant(num('SMOKE_QPS', 5), SECONDS),
  },
  thresholds: {
    ...latencyGates('outcome:ok', 1000, 2000),
    ...errorGate('', 0),
    // Both APIs must have carried queries, and none may be rejected at this rate.
    'queries{api:doget,outcome:ok}': ['count>0'],
    'queries{api:flightsql,outcome:ok}': ['count>0'],
    query_rejected: ['rate==0'],
    flight_messages: ['count>0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return setupCheck(TOKEN);
}

export default async function () {
  const q = dashboardQuery();
  await runQuery({ ...q, token: TOKEN, tenant: __ENV.TENANT || 'default', api: pickApi(API) });
}

export const handleSummary = summaryHandler('smoke', [
  { name: 'smoke', start: 0, end: SECONDS * TIME_SCALE },
]);
