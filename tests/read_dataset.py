"""Reads an exported dataset the way users do (DuckDB, then pyarrow) and prints it as JSON for the Rust tests.

Usage: read_dataset.py DATASET_DIR [SQL_WHERE]
Output: {"duckdb_types": {col: type}, "arrow_types": {col: type}, "files": n, "rows": [{col: value}, ...]}
Timestamps with time zone are printed as epoch microseconds (exact); decimals and dates as text (exact).
"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

root = sys.argv[1]
src = f"read_parquet('{root}/**/*.parquet', hive_partitioning = true, union_by_name = true)"
con = duckdb.connect()
types = {name: typ for name, typ, *_ in con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()}
cols = []
for name, typ in types.items():
    q = '"' + name.replace('"', '""') + '"'
    cols.append(f"epoch_us({q}) AS {q}" if typ == "TIMESTAMP WITH TIME ZONE" else q)
rel = con.sql(f"SELECT {', '.join(cols)} FROM {src} ORDER BY id")
names = rel.columns
rows = [dict(zip(names, r)) for r in rel.fetchall()]

# pyarrow reads the same files with hive partitioning
dataset = ds.dataset(root, format="parquet", partitioning="hive")
arrow_types = {f.name: str(f.type) for f in dataset.schema}
files = len(dataset.files)
assert dataset.count_rows() == len(rows), (dataset.count_rows(), len(rows))

json.dump({"duckdb_types": types, "arrow_types": arrow_types, "files": files, "rows": rows}, sys.stdout, default=str, ensure_ascii=False)
