//! A fleet at scale: one OpenBao server and many `keywardd` agents (50 by
//! default) on this machine, each a member of the fleet.
//!
//! Run with `cargo bench --bench fleet_scale` (about four minutes with the
//! defaults). Options after `--`: `--agents N` (default 50), `--window S`
//! (the steady window, default 60 s), `--short-window S` (the same at the
//! short poll interval, default 30 s), `--rotations R` (per poll interval,
//! default 5), `--short-poll D` (default "200ms"), `--no-short` (only the
//! default poll interval), `--unlocked` (`lock_memory = false`), `--members
//! M` (M members listed, only the first N started: what the member count
//! costs each agent, without M processes sharing the cores). The `bao`
//! binary comes from `KEYWARD_TEST_BAO`, else from the test venv, as in the
//! fleet tests and `benches/fleet.rs`.
//!
//! Each agent is `keywardd --dev DIR --config FILE`: its own identity and
//! signing key (`keyward init`), `[backend] kind = "openbao"` with the root
//! token, and the whole `[[backend.member]]` list (every agent's entry), so
//! each record is signed by its writer and encrypted to all N members.
//! The agents otherwise run with the defaults (memory locked, as an agent
//! run as root does; metrics off; log level warn).
//!
//! It measures, for the default poll interval and then, on a fresh fleet,
//! for a short one:
//!
//! 1. Steady load over a window after every agent serves the bench key and
//!    has settled: OpenBao's request count, read from its own Prometheus
//!    endpoint (`/v1/sys/metrics?format=prometheus` with the root token;
//!    the server runs with a `telemetry` stanza): `vault_core_handle_request`
//!    counts every request the core handles, the `vault_route_*` summaries
//!    break them down by operation and mount. Requests/s in total and per
//!    agent; CPU (utime + stime from /proc/PID/stat) of every agent and of
//!    OpenBao over the same window; then each agent's memory (VmRSS from
//!    /proc/PID/status, Pss from /proc/PID/smaps_rollup).
//! 2. Propagation: one WatchKeys stream per agent; a key staged on agent 0
//!    (seen by every watcher), then, at a random point of a poll interval,
//!    promoted; the time from just before PromoteKey to each agent's
//!    watcher receiving the promoted generation: min / p50 / max over the
//!    agents, per rotation. Each rotation is then retired (forced, grace 0s).
//!
//! Every process it starts is stopped when the run ends, panics or gets
//! SIGINT/SIGTERM (a guard; the agents also get SIGTERM from the kernel if
//! the bench dies: PR_SET_PDEATHSIG).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward::proto::{self, admin_client::AdminClient};
use keyward_testkit::bench::{self, bao_version, cpu_seconds, init_member, percentile, Events};
use keyward_testkit::openbao::Bao;
use tonic::transport::Channel;

const SECRET: &[u8] = b"sk_live_scale_bench_0123456789abcdef0123456789";
const KEY_NAME: &str = "scale-api";
/// How long an agent may take to serve a change, or to start.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// OpenBao's telemetry (Prometheus-format counters kept for the run), and
/// an audit device the bench may turn on and off through the API (OpenBao
/// 2.x refuses that unless allowed in its config).
const BAO_CONFIG: &str = "telemetry {\n  prometheus_retention_time = \"30m\"\n  disable_hostname = true\n}\nunsafe_allow_api_audit_creation = true\n";

struct Opts {
    agents: usize,
    window: Duration,
    short_window: Duration,
    rotations: usize,
    short_poll: String,
    short: bool,
    /// `lock_memory = false` (the default, true, locks every page an agent
    /// maps when it runs as root).
    unlocked: bool,
    /// Members listed (each with its own identity): the agents and, past
    /// them, members that are not started (records are still encrypted to
    /// them), to see what the member count costs each agent without as
    /// many processes sharing the cores.
    members: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        agents: 50,
        window: Duration::from_secs(60),
        short_window: Duration::from_secs(30),
        rotations: 5,
        short_poll: "200ms".to_owned(),
        short: true,
        unlocked: false,
        members: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_default();
        let secs = |v: String| Duration::from_secs(v.parse().expect("a number of seconds"));
        match args[i].as_str() {
            "--agents" => o.agents = value().parse().expect("--agents N"),
            "--members" => o.members = value().parse().expect("--members M"),
            "--window" => o.window = secs(value()),
            "--short-window" => o.short_window = secs(value()),
            "--rotations" => o.rotations = value().parse().expect("--rotations R"),
            "--short-poll" => o.short_poll = value(),
            "--no-short" => {
                o.short = false;
                i += 1;
                continue;
            }
            "--unlocked" => {
                o.unlocked = true;
                i += 1;
                continue;
            }
            // cargo bench passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(o.agents >= 2, "--agents: at least 2");
    o.members = o.members.max(o.agents);
    o
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The bench runs on this (the main) thread: the agents are spawned
    // from it, so their parent-death signal follows the process's life.
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = bench(o) => {}
            _ = tokio::signal::ctrl_c() => eprintln!("interrupted: stopping every process started"),
            _ = term.recv() => eprintln!("terminated: stopping every process started"),
        }
    });
}

async fn bench(o: Opts) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "fleet at scale: {} agents{}{} on one OpenBao ({}), {} cores, {}",
        o.agents,
        if o.members > o.agents {
            format!(" ({} members listed)", o.members)
        } else {
            String::new()
        },
        if o.unlocked { " (lock_memory = false)" } else { "" },
        bao_version(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        uptime()
    );
    println!(
        "open files limit {}, pid_max {}, memory {}",
        rlimit_nofile(),
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap_or_default()
            .trim(),
        meminfo_total()
    );

    let default_poll = keyward::config::backend::DEFAULT_POLL_INTERVAL;
    let mut results = Vec::new();
    {
        let fleet = Fleet::start(o.agents, o.members, None, o.unlocked).await;
        let steady = steady(&fleet, o.window).await;
        let memory = memory(&fleet);
        let prop = propagation(&fleet, o.rotations, default_poll).await;
        fleet.check_problems().await;
        results.push((
            format!("{} ms (default)", default_poll.as_millis()),
            steady,
            memory,
            prop,
        ));
        drop(fleet);
    }
    if o.short {
        let poll = humantime::parse_duration(&o.short_poll).expect("--short-poll: a duration");
        let fleet = Fleet::start(o.agents, o.members, Some(&o.short_poll), o.unlocked).await;
        let steady = steady(&fleet, o.short_window).await;
        let memory = memory(&fleet);
        let prop = propagation(&fleet, o.rotations, poll).await;
        fleet.check_problems().await;
        results.push((format!("{} ms", poll.as_millis()), steady, memory, prop));
        drop(fleet);
    }
    summary(o.agents, &results);
    println!("at end: {}", uptime());
}

// ------------------------------------------------------------------ the fleet

/// The agents' processes: SIGTERM to all of them when dropped, then each is
/// waited for (SIGKILL after a deadline).
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for child in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// OpenBao and N agents following it.
struct Fleet {
    // Dropped first: the agents withdraw their status while OpenBao is up.
    agents: Agents,
    dirs: Vec<PathBuf>,
    bao: Bao,
    /// OpenBao's CPU (s per s) with no agent yet.
    bao_idle: f64,
    http: reqwest::Client,
    tmp: tempfile::TempDir,
}

impl Fleet {
    async fn start(n: usize, members: usize, poll_interval: Option<&str>, unlocked: bool) -> Fleet {
        let bao = Bao::start_with_config(BAO_CONFIG);
        // OpenBao's own background work (raft, rollback, telemetry), to
        // tell it from what the agents' requests cost.
        let idle_window = Duration::from_secs(10);
        let cpu0 = cpu_seconds(bao.pid());
        tokio::time::sleep(idle_window).await;
        let bao_idle = (cpu_seconds(bao.pid()) - cpu0) / idle_window.as_secs_f64();
        println!(
            "\nOpenBao idle (no agent) for {} s: {:.2} % of a core ({})",
            idle_window.as_secs(),
            bao_idle * 100.0,
            uptime()
        );
        let t = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let token_file = tmp.path().join("agent.token");
        bao.token_file(&token_file);
        let names: Vec<String> = (0..members).map(|i| format!("agent-{i:03}")).collect();
        let dirs: Vec<PathBuf> = names.iter().map(|name| tmp.path().join(name).join("state")).collect();
        let member_entries: String = names.iter().zip(&dirs).map(|(name, d)| init_member(d, name)).collect();
        let poll = poll_interval.map_or(String::new(), |p| format!("poll_interval = \"{p}\"\n"));
        let mut agents = Agents(Vec::new());
        for (name, dir) in names.iter().zip(&dirs).take(n) {
            let config = dir.parent().unwrap().join("keyward.toml");
            // grace 0s: the bench retires each rotation at once.
            let toml = format!(
                "{}[rotation]\ngrace = \"0s\"\n[backend]\nkind = \"openbao\"\naddress = {:?}\ntoken_file = {:?}\nagent_id = \"{name}\"\n{poll}{member_entries}",
                if unlocked { "lock_memory = false\n" } else { "" },
                bao.addr,
                token_file.display().to_string(),
            );
            std::fs::write(&config, toml).unwrap();
            agents.0.push(spawn_agent(dir, &config));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let fleet = Fleet {
            agents,
            dirs: dirs[..n].to_vec(),
            bao,
            bao_idle,
            http,
            tmp,
        };
        for i in 0..n {
            fleet.wait_socket(i);
        }
        println!(
            "{n} agents started ({}) in {:.1} s",
            poll_interval.map_or("default poll_interval".to_owned(), |p| format!("poll_interval {p}")),
            t.elapsed().as_secs_f64()
        );
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
        let t = Instant::now();
        for i in 0..n {
            fleet.until_served(i, SECRET).await;
        }
        println!(
            "every agent serves the key {:.1} s after PutKey",
            t.elapsed().as_secs_f64()
        );
        // What one key's record weighs with N members.
        let record = fleet
            .http
            .get(format!(
                "{}/v1/secret/data/keyward/keys/prod/{KEY_NAME}",
                fleet.bao.addr
            ))
            .header("X-Vault-Token", &fleet.bao.root_token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        let armor = record["data"]["data"]["record"].as_str().map_or(0, str::len);
        println!(
            "the key's record in OpenBao: {armor} bytes of age armor ({:.0} per member), {} bytes as stored JSON",
            armor as f64 / members as f64,
            record["data"]["data"].to_string().len()
        );
        fleet
    }

    fn n(&self) -> usize {
        self.dirs.len()
    }

    fn pid(&self, i: usize) -> u32 {
        self.agents.0[i].id()
    }

    fn wait_socket(&self, i: usize) {
        let sock = self.dirs[i].join("admin.sock");
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent {i} did not come up; its log:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(keyward_client::channel(&self.dirs[i].join("admin.sock")).await.unwrap())
    }

    /// Polls agent `i` until it serves `secret` as the primary.
    async fn until_served(&self, i: usize, secret: &[u8]) {
        let sock = self.dirs[i].join("keys.sock");
        bench::until_served(&sock, key(), secret, EVENT_TIMEOUT, || self.log(i)).await;
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].parent().unwrap().join("keywardd.log")).unwrap_or_default()
    }

    /// Every agent in sync, no problem, and its status published: a
    /// measurement of a fleet with refused records would measure the wrong
    /// thing.
    async fn check_problems(&self) {
        let mut bad = Vec::new();
        for i in 0..self.n() {
            let status = self
                .admin(i)
                .await
                .get_status(proto::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let b = status.backend.unwrap_or_default();
            if !b.last_error.is_empty() || !b.problems.is_empty() || b.stale || !b.listed {
                bad.push(format!(
                    "agent {i}: last_error {:?}, problems {:?}, stale {}, listed {}",
                    b.last_error, b.problems, b.stale, b.listed
                ));
            }
        }
        assert!(bad.is_empty(), "agents not in a clean state:\n{}", bad.join("\n"));
        println!("all {} agents in sync, listed, no problems", self.n());
    }

    /// OpenBao's Prometheus text.
    async fn bao_metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/v1/sys/metrics?format=prometheus", self.bao.addr))
            .header("X-Vault-Token", &self.bao.root_token)
            .send()
            .await
            .expect("GET /v1/sys/metrics");
        assert!(resp.status().is_success(), "/v1/sys/metrics: HTTP {}", resp.status());
        resp.text().await.unwrap()
    }
}

impl Fleet {
    /// Enables OpenBao's file audit device writing to `path`, or (None)
    /// disables it.
    async fn audit(&self, path: Option<&Path>) {
        let url = format!("{}/v1/sys/audit/scale-bench", self.bao.addr);
        let req = match path {
            Some(p) => self.http.put(url).json(&serde_json::json!({
                "type": "file",
                "options": { "file_path": p.display().to_string() },
            })),
            None => self.http.delete(url),
        };
        let resp = req
            .header("X-Vault-Token", &self.bao.root_token)
            .send()
            .await
            .expect("sys/audit");
        let status = resp.status();
        assert!(
            status.is_success(),
            "sys/audit: HTTP {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

/// The requests of an OpenBao audit log (its `response` entries) by
/// operation and what keyward path they were for.
fn audit_kinds(path: &Path) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] != "response" {
            continue;
        }
        let op = v["request"]["operation"].as_str().unwrap_or("?");
        let p = v["request"]["path"].as_str().unwrap_or("?");
        let what = if p == "secret/metadata/keyward/changes" {
            "changes metadata"
        } else if p == "secret/data/keyward/changes" {
            "changes data"
        } else if p.starts_with("secret/metadata/keyward/keys/") {
            "key metadata"
        } else if p.starts_with("secret/data/keyward/keys/") {
            "key data"
        } else if p.starts_with("secret/metadata/keyward/agents/") {
            "status metadata"
        } else if p.starts_with("secret/data/keyward/agents/") {
            "status data"
        } else {
            p
        };
        *kinds.entry(format!("{op} {what}")).or_insert(0) += 1;
    }
    kinds
}

/// The release `keywardd` in dev mode in `dir` with `config`, its output in
/// keywardd.log next to `dir`; SIGTERM from the kernel if the bench dies.
fn spawn_agent(dir: &Path, config: &Path) -> Child {
    let log = std::fs::File::create(dir.parent().unwrap().join("keywardd.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keywardd"));
    command
        .arg("--dev")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .env("KEYWARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    command.spawn().expect("start keywardd")
}

fn key() -> proto::KeyRef {
    proto::KeyRef {
        environment: "prod".into(),
        name: KEY_NAME.into(),
    }
}

// --------------------------------------------------------- the steady window

/// One Prometheus sample per line, `name{labels}` → value (comments
/// skipped).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

struct Steady {
    window: f64,
    /// `vault_core_handle_request_count` over the window.
    requests: f64,
    /// Per `vault_route_*_count` sample, over the window.
    routes: Vec<(String, f64)>,
    /// CPU seconds per agent over the window.
    agent_cpu: Vec<f64>,
    bao_cpu: f64,
    /// OpenBao's CPU with no agent, over the same time.
    bao_idle_cpu: f64,
    bench_cpu: f64,
    load_before: String,
    load_after: String,
}

/// Lets the fleet settle, then counts over `window`.
async fn steady(fleet: &Fleet, window: Duration) -> Steady {
    // Every agent has published its status after applying the key (a
    // publication is due after a change), and its first full sync is over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.check_problems().await;
    let pids: Vec<u32> = (0..fleet.n()).map(|i| fleet.pid(i)).collect();
    let bao_pid = fleet.bao.pid();
    let me = std::process::id();
    let load_before = uptime();
    println!("steady window of {} s: {load_before}", window.as_secs());
    let m0 = samples(&fleet.bao_metrics().await);
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let (bao0, me0) = (cpu_seconds(bao_pid), cpu_seconds(me));
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu1: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let (bao1, me1) = (cpu_seconds(bao_pid), cpu_seconds(me));
    let m1 = samples(&fleet.bao_metrics().await);
    let elapsed = t0.elapsed().as_secs_f64();
    let load_after = uptime();
    let delta = |name: &str| m1.get(name).copied().unwrap_or(0.0) - m0.get(name).copied().unwrap_or(0.0);
    // Less the bench's first metrics read (counted once it was answered,
    // so in the second read's figures; the second is not).
    let requests = delta("vault_core_handle_request_count") - 1.0;
    assert!(
        m1.contains_key("vault_core_handle_request_count"),
        "OpenBao's metrics have no vault_core_handle_request_count; they are:\n{}",
        m1.keys().cloned().collect::<Vec<_>>().join("\n")
    );
    let routes = m1
        .keys()
        .filter(|k| k.starts_with("vault_route_") && k.ends_with("_count"))
        .map(|k| (k.clone(), delta(k)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    // (`vault_route_read_sys_` is that metrics read.)
    let s = Steady {
        window: elapsed,
        requests,
        routes,
        agent_cpu: cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).collect(),
        bao_cpu: bao1 - bao0,
        bao_idle_cpu: fleet.bao_idle * elapsed,
        bench_cpu: me1 - me0,
        load_before,
        load_after,
    };
    print_steady(fleet.n(), &s);
    s
}

fn print_steady(n: usize, s: &Steady) {
    let per_s = s.requests / s.window;
    println!(
        "OpenBao requests (vault_core_handle_request_count): {:.0} in {:.1} s = {:.1}/s, {:.3}/s per agent",
        s.requests,
        s.window,
        per_s,
        per_s / n as f64
    );
    for (route, d) in &s.routes {
        println!("  {route:<60} {d:>8.0} ({:.3}/s per agent)", d / s.window / n as f64);
    }
    let total: f64 = s.agent_cpu.iter().sum();
    let (min, p50, max) = spread(&s.agent_cpu);
    println!(
        "agents' CPU: {:.2} s in all = {:.2} % of a core; per agent {:.3} ms/s (mean), min {:.3} / p50 {:.3} / max {:.3} ms/s",
        total,
        total / s.window * 100.0,
        total / n as f64 / s.window * 1e3,
        min / s.window * 1e3,
        p50 / s.window * 1e3,
        max / s.window * 1e3
    );
    println!(
        "OpenBao's CPU: {:.2} s = {:.2} % of a core; {:.1} µs of CPU per request; less its idle CPU ({:.2} s): {:.1} µs per request",
        s.bao_cpu,
        s.bao_cpu / s.window * 100.0,
        s.bao_cpu / s.requests * 1e6,
        s.bao_idle_cpu,
        (s.bao_cpu - s.bao_idle_cpu) / s.requests * 1e6
    );
    println!(
        "the bench's own CPU meanwhile: {:.2} s; at the end: {}",
        s.bench_cpu, s.load_after
    );
}

/// (min, p50, max) of `xs`.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], percentile(&v, 0.5), v[v.len() - 1])
}

// -------------------------------------------------------------------- memory

struct Memory {
    rss_kb: Vec<f64>,
    pss_kb: Vec<f64>,
    bao_rss_kb: f64,
    threads: Vec<f64>,
}

/// `field` (in kB) of a /proc file of `key: value kB` lines.
fn proc_kb(path: &str, field: &str) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn memory(fleet: &Fleet) -> Memory {
    let mut m = Memory {
        rss_kb: Vec::new(),
        pss_kb: Vec::new(),
        bao_rss_kb: proc_kb(&format!("/proc/{}/status", fleet.bao.pid()), "VmRSS").unwrap_or(f64::NAN),
        threads: Vec::new(),
    };
    for i in 0..fleet.n() {
        let pid = fleet.pid(i);
        m.rss_kb
            .push(proc_kb(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(f64::NAN));
        if let Some(pss) = proc_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss") {
            m.pss_kb.push(pss);
        }
        m.threads
            .push(proc_kb(&format!("/proc/{pid}/status"), "Threads").unwrap_or(f64::NAN));
    }
    print_memory(&m);
    m
}

fn print_memory(m: &Memory) {
    let (min, p50, max) = spread(&m.rss_kb);
    println!(
        "agents' RSS: mean {:.1} MiB, min {:.1} / p50 {:.1} / max {:.1} MiB",
        mean(&m.rss_kb) / 1024.0,
        min / 1024.0,
        p50 / 1024.0,
        max / 1024.0
    );
    if m.pss_kb.is_empty() {
        println!("agents' PSS: /proc/PID/smaps_rollup not readable");
    } else {
        let (min, p50, max) = spread(&m.pss_kb);
        println!(
            "agents' PSS: mean {:.1} MiB, min {:.1} / p50 {:.1} / max {:.1} MiB",
            mean(&m.pss_kb) / 1024.0,
            min / 1024.0,
            p50 / 1024.0,
            max / 1024.0
        );
    }
    println!(
        "agents' threads: mean {:.1}; OpenBao's RSS {:.1} MiB",
        mean(&m.threads),
        m.bao_rss_kb / 1024.0
    );
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

// --------------------------------------------------------------- propagation

/// A WatchKeys stream on agent `i`, read by a task that stamps each event.
async fn watcher(fleet: &Fleet, i: usize) -> (Events, tokio::task::JoinHandle<()>) {
    bench::watch_events(&fleet.dirs[i].join("keys.sock"), key()).await
}

/// Drains `rx` until an event of at least `generation`; when it arrived
/// and its primary.
async fn until_generation(rx: &mut Events, i: usize, generation: u64) -> (Instant, Vec<u8>) {
    bench::until_generation(rx, &format!("agent {i}"), generation, EVENT_TIMEOUT).await
}

/// Per rotation: the PromoteKey call and promote → each agent's watcher, ms.
struct Propagation {
    call: Vec<f64>,
    /// Per rotation, per agent.
    times: Vec<Vec<f64>>,
    /// OpenBao requests during the rotations (stage, promote, retire each),
    /// and how long they took, s.
    requests: f64,
    seconds: f64,
    /// The agents' CPU, and OpenBao's, during the rotations, s.
    agent_cpu: f64,
    bao_cpu: f64,
    /// Requests during the rotations by what they were, from OpenBao's
    /// audit log (on only then).
    kinds: BTreeMap<String, u64>,
}

async fn propagation(fleet: &Fleet, rotations: usize, poll: Duration) -> Propagation {
    println!(
        "promote -> every agent's watcher, poll_interval {} ms: {rotations} rotations on agent 0 ({})",
        poll.as_millis(),
        uptime()
    );
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..fleet.n() {
        let (mut rx, task) = watcher(fleet, i).await;
        until_generation(&mut rx, i, 1).await;
        watchers.push(rx);
        tasks.push(task);
    }
    let mut admin = fleet.admin(0).await;
    let mut out = Propagation {
        call: Vec::new(),
        times: Vec::new(),
        requests: 0.0,
        seconds: 0.0,
        agent_cpu: 0.0,
        bao_cpu: 0.0,
        kinds: BTreeMap::new(),
    };
    let audit_log = fleet.tmp.path().join("bao-audit.jsonl");
    fleet.audit(Some(&audit_log)).await;
    let count = |m: &BTreeMap<String, f64>| m.get("vault_core_handle_request_count").copied().unwrap_or(0.0);
    let pids: Vec<u32> = (0..fleet.n()).map(|i| fleet.pid(i)).collect();
    let agents_cpu = || pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let before = count(&samples(&fleet.bao_metrics().await));
    let (agents0, bao0) = (agents_cpu(), cpu_seconds(fleet.bao.pid()));
    let started = Instant::now();
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "#", "call ms", "min ms", "p50 ms", "p90 ms", "last ms"
    );
    for n in 1..=rotations {
        let secret = format!("sk_live_scale_bench_{n:03}_0123456789abcdef0123");
        let r = bench::timed_promote(&mut admin, key(), &secret, &mut watchers, poll, EVENT_TIMEOUT).await;
        let mut sorted = r.seen.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{n:>4} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.call,
            sorted[0],
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.9),
            sorted[sorted.len() - 1]
        );
        out.call.push(r.call);
        out.times.push(r.seen);
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.agent_cpu = agents_cpu() - agents0;
    out.bao_cpu = cpu_seconds(fleet.bao.pid()) - bao0;
    out.requests = count(&samples(&fleet.bao_metrics().await)) - before - 1.0;
    fleet.audit(None).await;
    out.kinds = audit_kinds(&audit_log);
    // The watch streams end before the agents are stopped.
    for task in tasks {
        task.abort();
    }
    out
}

// -------------------------------------------------------------------- report

type Result4 = (String, Steady, Memory, Propagation);

/// OpenBao requests per change per agent, beyond the steady rate: the
/// rotations' requests less what the steady rate gives over their time,
/// over 3 changes (stage, promote, retire) per rotation and the agents.
fn per_change(n: usize, s: &Steady, p: &Propagation) -> f64 {
    let steady = s.requests / s.window * p.seconds;
    (p.requests - steady) / (3.0 * p.times.len() as f64) / n as f64
}

fn summary(n: usize, results: &[Result4]) {
    println!("\n================ summary: {n} agents, one OpenBao ================");
    println!(
        "{:<18} {:>8} {:>10} {:>12} {:>14} {:>12} {:>12}",
        "poll_interval", "window", "req/s", "req/s/agent", "agent CPU ms/s", "bao CPU %", "bao µs/req"
    );
    for (name, s, _, _) in results {
        let total: f64 = s.agent_cpu.iter().sum();
        println!(
            "{name:<18} {:>7.1}s {:>10.1} {:>12.3} {:>14.3} {:>12.2} {:>12.1}",
            s.window,
            s.requests / s.window,
            s.requests / s.window / n as f64,
            total / n as f64 / s.window * 1e3,
            s.bao_cpu / s.window * 100.0,
            s.bao_cpu / s.requests * 1e6
        );
        println!("{:<18} load: {} -> {}", "", s.load_before, s.load_after);
    }
    println!("\nmemory per agent (MiB): RSS mean / min / max; PSS mean / min / max");
    for (name, _, m, _) in results {
        let (rmin, _, rmax) = spread(&m.rss_kb);
        let pss = if m.pss_kb.is_empty() {
            "n/a".to_owned()
        } else {
            let (pmin, _, pmax) = spread(&m.pss_kb);
            format!(
                "{:.1} / {:.1} / {:.1}",
                mean(&m.pss_kb) / 1024.0,
                pmin / 1024.0,
                pmax / 1024.0
            )
        };
        println!(
            "{name:<18} RSS {:.1} / {:.1} / {:.1}; PSS {pss}; OpenBao RSS {:.1}",
            mean(&m.rss_kb) / 1024.0,
            rmin / 1024.0,
            rmax / 1024.0,
            m.bao_rss_kb / 1024.0
        );
    }
    println!("\npromote on agent 0 -> each agent's watcher has the promoted generation, ms (min / p50 / max over the {n} agents)");
    for (name, _, _, p) in results {
        for (r, times) in p.times.iter().enumerate() {
            let (min, p50, max) = spread(times);
            println!(
                "{name:<18} rotation {:>2}: call {:>6.1}  min {:>7.1}  p50 {:>7.1}  max {:>7.1}",
                r + 1,
                p.call[r],
                min,
                p50,
                max
            );
        }
        let all: Vec<f64> = p.times.iter().flatten().copied().collect();
        let lasts: Vec<f64> = p.times.iter().map(|t| spread(t).2).collect();
        let (min, p50, max) = spread(&all);
        let (lmin, lp50, lmax) = spread(&lasts);
        println!(
            "{name:<18} all rotations: every agent min {min:.1} / p50 {p50:.1} / max {max:.1}; last agent per rotation min {lmin:.1} / p50 {lp50:.1} / max {lmax:.1}"
        );
    }
    println!("\nduring the rotations (3 changes each: stage, promote, retire; OpenBao's audit device on)");
    for (name, s, _, p) in results {
        let changes = 3.0 * p.times.len() as f64;
        let steady_agent_cpu: f64 = s.agent_cpu.iter().sum::<f64>() / s.window * p.seconds;
        println!(
            "{name:<18} {:.0} requests in {:.1} s; beyond the steady rate: {:.2} requests per change per agent",
            p.requests,
            p.seconds,
            per_change(n, s, p)
        );
        println!(
            "{name:<18} agents' CPU {:.2} s ({:.2} s beyond the steady rate: {:.2} ms per change per agent); OpenBao's CPU {:.2} s",
            p.agent_cpu,
            p.agent_cpu - steady_agent_cpu,
            (p.agent_cpu - steady_agent_cpu) / changes / n as f64 * 1e3,
            p.bao_cpu
        );
        let polls = p.kinds.get("read changes metadata").copied().unwrap_or(0);
        let others: u64 = p.kinds.values().sum::<u64>() - polls;
        println!(
            "{name:<18} audited: {polls} polls of the marker ({:.2}/s per agent); {others} other requests = {:.2} per change per agent:",
            polls as f64 / p.seconds / n as f64,
            others as f64 / changes / n as f64
        );
        for (kind, c) in &p.kinds {
            println!(
                "{:<18}   {kind:<40} {c:>7} ({:.2} per change per agent)",
                "",
                *c as f64 / changes / n as f64
            );
        }
    }
}

// --------------------------------------------------------------------- misc

/// "load average: 1m 5m 15m" as uptime prints it.
fn uptime() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load average: {}",
        l.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
    )
}

fn rlimit_nofile() -> String {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, hard)| format!("{soft}/{hard}"))
        .unwrap_or_default()
}

fn meminfo_total() -> String {
    proc_kb("/proc/meminfo", "MemTotal").map_or(String::new(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
}
