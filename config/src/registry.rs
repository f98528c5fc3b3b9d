//! What a registry node (`homeport registry`) reads from the deployment file: deployment-wide
//! `[registry]` settings and per region an optional `[regions.registry]` (its listeners and data
//! directory). Either every region runs a registry node (one CASPaxos acceptor each) or none does.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Prefix of a region's registry certificate name (`registry-<region>`); node ids may not start
/// with it, so no queue node can hold a certificate that names a registry node.
pub(crate) const REGISTRY_IDENTITY_PREFIX: &str = "registry-";

/// The certificate name of a region's registry node. Acceptor requests are answered only for
/// peers holding such a certificate.
pub fn registry_identity(region: &str) -> String {
    format!("{REGISTRY_IDENTITY_PREFIX}{region}")
}

/// Deployment-wide registry settings; every node uses the same numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// How long one CASPaxos round waits for a majority of acceptors.
    pub round_timeout_ms: u64,
    /// Rounds one proposal may start before the operation fails (outcome unknown).
    pub max_attempts: u32,
    /// Backoff before a proposal's 2nd round; set it to about one inter-region round trip.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Proposals one operation may make (a claim takes 5 without contention).
    pub max_steps_per_operation: u32,
    /// Operations a node works on at once; past it an operation is refused as overloaded.
    pub max_pending_ops: usize,
    /// How often the sweeper pages through the local acceptor's `user/` keys to finish WeChat ID
    /// changes whose node died half-way.
    pub sweep_interval_ms: u64,
    /// How long a client (`RegistryClient`, gateways) waits for one node's answer before it
    /// tries another region's node.
    pub operation_timeout_ms: u64,
    /// Connecting to a registry node (QUIC handshake included).
    pub connect_timeout_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            round_timeout_ms: 2_000,
            max_attempts: 8,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            max_steps_per_operation: 32,
            max_pending_ops: 10_000,
            sweep_interval_ms: 60_000,
            operation_timeout_ms: 20_000,
            connect_timeout_ms: 2_000,
        }
    }
}

/// One region's registry node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRegistry {
    /// QUIC (mutual TLS): acceptor requests from other registry nodes, operations from clients.
    pub addr: SocketAddr,
    /// `/metrics`, `/healthz`.
    pub admin_addr: SocketAddr,
    /// The acceptor's redb file lives here (`<data_root>/registry-<region>` unless set).
    pub data_dir: PathBuf,
}
