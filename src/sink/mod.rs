//! Sinks: partitioned Parquet files under `OUT/<dataset>/`.
//!
//! Files are written to a local spool folder (`….parquet.tmp` while open, renamed to `part-<run id>-<n>.parquet`
//! when complete and synced). The export moves finished files into the output's staging area at each checkpoint
//! and publishes them into the dataset only after the whole run succeeded ([`output`], `export.rs`).
//!
//! Work is split in two: the caller's thread routes rows to their partitions and buffers them as Arrow batches
//! (compact, exactly measurable); a small pool of encoder threads (one per core) encodes and compresses them into
//! Parquet. Every partition belongs to one encoder, which owns that partition's open file, so the files of
//! several partitions are encoded in parallel while each file is written in order by one thread.
//!
//! A partition's buffer becomes one row group when it reaches `row_group_rows`, or when all buffers together
//! (with those being encoded) pass `memory_budget`: then the buffers that wait longest and are largest go
//! first, so with data that arrives roughly in partition order (months of DATE_CREATE follow the IDs) a finished
//! partition becomes a single row group, while the partitions still being filled keep growing. Row groups are
//! flushed to the file as soon as they are encoded, so an encoder holds one row group at a time; queues to the
//! encoders are bounded, and the caller waits when the budget is spent on rows being encoded. Only a few
//! Parquet files are open at once (`max_open_files`, the least recently used is finished first).
//!
//! Encodings: zstd, a dictionary only for the columns where it pays (chosen once per run from the first rows
//! written: a column whose values are mostly distinct — IDs, timestamps, titles, phone numbers — is stored
//! plain, which zstd compresses better than dictionary indices), statistics per column chunk, a bloom filter on
//! `id`.

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
            memory_budget: std::env::var("X_BUDGET").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(96) << 20,
            max_open_files: 256,
            encoders: std::env::var("X_ENC").ok().and_then(|v| v.parse().ok()).unwrap_or(std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)),
        }
    }
}

/// A finished data file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Relative to the dataset root (and to the spool folder), with `/` separators.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A partition as the routing thread sees it.
#[derive(Default)]
struct Part {
    /// Rows waiting: slices of routed batches (with the batch's number), and their rows.
    slices: Vec<(RecordBatch, u64)>,
    rows: usize,
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
        let ctx = EncoderCtx { spool: cfg.spool.clone(), run_id: cfg.run_id.clone(), schema: file_schema };
        let (done_tx, done_rx) = mpsc::channel();
        let mut encoders = Vec::new();
        for n in 0..cfg.encoders.max(1) {
            // two jobs queued per encoder: enough to keep it busy, and a bound on the rows in flight
            let (tx, rx) = mpsc::sync_channel::<Job>(2);
            let (ctx, done_tx) = (ctx.clone(), done_tx.clone());
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
            arrow_select::take::take_record_batch(&batch.project(&self.keep)?, &UInt32Array::from(order))?
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
            if part.rows >= self.cfg.row_group_rows {
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
        if self.props.is_none() && self.parts.get(dir).is_some_and(|p| p.rows > 0) {
            // the first row group: choose the dictionary columns from the rows waiting now
            let sample: Vec<&RecordBatch> = self.parts.values().flat_map(|p| p.slices.iter().map(|(b, _)| b)).collect();
            self.props = Some(Arc::new(choose_dictionaries(self.base_props.clone(), &sample)));
        }
        let tick = self.tick;
        let part = self.parts.get_mut(dir).expect("known partition");
        let slices = std::mem::take(&mut part.slices);
        let rows = std::mem::take(&mut part.rows);
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
            let props = self.props.clone().expect("chosen");
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
                self.dispatch(&d, false)?;
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
        let mut dirs: Vec<String> = self.parts.iter().filter(|(_, p)| p.rows > 0 || p.open.is_some()).map(|(d, _)| d.clone()).collect();
        dirs.sort();
        for d in dirs {
            self.dispatch(&d, true)?;
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
    for job in jobs {
        let encoded: Vec<u64> = match &job {
            Job::Write { slices, .. } => slices.iter().map(|(_, id)| *id).collect(),
            Job::Close { .. } => Vec::new(),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(&ctx, &mut open, job)))
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
}

fn run_job(ctx: &EncoderCtx, open: &mut HashMap<String, OpenFile>, job: Job) -> Result<Option<FileInfo>> {
    match job {
        Job::Write { dir, seq, slices, close, props } => {
            if !open.contains_key(&dir) {
                let f = create(ctx, &dir, seq, &props)?;
                open.insert(dir.clone(), f);
            }
            let f = open.get_mut(&dir).expect("open");
            for (b, _) in &slices {
                f.writer.write(b).map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
                f.rows += b.num_rows() as u64;
            }
            drop(slices);
            // one row group per job: the encoded pages leave memory now
            if std::env::var("X_INPROG").is_ok() { if std::env::var("X_MEM").is_ok() { eprintln!("mem {} {}", dir, f.writer.memory_size()); } if !close { return Ok(None) } }
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
    if let Some(folder) = tmp.parent() {
        std::fs::create_dir_all(folder).map_err(io_err(folder))?;
    }
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let writer = ArrowWriter::try_new(file, ctx.schema.clone(), Some(props.clone()))
        .map_err(|e| Error::Parquet { path: tmp.clone(), source: e })?;
    Ok(OpenFile { tmp, done, rel, writer, rows: 0 })
}

fn finish_file(f: OpenFile) -> Result<FileInfo> {
    let file = f.writer.into_inner().map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
    file.sync_all().map_err(io_err(&f.tmp))?;
    let bytes = file.metadata().map_err(io_err(&f.tmp))?.len();
    drop(file);
    std::fs::rename(&f.tmp, &f.done).map_err(io_err(&f.done))?;
    Ok(FileInfo { path: f.rel, rows: f.rows, bytes })
}

/// Leaf columns of a sample with mostly distinct values (at least half of their non-null values) get no
/// dictionary: there a dictionary page repeats the values and the indices cost more than zstd saves.
fn choose_dictionaries(props: WriterProperties, sample: &[&RecordBatch]) -> WriterProperties {
    let Some(first) = sample.first() else { return props };
    if std::env::var("X_NOCHOOSE").is_ok() { return props; }
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

/// Values looked at per column at most.
const SAMPLE_VALUES: usize = 20_000;
fn ratio() -> f64 { std::env::var("X_RATIO").ok().and_then(|v| v.parse().ok()).unwrap_or(0.5) }

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
            let mut seen: HashSet<&[u8]> = HashSet::new();
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
            if values > 0 && seen.len() as f64 >= values as f64 * ratio() {
                out.push(path.clone());
            }
        }
        t if t.primitive_width().is_some() => {
            let width = t.primitive_width().expect("fixed width");
            let data: Vec<_> = arrays.iter().map(|a| a.to_data()).collect();
            let mut seen: HashSet<&[u8]> = HashSet::new();
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
            if values > 0 && seen.len() as f64 >= values as f64 * ratio() {
                out.push(path.clone());
            }
        }
        _ => {}
    }
}

/// The properties of every data file: ZSTD(3), page statistics, row groups of at most 131,072 rows, a bloom
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
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("b24-export {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    if std::env::var("X_NODICT").is_ok() { props = props.set_dictionary_enabled(false); }
    if std::env::var("X_CHUNK").is_ok() { props = props.set_statistics_enabled(EnabledStatistics::Chunk); }
    if let Ok(v) = std::env::var("X_PAGEROWS") { props = props.set_data_page_row_count_limit(v.parse().unwrap()); }
    if let Ok(v) = std::env::var("X_PAGE") { props = props.set_data_page_size_limit(v.parse().unwrap()); }
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

    fn read_ids(root: &Path, infos: &[FileInfo]) -> (Vec<i64>, Vec<PathBuf>) {
        let files: Vec<PathBuf> = infos.iter().map(|f| root.join(&f.path)).collect();
        let mut ids = Vec::new();
        for f in &files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f).unwrap()).unwrap().build().unwrap();
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
        let mut cfg = SinkConfig::new(spool.clone(), "run1".into(), PartitionSpec::Status);
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
}
