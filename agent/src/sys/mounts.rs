//! A workload's mount namespace as CRIU sees it (sys/spawn.rs makes it: a copy of the agent's,
//! made private, with a procfs of the workload's PID namespace on /proc and a devpts instance of
//! its own on /dev/pts).
//!
//! CRIU dumps a mount namespace mount by mount. The node's mounts the workload inherited (the
//! root, /dev, /sys, the data directory...) are not the workload's to carry: the dump names each
//! as external by its mount point (CRIU's `ext_mnt`, key = mount point), and the target binds its
//! own mount at the same path in their place, as it reopens files by path. What the workload
//! mounted itself, and its /proc and /dev/pts, CRIU dumps and recreates (a tmpfs with its files).
//! The external mount points travel with the images ([`EXTERNAL_LIST`]), so the target knows
//! every key before it restores; one it does not have is given an empty stand-in.

use std::path::{Path, PathBuf};

/// The file in a dump's images directory listing its external mount points, one a line:
/// `d PATH` (a directory) or `f PATH` (a file), PATH escaped as in /proc/PID/mountinfo.
pub const EXTERNAL_LIST: &str = "ferry-external-mounts";

/// One line of /proc/PID/mountinfo: what CRIU keys external mounts by and matches them with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The mount point, escaped as in mountinfo (`\040` for a space...).
    point: String,
    /// major:minor of the file system.
    dev: String,
    /// The file system's directory mounted there.
    root: String,
    fstype: String,
}

fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent, dev, root, point) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let fstype = f.skip_while(|x| *x != "-").nth(1)?;
            Some(Mount {
                point: point.into(),
                dev: dev.into(),
                root: root.into(),
                fstype: fstype.into(),
            })
        })
        .collect()
}

fn mounts_of(pid: &str) -> std::io::Result<Vec<Mount>> {
    let path = format!("/proc/{pid}/mountinfo");
    std::fs::read_to_string(&path)
        .map(|t| parse(&t))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// A mountinfo path with its octal escapes decoded.
pub fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount points of this process's namespace where a namespace file is mounted (nsfs: what
/// `ip netns add` leaves in /run/netns). A workload's namespace leaves them out (sys::spawn):
/// they are handles on the node's namespaces, and come and go with them; one that existed when a
/// workload started and is gone on the target, its mount point with it, failed the restore
/// ("mnt-v2: Can't stat mountpoint .../ferry-t223-0").
pub fn nsfs_points() -> std::io::Result<Vec<PathBuf>> {
    Ok(mounts_of("self")?
        .iter()
        .filter(|m| m.fstype == "nsfs")
        .map(|m| unescape(&m.point))
        .collect())
}

/// True when process `pid` lives in a mount namespace of its own workload's making: its /proc is
/// another procfs than this agent's (spawn mounts one of the workload's PID namespace there).
/// False for a workload an older agent started in its own mount namespace.
pub fn has_own_proc(pid: i32) -> std::io::Result<bool> {
    let proc_dev = |ms: &[Mount]| {
        ms.iter().rev().find(|m| m.point == "/proc" && m.fstype == "proc").map(|m| m.dev.clone())
    };
    Ok(proc_dev(&mounts_of(&pid.to_string())?) != proc_dev(&mounts_of("self")?))
}

/// The mount points of `pid`'s mount namespace that are the node's (this agent's namespace has
/// the same file system and directory mounted at the same point), but for the root: what a dump
/// names external. Each with whether it is a directory.
pub fn node_mounts_of(pid: i32) -> std::io::Result<Vec<(String, bool)>> {
    let ours = mounts_of("self")?;
    let mut out: Vec<(String, bool)> = Vec::new();
    for m in mounts_of(&pid.to_string())? {
        if m.point == "/" || out.iter().any(|(p, _)| *p == m.point) {
            continue;
        }
        if ours.iter().any(|o| o.point == m.point && o.dev == m.dev && o.root == m.root) {
            // Seen through the workload's root: the same path in its namespace.
            let at = Path::new("/proc").join(pid.to_string()).join("root");
            let inside = unescape(&m.point);
            let is_dir = std::fs::metadata(at.join(inside.strip_prefix("/").unwrap_or(&inside)))
                .map(|md| md.is_dir())
                .unwrap_or(true);
            out.push((m.point, is_dir));
        }
    }
    Ok(out)
}

/// Writes the list of external mount points into a dump's images directory.
pub fn write_list(images: &Path, list: &[(String, bool)]) -> std::io::Result<()> {
    let text: String =
        list.iter().map(|(p, d)| format!("{} {p}\n", if *d { 'd' } else { 'f' })).collect();
    super::fsmode::write(&images.join(EXTERNAL_LIST), text.as_bytes())
}

/// A restore's external mounts: (key, path to bind) pairs, and the mount points given a stand-in.
pub struct RestoreMap {
    pub binds: Vec<(String, String)>,
    pub standins: Vec<String>,
}

/// How a restore maps each external mount point of the images in `images` (none when the dump
/// had no list: a workload in the agent's mount namespace): to the same path here when this
/// agent's namespace has a mount there, else to an empty directory or file made under
/// `standins`.
pub fn restore_map(images: &Path, standins: &Path) -> std::io::Result<Option<RestoreMap>> {
    let text = match std::fs::read_to_string(images.join(EXTERNAL_LIST)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let ours = mounts_of("self")?;
    let (mut map, mut missing) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Some((kind, point)) = line.split_once(' ') else { continue };
        if ours.iter().any(|o| o.point == point) {
            let path = unescape(point).to_string_lossy().into_owned();
            map.push((path.clone(), path));
            continue;
        }
        let standin = standins.join(if kind == "d" { "dir" } else { "file" });
        if !standin.exists() {
            super::fsmode::dir(standins, super::fsmode::DIR)?;
            if kind == "d" {
                std::fs::create_dir(&standin)?;
            } else {
                std::fs::File::create(&standin)?;
            }
            let mode = if kind == "d" { 0o555 } else { 0o444 };
            std::fs::set_permissions(&standin, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        map.push((
            unescape(point).to_string_lossy().into_owned(),
            standin.to_string_lossy().into_owned(),
        ));
        missing.push(point.to_string());
    }
    Ok(Some(RestoreMap { binds: map, standins: missing }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_and_escapes() {
        let ms = parse(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n\
             46 27 254:0 /tmp/a\\040b /mnt/x\\040y rw master:3 - ext4 /dev/vda rw\n",
        );
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[0].fstype, "proc");
        assert_eq!(ms[1].root, "/run/netns");
        assert_eq!(ms[1].fstype, "ext4");
        assert_eq!(ms[2].point, "/mnt/x\\040y");
        assert_eq!(unescape(&ms[2].point), PathBuf::from("/mnt/x y"));
        assert_eq!(unescape("/a\\134b"), PathBuf::from("/a\\b"));
    }

    #[test]
    fn a_restore_binds_its_own_mounts_and_stand_ins_for_missing_ones() {
        let dir = std::env::temp_dir().join(format!("ferry-mounts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(restore_map(&dir, &dir.join("s")).unwrap().is_none(), "no list, no namespace");
        let list = [("/proc", true), ("/nowhere\\040here", true), ("/no/file", false)];
        let list: Vec<(String, bool)> = list.iter().map(|(p, d)| (p.to_string(), *d)).collect();
        write_list(&dir, &list).unwrap();
        let m = restore_map(&dir, &dir.join("s")).unwrap().expect("a map");
        let s = |p: &str| dir.join("s").join(p).to_string_lossy().into_owned();
        assert_eq!(
            m.binds,
            [
                ("/proc".into(), "/proc".into()),
                ("/nowhere here".into(), s("dir")),
                ("/no/file".into(), s("file"))
            ]
        );
        assert_eq!(m.standins, ["/nowhere\\040here", "/no/file"]);
        assert!(dir.join("s/dir").is_dir() && dir.join("s/file").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
