//! The cooperative engine: the program saves its own state when asked.
//!
//! The agent listens on a UNIX stream socket whose path the program gets as `FERRY_CONTROL`; the
//! program connects (ferry's helpers do it at start-up) and speaks line-delimited JSON:
//!
//! ```text
//! program → agent  {"op":"hello","pid":123,"restored":false}   after connecting (and, when
//!                                                               restored, after loading state)
//! agent → program  {"op":"checkpoint","dir":"/abs/dir"}        write your state files into dir
//! program → agent  {"ok":true}  or  {"ok":false,"error":"..."}
//! ```
//!
//! After `ok` the agent freezes the program. On the target the same argv, env and cwd start with
//! `FERRY_RESTORE=<dir>` holding those files; its `hello` with `"restored":true` tells the agent
//! the state was loaded, and the agent then holds it stopped until the migration commits. A
//! program that does not answer within [`DEADLINE`] fails the migration and keeps running.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{CheckpointDirs, CheckpointEngine, EngineError, RestoreRequest};
use crate::agent::Agent;
use crate::workload::start::Restoring;
use crate::workload::{stop_tree, Workload};

/// How long a program has to answer a checkpoint request, or to say hello after a restore.
pub const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
pub struct Hello {
    pub pid: i64,
    #[serde(default)]
    pub restored: bool,
}

#[derive(Default)]
struct State {
    conn: Option<BufReader<UnixStream>>,
    hello: Option<Hello>,
}

/// The agent's end of one workload's control socket.
pub struct Control {
    path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    closed: AtomicBool,
}

impl Control {
    /// Listens on `path` (a socket of mode 0600: the agent's, or its workload's user's once
    /// given to it) and accepts the program's connections in a thread of its own.
    pub fn listen(path: &Path) -> std::io::Result<Arc<Control>> {
        let _ = std::fs::remove_file(path);
        let listener = crate::sys::fsmode::bind_private(path, |p| UnixListener::bind(p))?;
        listener.set_nonblocking(true)?;
        let c = Arc::new(Control {
            path: path.to_path_buf(),
            state: Mutex::default(),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let c2 = c.clone();
        std::thread::Builder::new()
            .name("coop-control".into())
            .spawn(move || c2.accept(listener))?;
        Ok(c)
    }

    fn accept(&self, listener: UnixListener) {
        while !self.closed.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(err) = self.greet(stream) {
                        tracing::warn!(path = ?self.path, %err, "cooperative program's hello refused");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => {
                    tracing::warn!(path = ?self.path, %err, "control socket accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
        // The workload ended: its connection goes with the listener.
        self.state.lock().expect("control state poisoned").conn = None;
    }

    fn greet(&self, stream: UnixStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        #[derive(Deserialize)]
        struct Op {
            op: String,
        }
        let op: Op = serde_json::from_str(line.trim()).map_err(std::io::Error::other)?;
        if op.op != "hello" {
            return Err(std::io::Error::other(format!("expected hello, got op {:?}", op.op)));
        }
        let hello: Hello = serde_json::from_str(line.trim()).map_err(std::io::Error::other)?;
        tracing::info!(path = ?self.path, pid = hello.pid, restored = hello.restored, "cooperative program connected");
        let mut st = self.state.lock().expect("control state poisoned");
        st.conn = Some(reader);
        st.hello = Some(hello);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits for a hello that satisfies `want`.
    pub fn wait_hello(&self, timeout: Duration, want: impl Fn(&Hello) -> bool) -> Option<Hello> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().expect("control state poisoned");
        loop {
            if let Some(h) = st.hello.as_ref().filter(|h| want(h)) {
                return Some(h.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self.changed.wait_timeout(st, left).expect("control state poisoned").0;
        }
    }

    /// Asks the program to write its state into `dir` and waits for its answer.
    pub fn checkpoint(&self, dir: &Path, timeout: Duration) -> Result<(), String> {
        if self.wait_hello(timeout, |_| true).is_none() {
            return Err(format!(
                "the program never connected to FERRY_CONTROL ({}) within {timeout:?}; \
                 does it use ferry's cooperative helper?",
                self.path.display()
            ));
        }
        let mut st = self.state.lock().expect("control state poisoned");
        let conn = st.conn.as_mut().ok_or("the program's control connection is gone")?;
        let req = serde_json::json!({"op": "checkpoint", "dir": dir});
        let io = |e: std::io::Error| format!("control connection: {e}");
        conn.get_ref().set_read_timeout(Some(timeout)).map_err(io)?;
        conn.get_mut().write_all(format!("{req}\n").as_bytes()).map_err(io)?;
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) => return Err("the program closed its control connection".into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Err(io(e)),
        }
        #[derive(Deserialize)]
        struct Answer {
            ok: bool,
            #[serde(default)]
            error: String,
        }
        let a: Answer = serde_json::from_str(line.trim())
            .map_err(|e| format!("unreadable answer {:?}: {e}", line.trim()))?;
        if a.ok {
            Ok(())
        } else {
            Err(format!("the program reported: {}", a.error))
        }
    }

    /// Stops accepting and drops the program's connection; called when the workload ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.state.lock().expect("control state poisoned").conn = None;
    }
}

pub struct CoopEngine;

impl CheckpointEngine for CoopEngine {
    fn name(&self) -> &'static str {
        "cooperative"
    }

    fn freezes_first(&self) -> bool {
        false
    }

    fn checkpoint(
        &self,
        agent: &Agent,
        w: &Workload,
        dirs: &CheckpointDirs<'_>,
    ) -> Result<(), EngineError> {
        let control = w.coop.as_ref().ok_or_else(|| {
            EngineError::Cooperative(format!(
                "workload {} was not started with the cooperative engine",
                w.id()
            ))
        })?;
        // A program running as another user writes its state there itself: it passes through
        // the migration's scratch directory to its own.
        let creds = agent.credentials(&w.spec).map_err(|e| EngineError::Other(e.to_string()))?;
        let made = |path: &Path, mode| {
            crate::sys::fsmode::dir(path, mode)
                .map_err(|e| EngineError::Other(format!("cannot create {path:?}: {e}")))
        };
        if let Some(scratch) = dirs.images.parent() {
            made(scratch, crate::workload::start::dir_mode(creds.as_ref()))?;
        }
        made(dirs.images, crate::sys::fsmode::DIR)?;
        if let Some(c) = creds {
            crate::workload::start::chown(dirs.images, &c)
                .map_err(|e| EngineError::Other(e.to_string()))?;
        }
        control.checkpoint(dirs.images, DEADLINE).map_err(EngineError::Cooperative)
    }

    async fn restore(
        &self,
        agent: &Arc<Agent>,
        req: RestoreRequest<'_>,
    ) -> Result<Arc<Workload>, EngineError> {
        let restoring = Restoring {
            state_dir: req.images.to_path_buf(),
            migration_id: req.migration_id.to_string(),
            started_at_ms: req.info.started_at_ms,
        };
        let w = agent.launch(req.workload, Some(restoring)).await.map_err(|e| {
            EngineError::Other(format!("cannot start the program on the target: {e}"))
        })?;
        let control = w.coop.clone().expect("a cooperative launch has a control socket");
        let w2 = w.clone();
        let ready = tokio::task::spawn_blocking(move || {
            let hello = control.wait_hello(DEADLINE, |h| h.restored);
            if hello.is_some() {
                stop_tree(&w2).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(hello)
        })
        .await
        .map_err(|e| EngineError::Other(e.to_string()))?
        .map_err(EngineError::Other)?;
        if ready.is_none() {
            let exit = w.exit_info();
            let _ = agent.discard(&w).await;
            return Err(EngineError::Cooperative(match exit {
                Some(e) => {
                    format!("the program {e} before loading its state on the target (see its log)")
                }
                None => format!("the program did not report its state loaded within {DEADLINE:?}"),
            }));
        }
        w.set_paused(req.info.paused);
        w.set_self_stopped(req.info.stopped_ns_pids.clone());
        tracing::info!(
            id = w.id(),
            migration = req.migration_id,
            "cooperative workload restored (stopped)"
        );
        Ok(w)
    }
}
