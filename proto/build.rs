//! Compiles `proto/concord/v1/*.proto` with protox (a pure-Rust protobuf compiler, so a fresh
//! machine needs no system `protoc`), generates the tonic/prost code from the resulting file
//! descriptor set, and writes that descriptor set next to the code for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/concord/v1/concord.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("concord_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;

    tonic_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
