//! The export pipeline: portal → pages → record batches → Parquet files.
//!
//! Fetching runs on a small tokio runtime; conversion and Parquet encoding run on two plain threads, joined by
//! bounded channels, so a slow disk slows the fetch instead of filling memory.
//!
//! The commit protocol, the same on a local disk and on S3:
//! 1. Parquet files are written to a local spool folder; at each checkpoint (`--checkpoint-every`) the writer
//!    finishes its open files, moves them to the run's staging area in the output
//!    (`OUT/.b24-staging/<dataset>/<run id>/<dataset>/…`), then saves `checkpoint.json` listing them and the ID
//!    intervals they complete. `--resume` continues the latest interrupted run of that dataset from there.
//! 2. When the fetch is complete, the staged files are moved into the dataset (`OUT/leads/…`, `OUT/deals/…`,
//!    renames locally, server-side copies on S3), dictionaries and rejects beside it, and the manifest is committed
//!    with a create-only put (`OUT/_manifests/<dataset>/vNNNNNN.json`).
//!
//! Each entity (`--entity`) is one such run with its own dataset, staging area and manifests; one lock covers
//! the output while any of them runs.
//! 3. Only then are the previous snapshot's files, files of failed runs and all staged leftovers removed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::client::{ClientConfig, ClientStats, PortalClient};
use crate::entity::Entity;
use crate::error::{Error, Result};
use crate::plan::{self, Coverage, FetchSpec, Page};
use crate::progress::Progress;
use crate::schema;
use crate::client::auth::AuthConfig;
use crate::sink::partition::PartitionSpec;
use crate::sink::manifest::{self, Changes, Manifest, ManifestFile};
use crate::sink::merge::{self, Index};
use crate::item::ItemMap;
use crate::error::PortalError;
use crate::sink::output::{Output, S3Options};
use crate::sink::{self, DatasetWriter, SinkConfig};

/// Everything an export needs.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// How to reach the portal: webhook or OAuth app.
    pub auth: AuthConfig,
    /// The output root: a local path, `file://…` or `s3://bucket/prefix`; the dataset goes to `OUT/<dataset>`
    /// (`leads`, `deals`, `contacts`, `companies`).
    pub out: String,
    /// What to export.
    pub entity: Entity,
    pub s3: S3Options,
    pub partition: PartitionSpec,
    /// A legacy list filter object (`crm.lead.list` names), combined with the cursor's own conditions.
    pub filter: Map<String, Value>,
    /// Fields to export (`None` = all); ID is always kept.
    pub select: Option<Vec<String>>,
    pub client: ClientConfig,
    /// Batch requests in flight at once.
    pub concurrency: usize,
    /// Replace an existing dataset (its files are removed after the new one is committed).
    pub overwrite: bool,
    /// Show progress (a bar on a terminal, log lines otherwise).
    pub progress: bool,
    /// Stop at the first value that does not fit its column, instead of writing NULL and a reject.
    pub strict: bool,
    /// Continue the latest interrupted run from its last checkpoint.
    pub resume: bool,
    /// How often finished files and the fetch progress are checkpointed.
    pub checkpoint_every: Duration,
    /// Merge only what changed since the last committed snapshot into it.
    pub incremental: Option<IncrementalOptions>,
    /// `--raw-out`: keep every page body as it came, for `b24-export convert`.
    pub raw_out: Option<String>,
    /// Which list method: the legacy `crm.<entity>.list`, `crm.item.list`, or the item API where it serves every
    /// field.
    pub api: Api,
}

/// `--api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Lead,
    Item,
    Auto,
}

/// The field metadata in legacy shape, and the item map when the run uses crm.item.list. `auto` asks for both
/// field lists in one `batch` request (no request more than `--api lead`) and takes the item API only when it
/// serves every field asked for: switching must never lose a column.
async fn field_metadata(client: &PortalClient, entity: Entity, api: Api, select: Option<&[String]>) -> Result<(Value, Option<ItemMap>)> {
    let map = ItemMap::of(entity);
    let legacy_method = entity.fields_method();
    let item_cmd = format!("crm.item.fields?entityTypeId={}&useOriginalUfNames=Y", map.entity_type_id);
    let (item_fields, legacy) = match api {
        Api::Lead => return Ok((client.call(legacy_method, &json!({})).await?.value()?, None)),
        Api::Item => {
            let params = json!({"entityTypeId": map.entity_type_id, "useOriginalUfNames": "Y"});
            (client.call("crm.item.fields", &params).await?.value()?, None)
        }
        Api::Auto => {
            let mut attempts = 0;
            let mut out = loop {
                attempts += 1;
                let out = client.batch(&[("item".into(), item_cmd.clone()), ("lead".into(), legacy_method.into())]).await?;
                if out.results.contains_key("lead") || attempts > 3 {
                    break out;
                }
            };
            let legacy: Value = match out.results.remove("lead") {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|e| Error::Internal(format!("{legacy_method}: {e}")))?,
                None => {
                    let (code, desc) = out.errors.remove("lead").unwrap_or_default();
                    return Err(PortalError::Api { method: legacy_method.into(), status: 200, code, description: desc, attempts }.into());
                }
            };
            match out.results.remove("item") {
                Some(raw) => (serde_json::from_str(raw.get()).map_err(|e| Error::Internal(format!("crm.item.fields: {e}")))?, Some(legacy)),
                None => {
                    let why = out.errors.remove("item").map(|(c, _)| c).unwrap_or_default();
                    tracing::info!("--api auto: crm.item.fields is not available ({why}); using {}", entity.list_method());
                    return Ok((legacy, None));
                }
            }
        }
    };
    let meta = map.legacy_fields(&item_fields)?;
    if let Some(legacy) = legacy {
        // the legacy names of the fields asked for (--select takes any case)
        let legacy_names: Vec<String> = legacy.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let wanted: Vec<String> = match select {
            Some(s) => legacy_names.iter().filter(|k| s.iter().any(|x| x.eq_ignore_ascii_case(k))).cloned().collect(),
            None => legacy_names,
        };
        // a field is served when the item API has it with the same content (a standard file field is only the
        // file's ID there, without the legacy object's show URL)
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|f| (meta.get(f.as_str()).is_none() || map.is_file_field(f)) && legacy.get(f.as_str()).is_some())
            .collect();
        if !missing.is_empty() {
            tracing::info!(
                "--api auto: crm.item.list lacks {} field(s) ({}{}); using {}",
                missing.len(),
                missing.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                if missing.len() > 5 { ", …" } else { "" },
                entity.list_method()
            );
            return Ok((legacy, None));
        }
    }
    Ok((meta, Some(map)))
}

/// `b24-export convert RAW --out OUT`: rebuild a dataset from a raw landing zone, without the portal.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub raw: String,
    pub out: String,
    pub s3: S3Options,
    /// `None`: the default of the raw run's entity.
    pub partition: Option<PartitionSpec>,
    /// Which entity's latest raw run to take from a root of several (`None`: the run folder's own, or leads).
    pub entity: Option<Entity>,
    pub overwrite: bool,
    pub progress: bool,
    pub strict: bool,
}

/// Where a run's pages come from.
enum Source {
    /// The portal: the planner's ID cursors.
    Portal { client: Arc<PortalClient>, spec: Arc<FetchSpec>, user_filter: Map<String, Value> },
    /// A raw landing zone.
    Raw { raw: Arc<Output>, input: Box<crate::raw::RawInput> },
}

/// `--incremental` and its options.
#[derive(Debug, Clone)]
pub struct IncrementalOptions {
    /// `--since`: the watermark to use instead of the last manifest's highest DATE_MODIFY (RFC 3339).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// `--overlap`: fetch from this much before the watermark (clocks differ, times have second precision).
    pub overlap: Duration,
    /// `--detect-deletes`: list every ID the portal has and remove rows of leads it no longer has.
    pub detect_deletes: bool,
    /// `--keep-deleted`: keep those rows instead, with `deleted_at` set to the run's time.
    pub keep_deleted: bool,
}

/// What an export did.
#[derive(Debug)]
pub struct ExportSummary {
    /// `--resume` found nothing interrupted: nothing was fetched, the committed snapshot stays.
    pub nothing_to_resume: bool,
    pub entity: Entity,
    /// Where the dataset is, as a reader names it (a path or an `s3://` URL).
    pub dataset: String,
    pub run_id: String,
    /// Rows in the dataset (leads, deals, …).
    pub leads: u64,
    /// Rows an interrupted run had already exported when this run resumed it.
    pub resumed_leads: u64,
    pub files: Vec<ManifestFile>,
    pub bytes: u64,
    pub requests: u64,
    pub retries: u64,
    /// Seconds spent waiting for the operating-time budget, and 429 blocks met.
    pub paused_secs: f64,
    pub operating_blocks: u64,
    pub seconds: f64,
    /// Files of a previous snapshot (or of failed runs) removed after the commit.
    pub replaced: usize,
    /// The version of the committed manifest (`OUT/_manifests/<dataset>/vNNNNNN.json`).
    pub manifest_version: u64,
    /// Values that did not fit their column (now NULL), per field.
    pub rejects: BTreeMap<String, u64>,
    /// Where the rejected values are listed, when there are any.
    pub rejects_file: Option<String>,
    /// What an incremental run changed.
    pub changes: Option<Changes>,
}

/// Runs in progress and their checkpoints, beside the datasets: `OUT/.b24-staging/<dataset>/<run id>/…`.
pub const STAGING: &str = ".b24-staging";

impl ExportSummary {
    /// The summary of a run that had nothing to do: the committed snapshot `m`.
    fn unchanged(entity: Entity, dataset: String, m: &Manifest, seconds: f64) -> ExportSummary {
        ExportSummary {
            nothing_to_resume: true,
            entity,
            dataset,
            run_id: m.run_id.clone(),
            leads: m.total_rows,
            resumed_leads: 0,
            bytes: m.files.iter().map(|f| f.bytes).sum(),
            files: m.files.clone(),
            requests: 0,
            retries: 0,
            paused_secs: 0.0,
            operating_blocks: 0,
            seconds,
            replaced: 0,
            manifest_version: m.version,
            rejects: BTreeMap::new(),
            rejects_file: None,
            changes: None,
        }
    }
}
/// Labels and dictionaries: `OUT/_dict/<table>/<dataset>.parquet`.
pub const DICT: &str = "_dict";
/// Rejected values: `OUT/_rejects/<dataset>.jsonl`.
pub const REJECTS: &str = "_rejects";
const LOCK: &str = "lock";

fn new_run_id() -> String {
    format!("{}-{:04x}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"), fastrand::u16(..))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The progress of a run, saved under `OUT/.b24-staging/<dataset>/<run id>/checkpoint.json`: which IDs are done and which
/// staged files hold them. Everything it lists is complete; anything else in the run's staging area is not.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    format: u32,
    run_id: String,
    started_at: String,
    /// What the run was asked for: a resumed run must ask for the same.
    select: Option<Vec<String>>,
    filter: Value,
    partition_by: String,
    schema_fingerprint: String,
    /// ID intervals fully exported.
    covered: Coverage,
    /// Finished files in `staging/<dataset>/`, relative to the dataset.
    files: Vec<ManifestFile>,
    rows: u64,
    /// Highest DATE_MODIFY so far, in microseconds since the epoch.
    max_date_modify: Option<i64>,
    rejects: BTreeMap<String, u64>,
    /// Rejects files in `staging/_rejects/`, in order.
    reject_segments: Vec<String>,
    next_seq: u64,
    /// An incremental run is not resumed: the next one starts again from the last committed watermark.
    #[serde(default)]
    incremental: bool,
}

/// The staging area of a dataset's runs.
fn staging_root(dataset: &str) -> String {
    format!("{STAGING}/{dataset}")
}

fn staging_of(dataset: &str, run_id: &str) -> String {
    format!("{}/{run_id}", staging_root(dataset))
}

/// The local folder a run writes its files in before they move to the output: inside the run's staging area on a
/// disk (a rename away), in the temporary directory for an object store.
fn spool_of(out: &Output, dataset: &str, run_id: &str) -> PathBuf {
    match out {
        Output::Local { root } => root.join(staging_of(dataset, run_id)).join("spool"),
        Output::S3 { .. } => std::env::temp_dir().join(format!("b24-export-{run_id}")),
    }
}

/// The columns and Arrow schema of a run from field metadata (`from` names where it came from); every `required`
/// field must be there.
fn columns_for(
    entity: Entity,
    meta: &Value,
    select: Option<&[String]>,
    required: &[(&str, &str)],
    from: &str,
) -> Result<(Vec<schema::Column>, arrow_schema::SchemaRef, String)> {
    let names: Vec<&str> = required.iter().map(|(f, _)| *f).collect();
    let cols = schema::build_columns(entity, meta, select, &names)?;
    for (field, why) in required {
        if !cols.iter().any(|c| c.source == *field) {
            return Err(Error::Usage(format!("{why} needs the field {field}, which {from} does not list")));
        }
    }
    let arrow_schema = schema::arrow_schema(&cols);
    let fingerprint = arrow_schema.metadata().get("b24_export.schema_fingerprint").cloned().unwrap_or_default();
    Ok((cols, arrow_schema, fingerprint))
}

impl Checkpoint {
    /// What differs between this run's request and another run's (a snapshot it would merge into, a run it
    /// would resume), as the option a user would change; `None` when they asked for the same.
    fn asked_differently(&self, select: &Option<Vec<String>>, filter: &Value, partition_by: &str, fingerprint: &str) -> Option<&'static str> {
        [
            (*select != self.select, "--select"),
            (*filter != self.filter, "--filter"),
            (partition_by != self.partition_by, "--partition-by"),
            (fingerprint != self.schema_fingerprint, "the portal's fields"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }

    /// A new run that has fetched nothing yet.
    fn fresh(select: Option<Vec<String>>, filter: &Map<String, Value>, partition: &PartitionSpec, fingerprint: String, incremental: bool) -> Self {
        Checkpoint {
            format: 1,
            run_id: new_run_id(),
            started_at: now_rfc3339(),
            select,
            filter: Value::Object(filter.clone()),
            partition_by: partition.name().into(),
            schema_fingerprint: fingerprint,
            covered: Coverage::default(),
            files: Vec::new(),
            rows: 0,
            max_date_modify: None,
            rejects: BTreeMap::new(),
            reject_segments: Vec::new(),
            next_seq: 0,
            incremental,
        }
    }
}

/// One export per local output directory at a time: the run holds an exclusive `flock` on `OUT/.b24-staging/lock`
/// (which also names its pid, for the message a second run gets). The kernel releases the lock when the process
/// ends, however it ends, so a killed run never blocks the next one and a reused pid never fakes a live run.
struct OutputLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl OutputLock {
    fn take(out: &std::path::Path) -> Result<OutputLock> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::MetadataExt;
        let staging = out.join(STAGING);
        let path = staging.join(LOCK);
        let unwritable = |e: std::io::Error| {
            Error::Usage(format!("cannot write to {} ({e}); choose a writable --out directory", out.display()))
        };
        std::fs::create_dir_all(&staging).map_err(unwritable)?;
        for _ in 0..3 {
            let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(unwritable)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    return Err(Error::Usage(format!(
                        "another export (pid {}) is writing to {}; wait for it, or use another --out",
                        pid.trim(),
                        out.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // the run before us may have removed the file after we opened it: only the file at the path counts
            let same = std::fs::metadata(&path).is_ok_and(|m| file.metadata().is_ok_and(|f| f.ino() == m.ino()));
            if !same {
                continue;
            }
            file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(std::process::id().to_string().as_bytes())).map_err(|e| Error::io(&path, e))?;
            return Ok(OutputLock { path, _file: file });
        }
        Err(Error::Usage(format!("another export is starting in {}; run one export per --out at a time", out.display())))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // removed while still locked (the file is unlocked when `_file` drops, right after)
        let _ = std::fs::remove_file(&self.path);
        if let Some(staging) = self.path.parent() {
            let _ = std::fs::remove_dir(staging); // only if nothing is staged
        }
    }
}

/// One export per output at a time, on a disk ([`OutputLock`]) and on an object store: there, a create-only
/// `.b24-staging/lock` object with a heartbeat the run refreshes every minute; a lock whose heartbeat is older
/// than 15 minutes, or that names this host and a process that no longer runs, belongs to a run that died and is
/// taken over.
enum Lock {
    Local(#[allow(dead_code)] OutputLock),
    Store { out: Arc<Output>, rt: tokio::runtime::Handle, beat: tokio::task::JoinHandle<()> },
}

const STALE_LEASE_SECS: i64 = 15 * 60;

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn lease_body() -> Vec<u8> {
    let host = host_name();
    serde_json::to_vec(&json!({"pid": std::process::id(), "host": host, "heartbeat": chrono::Utc::now().timestamp()})).unwrap_or_default()
}

impl Lock {
    fn take(out: &Arc<Output>, rt: &tokio::runtime::Runtime) -> Result<Lock> {
        let root = match &**out {
            Output::Local { root } => return Ok(Lock::Local(OutputLock::take(root)?)),
            Output::S3 { .. } => out.clone(),
        };
        let key = format!("{STAGING}/{LOCK}");
        rt.block_on(async {
            for _ in 0..2 {
                if root.put_create(&key, lease_body()).await? == crate::sink::output::Created::Yes {
                    return Ok(());
                }
                let held: Value = root.get(&key).await?.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
                let beat = held.get("heartbeat").and_then(Value::as_i64).unwrap_or(0);
                // a run on this very host whose process is gone (killed) is stale at once
                let pid = held.get("pid").and_then(Value::as_u64).unwrap_or(0);
                let dead_here = held.get("host").and_then(Value::as_str) == Some(host_name().as_str())
                    && !host_name().is_empty()
                    && pid != 0
                    && pid != u64::from(std::process::id())
                    && std::path::Path::new("/proc/self").exists()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists();
                if !dead_here && chrono::Utc::now().timestamp() - beat < STALE_LEASE_SECS {
                    return Err(Error::Usage(format!(
                        "another export (pid {}, host {}) is writing to {} (its heartbeat is {} s old); wait for it, or delete {} if that run is gone",
                        held.get("pid").unwrap_or(&Value::Null),
                        held.get("host").and_then(Value::as_str).unwrap_or("?"),
                        root.display(""),
                        chrono::Utc::now().timestamp() - beat,
                        root.display(&key)
                    )));
                }
                tracing::warn!("taking over the lock of a run whose heartbeat stopped {} s ago", chrono::Utc::now().timestamp() - beat);
                root.delete(&key).await?;
            }
            Err(Error::Usage(format!("another export took the lock of {} at the same moment", root.display(""))))
        })?;
        let (beat_out, beat_key) = (root.clone(), key);
        let beat = rt.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                if let Err(e) = beat_out.put_bytes(&beat_key, lease_body()).await {
                    tracing::warn!("could not refresh the output lock ({e})");
                }
            }
        });
        Ok(Lock::Store { out: root, rt: rt.handle().clone(), beat })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Lock::Store { out, rt, beat } = self {
            beat.abort();
            // a store that is gone must not hold the exit up: the lock then goes stale by itself
            let _ = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), out.delete(&format!("{STAGING}/{LOCK}"))).await
            });
        }
    }
}

/// The most recent interrupted run of a dataset that left a checkpoint, if any.
/// A run whose manifest was committed (`committed_run`) is not interrupted, even if its checkpoint is still
/// there (a kill during its cleanup): it is skipped, and its leftovers go with the next commit. An unreadable
/// checkpoint is skipped with a warning.
async fn find_checkpoint(out: &Output, dataset: &str, committed_run: Option<&str>) -> Result<Option<Checkpoint>> {
    let mut runs: Vec<String> = out
        .list(&staging_root(dataset))
        .await?
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix("/checkpoint.json").map(str::to_string))
        .collect();
    runs.sort();
    while let Some(latest) = runs.pop() {
        let key = format!("{latest}/checkpoint.json");
        let Some(bytes) = out.get(&key).await? else { continue };
        match serde_json::from_slice::<Checkpoint>(&bytes) {
            Ok(c) if Some(c.run_id.as_str()) == committed_run => continue,
            Ok(c) => return Ok(Some(c)),
            Err(e) => tracing::warn!("{} is not a readable checkpoint ({e}); ignored", out.display(&key)),
        }
    }
    Ok(None)
}

/// Runs staged by versions before per-dataset staging (`.b24-staging/<run id>/…`, leads only) move to
/// `.b24-staging/leads/<run id>/…`, where `--resume` finds them and a commit cleans them up.
async fn adopt_legacy_staging(out: &Output) -> Result<()> {
    let mut runs = std::collections::BTreeSet::new();
    for (key, _) in out.list(STAGING).await? {
        let rest = key.strip_prefix(STAGING).unwrap_or(&key).trim_start_matches('/');
        let Some((run, _)) = rest.split_once('/') else { continue };
        // run ids start with their UTC start time (`20261129T…`); datasets do not start with a digit
        if run.starts_with(|c: char| c.is_ascii_digit()) {
            out.rename(&key, &format!("{}/{rest}", staging_root("leads"))).await?;
            runs.insert(run.to_string());
        }
    }
    for run in runs {
        tracing::info!("moved the staging of run {run} to {}", out.display(&staging_of("leads", &run)));
        out.clear(&format!("{STAGING}/{run}"), &[]).await?; // empty folders on a disk
    }
    Ok(())
}

/// Removes every object under `prefix` for which `drop` says so.
async fn delete_where(out: &Output, prefix: &str, drop: impl Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    for (key, _) in out.list(prefix).await? {
        if drop(&key) {
            out.delete(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// What flows from the converter to the writer: a page's rows, its rejected values and the IDs it completes.
struct Converted {
    batch: RecordBatch,
    rejects: Vec<crate::convert::Reject>,
    covered: Vec<(i64, i64)>,
}

/// The writer thread's state: Parquet files, rejects and the checkpoint that describes them.
struct RunWriter {
    w: DatasetWriter,
    dataset: &'static str,
    out: Arc<Output>,
    rt: tokio::runtime::Handle,
    staging: String,
    rejects: RejectsLog,
    ckpt: Checkpoint,
    /// Whether a checkpoint exists in the output (written by this run or the one it resumes).
    saved: Arc<std::sync::atomic::AtomicBool>,
    last: Instant,
    every: Duration,
    /// Incremental: the committed snapshot's leads, and what this run does to them.
    known: Option<Arc<Index>>,
    tally: Tally,
}

/// What an incremental run found so far.
#[derive(Debug, Default)]
struct Tally {
    inserted: u64,
    updated: u64,
    refetched_unchanged: u64,
    /// IDs whose row in the snapshot is replaced, and the snapshot's files that hold them (by manifest index).
    replaced: std::collections::HashSet<i64>,
    touched: std::collections::BTreeSet<u32>,
}

impl RunWriter {
    /// Incremental: drops leads fetched again with the DATE_MODIFY the snapshot already holds (the overlap), and
    /// notes which leads are new and which replace a row of the snapshot.
    fn against_snapshot(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        use arrow_array::cast::AsArray;
        let Some(known) = &self.known else { return Ok(batch) };
        let ids = batch.column_by_name("id").and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>());
        let Some(ids) = ids else { return Err(Error::Internal("an incremental batch without an id column".into())) };
        let modified = batch
            .column_by_name("date_modify")
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>());
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let id = ids.value(i);
            let m = modified.and_then(|m| arrow_array::Array::is_valid(m, i).then(|| m.value(i)));
            match known.rows.get(&id) {
                None => {
                    self.tally.inserted += 1;
                    keep.push(true);
                }
                Some((_, old)) if *old == m && m.is_some() => {
                    self.tally.refetched_unchanged += 1;
                    keep.push(false);
                }
                Some((file, _)) => {
                    self.tally.updated += 1;
                    self.tally.replaced.insert(id);
                    self.tally.touched.insert(*file);
                    keep.push(true);
                }
            }
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch);
        }
        Ok(arrow_select::filter::filter_record_batch(&batch, &arrow_array::BooleanArray::from(keep))?)
    }

    fn add(&mut self, c: Converted) -> Result<()> {
        let batch = self.against_snapshot(c.batch)?;
        let c = Converted { batch, ..c };
        self.ckpt.max_date_modify = self.ckpt.max_date_modify.max(max_timestamp(&c.batch, "date_modify"));
        self.w.write(&c.batch)?;
        self.rejects.add(&c.rejects)?;
        self.ckpt.rows += c.batch.num_rows() as u64;
        for (lo, hi) in c.covered {
            self.ckpt.covered.add(lo, hi);
        }
        if self.last.elapsed() >= self.every {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Finishes every open file, moves the new ones to the output's staging area, then saves the checkpoint
    /// that lists them (one atomic put): a run killed at any moment resumes from the last one saved.
    fn checkpoint(&mut self) -> Result<()> {
        let files = self.w.flush_files()?;
        // the writer does not sync its files: staging them makes them durable, before the checkpoint names them
        let moves: Vec<(PathBuf, String)> = files
            .iter()
            .map(|f| (f.local.clone(), format!("{}/{}/{}", self.staging, self.dataset, f.path)))
            .collect();
        self.rt.block_on(self.out.put_files(&moves))?;
        for f in files {
            self.ckpt.files.push(ManifestFile { path: f.path, rows: f.rows, bytes: f.bytes });
        }
        if let Some(name) = self.rejects.close_segment()? {
            let key = format!("{}/{REJECTS}/{name}", self.staging);
            self.rt.block_on(self.out.put_file(&self.rejects.dir.join(&name), &key))?;
            self.ckpt.reject_segments.push(name);
        }
        self.ckpt.rejects = self.rejects.counts.clone();
        self.ckpt.next_seq = self.w.next_seq();
        let text = serde_json::to_vec_pretty(&self.ckpt).map_err(|e| Error::Internal(e.to_string()))?;
        self.rt.block_on(self.out.put_bytes(&format!("{}/checkpoint.json", self.staging), text))?;
        self.saved.store(true, Ordering::Relaxed);
        self.last = Instant::now();
        tracing::debug!("checkpoint: {} {} in {} files", self.ckpt.rows, self.dataset, self.ckpt.files.len());
        Ok(())
    }
}

/// Runs a whole export. Blocking: it owns its runtime and threads.
pub fn run_export(opts: ExportOptions) -> Result<ExportSummary> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    let out = Arc::new(Output::parse(&opts.out, &opts.s3)?);
    let _lock = Lock::take(&out, &rt)?;
    let dataset = opts.entity.dataset();

    // the output, before any request to the portal: what is there, and can we write?
    let existing: Vec<String> =
        rt.block_on(out.list(dataset))?.into_iter().map(|(k, _)| k).filter(|k| k.ends_with(".parquet")).collect();
    // an incremental run merges into the latest committed snapshot (the first one is a full snapshot)
    let base = match &opts.incremental {
        Some(_) => rt.block_on(manifest::latest(&out, dataset))?,
        None => None,
    };
    if !existing.is_empty() && !opts.overwrite && base.is_none() && !opts.resume {
        return Err(Error::Usage(format!(
            "{} already holds a dataset ({} Parquet files); pass --overwrite to replace it, --incremental to merge changes into it, or choose another --out",
            out.display(dataset),
            existing.len()
        )));
    }
    let check = format!("{STAGING}/.write-check-{}-{:04x}", std::process::id(), fastrand::u16(..));
    rt.block_on(async {
        out.put_bytes(&check, b"ok".to_vec()).await?;
        out.delete(&check).await
    })?;
    rt.block_on(adopt_legacy_staging(&out))?;
    let committed = rt.block_on(manifest::latest(&out, dataset))?;
    let interrupted = rt.block_on(find_checkpoint(&out, dataset, committed.as_ref().map(|m| m.run_id.as_str())))?;
    if let (true, None, Some(m)) = (opts.resume && !opts.overwrite, &interrupted, &committed) {
        // nothing was interrupted: the committed snapshot is the answer (a retried `--entity all --resume` then
        // resumes only the entities that stopped)
        tracing::info!("--resume: no interrupted run of {dataset} in {}; snapshot v{:06} stays as it is", out.display(""), m.version);
        return Ok(ExportSummary::unchanged(opts.entity, out.display(dataset), m, started.elapsed().as_secs_f64()));
    }
    if !existing.is_empty() && !opts.overwrite && base.is_none() && interrupted.is_none() {
        return Err(Error::Usage(format!(
            "{} already holds a dataset ({} Parquet files) and no manifest; pass --overwrite to replace it, or choose another --out",
            out.display(dataset),
            existing.len()
        )));
    }
    let resumed = match (opts.resume, interrupted) {
        (_, Some(c)) if c.incremental => {
            tracing::info!("an interrupted incremental run ({}) is not resumed: this run starts again from the last committed watermark", c.run_id);
            None
        }
        (true, Some(c)) => Some(c),
        (true, None) => {
            tracing::warn!("--resume: no interrupted run to continue in {}; starting a new one", out.display(""));
            None
        }
        (false, Some(c)) => {
            tracing::warn!(
                "an interrupted run ({}, {} {dataset}) could be continued with --resume; starting a new run instead (the old run's leftovers are removed when this one commits)",
                c.run_id,
                c.rows
            );
            None
        }
        (false, None) => None,
    };

    let stats = Arc::new(ClientStats::default());
    let client = Arc::new(PortalClient::new(opts.auth.clone(), opts.client.clone(), stats.clone())?);

    // 1. field metadata → columns
    let (meta, item_map) = rt.block_on(field_metadata(&client, opts.entity, opts.api, opts.select.as_deref()))?;
    let mut filter = schema::canonical_filter(&opts.filter, &meta)?;
    let mut required: Vec<(&str, &str)> = opts.partition.source_field().map(|f| (f, "--partition-by")).into_iter().collect();
    if opts.incremental.is_some() {
        // the watermark, and how a changed lead is told from one fetched again
        required.push(("DATE_MODIFY", "--incremental"));
    }
    let (cols, arrow_schema, fingerprint) = columns_for(opts.entity, &meta, opts.select.as_deref(), &required, opts.entity.fields_method())?;
    let fresh = Checkpoint::fresh(opts.select.clone(), &opts.filter, &opts.partition, fingerprint, base.is_some());
    // incremental: the snapshot it merges into must have been asked for the same way
    let base = match (base, &opts.incremental) {
        (Some(b), Some(inc)) => {
            if let Some(what) = fresh.asked_differently(&b.select, &b.filter, &b.partition_by, &b.schema_fingerprint) {
                return Err(Error::Usage(format!(
                    "cannot merge into snapshot v{:06}: {what} differs from the run that wrote it; export a full snapshot with --overwrite (without --incremental)",
                    b.version
                )));
            }
            let watermark = match inc.since {
                Some(t) => t,
                None => b
                    .max_date_modify
                    .as_deref()
                    .and_then(|m| chrono::DateTime::parse_from_rfc3339(m).ok())
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .ok_or_else(|| Error::Usage(format!("snapshot v{:06} records no DATE_MODIFY watermark; give --since", b.version)))?,
            };
            let since = watermark - chrono::Duration::from_std(inc.overlap).unwrap_or_default();
            let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            filter.insert(">=DATE_MODIFY".into(), json!(since));
            tracing::info!("incremental: {dataset} modified since {since} (snapshot v{:06} and --overlap)", b.version);
            let index = rt.block_on(merge::read_index(&out, dataset, &b.files))?;
            Some((b, since, Arc::new(index)))
        }
        (None, Some(_)) => {
            tracing::info!("incremental: no committed snapshot in {} yet, exporting a full one", out.display(""));
            None
        }
        _ => None,
    };
    let ckpt = match resumed {
        Some(c) => {
            if let Some(what) = fresh.asked_differently(&c.select, &c.filter, &c.partition_by, &c.schema_fingerprint) {
                return Err(Error::Usage(format!(
                    "cannot --resume run {}: {what} changed since it started; run without --resume to start over",
                    c.run_id
                )));
            }
            tracing::info!("resuming run {} from its checkpoint: {} {dataset} in {} files already exported", c.run_id, c.rows, c.files.len());
            c
        }
        None => fresh,
    };
    let run_id = ckpt.run_id.clone();
    let resumed_leads = ckpt.rows;
    let staging = staging_of(dataset, &run_id);
    let saved = Arc::new(std::sync::atomic::AtomicBool::new(resumed_leads > 0 || !ckpt.covered.0.is_empty()));
    let spool = spool_of(&out, dataset, &run_id);
    // status dictionaries and users in one batch request (users: so user columns can be joined to a person)
    let (statuses, users) = rt.block_on(crate::dict::fetch_dictionaries(&client, &cols, true))?;
    let raw_out = match &opts.raw_out {
        Some(r) => Some((Arc::new(Output::parse(r, &opts.s3)?), meta.clone())),
        None => None,
    };
    // the user's own filter, for the ID listing of --detect-deletes (not limited to recent changes)
    let mut user_filter = filter.clone();
    user_filter.remove(">=DATE_MODIFY");
    let spec = match &item_map {
        None => FetchSpec {
            method: opts.entity.list_method().into(),
            select: schema::request_select(&cols, opts.select.is_none()),
            filter,
            concurrency: opts.concurrency,
            max_retries: opts.client.max_retries,
            extra: Map::new(),
            normalize: None,
        },
        Some(map) => {
            user_filter = map.item_filter(&user_filter)?;
            let mut extra = Map::new();
            extra.insert("entityTypeId".into(), json!(map.entity_type_id));
            extra.insert("useOriginalUfNames".into(), json!("Y"));
            let m = map.clone();
            FetchSpec {
                method: "crm.item.list".into(),
                select: vec!["*".into()], // multi-value fields (fm) come only with "*"
                filter: map.item_filter(&filter)?,
                concurrency: opts.concurrency,
                max_retries: opts.client.max_retries,
                extra,
                normalize: Some(plan::Normalize(Arc::new(move |raw| m.legacy_records(raw)))),
            }
        }
    };
    let spec = Arc::new(spec);
    let source = Source::Portal { client: client.clone(), spec, user_filter };
    let settings = Settings {
        entity: opts.entity,
        partition: opts.partition.clone(),
        select: opts.select.clone(),
        filter: opts.filter.clone(),
        strict: opts.strict,
        progress: opts.progress,
        checkpoint_every: opts.checkpoint_every,
        incremental: opts.incremental.clone(),
    };
    let via = if item_map.is_some() { " via crm.item.list" } else { "" };
    let run = Run { opts: &settings, rt: &rt, out: &out, stats: &stats, display: format!("{}{via}", client.portal_display()), statuses, users, raw_out };
    let result = export_run(run, source, cols, arrow_schema, ckpt, &spool, saved.clone(), existing, base);
    let _ = std::fs::remove_dir_all(&spool);
    match result {
        Ok(mut summary) => {
            summary.resumed_leads = resumed_leads;
            summary.seconds = started.elapsed().as_secs_f64();
            Ok(summary)
        }
        Err(e) => {
            if saved.load(Ordering::Relaxed) {
                tracing::warn!("run {run_id} stopped; its progress up to the last checkpoint is kept in {}: rerun the same command with --resume to continue", out.display(&staging));
            } else {
                let _ = rt.block_on(out.clear(&staging, &[]));
            }
            Err(e)
        }
    }
}

/// What shapes a run's dataset (from `export` or `convert` options).
struct Settings {
    entity: Entity,
    partition: PartitionSpec,
    select: Option<Vec<String>>,
    filter: Map<String, Value>,
    strict: bool,
    progress: bool,
    checkpoint_every: Duration,
    incremental: Option<IncrementalOptions>,
}

/// What a run works with, besides its pages.
struct Run<'a> {
    opts: &'a Settings,
    rt: &'a tokio::runtime::Runtime,
    out: &'a Arc<Output>,
    stats: &'a Arc<ClientStats>,
    /// The source as the manifest names it (a portal without secrets, or a raw location).
    display: String,
    statuses: Vec<crate::dict::Status>,
    /// `_dict/users`, when the portal lets us read users.
    users: Option<Vec<crate::dict::User>>,
    /// `--raw-out` and the field metadata to keep with it.
    raw_out: Option<(Arc<Output>, Value)>,
}

#[allow(clippy::too_many_arguments)]
fn export_run(
    run: Run<'_>,
    source: Source,
    cols: Vec<schema::Column>,
    arrow_schema: arrow_schema::SchemaRef,
    ckpt: Checkpoint,
    spool: &std::path::Path,
    saved: Arc<std::sync::atomic::AtomicBool>,
    existing: Vec<String>,
    base: Option<(Manifest, String, Arc<Index>)>,
) -> Result<ExportSummary> {
    let Run { opts, rt, out, stats, display: source_name, statuses, users, raw_out } = run;
    let dataset = opts.entity.dataset();
    let run_id = ckpt.run_id.clone();
    let staging = staging_of(dataset, &run_id);
    let _ = std::fs::remove_dir_all(spool); // a killed run's unfinished local files
    std::fs::create_dir_all(spool).map_err(|e| Error::io(spool, e))?;
    // staged files that no checkpoint lists were being written when the run stopped: drop them
    let listed: std::collections::HashSet<String> = ckpt
        .files
        .iter()
        .map(|f| format!("{staging}/{dataset}/{}", f.path))
        .chain(ckpt.reject_segments.iter().map(|r| format!("{staging}/{REJECTS}/{r}")))
        .collect();
    rt.block_on(delete_where(out, &staging, |k| !listed.contains(k) && !k.ends_with("/checkpoint.json") && !k.contains("/spool/")))?;

    tracing::info!("exporting {dataset} from {source_name} into {} (run {run_id}, {} columns)", out.display(dataset), cols.len());

    // labels and dictionaries, staged with the run
    let dict_tables = [
        ("fields", crate::dict::fields_table(dataset, &cols)?),
        ("enum_items", crate::dict::enum_items_table(dataset, &cols)?),
        ("statuses", crate::dict::statuses_table(&statuses)?),
    ];
    let mut side_files: Vec<(String, String)> = Vec::new(); // (staged key, published key)
    for (name, table) in &dict_tables {
        let rel = format!("{DICT}/{name}/{dataset}.parquet");
        let local = spool.join(&rel);
        sink::write_table(&local, table)?;
        rt.block_on(out.put_file(&local, &format!("{staging}/{rel}")))?;
        side_files.push((format!("{staging}/{rel}"), rel));
    }
    if let Some(users) = &users {
        let rel = format!("{DICT}/users/users.parquet");
        let local = spool.join(&rel);
        sink::write_table(&local, &crate::dict::users_table(users)?)?;
        rt.block_on(out.put_file(&local, &format!("{staging}/{rel}")))?;
        side_files.push((format!("{staging}/{rel}"), rel));
    }

    // 2. pipeline threads: convert → write
    let progress = Progress::new(stats.clone(), opts.progress);
    progress.add_leads(ckpt.rows);
    progress.add_written(ckpt.rows);
    let (page_tx, page_rx) = tokio::sync::mpsc::channel::<Page>(4);
    let (batch_tx, batch_rx) = std_mpsc::sync_channel::<Converted>(4);
    // conversion runs on as many threads as there are cores (pages are independent; the writer takes batches
    // in any order), and records raw page bodies first when asked to
    let page_rx = Arc::new(std::sync::Mutex::new(page_rx));
    let recorder = match raw_out {
        Some(_) => Some(Arc::new(std::sync::Mutex::new(crate::raw::RawRecorder::new(spool.join("raw"))?))),
        None => None,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    // list calls read back from a raw run, to be checked against its run.json
    let raw_calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut converters = Vec::new();
    for n in 0..threads {
        let (rx, tx) = (page_rx.clone(), batch_tx.clone());
        let (conv_schema, conv_cols, strict, recorder, entity) = (arrow_schema.clone(), cols.clone(), opts.strict, recorder.clone(), opts.entity);
        let raw_calls = raw_calls.clone();
        let handle = std::thread::Builder::new()
            .name(format!("convert-{n}"))
            .spawn(move || -> Result<()> {
                let run = || -> Result<()> {
                    let mut unzstd = zstd::bulk::Decompressor::new().map_err(|e| Error::Internal(format!("zstd: {e}")))?;
                    let mut buf = Vec::new();
                    loop {
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
                        let Some(page) = next else { return Ok(()) };
                        let (texts, rows) = match &page.lines {
                            None => (page.chunks.iter().map(|c| c.get()).collect::<Vec<&str>>(), page.rows),
                            Some(lines) => {
                                let texts = lines.texts(&mut unzstd, &mut buf)?;
                                raw_calls.fetch_add(texts.len() as u64, Ordering::Relaxed);
                                let rows = texts.len() * crate::plan::PAGE;
                                (texts, rows)
                            }
                        };
                        if let Some(r) = &recorder {
                            r.lock().unwrap_or_else(|e| e.into_inner()).record(&texts)?;
                        }
                        let converted = crate::convert::convert_page(&texts, rows, &conv_cols, &conv_schema, strict);
                        let (batch, rejects) = match (converted, &page.lines) {
                            // a raw file that does not parse is bad input, and says which file
                            (Err(Error::Internal(m)), Some(lines)) if m.starts_with(crate::convert::NOT_JSON) => {
                                return Err(Error::Usage(format!("{}: {m}", lines.source)))
                            }
                            // the converter knows columns, not entities: name the record as what it is
                            (Err(Error::BadValue(mut b)), _) => {
                                b.record = entity.name();
                                return Err(b.into());
                            }
                            (r, _) => r?,
                        };
                        if tx.send(Converted { batch, rejects, covered: page.covered }).is_err() {
                            return Ok(()); // the writer failed; it reports why
                        }
                    }
                };
                let result = run();
                // this converter failed, or the writer did: stop the fetch now, not at its end (after the last
                // page it changes nothing)
                rx.lock().unwrap_or_else(|e| e.into_inner()).close();
                result
            })
            .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
        converters.push(handle);
    }
    drop(batch_tx);
    drop(page_rx); // the converters own the receiver: when they are gone, the fetch's sends fail instead of waiting
    let mut sink_cfg = SinkConfig::new(spool.join(dataset), run_id.clone(), opts.partition.clone());
    sink_cfg.first_seq = ckpt.next_seq;
    let done = ckpt.covered.clone();
    let before = ckpt.rows;
    let mut rw = RunWriter {
        w: DatasetWriter::new(sink_cfg, &arrow_schema)?,
        dataset,
        out: out.clone(),
        rt: rt.handle().clone(),
        staging: staging.clone(),
        rejects: RejectsLog::new(spool.join(REJECTS), ckpt.reject_segments.len(), ckpt.rejects.clone(), opts.entity.id_key()),
        ckpt,
        saved,
        last: Instant::now(),
        every: opts.checkpoint_every,
        known: base.as_ref().map(|b| b.2.clone()),
        tally: Tally::default(),
    };
    let writer_progress = progress.clone();
    let writer = std::thread::Builder::new()
        .name("write".into())
        .spawn(move || -> Result<(Checkpoint, Tally)> {
            for c in batch_rx {
                let n = c.batch.num_rows() as u64;
                rw.add(c)?;
                writer_progress.add_written(n);
            }
            rw.checkpoint()?; // the last one: everything fetched is staged
            Ok((rw.ckpt, rw.tally))
        })
        .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;

    // 3. fetch (or read the raw zone)
    let fetched = match &source {
        Source::Portal { client, spec, .. } => {
            rt.block_on(plan::fetch_all(client.clone(), spec.clone(), &done, page_tx, progress.clone())).map(Some)
        }
        Source::Raw { raw, input } => crate::raw::read_pages(raw.clone(), rt.handle().clone(), input, &spool.join("scratch"), page_tx).map(|()| None),
    };
    let converted = converters
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err(Error::Internal("a converter panicked".into()))))
        .find(|r| r.is_err())
        .unwrap_or(Ok(()));
    let written = writer.join().unwrap_or_else(|_| Err(Error::Internal("the writer panicked".into())));
    // a pages file cut between two frames reads without an error: the run's count of list calls tells
    let short_raw = match &source {
        Source::Raw { raw, input } if fetched.is_ok() && converted.is_ok() && raw_calls.load(Ordering::Relaxed) != input.run.list_calls => Some(Error::Usage(format!(
            "{}: run.json lists {} list calls, its pages files hold {}: a pages file is incomplete",
            raw.display(&input.folder),
            input.run.list_calls,
            raw_calls.load(Ordering::Relaxed)
        ))),
        _ => None,
    };
    progress.finish();
    let (mut ckpt, tally) = match (fetched, converted, written) {
        (Ok(_), Ok(()), Ok(_)) if short_raw.is_some() => return Err(short_raw.expect("checked")),
        (Ok(n), Ok(()), Ok((c, t))) => {
            let staged: u64 = c.files.iter().map(|f| f.rows).sum();
            let counted = n.is_none_or(|n| c.rows + t.refetched_unchanged == before + n);
            if staged != c.rows || !counted {
                return Err(Error::Internal(format!("fetched {n:?} {dataset} (and {before} before resuming) but staged {staged} rows")));
            }
            (c, t)
        }
        // a conversion or write error closes the channels, so it explains a fetch that "stopped"
        (_, Err(e), _) | (_, _, Err(e)) => return Err(e),
        (Err(e), _, _) => return Err(e),
    };

    // 3b. incremental: the snapshot's files that hold replaced or deleted leads are rewritten without them
    let mut all_files = ckpt.files.clone();
    let mut total_rows = ckpt.rows;
    let mut max_modify = ckpt.max_date_modify;
    let mut changes = None;
    // incremental: the snapshot's rows this run replaces or removes (their old rejects go with them)
    let mut superseded = std::collections::HashSet::new();
    if let Some((b, since, index)) = &base {
        let mut drop = tally.replaced.clone();
        let mut touched = tally.touched.clone();
        let mut deleted = 0u64;
        let keep_deleted = opts.incremental.as_ref().is_some_and(|i| i.keep_deleted);
        let mut mark = std::collections::HashSet::new();
        if let (Some(true), Source::Portal { client, user_filter, spec }) = (opts.incremental.as_ref().map(|i| i.detect_deletes), &source) {
            let live = rt.block_on(fetch_all_ids(client, user_filter.clone(), spec))?;
            for (id, (file, _)) in &index.rows {
                if live.contains(id) || drop.contains(id) || index.deleted.contains(id) {
                    continue;
                }
                if keep_deleted {
                    mark.insert(*id);
                } else {
                    drop.insert(*id);
                }
                touched.insert(*file);
                deleted += 1;
            }
            tracing::info!("incremental: the portal lists {} {dataset}; {deleted} of the snapshot's are gone", live.len());
        }
        let mut seq = ckpt.next_seq;
        for &i in &touched {
            let f = &b.files[i as usize];
            seq += 1;
            let name = format!("part-{run_id}-{seq:05}.parquet");
            let merge_spool = spool.join("merge");
            let at = chrono::Utc::now().timestamp_micros();
            if let Some(info) = rt.block_on(merge::rewrite_without(out, dataset, f, &drop, &mark, at, &merge_spool, &name, &run_id))? {
                rt.block_on(out.put_file(&info.local, &format!("{staging}/{dataset}/{}", info.path)))?;
                ckpt.files.push(ManifestFile { path: info.path, rows: info.rows, bytes: info.bytes });
            }
        }
        let carried: Vec<ManifestFile> =
            b.files.iter().enumerate().filter(|(i, _)| !touched.contains(&(*i as u32))).map(|(_, f)| f.clone()).collect();
        all_files = carried.iter().cloned().chain(ckpt.files.iter().cloned()).collect();
        total_rows = all_files.iter().map(|f| f.rows).sum();
        let base_max = b.max_date_modify.as_deref().and_then(|m| chrono::DateTime::parse_from_rfc3339(m).ok()).map(|d| d.timestamp_micros());
        max_modify = max_modify.max(base_max);
        changes = Some(Changes {
            since: since.clone(),
            base_version: b.version,
            inserted: tally.inserted,
            updated: tally.updated,
            deleted,
            unchanged: b.total_rows - tally.updated - deleted,
            refetched_unchanged: tally.refetched_unchanged,
            files_rewritten: touched.len() as u64,
        });
        let removed = if keep_deleted { 0 } else { deleted };
        superseded = drop;
        if total_rows != b.total_rows + tally.inserted - removed {
            return Err(Error::Internal(format!(
                "the merged snapshot would hold {total_rows} rows, expected {} + {} − {removed}",
                b.total_rows, tally.inserted
            )));
        }
    }

    // 3c. the raw landing zone, complete before the dataset commits
    if let (Some((raw, fields)), Some(recorder)) = (&raw_out, recorder) {
        let recorder = Arc::try_unwrap(recorder).map_err(|_| Error::Internal("the raw recorder is still shared".into()))?;
        let (files, list_calls) = recorder.into_inner().unwrap_or_else(|e| e.into_inner()).finish()?;
        let meta = crate::raw::RawRun {
            format: 1,
            run_id: run_id.clone(),
            started_at: ckpt.started_at.clone(),
            source: source_name.clone(),
            entity: dataset.into(),
            select: opts.select.clone(),
            filter: Value::Object(opts.filter.clone()),
            pages: Vec::new(),
            list_calls,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            incremental: base.is_some(),
            resumed: before > 0,
        };
        let at = rt.block_on(crate::raw::publish(raw, meta, &files, fields, &statuses, users.as_deref()))?;
        tracing::info!("raw pages ({list_calls} list calls) kept in {at}");
    }

    // 4. the run is complete: publish its files, commit its manifest, then remove what it replaces
    let mut manifest = Manifest {
        format: 1,
        dataset: dataset.into(),
        version: 0,
        run_id: run_id.clone(),
        started_at: ckpt.started_at.clone(),
        finished_at: now_rfc3339(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: source_name.clone(),
        select: opts.select.clone(),
        filter: Value::Object(opts.filter.clone()),
        partition_by: opts.partition.name().into(),
        partition_column: opts.partition.key_name().map(str::to_string),
        files: all_files.clone(),
        total_rows,
        schema_fingerprint: ckpt.schema_fingerprint.clone(),
        // the watermark: never later than the run's start, or a lead edited in a range already read while the
        // run went on would be older than the next run's watermark and never fetched
        max_date_modify: max_modify
            .map(|m| chrono::DateTime::parse_from_rfc3339(&ckpt.started_at).map_or(m, |s| m.min(s.timestamp_micros())))
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        incremental: changes.clone(),
    };
    let rejects_total: u64 = ckpt.rejects.values().sum();
    let rejects_key = format!("{REJECTS}/{dataset}.jsonl");
    // incremental: the rejects of the snapshot's rows that stay are still true; those of superseded rows are not
    let kept_rejects: Vec<u8> = match &base {
        Some(_) => rt
            .block_on(out.get(&rejects_key))?
            .map(|old| {
                let key = opts.entity.id_key();
                let mut kept = Vec::new();
                for line in old.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
                    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(line) else {
                        kept.extend_from_slice(line); // not ours to judge: kept as it is
                        kept.push(b'\n');
                        continue;
                    };
                    // files of earlier versions call every record's ID `lead_id`
                    let id = obj.get(key).or_else(|| obj.get("lead_id")).and_then(Value::as_str).and_then(|s| s.parse::<i64>().ok());
                    if id.is_some_and(|id| superseded.contains(&id)) {
                        continue;
                    }
                    if key != "lead_id" && !obj.contains_key(key) {
                        if let Some(v) = obj.shift_remove("lead_id") {
                            let rest = std::mem::take(&mut obj);
                            obj.insert(key.into(), v);
                            obj.extend(rest);
                        }
                    }
                    kept.extend_from_slice(Value::Object(obj).to_string().as_bytes());
                    kept.push(b'\n');
                }
                kept
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let write_rejects = rejects_total > 0 || !kept_rejects.is_empty();
    let publish = async {
        // a partition folder new to the dataset moves whole (one rename, no folder made); the others, file by file
        let renames: Vec<(String, String)> =
            ckpt.files.iter().map(|f| (format!("{staging}/{dataset}/{}", f.path), format!("{dataset}/{}", f.path))).collect();
        let moved = out.rename_whole_folders(&renames)?;
        for (f, (from, to)) in ckpt.files.iter().zip(&renames) {
            if moved.contains(from) {
                continue;
            }
            if let Err(e) = out.rename_unsynced(from, to).await {
                // moved already by an earlier attempt that stopped before its commit?
                if out.get_size(from).await?.is_some() || out.get_size(to).await? != Some(f.bytes) {
                    return Err(e.into());
                }
            }
        }
        out.sync()?; // the renames are durable before the manifest names their files
        let base = base.as_ref().map(|b| b.0.version);
        manifest::commit(out, &mut manifest, base).await
    };
    if let Err(failed) = rt.block_on(publish) {
        if failed.maybe_committed {
            return Err(failed.error); // its files must stay: the manifest may list them
        }
        // not committed: take back what was published, so the dataset stays the previous snapshot
        let ours: Vec<String> = ckpt.files.iter().map(|f| format!("{dataset}/{}", f.path)).collect();
        rt.block_on(async {
            for k in &ours {
                let _ = out.delete(k).await;
            }
        });
        let _ = rt.block_on(out.clear(&staging, &[]));
        return Err(failed.error);
    }
    // committed: the run is no longer resumable (its checkpoint goes first), then dictionaries and rejects that
    // describe the new snapshot, then cleanup; each step is tried whatever the others do
    let _ = rt.block_on(out.delete(&format!("{staging}/checkpoint.json")));
    let side = async {
        for (staged, published) in &side_files {
            out.rename(staged, published).await?;
        }
        if write_rejects {
            let local = spool.join(format!("{dataset}.jsonl"));
            let mut file = std::fs::File::create(&local).map_err(|e| Error::io(&local, e))?;
            std::io::Write::write_all(&mut file, &kept_rejects).map_err(|e| Error::io(&local, e))?;
            for seg in &ckpt.reject_segments {
                out.copy_to(&format!("{staging}/{REJECTS}/{seg}"), &mut file).await?;
            }
            file.sync_all().map_err(|e| Error::io(&local, e))?;
            drop(file);
            out.put_file(&local, &rejects_key).await?;
        }
        Ok::<(), Error>(())
    };
    if let Err(e) = rt.block_on(side) {
        tracing::warn!("snapshot v{:06} is committed, but its dictionaries or rejects file could not be put in place ({e})", manifest.version);
    }
    let keep: std::collections::HashSet<String> = all_files.iter().map(|f| format!("{dataset}/{}", f.path)).collect();
    let cleanup = async {
        if !write_rejects {
            out.delete(&rejects_key).await?;
        }
        // the previous snapshot, and files of failed runs, in the dataset
        let old = delete_where(out, dataset, |k| k.ends_with(".parquet") && !keep.contains(k)).await?;
        // staged work of this run and of this dataset's interrupted ones
        out.clear(&staging_root(dataset), &[]).await?;
        Ok::<usize, Error>(old)
    };
    let replaced = match rt.block_on(cleanup) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("snapshot v{:06} is committed, but cleaning up after it failed ({e}); `b24-export sql` reads only the new snapshot", manifest.version);
            existing.len()
        }
    };
    let rejects_file = write_rejects.then(|| out.display(&rejects_key));
    Ok(ExportSummary {
        nothing_to_resume: false,
        entity: opts.entity,
        dataset: out.display(dataset),
        run_id,
        leads: total_rows,
        resumed_leads: 0,
        bytes: all_files.iter().map(|f| f.bytes).sum(),
        files: all_files,
        requests: stats.requests.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        paused_secs: stats.paused_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        operating_blocks: stats.operating_blocks.load(Ordering::Relaxed),
        seconds: 0.0,
        replaced,
        manifest_version: manifest.version,
        rejects: ckpt.rejects,
        rejects_file,
        changes,
    })
}

/// Every ID the portal lists for the user's filter (select ID only, through the same planner): for
/// `--detect-deletes`.
async fn fetch_all_ids(
    client: &Arc<PortalClient>,
    filter: Map<String, Value>,
    like: &FetchSpec,
) -> Result<std::collections::HashSet<i64>> {
    let spec = Arc::new(FetchSpec {
        method: like.method.clone(),
        select: vec![if like.normalize.is_some() { "id" } else { "ID" }.into()],
        filter,
        concurrency: like.concurrency,
        max_retries: like.max_retries,
        extra: like.extra.clone(),
        normalize: like.normalize.clone(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Page>(4);
    let method = spec.method.clone();
    let collect = tokio::spawn(async move {
        let mut ids = std::collections::HashSet::new();
        while let Some(page) = rx.recv().await {
            for chunk in &page.chunks {
                // the planner checked every ID of these pages already: the same reading cannot fail now
                ids.extend(plan::ids_of(&method, "ids", chunk)?.into_iter().flatten());
            }
        }
        Ok::<_, Error>(ids)
    });
    let progress = Progress::new(client.stats().clone(), false);
    plan::fetch_all(client.clone(), spec, &Coverage::default(), tx, progress).await?;
    collect.await.map_err(|e| Error::Internal(format!("ID collection failed: {e}")))?
}

/// Rebuilds a dataset from a raw landing zone (`b24-export convert`), with the same commit protocol as an export.
pub fn run_convert(opts: ConvertOptions) -> Result<ExportSummary> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    let raw = Arc::new(Output::parse(&opts.raw, &opts.s3)?);
    let out = Arc::new(Output::parse(&opts.out, &opts.s3)?);
    let _lock = Lock::take(&out, &rt)?;
    let input = rt.block_on(crate::raw::open(&raw, opts.entity))?;
    let entity = Entity::of_dataset(&input.run.entity).ok_or_else(|| {
        Error::Usage(format!("{} holds pages of {:?}, which this version cannot convert", raw.display(&input.folder), input.run.entity))
    })?;
    let dataset = entity.dataset();
    let partition = opts.partition.clone().unwrap_or_else(|| entity.default_partition());
    let existing: Vec<String> =
        rt.block_on(out.list(dataset))?.into_iter().map(|(k, _)| k).filter(|k| k.ends_with(".parquet")).collect();
    if !existing.is_empty() && !opts.overwrite {
        return Err(Error::Usage(format!(
            "{} already holds a dataset ({} Parquet files); pass --overwrite to replace it, or choose another --out",
            out.display(dataset),
            existing.len()
        )));
    }
    let filter = match &input.run.filter {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let required: Vec<(&str, &str)> = partition.source_field().map(|f| (f, "--partition-by")).into_iter().collect();
    let (cols, arrow_schema, fingerprint) =
        columns_for(entity, &input.fields, input.run.select.as_deref(), &required, "the raw run's fields")?;
    let ckpt = Checkpoint::fresh(input.run.select.clone(), &filter, &partition, fingerprint, false);
    let spool = spool_of(&out, dataset, &ckpt.run_id);
    let settings = Settings {
        entity,
        partition,
        select: input.run.select.clone(),
        filter,
        strict: opts.strict,
        progress: opts.progress,
        checkpoint_every: Duration::from_secs(3600 * 24),
        incremental: None,
    };
    let stats = Arc::new(ClientStats::default());
    let source_name = format!("{} (raw run {} of {})", raw.display(&input.folder), input.run.run_id, input.run.source);
    let statuses = input.statuses.clone();
    let users = input.users.clone();
    let run = Run { opts: &settings, rt: &rt, out: &out, stats: &stats, display: source_name, statuses, users, raw_out: None };
    let saved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let staging = staging_of(dataset, &ckpt.run_id);
    let result = export_run(run, Source::Raw { raw, input: Box::new(input) }, cols, arrow_schema, ckpt, &spool, saved, existing, None);
    let _ = std::fs::remove_dir_all(&spool);
    match result {
        Ok(mut summary) => {
            summary.seconds = started.elapsed().as_secs_f64();
            Ok(summary)
        }
        Err(e) => {
            let _ = rt.block_on(out.clear(&staging, &[]));
            Err(e)
        }
    }
}

/// Values that did not fit their column: counted per field and streamed to JSON-lines files, one segment per
/// checkpoint, so their number does not cost memory and a resumed run keeps those already staged.
struct RejectsLog {
    dir: PathBuf,
    next: usize,
    out: Option<(String, std::io::BufWriter<std::fs::File>)>,
    counts: BTreeMap<String, u64>,
    /// The record ID's key: `lead_id`, `deal_id`, …
    id_key: &'static str,
}

impl RejectsLog {
    fn new(dir: PathBuf, next: usize, counts: BTreeMap<String, u64>, id_key: &'static str) -> Self {
        RejectsLog { dir, next, out: None, counts, id_key }
    }

    fn add(&mut self, rejects: &[crate::convert::Reject]) -> Result<()> {
        use std::io::Write;
        for r in rejects {
            if self.out.is_none() {
                std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                self.next += 1;
                let name = format!("part-{:05}.jsonl", self.next);
                let path = self.dir.join(&name);
                let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
                self.out = Some((name, std::io::BufWriter::new(f)));
            }
            let mut obj = serde_json::Map::new();
            obj.insert(self.id_key.into(), r.record_id.clone().into());
            obj.insert("field".into(), r.field.clone().into());
            obj.insert("raw_value".into(), r.raw_value.clone().into());
            obj.insert("reason".into(), r.reason.clone().into());
            let line = Value::Object(obj).to_string();
            let (name, out) = self.out.as_mut().expect("opened");
            writeln!(out, "{line}").map_err(|e| Error::io(self.dir.join(name.as_str()), e))?;
            *self.counts.entry(r.field.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Closes the current segment, if any, and returns its file name.
    fn close_segment(&mut self) -> Result<Option<String>> {
        use std::io::Write;
        let Some((name, mut out)) = self.out.take() else { return Ok(None) };
        let path = self.dir.join(&name);
        out.flush().map_err(|e| Error::io(&path, e))?;
        out.get_ref().sync_all().map_err(|e| Error::io(&path, e))?;
        Ok(Some(name))
    }
}

/// The largest value of a timestamp column of a batch, if it has one.
fn max_timestamp(batch: &RecordBatch, column: &str) -> Option<i64> {
    use arrow_array::cast::AsArray;
    let col = batch.column_by_name(column)?;
    let ts = col.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()?;
    ts.iter().flatten().max()
}

/// The columns an export would write, from the portal's field metadata (for `b24-export schema`).
pub fn portal_columns(auth: &AuthConfig, client: ClientConfig, entity: Entity, select: Option<&[String]>) -> Result<Vec<schema::Column>> {
    let stats = Arc::new(ClientStats::default());
    let client = PortalClient::new(auth.clone(), client, stats)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    let meta = rt.block_on(client.call(entity.fields_method(), &json!({})))?.value()?;
    schema::build_columns(entity, &meta, select, &[])
}

/// A DuckDB query that reads every Parquet file of the dataset (what a plain glob sees).
pub fn duckdb_query(dataset: &str) -> String {
    format!(
        "SELECT count(*) FROM read_parquet('{}/**/*.parquet', hive_partitioning = true, union_by_name = true);",
        dataset.replace('\'', "''")
    )
}
