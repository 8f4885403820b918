//! `Enrollment.Enroll`: turns a site's enrolment secret and a CSR into a
//! device identity. Re-enrolling the same machine (machine id, else serial
//! number) keeps its device id and replaces its certificate, so the old
//! certificate stops working at once.

use std::sync::Arc;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tonic::{Request, Response, Status};

use crate::auth::secret_digest;
use crate::ingest::facts_from_wire;
use crate::model::DeviceId;
use crate::pki::{CertificateAuthority, PkiError, sha256_hex};
use crate::store::{AuditEntry, Enrollment, Store};

pub struct EnrollmentService {
    pub store: Arc<dyn Store>,
    pub ca: Arc<CertificateAuthority>,
    pub heartbeat_interval_secs: u32,
}

#[tonic::async_trait]
impl v1::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let request = request.into_inner();
        let facts = request
            .facts
            .map(facts_from_wire)
            .ok_or_else(|| Status::invalid_argument("facts: missing"))?;
        if facts.machine_id.trim().is_empty() && facts.serial_number.trim().is_empty() {
            return Err(Status::invalid_argument(
                "facts.machine_id and facts.serial_number are both empty: the device cannot be identified",
            ));
        }
        if request.csr_der.is_empty() {
            return Err(Status::invalid_argument("csr_der: missing"));
        }
        let now = Timestamp::now();
        let site = match self
            .store
            .redeem_enrollment_secret(&secret_digest(&request.enrollment_secret), now)
            .await
            .map_err(internal)?
        {
            Ok(site) => site,
            Err(rejection) => {
                tracing::warn!(%peer, hostname = %facts.hostname, reason = %rejection, "enrolment refused");
                self.audit(
                    now,
                    "enrollment_refused",
                    &facts.hostname,
                    &rejection.to_string(),
                )
                .await?;
                return Err(Status::permission_denied(rejection.to_string()));
            }
        };
        if !request.site.is_empty() && request.site != site.name {
            return Err(Status::permission_denied(format!(
                "the enrolment secret belongs to another site than '{}'",
                request.site
            )));
        }

        let existing = self
            .store
            .device_for_machine(&facts.machine_id, &facts.serial_number)
            .await
            .map_err(internal)?;
        let device_id = existing.unwrap_or_else(DeviceId::generate);
        let cert = self
            .ca
            .sign_device_csr(&request.csr_der, &device_id, &site.name)
            .map_err(|e| match e {
                PkiError::BadCsr(m) => Status::invalid_argument(format!("csr_der: {m}")),
                other => internal(other),
            })?;
        let reenrolled = self
            .store
            .save_enrollment(Enrollment {
                device_id: device_id.clone(),
                site: site.id,
                facts: facts.clone(),
                cert_sha256: sha256_hex(cert.der()),
                at: now,
            })
            .await
            .map_err(internal)?;
        let action = if reenrolled {
            "device_reenrolled"
        } else {
            "device_enrolled"
        };
        self.audit(
            now,
            action,
            device_id.as_str(),
            &format!("site={} peer={peer}", site.name),
        )
        .await?;
        tracing::info!(device_id = %device_id, site = %site.name, reenrolled, "device enrolled");

        Ok(Response::new(v1::EnrollResponse {
            device_id: device_id.to_string(),
            certificate_pem: cert.pem(),
            ca_certificate_pem: self.ca.cert_pem.clone(),
            site: site.name,
            heartbeat_interval_secs: self.heartbeat_interval_secs,
        }))
    }
}

impl EnrollmentService {
    async fn audit(
        &self,
        at: Timestamp,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Status> {
        self.store
            .append_audit(AuditEntry {
                at,
                actor: "enrollment",
                action,
                target,
                detail,
            })
            .await
            .map_err(internal)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "enrolment failed");
    Status::internal("internal error; see the collector log")
}
