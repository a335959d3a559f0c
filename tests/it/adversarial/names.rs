//! Malformed names.

use super::*;

/// One string of each malformed class, then `random` valid names with a
/// forbidden character put at a random place.
fn malformed_names(rng: &mut StdRng, random: usize) -> Vec<(&'static str, String)> {
    let mut cases: Vec<(&'static str, String)> = vec![
        ("empty", String::new()),
        ("too_long", "a".repeat(129)),
        ("too_long", "b".repeat(4096)),
        ("dot", ".".into()),
        ("dotdot", "..".into()),
        ("leading_dot", ".hidden".into()),
        ("leading_dash", "-x".into()),
        ("leading_underscore", "_x".into()),
        ("slash", "a/b".into()),
        ("traversal", "../etc-passwd".into()),
        ("traversal", "..%2f..%2fetc".into()),
        ("absolute", "/etc/shadow".into()),
        ("nul", "a\0b".into()),
        ("nul", "x\0".into()),
        ("newline", "a\nb".into()),
        ("newline", "x\nINFO keywardd: forged".into()),
        ("carriage_return", "a\rb".into()),
        ("tab", "a\tb".into()),
        ("space", "a b".into()),
        ("uppercase", "Billing".into()),
        ("uppercase", "PROD".into()),
        ("backslash", "a\\b".into()),
        ("glob", "a*".into()),
        ("escape_sequence", "a\u{1b}[31mb".into()),
        ("unicode", "émoji".into()),
        ("lookalike_slash", "a\u{2215}b".into()),
        ("fullwidth_dots", "\u{ff0e}\u{ff0e}".into()),
        ("rtl_override", "a\u{202e}b".into()),
        ("emoji", "\u{1f511}".into()),
        ("delete_char", "\u{7f}".into()),
        ("percent", "%2e%2e".into()),
    ];
    const FORBIDDEN: &[char] = &[
        '/',
        '\\',
        '\0',
        '\n',
        '\r',
        '\t',
        ' ',
        ':',
        '*',
        '?',
        '$',
        '%',
        '~',
        'A',
        'Z',
        '\u{7f}',
        'é',
        '\u{2215}',
        '\u{ff0e}',
        '\u{202e}',
        '\u{1f511}',
        '\u{1}',
    ];
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
    for _ in 0..random {
        let len = rng.gen_range(1..=40);
        let mut name: Vec<char> = (0..len)
            .map(|i| {
                let pool = if i == 0 { &alphabet[..36] } else { &alphabet[..] };
                pool[rng.gen_range(0..pool.len())] as char
            })
            .collect();
        let bad = FORBIDDEN[rng.gen_range(0..FORBIDDEN.len())];
        let at = rng.gen_range(0..=name.len());
        name.insert(at, bad);
        cases.push(("random_forbidden_char", name.into_iter().collect()));
    }
    cases
}

/// What one call answered, for the table below.
pub(super) type Answer = Result<(), tonic::Status>;

pub(super) fn ok<T>(r: Result<T, tonic::Status>) -> Answer {
    r.map(|_| ())
}

/// Every RPC that takes a key, on both sockets, with every malformed name
/// class in the environment and in the name: INVALID_ARGUMENT with a
/// message that says what is wrong and stays on one line; nothing written;
/// the agent keeps serving. (tests/fetch.rs covers GetKey and PutKey with a
/// short table; this covers the other nine RPCs and many more names.)
#[tokio::test]
async fn every_malformed_name_class_on_every_rpc_is_invalid_argument() {
    let agent = TestAgent::start_with_config("[alerts]\nreport_rate = 1000000\nreport_burst = 1000000\n");
    agent.put("prod/billing", "sk_adv_names_good");
    let store_before = tree(&agent.dir.join("store"));
    let mut rng = StdRng::seed_from_u64(0x6e61_6d65);
    let names = malformed_names(&mut rng, 100);
    let mut keys = agent.keys().await;
    let mut admin = agent.admin().await;
    let mut tally = Tally::new("malformed_names");
    keep_for_leak_scan("secrets", b"sk_adv_never_stored");
    keep_for_leak_scan("secrets", b"sk_adv_never_staged");
    for (class, bad) in &names {
        for (env, name) in [("prod", bad.as_str()), (bad.as_str(), "billing")] {
            let k = || key(env, name);
            let calls: Vec<(&str, Answer)> = vec![
                ("GetKey", ok(keys.get_key(proto::GetKeyRequest { key: k() }).await)),
                (
                    "WatchKeys",
                    ok(keys
                        .watch_keys(proto::WatchKeysRequest {
                            keys: vec![k().unwrap()],
                        })
                        .await),
                ),
                (
                    "ReportAuthFailure",
                    ok(keys
                        .report_auth_failure(proto::AuthFailureReport {
                            key: k(),
                            version: 1,
                            status_code: 401,
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "PutKey",
                    ok(admin
                        .put_key(proto::PutKeyRequest {
                            key: k(),
                            secret: bytes::Bytes::from_static(b"sk_adv_never_stored"),
                            overwrite: true,
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "StageKey",
                    ok(admin
                        .stage_key(proto::StageKeyRequest {
                            key: k(),
                            secret: bytes::Bytes::from_static(b"sk_adv_never_staged"),
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "PromoteKey",
                    ok(admin
                        .promote_key(proto::RotationRequest {
                            key: k(),
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "RollbackKey",
                    ok(admin
                        .rollback_key(proto::RotationRequest {
                            key: k(),
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "AbortKey",
                    ok(admin
                        .abort_key(proto::RotationRequest {
                            key: k(),
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "RetireKey",
                    ok(admin
                        .retire_key(proto::RetireKeyRequest {
                            key: k(),
                            force: true,
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "DeleteKey",
                    ok(admin
                        .delete_key(proto::DeleteKeyRequest {
                            key: k(),
                            ..Default::default()
                        })
                        .await),
                ),
                (
                    "GetRotationStatus",
                    ok(admin
                        .get_rotation_status(proto::RotationStatusRequest { key: k() })
                        .await),
                ),
            ];
            for (rpc, answer) in calls {
                tally.check(match answer {
                    Ok(()) => Err(format!("{rpc} {env:?}/{name:?} ({class}) was accepted")),
                    Err(s) if s.code() != Code::InvalidArgument => Err(format!(
                        "{rpc} {env:?}/{name:?} ({class}): {:?} {}",
                        s.code(),
                        s.message()
                    )),
                    Err(s) if s.message().is_empty() || !printable(s.message()) => Err(format!(
                        "{rpc} {env:?}/{name:?} ({class}): unclear or unescaped message {:?}",
                        s.message()
                    )),
                    Err(_) => Ok(()),
                });
            }
        }
        // ListKeys takes an environment alone ("" lists every one).
        if !bad.is_empty() {
            let answer = admin
                .list_keys(proto::ListKeysRequest {
                    environment: bad.clone(),
                })
                .await;
            tally.check(match answer {
                Err(s) if s.code() == Code::InvalidArgument && printable(s.message()) => Ok(()),
                other => Err(format!("ListKeys {bad:?} ({class}): {:?}", other.map(|_| ()))),
            });
        }
    }
    assert_eq!(
        tree(&agent.dir.join("store")),
        store_before,
        "a malformed name wrote a file"
    );
    assert_eq!(
        served(&agent, "prod", "billing").await.unwrap(),
        Served::new(b"sk_adv_names_good", 1)
    );
    assert_no_panic(&agent);
    tally.finish();
}
