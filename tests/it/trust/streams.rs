//! A caller that opens every stream it can, and a subscriber that never
//! reads: the agent's memory stays bounded, other callers keep being
//! served, and a rotation is not held up.
//!
//! - The attacker (uid 2021, granted the key) uses every connection it is
//!   allowed and opens as many streams as it can on each, with a raw
//!   HTTP/2 client: `WatchKeys` streams it never reads, then calls whose
//!   request never comes (headers only), then requests that stop short of
//!   their announced size. The caps hold (refusals are
//!   `RESOURCE_EXHAUSTED` naming the setting), the agent's RSS grows by
//!   less than 64 MiB, uid 2022 is served during and after, and the memory
//!   comes back once the attacker leaves.
//! - A subscriber whose HTTP/2 window is closed (it never takes an event)
//!   does not hold `keyward rotate` past the key's propagation timeout: it
//!   is evicted, the eviction is audited and shown by `rotation-status`,
//!   the other subscriber gets the change, the evicted stream ends with
//!   `ABORTED` saying why once its window opens, and the connection of one
//!   that keeps its window closed is closed a timeout later.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keyward::proto;
use prost::Message;
use serde_json::Value;

use crate::common::system::{helper, helper_param, helper_result, is_helper, is_root, skip, SharedDir, Uid};
use crate::common::{keep_for_leak_scan, rss_kib, text, TestAgent};

/// Granted the key; floods the agent, or never reads.
const ATTACKER: Uid = Uid::member(2021);
/// Granted the key too: a legitimate reader.
const READER: Uid = Uid::member(2022);
const KEY: &str = "prod/streams-api";
const SECRET: &str = "sk_live_streams_7d41c0e2";
const NEW_SECRET: &str = "sk_live_streams_put_during_flood_31b7";
const ROTATED_SECRET: &str = "sk_live_streams_rotated_92af";

/// How much the attack may add to the agent's RSS.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// How far above its RSS before the attack the agent may stay after it.
const RSS_AFTER_LIMIT_KIB: u64 = 16 * 1024;

/// The defaults the attack runs into (see `[limits]` in keyward::config).
const MAX_CONNECTIONS_PER_UID: usize = 64;
const MAX_STREAMS_PER_UID: u64 = 2048;
const MAX_WATCHES_PER_UID: u64 = 1024;

fn grant(uids: &[u32]) -> String {
    format!("[[grant]]\nuids = {uids:?}\nkeys = [\"{KEY}\"]\n")
}

/// Waits until `path` exists, or fails naming `what`.
fn wait_for_file(path: &Path, limit: Duration, what: &str, child: &mut Child) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what}: the helper exited early with {status}");
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The raw HTTP/2 client the helpers use.

/// A `WatchKeys` request for KEY, framed for gRPC.
fn watch_request_frame() -> Bytes {
    let (env, name) = KEY.split_once('/').unwrap();
    let msg = proto::WatchKeysRequest {
        keys: vec![proto::KeyRef {
            environment: env.to_owned(),
            name: name.to_owned(),
        }],
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

fn watch_request() -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost/keyward.v1.Keys/WatchKeys")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The grpc-status and grpc-message of a header or trailer map, if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 connection to `socket` with `builder`'s settings, driven by a
/// task of its own.
async fn h2_connect(socket: &Path, builder: &h2::client::Builder) -> Option<h2::client::SendRequest<Bytes>> {
    let io = tokio::net::UnixStream::connect(socket).await.ok()?;
    let (sender, connection) = builder.handshake(io).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(sender)
}

/// Refusals of the attacker, by message (the first 60 characters).
#[derive(Default)]
struct Tally {
    refused: Mutex<BTreeMap<String, (u64, String)>>,
    /// Watches answered with headers and no status.
    watching: AtomicU64,
    /// Calls sent whose answer never came (held by the agent).
    unanswered: AtomicU64,
    /// Streams reset or failed by HTTP/2.
    reset: AtomicU64,
}

impl Tally {
    fn refusal(&self, code: i32, message: String) {
        // By the setting the message names (its numbers vary).
        let setting = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .find(|w| w.starts_with("limits."))
            .unwrap_or("")
            .to_owned();
        let kind = format!("{code} {setting}");
        let mut r = self.refused.lock().unwrap();
        r.entry(kind).or_insert((0, message)).0 += 1;
    }

    fn json(&self) -> Value {
        let refused: serde_json::Map<String, Value> = self
            .refused
            .lock()
            .unwrap()
            .iter()
            .map(|(k, (n, m))| (k.clone(), serde_json::json!({"count": n, "message": m})))
            .collect();
        serde_json::json!({
            "watching": self.watching.load(Ordering::SeqCst),
            "unanswered": self.unanswered.load(Ordering::SeqCst),
            "reset": self.reset.load(Ordering::SeqCst),
            "refused": refused,
        })
    }
}

/// Refusals after which a connection of the watch flood stops: it has
/// learned the limit, and more only take time.
const REFUSALS_PER_CONNECTION: u64 = 64;
/// Streams a connection of the watch flood tries at most.
const MAX_TRIES_PER_CONNECTION: usize = 2048;

/// `watch`: WatchKeys streams one after the other, each answered before the
/// next, until refused REFUSALS_PER_CONNECTION times or stalled (its
/// streams are all in use); never reads them.
async fn watch_flood(sender: h2::client::SendRequest<Bytes>, tally: Arc<Tally>, held: Arc<Mutex<Vec<h2::RecvStream>>>) {
    let frame = watch_request_frame();
    let mut refusals = 0;
    let mut sender = sender;
    // Bounded, for an agent without limits: that many would already grow it
    // by far more than it may.
    for _ in 0..MAX_TRIES_PER_CONNECTION {
        if refusals >= REFUSALS_PER_CONNECTION {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(1), sender.ready()).await {
            Ok(Ok(s)) => sender = s,
            _ => return,
        }
        let Ok((response, mut body)) = sender.send_request(watch_request(), false) else {
            return;
        };
        if body.send_data(frame.clone(), true).is_err() {
            tally.reset.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), response).await {
            Ok(Ok(response)) => match grpc_status(response.headers()) {
                Some((code, message)) => {
                    tally.refusal(code, message);
                    refusals += 1;
                }
                None => {
                    tally.watching.fetch_add(1, Ordering::SeqCst);
                    held.lock().unwrap().push(response.into_body());
                }
            },
            Ok(Err(_)) => {
                tally.reset.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => return,
        }
    }
}

/// `pending` and `slow`: for `seconds`, as many calls as the connection
/// takes, each never completing its request (`slow`: after most of a
/// 1 MiB message); each answer is tallied when it comes. A connection
/// whose calls have been refused REFUSALS_PER_CONNECTION times stops, as
/// in the watch flood: the connections over the uid's limit would
/// otherwise spin through refusals (30,000 in 5 s in one run) and starve
/// the allowed ones of the attacker's CPU before they reach the stream
/// limit.
async fn churn(
    sender: h2::client::SendRequest<Bytes>,
    tally: Arc<Tally>,
    until: Instant,
    slow: Option<Bytes>,
    held: Arc<Mutex<Vec<h2::SendStream<Bytes>>>>,
) {
    let mut sender = sender;
    let refused = Arc::new(AtomicU64::new(0));
    while Instant::now() < until && refused.load(Ordering::SeqCst) < REFUSALS_PER_CONNECTION {
        // Let the connections' own tasks send and receive.
        tokio::task::yield_now().await;
        // The same handle each time: it waits while the connection's
        // streams are all in use.
        match tokio::time::timeout_at(until.into(), sender.ready()).await {
            Ok(Ok(s)) => sender = s,
            _ => return,
        }
        let Ok((response, mut body)) = sender.send_request(watch_request(), false) else {
            return;
        };
        if let Some(data) = &slow {
            let _ = body.send_data(data.clone(), false);
        }
        held.lock().unwrap().push(body);
        tally.unanswered.fetch_add(1, Ordering::SeqCst);
        let (tally, refused) = (tally.clone(), refused.clone());
        tokio::spawn(async move {
            let answer = response.await;
            tally.unanswered.fetch_sub(1, Ordering::SeqCst);
            match answer {
                Ok(r) => match grpc_status(r.headers()) {
                    Some((code, message)) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        tally.refusal(code, message)
                    }
                    None => {
                        // Answered with a stream: read to its status.
                        let (_, mut body) = r.into_parts();
                        while let Some(Ok(_)) = body.data().await {}
                        match body.trailers().await {
                            Ok(Some(t)) => match grpc_status(&t) {
                                Some((code, message)) => tally.refusal(code, message),
                                None => tally.watching.fetch_add(1, Ordering::SeqCst).ignore(),
                            },
                            _ => tally.reset.fetch_add(1, Ordering::SeqCst).ignore(),
                        }
                    }
                },
                Err(_) => tally.reset.fetch_add(1, Ordering::SeqCst).ignore(),
            }
        });
    }
}

trait Ignore {
    fn ignore(self);
}

impl Ignore for u64 {
    fn ignore(self) {}
}

/// The attacker: opens KEYWARD_HELPER_CONNECTIONS connections to the
/// socket and floods each in KEYWARD_HELPER_MODE (`watch`, `pending` or
/// `slow`, see above; the last two for KEYWARD_HELPER_SECONDS); prints what
/// it got, writes STOP.ready, and holds everything open until the STOP
/// file exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: run by the tests of this module as another uid"]
async fn flood_helper() {
    if !is_helper() {
        return;
    }
    let socket = PathBuf::from(helper_param("KEYWARD_HELPER_SOCKET"));
    let connections: usize = helper_param("KEYWARD_HELPER_CONNECTIONS").parse().unwrap();
    let mode = helper_param("KEYWARD_HELPER_MODE");
    let seconds: u64 = helper_param("KEYWARD_HELPER_SECONDS").parse().unwrap();
    let stop = PathBuf::from(helper_param("KEYWARD_HELPER_STOP"));
    let mut builder = h2::client::Builder::new();
    // Wide windows: the agent can send every initial event without this
    // client reading any, so nothing slows the flood down.
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size((1 << 31) - 1);
    let mut senders = Vec::new();
    for _ in 0..connections {
        match h2_connect(&socket, &builder).await {
            Some(s) => senders.push(s),
            None => break,
        }
    }
    let connected = senders.len();
    // Let each connection take the agent's SETTINGS (its stream limit, if
    // it has one).
    let deadline = Instant::now() + Duration::from_secs(2);
    while senders.iter().any(|s| s.current_max_send_streams() == usize::MAX) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tally = Arc::new(Tally::default());
    let watches = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(seconds);
    let slow = (mode == "slow").then(|| {
        // A prefix announcing a 1 MiB message, and all but 1 KiB of it.
        let mut data = vec![0u8; 5 + 1023 * 1024];
        data[1..5].copy_from_slice(&(1024u32 * 1024).to_be_bytes());
        Bytes::from(data)
    });
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| match mode.as_str() {
            "watch" => tokio::spawn(watch_flood(s, tally.clone(), watches.clone())),
            _ => tokio::spawn(churn(s, tally.clone(), until, slow.clone(), requests.clone())),
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Answers still on their way: until none has come for a second.
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.unanswered.load(Ordering::SeqCst) != last && Instant::now() < deadline {
        last = tally.unanswered.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut result = tally.json();
    result["connected"] = connected.into();
    println!("RESULT {result}");
    std::fs::write(stop.with_extension("ready"), b"").unwrap();
    while !stop.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The attacker's flood, as uid 2021.
fn spawn_flood(shared: &SharedDir, agent: &TestAgent, mode: &str, connections: usize, stop: &Path) -> Child {
    helper(Some(ATTACKER), "trust::streams::flood_helper", shared)
        .env("KEYWARD_HELPER_SOCKET", agent.keys_sock())
        .env("KEYWARD_HELPER_CONNECTIONS", connections.to_string())
        .env("KEYWARD_HELPER_MODE", mode)
        .env("KEYWARD_HELPER_SECONDS", "5")
        .env("KEYWARD_HELPER_STOP", stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

// ---------------------------------------------------------------------------
// The legitimate reader, and the agent's memory.

/// `keyward get --primary KEY` as the reader: served, with `expected`.
fn reader_gets(agent: &TestAgent, cli: &Path, expected: &str, when: &str) {
    let out = agent.cli_as(READER, cli, &["get", "--primary", KEY]);
    assert!(
        out.status.success(),
        "uid {} was not served {when}: {}",
        READER.uid,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim_end(), expected, "{when}");
}

/// `keyward watch --json KEY` as the reader, in the background, its events
/// read line by line.
struct ReaderWatch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ReaderWatch {
    fn start(agent: &TestAgent, cli: &Path) -> ReaderWatch {
        let mut child = READER
            .command(cli)
            .arg("--socket")
            .arg(agent.keys_sock())
            .args(["watch", "--json", KEY])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ReaderWatch { child, lines }
    }

    /// The next event, within `limit`.
    fn next(&mut self, limit: Duration, what: &str) -> Value {
        match self.lines.recv_timeout(limit) {
            Ok(line) => serde_json::from_str(&line).unwrap(),
            Err(_) => panic!("the reader's watch printed nothing within {limit:?} ({what})"),
        }
    }
}

impl Drop for ReaderWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples a process's RSS every 10 ms and keeps the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            // Until stopped, or the agent is gone.
            while !stopped.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    break;
                };
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak = peak.max(rss);
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssSampler { stop, thread }
    }

    /// The highest RSS seen, in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The agent's RSS once it has settled after an attack: it gives freed
/// memory back within seconds of its load falling (keywardd's memory.rs).
fn settled_rss(pid: u32, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rss = rss_kib(pid);
        if rss < before + RSS_AFTER_LIMIT_KIB / 2 || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many of the attacker's calls were refused with gRPC status `code`
/// and a message naming `setting` (and a limit).
fn refusals_naming(result: &Value, code: i32, setting: &str) -> u64 {
    result["refused"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(kind, r)| kind.starts_with(&format!("{code} ")) && r["message"].as_str().unwrap().contains(setting))
        .inspect(|(_, r)| assert!(r["message"].as_str().unwrap().contains("the limit is"), "{r}"))
        .map(|(_, r)| r["count"].as_u64().unwrap())
        .sum()
}

/// One phase of the flood: starts it, checks the reader is served while it
/// holds, stops it, and returns (its result, the peak RSS, the RSS after).
fn flood_phase(
    agent: &TestAgent,
    shared: &SharedDir,
    mode: &str,
    before: u64,
    during: impl FnOnce(),
) -> (Value, u64, u64) {
    let pid = agent.pid();
    let stop = shared.owned_dir(&format!("flood-{mode}"), ATTACKER).join("stop");
    let sampler = RssSampler::start(pid);
    let mut flood = spawn_flood(shared, agent, mode, 2 * MAX_CONNECTIONS_PER_UID + 8, &stop);
    // Until the attacker holds all it could open; an agent without limits
    // is caught growing past the limit before that.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.with_extension("ready").exists() {
        let rss = rss_kib(pid);
        if rss.saturating_sub(before) >= RSS_LIMIT_KIB {
            let _ = flood.kill();
            panic!("the {mode} flood grew the agent's RSS from {before} KiB to {rss} KiB, and on");
        }
        if let Some(status) = flood.try_wait().unwrap() {
            panic!("{mode}: the attacker exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: the attacker did not open its streams within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    during();
    std::fs::write(&stop, b"").unwrap();
    let result = helper_result(flood.wait_with_output().unwrap(), mode);
    let after = settled_rss(pid, before);
    let peak = sampler.stop();
    eprintln!(
        "{mode}: RSS before {before} KiB, peak {peak} KiB (+{} KiB), after {after} KiB; attacker: {result}",
        peak.saturating_sub(before)
    );
    (result, peak, after)
}

#[test]
fn a_uid_opening_every_stream_it_can_is_capped_and_others_are_served() {
    if !is_root() {
        return skip("needs root: it runs callers as other uids");
    }
    let shared = SharedDir::new();
    let cli = shared.cli();
    let mut agent = TestAgent::prepare_system_shared("", &grant(&[ATTACKER.uid, READER.uid]));
    let locked = std::env::var_os("KEYWARD_STREAMS_LOCK_MEMORY").is_some();
    if locked {
        // For the record: the same attack with the agent's memory locked.
        let config = agent.dir.parent().unwrap().join("keyward.toml");
        let toml = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, toml.replace("lock_memory = false", "lock_memory = true")).unwrap();
    }
    let cmd = agent.system_command();
    agent.spawn_with(cmd).expect("agent starts");
    agent.put(KEY, SECRET);
    let pid = agent.pid();
    reader_gets(&agent, &cli, SECRET, "before the attack");
    let mut watch = ReaderWatch::start(&agent, &cli);
    assert_eq!(
        watch.next(Duration::from_secs(10), "before the attack")["reason"],
        "initial"
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);

    // 1. WatchKeys streams, never read, on every connection it may open:
    // the 64 it is allowed, the 64 over the limit the agent keeps (every
    // call refused), and a few more (closed at once).
    let (watch_flood, peak, after) = flood_phase(&agent, &shared, "watch", before, || {
        reader_gets(&agent, &cli, SECRET, "during the watch flood");
        // A change reaches the reader's watch while the attacker holds its
        // streams.
        let out = agent.cli(&["put", "--overwrite", KEY], Some(NEW_SECRET.as_bytes()));
        assert!(out.status.success(), "put: {}", text(&out.stderr));
        assert_eq!(
            watch.next(Duration::from_secs(10), "during the watch flood")["reason"],
            "put"
        );
        reader_gets(&agent, &cli, NEW_SECRET, "during the watch flood");
    });
    assert_eq!(
        watch_flood["watching"], MAX_WATCHES_PER_UID,
        "the attacker got exactly max_watches_per_uid watches: {watch_flood}"
    );
    assert!(
        refusals_naming(&watch_flood, 8, "limits.max_watches_per_uid") > 0,
        "{watch_flood}"
    );
    assert!(
        refusals_naming(&watch_flood, 8, "limits.max_connections_per_uid") > 0,
        "{watch_flood}"
    );
    let mut phases = vec![("watch", peak, after)];

    // 2. Calls whose request never comes: they wait in the agent with their
    // headers, as many as each connection takes, for five seconds.
    let (pending, peak, after) = flood_phase(&agent, &shared, "pending", before, || {
        reader_gets(&agent, &cli, NEW_SECRET, "during the flood of unfinished calls");
    });
    // Each connection may also have one call waiting in the attacker's own
    // HTTP/2 client for a free stream.
    let held = pending["unanswered"].as_u64().unwrap();
    let connections = pending["connected"].as_u64().unwrap();
    assert!(
        held <= MAX_STREAMS_PER_UID + connections,
        "the agent held {held} unfinished calls of one uid: {pending}"
    );
    assert!(
        refusals_naming(&pending, 8, "limits.max_streams_per_uid") > 0,
        "{pending}"
    );
    phases.push(("pending", peak, after));

    // 3. Requests that stop just short of the 1 MiB they announce.
    let (slow, peak, after) = flood_phase(&agent, &shared, "slow", before, || {
        reader_gets(&agent, &cli, NEW_SECRET, "during the flood of unfinished requests");
    });
    assert!(
        refusals_naming(&slow, 8, "limits.max_message_bytes") > 0,
        "requests past the uid's budget are refused: {slow}"
    );
    phases.push(("slow", peak, after));

    reader_gets(&agent, &cli, NEW_SECRET, "after the attack");
    let out = agent.cli(&["put", "--overwrite", KEY], Some(SECRET.as_bytes()));
    assert!(out.status.success(), "put: {}", text(&out.stderr));
    assert_eq!(watch.next(Duration::from_secs(10), "after the attack")["reason"], "put");

    for (mode, peak, after) in phases {
        assert!(
            peak.saturating_sub(before) < RSS_LIMIT_KIB,
            "the {mode} flood grew the agent's RSS from {before} KiB to {peak} KiB"
        );
        if !locked {
            assert!(
                after.saturating_sub(before) < RSS_AFTER_LIMIT_KIB,
                "after the {mode} flood the agent kept {after} KiB (it had {before} KiB)"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// A subscriber that never reads.

/// The subscriber that never takes an event: one WatchKeys stream on a
/// connection whose stream window is 0, so the agent can send it nothing.
/// Writes STOP.ready once the agent answered the call. With
/// KEYWARD_HELPER_OPEN set, waits for the file STOP.open, then opens its
/// window and reads the stream to its end; otherwise waits for its
/// connection to end. Prints what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: run by the tests of this module as another uid"]
async fn stalled_subscriber_helper() {
    if !is_helper() {
        return;
    }
    let socket = PathBuf::from(helper_param("KEYWARD_HELPER_SOCKET"));
    let stop = PathBuf::from(helper_param("KEYWARD_HELPER_STOP"));
    let opens = std::env::var_os("KEYWARD_HELPER_OPEN").is_some();
    let io = tokio::net::UnixStream::connect(&socket).await.expect("connect");
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(io)
        .await
        .expect("HTTP/2 handshake");
    // The connection runs here; on a signal it opens every stream's window.
    let (open_tx, open_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let mut open_rx = Some(open_rx);
        loop {
            let Some(rx) = open_rx.as_mut() else {
                return (&mut connection).await.map_err(|e| e.to_string());
            };
            tokio::select! {
                r = &mut connection => return r.map_err(|e| e.to_string()),
                _ = rx => {
                    open_rx = None;
                    connection.set_initial_window_size(1 << 20).expect("window");
                }
            }
        }
    });
    let mut sender = sender.ready().await.expect("ready");
    let (response, mut body) = sender.send_request(watch_request(), false).expect("request");
    body.send_data(watch_request_frame(), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the agent answers the call")
        .expect("an answer");
    assert_eq!(grpc_status(response.headers()), None, "the watch started");
    std::fs::write(stop.with_extension("ready"), b"").unwrap();
    let ready_at = Instant::now();
    let result = if opens {
        while !stop.with_extension("open").exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = open_tx.send(());
        let mut body = response.into_body();
        let mut received = Vec::new();
        let outcome = loop {
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Ok(Some(Ok(data))) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    received.extend_from_slice(&data);
                }
                Ok(Some(Err(e))) => break serde_json::json!({"error": e.to_string()}),
                Ok(None) => {
                    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
                    let (code, message) = grpc_status(&trailers).unwrap_or((-1, String::new()));
                    break serde_json::json!({"code": code, "message": message});
                }
                Err(_) => break serde_json::json!({"error": "nothing within 10 s of opening the window"}),
            }
        };
        // The events, each a gRPC frame.
        let mut reasons = Vec::new();
        let mut rest = &received[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            let event = proto::KeyEvent::decode(&rest[5..5 + len]).expect("a KeyEvent");
            let generation = event.key_set.map_or(0, |k| k.generation);
            reasons.push(serde_json::json!({"reason": event.reason, "generation": generation}));
            rest = &rest[5 + len..];
        }
        serde_json::json!({"events": reasons, "end": outcome})
    } else {
        let ended = tokio::time::timeout(Duration::from_secs(60), driver).await;
        let end = match ended {
            Ok(Ok(r)) => serde_json::json!({"connection_closed": format!("{r:?}")}),
            _ => serde_json::json!({"error": "the connection was still open after 60 s"}),
        };
        drop(open_tx);
        serde_json::json!({"end": end, "closed_after_ms": ready_at.elapsed().as_millis() as u64})
    };
    println!("RESULT {result}");
}

fn spawn_stalled(shared: &SharedDir, agent: &TestAgent, stop: &Path, opens: bool) -> Child {
    let mut cmd = helper(Some(ATTACKER), "trust::streams::stalled_subscriber_helper", shared);
    cmd.env("KEYWARD_HELPER_SOCKET", agent.keys_sock())
        .env("KEYWARD_HELPER_STOP", stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if opens {
        cmd.env("KEYWARD_HELPER_OPEN", "1");
    }
    cmd.spawn().expect("spawn helper")
}

#[test]
fn a_subscriber_that_never_reads_is_evicted_and_does_not_hold_up_a_rotation() {
    if !is_root() {
        return skip("needs root: it runs callers as other uids");
    }
    let shared = SharedDir::new();
    let cli = shared.cli();
    let timeout = Duration::from_secs(2);
    let agent = TestAgent::start_system_shared(
        "",
        &format!(
            "{}[rotation]\ngrace = \"0s\"\n[[key]]\nkeys = [\"{KEY}\"]\npropagation_timeout = \"2s\"\n",
            grant(&[ATTACKER.uid, READER.uid])
        ),
    );
    agent.put(KEY, SECRET);
    let mut watch = ReaderWatch::start(&agent, &cli);
    assert_eq!(
        watch.next(Duration::from_secs(10), "before the rotation")["reason"],
        "initial"
    );

    // Two subscribers of the attacker's that never take an event: one
    // opens its window after the eviction, the other never does.
    let dir = shared.owned_dir("stalled", ATTACKER);
    let (stop_a, stop_b) = (dir.join("a"), dir.join("b"));
    let mut opener = spawn_stalled(&shared, &agent, &stop_a, true);
    let mut closed = spawn_stalled(&shared, &agent, &stop_b, false);
    wait_for_file(
        &stop_a.with_extension("ready"),
        Duration::from_secs(30),
        "the first stalled subscriber",
        &mut opener,
    );
    wait_for_file(
        &stop_b.with_extension("ready"),
        Duration::from_secs(30),
        "the second stalled subscriber",
        &mut closed,
    );

    let status = agent.cli(&["rotation-status", KEY], None);
    let status = text(&status.stdout);
    assert!(status.contains("subscribers: 3"), "{status}");

    keep_for_leak_scan("secrets", ROTATED_SECRET.as_bytes());
    let started = Instant::now();
    let out = agent.cli(
        &["rotate", KEY, "--stdin", "--until", "promoted"],
        Some(ROTATED_SECRET.as_bytes()),
    );
    let took = started.elapsed();
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let evicted_at = Instant::now();
    std::fs::write(stop_a.with_extension("open"), b"").unwrap();
    eprintln!("keyward rotate took {took:?}:\n{printed}");
    assert!(
        out.status.success(),
        "rotate was held up by the stalled subscribers: {printed}"
    );
    // The timeout, the agent's check (twice a second), and room for a
    // loaded machine; never rotate's own limit of timeout + 2 s and more.
    assert!(took < timeout + Duration::from_secs(3), "rotate took {took:?}");
    let evictions = printed
        .lines()
        .find(|l| l.contains("2 subscriber(s) evicted"))
        .unwrap_or_else(|| panic!("no eviction line: {printed}"));
    assert_eq!(
        evictions.matches(&format!("uid {} pid", ATTACKER.uid)).count(),
        2,
        "rotate names both evicted subscribers: {printed}"
    );
    assert!(printed.contains("promoted"), "{printed}");

    // The reader got the change, and the promotion after it.
    assert_eq!(watch.next(Duration::from_secs(5), "the staged key")["reason"], "staged");
    assert_eq!(
        watch.next(Duration::from_secs(5), "the promotion")["reason"],
        "promoted"
    );

    // Audited, naming the generation they did not take.
    let generation = {
        let status = agent.cli(&["rotation-status", KEY], None);
        let status = text(&status.stdout);
        assert!(status.contains("subscribers: 1"), "{status}");
        assert!(status.contains("evicted recently"), "{status}");
        assert_eq!(
            status.matches(&format!("uid {} pid", ATTACKER.uid)).count(),
            2,
            "{status}"
        );
        status
            .split("generation ")
            .nth(1)
            .and_then(|g| g.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let records = agent.audit_records("watch", "evicted");
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["caller"]["uid"], ATTACKER.uid, "{r}");
        assert_eq!(r["key"], KEY, "{r}");
        // Staged at the generation before the promotion.
        assert_eq!(r["generation_after"], generation - 1, "{r}");
        assert!(r["detail"].as_str().unwrap().contains("took no event"), "{r}");
    }

    // The one that opens its window then gets the status that says why.
    let a = helper_result(
        opener.wait_with_output().unwrap(),
        "the subscriber that opens its window",
    );
    eprintln!("opener: {a}");
    assert_eq!(a["end"]["code"], 10, "ABORTED: {a}");
    let message = a["end"]["message"].as_str().unwrap();
    assert!(message.contains("took no event") && message.contains(KEY), "{message}");
    // Only what hyper took before the eviction and held for the window
    // (its first event, with the state at subscribe) may come first.
    let events = a["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["reason"] == "initial" && e["generation"] == 1),
        "nothing from after the eviction is sent: {a}"
    );

    // The one that never does has its connection closed a timeout later.
    let b = helper_result(closed.wait_with_output().unwrap(), "the subscriber that never reads");
    eprintln!("never reads: {b}; {:?} after the rotation", evicted_at.elapsed());
    assert!(b["end"]["connection_closed"].is_string(), "{b}");
    let closed_after = Duration::from_millis(b["closed_after_ms"].as_u64().unwrap());
    assert!(
        closed_after < took + timeout + Duration::from_secs(5),
        "closed {closed_after:?} after it subscribed"
    );
    assert!(
        closed_after >= timeout * 2,
        "not before the eviction and a further timeout: {closed_after:?}"
    );
}

// ---------------------------------------------------------------------------
// Idle and hung connections.

/// A driven HTTP/2 connection to `socket`: its sender, and a task that ends
/// when the agent closes the connection.
async fn driven(socket: &Path) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let io = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let (sender, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

/// Opens a WatchKeys stream on `sender` and waits for its first event.
async fn watching(sender: h2::client::SendRequest<Bytes>) -> (h2::SendStream<Bytes>, h2::RecvStream) {
    let mut sender = sender.ready().await.expect("ready");
    let (response, mut request) = sender.send_request(watch_request(), false).expect("request");
    request.send_data(watch_request_frame(), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer within 10 s")
        .expect("an answer");
    assert_eq!(grpc_status(response.headers()), None, "the watch started");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .expect("the initial event")
        .expect("data")
        .expect("data");
    let _ = body.flow_control().release_capacity(first.len());
    (request, body)
}

/// How long until `task` ends (the agent closed its connection), if it
/// does within `limit`.
async fn ends_within(task: &mut tokio::task::JoinHandle<()>, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(limit, task).await.ok().map(|_| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_hung_connections_are_closed_and_busy_ones_kept() {
    if !is_root() {
        return skip("needs root: the agent runs in system mode");
    }
    let agent = TestAgent::start_system_shared(
        "",
        &format!(
            "{}[limits]\nidle_timeout = \"2s\"\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n",
            grant(&[0])
        ),
    );
    agent.put(KEY, SECRET);
    let socket = agent.keys_sock();

    // No call at all: closed after the idle timeout.
    let (_sender, mut idle) = driven(&socket).await;
    let took = ends_within(&mut idle, Duration::from_secs(10)).await;
    let took = took.expect("an idle connection is closed");
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before the idle timeout"
    );

    // A watch open on it: kept as long as it lasts, closed once it ends.
    let (sender, mut busy) = driven(&socket).await;
    let (mut request, body) = watching(sender).await;
    assert_eq!(
        ends_within(&mut busy, Duration::from_secs(5)).await,
        None,
        "a connection with a call open is not idle"
    );
    request.send_reset(h2::Reason::CANCEL);
    drop(body);
    let took = ends_within(&mut busy, Duration::from_secs(10)).await;
    assert!(took.is_some(), "the connection is closed once its last call ended");

    // A client that stops reading its socket (it answers no ping): its
    // connection and its watch are closed although a call is open.
    let io = tokio::net::UnixStream::connect(&socket).await.expect("connect");
    let (sender, mut connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        tokio::select! {
            _ = &mut connection => None,
            // Not polled again: the connection is kept, unread.
            _ = stop_rx => Some(connection),
        }
    });
    let (_request, _body) = watching(sender).await;
    let subscribers = |agent: &TestAgent| {
        let out = agent.cli(&["rotation-status", KEY], None);
        text(&out.stdout)
    };
    assert!(subscribers(&agent).contains("subscribers: 1"));
    stop_tx.send(()).unwrap();
    let _hung = driver.await.unwrap().expect("the connection was still open");
    let started = Instant::now();
    loop {
        let status = subscribers(&agent);
        if status.contains("subscribers: 0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the hung client's watch is still there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "hung client's connection closed {:?} after it stopped reading",
        started.elapsed()
    );
}
