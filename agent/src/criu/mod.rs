//! CRIU: finding it and whether it works on this host (here), and driving it over RPC (`rpc`).

pub mod failure;
pub mod rpc;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::command;
use crate::sys::reaper::Reaper;

/// Where criu is looked for besides PATH (the setup script installs to /usr/local/sbin).
const EXTRA_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CriuInfo {
    pub path: Option<PathBuf>,
    /// "4.2.1"; empty when not found.
    pub version: String,
    /// `criu --version`'s GitID: "4.2.1+ferry.<id of the patches>" when scripts/setup.sh built
    /// it with scripts/criu's patches; empty when it printed none.
    pub git_id: String,
    pub check_passed: bool,
    pub check_error: String,
}

impl CriuInfo {
    /// Runs `criu --version` and `criu check`. Blocking.
    pub fn detect(reaper: &Reaper, explicit: Option<&Path>) -> CriuInfo {
        let Some(path) = explicit.map(Path::to_path_buf).or_else(find) else {
            return CriuInfo {
                check_error: "criu not found on PATH nor in /usr/local/sbin; run scripts/setup.sh"
                    .into(),
                ..Default::default()
            };
        };
        let mut info = CriuInfo { path: Some(path.clone()), ..Default::default() };
        let mut cmd = Command::new(&path);
        cmd.arg("--version");
        match command::output(reaper, cmd) {
            Ok(out) => {
                info.version = parse_version(&out.stdout).unwrap_or_default();
                info.git_id = parse_git_id(&out.stdout).unwrap_or_default();
            }
            Err(e) => {
                info.check_error = format!("cannot run {path:?}: {e}");
                return info;
            }
        }
        let mut cmd = Command::new(&path);
        cmd.arg("check");
        match command::output(reaper, cmd) {
            Ok(out) if out.success() => info.check_passed = true,
            Ok(out) => {
                let text = format!("{}{}", out.stdout, out.stderr);
                info.check_error = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            }
            Err(e) => info.check_error = format!("cannot run {path:?} check: {e}"),
        }
        info
    }

    /// Whether this CRIU is ferry's build (scripts/setup.sh, with scripts/criu's patches): among
    /// them 0007, which dumps and restores the resource limits of another user's process
    /// without CAP_SYS_RESOURCE.
    pub fn is_ferry_build(&self) -> bool {
        self.git_id.contains("+ferry.")
    }

    /// (major, minor) of the version, if known.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
    }
}

fn find() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(EXTRA_DIRS)
        .map(|d| Path::new(d).join("criu"))
        .find(|p| p.is_file());
    found
}

/// "Version: 4.2.1\nGitID: ..." → "4.2.1".
fn parse_version(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string())
}

/// "Version: 4.2.1\nGitID: 4.2.1+ferry.0123456789ab" → "4.2.1+ferry.0123456789ab".
fn parse_git_id(out: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("GitID:")).map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("Version: 4.2.1\nGitID: v4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(parse_version("garbage"), None);
        let ours = "Version: 4.2.1\nGitID: 4.2.1+ferry.2141cea74ff6\n";
        assert_eq!(parse_git_id(ours).as_deref(), Some("4.2.1+ferry.2141cea74ff6"));
        let info = CriuInfo { git_id: parse_git_id(ours).unwrap(), ..Default::default() };
        assert!(info.is_ferry_build());
        let stock = CriuInfo { git_id: "v4.2.1".into(), ..Default::default() };
        assert!(!stock.is_ferry_build());
        assert!(!CriuInfo::default().is_ferry_build());
        let info = CriuInfo { version: "4.2.1".into(), ..Default::default() };
        assert_eq!(info.major_minor(), Some((4, 2)));
        let info = CriuInfo { version: "5".into(), ..Default::default() };
        assert_eq!(info.major_minor(), Some((5, 0)));
        assert_eq!(CriuInfo::default().major_minor(), None);
    }
}
