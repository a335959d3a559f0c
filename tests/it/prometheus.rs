//! The Grafana dashboard and the alerting rules against a real Prometheus
//! (Debian's `prometheus` package, installed by scripts/bootstrap): it
//! scrapes a real fleet agent through a scripted workload (fetches, a
//! rotation, failure and use reports, an alert), then every query of
//! `packaging/grafana/keyward-dashboard.json` is evaluated through
//! Prometheus's HTTP API and must return data; `promtool` checks the
//! exposition and `packaging/prometheus/keyward-rules.yml`, which the same
//! server loads and evaluates.

use crate::common;
use crate::fleet::{until_backend, Fleet};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is not installed: run scripts/bootstrap (it installs Debian's prometheus package)"
    );
    text(&found.stdout).trim().to_owned()
}

/// A Prometheus server scraping `target` every second, with the rules.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {ROOT}/packaging/prometheus/keyward-rules.yml\nscrape_configs:\n  - job_name: keyward\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { child, port };
        let start = Instant::now();
        while p.get("/-/ready").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(30), "Prometheus did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// GET `path` (with its query string): status and body.
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(status == 200 && v["status"] == "success", "{path}: {status} {body}");
        v["data"].clone()
    }

    fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels and every templating query.
fn dashboard_queries() -> (Vec<(String, String)>, Vec<String>) {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/packaging/grafana/keyward-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((panel["title"].as_str().unwrap_or("").to_owned(), e.to_owned()));
            }
        }
    }
    let vars = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["query"]["query"].as_str().or(v["query"].as_str()).map(str::to_owned))
        .collect();
    (exprs, vars)
}

/// A dashboard query as Grafana sends it with "All" selected.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$environment", ".*")
        .replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
}

#[tokio::test]
async fn the_dashboard_and_the_rules_work_against_a_real_prometheus() {
    let promtool = tool("promtool");
    let rules = Command::new(&promtool)
        .args([
            "check",
            "rules",
            &format!("{ROOT}/packaging/prometheus/keyward-rules.yml"),
        ])
        .output()
        .unwrap();
    assert!(rules.status.success(), "{}{}", text(&rules.stdout), text(&rules.stderr));

    let r = keyward_testkit::receiver::Receiver::start();
    let extra = format!(
        "\n[alerts.detect]\nspike_threshold = 2\n[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook")
    );
    let mut fleet = Fleet::prepare(1);
    let port = free_port();
    fleet.metrics_port = Some(port);
    fleet.launch(|_| extra.clone());
    until_backend(fleet.agent(0), "in sync", |b| !b.stale).await;
    let agent = fleet.agent(0);
    let tmp = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(tmp.path(), &format!("127.0.0.1:{port}"));
    // The workload starts once Prometheus has the counters at 0: an
    // increase is only seen from a first sample.
    let start = Instant::now();
    while prom.query("up{job=\"keyward\"} == 1")["result"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Prometheus never scraped the agent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The workload, spread over several scrapes.
    let expires = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(86400 * 3));
    let out = agent.cli(
        &["put", "prod/billing-api", "--expires", &expires.to_string()],
        Some(b"sk_prom_v1_7c1e"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for round in 0..4 {
        for _ in 0..20 {
            agent.fetch("prod", "billing-api").await.unwrap();
        }
        let _ = agent.fetch("prod", "missing").await;
        if round == 1 {
            agent.ok(
                &["stage", "prod/billing-api", "--expires", &expires.to_string()],
                Some(b"sk_prom_v2_7c1e"),
            );
            agent.ok(&["promote", "prod/billing-api"], None);
            agent.ok(&["retire", "--force", "prod/billing-api"], None);
            agent.fetch("prod", "billing-api").await.unwrap();
        }
        if round == 2 {
            for _ in 0..2 {
                agent.ok(
                    &["report", "prod/billing-api", "--version", "2", "--service", "prom-test"],
                    None,
                );
            }
            agent.ok(
                &[
                    "report",
                    "prod/billing-api",
                    "--version",
                    "2",
                    "--service",
                    "prom-test",
                    "--used",
                ],
                None,
            );
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The spike alert is open, and Prometheus has scraped it.
    let start = Instant::now();
    while prom.query("keyward_alerts_open{signal=\"spike\"} > 0")["result"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the spike alert never showed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // promtool accepts the exposition.
    let exposition = {
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, 200);
        body
    };
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    }
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );

    // Every panel's query and every template variable's query returns data.
    let (exprs, vars) = dashboard_queries();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let result = prom.query(&as_grafana_sends(expr));
        if result["result"].as_array().is_none_or(|a| a.is_empty()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
    for var in vars {
        let (metric, label) = var
            .strip_prefix("label_values(")
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.split_once(", "))
            .unwrap_or_else(|| panic!("unexpected variable query {var}"));
        let values = prom.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            encode(&as_grafana_sends(metric))
        ));
        assert!(values.as_array().is_some_and(|v| !v.is_empty()), "{var}: {values}");
    }

    // The rules are loaded and evaluate without error; the critical-alert
    // rule fires for the agent's open spike alert.
    let start = Instant::now();
    loop {
        let groups = prom.api("/api/v1/rules");
        let rules: Vec<&Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .collect();
        assert_eq!(rules.len(), 11, "{groups}");
        for rule in &rules {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
        let firing = |name: &str| rules.iter().any(|r| r["name"] == name && r["state"] == "firing");
        if firing("KeywardCriticalAlertOpen") && firing("KeywardKeyExpiresSoon") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "rules not firing: {groups}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(prom);
    drop(fleet);
}

/// GET `path` from the agent's metrics listener.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}
