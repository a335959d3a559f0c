//! Compiles the service-socket protocol (`proto/keyward/v1/keys.proto` at the
//! repository root) with protox, a protobuf compiler written in Rust, so a
//! build needs no system `protoc`. Only the client side is generated: this
//! crate never serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = "../../proto";
    let proto = "../../proto/keyward/v1/keys.proto";
    let fds = protox::compile([proto], [include])?;
    tonic_prost_build::configure()
        .build_server(false)
        // We build our own channel over the Unix socket (see connect.rs).
        .build_transport(false)
        // Secrets arrive as `Bytes` (no copy out of the decoded frame) and are
        // moved into a zeroizing `Secret` at once (see keyset.rs).
        .bytes(".keyward.v1.KeyVersion.secret")
        // The message that carries a secret gets a redacting Debug (proto.rs).
        .skip_debug([".keyward.v1.KeyVersion"])
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
