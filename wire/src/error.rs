use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. Each message names the file, peer or limit involved
/// and, where there is one, the fix, because these errors end up in operators' terminals.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error(
        "{what} file {} not found: run `homeport certs --config FILE --out DIR` to create the deployment's certificates, or fix the path in the config",
        path.display()
    )]
    TlsFileMissing { what: &'static str, path: PathBuf },

    #[error("cannot read {what} file {}: {source}: check the file's permissions", path.display())]
    TlsFileRead {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{what} file {} is not usable: {detail}: re-create it with `homeport certs --config FILE --out DIR`",
        path.display()
    )]
    TlsFileInvalid {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },

    #[error(
        "TLS configuration rejected: {detail}: the CA, certificate and key must all come from the same `homeport certs` run"
    )]
    TlsConfig { detail: String },

    #[error("endpoint limits rejected: {detail}")]
    BadLimits { detail: String },

    #[error("cannot create {}: {source}: check that the directory exists and is writable", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot generate the certificate for {what}: {source}")]
    CertGen {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("dev CA in {}: {detail}", dir.display())]
    DevCa { dir: PathBuf, detail: String },

    #[error(
        "cannot bind UDP socket {addr}: {source}: choose a free port, or an address that belongs to this host"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot connect to {server} at {addr}: {detail}")]
    Connect {
        server: String,
        addr: SocketAddr,
        detail: String,
    },

    #[error("connection lost while {what}: {source}")]
    Connection {
        what: &'static str,
        #[source]
        source: quinn::ConnectionError,
    },

    #[error("{what} timed out after {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },

    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes: send smaller batches, or raise max_frame_bytes on the receiver"
    )]
    FrameTooLarge { len: usize, max: usize },

    #[error("malformed frame: {detail}")]
    Frame { detail: String },

    #[error(
        "cannot decode {what}: {source}: the peer sent bytes that are not a homeport/1 message"
    )]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },

    #[error("stream failed while {what}: {detail}")]
    Stream { what: &'static str, detail: String },

    #[error("bad identity {value:?}: {reason}")]
    BadIdentity { value: String, reason: String },

    #[error(
        "the peer presented no certificate: every homeport connection uses mutual TLS, so this is a bug or a foreign client"
    )]
    NoPeerCertificate,
}
