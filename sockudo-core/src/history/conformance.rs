//! The executable [`HistoryStore`] contract: one suite every implementation must pass.
//!
//! Build the store with [`RETENTION`] and call [`run_all`] on a multi-threaded Tokio runtime
//! (the concurrency checks race for real). [`age_retention`] needs a second store built with
//! [`AGE_RETENTION`]. Every check works in app `ns` on channels with a random suffix, so the
//! suite can run against a shared server, repeatedly, next to other checks. A broken rule
//! panics with a message naming it.
//!
//! ```no_run
//! # async fn t() {
//! use std::sync::Arc;
//! use sockudo_core::history::{conformance, HistoryStore, MemoryHistoryStore};
//! let store: Arc<dyn HistoryStore> = Arc::new(MemoryHistoryStore::new(conformance::RETENTION));
//! conformance::run_all(&store, "app-1").await;
//! # }
//! ```
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{HistoryPage, HistoryStore, Retention};

/// The retention [`run_all`] expects: 64 messages, one hour.
pub const RETENTION: Retention = Retention {
    max_messages: 64,
    max_age: Duration::from_secs(3600),
};

/// The retention [`age_retention`] expects: 1000 messages, 300 ms.
pub const AGE_RETENTION: Retention = Retention {
    max_messages: 1000,
    max_age: Duration::from_millis(300),
};

/// Unwrap a result or panic naming the operation.
#[track_caller]
fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

const WINDOW: Duration = Duration::from_secs(60);

/// The frame every check stores: it names the message id and the assigned position, so a
/// stored frame proves which append got which serial.
pub fn test_frame(message_id: &str, stream_id: &str, serial: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"message_id\":\"{message_id}\",\"stream_id\":\"{stream_id}\",\"serial\":{serial}}}"
    ))
}

fn channel(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

async fn append(store: &dyn HistoryStore, app: &str, ch: &str, mid: &str) -> super::Appended {
    let m = mid.to_owned();
    store
        .append(app, ch, mid, WINDOW, &move |sid: &str, serial: u64| {
            test_frame(&m, sid, serial)
        })
        .await
        .unwrap_or_else(|e| panic!("append {mid} to {ch}: {e}"))
}

fn serials(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.serial).collect()
}

/// Run every check of [`RETENTION`] stores in turn.
pub async fn run_all(store: &Arc<dyn HistoryStore>, ns: &str) {
    serials_are_contiguous(store.as_ref(), ns).await;
    dedup_within_window(store.as_ref(), ns).await;
    read_after_ranges(store.as_ref(), ns).await;
    read_before_paging(store.as_ref(), ns).await;
    count_retention(store.as_ref(), ns).await;
    reset_starts_new_stream(store.as_ref(), ns).await;
    streams_are_isolated(store.as_ref(), ns).await;
    concurrent_appends(store, ns).await;
    concurrent_duplicates(store, ns).await;
}

/// A new channel has a head of 0; appends get 1..=n under one stream id, stored verbatim.
pub async fn serials_are_contiguous(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("serials");
    let head = ok(store.head(ns, &ch).await, "head");
    assert_eq!(head.serial, 0, "a new stream starts at serial 0");
    assert!(!head.stream_id.is_empty(), "stream ids are not empty");
    assert_eq!(
        ok(store.head(ns, &ch).await, "head"),
        head,
        "head is stable"
    );
    let before = now_ms();
    for n in 1..=5u64 {
        let a = append(store, ns, &ch, &format!("m{n}")).await;
        assert_eq!(
            (a.stream_id.as_str(), a.serial, a.duplicate),
            (head.stream_id.as_str(), n, false),
            "serials are 1..=n"
        );
    }
    let after = now_ms();
    assert_eq!(ok(store.head(ns, &ch).await, "head").serial, 5);
    let page = ok(store.read_after(ns, &ch, 0, 100).await, "read_after");
    assert_eq!(page.stream_id, head.stream_id);
    assert_eq!(serials(&page), vec![1, 2, 3, 4, 5]);
    assert_eq!((page.oldest_serial, page.newest_serial), (Some(1), 5));
    for m in &page.messages {
        let mid = format!("m{}", m.serial);
        assert_eq!(m.message_id, mid);
        assert_eq!(
            m.frame,
            test_frame(&mid, &head.stream_id, m.serial),
            "the frame is built with the assigned position"
        );
        // Generous bounds: the store may use its own (server) clock.
        assert!(
            m.published_at_ms + 60_000 >= before && m.published_at_ms <= after + 60_000,
            "published_at_ms is wall-clock ms"
        );
    }
}

/// The same message id within the window is one message with one serial.
pub async fn dedup_within_window(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("dedup");
    let a = append(store, ns, &ch, "x").await;
    let b = append(store, ns, &ch, "y").await;
    let again = append(store, ns, &ch, "x").await;
    assert_eq!(
        (again.serial, again.duplicate, &again.stream_id),
        (a.serial, true, &a.stream_id),
        "duplicate returns the original serial"
    );
    assert_eq!(b.serial, 2);
    let page = ok(store.read_after(ns, &ch, 0, 100).await, "read_after");
    assert_eq!(serials(&page), vec![1, 2], "a duplicate stores nothing");
    assert_eq!(ok(store.head(ns, &ch).await, "head").serial, 2);
    // The same id in another channel is another message.
    let other = append(store, ns, &channel("dedup-other"), "x").await;
    assert_eq!((other.serial, other.duplicate), (1, false));
    // Past its window a message id is new again.
    let short = Duration::from_millis(200);
    let m = "z".to_owned();
    let frame = move |sid: &str, s: u64| test_frame(&m, sid, s);
    let z = ok(store.append(ns, &ch, "z", short, &frame).await, "append");
    assert_eq!((z.serial, z.duplicate), (3, false));
    assert!(ok(store.append(ns, &ch, "z", short, &frame).await, "append").duplicate);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let z2 = ok(store.append(ns, &ch, "z", short, &frame).await, "append");
    assert_eq!(
        (z2.serial, z2.duplicate),
        (4, false),
        "the dedup window expired"
    );
}

/// `read_after` returns serials > after, ascending, at most `limit`.
pub async fn read_after_ranges(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("after");
    for n in 1..=10 {
        append(store, ns, &ch, &format!("m{n}")).await;
    }
    let r = |after, limit| store.read_after(ns, &ch, after, limit);
    assert_eq!(
        serials(&ok(r(3, 100).await, "read_after")),
        (4..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        serials(&ok(r(3, 4).await, "read_after")),
        vec![4, 5, 6, 7],
        "limit"
    );
    assert_eq!(serials(&ok(r(0, 1).await, "read_after")), vec![1]);
    assert_eq!(serials(&ok(r(9, 100).await, "read_after")), vec![10]);
    let at_head = ok(r(10, 100).await, "read_after");
    assert!(at_head.messages.is_empty());
    assert_eq!(
        (at_head.oldest_serial, at_head.newest_serial),
        (Some(1), 10)
    );
    assert!(
        ok(r(20, 100).await, "read_after").messages.is_empty(),
        "beyond the head"
    );
    assert!(ok(r(u64::MAX, 100).await, "read_after").messages.is_empty());
    assert!(
        ok(r(0, 0).await, "read_after").messages.is_empty(),
        "limit 0"
    );
    let empty = ok(
        store.read_after(ns, &channel("after-empty"), 0, 10).await,
        "read_after",
    );
    assert!(empty.messages.is_empty());
    assert_eq!((empty.oldest_serial, empty.newest_serial), (None, 0));
}

/// `read_before` pages backwards, newest first, without overlap or holes.
pub async fn read_before_paging(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("before");
    for n in 1..=10 {
        append(store, ns, &ch, &format!("m{n}")).await;
    }
    let first = ok(store.read_before(ns, &ch, None, 3).await, "read_before");
    assert_eq!(serials(&first), vec![10, 9, 8], "newest first");
    assert_eq!(first.newest_serial, 10);
    let mut seen = serials(&first);
    let Some(&(mut cursor)) = seen.last() else {
        panic!("read_before returned nothing")
    };
    loop {
        let page = ok(
            store.read_before(ns, &ch, Some(cursor), 3).await,
            "read_before",
        );
        let s = serials(&page);
        let Some(last) = s.last() else { break };
        assert!(
            s.windows(2).all(|w| w[0] == w[1] + 1),
            "pages are contiguous, descending: {s:?}"
        );
        assert_eq!(s[0] + 1, cursor, "a page continues right below the cursor");
        cursor = *last;
        seen.extend(s);
    }
    assert_eq!(seen, (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(
        serials(&ok(
            store.read_before(ns, &ch, Some(100), 2).await,
            "read_before"
        )),
        vec![10, 9]
    );
    assert!(
        ok(store.read_before(ns, &ch, Some(0), 5).await, "read_before")
            .messages
            .is_empty()
    );
    assert!(ok(store.read_before(ns, &ch, None, 0).await, "read_before")
        .messages
        .is_empty());
}

/// Count retention drops the oldest; `oldest_serial` follows it; serials keep counting.
pub async fn count_retention(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("count");
    let max = ok(u64::try_from(RETENTION.max_messages), "max_messages");
    for n in 1..=(max + 6) {
        append(store, ns, &ch, &format!("m{n}")).await;
    }
    let page = ok(store.read_after(ns, &ch, 0, 1000).await, "read_after");
    assert_eq!(page.oldest_serial, Some(7), "oldest_serial after trimming");
    assert_eq!(page.newest_serial, max + 6);
    assert_eq!(
        serials(&page),
        (7..=max + 6).collect::<Vec<_>>(),
        "the newest max_messages remain, contiguous"
    );
    assert_eq!(
        serials(&ok(store.read_after(ns, &ch, 10, 2).await, "read_after")),
        vec![11, 12]
    );
    let back = ok(store.read_before(ns, &ch, Some(9), 10).await, "read_before");
    assert_eq!(serials(&back), vec![8, 7]);
    assert_eq!(back.oldest_serial, Some(7));
}

/// `reset` starts a new stream id at serial 0; appends restart at 1 under the new id.
pub async fn reset_starts_new_stream(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("reset");
    let first = append(store, ns, &ch, "a").await;
    append(store, ns, &ch, "b").await;
    append(store, ns, &ch, "c").await;
    let reset = ok(store.reset(ns, &ch).await, "reset");
    assert_ne!(
        reset.stream_id, first.stream_id,
        "reset changes the stream id"
    );
    assert_eq!(reset.serial, 0);
    assert_eq!(ok(store.head(ns, &ch).await, "head"), reset);
    let page = ok(store.read_after(ns, &ch, 0, 100).await, "read_after");
    assert!(page.messages.is_empty(), "a reset stream is empty");
    assert_eq!(
        (
            page.stream_id.as_str(),
            page.oldest_serial,
            page.newest_serial
        ),
        (reset.stream_id.as_str(), None, 0)
    );
    let n = append(store, ns, &ch, "d").await;
    assert_eq!(
        (n.stream_id.as_str(), n.serial, n.duplicate),
        (reset.stream_id.as_str(), 1, false)
    );
    // A message id of the old stream is not a duplicate in the new one.
    let a = append(store, ns, &ch, "a").await;
    assert_eq!(
        (a.stream_id.as_str(), a.serial, a.duplicate),
        (reset.stream_id.as_str(), 2, false)
    );
    let page = ok(store.read_after(ns, &ch, 0, 100).await, "read_after");
    assert_eq!(serials(&page), vec![1, 2]);
    assert_eq!(page.messages[0].frame, test_frame("d", &reset.stream_id, 1));
    let again = ok(store.reset(ns, &ch).await, "reset");
    assert_ne!(again.stream_id, reset.stream_id);
}

/// Apps and channels have independent streams.
pub async fn streams_are_isolated(store: &dyn HistoryStore, ns: &str) {
    let ch = channel("iso");
    let other_app = format!("{ns}-other");
    append(store, ns, &ch, "1").await;
    append(store, ns, &ch, "2").await;
    assert_eq!(append(store, &other_app, &ch, "1").await.serial, 1);
    assert_eq!(append(store, ns, &format!("{ch}-2"), "1").await.serial, 1);
    assert_eq!(ok(store.head(ns, &ch).await, "head").serial, 2);
    assert_ne!(
        ok(store.head(ns, &ch).await, "head").stream_id,
        ok(store.head(&other_app, &ch).await, "head").stream_id
    );
}

/// 50 concurrent appends get exactly 1..=50, each stored with its own frame.
pub async fn concurrent_appends(store: &Arc<dyn HistoryStore>, ns: &str) {
    let ch = channel("concurrent");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, ns, ch) = (Arc::clone(store), ns.to_owned(), ch.clone());
            tokio::spawn(async move {
                let mid = format!("c{i}");
                let a = append(store.as_ref(), &ns, &ch, &mid).await;
                (mid, a)
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(ok(t.await, "task"));
    }
    let sids: BTreeSet<&str> = got.iter().map(|(_, a)| a.stream_id.as_str()).collect();
    assert_eq!(sids.len(), 1, "one stream");
    let mut s: Vec<u64> = got.iter().map(|(_, a)| a.serial).collect();
    s.sort_unstable();
    assert_eq!(s, (1..=50).collect::<Vec<_>>(), "a permutation of 1..=50");
    assert!(got.iter().all(|(_, a)| !a.duplicate));
    let page = ok(store.read_after(ns, &ch, 0, 100).await, "read_after");
    assert_eq!(
        serials(&page),
        (1..=50).collect::<Vec<_>>(),
        "stored contiguously"
    );
    for (mid, a) in &got {
        let m = &page.messages[ok(usize::try_from(a.serial - 1), "index")];
        assert_eq!(&m.message_id, mid);
        assert_eq!(
            m.frame,
            test_frame(mid, &a.stream_id, a.serial),
            "each append stored its own frame"
        );
    }
}

/// 20 concurrent appends of one message id: one message, one serial, one non-duplicate.
pub async fn concurrent_duplicates(store: &Arc<dyn HistoryStore>, ns: &str) {
    let ch = channel("concurrent-dup");
    append(store.as_ref(), ns, &ch, "before").await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, ns, ch) = (Arc::clone(store), ns.to_owned(), ch.clone());
            tokio::spawn(async move { append(store.as_ref(), &ns, &ch, "same").await })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(ok(t.await, "task"));
    }
    assert!(
        got.iter().all(|a| a.serial == 2),
        "every copy has the one serial"
    );
    assert_eq!(
        got.iter().filter(|a| !a.duplicate).count(),
        1,
        "exactly one copy was stored"
    );
    assert_eq!(
        serials(&ok(store.read_after(ns, &ch, 0, 100).await, "read_after")),
        vec![1, 2]
    );
}

/// Age retention ([`AGE_RETENTION`] stores): old messages disappear from reads, the head
/// stays, and serials continue.
pub async fn age_retention(store: &Arc<dyn HistoryStore>, ns: &str) {
    let ch = channel("age");
    let sid = append(store.as_ref(), ns, &ch, "1").await.stream_id;
    append(store.as_ref(), ns, &ch, "2").await;
    assert_eq!(
        serials(&ok(store.read_after(ns, &ch, 0, 10).await, "read_after")),
        vec![1, 2]
    );
    tokio::time::sleep(AGE_RETENTION.max_age + Duration::from_millis(250)).await;
    let page = ok(store.read_after(ns, &ch, 0, 10).await, "read_after");
    assert!(page.messages.is_empty(), "expired messages are not read");
    assert_eq!(
        (
            page.stream_id.as_str(),
            page.oldest_serial,
            page.newest_serial
        ),
        (sid.as_str(), None, 2)
    );
    assert!(
        ok(store.read_before(ns, &ch, None, 10).await, "read_before")
            .messages
            .is_empty()
    );
    let a = append(store.as_ref(), ns, &ch, "3").await;
    assert_eq!(
        (a.stream_id.as_str(), a.serial),
        (sid.as_str(), 3),
        "the stream continues after expiry"
    );
    let page = ok(store.read_after(ns, &ch, 0, 10).await, "read_after");
    assert_eq!((serials(&page), page.oldest_serial), (vec![3], Some(3)));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
