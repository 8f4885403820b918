//! Hall Monitor agent. One binary, run as the privileged daemon (`run`);
//! later work adds the per-session helper role. `main.rs` only parses the
//! command line; everything lives here so tests and benches reach it.
//!
//! Data flow: producers (heartbeats and facts now; sessions, MFA and
//! captures later) append to the durable `outbox`; `stream` drains it to the
//! collector over mutual TLS and deletes what the collector acknowledged.

pub mod accounts;
pub mod authlog;
pub mod capture;
pub mod check;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod enforce;
pub mod enroll;
pub mod facts;
pub mod files;
pub mod gaps;
pub mod outbox;
pub mod policy;
pub mod sessions;
pub mod snapshot;
pub mod socket_dir;
pub mod status;
pub mod stream;
pub mod tls;
pub mod window;
