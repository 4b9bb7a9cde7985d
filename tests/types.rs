//! Exact types for every lead field: DuckDB `DESCRIBE` matches the promised type table for every column,
//! every value equals the simulator's, for two portal offsets and both UF boolean encodings; `schema` agrees;
//! labels and dictionaries are one join away; bad values are NULL + a reject, or a stop with `--strict`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use b24_export::sim::data::{self, FIELDS};
use b24_export::sim::{bad_value_at, SimConfig};
use common::*;
use serde_json::{json, Value};

fn check_types_and_values(offset_secs: i32, bool_uf_json: bool) {
    let sim = start_sim(SimConfig { leads: 4_000, seed: 99, offset_secs, bool_uf_json, ..SimConfig::default() });
    let out = tempdir("types");
    assert_success(&export(&sim.webhook_url(), &out, &[]));
    let ds = read_dataset(&out.join("leads"));

    // every listed field is a column, with the promised DuckDB type
    let mut want: BTreeMap<String, String> =
        FIELDS.iter().map(|d| (d.name.to_ascii_lowercase(), promised_duckdb_type(d))).collect();
    want.insert("date_create_month".into(), "VARCHAR".into());
    let got: BTreeMap<String, String> =
        ds.duckdb_types.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    assert_eq!(got, want, "DESCRIBE differs from the type table");

    // the `schema` command tells the same story
    let o = bin().args(["schema", "--format", "json", "--webhook", &sim.webhook_url()]).output().unwrap();
    assert_success(&o);
    let schema: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(schema.len(), FIELDS.len());
    for col in &schema {
        let name = col["column"].as_str().unwrap();
        assert_eq!(col["duckdb_type"].as_str().unwrap(), want[name], "schema output for {name}");
        let def = FIELDS.iter().find(|d| d.name.eq_ignore_ascii_case(name)).unwrap();
        assert_eq!(col["bitrix_type"], json!(def.ftype.wire_name()));
        assert_eq!(col["label"], json!(def.title), "label of {name}");
    }

    check_full_dataset(&sim, &ds, &["date_create_month"]);

    // labels and dictionaries, beside (not inside) the dataset
    let dict = |t: &str| out.join("_dict").join(t).join("leads.parquet").display().to_string();
    let fields = query(&format!("SELECT * FROM '{}' ORDER BY field", dict("fields")));
    assert_eq!(fields.len(), FIELDS.len());
    let opp = fields.iter().find(|r| r["field"] == json!("OPPORTUNITY")).unwrap();
    assert_eq!((opp["duckdb_type"].clone(), opp["label"].clone()), (json!("DECIMAL(18,2)"), json!("Total")));
    let items = query(&format!("SELECT item_id, value FROM '{}' WHERE field = 'UF_CRM_1710000000004' ORDER BY sort", dict("enum_items")));
    let want_items: Vec<Value> = data::SEGMENT_ITEMS.iter().map(|(id, v)| json!({"item_id": id, "value": v})).collect();
    assert_eq!(items.into_iter().map(Value::Object).collect::<Vec<_>>(), want_items);
    let statuses = query(&format!("SELECT entity_id, status_id, name, sort, semantics FROM '{}' ORDER BY entity_id, sort", dict("statuses")));
    // the dictionaries the lead's fields refer to (the portal also has deal stages, contact types, …)
    let mut want_statuses: Vec<Value> = data::status_dictionary()
        .into_iter()
        .filter(|(e, ..)| ["STATUS", "SOURCE", "HONORIFIC"].contains(&e.as_str()))
        .map(|(e, id, name, sort, sem)| json!({"entity_id": e, "status_id": id, "name": name, "sort": sort, "semantics": sem}))
        .collect();
    want_statuses.sort_by_key(|v| (v["entity_id"].as_str().unwrap().to_string(), v["sort"].as_i64().unwrap()));
    assert_eq!(statuses.into_iter().map(Value::Object).collect::<Vec<_>>(), want_statuses);
    // one join away: every lead's stage has a name
    let joined = query(&format!(
        "SELECT count(*) AS n, count(s.name) AS named FROM read_parquet('{}/leads/**/*.parquet', hive_partitioning = true) l \
         LEFT JOIN '{}' s ON s.entity_id = 'STATUS' AND s.status_id = l.status_id",
        out.display(),
        dict("statuses")
    ));
    assert_eq!(joined[0]["n"], json!(4_000));
    assert_eq!(joined[0]["named"], json!(4_000));

    // users (user.get, active or not): every user column of every lead joins to a person
    let users_file = out.join("_dict/users/users.parquet").display().to_string();
    let users = query(&format!("SELECT id, name, last_name, email, active FROM '{users_file}' ORDER BY id"));
    let want_users: Vec<Value> = data::users()
        .iter()
        .map(|u| {
            let email = u["EMAIL"].as_str().unwrap();
            json!({"id": u["ID"].as_str().unwrap().parse::<i64>().unwrap(), "name": u["NAME"], "last_name": u["LAST_NAME"],
                   "email": if email.is_empty() { Value::Null } else { json!(email) }, "active": u["ACTIVE"]})
        })
        .collect();
    assert_eq!(users.into_iter().map(Value::Object).collect::<Vec<_>>(), want_users);
    let people = query(&format!(
        "SELECT count(*) AS n, count(a.id) AS assigned, count(c.id) AS creators FROM read_parquet('{}/leads/**/*.parquet') l \
         LEFT JOIN '{users_file}' a ON a.id = l.assigned_by_id LEFT JOIN '{users_file}' c ON c.id = l.created_by_id",
        out.display()
    ));
    assert_eq!((people[0]["assigned"].clone(), people[0]["creators"].clone()), (json!(4_000), json!(4_000)));
}

#[test]
fn every_column_has_its_type_and_value_on_a_portal_east_of_utc_with_numeric_uf_booleans() {
    check_types_and_values(5 * 3600 + 45 * 60, false);
}

#[test]
fn every_column_has_its_type_and_value_on_a_portal_west_of_utc_with_json_uf_booleans() {
    check_types_and_values(-(3 * 3600 + 30 * 60), true);
}

#[test]
fn bad_values_become_null_and_are_listed_in_the_rejects_file() {
    let sim = start_sim(SimConfig { leads: 3_000, seed: 17, bad_values: true, ..SimConfig::default() });
    let out = tempdir("rejects");
    let o = export(&sim.webhook_url(), &out, &[]);
    assert_success(&o);
    let (stdout, _) = text(&o);

    let mut want: Vec<(String, String, String)> = Vec::new();
    for (pos, id) in sim.ids().iter().enumerate() {
        if let Some((field, raw)) = bad_value_at(pos) {
            want.push((id.to_string(), field.to_string(), raw.to_string()));
        }
    }
    assert!(want.len() >= 14, "the portal should serve a few bad values, served {}", want.len());
    let file = out.join("_rejects/leads.jsonl");
    let mut got: Vec<(String, String, String)> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(!v["reason"].as_str().unwrap().is_empty());
            (v["lead_id"].as_str().unwrap().into(), v["field"].as_str().unwrap().into(), v["raw_value"].as_str().unwrap().into())
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(stdout.contains(&format!("{} values did not fit their column", want.len())), "{stdout}");
    assert!(stdout.contains("OPPORTUNITY: 3"), "{stdout}");

    // the rows are all there; the garbled cells are NULL, everything else exact
    let ds = read_dataset(&out.join("leads"));
    check_full_dataset(&sim, &ds, &["date_create_month"]);

    // a clean re-run removes the stale rejects file
    let clean = start_sim(SimConfig { leads: 100, seed: 17, ..SimConfig::default() });
    assert_success(&export(&clean.webhook_url(), &out, &["--overwrite"]));
    assert!(!file.exists(), "a rejects file of the previous dataset was left behind");
}

#[test]
fn strict_mode_stops_at_the_first_bad_value_and_names_it() {
    let sim = start_sim(SimConfig { leads: 3_000, seed: 17, bad_values: true, ..SimConfig::default() });
    let out = tempdir("strict");
    let o = export(&sim.webhook_url(), &out, &["--strict"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(6), "{stderr}");
    let named = (0..sim.ids().len()).filter_map(|pos| bad_value_at(pos).map(|(f, raw)| (sim.ids()[pos], f, raw))).any(|(id, f, raw)| {
        stderr.contains(&format!("lead {id}")) && stderr.contains(f) && stderr.contains(&raw.to_string())
    });
    assert!(named, "the message must name the lead, the field and the value: {stderr}");
    assert!(sim.stats().http_requests.load(Ordering::Relaxed) > 0);
    assert!(!out.join("leads").exists() || std::fs::read_dir(out.join("leads")).unwrap().next().is_none(), "a stopped run published files");
}
