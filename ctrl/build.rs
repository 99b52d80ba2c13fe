//! Generates the Workload API server from `proto/workload.proto`, and the Delegated Identity
//! API's server and client from `proto/delegatedidentity.proto`, with protox (a Rust protobuf
//! compiler: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    println!("cargo:rerun-if-changed=proto/delegatedidentity.proto");
    let fds = protox::compile(["proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    let fds = protox::compile(["proto/delegatedidentity.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
