//! Rotation in a fleet against a real OpenBao: one rotator per key (the
//! rotation lease), a rotation taken over when its agent dies, and a
//! retire gate that counts what was reported to every member.

use crate::common;
use crate::fleet::{cli, kv_put_with, primary, readme_policy_token, state_of, watcher, Fleet};
use crate::rotation_jobs::{calls, hook};

use std::path::Path;
use std::time::{Duration, Instant};

use common::{key, text, TestAgent};
use keyward::proto;

/// A `[[key]]` entry for prod/NAME with the test hook (see
/// [`hook`]) as generator (and validator, when `validator`) and `extra`.
fn key_entry(dir: &Path, name: &str, validator: bool, extra: &str) -> String {
    let h = hook(dir);
    let validator = if validator {
        format!("validator = [\"{}\", \"validator\"]\n", h.display())
    } else {
        String::new()
    };
    format!(
        "[[key]]\nkeys = [\"prod/{name}\"]\ngenerator = [\"{}\", \"generator\"]\n{validator}{extra}",
        h.display()
    )
}

/// `StartRotation` of prod/NAME on `agent` (with a generator: nothing
/// given), waiting for every live agent at each step when `fleet`.
async fn start(agent: &TestAgent, name: &str, fleet: bool) -> Result<proto::RotationJob, tonic::Status> {
    agent
        .admin()
        .await
        .start_rotation(proto::StartRotationRequest {
            key: key("prod", name),
            fleet,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The last (or running) rotation job of prod/NAME on `agent`.
async fn job(agent: &TestAgent, name: &str) -> Option<proto::RotationJob> {
    agent
        .admin()
        .await
        .get_rotation_status(proto::RotationStatusRequest { key: key("prod", name) })
        .await
        .expect("rotation status")
        .into_inner()
        .job
}

/// What the job of prod/NAME on `agent` waits for ("" when none).
async fn waiting(agent: &TestAgent, name: &str) -> String {
    job(agent, name).await.map(|j| j.waiting).unwrap_or_default()
}

/// Waits until the job of prod/NAME on `agent` ended; returns it.
async fn until_job_ends(agent: &TestAgent, name: &str) -> proto::RotationJob {
    let start = Instant::now();
    loop {
        let j = job(agent, name).await;
        if let Some(j) = j.as_ref().filter(|j| !j.active) {
            return j.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job of prod/{name} did not end: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two agents with prod/NAME's `[[key]]` entry (see [`key_entry`]), the
/// key put on the first and steady on both; the fleet and its generation.
async fn two_agents(name: &'static str, validator: bool, extra: &'static str) -> (Fleet, u64) {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(move |_, dir| key_entry(dir, name, validator, extra));
    fleet.launch(|_| String::new());
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    a.put(&format!("prod/{name}"), &format!("sk_{name}_original_0001"));
    let (_, created) = state_of(a, name);
    until_steady_everywhere(&[a, b], name, created).await;
    (fleet, created)
}

/// Polls until `check` holds, or fails after `limit` saying `what`.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every agent in `agents` has prod/NAME steady at a
/// generation of at least `generation`, serving one same primary; returns
/// it.
async fn until_steady_everywhere(agents: &[&TestAgent], name: &str, generation: u64) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let states: Vec<Option<(String, u64)>> = agents.iter().map(|a| try_state(a, name)).collect();
        if states
            .iter()
            .all(|s| s.as_ref().is_some_and(|(s, g)| s == "steady" && *g >= generation))
        {
            let mut primaries = Vec::new();
            for a in agents {
                primaries.push(primary(&a.fetch("prod", name).await.unwrap()));
            }
            if primaries.windows(2).all(|w| w[0] == w[1]) {
                return primaries.remove(0);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "prod/{name} not steady at generation {generation} on every agent: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// prod/NAME's state and generation on `agent` (`None`: not there yet).
fn try_state(agent: &TestAgent, name: &str) -> Option<(String, u64)> {
    let out = cli(agent, &["list", "--json"], None);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let keys = list.as_array().cloned().or_else(|| list["keys"].as_array().cloned())?;
    let k = keys
        .iter()
        .find(|k| k["key"].as_str() == Some(&format!("prod/{name}")) || k["name"].as_str() == Some(name))?;
    Some((k["state"].as_str()?.to_owned(), k["generation"].as_u64()?))
}

/// The agent's audit records of rotation jobs of prod/NAME started.
fn jobs_started(agent: &TestAgent, name: &str) -> Vec<String> {
    agent
        .audit_lines()
        .iter()
        .filter(|l| {
            l["event"] == "rotation_job"
                && l["outcome"] == "started"
                && l["key"].as_str() == Some(&format!("prod/{name}"))
        })
        .map(|l| l["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Three agents, one key scheduled every 6 s on each (no jitter, so all
/// three are due at once). Every agent's generator is held, so an agent
/// that starts the rotation stays inside its generator: after all three
/// have been due for seconds, exactly one entered it, because the lease
/// let one agent run it. A manual rotation, or a step by hand, on another
/// agent is refused naming the holder. Released, the one rotation completes and all three
/// serve its new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_fleet_rotation_runs_on_exactly_one_agent_and_every_agent_serves_its_key() {
    let mut fleet = Fleet::prepare(3);
    fleet.tail = Box::new(|_, dir| {
        std::fs::write(dir.join("hold-generator"), "").unwrap();
        key_entry(dir, "sched", true, "every = \"6s\"\njitter = \"0s\"\n")
    });
    fleet.launch(|_| "rotation_lease = \"6s\"\nrequest_timeout = \"2s\"\n".to_owned());
    let agents: Vec<&TestAgent> = (0..3).map(|i| fleet.agent(i)).collect();
    agents[0].put("prod/sched", "sk_sched_original_0001");
    let (_, created) = state_of(agents[0], "sched");
    until_steady_everywhere(&agents, "sched", created).await;

    // Due on all three at about the same moment.
    until("an agent enters the generator", Duration::from_secs(30), || {
        agents.iter().any(|a| a.dir.join("at-generator").exists())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let inside: Vec<usize> = (0..3)
        .filter(|i| agents[*i].dir.join("at-generator").exists())
        .collect();
    assert_eq!(inside.len(), 1, "agents inside the generator: {inside:?}");
    let holder = inside[0];
    let holder_name = crate::fleet::agent_name(holder);
    for i in (0..3).filter(|i| *i != holder) {
        assert_eq!(calls(&agents[i].dir, "generator"), 0, "agent {i} ran its generator");
        assert!(
            jobs_started(agents[i], "sched").is_empty(),
            "agent {i} started a job: {:?}",
            jobs_started(agents[i], "sched")
        );
    }

    // A second agent trying the same key is told who holds it.
    let other = agents[(holder + 1) % 3];
    let refused = start(other, "sched", false)
        .await
        .expect_err("a second rotation was started");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("agent {holder_name} is rotating prod/sched"))
            && refused.message().contains("lease"),
        "{refused:?}"
    );

    // So is a rotation step by hand there (it would race the holder's job).
    let out = cli(other, &["stage", "--raw", "prod/sched"], Some(b"sk_sched_by_hand_0002"));
    assert!(!out.status.success(), "a step by hand was taken: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(&format!("agent {holder_name} is rotating prod/sched")),
        "{}",
        text(&out.stderr)
    );

    // Who holds it is shown on every agent.
    let shown = text(&cli(other, &["fleet", "status", "prod/sched"], None).stdout);
    assert!(
        shown.contains(&format!("rotation lease: held by {holder_name} until "))
            && shown.contains("(schedule rotation under way)"),
        "{shown}"
    );

    // Released: the one rotation runs through on the holder.
    std::fs::write(agents[holder].dir.join("release-generator"), "").unwrap();
    let new = until_steady_everywhere(&agents, "sched", created + 3).await;
    assert_ne!(new, b"sk_sched_original_0001");
    assert!(new.starts_with(b"sk_job_"), "{}", String::from_utf8_lossy(&new));
    let generators: Vec<usize> = (0..3).map(|i| calls(&agents[i].dir, "generator")).collect();
    assert_eq!(
        generators.iter().sum::<usize>(),
        1,
        "generator calls per agent: {generators:?}"
    );
    assert_eq!(generators[holder], 1);
    let ended = until_job_ends(agents[holder], "sched").await;
    assert_eq!(
        (ended.trigger.as_str(), ended.result.as_str()),
        ("schedule", "ok"),
        "{ended:?}"
    );
    let shown = text(&cli(other, &["fleet", "status", "prod/sched", "--json"], None).stdout);
    let status: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let lease = &status["lease"];
    assert_eq!(
        (&lease["holder"], &lease["released"], &lease["live"]),
        (
            &serde_json::json!(holder_name),
            &serde_json::json!(true),
            &serde_json::json!(false)
        ),
        "{shown}"
    );
}

/// Three agents, one key scheduled on each (every 20 s, no jitter). The
/// agent that wins the lease is killed -9 after promoting (inside its
/// revoker, just before the retire); another member takes the rotation
/// over once the lease expires, resumes from the promoted state, validates,
/// revokes (the revoker is idempotent by contract) and retires. Watchers on
/// the survivors never see the generation go back; the killed agent,
/// started again, serves what the others serve and its own job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_whose_agent_dies_is_taken_over_after_the_lease_expires() {
    let mut fleet = Fleet::prepare(3);
    fleet.tail = Box::new(|_, dir| {
        std::fs::write(dir.join("hold-revoker"), "").unwrap();
        let revoker = format!("revoker = [\"{}\", \"revoker\"]\n", hook(dir).display());
        key_entry(
            dir,
            "takeover",
            true,
            &format!("{revoker}every = \"20s\"\njitter = \"0s\"\n"),
        )
    });
    // A lease of 5 s, renewed every 5/3 s: a loaded machine does not let
    // it lapse (a lapse lets a second member in, by design).
    fleet.launch(|_| "rotation_lease = \"5s\"\nrequest_timeout = \"2s\"\n".to_owned());
    fleet.agent(0).put("prod/takeover", "sk_takeover_original_01");
    let (_, created) = state_of(fleet.agent(0), "takeover");
    {
        let all: Vec<&TestAgent> = (0..3).map(|i| fleet.agent(i)).collect();
        until_steady_everywhere(&all, "takeover", created).await;
    }
    let mut watchers = Vec::new();
    for i in 0..3 {
        watchers.push(watcher(fleet.agent(i), "takeover").await);
    }
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| fleet.agent(i).dir.clone()).collect();
    // Due 20 s after the put; the rotation's own steps take a few seconds
    // (more on a loaded machine: three agents and OpenBao share it).
    let waited = Instant::now();
    while !dirs.iter().any(|d| d.join("at-revoker").exists()) {
        if waited.elapsed() > Duration::from_secs(60) {
            let mut jobs = Vec::new();
            for i in 0..3 {
                jobs.push(job(fleet.agent(i), "takeover").await);
            }
            panic!("no agent promoted and entered its revoker within 60 s; the jobs: {jobs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inside: Vec<usize> = (0..3).filter(|i| dirs[*i].join("at-revoker").exists()).collect();
    assert_eq!(inside.len(), 1, "agents inside the revoker: {inside:?}");
    let dead = inside[0];
    let generators: Vec<usize> = dirs.iter().map(|d| calls(d, "generator")).collect();
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(job(fleet.agent(i), "takeover").await);
    }
    assert_eq!(
        generators.iter().sum::<usize>(),
        1,
        "generator calls per agent: {generators:?}; jobs: {jobs:?}"
    );
    let (state, promoted) = state_of(fleet.agent(dead), "takeover");
    assert_eq!(state, "promoted");
    let new_version = job(fleet.agent(dead), "takeover").await.unwrap().new_version;
    fleet.agents[dead].kill9();
    let killed_at = Instant::now();

    // Another member takes it over once the 5 s lease expired, and reaches
    // the revoker in turn.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    until("a survivor takes the rotation over", Duration::from_secs(20), || {
        survivors.iter().any(|i| dirs[*i].join("at-revoker").exists())
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "taken over after {took:?}, before the lease expired"
    );
    let takers: Vec<usize> = survivors
        .iter()
        .copied()
        .filter(|i| dirs[*i].join("at-revoker").exists())
        .collect();
    assert_eq!(takers.len(), 1, "agents that took over: {takers:?}");
    let taker = takers[0];
    let started = jobs_started(fleet.agent(taker), "takeover");
    assert!(
        started.iter().any(|d| d.contains("takeover")
            && d.contains(&format!("agent {} stopped renewing", crate::fleet::agent_name(dead)))),
        "{started:?}"
    );
    // Later rotations (the schedule goes on) run through.
    for d in &dirs {
        let _ = std::fs::remove_file(d.join("hold-revoker"));
    }
    std::fs::write(dirs[taker].join("release-revoker"), "").unwrap();
    let ended = until_job_ends(fleet.agent(taker), "takeover").await;
    assert_eq!(
        (ended.result.as_str(), ended.new_version),
        ("ok", new_version),
        "{ended:?}"
    );
    assert_eq!(calls(&dirs[taker], "generator"), 0, "the taker generated nothing");
    assert_eq!(
        calls(&dirs[taker], "validator"),
        1,
        "the taker validated the promoted key"
    );
    let alive: Vec<&TestAgent> = survivors.iter().map(|i| fleet.agent(*i)).collect();
    let new = until_steady_everywhere(&alive, "takeover", promoted + 1).await;
    assert!(new.starts_with(b"sk_job_"), "{}", String::from_utf8_lossy(&new));

    // The generation only ever went up on the survivors' watchers.
    for i in survivors.iter().copied() {
        let mut last = 0;
        while let Ok((_, set)) = watchers[i].try_recv() {
            assert!(
                set.generation >= last,
                "agent {i}: generation {} after {last}",
                set.generation
            );
            last = set.generation;
        }
        assert!(last > promoted, "agent {i}'s watcher last saw generation {last}");
    }

    // The killed agent comes back: it serves what the others serve, and its
    // own job (resumed from its job file) ends.
    fleet.agents[dead].spawn().unwrap();
    let all: Vec<&TestAgent> = (0..3).map(|i| fleet.agent(i)).collect();
    until_steady_everywhere(&all, "takeover", promoted + 1).await;
    let ended = until_job_ends(fleet.agent(dead), "takeover").await;
    assert_ne!(ended.result, "rolled_back", "{ended:?}");
    let (_, generation) = state_of(fleet.agent(dead), "takeover");
    assert!(generation > promoted, "generation {generation} on the restarted agent");
}

/// Starts a fleet rotation of prod/gate on `a`; once `b` serves it
/// promoted, what `b` serves.
async fn rotate_to_promoted(a: &TestAgent, b: &TestAgent) -> proto::KeySet {
    start(a, "gate", true).await.expect("start rotation");
    until("b serves the promoted key", Duration::from_secs(30), || {
        try_state(b, "gate").is_some_and(|s| s.0 == "promoted")
    })
    .await;
    b.fetch("prod", "gate").await.unwrap()
}

/// `keyward report prod/gate` of `set`'s primary to `agent`, with `args`.
fn report_to(agent: &TestAgent, set: &proto::KeySet, args: &[&str]) {
    let version = set.primary.as_ref().unwrap().version.to_string();
    let base = ["report", "prod/gate", "--version", &version, "--service", "billing"];
    let out = cli(agent, &[&base[..], args].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The retire gate counts the evidence reported to every member: the
/// caller that uses the new key reports to agent b only, and agent a's job
/// retires on it. Auth failures reported to b only roll a's next rotation
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retire_gate_counts_use_and_failures_reported_to_other_members() {
    let (fleet, created) = two_agents("gate", false, "failure_threshold = 2\ngrace = \"5s\"\n").await;
    let (a, b) = (fleet.agent(0), fleet.agent(1));

    // Rotation 1: use reported to b only.
    let set = rotate_to_promoted(a, b).await;
    report_to(b, &set, &["--used"]);
    // a has no use reported to it, no validator: only b's report can open
    // its evidence gate.
    let retired = until_steady_everywhere(&[a, b], "gate", created + 3).await;
    assert_eq!(retired, primary(&set));
    let ended = until_job_ends(a, "gate").await;
    assert_eq!(ended.result, "ok", "{ended:?}");

    // Rotation 2: failures reported to b only roll it back on a.
    let (_, before) = state_of(a, "gate");
    let set = rotate_to_promoted(a, b).await;
    for _ in 0..2 {
        report_to(b, &set, &["--status", "401"]);
    }
    let ended = until_job_ends(a, "gate").await;
    assert_eq!(ended.result, "rolled_back", "{ended:?}");
    let (state, generation) = state_of(a, "gate");
    assert!(generation > before, "{state} {generation}");
    assert_eq!(
        primary(&a.fetch("prod", "gate").await.unwrap()),
        retired,
        "the old primary serves again"
    );
}

/// A member restarted during a rotation has lost what its callers reported
/// to it before (reports are kept in memory). The rotating member's retire
/// gate waits while that member's status is missing, then until it has
/// counted reports for the whole grace again; failures reported to it
/// meanwhile roll the rotation back. (The gate used to count it as
/// reporting nothing, and retired once its own grace was over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_during_the_grace_holds_the_retire_until_it_has_counted_again() {
    // With a validator, a's evidence gate opens once its grace is over.
    let (mut fleet, _) = two_agents("gate", true, "failure_threshold = 2\ngrace = \"6s\"\n").await;
    let (_, before) = state_of(fleet.agent(0), "gate");
    rotate_to_promoted(fleet.agent(0), fleet.agent(1)).await;
    let promoted = Instant::now();
    // b publishes its evidence (at its next poll) and a reads it (its
    // cache is kept a second), then b stops and withdraws its status.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.agents[1].stop();

    // a's grace (6 s) is over: it waits for b instead of retiring.
    tokio::time::sleep((promoted + Duration::from_secs(8)).saturating_duration_since(Instant::now())).await;
    let (state, _) = state_of(fleet.agent(0), "gate");
    assert_eq!(state, "promoted", "a retired while b's status was missing");
    let w = waiting(fleet.agent(0), "gate").await;
    assert!(w.contains("agent b published reports") && w.contains("missing"), "{w}");

    // b is back: it has counted reports for less than the grace.
    fleet.agents[1].spawn().expect("b restarts");
    let b = fleet.agent(1);
    let set = b.fetch("prod", "gate").await.unwrap();
    let start = Instant::now();
    loop {
        let w = waiting(fleet.agent(0), "gate").await;
        if w.contains("agent b has counted them for") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a does not wait for b to count: {w}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its callers' failures, reported again, roll the rotation back.
    for _ in 0..2 {
        report_to(b, &set, &["--status", "401"]);
    }
    let ended = until_job_ends(fleet.agent(0), "gate").await;
    assert_eq!(ended.result, "rolled_back", "{ended:?}");
    let (_, generation) = state_of(fleet.agent(0), "gate");
    assert!(generation > before);
}

/// A retire reads the other members' statuses at the moment it is taken,
/// not the copy a look a moment before cached: a failure reported to b
/// and published since closes a's gate. (a polls every 5 s here, so that
/// copy is kept 5 s; it used to be what the retire weighed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retire_weighs_the_members_statuses_as_they_are_then() {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(|_, dir| key_entry(dir, "gate", false, "grace = \"0s\"\nreport_quorum = 1\n"));
    fleet.launch(|i| {
        if i == 0 {
            "poll_interval = \"5s\"\nstale_after = \"30s\"\n".to_owned()
        } else {
            String::new()
        }
    });
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    a.put("prod/gate", "sk_gate_original_0001");
    let (_, created) = state_of(a, "gate");
    until_steady_everywhere(&[a, b], "gate", created).await;
    for step in [&["stage", "--raw", "prod/gate"][..], &["promote", "prod/gate"]] {
        let out = cli(a, step, Some(b"sk_gate_promoted_0002"));
        assert!(out.status.success(), "{step:?}: {}", text(&out.stderr));
    }
    until("b serves it promoted", Duration::from_secs(20), || {
        try_state(b, "gate").is_some_and(|s| s.0 == "promoted")
    })
    .await;
    let on_b = b.fetch("prod", "gate").await.unwrap();
    let on_a = a.fetch("prod", "gate").await.unwrap();

    // A first retire reads the members' statuses: no evidence yet.
    let out = cli(a, &["retire", "prod/gate"], None);
    assert!(!out.status.success(), "retired without evidence");
    assert!(
        text(&out.stderr).contains("nothing shows that the new primary"),
        "{}",
        text(&out.stderr)
    );
    // A failure reported to b (b publishes it at its next poll), then use
    // reported to a: the evidence is there, and so is the failure.
    report_to(b, &on_b, &["--status", "401"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report_to(a, &on_a, &["--used"]);
    let out = cli(a, &["retire", "prod/gate"], None);
    assert!(!out.status.success(), "retired over a failure reported to b");
    let said = text(&out.stderr);
    assert!(said.contains("1 auth failure(s)") && said.contains("b: 1"), "{said}");
    assert_eq!(state_of(a, "gate").0, "promoted");
}

/// A lease written with a stolen agent-policy token (not signed by a
/// member) does not hold anyone's rotation: it is refused, reported, and
/// the rotation runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_no_member_signed_blocks_nothing_and_is_reported() {
    let (fleet, created) = two_agents("forged", true, "grace = \"0s\"\n").await;
    let (a, b) = (fleet.agent(0), fleet.agent(1));

    let token = readme_policy_token(&fleet.bao, &fleet.bao.dir.join("stolen.token"));
    let far = 4_102_444_800_000u64; // 2100-01-01
    let lease = serde_json::json!({
        "format": "keyward-fleet-v1", "key": "prod/forged", "holder": "b",
        "acquired_at_ms": 0, "expires_at_ms": far, "trigger": "manual", "until": "retired", "released": false,
    });
    kv_put_with(
        &fleet.bao,
        &token,
        "keyward/leases/prod/forged",
        &serde_json::json!({ "format": "keyward-fleet-v1", "lease": lease.to_string(), "signer": "b",
            "signature": "AAAA" }),
    );
    let started = start(a, "forged", false).await;
    assert!(started.is_ok(), "the forged lease held the rotation: {started:?}");
    until_steady_everywhere(&[a, b], "forged", created + 3).await;
    let refused = a.audit_lines().into_iter().find(|l| {
        l["event"] == "fleet_sync"
            && l["outcome"] == "rejected"
            && l["detail"].as_str().is_some_and(|d| d.contains("leases/prod/forged"))
    });
    assert!(refused.is_some(), "the forged lease was not reported: {}", a.logs());
}

/// A holder that cannot renew its lease (OpenBao hung) takes no step once
/// two thirds of the term passed since its last renewal: after the grace
/// period its validator and revoker do not run while OpenBao is hung, and
/// its job says why. The lease expires meanwhile, so when OpenBao answers
/// again either the holder renews it first and finishes, or the other
/// member takes the rotation over and the holder's job stops: either way
/// the rotation finishes once, the revoker run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_its_lease_takes_no_step_until_it_can() {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(|_, dir| {
        let revoker = format!("revoker = [\"{}\", \"revoker\"]\ngrace = \"4s\"\n", hook(dir).display());
        key_entry(dir, "renew", true, &revoker)
    });
    fleet.launch(|_| "rotation_lease = \"3s\"\n".to_owned());
    let a = fleet.agent(0);
    a.put("prod/renew", "sk_renew_original_0001");
    let (_, created) = state_of(a, "renew");
    until_steady_everywhere(&[a, fleet.agent(1)], "renew", created).await;

    start(a, "renew", false).await.expect("start rotation");
    until("a promotes", Duration::from_secs(30), || {
        try_state(a, "renew").is_some_and(|s| s.0 == "promoted")
    })
    .await;
    let (_, promoted) = state_of(a, "renew");
    // The validator ran once, on the staged key.
    let validated = calls(&a.dir, "validator");
    fleet.bao.pause();
    // The grace (4 s) ends while OpenBao is hung: the next steps would be
    // the validator and the revoker, which need no OpenBao themselves.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let waiting = job(a, "renew").await.map(|j| j.waiting).unwrap_or_default();
    let (validator, revoker) = (calls(&a.dir, "validator"), calls(&a.dir, "revoker"));
    fleet.bao.resume();
    assert_eq!(validator, validated, "the validator ran without a renewed lease");
    assert_eq!(revoker, 0, "the revoker ran without a renewed lease");
    assert!(waiting.contains("rotation lease was not renewed"), "{waiting}");

    until_steady_everywhere(&[a, fleet.agent(1)], "renew", promoted + 1).await;
    let ended = until_job_ends(a, "renew").await;
    assert!(
        ended.result == "ok" || (ended.result == "failed" && ended.message.contains("agent b took the rotation lease")),
        "{ended:?}"
    );
    let revoked = calls(&a.dir, "revoker") + calls(&fleet.agent(1).dir, "revoker");
    assert_eq!(revoked, 1, "the revoker ran {revoked} times");
}

/// A job that had not staged its key when its agent was killed (inside the
/// generator), resumed after a restart once another member rotated the key
/// meanwhile, ends saying so: it does not run the generator again and
/// rotate the key a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumed_after_another_member_rotated_the_key_does_not_rotate_it_again() {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(|_, dir| key_entry(dir, "twice", true, "grace = \"0s\"\n"));
    fleet.launch(|_| "rotation_lease = \"3s\"\n".to_owned());
    let (a_dir, b_dir) = (fleet.agent(0).dir.clone(), fleet.agent(1).dir.clone());
    fleet.agent(0).put("prod/twice", "sk_twice_original_0001");
    let (_, created) = state_of(fleet.agent(0), "twice");
    until_steady_everywhere(&[fleet.agent(0), fleet.agent(1)], "twice", created).await;

    // a's job takes the lease and is killed inside its generator.
    std::fs::write(a_dir.join("hold-generator"), "").unwrap();
    start(fleet.agent(0), "twice", false)
        .await
        .expect("start rotation on a");
    until("a enters its generator", Duration::from_secs(20), || {
        a_dir.join("at-generator").exists()
    })
    .await;
    fleet.agents[0].kill9();
    std::fs::remove_file(a_dir.join("hold-generator")).unwrap();

    // Once a's lease expired, b rotates the key to the end.
    let b = fleet.agent(1);
    let start_b = Instant::now();
    loop {
        match start(b, "twice", false).await {
            Ok(_) => break,
            Err(e) => assert!(
                start_b.elapsed() < Duration::from_secs(15),
                "b cannot start once a's lease expired: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ended = until_job_ends(b, "twice").await;
    assert_eq!(ended.result, "ok", "{ended:?}");
    let (_, rotated) = state_of(b, "twice");

    // a restarts: its job ends naming b, and nothing more happens.
    fleet.agents[0].spawn().expect("a restarts");
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    let ended = until_job_ends(a, "twice").await;
    assert_eq!(ended.result, "failed", "{ended:?}");
    assert!(
        ended.message.contains("agent b took the rotation lease")
            && ended.message.contains("does not rotate the key again"),
        "{ended:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(&a_dir, "generator"), 1, "a ran its generator again");
    assert_eq!(calls(&b_dir, "generator"), 1);
    until_steady_everywhere(&[a, b], "twice", rotated).await;
    assert_eq!(state_of(a, "twice").1, rotated, "the key was rotated again");
}

/// Two agents with key `prod/NAME` and a `lease` term, rotating it on a
/// until both serve it promoted: a then waits in a long grace (to be
/// cancelled there), and b would retire at once if it took the rotation.
async fn promoted_on_a_and_b(name: &'static str, lease: &str) -> Fleet {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(move |i, dir| {
        let grace = if i == 0 { "600s" } else { "0s" };
        let revoker = format!(
            "revoker = [\"{}\", \"revoker\"]\ngrace = \"{grace}\"\n",
            hook(dir).display()
        );
        key_entry(dir, name, true, &revoker)
    });
    let lease = format!("rotation_lease = \"{lease}\"\n");
    fleet.launch(|_| lease.clone());
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    a.put(&format!("prod/{name}"), &format!("sk_{name}_original_0001"));
    let (_, created) = state_of(a, name);
    until_steady_everywhere(&[a, b], name, created).await;
    start(a, name, false).await.expect("start rotation");
    until("a and b serve it promoted", Duration::from_secs(30), || {
        try_state(a, name).is_some_and(|s| s.0 == "promoted") && try_state(b, name).is_some_and(|s| s.0 == "promoted")
    })
    .await;
    fleet
}

/// For `secs`, `b` starts no job of `name` and runs no revoker; then it
/// still serves it promoted.
async fn never_resumed_by(b: &TestAgent, name: &str, secs: u64) {
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(secs) {
        let took = jobs_started(b, name);
        assert!(
            took.is_empty() && calls(&b.dir, "revoker") == 0,
            "b resumed the cancelled rotation: jobs {took:?}, revoker calls {}, b's state {:?}",
            calls(&b.dir, "revoker"),
            try_state(b, name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(try_state(b, name).map(|s| s.0), Some("promoted".to_owned()));
}

/// A rotation cancelled while OpenBao is down: the holder cannot release
/// its lease at once, and an unreleased lease that expires reads as
/// abandoned, so the other member would resume the cancelled rotation and
/// retire the old key. The holder tries again until OpenBao takes the
/// release: once OpenBao is back (before the lease would have expired), the
/// lease is released and nobody resumes the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_rotation_whose_lease_release_failed_is_released_later_and_not_resumed() {
    let mut fleet = promoted_on_a_and_b("release", "15s").await;

    fleet.bao.stop();
    fleet
        .agent(0)
        .admin()
        .await
        .cancel_rotation(proto::CancelRotationRequest {
            key: key("prod", "release"),
        })
        .await
        .expect("cancel");
    let ended = until_job_ends(fleet.agent(0), "release").await;
    assert_eq!(ended.result, "cancelled", "{ended:?}");
    let refused = common::eventually(Duration::from_secs(5), || {
        fleet
            .agent(0)
            .logs()
            .contains("cannot release the rotation lease")
            .then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the release did not fail while OpenBao was down: {}",
        fleet.agent(0).logs()
    );
    fleet.bao.restart();

    let path = "keyward/leases/prod/release";
    let released = common::eventually(Duration::from_secs(8), || {
        let raw = fleet.bao.kv_get_raw(path)?;
        let lease: serde_json::Value = serde_json::from_str(raw["lease"].as_str()?).ok()?;
        (lease["released"] == serde_json::json!(true)).then_some(lease)
    })
    .await;
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    assert!(
        released.is_some(),
        "the lease was not released once OpenBao answered: {}",
        a.logs()
    );
    // Past the term the unreleased lease would have had, and b's look at it.
    never_resumed_by(b, "release", 20).await;
}

/// `bao ARGS` with `token`, asserting success; its stdout.
fn bao_with(fleet: &Fleet, token: &str, args: &[&str]) -> String {
    let out = fleet.bao.cli(args, None, Some(token));
    assert!(out.status.success(), "bao {args:?}: {}", text(&out.stderr));
    text(&out.stdout).to_string()
}

/// The attacker: a holder of the agents' OpenBao token (the README's
/// policy). The operator cancels a rotation while its key is PROMOTED: the
/// job ends, the lease is released, the old key stays as fallback. A lease
/// version the holder signed while its job ran would verify again if it
/// could be written back at the version it was signed for (it names its
/// path and version): deleting the path's metadata starts its versions
/// again at 1, and it would then read as expired and not released, that is
/// abandoned, and the other member would finish the cancelled rotation
/// (validate, retire, run the revoker). The policy refuses every way to
/// rewind or remove the lease's history, and the copy written back as the
/// next version does not verify: no member resumes the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_lease_does_not_make_a_member_resume_a_cancelled_rotation() {
    let fleet = promoted_on_a_and_b("replay", "5s").await;
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    let token = readme_policy_token(&fleet.bao, &fleet.bao.dir.join("stolen.token"));
    let path = "keyward/leases/prod/replay";
    // The attacker keeps a copy of the lease as a's job renews it.
    let meta: serde_json::Value = serde_json::from_str(&bao_with(
        &fleet,
        &token,
        &["kv", "metadata", "get", "-mount=secret", "-format=json", path],
    ))
    .unwrap();
    let version = meta["data"]["current_version"].as_u64().unwrap();
    let got: serde_json::Value = serde_json::from_str(&bao_with(
        &fleet,
        &token,
        &[
            "kv",
            "get",
            "-mount=secret",
            "-format=json",
            &format!("-version={version}"),
            path,
        ],
    ))
    .unwrap();
    let captured = got["data"]["data"].clone();
    let lease: serde_json::Value = serde_json::from_str(captured["lease"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&lease["holder"], &lease["released"]),
        (&serde_json::json!("a"), &serde_json::json!(false))
    );

    // The operator cancels: the job ends, the lease is released.
    a.admin()
        .await
        .cancel_rotation(proto::CancelRotationRequest {
            key: key("prod", "replay"),
        })
        .await
        .expect("cancel");
    let ended = until_job_ends(a, "replay").await;
    assert_eq!(ended.result, "cancelled", "{ended:?}");
    let released = fleet.bao.kv_get_raw(path).unwrap();
    let l: serde_json::Value = serde_json::from_str(released["lease"].as_str().unwrap()).unwrap();
    assert_eq!(l["released"], serde_json::json!(true), "{l}");

    // Every way to rewind the path's versions, or to remove or expire the
    // released lease, is refused.
    for attempt in [
        vec!["kv", "metadata", "delete", "-mount=secret", path],
        vec!["kv", "metadata", "put", "-mount=secret", "-max-versions=1", path],
        vec![
            "kv",
            "metadata",
            "put",
            "-mount=secret",
            "-delete-version-after=1s",
            path,
        ],
        vec!["kv", "delete", "-mount=secret", path],
        vec![
            "kv",
            "destroy",
            "-mount=secret",
            &format!("-versions={}", version + 1),
            path,
        ],
    ] {
        let out = fleet.bao.cli(&attempt, None, Some(&token));
        assert!(
            !out.status.success(),
            "bao {attempt:?} was allowed with the README policy"
        );
        assert!(
            text(&out.stderr).contains("permission denied"),
            "bao {attempt:?}: {}",
            text(&out.stderr)
        );
    }
    // The copy written back lands at the next version, not its own.
    kv_put_with(&fleet.bao, &token, path, &captured);

    // Five lease terms (b's scan looks again at a key whose lease it saw
    // released after that long) and more.
    never_resumed_by(b, "replay", 32).await;
}

/// Review: two `StartRotation` calls for one key on one agent at the same
/// moment (an operator's retry, two scripts) start one job, and the
/// generator runs once: the other call waits for the first to begin it,
/// then follows it. Fleet mode claims the lease (a request to OpenBao)
/// between "no job runs" and the job's start, and a lease the agent holds
/// itself is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simultaneous_starts_on_one_agent_run_one_job() {
    let mut fleet = Fleet::prepare(2);
    fleet.tail = Box::new(|_, dir| {
        std::fs::write(dir.join("hold-generator"), "").unwrap();
        key_entry(dir, "twice", false, "")
    });
    fleet.launch(|_| String::new());
    let (a, b) = (fleet.agent(0), fleet.agent(1));
    a.put("prod/twice", "sk_twice_original_0001");
    let (_, created) = state_of(a, "twice");
    until_steady_everywhere(&[a, b], "twice", created).await;

    let (one, two) = tokio::join!(start(a, "twice", false), start(a, "twice", false));
    // One starts the job; the other, which came while it was being
    // started, waits and follows it (it was refused with ABORTED before).
    let (one, two) = (one.expect("the first start"), two.expect("the second start"));
    assert!(one.active && two.active, "{one:?} / {two:?}");
    assert_eq!((one.started_at, &one.trigger), (two.started_at, &two.trigger));
    until("a enters its generator", Duration::from_secs(20), || {
        a.dir.join("at-generator").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let generators = calls(&a.dir, "generator");
    let started = jobs_started(a, "twice");
    std::fs::write(a.dir.join("release-generator"), "").unwrap();
    assert_eq!(
        (generators, started.len()),
        (1, 1),
        "generator runs and jobs started for one key: {started:?}; the two answers: {one:?} / {two:?}"
    );
}
