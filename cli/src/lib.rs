//! The `ferry` binary's library part: subcommand implementations that are more than glue.

pub mod bench;
pub mod bench_api;
pub mod bench_checkpoint;
pub mod bench_network;
pub mod hosts;
pub mod supervise;
pub mod up;
pub mod verbs;
