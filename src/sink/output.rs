//! Where a dataset lives: a local directory or an S3 (or S3-compatible) prefix, behind one set of operations
//! that the commit protocol needs: move a finished file in, put small objects (plain or create-only), read,
//! list, rename and delete. Keys are `/`-separated and relative to the output root
//! (`leads/date_create=2024-05/part-….parquet`), already escaped the hive way; they are used as given.
//!
//! Local files use `std::fs` directly (renames are atomic; files and folders are synced, one by one or, for the
//! many files of a checkpoint or a commit, with one `syncfs` of the filesystem). S3 goes through
//! object_store: a finished file is streamed from disk in parts (multipart upload, two parts in flight at
//! most, so memory stays at a few parts whatever the file size), and an upload that fails is aborted, so no
//! partial object ever exists.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::error::{Error, Result};

/// How to reach an S3-compatible store.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `--s3-endpoint`: an S3-compatible server (MinIO, Ceph, R2, a local test server).
    pub endpoint: Option<String>,
    /// `--s3-allow-http`: plain HTTP to a non-loopback endpoint.
    pub allow_http: bool,
    /// `--s3-region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`, else the profile's region, else `us-east-1`.
    pub region: Option<String>,
    /// Multipart part size in bytes (≥ 5 MiB on AWS).
    pub part_size: usize,
}

pub const DEFAULT_PART_SIZE: usize = 8 << 20;

/// The result of a create-only put.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Yes,
    AlreadyExists,
}

#[derive(Debug)]
pub enum Output {
    Local { root: PathBuf },
    S3 { store: Arc<AmazonS3>, bucket: String, prefix: String, part_size: usize },
}

fn store_err(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Store { what: what.into(), message: e.to_string() }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// AWS's own profile files (`~/.aws/credentials`, `~/.aws/config`): the key pair, session token and region of
/// `AWS_PROFILE` (or `default`), for what the environment does not set. No SSO or assume-role chains.
fn aws_profile() -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let files = [
        (std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).unwrap_or(home.join(".aws/credentials")), profile.clone()),
        (
            std::env::var_os("AWS_CONFIG_FILE").map(PathBuf::from).unwrap_or(home.join(".aws/config")),
            if profile == "default" { profile.clone() } else { format!("profile {profile}") },
        ),
    ];
    for (file, section) in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == section;
            } else if inside {
                if let Some((k, v)) = line.split_once('=') {
                    out.entry(k.trim().to_ascii_lowercase()).or_insert_with(|| v.trim().to_string());
                }
            }
        }
    }
    out
}

impl Output {
    /// `s3://bucket/prefix`, `file://dir` or a plain path. Nothing is contacted yet.
    pub fn parse(location: &str, s3: &S3Options) -> Result<Output> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Usage(format!("{location}: the S3 URL has no bucket; write s3://<bucket>/<prefix>")));
            }
            let prefix = prefix.trim_matches('/').to_string();
            if !prefix.is_empty() {
                ObjPath::parse(&prefix).map_err(|e| Error::Usage(format!("{location}: not a usable S3 prefix ({e})")))?;
            }
            return Self::s3(bucket, prefix, s3);
        }
        if let Some((scheme, _)) = location.split_once("://") {
            if scheme != "file" {
                return Err(Error::Usage(format!(
                    "{location}: {scheme}:// destinations are not supported; use a local path, file://… or s3://…"
                )));
            }
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() {
            return Err(Error::Usage("the output location is empty".into()));
        }
        Ok(Output::Local { root: PathBuf::from(path) })
    }

    fn s3(bucket: &str, prefix: String, o: &S3Options) -> Result<Output> {
        // object_store's HTTP client is our reqwest, built without a default TLS provider
        let _ = rustls::crypto::ring::default_provider().install_default();
        let profile = aws_profile();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if env("AWS_ACCESS_KEY_ID").is_none() {
            if let (Some(k), Some(s)) = (profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")) {
                crate::secret::register_secret(s);
                b = b.with_access_key_id(k).with_secret_access_key(s);
                if let Some(t) = profile.get("aws_session_token") {
                    crate::secret::register_secret(t);
                    b = b.with_token(t);
                }
            }
        }
        let region = o
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        let mut http = false;
        if let Some(ep) = o.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL_S3")).or_else(|| env("AWS_ENDPOINT_URL")) {
            let url = url::Url::parse(&ep).map_err(|e| Error::Usage(format!("--s3-endpoint {ep}: not a URL ({e})")))?;
            match url.scheme() {
                "https" => {}
                "http" => {
                    let host = url.host_str().unwrap_or_default();
                    if !is_loopback(host) && !o.allow_http {
                        return Err(Error::Usage(format!(
                            "--s3-endpoint {ep}: plain http:// to {host} would send data and signed requests unencrypted; use https://, or pass --s3-allow-http if the network is trusted"
                        )));
                    }
                    http = true;
                }
                other => return Err(Error::Usage(format!("--s3-endpoint {ep}: unsupported scheme {other}://"))),
            }
            // S3-compatible servers are addressed path-style (`endpoint/bucket/key`)
            b = b.with_endpoint(ep.trim_end_matches('/')).with_virtual_hosted_style_request(false);
        }
        // A store that is down should fail the run in seconds, not after object_store's default three minutes.
        b = b
            .with_retry(RetryConfig {
                backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5), base: 2.0 },
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(120)).with_connect_timeout(Duration::from_secs(10)))
            .with_allow_http(http); // after the client options, which would reset it
        let store = b.build().map_err(|e| Error::Usage(format!("s3://{bucket}: {e}")))?;
        let part_size = if o.part_size == 0 { DEFAULT_PART_SIZE } else { o.part_size };
        Ok(Output::S3 { store: Arc::new(store), bucket: bucket.into(), prefix, part_size })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Output::Local { .. })
    }

    /// The location of a key as a reader names it: a local path or an `s3://` URL.
    pub fn display(&self, key: &str) -> String {
        match self {
            Output::Local { root } => {
                if key.is_empty() {
                    root.display().to_string()
                } else {
                    root.join(key).display().to_string()
                }
            }
            Output::S3 { bucket, prefix, .. } => {
                let full = [prefix.as_str(), key].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/");
                format!("s3://{bucket}/{full}")
            }
        }
    }

    fn obj(&self, key: &str) -> Result<ObjPath> {
        let Output::S3 { prefix, .. } = self else { unreachable!("S3 only") };
        let full = if prefix.is_empty() { key.to_string() } else { format!("{prefix}/{key}") };
        ObjPath::parse(&full).map_err(|e| store_err(self.display(key), e))
    }

    /// Moves finished local files that were written without syncing to their keys, durably: on a local output
    /// they are renamed and then the whole filesystem is synced once (one journal commit, not two fsyncs per
    /// file — a partitioned run finishes dozens of files at once); on S3 each is uploaded.
    pub async fn put_files(&self, files: &[(PathBuf, String)]) -> Result<()> {
        match self {
            Output::Local { root } => {
                // the partition folders of a checkpoint (made by the encoders during the run) and the raw pages'
                // folder move whole when they are new to the staging area: no folder made here, at the end
                let moves: Vec<(PathBuf, PathBuf)> = files.iter().map(|(local, key)| (local.clone(), root.join(key))).collect();
                let moved = move_whole_folders(&moves)?;
                for (from, to) in &moves {
                    if from.parent().is_some_and(|p| moved.contains(p)) {
                        continue;
                    }
                    move_local(from, to, false)?;
                }
                if !files.is_empty() {
                    sync_filesystem(root, files.iter().map(|(_, key)| root.join(key)))?;
                }
                Ok(())
            }
            Output::S3 { .. } => {
                for (local, key) in files {
                    self.put_file(local, key).await?;
                }
                Ok(())
            }
        }
    }

    /// Moves a finished local file to `key` (a rename on the same disk, an upload to S3; the local file is
    /// removed). Returns the size in bytes.
    pub async fn put_file(&self, local: &Path, key: &str) -> Result<u64> {
        match self {
            Output::Local { root } => {
                let to = root.join(key);
                let bytes = std::fs::metadata(local).map_err(|e| Error::io(local, e))?.len();
                rename_local(local, &to)?;
                Ok(bytes)
            }
            Output::S3 { store, part_size, .. } => {
                let loc = self.obj(key)?;
                let size = std::fs::metadata(local).map_err(|e| Error::io(local, e))?.len();
                let mut file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
                if size as usize <= *part_size {
                    let mut buf = Vec::with_capacity(size as usize);
                    file.read_to_end(&mut buf).map_err(|e| Error::io(local, e))?;
                    store.put(&loc, PutPayload::from(buf)).await.map_err(|e| store_err(self.display(key), e))?;
                } else {
                    // parts straight from the file, two in flight; any failure, the completion's included, aborts
                    // the upload so that no parts are left behind
                    let mut upload = store.put_multipart(&loc).await.map_err(|e| store_err(self.display(key), e))?;
                    let mut parts = 0usize;
                    let sent: Result<()> = async {
                        // each part is its own task, so that two really are under way at once
                        let mut inflight: std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<()>>> =
                            Default::default();
                        let joined = |r: std::result::Result<object_store::Result<()>, tokio::task::JoinError>| match r {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(store_err(self.display(key), e)),
                            Err(e) => Err(store_err(self.display(key), e)),
                        };
                        loop {
                            let mut buf = vec![0u8; *part_size];
                            let n = read_full(&mut file, &mut buf).map_err(|e| Error::io(local, e))?;
                            if n == 0 {
                                break;
                            }
                            buf.truncate(n);
                            if inflight.len() >= 2 {
                                joined(inflight.pop_front().expect("two in flight").await)?;
                            }
                            inflight.push_back(tokio::spawn(upload.put_part(PutPayload::from(buf))));
                            parts += 1;
                        }
                        while let Some(part) = inflight.pop_front() {
                            joined(part.await)?;
                        }
                        upload.complete().await.map_err(|e| store_err(self.display(key), e))?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = sent {
                        let _ = upload.abort().await; // no half-uploaded object, no dangling parts
                        return Err(e);
                    }
                    tracing::debug!("uploaded {} ({size} bytes) in {parts} parts", self.display(key));
                }
                drop(file);
                let _ = std::fs::remove_file(local);
                Ok(size)
            }
        }
    }

    /// Writes a small object, replacing what was there; readers see the old or the new content, never a mix.
    pub async fn put_bytes(&self, key: &str, data: Vec<u8>) -> Result<()> {
        match self {
            Output::Local { root } => {
                let to = root.join(key);
                let tmp = tmp_beside(&to);
                write_synced(&tmp, &data)?;
                rename_local(&tmp, &to)
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                store.put(&loc, PutPayload::from(data)).await.map_err(|e| store_err(self.display(key), e))?;
                Ok(())
            }
        }
    }

    /// Writes a small object only if `key` does not exist yet: the commit point of a run.
    pub async fn put_create(&self, key: &str, data: Vec<u8>) -> Result<Created> {
        match self {
            Output::Local { root } => {
                let to = root.join(key);
                let tmp = tmp_beside(&to);
                write_synced(&tmp, &data)?;
                // a hard link fails if the name exists: create-only, and the content is complete when it appears
                let linked = std::fs::hard_link(&tmp, &to);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_parent(&to);
                        Ok(Created::Yes)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
                    Err(e) => Err(Error::io(&to, e)),
                }
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                match store.put_opts(&loc, PutPayload::from(data), opts).await {
                    Ok(_) => Ok(Created::Yes),
                    Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                        Ok(Created::AlreadyExists)
                    }
                    Err(e) => Err(store_err(self.display(key), e)),
                }
            }
        }
    }

    /// The content of `key`, or `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Output::Local { root } => {
                let p = root.join(key);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&p, e)),
                }
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                match store.get(&loc).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_err(self.display(key), e))?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_err(self.display(key), e)),
                }
            }
        }
    }

    /// Byte ranges of `key` (one ranged request each on S3, coalesced by object_store; reads at offsets on a disk).
    pub async fn get_ranges(&self, key: &str, ranges: &[std::ops::Range<u64>]) -> Result<Vec<bytes::Bytes>> {
        match self {
            Output::Local { root } => {
                use std::io::{Read, Seek, SeekFrom};
                let p = root.join(key);
                let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
                ranges
                    .iter()
                    .map(|r| {
                        let mut buf = vec![0u8; (r.end - r.start) as usize];
                        f.seek(SeekFrom::Start(r.start)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| Error::io(&p, e))?;
                        Ok(bytes::Bytes::from(buf))
                    })
                    .collect()
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                store.get_ranges(&loc, ranges).await.map_err(|e| store_err(self.display(key), e))
            }
        }
    }

    /// The size of `key`, or `None` if it does not exist.
    pub async fn get_size(&self, key: &str) -> Result<Option<u64>> {
        match self {
            Output::Local { root } => match std::fs::metadata(root.join(key)) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(root.join(key), e)),
            },
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                match store.head(&loc).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_err(self.display(key), e)),
                }
            }
        }
    }

    /// Appends the content of `key` to a local writer, a chunk at a time.
    pub async fn copy_to(&self, key: &str, to: &mut impl std::io::Write) -> Result<()> {
        match self {
            Output::Local { root } => {
                let p = root.join(key);
                let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
                std::io::copy(&mut f, to).map_err(|e| Error::io(&p, e))?;
                Ok(())
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                let r = store.get(&loc).await.map_err(|e| store_err(self.display(key), e))?;
                let mut s = r.into_stream();
                while let Some(chunk) = s.next().await {
                    let chunk = chunk.map_err(|e| store_err(self.display(key), e))?;
                    to.write_all(&chunk).map_err(|e| store_err(self.display(key), e))?;
                }
                Ok(())
            }
        }
    }

    /// Every object under `prefix` (a folder key, no trailing `/`), with its size, as keys relative to the root.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        match self {
            Output::Local { root } => {
                let base = root.join(prefix);
                let mut out = Vec::new();
                if !base.exists() {
                    return Ok(out);
                }
                let mut stack = vec![base];
                while let Some(dir) = stack.pop() {
                    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                        let entry = entry.map_err(|e| Error::io(&dir, e))?;
                        let p = entry.path();
                        let ft = entry.file_type().map_err(|e| Error::io(&p, e))?;
                        if ft.is_dir() {
                            stack.push(p);
                        } else if let Ok(rel) = p.strip_prefix(root) {
                            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                            let key = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                            out.push((key, size));
                        }
                    }
                }
                out.sort();
                Ok(out)
            }
            Output::S3 { store, prefix: root, .. } => {
                let loc = self.obj(prefix)?;
                let mut s = store.list(Some(&loc));
                let mut out = Vec::new();
                while let Some(meta) = s.next().await {
                    let meta = meta.map_err(|e| store_err(self.display(prefix), e))?;
                    let full = meta.location.as_ref();
                    let rel = if root.is_empty() { full } else { full.strip_prefix(root.as_str()).unwrap_or(full).trim_start_matches('/') };
                    out.push((rel.to_string(), meta.size));
                }
                out.sort();
                Ok(out)
            }
        }
    }

    /// Moves `from` to `to`, replacing `to` (a rename locally; a server-side copy and a delete on S3).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with(from, to, true).await
    }

    /// [`Output::rename`] of many files: a local folder is synced once at the end ([`Output::sync`]), not after each.
    pub async fn rename_unsynced(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with(from, to, false).await
    }

    /// On a local output, does the renames `from → to` (keys) whose source folder holds exactly their files, all
    /// bound for one folder that does not exist yet, as one rename of that folder ([`move_whole_folders`]), and
    /// returns the `from` keys so moved; the caller renames the others. Not synced ([`Output::sync`]); on S3,
    /// nothing. A partition new to a dataset thus costs no `mkdir` at commit.
    pub fn rename_whole_folders(&self, moves: &[(String, String)]) -> Result<HashSet<String>> {
        let Output::Local { root } = self else { return Ok(HashSet::new()) };
        let paths: Vec<(PathBuf, PathBuf)> = moves.iter().map(|(from, to)| (root.join(from), root.join(to))).collect();
        let folders = move_whole_folders(&paths)?;
        Ok(moves
            .iter()
            .zip(&paths)
            .filter(|(_, (from, _))| from.parent().is_some_and(|p| folders.contains(p)))
            .map(|((from, _), _)| from.clone())
            .collect())
    }

    /// Makes the local renames and writes so far durable (a local output; S3 has nothing to sync).
    pub fn sync(&self) -> Result<()> {
        match self {
            Output::Local { root } => sync_filesystem(root, std::iter::empty()),
            Output::S3 { .. } => Ok(()),
        }
    }

    async fn rename_with(&self, from: &str, to: &str, sync: bool) -> Result<()> {
        match self {
            // without syncfs (not Linux), each rename is made durable on its own
            Output::Local { root } => move_local(&root.join(from), &root.join(to), sync || !cfg!(target_os = "linux")),
            Output::S3 { store, .. } => {
                let (a, b) = (self.obj(from)?, self.obj(to)?);
                store.copy(&a, &b).await.map_err(|e| store_err(self.display(to), e))?;
                store.delete(&a).await.map_err(|e| store_err(self.display(from), e))?;
                Ok(())
            }
        }
    }

    /// Removes everything under the folder `prefix` except its direct children named in `keep`.
    pub async fn clear(&self, prefix: &str, keep: &[&str]) -> Result<()> {
        match self {
            Output::Local { root } => {
                let dir = root.join(prefix);
                let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
                for e in entries {
                    let e = e.map_err(|e| Error::io(&dir, e))?;
                    if keep.iter().any(|k| e.file_name() == **k) {
                        continue;
                    }
                    let p = e.path();
                    let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    match gone {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&p, e)),
                    }
                }
                if keep.is_empty() {
                    let _ = std::fs::remove_dir(&dir);
                }
                Ok(())
            }
            Output::S3 { .. } => {
                for (key, _) in self.list(prefix).await? {
                    let child = key.strip_prefix(prefix).unwrap_or(&key).trim_start_matches('/');
                    let first = child.split('/').next().unwrap_or("");
                    if !keep.contains(&first) {
                        self.delete(&key).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Removes `key` (gone already is fine); local folders left empty are removed too.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Output::Local { root } => {
                let p = root.join(key);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&p, e)),
                }
                let mut dir = p.parent();
                while let Some(d) = dir {
                    if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            }
            Output::S3 { store, .. } => {
                let loc = self.obj(key)?;
                match store.delete(&loc).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_err(self.display(key), e)),
                }
            }
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn tmp_beside(to: &Path) -> PathBuf {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!(".{name}.{}-{:08x}.tmp", std::process::id(), fastrand::u32(..)))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(data).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_parent(p: &Path) {
    // make a rename or link durable where the platform allows it
    if let Some(d) = p.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
}

/// Makes the files `written` (and the renames that put them there) durable: one `syncfs` of the filesystem
/// that holds `root` on Linux, else each file and its folder.
fn sync_filesystem(root: &Path, written: impl Iterator<Item = PathBuf>) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        extern "C" {
            fn syncfs(fd: std::ffi::c_int) -> std::ffi::c_int;
        }
        let _ = written;
        let dir = std::fs::File::open(root).map_err(|e| Error::io(root, e))?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call
        if unsafe { syncfs(dir.as_raw_fd()) } != 0 {
            return Err(Error::io(root, std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        for p in written {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
            sync_parent(&p);
        }
        Ok(())
    }
}

/// Of the local moves `from → to`, groups those by source folder; a folder whose files all keep their names and go
/// to one target folder is moved by [`move_folder_if_new`]. Returns the source folders so moved.
fn move_whole_folders(moves: &[(PathBuf, PathBuf)]) -> Result<HashSet<PathBuf>> {
    let mut groups: BTreeMap<&Path, (&Path, BTreeSet<&OsStr>)> = BTreeMap::new();
    let mut mixed: HashSet<&Path> = HashSet::new();
    for (from, to) in moves {
        let (Some(src), Some(dst), Some(name)) = (from.parent(), to.parent(), from.file_name()) else { continue };
        let group = groups.entry(src).or_insert_with(|| (dst, BTreeSet::new()));
        if group.0 != dst || to.file_name() != Some(name) {
            mixed.insert(src);
        }
        group.1.insert(name);
    }
    let mut moved = HashSet::new();
    for (src, (dst, names)) in groups {
        if !mixed.contains(src) && move_folder_if_new(src, dst, names)? {
            moved.insert(src.to_path_buf());
        }
    }
    Ok(moved)
}

/// Renames the folder `from` to `to` when `to` does not exist and `from` holds exactly the entries `names`;
/// whether it did. Linux only, where [`sync_filesystem`] makes the rename durable with the rest (elsewhere each
/// file's folder is synced after its own rename, which a folder rename would skip).
fn move_folder_if_new(from: &Path, to: &Path, names: BTreeSet<&OsStr>) -> Result<bool> {
    if !cfg!(target_os = "linux") || std::fs::symlink_metadata(to).is_ok() {
        return Ok(false);
    }
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(false) };
    let mut found = 0;
    for e in entries {
        let Ok(e) = e else { return Ok(false) };
        if !names.contains(e.file_name().as_os_str()) {
            return Ok(false);
        }
        found += 1;
    }
    if found != names.len() {
        return Ok(false);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(std::fs::rename(from, to).is_ok())
}

fn rename_local(from: &Path, to: &Path) -> Result<()> {
    move_local(from, to, true)
}

/// Renames `from` to `to` (copying across filesystems); with `sync`, the folder's entry is made durable.
fn move_local(from: &Path, to: &Path, sync: bool) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    match std::fs::rename(from, to) {
        Ok(()) => {}
        // another filesystem (EXDEV): copy to a temporary name beside the target, sync, rename, drop the source
        Err(e) if e.raw_os_error() == Some(18) => {
            let tmp = tmp_beside(to);
            std::fs::copy(from, &tmp).map_err(|e| Error::io(&tmp, e))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))?;
            let _ = std::fs::remove_file(from);
        }
        Err(e) => return Err(Error::io(to, e)),
    }
    if sync {
        sync_parent(to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_plain_http_is_refused_off_loopback() {
        assert!(Output::parse("out", &S3Options::default()).unwrap().is_local());
        assert!(matches!(Output::parse("file:///tmp/x", &S3Options::default()).unwrap(), Output::Local { root } if root == Path::new("/tmp/x")));
        assert!(matches!(Output::parse("gs://b/x", &S3Options::default()), Err(Error::Usage(_))));
        assert!(matches!(Output::parse("s3:///x", &S3Options::default()), Err(Error::Usage(_))));
        let far = S3Options { endpoint: Some("http://minio.example.com:9000".into()), ..Default::default() };
        let err = Output::parse("s3://b/p", &far).unwrap_err().to_string();
        assert!(err.contains("--s3-allow-http"), "{err}");
        let allowed = S3Options { allow_http: true, ..far };
        assert!(Output::parse("s3://b/p", &allowed).is_ok());
        let local = S3Options { endpoint: Some("http://127.0.0.1:9000".into()), ..Default::default() };
        let out = Output::parse("s3://b/some/prefix/", &local).unwrap();
        assert_eq!(out.display("leads/a=1/f.parquet"), "s3://b/some/prefix/leads/a=1/f.parquet");
    }

    #[test]
    fn local_create_only_put_keeps_the_first() {
        let root = std::env::temp_dir().join(format!("b24-out-{}-{}", std::process::id(), fastrand::u32(..)));
        let out = Output::Local { root: root.clone() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            assert_eq!(out.put_create("m/v1.json", b"one".to_vec()).await.unwrap(), Created::Yes);
            assert_eq!(out.put_create("m/v1.json", b"two".to_vec()).await.unwrap(), Created::AlreadyExists);
            assert_eq!(out.get("m/v1.json").await.unwrap().unwrap(), b"one");
            out.put_bytes("m/c.json", b"x".to_vec()).await.unwrap();
            out.put_bytes("m/c.json", b"y".to_vec()).await.unwrap();
            let keys: Vec<String> = out.list("m").await.unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, vec!["m/c.json", "m/v1.json"], "no temporary files left");
            out.rename("m/c.json", "n/d.json").await.unwrap();
            assert_eq!(out.get("n/d.json").await.unwrap().unwrap(), b"y");
            out.delete("n/d.json").await.unwrap();
            assert!(!root.join("n").exists(), "an emptied folder is removed");
            assert!(out.get("n/d.json").await.unwrap().is_none());
        });
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Files put from a local spool land at their keys whichever way they move: a whole folder (new target,
    /// nothing else in it), or one by one (the target folder exists, the spool folder holds a file not put now,
    /// the folder's files go to two places).
    #[test]
    fn put_files_moves_new_folders_whole_and_the_rest_file_by_file() {
        let root = std::env::temp_dir().join(format!("b24-put-{}-{}", std::process::id(), fastrand::u32(..)));
        let spool = root.join("spool");
        let out = Output::Local { root: root.join("out") };
        let write = |rel: &str, text: &str| {
            let p = spool.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        };
        std::fs::create_dir_all(root.join("out/st/exists")).unwrap();
        std::fs::write(root.join("out/st/exists/old.parquet"), "old").unwrap();
        let files = vec![
            (write("new/a.parquet", "a"), "st/new/a.parquet".to_string()),
            (write("new/b.parquet", "b"), "st/new/b.parquet".to_string()),
            (write("exists/c.parquet", "c"), "st/exists/c.parquet".to_string()),
            (write("busy/d.parquet", "d"), "st/busy/d.parquet".to_string()),
            (write("split/e.parquet", "e"), "st/one/e.parquet".to_string()),
            (write("split/f.parquet", "f"), "st/two/f.parquet".to_string()),
        ];
        write("busy/open.parquet.tmp", "still being written");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(out.put_files(&files)).unwrap();
        for (name, text) in [("new/a", "a"), ("new/b", "b"), ("exists/c", "c"), ("exists/old", "old"), ("busy/d", "d"), ("one/e", "e"), ("two/f", "f")] {
            assert_eq!(std::fs::read_to_string(root.join(format!("out/st/{name}.parquet"))).unwrap(), text, "{name}");
        }
        for (local, _) in &files {
            assert!(!local.exists(), "{} left behind", local.display());
        }
        assert!(!spool.join("new").exists(), "the new folder moved whole");
        assert!(spool.join("busy/open.parquet.tmp").exists(), "a file not put stays in the spool");
        assert!(!root.join("out/st/busy/open.parquet.tmp").exists(), "and does not reach the output");
        // the dataset side: a partition folder new to the dataset moves whole, an existing one does not
        let renames = |folder: &str, to: &str, names: &[&str]| -> Vec<(String, String)> {
            names.iter().map(|n| (format!("st/{folder}/{n}"), format!("ds/{to}/{n}"))).collect()
        };
        assert!(out.rename_whole_folders(&renames("new", "new", &["a.parquet", "x.parquet"])).unwrap().is_empty(), "a name not there");
        assert!(out.rename_whole_folders(&renames("new", "new", &["a.parquet"])).unwrap().is_empty(), "an entry not named");
        let moved = out.rename_whole_folders(&renames("new", "new", &["b.parquet", "a.parquet"])).unwrap();
        assert_eq!(moved, ["st/new/a.parquet".to_string(), "st/new/b.parquet".to_string()].into_iter().collect());
        assert_eq!(std::fs::read_to_string(root.join("out/ds/new/b.parquet")).unwrap(), "b");
        assert!(out.rename_whole_folders(&renames("exists", "new", &["c.parquet", "old.parquet"])).unwrap().is_empty(), "the target exists");
        assert!(out.rename_whole_folders(&renames("exists", "other", &["c.parquet"])).unwrap().is_empty(), "two entries, one expected");
        assert!(root.join("out/st/exists/c.parquet").exists() && !root.join("out/ds/other").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
