//! What to run, and its validation before anything is spawned.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// PATH given to workloads whose environment does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// CRIU when it is available, cooperative otherwise.
    #[default]
    Auto,
    Criu,
    Cooperative,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadSpec {
    pub id: String,
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// None: a fresh directory under the agent's data dir.
    pub cwd: Option<PathBuf>,
    pub engine: Engine,
    pub labels: BTreeMap<String, String>,
}

impl WorkloadSpec {
    /// Checks everything that can be checked without spawning. `cwd` is the directory the
    /// program will run in. Returns the environment the workload gets: PATH and HOME defaults, then
    /// the spec's own entries, then FERRY_WORKLOAD_ID.
    pub fn validate(&self, cwd: &Path) -> Result<Vec<(String, String)>> {
        let invalid = |m: String| Err(AgentError::InvalidSpec(m));
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return invalid(
                "argv is empty: give the program to run and its arguments, e.g. [\"sleep\", \"60\"]"
                    .into(),
            );
        }
        if !valid_id(&self.id) {
            return invalid(format!(
                "id {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
                self.id
            ));
        }
        if let Some(a) = self.argv.iter().find(|a| a.contains('\0')) {
            return invalid(format!("argument {a:?} contains a NUL byte"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return invalid(format!("environment name {k:?} is empty or contains '=' or NUL"));
            }
            if v.contains('\0') {
                return invalid(format!("environment value of {k} contains a NUL byte"));
            }
        }
        if !cwd.is_dir() {
            return Err(AgentError::BadCwd { path: cwd.to_path_buf() });
        }
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        env.insert("HOME".into(), cwd.to_string_lossy().into_owned());
        env.extend(self.env.clone());
        env.insert("FERRY_WORKLOAD_ID".into(), self.id.clone());
        resolve_program(&self.argv[0], cwd, &env["PATH"])?;
        Ok(env.into_iter().collect())
    }
}

/// An id usable as a file name: 1-64 letters, digits, '.', '_' or '-', not "." or "..". Workload
/// and migration ids both name directories under the data dir.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Finds the executable `execvp` would run, or says why there is none.
pub fn resolve_program(program: &str, cwd: &Path, path_var: &str) -> Result<PathBuf> {
    let check = |p: &Path| -> Result<PathBuf> {
        let meta = std::fs::metadata(p).map_err(|_| AgentError::ProgramNotFound {
            program: program.to_string(),
            searched: None,
        })?;
        if !meta.is_file() {
            return Err(AgentError::ProgramNotExecutable {
                program: program.to_string(),
                reason: "it is not a regular file".into(),
            });
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(AgentError::ProgramNotExecutable {
                program: program.to_string(),
                reason: "it has no execute permission".into(),
            });
        }
        Ok(p.to_path_buf())
    };
    if program.contains('/') {
        return check(&cwd.join(program));
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = cwd.join(dir).join(program);
        if candidate.is_file() {
            return check(&candidate);
        }
    }
    Err(AgentError::ProgramNotFound {
        program: program.to_string(),
        searched: Some(path_var.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> WorkloadSpec {
        WorkloadSpec {
            id: "w-1".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_argv_is_refused_with_an_example() {
        let err = spec(&[]).validate(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("argv is empty"), "{err}");
    }

    #[test]
    fn missing_program_names_the_path_searched() {
        let err = spec(&["no-such-program-xyz"]).validate(Path::new("/")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"no-such-program-xyz\" not found in PATH"), "{msg}");
        assert!(msg.contains("/usr/bin"), "{msg}");
    }

    #[test]
    fn absolute_and_path_programs_resolve() {
        let env = spec(&["sh", "-c", "true"]).validate(Path::new("/")).unwrap();
        assert!(env.iter().any(|(k, v)| k == "FERRY_WORKLOAD_ID" && v == "w-1"));
        spec(&["/bin/sh"]).validate(Path::new("/")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = spec(&["./plain"]).validate(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no execute permission"), "{err}");
        let err = spec(&["/etc"]).validate(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn bad_env_cwd_and_ids_are_refused() {
        let mut s = spec(&["sh"]);
        s.env.insert("A=B".into(), "x".into());
        assert!(s.validate(Path::new("/")).is_err());
        let err = spec(&["sh"]).validate(Path::new("/no/such/dir")).unwrap_err();
        assert!(matches!(err, AgentError::BadCwd { .. }));
        let mut s = spec(&["sh"]);
        s.id = "../etc".into();
        assert!(s.validate(Path::new("/")).unwrap_err().to_string().contains("id"));
    }

    #[test]
    fn spec_env_overrides_defaults() {
        let mut s = spec(&["sh"]);
        s.env.insert("PATH".into(), "/bin".into());
        let env = s.validate(Path::new("/")).unwrap();
        assert!(env.contains(&("PATH".to_string(), "/bin".to_string())));
    }
}
