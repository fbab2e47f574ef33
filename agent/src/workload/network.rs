//! A workload's own address on this node: the agent's steps around sys::net (the mechanics)
//! and docs/network.md (the design). Blocking work runs off the runtime.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::{Workload, WorkloadSpec};
use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::sys::net::{self, Attachment, Hold};

/// A network namespace laid out for a workload's address, not yet answered for on the node.
pub(crate) struct Placed {
    pub netns: OwnedFd,
    pub net: Attachment,
}

/// A namespace laid out for an incoming migration before its freeze (PrepareNetwork).
pub(crate) struct Prepared {
    placed: Placed,
    workload_id: String,
    at: std::time::Instant,
}

/// How long a prepared namespace waits for its restore.
const PREPARED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Agent {
    /// For a spec with its own address: the namespace PrepareNetwork laid out for `migration`
    /// if there is one, else checks that no workload here holds the address and that the node
    /// has a LAN for it, then makes its namespace and pair. None for the node's network.
    pub(crate) async fn place_network(
        &self,
        spec: &WorkloadSpec,
        migration: Option<&str>,
    ) -> Result<Option<Placed>> {
        let Some(addr) = spec.own_address()? else { return Ok(None) };
        if let Some(mid) = migration {
            let prepared = self.prepared_nets.lock().expect("prepared nets poisoned").remove(mid);
            match prepared {
                Some(p) if p.workload_id == spec.id && p.placed.net.address == addr => {
                    return Ok(Some(p.placed));
                }
                Some(p) => self.cut_network(&p.placed.net).await,
                None => {}
            }
        }
        let node = self.config().node.clone();
        if !self.is_root() {
            return Err(AgentError::InvalidSpec(format!(
                "a workload's own address ({addr}) needs an agent running as root; node {node}'s \
                 is not"
            )));
        }
        let holder = self.workloads().into_iter().find(|w| {
            w.exit_info().is_none()
                && w.id() != spec.id
                && w.spec.address.as_deref() == Some(addr.to_string().as_str())
        });
        if let Some(w) = holder {
            return Err(AgentError::InvalidSpec(format!(
                "address {addr} is held by workload {} on node {node}",
                w.id()
            )));
        }
        let lan = net::lan_link(addr)
            .map_err(|e| AgentError::InvalidSpec(format!("node {node}: {e}")))?;
        let reaper = self.reaper().clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Placed> {
            net::node_ready()?;
            let netns = net::new_netns()?;
            let a = Attachment {
                address: addr,
                host_if: net::new_host_if(),
                lan,
                host_mac: net::new_mac(),
                inner_mac: net::new_mac(),
            };
            net::prepare(&reaper, &netns, &a)?;
            Ok(Placed { netns, net: a })
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?
        .map_err(|e| {
            AgentError::Internal(format!(
                "cannot lay out the network of address {addr} on node {}: {e}",
                self.config().node
            ))
        })
        .map(Some)
    }

    /// PrepareNetwork: lays out the namespace of workload `workload_id`'s `address` for
    /// migration `mid`, kept until its restore takes it; returns the node end's name.
    pub async fn prepare_network(
        &self,
        mid: &str,
        workload_id: &str,
        address: &str,
    ) -> Result<String> {
        let spec = WorkloadSpec {
            id: workload_id.to_string(),
            address: Some(address.to_string()),
            ..Default::default()
        };
        if spec.own_address()?.is_none() {
            return Err(AgentError::InvalidSpec("address is empty".into()));
        }
        // Those nobody took (their migration ended elsewhere) go.
        let stale: Vec<Prepared> = {
            let mut all = self.prepared_nets.lock().expect("prepared nets poisoned");
            let old: Vec<String> = all
                .iter()
                .filter(|(k, p)| k.as_str() == mid || p.at.elapsed() > PREPARED_FOR)
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| all.remove(k)).collect()
        };
        for p in stale {
            self.cut_network(&p.placed.net).await;
        }
        let placed = self.place_network(&spec, None).await?.expect("an address was given");
        let host_if = placed.net.host_if.clone();
        let prepared = Prepared {
            placed,
            workload_id: workload_id.to_string(),
            at: std::time::Instant::now(),
        };
        self.prepared_nets
            .lock()
            .expect("prepared nets poisoned")
            .insert(mid.to_string(), prepared);
        Ok(host_if)
    }

    /// The namespace prepared for `mid`, if any, goes (its migration was aborted).
    pub(crate) async fn forget_prepared_network(&self, mid: &str) {
        let p = self.prepared_nets.lock().expect("prepared nets poisoned").remove(mid);
        if let Some(p) = p {
            self.cut_network(&p.placed.net).await;
        }
    }

    /// This node answers for the address from now on (and says so on its LAN).
    pub(crate) async fn attach_network(&self, a: &Attachment) -> std::io::Result<()> {
        let a = a.clone();
        tokio::task::spawn_blocking(move || net::attach(&a)).await.map_err(std::io::Error::other)?
    }

    /// The workload's pair and this node's answers for its address go (before it is killed, or
    /// after it ended). Best effort.
    pub(crate) async fn cut_network(&self, a: &Attachment) {
        let (reaper, a) = (self.reaper().clone(), a.clone());
        let _ = tokio::task::spawn_blocking(move || net::cut(&reaper, &a)).await;
    }

    /// The hold device, opened on first use (blocking: runs `ip`).
    fn hold_device(&self) -> std::io::Result<Arc<Hold>> {
        let mut h = self.hold.lock().expect("hold poisoned");
        if let Some(h) = h.as_ref() {
            return Ok(h.clone());
        }
        let opened = Hold::open(self.reaper())?;
        *h = Some(opened.clone());
        Ok(opened)
    }

    /// Before a freeze: the address's packets wait in the hold, nothing from the workload leaves.
    pub(crate) async fn hold_network(&self, a: &Attachment) -> std::io::Result<()> {
        let hold = tokio::task::block_in_place(|| self.hold_device())?;
        let a = a.clone();
        tokio::task::spawn_blocking(move || net::hold(&hold, &a))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The target took the address over: this node lets go of it, sends the held packets on, and
    /// cuts the original's pair (it is killed next, or only serves pages until then). Returns how
    /// many packets were sent on.
    pub(crate) async fn hand_over_network(&self, a: &Attachment) -> usize {
        let hold = match tokio::task::block_in_place(|| self.hold_device()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(address = %a.address, %e, "no hold device");
                self.cut_network(a).await;
                return 0;
            }
        };
        let (reaper, a) = (self.reaper().clone(), a.clone());
        tokio::task::spawn_blocking(move || {
            let sent = net::hand_over(&hold, &a);
            net::cut(&reaper, &a);
            sent
        })
        .await
        .unwrap_or(0)
    }

    /// A rollback: the original's connections out of repair mode, its address answered here
    /// again, the held packets let in. Returns how many were.
    pub(crate) async fn take_back_network(&self, w: &Workload) -> std::io::Result<usize> {
        let Some(a) = w.net.clone() else { return Ok(0) };
        let hold = tokio::task::block_in_place(|| self.hold_device())?;
        let root = w.init_pid;
        tokio::task::spawn_blocking(move || {
            let all = crate::sys::proc::scan();
            let pids: Vec<i32> =
                crate::sys::proc::tree(root, &all).into_iter().map(|p| p.pid).collect();
            net::take_back(&hold, &a, &pids)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
