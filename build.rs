//! Compiles `proto/` with prost. The protoc binary comes from the
//! protoc-bin-vendored crate, so a build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // The schema, for mending invalid UTF-8 in string fields (core/mend.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out.join("descriptors.bin"));
    config.compile_protos(&["proto/fishjam/server_notifications.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
