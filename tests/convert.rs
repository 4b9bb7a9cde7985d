//! The raw landing zone: an export with `--raw-out` keeps every page body; `b24-export convert` rebuilds from it,
//! without the portal, a dataset equal to the one the live export wrote (DuckDB `EXCEPT` both ways, same types),
//! also under another partitioning.

mod common;

use std::path::Path;

use b24_export::sim::SimConfig;
use common::*;

fn glob(dataset: &Path) -> String {
    format!("read_parquet('{}/**/*.parquet', hive_partitioning = false, union_by_name = true)", dataset.display())
}

/// Rows of `a` not in `b`, and of `b` not in `a` (with duplicates: EXCEPT ALL).
fn difference(a: &Path, b: &Path, columns: &str) -> (u64, u64) {
    let q = |x: &Path, y: &Path| {
        let r = query(&format!("SELECT count(*) AS n FROM (SELECT {columns} FROM {} EXCEPT ALL SELECT {columns} FROM {})", glob(x), glob(y)));
        r[0]["n"].as_u64().unwrap()
    };
    (q(a, b), q(b, a))
}

fn types(dataset: &Path) -> Vec<(String, String)> {
    query(&format!("DESCRIBE SELECT * FROM {}", glob(dataset)))
        .iter()
        .map(|r| (r["column_name"].as_str().unwrap().to_string(), r["column_type"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn convert_from_raw_pages_equals_the_live_export() {
    let sim = start_sim(SimConfig { leads: 6_000, seed: 51, bad_values: true, ..SimConfig::default() });
    let dir = tempdir("convert");
    let (live, raw, rebuilt, by_status) = (dir.join("live"), dir.join("raw"), dir.join("rebuilt"), dir.join("by-status"));
    let o = export(&sim.webhook_url(), &live, &["--raw-out", raw.to_str().unwrap()]);
    assert_success(&o);
    let requests = sim.stats().http_requests.load(std::sync::atomic::Ordering::Relaxed);

    // the raw zone: one run folder, pages as zstd JSON lines, no secret in it
    let runs: Vec<_> = std::fs::read_dir(&raw).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].join("run.json").exists() && runs[0].join("fields.json").exists() && runs[0].join("pages/part-00001.jsonl.zst").exists());
    let bytes = all_bytes_under(&raw);
    assert!(!contains(&bytes, &sim.config().webhook_code));
    assert!(!contains(&bytes, "simauth"), "file download tokens (auth=) must not be kept in the raw zone");

    // rebuilt without the portal: not one request
    let o = bin().args(["--quiet", "convert"]).arg(&raw).arg("--out").arg(&rebuilt).output().unwrap();
    assert_success(&o);
    assert_eq!(sim.stats().http_requests.load(std::sync::atomic::Ordering::Relaxed), requests, "convert must not call the portal");
    assert!(text(&o).0.contains("exported 6000 leads"), "{}", text(&o).0);

    let (l, r) = (live.join("leads"), rebuilt.join("leads"));
    assert_eq!(types(&l), types(&r), "same columns, same types");
    assert_eq!(difference(&l, &r, "*"), (0, 0), "the rebuilt dataset differs from the live one");
    check_full_dataset(&sim, &read_dataset(&r), &[]);
    // dictionaries and rejects come along
    assert!(rebuilt.join("_dict/statuses/leads.parquet").exists() && rebuilt.join("_dict/fields/leads.parquet").exists());
    assert_eq!(
        std::fs::read_to_string(live.join("_rejects/leads.jsonl")).unwrap().lines().count(),
        std::fs::read_to_string(rebuilt.join("_rejects/leads.jsonl")).unwrap().lines().count()
    );

    // re-partitioned from the same pages: the same rows (status_id moves into the path)
    let o = bin().args(["--quiet", "convert"]).arg(runs[0].as_path()).args(["--partition-by", "status_id", "--out"]).arg(&by_status).output().unwrap();
    assert_success(&o);
    let s = by_status.join("leads");
    assert!(std::fs::read_dir(&s).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("status_id=")));
    let cols: Vec<String> = types(&l).into_iter().map(|(c, _)| format!("\"{c}\"")).filter(|c| c != "\"status_id\"").collect();
    assert_eq!(difference(&l, &s, &cols.join(", ")), (0, 0));

    // a pages file cut between two of its frames (one per page) still reads without a zstd error: run.json's
    // count of list calls catches it, and nothing is published
    let pages = runs[0].join("pages/part-00001.jsonl.zst");
    let bytes = std::fs::read(&pages).unwrap();
    let mut at = 0;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let n = zstd::zstd_safe::find_frame_compressed_size(&bytes[at..]).expect("a frame");
        frames.push(at);
        at += n;
    }
    assert!(frames.len() >= 2, "one frame per page: {} frames", frames.len());
    std::fs::write(&pages, &bytes[..*frames.last().unwrap()]).unwrap();
    let cut = dir.join("cut");
    let o = bin().args(["--quiet", "convert"]).arg(runs[0].as_path()).arg("--out").arg(&cut).output().unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a pages file is incomplete"), "{stderr}");
    assert!(!cut.join("leads").exists() || std::fs::read_dir(cut.join("leads")).unwrap().next().is_none(), "nothing published");

    // a frame whose line is not JSON (run.json counting it): bad input, naming the file, not an internal error
    let mut damaged = bytes.clone();
    damaged.extend(zstd::bulk::compress(b"{\"ID\": \"1\", oops\n", 3).unwrap());
    std::fs::write(&pages, &damaged).unwrap();
    let run_json = runs[0].join("run.json");
    let mut run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&run_json).unwrap()).unwrap();
    run["list_calls"] = (run["list_calls"].as_u64().unwrap() + 1).into();
    std::fs::write(&run_json, run.to_string()).unwrap();
    let o = bin().args(["--quiet", "convert"]).arg(runs[0].as_path()).arg("--out").arg(dir.join("damaged")).output().unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("part-00001.jsonl.zst") && stderr.contains("a list result is not a JSON array"), "{stderr}");
}
