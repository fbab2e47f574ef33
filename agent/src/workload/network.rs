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

impl Agent {
    /// For a spec with its own address: checks that no workload here holds it and that the node
    /// has a LAN for it, then makes its namespace and pair. None for the node's network.
    pub(crate) async fn place_network(&self, spec: &WorkloadSpec) -> Result<Option<Placed>> {
        let Some(addr) = spec.own_address()? else { return Ok(None) };
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
        let reaper = self.reaper().clone();
        let lan = {
            let reaper = reaper.clone();
            tokio::task::spawn_blocking(move || net::lan_link(&reaper, addr))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
                .map_err(|e| AgentError::InvalidSpec(format!("node {node}: {e}")))?
        };
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

    /// This node answers for the address from now on (and says so on its LAN).
    pub(crate) async fn attach_network(&self, a: &Attachment) -> std::io::Result<()> {
        let (reaper, a) = (self.reaper().clone(), a.clone());
        tokio::task::spawn_blocking(move || net::attach(&reaper, &a))
            .await
            .map_err(std::io::Error::other)?
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
        let (reaper, a) = (self.reaper().clone(), a.clone());
        tokio::task::spawn_blocking(move || net::hold(&reaper, &hold, &a))
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
            let sent = net::hand_over(&reaper, &hold, &a);
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
        let (reaper, root) = (self.reaper().clone(), w.init_pid);
        tokio::task::spawn_blocking(move || {
            let all = crate::sys::proc::scan();
            let pids: Vec<i32> =
                crate::sys::proc::tree(root, &all).into_iter().map(|p| p.pid).collect();
            net::take_back(&reaper, &hold, &a, &pids)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
