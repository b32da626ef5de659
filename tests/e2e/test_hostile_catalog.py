"""Hostile input, part 1: catalog leaks. A tenant allowed no quiver catalog (`outsider`) reads no
quiver table however the table is named, hidden or wrapped (CTEs, subqueries, set operations,
joins, EXPLAIN, SHOW, DESCRIBE, information_schema); a tenant allowed `quiver.public` (`scoped`)
reads the TPC-H tables but cannot list catalog objects; the `full` tenant can. Every variant runs
through Flight SQL (GetFlightInfo + DoGet), a plain SQL DoGet ticket, ADBC and a Flight SQL
prepared statement, and must come back as its refusal with no row. After each test the gateway
and both workers are alive and `SELECT 1` answers (the `healthy` fixture)."""

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import flight_sql
from hostile_helpers import (TOKENS, VIA, attempt, dep, healthy, options, refused,  # noqa: F401
                             run_ticket, statement_ticket, succeeded)

PD = {"PERMISSION_DENIED"}
PD_OR_IA = {"PERMISSION_DENIED", "INVALID_ARGUMENT"}

LEAKS = [
    # id, SQL, accepted statuses
    ("bare", "SELECT * FROM lineitem", PD),
    ("schema_qualified", "SELECT * FROM public.lineitem", PD),
    ("fully_qualified", "SELECT * FROM quiver.public.lineitem", PD),
    ("quoted", 'SELECT * FROM "lineitem"', PD),
    ("quoted_parts", 'SELECT * FROM "quiver"."public"."lineitem"', PD),
    ("case_folded", "SELECT * FROM LineItem", PD),
    ("upper_qualified", "SELECT * FROM QUIVER.PUBLIC.LINEITEM", PD),
    ("cte", "WITH x AS (SELECT * FROM lineitem) SELECT * FROM x", PD),
    ("cte_shadowing_nothing", "WITH nothing AS (SELECT 1 AS a) SELECT l_comment FROM lineitem, nothing", PD),
    ("cte_named_like_a_table", "WITH orders AS (SELECT * FROM lineitem) SELECT * FROM orders", PD),
    ("cte_in_subquery", "SELECT * FROM (WITH y AS (SELECT * FROM lineitem) SELECT * FROM y) t", PD),
    ("subquery_in_from", "SELECT * FROM (SELECT * FROM lineitem) t", PD),
    ("exists_in_where", "SELECT 1 WHERE EXISTS (SELECT 1 FROM orders)", PD),
    ("in_subquery", "SELECT 1 WHERE 1 IN (SELECT o_orderkey FROM orders)", PD),
    ("scalar_subquery", "SELECT (SELECT max(l_comment) FROM lineitem) AS c", PD),
    ("union_with_values", "VALUES ('x') UNION SELECT l_comment FROM lineitem", PD),
    ("union_all_with_literal", "SELECT 'x' AS c UNION ALL SELECT n_name FROM nation", PD),
    ("join", "SELECT * FROM (VALUES (1)) v(a) JOIN lineitem ON v.a = l_orderkey", PD),
    ("cross_join", "SELECT n_name FROM (VALUES (1)) v(a), nation", PD),
    ("explain", "EXPLAIN SELECT * FROM lineitem", PD),
    ("explain_analyze", "EXPLAIN ANALYZE SELECT * FROM lineitem", PD),
    ("explain_verbose", "EXPLAIN VERBOSE SELECT * FROM lineitem", PD),
    ("explain_format_indent", "EXPLAIN FORMAT indent SELECT * FROM lineitem", PD_OR_IA),
    ("explain_format_tree", "EXPLAIN FORMAT tree SELECT * FROM lineitem", PD_OR_IA),
    ("describe", "DESCRIBE lineitem", PD_OR_IA),
    ("show_columns", "SHOW COLUMNS FROM lineitem", PD_OR_IA),
    ("show_create_table", "SHOW CREATE TABLE lineitem", PD_OR_IA),
    ("show_tables", "SHOW TABLES", PD_OR_IA),
    ("show_all", "SHOW ALL", PD_OR_IA),
    ("information_schema_tables", "SELECT * FROM information_schema.tables", PD_OR_IA),
    ("information_schema_columns", "SELECT * FROM quiver.information_schema.columns", PD_OR_IA),
    ("information_schema_df_settings", "SELECT * FROM information_schema.df_settings", PD_OR_IA),
]
PATHS = ["flight_sql", "doget", "adbc", "prepared"]


@pytest.mark.parametrize("sql,statuses", [p[1:] for p in LEAKS], ids=[p[0] for p in LEAKS])
@pytest.mark.parametrize("via", PATHS)
def test_outsider_reads_no_quiver_table(dep, via, sql, statuses):
    refused(dep, VIA[via](dep.endpoint, sql, TOKENS["outsider"]), statuses)


@pytest.mark.parametrize("sql", ["SELECT 1 AS a", "VALUES (1)", "SELECT upper('x') AS a"],
                         ids=["select_1", "values", "function"])
@pytest.mark.parametrize("via", PATHS)
def test_outsider_runs_queries_that_read_no_table(dep, via, sql):
    table = succeeded(dep, VIA[via](dep.endpoint, sql, TOKENS["outsider"]))
    assert table.num_rows == 1


@pytest.mark.parametrize("via", PATHS)
def test_scoped_reads_its_tables(dep, via):
    table = succeeded(dep, VIA[via](dep.endpoint, "SELECT count(*) AS n FROM lineitem", TOKENS["scoped"]))
    assert table.num_rows == 1 and table.column(0)[0].as_py() > 0, table


SCOPED_LISTINGS = [
    ("show_tables", "SHOW TABLES"),
    ("information_schema_tables", "SELECT * FROM information_schema.tables"),
    ("qualified_information_schema_tables", "SELECT * FROM quiver.information_schema.tables"),
    ("information_schema_columns", "SELECT * FROM information_schema.columns"),
]


@pytest.mark.parametrize("sql", [s for _, s in SCOPED_LISTINGS], ids=[i for i, _ in SCOPED_LISTINGS])
@pytest.mark.parametrize("via", PATHS)
def test_scoped_cannot_list_catalog_objects(dep, via, sql):
    refused(dep, VIA[via](dep.endpoint, sql, TOKENS["scoped"]), PD_OR_IA)


@pytest.mark.parametrize("via", ["flight_sql", "doget", "adbc"])
def test_full_tenant_shows_tables(dep, via):
    table = succeeded(dep, VIA[via](dep.endpoint, "SHOW TABLES", TOKENS["full"]))
    assert "lineitem" in table.column("table_name").to_pylist(), table


def test_outsider_cannot_redeem_a_statement_ticket_of_another_tenant(dep):
    ticket = statement_ticket(dep.endpoint, "SELECT count(*) AS n FROM lineitem", TOKENS["full"])
    refused(dep, run_ticket(dep.endpoint, ticket, TOKENS["outsider"]), PD)
    # The same ticket still works for the tenant it was issued to.
    assert succeeded(dep, run_ticket(dep.endpoint, ticket, TOKENS["full"])).num_rows == 1


@pytest.mark.parametrize("stage", ["GetFlightInfo", "DoGet"])
def test_outsider_cannot_run_a_prepared_statement_of_another_tenant(dep, stage):
    client = flight.connect(dep.endpoint)
    handle = flight_sql.create_prepared_statement(
        client, "SELECT count(*) AS n FROM lineitem", options(TOKENS["full"]))["handle"]
    cmd = flight_sql.prepared_statement_query(handle)
    descriptor = flight.FlightDescriptor.for_command(cmd)
    if stage == "GetFlightInfo":
        out = attempt(lambda: redeem(dep, descriptor, TOKENS["outsider"]))
    else:
        info = client.get_flight_info(descriptor, options(TOKENS["full"]))
        out = run_ticket(dep.endpoint, info.endpoints[0].ticket.ticket, TOKENS["outsider"])
    refused(dep, out, PD)


def redeem(dep, descriptor, token) -> pa.Table:
    client = flight.connect(dep.endpoint)
    info = client.get_flight_info(descriptor, options(token))
    return pa.concat_tables([client.do_get(e.ticket, options(token)).read_all() for e in info.endpoints])
