//! Hall Monitor wire protocol: the generated prost messages and tonic
//! services for `proto/hallmonitor/v1/hallmonitor.proto`.
//!
//! This crate holds only the schema and its generated code. The agent and the
//! collector convert these types into their own domain types at the edge
//! (`stream` in the agent, `ingest`/`enroll` in the collector).

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("hallmonitor.v1");
}

pub use prost_types::Timestamp;
