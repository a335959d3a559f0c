//! Fleet-mode benchmark: three agents on a real OpenBao server (KV v2).
//!
//! Run with `cargo bench --bench fleet` (`-- --quick` for a short run). The
//! `bao` binary comes from `KEYWARD_TEST_BAO`, else from the test venv
//! (target/test-venv/bin/bao, made if it is missing), as in the fleet
//! tests; the server harness is the tests' own (testkit/src/openbao.rs:
//! `bao server`, raft storage, no TLS, on loopback).
//!
//! It measures, in one run and in this order:
//!
//! 1. GetKey from a fleet agent (the release `keywardd`, one connection over
//!    its Unix socket) against what a service reading OpenBao directly would
//!    do: GET the key's KV v2 record with a token over one persistent HTTP
//!    connection and parse the JSON. Same calls, alternating rounds. The
//!    direct read gets ciphertext that would still need decrypting, so the
//!    comparison favours OpenBao.
//! 2. Propagation: one WatchKeys stream per agent; a key staged on agent a
//!    (and seen by every watcher), then promoted; the time from just before
//!    the PromoteKey call to each watcher receiving the promoted generation.
//!    The promote waits a random part of a poll interval first, so that it
//!    lands at a random point of the other agents' poll cycles rather than
//!    just after the poll that brought them the stage. Each rotation is then
//!    retired (forced; grace 0s) to get back to steady.
//! 3. OpenBao stopped: a round of GetKey (errors counted; the agent answers
//!    from its copy in memory) and of direct reads (which fail).
//! 4. Propagation again, on a fresh fleet with `poll_interval = "200ms"`
//!    (1-3 run with the default, 500 ms).

use keyward_testkit::bench::{self as support, bao_version, init_member, percentile, Events};
use keyward_testkit::openbao;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use openbao::Bao;
use support::{wait_for_socket, Proc};
use tonic::transport::Channel;

const SECRET: &[u8] = b"sk_live_benchmark_0123456789abcdef0123456789";
const KEY_NAME: &str = "bench-api";
/// How long a watcher may wait for an event before the run gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(quick));
}

/// The sizes of a run.
struct Plan {
    rounds: usize,
    calls: usize,
    warmup: usize,
    promotes: usize,
}

async fn bench(quick: bool) {
    let plan = if quick {
        Plan {
            rounds: 1,
            calls: 1_000,
            warmup: 200,
            promotes: 5,
        }
    } else {
        Plan {
            rounds: 3,
            calls: 5_000,
            warmup: 500,
            promotes: 20,
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "fleet mode: 3 agents on one OpenBao ({}), {} cores, load average at start: {}",
        bao_version(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg()
    );

    // The default poll interval: latency, propagation, then OpenBao down.
    let mut fleet = Fleet::start(None).await;
    let lat = latency(&fleet, &plan).await;
    let prop_default = propagation(&fleet, 2, plan.promotes, Duration::from_millis(500)).await;
    let down = openbao_down(&mut fleet, &plan).await;
    drop(fleet);

    // A shorter poll interval, on a fresh fleet.
    let fleet = Fleet::start(Some("200ms")).await;
    let prop_200 = propagation(&fleet, 4, plan.promotes, Duration::from_millis(200)).await;
    drop(fleet);

    report(
        &plan,
        &lat,
        &down,
        &[("500ms (default)", &prop_default), ("200ms", &prop_200)],
    );
    println!("load average at end: {}", loadavg());
}

// ---------------------------------------------------------------- the fleet

/// OpenBao and three agents (a, b, c) following it.
struct Fleet {
    // Dropped first: the agents withdraw their status while OpenBao is up.
    agents: Vec<FleetAgent>,
    bao: Bao,
    _tmp: tempfile::TempDir,
}

struct FleetAgent {
    _proc: Proc,
    dir: PathBuf,
}

impl Fleet {
    /// Starts OpenBao and three agents (`poll_interval` as given, else the
    /// default), puts the bench key on a and waits until all three serve it.
    async fn start(poll_interval: Option<&str>) -> Fleet {
        let bao = Bao::start();
        let tmp = tempfile::tempdir().unwrap();
        let token_file = tmp.path().join("agent.token");
        bao.token_file(&token_file);
        let names = ["a", "b", "c"];
        let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n).join("state")).collect();
        // Every agent is a member of the fleet: each record is signed by
        // its writer and encrypted to every member.
        let members: String = names.iter().zip(&dirs).map(|(name, d)| init_member(d, name)).collect();
        let poll = poll_interval.map_or(String::new(), |p| format!("poll_interval = \"{p}\"\n"));
        let mut agents = Vec::new();
        for (name, dir) in names.iter().zip(&dirs) {
            let config = dir.parent().unwrap().join("keyward.toml");
            // grace 0s: the bench retires each rotation at once.
            let toml = format!(
                "[rotation]\ngrace = \"0s\"\n[backend]\nkind = \"openbao\"\naddress = {:?}\ntoken_file = {:?}\nagent_id = \"{name}\"\n{poll}{members}",
                bao.addr,
                token_file.display().to_string(),
            );
            std::fs::write(&config, toml).unwrap();
            agents.push(FleetAgent {
                _proc: start_agent(dir, &config),
                dir: dir.clone(),
            });
        }
        let fleet = Fleet { agents, bao, _tmp: tmp };
        fleet
            .admin(0)
            .await
            .put_key(proto::PutKeyRequest {
                key: Some(key()),
                secret: bytes::Bytes::from_static(SECRET),
                ..Default::default()
            })
            .await
            .unwrap();
        for i in 0..3 {
            fleet.until_served(i, SECRET).await;
        }
        fleet
    }

    async fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(
            keyward_client::channel(&self.agents[i].dir.join("admin.sock"))
                .await
                .unwrap(),
        )
    }

    async fn keys(&self, i: usize) -> KeysClient<Channel> {
        support::client(&self.agents[i].dir.join("keys.sock")).await
    }

    /// Polls agent `i` until it serves `secret` as the primary.
    async fn until_served(&self, i: usize, secret: &[u8]) {
        let sock = self.agents[i].dir.join("keys.sock");
        support::until_served(&sock, key(), secret, EVENT_TIMEOUT, || self.log(i)).await;
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.agents[i].dir.parent().unwrap().join("keywardd.log")).unwrap_or_default()
    }

    /// The URL of the bench key's record, as a service reading KV v2
    /// directly would GET it.
    fn record_url(&self) -> String {
        format!("{}/v1/secret/data/keyward/keys/prod/{KEY_NAME}", self.bao.addr)
    }
}

/// The release `keywardd` in dev mode in `dir` with `config`; its output
/// goes to keywardd.log next to `dir` (an agent cut off from OpenBao warns
/// at every poll).
fn start_agent(dir: &Path, config: &Path) -> Proc {
    let log = std::fs::File::create(dir.parent().unwrap().join("keywardd.log")).unwrap();
    let agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_keywardd"))
            .arg("--dev")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env("KEYWARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keywardd"),
    );
    wait_for_socket(&dir.join("admin.sock"));
    agent
}

fn key() -> proto::KeyRef {
    proto::KeyRef {
        environment: "prod".into(),
        name: KEY_NAME.into(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ------------------------------------------------------------------ latency

/// One subject's round: sorted latencies of the calls that succeeded, and
/// how many failed.
struct Round {
    samples: Vec<f64>,
    errors: usize,
    calls: usize,
    /// What the first failure was.
    first_error: Option<String>,
}

impl Round {
    fn pct(&self, q: f64) -> Option<f64> {
        (!self.samples.is_empty()).then(|| percentile(&self.samples, q))
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// `warmup` untimed calls, then `calls` timed ones; a call fails when it
/// returns `Err(why)`.
async fn timed_round<F, Fut>(warmup: usize, calls: usize, mut call: F) -> Round
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for _ in 0..warmup {
        let _ = call().await;
    }
    let mut samples = Vec::with_capacity(calls);
    let (mut errors, mut first_error) = (0, None);
    for _ in 0..calls {
        let t = Instant::now();
        let r = call().await;
        let took = t.elapsed().as_secs_f64() * 1e6;
        match r {
            Ok(()) => samples.push(took),
            Err(why) => {
                errors += 1;
                first_error.get_or_insert(why);
            }
        }
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Round {
        samples,
        errors,
        calls,
        first_error,
    }
}

/// GetKey on one connection. A call fails if it errs or does not return
/// `expected` as the primary.
async fn getkey_round(sock: &Path, expected: &[u8], warmup: usize, calls: usize) -> Round {
    let c = support::client(sock).await;
    timed_round(warmup, calls, || {
        let mut c = c.clone();
        async move {
            match c.get_key(proto::GetKeyRequest { key: Some(key()) }).await {
                Ok(r) if r.get_ref().primary.as_ref().is_some_and(|p| p.secret == expected) => Ok(()),
                Ok(_) => Err("answered another primary".to_owned()),
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    })
    .await
}

/// The same against OpenBao: GET the record over one persistent HTTP/1.1
/// connection and parse its JSON. A read fails if it errs, is not 200, or
/// holds no keyward record.
async fn kv_round(url: &str, token: &str, warmup: usize, calls: usize) -> Round {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    timed_round(warmup, calls, || async {
        let resp = http
            .get(url)
            .header("X-Vault-Token", token)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| error_chain(&e))?;
        match body["data"]["data"]["format"].as_str() {
            Some(_) => Ok(()),
            None => Err("no keyward record in the answer".to_owned()),
        }
    })
    .await
}

/// An error and its sources on one line (reqwest's own message says
/// little: "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct Latency {
    agent: Vec<Round>,
    kv: Vec<Round>,
}

async fn latency(fleet: &Fleet, plan: &Plan) -> Latency {
    let sock = fleet.agents[0].dir.join("keys.sock");
    let url = fleet.record_url();
    println!(
        "\n1. GetKey from agent a vs a direct KV v2 read: {} rounds, {} calls each after {} warm-up, one connection each",
        plan.rounds, plan.calls, plan.warmup
    );
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "subject", "round", "p50 µs", "p90 µs", "p99 µs", "errors"
    );
    let mut out = Latency {
        agent: Vec::new(),
        kv: Vec::new(),
    };
    for round in 1..=plan.rounds {
        // Alternate which subject goes first.
        for agent_turn in [round % 2 == 1, round % 2 == 0] {
            let (name, r) = if agent_turn {
                (
                    "agent GetKey",
                    getkey_round(&sock, SECRET, plan.warmup, plan.calls).await,
                )
            } else {
                (
                    "direct KV read",
                    kv_round(&url, &fleet.bao.root_token, plan.warmup, plan.calls).await,
                )
            };
            print_round(name, &round.to_string(), &r);
            if agent_turn {
                out.agent.push(r);
            } else {
                out.kv.push(r);
            }
        }
    }
    out
}

fn print_round(name: &str, round: &str, r: &Round) {
    let f = |q| r.pct(q).map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{name:<16} {round:>6} {:>10} {:>10} {:>10} {:>8}",
        f(0.5),
        f(0.9),
        f(0.99),
        format!("{}/{}", r.errors, r.calls)
    );
}

// ------------------------------------------------------------ OpenBao down

struct Down {
    /// GetKey just before OpenBao was stopped, same key state.
    before: Round,
    agent: Round,
    kv: Round,
    last_error: String,
}

/// Stops OpenBao, waits until agent a has noticed, then one round of each.
async fn openbao_down(fleet: &mut Fleet, plan: &Plan) -> Down {
    println!("\n3. OpenBao stopped");
    // What agent a serves now (the last promote's key), to check against.
    let serving = fleet
        .keys(0)
        .await
        .get_key(proto::GetKeyRequest { key: Some(key()) })
        .await
        .unwrap()
        .into_inner()
        .primary
        .unwrap()
        .secret;
    let sock = fleet.agents[0].dir.join("keys.sock");
    let before = getkey_round(&sock, &serving, plan.warmup, plan.calls).await;
    print_round("agent GetKey", "up", &before);
    fleet.bao.stop();
    let mut admin = fleet.admin(0).await;
    let start = Instant::now();
    let last_error = loop {
        let status = admin.get_status(proto::GetStatusRequest {}).await.unwrap().into_inner();
        let b = status.backend.unwrap_or_default();
        if !b.last_error.is_empty() {
            break b.last_error;
        }
        assert!(
            start.elapsed() < EVENT_TIMEOUT,
            "agent a never noticed that OpenBao is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("agent a's backend status: last_error = {last_error:?}");
    let agent = getkey_round(&sock, &serving, plan.warmup, plan.calls).await;
    print_round("agent GetKey", "down", &agent);
    let kv = kv_round(&fleet.record_url(), &fleet.bao.root_token, 0, plan.calls).await;
    print_round("direct KV read", "down", &kv);
    for (name, r) in [("agent GetKey", &agent), ("direct KV read", &kv)] {
        if let Some(why) = &r.first_error {
            println!("{name}: first failure: {why}");
        }
    }
    Down {
        before,
        agent,
        kv,
        last_error,
    }
}

// -------------------------------------------------------------- propagation

/// A WatchKeys stream on agent `i`, read by a task that stamps each event
/// as it arrives.
async fn watcher(fleet: &Fleet, i: usize) -> Events {
    support::watch_events(&fleet.agents[i].dir.join("keys.sock"), key())
        .await
        .0
}

/// Drains `rx` until an event of at least `generation`; when it arrived
/// and its primary.
async fn until_generation(rx: &mut Events, generation: u64) -> (Instant, Vec<u8>) {
    support::until_generation(rx, "a watcher", generation, EVENT_TIMEOUT).await
}

/// Per promote: the PromoteKey call, and promote → each agent's watcher.
struct Propagation {
    call: Vec<f64>,
    agent: [Vec<f64>; 3],
    last: Vec<f64>,
}

async fn propagation(fleet: &Fleet, step: u32, promotes: usize, poll: Duration) -> Propagation {
    println!(
        "\n{step}. promote -> watchers, poll_interval {} ms: {promotes} promotes on agent a",
        poll.as_millis()
    );
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut rx = watcher(fleet, i).await;
        until_generation(&mut rx, 1).await;
        watchers.push(rx);
    }
    let mut admin = fleet.admin(0).await;
    let mut out = Propagation {
        call: Vec::new(),
        agent: [Vec::new(), Vec::new(), Vec::new()],
        last: Vec::new(),
    };
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "#", "call ms", "a ms", "b ms", "c ms", "last ms"
    );
    for n in 1..=promotes {
        let secret = format!("sk_live_fleet_bench_{n:03}_0123456789abcdef0123");
        let r = support::timed_promote(&mut admin, key(), &secret, &mut watchers, poll, EVENT_TIMEOUT).await;
        for (i, &t) in r.seen.iter().enumerate() {
            out.agent[i].push(t);
        }
        let last = r.seen.iter().cloned().fold(0.0, f64::max);
        out.call.push(r.call);
        out.last.push(last);
        println!(
            "{n:>4} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.call, r.seen[0], r.seen[1], r.seen[2], last
        );
    }
    out
}

// ------------------------------------------------------------------- report

fn report(plan: &Plan, lat: &Latency, down: &Down, props: &[(&str, &Propagation)]) {
    let med = |rs: &[Round], q: f64| median(rs.iter().filter_map(|r| r.pct(q)).collect());
    let errors = |rs: &[Round]| rs.iter().map(|r| r.errors).sum::<usize>();
    let total = |rs: &[Round]| rs.iter().map(|r| r.calls).sum::<usize>();
    println!("\n================ summary ================");
    println!(
        "GetKey (agent a, Unix socket) vs direct KV v2 read (HTTP, loopback), median of {} round(s) of {} calls:",
        plan.rounds, plan.calls
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>12}",
        "", "p50 µs", "p90 µs", "p99 µs", "errors"
    );
    for (name, rs) in [("agent GetKey", &lat.agent), ("direct KV read", &lat.kv)] {
        println!(
            "{name:<30} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            med(rs, 0.5),
            med(rs, 0.9),
            med(rs, 0.99),
            format!("{}/{}", errors(rs), total(rs))
        );
    }
    println!(
        "{:<30} {:>9.2}x {:>9.2}x {:>9.2}x   (target: agent >= 2x faster at p50)",
        "KV read / GetKey",
        med(&lat.kv, 0.5) / med(&lat.agent, 0.5),
        med(&lat.kv, 0.9) / med(&lat.agent, 0.9),
        med(&lat.kv, 0.99) / med(&lat.agent, 0.99),
    );
    println!("OpenBao stopped (agent a's backend status: {:?}):", down.last_error);
    for (name, r) in [
        ("agent GetKey, just before", &down.before),
        ("agent GetKey, OpenBao down", &down.agent),
        ("direct KV read, OpenBao down", &down.kv),
    ] {
        let f = |q| r.pct(q).map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{name:<30} {:>10} {:>10} {:>10} {:>12}",
            f(0.5),
            f(0.9),
            f(0.99),
            format!("{}/{}", r.errors, r.calls)
        );
        if let Some(why) = &r.first_error {
            println!("{:<30} first failure: {why}", "");
        }
    }
    println!("\npromote on agent a -> watcher receives the promoted generation, ms (target: every agent < 2000 ms):");
    println!(
        "{:<16} {:<22} {:>8} {:>8} {:>8} {:>8}",
        "poll_interval", "", "min", "p50", "p90", "max"
    );
    for (name, p) in props {
        let rows: [(&str, &Vec<f64>); 5] = [
            ("PromoteKey call", &p.call),
            ("-> agent a", &p.agent[0]),
            ("-> agent b", &p.agent[1]),
            ("-> agent c", &p.agent[2]),
            ("-> last of 3", &p.last),
        ];
        for (i, (row, xs)) in rows.iter().enumerate() {
            let mut xs = xs.to_vec();
            xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{:<16} {row:<22} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                if i == 0 { *name } else { "" },
                xs[0],
                percentile(&xs, 0.5),
                percentile(&xs, 0.9),
                xs[xs.len() - 1]
            );
        }
        println!("{:<16} ({} promotes)", "", p.last.len());
    }
}
