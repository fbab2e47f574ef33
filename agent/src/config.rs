//! The agent's configuration, parsed once by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone)]
pub struct AgentConfig {
    /// Address of the gRPC server.
    pub listen: SocketAddr,
    /// Root of the agent's state: workloads' directories and logs.
    pub data_dir: PathBuf,
    /// Name of this node (defaults to the hostname).
    pub node: String,
    /// The coordinator to register with and heartbeat to (a gRPC URL).
    pub coordinator: Option<String>,
    /// This agent's gRPC URL as other nodes and the coordinator reach it.
    pub advertise: String,
    /// Path of the ferry-init executable.
    pub init_path: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping a workload without an explicit grace.
    pub stop_grace: Duration,
    /// Path of the criu binary (default: found on PATH).
    pub criu_path: Option<PathBuf>,
    /// Largest snapshot this agent accepts, in bytes (also bounded by free space).
    pub max_snapshot_bytes: u64,
    /// Honour test-only faults in MigrateOut requests.
    pub fault_injection: bool,
    /// Keep every migration's scratch directory (images, CRIU logs) for inspection.
    pub keep_scratch: bool,
    /// Restore a stop-and-copy migration's memory eagerly (CRIU copies every page before the
    /// workload resumes) instead of lazily from the received images (docs/migration.md).
    pub eager_restore: bool,
    /// As a source: how long to wait for the target's restore once the whole snapshot has left
    /// before rolling back; `None`: 60 s plus 5 s per GiB of the snapshot and its pages.
    pub restore_deadline: Option<Duration>,
    /// How gRPC is secured: mutual TLS, or plain TCP when asked for.
    pub wire: ferry_proto::tls::Wire,
    /// How long an ended workload (its status, log and directory) is kept after it ended.
    pub keep_ended: Duration,
    /// Test-only, with `fault_injection`: as a target, kill this agent (SIGKILL) at this step of
    /// every commit it is asked for.
    pub test_crash_at_commit: Option<CommitCrash>,
    /// The cluster key file that seals checkpoints (docs/failover.md); None: this node refuses
    /// protected workloads.
    pub cluster_key_file: Option<PathBuf>,
    /// How many other agents get a copy of each checkpoint.
    pub checkpoint_replicas: usize,
    /// How many checkpoints of a workload each holder keeps.
    pub checkpoint_keep: u32,
    /// An S3-compatible store that keeps every checkpoint too (`s3://BUCKET/PREFIX?endpoint=..`).
    pub checkpoint_store: Option<String>,
}

/// Where a target agent kills itself while it commits a migration (test-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitCrash {
    /// The commit is recorded in the ledger; the copy is still stopped.
    Recorded,
    /// The copy runs; the source has no answer yet.
    Resumed,
}

impl AgentConfig {
    /// ferry-init next to the running executable (how `cargo build` and the installers lay it
    /// out).
    pub fn default_init_path() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ferry-init")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/ferry-init"))
    }
}
