//! Checkpoint objects between agents: shipped to replicas (StoreCheckpoint), fetched back for a
//! restore (FetchCheckpoint). A replica keeps the object as it came — sealed; it has no use for
//! the key — once its blake3 digest matches the one its description names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_proto::agent as pb;
use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::agent::Agent;
use crate::error::{AgentError, Result};

/// Bytes per data part on the wire.
const PART: usize = 1 << 20;
/// How long shipping one object to one replica may take before it is given up.
const SHIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn part(p: pb::checkpoint_part::Part) -> pb::CheckpointPart {
    pb::CheckpointPart { part: Some(p) }
}

/// A checkpoint's description, checked before anything of it is written.
pub(crate) fn check_info(info: &pb::CheckpointInfo) -> Result<()> {
    for (what, id) in [("workload id", &info.workload_id), ("checkpoint id", &info.id)] {
        if !crate::workload::valid_id(id) {
            return Err(AgentError::InvalidRequest(format!(
                "{what} {id:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
    }
    if info.digest.len() != 64 || !info.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AgentError::InvalidRequest(format!(
            "checkpoint {} names no blake3 digest (64 hex digits)",
            info.id
        )));
    }
    Ok(())
}

/// Reads an object file in parts: its description first.
pub(crate) fn stream_object(
    info: pb::CheckpointInfo,
    path: PathBuf,
) -> tokio::sync::mpsc::Receiver<std::io::Result<pb::CheckpointPart>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        if tx.blocking_send(Ok(part(pb::checkpoint_part::Part::Info(info)))).is_err() {
            return;
        }
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; PART];
            match super::object::read_full(&mut f, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(part(pb::checkpoint_part::Part::Data(buf)))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Writes an object's bytes as they arrive to `<id>.obj.part`, checks size and digest, and moves
/// it into place; the description is written beside it. Returns the object's path.
async fn receive_object(
    data_dir: &Path,
    info: &pb::CheckpointInfo,
    data: &mut tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
) -> Result<PathBuf> {
    let dir = super::make_workload_dir(data_dir, &info.workload_id)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { path, source }
    };
    let obj = super::object_path(data_dir, &info.workload_id, &info.id);
    let partial = dir.join(format!("{}.obj.{}.part", info.id, ferry_proto::ids::new_id("r")));
    let mut file = std::io::BufWriter::with_capacity(
        PART,
        crate::sys::fsmode::create(&partial).map_err(io(&partial))?,
    );
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    let outcome: Result<()> = async {
        while let Some(data) = data.recv().await.transpose()? {
            bytes += data.len() as u64;
            if bytes > info.bytes {
                return Err(AgentError::InvalidRequest(format!(
                    "checkpoint {} sends more than the {} bytes its description says",
                    info.id, info.bytes
                )));
            }
            hasher.update(&data);
            tokio::task::block_in_place(|| file.write_all(&data)).map_err(io(&partial))?;
        }
        let digest = hasher.finalize().to_hex().to_string();
        if bytes != info.bytes || digest != info.digest {
            return Err(AgentError::Snapshot(crate::snapshot::receive::ReceiveError::Corrupt(
                format!(
                    "checkpoint object {} of workload {} arrived as {bytes} bytes with blake3 \
                     {digest}; its description says {} bytes, {}",
                    info.id, info.workload_id, info.bytes, info.digest
                ),
            )));
        }
        let f = file
            .into_inner()
            .map_err(|e| AgentError::Io { path: partial.clone(), source: e.into_error() })?;
        f.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, &obj).map_err(io(&obj))?;
        super::write_info(data_dir, info).map_err(io(&obj))?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    Ok(obj)
}

impl Agent {
    async fn peer_client(&self, address: &str) -> Result<AgentClient<Channel>> {
        let channel = self
            .config()
            .wire
            .endpoint(address)
            .map_err(|e| AgentError::InvalidRequest(format!("peer address {address:?}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                AgentError::StreamBroken(format!(
                    "cannot reach the agent at {address}: {}",
                    crate::migrate::source_chain(&e)
                ))
            })?;
        Ok(AgentClient::new(channel)
            .max_decoding_message_size(PART * 2)
            .max_encoding_message_size(PART * 2))
    }

    /// Ships the object of `info` to each of `peers` at once; what became of each.
    pub(crate) async fn ship(
        self: &Arc<Self>,
        info: &pb::CheckpointInfo,
        peers: &[pb::Peer],
    ) -> Vec<(pb::Peer, Result<()>)> {
        let path = super::object_path(&self.config().data_dir, &info.workload_id, &info.id);
        let mut set = tokio::task::JoinSet::new();
        for peer in peers {
            let (agent, info, path, peer) =
                (self.clone(), info.clone(), path.clone(), peer.clone());
            set.spawn(async move {
                let r = tokio::time::timeout(SHIP_TIMEOUT, agent.ship_one(info, path, &peer))
                    .await
                    .unwrap_or_else(|_| {
                        Err(AgentError::StreamBroken(format!(
                            "shipping to {} took longer than {} s",
                            peer.node,
                            SHIP_TIMEOUT.as_secs()
                        )))
                    });
                (peer, r)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok(r) = done {
                out.push(r);
            }
        }
        out
    }

    async fn ship_one(
        &self,
        info: pb::CheckpointInfo,
        path: PathBuf,
        peer: &pb::Peer,
    ) -> Result<()> {
        let mut client = self.peer_client(&peer.address).await?;
        let mut rx = stream_object(info, path.clone());
        let (tx, wire) = tokio::sync::mpsc::channel(2);
        // An object that cannot be read ends the stream early: the replica refuses it.
        let feed = async move {
            while let Some(p) = rx.recv().await {
                match p {
                    Ok(p) => {
                        if tx.send(p).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(AgentError::Io { path, source: e }),
                }
            }
            Ok(())
        };
        let call = client.store_checkpoint(tokio_stream::wrappers::ReceiverStream::new(wire));
        let (fed, answer) = tokio::join!(feed, call);
        fed?;
        answer.map_err(|s| {
            AgentError::StreamBroken(format!(
                "node {} refused the checkpoint: {}",
                peer.node,
                s.message()
            ))
        })?;
        Ok(())
    }

    /// StoreCheckpoint: keeps another node's checkpoint object.
    pub async fn store_replica(
        &self,
        mut parts: tonic::Streaming<pb::CheckpointPart>,
    ) -> Result<u32> {
        let broken = |s: tonic::Status| {
            AgentError::StreamBroken(format!("the checkpoint's sender went away ({})", s.message()))
        };
        let Some(pb::CheckpointPart { part: Some(pb::checkpoint_part::Part::Info(info)) }) =
            parts.message().await.map_err(broken)?
        else {
            return Err(AgentError::InvalidRequest(
                "a checkpoint's first part must be its description".into(),
            ));
        };
        check_info(&info)?;
        let data_dir = self.config().data_dir.clone();
        let declared = info.bytes;
        let free = crate::sys::host::free_bytes(&data_dir);
        if declared > free || declared > self.config().max_snapshot_bytes {
            return Err(AgentError::Snapshot(crate::snapshot::receive::ReceiveError::TooLarge {
                size: declared,
                limit: free.min(self.config().max_snapshot_bytes),
                what: "this node's free space or --max-snapshot-mib",
            }));
        }
        let mut data = data_parts(parts, "the checkpoint's sender");
        receive_object(&data_dir, &info, &mut data).await?;
        let keep = info.keep.clamp(1, 100) as usize;
        super::prune(&data_dir, &info.workload_id, keep);
        tracing::info!(
            id = info.workload_id,
            checkpoint = info.id,
            from = info.node,
            bytes = info.bytes,
            "replica of a checkpoint kept"
        );
        Ok(super::list(&data_dir, Some(&info.workload_id)).len() as u32)
    }

    /// The description and path of a checkpoint object held here.
    pub fn held_checkpoint(
        &self,
        workload: &str,
        id: &str,
    ) -> Result<(pb::CheckpointInfo, PathBuf)> {
        let data_dir = &self.config().data_dir;
        super::list(data_dir, Some(workload))
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| (i, super::object_path(data_dir, workload, id)))
            .ok_or_else(|| AgentError::NotFound {
                id: format!("{id} (a checkpoint of workload {workload})"),
            })
    }

    /// A checkpoint's object here: the copy this node holds, else one fetched from `holders` in
    /// order (kept here as one more copy). Every copy's digest is checked against `info`'s.
    pub(crate) async fn fetch_object(
        &self,
        info: &pb::CheckpointInfo,
        holders: &[pb::Peer],
    ) -> Result<PathBuf> {
        let data_dir = self.config().data_dir.clone();
        let mut tried = Vec::new();
        if let Ok((_, path)) = self.held_checkpoint(&info.workload_id, &info.id) {
            let (p, want) = (path.clone(), info.digest.clone());
            let digest = tokio::task::spawn_blocking(move || super::object::digest_file(&p))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?;
            match digest {
                Ok(d) if d == want => return Ok(path),
                Ok(d) => tried.push(format!(
                    "{} (here): its copy's blake3 is {d}, not {want}: corrupted",
                    self.config().node
                )),
                Err(e) => tried.push(format!("{} (here): {e}", self.config().node)),
            }
        }
        for h in holders.iter().filter(|h| h.node != self.config().node) {
            let r = async {
                let mut client = self.peer_client(&h.address).await?;
                let mut s = client
                    .fetch_checkpoint(pb::CheckpointRef {
                        workload_id: info.workload_id.clone(),
                        checkpoint_id: info.id.clone(),
                    })
                    .await
                    .map_err(|s| AgentError::StreamBroken(s.message().to_string()))?
                    .into_inner();
                match s.message().await.map_err(|s| AgentError::StreamBroken(s.message().into()))? {
                    Some(pb::CheckpointPart { part: Some(pb::checkpoint_part::Part::Info(_)) }) => {
                    }
                    _ => return Err(AgentError::StreamBroken("no description came first".into())),
                }
                let mut data = data_parts(s, &format!("node {}", h.node));
                receive_object(&data_dir, info, &mut data).await
            }
            .await;
            match r {
                Ok(path) => return Ok(path),
                Err(e) => tried.push(format!("{}: {e}", h.node)),
            }
        }
        if info.holders.iter().any(|h| h == super::S3_HOLDER) {
            match self.fetch_s3(info).await {
                Ok(path) => return Ok(path),
                Err(e) => tried.push(format!("{}: {e}", super::S3_HOLDER)),
            }
        }
        Err(AgentError::Precondition(format!(
            "no intact copy of checkpoint {} of workload {} could be had ({})",
            info.id,
            info.workload_id,
            if tried.is_empty() { "no holder was given".to_string() } else { tried.join("; ") }
        )))
    }
}

/// The data parts of a checkpoint stream (its description already read), forwarded by a task:
/// a second description, or a broken stream, ends it with an error.
fn data_parts(
    mut parts: tonic::Streaming<pb::CheckpointPart>,
    who: &str,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let who = who.to_string();
    tokio::spawn(async move {
        loop {
            let next = match parts.message().await {
                Ok(None) => return,
                Ok(Some(pb::CheckpointPart { part: Some(pb::checkpoint_part::Part::Data(d)) })) => {
                    Ok(d)
                }
                Ok(Some(_)) => Err(AgentError::InvalidRequest(
                    "a checkpoint stream has one description, then data".into(),
                )),
                Err(s) => {
                    Err(AgentError::StreamBroken(format!("{who} went away ({})", s.message())))
                }
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

impl Agent {
    /// Puts a checkpoint's object in the object store, if there is one, and keeps the newest
    /// `keep` of the workload there. None without a store.
    pub(crate) async fn put_s3(&self, info: &pb::CheckpointInfo) -> Option<Result<()>> {
        let store = self.object_store()?;
        let path = super::object_path(&self.config().data_dir, &info.workload_id, &info.id);
        let r = async {
            store.put_file(&super::s3_key(info), &path).await.map_err(s3_err)?;
            let mut all = store.list(&info.workload_id).await.map_err(s3_err)?;
            all.sort();
            let excess = all.len().saturating_sub(info.keep.clamp(1, 100) as usize);
            for (key, _) in all.into_iter().take(excess) {
                if let Err(e) = store.delete(&key).await {
                    tracing::warn!(key, %e, "cannot delete an old checkpoint from the object store");
                }
            }
            Ok(())
        }
        .await;
        Some(r)
    }

    /// A checkpoint's object from the object store into this node's checkpoints, its digest
    /// checked before it is kept.
    pub(crate) async fn fetch_s3(&self, info: &pb::CheckpointInfo) -> Result<PathBuf> {
        let store = self.object_store().ok_or_else(|| {
            AgentError::Precondition(format!(
                "node {} has no --checkpoint-store to fetch it from",
                self.config().node
            ))
        })?;
        let data_dir = self.config().data_dir.clone();
        let dir = super::make_workload_dir(&data_dir, &info.workload_id)?;
        let partial = dir.join(format!("{}.obj.{}.part", info.id, ferry_proto::ids::new_id("s")));
        let obj = super::object_path(&data_dir, &info.workload_id, &info.id);
        let r = async {
            store.get_to_file(&super::s3_key(info), &partial).await.map_err(s3_err)?;
            let p = partial.clone();
            let digest = tokio::task::spawn_blocking(move || super::object::digest_file(&p))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
                .map_err(|source| AgentError::Io { path: partial.clone(), source })?;
            if digest != info.digest {
                return Err(AgentError::Snapshot(crate::snapshot::receive::ReceiveError::Corrupt(
                    format!(
                        "checkpoint object {} of workload {} in the object store ({} in bucket \
                         {} at {}) has blake3 {digest}; its description says {}",
                        info.id,
                        info.workload_id,
                        super::s3_key(info),
                        store.bucket(),
                        store.endpoint(),
                        info.digest
                    ),
                )));
            }
            std::fs::rename(&partial, &obj)
                .map_err(|source| AgentError::Io { path: obj.clone(), source })?;
            super::write_info(&data_dir, info)
                .map_err(|source| AgentError::Io { path: obj.clone(), source })?;
            Ok(obj.clone())
        }
        .await;
        if r.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        r
    }
}

fn s3_err(e: crate::objstore::StoreError) -> AgentError {
    AgentError::StreamBroken(e.to_string())
}
