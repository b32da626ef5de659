// The query mix: a dashboard's point lookups and small aggregations over TPC-H, with keys and
// date ranges drawn at random so caches do not turn the run into a replay. Key ranges follow the
// TPC-H row counts at scale factor SF.
import { SF, num } from './config.js';

const rint = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1));
const pick = (xs) => xs[Math.floor(Math.random() * xs.length)];
const pad = (n) => String(n).padStart(2, '0');

const customers = Math.max(1, Math.floor(150000 * SF));
const parts = Math.max(1, Math.floor(200000 * SF));
const suppliers = Math.max(1, Math.floor(10000 * SF));
// Order keys are sparse in TPC-H: 8 of every 32 key values are used.
const orderKey = () => {
  const i = rint(0, Math.max(1, Math.floor(1500000 * SF)) - 1);
  return Math.floor(i / 8) * 32 + (i % 8) + 1;
};
const REGIONS = ['AFRICA', 'AMERICA', 'ASIA', 'EUROPE', 'MIDDLE EAST'];
const SEGMENTS = ['AUTOMOBILE', 'BUILDING', 'FURNITURE', 'HOUSEHOLD', 'MACHINERY'];
const month = () => `${rint(1993, 1997)}-${pad(rint(1, 12))}-01`;

/** Point lookups: one row by primary key. */
export const POINT = [
  () => `SELECT o_orderstatus, o_totalprice, o_orderdate FROM orders WHERE o_orderkey = ${orderKey()}`,
  () => `SELECT c_name, c_acctbal, c_mktsegment FROM customer WHERE c_custkey = ${rint(1, customers)}`,
  () => `SELECT p_name, p_brand, p_retailprice FROM part WHERE p_partkey = ${rint(1, parts)}`,
  () => `SELECT s_name, s_acctbal FROM supplier WHERE s_suppkey = ${rint(1, suppliers)}`,
  () => `SELECT l_linenumber, l_quantity, l_extendedprice FROM lineitem WHERE l_orderkey = ${orderKey()}`,
];

/** Small aggregations a dashboard tile would run. */
export const AGG = [
  () => {
    const d = month();
    return `SELECT o_orderpriority, count(*) AS n FROM orders WHERE o_orderdate >= DATE '${d}' AND o_orderdate < DATE '${d}' + INTERVAL '3' MONTH GROUP BY 1 ORDER BY 1`;
  },
  () => `SELECT n_name, count(*) AS customers, sum(c_acctbal) AS balance FROM customer JOIN nation ON c_nationkey = n_nationkey JOIN region ON n_regionkey = r_regionkey WHERE r_name = '${pick(REGIONS)}' GROUP BY n_name ORDER BY balance DESC`,
  () => `SELECT c_mktsegment, count(*) AS n, avg(c_acctbal) AS avg_balance FROM customer WHERE c_mktsegment = '${pick(SEGMENTS)}' GROUP BY 1`,
  () => {
    const d = month();
    return `SELECT o_orderstatus, count(*) AS n, sum(o_totalprice) AS total FROM orders WHERE o_orderdate >= DATE '${d}' AND o_orderdate < DATE '${d}' + INTERVAL '1' MONTH GROUP BY 1`;
  },
  () => `SELECT ps_suppkey, sum(ps_availqty) AS qty FROM partsupp WHERE ps_partkey BETWEEN ${rint(1, parts)} AND ${rint(1, parts)} + 500 GROUP BY 1 ORDER BY qty DESC LIMIT 10`,
];

/** Heavier tiles over lineitem (TPC-H Q6 and Q1 shapes) for a small share of the mix. */
export const SCAN = [
  () => {
    const y = rint(1993, 1997);
    return `SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem WHERE l_shipdate >= DATE '${y}-01-01' AND l_shipdate < DATE '${y + 1}-01-01' AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24`;
  },
  () => `SELECT l_returnflag, l_linestatus, sum(l_quantity) AS qty, avg(l_discount) AS disc, count(*) AS n FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' - INTERVAL '${rint(60, 120)}' DAY GROUP BY 1, 2 ORDER BY 1, 2`,
];

/**
 * A long query whose length is set by LONG_ROWS (rows scanned by a CPU-bound filter over
 * range(); the default 150 million take about 3 s on a debug build on 2 cores, well under 1 s on
 * a release build: raise it there).
 */
export function longQuery() {
  const rows = num('LONG_ROWS', 150000000);
  return `SELECT count(*) AS n FROM range(${rows}) WHERE value % 7 = ${rint(0, 6)}`;
}

/**
 * One query of the dashboard mix: {sql, kind}. Weights default to 60% point lookups, 35% small
 * aggregations, 5% lineitem scans (MIX_POINT, MIX_AGG, MIX_SCAN override them).
 */
export function dashboardQuery() {
  const wp = num('MIX_POINT', 60);
  const wa = num('MIX_AGG', 35);
  const ws = num('MIX_SCAN', 5);
  const r = Math.random() * (wp + wa + ws);
  if (r < wp) return { sql: pick(POINT)(), kind: 'point' };
  if (r < wp + wa) return { sql: pick(AGG)(), kind: 'agg' };
  return { sql: pick(SCAN)(), kind: 'scan' };
}
