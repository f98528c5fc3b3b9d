//! Who a process is, as written in its certificate.
//!
//! The identity is the certificate's single DNS SAN `<name>.<role>.<region>.homeport`. A DNS name
//! (rather than a custom extension or the subject CN) is what TLS clients already check against
//! the name they expect, so a client verifying "the queue node sh-g1-a" needs nothing beyond
//! standard WebPKI name checking, and the server can read the client's identity from the same
//! field.

use std::fmt;
use std::str::FromStr;

use crate::WireError;

/// Last label of every identity DNS name; keeps homeport names out of any real DNS namespace.
pub const IDENTITY_DNS_SUFFIX: &str = "homeport";

/// Longest DNS label (RFC 1035); longer names would be rejected by certificate validation anyway.
const MAX_LABEL_BYTES: usize = 63;

/// What a process does. Peers decide what a connection may do from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    QueueNode,
    Region,
    Registry,
    Gateway,
    Operator,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::QueueNode,
        Role::Region,
        Role::Registry,
        Role::Gateway,
        Role::Operator,
    ];

    /// The DNS label used in certificates; these strings are part of the protocol, never rename.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::QueueNode => "queue-node",
            Role::Region => "region",
            Role::Registry => "registry",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| WireError::BadIdentity {
                value: s.to_string(),
                reason: format!(
                    "unknown role; expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                ),
            })
    }
}

/// A process's identity: unique name, role and the region it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub region: String,
}

impl Identity {
    /// Builds an identity, checking that `name` and `region` can be DNS labels (so that it fits
    /// in a certificate and parses back to the same value).
    pub fn new(
        name: impl Into<String>,
        role: Role,
        region: impl Into<String>,
    ) -> Result<Self, WireError> {
        let id = Identity {
            name: name.into(),
            role,
            region: region.into(),
        };
        id.validate()?;
        Ok(id)
    }

    /// `<name>.<role>.<region>.homeport`, the certificate's DNS SAN.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.{}.{IDENTITY_DNS_SUFFIX}",
            self.name,
            self.role.as_str(),
            self.region
        )
    }

    /// Inverse of [`Identity::dns_name`]; rejects anything that `dns_name` could not produce.
    pub fn parse_dns_name(dns: &str) -> Result<Identity, WireError> {
        let bad = |reason: String| WireError::BadIdentity {
            value: dns.to_string(),
            reason,
        };
        let labels: Vec<&str> = dns.split('.').collect();
        let [name, role, region, suffix] = labels.as_slice() else {
            return Err(bad(format!(
                "expected 4 labels `<name>.<role>.<region>.{IDENTITY_DNS_SUFFIX}`, found {}",
                labels.len()
            )));
        };
        if *suffix != IDENTITY_DNS_SUFFIX {
            return Err(bad(format!(
                "last label must be `{IDENTITY_DNS_SUFFIX}`, found `{suffix}`"
            )));
        }
        let role = Role::from_str(role).map_err(|e| match e {
            WireError::BadIdentity { reason, .. } => bad(reason),
            other => other,
        })?;
        let id = Identity {
            name: name.to_string(),
            role,
            region: region.to_string(),
        };
        id.validate().map_err(|e| match e {
            WireError::BadIdentity { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(id)
    }

    /// Ensures `name` and `region` are lowercase DNS labels, so the identity round-trips exactly
    /// through a certificate (WebPKI compares names case-insensitively; we keep one spelling).
    pub fn validate(&self) -> Result<(), WireError> {
        check_label("name", &self.name)
            .and_then(|()| check_label("region", &self.region))
            .map_err(|reason| WireError::BadIdentity {
                value: self.dns_name(),
                reason,
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dns_name())
    }
}

fn check_label(what: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(format!(
            "{what} `{label}` is {} bytes long; the limit is {MAX_LABEL_BYTES}",
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{what} `{label}` contains {c:?}; use only lowercase letters, digits and `-`"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "{what} `{label}` starts or ends with `-`, which DNS names forbid"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_round_trips_for_every_role() {
        for role in Role::ALL {
            let id = Identity::new("sh-g1-a", role, "sh").unwrap();
            let dns = id.dns_name();
            assert_eq!(Identity::parse_dns_name(&dns).unwrap(), id);
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
    }

    #[test]
    fn documented_examples_parse() {
        let id = Identity::parse_dns_name("sh-g1-a.queue-node.sh.homeport").unwrap();
        assert_eq!(
            id,
            Identity {
                name: "sh-g1-a".into(),
                role: Role::QueueNode,
                region: "sh".into()
            }
        );
        let op = Identity::parse_dns_name("operator.operator.all.homeport").unwrap();
        assert_eq!(op.role, Role::Operator);
        assert_eq!(op.region, "all");
    }

    #[test]
    fn malformed_names_are_rejected() {
        for bad in [
            "",
            "a.region.sh",
            "a.region.sh.example",
            "a.b.region.sh.homeport",
            "a.pilot.sh.homeport",
            "A.region.sh.homeport",
            "a.region.-sh.homeport",
            ".region.sh.homeport",
            "a_b.region.sh.homeport",
            "a.Region.sh.homeport",
        ] {
            assert!(
                matches!(
                    Identity::parse_dns_name(bad),
                    Err(WireError::BadIdentity { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
        let long = "x".repeat(64);
        assert!(Identity::new(long, Role::Region, "sh").is_err());
        assert!(Identity::new("x".repeat(63), Role::Region, "sh").is_ok());
    }
}
