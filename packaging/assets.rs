//! Writes the man pages and shell completions of `keywardd` and `keyward`,
//! generated from their clap definitions, for the Debian package:
//!
//! ```text
//! cargo run --example package-assets -- OUT_DIR
//! ```
//!
//! produces `OUT_DIR/man/keywardd.8`, `OUT_DIR/man/keyward.1` and one
//! `keyward-SUBCOMMAND.1` per subcommand, and the completions for bash
//! (`bash/keyward`), zsh (`zsh/_keyward`) and fish (`fish/keyward.fish`),
//! likewise for `keywardd`. `scripts/build-deb` compresses the pages and
//! the package installs everything where man and the shells look.

#[path = "../src/bin/keyward/cli.rs"]
#[allow(dead_code)]
mod keyward_cli;
#[path = "../src/bin/keywardd/cli.rs"]
#[allow(dead_code)]
mod keywardd_cli;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: package-assets OUT_DIR");
        return ExitCode::from(64);
    };
    match write_all(&out) {
        Ok(n) => {
            println!("wrote {n} files under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("package-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> Result<usize, String> {
    let mut written = 0;
    let agent = keywardd_cli::Args::command();
    written += man_pages(agent.clone(), "8", &out.join("man"))?;
    written += completions(agent, &out.join("completions"))?;
    let cli = keyward_cli::Cli::command();
    written += man_pages(cli.clone(), "1", &out.join("man"))?;
    written += completions(cli, &out.join("completions"))?;
    Ok(written)
}

/// The page of `cmd` and, for a command with subcommands, one page per
/// subcommand (`keyward-put.1`), the way git and cargo ship theirs.
fn man_pages(cmd: Command, section: &str, dir: &Path) -> Result<usize, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut written = 0;
    render(cmd.clone(), &name, section, dir)?;
    written += 1;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let page = format!("{name}-{}", sub.get_name());
        let sub = sub.clone().display_name(page.clone()).bin_name(page.clone());
        render(sub, &page, section, dir)?;
        written += 1;
    }
    Ok(written)
}

fn render(cmd: Command, page: &str, section: &str, dir: &Path) -> Result<(), String> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("keyward")
        .source(concat!("keyward ", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)
        .map_err(|e| format!("cannot render the {page} page: {e}"))?;
    let path = dir.join(format!("{page}.{section}"));
    fs::write(&path, buf).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn completions(cmd: Command, dir: &Path) -> Result<usize, String> {
    let name = cmd.get_name().to_owned();
    let mut written = 0;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir).map_err(|e| format!("cannot create {}: {e}", shell_dir.display()))?;
        let file = match shell {
            Shell::Zsh => format!("_{name}"),
            Shell::Fish => format!("{name}.fish"),
            _ => name.clone(),
        };
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut buf);
        let path = shell_dir.join(file);
        fs::write(&path, buf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written += 1;
    }
    Ok(written)
}
