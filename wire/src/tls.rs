//! QUIC endpoints with mutual TLS: both sides present a certificate from the deployment CA, so
//! every connection knows its peer's [`Identity`] before the first request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::{ALPN, Identity, WireError};

/// Where a process finds its TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) to trust. Several CAs may be listed (during a CA
    /// rotation); a peer is accepted if any of them signed its certificate.
    pub ca_cert: PathBuf,
    /// PEM file with this process's certificate (and any intermediates after it).
    pub cert: PathBuf,
    /// PEM file with this process's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The layout `homeport certs` writes: `<cert_dir>/<name>.pem` and `<cert_dir>/<name>.key`.
    pub fn for_identity(ca_cert: &Path, cert_dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca_cert: ca_cert.to_path_buf(),
            cert: cert_dir.join(format!("{name}.pem")),
            key: cert_dir.join(format!("{name}.key")),
        }
    }
}

/// Per-connection limits shared by servers and clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Requests a peer may have in flight on one connection (one request per stream); further
    /// `open_bi` calls wait, which is the back-pressure a server applies to a busy client.
    pub max_concurrent_bidi_streams: u32,
    /// A connection with no packets for this long is closed; bounds how long a dead peer holds
    /// resources and how long a caller waits to learn the peer is gone.
    pub idle_timeout_ms: u64,
    /// Ping interval that keeps an idle but healthy connection open (must be below
    /// `idle_timeout_ms`); 0 disables pings.
    pub keep_alive_interval_ms: u64,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            max_concurrent_bidi_streams: 4096,
            idle_timeout_ms: 10_000,
            keep_alive_interval_ms: 2_000,
        }
    }
}

/// A server endpoint: accepts only clients whose certificate chains to the CA, speaks only ALPN
/// `homeport/1`. It can also open outgoing connections (same certificate), so a process needs one
/// UDP port for both directions.
pub fn server_endpoint(
    bind: SocketAddr,
    tls: &TlsFiles,
    limits: &EndpointLimits,
) -> Result<quinn::Endpoint, WireError> {
    let material = Material::load(tls)?;
    let transport = transport_config(limits)?;

    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(material.roots.clone()), provider())
            .build()
            .map_err(|e| tls_config(format!("client verifier: {e}")))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(|e| key_error(tls, e))?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(server_tls).map_err(|e| tls_config(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server_config.transport_config(transport.clone());

    let reset_key = stateless_reset_key(&material.key);
    let client_config = build_client_config(tls, material, transport)?;
    let socket = bind_udp(bind).map_err(|source| WireError::Bind { addr: bind, source })?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::new(Arc::new(reset_key)),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| WireError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// The key behind QUIC stateless resets, derived from the process's private key so it survives a
/// restart. A restarted server can then reset connections its previous run held: clients learn at
/// once that the peer is gone, instead of waiting out the idle timeout on a dead connection (with
/// quinn's default random key, a `kill -9` and restart left clients blind for `idle_timeout_ms`).
fn stateless_reset_key(key: &PrivateKeyDer<'_>) -> ring::hmac::Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"homeport stateless reset v1");
    ctx.update(key.secret_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ctx.finish().as_ref())
}

/// A client-only endpoint: presents this process's certificate and trusts only the CA. Must be
/// called inside a tokio runtime.
pub fn client_endpoint(
    bind: SocketAddr,
    tls: &TlsFiles,
    limits: &EndpointLimits,
) -> Result<quinn::Endpoint, WireError> {
    let material = Material::load(tls)?;
    let client_config = build_client_config(tls, material, transport_config(limits)?)?;
    let socket = bind_udp(bind).map_err(|source| WireError::Bind { addr: bind, source })?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| WireError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// Socket buffer asked for each endpoint's UDP socket, each direction. The kernel default
/// (~208 KiB) overflows when a replica catches up at tens of MB/s: datagrams are dropped before
/// QUIC sees them (`RcvbufErrors`), and QUIC reads the loss as congestion and slows down. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

fn bind_udp(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only costs throughput under bursts, never correctness.
    if let Err(e) = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// Connects to `server` at `addr`. The handshake fails unless the server's certificate chains to
/// the CA and names exactly `server` (its DNS SAN), so a connection is never made to an
/// impostor that merely holds some certificate from the same CA.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server: &Identity,
    timeout_ms: u64,
) -> Result<quinn::Connection, WireError> {
    let dns = server.dns_name();
    let connect_err = |detail: String| WireError::Connect {
        server: dns.clone(),
        addr,
        detail,
    };
    let connecting = endpoint
        .connect(addr, &dns)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = match tokio::time::timeout(Duration::from_millis(timeout_ms), connecting).await {
        Err(_elapsed) => {
            return Err(WireError::Timeout {
                what: format!("connecting to {dns} at {addr}"),
                timeout_ms,
            });
        }
        Ok(Err(e)) => {
            return Err(connect_err(format!(
                "{e}: check that the server runs at this address, that both certificates come from the same CA, and that the server's certificate names {dns}"
            )));
        }
        Ok(Ok(conn)) => conn,
    };
    // WebPKI already checked the name; this re-check guards against a certificate carrying
    // several identities, which `peer_identity` would otherwise resolve differently.
    let peer = peer_identity(&conn)?;
    if peer != *server {
        conn.close(CLOSE_WRONG_IDENTITY, b"wrong identity");
        return Err(connect_err(format!(
            "the server's certificate names {peer}, not {dns}"
        )));
    }
    Ok(conn)
}

/// Application close code for a connection whose peer certificate does not name the expected
/// identity.
pub(crate) const CLOSE_WRONG_IDENTITY: quinn::VarInt = quinn::VarInt::from_u32(1);

/// The peer's identity, read from the certificate it presented during the handshake (which
/// rustls has already verified against the CA).
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, WireError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(WireError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(WireError::NoPeerCertificate)?;
    cert_identity(leaf)
}

/// The identity a DER certificate names: its one DNS SAN ending in `.homeport`. A certificate
/// with none, or with several (ambiguous), has no identity.
pub fn cert_identity(cert_der: &[u8]) -> Result<Identity, WireError> {
    let bad = |reason: String| WireError::BadIdentity {
        value: "<peer certificate>".to_string(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subjectAltName does not parse: {e}")))?
        .ok_or_else(|| bad("certificate has no subjectAltName".to_string()))?;
    let suffix = format!(".{}", crate::identity::IDENTITY_DNS_SUFFIX);
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) if d.ends_with(&suffix) => Some(*d),
        _ => None,
    });
    let first = names
        .next()
        .ok_or_else(|| bad(format!("certificate has no DNS name ending in `{suffix}`")))?;
    if let Some(second) = names.next() {
        return Err(bad(format!(
            "certificate names two identities ({first}, {second}); issue one certificate per identity"
        )));
    }
    Identity::parse_dns_name(first)
}

/// The CA roots, certificate chain and key of one process, loaded once and shared by the server
/// and client halves of an endpoint.
struct Material {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Material {
    fn load(tls: &TlsFiles) -> Result<Self, WireError> {
        let ca = load_certs("CA certificate", &tls.ca_cert)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| WireError::TlsFileInvalid {
                what: "CA certificate",
                path: tls.ca_cert.clone(),
                detail: e.to_string(),
            })?;
        }
        let chain = load_certs("certificate", &tls.cert)?;
        // Fail at start-up, not at every peer, if the certificate names no homeport identity.
        cert_identity(&chain[0]).map_err(|e| WireError::TlsFileInvalid {
            what: "certificate",
            path: tls.cert.clone(),
            detail: e.to_string(),
        })?;
        let key = PrivateKeyDer::from_pem_file(&tls.key)
            .map_err(|e| pem_error("private key", &tls.key, e))?;
        Ok(Material { roots, chain, key })
    }
}

fn build_client_config(
    tls: &TlsFiles,
    material: Material,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, WireError> {
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_config(e.to_string()))?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .map_err(|e| key_error(tls, e))?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(client_tls).map_err(|e| tls_config(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
    client_config.transport_config(transport);
    Ok(client_config)
}

/// Ring, chosen explicitly per config so nothing depends on a process-wide default provider
/// (which another crate in the process could install differently, or not at all).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config(limits: &EndpointLimits) -> Result<Arc<quinn::TransportConfig>, WireError> {
    let bad = |detail: String| WireError::BadLimits { detail };
    if limits.max_concurrent_bidi_streams == 0 {
        return Err(bad(
            "max_concurrent_bidi_streams is 0, so no request could ever be sent; use at least 1"
                .into(),
        ));
    }
    if limits.idle_timeout_ms == 0 {
        return Err(bad(
            "idle_timeout_ms is 0; dead peers would never be detected, use e.g. 10000".into(),
        ));
    }
    if limits.keep_alive_interval_ms >= limits.idle_timeout_ms {
        return Err(bad(format!(
            "keep_alive_interval_ms ({}) must be below idle_timeout_ms ({}), or idle connections are dropped between pings",
            limits.keep_alive_interval_ms, limits.idle_timeout_ms
        )));
    }
    let idle = quinn::VarInt::from_u64(limits.idle_timeout_ms)
        .map(quinn::IdleTimeout::from)
        .map_err(|_| {
            bad(format!(
                "idle_timeout_ms {} is too large",
                limits.idle_timeout_ms
            ))
        })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_concurrent_bidi_streams))
        // The protocol uses bidirectional streams only; refusing uni streams closes a door.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(
            (limits.keep_alive_interval_ms > 0)
                .then(|| Duration::from_millis(limits.keep_alive_interval_ms)),
        );
    Ok(Arc::new(transport))
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, WireError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(WireError::TlsFileInvalid {
            what,
            path: path.to_path_buf(),
            detail: "contains no PEM `CERTIFICATE` block".to_string(),
        });
    }
    Ok(certs)
}

fn pem_error(what: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> WireError {
    match e {
        rustls_pki_types::pem::Error::Io(source)
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            WireError::TlsFileMissing {
                what,
                path: path.to_path_buf(),
            }
        }
        rustls_pki_types::pem::Error::Io(source) => WireError::TlsFileRead {
            what,
            path: path.to_path_buf(),
            source,
        },
        rustls_pki_types::pem::Error::NoItemsFound => WireError::TlsFileInvalid {
            what,
            path: path.to_path_buf(),
            detail: "contains no PEM block of the expected kind".to_string(),
        },
        other => WireError::TlsFileInvalid {
            what,
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn key_error(tls: &TlsFiles, e: rustls::Error) -> WireError {
    WireError::TlsFileInvalid {
        what: "private key",
        path: tls.key.clone(),
        detail: format!("{e} (is it the key of {}?)", tls.cert.display()),
    }
}

fn tls_config(detail: String) -> WireError {
    WireError::TlsConfig { detail }
}
