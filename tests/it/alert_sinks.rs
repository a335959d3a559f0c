//! The alert sinks, through the library's [`Dispatcher`], against real
//! servers on loopback: an HTTP receiver (webhook, Slack, PagerDuty; one
//! that fails first, one that hangs), an exec hook, and an SMTP server
//! (aiosmtpd, with STARTTLS, implicit TLS and AUTH).
//!
//! Every test captures the log (one subscriber for the whole binary) so
//! that tokens can be shown never to reach it.

use crate::common::{log, receiver, smtp};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward::alerts::sinks::{payload_json, Dispatcher};
use keyward::alerts::{Alert, AlertStatus, Sensitive, Severity, Signal, SinkConfig, SinkKind, SinkStats, SmtpTls};
use keyward::hooks::HookCommand;
use keyward::secret::KeyRef;
use log::{captured_log, captured_text};
use receiver::Receiver;
use smtp::{SmtpOptions, SmtpServer};

/// Generous: each of these happens in milliseconds on loopback.
const PROMPTLY: Duration = Duration::from_secs(5);

fn log_text() -> String {
    captured_text()
}

/// A critical spike on prod/billing-api, just opened.
fn alert() -> Alert {
    let mut details = BTreeMap::new();
    details.insert("callers".to_owned(), "billing-worker (uid 1001)".to_owned());
    details.insert("reports".to_owned(), "7".to_owned());
    Alert {
        dedup_key: "keyward/web-1/prod/billing-api/spike".to_owned(),
        signal: Signal::Spike,
        severity: Severity::Critical,
        status: AlertStatus::Firing,
        key: Some(KeyRef::new("prod", "billing-api").unwrap()),
        environment: Some("prod".to_owned()),
        version: Some(3),
        service: "billing".to_owned(),
        summary: "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)".to_owned(),
        error: "HTTP 401 on primary v3 (7 reports in 1m)".to_owned(),
        details,
        timestamp: UNIX_EPOCH + Duration::from_secs(1_738_311_300),
        opened_at: UNIX_EPOCH + Duration::from_secs(1_738_311_000),
        repeat: 0,
        agent_host: "web-1".to_owned(),
    }
}

fn resolved() -> Alert {
    Alert {
        status: AlertStatus::Resolved,
        summary: "prod/billing-api: no more failures".to_owned(),
        repeat: 1,
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_738_311_900),
        ..alert()
    }
}

fn sink(name: &str, kind: SinkKind) -> SinkConfig {
    SinkConfig {
        name: name.to_owned(),
        kind,
        min_severity: Severity::Info,
        signals: Vec::new(),
        queue: 32,
        timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
    }
}

fn webhook(name: &str, url: String) -> SinkConfig {
    sink(
        name,
        SinkKind::Webhook {
            url: Sensitive::new(url),
            headers: Vec::new(),
            ca_file: None,
        },
    )
}

/// Polls the dispatcher's stats until `done` holds (or `PROMPTLY` passes).
async fn stats_until(dispatcher: &Dispatcher, done: impl Fn(&[SinkStats]) -> bool) -> Vec<SinkStats> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let stats = dispatcher.stats();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_webhook_gets_the_generic_payload() {
    captured_log();
    let receiver = Receiver::start();
    let config = sink(
        "ops-webhook",
        SinkKind::Webhook {
            url: Sensitive::new(receiver.url("/alerts/in?source=keyward")),
            headers: vec![(
                "Authorization".to_owned(),
                Sensitive::new("Bearer wh-T0KEN-1".to_owned()),
            )],
            ca_file: None,
        },
    );
    let dispatcher = Dispatcher::start(vec![config]);
    dispatcher.send(Arc::new(alert()));
    let got = receiver.wait_for_async(1, PROMPTLY).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/alerts/in?source=keyward");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer wh-T0KEN-1"));
    assert_eq!(
        request.header("user-agent"),
        Some(concat!("keywardd/", env!("CARGO_PKG_VERSION")))
    );
    let body = &request.body;
    for (field, expected) in [
        ("service", "billing"),
        ("error", "HTTP 401 on primary v3 (7 reports in 1m)"),
        ("timestamp", "2025-01-31T08:15:00Z"),
        ("environment", "prod"),
        ("key", "prod/billing-api"),
        ("signal", "spike"),
        ("severity", "critical"),
        ("agent_host", "web-1"),
        ("status", "firing"),
        ("dedup_key", "keyward/web-1/prod/billing-api/spike"),
        ("opened_at", "2025-01-31T08:10:00Z"),
    ] {
        assert_eq!(body[field], expected, "{field} in {body}");
    }
    assert_eq!(body["version"], 3);
    assert_eq!(body["repeat"], 0);
    assert_eq!(body["details"]["reports"], "7");
    assert_eq!(*body, payload_json(&alert()));
    let stats = stats_until(&dispatcher, |s| s[0].delivered == 1).await;
    assert_eq!(
        stats[0],
        SinkStats {
            name: "ops-webhook".to_owned(),
            kind: "webhook",
            delivered: 1,
            ..SinkStats::default()
        }
    );
    dispatcher.close(PROMPTLY).await;
    assert!(!log_text().contains("wh-T0KEN-1"));
}

#[tokio::test]
async fn slack_gets_a_readable_message_and_a_resolved_one() {
    captured_log();
    let receiver = Receiver::start();
    let dispatcher = Dispatcher::start(vec![sink(
        "slack",
        SinkKind::Slack {
            url: Sensitive::new(receiver.url("/services/T000/B000/slackT0KEN")),
            ca_file: None,
        },
    )]);
    dispatcher.send(Arc::new(alert()));
    receiver.wait_for_async(1, PROMPTLY).await;
    dispatcher.send(Arc::new(resolved()));
    let got = receiver.wait_for_async(2, PROMPTLY).await;

    let firing = &got[0].body;
    let text = firing["text"].as_str().unwrap();
    assert!(text.starts_with("[CRITICAL] prod/billing-api: spike"), "{text}");
    let blocks = firing["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    let all = firing.to_string();
    for needle in [
        "HTTP 401 on primary v3",
        "rotate it now",
        "*Severity*\\ncritical",
        "*Key*\\nprod/billing-api",
    ] {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }

    let resolved = &got[1].body;
    assert!(
        resolved["text"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED] prod/billing-api"),
        "{resolved}"
    );
    assert!(resolved["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains("RESOLVED"));
    dispatcher.close(PROMPTLY).await;
}

#[tokio::test]
async fn pagerduty_gets_trigger_then_resolve_with_one_dedup_key() {
    captured_log();
    let receiver = Receiver::answering(202);
    let dispatcher = Dispatcher::start(vec![sink(
        "pagerduty",
        SinkKind::PagerDuty {
            url: Sensitive::new(receiver.url("/v2/enqueue")),
            routing_key: Sensitive::new("pd-R0UTING-key-1".to_owned()),
            ca_file: None,
        },
    )]);
    dispatcher.send(Arc::new(alert()));
    receiver.wait_for_async(1, PROMPTLY).await;
    dispatcher.send(Arc::new(resolved()));
    let got = receiver.wait_for_async(2, PROMPTLY).await;
    let (trigger, resolve) = (&got[0].body, &got[1].body);
    assert_eq!(got[0].path, "/v2/enqueue");
    assert_eq!(trigger["routing_key"], "pd-R0UTING-key-1");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(trigger["dedup_key"], "keyward/web-1/prod/billing-api/spike");
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    let payload = &trigger["payload"];
    assert_eq!(
        payload["summary"],
        "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)"
    );
    assert_eq!(payload["source"], "web-1");
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["timestamp"], "2025-01-31T08:15:00Z");
    assert_eq!(payload["component"], "prod/billing-api");
    assert_eq!(payload["group"], "prod");
    assert_eq!(payload["class"], "spike");
    assert_eq!(
        payload["custom_details"]["error"],
        "HTTP 401 on primary v3 (7 reports in 1m)"
    );
    let stats = stats_until(&dispatcher, |s| s[0].delivered == 2).await;
    assert_eq!(stats[0].delivered, 2, "a 202 is a delivery: {stats:?}");
    dispatcher.close(PROMPTLY).await;
    assert!(!log_text().contains("pd-R0UTING-key-1"));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_alert_after_retries() {
    captured_log();
    let receiver = Receiver::failing_first(2);
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        retries: 3,
        backoff: Duration::from_millis(20),
        ..webhook("flaky", receiver.url("/hook"))
    }]);
    dispatcher.send(Arc::new(alert()));
    let got = receiver.wait_for_async(3, PROMPTLY).await;
    let answers: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answers, [500, 500, 200]);
    assert!(got.iter().all(|r| r.body == payload_json(&alert())));
    let stats = stats_until(&dispatcher, |s| s[0].delivered == 1).await;
    assert_eq!(
        (stats[0].retries, stats[0].delivered, stats[0].failed),
        (2, 1, 0),
        "{stats:?}"
    );
    dispatcher.close(PROMPTLY).await;
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    captured_log();
    let receiver = Receiver::answering(403);
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        retries: 3,
        ..webhook("forbidden", receiver.url("/hook/forbidden-T0KEN"))
    }]);
    dispatcher.send(Arc::new(alert()));
    let stats = stats_until(&dispatcher, |s| s[0].failed == 1).await;
    assert_eq!(
        (stats[0].failed, stats[0].retries, stats[0].delivered),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(receiver.requests(), 1);
    dispatcher.close(PROMPTLY).await;
    let log = log_text();
    let port = receiver.addr().port();
    let line = log
        .lines()
        .find(|l| l.contains("forbidden") && l.contains("403"))
        .unwrap_or_else(|| panic!("no log line with the status: {log}"));
    assert!(line.contains(&format!("http://127.0.0.1:{port}")), "{line}");
    assert!(!log.contains("forbidden-T0KEN"), "the URL's token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sink_slows_neither_send_nor_the_other_sinks() {
    captured_log();
    let hanging = Receiver::hanging();
    let healthy = Receiver::start();
    let dispatcher = Dispatcher::start(vec![
        SinkConfig {
            queue: 8,
            timeout: Duration::from_secs(20),
            ..webhook("stuck", hanging.url("/never/hang-T0KEN"))
        },
        SinkConfig {
            signals: vec![Signal::FallbackFailing],
            ..webhook("healthy", healthy.url("/ok"))
        },
    ]);
    let spike = Arc::new(alert());
    let started = Instant::now();
    for _ in 0..1000 {
        dispatcher.send(Arc::clone(&spike));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(50), "1000 sends took {took:?}");

    let outage = Arc::new(Alert {
        signal: Signal::FallbackFailing,
        dedup_key: "keyward/web-1/prod/billing-api/fallback_failing".to_owned(),
        ..alert()
    });
    let started = Instant::now();
    dispatcher.send(outage);
    let got = healthy.wait_for_async(1, PROMPTLY).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(got[0].body["signal"], "fallback_failing");

    // The receiver has the request; the worker counts it once answered.
    let stats = stats_until(&dispatcher, |s| s[1].delivered == 1).await;
    let stuck = &stats[0];
    // 1001 offered: at most 8 queued and 1 in flight, the rest dropped.
    assert!(stuck.dropped >= 992, "{stuck:?}");
    assert!(stuck.queued <= 8, "{stuck:?}");
    assert_eq!(stuck.delivered, 0, "{stuck:?}");
    let deadline = Instant::now() + PROMPTLY;
    while hanging.connections() == 0 {
        assert!(Instant::now() < deadline, "the stuck sink never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((stats[1].delivered, stats[1].dropped), (1, 0), "{:?}", stats[1]);

    // The drop warning is logged once, not a thousand times.
    let warnings = log_text().matches("alert sink stuck is not keeping up").count();
    assert_eq!(warnings, 1, "the queue-full warning is not rate-limited");

    let started = Instant::now();
    dispatcher.close(Duration::from_millis(200)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        started.elapsed()
    );
    assert!(!log_text().contains("hang-T0KEN"));
}

/// Writes an executable shell script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_exec_sink_gets_the_payload_on_stdin() {
    captured_log();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alert.json");
    let hook = script(
        dir.path(),
        "hook.sh",
        r#"cat > "$1.tmp" && printf '%s %s %s %s' "$KEYWARD_HOOK" "$KEYWARD_ALERT_STATUS" "$KEYWARD_ALERT_SEVERITY" "$PATH" > "$1.env" && mv "$1.tmp" "$1""#,
    );
    let command = HookCommand::new(vec![hook, out.to_str().unwrap().to_owned()]).unwrap();
    let dispatcher = Dispatcher::start(vec![sink("exec", SinkKind::Exec { command })]);
    dispatcher.send(Arc::new(alert()));
    let stats = stats_until(&dispatcher, |s| s[0].delivered + s[0].failed > 0).await;
    assert_eq!(stats[0].delivered, 1, "{stats:?}");
    let stdin: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(stdin, payload_json(&alert()));
    let env = std::fs::read_to_string(dir.path().join("alert.json.env")).unwrap();
    assert_eq!(env, "alert firing critical /usr/sbin:/usr/bin:/sbin:/bin");
    dispatcher.close(PROMPTLY).await;
}

/// Whether process `pid` is gone (or a zombie: dead, waiting to be reaped).
fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn an_exec_hook_past_its_timeout_is_killed_with_its_children() {
    captured_log();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let hook = script(
        dir.path(),
        "slow.sh",
        r#"sleep 30 & echo $! > "$1.tmp" && mv "$1.tmp" "$1"; wait"#,
    );
    let command = HookCommand::new(vec![hook, pid_file.to_str().unwrap().to_owned()]).unwrap();
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        timeout: Duration::from_millis(300),
        ..sink("slow-exec", SinkKind::Exec { command })
    }]);
    let started = Instant::now();
    dispatcher.send(Arc::new(alert()));
    let stats = stats_until(&dispatcher, |s| s[0].failed == 1).await;
    assert_eq!((stats[0].failed, stats[0].delivered), (1, 0), "{stats:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let deadline = Instant::now() + PROMPTLY;
    while !process_gone(pid.trim()) {
        assert!(Instant::now() < deadline, "the hook's child {pid} outlived the timeout");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dispatcher.close(PROMPTLY).await;
}

fn smtp_sink(server: &SmtpServer, tls: SmtpTls, login: bool) -> SinkConfig {
    SinkConfig {
        timeout: Duration::from_secs(10),
        ..sink(
            "email",
            SinkKind::Smtp {
                host: "127.0.0.1".to_owned(),
                port: server.port,
                tls,
                username: login.then(|| smtp::USER.to_owned()),
                password: login.then(|| Sensitive::new(smtp::PASSWORD.to_owned())),
                from: "keyward <keyward@web-1.example.com>".to_owned(),
                to: vec!["oncall@example.com".to_owned(), "sre@example.com".to_owned()],
                // Written by servers that speak TLS.
                ca_file: server.ca_file.exists().then(|| server.ca_file.clone()),
            },
        )
    }
}

#[tokio::test]
async fn email_goes_through_starttls_with_a_login() {
    captured_log();
    let server = SmtpServer::start(SmtpOptions {
        starttls: true,
        auth: true,
        ..SmtpOptions::default()
    });
    let dispatcher = Dispatcher::start(vec![smtp_sink(&server, SmtpTls::StartTls, true)]);
    dispatcher.send(Arc::new(alert()));
    let stats = stats_until(&dispatcher, |s| s[0].delivered + s[0].failed > 0).await;
    assert_eq!(stats[0].delivered, 1, "{stats:?}\n{}", log_text());
    let mail = server.wait_for_async(1, PROMPTLY).await.remove(0);
    assert!(mail.tls, "the message came over a plain connection");
    assert_eq!(mail.auth_user.as_deref(), Some(smtp::USER));
    assert_eq!(mail.mail_from, "keyward@web-1.example.com");
    assert_eq!(mail.rcpt_tos, ["oncall@example.com", "sre@example.com"]);
    assert_eq!(mail.subject, "[keyward CRITICAL] prod/billing-api: spike");
    assert_eq!(mail.content_type, "text/plain");
    for line in [
        "prod/billing-api v3 is refused: rotate it now (keyward rotate prod/billing-api)",
        "Severity:    critical",
        "Key:         prod/billing-api",
        "Error:       HTTP 401 on primary v3 (7 reports in 1m)",
        "Dedup key:   keyward/web-1/prod/billing-api/spike",
        "  callers: billing-worker (uid 1001)",
    ] {
        assert!(
            mail.body.lines().any(|l| l == line),
            "{line:?} missing from\n{}",
            mail.body
        );
    }

    dispatcher.send(Arc::new(resolved()));
    let mail = server.wait_for_async(2, PROMPTLY).await.remove(1);
    assert_eq!(mail.subject, "[keyward RESOLVED] prod/billing-api: spike");
    dispatcher.close(PROMPTLY).await;
    assert!(!log_text().contains(smtp::PASSWORD));
}

#[tokio::test]
async fn email_goes_through_implicit_tls() {
    captured_log();
    let server = SmtpServer::start(SmtpOptions {
        implicit_tls: true,
        auth: true,
        ..SmtpOptions::default()
    });
    let dispatcher = Dispatcher::start(vec![smtp_sink(&server, SmtpTls::Tls, true)]);
    dispatcher.send(Arc::new(alert()));
    let mail = server.wait_for_async(1, PROMPTLY).await.remove(0);
    assert!(mail.tls);
    assert_eq!(mail.auth_user.as_deref(), Some(smtp::USER));
    dispatcher.close(PROMPTLY).await;
}

#[tokio::test]
async fn starttls_required_but_not_offered_sends_nothing() {
    captured_log();
    let server = SmtpServer::start(SmtpOptions::default());
    // No login: were STARTTLS only attempted, the message would go through
    // in clear, and this test would see it.
    let dispatcher = Dispatcher::start(vec![SinkConfig {
        retries: 2,
        ..smtp_sink(&server, SmtpTls::StartTls, false)
    }]);
    dispatcher.send(Arc::new(alert()));
    let stats = stats_until(&dispatcher, |s| s[0].delivered + s[0].failed > 0).await;
    assert_eq!(
        (stats[0].failed, stats[0].delivered, stats[0].retries),
        (1, 0, 0),
        "must fail, and not be retried: {stats:?}"
    );
    // Give a message sent in clear time to land, then check none did.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.messages().is_empty(), "a message was sent in clear");
    let log = log_text();
    let why = log
        .lines()
        .find(|l| l.contains("alert not delivered") && l.contains("STARTTLS"))
        .unwrap_or_else(|| panic!("the log does not say why: {log}"));
    assert!(why.contains("nothing was sent in clear"), "{why}");
    dispatcher.close(PROMPTLY).await;

    // The same server takes mail when the sink allows no TLS: the refusal
    // above was the sink's doing.
    let dispatcher = Dispatcher::start(vec![smtp_sink(&server, SmtpTls::None, false)]);
    dispatcher.send(Arc::new(alert()));
    let mail = server.wait_for_async(1, PROMPTLY).await.remove(0);
    assert!(!mail.tls);
    dispatcher.close(PROMPTLY).await;
}
