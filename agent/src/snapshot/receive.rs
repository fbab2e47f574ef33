//! The receiving side: checks every part against the manifest and writes files under one root.
//! Nothing outside that root is ever created or written: names are checked with
//! [`safe_relative`], symlinks are created last-component only and never followed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_proto::agent as pb;

use super::{safe_relative, FORMAT_VERSION, MAX_FILES, MAX_PAYLOAD};

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("snapshot format version {0} is not supported by this agent (it reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("snapshot of {size} bytes exceeds this agent's limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot write {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A chunk whose size, codec and checksum were verified, decompressed, not yet written.
pub struct Decoded {
    pub file_index: u32,
    pub offset: u64,
    pub raw: Vec<u8>,
    pub wire_len: usize,
}

/// Checks a chunk's sizes, decompresses it and verifies its checksum. Stateless and blocking,
/// so chunks can be decoded in parallel and written in order by [`Receiver::write`].
pub fn decode(c: pb::Chunk) -> Result<Decoded, ReceiveError> {
    let raw_len = c.raw_len as usize;
    if raw_len == 0 || raw_len > super::CHUNK_SIZE || c.payload.len() > MAX_PAYLOAD {
        return Err(ReceiveError::Invalid(format!(
            "chunk of {raw_len} raw / {} wire bytes (at most {} / {MAX_PAYLOAD})",
            c.payload.len(),
            super::CHUNK_SIZE
        )));
    }
    let at = format!("chunk at offset {} of file {}", c.offset, c.file_index);
    let wire_len = c.payload.len();
    let raw = match pb::Codec::try_from(c.codec) {
        Ok(pb::Codec::Raw) => c.payload,
        Ok(pb::Codec::Zstd) => zstd::bulk::decompress(&c.payload, raw_len)
            .map_err(|e| ReceiveError::Corrupt(format!("{at} does not decompress: {e}")))?,
        _ => return Err(ReceiveError::Invalid(format!("unknown codec {}", c.codec))),
    };
    if raw.len() != raw_len {
        return Err(ReceiveError::Corrupt(format!(
            "{at} decodes to {} bytes, not {raw_len}",
            raw.len()
        )));
    }
    if crc32c::crc32c(&raw) != c.checksum {
        return Err(ReceiveError::Corrupt(format!("checksum mismatch in {at}")));
    }
    Ok(Decoded { file_index: c.file_index, offset: c.offset, raw, wire_len })
}

struct FileState {
    meta: pb::SnapshotFile,
    path: PathBuf,
    out: Option<File>,
    written: u64,
    hasher: blake3::Hasher,
}

/// Totals of a verified snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub files: u64,
    pub chunks: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

pub struct Receiver {
    files: Vec<FileState>,
    /// Index of the file chunks may currently be written to; earlier files are complete.
    current: usize,
    totals: Totals,
}

impl Receiver {
    /// Checks the manifest and lays out its directories and files under `root` (which must not
    /// exist yet).
    pub fn new(root: &Path, m: &pb::Manifest, max_bytes: u64) -> Result<Receiver, ReceiveError> {
        if m.format_version != FORMAT_VERSION {
            return Err(ReceiveError::Version(m.format_version));
        }
        if m.files.len() > MAX_FILES {
            return Err(ReceiveError::Invalid(format!(
                "{} files (at most {MAX_FILES})",
                m.files.len()
            )));
        }
        let size: u64 = m.files.iter().map(|f| f.size).fold(0u64, |a, b| a.saturating_add(b));
        if size > max_bytes {
            return Err(ReceiveError::TooLarge { size, limit: max_bytes });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReceiveError::Io { path, source }
        };
        std::fs::create_dir_all(root.parent().unwrap_or(root)).map_err(io(root))?;
        std::fs::create_dir(root).map_err(io(root))?;
        let mut files = Vec::with_capacity(m.files.len());
        for f in &m.files {
            let rel = safe_relative(&f.name).ok_or_else(|| {
                ReceiveError::Invalid(format!("file name {:?} leaves the snapshot root", f.name))
            })?;
            let path = root.join(&rel);
            // The parent must already have been created as a directory of this snapshot: with
            // no symlink followed, nothing can land outside the root.
            let parent = path.parent().unwrap_or(root);
            let pmeta = std::fs::symlink_metadata(parent).map_err(|_| {
                ReceiveError::Invalid(format!("{:?} comes before its directory", f.name))
            })?;
            if !pmeta.is_dir() {
                return Err(ReceiveError::Invalid(format!(
                    "parent of {:?} is not a directory",
                    f.name
                )));
            }
            let mode = f.mode & 0o7777;
            let mut out = None;
            match pb::FileKind::try_from(f.kind) {
                Ok(pb::FileKind::Directory) => {
                    if f.size != 0 {
                        return Err(ReceiveError::Invalid(format!(
                            "directory {:?} has a size",
                            f.name
                        )));
                    }
                    std::fs::create_dir(&path).map_err(io(&path))?;
                    let _ = std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(mode | 0o700),
                    );
                }
                Ok(pb::FileKind::Symlink) => {
                    if f.size != 0 || f.link_target.is_empty() || f.link_target.contains('\0') {
                        return Err(ReceiveError::Invalid(format!("bad symlink {:?}", f.name)));
                    }
                    std::os::unix::fs::symlink(&f.link_target, &path).map_err(io(&path))?;
                }
                Ok(pb::FileKind::Regular) => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode | 0o600)
                        .custom_flags(crate::sys::O_NOFOLLOW)
                        .open(&path)
                        .map_err(io(&path))?;
                    out = Some(file);
                }
                Err(_) => {
                    return Err(ReceiveError::Invalid(format!("unknown file kind {}", f.kind)))
                }
            }
            files.push(FileState {
                meta: f.clone(),
                path,
                out,
                written: 0,
                hasher: blake3::Hasher::new(),
            });
        }
        Ok(Receiver { files, current: 0, totals: Totals::default() })
    }

    /// Verifies one chunk and writes it. Blocking.
    pub fn chunk(&mut self, c: pb::Chunk) -> Result<(), ReceiveError> {
        let d = decode(c)?;
        self.write(d)
    }

    /// Writes a chunk [`decode`] has verified, checking it against the manifest and the order of
    /// what came before. Blocking.
    pub fn write(&mut self, d: Decoded) -> Result<(), ReceiveError> {
        let idx = d.file_index as usize;
        if idx >= self.files.len() {
            return Err(ReceiveError::Invalid(format!(
                "chunk for file {idx} of {}",
                self.files.len()
            )));
        }
        if idx < self.current {
            return Err(ReceiveError::Invalid(format!(
                "chunk for file {:?} after later files began (out of order)",
                self.files[idx].meta.name
            )));
        }
        // Moving on: every file skipped over must be complete.
        while self.current < idx {
            self.complete(self.current)?;
            self.current += 1;
        }
        let f = &mut self.files[idx];
        if d.offset != f.written {
            return Err(ReceiveError::Invalid(format!(
                "chunk at offset {} of {:?}, expected {} (out of order)",
                d.offset, f.meta.name, f.written
            )));
        }
        if f.written + d.raw.len() as u64 > f.meta.size {
            return Err(ReceiveError::Invalid(format!(
                "{:?} is longer than the {} bytes the manifest announced",
                f.meta.name, f.meta.size
            )));
        }
        let out = f.out.as_mut().ok_or_else(|| {
            ReceiveError::Invalid(format!(
                "chunk for {:?}, which is not a regular file",
                f.meta.name
            ))
        })?;
        out.write_all(&d.raw)
            .map_err(|source| ReceiveError::Io { path: f.path.clone(), source })?;
        f.hasher.update(&d.raw);
        f.written += d.raw.len() as u64;
        self.totals.chunks += 1;
        self.totals.bytes_raw += d.raw.len() as u64;
        self.totals.bytes_wire += d.wire_len as u64;
        Ok(())
    }

    fn complete(&mut self, idx: usize) -> Result<(), ReceiveError> {
        let f = &mut self.files[idx];
        if f.written != f.meta.size {
            return Err(ReceiveError::Invalid(format!(
                "{:?} ended after {} of {} bytes",
                f.meta.name, f.written, f.meta.size
            )));
        }
        // Closed, not synced: the images are read back at once by the restore, and a crash of
        // this node before commit loses nothing (the source still holds the original).
        drop(f.out.take());
        Ok(())
    }

    /// Checks the trailer: every file complete, totals and every digest equal.
    pub fn finish(mut self, t: &pb::Trailer) -> Result<Totals, ReceiveError> {
        while self.current < self.files.len() {
            self.complete(self.current)?;
            self.current += 1;
        }
        let got = self.totals;
        if t.files != self.files.len() as u64
            || t.chunks != got.chunks
            || t.bytes_raw != got.bytes_raw
        {
            return Err(ReceiveError::Corrupt(format!(
                "trailer says {} files, {} chunks, {} bytes; received {}, {}, {}",
                t.files,
                t.chunks,
                t.bytes_raw,
                self.files.len(),
                got.chunks,
                got.bytes_raw
            )));
        }
        if t.file_digests.len() != self.files.len() {
            return Err(ReceiveError::Invalid(format!(
                "trailer carries {} digests for {} files",
                t.file_digests.len(),
                self.files.len()
            )));
        }
        for (f, want) in self.files.iter().zip(&t.file_digests) {
            let have = f.hasher.finalize().to_hex();
            let announced = &f.meta.digest;
            if have.as_str() != want || (!announced.is_empty() && announced != want) {
                return Err(ReceiveError::Corrupt(format!(
                    "digest mismatch for {:?}",
                    f.meta.name
                )));
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::send::{self, Progress, SendFault};
    use super::super::{collect, Sources};
    use super::*;

    /// Runs the real sender into a receiver, optionally tampering with parts on the way.
    fn roundtrip(
        fault: SendFault,
        tamper: impl Fn(&mut pb::SnapshotPart),
    ) -> (tempfile::TempDir, Result<Totals, ReceiveError>) {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        // Compressible and incompressible content, more than two chunks.
        let mut big: Vec<u8> =
            (0..super::super::CHUNK_SIZE * 2 + 1234).map(|i| (i / 7) as u8).collect();
        let mut x = 0x1234_5678_u32;
        for b in big.iter_mut().take(super::super::CHUNK_SIZE) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(src.join("pages.img"), &big).unwrap();
        std::fs::write(src.join("sub/empty"), b"").unwrap();
        std::fs::write(src.join("sub/small"), b"state").unwrap();
        let entries = collect(&Sources { images: &src, work: None, log: None }).unwrap();
        let manifest = pb::Manifest {
            format_version: FORMAT_VERSION,
            files: entries.iter().map(|e| e.file.clone()).collect(),
            ..Default::default()
        };
        let (mut rx, thread) = send::start(manifest, entries, fault, Arc::new(Progress::default()));
        let dst = d.path().join("dst");
        let mut first = rx.blocking_recv().unwrap();
        tamper(&mut first);
        let Some(pb::snapshot_part::Part::Manifest(m)) = first.part else {
            panic!("manifest first")
        };
        let result = (|| {
            let mut r = Receiver::new(&dst, &m, u64::MAX)?;
            while let Some(mut p) = rx.blocking_recv() {
                tamper(&mut p);
                match p.part {
                    Some(pb::snapshot_part::Part::Chunk(c)) => r.chunk(c)?,
                    Some(pb::snapshot_part::Part::Trailer(t)) => return r.finish(&t),
                    _ => panic!("unexpected part"),
                }
            }
            panic!("no trailer")
        })();
        drop(rx);
        let _ = thread.join();
        if result.is_ok() {
            assert_eq!(std::fs::read(dst.join("images/pages.img")).unwrap(), big);
            assert_eq!(std::fs::read(dst.join("images/sub/small")).unwrap(), b"state");
        }
        (d, result)
    }

    #[test]
    fn clean_stream_roundtrips() {
        let (_d, r) = roundtrip(SendFault::None, |_| {});
        let t = r.unwrap();
        assert_eq!(t.chunks, 4);
        assert!(t.bytes_wire < t.bytes_raw, "compressible content shrinks");
    }

    #[test]
    fn corrupted_chunk_is_refused() {
        let (_d, r) = roundtrip(SendFault::CorruptChunk(1), |_| {});
        assert!(matches!(r, Err(ReceiveError::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn out_of_order_and_oversized_parts_are_refused() {
        let (_d, r) = roundtrip(SendFault::None, |p| {
            if let Some(pb::snapshot_part::Part::Chunk(c)) = &mut p.part {
                if c.offset > 0 {
                    c.offset += 1;
                }
            }
        });
        assert!(r.unwrap_err().to_string().contains("out of order"));
        let (_d, r) = roundtrip(SendFault::None, |p| {
            if let Some(pb::snapshot_part::Part::Chunk(c)) = &mut p.part {
                c.raw_len = (super::super::CHUNK_SIZE + 1) as u32;
            }
        });
        assert!(r.unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn lying_sizes_and_digests_are_refused() {
        let (_d, r) = roundtrip(SendFault::None, |p| {
            if let Some(pb::snapshot_part::Part::Manifest(m)) = &mut p.part {
                m.files[1].size -= 10;
            }
        });
        assert!(r.unwrap_err().to_string().contains("longer than"));
        let (_d, r) = roundtrip(SendFault::None, |p| {
            if let Some(pb::snapshot_part::Part::Trailer(t)) = &mut p.part {
                t.file_digests[1] = "00".repeat(32);
            }
        });
        assert!(r.unwrap_err().to_string().contains("digest mismatch"));
    }

    #[test]
    fn escaping_names_are_refused_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        for name in ["../evil", "/tmp/evil", "images/../../evil"] {
            let m = pb::Manifest {
                format_version: FORMAT_VERSION,
                files: vec![pb::SnapshotFile { name: name.into(), size: 1, ..Default::default() }],
                ..Default::default()
            };
            let root = d.path().join(format!("r{}", name.len()));
            assert!(Receiver::new(&root, &m, u64::MAX).is_err(), "{name}");
        }
        assert!(!d.path().join("evil").exists());
        let m = pb::Manifest { format_version: 99, ..Default::default() };
        assert!(matches!(
            Receiver::new(&d.path().join("v"), &m, 1),
            Err(ReceiveError::Version(99))
        ));
    }
}
