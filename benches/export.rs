//! Export benchmark: the release binary exports N leads from the simulated portal on loopback, with the
//! portal's standard and enterprise limits. Prints leads/s, requests per 1,000 leads, peak RSS and output size.
//!
//! `make bench` (= `cargo bench --bench export`); `B24_BENCH_LEADS=100000,1000000` picks the sizes.

use std::process::Command;
use std::time::{Duration, Instant};

use b24_export::sim::{SimConfig, SimPortal};

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn run(leads: usize, plan: &str, burst: f64, rate: f64) {
    let sim = SimPortal::start(SimConfig { leads, seed: 42, burst, drain_per_sec: rate, ..SimConfig::default() }, 0).expect("sim");
    let out = std::env::temp_dir().join(format!("b24-bench-{}-{leads}-{plan}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_b24-export"))
        .args(["--quiet", "export", "--webhook", &sim.webhook_url(), "--out"])
        .arg(&out)
        .args(["--rate", &rate.to_string(), "--burst", &burst.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn b24-export");
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(k) = vm_hwm_kib(pid) {
            peak = peak.max(k);
        }
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "export failed");
    let requests = sim.stats().http_requests.load(std::sync::atomic::Ordering::Relaxed);
    let rejected = sim.stats().rejected_503.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "| {leads:>9} | {plan:<10} | {secs:>8.1} | {:>9.0} | {requests:>8} | {:>6.2} | {rejected:>4} | {:>7.1} | {:>8.1} |",
        leads as f64 / secs,
        requests as f64 * 1000.0 / leads as f64,
        peak as f64 / 1024.0,
        dir_bytes(&out) as f64 / (1024.0 * 1024.0),
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn main() {
    let sizes: Vec<usize> = std::env::var("B24_BENCH_LEADS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("| leads     | plan       | seconds  | leads/s   | requests | req/1k | 503s | RSS MiB | out MiB  |");
    println!("|-----------|------------|----------|-----------|----------|--------|------|---------|----------|");
    for &n in &sizes {
        run(n, "standard", 50.0, 2.0);
        run(n, "enterprise", 250.0, 5.0);
    }
}
