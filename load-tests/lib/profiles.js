// Load profiles and threshold sets shared by the scenarios. Rates are queries per second
// (open model: arrival-rate executors start queries on schedule whether or not earlier ones
// finished, so an overloaded gateway shows up as latency and rejections, not as a slower client).
import { RATE_SCALE, TIME_SCALE, num } from './config.js';

const rate = (r) => Math.max(1, Math.round(r * RATE_SCALE));
export const secs = (s) => `${Math.max(1, Math.round(s * TIME_SCALE))}s`;

/** Constant arrival rate for `seconds`, starting at `startSeconds`. */
export function constant(qps, seconds, extra = {}) {
  const r = rate(qps);
  return {
    executor: 'constant-arrival-rate',
    rate: r,
    timeUnit: '1s',
    duration: secs(seconds),
    preAllocatedVUs: Math.max(4, r),
    maxVUs: Math.max(20, r * 10),
    ...extra,
  };
}

/** Arrival rate through stages [[qps, seconds], …] from `startQps` (linear ramps between). */
export function stages(startQps, list, extra = {}) {
  const peak = Math.max(startQps, ...list.map(([q]) => q));
  return {
    executor: 'ramping-arrival-rate',
    startRate: rate(startQps),
    timeUnit: '1s',
    stages: list.map(([q, s]) => ({ target: rate(q), duration: secs(s) })),
    preAllocatedVUs: Math.max(4, rate(peak)),
    maxVUs: Math.max(20, rate(peak) * 10),
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
