//! Where a user lives. The gateway asks a [`HomeResolver`]: today the deployment's rule
//! (`[homes] rule = "uid-prefix"`), later the registry's home directory (a network lookup, hence
//! the async trait), in front of which [`CachedHomes`] keeps a bounded cache.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::Padded;

/// A boxed future, so the trait stays object-safe (`Arc<dyn HomeResolver>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a home could not be looked up (not "the user has no home", which is `Ok(None)`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("home directory unavailable: {0}")]
pub struct HomeError(pub String);

/// The user's home region, and where new users are placed.
pub trait HomeResolver: Send + Sync {
    /// `Ok(None)`: the user has no home (unknown user).
    fn home_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<String>, HomeError>>;

    /// Makes a new user homed in `region` and returns its uid.
    fn create_user<'a>(&'a self, region: &'a str) -> BoxFuture<'a, Result<String, HomeError>>;
}

/// `uid-prefix`: uid `<region>-<rest>` is homed in `<region>`.
pub struct PrefixRule {
    regions: Vec<String>,
}

impl PrefixRule {
    pub fn new(regions: Vec<String>) -> Self {
        PrefixRule { regions }
    }

    fn home(&self, uid: &str) -> Option<String> {
        let (prefix, rest) = uid.split_once('-')?;
        if rest.is_empty() {
            return None;
        }
        self.regions.iter().find(|r| r.as_str() == prefix).cloned()
    }
}

impl HomeResolver for PrefixRule {
    fn home_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<String>, HomeError>> {
        Box::pin(async move { Ok(self.home(uid)) })
    }

    fn create_user<'a>(&'a self, region: &'a str) -> BoxFuture<'a, Result<String, HomeError>> {
        Box::pin(async move {
            if !self.regions.iter().any(|r| r == region) {
                return Err(HomeError(format!("{region} is not a region")));
            }
            // 64 random bits: collisions are negligible at any realistic user count, and the
            // rule needs no directory to remember who exists.
            Ok(format!("{region}-{:016x}", rand::random::<u64>()))
        })
    }
}

/// Bounded cache in front of a resolver. Two generations of at most `capacity / 2` entries:
/// lookups hit either, a hit in the old one is promoted, and when the young one is full the old
/// one is dropped whole. O(1), no per-entry bookkeeping, and never more than `capacity` users.
pub struct CachedHomes {
    inner: Arc<dyn HomeResolver>,
    generation_entries: usize,
    /// One per HTTP worker thread (see `crate::cache_shard`).
    shards: Box<[Padded<Generations>]>,
    /// Registered once: a metrics registry lookup per request showed in profiles.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

#[derive(Default)]
struct Generations {
    // foldhash: keys are uids of checked tickets (no collision flooding), looked up per request.
    young: HashMap<String, String, foldhash::fast::RandomState>,
    old: HashMap<String, String, foldhash::fast::RandomState>,
}

impl CachedHomes {
    pub fn new(inner: Arc<dyn HomeResolver>, capacity: usize) -> Self {
        let shards = crate::cache_shards();
        CachedHomes {
            inner,
            generation_entries: (capacity / shards / 2).max(1),
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Generations::default())))
                .collect(),
            hits: metrics::counter!("homeport_gateway_home_cache_hits_total"),
            misses: metrics::counter!("homeport_gateway_home_cache_misses_total"),
        }
    }

    /// This thread's shard.
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.shards[crate::cache_shard(self.shards.len())].lock()
    }

    fn insert(&self, g: &mut Generations, uid: &str, home: String) {
        if g.young.len() >= self.generation_entries {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(uid.to_string(), home);
    }

    /// A cache hit: `f` of the home (an old-generation hit is promoted).
    fn cached<R>(&self, uid: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
        let mut g = self.lock();
        if let Some(home) = g.young.get(uid) {
            self.hits.increment(1);
            return Some(f(home));
        }
        let home = g.old.remove(uid)?;
        self.hits.increment(1);
        let r = f(&home);
        self.insert(&mut g, uid, home);
        Some(r)
    }

    /// Whether the cache says `uid` lives in `region`; `None` when it does not know (no
    /// resolver call: the full path fills the cache).
    pub fn cached_home_is(&self, uid: &str, region: &str) -> Option<bool> {
        self.cached(uid, |home| home == region)
    }

    /// Users with no home are not cached: they are rare (typos, attacks) and must not push
    /// real users out.
    pub async fn home_of(&self, uid: &str) -> Result<Option<String>, HomeError> {
        if let Some(home) = self.cached(uid, str::to_owned) {
            return Ok(Some(home));
        }
        self.misses.increment(1);
        let found = self.inner.home_of(uid).await?;
        if let Some(home) = &found {
            let mut g = self.lock();
            self.insert(&mut g, uid, home.clone());
        }
        Ok(found)
    }

    /// Forgets `uid` (its home moved, as a home region's gateway told us).
    pub fn invalidate(&self, uid: &str) {
        for shard in &self.shards {
            let mut g = shard.lock();
            g.young.remove(uid);
            g.old.remove(uid);
        }
    }

    pub async fn create_user(&self, region: &str) -> Result<String, HomeError> {
        let uid = self.inner.create_user(region).await?;
        let mut g = self.lock();
        self.insert(&mut g, &uid, region.to_string());
        Ok(uid)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock();
                g.young.len() + g.old.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Counting {
        rule: PrefixRule,
        lookups: AtomicU64,
    }

    impl HomeResolver for Counting {
        fn home_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<String>, HomeError>> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            self.rule.home_of(uid)
        }
        fn create_user<'a>(&'a self, region: &'a str) -> BoxFuture<'a, Result<String, HomeError>> {
            self.rule.create_user(region)
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            rule: PrefixRule::new(vec!["sh".into(), "hk".into()]),
            lookups: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn the_rule_reads_the_prefix() {
        let r = PrefixRule::new(vec!["sh".into(), "hk".into()]);
        assert_eq!(r.home_of("sh-1").await.unwrap(), Some("sh".into()));
        assert_eq!(r.home_of("hk-a-b").await.unwrap(), Some("hk".into()));
        for uid in ["ca-1", "sh-", "sh", "", "-1"] {
            assert_eq!(r.home_of(uid).await.unwrap(), None, "{uid:?}");
        }
        let uid = r.create_user("hk").await.unwrap();
        assert_eq!(r.home_of(&uid).await.unwrap(), Some("hk".into()));
        assert!(r.create_user("ca").await.is_err());
    }

    #[tokio::test]
    async fn the_cache_answers_repeats_and_stays_bounded() {
        let inner = counting();
        let cache = CachedHomes::new(inner.clone(), 10);
        for _ in 0..3 {
            assert_eq!(cache.home_of("sh-1").await.unwrap(), Some("sh".into()));
        }
        assert_eq!(inner.lookups.load(Ordering::Relaxed), 1);
        for i in 0..1_000 {
            cache.home_of(&format!("hk-{i}")).await.unwrap();
            assert!(cache.len() <= 10, "cache grew to {}", cache.len());
        }
        // Unknown users are looked up every time, never cached.
        cache.home_of("zz-1").await.unwrap();
        cache.home_of("zz-1").await.unwrap();
        assert_eq!(inner.lookups.load(Ordering::Relaxed), 1 + 1_000 + 2);
        cache.home_of("hk-999").await.unwrap();
        assert_eq!(
            inner.lookups.load(Ordering::Relaxed),
            1_003,
            "recent: a hit"
        );
        cache.invalidate("hk-999");
        cache.home_of("hk-999").await.unwrap();
        assert_eq!(inner.lookups.load(Ordering::Relaxed), 1_004);
    }
}
