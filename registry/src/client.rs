//! `RegistryClient`: what gateways, operators and tests call to use the registry. It sends each
//! operation to the local region's registry node and, when that node cannot be reached (connect
//! failure, no answer within `registry.operation_timeout_ms`, overloaded), to the other regions'
//! nodes in deployment order. Any node can run any operation: each is a proposer over all three
//! acceptors.
//!
//! Errors say whether the registry *refused* the operation (nothing changed; retrying the same
//! request gets the same refusal) or whether its *outcome is unknown* (it may still take effect):
//! see [`ClientError::is_refused`] and [`ClientError::outcome_unknown`]. Claims and releases are
//! idempotent, so retrying after an unknown outcome is safe; a `set_home` retried after an unknown
//! outcome may answer `HomeConflict` for its own earlier, successful attempt (read the entry).

use std::collections::HashMap;
use std::net::SocketAddr;

use homeport_config::{Deployment, registry_identity};
use homeport_wire::{self as wire, Identity, Role, pb};

use crate::messages::{home_from, operation_to_pb};
use crate::registry::{Operation, RegistryError, WxidStatus};
use crate::values::HomeEntry;

/// Largest frame a registry message may take: 1024 requests of at most 4 KiB values and
/// 256-byte keys, with room for envelopes.
pub(crate) const MAX_REGISTRY_FRAME_BYTES: usize = 8 << 20;

/// What a successful claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The user now holds the ID; `released` is the ID it gave up for it.
    Claimed { released: Option<String> },
    /// The user already held the ID; nothing changed.
    AlreadyHeld,
}

/// What a successful release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Released,
    /// Nobody held the ID; nothing changed.
    AlreadyFree,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    // Refused: nothing changed.
    #[error("WeChat ID {wxid:?} is taken by user {owner:?}; choose another ID")]
    Taken { wxid: String, owner: String },
    #[error("WeChat ID {wxid:?} is held by user {owner:?}; only its holder may release it")]
    NotOwner { wxid: String, owner: String },
    #[error(
        "the home entry is {current:?}, not at the expected epoch; read it and retry with its epoch"
    )]
    HomeConflict { current: Option<HomeEntry> },
    #[error("{message}")]
    BadName { message: String },
    // Outcome unknown: the operation may still take effect.
    #[error("registry node {node}: {message}")]
    Unavailable { node: String, message: String },
    #[error("registry node {node}: {message}")]
    Contended { node: String, message: String },
    #[error(
        "no registry node answered (tried {}); last problem: {last}; check that registry nodes \
         run and are reachable; the operation may still take effect",
        tried.join(", ")
    )]
    Unreachable { tried: Vec<String>, last: String },
    // Other.
    #[error("registry node {node} answered something unexpected: {message}")]
    Protocol { node: String, message: String },
    #[error("registry value is damaged: {message}")]
    Corrupt { message: String },
    #[error(
        "the deployment runs no registry node in region {region:?}; add [regions.registry] to \
         every region, or pick a region that has one"
    )]
    NoRegistry { region: String },
}

impl ClientError {
    /// The registry refused the operation: nothing changed, and the same request is refused again.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            ClientError::Taken { .. }
                | ClientError::NotOwner { .. }
                | ClientError::HomeConflict { .. }
                | ClientError::BadName { .. }
        )
    }

    /// The operation may or may not take effect (timeouts, no majority, contention): retry it
    /// (claims and releases are idempotent) or read to learn what happened.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. }
                | ClientError::Contended { .. }
                | ClientError::Unreachable { .. }
        )
    }
}

impl From<RegistryError> for ClientError {
    /// Errors raised before anything is sent (names checked locally).
    fn from(e: RegistryError) -> Self {
        ClientError::BadName {
            message: e.to_string(),
        }
    }
}

/// One registry node as a client sees it, with a cached connection.
struct Node {
    region: String,
    addr: SocketAddr,
    identity: Identity,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

/// Talks to the deployment's registry nodes; cheap to share (`Arc`), safe to call concurrently
/// (requests multiplex on one QUIC connection per node).
pub struct RegistryClient {
    endpoint: quinn::Endpoint,
    /// The local region's node first, then the others in deployment order.
    nodes: Vec<Node>,
    operation_timeout_ms: u64,
    connect_timeout_ms: u64,
}

impl RegistryClient {
    /// `endpoint` presents the caller's certificate (gateway, region, operator or registry
    /// identity of any region); `local_region` names the node tried first.
    pub fn new(
        endpoint: quinn::Endpoint,
        deployment: &Deployment,
        local_region: &str,
    ) -> Result<Self, ClientError> {
        let addrs: HashMap<&str, SocketAddr> = deployment
            .regions
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.registry.as_ref()?.addr)))
            .collect();
        if !addrs.contains_key(local_region) {
            return Err(ClientError::NoRegistry {
                region: local_region.to_owned(),
            });
        }
        let mut order: Vec<&str> = vec![local_region];
        order.extend(
            deployment
                .regions
                .iter()
                .map(|r| r.name.as_str())
                .filter(|r| *r != local_region && addrs.contains_key(r)),
        );
        let nodes = order
            .into_iter()
            .map(|region| Node {
                region: region.to_owned(),
                addr: addrs[region],
                identity: Identity {
                    name: registry_identity(region),
                    role: Role::Registry,
                    region: region.to_owned(),
                },
                conn: tokio::sync::Mutex::new(None),
            })
            .collect();
        Ok(RegistryClient {
            endpoint,
            nodes,
            operation_timeout_ms: deployment.registry.operation_timeout_ms,
            connect_timeout_ms: deployment.registry.connect_timeout_ms,
        })
    }

    /// Makes `wxid` the user's WeChat ID (releasing the one it holds now). Idempotent.
    pub async fn claim(&self, wxid: &str, uid: &str) -> Result<Claimed, ClientError> {
        let r = self.run(&Operation::claim(wxid, uid)?).await?;
        match kind(&r) {
            Some(pb::RegistryAnswerKind::Claimed) => Ok(Claimed::Claimed {
                released: r.response.wxid,
            }),
            Some(pb::RegistryAnswerKind::AlreadyHeld) => Ok(Claimed::AlreadyHeld),
            _ => Err(r.unexpected("claim")),
        }
    }

    /// Gives up `wxid`; only its holder may.
    pub async fn release(&self, wxid: &str, uid: &str) -> Result<Released, ClientError> {
        let r = self.run(&Operation::release(wxid, uid)?).await?;
        match kind(&r) {
            Some(pb::RegistryAnswerKind::Released) => Ok(Released::Released),
            Some(pb::RegistryAnswerKind::AlreadyFree) => Ok(Released::AlreadyFree),
            _ => Err(r.unexpected("release")),
        }
    }

    /// Who holds `wxid` (a linearizable read).
    pub async fn lookup(&self, wxid: &str) -> Result<WxidStatus, ClientError> {
        let r = self.run(&Operation::lookup(wxid)?).await?;
        match kind(&r) {
            Some(pb::RegistryAnswerKind::Free) => Ok(WxidStatus::Free),
            Some(pb::RegistryAnswerKind::Held) => Ok(WxidStatus::Held {
                uid: r.response.uid,
            }),
            Some(pb::RegistryAnswerKind::Claiming) => Ok(WxidStatus::Claiming {
                uid: r.response.uid,
            }),
            _ => Err(r.unexpected("lookup")),
        }
    }

    /// The ID `uid` holds, and whether a change of it is under way.
    pub async fn user_wxid(&self, uid: &str) -> Result<(Option<String>, bool), ClientError> {
        let r = self.run(&Operation::user_wxid(uid)?).await?;
        match kind(&r) {
            Some(pb::RegistryAnswerKind::UserWxid) => Ok((r.response.wxid, r.response.changing)),
            _ => Err(r.unexpected("user_wxid")),
        }
    }

    /// The user's home entry (`None`: none yet).
    pub async fn get_home(&self, uid: &str) -> Result<Option<HomeEntry>, ClientError> {
        let r = self.run(&Operation::get_home(uid)?).await?;
        match kind(&r) {
            Some(pb::RegistryAnswerKind::Home) => Ok(r.response.home.map(home_from)),
            _ => Err(r.unexpected("get_home")),
        }
    }

    /// Sets the user's home region if its entry is at `expected_epoch` (`None`: no entry yet).
    pub async fn set_home(
        &self,
        uid: &str,
        region: &str,
        expected_epoch: Option<u64>,
    ) -> Result<HomeEntry, ClientError> {
        let r = self
            .run(&Operation::set_home(uid, region, expected_epoch)?)
            .await?;
        match (kind(&r), r.response.home.clone()) {
            (Some(pb::RegistryAnswerKind::HomeSet), Some(home)) => Ok(home_from(home)),
            _ => Err(r.unexpected("set_home")),
        }
    }

    /// Sends `op` to the nodes in order until one answers; maps refusals and errors.
    async fn run(&self, op: &Operation) -> Result<Answered, ClientError> {
        let req = wire::request(pb::request::Body::RegistryOperation(operation_to_pb(op)));
        let mut tried = Vec::new();
        let mut last = String::new();
        for node in &self.nodes {
            tried.push(node.region.clone());
            match self.call(node, &req).await {
                Ok(response) => {
                    let answered = Answered {
                        node: node.identity.name.clone(),
                        response,
                    };
                    match answered.error() {
                        // Overloaded: nothing started there, another node may take it.
                        Some(ClientError::Protocol { message, .. })
                            if answered.response.error
                                == pb::RegistryErrorCode::Overloaded as i32 =>
                        {
                            last = message;
                        }
                        Some(e) => return Err(e),
                        None => return Ok(answered),
                    }
                }
                Err(e) => {
                    tracing::debug!(node = %node.identity.name, error = %e, "registry node unreachable; trying the next");
                    last = e;
                }
            }
        }
        Err(ClientError::Unreachable { tried, last })
    }

    async fn call(
        &self,
        node: &Node,
        req: &pb::Request,
    ) -> Result<pb::RegistryOperationResponse, String> {
        let conn = self.connection(node).await?;
        let response = match wire::call(
            &conn,
            req,
            self.operation_timeout_ms,
            MAX_REGISTRY_FRAME_BYTES,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                if conn.close_reason().is_some() {
                    *node.conn.lock().await = None;
                }
                return Err(e.to_string());
            }
        };
        match response.body {
            Some(pb::response::Body::RegistryOperation(r)) => Ok(r),
            Some(pb::response::Body::Error(e)) => Err(format!(
                "{} refused the request ({:?}): {}",
                node.identity.name,
                e.code(),
                e.message
            )),
            other => Err(format!(
                "{} answered {other:?} to a registry operation",
                node.identity.name
            )),
        }
    }

    async fn connection(&self, node: &Node) -> Result<quinn::Connection, String> {
        let mut cached = node.conn.lock().await;
        if let Some(c) = cached.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = wire::connect(
            &self.endpoint,
            node.addr,
            &node.identity,
            self.connect_timeout_ms,
        )
        .await
        .map_err(|e| e.to_string())?;
        *cached = Some(conn.clone());
        Ok(conn)
    }
}

/// A node's answer to one operation.
struct Answered {
    node: String,
    response: pb::RegistryOperationResponse,
}

fn kind(r: &Answered) -> Option<pb::RegistryAnswerKind> {
    pb::RegistryAnswerKind::try_from(r.response.answer).ok()
}

impl Answered {
    /// The typed error, if the answer is one.
    fn error(&self) -> Option<ClientError> {
        if kind(self) != Some(pb::RegistryAnswerKind::Error) {
            return None;
        }
        use pb::RegistryErrorCode as C;
        let r = &self.response;
        let node = self.node.clone();
        let message = r.message.clone();
        let wxid = r.wxid.clone().unwrap_or_default();
        Some(match C::try_from(r.error) {
            Ok(C::Taken) => ClientError::Taken {
                wxid,
                owner: r.uid.clone(),
            },
            Ok(C::NotOwner) => ClientError::NotOwner {
                wxid,
                owner: r.uid.clone(),
            },
            Ok(C::HomeConflict) => ClientError::HomeConflict {
                current: r.home.clone().map(home_from),
            },
            Ok(C::BadName) => ClientError::BadName { message },
            Ok(C::Unavailable) => ClientError::Unavailable { node, message },
            Ok(C::Contended) => ClientError::Contended { node, message },
            Ok(C::Corrupt) => ClientError::Corrupt { message },
            _ => ClientError::Protocol { node, message },
        })
    }

    fn unexpected(&self, op: &str) -> ClientError {
        ClientError::Protocol {
            node: self.node.clone(),
            message: format!("answer kind {} to {op}", self.response.answer),
        }
    }
}
