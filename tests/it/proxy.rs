//! `keyward run --proxy` and `keyward proxy` with real programs, real TLS
//! and a real agent: the seed's Node and Python programs run unchanged
//! against an HTTPS provider on loopback (its own test CA) that accepts
//! only currently valid keys.

use crate::common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use keyward_testkit::provider::Provider;
use keyward_testkit::receiver::Receiver;

const KEY: &str = "prod/billing";
const VAR: &str = "MY_SERVICE_API_KEY";

/// The seed programs, as shipped in tests/fixtures/proxy.
fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxy")
        .join(name)
        .display()
        .to_string()
}

/// An agent serving `KEY` (a key the provider issued) and the provider.
struct World {
    agent: TestAgent,
    provider: Provider,
    tmp: tempfile::TempDir,
    ca: PathBuf,
}

impl World {
    fn start(toml: &str) -> World {
        let provider = Provider::start_tls();
        let agent = TestAgent::start_with_config(toml);
        agent.put(KEY, &provider.issue());
        let tmp = tempfile::tempdir().unwrap();
        let ca = provider.write_ca(tmp.path());
        World {
            agent,
            provider,
            tmp,
            ca,
        }
    }

    fn binding(&self) -> String {
        format!("{KEY}={VAR}@localhost:{}", self.provider.port())
    }

    /// `keyward --dev DIR run --proxy --key KEY=VAR@localhost:PORT
    /// --upstream-ca CA`, to which the rest is added.
    fn run_proxy(&self) -> Command {
        let mut cmd = Command::new(KEYWARD);
        cmd.arg("--dev")
            .arg(&self.agent.dir)
            .args(["run", "--proxy", "--key", &self.binding(), "--upstream-ca"])
            .arg(&self.ca);
        cmd
    }

    /// Both seed programs under `keyward run --proxy` (logs `node` and
    /// `python`), once each made 5 successful calls.
    fn run_seeds(&self) -> (Child, Child) {
        let node = self.run("node", &[node(), &fixture("seed.js")], &[]);
        let python = self.run("python", &["python3", &fixture("seed.py")], &[]);
        self.wait_ok("node", 5);
        self.wait_ok("python", 5);
        (node, python)
    }

    /// `keyward run --proxy` for `command`, its stderr in `run-NAME.err`.
    fn run(&self, name: &str, command: &[&str], extra: &[&str]) -> Child {
        let err = std::fs::File::create(self.tmp.path().join(format!("run-{name}.err"))).unwrap();
        self.run_proxy()
            .args(extra)
            .arg("--")
            .args(command)
            .env("PROVIDER_URL", self.provider.url())
            .env("SEED_LOG", self.log(name))
            .env("CALL_INTERVAL_MS", "20")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.log"))
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("run-{name}.err"))).unwrap_or_default()
    }

    /// The seed program's log: (starts, ok calls, failed calls with what failed).
    fn calls(&self, name: &str) -> (usize, usize, Vec<String>) {
        let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        let starts = text.lines().filter(|l| l.starts_with("start ")).count();
        let ok = text.lines().filter(|l| *l == "ok").count();
        let failed = text
            .lines()
            .filter(|l| l.starts_with("fail"))
            .map(str::to_owned)
            .collect();
        (starts, ok, failed)
    }

    /// Waits until the program `name` made `n` more successful calls.
    fn wait_ok(&self, name: &str, n: usize) {
        let from = self.calls(name).1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.calls(name).1 < from + n {
            assert!(
                Instant::now() < deadline,
                "{name} made no {n} successful calls: {:?}\nkeyward run said: {}",
                self.calls(name),
                self.stderr(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        self.agent.ok(args, stdin)
    }

    /// The agent's audit records of `event`.
    fn records(&self, event: &str) -> Vec<serde_json::Value> {
        self.agent
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect()
    }
}

/// What `keyward run --proxy` printed goes to the suite's leak scan, as
/// the agents' output does.
impl Drop for World {
    fn drop(&mut self) {
        for file in files_under(self.tmp.path()) {
            if file.extension().is_some_and(|e| e == "err") {
                keep_for_leak_scan("agent-output", &std::fs::read(&file).unwrap_or_default());
            }
        }
    }
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Whether the seed programs can run here: Node for the Node one.
fn node() -> &'static str {
    "node"
}

/// Stages `new`, promotes it, and retires the old key as soon as the
/// agent has the evidence (the proxies' use reports) it needs.
fn rotate(w: &World, new: &str) {
    w.ok(&["stage", KEY], Some(new.as_bytes()));
    std::thread::sleep(Duration::from_millis(60));
    w.ok(&["promote", KEY], None);
    std::thread::sleep(Duration::from_millis(60));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = w.agent.cli(&["retire", KEY], None);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "retire stayed refused: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn both_seed_programs_go_through_50_rotations_without_a_failed_call_or_a_restart() {
    let w = World::start("[rotation]\ngrace = \"0s\"\n");
    let (node, python) = w.run_seeds();
    let mut old = w.provider.valid_keys();
    for _ in 0..50 {
        let new = w.provider.issue();
        rotate(&w, &new);
        // The revoker's part: the old key stops working at the provider.
        for k in old.drain(..) {
            w.provider.revoke(&k);
        }
        old.push(new);
        w.wait_ok("node", 1);
        w.wait_ok("python", 1);
    }
    for name in ["node", "python"] {
        let (starts, ok, failed) = w.calls(name);
        assert_eq!(starts, 1, "{name} was restarted");
        assert!(
            failed.is_empty(),
            "{name}: {} failed calls: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 100, "{name} made {ok} calls");
        eprintln!("{name}: {ok} calls, 0 failed, 1 start across 50 rotations");
    }
    assert_eq!(
        w.provider.seen_authorizations(),
        0,
        "a placeholder reached the provider"
    );
    stop(node);
    stop(python);
}

#[tokio::test]
async fn an_early_revocation_is_absorbed_by_the_fallback_and_alerts_naming_the_program() {
    let r = Receiver::start();
    let w = World::start(&format!(
        "[alerts]\nrepeat_interval = \"1h\"\n[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook")
    ));
    let (node, python) = w.run_seeds();
    let old = w.provider.valid_keys();
    w.ok(&["stage", KEY], Some(w.provider.issue().as_bytes()));
    std::thread::sleep(Duration::from_millis(100));
    // Revoked before the promote: the primary is refused from now on.
    for k in &old {
        w.provider.revoke(k);
    }
    let alert = loop {
        let hit = r
            .received()
            .into_iter()
            .find(|g| g.body["signal"] == "spike" && g.body["status"] == "firing");
        if let Some(hit) = hit {
            break (Instant::now(), hit);
        }
        let waited = w.provider.first_refusal().map_or(Duration::ZERO, |t| t.elapsed());
        assert!(waited < Duration::from_secs(10), "no spike alert: {:?}", r.received());
        std::thread::sleep(Duration::from_millis(5));
    };
    let (seen, hit) = alert;
    let first = w
        .provider
        .first_refusal()
        .expect("the provider refused the revoked key");
    let after = seen.duration_since(first);
    eprintln!(
        "spike alert at the webhook {} ms after the first refusal",
        after.as_millis()
    );
    assert!(after <= Duration::from_secs(1), "the alert took {after:?}");
    let service = hit.body["service"].as_str().unwrap_or_default();
    assert!(
        service.contains("seed.js") || service.contains("seed.py"),
        "{}",
        hit.body
    );
    w.wait_ok("node", 20);
    w.wait_ok("python", 20);
    for name in ["node", "python"] {
        let (starts, _, failed) = w.calls(name);
        assert_eq!((starts, failed.len()), (1, 0), "{name}: {failed:?}");
    }
    // The revoked primary was tried about once per cool-down per proxy,
    // not on every call.
    let refused = w.provider.refused();
    assert!(refused <= 6, "the revoked primary was tried {refused} times");
    stop(node);
    stop(python);
}

#[test]
fn the_real_key_reaches_neither_the_child_nor_the_logs() {
    let w = World::start("");
    let secret = w.provider.valid_keys().remove(0);
    let js = fixture("seed.js");
    let node = w.run("node", &[node(), &js], &[]);
    w.wait_ok("node", 3);
    let text = std::fs::read_to_string(w.log("node")).unwrap();
    let pid: i32 = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("start ")
        .unwrap()
        .parse()
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_no_secret("the child's environment", &environ, &[&secret]);
    assert_no_secret("the child's argv", &cmdline, &[&secret]);
    let environ = String::from_utf8_lossy(&environ);
    let placeholder = environ
        .split('\0')
        .find_map(|v| v.strip_prefix(&format!("{VAR}=")))
        .expect("the variable is set");
    assert!(
        placeholder.starts_with("kwph_") && placeholder.len() == 37,
        "{placeholder}"
    );
    for v in ["_PRIMARY", "_FALLBACK"] {
        let other = environ
            .split('\0')
            .find_map(|e| e.strip_prefix(&format!("{VAR}{v}=")))
            .unwrap();
        assert!(other.starts_with("kwph_") && other != placeholder);
    }
    for v in [
        "HTTPS_PROXY=",
        "https_proxy=",
        "HTTP_PROXY=",
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
        "CURL_CA_BUNDLE=",
        "NODE_OPTIONS=",
    ] {
        assert!(environ.split('\0').any(|e| e.starts_with(v)), "{v} missing");
    }
    stop(node);
    assert_no_secret("keyward run's stderr", w.stderr("node").as_bytes(), &[&secret]);
    let audit = std::fs::read(w.agent.audit_file()).unwrap();
    assert_no_secret("the audit log", &audit, &[&secret]);
    assert_no_secret("the agent's log", w.agent.logs().as_bytes(), &[&secret]);
    // The use was reported, by the proxy, under the program's name.
    let uses: Vec<_> = w.records("key_use");
    assert!(
        uses.iter()
            .any(|l| l["detail"].as_str().unwrap_or("").contains("\"seed.js\"")),
        "{uses:?}"
    );
}

/// A Python one-off under `keyward run --proxy`: `code` reads the
/// placeholder from the environment; its stdout is returned.
fn python_under_proxy(w: &World, extra: &[&str], code: &str) -> (String, String) {
    let out = w
        .run_proxy()
        .args(extra)
        .args(["--", "python3", "-c", code])
        .env("PROVIDER_URL", w.provider.url())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    keep_for_leak_scan("agent-output", &out.stderr);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn a_placeholder_headed_for_an_unbound_host_is_not_replaced_and_is_refused() {
    let w = World::start("");
    let plain = Provider::start();
    let other = Provider::start_tls();
    let secret = w.provider.valid_keys().remove(0);
    // Plain HTTP to another host, plain HTTP to the bound host's name and
    // port, and HTTPS to the bound host on another port: all refused.
    let code = format!(
        r#"
import os, urllib.request, urllib.error
key = os.environ["{VAR}"]
for url in ["{plain}/api", "http://localhost:{port}/api"]:
    try:
        urllib.request.urlopen(urllib.request.Request(url, headers={{"Authorization": "Bearer " + key}}))
        print("sent", url)
    except urllib.error.HTTPError as e:
        print("refused", e.code, e.read().decode().strip())
"#,
        plain = plain.url(),
        port = w.provider.port(),
    );
    let (out, _) = python_under_proxy(&w, &[], &code);
    let refusals: Vec<&str> = out.lines().filter(|l| l.starts_with("refused 403")).collect();
    assert_eq!(refusals.len(), 2, "{out}");
    assert!(
        refusals[0].contains(&format!("placeholder of {KEY}")) && refusals[0].contains("nothing was sent"),
        "{out}"
    );
    assert_eq!(
        (plain.accepted(), plain.refused()),
        (0, 0),
        "the unbound host got the request"
    );
    assert_no_secret("the answers", out.as_bytes(), &[&secret]);
    let misdirected: Vec<_> = w.records("key_misdirected");
    assert!(!misdirected.is_empty(), "no key_misdirected record");
    let detail = misdirected[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("http://127.0.0.1:{}", plain.port())),
        "{detail}"
    );

    // Inside the TLS of another bound key's host: refused too.
    let w2_binding = format!("prod/other=OTHER_KEY@localhost:{}", other.port());
    w.agent.put("prod/other", &other.issue());
    let both_ca = w.tmp.path().join("both-ca.pem");
    std::fs::write(&both_ca, format!("{}{}", w.provider.ca_pem(), other.ca_pem())).unwrap();
    let code = format!(
        r#"
import os, urllib.request, urllib.error
try:
    urllib.request.urlopen(urllib.request.Request("{url}/api", headers={{"Authorization": "Bearer " + os.environ["{VAR}"]}}))
    print("sent")
except urllib.error.HTTPError as e:
    print("refused", e.code)
"#,
        url = other.url()
    );
    let out = Command::new(KEYWARD)
        .arg("--dev")
        .arg(&w.agent.dir)
        .args([
            "run",
            "--proxy",
            "--key",
            &w.binding(),
            "--key",
            &w2_binding,
            "--upstream-ca",
        ])
        .arg(&both_ca)
        .args(["--", "python3", "-c", &code])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "refused 403", "{}", text(&out.stderr));
    assert_eq!(other.accepted() + other.refused(), 0);
}

#[test]
fn connect_to_an_unbound_host_is_tunnelled_untouched() {
    let w = World::start("");
    let other = Provider::start_tls();
    let key = other.issue();
    // The child trusts the other provider's CA itself (its SSL_CERT_FILE is
    // the base of the bundle keyward run makes).
    let base = w.tmp.path().join("base.pem");
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    std::fs::write(&base, format!("{system}{}", other.ca_pem())).unwrap();
    let code = format!(
        r#"
import http.client, os, ssl, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
import base64
auth = base64.b64encode(f"{{proxy.username}}:{{proxy.password}}".encode()).decode()
c = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ssl.create_default_context())
c.set_tunnel("localhost", {port}, headers={{"Proxy-Authorization": "Basic " + auth}})
c.request("GET", "/api", headers={{"Authorization": "Bearer {key}", "X-Placeholder": os.environ["{VAR}"]}})
r = c.getresponse()
issuer = dict(x[0] for x in c.sock.getpeercert()["issuer"])
print(r.status, issuer.get("commonName"))
"#,
        port = other.port()
    );
    let out = w
        .run_proxy()
        .args(["--", "python3", "-c", &code])
        .env("SSL_CERT_FILE", &base)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    // The other provider answered with its own certificate, and took the
    // request as it was sent.
    assert!(said.starts_with("200 "), "{said}");
    assert!(
        said.trim_end().ends_with("keyward test provider CA"),
        "intercepted: {said}"
    );
    assert_eq!(other.accepted(), 1);
}

#[test]
fn a_large_refused_body_is_passed_through_and_reported_and_a_small_one_replayed() {
    let w = World::start("");
    let old = w.provider.valid_keys();
    w.ok(&["stage", KEY], Some(w.provider.issue().as_bytes()));
    for k in &old {
        w.provider.revoke(k);
    }
    let code = format!(
        r#"
import os, urllib.request, urllib.error
def post(n):
    req = urllib.request.Request(os.environ["PROVIDER_URL"] + "/api", data=b"x" * n, method="POST",
                                 headers={{"Authorization": "Bearer " + os.environ["{VAR}"]}})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
print(post(10 * 1024 * 1024), post(1000))
"#
    );
    let (out, _) = python_under_proxy(&w, &[], &code);
    assert_eq!(
        out.trim(),
        "401 200",
        "the large body is passed through once, the small one replayed"
    );
    assert_eq!(w.provider.last_post_len(), 1000);
    assert!(
        w.provider.posted_bytes() >= 10 * 1024 * 1024 + 1000,
        "{}",
        w.provider.posted_bytes()
    );
    let failures: Vec<_> = w.records("auth_failure");
    assert!(
        failures
            .iter()
            .any(|l| l["versions"][0]["version"] == 1 && l["detail"].as_str().unwrap_or("").contains("status 401")),
        "{failures:?}"
    );
}

/// Sends `request` to the proxy at `addr` as uid `uid` and returns the
/// status line of the answer.
fn raw_as(uid: u32, addr: &str, request: &str) -> String {
    let code = format!(
        r#"
import socket, sys
host, port = "{addr}".rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.sendall({request:?}.encode())
print(s.makefile("rb").readline().decode().strip())
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &code]);
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    text(&out.stdout).trim().to_owned()
}

#[test]
fn only_the_processes_it_was_started_for_may_use_the_proxy() {
    let w = World::start("");
    // A child that prints its proxy URL and waits.
    let proxy_file = w.tmp.path().join("proxy-url");
    let mut run = w
        .run_proxy()
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo \"$HTTPS_PROXY $MY_SERVICE_API_KEY\" > {}; exec sleep 600",
            proxy_file.display()
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = loop {
        let t = std::fs::read_to_string(&proxy_file).unwrap_or_default();
        if t.ends_with('\n') {
            break t.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (url, placeholder) = url.split_once(' ').unwrap();
    let (creds, addr) = url.strip_prefix("http://").unwrap().split_once('@').unwrap();
    let auth = base64_basic(creds);
    let connect = |with: bool| {
        let header = if with {
            format!("Proxy-Authorization: Basic {auth}\r\n")
        } else {
            String::new()
        };
        format!("CONNECT example.invalid:443 HTTP/1.1\r\nHost: example.invalid:443\r\n{header}\r\n")
    };
    // The run's own uid without the credentials, another uid with them.
    assert!(raw_as(0, addr, &connect(false)).contains(" 407 "));
    assert!(raw_as(65534, addr, &connect(true)).contains(" 407 "));
    // The credentials from the run's uid pass (and the tunnel to a host
    // that does not resolve fails upstream, not at the door).
    let ok = raw_as(0, addr, &connect(true));
    assert!(!ok.contains(" 407 "), "{ok}");
    // An absolute-form request (as axios sends through HTTPS_PROXY) from
    // the run's uid with its credentials gets the key put in.
    let port = w.provider.port();
    let absolute = raw_as(
        0,
        addr,
        &format!(
            "GET https://localhost:{port}/api HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: Basic {auth}\r\nAuthorization: Bearer {placeholder}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(absolute.contains(" 200 "), "{absolute}");
    assert_eq!((w.provider.accepted(), w.provider.seen_authorizations()), (1, 0));
    stop_with_stderr(&mut run);
    let mut said = String::new();
    BufReader::new(run.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .for_each(|l| {
            said.push_str(&l);
            said.push('\n');
        });
    assert!(said.contains("refused a proxy client"), "{said}");
    assert!(said.contains("uid 65534"), "{said}");
    assert!(said.contains("2 client(s) without its credentials"), "{said}");
}

fn stop_with_stderr(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn base64_basic(creds: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(creds)
}

#[test]
fn bad_bindings_a_missing_ca_or_no_agent_start_nothing() {
    let w = World::start("");
    let marker = w.tmp.path().join("started");
    let touch = format!("touch {}", marker.display());
    let port = w.provider.port();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--key".into(), format!("{KEY}={VAR}")], "VAR@HOST"),
        (
            vec!["--key".into(), format!("{KEY}={VAR}@127.0.0.1:{port}")],
            "IP address",
        ),
        (vec!["--key".into(), format!("{KEY}={VAR}@*.example")], "wildcard"),
        (
            vec![
                "--key".into(),
                format!("{KEY}={VAR}@localhost:{port}"),
                "--upstream-ca".into(),
                "/nonexistent/ca.pem".into(),
            ],
            "no such file",
        ),
        (
            vec!["--key".into(), format!("prod/missing={VAR}@localhost:{port}")],
            "prod/missing",
        ),
    ];
    for (args, why) in cases {
        let out = Command::new(KEYWARD)
            .arg("--dev")
            .arg(&w.agent.dir)
            .args(["run", "--proxy"])
            .args(&args)
            .args(["--", "sh", "-c", &touch])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(why) && err.contains("not started"), "{args:?}: {err}");
        assert!(!marker.exists(), "{args:?} started the command");
    }
    let gone = tempfile::tempdir().unwrap();
    let out = Command::new(KEYWARD)
        .arg("--dev")
        .arg(gone.path())
        .args(["run", "--proxy", "--key", &w.binding(), "--", "sh", "-c", &touch])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not started"), "{}", text(&out.stderr));
    assert!(!marker.exists());
}

#[test]
fn keyward_proxy_serves_a_base_url_route_to_its_uid_only() {
    let w = World::start("");
    let mut proxy = Command::new(KEYWARD)
        .arg("--dev")
        .arg(&w.agent.dir)
        .args(["proxy", "--listen", "127.0.0.1:0", "--key"])
        .arg(format!("{KEY}@localhost:{}", w.provider.port()))
        .arg("--route")
        .arg(format!("/billing=https://localhost:{}", w.provider.port()))
        .arg("--upstream-ca")
        .arg(&w.ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("keyward proxy: listening on ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let placeholder = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("placeholder ")
                .map(|p| p.split(' ').next().unwrap().to_owned())
        })
        .unwrap();
    // Keep reading what the proxy says, so that its stdout stays open.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let get = |uid: u32| {
        raw_as(
            uid,
            &addr,
            &format!("GET /billing/api HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {placeholder}\r\nConnection: close\r\n\r\n"),
        )
    };
    let (root, other) = (get(0), get(65534));
    assert!(root.contains(" 200 "), "{root}");
    assert!(other.contains(" 407 "), "{other}");
    assert_eq!(w.provider.accepted(), 1);
    assert_eq!(w.provider.seen_authorizations(), 0);
    stop(proxy);
    rest.join().unwrap();
}
