//! What every module of this binary shares: the test kit, and this
//! package's binaries as Cargo names them to its integration tests.

pub use keyward_testkit::*;

/// The agent, as Cargo built it for these tests.
pub const KEYWARDD: &str = env!("CARGO_BIN_EXE_keywardd");
/// The command line, as Cargo built it for these tests.
pub const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");

/// The kit finds the binaries the same way when it starts an agent itself
/// (see `keyward_testkit::bins`): a test of that, here where Cargo's own
/// names are known.
#[test]
fn the_kit_runs_the_binaries_cargo_built_for_these_tests() {
    assert_eq!(keyward_testkit::bins::keywardd(), std::path::Path::new(KEYWARDD));
    assert_eq!(keyward_testkit::bins::keyward(), std::path::Path::new(KEYWARD));
}
