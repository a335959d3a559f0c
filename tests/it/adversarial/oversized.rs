//! Oversized requests.

use super::*;

/// Requests over the secret, key-list and message limits on every path that
/// takes them: refused with a status that names the limit, nothing
/// changed, memory not blown up, the agent keeps serving. (tests/fetch.rs
/// covers PutKey's secret limit and a 2 MiB PutKey.)
#[tokio::test]
async fn oversized_requests_are_refused_with_the_limit_and_change_nothing() {
    let agent = TestAgent::start();
    agent.put("prod/big", "sk_adv_big_original");
    let rss_before = rss_kib(agent.pid());
    let mut keys = agent.keys().await;
    let mut admin = agent.admin().await;
    let mut tally = Tally::new("oversized_requests");
    let over_message = 2 * 1024 * 1024;
    let too_large = |what: &str, r: Answer, codes: &[Code], needle: &str| -> Result<(), String> {
        match r {
            Ok(()) => Err(format!("{what}: accepted")),
            Err(s) if codes.contains(&s.code()) && s.message().contains(needle) => Ok(()),
            Err(s) => Err(format!("{what}: {:?} {:?}", s.code(), s.message())),
        }
    };
    // Over the message limit the transport refuses before any handler runs;
    // tonic answers OUT_OF_RANGE ("message length too large ... the limit
    // is"), gRPC's convention is RESOURCE_EXHAUSTED: either names the limit.
    let transport = [Code::OutOfRange, Code::ResourceExhausted];
    let r = admin
        .stage_key(proto::StageKeyRequest {
            key: key("prod", "big"),
            secret: vec![b'x'; 64 * 1024 + 1].into(),
            ..Default::default()
        })
        .await;
    tally.check(too_large(
        "StageKey 64 KiB + 1",
        ok(r),
        &[Code::InvalidArgument],
        "limit is 65536",
    ));
    let r = admin
        .stage_key(proto::StageKeyRequest {
            key: key("prod", "big"),
            secret: vec![b'x'; over_message].into(),
            ..Default::default()
        })
        .await;
    tally.check(too_large("StageKey 2 MiB", ok(r), &transport, "limit"));
    let r = keys
        .get_key(proto::GetKeyRequest {
            key: key("prod", &"a".repeat(over_message)),
        })
        .await;
    tally.check(too_large("GetKey with a 2 MiB name", ok(r), &transport, "limit"));
    let r = keys
        .get_key(proto::GetKeyRequest {
            key: key("prod", &"a".repeat(512 * 1024)),
        })
        .await;
    tally.check(too_large(
        "GetKey with a 512 KiB name",
        ok(r),
        &[Code::InvalidArgument],
        "limit is 128",
    ));
    let many = |n: usize| proto::WatchKeysRequest {
        keys: (0..n).map(|i| key("prod", &format!("k{i}")).unwrap()).collect(),
    };
    let r = keys.watch_keys(many(1025)).await;
    tally.check(too_large(
        "WatchKeys with 1025 keys",
        ok(r),
        &[Code::InvalidArgument],
        "1 to 1024",
    ));
    let r = keys.watch_keys(many(150_000)).await;
    tally.check(too_large("WatchKeys with 150000 keys", ok(r), &transport, "limit"));
    let r = keys
        .report_auth_failure(proto::AuthFailureReport {
            key: key("prod", "big"),
            version: 1,
            status_code: 401,
            service: "s".repeat(over_message),
            detail: String::new(),
            misdirected_to: String::new(),
        })
        .await;
    tally.check(too_large("ReportAuthFailure 2 MiB", ok(r), &transport, "limit"));

    // Large but under the message limit: a report whose free text is huge
    // and hostile is accepted (on a version this uid was served), and
    // audited bounded and without control characters.
    keys.get_key(proto::GetKeyRequest {
        key: key("prod", "big"),
    })
    .await
    .unwrap();
    let hostile = format!("\n\u{1b}[31mFORGED{}", "d".repeat(400 * 1024));
    let r = keys
        .report_auth_failure(proto::AuthFailureReport {
            key: key("prod", "big"),
            version: 1,
            status_code: 401,
            service: hostile.clone(),
            detail: hostile,
            misdirected_to: String::new(),
        })
        .await;
    tally.check(ok(r).map_err(|s| format!("ReportAuthFailure 800 KiB: {:?} {}", s.code(), s.message())));
    let audit = std::fs::read_to_string(agent.audit_file()).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("\"auth_failure\""))
        .unwrap_or_default();
    tally.check(
        if line.is_empty() || line.len() > 4096 || line.contains("\\u001b") || line.contains("\\n") {
            Err(format!(
                "auth-failure audit record not bounded or not cleaned ({} bytes)",
                line.len()
            ))
        } else {
            Ok(())
        },
    );

    // By hand: message lengths that no client would declare.
    for (what, prefix, body) in [
        ("declared 4 GiB, 10 bytes sent", u32::MAX, vec![0u8; 10]),
        ("declared limit + 1, 10 bytes sent", 1024 * 1024 + 1, vec![0u8; 10]),
        ("declared 1000, 10 bytes sent", 1000, vec![0u8; 10]),
    ] {
        let mut bytes = h2raw::start();
        bytes.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            1,
            &h2raw::grpc_headers(GET_KEY),
        ));
        let mut message = vec![0];
        message.extend_from_slice(&prefix.to_be_bytes());
        message.extend_from_slice(&body);
        bytes.extend(h2raw::data(1, &message, true));
        let answer = poke(&agent.keys_sock(), &bytes, Duration::from_secs(2)).await;
        tally.check(match answer {
            Ok(a) if !a.answer.is_empty() => Ok(()),
            other => Err(format!("{what}: no answer ({other:?})")),
        });
    }
    // Headers far over any sane size, across CONTINUATION frames.
    let mut bytes = h2raw::start();
    let junk = "x".repeat(8000);
    let block = h2raw::header_block(&[("x-junk", junk.as_str())]);
    bytes.extend(h2raw::frame(h2raw::HEADERS, 0, 1, &h2raw::grpc_headers(GET_KEY)));
    for _ in 0..400 {
        bytes.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &block));
    }
    let answer = poke(&agent.keys_sock(), &bytes, Duration::from_secs(3)).await;
    tally.check(match answer {
        Ok(a) if a.closed || !a.answer.is_empty() => Ok(()),
        other => Err(format!("3 MiB of headers: neither answered nor closed ({other:?})")),
    });

    let rss_after = rss_kib(agent.pid());
    tally.check(if rss_after > rss_before + 200 * 1024 {
        Err(format!("RSS grew from {rss_before} KiB to {rss_after} KiB"))
    } else {
        Ok(())
    });
    assert_eq!(
        served(&agent, "prod", "big").await.unwrap(),
        Served::new(b"sk_adv_big_original", 1)
    );
    assert_no_panic(&agent);
    tally.finish();
}
