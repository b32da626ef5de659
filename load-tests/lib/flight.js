// Arrow Flight over k6/net/grpc: plain DoGet with a UTF-8 SQL ticket, and the Flight SQL
// GetFlightInfo(CommandStatementQuery) → DoGet(ticket) flow.
//
// k6 cannot decode Arrow, so a result is counted, not read: FlightData messages and their bytes
// (header + body). Every query ends in exactly one record() call, which tags its metrics with the
// outcome (ok, rejected, unavailable, …), tenant, kind and api; thresholds and the report slice
// on those tags.
//
//   runQuery({sql, tenant, token, kind, api})
//     ├─ api=doget:     DoGet(Ticket{sql})                         ─┐
//     └─ api=flightsql: GetFlightInfo(CMD Any<CommandStatementQuery>)│→ stream FlightData → record()
//                       → DoGet(endpoint[0].ticket)                ─┘
import grpc from 'k6/net/grpc';
import encoding from 'k6/encoding';
import { endpoint } from './config.js';
import * as m from './metrics.js';

const client = new grpc.Client();
client.load(['../proto'], 'flight.proto');

const SERVICE = 'arrow.flight.protocol.FlightService';
const STATEMENT_QUERY_TYPE = 'type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery';

let connected = false;

/** Connects this VU once; later calls are free. */
export function connect() {
  if (connected) return;
  client.connect(endpoint(), { plaintext: true, reflect: false, timeout: '10s' });
  connected = true;
}

// ---- protobuf wire format, just enough for CommandStatementQuery packed in Any ----

function utf8(s) {
  const out = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}

function varint(n) {
  const out = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** Field `field` of wire type 2 (length-delimited) holding `bytes`. */
function lenField(field, bytes) {
  return [(field << 3) | 2, ...varint(bytes.length), ...bytes];
}

/** Any{type_url, value: CommandStatementQuery{query}} as bytes (flight_sql.proto). */
export function statementQueryAny(sql) {
  const command = lenField(1, utf8(sql));
  return lenField(1, utf8(STATEMENT_QUERY_TYPE)).concat(lenField(2, command));
}

function b64(bytesOrString) {
  if (typeof bytesOrString === 'string') return encoding.b64encode(bytesOrString);
  return encoding.b64encode(new Uint8Array(bytesOrString).buffer);
}

/** Decoded size of a base64 string (protojson renders `bytes` fields as base64). */
function b64len(s) {
  if (!s) return 0;
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  return (s.length * 3) / 4 - pad;
}

// ---- outcomes ----

const OUTCOMES = {
  [grpc.StatusOK]: 'ok',
  [grpc.StatusResourceExhausted]: 'rejected',
  [grpc.StatusUnavailable]: 'unavailable',
  [grpc.StatusInvalidArgument]: 'invalid',
  [grpc.StatusUnauthenticated]: 'unauthenticated',
  [grpc.StatusPermissionDenied]: 'denied',
  [grpc.StatusDeadlineExceeded]: 'timeout',
  [grpc.StatusCanceled]: 'cancelled',
  [grpc.StatusInternal]: 'internal',
  [grpc.StatusFailedPrecondition]: 'held_back',
};

export function outcomeOf(code) {
  return OUTCOMES[code] || 'error';
}

function metadata(token) {
  const md = { 'x-quiver-source': 'k6' };
  if (token) md.authorization = `Bearer ${token}`;
  return md;
}

function header(headers, name) {
  if (!headers) return undefined;
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

// ---- queries ----

/**
 * Runs one query and records it. Resolves to {outcome, ms, messages, bytes, message}.
 * q: {sql, tenant='default', token='', kind='query', api='doget'|'flightsql', timeout='60s',
 *     tags={}}; `tags` are more tags for every metric of this query (e.g. {wake: 'first'}).
 */
export function runQuery(q) {
  const tags = {
    ...(q.tags || {}),
    tenant: q.tenant || 'default',
    kind: q.kind || 'query',
    api: q.api || 'doget',
  };
  const t0 = Date.now();
  try {
    connect();
  } catch (e) {
    return Promise.resolve(m.record(tags, 'connect_error', Date.now() - t0, 0, 0, null, String(e)));
  }
  const params = { metadata: metadata(q.token), timeout: q.timeout || '60s' };

  let ticket;
  if (tags.api === 'flightsql') {
    const res = client.invoke(
      `${SERVICE}/GetFlightInfo`,
      { type: 'CMD', cmd: b64(statementQueryAny(q.sql)) },
      params,
    );
    if (res.status !== grpc.StatusOK) {
      const hint = header(res.trailers, 'retry-after-ms');
      const msg = res.error ? res.error.message || res.error.details : '';
      return Promise.resolve(
        m.record(tags, outcomeOf(res.status), Date.now() - t0, 0, 0, hint, msg),
      );
    }
    const eps = (res.message && res.message.endpoint) || [];
    if (eps.length === 0 || !eps[0].ticket) {
      return Promise.resolve(m.record(tags, 'error', Date.now() - t0, 0, 0, null, 'no endpoint'));
    }
    ticket = eps[0].ticket.ticket;
  } else {
    ticket = b64(q.sql);
  }

  return new Promise((resolve) => {
    let messages = 0;
    let bytes = 0;
    let first = null;
    let done = false;
    const finish = (outcome, message) => {
      if (done) return;
      done = true;
      const now = Date.now();
      if (first !== null) m.ttfb.add(first - t0, { ...tags, outcome });
      resolve(m.record(tags, outcome, now - t0, messages, bytes, null, message));
    };
    const stream = new grpc.Stream(client, `${SERVICE}/DoGet`, params);
    stream.on('data', (fd) => {
      if (first === null) first = Date.now();
      messages += 1;
      bytes += b64len(fd.dataHeader || fd.data_header) + b64len(fd.dataBody || fd.data_body);
    });
    stream.on('error', (e) => finish(outcomeOf(e.code), e.message || e.details));
    stream.on('end', () => finish('ok'));
    stream.write({ ticket });
    stream.end();
  });
}

/**
 * For setup(): one GetFlightInfo with `SELECT 1`, which reaches the gateway without streaming.
 * Throws with a clear message when the gateway is not there, so the run stops before its load.
 */
export function checkUp(token) {
  try {
    connect();
  } catch (e) {
    throw new Error(`Quiver gateway at ${endpoint()} is not reachable: ${e}`);
  }
  const res = client.invoke(
    `${SERVICE}/GetFlightInfo`,
    { type: 'CMD', cmd: b64(statementQueryAny('SELECT 1')) },
    { metadata: metadata(token), timeout: '10s' },
  );
  if (res.status !== grpc.StatusOK) {
    const msg = res.error ? res.error.message || res.error.details : `status ${res.status}`;
    throw new Error(`Quiver gateway at ${endpoint()} refused SELECT 1: ${msg}`);
  }
  client.close();
  connected = false;
}

/**
 * The setup() of every scenario: checks the gateway answers as `token`, then returns the start
 * time of the load (ms since the epoch), which the runner uses as time zero of its plots.
 */
export function setupCheck(token) {
  checkUp(token);
  return { t0: Date.now() };
}

/** Picks the API for one query: API=doget|flightsql, or mix (half each). */
export function pickApi(api) {
  if (api === 'mix') return Math.random() < 0.5 ? 'doget' : 'flightsql';
  return api;
}
