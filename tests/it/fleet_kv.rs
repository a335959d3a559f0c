//! The OpenBao KV v2 client (`keyward::openbao`) against a real OpenBao
//! server (tests/common/openbao.rs): reads, versions, listings, metadata,
//! check-and-set, token files (a wrong token, a rotated file), AppRole with
//! renewal past the max TTL, and a server that stops, hangs, seals and
//! comes back.
//!
//! The log of the whole binary is captured (one subscriber) so that tokens
//! and secret_ids can be shown never to reach it, nor any error.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::log::{captured_log, captured_text};
use common::openbao::{write_private, Bao};
use keyward::openbao::{KvAuth, KvClient, KvError, KvOptions};
use serde_json::json;

/// The request timeout of the clients here: requests on loopback take
/// milliseconds; a paused server takes exactly this long to be declared
/// unreachable.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The captured log lines about the server at `address`.
fn log_lines_about(address: &str) -> Vec<String> {
    let text = captured_text();
    text.lines()
        .filter(|line| line.contains(&format!("address={address}")))
        .map(str::to_owned)
        .collect()
}

/// Asserts that no secret is in the error's message or `Debug` output.
fn assert_clean(error: &KvError, secrets: &[&str]) {
    let shown = format!("{error} / {error:?}");
    for secret in secrets {
        assert!(!shown.contains(secret), "a secret leaked into an error: {shown}");
    }
    assert!(!error.to_string().contains('\n'), "not one line: {error}");
}

/// Asserts that no secret is in the captured log.
fn assert_log_clean(secrets: &[&str]) {
    let text = captured_text();
    for secret in secrets {
        assert!(!text.contains(secret), "a secret leaked into the log");
    }
}

fn options(bao: &Bao, auth: KvAuth) -> KvOptions {
    captured_log();
    KvOptions {
        address: bao.addr.clone(),
        mount: "secret".into(),
        namespace: None,
        ca_file: None,
        auth,
        timeout: TIMEOUT,
    }
}

/// A client with the root token, from a file in the server's temp dir.
fn root_client(bao: &Bao) -> KvClient {
    let file = bao.dir.join("root-token");
    bao.token_file(&file);
    KvClient::new(options(bao, KvAuth::TokenFile(file))).unwrap()
}

/// A client with `token`, written to `file`.
fn token_client(bao: &Bao, file: &Path, token: &str) -> KvClient {
    write_private(file, token);
    KvClient::new(options(bao, KvAuth::TokenFile(file.to_owned()))).unwrap()
}

#[tokio::test]
async fn write_read_versions_metadata_list_delete() {
    let bao = Bao::start();
    let kv = root_client(&bao);
    assert_eq!(kv.address(), bao.addr);
    let a = "keyward/keys/prod/a";

    assert_eq!(kv.list("keyward/keys").await.unwrap(), Vec::<String>::new());
    assert!(kv.read(a).await.unwrap().is_none());
    assert!(kv.metadata(a).await.unwrap().is_none());

    assert_eq!(kv.write(a, &json!({"v": "one"}), None).await.unwrap(), 1);
    assert_eq!(kv.write(a, &json!({"v": "two", "n": 2}), None).await.unwrap(), 2);
    kv.write("keyward/keys/prod/b", &json!({"v": "b"}), None).await.unwrap();
    kv.write("keyward/keys/staging/c", &json!({"v": "c"}), None)
        .await
        .unwrap();

    let current = kv.read(a).await.unwrap().unwrap();
    assert_eq!((current.version, current.data), (2, json!({"v": "two", "n": 2})));
    let first = kv.read_version(a, 1).await.unwrap().unwrap();
    assert_eq!((first.version, first.data), (1, json!({"v": "one"})));
    assert!(kv.read_version(a, 7).await.unwrap().is_none());

    let meta = kv.metadata(a).await.unwrap().unwrap();
    assert_eq!(meta.current_version, 2);
    assert_eq!(meta.versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert!(meta.versions.values().all(|v| !v.deleted && !v.destroyed), "{meta:?}");

    assert_eq!(kv.list("keyward/keys").await.unwrap(), ["prod/", "staging/"]);
    assert_eq!(kv.list("keyward/keys/prod/").await.unwrap(), ["a", "b"]);
    assert_eq!(kv.list("").await.unwrap(), ["keyward/"]);

    // What the server holds, through its own CLI.
    assert_eq!(bao.kv_get_raw(a), Some(json!({"v": "two", "n": 2})));
    assert_eq!(bao.kv_list("keyward/keys/prod"), ["a", "b"]);

    kv.delete_metadata(a).await.unwrap();
    assert!(kv.read(a).await.unwrap().is_none());
    assert!(kv.read_version(a, 1).await.unwrap().is_none());
    assert!(kv.metadata(a).await.unwrap().is_none());
    assert_eq!(kv.list("keyward/keys/prod").await.unwrap(), ["b"]);
    assert_eq!(bao.kv_get_raw(a), None);
    kv.delete_metadata(a).await.unwrap();

    // A mount that does not exist is an error, not "absent".
    let file = bao.dir.join("root-token");
    let other = KvClient::new(KvOptions {
        mount: "nomount".into(),
        ..options(&bao, KvAuth::TokenFile(file))
    })
    .unwrap();
    match other.read("x").await {
        Err(KvError::Http {
            status: 404,
            path,
            message,
        }) => {
            assert_eq!(path, "nomount/data/x");
            assert!(
                message.contains("KV v2 secrets engine is mounted at nomount/"),
                "{message}"
            );
        }
        other => panic!("expected a 404 error, got {other:?}"),
    }
}

#[tokio::test]
async fn check_and_set() {
    let bao = Bao::start();
    let kv = root_client(&bao);
    let p = "keyward/keys/prod/cas";
    let cas_mismatch = |result: Result<u64, KvError>| match result {
        Err(error @ KvError::CasMismatch { .. }) => {
            assert!(
                error.to_string().contains("secret/data/keyward/keys/prod/cas"),
                "{error}"
            );
            assert!(!error.is_unreachable());
        }
        other => panic!("expected CasMismatch, got {other:?}"),
    };

    assert_eq!(kv.write(p, &json!({"v": 1}), Some(0)).await.unwrap(), 1);
    cas_mismatch(kv.write(p, &json!({"v": "again"}), Some(0)).await);
    cas_mismatch(kv.write(p, &json!({"v": "future"}), Some(5)).await);
    assert_eq!(kv.write(p, &json!({"v": 2}), Some(1)).await.unwrap(), 2);
    cas_mismatch(kv.write(p, &json!({"v": "stale"}), Some(1)).await);
    assert_eq!(kv.write(p, &json!({"v": 3}), Some(2)).await.unwrap(), 3);
    let current = kv.read(p).await.unwrap().unwrap();
    assert_eq!((current.version, current.data), (3, json!({"v": 3})));
}

#[tokio::test]
async fn metadata_settings_expire_and_trim_versions() {
    let bao = Bao::start();
    let kv = root_client(&bao);

    // max_versions: only the newest two are kept.
    let trimmed = "keyward/keys/prod/trimmed";
    kv.write_metadata(trimmed, None, Some(2)).await.unwrap();
    for n in 1..=3 {
        kv.write(trimmed, &json!({"n": n}), None).await.unwrap();
    }
    let meta = kv.metadata(trimmed).await.unwrap().unwrap();
    assert_eq!(meta.current_version, 3);
    assert_eq!(meta.versions.keys().copied().collect::<Vec<_>>(), [2, 3], "{meta:?}");
    assert!(kv.read_version(trimmed, 1).await.unwrap().is_none());

    // delete_version_after: a version disappears once it has passed.
    let expiring = "keyward/keys/prod/expiring";
    kv.write_metadata(expiring, Some(Duration::from_secs(1)), None)
        .await
        .unwrap();
    let version = kv.write(expiring, &json!({"v": "short-lived"}), None).await.unwrap();
    assert!(kv.read(expiring).await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while kv.read(expiring).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "version {version} was still readable after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meta = kv.metadata(expiring).await.unwrap().unwrap();
    assert!(meta.versions[&version].deleted, "{meta:?}");
    assert!(kv.read_version(expiring, version).await.unwrap().is_none());
}

#[tokio::test]
async fn token_files_wrong_tokens_and_rotation() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let first = bao.create_token("1h");
    let kv = token_client(&bao, &file, &first);
    let p = "keyward/keys/prod/rotated";
    assert_eq!(kv.write(p, &json!({"v": 1}), None).await.unwrap(), 1);

    // A renewable token with a 2 s TTL, kept alive for 5 s by the renewal
    // task (lookup-self, then renew-self at half the TTL).
    let short = bao.create_token("2s");
    let renewed = token_client(&bao, &dir.path().join("short"), &short);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let renewal = renewed.spawn_renewal(stop_rx);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let entry = renewed
            .read(p)
            .await
            .unwrap_or_else(|e| panic!("read at {:?}: {e}", started.elapsed()));
        assert_eq!(entry.unwrap().version, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    renewal.await.unwrap();
    let renewals = log_lines_about(&bao.addr)
        .iter()
        .filter(|line| line.contains("renewed the OpenBao token"))
        .count();
    assert!(renewals >= 3, "{renewals} renewals in 5 s of a 2 s token");

    // A token OpenBao never issued: denied, after one retry, and the
    // message says which path and what to check, without the token.
    let wrong = "s.NotAnIssuedToken1234567";
    let denied = token_client(&bao, &dir.path().join("wrong"), wrong);
    let error = denied.read(p).await.unwrap_err();
    match &error {
        KvError::Denied { path, message } => {
            assert_eq!(path, "secret/data/keyward/keys/prod/rotated");
            assert_eq!(message, "permission denied");
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(error.to_string().contains("policy"), "{error}");
    assert_clean(&error, &[wrong]);

    // The token is revoked and the file rewritten with a new one: the next
    // request gets a 403, reads the file again and succeeds.
    bao.revoke_token(&first);
    let second = bao.create_token("1h");
    write_private(&file, &second);
    assert_eq!(kv.read(p).await.unwrap().unwrap().data, json!({"v": 1}));
    assert_eq!(kv.write(p, &json!({"v": 2}), Some(1)).await.unwrap(), 2);

    // Revoked, and the file not rewritten: denied.
    bao.revoke_token(&second);
    let error = kv.read(p).await.unwrap_err();
    assert!(matches!(error, KvError::Denied { .. }), "{error:?}");
    assert_clean(&error, &[&first, &second]);

    // The file gone: an Auth error naming it.
    std::fs::remove_file(&file).unwrap();
    let error = kv.read(p).await.unwrap_err();
    match &error {
        KvError::Auth(message) => assert!(message.contains(&file.display().to_string()), "{message}"),
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_clean(&error, &[&first, &second]);
    assert_log_clean(&[&first, &second, &short, wrong]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_renewal_outlives_the_max_ttl() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let (role_id, secret_id) = bao.approle("fleet", "2s", "4s");
    let role_id_file = dir.path().join("role-id");
    let secret_id_file = dir.path().join("secret-id");
    write_private(&role_id_file, &role_id);
    let approle = |secret_id_file: PathBuf| {
        options(
            &bao,
            KvAuth::AppRole {
                mount: "approle".into(),
                role_id_file: role_id_file.clone(),
                secret_id_file,
            },
        )
    };

    // A wrong secret_id: the login is refused, and the message names the
    // files, not the ids.
    let wrong_file = dir.path().join("wrong-secret-id");
    write_private(&wrong_file, "5ecret-1d-that-is-wrong");
    let refused = KvClient::new(approle(wrong_file.clone())).unwrap();
    let error = refused.read("keyward/x").await.unwrap_err();
    match &error {
        KvError::Auth(message) => {
            assert!(message.contains("refused the AppRole login"), "{message}");
            assert!(message.contains(&wrong_file.display().to_string()), "{message}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_clean(&error, &[&role_id, "5ecret-1d-that-is-wrong", &secret_id]);

    // The right one: requests keep working for 10 s, well past the 4 s max
    // TTL of each token, while the renewal task renews and logs in again.
    write_private(&secret_id_file, &secret_id);
    let kv = KvClient::new(approle(secret_id_file)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let renewal = kv.spawn_renewal(stop_rx);
    let p = "keyward/keys/prod/approle";
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        n += 1;
        let version = kv
            .write(p, &json!({"n": n}), None)
            .await
            .unwrap_or_else(|e| panic!("write {n} at {:?}: {e}", started.elapsed()));
        assert_eq!(version, n);
        let entry = kv.read(p).await.unwrap().unwrap();
        assert_eq!(entry.data, json!({"n": n}));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), renewal)
        .await
        .expect("the renewal task stops when told")
        .unwrap();

    let lines = log_lines_about(&bao.addr);
    let count = |what: &str| lines.iter().filter(|line| line.contains(what)).count();
    assert!(
        count("logged in to OpenBao with AppRole") >= 3,
        "expected a login every ~3 s:\n{}",
        lines.join("\n")
    );
    assert!(count("renewed the OpenBao token") >= 2, "{}", lines.join("\n"));
    // The renewal keeps ahead of expiry; on a loaded machine a request may
    // still meet an expired token now and then, and recover by its retry.
    assert!(count("answered 403") <= 2, "{}", lines.join("\n"));
    assert_log_clean(&[&role_id, &secret_id]);
}

#[tokio::test]
async fn server_down_hung_sealed_and_back() {
    let mut bao = Bao::start();
    let kv = root_client(&bao);
    let p = "keyward/keys/prod/durable";
    kv.write(p, &json!({"v": "kept"}), None).await.unwrap();
    let secrets = [bao.root_token.clone()];
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();

    // Hung (SIGSTOP): unreachable after the timeout.
    bao.pause();
    let started = Instant::now();
    let error = kv.read(p).await.unwrap_err();
    let took = started.elapsed();
    bao.resume();
    match &error {
        KvError::Unreachable { address, reason } => {
            assert_eq!(address, &bao.addr);
            assert_eq!(reason, "no answer within 1s");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(error.is_unreachable());
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(error.to_string().contains("keeps serving its local copy"), "{error}");
    assert_clean(&error, &secrets);
    assert!(kv.read(p).await.unwrap().is_some());

    // Stopped: refused at once.
    bao.stop();
    let started = Instant::now();
    let error = kv.read(p).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    match &error {
        KvError::Unreachable { reason, .. } => assert_eq!(reason, "connection refused"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(error
        .to_string()
        .starts_with(&format!("OpenBao at {} is unreachable (connection refused)", bao.addr)));
    assert_clean(&error, &secrets);

    // Back, with its data.
    bao.restart();
    let entry = kv.read(p).await.unwrap().unwrap();
    assert_eq!((entry.version, entry.data), (1, json!({"v": "kept"})));
    assert_eq!(kv.write(p, &json!({"v": "after"}), Some(1)).await.unwrap(), 2);

    // Sealed: its own error, also "unreachable" for the caller.
    bao.seal();
    let error = kv.read(p).await.unwrap_err();
    assert_eq!(
        error,
        KvError::Sealed {
            address: bao.addr.clone()
        }
    );
    assert!(error.is_unreachable());
    assert!(error.to_string().contains("unseal"), "{error}");
    bao.unseal();
    assert_eq!(kv.read(p).await.unwrap().unwrap().version, 2);
    assert_log_clean(&secrets);
}
