//! The snapshot stream: how a workload's captured state travels from the source agent to the
//! target agent inside one client-streaming `PushSnapshot` call.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source agent
//!     participant T as target agent
//!     S->>T: Manifest (format version, spec, files: name, size, kind, mode)
//!     loop every file, in order, offsets contiguous
//!         S->>T: Chunk (file index, offset, raw length, codec, zero-page bitmap, payload, crc32c of raw bytes)
//!     end
//!     S->>T: Trailer (totals, blake3 digest of every file)
//!     Note over T: every chunk checksum and every file digest verified before restore
//!     T-->>S: PushResult (restored, stopped until CommitMigration)
//! ```
//!
//! Chunks hold at most [`CHUNK_SIZE`] raw bytes. Format version 2: runs of at least [`ZERO_RUN`]
//! [`PAGE`]-sized pages that are all zeros do not travel: `zero_pages` is a bitmap of them (bit
//! `i % 8` of byte `i / 8` for page `i`, the last page possibly short), and the payload carries
//! only the other pages, in order, zstd level 1 or raw. A chunk of zeros is a bare bitmap, a
//! "zero run" (and the receiver leaves a hole in the file rather than writing it). A receiver
//! accepts any bitmap. The sender chooses zstd or
//! raw from measurement: it times both on the real stream early on (and again every
//! [`send::REPROBE`] chunks) and keeps whichever moved more raw bytes per second; compression
//! runs on [`send::WORKERS`] threads, chunk-parallel, in order on the wire. Version 1 (no
//! bitmaps) is still accepted. Both sides keep memory bounded: the sender's reader runs ahead by
//! at most [`SEND_QUEUE`] chunks, the receiver writes each chunk before asking for the next one,
//! and HTTP/2 flow control holds back the rest.
//!
//! The format version is independent of the crate version; a receiver refuses versions it does not
//! know.

pub mod receive;
pub mod send;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ferry_proto::agent as pb;

/// Version of the stream format this agent sends.
pub const FORMAT_VERSION: u32 = 2;
/// Versions this agent accepts: 1 (no zero-page bitmaps) and 2.
pub const ACCEPTED_VERSIONS: [u32; 2] = [1, 2];
/// The unit of zero-page elision, in bytes.
pub const PAGE: usize = 4096;
/// Zero pages in a row (64 KiB) from which they are left out of a chunk, and left as a hole by
/// the receiver.
pub const ZERO_RUN: usize = 16;
/// Raw bytes per chunk; also the most raw bytes a receiver accepts in one chunk (checked before
/// anything is allocated or decompressed).
pub const CHUNK_SIZE: usize = 1 << 20;
/// Largest payload (wire bytes) accepted for one chunk: the raw size plus zstd's worst-case
/// overhead.
pub const MAX_PAYLOAD: usize = CHUNK_SIZE + 64 * 1024;
/// Chunks the sender may prepare ahead of the network.
pub const SEND_QUEUE: usize = 8;
/// zstd level: fast enough to keep up with a gigabit link on one core.
pub const ZSTD_LEVEL: i32 = 1;
pub const DIGEST: &str = "blake3";
/// At most this many files in one snapshot.
pub const MAX_FILES: usize = 100_000;
/// Longest file name (a relative path) in a manifest, in bytes (Linux's PATH_MAX).
pub const MAX_NAME_LEN: usize = 4096;
/// Longest component of a file name, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_COMPONENT: usize = 255;
/// Longest symlink target in a manifest, in bytes.
pub const MAX_LINK_TARGET: usize = 4096;

/// Where a snapshot's files come from on the source.
pub struct Sources<'a> {
    /// Checkpoint images (CRIU's, or a cooperative program's state files): `images/...`.
    pub images: &'a Path,
    /// The workload's working directory, when it travels: `work/...`.
    pub work: Option<&'a Path>,
    /// The workload's output log: `log/output.log`.
    pub log: Option<&'a Path>,
}

/// One file of a snapshot on the source: where it is read from and what the manifest says.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub file: pb::SnapshotFile,
}

/// Lists the files of a snapshot, directories before their contents.
pub fn collect(src: &Sources<'_>) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(src.images, "images", &mut out)?;
    if let Some(work) = src.work {
        walk(work, "work", &mut out)?;
    }
    if let Some(log) = src.log {
        if log.exists() {
            let dir = log.parent().unwrap_or(Path::new("/"));
            let mut d = entry(dir, "log".into())?;
            d.file.mode = 0o700;
            out.push(d);
            out.push(entry(log, "log/output.log".into())?);
        }
    }
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> std::io::Result<()> {
    out.push(entry(dir, prefix.to_string())?);
    let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), &name, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(entry(&e.path(), name)?);
        } else {
            tracing::warn!(path = ?e.path(), "not shipping a special file (socket, fifo or device)");
        }
    }
    Ok(())
}

fn entry(path: &Path, name: String) -> std::io::Result<Entry> {
    let meta = std::fs::symlink_metadata(path)?;
    let (kind, size, link_target) = if meta.file_type().is_symlink() {
        let t = std::fs::read_link(path)?.to_string_lossy().into_owned();
        (pb::FileKind::Symlink, 0, t)
    } else if meta.is_dir() {
        (pb::FileKind::Directory, 0, String::new())
    } else {
        (pb::FileKind::Regular, meta.size(), String::new())
    };
    Ok(Entry {
        path: path.to_path_buf(),
        file: pb::SnapshotFile {
            name,
            size,
            digest: String::new(),
            mode: meta.permissions().mode() & 0o7777,
            kind: kind as i32,
            link_target,
        },
    })
}

/// Pages in a chunk of `raw_len` bytes (the last one may be short).
pub fn pages(raw_len: usize) -> usize {
    raw_len.div_ceil(PAGE)
}

/// Length of a chunk's zero-page bitmap.
pub fn bitmap_len(raw_len: usize) -> usize {
    pages(raw_len).div_ceil(8)
}

fn is_zero(b: &[u8]) -> bool {
    // Vectorizes; a page that is not zero usually fails on its first 64 bytes.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Page `i` of a bitmap.
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// The bitmap of `raw`'s zero pages that lie in runs of at least `min_run` (or None when there
/// are none). Shorter runs travel with their neighbours. The snapshot stream leaves out runs of
/// [`ZERO_RUN`]: a lone zero page left out costs a copy of the chunk on the sending side and
/// saves little on the wire (zstd squeezes a zero page to a few bytes). The page stream leaves
/// out every zero page: the target then writes none of them (it writes memory images under the
/// freeze, and a page written costs more there than a page copied here).
pub fn zero_pages(raw: &[u8], min_run: usize) -> Option<Vec<u8>> {
    let zero: Vec<bool> = raw.chunks(PAGE).map(is_zero).collect();
    let mut map = vec![0u8; bitmap_len(raw.len())];
    let mut any = false;
    let mut i = 0;
    while i < zero.len() {
        let run = zero[i..].iter().take_while(|z| **z).count();
        if run >= min_run.max(1) {
            for p in i..i + run {
                map[p / 8] |= 1 << (p % 8);
            }
            any = true;
        }
        i += run.max(1);
    }
    any.then_some(map)
}

/// `raw` without the pages `map` marks as zeros.
pub fn without_zero_pages(raw: &[u8], map: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, page) in raw.chunks(PAGE).enumerate() {
        if !bit(map, i) {
            out.extend_from_slice(page);
        }
    }
    out
}

/// Bytes of a chunk of `raw_len` bytes that `map` does not mark as zeros (what its payload
/// decodes to).
pub fn nonzero_len(raw_len: usize, map: &[u8]) -> usize {
    (0..pages(raw_len)).filter(|i| !bit(map, *i)).map(|i| PAGE.min(raw_len - i * PAGE)).sum()
}

/// A manifest name as a relative path that cannot leave the snapshot root: no absolute paths, no
/// `..`, no empty or `.` components, no NUL.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    check_name(name).ok()
}

/// [`safe_relative`], saying why a name is refused (with the limit and the value where one was
/// exceeded).
pub fn check_name(name: &str) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("file name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "file name of {} bytes exceeds the limit of {MAX_NAME_LEN} bytes",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Err(format!("file name {name:?} contains a NUL byte"));
    }
    if name.starts_with('/') {
        return Err(format!("file name {name:?} is absolute: it leaves the snapshot root"));
    }
    if let Some(bad) = name.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(format!(
            "file name {name:?} has a {bad:?} component: it leaves the snapshot root or is not \
             canonical"
        ));
    }
    if let Some(long) = name.split('/').find(|s| s.len() > MAX_NAME_COMPONENT) {
        let start: String = long.chars().take(32).collect();
        return Err(format!(
            "file name has a component {start:?}... of {} bytes (limit {MAX_NAME_COMPONENT} bytes)",
            long.len()
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            _ => return Err(format!("file name {name:?} leaves the snapshot root")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_found_elided_and_counted() {
        // Page 0 is not zero, 1-16 are (a run), 17 is not, 18 is (alone), 19 is not, 20-35 are
        // (a run, the last page short).
        let mut raw = vec![0u8; PAGE * 35 + 100];
        for p in [0, 17, 19] {
            raw[p * PAGE] = 1;
        }
        let map = zero_pages(&raw, ZERO_RUN).unwrap();
        assert_eq!(map.len(), 5);
        assert!(!bit(&map, 0) && (1..17).all(|p| bit(&map, p)) && !bit(&map, 17));
        assert!(!bit(&map, 18) && !bit(&map, 19) && (20..36).all(|p| bit(&map, p)));
        let kept = [&raw[..PAGE], &raw[17 * PAGE..20 * PAGE]].concat();
        assert_eq!(without_zero_pages(&raw, &map), kept);
        assert_eq!(nonzero_len(raw.len(), &map), 4 * PAGE);
        assert_eq!(nonzero_len(PAGE * 3 + 100, &[0b0111]), 100, "a short last page counts short");
        let mut short = vec![0u8; PAGE * 15];
        short.push(1);
        assert_eq!(zero_pages(&short, ZERO_RUN), None, "15 zero pages travel as they are");
        assert!(zero_pages(&short, 1).is_some(), "the page stream leaves out every zero page");
        assert_eq!(zero_pages(&[1u8; 10], 1), None);
        assert_eq!(bitmap_len(super::CHUNK_SIZE), 32);
    }

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_relative("images/pages-1.img"), Some(PathBuf::from("images/pages-1.img")));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b", "a/"] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn name_limits_name_the_limit_and_the_value() {
        let long = "a/".repeat(2100);
        let err = check_name(&long[..long.len() - 1]).unwrap_err();
        assert!(err.contains("4199 bytes") && err.contains("limit of 4096"), "{err}");
        let err = check_name(&format!("images/{}", "x".repeat(256))).unwrap_err();
        assert!(err.contains("256 bytes") && err.contains("limit 255"), "{err}");
        check_name(&format!("images/{}", "x".repeat(255))).unwrap();
        assert!(check_name("../x").unwrap_err().contains("\"..\""));
        assert!(check_name("/etc/x").unwrap_err().contains("absolute"));
    }

    #[test]
    fn collect_lists_dirs_before_contents() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("img");
        let work = d.path().join("work");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("core.img"), b"abc").unwrap();
        std::fs::write(work.join("sub/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/f", work.join("link")).unwrap();
        let log = d.path().join("output.log");
        std::fs::write(&log, b"{}\n").unwrap();
        let e = collect(&Sources { images: &images, work: Some(&work), log: Some(&log) }).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.file.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "images",
                "images/core.img",
                "work",
                "work/link",
                "work/sub",
                "work/sub/f",
                "log",
                "log/output.log"
            ]
        );
        assert_eq!(e[5].file.size, 5);
        assert_eq!(e[3].file.kind, pb::FileKind::Symlink as i32);
        assert_eq!(e[3].file.link_target, "sub/f");
    }
}
