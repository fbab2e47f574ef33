//! The agent's data dir and who may enter it (modes from `sys::fsmode`):
//!
//! ```text
//! <data>/                         0711  root   (traverse only: workloads reach their own dirs)
//!   fdstore.sock                  0600  root
//!   workloads/                    0711  root
//!     <id>/                       0711  root   (0700 for a workload running as root)
//!       state.json, output.log    0600  root
//!       control.sock              0600  the workload's user (cooperative engine)
//!       work/                     0700  the workload's user and group (default working dir)
//!   migrations/                   0711  root
//!     <migration id>/             0700; 0711 for a cooperative workload with a user (its
//!                                 program writes or reads its state below it); images and
//!                                 CRIU files 0700 / 0600
//!   pages/<migration id>/         0700  root   (a stop-and-copy's page stream)
//! ```
//!
//! [`prepare`] creates it, and tightens what an older version left (0755 directories, 0644
//! files) before any workload is re-adopted.

use std::path::Path;

use crate::error::{AgentError, Result};
use crate::sys::fsmode::{self, DIR, FILE, TRAVERSE};

/// Files of a workload's directory that only the agent reads.
const PRIVATE_FILES: [&str; 4] = ["state.json", "state.json.tmp", "output.log", "control.sock"];

/// Creates the data dir's top level with its modes and tightens what older versions made.
pub fn prepare(data: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { path, source }
    };
    fsmode::dir(data, TRAVERSE).map_err(io(data))?;
    for (sub, mode) in [("workloads", TRAVERSE), ("migrations", TRAVERSE), ("pages", DIR)] {
        let path = data.join(sub);
        fsmode::dir(&path, mode).map_err(io(&path))?;
    }
    let sock = data.join("fdstore.sock");
    fsmode::tighten(&sock, FILE).map_err(io(&sock))?;
    for (sub, mode) in [("workloads", TRAVERSE), ("migrations", DIR), ("pages", DIR)] {
        let Ok(entries) = std::fs::read_dir(data.join(sub)) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Only widened modes are changed: a workload dir already 0700 stays so.
            let open = std::fs::symlink_metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0)
                .unwrap_or(false);
            if open {
                fsmode::tighten(&path, mode).map_err(io(&path))?;
            }
            if sub != "workloads" {
                continue;
            }
            for f in PRIVATE_FILES {
                let p = path.join(f);
                fsmode::tighten(&p, FILE).map_err(io(&p))?;
            }
            let work = path.join("work");
            fsmode::tighten(&work, DIR).map_err(io(&work))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_older_data_dir_is_tightened() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let w = data.join("workloads/w-old");
        std::fs::create_dir_all(w.join("work")).unwrap();
        std::fs::create_dir_all(data.join("migrations/m-old/images")).unwrap();
        for f in ["state.json", "output.log"] {
            std::fs::write(w.join(f), b"{}").unwrap();
        }
        std::fs::write(w.join("work/own"), b"the workload's").unwrap();
        let set = |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m));
        for p in [&data, &data.join("workloads"), &w, &w.join("work")] {
            set(p, 0o755).unwrap();
        }
        for f in ["state.json", "output.log", "work/own"] {
            set(&w.join(f), 0o644).unwrap();
        }
        prepare(&data).unwrap();
        let mode = |p: &str| std::fs::metadata(data.join(p)).unwrap().permissions().mode() & 0o7777;
        for (p, want) in [
            ("", 0o711),
            ("workloads", 0o711),
            ("migrations", 0o711),
            ("pages", 0o700),
            ("workloads/w-old", 0o711),
            ("workloads/w-old/state.json", 0o600),
            ("workloads/w-old/output.log", 0o600),
            ("workloads/w-old/work", 0o700),
            // The workload's own files keep their modes (its directory is closed).
            ("workloads/w-old/work/own", 0o644),
            ("migrations/m-old", 0o700),
        ] {
            assert_eq!(mode(p), want, "{p}");
        }
    }
}
