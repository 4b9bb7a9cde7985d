//! Progress of a long run: a bar on a terminal (records, records/s, requests, retries), a log line every few
//! seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::ClientStats;

pub struct Progress {
    leads: AtomicU64,
    written: AtomicU64,
    client: Arc<ClientStats>,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    done: AtomicBool,
}

impl Progress {
    /// `interactive`: draw a bar (only when stderr is a terminal).
    pub fn new(client: Arc<ClientStats>, interactive: bool) -> Arc<Self> {
        let bar = (interactive && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("template"));
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let p = Arc::new(Progress {
            leads: AtomicU64::new(0),
            written: AtomicU64::new(0),
            client,
            started: Instant::now(),
            bar,
            done: AtomicBool::new(false),
        });
        if p.bar.is_none() && interactive {
            let weak = Arc::downgrade(&p);
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                match weak.upgrade() {
                    Some(p) if !p.done.load(Ordering::Relaxed) => tracing::info!("{}", p.line()),
                    _ => return,
                }
            });
        }
        p
    }

    pub fn leads(&self) -> u64 {
        self.leads.load(Ordering::Relaxed)
    }

    pub fn add_leads(&self, n: u64) {
        self.leads.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_message(self.line());
        }
    }

    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let leads = self.leads();
        format!(
            "fetched {leads} records ({:.0}/s), written {}, {} requests, {} retries",
            leads as f64 / secs,
            self.written.load(Ordering::Relaxed),
            self.client.requests.load(Ordering::Relaxed),
            self.client.retries.load(Ordering::Relaxed)
        )
    }

    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
