//! The commit point of a run: a manifest written last, create-only, under a versioned name
//! (`OUT/_manifests/<dataset>/v000042.json`). A snapshot exists once its manifest does; readers that follow the
//! latest manifest (`b24-export sql`) see exactly one complete snapshot, whatever the files on disk.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::sink::output::{Created, Output};

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
    /// What an incremental run changed (absent for a full snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Changes>,
}

/// The outcome of an incremental run, against the snapshot it started from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Changes {
    /// The DATE_MODIFY condition sent (watermark minus overlap), RFC 3339.
    pub since: String,
    /// The manifest version the run merged into.
    pub base_version: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Rows of the base snapshot carried over as they were.
    pub unchanged: u64,
    /// Leads fetched again because of the overlap, identical to what the snapshot holds (not rewritten).
    pub refetched_unchanged: u64,
    /// Files of the base snapshot replaced by this run.
    pub files_rewritten: u64,
}

/// `_manifests/<dataset>`, relative to the output root.
pub fn dir(dataset: &str) -> String {
    format!("_manifests/{dataset}")
}

fn version_of(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()
}

fn key_of(dataset: &str, version: u64) -> String {
    format!("{}/v{version:06}.json", dir(dataset))
}

/// The latest committed manifest of `dataset`, if any.
pub async fn latest(out: &Output, dataset: &str) -> Result<Option<Manifest>> {
    let best = out.list(&dir(dataset)).await?.into_iter().filter_map(|(k, _)| version_of(&k)).max();
    let Some(v) = best else { return Ok(None) };
    let key = key_of(dataset, v);
    let Some(bytes) = out.get(&key).await? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Internal(format!("{} is not a readable manifest: {e}", out.display(&key))))
}

/// Why a commit did not go through, and whether it may have anyway.
#[derive(Debug)]
pub struct CommitFailed {
    pub error: Error,
    /// The manifest may exist: the put's outcome is unknown and reading it back failed too. The files it lists
    /// must stay where they are.
    pub maybe_committed: bool,
}

impl From<Error> for CommitFailed {
    fn from(error: Error) -> Self {
        CommitFailed { error, maybe_committed: false }
    }
}

/// Commits `m` as the next version of its dataset with a create-only put (the commit point of a run). A put whose
/// outcome is unknown (a timeout, a lost answer) is read back before it is tried again. With `base`, the commit
/// is refused if another run committed after version `base` (an incremental run merged into `base`).
pub async fn commit(out: &Output, m: &mut Manifest, base: Option<u64>) -> Result<u64, CommitFailed> {
    let current = latest(out, &m.dataset).await?.map(|l| l.version);
    if let Some(base) = base {
        if current != Some(base) {
            return Err(Error::Usage(format!(
                "another run committed snapshot v{:06} after v{base:06}, which this incremental run merged into; run it again",
                current.unwrap_or(0)
            ))
            .into());
        }
    }
    m.version = current.map_or(1, |v| v + 1);
    let key = key_of(&m.dataset, m.version);
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::Internal(e.to_string()))?;
    let mut attempt = 0;
    let mut last_error = None;
    loop {
        attempt += 1;
        match out.put_create(&key, text.clone()).await {
            Ok(Created::Yes) => return Ok(m.version),
            Ok(Created::AlreadyExists) => {}
            Err(e) => {
                tracing::warn!("committing {} failed ({e}); reading it back before trying again", out.display(&key));
                last_error = Some(e);
            }
        }
        // it may exist now: ours (an earlier attempt went through) or another run's
        match out.get(&key).await {
            Ok(Some(found)) => {
                let theirs: Option<Manifest> = serde_json::from_slice(&found).ok();
                if theirs.as_ref().is_some_and(|t| t.run_id == m.run_id) {
                    return Ok(m.version);
                }
                return Err(Error::Usage(format!(
                    "another run committed {} at the same time; run one export per output at a time",
                    out.display(&key)
                ))
                .into());
            }
            Ok(None) if attempt >= 3 => {
                return Err(last_error.unwrap_or_else(|| Error::Internal("the manifest put kept failing".into())).into());
            }
            Ok(None) => {}
            Err(e) if attempt >= 3 => {
                return Err(CommitFailed {
                    error: Error::Store {
                        what: out.display(&key),
                        message: format!("the commit's outcome is unknown ({e}); its files are left in place, run again to settle it"),
                    },
                    maybe_committed: true,
                })
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
    }
}

/// A DuckDB query that reads exactly the files of a manifest.
pub fn duckdb_query(out: &Output, m: &Manifest) -> String {
    let files: Vec<String> = m
        .files
        .iter()
        .map(|f| format!("'{}'", out.display(&format!("{}/{}", m.dataset, f.path)).replace('\'', "''")))
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
            incremental: None,
        }
    }

    #[test]
    fn versions_increase_and_commits_are_create_only() {
        let root = std::env::temp_dir().join(format!("b24-manifest-{}-{}", std::process::id(), fastrand::u32(..)));
        let out = Output::Local { root: root.clone() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert!(latest(&out, "leads").await.unwrap().is_none());
            let mut a = manifest("r1");
            assert_eq!(commit(&out, &mut a, None).await.unwrap(), 1);
            let mut b = manifest("r2");
            assert_eq!(commit(&out, &mut b, None).await.unwrap(), 2);
            // an incremental run that merged into v1 may not commit over v2
            let mut stale = manifest("r4");
            let refused = commit(&out, &mut stale, Some(1)).await.unwrap_err();
            assert!(!refused.maybe_committed && refused.error.to_string().contains("run it again"));
            assert_eq!(latest(&out, "leads").await.unwrap().unwrap().run_id, "r2");
            // a concurrent commit of the same version is refused, not overwritten
            let late = manifest("r3");
            let text = serde_json::to_vec(&late).unwrap();
            assert_eq!(out.put_create(&key_of("leads", 2), text).await.unwrap(), Created::AlreadyExists);
            assert_eq!(latest(&out, "leads").await.unwrap().unwrap().run_id, "r2");
            let keys = out.list("_manifests").await.unwrap();
            assert_eq!(keys.len(), 2, "no temporary files left: {keys:?}");
        });
        let _ = std::fs::remove_dir_all(&root);
    }
}
