//! The files of a drop: listing them (a local folder, read recursively, or an `abfss://` landing
//! folder), hashing them, and opening them decompressed.
//!
//! Remote files are downloaded once into a temporary file while they are hashed, so decoding reads
//! local bytes and a file is never fetched twice.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use futures::TryStreamExt;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use url::Url;

use super::IngestError;

/// One file of a drop.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// `file:///…` or `abfss://…`: what bronze records as `source_uri`.
    pub uri: String,
    pub size: u64,
    location: Where,
    /// How the bytes are laid out: from the name, or known by whoever made the file.
    format: Format,
}

#[derive(Clone)]
enum Where {
    Local(PathBuf),
    Remote(Arc<dyn ObjectStore>, StorePath),
}

impl std::fmt::Debug for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Where::Local(p) => write!(f, "Local({})", p.display()),
            Where::Remote(_, p) => write!(f, "Remote({p})"),
        }
    }
}

/// How a file's bytes are laid out, after decompression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON text: a resource or a Bundle.
    Json,
    /// One resource per line.
    Ndjson,
    /// Not known from the name: decided from the content.
    Unknown,
}

impl Format {
    /// From the file name, looking through a `.gz` suffix.
    pub fn from_name(name: &str) -> Format {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
            Format::Ndjson
        } else if name.ends_with(".json") {
            Format::Json
        } else {
            Format::Unknown
        }
    }
}

/// Lists every file under `paths` (files or folders; folders recursively), sorted by URI so runs
/// are deterministic. Hidden files (names starting with `.`) are left out.
pub async fn list(paths: &[String]) -> Result<Vec<SourceFile>, IngestError> {
    let mut files = Vec::new();
    for path in paths {
        if path.contains("://") {
            files.extend(list_remote(path).await?);
        } else {
            list_local(Path::new(path), &mut files)?;
        }
    }
    files.sort_by(|a, b| a.uri.cmp(&b.uri));
    files.dedup_by(|a, b| a.uri == b.uri);
    Ok(files)
}

fn list_local(path: &Path, files: &mut Vec<SourceFile>) -> Result<(), IngestError> {
    let not_found = |source| IngestError::Input {
        path: path.display().to_string(),
        source,
    };
    // Follow links (a drop folder may be a link); a dangling one is listed and then fails to
    // read, so it is reported rather than silently passed over.
    let meta = std::fs::metadata(path)
        .or_else(|_| std::fs::symlink_metadata(path))
        .map_err(not_found)?;
    let absolute = std::path::absolute(path).map_err(not_found)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(not_found)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            list_local(&entry.path(), files)?;
        }
    } else {
        let uri = Url::from_file_path(&absolute)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| absolute.display().to_string());
        files.push(SourceFile {
            format: Format::from_name(&uri),
            uri,
            size: meta.len(),
            location: Where::Local(absolute),
        });
    }
    Ok(())
}

/// Why a landing folder on Azure could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteProblem {
    #[error("not a URL: {0}")]
    Url(url::ParseError),
    #[error("unsupported scheme {0}: use a local path or abfss://")]
    Scheme(String),
    #[error("cannot open the storage account: {0}")]
    Open(object_store::Error),
    #[error("not a storage path: {0}")]
    Path(object_store::path::Error),
    #[error("cannot list the landing folder: {0}")]
    List(object_store::Error),
}

async fn list_remote(uri: &str) -> Result<Vec<SourceFile>, IngestError> {
    let bad = |problem: RemoteProblem| IngestError::Remote {
        uri: uri.to_string(),
        problem,
    };
    let url = Url::parse(uri).map_err(|e| bad(RemoteProblem::Url(e)))?;
    if !matches!(url.scheme(), "abfss" | "abfs" | "az" | "azure") {
        return Err(bad(RemoteProblem::Scheme(url.scheme().to_string())));
    }
    let store: Arc<dyn ObjectStore> = Arc::new(
        MicrosoftAzureBuilder::from_env()
            .with_url(uri)
            .build()
            .map_err(|e| bad(RemoteProblem::Open(e)))?,
    );
    let prefix = StorePath::from_url_path(url.path()).map_err(|e| bad(RemoteProblem::Path(e)))?;
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| bad(RemoteProblem::List(e)))?;
    let base = format!("{}://{}", url.scheme(), url.authority());
    Ok(objects
        .into_iter()
        .filter(|o| !o.location.filename().is_some_and(|n| n.starts_with('.')))
        .map(|o| SourceFile {
            format: Format::from_name(o.location.as_ref()),
            uri: format!("{base}/{}", o.location),
            size: o.size,
            location: Where::Remote(store.clone(), o.location),
        })
        .collect())
}

/// A file made readable locally, with its SHA-256.
pub struct Fetched {
    pub sha256: String,
    path: PathBuf,
    /// Keeps a downloaded copy alive until decoding is done.
    _temp: Option<tempfile::NamedTempFile>,
}

impl SourceFile {
    /// A local file of `format` that stands for `uri`, where it was downloaded from (a FHIR
    /// server's export).
    pub fn downloaded(uri: String, path: PathBuf, size: u64, format: Format) -> SourceFile {
        SourceFile {
            uri,
            size,
            location: Where::Local(path),
            format,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn name(&self) -> &str {
        self.uri.rsplit('/').next().unwrap_or(&self.uri)
    }

    /// Hashes the file; a remote one is downloaded to a temporary file as it is hashed.
    pub fn fetch(&self, runtime: &tokio::runtime::Handle) -> io::Result<Fetched> {
        match &self.location {
            Where::Local(path) => {
                let mut hasher = Sha256::new();
                io::copy(&mut File::open(path)?, &mut HashWriter(&mut hasher))?;
                Ok(Fetched {
                    sha256: hex::encode(hasher.finalize()),
                    path: path.clone(),
                    _temp: None,
                })
            }
            Where::Remote(store, path) => {
                let mut temp = tempfile::NamedTempFile::new()?;
                let mut hasher = Sha256::new();
                runtime.block_on(async {
                    let mut stream = store
                        .get(path)
                        .await
                        .map_err(io::Error::other)?
                        .into_stream();
                    while let Some(bytes) = stream.try_next().await.map_err(io::Error::other)? {
                        hasher.update(&bytes);
                        temp.write_all(&bytes)?;
                    }
                    io::Result::Ok(())
                })?;
                temp.flush()?;
                Ok(Fetched {
                    sha256: hex::encode(hasher.finalize()),
                    path: temp.path().to_owned(),
                    _temp: Some(temp),
                })
            }
        }
    }
}

impl Fetched {
    /// The decompressed bytes (gzip is recognised by its magic number, whatever the name says),
    /// without a leading UTF-8 byte order mark, and whether there was one. RFC 8259 (section 8.1)
    /// lets a parser ignore the mark, and Windows tools write it; the report says it was there.
    pub fn open(&self) -> io::Result<(Box<dyn BufRead + Send>, bool)> {
        let mut file = File::open(&self.path)?;
        let mut magic = [0u8; 2];
        let n = file.read(&mut magic)?;
        file.rewind()?;
        const CAPACITY: usize = 1 << 20;
        let mut reader: Box<dyn BufRead + Send> = if n == 2 && magic == [0x1f, 0x8b] {
            Box::new(BufReader::with_capacity(
                CAPACITY,
                MultiGzDecoder::new(BufReader::new(file)),
            ))
        } else {
            Box::new(BufReader::with_capacity(CAPACITY, file))
        };
        let byte_order_mark = reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF");
        if byte_order_mark {
            reader.consume(3);
        }
        Ok((reader, byte_order_mark))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_name_looks_through_gz() {
        assert_eq!(Format::from_name("Patient.000.ndjson.gz"), Format::Ndjson);
        assert_eq!(Format::from_name("x.JSONL"), Format::Ndjson);
        assert_eq!(Format::from_name("bundle.json.gz"), Format::Json);
        assert_eq!(Format::from_name("notes.txt"), Format::Unknown);
    }

    #[tokio::test]
    async fn lists_recursively_sorted_without_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        for name in ["b/c/z.json", "a.ndjson", ".DS_Store", "b/y.json"] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let files = list(&[dir.path().display().to_string()]).await.unwrap();
        let uris: Vec<_> = files.iter().map(|f| f.uri.as_str()).collect();
        assert_eq!(uris.len(), 3, "{uris:?}");
        for (uri, suffix) in uris.iter().zip(["/a.ndjson", "/b/c/z.json", "/b/y.json"]) {
            assert!(
                uri.starts_with("file:///") && uri.ends_with(suffix),
                "{uri}"
            );
        }
    }
}
