//! Which data files a table's commits added or removed after a version: what an incremental
//! refresh reads to learn which rows changed. Rows replaced or deleted live in the removed files,
//! which stay in storage until VACUUM (at least a day: [`super::maintain::MIN_RETENTION`]).

use deltalake::DeltaTable;

use super::LakeError;

/// The URLs of the files the commits `after + 1 ..= upto` added or removed with a change of data
/// (not a compaction's rewrite), or None when they cannot say: a commit is gone from the log, or
/// one changed the table's schema or protocol (the caller then recomputes everything).
pub async fn files_changed_between(
    table: &DeltaTable,
    name: &str,
    after: u64,
    upto: u64,
) -> Result<Option<Vec<String>>, LakeError> {
    let err = |source| LakeError::Delta {
        table: name.to_string(),
        source,
    };
    let mut base = table.table_url().clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let mut files = Vec::new();
    for version in after + 1..=upto {
        let Some(commit) = table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        for line in commit.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                return Ok(None);
            };
            if action.get("metaData").is_some() || action.get("protocol").is_some() {
                return Ok(None);
            }
            for kind in ["add", "remove"] {
                let Some(file) = action.get(kind) else {
                    continue;
                };
                // OPTIMIZE rewrites rows without changing them.
                if file.get("dataChange").and_then(|d| d.as_bool()) == Some(false) {
                    continue;
                }
                if let Some(path) = file.get("path").and_then(|p| p.as_str()) {
                    let Ok(url) = base.join(path) else {
                        return Ok(None);
                    };
                    files.push(url.to_string());
                }
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(Some(files))
}
