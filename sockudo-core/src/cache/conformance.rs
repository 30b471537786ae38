//! The executable [`Cache`] contract: one suite every implementation must pass.
//!
//! Each check takes an `&Arc<dyn Cache>` (the concurrency checks spawn tasks that share it),
//! works under a fresh random key namespace (so it can run against a shared server and next
//! to other checks), and panics with a message naming the broken rule. Run them on a
//! multi-threaded Tokio runtime so the concurrency checks race for real:
//!
//! ```no_run
//! # async fn t() {
//! use std::sync::Arc;
//! use sockudo_core::cache::{conformance, Cache, MemoryCache};
//! let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
//! conformance::run_all(&cache).await;
//! # }
//! ```
//!
//! Timing: expiry checks use short real TTLs and only ever *wait* (sleep past the TTL, then
//! assert the value is gone); they never assert that something took less than some time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Barrier;

use super::{Cache, CacheError};

/// A short TTL for expiry checks.
const SHORT_TTL: Duration = Duration::from_millis(200);
/// Waiting this long after a [`SHORT_TTL`] write guarantees the value has expired.
const PAST_SHORT_TTL: Duration = Duration::from_millis(350);

/// Run every check in turn.
pub async fn run_all(cache: &Arc<dyn Cache>) {
    ping_answers(cache).await;
    get_set_overwrite(cache).await;
    ttl_expiry_is_visible(cache).await;
    set_replaces_ttl(cache).await;
    set_if_absent_basic(cache).await;
    set_if_absent_one_winner(cache).await;
    set_if_absent_after_expiry(cache).await;
    delete_reports_live_value(cache).await;
    increment_from_absent(cache).await;
    increment_concurrent(cache).await;
    increment_ttl_only_at_creation(cache).await;
    increment_not_an_integer(cache).await;
    compare_and_swap_semantics(cache).await;
    compare_and_swap_one_winner(cache).await;
    keys_isolated(cache).await;
}

/// A fresh key namespace for one check.
fn ns(check: &str) -> String {
    format!("conformance:{:016x}:{check}:", rand::random::<u64>())
}

#[track_caller]
fn ok<T>(r: Result<T, CacheError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("cache conformance: {what} failed: {e}"),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// `ping` succeeds on a healthy backend.
pub async fn ping_answers(cache: &Arc<dyn Cache>) {
    ok(cache.ping().await, "ping");
}

/// `get` of an absent key is `None`; `set` then `get` returns the value byte for byte
/// (binary and empty values included); a second `set` replaces the first.
pub async fn get_set_overwrite(cache: &Arc<dyn Cache>) {
    let p = ns("get_set");
    let k = format!("{p}k");
    assert_eq!(
        ok(cache.get(&k).await, "get absent"),
        None,
        "absent key must read as None"
    );
    ok(cache.set(&k, b("v1"), None).await, "set");
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("v1")),
        "get after set"
    );
    ok(cache.set(&k, b("v2"), None).await, "overwrite");
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("v2")),
        "set must replace the previous value"
    );

    let binary: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    let kb = format!("{p}binary");
    ok(cache.set(&kb, binary.clone(), None).await, "set binary");
    assert_eq!(
        ok(cache.get(&kb).await, "get binary"),
        Some(binary),
        "binary values round-trip"
    );

    let ke = format!("{p}empty");
    ok(cache.set(&ke, Bytes::new(), None).await, "set empty");
    assert_eq!(
        ok(cache.get(&ke).await, "get empty"),
        Some(Bytes::new()),
        "an empty value is present, not absent"
    );
}

/// A value written with a TTL is visible before it and never after it.
pub async fn ttl_expiry_is_visible(cache: &Arc<dyn Cache>) {
    let k = format!("{}k", ns("ttl"));
    ok(cache.set(&k, b("v"), Some(SHORT_TTL)).await, "set with ttl");
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("v")),
        "value must be visible before its TTL"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        ok(cache.get(&k).await, "get after ttl"),
        None,
        "an expired value must never be returned"
    );
}

/// `set` without a TTL replaces an earlier TTL: the value then lives until deleted.
pub async fn set_replaces_ttl(cache: &Arc<dyn Cache>) {
    let k = format!("{}k", ns("set_ttl"));
    ok(
        cache.set(&k, b("short"), Some(SHORT_TTL)).await,
        "set with ttl",
    );
    ok(cache.set(&k, b("forever"), None).await, "set without ttl");
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("forever")),
        "set without TTL must clear the old TTL"
    );
}

/// `set_if_absent` stores into an absent key and returns `true`; on a live key it returns
/// `false` and leaves the value alone.
pub async fn set_if_absent_basic(cache: &Arc<dyn Cache>) {
    let k = format!("{}k", ns("sia"));
    assert!(
        ok(
            cache.set_if_absent(&k, b("first"), None).await,
            "set_if_absent"
        ),
        "absent key: must store"
    );
    assert!(
        !ok(
            cache.set_if_absent(&k, b("second"), None).await,
            "set_if_absent"
        ),
        "live key: must not store"
    );
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("first")),
        "a refused set_if_absent must not write"
    );
    ok(cache.set(&k, b("plain"), None).await, "set");
    assert!(
        !ok(
            cache.set_if_absent(&k, b("third"), None).await,
            "set_if_absent"
        ),
        "key written by set is live"
    );
}

/// Of 32 concurrent `set_if_absent` callers exactly one wins, and its value is the one stored.
pub async fn set_if_absent_one_winner(cache: &Arc<dyn Cache>) {
    const CALLERS: usize = 32;
    let k = format!("{}k", ns("sia_race"));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::with_capacity(CALLERS);
    for i in 0..CALLERS {
        let (cache, barrier, k) = (Arc::clone(cache), Arc::clone(&barrier), k.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (
                i,
                cache
                    .set_if_absent(
                        &k,
                        Bytes::from(format!("caller-{i}")),
                        Some(Duration::from_secs(30)),
                    )
                    .await,
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = match t.await {
            Ok(v) => v,
            Err(e) => panic!("cache conformance: set_if_absent task failed: {e}"),
        };
        if ok(r, "concurrent set_if_absent") {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {CALLERS} concurrent set_if_absent calls must win, winners: {winners:?}"
    );
    let expected = winners.first().map(|i| Bytes::from(format!("caller-{i}")));
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        expected,
        "the stored value must be the winner's"
    );
}

/// Once the value written by `set_if_absent` expires, `set_if_absent` succeeds again.
pub async fn set_if_absent_after_expiry(cache: &Arc<dyn Cache>) {
    let k = format!("{}k", ns("sia_expiry"));
    assert!(
        ok(
            cache.set_if_absent(&k, b("old"), Some(SHORT_TTL)).await,
            "set_if_absent"
        ),
        "absent key: must store"
    );
    assert!(
        !ok(
            cache.set_if_absent(&k, b("early"), Some(SHORT_TTL)).await,
            "set_if_absent"
        ),
        "live key: must not store"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert!(
        ok(
            cache.set_if_absent(&k, b("new"), None).await,
            "set_if_absent after expiry"
        ),
        "an expired value counts as absent"
    );
    assert_eq!(ok(cache.get(&k).await, "get"), Some(b("new")));
}

/// `delete` returns whether a live value was removed: absent and expired keys give `false`.
pub async fn delete_reports_live_value(cache: &Arc<dyn Cache>) {
    let p = ns("delete");
    let k = format!("{p}k");
    assert!(
        !ok(cache.delete(&k).await, "delete absent"),
        "deleting an absent key returns false"
    );
    ok(cache.set(&k, b("v"), None).await, "set");
    assert!(
        ok(cache.delete(&k).await, "delete"),
        "deleting a live key returns true"
    );
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        None,
        "a deleted key reads as absent"
    );
    assert!(
        !ok(cache.delete(&k).await, "delete again"),
        "a second delete returns false"
    );

    let ke = format!("{p}expired");
    ok(
        cache.set(&ke, b("v"), Some(SHORT_TTL)).await,
        "set with ttl",
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert!(
        !ok(cache.delete(&ke).await, "delete expired"),
        "deleting an expired key returns false"
    );
}

/// `increment` counts an absent key as 0, accepts negative deltas, stores the decimal text,
/// and continues from an integer written with `set`.
pub async fn increment_from_absent(cache: &Arc<dyn Cache>) {
    let p = ns("incr");
    let k = format!("{p}k");
    assert_eq!(
        ok(cache.increment(&k, 5, None).await, "increment absent"),
        5,
        "absent counts as 0"
    );
    assert_eq!(
        ok(cache.increment(&k, -2, None).await, "increment negative"),
        3
    );
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b("3")),
        "a counter reads as its decimal text"
    );
    let ks = format!("{p}from_set");
    ok(cache.set(&ks, b("41"), None).await, "set");
    assert_eq!(
        ok(cache.increment(&ks, 1, None).await, "increment"),
        42,
        "increment continues from a set integer"
    );
}

/// 100 concurrent `+1` on one key end at 100, each caller seeing a distinct value.
pub async fn increment_concurrent(cache: &Arc<dyn Cache>) {
    const CALLERS: i64 = 100;
    let k = format!("{}k", ns("incr_race"));
    let barrier = Arc::new(Barrier::new(CALLERS as usize));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (cache, barrier, k) = (Arc::clone(cache), Arc::clone(&barrier), k.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache.increment(&k, 1, Some(Duration::from_secs(30))).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => seen.push(ok(r, "concurrent increment")),
            Err(e) => panic!("cache conformance: increment task failed: {e}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=CALLERS).collect::<Vec<_>>(),
        "concurrent increments must each see a distinct value"
    );
    assert_eq!(ok(cache.get(&k).await, "get"), Some(b("100")));
}

/// The TTL given to `increment` applies only when the call creates the key: a window
/// expires on time however often it is incremented, and the next increment opens a new one.
pub async fn increment_ttl_only_at_creation(cache: &Arc<dyn Cache>) {
    // A window of 600 ms incremented at ~0, ~150 and ~300 ms. Had the later increments
    // refreshed the TTL, the key would live until ~900 ms; we look at 800 ms.
    let window = Duration::from_millis(600);
    let k = format!("{}k", ns("incr_window"));
    let created = tokio::time::Instant::now();
    assert_eq!(
        ok(cache.increment(&k, 1, Some(window)).await, "increment"),
        1
    );
    tokio::time::sleep_until(created + Duration::from_millis(150)).await;
    assert_eq!(
        ok(cache.increment(&k, 1, Some(window)).await, "increment"),
        2,
        "the window must still be open"
    );
    tokio::time::sleep_until(created + Duration::from_millis(300)).await;
    assert_eq!(
        ok(cache.increment(&k, 1, Some(window)).await, "increment"),
        3,
        "the window must still be open"
    );
    tokio::time::sleep_until(created + Duration::from_millis(800)).await;
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        None,
        "later increments must not extend the window's TTL"
    );
    // A new window starts at the next increment, with its own TTL.
    assert_eq!(
        ok(
            cache.increment(&k, 1, Some(SHORT_TTL)).await,
            "increment after expiry"
        ),
        1,
        "an expired counter restarts from 0"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        None,
        "the new window must carry the TTL it was created with"
    );
}

/// `increment` on a value that is not a decimal `i64`, or that would overflow, fails with
/// [`CacheError::NotAnInteger`] and leaves the value unchanged.
pub async fn increment_not_an_integer(cache: &Arc<dyn Cache>) {
    let p = ns("incr_nan");
    for (i, text) in ["abc", "1.5", ""].into_iter().enumerate() {
        let k = format!("{p}{i}");
        ok(cache.set(&k, b(text), None).await, "set");
        match cache.increment(&k, 1, None).await {
            Err(CacheError::NotAnInteger) => {}
            other => panic!(
                "cache conformance: increment on {text:?} must be NotAnInteger, got {other:?}"
            ),
        }
        assert_eq!(
            ok(cache.get(&k).await, "get"),
            Some(b(text)),
            "a failed increment must not write"
        );
    }
    let k = format!("{p}overflow");
    let max = i64::MAX.to_string();
    ok(cache.set(&k, b(&max), None).await, "set");
    match cache.increment(&k, 1, None).await {
        Err(CacheError::NotAnInteger) => {}
        other => {
            panic!("cache conformance: overflowing increment must be NotAnInteger, got {other:?}")
        }
    }
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        Some(b(&max)),
        "a failed increment must not write"
    );
}

/// `compare_and_swap` writes only when the current live value equals `expected` (`None`:
/// absent or expired), replaces the TTL, and leaves the value alone when it refuses.
pub async fn compare_and_swap_semantics(cache: &Arc<dyn Cache>) {
    let k = format!("{}k", ns("cas"));
    assert!(
        !ok(
            cache.compare_and_swap(&k, Some(b"x"), b("y"), None).await,
            "cas"
        ),
        "absent key: expecting a value must fail"
    );
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        None,
        "a refused swap must not write"
    );
    assert!(
        ok(cache.compare_and_swap(&k, None, b("v1"), None).await, "cas"),
        "absent key: expecting None must swap"
    );
    assert!(
        !ok(cache.compare_and_swap(&k, None, b("v2"), None).await, "cas"),
        "live key: expecting None must fail"
    );
    assert!(
        !ok(
            cache.compare_and_swap(&k, Some(b"v"), b("v2"), None).await,
            "cas"
        ),
        "a prefix is not equal"
    );
    assert!(
        !ok(
            cache
                .compare_and_swap(&k, Some(b"v1x"), b("v2"), None)
                .await,
            "cas"
        ),
        "a longer value is not equal"
    );
    assert_eq!(ok(cache.get(&k).await, "get"), Some(b("v1")));
    assert!(
        ok(
            cache
                .compare_and_swap(&k, Some(b"v1"), b("v2"), Some(SHORT_TTL))
                .await,
            "cas"
        ),
        "equal value must swap"
    );
    assert_eq!(ok(cache.get(&k).await, "get"), Some(b("v2")));
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        None,
        "the swapped value must carry the new TTL"
    );
    assert!(
        !ok(
            cache.compare_and_swap(&k, Some(b"v2"), b("v3"), None).await,
            "cas"
        ),
        "an expired value is not equal"
    );
    assert!(
        ok(cache.compare_and_swap(&k, None, b("v3"), None).await, "cas"),
        "an expired value counts as absent"
    );
    let binary: Bytes = vec![0u8, 255, 10, 13, 0].into();
    assert!(ok(
        cache
            .compare_and_swap(&k, Some(b"v3"), binary.clone(), None)
            .await,
        "cas"
    ));
    assert!(
        ok(
            cache
                .compare_and_swap(&k, Some(&binary), Bytes::new(), None)
                .await,
            "cas"
        ),
        "binary values compare byte for byte"
    );
    assert!(
        ok(
            cache.compare_and_swap(&k, Some(b""), b("v4"), None).await,
            "cas"
        ),
        "an empty value is present and equal to empty"
    );
}

/// Of 32 concurrent `compare_and_swap` callers expecting the same value exactly one wins.
pub async fn compare_and_swap_one_winner(cache: &Arc<dyn Cache>) {
    const CALLERS: usize = 32;
    let k = format!("{}k", ns("cas_race"));
    ok(cache.set(&k, b("start"), None).await, "set");
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::with_capacity(CALLERS);
    for i in 0..CALLERS {
        let (cache, barrier, k) = (Arc::clone(cache), Arc::clone(&barrier), k.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (
                i,
                cache
                    .compare_and_swap(&k, Some(b"start"), Bytes::from(format!("caller-{i}")), None)
                    .await,
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = match t.await {
            Ok(v) => v,
            Err(e) => panic!("cache conformance: compare_and_swap task failed: {e}"),
        };
        if ok(r, "concurrent compare_and_swap") {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {CALLERS} concurrent compare_and_swap calls must win, winners: {winners:?}"
    );
    let expected = winners.first().map(|i| Bytes::from(format!("caller-{i}")));
    assert_eq!(
        ok(cache.get(&k).await, "get"),
        expected,
        "the stored value must be the winner's"
    );
}

/// Distinct keys are distinct values, including keys that differ only in characters a
/// backend might treat specially (braces, colons, spaces, non-ASCII, the empty key).
pub async fn keys_isolated(cache: &Arc<dyn Cache>) {
    let p = ns("isolated");
    let suffixes = [
        "a", "a}", "{a", "{a}", "a:b", "a b", "A", "ключ", "", "*", "a\nb",
    ];
    let keys: Vec<String> = suffixes.iter().map(|s| format!("{p}{s}")).collect();
    for (i, k) in keys.iter().enumerate() {
        ok(
            cache.set(k, Bytes::from(format!("v{i}")), None).await,
            "set",
        );
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            ok(cache.get(k).await, "get"),
            Some(Bytes::from(format!("v{i}"))),
            "key {k:?} must hold its own value"
        );
    }
    assert!(ok(cache.delete(&keys[0]).await, "delete"));
    for (i, k) in keys.iter().enumerate().skip(1) {
        assert_eq!(
            ok(cache.get(k).await, "get"),
            Some(Bytes::from(format!("v{i}"))),
            "deleting one key must not touch {k:?}"
        );
    }
    let (c1, c2) = (format!("{p}counter-1"), format!("{p}counter-2"));
    assert_eq!(ok(cache.increment(&c1, 7, None).await, "increment"), 7);
    assert_eq!(
        ok(cache.increment(&c2, 1, None).await, "increment"),
        1,
        "counters on distinct keys are independent"
    );
    assert!(!ok(
        cache.set_if_absent(&keys[1], b("x"), None).await,
        "set_if_absent"
    ));
    assert!(
        ok(
            cache.set_if_absent(&keys[0], b("x"), None).await,
            "set_if_absent"
        ),
        "a deleted key is absent"
    );
}
