//! Fleet mode against a real OpenBao server (`bao server`, raft storage,
//! on loopback; see tests/common/openbao.rs): three agents with their own
//! state directories and sockets share it.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::openbao::Bao;
use common::{key, scrape, text, TestAgent, KEYWARD};
use keyward::proto;

/// How long anything here may take to propagate (the agents poll every
/// 200 ms).
pub(crate) const PROPAGATION: Duration = Duration::from_secs(10);

/// What [`Fleet::tail`] appends to agent i's config, given i and its
/// directory.
pub(crate) type Tail = dyn Fn(usize, &std::path::Path) -> String;

/// A fleet of agents on one OpenBao.
pub(crate) struct Fleet {
    pub(crate) bao: Bao,
    pub(crate) agents: Vec<TestAgent>,
    pub(crate) token_file: PathBuf,
    /// The `[[backend.member]]` entries every agent's config lists (all the
    /// agents', unless a test trims them).
    members: Vec<String>,
    /// Agent 0's metrics on this TCP port instead of `dir/metrics.sock`
    /// (for a Prometheus server, which scrapes TCP).
    pub(crate) metrics_port: Option<u16>,
    /// Appended to agent i's config after the member list (its own tables,
    /// e.g. `[[key]]`), given i and the agent's directory.
    pub(crate) tail: Box<Tail>,
}

impl Fleet {
    /// `n` agents named a, b, c…; `extra(i)` is appended to agent i's
    /// `[backend]` table.
    pub(crate) fn start(n: usize, extra: impl Fn(usize) -> String) -> Fleet {
        let mut fleet = Fleet::prepare(n);
        fleet.launch(extra);
        fleet
    }

    /// OpenBao and `n` agents with identities, not started.
    pub(crate) fn prepare(n: usize) -> Fleet {
        let bao = Bao::start();
        let token_file = bao.dir.join("agent.token");
        bao.token_file(&token_file);
        let agents: Vec<TestAgent> = (0..n).map(|_| TestAgent::prepare()).collect();
        let members: Vec<String> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| a.member_entry(&agent_name(i)))
            .collect();
        Fleet {
            bao,
            agents,
            token_file,
            members,
            metrics_port: None,
            tail: Box::new(|_, _| String::new()),
        }
    }

    pub(crate) fn launch(&mut self, extra: impl Fn(usize) -> String) {
        let mut agents = std::mem::take(&mut self.agents);
        for (i, agent) in agents.iter_mut().enumerate() {
            let dir = agent.dir.clone();
            agent.launch(&self.config(i, &dir, &extra(i)));
        }
        self.agents = agents;
    }

    /// Agent i's config: the metrics endpoint on `dir/metrics.sock`, a 1 s
    /// grace, and `[backend]` with test timings and `extra`.
    fn config(&self, i: usize, dir: &std::path::Path, extra: &str) -> String {
        let login = if extra.contains("approle") {
            String::new()
        } else {
            format!("token_file = {:?}\n", self.token_file.display().to_string())
        };
        // Test timings, unless `extra` sets its own.
        let timings: String = [
            ("poll_interval", "200ms"),
            ("status_ttl", "6s"),
            ("stale_after", "2s"),
            ("request_timeout", "1s"),
            ("initial_sync_timeout", "3s"),
        ]
        .iter()
        .filter(|(k, _)| !extra.contains(&format!("{k} =")))
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
        let listen = match self.metrics_port {
            Some(port) if i == 0 => format!("127.0.0.1:{port}"),
            _ => format!("unix:{}/metrics.sock", dir.display()),
        };
        format!(
            "lock_memory = false\n[metrics]\nlisten = \"{listen}\"\n[rotation]\ngrace = \"1s\"\n[backend]\nkind = \"openbao\"\naddress = {:?}\n{login}agent_id = \"{}\"\n{timings}{extra}\n{}{}",
            self.bao.addr,
            agent_name(i),
            self.members.concat(),
            (self.tail)(i, dir),
        )
    }

    pub(crate) fn agent(&self, i: usize) -> &TestAgent {
        &self.agents[i]
    }
}

pub(crate) fn agent_name(i: usize) -> String {
    ((b'a' + i as u8) as char).to_string()
}

/// Writes `data` as the next version of `secret/<path>`, as an operator
/// with the bao CLI would.
fn kv_put_raw(bao: &Bao, path: &str, data: &serde_json::Value) {
    bao.cli_ok(&["kv", "put", "-mount=secret", path, "-"], Some(&data.to_string()));
}

/// The `data.data` of version `version` of `secret/<path>`.
fn kv_get_raw_version(bao: &Bao, path: &str, version: u64) -> Option<serde_json::Value> {
    let v = format!("-version={version}");
    let json = bao.cli_json(&["kv", "get", "-mount=secret", "-format=json", &v, path], None);
    Some(json["data"]["data"].clone()).filter(|d| !d.is_null())
}

/// The value of the unlabelled sample `name`, if exposed.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub(crate) fn primary(set: &proto::KeySet) -> Vec<u8> {
    set.primary.as_ref().unwrap().secret.to_vec()
}

/// Polls `agent` until `prod/NAME`'s primary is `secret`; the time it took.
pub(crate) async fn until_served(agent: &TestAgent, name: &str, secret: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(set) = agent.fetch("prod", name).await {
            if primary(&set) == secret.as_bytes() {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{secret:?} not served within {PROPAGATION:?}: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn backend(agent: &TestAgent) -> proto::BackendStatus {
    agent.status().await.backend.expect("a backend status")
}

/// Polls until `check` holds for the agent's backend status.
pub(crate) async fn until_backend(
    agent: &TestAgent,
    what: &str,
    check: impl Fn(&proto::BackendStatus) -> bool,
) -> proto::BackendStatus {
    let start = Instant::now();
    loop {
        let b = backend(agent).await;
        if check(&b) {
            return b;
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{what}: not within {PROPAGATION:?}: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `keyward fleet status ARGS…` on `agent`, once its listing satisfies
/// `check` or [`PROPAGATION`] has passed (then the listing as it is: the
/// caller's assertions say what is missing). Each agent writes its own
/// status record after it synced, so a listing read at once may still show
/// an agent's earlier record.
async fn until_fleet_status(agent: &TestAgent, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = cli(agent, &[&["fleet", "status"], args].concat(), None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let listing = text(&out.stdout);
        if check(&listing) || start.elapsed() >= PROPAGATION {
            return listing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn cli(agent: &TestAgent, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    agent.cli(args, stdin)
}

pub(crate) fn state_of(agent: &TestAgent, name: &str) -> (String, u64) {
    let out = cli(agent, &["list", "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = list
        .as_array()
        .cloned()
        .or_else(|| list["keys"].as_array().cloned())
        .unwrap();
    let k = keys
        .iter()
        .find(|k| k["key"].as_str() == Some(&format!("prod/{name}")) || k["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("prod/{name} in {list}"));
    (
        k["state"].as_str().unwrap().to_owned(),
        k["generation"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_agent_is_served_by_all_and_openbao_holds_only_ciphertext() {
    let fleet = Fleet::start(3, |_| String::new());
    let secret = "sk_fleet_put_3f9a1c";
    fleet.agent(0).put("prod/billing-api", secret);
    for i in 0..3 {
        let took = until_served(fleet.agent(i), "billing-api", secret).await;
        eprintln!("agent {} serves the put after {took:?}", agent_name(i));
    }

    // The others' audit names the backend version they applied and served.
    let b = fleet.agent(1);
    b.fetch("prod", "billing-api").await.unwrap();
    let lines = b.audit_lines();
    let sync = lines
        .iter()
        .find(|l| l["event"] == "fleet_sync" && l["key"] == "prod/billing-api" && l["outcome"] == "ok")
        .expect("a fleet_sync record");
    assert_eq!(sync["backend_version"], 1, "{sync}");
    let fetch = lines
        .iter()
        .rev()
        .find(|l| l["event"] == "fetch")
        .expect("a fetch record");
    assert_eq!(fetch["backend_version"], 1, "{fetch}");
    assert_eq!(fetch["generation_after"], 1, "{fetch}");
    // The chain covers the new field.
    let out = cli(b, &["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    // A rotation step too, then the raw KV values: ciphertext only.
    let staged = "sk_fleet_staged_77d2e0";
    let out = cli(fleet.agent(2), &["stage", "prod/billing-api"], Some(staged.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 0..3 {
        let start = Instant::now();
        while fleet
            .agent(i)
            .fetch("prod", "billing-api")
            .await
            .unwrap()
            .fallback
            .is_none()
        {
            assert!(
                start.elapsed() < PROPAGATION,
                "stage not propagated to {}",
                agent_name(i)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let raw = fleet
        .bao
        .kv_get_raw("keyward/keys/prod/billing-api")
        .expect("a record in OpenBao");
    let raw_text = raw.to_string();
    assert!(raw_text.contains("BEGIN AGE ENCRYPTED FILE"), "{raw_text}");
    assert_eq!(raw["format"], "keyward-fleet-v1");
    for s in [secret, staged] {
        assert!(!raw_text.contains(s), "plaintext secret in OpenBao: {raw_text}");
    }
    // Every other path keyward wrote: statuses and the change marker.
    let mut paths = vec!["keyward/changes".to_owned()];
    for a in fleet.bao.kv_list("keyward/agents") {
        paths.push(format!("keyward/agents/{a}"));
    }
    assert!(paths.len() >= 4, "three agent statuses and the marker: {paths:?}");
    for p in paths {
        let v = fleet.bao.kv_get_raw(&p).map(|v| v.to_string()).unwrap_or_default();
        for s in [secret, staged] {
            assert!(!v.contains(s), "plaintext secret at {p}: {v}");
        }
    }

    // Each agent's status says where its keys come from.
    let status = until_backend(fleet.agent(1), "b in sync", |b| !b.stale).await;
    assert_eq!(status.kind, "openbao");
    assert_eq!(status.agent_id, "b");
    assert!(status.problems.is_empty(), "{status:?}");
    let out = cli(fleet.agent(0), &["fleet", "status", "prod/billing-api"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    for id in ["a", "b", "c"] {
        assert!(listing.contains(&format!("{id} (")), "{listing}");
    }
    assert!(listing.contains("prod/billing-api generation 2 (staged"), "{listing}");
}

/// A watcher on `agent` for prod/NAME: its events as they come.
pub(crate) async fn watcher(
    agent: &TestAgent,
    name: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, proto::KeySet)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = agent
        .keys()
        .await
        .watch_keys(proto::WatchKeysRequest {
            keys: vec![key("prod", name).unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if tx.send((Instant::now(), event.key_set.unwrap())).is_err() {
                break;
            }
        }
    });
    rx
}

/// Drains `rx` until a key set of at least `generation` arrives.
async fn until_generation(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, proto::KeySet)>,
    generation: u64,
) -> (Instant, proto::KeySet) {
    loop {
        let (at, set) = tokio::time::timeout(PROPAGATION, rx.recv())
            .await
            .expect("a watch event in time")
            .expect("the stream is open");
        if set.generation >= generation {
            return (at, set);
        }
    }
}

fn rotate_fleet(agent: &TestAgent, name: &str, secret: &str, timeout: &str) -> std::process::Child {
    let mut child = Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args([
            "rotate",
            "--fleet",
            "--stdin",
            "--poll",
            "100ms",
            "--fleet-timeout",
            timeout,
        ])
        .arg(format!("prod/{name}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(secret.as_bytes()).unwrap();
    child
}

/// Once `prod/NAME` is promoted on `agent`, fetches it and reports using
/// the new primary: the evidence the rotation job needs to retire (these
/// tests' watchers are raw streams, which do not report).
async fn report_use_once_promoted(agent: &TestAgent, name: &str) {
    let start = Instant::now();
    loop {
        if state_of(agent, name).0 == "promoted" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prod/{name} was never promoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let set = agent.fetch("prod", name).await.unwrap();
    let version = set.primary.unwrap().version.to_string();
    let key = format!("prod/{name}");
    let out = cli(
        agent,
        &["report", &key, "--version", &version, "--service", "test", "--used"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

pub(crate) fn signal(agent: &TestAgent, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rotation_reaches_every_watcher_and_waits_for_a_paused_agent() {
    let fleet = Fleet::start(3, |_| String::new());
    fleet.agent(0).put("prod/crm", "sk_crm_old_51a0");
    for i in 0..3 {
        until_served(fleet.agent(i), "crm", "sk_crm_old_51a0").await;
    }
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut rx = watcher(fleet.agent(i), "crm").await;
        until_generation(&mut rx, 1).await;
        watchers.push(rx);
    }

    // Agent c is paused: its status stays live (TTL 6 s) but it cannot
    // apply anything, so the rotation must wait for it at the stage.
    signal(fleet.agent(2), nix::sys::signal::Signal::SIGSTOP);
    let mut rotate = rotate_fleet(fleet.agent(0), "crm", "sk_crm_new_93bd", "30s");
    let start = Instant::now();
    while state_of(fleet.agent(0), "crm") != ("staged".to_owned(), 2) {
        assert!(start.elapsed() < PROPAGATION, "rotate did not stage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Staged, and still so after a while: the rotation waits for c.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rotate.try_wait().unwrap().is_none(), "rotate --fleet went on without c");
    let (state, generation) = state_of(fleet.agent(0), "crm");
    assert_eq!(
        (state.as_str(), generation),
        ("staged", 2),
        "waiting at the stage for c"
    );
    let resumed = Instant::now();
    signal(fleet.agent(2), nix::sys::signal::Signal::SIGCONT);
    report_use_once_promoted(fleet.agent(0), "crm").await;
    let out = tokio::task::spawn_blocking(move || rotate.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("fleet agents that do not serve generation 2 yet: c (serves generation 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("promote: now promoted at generation 3"), "{stdout}");
    assert!(stdout.contains("retire: now steady at generation 4"), "{stdout}");

    // Every watcher saw the promotion (after c was resumed) and the end.
    for (i, rx) in watchers.iter_mut().enumerate() {
        let (promoted_at, promoted) = until_generation(rx, 3).await;
        assert_eq!(primary(&promoted), b"sk_crm_new_93bd", "agent {}", agent_name(i));
        assert!(
            promoted_at > resumed,
            "agent {} got the promotion before c was resumed",
            agent_name(i)
        );
        let (_, retired) = until_generation(rx, 4).await;
        assert_eq!(primary(&retired), b"sk_crm_new_93bd");
        assert!(retired.fallback.is_none(), "retired on agent {}", agent_name(i));
    }

    // Bounded wait: c paused past --fleet-timeout stops the rotation at the
    // stage, naming c; nothing is promoted.
    signal(fleet.agent(2), nix::sys::signal::Signal::SIGSTOP);
    let rotate = rotate_fleet(fleet.agent(0), "crm", "sk_crm_newer_0c44", "1500ms");
    let out = tokio::task::spawn_blocking(move || rotate.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    signal(fleet.agent(2), nix::sys::signal::Signal::SIGCONT);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(stderr.contains("c (serves generation 4)"), "{stderr}");
    assert!(stderr.contains("it stays staged"), "{stderr}");
    assert_eq!(state_of(fleet.agent(0), "crm"), ("staged".to_owned(), 5));
    // Run again: it resumes from the stage and completes.
    let rotate = rotate_fleet(fleet.agent(0), "crm", "unused", "30s");
    report_use_once_promoted(fleet.agent(0), "crm").await;
    let out = tokio::task::spawn_blocking(move || rotate.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    for i in 0..3 {
        until_served(fleet.agent(i), "crm", "sk_crm_newer_0c44").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_down_agents_keep_serving_report_staleness_restart_from_their_copy_and_converge() {
    let mut fleet = Fleet::start(3, |_| String::new());
    fleet.agent(0).put("prod/enrich", "sk_enrich_before_a81f");
    for i in 0..3 {
        until_served(fleet.agent(i), "enrich", "sk_enrich_before_a81f").await;
    }

    fleet.bao.stop();
    for i in 0..3 {
        let b = until_backend(fleet.agent(i), "stale after OpenBao stopped", |b| b.stale).await;
        assert!(!b.last_error.is_empty(), "{b:?}");
        assert!(b.last_sync_at.is_some(), "{b:?}");
        // Still serving the last good key.
        let set = fleet.agent(i).fetch("prod", "enrich").await.unwrap();
        assert_eq!(primary(&set), b"sk_enrich_before_a81f");
    }
    // The alert opens (at the follower's next round once stale), and
    // `keyward status` says it.
    let start = Instant::now();
    loop {
        let open = fleet.agent(0).status().await.open_alerts;
        if open
            .iter()
            .any(|a| a.signal == "agent_health" && a.dedup_key.contains("agent/backend"))
        {
            break;
        }
        assert!(start.elapsed() < PROPAGATION, "no backend alert: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(fleet.agent(0), &["status"], None);
    assert!(
        text(&out.stdout).contains("STALE, serving the local copy"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(fleet.agent(0), &["doctor"], None);
    assert!(
        text(&out.stdout).contains("not in sync with OpenBao"),
        "{}",
        text(&out.stdout)
    );
    let metrics = scrape(&fleet.agent(0).dir.join("metrics.sock"));
    assert_eq!(sample(&metrics, "keyward_backend_stale"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "keyward_backend_up"), Some(0.0), "{metrics}");
    assert!(
        sample(&metrics, "keyward_backend_stale_seconds").unwrap() >= 2.0,
        "{metrics}"
    );
    // A change needs OpenBao: refused, nothing changed.
    let out = cli(fleet.agent(0), &["put", "prod/other"], Some(b"sk_refused_put_55"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unreachable") && stderr.contains("nothing was changed"),
        "{stderr}"
    );

    // An agent restarted while OpenBao is down serves its local copy, and
    // knows how stale it is.
    fleet.agents[1].stop();
    fleet.agents[1].spawn().expect("restarts without OpenBao");
    let set = fleet.agent(1).fetch("prod", "enrich").await.unwrap();
    assert_eq!(primary(&set), b"sk_enrich_before_a81f");
    let b = backend(fleet.agent(1)).await;
    assert!(b.stale && b.last_sync_at.is_some(), "{b:?}");

    // OpenBao back: everyone converges, and a new change reaches all.
    fleet.bao.restart();
    for i in 0..3 {
        until_backend(fleet.agent(i), "in sync after OpenBao is back", |b| {
            !b.stale && b.last_error.is_empty()
        })
        .await;
    }
    let metrics = scrape(&fleet.agent(0).dir.join("metrics.sock"));
    assert_eq!(sample(&metrics, "keyward_backend_stale"), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "keyward_backend_up"), Some(1.0), "{metrics}");
    fleet.agent(2).put("prod/after", "sk_after_restart_9e3d");
    let out = cli(
        fleet.agent(0),
        &["put", "--overwrite", "prod/enrich"],
        Some(b"sk_enrich_after_c2b7"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for i in 0..3 {
        until_served(fleet.agent(i), "after", "sk_after_restart_9e3d").await;
        until_served(fleet.agent(i), "enrich", "sk_enrich_after_c2b7").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_rotations_check_and_set_lets_one_win() {
    // b follows slowly (no change marker polling to speak of), so its view
    // is old when it writes.
    let fleet = Fleet::start(3, |i| {
        if i == 1 {
            "poll_interval = \"1h\"\nresync_interval = \"1h\"".to_owned()
        } else {
            String::new()
        }
    });
    fleet.agent(0).put("prod/payments", "sk_pay_v1_11aa");
    // b learns of the key only through a restart's first sync.
    let mut agents = fleet.agents;
    agents[1].stop();
    agents[1].spawn().unwrap();
    until_served(&agents[1], "payments", "sk_pay_v1_11aa").await;
    let out = cli(&agents[0], &["stage", "prod/payments"], Some(b"sk_pay_from_a_22bb"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(&agents[1], &["stage", "prod/payments"], Some(b"sk_pay_from_b_33cc"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("changed in OpenBao by another agent or admin"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    // The loser re-synced at once and serves the winner's stage.
    for a in &agents {
        let start = Instant::now();
        loop {
            // c may not have the key yet at all.
            let set = a.fetch("prod", "payments").await.ok();
            if let Some(f) = set.as_ref().and_then(|s| s.fallback.as_ref()) {
                assert_eq!(f.secret.to_vec(), b"sk_pay_from_a_22bb");
                break;
            }
            assert!(start.elapsed() < PROPAGATION, "{set:?}\n{}", a.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    // Truly at once, from a and c (both in sync): exactly one promote wins.
    let (a, c) = (&agents[0], &agents[2]);
    let (ra, rc) = tokio::join!(
        async {
            a.admin()
                .await
                .promote_key(proto::RotationRequest {
                    key: key("prod", "payments"),
                    ..Default::default()
                })
                .await
        },
        async {
            c.admin()
                .await
                .promote_key(proto::RotationRequest {
                    key: key("prod", "payments"),
                    ..Default::default()
                })
                .await
        },
    );
    let loser = match (ra, rc) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one promote wins: {other:?}"),
    };
    assert!(
        matches!(loser.code(), tonic::Code::Aborted | tonic::Code::FailedPrecondition),
        "{loser:?}"
    );
    // (b polls hourly: it sees this at its next change of its own.)
    for a in [&agents[0], &agents[2]] {
        let start = Instant::now();
        while state_of(a, "payments") != ("promoted".to_owned(), 3) {
            assert!(start.elapsed() < PROPAGATION, "{:?}", state_of(a, "payments"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let raw = fleet.bao.kv_get_raw("keyward/keys/prod/payments").unwrap().to_string();
    assert!(!raw.contains("sk_pay_from_b_33cc") && !raw.contains("sk_pay_from_a_22bb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_or_replayed_in_openbao_is_refused_and_the_last_good_state_serves() {
    let fleet = Fleet::start(2, |_| String::new());
    fleet.agent(0).put("prod/one", "sk_one_v1_aa01");
    fleet.agent(0).put("prod/two", "sk_two_v1_bb02");
    let out = cli(
        fleet.agent(0),
        &["put", "--overwrite", "prod/one"],
        Some(b"sk_one_v2_aa03"),
    );
    assert!(out.status.success());
    for i in 0..2 {
        until_served(fleet.agent(i), "one", "sk_one_v2_aa03").await;
        until_served(fleet.agent(i), "two", "sk_two_v1_bb02").await;
    }
    // An operator copies one's record over two's path.
    let one = fleet.bao.kv_get_raw("keyward/keys/prod/one").unwrap();
    kv_put_raw(&fleet.bao, "keyward/keys/prod/two", &one);
    // And replays one's version 1 as its newest version.
    let old = kv_get_raw_version(&fleet.bao, "keyward/keys/prod/one", 1).unwrap();
    kv_put_raw(&fleet.bao, "keyward/keys/prod/one", &old);
    kv_put_raw(&fleet.bao, "keyward/changes", &serde_json::json!({"poke": 1}));
    let b = until_backend(fleet.agent(1), "problems reported", |b| b.problems.len() == 2).await;
    let problems = b.problems.join("\n");
    assert!(
        problems.contains("prod/two") && problems.contains("copied to the wrong path"),
        "{problems}"
    );
    assert!(
        problems.contains("prod/one") && problems.contains("replay"),
        "{problems}"
    );
    // The signature (over the path and version) is what refuses them now,
    // before anything is decrypted.
    assert_eq!(
        problems.matches("signature by member \"a\" does not verify").count(),
        2,
        "{problems}"
    );
    for i in 0..2 {
        let set = fleet.agent(i).fetch("prod", "one").await.unwrap();
        assert_eq!(primary(&set), b"sk_one_v2_aa03");
        let set = fleet.agent(i).fetch("prod", "two").await.unwrap();
        assert_eq!(primary(&set), b"sk_two_v1_bb02");
    }
}

/// A token with the README's agent policy only (what a stolen token from
/// any one host gives), written to `path`. The policy is read from the
/// README itself (its one `hcl` block), so the tests hold it to what it
/// says.
pub(crate) fn readme_policy_token(bao: &Bao, path: &std::path::Path) -> String {
    let readme = include_str!("../../README.md");
    let policy = readme
        .split_once("```hcl\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the README gives the agents' policy in an hcl block")
        .0;
    bao.cli_ok(&["policy", "write", "keyward-readme-agent", "-"], Some(policy));
    let token = bao.cli_json(
        &[
            "token",
            "create",
            "-format=json",
            "-policy=keyward-readme-agent",
            "-ttl=1h",
        ],
        None,
    )["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    common::openbao::write_private(path, &token);
    token
}

/// Writes `data` as the next version of `secret/<path>` with `token`, as
/// an attacker holding it would (the raw API: no mount lookup needed).
pub(crate) fn kv_put_with(bao: &Bao, token: &str, path: &str, data: &serde_json::Value) {
    let body = serde_json::json!({ "data": data }).to_string();
    let out = bao.cli(
        &["write", &format!("secret/data/{path}"), "-"],
        Some(&body),
        Some(token),
    );
    assert!(out.status.success(), "bao write {path}: {}", text(&out.stderr));
}

/// SIGHUP, then waits for the agent's successful `config_reload` audit
/// record (the first after the ones already there); returns it.
async fn reload_config(agent: &TestAgent) -> serde_json::Value {
    let is_reload = |l: &serde_json::Value| l["event"] == "config_reload" && l["outcome"] == "ok";
    let before = agent.audit_lines().iter().filter(|l| is_reload(l)).count();
    signal(agent, nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    loop {
        if let Some(l) = agent.audit_lines().into_iter().filter(|l| is_reload(l)).nth(before) {
            return l;
        }
        assert!(start.elapsed() < PROPAGATION, "no reload: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `check` holds for the agent's open alerts.
pub(crate) async fn until_alert(
    agent: &TestAgent,
    what: &str,
    check: impl Fn(&proto::OpenAlert) -> bool,
) -> proto::OpenAlert {
    let start = Instant::now();
    loop {
        let open = agent.status().await.open_alerts;
        if let Some(a) = open.iter().find(|a| check(a)) {
            return a.clone();
        }
        assert!(start.elapsed() < PROPAGATION, "{what}: no such alert: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_markers_and_statuses_not_signed_by_a_member_are_refused_reported_and_the_last_good_state_serves() {
    // a and b are the fleet. m is an attacker's own keyward agent on the
    // same prefix, with a token holding only the README's agent policy: it
    // lists a and b (so it reads and follows their records) and itself,
    // and encrypts to everyone's recipient. a and b do not list it as a
    // member; they still encrypt to its recipient (`[backend] recipients`,
    // e.g. a reader that is not a member), so that m can read and
    // overwrite an existing key: the strongest position short of a
    // member's own signing key.
    let mut m = TestAgent::prepare();
    let m_recipient = m.recipient().to_string();
    let fleet = Fleet::start(2, |_| format!("recipients = [{m_recipient:?}]\n"));
    fleet.agent(0).put("prod/pay", "sk_pay_good_v1_1a1a");
    fleet.agent(0).put("prod/other", "sk_other_good_v1_2b2b");
    until_served(fleet.agent(1), "pay", "sk_pay_good_v1_1a1a").await;
    until_served(fleet.agent(1), "other", "sk_other_good_v1_2b2b").await;

    let stolen = fleet.bao.dir.join("stolen.token");
    let token = readme_policy_token(&fleet.bao, &stolen);
    let m_config = format!(
        "lock_memory = false\n[backend]\nkind = \"openbao\"\naddress = {:?}\ntoken_file = {:?}\nagent_id = \"m\"\npoll_interval = \"200ms\"\nstatus_ttl = \"6s\"\nstale_after = \"2s\"\nrequest_timeout = \"1s\"\ninitial_sync_timeout = \"3s\"\n{}{}",
        fleet.bao.addr,
        stolen.display().to_string(),
        fleet.members.concat(),
        m.member_entry("m"),
    );
    m.launch(&m_config);
    until_served(&m, "pay", "sk_pay_good_v1_1a1a").await;

    // 1. A key record encrypted to every recipient, written with the
    // agent policy, signed by m (not a member of a's and b's fleet).
    let out = cli(&m, &["put", "--overwrite", "prod/pay"], Some(b"sk_pay_FORGED_6666"));
    assert!(out.status.success(), "m's write reaches OpenBao: {}", text(&out.stderr));
    // 2. An unsigned deletion marker for prod/other, written by hand.
    let marker = serde_json::json!({"format": "keyward-fleet-v1", "deleted": true, "generation": 2});
    kv_put_with(&fleet.bao, &token, "keyward/keys/prod/other", &marker);
    // 3. Statuses: m publishes its own (signed by m); a's copied to
    // agents/zz (signed by a, but for a's path).
    let a_status = fleet.bao.kv_get_raw("keyward/agents/a").unwrap();
    kv_put_with(&fleet.bao, &token, "keyward/agents/zz", &a_status);
    kv_put_with(&fleet.bao, &token, "keyward/changes", &serde_json::json!({"poke": 1}));

    // Refused and reported on b (`keyward status`, published to `fleet
    // status`), while the last good state serves.
    let b = until_backend(fleet.agent(1), "b refuses both", |b| b.problems.len() == 2).await;
    let problems = b.problems.join("\n");
    assert!(
        problems.contains("prod/pay")
            && problems.contains("signed by \"m\", which is not in this agent's [[backend.member]] list"),
        "{problems}"
    );
    assert!(
        problems.contains("prod/other") && problems.contains("not signed"),
        "{problems}"
    );
    for i in 0..2 {
        let set = fleet.agent(i).fetch("prod", "pay").await.unwrap();
        assert_eq!(primary(&set), b"sk_pay_good_v1_1a1a", "the forged key is not served");
        let set = fleet
            .agent(i)
            .fetch("prod", "other")
            .await
            .expect("nothing was deleted");
        assert_eq!(primary(&set), b"sk_other_good_v1_2b2b");
    }
    // Still refused a while later (nothing applied it meanwhile).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        primary(&fleet.agent(1).fetch("prod", "pay").await.unwrap()),
        b"sk_pay_good_v1_1a1a"
    );

    // `keyward fleet status`: only a and b count (m is listed nowhere as
    // a member, zz is a copy of a's status); the refusals are listed; b's
    // problems show.
    let listing = until_fleet_status(fleet.agent(0), &[], |l| {
        l.contains("REFUSED") && l.contains("agents/m") && l.contains("agents/zz") && l.contains("PROBLEM prod/pay")
    })
    .await;
    assert!(
        listing.contains("agents/m") && listing.contains("agents/zz"),
        "{listing}"
    );
    assert!(listing.contains("PROBLEM prod/pay"), "{listing}");
    let out = cli(fleet.agent(0), &["fleet", "status", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = json["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "only members' own statuses count: {json}");
    let refused = json["refused"].to_string();
    assert!(refused.contains("only member \\\"zz\\\" writes here"), "{refused}");

    // An audit record of each refusal on b, and an alert.
    let lines = fleet.agent(1).audit_lines();
    let rejected: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "fleet_sync" && l["outcome"] == "rejected")
        .collect();
    for key in ["prod/pay", "prod/other"] {
        assert!(
            rejected.iter().any(|l| l["key"] == key),
            "{key} not audited: {rejected:?}"
        );
    }
    assert!(
        rejected
            .iter()
            .any(|l| l["detail"].as_str().unwrap_or("").contains("keyward/changes")),
        "the change marker m bumped is refused too: {rejected:?}"
    );
    until_alert(fleet.agent(1), "b alerts", |a| {
        a.signal == "agent_health" && a.dedup_key.contains("agent/fleet")
    })
    .await;
    let out = cli(fleet.agent(1), &["audit", "verify"], None);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    // The secrets never reach a log or a problem line.
    assert!(!fleet.agent(1).logs().contains("sk_pay_FORGED_6666"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_new_writes_are_refused_after_reload_and_its_old_records_still_serve() {
    let fleet = Fleet::start(3, |_| String::new());
    fleet.agent(2).put("prod/from-c", "sk_from_c_v1_3c3c");
    until_served(fleet.agent(0), "from-c", "sk_from_c_v1_3c3c").await;

    // c is removed from a's member list; a reloads.
    let config = fleet.agent(0).dir.parent().unwrap().join("keyward.toml");
    let text_before = std::fs::read_to_string(&config).unwrap();
    let without_c = text_before.replace(&fleet.members[2], "");
    assert_ne!(without_c, text_before);
    std::fs::write(&config, &without_c).unwrap();
    let reload = reload_config(fleet.agent(0)).await;
    assert!(
        reload["detail"].as_str().unwrap().contains("member (2 members, was 3)"),
        "{reload}"
    );

    // c's new writes: b (which still lists c) applies them; a refuses them.
    let out = cli(
        fleet.agent(2),
        &["put", "--overwrite", "prod/from-c"],
        Some(b"sk_from_c_v2_4d4d"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    fleet.agent(2).put("prod/new-from-c", "sk_new_from_c_5e5e");
    until_served(fleet.agent(1), "from-c", "sk_from_c_v2_4d4d").await;
    until_served(fleet.agent(1), "new-from-c", "sk_new_from_c_5e5e").await;
    let b = until_backend(fleet.agent(0), "a refuses c's writes", |b| b.problems.len() == 2).await;
    assert!(
        b.problems
            .iter()
            .all(|p| p.contains("signed by \"c\", which is not in")),
        "{b:?}"
    );
    // What c signed before its removal still serves on a.
    let set = fleet.agent(0).fetch("prod", "from-c").await.unwrap();
    assert_eq!(primary(&set), b"sk_from_c_v1_3c3c");
    assert!(fleet.agent(0).fetch("prod", "new-from-c").await.is_err());

    // Until replaced by a member: b overwrites it, a applies that.
    let out = cli(
        fleet.agent(1),
        &["put", "--overwrite", "prod/from-c"],
        Some(b"sk_from_b_v3_6f6f"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    until_served(fleet.agent(0), "from-c", "sk_from_b_v3_6f6f").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_logging_in_with_approle_keeps_syncing_past_its_token_max_ttl() {
    let mut fleet = Fleet::prepare(2);
    let (role_id, secret_id) = fleet.bao.approle("keyward-agent", "2s", "4s");
    let role_file = fleet.bao.dir.join("role_id");
    let secret_file = fleet.bao.dir.join("secret_id");
    common::openbao::write_private(&role_file, &role_id);
    common::openbao::write_private(&secret_file, &secret_id);
    let approle = format!(
        "approle = {{ role_id_file = {:?}, secret_id_file = {:?} }}",
        role_file.display().to_string(),
        secret_file.display().to_string()
    );
    fleet.launch(|i| if i == 1 { approle.clone() } else { String::new() });
    fleet.agent(0).put("prod/crm", "sk_approle_v1_d00d");
    until_served(fleet.agent(1), "crm", "sk_approle_v1_d00d").await;
    // Past the 4 s max TTL: the agent logged in again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = cli(
        fleet.agent(0),
        &["put", "--overwrite", "prod/crm"],
        Some(b"sk_approle_v2_beef"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    until_served(fleet.agent(1), "crm", "sk_approle_v2_beef").await;
    until_backend(fleet.agent(1), "in sync on AppRole", |b| {
        !b.stale && b.last_error.is_empty()
    })
    .await;
    // And it writes with its AppRole token too.
    let out = cli(fleet.agent(1), &["put", "prod/from-b"], Some(b"sk_written_by_b_f00"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    until_served(fleet.agent(0), "from-b", "sk_written_by_b_f00").await;
    let logs = fleet.agent(1).logs();
    assert!(
        !logs.contains(&secret_id) && !logs.contains(&role_id),
        "login ids are never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_every_agent_and_a_new_key_continues_its_generation() {
    let fleet = Fleet::start(2, |_| String::new());
    fleet.agent(0).put("prod/gone", "sk_gone_v1_7a7a");
    until_served(fleet.agent(1), "gone", "sk_gone_v1_7a7a").await;
    let mut rx = watcher(fleet.agent(1), "gone").await;
    until_generation(&mut rx, 1).await;
    let out = cli(fleet.agent(0), &["delete", "prod/gone", "--yes"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = Instant::now();
    while fleet.agent(1).fetch("prod", "gone").await.is_ok() {
        assert!(start.elapsed() < PROPAGATION, "the delete reached b");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The deletion marker is in OpenBao; b audited it.
    let raw = fleet.bao.kv_get_raw("keyward/keys/prod/gone").unwrap();
    assert_eq!(raw["deleted"], true, "{raw}");
    assert!(fleet
        .agent(1)
        .audit_lines()
        .iter()
        .any(|l| l["event"] == "fleet_sync" && l["detail"] == "deleted" && l["backend_version"] == 2));
    // Created again from b: the generation goes on from the deleted key's.
    fleet.agent(1).put("prod/gone", "sk_gone_again_8b8b");
    until_served(fleet.agent(0), "gone", "sk_gone_again_8b8b").await;
    let set = fleet.agent(0).fetch("prod", "gone").await.unwrap();
    assert_eq!(set.generation, 3, "1 (put), 2 (delete), 3 (put again)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_the_fleet_once_the_records_are_resealed_to_it() {
    // a and b know only each other; c is set up with all three.
    let mut fleet = Fleet::prepare(3);
    let all = fleet.members.clone();
    fleet.members.truncate(2);
    let mut agents = std::mem::take(&mut fleet.agents);
    for (i, agent) in agents.iter_mut().enumerate().take(2) {
        let dir = agent.dir.clone();
        agent.launch(&fleet.config(i, &dir, ""));
    }
    agents[0].put("prod/crm", "sk_join_v1_1234");
    fleet.members = all;
    let dir = agents[2].dir.clone();
    agents[2].launch(&fleet.config(2, &dir, ""));
    let b = until_backend(&agents[2], "c cannot decrypt", |b| !b.problems.is_empty()).await;
    assert!(
        b.problems[0].contains("prod/crm") && b.problems[0].contains("cannot decrypt"),
        "{b:?}"
    );
    assert!(
        agents[2].fetch("prod", "crm").await.is_err(),
        "nothing served that c cannot read"
    );
    // On a, c is not a member yet: `keyward fleet status` refuses its
    // status (it does not count as live) and says so.
    let listing = until_fleet_status(&agents[0], &[], |l| l.contains("REFUSED") && l.contains("agents/c")).await;
    assert!(
        listing.contains("agents/c") && listing.contains("signed by \"c\", which is not in"),
        "{listing}"
    );
    assert!(!listing.contains("c (vm)"), "{listing}");

    // `keyward fleet member` on c prints the entry the others paste (the
    // one its own config lists), and `keyward fleet join` the steps.
    let out = cli(&agents[2], &["fleet", "member"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), fleet.members[2]);
    let out = cli(&agents[2], &["fleet", "join"], None);
    let steps = text(&out.stdout);
    for step in ["keyward init", "keyward fleet member", "reload", "keyward fleet reseal"] {
        assert!(steps.contains(step), "{steps}");
    }

    // a learns c's entry (a reload: the member list is live): c counts,
    // with its problem shown to the operator on a.
    std::fs::write(
        agents[0].dir.parent().unwrap().join("keyward.toml"),
        fleet.config(0, &agents[0].dir.clone(), ""),
    )
    .unwrap();
    reload_config(&agents[0]).await;
    let listing = until_fleet_status(&agents[0], &[], |l| l.contains("PROBLEM prod/crm")).await;
    assert!(listing.contains("PROBLEM prod/crm"), "{listing}");

    // a reseals: c serves the key; the generation did not change.
    let out = cli(&agents[0], &["fleet", "reseal"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("resealed prod/crm (generation 1)"),
        "{}",
        text(&out.stdout)
    );
    until_served(&agents[2], "crm", "sk_join_v1_1234").await;
    until_backend(&agents[2], "c's problem cleared", |b| b.problems.is_empty()).await;
    let set = agents[1].fetch("prod", "crm").await.unwrap();
    assert_eq!(set.generation, 1);
}

/// `bao server -dev -dev-tls` on a free loopback port: https with a CA it
/// writes to `DIR/vault-ca.pem`; in-memory, root token "root".
struct DevTlsBao {
    child: std::process::Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl DevTlsBao {
    fn start() -> DevTlsBao {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new(common::openbao::bao_binary())
            .args(["server", "-dev", "-dev-tls", "-dev-root-token-id=root"])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let bao = DevTlsBao {
            child,
            addr: format!("https://127.0.0.1:{port}"),
            dir,
        };
        let start = Instant::now();
        while !bao.ca().exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "bao -dev-tls did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        bao
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }
}

impl Drop for DevTlsBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_configured_ca_file_works_and_without_it_is_refused() {
    let bao = DevTlsBao::start();
    let token = bao.dir.path().join("token");
    common::openbao::write_private(&token, "root");
    let mut agent = TestAgent::prepare();
    let config = |ca: &str| {
        format!(
            "lock_memory = false\n[backend]\nkind = \"openbao\"\naddress = {:?}\ntoken_file = {:?}\nrecipients = [{:?}]\nagent_id = \"tls\"\npoll_interval = \"200ms\"\nstale_after = \"2s\"\nrequest_timeout = \"2s\"\ninitial_sync_timeout = \"2s\"\n{ca}",
            bao.addr,
            token.display().to_string(),
            agent.recipient().to_string(),
        )
    };
    let with_ca = config(&format!("ca_file = {:?}\n", bao.ca().display().to_string()));
    let without = config("");
    agent.launch(&with_ca);
    agent.put("prod/tls", "sk_over_tls_5150");
    assert_eq!(primary(&agent.fetch("prod", "tls").await.unwrap()), b"sk_over_tls_5150");
    until_backend(&agent, "in sync over https", |b| !b.stale && b.last_error.is_empty()).await;
    // Not in a member list (it has none): `keyward doctor` says so, and
    // checks its signing key as it checks the identity.
    let config_file = agent.dir.parent().unwrap().join("keyward.toml");
    let out = cli(&agent, &["doctor", "--config", config_file.to_str().unwrap()], None);
    let report = text(&out.stdout);
    assert!(report.contains("not in its own [[backend.member]] list"), "{report}");
    assert!(report.contains("signing.key: 0600"), "{report}");

    // Without the CA the server's certificate is not trusted: stale, and
    // the error says why.
    agent.stop();
    std::fs::write(agent.dir.parent().unwrap().join("keyward.toml"), &without).unwrap();
    agent.spawn().unwrap();
    let b = until_backend(&agent, "refused without the CA", |b| !b.last_error.is_empty()).await;
    assert!(b.last_error.to_lowercase().contains("certificate"), "{b:?}");
    // It still serves its local copy.
    assert_eq!(primary(&agent.fetch("prod", "tls").await.unwrap()), b"sk_over_tls_5150");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_mount_that_requires_check_and_set_works_too() {
    let mut fleet = Fleet::prepare(2);
    fleet.bao.cli_ok(&["write", "secret/config", "cas_required=true"], None);
    fleet.launch(|_| String::new());
    fleet.agent(0).put("prod/strict", "sk_strict_mount_4242");
    until_served(fleet.agent(1), "strict", "sk_strict_mount_4242").await;
    // Both statuses (written where the last writer wins) got through.
    let listing = until_fleet_status(fleet.agent(1), &["prod/strict"], |l| {
        l.matches("prod/strict generation 1").count() == 2
    })
    .await;
    assert!(listing.contains("a (") && listing.contains("b ("), "{listing}");
    assert_eq!(listing.matches("prod/strict generation 1").count(), 2, "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_the_agent_could_not_load_is_never_replaced_from_the_fleet() {
    let mut fleet = Fleet::prepare(2);
    // b has a key file it cannot read (encrypted to some other identity):
    // it may be the only copy of a secret.
    let env_dir = fleet.agents[1].dir.join("store/prod");
    std::fs::create_dir_all(&env_dir).unwrap();
    let file = env_dir.join("kept.age");
    let other = age::x25519::Identity::generate().to_public();
    let foreign = common::encrypt_to(&other, b"sk_only_copy_elsewhere");
    std::fs::write(&file, &foreign).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    fleet.launch(|_| String::new());

    // A put elsewhere reaches OpenBao, but b neither applies it over its
    // file nor serves it, and says why.
    fleet.agent(0).put("prod/kept", "sk_fleet_kept_v1_9c9c");
    let b = until_backend(fleet.agent(1), "b reports the unloaded file", |b| {
        b.problems.iter().any(|p| p.contains("prod/kept"))
    })
    .await;
    assert!(b.problems.iter().any(|p| p.contains("did not load it")), "{b:?}");
    assert_eq!(std::fs::read(&file).unwrap(), foreign, "the file is untouched");
    assert!(fleet.agent(1).fetch("prod", "kept").await.is_err());

    // A change of that key on b is refused before anything reaches OpenBao.
    let out = cli(
        fleet.agent(1),
        &["put", "--overwrite", "prod/kept"],
        Some(b"sk_refused_over_file"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("did not load it"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), foreign);
    let raw = fleet.bao.kv_get_raw("keyward/keys/prod/kept").unwrap().to_string();
    let version = fleet.bao.cli_json(
        &[
            "kv",
            "metadata",
            "get",
            "-mount=secret",
            "-format=json",
            "keyward/keys/prod/kept",
        ],
        None,
    )["data"]["current_version"]
        .as_u64();
    assert_eq!(version, Some(1), "nothing written over the fleet's record: {raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_host_had_before_joining_is_replaced_by_the_fleets_and_its_watchers_are_told() {
    let mut fleet = Fleet::prepare(2);
    // b served prod/dup on its own (local backend) before joining.
    fleet.agents[1].launch("lock_memory = false\n");
    fleet.agents[1].put("prod/dup", "sk_dup_local_only_b1");
    fleet.agents[1].stop();
    fleet.launch(|_| String::new());
    let mut rx = watcher(fleet.agent(1), "dup").await;
    let (_, first) = until_generation(&mut rx, 1).await;
    assert_eq!(primary(&first), b"sk_dup_local_only_b1");

    // a creates the same name in the fleet, also at generation 1: b serves
    // the fleet's key, tells its watcher and audits it.
    fleet.agent(0).put("prod/dup", "sk_dup_fleet_a1");
    let (_, event) = until_generation(&mut rx, 1).await;
    assert_eq!(primary(&event), b"sk_dup_fleet_a1", "the watcher was told");
    assert_eq!(event.generation, 1);
    assert!(fleet
        .agent(1)
        .audit_lines()
        .iter()
        .any(|l| l["event"] == "fleet_sync" && l["key"] == "prod/dup" && l["backend_version"] == 1));
}

/// The metric family a sample line belongs to, as the README names it:
/// `_bucket`, `_sum` and `_count` belong to their histogram.
fn family(sample: &str) -> String {
    let name = sample.split(['{', ' ']).next().unwrap_or("");
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
        .to_owned()
}

/// Every `keyward_…` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("keyward_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name.trim_end_matches('_').to_owned());
    }
    names
}

/// Metrics that exist only once their event happened (a label value that
/// is not known before: the uid whose report was dropped).
const ONLY_ONCE_IT_HAPPENS: [&str; 1] = ["keyward_auth_failure_reports_dropped_total"];

#[tokio::test]
async fn the_readme_lists_every_metric_and_the_dashboard_has_data_after_a_restart() {
    let r = keyward_testkit::receiver::Receiver::start();
    let sink = format!(
        "\n[[alerts.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n[[audit.anchor]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        r.url("/hook"),
        r.url("/anchor")
    );
    let mut fleet = Fleet::start(1, |_| sink.clone());
    let expires = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(86400 * 30));
    let out = cli(
        fleet.agent(0),
        &["put", "prod/billing-api", "--expires", &expires.to_string()],
        Some(b"sk_metrics_readme_5b1e"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A restart: every counter starts again from nothing.
    fleet.agents[0].stop();
    fleet.agents[0].spawn().unwrap();
    until_backend(fleet.agent(0), "in sync after the restart", |b| !b.stale).await;
    let sock = fleet.agent(0).dir.join("metrics.sock");
    let start = Instant::now();
    let metrics = loop {
        let m = scrape(&sock);
        if m.contains("keyward_audit_disk_free_bytes ") || start.elapsed() > Duration::from_secs(10) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exposed: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|l| l.starts_with("keyward_"))
        .map(family)
        .collect();

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let listed = metric_names(section);
    let unlisted: Vec<_> = exposed.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "exposed but not in the README's Metrics section: {unlisted:?}"
    );
    let missing: Vec<_> = listed
        .difference(&exposed)
        .filter(|n| !ONLY_ONCE_IT_HAPPENS.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "in the README but not exposed: {missing:?}\n{metrics}"
    );

    // Every series a dashboard panel reads exists from the start, at 0 for
    // the counters of the key just served.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/keyward-dashboard.json"
    ))
    .unwrap();
    let used = metric_names(&dashboard);
    let absent: Vec<_> = used
        .iter()
        .map(|n| family(n))
        .filter(|n| !exposed.contains(n) && !ONLY_ONCE_IT_HAPPENS.contains(&n.as_str()))
        .collect();
    assert!(
        absent.is_empty(),
        "the dashboard reads metrics not exposed after a restart: {absent:?}"
    );
    for series in [
        "keyward_fetches_total{environment=\"prod\",key=\"billing-api\",outcome=\"ok\"} 0",
        "keyward_auth_failure_reports_total{environment=\"prod\",key=\"billing-api\",class=\"primary\"} 0",
        "keyward_key_use_reports_total{environment=\"prod\",key=\"billing-api\",class=\"primary\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// A `[backend]` pointing at nothing (nothing listens on port 1): the agent
/// starts, waits its 1 s initial sync and serves its local copy.
fn unreachable_backend(agent: &TestAgent) -> String {
    format!(
        "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\nagent_id = \"solo\"\nrequest_timeout = \"1s\"\ninitial_sync_timeout = \"1s\"\n{}",
        agent.member_entry("solo")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_install_without_a_signing_key_says_to_run_init_and_dev_mode_creates_one() {
    // A system install from before signing keys: keywardd refuses to
    // start in fleet mode and says what to run.
    let mut agent = TestAgent::prepare_system_shared("", "");
    let key_file = agent.dir.join("signing.key");
    let entry = unreachable_backend(&agent);
    agent.rewrite_config(&entry);
    std::fs::remove_file(&key_file).unwrap();
    let err = agent.spawn_with(agent.system_command()).unwrap_err();
    assert!(err.contains("signing.key") && err.contains("keyward init"), "{err}");
    // `keyward init` adds it (and keeps the identity): the agent starts.
    let recipient = agent.recipient().to_string();
    let out = common::run_cli(
        Command::new(common::bins::keyward())
            .args(["init", "--state-dir"])
            .arg(&agent.dir),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("fleet signing key: ed25519:"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(agent.recipient().to_string(), recipient, "the identity is kept");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions()) & 0o777,
        0o600
    );
    agent.rewrite_config(&unreachable_backend(&agent));
    agent
        .spawn_with(agent.system_command())
        .expect("starts with its signing key");
    agent.stop();

    // Dev mode creates a missing one at start, 0600.
    let mut dev = TestAgent::prepare();
    std::fs::remove_file(dev.dir.join("signing.key")).unwrap();
    let config = format!("lock_memory = false\n{}", {
        // The entry names the key created at start: not known yet, so the
        // agent is not listed; it starts all the same.
        "[backend]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\nagent_id = \"solo\"\nrequest_timeout = \"1s\"\ninitial_sync_timeout = \"1s\"\n"
    });
    dev.launch(&config);
    let mode = std::fs::metadata(dev.dir.join("signing.key")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    let b = backend(&dev).await;
    assert_eq!(b.signing_key, dev.signing_key());
    assert!(!b.listed);
    // The secret seed is never in the log.
    let seed = std::fs::read_to_string(dev.dir.join("signing.key")).unwrap();
    let seed = seed.lines().last().unwrap();
    assert!(!dev.logs().contains(seed));
}
