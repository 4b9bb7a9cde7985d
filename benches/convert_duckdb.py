"""DuckDB side of the conversion benchmark (`make bench-convert`, run by benches/convert.rs).

    convert_duckdb.py RUN OUT --schema SCHEMA
        Converts the raw run folder RUN (run.json, fields.json, pages/*.jsonl.zst, written by
        `b24-export export --raw-out`) into hive-partitioned Parquet under OUT (date_create_month=YYYY-MM,
        zstd level 3), with the column types of b24-export. The SELECT is generated from SCHEMA (the output of
        `b24-export schema --format json`: column, duckdb_type) and fields.json (the portal's field names). Prints
        one JSON line: {"rows": N}.

    convert_duckdb.py --verify SCHEMA NAME=DIR [NAME=DIR ...]
        Reads every dataset back with DuckDB (outside the timing) and compares, per dataset: the row count, the
        DESCRIBE type of every column against SCHEMA, and a fingerprint of every column's values (sum of hashes)
        against the first dataset. Prints the mismatches and one JSON line with the findings.

Each lead page line is the JSON array of up to 50 records of one list call, so the pages are read with
records=false (one value per line: the array) and an explicit column type, then unnested.
"""

import json
import os
import sys

import duckdb

MULTIFIELD = 'STRUCT(id BIGINT, value_type VARCHAR, "value" VARCHAR, type_id VARCHAR)[]'
MONEY = "STRUCT(amount DECIMAL(18,2), currency VARCHAR)"
FILE = "STRUCT(id BIGINT, show_url VARCHAR)"
SCALARS = ("BIGINT", "DOUBLE", "DECIMAL(18,2)", "BOOLEAN", "TIMESTAMP WITH TIME ZONE", "DATE", "VARCHAR")


def ident(name):
    return '"' + name.replace('"', '""') + '"'


def lit(text):
    return "'" + text.replace("'", "''") + "'"


def raw_type(duck_type):
    """How a field is read from the JSON: typed where the wire form is uniform, JSON where it is mixed
    (multiple UFs come as false, [], "" or an array; files as an object, false or "")."""
    if duck_type == MULTIFIELD:
        return 'STRUCT(ID VARCHAR, VALUE_TYPE VARCHAR, "VALUE" VARCHAR, TYPE_ID VARCHAR)[]'
    if duck_type == FILE or duck_type.endswith("[]"):
        return "JSON"
    return "VARCHAR"  # scalars and money: JSON strings (numbers and true/false read as their text)


def scalar_expr(duck_type, x):
    """The cast of one text value `x` to our type; "" is NULL."""
    v = f"NULLIF({x}, '')"
    if duck_type == "VARCHAR":
        return x
    if duck_type == "DATE":
        # the portal writes midnight UTC in its own offset: the UTC date, rounded to the nearest midnight
        return f"(DATE '1970-01-01' + CAST(floor((epoch(CAST({v} AS TIMESTAMPTZ)) + 43200) / 86400) AS INTEGER))"
    if duck_type == "TIMESTAMP WITH TIME ZONE":
        return f"CAST({v} AS TIMESTAMPTZ)"
    if duck_type in SCALARS:
        return f"CAST({v} AS {duck_type})"  # BIGINT, DOUBLE, DECIMAL(18,2), BOOLEAN (Y/N, 1/0, true/false)
    raise ValueError(f"no cast for {duck_type}")


def column_expr(duck_type, x):
    if duck_type == MULTIFIELD:
        return (
            f"list_transform(coalesce({x}, []), lambda e: struct_pack(id := CAST(e.ID AS BIGINT), value_type := e.VALUE_TYPE, "
            f'"value" := e."VALUE", type_id := e.TYPE_ID))'
        )
    if duck_type == MONEY:
        return (
            f"CASE WHEN {x} IS NULL OR {x} IN ('', 'false') THEN NULL ELSE struct_pack("
            f"amount := CAST(split_part({x}, '|', 1) AS DECIMAL(18,2)), currency := NULLIF(split_part({x}, '|', 2), '')) END"
        )
    if duck_type == FILE:
        url = f"({x} ->> 'showUrl')"
        return (
            f"CASE WHEN json_type({x}) = 'OBJECT' THEN struct_pack(id := CAST({x} ->> 'id' AS BIGINT), "
            f"show_url := CASE WHEN contains({url}, 'auth=') THEN NULL ELSE {url} END) END"
        )
    if duck_type.endswith("[]"):
        inner = duck_type[:-2]
        return (
            f"CASE WHEN json_type({x}) = 'ARRAY' THEN list_transform(CAST({x} AS VARCHAR[]), lambda e: {scalar_expr(inner, 'e')}) "
            f"WHEN CAST({x} AS VARCHAR) IN ('false', '\"\"') THEN CAST([] AS {duck_type}) END"
        )
    return scalar_expr(duck_type, x)


def load_columns(run_dir, schema_path):
    """(column, portal field, DuckDB type) in our column order."""
    with open(schema_path) as f:
        schema = json.load(f)
    with open(os.path.join(run_dir, "fields.json")) as f:
        fields = json.load(f)
    source = {name.lower(): name for name in fields}
    return [(c["column"], source[c["column"]], c["duckdb_type"]) for c in schema]


def convert_sql(run_dir, out, cols):
    with open(os.path.join(run_dir, "run.json")) as f:
        run = json.load(f)
    pages = [os.path.join(run_dir, p) for p in run["pages"]]
    record = "STRUCT(" + ", ".join(f"{ident(src)} {raw_type(t)}" for _, src, t in cols) + ")[]"
    reader = (
        f"read_json([{', '.join(lit(p) for p in pages)}], format = 'newline_delimited', records = false, "
        f"compression = 'zstd', columns = {{'page': {lit(record)}}})"
    )
    select = ",\n  ".join(f"{column_expr(t, 'r.' + ident(src))} AS {ident(name)}" for name, src, t in cols)
    return (
        f"COPY (\n SELECT *, strftime(date_create, '%Y-%m') AS date_create_month FROM (\n"
        f" SELECT\n  {select}\n FROM (SELECT unnest(page) AS r FROM {reader}))\n) TO {lit(out)} "
        f"(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 3, PARTITION_BY (date_create_month), OVERWRITE_OR_IGNORE)"
    )


def convert(run_dir, out, schema_path):
    cols = load_columns(run_dir, schema_path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # the partition month and a plain date are taken in UTC, as ours
    sql = convert_sql(run_dir, out, cols)
    if os.environ.get("B24_BENCH_SHOW_SQL"):
        print(sql, file=sys.stderr)
    rows = con.execute(sql).fetchone()[0]
    print(json.dumps({"rows": rows}))


def verify(schema_path, datasets):
    with open(schema_path) as f:
        want = {c["column"]: c["duckdb_type"] for c in json.load(f)}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    report = {}
    first_prints = None
    for name, path in datasets:
        src = f"read_parquet({lit(os.path.join(path, '**', '*.parquet'))}, hive_partitioning = true, union_by_name = true)"
        described = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        type_mismatches = []
        for col, t in want.items():
            got = described.get(col)
            if got != t:
                type_mismatches.append({"column": col, "ours": t, "got": got})
        extra = sorted(set(described) - set(want) - {"date_create_month"})
        cols = [c for c in want if c in described]
        # a fingerprint of each column's values, independent of row order and file layout
        prints = con.execute(
            f"SELECT count(*), " + ", ".join(f"sum(hash({ident(c)}))::VARCHAR" for c in cols) + f" FROM {src}"
        ).fetchone()
        rows, prints = prints[0], dict(zip(cols, prints[1:]))
        value_mismatches = []
        if first_prints is None:
            first_prints = prints
        else:
            value_mismatches = [c for c in cols if prints[c] != first_prints.get(c)]
        for m in type_mismatches:
            print(f"{name}: column {m['column']}: type {m['got']} where ours is {m['ours']}", file=sys.stderr)
        if value_mismatches:
            print(f"{name}: values differ from {datasets[0][0]} in {', '.join(value_mismatches)}", file=sys.stderr)
        report[name] = {
            "rows": rows,
            "type_mismatches": type_mismatches,
            "extra_columns": extra,
            "value_mismatches": value_mismatches,
            "columns_checked": len(cols),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--verify":
        verify(args[1], [tuple(a.split("=", 1)) for a in args[2:]])
    elif len(args) == 4 and args[2] == "--schema":
        convert(args[0], args[1], args[3])
    else:
        sys.exit(__doc__)
