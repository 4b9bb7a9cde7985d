//! Fetch planning: the ID space split into disjoint ranges, each read by two exact ID cursors that move toward
//! each other — one upward (`>ID lo`, `<ID hi`, `order ID ASC`), one downward (the same filter, `order ID DESC`),
//! both `start=-1` — until they meet. Up to 50 cursor steps are packed into each `batch` request. Never offsets:
//! they drift when leads change and cost a COUNT per page.
//!
//! Every range costs one partly filled page where its reading ends. A range read from both ends has one such end
//! for two cursors, so the fan-out that the portal's burst needs costs half the extra commands.
//!
//! Exactly-once: ranges never overlap; a cursor only moves past rows received; a row goes downstream only if it
//! lies in the part of its range that no earlier page has delivered. The two cursors of a range may be under way
//! at once: when fewer than 100 leads were left, their pages overlap. A range is split while none of its
//! cursors is under way, or while one is: then the cut goes past where that cursor's page most likely ends, the
//! range keeps the part next to the cursor, and the answer is cut to that part (rows past the cut are dropped;
//! the other part reads them).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{classify_api_error, is_transient_code, php_query, BatchOutcome, PortalClient};
use crate::error::{PortalError, Result};
use crate::progress::Progress;

/// Page size of every Bitrix list method.
pub const PAGE: usize = 50;
/// Commands per batch request.
pub const BATCH: usize = 50;

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// The list method, e.g. `crm.lead.list`.
    pub method: String,
    /// `select` sent to the portal.
    pub select: Vec<String>,
    /// The user's filter; combined with the cursor's own ID conditions.
    pub filter: Map<String, Value>,
    /// Batch requests in flight at once.
    pub concurrency: usize,
    /// Retries of one cursor step that failed inside a batch.
    pub max_retries: u32,
    /// Parameters of every list call besides order/filter/select/start (e.g. `entityTypeId` for crm.item.list).
    pub extra: Map<String, Value>,
    /// Turns a command's result into the legacy list shape (a JSON array of records with `ID`), for list
    /// methods that answer otherwise (crm.item.list: `{"items":[…]}`).
    pub normalize: Option<Normalize>,
}

/// See [`FetchSpec::normalize`].
#[derive(Clone)]
pub struct Normalize(pub Arc<NormalizeFn>);

/// Raw command result → legacy list result, or why not.
pub type NormalizeFn = dyn Fn(&RawValue) -> std::result::Result<Box<RawValue>, String> + Send + Sync;

impl std::fmt::Debug for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Normalize(..)")
    }
}

impl FetchSpec {
    /// A command's result in the legacy list shape.
    fn normalized(&self, key: &str, raw: Box<RawValue>) -> Result<Box<RawValue>, PortalError> {
        match &self.normalize {
            None => Ok(raw),
            Some(n) => (n.0)(&raw).map_err(|message| PortalError::Protocol {
                method: self.method.clone(),
                status: 200,
                message: format!("command {key}: {message}"),
            }),
        }
    }
}

/// Fetched records, in no particular order: each chunk is the raw JSON array one list call returned.
/// Kept as text until conversion, so pages in flight cost their size on the wire, not a `Value` tree.
pub struct Page {
    pub chunks: Vec<Box<RawValue>>,
    /// Pages read back from the raw zone (`convert`): their lines, still compressed; `chunks` is empty then.
    pub lines: Option<crate::raw::RawLines>,
    /// The rows expected (a capacity hint; 0 when unknown).
    pub rows: usize,
    /// ID intervals `[lo, hi)` that this page completes: every matching lead in them is in this page or an
    /// earlier one. Checkpoints record their union, and a resumed run skips it.
    pub covered: Vec<(i64, i64)>,
}

/// A union of half-open ID intervals `[lo, hi)`, kept sorted and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coverage(pub Vec<(i64, i64)>);

impl Coverage {
    pub fn add(&mut self, lo: i64, hi: i64) {
        if lo >= hi {
            return;
        }
        self.0.push((lo, hi));
        self.0.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    /// The parts of `[lo, hi)` not covered.
    pub fn gaps(&self, lo: i64, hi: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut at = lo;
        for &(a, b) in &self.0 {
            if b <= at {
                continue;
            }
            if a >= hi {
                break;
            }
            if a > at {
                out.push((at, a));
            }
            at = at.max(b);
        }
        if at < hi {
            out.push((at, hi));
        }
        out
    }
}

/// Which cursor of a range: upward (`order ID ASC` from `lo`) or downward (`order ID DESC` from `hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up = 0,
    Down = 1,
}

impl Dir {
    fn order(self) -> &'static str {
        match self {
            Dir::Up => "ASC",
            Dir::Down => "DESC",
        }
    }
}

#[derive(Debug, Clone)]
struct Range {
    /// The upward cursor: every matching lead of the range with ID ≤ lo has been delivered.
    lo: i64,
    /// The downward cursor: every matching lead of the range with ID ≥ hi has been delivered.
    hi: i64,
    /// A request for this cursor (by [`Dir`]) is in flight.
    busy: [bool; 2],
    failures: [u32; 2],
    /// Leads and IDs seen on this range's full pages, for its density (IDs are rarely dense: deletions, imports).
    seen_rows: f64,
    seen_ids: f64,
}

impl Range {
    /// The range of IDs `lo < ID < hi`.
    fn new(lo: i64, hi: i64) -> Self {
        Range { lo, hi, busy: [false; 2], failures: [0; 2], seen_rows: 0.0, seen_ids: 0.0 }
    }

    /// IDs left between the cursors.
    fn span(&self) -> i64 {
        self.hi - self.lo - 1
    }

    fn done(&self) -> bool {
        self.span() <= 0
    }

    fn inflight(&self) -> usize {
        self.busy.iter().filter(|b| **b).count()
    }

    fn idle(&self) -> bool {
        self.inflight() == 0
    }

    /// Leads per ID: by the range's own full pages, or the run's before it has any.
    fn density(&self, e: Est) -> f64 {
        let density = if self.seen_ids > 0.0 { self.seen_rows / self.seen_ids } else { e.density };
        density.min(1.0)
    }

    /// About how many leads are left between the cursors (before the answers under way): by the range's density,
    /// times the run's correction (see [`Est`]).
    fn remaining(&self, e: Est) -> f64 {
        self.span().max(0) as f64 * self.density(e) * e.scale
    }

    /// About how many leads will be left once the requests under way have answered.
    fn left(&self, e: Est) -> f64 {
        self.remaining(e) - (PAGE * self.inflight()) as f64
    }
}

/// How the leads left in a range are estimated: leads per ID for ranges not yet sampled, and a correction of all
/// estimates by the probe's count (the leads left in all, known from it, over the sum of the ranges' estimates).
#[derive(Debug, Clone, Copy)]
struct Est {
    density: f64,
    scale: f64,
}

fn list_params(spec: &FetchSpec, extra: &[(&str, Value)], order: &str, select: &[String]) -> Map<String, Value> {
    let mut filter = spec.filter.clone();
    for (k, v) in extra {
        filter.insert((*k).to_string(), v.clone());
    }
    let mut p = spec.extra.clone();
    p.insert("order".into(), json!({"ID": order}));
    p.insert("filter".into(), Value::Object(filter));
    p.insert("select".into(), json!(select));
    p.insert("start".into(), json!(-1));
    p
}

fn command(spec: &FetchSpec, params: &Map<String, Value>) -> String {
    format!("{}?{}", spec.method, php_query::encode(params))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(i64),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(rename = "ID", default)]
    id: Option<IdValue>,
}

/// The IDs of a raw list result (a JSON array of records), without building the records.
pub(crate) fn ids_of(method: &str, key: &str, raw: &RawValue) -> Result<Vec<Option<i64>>, PortalError> {
    let rows: Vec<IdOnly> = serde_json::from_str(raw.get()).map_err(|e| {
        let found = serde_json::from_str::<Value>(raw.get()).map(|v| kind_of(&v)).unwrap_or("unreadable JSON");
        PortalError::Protocol {
            method: method.into(),
            status: 200,
            message: format!("command {key}: expected a list of records, got {found} ({e})"),
        }
    })?;
    Ok(rows
        .into_iter()
        .map(|r| match r.id {
            Some(IdValue::Text(s)) => s.trim().parse().ok(),
            Some(IdValue::Number(n)) => Some(n),
            _ => None,
        })
        .collect())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A batch request under way: its cursor steps (range key, cursor), each range's `(lo, hi)` when sent, and its
/// outcome.
type InFlight = (Vec<(usize, Dir)>, Vec<(i64, i64)>, std::time::Duration, std::result::Result<BatchOutcome, PortalError>, u64);

fn paused_too_long(method: &str) -> PortalError {
    PortalError::Api {
        method: method.into(),
        status: 429,
        code: "OPERATION_TIME_LIMIT".into(),
        description: "Method is blocked due to operation time limit; the budget did not recover within --max-pause".into(),
        attempts: 1,
    }
}

/// What the probe learnt: the ID span and how many leads match.
struct Probe {
    lo: i64,
    hi: i64,
    total: Option<u64>,
}

/// Lowest and highest ID matching the user's filter, and their count, in one batch request (the count costs the
/// portal one COUNT query, once). `None` when nothing matches.
async fn probe(client: &PortalClient, spec: &FetchSpec) -> Result<Option<Probe>, PortalError> {
    let id_only = vec!["ID".to_string()];
    let mut counted = list_params(spec, &[], "ASC", &id_only);
    counted.insert("start".into(), json!(0));
    let cmds = vec![
        ("min".to_string(), command(spec, &counted)),
        ("max".to_string(), command(spec, &list_params(spec, &[], "DESC", &id_only))),
    ];
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut out = client.batch(&cmds).await?;
        if let Some(e) = fatal_error(spec, &out, attempts) {
            return Err(e);
        }
        if out.errors.values().any(|(code, _)| code == "OPERATION_TIME_LIMIT") {
            // the method is blocked before we even started: wait for its budget like any step would
            client.stats().operating_blocks.fetch_add(1, Ordering::Relaxed);
            if !client.may_pause() {
                return Err(paused_too_long(&spec.method));
            }
            attempts -= 1;
            client.pause(client.budget().blocked(&spec.method), &format!("{}: the ID probe met OPERATION_TIME_LIMIT", spec.method)).await;
            continue;
        }
        let (Some(min), Some(max)) = (out.results.remove("min"), out.results.remove("max")) else {
            if attempts > spec.max_retries {
                return Err(PortalError::Transport { method: spec.method.clone(), message: "the ID probe kept failing".into(), attempts });
            }
            client.stats().retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(500 * attempts as u64)).await;
            continue;
        };
        let total = out.totals.get("min").copied();
        let min = ids_of(&spec.method, "min", &spec.normalized("min", min)?)?;
        let max = ids_of(&spec.method, "max", &spec.normalized("max", max)?)?;
        match (min.first().copied().flatten(), max.first().copied().flatten(), min.is_empty(), max.is_empty()) {
            (Some(lo), Some(hi), _, _) if lo <= hi => return Ok(Some(Probe { lo, hi, total })),
            (None, None, true, true) => return Ok(None),
            // a lead created or deleted between the two commands: look again
            (_, _, a, b) if a != b && attempts <= spec.max_retries => continue,
            _ => return Err(PortalError::Protocol { method: spec.method.clone(), status: 200, message: "the ID probe returned records without a usable ID".into() }),
        }
    }
}

/// The first non-transient per-command error, if any.
fn fatal_error(spec: &FetchSpec, out: &BatchOutcome, attempts: u32) -> Option<PortalError> {
    out.errors.values().find_map(|(code, desc)| {
        if is_transient_code(code) {
            return None;
        }
        classify_api_error(&spec.method, 400, code, desc, attempts)
    })
}

/// Another cursor step goes to a range only when about this many leads are expected beyond the steps already under
/// way: below it, the page under way most likely ends the range and the step would come back empty. A range with
/// nothing under way is always read.
const MARGIN: f64 = 25.0;
/// Near the end of a run a range is split, to keep requests full, only when it has about this many leads left.
const SPLIT_MIN: f64 = 3.0 * PAGE as f64;
/// In the last round trips of a run, a second cursor goes to every range expected to hold more than a page.
const ENDGAME_ROUNDS: f64 = 1.5;
/// In the last round trips of a run, every range gets a step before any gets a second one: each range ends with a
/// partly filled page, and a range left out of the last requests costs a round trip of its own.
const COVER_ROUNDS: f64 = 2.0;
/// A range is split to finish in time only when it holds more than this many rounds' worth of two cursors (a split
/// costs a partly filled page; ranges picked fullest-first mostly finish in time without one). 200,000 leads on the
/// bench's portal: 4 → 2 (with ranges split also while a cursor is under way) took the run from 23.0 s to 21.7 s,
/// for one more request (88); 1.5 made more splits than requests could carry (89 requests, 22.8 s).
const SHORTEN_ROUNDS: f64 = 2.0;
/// A range is cut this many pages (at its density) past a cursor under way, where that cursor's page most likely
/// ends (see [`Ranges::split_busy`]).
const REACH: f64 = 1.25;
/// Bounds of the correction of the ranges' estimates by the probe's count.
/// Near the end of a run the ranges' own estimates ran at half of what the probe's count said was left (a trace:
/// "steps left 42 (by count 90)"): capped at 1.5, the last leads were met a round trip late.
const SCALE_MIN: f64 = 0.67;
const SCALE_MAX: f64 = 3.0;

/// How many more cursor steps range `r` is worth now, with `left` leads expected beyond its steps under way and
/// `margin` as [`MARGIN`].
fn worth(r: &Range, mut left: f64, margin: f64) -> usize {
    if r.done() {
        return 0; // the cursors met: nothing between them, whatever the other step under way brings
    }
    let free = 2 - r.inflight();
    let mut n = 0;
    if r.idle() {
        n = 1;
        left -= PAGE as f64;
    }
    while n < free && left >= margin {
        n += 1;
        left -= PAGE as f64;
    }
    n
}

/// An `f64` priority for the heap (total order).
struct Prio(f64);
impl PartialEq for Prio {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Prio {}
impl PartialOrd for Prio {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Prio {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The open ranges, under stable keys (requests in flight refer to them by key).
struct Ranges {
    map: std::collections::BTreeMap<usize, Range>,
    next_key: usize,
    /// Leads per ID over the whole span (from the probe's count), for ranges not yet sampled.
    density: f64,
    /// [`MARGIN`], or less in the last rounds of a run, when a round trip costs more than a wasted step.
    margin: f64,
    /// Splits made: initial fan-out, to shorten long ranges, to fill requests.
    splits: [u64; 3],
    /// Last rounds: every range gets a step before any gets a second one.
    cover: bool,
    /// See [`Est::scale`].
    scale: f64,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges { map: Default::default(), next_key: 0, density: 1.0, margin: MARGIN, splits: [0; 3], cover: false, scale: 1.0 }
    }
}

impl Ranges {
    fn est(&self) -> Est {
        Est { density: self.density, scale: self.scale }
    }

    fn insert(&mut self, r: Range) {
        self.map.insert(self.next_key, r);
        self.next_key += 1;
    }

    /// Splits idle range `k` in the middle of the IDs left; the upper half gets a new key.
    fn split(&mut self, k: usize) {
        let r = self.map.get_mut(&k).expect("present");
        debug_assert!(r.idle() && r.span() >= 2);
        let mid = r.lo + 1 + r.span() / 2;
        let mut upper = r.clone();
        upper.lo = mid - 1;
        upper.failures = [0; 2];
        r.hi = mid;
        self.insert(upper);
    }

    /// The idle range with the most leads left, if it has at least `min`.
    fn fullest_idle(&self, min: f64) -> Option<usize> {
        let d = self.est();
        self.map
            .iter()
            .filter(|(_, r)| r.idle() && r.span() >= 2)
            .max_by(|a, b| a.1.remaining(d).total_cmp(&b.1.remaining(d)))
            .filter(|(_, r)| r.remaining(d) >= min)
            .map(|(k, _)| *k)
    }

    /// Splits the ranges with the most leads left until there are `want` ranges or none is worth splitting, so
    /// that they hold about the same number of leads.
    fn refill(&mut self, want: usize) {
        while self.map.len() < want {
            let Some(k) = self.fullest_idle(2.0 * PAGE as f64) else { return };
            self.split(k);
            self.splits[0] += 1;
        }
    }

    /// Cursor steps worth sending now.
    fn ready(&self) -> usize {
        let d = self.est();
        self.map.values().map(|r| worth(r, r.left(d), self.margin)).sum()
    }

    /// Near the end of a run: splits the idle ranges with the most leads left until `need` more cursor steps are
    /// worth sending, or no range is worth splitting. A split costs about half a page; a thin request, a request.
    fn split_for(&mut self, mut need: usize) {
        let d = self.est();
        while need > 0 {
            let Some(k) = self.fullest_idle(SPLIT_MIN) else { return };
            self.splits[2] += 1;
            let before = worth(&self.map[&k], self.map[&k].left(d), self.margin);
            let upper = self.next_key;
            self.split(k);
            let after = worth(&self.map[&k], self.map[&k].left(d), self.margin)
                + worth(&self.map[&upper], self.map[&upper].left(d), self.margin);
            need = need.saturating_sub(after.saturating_sub(before).max(1));
        }
    }

    /// A request that goes out thin because nothing else is under way, at the end of a run: a thin request costs
    /// the bucket as much as a full one, and every round trip after it is time lost. Fills it with the second
    /// cursor of every range, and splits the ranges with the most left for more, so that this round ends as
    /// many ranges as it can. Splits are exact as ever; the cost is rows read twice.
    fn pad(&mut self, want: usize) {
        self.margin = f64::NEG_INFINITY;
        while self.ready() < want {
            let Some(k) = self.fullest_idle(1.0) else { return };
            self.split(k);
            self.splits[2] += 1;
        }
    }

    /// About how many cursor steps are left to send: a page per 50 leads, and the partly filled page of each range.
    fn steps_left(&self) -> f64 {
        let d = self.est();
        self.map.values().map(|r| r.left(d).max(0.0) / PAGE as f64 + if r.idle() { 0.5 } else { 0.0 }).sum()
    }

    /// Splits ranges with more than `most` leads left beyond their steps under way (two cursors read 100 per round
    /// trip), so that no range takes more round trips than the run has left. An idle range is cut in the middle; a
    /// range with one cursor under way, past where that cursor's page most likely ends ([`split_busy`]).
    ///
    /// [`split_busy`]: Ranges::split_busy
    fn shorten(&mut self, most: f64) {
        let d = self.est();
        let most = most.max(2.0 * PAGE as f64);
        let mut uncut: Vec<usize> = Vec::new();
        loop {
            let Some(k) = self
                .map
                .iter()
                .filter(|(k, r)| r.inflight() < 2 && r.span() >= 2 && !uncut.contains(k))
                .max_by(|a, b| a.1.left(d).total_cmp(&b.1.left(d)))
                .filter(|(_, r)| r.left(d) > most)
                .map(|(k, _)| *k)
            else {
                return;
            };
            if self.map[&k].idle() {
                self.split(k);
            } else if !self.split_busy(k) {
                uncut.push(k);
                continue;
            }
            self.splits[1] += 1;
        }
    }

    /// Cuts range `k`, which has one cursor under way, [`REACH`] pages (at its density) past that cursor: the part
    /// beyond gets a new key and both its cursors free. The answer under way is then cut to what is left of range
    /// `k` (rows past the cut, if the page gets there, count as read twice), and a page that ends before the cut
    /// leaves a few leads for one more step. Returns `false` when the range is too short to be worth it.
    fn split_busy(&mut self, k: usize) -> bool {
        let d = self.est();
        let r = self.map.get_mut(&k).expect("present");
        debug_assert_eq!(r.inflight(), 1);
        // at the range's own density, not scaled by the count: with the scale above 1.2 the part kept then looks
        // worth a second step, which reads its leads beside the page under way; cut at the scaled density, the
        // page crossed the cut more often (rows read twice) and 2 runs in 6 took a request more (89; 22.7 s)
        let reach = (REACH * PAGE as f64 / r.density(d).max(1e-9)).ceil().min(i64::MAX as f64 / 4.0) as i64;
        let mut part = r.clone();
        part.busy = [false; 2];
        part.failures = [0; 2];
        if r.busy[Dir::Up as usize] {
            // range `k` keeps lo < ID < cut, with its upward step; the part gets cut <= ID < hi
            let cut = r.lo.saturating_add(1).saturating_add(reach);
            if cut > r.hi - 2 {
                return false;
            }
            part.lo = cut - 1;
            r.hi = cut;
        } else {
            // range `k` keeps cut <= ID < hi, with its downward step; the part gets lo < ID < cut
            let cut = r.hi.saturating_sub(reach);
            if cut < r.lo + 3 {
                return false;
            }
            part.hi = cut;
            r.lo = cut - 1;
        }
        self.insert(part);
        true
    }

    /// Takes up to `max` cursor steps, the ranges with the most leads left first (so that ranges finish together
    /// and the last requests are full too), and marks them busy.
    fn pick(&mut self, max: usize) -> Vec<(usize, Dir)> {
        let d = self.est();
        let mut heap: std::collections::BinaryHeap<(Prio, std::cmp::Reverse<usize>)> = self
            .map
            .iter()
            .filter(|(_, r)| worth(r, r.left(d), self.margin) > 0)
            .map(|(k, r)| (Prio(r.left(d)), std::cmp::Reverse(*k)))
            .collect();
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let Some((_, std::cmp::Reverse(k))) = heap.pop() else { break };
            let r = self.map.get_mut(&k).expect("present");
            let dir = if r.busy[Dir::Up as usize] { Dir::Down } else { Dir::Up };
            r.busy[dir as usize] = true;
            out.push((k, dir));
            if worth(r, r.left(d), self.margin) > 0 {
                let tier = if self.cover { 1e12 } else { 0.0 };
                heap.push((Prio(r.left(d) - tier), std::cmp::Reverse(k)));
            }
        }
        out
    }
}

/// The client's leaky bucket as the planner sees it. A request is put together only when the bucket has room for
/// it, so that its cursor steps do not wait in a queue while answers come back that could have joined it.
struct Pace {
    rate: f64,
    burst: f64,
    level: f64,
    at: std::time::Instant,
}

impl Pace {
    /// `sent`: requests the client made just before (they are still in the bucket, about).
    fn new(rate: f64, burst: f64, sent: u64) -> Self {
        Pace { rate: rate.max(0.001), burst: burst.max(1.0), level: (sent as f64).min(burst), at: std::time::Instant::now() }
    }

    fn level(&self) -> f64 {
        (self.level - self.at.elapsed().as_secs_f64() * self.rate).max(0.0)
    }

    /// How long until the bucket has room for one more request; `None` when it has room now.
    fn wait(&self) -> Option<std::time::Duration> {
        let over = self.level() + 1.0 - self.burst;
        (over > 0.0).then(|| std::time::Duration::from_secs_f64(over / self.rate))
    }

    /// How many requests may go now.
    fn room(&self) -> usize {
        (self.burst - self.level()).max(0.0) as usize
    }

    fn take(&mut self) {
        self.level = self.level() + 1.0;
        self.at = std::time::Instant::now();
    }
}

/// The rows of a raw list result whose IDs (`ids`, in the same order) satisfy `keep`, as a raw JSON array.
fn keep_rows(raw: Box<RawValue>, ids: &[Option<i64>], keep: impl Fn(i64) -> bool) -> Result<(Box<RawValue>, usize), PortalError> {
    let kept = ids.iter().filter(|id| id.is_some_and(&keep)).count();
    if kept == ids.len() {
        return Ok((raw, kept));
    }
    let rows: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|e| PortalError::Protocol { method: "batch".into(), status: 200, message: format!("unreadable list result: {e}") })?;
    let mut text = String::with_capacity(raw.get().len());
    text.push('[');
    for (row, id) in rows.iter().zip(ids) {
        if id.is_some_and(&keep) {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(row.get());
        }
    }
    text.push(']');
    let raw = RawValue::from_string(text).map_err(|e| PortalError::Protocol { method: "batch".into(), status: 200, message: e.to_string() })?;
    Ok((raw, kept))
}

/// Fetches every record matching `spec` whose ID is not in `done` (the coverage of an interrupted run being
/// resumed) and sends them downstream in pages. Returns the number of records fetched.
pub async fn fetch_all(
    client: Arc<PortalClient>,
    spec: Arc<FetchSpec>,
    done: &Coverage,
    tx: mpsc::Sender<Page>,
    progress: Arc<Progress>,
) -> Result<u64> {
    let Some(Probe { lo, hi, total }) = probe(&client, &spec).await? else {
        return Ok(0);
    };
    let todo = done.gaps(lo, hi + 1);
    if todo.is_empty() {
        return Ok(0);
    }
    // the count is of every matching lead: it tells how many are left only when nothing was fetched before (a
    // resumed run's checkpoint covers some of them)
    let whole = todo == [(lo, hi + 1)];
    let cursors = plan_cursors(total, spec.concurrency);
    // requests in flight: as many as the cursors fill, at most --concurrency (a small portal keeps to one, which
    // also keeps it within a small operating budget)
    let concurrency = spec.concurrency.max(1).min(cursors.div_ceil(BATCH)).max(1);
    tracing::debug!("probe: IDs {lo}..={hi}, {total:?} leads; {cursors} cursors, at most {concurrency} batch request(s) in flight");
    let mut ranges = Ranges::default();
    if let Some(t) = total {
        ranges.density = (t as f64 / (hi - lo + 1) as f64).clamp(1e-9, 1.0);
    }
    for (a, b) in todo {
        ranges.insert(Range::new(a - 1, b));
    }
    ranges.refill(cursors.div_ceil(2));
    let mut pace = Pace::new(client.config().rate, client.config().burst, client.stats().requests.load(Ordering::Relaxed));
    let mut inflight: JoinSet<InFlight> = JoinSet::new();
    // round trip of a full request (seconds), measured as the run goes
    let mut rtt = 1.0f64;
    let mut fetched = 0u64;
    let (mut batches, mut commands, mut partial, mut empty, mut dropped) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // where the time went while work was left: waiting for the bucket, for answers (too few cursors free), for
    // the in-flight cap, for the operating budget
    let mut waited = [0f64; 4];
    let run_started = std::time::Instant::now();
    let mut last_wait: Option<(usize, std::time::Instant)> = None;
    loop {
        // launch requests while there is room and work
        let mut wake = None;
        if let Some((why, at)) = last_wait.take() {
            waited[why] += std::time::Instant::now().duration_since(at).as_secs_f64();
        }
        let mut why = 2usize;
        while inflight.len() < concurrency {
            // the method's operating budget: hold back rather than be blocked
            if let Some(wait) = client.budget().wait_before(&spec.method, inflight.len()) {
                if !inflight.is_empty() {
                    why = 3;
                    break; // let the requests under way finish first; their answers update the picture
                }
                if !client.may_pause() {
                    return Err(paused_too_long(&spec.method).into());
                }
                client.pause(wait, &format!("{}: close to the operating-time limit", spec.method)).await;
            }
            // the bucket: put the request together when it may go, with the cursors free at that moment
            if let Some(wait) = pace.wait() {
                wake = Some(tokio::time::Instant::now() + wait);
                why = 0;
                break;
            }
            // How many round trips are left: the requests still needed, paced by the bucket beyond the room it
            // has now, or by the requests allowed in flight. No range should need more than that.
            // the probe's count says how many leads are left in all (leads changing meanwhile make it a guess)
            // The ranges' own estimates run low (a range's first pages often start in a hole of deleted leads, and
            // holes are much of the ID space); the probe's count tells how many leads are left in all (a guess once
            // leads change), so all estimates are scaled to it.
            ranges.scale = 1.0;
            let estimated = ranges.steps_left();
            let counted = total
                .filter(|_| whole)
                .map(|t| (t as f64 - fetched as f64) / PAGE as f64 - (BATCH * inflight.len()) as f64 + ranges.map.len() as f64 * 0.5);
            if let Some(c) = counted.filter(|_| estimated > 0.0) {
                ranges.scale = (c / estimated).clamp(SCALE_MIN, SCALE_MAX);
            }
            let steps_left = ranges.steps_left();
            let requests_left = steps_left / BATCH as f64;
            let by_bucket = (requests_left - pace.room() as f64).max(0.0) / pace.rate;
            let rounds_left = (by_bucket / rtt).max(requests_left / concurrency as f64);
            ranges.margin = if rounds_left < ENDGAME_ROUNDS { 0.0 } else { MARGIN };
            ranges.cover = rounds_left < COVER_ROUNDS;
            ranges.shorten(SHORTEN_ROUNDS * 2.0 * PAGE as f64 * rounds_left.max(1.0));
            // fewer than 50 steps ready: more cursors if a range is worth splitting; failing that, a thin request
            // only when nothing is under way (answers free cursors, and a request saved is half a second saved
            // once the bucket paces the run)
            let ready = ranges.ready();
            if ready < BATCH {
                ranges.split_for(BATCH - ready);
                if ranges.ready() < BATCH && !inflight.is_empty() {
                    why = 1;
                    break;
                }
                // a thin request with nothing under way: if it is about the last, make it end as much as it can
                if ranges.ready() < BATCH && steps_left <= BATCH as f64 {
                    ranges.pad(BATCH);
                }
            }
            let picked = ranges.pick(BATCH);
            if picked.is_empty() {
                why = 1;
                break;
            }
            let mut cmds = Vec::with_capacity(picked.len());
            let mut snapshot = Vec::with_capacity(picked.len());
            for &(k, dir) in &picked {
                let r = &ranges.map[&k];
                let params = list_params(&spec, &[(">ID", json!(r.lo)), ("<ID", json!(r.hi))], dir.order(), &spec.select);
                cmds.push((step_key(k, dir), command(&spec, &params)));
                snapshot.push((r.lo, r.hi));
            }
            batches += 1;
            commands += cmds.len() as u64;
            pace.take();
            tracing::trace!(
                "send #{batches} at {:.2}s: {} steps, {} in flight, {} ranges, bucket {:.1}, rounds left {rounds_left:.1}, steps left {estimated:.0} (by count {:.0})",
                run_started.elapsed().as_secs_f64(),
                cmds.len(),
                inflight.len(),
                ranges.map.len(),
                pace.level(),
                counted.unwrap_or(-1.0)
            );
            let client = client.clone();
            let seq = batches;
            inflight.spawn(async move {
                let sent = std::time::Instant::now();
                let out = client.batch(&cmds).await;
                (picked, snapshot, sent.elapsed(), out, seq)
            });
        }
        last_wait = Some((why, std::time::Instant::now()));
        if inflight.is_empty() {
            match wake {
                Some(t) => {
                    tokio::time::sleep_until(t).await;
                    continue;
                }
                None => break, // nothing under way and nothing left to send
            }
        }
        let joined = match wake {
            Some(t) => tokio::select! {
                j = inflight.join_next() => j,
                _ = tokio::time::sleep_until(t) => continue,
            },
            None => inflight.join_next().await,
        };
        let Some(joined) = joined else { continue };
        let (picked, snapshot, took, out, seq) = joined.map_err(|e| crate::error::Error::Internal(format!("fetch task failed: {e}")))?;
        let mut out = out?;
        if picked.len() * 2 >= BATCH {
            rtt = 0.7 * rtt + 0.3 * took.as_secs_f64();
        }
        if let Some(e) = fatal_error(&spec, &out, 1) {
            return Err(e.into());
        }
        let before = (partial, empty, dropped);
        let mut chunks = Vec::new();
        let mut covered = Vec::new();
        let mut page_rows = 0usize;
        let mut worst_failures = 0u32;
        let mut failed_steps = 0usize;
        let mut blocked = 0usize;
        for (&(k, dir), &(sent_lo, sent_hi)) in picked.iter().zip(&snapshot) {
            let key = step_key(k, dir);
            let r = ranges.map.get_mut(&k).expect("in flight");
            r.busy[dir as usize] = false;
            if out.errors.get(&key).is_some_and(|(code, _)| code == "OPERATION_TIME_LIMIT") {
                blocked += 1; // not this step's fault: it goes again after the method's reset
                continue;
            }
            let Some(res) = out.results.remove(&key) else {
                // failed transiently (or silently dropped): the same step goes again
                r.failures[dir as usize] += 1;
                let failures = r.failures[dir as usize];
                client.stats().retries.fetch_add(1, Ordering::Relaxed);
                if failures > spec.max_retries {
                    let why = out.errors.get(&key).map(|(c, d)| format!("{c} ({d})")).unwrap_or_else(|| "no result".into());
                    return Err(PortalError::Transport {
                        method: spec.method.clone(),
                        message: format!("cursor step for IDs ({sent_lo}, {sent_hi}) kept failing: {why}"),
                        attempts: failures,
                    }
                    .into());
                }
                worst_failures = worst_failures.max(failures);
                failed_steps += 1;
                continue;
            };
            r.failures[dir as usize] = 0;
            let res = spec.normalized(&key, res)?;
            let ids = ids_of(&spec.method, &key, &res)?;
            let mut prev: Option<i64> = None;
            for (n, id) in ids.iter().enumerate() {
                let id = id.ok_or_else(|| PortalError::Protocol {
                    method: spec.method.clone(),
                    status: 200,
                    message: format!("record {n} of the page for IDs ({sent_lo}, {sent_hi}) has no numeric ID"),
                })?;
                let in_order = match (dir, prev) {
                    (_, None) => true,
                    (Dir::Up, Some(p)) => id > p,
                    (Dir::Down, Some(p)) => id < p,
                };
                if id <= sent_lo || id >= sent_hi || !in_order {
                    return Err(PortalError::Protocol {
                        method: spec.method.clone(),
                        status: 200,
                        message: format!(
                            "lead {id} is outside the requested cursor range ({sent_lo}, {sent_hi}) or out of order; the portal ignored the ID filter or order"
                        ),
                    }
                    .into());
                }
                prev = Some(id);
            }
            let full = ids.len() >= PAGE;
            if ids.is_empty() {
                empty += 1;
            } else if !full {
                partial += 1;
            }
            // What this page proves complete, then cut to the part of the range nothing has delivered yet: the
            // other cursor may have got there first.
            let (old_lo, old_hi) = (r.lo, r.hi);
            match (dir, prev) {
                (Dir::Up, Some(last)) if full => {
                    r.seen_rows += PAGE as f64;
                    r.seen_ids += (last - sent_lo) as f64;
                    r.lo = last.min(r.hi - 1);
                }
                (Dir::Up, _) => r.lo = r.hi - 1, // a short page: nothing more above the cursor
                (Dir::Down, Some(last)) if full => {
                    r.seen_rows += PAGE as f64;
                    r.seen_ids += (sent_hi - last) as f64;
                    r.hi = last.max(r.lo + 1);
                }
                (Dir::Down, _) => r.hi = r.lo + 1,
            }
            r.lo = r.lo.max(old_lo);
            r.hi = r.hi.min(old_hi);
            if r.lo > old_lo {
                covered.push((old_lo + 1, r.lo + 1));
            }
            if r.hi < old_hi {
                covered.push((r.hi, old_hi));
            }
            let (new_lo, new_hi) = (r.lo, r.hi);
            let (res, kept) = keep_rows(res, &ids, |id| match dir {
                Dir::Up => id > old_lo && id <= new_lo,
                Dir::Down => id >= new_hi && id < old_hi,
            })?;
            dropped += (ids.len() - kept) as u64;
            if kept > 0 {
                page_rows += kept;
                chunks.push(res);
            }
        }
        ranges.map.retain(|_, r| !(r.done() && r.idle())); // both cursors met and nothing is under way
        tracing::trace!(
            "answer #{seq} at {:.2}s after {:.2}s: {} steps, {} partial, {} empty, {} rows read twice; {} ranges left",
            run_started.elapsed().as_secs_f64(),
            took.as_secs_f64(),
            picked.len(),
            partial - before.0,
            empty - before.1,
            dropped - before.2,
            ranges.map.len()
        );
        if blocked > 0 {
            client.stats().operating_blocks.fetch_add(blocked as u64, Ordering::Relaxed);
            if !client.may_pause() {
                return Err(paused_too_long(&spec.method).into());
            }
            let wait = client.budget().blocked(&spec.method);
            client.pause(wait, &format!("{}: {blocked} cursor step(s) met OPERATION_TIME_LIMIT", spec.method)).await;
        } else if worst_failures > 0 {
            // some cursor steps failed inside the batch: back off before sending them again
            let delay = client.backoff(worst_failures - 1);
            tracing::warn!("{failed_steps} cursor step(s) failed inside a batch; retrying in {:.1}s", delay.as_secs_f64());
            tokio::time::sleep(delay).await;
        }
        fetched += page_rows as u64;
        progress.add_leads(page_rows as u64);
        if !covered.is_empty() && tx.send(Page { chunks, lines: None, rows: page_rows, covered }).await.is_err() {
            return Err(crate::error::Error::Internal("the converter stopped".into()));
        }
    }
    tracing::debug!(
        "planner: {batches} batch requests, {commands} list commands ({:.1} per request), {partial} partial and {empty} empty pages, {dropped} rows read twice, {} ranges in all (splits: {} fan-out, {} shorten, {} fill); waited {:.1}s for the bucket, {:.1}s for answers, {:.1}s at the in-flight cap, {:.1}s for the budget",
        commands as f64 / batches.max(1) as f64,
        ranges.next_key,
        ranges.splits[0],
        ranges.splits[1],
        ranges.splits[2],
        waited[0],
        waited[1],
        waited[2],
        waited[3]
    );
    Ok(fetched)
}

fn step_key(k: usize, dir: Dir) -> String {
    match dir {
        Dir::Up => format!("u{k}"),
        Dir::Down => format!("d{k}"),
    }
}

/// Pages per cursor at the start (see [`plan_cursors`]).
const PAGES_PER_CURSOR: u64 = 6;

/// How many cursors to start with: enough to use the portal's burst — a cursor makes one step per round trip, and
/// each request carries 50 — but every range (two cursors) ends with one partly filled page, so more cursors cost
/// more commands. One cursor per 6 pages, at most 50 per request allowed in flight and 50 more ready.
pub fn plan_cursors(total: Option<u64>, max_inflight: usize) -> usize {
    let max = BATCH * (max_inflight.max(1) + 1);
    let Some(total) = total else { return (2 * BATCH).min(max) };
    let pages = total.div_ceil(PAGE as u64);
    ((pages / PAGES_PER_CURSOR) as usize).clamp(2, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_grow_with_the_portal() {
        assert_eq!(plan_cursors(Some(0), 8), 2);
        assert_eq!(plan_cursors(Some(20_000), 8), 66);
        assert_eq!(plan_cursors(Some(200_000), 8), 450);
        assert_eq!(plan_cursors(Some(1_000_000), 8), 450);
        assert_eq!(plan_cursors(Some(1_000_000), 1), 100);
        assert_eq!(plan_cursors(None, 8), 100);
    }

    #[test]
    fn coverage_merges_and_finds_gaps() {
        let mut c = Coverage::default();
        assert_eq!(c.gaps(1, 10), vec![(1, 10)]);
        c.add(5, 7);
        c.add(1, 3);
        c.add(3, 4);
        c.add(6, 9);
        assert_eq!(c.0, vec![(1, 4), (5, 9)]);
        assert_eq!(c.gaps(0, 12), vec![(0, 1), (4, 5), (9, 12)]);
        assert_eq!(c.gaps(2, 4), vec![]);
        assert_eq!(c.gaps(8, 20), vec![(9, 20)]);
        c.add(4, 5);
        assert_eq!(c.0, vec![(1, 9)]);
    }

    fn tiles(r: &Ranges) -> Vec<(i64, i64)> {
        let mut spans: Vec<(i64, i64)> = r.map.values().map(|x| (x.lo + 1, x.hi)).collect();
        spans.sort();
        spans
    }

    #[test]
    fn ranges_split_without_overlap() {
        let mut r = Ranges::default();
        r.insert(Range::new(0, 10_001));
        r.refill(50);
        let spans = tiles(&r);
        assert_eq!(spans.len(), 50);
        assert_eq!(spans.first().unwrap().0, 1);
        assert_eq!(spans.last().unwrap().1, 10_001);
        assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "ranges must tile the ID space exactly");
        // a narrow range is not split further
        let mut r = Ranges::default();
        r.insert(Range::new(0, 60));
        r.refill(50);
        assert_eq!(r.map.len(), 1);
        // a sparse range (few leads per ID) is not split either, a dense one is
        let mut r = Ranges { density: 0.001, ..Ranges::default() };
        r.insert(Range::new(0, 50_000));
        r.refill(50);
        assert_eq!(r.map.len(), 1, "about 50 leads left: one page");
        let mut dense = Range::new(0, 50_000);
        dense.seen_rows = 1_000.0;
        dense.seen_ids = 1_000.0;
        r.map.clear();
        r.insert(dense);
        r.refill(50);
        assert_eq!(r.map.len(), 50);
    }

    #[test]
    fn a_range_with_a_cursor_under_way_is_cut_past_its_page() {
        // dense IDs (one lead per ID): the page under way reads about 50 IDs, the cut goes 62.5 past the cursor
        let dense = || {
            let mut r = Range::new(1_000, 3_001);
            r.seen_rows = 100.0;
            r.seen_ids = 100.0;
            r
        };
        let mut r = Ranges::default();
        let mut up = dense();
        up.busy[Dir::Up as usize] = true;
        r.insert(up);
        assert!(r.split_busy(0));
        let (a, b) = (r.map[&0].clone(), r.map[&1].clone());
        assert_eq!((a.lo, a.hi), (1_000, 1_064), "the busy part keeps its key and the IDs next to its cursor");
        assert!(a.busy[Dir::Up as usize] && b.idle(), "the step under way stays with its part");
        assert_eq!(b.lo, a.hi - 1, "the new part starts at the cut: no ID lost, none in both");
        assert_eq!(b.hi, 3_001);
        // the same from the top
        let mut r = Ranges::default();
        let mut down = dense();
        down.busy[Dir::Down as usize] = true;
        r.insert(down);
        assert!(r.split_busy(0));
        let (a, b) = (r.map[&0].clone(), r.map[&1].clone());
        assert_eq!((a.lo, a.hi), (2_937, 3_001));
        assert!(a.busy[Dir::Down as usize] && b.idle());
        assert_eq!((b.lo, b.hi), (1_000, a.lo + 1));
        let spans = tiles(&r);
        assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "{spans:?}");
        // a range the page under way most likely finishes is left alone
        let mut r = Ranges::default();
        let mut short = Range::new(1_000, 1_060);
        short.busy[Dir::Up as usize] = true;
        r.insert(short);
        assert!(!r.split_busy(0));
        assert_eq!(r.map.len(), 1);
        // shorten() cuts busy ranges too, until none has more than asked left beyond its steps under way
        let mut r = Ranges::default();
        for k in 0..4 {
            let mut g = Range::new(k * 10_000, k * 10_000 + 2_001);
            g.seen_rows = 100.0;
            g.seen_ids = 100.0;
            g.busy[k as usize % 2] = true;
            r.insert(g);
        }
        r.shorten(300.0);
        let d = r.est();
        assert!(r.map.values().all(|g| g.left(d) <= 300.0), "{:?}", r.map.values().map(|g| g.left(d)).collect::<Vec<_>>());
        assert_eq!(r.map.values().filter(|g| !g.idle()).count(), 4, "the steps under way stay where they were");
        let spans = tiles(&r);
        assert_eq!(spans.iter().map(|s| s.1 - s.0).sum::<i64>(), 4 * 2_000);
    }

    #[test]
    fn both_cursors_go_only_where_two_pages_are_likely() {
        let mut r = Ranges::default();
        r.insert(Range::new(0, 1_000)); // ~999 leads: both cursors
        r.insert(Range::new(2_000, 2_030)); // ~29 leads: one page ends it
        let picked = r.pick(50);
        assert_eq!(picked, vec![(0, Dir::Up), (0, Dir::Down), (1, Dir::Up)]);
        assert_eq!(r.ready(), 0, "every useful step is under way");
        // nothing more is picked while the steps are under way, except where more than the pages under way is left
        let mut big = Ranges::default();
        big.insert(Range::new(0, 100_000));
        big.map.get_mut(&0).unwrap().busy = [true, false];
        assert_eq!(big.pick(50), vec![(0, Dir::Down)]);
    }

    #[test]
    fn end_of_run_splits_keep_requests_full() {
        let mut r = Ranges::default();
        r.insert(Range::new(0, 2_000)); // ~40 pages in one range: two cursors only
        assert_eq!(r.ready(), 2);
        r.split_for(48);
        assert_eq!(r.ready(), 32, "16 ranges of ~125 leads, two cursors each");
        let spans = tiles(&r);
        assert!(spans.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!((spans[0].0, spans.last().unwrap().1), (1, 2_000));
        // small ranges are not split
        let mut r = Ranges::default();
        r.insert(Range::new(0, 120));
        r.split_for(48);
        assert_eq!(r.map.len(), 1);
    }

    #[test]
    fn the_last_rounds_cover_every_range_before_second_steps() {
        let mut r = Ranges::default();
        r.insert(Range::new(0, 1_000)); // ~999 leads
        r.insert(Range::new(2_000, 2_200)); // ~199 leads
        r.insert(Range::new(3_000, 3_150)); // ~149 leads
        r.cover = true;
        let picked = r.pick(4);
        assert_eq!(picked, vec![(0, Dir::Up), (1, Dir::Up), (2, Dir::Up), (0, Dir::Down)]);
    }

    #[test]
    fn a_thin_last_request_is_filled_with_exact_splits() {
        let mut r = Ranges { density: 0.5, ..Ranges::default() };
        r.insert(Range::new(0, 400)); // ~200 leads: two cursors, no split worth it before the last request
        r.insert(Range::new(1_000, 1_011));
        assert_eq!(r.ready(), 3);
        r.pad(BATCH);
        assert!(r.ready() >= BATCH, "{}", r.ready());
        let spans = tiles(&r);
        let low: Vec<(i64, i64)> = spans.iter().copied().filter(|s| s.1 <= 400).collect();
        let high: Vec<(i64, i64)> = spans.iter().copied().filter(|s| s.1 > 400).collect();
        assert!(low.windows(2).all(|w| w[0].1 == w[1].0) && high.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!((low[0].0, low.last().unwrap().1), (1, 400));
        assert_eq!((high[0].0, high.last().unwrap().1), (1_001, 1_011));
        // a range whose cursors met gets no step, whatever the margin
        let mut done = Range::new(5, 6);
        done.busy = [true, false];
        assert_eq!(worth(&done, -50.0, f64::NEG_INFINITY), 0);
    }

    #[test]
    fn estimates_follow_the_count() {
        let mut r = Ranges { density: 0.5, ..Ranges::default() };
        r.insert(Range::new(0, 1_001));
        assert_eq!(r.steps_left(), 10.5);
        r.scale = 1.5;
        assert_eq!(r.steps_left(), 15.5);
    }

    #[test]
    fn pace_mirrors_the_bucket() {
        let mut p = Pace::new(2.0, 3.0, 1);
        assert!(p.wait().is_none());
        p.take();
        p.take();
        let w = p.wait().expect("full");
        assert!(w > std::time::Duration::from_millis(400) && w <= std::time::Duration::from_millis(500), "{w:?}");
    }

    #[test]
    fn overlapping_pages_keep_only_new_rows() {
        let raw = RawValue::from_string(r#"[{"ID":"5"},{"ID":"6"},{"ID":"9"}]"#.into()).unwrap();
        let ids = vec![Some(5), Some(6), Some(9)];
        let (kept, n) = keep_rows(raw, &ids, |id| id > 5).unwrap();
        assert_eq!((kept.get(), n), (r#"[{"ID":"6"},{"ID":"9"}]"#, 2));
        let raw = RawValue::from_string("[]".into()).unwrap();
        let (kept, n) = keep_rows(raw, &[], |_| true).unwrap();
        assert_eq!((kept.get(), n), ("[]", 0));
    }
}
