//! The soak: GetKey and WatchKeys under steady load while the key rotates
//! (stage, promote, retire) every few seconds. The agent's RSS and open file
//! descriptors must stay flat and GetKey's p99 must not run away; every
//! fetch succeeds and every watcher ends on the last generation.
//!
//! One minute in the suite; `scripts/soak` runs the long version
//! (`KEYWARD_SOAK_SECS=600`, release build). Prints one figure line:
//! `soak: secs=… rotations=… fetches=… errors=0 rss_mib start=… end=…
//! fds start=… end=… p99_ms=[…]`.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keyward::proto;
use tokio_stream::StreamExt;

const FETCHERS: usize = 4;
/// Each fetcher's pace: one GetKey every 2 ms (about 2,000/s in all).
const FETCH_EVERY: Duration = Duration::from_millis(2);
const WATCHERS: usize = 100;
/// Watch streams share connections (HTTP/2 streams), as a process's
/// clients would: the agent allows 64 connections per uid.
const WATCH_CONNECTIONS: usize = 10;
const ROTATE_EVERY: Duration = Duration::from_secs(3);
/// The first window is warm-up: the start figures are taken after it.
const WINDOW: Duration = Duration::from_secs(10);

fn p99(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_fds_and_latency_stay_flat_under_load_and_rotations() {
    let secs: u64 = param("KEYWARD_SOAK_SECS", 60);
    assert!(secs >= 2 * WINDOW.as_secs(), "KEYWARD_SOAK_SECS must be at least 20");
    let agent = TestAgent::start_with_config("[rotation]\ngrace = \"0s\"\n");
    agent.put("prod/soak", "sk_soak_initial_0");
    let pid = agent.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let fetches = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let windows = (secs / WINDOW.as_secs()) as usize;
    // Latencies in µs, per window.
    let latencies: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); windows + 1]));

    let mut tasks = Vec::new();
    for _ in 0..FETCHERS {
        let mut keys = agent.keys().await;
        let (stop, errors, fetches, latencies) = (stop.clone(), errors.clone(), fetches.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(FETCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                let r = keys
                    .get_key(proto::GetKeyRequest {
                        key: key("prod", "soak"),
                    })
                    .await;
                let us = t.elapsed().as_micros() as u64;
                match r {
                    Ok(_) => {
                        fetches.fetch_add(1, Ordering::Relaxed);
                        let w = (start.elapsed().as_secs() / WINDOW.as_secs()) as usize;
                        if let Some(v) = latencies.lock().unwrap().get_mut(w) {
                            v.push(us);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Watchers: each remembers the last generation it was sent.
    let last_generation: Arc<Vec<AtomicU64>> = Arc::new((0..WATCHERS).map(|_| AtomicU64::new(0)).collect());
    let mut watch_tasks = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..WATCH_CONNECTIONS {
        connections.push(agent.keys().await);
    }
    for i in 0..WATCHERS {
        let mut keys = connections[i % WATCH_CONNECTIONS].clone();
        let mut stream = keys
            .watch_keys(proto::WatchKeysRequest {
                keys: vec![key("prod", "soak").unwrap()],
            })
            .await
            .unwrap()
            .into_inner();
        let last = last_generation.clone();
        watch_tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                if let Some(g) = ev.key_set.map(|k| k.generation) {
                    last[i].store(g, Ordering::Relaxed);
                }
            }
        }));
    }

    // Rotations every few seconds; figures once per window.
    let mut admin = agent.admin().await;
    let mut rotations = 0u64;
    let mut rotation_ms = Vec::new();
    let mut samples = Vec::new(); // (rss KiB, fds) at the end of each window
    let mut next_sample = start + WINDOW;
    let end = start + Duration::from_secs(secs);
    let mut next_rotation = start + ROTATE_EVERY;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            samples.push((rss_kib(pid), open_fds(pid)));
            next_sample += WINDOW;
        }
        if now >= next_rotation {
            let t = Instant::now();
            rotations += 1;
            let k = || key("prod", "soak");
            let secret = format!("sk_soak_rotated_{rotations}");
            keep_for_leak_scan("secrets", secret.as_bytes());
            admin
                .stage_key(proto::StageKeyRequest {
                    key: k(),
                    secret: secret.into_bytes().into(),
                    ..Default::default()
                })
                .await
                .expect("stage");
            admin
                .promote_key(proto::RotationRequest {
                    key: k(),
                    ..Default::default()
                })
                .await
                .expect("promote");
            admin
                .retire_key(proto::RetireKeyRequest {
                    key: k(),
                    // No client here reports use: what is measured is the
                    // agent under rotations, not the evidence gate.
                    force: true,
                    ..Default::default()
                })
                .await
                .expect("retire");
            rotation_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            next_rotation += ROTATE_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss_end, fds_end) = (rss_kib(pid), open_fds(pid));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Every watcher converges on the last generation.
    let final_generation = agent.fetch("prod", "soak").await.unwrap().generation;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let behind = last_generation
            .iter()
            .filter(|g| g.load(Ordering::Relaxed) != final_generation)
            .count();
        if behind == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{behind} of {WATCHERS} watchers did not reach generation {final_generation}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in &watch_tasks {
        t.abort();
    }

    let p99s: Vec<f64> = latencies.lock().unwrap()[..windows]
        .iter()
        .map(|v| p99(v.clone()))
        .collect();
    let (rss_start, fds_start) = samples[0];
    let mib = |kib: u64| kib as f64 / 1024.0;
    rotation_ms.sort_by(f64::total_cmp);
    eprintln!(
        "soak: secs={secs} rotations={rotations} rotation_ms_p50={:.1} fetches={} errors={} watchers={WATCHERS} rss_mib start={:.1} end={:.1} fds start={fds_start} end={fds_end} p99_ms={:?}",
        rotation_ms[rotation_ms.len() / 2],
        fetches.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        mib(rss_start),
        mib(rss_end),
        p99s.iter().map(|p| (p * 100.0).round() / 100.0).collect::<Vec<_>>()
    );

    assert_eq!(errors.load(Ordering::Relaxed), 0, "every GetKey succeeded");
    assert!(
        rotations >= secs / ROTATE_EVERY.as_secs() - 1,
        "rotations kept pace: {rotations}"
    );
    // The same connections are open at the start and at the end.
    assert!(fds_end <= fds_start + 4, "open fds grew from {fds_start} to {fds_end}");
    // Flat: within 16 MiB of the figure after warm-up (allocator noise;
    // a leak of one record per fetch would be far above it).
    assert!(
        rss_end <= rss_start + 16 * 1024,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(rss_start),
        mib(rss_end)
    );
    // No runaway: the last window's p99 within 5× the warm window's, or
    // under 20 ms (this test shares two cores with the agent).
    let (warm, last) = (p99s[1], p99s[windows - 1]);
    assert!(
        last <= (5.0 * warm).max(20.0),
        "GetKey p99 went from {warm:.2} ms to {last:.2} ms: {p99s:?}"
    );
}
