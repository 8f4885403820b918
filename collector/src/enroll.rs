//! `Enrollment.Enroll`: turns a site's enrolment secret and a CSR into a
//! device identity.
//!
//! Who may become which device (the trust boundary of enrolment):
//! - a machine id and serial number never seen before: a new, active
//!   device of the secret's site;
//! - a device that proves it holds its current key (its certificate and a
//!   signature over the new CSR, see `pki::verify_reenrollment_proof`):
//!   the same device, new certificate, same site. Its open streams are
//!   closed (`ingest::close_superseded_streams`);
//! - a known machine id or serial without that proof (a re-imaged laptop,
//!   a cloned image, or someone holding a secret and a copied
//!   `/etc/machine-id`): a new device, `pending` a technician's `devices
//!   approve` or `devices link`, its stream refused until then. A device
//!   is never taken over and never moves site by enrolling.
//!
//! Refusals are audited, but at most `MAX_REFUSALS` per peer address per
//! `REFUSAL_WINDOW`: past that the peer is refused before the store is
//! touched, so guessing secrets cannot occupy the single writer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tonic::{Request, Response, Status};

use crate::auth::secret_digest;
use crate::ingest::facts_from_wire;
use crate::model::{DeviceFacts, DeviceId, DeviceStatus, Site, SiteId};
use crate::pki::{CertificateAuthority, PkiError, sha256_hex, verify_reenrollment_proof};
use crate::store::{AuditEntry, Enrollment, Store};

/// Enrolment attempts a peer address may have refused or in flight per
/// `REFUSAL_WINDOW` (successes are given back; schools behind one NAT
/// address enrol many devices at once).
const MAX_REFUSALS: u32 = 30;
const REFUSAL_WINDOW: Duration = Duration::from_secs(600);
/// Peer addresses remembered at most (the oldest windows go first).
const MAX_PEERS: usize = 10_000;

pub struct EnrollmentService {
    pub store: Arc<dyn Store>,
    pub ca: Arc<CertificateAuthority>,
    pub heartbeat_interval_secs: u32,
    pub refusals: RefusalLimit,
}

/// Refusals per peer address within a window.
#[derive(Default)]
pub struct RefusalLimit {
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RefusalLimit {
    /// Whether `peer` may still be answered by the store. An attempt is
    /// counted as it is let through (so concurrent attempts cannot all
    /// pass before the first refusal is counted) and given back when it
    /// succeeds (`forgive`).
    pub fn allows(&self, peer: IpAddr, now: Instant) -> bool {
        let allowed = match self.lock().get(&peer) {
            Some((since, count)) => {
                now.saturating_duration_since(*since) >= REFUSAL_WINDOW || *count < MAX_REFUSALS
            }
            None => true,
        };
        if allowed {
            self.record(peer, now);
        }
        allowed
    }

    /// Gives back the attempt `allows` counted: it succeeded.
    pub fn forgive(&self, peer: IpAddr) {
        if let Some((_, count)) = self.lock().get_mut(&peer) {
            *count = count.saturating_sub(1);
        }
    }

    fn record(&self, peer: IpAddr, now: Instant) {
        let mut peers = self.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (since, _)| now.saturating_duration_since(*since) < REFUSAL_WINDOW);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(ip, _)| *ip)
            {
                peers.remove(&oldest);
            }
        }
        let entry = peers.entry(peer).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= REFUSAL_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which device an enrolment becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Identity {
    /// A machine never seen: a new active device.
    New,
    /// The same device, proven by its key; it keeps its status (a pending
    /// device stays pending).
    Same {
        id: DeviceId,
        status: DeviceStatus,
        reason: String,
    },
    /// A known machine without proof: a new device pending a technician.
    PendingDuplicate { of: DeviceId, reason: String },
}

#[tonic::async_trait]
impl v1::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let peer_ip = peer.map(|a| a.ip());
        if let Some(ip) = peer_ip
            && !self.refusals.allows(ip, Instant::now())
        {
            return Err(Status::resource_exhausted(
                "too many refused enrolments from this address; try again later",
            ));
        }
        let peer = peer.map(|a| a.to_string()).unwrap_or_default();
        let request = request.into_inner();
        let facts = request
            .facts
            .clone()
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
                return Err(self
                    .refuse(
                        &peer,
                        &facts,
                        now,
                        Status::permission_denied(rejection.to_string()),
                    )
                    .await);
            }
        };
        if !request.site.is_empty() && request.site != site.name {
            return Err(self
                .refuse(
                    &peer,
                    &facts,
                    now,
                    Status::permission_denied(format!(
                        "the enrolment secret belongs to another site than '{}'",
                        request.site
                    )),
                )
                .await);
        }
        let identity = match self.identity(&request, &facts, &site).await {
            Ok(identity) => identity,
            Err(status) => return Err(self.refuse(&peer, &facts, now, status).await),
        };
        let (device_id, status, status_reason, duplicate_of) = match &identity {
            Identity::New => (
                DeviceId::generate(),
                DeviceStatus::Active,
                String::new(),
                None,
            ),
            Identity::Same { id, status, reason } => (id.clone(), *status, reason.clone(), None),
            Identity::PendingDuplicate { of, reason } => (
                DeviceId::generate(),
                DeviceStatus::Pending,
                reason.clone(),
                Some(of.clone()),
            ),
        };
        let cert = self
            .ca
            .sign_device_csr(&request.csr_der, &device_id, &site.name)
            .map_err(|e| match e {
                PkiError::BadCsr(m) => Status::invalid_argument(format!("csr_der: {m}")),
                other => internal(other),
            })?;
        self.store
            .save_enrollment(Enrollment {
                device_id: device_id.clone(),
                site: site.id,
                facts: facts.clone(),
                cert_sha256: sha256_hex(cert.der()),
                at: now,
                status,
                status_reason: status_reason.clone(),
                duplicate_of,
            })
            .await
            .map_err(internal)?;
        let (action, detail) = match &identity {
            Identity::New => ("device_enrolled", format!("site={} peer={peer}", site.name)),
            Identity::Same { .. } => (
                "device_reenrolled",
                format!("site={} peer={peer} proof=current key", site.name),
            ),
            Identity::PendingDuplicate { of, reason } => (
                "device_enrolled_pending",
                format!("site={} peer={peer} duplicate_of={of}: {reason}", site.name),
            ),
        };
        self.audit(now, Some(site.id), action, device_id.as_str(), &detail)
            .await?;
        if let Some(ip) = peer_ip {
            self.refusals.forgive(ip);
        }
        let pending = status == DeviceStatus::Pending;
        tracing::info!(device_id = %device_id, site = %site.name, action, pending, "device enrolled");
        Ok(Response::new(v1::EnrollResponse {
            device_id: device_id.to_string(),
            certificate_pem: cert.pem(),
            ca_certificate_pem: self.ca.cert_pem.clone(),
            site: site.name,
            heartbeat_interval_secs: self.heartbeat_interval_secs,
            pending_approval: pending,
            status_reason,
        }))
    }
}

impl EnrollmentService {
    /// Which device this request becomes (see the module doc).
    async fn identity(
        &self,
        request: &v1::EnrollRequest,
        facts: &DeviceFacts,
        site: &Site,
    ) -> Result<Identity, Status> {
        if !request.previous_certificate_der.is_empty() {
            let current = self
                .store
                .device_by_certificate(&sha256_hex(&request.previous_certificate_der))
                .await
                .map_err(internal)?;
            let proven = verify_reenrollment_proof(
                &request.previous_certificate_der,
                &request.previous_key_signature,
                &request.csr_der,
            );
            match (current, proven) {
                (Some(device), Ok(())) if device.status != DeviceStatus::Revoked => {
                    if device.site != site.id {
                        return Err(Status::permission_denied(format!(
                            "device {} belongs to another site; a technician there must revoke it before it can join this one",
                            device.id
                        )));
                    }
                    return Ok(Identity::Same {
                        id: device.id,
                        status: device.status,
                        reason: device.status_reason,
                    });
                }
                (Some(device), Ok(())) => {
                    return Ok(Identity::PendingDuplicate {
                        reason: format!(
                            "re-enrolment of revoked device {}: {}",
                            device.id, device.status_reason
                        ),
                        of: device.id,
                    });
                }
                (_, Err(why)) => {
                    tracing::warn!(error = %why, "re-enrolment proof refused");
                }
                (None, Ok(())) => {}
            }
        }
        let known = self
            .store
            .device_for_machine(&facts.machine_id, &facts.serial_number)
            .await
            .map_err(internal)?;
        Ok(match known {
            None => Identity::New,
            Some(of) => Identity::PendingDuplicate {
                reason: format!(
                    "machine id or serial number already enrolled as device {of}, without proof of that device's key"
                ),
                of,
            },
        })
    }

    /// Audits a refusal (while the peer is under its limit) and counts it.
    async fn refuse(
        &self,
        peer: &str,
        facts: &DeviceFacts,
        now: Timestamp,
        status: Status,
    ) -> Status {
        // The attempt was counted when it was let through.
        tracing::warn!(%peer, hostname = %facts.hostname, reason = %status.message(), "enrolment refused");
        let detail = format!(
            "peer={peer} hostname={}: {}",
            facts.hostname,
            status.message()
        );
        if let Err(e) = self
            // Collector-wide: a refused request's site is only its claim.
            .audit(now, None, "enrollment_refused", &facts.machine_id, &detail)
            .await
        {
            return e;
        }
        status
    }

    async fn audit(
        &self,
        at: Timestamp,
        site: Option<SiteId>,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Status> {
        self.store
            .append_audit(AuditEntry {
                at,
                site,
                actor: "enrollment",
                action,
                target,
                detail,
                address: "",
            })
            .await
            .map_err(internal)
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "enrolment failed");
    Status::internal("internal error; see the collector log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_limited_per_address_within_the_window() {
        let limit = RefusalLimit::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let start = Instant::now();
        // Counted as let through: concurrent attempts cannot all pass.
        for n in 0..MAX_REFUSALS {
            assert!(limit.allows(a, start), "attempt {n}");
        }
        assert!(!limit.allows(a, start), "over the limit");
        limit.forgive(a);
        assert!(limit.allows(a, start), "a success gives its attempt back");
        assert!(!limit.allows(a, start));
        assert!(limit.allows(b, start), "another address");
        assert!(
            limit.allows(a, start + REFUSAL_WINDOW),
            "a new window starts afresh"
        );
    }
}
