"""Runs one SQL query with DuckDB and prints the rows as a JSON list of objects (for the Rust tests)."""
import json
import sys

import duckdb

rel = duckdb.connect().sql(sys.argv[1])
print(json.dumps([dict(zip(rel.columns, r)) for r in rel.fetchall()], default=str, ensure_ascii=False))
