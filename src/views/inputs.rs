//! Resources for `vitalake views run`: FHIR files read as they are, without the lake.
//!
//! A file is one resource, a Bundle (its entries' resources are taken, nested Bundles too), or NDJSON
//! (one resource per line); gzip is recognised by its magic number. Folders are read recursively.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::ViewError;

/// Every resource in `paths`, in file order, and the lines that were not JSON (file and line, so the
/// user can look; the rest is still read).
pub fn read_resources(paths: &[PathBuf]) -> Result<(Vec<Json>, Vec<String>), ViewError> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut resources = Vec::new();
    for file in files {
        let text = read_text(&file)?;
        let shown = file.display().to_string();
        match serde_json::from_str::<Json>(&text) {
            Ok(json) => push_resource(json, &mut resources),
            Err(whole_error) => {
                let mut lines = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .peekable();
                if lines.peek().is_none() {
                    return Err(ViewError::Json {
                        path: shown,
                        source: whole_error,
                    });
                }
                for (n, line) in lines {
                    match serde_json::from_str(line) {
                        Ok(json) => push_resource(json, &mut resources),
                        Err(e) => problems.push(format!("{shown} line {}: not JSON: {e}", n + 1)),
                    }
                }
            }
        }
    }
    Ok((resources, problems))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ViewError> {
    let read_error = |source| ViewError::Read {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_error)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if !entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                collect_files(&entry, out)?;
            }
        }
    } else {
        std::fs::metadata(path).map_err(read_error)?;
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, ViewError> {
    let read_error = |source| ViewError::Read {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(read_error)?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// A resource, or the resources of a Bundle's entries.
fn push_resource(json: Json, out: &mut Vec<Json>) {
    if json.get("resourceType").and_then(Json::as_str) == Some("Bundle") {
        if let Some(Json::Array(entries)) = json.get("entry") {
            for entry in entries {
                if let Some(resource) = entry.get("resource") {
                    push_resource(resource.clone(), out);
                }
            }
        }
        return;
    }
    out.push(json);
}
