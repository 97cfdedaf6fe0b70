//! Compiles `proto/` with prost. The protoc binary comes from the
//! protoc-bin-vendored crate, so a build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&["proto/fishjam/server_notifications.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
