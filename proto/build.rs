//! Compiles the .proto files with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ferry/agent/v1/agent.proto",
        "proto/ferry/coordinator/v1/coordinator.proto",
        "proto/criu/rpc.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // A chunk's payload is a slice of the received HTTP/2 buffer rather than a copy of it.
        .bytes(".ferry.agent.v1.Chunk.payload")
        .compile_fds(fds)?;
    Ok(())
}
