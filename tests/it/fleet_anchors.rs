//! Audit anchors in the fleet backend, against a real OpenBao: each agent
//! publishes its chain head to `anchors/<agent_id>/<install_id>/<seq>`
//! with the README's agent policy, `keyward audit verify --fleet` checks a
//! host's log against them and catches a rewritten history, and what a
//! token thief writes there is refused (and cannot replace or remove what
//! the agent published).

use crate::common;
use crate::fleet::{kv_put_with, readme_policy_token, Fleet};

use std::path::PathBuf;
use std::time::Duration;

use common::{scrape, text, TestAgent, KEYWARD};

/// The config file the harness wrote for `agent`.
fn config_of(agent: &TestAgent) -> PathBuf {
    agent.dir.parent().unwrap().join("keyward.toml")
}

/// `keyward --dev DIR audit verify --fleet --config CONFIG ARGS…` for
/// `agent`: (exit code, stdout and stderr).
fn verify_fleet(agent: &TestAgent, args: &[&str]) -> (i32, String) {
    let config = config_of(agent);
    let out = std::process::Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(["audit", "verify", "--fleet", "--config"])
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&[out.stdout, out.stderr].concat()),
    )
}

/// A fleet of `n` agents whose token holds only the README's agent
/// policy, publishing anchors every second.
async fn anchored_fleet(n: usize) -> Fleet {
    let mut fleet = Fleet::prepare(n);
    readme_policy_token(&fleet.bao, &fleet.token_file.clone());
    fleet.launch(|_| "[audit]\nanchor_interval = \"1s\"\n".to_owned());
    // What the policy leaves the agents is enough for their statuses: each
    // sets its status's expiry in the path's metadata.
    for i in 0..n {
        let path = format!("secret/keyward/agents/{}", crate::fleet::agent_name(i));
        let ttl = common::eventually(Duration::from_secs(15), || {
            let meta = fleet
                .bao
                .cli_json(&["kv", "metadata", "get", "-format=json", &path], None);
            meta["data"]["delete_version_after"]
                .as_str()
                .filter(|t| *t != "0s")
                .map(str::to_owned)
        })
        .await;
        assert!(
            ttl.is_some(),
            "agent {i} set no expiry on its status: {}",
            fleet.agent(i).logs()
        );
    }
    fleet
}

/// `keyward/anchors/<agent>/<install>` and its anchors' names, once it
/// holds at least `n`.
async fn until_anchors(fleet: &Fleet, agent: &str, n: usize) -> (String, Vec<String>) {
    common::eventually(Duration::from_secs(15), || {
        let installs = fleet.bao.kv_list(&format!("keyward/anchors/{agent}"));
        let [install] = installs.as_slice() else { return None };
        let dir = format!("keyward/anchors/{agent}/{}", install.trim_end_matches('/'));
        let names = fleet.bao.kv_list(&dir);
        (names.len() >= n).then_some((dir, names))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "agent {agent} published fewer than {n} anchors: {}",
            fleet.agent(0).logs()
        )
    })
}

/// The anchored seq a name stands for.
fn seq(name: &str) -> u64 {
    assert_eq!(name.len(), 20, "{name}");
    name.parse().unwrap()
}

/// The value of `family{labels}` in `scrape`, 0 if absent.
fn counter(scrape: &str, family_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(family_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn fetch_some(agent: &TestAgent, n: usize) {
    for _ in 0..n {
        agent.fetch("prod", "anchored").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fleet_passes_on_an_agents_log_and_catches_it_rewritten() {
    let mut fleet = anchored_fleet(2).await;
    fleet.agent(0).put("prod/anchored", "sk_anchored_v1_4d4d");
    fetch_some(fleet.agent(0), 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fetch_some(fleet.agent(0), 5).await;
    let (dir, names) = until_anchors(&fleet, "a", 2).await;

    // What the agent published: its signed head, at its own path.
    let first = fleet.bao.kv_get_raw(&format!("{dir}/{}", names[0])).unwrap();
    assert_eq!(first["signer"], "a", "{first}");
    let head: serde_json::Value = serde_json::from_str(first["anchor"].as_str().unwrap()).unwrap();
    assert_eq!(head["seq"].as_u64(), Some(seq(&names[0])), "{head}");
    let metrics = scrape(&fleet.agent(0).dir.join("metrics.sock"));
    assert!(
        counter(
            &metrics,
            "keyward_audit_anchor_publications_total{anchor=\"backend\",result=\"ok\"}"
        ) >= 2.0,
        "{metrics}"
    );

    // The log verifies against them; from another member's host too
    // (--agent-id, the log and install key copied there).
    let (code, report) = verify_fleet(fleet.agent(0), &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("anchors agent a published to OpenBao"), "{report}");
    let a = fleet.agent(0);
    let log = a.audit_file();
    let key = a.dir.join("install.key");
    let (code, report) = verify_fleet(
        fleet.agent(1),
        &["--agent-id", "a", "--key", key.to_str().unwrap(), log.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{report}");
    // b's own anchors are not a's log's.
    let (code, report) = verify_fleet(fleet.agent(1), &["--key", key.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(code, 3, "{report}");
    assert!(report.contains("published no anchor of install"), "{report}");

    // A local root deletes the log and its head file and lets the agent,
    // on the same state and install key, write a new, consistent history
    // that is longer than the first.
    let anchored: Vec<u64> = fleet.bao.kv_list(&dir).iter().map(|n| seq(n)).collect();
    let agent = &mut fleet.agents[0];
    assert!(agent.stop().success());
    std::fs::remove_file(agent.audit_file()).unwrap();
    std::fs::remove_file(agent.dir.join("audit.jsonl.head")).unwrap();
    agent.spawn().expect("the agent starts again");
    let agent = fleet.agent(0);
    let last_anchored = *anchored.iter().max().unwrap();
    while agent.audit_lines().len() as u64 <= last_anchored + 5 {
        fetch_some(agent, 10).await;
    }
    let out = agent.cli(&["audit", "verify"], None);
    assert!(
        out.status.success(),
        "alone, the rewritten log verifies: {}",
        text(&out.stdout)
    );

    let (code, report) = verify_fleet(agent, &[]);
    assert_eq!(code, 3, "{report}");
    let first_anchored = anchored.iter().min().unwrap();
    assert!(
        report.contains(&format!("an anchor says record {first_anchored} had hash"))
            && report.contains("the history was rewritten"),
        "{report}"
    );
    // Nothing the agent can do with its token removes those anchors (see
    // the next test); they are all still there.
    let kept: Vec<u64> = fleet.bao.kv_list(&dir).iter().map(|n| seq(n)).collect();
    assert!(anchored.iter().all(|s| kept.contains(s)), "{anchored:?} {kept:?}");

    // The backend down: said so, never "verified".
    fleet.bao.stop();
    let (code, report) = verify_fleet(fleet.agent(0), &[]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("cannot read the anchors from OpenBao") && report.contains("NOT checked"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_not_signed_by_the_member_their_path_names_are_refused_and_published_ones_cannot_be_removed() {
    let fleet = anchored_fleet(2).await;
    fleet.agent(0).put("prod/anchored", "sk_anchored_v1_5e5e");
    fetch_some(fleet.agent(0), 20).await;
    let (dir, names) = until_anchors(&fleet, "a", 1).await;
    let (b_dir, b_names) = until_anchors(&fleet, "b", 1).await;
    let (code, report) = verify_fleet(fleet.agent(0), &[]);
    assert_eq!(code, 0, "{report}");

    // A thief holding the agents' token (the README's policy) cannot
    // overwrite, delete, destroy or age out an anchor already published.
    let stolen = fleet.bao.dir.join("stolen.token");
    let token = readme_policy_token(&fleet.bao, &stolen);
    let published = format!("{dir}/{}", names[0]);
    let original = fleet.bao.kv_get_raw(&published).unwrap();
    let body = serde_json::json!({"data": {"format": "keyward-fleet-v1", "anchor": "{}"}}).to_string();
    for (what, args, stdin) in [
        (
            "overwrite",
            vec!["write".to_owned(), format!("secret/data/{published}"), "-".to_owned()],
            Some(body.as_str()),
        ),
        (
            "soft-delete",
            vec!["delete".to_owned(), format!("secret/data/{published}")],
            None,
        ),
        (
            "delete metadata",
            vec!["delete".to_owned(), format!("secret/metadata/{published}")],
            None,
        ),
        (
            "destroy",
            vec![
                "write".to_owned(),
                format!("secret/destroy/{published}"),
                "versions=1".to_owned(),
            ],
            None,
        ),
        (
            "expire",
            vec![
                "write".to_owned(),
                format!("secret/metadata/{published}"),
                "delete_version_after=1s".to_owned(),
            ],
            None,
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fleet.bao.cli(&args, stdin, Some(&token));
        assert!(!out.status.success(), "{what} was allowed");
        assert!(
            text(&out.stderr).contains("permission denied"),
            "{what}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(fleet.bao.kv_get_raw(&published).unwrap(), original);

    // What it can do: create values at free seqs of a's folder. Seqs the
    // log holds but no anchor names, with values that, trusted, would say
    // the log was rewritten.
    let lines = fleet.agent(0).audit_lines();
    let mut free = (1..=lines.len() as u64).filter(|s| !names.iter().any(|n| seq(n) == *s));
    let mut forged = |value: &serde_json::Value| {
        let path = format!("{dir}/{:020}", free.next().unwrap());
        kv_put_with(&fleet.bao, &token, &path, value);
        path
    };
    let head = |s: &str| -> serde_json::Value { serde_json::from_str(s).unwrap() };
    // 1. Unsigned.
    let mut fake = head(original["anchor"].as_str().unwrap());
    fake["hash"] = "00".repeat(32).into();
    let unsigned = forged(&serde_json::json!({"format": "keyward-fleet-v1", "anchor": fake.to_string()}));
    // 2. b's genuine anchor (another member) copied under a's path.
    let b_anchor = fleet.bao.kv_get_raw(&format!("{b_dir}/{}", b_names[0])).unwrap();
    let by_b = forged(&b_anchor);
    // 3. a's own anchor copied to another seq.
    let moved = forged(&original);
    // 4. Something that is no anchor's path at all.
    kv_put_with(
        &fleet.bao,
        &token,
        "keyward/anchors/a/junk",
        &serde_json::json!({"x": 1}),
    );

    let (code, report) = verify_fleet(fleet.agent(0), &[]);
    assert_eq!(code, 3, "{report}");
    for (path, why) in [
        (&unsigned, "not signed"),
        (&by_b, "only member \"a\" writes here"),
        (&moved, "does not verify for this path and version"),
        (&"keyward/anchors/a/junk".to_owned(), "not an anchor's path"),
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with("REFUSED anchor, not trusted") && l.contains(path.as_str()))
            .unwrap_or_else(|| panic!("{path} not refused: {report}"));
        assert!(line.contains(why), "{line}");
    }
    assert!(report.contains("FAILED: 4 values under agent a's anchors"), "{report}");
    // Not trusted: none of them is checked against the log.
    assert!(!report.contains("the history was rewritten"), "{report}");
    let trusted: usize = report
        .split_once("checked against ")
        .and_then(|(_, rest)| rest.split_once(" anchors agent a published"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        trusted >= names.len(),
        "the agent's own anchors are still checked: {report}"
    );
}
