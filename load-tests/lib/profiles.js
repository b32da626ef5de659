// Load profiles and threshold sets shared by the scenarios. Rates are queries per second
// (open model: arrival-rate executors start queries on schedule whether or not earlier ones
// finished, so an overloaded gateway shows up as latency and rejections, not as a slower client).
import { RATE_SCALE, TIME_SCALE, num } from './config.js';

export const secs = (s) => `${Math.max(1, Math.round(s * TIME_SCALE))}s`;

// k6 rates are integers per timeUnit: fractional queries/s are counted per 10 s instead.
function unitFor(qpsList) {
  const frac = qpsList.some((q) => Math.abs(q * RATE_SCALE - Math.round(q * RATE_SCALE)) > 1e-9);
  return frac ? { timeUnit: '10s', per: 10 } : { timeUnit: '1s', per: 1 };
}
const perUnit = (qps, per) => Math.round(qps * RATE_SCALE * per);
// VUs: pre-allocated for the peak rate at two seconds per query (starting a VU mid-run takes
// long enough to drop iterations), and room for a slower patch.
const vus = (peakQps) => ({
  preAllocatedVUs: Math.max(4, Math.ceil(peakQps * RATE_SCALE * 2)),
  maxVUs: Math.max(20, Math.ceil(peakQps * RATE_SCALE * 10)),
});

/** Constant arrival rate of `qps` queries per second for `seconds`. */
export function constant(qps, seconds, extra = {}) {
  const { timeUnit, per } = unitFor([qps]);
  return {
    executor: 'constant-arrival-rate',
    rate: perUnit(qps, per),
    timeUnit,
    duration: secs(seconds),
    ...vus(qps),
    ...extra,
  };
}

/** Arrival rate through stages [[qps, seconds], …] from `startQps` (linear ramps between). */
export function stages(startQps, list, extra = {}) {
  const all = [startQps, ...list.map(([q]) => q)];
  const { timeUnit, per } = unitFor(all);
  return {
    executor: 'ramping-arrival-rate',
    startRate: perUnit(startQps, per),
    timeUnit,
    stages: list.map(([q, s]) => ({ target: perUnit(q, per), duration: secs(s) })),
    ...vus(Math.max(...all)),
    ...extra,
  };
}

/** Start offset for a scenario that begins after others. */
export const after = (seconds) => ({ startTime: secs(seconds) });

/**
 * Latency and error gates on successful queries; P95_MS, P99_MS and MAX_ERROR_RATE override the
 * scenario's defaults (the defaults suit a debug build on a 2-core machine).
 */
export function latencyGates(filter, p95, p99) {
  const f = filter ? `{${filter}}` : '';
  return {
    [`query_duration${f}`]: [`p(95)<${num('P95_MS', p95)}`, `p(99)<${num('P99_MS', p99)}`],
  };
}

export function errorGate(filter, maxRate = 0.01) {
  const f = filter ? `{${filter}}` : '';
  return { [`query_errors${f}`]: [`rate<=${num('MAX_ERROR_RATE', maxRate)}`] };
}
