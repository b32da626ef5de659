// Targets and knobs, all from __ENV with defaults, shared by every scenario.
//
//   ENDPOINT   gateway address, grpc://127.0.0.1:50051 or 127.0.0.1:50051 (the runner sets it)
//   TOKEN      bearer token for single-tenant scenarios (empty: no authorization header)
//   API        doget | flightsql | mix   how queries are sent (default mix: half each)
//   SF         TPC-H scale factor of the data, to draw keys in range (default 0.1)
//   RATE_SCALE multiplies every arrival rate of a scenario (default 1), for bigger machines
//   TIME_SCALE multiplies every stage duration (default 1), e.g. 0.5 for a quick look

export function endpoint() {
  const raw = __ENV.ENDPOINT || 'grpc://127.0.0.1:50051';
  return raw.replace(/^grpc(\+tcp)?:\/\//, '').replace(/^http:\/\//, '').replace(/\/$/, '');
}

export function num(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (Number.isNaN(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}

export function str(name, dflt) {
  const v = __ENV[name];
  return v === undefined || v === '' ? dflt : v;
}

export const SF = num('SF', 0.1);
export const RATE_SCALE = num('RATE_SCALE', 1);
export const TIME_SCALE = num('TIME_SCALE', 1);
export const API = str('API', 'mix');
export const TOKEN = str('TOKEN', '');
