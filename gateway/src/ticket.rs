//! Tickets: what a client shows to prove which user it acts for.
//!
//! A ticket is `hp1.<kid>.<payload>.<signature>`: `kid` names the Ed25519 key that signed it (so
//! several keys can be live during a rotation), `payload` is base64url (no padding) of the JSON
//! claims `{"uid","iat","exp"}` (Unix seconds), and `signature` is base64url of the Ed25519
//! signature over the ASCII text `hp1.<kid>.<payload>`. Everything before the last dot is signed,
//! version and key id included, so neither can be swapped.
//!
//! Pure code (no clock, no I/O besides the key-file helpers): the caller passes `now`.
//! Verification never panics on any input (see the property test); every refusal is a
//! [`TicketError`] that says what was wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::Padded;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// First part of every ticket; a new format gets a new version and old gateways refuse it clearly.
pub const TICKET_VERSION: &str = "hp1";
/// Longest ticket accepted, in bytes: a uid of 1 KiB fits with room to spare, and nothing larger
/// is decoded or hashed.
pub const MAX_TICKET_BYTES: usize = 4096;
/// Longest key id, as config names are.
const MAX_KID_BYTES: usize = 32;
const ALGORITHM: &str = "ed25519";

/// What a ticket says, once its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub uid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds (exclusive).
    pub exp: u64,
}

/// Why a ticket was refused. `status` is 401 for every ticket that proves nothing and 403 for a
/// valid ticket of another user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error(
        "no ticket: send it as `Authorization: Bearer <ticket>` (mint one with `homeport ticket issue --uid U --key FILE`)"
    )]
    Missing,
    #[error("the ticket is malformed: {0}")]
    Malformed(String),
    #[error("the ticket's {0} is not base64url without padding")]
    BadBase64(&'static str),
    #[error(
        "the ticket names key {0:?}, which this gateway does not know; the key may be retired or not yet rolled out — get a new ticket"
    )]
    UnknownKey(String),
    #[error("the ticket's signature does not verify with key {0:?}: it was forged or altered")]
    BadSignature(String),
    #[error("the ticket expired at {exp} (now {now}, Unix seconds) — get a new ticket")]
    Expired { exp: u64, now: u64 },
    #[error(
        "the ticket is not valid before {iat} (now {now}, Unix seconds) — check the issuer's clock"
    )]
    NotYetValid { iat: u64, now: u64 },
    #[error(
        "the ticket is valid for {ttl_secs} s, longer than the {max_secs} s this deployment allows — issue shorter tickets"
    )]
    TooLong { ttl_secs: u64, max_secs: u64 },
    #[error(
        "the ticket is for user {ticket_uid:?}, but the request is for user {path_uid:?}; a user may only change their own records"
    )]
    WrongUser {
        ticket_uid: String,
        path_uid: String,
    },
}

impl TicketError {
    pub fn status(&self) -> u16 {
        match self {
            TicketError::WrongUser { .. } => 403,
            _ => 401,
        }
    }

    /// Stable name for JSON bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Missing => "ticket_missing",
            TicketError::Malformed(_) => "ticket_malformed",
            TicketError::BadBase64(_) => "ticket_bad_base64",
            TicketError::UnknownKey(_) => "ticket_unknown_key",
            TicketError::BadSignature(_) => "ticket_bad_signature",
            TicketError::Expired { .. } => "ticket_expired",
            TicketError::NotYetValid { .. } => "ticket_not_yet_valid",
            TicketError::TooLong { .. } => "ticket_ttl_too_long",
            TicketError::WrongUser { .. } => "ticket_wrong_user",
        }
    }
}

/// Signs `claims` with `key`, naming it `kid`.
pub fn issue(kid: &str, key: &SigningKey, claims: &Claims) -> String {
    let json = serde_json::to_vec(claims).expect("claims are plain strings and numbers");
    let signed = format!("{TICKET_VERSION}.{kid}.{}", B64.encode(json));
    let signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", B64.encode(signature.to_bytes()))
}

/// Checks tickets against every live key.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: HashMap<String, VerifyingKey>,
    max_ttl_secs: u64,
    clock_skew_secs: u64,
}

impl Verifier {
    pub fn new(
        keys: impl IntoIterator<Item = (String, VerifyingKey)>,
        max_ttl_secs: u64,
        clock_skew_secs: u64,
    ) -> Self {
        Verifier {
            keys: keys.into_iter().collect(),
            max_ttl_secs,
            clock_skew_secs,
        }
    }

    /// The claims of `token` if it is well-formed, signed by a live key, and valid at `now`.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, TicketError> {
        let claims = self.verify_signed(token)?;
        self.check_time(&claims, now_unix_secs)?;
        Ok(claims)
    }

    /// Everything that does not depend on the time: form, key, signature, claims.
    fn verify_signed(&self, token: &str) -> Result<Claims, TicketError> {
        let malformed = |m: &str| TicketError::Malformed(m.to_string());
        if token.is_empty() {
            return Err(TicketError::Missing);
        }
        if token.len() > MAX_TICKET_BYTES {
            return Err(TicketError::Malformed(format!(
                "it is {} bytes, more than the {MAX_TICKET_BYTES} a ticket may have",
                token.len()
            )));
        }
        let Some((signed, signature_b64)) = token.rsplit_once('.') else {
            return Err(malformed(
                "expected hp1.<kid>.<payload>.<signature>, found no '.'",
            ));
        };
        let mut parts = signed.split('.');
        let (Some(version), Some(kid), Some(payload_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "expected 4 parts hp1.<kid>.<payload>.<signature> separated by '.'",
            ));
        };
        if version != TICKET_VERSION {
            return Err(TicketError::Malformed(format!(
                "version {:?} is not {TICKET_VERSION:?}",
                truncate(version)
            )));
        }
        if kid.is_empty()
            || kid.len() > MAX_KID_BYTES
            || !kid
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(malformed(
                "the key id must be 1 to 32 lowercase letters, digits or '-'",
            ));
        }
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| TicketError::UnknownKey(kid.to_string()))?;
        let signature_bytes = B64
            .decode(signature_b64)
            .map_err(|_| TicketError::BadBase64("signature"))?;
        let signature_bytes: [u8; 64] = signature_bytes
            .as_slice()
            .try_into()
            .map_err(|_| malformed("the signature is not 64 bytes"))?;
        let payload = B64
            .decode(payload_b64)
            .map_err(|_| TicketError::BadBase64("payload"))?;
        // Strict: refuses the malleable and small-order encodings plain `verify` lets through.
        key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature_bytes))
            .map_err(|_| TicketError::BadSignature(kid.to_string()))?;
        // Only signed bytes are parsed from here on.
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| TicketError::Malformed(format!("the claims are not valid: {e}")))?;
        if claims.uid.is_empty() {
            return Err(malformed("the uid is empty"));
        }
        if claims.exp <= claims.iat {
            return Err(malformed("it expires before it was issued"));
        }
        let ttl_secs = claims.exp - claims.iat;
        if ttl_secs > self.max_ttl_secs {
            return Err(TicketError::TooLong {
                ttl_secs,
                max_secs: self.max_ttl_secs,
            });
        }
        Ok(claims)
    }

    fn check_time(&self, claims: &Claims, now_unix_secs: u64) -> Result<(), TicketError> {
        if claims.iat > now_unix_secs.saturating_add(self.clock_skew_secs) {
            return Err(TicketError::NotYetValid {
                iat: claims.iat,
                now: now_unix_secs,
            });
        }
        if now_unix_secs >= claims.exp.saturating_add(self.clock_skew_secs) {
            return Err(TicketError::Expired {
                exp: claims.exp,
                now: now_unix_secs,
            });
        }
        Ok(())
    }
}

/// A [`Verifier`] that remembers tickets whose signature checked out. A client sends the same
/// ticket with every request, and an Ed25519 verification (~50 µs) was most of a proxied
/// request's CPU (measured: 45% of the gateway's samples at 10k requests/s). Keyed by the whole
/// ticket text, so a hit is exactly the bytes that were verified; the time checks run on every
/// use, so a cached ticket still expires. Two generations of at most `entries / 2` tickets each,
/// as in the home cache: bounded, O(1), no per-entry bookkeeping. Refused tickets are never
/// cached (a flood of garbage cannot push good tickets out).
///
/// One cache per HTTP worker thread (see `crate::cache_shard`), each of `entries / shards`: a
/// hit takes one lock that no other thread touches.
pub struct CachingVerifier {
    verifier: Verifier,
    generation_entries: usize,
    shards: Box<[Padded<Generations>]>,
}

/// The young and the old generation of one shard.
/// Keyed by the ticket text, hashed with foldhash: SipHash over a ~200-byte ticket showed in
/// profiles of every request. Flooding collisions is not a concern: only tickets whose
/// signature checked out are ever inserted.
type Generations = [HashMap<Box<str>, Arc<Verified>, foldhash::fast::RandomState>; 2];

/// A ticket whose signature checked out, as the cache keeps it: shared, so a hit copies
/// nothing.
#[derive(Debug)]
pub struct Verified {
    pub claims: Claims,
    /// The uid as a header value (for upstreams), made once per ticket rather than per request.
    pub uid_header: Option<http::HeaderValue>,
}

impl std::ops::Deref for Verified {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.claims
    }
}

impl CachingVerifier {
    pub fn new(verifier: Verifier, entries: usize) -> Self {
        let shards = crate::cache_shards();
        CachingVerifier {
            verifier,
            generation_entries: (entries / shards / 2).max(1),
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Default::default())))
                .collect(),
        }
    }

    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, TicketError> {
        self.verify_shared(token, now_unix_secs)
            .map(|v| v.claims.clone())
    }

    /// [`CachingVerifier::verify`] without copying the claims out of the cache.
    pub fn verify_shared(
        &self,
        token: &str,
        now_unix_secs: u64,
    ) -> Result<Arc<Verified>, TicketError> {
        let shard = &self.shards[crate::cache_shard(self.shards.len())];
        let cached = {
            let mut g = shard.lock();
            match g[0].get(token) {
                Some(c) => Some(c.clone()),
                None => g[1].remove(token).inspect(|c| {
                    Self::insert(&mut g, self.generation_entries, token, c.clone());
                }),
            }
        };
        let claims = match cached {
            Some(c) => c,
            None => {
                let claims = self.verifier.verify_signed(token)?;
                let c = Arc::new(Verified {
                    uid_header: http::HeaderValue::from_str(&claims.uid).ok(),
                    claims,
                });
                let mut g = shard.lock();
                Self::insert(&mut g, self.generation_entries, token, c.clone());
                c
            }
        };
        self.verifier.check_time(&claims, now_unix_secs)?;
        Ok(claims)
    }

    fn insert(g: &mut Generations, cap: usize, token: &str, claims: Arc<Verified>) {
        if g[0].len() >= cap {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].insert(token.into(), claims);
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(16) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source} — check that the file exists and is readable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} already exists; refusing to overwrite a key — choose another --kid or --out")]
    Exists { path: PathBuf },
}

/// `<kid>.key`: the signing key (keep it on the issuer only; mode 0600).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    kid: String,
    algorithm: String,
    secret_key: String,
}

/// `<kid>.pub`: the verification key every gateway needs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyFile {
    kid: String,
    algorithm: String,
    public_key: String,
}

/// Writes a new key pair `<dir>/<kid>.key` and `<dir>/<kid>.pub`; never overwrites.
pub fn generate_key_files(dir: &Path, kid: &str) -> Result<(PathBuf, PathBuf), KeyFileError> {
    let secret_path = dir.join(format!("{kid}.key"));
    let public_path = dir.join(format!("{kid}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyFileError::Exists { path: p.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    let secret = SecretKeyFile {
        kid: kid.to_string(),
        algorithm: ALGORITHM.to_string(),
        secret_key: B64.encode(key.to_bytes()),
    };
    let public = public_key_json(kid, &key.verifying_key());
    write_new(&secret_path, &to_json(&secret), true)?;
    write_new(&public_path, &public, false)?;
    Ok((secret_path, public_path))
}

/// The text of a `.pub` file for `key`.
pub fn public_key_json(kid: &str, key: &VerifyingKey) -> String {
    to_json(&PublicKeyFile {
        kid: kid.to_string(),
        algorithm: ALGORITHM.to_string(),
        public_key: B64.encode(key.to_bytes()),
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("plain strings serialize");
    text.push('\n');
    text
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), KeyFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut f = options.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a {what} file of `homeport ticket keygen`: {e}"),
    })
}

fn key_bytes(path: &Path, algorithm: &str, b64: &str) -> Result<[u8; 32], KeyFileError> {
    let invalid = |message: String| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if algorithm != ALGORITHM {
        return Err(invalid(format!(
            "algorithm {algorithm:?} is not {ALGORITHM:?}"
        )));
    }
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| invalid("the key is not base64url without padding".to_string()))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| invalid(format!("the key is {} bytes, not 32", bytes.len())))
}

/// Reads a `.key` file: its key id and signing key.
pub fn load_signing_key(path: &Path) -> Result<(String, SigningKey), KeyFileError> {
    let file: SecretKeyFile = read_json(path, "signing key")?;
    let bytes = key_bytes(path, &file.algorithm, &file.secret_key)?;
    Ok((file.kid, SigningKey::from_bytes(&bytes)))
}

/// Reads a `.pub` file: its key id and verification key.
pub fn load_public_key(path: &Path) -> Result<(String, VerifyingKey), KeyFileError> {
    let file: PublicKeyFile = read_json(path, "public key")?;
    let bytes = key_bytes(path, &file.algorithm, &file.public_key)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| KeyFileError::Invalid {
        path: path.to_path_buf(),
        message: format!("not an Ed25519 public key: {e}"),
    })?;
    Ok((file.kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn verifier() -> Verifier {
        Verifier::new(
            [
                ("k1".to_string(), key(1).verifying_key()),
                ("k2".to_string(), key(2).verifying_key()),
            ],
            3_600,
            60,
        )
    }

    fn claims(uid: &str, iat: u64, exp: u64) -> Claims {
        Claims {
            uid: uid.into(),
            iat,
            exp,
        }
    }

    #[test]
    fn a_ticket_of_either_live_key_verifies() {
        let c = claims("sh-1", NOW - 10, NOW + 600);
        for (kid, seed) in [("k1", 1), ("k2", 2)] {
            let t = issue(kid, &key(seed), &c);
            assert_eq!(verifier().verify(&t, NOW), Ok(c.clone()));
        }
    }

    #[test]
    fn every_failure_has_its_own_error() {
        let v = verifier();
        let good = issue("k1", &key(1), &claims("sh-1", NOW, NOW + 600));
        assert_eq!(v.verify("", NOW), Err(TicketError::Missing));
        assert!(matches!(
            v.verify("garbage", NOW),
            Err(TicketError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&good.replacen("hp1", "hp2", 1), NOW),
            Err(TicketError::Malformed(_))
        ));
        let unknown = issue("k9", &key(1), &claims("sh-1", NOW, NOW + 600));
        assert_eq!(
            v.verify(&unknown, NOW),
            Err(TicketError::UnknownKey("k9".into()))
        );
        // Signed by k2's secret but naming k1: forged.
        let forged = issue("k1", &key(2), &claims("sh-1", NOW, NOW + 600));
        assert_eq!(
            v.verify(&forged, NOW),
            Err(TicketError::BadSignature("k1".into()))
        );
        // Payload swapped for another user's: the signature no longer matches.
        let other = issue("k1", &key(1), &claims("sh-2", NOW, NOW + 600));
        let parts: Vec<&str> = good.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let spliced = format!("hp1.k1.{}.{}", other_parts[2], parts[3]);
        assert_eq!(
            v.verify(&spliced, NOW),
            Err(TicketError::BadSignature("k1".into()))
        );
        assert_eq!(
            v.verify(&format!("hp1.k1.{}.!!!", parts[2]), NOW),
            Err(TicketError::BadBase64("signature"))
        );
        assert_eq!(
            v.verify(&format!("hp1.k1.@@.{}", parts[3]), NOW),
            Err(TicketError::BadBase64("payload"))
        );
        let expired = issue("k1", &key(1), &claims("sh-1", NOW - 1_000, NOW - 100));
        assert_eq!(
            v.verify(&expired, NOW),
            Err(TicketError::Expired {
                exp: NOW - 100,
                now: NOW
            })
        );
        let future = issue("k1", &key(1), &claims("sh-1", NOW + 1_000, NOW + 2_000));
        assert_eq!(
            v.verify(&future, NOW),
            Err(TicketError::NotYetValid {
                iat: NOW + 1_000,
                now: NOW
            })
        );
        let long = issue("k1", &key(1), &claims("sh-1", NOW, NOW + 7_200));
        assert_eq!(
            v.verify(&long, NOW),
            Err(TicketError::TooLong {
                ttl_secs: 7_200,
                max_secs: 3_600
            })
        );
        let backwards = issue("k1", &key(1), &claims("sh-1", NOW, NOW));
        assert!(matches!(
            v.verify(&backwards, NOW),
            Err(TicketError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&"a.".repeat(MAX_TICKET_BYTES), NOW),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn the_cache_answers_like_the_verifier_and_still_expires_tickets() {
        let v = CachingVerifier::new(verifier(), 4);
        let good = issue("k1", &key(1), &claims("sh-1", NOW, NOW + 600));
        for _ in 0..3 {
            assert_eq!(v.verify(&good, NOW), Ok(claims("sh-1", NOW, NOW + 600)));
        }
        assert!(matches!(
            v.verify(&good, NOW + 10_000),
            Err(TicketError::Expired { .. })
        ));
        let forged = issue("k1", &key(2), &claims("sh-1", NOW, NOW + 600));
        for _ in 0..2 {
            assert_eq!(
                v.verify(&forged, NOW),
                Err(TicketError::BadSignature("k1".into()))
            );
        }
        for i in 0..20 {
            let t = issue("k1", &key(1), &claims(&format!("sh-{i}"), NOW, NOW + 600));
            assert!(v.verify(&t, NOW).is_ok());
            let total: usize = v
                .shards
                .iter()
                .map(|s| {
                    let g = s.lock();
                    g[0].len() + g[1].len()
                })
                .sum();
            assert!(total <= 4, "{total} cached, more than the 4 allowed");
        }
    }

    #[test]
    fn clock_skew_is_tolerated_both_ways() {
        let v = verifier();
        let t = issue("k1", &key(1), &claims("sh-1", NOW + 30, NOW + 600));
        assert!(v.verify(&t, NOW).is_ok(), "issued 30 s ahead, 60 s skew");
        let t = issue("k1", &key(1), &claims("sh-1", NOW - 600, NOW - 30));
        assert!(v.verify(&t, NOW).is_ok(), "expired 30 s ago, 60 s skew");
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate_key_files(dir.path(), "k7").unwrap();
        let (kid, sk) = load_signing_key(&secret).unwrap();
        let (kid2, pk) = load_public_key(&public).unwrap();
        assert_eq!((kid.as_str(), kid2.as_str()), ("k7", "k7"));
        assert_eq!(sk.verifying_key(), pk);
        assert!(matches!(
            generate_key_files(dir.path(), "k7"),
            Err(KeyFileError::Exists { .. })
        ));
        assert!(matches!(
            load_public_key(&secret),
            Err(KeyFileError::Invalid { .. })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = verifier().verify(&text, NOW);
        }

        #[test]
        fn mutated_tickets_never_verify_as_another_claim(
            pos in 0usize..200,
            byte in any::<u8>(),
        ) {
            let c = claims("sh-1", NOW, NOW + 600);
            let good = issue("k1", &key(1), &c);
            let mut bytes = good.clone().into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(got) = verifier().verify(&text, NOW) {
                prop_assert_eq!(got, c);
            }
        }

        #[test]
        fn random_parts_never_panic(
            kid in "[a-z0-9-]{0,40}",
            payload in "[A-Za-z0-9_@-]{0,200}",
            sig in "[A-Za-z0-9_=-]{0,120}",
        ) {
            let _ = verifier().verify(&format!("hp1.{kid}.{payload}.{sig}"), NOW);
        }
    }
}
