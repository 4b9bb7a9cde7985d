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
//! Each page (up to 50 list calls) is one zstd frame that records its size, so `convert` hands whole frames to
//! its converter threads, which decompress them in parallel. Files of earlier versions (one stream without
//! sizes) are still read: their lines are decompressed on the reading thread.
//! The folder is written when the run succeeds (its files are moved there last, `run.json` at the very end), so
//! a `run.json` marks a complete raw run.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
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

/// A page frame larger than this (uncompressed) is read on the reading thread, line by line.
const FRAME_MAX: u64 = 64 << 20;

/// Writes page bodies to local zstd JSON-lines files (in the run's spool folder) while a run fetches: one zstd
/// frame per page.
pub struct RawRecorder {
    dir: PathBuf,
    current: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    written: u64,
    zstd: zstd::bulk::Compressor<'static>,
    /// The lines of the page being recorded.
    lines: Vec<u8>,
    pub files: Vec<PathBuf>,
    pub list_calls: u64,
}

impl RawRecorder {
    pub fn new(dir: PathBuf) -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(3).map_err(|e| Error::Internal(format!("zstd: {e}")))?;
        Ok(RawRecorder { dir, current: None, written: 0, zstd, lines: Vec::new(), files: Vec::new(), list_calls: 0 })
    }

    /// Records the list-call results of a page, one line each, as one zstd frame.
    pub fn record(&mut self, chunks: &[&str]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        if self.current.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            let path = self.dir.join(format!("part-{:05}.jsonl.zst", self.files.len() + 1));
            let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            self.current = Some((path, std::io::BufWriter::new(f)));
            self.written = 0;
        }
        self.lines.clear();
        for chunk in chunks {
            // file download URLs carry auth= tokens: never written, here either
            let masked = crate::convert::mask_auth_tokens(chunk);
            let text = masked.as_str();
            // one line per list call: a body that arrived pretty-printed is written compactly
            if text.contains('\n') {
                let v: Value = serde_json::from_str(text).map_err(|e| Error::Internal(format!("a fetched page did not parse again: {e}")))?;
                serde_json::to_writer(&mut self.lines, &v).map_err(|e| Error::Internal(e.to_string()))?;
            } else {
                self.lines.extend_from_slice(text.as_bytes());
            }
            self.lines.push(b'\n');
        }
        let (path, f) = self.current.as_mut().expect("open");
        let frame = self.zstd.compress(&self.lines).map_err(|e| Error::Internal(format!("zstd: {e}")))?;
        f.write_all(&frame).map_err(|e| Error::io(path.as_path(), e))?;
        self.written += self.lines.len() as u64;
        self.list_calls += chunks.len() as u64;
        if self.written >= PART_BYTES {
            self.close_part()?;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some((path, mut f)) = self.current.take() {
            f.flush().map_err(|e| Error::io(&path, e))?;
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
    // the pages files are not synced while written: staging them makes them durable before run.json names them
    let mut moves = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let rel = format!("pages/part-{:05}.jsonl.zst", n + 1);
        moves.push((f.clone(), format!("{folder}/{rel}")));
        run.pages.push(rel);
    }
    raw.put_files(&moves).await?;
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

/// Reads the pages of a raw run and sends them downstream: each zstd frame of a pages file as it is (the
/// converter that takes it decompresses it), or, for files of earlier versions, their lines in pages of up to 50.
/// Blocking (run it on its own thread); S3 files are downloaded to `scratch` one at a time.
pub fn read_pages(
    raw: Arc<Output>,
    rt: tokio::runtime::Handle,
    input: &RawInput,
    scratch: &Path,
    tx: tokio::sync::mpsc::Sender<Page>,
) -> Result<()> {
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
        let source: Arc<str> = raw.display(&key).into();
        let f = std::fs::File::open(&local).map_err(|e| Error::io(&local, e))?;
        if !send_frames(f, &source, &tx)? {
            return Ok(()); // the converter stopped; it reports why
        }
    }
    Ok(())
}

/// Sends the frames of one pages file; false when the converters are gone.
fn send_frames<R: Read>(mut f: R, source: &Arc<str>, tx: &tokio::sync::mpsc::Sender<Page>) -> Result<bool> {
    let bad = |what: String| Error::Usage(format!("{source}: {what}"));
    let (mut buf, mut pos, mut eof) = (Vec::<u8>::new(), 0usize, false);
    let mut offset = 0u64; // of buf[0] in the file
    loop {
        let rest = &buf[pos..];
        if !rest.is_empty() {
            // a frame header (≤ 18 bytes) says whether the frame records its size
            match zstd::zstd_safe::get_frame_content_size(rest) {
                Ok(Some(size)) if size <= FRAME_MAX => {
                    if let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(rest) {
                        let body = RawLines { bytes: rest[..n].to_vec(), zstd: Some(size as usize), source: source.clone() };
                        if !send_raw(tx, body) {
                            return Ok(false);
                        }
                        pos += n;
                        continue;
                    }
                }
                // no size (an earlier version's stream) or a huge frame: decompress it here, line by line
                Ok(_) if rest.len() >= 18 || eof => {
                    let rest = std::io::Cursor::new(rest.to_vec()).chain(f);
                    return send_lines(rest, source, tx);
                }
                Err(_) if rest.len() >= 18 || eof => {
                    return Err(bad(format!("no zstd frame starts at byte {} (not a pages file, or a damaged one)", offset + pos as u64)))
                }
                _ => {}
            }
        }
        if eof {
            return if pos < buf.len() { Err(bad("the file ends inside a zstd frame".into())) } else { Ok(true) };
        }
        buf.drain(..pos);
        offset += pos as u64;
        pos = 0;
        let have = buf.len();
        buf.resize(have + (4 << 20), 0);
        let n = loop {
            match f.read(&mut buf[have..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| bad(format!("cannot read it ({e})")))?,
            }
        };
        buf.truncate(have + n);
        eof = n == 0;
    }
}

/// Sends lines of the raw zone downstream as a page; false when the converters are gone.
fn send_raw(tx: &tokio::sync::mpsc::Sender<Page>, body: RawLines) -> bool {
    tx.blocking_send(Page { chunks: Vec::new(), lines: Some(body), rows: 0, covered: Vec::new() }).is_ok()
}

/// Decompresses a pages stream on this thread and sends its lines in pages of up to 50 list calls.
fn send_lines(input: impl Read, source: &Arc<str>, tx: &tokio::sync::mpsc::Sender<Page>) -> Result<bool> {
    // a read or zstd error here is bad input (exit 2), not an output that cannot be written
    let bad = |e: std::io::Error| Error::Usage(format!("{source}: cannot read it ({e})"));
    let dec = zstd::stream::read::Decoder::new(input).map_err(bad)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, dec);
    let mut lines = Vec::new();
    let mut count = 0;
    loop {
        let before = lines.len();
        let n = reader.read_until(b'\n', &mut lines).map_err(bad)?;
        if n > 0 && lines.len() > before + 1 {
            count += 1;
        }
        if (n == 0 && !lines.is_empty()) || count == PAGE {
            let body = RawLines { bytes: std::mem::take(&mut lines), zstd: None, source: source.clone() };
            if !send_raw(tx, body) {
                return Ok(false);
            }
            count = 0;
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Lines of a raw pages file (one list call's `result` array each), as read: a zstd frame or plain text.
pub struct RawLines {
    pub bytes: Vec<u8>,
    /// The uncompressed size of a zstd frame; None for plain lines.
    pub zstd: Option<usize>,
    /// The pages file, for errors.
    pub source: Arc<str>,
}

impl RawLines {
    /// The JSON text of each line, decompressed into `buf` when needed.
    pub fn texts<'a>(&'a self, zstd: &mut zstd::bulk::Decompressor<'static>, buf: &'a mut Vec<u8>) -> Result<Vec<&'a str>> {
        let bytes: &[u8] = match self.zstd {
            None => &self.bytes,
            Some(size) => {
                buf.clear();
                buf.reserve(size);
                zstd.decompress_to_buffer(&self.bytes, buf)
                    .map_err(|e| Error::Usage(format!("{}: a zstd frame does not decompress ({e})", self.source)))?;
                buf
            }
        };
        let text = simdutf8::compat::from_utf8(bytes)
            .map_err(|e| Error::Usage(format!("{}: a line is not UTF-8 ({e})", self.source)))?;
        Ok(text.split('\n').filter(|l| !l.is_empty()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` list-call results, each a distinct JSON array.
    fn calls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!(r#"[{{"ID":"{i}","TITLE":"lead \"{i}\"\n"}}]"#)).collect()
    }

    /// A reader that hands out at most 7 bytes at a time: frames arrive cut at every possible place.
    struct Trickle(std::fs::File);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }

    /// Reads one pages file the way `convert` does: the pages sent, and each page's lines.
    fn read_back(path: &Path) -> Result<Vec<(Option<usize>, Vec<String>)>> {
        read_back_with(path, false)
    }

    fn read_back_with(path: &Path, trickle: bool) -> Result<Vec<(Option<usize>, Vec<String>)>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let source: Arc<str> = path.display().to_string().into();
        let f = std::fs::File::open(path).unwrap();
        assert!(if trickle { send_frames(Trickle(f), &source, &tx)? } else { send_frames(f, &source, &tx)? });
        drop(tx);
        let (mut zstd, mut buf) = (zstd::bulk::Decompressor::new().unwrap(), Vec::new());
        let mut pages = Vec::new();
        while let Some(page) = rx.blocking_recv() {
            let lines = page.lines.expect("raw lines");
            let texts = lines.texts(&mut zstd, &mut buf)?.into_iter().map(String::from).collect();
            pages.push((lines.zstd, texts));
        }
        Ok(pages)
    }

    #[test]
    fn recorded_pages_come_back_as_one_frame_each_with_every_line() {
        let dir = std::env::temp_dir().join(format!("b24-raw-frames-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rec = RawRecorder::new(dir.clone()).unwrap();
        let all = calls(101);
        for page in all.chunks(50) {
            let texts: Vec<&str> = page.iter().map(String::as_str).collect();
            rec.record(&texts).unwrap();
        }
        rec.record(&[]).unwrap();
        let (files, list_calls) = rec.finish().unwrap();
        assert_eq!((files.len(), list_calls), (1, 101));
        let pages = read_back(&files[0]).unwrap();
        assert_eq!(pages.iter().map(|(_, l)| l.len()).collect::<Vec<_>>(), vec![50, 50, 1]);
        assert!(pages.iter().all(|(z, _)| z.is_some()), "every page is a frame that records its size");
        assert_eq!(pages.clone().into_iter().flat_map(|(_, l)| l).collect::<Vec<_>>(), all);
        // frames cut across reads anywhere come back the same
        assert_eq!(read_back_with(&files[0], true).unwrap(), pages);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_earlier_versions_one_stream_without_sizes_are_read_line_by_line() {
        let path = std::env::temp_dir().join(format!("b24-raw-stream-{}.jsonl.zst", std::process::id()));
        let all = calls(120);
        let mut enc = zstd::stream::write::Encoder::new(std::fs::File::create(&path).unwrap(), 3).unwrap();
        for line in &all {
            enc.write_all(line.as_bytes()).unwrap();
            enc.write_all(b"\n\n").unwrap(); // empty lines are skipped
        }
        enc.finish().unwrap();
        let pages = read_back(&path).unwrap();
        assert_eq!(pages.iter().map(|(z, l)| (*z, l.len())).collect::<Vec<_>>(), vec![(None, 50), (None, 50), (None, 20)]);
        assert_eq!(pages.into_iter().flat_map(|(_, l)| l).collect::<Vec<_>>(), all);
        // such a stream cut short: bad input (exit 2) naming the file
        let stream = std::fs::read(&path).unwrap();
        std::fs::write(&path, &stream[..stream.len() / 2]).unwrap();
        let e = read_back(&path).unwrap_err();
        assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("cannot read it"), "{e}");

        // a file cut inside its frame, and a file that is not zstd, are errors that name the file
        let dir = std::env::temp_dir().join(format!("b24-raw-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rec = RawRecorder::new(dir.clone()).unwrap();
        rec.record(&all.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let (files, _) = rec.finish().unwrap();
        let bytes = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &bytes[..bytes.len() - 10]).unwrap();
        let e = read_back(&files[0]).unwrap_err().to_string();
        assert!(e.contains("ends inside a zstd frame") && e.contains(&files[0].display().to_string()), "{e}");
        std::fs::write(&path, "[{\"ID\":\"1\"}]\n".repeat(10)).unwrap();
        let e = read_back(&path).unwrap_err().to_string();
        assert!(e.contains("no zstd frame starts at byte 0") && e.contains(&path.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
