//! Running helper programs (criu, ip, ...) to completion. Their exit status comes from the
//! agent's [`Reaper`], which owns `waitpid`.

use std::io::Read;
use std::process::{Command, Stdio};

use super::reaper::{ExitStatus, Reaper};

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Exited(0)
    }
}

/// Runs `cmd` with piped stdout and stderr and waits for it. Blocking: call it from
/// `spawn_blocking`.
pub fn output(reaper: &Reaper, mut cmd: Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let exit = reaper.watch(child.id() as i32);
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut s);
        s
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)?;
    }
    let stderr = err_thread.join().unwrap_or_default();
    // Never `child.wait()`: the reaper may already have collected it.
    drop(child);
    let status = exit.blocking_recv().map_err(|_| std::io::Error::other("reaper went away"))?;
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}
