//! Proxy benchmark: the same HTTPS client calling the provider directly and
//! through `keyward proxy`, side by side in one run.
//!
//! Run with `cargo bench --bench proxy` (`-- --quick` for a short run). It
//! starts the test kit's HTTPS provider (testkit/src/provider.rs, in this
//! process on a thread and runtime of its own), the release `keywardd` in
//! dev mode holding a key the provider issued, and the release
//! `keyward proxy` bound to the provider (trusting its test CA through
//! `--upstream-ca`, writing its own CA with `--ca-out`). `keyward run
//! --proxy` serves requests with the same code; only the way in differs
//! (proxy credentials instead of the uid alone).
//!
//! Both paths are measured by the same client code: a hyper HTTP/1.1
//! connection over rustls, kept alive, requests sent one after the other on
//! each connection (`GET /api`, which must answer 200). Directly: TCP and
//! TLS to the provider, with the real key. Through the proxy: TCP to the
//! proxy, `CONNECT localhost:PORT`, then TLS to the proxy's certificate for
//! `localhost`, with the placeholder; the proxy swaps it for the key and
//! sends the request on over its own pooled TLS connection. Latency with 1
//! connection, throughput with 16; each round measures both paths, and the
//! rounds alternate which goes first so that drift hits both.
//!
//! Sizes come from the environment (defaults in brackets):
//! `KEYWARD_BENCH_PROXY_ROUNDS` [3], `KEYWARD_BENCH_PROXY_CALLS` [3000],
//! `KEYWARD_BENCH_PROXY_WARMUP` [500], `KEYWARD_BENCH_PROXY_CONNS` [16],
//! `KEYWARD_BENCH_PROXY_SECS` [5].

use keyward_testkit::bench::{cpu_seconds, start_agent, Proc};
use keyward_testkit::param;
use keyward_testkit::provider::Provider;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const KEY: &str = "prod/bench-api";

/// The sizes of a run.
struct Plan {
    rounds: usize,
    calls: usize,
    warmup: usize,
    conns: usize,
    window: Duration,
}

impl Plan {
    fn from_env(quick: bool) -> Plan {
        let (rounds, calls, warmup, secs) = if quick { (1, 1_000, 200, 2) } else { (3, 3_000, 500, 5) };
        Plan {
            rounds: param("KEYWARD_BENCH_PROXY_ROUNDS", rounds),
            calls: param("KEYWARD_BENCH_PROXY_CALLS", calls),
            warmup: param("KEYWARD_BENCH_PROXY_WARMUP", warmup),
            conns: param("KEYWARD_BENCH_PROXY_CONNS", 16),
            window: Duration::from_secs(param("KEYWARD_BENCH_PROXY_SECS", secs)),
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = Plan::from_env(quick);
    let provider = Provider::start_tls();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let config = tmp.path().join("keyward.toml");
    std::fs::write(&config, "").unwrap();
    let agent = start_agent(&dir, &config);
    let key = provider.issue();
    put(&dir, &key);
    let proxy = ProxyProc::start(&dir, &provider, tmp.path());

    let direct = Route {
        name: "direct",
        connect: provider.addr(),
        tunnel: None,
        tls: tls_connector(&provider.ca_pem()),
        authorization: bearer(&key),
        host: HeaderValue::from_str(&format!("localhost:{}", provider.port())).unwrap(),
    };
    let proxied = Route {
        name: "proxy",
        connect: proxy.addr,
        tunnel: Some(format!("localhost:{}", provider.port())),
        tls: tls_connector(&std::fs::read_to_string(&proxy.ca_file).unwrap()),
        authorization: bearer(&proxy.placeholder),
        ..direct.clone()
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pids = Pids {
        proxy: proxy.process.0.id(),
        agent: agent.0.id(),
    };
    let failures = Arc::new(Failures::default());
    rt.block_on(bench(&plan, [&direct, &proxied], &pids, &failures));

    println!(
        "\nprovider: {} requests accepted, {} refused, {} carrying a placeholder; client: {} answers other than 200 or errors",
        provider.accepted(),
        provider.refused(),
        provider.seen_authorizations(),
        failures.count.load(Ordering::Relaxed)
    );
    if let Some(first) = failures.first.lock().unwrap().as_ref() {
        println!("  first failure: {first}");
    }
    drop(proxy);
    drop(agent);
}

/// Stores `key` as [`KEY`] in the agent in `dir`, through the CLI (stdin).
fn put(dir: &Path, key: &str) {
    let mut put = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--dev")
        .arg(dir)
        .args(["put", KEY])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    assert!(put.wait().unwrap().success(), "keyward put failed");
}

/// A running `keyward proxy`: where it listens, the placeholder of
/// [`KEY`], and the file holding its CA.
struct ProxyProc {
    process: Proc,
    addr: SocketAddr,
    placeholder: String,
    ca_file: std::path::PathBuf,
    /// Kept open: the proxy's stdout, so that a late line never meets a
    /// closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl ProxyProc {
    fn start(dir: &Path, provider: &Provider, tmp: &Path) -> ProxyProc {
        let upstream_ca = provider.write_ca(tmp);
        let ca_file = tmp.join("proxy-ca.pem");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--dev")
            .arg(dir)
            .args(["proxy", "--listen", "127.0.0.1:0", "--key"])
            .arg(format!("{KEY}@localhost:{}", provider.port()))
            .arg("--upstream-ca")
            .arg(&upstream_ca)
            .arg("--ca-out")
            .arg(&ca_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start keyward proxy");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let process = Proc(child);
        let (mut addr, mut placeholder) = (None, None);
        // The CA line comes last, once the file is written.
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "keyward proxy exited before it was ready"
            );
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("keyward proxy: listening on ") {
                addr = rest.split(' ').next().and_then(|a| a.parse().ok());
            } else if let Some(rest) = l.strip_prefix("placeholder ") {
                placeholder = rest.split(' ').next().map(str::to_owned);
            } else if l.starts_with("the proxy's CA") {
                break;
            }
        }
        ProxyProc {
            process,
            addr: addr.expect("keyward proxy printed no address"),
            placeholder: placeholder.expect("keyward proxy printed no placeholder"),
            ca_file,
            _stdout: stdout,
        }
    }
}

/// A TLS client config trusting the CA in `pem` alone, HTTP/1.1 by ALPN.
fn tls_connector(pem: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(keyward_testkit::provider::client_config(pem)))
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// One way to the provider's `/api`.
#[derive(Clone)]
struct Route {
    name: &'static str,
    /// Where the TCP connection goes: the provider, or the proxy.
    connect: SocketAddr,
    /// Through the proxy: the `HOST:PORT` to CONNECT to first.
    tunnel: Option<String>,
    tls: TlsConnector,
    authorization: HeaderValue,
    host: HeaderValue,
}

type Conn = SendRequest<Empty<Bytes>>;

impl Route {
    /// A new kept-alive connection, ready for requests.
    async fn open(&self) -> Conn {
        let mut tcp = TcpStream::connect(self.connect).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        if let Some(target) = &self.tunnel {
            tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            // Read the head alone: nothing follows it until we speak TLS.
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "the proxy closed on CONNECT");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered {head:?}");
        }
        let name = ServerName::try_from("localhost").unwrap();
        let tls = self.tls.connect(name, tcp).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send
    }

    /// One `GET /api`, its body read to the end; `Err` says what was
    /// wrong (an answer other than 200, or a broken connection).
    async fn call(&self, conn: &mut Conn) -> Result<(), String> {
        let request = Request::get("/api")
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .body(Empty::new())
            .unwrap();
        conn.ready()
            .await
            .map_err(|e| format!("{}: connection: {e}", self.name))?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| format!("{}: request: {e}", self.name))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}: body: {e}", self.name))?
            .to_bytes();
        match status {
            StatusCode::OK => Ok(()),
            _ => Err(format!("{}: {status} {}", self.name, String::from_utf8_lossy(&body))),
        }
    }
}

/// Answers other than 200, and broken connections: each is a bug.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    fn note(&self, why: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first.lock().unwrap().get_or_insert(why);
    }
}

/// Calls `route` on `conn`; a broken connection is counted and replaced.
async fn call_counted(route: &Route, conn: &mut Conn, failures: &Failures) {
    if let Err(why) = route.call(conn).await {
        failures.note(why);
        if conn.is_closed() {
            *conn = route.open().await;
        }
    }
}

struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
}

/// `calls` requests in a row on one connection, after `warmup`; in µs.
async fn latency(route: &Route, plan: &Plan, failures: &Failures) -> Latency {
    let mut conn = route.open().await;
    for _ in 0..plan.warmup {
        call_counted(route, &mut conn, failures).await;
    }
    let mut samples = Vec::with_capacity(plan.calls);
    for _ in 0..plan.calls {
        let t = Instant::now();
        call_counted(route, &mut conn, failures).await;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Latency {
        p50: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
        mean: samples.iter().sum::<f64>() / samples.len() as f64,
    }
}

/// The processes whose CPU time is counted during throughput windows.
struct Pids {
    proxy: u32,
    agent: u32,
}

/// Context switches so far of every thread of `pid`, voluntary or not.
fn switches(pid: u32) -> f64 {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n as f64
}

/// CPU seconds of this process (the client and the provider), the proxy
/// and the agent, and the context switches of this process and the proxy.
fn counters(pids: &Pids) -> [f64; 5] {
    let me = std::process::id();
    [
        cpu_seconds(me),
        cpu_seconds(pids.proxy),
        cpu_seconds(pids.agent),
        switches(me),
        switches(pids.proxy),
    ]
}

struct Throughput {
    per_sec: f64,
    /// Per request: CPU µs of this process (client and provider), of the
    /// proxy and of the agent; context switches of this process and of the
    /// proxy.
    per_request: [f64; 5],
}

/// Requests per second with `plan.conns` connections each calling in a
/// loop, counted over `plan.window` after a 300 ms warm-up; the
/// connections are opened before.
async fn throughput(route: &Route, plan: &Plan, pids: &Pids, failures: &Arc<Failures>) -> Throughput {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..plan.conns {
        let mut conn = route.open().await;
        let (route, done, stop, failures) = (route.clone(), done.clone(), stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call_counted(&route, &mut conn, &failures).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n0, c0, t) = (done.load(Ordering::Relaxed), counters(pids), Instant::now());
    tokio::time::sleep(plan.window).await;
    let (n1, c1, elapsed) = (done.load(Ordering::Relaxed), counters(pids), t.elapsed());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = (n1 - n0) as f64;
    let cpu = |i: usize| (c1[i] - c0[i]) * 1e6 / n;
    // A thread that ended in the window takes its switches with it.
    let per = |i: usize| ((c1[i] - c0[i]) / n).max(0.0);
    Throughput {
        per_sec: n / elapsed.as_secs_f64(),
        per_request: [cpu(0), cpu(1), cpu(2), per(3), per(4)],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Each round: latency then throughput of both routes, the round's
/// first route alternating; then the medians of rounds.
async fn bench(plan: &Plan, routes: [&Route; 2], pids: &Pids, failures: &Arc<Failures>) {
    println!(
        "GET /api over HTTPS, HTTP/1.1 keep-alive, {} cores shared by the client, the provider, the proxy and the agent; {} rounds, alternating which route goes first",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        plan.rounds
    );
    println!(
        "latency: 1 connection, {} requests after {} warm-up; throughput: {} connections, {} s; during throughput, per request: CPU µs of this process (client and provider), of the proxy and of the agent, context switches of this process and of the proxy\n",
        plan.calls,
        plan.warmup,
        plan.conns,
        plan.window.as_secs_f64()
    );
    println!(
        "{:<8} {:>5} {:>9} {:>9} {:>9} {:>8} {:>10} {:>7} {:>7} {:>10} {:>7}",
        "route", "round", "p50 µs", "p99 µs", "mean µs", "req/s", "cpu: bench", "proxy", "agent", "cs: bench", "proxy"
    );
    // Both routes once, unmeasured: the proxy's upstream pool, the TLS
    // sessions and the allocators warm up before the first round.
    for route in routes {
        let mut conn = route.open().await;
        for _ in 0..plan.warmup {
            call_counted(route, &mut conn, failures).await;
        }
    }
    let mut results: [Vec<(Latency, Throughput)>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=plan.rounds {
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let route = routes[i];
            let lat = latency(route, plan, failures).await;
            let tput = throughput(route, plan, pids, failures).await;
            println!(
                "{:<8} {round:>5} {:>9.1} {:>9.1} {:>9.1} {:>8.0} {:>10.1} {:>7.1} {:>7.1} {:>10.2} {:>7.2}",
                route.name,
                lat.p50,
                lat.p99,
                lat.mean,
                tput.per_sec,
                tput.per_request[0],
                tput.per_request[1],
                tput.per_request[2],
                tput.per_request[3],
                tput.per_request[4]
            );
            results[i].push((lat, tput));
        }
    }
    let med = |i: usize, f: fn(&(Latency, Throughput)) -> f64| median(results[i].iter().map(f).collect());
    let summary: Vec<[f64; 4]> = (0..2)
        .map(|i| {
            [
                med(i, |x| x.0.p50),
                med(i, |x| x.0.p99),
                med(i, |x| x.0.mean),
                med(i, |x| x.1.per_sec),
            ]
        })
        .collect();
    let (d, p) = (summary[0], summary[1]);
    println!("\nmedian of rounds:");
    for (route, s) in routes.iter().zip(&summary) {
        println!(
            "  {:<7} p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs, {:.0} req/s",
            route.name, s[0], s[1], s[2], s[3]
        );
    }
    println!(
        "  added by the proxy: p50 {:.1} µs (target <= 300 µs), p99 {:.1} µs, mean {:.1} µs",
        p[0] - d[0],
        p[1] - d[1],
        p[2] - d[2]
    );
    println!(
        "  throughput through the proxy: {:.2}x direct (target >= 0.7x); per-round ratios {}",
        p[3] / d[3],
        results[0]
            .iter()
            .zip(&results[1])
            .map(|(d, p)| format!("{:.2}x", p.1.per_sec / d.1.per_sec))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cpu = |i: usize, j: usize| median(results[i].iter().map(|x| x.1.per_request[j]).collect());
    println!(
        "  CPU per request at {} connections: direct {:.1} µs (client and provider); through the proxy {:.1} µs (client and provider) + {:.1} µs (proxy) + {:.1} µs (agent)",
        plan.conns,
        cpu(0, 0),
        cpu(1, 0),
        cpu(1, 1),
        cpu(1, 2)
    );
}
