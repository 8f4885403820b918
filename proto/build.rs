//! Compiles the .proto files with protox (pure Rust: no `protoc` needed) and
//! generates prost messages and tonic clients and servers from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/hallmonitor/v1/hallmonitor.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    // Messages carrying a secret get a redacted Debug (in lib.rs).
    tonic_prost_build::configure()
        .skip_debug(["hallmonitor.v1.EnrollRequest"])
        .compile_fds(descriptors)?;
    Ok(())
}
