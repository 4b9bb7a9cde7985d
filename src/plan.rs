//! Fetch planning: the ID space split into disjoint ranges, one exact ID cursor per range
//! (`>ID last`, `<ID hi`, `order ID ASC`, `start=-1`), up to 50 cursor steps packed into each `batch` request,
//! several requests in flight. Never offsets: they drift when leads change and cost a COUNT per page.
//!
//! Exactly-once: ranges never overlap, a range only moves its cursor past rows it has received, and a range is
//! split only while no request for it is in flight.

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

#[derive(Debug, Clone)]
struct Range {
    /// Cursor: the next rows have ID > last.
    last: i64,
    /// Exclusive upper bound.
    hi: i64,
    busy: bool,
    failures: u32,
    /// Leads per ID seen on this range's last full page (IDs are rarely dense: deletions, imports).
    density: Option<f64>,
}

impl Range {
    fn new(last: i64, hi: i64) -> Self {
        Range { last, hi, busy: false, failures: 0, density: None }
    }

    fn span(&self) -> i64 {
        self.hi - self.last - 1
    }

    /// About how many leads are left in the range.
    fn remaining(&self, default_density: f64) -> f64 {
        self.span() as f64 * self.density.unwrap_or(default_density)
    }
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
fn ids_of(method: &str, key: &str, raw: &RawValue) -> Result<Vec<Option<i64>>, PortalError> {
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

/// A batch request under way: the keys of its ranges, their state when sent, and its outcome.
type InFlight = (Vec<usize>, Vec<Range>, std::result::Result<BatchOutcome, PortalError>);

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

/// The open ranges, under stable keys (requests in flight refer to them by key).
struct Ranges {
    map: std::collections::BTreeMap<usize, Range>,
    next_key: usize,
    /// Leads per ID over the whole span (from the probe's count), for ranges not yet sampled.
    density: f64,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges { map: Default::default(), next_key: 0, density: 1.0 }
    }
}

impl Ranges {
    fn insert(&mut self, r: Range) {
        self.map.insert(self.next_key, r);
        self.next_key += 1;
    }

    /// Splits idle ranges until there are `want` idle ones or none is worth splitting. The range with the most
    /// leads left (by its observed density) is split, so that ranges finish at about the same time.
    fn refill(&mut self, want: usize) {
        loop {
            if self.map.values().filter(|r| !r.busy).count() >= want {
                return;
            }
            let d = self.density;
            let Some((&k, fullest)) = self
                .map
                .iter()
                .filter(|(_, r)| !r.busy && r.span() >= 2)
                .max_by(|a, b| a.1.remaining(d).total_cmp(&b.1.remaining(d)))
            else {
                return;
            };
            if fullest.remaining(d) < 2.0 * PAGE as f64 {
                return; // a couple of pages left at most: splitting would cost more commands than it saves
            }
            let mid = fullest.last + 1 + fullest.span() / 2;
            let mut upper = Range::new(mid - 1, fullest.hi);
            upper.density = fullest.density;
            self.map.get_mut(&k).expect("present").hi = mid;
            self.insert(upper);
        }
    }
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
    let concurrency = plan_concurrency(total, spec.concurrency);
    tracing::debug!("probe: IDs {lo}..={hi}, {total:?} leads; {concurrency} batch request(s) in flight");
    let mut ranges = Ranges::default();
    if let Some(t) = total {
        ranges.density = (t as f64 / (hi - lo + 1) as f64).clamp(1e-9, 1.0);
    }
    for (a, b) in todo {
        ranges.insert(Range::new(a - 1, b));
    }
    ranges.refill(BATCH * concurrency);
    let mut inflight: JoinSet<InFlight> = JoinSet::new();
    let mut fetched = 0u64;
    let (mut batches, mut commands, mut partial, mut empty) = (0u64, 0u64, 0u64, 0u64);
    loop {
        // launch requests while there is room and idle work
        while inflight.len() < concurrency {
            // the method's operating budget: hold back rather than be blocked
            if let Some(wait) = client.budget().wait_before(&spec.method, inflight.len()) {
                if !inflight.is_empty() {
                    break; // let the requests under way finish first; their answers update the picture
                }
                if !client.may_pause() {
                    return Err(paused_too_long(&spec.method).into());
                }
                client.pause(wait, &format!("{}: close to the operating-time limit", spec.method)).await;
            }
            ranges.refill(BATCH);
            let picked: Vec<usize> = ranges.map.iter().filter(|(_, r)| !r.busy).map(|(k, _)| *k).take(BATCH).collect();
            if picked.is_empty() {
                break;
            }
            let mut cmds = Vec::with_capacity(picked.len());
            let mut snapshot = Vec::with_capacity(picked.len());
            for &i in &picked {
                let r = ranges.map.get_mut(&i).expect("picked");
                r.busy = true;
                let params = list_params(&spec, &[(">ID", json!(r.last)), ("<ID", json!(r.hi))], "ASC", &spec.select);
                cmds.push((format!("r{i}"), command(&spec, &params)));
                snapshot.push(r.clone());
            }
            batches += 1;
            commands += cmds.len() as u64;
            let client = client.clone();
            inflight.spawn(async move {
                let out = client.batch(&cmds).await;
                (picked, snapshot, out)
            });
        }
        let Some(joined) = inflight.join_next().await else { break };
        let (picked, snapshot, out) = joined.map_err(|e| crate::error::Error::Internal(format!("fetch task failed: {e}")))?;
        let mut out = out?;
        if let Some(e) = fatal_error(&spec, &out, 1) {
            return Err(e.into());
        }
        let mut chunks = Vec::new();
        let mut covered = Vec::new();
        let mut page_rows = 0usize;
        let mut worst_failures = 0u32;
        let mut failed_steps = 0usize;
        let mut blocked = 0usize;
        for (&i, sent) in picked.iter().zip(&snapshot) {
            let key = format!("r{i}");
            let r = ranges.map.get_mut(&i).expect("in flight");
            r.busy = false;
            if out.errors.get(&key).is_some_and(|(code, _)| code == "OPERATION_TIME_LIMIT") {
                blocked += 1; // not this step's fault: it goes again after the method's reset
                continue;
            }
            let Some(res) = out.results.remove(&key) else {
                // failed transiently (or silently dropped): the same step goes again
                r.failures += 1;
                client.stats().retries.fetch_add(1, Ordering::Relaxed);
                if r.failures > spec.max_retries {
                    let why = out.errors.get(&key).map(|(c, d)| format!("{c} ({d})")).unwrap_or_else(|| "no result".into());
                    return Err(PortalError::Transport {
                        method: spec.method.clone(),
                        message: format!("cursor step for IDs ({}, {}) kept failing: {why}", sent.last, sent.hi),
                        attempts: r.failures,
                    }
                    .into());
                }
                worst_failures = worst_failures.max(r.failures);
                failed_steps += 1;
                continue;
            };
            r.failures = 0;
            let res = spec.normalized(&key, res)?;
            let ids = ids_of(&spec.method, &key, &res)?;
            let mut last = sent.last;
            for (n, id) in ids.iter().enumerate() {
                let id = id.ok_or_else(|| PortalError::Protocol {
                    method: spec.method.clone(),
                    status: 200,
                    message: format!("record {n} of the page after ID {} has no numeric ID", sent.last),
                })?;
                if id <= last || id >= sent.hi {
                    return Err(PortalError::Protocol {
                        method: spec.method.clone(),
                        status: 200,
                        message: format!(
                            "lead {id} is outside the requested cursor range ({last}, {}) or out of order; the portal ignored the ID filter or order",
                            sent.hi
                        ),
                    }
                    .into());
                }
                last = id;
            }
            if ids.is_empty() {
                empty += 1;
            } else if ids.len() < PAGE {
                partial += 1;
            }
            if ids.len() < PAGE {
                ranges.map.remove(&i); // a short page ends the cursor: the range is exhausted
                covered.push((sent.last + 1, sent.hi));
            } else {
                covered.push((sent.last + 1, last + 1));
                r.density = Some(PAGE as f64 / (last - sent.last).max(1) as f64);
                r.last = last;
            }
            if !ids.is_empty() {
                page_rows += ids.len();
                chunks.push(res);
            }
        }
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
        if !covered.is_empty() && tx.send(Page { chunks, rows: page_rows, covered }).await.is_err() {
            return Err(crate::error::Error::Internal("the converter stopped".into()));
        }
    }
    tracing::debug!(
        "planner: {batches} batch requests, {commands} list commands ({:.1} per request), {partial} partial and {empty} empty pages, {} ranges in all",
        commands as f64 / batches.max(1) as f64,
        ranges.next_key
    );
    Ok(fetched)
}


/// How many batch requests to keep in flight: enough to use the portal's burst, but each in-flight request needs
/// 50 ranges and each range ends with one partly filled page, so more ranges cost more requests. Aim for about
/// one range per 12 pages (≈ 8 % extra commands in theory, ≈ 9 % measured at 200,000 leads), at most `max` requests in flight.
pub fn plan_concurrency(total: Option<u64>, max: usize) -> usize {
    let max = max.max(1);
    let Some(total) = total else { return max.min(2) };
    let pages = total.div_ceil(PAGE as u64);
    ((pages / 12) as usize / BATCH).clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_grows_with_the_portal() {
        assert_eq!(plan_concurrency(Some(0), 8), 1);
        assert_eq!(plan_concurrency(Some(20_000), 8), 1);
        assert_eq!(plan_concurrency(Some(200_000), 8), 6);
        assert_eq!(plan_concurrency(Some(1_000_000), 8), 8);
        assert_eq!(plan_concurrency(None, 8), 2);
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

    #[test]
    fn ranges_split_without_overlap() {
        let mut r = Ranges::default();
        r.insert(Range::new(0, 10_001));
        r.refill(50);
        let mut spans: Vec<(i64, i64)> = r.map.values().map(|x| (x.last + 1, x.hi)).collect();
        spans.sort();
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
        dense.density = Some(1.0);
        r.map.clear();
        r.insert(dense);
        r.refill(50);
        assert_eq!(r.map.len(), 50);
    }
}
