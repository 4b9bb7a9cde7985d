//! Sinks: partitioned Parquet files under `OUT/<dataset>/`.
//!
//! Files are written to a local spool folder (`….parquet.tmp` while open, renamed to `part-<run id>-<n>.parquet`
//! when complete; not synced: the export makes them durable when it moves them into the output's staging area at
//! each checkpoint, all at once) and publishes them into the dataset only after the whole run succeeded
//! ([`output`], `export.rs`).
//!
//! Work is split in two: the caller's thread routes rows to their partitions (one sorted copy of each batch,
//! a slice per partition); a small pool of encoder threads (one per core) encodes and compresses Parquet. Every
//! partition belongs to one encoder, which owns that partition's open file and spill file, so the files of
//! several partitions are encoded in parallel while each file is written in order by one thread.
//!
//! Row groups: a partition's rows become one row group when they reach `row_group_rows`, or when its file is
//! finished (at a checkpoint and at the end). Rows wait in memory, as Arrow, up to `memory_budget` for all
//! partitions together (counting the rows being encoded); beyond it the oldest batches are freed by moving the
//! waiting rows of every partition they touch to that partition's spill file on local disk (Arrow buffers as
//! they are, `.spill/` under the spool), which is read back, a batch at a time, into the next row group. Pages
//! of a real run interleave 50-record chunks of many ID ranges, so every month gets rows all through the run:
//! without the spill, a bounded memory meant row groups of a few hundred rows per partition, and the footer
//! metadata of thousands of row groups grew with the data. Queues to the encoders are bounded (two jobs each)
//! and the caller waits while the budget is spent on rows being encoded. Only a few Parquet files are open at
//! once (`max_open_files`, the least recently used is finished first).
//!
//! Encodings: zstd(3), row-group statistics, a bloom filter on `id`, and a dictionary only for the columns where
//! it pays (chosen once per run from the rows waiting at the first row group or spill: a column whose values are
//! mostly distinct — IDs, timestamps, titles, phone numbers — is stored plain, which zstd compresses better
//! than dictionary indices).

pub mod manifest;
pub mod merge;
pub mod output;
pub mod partition;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use partition::PartitionSpec;

/// Options of a dataset writer.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The local folder files are written in until the export moves them to the output.
    pub spool: PathBuf,
    /// The sequence number of the first file (a resumed run continues its numbering).
    pub first_seq: u64,
    pub run_id: String,
    pub partition: PartitionSpec,
    /// Rows per row group at most.
    pub row_group_rows: usize,
    /// A file is closed and a new one started once it holds this many rows.
    pub max_rows_per_file: u64,
    /// Arrow bytes buffered in all partitions together, and being encoded, before buffers are written out.
    pub memory_budget: usize,
    /// Parquet files open at once; the least recently used is closed (finished) beyond that.
    pub max_open_files: usize,
    /// Threads that encode and compress Parquet (each partition's file is written by one of them).
    pub encoders: usize,
}

impl SinkConfig {
    pub fn new(spool: PathBuf, run_id: String, partition: PartitionSpec) -> Self {
        SinkConfig {
            spool,
            first_seq: 0,
            run_id,
            partition,
            row_group_rows: 128 * 1024,
            max_rows_per_file: 5_000_000,
            memory_budget: 32 << 20,
            max_open_files: 256,
            encoders: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4),
        }
    }
}

/// A finished data file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Relative to the dataset root, with `/` separators.
    pub path: String,
    /// Where the finished file is on local disk (in the spool folder).
    pub local: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

/// A partition as the routing thread sees it.
#[derive(Default)]
struct Part {
    /// Rows waiting: slices of routed batches (with the batch's number), and their rows.
    slices: Vec<(RecordBatch, u64)>,
    rows: usize,
    /// Rows of this partition in its encoder's spill file (or on their way there), not yet in a row group.
    spilled: usize,
    /// The encoder that owns this partition's files.
    encoder: usize,
    /// The open file (in its encoder): sequence number and rows sent to it.
    open: Option<(u64, u64)>,
    /// When the open file was last given rows.
    last_used: u64,
}

/// A routed batch (rows sorted by partition) while any slice of it is not encoded yet.
struct Routed {
    bytes: usize,
    /// Slices not yet encoded, and not yet sent to an encoder.
    unencoded: usize,
    waiting: usize,
    /// The partitions it has slices in.
    dirs: Vec<String>,
}

/// Work for an encoder. Every job is answered with one [`Done`], in order.
enum Job {
    /// Encodes `slices` as one row group into the file `seq` of partition `dir` (created if it is not open),
    /// then finishes the file if `close`.
    Write { dir: String, seq: u64, slices: Vec<(RecordBatch, u64)>, close: bool, props: Arc<WriterProperties> },
    /// Appends `slices` to the partition's spill file (local disk), to be encoded with its next row group.
    Spill { dir: String, slices: Vec<(RecordBatch, u64)> },
    /// Finishes the open file of partition `dir`.
    Close { dir: String },
}

/// An encoder's answer to a job: the routed batches whose slices it encoded, a finished file, or why it failed.
struct Done {
    encoded: Vec<u64>,
    file: Option<FileInfo>,
    error: Option<Error>,
}

struct OpenFile {
    tmp: PathBuf,
    done: PathBuf,
    rel: String,
    writer: ArrowWriter<File>,
    rows: u64,
}

/// What an encoder thread needs to create files.
#[derive(Clone)]
struct EncoderCtx {
    spool: PathBuf,
    /// Where this encoder keeps rows spilled from memory (its own folder under the spool's `.spill`).
    spill_dir: PathBuf,
    run_id: String,
    schema: SchemaRef,
}

struct Encoder {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

pub struct DatasetWriter {
    cfg: SinkConfig,
    /// The file properties before the per-column dictionary choice, and after it (made at the first row group).
    base_props: WriterProperties,
    props: Option<Arc<WriterProperties>>,
    /// Indices of the batch columns that go into files (all but a moved partition column).
    keep: Vec<usize>,
    parts: HashMap<String, Part>,
    /// Routed batches still held (waiting or being encoded), oldest first, and their Arrow bytes.
    routed: HashMap<u64, Routed>,
    order: VecDeque<u64>,
    held_bytes: usize,
    next_batch: u64,
    /// Partition directories by partition key (date partitions are grouped by a number, not a string per row).
    dir_of: HashMap<i64, String>,
    /// Jobs sent and not answered yet.
    jobs_out: usize,
    open_files: usize,
    seq: u64,
    tick: u64,
    files: Vec<FileInfo>,
    encoders: Vec<Encoder>,
    done_rx: Receiver<Done>,
    failed: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

impl DatasetWriter {
    pub fn new(cfg: SinkConfig, schema: &SchemaRef) -> Result<Self> {
        let moved = cfg.partition.moved_column();
        let keep: Vec<usize> = (0..schema.fields().len()).filter(|&i| Some(schema.field(i).name().as_str()) != moved).collect();
        // the schema's metadata (columns, fingerprint) goes into the key-value metadata once, not a second time
        // inside the embedded Arrow schema of every file
        let file_schema = Arc::new(Schema::new(keep.iter().map(|&i| schema.field(i).clone()).collect::<Vec<_>>()));
        let base_props = writer_properties_with(
            &cfg.run_id,
            file_schema.field_with_name("id").is_ok(),
            cfg.row_group_rows,
            metadata_kv(schema.metadata()),
        );
        std::fs::create_dir_all(&cfg.spool).map_err(io_err(&cfg.spool))?;
        let ctx = EncoderCtx { spool: cfg.spool.clone(), spill_dir: PathBuf::new(), run_id: cfg.run_id.clone(), schema: file_schema };
        let (done_tx, done_rx) = mpsc::channel();
        let mut encoders = Vec::new();
        for n in 0..cfg.encoders.max(1) {
            // two jobs queued per encoder: enough to keep it busy, and a bound on the rows in flight
            let (tx, rx) = mpsc::sync_channel::<Job>(2);
            let (mut ctx, done_tx) = (ctx.clone(), done_tx.clone());
            ctx.spill_dir = cfg.spool.join(SPILL_DIR).join(n.to_string());
            let thread = std::thread::Builder::new()
                .name(format!("encode-{n}"))
                .spawn(move || encoder_loop(ctx, rx, done_tx))
                .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
            encoders.push(Encoder { jobs: Some(tx), thread: Some(thread) });
        }
        let seq = cfg.first_seq;
        Ok(DatasetWriter {
            cfg,
            base_props,
            props: None,
            keep,
            parts: HashMap::new(),
            routed: HashMap::new(),
            order: VecDeque::new(),
            held_bytes: 0,
            next_batch: 0,
            dir_of: HashMap::new(),
            jobs_out: 0,
            open_files: 0,
            seq,
            tick: 0,
            files: Vec::new(),
            encoders,
            done_rx,
            failed: false,
        })
    }

    /// Writes a batch (with the full schema given to [`DatasetWriter::new`]).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.collect(false)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.tick += 1;
        let groups = self.route(batch)?;
        // one copy of the batch with its rows sorted by partition; each partition gets a slice of it
        let sorted = if groups.len() == 1 {
            batch.project(&self.keep)?
        } else {
            let order: Vec<u32> = groups.iter().flat_map(|(_, rows)| rows.iter().copied()).collect();
            take_rows(&batch.project(&self.keep)?, &UInt32Array::from(order))?
        };
        let id = self.next_batch;
        self.next_batch += 1;
        let bytes = sorted.get_array_memory_size();
        let mut at = 0;
        let mut dirs = Vec::with_capacity(groups.len());
        let mut full = Vec::new();
        let encoders = self.encoders.len();
        for (dir, rows) in groups {
            let slice = sorted.slice(at, rows.len());
            at += rows.len();
            let next = self.parts.len();
            let part = self.parts.entry(dir.clone()).or_insert_with(|| Part { encoder: next % encoders, ..Part::default() });
            part.rows += slice.num_rows();
            part.slices.push((slice, id));
            if part.rows + part.spilled >= self.cfg.row_group_rows {
                full.push(dir.clone());
            }
            dirs.push(dir);
        }
        self.routed.insert(id, Routed { bytes, unencoded: dirs.len(), waiting: dirs.len(), dirs });
        self.order.push_back(id);
        self.held_bytes += bytes;
        for dir in full {
            self.dispatch(&dir, false)?;
        }
        self.enforce_budget()
    }

    /// The partition directory of every row, grouped: (directory, rows in batch order), in order of first
    /// appearance.
    fn route(&mut self, batch: &RecordBatch) -> Result<Vec<(String, Vec<u32>)>> {
        use chrono::Datelike;
        let PartitionSpec::DateCreate(grain) = self.cfg.partition else {
            let Some(dirs) = self.cfg.partition.row_dirs(batch)? else {
                return Ok(vec![(String::new(), (0..batch.num_rows() as u32).collect())]);
            };
            let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
            let mut index: HashMap<&str, usize> = HashMap::new();
            for (row, d) in dirs.iter().enumerate() {
                let g = *index.entry(d.as_str()).or_insert_with(|| {
                    groups.push((d.clone(), Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(row as u32);
            }
            return Ok(groups);
        };
        // a number per row that tells the partitions apart (year, month or day of DATE_CREATE in UTC; NULL
        // and out-of-range values alike); the directory name is formatted once per partition
        let name = self.cfg.partition.source_field().expect("partitioned").to_ascii_lowercase();
        let col = batch.column_by_name(&name).ok_or_else(|| Error::Internal(format!("partition column {name} is not in the batch")))?;
        let ts = col
            .as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal("date_create is not a timestamp".into()))?;
        let key = |i: usize| -> i64 {
            if ts.is_null(i) {
                return i64::MIN;
            }
            match chrono::DateTime::from_timestamp_micros(ts.value(i)) {
                None => i64::MIN,
                Some(d) => match grain {
                    partition::Grain::Year => d.year() as i64,
                    partition::Grain::Month => d.year() as i64 * 16 + d.month() as i64,
                    partition::Grain::Day => d.date_naive().num_days_from_ce() as i64,
                },
            }
        };
        let mut groups: Vec<(i64, Vec<u32>)> = Vec::new();
        let mut last = usize::MAX;
        for row in 0..batch.num_rows() {
            let k = key(row);
            if last == usize::MAX || groups[last].0 != k {
                last = groups.iter().position(|(g, _)| *g == k).unwrap_or_else(|| {
                    groups.push((k, Vec::new()));
                    groups.len() - 1
                });
            }
            groups[last].1.push(row as u32);
        }
        let mut out = Vec::with_capacity(groups.len());
        for (k, rows) in groups {
            let dir = match self.dir_of.get(&k) {
                Some(d) => d.clone(),
                None => {
                    let one = batch.slice(rows[0] as usize, 1);
                    let d = self.cfg.partition.row_dirs(&one)?.and_then(|d| d.into_iter().next()).unwrap_or_default();
                    self.dir_of.insert(k, d.clone());
                    d
                }
            };
            out.push((dir, rows));
        }
        Ok(out)
    }

    /// Sends a partition's waiting rows to its encoder as one row group; with `close`, its file is finished
    /// afterwards (also when no rows wait).
    fn dispatch(&mut self, dir: &str, close: bool) -> Result<()> {
        self.choose_props();
        let tick = self.tick;
        let part = self.parts.get_mut(dir).expect("known partition");
        let slices = std::mem::take(&mut part.slices);
        let rows = std::mem::take(&mut part.rows) + std::mem::take(&mut part.spilled);
        for (_, id) in &slices {
            if let Some(r) = self.routed.get_mut(id) {
                r.waiting -= 1;
            }
        }
        let encoder = part.encoder;
        let job = if rows > 0 {
            let seq = match part.open {
                Some((seq, _)) => seq,
                None => {
                    self.seq += 1;
                    self.open_files += 1;
                    part.open = Some((self.seq, 0));
                    self.seq
                }
            };
            let (_, file_rows) = part.open.as_mut().expect("open");
            *file_rows += rows as u64;
            part.last_used = tick;
            let close = close || *file_rows >= self.cfg.max_rows_per_file;
            if close {
                part.open = None;
                self.open_files -= 1;
            }
            let props = self.props.clone().unwrap_or_else(|| Arc::new(self.base_props.clone()));
            Job::Write { dir: dir.to_string(), seq, slices, close, props }
        } else if close && part.open.is_some() {
            part.open = None;
            self.open_files -= 1;
            Job::Close { dir: dir.to_string() }
        } else {
            return Ok(());
        };
        self.send(encoder, job)?;
        // too many open files: finish the least recently used (not the one just written)
        while self.open_files > self.cfg.max_open_files {
            let lru = self
                .parts
                .iter()
                .filter(|(d, p)| p.open.is_some() && d.as_str() != dir)
                .min_by_key(|(_, p)| p.last_used)
                .map(|(d, _)| d.clone());
            let Some(lru) = lru else { break };
            let p = self.parts.get_mut(&lru).expect("known");
            p.open = None;
            self.open_files -= 1;
            let encoder = p.encoder;
            self.send(encoder, Job::Close { dir: lru })?;
        }
        Ok(())
    }

    /// At the first row group or spill: the dictionary columns, chosen from all rows waiting now.
    fn choose_props(&mut self) {
        if self.props.is_none() {
            let sample: Vec<&RecordBatch> = self.parts.values().flat_map(|p| p.slices.iter().map(|(b, _)| b)).collect();
            if !sample.is_empty() {
                self.props = Some(Arc::new(choose_dictionaries(self.base_props.clone(), &sample)));
            }
        }
    }

    /// Sends a partition's waiting rows to its encoder's spill file: memory is freed without cutting a small
    /// row group.
    fn spill(&mut self, dir: &str) -> Result<()> {
        self.choose_props();
        let part = self.parts.get_mut(dir).expect("known partition");
        if part.rows == 0 {
            return Ok(());
        }
        let slices = std::mem::take(&mut part.slices);
        part.spilled += std::mem::take(&mut part.rows);
        for (_, id) in &slices {
            if let Some(r) = self.routed.get_mut(id) {
                r.waiting -= 1;
            }
        }
        let encoder = part.encoder;
        self.send(encoder, Job::Spill { dir: dir.to_string(), slices })
    }

    fn send(&mut self, encoder: usize, job: Job) -> Result<()> {
        let mut job = job;
        // a full queue: take answers while waiting, so the budget sees the rows already encoded
        loop {
            let tx = self.encoders[encoder].jobs.as_ref().expect("running");
            match tx.try_send(job) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(j)) => {
                    job = j;
                    self.wait_one()?;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    self.failed = true;
                    return Err(Error::Internal("a Parquet encoder thread stopped".into()));
                }
            }
        }
        self.jobs_out += 1;
        Ok(())
    }

    fn take(&mut self, d: Done) -> Result<()> {
        self.jobs_out -= 1;
        for id in d.encoded {
            let Some(r) = self.routed.get_mut(&id) else { continue };
            r.unencoded -= 1;
            if r.unencoded == 0 {
                self.held_bytes -= r.bytes;
                self.routed.remove(&id);
            }
        }
        if let Some(f) = d.file {
            self.files.push(f);
        }
        match d.error {
            Some(e) => {
                self.failed = true;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Waits for one answer of an encoder.
    fn wait_one(&mut self) -> Result<()> {
        let d = self.done_rx.recv().map_err(|_| Error::Internal("the Parquet encoder threads stopped".into()))?;
        self.take(d)
    }

    /// Takes the encoders' answers so far; with `all`, waits for every job sent.
    fn collect(&mut self, all: bool) -> Result<()> {
        if self.failed {
            return Err(Error::Internal("the Parquet writer failed earlier".into()));
        }
        while let Ok(d) = self.done_rx.try_recv() {
            self.take(d)?;
        }
        while all && self.jobs_out > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    /// Over the budget: the oldest routed batches are freed by sending every partition that holds a slice of
    /// them to the encoders, until a quarter of the budget is free; then waits while the rows being encoded
    /// still exceed it. Partitions that no longer get rows (months in the past) thus become one row group each.
    fn enforce_budget(&mut self) -> Result<()> {
        let budget = self.cfg.memory_budget;
        if self.held_bytes <= budget {
            return Ok(());
        }
        let mut freeing = 0;
        while self.held_bytes - freeing.min(self.held_bytes) > budget / 4 * 3 {
            let Some(&id) = self.order.front() else { break };
            let Some(r) = self.routed.get(&id).filter(|r| r.waiting > 0) else {
                self.order.pop_front(); // all its slices are encoded or being encoded
                continue;
            };
            freeing += r.bytes;
            let dirs = r.dirs.clone();
            for d in dirs {
                self.spill(&d)?;
            }
        }
        while self.jobs_out > 0 && self.held_bytes > budget {
            self.wait_one()?;
        }
        Ok(())
    }

    /// The sequence number the next file would get.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Writes every buffered row and closes every file: afterwards, all rows given so far are in the finished
    /// files returned (those finished since the last call). Writing may go on; new files are started.
    pub fn flush_files(&mut self) -> Result<Vec<FileInfo>> {
        self.collect(false)?;
        // the partitions of each encoder, taken in turn: a queue full of one encoder's jobs must not keep the
        // other encoders waiting for work (each encoder's biggest partitions go first)
        let mut queues: Vec<Vec<(usize, String)>> = vec![Vec::new(); self.encoders.len()];
        for (d, p) in &self.parts {
            if p.rows + p.spilled > 0 || p.open.is_some() {
                queues[p.encoder].push((p.rows + p.spilled, d.clone()));
            }
        }
        for q in &mut queues {
            q.sort();
        }
        while queues.iter().any(|q| !q.is_empty()) {
            for q in &mut queues {
                if let Some((_, d)) = q.pop() {
                    self.dispatch(&d, true)?;
                }
            }
        }
        self.collect(true)?;
        self.order.clear();
        let mut files = std::mem::take(&mut self.files);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Closes every file and returns the files finished since the last [`DatasetWriter::flush_files`].
    pub fn finish(mut self) -> Result<Vec<FileInfo>> {
        self.flush_files()
    }

    /// Drops unfinished files (after a failed run); the caller removes the staging folder.
    pub fn abort(self) {
        drop(self) // the encoders remove the files still open when their queue closes
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        for e in &mut self.encoders {
            e.jobs = None;
        }
        for e in &mut self.encoders {
            if let Some(t) = e.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// An encoder thread: runs jobs in order until its queue closes, then removes the files still open (a run
/// that finished has closed them all).
fn encoder_loop(ctx: EncoderCtx, jobs: Receiver<Job>, done: Sender<Done>) {
    let mut open: HashMap<String, OpenFile> = HashMap::new();
    let mut spills: HashMap<String, Spill> = HashMap::new();
    for job in jobs {
        let encoded: Vec<u64> = match &job {
            Job::Write { slices, .. } | Job::Spill { slices, .. } => slices.iter().map(|(_, id)| *id).collect(),
            Job::Close { .. } => Vec::new(),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(&ctx, &mut open, &mut spills, job)))
            .unwrap_or_else(|_| Err(Error::Internal("a Parquet encoder panicked".into())));
        let answer = match result {
            Ok(file) => Done { encoded, file, error: None },
            Err(e) => Done { encoded, file: None, error: Some(e) },
        };
        if done.send(answer).is_err() {
            break;
        }
    }
    for (_, f) in open.drain() {
        drop(f.writer);
        let _ = std::fs::remove_file(&f.tmp);
    }
    spills.clear();
    let _ = std::fs::remove_dir_all(&ctx.spill_dir);
}

fn run_job(
    ctx: &EncoderCtx,
    open: &mut HashMap<String, OpenFile>,
    spills: &mut HashMap<String, Spill>,
    job: Job,
) -> Result<Option<FileInfo>> {
    match job {
        Job::Spill { dir, slices } => {
            let batches: Vec<RecordBatch> = slices.into_iter().map(|(b, _)| b).collect();
            // one compact batch: a slice still points at the whole routed batch
            let batch = arrow_select::concat::concat_batches(&ctx.schema, &batches)?;
            drop(batches);
            let spill = match spills.entry(dir) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    std::fs::create_dir_all(&ctx.spill_dir).map_err(io_err(&ctx.spill_dir))?;
                    let n = SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    e.insert(Spill::create(ctx.spill_dir.join(format!("{n}.arrows")))?)
                }
            };
            spill.append(&batch)?;
            Ok(None)
        }
        Job::Write { dir, seq, slices, close, props } => {
            if !open.contains_key(&dir) {
                let f = create(ctx, &dir, seq, &props)?;
                open.insert(dir.clone(), f);
            }
            let f = open.get_mut(&dir).expect("open");
            if let Some(spill) = spills.remove(&dir) {
                // the rows spilled earlier come first, a batch at a time, into the same row group
                spill.replay(&ctx.schema, |b| {
                    f.writer.write(&b).map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
                    f.rows += b.num_rows() as u64;
                    Ok(())
                })?;
            }
            for (b, _) in &slices {
                f.writer.write(b).map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
                f.rows += b.num_rows() as u64;
            }
            drop(slices);
            // one row group per job: the encoded pages leave memory now
            f.writer.flush().map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
            if close {
                return finish_file(open.remove(&dir).expect("open")).map(Some);
            }
            Ok(None)
        }
        Job::Close { dir } => match open.remove(&dir) {
            Some(f) => finish_file(f).map(Some),
            None => Ok(None),
        },
    }
}

fn create(ctx: &EncoderCtx, dir: &str, seq: u64, props: &WriterProperties) -> Result<OpenFile> {
    let name = format!("part-{}-{:05}.parquet", ctx.run_id, seq);
    let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
    let tmp = ctx.spool.join(format!("{rel}.tmp"));
    let done = ctx.spool.join(&rel);
    // the partition's folder is made here, by an encoder, while the others work: at the end of a run the folder
    // moves whole to the staging area and then to the dataset (a `mkdir` is a quarter millisecond on a busy ext4)
    if let Some(folder) = done.parent() {
        std::fs::create_dir_all(folder).map_err(io_err(folder))?;
    }
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    // no embedded Arrow schema: the Parquet types read back as the same Arrow types (timestamps as UTC), and
    // the schema's metadata is in the key-value metadata already; it saved 8 KB per file
    let options = parquet::arrow::arrow_writer::ArrowWriterOptions::new().with_properties(props.clone()).with_skip_arrow_metadata(true);
    let writer = ArrowWriter::try_new_with_options(file, ctx.schema.clone(), options)
        .map_err(|e| Error::Parquet { path: tmp.clone(), source: e })?;
    Ok(OpenFile { tmp, done, rel, writer, rows: 0 })
}

/// Writes the footer and gives the file its final name. Not synced here (an encoder waiting for the disk is a
/// core idle): whoever stages the files makes them durable, all at once ([`output::Output::put_files`]).
fn finish_file(f: OpenFile) -> Result<FileInfo> {
    let file = f.writer.into_inner().map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
    let bytes = file.metadata().map_err(io_err(&f.tmp))?.len();
    drop(file);
    std::fs::rename(&f.tmp, &f.done).map_err(io_err(&f.done))?;
    Ok(FileInfo { path: f.rel, local: f.done, rows: f.rows, bytes })
}

/// The rows `indices` (no nulls) of `batch`, as `take_record_batch` gives them, but a list of non-primitive
/// elements (the multi-fields' structs, strings, booleans) is taken through the indices of its elements: arrow's
/// `take` copies such a list row by row through `MutableArrayData`, which was half of the router's time.
fn take_rows(batch: &RecordBatch, indices: &UInt32Array) -> Result<RecordBatch> {
    debug_assert_eq!(indices.null_count(), 0, "the router's indices have no nulls");
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::List(f) if f.data_type().primitive_width().is_none() => take_list(f, c.as_list::<i32>(), indices),
            _ => arrow_select::take::take(c, indices, None),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
    Ok(RecordBatch::try_new_with_options(batch.schema(), columns, &options)?)
}

fn take_list(
    field: &arrow_schema::FieldRef,
    list: &arrow_array::ListArray,
    indices: &UInt32Array,
) -> std::result::Result<arrow_array::ArrayRef, arrow_schema::ArrowError> {
    let offsets = list.value_offsets();
    let mut taken_offsets: Vec<i32> = Vec::with_capacity(indices.len() + 1);
    let mut elements: Vec<u32> = Vec::new();
    let mut end = 0i32;
    taken_offsets.push(end);
    for &row in indices.values() {
        let (from, to) = (offsets[row as usize], offsets[row as usize + 1]);
        elements.extend(from as u32..to as u32);
        end = end.checked_add(to - from).ok_or(arrow_schema::ArrowError::OffsetOverflowError(end as usize))?;
        taken_offsets.push(end);
    }
    let values = arrow_select::take::take(list.values(), &UInt32Array::from(elements), None)?;
    let nulls = list.nulls().map(|n| indices.values().iter().map(|&row| n.is_valid(row as usize)).collect::<arrow_buffer::NullBuffer>());
    Ok(Arc::new(arrow_array::ListArray::try_new(field.clone(), arrow_buffer::OffsetBuffer::new(taken_offsets.into()), values, nulls)?))
}

/// Leaf columns of a sample with many distinct values (at least [`DISTINCT_SHARE`] of their non-null values)
/// get no dictionary: there the dictionary page repeats the values and the indices cost more than zstd saves
/// on plain values. Measured on the simulated leads: 1,000,000 leads in 97.4 MiB with the cut at 1/2, 96.0 MiB
/// at 1/5, 96.5 MiB at 1/20.
fn choose_dictionaries(props: WriterProperties, sample: &[&RecordBatch]) -> WriterProperties {
    let Some(first) = sample.first() else { return props };
    let schema = first.schema();
    let mut plain = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let arrays: Vec<&dyn Array> = sample.iter().map(|b| b.column(i).as_ref()).collect();
        mostly_distinct(&mut vec![field.name().clone()], field, &arrays, &mut plain);
    }
    if plain.is_empty() {
        return props;
    }
    let mut b: WriterPropertiesBuilder = props.into_builder();
    for path in plain {
        b = b.set_column_dictionary_enabled(ColumnPath::new(path), false);
    }
    b.build()
}

/// The hasher of the distinct-value count: foldhash, not std's SipHash, which took 1.5 % of a conversion's CPU.
type FastHash = foldhash::fast::RandomState;

/// Values looked at per column at most. The sample is counted once per run, on the routing thread, while the
/// pipeline waits: 20,000 values per column took ~20 ms (1,000,000 leads: 94.7 MiB of Parquet with 20,000,
/// 95.0 MiB with 5,000; 200,000 leads: 2.5 % less CPU with 5,000 and files 0.1 % smaller).
const SAMPLE_VALUES: usize = 5_000;
/// A column gets no dictionary when its distinct values are at least this share of its values.
const DISTINCT_SHARE: f64 = 0.2;

fn mostly_distinct(path: &mut Vec<String>, field: &Field, arrays: &[&dyn Array], out: &mut Vec<Vec<String>>) {
    match field.data_type() {
        DataType::Struct(children) => {
            for (i, child) in children.iter().enumerate() {
                let sub: Vec<&dyn Array> = arrays.iter().map(|a| a.as_struct().column(i).as_ref()).collect();
                path.push(child.name().clone());
                mostly_distinct(path, child, &sub, out);
                path.pop();
            }
        }
        DataType::List(child) => {
            let sub: Vec<&dyn Array> = arrays.iter().map(|a| a.as_list::<i32>().values().as_ref()).collect();
            path.extend(["list".to_string(), child.name().clone()]);
            mostly_distinct(path, child, &sub, out);
            path.truncate(path.len() - 2);
        }
        DataType::Boolean => {}
        DataType::Utf8 => {
            let mut seen: HashSet<&[u8], FastHash> = HashSet::default();
            let mut values = 0usize;
            'outer: for a in arrays {
                let s = a.as_string::<i32>();
                for i in 0..s.len() {
                    if s.is_valid(i) {
                        seen.insert(s.value(i).as_bytes());
                        values += 1;
                        if values >= SAMPLE_VALUES {
                            break 'outer;
                        }
                    }
                }
            }
            if values > 0 && seen.len() as f64 >= values as f64 * DISTINCT_SHARE {
                out.push(path.clone());
            }
        }
        t if t.primitive_width().is_some() => {
            let width = t.primitive_width().expect("fixed width");
            let data: Vec<_> = arrays.iter().map(|a| a.to_data()).collect();
            let mut seen: HashSet<&[u8], FastHash> = HashSet::default();
            let mut values = 0usize;
            'outer: for d in &data {
                let Some(buf) = d.buffers().first() else { continue };
                let bytes = buf.as_slice();
                for i in 0..d.len() {
                    if d.is_valid(i) {
                        let at = (d.offset() + i) * width;
                        if let Some(v) = bytes.get(at..at + width) {
                            seen.insert(v);
                        }
                        values += 1;
                        if values >= SAMPLE_VALUES {
                            break 'outer;
                        }
                    }
                }
            }
            if values > 0 && seen.len() as f64 >= values as f64 * DISTINCT_SHARE {
                out.push(path.clone());
            }
        }
        _ => {}
    }
}

/// Settings of glibc's malloc, which still serves the C libraries' allocations (zstd's contexts; the Rust side uses
/// jemalloc in the binary). A process-wide setting: the binary (and the writer benchmark) call it once at start,
/// before any thread.
///
/// - One arena per core: glibc gives threads their own arenas (up to 8 per core), and memory freed on another
///   thread piles up in arenas that are never reused (before jemalloc, this cut the peak RSS of converting
///   1,000,000 leads from 229–252 to 203–206 MiB).
/// - The heap is trimmed only beyond 256 MiB free at its top, and no block below 32 MiB is `mmap`ed: parquet makes
///   a zstd compressor and decompressor for every column chunk (~8,200 of each for 200,000 leads), ~100 KB–1 MB
///   each. With glibc's default (dynamic) thresholds the heap was trimmed after each and the next context faulted
///   its pages in again: 40 % of the page faults of a 200,000-lead conversion (110k → 65k faults, 2–5 % of the
///   CPU time). The heap then holds what the encoders' contexts use at once (peak RSS fell, see the spill
///   buffers).
pub fn tune_c_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            extern "C" {
                fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
            }
            const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
            const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
            const M_ARENA_MAX: std::ffi::c_int = -8;
            let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
            // SAFETY: mallopt only sets glibc allocator parameters; it is thread-safe and has no other effect
            unsafe {
                mallopt(M_ARENA_MAX, arenas as std::ffi::c_int);
                mallopt(M_TRIM_THRESHOLD, 256 << 20);
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
            }
        });
    }
}

/// The folder (under the spool) where encoders spill rows that wait for their row group.
const SPILL_DIR: &str = ".spill";

/// The write buffer of a spill file. Every partition that waits has one open (85 for a portal of 7 years), so it
/// stays small: buffers of 1 MiB took 85 MiB of the peak RSS (223 → 139–146 MiB converting 200,000 leads with
/// 64 KiB). Column buffers larger than this go to the file directly.
const SPILL_BUFFER: usize = 64 << 10;

/// Spill files of this process, numbered.
static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Rows of one partition spilled to local disk: Arrow buffers as they are in memory, batch after batch, read
/// back once into the partition's next row group and then deleted. Rows thus wait on disk, not in memory, and
/// a partition that gets rows all through a run still becomes one row group (up to `row_group_rows`).
struct Spill {
    path: PathBuf,
    out: std::io::BufWriter<File>,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Spill {
    fn create(path: PathBuf) -> Result<Spill> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io_err(&path))?;
        Ok(Spill { out: std::io::BufWriter::with_capacity(SPILL_BUFFER, file), path })
    }

    fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        use std::io::Write;
        let mut put = |bytes: &[u8]| self.out.write_all(bytes);
        let r = (|| {
            put(&(batch.num_rows() as u64).to_le_bytes())?;
            for col in batch.columns() {
                write_data(&mut put, &col.to_data())?;
            }
            Ok(())
        })();
        r.map_err(io_err(&self.path))
    }

    /// Reads the batches back in order, hands each to `f`, and deletes the file.
    fn replay(mut self, schema: &SchemaRef, mut f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
        use std::io::{Read, Seek, Write};
        self.out.flush().map_err(io_err(&self.path))?;
        let file = self.out.get_mut();
        file.seek(std::io::SeekFrom::Start(0)).map_err(io_err(&self.path))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, &*file);
        loop {
            let mut rows = [0u8; 8];
            match r.read_exact(&mut rows) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(Error::io(&self.path, e)),
            }
            let rows = u64::from_le_bytes(rows) as usize;
            let mut columns = Vec::with_capacity(schema.fields().len());
            for field in schema.fields() {
                let data = read_data(&mut r, field.data_type()).map_err(io_err(&self.path))?;
                columns.push(arrow_array::make_array(data));
            }
            let batch = RecordBatch::try_new_with_options(
                schema.clone(),
                columns,
                &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows)),
            )?;
            f(batch)?;
        }
        Ok(())
    }
}

fn write_data(put: &mut impl FnMut(&[u8]) -> std::io::Result<()>, data: &arrow_data::ArrayData) -> std::io::Result<()> {
    put(&(data.len() as u64).to_le_bytes())?;
    put(&(data.offset() as u64).to_le_bytes())?;
    match data.nulls() {
        Some(n) => {
            let bits = n.inner();
            put(&[1])?;
            put(&(bits.offset() as u64).to_le_bytes())?;
            put(&(bits.len() as u64).to_le_bytes())?;
            put(&(bits.inner().len() as u64).to_le_bytes())?;
            put(bits.inner().as_slice())?;
        }
        None => put(&[0])?,
    }
    put(&(data.buffers().len() as u64).to_le_bytes())?;
    for b in data.buffers() {
        put(&(b.len() as u64).to_le_bytes())?;
        put(b.as_slice())?;
    }
    put(&(data.child_data().len() as u64).to_le_bytes())?;
    for c in data.child_data() {
        write_data(put, c)?;
    }
    Ok(())
}

fn read_u64(r: &mut impl std::io::Read) -> std::io::Result<usize> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b) as usize)
}

fn read_buffer(r: &mut impl std::io::Read) -> std::io::Result<arrow_buffer::Buffer> {
    let len = read_u64(r)?;
    // zeroed and 64-byte aligned, as Arrow wants its buffers
    let mut b = arrow_buffer::MutableBuffer::from_len_zeroed(len);
    r.read_exact(b.as_slice_mut())?;
    Ok(b.into())
}

fn read_data(r: &mut impl std::io::Read, data_type: &DataType) -> std::io::Result<arrow_data::ArrayData> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let len = read_u64(r)?;
    let offset = read_u64(r)?;
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let nulls = if flag[0] == 1 {
        // a null buffer has its own offset and length (the array's offset applies to the other buffers)
        let bit_offset = read_u64(r)?;
        let bit_len = read_u64(r)?;
        let bytes = read_buffer(r)?;
        if bit_offset + bit_len > bytes.len() * 8 {
            return Err(bad("spill file: a null buffer is too short".into()));
        }
        let bits = arrow_buffer::BooleanBuffer::new(bytes, bit_offset, bit_len);
        Some(arrow_buffer::NullBuffer::new(bits))
    } else {
        None
    };
    let n = read_u64(r)?;
    let buffers = (0..n).map(|_| read_buffer(r)).collect::<std::io::Result<Vec<_>>>()?;
    let child_types: Vec<&DataType> = match data_type {
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        DataType::List(f) | DataType::LargeList(f) => vec![f.data_type()],
        _ => Vec::new(),
    };
    let n = read_u64(r)?;
    if n != child_types.len() {
        return Err(bad(format!("spill file: {n} children for {data_type}")));
    }
    let children = child_types.into_iter().map(|t| read_data(r, t)).collect::<std::io::Result<Vec<_>>>()?;
    arrow_data::ArrayData::builder(data_type.clone())
        .len(len)
        .offset(offset)
        .nulls(nulls)
        .buffers(buffers)
        .child_data(children)
        .build()
        .map_err(|e| bad(format!("spill file: {e}")))
}

/// The properties of every data file: ZSTD(3), row-group statistics, row groups of at most 131,072 rows, a bloom
/// filter on `id`, the tool and run id in the metadata.
pub fn writer_properties(run_id: &str, has_id: bool, kv: Vec<KeyValue>) -> WriterProperties {
    writer_properties_with(run_id, has_id, 128 * 1024, kv)
}

/// Schema metadata as Parquet key-value pairs (not the run id, which every file gets anew).
pub fn metadata_kv(meta: &arrow_schema::Metadata) -> Vec<KeyValue> {
    let mut kv: Vec<KeyValue> = meta
        .iter()
        .filter(|(k, _)| k.as_str() != "b24_export.run_id" && k.as_str() != "ARROW:schema")
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    kv.sort_by(|a, b| a.key.cmp(&b.key));
    kv
}

fn writer_properties_with(run_id: &str, has_id: bool, row_group_rows: usize, mut kv: Vec<KeyValue>) -> WriterProperties {
    kv.push(KeyValue::new("b24_export.run_id".into(), run_id.to_string()));
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        // row-group statistics (min/max cut to 24 bytes) and the bloom filter on `id`, no page index (column and
        // offset index): a partition's column chunk is mostly one page, where a page index only repeats the
        // chunk's statistics and offset (~5 KB per file, as much as 200,000 leads' files differ from DuckDB's)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_statistics_truncate_length(Some(24))
        .set_offset_index_disabled(true)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("b24-export {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    if has_id {
        // A bloom filter is allocated for its NDV and kept in memory until the file closes, once per row
        // group: size it for a typical partition, not parquet's default of a million values (~1 MiB each).
        // IDs are unique: a dictionary would only cost space
        props = props
            .set_column_dictionary_enabled(ColumnPath::from("id"), false)
            .set_column_bloom_filter_enabled(ColumnPath::from("id"), true)
            .set_column_bloom_filter_max_ndv(ColumnPath::from("id"), 50_000)
            .set_column_bloom_filter_fpp(ColumnPath::from("id"), 0.01);
    }
    props.build()
}

/// Writes a small table as one Parquet file at `path` (a staging name); returns its size in bytes.
pub fn write_table(path: &Path, batch: &RecordBatch) -> Result<u64> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_created_by(format!("b24-export {}", env!("CARGO_PKG_VERSION")))
        .build();
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| Error::Parquet { path: path.into(), source: e })?;
    w.write(batch).map_err(|e| Error::Parquet { path: path.into(), source: e })?;
    let file = w.into_inner().map_err(|e| Error::Parquet { path: path.into(), source: e })?;
    file.sync_all().map_err(io_err(path))?;
    Ok(file.metadata().map_err(io_err(path))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// The IDs in the files (sorted), and the files' dataset paths under `root`.
    fn read_ids(root: &Path, infos: &[FileInfo]) -> (Vec<i64>, Vec<PathBuf>) {
        let files: Vec<PathBuf> = infos.iter().map(|f| root.join(&f.path)).collect();
        let mut ids = Vec::new();
        for f in infos {
            assert!(f.local.is_file(), "{} is not on disk", f.local.display());
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f.local).unwrap()).unwrap().build().unwrap();
            for b in reader {
                let b = b.unwrap();
                assert!(b.column_by_name("status_id").is_none(), "partition column repeated inside a file");
                ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
            }
        }
        ids.sort();
        (ids, files)
    }

    #[test]
    fn a_tiny_budget_and_one_open_file_still_write_every_row_once() {
        let root = std::env::temp_dir().join(format!("b24-sink-{}-{}", std::process::id(), fastrand::u32(..)));
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("status_id", DataType::Utf8, true)]));
        let spool = root.join("spool");
        let mut cfg = SinkConfig::new(spool.clone(), "run1".into(), PartitionSpec::Code("status_id"));
        cfg.memory_budget = 1; // every batch spills
        cfg.max_open_files = 1; // and writers are evicted all the time
        cfg.row_group_rows = 7;
        let mut w = DatasetWriter::new(cfg, &schema).unwrap();
        let statuses = ["NEW", "JUNK", "C2:NEW/x", ""];
        for chunk in 0..10i64 {
            let ids: Vec<i64> = (0..10).map(|i| chunk * 10 + i).collect();
            let st: Vec<Option<&str>> = ids.iter().map(|i| Some(statuses[(*i % 4) as usize])).collect();
            let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(st))]).unwrap();
            w.write(&b).unwrap();
        }
        let mut files = w.flush_files().unwrap();
        let flushed = files.iter().map(|f| f.rows).sum::<u64>();
        assert_eq!(flushed, 100, "after a flush, every row given so far is in a finished file");
        for chunk in 10..20i64 {
            let ids: Vec<i64> = (0..10).map(|i| chunk * 10 + i).collect();
            let st: Vec<Option<&str>> = ids.iter().map(|i| Some(statuses[(*i % 4) as usize])).collect();
            let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(st))]).unwrap();
            w.write(&b).unwrap();
        }
        files.extend(w.finish().unwrap());
        let mut on_disk = Vec::new();
        let mut stack = vec![spool.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() { stack.push(p) } else { on_disk.push(p) }
            }
        }
        assert_eq!(on_disk.len(), files.len(), "exactly the finished files, no temporary ones: {on_disk:?}");
        let (ids, paths) = read_ids(&spool, &files);
        assert_eq!(ids, (0..200).collect::<Vec<_>>());
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 200);
        assert!(paths.len() > 4, "evictions should have produced several files per partition");
        let names: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n.contains("status_id=C2%3ANEW%2Fx/")));
        assert!(names.iter().any(|n| n.contains(&format!("status_id={}/", partition::HIVE_NULL))));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// 300 simulated leads as the converter makes them: every column type, lists of structs, nulls.
    fn lead_batch() -> (SchemaRef, RecordBatch) {
        use crate::sim::data::{fields_metadata, generate_ids, lead_truth, render_lead, Encoding, IdLayout};
        let cols = crate::schema::build_columns(crate::entity::Entity::Lead, &fields_metadata(), None, &[]).unwrap();
        let schema = crate::schema::arrow_schema(&cols);
        let ids = generate_ids(300, 7, IdLayout::Realistic);
        let chunks: Vec<Box<serde_json::value::RawValue>> = ids
            .chunks(50)
            .enumerate()
            .map(|(c, chunk)| {
                let rows: Vec<serde_json::Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, &id)| serde_json::Value::Object(render_lead(&lead_truth(7, id, c * 50 + k, 300), id, &Encoding::default(), |_| true)))
                    .collect();
                serde_json::value::RawValue::from_string(serde_json::Value::Array(rows).to_string()).unwrap()
            })
            .collect();
        let (batch, _) = crate::convert::convert_page(&chunks, 300, &cols, &schema, false).unwrap();
        (schema, batch)
    }

    #[test]
    fn take_rows_equals_arrow_take_with_lists_of_structs_nulls_and_slices() {
        let (_, leads) = lead_batch();
        assert!(leads.columns().iter().any(|c| matches!(c.data_type(), DataType::List(f) if matches!(f.data_type(), DataType::Struct(_)))));
        let order: Vec<u32> = (0..150).rev().chain((150..300).step_by(3)).chain([7, 7, 0]).collect();
        let idx = UInt32Array::from(order);
        assert_eq!(take_rows(&leads, &idx).unwrap(), arrow_select::take::take_record_batch(&leads, &idx).unwrap());
        let sliced = leads.slice(100, 160);
        let idx = UInt32Array::from((0..160).rev().collect::<Vec<u32>>());
        assert_eq!(take_rows(&sliced, &idx).unwrap(), arrow_select::take::take_record_batch(&sliced, &idx).unwrap());
        // a list of structs with null lists, empty lists and null elements
        let ids: arrow_array::ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4), Some(5)]));
        let elem = Arc::new(Field::new("item", DataType::Struct(vec![Field::new("id", DataType::Int64, true)].into()), true));
        let values = arrow_array::StructArray::new(
            vec![Arc::new(Field::new("id", DataType::Int64, true))].into(),
            vec![ids],
            Some(arrow_buffer::NullBuffer::from(vec![true, true, false, true, true])),
        );
        let list = arrow_array::ListArray::new(
            elem.clone(),
            arrow_buffer::OffsetBuffer::new(vec![0, 2, 2, 3, 5].into()),
            Arc::new(values),
            Some(arrow_buffer::NullBuffer::from(vec![true, false, true, true])),
        );
        let schema = Arc::new(Schema::new(vec![Field::new("l", DataType::List(elem), true)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(list)]).unwrap();
        for b in [b.clone(), b.slice(1, 3)] {
            let idx = UInt32Array::from((0..b.num_rows() as u32).rev().chain([0]).collect::<Vec<u32>>());
            assert_eq!(take_rows(&b, &idx).unwrap(), arrow_select::take::take_record_batch(&b, &idx).unwrap());
        }
    }

    #[test]
    fn spilled_rows_read_back_equal_with_nested_columns_nulls_and_slices() {
        let (schema, batch) = lead_batch();
        // slices and a take, as the router makes them: buffers with offsets, nested lists of structs, nulls
        let parts = [batch.slice(0, 120), batch.slice(120, 1), batch.slice(121, 179)];
        let dir = std::env::temp_dir().join(format!("b24-spill-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spill = Spill::create(dir.join("0.arrows")).unwrap();
        for p in &parts {
            let compact = arrow_select::concat::concat_batches(&schema, [p]).unwrap();
            spill.append(&compact).unwrap();
        }
        spill.append(&parts[2]).unwrap(); // a slice as it is (offsets into bigger buffers)
        let mut back = Vec::new();
        spill.replay(&schema, |b| {
            back.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(back.len(), 4);
        for (got, want) in back.iter().zip(parts.iter().chain([&parts[2]])) {
            assert_eq!(got, want);
        }
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "the spill file is deleted after its replay");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
