//! homeport's wire: protobuf messages, framing, identities in certificates, and QUIC endpoints
//! with mutual TLS.
//!
//! Every process holds a certificate from the deployment CA naming its [`Identity`]; servers and
//! clients check each other's certificate, so a handler always knows who is asking. Requests go
//! one per QUIC bidirectional stream as length-prefixed protobuf frames ([`call`], [`serve`]).

mod certs;
mod error;
mod frame;
mod identity;
mod rpc;
mod tls;

/// Messages of `proto/homeport/v1/queue.proto`. Field numbers are the compatibility contract
/// between versions; `tests/golden.rs` pins their encoding.
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/homeport.v1.rs"));
}

/// The only application protocol spoken; a peer offering anything else fails the handshake.
pub const ALPN: &[u8] = b"homeport/1";

/// Written into every request so a server can refuse versions it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

pub use certs::{
    CA_CERT_FILE, CA_KEY_FILE, DevCertSpec, ensure_dev_ca, generate_dev_certs, issue_dev_cert,
};
pub use error::WireError;
pub use frame::{
    FRAME_PREFIX_BYTES, MAX_FRAME_BYTES, decode_frame, decode_frame_len, encode_frame,
};
pub use identity::{IDENTITY_DNS_SUFFIX, Identity, Role};
pub use rpc::{
    MIN_PROTOCOL_VERSION, Reply, ResponseStream, call, error_response, open_stream, read_frame,
    request, serve, write_frame,
};
pub use tls::{
    EndpointLimits, TlsFiles, cert_identity, client_endpoint, connect, peer_identity,
    server_endpoint,
};
