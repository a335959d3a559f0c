//! `cargo package -p keyward-client`: the crate packages, and the package
//! builds by itself. cargo's verify step unpacks the `.crate` and compiles
//! it with nothing of the workspace around it (no `proto/` beside it, no
//! path dependency), so this fails if the crate reaches outside its
//! directory or depends on an unpublished crate. Prints the package's size
//! and how long packaging and verifying took.
//!
//! `--offline`: the package's dependencies are the workspace's, already in
//! cargo's cache from the build that runs this test, so resolving them
//! needs no index update; the test then neither waits on the network nor
//! fails with it, and a dependency missing from the cache is still an
//! error. `--allow-dirty`: a developer runs it on uncommitted work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo_package(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["package", "-p", "keyward-client", "--allow-dirty", "--offline"])
        .args(extra)
        .output()
        .expect("cargo runs")
}

#[test]
fn the_crate_packages_and_builds_from_its_package_alone() {
    let listed = cargo_package(&["--list"]);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "cargo package --list: {stderr}");
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for needed in [
        "Cargo.toml",
        "README.md",
        "LICENSE",
        "build.rs",
        "src/lib.rs",
        "proto/keyward/v1/keys.proto",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} is not in the package: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.starts_with("tests/")),
        "the tests need the workspace and stay out: {files:?}"
    );

    let started = Instant::now();
    let packaged = cargo_package(&[]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&packaged.stderr);
    assert!(packaged.status.success(), "cargo package: {stderr}");
    assert!(
        stderr.contains("Verifying keyward-client"),
        "the package was built by itself: {stderr}"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let file = target
        .join("package")
        .join(format!("keyward-client-{}.crate", env!("CARGO_PKG_VERSION")));
    let bytes = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .len();
    assert!(bytes < 1024 * 1024, "{} is {bytes} bytes", file.display());
    println!(
        "client package: crate_bytes={bytes} files={} package_and_verify_ms={}",
        files.len(),
        took.as_millis()
    );
}
