//! The fault matrix: each fault alone, then all together at low rates — every export of 20,000 leads is exact,
//! and the summary counts the retries. Plus the faults that must stop a run, and OAuth token refresh.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use b24_export::sim::{Faults, OAuthConfig, SimConfig, SimPortal};
use common::*;

const LEADS: usize = 20_000;

fn retries(stdout: &str) -> u64 {
    stdout.split(" retries").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Exports and checks the dataset exactly against the simulator; returns stdout.
fn exact_export(sim: &SimPortal, extra: &[&str]) -> String {
    let out = tempdir("fault");
    let mut args = vec!["--max-retries", "12"];
    args.extend_from_slice(extra);
    let o = export(&sim.webhook_url(), &out, &args);
    assert_success(&o);
    let ds = read_dataset(&out.join("leads"));
    if sim.config().mutate_every.is_some() {
        // leads changed during the run: every lead present at the start and at the end is there exactly once
        let ids: Vec<i64> = ds.rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        let exported: BTreeSet<i64> = ids.iter().copied().collect();
        assert_eq!(exported.len(), ids.len(), "duplicates");
        let fin: BTreeSet<i64> = sim.ids().into_iter().collect();
        let stable: Vec<i64> = sim.initial_ids().into_iter().filter(|id| fin.contains(id)).collect();
        assert!(stable.iter().all(|id| exported.contains(id)), "a lead present at start and end is missing");
    } else {
        check_full_dataset(sim, &ds, &["date_create_month"]);
    }
    text(&o).0
}

fn sim_with(faults: Faults, tweak: impl FnOnce(&mut SimConfig)) -> SimPortal {
    let mut cfg = SimConfig { leads: LEADS, seed: 31, faults, ..SimConfig::default() };
    tweak(&mut cfg);
    start_sim(cfg)
}

#[test]
fn each_transient_fault_alone_is_survived_exactly() {
    let cases: Vec<(&str, Faults, &[&str])> = vec![
        ("500", Faults { error_500: 0.25, ..Faults::default() }, &[]),
        ("dropped connection", Faults { drop_connection: 0.25, ..Faults::default() }, &[]),
        ("slower than the timeout", Faults { slow: 0.2, slow_delay: Duration::from_secs(4), ..Faults::default() }, &["--timeout", "2"]),
        ("truncated body", Faults { truncated_body: 0.25, ..Faults::default() }, &[]),
    ];
    for (name, faults, extra) in cases {
        let sim = sim_with(faults, |_| {});
        let stdout = exact_export(&sim, extra);
        let injected = sim.stats().faults_injected.load(Ordering::Relaxed);
        assert!(injected > 0, "{name}: no fault was injected");
        assert!(retries(&stdout) >= injected, "{name}: {injected} faults but the summary says: {stdout}");
    }
}

#[test]
fn limits_per_command_errors_and_changing_leads_are_survived_exactly() {
    // 503 QUERY_LIMIT_EXCEEDED: the portal's bucket is tighter than the client believes
    let sim = sim_with(Faults::default(), |c| {
        c.burst = 3.0;
        c.drain_per_sec = 3.0;
    });
    let stdout = exact_export(&sim, &["--rate", "30", "--burst", "50"]);
    assert!(sim.stats().rejected_503.load(Ordering::Relaxed) > 0 && retries(&stdout) > 0, "{stdout}");

    // 429 OPERATION_TIME_LIMIT: a small operating budget
    let sim = sim_with(Faults::default(), |c| {
        c.list_cost = Duration::from_millis(6);
        c.operating_limit = Some(Duration::from_secs(1));
        c.operating_window = Duration::from_secs(10);
    });
    let stdout = exact_export(&sim, &["--max-pause", "120"]);
    assert!(sim.stats().rejected_429.load(Ordering::Relaxed) > 0, "{stdout}");
    assert!(stdout.contains("OPERATION_TIME_LIMIT answers"), "{stdout}");

    // errors of single commands inside a batch
    let sim = sim_with(Faults::default(), |c| c.command_error_every = Some(13));
    let stdout = exact_export(&sim, &[]);
    assert!(retries(&stdout) >= sim.stats().command_errors.load(Ordering::Relaxed), "{stdout}");

    // leads inserted, updated and deleted while the export runs
    let sim = sim_with(Faults::default(), |c| c.mutate_every = Some(4));
    exact_export(&sim, &[]);
    assert!(sim.stats().mutations.load(Ordering::Relaxed) > 20);
}

#[test]
fn a_portal_that_moved_to_a_new_domain_is_followed() {
    let sim = sim_with(Faults { redirect_to: Some("localhost".into()), ..Faults::default() }, |_| {});
    let stdout = exact_export(&sim, &[]);
    assert_eq!(sim.stats().faults_injected.load(Ordering::Relaxed), 1, "only the first request should be redirected: {stdout}");
}

#[test]
fn all_faults_together_at_low_rates() {
    let faults = Faults {
        error_500: 0.04,
        drop_connection: 0.04,
        slow: 0.04,
        slow_delay: Duration::from_secs(4),
        truncated_body: 0.04,
        redirect_to: Some("localhost".into()),
        ..Faults::default()
    };
    let sim = sim_with(faults, |c| {
        c.command_error_every = Some(41);
        c.mutate_every = Some(9);
        c.list_cost = Duration::from_millis(3);
        c.operating_limit = Some(Duration::from_secs(1));
        c.operating_window = Duration::from_secs(10);
    });
    let stdout = exact_export(&sim, &["--timeout", "2", "--max-pause", "120"]);
    assert!(retries(&stdout) > 0, "{stdout}");
}

#[test]
fn overload_is_a_stop_with_a_clear_message() {
    let sim = sim_with(Faults { overload_after: Some(2), ..Faults::default() }, |_| {});
    let out = tempdir("overload");
    let o = export(&sim.webhook_url(), &out, &[]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("OVERLOAD_LIMIT") && stderr.contains("by hand"), "{stderr}");
    assert_eq!(sim.stats().faults_injected.load(Ordering::Relaxed), 1, "a manual block must not be retried");
}

fn oauth_sim(token_requests: u64) -> SimPortal {
    start_sim(SimConfig {
        leads: 6_000,
        seed: 5,
        oauth: Some(OAuthConfig {
            client_id: "app.1234.5678".into(),
            client_secret: "leakclientsecret99".into(),
            access_token: "leakaccesstoken11".into(),
            refresh_token: "leakrefreshtoken22".into(),
            token_requests,
        }),
        ..SimConfig::default()
    })
}

fn oauth_export(sim: &SimPortal, out: &std::path::Path, token_file: &std::path::Path, refresh: &str) -> std::process::Output {
    let portal = format!("http://{}", sim.addr());
    bin()
        .args(["--quiet", "export", "--portal", &portal, "--oauth-server", &portal, "--out"])
        .arg(out)
        .arg("--token-file")
        .arg(token_file)
        .env_remove("B24_WEBHOOK_URL")
        .env("B24_ACCESS_TOKEN", "leakaccesstoken11")
        .env("B24_REFRESH_TOKEN", refresh)
        .env("B24_CLIENT_ID", "app.1234.5678")
        .env("B24_CLIENT_SECRET", "leakclientsecret99")
        .env("B24_LOG", "debug")
        .output()
        .unwrap()
}

#[test]
fn oauth_tokens_are_refreshed_once_per_expiry_and_the_rotated_pair_is_kept() {
    let sim = oauth_sim(2);
    let out = tempdir("oauth");
    let token_file = out.join("tokens.json");
    let o = oauth_export(&sim, &out.join("data"), &token_file, "leakrefreshtoken22");
    assert_success(&o);
    let refreshes = sim.stats().token_refreshes.load(Ordering::Relaxed);
    assert!(refreshes >= 2, "tokens live two requests: the run must have refreshed, refreshed {refreshes}");
    let ds = read_dataset(&out.join("data/leads"));
    check_full_dataset(&sim, &ds, &["date_create_month"]);
    // the file holds the portal's current pair (the refresh token rotates)
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    let (access, refresh) = sim.oauth_tokens().unwrap();
    assert_eq!((saved["access_token"].as_str().unwrap(), saved["refresh_token"].as_str().unwrap()), (access.as_str(), refresh.as_str()));
    // no token or secret in what was printed or written (the token file excepted: it is their home)
    let (stdout, stderr) = text(&o);
    let mut bytes = all_bytes_under(&out.join("data"));
    bytes.extend(stdout.as_bytes());
    bytes.extend(stderr.as_bytes());
    for secret in ["leakaccesstoken11", "leakrefreshtoken22", "leakclientsecret99", &access, &refresh] {
        assert!(!contains(&bytes, secret), "{secret} leaked");
    }
    // a second run starts from the token file, not from the stale environment
    let o = oauth_export(&sim, &out.join("data2"), &token_file, "stale-refresh-token");
    assert_success(&o);
}

#[test]
fn a_refused_refresh_is_an_auth_error() {
    let sim = oauth_sim(1);
    let out = tempdir("oauth-bad");
    let o = oauth_export(&sim, &out.join("data"), &out.join("tokens.json"), "wrongrefresh33");
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("invalid_grant") && stderr.contains("authorized again"), "{stderr}");
    assert!(!stderr.contains("wrongrefresh33") && !stderr.contains("leakclientsecret99"));
}

#[test]
fn a_run_killed_at_any_moment_leaves_the_previous_dataset_intact() {
    let first = start_sim(SimConfig { leads: 2_000, seed: 9, ..SimConfig::default() });
    let out = tempdir("kill");
    assert_success(&export(&first.webhook_url(), &out, &[]));
    // the committed snapshot, as `b24-export sql` reads it: its row count and a digest of every row. (A plain glob
    // may see the old and the new files together if a kill lands inside the swap, README "Output".)
    let committed = |out: &std::path::Path| -> (u64, String) {
        let o = bin().args(["sql"]).arg(out).output().unwrap();
        assert_success(&o);
        let sql = text(&o).0;
        let r = query(&format!(
            "SELECT count(*) AS n, md5(string_agg(t::VARCHAR, '|' ORDER BY t.id)) AS h FROM ({}) t",
            sql.trim().trim_end_matches(';')
        ));
        (r[0]["n"].as_u64().unwrap(), r[0]["h"].as_str().unwrap().to_string())
    };
    let before = committed(&out);
    assert_eq!(before.0, 2_000);
    // a slower, bigger portal, so that kills land in every stage: fetching, converting, writing, publishing
    let second = start_sim(SimConfig { leads: 30_000, seed: 10, latency: Duration::from_millis(30), ..SimConfig::default() });
    for round in 0..10u64 {
        let mut child = bin()
            .args(["--quiet", "export", "--webhook", &second.webhook_url(), "--overwrite", "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + (round * 7919 % 1500)));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = committed(&out);
        if finished || now != before {
            // killed after its commit, or it finished: the whole new dataset, nothing less
            assert_eq!(now.0, 30_000, "round {round}: a killed run changed the committed snapshot");
            if finished {
                assert_eq!(read_dataset(&out.join("leads")).rows.len(), 30_000, "a run that finished must have published the whole new dataset");
            }
            return;
        }
    }
    // a run that is let finish replaces the dataset and clears the killed runs' staging
    assert_success(&export(&second.webhook_url(), &out, &["--overwrite"]));
    assert_eq!(read_dataset(&out.join("leads")).rows.len(), 30_000);
    assert!(!out.join(".b24-staging").exists(), "staging leftovers of killed runs were not removed");
}

#[test]
fn concurrent_requests_share_one_refresh_per_expiry() {
    // 150,000 leads: several batch requests in flight when a token expires
    let sim = start_sim(SimConfig {
        leads: 150_000,
        seed: 6,
        latency: Duration::from_millis(20),
        oauth: Some(OAuthConfig {
            client_id: "app.1234.5678".into(),
            client_secret: "leakclientsecret99".into(),
            access_token: "leakaccesstoken11".into(),
            refresh_token: "leakrefreshtoken22".into(),
            token_requests: 6,
        }),
        ..SimConfig::default()
    });
    let out = tempdir("oauth-concurrent");
    let token_file = out.join("tokens.json");
    let o = oauth_export(&sim, &out.join("data"), &token_file, "leakrefreshtoken22");
    assert_success(&o);
    let probe = text(&o).1.lines().find(|l| l.contains("probe:")).unwrap_or("").to_string();
    let in_flight: usize = probe.split("at most ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(in_flight >= 2, "the run should fan out: {probe}");
    let refreshes = sim.stats().token_refreshes.load(Ordering::Relaxed);
    let requests = sim.stats().http_requests.load(Ordering::Relaxed);
    assert!(refreshes >= 3, "{refreshes} refreshes for {requests} requests");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    assert_eq!(saved["refresh_token"].as_str().unwrap(), sim.oauth_tokens().unwrap().1, "the file must hold the live pair");
    let n = query(&format!("SELECT count(DISTINCT id) AS n, count(*) AS c FROM read_parquet('{}/data/leads/**/*.parquet')", out.display()));
    assert_eq!((n[0]["n"].as_u64(), n[0]["c"].as_u64()), (Some(150_000), Some(150_000)));
}
