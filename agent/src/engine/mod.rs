//! Checkpoint engines: how a workload's state is captured on the source and brought back on the
//! target. Two implementations behind one trait, chosen per workload when it starts:
//! [`criu::CriuEngine`] (transparent, needs root and CRIU) and [`coop::CoopEngine`] (the program
//! saves its own state on request; no CRIU, no root).

pub mod coop;
pub mod criu;
pub mod lazy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::Agent;
use crate::workload::{Engine, Workload};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// CRIU failed; the message explains it and names the kept log.
    #[error("{message}")]
    Criu { message: String, log: PathBuf },
    #[error("the program did not save its state: {0}")]
    Cooperative(String),
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    pub fn log(&self) -> Option<&Path> {
        match self {
            EngineError::Criu { log, .. } => Some(log),
            _ => None,
        }
    }
}

/// Where a checkpoint is written: `images` (shipped) and `work` (CRIU's logs; kept locally).
pub struct CheckpointDirs<'a> {
    pub images: &'a Path,
    pub work: &'a Path,
    /// smaps of the tree's processes read before the freeze and known to still hold
    /// (migrate::layout): CRIU reads them there (`CRIU_SMAPS_DIR`) instead of in the freeze.
    pub smaps: Option<&'a Path>,
    /// A checkpoint the workload runs on after (not a migration): its established TCP
    /// connections are dumped too, to be restored closed (their peers will have moved on).
    pub survives: bool,
}

/// What a target needs to bring a workload back.
pub struct RestoreRequest<'a> {
    pub migration_id: &'a str,
    pub workload: crate::workload::WorkloadSpec,
    pub images: &'a Path,
    pub work: &'a Path,
    pub info: &'a ferry_proto::agent::RestoreInfo,
    /// The node the snapshot came from (for messages).
    pub source_node: &'a str,
}

pub trait CheckpointEngine: Send + Sync {
    fn name(&self) -> &'static str;

    /// True when the workload must be frozen before `checkpoint` (CRIU dumps a frozen tree);
    /// false when the program saves its state while running and is frozen afterwards.
    fn freezes_first(&self) -> bool;

    /// Captures `w` into `dirs.images`. Blocking. The workload is left as it was (frozen for
    /// CRIU); the caller freezes, commits or resumes it.
    fn checkpoint(
        &self,
        agent: &Agent,
        w: &Workload,
        dirs: &CheckpointDirs<'_>,
    ) -> Result<(), EngineError>;

    /// Brings the workload back on this node, stopped, registered as pending `migration_id`.
    fn restore(
        &self,
        agent: &Arc<Agent>,
        req: RestoreRequest<'_>,
    ) -> impl std::future::Future<Output = Result<Arc<Workload>, EngineError>> + Send
    where
        Self: Sized;
}

/// Calls the engine of `engine` (a resolved one: criu or cooperative).
pub fn checkpoint(
    engine: Engine,
    agent: &Agent,
    w: &Workload,
    dirs: &CheckpointDirs<'_>,
) -> Result<(), EngineError> {
    match engine {
        Engine::Cooperative => coop::CoopEngine.checkpoint(agent, w, dirs),
        _ => criu::CriuEngine.checkpoint(agent, w, dirs),
    }
}

pub fn freezes_first(engine: Engine) -> bool {
    match engine {
        Engine::Cooperative => coop::CoopEngine.freezes_first(),
        _ => criu::CriuEngine.freezes_first(),
    }
}

pub async fn restore(
    engine: Engine,
    agent: &Arc<Agent>,
    req: RestoreRequest<'_>,
) -> Result<Arc<Workload>, EngineError> {
    match engine {
        Engine::Cooperative => coop::CoopEngine.restore(agent, req).await,
        _ => criu::CriuEngine.restore(agent, req).await,
    }
}
