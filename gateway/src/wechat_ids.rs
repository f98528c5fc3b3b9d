//! WeChat IDs (`/v1/wechat-ids/{id}`): globally unique handles a user claims, kept by the
//! registry (CASPaxos across regions). The gateway checks the ID's syntax itself (a bad ID never
//! costs a round trip between regions), then asks a [`WechatIds`]: the registry's network client
//! in production, an in-memory map in tests.
//!
//! `impl WechatIds for RegistryClient` (below) maps the registry's answers: claimed / already
//! held / refused `Taken{owner}`; released / already free / refused `NotOwner{owner}`; lookup
//! free / held / claiming (a claim under way counts as held); refused `BadName` → 400;
//! unavailable, contended, unreachable → outcome unknown (503, retry is safe); anything else
//! (protocol, corrupt value, no registry in the region) → 502.

use std::collections::HashMap;
use std::sync::Mutex;

pub use homeport_registry::names::{WxId, WxidError};

use crate::homes::BoxFuture;

/// The answer to a claim the registry decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The ID was free and now belongs to the caller.
    Claimed,
    /// The caller held it already (a retried claim lands here: claims are idempotent).
    AlreadyYours,
    /// Another user holds it.
    HeldByOther { owner: String },
}

/// The answer to a release the registry decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The caller held it; it is free now.
    Released,
    /// Nobody holds it (a retried release lands here).
    AlreadyFree,
    /// Another user holds it; only they may release it.
    HeldByOther { owner: String },
}

/// Why the registry gave no decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WechatIdError {
    /// The registry refused the ID's syntax (the gateway checks first, so only when the two
    /// disagree, e.g. during an upgrade).
    #[error(transparent)]
    BadSyntax(#[from] WxidError),
    /// No answer (timeout, no quorum, unreachable): the operation may or may not have taken
    /// effect. Retrying is safe: claim and release are idempotent.
    #[error("the registry gave no answer ({0})")]
    OutcomeUnknown(String),
    /// The registry refused the ID for a reason of its own (its message says which).
    #[error("{0}")]
    Rejected(String),
    /// The registry answered something unusable (a bug or a damaged value, not a retry case).
    #[error("{0}")]
    Failed(String),
}

/// Where WeChat IDs are kept. Object-safe (`Arc<dyn WechatIds>` in `GatewayOptions`).
pub trait WechatIds: Send + Sync {
    /// Claims `id` for `uid`.
    fn claim<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ClaimOutcome, WechatIdError>>;

    /// Releases `id` if `uid` holds it.
    fn release<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, WechatIdError>>;

    /// Who holds `id`, if anyone.
    fn lookup<'a>(&'a self, id: &'a WxId) -> BoxFuture<'a, Result<Option<String>, WechatIdError>>;
}

/// A single-process [`WechatIds`] for tests and demos: a map behind a lock, no replication.
/// `set_unavailable(true)` makes every call answer [`WechatIdError::OutcomeUnknown`].
#[derive(Default)]
pub struct InMemoryWechatIds {
    state: Mutex<InMemoryState>,
}

#[derive(Default)]
struct InMemoryState {
    owners: HashMap<WxId, String>,
    unavailable: bool,
}

impl InMemoryWechatIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails as a registry without quorum would.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InMemoryState> {
        // A panic while holding the lock leaves a consistent map (every update is one insert
        // or remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<WxId, String>) -> T) -> Result<T, WechatIdError> {
        let mut state = self.lock();
        if state.unavailable {
            return Err(WechatIdError::OutcomeUnknown(
                "the in-memory registry is set unavailable".into(),
            ));
        }
        Ok(f(&mut state.owners))
    }
}

impl WechatIds for InMemoryWechatIds {
    fn claim<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ClaimOutcome, WechatIdError>> {
        Box::pin(async move {
            self.with(|owners| match owners.get(id) {
                Some(owner) if owner == uid => ClaimOutcome::AlreadyYours,
                Some(owner) => ClaimOutcome::HeldByOther {
                    owner: owner.clone(),
                },
                None => {
                    owners.insert(id.clone(), uid.to_owned());
                    ClaimOutcome::Claimed
                }
            })
        })
    }

    fn release<'a>(
        &'a self,
        id: &'a WxId,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, WechatIdError>> {
        Box::pin(async move {
            self.with(|owners| match owners.get(id) {
                None => ReleaseOutcome::AlreadyFree,
                Some(owner) if owner == uid => {
                    owners.remove(id);
                    ReleaseOutcome::Released
                }
                Some(owner) => ReleaseOutcome::HeldByOther {
                    owner: owner.clone(),
                },
            })
        })
    }

    fn lookup<'a>(&'a self, id: &'a WxId) -> BoxFuture<'a, Result<Option<String>, WechatIdError>> {
        Box::pin(async move { self.with(|owners| owners.get(id).cloned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WxId {
        WxId::parse(s).expect("valid id")
    }

    #[tokio::test]
    async fn in_memory_claims_are_exclusive_and_idempotent() {
        let ids = InMemoryWechatIds::new();
        let a = id("Zhang_San1");
        assert_eq!(
            ids.claim(&a, "sh-1").await.ok(),
            Some(ClaimOutcome::Claimed)
        );
        assert_eq!(
            ids.claim(&id("zhang_san1"), "sh-1").await.ok(),
            Some(ClaimOutcome::AlreadyYours)
        );
        assert_eq!(
            ids.claim(&a, "sh-2").await.ok(),
            Some(ClaimOutcome::HeldByOther {
                owner: "sh-1".into()
            })
        );
        assert_eq!(
            ids.release(&a, "sh-2").await.ok(),
            Some(ReleaseOutcome::HeldByOther {
                owner: "sh-1".into()
            })
        );
        assert_eq!(ids.lookup(&a).await.ok(), Some(Some("sh-1".into())));
        assert_eq!(
            ids.release(&a, "sh-1").await.ok(),
            Some(ReleaseOutcome::Released)
        );
        assert_eq!(
            ids.release(&a, "sh-1").await.ok(),
            Some(ReleaseOutcome::AlreadyFree)
        );
        assert_eq!(ids.lookup(&a).await.ok(), Some(None));
        ids.set_unavailable(true);
        assert!(matches!(
            ids.claim(&a, "sh-1").await,
            Err(WechatIdError::OutcomeUnknown(_))
        ));
    }
}

/// The registry's network client behind the gateway's trait.
mod registry_client {
    use homeport_registry::client::{Claimed, ClientError, RegistryClient, Released};
    use homeport_registry::registry::WxidStatus;

    use super::*;

    fn error(e: ClientError) -> WechatIdError {
        match e {
            ClientError::BadName { message } => WechatIdError::Rejected(message),
            e @ (ClientError::Unavailable { .. }
            | ClientError::Contended { .. }
            | ClientError::Unreachable { .. }) => WechatIdError::OutcomeUnknown(e.to_string()),
            e => WechatIdError::Failed(e.to_string()),
        }
    }

    impl WechatIds for RegistryClient {
        fn claim<'a>(
            &'a self,
            id: &'a WxId,
            uid: &'a str,
        ) -> BoxFuture<'a, Result<ClaimOutcome, WechatIdError>> {
            Box::pin(async move {
                match RegistryClient::claim(self, id.as_str(), uid).await {
                    Ok(Claimed::Claimed { .. }) => Ok(ClaimOutcome::Claimed),
                    Ok(Claimed::AlreadyHeld) => Ok(ClaimOutcome::AlreadyYours),
                    Err(ClientError::Taken { owner, .. }) => {
                        Ok(ClaimOutcome::HeldByOther { owner })
                    }
                    Err(e) => Err(error(e)),
                }
            })
        }

        fn release<'a>(
            &'a self,
            id: &'a WxId,
            uid: &'a str,
        ) -> BoxFuture<'a, Result<ReleaseOutcome, WechatIdError>> {
            Box::pin(async move {
                match RegistryClient::release(self, id.as_str(), uid).await {
                    Ok(Released::Released) => Ok(ReleaseOutcome::Released),
                    Ok(Released::AlreadyFree) => Ok(ReleaseOutcome::AlreadyFree),
                    Err(ClientError::NotOwner { owner, .. }) => {
                        Ok(ReleaseOutcome::HeldByOther { owner })
                    }
                    Err(e) => Err(error(e)),
                }
            })
        }

        fn lookup<'a>(
            &'a self,
            id: &'a WxId,
        ) -> BoxFuture<'a, Result<Option<String>, WechatIdError>> {
            Box::pin(async move {
                match RegistryClient::lookup(self, id.as_str()).await {
                    Ok(WxidStatus::Free) => Ok(None),
                    Ok(WxidStatus::Held { uid } | WxidStatus::Claiming { uid }) => Ok(Some(uid)),
                    Err(e) => Err(error(e)),
                }
            })
        }
    }
}
