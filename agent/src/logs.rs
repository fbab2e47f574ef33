//! A workload's captured stdout and stderr: the agent owns the pipes, splits what arrives into
//! lines and appends them, one JSON object per line, to `<workload dir>/output.log`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// Longest line kept whole; longer output is split at this size.
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    #[serde(rename = "o")]
    Stdout,
    #[serde(rename = "e")]
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(rename = "t")]
    pub at_ms: i64,
    #[serde(rename = "s")]
    pub stream: Stream,
    #[serde(rename = "l")]
    pub text: String,
}

struct Inner {
    /// Open for appends only while a capture writes to it (see [`LogStore::writer`]): a workload
    /// that ended holds no descriptor, however many of them the agent remembers.
    file: Option<File>,
    writers: usize,
    /// Byte offset of every line in the file, for reads from a given line.
    offsets: Vec<u64>,
    len: u64,
}

/// An append-only log of one workload's output.
#[derive(Clone)]
pub struct LogStore {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

/// Opens `path` (creating it mode 0600: a log holds whatever the workload printed) for reads
/// and appends; a symlink there is refused, never followed.
fn open_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(crate::sys::fsmode::FILE)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)?;
    crate::sys::fsmode::tighten_file(&file)?;
    Ok(file)
}

impl LogStore {
    /// Opens (or creates) the log at `path`, indexing what it already holds. A symlink there is
    /// refused, never followed (a received log could be one). No descriptor is kept: writers
    /// open it ([`LogStore::writer`]), each read opens it anew.
    pub fn open(path: &Path) -> std::io::Result<LogStore> {
        let file = open_file(path)?;
        let mut offsets = Vec::new();
        let mut len = 0u64;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            offsets.push(len);
            len += n as u64;
        }
        Ok(LogStore {
            path: path.to_path_buf(),
            inner: Arc::new(Mutex::new(Inner { file: None, writers: 0, offsets, len })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the log open for appends until every writer taken is dropped.
    pub fn writer(&self) -> std::io::Result<LogWriter> {
        let mut inner = self.inner.lock().expect("log poisoned");
        if inner.file.is_none() {
            inner.file = Some(open_file(&self.path)?);
        }
        inner.writers += 1;
        Ok(LogWriter { log: self.clone() })
    }

    /// Appends one line (opening the log for this line alone when no writer holds it open).
    pub fn append(&self, line: &LogLine) -> std::io::Result<()> {
        let mut json = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        json.push(b'\n');
        let mut inner = self.inner.lock().expect("log poisoned");
        match inner.file.as_mut() {
            Some(f) => f.write_all(&json)?,
            None => open_file(&self.path)?.write_all(&json)?,
        }
        let at = inner.len;
        inner.offsets.push(at);
        inner.len += json.len() as u64;
        Ok(())
    }

    pub fn line_count(&self) -> u64 {
        self.inner.lock().expect("log poisoned").offsets.len() as u64
    }

    /// Up to `max` lines starting at line `from`, and the number of the line after them.
    pub fn read(&self, from: u64, max: usize) -> std::io::Result<(Vec<LogLine>, u64)> {
        let inner = self.inner.lock().expect("log poisoned");
        let total = inner.offsets.len() as u64;
        if from >= total {
            return Ok((Vec::new(), total));
        }
        let start = inner.offsets[from as usize];
        let end = (from + max as u64).min(total);
        drop(inner);
        // A descriptor of its own, closed when this read ends.
        let mut file =
            OpenOptions::new().read(true).custom_flags(crate::sys::O_NOFOLLOW).open(&self.path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut out = Vec::with_capacity((end - from) as usize);
        let mut reader = BufReader::new(file);
        let mut buf = String::new();
        for _ in from..end {
            buf.clear();
            if reader.read_line(&mut buf)? == 0 {
                break;
            }
            if let Ok(l) = serde_json::from_str::<LogLine>(buf.trim_end()) {
                out.push(l);
            }
        }
        let next = from + out.len() as u64;
        Ok((out, next))
    }
}

/// Holds a [`LogStore`] open for appends; the last one dropped closes it.
pub struct LogWriter {
    log: LogStore,
}

impl LogWriter {
    pub fn append(&self, line: &LogLine) -> std::io::Result<()> {
        self.log.append(line)
    }

    pub fn path(&self) -> &Path {
        self.log.path()
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let mut inner = self.log.inner.lock().expect("log poisoned");
        inner.writers -= 1;
        if inner.writers == 0 {
            inner.file = None;
        }
    }
}

/// Splits a byte stream into lines; a line longer than [`MAX_LINE`] is cut.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(String::from_utf8_lossy(&line).into_owned());
            } else if self.pending.len() >= MAX_LINE {
                let rest = self.pending.split_off(MAX_LINE);
                let line = std::mem::replace(&mut self.pending, rest);
                out.push(String::from_utf8_lossy(&line).into_owned());
            } else {
                return out;
            }
        }
    }

    /// What is left once the stream has ended.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

/// Copies everything read from `pipe` (a read end) into `log` until the writers close it.
/// The log is held open for appends (`log`) until then.
pub fn capture(pipe: OwnedFd, stream: Stream, log: LogWriter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
            Ok(rx) => rx,
            Err(err) => {
                tracing::error!(?err, path = ?log.path(), "cannot read workload output");
                return;
            }
        };
        let mut splitter = LineSplitter::default();
        let mut buf = vec![0u8; 64 * 1024];
        let write = |text: String| {
            let line = LogLine { at_ms: crate::sys::now_ms(), stream, text };
            if let Err(err) = log.append(&line) {
                tracing::warn!(?err, path = ?log.path(), "cannot append to workload log");
            }
        };
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => splitter.push(&buf[..n]).into_iter().for_each(write),
            }
        }
        if let Some(rest) = splitter.finish() {
            write(rest);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_partial_and_long_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\r\n\n"), vec!["world", ""]);
        let long = vec![b'x'; MAX_LINE + 10];
        let out = s.push(&long);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(s.finish().unwrap().len(), 10);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn the_log_is_private_and_open_only_while_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = LogStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an older, wider log is tightened");
        let held = || log.inner.lock().unwrap().file.is_some();
        assert!(!held(), "no descriptor without a writer");
        let (a, b) = (log.writer().unwrap(), log.writer().unwrap());
        a.append(&LogLine { at_ms: 1, stream: Stream::Stdout, text: "one".into() }).unwrap();
        drop(a);
        assert!(held(), "open while a writer remains");
        b.append(&LogLine { at_ms: 2, stream: Stream::Stderr, text: "two".into() }).unwrap();
        drop(b);
        assert!(!held(), "closed after the last writer");
        let (lines, next) = log.read(0, 10).unwrap();
        assert_eq!((lines.len(), next), (2, 2));
        assert!(!held(), "a read opens a descriptor of its own");
    }

    #[test]
    fn store_reads_from_a_line_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let log = LogStore::open(&path).unwrap();
        for i in 0..5 {
            let stream = if i % 2 == 0 { Stream::Stdout } else { Stream::Stderr };
            log.append(&LogLine { at_ms: i, stream, text: format!("line {i}") }).unwrap();
        }
        let (lines, next) = log.read(3, 10).unwrap();
        assert_eq!(next, 5);
        assert_eq!(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["line 3", "line 4"]);
        assert_eq!(lines[0].stream, Stream::Stderr);

        let again = LogStore::open(&path).unwrap();
        assert_eq!(again.line_count(), 5);
        let (lines, next) = again.read(0, 2).unwrap();
        assert_eq!((lines.len(), next), (2, 2));
        assert_eq!(again.read(9, 2).unwrap(), (vec![], 5));
    }
}
