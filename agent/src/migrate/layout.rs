//! The workload's smaps, read before the freeze so that CRIU does not read them in it.
//!
//! CRIU reads `/proc/PID/smaps` for every task it dumps, and producing it walks the page tables
//! (about 11 ms per GiB resident here): in a post-copy migration, the one part of the freeze that
//! grew with the memory. Before a CRIU migration freezes the tree, the source reads each process's
//! smaps into `<scratch>/smaps/<pid>` with a [`layout::Watch`] counting every thread's mmap_lock
//! acquisitions and madvise calls. Once the tree is stopped, the copies are handed to CRIU (ferry's
//! CRIU patch 0005 reads `$CRIU_SMAPS_DIR/<pid>`) only if nothing could have changed a mapping or
//! its flags meanwhile; otherwise they are removed and CRIU reads smaps in the freeze as before.

use std::path::{Path, PathBuf};

use crate::sys::{layout, proc};
use crate::workload::Workload;

/// smaps read before the freeze, not yet known to hold.
pub(super) struct Before {
    dir: PathBuf,
    watch: layout::Watch,
}

/// The pids of `w`'s tree, as the freeze and CRIU see it.
fn pids(w: &Workload) -> Vec<i32> {
    proc::tree(w.init_pid, &proc::scan()).into_iter().map(|p| p.pid).collect()
}

/// Starts watching `w`'s tree and reads its smaps into `dir`. `None` (with the reason logged)
/// when it cannot: CRIU then reads smaps itself.
pub(super) fn read(w: &Workload, dir: &Path, migration: &str) -> Option<Before> {
    let attempt = || -> std::io::Result<Before> {
        let pids = pids(w);
        let watch = layout::start(&pids)?;
        std::fs::create_dir_all(dir)?;
        for pid in pids {
            std::fs::write(dir.join(pid.to_string()), proc::smaps(pid)?)?;
        }
        Ok(Before { dir: dir.to_path_buf(), watch })
    };
    attempt()
        .inspect_err(|e| {
            let _ = std::fs::remove_dir_all(dir);
            tracing::info!(migration, id = w.id(), "smaps are read in the freeze: {e}");
        })
        .ok()
}

impl Before {
    /// After the tree stopped: the directory CRIU may read smaps from, or `None` (the copies
    /// removed, the reason logged) when the layout may have changed since they were read. A few
    /// small /proc reads and counters, run in the freeze without a thread hop.
    /// Keep `self` until the workload runs again: dropping it closes the counters, which is slow
    /// (sys::layout::Watch), and while they are open CRIU's hardware breakpoints are quick to set
    /// (docs/migration.md, "Known limits").
    pub(super) fn still_holds(&self, w: &Workload, migration: &str) -> Option<PathBuf> {
        let changed = self.watch.changed(&pids(w)).unwrap_or_else(|e| Some(e.to_string()));
        match changed {
            None => {
                tracing::info!(
                    migration,
                    id = w.id(),
                    "CRIU reads the smaps read before the freeze"
                );
                Some(self.dir.clone())
            }
            Some(why) => {
                tracing::info!(
                    migration,
                    id = w.id(),
                    "smaps read before the freeze are not used (read again in it): {why}"
                );
                let _ = std::fs::remove_dir_all(&self.dir);
                None
            }
        }
    }
}
