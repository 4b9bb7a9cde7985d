"""pyarrow side of the conversion benchmark (`make bench-convert`, run by benches/convert.rs).

    convert_pyarrow.py RUN OUT --schema SCHEMA

Converts the raw run folder RUN (run.json, fields.json, pages/*.jsonl.zst, written by
`b24-export export --raw-out`) into hive-partitioned Parquet under OUT (date_create_month=YYYY-MM, zstd level
3) with the column types of b24-export (SCHEMA: the output of `b24-export schema --format json`). Prints one
JSON line: {"rows": N}.

How: the pages are decompressed as a stream, in blocks of whole lines. pyarrow.json reads JSON objects, one per
line, and each line here is the array of one list call, so every line is wrapped as {"r": [...]}. pyarrow.json
cannot read a field whose JSON type changes from row to row, and an empty multiple field comes as false or ""
besides [], so `"FIELD":false` and `"FIELD":""` become `[]` for the list fields and null for the file fields first
(a plain byte replacement: a key pattern like this cannot occur inside a JSON string, where quotes are escaped). The block is
read with an explicit schema (strings, lists of strings, the multi-field and file structs), the columns are cast
with pyarrow.compute, and the batches stream into pyarrow.dataset.write_dataset.
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pj

BLOCK = 32 << 20

MULTIFIELD = 'STRUCT(id BIGINT, value_type VARCHAR, "value" VARCHAR, type_id VARCHAR)[]'
MONEY = "STRUCT(amount DECIMAL(18,2), currency VARCHAR)"
FILE = "STRUCT(id BIGINT, show_url VARCHAR)"
RAW_MULTI = pa.list_(pa.struct([(k, pa.string()) for k in ("ID", "VALUE_TYPE", "VALUE", "TYPE_ID")]))
RAW_FILE = pa.struct([("id", pa.int64()), ("showUrl", pa.string())])
DEC = pa.decimal128(18, 2)
TS = pa.timestamp("us", tz="UTC")
NULL_STR = pa.scalar(None, pa.string())
HALF_DAY_US = 12 * 3600 * 1_000_000


def raw_type(t):
    if t == MULTIFIELD:
        return RAW_MULTI
    if t == FILE:
        return RAW_FILE
    if t.endswith("[]"):
        return pa.list_(pa.string())
    return pa.string()


def blank_to_null(s):
    return pc.if_else(pc.equal(s, ""), NULL_STR, s)


def to_timestamp(s):
    return pc.cast(blank_to_null(s), TS)


def to_date(s):
    # midnight UTC in the portal's offset → the UTC date, rounded to the nearest midnight
    micros = pc.add(pc.cast(to_timestamp(s), pa.int64()), HALF_DAY_US)
    return pc.cast(pc.cast(micros, pa.timestamp("us")), pa.date32())


def to_bool(s):
    s = blank_to_null(s)
    truth = pc.is_in(s, value_set=pa.array(["Y", "y", "1", "true"]))
    return pc.if_else(pc.is_null(s), pa.scalar(None, pa.bool_()), truth)


def scalar(t, s):
    if t == "VARCHAR":
        return s
    if t == "BIGINT":
        return pc.cast(blank_to_null(s), pa.int64())
    if t == "DOUBLE":
        return pc.cast(blank_to_null(s), pa.float64())
    if t == "DECIMAL(18,2)":
        return pc.cast(blank_to_null(s), DEC)
    if t == "BOOLEAN":
        return to_bool(s)
    if t == "TIMESTAMP WITH TIME ZONE":
        return to_timestamp(s)
    if t == "DATE":
        return to_date(s)
    raise ValueError(f"no cast for {t}")


def relist(a, values, keep_nulls=False):
    """The list array `a` with new values; a null list stays null, or becomes an empty list (its offsets do not
    move) for the multi-fields, whose key is absent when a record has no values."""
    return pa.ListArray.from_arrays(a.offsets, values, mask=pc.is_null(a) if keep_nulls else None)


def column(t, a):
    if t == MULTIFIELD:
        v = a.values
        ident, vtype, value, type_id = v.flatten()
        el = pa.StructArray.from_arrays(
            [pc.cast(blank_to_null(ident), pa.int64()), vtype, value, type_id], names=["id", "value_type", "value", "type_id"]
        )
        return relist(a, el)
    if t == MONEY:
        s = blank_to_null(a)
        parts = pc.extract_regex(pc.fill_null(s, "0|"), r"^(?P<amount>[^|]*)\|?(?P<currency>.*)$")
        amount, currency = parts.flatten()
        return pa.StructArray.from_arrays(
            [pc.cast(amount, DEC), blank_to_null(currency)], names=["amount", "currency"], mask=pc.is_null(s)
        )
    if t == FILE:
        fid, url = a.flatten()
        url = pc.if_else(pc.match_substring(url, "auth="), NULL_STR, url)
        return pa.StructArray.from_arrays([fid, url], names=["id", "show_url"], mask=pc.is_null(a))
    if t.endswith("[]"):
        return relist(a, scalar(t[:-2], a.values), keep_nulls=True)
    return scalar(t, a)


def batches(pages, cols, nulls):
    """`nulls`: (pattern, replacement) pairs for the empty list and file values."""
    read_schema = pa.schema([("r", pa.list_(pa.struct([(src, raw_type(t)) for _, src, t in cols])))])
    parse = pj.ParseOptions(explicit_schema=read_schema, unexpected_field_behavior="ignore")
    read = pj.ReadOptions(block_size=4 << 20)
    names = [name for name, _, _ in cols] + ["date_create_month"]

    def convert(block):
        block = b'{"r":' + block.replace(b"\n", b'}\n{"r":')[: -len(b'{"r":')]
        for pat, by in nulls:
            block = block.replace(pat, by)
        table = pj.read_json(pa.BufferReader(block), read_options=read, parse_options=parse)
        for chunk in table.column("r").chunks:
            recs = chunk.flatten()  # the records of every line of the chunk
            raw = recs.flatten()
            out = [column(t, raw[i]) for i, (_, _, t) in enumerate(cols)]
            created = out[[n for n, _, _ in cols].index("date_create")]
            out.append(pc.strftime(created, "%Y-%m"))
            yield pa.RecordBatch.from_arrays(out, names=names)

    for path in pages:
        with pa.input_stream(path, compression="zstd") as f:
            rest = b""
            while True:
                data = f.read(BLOCK)
                if not data:
                    break
                data = rest + data
                cut = data.rfind(b"\n") + 1
                block, rest = data[:cut], data[cut:]
                if block:
                    yield from convert(block)
            if rest.strip():
                yield from convert(rest if rest.endswith(b"\n") else rest + b"\n")


def main(run_dir, out, schema_path):
    with open(schema_path) as f:
        schema = json.load(f)
    with open(os.path.join(run_dir, "fields.json")) as f:
        fields = json.load(f)
    with open(os.path.join(run_dir, "run.json")) as f:
        run = json.load(f)
    source = {name.lower(): name for name in fields}
    cols = [(c["column"], source[c["column"]], c["duckdb_type"]) for c in schema]
    # the fields whose empty value may come as false or "" where pyarrow.json wants a list or an object
    lists = [src for _, src, t in cols if t.endswith("[]")]
    files = [src for _, src, t in cols if t == FILE]
    nulls = [(f'"{src}":{v}'.encode(), f'"{src}":[]'.encode()) for src in lists for v in ("false", '""')]
    nulls += [(f'"{src}":{v}'.encode(), f'"{src}":null'.encode()) for src in files for v in ("false", '""')]
    pages = [os.path.join(run_dir, p) for p in run["pages"]]

    stream = batches(pages, cols, nulls)
    first = next(stream)
    rows = 0

    def counted():
        nonlocal rows
        for b in [first]:
            rows += b.num_rows
            yield b
        for b in stream:
            rows += b.num_rows
            yield b

    ds.write_dataset(
        counted(),
        out,
        schema=first.schema,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date_create_month", pa.string())]), flavor="hive"),
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd", compression_level=3),
        existing_data_behavior="overwrite_or_ignore",
        max_rows_per_group=128 * 1024,
        min_rows_per_group=64 * 1024,
        basename_template="part-{i}.parquet",
    )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) != 4 or a[2] != "--schema":
        sys.exit(__doc__)
    main(a[0], a[1], a[3])
