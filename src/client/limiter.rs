//! Client-side leaky bucket: mirrors the portal's limit (burst X, drain Y/s) so that a healthy run meets no 503.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LeakyBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl LeakyBucket {
    /// `rate` requests drain per second; up to `burst` requests may be in the bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        LeakyBucket { rate: rate.max(0.001), burst: burst.max(1.0), state: Mutex::new((0.0, Instant::now())) }
    }

    /// How long the caller must wait before it may send; `Duration::ZERO` means it took a slot.
    fn try_take(&self) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let level = (st.0 - now.duration_since(st.1).as_secs_f64() * self.rate).max(0.0);
        st.1 = now;
        if level + 1.0 <= self.burst {
            st.0 = level + 1.0;
            Duration::ZERO
        } else {
            st.0 = level;
            Duration::from_secs_f64((level + 1.0 - self.burst) / self.rate)
        }
    }

    /// Waits for a slot in the bucket.
    pub async fn acquire(&self) {
        loop {
            let wait = self.try_take();
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The portal said the bucket is full (503 QUERY_LIMIT_EXCEEDED): believe it and re-sync.
    pub fn saturate(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = self.burst;
        st.1 = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced() {
        let b = LeakyBucket::new(2.0, 3.0);
        for _ in 0..3 {
            assert!(b.try_take().is_zero());
        }
        let w = b.try_take();
        assert!(w > Duration::from_millis(400) && w <= Duration::from_millis(500), "{w:?}");
        b.saturate();
        assert!(!b.try_take().is_zero());
    }
}
