//! Client benchmark, in one run against one release `keywardd`:
//!
//! 1. GetKey p50/p99 from each client language over one persistent
//!    connection: the Rust client (`keyward-client`, in this process), the
//!    Python client (`clients/python/bench.py` in the test venv) and the
//!    Node client (`clients/node/bench.mjs`), each 1,000 warm-up then 5,000
//!    timed calls, in 3 alternating rounds; medians of rounds.
//! 2. The per-process cost of `keyward get KEY --primary` (start, connect,
//!    fetch, print, exit) against `/bin/true`, 300 spawns each, alternating.
//!
//! Run `scripts/test` once first (it makes the Python venv and the Node
//! client's node_modules and dist/), then `cargo bench --bench clients`.

use keyward_testkit::bench as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "prod/bench-api";
const CALLS: usize = 5000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs a language's bench program and parses `p50_us=… p99_us=…`.
fn external(name: &str, cmd: &mut Command) -> (f64, f64) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {name} bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {name} bench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |f: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(f))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the {name} bench printed {stdout:?}"))
    };
    (field("p50_us="), field("p99_us="))
}

async fn rust_client(sock: &Path) -> (f64, f64) {
    let client = keyward_client::Client::connect_to(sock).await.unwrap();
    for _ in 0..1000 {
        client.get(KEY).await.unwrap();
    }
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        let set = client.get(KEY).await.unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(!set.primary.secret.expose().is_empty());
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&samples, 50), percentile(&samples, 99))
}

/// Wall time of one spawn-and-wait of `cmd`, in ms.
fn spawn_ms(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let python = root().join("target/test-venv/bin/python");
    let node_dist = root().join("clients/node/dist/index.js");
    assert!(
        python.exists() && node_dist.exists(),
        "run scripts/test first: it makes target/test-venv and clients/node/dist"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let config = tmp.path().join("keyward.toml");
    std::fs::write(&config, "").unwrap();
    let agent = support::start_agent(&dir, &config);
    let sock = dir.join("keys.sock");
    let keyward = PathBuf::from(env!("CARGO_BIN_EXE_keyward"));
    let mut put = Command::new(&keyward)
        .arg("--dev")
        .arg(&dir)
        .args(["put", KEY])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    put.stdin
        .take()
        .unwrap()
        .write_all(b"sk_live_bench_clients_0123456789abcdef")
        .unwrap();
    assert!(put.wait().unwrap().success());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut rust, mut py, mut node) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let r = rt.block_on(rust_client(&sock));
        let p = external(
            "Python",
            Command::new(&python)
                .arg(root().join("clients/python/bench.py"))
                .args([KEY, "-n", &CALLS.to_string()])
                .env("PYTHONPATH", root().join("clients/python"))
                .env("KEYWARD_SOCKET", &sock),
        );
        let n = external(
            "Node",
            Command::new("node")
                .arg(root().join("clients/node/bench.mjs"))
                .args([KEY, &CALLS.to_string()])
                .env("KEYWARD_SOCKET", &sock),
        );
        println!(
            "round {round}: p50/p99 µs  rust {:.1}/{:.1}  python {:.1}/{:.1}  node {:.1}/{:.1}",
            r.0, r.1, p.0, p.1, n.0, n.1
        );
        rust.push(r);
        py.push(p);
        node.push(n);
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    let (r, p, n) = (med(&rust), med(&py), med(&node));
    println!("\nGetKey over one persistent connection, median of 3 rounds of {CALLS} calls:");
    println!("  rust   p50 {:.1} µs, p99 {:.1} µs", r.0, r.1);
    println!(
        "  python p50 {:.1} µs, p99 {:.1} µs ({:.2}x the Rust client's p50)",
        p.0,
        p.1,
        p.0 / r.0
    );
    println!(
        "  node   p50 {:.1} µs, p99 {:.1} µs ({:.2}x the Rust client's p50)",
        n.0,
        n.1,
        n.0 / r.0
    );

    let (mut get_ms, mut true_ms) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        get_ms.push(spawn_ms(Command::new(&keyward).arg("--socket").arg(&sock).args([
            "get",
            KEY,
            "--primary",
        ])));
        true_ms.push(spawn_ms(&mut Command::new("/bin/true")));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (gm, tm) = (mean(&get_ms), mean(&true_ms));
    let (gp, tp) = (median(get_ms), median(true_ms));
    println!("\nper process, 300 spawns each, alternating:");
    println!("  /bin/true                    p50 {tp:.2} ms, mean {tm:.2} ms");
    println!(
        "  keyward get KEY --primary    p50 {gp:.2} ms, mean {gm:.2} ms ({:.2} ms more per call at p50)",
        gp - tp
    );
    drop(agent);
    std::thread::sleep(Duration::from_millis(100));
}
