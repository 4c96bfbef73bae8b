//! NDJSON files as a source: plain, gzip (`.gz`) or standard input (`-`), one usage record per line.
//! A record's position is `file:line` (1-based).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use aifinops_schemas::SourceRef;

use crate::IngestError;
use crate::decode::Decoder;
use crate::formats::Format;

/// How standard input is named in dead-letter sources.
pub const STDIN: &str = "<stdin>";

/// Reads a list of NDJSON files in order, feeding lines to a [`Decoder`].
pub struct FileSource {
    files: Vec<(PathBuf, Format)>,
    format: Format,
    next_file: usize,
    current: Option<(String, Box<dyn BufRead + Send>)>,
    line: u64,
    buf: Vec<u8>,
    bytes_read: u64,
    /// Lines already consumed per file by an earlier, interrupted run (skipped, not decoded again).
    resume: std::collections::BTreeMap<String, u64>,
    /// Files read to the end.
    finished: Vec<String>,
}

/// What one call to [`FileSource::read_into`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Chunk {
    pub records: u64,
    pub accepted: u64,
    /// Largest event time accepted in this chunk.
    pub max_ts_ms: Option<i64>,
    pub done: bool,
}

impl FileSource {
    /// Files whose format is detected per record (`auto`).
    pub fn new(files: Vec<PathBuf>) -> Self {
        Self::with_formats(files.into_iter().map(|f| (f, Format::Auto)).collect())
    }

    /// Files, each with the format of its records.
    pub fn with_formats(files: Vec<(PathBuf, Format)>) -> Self {
        FileSource {
            files,
            format: Format::Auto,
            next_file: 0,
            current: None,
            line: 0,
            buf: Vec::with_capacity(4096),
            bytes_read: 0,
            resume: Default::default(),
            finished: vec![],
        }
    }

    /// Skips the first `lines` lines of each named file (positions of an interrupted replay).
    pub fn resume_from(&mut self, positions: std::collections::BTreeMap<String, u64>) {
        self.resume = positions;
    }

    /// Lines consumed per file so far; `u64::MAX` marks a finished file.
    /// Standard input has no identity, so it has no position: it is never resumed nor refused.
    pub fn positions(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> =
            self.finished.iter().filter(|f| *f != STDIN).map(|f| (f.clone(), u64::MAX)).collect();
        if let Some((name, _)) = &self.current
            && name != STDIN
        {
            m.insert(name.clone(), self.line);
        }
        m
    }

    /// Bytes read so far (compressed bytes for `.gz`), for progress reporting.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Total size of the input files on disk (0 for stdin), for progress reporting.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().filter_map(|(f, _)| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }

    fn open_next(&mut self) -> Result<bool, IngestError> {
        let Some((path, format)) = self.files.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.format = format;
        self.next_file += 1;
        self.line = 0;
        let name = path.display().to_string();
        let reader: Box<dyn Read + Send> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(&path).map_err(|e| IngestError::Io { context: format!("opening {name}"), source: e })?)
        };
        let reader: Box<dyn BufRead + Send> = if name.ends_with(".gz") {
            Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(BufReader::new(reader))))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, reader))
        };
        self.current = Some((if name == "-" { STDIN.into() } else { name }, reader));
        Ok(true)
    }

    /// Decodes up to `max_records` lines into `decoder`. Blank lines are not records and are skipped.
    pub fn read_into(&mut self, decoder: &mut Decoder, max_records: usize, now_ms: i64) -> Result<Chunk, IngestError> {
        let mut chunk = Chunk::default();
        while (chunk.records as usize) < max_records {
            if self.current.is_none() && !self.open_next()? {
                chunk.done = true;
                break;
            }
            let (name, reader) = self.current.as_mut().expect("open file");
            self.buf.clear();
            let io = |line: u64, e| IngestError::Io { context: format!("reading {name} after line {line}"), source: e };
            // A line is read up to the record limit (and its line break) only: a line of gigabytes must
            // not be held in memory to be rejected. The rest of a longer line is skipped.
            let limit = decoder.max_record_bytes() as u64 + 2;
            let n = (&mut *reader).take(limit).read_until(b'\n', &mut self.buf).map_err(|e| io(self.line, e))?;
            let (mut skipped, mut line_break) = (0u64, 0u64);
            if n as u64 == limit && self.buf.last() != Some(&b'\n') {
                loop {
                    let rest = reader.fill_buf().map_err(|e| io(self.line, e))?;
                    if rest.is_empty() {
                        break;
                    }
                    let (used, end) = match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    reader.consume(used);
                    skipped += used as u64;
                    if end {
                        line_break = 1;
                        break;
                    }
                }
            }
            if n == 0 {
                if let Some((name, _)) = self.current.take() {
                    self.finished.push(name);
                }
                continue;
            }
            self.bytes_read += n as u64 + skipped;
            self.line += 1;
            if self.resume.get(name.as_str()).is_some_and(|done| self.line <= *done) {
                continue;
            }
            if skipped > 0 {
                chunk.records += 1;
                let (line, len) = (self.line, n as u64 + skipped - line_break);
                decoder.push_too_large(&self.buf, len, || SourceRef::File { path: name.clone(), line }, now_ms);
                continue;
            }
            let mut rec: &[u8] = &self.buf;
            while let [rest @ .., b'\n' | b'\r'] = rec {
                rec = rest;
            }
            if rec.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            chunk.records += 1;
            let line = self.line;
            if let Some(ts) = decoder.push(rec, self.format, || SourceRef::File { path: name.clone(), line }, now_ms) {
                chunk.accepted += 1;
                chunk.max_ts_ms = Some(chunk.max_ts_ms.map_or(ts, |m: i64| m.max(ts)));
            }
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    use crate::{OwnerMap, PriceCatalog, RawPolicy};

    /// A line far over the record limit is a `too_large` dead letter with its real size, read only up to
    /// the limit (the rest is skipped, not buffered), and the next line is read as usual.
    #[test]
    fn a_huge_line_is_rejected_without_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"event_id":"a","timestamp":1764496800000,"provider":"openai","model":"gpt-4o","input_tokens":1,"output_tokens":1}"#;
        let f = dir.path().join("big.ndjson");
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(5_000_000));
        std::fs::write(&f, format!("{good}\n{huge}\n{good}\n{huge}")).unwrap();
        let mut d =
            Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(OwnerMap::default()), 1 << 20, RawPolicy::Raw);
        let mut src = FileSource::new(vec![f.clone()]);
        let c = src.read_into(&mut d, 100, 0).unwrap();
        assert_eq!((c.records, c.accepted), (4, 2));
        assert!(src.buf.capacity() < 2 << 20, "{} bytes buffered", src.buf.capacity());
        assert_eq!(src.bytes_read(), std::fs::metadata(&f).unwrap().len());
        let out = d.finish();
        let dl: Vec<_> = out.dead_letters.iter().map(|d| (d.source.clone(), d.kind, d.reason.clone())).collect();
        let reason = format!("record is {} bytes, over the 1048576 byte limit", huge.len());
        assert_eq!(
            dl,
            vec![
                (format!("{}:2", f.display()), "too_large", reason.clone()),
                (format!("{}:4", f.display()), "too_large", reason)
            ]
        );
        assert_eq!(out.dead_letters[0].raw.len(), 64 * 1024, "the dead letter keeps the head");
    }

    #[test]
    fn reads_plain_and_gzip_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"event_id":"a","timestamp":1764496800000,"provider":"openai","model":"gpt-4o","input_tokens":1,"output_tokens":1}"#;
        let plain = dir.path().join("a.ndjson");
        std::fs::write(&plain, format!("{good}\n\nbroken\r\n{good}")).unwrap();
        let gz = dir.path().join("b.ndjson.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        writeln!(enc, "{good}\n{{").unwrap();
        enc.finish().unwrap();
        let mut d =
            Decoder::new(Arc::new(PriceCatalog::builtin()), Arc::new(OwnerMap::default()), 1 << 20, RawPolicy::Raw);
        let mut src = FileSource::new(vec![plain.clone(), gz.clone()]);
        let c = src.read_into(&mut d, 100, 0).unwrap();
        assert!(c.done);
        assert_eq!((c.records, c.accepted), (5, 3));
        let out = d.finish();
        let sources: Vec<_> = out.dead_letters.iter().map(|d| d.source.clone()).collect();
        assert_eq!(sources, vec![format!("{}:3", plain.display()), format!("{}:2", gz.display())]);
        assert_eq!(out.dead_letters[0].raw, b"broken");
    }
}
