//! `--api item` (crm.item.list) writes the same dataset as `--api lead` (crm.lead.list): same columns, types and
//! values (DuckDB `EXCEPT` both ways empty), from a simulated portal that serves both APIs from the same data.

mod common;

use std::path::Path;

use b24_export::sim::data::FIELDS;
use b24_export::sim::SimConfig;
use common::*;

fn except(a: &Path, b: &Path) -> u64 {
    except_all(&format!("SELECT * FROM {}", glob(a)), &format!("SELECT * FROM {}", glob(b)))
}

/// Every listed field the item API also has (all but ADDRESS_*).
fn shared_fields() -> String {
    FIELDS.iter().filter(|f| f.listed && !f.name.starts_with("ADDRESS")).map(|f| f.name).collect::<Vec<_>>().join(",")
}

#[test]
fn item_and_lead_apis_give_the_same_dataset() {
    let sim = start_sim(SimConfig { leads: 5_000, seed: 61, offset_secs: -3 * 3600 - 1800, ..SimConfig::default() });
    let dir = tempdir("item");
    let select = shared_fields();
    let (lead, item) = (dir.join("lead"), dir.join("item"));
    assert_success(&export(&sim.webhook_url(), &lead, &["--api", "lead", "--select", &select]));
    let calls_before = sim.stats().list_calls.load(std::sync::atomic::Ordering::Relaxed);
    let o = export(&sim.webhook_url(), &item, &["--api", "item", "--select", &select]);
    assert_success(&o);
    assert!(sim.stats().list_calls.load(std::sync::atomic::Ordering::Relaxed) > calls_before);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(item.join("_manifests/leads/v000001.json")).unwrap()).unwrap();
    assert!(m["source"].as_str().unwrap().contains("crm.item.list"), "{}", m["source"]);

    let (l, i) = (lead.join("leads"), item.join("leads"));
    assert_eq!(types(&l), types(&i), "same columns and types");
    assert_eq!((except(&l, &i), except(&i, &l)), (0, 0), "row for row, column for column");
    let address: Vec<String> = FIELDS.iter().filter(|f| f.name.starts_with("ADDRESS")).map(|f| f.name.to_ascii_lowercase()).collect();
    let mut skip: Vec<&str> = address.iter().map(String::as_str).collect();
    skip.push("contact_ids"); // not returned by crm.lead.list, hence not in --select
    check_full_dataset(&sim, &read_dataset(&i), &skip);

    // without --select the item API has no ADDRESS_* columns; auto therefore keeps crm.lead.list
    let auto = dir.join("auto");
    let o = bin()
        .args(["export", "--webhook", &sim.webhook_url(), "--out"])
        .arg(&auto)
        .env_remove("B24_WEBHOOK_URL")
        .output()
        .unwrap();
    assert_success(&o);
    assert!(text(&o).1.contains("crm.item.list lacks") && text(&o).1.contains("ADDRESS"), "{}", text(&o).1);
    check_full_dataset(&sim, &read_dataset(&auto.join("leads")), &[]);
    // …and takes crm.item.list when it serves every field asked for
    let auto2 = dir.join("auto2");
    assert_success(&export(&sim.webhook_url(), &auto2, &["--select", &select]));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(auto2.join("_manifests/leads/v000001.json")).unwrap()).unwrap();
    assert!(m["source"].as_str().unwrap().contains("crm.item.list"));
}

#[test]
fn item_filters_translate_and_unknown_fields_are_refused() {
    let sim = start_sim(SimConfig { leads: 2_000, seed: 62, ..SimConfig::default() });
    let dir = tempdir("item-filter");
    let select = shared_fields();
    let filter = r#"{"STATUS_ID": "JUNK", ">OPPORTUNITY": 1000}"#;
    let (lead, item) = (dir.join("lead"), dir.join("item"));
    assert_success(&export(&sim.webhook_url(), &lead, &["--api", "lead", "--select", &select, "--filter", filter]));
    assert_success(&export(&sim.webhook_url(), &item, &["--api", "item", "--select", &select, "--filter", filter]));
    let (l, i) = (lead.join("leads"), item.join("leads"));
    let n = query(&format!("SELECT count(*) AS n, count(*) FILTER (WHERE status_id <> 'JUNK' OR opportunity <= 1000) AS bad FROM {}", glob(&i)));
    assert!(n[0]["n"].as_u64().unwrap() > 0);
    assert_eq!(n[0]["bad"].as_u64(), Some(0));
    assert_eq!((except(&l, &i), except(&i, &l)), (0, 0));

    // a field crm.item.list does not have cannot be filtered on through it
    let o = export(&sim.webhook_url(), &dir.join("bad"), &["--api", "item", "--filter", r#"{"ADDRESS_CITY": "Berlin"}"#]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("ADDRESS_CITY"), "{}", text(&o).1);
}

#[test]
fn incremental_runs_work_through_the_item_api() {
    let sim = start_sim(SimConfig { leads: 1_500, seed: 63, ..SimConfig::default() });
    let out = tempdir("item-incremental");
    let select = shared_fields();
    let args = ["--api", "item", "--select", &select, "--incremental", "--detect-deletes"];
    assert_success(&export(&sim.webhook_url(), &out, &args));
    let ids = sim.ids();
    sim.update_lead(ids[3]);
    sim.delete_lead(ids[10]);
    sim.insert_lead();
    sim.advance_clock(600);
    let o = export(&sim.webhook_url(), &out, &args);
    assert_success(&o);
    assert!(text(&o).0.contains("1 inserted, 1 updated, 1 deleted"), "{}", text(&o).0);
    let address: Vec<String> = FIELDS.iter().filter(|f| f.name.starts_with("ADDRESS")).map(|f| f.name.to_ascii_lowercase()).collect();
    let mut skip: Vec<&str> = address.iter().map(String::as_str).collect();
    skip.push("contact_ids");
    check_full_dataset(&sim, &read_dataset(&out.join("leads")), &skip);
}
