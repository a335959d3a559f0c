//! Audit segments: GetKey latency while the agent rolls its audit log
//! against the same agent setup that never rolls, and `keyward audit
//! verify` speed over 1 GiB of segments.
//!
//! Run with `cargo bench --bench audit_segments` (`-- --quick` for a short
//! run, `-- --verify-only` / `-- --rolls-only` for one half). Two release
//! `keywardd` in dev mode, one with `[audit] segment_size = "64KiB"` (a
//! seal every ~150 fetches), one with the default 64 MiB (no seal during
//! the run); the rounds alternate between them so that machine noise hits
//! both. Latency is measured with one client on one connection and, as
//! p99 of every call, with 16 connections calling at once (where a seal by
//! one batch's leader would hold up the others).

use keyward_testkit::bench as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::audit::{self, AuditEvent, AuditOptions, Durability, Event, Outcome};
use keyward::proto;
use support::{client, start_agent, Proc};

const SECRET: &[u8] = b"sk_live_benchmark_0123456789abcdef0123456789";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    if !args.iter().any(|a| a == "--verify-only") {
        rt.block_on(rolls(quick));
    }
    if !args.iter().any(|a| a == "--rolls-only") {
        rt.block_on(verify_speed(quick));
    }
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}

fn bench_key() -> proto::KeyRef {
    proto::KeyRef {
        environment: "prod".into(),
        name: "bench-api".into(),
    }
}

/// A dev agent in `dir` with `toml` as its config, serving the bench key.
async fn agent(dir: &Path, toml: &str) -> Proc {
    let config = dir.with_extension("toml");
    std::fs::write(&config, toml).unwrap();
    let agent = start_agent(dir, &config);
    let admin = keyward_client::channel(&dir.join("admin.sock")).await.unwrap();
    proto::admin_client::AdminClient::new(admin)
        .put_key(proto::PutKeyRequest {
            key: Some(bench_key()),
            secret: bytes::Bytes::from_static(SECRET),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
}

/// Sorted latencies (µs) of `calls` GetKeys on each of `conns` connections.
async fn latencies(sock: &Path, conns: usize, calls: usize) -> Vec<f64> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut c = client(sock).await;
        tasks.push(tokio::spawn(async move {
            let req = || proto::GetKeyRequest { key: Some(bench_key()) };
            for _ in 0..200 {
                c.get_key(req()).await.unwrap();
            }
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                c.get_key(req()).await.unwrap();
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn rolls(quick: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (still_dir, roll_dir) = (tmp.path().join("still"), tmp.path().join("rolling"));
    let _still = agent(&still_dir, "").await;
    let _rolling = agent(&roll_dir, "[audit]\nsegment_size = \"64KiB\"\n").await;
    let (calls, rounds) = if quick { (3_000, 1) } else { (15_000, 3) };
    let calls16 = calls / 8;
    println!(
        "\nGetKey latency, agent rolling its audit log every 64 KiB vs never (64 MiB); {rounds} alternating rounds"
    );
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>10} {:>12} {:>12} {:>9}",
        "agent", "round", "p50 µs", "p99 µs", "p99.9 µs", "16c p50 µs", "16c p99 µs", "segments"
    );
    let mut p99 = [Vec::new(), Vec::new()];
    let mut p99_16 = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, (name, dir)) in [("no roll", &still_dir), ("rolling", &roll_dir)]
            .into_iter()
            .enumerate()
        {
            let sock = dir.join("keys.sock");
            let one = latencies(&sock, 1, calls).await;
            let many = latencies(&sock, 16, calls16).await;
            let segments = audit::segments::list_segments(&dir.join("audit.jsonl")).unwrap().len();
            println!(
                "{name:<8} {round:>6} {:>9.1} {:>9.1} {:>10.1} {:>12.1} {:>12.1} {segments:>9}",
                pct(&one, 0.5),
                pct(&one, 0.99),
                pct(&one, 0.999),
                pct(&many, 0.5),
                pct(&many, 0.99)
            );
            p99[i].push(pct(&one, 0.99));
            p99_16[i].push(pct(&many, 0.99));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (a, b) = (med(&mut p99[0]), med(&mut p99[1]));
    let (c, d) = (med(&mut p99_16[0]), med(&mut p99_16[1]));
    println!(
        "median p99, 1 connection: {a:.1} µs without rolls, {b:.1} µs rolling: {:.2}x (target <= 2x)",
        b / a
    );
    println!(
        "median p99, 16 connections: {c:.1} µs without rolls, {d:.1} µs rolling: {:.2}x (target <= 2x)",
        d / c
    );
}

/// A fetch record as the agent writes one.
fn fetch(i: u64) -> AuditEvent {
    AuditEvent {
        caller: Some(Arc::new(audit::CallerRecord {
            uid: 1001,
            gid: 1001,
            pid: 4242,
            exe: Some("/usr/bin/billing".into()),
            unit: Some("billing.service".into()),
        })),
        key: Some("prod/billing-api".into()),
        versions: vec![audit::VersionRecord {
            role: "primary",
            version: 3,
            fingerprint: "9f86d081884c7d65".into(),
        }],
        generation_after: Some(i),
        ..AuditEvent::new(Event::Fetch, Outcome::Ok)
    }
}

/// Writes about `bytes` of records in 64 MiB segments, then times
/// `keyward audit verify` on them.
async fn verify_speed(quick: bool) {
    let bytes: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let tmp = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    let path: PathBuf = tmp.path().join("audit.jsonl");
    let audit = audit::Audit::start(AuditOptions {
        path: path.clone(),
        key,
        durability: Durability::Write,
        fsync_interval: Duration::from_secs(1),
        max_batch: 256,
        segment_size: 64 << 20,
        segment_age: None,
    })
    .unwrap();
    let t = Instant::now();
    let mut i = 0;
    // Concurrent writers, so the writer batches as under load.
    loop {
        let futs: Vec<_> = (0..256).map(|k| audit.record(fetch(i + k))).collect();
        for f in futs {
            f.await.unwrap();
        }
        i += 256;
        if i % (256 * 64) == 0 {
            let on_disk: u64 = std::fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            if on_disk >= bytes {
                break;
            }
        }
    }
    audit.close().await;
    let segments = audit::segments::list_segments(&path).unwrap().len();
    println!(
        "\nwrote {i} records in {segments} sealed segments + the live file in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // What `keyward audit verify PATH` runs (the CLI adds loading the
    // install key and printing the report).
    let t = Instant::now();
    let report = audit::verify(&path, &key).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(report.is_ok(), "{report}");
    let size: u64 = report.files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    println!(
        "verify: {} records, {} files, {:.0} MiB in {secs:.1} s: {:.0} records/s, {:.0} MiB/s",
        report.records_checked,
        report.files.len(),
        size as f64 / (1 << 20) as f64,
        report.records_checked as f64 / secs,
        size as f64 / (1 << 20) as f64 / secs
    );
}
