//! Fetch benchmark (`make bench-fetch`): 200,000 leads from the simulated portal with 100 ms latency per request
//! and 20 ms of server time per list call, standard limits (bucket 50, 2 requests/s, 480 s operating budget per
//! 10 min). Prints HTTP requests per 1,000 leads, wall seconds, the floor (the least time the bucket and the
//! operating budget allow for that many leads), wall/floor, `floor+` (the floor plus what no client avoids: one
//! set-up request and the last request's round trip, see [`floor_plus_secs`]) and the 503/429 counts — for
//! b24-export and, on the very same portal, for fast_bitrix24 (`get_all('crm.lead.list')`, run by
//! benches/fast_bitrix24_run.py).
//!
//! `B24_BENCH_LEADS` changes the size; `B24_BENCH_PYTHON` points at a Python with fast-bitrix24 installed.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use b24_export::sim::{SimConfig, SimPortal};

const LATENCY_MS: u64 = 100;
const LIST_COST_MS: u64 = 20;
const BURST: f64 = 50.0;
const RATE: f64 = 2.0;
const OPERATING_LIMIT: f64 = 480.0;
const OPERATING_WINDOW: f64 = 600.0;

fn portal(leads: usize) -> SimPortal {
    SimPortal::start(
        SimConfig {
            leads,
            seed: 42,
            latency: Duration::from_millis(LATENCY_MS),
            list_cost: Duration::from_millis(LIST_COST_MS),
            burst: BURST,
            drain_per_sec: RATE,
            operating_limit: Some(Duration::from_secs_f64(OPERATING_LIMIT)),
            operating_window: Duration::from_secs_f64(OPERATING_WINDOW),
            ..SimConfig::default()
        },
        0,
    )
    .expect("sim")
}

/// The least time the portal's limits allow for `leads` leads: each request carries at most 50 list calls of 50
/// leads; the bucket lets `BURST` requests through at once and then `RATE` per second; the operating budget
/// allows `OPERATING_LIMIT` seconds of list calls per window.
fn floor_secs(leads: usize) -> f64 {
    let requests = (leads as f64 / 2500.0).ceil();
    let bucket = ((requests - BURST) / RATE).max(0.0);
    let operating = (leads as f64 / 50.0) * LIST_COST_MS as f64 / 1000.0;
    let budget = ((operating - OPERATING_LIMIT) / OPERATING_LIMIT * OPERATING_WINDOW).max(0.0);
    bucket.max(budget)
}

/// The floor ([`floor_secs`]) leaves out two things no client can avoid: the request that asks for the
/// field metadata before any lead can be typed (at best the dictionaries and the ID probe ride in it too), which
/// takes its place in the bucket, and the round trip of the last request, which cannot start before the bucket lets
/// it go and then takes the latency plus 50 list calls of server time. `floor+` adds both.
fn floor_plus_secs(leads: usize) -> f64 {
    let requests = (leads as f64 / 2500.0).ceil() + 1.0;
    let bucket = ((requests - BURST) / RATE).max(0.0);
    let last = (LATENCY_MS + (leads.div_ceil(50).min(50) as u64) * LIST_COST_MS) as f64 / 1000.0;
    bucket.max(floor_secs(leads)) + last
}

#[allow(clippy::too_many_arguments)]
fn row(tool: &str, leads: usize, got: usize, secs: f64, sim: &SimPortal, floor: f64, floor_plus: f64, baseline: Option<f64>) {
    let req = sim.stats().http_requests.load(Ordering::Relaxed);
    let vs = baseline.map(|b| format!("{:.2}×", secs / b)).unwrap_or_else(|| "1.00×".into());
    println!(
        "| {tool:<13} | {leads:>7} | {got:>7} | {req:>8} | {:>6.3} | {secs:>7.1} | {floor:>6.1} | {:>10.2} | {floor_plus:>6.1} | {:>11.2} | {:>4} | {:>4} | {vs:>9} |",
        req as f64 * 1000.0 / leads as f64,
        secs / floor.max(1e-9),
        secs / floor_plus.max(1e-9),
        sim.stats().rejected_503.load(Ordering::Relaxed),
        sim.stats().rejected_429.load(Ordering::Relaxed),
    );
}

fn main() {
    let leads: usize = std::env::var("B24_BENCH_LEADS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let floor = floor_secs(leads);
    let floor_plus = floor_plus_secs(leads);
    println!("latency {LATENCY_MS} ms/request, {LIST_COST_MS} ms server time per list call, bucket {BURST}/{RATE} per s");
    println!("| tool          | leads   | fetched | requests | req/1k | wall s  | floor  | wall/floor | floor+ | wall/floor+ | 503s | 429s | wall vs us |");
    println!("|---------------|---------|---------|----------|--------|---------|--------|------------|--------|-------------|------|------|-----------|");

    // b24-export
    let sim = portal(leads);
    let out = std::env::temp_dir().join(format!("b24-bench-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_b24-export"))
        .args(["--quiet", "export", "--webhook", &sim.webhook_url(), "--out"])
        .arg(&out)
        .output()
        .expect("run b24-export");
    let ours = started.elapsed().as_secs_f64();
    assert!(o.status.success(), "b24-export failed: {}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    let got: usize = summary.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    row("b24-export", leads, got, ours, &sim, floor, floor_plus, None);
    drop(sim);
    let _ = std::fs::remove_dir_all(&out);

    // fast_bitrix24 on an identical portal
    let python = std::env::var("B24_BENCH_PYTHON").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fast_bitrix24_run.py");
    let sim = portal(leads);
    let started = Instant::now();
    match Command::new(&python).arg(script).arg(sim.webhook_url()).output() {
        Ok(o) if o.status.success() => {
            let secs = started.elapsed().as_secs_f64();
            let line = String::from_utf8_lossy(&o.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or("{}")).unwrap_or_default();
            let got = v["unique_ids"].as_u64().unwrap_or(0) as usize;
            row("fast_bitrix24", leads, got, secs, &sim, floor, floor_plus, Some(ours));
        }
        Ok(o) => println!("fast_bitrix24 failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => println!("fast_bitrix24 not run ({python}: {e}); `make bench-fetch` installs it"),
    }
}
