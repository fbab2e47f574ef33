//! Property test of the snapshot receiver against hostile streams.
//!
//! Each case builds an honest snapshot (a manifest, its chunks, a trailer), applies a few random
//! mutations — hostile names and symlinks, lying sizes, random file indices and offsets, unknown
//! codecs and kinds, truncated or garbage zstd payloads, zip bombs, wrong checksums and digests,
//! dropped, repeated or swapped parts — and feeds the result to [`Receiver`] rooted in a fresh
//! temporary directory. Whatever the input:
//!
//! - nothing panics;
//! - every refusal is a classified [`ReceiveError`] (never `Io`: hostile input is not an I/O
//!   failure);
//! - no single allocation made by the receiver exceeds a chunk's limit, whatever size a part
//!   declares (a counting global allocator watches);
//! - nothing is created or changed outside the root (the temporary parent is walked afterwards,
//!   with a sentinel directory that symlinks and `..` names aim at);
//! - an accepted snapshot holds exactly what its manifest and trailer describe.
//!
//! CI runs 2,000 cases (a few seconds); `PROPTEST_CASES` overrides the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_agent::snapshot::receive::{ReceiveError, Receiver};
use ferry_agent::snapshot::{send, CHUNK_SIZE, FORMAT_VERSION, MAX_PAYLOAD, PAGE};
use ferry_proto::agent as pb;
use proptest::prelude::*;

/// Records the largest single allocation made by a thread while it measures.
struct Counting;

thread_local! {
    /// Set while this thread runs the receiver (other tests' threads are not counted).
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Outcomes seen: accepted, refused (Version, Invalid, Corrupt, TooLarge), not a full stream.
static OUTCOMES: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

fn note(size: usize) {
    if MEASURING.with(Cell::get) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with allocations measured; returns its result and the largest allocation.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (out, LARGEST.load(Ordering::SeqCst))
}

/// The largest allocation the receiver may make: one decoded chunk, plus slack for bookkeeping.
const ALLOC_LIMIT: usize = CHUNK_SIZE + 64 * 1024;

// ---- the honest snapshot ----

#[derive(Debug, Clone)]
enum Content {
    Dir,
    Link(String),
    File(Vec<u8>),
}

fn part(p: pb::snapshot_part::Part) -> pb::SnapshotPart {
    pb::SnapshotPart { part: Some(p) }
}

/// The stream an honest sender produces for these files.
fn honest(files: &[(String, Content)]) -> Vec<pb::SnapshotPart> {
    let mut manifest = pb::Manifest {
        format_version: FORMAT_VERSION,
        migration_id: "m-prop".into(),
        digest: "blake3".into(),
        ..Default::default()
    };
    let mut chunks = Vec::new();
    let mut digests = Vec::new();
    let (mut raw_total, mut wire_total) = (0u64, 0u64);
    for (i, (name, c)) in files.iter().enumerate() {
        let (kind, size, target) = match c {
            Content::Dir => (pb::FileKind::Directory, 0, String::new()),
            Content::Link(t) => (pb::FileKind::Symlink, 0, t.clone()),
            Content::File(b) => (pb::FileKind::Regular, b.len() as u64, String::new()),
        };
        manifest.files.push(pb::SnapshotFile {
            name: name.clone(),
            size,
            digest: String::new(),
            mode: if kind == pb::FileKind::Directory { 0o755 } else { 0o644 },
            kind: kind as i32,
            link_target: target,
        });
        let bytes: &[u8] = if let Content::File(b) = c { b } else { &[] };
        let mut z = zstd::bulk::Compressor::new(1).expect("zstd");
        for (k, raw) in bytes.chunks(CHUNK_SIZE).enumerate() {
            // The agent's own encoder: zero pages left out, the rest zstd or raw.
            let e =
                send::encode(raw, Some(&mut z), ferry_agent::snapshot::ZERO_RUN).expect("encode");
            raw_total += raw.len() as u64;
            wire_total += (e.payload.len() + e.zero_pages.len()) as u64;
            chunks.push(part(pb::snapshot_part::Part::Chunk(pb::Chunk {
                file_index: i as u32,
                offset: (k * CHUNK_SIZE) as u64,
                raw_len: raw.len() as u32,
                codec: e.codec as i32,
                payload: e.payload.into(),
                checksum: crc32c::crc32c(raw),
                zero_pages: e.zero_pages,
            })));
        }
        digests.push(blake3::hash(bytes).to_hex().to_string());
    }
    let trailer = pb::Trailer {
        files: files.len() as u64,
        chunks: chunks.len() as u64,
        bytes_raw: raw_total,
        bytes_wire: wire_total,
        file_digests: digests,
    };
    let mut out = vec![part(pb::snapshot_part::Part::Manifest(manifest))];
    out.extend(chunks);
    out.push(part(pb::snapshot_part::Part::Trailer(trailer)));
    out
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..3000),
        2 => (1usize..200_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        1 => (CHUNK_SIZE - 10..CHUNK_SIZE * 2 + 10, any::<u8>())
            .prop_map(|(n, seed)| (0..n).map(|i| (i / 13) as u8 ^ seed).collect()),
        // Zero pages among others, a zero run, a short zero last page.
        2 => (1usize..CHUNK_SIZE * 2 + PAGE, any::<u64>()).prop_map(|(n, mask)| {
            let mut v = vec![0u8; n];
            for (p, page) in v.chunks_mut(PAGE).enumerate() {
                if (256..512).contains(&p) || mask >> (p % 64) & 1 == 0 {
                    continue;
                }
                page.fill(p as u8 | 1);
            }
            v
        }),
    ]
}

/// A valid layout: directories before their contents, a symlink or two.
fn files_strategy() -> impl Strategy<Value = Vec<(String, Content)>> {
    (proptest::collection::vec(content_strategy(), 0..4), any::<bool>(), any::<bool>()).prop_map(
        |(contents, work, link)| {
            let mut files = vec![("images".to_string(), Content::Dir)];
            for (i, c) in contents.into_iter().enumerate() {
                files.push((format!("images/f{i}.img"), Content::File(c)));
            }
            if work {
                files.push(("work".into(), Content::Dir));
                files.push(("work/state".into(), Content::File(b"state".to_vec())));
            }
            if link {
                files.push(("work-link".into(), Content::Link("images/f0.img".into())));
            }
            files
        },
    )
}

// ---- mutations ----

#[derive(Debug, Clone)]
enum Mutation {
    Name {
        file: usize,
        name: Hostile,
    },
    Size {
        file: usize,
        size: u64,
    },
    SizeDelta {
        file: usize,
        up: bool,
    },
    Kind {
        file: usize,
        kind: i32,
    },
    Mode {
        file: usize,
        mode: u32,
    },
    LinkTarget {
        file: usize,
        target: Hostile,
    },
    /// A hostile entry inserted at this position: a symlink, or a file below a planted symlink.
    Insert {
        at: usize,
        entry: Planted,
    },
    DuplicateEntry {
        file: usize,
    },
    RemoveEntry {
        file: usize,
    },
    Version(u32),
    FileIndex {
        chunk: usize,
        index: u32,
    },
    Offset {
        chunk: usize,
        offset: u64,
    },
    RawLen {
        chunk: usize,
        raw_len: u32,
    },
    Codec {
        chunk: usize,
        codec: i32,
    },
    /// A chunk's zero-page bitmap replaced (random, longer, shorter, all ones).
    ZeroPages {
        chunk: usize,
        map: Vec<u8>,
    },
    FlipPayload {
        chunk: usize,
        at: usize,
    },
    TruncatePayload {
        chunk: usize,
        keep: usize,
    },
    GarbagePayload {
        chunk: usize,
        bytes: Vec<u8>,
        zstd: bool,
    },
    ZipBomb {
        chunk: usize,
        declared: bool,
    },
    HugePayload {
        chunk: usize,
    },
    Checksum {
        chunk: usize,
        xor: u32,
    },
    DropPart {
        part: usize,
    },
    RepeatPart {
        part: usize,
    },
    SwapParts {
        a: usize,
        b: usize,
    },
    RandomChunk {
        at: usize,
        chunk: RandomChunk,
    },
    TrailerTotals {
        files: i8,
        chunks: i8,
        raw: i8,
    },
    TrailerDigest {
        file: usize,
        digest: String,
    },
    TrailerDigestCount {
        extra: bool,
    },
    NoTrailer,
}

#[derive(Debug, Clone)]
struct RandomChunk {
    file_index: u32,
    offset: u64,
    raw_len: u32,
    codec: i32,
    payload: Vec<u8>,
    checksum: u32,
}

/// Names and link targets aimed at the sentinel directory beside the root, or at nothing valid.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    DotDotSentinel,
    AbsoluteSentinel,
    NestedDotDot,
    DotDot,
    Dot,
    Empty,
    DoubleSlash,
    TrailingSlash,
    Nul,
    LongComponent,
    LongName,
    Plain,
}

#[derive(Debug, Clone, Copy)]
enum Planted {
    /// `lnk` -> the sentinel directory, then `lnk/evil`.
    ThroughLink,
    /// `lnk` -> `../outside/evil`, then a regular file named `lnk`.
    OverLink,
    /// A regular file `evil` then a directory `evil/x`.
    UnderFile,
}

fn hostile_name(h: Hostile, sentinel: &Path) -> String {
    match h {
        Hostile::DotDotSentinel => "../outside/evil".into(),
        Hostile::AbsoluteSentinel => sentinel.join("evil").to_string_lossy().into_owned(),
        Hostile::NestedDotDot => "images/../../outside/evil".into(),
        Hostile::DotDot => "..".into(),
        Hostile::Dot => ".".into(),
        Hostile::Empty => String::new(),
        Hostile::DoubleSlash => "images//evil".into(),
        Hostile::TrailingSlash => "images/evil/".into(),
        Hostile::Nul => "images/ev\0il".into(),
        Hostile::LongComponent => format!("images/{}", "e".repeat(300)),
        Hostile::LongName => "d/".repeat(2100),
        Hostile::Plain => "images/renamed".into(),
    }
}

fn hostile_strategy() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        Just(Hostile::DotDotSentinel),
        Just(Hostile::AbsoluteSentinel),
        Just(Hostile::NestedDotDot),
        Just(Hostile::DotDot),
        Just(Hostile::Dot),
        Just(Hostile::Empty),
        Just(Hostile::DoubleSlash),
        Just(Hostile::TrailingSlash),
        Just(Hostile::Nul),
        Just(Hostile::LongComponent),
        Just(Hostile::LongName),
        Just(Hostile::Plain),
    ]
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64 << 60),
        Just(u64::MAX),
        Just(CHUNK_SIZE as u64 + 1),
        0u64..10_000,
        any::<u64>(),
    ]
}

fn raw_len_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(CHUNK_SIZE as u32),
        Just(CHUNK_SIZE as u32 + 1),
        0u32..5000,
        any::<u32>(),
    ]
}

fn random_chunk() -> impl Strategy<Value = RandomChunk> {
    (
        prop_oneof![0u32..8, Just(u32::MAX), any::<u32>()],
        prop_oneof![Just(0u64), 0u64..5000, Just(1u64 << 60), any::<u64>()],
        raw_len_strategy(),
        -1i32..4,
        proptest::collection::vec(any::<u8>(), 0..2000),
        any::<u32>(),
    )
        .prop_map(|(file_index, offset, raw_len, codec, payload, checksum)| RandomChunk {
            file_index,
            offset,
            raw_len,
            codec,
            payload,
            checksum,
        })
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let i = || 0usize..64;
    prop_oneof![
        (i(), hostile_strategy()).prop_map(|(file, name)| Mutation::Name { file, name }),
        (i(), size_strategy()).prop_map(|(file, size)| Mutation::Size { file, size }),
        (i(), any::<bool>()).prop_map(|(file, up)| Mutation::SizeDelta { file, up }),
        (i(), -2i32..5).prop_map(|(file, kind)| Mutation::Kind { file, kind }),
        (i(), any::<u32>()).prop_map(|(file, mode)| Mutation::Mode { file, mode }),
        (i(), hostile_strategy()).prop_map(|(file, target)| Mutation::LinkTarget { file, target }),
        (
            i(),
            prop_oneof![
                Just(Planted::ThroughLink),
                Just(Planted::OverLink),
                Just(Planted::UnderFile)
            ]
        )
            .prop_map(|(at, entry)| Mutation::Insert { at, entry }),
        i().prop_map(|file| Mutation::DuplicateEntry { file }),
        i().prop_map(|file| Mutation::RemoveEntry { file }),
        prop_oneof![Just(0u32), Just(2u32), any::<u32>()].prop_map(Mutation::Version),
        (i(), prop_oneof![0u32..8, Just(u32::MAX)])
            .prop_map(|(chunk, index)| Mutation::FileIndex { chunk, index }),
        (i(), prop_oneof![0u64..3000, Just(1u64 << 60), Just(u64::MAX)])
            .prop_map(|(chunk, offset)| Mutation::Offset { chunk, offset }),
        (i(), raw_len_strategy()).prop_map(|(chunk, raw_len)| Mutation::RawLen { chunk, raw_len }),
        (i(), -1i32..5).prop_map(|(chunk, codec)| Mutation::Codec { chunk, codec }),
        (
            i(),
            prop_oneof![
                Just(vec![]),
                Just(vec![0xff; 32]),
                Just(vec![0xff; 33]),
                proptest::collection::vec(any::<u8>(), 0..40)
            ]
        )
            .prop_map(|(chunk, map)| Mutation::ZeroPages { chunk, map }),
        (i(), any::<usize>()).prop_map(|(chunk, at)| Mutation::FlipPayload { chunk, at }),
        (i(), any::<usize>()).prop_map(|(chunk, keep)| Mutation::TruncatePayload { chunk, keep }),
        (i(), proptest::collection::vec(any::<u8>(), 0..500), any::<bool>())
            .prop_map(|(chunk, bytes, zstd)| Mutation::GarbagePayload { chunk, bytes, zstd }),
        (i(), any::<bool>()).prop_map(|(chunk, declared)| Mutation::ZipBomb { chunk, declared }),
        i().prop_map(|chunk| Mutation::HugePayload { chunk }),
        (i(), 1u32..).prop_map(|(chunk, xor)| Mutation::Checksum { chunk, xor }),
        i().prop_map(|part| Mutation::DropPart { part }),
        i().prop_map(|part| Mutation::RepeatPart { part }),
        (i(), i()).prop_map(|(a, b)| Mutation::SwapParts { a, b }),
        (i(), random_chunk()).prop_map(|(at, chunk)| Mutation::RandomChunk { at, chunk }),
        (-1i8..=1, -1i8..=1, -1i8..=1).prop_map(|(files, chunks, raw)| Mutation::TrailerTotals {
            files,
            chunks,
            raw
        }),
        (i(), prop_oneof![Just(String::new()), "[0-9a-f]{64}", ".{0,10}"])
            .prop_map(|(file, digest)| Mutation::TrailerDigest { file, digest }),
        any::<bool>().prop_map(|extra| Mutation::TrailerDigestCount { extra }),
        Just(Mutation::NoTrailer),
    ]
}

/// Zip bombs: 16 MiB of zeros in a few hundred bytes, with and without a declared size.
fn bomb(declared: bool) -> Vec<u8> {
    static BOMBS: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let (with, without) = BOMBS.get_or_init(|| {
        let zeros = vec![0u8; 16 << 20];
        let with = zstd::bulk::compress(&zeros, 1).expect("zstd");
        let mut z = zstd::bulk::Compressor::new(1).expect("zstd");
        z.include_contentsize(false).expect("zstd parameter");
        (with, z.compress(&zeros).expect("zstd"))
    });
    if declared {
        with.clone()
    } else {
        without.clone()
    }
}

fn manifest_of(parts: &mut [pb::SnapshotPart]) -> Option<&mut pb::Manifest> {
    parts.iter_mut().find_map(|p| match &mut p.part {
        Some(pb::snapshot_part::Part::Manifest(m)) => Some(m),
        _ => None,
    })
}

fn trailer_of(parts: &mut [pb::SnapshotPart]) -> Option<&mut pb::Trailer> {
    parts.iter_mut().find_map(|p| match &mut p.part {
        Some(pb::snapshot_part::Part::Trailer(t)) => Some(t),
        _ => None,
    })
}

fn chunk_of(parts: &mut [pb::SnapshotPart], k: usize) -> Option<&mut pb::Chunk> {
    let n =
        parts.iter().filter(|p| matches!(p.part, Some(pb::snapshot_part::Part::Chunk(_)))).count();
    if n == 0 {
        return None;
    }
    parts
        .iter_mut()
        .filter_map(|p| match &mut p.part {
            Some(pb::snapshot_part::Part::Chunk(c)) => Some(c),
            _ => None,
        })
        .nth(k % n)
}

fn apply(parts: &mut Vec<pb::SnapshotPart>, m: &Mutation, sentinel: &Path) {
    use pb::snapshot_part::Part;
    let file = |m: &mut pb::Manifest, i: usize| {
        let n = m.files.len();
        (n > 0).then(|| i % n)
    };
    match m.clone() {
        Mutation::Name { file: f, name } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files[f].name = hostile_name(name, sentinel);
                }
            }
        }
        Mutation::Size { file: f, size } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files[f].size = size;
                }
            }
        }
        Mutation::SizeDelta { file: f, up } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    let s = &mut man.files[f].size;
                    *s = if up { s.saturating_add(1) } else { s.saturating_sub(1) };
                }
            }
        }
        Mutation::Kind { file: f, kind } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files[f].kind = kind;
                }
            }
        }
        Mutation::Mode { file: f, mode } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files[f].mode = mode;
                }
            }
        }
        Mutation::LinkTarget { file: f, target } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files[f].link_target = match target {
                        Hostile::AbsoluteSentinel => sentinel.to_string_lossy().into_owned(),
                        other => hostile_name(other, sentinel),
                    };
                }
            }
        }
        Mutation::Insert { at, entry } => {
            if let Some(man) = manifest_of(parts) {
                let at = at % (man.files.len() + 1);
                let link = |name: &str, target: String| pb::SnapshotFile {
                    name: name.into(),
                    kind: pb::FileKind::Symlink as i32,
                    link_target: target,
                    ..Default::default()
                };
                let reg = |name: &str, size| pb::SnapshotFile {
                    name: name.into(),
                    size,
                    mode: 0o644,
                    ..Default::default()
                };
                let new = match entry {
                    Planted::ThroughLink => vec![
                        link("lnk", sentinel.to_string_lossy().into_owned()),
                        reg("lnk/evil", 0),
                    ],
                    Planted::OverLink => {
                        vec![link("lnk", "../outside/evil".into()), reg("lnk", 0)]
                    }
                    Planted::UnderFile => vec![
                        reg("evil", 0),
                        pb::SnapshotFile {
                            name: "evil/x".into(),
                            kind: pb::FileKind::Directory as i32,
                            ..Default::default()
                        },
                    ],
                };
                man.files.splice(at..at, new);
            }
        }
        Mutation::DuplicateEntry { file: f } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    let e = man.files[f].clone();
                    man.files.insert(f + 1, e);
                }
            }
        }
        Mutation::RemoveEntry { file: f } => {
            if let Some(man) = manifest_of(parts) {
                if let Some(f) = file(man, f) {
                    man.files.remove(f);
                }
            }
        }
        Mutation::Version(v) => {
            if let Some(man) = manifest_of(parts) {
                man.format_version = v;
            }
        }
        Mutation::FileIndex { chunk, index } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.file_index = index;
            }
        }
        Mutation::Offset { chunk, offset } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.offset = offset;
            }
        }
        Mutation::RawLen { chunk, raw_len } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.raw_len = raw_len;
            }
        }
        Mutation::Codec { chunk, codec } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.codec = codec;
            }
        }
        Mutation::ZeroPages { chunk, map } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.zero_pages = map;
            }
        }
        Mutation::FlipPayload { chunk, at } => {
            if let Some(c) = chunk_of(parts, chunk) {
                if !c.payload.is_empty() {
                    let n = c.payload.len();
                    let mut flipped = c.payload.to_vec();
                    flipped[at % n] ^= 0x41;
                    c.payload = flipped.into();
                }
            }
        }
        Mutation::TruncatePayload { chunk, keep } => {
            if let Some(c) = chunk_of(parts, chunk) {
                let n = c.payload.len();
                c.payload.truncate(keep % (n + 1));
            }
        }
        Mutation::GarbagePayload { chunk, bytes, zstd } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.payload = bytes.into();
                if zstd {
                    c.codec = pb::Codec::Zstd as i32;
                }
            }
        }
        Mutation::ZipBomb { chunk, declared } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.payload = bomb(declared).into();
                c.codec = pb::Codec::Zstd as i32;
            }
        }
        Mutation::HugePayload { chunk } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.payload = vec![0x5a; MAX_PAYLOAD + 1].into();
            }
        }
        Mutation::Checksum { chunk, xor } => {
            if let Some(c) = chunk_of(parts, chunk) {
                c.checksum ^= xor;
            }
        }
        Mutation::DropPart { part } => {
            let n = parts.len();
            if n > 0 {
                parts.remove(part % n);
            }
        }
        Mutation::RepeatPart { part } => {
            let n = parts.len();
            if n > 0 {
                let p = parts[part % n].clone();
                parts.insert(part % n, p);
            }
        }
        Mutation::SwapParts { a, b } => {
            let n = parts.len();
            if n > 0 {
                parts.swap(a % n, b % n);
            }
        }
        Mutation::RandomChunk { at, chunk } => {
            let at = 1 + at % parts.len().max(1);
            let at = at.min(parts.len());
            parts.insert(
                at,
                pb::SnapshotPart {
                    part: Some(Part::Chunk(pb::Chunk {
                        file_index: chunk.file_index,
                        offset: chunk.offset,
                        raw_len: chunk.raw_len,
                        codec: chunk.codec,
                        payload: chunk.payload.into(),
                        checksum: chunk.checksum,
                        zero_pages: Vec::new(),
                    })),
                },
            );
        }
        Mutation::TrailerTotals { files, chunks, raw } => {
            if let Some(t) = trailer_of(parts) {
                t.files = t.files.wrapping_add_signed(files.into());
                t.chunks = t.chunks.wrapping_add_signed(chunks.into());
                t.bytes_raw = t.bytes_raw.wrapping_add_signed(raw.into());
            }
        }
        Mutation::TrailerDigest { file, digest } => {
            if let Some(t) = trailer_of(parts) {
                let n = t.file_digests.len();
                if n > 0 {
                    t.file_digests[file % n] = digest;
                }
            }
        }
        Mutation::TrailerDigestCount { extra } => {
            if let Some(t) = trailer_of(parts) {
                if extra {
                    t.file_digests.push("00".repeat(32));
                } else {
                    t.file_digests.pop();
                }
            }
        }
        Mutation::NoTrailer => parts.retain(|p| !matches!(p.part, Some(Part::Trailer(_)))),
    }
}

// ---- running and checking ----

/// Every path below `dir`, symlinks not followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().expect("file type").is_dir() {
            walk(&p, out);
        }
    }
}

/// Feeds `parts` to a receiver at `root` the way the agent does: the manifest first, chunks in
/// order, the trailer last; stops at the first refusal. Ok(accepted manifest) when the trailer
/// verified.
fn receive(
    root: &Path,
    parts: Vec<pb::SnapshotPart>,
    max_bytes: u64,
) -> Result<Option<pb::Manifest>, ReceiveError> {
    use pb::snapshot_part::Part;
    let mut it = parts.into_iter();
    let Some(Some(Part::Manifest(m))) = it.next().map(|p| p.part) else {
        return Ok(None); // the agent refuses this before any receiver exists
    };
    let mut r = Receiver::new(root, &m, max_bytes)?;
    for p in it {
        match p.part {
            Some(Part::Chunk(c)) => r.chunk(c)?,
            Some(Part::Trailer(t)) => {
                r.finish(&t)?;
                return Ok(Some(m));
            }
            // A second manifest or an empty part: the agent refuses it before the receiver.
            _ => return Ok(None),
        }
    }
    Ok(None) // the stream ended before its trailer: the agent reports a broken stream
}

fn check_case(
    files: Vec<(String, Content)>,
    mutations: Vec<Mutation>,
    small_limit: bool,
) -> Result<(), TestCaseError> {
    let parent = tempfile::tempdir().expect("tempdir");
    let sentinel = parent.path().join("outside");
    std::fs::create_dir(&sentinel).expect("sentinel dir");
    std::fs::write(sentinel.join("keep"), b"k").expect("sentinel file");
    let root = parent.path().join("root");

    let mut parts = honest(&files);
    for m in &mutations {
        apply(&mut parts, m, &sentinel);
    }
    let trailer = trailer_of(&mut parts).cloned();
    let max_bytes = if small_limit { 100_000 } else { u64::MAX };
    let (result, largest) = measured(|| receive(&root, parts, max_bytes));

    prop_assert!(
        largest <= ALLOC_LIMIT,
        "the receiver allocated {largest} bytes at once (limit {ALLOC_LIMIT})"
    );
    let outcome = match &result {
        Ok(Some(_)) => 0,
        Err(ReceiveError::Version(_)) => 1,
        Err(ReceiveError::Invalid(_)) => 2,
        Err(ReceiveError::Corrupt(_)) => 3,
        Err(ReceiveError::TooLarge { .. }) => 4,
        _ => 5,
    };
    OUTCOMES[outcome].fetch_add(1, Ordering::Relaxed);
    match &result {
        Err(ReceiveError::Io { path, source }) => {
            prop_assert!(false, "hostile input surfaced as an I/O error: {path:?}: {source}")
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
        Ok(Some(m)) => {
            // Accepted: every regular file holds what the trailer's digest says, at its size.
            let t = trailer.expect("accepted with a trailer");
            for (f, want) in m.files.iter().zip(&t.file_digests) {
                if f.kind == pb::FileKind::Regular as i32 {
                    let p = root.join(&f.name);
                    let meta = std::fs::symlink_metadata(&p).expect("accepted file exists");
                    prop_assert!(meta.is_file(), "{p:?}");
                    prop_assert_eq!(meta.len(), f.size);
                    let bytes = std::fs::read(&p).expect("read accepted file");
                    let have = blake3::hash(&bytes).to_hex().to_string();
                    prop_assert_eq!(&have, want);
                }
            }
        }
        Ok(None) => {}
    }

    // Nothing outside the root: the parent holds the root and the untouched sentinel only.
    let mut seen = Vec::new();
    walk(parent.path(), &mut seen);
    for p in &seen {
        let inside = p.starts_with(&root) || p == &sentinel || p == &sentinel.join("keep");
        prop_assert!(inside, "created outside the root: {p:?} (result {result:?})");
    }
    prop_assert_eq!(std::fs::read(sentinel.join("keep")).expect("sentinel"), b"k".to_vec());
    // No set-user-ID or set-group-ID file was made.
    for p in seen.iter().filter(|p| p.starts_with(&root)) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(p).expect("stat").permissions().mode();
        prop_assert_eq!(mode & 0o6000, 0, "{:?} has mode {:o}", p, mode);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

#[test]
fn hostile_streams_never_panic_overallocate_or_escape_the_root() {
    let started = std::time::Instant::now();
    let config = ProptestConfig { cases: cases(), ..ProptestConfig::default() };
    let strategy = (
        files_strategy(),
        proptest::collection::vec(mutation_strategy(), 0..4),
        proptest::bool::weighted(0.1),
    );
    proptest::test_runner::TestRunner::new(config)
        .run(&strategy, |(files, mutations, small)| check_case(files, mutations, small))
        .unwrap_or_else(|e| panic!("{e}"));
    let n: Vec<usize> = OUTCOMES.iter().map(|o| o.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{} cases in {:?}: accepted {}, refused: version {}, invalid {}, corrupt {}, too large {}; \
         incomplete stream {}",
        cases(),
        started.elapsed(),
        n[0],
        n[1],
        n[2],
        n[3],
        n[4],
        n[5]
    );
}

#[test]
fn the_honest_stream_is_accepted() {
    // The property's baseline: without mutations every generated snapshot is received whole.
    let files = vec![
        ("images".to_string(), Content::Dir),
        ("images/a".to_string(), Content::File(vec![3; CHUNK_SIZE + 5])),
        ("work-link".to_string(), Content::Link("images/a".into())),
    ];
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("root");
    let got = receive(&root, honest(&files), u64::MAX).unwrap();
    assert!(got.is_some());
    assert_eq!(std::fs::read(root.join("images/a")).unwrap().len(), CHUNK_SIZE + 5);
}
