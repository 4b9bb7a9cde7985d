//! End-to-end: the real binary exports from the simulated portal over HTTP; DuckDB and pyarrow read the result,
//! which is compared with the simulator's own typed data.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use b24_export::sim::data::FIELDS;
use b24_export::sim::SimConfig;
use common::*;
use serde_json::Value;

#[test]
fn exports_20000_leads_with_exact_types_and_values() {
    let sim = start_sim(SimConfig { leads: 20_000, seed: 7, offset_secs: 3 * 3600, ..SimConfig::default() });
    let out = tempdir("full");
    let o = export(&sim.webhook_url(), &out, &[]);
    assert_success(&o);
    let (stdout, stderr) = text(&o);
    assert!(stdout.contains("exported 20000 leads"), "{stdout}");

    let ds = read_dataset(&out.join("leads"));
    let t = |c: &str| ds.duckdb_types.get(c).and_then(Value::as_str).unwrap_or("(missing)").to_string();
    assert_eq!(t("id"), "BIGINT");
    for c in ["date_create", "date_modify", "date_closed", "moved_time", "last_activity_time", "uf_crm_1710000000003"] {
        assert_eq!(t(c), "TIMESTAMP WITH TIME ZONE", "{c}");
    }
    assert_eq!(t("opportunity"), "DECIMAL(18,2)");
    for c in ["opened", "has_phone", "has_email", "has_imol", "is_manual_opportunity", "is_return_customer"] {
        assert_eq!(t(c), "BOOLEAN", "{c}");
    }
    for c in ["phone", "email", "web", "im", "link"] {
        assert_eq!(t(c), r#"STRUCT(id BIGINT, value_type VARCHAR, "value" VARCHAR, type_id VARCHAR)[]"#, "{c}");
    }
    assert_eq!(t("birthdate"), "DATE");
    assert_eq!(t("title"), "VARCHAR");
    assert_eq!(t("date_create_month"), "VARCHAR");
    // pyarrow sees the Arrow types we meant
    let a = |c: &str| ds.arrow_types.get(c).and_then(Value::as_str).unwrap_or("(missing)").to_string();
    assert_eq!(a("date_create"), "timestamp[us, tz=UTC]");
    assert_eq!(a("opportunity"), "decimal128(18, 2)");
    assert_eq!(a("birthdate"), "date32[day]");

    // partition column lives only in the path and matches DATE_CREATE in UTC
    let dc_pos = FIELDS.iter().position(|f| f.name == "DATE_CREATE").unwrap();
    for (pos, row) in ds.rows.iter().enumerate() {
        let b24_export::sim::data::Truth::DateTime(secs) = sim.truth_at(pos)[dc_pos] else { panic!("DATE_CREATE") };
        let month = chrono::DateTime::from_timestamp(secs, 0).unwrap().format("%Y-%m").to_string();
        assert_eq!(row["date_create_month"], Value::String(month));
    }
    check_full_dataset(&sim, &ds, &["date_create_month"]);
    assert!(ds.files > 50, "expected one folder per month, got {} files", ds.files);

    // nothing staged or left behind under the dataset that a glob could pick up, and no secret anywhere
    let bytes = all_bytes_under(&out);
    assert!(!contains(&bytes, &sim.config().webhook_code), "the webhook code was written to an output file");
    assert!(!contains(&bytes, "auth="), "a file download URL with its auth token was written");
    assert!(!stderr.contains(&sim.config().webhook_code) && !stdout.contains(&sim.config().webhook_code));
    let dataset_files = walk(&out.join("leads"));
    assert_eq!(dataset_files.len(), ds.files);
    assert!(dataset_files.iter().all(|p| p.ends_with(".parquet")), "leftover files: {dataset_files:?}");
    assert!(walk(&out).iter().all(|p| !p.contains(".b24-staging")), "staging leftovers");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p.to_string_lossy().into_owned()) }
        }
    }
    out
}

#[test]
fn a_tight_portal_bucket_causes_503s_and_the_export_is_still_exact() {
    // the portal allows a burst of 2 and drains 2/s; the client is told it may burst 50 at 20/s
    let sim = start_sim(SimConfig { leads: 20_000, seed: 11, burst: 2.0, drain_per_sec: 2.0, ..SimConfig::default() });
    let out = tempdir("tight");
    let o = export(&sim.webhook_url(), &out, &["--rate", "20", "--burst", "50", "--concurrency", "4"]);
    assert_success(&o);
    let rejected = sim.stats().rejected_503.load(Ordering::Relaxed);
    assert!(rejected > 0, "the portal never answered 503: the test did not exercise the limit");
    let (stdout, _) = text(&o);
    let retries: u64 = stdout.split(" retries").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(retries >= 1, "summary reports no retries: {stdout}");
    let ds = read_dataset(&out.join("leads"));
    check_full_dataset(&sim, &ds, &["date_create_month"]);
}

#[test]
fn a_wrong_webhook_code_fails_fast_with_the_portals_message_and_no_secret() {
    let sim = start_sim(SimConfig { leads: 100, ..SimConfig::default() });
    let wrong_code = "wrongcode4242xyz";
    let url = sim.webhook_url().replace(&sim.config().webhook_code, wrong_code);
    let out = tempdir("auth");
    let o = export(&url, &out, &[]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(3), "auth failures exit with 3\n{stderr}");
    assert!(stderr.contains("Wrong authorization data") && stderr.contains("NO_AUTH_FOUND"), "{stderr}");
    assert!(!stderr.contains(wrong_code) && !stdout.contains(wrong_code), "the webhook code leaked: {stderr}");
    assert_eq!(sim.stats().rejected_401.load(Ordering::Relaxed), 1, "an auth error must not be retried");
    assert!(walk(&out).iter().all(|p| !p.ends_with(".parquet")));
}

#[test]
fn plain_http_to_a_non_loopback_host_is_refused_before_any_request() {
    // a local proxy that would see the request if the client tried to send it
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let out = tempdir("http");
    let code = "plaintextcode9876";
    let o = bin()
        .args(["export", "--webhook", &format!("http://portal.example.com/rest/1/{code}/"), "--out"])
        .arg(&out)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "usage exit code expected\n{stderr}");
    assert!(stderr.contains("refusing plain http://"), "{stderr}");
    assert!(!stderr.contains(code) && !stdout.contains(code));
    assert!(proxy.accept().is_err(), "a connection was attempted");
    // the same through the environment variable
    let o = bin().args(["export", "--out"]).arg(&out).env("B24_WEBHOOK_URL", format!("http://10.1.2.3/rest/1/{code}/")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!text(&o).1.contains(code));
}

#[test]
fn filter_select_and_status_partitioning() {
    let sim = start_sim(SimConfig { leads: 6_000, seed: 3, offset_secs: -5 * 3600, bool_uf_json: true, ..SimConfig::default() });
    let out = tempdir("filter");
    // field names in any case: the tool sends the portal's spelling (the portal matches names exactly)
    let filter = r#"{"@status_id": ["CONVERTED", "JUNK"], ">OPPORTUNITY": 1000, ">=Date_Create": "2021-01-01"}"#;
    let o = export(
        &sim.webhook_url(),
        &out,
        &["--filter", filter, "--select", "TITLE,OPPORTUNITY,STATUS_ID,BIRTHDATE,PHONE,UF_CRM_1708952993785", "--partition-by", "status_id"],
    );
    assert_success(&o);
    let ds = read_dataset(&out.join("leads"));
    let mut cols: Vec<&str> = ds.duckdb_types.keys().map(String::as_str).collect();
    cols.sort();
    assert_eq!(cols, ["birthdate", "id", "opportunity", "phone", "status_id", "title", "uf_crm_1708952993785"]);
    // the partition column is only in the path
    let file = walk(&out.join("leads")).into_iter().find(|p| p.ends_with(".parquet")).unwrap();
    assert!(file.contains("/status_id=CONVERTED/") || file.contains("/status_id=JUNK/"), "{file}");

    let idx = |n: &str| FIELDS.iter().position(|f| f.name == n).unwrap();
    let cutoff = chrono::DateTime::parse_from_rfc3339("2021-01-01T00:00:00-05:00").unwrap().timestamp();
    let mut want: HashMap<i64, Vec<b24_export::sim::data::Truth>> = HashMap::new();
    for (pos, &id) in sim.ids().iter().enumerate() {
        use b24_export::sim::data::Truth::*;
        let t = sim.truth_at(pos);
        let status_ok = matches!(&t[idx("STATUS_ID")], Str(s) if s == "CONVERTED" || s == "JUNK");
        let opp_ok = matches!(t[idx("OPPORTUNITY")], Cents(c) if c > 100_000);
        let date_ok = matches!(t[idx("DATE_CREATE")], DateTime(s) if s >= cutoff);
        if status_ok && opp_ok && date_ok {
            want.insert(id, t);
        }
    }
    assert!(want.len() > 100, "the filter should match a real subset, matched {}", want.len());
    assert_eq!(ds.rows.len(), want.len(), "row count differs from the filtered truth");
    for row in &ds.rows {
        let id = row["id"].as_i64().unwrap();
        let t = want.get(&id).unwrap_or_else(|| panic!("lead {id} does not match the filter"));
        for name in ["TITLE", "OPPORTUNITY", "STATUS_ID", "BIRTHDATE", "PHONE", "UF_CRM_1708952993785"] {
            let def = &FIELDS[idx(name)];
            assert_eq!(row[&name.to_ascii_lowercase()], expected(def, &t[idx(name)]), "lead {id} field {name}");
        }
    }
}

#[test]
fn bad_input_is_refused_with_a_usage_error() {
    let sim = start_sim(SimConfig { leads: 120, ..SimConfig::default() });
    let out = tempdir("usage");
    let cases: &[(&[&str], &str)] = &[
        (&["--partition-by", "title"], "unknown --partition-by"),
        (&["--filter", "[1,2]"], "--filter must be a JSON object"),
        (&["--filter", "{oops"], "--filter is not valid JSON"),
        (&["--filter", r#"{">OPORTUNITY": 5}"#], "no field \"OPORTUNITY\""),
        (&["--select", "TITLE,NO_SUCH_FIELD"], "NO_SUCH_FIELD"),
    ];
    for (args, msg) in cases {
        let o = export(&sim.webhook_url(), &out, args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
        assert!(!stderr.contains(&sim.config().webhook_code));
    }
    // an existing dataset is not silently doubled
    assert_success(&export(&sim.webhook_url(), &out, &["--partition-by", "none"]));
    let o = export(&sim.webhook_url(), &out, &["--partition-by", "none"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--overwrite"));
    let o = export(&sim.webhook_url(), &out, &["--partition-by", "none", "--overwrite"]);
    assert_success(&o);
    let ds = read_dataset(&out.join("leads"));
    assert_eq!(ds.rows.len(), 120, "overwrite must replace, not add");
    assert_eq!(ds.files, 1);
}

#[test]
fn a_failed_run_publishes_nothing_and_keeps_the_previous_dataset() {
    let good = start_sim(SimConfig { leads: 3_000, seed: 5, ..SimConfig::default() });
    let out = tempdir("failed");
    assert_success(&export(&good.webhook_url(), &out, &[]));
    let before = read_dataset(&out.join("leads"));
    assert_eq!(before.rows.len(), 3_000);

    // a bigger portal that goes down after the probe and one batch
    let failing = start_sim(SimConfig { leads: 50_000, seed: 6, fail_after: Some(4), ..SimConfig::default() });
    let o = export(&failing.webhook_url(), &out, &["--overwrite", "--max-retries", "1", "--concurrency", "1"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(4), "portal failures exit with 4\n{stderr}");
    assert!(stderr.contains("INTERNAL_SERVER_ERROR") && stderr.contains("attempt"), "{stderr}");
    let after = read_dataset(&out.join("leads"));
    assert_eq!(after.rows, before.rows, "the previous dataset must stay exactly as it was");
    // what it had fetched is kept for --resume, outside the dataset
    assert!(stderr.contains("--resume"), "{stderr}");
    let staged = walk(&out.join(".b24-staging"));
    assert!(staged.iter().any(|p| p.ends_with("/checkpoint.json")), "{staged:?}");
    // the next run that commits (without --resume) clears those leftovers
    assert_success(&export(&good.webhook_url(), &out, &["--overwrite"]));
    assert_eq!(read_dataset(&out.join("leads")).rows, before.rows);
    assert!(walk(&out).iter().all(|p| !p.contains(".b24-staging")), "staging leftovers: {:?}", walk(&out));
}

#[test]
fn argument_errors_do_not_echo_the_webhook_code() {
    let code = "echoedcode31337";
    for args in [
        vec!["export".to_string(), format!("--web-hook=https://x.bitrix24.com/rest/1/{code}/"), "--out".into(), "o".into()],
        vec!["export".to_string(), format!("https://x.bitrix24.com/rest/1/{code}/")],
    ] {
        let o = bin().args(&args).output().unwrap();
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains(code) && !stdout.contains(code), "{stderr}");
    }
    // --help does not show the value of B24_WEBHOOK_URL
    let o = bin().args(["export", "--help"]).env("B24_WEBHOOK_URL", format!("https://x.bitrix24.com/rest/1/{code}/")).output().unwrap();
    assert!(o.status.success());
    assert!(!text(&o).0.contains(code));
}

#[test]
fn each_snapshot_commits_a_manifest_and_sql_reads_exactly_the_latest() {
    let first = start_sim(SimConfig { leads: 3_000, seed: 40, ..SimConfig::default() });
    let out = tempdir("manifest");
    assert_success(&export(&first.webhook_url(), &out, &[]));
    let second = start_sim(SimConfig { leads: 2_000, seed: 41, ..SimConfig::default() });
    assert_success(&export(&second.webhook_url(), &out, &["--overwrite"]));

    let dir = out.join("_manifests/leads");
    let read = |v: u64| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join(format!("v{v:06}.json"))).unwrap()).unwrap() };
    let (m1, m2) = (read(1), read(2));
    assert_eq!(m1["total_rows"], 3_000);
    assert_eq!(m2["total_rows"], 2_000);
    assert_eq!(m2["version"], 2);
    assert_ne!(m1["run_id"], m2["run_id"]);
    // the latest manifest lists exactly the files on disk; the previous snapshot's files are gone
    let mut listed: Vec<String> = m2["files"].as_array().unwrap().iter().map(|f| out.join("leads").join(f["path"].as_str().unwrap()).display().to_string()).collect();
    listed.sort();
    let mut on_disk = walk(&out.join("leads"));
    on_disk.sort();
    assert_eq!(listed, on_disk);
    let rows: u64 = m2["files"].as_array().unwrap().iter().map(|f| f["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 2_000);
    // the watermark is the portal's highest DATE_MODIFY
    let dm = FIELDS.iter().position(|f| f.name == "DATE_MODIFY").unwrap();
    let max = (0..2_000)
        .map(|p| match second.truth_at(p)[dm] {
            b24_export::sim::data::Truth::DateTime(s) => s,
            _ => i64::MIN,
        })
        .max()
        .unwrap();
    let want = chrono::DateTime::from_timestamp(max, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(m2["max_date_modify"], Value::String(want));
    assert!(!m2.to_string().contains(&second.config().webhook_code));

    // `sql` prints a query over exactly those files, and DuckDB runs it
    let o = bin().args(["sql"]).arg(&out).output().unwrap();
    assert_success(&o);
    let sql = text(&o).0;
    let count = query(&format!("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM ({})", sql.trim().trim_end_matches(';')));
    assert_eq!((count[0]["n"].as_u64(), count[0]["ids"].as_u64()), (Some(2_000), Some(2_000)));
    // no snapshot yet: a clear usage error
    let o = bin().args(["sql"]).arg(tempdir("nosnap")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_webhook_without_the_user_scope_exports_without_the_users_table() {
    let sim = start_sim(SimConfig { leads: 300, seed: 8, no_user_scope: true, ..SimConfig::default() });
    let out = tempdir("no-user-scope");
    let o = bin()
        .args(["export", "--webhook", &sim.webhook_url(), "--out"])
        .arg(&out)
        .env_remove("B24_WEBHOOK_URL")
        .output()
        .unwrap();
    assert_success(&o);
    assert!(text(&o).1.contains("insufficient_scope") && text(&o).1.contains("_dict/users is not written"), "{}", text(&o).1);
    assert!(!out.join("_dict/users").exists());
    assert!(out.join("_dict/statuses/leads.parquet").exists());
    assert_eq!(read_dataset(&out.join("leads")).rows.len(), 300);
}

#[test]
fn one_export_per_output_and_a_killed_run_does_not_block_the_next() {
    let sim = start_sim(SimConfig { leads: 20_000, seed: 9, latency: std::time::Duration::from_millis(300), ..SimConfig::default() });
    let out = tempdir("lock");
    let mut first = bin()
        .args(["--quiet", "export", "--webhook", &sim.webhook_url(), "--out"])
        .arg(&out)
        .env_remove("B24_WEBHOOK_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".b24-staging").join("lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the first run never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let o = export(&sim.webhook_url(), &out, &["--overwrite"]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("another export (pid {})", first.id())), "{stderr}");
    first.kill().unwrap(); // SIGKILL: no cleanup, the lock file stays
    first.wait().unwrap();
    assert!(lock.exists());
    // the file even names a live process (this test): only the kernel's lock counts, and nobody holds it
    std::fs::write(&lock, std::process::id().to_string()).unwrap();
    let o = export(&sim.webhook_url(), &out, &["--overwrite", "--plan", "enterprise"]);
    assert_success(&o);
    assert_eq!(read_dataset(&out.join("leads")).rows.len(), 20_000);
    assert!(!out.join(".b24-staging").exists(), "the lock was not removed");
}
