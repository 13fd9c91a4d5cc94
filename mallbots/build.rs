//! Compiles `proto/*.proto` (every module's gRPC service) with protox — pure Rust, no system
//! `protoc` — into tonic servers and clients, and writes the file descriptor set that the
//! server's reflection service publishes.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut protos: Vec<PathBuf> =
        std::fs::read_dir("proto")?.map(|entry| entry.map(|e| e.path())).collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    protos.sort();
    let files = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("mallbots_descriptor.bin"), files.encode_to_vec())?;
    // Every message implements `prost::Name`, so that the codec finds its schema: the codec
    // refuses a request holding the NUL character in any string (`grpc::NulRefusingCodec`).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc::NulRefusingCodec")
        .compile_fds_with_config(files, config)?;
    Ok(())
}
