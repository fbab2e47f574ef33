//! Continuous checkpoints of protected workloads (docs/failover.md).
//!
//! A workload whose spec has a checkpoint interval is checkpointed by its agent while it runs:
//! the tree is stopped, CRIU dumps it leaving it stopped, the working directory is copied, and the
//! tree resumes; the freeze is that long. The images and the copy then become one object (the
//! snapshot stream a migration sends, zstd-compressed, sealed with the cluster key: [`object`])
//! written beside the workload's other checkpoints, shipped to replica agents ([`replica`]) and
//! reported to the coordinator, which restores the workload from it on another node if this one
//! is lost ([`restore`]). An agent that cannot renew its lease kills its protected workloads
//! ([`lease`]), so a restored copy is never a second one.
//!
//! On disk, on every holder alike: `<data dir>/checkpoints/<workload>/<checkpoint>.obj` and its
//! description `<checkpoint>.info` (a protobuf CheckpointInfo), the newest `keep` per workload.

pub mod lease;
pub mod object;
pub mod replica;
pub mod restore;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::agent as pb;
use prost::Message;

use crate::agent::Agent;
use crate::engine::CheckpointDirs;
use crate::error::{AgentError, Result};
use crate::snapshot::{self as snap, send, Sources};
use crate::workload::{Engine, Workload};

/// The shortest and longest checkpoint interval a spec may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// The first checkpoint of a protected workload comes this soon after it starts (or arrives, or
/// this agent starts), or after its interval if that is shorter.
pub const FIRST_AFTER: Duration = Duration::from_secs(5);
/// A holder forgets a workload's checkpoints once the newest is this old (the workload ended, or
/// moved where other holders were chosen).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The agent's checkpoint state.
#[derive(Default)]
pub struct Checkpoints {
    /// The other agents, as the coordinator's last heartbeat answer listed them.
    peers: Mutex<Vec<pb::Peer>>,
    /// Checkpoints taken and shipped, not yet reported to the coordinator.
    reports: Mutex<Vec<pb::CheckpointInfo>>,
    /// When each protected workload was last checkpointed (or first seen, for its first).
    last: Mutex<HashMap<String, Instant>>,
    /// One checkpoint at a time on a node: they compete for the same CPU and disk.
    taking: tokio::sync::Mutex<()>,
    pub(crate) lease: lease::Lease,
}

impl Checkpoints {
    pub fn set_peers(&self, peers: Vec<pb::Peer>) {
        *self.peers.lock().expect("peers poisoned") = peers;
    }

    pub fn peers(&self) -> Vec<pb::Peer> {
        self.peers.lock().expect("peers poisoned").clone()
    }

    /// Reports waiting for the coordinator (taken out; put back with [`Checkpoints::requeue`]).
    pub fn take_reports(&self) -> Vec<pb::CheckpointInfo> {
        std::mem::take(&mut *self.reports.lock().expect("reports poisoned"))
    }

    /// Puts back reports the coordinator did not take (at most the newest 1000 wait).
    pub fn requeue(&self, mut back: Vec<pb::CheckpointInfo>) {
        let mut r = self.reports.lock().expect("reports poisoned");
        back.append(&mut r);
        let excess = back.len().saturating_sub(1000);
        back.drain(..excess);
        *r = back;
    }
}

/// Where a workload's checkpoints are kept.
pub fn workload_dir(data_dir: &Path, workload: &str) -> PathBuf {
    data_dir.join("checkpoints").join(workload)
}

/// `workload`'s checkpoint directory, made (mode 0700, as its parent) if it is not there.
pub(crate) fn make_workload_dir(data_dir: &Path, workload: &str) -> Result<PathBuf> {
    let dir = workload_dir(data_dir, workload);
    for d in [data_dir.join("checkpoints"), dir.clone()] {
        crate::sys::fsmode::dir(&d, crate::sys::fsmode::DIR)
            .map_err(|source| AgentError::Io { path: d.clone(), source })?;
    }
    Ok(dir)
}

pub fn object_path(data_dir: &Path, workload: &str, checkpoint: &str) -> PathBuf {
    workload_dir(data_dir, workload).join(format!("{checkpoint}.obj"))
}

fn info_path(data_dir: &Path, workload: &str, checkpoint: &str) -> PathBuf {
    workload_dir(data_dir, workload).join(format!("{checkpoint}.info"))
}

/// Writes a checkpoint's description beside its object (atomically).
pub(crate) fn write_info(data_dir: &Path, info: &pb::CheckpointInfo) -> std::io::Result<()> {
    let path = info_path(data_dir, &info.workload_id, &info.id);
    let tmp = path.with_extension("info.tmp");
    crate::sys::fsmode::write(&tmp, &info.encode_to_vec())?;
    std::fs::rename(&tmp, &path)
}

/// The checkpoints kept here of `workload` (every workload's when None), newest first.
pub fn list(data_dir: &Path, workload: Option<&str>) -> Vec<pb::CheckpointInfo> {
    let root = data_dir.join("checkpoints");
    let dirs: Vec<PathBuf> = match workload {
        Some(w) => vec![root.join(w)],
        None => std::fs::read_dir(&root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "info") && p.with_extension("obj").is_file() {
                if let Some(info) =
                    std::fs::read(&p).ok().and_then(|b| pb::CheckpointInfo::decode(&*b).ok())
                {
                    out.push(info);
                }
            }
        }
    }
    out.sort_by_key(|i| std::cmp::Reverse((i.taken_at_ms, i.seq)));
    out
}

/// Keeps the newest `keep` checkpoints of `workload`; removes the rest (and leftovers of objects
/// being written or received by an earlier agent).
pub(crate) fn prune(data_dir: &Path, workload: &str, keep: usize) {
    let all = list(data_dir, Some(workload));
    for old in all.iter().skip(keep.max(1)) {
        let _ = std::fs::remove_file(object_path(data_dir, workload, &old.id));
        let _ = std::fs::remove_file(info_path(data_dir, workload, &old.id));
    }
}

/// Forgets every workload's checkpoints whose newest is older than [`RETENTION`], and partial
/// files an earlier agent left.
pub(crate) fn prune_stale(data_dir: &Path) {
    let now = crate::sys::now_ms();
    let Ok(dirs) = std::fs::read_dir(data_dir.join("checkpoints")) else { return };
    for d in dirs.flatten() {
        let wid = d.file_name().to_string_lossy().into_owned();
        let newest = list(data_dir, Some(&wid)).first().map(|i| i.taken_at_ms);
        if newest.is_none_or(|t| now - t > RETENTION.as_millis() as i64) {
            let _ = std::fs::remove_dir_all(d.path());
        } else if let Ok(files) = std::fs::read_dir(d.path()) {
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".part") || name.starts_with('.') {
                    let _ = std::fs::remove_dir_all(f.path());
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
}

/// The next sequence number of `workload`'s checkpoints kept here.
fn next_seq(data_dir: &Path, workload: &str) -> u64 {
    list(data_dir, Some(workload)).iter().map(|i| i.seq).max().unwrap_or(0) + 1
}

/// Up to `k` of `peers` to hold `workload`'s checkpoints: the same ones every time while the
/// peers are the same (highest blake3 of workload and node first), so each holder's newest
/// `keep` are consecutive.
pub fn pick_peers(peers: &[pb::Peer], workload: &str, self_node: &str, k: usize) -> Vec<pb::Peer> {
    let mut scored: Vec<([u8; 32], &pb::Peer)> = peers
        .iter()
        .filter(|p| p.node != self_node)
        .map(|p| (*blake3::hash(format!("{workload}\0{}", p.node).as_bytes()).as_bytes(), p))
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().take(k).map(|(_, p)| p.clone()).collect()
}

/// Releases a workload taken for a checkpoint however the checkpoint ends.
struct Held(Arc<Workload>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.end_migration();
    }
}

/// The holder name of the object store (--checkpoint-store) in a checkpoint's holders.
pub const S3_HOLDER: &str = "s3";

/// A checkpoint's key in the object store: by workload, oldest first.
pub fn s3_key(info: &pb::CheckpointInfo) -> String {
    format!("{}/{:016}-{}.obj", info.workload_id, info.taken_at_ms.max(0), info.id)
}

/// The target name a checkpoint holds a workload under (what a refused operation names).
pub const HOLDER: &str = "a checkpoint";

/// How long an operation waits for a checkpoint that holds its workload.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

/// Waits for a checkpoint that holds `w` to end (at most [`CHECKPOINT_WAIT`]): a stop, pause,
/// resume or migration that comes during one waits its freeze out rather than being refused.
pub(crate) async fn wait_checkpoint(w: &Workload) {
    let deadline = Instant::now() + CHECKPOINT_WAIT;
    while w.checkpointing() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Agent {
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// Refuses protection this node cannot give: no cluster key, no CRIU, an interval out of range.
    pub(crate) fn check_protection(&self, spec: &crate::workload::WorkloadSpec) -> Result<()> {
        let Some(every) = spec.checkpoint_interval else { return Ok(()) };
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&every) {
            return Err(AgentError::InvalidSpec(format!(
                "checkpoint interval {} s is out of range: give {} to {} seconds",
                every.as_secs(),
                MIN_INTERVAL.as_secs(),
                MAX_INTERVAL.as_secs()
            )));
        }
        self.can_checkpoint(spec.engine)
    }

    fn can_checkpoint(&self, engine: Engine) -> Result<()> {
        if self.cluster_key().is_none() {
            return Err(AgentError::InvalidSpec(format!(
                "node {} has no cluster key to seal checkpoints with: start its agent with \
                 --cluster-key-file (`ferry certs` writes one; every agent needs the same)",
                self.config().node
            )));
        }
        if engine == Engine::Cooperative {
            return Err(AgentError::InvalidSpec(
                "checkpoints need the CRIU engine; this workload uses the cooperative one".into(),
            ));
        }
        if !(self.is_root() && self.criu().check_passed) {
            return Err(AgentError::InvalidSpec(format!(
                "node {} cannot checkpoint: CRIU is not usable ({})",
                self.config().node,
                self.criu().check_error
            )));
        }
        Ok(())
    }

    /// Takes a checkpoint of workload `id` now, ships it to the replicas, and queues its report.
    pub async fn take_checkpoint(self: &Arc<Self>, id: &str) -> Result<pb::CheckpointInfo> {
        let w = self.get(id)?;
        self.can_checkpoint(w.spec.engine)?;
        self.require_alive(&w, "checkpoint")?;
        if w.pending_migration().is_some() {
            return Err(AgentError::BadState {
                id: w.id().to_string(),
                state: "arriving by migration (not yet committed)".into(),
                op: "checkpoint",
                hint: "; wait for its migration to finish",
            });
        }
        let _one = self.checkpoints.taking.lock().await;
        let ckid = ferry_proto::ids::new_id("c");
        if !w.begin_migration(&ckid, HOLDER) {
            return Err(w.require_not_migrating("checkpoint").err().unwrap_or(
                AgentError::BadState {
                    id: w.id().to_string(),
                    state: "busy".into(),
                    op: "checkpoint",
                    hint: "",
                },
            ));
        }
        let held = Held(w.clone());
        let t = Instant::now();
        let agent = self.clone();
        let ck = ckid.clone();
        let mut info = tokio::task::spawn_blocking(move || agent.write_checkpoint(&held.0, &ck))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        self.checkpoints.last.lock().expect("last poisoned").insert(id.to_string(), Instant::now());
        info.holders = vec![self.config().node.clone()];
        let peers = pick_peers(
            &self.checkpoints.peers(),
            id,
            &self.config().node,
            self.config().checkpoint_replicas,
        );
        let (shipped, stored) = tokio::join!(self.ship(&info, &peers), self.put_s3(&info));
        for (peer, shipped) in shipped {
            match shipped {
                Ok(()) => info.holders.push(peer.node),
                Err(e) => {
                    tracing::warn!(id, checkpoint = info.id, peer = peer.node, %e, "cannot ship the checkpoint to a replica")
                }
            }
        }
        match stored {
            Some(Ok(())) => info.holders.push(S3_HOLDER.into()),
            Some(Err(e)) => {
                tracing::warn!(id, checkpoint = info.id, %e, "cannot put the checkpoint in the object store")
            }
            None => {}
        }
        let data_dir = self.config().data_dir.clone();
        if let Err(e) = write_info(&data_dir, &info) {
            tracing::warn!(id, checkpoint = info.id, %e, "cannot record the checkpoint's holders");
        }
        prune(&data_dir, id, self.config().checkpoint_keep as usize);
        tracing::info!(
            id,
            checkpoint = info.id,
            seq = info.seq,
            freeze_ms = info.freeze_ms,
            bytes = info.bytes,
            raw_bytes = info.raw_bytes,
            holders = ?info.holders,
            ms = t.elapsed().as_millis() as u64,
            "checkpoint taken"
        );
        self.checkpoints.reports.lock().expect("reports poisoned").push(info.clone());
        Ok(info)
    }

    /// The blocking part: freeze, dump, copy the working directory, resume; then seal the
    /// snapshot into `<checkpoint>.obj`.
    fn write_checkpoint(&self, w: &Arc<Workload>, ckid: &str) -> Result<pb::CheckpointInfo> {
        let dir = make_workload_dir(&self.config().data_dir, w.id())?;
        let scratch = dir.join(format!(".{ckid}"));
        crate::sys::fsmode::new_dir(&scratch, crate::sys::fsmode::DIR)
            .map_err(|source| AgentError::Io { path: scratch.clone(), source })?;
        let result = self.seal(w, ckid, &dir, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn seal(
        &self,
        w: &Arc<Workload>,
        ckid: &str,
        dir: &Path,
        scratch: &Path,
    ) -> Result<pb::CheckpointInfo> {
        let key = self.cluster_key().expect("checked by can_checkpoint");
        let (images, criu, work) =
            (scratch.join("images"), scratch.join("criu"), scratch.join("work"));
        let ships_workdir = w.spec.cwd.is_none();
        let paused = w.is_paused();
        let taken_at_ms = crate::sys::now_ms();
        // Frozen from here until the tree continues: the dump and the working directory's copy.
        let frozen = Instant::now();
        let self_stopped =
            if paused { w.self_stopped() } else { crate::workload::stopped_tasks(w) };
        crate::workload::stop_tree(w)?;
        let dumped = crate::engine::checkpoint(
            w.spec.engine,
            self,
            w,
            &CheckpointDirs { images: &images, work: &criu, smaps: None, survives: true },
        )
        .map_err(|source| AgentError::Restore { node: self.config().node.clone(), source })
        .and_then(|()| {
            if ships_workdir {
                copy_tree(&w.cwd, &work).map_err(|e| {
                    AgentError::Internal(format!(
                        "cannot copy the working directory {} of workload {}: {e}",
                        w.cwd.display(),
                        w.id()
                    ))
                })
            } else {
                Ok(())
            }
        });
        // CRIU leaves the dumped connections in repair mode: out of it before anything runs.
        let sockets = crate::sys::net::unrepair_tcp(&crate::workload::task_pids(w));
        let resumed =
            if paused { Ok(()) } else { crate::workload::continue_tree(w, &self_stopped) };
        let freeze_ms = frozen.elapsed().as_millis().min(u32::MAX as u128) as u32;
        if let Err(e) = &resumed {
            tracing::error!(id = w.id(), %e, "cannot resume the workload after its checkpoint");
        }
        if let Err(e) = dumped {
            let why = match e {
                AgentError::Restore { source, .. } => format!(
                    "checkpoint {ckid} of workload {} failed on node {} (it runs on): {source}",
                    w.id(),
                    self.config().node
                ),
                other => other.to_string(),
            };
            return Err(AgentError::Precondition(why));
        }
        resumed?;
        tracing::debug!(id = w.id(), checkpoint = ckid, freeze_ms, sockets, "checkpoint dumped");
        let entries = snap::collect(&Sources {
            images: &images,
            work: ships_workdir.then_some(work.as_path()),
            log: None,
        })
        .map_err(|e| AgentError::Internal(format!("cannot read checkpoint {ckid}'s files: {e}")))?;
        let raw_bytes = entries.iter().map(|e| e.file.size).sum();
        let manifest = pb::Manifest {
            format_version: snap::FORMAT_VERSION,
            migration_id: ckid.to_string(),
            spec: Some(crate::grpc::spec_to_pb(&w.spec)),
            source_node: self.config().node.clone(),
            files: entries.iter().map(|e| e.file.clone()).collect(),
            digest: snap::DIGEST.into(),
            restore: Some(pb::RestoreInfo {
                paused,
                stopped_ns_pids: self_stopped,
                ships_workdir,
                close_tcp: true,
                ..crate::grpc::restore_info_of(w)
            }),
        };
        let (mut parts, sender) = send::start_with(
            manifest,
            entries,
            send::SendFault::None,
            Arc::new(send::Progress::default()),
            true,
            true,
        );
        let (obj, part) = (
            object_path(&self.config().data_dir, w.id(), ckid),
            dir.join(format!("{ckid}.obj.part")),
        );
        let written = (|| -> std::io::Result<(String, u64)> {
            let file = crate::sys::fsmode::create(&part)?;
            let mut writer =
                object::Writer::new(std::io::BufWriter::with_capacity(1 << 20, file), key)?;
            while let Some(p) = parts.blocking_recv() {
                let last = matches!(p.part, Some(pb::snapshot_part::Part::Trailer(_)));
                writer.push(&p, last)?;
            }
            let (digest, bytes, out) = writer.finish()?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok((digest, bytes))
        })();
        let sent =
            sender.join().map_err(|_| AgentError::Internal("snapshot sender panicked".into()))?;
        let (digest, bytes) = match (written, sent) {
            (Ok(v), Ok(())) => v,
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_file(&part);
                return Err(AgentError::Io { path: part, source: e });
            }
        };
        std::fs::rename(&part, &obj).map_err(io_err(&obj))?;
        let info = pb::CheckpointInfo {
            id: ckid.to_string(),
            workload_id: w.id().to_string(),
            seq: next_seq(&self.config().data_dir, w.id()),
            taken_at_ms,
            freeze_ms,
            bytes,
            raw_bytes,
            node: self.config().node.clone(),
            holders: vec![self.config().node.clone()],
            digest,
            spec: Some(crate::grpc::spec_to_pb(&w.spec)),
            keep: self.config().checkpoint_keep,
        };
        write_info(&self.config().data_dir, &info).map_err(io_err(&obj))?;
        Ok(info)
    }

    /// At start: a checkpoint an earlier agent was taking when it died left its scratch directory
    /// (`.<checkpoint>` beside the workload's objects), and maybe the workload stopped — by the
    /// agent, then by a CRIU that may still be dumping it. Once no task of the tree is traced any
    /// more, a tree still all stopped (and not paused by a user) has its connections taken out of
    /// repair mode and resumes; the scratch goes.
    pub(crate) fn recover_interrupted_checkpoints(self: &Arc<Self>) {
        let root = self.config().data_dir.join("checkpoints");
        let Ok(dirs) = std::fs::read_dir(&root) else { return };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            let scratch: Vec<PathBuf> = files
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with(".c-"))
                .map(|f| f.path())
                .collect();
            if scratch.is_empty() {
                continue;
            }
            let wid = d.file_name().to_string_lossy().into_owned();
            let w = self.get(&wid).ok().filter(|w| w.exit_info().is_none() && !w.is_paused());
            tracing::warn!(id = wid, "a checkpoint was cut short by the agent's death; resuming the workload once CRIU has let go of it");
            tokio::task::spawn_blocking(move || {
                if let Some(w) = w {
                    let deadline = Instant::now() + CHECKPOINT_WAIT;
                    let traced = |w: &Workload| {
                        crate::workload::task_pids(w)
                            .iter()
                            .any(|&p| crate::sys::proc::tracer(p).is_some_and(|t| t > 0))
                    };
                    while traced(&w) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if crate::workload::all_stopped(&w) {
                        crate::sys::net::unrepair_tcp(&crate::workload::task_pids(&w));
                        match crate::workload::continue_tree(&w, &[]) {
                            Ok(()) => tracing::info!(
                                id = w.id(),
                                "workload resumed after an interrupted checkpoint"
                            ),
                            Err(e) => {
                                tracing::error!(id = w.id(), %e, "cannot resume the workload after an interrupted checkpoint")
                            }
                        }
                    }
                }
                for s in scratch {
                    let _ = std::fs::remove_dir_all(s);
                }
            });
        }
    }

    /// Checkpoints every protected workload whose interval has passed, one at a time, for as
    /// long as the agent lives.
    pub(crate) fn spawn_protection(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            prune_stale_later(&weak).await;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(agent) = weak.upgrade() else { return };
                for id in agent.due() {
                    if let Err(e) = agent.take_checkpoint(&id).await {
                        // Tried again after another interval; a workload that ended or moved
                        // is simply no longer due.
                        agent
                            .checkpoints
                            .last
                            .lock()
                            .expect("last poisoned")
                            .insert(id.clone(), Instant::now());
                        if agent.get(&id).is_ok_and(|w| w.exit_info().is_none()) {
                            tracing::warn!(id, %e, "periodic checkpoint failed");
                        }
                    }
                }
            }
        });
    }

    /// Protected workloads due for a checkpoint now.
    fn due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut last = self.checkpoints.last.lock().expect("last poisoned");
        let mut due = Vec::new();
        let live: Vec<Arc<Workload>> = self
            .workloads()
            .into_iter()
            .filter(|w| w.spec.checkpoint_interval.is_some() && w.exit_info().is_none())
            .filter(|w| w.pending_migration().is_none())
            .collect();
        last.retain(|id, _| live.iter().any(|w| w.id() == id));
        for w in live {
            let every = w.spec.checkpoint_interval.expect("filtered");
            // First seen: its first checkpoint soon, not a whole interval away.
            let at = *last.entry(w.id().to_string()).or_insert_with(|| {
                now.checked_sub(every.saturating_sub(FIRST_AFTER.min(every))).unwrap_or(now)
            });
            if now.duration_since(at) >= every && w.require_not_migrating("checkpoint").is_ok() {
                due.push(w.id().to_string());
            }
        }
        due
    }
}

async fn prune_stale_later(weak: &std::sync::Weak<Agent>) {
    if let Some(agent) = weak.upgrade() {
        let dir = agent.config().data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || prune_stale(&dir)).await;
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io { path: path.to_path_buf(), source }
}

/// Copies a directory tree (files, symlinks, modes; owners are set again on the target, as for a
/// migration). Special files are left out, as a migration leaves them.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
            let mode = std::fs::metadata(&src)?.permissions().mode();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: &str) -> pb::Peer {
        pb::Peer { node: n.into(), address: format!("http://{n}:1") }
    }

    #[test]
    fn replicas_are_the_same_peers_while_the_peers_are_and_never_this_node() {
        let peers: Vec<pb::Peer> = ["a", "b", "c", "d"].iter().map(|n| peer(n)).collect();
        let first = pick_peers(&peers, "w-1", "a", 2);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|p| p.node != "a"));
        let mut shuffled = peers.clone();
        shuffled.reverse();
        assert_eq!(pick_peers(&shuffled, "w-1", "a", 2), first);
        assert_eq!(pick_peers(&peers, "w-1", "a", 9).len(), 3);
        // Different workloads spread over different peers.
        let spread: std::collections::HashSet<String> = (0..20)
            .map(|i| pick_peers(&peers, &format!("w-{i}"), "a", 1)[0].node.clone())
            .collect();
        assert!(spread.len() > 1, "{spread:?}");
    }

    #[test]
    fn only_the_newest_are_kept_and_listed_newest_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(workload_dir(d.path(), "w-1")).unwrap();
        for seq in 1..=5u64 {
            let info = pb::CheckpointInfo {
                id: format!("c-{seq}"),
                workload_id: "w-1".into(),
                seq,
                taken_at_ms: 1000 + seq as i64,
                ..Default::default()
            };
            std::fs::write(object_path(d.path(), "w-1", &info.id), b"x").unwrap();
            write_info(d.path(), &info).unwrap();
        }
        assert_eq!(next_seq(d.path(), "w-1"), 6);
        prune(d.path(), "w-1", 3);
        let ids: Vec<String> = list(d.path(), Some("w-1")).into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["c-5", "c-4", "c-3"]);
        assert!(!object_path(d.path(), "w-1", "c-1").exists());
        assert_eq!(list(d.path(), None).len(), 3);
    }
}
