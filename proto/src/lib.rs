//! ferry's wire: the types, compiled from `.proto` files and re-exported (domain types live in
//! the crates that use them and convert at the edge), and the wire's security (`tls`: mutual
//! TLS between the parts, shared by every gRPC server and client).

#![allow(clippy::all, missing_docs)]

pub mod ids;
pub mod tls;

/// The generated modules, nested as their protobuf packages (cross-package references need it).
pub mod ferry {
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("ferry.agent.v1");
        }
    }
    pub mod coordinator {
        pub mod v1 {
            tonic::include_proto!("ferry.coordinator.v1");
        }
    }
}

/// The node agent's API (`ferry.agent.v1`), including the snapshot stream.
pub use ferry::agent::v1 as agent;
/// The coordinator's API for agents (`ferry.coordinator.v1`).
pub use ferry::coordinator::v1 as coordinator;

/// CRIU's RPC messages (`criu swrk`), from CRIU's images/rpc.proto.
pub mod criu {
    tonic::include_proto!("criu");
}
