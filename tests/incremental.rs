//! Incremental loads: seeded rounds of inserts, edits (also of leads in old partitions) and deletes on the
//! simulated portal, each followed by `--incremental --detect-deletes`; after each round the whole dataset must
//! equal the portal (each ID once, current values), and only the partitions of changed leads may change files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use b24_export::sim::{SimConfig, SimPortal};
use common::*;
use serde_json::Value;

fn manifest(out: &Path, version: u64) -> Value {
    let p = out.join(format!("_manifests/leads/v{version:06}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// partition folder → file paths of a manifest.
fn files_by_partition(m: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in m["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        let (dir, _) = path.rsplit_once('/').unwrap_or(("", path));
        out.entry(dir.to_string()).or_default().insert(path.to_string());
    }
    out
}

fn changed_partitions(a: &Value, b: &Value) -> BTreeSet<String> {
    let (fa, fb) = (files_by_partition(a), files_by_partition(b));
    fa.keys().chain(fb.keys()).filter(|k| fa.get(*k) != fb.get(*k)).cloned().collect()
}

/// The `date_create_month=YYYY-MM` folder of each lead the portal has now.
fn month_of(sim: &SimPortal) -> BTreeMap<i64, String> {
    let ids = sim.ids();
    let pos = b24_export::sim::data::FIELDS.iter().position(|f| f.name == "DATE_CREATE").unwrap();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let b24_export::sim::data::Truth::DateTime(secs) = sim.truth_at(i)[pos] else { panic!("DATE_CREATE") };
            let month = chrono::DateTime::from_timestamp(secs, 0).unwrap().format("%Y-%m").to_string();
            (*id, format!("date_create_month={month}"))
        })
        .collect()
}

fn incremental(sim: &SimPortal, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--incremental", "--detect-deletes"];
    args.extend_from_slice(extra);
    let o = export(&sim.webhook_url(), out, &args);
    assert_success(&o);
    text(&o).0
}

fn version_in(stdout: &str) -> u64 {
    let at = stdout.find("committed snapshot v").expect("a committed snapshot") + "committed snapshot v".len();
    stdout[at..at + 6].parse().unwrap()
}

#[test]
fn seeded_rounds_of_changes_merge_exactly_and_touch_only_their_partitions() {
    let sim = start_sim(SimConfig { leads: 4_000, seed: 41, ..SimConfig::default() });
    let out = tempdir("incremental");
    // the first incremental run has no snapshot to merge into: a full one
    let first = incremental(&sim, &out, &[]);
    assert!(!first.contains("incremental since"), "{first}");
    check_full_dataset(&sim, &read_dataset(&out.join("leads")), &[]);
    let mut version = version_in(&first);
    let mut rng = fastrand::Rng::with_seed(4242);
    for round in 0..5 {
        let before = month_of(&sim);
        let ids = sim.ids();
        let mut touched = BTreeSet::new();
        let (mut ins, mut upd, mut del) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for _ in 0..rng.usize(1..20) {
            let id = ids[rng.usize(..ids.len())];
            if !del.contains(&id) {
                sim.update_lead(id);
                upd.insert(id);
            }
        }
        // an edit of one of the oldest leads: its partition is years old
        let old = ids[rng.usize(..10)];
        if !del.contains(&old) {
            sim.update_lead(old);
            upd.insert(old);
        }
        for _ in 0..rng.usize(0..8) {
            let id = ids[rng.usize(..ids.len())];
            if !upd.contains(&id) {
                sim.delete_lead(id);
                del.insert(id);
            }
        }
        for _ in 0..rng.usize(1..15) {
            ins.insert(sim.insert_lead());
        }
        sim.advance_clock(3_600);
        for id in &del {
            touched.insert(before[id].clone());
        }
        let after = month_of(&sim);
        for id in upd.iter().chain(&ins) {
            touched.insert(after[id].clone());
        }

        let stdout = incremental(&sim, &out, &[]);
        let v = version_in(&stdout);
        assert_eq!(v, version + 1, "round {round}: one new manifest per run");
        let m = manifest(&out, v);
        let c = &m["incremental"];
        assert_eq!(
            (c["inserted"].as_u64(), c["updated"].as_u64(), c["deleted"].as_u64()),
            (Some(ins.len() as u64), Some(upd.len() as u64), Some(del.len() as u64)),
            "round {round}: {stdout}"
        );
        check_full_dataset(&sim, &read_dataset(&out.join("leads")), &[]);
        assert_eq!(m["total_rows"].as_u64().unwrap() as usize, sim.ids().len());
        assert_eq!(changed_partitions(&manifest(&out, version), &m), touched, "round {round}: only the changed leads' partitions may change");
        version = v;
    }

    // the same run again: nothing changed, so no data file changes, only a new manifest that says so
    let stdout = incremental(&sim, &out, &[]);
    let v = version_in(&stdout);
    let (a, b) = (manifest(&out, version), manifest(&out, v));
    assert_eq!(a["files"], b["files"], "a repeated run must not rewrite data files");
    let c = &b["incremental"];
    assert_eq!((c["inserted"].as_u64(), c["updated"].as_u64(), c["deleted"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(c["refetched_unchanged"].as_u64().unwrap() > 0, "the overlap re-reads the latest changes: {c}");
}

#[test]
fn a_lead_that_moves_between_status_partitions_is_not_doubled() {
    let sim = start_sim(SimConfig { leads: 1_500, seed: 43, ..SimConfig::default() });
    let out = tempdir("incremental-status");
    incremental(&sim, &out, &["--partition-by", "status_id"]);
    // an odd number of edits moves a lead to another stage, i.e. another folder
    let ids = sim.ids();
    for id in ids.iter().step_by(97) {
        sim.update_lead(*id);
    }
    sim.advance_clock(600);
    let stdout = incremental(&sim, &out, &["--partition-by", "status_id"]);
    assert!(stdout.contains("incremental since"), "{stdout}");
    check_full_dataset(&sim, &read_dataset(&out.join("leads")), &[]);
    // a different partitioning cannot be merged into this snapshot
    let o = export(&sim.webhook_url(), &out, &["--incremental"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--partition-by differs"), "{}", text(&o).1);
}

#[test]
fn a_killed_incremental_leaves_the_snapshot_readable_and_the_rerun_is_exact() {
    let sim = start_sim(SimConfig { leads: 20_000, seed: 44, latency: Duration::from_millis(20), ..SimConfig::default() });
    let out = tempdir("incremental-kill");
    incremental(&sim, &out, &[]);
    let committed = read_dataset(&out.join("leads"));
    let ids = sim.ids();
    for id in ids.iter().step_by(7) {
        sim.update_lead(*id);
    }
    for id in ids.iter().skip(3).step_by(50) {
        sim.delete_lead(*id);
    }
    sim.advance_clock(3_600);
    let mut finished = false;
    for round in 0..6u64 {
        let mut child = bin()
            .args(["--quiet", "export", "--webhook", &sim.webhook_url(), "--incremental", "--detect-deletes", "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + round * 400));
        finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if finished {
            break;
        }
        // what `b24-export sql` reads is a whole committed snapshot: the last one, or the new one if the kill
        // came after its commit
        let o = bin().args(["sql"]).arg(&out).output().unwrap();
        assert_success(&o);
        let sql = text(&o).0.replace("SELECT *", "SELECT count(*) AS n, count(DISTINCT id) AS d");
        let r = query(&sql);
        let (n, d) = (r[0]["n"].as_u64().unwrap() as usize, r[0]["d"].as_u64().unwrap() as usize);
        assert_eq!(n, d, "round {round}: a lead twice");
        assert!(n == committed.rows.len() || n == sim.ids().len(), "round {round}: {n} rows");
    }
    if !finished {
        incremental(&sim, &out, &[]);
    }
    check_full_dataset(&sim, &read_dataset(&out.join("leads")), &[]);
}

#[test]
fn keep_deleted_flags_rows_once_instead_of_removing_them() {
    let sim = start_sim(SimConfig { leads: 2_000, seed: 45, ..SimConfig::default() });
    let out = tempdir("incremental-keep");
    incremental(&sim, &out, &["--keep-deleted"]);
    let ids = sim.ids();
    let gone: Vec<i64> = ids.iter().copied().step_by(181).collect();
    for id in &gone {
        sim.delete_lead(*id);
    }
    sim.advance_clock(600);
    let stdout = incremental(&sim, &out, &["--keep-deleted"]);
    assert!(stdout.contains(&format!("{} deleted", gone.len())), "{stdout}");
    let glob = format!("read_parquet('{}/leads/**/*.parquet', hive_partitioning = true, union_by_name = true)", out.display());
    let flagged: Vec<i64> = query(&format!("SELECT id FROM {glob} WHERE deleted_at IS NOT NULL ORDER BY id"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(flagged, gone, "exactly the deleted leads carry deleted_at");
    let live = query(&format!("SELECT count(*) AS n, count(DISTINCT id) AS d FROM {glob} WHERE deleted_at IS NULL"));
    assert_eq!((live[0]["n"].as_u64(), live[0]["d"].as_u64()), (Some(sim.ids().len() as u64), Some(sim.ids().len() as u64)));
    // already flagged: a second run neither counts them again nor rewrites their files
    let v = version_in(&stdout);
    let again = incremental(&sim, &out, &["--keep-deleted"]);
    assert!(again.contains(" 0 deleted"), "{again}");
    assert_eq!(manifest(&out, v)["files"], manifest(&out, v + 1)["files"]);
}

/// The rejects file describes the whole merged snapshot: rejects of rows an incremental run leaves alone stay,
/// rows it replaces bring their new rejects instead of their old ones (no line twice).
#[test]
fn rejects_of_rows_that_stay_survive_an_incremental_run() {
    let sim = start_sim(SimConfig { leads: 3_000, seed: 44, bad_values: true, ..SimConfig::default() });
    let out = tempdir("incr-rejects");
    assert_success(&export(&sim.webhook_url(), &out, &[]));
    let rejects = |out: &Path| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(out.join("_rejects/leads.jsonl")).unwrap_or_default();
        let mut v: Vec<(String, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|r| (r["lead_id"].as_str().unwrap().to_string(), r["field"].as_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    let before = rejects(&out);
    assert!(before.len() >= 10, "the portal should garble some values: {before:?}");
    // edit two leads with a garbled value (still garbled after the edit) and one without
    let garbled: BTreeSet<i64> = before.iter().map(|(id, _)| id.parse().unwrap()).collect();
    let clean = sim.ids().into_iter().find(|id| !garbled.contains(id)).unwrap();
    sim.advance_clock(3_600);
    for id in garbled.iter().take(2).copied().chain([clean]) {
        sim.update_lead(id);
    }
    let o = export(&sim.webhook_url(), &out, &["--incremental"]);
    assert_success(&o);
    assert!(text(&o).0.contains(" 3 updated,"), "{}", text(&o).0);
    assert_eq!(rejects(&out), before, "the merged snapshot's rejects");
}
