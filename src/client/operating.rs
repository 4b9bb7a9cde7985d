//! The portal's per-method operating-time budget (`bitrix24-api.md` §7): each method may use about 480 s of
//! server time per 10 minutes; the next call beyond it gets 429 `OPERATION_TIME_LIMIT`. Every response says how
//! much is used (`time.operating`) and when the oldest minute drops out (`time.operating_reset_at`). We track
//! both per method, slow down before the portal blocks a method, and wait for the reset when it does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    used: f64,
    reset_at: Option<f64>,
    /// The largest increase between two observations in the same window (≈ what one request spends).
    step: f64,
    /// After a block: calls wait until then (unix seconds), however many requests met the block.
    blocked_until: Option<f64>,
}

/// No wait is longer than the portal's window (10 minutes) and a bit.
const MAX_WAIT: f64 = 660.0;

#[derive(Debug)]
pub struct OperatingBudget {
    /// The portal's budget per method, seconds (cloud: 480).
    limit: f64,
    seen: Mutex<HashMap<String, Seen>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl OperatingBudget {
    pub fn new(limit: Duration) -> Self {
        OperatingBudget { limit: limit.as_secs_f64(), seen: Mutex::new(HashMap::new()) }
    }

    /// Records a `time` object of a call to `method`.
    pub fn observe(&self, method: &str, time: &Value) {
        let Some(used) = time.get("operating").and_then(Value::as_f64) else { return };
        let reset_at = time.get("operating_reset_at").and_then(Value::as_f64);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.entry(method.to_string()).or_default();
        // responses of concurrent requests arrive out of order: keep the newest picture
        if used > s.used && reset_at.is_some() && reset_at == s.reset_at {
            s.step = s.step.max(used - s.used);
        }
        if reset_at.is_some() && reset_at != s.reset_at {
            s.used = used;
            s.reset_at = reset_at;
        } else {
            s.used = s.used.max(used);
        }
    }

    /// How long to hold back a request of `method` while `inflight` others are under way, so that together
    /// they do not push the method over its budget; `None` when there is room.
    pub fn wait_before(&self, method: &str, inflight: usize) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.get(method)?;
        let margin = s.step.max(0.5) * (inflight as f64 + 1.0);
        if s.used + margin < self.limit {
            return None;
        }
        let reset = s.reset_at?;
        let wait = (reset + 1.0 - now()).min(MAX_WAIT);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait))
    }

    /// The portal blocked `method`: wait until the oldest minute of its budget drops out (plus a second), or a
    /// minute when we never saw a reset time. Forgets what it saw, since the picture is stale after the wait.
    pub fn blocked(&self, method: &str) -> Duration {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.entry(method.to_string()).or_default();
        let t = now();
        if let Some(until) = s.blocked_until.filter(|u| *u > t) {
            return Duration::from_secs_f64(until - t); // the same block, met by another request
        }
        let wait = s.reset_at.map(|r| r + 1.0 - t).filter(|w| *w > 0.0 && *w < MAX_WAIT).unwrap_or(60.0);
        s.blocked_until = Some(t + wait);
        s.used = 0.0; // stale after the wait; the next answers tell again
        Duration::from_secs_f64(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slows_down_near_the_limit_and_waits_for_the_reset() {
        let b = OperatingBudget::new(Duration::from_secs(10));
        assert!(b.wait_before("m", 0).is_none(), "nothing seen, nothing to wait for");
        let reset = now() + 5.0;
        b.observe("m", &json!({"operating": 3.0, "operating_reset_at": reset}));
        b.observe("m", &json!({"operating": 4.0, "operating_reset_at": reset})); // one request ≈ 1 s
        assert!(b.wait_before("m", 0).is_none());
        assert!(b.wait_before("m", 6).is_some(), "seven requests of 1 s would pass the limit");
        b.observe("m", &json!({"operating": 9.5, "operating_reset_at": reset}));
        let w = b.wait_before("m", 0).expect("near the limit");
        assert!(w > Duration::from_secs(4) && w <= Duration::from_secs(6), "{w:?}");
        assert!(b.wait_before("other", 0).is_none());
        let blocked = b.blocked("m");
        assert!(blocked > Duration::from_secs(4) && blocked <= Duration::from_secs(6));
        // other requests that met the same block wait for the same moment, not a fresh default
        assert!(b.blocked("m") <= blocked);
        assert_eq!(b.blocked("never-seen"), Duration::from_secs(60));
    }
}
