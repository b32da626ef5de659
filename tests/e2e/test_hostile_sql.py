"""Hostile input, part 3: SQL text the gateway must refuse without harm. Oversized text and
statements nested too deeply to parse, walk or drop safely (a flat `1+1+...` is a left-deep tree
as deep as it is long) are INVALID_ARGUMENT, and the gateway and workers survive them; statements
that are not queries, or that cannot be classified, are INVALID_ARGUMENT too. Finally, a query
whose error text looks like a transport failure must not take workers out of rotation.

Each input runs through Flight SQL (GetFlightInfo + DoGet), a plain SQL DoGet ticket, ADBC and a
Flight SQL prepared statement; after each test every process is alive and `SELECT 1` answers."""

import pytest

from hostile_helpers import (TOKENS, VIA, dep, healthy, refused, run_doget, run_flight_sql,  # noqa: F401
                             succeeded)

IA = "INVALID_ARGUMENT"
PATHS = ["flight_sql", "doget", "adbc", "prepared"]
MiB = 1 << 20

OVERSIZED = {
    "comment_2MiB": lambda: "SELECT 1 -- " + "x" * (2 * MiB),
    "string_literal_2MiB": lambda: "SELECT '" + "x" * (2 * MiB) + "' AS s",
    "whitespace_2MiB": lambda: "SELECT 1" + " " * (2 * MiB),
}


@pytest.mark.parametrize("case", list(OVERSIZED))
@pytest.mark.parametrize("via", PATHS)
def test_oversized_sql_is_refused(dep, via, case):
    out = VIA[via](dep.endpoint, OVERSIZED[case](), TOKENS["full"])
    refused(dep, out, IA, words=r"limit|size|large|long|bytes")


def subqueries(n: int) -> str:
    return "SELECT * FROM (" * n + "SELECT 1 AS a" + "".join(f") t{i}" for i in range(n))


DEEP = {
    # id: (SQL, the words the message must contain, or None)
    "flat_plus_5000": ("SELECT " + "+".join(["1"] * 5000), r"deep|nest"),
    "flat_plus_50000": ("SELECT " + "+".join(["1"] * 50000), r"deep|nest"),
    "flat_and_5000": ("SELECT " + " AND ".join(["true"] * 5000), r"deep|nest"),
    "flat_concat_5000": ("SELECT " + " || ".join(["'a'"] * 5000), r"deep|nest"),
    "flat_comparison_5000": ("SELECT 1 WHERE " + " OR ".join(["1 = 1"] * 5000), r"deep|nest"),
    "parentheses_5000": ("SELECT " + "(" * 5000 + "1" + ")" * 5000, None),
    "not_5000": ("SELECT " + "NOT " * 5000 + "true", None),
    "unary_minus_5000": ("SELECT " + "- " * 5000 + "1", None),
    "brackets_5000": ("SELECT " + "[" * 5000 + "1" + "]" * 5000, None),
    "subqueries_2000": (subqueries(2000), None),
    "union_all_5000": (" UNION ALL ".join(["SELECT 1"] * 5000), None),
    "case_5000": ("SELECT " + "CASE WHEN true THEN " * 5000 + "1" + " END" * 5000, None),
}


@pytest.mark.parametrize("case", list(DEEP))
@pytest.mark.parametrize("via", PATHS)
def test_deep_sql_is_refused_and_nothing_dies(dep, via, case):
    sql, words = DEEP[case]
    refused(dep, VIA[via](dep.endpoint, sql, TOKENS["full"]), IA, words=words)


LEGIT = {
    # id: (SQL, the one value expected)
    "plus_50": ("SELECT " + "+".join(["1"] * 51), 51),
    "nested_parentheses_20": ("SELECT " + "(" * 20 + "1" + ")" * 20, 1),
    "in_list_1000": ("SELECT 999 IN (" + ", ".join(str(i) for i in range(1000)) + ")", True),
    "union_all_50": ("SELECT count(*) FROM (" + " UNION ALL ".join(["SELECT 1 AS a"] * 50) + ") t", 50),
    "subqueries_10": ("SELECT count(*) FROM (" + subqueries(10) + ") s", 1),
    "string_literal_64KiB": ("SELECT length('" + "x" * 65536 + "')", 65536),
}


@pytest.mark.parametrize("case", list(LEGIT))
@pytest.mark.parametrize("via", PATHS)
def test_moderate_sql_still_runs(dep, via, case):
    sql, value = LEGIT[case]
    table = succeeded(dep, VIA[via](dep.endpoint, sql, TOKENS["full"]), case)
    assert table.num_rows == 1 and table.column(0)[0].as_py() == value, table.to_pylist()


NOT_QUERIES = {
    "two_statements": "SELECT 1; SELECT 2",
    "query_then_ddl": "SELECT 1; DROP TABLE lineitem",
    "create_table": "CREATE TABLE t(a int)",
    "create_table_as": "CREATE TABLE t AS SELECT * FROM nation",
    "create_view": "CREATE VIEW v AS SELECT 1",
    "insert": "INSERT INTO lineitem VALUES (1)",
    "update": "UPDATE nation SET n_name = 'x'",
    "delete": "DELETE FROM nation",
    "set": "SET datafusion.execution.batch_size = 1",
    "reset": "RESET datafusion.execution.batch_size",
    "copy": "COPY lineitem TO '/tmp/x'",
    "copy_query": "COPY (SELECT 1) TO '/tmp/quiver-hostile.csv'",
    "create_external_table": "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
    "drop_table": "DROP TABLE lineitem",
    "prepare": "PREPARE p AS SELECT 1",
    "execute": "EXECUTE p",
    "begin": "BEGIN",
    "garbage": "SELEC 1",
    "unterminated_string": "SELECT 'x",
    "empty": "",
    "spaces": "   ",
    "only_a_line_comment": "-- hi",
    "only_a_block_comment": "/* hi */",
    "only_a_semicolon": ";",
    "nul_inside": "SELECT 1\x00",
    "nul_then_statement": "SELECT 1\x00; DROP TABLE lineitem",
    "only_nul": "\x00",
}
# ADBC hands SQL to the driver as a C string, which ends at the first NUL byte; the driver
# itself refuses an empty query. Neither reaches the server, so they are sent by pyarrow only.
CLIENT_SIDE_IN_ADBC = {"nul_inside", "nul_then_statement", "only_nul", "empty"}


@pytest.mark.parametrize("case", list(NOT_QUERIES))
@pytest.mark.parametrize("via", PATHS)
def test_statements_that_are_not_queries_are_invalid(dep, via, case):
    if via == "adbc" and case in CLIENT_SIDE_IN_ADBC:
        pytest.skip("ADBC cannot send this text to the server")
    refused(dep, VIA[via](dep.endpoint, NOT_QUERIES[case], TOKENS["full"]), IA)


BAD_BYTES = {
    "invalid_utf8": b"SELECT '\xff\xfe'",
    "lone_continuation_byte": b"\x80",
    "truncated_multibyte": b"SELECT '\xe2\x82'",
    "overlong_encoding": b"SELECT '\xc0\xaf'",
    "utf16": "SELECT 1".encode("utf-16"),
}


@pytest.mark.parametrize("case", list(BAD_BYTES))
@pytest.mark.parametrize("via", ["doget", "flight_sql"])
def test_sql_that_is_not_utf8_is_invalid(dep, via, case):
    run = run_doget if via == "doget" else run_flight_sql
    refused(dep, run(dep.endpoint, BAD_BYTES[case], TOKENS["full"]), IA)


LOOKS_LIKE_TRANSPORT_FAILURE = [
    "SELECT arrow_cast(1, 'h2 protocol error')",
    "SELECT arrow_cast('x', 'transport error connection reset')",
]
NOT_QUERY_ERRORS = {"UNAVAILABLE", "UNKNOWN", "CANCELLED", "DEADLINE_EXCEEDED", "OK"}


def test_error_text_does_not_take_workers_out_of_rotation(dep):
    for i in range(20):
        for sql in LOOKS_LIKE_TRANSPORT_FAILURE:
            out = run_doget(dep.endpoint, sql, TOKENS["full"])
            assert out.rows == 0 and out.status not in NOT_QUERY_ERRORS, \
                f"round {i}, {sql}: expected a query error, got {out.describe()}"
            pool = dep.pools()["default"]
            assert pool["workers"] == 2 and pool["ready"] == 2, \
                f"round {i}, after {sql!r}: {pool} (the query's error text took a worker out of rotation)"
    for i in range(20):
        out = run_doget(dep.endpoint, "SELECT 1 AS one", TOKENS["full"])
        assert succeeded(dep, out, f"SELECT 1 #{i}").column(0).to_pylist() == [1]
    assert all(w["ready"] for w in dep.pools()["default"]["worker_loads"]), dep.pools()


AMPLIFIED = {
    # Short statements whose functions would return gigabytes: refused before they allocate.
    "repeat": "SELECT length(repeat('x', 1000000000)) AS n",
    "repeat_rows": "SELECT length(repeat(r_name, 100000000)) AS n FROM region",
    "lpad": "SELECT length(lpad('x', 1000000000)) AS n",
    "array_repeat": "SELECT cardinality(array_repeat(1, 1000000000)) AS n",
    "range": "SELECT cardinality(range(1000000000)) AS n",
    "generate_series_timestamps": "SELECT cardinality(generate_series(TIMESTAMP '2020-01-01 00:00:00', "
                                  "TIMESTAMP '2030-01-01 00:00:00', INTERVAL '1 second')) AS n",
}


@pytest.mark.parametrize("case", list(AMPLIFIED))
@pytest.mark.parametrize("via", ["flight_sql", "doget"])
def test_functions_that_would_return_gigabytes_are_refused(dep, via, case):
    out = VIA[via](dep.endpoint, AMPLIFIED[case], TOKENS["full"])
    refused(dep, out, "RESOURCE_EXHAUSTED", words=r"memory limit")
    assert dep.processes_problem() is None, dep.processes_problem()


# Function arguments DataFusion refuses while running the query: the query's fault, so
# INVALID_ARGUMENT with the engine's reason, not an internal error of the worker.
BAD_ARGUMENTS = {
    "arrow_cast_unknown_type": ("SELECT arrow_cast(1, 'Foo') AS x", r"Foo"),
    "range_step_zero": ("SELECT range(1, 5, 0) AS r", r"step"),
    # A date step whose month and days could cancel out: the built-in would loop for ever.
    "range_date_step_could_be_zero": (
        "SELECT range(DATE '2020-03-01', DATE '2020-01-01', INTERVAL '1 month -29 days') AS r",
        r"same sign"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
@pytest.mark.parametrize("via", ["flight_sql", "doget"])
def test_bad_function_arguments_are_invalid(dep, via, case):
    sql, words = BAD_ARGUMENTS[case]
    refused(dep, VIA[via](dep.endpoint, sql, TOKENS["full"]), IA, words=words)
    assert dep.processes_problem() is None, dep.processes_problem()
