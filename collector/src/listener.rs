//! Accepting connections on the collector's three ports, with the bounds a
//! stranger on the network must not get past:
//! - at most `max_connections` open per listener (a semaphore: past it the
//!   listener stops accepting and the kernel's backlog holds the rest), set
//!   below the process's descriptor limit so accepting never fails for
//!   want of descriptors;
//! - a deadline on the TLS handshake, so idle or half-open connections are
//!   closed instead of holding a slot for ever;
//! - back-off on accept errors, logged at most once per pause.
//!
//! The gRPC servers and the HTTPS API consume the stream of handshaken
//! connections this module yields (tonic reads the client certificate from
//! them as from its own TLS).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

impl Limits {
    /// The limits for each listener, from the descriptors this process may
    /// open (raised to the hard limit first): the agents' port gets all
    /// but a reserve, enrolment and the API a small share each.
    pub fn for_this_process() -> (Limits, Limits, Limits) {
        let descriptors = raise_descriptor_limit();
        let reserve = 256;
        let small = 128.min(descriptors / 8).max(8);
        let agents = descriptors.saturating_sub(reserve + 2 * small).max(16);
        let limits = |max_connections| Limits {
            max_connections,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        tracing::info!(
            descriptors,
            telemetry = agents,
            enroll = small,
            api = small,
            "connection limits"
        );
        (limits(agents), limits(small), limits(small))
    }
}

/// Raises the soft limit on open descriptors to the hard limit; the soft
/// limit in force after.
fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .min(1 << 20)
}

/// Connections one client certificate may hold open at once: an agent
/// needs one (two while a reconnect overlaps the old connection's end).
pub const MAX_CONNECTIONS_PER_CERTIFICATE: usize = 2;

/// A handshaken connection holding its slot until it closes.
pub struct Limited {
    io: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
    _certificate: Option<CertificateSlot>,
}

/// Open connections per client certificate (SHA-256), so one stolen or
/// freshly enrolled certificate cannot hold every slot of the port.
#[derive(Default)]
struct PerCertificate(std::sync::Mutex<std::collections::HashMap<String, usize>>);

struct CertificateSlot {
    open: Arc<PerCertificate>,
    sha256: String,
}

impl PerCertificate {
    fn take(self: &Arc<Self>, sha256: String) -> Option<CertificateSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(sha256.clone()).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_CERTIFICATE {
            return None;
        }
        *count += 1;
        Some(CertificateSlot {
            open: self.clone(),
            sha256,
        })
    }
}

impl Drop for CertificateSlot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.sha256) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.sha256);
            }
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl Limited {
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.io.get_ref().0.peer_addr().ok()
    }
}

/// Accepts on `listener` until `shutdown`, yielding connections whose TLS
/// handshake completed within the deadline.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    name: &'static str,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Limited>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_certificate = Arc::new(PerCertificate::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        pause = Duration::from_millis(10);
                        accepted
                    }
                    Err(e) => {
                        tracing::error!(listener = name, error = %e, retry_in_ms = pause.as_millis() as u64, "accept failed");
                        drop(slot);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, per_certificate) =
                (acceptor.clone(), tx.clone(), per_certificate.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let certificate = io
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| crate::pki::sha256_hex(leaf.as_ref()));
                        let certificate = match certificate {
                            None => None,
                            Some(sha256) => match per_certificate.take(sha256) {
                                Some(slot) => Some(slot),
                                None => {
                                    tracing::warn!(listener = name, %peer, "too many connections with one client certificate; closed");
                                    return;
                                }
                            },
                        };
                        let _ = tx
                            .send(Ok(Limited {
                                io,
                                _slot: slot,
                                _certificate: certificate,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::debug!(listener = name, %peer, "TLS handshake not completed in time; closed")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The collector's TLS for a gRPC port: its certificate, HTTP/2 only, and
/// client certificates signed by `client_ca` required when given.
pub fn grpc_tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
