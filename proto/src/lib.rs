//! Hall Monitor wire protocol: the generated prost messages and tonic
//! services for `proto/hallmonitor/v1/hallmonitor.proto`.
//!
//! This crate holds only the schema, its generated code, the redacted
//! `Debug` of the enrolment request and the re-enrolment proof message. The
//! collector converts these types into its own domain types at the edge
//! (`ingest`, `enroll`); the agent uses them as they are, as the payload of
//! its outbox (see `hallmonitor_agent`).

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("hallmonitor.v1");
}

pub use prost_types::Timestamp;

/// The enrolment secret and key proof never reach a log.
impl std::fmt::Debug for v1::EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("enrollment_secret", &"[redacted]")
            .field("site", &self.site)
            .field("csr_der", &format_args!("{} bytes", self.csr_der.len()))
            .field("facts", &self.facts)
            .field(
                "previous_certificate_der",
                &format_args!("{} bytes", self.previous_certificate_der.len()),
            )
            .field("previous_key_signature", &"[redacted]")
            .finish()
    }
}

/// What an agent signs with its current key to re-enrol as the same device
/// (`EnrollRequest.previous_key_signature`): this context, then the DER of
/// the new CSR. Binding the new CSR means a captured request is useless to
/// anyone without the new key.
pub fn reenrollment_proof_message(csr_der: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"hallmonitor re-enrolment proof v1\0";
    [CONTEXT, csr_der].concat()
}

#[cfg(test)]
mod tests {
    #[test]
    fn enrolment_requests_never_show_their_secret() {
        let request = super::v1::EnrollRequest {
            enrollment_secret: "hm-sekrit-value".into(),
            site: "Cabot".into(),
            ..Default::default()
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("Cabot"));
    }
}
