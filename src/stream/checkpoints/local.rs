//! The checkpoint store in a local folder (beside a local lake): one JSON file per document, its
//! name the percent-encoded document name. A conditional write holds an exclusive lock on
//! `.lock` while it compares ETags and renames the new file into place, so processes on one
//! machine see each write whole and of two racing claims exactly one wins.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Expect, Stored, Written};
use crate::stream::StreamError;

pub(super) struct LocalStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    etag: String,
    last_modified: i64,
    body: serde_json::Value,
}

impl LocalStore {
    pub fn open(dir: &str) -> Result<Self, StreamError> {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).map_err(|source| read_error(&dir, source))?;
        Ok(LocalStore { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        self.dir.join(format!("{encoded}.json"))
    }

    fn read(&self, path: &Path, name: &str) -> Result<Option<Stored>, StreamError> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(read_error(path, source)),
        };
        let doc: OnDisk =
            serde_json::from_slice(&text).map_err(|source| StreamError::CorruptCheckpoint {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Some(Stored {
            name: name.to_string(),
            body: serde_json::to_vec(&doc.body).expect("JSON value serializes"),
            etag: doc.etag,
            last_modified: doc.last_modified,
        }))
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<Stored>, StreamError> {
        let mut found = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|source| read_error(&self.dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| read_error(&self.dir, source))?;
            let file_name = entry.file_name();
            let Some(encoded) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let name: String = url::form_urlencoded::parse(format!("n={encoded}").as_bytes())
                .map(|(_, value)| value.into_owned())
                .next()
                .unwrap_or_default();
            if name.starts_with(prefix)
                && let Some(stored) = self.read(&entry.path(), &name)?
            {
                found.push(stored);
            }
        }
        Ok(found)
    }

    pub fn write(&self, name: &str, body: Vec<u8>, expect: Expect) -> Result<Written, StreamError> {
        let lock_path = self.dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| read_error(&lock_path, source))?;
        lock.lock()
            .map_err(|source| read_error(&lock_path, source))?;
        let path = self.file(name);
        let current = self.read(&path, name)?;
        let holds = match (&expect, &current) {
            (Expect::Any, _) => true,
            (Expect::Absent, current) => current.is_none(),
            (Expect::Etag(etag), Some(current)) => &current.etag == etag,
            (Expect::Etag(_), None) => false,
        };
        if !holds {
            return Ok(Written::Conflict);
        }
        let doc = OnDisk {
            etag: uuid::Uuid::now_v7().to_string(),
            last_modified: chrono::Utc::now().timestamp_micros(),
            body: serde_json::from_slice(&body).expect("documents are JSON"),
        };
        let temp = path.with_extension("json.tmp");
        let mut file = fs::File::create(&temp).map_err(|source| read_error(&temp, source))?;
        file.write_all(&serde_json::to_vec(&doc).expect("document serializes"))
            .and_then(|()| file.sync_all())
            .map_err(|source| read_error(&temp, source))?;
        fs::rename(&temp, &path).map_err(|source| read_error(&path, source))?;
        Ok(Written::Done {
            etag: doc.etag,
            last_modified: doc.last_modified,
        })
    }
}

fn read_error(path: &Path, source: std::io::Error) -> StreamError {
    StreamError::Read {
        path: path.display().to_string(),
        source,
    }
}
