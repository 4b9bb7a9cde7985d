//! Deals, contacts and companies beside leads (`--entity`): each exported exactly (IDs, DuckDB types, every value
//! against the simulator's truth), joinable with the `_dict` tables and with each other, the same dataset through
//! `crm.item.list` as through the legacy methods, and merged incrementally like leads.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use b24_export::entity::Entity;
use b24_export::sim::entities;
use b24_export::sim::{SimConfig, SimPortal};
use common::*;
use serde_json::Value;

fn dict(out: &Path, table: &str, dataset: &str) -> String {
    format!("read_parquet('{}/_dict/{table}/{dataset}.parquet')", out.display())
}

/// Every row and value of an entity's dataset against the simulator (`skip`: partition columns from the path).
fn check_entity(sim: &SimPortal, out: &Path, entity: Entity, skip: &[&str]) {
    let fields = entities::fields(entity);
    let ds = read_dataset(&out.join(entity.dataset()));
    // the types the issue promises, derived from the simulator's field definitions
    for def in fields {
        let col = def.name.to_ascii_lowercase();
        if skip.contains(&col.as_str()) {
            continue;
        }
        let got = ds.duckdb_types.get(&col).and_then(Value::as_str).unwrap_or("(missing)");
        assert_eq!(got, promised_duckdb_type(def), "{entity}: type of {col}");
    }
    let ids: Vec<i64> = ds.rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "{entity}: duplicate IDs");
    assert_eq!(ids, sim.ids_of(entity), "{entity}: the exported IDs differ from the portal's");
    // --api auto reads deals through crm.item.list (it has every deal field), which fills CONTACT_IDS too
    let manifests = out.join("_manifests").join(entity.dataset());
    let latest = std::fs::read_dir(&manifests).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(latest).unwrap()).unwrap();
    let via_item = manifest["source"].as_str().unwrap().contains("crm.item.list");
    let mut bad = Vec::new();
    for (pos, row) in ds.rows.iter().enumerate() {
        for m in compare_record_via(fields, row, &sim.truth_of(entity, pos), skip, via_item) {
            bad.push(format!("{entity} {}: {m}", ids[pos]));
        }
    }
    assert!(bad.is_empty(), "{} mismatches, first: {:#?}", bad.len(), &bad[..bad.len().min(10)]);
}

#[test]
fn every_entity_exports_exactly_and_joins_its_dictionaries() {
    let sim = start_sim(SimConfig { leads: 1_500, deals: 2_600, contacts: 1_200, companies: 400, seed: 17, ..SimConfig::default() });
    let out = tempdir("entities");
    let raw = out.with_extension("raw");
    let o = export(&sim.webhook_url(), &out, &["--entity", "all", "--raw-out", raw.to_str().unwrap()]);
    assert_success(&o);
    let (stdout, _) = text(&o);
    for (n, dataset) in [(1_500, "leads"), (2_600, "deals"), (1_200, "contacts"), (400, "companies")] {
        assert!(stdout.contains(&format!("exported {n} {dataset} into")), "{stdout}");
        // each entity is its own snapshot, with its own manifest
        assert!(out.join("_manifests").join(dataset).join("v000001.json").exists(), "{dataset}: no manifest");
    }
    // partitioning defaults: month for leads and deals, year for contacts and companies
    check_entity(&sim, &out, Entity::Lead, &["date_create_month"]);
    check_entity(&sim, &out, Entity::Deal, &["date_create_month"]);
    check_entity(&sim, &out, Entity::Contact, &["date_create_year"]);
    check_entity(&sim, &out, Entity::Company, &["date_create_year"]);
    assert!(types(&out.join("contacts")).iter().any(|(c, _)| c == "date_create_year"));

    // every deal's stage has a name in its own funnel's dictionary (DEAL_STAGE for funnel 0, DEAL_STAGE_<n>)
    let deals = glob(&out.join("deals"));
    let statuses = dict(&out, "statuses", "deals");
    let r = query(&format!(
        "SELECT count(*) AS n, count(s.name) AS named, count(DISTINCT d.category_id) AS funnels
           FROM {deals} d LEFT JOIN {statuses} s ON s.status_id = d.stage_id AND s.category_id = d.category_id
                                               AND s.entity_id LIKE 'DEAL_STAGE%'"
    ));
    assert_eq!(r[0]["n"], 2_600);
    assert_eq!(r[0]["named"], r[0]["n"], "a deal stage without its funnel's name: {r:?}");
    assert_eq!(r[0]["funnels"], 3);
    let r = query(&format!("SELECT DISTINCT entity_id FROM {statuses} WHERE entity_id LIKE 'DEAL_STAGE%' ORDER BY 1"));
    let funnels: Vec<&str> = r.iter().map(|x| x["entity_id"].as_str().unwrap()).collect();
    assert_eq!(funnels, ["DEAL_STAGE", "DEAL_STAGE_1", "DEAL_STAGE_2"]);
    // and the funnels have names (crm.category.list)
    let r = query(&format!("SELECT category_id, name FROM {statuses} WHERE entity_id = 'DEAL_CATEGORY' ORDER BY sort"));
    let names: Vec<(i64, &str)> = r.iter().map(|x| (x["category_id"].as_i64().unwrap(), x["name"].as_str().unwrap())).collect();
    assert_eq!(names, entities::DEAL_CATEGORIES.iter().map(|(id, name, _)| (*id, *name)).collect::<Vec<_>>());
    // the deal type, the responsible user and the company resolve through the dictionaries and datasets
    let r = query(&format!(
        "SELECT count(*) AS n, count(t.name) AS typed, count(u.last_name) AS people
           FROM {deals} d
           LEFT JOIN {statuses} t ON t.entity_id = 'DEAL_TYPE' AND t.status_id = d.type_id
           LEFT JOIN read_parquet('{}/_dict/users/users.parquet') u ON u.id = d.assigned_by_id",
        out.display()
    ));
    assert_eq!(r[0]["people"], r[0]["n"]);
    let typed = r[0]["typed"].as_u64().unwrap();
    let with_type = query(&format!("SELECT count(type_id) AS n FROM {deals}"))[0]["n"].as_u64().unwrap();
    assert!(with_type > 1_000 && typed == with_type, "typed {typed} of {with_type}");
    let companies = glob(&out.join("companies"));
    let contacts = glob(&out.join("contacts"));
    let r = query(&format!(
        "SELECT count(*) AS n FROM {deals} d JOIN {companies} c ON c.id = d.company_id
          UNION ALL SELECT count(*) FROM {glob_leads} l JOIN {contacts} c ON c.id = l.contact_id
          UNION ALL SELECT count(*) FROM {companies} c JOIN {statuses_c} s ON s.entity_id = 'INDUSTRY' AND s.status_id = c.industry",
        glob_leads = glob(&out.join("leads")),
        statuses_c = dict(&out, "statuses", "companies"),
    ));
    for (what, row) in ["deals with their company", "leads with their contact", "companies with their industry"].iter().zip(&r) {
        assert!(row["n"].as_u64().unwrap() > 100, "{what}: {r:?}");
    }
    // the README's join of leads with statuses, users and contacts, as printed there
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("-- leads with their stage, responsible person and contact").expect("the README's join example");
    let sql = &readme[start..];
    let sql = &sql[..sql.find(';').unwrap()];
    let r = query(&sql.replace("OUT/", &format!("{}/", out.display())));
    assert_eq!(r.len(), 10, "{r:?}");
    assert!(r.iter().all(|x| x["stage"].is_string() && x["responsible"].is_string()), "{r:?}");
    assert!(r.iter().filter(|x| x["contact"].is_string()).count() >= 3, "leads should find their contacts: {r:?}");
    // auto: deals through crm.item.list (it serves every deal field); contacts stay on the legacy method, whose
    // PHOTO carries the show URL
    let manifest = |d: &str| std::fs::read_to_string(out.join("_manifests").join(d).join("v000001.json")).unwrap();
    assert!(manifest("deals").contains("via crm.item.list"));
    assert!(!manifest("contacts").contains("via crm.item.list"));
    // field labels per dataset
    let r = query(&format!("SELECT label, status_type FROM {} WHERE column_name = 'stage_id'", dict(&out, "fields", "deals")));
    assert_eq!((r[0]["label"].as_str(), r[0]["status_type"].as_str()), (Some("Deal stage"), Some("DEAL_STAGE")), "{r:?}");

    // the raw landing zone holds one run per entity; `convert --entity deal` rebuilds the deals from theirs
    let rebuilt = tempdir("entities-convert");
    let o = bin().args(["--quiet", "convert"]).arg(&raw).arg("--out").arg(&rebuilt).args(["--entity", "deal"]).output().unwrap();
    assert_success(&o);
    assert!(text(&o).0.contains("exported 2600 deals"), "{}", text(&o).0);
    let (a, b) = (glob(&out.join("deals")), glob(&rebuilt.join("deals")));
    let n = |x: &str, y: &str| except_all(&format!("SELECT * FROM {x}"), &format!("SELECT * FROM {y}"));
    assert_eq!((n(&a, &b), n(&b, &a)), (0, 0), "the converted deals differ from the exported ones");
    assert_eq!(types(&out.join("deals")), types(&rebuilt.join("deals")));
    let o = bin().args(["--quiet", "convert"]).arg(&raw).arg("--out").arg(&rebuilt).output().unwrap();
    assert_success(&o); // without --entity: the leads
    assert!(text(&o).0.contains("exported 1500 leads"), "{}", text(&o).0);

    // retrying the same command with --resume: nothing was interrupted, every snapshot stays as it is
    let o = export(&sim.webhook_url(), &out, &["--entity", "all", "--resume"]);
    assert_success(&o);
    assert_eq!(text(&o).0.matches("nothing to resume").count(), 4, "{}", text(&o).0);
    assert!(!out.join("_manifests").join("deals").join("v000002.json").exists());

    // no secret written anywhere, no staging left behind
    let bytes = all_bytes_under(&out);
    assert!(!contains(&bytes, &sim.config().webhook_code));
    assert!(!contains(&bytes, "auth="), "a file download URL with its auth token was written");
    assert!(!out.join(".b24-staging").exists(), "staging leftovers");
}

#[test]
fn item_api_gives_the_same_datasets_as_the_legacy_methods() {
    let sim = start_sim(SimConfig { leads: 100, deals: 1_300, contacts: 900, companies: 700, seed: 29, offset_secs: 5 * 3600, ..SimConfig::default() });
    let dir = tempdir("entities-item");
    let (legacy, item) = (dir.join("legacy"), dir.join("item"));
    assert_success(&export(&sim.webhook_url(), &legacy, &["--entity", "deal,contact,company", "--api", "lead"]));
    let calls = sim.stats().list_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_success(&export(&sim.webhook_url(), &item, &["--entity", "deal,contact,company", "--api", "item"]));
    assert!(sim.stats().list_calls.load(std::sync::atomic::Ordering::Relaxed) > calls);
    for entity in [Entity::Deal, Entity::Contact, Entity::Company] {
        let (a, b) = (legacy.join(entity.dataset()), item.join(entity.dataset()));
        let (ta, tb) = (types(&a), types(&b));
        let tb: HashMap<String, String> = tb.into_iter().collect();
        // the item API has every column but the company's CONTACT_ID (which crm.company.list does not fill either)
        let missing: Vec<&str> = ta.iter().filter(|(c, _)| !tb.contains_key(c)).map(|(c, _)| c.as_str()).collect();
        let expect_missing: &[&str] = if entity == Entity::Company { &["contact_id"] } else { &[] };
        assert_eq!(missing, expect_missing, "{entity}");
        for (c, t) in &ta {
            if let Some(u) = tb.get(c) {
                assert_eq!(t, u, "{entity}: type of {c}");
            }
        }
        // a field the list method never returns (deal CONTACT_IDS, contact COMPANY_IDS) is NULL through it, and
        // known through the item API
        let unlisted: &[&str] = match entity {
            Entity::Deal => &["contact_ids"],
            Entity::Contact => &["company_ids"],
            _ => &[],
        };
        for c in unlisted {
            let count = |p: &Path| query(&format!("SELECT count(*) AS n, count({c}) AS known FROM {}", glob(p)))[0].clone();
            let (l, i) = (count(&a), count(&b));
            assert_eq!(l["known"].as_u64(), Some(0), "{entity}: {c} through the list method: {l:?}");
            assert_eq!(i["known"], i["n"], "{entity}: {c} through the item API: {i:?}");
        }
        // the item API gives a standard file field (PHOTO, LOGO) as its ID alone: compare the ID there
        let cols: Vec<String> = ta
            .iter()
            .filter(|(c, _)| tb.contains_key(c) && !unlisted.contains(&c.as_str()))
            .map(|(c, _)| if c == "photo" || c == "logo" { format!("{c}.id AS {c}_id") } else { format!("\"{c}\"") })
            .collect();
        let sel = |p: &Path| format!("SELECT {} FROM {}", cols.join(", "), glob(p));
        let n = |x: &Path, y: &Path| except_all(&sel(x), &sel(y));
        assert_eq!((n(&a, &b), n(&b, &a)), (0, 0), "{entity}: the datasets differ");
        let rows = query(&format!("SELECT count(*) AS n FROM {}", glob(&b)))[0]["n"].as_u64().unwrap();
        assert_eq!(rows as usize, sim.ids_of(entity).len());
    }
    // the file object's show URL is there only through the legacy methods, which --api auto therefore takes for a
    // photo, however --select spells it
    let r = query(&format!("SELECT count(photo.show_url) AS legacy FROM {}", glob(&legacy.join("contacts"))));
    assert!(r[0]["legacy"].as_u64().unwrap() > 50, "{r:?}");
    let auto = dir.join("auto");
    assert_success(&export(&sim.webhook_url(), &auto, &["--entity", "contact", "--select", "name,Photo"]));
    let r = query(&format!("SELECT count(photo.show_url) AS n FROM {}", glob(&auto.join("contacts"))));
    assert_eq!(r[0]["n"], query(&format!("SELECT count(photo) AS n FROM {}", glob(&auto.join("contacts"))))[0]["n"]);
}

#[test]
fn deals_merge_incrementally_and_partition_by_stage() {
    let sim = start_sim(SimConfig { leads: 50, deals: 2_000, seed: 31, ..SimConfig::default() });
    let out = tempdir("entities-incr");
    let args = ["--entity", "deal", "--partition-by", "stage_id"];
    assert_success(&export(&sim.webhook_url(), &out, &args));
    let first = walk_parquet(&out.join("deals"));
    assert!(first.iter().any(|p| p.contains("stage_id=C1%3ANEW")), "funnel stages are escaped path segments: {first:?}");

    let ids = sim.ids_of(Entity::Deal);
    sim.advance_clock(3600);
    for &id in ids.iter().step_by(97) {
        sim.update(Entity::Deal, id);
    }
    sim.delete(Entity::Deal, ids[5]);
    let new = sim.insert(Entity::Deal);
    let o = export(&sim.webhook_url(), &out, &["--entity", "deal", "--partition-by", "stage_id", "--incremental", "--detect-deletes"]);
    assert_success(&o);
    let (stdout, _) = text(&o);
    let updated = ids.iter().step_by(97).filter(|id| **id != ids[5]).count();
    assert!(stdout.contains(&format!(": 1 inserted, {updated} updated, 1 deleted,")), "{stdout}");
    check_entity(&sim, &out, Entity::Deal, &[]);
    let ds = read_dataset(&out.join("deals"));
    assert!(ds.rows.iter().any(|r| r["id"] == new));
    // edited deals changed stage, so their rows moved between stage_id folders: the old folders' files were
    // rewritten without them, and no deal is in two folders (check_entity found each ID once)
    let second = walk_parquet(&out.join("deals"));
    assert!(second.iter().any(|p| !first.contains(p)) && first.iter().any(|p| !second.contains(p)), "no file was rewritten");
    // the leads' partitioning does not fit deals: refused, naming the field
    let calls = sim.stats().http_requests.load(std::sync::atomic::Ordering::Relaxed);
    let o = export(&sim.webhook_url(), &tempdir("entities-bad"), &["--entity", "deal", "--partition-by", "status_id"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("deals have no field STATUS_ID"), "{}", text(&o).1);
    let o = export(&sim.webhook_url(), &tempdir("entities-bad"), &["--entity", "all", "--partition-by", "stage_id"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("leads, contacts, companies have no field STAGE_ID"), "{}", text(&o).1);
    assert_eq!(sim.stats().http_requests.load(std::sync::atomic::Ordering::Relaxed), calls, "refused before any request");
}

fn walk_parquet(dir: &Path) -> Vec<String> {
    files_under(dir).iter().filter(|p| p.extension().is_some_and(|x| x == "parquet")).map(|p| p.to_string_lossy().into_owned()).collect()
}

#[test]
fn rejects_and_strict_errors_name_the_entity_and_its_record() {
    let sim = start_sim(SimConfig { leads: 10, deals: 1_200, contacts: 10, companies: 10, seed: 5, bad_values: true, ..SimConfig::default() });
    let out = tempdir("deal-rejects");
    let o = export(&sim.webhook_url(), &out, &["--entity", "deal", "--api", "lead"]); // the simulator garbles legacy records only
    assert_success(&o);
    let ids = sim.ids_of(Entity::Deal);
    let want: Vec<String> =
        (0..ids.len()).filter(|&pos| b24_export::sim::bad_deal_value_at(pos).is_some()).map(|pos| ids[pos].to_string()).collect();
    assert!(want.len() >= 2, "the portal should serve bad deal values");
    let lines = std::fs::read_to_string(out.join("_rejects/deals.jsonl")).unwrap();
    let mut got = Vec::new();
    for l in lines.lines() {
        let v: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
        // the record's key says what the record is, and comes first
        assert_eq!(v.keys().next().map(String::as_str), Some("deal_id"), "{l}");
        assert!(!v.contains_key("lead_id"), "{l}");
        assert_eq!((v["field"].as_str(), v["raw_value"].as_str()), (Some("OPPORTUNITY"), Some("\"12.345\"")), "{l}");
        got.push(v["deal_id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, want);
    // the cell is NULL, the row is there
    let rows = query(&format!("SELECT id FROM {} WHERE opportunity IS NULL ORDER BY id", glob(&out.join("deals"))));
    let nulls: Vec<String> = rows.iter().map(|r| r["id"].to_string()).collect();
    for id in &want {
        assert!(nulls.contains(id), "deal {id}: OPPORTUNITY should be NULL");
    }

    // --strict stops at the first, naming the deal (not a lead)
    let strict = tempdir("deal-strict");
    let o = export(&sim.webhook_url(), &strict, &["--entity", "deal", "--api", "lead", "--strict"]);
    assert_eq!(o.status.code(), Some(6), "{:?}", text(&o));
    let (_, stderr) = text(&o);
    assert!(want.iter().any(|id| stderr.contains(&format!("field OPPORTUNITY of deal {id}:"))), "{stderr}");
    assert!(!stderr.contains("of lead"), "{stderr}");
}

#[test]
fn one_failing_entity_does_not_stop_the_others_and_is_reported_once() {
    let sim = start_sim(SimConfig { leads: 300, deals: 200, contacts: 10, companies: 10, seed: 8, ..SimConfig::default() });
    let out = tempdir("several");
    assert_success(&export(&sim.webhook_url(), &out, &["--entity", "deal"]));
    // the deals dataset exists and --overwrite is not given: deals fail, leads go on
    let o = export(&sim.webhook_url(), &out, &["--entity", "deal,lead"]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "the first failure's exit code (usage): {stderr}");
    assert!(stdout.contains("exported 300 leads into"), "{stdout}");
    assert_eq!(stderr.matches("already holds a dataset").count(), 1, "each failure is reported once: {stderr}");
    assert!(stderr.contains("error: 1 of 2 entities failed: deals (see above)"), "{stderr}");
    assert_eq!(query(&format!("SELECT count(*) AS n FROM {}", glob(&out.join("leads"))))[0]["n"].as_u64(), Some(300));
}
