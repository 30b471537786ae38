//! Per-item idempotency for batch publishes: [`claim_item`] / [`release_item`].
//!
//! The layer covers a whole request (its key is the body's top-level `idempotency_key` or the
//! header). Items of `batch[]` may carry keys of their own; the batch handler claims each with
//! [`claim_item`] before publishing anything, skips items that were already published
//! ([`ItemClaim::Duplicate`]), and refuses the batch on [`ItemClaim::Conflict`], releasing
//! the claims it made ([`release_item`]) so nothing of that batch counts as used.
//!
//! Item records live in their own namespace (`sockudo:idem-item:`), apart from request
//! records, and hold only the item's [`Fingerprint`]: an item key says "this event was
//! published", and the batch response for an item is recomputed, not replayed.

use std::time::Duration;

use bytes::Bytes;

use super::{validate_key, Fingerprint, IdempotencyRejection};
use crate::cache::{Cache, CacheError};

/// Outcome of [`claim_item`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemClaim {
    /// This call claimed the key: publish the item.
    Claimed,
    /// The key was already claimed, within the TTL, by an item with the same fingerprint:
    /// skip it (it was, or is being, published).
    Duplicate,
    /// The key was already claimed by an item with a different fingerprint: refuse (409).
    Conflict,
}

fn item_cache_key(app_id: &str, key: &str) -> String {
    // The length prefix keeps `app "a:b", key "c"` apart from `app "a", key "b:c"`.
    format!("sockudo:idem-item:{}:{app_id}:{key}", app_id.len())
}

/// Claim an item key for `ttl`, scoped to `app_id`.
///
/// # Errors
/// [`CacheError`] when the cache cannot answer (the caller must fail closed: publish nothing),
/// or when the key keeps vanishing between the claim and the read.
pub async fn claim_item(
    cache: &dyn Cache,
    app_id: &str,
    key: &str,
    fingerprint: &Fingerprint,
    ttl: Duration,
) -> Result<ItemClaim, CacheError> {
    let cache_key = item_cache_key(app_id, key);
    let value = fingerprint.to_hex();
    for _ in 0..3 {
        if cache
            .set_if_absent(&cache_key, Bytes::from(value.clone()), Some(ttl))
            .await?
        {
            return Ok(ItemClaim::Claimed);
        }
        // Claimed by someone: read whose. `None` means it expired in between; claim again.
        if let Some(current) = cache.get(&cache_key).await? {
            return Ok(if current == value.as_bytes() {
                ItemClaim::Duplicate
            } else {
                ItemClaim::Conflict
            });
        }
    }
    Err(CacheError::Unavailable(
        "idempotency item record kept changing".into(),
    ))
}

/// Drop a claim made by [`claim_item`] (the item was not published after all), so a retry
/// publishes it. Returns whether a record was removed.
///
/// # Errors
/// [`CacheError`] when the cache cannot answer; the claim then expires with its TTL.
pub async fn release_item(cache: &dyn Cache, app_id: &str, key: &str) -> Result<bool, CacheError> {
    cache.delete(&item_cache_key(app_id, key)).await
}

/// Check an item's key like a request key: non-empty, at most
/// [`MAX_KEY_CHARS`](super::MAX_KEY_CHARS) characters.
///
/// # Errors
/// The [`IdempotencyRejection`] (400) to answer with.
pub fn validate_item_key(key: &str) -> Result<(), IdempotencyRejection> {
    validate_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;
    use crate::layers::test_support::FailingCache;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn claim_duplicate_conflict_release_expire() {
        let cache = MemoryCache::new();
        let ttl = Duration::from_secs(120);
        let a = Fingerprint::of_json(
            &json!({"name":"e","channel":"c","data":"1","idempotency_key":"k"}),
        );
        let b = Fingerprint::of_json(
            &json!({"name":"e","channel":"c","data":"2","idempotency_key":"k"}),
        );
        assert_eq!(
            claim_item(&cache, "1", "k", &a, ttl).await.unwrap(),
            ItemClaim::Claimed
        );
        assert_eq!(
            claim_item(&cache, "1", "k", &a, ttl).await.unwrap(),
            ItemClaim::Duplicate
        );
        assert_eq!(
            claim_item(&cache, "1", "k", &b, ttl).await.unwrap(),
            ItemClaim::Conflict
        );
        // Scoped per app.
        assert_eq!(
            claim_item(&cache, "2", "k", &b, ttl).await.unwrap(),
            ItemClaim::Claimed
        );
        assert_eq!(
            claim_item(&cache, "1:k", "", &b, ttl).await.unwrap(),
            ItemClaim::Claimed
        );

        assert!(release_item(&cache, "1", "k").await.unwrap());
        assert_eq!(
            claim_item(&cache, "1", "k", &b, ttl).await.unwrap(),
            ItemClaim::Claimed
        );

        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        assert_eq!(
            claim_item(&cache, "1", "k", &a, ttl).await.unwrap(),
            ItemClaim::Claimed
        );
    }

    #[tokio::test]
    async fn cache_errors_surface() {
        let fp = Fingerprint::of_json(&json!({}));
        assert!(
            claim_item(&FailingCache, "1", "k", &fp, Duration::from_secs(1))
                .await
                .is_err()
        );
        assert!(release_item(&FailingCache, "1", "k").await.is_err());
    }

    #[test]
    fn item_keys_are_validated_like_request_keys() {
        assert!(validate_item_key("abc").is_ok());
        assert_eq!(
            validate_item_key(""),
            Err(IdempotencyRejection::InvalidKey("empty"))
        );
        assert!(validate_item_key(&"é".repeat(128)).is_ok());
        assert_eq!(
            validate_item_key(&"x".repeat(129)),
            Err(IdempotencyRejection::KeyTooLong)
        );
    }
}
