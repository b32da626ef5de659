// The custom metrics every scenario records, one record() per query. Tags: outcome, tenant,
// kind (point, agg, long, …) and api (doget, flightsql); k6 adds the scenario tag.
//
//   query_duration   Trend (ms)  request to last FlightData, or to the error
//   query_ttfb       Trend (ms)  request to first FlightData
//   queries          Counter     one per query
//   query_errors     Rate        share of queries that failed unexpectedly (not ok, not rejected)
//   query_rejected   Rate        share rejected by admission (RESOURCE_EXHAUSTED)
//   flight_messages  Counter     FlightData messages received (Arrow IPC messages)
//   flight_bytes     Counter     bytes of FlightData header + body received
//   retry_after_ms   Trend       retry hint of a rejection, when the gateway sends one
import { Counter, Rate, Trend } from 'k6/metrics';

export const duration = new Trend('query_duration', true);
export const ttfb = new Trend('query_ttfb', true);
export const queries = new Counter('queries');
export const errors = new Rate('query_errors');
export const rejected = new Rate('query_rejected');
export const messages = new Counter('flight_messages');
export const bytes = new Counter('flight_bytes');
export const retryAfter = new Trend('retry_after_ms', true);

// The first error message of each unexpected outcome is logged once per VU, so a failing run
// says why without flooding the log; rejections are expected in some scenarios and counted only.
const seen = {};

export function record(baseTags, outcome, ms, msgs, nbytes, hint, message) {
  const tags = { ...baseTags, outcome };
  duration.add(ms, tags);
  queries.add(1, tags);
  errors.add(outcome !== 'ok' && outcome !== 'rejected', tags);
  rejected.add(outcome === 'rejected', tags);
  if (msgs) messages.add(msgs, tags);
  if (nbytes) bytes.add(nbytes, tags);
  if (hint !== undefined && hint !== null && hint !== '') retryAfter.add(Number(hint), tags);
  if (outcome !== 'ok' && outcome !== 'rejected' && message && !seen[outcome]) {
    seen[outcome] = true;
    console.warn(`query ${outcome} (${baseTags.tenant}/${baseTags.kind}): ${message}`);
  }
  return { outcome, ms, messages: msgs, bytes: nbytes, message };
}
