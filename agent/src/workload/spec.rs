//! What to run, and its validation before anything is spawned.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// PATH given to workloads whose environment does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// At most this many arguments (argv\[0\] included).
pub const MAX_ARGS: usize = 4096;
/// Longest argument, and longest `NAME=value` environment entry, in bytes: the kernel's
/// MAX_ARG_STRLEN (128 KiB) less the terminating NUL.
pub const MAX_ARG_LEN: usize = 128 * 1024 - 1;
/// At most this many bytes of arguments in all (each counted with its NUL).
pub const MAX_ARGV_BYTES: usize = 1 << 20;
/// At most this many environment entries in a spec.
pub const MAX_ENV: usize = 4096;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_NAME: usize = 1024;
/// At most this many bytes of environment in all (each `NAME=value` counted with its NUL).
pub const MAX_ENV_BYTES: usize = 1 << 20;
/// Longest user or group name (Linux's LOGIN_NAME_MAX).
pub const MAX_USER_NAME: usize = 256;

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
    /// Run as this user (name or uid) instead of the agent's; resolved on the node.
    pub user: Option<String>,
    /// ...and this group (name or gid); None: the user's primary group.
    pub group: Option<String>,
    /// Its own IPv4 address (in a network namespace of its own); None: the node's network.
    pub address: Option<String>,
    /// Protection: checkpointed every this often while it runs (docs/failover.md); None: never.
    pub checkpoint_interval: Option<std::time::Duration>,
}

impl WorkloadSpec {
    /// The workload's own address, if it has one; a malformed one, or one no workload can hold
    /// (unspecified, loopback, multicast, broadcast, link-local), is INVALID_ARGUMENT.
    pub fn own_address(&self) -> Result<Option<std::net::Ipv4Addr>> {
        let Some(a) = &self.address else { return Ok(None) };
        let ip: std::net::Ipv4Addr = a.parse().map_err(|_| {
            AgentError::InvalidSpec(format!(
                "address {a:?} is not an IPv4 address such as 10.231.7.130"
            ))
        })?;
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_link_local()
        {
            return Err(AgentError::InvalidSpec(format!(
                "address {ip} cannot be a workload's own: give a unicast address of the cluster's \
                 workload range"
            )));
        }
        Ok(Some(ip))
    }

    /// Checks everything that can be checked without spawning. `cwd` is the directory the
    /// program will run in. Returns the environment the workload gets: PATH and HOME defaults, then
    /// the spec's own entries, then FERRY_WORKLOAD_ID.
    pub fn validate(&self, cwd: &Path) -> Result<Vec<(String, String)>> {
        let invalid = |m: String| Err(AgentError::InvalidSpec(m));
        self.check_limits()?;
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
        self.own_address()?;
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

impl WorkloadSpec {
    /// The size limits of argv and env, checked before anything else looks at them.
    pub fn check_limits(&self) -> Result<()> {
        let invalid = |m: String| Err(AgentError::InvalidSpec(m));
        if self.argv.len() > MAX_ARGS {
            return invalid(format!("argv has {} arguments (limit {MAX_ARGS})", self.argv.len()));
        }
        if let Some((i, a)) = self.argv.iter().enumerate().find(|(_, a)| a.len() > MAX_ARG_LEN) {
            return invalid(format!(
                "argument {i} is {} bytes long (limit {MAX_ARG_LEN} bytes)",
                a.len()
            ));
        }
        let total: usize = self.argv.iter().map(|a| a.len() + 1).sum();
        if total > MAX_ARGV_BYTES {
            return invalid(format!("argv totals {total} bytes (limit {MAX_ARGV_BYTES} bytes)"));
        }
        if self.env.len() > MAX_ENV {
            return invalid(format!("env has {} entries (limit {MAX_ENV})", self.env.len()));
        }
        for (k, v) in &self.env {
            if k.len() > MAX_ENV_NAME {
                return invalid(format!(
                    "environment name {:?}... is {} bytes long (limit {MAX_ENV_NAME} bytes)",
                    k.chars().take(32).collect::<String>(),
                    k.len()
                ));
            }
            if k.len() + 1 + v.len() > MAX_ARG_LEN {
                return invalid(format!(
                    "environment entry {k} is {} bytes long as NAME=value (limit {MAX_ARG_LEN} \
                     bytes)",
                    k.len() + 1 + v.len()
                ));
            }
        }
        let total: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if total > MAX_ENV_BYTES {
            return invalid(format!("env totals {total} bytes (limit {MAX_ENV_BYTES} bytes)"));
        }
        for (what, v) in [("user", &self.user), ("group", &self.group)] {
            let Some(v) = v else { continue };
            if v.is_empty() || v.len() > MAX_USER_NAME || v.contains(['\0', ':', '/']) {
                return invalid(format!(
                    "{what} {:?} must be 1-{MAX_USER_NAME} bytes without NUL, ':' or '/' ({} bytes)",
                    v.chars().take(64).collect::<String>(),
                    v.len()
                ));
            }
        }
        Ok(())
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

    fn refused(s: &WorkloadSpec) -> String {
        let err = s.validate(Path::new("/")).unwrap_err();
        assert!(matches!(err, AgentError::InvalidSpec(_)), "{err:?}");
        err.to_string()
    }

    #[test]
    fn argv_limits_name_the_limit_and_the_value() {
        let mut s = spec(&["true"]);
        s.argv.extend((0..MAX_ARGS).map(|_| "x".to_string()));
        assert!(refused(&s).contains("4097 arguments (limit 4096)"));
        s.argv.truncate(MAX_ARGS);
        s.validate(Path::new("/")).unwrap();

        let mut s = spec(&["true", "short"]);
        s.argv.push("a".repeat(MAX_ARG_LEN + 1));
        assert!(refused(&s).contains("argument 2 is 131072 bytes long (limit 131071 bytes)"));
        s.argv[2].pop();
        s.validate(Path::new("/")).unwrap();

        let mut s = spec(&["true"]);
        s.argv.extend((0..9).map(|_| "a".repeat(120_000)));
        let msg = refused(&s);
        assert!(msg.contains("argv totals 1080014 bytes (limit 1048576 bytes)"), "{msg}");
    }

    #[test]
    fn env_limits_name_the_limit_and_the_value() {
        let mut s = spec(&["true"]);
        s.env = (0..=MAX_ENV).map(|i| (format!("V{i}"), String::new())).collect();
        assert!(refused(&s).contains("4097 entries (limit 4096)"));
        s.env.pop_last();
        s.validate(Path::new("/")).unwrap();

        let mut s = spec(&["true"]);
        s.env.insert("K".repeat(MAX_ENV_NAME + 1), "v".into());
        assert!(refused(&s).contains("1025 bytes long (limit 1024 bytes)"));

        let mut s = spec(&["true"]);
        s.env.insert("BIG".into(), "v".repeat(MAX_ARG_LEN - 3));
        assert!(refused(&s).contains("entry BIG is 131072 bytes long as NAME=value"));
        s.env.insert("BIG".into(), "v".repeat(MAX_ARG_LEN - 4));
        s.validate(Path::new("/")).unwrap();

        let mut s = spec(&["true"]);
        s.env = (0..9).map(|i| (format!("V{i}"), "v".repeat(120_000))).collect();
        let msg = refused(&s);
        assert!(msg.contains("env totals 1080036 bytes (limit 1048576 bytes)"), "{msg}");
    }
}
