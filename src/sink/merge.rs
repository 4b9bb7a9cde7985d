//! Incremental loads: what the committed snapshot holds (an index of ID → file and DATE_MODIFY, read from the `id`
//! and `date_modify` columns only), and copies of files without the rows an incremental run replaces or deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};

use crate::error::{Error, Result};
use crate::sink::manifest::ManifestFile;
use crate::sink::output::Output;
use crate::sink::{writer_properties, FileInfo};

/// Where each lead of a snapshot is, and its DATE_MODIFY (µs since the epoch).
#[derive(Debug, Default)]
pub struct Index {
    pub rows: HashMap<i64, (u32, Option<i64>)>,
    /// Leads kept with a `deleted_at` (`--keep-deleted`): already gone from the portal.
    pub deleted: HashSet<i64>,
}

/// The column `--keep-deleted` adds to rows of leads the portal no longer has.
pub const DELETED_AT: &str = "deleted_at";

async fn read_file(out: &Output, dataset: &str, f: &ManifestFile) -> Result<Bytes> {
    let key = format!("{dataset}/{}", f.path);
    let bytes = out.get(&key).await?.ok_or_else(|| {
        Error::Usage(format!(
            "{} is listed by the latest manifest but missing; run a full snapshot (--overwrite without --incremental)",
            out.display(&key)
        ))
    })?;
    Ok(Bytes::from(bytes))
}

fn parquet_err(what: &str, e: parquet::errors::ParquetError) -> Error {
    Error::Parquet { path: what.into(), source: e }
}

/// The parts of a Parquet file that were fetched (its footer and some column chunks), readable as a file by the
/// Parquet reader as long as it reads only those parts.
struct Sparse {
    len: u64,
    parts: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn part(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.parts
            .iter()
            .find(|(at, b)| *at <= start && start + length as u64 <= at + b.len() as u64)
            .map(|(at, b)| b.slice((start - at) as usize..(start - at) as usize + length))
            .ok_or_else(|| parquet::errors::ParquetError::General(format!("bytes {start}+{length} were not fetched")))
    }
}

impl parquet::file::reader::Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (at, b) = self
            .parts
            .iter()
            .find(|(at, b)| *at <= start && start < at + b.len() as u64)
            .ok_or_else(|| parquet::errors::ParquetError::General(format!("byte {start} was not fetched")))?;
        Ok(bytes::Buf::reader(b.slice((start - at) as usize..)))
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.part(start, length)
    }
}

/// The footer and the column chunks of `columns` of a snapshot file: what the index needs, a fraction of the file
/// (on S3, a HEAD and two or three ranged reads instead of a download of the whole file).
async fn read_columns(out: &Output, dataset: &str, f: &ManifestFile, columns: &[&str]) -> Result<Sparse> {
    let key = format!("{dataset}/{}", f.path);
    let missing = || {
        Error::Usage(format!(
            "{} is listed by the latest manifest but missing or shorter than listed; run a full snapshot (--overwrite without --incremental)",
            out.display(&key)
        ))
    };
    let len = f.bytes;
    if len < 12 || out.get_size(&key).await? != Some(len) {
        return Err(missing());
    }
    // the footer: metadata length + "PAR1" in the last 8 bytes, the metadata before them
    let tail_len = len.min(64 << 10);
    let tail = out.get_ranges(&key, std::slice::from_ref(&(len - tail_len..len))).await?.remove(0);
    let meta_len = u32::from_le_bytes(tail[tail.len() - 8..tail.len() - 4].try_into().expect("4 bytes")) as u64 + 8;
    let footer = if meta_len <= tail_len {
        tail
    } else if meta_len <= len {
        out.get_ranges(&key, std::slice::from_ref(&(len - meta_len..len))).await?.remove(0)
    } else {
        return Err(parquet_err(&f.path, parquet::errors::ParquetError::General("bad footer length".into())));
    };
    let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer[footer.len() - meta_len as usize..footer.len() - 8])
        .map_err(|e| parquet_err(&f.path, e))?;
    let ranges: Vec<std::ops::Range<u64>> = meta
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .filter(|c| columns.contains(&c.column_path().string().as_str()))
        .map(|c| {
            let (start, n) = c.byte_range();
            start..start + n
        })
        .collect();
    let mut parts: Vec<(u64, Bytes)> = ranges.iter().map(|r| r.start).zip(out.get_ranges(&key, &ranges).await?).collect();
    parts.push((len - footer.len() as u64, footer));
    Ok(Sparse { len, parts })
}

/// Reads the `id` and `date_modify` columns of every file of a snapshot (and `deleted_at` where there is one) —
/// only those column chunks are read.
pub async fn read_index(out: &Output, dataset: &str, files: &[ManifestFile]) -> Result<Index> {
    let mut index = Index::default();
    let (mut fetched, mut total) = (0u64, 0u64);
    for (n, f) in files.iter().enumerate() {
        let sparse = read_columns(out, dataset, f, &["id", "date_modify", DELETED_AT]).await?;
        fetched += sparse.parts.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        total += f.bytes;
        let b = ParquetRecordBatchReaderBuilder::try_new(sparse).map_err(|e| parquet_err(&f.path, e))?;
        let wanted = ProjectionMask::columns(b.parquet_schema(), ["id", "date_modify", DELETED_AT]);
        let reader = b.with_projection(wanted).build().map_err(|e| parquet_err(&f.path, e))?;
        for batch in reader {
            let batch = batch?;
            let ids = batch
                .column_by_name("id")
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| Error::Usage(format!("{}: no id column; incremental loads need ID in --select", f.path)))?;
            let modified = batch.column_by_name("date_modify").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
            if let Some(gone) = batch.column_by_name(DELETED_AT) {
                for i in 0..batch.num_rows() {
                    if gone.is_valid(i) {
                        index.deleted.insert(ids.value(i));
                    }
                }
            }
            for i in 0..batch.num_rows() {
                let m = modified.and_then(|m| m.is_valid(i).then(|| m.value(i)));
                if index.rows.insert(ids.value(i), (n as u32, m)).is_some() {
                    return Err(Error::Internal(format!("lead {} appears twice in the committed snapshot", ids.value(i))));
                }
            }
        }
    }
    tracing::debug!("snapshot index: read {fetched} of {total} bytes of {} files", files.len());
    Ok(index)
}

/// Writes a copy of `f` without the rows whose ID is in `drop` into `spool/<same folder>/<name>`; rows whose ID is
/// in `mark` are kept with `deleted_at` set to `at` (µs; the column is added when the file lacks it). `None` when
/// no row is left. Row groups are rebuilt.
#[allow(clippy::too_many_arguments)]
pub async fn rewrite_without(
    out: &Output,
    dataset: &str,
    f: &ManifestFile,
    drop: &HashSet<i64>,
    mark: &HashSet<i64>,
    at: i64,
    spool: &std::path::Path,
    name: &str,
    run_id: &str,
) -> Result<Option<FileInfo>> {
    let bytes = read_file(out, dataset, f).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| parquet_err(&f.path, e))?;
    let source_schema = reader.schema().clone();
    let add_column = !mark.is_empty() && source_schema.field_with_name(DELETED_AT).is_err();
    let mut fields: Vec<arrow_schema::FieldRef> = source_schema.fields().iter().cloned().collect();
    if add_column {
        fields.push(Arc::new(arrow_schema::Field::new(
            DELETED_AT,
            arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )));
    }
    let schema = Arc::new(arrow_schema::Schema::new(fields));
    let reader = reader.build().map_err(|e| parquet_err(&f.path, e))?;
    let rel = match f.path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_string(),
    };
    let local = spool.join(&rel);
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file = std::fs::File::create(&local).map_err(|e| Error::io(&local, e))?;
    let props = writer_properties(run_id, schema.field_with_name("id").is_ok(), crate::sink::metadata_kv(source_schema.metadata()));
    let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(|e| parquet_err(&rel, e))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch: RecordBatch = batch?;
        let ids = batch.column_by_name("id").and_then(|c| c.as_primitive_opt::<Int64Type>()).expect("indexed before");
        let keep: BooleanArray = ids.iter().map(|id| Some(!id.is_some_and(|id| drop.contains(&id)))).collect();
        let mut kept = arrow_select::filter::filter_record_batch(&batch, &keep)?;
        if !mark.is_empty() {
            kept = mark_deleted(&kept, &schema, mark, at)?;
        }
        rows += kept.num_rows() as u64;
        if kept.num_rows() > 0 {
            w.write(&kept).map_err(|e| parquet_err(&rel, e))?;
        }
    }
    let file = w.into_inner().map_err(|e| parquet_err(&rel, e))?;
    file.sync_all().map_err(|e| Error::io(&local, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(&local, e))?.len();
    if rows == 0 {
        let _ = std::fs::remove_file(&local);
        return Ok(None);
    }
    Ok(Some(FileInfo { path: rel, local, rows, bytes }))
}

/// Sets `deleted_at` of the rows whose ID is in `mark` (adding the column if the batch lacks it).
fn mark_deleted(batch: &RecordBatch, schema: &arrow_schema::SchemaRef, mark: &HashSet<i64>, at: i64) -> Result<RecordBatch> {
    let ids = batch.column_by_name("id").and_then(|c| c.as_primitive_opt::<Int64Type>()).expect("indexed before");
    let old = batch.column_by_name(DELETED_AT).and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned());
    let values: arrow_array::TimestampMicrosecondArray = (0..batch.num_rows())
        .map(|i| {
            let before = old.as_ref().and_then(|o| o.is_valid(i).then(|| o.value(i)));
            before.or_else(|| mark.contains(&ids.value(i)).then_some(at))
        })
        .collect::<arrow_array::TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let mut columns: Vec<arrow_array::ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if field.name() == DELETED_AT {
            columns.push(Arc::new(values.clone()));
        } else {
            columns.push(batch.column_by_name(field.name()).expect("same columns").clone());
        }
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
