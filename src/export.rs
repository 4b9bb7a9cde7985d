//! The export pipeline: portal → pages → record batches → Parquet files.
//!
//! Fetching runs on a small tokio runtime; conversion and Parquet encoding run on two plain threads, joined by
//! bounded channels, so a slow disk slows the fetch instead of filling memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use arrow_array::RecordBatch;
use serde_json::{json, Map, Value};

use crate::client::{ClientConfig, ClientStats, PortalClient};
use crate::error::{Error, Result};
use crate::plan::{self, FetchSpec, Page};
use crate::progress::Progress;
use crate::schema;
use crate::client::auth::AuthConfig;
use crate::sink::partition::PartitionSpec;
use crate::sink::manifest::{self, Manifest, ManifestFile};
use crate::sink::{self, DatasetWriter, FileInfo, SinkConfig};

/// Everything an export needs.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// How to reach the portal: webhook or OAuth app.
    pub auth: AuthConfig,
    /// The output root; the dataset goes to `OUT/leads`.
    pub out: PathBuf,
    pub partition: PartitionSpec,
    /// A `crm.lead.list` filter object, combined with the cursor's own conditions.
    pub filter: Map<String, Value>,
    /// Fields to export (`None` = all); ID is always kept.
    pub select: Option<Vec<String>>,
    pub client: ClientConfig,
    /// Batch requests in flight at once.
    pub concurrency: usize,
    /// Replace an existing dataset (its files are removed after the new one is complete).
    pub overwrite: bool,
    /// Show progress (a bar on a terminal, log lines otherwise).
    pub progress: bool,
    /// Stop at the first value that does not fit its column, instead of writing NULL and a reject.
    pub strict: bool,
}

/// What an export did.
#[derive(Debug)]
pub struct ExportSummary {
    pub dataset: PathBuf,
    pub run_id: String,
    pub leads: u64,
    pub files: Vec<FileInfo>,
    pub bytes: u64,
    pub requests: u64,
    pub retries: u64,
    /// Seconds spent waiting for the operating-time budget, and 429 blocks met.
    pub paused_secs: f64,
    pub operating_blocks: u64,
    pub seconds: f64,
    /// Files of a previous dataset removed by `--overwrite`.
    pub replaced: usize,
    /// The version of the committed manifest (`OUT/_manifests/leads/vNNNNNN.json`).
    pub manifest_version: u64,
    /// Values that did not fit their column (now NULL), per field.
    pub rejects: BTreeMap<String, u64>,
    /// Where the rejected values are listed, when there are any.
    pub rejects_file: Option<PathBuf>,
}

pub const DATASET: &str = "leads";
/// Unpublished files of runs in progress, beside the datasets: `OUT/.b24-staging/<run id>/`.
pub const STAGING: &str = ".b24-staging";
/// Labels and dictionaries: `OUT/_dict/<table>/<dataset>.parquet`.
pub const DICT: &str = "_dict";
/// Rejected values: `OUT/_rejects/<dataset>.jsonl`.
pub const REJECTS: &str = "_rejects";

fn new_run_id() -> String {
    format!("{}-{:04x}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"), fastrand::u16(..))
}

/// Checks the output before any request: the dataset must not exist (unless overwriting) and must be writable.
/// One export per output directory at a time: `OUT/.b24-staging/lock` holds the pid of the run that writes.
/// A lock whose process is gone (a killed run) is taken over, and that run's leftovers are dropped.
struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    fn take(out: &std::path::Path) -> Result<OutputLock> {
        let staging = out.join(STAGING);
        let path = staging.join("lock");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let pid: u32 = text.trim().parse().unwrap_or(0);
            let alive = pid != 0 && pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists();
            if alive {
                return Err(Error::Usage(format!(
                    "another export (pid {pid}) is writing to {}; wait for it, or use another --out",
                    out.display()
                )));
            }
        }
        // leftovers of runs that were killed: never published, safe to drop
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| {
            Error::Usage(format!("another export is starting in {} ({e}); run one export per --out at a time", out.display()))
        })?;
        std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes()).map_err(|e| Error::io(&path, e))?;
        Ok(OutputLock { path })
    }
}

impl Drop for OutputLock {
    /// The staging area belongs to the lock holder: whatever is left in it when the run ends (an error on any
    /// path) was never published and is dropped with the lock.
    fn drop(&mut self) {
        if let Some(staging) = self.path.parent() {
            let _ = std::fs::remove_dir_all(staging);
        }
    }
}

fn prepare_output(opts: &ExportOptions) -> Result<(PathBuf, Vec<PathBuf>)> {
    let dataset = opts.out.join(DATASET);
    let existing = sink::list_dataset_files(&dataset)?;
    let published = existing.iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).count();
    if published > 0 && !opts.overwrite {
        return Err(Error::Usage(format!(
            "{} already holds a dataset ({published} Parquet files); pass --overwrite to replace it, or choose another --out",
            dataset.display()
        )));
    }
    let unwritable = |e: std::io::Error| {
        Error::Usage(format!("cannot write to {} ({e}); choose a writable --out directory", opts.out.display()))
    };
    std::fs::create_dir_all(&dataset).map_err(unwritable)?;
    let probe = dataset.join(".b24-export-write-check");
    std::fs::write(&probe, b"ok").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok((dataset, existing))
}

/// Runs a whole export. Blocking: it owns its runtime and threads.
pub fn run_export(opts: ExportOptions) -> Result<ExportSummary> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let (dataset, previous) = prepare_output(&opts)?;
    let _lock = OutputLock::take(&opts.out)?;
    let run_id = new_run_id();
    let stats = Arc::new(ClientStats::default());
    let client = Arc::new(PortalClient::new(opts.auth.clone(), opts.client.clone(), stats.clone())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;

    // 1. field metadata → columns
    let meta = rt.block_on(client.call("crm.lead.fields", &json!({})))?.value()?;
    let filter = schema::canonical_filter(&opts.filter, &meta)?;
    let required: Vec<&str> = opts.partition.source_field().into_iter().collect();
    let cols = schema::build_columns(&meta, opts.select.as_deref(), &required)?;
    for r in &required {
        if !cols.iter().any(|c| c.source == *r) {
            return Err(Error::Usage(format!("--partition-by needs the field {r}, which the portal does not list")));
        }
    }
    let arrow_schema = schema::arrow_schema(&cols);
    let spec = Arc::new(FetchSpec {
        method: "crm.lead.list".into(),
        select: schema::request_select(&cols, opts.select.is_none()),
        filter,
        concurrency: opts.concurrency,
        max_retries: opts.client.max_retries,
    });
    tracing::info!("exporting leads from {} into {} (run {run_id}, {} columns)", client.portal_display(), dataset.display(), cols.len());
    let staging_run = opts.out.join(STAGING).join(&run_id);

    // labels and dictionaries, staged beside the dataset
    let statuses = rt.block_on(crate::dict::fetch_statuses(&client, &cols))?;
    let dict_tables = [
        ("fields", crate::dict::fields_table(DATASET, &cols)?),
        ("enum_items", crate::dict::enum_items_table(DATASET, &cols)?),
        ("statuses", crate::dict::statuses_table(&statuses)?),
    ];
    let mut side_files: Vec<(PathBuf, PathBuf)> = Vec::new(); // (staged, published)
    for (name, table) in &dict_tables {
        let staged = staging_run.join(DICT).join(name).join(format!("{DATASET}.parquet.staged"));
        sink::write_table(&staged, table)?;
        side_files.push((staged, opts.out.join(DICT).join(name).join(format!("{DATASET}.parquet"))));
    }

    // 2. pipeline threads: convert → write
    let progress = Progress::new(stats.clone(), opts.progress);
    let (page_tx, mut page_rx) = tokio::sync::mpsc::channel::<Page>(2);
    let (batch_tx, batch_rx) = std_mpsc::sync_channel::<RecordBatch>(2);
    let conv_schema = arrow_schema.clone();
    let strict = opts.strict;
    let rejects_staged = staging_run.join(REJECTS).join(format!("{DATASET}.jsonl.staged"));
    let mut rejects_log = RejectsLog::new(rejects_staged.clone());
    let converter = std::thread::Builder::new()
        .name("convert".into())
        .spawn(move || -> Result<RejectsLog> {
            while let Some(page) = page_rx.blocking_recv() {
                let (batch, rejects) = crate::convert::convert_page(&page.chunks, page.rows, &cols, &conv_schema, strict)?;
                rejects_log.add(&rejects)?;
                if batch_tx.send(batch).is_err() {
                    break; // the writer failed; it reports why
                }
            }
            rejects_log.close()?;
            Ok(rejects_log)
        })
        .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
    let sink_cfg = SinkConfig::new(staging_run.join(DATASET), run_id.clone(), opts.partition.clone());
    let writer_progress = progress.clone();
    let writer_schema = arrow_schema.clone();
    let writer = std::thread::Builder::new()
        .name("write".into())
        .spawn(move || -> Result<(Vec<FileInfo>, Option<i64>)> {
            let mut w = DatasetWriter::new(sink_cfg, &writer_schema)?;
            let mut max_modify: Option<i64> = None;
            for batch in batch_rx {
                max_modify = max_modify.max(max_timestamp(&batch, "date_modify"));
                if let Err(e) = w.write(&batch) {
                    w.abort();
                    return Err(e);
                }
                writer_progress.add_written(batch.num_rows() as u64);
            }
            Ok((w.finish()?, max_modify))
        })
        .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;

    // 3. fetch
    let fetched = rt.block_on(plan::fetch_all(client.clone(), spec, &plan::Coverage::default(), page_tx, progress.clone()));
    let converted = converter.join().unwrap_or_else(|_| Err(Error::Internal("the converter panicked".into())));
    let written = writer.join().unwrap_or_else(|_| Err(Error::Internal("the writer panicked".into())));
    progress.finish();
    let outcome = match (fetched, converted, written) {
        (Ok(n), Ok(rejects), Ok((files, max_modify))) => Ok((n, rejects, files, max_modify)),
        // a conversion or write error closes the channels, so it explains a fetch that "stopped"
        (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        (Err(e), _, _) => Err(e),
    };
    let checked = outcome.and_then(|(leads, rejects, files, max_modify)| {
        let written_rows: u64 = files.iter().map(|f| f.rows).sum();
        if written_rows != leads {
            return Err(Error::Internal(format!("fetched {leads} leads but wrote {written_rows} rows")));
        }
        Ok((leads, rejects, files, max_modify))
    });
    let (leads, rejects, files, max_modify) = match checked {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging_run); // a failed run publishes nothing
            return Err(e);
        }
    };

    // 4. the run is complete: publish its files, commit its manifest, then remove the dataset it replaces
    let mut manifest = Manifest {
        format: 1,
        dataset: DATASET.into(),
        version: 0,
        run_id: run_id.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: client.portal_display(),
        select: opts.select.clone(),
        filter: Value::Object(opts.filter.clone()),
        partition_by: opts.partition.name().into(),
        partition_column: opts.partition.key_name().map(str::to_string),
        files: files.iter().map(|f| ManifestFile { path: f.path.clone(), rows: f.rows, bytes: f.bytes }).collect(),
        total_rows: leads,
        schema_fingerprint: arrow_schema.metadata().get("b24_export.schema_fingerprint").cloned().unwrap_or_default(),
        max_date_modify: max_modify
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    // dictionaries and rejects describe the new data: put them in place with it, before the commit
    let rejects_file = opts.out.join(REJECTS).join(format!("{DATASET}.jsonl"));
    if rejects.total() > 0 {
        side_files.push((rejects_staged, rejects_file.clone()));
    }
    let committed = sink::publish(&staging_run.join(DATASET), &dataset, &files)
        .and_then(|()| side_files.iter().try_for_each(|(staged, published)| sink::publish_file(staged, published)))
        .and_then(|()| manifest::commit(&manifest::dir(&opts.out, DATASET), &mut manifest));
    if let Err(e) = committed {
        remove_run_files(&dataset, &run_id);
        let _ = std::fs::remove_dir_all(&staging_run);
        return Err(e);
    }
    // committed: what follows is cleanup, and each step is tried whatever the others do
    if rejects.total() == 0 && rejects_file.exists() {
        if let Err(e) = std::fs::remove_file(&rejects_file) {
            tracing::warn!("could not remove the stale {}: {e}", rejects_file.display());
        }
    }
    let _ = std::fs::remove_dir_all(&staging_run);
    let replaced = previous.len();
    if let Err(e) = sink::remove_files(&dataset, &previous) {
        tracing::warn!("snapshot v{:06} is committed, but files of the previous one could not be removed ({e}); `b24-export sql` reads only the new one", manifest.version);
    }
    Ok(ExportSummary {
        dataset,
        run_id,
        leads,
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        requests: stats.requests.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        paused_secs: stats.paused_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        operating_blocks: stats.operating_blocks.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        replaced,
        manifest_version: manifest.version,
        rejects: rejects.counts,
        rejects_file: (rejects.total > 0).then_some(rejects_file),
    })
}

/// Values that did not fit their column: counted per field and streamed to a JSON-lines file, so their number
/// does not cost memory.
struct RejectsLog {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl RejectsLog {
    fn new(path: PathBuf) -> Self {
        RejectsLog { path, out: None, counts: BTreeMap::new(), total: 0 }
    }

    fn total(&self) -> u64 {
        self.total
    }

    fn add(&mut self, rejects: &[crate::convert::Reject]) -> Result<()> {
        use std::io::Write;
        for r in rejects {
            if self.out.is_none() {
                if let Some(parent) = self.path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                let f = std::fs::File::create(&self.path).map_err(|e| Error::io(&self.path, e))?;
                self.out = Some(std::io::BufWriter::new(f));
            }
            let line = serde_json::to_string(r).map_err(|e| Error::Internal(e.to_string()))?;
            let out = self.out.as_mut().expect("opened");
            writeln!(out, "{line}").map_err(|e| Error::io(&self.path, e))?;
            *self.counts.entry(r.field.clone()).or_default() += 1;
            self.total += 1;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| Error::io(&self.path, e))?;
            out.get_ref().sync_all().map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

/// The largest value of a timestamp column of a batch, if it has one.
fn max_timestamp(batch: &RecordBatch, column: &str) -> Option<i64> {
    use arrow_array::cast::AsArray;
    let col = batch.column_by_name(column)?;
    let ts = col.as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()?;
    ts.iter().flatten().max()
}

/// Best-effort removal of a failed run's files, so a failed run leaves the previous dataset as it was.
fn remove_run_files(dataset: &std::path::Path, run_id: &str) {
    if let Ok(files) = sink::list_dataset_files(dataset) {
        let ours: Vec<PathBuf> = files
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(run_id)))
            .collect();
        let _ = sink::remove_files(dataset, &ours);
    }
}

/// The columns an export would write, from the portal's field metadata (for `b24-export schema`).
pub fn portal_columns(auth: &AuthConfig, client: ClientConfig, select: Option<&[String]>) -> Result<Vec<schema::Column>> {
    let stats = Arc::new(ClientStats::default());
    let client = PortalClient::new(auth.clone(), client, stats)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the runtime: {e}")))?;
    let meta = rt.block_on(client.call("crm.lead.fields", &json!({})))?.value()?;
    schema::build_columns(&meta, select, &[])
}

/// A DuckDB query that reads the dataset.
pub fn duckdb_query(dataset: &std::path::Path) -> String {
    format!(
        "SELECT count(*) FROM read_parquet('{}/**/*.parquet', hive_partitioning = true, union_by_name = true);",
        dataset.display().to_string().replace('\'', "''")
    )
}
