# Everyday commands of b24-export. `make demo` and `make test` work on a fresh machine with Rust and Python 3.
VENV   := .venv
PY     := $(VENV)/bin/python
CARGO  ?= cargo

.PHONY: build demo test unit bench bench-fetch bench-convert lint clean

build:
	$(CARGO) build --release

## The main job on the simulated portal: 100,000 leads → ./demo-out/leads, then a DuckDB query.
demo: build
	./target/release/b24-export demo

## The test readers (DuckDB, pyarrow) live in a local virtualenv.
$(PY): tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $(PY)

## All tests: unit tests and the integration tests against the simulated portal, read back with DuckDB and pyarrow.
test: $(PY)
	B24_PYTHON=$(abspath $(PY)) $(CARGO) test

## Unit tests only (no Python needed).
unit:
	$(CARGO) test --lib

## Benchmarks: export throughput and memory, then fetch economy vs fast_bitrix24 (prints figures).
bench: bench-fetch bench-convert
	$(CARGO) bench --bench export

## 200,000 leads with 100 ms latency and 20 ms per list call, standard limits; b24-export vs fast_bitrix24.
bench-fetch: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check fast-bitrix24
	B24_BENCH_PYTHON=$(abspath $(PY)) $(CARGO) bench --bench fetch

## 200,000 and 1,000,000 simulated leads of raw pages (cached under target/bench-convert/): b24-export convert vs
## DuckDB and pyarrow on the same pages, with the same types and partitions; then the outputs are compared.
bench-convert: $(PY)
	B24_BENCH_PYTHON=$(abspath $(PY)) $(CARGO) bench --bench convert

lint:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(VENV) demo-out
