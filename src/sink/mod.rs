//! Sinks: partitioned Parquet files under `OUT/<dataset>/`.
//!
//! Files are written to a local spool folder (`….parquet.tmp` while open, renamed to `part-<run id>-<n>.parquet`
//! when complete and synced). The export moves finished files into the output's staging area at each checkpoint
//! and publishes them into the dataset only after the whole run succeeded ([`output`], `export.rs`).
//!
//! Memory: rows are buffered per partition as Arrow batches (compact, exactly measurable). A partition's buffer
//! becomes a row group when it reaches `row_group_rows`, or — when all buffers together pass `memory_budget` —
//! the largest buffer is written out early. Only a few Parquet writers are open at once (each holds encoder
//! state for every column, which is what made "one open writer per partition" grow with the data), so memory is
//! bounded by the budget, whatever the number of leads or partitions. The price of a small budget is more,
//! smaller files per partition.

pub mod manifest;
pub mod merge;
pub mod output;
pub mod partition;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
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
    /// A file is closed and a new one started after this many rows.
    pub max_rows_per_file: u64,
    /// Arrow bytes buffered in all partitions together before the largest buffer is written out.
    pub memory_budget: usize,
    /// Parquet files open at once; the least recently used is closed (finished) beyond that.
    pub max_open_files: usize,
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
            memory_budget: 64 << 20,
            max_open_files: 256,
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

struct OpenFile {
    tmp: PathBuf,
    done: PathBuf,
    rel: String,
    writer: ArrowWriter<File>,
    rows: u64,
    last_used: u64,
}

pub struct DatasetWriter {
    cfg: SinkConfig,
    props: WriterProperties,
    file_schema: SchemaRef,
    /// Indices of the batch columns that go into files (all but a moved partition column).
    keep: Vec<usize>,
    open: HashMap<String, OpenFile>,
    /// Rows waiting per partition directory: (batches, rows, Arrow bytes).
    buffered: HashMap<String, (Vec<RecordBatch>, usize, usize)>,
    buffered_bytes: usize,
    seq: u64,
    tick: u64,
    files: Vec<FileInfo>,
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
        let props = writer_properties_with(
            &cfg.run_id,
            file_schema.field_with_name("id").is_ok(),
            cfg.row_group_rows,
            metadata_kv(schema.metadata()),
        );
        std::fs::create_dir_all(&cfg.spool).map_err(io_err(&cfg.spool))?;
        let seq = cfg.first_seq;
        Ok(DatasetWriter {
            cfg,
            props,
            file_schema,
            keep,
            open: HashMap::new(),
            buffered: HashMap::new(),
            buffered_bytes: 0,
            seq,
            tick: 0,
            files: Vec::new(),
        })
    }

    /// Writes a batch (with the full schema given to [`DatasetWriter::new`]).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.cfg.partition.row_dirs(batch)? {
            None => {
                let b = batch.project(&self.keep)?;
                self.buffer(String::new(), b)?;
            }
            Some(dirs) => {
                let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
                let mut index: HashMap<&str, usize> = HashMap::new();
                for (row, d) in dirs.iter().enumerate() {
                    let g = *index.entry(d.as_str()).or_insert_with(|| {
                        groups.push((d.clone(), Vec::new()));
                        groups.len() - 1
                    });
                    groups[g].1.push(row as u32);
                }
                for (dir, rows) in groups {
                    let part = if rows.len() == batch.num_rows() {
                        batch.clone()
                    } else {
                        arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))?
                    };
                    let b = part.project(&self.keep)?;
                    self.buffer(dir, b)?;
                }
            }
        }
        self.enforce_budget()
    }

    fn buffer(&mut self, dir: String, batch: RecordBatch) -> Result<()> {
        let bytes = batch.get_array_memory_size();
        let entry = self.buffered.entry(dir.clone()).or_default();
        entry.1 += batch.num_rows();
        entry.2 += bytes;
        entry.0.push(batch);
        self.buffered_bytes += bytes;
        if entry.1 >= self.cfg.row_group_rows {
            self.spill(&dir)?;
        }
        Ok(())
    }

    /// Writes a partition's buffered rows as one row group.
    fn spill(&mut self, dir: &str) -> Result<()> {
        let Some((batches, _, bytes)) = self.buffered.remove(dir) else { return Ok(()) };
        self.buffered_bytes -= bytes;
        for b in &batches {
            self.write_to(dir.to_string(), b)?;
        }
        if let Some(f) = self.open.get_mut(dir) {
            f.writer.flush().map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
        }
        Ok(())
    }

    fn write_to(&mut self, dir: String, batch: &RecordBatch) -> Result<()> {
        self.tick += 1;
        if !self.open.contains_key(&dir) {
            if self.open.len() >= self.cfg.max_open_files {
                let lru = self.open.iter().min_by_key(|(_, f)| f.last_used).map(|(k, _)| k.clone()).expect("non-empty");
                self.close(&lru)?;
            }
            let f = self.create(&dir)?;
            self.open.insert(dir.clone(), f);
        }
        let f = self.open.get_mut(&dir).expect("open");
        f.last_used = self.tick;
        f.writer.write(batch).map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
        f.rows += batch.num_rows() as u64;
        if f.rows >= self.cfg.max_rows_per_file {
            self.close(&dir)?;
        }
        Ok(())
    }

    fn create(&mut self, dir: &str) -> Result<OpenFile> {
        self.seq += 1;
        let name = format!("part-{}-{:05}.parquet", self.cfg.run_id, self.seq);
        let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
        let tmp = self.cfg.spool.join(format!("{rel}.tmp"));
        let done = self.cfg.spool.join(&rel);
        if let Some(folder) = tmp.parent() {
            std::fs::create_dir_all(folder).map_err(io_err(folder))?;
        }
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let writer = ArrowWriter::try_new(file, self.file_schema.clone(), Some(self.props.clone()))
            .map_err(|e| Error::Parquet { path: tmp.clone(), source: e })?;
        Ok(OpenFile { tmp, done, rel, writer, rows: 0, last_used: self.tick })
    }

    /// Writes out the largest buffers until all buffers together fit the budget.
    fn enforce_budget(&mut self) -> Result<()> {
        while self.buffered_bytes > self.cfg.memory_budget {
            let Some(dir) = self.buffered.iter().max_by_key(|(_, b)| b.2).map(|(k, _)| k.clone()) else { break };
            self.spill(&dir)?;
        }
        Ok(())
    }

    fn close(&mut self, dir: &str) -> Result<()> {
        let Some(f) = self.open.remove(dir) else { return Ok(()) };
        let file = f.writer.into_inner().map_err(|e| Error::Parquet { path: f.tmp.clone(), source: e })?;
        file.sync_all().map_err(io_err(&f.tmp))?;
        let bytes = file.metadata().map_err(io_err(&f.tmp))?.len();
        drop(file);
        std::fs::rename(&f.tmp, &f.done).map_err(io_err(&f.done))?;
        self.files.push(FileInfo { path: f.rel, rows: f.rows, bytes });
        Ok(())
    }

    /// The sequence number the next file would get.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Writes every buffered row and closes every file: afterwards, all rows given so far are in the finished
    /// files returned (those finished since the last call). Writing may go on; new files are started.
    pub fn flush_files(&mut self) -> Result<Vec<FileInfo>> {
        let mut pending: Vec<String> = self.buffered.keys().cloned().collect();
        pending.sort();
        for d in pending {
            self.spill(&d)?;
            self.close(&d)?; // this partition is complete: don't keep its writer around
        }
        let dirs: Vec<String> = self.open.keys().cloned().collect();
        for d in dirs {
            self.close(&d)?;
        }
        Ok(std::mem::take(&mut self.files))
    }

    /// Closes every file and returns the files finished since the last [`DatasetWriter::flush_files`].
    pub fn finish(mut self) -> Result<Vec<FileInfo>> {
        self.flush_files()
    }

    /// Drops unfinished files (after a failed run); the caller removes the staging folder.
    pub fn abort(mut self) {
        for (_, f) in self.open.drain() {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
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
}
