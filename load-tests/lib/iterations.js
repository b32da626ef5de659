// What one iteration of a scenario does: one query of a given shape, sent as a tenant.
import { pickApi, runQuery } from './flight.js';
import { dashboardQuery, longQuery } from './queries.js';
import { API } from './config.js';

/** One query of the dashboard mix, as `tenant` with bearer `token` (empty: no header). */
export function dashboard(tenant, token) {
  return runQuery({ ...dashboardQuery(), tenant, token, api: pickApi(API) });
}

/** One long query (see longQuery), with a timeout long enough for a drain to finish it. */
export function long(tenant, token) {
  return runQuery({ sql: longQuery(), kind: 'long', tenant, token, api: pickApi(API), timeout: '120s' });
}
