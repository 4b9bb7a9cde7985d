//! `--resume`: an export killed with SIGKILL several times, each time resumed from its last checkpoint, ends with
//! exactly the portal's leads — none missing, none twice — and a resumed run must ask for what the first asked.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use b24_export::sim::SimConfig;
use common::*;
use serde_json::Value;

fn checkpoint(out: &Path) -> Option<Value> {
    let staging = out.join(".b24-staging").join("leads");
    for run in std::fs::read_dir(staging).ok()? {
        let p = run.ok()?.path().join("checkpoint.json");
        if let Ok(bytes) = std::fs::read(&p) {
            return serde_json::from_slice(&bytes).ok();
        }
    }
    None
}

fn spawn_export(webhook: &str, out: &Path, extra: &[&str]) -> std::process::Child {
    bin()
        .args(["--quiet", "export", "--webhook", webhook, "--checkpoint-every", "0.3", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("B24_WEBHOOK_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn an_export_killed_three_times_and_resumed_is_exact() {
    let sim = start_sim(SimConfig { leads: 60_000, seed: 31, latency: Duration::from_millis(60), ..SimConfig::default() });
    let out = tempdir("resume");
    let mut seen_rows = 0u64;
    let mut run_id = None;
    for round in 0..3 {
        let extra: &[&str] = if round == 0 { &[] } else { &["--resume"] };
        let mut child = spawn_export(&sim.webhook_url(), &out, extra);
        // wait for a checkpoint with more leads than the last one, then kill
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = checkpoint(&out) {
                let rows = c["rows"].as_u64().unwrap();
                if rows > seen_rows {
                    seen_rows = rows;
                    let id = c["run_id"].as_str().unwrap().to_string();
                    assert!(run_id.get_or_insert(id.clone()) == &id, "a resumed run keeps its run id");
                    break;
                }
            }
            assert!(child.try_wait().unwrap().is_none(), "round {round}: the export finished before it could be killed");
            assert!(Instant::now() < deadline, "round {round}: no new checkpoint");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(!out.join("leads").exists() || read_dataset(&out.join("leads")).rows.is_empty(), "a killed run published files");
    }
    assert!(seen_rows > 0 && seen_rows < 60_000);

    // a resumed run must ask for the same thing
    let o = export(&sim.webhook_url(), &out, &["--resume", "--select", "TITLE"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("--select changed"), "{}", text(&o).1);

    // the interrupted run is staged the way versions before per-dataset staging did (`.b24-staging/<run id>/`):
    // it is still found and resumed
    let run = run_id.clone().unwrap();
    std::fs::rename(out.join(".b24-staging/leads").join(&run), out.join(".b24-staging").join(&run)).unwrap();
    let o = export(&sim.webhook_url(), &out, &["--resume"]);
    assert_success(&o);
    let stdout = text(&o).0;
    assert!(stdout.contains("resumed an interrupted run"), "{stdout}");
    assert!(stdout.contains(run_id.as_deref().unwrap()), "the summary names the resumed run: {stdout}");
    let ds = read_dataset(&out.join("leads"));
    check_full_dataset(&sim, &ds, &[]);
    assert!(!out.join(".b24-staging").exists(), "staging left behind after the commit");
}

#[test]
fn resume_without_an_interrupted_run_starts_a_new_one() {
    let sim = start_sim(SimConfig { leads: 500, seed: 32, ..SimConfig::default() });
    let out = tempdir("resume-none");
    let o = export(&sim.webhook_url(), &out, &["--resume"]);
    assert_success(&o);
    check_full_dataset(&sim, &read_dataset(&out.join("leads")), &[]);
}
