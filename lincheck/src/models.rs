//! Sequential specifications of the objects homeport checks. Each describes ONE key; [`check`]
//! splits a history by key.
//!
//! [`check`]: crate::check

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use crate::SequentialSpec;

/// The registry's view of one key (`wxid/<id>`, `home/<uid>`): owned by at most one uid.
///
/// - `claim(uid)`: free → now owned by `uid`, `Claimed`; already owned by `uid` → `Claimed`
///   (claims are idempotent for the same owner); owned by another → `Owned(that uid)`.
/// - `release(uid)`: owned by `uid` → free, `Released`; owned by another → `NotOwner`;
///   free → `NotHeld`.
/// - `lookup`: `Found(owner)`.
pub struct Registry<U>(PhantomData<fn() -> U>);

impl<U> Registry<U> {
    pub fn new() -> Self {
        Registry(PhantomData)
    }
}

impl<U> Default for Registry<U> {
    fn default() -> Self {
        Self::new()
    }
}

impl<U> Debug for Registry<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryOp<U> {
    Claim(U),
    Release(U),
    Lookup,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegistryRet<U> {
    /// The claimer owns the key (newly, or already did).
    Claimed,
    /// Another uid owns the key.
    Owned(U),
    Released,
    /// A release by someone other than the owner.
    NotOwner,
    /// A release of a key nobody owns.
    NotHeld,
    /// A lookup's answer: the owner, if any.
    Found(Option<U>),
}

impl<U: Clone + Eq + Hash + Debug> SequentialSpec for Registry<U> {
    type State = Option<U>;
    type Op = RegistryOp<U>;
    type Ret = RegistryRet<U>;

    fn init(&self) -> Option<U> {
        None
    }

    fn step(&self, owner: &Option<U>, op: &RegistryOp<U>) -> (Option<U>, RegistryRet<U>) {
        match (op, owner) {
            (RegistryOp::Claim(uid), None) => (Some(uid.clone()), RegistryRet::Claimed),
            (RegistryOp::Claim(uid), Some(o)) if o == uid => (owner.clone(), RegistryRet::Claimed),
            (RegistryOp::Claim(_), Some(o)) => (owner.clone(), RegistryRet::Owned(o.clone())),
            (RegistryOp::Release(uid), Some(o)) if o == uid => (None, RegistryRet::Released),
            (RegistryOp::Release(_), Some(_)) => (owner.clone(), RegistryRet::NotOwner),
            (RegistryOp::Release(_), None) => (None, RegistryRet::NotHeld),
            (RegistryOp::Lookup, _) => (owner.clone(), RegistryRet::Found(owner.clone())),
        }
    }

    fn is_read_only(&self, op: &RegistryOp<U>) -> bool {
        matches!(op, RegistryOp::Lookup)
    }
}

/// A register with compare-and-set, initially absent: what CASPaxos offers per key, and what
/// etcd's transactions offer (`cas(None, v)` is put-if-absent).
pub struct CasRegister<V>(PhantomData<fn() -> V>);

impl<V> CasRegister<V> {
    pub fn new() -> Self {
        CasRegister(PhantomData)
    }
}

impl<V> Default for CasRegister<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Debug for CasRegister<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CasRegister")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CasOp<V> {
    Read,
    Write(V),
    /// Sets `new` if the value is `expected` (`None`: absent).
    Cas {
        expected: Option<V>,
        new: V,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CasRet<V> {
    Read(Option<V>),
    Written,
    /// Whether the compare-and-set took effect.
    Cas(bool),
}

impl<V: Clone + Eq + Hash + Debug> SequentialSpec for CasRegister<V> {
    type State = Option<V>;
    type Op = CasOp<V>;
    type Ret = CasRet<V>;

    fn init(&self) -> Option<V> {
        None
    }

    fn step(&self, value: &Option<V>, op: &CasOp<V>) -> (Option<V>, CasRet<V>) {
        match op {
            CasOp::Read => (value.clone(), CasRet::Read(value.clone())),
            CasOp::Write(v) => (Some(v.clone()), CasRet::Written),
            CasOp::Cas { expected, new } if expected == value => {
                (Some(new.clone()), CasRet::Cas(true))
            }
            CasOp::Cas { .. } => (value.clone(), CasRet::Cas(false)),
        }
    }

    fn is_read_only(&self, op: &CasOp<V>) -> bool {
        matches!(op, CasOp::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_rules() {
        let r = Registry::<&str>::new();
        let (s, ret) = r.step(&None, &RegistryOp::Claim("a"));
        assert_eq!((s, ret), (Some("a"), RegistryRet::Claimed));
        assert_eq!(
            r.step(&Some("a"), &RegistryOp::Claim("a")),
            (Some("a"), RegistryRet::Claimed)
        );
        assert_eq!(
            r.step(&Some("a"), &RegistryOp::Claim("b")),
            (Some("a"), RegistryRet::Owned("a"))
        );
        assert_eq!(
            r.step(&Some("a"), &RegistryOp::Release("b")),
            (Some("a"), RegistryRet::NotOwner)
        );
        assert_eq!(
            r.step(&Some("a"), &RegistryOp::Release("a")),
            (None, RegistryRet::Released)
        );
        assert_eq!(
            r.step(&None, &RegistryOp::Release("a")),
            (None, RegistryRet::NotHeld)
        );
        assert_eq!(
            r.step(&Some("a"), &RegistryOp::Lookup),
            (Some("a"), RegistryRet::Found(Some("a")))
        );
    }

    #[test]
    fn cas_register_rules() {
        let r = CasRegister::<u8>::new();
        let put_if_absent = CasOp::Cas {
            expected: None,
            new: 1,
        };
        assert_eq!(r.step(&None, &put_if_absent), (Some(1), CasRet::Cas(true)));
        assert_eq!(
            r.step(&Some(2), &put_if_absent),
            (Some(2), CasRet::Cas(false))
        );
        assert_eq!(
            r.step(&Some(2), &CasOp::Write(3)),
            (Some(3), CasRet::Written)
        );
        assert_eq!(
            r.step(&Some(3), &CasOp::Read),
            (Some(3), CasRet::Read(Some(3)))
        );
    }
}
