//! Hand-built hostile snapshot streams pushed at a real agent (PushSnapshot, as a source agent
//! would): path traversal, planted symlinks, oversized chunks, zip bombs, lying sizes, bad
//! digests, reused migration ids. Each is refused with a status that says why; nothing is
//! written outside the agent's scratch directory; the agent stays healthy; and a workload
//! already running there keeps counting.
//!
//! PushSnapshot needs no prior handshake: a manifest names its own migration id, and its files
//! land in `<data>/migrations/<id>/recv`, which is what these streams attack.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::agent as pb;
use harness::*;
use pb::snapshot_part::Part;
use tonic::Code;

const T: Duration = Duration::from_secs(30);
const CHUNK: usize = 1 << 20;
/// The agent under attack accepts snapshots of at most this many MiB.
const MAX_MIB: u64 = 8;

fn part(p: Part) -> pb::SnapshotPart {
    pb::SnapshotPart { part: Some(p) }
}

fn dir(name: &str) -> pb::SnapshotFile {
    pb::SnapshotFile {
        name: name.into(),
        kind: pb::FileKind::Directory as i32,
        mode: 0o755,
        ..Default::default()
    }
}

fn file(name: &str, size: u64) -> pb::SnapshotFile {
    pb::SnapshotFile { name: name.into(), size, mode: 0o644, ..Default::default() }
}

fn link(name: &str, target: &str) -> pb::SnapshotFile {
    pb::SnapshotFile {
        name: name.into(),
        kind: pb::FileKind::Symlink as i32,
        link_target: target.into(),
        ..Default::default()
    }
}

fn raw_chunk(file_index: u32, offset: u64, raw: &[u8]) -> pb::Chunk {
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

/// A snapshot under construction: a manifest with a cooperative spec, then chunks and trailer.
struct Stream {
    mid: String,
    files: Vec<pb::SnapshotFile>,
    /// Content of each file, for chunks and honest digests.
    content: Vec<Vec<u8>>,
    restore: pb::RestoreInfo,
    spec_id: String,
}

impl Stream {
    fn new(mid: &str) -> Stream {
        Stream {
            mid: mid.into(),
            files: vec![dir("images")],
            content: vec![vec![]],
            restore: pb::RestoreInfo::default(),
            spec_id: format!("w-{mid}"),
        }
    }

    fn with(mut self, f: pb::SnapshotFile, content: &[u8]) -> Stream {
        self.files.push(f);
        self.content.push(content.to_vec());
        self
    }

    fn manifest(&self) -> pb::Manifest {
        pb::Manifest {
            format_version: 1,
            migration_id: self.mid.clone(),
            spec: Some(pb::WorkloadSpec {
                id: self.spec_id.clone(),
                // Were a stream accepted, this output would land in its log: a log symlinked
                // outside would show it there.
                argv: vec!["sh".into(), "-c".into(), "echo pwned; sleep 600".into()],
                engine: pb::Engine::Cooperative as i32,
                ..Default::default()
            }),
            source_node: "mallory".into(),
            files: self.files.clone(),
            digest: "blake3".into(),
            restore: Some(self.restore.clone()),
        }
    }

    /// Honest chunks of every file's content.
    fn chunks(&self) -> Vec<pb::Chunk> {
        let mut out = Vec::new();
        for (i, c) in self.content.iter().enumerate() {
            for (k, raw) in c.chunks(CHUNK).enumerate() {
                out.push(raw_chunk(i as u32, (k * CHUNK) as u64, raw));
            }
        }
        out
    }

    fn trailer(&self, chunks: &[pb::Chunk]) -> pb::Trailer {
        pb::Trailer {
            files: self.files.len() as u64,
            chunks: chunks.len() as u64,
            bytes_raw: chunks.iter().map(|c| u64::from(c.raw_len)).sum(),
            bytes_wire: chunks.iter().map(|c| c.payload.len() as u64).sum(),
            file_digests: self.content.iter().map(|c| ferry_agent_digest(c)).collect(),
        }
    }

    /// The whole stream, honest apart from what the manifest itself says.
    fn parts(&self) -> Vec<pb::SnapshotPart> {
        let chunks = self.chunks();
        self.parts_with(chunks.clone(), self.trailer(&chunks))
    }

    fn parts_with(&self, chunks: Vec<pb::Chunk>, trailer: pb::Trailer) -> Vec<pb::SnapshotPart> {
        let mut out = vec![part(Part::Manifest(self.manifest()))];
        out.extend(chunks.into_iter().map(|c| part(Part::Chunk(c))));
        out.push(part(Part::Trailer(trailer)));
        out
    }
}

/// blake3 hex digest, as the agent computes file digests.
fn ferry_agent_digest(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

async fn push(
    c: &mut Client,
    parts: Vec<pb::SnapshotPart>,
) -> Result<pb::PushResult, tonic::Status> {
    c.push_snapshot(tokio_stream::iter(parts)).await.map(|r| r.into_inner())
}

/// Pushes `parts` and checks the refusal's code and message.
async fn refused(
    c: &mut Client,
    what: &str,
    parts: Vec<pb::SnapshotPart>,
    code: Code,
    needle: &str,
) {
    let err = push(c, parts).await.map(|_| ()).expect_err(what);
    eprintln!("{what}: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), code, "{what}: {}", err.message());
    assert!(err.message().contains(needle), "{what}: {:?} lacks {needle:?}", err.message());
}

/// Every path below `root`, symlinks not followed.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn tick_numbers(lines: &[String]) -> Vec<u64> {
    lines.iter().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect()
}

#[tokio::test]
async fn hostile_snapshot_streams_are_refused_and_harm_nothing() {
    if !require_root("hostile_snapshot_streams_are_refused_and_harm_nothing") {
        return;
    }
    // Beside the agent's data dir: a sentinel that traversal names and symlinks aim at.
    let outside = TempDir::new("ferry-hostile-outside");
    let sentinel = outside.path().join("keep");
    std::fs::write(&sentinel, b"untouched\n").unwrap();
    let sentinel_dir = outside.path().to_string_lossy().into_owned();

    let max = MAX_MIB.to_string();
    let agent = AgentProc::start_with("hostile", &["--max-snapshot-mib", &max]);
    let data = agent.data_dir.clone();
    let mut c = agent.client().await;

    // A workload already running on the node under attack.
    let s = start(
        &mut c,
        spec(&["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"]),
    )
    .await;
    let victim = id_of(&s);
    wait_log(&c, &victim, "ticks", T, |l| tick_numbers(l).len() >= 3).await;

    // A migration id already in use (a scratch dir kept or in flight) is refused, not deleted.
    let taken = data.join("migrations/m-taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("restore.log"), b"kept").unwrap();

    let abs = format!("{sentinel_dir}/evil");
    let inv = Code::InvalidArgument;
    let cases: Vec<(&str, Vec<pb::SnapshotPart>, Code, String)> = vec![
        // Names that leave the root.
        (
            "dotdot",
            Stream::new("m-dotdot").with(file("../evil", 4), b"evil").parts(),
            inv,
            "\"..\" component".into(),
        ),
        (
            "absolute",
            Stream::new("m-abs").with(file(&abs, 4), b"evil").parts(),
            inv,
            "is absolute".into(),
        ),
        (
            "nested dotdot",
            Stream::new("m-nested").with(file("images/../../evil", 4), b"evil").parts(),
            inv,
            "\"..\" component".into(),
        ),
        (
            "through a planted symlink",
            Stream::new("m-link")
                .with(link("images/lnk", &sentinel_dir), b"")
                .with(file("images/lnk/evil", 4), b"evil")
                .parts(),
            inv,
            "parent of \"images/lnk/evil\" is not a directory".into(),
        ),
        (
            "a file over a planted symlink",
            Stream::new("m-over")
                .with(link("images/keep", &sentinel.to_string_lossy()), b"")
                .with(file("images/keep", 4), b"evil")
                .parts(),
            inv,
            "\"images/keep\" appears twice".into(),
        ),
        (
            "long name",
            Stream::new("m-long")
                .with(file(&format!("images/{}", "x".repeat(300)), 1), b"x")
                .parts(),
            inv,
            "300 bytes (limit 255".into(),
        ),
        // The log and working directory as symlinks: the agent would append to, or hand out,
        // a path outside the snapshot.
        (
            "log symlink",
            Stream::new("m-log")
                .with(dir("log"), b"")
                .with(link("log/output.log", &sentinel.to_string_lossy()), b"")
                .parts(),
            inv,
            "\"log/output.log\" in the snapshot is not a regular file".into(),
        ),
        (
            "work symlink",
            {
                let mut s = Stream::new("m-work").with(link("work", &sentinel_dir), b"");
                s.restore.ships_workdir = true;
                s.parts()
            },
            inv,
            "\"work\" in the snapshot is not a directory".into(),
        ),
        (
            "images symlink",
            {
                let mut s = Stream::new("m-images");
                s.files[0] = link("images", &sentinel_dir);
                s.parts()
            },
            inv,
            "\"images\" in the snapshot is not a directory".into(),
        ),
        // Sizes that lie.
        (
            "declared above --max-snapshot-mib",
            Stream::new("m-big").with(file("images/pages.img", (MAX_MIB << 20) + 1), b"").parts(),
            inv,
            format!("exceeds this agent's limit (--max-snapshot-mib) of {} bytes", MAX_MIB << 20),
        ),
        (
            "declared 2^60 bytes",
            Stream::new("m-huge").with(file("images/pages.img", 1 << 60), b"").parts(),
            inv,
            "snapshot of 1152921504606846976 bytes exceeds".into(),
        ),
        (
            "file longer than declared",
            {
                let s = Stream::new("m-longer").with(file("images/a", 4), b"abcdefgh");
                s.parts()
            },
            inv,
            "\"images/a\" is longer than the 4 bytes the manifest announced".into(),
        ),
        (
            "file shorter than declared",
            {
                let s = Stream::new("m-shorter").with(file("images/a", 10), b"abcde");
                s.parts()
            },
            inv,
            "\"images/a\" ended after 5 of 10 bytes".into(),
        ),
        (
            "trailer totals",
            {
                let s = Stream::new("m-totals").with(file("images/a", 3), b"abc");
                let chunks = s.chunks();
                let mut t = s.trailer(&chunks);
                t.bytes_raw += 1;
                s.parts_with(chunks, t)
            },
            Code::DataLoss,
            "trailer says 2 files, 1 chunks, 4 bytes; received 2, 1, 3".into(),
        ),
        (
            "bad digest",
            {
                let s = Stream::new("m-digest").with(file("images/a", 3), b"abc");
                let chunks = s.chunks();
                let mut t = s.trailer(&chunks);
                t.file_digests[1] = ferry_agent_digest(b"abd");
                s.parts_with(chunks, t)
            },
            Code::DataLoss,
            "digest mismatch for \"images/a\"".into(),
        ),
        (
            "bad checksum",
            {
                let s = Stream::new("m-crc").with(file("images/a", 3), b"abc");
                let mut chunks = s.chunks();
                let mut flipped = chunks[0].payload.to_vec();
                flipped[0] ^= 1;
                chunks[0].payload = flipped.into();
                let t = s.trailer(&chunks);
                s.parts_with(chunks, t)
            },
            Code::DataLoss,
            "checksum mismatch in chunk at offset 0 of file 1".into(),
        ),
        // Chunks over the limits, and a zip bomb.
        (
            "oversized chunk",
            {
                let s = Stream::new("m-oversized")
                    .with(file("images/a", CHUNK as u64 + 1), &vec![1; CHUNK + 1]);
                let big = raw_chunk(1, 0, &vec![1; CHUNK + 1]);
                let t = s.trailer(std::slice::from_ref(&big));
                s.parts_with(vec![big], t)
            },
            inv,
            "declares 1048577 raw bytes (limit 1048576 bytes per chunk)".into(),
        ),
        (
            "oversized payload",
            {
                let s = Stream::new("m-wire").with(file("images/a", 16), &[0; 16]);
                let mut c = raw_chunk(1, 0, &[0; 16]);
                c.payload = vec![0; CHUNK + 64 * 1024 + 1].into();
                s.parts_with(vec![c], pb::Trailer::default())
            },
            inv,
            "carries 1114113 wire bytes (limit 1114112 bytes per chunk)".into(),
        ),
        (
            "zip bomb",
            {
                let zeros = vec![0u8; 64 << 20];
                let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
                let s = Stream::new("m-bomb").with(file("images/a", 4096), &zeros[..4096]);
                let c = pb::Chunk {
                    file_index: 1,
                    offset: 0,
                    raw_len: 4096,
                    codec: pb::Codec::Zstd as i32,
                    payload: bomb.into(),
                    checksum: crc32c::crc32c(&zeros[..4096]),
                    zero_pages: Vec::new(),
                };
                s.parts_with(vec![c], pb::Trailer::default())
            },
            Code::DataLoss,
            "its zstd frame declares 67108864 bytes, the chunk 4096".into(),
        ),
        // Protocol.
        (
            "unknown format version",
            {
                let s = Stream::new("m-version");
                let mut parts = s.parts();
                if let Some(Part::Manifest(m)) = &mut parts[0].part {
                    m.format_version = 99;
                }
                parts
            },
            Code::FailedPrecondition,
            "snapshot format version 99 is not supported".into(),
        ),
        (
            "chunk before manifest",
            vec![part(Part::Chunk(raw_chunk(0, 0, b"x")))],
            inv,
            "the first part of a snapshot must be its manifest".into(),
        ),
        (
            "migration id with a slash",
            Stream::new("../m-escape").parts(),
            inv,
            "migration id \"../m-escape\" must be 1-64 characters".into(),
        ),
        (
            "migration id in use",
            Stream::new("m-taken").parts(),
            Code::AlreadyExists,
            "migration id \"m-taken\" is already in use on this node".into(),
        ),
        (
            "the running workload's id",
            {
                let mut s = Stream::new("m-steal");
                s.spec_id = victim.clone();
                s.parts()
            },
            Code::AlreadyExists,
            format!("workload \"{victim}\" already exists"),
        ),
    ];
    let before = tree(&data);
    for (what, parts, code, needle) in cases {
        refused(&mut c, what, parts, code, &needle).await;
        // Healthy after every push.
        let h = c.health_check(pb::HealthCheckRequest {}).await.expect("health").into_inner();
        assert_eq!(h.node, "hostile");
    }

    // Nothing outside the data dir changed; inside it, only the planted scratch dir and the
    // running workload's own files exist (no scratch dir of a refused push is left behind).
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched\n");
    assert_eq!(tree(outside.path()), vec![sentinel.clone()], "nothing new beside the sentinel");
    let after = tree(&data);
    let victim_dir = data.join("workloads").join(&victim);
    for p in &after {
        let allowed = p.starts_with(&victim_dir)
            || p.starts_with(&taken)
            || *p == data.join("workloads")
            || *p == data.join("migrations")
            || *p == data.join("pages") // made (empty) when the agent starts
            || *p == data.join("fdstore.sock");
        assert!(allowed, "left behind by a refused push: {p:?}\nbefore: {before:?}");
    }
    assert_eq!(std::fs::read(taken.join("restore.log")).unwrap(), b"kept");

    // The running workload was not touched: still the only one, still counting without a gap.
    let listed = c.list_processes(pb::ListProcessesRequest {}).await.unwrap().into_inner();
    let ids: Vec<String> = listed.processes.iter().map(id_of).collect();
    assert_eq!(ids, vec![victim.clone()]);
    let seen =
        tick_numbers(&logs(&mut c, &victim).await.into_iter().map(|l| l.text).collect::<Vec<_>>())
            .len();
    let lines =
        wait_log(&c, &victim, "ticks after the attack", T, |l| tick_numbers(l).len() > seen + 5)
            .await;
    let ticks = tick_numbers(&lines);
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "ticks without a gap or restart: {ticks:?}");
    }
}

#[tokio::test]
async fn page_tunnels_that_do_not_name_their_migration_are_refused() {
    if !require_root("page_tunnels_that_do_not_name_their_migration_are_refused") {
        return;
    }
    let agent = AgentProc::start("tunnel");
    let mut c = agent.client().await;
    let bytes =
        |mid: &str, data: &[u8]| pb::TunnelBytes { migration_id: mid.into(), data: data.to_vec() };
    let cases: Vec<(&str, Vec<pb::TunnelBytes>, &str)> = vec![
        ("closed at once", vec![], "closed before naming its migration"),
        ("no migration id", vec![bytes("", b"")], "names its migration"),
        ("data before the name", vec![bytes("m-1", &[0u8; 24])], "carries no data"),
    ];
    for (what, parts, needle) in cases {
        let err = c.page_tunnel(tokio_stream::iter(parts)).await.map(|_| ()).expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
        assert!(err.message().contains(needle), "{what}: {:?} lacks {needle:?}", err.message());
    }
    assert!(c.health_check(pb::HealthCheckRequest {}).await.is_ok(), "the agent is still healthy");
}

/// A page-server command header as CRIU 4.2 writes it (32 bytes, host order).
fn ps_header(cmd: u32) -> Vec<u8> {
    let mut h = cmd.to_ne_bytes().to_vec();
    h.resize(32, 0);
    h
}

/// An OPEN2 header for image `dst_id` (id << 8 | type).
fn ps_open(dst_id: u64) -> Vec<u8> {
    let mut h = ps_header(4);
    h[24..32].copy_from_slice(&dst_id.to_ne_bytes());
    h
}

#[tokio::test]
async fn page_streams_that_break_the_rules_are_refused() {
    if !require_root("page_streams_that_break_the_rules_are_refused") {
        return;
    }
    let agent = AgentProc::start("pages");
    let mut c = agent.client().await;
    let named = |mid: &str| pb::PagePart { migration_id: mid.into(), ..Default::default() };
    let commands = |b: Vec<u8>| pb::PagePart { commands: b, ..Default::default() };
    let chunk = |c: pb::Chunk| pb::PagePart { chunk: Some(c), ..Default::default() };
    let end = |bytes: u64, digest: &str| pb::PagePart {
        end: Some(pb::PageStreamEnd { bytes, digest: digest.into() }),
        ..Default::default()
    };
    let close = ps_header(0x1023);
    let close_digest = blake3::hash(&close).to_hex().to_string();
    let cases: Vec<(&str, Vec<pb::PagePart>, Code, &str)> = vec![
        ("closed at once", vec![], Code::InvalidArgument, "closed before naming its migration"),
        (
            "a chunk in the first part",
            vec![pb::PagePart { chunk: Some(raw_chunk(0, 0, &[1u8; 4096])), ..named("m-p0") }],
            Code::InvalidArgument,
            "carries nothing else",
        ),
        (
            "a traversing migration id",
            vec![named("../m")],
            Code::InvalidArgument,
            "names its migration",
        ),
        (
            "torn commands",
            vec![named("m-p1"), commands(vec![0u8; 10])],
            Code::InvalidArgument,
            "10 bytes of commands",
        ),
        (
            "data out of place",
            vec![named("m-p2"), chunk(raw_chunk(0, 4096, &[1u8; 4096]))],
            Code::InvalidArgument,
            "where 0 was due",
        ),
        (
            "no last part",
            vec![named("m-p3"), commands(close.clone())],
            Code::Aborted,
            "ended before its last part",
        ),
        (
            "a corrupt chunk",
            vec![named("m-p4"), chunk(pb::Chunk { checksum: 7, ..raw_chunk(0, 0, &[1u8; 4096]) })],
            Code::DataLoss,
            "checksum mismatch",
        ),
        (
            "page data no command announced",
            vec![named("m-p8"), chunk(raw_chunk(0, 0, &[1u8; 4096]))],
            Code::InvalidArgument,
            "page data no command announced",
        ),
        (
            "an image of an unknown type",
            vec![named("m-p9"), commands(ps_open(0x107)), end(32, "00")],
            Code::InvalidArgument,
            "image type 7",
        ),
        (
            "a digest that does not match",
            vec![named("m-p5"), commands(close.clone()), end(32, "00")],
            Code::DataLoss,
            "does not match",
        ),
    ];
    for (what, parts, code, needle) in cases {
        let err = c.push_pages(tokio_stream::iter(parts)).await.map(|_| ()).expect_err(what);
        eprintln!("{what}: {:?} {}", err.code(), err.message());
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(err.message().contains(needle), "{what}: {:?} lacks {needle:?}", err.message());
    }
    let pages = agent.data_dir.join("pages");
    let left: Vec<_> = std::fs::read_dir(&pages)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "refused page streams leave nothing behind: {left:?}");

    // An honest (empty) stream is taken once; a snapshot must name exactly it.
    let honest = || vec![named("m-p6"), commands(close.clone()), end(32, &close_digest)];
    c.push_pages(tokio_stream::iter(honest())).await.expect("an honest page stream");
    let again = c.push_pages(tokio_stream::iter(honest())).await.expect_err("a second one");
    assert_eq!(again.code(), Code::AlreadyExists, "{}", again.message());
    let mut s = Stream::new("m-p6");
    s.restore.page_stream = Some(pb::PageStreamEnd { bytes: 32, digest: "00".into() });
    refused(&mut c, "another stream named", s.parts(), Code::DataLoss, "is not the one").await;
    let mut s = Stream::new("m-p7");
    s.restore.page_stream = Some(pb::PageStreamEnd { bytes: 32, digest: close_digest.clone() });
    refused(&mut c, "a stream that never came", s.parts(), Code::InvalidArgument, "did not arrive")
        .await;
    assert!(c.health_check(pb::HealthCheckRequest {}).await.is_ok(), "the agent is still healthy");
}

#[tokio::test]
async fn page_reservations_are_checked_used_and_given_back() {
    if !require_root("page_reservations_are_checked_used_and_given_back") {
        return;
    }
    let agent = AgentProc::start("reserve");
    let mut c = agent.client().await;
    let image = |image_id: u64, bytes: u64| pb::PageReservation { image_id, bytes };
    let reserve = |mid: &str, images: Vec<pb::PageReservation>| pb::ReservePagesRequest {
        migration_id: mid.into(),
        images,
    };
    let cases = vec![
        ("a traversing migration id", reserve("../m", vec![]), "names its migration"),
        ("too many images", reserve("m-r0", vec![image(0x201, 1); 5000]), "at most 4096"),
        (
            "more than the node takes",
            reserve("m-r0", vec![image(0x201, u64::MAX), image(0x301, 2)]),
            "snapshot limit",
        ),
    ];
    for (what, req, needle) in cases {
        let err = c.reserve_pages(req).await.map(|_| ()).expect_err(what);
        eprintln!("{what}: {:?} {}", err.code(), err.message());
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
        assert!(err.message().contains(needle), "{what}: {:?} lacks {needle:?}", err.message());
    }
    let pages = agent.data_dir.join("pages");

    // A reservation becomes the pages image of its id, cut to what the stream wrote; the
    // reservation for an image the stream did not have is given back.
    let r = c
        .reserve_pages(reserve("m-r1", vec![image(0x201, 1 << 20), image(0x301, 2 << 20)]))
        .await
        .expect("a reservation")
        .into_inner();
    assert_eq!(r.bytes_reserved, 3 << 20);
    let reserved = std::fs::metadata(pages.join("m-r1/reserve-201")).expect("reserve-201").len();
    assert_eq!(reserved, 1 << 20, "the file is allocated to its full size");
    let mut add = ps_header(6 | 4 << 16);
    add[8..16].copy_from_slice(&2u64.to_ne_bytes());
    add[16..24].copy_from_slice(&0x10000u64.to_ne_bytes());
    add[24..32].copy_from_slice(&0x201u64.to_ne_bytes());
    let mut data = vec![0xabu8; 4096];
    data.resize(8192, 0);
    let chunk = raw_chunk(0, 0, &data);
    let close = ps_header(0x1023);
    let mut digest = blake3::Hasher::new();
    digest.update(&ps_open(0x201));
    digest.update(&add);
    digest.update(&0u64.to_le_bytes());
    digest.update(&8192u32.to_le_bytes());
    digest.update(&chunk.checksum.to_le_bytes());
    digest.update(&close);
    let parts = vec![
        pb::PagePart { migration_id: "m-r1".into(), ..Default::default() },
        pb::PagePart { commands: [ps_open(0x201), add].concat(), ..Default::default() },
        pb::PagePart { chunk: Some(chunk), ..Default::default() },
        pb::PagePart { commands: close, ..Default::default() },
        pb::PagePart {
            end: Some(pb::PageStreamEnd {
                bytes: 3 * 32 + 8192,
                digest: digest.finalize().to_hex().to_string(),
            }),
            ..Default::default()
        },
    ];
    c.push_pages(tokio_stream::iter(parts)).await.expect("the page stream into a reservation");
    let mut names: Vec<_> = std::fs::read_dir(pages.join("m-r1"))
        .expect("the stream's images")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["pagemap-2.img", "pages-1.img"], "no reservation is left");
    let written = std::fs::read(pages.join("m-r1/pages-1.img")).expect("pages-1.img");
    assert_eq!(written, data, "the reserved file holds exactly the stream's pages");

    // A migration aborted before its pages came gives its reservation back at once.
    c.reserve_pages(reserve("m-r2", vec![image(0x201, 1 << 20)])).await.expect("a reservation");
    assert!(pages.join("m-r2").exists());
    c.abort_migration(pb::MigrationRef { migration_id: "m-r2".into() }).await.expect("an abort");
    assert!(!pages.join("m-r2").exists(), "the reservation is gone with the abort");
    let again = c.reserve_pages(reserve("m-r1", vec![])).await.expect_err("an id in use");
    assert_eq!(again.code(), Code::AlreadyExists, "{}", again.message());
}
