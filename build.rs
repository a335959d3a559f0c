//! Compiles `proto/` with protox (a protobuf compiler in Rust), so a build
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/keyward/v1/keys.proto", "proto/keyward/v1/admin.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Secret material travels as `Bytes` so the agent can hand out its
        // zeroizing buffers without copying them.
        .bytes(".keyward.v1.KeyVersion.secret")
        .bytes(".keyward.v1.PutKeyRequest.secret")
        .bytes(".keyward.v1.StageKeyRequest.secret")
        // Small per-stream codec buffers: 10,000 idle watch streams must not
        // each hold tonic's default 8 KiB (see proto::SmallBufferCodec).
        .codec_path("crate::proto::SmallBufferCodec")
        // Messages that carry secrets get a hand-written, redacting Debug.
        .skip_debug([
            ".keyward.v1.KeyVersion",
            ".keyward.v1.PutKeyRequest",
            ".keyward.v1.StageKeyRequest",
        ])
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
