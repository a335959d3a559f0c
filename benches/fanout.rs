//! WatchKeys fan-out benchmark: 10,000 subscribers on one key over 100
//! connections; time from PromoteKey returning to the last subscriber
//! receiving the promoted KeySet; agent RSS holding 10,000 keys and 10,000
//! subscribers.
//!
//! Run with `cargo bench --bench fanout` (`-- --quick` for 1,000 keys and
//! subscribers). It starts the release `keywardd` in dev mode in a temp dir
//! with the audit on (every delivery is audited).

use keyward_testkit::bench as support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::start_agent;

use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use tokio::sync::Barrier;
use tonic::transport::Channel;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn key(i: usize) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        environment: "prod".into(),
        name: format!("fan-{i}"),
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (keys, subscribers, connections) = if quick {
        (1_000, 1_000, 100)
    } else {
        (10_000, 10_000, 100)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(keys, subscribers, connections));
}

async fn bench(keys: usize, subscribers: usize, connections: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let config = tmp.path().join("keyward.toml");
    std::fs::write(
        &config,
        format!(
            // One uid holds every subscriber: raise its stream and watch
            // limits to the benchmark's size.
            "[rotation]\ngrace = \"0s\"\n[limits]\nmax_connections_per_uid = {}\nmax_streams_per_connection = {}\nmax_streams_per_uid = {}\nmax_watches_per_uid = {}\nmax_watches = {}\n",
            connections + 16,
            subscribers.div_ceil(connections) + 16,
            subscribers + 64,
            subscribers,
            subscribers,
        ),
    )
    .unwrap();
    let agent = start_agent(&dir, &config);
    let pid = agent.0.id();
    let rss_empty = rss_kib(pid);

    let t = Instant::now();
    let admin = AdminClient::new(keyward_client::channel(&dir.join("admin.sock")).await.unwrap());
    let mut puts = Vec::new();
    for w in 0..8 {
        let mut admin = admin.clone();
        puts.push(tokio::spawn(async move {
            for i in (w..keys).step_by(8) {
                admin
                    .put_key(proto::PutKeyRequest {
                        key: key(i),
                        secret: bytes::Bytes::from(format!("sk_fanout_{i:06}_0123456789abcdef0123456789abcdef")),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for p in puts {
        p.await.unwrap();
    }
    println!("put {keys} keys in {:.1} s", t.elapsed().as_secs_f64());
    let rss_keys = rss_kib(pid);

    // Subscribers: `subscribers` streams on prod/fan-0 over `connections`.
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..connections {
        channels.push(keyward_client::channel(&dir.join("keys.sock")).await.unwrap());
    }
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let (target_tx, target_rx) = tokio::sync::watch::channel(0u64);
    let mut tasks = Vec::new();
    let t = Instant::now();
    for s in 0..subscribers {
        let mut client = KeysClient::new(channels[s % connections].clone());
        let ready = ready.clone();
        let mut target_rx = target_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_keys(proto::WatchKeysRequest {
                    keys: vec![key(0).unwrap()],
                })
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            assert_eq!(first.reason, "initial");
            ready.wait().await;
            let target = *target_rx.wait_for(|t| *t > 0).await.unwrap();
            loop {
                let ev = stream.message().await.unwrap().expect("stream open");
                if ev.key_set.as_ref().map_or(0, |k| k.generation) >= target {
                    return Instant::now();
                }
            }
        }));
    }
    ready.wait().await;
    println!(
        "{subscribers} subscribers over {connections} connections ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rss_subs = rss_kib(pid);

    let mut admin = admin.clone();
    let staged = admin
        .stage_key(proto::StageKeyRequest {
            key: key(0),
            secret: bytes::Bytes::from_static(b"sk_fanout_new_key_0123456789abcdef"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let staged_gen = staged.key.unwrap().generation;
    // Let the staged event drain so the measurement is the promote alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    target_tx.send(staged_gen + 1).unwrap();
    let call = Instant::now();
    admin
        .promote_key(proto::RotationRequest {
            key: key(0),
            expected_generation: Some(staged_gen),
        })
        .await
        .unwrap();
    let returned = Instant::now();
    let mut last = returned;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    let rss_after = rss_kib(pid);
    println!();
    println!("PromoteKey call: {:.1} ms", (returned - call).as_secs_f64() * 1e3);
    println!(
        "fan-out: PromoteKey returned -> last of {subscribers} subscribers received: {:.1} ms (target < 250 ms)",
        (last - returned).as_secs_f64() * 1e3
    );
    println!(
        "agent RSS: {:.1} MiB empty, {:.1} MiB with {keys} keys, {:.1} MiB with {subscribers} subscribers, {:.1} MiB after the promote (target < 100 MiB)",
        rss_empty as f64 / 1024.0,
        rss_keys as f64 / 1024.0,
        rss_subs as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    drop(agent);
}
