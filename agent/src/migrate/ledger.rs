//! What this node has promised about each migration it takes part in, on disk, so that an agent
//! killed mid-migration and restarted finishes or undoes every one of them (`migrate::recovery`,
//! docs/reliability.md).
//!
//! - The source writes `<data>/ledger/out/<id>.json` *before* each step that cannot be undone
//!   without it: before the freeze (`Frozen`: the original is stopped, no commit was sent), before
//!   the commit (`Committing`: from here the target may run the workload, so the original never
//!   resumes on its own), after a post-copy target confirmed its resume (`Resumed`), and at the
//!   end (`Ended`, with the outcome, kept an hour for the coordinator's GetMigration).
//! - The target writes `<data>/ledger/in/<id>.json` before it resumes a copy (`Committed`) and
//!   when it discards one (`Discarded`). A copy held for a commit is its workload's `state.json`
//!   (`pending_migration`), so "held" needs no record of its own.
//!
//! A record is written to a temporary file and renamed over the old one, so a reader never sees
//! half of one. It is not fsynced: the records guard against the agent dying, not the machine.
//! Page cache outlives a killed process; a machine that goes down takes the workload's copy on it
//! with it, and a lost record then describes a copy that no longer exists (docs/reliability.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How long an ended migration's record is kept (for GetMigration after a restart).
const ENDED_KEPT_MS: i64 = 3600 * 1000;
/// How long a target remembers what it did with a copy (commits and discards).
const INCOMING_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// The source's step in a migration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutStep {
    /// The original is (being) stopped; no commit was sent: the original may resume.
    Frozen,
    /// The commit may have been sent: the target may run the workload.
    Committing,
    /// Post-copy: the target confirmed it resumed the workload; the original never runs again.
    Resumed,
    /// Over; `outcome` says how.
    Ended,
}

/// The source's record of one migration.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Outgoing {
    pub migration_id: String,
    pub workload_id: String,
    /// The target agent's address, as given to MigrateOut.
    pub target: String,
    pub target_node: String,
    pub post_copy: bool,
    /// Whether the workload was paused before the migration (then it stays so on a rollback).
    pub was_paused: bool,
    /// Pids (in the workload's PID namespace) of tasks the workload itself had stopped before the
    /// freeze: a rollback leaves them stopped.
    #[serde(default)]
    pub self_stopped: Vec<i32>,
    pub step: OutStep,
    /// `Ended`: "completed", "rolled_back" or "failed"; and the error in words.
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub at_ms: i64,
}

/// What a target did with a copy it received.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InStep {
    /// Resumed on CommitMigration: the workload runs (or ran) here.
    Committed,
    /// Killed before it ever ran: aborted, or lost its memory source before the commit.
    Discarded,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Incoming {
    pub migration_id: String,
    pub workload_id: String,
    pub step: InStep,
    pub at_ms: i64,
}

fn dir(data: &Path, side: &str) -> PathBuf {
    data.join("ledger").join(side)
}

fn write<T: Serialize>(dir: &Path, id: &str, record: &T) -> std::io::Result<()> {
    if !crate::workload::valid_id(id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("migration id {id:?} cannot name a ledger record"),
        ));
    }
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
    })?;
    let (path, tmp) = (dir.join(format!("{id}.json")), dir.join(format!("{id}.json.tmp")));
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot write {}: {e}", tmp.display()))
        })?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot rename {} into place: {e}", tmp.display()))
    })
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), %e, "unreadable ledger record; ignored");
            None
        }
    }
}

fn list<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<T> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| read(p)).collect()
}

pub fn write_out(data: &Path, r: &Outgoing) -> std::io::Result<()> {
    write(&dir(data, "out"), &r.migration_id, r)
}

pub fn read_out(data: &Path, id: &str) -> Option<Outgoing> {
    crate::workload::valid_id(id).then(|| read(&dir(data, "out").join(format!("{id}.json"))))?
}

/// Every source record, oldest ended ones pruned first.
pub fn list_out(data: &Path) -> Vec<Outgoing> {
    let now = crate::sys::now_ms();
    let all: Vec<Outgoing> = list(&dir(data, "out"));
    let (old, keep): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|r| r.step == OutStep::Ended && now - r.at_ms > ENDED_KEPT_MS);
    for r in old {
        let _ = std::fs::remove_file(dir(data, "out").join(format!("{}.json", r.migration_id)));
    }
    keep
}

pub fn write_in(data: &Path, r: &Incoming) -> std::io::Result<()> {
    write(&dir(data, "in"), &r.migration_id, r)
}

pub fn read_in(data: &Path, id: &str) -> Option<Incoming> {
    crate::workload::valid_id(id).then(|| read(&dir(data, "in").join(format!("{id}.json"))))?
}

/// Removes target records older than a week.
pub fn prune_in(data: &Path) {
    let now = crate::sys::now_ms();
    for r in list::<Incoming>(&dir(data, "in")) {
        if now - r.at_ms > INCOMING_KEPT_MS {
            let _ = std::fs::remove_file(dir(data, "in").join(format!("{}.json", r.migration_id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str, step: OutStep, at_ms: i64) -> Outgoing {
        Outgoing {
            migration_id: id.into(),
            workload_id: "w-1".into(),
            target: "https://10.0.0.2:50051".into(),
            target_node: "node1".into(),
            post_copy: false,
            was_paused: false,
            self_stopped: vec![3],
            step,
            outcome: None,
            error: None,
            at_ms,
        }
    }

    #[test]
    fn records_round_trip_and_old_ended_ones_go() {
        let tmp = std::env::temp_dir().join(format!("ferry-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let now = crate::sys::now_ms();
        write_out(&tmp, &out("m-a", OutStep::Frozen, now)).unwrap();
        write_out(&tmp, &out("m-b", OutStep::Ended, now - ENDED_KEPT_MS - 1)).unwrap();
        write_out(&tmp, &out("m-c", OutStep::Committing, now - ENDED_KEPT_MS - 1)).unwrap();
        let ids: Vec<String> = list_out(&tmp).into_iter().map(|r| r.migration_id).collect();
        // An old record that has not ended is never pruned: its migration is not resolved.
        assert_eq!(ids, ["m-a", "m-c"]);
        assert!(read_out(&tmp, "m-b").is_none());
        let a = read_out(&tmp, "m-a").unwrap();
        assert_eq!((a.step, &a.self_stopped), (OutStep::Frozen, &vec![3]));
        write_out(&tmp, &Outgoing { step: OutStep::Committing, ..a }).unwrap();
        assert_eq!(read_out(&tmp, "m-a").unwrap().step, OutStep::Committing);
        assert!(write_out(&tmp, &out("../x", OutStep::Frozen, now)).is_err());
        assert!(read_out(&tmp, "../x").is_none());

        let inc = Incoming {
            migration_id: "m-d".into(),
            workload_id: "w-2".into(),
            step: InStep::Committed,
            at_ms: now,
        };
        write_in(&tmp, &inc).unwrap();
        write_in(&tmp, &Incoming { migration_id: "m-e".into(), at_ms: 0, ..inc.clone() }).unwrap();
        prune_in(&tmp);
        assert_eq!(read_in(&tmp, "m-d").unwrap().step, InStep::Committed);
        assert!(read_in(&tmp, "m-e").is_none());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.join("ledger/in/m-d.json")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
