//! The agent's integration tests: one test binary, one module per area.
//!
//! One binary, so that the test kit (`keyward-testkit`) and the agent's
//! library are linked once rather than once per area, and so that one
//! runner (`cargo nextest run`, see `.config/nextest.toml`) sees every test
//! and decides what may run beside what. Each module starts real agents on
//! temp sockets (through [`common`]) or real servers in-process.
//!
//! A module's tests are named by its path: `cargo test --test it trust::`
//! runs the trust model's, `cargo nextest run -E 'test(/^faults::/)'` the
//! faults'.

mod common;

mod activation;
mod adversarial;
mod alert_sinks;
mod alerts;
mod alerts_restart;
mod audit_and_crash;
mod audit_segments;
mod cli_errors;
mod doctor;
mod drill_crash;
mod drill_rotation;
mod faults;
mod fetch;
mod fleet;
mod fleet_anchors;
mod fleet_kv;
mod fleet_rotation;
mod hot_reload;
mod layers;
mod leak_scan;
mod metrics_listener;
mod prometheus;
mod proxy;
mod rotation;
mod rotation_jobs;
mod run_render;
mod security;
mod soak;
mod tooling;
mod trust;
mod watch;
