//! Alerting benchmark, two figures in one run:
//!
//! 1. Spike to webhook: the time from the first auth-failure report of a
//!    spike (default thresholds: 5 reports against the primary within 60 s)
//!    to the webhook receiver on loopback getting the alert, over 20 keys.
//!    The reports are sent back to back on one connection, as a client
//!    whose every call now fails would send them. The receiver is polled
//!    every 200 µs, which bounds the measurement's resolution.
//! 2. GetKey throughput (16 connections) while 1,000 failure reports per
//!    second arrive on another connection, against GetKey throughput with
//!    none, alternating rounds on the same agent. Once with the default
//!    per-uid report limit (20/s, burst 100: most of the flood is refused
//!    and counted) and once with the limit raised above the flood (every
//!    report is checked, audited and fed to the detectors).
//!
//! Run with `cargo bench --bench alerts` (`-- --quick` for short rounds; 5 rounds of 4 s each otherwise).
//! The agent is the release `keywardd` in dev mode in a temp dir, with a
//! webhook sink pointing at the receiver.

use keyward_testkit::bench as support;
use keyward_testkit::receiver;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::proto;
use receiver::Receiver;
use support::{client, throughput, Proc};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        spike_to_webhook().await;
        for raised in [false, true] {
            throughput_under_reports(quick, raised).await;
        }
    });
}

struct Agent {
    _proc: Proc,
    dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn start_with_webhook(extra: &str, receiver: &Receiver) -> Agent {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let config = tmp.path().join("keyward.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
            receiver.url("/webhook")
        ),
    )
    .unwrap();
    let proc = support::start_agent(&dir, &config);
    Agent {
        _proc: proc,
        dir,
        _tmp: tmp,
    }
}

fn key(name: &str) -> proto::KeyRef {
    proto::KeyRef {
        environment: "prod".into(),
        name: name.into(),
    }
}

async fn put(agent: &Agent, name: &str) {
    let mut admin =
        proto::admin_client::AdminClient::new(keyward_client::channel(&agent.dir.join("admin.sock")).await.unwrap());
    admin
        .put_key(proto::PutKeyRequest {
            key: Some(key(name)),
            secret: bytes::Bytes::from_static(b"sk_live_bench_alerts_0123456789"),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn report(name: &str) -> proto::AuthFailureReport {
    proto::AuthFailureReport {
        key: Some(key(name)),
        version: 1,
        status_code: 401,
        service: "bench".into(),
        detail: String::new(),
        misdirected_to: String::new(),
    }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn spike_to_webhook() {
    let receiver = Receiver::start();
    let agent = start_with_webhook("", &receiver);
    let trials = 20;
    for i in 0..trials {
        put(&agent, &format!("spike-{i}")).await;
    }
    let mut keys = client(&agent.dir.join("keys.sock")).await;
    let mut samples = Vec::new();
    for i in 0..trials {
        let name = format!("spike-{i}");
        let t0 = Instant::now();
        for _ in 0..5 {
            keys.report_auth_failure(report(&name)).await.unwrap();
        }
        let sent = t0.elapsed();
        loop {
            if receiver
                .received()
                .iter()
                .any(|r| r.body["key"] == format!("prod/{name}") && r.body["signal"] == "spike")
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no alert for {name}");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let total = t0.elapsed();
        samples.push((total.as_secs_f64() * 1e3, sent.as_secs_f64() * 1e3));
    }
    let mut totals: Vec<f64> = samples.iter().map(|s| s.0).collect();
    totals.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut sends: Vec<f64> = samples.iter().map(|s| s.1).collect();
    sends.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("spike to webhook ({trials} keys, 5 reports each, default thresholds):");
    println!(
        "  first report to alert received: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms (target < 1000 ms)",
        percentile(&totals, 50),
        percentile(&totals, 90),
        totals[totals.len() - 1]
    );
    println!("  of which sending the 5 reports: p50 {:.2} ms", percentile(&sends, 50));
}

/// Sends `rate` reports per second until `stop`; counts accepted and refused.
async fn flood(
    sock: std::path::PathBuf,
    rate: u64,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let mut c = client(&sock).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match c.report_auth_failure(report("noisy")).await {
            Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => refused.fetch_add(1, Ordering::Relaxed),
            Err(s) => panic!("report failed: {s}"),
        };
    }
}

async fn throughput_under_reports(quick: bool, raised: bool) {
    let receiver = Receiver::start();
    let extra = if raised {
        "[alerts]\nreport_rate = 5000\nreport_burst = 5000\n"
    } else {
        ""
    };
    let agent = start_with_webhook(extra, &receiver);
    put(&agent, "hot").await;
    put(&agent, "noisy").await;
    let sock = agent.dir.join("keys.sock");
    let (rounds, secs) = if quick { (2, 2) } else { (5, 4) };
    let mut quiet = Vec::new();
    let mut loaded = Vec::new();
    for round in 0..rounds {
        let q = throughput(&sock, key("hot"), 16, Duration::from_secs(secs)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, refd) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let t = Instant::now();
        let f = tokio::spawn(flood(sock.clone(), 1000, stop.clone(), acc.clone(), refd.clone()));
        let l = throughput(&sock, key("hot"), 16, Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        f.await.unwrap();
        let elapsed = t.elapsed().as_secs_f64();
        let (a, r) = (acc.load(Ordering::Relaxed), refd.load(Ordering::Relaxed));
        println!(
            "  round {round}: quiet {q:.0} calls/s, with reports {l:.0} calls/s ({:.2}x); reports {:.0}/s ({:.0}/s accepted, {:.0}/s refused)",
            l / q,
            (a + r) as f64 / elapsed,
            a as f64 / elapsed,
            r as f64 / elapsed
        );
        quiet.push(q);
        loaded.push(l);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut ratios: Vec<f64> = quiet.iter().zip(&loaded).map(|(q, l)| l / q).collect();
    let (q, l, ratio) = (med(&mut quiet), med(&mut loaded), med(&mut ratios));
    println!(
        "GetKey throughput, {} report limit: medians {q:.0} calls/s quiet, {l:.0} calls/s under ~1,000 reports/s ({:.2}x); median of the rounds' ratios {ratio:.2}x (target >= 0.9x)",
        if raised { "raised (5000/s)" } else { "default (20/s per uid)" },
        l / q
    );
    let audit = std::fs::read_to_string(agent.dir.join("audit.jsonl")).unwrap_or_default();
    let reported = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"auth_failure\""))
        .count();
    println!("  auth_failure records in the audit log: {reported}");
}
