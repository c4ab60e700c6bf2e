//! Compiles `lattice/**/*.proto` with protox (pure Rust, no system protoc) and
//! generates tonic clients and servers, plus a file descriptor set for reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "lattice/identity/v1/identity.proto",
        "lattice/storage/v1/storage.proto",
        "lattice/tasks/v1/tasks.proto",
        "lattice/agent/v1/agent.proto",
        "lattice/tunnel/v1/tunnel.proto",
        "lattice/events/v1/events.proto",
        "lattice/policy/v1/policy.proto",
        "lattice/policy/v1/changes.proto",
        "lattice/orgs/v1/orgs.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("lattice_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // `bytes` fields as `bytes::Bytes`: blob chunks pass through without copies.
        .bytes(".")
        // Small starting buffers for long-lived streams (see `codec`).
        .codec_path("crate::codec::LeanCodec")
        .skip_protoc_run()
        .compile_fds(fds)?;
    Ok(())
}
