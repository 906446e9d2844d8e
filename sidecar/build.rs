//! Generates the gRPC messages, service and client from proto/inference.proto.
//! protox parses the .proto in Rust, so the build needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes are handed on without a copy.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
