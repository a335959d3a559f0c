//! Compiles the service socket's protocol, `proto/keyward/v1/keys.proto`,
//! into the `Keys` client and its messages, with protox (a protobuf
//! compiler in Rust: no system `protoc` needed).
//!
//! The proto is this crate's own copy of the repository's
//! `proto/keyward/v1/keys.proto` (a test checks they are the same bytes),
//! so that the crate builds from its package alone: `cargo package` and a
//! crates.io user see no file outside it, and no unpublished crate. The
//! agent and the CLI compile the same file in the `keyward-proto` crate.
//! The output depends only on the proto and these settings: every build of
//! the same sources yields the same code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "keyward/v1/keys.proto";
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // A client only, over the channel this crate opens itself (a Unix
        // socket whose server is checked first): no server, no
        // `connect(url)` constructors.
        .build_server(false)
        .build_transport(false)
        // Secret material travels as `Bytes`, so that a secret can be taken
        // out of the decoded frame without a copy.
        .bytes(".keyward.v1.KeyVersion.secret")
        // The one message that carries a secret gets a hand-written,
        // redacting Debug (src/proto.rs).
        .skip_debug([".keyward.v1.KeyVersion"])
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/{proto}");
    Ok(())
}
