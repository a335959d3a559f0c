//! Fetching keys: the happy path, restarts, bad names, limits, CAS.

use crate::common;

use common::*;
use keyward::proto::{self, RotationState};
use tonic::Code;

#[tokio::test]
async fn put_then_get_serves_the_primary_with_metadata() {
    let agent = TestAgent::start();
    agent.put("prod/billing-api", "sk_live_fetch_1");

    let out = agent.cli(&["get", "prod/billing-api"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("sk_live_fetch_1"), "{shown}");
    assert!(shown.contains("primary"), "{shown}");
    assert!(!shown.contains("fallback"), "{shown}");

    let set = agent.fetch("prod", "billing-api").await.unwrap();
    let primary = set.primary.unwrap();
    assert_eq!(&primary.secret[..], b"sk_live_fetch_1");
    assert_eq!(primary.version, 1);
    assert_eq!(primary.fingerprint.len(), 16);
    assert!(primary.created_at.is_some());
    assert!(set.fallback.is_none());
    assert_eq!(set.generation, 1);
    assert_eq!(set.state, RotationState::Steady as i32);

    let raw = agent.cli(&["get", "--primary", "prod/billing-api"], None);
    assert_eq!(text(&raw.stdout), "sk_live_fetch_1\n");

    // The fetch was audited with the version and fingerprint served.
    let fetch = agent
        .audit_lines()
        .into_iter()
        .find(|r| r["event"] == "fetch" && r["outcome"] == "ok")
        .expect("fetch audited");
    assert_eq!(fetch["key"], "prod/billing-api");
    assert_eq!(fetch["versions"][0]["fingerprint"], primary.fingerprint.as_str());
    assert_eq!(fetch["caller"]["uid"], nix::unistd::geteuid().as_raw());
}

#[tokio::test]
async fn unknown_key_is_not_found_with_a_hint() {
    let agent = TestAgent::start();
    let err = agent.fetch("prod", "nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("keyward put prod/nope"), "{}", err.message());
}

#[tokio::test]
async fn restart_keeps_every_key_generation_and_fingerprint() {
    let mut agent = TestAgent::start();
    for i in 0..5 {
        agent.put(&format!("staging/svc-{i}"), &format!("sk_restart_{i}"));
    }
    let out = agent.cli(&["put", "--overwrite", "staging/svc-0"], Some(b"sk_restart_new"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = agent
        .admin()
        .await
        .list_keys(proto::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(agent.stop().success());
    agent.spawn().unwrap();
    let after = agent
        .admin()
        .await
        .list_keys(proto::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
    assert_eq!(after.keys.len(), 5);
    let svc0 = after
        .keys
        .iter()
        .find(|k| k.key.as_ref().unwrap().name == "svc-0")
        .unwrap();
    assert_eq!((svc0.generation, svc0.primary.as_ref().unwrap().version), (2, 2));
    assert_eq!(svc0.history.len(), 1);
    let mut keys = agent.keys().await;
    for i in 1..5 {
        let set = keys
            .get_key(proto::GetKeyRequest {
                key: key("staging", &format!("svc-{i}")),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.primary.unwrap().secret, format!("sk_restart_{i}").into_bytes());
    }
    let set = keys
        .get_key(proto::GetKeyRequest {
            key: key("staging", "svc-0"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&set.primary.unwrap().secret[..], b"sk_restart_new");
}

#[tokio::test]
async fn every_bad_name_class_is_invalid_argument_and_writes_nothing() {
    let agent = TestAgent::start();
    let long = "a".repeat(129);
    let cases: Vec<(&str, &str)> = vec![
        ("prod", "../etc-passwd"),
        ("prod", ".."),
        ("prod", "a/b"),
        ("prod", "/abs"),
        ("prod", "nul\0byte"),
        ("prod", &long),
        ("prod", "Upper"),
        ("prod", ""),
        ("prod", "-lead"),
        ("prod", "sp ace"),
        ("..", "x"),
        ("PROD", "x"),
        ("", "x"),
        ("qa", "x"), // well-formed but not a configured environment
    ];
    let mut keys = agent.keys().await;
    let mut admin = agent.admin().await;
    keep_for_leak_scan("secrets", b"sk_badname");
    for (env, name) in &cases {
        let err = keys
            .get_key(proto::GetKeyRequest { key: key(env, name) })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "get {env:?}/{name:?}: {}",
            err.message()
        );
        assert!(!err.message().is_empty());
        let err = admin
            .put_key(proto::PutKeyRequest {
                key: key(env, name),
                secret: bytes::Bytes::from_static(b"sk_badname"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "put {env:?}/{name:?}: {}",
            err.message()
        );
    }
    let err = keys.get_key(proto::GetKeyRequest { key: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let unknown_env = keys
        .get_key(proto::GetKeyRequest { key: key("qa", "x") })
        .await
        .unwrap_err();
    assert!(
        unknown_env.message().contains("not configured"),
        "{}",
        unknown_env.message()
    );

    // Nothing was written anywhere under the state dir but the known files.
    let mut files = Vec::new();
    for entry in paths_under(&agent.dir) {
        files.push(entry.strip_prefix(&agent.dir).unwrap().display().to_string());
    }
    assert!(!files.is_empty(), "nothing under {}", agent.dir.display());
    assert!(files.iter().all(|f| !f.ends_with(".age")), "{files:?}");
    // And the CLI refuses bad names before sending anything.
    let out = agent.cli(&["put", "prod/../x"], Some(b"sk_badname"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ENV/NAME"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn oversized_secret_and_message_are_refused_and_change_nothing() {
    let agent = TestAgent::start();
    agent.put("dev/big", "sk_small_original");
    let mut admin = agent.admin().await;
    let err = admin
        .put_key(proto::PutKeyRequest {
            key: key("dev", "big"),
            secret: bytes::Bytes::from(vec![b'x'; 64 * 1024 + 1]),
            overwrite: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 65536"), "{}", err.message());
    // Over the message limit (1 MiB): refused by the transport, with a status.
    let err = admin
        .put_key(proto::PutKeyRequest {
            key: key("dev", "big"),
            secret: bytes::Bytes::from(vec![b'x'; 2 * 1024 * 1024]),
            overwrite: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let set = agent.fetch("dev", "big").await.unwrap();
    assert_eq!(&set.primary.unwrap().secret[..], b"sk_small_original");
    assert_eq!(set.generation, 1);
    // Exactly at the limit is fine.
    admin
        .put_key(proto::PutKeyRequest {
            key: key("dev", "big"),
            secret: bytes::Bytes::from(vec![b'y'; 64 * 1024]),
            overwrite: true,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn overwrite_needs_the_flag_and_cas_checks_the_generation() {
    let agent = TestAgent::start();
    agent.put("prod/crm-api", "sk_crm_1");
    let out = agent.cli(&["put", "prod/crm-api"], Some(b"sk_crm_2"));
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(msg.contains("already exists") && msg.contains("--overwrite"), "{msg}");

    let out = agent.cli(
        &["put", "--overwrite", "--expected-generation", "7", "prod/crm-api"],
        Some(b"sk_crm_2"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("generation 1, not 7"),
        "{}",
        text(&out.stderr)
    );

    let out = agent.cli(
        &["put", "--overwrite", "--expected-generation", "1", "prod/crm-api"],
        Some(b"sk_crm_2\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = agent.cli(&["get", "--primary", "prod/crm-api"], None);
    // One trailing newline from the input is not part of the secret.
    assert_eq!(text(&got.stdout), "sk_crm_2\n");

    let out = agent.cli(&["delete", "prod/crm-api"], None);
    assert!(!out.status.success(), "delete needs --yes");
    let out = agent.cli(&["delete", "--yes", "prod/crm-api"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!agent.dir.join("store/prod/crm-api.age").exists());
    let err = agent.fetch("prod", "crm-api").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let events: Vec<String> = agent
        .audit_lines()
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(events.iter().filter(|e| *e == "put").count() >= 2, "{events:?}");
    assert!(events.iter().any(|e| e == "delete"), "{events:?}");
}

#[tokio::test]
async fn list_and_status_show_metadata_only() {
    let agent = TestAgent::start();
    agent.put("dev/a", "sk_list_secret_a");
    agent.put("prod/b", "sk_list_secret_b");
    let out = agent.cli(&["list"], None);
    let shown = text(&out.stdout);
    assert!(shown.contains("dev/a") && shown.contains("prod/b"), "{shown}");
    assert_no_secret("list output", &out.stdout, &["sk_list_secret_a", "sk_list_secret_b"]);
    let out = agent.cli(&["list", "--env", "prod", "--json"], None);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 1);
    let out = agent.cli(&["status"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 keys"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn get_json_keeps_text_and_binary_secrets_exact() {
    let agent = TestAgent::start();
    agent.put("dev/text", "sk_json_text");
    let binary = [0xffu8, 0x00, 0x9c, b'k', 0x80];
    let f = agent.dir.parent().unwrap().join("binary.key");
    std::fs::write(&f, binary).unwrap();
    let out = agent.cli(&["put", "--raw", "--file", f.to_str().unwrap(), "dev/binary"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let json = |name: &str| -> serde_json::Value {
        let out = agent.cli(&["get", "--json", name], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let doc = json("dev/text");
    assert_eq!(doc["primary"]["secret"], "sk_json_text");
    let doc = json("dev/binary");
    assert_eq!(doc["primary"]["secret_hex"], "ff009c6b80");
    assert!(doc["primary"].get("secret").is_none(), "{doc}");
    let set = agent.fetch("dev", "binary").await.unwrap();
    assert_eq!(&set.primary.unwrap().secret[..], &binary);
}
