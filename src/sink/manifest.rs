//! The commit point of a run: a manifest written last, create-only, under a versioned name
//! (`OUT/_manifests/<dataset>/v000042.json`). A snapshot exists once its manifest does; readers that follow the
//! latest manifest (`b24-export sql`) see exactly one complete snapshot, whatever the files on disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// Relative to the dataset directory, `/`-separated.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub dataset: String,
    pub version: u64,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub tool_version: String,
    /// The portal, as it may be shown (never a secret).
    pub source: String,
    pub select: Option<Vec<String>>,
    pub filter: Value,
    /// `--partition-by` as given, and the partition column readers see.
    pub partition_by: String,
    pub partition_column: Option<String>,
    pub files: Vec<ManifestFile>,
    pub total_rows: u64,
    pub schema_fingerprint: String,
    /// The highest DATE_MODIFY exported (RFC 3339, UTC): the watermark of an incremental run.
    pub max_date_modify: Option<String>,
}

/// `OUT/_manifests/<dataset>`.
pub fn dir(out: &Path, dataset: &str) -> PathBuf {
    out.join("_manifests").join(dataset)
}

fn version_of(name: &str) -> Option<u64> {
    name.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()
}

/// The latest committed manifest, if any.
pub fn latest(dir: &Path) -> Result<Option<Manifest>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if let Some(v) = version_of(&e.file_name().to_string_lossy()) {
            if best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, e.path()));
            }
        }
    }
    let Some((_, path)) = best else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::Internal(format!("{} is not a readable manifest: {e}", path.display())))
}

/// Commits `m` as the next version: written to a temporary name, synced, then hard-linked to its versioned name,
/// which fails if that name exists (a concurrent commit) — a create-only put. Returns the committed version.
pub fn commit(dir: &Path, m: &mut Manifest) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    m.version = latest(dir)?.map_or(1, |l| l.version + 1);
    put_create_only(dir, m)
}

fn put_create_only(dir: &Path, m: &Manifest) -> Result<u64> {
    let name = format!("v{:06}.json", m.version);
    let tmp = dir.join(format!(".{name}.{}.tmp", m.run_id));
    let target = dir.join(&name);
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let text = serde_json::to_string_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
        f.write_all(text.as_bytes()).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    let linked = std::fs::hard_link(&tmp, &target);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "another run committed {} at the same time; run one export per output at a time",
                target.display()
            )))
        }
        Err(e) => return Err(Error::io(&target, e)),
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(m.version)
}

/// A DuckDB query that reads exactly the files of a manifest.
pub fn duckdb_query(dataset_dir: &Path, m: &Manifest) -> String {
    let files: Vec<String> = m
        .files
        .iter()
        .map(|f| format!("'{}'", dataset_dir.join(&f.path).display().to_string().replace('\'', "''")))
        .collect();
    format!(
        "SELECT * FROM read_parquet([{}], hive_partitioning = true, union_by_name = true);",
        files.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(run: &str) -> Manifest {
        Manifest {
            format: 1,
            dataset: "leads".into(),
            version: 0,
            run_id: run.into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:01:00Z".into(),
            tool_version: "0".into(),
            source: "https://x/rest/1/***/".into(),
            select: None,
            filter: Value::Object(Default::default()),
            partition_by: "none".into(),
            partition_column: None,
            files: vec![ManifestFile { path: "a.parquet".into(), rows: 1, bytes: 2 }],
            total_rows: 1,
            schema_fingerprint: "f".into(),
            max_date_modify: None,
        }
    }

    #[test]
    fn versions_increase_and_commits_are_create_only() {
        let dir = std::env::temp_dir().join(format!("b24-manifest-{}-{}", std::process::id(), fastrand::u32(..)));
        assert!(latest(&dir).unwrap().is_none());
        let mut a = manifest("r1");
        assert_eq!(commit(&dir, &mut a).unwrap(), 1);
        let mut b = manifest("r2");
        assert_eq!(commit(&dir, &mut b).unwrap(), 2);
        assert_eq!(latest(&dir).unwrap().unwrap().run_id, "r2");
        // a concurrent commit of the same version is refused, not overwritten
        let mut late = manifest("r3");
        late.version = 2;
        assert!(matches!(put_create_only(&dir, &late), Err(Error::Usage(_))));
        assert_eq!(latest(&dir).unwrap().unwrap().run_id, "r2");
        assert!(dir.read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
