//! The workload's smaps, read before the freeze so that CRIU does not read them in it.
//!
//! CRIU reads `/proc/PID/smaps` for every task it dumps, and producing it walks the page tables
//! (about 11 ms per GiB resident here): in a post-copy migration, the one part of the freeze that
//! grew with the memory. Before a CRIU migration freezes the tree, the source reads each process's
//! smaps into `<scratch>/smaps/<pid>` with a [`layout::Watch`] counting every thread's mmap_lock
//! acquisitions and madvise calls. Once the tree is stopped, the copies are handed to CRIU (ferry's
//! CRIU patch 0005 reads `$CRIU_SMAPS_DIR/<pid>`) only if nothing could have changed a mapping or
//! its flags meanwhile; otherwise they are removed and CRIU reads smaps in the freeze as before.
//! Either way some task perf event stays open until the migration ends: the watch's counters, or
//! a do-nothing one when the watch could not start, which keeps CRIU's hardware breakpoints quick.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::sys::{layout, proc};
use crate::workload::Workload;

/// smaps read before the freeze, not yet known to hold.
pub(super) enum Before {
    /// The copies' directory and their watch.
    Read { dir: PathBuf, watch: layout::Watch },
    /// None could be made: a perf event that counts nothing instead, when it opened
    /// (`layout::keep_perf_switched_on`).
    Unread { _perf: Option<OwnedFd> },
}

/// The pids of `w`'s tree, as the freeze and CRIU see it.
fn pids(w: &Workload) -> Vec<i32> {
    proc::tree(w.init_pid, &proc::scan()).into_iter().map(|p| p.pid).collect()
}

/// Starts watching `w`'s tree and reads its smaps into `dir`. Without them (the reason logged),
/// CRIU reads smaps itself.
pub(super) fn read(w: &Workload, dir: &Path, migration: &str) -> Before {
    let attempt = || -> std::io::Result<Before> {
        let pids = pids(w);
        let watch = layout::start(&pids)?;
        crate::sys::fsmode::dir(dir, crate::sys::fsmode::DIR)?;
        for pid in pids {
            crate::sys::fsmode::write(&dir.join(pid.to_string()), &proc::smaps(pid)?)?;
        }
        Ok(Before::Read { dir: dir.to_path_buf(), watch })
    };
    attempt().unwrap_or_else(|e| {
        let _ = std::fs::remove_dir_all(dir);
        tracing::info!(migration, id = w.id(), "smaps are read in the freeze: {e}");
        let perf = layout::keep_perf_switched_on()
            .inspect_err(|e| {
                tracing::info!(
                    migration,
                    id = w.id(),
                    "no perf event held across the dump (CRIU's breakpoints may be slow to \
                     set): {e}"
                )
            })
            .ok();
        Before::Unread { _perf: perf }
    })
}

impl Before {
    /// After the tree stopped: the directory CRIU may read smaps from, or `None` (the copies
    /// removed, the reason logged) when there are none or the layout may have changed since. A few
    /// small /proc reads and counters, run in the freeze without a thread hop.
    /// Keep `self` until the workload runs again: dropping it closes the counters, which is slow
    /// (sys::layout::Watch), and while they are open CRIU's hardware breakpoints are quick to set
    /// (docs/migration.md, "Known limits").
    pub(super) fn still_holds(&self, w: &Workload, migration: &str) -> Option<PathBuf> {
        let Before::Read { dir, watch } = self else { return None };
        let changed = watch.changed(&pids(w)).unwrap_or_else(|e| Some(e.to_string()));
        match changed {
            None => {
                tracing::info!(
                    migration,
                    id = w.id(),
                    "CRIU reads the smaps read before the freeze"
                );
                Some(dir.clone())
            }
            Some(why) => {
                tracing::info!(
                    migration,
                    id = w.id(),
                    "smaps read before the freeze are not used (read again in it): {why}"
                );
                let _ = std::fs::remove_dir_all(dir);
                None
            }
        }
    }
}
