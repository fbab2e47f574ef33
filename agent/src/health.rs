//! The node's health: host facts, workload count and CRIU's state.

use crate::agent::Agent;
use crate::criu::CriuInfo;
use crate::sys::host::{self, HostFacts};

#[derive(Debug, Clone)]
pub struct Health {
    pub node: String,
    pub host: HostFacts,
    pub workload_count: u32,
    pub criu: CriuInfo,
    pub data_dir_free_bytes: u64,
    pub root: bool,
    /// On-link IPv4 subnets, "NET/LEN DEV" (sys::net::onlink_subnets).
    pub onlink_subnets: Vec<String>,
}

impl Agent {
    pub fn health(&self) -> Health {
        Health {
            node: self.config().node.clone(),
            host: host::facts(),
            workload_count: self.workloads().iter().filter(|w| w.exit_info().is_none()).count()
                as u32,
            criu: self.criu().clone(),
            data_dir_free_bytes: host::free_bytes(&self.config().data_dir),
            root: self.is_root(),
            onlink_subnets: crate::sys::net::onlink_subnets()
                .into_iter()
                .map(|(net, len, dev)| format!("{net}/{len} {dev}"))
                .collect(),
        }
    }
}
