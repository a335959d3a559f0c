//! `keyward run --proxy` and `keyward proxy`: programs get placeholders,
//! and the key-injecting proxy (`crate::proxy`) puts the keys into their
//! requests to the bound hosts.
//!
//! `keyward run --proxy` makes everything for one run in a private
//! temporary directory (the trust bundle, the Node.js preload), starts the
//! proxy on a loopback port the kernel picks, and starts the command with
//! the placeholders and the proxy settings in its environment. A rotation
//! changes nothing for the command: no restart, no signal. Anything that
//! stops the proxy from starting (an unreachable agent, a key it may not
//! read, a bad binding, a missing CA file) is an error before the command
//! starts: never a command running without its keys.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use keyward_client::Client;
use nix::sys::signal::kill;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::cli::{Cli, ProxyArgs, ProxyingArgs, RunArgs};
use crate::commands::held_keys::harden;
use crate::commands::run::{exit_code, forwarded_signals, key_var, Child, ChildEnv};
use crate::proxy::{self, parse_key_at, parse_key_var_at, Access, Binding, Proxy, Route, Settings};
use crate::sockets::service;
use crate::Outcome;

/// How the proxy names itself to the agent (the `x-keyward-client`
/// header): a consumer that reports use and refusals.
const CLIENT_NAME: &str = concat!("proxy/", env!("CARGO_PKG_VERSION"));

/// The proxy credentials' user name (the password is drawn per run).
const PROXY_USER: &str = "keyward";

/// The service name reports carry for `command`: its name, or for an
/// interpreter (`node app.js`, `python3 -m worker`) the script's.
fn service_name(command: &[String]) -> String {
    let base = |s: &str| {
        Path::new(s)
            .file_name()
            .map_or_else(|| s.to_owned(), |n| n.to_string_lossy().into_owned())
    };
    let program = base(&command[0]);
    let interpreter = [
        "node", "nodejs", "python", "python3", "sh", "bash", "ruby", "perl", "deno", "bun",
    ]
    .iter()
    .any(|i| program == *i || program.starts_with(&format!("{i}.")));
    match command.iter().skip(1).find(|a| !a.starts_with('-')) {
        Some(script) if interpreter => base(script),
        _ => program,
    }
}

fn settings(
    bindings: Vec<Binding>,
    common: &ProxyingArgs,
    access: Access,
    routes: Vec<Route>,
    stable: bool,
) -> Settings {
    Settings {
        bindings,
        replay_limit: usize::try_from(common.replay_limit).unwrap_or(usize::MAX),
        cooldown: common.fallback_cooldown,
        upstream_ca: common.upstream_ca.clone(),
        access,
        routes,
        stable_placeholders: stable,
    }
}

/// Checks `--upstream-ca` before anything starts.
fn check_upstream_ca(common: &ProxyingArgs) -> Result<(), String> {
    match &common.upstream_ca {
        Some(path) if !path.is_file() => Err(format!(
            "--upstream-ca {}: no such file: give the PEM file of the CA that signed the provider's certificate",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// A connected client that reports as `service`.
async fn client(cli: &Cli, service_name: String) -> Result<Client, String> {
    Ok(service(cli)
        .await?
        .with_client_name(CLIENT_NAME)
        .with_service(service_name))
}

/// `keyward run --proxy`.
pub(crate) async fn run_proxied(cli: &Cli, args: &RunArgs) -> Outcome {
    harden();
    let not_started = |e: String| format!("{e}; the command was not started");
    check_upstream_ca(&args.proxying).map_err(not_started)?;
    let bindings = args
        .keys
        .iter()
        .map(|s| parse_key_var_at(s, key_var))
        .collect::<Result<Vec<_>, _>>()
        .map_err(not_started)?;
    let service_name = args
        .proxying
        .service
        .clone()
        .unwrap_or_else(|| service_name(&args.command));
    let client = client(cli, service_name).await.map_err(not_started)?;
    let mut password = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut password);
    let access = Access::Credentials {
        uid: nix::unistd::geteuid().as_raw(),
        user: PROXY_USER.into(),
        password: hex::encode(password),
    };
    let vars: Vec<String> = bindings.iter().map(|b| b.var.clone().unwrap_or_default()).collect();
    let described = describe(&bindings);
    let settings = settings(bindings, &args.proxying, access, Vec::new(), false);
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let proxy = proxy::start(&client, settings, loopback, "keyward run")
        .await
        .map_err(not_started)?;
    let dir = tempfile::Builder::new()
        .prefix("keyward-run-")
        .tempdir()
        .map_err(|e| not_started(format!("cannot make a temporary directory: {e}")))?;
    let env = child_env(&proxy, &vars, dir.path()).map_err(not_started)?;
    warn_no_proxy(&described);
    eprintln!(
        "keyward run: proxy on {} for {}; the command gets placeholders, never the keys",
        proxy.addr,
        described.join(", ")
    );
    let mut child = Child::start(&args.command, &env).map_err(not_started)?;
    drop(env);
    let mut signals = forwarded_signals()?;
    let status = loop {
        tokio::select! {
            status = child.child.wait() => break status.map_err(|e| format!("cannot wait for the command: {e}"))?,
            Some(sig) = signals.recv() => { let _ = kill(child.pid, sig); }
        }
    };
    drop(dir);
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let stats = &proxy.stats;
    if count(&stats.replays) + count(&stats.misdirected) + count(&stats.refused_access) > 0 {
        eprintln!(
            "keyward run: the proxy replayed {} request(s) with the fallback, refused {} misdirected placeholder(s) and {} client(s) without its credentials",
            count(&stats.replays),
            count(&stats.misdirected),
            count(&stats.refused_access)
        );
    }
    Ok(exit_code(status))
}

/// "prod/billing-api → https://api.billing.example:443" for each binding.
fn describe(bindings: &[Binding]) -> Vec<String> {
    bindings
        .iter()
        .map(|b| format!("{} → https://{}", b.key, b.bound))
        .collect()
}

/// A `NO_PROXY` that names a bound host sends the program straight there,
/// with a placeholder the provider will refuse: say so.
fn warn_no_proxy(described: &[String]) {
    for var in ["NO_PROXY", "no_proxy"] {
        let Ok(list) = std::env::var(var) else { continue };
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let host = entry.trim_start_matches('.').split(':').next().unwrap_or("");
            if entry == "*"
                || described
                    .iter()
                    .any(|d| !host.is_empty() && d.contains(&format!("//{host}:")))
            {
                eprintln!(
                    "keyward run: warning: {var} contains {entry:?}: requests there bypass the proxy and carry a placeholder, not the key; remove it from {var}"
                );
            }
        }
    }
}

/// The command's environment: the placeholders, the proxy, the trust
/// bundle and the Node.js preload.
fn child_env(proxy: &Proxy, vars: &[String], dir: &Path) -> Result<ChildEnv, String> {
    let (bundle, ca) = proxy::write_trust(dir, &proxy.ca_pem)?;
    let preload = dir.join("node-preload.cjs");
    std::fs::write(&preload, proxy::NODE_PRELOAD).map_err(|e| format!("cannot write {}: {e}", preload.display()))?;
    let mut env: ChildEnv = Vec::new();
    let mut set = |name: &str, value: &str| env.push((name.to_owned(), Zeroizing::new(value.as_bytes().to_vec())));
    for (var, p) in vars.iter().zip(&proxy.placeholders) {
        set(var, &p.var);
        set(&format!("{var}_PRIMARY"), &p.primary);
        set(&format!("{var}_FALLBACK"), &p.fallback);
    }
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "KEYWARD_PROXY_URL",
    ] {
        set(name, &proxy.url);
    }
    let bundle = bundle.display().to_string();
    for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        set(name, &bundle);
    }
    set("NODE_EXTRA_CA_CERTS", &ca.display().to_string());
    let require = format!("--require {}", node_option_path(&preload));
    let options = match std::env::var_os("NODE_OPTIONS").map(OsString::into_string) {
        Some(Ok(existing)) if !existing.trim().is_empty() => format!("{existing} {require}"),
        _ => require,
    };
    set("NODE_OPTIONS", &options);
    Ok(env)
}

/// A path as NODE_OPTIONS reads it (double-quoted when it has a space).
fn node_option_path(path: &Path) -> String {
    let text = path.display().to_string();
    match text.contains(' ') {
        true => format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
        false => text,
    }
}

/// `keyward proxy`.
pub(crate) async fn proxy(cli: &Cli, args: &ProxyArgs) -> Outcome {
    harden();
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: listen on loopback (127.0.0.1:PORT or [::1]:PORT); the proxy tells its users apart by their local uid",
            args.listen
        ));
    }
    check_upstream_ca(&args.proxying)?;
    let bindings = args
        .keys
        .iter()
        .map(|s| parse_key_at(s))
        .collect::<Result<Vec<_>, _>>()?;
    let routes = args
        .routes
        .iter()
        .map(|s| Route::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let service_name = args.proxying.service.clone().unwrap_or_else(|| "keyward proxy".into());
    let client = client(cli, service_name).await?;
    let uids = match args.allow_uids.is_empty() {
        true => vec![nix::unistd::geteuid().as_raw()],
        false => args.allow_uids.clone(),
    };
    let described = describe(&bindings);
    let settings = settings(
        bindings,
        &args.proxying,
        Access::Uids(uids.clone()),
        routes.clone(),
        true,
    );
    let proxy = proxy::start(&client, settings, args.listen, "keyward proxy").await?;
    // What it serves, written at once; a reader that went away (a closed
    // pipe) does not stop the proxy.
    let mut said = format!("keyward proxy: listening on {} for uid {}\n", proxy.addr, join(&uids));
    for (bound, p) in described.iter().zip(&proxy.placeholders) {
        said += &format!(
            "  {bound}\n    placeholder {} (primary {}, fallback {})\n",
            p.var, p.primary, p.fallback
        );
    }
    for r in &routes {
        said += &format!(
            "  route http://{}{}/… → https://{}/…\n",
            proxy.addr, r.prefix, r.upstream
        );
    }
    if let Some(path) = &args.ca_out {
        std::fs::write(path, &proxy.ca_pem)
            .map_err(|e| format!("--ca-out {}: cannot write it ({e})", path.display()))?;
        said += &format!(
            "  the proxy's CA for this start is in {}: programs using it as an HTTPS proxy must trust it\n",
            path.display()
        );
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(said.as_bytes()).and_then(|()| out.flush());
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn join(uids: &[u32]) -> String {
    uids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            service_name(&v(&["/usr/bin/node", "/srv/app/billing.js"])),
            "billing.js"
        );
        assert_eq!(service_name(&v(&["python3", "-u", "worker.py"])), "worker.py");
        assert_eq!(service_name(&v(&["python3.11", "worker.py"])), "worker.py");
        assert_eq!(service_name(&v(&["/opt/n8n/bin/n8n", "start"])), "n8n");
    }
}
