//! Fetch planning under fan-out: every lead exactly once whatever the ID layout, while leads change, when batch
//! commands fail, and when the portal's operating-time budget runs out.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use b24_export::sim::data::IdLayout;
use b24_export::sim::{SimConfig, SimPortal};
use common::*;

/// Exports with no partitioning and returns the exported IDs (sorted) and stdout.
fn export_ids(sim: &SimPortal, extra: &[&str]) -> (Vec<i64>, String) {
    let out = tempdir("fetch");
    let mut args = vec!["--partition-by", "none"];
    args.extend_from_slice(extra);
    let o = export(&sim.webhook_url(), &out, &args);
    assert_success(&o);
    let rows = if out.join("leads").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        query(&format!("SELECT id FROM read_parquet('{}/leads/**/*.parquet') ORDER BY id", out.display()))
    } else {
        Vec::new()
    };
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate IDs");
    (ids, text(&o).0)
}

#[test]
fn every_id_layout_is_exported_exactly_once() {
    for (layout, n) in [(IdLayout::Dense, 7_000), (IdLayout::Sparse, 3_000), (IdLayout::HugeGap, 6_000), (IdLayout::Realistic, 1), (IdLayout::Dense, 0), (IdLayout::Dense, 50), (IdLayout::Dense, 2_500)] {
        let sim = start_sim(SimConfig { leads: n, seed: 8, id_layout: layout, ..SimConfig::default() });
        let (ids, stdout) = export_ids(&sim, &[]);
        assert_eq!(ids, sim.ids(), "{layout:?} with {n} leads");
        assert!(stdout.contains(&format!("exported {n} leads")), "{stdout}");
    }
}

#[test]
fn leads_changing_during_the_run_are_neither_lost_nor_doubled() {
    let sim = start_sim(SimConfig { leads: 20_000, seed: 12, mutate_every: Some(3), ..SimConfig::default() });
    let initial = sim.initial_ids();
    let (ids, _) = export_ids(&sim, &[]);
    let fin: BTreeSet<i64> = sim.ids().into_iter().collect();
    assert!(sim.stats().mutations.load(Ordering::Relaxed) > 50, "the portal should have changed during the run");
    let exported: BTreeSet<i64> = ids.iter().copied().collect();
    let stable: Vec<i64> = initial.iter().copied().filter(|id| fin.contains(id)).collect();
    let missing: Vec<&i64> = stable.iter().filter(|id| !exported.contains(id)).collect();
    assert!(missing.is_empty(), "{} leads present at start and end were not exported, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    let max_initial = *initial.last().unwrap();
    assert!(ids.iter().all(|id| *id <= max_initial), "leads created after the start are outside the snapshot's ID span");
}

#[test]
fn failed_commands_inside_a_batch_are_retried() {
    let sim = start_sim(SimConfig { leads: 8_000, seed: 4, command_error_every: Some(9), ..SimConfig::default() });
    let (ids, stdout) = export_ids(&sim, &[]);
    assert!(sim.stats().command_errors.load(Ordering::Relaxed) > 5);
    assert_eq!(ids, sim.ids());
    let retries: u64 = stdout.split(" retries").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(retries > 0, "{stdout}");
}

fn budget_sim() -> SimPortal {
    // 20 ms of server time per list call, 2 s of budget per 10 s window: the export needs about 4 s of it
    start_sim(SimConfig {
        leads: 9_000,
        seed: 21,
        id_layout: IdLayout::Dense,
        list_cost: Duration::from_millis(20),
        operating_limit: Some(Duration::from_secs(2)),
        operating_window: Duration::from_secs(10),
        ..SimConfig::default()
    })
}

#[test]
fn a_run_blocked_by_the_operating_budget_pauses_and_completes() {
    let sim = budget_sim();
    let (ids, stdout) = export_ids(&sim, &["--max-pause", "120"]);
    assert!(sim.stats().rejected_429.load(Ordering::Relaxed) > 0, "the portal never blocked the method: {stdout}");
    assert_eq!(ids, sim.ids());
    assert!(stdout.contains("OPERATION_TIME_LIMIT answers"), "{stdout}");
}

#[test]
fn knowing_the_budget_the_client_slows_down_before_the_portal_blocks() {
    let sim = budget_sim();
    let (ids, stdout) = export_ids(&sim, &["--operating-limit", "2", "--max-pause", "120"]);
    assert_eq!(ids, sim.ids());
    assert_eq!(sim.stats().rejected_429.load(Ordering::Relaxed), 0, "{stdout}");
    assert!(stdout.contains("paused"), "the client should have paused: {stdout}");
}

#[test]
fn a_healthy_run_meets_no_503_and_packs_its_requests() {
    let sim = start_sim(SimConfig { leads: 60_000, seed: 2, ..SimConfig::default() });
    let (ids, _) = export_ids(&sim, &[]);
    assert_eq!(ids.len(), 60_000);
    assert_eq!(sim.stats().rejected_503.load(Ordering::Relaxed), 0);
    let requests = sim.stats().http_requests.load(Ordering::Relaxed) as f64;
    // 60,000 leads fit in 24 full batch requests; allow the planner its partial pages and the fields/probe calls
    assert!(requests <= 32.0, "{requests} requests for 60,000 leads");
}
