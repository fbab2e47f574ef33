//! gRPC clients of the agents, one per address, connected lazily and reused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferry_proto::agent::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::CoordError;

#[derive(Default)]
pub struct AgentPool {
    clients: Mutex<HashMap<String, AgentClient<Channel>>>,
}

impl AgentPool {
    pub fn client(&self, address: &str) -> Result<AgentClient<Channel>, CoordError> {
        let mut clients = self.clients.lock().expect("agent pool poisoned");
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(address.to_string())
            .map_err(|e| CoordError::Invalid(format!("bad agent address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let c = AgentClient::new(channel);
        clients.insert(address.to_string(), c.clone());
        Ok(c)
    }
}
