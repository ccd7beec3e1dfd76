//! The file source: an NDJSON file of events, one per line, in one partition `0`.
//!
//! An event's sequence number is its line number, so a restarted `vitalake stream` on the same file
//! skips the lines already committed and resumes where it stopped (`tail -f` semantics: a file is
//! known by its path and only ever grows). With `follow`, the source waits at the end of the file for
//! more lines instead of ending; a last line without its newline is left until the writer finishes it.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Event, Partition, StreamError, StreamId};

/// How often a followed file is looked at again once its end is reached.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub const PARTITION: &str = "0";

/// The stream id of a file: namespace `file`, the hub given, consumer group `$Default`. The
/// canonical path is part of the partition's application id, so two files never share one.
pub fn stream_id(hub: &str) -> StreamId {
    StreamId {
        namespace: "file".into(),
        hub: hub.into(),
        consumer_group: "$Default".into(),
    }
}

/// The partition id of a file: its canonical path, so the exactly-once bookkeeping is per file.
pub fn partition_id(path: &str) -> Result<String, StreamError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| StreamError::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(canonical.display().to_string())
}

/// Opens `path` as one partition, numbering lines from 1.
pub fn open(path: &str, follow: bool) -> Result<Partition, StreamError> {
    let id = partition_id(path)?;
    let file = std::fs::File::open(path).map_err(|source| StreamError::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(lines_partition(id, path.to_string(), file, 0, follow))
}

/// A partition whose events are the lines of `reader`, numbered `after + 1`, `after + 2`, ...
/// Reading runs on a plain thread: a blocking read must never hold up the async reactor.
pub(super) fn lines_partition<R: Read + Send + 'static>(
    id: String,
    name: String,
    reader: R,
    after: i64,
    follow: bool,
) -> Partition {
    let (tx, rx) = mpsc::channel(4096);
    let partition_id = id.clone();
    std::thread::spawn(move || read_lines(partition_id, name, reader, after, follow, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
    .boxed();
    Partition { id, events }
}

fn read_lines<R: Read>(
    partition_id: String,
    name: String,
    reader: R,
    after: i64,
    follow: bool,
    tx: mpsc::Sender<Result<Event, StreamError>>,
) {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut number = after;
    let mut offset: u64 = 0;
    let mut line = Vec::new();
    loop {
        let read = match reader.read_until(b'\n', &mut line) {
            Ok(read) => read,
            Err(source) => {
                let _ = tx.blocking_send(Err(StreamError::Read { path: name, source }));
                return;
            }
        };
        let complete = line.last() == Some(&b'\n');
        if read == 0 || (follow && !complete) {
            if !follow {
                return;
            }
            if tx.is_closed() {
                return;
            }
            // The partial line stays in `line`; the next read appends the rest.
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        let start = offset;
        offset += line.len() as u64;
        number += 1;
        let body = trim_line_end(&line);
        if !body.iter().all(u8::is_ascii_whitespace) {
            let event = Event {
                partition_id: partition_id.clone(),
                sequence_number: number,
                offset: Some(start.to_string()),
                enqueued_time: Some(chrono::Utc::now().timestamp_micros()),
                body: body.to_vec(),
                ..Event::default()
            };
            if tx.blocking_send(Ok(event)).is_err() {
                return;
            }
        }
        line.clear();
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn take(partition: &mut Partition, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(partition.events.next().await.unwrap().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn lines_are_numbered_and_blank_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, "{\"a\":1}\r\n\n{\"b\":2}").unwrap();
        let mut partition = open(path.to_str().unwrap(), false).unwrap();
        let events = take(&mut partition, 2).await;
        assert_eq!(events[0].sequence_number, 1);
        assert_eq!(events[0].body, b"{\"a\":1}");
        assert_eq!(events[1].sequence_number, 3);
        assert_eq!(events[1].offset.as_deref(), Some("10"));
        assert_eq!(events[1].body, b"{\"b\":2}");
        assert!(partition.events.next().await.is_none());
    }

    #[tokio::test]
    async fn a_followed_file_yields_lines_appended_later_and_waits_for_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        let mut partition = open(path.to_str().unwrap(), true).unwrap();
        assert_eq!(take(&mut partition, 1).await[0].sequence_number, 1);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"b\":").unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        file.write_all(b"2}\n").unwrap();
        let event = take(&mut partition, 1).await.remove(0);
        assert_eq!(event.sequence_number, 2);
        assert_eq!(event.body, b"{\"b\":2}");
    }
}
