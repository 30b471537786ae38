//! The cluster-wide state machine of paired webhook events (`channel_occupied` /
//! `channel_vacated`, `member_added` / `member_removed`), kept in the shared [`Cache`] so that
//! any node can take over a decision a dead node made.
//!
//! One *subject* (an (app, channel) occupancy, or an (app, channel, user) membership) has a
//! marker key whose value is the state of its current *span* (one occupation, one presence
//! session), named by a random token `t`:
//!
//! | marker | meaning |
//! |---|---|
//! | absent | never started, or expired |
//! | `P:t` | span `t` started; its start event is queued, not delivered yet |
//! | `D:t` | span `t`'s start event was delivered |
//! | `E:t` | span `t` ended; its end event is queued (or delivered) |
//!
//! Every move is one atomic `compare_and_swap`, so of several nodes deciding the same
//! transition exactly one wins. The end of span `t` is decided once through a second key,
//! `{marker}:end:{t}`, set-if-absent to the id of the end job that decided it: the job finds
//! its own id there when it is redelivered after a crash, and any other job for the same span
//! finds someone else's and stops. An end job waits for `D:t` so the end event never overtakes
//! its start event.

use std::time::Duration;

use bytes::Bytes;
use sockudo_core::cache::{Cache, CacheError};

/// How long markers and end decisions live without being touched (a safety net against
/// leaks; far beyond any retry window).
pub(super) const MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

/// The state of a subject's current span, as read from its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Span {
    /// No span running (absent or ended).
    Idle { ended: Option<String> },
    /// Span started; start event not delivered yet.
    Pending(String),
    /// Span started and its start event delivered.
    Delivered(String),
}

impl Span {
    fn parse(raw: Option<&[u8]>) -> (Span, Option<Vec<u8>>) {
        let Some(raw) = raw else {
            return (Span::Idle { ended: None }, None);
        };
        let text = String::from_utf8_lossy(raw);
        let span = match text.split_once(':') {
            Some(("P", t)) => Span::Pending(t.to_owned()),
            Some(("D", t)) => Span::Delivered(t.to_owned()),
            Some(("E", t)) => Span::Idle {
                ended: Some(t.to_owned()),
            },
            _ => Span::Idle { ended: None },
        };
        (span, Some(raw.to_vec()))
    }

    /// The running span's token, if any.
    pub(super) fn token(&self) -> Option<&str> {
        match self {
            Span::Pending(t) | Span::Delivered(t) => Some(t),
            Span::Idle { .. } => None,
        }
    }
}

fn value(state: &str, token: &str) -> Bytes {
    Bytes::from(format!("{state}:{token}"))
}

/// The key recording which end job decided the end of span `token`.
pub(super) fn end_key(marker: &str, token: &str) -> String {
    format!("{marker}:end:{token}")
}

/// Read the marker.
pub(super) async fn read(cache: &dyn Cache, marker: &str) -> Result<Span, CacheError> {
    let raw = cache.get(marker).await?;
    Ok(Span::parse(raw.as_deref()).0)
}

/// Start span `token` if no span is running. Returns whether this call started it.
pub(super) async fn try_start(
    cache: &dyn Cache,
    marker: &str,
    token: &str,
) -> Result<bool, CacheError> {
    // A few rounds: a lost CAS means someone else moved the marker; re-read and decide again.
    for _ in 0..8 {
        let raw = cache.get(marker).await?;
        let (span, current) = Span::parse(raw.as_deref());
        if span.token().is_some() {
            return Ok(false);
        }
        let new = value("P", token);
        if cache
            .compare_and_swap(marker, current.as_deref(), new, Some(MARKER_TTL))
            .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Record that span `token`'s start event was delivered (`P:t` → `D:t`). Returns false when
/// the marker had moved on (nothing to record).
pub(super) async fn mark_delivered(
    cache: &dyn Cache,
    marker: &str,
    token: &str,
) -> Result<bool, CacheError> {
    let from = value("P", token);
    cache
        .compare_and_swap(marker, Some(&from), value("D", token), Some(MARKER_TTL))
        .await
}

/// What an end job due now should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EndVerdict {
    /// This job decided the end (now or before a crash): deliver the end event.
    Deliver,
    /// The start event is not delivered yet: check again a little later.
    Wait,
    /// Nothing to send (cancelled by a return, decided by another job, or span gone).
    Drop,
}

/// Decide the end of span `token` for end job `job`, given whether the subject still has
/// holders (`held`, read just before). Exactly one job per span gets `Deliver`, and it keeps
/// getting it on redelivery.
pub(super) async fn decide_end(
    cache: &dyn Cache,
    marker: &str,
    token: &str,
    job: &str,
    held: bool,
    overdue: bool,
) -> Result<EndVerdict, CacheError> {
    let key = end_key(marker, token);
    if let Some(owner) = cache.get(&key).await? {
        return Ok(if owner.as_ref() == job.as_bytes() {
            EndVerdict::Deliver
        } else {
            EndVerdict::Drop
        });
    }
    if held {
        return Ok(EndVerdict::Drop);
    }
    // An end waits for its start's delivery, but not forever: past `overdue` (the start's
    // whole retry window, see the caller) a start still not recorded as settled means its
    // record was lost (a cache failure), and a missing end would be worse than an end whose
    // start the receiver may have seen late.
    let state = match read(cache, marker).await? {
        Span::Pending(t) if t == token && !overdue => return Ok(EndVerdict::Wait),
        Span::Pending(t) if t == token => "P",
        Span::Delivered(t) if t == token => "D",
        _ => return Ok(EndVerdict::Drop),
    };
    if !cache
        .set_if_absent(&key, Bytes::from(job.to_owned()), Some(MARKER_TTL))
        .await?
    {
        return Ok(EndVerdict::Drop);
    }
    // Ends the span; a new one may start from here on. Losing this CAS is impossible for a
    // delivered span we own the end of, short of the marker expiring: ignore it.
    let from = value(state, token);
    cache
        .compare_and_swap(marker, Some(&from), value("E", token), Some(MARKER_TTL))
        .await?;
    Ok(EndVerdict::Deliver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockudo_core::cache::MemoryCache;

    const M: &str = "webhooks:occupied:1:a:ch";

    #[tokio::test]
    async fn an_end_whose_start_was_never_recorded_goes_out_once_overdue() {
        let c = MemoryCache::new();
        assert!(try_start(&c, M, "t1").await.unwrap());
        // The start's "delivered" record was lost (a cache failure when it was delivered).
        let v = decide_end(&c, M, "t1", "j1", false, false).await.unwrap();
        assert_eq!(v, EndVerdict::Wait);
        let v = decide_end(&c, M, "t1", "j1", false, true).await.unwrap();
        assert_eq!(v, EndVerdict::Deliver, "not forever");
        assert_eq!(
            read(&c, M).await.unwrap(),
            Span::Idle {
                ended: Some("t1".into())
            }
        );
        let v = decide_end(&c, M, "t1", "j2", false, true).await.unwrap();
        assert_eq!(v, EndVerdict::Drop, "and once");
    }

    #[tokio::test]
    async fn one_start_per_span_and_end_waits_for_delivery() {
        let c = MemoryCache::new();
        assert!(try_start(&c, M, "t1").await.unwrap(), "buffered → started");
        assert!(!try_start(&c, M, "t2").await.unwrap(), "never two starts");
        assert_eq!(read(&c, M).await.unwrap(), Span::Pending("t1".into()));
        // The end job is durable but must not overtake the start event.
        let v = decide_end(&c, M, "t1", "j1", false, false).await.unwrap();
        assert_eq!(v, EndVerdict::Wait);
        assert!(mark_delivered(&c, M, "t1").await.unwrap());
        assert_eq!(read(&c, M).await.unwrap(), Span::Delivered("t1".into()));
        assert_eq!(
            decide_end(&c, M, "t1", "j1", false, false).await.unwrap(),
            EndVerdict::Deliver
        );
        assert_eq!(
            read(&c, M).await.unwrap(),
            Span::Idle {
                ended: Some("t1".into())
            }
        );
        // A new span may start once the old one ended.
        assert!(try_start(&c, M, "t3").await.unwrap());
    }

    #[tokio::test]
    async fn an_end_is_cancelled_when_the_subject_came_back() {
        let c = MemoryCache::new();
        assert!(try_start(&c, M, "t1").await.unwrap());
        assert!(mark_delivered(&c, M, "t1").await.unwrap());
        let v = decide_end(&c, M, "t1", "j1", true, false).await.unwrap();
        assert_eq!(v, EndVerdict::Drop, "held again: no end");
        assert_eq!(read(&c, M).await.unwrap(), Span::Delivered("t1".into()));
        // Later it really ends: a later job decides it.
        let v = decide_end(&c, M, "t1", "j2", false, false).await.unwrap();
        assert_eq!(v, EndVerdict::Deliver);
    }

    #[tokio::test]
    async fn a_taken_over_end_is_delivered_once() {
        let c = MemoryCache::new();
        assert!(try_start(&c, M, "t1").await.unwrap());
        assert!(mark_delivered(&c, M, "t1").await.unwrap());
        // Two end jobs for the span (the leaving node's and a sweeping survivor's).
        assert_eq!(
            decide_end(&c, M, "t1", "j1", false, false).await.unwrap(),
            EndVerdict::Deliver
        );
        assert_eq!(
            decide_end(&c, M, "t1", "j2", false, false).await.unwrap(),
            EndVerdict::Drop
        );
        // j1's node died after deciding: its redelivery (on a survivor) still delivers, even
        // when a new span started meanwhile.
        assert!(try_start(&c, M, "t2").await.unwrap());
        assert_eq!(
            decide_end(&c, M, "t1", "j1", true, false).await.unwrap(),
            EndVerdict::Deliver
        );
        // An end job of an unknown or older span does nothing.
        assert_eq!(
            decide_end(&c, M, "t0", "j3", false, false).await.unwrap(),
            EndVerdict::Drop
        );
    }

    #[tokio::test]
    async fn delivery_is_recorded_only_for_the_current_span() {
        let c = MemoryCache::new();
        assert!(
            !mark_delivered(&c, M, "t1").await.unwrap(),
            "nothing started"
        );
        assert!(try_start(&c, M, "t1").await.unwrap());
        assert!(!mark_delivered(&c, M, "tX").await.unwrap());
        assert!(mark_delivered(&c, M, "t1").await.unwrap());
        assert!(!mark_delivered(&c, M, "t1").await.unwrap(), "once");
    }
}
