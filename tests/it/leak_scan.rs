//! The leak scan: one workload that sends secrets down every path they
//! travel (put, fetch, a rotation through generator, validator and revoker
//! hooks, a manual stage/promote/retire, `keyward run`, `keyward render`,
//! auth-failure reports that raise an alert, status, list, doctor), then a
//! search for every secret in every place it must never be: the agent's
//! output, each CLI's output (but `get`, whose job is to print it), the
//! audit log, the alert payloads, `/proc/PID/cmdline` and `environ` of the
//! agent, of `keyward run` and of every hook run, the temp directory the
//! agent and the CLIs were given, every file of the agent's state (the store
//! holds only ciphertext), and core files: the agent is made to crash with
//! SIGABRT and must leave none.

use crate::common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::*;

const PREFIX: &str = "sk_live_LEAKSCAN_";

/// Everything scanned: where it came from and its bytes.
#[derive(Default)]
struct Places(Vec<(String, Vec<u8>)>);

impl Places {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((what.into(), bytes.into()));
    }
    fn add_output(&mut self, what: &str, out: &Output) {
        self.add(format!("{what} stdout"), out.stdout.clone());
        self.add(format!("{what} stderr"), out.stderr.clone());
    }
    fn add_tree(&mut self, dir: &Path) {
        for file in files_under(dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            self.add(file.display().to_string(), bytes);
        }
    }
    fn add_proc(&mut self, what: &str, pid: u32) {
        for part in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{part}")).unwrap_or_else(|e| panic!("{what} {part}: {e}"));
            self.add(format!("{what} /proc/{pid}/{part}"), bytes);
        }
    }
}

/// A hook script that first copies its own `/proc/$$/cmdline` and
/// `environ` into `dumps/` (the hook's process is the shell itself).
fn hook(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    let dumps = dir.join("dumps");
    let script = format!(
        "#!/bin/sh\nn=$$\ncat /proc/$n/cmdline > {d}/{name}-$n.cmdline\ncat /proc/$n/environ > {d}/{name}-$n.environ\n{body}\n",
        d = dumps.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// `keyward --dev DIR ARGS` with TMPDIR set to `tmp`.
fn cli(agent: &TestAgent, tmp: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    if let (Some(&"put" | &"stage"), Some(secret)) = (args.first(), stdin) {
        keep_for_leak_scan("secrets", secret);
    }
    run_cli(
        Command::new(KEYWARD)
            .arg("--dev")
            .arg(&agent.dir)
            .args(args)
            .env("TMPDIR", tmp),
        stdin,
    )
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_any_output_process_record_temp_or_core_file() {
    let work = tempfile::tempdir().unwrap();
    let hooks = work.path().join("hooks");
    std::fs::create_dir_all(hooks.join("dumps")).unwrap();
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let counter = hooks.join("counter");
    let generator = hook(
        &hooks,
        "gen",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; printf '{PREFIX}generated_%s' $n",
            c = counter.display()
        ),
    );
    let validator = hook(&hooks, "val", "cat > /dev/null");
    let revoker = hook(&hooks, "rev", "cat > /dev/null; echo revoked");
    let receiver = Receiver::start();
    let config = format!(
        "[rotation]\ngrace = \"0s\"\nhook_timeout = \"10s\"\npropagation_timeout = \"2s\"\n\
         [alerts.detect]\nspike_threshold = 3\n\
         [[alerts.sink]]\nkind = \"webhook\"\nurl = \"{url}\"\n\
         [[key]]\nkeys = [\"prod/*\"]\ngenerator = [\"{generator}\"]\nvalidator = [\"{validator}\"]\nrevoker = [\"{revoker}\"]\n",
        url = receiver.url("/alerts")
    );
    let mut agent = TestAgent::start_with_config(&config);
    // Again, with the temp dir and a working directory of its own, where a
    // core file would land.
    agent.stop();
    let cwd = work.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let mut cmd = agent.command();
    cmd.env("TMPDIR", &tmp).current_dir(&cwd);
    agent.spawn_with(cmd).unwrap();

    let s_a = format!("{PREFIX}first_a");
    let s_b = format!("{PREFIX}first_b");
    let s_staged = format!("{PREFIX}staged_b");
    let s_gen = format!("{PREFIX}generated_1");
    // By name: a hit names the secret, never shows it.
    let secrets = [
        ("s_a", s_a.as_str()),
        ("s_b", s_b.as_str()),
        ("s_staged", s_staged.as_str()),
        ("s_gen", s_gen.as_str()),
    ];
    let mut places = Places::default();

    // Put and fetch.
    for (key, s) in [("prod/leak-a", &s_a), ("prod/leak-b", &s_b)] {
        let out = cli(&agent, &tmp, &["put", key], Some(s.as_bytes()));
        ok(&out, "put");
        places.add_output("put", &out);
    }
    let refused = cli(&agent, &tmp, &["put", "prod/leak-a"], Some(s_a.as_bytes()));
    assert!(!refused.status.success(), "a put over an existing key is refused");
    places.add_output("refused put", &refused);
    for _ in 0..10 {
        agent.fetch("prod", "leak-a").await.unwrap();
    }
    let got = cli(&agent, &tmp, &["get", "prod/leak-a", "--primary"], None);
    ok(&got, "get");
    // Compared, never printed: a failure shows fingerprints only.
    let printed = text(&got.stdout);
    assert!(
        printed.trim_end() == s_a,
        "get prints the secret (s_a, {}): it is its job; it printed {}",
        fingerprint(s_a.as_bytes()),
        fingerprint(printed.trim_end().as_bytes())
    );
    places.add("get stderr", got.stderr.clone());

    // A full rotation through the hooks, and a manual one.
    let out = cli(&agent, &tmp, &["rotate", "prod/leak-a"], None);
    ok(&out, "rotate");
    places.add_output("rotate", &out);
    let fetched = agent.fetch("prod", "leak-a").await.unwrap().primary.unwrap().secret;
    assert!(
        fetched == s_gen.as_bytes(),
        "the generated key (s_gen, {}) serves, not {}",
        fingerprint(s_gen.as_bytes()),
        fingerprint(&fetched)
    );
    keep_for_leak_scan("secrets", s_gen.as_bytes());
    for (args, stdin) in [
        (vec!["stage", "prod/leak-b"], Some(s_staged.as_bytes())),
        (vec!["promote", "prod/leak-b"], None),
        (vec!["retire", "--force", "prod/leak-b"], None),
    ] {
        let out = cli(&agent, &tmp, &args, stdin);
        ok(&out, args[0]);
        places.add_output(args[0], &out);
    }

    // keyward run: its own process never holds the secret in argv or env.
    let mut run = Command::new(KEYWARD)
        .arg("--dev")
        .arg(&agent.dir)
        .args(["run", "--key", "prod/leak-a=API_KEY", "--", "sh", "-c", "sleep 2"])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the child: then run has fetched the keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", run.id(), run.id())).unwrap_or_default();
        if !children.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "keyward run started no child");
        std::thread::sleep(Duration::from_millis(20));
    }
    places.add_proc("keyward run", run.id());
    let status = run.wait().unwrap();
    assert!(status.success(), "keyward run: {status}");
    let mut run_out = Vec::new();
    run.stdout.take().unwrap().read_to_end(&mut run_out).unwrap();
    run.stderr.take().unwrap().read_to_end(&mut run_out).unwrap();
    places.add("keyward run output", run_out);

    // keyward render: only the rendered file holds the secret; no temp file
    // is left beside it.
    let render_dir = work.path().join("render");
    std::fs::create_dir(&render_dir).unwrap();
    let template = work.path().join("app.tmpl");
    std::fs::write(&template, "key={{ prod/leak-a }}\n").unwrap();
    let rendered = render_dir.join("app.env");
    let out = cli(
        &agent,
        &tmp,
        &[
            "render",
            "--once",
            "--template",
            template.to_str().unwrap(),
            "--out",
            rendered.to_str().unwrap(),
        ],
        None,
    );
    ok(&out, "render");
    places.add_output("render", &out);
    let rendered_text = std::fs::read(&rendered).unwrap();
    assert!(
        rendered_text == format!("key={s_gen}\n").as_bytes(),
        "render wrote key={{s_gen}}: {} is not {}",
        fingerprint(&rendered_text),
        fingerprint(format!("key={s_gen}\n").as_bytes())
    );
    let left: Vec<_> = std::fs::read_dir(&render_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("app.env")], "render leaves one file");

    // Auth failures against the primary raise a spike alert.
    let version = agent
        .fetch("prod", "leak-a")
        .await
        .unwrap()
        .primary
        .unwrap()
        .version
        .to_string();
    for _ in 0..3 {
        let out = cli(
            &agent,
            &tmp,
            &[
                "report",
                "prod/leak-a",
                "--version",
                &version,
                "--status",
                "401",
                "--service",
                "leakscan",
            ],
            None,
        );
        ok(&out, "report");
        places.add_output("report", &out);
    }
    let alerts = receiver.wait_for_async(1, Duration::from_secs(10)).await;
    assert!(!alerts.is_empty(), "the spike alert reached the webhook");
    for a in &alerts {
        places.add("alert payload", a.raw.clone());
    }

    // Read-only commands.
    let config_file = agent.dir.parent().unwrap().join("keyward.toml");
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["list"],
        vec!["list", "--json"],
        vec!["rotation-status", "prod/leak-a"],
        vec!["audit", "verify"],
        vec!["doctor", "--config", config_file.to_str().unwrap()],
    ] {
        let out = cli(&agent, &tmp, &args, None);
        places.add_output(&args.join(" "), &out);
    }

    // The hooks' own process records: one set per hook run.
    let dumps = files_under(&hooks.join("dumps"));
    for hook in ["gen", "val", "rev"] {
        assert!(
            dumps
                .iter()
                .any(|p| p.file_name().unwrap().to_string_lossy().starts_with(hook)),
            "the {hook} hook ran and recorded its /proc entries: {dumps:?}"
        );
    }
    places.add_tree(&hooks.join("dumps"));

    // The agent: its process, output, audit log and every state file.
    places.add_proc("keywardd", agent.pid());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
    let core_line = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert!(
        core_line.split_whitespace().filter(|w| *w == "0").count() == 2,
        "core size limit 0: {core_line}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(status.contains("CoreDumping:\t0"), "{status}");

    // A crash leaves no core file: SIGABRT, then nothing new in its working
    // directory (where the default core_pattern writes) or the state dir.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    // The child stays in `agent` until it is reaped, so that a failed
    // assertion still kills it (TestAgent's Drop).
    let child = agent.child.as_mut().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGABRT,
    )
    .unwrap();
    let status = wait_timeout(child, Duration::from_secs(10)).expect("the agent dies on SIGABRT");
    agent.child = None;
    agent.join_output();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    assert!(
        !status.core_dumped(),
        "the kernel reports no core dump (core_pattern {pattern:?})"
    );
    assert!(files_under(&cwd).is_empty(), "no core file in the agent's cwd");

    places.add("keywardd output", agent.logs().into_bytes());
    places.add_tree(&agent.dir);
    let temp_files = files_under(&tmp);
    places.add_tree(&tmp);

    // The scan.
    let mut hits = Vec::new();
    let mut bytes = 0;
    for (what, data) in &places.0 {
        bytes += data.len();
        for (name, s) in secrets {
            if data.windows(s.len()).any(|w| w == s.as_bytes()) {
                hits.push(format!("{name} in {what}"));
            }
        }
    }
    eprintln!(
        "leak scan: secrets={} places={} bytes={bytes} temp_files_left={} hits={}",
        secrets.len(),
        places.0.len(),
        temp_files.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
    assert!(temp_files.is_empty(), "temp files left behind: {temp_files:?}");
    // The scan looks where the secrets really went: the store holds them
    // only encrypted, and `get` and the rendered file in clear.
    assert!(files_under(&agent.dir.join("store")).len() >= 2);
}
