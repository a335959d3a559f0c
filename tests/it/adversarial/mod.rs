//! Adversarial input against a real agent (issue 7): malformed names on
//! every RPC, oversized requests, files and links planted in the store and
//! the audit log's place, a second agent on the same socket path, malformed
//! HTTP/2 and gRPC frames and random bytes on both sockets, connection
//! floods, and random mutations of key files and of the config.
//!
//! Each test counts its cases and prints one figure line,
//! `adversarial: class=NAME cases=N failures=F`, then fails if F > 0,
//! listing what went wrong. Random cases come from fixed seeds, so a
//! failure reproduces. Classes that other suites already cover (listed in
//! RELIABILITY.md) are not repeated here.
//!
//! One module per class of input; [`figures`] (the tally each test prints,
//! and what they all check on an agent) and [`http2`] (just enough HTTP/2
//! to send frames no well-behaved client sends) serve the others, which
//! reach them (and the few helpers one class lends another), this
//! module's imports and its limits through `super::*`.

use crate::common;

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keyward::proto;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

const NOBODY: u32 = 65534;

/// How long to wait for something the agent does in the background.
const DEADLINE: Duration = Duration::from_secs(10);

mod figures;
mod floods;
mod frames;
mod http2;
mod mutations;
mod names;
mod oversized;
mod planted;
mod second_agent;

use figures::*;
use http2::*;
use names::{ok, Answer};
use planted::write_private;
