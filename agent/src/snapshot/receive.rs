//! The receiving side: checks every part against the manifest and writes files under one root.
//! Nothing outside that root is ever created or written: names are checked with
//! [`check_name`], symlinks are created last-component only and never followed.
//!
//! Hostile input is refused before it costs anything: a chunk's declared raw size and its wire
//! size are checked against [`CHUNK_SIZE`] and [`MAX_PAYLOAD`] before any allocation, zstd's own
//! declared content size before decompression, and decompression writes into a buffer capped at
//! the declared raw size (so a zip bomb fails instead of growing); a manifest's file count, name
//! lengths and declared total are checked before anything is created. Set-user-ID and
//! set-group-ID bits are never recreated. Every failure is a [`ReceiveError`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_proto::agent as pb;

use super::{
    bit, bitmap_len, check_name, nonzero_len, pages, ACCEPTED_VERSIONS, CHUNK_SIZE, FORMAT_VERSION,
    MAX_FILES, MAX_LINK_TARGET, MAX_PAYLOAD, PAGE,
};

/// Zero pages in a row from which the writer leaves a hole instead of writing zeros (a hole in
/// a new file reads as zeros, and costs no memory on tmpfs); shorter runs (which an honest sender
/// does not leave out) are written with their neighbours.
const HOLE_PAGES: usize = super::ZERO_RUN;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("snapshot format version {0} is not supported by this agent (it reads versions 1 to {FORMAT_VERSION})")]
    Version(u32),
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("snapshot of {size} bytes exceeds {what} of {limit} bytes")]
    TooLarge { size: u64, limit: u64, what: &'static str },
    #[error("cannot write {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A chunk whose size, codec and checksum were verified, decompressed, not yet written. Its zero
/// pages are not put back in place: they are written as zeros, or left as holes, from the bitmap.
pub struct Decoded {
    pub file_index: u32,
    pub offset: u64,
    /// The chunk's pages the bitmap does not mark as zeros, in order (the whole chunk without one):
    /// a raw chunk's payload as received (no copy), or what its zstd frame decompressed to.
    pub data: prost::bytes::Bytes,
    /// The chunk's length, zero pages included.
    pub raw_len: usize,
    pub wire_len: usize,
    /// The zero-page bitmap the chunk came with (empty: none).
    pub zero_pages: Vec<u8>,
    /// The crc32c of the whole chunk, verified.
    pub checksum: u32,
}

/// A run of a decoded chunk: `len` bytes at `at` in the chunk, from `data[from..]` or zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    at: usize,
    len: usize,
    /// Where the bytes start in `data`; None: zero pages.
    from: Option<usize>,
}

/// The runs of a chunk of `raw_len` bytes whose zero pages `map` marks, in order.
pub(crate) fn runs(raw_len: usize, map: &[u8]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut from = 0;
    for i in 0..pages(raw_len) {
        let (at, len) = (i * PAGE, PAGE.min(raw_len - i * PAGE));
        let zero = bit(map, i);
        match out.last_mut() {
            Some(r) if r.from.is_none() == zero => r.len += len,
            _ => out.push(Run { at, len, from: (!zero).then_some(from) }),
        }
        if !zero {
            from += len;
        }
    }
    out
}

/// Zeros to write, hash and checksum zero pages from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// `len` zero bytes, in pieces.
fn zeros<'a>(len: usize) -> impl Iterator<Item = &'a [u8]> {
    (0..len).step_by(ZEROS.len()).map(move |o| &ZEROS[..ZEROS.len().min(len - o)])
}

impl Decoded {
    /// The chunk's bytes in order, zero pages included, in pieces.
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        runs(self.raw_len, &self.zero_pages).into_iter().flat_map(move |r| {
            let data = r.from.map(|f| &self.data[f..f + r.len]);
            data.into_iter().chain(zeros(if data.is_none() { r.len } else { 0 }))
        })
    }

    /// The whole chunk, zero pages in place.
    pub fn raw(&self) -> Vec<u8> {
        self.pieces().flatten().copied().collect()
    }

    /// Hashes the whole chunk, zero pages included.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        self.pieces().for_each(|p| {
            h.update(p);
        });
    }

    /// Writes the chunk into `out` at `at`: runs of at least `hole_pages` zero pages stay holes
    /// (they read as zeros in a file written front to back, and take no space), shorter ones are
    /// written as zeros.
    pub fn write_at(&self, out: &std::fs::File, at: u64, hole_pages: usize) -> std::io::Result<()> {
        for r in runs(self.raw_len, &self.zero_pages) {
            let to = at + r.at as u64;
            match r.from {
                Some(f) => out.write_all_at(&self.data[f..f + r.len], to)?,
                None if r.len >= hole_pages * PAGE => {}
                None => {
                    let mut o = to;
                    for z in zeros(r.len) {
                        out.write_all_at(z, o)?;
                        o += z.len() as u64;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a chunk's sizes, decompresses it and verifies its checksum. Stateless and blocking,
/// so chunks can be decoded in parallel and written in order by [`Receiver::write`].
pub fn decode(c: pb::Chunk) -> Result<Decoded, ReceiveError> {
    let raw_len = c.raw_len as usize;
    let wire_len = c.payload.len();
    let at = format!("chunk at offset {} of file {}", c.offset, c.file_index);
    if raw_len == 0 {
        return Err(ReceiveError::Invalid(format!("{at} declares 0 raw bytes")));
    }
    if raw_len > CHUNK_SIZE {
        return Err(ReceiveError::Invalid(format!(
            "{at} declares {raw_len} raw bytes (limit {CHUNK_SIZE} bytes per chunk)"
        )));
    }
    if wire_len > MAX_PAYLOAD {
        return Err(ReceiveError::Invalid(format!(
            "{at} carries {wire_len} wire bytes (limit {MAX_PAYLOAD} bytes per chunk)"
        )));
    }
    let map = c.zero_pages;
    if !map.is_empty() {
        if map.len() != bitmap_len(raw_len) {
            return Err(ReceiveError::Invalid(format!(
                "{at} has a zero-page bitmap of {} bytes for {} pages (expected {})",
                map.len(),
                pages(raw_len),
                bitmap_len(raw_len)
            )));
        }
        if (pages(raw_len)..map.len() * 8).any(|i| bit(&map, i)) {
            return Err(ReceiveError::Invalid(format!(
                "{at} marks zero pages past its {} pages",
                pages(raw_len)
            )));
        }
    }
    // What the payload decodes to: the pages that are not zeros.
    let data_len = nonzero_len(raw_len, &map);
    let data = match pb::Codec::try_from(c.codec) {
        Ok(pb::Codec::Raw) => c.payload,
        Ok(pb::Codec::Zstd) => {
            // zstd's own header may declare the size: refuse a lie before decompressing.
            if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&c.payload) {
                if declared != data_len as u64 {
                    return Err(ReceiveError::Corrupt(format!(
                        "{at}: its zstd frame declares {declared} bytes, the chunk {data_len}"
                    )));
                }
            }
            // Into a buffer of at most data_len bytes (<= CHUNK_SIZE): more output is an error.
            // One decompression context per thread, not one per chunk.
            thread_local! {
                static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
            }
            ZSTD.with(|z| match z.borrow_mut().as_mut() {
                Some(z) => z.decompress(&c.payload, data_len),
                None => zstd::bulk::decompress(&c.payload, data_len),
            })
            .map_err(|e| ReceiveError::Corrupt(format!("{at} does not decompress: {e}")))?
            .into()
        }
        _ => return Err(ReceiveError::Invalid(format!("{at} has unknown codec {}", c.codec))),
    };
    if data.len() != data_len {
        return Err(ReceiveError::Corrupt(format!(
            "{at} decodes to {} bytes, not {data_len}",
            data.len()
        )));
    }
    let d = Decoded {
        file_index: c.file_index,
        offset: c.offset,
        data,
        raw_len,
        wire_len: wire_len + map.len(),
        zero_pages: map,
        checksum: c.checksum,
    };
    // The checksum is of the whole chunk: zero pages count as they are, without being put back.
    if d.pieces().fold(0, crc32c::crc32c_append) != c.checksum {
        return Err(ReceiveError::Corrupt(format!("checksum mismatch in {at}")));
    }
    Ok(d)
}

struct FileState {
    meta: pb::SnapshotFile,
    path: PathBuf,
    regular: bool,
    written: u64,
}

/// The sum of the sizes a manifest declares (saturating: a lie cannot wrap around).
pub fn declared_size(m: &pb::Manifest) -> u64 {
    m.files.iter().map(|f| f.size).fold(0u64, |a, b| a.saturating_add(b))
}

/// Totals of a verified snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub files: u64,
    pub chunks: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

/// Receives one snapshot into a directory. Memory and file descriptors do not grow with the
/// number of files: only the file being written is open and hashed; earlier files keep their
/// digest.
pub struct Receiver {
    files: Vec<FileState>,
    /// Index of the file chunks may currently be written to; earlier files are complete.
    current: usize,
    /// The current file, opened at its first chunk, and the hash of what it received so far.
    out: Option<File>,
    hasher: blake3::Hasher,
    /// Digests of the complete files, in manifest order.
    digests: Vec<blake3::Hash>,
    totals: Totals,
}

impl Receiver {
    /// Checks the manifest and lays out its directories and files under `root` (which must not
    /// exist yet).
    pub fn new(root: &Path, m: &pb::Manifest, max_bytes: u64) -> Result<Receiver, ReceiveError> {
        if !ACCEPTED_VERSIONS.contains(&m.format_version) {
            return Err(ReceiveError::Version(m.format_version));
        }
        if m.files.len() > MAX_FILES {
            return Err(ReceiveError::Invalid(format!(
                "manifest lists {} files (limit {MAX_FILES})",
                m.files.len()
            )));
        }
        let size = declared_size(m);
        if size > max_bytes {
            return Err(ReceiveError::TooLarge {
                size,
                limit: max_bytes,
                what: "this agent's limit (--max-snapshot-mib)",
            });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReceiveError::Io { path, source }
        };
        std::fs::create_dir_all(root.parent().unwrap_or(root)).map_err(io(root))?;
        // Not listable by others; files keep the modes the manifest gives them (a cooperative
        // workload running as another user reads its own state files here).
        crate::sys::fsmode::new_dir(root, crate::sys::fsmode::TRAVERSE).map_err(io(root))?;
        let exists = |name: &str, path: &Path| {
            let (name, path) = (name.to_string(), path.to_path_buf());
            move |source: std::io::Error| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    // The root is new and only this receiver writes there.
                    ReceiveError::Invalid(format!("{name:?} appears twice in the manifest"))
                } else {
                    ReceiveError::Io { path, source }
                }
            }
        };
        let mut files = Vec::new();
        for f in &m.files {
            let rel = check_name(&f.name).map_err(ReceiveError::Invalid)?;
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
            // Never set-user-ID or set-group-ID: the receiver creates files as root.
            let mode = f.mode & 0o1777;
            match pb::FileKind::try_from(f.kind) {
                Ok(pb::FileKind::Directory) => {
                    if f.size != 0 {
                        return Err(ReceiveError::Invalid(format!(
                            "directory {:?} has a size",
                            f.name
                        )));
                    }
                    // Created closed, then given the sender's mode.
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(exists(&f.name, &path))?;
                    let _ = std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(mode | 0o700),
                    );
                }
                Ok(pb::FileKind::Symlink) => {
                    if f.size != 0 || f.link_target.is_empty() || f.link_target.contains('\0') {
                        return Err(ReceiveError::Invalid(format!(
                            "symlink {:?} has a size, or an empty or NUL-bearing target",
                            f.name
                        )));
                    }
                    if f.link_target.len() > MAX_LINK_TARGET {
                        return Err(ReceiveError::Invalid(format!(
                            "symlink {:?} has a target of {} bytes (limit {MAX_LINK_TARGET} bytes)",
                            f.name,
                            f.link_target.len()
                        )));
                    }
                    std::os::unix::fs::symlink(&f.link_target, &path)
                        .map_err(exists(&f.name, &path))?;
                }
                Ok(pb::FileKind::Regular) => {
                    // Created now (so the layout is checked up front), written when its turn comes.
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode((mode & 0o777) | 0o600)
                        .custom_flags(crate::sys::O_NOFOLLOW)
                        .open(&path)
                        .map_err(exists(&f.name, &path))?;
                }
                Err(_) => {
                    return Err(ReceiveError::Invalid(format!("unknown file kind {}", f.kind)))
                }
            }
            files.push(FileState {
                meta: f.clone(),
                path,
                regular: f.kind == pb::FileKind::Regular as i32,
                written: 0,
            });
        }
        Ok(Receiver {
            files,
            current: 0,
            out: None,
            hasher: blake3::Hasher::new(),
            digests: Vec::new(),
            totals: Totals::default(),
        })
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
        if f.written + d.raw_len as u64 > f.meta.size {
            return Err(ReceiveError::Invalid(format!(
                "{:?} is longer than the {} bytes the manifest announced",
                f.meta.name, f.meta.size
            )));
        }
        if !f.regular {
            return Err(ReceiveError::Invalid(format!(
                "chunk for {:?}, which is not a regular file",
                f.meta.name
            )));
        }
        let io = |source| ReceiveError::Io { path: f.path.clone(), source };
        if self.out.is_none() {
            // The file this receiver created; O_NOFOLLOW all the same.
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(crate::sys::O_NOFOLLOW)
                .open(&f.path)
                .map_err(io)?;
            self.out = Some(file);
        }
        if let Some(out) = self.out.as_ref() {
            d.write_at(out, d.offset, HOLE_PAGES).map_err(io)?;
        }
        d.hash_into(&mut self.hasher);
        f.written += d.raw_len as u64;
        self.totals.chunks += 1;
        self.totals.bytes_raw += d.raw_len as u64;
        self.totals.bytes_wire += d.wire_len as u64;
        Ok(())
    }

    fn complete(&mut self, idx: usize) -> Result<(), ReceiveError> {
        let f = &self.files[idx];
        if f.written != f.meta.size {
            return Err(ReceiveError::Invalid(format!(
                "{:?} ended after {} of {} bytes",
                f.meta.name, f.written, f.meta.size
            )));
        }
        // A file ending in a hole gets its length here. Closed, not synced: the images are read
        // back at once by the restore, and a crash of this node before commit loses nothing
        // (the source still holds the original).
        if let Some(out) = self.out.take() {
            out.set_len(f.written)
                .map_err(|source| ReceiveError::Io { path: f.path.clone(), source })?;
        }
        self.digests.push(self.hasher.finalize());
        self.hasher.reset();
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
        for ((f, have), want) in self.files.iter().zip(&self.digests).zip(&t.file_digests) {
            let have = have.to_hex();
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
        // A zero run (a whole chunk of zeros), then zero pages between others, ending in zeros.
        let mut sparse = vec![0u8; super::super::CHUNK_SIZE * 2 + 3 * PAGE + 10];
        for p in (super::super::CHUNK_SIZE / PAGE..sparse.len() / PAGE).step_by(3) {
            sparse[p * PAGE..p * PAGE + 100].fill(7);
        }
        std::fs::write(src.join("sparse.img"), &sparse).unwrap();
        std::fs::write(src.join("sub/empty"), b"").unwrap();
        std::fs::write(src.join("sub/small"), b"state").unwrap();
        let entries = collect(&Sources { images: &src, work: None, log: None }).unwrap();
        let manifest = pb::Manifest {
            format_version: FORMAT_VERSION,
            files: entries.iter().map(|e| e.file.clone()).collect(),
            ..Default::default()
        };
        let (mut rx, thread) =
            send::start(manifest, entries, fault, Arc::new(Progress::default()), false);
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
            assert_eq!(std::fs::read(dst.join("images/sparse.img")).unwrap(), sparse);
            assert_eq!(std::fs::read(dst.join("images/sub/small")).unwrap(), b"state");
        }
        (d, result)
    }

    #[test]
    fn clean_stream_roundtrips() {
        let (d, r) = roundtrip(SendFault::None, |_| {});
        let t = r.unwrap();
        assert_eq!(t.chunks, 7);
        assert!(t.bytes_wire < t.bytes_raw, "compressible content shrinks");
        // The zero run was not written: a hole of at least a chunk.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(d.path().join("dst/images/sparse.img")).unwrap();
        assert!(
            meta.blocks() * 512 + super::super::CHUNK_SIZE as u64 / 2 <= meta.len(),
            "{} bytes in {} blocks",
            meta.len(),
            meta.blocks()
        );
    }

    #[test]
    fn zero_page_bitmaps_are_checked() {
        let mut c = chunk(0, 0, &[0u8; 100]);
        c.payload.clear();
        c.zero_pages = vec![1];
        let d = decode(c.clone()).unwrap();
        assert_eq!(d.raw(), vec![0u8; 100]);
        c.zero_pages = vec![1, 0];
        let msg = decode(c.clone()).err().unwrap().to_string();
        assert!(msg.contains("bitmap of 2 bytes for 1 pages (expected 1)"), "{msg}");
        c.zero_pages = vec![0b11];
        assert!(decode(c.clone()).err().unwrap().to_string().contains("past its 1 pages"));
        // The payload must hold exactly the pages that are not zeros.
        let mut c = chunk(0, 0, &[5u8; PAGE * 2]);
        c.zero_pages = vec![0b01];
        c.checksum = crc32c::crc32c(&[&[0u8; PAGE][..], &[5u8; PAGE][..]].concat());
        assert!(matches!(decode(c.clone()), Err(ReceiveError::Corrupt(_))));
        c.payload.truncate(PAGE);
        assert_eq!(decode(c.clone()).unwrap().raw()[PAGE..], [5u8; PAGE]);
        c.checksum ^= 1;
        assert!(decode(c).err().unwrap().to_string().contains("checksum mismatch"));
    }

    #[test]
    fn a_chunk_is_runs_of_data_and_zeros() {
        let all = vec![0xff; 32];
        let zeros = |at, len| Run { at, len, from: None };
        assert_eq!(runs(CHUNK_SIZE, &all), vec![zeros(0, CHUNK_SIZE)]);
        assert_eq!(runs(CHUNK_SIZE, &[]), vec![Run { at: 0, len: CHUNK_SIZE, from: Some(0) }]);
        let mut map = vec![0u8; 32];
        for i in 10..30 {
            map[i / 8] |= 1 << (i % 8);
        }
        map[0] = 0b10;
        assert_eq!(
            runs(CHUNK_SIZE, &map),
            vec![
                Run { at: 0, len: PAGE, from: Some(0) },
                zeros(PAGE, PAGE),
                Run { at: 2 * PAGE, len: 8 * PAGE, from: Some(PAGE) },
                zeros(10 * PAGE, 20 * PAGE),
                Run { at: 30 * PAGE, len: CHUNK_SIZE - 30 * PAGE, from: Some(9 * PAGE) },
            ]
        );
        // A short last page.
        assert_eq!(
            runs(PAGE + 10, &[0b10]),
            vec![Run { at: 0, len: PAGE, from: Some(0) }, zeros(PAGE, 10)]
        );
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
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("1048577 raw bytes (limit 1048576"), "{msg}");
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

    fn chunk(file_index: u32, offset: u64, raw: &[u8]) -> pb::Chunk {
        pb::Chunk {
            file_index,
            offset,
            raw_len: raw.len() as u32,
            codec: pb::Codec::Raw as i32,
            payload: raw.to_vec().into(),
            checksum: crc32c::crc32c(raw),
            zero_pages: Vec::new(),
        }
    }

    fn manifest(files: Vec<pb::SnapshotFile>) -> pb::Manifest {
        pb::Manifest { format_version: FORMAT_VERSION, files, ..Default::default() }
    }

    fn file(name: &str, size: u64) -> pb::SnapshotFile {
        pb::SnapshotFile { name: name.into(), size, mode: 0o644, ..Default::default() }
    }

    #[test]
    fn chunk_sizes_are_refused_before_allocation_with_limit_and_value() {
        let mut c = chunk(0, 0, b"abc");
        c.raw_len = u32::MAX;
        let msg = decode(c).err().unwrap().to_string();
        assert!(msg.contains("declares 4294967295 raw bytes (limit 1048576"), "{msg}");
        let mut c = chunk(0, 0, b"abc");
        c.raw_len = 0;
        assert!(decode(c).err().unwrap().to_string().contains("declares 0 raw bytes"));
        let big = vec![7u8; MAX_PAYLOAD + 1];
        let mut c = chunk(0, 0, &big);
        c.raw_len = 1;
        let msg = decode(c).err().unwrap().to_string();
        assert!(
            msg.contains(&format!("{} wire bytes (limit {MAX_PAYLOAD}", MAX_PAYLOAD + 1)),
            "{msg}"
        );
        let mut c = chunk(0, 0, b"abc");
        c.codec = 9;
        assert!(decode(c).err().unwrap().to_string().contains("unknown codec 9"));
    }

    #[test]
    fn zip_bombs_and_lying_zstd_frames_fail_within_the_chunk_size() {
        let zeros = vec![0u8; 8 << 20];
        // The frame declares its 8 MiB: refused before decompressing.
        let bomb = zstd::bulk::compress(&zeros, 1).unwrap();
        assert!(bomb.len() < 4096);
        let c = pb::Chunk {
            raw_len: 1024,
            codec: pb::Codec::Zstd as i32,
            payload: bomb.into(),
            checksum: crc32c::crc32c(&zeros[..1024]),
            ..Default::default()
        };
        let msg = decode(c).err().unwrap().to_string();
        assert!(msg.contains("declares 8388608 bytes, the chunk 1024"), "{msg}");
        // Without a declared size: decompression stops at the chunk's 1024 bytes.
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        z.include_contentsize(false).unwrap();
        let bomb = z.compress(&zeros).unwrap();
        let c = pb::Chunk {
            raw_len: 1024,
            codec: pb::Codec::Zstd as i32,
            payload: bomb.into(),
            checksum: crc32c::crc32c(&zeros[..1024]),
            ..Default::default()
        };
        let msg = decode(c).err().unwrap().to_string();
        assert!(msg.contains("does not decompress"), "{msg}");
        // Garbage and truncated frames are corrupt, not a panic.
        let good = zstd::bulk::compress(&zeros[..5000], 1).unwrap();
        for payload in [good[..good.len() / 2].to_vec(), b"not zstd at all".to_vec()] {
            let c = pb::Chunk {
                raw_len: 5000,
                codec: pb::Codec::Zstd as i32,
                payload: payload.into(),
                ..Default::default()
            };
            assert!(matches!(decode(c), Err(ReceiveError::Corrupt(_))));
        }
    }

    #[test]
    fn manifest_limits_name_the_limit_and_the_value() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest((0..MAX_FILES + 1).map(|i| file(&format!("f{i}"), 0)).collect());
        let msg = Receiver::new(&d.path().join("a"), &m, u64::MAX).err().unwrap().to_string();
        assert!(msg.contains("100001 files (limit 100000)"), "{msg}");
        let m = manifest(vec![file("a", 1 << 60), file("b", u64::MAX)]);
        let err = Receiver::new(&d.path().join("b"), &m, 64 << 20).err().unwrap();
        assert!(matches!(err, ReceiveError::TooLarge { size: u64::MAX, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("--max-snapshot-mib") && msg.contains("67108864"), "{msg}");
        let m = manifest(vec![file(&"n".repeat(300), 0)]);
        let msg = Receiver::new(&d.path().join("c"), &m, u64::MAX).err().unwrap().to_string();
        assert!(msg.contains("300 bytes (limit 255"), "{msg}");
        let mut link = file("l", 0);
        link.kind = pb::FileKind::Symlink as i32;
        link.link_target = "t".repeat(5000);
        let msg =
            Receiver::new(&d.path().join("d"), &manifest(vec![link]), u64::MAX).err().unwrap();
        assert!(msg.to_string().contains("5000 bytes (limit 4096"), "{msg}");
        for (i, root) in ["a", "b", "c", "d"].iter().enumerate() {
            // Refused before the root was made, or only the root itself.
            let made = d.path().join(root);
            assert!(!made.exists() || made.read_dir().unwrap().count() == 0, "{i}");
        }
    }

    #[test]
    fn duplicates_setuid_bits_and_symlinked_parents_are_refused_or_dropped() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(vec![file("a", 0), file("a", 0)]);
        let err = Receiver::new(&d.path().join("dup"), &m, u64::MAX).err().unwrap();
        assert!(err.to_string().contains("\"a\" appears twice"), "{err}");
        // A symlink to a directory outside, then a file "through" it.
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mut link = file("l", 0);
        link.kind = pb::FileKind::Symlink as i32;
        link.link_target = outside.to_string_lossy().into_owned();
        let m = manifest(vec![link, file("l/x", 1)]);
        let err = Receiver::new(&d.path().join("sym"), &m, u64::MAX).err().unwrap();
        assert!(err.to_string().contains("parent of \"l/x\" is not a directory"), "{err}");
        assert_eq!(outside.read_dir().unwrap().count(), 0);
        // Set-user-ID and set-group-ID bits are not recreated.
        let mut suid = file("s", 3);
        suid.mode = 0o6755;
        let mut dir = file("d", 0);
        dir.kind = pb::FileKind::Directory as i32;
        dir.mode = 0o2755;
        let root = d.path().join("suid");
        let mut r = Receiver::new(&root, &manifest(vec![suid, dir]), u64::MAX).unwrap();
        r.chunk(chunk(0, 0, b"abc")).unwrap();
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode();
        assert_eq!(mode("s") & 0o7777, 0o755);
        assert_eq!(mode("d") & 0o7777, 0o755);
    }

    #[test]
    fn thousands_of_files_do_not_hold_thousands_of_descriptors() {
        let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let d = tempfile::tempdir().unwrap();
        let n = 3000;
        let m = manifest((0..n).map(|i| file(&format!("f{i}"), 1)).collect());
        let before = fds();
        let mut r = Receiver::new(&d.path().join("r"), &m, u64::MAX).unwrap();
        for i in 0..n {
            r.chunk(chunk(i as u32, 0, b"x")).unwrap();
        }
        // Other tests run meanwhile: a margin, far below one per file.
        assert!(fds() < before + 200, "{} fds open, {before} before", fds());
        let digest = blake3::hash(b"x").to_hex().to_string();
        let t = pb::Trailer {
            files: n as u64,
            chunks: n as u64,
            bytes_raw: n as u64,
            bytes_wire: n as u64,
            file_digests: vec![digest; n],
        };
        assert_eq!(r.finish(&t).unwrap().chunks, n as u64);
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
