//! `[alerts]`, `[[alerts.sink]]` and `[metrics]`: the documented shapes and
//! the message of each mistake. Messages must never quote a token.

use std::time::Duration;

use super::{assert_has, parse, parse_err};
use crate::config::alerts::{Severity, Signal, SinkKind, SmtpTls};

const TOKEN: &str = "T0KEN-s3cr3t-9f8e7d";

#[test]
fn full_alerts_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let url_file = file("webhook-url", &format!("https://hooks.example.com/a?token={TOKEN}\n"));
    let pd_file = file("pd-key", &format!("{TOKEN}\n"));
    let pw_file = file("smtp-pw", TOKEN);
    let text = format!(
        r#"
[alerts]
agent_host = "app-1.example.com"
repeat_interval = "45m"
report_rate = 7
report_burst = 9

[alerts.detect]
window = "2m"
spike_threshold = 3
rising_windows = 4
rising_min = 20
expiry_lead = "3d"
max_age = "90d"

[[alerts.sink]]
kind = "webhook"
url_file = "{url_file}"
headers = {{ Authorization = "Bearer {TOKEN}" }}
timeout = "2s"
retries = 2
backoff = "250ms"
queue = 50

[[alerts.sink]]
kind = "slack"
name = "ops-slack"
url = "https://hooks.slack.com/services/T/B/{TOKEN}"
min_severity = "warning"
signals = ["spike", "fallback_failing"]

[[alerts.sink]]
kind = "pagerduty"
routing_key_file = "{pd_file}"
min_severity = "critical"

[[alerts.sink]]
kind = "smtp"
host = "smtp.example.com"
username = "keyward"
password_file = "{pw_file}"
from = "keyward@example.com"
to = ["oncall@example.com", "sec@example.com"]

[[alerts.sink]]
kind = "exec"
command = ["/usr/local/bin/page-oncall", "--team", "payments"]

[[alerts.sink]]
kind = "log"

[[key]]
keys = ["prod/billing-*"]
alerts = {{ spike_threshold = 10, max_age = "30d" }}

[metrics]
listen = "127.0.0.1:9464"
"#
    );
    let c = parse(&text).unwrap();
    let a = &c.alerts;
    assert_eq!(a.agent_host, "app-1.example.com");
    assert_eq!(a.repeat_interval, Duration::from_secs(45 * 60));
    assert_eq!((a.report_rate, a.report_burst), (7, 9));
    assert_eq!(a.detect.window, Duration::from_secs(120));
    assert_eq!(a.detect.spike_threshold, 3);
    assert_eq!(a.detect.rising_windows, 4);
    assert_eq!(a.detect.rising_min, 20);
    assert_eq!(a.detect.expiry_lead, Duration::from_secs(3 * 86400));
    assert_eq!(a.detect.max_age, Some(Duration::from_secs(90 * 86400)));

    let names: Vec<&str> = a.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["webhook-1", "ops-slack", "pagerduty-3", "smtp-4", "exec-5", "log-6"]
    );
    let w = &a.sinks[0];
    assert_eq!(
        (w.timeout, w.retries, w.backoff, w.queue),
        (Duration::from_secs(2), 2, Duration::from_millis(250), 50)
    );
    match &w.kind {
        SinkKind::Webhook { url, headers, .. } => {
            assert_eq!(url.expose(), format!("https://hooks.example.com/a?token={TOKEN}"));
            assert_eq!(headers[0].0, "Authorization");
            assert_eq!(headers[0].1.expose(), format!("Bearer {TOKEN}"));
        }
        other => panic!("{other:?}"),
    }
    let s = &a.sinks[1];
    assert_eq!(s.min_severity, Severity::Warning);
    assert_eq!(s.signals, [Signal::Spike, Signal::FallbackFailing]);
    match &a.sinks[2].kind {
        SinkKind::PagerDuty { url, routing_key, .. } => {
            assert_eq!(url.expose(), crate::config::alerts::PAGERDUTY_EVENTS_URL);
            assert_eq!(routing_key.expose(), TOKEN);
        }
        other => panic!("{other:?}"),
    }
    match &a.sinks[3].kind {
        SinkKind::Smtp {
            port,
            tls,
            password,
            to,
            ..
        } => {
            assert_eq!((*port, *tls), (587, SmtpTls::StartTls));
            assert_eq!(password.as_ref().unwrap().expose(), TOKEN);
            assert_eq!(to.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.sinks[5].kind, SinkKind::Log);

    // Per-key overrides.
    let billing: crate::secret::KeyRef = "prod/billing-api".parse().unwrap();
    let other: crate::secret::KeyRef = "prod/crm".parse().unwrap();
    assert_eq!(c.detect_for(&billing).spike_threshold, 10);
    assert_eq!(c.detect_for(&billing).max_age, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(c.detect_for(&billing).window, Duration::from_secs(120), "inherited");
    assert_eq!(c.detect_for(&other).spike_threshold, 3);

    assert_eq!(c.metrics_listen.as_ref().unwrap().to_string(), "127.0.0.1:9464");

    // No token in the Debug form of the whole config.
    let debug = format!("{c:?}");
    assert!(!debug.contains(TOKEN), "token in Debug output");
}

#[test]
fn defaults_without_an_alerts_table() {
    let c = parse("").unwrap();
    assert_eq!(c.alerts.sinks.len(), 1);
    assert_eq!(c.alerts.sinks[0].kind, SinkKind::Log);
    assert_eq!(c.alerts.detect, crate::config::alerts::DetectSettings::default());
    assert!(!c.alerts.agent_host.is_empty());
    assert_eq!(c.metrics_listen, None);
}

fn sink(body: &str) -> String {
    parse_err(&format!("[[alerts.sink]]\n{body}\n"))
}

#[test]
fn sink_mistakes_say_what_and_how() {
    assert_has(
        &sink(r#"kind = "teams""#),
        &["at keyward.toml:1", "not a sink kind", "\"webhook\""],
    );
    assert_has(
        &sink("kind = \"pagerduty\"\nrouting_key = \"k\"\nto = [\"a@b.c\"]"),
        &[
            "to in [[alerts.sink]]",
            "not a setting of a pagerduty sink",
            "routing_key",
        ],
    );
    assert_has(&sink(r#"kind = "webhook""#), &["needs url or url_file"]);
    assert_has(
        &sink("kind = \"slack\"\nurl = \"https://x\"\nurl_file = \"/x\""),
        &["both url and url_file", "keep one"],
    );
    assert_has(
        &sink("kind = \"webhook\"\nurl_file = \"/nonexistent/keyward-url\""),
        &["url_file /nonexistent/keyward-url", "cannot be read"],
    );
    assert_has(&sink("kind = \"exec\""), &["without a command"]);
    assert_has(
        &sink("kind = \"exec\"\ncommand = [\"page\"]"),
        &["not an absolute path"],
    );
    assert_has(
        &sink("kind = \"log\"\nmin_severity = \"loud\""),
        &["\"loud\"", "\"info\", \"warning\" or \"critical\""],
    );
    assert_has(
        &sink("kind = \"log\"\nsignals = [\"spikes\"]"),
        &["\"spikes\"", "stale_version"],
    );
    assert_has(&sink("kind = \"log\"\nqueue = 0"), &["queue", "is 0"]);
    assert_has(&sink("kind = \"log\"\ntimeout = \"0s\""), &["timeout", "zero"]);
    assert_has(&sink("kind = \"log\"\nname = \"a b\""), &["not a sink name"]);
    assert_has(
        &parse_err("[[alerts.sink]]\nkind = \"log\"\nname = \"x\"\n[[alerts.sink]]\nkind = \"log\"\nname = \"x\"\n"),
        &["keyward.toml:4", "named \"x\" like an earlier sink"],
    );
    assert_has(&sink("kind = \"log\"\nurgency = 1"), &["unknown field `urgency`"]);
}

#[test]
fn url_problems_never_quote_the_url() {
    for url in [
        format!("ftp://hooks.example.com/{TOKEN}"),
        format!("hooks.example.com/{TOKEN}"),
        format!("https://exa mple.com/{TOKEN}"),
    ] {
        let msg = sink(&format!("kind = \"webhook\"\nurl = \"{url}\""));
        assert_has(&msg, &["url in [[alerts.sink]]", "not quoted here"]);
        assert!(!msg.contains(TOKEN), "token quoted: {msg}");
    }
    let msg = sink(&format!(
        "kind = \"webhook\"\nurl = \"https://h/\"\nheaders = {{ \"Bad Name\" = \"{TOKEN}\" }}"
    ));
    assert_has(&msg, &["header \"Bad Name\"", "not a valid HTTP header"]);
    assert!(!msg.contains(TOKEN), "token quoted: {msg}");
}

#[test]
fn smtp_mistakes() {
    let base = "kind = \"smtp\"\nhost = \"smtp.example.com\"\nfrom = \"k@example.com\"";
    assert_has(&sink(base), &["sends to no one"]);
    assert_has(
        &sink(&format!("{base}\nto = [\"nobody\"]")),
        &["\"nobody\"", "not an email address"],
    );
    assert_has(
        &sink(&format!("{base}\nto = [\"a@example.com\"]\nusername = \"u\"")),
        &["username without a password"],
    );
    assert_has(
        &sink(&format!(
            "{base}\nto = [\"a@example.com\"]\ntls = \"none\"\nusername = \"u\"\npassword = \"{TOKEN}\""
        )),
        &["password without TLS"],
    );
    assert_has(
        &sink(&format!("{base}\nto = [\"a@example.com\"]\ntls = \"ssl\"")),
        &["\"ssl\"", "\"starttls\""],
    );
    assert_has(
        &sink("kind = \"smtp\"\nfrom = \"k@example.com\"\nto = [\"a@example.com\"]"),
        &["without host"],
    );
    let c = parse(&format!(
        "[[alerts.sink]]\n{base}\nto = [\"a@example.com\"]\ntls = \"tls\"\n"
    ))
    .unwrap();
    match &c.alerts.sinks[0].kind {
        SinkKind::Smtp { port, tls, .. } => assert_eq!((*port, *tls), (465, SmtpTls::Tls)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn detector_and_report_limit_mistakes() {
    assert_has(
        &parse_err("[alerts.detect]\nspike_threshold = 0\n"),
        &["spike_threshold in [alerts.detect]", "at least 1"],
    );
    assert_has(
        &parse_err("[alerts.detect]\nrising_windows = 1\n"),
        &["rising_windows", "at least 2"],
    );
    assert_has(&parse_err("[alerts.detect]\nwindow = \"0s\"\n"), &["window", "zero"]);
    assert_has(
        &parse_err("[alerts.detect]\nexpiry_lead = \"soon\"\n"),
        &["expiry_lead", "not a duration"],
    );
    assert_has(&parse_err("[alerts]\nreport_rate = 0\n"), &["report_rate", "is 0"]);
    assert_has(
        &parse_err("[alerts]\nrepeat_interval = \"0s\"\n"),
        &["repeat_interval", "zero"],
    );
    assert_has(
        &parse_err("[[key]]\nkeys = [\"prod/a\"]\nalerts = { spike_threshold = 0 }\n"),
        &["spike_threshold in [[key]] at keyward.toml:1"],
    );
}

#[test]
fn metrics_listen_is_loopback_or_unix() {
    assert!(parse("[metrics]\nlisten = \"[::1]:9464\"\n").is_ok());
    assert!(parse("[metrics]\nlisten = \"unix:/run/keyward/metrics.sock\"\n").is_ok());
    assert_has(
        &parse_err("[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
        &["keyward.toml:2", "[metrics] listen", "loopback"],
    );
    assert_has(&parse_err("[metrics]\nlisten = \"unix:metrics.sock\"\n"), &["relative"]);
}
