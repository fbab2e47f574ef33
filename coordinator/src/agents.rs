//! gRPC clients of the agents, one per address, connected lazily and reused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::error::CoordError;

pub struct AgentPool {
    wire: ferry_proto::tls::Wire,
    clients: Mutex<HashMap<String, AgentClient<Channel>>>,
}

impl AgentPool {
    pub fn new(wire: ferry_proto::tls::Wire) -> AgentPool {
        AgentPool { wire, clients: Mutex::default() }
    }

    pub fn client(&self, address: &str) -> Result<AgentClient<Channel>, CoordError> {
        let mut clients = self.clients.lock().expect("agent pool poisoned");
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let channel = self
            .wire
            .endpoint(address)
            .map_err(|e| CoordError::Invalid(format!("bad agent address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let c = AgentClient::new(channel);
        clients.insert(address.to_string(), c.clone());
        Ok(c)
    }
}
