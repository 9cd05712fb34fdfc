//! Generates the gRPC code with `protox` (a pure-Rust protobuf compiler), so building Warden
//! needs no system `protoc`. Also writes the file descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["spiffe/workload.proto", "warden/control/v1/policy.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // etcd's KV and Watch (a vendored subset, see proto/etcd/NOTICE): client only, and not
    // in the reflection descriptors, since Warden serves none of it.
    let etcd = ["etcd/rpc.proto", "etcd/mvccpb/kv.proto"];
    for f in &etcd {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile(etcd, [&root])?)?;
    Ok(())
}
