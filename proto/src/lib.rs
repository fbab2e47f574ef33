//! ferry's wire types. This crate only compiles `.proto` files and re-exports them; domain types
//! live in the crates that use them and convert at the edge.

/// The node agent's API (`ferry.agent.v1`), including the snapshot stream.
pub mod agent {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.agent.v1");
}

/// CRIU's RPC messages (`criu swrk`), from CRIU's images/rpc.proto.
pub mod criu {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("criu");
}
