//! Helpers shared by the integration tests: the simulated portal, the real binary, and DuckDB/pyarrow readers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod s3;

use b24_export::sim::data::{self, FieldDef, Truth, FIELDS};
use b24_export::sim::{SimConfig, SimPortal};
use serde_json::{json, Value};
use std::collections::BTreeSet;

pub fn start_sim(cfg: SimConfig) -> SimPortal {
    SimPortal::start(cfg, 0).expect("start the simulated portal")
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_b24-export"))
}

/// Runs `b24-export export` with extra args; returns the process output.
pub fn export(webhook: &str, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["--quiet", "export", "--webhook", webhook, "--out"])
        .arg(out)
        .args(extra)
        .env_remove("B24_WEBHOOK_URL")
        .output()
        .expect("run b24-export")
}

pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

pub fn assert_success(o: &Output) {
    let (out, err) = text(o);
    assert!(o.status.success(), "b24-export failed ({:?})\nstdout:\n{out}\nstderr:\n{err}", o.status.code());
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("b24-test-{name}-{}-{}", std::process::id(), fastrand::u32(..)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("B24_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "no Python with duckdb and pyarrow: run `make test` (it creates .venv) or set B24_PYTHON");
    venv
}

/// The dataset as DuckDB and pyarrow read it.
pub struct Dataset {
    pub duckdb_types: serde_json::Map<String, Value>,
    pub arrow_types: serde_json::Map<String, Value>,
    pub files: usize,
    pub rows: Vec<serde_json::Map<String, Value>>,
}

pub fn read_dataset(dir: &Path) -> Dataset {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_dataset.py");
    let o = Command::new(python()).arg(script).arg(dir).output().expect("run python");
    assert!(o.status.success(), "read_dataset.py failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json from read_dataset.py");
    let obj = |k: &str| v[k].as_object().cloned().unwrap();
    Dataset {
        duckdb_types: obj("duckdb_types"),
        arrow_types: obj("arrow_types"),
        files: v["files"].as_u64().unwrap() as usize,
        rows: v["rows"].as_array().unwrap().iter().map(|r| r.as_object().cloned().unwrap()).collect(),
    }
}

/// A DuckDB table expression reading a dataset folder as users do (hive partitions, columns by name).
pub fn glob(dataset: &Path) -> String {
    format!("read_parquet('{}/**/*.parquet', hive_partitioning = true, union_by_name = true)", dataset.display())
}

/// A dataset's columns and DuckDB types (`DESCRIBE`).
pub fn types(dataset: &Path) -> Vec<(String, String)> {
    query(&format!("DESCRIBE SELECT * FROM {}", glob(dataset)))
        .iter()
        .map(|r| (r["column_name"].as_str().unwrap().to_string(), r["column_type"].as_str().unwrap().to_string()))
        .collect()
}

/// Rows of query `a` missing from query `b`, duplicates counted (`EXCEPT ALL`).
pub fn except_all(a: &str, b: &str) -> u64 {
    query(&format!("SELECT count(*) AS n FROM ({a} EXCEPT ALL {b})"))[0]["n"].as_u64().unwrap()
}

/// Runs SQL with DuckDB; rows as JSON objects.
pub fn query(sql: &str) -> Vec<serde_json::Map<String, Value>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/query.py");
    let o = Command::new(python()).arg(script).arg(sql).output().expect("run python");
    assert!(o.status.success(), "query.py failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json from query.py");
    v.as_array().unwrap().iter().map(|r| r.as_object().cloned().unwrap()).collect()
}

/// The DuckDB type the issue's type table promises for a simulated field — derived from the simulator's
/// field definitions, independently of the exporter's schema code.
pub fn promised_duckdb_type(def: &FieldDef) -> String {
    use data::FType::*;
    let money = "STRUCT(amount DECIMAL(18,2), currency VARCHAR)".to_string();
    let scalar = match def.ftype {
        // money columns are exact decimals
        _ if matches!(def.name, "OPPORTUNITY" | "TAX_VALUE" | "REVENUE") => "DECIMAL(18,2)".to_string(),
        Integer | User | CrmCompany | CrmContact | CrmLead | CrmQuote | CrmCategory | UfInteger | UfEmployee | UfEnumeration => {
            "BIGINT".into()
        }
        Double | UfDouble => "DOUBLE".into(),
        Char | UfBoolean => "BOOLEAN".into(),
        DateTime | UfDateTime => "TIMESTAMP WITH TIME ZONE".into(),
        Date | UfDate => "DATE".into(),
        Multifield => return r#"STRUCT(id BIGINT, value_type VARCHAR, "value" VARCHAR, type_id VARCHAR)[]"#.into(),
        UfMoney => money,
        UfFile | File => "STRUCT(id BIGINT, show_url VARCHAR)".into(),
        Str | CrmStatus(_) | CrmCurrency | Location | UfString | UfUrl | UfAddress | UfCrm | UfCrmStatus(_) | UfIblockElement
        | UfIblockSection | UfCustom => "VARCHAR".into(),
    };
    if def.multiple { format!("{scalar}[]") } else { scalar }
}

fn cents_text(c: i64) -> String {
    format!("{}{}.{:02}", if c < 0 { "-" } else { "" }, (c / 100).abs(), (c % 100).abs())
}

/// What DuckDB should show for a simulated value (timestamps as epoch µs, decimals and dates as text).
/// Written from the simulator's typed truth, independently of the exporter's converter.
pub fn expected(def: &FieldDef, t: &Truth) -> Value {
    match t {
        Truth::Null if def.ftype == data::FType::Multifield => json!([]),
        Truth::Null => Value::Null,
        Truth::Str(s) => json!(s),
        Truth::Int(i) => json!(i),
        Truth::Cents(c) => json!(cents_text(*c)),
        Truth::Float(x) => json!(x),
        Truth::Bool(b) => json!(b),
        Truth::DateTime(s) => json!(s * 1_000_000),
        Truth::Date(d) => json!(data::days_to_date(*d).format("%Y-%m-%d").to_string()),
        Truth::Multi(ms) => Value::Array(
            ms.iter().map(|m| json!({"id": m.id, "value_type": m.value_type, "value": m.value, "type_id": m.type_id})).collect(),
        ),
        Truth::Money { cents, currency } => json!({"amount": cents_text(*cents), "currency": currency}),
        Truth::File { id } => json!({"id": id}),
        Truth::List(items) => Value::Array(items.iter().map(|i| expected(def, i)).collect()),
    }
}

/// Compares one exported row with the simulator's truth for that lead; returns the mismatches.
pub fn compare_row(row: &serde_json::Map<String, Value>, truth: &[Truth], skip: &[&str]) -> Vec<String> {
    compare_record(FIELDS, row, truth, skip)
}

/// Compares one exported row with the simulator's truth of a record with the given fields.
pub fn compare_record(fields: &[FieldDef], row: &serde_json::Map<String, Value>, truth: &[Truth], skip: &[&str]) -> Vec<String> {
    compare_record_via(fields, row, truth, skip, false)
}

/// [`compare_record`] for a dataset read through `crm.item.list` (`item`), which also fills the fields the
/// legacy list methods never return.
pub fn compare_record_via(fields: &[FieldDef], row: &serde_json::Map<String, Value>, truth: &[Truth], skip: &[&str], item: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for (def, t) in fields.iter().zip(truth) {
        let col = def.name.to_ascii_lowercase();
        if skip.contains(&col.as_str()) {
            continue;
        }
        let Some(got) = row.get(&col) else {
            bad.push(format!("{col}: missing column"));
            continue;
        };
        // a field no list method returns (CONTACT_IDS) is NULL: not known, rather than known to be empty
        let want = if def.listed || item { expected(def, t) } else { Value::Null };
        let ok = match (&want, got) {
            (Value::Number(a), Value::Number(b)) => (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9,
            (Value::Object(w), Value::Object(g)) if matches!(def.ftype, data::FType::UfFile | data::FType::File) => {
                let url = g.get("show_url").and_then(Value::as_str).unwrap_or("");
                w["id"] == g["id"] && url.contains(&format!("fileId={}", w["id"])) && !url.contains("auth=")
            }
            (a, b) => a == b,
        };
        if !ok {
            bad.push(format!("{col}: want {want}, got {got}"));
        }
    }
    bad
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every byte of every file under `dir` — to check that no secret was written.
pub fn all_bytes_under(dir: &Path) -> Vec<u8> {
    files_under(dir).iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Checks the exact ID set and every value of every lead against the simulator's truth.
pub fn check_full_dataset(sim: &SimPortal, ds: &Dataset, skip: &[&str]) {
    let ids: Vec<i64> = ds.rows.iter().map(|r| r["id"].as_i64().expect("id is an integer")).collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate IDs in the dataset");
    assert_eq!(ids, sim.ids(), "the exported ID set differs from the portal's");
    let mut mismatches = Vec::new();
    for (pos, row) in ds.rows.iter().enumerate() {
        let mut truth = sim.truth_at(pos);
        if sim.config().bad_values {
            // a value the portal garbled is expected as NULL (an empty list for multi-fields)
            if let Some((field, _)) = b24_export::sim::bad_value_at(pos) {
                truth[FIELDS.iter().position(|f| f.name == field).unwrap()] = Truth::Null;
            }
        }
        for m in compare_row(row, &truth, skip) {
            mismatches.push(format!("lead {}: {m}", ids[pos]));
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches, first: {:#?}", mismatches.len(), &mismatches[..mismatches.len().min(10)]);
}

