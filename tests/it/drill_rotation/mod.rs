//! The zero-downtime rotation drill: the product's promise, measured.
//!
//! A real HTTP server on loopback plays the API provider
//! (`common::provider`): it accepts a request only while its bearer key is
//! valid there, and revokes a key when the revoker hook says so. Workers
//! call it in a loop through the Rust client's `call_with_fallback` (most
//! through a [`KeyHandle`] that follows rotations, one client fetching the
//! key on every call), and a few unchanged programs call it through
//! `keyward run` children, while `keyward rotate` runs full rotations back to
//! back (each starts the agent's rotation job and follows it to its end)
//! with the generator, validator and revoker hooks
//! (`tests/support/drill/provider_hook.py`) talking to the provider. The
//! validator also lets each job retire: it accepts the new primary after
//! its promotion (the workers' client reports no use).
//!
//! Invariant proved: with the safe sequence (revocation only at retire,
//! after promotion), **no request fails**. Then the negligent cases: the
//! provider revokes the primary before promotion (requests keep succeeding
//! on the fallback, and the spike alert reaches a webhook within a second
//! of the first refused request), and both keys revoked (requests fail, and
//! the critical `fallback_failing` alert fires).
//!
//! The same load under the agent's own schedule, with no CLI in the loop,
//! is [`schedule`]'s drill.
//!
//! Each test prints one line of figures (`drill: …`, `drill-early-revoke:
//! …`, `drill-both-revoked: …`, `drill-schedule: …`). The short version
//! runs in the normal suite; the long one is `scripts/drill-rotation`
//! (1,000 rotations each for the main and the scheduled drill, release
//! build). Parameters (environment variables, for the main and the
//! scheduled drill):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KEYWARD_DRILL_ROTATIONS` | 10 (scheduled: 5) | full rotations, back to back |
//! | `KEYWARD_DRILL_EVERY` | `200ms` | scheduled drill: the key's `every` |
//! | `KEYWARD_DRILL_WORKERS` | 32 | `call_with_fallback` workers (4 per client) |
//! | `KEYWARD_DRILL_RUN_CHILDREN` | 2 | `keyward run` children |
//! | `KEYWARD_DRILL_RUN_SPLAY` | `0s` | their `keyward run --splay` |
//! | `KEYWARD_DRILL_GRACE` | `0s` | the key's grace period |
//! | `KEYWARD_DRILL_POLL` | `20ms` | `keyward rotate --poll` |
//! | `KEYWARD_DRILL_VERBOSE` | 0 | 1: print each `keyward rotate` line with its time |

mod schedule;

use crate::common;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::provider::Provider;
use common::receiver::{Received, Receiver};
use common::*;
use keyward_client::{auth_rejection, CallError, Client, HttpStatus, KeyHandle, RotationState};

/// The drilled key.
const KEY: &str = "prod/drill";

/// The tests of this file measure time under load: one at a time (each
/// holds it; a test that panics releases it too).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A python3 for the hooks and the `keyward run` children (standard
/// library only). The system one first: hooks run with a minimal PATH, and
/// a pyenv shim would slow every restart.
fn python() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        return system;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("python3"))
                .find(|p| p.exists())
        })
        .expect("python3 (the drill's hooks and children are python3 scripts)")
}

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/drill")
        .join(name)
}

/// The agent's config: hooks talking to `provider`, alerts to `alerts`.
fn config(provider: &Provider, alerts: &Receiver, grace: &str) -> String {
    scheduled_config(provider, alerts, grace, None)
}

/// [`config`], with the key rotated by the agent `every` so long when
/// given.
fn scheduled_config(provider: &Provider, alerts: &Receiver, grace: &str, every: Option<&str>) -> String {
    let python = python().display().to_string();
    let hook = support("provider_hook.py").display().to_string();
    let url = provider.url();
    let argv = |mode: &str| format!("[\"{python}\", \"{hook}\", \"{mode}\", \"{url}\"]");
    format!(
        r#"
[rotation]
grace = "{grace}"
hook_timeout = "20s"
propagation_timeout = "20s"
[limits]
max_connections_per_uid = 512
[alerts]
agent_host = "drill"
[[alerts.sink]]
kind = "webhook"
url = "{alerts_url}"
[[key]]
keys = ["{KEY}"]
generator = {generator}
validator = {validator}
revoker = {revoker}
{every}
"#,
        alerts_url = alerts.url("/alerts"),
        generator = argv("generate"),
        validator = argv("validate"),
        revoker = argv("revoke"),
        every = every.map(|e| format!("every = \"{e}\"")).unwrap_or_default(),
    )
}

/// The provider's answer when it was not 200.
#[derive(Debug)]
struct ApiError {
    status: Option<u16>,
    detail: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.detail),
            None => write!(f, "request failed: {}", self.detail),
        }
    }
}

impl HttpStatus for ApiError {
    fn http_status(&self) -> Option<u16> {
        self.status
    }
}

fn http_client() -> reqwest::Client {
    // reqwest is built without a default TLS provider; plain HTTP needs
    // none, but building a client needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// What the workers counted.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    /// Calls whose primary was refused and the fallback accepted.
    fell_back: AtomicU64,
    /// The first failures, described (versions and provider serials, never
    /// secrets).
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
    fn fell_back(&self) -> u64 {
        self.fell_back.load(Ordering::SeqCst)
    }
}

/// How a client gets the key.
#[derive(Clone)]
enum Source {
    /// A handle kept current by a watch.
    Handle(KeyHandle),
    /// `GetKey` on every call.
    Fetch,
}

/// The `call_with_fallback` workers: `workers` tasks, 4 per client; with
/// more than one client, the last one fetches the key on every call. Their
/// clients keep the default fallback cool-down (a refused version is
/// skipped for 30 s, and reported once per cool-down) unless `cooldown`
/// says otherwise.
struct Workers {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handles: Vec<KeyHandle>,
}

impl Workers {
    async fn start(
        agent: &TestAgent,
        provider: &Arc<Provider>,
        workers: usize,
        fetching_client: bool,
        cooldown: Option<Duration>,
    ) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let http = http_client();
        let api = format!("{}/api", provider.url());
        let started = Instant::now();
        let clients = workers.div_ceil(4);
        let mut tasks = Vec::new();
        let mut handles = Vec::new();
        for c in 0..clients {
            let mut client = Client::connect_to(agent.keys_sock())
                .await
                .expect("connect the Rust client")
                .with_service(format!("drill-{c}"));
            if let Some(cooldown) = cooldown {
                client = client.with_fallback_cooldown(cooldown);
            }
            let source = if fetching_client && clients > 1 && c == clients - 1 {
                Source::Fetch
            } else {
                let handle = client.handle(KEY).await.expect("a key handle");
                handles.push(handle.clone());
                Source::Handle(handle)
            };
            for w in (c * 4)..((c + 1) * 4).min(workers) {
                let worker = Worker {
                    id: w,
                    client: client.clone(),
                    source: source.clone(),
                    http: http.clone(),
                    api: api.clone(),
                    provider: Arc::clone(provider),
                    tally: Arc::clone(&tally),
                    stop: Arc::clone(&stop),
                    started,
                };
                tasks.push(tokio::spawn(worker.run()));
            }
        }
        Workers {
            stop,
            tally,
            tasks,
            handles,
        }
    }

    /// Waits until every handle has seen `generation`.
    async fn wait_for_generation(&self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.handles.iter().any(|h| h.current().generation < generation) {
            assert!(
                Instant::now() < deadline,
                "the handles did not get generation {generation}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a worker panicked");
        }
        self.tally
    }
}

struct Worker {
    id: usize,
    client: Client,
    source: Source,
    http: reqwest::Client,
    api: String,
    provider: Arc<Provider>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Worker {
    async fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            // The state this call will use (for the failure report only).
            let before = match &self.source {
                Source::Handle(h) => Some(h.current()),
                Source::Fetch => None,
            };
            let mut attempts = 0u32;
            let call = |secret: &keyward_client::Secret| {
                attempts += 1;
                let request = self
                    .http
                    .get(&self.api)
                    .bearer_auth(secret.expose_str().unwrap_or_default())
                    .send();
                async move {
                    let response = request.await.map_err(|e| ApiError {
                        status: None,
                        detail: e.to_string(),
                    })?;
                    match response.status().as_u16() {
                        200 => Ok(()),
                        status => Err(ApiError {
                            status: Some(status),
                            detail: response.text().await.unwrap_or_default(),
                        }),
                    }
                }
            };
            let result = match &self.source {
                Source::Handle(h) => self.client.call_with_fallback(h, call, auth_rejection).await,
                Source::Fetch => self.client.call_with_fallback(KEY, call, auth_rejection).await,
            };
            self.tally.requests.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(()) if attempts > 1 => {
                    self.tally.fell_back.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {}
                Err(e) => {
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                    let mut failures = self.tally.failures.lock().unwrap();
                    if failures.len() < 20 {
                        failures.push(self.describe_failure(&e, before.as_deref(), attempts));
                    }
                }
            }
        }
    }

    /// A failure in words: when, the error, and the state the call used
    /// (versions and the provider's serial and validity of each key).
    fn describe_failure(
        &self,
        e: &CallError<ApiError>,
        before: Option<&keyward_client::KeySet>,
        attempts: u32,
    ) -> String {
        let key = |v: &keyward_client::KeyVersion| {
            let secret = v.secret.expose_str().unwrap_or_default();
            format!(
                "v{} (provider key #{}, {})",
                v.version,
                self.provider.serial(secret),
                if self.provider.is_valid(secret) {
                    "valid now"
                } else {
                    "revoked"
                }
            )
        };
        let state = |s: &keyward_client::KeySet| {
            format!(
                "generation {} {:?}: primary {}, fallback {}",
                s.generation,
                s.state,
                key(&s.primary),
                s.fallback.as_ref().map_or("none".to_owned(), key)
            )
        };
        let now = match &self.source {
            Source::Handle(h) => state(&h.current()),
            Source::Fetch => "(fetched per call)".to_owned(),
        };
        format!(
            "worker {} at {:.3}s, {attempts} attempt(s): {e}; it used {}; the handle has {now}",
            self.id,
            self.started.elapsed().as_secs_f64(),
            before.map_or("a fresh fetch".to_owned(), state),
        )
    }
}

/// A `keyward run` child: keyward run, restarting `run_child.py` when the
/// primary changes (the default `--restart-on primary`: once per rotation,
/// at the promote), each copy appending its start and its counts to `out`.
struct RunChild {
    child: std::process::Child,
    out: PathBuf,
    log: PathBuf,
}

impl RunChild {
    fn start(agent: &TestAgent, provider: &Provider, dir: &Path, n: usize, splay: &str) -> RunChild {
        let out = dir.join(format!("run-{n}.counts"));
        let log = dir.join(format!("run-{n}.log"));
        // One file, one offset for both streams: two opens would each
        // write from 0, over each other.
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(KEYWARD)
            .arg("--dev")
            .arg(&agent.dir)
            .args(["run", "--key", &format!("{KEY}=DRILL_KEY"), "--splay", splay])
            .args(["--stop-timeout", "5s", "--"])
            .arg(python())
            .arg(support("run_child.py"))
            .arg(provider.addr().to_string())
            .arg(&out)
            .arg("DRILL_KEY")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start keyward run");
        RunChild { child, out, log }
    }

    /// SIGTERM to keyward run, which passes it on to the program, and
    /// waits for both.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, Duration::from_secs(20))
    }

    /// Waits (10 s at most) until keyward run has restarted its program
    /// with `version` of the key as the primary.
    async fn wait_for_restart_with(&self, version: u64) {
        let restarted = |log: String| {
            log.lines()
                .filter_map(|l| {
                    l.split_once("restarting the command with ")
                        .map(|(_, with)| with.to_owned())
                })
                .any(|with| restarted_with(&with, version))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !restarted(text(&std::fs::read(&self.log).unwrap_or_default())) {
            assert!(
                Instant::now() < deadline,
                "keyward run did not restart its program with primary v{version}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many copies of the program have started so far.
    fn starts(&self) -> u64 {
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        out.lines().filter(|l| *l == "start").count() as u64
    }

    /// Waits (10 s at most) until `n` copies of the program have started.
    async fn wait_for_starts(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.starts() < n {
            assert!(
                Instant::now() < deadline,
                "keyward run started its program {} times, not {n}",
                self.starts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops it, and adds what it and its program's copies counted to
    /// `counts`.
    fn stop(mut self, counts: &mut RunCounts) {
        let status = self.terminate().expect("keyward run stops");
        let log = std::fs::read(&self.log).unwrap_or_default();
        // 143: the SIGTERM reached a copy still starting, before it set its
        // handler (it had made no request yet).
        assert!(
            status.success() || status.code() == Some(143),
            "keyward run exited with {status}: {}",
            text(&log)
        );
        let said = text(&log);
        let restarts: Vec<&str> = said
            .lines()
            .filter_map(|l| l.split_once("restarting the command with ").map(|(_, with)| with))
            .collect();
        counts.restarts += restarts.len() as u64;
        counts.last_restart.push(restarts.last().unwrap_or(&"").to_string());
        counts.logs.extend(log);
        counts.starts.push(self.starts());
        for line in std::fs::read_to_string(&self.out).unwrap_or_default().lines() {
            if line == "start" {
                continue;
            }
            let Some(done) = line.strip_prefix("done ") else {
                if counts.failures.len() < 20 {
                    counts.failures.push(line.to_owned());
                }
                continue;
            };
            for field in done.split(' ') {
                let (name, value) = field.split_once('=').expect("name=value");
                let value: u64 = value.parse().expect("a count");
                match name {
                    "ok" => counts.requests += value,
                    "fail" => {
                        counts.requests += value;
                        counts.failed += value;
                    }
                    "fell_back" => counts.fell_back += value,
                    _ => {}
                }
            }
        }
    }
}

impl Drop for RunChild {
    /// A failed test does not leave keyward run and its program behind.
    fn drop(&mut self) {
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether keyward run's "restarting the command with WITH" gave the
/// program `version` of the drilled key as its primary. WITH is `ENV/NAME
/// generation N (primary vV FINGERPRINT)`: the generation is the promote's,
/// or the retire's when that came first (the retire alone restarts
/// nothing).
fn restarted_with(with: &str, version: u64) -> bool {
    with.starts_with(&format!("{KEY} generation ")) && with.contains(&format!(" (primary v{version} "))
}

/// What the `keyward run` children counted, summed.
#[derive(Default)]
struct RunCounts {
    requests: u64,
    failed: u64,
    fell_back: u64,
    /// Restarts, as keyward run reported them.
    restarts: u64,
    /// Each child's last restart (`ENV/NAME generation N (primary …)`).
    last_restart: Vec<String>,
    /// How many copies of its program each child started (the first, and
    /// one per restart), as the copies wrote it.
    starts: Vec<u64>,
    /// The first failure lines.
    failures: Vec<String>,
    /// What keyward run printed.
    logs: Vec<u8>,
}

/// Asserts that no provider key (nor its random part) occurs in `haystack`.
fn assert_no_provider_key(what: &str, haystack: &[u8], provider: &Provider) {
    assert!(
        !haystack.windows(9).any(|w| w == b"pk_drill_"),
        "a provider key leaked into {what}"
    );
    // Each key's random part, in case something printed it without the
    // prefix: look at every 32-character window of every hex run.
    let bodies: HashSet<Vec<u8>> = provider
        .keys()
        .into_keys()
        .map(|k| k.trim_start_matches("pk_drill_").as_bytes().to_vec())
        .collect();
    let mut run_start = 0;
    for (i, b) in haystack.iter().enumerate() {
        if !b.is_ascii_hexdigit() {
            run_start = i + 1;
            continue;
        }
        if i + 1 - run_start >= 32 {
            assert!(
                !bodies.contains(&haystack[i + 1 - 32..=i]),
                "a provider key's random part leaked into {what}"
            );
        }
    }
}

/// Records when each alert arrives at the receiver (1 ms resolution).
struct AlertClock {
    arrivals: Arc<Mutex<Vec<(Instant, Received)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AlertClock {
    fn start(receiver: Arc<Receiver>) -> AlertClock {
        let arrivals: Arc<Mutex<Vec<(Instant, Received)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&arrivals), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let got = receiver.received();
                let mut a = a.lock().unwrap();
                let seen = a.len();
                let now = Instant::now();
                a.extend(got.into_iter().skip(seen).map(|r| (now, r)));
                drop(a);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        AlertClock {
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (up to 10 s) for an alert with `signal` and status firing;
    /// returns when it arrived and its body.
    async fn wait_for(&self, signal: &str) -> (Instant, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((at, r)) = self
                .arrivals
                .lock()
                .unwrap()
                .iter()
                .find(|(_, r)| r.body["signal"] == signal && r.body["status"] == "firing")
            {
                return (*at, r.body.clone());
            }
            assert!(
                Instant::now() < deadline,
                "no {signal} alert within 10 s; received: {:#?}",
                self.bodies()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.body.clone())
            .collect()
    }
}

impl Drop for AlertClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `keyward rotate ARGS… prod/drill` (blocking, off the runtime).
/// With `KEYWARD_DRILL_VERBOSE=1`, prints its output, each line with the
/// milliseconds since the command started.
async fn rotate(agent: &TestAgent, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(KEYWARD);
    cmd.arg("--dev").arg(&agent.dir).arg("rotate").args(args).arg(KEY);
    let verbose = param("KEYWARD_DRILL_VERBOSE", 0u8) > 0;
    tokio::task::spawn_blocking(move || {
        if !verbose {
            return run_cli(&mut cmd, None);
        }
        use std::io::BufRead;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyward");
        let mut stdout = Vec::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            eprintln!("{:>6} ms  {line}", started.elapsed().as_millis());
            stdout.extend_from_slice(line.as_bytes());
            stdout.push(b'\n');
        }
        let mut out = child.wait_with_output().unwrap();
        eprintln!("{:>6} ms  (exit {})", started.elapsed().as_millis(), out.status);
        out.stdout = stdout;
        out
    })
    .await
    .unwrap()
}

/// The agent's rotation status of the drilled key (`GetRotationStatus`).
async fn rotation_status(agent: &TestAgent) -> keyward::proto::RotationStatus {
    let (env, name) = KEY.split_once('/').unwrap();
    agent
        .admin()
        .await
        .get_rotation_status(keyward::proto::RotationStatusRequest { key: key(env, name) })
        .await
        .expect("the rotation status")
        .into_inner()
}

/// Waits until every worker and `keyward run` child is under way (20 s at
/// most) and every watcher of the key is subscribed; returns how many
/// watchers the agent counts.
/// What both drills start from: the provider, the alert receiver and its
/// clock, an agent holding a key the provider issued, and the workers and
/// `keyward run` children, warmed up (`subscribers`: the key's watchers).
struct Drill {
    provider: Arc<Provider>,
    alerts: Arc<Receiver>,
    clock: AlertClock,
    agent: TestAgent,
    scratch: tempfile::TempDir,
    pool: Workers,
    children: Vec<RunChild>,
    subscribers: usize,
}

impl Drill {
    async fn start(grace: &str, workers: usize, run_children: usize, run_splay: &str) -> Drill {
        let provider = Arc::new(Provider::start());
        let alerts = Arc::new(Receiver::start());
        let clock = AlertClock::start(Arc::clone(&alerts));
        let agent = TestAgent::start_with_config(&config(&provider, &alerts, grace));
        agent.put(KEY, &provider.issue());
        let scratch = tempfile::tempdir().unwrap();
        let pool = Workers::start(&agent, &provider, workers, true, None).await;
        let children: Vec<RunChild> = (0..run_children)
            .map(|n| RunChild::start(&agent, &provider, scratch.path(), n, run_splay))
            .collect();
        let subscribers = warm_up(&agent, &pool, &provider, &children).await;
        Drill {
            provider,
            alerts,
            clock,
            agent,
            scratch,
            pool,
            children,
            subscribers,
        }
    }
}

async fn warm_up(agent: &TestAgent, pool: &Workers, provider: &Provider, children: &[RunChild]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = pool.tasks.len() as u64;
    let children_going = || {
        children.is_empty()
            || (children.iter().all(|c| c.starts() > 0) && provider.accepted() >= pool.tally.requests() + 20)
    };
    while pool.tally.requests() < workers * 5 || !children_going() {
        assert!(Instant::now() < deadline, "the workers did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // keyward run subscribes beside its program's first requests.
    wait_for_subscribers(agent, pool.handles.len() + children.len()).await
}

/// Waits (20 s at most) until the agent counts `n` watchers of the key;
/// returns how many it counts.
async fn wait_for_subscribers(agent: &TestAgent, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subscribers = rotation_status(agent).await.subscribers;
        if subscribers.len() >= n {
            return subscribers.len();
        }
        assert!(
            Instant::now() < deadline,
            "{n} watchers of {KEY} expected, the agent counts {}: {subscribers:#?}",
            subscribers.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The drill: workers and `keyward run` children call the provider while
/// `keyward rotate` runs full rotations back to back. No request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_rotations_run_back_to_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rotations: usize = param("KEYWARD_DRILL_ROTATIONS", 10);
    let workers: usize = param("KEYWARD_DRILL_WORKERS", 32);
    let run_children: usize = param("KEYWARD_DRILL_RUN_CHILDREN", 2);
    let run_splay: String = param("KEYWARD_DRILL_RUN_SPLAY", "0s".to_owned());
    let grace: String = param("KEYWARD_DRILL_GRACE", "0s".to_owned());
    let poll: String = param("KEYWARD_DRILL_POLL", "20ms".to_owned());

    let Drill {
        provider,
        alerts: _alerts,
        clock,
        agent,
        scratch: _scratch,
        pool,
        children,
        subscribers,
    } = Drill::start(&grace, workers, run_children, &run_splay).await;

    let started = Instant::now();
    let mut times = Vec::with_capacity(rotations);
    let mut cli_output = Vec::new();
    for i in 0..rotations {
        let t = Instant::now();
        let out = rotate(&agent, &["--poll", &poll]).await;
        times.push(t.elapsed());
        cli_output.extend_from_slice(&out.stdout);
        cli_output.extend_from_slice(&out.stderr);
        let stdout = text(&out.stdout);
        // keyward rotate follows the agent's job and ends with its result:
        // `ok: …` (exit 0) when the old key is retired.
        if !out.status.success() || !stdout.lines().any(|l| l.starts_with("ok: ")) {
            pool.stop.store(true, Ordering::SeqCst);
            panic!(
                "rotation {} of {rotations} failed ({}):\n{stdout}{}",
                i + 1,
                out.status,
                text(&out.stderr)
            );
        }
    }
    let elapsed = started.elapsed();
    // A last stretch of calls on the final key (the first is version 1,
    // each rotation stages one more).
    let last_version = 1 + rotations as u64;
    if rotations > 0 {
        for child in &children {
            child.wait_for_restart_with(last_version).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let tally = pool.stop().await;
    let mut run = RunCounts::default();
    for child in children {
        child.stop(&mut run);
    }

    times.sort();
    let alerts_seen = clock.bodies();
    let count = |signal: &str| alerts_seen.iter().filter(|b| b["signal"] == signal).count();
    println!(
        "drill: rotations={rotations} workers={workers} run_children={run_children} grace={grace} \
         requests={} failed={} fell_back={} run_requests={} run_failed={} run_fell_back={} \
         run_restarts={} rotation_ms p50={:.0} p90={:.0} p99={:.0} max={:.0} elapsed_s={:.1} \
         subscribers={subscribers} provider_accepted={} provider_refused={} alerts_stale_version={}",
        tally.requests(),
        tally.failed(),
        tally.fell_back(),
        run.requests,
        run.failed,
        run.fell_back,
        run.restarts,
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        elapsed.as_secs_f64(),
        provider.accepted(),
        provider.refused(),
        count("stale_version"),
    );

    // The promise: no request failed, through the client or keyward run.
    let failures = tally.failures.lock().unwrap().clone();
    assert_eq!(
        tally.failed(),
        0,
        "requests failed during the rotations:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        run.failed,
        0,
        "keyward run children's requests failed:\n{}\nkeyward run said:\n{}",
        run.failures.join("\n"),
        text(&run.logs)
    );
    assert!(tally.requests() >= workers as u64 * 10, "the workers made progress");
    if run_children > 0 && rotations > 0 {
        assert!(run.requests > 0, "the keyward run children made requests");
        // Each followed the rotations to the end: its last restart was
        // with the final primary.
        for (n, restart) in run.last_restart.iter().enumerate() {
            assert!(
                restarted_with(restart, last_version),
                "keyward run child {n}'s last restart was with {restart:?}, not the final primary v{last_version}"
            );
        }
    }

    // Every rotation went through the provider: each new key was issued by
    // the generator and checked by the validator, each old one revoked; the
    // only valid key is the agent's primary.
    let issued = provider.keys();
    assert_eq!(issued.len(), rotations + 1, "one key issued per rotation");
    assert_eq!(
        provider.checks(),
        2 * rotations as u64,
        "the validator checked each new key twice: when it was staged, and after its promotion (the evidence that lets the job retire)"
    );
    assert_eq!(
        provider.revokes(),
        rotations as u64,
        "the revoker ran once per rotation"
    );
    let valid = provider.valid_keys();
    assert_eq!(valid.len(), 1, "every retired key was revoked");
    let client = Client::connect_to(agent.keys_sock()).await.unwrap();
    let now = client.get(KEY).await.unwrap();
    assert_eq!(now.state, RotationState::Steady);
    assert!(now.fallback.is_none());
    assert!(
        now.primary.secret.expose() == valid[0].as_bytes(),
        "the agent's primary is the provider's valid key"
    );
    // Put, then stage, promote and retire per rotation.
    assert_eq!(now.generation, 1 + 3 * rotations as u64);
    assert_eq!(now.primary.version, last_version);

    // No critical alert: nothing was refused that the agent considers
    // serving (a stale_version warning is a worker that used a state one
    // step old, and got through on its fallback).
    for signal in ["spike", "fallback_failing", "agent_health"] {
        assert_eq!(
            count(signal),
            0,
            "{signal} alert during a clean drill: {alerts_seen:#?}"
        );
    }

    // No provider key in the agent's output, its audit log, the CLI's
    // output or keyward run's.
    assert_clean_end(
        &agent,
        &provider,
        &[
            ("keyward rotate's output", &cli_output),
            ("keyward run's output", &run.logs),
        ],
    );
}

/// The end of a drill: no provider key in the agent's output, its audit
/// log or `outputs`, and the audit chain verifies.
fn assert_clean_end(agent: &TestAgent, provider: &Provider, outputs: &[(&str, &[u8])]) {
    assert_no_provider_key("the agent's logs", agent.logs().as_bytes(), provider);
    let audit = std::fs::read(agent.audit_file()).unwrap();
    assert_no_provider_key("the audit log", &audit, provider);
    for (what, bytes) in outputs {
        assert_no_provider_key(what, bytes, provider);
    }
    let verify = agent.cli(&["audit", "verify"], None);
    assert!(verify.status.success(), "audit chain: {}", text(&verify.stdout));
}

/// Sets up a key mid-rotation (STAGED: the old key primary, the provider's
/// new key as fallback) with `workers` handle workers calling the provider
/// (their clients' fallback cool-down: `cooldown`, else the default).
/// Returns the old and the new key.
async fn staged_under_load(
    agent: &TestAgent,
    provider: &Arc<Provider>,
    workers: usize,
    cooldown: Option<Duration>,
) -> (Workers, String, String) {
    let old = provider.issue();
    agent.put(KEY, &old);
    let pool = Workers::start(agent, provider, workers, false, cooldown).await;
    let out = rotate(agent, &["--until", "staged", "--poll", "20ms"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let staged = Client::connect_to(agent.keys_sock())
        .await
        .unwrap()
        .get(KEY)
        .await
        .unwrap();
    assert_eq!(staged.state, RotationState::Staged);
    pool.wait_for_generation(staged.generation).await;
    let new = staged.fallback.unwrap().secret.expose_str().unwrap().to_owned();
    assert!(provider.is_valid(&new), "the generator's key is valid at the provider");
    // Under way on the staged state before anything is revoked.
    let before = pool.tally.requests();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.tally.requests() < before + workers as u64 * 5 {
        assert!(Instant::now() < deadline, "the workers stalled on the staged key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(provider.refused(), 0, "nothing refused before the revocation");
    (pool, old, new)
}

/// Negligent case 1: the provider revokes the primary before promotion.
/// Requests keep succeeding on the fallback; the spike alert reaches the
/// webhook within a second of the first refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_revocation_keeps_requests_on_the_fallback_and_alerts_within_a_second() {
    let _one = ONE_AT_A_TIME.lock().await;
    let provider = Arc::new(Provider::start());
    let alerts = Arc::new(Receiver::start());
    let clock = AlertClock::start(Arc::clone(&alerts));
    let agent = TestAgent::start_with_config(&config(&provider, &alerts, "0s"));
    let workers = 8;
    // The spike detector counts reports (spike_threshold, 5 in a window);
    // with the default cool-down each of the drill's 2 clients reports the
    // revoked primary once per 30 s and then skips it, too few for it.
    // This drill times the agent's path from a stream of refused requests
    // to the alert: its clients keep trying the primary (cool-down zero:
    // every refusal counted, a report per 200 ms per client).
    let (pool, old, _new) = staged_under_load(&agent, &provider, workers, Some(Duration::ZERO)).await;

    let before = pool.tally.requests();
    provider.revoke(&old);
    let (arrived, alert) = clock.wait_for("spike").await;
    let first_refusal = provider.first_refusal().expect("the old key was refused");
    let latency = arrived.saturating_duration_since(first_refusal);
    // Requests go on a while longer (at least half a second, and 10 per
    // worker), all on the fallback.
    let until = Instant::now() + Duration::from_millis(500);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until || pool.tally.requests() < before + workers as u64 * 10 {
        assert!(Instant::now() < deadline, "the workers stalled after the revocation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tally = pool.stop().await;
    let after = tally.requests() - before;

    println!(
        "drill-early-revoke: workers={workers} requests_after_revoke={after} failed={} fell_back={} \
         provider_refused={} spike_alert_ms={:.0}",
        tally.failed(),
        tally.fell_back(),
        provider.refused(),
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(
        tally.failed(),
        0,
        "requests failed although the fallback was valid:\n{}",
        tally.failures.lock().unwrap().join("\n")
    );
    assert!(tally.fell_back() > 0, "the fallback served them");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["key"], KEY, "{alert}");
    assert_eq!(alert["version"], 1, "the refused version is the old primary: {alert}");
    assert!(
        latency < Duration::from_secs(1),
        "the spike alert came {latency:?} after the first refused request (target: under 1 s)"
    );
    let bodies = clock.bodies();
    assert!(
        !bodies.iter().any(|b| b["signal"] == "fallback_failing"),
        "the fallback works: no outage alert: {bodies:#?}"
    );
    assert_no_provider_key("the agent's logs", agent.logs().as_bytes(), &provider);
    assert_no_provider_key("the audit log", &std::fs::read(agent.audit_file()).unwrap(), &provider);
}

/// Negligent case 2: both keys revoked. Requests fail, and the critical
/// "both failing" alert (`fallback_failing`) fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_keys_revoked_fails_requests_and_raises_fallback_failing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let provider = Arc::new(Provider::start());
    let alerts = Arc::new(Receiver::start());
    let clock = AlertClock::start(Arc::clone(&alerts));
    let agent = TestAgent::start_with_config(&config(&provider, &alerts, "0s"));
    let workers = 8;
    let (pool, old, new) = staged_under_load(&agent, &provider, workers, None).await;

    provider.revoke(&new);
    provider.revoke(&old);
    let (arrived, alert) = clock.wait_for("fallback_failing").await;
    let first_refusal = provider.first_refusal().expect("the keys were refused");
    let latency = arrived.saturating_duration_since(first_refusal);
    // Requests go on failing while both keys stay revoked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = pool.stop().await;

    println!(
        "drill-both-revoked: workers={workers} requests={} failed={} provider_refused={} \
         fallback_failing_alert_ms={:.0}",
        tally.requests(),
        tally.failed(),
        provider.refused(),
        latency.as_secs_f64() * 1000.0
    );
    assert!(tally.failed() > 0, "requests fail when both keys are revoked");
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["key"], KEY, "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("both keys are refused"),
        "{alert}"
    );
    assert!(
        latency < Duration::from_secs(1),
        "the fallback_failing alert came {latency:?} after the first refused request (target: under 1 s)"
    );
    assert_no_provider_key("the agent's logs", agent.logs().as_bytes(), &provider);
    assert_no_provider_key("the audit log", &std::fs::read(agent.audit_file()).unwrap(), &provider);
}
