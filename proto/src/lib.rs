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

/// What an agent signs with its current key to re-enrol as the same device
/// (`EnrollRequest.previous_key_signature`): this context, then the DER of
/// the new CSR. Binding the new CSR means a captured request is useless to
/// anyone without the new key.
pub fn reenrollment_proof_message(csr_der: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"hallmonitor re-enrolment proof v1\0";
    [CONTEXT, csr_der].concat()
}
