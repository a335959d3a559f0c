//! The standard gRPC services (health and reflection) as an attacker sees
//! them: a uid in keys.sock's group whom the policy grants nothing.
//!
//! - On the service socket it gets what anyone who may connect gets: the
//!   health status and the public protocol (keys.proto). It gets no key and
//!   no key's name (a key is no reflection symbol), `GetKey` still refuses
//!   it, and its health `Watch` streams count against its per-uid call
//!   limit like any other call (`RESOURCE_EXHAUSTED` naming the setting
//!   past it).
//! - The admin socket (0600 root) does not let it connect. Passed with a
//!   loose mode (as a service manager might), it still answers it nothing:
//!   health and reflection there go through the admin check that every
//!   `Admin` call goes through, and the refusals are audited.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

use crate::common::system::{got, helper, helper_param, helper_result, is_helper, is_root, skip, SharedDir, Uid};
use crate::common::{assert_no_secret, key, text, TestAgent};
use crate::tooling::{channel, file_of, files, health, services, KEYS_SOCKET_SERVICES};

/// In the socket group, granted nothing.
const ATTACKER: Uid = Uid::member(2071);
/// Granted the key.
const READER: Uid = Uid::member(2072);
const KEY: &str = "prod/tooling-api";
const SECRET: &str = "sk_live_tooling_5e2a91c7";
/// The attacker's call limit in this test: small, to reach it.
const MAX_STREAMS_PER_UID: usize = 4;

/// What a failed call came back with: its code's name and message.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Value {
    match r {
        Ok(v) => json!({"ok": format!("{v:?}")}),
        Err(s) => json!({"code": format!("{:?}", s.code()), "message": s.message()}),
    }
}

/// The attacker, as uid 2071. In mode `keys`, on keys.sock: health,
/// reflection, a `GetKey` of the key, health watches up to its call limit
/// and one call past it, and a connection to admin.sock. In mode `admin`,
/// on admin.sock (given a loose mode by the test): health, reflection and
/// `Admin/ListKeys`. Prints what it got, and every byte of reflection's
/// answers as hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: run by the tests of this module as another uid"]
async fn tooling_helper() {
    if !is_helper() {
        return;
    }
    let keys_sock = PathBuf::from(helper_param("KEYWARD_HELPER_KEYS"));
    let admin_sock = PathBuf::from(helper_param("KEYWARD_HELPER_ADMIN"));
    let mode = helper_param("KEYWARD_HELPER_MODE");
    let (env, name) = KEY.split_once('/').unwrap();
    let mut result = json!({});
    if mode == "admin" {
        let admin = channel(&admin_sock).await.expect("admin.sock lets it connect");
        result["health"] = refused(health(&admin, "").await);
        result["reflection"] = refused(services(&admin).await);
        let list = keyward::proto::admin_client::AdminClient::new(admin.clone())
            .list_keys(keyward::proto::ListKeysRequest::default())
            .await;
        result["list_keys"] = refused(list.map(|r| r.into_inner().keys.len()));
        println!("RESULT {result}");
        return;
    }
    let keys = channel(&keys_sock).await.expect("keys.sock lets it connect");
    result["health"] = json!(format!("{:?}", health(&keys, "").await.unwrap()));
    result["health_keys"] = json!(format!("{:?}", health(&keys, "keyward.v1.Keys").await.unwrap()));
    result["services"] = json!(services(&keys).await.unwrap());
    let mut seen = Vec::new();
    let (file, bytes) = file_of(&keys, "keyward.v1.Keys").await.unwrap();
    seen.extend(bytes);
    result["keys_file"] = json!(file.name());
    for symbol in [KEY, "prod.tooling-api", name, "keyward.v1.Admin"] {
        result["symbols"][symbol] = refused(file_of(&keys, symbol).await.map(|(f, _)| f.name().to_owned()));
    }
    result["admin_file"] = refused(
        files(&keys, MessageRequest::FileByFilename("keyward/v1/admin.proto".into()))
            .await
            .map(|(f, _)| f.len()),
    );
    let get = keyward::proto::keys_client::KeysClient::new(keys.clone())
        .get_key(keyward::proto::GetKeyRequest { key: key(env, name) })
        .await;
    result["get_key"] = refused(get.map(|r| r.into_inner().generation));
    result["admin_connect"] = json!(match channel(&admin_sock).await {
        Ok(_) => "connected".to_owned(),
        Err(e) => e.to_string(),
    });

    // Health watches are calls like any other: up to the limit, then
    // refused; once they end, calls are answered again.
    let mut watches = Vec::new();
    for _ in 0..MAX_STREAMS_PER_UID {
        let watch = HealthClient::new(keys.clone())
            .watch(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        watches.push(watch);
    }
    result["past_the_limit"] = refused(health(&keys, "").await);
    drop(watches);
    let mut after = health(&keys, "").await;
    for _ in 0..100 {
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = health(&keys, "").await;
    }
    result["after_the_watches"] = refused(after);
    result["seen_hex"] = json!(hex::encode(&seen));
    println!("RESULT {result}");
}

/// Plays the attacker on both sockets (see the module docs). Fails if the
/// service socket's health or reflection refuse a caller who may connect,
/// if reflection gives out more than the protocol, if they escape the
/// per-uid call limit, or if the admin socket answers a non-administrator.
#[test]
fn health_and_reflection_answer_whoever_may_connect_and_give_out_no_key() {
    if !is_root() {
        return skip("runs a client as uid 2071: needs root");
    }
    let shared = SharedDir::new();
    let agent = TestAgent::start_system_shared(
        "",
        &format!(
            "[limits]\nmax_streams_per_uid = {MAX_STREAMS_PER_UID}\n[[grant]]\nuids = [{}]\nkeys = [\"{KEY}\"]\n",
            READER.uid
        ),
    );
    agent.put(KEY, SECRET);
    // The grant works: the reader gets the key.
    let cli = shared.cli();
    assert_eq!(
        got(&agent.cli_as(READER, &cli, &["get", "--primary", KEY])).as_deref(),
        Ok(SECRET)
    );

    let attack = |mode: &str| {
        let out = helper(Some(ATTACKER), "trust::tooling::tooling_helper", &shared)
            .env("KEYWARD_HELPER_KEYS", agent.keys_sock())
            .env("KEYWARD_HELPER_ADMIN", agent.admin_sock())
            .env("KEYWARD_HELPER_MODE", mode)
            .output()
            .unwrap();
        assert_no_secret(
            "the attacker's output",
            &[out.stdout.clone(), out.stderr.clone()].concat(),
            &[SECRET],
        );
        helper_result(out, "the attacker")
    };

    let r = attack("keys");
    // What anyone who may connect gets.
    assert_eq!(r["health"], "Serving", "{r:#}");
    assert_eq!(r["health_keys"], "Serving", "{r:#}");
    assert_eq!(r["services"], json!(KEYS_SOCKET_SERVICES), "{r:#}");
    assert_eq!(r["keys_file"], "keyward/v1/keys.proto", "{r:#}");
    // Nothing more: no key is a symbol, nothing of the admin socket.
    for (symbol, answer) in r["symbols"].as_object().unwrap() {
        assert_eq!(answer["code"], "NotFound", "{symbol}: {r:#}");
    }
    assert_eq!(r["admin_file"]["code"], "NotFound", "{r:#}");
    let seen = hex::decode(r["seen_hex"].as_str().unwrap()).unwrap();
    assert!(!seen.is_empty());
    assert_no_secret("reflection's answers", &seen, &[SECRET]);
    // The policy still refuses it the key.
    assert_eq!(r["get_key"]["code"], "PermissionDenied", "{r:#}");
    let denied = r["get_key"]["message"].as_str().unwrap();
    assert!(denied.contains("uid 2071") && denied.contains(KEY), "{denied}");
    // admin.sock (0600 root) does not let it connect.
    let connect = r["admin_connect"].as_str().unwrap();
    assert!(connect.contains("permission denied"), "{connect}");
    // Its watches count against its calls: refused past the limit, naming
    // the setting; answered again once they end.
    assert_eq!(r["past_the_limit"]["code"], "ResourceExhausted", "{r:#}");
    let limit = r["past_the_limit"]["message"].as_str().unwrap();
    assert!(limit.contains("limits.max_streams_per_uid"), "{limit}");
    assert!(r["after_the_watches"]["ok"].is_string(), "{r:#}");

    // The admin socket with a loose mode, as a service manager might pass
    // it: the attacker connects, and is refused everything, audited.
    std::fs::set_permissions(agent.admin_sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = attack("admin");
    for call in ["health", "reflection", "list_keys"] {
        assert_eq!(r[call]["code"], "PermissionDenied", "{call}: {r:#}");
        let message = r[call]["message"].as_str().unwrap();
        assert!(message.contains("may not use the admin socket"), "{call}: {message}");
    }
    let denials: Vec<Value> = agent
        .audit_records("admin", "denied")
        .into_iter()
        .filter(|d| d["caller"]["uid"] == ATTACKER.uid)
        .collect();
    assert!(!denials.is_empty(), "the refusals are audited");
    // Root is still answered there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = channel(&agent.admin_sock()).await.unwrap();
        assert_eq!(health(&admin, "").await.unwrap(), ServingStatus::Serving);
        let refused = health(&admin, "keyward.v1.Keys").await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
    });
    let log = text(&std::fs::read(agent.audit_file()).unwrap());
    assert!(!log.contains(SECRET));
}
