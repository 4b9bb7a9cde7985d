//! The portal client: transport (reqwest, JSON POST), the response envelope, retries with backoff and jitter,
//! the client-side leaky bucket, and `batch`.
//!
//! Nothing here formats the method URL into a message: it carries the webhook code.

pub mod auth;
pub mod limiter;
pub mod operating;
pub mod php_query;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::PortalError;
use crate::secret::redact;
use auth::{Auth, AuthConfig};
use limiter::LeakyBucket;
use operating::OperatingBudget;

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Requests per second the bucket drains (portal: 2 standard, 5 enterprise).
    pub rate: f64,
    /// Bucket size (portal: 50 standard, 250 enterprise).
    pub burst: f64,
    /// Retries of a transient failure before giving up.
    pub max_retries: u32,
    /// Per-request timeout (the cloud cuts requests at 60 s).
    pub timeout: Duration,
    /// First backoff delay; doubles per attempt, with jitter, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// The portal's operating-time budget per method (cloud: 480 s per 10 minutes).
    pub operating_limit: Duration,
    /// How long, in all, a run may wait for blocked methods (429 `OPERATION_TIME_LIMIT`) to be released.
    pub max_pause: Duration,
}

impl ClientConfig {
    /// The limits of a Bitrix24 plan: `standard` (bucket 50, 2 requests/s) or `enterprise` (250, 5/s).
    pub fn for_plan(plan: &str) -> Option<ClientConfig> {
        let (rate, burst) = match plan {
            "standard" => (2.0, 50.0),
            "enterprise" => (5.0, 250.0),
            _ => return None,
        };
        Some(ClientConfig { rate, burst, ..ClientConfig::default() })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rate: 2.0,
            burst: 50.0,
            max_retries: 8,
            timeout: Duration::from_secs(75),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            operating_limit: Duration::from_secs(480),
            max_pause: Duration::from_secs(20 * 60),
        }
    }
}

/// What the client did, for progress and the summary.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    /// Milliseconds spent waiting for the operating budget (slowing down before a block, or after one).
    pub paused_ms: AtomicU64,
    /// 429 `OPERATION_TIME_LIMIT` answers met (top level or inside a batch).
    pub operating_blocks: AtomicU64,
}

/// A response body as parsed off the wire; `result` stays raw JSON text until someone needs it.
#[derive(Debug, Deserialize)]
struct RawEnvelope {
    result: Option<Box<RawValue>>,
    error: Option<Value>,
    error_description: Option<String>,
    next: Option<u64>,
    total: Option<u64>,
    time: Option<Value>,
}

/// A success envelope: `{"result": …, "next": n, "total": n, "time": {…}}`. `result` is kept as raw JSON, so
/// large pages are not turned into a `Value` tree on the fetch path.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub result: Box<RawValue>,
    pub next: Option<u64>,
    pub total: Option<u64>,
    pub time: Option<Value>,
}

impl Envelope {
    /// The result as a JSON value (for small results such as field metadata).
    pub fn value(&self) -> Result<Value, PortalError> {
        serde_json::from_str(self.result.get())
            .map_err(|e| PortalError::Protocol { method: "-".into(), status: 200, message: format!("bad result: {e}") })
    }
}

/// The outcome of one `batch` request: per-command results (raw JSON) and errors.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub results: HashMap<String, Box<RawValue>>,
    /// command key → (error code, description)
    pub errors: HashMap<String, (String, String)>,
    /// command key → `total` of a list command (0 with `start=-1`)
    pub totals: HashMap<String, u64>,
    /// command key → `next` of a list command that has more pages
    pub nexts: HashMap<String, u64>,
}

pub struct PortalClient {
    http: reqwest::Client,
    auth: Auth,
    bucket: LeakyBucket,
    budget: OperatingBudget,
    cfg: ClientConfig,
    stats: Arc<ClientStats>,
}

/// How one failed attempt should be handled.
enum Failure {
    /// Worth another attempt.
    Transient(String),
    /// The portal's bucket is full: re-sync ours, then retry.
    RateLimited(String),
    /// The method's operating budget is spent: wait for its reset, then retry.
    Blocked(String),
    /// The portal moved (3xx with `Location`): follow it and send again.
    Redirect(String),
    /// 401 `expired_token` on a request made with this token generation: refresh, then send again.
    Expired(u64),
    /// Give up now.
    Fatal(PortalError),
}

fn is_auth_code(code: &str) -> bool {
    matches!(
        code,
        "NO_AUTH_FOUND" | "INVALID_CREDENTIALS" | "expired_token" | "invalid_token" | "WRONG_AUTH_TYPE" | "AUTH_ERROR"
    )
}

/// Codes that mean "not allowed", whatever the status.
fn is_permission(code: &str, description: &str) -> bool {
    matches!(code, "ACCESS_DENIED" | "insufficient_scope" | "user_access_error" | "allowed_only_intranet_user" | "PORTAL_DELETED")
        || description.trim_end_matches('.').eq_ignore_ascii_case("Access denied")
}

/// Is a per-command or top-level error code worth retrying?
pub fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "QUERY_LIMIT_EXCEEDED" | "OPERATION_TIME_LIMIT" | "INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER" | "ERROR_CORE"
    )
}

/// Turns a portal error body into the typed error, or says it is transient.
pub fn classify_api_error(method: &str, status: u16, code: &str, description: &str, attempts: u32) -> Option<PortalError> {
    let (m, c, d) = (method.to_string(), code.to_string(), redact(description));
    if status == 401 || is_auth_code(code) {
        return Some(PortalError::Auth { method: m, status, code: c, description: d });
    }
    if status == 403 || is_permission(code, description) {
        return Some(PortalError::Permission { method: m, status, code: c, description: d });
    }
    if code == "OVERLOAD_LIMIT" {
        return Some(PortalError::Api {
            method: m,
            status,
            code: c,
            description: format!("{d} — the portal's administrators blocked REST access by hand; retrying will not help until they lift it"),
            attempts,
        });
    }
    if is_transient_code(code) || status >= 500 || status == 429 {
        return None;
    }
    Some(PortalError::Api { method: m, status, code: c, description: d, attempts })
}

impl PortalClient {
    pub fn new(auth: AuthConfig, cfg: ClientConfig, stats: Arc<ClientStats>) -> Result<Self, PortalError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("b24-export/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PortalError::Transport { method: "-".into(), message: redact(&e.without_url().to_string()), attempts: 0 })?;
        Ok(PortalClient {
            bucket: LeakyBucket::new(cfg.rate, cfg.burst),
            budget: OperatingBudget::new(cfg.operating_limit),
            http,
            auth: Auth::new(auth),
            cfg,
            stats,
        })
    }

    /// The portal as it may be shown (never a secret).
    pub fn portal_display(&self) -> String {
        self.auth.display()
    }

    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    pub fn budget(&self) -> &OperatingBudget {
        &self.budget
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Waits (and accounts for it) while the portal has blocked `method`.
    pub async fn pause(&self, wait: Duration, why: &str) {
        tracing::warn!("{why}; pausing {:.0}s", wait.as_secs_f64());
        self.stats.paused_ms.fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }

    /// Whether the run may still wait for operating-budget resets.
    pub fn may_pause(&self) -> bool {
        Duration::from_millis(self.stats.paused_ms.load(Ordering::Relaxed)) < self.cfg.max_pause
    }

    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.cfg.base_backoff.as_secs_f64() * 2f64.powi(attempt.min(16) as i32);
        let capped = exp.min(self.cfg.max_backoff.as_secs_f64());
        Duration::from_secs_f64(capped * (0.5 + 0.5 * fastrand::f64()))
    }

    /// One attempt: send, read, parse.
    async fn attempt(&self, method: &str, params: &Value, attempts: u32) -> Result<Envelope, Failure> {
        self.bucket.acquire().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (url, body, generation) = self.auth.request(method, params);
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Transient(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let location = resp.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("").to_string();
            if location.is_empty() {
                return Err(Failure::Fatal(PortalError::Protocol { method: method.into(), status, message: "a redirect without a Location".into() }));
            }
            return Err(Failure::Redirect(location));
        }
        let bytes = resp.bytes().await.map_err(|e| Failure::Transient(describe_reqwest(&e)))?;
        let env: RawEnvelope = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(_) => {
                let what = format!("HTTP {status} with a body that is not a JSON object ({} bytes)", bytes.len());
                if status >= 500 || status == 200 || status == 429 {
                    return Err(Failure::Transient(what)); // e.g. a truncated body: never an empty page
                }
                return Err(Failure::Fatal(PortalError::Protocol { method: method.into(), status, message: what }));
            }
        };
        if let Some(code) = env.error {
            let code = code.as_str().map(str::to_string).unwrap_or_else(|| code.to_string());
            let desc = env.error_description.unwrap_or_default();
            if code == "QUERY_LIMIT_EXCEEDED" {
                return Err(Failure::RateLimited(format!("{code} ({desc}) [HTTP {status}]")));
            }
            if code == "OPERATION_TIME_LIMIT" {
                return Err(Failure::Blocked(format!("{code} ({desc}) [HTTP {status}]")));
            }
            // `invalid_token` too: a request sent just before another one's refresh rotated the token sees the old
            // token refused before this client has stored the new one; the refresh path waits for that refresh
            // (one lock) and repeats the call with the new token, or refreshes itself if nobody did
            if (code == "expired_token" || code == "invalid_token") && self.auth.is_oauth() {
                return Err(Failure::Expired(generation));
            }
            if status == 401 && self.auth.is_oauth() && generation != self.auth.generation() {
                return Err(Failure::Expired(generation)); // sent with a token that was rotated meanwhile
            }
            return match classify_api_error(method, status, &code, &desc, attempts) {
                Some(e) => Err(Failure::Fatal(e)),
                None => Err(Failure::Transient(format!("{code} ({}) [HTTP {status}]", redact(&desc)))),
            };
        }
        if !(200..300).contains(&status) {
            let what = format!("unexpected HTTP {status} without an error code");
            return Err(if status >= 500 { Failure::Transient(what) } else {
                Failure::Fatal(PortalError::Protocol { method: method.into(), status, message: what })
            });
        }
        let Some(result) = env.result else {
            return Err(Failure::Transient(format!("HTTP {status} without `result`")));
        };
        if let Some(t) = &env.time {
            if method != "batch" {
                self.budget.observe(method, t);
            }
        }
        Ok(Envelope { result, next: env.next, total: env.total, time: env.time })
    }

    /// Calls a REST method with a JSON body, retrying transient failures.
    pub async fn call(&self, method: &str, params: &Value) -> Result<Envelope, PortalError> {
        let mut attempts = 0u32;
        let (mut redirects, mut refreshes) = (0u32, 0u32);
        loop {
            attempts += 1;
            let reason = match self.attempt(method, params, attempts).await {
                Ok(env) => return Ok(env),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::RateLimited(r)) => {
                    self.bucket.saturate();
                    r
                }
                Err(Failure::Blocked(r)) => {
                    // not a failure of ours: the method's budget is spent until its reset
                    self.stats.operating_blocks.fetch_add(1, Ordering::Relaxed);
                    if !self.may_pause() {
                        return Err(PortalError::Api {
                            method: method.into(),
                            status: 429,
                            code: "OPERATION_TIME_LIMIT".into(),
                            description: format!("{r}; waited {:.0}s in all for the budget to reset", self.cfg.max_pause.as_secs_f64()),
                            attempts,
                        });
                    }
                    attempts -= 1;
                    self.pause(self.budget.blocked(method), &format!("{method}: {r}")).await;
                    continue;
                }
                Err(Failure::Redirect(location)) => {
                    redirects += 1;
                    if redirects > 5 {
                        return Err(PortalError::Protocol { method: method.into(), status: 302, message: "too many redirects".into() });
                    }
                    let moved = self.auth.follow(&location).map_err(|e| match e {
                        PortalError::Protocol { status, message, .. } => PortalError::Protocol { method: method.into(), status, message },
                        other => other,
                    })?;
                    tracing::warn!("the portal moved to {moved}; following it (update your webhook/portal URL)");
                    attempts -= 1;
                    continue;
                }
                Err(Failure::Expired(generation)) => {
                    refreshes += 1;
                    if refreshes > 2 || !self.auth.refresh(&self.http, generation).await? {
                        return Err(PortalError::Auth {
                            method: method.into(),
                            status: 401,
                            code: "expired_token".into(),
                            description: "The access token provided has expired, and a fresh one expired too".into(),
                        });
                    }
                    attempts -= 1;
                    continue;
                }
                Err(Failure::Transient(r)) => r,
            };
            if attempts > self.cfg.max_retries {
                return Err(PortalError::Transport { method: method.into(), message: format!("gave up: {reason}"), attempts });
            }
            let delay = self.backoff(attempts - 1);
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("{method}: {reason}; retry {attempts}/{} in {:.1}s", self.cfg.max_retries, delay.as_secs_f64());
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends up to 50 commands (`key`, `method?query`) in one `batch` request (`halt=0`).
    pub async fn batch(&self, cmds: &[(String, String)]) -> Result<BatchOutcome, PortalError> {
        debug_assert!(cmds.len() <= 50);
        let cmd: Map<String, Value> = cmds.iter().map(|(k, c)| (k.clone(), Value::String(c.clone()))).collect();
        let params = serde_json::json!({"halt": 0, "cmd": cmd});
        let env = self.call("batch", &params).await?;
        let bad = |m: String| PortalError::Protocol { method: "batch".into(), status: 200, message: m };
        let inner: BatchInner = serde_json::from_str(env.result.get()).map_err(|e| bad(format!("unreadable batch result: {e}")))?;
        if let Some(Value::Object(times)) = &inner.result_time {
            // each command reports the method's running total: observe the latest one per method, once
            let mut latest: HashMap<String, &Value> = HashMap::new();
            for (key, cmd) in cmds {
                if let Some(t) = times.get(key) {
                    let method = cmd.split_once('?').map_or(cmd.as_str(), |(m, _)| m).to_ascii_lowercase();
                    let op = |v: &Value| v.get("operating").and_then(Value::as_f64).unwrap_or(0.0);
                    if latest.get(&method).is_none_or(|prev| op(t) >= op(prev)) {
                        latest.insert(method, t);
                    }
                }
            }
            for (method, t) in latest {
                self.budget.observe(&method, t);
            }
        }
        let mut out = BatchOutcome::default();
        // PHP serializes an empty map as [] and a map with keys 0..n as a list
        match inner.result {
            Some(raw) if raw.get().trim_start().starts_with('{') => {
                let m: HashMap<String, Box<RawValue>> = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
                out.results = m;
            }
            Some(raw) => {
                let v: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
                out.results = v.into_iter().enumerate().map(|(i, r)| (i.to_string(), r)).collect();
            }
            None => {}
        }
        let errors = match inner.result_error {
            Some(Value::Object(m)) => m.into_iter().collect::<Vec<_>>(),
            Some(Value::Array(a)) => a.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            _ => Vec::new(),
        };
        let numbers = |v: &Option<Value>| -> HashMap<String, u64> {
            match v {
                Some(Value::Object(m)) => m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect(),
                _ => HashMap::new(),
            }
        };
        out.totals = numbers(&inner.result_total);
        out.nexts = numbers(&inner.result_next);
        for (k, e) in errors {
            let code = e.get("error").map(|c| c.as_str().map(str::to_string).unwrap_or_else(|| c.to_string())).unwrap_or_default();
            let desc = e.get("error_description").and_then(Value::as_str).unwrap_or("").to_string();
            out.errors.insert(k, (code, desc));
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
struct BatchInner {
    result: Option<Box<RawValue>>,
    result_error: Option<Value>,
    result_total: Option<Value>,
    result_next: Option<Value>,
    result_time: Option<Value>,
}

/// A transport error without the URL (which carries the webhook code).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the response"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    redact(&msg)
}
