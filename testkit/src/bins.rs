//! Where the kit finds `keywardd` and `keyward`.
//!
//! Never by building them: a test that runs `cargo build` waits on the
//! build directory's lock, rebuilds behind the runner's back and hides a
//! build failure inside a test failure. The binaries are built before the
//! tests run, and found in one of two ways:
//!
//! 1. From the environment, for the integration tests and benches of the
//!    package that owns the binaries (the `keyward` package's `tests/it`
//!    and `benches/`): Cargo sets `CARGO_BIN_EXE_<name>` for them at run
//!    time as at compile time, cargo-nextest `NEXTEST_BIN_EXE_<name>`.
//! 2. Otherwise, beside the test executable's own profile directory: a test
//!    executable is `target/<profile>/deps/NAME-HASH`, and the workspace's
//!    binaries of the same build are `target/<profile>/NAME`. That is how
//!    the Rust client's tests (another package, to which Cargo names no
//!    binary of `keyward`) find them; `scripts/test` runs
//!    `cargo build --bins` first, and a developer running those tests alone
//!    does the same (`cargo test --workspace` builds them too).
//!
//! Either way the path is checked, and a missing binary fails the test
//! saying which command builds it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The agent binary.
pub fn keywardd() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| locate("keywardd"))
}

/// The command-line binary.
pub fn keyward() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| locate("keyward"))
}

fn locate(name: &str) -> PathBuf {
    let named = std::env::var_os(format!("CARGO_BIN_EXE_{name}"))
        .or_else(|| std::env::var_os(format!("NEXTEST_BIN_EXE_{name}")));
    let path = match named {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            // target/<profile>/deps/NAME-HASH → target/<profile>/NAME
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .unwrap_or_else(|| panic!("{} is not in a Cargo target directory", exe.display()));
            profile_dir.join(name)
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --bins`; the test build of scripts/test makes them)",
        path.display()
    );
    path
}
