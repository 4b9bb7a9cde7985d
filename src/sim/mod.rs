//! The simulated Bitrix24 portal: a real HTTP server on loopback that speaks the wire protocol of
//! `shared/bitrix24-api.md` for `crm.lead.fields`, `crm.lead.list` and `batch`, with the leaky-bucket limit.
//!
//! Routes: `/rest/{user}/{code}/{method}[.json]`. Every response carries a `time` object.

pub mod data;
pub mod entities;
pub mod filter;
pub mod item;
pub mod params;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::entity::Entity;
use data::{Encoding, FieldDef, IdLayout, Truth};
use filter::{Cond, Key};

/// Options of a simulated portal.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub leads: usize,
    /// Deals, contacts and companies (`crm.deal.list`, …, `crm.item.list` entityTypeId 2–4).
    pub deals: usize,
    pub contacts: usize,
    pub companies: usize,
    pub seed: u64,
    pub user_id: u32,
    pub webhook_code: String,
    /// Portal UTC offset in seconds (dates and datetimes are written in it).
    pub offset_secs: i32,
    /// Boolean UFs as JSON `true`/`false` instead of `"1"`/`"0"`.
    pub bool_uf_json: bool,
    /// Leaky bucket: requests above `burst` in the bucket get 503 `QUERY_LIMIT_EXCEEDED`.
    pub burst: f64,
    /// Leaky bucket drain rate, requests per second.
    pub drain_per_sec: f64,
    /// A start beyond the end returns page 1 again (CAllDBResult without checkOutOfRange).
    pub out_of_range_first_page: bool,
    /// Added to every request before it is answered.
    pub latency: Duration,
    /// After this many HTTP requests every request gets 500 `INTERNAL_SERVER_ERROR` (a portal that goes down).
    pub fail_after: Option<u64>,
    /// Serve a few malformed values (see [`bad_value_at`]) to exercise the exporter's bad-value policy.
    pub bad_values: bool,
    /// How the lead IDs are spread.
    pub id_layout: IdLayout,
    /// Server time one list call costs: the request is answered that much later, and it is charged to the
    /// method's operating budget (a batch of 50 list calls costs 50×).
    pub list_cost: Duration,
    /// Per-method operating budget within `operating_window` (cloud: 480 s per 10 min); `None` = off.
    pub operating_limit: Option<Duration>,
    /// The window of the operating budget, kept in 10 baskets (cloud: 10 minutes).
    pub operating_window: Duration,
    /// Every n-th command inside a batch fails with `INTERNAL_SERVER_ERROR` in `result_error`.
    pub command_error_every: Option<u64>,
    /// Every n-th list call, one lead is deleted, one inserted and one updated (leads changing mid-run).
    pub mutate_every: Option<u64>,
    /// The webhook lacks the `user` scope: `user.get` answers 401 `insufficient_scope`.
    pub no_user_scope: bool,
    /// Extra server time of a counted page (`start >= 0`) per matching row: the COUNT(*) that `start=-1` avoids
    /// (docs: 2.39 M rows took 49.9 s with the count, 0.097 s without, ≈ 21 µs per row). Off by default.
    pub count_cost_per_row: Duration,
    /// Injected faults (all off by default; combinable).
    pub faults: Faults,
    /// OAuth access instead of (besides) the webhook: `/rest/{method}` with an `auth` token.
    pub oauth: Option<OAuthConfig>,
}

/// Faults the portal and the network inject, each with its own rate (0.0–1.0) of HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// 500 `INTERNAL_SERVER_ERROR`.
    pub error_500: f64,
    /// The connection breaks in the middle of the response body.
    pub drop_connection: f64,
    /// The response comes `slow_delay` late (set it beyond the client's timeout).
    pub slow: f64,
    pub slow_delay: Duration,
    /// 200 with a truncated, invalid JSON body.
    pub truncated_body: f64,
    /// After this many requests, every request gets 503 `OVERLOAD_LIMIT` (a manual block).
    pub overload_after: Option<u64>,
    /// The portal moved: requests that do not name this `host:port` get a 302 to it.
    pub redirect_to: Option<String>,
}

/// The OAuth side of the simulated portal: its app, its current token pair, and how long a token lives.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
    /// An access token expires after this many requests (401 `expired_token`).
    pub token_requests: u64,
}

struct OAuthState {
    access: String,
    refresh: String,
    used: u64,
    generation: u64,
}

impl SimConfig {
    /// The enterprise plan's limits: bucket 250, drain 5/s.
    pub fn enterprise(mut self) -> Self {
        self.burst = 250.0;
        self.drain_per_sec = 5.0;
        self
    }
}

/// The malformed value served at `position` when [`SimConfig::bad_values`] is on: (field, raw value).
pub fn bad_value_at(position: usize) -> Option<(&'static str, Value)> {
    Some(match position % 997 {
        10 => ("UF_CRM_1706782596092", json!("abc")),                   // text in an integer
        20 => ("DATE_MODIFY", json!("2021-13-45T10:00:00+02:00")),      // impossible date-time
        30 => ("OPPORTUNITY", json!("12.345")),                         // money with 3 decimals
        40 => ("UF_CRM_1710000000011", json!("not-a-list")),            // a string where a list is due
        50 => ("OPENED", json!("maybe")),                               // not a flag
        60 => ("UF_CRM_1710000000005", json!("12.5.5|USD")),            // broken money
        70 => ("BIRTHDATE", json!({"auth": "x"})),                      // an object where a date is due
        _ => return None,
    })
}

/// The malformed value a deal at `position` gets when [`SimConfig::bad_values`] is on.
pub fn bad_deal_value_at(position: usize) -> Option<(&'static str, Value)> {
    (position % 499 == 30).then(|| ("OPPORTUNITY", json!("12.345"))) // money with 3 decimals
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            leads: 1000,
            deals: 600,
            contacts: 400,
            companies: 120,
            seed: 42,
            user_id: 1,
            webhook_code: "simwebhook0code".into(),
            offset_secs: 2 * 3600,
            bool_uf_json: false,
            burst: 50.0,
            drain_per_sec: 2.0,
            out_of_range_first_page: true,
            latency: Duration::ZERO,
            fail_after: None,
            bad_values: false,
            id_layout: IdLayout::Realistic,
            list_cost: Duration::ZERO,
            operating_limit: Some(Duration::from_secs(480)),
            operating_window: Duration::from_secs(600),
            command_error_every: None,
            mutate_every: None,
            no_user_scope: false,
            count_cost_per_row: Duration::ZERO,
            faults: Faults::default(),
            oauth: None,
        }
    }
}

/// Counters of what the portal saw.
#[derive(Debug, Default)]
pub struct SimStats {
    pub http_requests: AtomicU64,
    pub rejected_503: AtomicU64,
    pub rejected_401: AtomicU64,
    pub rejected_429: AtomicU64,
    pub list_calls: AtomicU64,
    pub command_errors: AtomicU64,
    pub mutations: AtomicU64,
    /// Faults injected: 500s, dropped connections, slow answers, truncated bodies, overload, redirects.
    pub faults_injected: AtomicU64,
    pub token_refreshes: AtomicU64,
}

/// The portal's records of one entity: the live IDs (ascending) and what changed since the start.
struct Store {
    entity: Entity,
    sizes: entities::Sizes,
    live: Vec<i64>,
    /// The IDs at start: a lead's position among them spreads creation dates (new leads go last).
    original: Vec<i64>,
    /// Updated leads: id → number of updates.
    versions: HashMap<i64, u32>,
    /// DATE_MODIFY of leads changed or created since the start (unix seconds): the portal stamps "now".
    modified: HashMap<i64, i64>,
    /// The portal's clock for changes: later than every generated DATE_MODIFY, advancing with each change.
    clock: i64,
    next_id: i64,
}

impl Store {
    fn truth(&self, seed: u64, id: i64) -> Vec<Truth> {
        let n = self.original.len();
        let pos = self.original.binary_search(&id).unwrap_or(n);
        let mut t = entities::truth(self.entity, seed, id, pos, n.max(1), self.sizes);
        let fields = entities::fields(self.entity);
        if let Some(v) = self.versions.get(&id) {
            apply_version(fields, &mut t, *v);
        }
        if let Some(m) = self.modified.get(&id) {
            for (def, val) in fields.iter().zip(t.iter_mut()) {
                if def.name == "DATE_MODIFY" {
                    *val = Truth::DateTime(*m);
                }
            }
        }
        t
    }

    fn tick(&mut self) -> i64 {
        self.clock += 7;
        self.clock
    }

    fn update(&mut self, id: i64) {
        *self.versions.entry(id).or_default() += 1;
        let now = self.tick();
        self.modified.insert(id, now);
    }

    fn insert(&mut self, gap: i64) -> i64 {
        let id = self.next_id;
        self.next_id += 1 + gap;
        self.live.push(id);
        let now = self.tick();
        self.modified.insert(id, now);
        id
    }
}

fn apply_version(fields: &[FieldDef], t: &mut [Truth], v: u32) {
    for (def, val) in fields.iter().zip(t.iter_mut()) {
        match (def.name, val) {
            ("TITLE", Truth::Str(s)) => *s = format!("{s} (v{v})"),
            ("LAST_NAME", Truth::Str(s)) if !fields.iter().any(|f| f.name == "TITLE") => *s = format!("{s} (v{v})"),
            // every other edit moves the lead to another stage (and, partitioned by status_id, another folder)
            ("STATUS_ID", Truth::Str(s)) if v % 2 == 1 => *s = if s == "IN_PROCESS" { "NEW".into() } else { "IN_PROCESS".into() },
            ("DATE_MODIFY", Truth::DateTime(secs)) => *secs += 60 * v as i64,
            _ => {}
        }
    }
    // a deal moves to another stage of its funnel on every other edit (and, partitioned by stage_id, to another
    // folder); it is then in progress
    if v % 2 == 1 {
        let at = |name: &str| fields.iter().position(|f| f.name == name);
        if let (Some(stage), Some(semantic), Some(closed)) = (at("STAGE_ID"), at("STAGE_SEMANTIC_ID"), at("CLOSED")) {
            if let Truth::Str(s) = &t[stage] {
                let (funnel, code) = s.rsplit_once(':').map(|(f, c)| (format!("{f}:"), c)).unwrap_or((String::new(), s.as_str()));
                let next = if code == "EXECUTING" { "NEW" } else { "EXECUTING" };
                t[stage] = Truth::Str(format!("{funnel}{next}"));
                t[semantic] = Truth::Str("P".into());
                t[closed] = Truth::Bool(false);
            }
        }
    }
}

/// Per-method operating time in baskets: (basket index, seconds).
#[derive(Default)]
struct Operating {
    baskets: HashMap<String, Vec<(i64, f64)>>,
}

struct Bucket {
    level: f64,
    at: Instant,
}

/// One store per entity, in [`Entity::ALL`] order.
type Stores = Arc<Vec<RwLock<Store>>>;

fn store_of(stores: &Stores, entity: Entity) -> &RwLock<Store> {
    &stores[Entity::ALL.iter().position(|e| *e == entity).expect("every entity has a store")]
}

struct State {
    cfg: SimConfig,
    enc: Encoding,
    stores: Stores,
    bucket: Mutex<Bucket>,
    operating: Mutex<Operating>,
    commands: AtomicU64,
    oauth: Arc<Mutex<Option<OAuthState>>>,
    stats: Arc<SimStats>,
}

/// A running simulated portal. Dropping it stops the server.
pub struct SimPortal {
    addr: SocketAddr,
    cfg: SimConfig,
    stores: Stores,
    oauth_state: Arc<Mutex<Option<OAuthState>>>,
    stats: Arc<SimStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimPortal {
    /// Starts the portal on its own thread and runtime, bound to `127.0.0.1:port` (0 = any free port).
    pub fn start(mut cfg: SimConfig, port: u16) -> std::io::Result<SimPortal> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        if let Some(host) = &mut cfg.faults.redirect_to {
            if !host.contains(':') {
                *host = format!("{host}:{}", addr.port()); // the new domain, on the same server
            }
        }
        let sizes = entities::Sizes { contacts: cfg.contacts, companies: cfg.companies, leads: cfg.leads };
        let stores: Stores = Arc::new(
            Entity::ALL
                .into_iter()
                .map(|entity| {
                    let (n, seed) = match entity {
                        Entity::Lead => (cfg.leads, cfg.seed),
                        Entity::Deal => (cfg.deals, cfg.seed ^ 0x2),
                        Entity::Contact => (cfg.contacts, cfg.seed ^ 0x3),
                        Entity::Company => (cfg.companies, cfg.seed ^ 0x4),
                    };
                    let layout = if entity == Entity::Lead { cfg.id_layout } else { IdLayout::Realistic };
                    let ids = data::generate_ids(n, seed, layout);
                    let next_id = ids.last().copied().unwrap_or(0) + 1;
                    RwLock::new(Store {
                        entity,
                        sizes,
                        live: ids.clone(),
                        original: ids,
                        versions: HashMap::new(),
                        modified: HashMap::new(),
                        clock: data::LATEST_MODIFY + 3600,
                        next_id,
                    })
                })
                .collect(),
        );
        let stats = Arc::new(SimStats::default());
        let oauth_state = Arc::new(Mutex::new(cfg.oauth.as_ref().map(|o| OAuthState {
            access: o.access_token.clone(),
            refresh: o.refresh_token.clone(),
            used: 0,
            generation: 0,
        })));
        let state = Arc::new(State {
            enc: Encoding { offset_secs: cfg.offset_secs, bool_uf_json: cfg.bool_uf_json },
            cfg: cfg.clone(),
            stores: stores.clone(),
            bucket: Mutex::new(Bucket { level: 0.0, at: Instant::now() }),
            operating: Mutex::new(Operating::default()),
            commands: AtomicU64::new(0),
            oauth: oauth_state.clone(),
            stats: stats.clone(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sim-portal".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("sim runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
                    let state = state.clone();
                    async move { handle(state, uri, headers, body).await }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        })?;
        Ok(SimPortal { addr, cfg, stores, oauth_state, stats, shutdown: Some(tx), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The webhook URL of this portal (plain http on loopback).
    pub fn webhook_url(&self) -> String {
        format!("http://{}/rest/{}/{}/", self.addr, self.cfg.user_id, self.cfg.webhook_code)
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The OAuth app's current (access, refresh) pair, after any rotation.
    pub fn oauth_tokens(&self) -> Option<(String, String)> {
        self.oauth_state.lock().expect("oauth").as_ref().map(|s| (s.access.clone(), s.refresh.clone()))
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The IDs of the leads the portal has now, ascending.
    pub fn ids(&self) -> Vec<i64> {
        self.ids_of(Entity::Lead)
    }

    /// The IDs of an entity's records the portal has now, ascending.
    pub fn ids_of(&self, entity: Entity) -> Vec<i64> {
        store_of(&self.stores, entity).read().expect("store").live.clone()
    }

    /// The IDs the portal had when it started.
    pub fn initial_ids(&self) -> Vec<i64> {
        store_of(&self.stores, Entity::Lead).read().expect("store").original.clone()
    }

    /// Changes between runs, as users make them: a new lead (created and modified "now"), an edit of an existing
    /// lead (a new TITLE, DATE_MODIFY "now"), a deletion. The portal's clock moves forward with every change.
    pub fn insert_lead(&self) -> i64 {
        self.insert(Entity::Lead)
    }

    pub fn update_lead(&self, id: i64) {
        self.update(Entity::Lead, id);
    }

    pub fn delete_lead(&self, id: i64) {
        self.delete(Entity::Lead, id);
    }

    /// The same changes for any entity.
    pub fn insert(&self, entity: Entity) -> i64 {
        store_of(&self.stores, entity).write().expect("store").insert(fastrand::i64(0..5))
    }

    pub fn update(&self, entity: Entity, id: i64) {
        store_of(&self.stores, entity).write().expect("store").update(id);
    }

    pub fn delete(&self, entity: Entity, id: i64) {
        store_of(&self.stores, entity).write().expect("store").live.retain(|&x| x != id);
    }

    /// Moves the portal's clock forward (time passing between two scheduled runs).
    pub fn advance_clock(&self, secs: i64) {
        for s in self.stores.iter() {
            s.write().expect("store").clock += secs;
        }
    }

    /// The typed ground truth of the lead at `position` in [`SimPortal::ids`], in [`data::FIELDS`] order.
    pub fn truth_at(&self, position: usize) -> Vec<Truth> {
        self.truth_of(Entity::Lead, position)
    }

    /// The typed ground truth of an entity's record at `position` in [`SimPortal::ids_of`], in
    /// [`entities::fields`] order.
    pub fn truth_of(&self, entity: Entity, position: usize) -> Vec<Truth> {
        let store = store_of(&self.stores, entity).read().expect("store");
        store.truth(self.cfg.seed, store.live[position])
    }

    /// Blocks until the server is stopped (for `b24-export sim`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimPortal {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn time_object(start: f64, enc: &Encoding, operating: Option<(f64, i64)>) -> Value {
    let finish = now_f64();
    let off = chrono::FixedOffset::east_opt(enc.offset_secs).expect("offset");
    let fmt = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .map(|d| d.with_timezone(&off).format("%Y-%m-%dT%H:%M:%S%:z").to_string())
            .unwrap_or_default()
    };
    let mut t = json!({
        "start": start, "finish": finish, "duration": finish - start, "processing": finish - start,
        "date_start": fmt(start), "date_finish": fmt(finish)
    });
    match operating {
        Some((used, reset_at)) => {
            t["operating_reset_at"] = json!(reset_at);
            t["operating"] = json!(used);
        }
        None => t["operating"] = json!(0),
    }
    t
}

impl State {
    fn basket_len(&self) -> f64 {
        (self.cfg.operating_window.as_secs_f64() / 10.0).max(0.001)
    }

    /// (seconds used in the window, when the oldest basket drops out) for a method; `None` when the limiter is off.
    fn operating_of(&self, method: &str) -> Option<(f64, i64)> {
        self.cfg.operating_limit?;
        let len = self.basket_len();
        let now = (now_f64() / len).floor() as i64;
        let mut op = self.operating.lock().expect("operating");
        let baskets = op.baskets.entry(method.to_string()).or_default();
        baskets.retain(|(b, _)| *b > now - 10);
        let used: f64 = baskets.iter().map(|(_, s)| s).sum();
        let oldest = baskets.iter().map(|(b, _)| *b).min().unwrap_or(now);
        Some((used, ((oldest + 10) as f64 * len).ceil() as i64))
    }

    /// Refuses a call of a method whose budget is spent (checked before the call, as the portal does).
    fn check_operating(&self, method: &str) -> Result<(), ApiErr> {
        let (Some(limit), Some((used, _))) = (self.cfg.operating_limit, self.operating_of(method)) else { return Ok(()) };
        if used >= limit.as_secs_f64() {
            self.stats.rejected_429.fetch_add(1, AtomicOrdering::Relaxed);
            return Err(ApiErr(StatusCode::TOO_MANY_REQUESTS, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.".into()));
        }
        Ok(())
    }

    fn charge(&self, method: &str, cost: Duration) {
        if self.cfg.operating_limit.is_none() || cost.is_zero() {
            return;
        }
        let b = (now_f64() / self.basket_len()).floor() as i64;
        let mut op = self.operating.lock().expect("operating");
        let baskets = op.baskets.entry(method.to_string()).or_default();
        match baskets.last_mut() {
            Some((last, secs)) if *last == b => *secs += cost.as_secs_f64(),
            _ => baskets.push((b, cost.as_secs_f64())),
        }
    }

    /// Leads changing mid-run: delete one, insert one, update one.
    fn mutate(&self, call_no: u64) {
        let mut st = store_of(&self.stores, Entity::Lead).write().expect("store");
        if st.live.len() > 2 {
            let victim = (call_no as usize * 7919) % st.live.len();
            st.live.remove(victim);
            let updated = st.live[(call_no as usize * 104_729) % st.live.len()];
            st.update(updated);
        }
        st.insert((call_no % 3) as i64);
        self.stats.mutations.fetch_add(1, AtomicOrdering::Relaxed);
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// A REST error: HTTP status, `error`, `error_description`.
#[derive(Debug, Clone)]
pub struct ApiErr(pub StatusCode, pub &'static str, pub String);

impl ApiErr {
    fn body(&self) -> Value {
        json!({"error": self.1, "error_description": self.2})
    }
}

/// A deterministic draw in [0, 1) for request `n` and fault `salt`.
fn draw(seed: u64, n: u64, salt: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn api_error(status: StatusCode, code: &str, description: &str) -> Response {
    json_response(status, &json!({"error": code, "error_description": description}))
}

/// The OAuth token endpoint (`GET /oauth/token/?grant_type=refresh_token&…`, §9): rotates the pair.
fn token_endpoint(state: &State, uri: &Uri) -> Response {
    let q = params::parse_php_query(uri.query().unwrap_or(""));
    let get = |k: &str| q.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (Some(cfg), mut guard) = (state.cfg.oauth.as_ref(), state.oauth.lock().expect("oauth")) else {
        return api_error(StatusCode::NOT_FOUND, "ERROR_METHOD_NOT_FOUND", "Method not found!");
    };
    let Some(st) = guard.as_mut() else { return api_error(StatusCode::NOT_FOUND, "ERROR_METHOD_NOT_FOUND", "Method not found!") };
    if get("grant_type") != "refresh_token" {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request", "Unsupported grant type");
    }
    if get("client_id") != cfg.client_id || get("client_secret") != cfg.client_secret {
        return api_error(StatusCode::BAD_REQUEST, "invalid_client", "Invalid client");
    }
    if get("refresh_token") != st.refresh {
        return api_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token");
    }
    st.generation += 1;
    st.access = format!("simaccess{}x{:08x}", st.generation, draw(state.cfg.seed, st.generation, 7).to_bits() as u32);
    st.refresh = format!("simrefresh{}x{:08x}", st.generation, draw(state.cfg.seed, st.generation, 8).to_bits() as u32);
    st.used = 0;
    state.stats.token_refreshes.fetch_add(1, AtomicOrdering::Relaxed);
    json_response(
        StatusCode::OK,
        &json!({"access_token": st.access, "client_endpoint": "http://127.0.0.1/rest/", "domain": "oauth.bitrix.info",
                "expires": (now_f64() as i64) + 3600, "expires_in": 3600, "member_id": "a223c6b3710f85df22e9377d6c4f7553",
                "refresh_token": st.refresh, "scope": "crm", "server_endpoint": "http://127.0.0.1/rest/", "status": "L", "user_id": 1}),
    )
}

/// A response whose body breaks off: the declared length is longer than what is sent.
fn dropped_connection() -> Response {
    let body = r#"{"result":[{"ID":"1","TITLE":"#;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r.headers_mut().insert("content-length", HeaderValue::from(body.len() + 4096));
    r
}

async fn handle(state: Arc<State>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let start = now_f64();
    let seen = state.stats.http_requests.fetch_add(1, AtomicOrdering::Relaxed);
    let f = &state.cfg.faults;
    let injected = |r: Response| {
        state.stats.faults_injected.fetch_add(1, AtomicOrdering::Relaxed);
        r
    };
    if let Some(host) = &f.redirect_to {
        let asked = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
        if asked != host {
            let location = format!("http://{host}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let mut r = (StatusCode::FOUND, "").into_response();
            r.headers_mut().insert("location", HeaderValue::from_str(&location).expect("header"));
            return injected(r);
        }
    }
    if uri.path().trim_end_matches('/') == "/oauth/token" {
        return token_endpoint(&state, &uri);
    }
    if state.cfg.fail_after.is_some_and(|n| seen >= n) {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "Internal server error");
    }
    if f.overload_after.is_some_and(|n| seen >= n) {
        return injected(api_error(StatusCode::SERVICE_UNAVAILABLE, "OVERLOAD_LIMIT", "REST API is blocked due to overload"));
    }
    if draw(state.cfg.seed, seen, 1) < f.error_500 {
        return injected(api_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "Internal server error"));
    }
    if draw(state.cfg.seed, seen, 2) < f.drop_connection {
        return injected(dropped_connection());
    }
    if draw(state.cfg.seed, seen, 3) < f.slow {
        state.stats.faults_injected.fetch_add(1, AtomicOrdering::Relaxed);
        tokio::time::sleep(f.slow_delay).await;
    }
    let truncate = draw(state.cfg.seed, seen, 4) < f.truncated_body;
    if !state.cfg.latency.is_zero() {
        tokio::time::sleep(state.cfg.latency).await;
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    let params = params::merge_request(uri.query(), ct, &body);
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let method_seg = match segs.as_slice() {
        ["rest", uid, code, m] => {
            if *uid != state.cfg.user_id.to_string() || *code != state.cfg.webhook_code {
                state.stats.rejected_401.fetch_add(1, AtomicOrdering::Relaxed);
                return api_error(StatusCode::UNAUTHORIZED, "NO_AUTH_FOUND", "Wrong authorization data");
            }
            m.to_string()
        }
        ["rest", m] => {
            // OAuth: the token comes as `auth` (query, form field or JSON key)
            let token = params.get("auth").and_then(Value::as_str).unwrap_or("").to_string();
            let (Some(cfg), mut guard) = (state.cfg.oauth.as_ref(), state.oauth.lock().expect("oauth")) else {
                state.stats.rejected_401.fetch_add(1, AtomicOrdering::Relaxed);
                return api_error(StatusCode::UNAUTHORIZED, "NO_AUTH_FOUND", "Wrong authorization data");
            };
            let st = guard.as_mut().expect("oauth state");
            if token != st.access {
                state.stats.rejected_401.fetch_add(1, AtomicOrdering::Relaxed);
                return api_error(StatusCode::UNAUTHORIZED, "invalid_token", "The access token provided is invalid");
            }
            if st.used >= cfg.token_requests {
                state.stats.rejected_401.fetch_add(1, AtomicOrdering::Relaxed);
                return api_error(StatusCode::UNAUTHORIZED, "expired_token", "The access token provided has expired");
            }
            st.used += 1;
            m.to_string()
        }
        _ => return api_error(StatusCode::NOT_FOUND, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
    };
    // leaky bucket: one HTTP request = one unit, whatever it carries
    {
        let mut b = state.bucket.lock().expect("bucket");
        let now = Instant::now();
        b.level = (b.level - now.duration_since(b.at).as_secs_f64() * state.cfg.drain_per_sec).max(0.0);
        b.at = now;
        if b.level + 1.0 > state.cfg.burst {
            state.stats.rejected_503.fetch_add(1, AtomicOrdering::Relaxed);
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
            );
        }
        b.level += 1.0;
    }
    let method = method_seg.to_lowercase();
    let method = method.strip_suffix(".json").unwrap_or(&method).to_string();
    let state2 = state.clone();
    let method2 = method.clone();
    // list calls can scan many leads: keep them off the IO threads
    let out = tokio::task::spawn_blocking(move || {
        let mut cost = Duration::ZERO;
        let r = call(&state2, &method2, &params, true, &mut cost);
        (r, cost)
    })
    .await;
    match out {
        Ok((r, cost)) => {
            if !cost.is_zero() {
                tokio::time::sleep(cost).await; // the server time the calls took
            }
            match r {
                Ok(mut v) => {
                    let operating = if method == "batch" { None } else { state.operating_of(&method) };
                    v.insert("time".into(), time_object(start, &state.enc, operating));
                    if truncate {
                        let text = Value::Object(v).to_string();
                        let cut: String = text.chars().take(text.chars().count() / 2).collect();
                        let mut r = (StatusCode::OK, cut).into_response();
                        r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
                        return injected(r);
                    }
                    json_response(StatusCode::OK, &Value::Object(v))
                }
                Err(e) => json_response(e.0, &e.body()),
            }
        }
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}),
        ),
    }
}

/// Runs one method. Returns the envelope without `time`; adds the server time it cost to `cost`.
fn call(
    state: &State,
    method: &str,
    params: &Map<String, Value>,
    allow_batch: bool,
    cost: &mut Duration,
) -> Result<Map<String, Value>, ApiErr> {
    if method != "batch" {
        state.check_operating(method)?;
    }
    match method {
        "crm.lead.fields" | "crm.deal.fields" | "crm.contact.fields" | "crm.company.fields" => {
            let entity = legacy_entity(method);
            let mut m = Map::new();
            m.insert("result".into(), data::fields_metadata_of(entities::fields(entity)));
            Ok(m)
        }
        "crm.item.fields" => {
            let entity = entity_type(params)?;
            let original = php_bool(params::param(params, "useOriginalUfNames"));
            let mut m = Map::new();
            m.insert("result".into(), item::fields(entity, original));
            Ok(m)
        }
        "crm.category.list" => category_list(params),
        "crm.lead.list" | "crm.deal.list" | "crm.contact.list" | "crm.company.list" | "crm.item.list" => {
            let calls = state.stats.list_calls.fetch_add(1, AtomicOrdering::Relaxed) + 1;
            if state.cfg.mutate_every.is_some_and(|n| calls.is_multiple_of(n.max(1))) {
                state.mutate(calls);
            }
            let mut counted = 0u64;
            let r = if method == "crm.item.list" {
                let entity = entity_type(params)?;
                let original = php_bool(params::param(params, "useOriginalUfNames"));
                let mut legacy = Map::new();
                let filter = params::normalize(Value::Object(array_param(params, "filter")?)).as_object().cloned().unwrap_or_default();
                legacy.insert("filter".into(), Value::Object(item::legacy_keys(entity, &filter, "filter")?));
                legacy.insert("order".into(), Value::Object(item::legacy_keys(entity, &array_param(params, "order")?, "order")?));
                if let Some(start) = params.get("start") {
                    legacy.insert("start".into(), start.clone());
                }
                entity_list(state, entity, &legacy, &mut counted, Some(original))
            } else {
                entity_list(state, legacy_entity(method), params, &mut counted, None)
            };
            // a counted page (start >= 0) also pays for COUNT(*) over the matches
            let this = state.cfg.list_cost + state.cfg.count_cost_per_row * counted as u32;
            *cost += this;
            state.charge(method, this);
            r
        }
        "crm.status.list" => status_list(params),
        "user.get" if state.cfg.no_user_scope => Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "insufficient_scope",
            "The request requires higher privileges than provided by the webhook token".into(),
        )),
        "user.get" => {
            // 50 per page, `start` as for lists (`-1` without a count); inactive users are listed too
            let users = data::users();
            let start = int_param(params::param(params, "start"));
            let from = if start < 0 { 0 } else { (start as usize / 50) * 50 };
            let page: Vec<Value> = users.iter().skip(from).take(50).cloned().collect();
            let mut m = Map::new();
            m.insert("result".into(), Value::Array(page));
            if start >= 0 {
                if from + 50 < users.len() {
                    m.insert("next".into(), json!(from + 50));
                }
                m.insert("total".into(), json!(users.len()));
            }
            Ok(m)
        }
        "batch" if allow_batch => batch(state, params, cost),
        "batch" => Err(ApiErr(StatusCode::METHOD_NOT_ALLOWED, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage".into())),
        _ => Err(ApiErr(StatusCode::NOT_FOUND, "ERROR_METHOD_NOT_FOUND", "Method not found!".into())),
    }
}

fn array_param(params: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, ApiErr> {
    match params::param(params, name) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::Array(a)) if a.is_empty() => Ok(Map::new()),
        Some(_) => Err(ApiErr(StatusCode::BAD_REQUEST, "", format!("Parameter '{name}' must be array."))),
    }
}

fn int_param(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse::<i64>().unwrap_or(0),
        _ => 0,
    }
}

/// Which fields a select list returns (§2 select masks).
/// An empty select is `*` for leads (the docs do not say more) and `*` + `UF_*` for deals, contacts and companies
/// (DOCS crm-deal-list.md, crm-contact-list.md).
fn select_filter<'a>(entity: Entity, fields: &'a [FieldDef], select: &'a [String]) -> impl Fn(&FieldDef) -> bool + 'a {
    let star = select.is_empty() || select.iter().any(|s| s == "*");
    let uf = select.iter().any(|s| s == "UF_*") || (select.is_empty() && entity != Entity::Lead);
    let any_multi = select.iter().any(|s| fields.iter().any(|f| f.name == s && f.ftype == data::FType::Multifield));
    move |def: &FieldDef| {
        if def.ftype == data::FType::Multifield {
            return select.iter().any(|s| s == def.name); // only when named explicitly, case-sensitive
        }
        if def.name == "ID" && any_multi {
            return true;
        }
        if data::is_user_field(def.name) {
            return uf || select.iter().any(|s| s.eq_ignore_ascii_case(def.name));
        }
        star || select.iter().any(|s| s.eq_ignore_ascii_case(def.name))
    }
}

/// `crm.item.*` serve leads, deals, contacts and companies (entityTypeId 1–4).
fn entity_type(params: &Map<String, Value>) -> Result<Entity, ApiErr> {
    match int_param(params::param(params, "entityTypeId")) {
        0 => Err(ApiErr(StatusCode::BAD_REQUEST, "INVALID_ARG_VALUE", "entityTypeId is required".into())),
        n => Entity::ALL
            .into_iter()
            .find(|e| e.entity_type_id() == n)
            .ok_or_else(|| ApiErr(StatusCode::BAD_REQUEST, "NOT_FOUND", "SPA not found".into())),
    }
}

/// The entity of a legacy method (`crm.deal.list` → deal).
fn legacy_entity(method: &str) -> Entity {
    match method.split('.').nth(1) {
        Some("deal") => Entity::Deal,
        Some("contact") => Entity::Contact,
        Some("company") => Entity::Company,
        _ => Entity::Lead,
    }
}

/// `crm.category.list` (entityTypeId 2: the deal funnels).
fn category_list(params: &Map<String, Value>) -> Result<Map<String, Value>, ApiErr> {
    let entity = entity_type(params)?;
    let cats: Vec<Value> = if entity == Entity::Deal {
        entities::DEAL_CATEGORIES
            .iter()
            .map(|(id, name, sort)| json!({"id": id, "name": name, "sort": sort, "entityTypeId": 2, "isDefault": if *id == 0 { "Y" } else { "N" }}))
            .collect()
    } else {
        Vec::new()
    };
    let mut m = Map::new();
    m.insert("total".into(), json!(cats.len()));
    m.insert("result".into(), json!({ "categories": cats }));
    Ok(m)
}

/// A legacy list method (`crm.lead.list`, `crm.deal.list`, …), or `crm.item.list` (`item` =
/// Some(useOriginalUfNames)) given legacy names.
fn entity_list(state: &State, entity: Entity, params: &Map<String, Value>, count_rows: &mut u64, item: Option<bool>) -> Result<Map<String, Value>, ApiErr> {
    let fields = entities::fields(entity);
    let order = array_param(params, "order")?;
    let filter = array_param(params, "filter")?;
    let select: Vec<String> = match params::param(params, "select").cloned().map(params::normalize) {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::Object(m)) => m.values().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let start = int_param(params.get("start"));
    let conds: Vec<Cond> = filter::parse_filter(fields, &params::normalize(Value::Object(filter)).as_object().cloned().unwrap_or_default());
    let order = filter::parse_order(fields, &order);
    let (lo, hi) = filter::id_bounds(&conds);
    let store = store_of(&state.stores, entity).read().expect("store");
    let ids = &store.live;
    let from = ids.partition_point(|&id| id < lo);
    let to = ids.partition_point(|&id| id <= hi);
    let truth = |pos: usize| store.truth(state.cfg.seed, ids[pos]);
    let ok = |t: &[Truth]| conds.iter().all(|c| filter::matches(c, t, state.enc.offset_secs));
    let by_id_only = order.iter().all(|(i, _)| fields[*i].name == "ID");
    let ascending = order.first().map(|(_, asc)| *asc).unwrap_or(true);
    const PAGE: usize = 50;

    // Collect the matching (position, truth) rows: lazily when no count is needed.
    let positions: Box<dyn Iterator<Item = usize>> =
        if ascending { Box::new(from..to.max(from)) } else { Box::new((from..to.max(from)).rev()) };
    let mut rows: Vec<(usize, Vec<Truth>)> = Vec::new();
    let (offset, count_all) = if start < 0 { (0usize, false) } else { (((start as usize) / PAGE) * PAGE, true) };
    if by_id_only && !count_all {
        for pos in positions {
            let t = truth(pos);
            if ok(&t) {
                rows.push((pos, t));
                if rows.len() == PAGE {
                    break;
                }
            }
        }
    } else {
        // Only ID bounds and an ID order: the matches are exactly the positions in range, so count and offset
        // need no lead to be built (the simulator's own CPU must not stand in for the portal's COUNT cost,
        // which `count_cost_per_row` models).
        let id_bounds_only = by_id_only
            && conds.iter().all(|c| c.def.name == "ID" && matches!(c.op, filter::Op::Gt | filter::Op::Ge | filter::Op::Lt | filter::Op::Le))
            && !(state.cfg.bad_values && entity == Entity::Lead);
        let mut all: Vec<(usize, Vec<Truth>)> = if id_bounds_only {
            positions.map(|p| (p, Vec::new())).collect()
        } else {
            positions.map(|p| (p, truth(p))).filter(|(_, t)| ok(t)).collect()
        };
        if !by_id_only {
            all.sort_by(|a, b| {
                for (idx, asc) in &order {
                    let ka = sort_key(&fields[*idx], &a.1[*idx]);
                    let kb = sort_key(&fields[*idx], &b.1[*idx]);
                    let o = ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal);
                    let o = if *asc { o } else { o.reverse() };
                    if o != std::cmp::Ordering::Equal {
                        return o;
                    }
                }
                a.0.cmp(&b.0)
            });
        }
        let total = all.len();
        let mut off = offset;
        if count_all && off >= total && total > 0 && state.cfg.out_of_range_first_page {
            off = 0; // CAllDBResult falls back to page 1
        }
        rows = all.into_iter().skip(if count_all { off } else { 0 }).take(PAGE).collect();
        if id_bounds_only {
            for (p, t) in rows.iter_mut() {
                *t = truth(*p);
            }
        }
        if count_all {
            *count_rows += total as u64;
            let mut m = Map::new();
            let page_no = off / PAGE + 1;
            let page_count = total.div_ceil(PAGE);
            m.insert("result".into(), render_for(state, entity, ids, &rows, &select, item));
            if page_no < page_count {
                m.insert("next".into(), json!(page_no * PAGE));
            }
            m.insert("total".into(), json!(total));
            return Ok(m);
        }
    }
    let mut m = Map::new();
    m.insert("result".into(), render_for(state, entity, ids, &rows, &select, item));
    m.insert("total".into(), json!(0));
    Ok(m)
}

fn render_for(state: &State, entity: Entity, ids: &[i64], rows: &[(usize, Vec<Truth>)], select: &[String], item: Option<bool>) -> Value {
    match item {
        None => render_rows(state, entity, ids, rows, select),
        Some(original) => {
            let items: Vec<Value> =
                rows.iter().map(|(pos, t)| Value::Object(item::render(entity, t, ids[*pos], &state.enc, original))).collect();
            json!({ "items": items })
        }
    }
}

fn sort_key(def: &FieldDef, t: &Truth) -> Key {
    if def.name == "STATUS_ID" {
        if let Truth::Str(s) = t {
            return Key::Num(filter::status_sort(s) as f64);
        }
    }
    filter::truth_key(t)
}

fn render_rows(state: &State, entity: Entity, ids: &[i64], rows: &[(usize, Vec<Truth>)], select: &[String]) -> Value {
    let fields = entities::fields(entity);
    let keep = select_filter(entity, fields, select);
    Value::Array(
        rows.iter()
            .map(|(pos, t)| {
                let mut m = data::render_record(fields, t, ids[*pos], &state.enc, &keep);
                if state.cfg.bad_values {
                    let bad = match entity {
                        Entity::Lead => bad_value_at(*pos),
                        Entity::Deal => bad_deal_value_at(*pos),
                        _ => None,
                    };
                    if let Some((field, raw)) = bad {
                        if m.contains_key(field) || fields.iter().find(|d| d.name == field).is_some_and(&keep) {
                            m.insert(field.to_string(), raw);
                        }
                    }
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// `crm.status.list` (§11): the lead's STATUS, SOURCE and HONORIFIC dictionaries, filterable by ENTITY_ID.
fn status_list(params: &Map<String, Value>) -> Result<Map<String, Value>, ApiErr> {
    let filter = array_param(params, "filter")?;
    let entity = filter.iter().find(|(k, _)| k.trim_start_matches('=').eq_ignore_ascii_case("ENTITY_ID")).and_then(|(_, v)| v.as_str());
    let rows: Vec<Value> = data::status_dictionary()
        .into_iter()
        .enumerate()
        .filter(|(_, (e, ..))| entity.is_none_or(|want| want == e))
        .map(|(i, (e, id, name, sort, sem))| {
            // a funnel's stages carry its ID; the default funnel's (`DEAL_STAGE`) a null one, as in the docs' sample
            let category = e.strip_prefix("DEAL_STAGE_").map(|c| Value::String(c.to_string())).unwrap_or(Value::Null);
            json!({"ID": (100 + i).to_string(), "ENTITY_ID": e, "STATUS_ID": id, "NAME": name, "NAME_INIT": name,
                   "SORT": sort.to_string(), "SYSTEM": "Y", "CATEGORY_ID": category, "COLOR": "#39A8EF", "SEMANTICS": sem,
                   "EXTRA": {"SEMANTICS": match sem { Some("S") => "success", Some("F") => "failure", _ => "process" }, "COLOR": "#39A8EF"}})
        })
        .collect();
    let mut m = Map::new();
    m.insert("total".into(), json!(rows.len()));
    m.insert("result".into(), Value::Array(rows));
    Ok(m)
}

/// Empty PHP arrays serialize as `[]`; arrays with keys 0..n as JSON lists.
fn php_map(m: Map<String, Value>, indexed: bool) -> Value {
    if m.is_empty() {
        Value::Array(vec![])
    } else if indexed && m.keys().enumerate().all(|(i, k)| *k == i.to_string()) {
        Value::Array(m.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(m)
    }
}

fn php_bool(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !(s.is_empty() || s == "0"),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn batch(state: &State, params: &Map<String, Value>, cost: &mut Duration) -> Result<Map<String, Value>, ApiErr> {
    let halt = php_bool(params.iter().find(|(k, _)| k.eq_ignore_ascii_case("halt")).map(|(_, v)| v));
    let cmd = params.iter().find(|(k, _)| k.eq_ignore_ascii_case("cmd")).map(|(_, v)| v.clone());
    let (cmds, indexed): (Vec<(String, Value)>, bool) = match cmd {
        Some(Value::Object(m)) => {
            let indexed = m.keys().enumerate().all(|(i, k)| *k == i.to_string());
            (m.into_iter().collect(), indexed)
        }
        Some(Value::Array(a)) => (a.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(), true),
        _ => (Vec::new(), false),
    };
    let (mut result, mut errors, mut totals, mut nexts, mut times) = (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for (n, (key, v)) in cmds.into_iter().enumerate() {
        let Value::String(s) = v else { continue }; // non-string commands are skipped silently
        if n >= 50 {
            errors.insert(key, json!({"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}));
            continue;
        }
        let start = now_f64();
        let (method, query) = s.split_once('?').unwrap_or((s.as_str(), ""));
        let method = method.to_lowercase();
        let p = params::parse_php_query(query);
        let no = state.commands.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        let out = if state.cfg.command_error_every.is_some_and(|every| no.is_multiple_of(every.max(1))) {
            state.stats.command_errors.fetch_add(1, AtomicOrdering::Relaxed);
            Err(ApiErr(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", "Internal server error".into()))
        } else {
            call(state, &method, &p, false, cost)
        };
        match out {
            Ok(mut env) => {
                if let Some(r) = env.remove("result") {
                    result.insert(key.clone(), r);
                }
                if let Some(t) = env.remove("total") {
                    totals.insert(key.clone(), t);
                }
                if let Some(nx) = env.remove("next") {
                    nexts.insert(key.clone(), nx);
                }
                times.insert(key, time_object(start, &state.enc, state.operating_of(&method)));
            }
            Err(e) => {
                errors.insert(key, e.body());
                if halt {
                    break;
                }
            }
        }
    }
    let mut inner = Map::new();
    inner.insert("result".into(), php_map(result, indexed));
    inner.insert("result_error".into(), php_map(errors, indexed));
    inner.insert("result_total".into(), php_map(totals, indexed));
    inner.insert("result_next".into(), php_map(nexts, indexed));
    inner.insert("result_time".into(), php_map(times, indexed));
    let mut m = Map::new();
    m.insert("result".into(), Value::Object(inner));
    Ok(m)
}
