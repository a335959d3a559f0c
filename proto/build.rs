//! Compiles `keyward/v1/{keys,admin}.proto` with protox (a protobuf compiler
//! in Rust), so a build needs no system `protoc`. The output goes to
//! `OUT_DIR` and depends only on the protos and these settings: every build
//! of the same sources yields the same code.
//!
//! Beside the code, one encoded `FileDescriptorSet` per socket, for the
//! agent's server reflection: `keys.fds` (keys.proto and its imports, what
//! the service socket serves) and `admin.fds` (admin.proto and its imports,
//! keys.proto among them, for the admin socket).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["keyward/v1/keys.proto", "keyward/v1/admin.proto"];
    let fds = protox::compile(protos, ["."])?;
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    for (proto, file) in [
        ("keyward/v1/keys.proto", "keys.fds"),
        ("keyward/v1/admin.proto", "admin.fds"),
    ] {
        let set = protox::Compiler::new(["."])?
            .include_imports(true)
            .include_source_info(true)
            .open_file(proto)?
            .encode_file_descriptor_set();
        std::fs::write(out.join(file), set)?;
    }
    tonic_prost_build::configure()
        // Callers bring their own channel (a Unix socket whose server is
        // checked first); no `connect(url)` constructors.
        .build_transport(false)
        // Secret material travels as `Bytes` so the agent can hand out its
        // zeroizing buffers, and a client can take a secret out of the
        // decoded frame, without copying.
        .bytes(".keyward.v1.KeyVersion.secret")
        .bytes(".keyward.v1.PutKeyRequest.secret")
        .bytes(".keyward.v1.StageKeyRequest.secret")
        .bytes(".keyward.v1.StartRotationRequest.secret")
        // Small per-stream codec buffers: 10,000 idle watch streams must not
        // each hold tonic's default 8 KiB (see codec.rs).
        .codec_path("crate::SmallBufferCodec")
        // Messages that carry secrets get a hand-written, redacting Debug
        // (redact.rs).
        .skip_debug([
            ".keyward.v1.KeyVersion",
            ".keyward.v1.PutKeyRequest",
            ".keyward.v1.StageKeyRequest",
            ".keyward.v1.StartRotationRequest",
        ])
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
