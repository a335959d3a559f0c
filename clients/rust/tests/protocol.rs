//! This crate compiles its own copy of the service socket's protocol (so
//! that it builds from its package alone): the copy must be the agent's
//! protocol, byte for byte, and name the client header as the agent reads
//! it. Fails when `proto/keyward/v1/keys.proto` changes without the copy
//! (`cp proto/keyward/v1/keys.proto clients/rust/proto/keyward/v1/`).

#[test]
fn the_crates_keys_proto_is_the_agents() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = std::fs::read(crate_dir.join("proto/keyward/v1/keys.proto")).unwrap();
    let agents = std::fs::read(crate_dir.join("../../proto/keyward/v1/keys.proto")).unwrap();
    assert!(
        ours == agents,
        "clients/rust/proto/keyward/v1/keys.proto differs from proto/keyward/v1/keys.proto: copy it again"
    );
}

#[test]
fn the_client_header_is_the_one_the_agent_reads() {
    assert_eq!(keyward_client::CLIENT_HEADER, keyward_proto::CLIENT_HEADER);
}
