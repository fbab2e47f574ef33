//! The CRIU engine: dump the frozen tree over RPC with `leave_stopped` (the source stays frozen
//! for a rollback), restore as a child of the agent (`rst_sibling`) into the workload's own PID
//! namespace with the agent's new stdout/stderr pipes (`inherit_fd`), left stopped until commit.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::criu as rpc;

use super::{CheckpointDirs, CheckpointEngine, EngineError, RestoreRequest};
use crate::agent::Agent;
use crate::criu::{failure, rpc as criu_rpc};
use crate::logs::LogStore;
use crate::sys::{mounts, spawn, swrk};
use crate::workload::start::pipe_key;
use crate::workload::{Adopt, Workload};

/// CRIU's log verbosity: 4 keeps every step, which is what a failed migration needs.
const LOG_LEVEL: i32 = 4;

pub struct CriuEngine;

/// How long CRIU may take to write everything but the lazy pages.
const LAZY_READY: Duration = Duration::from_secs(120);

/// A post-copy dump in progress: CRIU has written every image but the lazy pages and serves
/// those over `tunnel` until the target holds them all. The original stays frozen
/// (`leave_stopped`) throughout and after.
pub struct LazyDump {
    /// The criu process; killing it before commit abandons the dump and releases the original.
    pub criu_pid: i32,
    /// The agent's end of the page server's connection (CRIU holds the other end as its
    /// `ps-socket`): carried to the target by the page tunnel (migrate::tunnel).
    pub tunnel: Option<std::os::unix::net::UnixStream>,
    /// Ends when every page was served (or the dump failed).
    pub done: std::thread::JoinHandle<Result<(), EngineError>>,
}

/// Starts a post-copy dump of `w` whose page server talks over a socketpair with this agent (no
/// port is opened), returning once the images other than the lazy pages are written.
pub fn start_lazy_dump(
    agent: &Agent,
    w: &Workload,
    dirs: &CheckpointDirs<'_>,
) -> Result<LazyDump, EngineError> {
    let criu = criu_path(agent)?;
    let images = open(dirs.images)?;
    let work = open(dirs.work)?;
    let other = |e: std::io::Error| EngineError::Other(e.to_string());
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(other)?;
    // RPC takes `ps.fd` only without lazy pages; a config file sets CRIU's `--ps-socket` for the
    // lazy page server, which then serves this already-connected socket instead of listening.
    let conf = dirs.work.join("lazy-dump.conf");
    crate::sys::fsmode::write(&conf, format!("ps-socket {}\n", theirs.as_raw_fd()).as_bytes())
        .map_err(other)?;
    let log = dirs.work.join("dump.log");
    let (ns, ext) = dump_mounts(w, dirs, &log)?;
    let mut opts = dump_opts(&images, &work, w, ext);
    opts.lazy_pages = Some(true);
    opts.config_file = Some(conf.to_string_lossy().into_owned());
    // CRIU says "status-ready" (a NOTIFY) once only the lazy pages are left to serve.
    opts.notify_scripts = Some(true);
    let req = request(rpc::CriuReqType::Dump, opts);
    let keep = [images.as_raw_fd(), work.as_raw_fd(), theirs.as_raw_fd()];
    let pending = criu_rpc::start(&criu, agent.reaper(), &keep, &smaps_env(dirs), ns.as_ref(), req)
        .map_err(|e| rpc_failure("dump", log.clone(), e.to_string()))?;
    // CRIU holds its end now; ours must be the only other one, so its closing reaches CRIU.
    drop(theirs);
    let criu_pid = pending.pid();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let log2 = log.clone();
    let done = std::thread::Builder::new()
        .name("criu-lazy-dump".into())
        .spawn(move || {
            let _keep = (images, work);
            let answer = pending.wait(|script| {
                if script == "status-ready" {
                    let _ = ready_tx.send(());
                }
            });
            successful("dump", log2, answer).map(|_| ())
        })
        .map_err(other)?;
    // The sender goes away with the thread, so a failed dump ends this wait at once.
    if ready_rx.recv_timeout(LAZY_READY).is_err() {
        let _ = crate::sys::signal::send(criu_pid, crate::sys::signal::Sig::SIGKILL);
        return Err(match done.join() {
            Ok(Err(e)) => e,
            _ => rpc_failure("dump", log, "CRIU never reported its page server ready".into()),
        });
    }
    Ok(LazyDump { criu_pid, tunnel: Some(ours), done })
}

/// A stop-and-copy dump of `w` whose pages go to `pages` (CRIU's end of the agent's page
/// stream, migrate::pages) instead of page images; every other image is written to the images
/// directory as usual.
pub fn dump_to_page_stream(
    agent: &Agent,
    w: &Workload,
    dirs: &CheckpointDirs<'_>,
    pages: std::os::unix::net::UnixStream,
) -> Result<(), EngineError> {
    let criu = criu_path(agent)?;
    let images = open(dirs.images)?;
    let work = open(dirs.work)?;
    let log = dirs.work.join("dump.log");
    let (ns, ext) = dump_mounts(w, dirs, &log)?;
    let mut opts = dump_opts(&images, &work, w, ext);
    opts.ps = Some(rpc::CriuPageServerInfo { fd: Some(pages.as_raw_fd()), ..Default::default() });
    let req = request(rpc::CriuReqType::Dump, opts);
    let keep = [images.as_raw_fd(), work.as_raw_fd(), pages.as_raw_fd()];
    let pending = criu_rpc::start(&criu, agent.reaper(), &keep, &smaps_env(dirs), ns.as_ref(), req)
        .map_err(|e| rpc_failure("dump", log.clone(), e.to_string()));
    // CRIU holds its end now; ours must go, so that CRIU's end closing reaches the agent.
    drop(pages);
    successful("dump", log, pending?.wait(|_| {})).map(|_| ())
}

/// Where CRIU must dump `w` from, and the mounts it must take as external.
///
/// A workload with a mount namespace of its own (sys::spawn: its own /proc) is dumped from the
/// agent's: CRIU dumps the workload's namespace, the node's mounts in it as external, keyed by
/// their mount points, whose list goes with the images (sys::mounts). A workload an older agent
/// started in that agent's mount namespace is dumped from there instead (from any other, CRIU
/// takes it for one with a namespace of its own and fails: "doesn't have a proper root mount").
fn dump_mounts(
    w: &Workload,
    dirs: &CheckpointDirs<'_>,
    log: &std::path::Path,
) -> Result<(Option<std::os::fd::OwnedFd>, Vec<rpc::ExtMountMap>), EngineError> {
    let fail = |e: std::io::Error| {
        rpc_failure(
            "dump",
            log.to_path_buf(),
            format!("cannot read the mounts of workload {} (pid {}): {e}", w.id(), w.init_pid),
        )
    };
    let ns = crate::sys::swrk::foreign_mount_ns(w.init_pid).map_err(fail)?;
    if ns.is_none() {
        return Ok((None, Vec::new()));
    }
    if !mounts::has_own_proc(w.init_pid).map_err(fail)? {
        tracing::info!(id = w.id(), pid = w.init_pid, "the workload lives in the mount namespace of an earlier agent (started before workloads had their own); CRIU dumps it from there");
        return Ok((ns, Vec::new()));
    }
    let list = mounts::node_mounts_of(w.init_pid).map_err(fail)?;
    mounts::write_list(dirs.images, &list).map_err(fail)?;
    let ext = list
        .iter()
        .map(|(point, _)| {
            let p = mounts::unescape(point).to_string_lossy().into_owned();
            rpc::ExtMountMap { key: p.clone(), val: p }
        })
        .collect();
    Ok((None, ext))
}

/// The environment that points ferry's CRIU at smaps read before the freeze, if there are any.
fn smaps_env<'a>(dirs: &CheckpointDirs<'a>) -> Vec<(&'static str, &'a std::path::Path)> {
    dirs.smaps.map(|d| ("CRIU_SMAPS_DIR", d)).into_iter().collect()
}

fn base_opts(images: &impl AsRawFd, work: &impl AsRawFd, log: &str) -> rpc::CriuOpts {
    rpc::CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.as_raw_fd()),
        log_file: Some(log.to_string()),
        log_level: Some(LOG_LEVEL),
        // Cgroups differ between nodes; the workload lives in the agent's.
        manage_cgroups_mode: Some(rpc::CriuCgMode::Ignore as i32),
        // A workload on the node's network has no namespace to lock; one with its own address
        // has its packets held by the agent (sys::net), not by CRIU's firewall rules.
        network_lock: Some(rpc::CriuNetworkLockMethod::Skip as i32),
        ..Default::default()
    }
}

/// A dump of `w`'s whole tree that leaves it frozen (for a rollback).
fn dump_opts(
    images: &impl AsRawFd,
    work: &impl AsRawFd,
    w: &Workload,
    ext_mnt: Vec<rpc::ExtMountMap>,
) -> rpc::CriuOpts {
    let mut opts = base_opts(images, work, "dump.log");
    opts.ext_mnt = ext_mnt;
    opts.pid = Some(w.init_pid);
    opts.leave_stopped = Some(true);
    // A workload with its own address: its network namespace is the node's to lay out (the
    // target makes its own), so CRIU only names it; its TCP connections are dumped with their
    // sequence numbers and queues (repair mode) to be taken up again on the target. Nothing is
    // locked by CRIU: the agent holds the address's packets from before the freeze (sys::net).
    if w.net.is_some() {
        if let Ok(ino) = crate::sys::net::netns_inode(w.init_pid) {
            opts.external.push(format!("net[{ino}]:{NET_KEY}"));
            opts.tcp_established = Some(true);
        }
    }
    opts
}

/// CRIU's key for a workload's own network namespace: named at the dump, given at the restore.
const NET_KEY: &str = "ferry-net";

fn request(kind: rpc::CriuReqType, opts: rpc::CriuOpts) -> rpc::CriuReq {
    rpc::CriuReq { r#type: kind as i32, opts: Some(opts), ..Default::default() }
}

fn criu_path(agent: &Agent) -> Result<std::path::PathBuf, EngineError> {
    agent.criu().path.clone().filter(|_| agent.criu().check_passed).ok_or_else(|| {
        EngineError::Other(format!(
            "CRIU is not usable on node {}: {}",
            agent.config().node,
            agent.criu().check_error
        ))
    })
}

/// Opens a directory of the migration's scratch (creating it, and missing parents, mode 0700:
/// images hold the workload's memory).
fn open(path: &std::path::Path) -> Result<std::os::fd::OwnedFd, EngineError> {
    crate::sys::fsmode::dir(path, crate::sys::fsmode::DIR)
        .and_then(|_| swrk::open_dir(path))
        .map_err(|e| EngineError::Other(format!("cannot open {path:?}: {e}")))
}

pub(super) fn rpc_failure(what: &str, log: std::path::PathBuf, detail: String) -> EngineError {
    EngineError::Criu { message: failure::describe(what, &log, &detail), log }
}

/// CRIU's answer when it reports success; otherwise the failure explained from its log.
fn successful(
    what: &str,
    log: std::path::PathBuf,
    answer: Result<rpc::CriuResp, criu_rpc::RpcError>,
) -> Result<rpc::CriuResp, EngineError> {
    let resp = answer.map_err(|e| rpc_failure(what, log.clone(), e.to_string()))?;
    if !resp.success {
        let detail = resp
            .cr_errmsg
            .clone()
            .unwrap_or_else(|| format!("errno {}", resp.cr_errno.unwrap_or(0)));
        return Err(rpc_failure(what, log, detail));
    }
    Ok(resp)
}

impl CheckpointEngine for CriuEngine {
    fn name(&self) -> &'static str {
        "criu"
    }

    fn freezes_first(&self) -> bool {
        true
    }

    fn checkpoint(
        &self,
        agent: &Agent,
        w: &Workload,
        dirs: &CheckpointDirs<'_>,
    ) -> Result<(), EngineError> {
        let criu = criu_path(agent)?;
        let images = open(dirs.images)?;
        let work = open(dirs.work)?;
        let log = dirs.work.join("dump.log");
        let (ns, ext) = dump_mounts(w, dirs, &log)?;
        let mut opts = dump_opts(&images, &work, w, ext);
        if dirs.survives {
            // The connections are dumped (CRIU refuses a tree with established ones otherwise)
            // and restored closed; the original's go on once the agent takes them out of repair.
            opts.tcp_established = Some(true);
        }
        let req = request(rpc::CriuReqType::Dump, opts);
        let keep = [images.as_raw_fd(), work.as_raw_fd()];
        let answer = criu_rpc::call(&criu, agent.reaper(), &keep, ns.as_ref(), req, |_| {});
        successful("dump", log, answer).map(|_| ())
    }

    async fn restore(
        &self,
        agent: &Arc<Agent>,
        req: RestoreRequest<'_>,
    ) -> Result<Arc<Workload>, EngineError> {
        let criu = criu_path(agent)?;
        let spec = req.workload;
        let dir = agent.workload_dir(&spec.id);
        let cwd = spec.cwd.clone().unwrap_or_else(|| dir.join("work"));
        let log = LogStore::open(&dir.join("output.log")).map_err(|e| {
            EngineError::Other(format!("cannot open the workload log in {dir:?}: {e}"))
        })?;
        let pipes = || spawn::pipe().map_err(|e| EngineError::Other(format!("pipe: {e}")));
        let (out_r, out_w) = pipes()?;
        let (err_r, err_w) = pipes()?;
        let stdio_keys = [
            pipe_key(&out_r).map_err(|e| EngineError::Other(e.to_string()))?,
            pipe_key(&err_r).map_err(|e| EngineError::Other(e.to_string()))?,
        ];
        let images = open(req.images)?;
        let work = open(req.work)?;
        let mut opts = base_opts(&images, &work, "restore.log");
        opts.rst_sibling = Some(true);
        opts.leave_stopped = Some(true);
        // The workload's mount namespace: its root is this node's, and each of the node's mounts
        // it had is bound from the same path here (or from an empty stand-in, when this node has
        // no mount there).
        let mapped =
            mounts::restore_map(req.images, &req.work.join("mount-standins")).map_err(|e| {
                EngineError::Other(format!("cannot map the workload's external mounts: {e}"))
            })?;
        let standins = mapped.map(|m| {
            opts.root = Some("/".into());
            opts.ext_mnt =
                m.binds.into_iter().map(|(key, val)| rpc::ExtMountMap { key, val }).collect();
            m.standins
        });
        for point in standins.unwrap_or_default() {
            tracing::warn!(
                id = spec.id,
                migration = req.migration_id,
                mount = point,
                "the workload had a mount of its node there, this node has none: an empty stand-in takes its place"
            );
        }
        // CRIU frees the page images as it reads them (128 MiB at a time): the target never
        // holds a workload's memory twice, and the freed pages are reused for the restored one.
        opts.auto_dedup = Some(true);
        // Post-copy: pages come from the source. Stop-and-copy: they are all here, and CRIU's
        // lazy-pages daemon copies them into the workload after the resume instead of the
        // restore copying them before it (unless this agent restores eagerly).
        let pages = if req.info.lazy_pages {
            Some(super::lazy::PageSource::Tunnel)
        } else if agent.config().eager_restore {
            None
        } else {
            Some(super::lazy::PageSource::Local)
        };
        let lazy = if let Some(pages) = pages {
            let start = super::lazy::LazyStart {
                migration_id: req.migration_id.to_string(),
                workload_id: spec.id.clone(),
                source_node: req.source_node.to_string(),
                pages,
                images: req.images.to_path_buf(),
                work: req.work.to_path_buf(),
            };
            let (agent2, criu2) = (agent.clone(), criu.clone());
            let lp =
                tokio::task::spawn_blocking(move || super::lazy::start(&agent2, &criu2, start))
                    .await
                    .map_err(|e| EngineError::Other(e.to_string()))??;
            agent.set_lazy_daemon(req.migration_id, lp.clone());
            opts.lazy_pages = Some(true);
            Some(lp)
        } else {
            None
        };
        opts.inherit_fd = vec![
            rpc::InheritFd { key: req.info.stdout_key.clone(), fd: out_w.as_raw_fd() },
            rpc::InheritFd { key: req.info.stderr_key.clone(), fd: err_w.as_raw_fd() },
        ];
        let mut keep =
            vec![images.as_raw_fd(), work.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        // Its own address: a namespace laid out here before the restore, its pair down until the
        // commit; CRIU restores the tree and its TCP connections into it.
        let placed = match agent.place_network(&spec, Some(req.migration_id)).await {
            Ok(p) => p,
            Err(e) => {
                agent.kill_lazy_daemon(req.migration_id);
                return Err(EngineError::Other(e.to_string()));
            }
        };
        if let Some(p) = &placed {
            opts.inherit_fd.push(rpc::InheritFd { key: NET_KEY.into(), fd: p.netns.as_raw_fd() });
            opts.tcp_established = Some(true);
            keep.push(p.netns.as_raw_fd());
        }
        if req.info.close_tcp {
            // A checkpoint: its connections' peers moved on since; they come back closed (the
            // program sees them fail and reconnects), listening sockets as they were.
            opts.tcp_established = Some(true);
            opts.tcp_close = Some(true);
        }
        let creq = request(rpc::CriuReqType::Restore, opts);
        let log_path = req.work.join("restore.log");
        let reaper = agent.reaper().clone();
        let restored = {
            let (criu, log_path) = (criu.clone(), log_path.clone());
            tokio::task::spawn_blocking(move || {
                let r = criu_rpc::call(&criu, &reaper, &keep, None, creq, |_| {});
                // Our copies of the write ends go now: the restored tree holds its own.
                drop((out_w, err_w, images, work));
                let resp = successful("restore", log_path.clone(), r)?;
                match resp.restore.map(|r| r.pid).unwrap_or(0) {
                    pid if pid > 0 => {
                        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                        Ok((pid, crate::criu::failure::capped_rlimits(&log)))
                    }
                    _ => Err(rpc_failure("restore", log_path, "CRIU reported no pid".into())),
                }
            })
            .await
            .map_err(|e| EngineError::Other(e.to_string()))
            .and_then(|r| r)
        };
        let pid = match restored {
            Ok((pid, capped)) => {
                // Limits this node could not give back as they were (no CAP_SYS_RESOURCE to
                // raise a hard limit): the workload runs, with these lower.
                for limit in capped {
                    tracing::warn!(
                        id = spec.id,
                        migration = req.migration_id,
                        log = ?log_path,
                        "CRIU restored a resource limit lower than the source's: {limit}"
                    );
                }
                pid
            }
            Err(e) => {
                agent.kill_lazy_daemon(req.migration_id);
                if let Some(p) = &placed {
                    agent.cut_network(&p.net).await;
                }
                return Err(e);
            }
        };
        let net = placed.map(|p| p.net);
        let exit = agent.reaper().watch(pid);
        if req.info.hold_restore_ms > 0 && agent.config().fault_injection {
            // As if CRIU had taken that long: the tree is restored, not yet this agent's.
            let ms = req.info.hold_restore_ms;
            tracing::warn!(
                migration = req.migration_id,
                ms,
                "fault injection: holding the restore"
            );
            tokio::time::sleep(std::time::Duration::from_millis(ms.into())).await;
        }
        let post_copy = lazy.is_some();
        let fill = lazy.as_ref().map(|lp| crate::workload::LazyFill {
            migration_id: req.migration_id.to_string(),
            pid: lp.pid,
            start_ticks: crate::sys::proc::start_ticks(lp.pid).unwrap_or(0),
            log: lp.log.clone(),
        });
        if let Some(lp) = lazy {
            lp.set_restored(pid);
            let agent2 = agent.clone();
            let _ =
                tokio::task::spawn_blocking(move || lp.hold_userfaultfds(agent2.fd_store())).await;
        }
        tracing::info!(
            id = spec.id,
            pid,
            migration = req.migration_id,
            "workload restored by CRIU (stopped)"
        );
        let w = agent.adopt(Adopt {
            spec,
            dir,
            cwd,
            init_pid: pid,
            main_ns_pid: req.info.main_ns_pid,
            own_pid_namespace: req.info.own_pid_namespace,
            started_at_ms: req.info.started_at_ms,
            log,
            stdout: Some(out_r),
            stderr: Some(err_r),
            stdio_keys,
            coop: None,
            exit: crate::workload::ExitWatch::Reaper(exit),
            paused: req.info.paused,
            pending_migration: Some(req.migration_id.to_string()),
            self_stopped: req.info.stopped_ns_pids.clone(),
            net,
        });
        if post_copy {
            w.set_post_copy(true);
        }
        if let Some(f) = fill.filter(|f| f.start_ticks != 0) {
            // Unless the daemon already ended with every page (then it is gone, or reused).
            if agent.lazy_daemon(req.migration_id).is_none_or(|lp| lp.ended().is_none()) {
                w.set_lazy_fill(Some(f));
            }
        }
        Ok(w)
    }
}
