//! Auth: a gateway key (`sk-sluice-…`) names its workspace; the admin token opens the admin API.
//!
//! Keys are stored only as SHA-256 hashes (they are 190 random bits, so a slow hash adds
//! nothing). Live keys sit in a bounded cache: a revoke on this replica has the cache refuse
//! the key at once; other replicas of a cluster forget it when they re-read the revoked keys
//! (`cluster::listen`, within a second), and at the latest after `KEY_CACHE_TTL`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use siphasher::sip128::SipHasher24;

use crate::error::ApiError;
use crate::store::Store;
use crate::types::Secret;

pub(crate) const KEY_PREFIX: &str = "sk-sluice-";
const KEY_RANDOM_CHARS: usize = 32;
/// How long another replica may still accept a key revoked elsewhere.
pub(crate) const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_CAPACITY: u64 = 100_000;

/// The workspace a request acts for.
///
/// Shared text, not `String`s: a caller is cloned out of the key cache and again out of the
/// request's extensions, and a `String` clone is an allocation each time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) workspace: Arc<str>,
    pub(crate) key_id: Arc<str>,
}

/// The SHA-256 of an API key, in lowercase hex: what the store keeps instead of the key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: the secret (shown once), its id and the prefix kept to tell keys apart.
pub(crate) struct NewKey {
    pub(crate) id: String,
    pub(crate) key: Secret,
    pub(crate) hash: String,
    pub(crate) prefix: String,
}

pub(crate) fn generate_key() -> NewKey {
    let random = |n| -> String {
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(n)
            .map(char::from)
            .collect()
    };
    let key = format!("{KEY_PREFIX}{}", random(KEY_RANDOM_CHARS));
    NewKey {
        id: format!("key_{}", random(12).to_lowercase()),
        hash: hash_key(&key),
        prefix: key[..KEY_PREFIX.len() + 4].to_owned(),
        key: Secret::new(key),
    }
}

/// The bearer token of an `Authorization` header value, if it is one.
pub(crate) fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Callers of recently used keys, each under its key's tag: a SipHash-2-4 of the key's
/// text, 128 bits, keyed by a random key drawn when the cache is made (Aumasson and
/// Bernstein, "SipHash: a fast short-input PRF", 2012).
///
/// A tag, not the SHA-256 the store keeps: the SHA-256 of every request's key cost 3 500
/// instructions, 2.5 % of a plain request (issue 13), where the tag costs about 300. And
/// a tag, not the key's text: the cache would then hold usable keys in memory, freed
/// lazily and never wiped, while a tag, outside this process's random key, authenticates
/// nothing (and even with it, finding a key from its tag is a preimage search over 190
/// random bits).
///
/// A revoke knows only the key's SHA-256, so each entry keeps it, and a revoked digest
/// stays listed for [`REVOKED_KEPT`] (the cache's TTL and a second) after it was listed: a
/// hit whose digest is listed is dropped and read again from the store (which refuses
/// it). A key cached before the revoke expires within that time; a lookup that raced the
/// revoke does not leave its entry cached (`revocations`).
pub(crate) struct KeyCache {
    cache: Cache<u128, Cached>,
    /// Keyed with the random key drawn at [`KeyCache::default`].
    tagger: SipHasher24,
    /// Revokes so far: a lookup that began before a revoke does not cache what it read.
    revocations: AtomicU64,
    /// Digests revoked less than [`REVOKED_KEPT`] ago; `recently_revoked` is false when
    /// there are none, and a hit then takes no lock.
    revoked: Mutex<Revoked>,
    recently_revoked: AtomicBool,
}

/// Recently revoked digests: a set to ask, and the same in the order they were listed, to
/// drop them from the front as they age out (each step O(1), whatever the number of
/// revokes: each cluster re-read lists the last minute's again).
#[derive(Default)]
struct Revoked {
    listed: std::collections::HashSet<[u8; 32]>,
    by_age: std::collections::VecDeque<([u8; 32], Instant)>,
}

impl Revoked {
    fn age_out(&mut self, now: Instant) {
        while let Some((digest, at)) = self.by_age.front() {
            if now.duration_since(*at) < REVOKED_KEPT {
                break;
            }
            self.listed.remove(digest);
            self.by_age.pop_front();
        }
    }
}

/// A cached caller and the SHA-256 of its key, to match revokes against.
#[derive(Clone)]
struct Cached {
    caller: Caller,
    digest: [u8; 32],
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(KEY_CACHE_CAPACITY)
                .time_to_live(KEY_CACHE_TTL)
                .build(),
            tagger: SipHasher24::new_with_key(&rand::random()),
            revocations: AtomicU64::new(0),
            revoked: Mutex::new(Revoked::default()),
            recently_revoked: AtomicBool::new(false),
        }
    }
}

impl KeyCache {
    /// The caller a key stands for; unknown and revoked keys are refused.
    ///
    /// Errors: [`ApiError::MissingKey`] without a token; [`ApiError::InvalidKey`] for a
    /// token that is not a sluice key or that the store does not know (or knows revoked);
    /// [`ApiError::Internal`] when the store cannot be asked.
    pub(crate) async fn authenticate(
        &self,
        store: &Store,
        key: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let key = key.ok_or(ApiError::MissingKey)?;
        if !key.starts_with(KEY_PREFIX) {
            return Err(ApiError::InvalidKey);
        }
        let tag = self.tagger.hash(key.as_bytes()).as_u128();
        if let Some(cached) = self.cache.get(&tag).await {
            if !self.was_revoked(&cached.digest) {
                return Ok(cached.caller);
            }
            self.cache.invalidate(&tag).await;
        }
        let revocations = self.revocations.load(Ordering::Acquire);
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = store
            .key_by_hash(&hex::encode(digest))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let (workspace, key_id) = found.ok_or(ApiError::InvalidKey)?;
        let caller = Caller {
            workspace: workspace.into(),
            key_id: key_id.into(),
        };
        // A revoke that committed after the read above must not find the key cached after
        // it: this request may still pass (it raced the revoke), later ones not.
        if self.revocations.load(Ordering::Acquire) == revocations {
            let cached = Cached {
                caller: caller.clone(),
                digest,
            };
            self.cache.insert(tag, cached).await;
            // On a runtime with several threads a revoke may land between the check and
            // the insert: then the entry goes again.
            if self.revocations.load(Ordering::Acquire) != revocations {
                self.cache.invalidate(&tag).await;
            }
        }
        Ok(caller)
    }

    /// Refuses from now on the cached key whose [`hash_key`] is `hash` (a hash that is not
    /// 64 hex digits names no key and is ignored). Called again for the same hash (each
    /// cluster re-read repeats the last minute's revokes), it changes nothing more.
    pub(crate) async fn forget(&self, hash: &str) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(hash, &mut digest).is_err() {
            return;
        }
        let mut revoked = self.revoked.lock().expect("no panic holds this lock");
        let now = Instant::now();
        revoked.age_out(now);
        if revoked.listed.insert(digest) {
            revoked.by_age.push_back((digest, now));
        }
        self.recently_revoked.store(true, Ordering::Release);
    }

    /// Whether `digest` was revoked less than [`REVOKED_KEPT`] ago; forgets older revokes.
    fn was_revoked(&self, digest: &[u8; 32]) -> bool {
        if !self.recently_revoked.load(Ordering::Acquire) {
            return false;
        }
        let mut revoked = self.revoked.lock().expect("no panic holds this lock");
        revoked.age_out(Instant::now());
        if revoked.by_age.is_empty() {
            self.recently_revoked.store(false, Ordering::Release);
        }
        revoked.listed.contains(digest)
    }
}

/// How long a revoked digest is matched against cache hits: longer than any entry cached
/// before its revoke can live.
const REVOKED_KEPT: Duration = KEY_CACHE_TTL.saturating_add(Duration::from_secs(1));

/// Compares the admin token without leaking through timing how much of it matched.
pub(crate) fn admin_token_matches(expected: &Secret, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    let a = Sha256::digest(expected.expose().as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_unique_and_hash_stably() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.key.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.key.expose().len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, hash_key(a.key.expose()));
        assert!(a.key.expose().starts_with(&a.prefix));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[tokio::test]
    async fn a_revoked_digest_is_matched_once_and_only_it() {
        let cache = KeyCache::default();
        let revoked = generate_key();
        let other = generate_key();
        let digest = |hash: &str| {
            let mut d = [0u8; 32];
            hex::decode_to_slice(hash, &mut d).unwrap();
            d
        };
        assert!(
            !cache.was_revoked(&digest(&revoked.hash)),
            "nothing revoked yet"
        );
        cache.forget(&revoked.hash).await;
        // Each cluster re-read forgets the last minute's revokes again.
        cache.forget(&revoked.hash).await;
        cache.forget("not a digest").await;
        assert!(cache.was_revoked(&digest(&revoked.hash)));
        assert!(!cache.was_revoked(&digest(&other.hash)));
        assert_eq!(cache.revoked.lock().unwrap().by_age.len(), 1, "listed once");
        assert_eq!(cache.revocations.load(Ordering::Acquire), 3);
    }

    #[test]
    fn tags_differ_by_key_and_by_cache() {
        let (a, b) = (KeyCache::default(), KeyCache::default());
        let tag = |cache: &KeyCache, key: &str| cache.tagger.hash(key.as_bytes()).as_u128();
        let key = generate_key();
        let key = key.key.expose();
        assert_eq!(tag(&a, key), tag(&a, key), "stable within a cache");
        assert_ne!(tag(&a, key), tag(&a, &format!("{key}x")));
        assert_ne!(tag(&a, key), tag(&b, key), "each cache draws its own key");
    }

    #[test]
    fn the_admin_token_must_match_exactly() {
        let t = Secret::new("admin");
        assert!(admin_token_matches(&t, Some("admin")));
        assert!(!admin_token_matches(&t, Some("admin2")));
        assert!(!admin_token_matches(&t, None));
    }
}
