//! [`Metrics::render`] read back by a small parser of the text format, so
//! that every test also checks the exposition is well formed: each sample
//! belongs to a family with HELP and TYPE given before it, a family's lines
//! are contiguous, and no series appears twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::alerts::{Severity, SinkStats};

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{self:#?}"))
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// The family a sample line belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    name
}

fn parse(text: &str) -> Exposition {
    let mut exp = Exposition::default();
    let mut current: Option<String> = None;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
    let mut enter = |family: &str, current: &mut Option<String>| {
        if current.as_deref() != Some(family) {
            assert!(
                finished.insert(family.to_owned()),
                "family {family} is not contiguous:\n{text}"
            );
            *current = Some(family.to_owned());
        }
    };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("bad HELP: {line}"));
            enter(name, &mut current);
            assert!(!help.is_empty(), "empty HELP: {line}");
            assert!(
                exp.help.insert(name.to_owned(), help.to_owned()).is_none(),
                "HELP twice: {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE: {line}"));
            enter(name, &mut current);
            assert!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "unexpected type: {line}"
            );
            assert!(
                exp.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line: {line:?}");
            let sample = parse_sample(line);
            let family = family_of(&sample.name, &exp.types).to_owned();
            assert!(exp.help.contains_key(&family), "no HELP before {line}");
            assert!(exp.types.contains_key(&family), "no TYPE before {line}");
            enter(&family, &mut current);
            assert!(
                seen.insert((sample.name.clone(), sample.labels.clone())),
                "series twice: {line}"
            );
            exp.samples.push(sample);
        }
    }
    exp
}

/// `name{k="v",...} value` or `name value`, with `\\`, `\"` and `\n`
/// escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("bad sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name: {line}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            let mut key = String::new();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, '}')) if key.is_empty() => bad(),
                    Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    _ => bad(),
                }
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => bad(),
                    },
                    Some((_, '\n')) | None => bad(),
                    Some((_, c)) => value.push(c),
                }
            }
            assert!(labels.insert(key, value).is_none(), "label twice: {line}");
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                _ => bad(),
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| bad());
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn key(environment: &str, key: &str, age: f64, expires: Option<f64>, generation: u64) -> KeyGauges {
    KeyGauges {
        environment: environment.to_owned(),
        key: key.to_owned(),
        age_seconds: age,
        expires_in_seconds: expires,
        generation,
        job_step: 0,
    }
}

fn sink(name: &str, kind: &'static str, [delivered, failed, dropped, retries, queued]: [u64; 5]) -> SinkStats {
    SinkStats {
        name: name.to_owned(),
        kind,
        delivered,
        failed,
        dropped,
        retries,
        queued,
    }
}

#[test]
fn counters_show_exactly_what_was_recorded() {
    let m = Metrics::new();
    m.fetch("prod", "billing-api", "ok");
    m.fetch("prod", "billing-api", "ok");
    m.fetch("prod", "billing-api", "denied");
    m.fetch("prod", "", "not_found");
    m.fetch("dev", "billing-api", "ok");
    m.denial("service", "get_key");
    m.denial("service", "get_key");
    m.denial("admin", "auth_failure");
    m.report("prod", "billing-api", "stale");
    m.report_dropped(1001);
    m.report_dropped(1001);
    m.report_dropped(0);
    m.alert(Signal::Spike, AlertStatus::Firing);
    m.alert(Signal::Spike, AlertStatus::Firing);
    m.alert(Signal::StaleVersion, AlertStatus::Resolved);
    m.rotation("promote", "ok");
    m.rotation("retire", "refused");
    m.rotation("retire", "refused");
    m.audit_failure();

    let exp = parse(&m.render(&Snapshot::default()));
    let fetches = "keyward_fetches_total";
    assert_eq!(exp.types[fetches], "counter");
    assert_eq!(
        exp.get(
            fetches,
            &[("environment", "prod"), ("key", "billing-api"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        exp.get(
            fetches,
            &[("environment", "prod"), ("key", "billing-api"), ("outcome", "denied")]
        ),
        1.0
    );
    assert_eq!(
        exp.get(
            fetches,
            &[("environment", "prod"), ("key", ""), ("outcome", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        exp.get(
            fetches,
            &[("environment", "dev"), ("key", "billing-api"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(exp.series(fetches).len(), 4, "no series but the ones counted");

    let denials = "keyward_denials_total";
    assert_eq!(exp.get(denials, &[("socket", "service"), ("event", "get_key")]), 2.0);
    assert_eq!(exp.get(denials, &[("socket", "admin"), ("event", "auth_failure")]), 1.0);
    // Plus the two exposed at 0 from the start.
    assert_eq!(exp.series(denials).len(), 4);
    assert_eq!(exp.get(denials, &[("socket", "service"), ("event", "fetch")]), 0.0);

    let reports = "keyward_auth_failure_reports_total";
    assert_eq!(
        exp.get(
            reports,
            &[("environment", "prod"), ("key", "billing-api"), ("class", "stale")]
        ),
        1.0
    );
    assert_eq!(exp.series(reports).len(), 1);

    let dropped = "keyward_auth_failure_reports_dropped_total";
    assert_eq!(exp.get(dropped, &[("uid", "1001")]), 2.0);
    assert_eq!(exp.get(dropped, &[("uid", "0")]), 1.0);

    let alerts = "keyward_alert_notifications_total";
    assert_eq!(exp.get(alerts, &[("signal", "spike"), ("status", "firing")]), 2.0);
    assert_eq!(
        exp.get(alerts, &[("signal", "stale_version"), ("status", "resolved")]),
        1.0
    );
    assert_eq!(exp.get(alerts, &[("signal", "spike"), ("status", "repeat")]), 0.0);

    let rotations = "keyward_rotation_steps_total";
    assert_eq!(exp.get(rotations, &[("step", "promote"), ("result", "ok")]), 1.0);
    assert_eq!(exp.get(rotations, &[("step", "retire"), ("result", "refused")]), 2.0);
    assert_eq!(exp.get(rotations, &[("step", "stage"), ("result", "failed")]), 0.0);

    assert_eq!(exp.get("keyward_audit_write_failures_total", &[]), 1.0);
}

#[test]
fn alert_and_rotation_counters_exist_at_zero_from_the_start() {
    let exp = parse(&Metrics::new().render(&Snapshot::default()));
    let alerts = exp.series("keyward_alert_notifications_total");
    assert_eq!(alerts.len(), Signal::ALL.len() * 3);
    assert!(alerts.iter().all(|s| s.value == 0.0));
    for signal in Signal::ALL {
        for status in ["firing", "repeat", "resolved"] {
            exp.get(
                "keyward_alert_notifications_total",
                &[("signal", signal.as_str()), ("status", status)],
            );
        }
    }
    let rotations = exp.series("keyward_rotation_steps_total");
    assert_eq!(rotations.len(), ROTATION_STEPS.len() * ROTATION_RESULTS.len());
    assert!(rotations.iter().all(|s| s.value == 0.0));
    let jobs = exp.series("keyward_rotations_total");
    assert_eq!(jobs.len(), 4 * 2, "result × trigger");
    assert!(jobs.iter().all(|s| s.value == 0.0));
    // Families without samples are left out, HELP and TYPE included.
    assert!(!exp.types.contains_key("keyward_fetches_total"));
    let denials = exp.series("keyward_denials_total");
    assert_eq!(denials.len(), 2, "service/fetch and admin/admin, at 0");
    assert!(denials.iter().all(|s| s.value == 0.0));
    assert!(!exp.types.contains_key("keyward_key_age_seconds"));
    assert_eq!(exp.get("keyward_audit_write_failures_total", &[]), 0.0);
}

#[test]
fn audit_latency_histogram_is_cumulative_and_counts_every_observation() {
    let m = Metrics::new();
    let observed = [
        Duration::from_micros(5),
        Duration::from_micros(15),
        Duration::from_micros(15),
        Duration::from_millis(3),
        Duration::from_millis(900),
        Duration::from_secs(2),
    ];
    for latency in observed {
        m.audit_write(latency);
    }
    let exp = parse(&m.render(&Snapshot::default()));
    let name = "keyward_audit_write_seconds";
    assert_eq!(exp.types[name], "histogram");
    let mut buckets: Vec<(f64, f64)> = exp
        .series(&format!("{name}_bucket"))
        .iter()
        .map(|s| (s.labels["le"].parse::<f64>().expect("le is a number"), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(
        (buckets[0].0 - 0.000_01).abs() < 1e-12,
        "the first bucket is 10 µs: {buckets:?}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    let (last_le, last) = *buckets.last().unwrap();
    assert_eq!(last_le, f64::INFINITY);
    assert_eq!(last, observed.len() as f64);
    assert_eq!(exp.get(&format!("{name}_count"), &[]), observed.len() as f64);
    let sum: f64 = observed.iter().map(Duration::as_secs_f64).sum();
    assert!((exp.get(&format!("{name}_sum"), &[]) - sum).abs() < 1e-9);

    let at = |le: f64| buckets.iter().find(|b| b.0 >= le).unwrap().1;
    assert_eq!(at(0.000_01), 1.0, "5 µs");
    assert_eq!(at(0.000_02), 3.0, "and the two at 15 µs");
    assert_eq!(at(0.005), 4.0, "and 3 ms");
    assert_eq!(at(1.0), 5.0, "and 900 ms; 2 s only in +Inf");
}

#[test]
fn snapshot_gauges_are_exactly_the_snapshot() {
    let m = Metrics::new();
    let mut snapshot = Snapshot {
        watchers: 3,
        connections: 7,
        open_alerts: vec![
            (Signal::Spike, Severity::Critical, 1),
            (Signal::ExpiryAhead, Severity::Warning, 2),
            (Signal::Spike, Severity::Critical, 1),
        ],
        keys: vec![
            key("prod", "billing-api", 3600.5, Some(-120.0), 9),
            key("prod", "crm", 60.0, None, 2),
        ],
        sinks: vec![
            sink("pagerduty-1", "pagerduty", [5, 1, 2, 4, 3]),
            sink("ops-log", "log", [8, 0, 0, 0, 0]),
        ],
        backend: None,
        audit_disk_free_bytes: None,
    };
    let exp = parse(&m.render(&snapshot));
    assert_eq!(exp.get("keyward_watchers", &[]), 3.0);
    assert_eq!(exp.get("keyward_connections", &[]), 7.0);

    assert_eq!(exp.types["keyward_alerts_open"], "gauge");
    assert_eq!(
        exp.get("keyward_alerts_open", &[("signal", "spike"), ("severity", "critical")]),
        2.0,
        "duplicate pairs are summed"
    );
    assert_eq!(
        exp.get(
            "keyward_alerts_open",
            &[("signal", "expiry_ahead"), ("severity", "warning")]
        ),
        2.0
    );
    assert_eq!(exp.series("keyward_alerts_open").len(), 2);

    let billing = [("environment", "prod"), ("key", "billing-api")];
    let crm = [("environment", "prod"), ("key", "crm")];
    assert_eq!(exp.get("keyward_key_age_seconds", &billing), 3600.5);
    assert_eq!(exp.get("keyward_key_age_seconds", &crm), 60.0);
    assert_eq!(exp.get("keyward_key_expires_in_seconds", &billing), -120.0);
    assert_eq!(
        exp.value("keyward_key_expires_in_seconds", &crm),
        None,
        "no expiry, no sample"
    );
    assert_eq!(exp.get("keyward_key_generation", &billing), 9.0);
    assert_eq!(exp.get("keyward_key_generation", &crm), 2.0);

    let deliveries = "keyward_alert_deliveries_total";
    assert_eq!(exp.types[deliveries], "counter");
    let pd = |result| [("sink", "pagerduty-1"), ("kind", "pagerduty"), ("result", result)];
    assert_eq!(exp.get(deliveries, &pd("delivered")), 5.0);
    assert_eq!(exp.get(deliveries, &pd("failed")), 1.0);
    assert_eq!(exp.get(deliveries, &pd("dropped")), 2.0);
    assert_eq!(
        exp.get(
            deliveries,
            &[("sink", "ops-log"), ("kind", "log"), ("result", "delivered")]
        ),
        8.0
    );
    assert_eq!(exp.types["keyward_alert_delivery_retries_total"], "counter");
    assert_eq!(
        exp.get(
            "keyward_alert_delivery_retries_total",
            &[("sink", "pagerduty-1"), ("kind", "pagerduty")]
        ),
        4.0
    );
    assert_eq!(exp.types["keyward_alert_queue"], "gauge");
    assert_eq!(
        exp.get("keyward_alert_queue", &[("sink", "pagerduty-1"), ("kind", "pagerduty")]),
        3.0
    );

    // The key billing-api is deleted, its alert resolved, a sink removed.
    snapshot.keys.retain(|k| k.key != "billing-api");
    snapshot.open_alerts.retain(|a| a.0 != Signal::Spike);
    snapshot.sinks.truncate(1);
    snapshot.watchers = 0;
    let exp = parse(&m.render(&snapshot));
    for name in [
        "keyward_key_age_seconds",
        "keyward_key_expires_in_seconds",
        "keyward_key_generation",
    ] {
        assert_eq!(exp.value(name, &billing), None, "{name} of a deleted key");
    }
    assert_eq!(exp.get("keyward_key_generation", &crm), 2.0);
    assert!(
        !exp.types.contains_key("keyward_key_expires_in_seconds"),
        "no key with an expiry left"
    );
    assert_eq!(exp.series("keyward_alerts_open").len(), 1);
    assert_eq!(exp.series("keyward_alert_queue").len(), 1);
    assert_eq!(exp.series("keyward_alert_deliveries_total").len(), 3);
    assert_eq!(exp.get("keyward_watchers", &[]), 0.0);
}

#[test]
fn a_key_listed_twice_is_exposed_once() {
    let snapshot = Snapshot {
        keys: vec![key("prod", "a", 1.0, None, 1), key("prod", "a", 2.0, None, 2)],
        sinks: vec![sink("s", "log", [1, 0, 0, 0, 0]), sink("s", "log", [2, 0, 0, 0, 0])],
        ..Snapshot::default()
    };
    // parse() fails on a series exposed twice.
    let exp = parse(&Metrics::new().render(&snapshot));
    assert_eq!(
        exp.get("keyward_key_generation", &[("environment", "prod"), ("key", "a")]),
        2.0
    );
    assert_eq!(
        exp.get(
            "keyward_alert_deliveries_total",
            &[("sink", "s"), ("kind", "log"), ("result", "delivered")]
        ),
        2.0
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    let odd = "we\"ird\\env\nx";
    m.fetch(odd, "k", "ok");
    let snapshot = Snapshot {
        keys: vec![key("prod", "a\"b\\c", 1.0, None, 1)],
        sinks: vec![sink("say \"hi\"", "webhook", [1, 0, 0, 0, 0])],
        ..Snapshot::default()
    };
    let text = m.render(&snapshot);
    assert!(text.contains(r#"environment="we\"ird\\env\nx""#), "{text}");
    assert!(text.contains(r#"key="a\"b\\c""#), "{text}");
    assert!(text.contains(r#"sink="say \"hi\"""#), "{text}");
    let exp = parse(&text);
    assert_eq!(
        exp.get(
            "keyward_fetches_total",
            &[("environment", odd), ("key", "k"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        exp.get("keyward_key_generation", &[("environment", "prod"), ("key", "a\"b\\c")]),
        1.0
    );
}

#[test]
fn every_documented_metric_is_exposed_with_help_and_type() {
    let m = Metrics::new();
    m.fetch("prod", "a", "ok");
    m.denial("service", "get_key");
    m.report("prod", "a", "primary");
    m.key_use("prod", "a", "primary");
    m.report_dropped(1000);
    m.audit_write(Duration::from_micros(50));
    let snapshot = Snapshot {
        watchers: 1,
        connections: 1,
        open_alerts: vec![(Signal::AgentHealth, Severity::Critical, 1)],
        keys: vec![key("prod", "a", 1.0, Some(10.0), 1)],
        sinks: vec![sink("log", "log", [0; 5])],
        backend: Some(crate::metrics::BackendGauges {
            up: false,
            last_sync_timestamp_seconds: Some(1_800_000_000.0),
            stale_seconds: 42.0,
            stale: true,
            problems: 1,
        }),
        audit_disk_free_bytes: Some(1 << 30),
    };
    let exp = parse(&m.render(&snapshot));
    let want = [
        ("keyward_fetches_total", "counter"),
        ("keyward_denials_total", "counter"),
        ("keyward_auth_failure_reports_total", "counter"),
        ("keyward_auth_failure_reports_dropped_total", "counter"),
        ("keyward_key_use_reports_total", "counter"),
        ("keyward_alert_notifications_total", "counter"),
        ("keyward_alerts_open", "gauge"),
        ("keyward_alert_deliveries_total", "counter"),
        ("keyward_alert_delivery_retries_total", "counter"),
        ("keyward_alert_queue", "gauge"),
        ("keyward_rotation_steps_total", "counter"),
        ("keyward_rotations_total", "counter"),
        ("keyward_watchers", "gauge"),
        ("keyward_connections", "gauge"),
        ("keyward_audit_write_seconds", "histogram"),
        ("keyward_audit_write_failures_total", "counter"),
        ("keyward_key_age_seconds", "gauge"),
        ("keyward_key_expires_in_seconds", "gauge"),
        ("keyward_key_generation", "gauge"),
        ("keyward_rotation_job_step", "gauge"),
        ("keyward_agent_start_time_seconds", "gauge"),
        ("keyward_build_info", "gauge"),
        ("keyward_backend_up", "gauge"),
        ("keyward_backend_last_sync_timestamp_seconds", "gauge"),
        ("keyward_backend_stale_seconds", "gauge"),
        ("keyward_backend_stale", "gauge"),
        ("keyward_backend_problems", "gauge"),
        ("keyward_audit_disk_free_bytes", "gauge"),
    ];
    let got: BTreeMap<&str, &str> = exp.types.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want.into_iter().collect::<BTreeMap<_, _>>());
    for (name, _) in want {
        assert!(exp.help.contains_key(name), "{name} has HELP");
    }

    assert_eq!(
        exp.get("keyward_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    let started = exp.get("keyward_agent_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > 1.6e9 && started <= now, "{started}");
    assert_eq!(exp.get("keyward_backend_up", &[]), 0.0);
    assert_eq!(exp.get("keyward_backend_stale", &[]), 1.0);
    assert_eq!(exp.get("keyward_backend_stale_seconds", &[]), 42.0);
    assert_eq!(exp.get("keyward_backend_problems", &[]), 1.0);
    assert_eq!(exp.get("keyward_audit_disk_free_bytes", &[]), f64::from(1u32 << 30));
}

#[test]
fn the_parser_catches_malformed_expositions() {
    let bad = [
        "keyward_x 1\n",                                                                    // no HELP/TYPE
        "# HELP keyward_x x\n# TYPE keyward_x gauge\nkeyward_x 1\nkeyward_x 2\n",           // twice
        "# HELP keyward_x x\n# TYPE keyward_x gauge\nkeyward_x{a=\"b\\q\"} 1\n",            // bad escape
        "# HELP a a\n# TYPE a gauge\na 1\n# HELP b b\n# TYPE b gauge\nb 1\na{x=\"1\"} 1\n", // split family
    ];
    for text in bad {
        let text = text.to_owned();
        assert!(std::panic::catch_unwind(|| parse(&text)).is_err(), "accepted: {text}");
    }
}
