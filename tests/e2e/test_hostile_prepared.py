"""Hostile input, part 2: prepared statements with `?` parameters. The `?` placeholders are
numbered for DataFusion by the service; whatever does it must keep every other byte as the client
wrote it, so `'it''s'` stays one string literal holding one quote, and a `?` inside a string, a
quoted identifier or a comment stays text. If it re-spelled the SQL from tokens, a string like
`'x'' UNION SELECT l_comment, ''y'' FROM lineitem --'` would turn into a UNION reading lineitem
after the gateway had checked (and allowed) the original text: the classic re-tokenising attack.

Each case runs through ADBC (cursor.execute with parameters: prepare, bind, execute) and through
raw Flight SQL (CreatePreparedStatement, DoPut, GetFlightInfo, DoGet)."""

import pyarrow as pa
import pytest

from hostile_helpers import (TOKENS, dep, healthy, refused, run_adbc, run_adbc_prepare,  # noqa: F401
                             run_prepared, succeeded)

PD = {"PERMISSION_DENIED"}
PATHS = ["adbc", "flight_sql_prepared"]


def execute(dep, via: str, sql: str, params: tuple, token: str):
    if via == "adbc":
        return run_adbc(dep.endpoint, sql, token, params=params)
    batch = pa.record_batch([pa.array([v]) for v in params], names=[f"p{i}" for i in range(len(params))])
    return run_prepared(dep.endpoint, sql, token, params=batch)


VERBATIM = [
    # id, SQL, bound values, the one row expected, its column names (None: not checked)
    ("doubled_quote", "SELECT ? AS a, 'it''s' AS b", (7,), [7, "it's"], ["a", "b"]),
    ("question_mark_in_string", "SELECT ? AS a, 'why?' AS b", (7,), [7, "why?"], ["a", "b"]),
    ("question_mark_between_doubled_quotes", "SELECT ? AS a, 'a''?''b' AS b", ("v",), ["v", "a'?'b"], ["a", "b"]),
    ("question_mark_in_quoted_identifier", "SELECT ? AS \"a?b\", 'x' AS b", (7,), [7, "x"], ["a?b", "b"]),
    ("doubled_quote_in_quoted_identifier", "SELECT ? AS \"it\"\"s?\"", (7,), [7], ['it"s?']),
    ("question_mark_in_block_comment", "SELECT ? AS a /* ? it's */, 'c' AS b", (7,), [7, "c"], ["a", "b"]),
    ("question_mark_in_line_comment", "SELECT ? AS a, -- ? it's\n 'c' AS b", (7,), [7, "c"], ["a", "b"]),
    ("two_parameters", "SELECT ? AS a, 'it''s ?' AS b, ? AS c", (1, "two"), [1, "it's ?", "two"], ["a", "b", "c"]),
    ("empty_string_literal", "SELECT ? AS a, '' AS b, '''' AS c", (7,), [7, "", "'"], ["a", "b", "c"]),
]


@pytest.mark.parametrize("sql,params,row,names", [v[1:] for v in VERBATIM], ids=[v[0] for v in VERBATIM])
@pytest.mark.parametrize("via", PATHS)
def test_placeholders_keep_the_rest_of_the_text_verbatim(dep, via, sql, params, row, names):
    table = succeeded(dep, execute(dep, via, sql, params, TOKENS["full"]), sql)
    assert table.num_rows == 1, table
    assert [table.column(i)[0].as_py() for i in range(table.num_columns)] == row, table.to_pylist()
    if names is not None:
        assert table.schema.names == names


ATTACKS = [
    # id, SQL (everything after the first column is ONE literal or ONE quoted name), values, row
    ("union_inside_a_literal",
     "SELECT ?, 'x'' UNION SELECT l_comment, ''y'' FROM lineitem --'", ("v",),
     ["v", "x' UNION SELECT l_comment, 'y' FROM lineitem --"]),
    ("from_inside_a_literal",
     "SELECT ? AS a, 'x'' AS b FROM lineitem --' AS b", ("v",),
     ["v", "x' AS b FROM lineitem --"]),
    ("second_statement_inside_a_literal",
     "SELECT ? AS a, 'x''; SELECT * FROM lineitem; --' AS b", ("v",),
     ["v", "x'; SELECT * FROM lineitem; --"]),
    ("from_inside_a_quoted_identifier",
     "SELECT ? AS \"a\"\" FROM lineitem --\"", ("v",),
     ["v"]),
    ("sql_as_the_bound_value",
     "SELECT ? AS a", ("'); SELECT * FROM lineitem; --",),
     ["'); SELECT * FROM lineitem; --"]),
]


@pytest.mark.parametrize("sql,params,row", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
@pytest.mark.parametrize("via", PATHS)
def test_a_literal_stays_a_literal_for_the_outsider(dep, via, sql, params, row):
    out = execute(dep, via, sql, params, TOKENS["outsider"])
    # Never a lineitem row: exactly the one row the literal makes.
    assert out.rows <= 1, f"{out.rows} rows came back: {out.describe()}"
    table = succeeded(dep, out, sql)
    assert [table.column(i)[0].as_py() for i in range(table.num_columns)] == row, table.to_pylist()


def test_quoted_identifier_attack_keeps_the_column_name(dep):
    table = succeeded(dep, execute(dep, "adbc", "SELECT ? AS \"a\"\" FROM lineitem --\"", ("v",),
                                   TOKENS["outsider"]))
    assert table.schema.names == ['a" FROM lineitem --'], table.schema


UNPARAMETERISED = [
    ("lineitem", "SELECT * FROM lineitem"),
    ("count_orders", "SELECT count(*) FROM orders"),
    ("with_a_parameter", "SELECT * FROM lineitem WHERE l_orderkey = ?"),
    ("in_a_cte", "WITH x AS (SELECT * FROM lineitem) SELECT count(*) FROM x"),
]


@pytest.mark.parametrize("sql", [u[1] for u in UNPARAMETERISED], ids=[u[0] for u in UNPARAMETERISED])
def test_outsider_prepare_is_refused_at_prepare_time_flight(dep, sql):
    out = run_prepared(dep.endpoint, sql, TOKENS["outsider"])
    refused(dep, out, PD)
    assert out.stage == "CreatePreparedStatement", out.describe()


@pytest.mark.parametrize("sql", [u[1] for u in UNPARAMETERISED], ids=[u[0] for u in UNPARAMETERISED])
def test_outsider_prepare_is_refused_at_prepare_time_adbc(dep, sql):
    out = run_adbc_prepare(dep.endpoint, sql, TOKENS["outsider"])
    refused(dep, out, PD)
    assert out.stage == "adbc_prepare", out.describe()
