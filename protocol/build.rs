//! Compiles `proto/tern/v1/tern.proto` with protox (pure Rust), so no `protoc`
//! is needed on the machine, and feeds the descriptors to prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tern/v1/tern.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        // Keep generated enums open (i32 on the wire); `validate` maps unknown
        // values to typed errors.
        .compile_fds(descriptors)?;
    Ok(())
}
