//! `keyward render`: write keys into a file from a template, and again on
//! every change (see `held_keys.rs` for how the keys are fetched and
//! followed, `template.rs` for the template).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Cli, RenderArgs};
use crate::commands::held_keys::{describe, fetch_all, follow, harden};
use crate::commands::template::{parse_template, render_bytes};
use crate::sockets::service;
use crate::Outcome;

/// Writes `bytes` to `path` atomically with `mode`: a temp file in the same
/// directory, synced, renamed over `path`, then the directory synced.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".keyward-render")
        .tempfile_in(dir)
        .map_err(|e| fail("create a temp file next to", e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("set the mode of", e))?;
    tmp.write_all(bytes).map_err(|e| fail("write", e))?;
    tmp.as_file().sync_all().map_err(|e| fail("sync", e))?;
    tmp.persist(path).map_err(|e| fail("replace", e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `--on-change` through `/bin/sh -c`; its failure is reported, not
/// fatal.
async fn on_change(cmd: &str) {
    match tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("keyward render: --on-change command failed ({s})"),
        Err(e) => eprintln!("keyward render: cannot run --on-change command: {e}"),
    }
}

/// `keyward render`.
pub(crate) async fn render(cli: &Cli, args: &RenderArgs) -> Outcome {
    harden();
    let text = std::fs::read_to_string(&args.template)
        .map_err(|e| format!("cannot read template {}: {e}", args.template.display()))?;
    let (pieces, keys) = parse_template(&text, &args.template.display().to_string())?;
    let mode = u32::from_str_radix(args.mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!(
                "--mode {:?} is not an octal file mode: write e.g. 0600 or 0640",
                args.mode
            )
        })?;
    let not_written = |e: String| format!("{e}; {} was not written", args.out.display());
    let client = service(cli).await.map_err(not_written)?;
    let sets = fetch_all(&client, &keys).await.map_err(not_written)?;
    write_atomically(&args.out, &render_bytes(&pieces, &sets)?, mode)?;
    eprintln!("keyward render: wrote {} ({})", args.out.display(), describe(&sets));
    if args.once {
        return Ok(ExitCode::SUCCESS);
    }
    let seen = sets.iter().map(|s| (s.key.clone(), s.generation)).collect();
    let mut changes = follow(&client, &keys, &seen);
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle signals: {e}"))?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
            Some(change) = changes.recv() => {
                let changed = change.key;
                let sets = match fetch_all(&client, &keys).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("keyward render: {changed} changed but {e}; {} is left as it was", args.out.display());
                        continue;
                    }
                };
                let written = render_bytes(&pieces, &sets).and_then(|b| write_atomically(&args.out, &b, mode));
                match written {
                    Ok(()) => {
                        eprintln!("keyward render: {changed} changed; wrote {} ({})", args.out.display(), describe(&sets));
                        if let Some(cmd) = &args.on_change {
                            on_change(cmd).await;
                        }
                    }
                    Err(e) => eprintln!("keyward render: {e}; {} is left as it was", args.out.display()),
                }
            }
        }
    }
}
