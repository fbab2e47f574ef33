//! File modes of what the agent keeps on disk. A workload may run as another user
//! (`sys::user`); nothing of the agent's — another workload's record, log or memory images, a
//! socket — may be readable or reachable by it. So every file the agent creates is mode 0600
//! and every directory 0700, except the directories a workload must pass through to reach its
//! own working directory, control socket or state: those are 0711 (traverse, never list).
//!
//! Modes are set when a file or directory is created, never widened afterwards: creation asks
//! for the final mode (which the umask can only narrow) and a following fchmod/chmod sets it
//! exactly, so no moment exists where a path is more open than it ends up.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Every file the agent writes.
pub const FILE: u32 = 0o600;
/// Every directory only the agent enters.
pub const DIR: u32 = 0o700;
/// Directories a workload running as another user passes through, without listing them.
pub const TRAVERSE: u32 = 0o711;

/// Makes `path` a directory of exactly `mode`: created (missing parents too, with the same
/// mode) or, when it exists, set to it (tightening one made by an older version).
pub fn dir(path: &Path, mode: u32) -> std::io::Result<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).ok_or(e)?;
            dir(parent, mode)?;
            match DirBuilder::new().mode(mode).create(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !std::fs::metadata(path)?.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ));
            }
        }
        Err(e) => return Err(e),
    }
    set(path, mode)
}

/// Creates `path` as a new directory of exactly `mode` (parents must exist); AlreadyExists
/// when it is there.
pub fn new_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    DirBuilder::new().mode(mode).create(path)?;
    set(path, mode)
}

/// Sets `path`'s mode to `mode` when it differs (following a symlink: the agent's own paths
/// hold none that others could plant).
pub fn set(path: &Path, mode: u32) -> std::io::Result<()> {
    if std::fs::metadata(path)?.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Sets the mode of `path` to `mode` if it exists and is not a symlink (tightening what an older
/// version made); a path that is not there is fine.
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(()),
        Ok(m) if m.permissions().mode() & 0o7777 != mode => {
            std::fs::set_permissions(path, Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Gives an open file mode 0600 (fchmod) unless it has it.
pub fn tighten_file(f: &File) -> std::io::Result<()> {
    if f.metadata()?.permissions().mode() & 0o7777 != FILE {
        f.set_permissions(Permissions::from_mode(FILE))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` as a file of mode 0600 holding `bytes`.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create(path)?.write_all(bytes)
}

/// Creates (or truncates) `path` as a file of mode 0600, open for writing.
pub fn create(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    tighten_file(&f)?;
    Ok(f)
}

/// Binds a Unix socket at `path` with `bind` so that it is mode 0600 from its first moment on
/// that path: bound in a fresh 0700 directory beside it, given its mode there, then renamed
/// into place (a socket's mode cannot be set before it exists, and its first one comes from the
/// umask). Whatever was at `path` before is replaced. A path too long for a socket address once
/// the few bytes of that directory are added is bound in place and given its mode at once (then
/// the umask decides its mode for that moment).
pub fn bind_private<T>(
    path: &Path,
    bind: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(std::io::ErrorKind::InvalidInput.into()),
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Short: a socket's path is at most 107 bytes.
    let tmp = parent.join(format!(".b{n:x}"));
    if tmp.join(name).as_os_str().len() > 107 {
        let s = bind(path)?;
        std::fs::set_permissions(path, Permissions::from_mode(FILE))?;
        return Ok(s);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    new_dir(&tmp, DIR)?;
    let at = tmp.join(name);
    let bound = bind(&at).and_then(|s| {
        std::fs::set_permissions(&at, Permissions::from_mode(FILE))?;
        std::fs::rename(&at, path)?;
        Ok(s)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn modes_are_exact_whatever_the_umask_and_existing_ones_are_tightened() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        dir(&deep, TRAVERSE).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&d.path().join(p)), TRAVERSE, "{p}");
        }
        std::fs::set_permissions(&deep, Permissions::from_mode(0o755)).unwrap();
        dir(&deep, DIR).unwrap();
        assert_eq!(mode(&deep), DIR);
        assert!(new_dir(&deep, DIR).is_err(), "an existing directory is not new");

        let f = deep.join("f");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        write(&f, b"new").unwrap();
        assert_eq!((mode(&f), std::fs::read(&f).unwrap()), (FILE, b"new".to_vec()));
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        tighten(&f, FILE).unwrap();
        assert_eq!(mode(&f), FILE);
        tighten(&deep.join("none"), FILE).unwrap();

        let sock = deep.join("s.sock");
        let l = bind_private(&sock, |p| std::os::unix::net::UnixListener::bind(p)).unwrap();
        assert_eq!(mode(&sock), FILE);
        std::os::unix::net::UnixStream::connect(&sock).unwrap();
        drop(l);
        let left: Vec<_> =
            std::fs::read_dir(&deep).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary directory left: {left:?}");
    }
}
