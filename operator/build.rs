//! Compiles the config stream schema (api/proto) with protox, a pure-Rust protobuf compiler,
//! so no `protoc` binary is needed, and generates the tonic client and server.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest.join("../api/proto");
    let file = include.join("portcullis/config/v1/config.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&include])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
