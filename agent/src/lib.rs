//! Hall Monitor agent: the privileged daemon (`run`, see `daemon`) and its
//! command line (`enroll`, `status`, `check`, `doctor`, the PAM hooks). The session
//! helper inside each graphical session is another program,
//! `hallmonitor-session` (the `session/` crate), talking to the daemon over
//! a Unix socket (`capture`). `main.rs` only parses the command line;
//! everything lives here so tests and benches reach it.
//!
//! Architecture invariant: this crate links no X11, Wayland or image code
//! (no x11rb, no xcap); what it shares with the helper is
//! `hallmonitor-capture-protocol`.
//!
//! Data flow: producers (heartbeats and facts, login sessions, two-step
//! sign-ins from the auth logs or journal, captures from helpers, new
//! software from the file watcher, command results, monitoring gaps)
//! append to the durable `outbox`; `stream` drains it to the collector over
//! mutual TLS and deletes what the collector acknowledged. What the
//! daemon keeps across restarts besides events (ledgers, read positions,
//! the collector's last word) lives in the outbox file's state table,
//! reached through `state`.
//!
//! Architecture invariant: the wire types (`hallmonitor_proto::v1`) are the
//! outbox's payload, so producers build them directly; only the outbox
//! decides what is evicted and only the stream deletes events.

pub mod accounts;
pub mod aup;
pub mod authlog;
pub mod capture;
pub mod check;
pub mod config;
pub mod daemon;
pub mod data_dir;
pub mod doctor;
pub mod enforce;
pub mod enroll;
pub mod facts;
pub mod files;
pub mod gaps;
pub mod heartbeat;
pub mod memory;
pub mod outbox;
pub mod policy;
pub mod sessions;
pub mod signals;
pub mod socket_dir;
pub mod state;
pub mod status;
pub mod stream;
pub mod task;
pub mod tls;
