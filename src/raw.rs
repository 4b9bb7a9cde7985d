//! The raw landing zone: every page body exactly as the portal sent it, kept beside the typed dataset so that
//! it can be rebuilt without the portal (`b24-export convert`) — after a mapping change, or to re-partition.
//!
//! Layout under `--raw-out RAW` (a directory or `s3://…`), one folder per run:
//! ```text
//! RAW/<run id>/run.json                    what was asked (select, filter), the portal, when, how many pages
//! RAW/<run id>/fields.json                 the crm.lead.fields result the run was typed with
//! RAW/<run id>/statuses.json               the status dictionaries (for _dict/statuses)
//! RAW/<run id>/users.json                  the portal's users (for _dict/users), when they could be read
//! RAW/<run id>/pages/part-00001.jsonl.zst  zstd JSON lines: one line per list call, the `result` array as sent
//! ```
//! The folder is written when the run succeeds (its files are moved there last, `run.json` at the very end), so
//! a `run.json` marks a complete raw run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::dict::Status;
use crate::error::{Error, Result};
use crate::plan::{Page, PAGE};
use crate::sink::output::Output;

/// Uncompressed bytes per pages file before the next one is started.
const PART_BYTES: u64 = 256 << 20;

/// `RAW/<run id>/run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawRun {
    pub format: u32,
    pub run_id: String,
    pub started_at: String,
    pub source: String,
    pub entity: String,
    pub select: Option<Vec<String>>,
    pub filter: Value,
    /// Pages files, relative to the run folder, in the order they were written.
    pub pages: Vec<String>,
    pub list_calls: u64,
    pub tool_version: String,
    /// Only the leads changed since a watermark (`--incremental`): not a whole snapshot.
    #[serde(default)]
    pub incremental: bool,
    /// A resumed run: only the pages fetched after the resume.
    #[serde(default)]
    pub resumed: bool,
}

/// Writes page bodies to local zstd JSON-lines files (in the run's spool folder) while a run fetches.
pub struct RawRecorder {
    dir: PathBuf,
    current: Option<(PathBuf, zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>)>,
    written: u64,
    pub files: Vec<PathBuf>,
    pub list_calls: u64,
}

impl RawRecorder {
    pub fn new(dir: PathBuf) -> Self {
        RawRecorder { dir, current: None, written: 0, files: Vec::new(), list_calls: 0 }
    }

    /// Records the list-call results of a page, one line each.
    pub fn record(&mut self, chunks: &[Box<RawValue>]) -> Result<()> {
        for chunk in chunks {
            if self.current.is_none() {
                std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
                let path = self.dir.join(format!("part-{:05}.jsonl.zst", self.files.len() + 1));
                let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
                let enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(f), 3).map_err(|e| Error::io(&path, e))?;
                self.current = Some((path, enc));
                self.written = 0;
            }
            let (path, enc) = self.current.as_mut().expect("open");
            // file download URLs carry auth= tokens: never written, here either
            let masked = crate::convert::mask_auth_tokens(chunk.get());
            let text = masked.as_str();
            // one line per list call: a body that arrived pretty-printed is written compactly
            let line: std::borrow::Cow<'_, str> = if text.contains('\n') {
                let v: Value = serde_json::from_str(text).map_err(|e| Error::Internal(format!("a fetched page did not parse again: {e}")))?;
                serde_json::to_string(&v).map_err(|e| Error::Internal(e.to_string()))?.into()
            } else {
                text.into()
            };
            enc.write_all(line.as_bytes()).and_then(|()| enc.write_all(b"\n")).map_err(|e| Error::io(path.as_path(), e))?;
            self.written += line.len() as u64 + 1;
            self.list_calls += 1;
            if self.written >= PART_BYTES {
                self.close_part()?;
            }
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some((path, enc)) = self.current.take() {
            let mut w = enc.finish().map_err(|e| Error::io(&path, e))?;
            w.flush().map_err(|e| Error::io(&path, e))?;
            self.files.push(path);
        }
        Ok(())
    }

    /// Closes the last file; returns the local files in order.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, u64)> {
        self.close_part()?;
        Ok((self.files, self.list_calls))
    }
}

/// Moves a finished run's raw files into `RAW/<run id>/`, `run.json` last.
pub async fn publish(
    raw: &Output,
    mut run: RawRun,
    files: &[PathBuf],
    fields: &Value,
    statuses: &[Status],
    users: Option<&[crate::dict::User]>,
) -> Result<String> {
    let folder = run.run_id.clone();
    for (n, f) in files.iter().enumerate() {
        let rel = format!("pages/part-{:05}.jsonl.zst", n + 1);
        raw.put_file(f, &format!("{folder}/{rel}")).await?;
        run.pages.push(rel);
    }
    raw.put_bytes(&format!("{folder}/fields.json"), to_json(fields)?).await?;
    raw.put_bytes(&format!("{folder}/statuses.json"), to_json(&statuses)?).await?;
    if let Some(users) = users {
        raw.put_bytes(&format!("{folder}/users.json"), to_json(&users)?).await?;
    }
    raw.put_bytes(&format!("{folder}/run.json"), to_json(&run)?).await?;
    Ok(raw.display(&folder))
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(e.to_string()))
}

/// A raw run to convert: its description, field metadata and status dictionaries, and where it is.
pub struct RawInput {
    pub run: RawRun,
    pub fields: Value,
    pub statuses: Vec<Status>,
    pub users: Option<Vec<crate::dict::User>>,
    /// The run folder, relative to the raw location's root ("" when RAW names the run folder itself).
    pub folder: String,
}

async fn read_json<T: serde::de::DeserializeOwned>(raw: &Output, key: &str) -> Result<T> {
    let bytes = raw
        .get(key)
        .await?
        .ok_or_else(|| Error::Usage(format!("{} is missing: not a complete raw run", raw.display(key))))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Usage(format!("{} is not readable: {e}", raw.display(key))))
}

/// Opens `RAW`: a run folder (it holds `run.json`), or a raw root whose latest complete full run is taken
/// (incremental and resumed runs hold only part of a snapshot and are not converted).
pub async fn open(raw: &Output, entity: Option<crate::entity::Entity>) -> Result<RawInput> {
    let partial = |r: &RawRun| r.incremental || r.resumed;
    let (folder, run) = if raw.get("run.json").await?.is_some() {
        let run: RawRun = read_json(raw, "run.json").await?;
        if let Some(e) = entity.filter(|e| e.dataset() != run.entity) {
            return Err(Error::Usage(format!("{} is a raw run of {}, not of {}", raw.display(""), run.entity, e.dataset())));
        }
        if partial(&run) {
            return Err(Error::Usage(format!(
                "{} is an {} run: it holds only part of a snapshot; convert a full run",
                raw.display(""),
                if run.incremental { "incremental" } else { "resumed" }
            )));
        }
        (String::new(), run)
    } else {
        let mut runs: Vec<String> = raw
            .list("")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_suffix("/run.json").filter(|r| !r.contains('/')).map(str::to_string))
            .collect();
        runs.sort();
        // the runs of several entities (`--entity all`) share a root: take the latest full run of the one asked for
        let dataset = entity.unwrap_or(crate::entity::Entity::Lead).dataset();
        let mut found = None;
        while let Some(folder) = runs.pop() {
            let run: RawRun = read_json(raw, &format!("{folder}/run.json")).await?;
            if !partial(&run) && run.entity == dataset {
                found = Some((folder, run));
                break;
            }
        }
        found.ok_or_else(|| {
            Error::Usage(format!("no complete full raw run of {dataset} (run.json) under {}; export with --raw-out first", raw.display("")))
        })?
    };
    let at = |name: &str| if folder.is_empty() { name.to_string() } else { format!("{folder}/{name}") };
    let fields: Value = read_json(raw, &at("fields.json")).await?;
    let statuses: Vec<Status> = read_json(raw, &at("statuses.json")).await?;
    let users = match raw.get(&at("users.json")).await? {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", raw.display(&at("users.json")))))?),
        None => None,
    };
    Ok(RawInput { run, fields, statuses, users, folder })
}

/// Reads the pages of a raw run and sends them downstream as pages of up to 50 list calls. Blocking (run it on
/// its own thread); S3 files are downloaded to `scratch` one at a time. Returns the number of list calls.
pub fn read_pages(
    raw: Arc<Output>,
    rt: tokio::runtime::Handle,
    input: &RawInput,
    scratch: &Path,
    tx: tokio::sync::mpsc::Sender<Page>,
) -> Result<u64> {
    let mut calls = 0u64;
    for rel in &input.run.pages {
        let key = if input.folder.is_empty() { rel.clone() } else { format!("{}/{rel}", input.folder) };
        let local = match &*raw {
            Output::Local { root } => root.join(&key),
            Output::S3 { .. } => {
                std::fs::create_dir_all(scratch).map_err(|e| Error::io(scratch, e))?;
                let p = scratch.join("page.jsonl.zst");
                let mut f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
                rt.block_on(raw.copy_to(&key, &mut f))?;
                p
            }
        };
        let f = std::fs::File::open(&local).map_err(|e| Error::io(&local, e))?;
        let dec = zstd::stream::read::Decoder::new(f).map_err(|e| Error::io(&local, e))?;
        let mut chunks: Vec<Box<RawValue>> = Vec::with_capacity(PAGE);
        for line in std::io::BufReader::with_capacity(1 << 20, dec).lines() {
            let line = line.map_err(|e| Error::io(&local, e))?;
            if line.is_empty() {
                continue;
            }
            let chunk = RawValue::from_string(line)
                .map_err(|e| Error::Usage(format!("{}: a line is not JSON ({e})", raw.display(&key))))?;
            chunks.push(chunk);
            calls += 1;
            if chunks.len() == PAGE {
                let page = Page { rows: PAGE * PAGE, chunks: std::mem::take(&mut chunks), covered: Vec::new() };
                if tx.blocking_send(page).is_err() {
                    return Ok(calls); // the converter stopped; it reports why
                }
            }
        }
        if !chunks.is_empty() {
            let rows = chunks.len() * PAGE;
            if tx.blocking_send(Page { rows, chunks, covered: Vec::new() }).is_err() {
                return Ok(calls);
            }
        }
    }
    Ok(calls)
}
