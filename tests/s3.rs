//! Exports to a real S3-compatible server (moto, started here on loopback), read back with boto3 + DuckDB:
//! exact data, multipart uploads, manifests as the commit point, snapshot replacement, a store that goes down
//! mid-run, and a SIGKILL during an upload followed by `--resume`.

mod common;

use std::time::{Duration, Instant};

use b24_export::sim::SimConfig;
use common::s3::{s3_cmd, Moto, Proxy, MIN_PART, SECRET_KEY};
use common::*;
use serde_json::Value;

fn export_s3(webhook: &str, endpoint: &str, url: &str, extra: &[&str]) -> std::process::Output {
    let part = MIN_PART.to_string();
    let mut args = vec!["--quiet", "export", "--webhook", webhook, "--out", url, "--s3-endpoint", endpoint, "--s3-part-size", &part];
    args.extend_from_slice(extra);
    s3_cmd(&args).output().unwrap()
}

fn manifest(moto: &Moto, bucket: &str, key: &str) -> Value {
    let dir = tempdir("manifest");
    moto.mirror(bucket, key, &dir);
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

#[test]
fn an_export_to_s3_reads_back_exactly_with_multipart_files_and_a_manifest() {
    let moto = Moto::start();
    moto.mkbucket("lake");
    let sim = start_sim(SimConfig { leads: 20_000, seed: 21, ..SimConfig::default() });
    let o = s3_cmd(&[
        "export", "--webhook", &sim.webhook_url(), "--out", "s3://lake/crm/b24", "--s3-endpoint", &moto.endpoint(),
        "--s3-part-size", &MIN_PART.to_string(), "--partition-by", "none",
    ])
    .env("B24_LOG", "debug")
    .output()
    .unwrap();
    assert_success(&o);
    let (stdout, stderr) = text(&o);
    assert!(stdout.contains("s3://lake/crm/b24/leads"), "{stdout}");
    assert!(!stdout.contains(SECRET_KEY) && !stderr.contains(SECRET_KEY), "the secret key was printed");
    assert!(!stdout.contains(&sim.config().webhook_code) && !stderr.contains(&sim.config().webhook_code));

    // read back what the store holds, independently of the exporter
    let local = tempdir("s3-read");
    let objects = moto.mirror("lake", "crm/b24/leads/", &local);
    let ds = read_dataset(&local);
    check_full_dataset(&sim, &ds, &[]);
    // one unpartitioned file of several parts: a multipart upload (its ETag ends in -<parts>)
    assert_eq!(objects.len(), 1, "{objects:?}");
    let size = objects[0]["size"].as_u64().unwrap() as usize;
    assert!(size > 2 * MIN_PART, "the file ({size} bytes) should span several parts");
    let parts = size.div_ceil(MIN_PART);
    assert!(
        stderr.contains(&format!("({size} bytes) in {parts} parts")),
        "expected a multipart upload of {parts} parts of {MIN_PART} bytes: {}",
        stderr.lines().filter(|l| l.contains("uploaded")).collect::<Vec<_>>().join("\n")
    );

    // the manifest is the commit point: listed, parsed, and naming exactly the files the store holds
    let manifests = moto.keys("lake", "crm/b24/_manifests/leads/");
    assert_eq!(manifests, vec!["crm/b24/_manifests/leads/v000001.json"]);
    let m = manifest(&moto, "lake", &manifests[0]);
    assert_eq!(m["total_rows"], 20_000);
    assert_eq!(m["files"][0]["bytes"].as_u64().unwrap() as usize, size);
    assert_eq!(format!("crm/b24/leads/{}", m["files"][0]["path"].as_str().unwrap()), objects[0]["key"].as_str().unwrap());
    assert!(m["max_date_modify"].as_str().is_some() && m["schema_fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
    // dictionaries beside it, nothing staged left behind
    assert_eq!(moto.keys("lake", "crm/b24/_dict/").len(), 4, "fields, enum_items, statuses, users");
    assert!(moto.keys("lake", "crm/b24/.b24-staging").is_empty(), "staged objects left behind");
    assert!(moto.uploads("lake").is_empty(), "multipart uploads left open");

    // no secret in anything written to the store
    let everything = tempdir("s3-all");
    moto.mirror("lake", "crm/b24/", &everything);
    let bytes = all_bytes_under(&everything);
    assert!(!contains(&bytes, SECRET_KEY) && !contains(&bytes, &sim.config().webhook_code));

    // `b24-export sql` reads the manifest from the store and names exactly its files
    let o = s3_cmd(&["sql", "s3://lake/crm/b24", "--s3-endpoint", &moto.endpoint()]).output().unwrap();
    assert_success(&o);
    let sql = text(&o).0;
    assert!(sql.contains(&format!("'s3://lake/{}'", objects[0]["key"].as_str().unwrap())), "{sql}");
}

#[test]
fn a_second_snapshot_replaces_the_first_and_only_its_files_remain() {
    let moto = Moto::start();
    moto.mkbucket("lake");
    let first = start_sim(SimConfig { leads: 3_000, seed: 22, ..SimConfig::default() });
    let second = start_sim(SimConfig { leads: 4_500, seed: 23, ..SimConfig::default() });
    assert_success(&export_s3(&first.webhook_url(), &moto.endpoint(), "s3://lake/snap", &[]));
    // another run holds the store's lock (live heartbeat, another host): refused, and nothing is touched
    let lock = format!(r#"{{"pid": 1, "host": "elsewhere", "heartbeat": {}}}"#, chrono::Utc::now().timestamp());
    moto.tool(&["put", "lake", "snap/.b24-staging/lock", &lock]);
    let o = export_s3(&second.webhook_url(), &moto.endpoint(), "s3://lake/snap", &["--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("another export") && text(&o).1.contains("elsewhere"), "{}", text(&o).1);
    moto.tool(&["delete", "lake", "snap/.b24-staging/lock"]);
    // without --overwrite, an existing dataset is refused before any request
    let o = export_s3(&second.webhook_url(), &moto.endpoint(), "s3://lake/snap", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("--overwrite"));
    assert_success(&export_s3(&second.webhook_url(), &moto.endpoint(), "s3://lake/snap", &["--overwrite"]));

    let m = manifest(&moto, "lake", "snap/_manifests/leads/v000002.json");
    let mut listed: Vec<String> = m["files"].as_array().unwrap().iter().map(|f| format!("snap/leads/{}", f["path"].as_str().unwrap())).collect();
    listed.sort();
    assert_eq!(moto.keys("lake", "snap/leads/"), listed, "only the second snapshot's files may remain");
    assert!(listed.iter().all(|k| k.contains(m["run_id"].as_str().unwrap())), "file names carry the run id");
    let local = tempdir("s3-snap");
    moto.mirror("lake", "snap/leads/", &local);
    check_full_dataset(&second, &read_dataset(&local), &[]);
    assert_eq!(moto.keys("lake", "snap/_manifests/").len(), 2);
}

#[test]
fn a_store_that_goes_down_mid_run_fails_clearly_and_the_committed_snapshot_stays() {
    let moto = Moto::start();
    moto.mkbucket("lake");
    let proxy = Proxy::start(moto.port);
    let first = start_sim(SimConfig { leads: 2_000, seed: 24, ..SimConfig::default() });
    assert_success(&export_s3(&first.webhook_url(), &proxy.endpoint(), "s3://lake/down", &[]));
    let committed = moto.keys("lake", "down/leads/");

    // a slower portal, checkpoints every 0.2 s: the store disappears while files are being staged
    let second = start_sim(SimConfig { leads: 40_000, seed: 25, latency: Duration::from_millis(40), ..SimConfig::default() });
    let part = MIN_PART.to_string();
    let child = s3_cmd(&[
        "--quiet", "export", "--webhook", &second.webhook_url(), "--out", "s3://lake/down", "--s3-endpoint", &proxy.endpoint(),
        "--s3-part-size", &part, "--overwrite", "--checkpoint-every", "0.2",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !moto.keys("lake", "down/.b24-staging/").iter().any(|k| k.ends_with("checkpoint.json")) {
        assert!(Instant::now() < deadline, "no checkpoint was staged");
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.cut();
    let started = Instant::now();
    let o = child.wait_with_output().unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(5), "a store that is gone is an output error (exit 5)\n{stderr}");
    assert!(stderr.contains("cannot write s3://lake/down/"), "the message names the store location: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(90), "it should give up in seconds, not hang");
    assert!(!stderr.contains(SECRET_KEY));

    // the store is back: the committed snapshot is intact and still what `b24-export sql` reads
    assert_eq!(moto.keys("lake", "down/leads/"), committed);
    let o = s3_cmd(&["sql", "s3://lake/down", "--s3-endpoint", &moto.endpoint()]).output().unwrap();
    assert_success(&o);
    let sql = text(&o).0;
    for k in &committed {
        assert!(sql.contains(&format!("s3://lake/{k}")), "{sql}");
    }
    assert_eq!(sql.matches("s3://").count(), committed.len(), "{sql}");
    let local = tempdir("s3-down");
    moto.mirror("lake", "down/leads/", &local);
    check_full_dataset(&first, &read_dataset(&local), &[]);
}

#[test]
fn sigkill_during_an_upload_leaves_no_partial_object_and_resume_is_exact() {
    let moto = Moto::start();
    moto.mkbucket("lake");
    let proxy = Proxy::start(moto.port);
    // about 100 KiB/s towards the store: a file of several parts takes seconds to upload
    proxy.throttle(Duration::from_millis(150));
    let sim = start_sim(SimConfig { leads: 30_000, seed: 26, ..SimConfig::default() });
    let part = MIN_PART.to_string();
    let mut child = s3_cmd(&[
        "--quiet", "export", "--webhook", &sim.webhook_url(), "--out", "s3://lake/kill", "--s3-endpoint", &proxy.endpoint(),
        "--s3-part-size", &part, "--partition-by", "none", "--checkpoint-every", "1",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let open = loop {
        let up = moto.uploads("lake");
        if let Some(u) = up.first() {
            break (u["key"].as_str().unwrap().to_string(), u["upload_id"].as_str().unwrap().to_string());
        }
        assert!(child.try_wait().unwrap().is_none(), "the export ended before a multipart upload was seen");
        assert!(Instant::now() < deadline, "no multipart upload was seen");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap(); // SIGKILL, mid-upload
    child.wait().unwrap();
    let (key, id) = open;
    assert!(
        moto.uploads("lake").iter().any(|u| u["upload_id"] == id.as_str()),
        "the upload of {key} was not under way any more when the exporter was killed; slow the proxy down"
    );
    assert!(!moto.keys("lake", "kill/").contains(&key), "a partial object became visible at {key}");
    assert!(moto.keys("lake", "kill/leads/").is_empty(), "nothing may be published by a killed run");
    assert!(moto.keys("lake", "kill/_manifests/").is_empty());

    // --resume continues from the last checkpoint (if the kill came before the first one, it starts anew)
    proxy.throttle(Duration::ZERO);
    let o = export_s3(&sim.webhook_url(), &proxy.endpoint(), "s3://lake/kill", &["--partition-by", "none", "--resume"]);
    assert_success(&o);
    let local = tempdir("s3-kill");
    moto.mirror("lake", "kill/leads/", &local);
    check_full_dataset(&sim, &read_dataset(&local), &[]);
    assert!(moto.keys("lake", "kill/.b24-staging").is_empty(), "staged leftovers after the commit");
}

#[test]
fn an_incremental_run_on_s3_reads_only_the_index_columns_and_merges_exactly() {
    let moto = Moto::start();
    moto.mkbucket("lake");
    let sim = start_sim(SimConfig { leads: 20_000, seed: 23, ..SimConfig::default() });
    assert_success(&export_s3(&sim.webhook_url(), &moto.endpoint(), "s3://lake/incr", &["--partition-by", "none"]));
    sim.advance_clock(3_600);
    let ids = sim.ids();
    for &id in ids.iter().step_by(501) {
        sim.update_lead(id);
    }
    sim.delete_lead(ids[7]);
    sim.insert_lead();
    let part = MIN_PART.to_string();
    let o = s3_cmd(&[
        "export", "--webhook", &sim.webhook_url(), "--out", "s3://lake/incr", "--s3-endpoint", &moto.endpoint(), "--s3-part-size",
        &part, "--partition-by", "none", "--incremental", "--detect-deletes",
    ])
    .env("B24_LOG", "debug")
    .output()
    .unwrap();
    assert_success(&o);
    let (stdout, stderr) = text(&o);
    assert!(stdout.contains("1 inserted") && stdout.contains("1 deleted"), "{stdout}");
    // the index of the 20,000-lead snapshot comes from its id and date_modify chunks, not the whole file
    let line = stderr.lines().find(|l| l.contains("snapshot index: read")).unwrap_or_else(|| panic!("{stderr}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(nums.len() >= 2 && nums[0] * 5 < nums[1], "read too much of the snapshot: {line}");
    let local = tempdir("s3-incr");
    moto.mirror("lake", "incr/leads/", &local);
    check_full_dataset(&sim, &read_dataset(&local), &[]);
}
