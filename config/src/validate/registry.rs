//! Checks of the registry's part of the file (`[registry]`, `[regions.registry]`), in the same
//! style as the rest: every problem with its place and fix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{AddrUse, Checker, RawRegion, to_u64};
use crate::registry::{RegionRegistry, RegistrySettings, registry_identity};

/// Most registry nodes (acceptors) a deployment may have: one per region, and a proposer
/// addresses at most this many.
const MAX_REGISTRY_NODES: usize = 15;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRegistry {
    round_timeout_ms: u64,
    max_attempts: u64,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    max_steps_per_operation: u64,
    max_pending_ops: u64,
    sweep_interval_ms: u64,
    operation_timeout_ms: u64,
    connect_timeout_ms: u64,
}

impl Default for RawRegistry {
    fn default() -> Self {
        let d = RegistrySettings::default();
        RawRegistry {
            round_timeout_ms: d.round_timeout_ms,
            max_attempts: u64::from(d.max_attempts),
            backoff_base_ms: d.backoff_base_ms,
            backoff_max_ms: d.backoff_max_ms,
            max_steps_per_operation: u64::from(d.max_steps_per_operation),
            max_pending_ops: to_u64(d.max_pending_ops),
            sweep_interval_ms: d.sweep_interval_ms,
            operation_timeout_ms: d.operation_timeout_ms,
            connect_timeout_ms: d.connect_timeout_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegionRegistry {
    addr: String,
    admin_addr: String,
    data_dir: Option<PathBuf>,
}

impl Checker {
    pub(super) fn check_registry(&mut self, raw: &RawRegistry) -> Option<RegistrySettings> {
        let d = RegistrySettings::default();
        let before = self.problems.len();
        let mut range = |field: &str, value: u64, default: u64, min: u64, max: u64, why: &str| {
            self.check_range(&format!("registry.{field}"), value, default, min, max, why);
        };
        range(
            "round_timeout_ms",
            raw.round_timeout_ms,
            d.round_timeout_ms,
            1,
            60_000,
            "a round that waits a minute for acceptors holds its key that long",
        );
        range(
            "max_attempts",
            raw.max_attempts,
            u64::from(d.max_attempts),
            1,
            100,
            "past a hundred rounds the key is contended beyond what retrying fixes",
        );
        range(
            "backoff_base_ms",
            raw.backoff_base_ms,
            d.backoff_base_ms,
            1,
            60_000,
            "set it to about one round trip between regions",
        );
        range(
            "backoff_max_ms",
            raw.backoff_max_ms,
            d.backoff_max_ms,
            1,
            600_000,
            "a caller waiting ten minutes has long given up",
        );
        range(
            "max_steps_per_operation",
            raw.max_steps_per_operation,
            u64::from(d.max_steps_per_operation),
            5,
            1_000,
            "a claim takes 5 proposals without contention",
        );
        range(
            "max_pending_ops",
            raw.max_pending_ops,
            to_u64(d.max_pending_ops),
            1,
            1_000_000,
            "every pending operation holds memory on the node",
        );
        range(
            "sweep_interval_ms",
            raw.sweep_interval_ms,
            d.sweep_interval_ms,
            100,
            86_400_000,
            "an ID change left half-done stays half-done until the next sweep",
        );
        range(
            "operation_timeout_ms",
            raw.operation_timeout_ms,
            d.operation_timeout_ms,
            1,
            600_000,
            "a caller waiting ten minutes has long given up",
        );
        range(
            "connect_timeout_ms",
            raw.connect_timeout_ms,
            d.connect_timeout_ms,
            1,
            60_000,
            "a node that takes a minute to connect is treated as down",
        );
        if raw.backoff_max_ms < raw.backoff_base_ms {
            self.report(
                "registry.backoff_max_ms",
                format!(
                    "is {}, below backoff_base_ms = {} — raise backoff_max_ms to at least \
                     backoff_base_ms",
                    raw.backoff_max_ms, raw.backoff_base_ms
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(RegistrySettings {
            round_timeout_ms: raw.round_timeout_ms,
            max_attempts: u32::try_from(raw.max_attempts).ok()?,
            backoff_base_ms: raw.backoff_base_ms,
            backoff_max_ms: raw.backoff_max_ms,
            max_steps_per_operation: u32::try_from(raw.max_steps_per_operation).ok()?,
            max_pending_ops: usize::try_from(raw.max_pending_ops).ok()?,
            sweep_interval_ms: raw.sweep_interval_ms,
            operation_timeout_ms: raw.operation_timeout_ms,
            connect_timeout_ms: raw.connect_timeout_ms,
        })
    }

    /// All regions run a registry node or none does: the acceptors are one per region, and a
    /// registry missing some of them would need a majority of fewer regions than the operator
    /// thinks.
    pub(super) fn check_registry_coverage(&mut self, regions: &[RawRegion]) {
        let with: Vec<&str> = regions
            .iter()
            .filter(|r| r.registry.is_some())
            .map(|r| r.name.as_str())
            .collect();
        if with.is_empty() {
            return;
        }
        let without: Vec<&str> = regions
            .iter()
            .filter(|r| r.registry.is_none())
            .map(|r| r.name.as_str())
            .collect();
        if !without.is_empty() {
            self.report(
                "regions",
                format!(
                    "regions {} have a [regions.registry] but {} do not; the registry runs one \
                     node per region (each an acceptor) — add [regions.registry] to {}, or \
                     remove it everywhere",
                    with.join(", "),
                    without.join(", "),
                    without.join(", ")
                ),
            );
        }
        if with.len() > MAX_REGISTRY_NODES {
            self.report(
                "regions",
                format!(
                    "{} regions run a registry node; at most {MAX_REGISTRY_NODES} are supported \
                     — remove [regions.registry] from some regions",
                    with.len()
                ),
            );
        }
    }

    /// `Ok(None)` for a region without a registry node; `Err(())` once a problem is reported.
    pub(super) fn check_region_registry(
        &mut self,
        region_place: &str,
        region: &RawRegion,
        data_root: &Path,
        base_dir: &Path,
        addrs: &mut HashMap<SocketAddr, AddrUse>,
    ) -> Result<Option<RegionRegistry>, ()> {
        let Some(raw) = &region.registry else {
            return Ok(None);
        };
        let before = self.problems.len();
        let place = format!("{region_place}, registry");
        let owner = "registry node";
        let addr = self.check_addr(&place, owner, "addr", &raw.addr, addrs);
        let admin_addr = self.check_addr(&place, owner, "admin_addr", &raw.admin_addr, addrs);
        let data_dir = match &raw.data_dir {
            Some(dir) => self.resolve_path(
                &format!("{place}, data_dir"),
                dir,
                base_dir,
                "set it to the registry node's own directory, or leave it out to use \
                 <data_root>/registry-<region>",
            ),
            None => data_root.join(registry_identity(&region.name)),
        };
        if self.problems.len() > before {
            return Err(());
        }
        match (addr, admin_addr) {
            (Some(addr), Some(admin_addr)) => Ok(Some(RegionRegistry {
                addr,
                admin_addr,
                data_dir,
            })),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{ConfigError, parse};

    fn deployment(registries: &[bool], registry_table: &str) -> String {
        let mut toml = format!(
            "[deployment]\nname = \"t\"\ndata_root = \"data\"\n[tls]\nca_cert = \"ca.pem\"\ncert_dir = \"certs\"\n{registry_table}\n"
        );
        for (i, (name, with)) in ["sh", "hk", "ca"].iter().zip(registries).enumerate() {
            let ip = format!("127.0.{}.1", i + 1);
            toml.push_str(&format!("[[regions]]\nname = \"{name}\"\n"));
            if *with {
                toml.push_str(&format!(
                    "[regions.registry]\naddr = \"{ip}:7300\"\nadmin_addr = \"{ip}:9300\"\n"
                ));
            }
            toml.push_str("[[regions.queue_groups]]\nname = \"g1\"\nnodes = [\n");
            for (p, campus) in ["a", "b", "c"].iter().enumerate() {
                toml.push_str(&format!(
                    "  {{ id = \"{name}-g1-{campus}\", addr = \"{ip}:710{p}\", admin_addr = \"{ip}:910{p}\", campus = \"{campus}\" }},\n"
                ));
            }
            toml.push_str("]\n");
        }
        toml
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, Path::new("/base")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn every_region_or_none_runs_a_registry_node() {
        assert!(problems(&deployment(&[false, false, false], "")).is_empty());
        let d = parse(&deployment(&[true, true, true], ""), Path::new("/base")).unwrap();
        let sh = d.regions[0].registry.as_ref().unwrap();
        assert_eq!(sh.addr.to_string(), "127.0.1.1:7300");
        assert_eq!(sh.data_dir, Path::new("/base/data/registry-sh"));
        assert!(d.identities().contains(&"registry-ca".to_string()));
        assert_eq!(d.registry, crate::RegistrySettings::default());

        let p = problems(&deployment(&[true, false, true], ""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("hk") && p[0].contains("add [regions.registry]"),
            "{p:?}"
        );
    }

    #[test]
    fn registry_settings_are_checked() {
        let p = problems(&deployment(
            &[true, true, true],
            "[registry]\nround_timeout_ms = 0\nbackoff_base_ms = 500\nbackoff_max_ms = 100",
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("registry.round_timeout_ms"), "{p:?}");
        assert!(p[1].contains("registry.backoff_max_ms"), "{p:?}");
    }
}
