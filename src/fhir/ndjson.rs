//! Streaming NDJSON (FHIR Bulk Data): one resource per line, read without ever holding the file.
//!
//! A line longer than the resource limit is not buffered whole: its first bytes are kept for the
//! quarantine record and the rest is skipped, so one 2 GB line cannot exhaust memory.

use std::io::{self, BufRead};

/// What one line holds.
#[derive(Debug, PartialEq)]
pub enum LineContent {
    Text(String),
    /// The bytes are not UTF-8 (FHIR JSON must be).
    InvalidUtf8(Vec<u8>),
    /// Longer than the limit: the first `limit` bytes and the full length.
    TooLong {
        prefix: Vec<u8>,
        len: u64,
    },
}

#[derive(Debug, PartialEq)]
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    pub content: LineContent,
}

/// Iterator over the non-blank lines of an NDJSON reader.
pub struct NdjsonLines<R> {
    reader: R,
    number: u64,
    max_line_bytes: usize,
}

impl<R: BufRead> NdjsonLines<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        NdjsonLines {
            reader,
            number: 0,
            max_line_bytes,
        }
    }

    /// Reads one raw line (without the newline); `None` at end of input.
    fn read_line(&mut self) -> io::Result<Option<(Vec<u8>, u64)>> {
        let mut buf = Vec::new();
        let mut len = 0u64;
        let mut saw_any = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(saw_any.then_some((buf, len)));
            }
            saw_any = true;
            let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let room = (self.max_line_bytes + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            len += chunk.len() as u64;
            let consumed = chunk.len() + usize::from(found_newline);
            self.reader.consume(consumed);
            if found_newline {
                return Ok(Some((buf, len)));
            }
        }
    }
}

impl<R: BufRead> Iterator for NdjsonLines<R> {
    type Item = io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (mut bytes, len) = match self.read_line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            self.number += 1;
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) && len as usize <= self.max_line_bytes {
                continue;
            }
            let content = if len as usize > self.max_line_bytes {
                bytes.truncate(self.max_line_bytes);
                LineContent::TooLong { prefix: bytes, len }
            } else {
                match String::from_utf8(bytes) {
                    Ok(text) => LineContent::Text(text),
                    Err(e) => LineContent::InvalidUtf8(e.into_bytes()),
                }
            };
            return Some(Ok(Line {
                number: self.number,
                content,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        NdjsonLines::new(io::BufReader::with_capacity(4, input), max)
            .collect::<io::Result<_>>()
            .unwrap()
    }

    #[test]
    fn numbers_lines_and_skips_blank_ones() {
        let got = lines(b"{\"a\":1}\r\n\n  \n{\"b\":2}", 100);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Line {
                number: 1,
                content: LineContent::Text("{\"a\":1}".into())
            }
        );
        assert_eq!(got[1].number, 4);
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_are_values_not_errors() {
        let got = lines(b"ok\n\xff\xfe\n0123456789abcdef\nend\n", 8);
        assert!(matches!(got[1].content, LineContent::InvalidUtf8(_)));
        assert_eq!(
            got[2].content,
            LineContent::TooLong {
                prefix: b"01234567".to_vec(),
                len: 16
            }
        );
        assert_eq!(
            got[3],
            Line {
                number: 4,
                content: LineContent::Text("end".into())
            }
        );
    }
}
