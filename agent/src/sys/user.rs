//! Users and groups of the agent's host: resolving a workload's `user` and `group` (names from
//! /etc/passwd and /etc/group, or numbers) into the credentials its processes run with, and
//! handing its files to them.

use std::path::Path;

/// What a workload's processes run as. Applied between `clone` and `execve` (see
/// [`super::spawn`]): supplementary groups, then the group, then the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's from /etc/group (with `gid`), or `gid` alone.
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("user {user:?} does not exist on node {node} (not in /etc/passwd, not a number)")]
    UnknownUser { user: String, node: String },
    #[error("group {group:?} does not exist on node {node} (not in /etc/group, not a number)")]
    UnknownGroup { group: String, node: String },
    #[error(
        "uid {uid} has no entry in /etc/passwd on node {node}, so no primary group: give a group"
    )]
    NoPrimaryGroup { uid: u32, node: String },
    #[error("cannot look up {what}: {source}")]
    Lookup { what: String, source: std::io::Error },
}

/// Resolves a spec's user and group on this host; None when both are unset (the workload runs
/// as the agent's user). `node` names this host in errors.
pub fn resolve(
    user: Option<&str>,
    group: Option<&str>,
    node: &str,
) -> Result<Option<Credentials>, CredError> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let lookup = |what: String| move |e: nix::Error| CredError::Lookup { what, source: e.into() };
    let entry = match user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid))
                    .map_err(lookup(format!("uid {uid}")))?
                    .map(Ok)
                    .unwrap_or(Err(uid)),
                Err(_) => match User::from_name(u).map_err(lookup(format!("user {u:?}")))? {
                    Some(e) => Ok(e),
                    None => {
                        return Err(CredError::UnknownUser { user: u.into(), node: node.into() })
                    }
                },
            };
            Some(found)
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .map_err(lookup(format!("group {g:?}")))?
                .map(|e| e.gid.as_raw())
                .ok_or_else(|| CredError::UnknownGroup { group: g.into(), node: node.into() })?,
        },
        None => match &entry {
            Some(Ok(e)) => e.gid.as_raw(),
            Some(Err(uid)) => {
                return Err(CredError::NoPrimaryGroup { uid: *uid, node: node.into() })
            }
            // Neither user nor group: returned above.
            None => return Ok(None),
        },
    };
    let (uid, groups) = match &entry {
        // The user's supplementary groups, as login would set them (initgroups).
        Some(Ok(e)) => {
            let name = std::ffi::CString::new(e.name.as_str()).map_err(|_| CredError::Lookup {
                what: format!("groups of {:?}", e.name),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
            let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(lookup(format!("groups of {:?}", e.name)))?;
            (e.uid.as_raw(), groups.into_iter().map(Gid::as_raw).collect())
        }
        Some(Err(uid)) => (*uid, vec![gid]),
        // A group alone: the agent's user (root) with that group only.
        None => (nix::unistd::geteuid().as_raw(), vec![gid]),
    };
    Ok(Some(Credentials { uid, gid, groups }))
}

/// Gives `path` and, when it is a directory, everything below it to `uid`:`gid`. Symlinks are
/// changed themselves, never followed.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn names_and_numbers_resolve_unknown_ones_are_refused() {
        assert_eq!(resolve(None, None, "n").unwrap(), None);
        let root = resolve(Some("root"), None, "n").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let by_number = resolve(Some("0"), Some("0"), "n").unwrap().unwrap();
        assert_eq!((by_number.uid, by_number.gid), (0, 0));
        let err = resolve(Some("no-such-user-xyz"), None, "node7").unwrap_err().to_string();
        assert!(err.contains("\"no-such-user-xyz\" does not exist on node node7"), "{err}");
        let err = resolve(Some("root"), Some("no-such-group-xyz"), "n").unwrap_err().to_string();
        assert!(err.contains("group \"no-such-group-xyz\" does not exist"), "{err}");
        // A uid without a passwd entry needs a group.
        let err = resolve(Some("4000000"), None, "n").unwrap_err().to_string();
        assert!(err.contains("uid 4000000 has no entry"), "{err}");
        let c = resolve(Some("4000000"), Some("4000001"), "n").unwrap().unwrap();
        assert_eq!(c, Credentials { uid: 4000000, gid: 4000001, groups: vec![4000001] });
    }

    #[test]
    fn nobody_gets_its_primary_group() {
        if nix::unistd::User::from_name("nobody").ok().flatten().is_none() {
            eprintln!("*** SKIPPED nobody_gets_its_primary_group: no user nobody here ***");
            return;
        }
        let c = resolve(Some("nobody"), None, "n").unwrap().unwrap();
        assert_eq!(c.uid, 65534);
        assert!(c.groups.contains(&c.gid));
    }

    #[test]
    fn chown_tree_changes_links_not_their_targets() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("*** SKIPPED chown_tree_changes_links_not_their_targets: needs root ***");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        chown_tree(&tree, 4242, 4343).unwrap();
        for p in ["", "sub", "sub/f", "link"] {
            let m = std::fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
        }
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "the link's target is not changed"
        );
    }
}
