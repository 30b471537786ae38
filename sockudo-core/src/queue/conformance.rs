//! The executable [`Queue`] contract: one suite every implementation must pass.
//!
//! Each check takes an `&Arc<dyn Queue>`, works on a fresh randomly named queue (so checks
//! can share a server and run side by side), and panics with a message naming the broken
//! rule. Run on a multi-threaded Tokio runtime so the concurrency check races for real:
//!
//! ```no_run
//! # async fn t() {
//! use std::sync::Arc;
//! use sockudo_core::queue::{conformance, MemoryQueue, Queue};
//! let q: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
//! conformance::run_all(&q).await;
//! # }
//! ```
//!
//! Timing: checks use short real delays and leases and only ever *wait past* them before
//! asserting; "not yet" assertions are made right after the call, well inside the window.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Job, JobId, NackOutcome, Queue, QueueError};

/// Long enough that a job leased for it stays leased for the whole check.
const LONG: Duration = Duration::from_secs(60);
/// A short delay/lease for expiry checks.
const SHORT: Duration = Duration::from_millis(250);
/// Waiting this long after a [`SHORT`] window guarantees it has passed.
const PAST_SHORT: Duration = Duration::from_millis(450);

/// Run every check in turn.
pub async fn run_all(q: &Arc<dyn Queue>) {
    ping_answers(q).await;
    enqueue_claim_ack(q).await;
    claim_respects_max(q).await;
    delay_is_respected(q).await;
    leased_job_is_invisible(q).await;
    expired_lease_is_redelivered(q).await;
    nack_retries_after_delay(q).await;
    nack_dead_letters_at_max_attempts(q).await;
    nack_zero_max_dead_letters_at_once(q).await;
    ack_and_nack_unknown(q).await;
    stats_depth_and_oldest_age(q).await;
    concurrent_claims_never_share_a_job(q).await;
    queues_isolated(q).await;
    payload_bytes_round_trip(q).await;
}

fn fresh(check: &str) -> String {
    format!("conformance-{:016x}-{check}", rand::random::<u64>())
}

#[track_caller]
fn ok<T>(r: Result<T, QueueError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub async fn ping_answers(q: &Arc<dyn Queue>) {
    ok(q.ping().await, "ping");
}

pub async fn enqueue_claim_ack(q: &Arc<dyn Queue>) {
    let name = fresh("basic");
    let id = ok(q.enqueue(&name, b("one"), Duration::ZERO).await, "enqueue");
    let jobs = ok(q.claim(&name, "c1", LONG, 10).await, "claim");
    assert_eq!(jobs.len(), 1, "a due job must be claimable at once");
    assert_eq!(jobs[0].id, id, "claim returns the enqueued id");
    assert_eq!(jobs[0].payload, b("one"));
    assert_eq!(jobs[0].attempts, 1, "the first claim is attempt 1");
    assert!(
        ok(q.ack(&name, &id).await, "ack"),
        "ack of a leased job reports it existed"
    );
    assert!(
        !ok(q.ack(&name, &id).await, "second ack"),
        "a second ack is a harmless no-op"
    );
    let stats = ok(q.stats(&name).await, "stats");
    assert_eq!(stats.depth, 0, "an acked job leaves the queue");
    assert_eq!(stats.oldest_age, None);
    assert!(
        ok(q.claim(&name, "c1", LONG, 10).await, "claim").is_empty(),
        "an acked job is never redelivered"
    );
    let id2 = ok(q.enqueue(&name, b("two"), Duration::ZERO).await, "enqueue");
    assert_ne!(id, id2, "ids are unique within a queue");
}

pub async fn claim_respects_max(q: &Arc<dyn Queue>) {
    let name = fresh("max");
    for i in 0..5 {
        ok(
            q.enqueue(&name, b(&i.to_string()), Duration::ZERO).await,
            "enqueue",
        );
    }
    assert!(
        ok(q.claim(&name, "c", LONG, 0).await, "claim 0").is_empty(),
        "max 0 claims nothing"
    );
    let first = ok(q.claim(&name, "c", LONG, 2).await, "claim");
    assert_eq!(first.len(), 2, "claim returns at most max jobs");
    let rest = ok(q.claim(&name, "c", LONG, 10).await, "claim");
    assert_eq!(rest.len(), 3, "the remaining due jobs are claimable");
    let ids: HashSet<JobId> = first.iter().chain(&rest).map(|j| j.id.clone()).collect();
    assert_eq!(ids.len(), 5, "each job is claimed once");
}

pub async fn delay_is_respected(q: &Arc<dyn Queue>) {
    let name = fresh("delay");
    let id = ok(q.enqueue(&name, b("later"), SHORT).await, "enqueue");
    assert!(
        ok(q.claim(&name, "c", LONG, 10).await, "claim").is_empty(),
        "a delayed job is not claimable before its delay"
    );
    assert_eq!(
        ok(q.stats(&name).await, "stats").depth,
        1,
        "a delayed job counts in depth"
    );
    tokio::time::sleep(PAST_SHORT).await;
    let jobs = ok(q.claim(&name, "c", LONG, 10).await, "claim");
    assert_eq!(
        jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&id],
        "the job is claimable after its delay"
    );
}

pub async fn leased_job_is_invisible(q: &Arc<dyn Queue>) {
    let name = fresh("leased");
    ok(q.enqueue(&name, b("x"), Duration::ZERO).await, "enqueue");
    assert_eq!(ok(q.claim(&name, "a", LONG, 10).await, "claim").len(), 1);
    assert!(
        ok(q.claim(&name, "b", LONG, 10).await, "claim").is_empty(),
        "a leased job is invisible to other consumers"
    );
    assert_eq!(
        ok(q.stats(&name).await, "stats").depth,
        1,
        "a leased job counts in depth"
    );
}

pub async fn expired_lease_is_redelivered(q: &Arc<dyn Queue>) {
    let name = fresh("lease-expiry");
    let id = ok(q.enqueue(&name, b("work"), Duration::ZERO).await, "enqueue");
    let first = ok(q.claim(&name, "dead-node", SHORT, 10).await, "claim");
    assert_eq!(first.len(), 1);
    tokio::time::sleep(PAST_SHORT).await;
    let again = ok(q.claim(&name, "survivor", LONG, 10).await, "claim");
    assert_eq!(
        again.len(),
        1,
        "a job whose lease expired without ack is redelivered"
    );
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].payload, b("work"));
    assert_eq!(again[0].attempts, 2, "a redelivery counts as an attempt");
    assert!(ok(q.ack(&name, &id).await, "ack"));
}

pub async fn nack_retries_after_delay(q: &Arc<dyn Queue>) {
    let name = fresh("nack-retry");
    let id = ok(q.enqueue(&name, b("r"), Duration::ZERO).await, "enqueue");
    ok(q.claim(&name, "c", LONG, 1).await, "claim");
    let outcome = ok(q.nack(&name, &id, SHORT, 5).await, "nack");
    assert_eq!(
        outcome,
        NackOutcome::Retried,
        "below max attempts a nack retries"
    );
    assert!(
        ok(q.claim(&name, "c", LONG, 1).await, "claim").is_empty(),
        "a nacked job waits for its retry delay"
    );
    tokio::time::sleep(PAST_SHORT).await;
    let jobs = ok(q.claim(&name, "c", LONG, 1).await, "claim");
    assert_eq!(jobs.len(), 1, "a nacked job comes back after its delay");
    assert_eq!(jobs[0].attempts, 2, "attempts grow with each claim");
    // Zero delay: claimable at once.
    assert_eq!(
        ok(q.nack(&name, &id, Duration::ZERO, 5).await, "nack"),
        NackOutcome::Retried
    );
    assert_eq!(
        ok(q.claim(&name, "c", LONG, 1).await, "claim")
            .first()
            .map(|j| j.attempts),
        Some(3)
    );
}

pub async fn nack_dead_letters_at_max_attempts(q: &Arc<dyn Queue>) {
    let name = fresh("dead");
    let id = ok(
        q.enqueue(&name, b("poison"), Duration::ZERO).await,
        "enqueue",
    );
    ok(q.claim(&name, "c", LONG, 1).await, "claim");
    assert_eq!(
        ok(q.nack(&name, &id, Duration::ZERO, 2).await, "nack"),
        NackOutcome::Retried
    );
    let jobs = ok(q.claim(&name, "c", LONG, 1).await, "claim");
    assert_eq!(jobs[0].attempts, 2);
    assert_eq!(
        ok(q.nack(&name, &id, Duration::ZERO, 2).await, "nack"),
        NackOutcome::DeadLettered,
        "at max attempts a nack dead-letters"
    );
    assert!(
        ok(q.claim(&name, "c", LONG, 1).await, "claim").is_empty(),
        "a dead letter is never claimed"
    );
    let stats = ok(q.stats(&name).await, "stats");
    assert_eq!(
        (stats.depth, stats.dead_letters),
        (0, 1),
        "a dead letter leaves depth and enters the store"
    );
    let dead = ok(q.dead_letters(&name, 10).await, "dead_letters");
    assert_eq!(
        dead,
        vec![Job {
            id: id.clone(),
            payload: b("poison"),
            attempts: 2
        }],
        "the dead letter keeps payload and attempts"
    );
    assert!(
        !ok(q.ack(&name, &id).await, "ack"),
        "a dead letter cannot be acked"
    );
    // Newest first, bounded by the limit.
    let id2 = ok(
        q.enqueue(&name, b("second"), Duration::ZERO).await,
        "enqueue",
    );
    ok(q.claim(&name, "c", LONG, 1).await, "claim");
    assert_eq!(
        ok(q.nack(&name, &id2, Duration::ZERO, 1).await, "nack"),
        NackOutcome::DeadLettered
    );
    let dead = ok(q.dead_letters(&name, 1).await, "dead_letters");
    assert_eq!(
        dead.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&id2],
        "dead letters are listed newest first, up to the limit"
    );
    assert!(ok(q.dead_letters(&name, 0).await, "dead_letters").is_empty());
}

pub async fn nack_zero_max_dead_letters_at_once(q: &Arc<dyn Queue>) {
    let name = fresh("permanent");
    let id = ok(q.enqueue(&name, b("p"), Duration::ZERO).await, "enqueue");
    ok(q.claim(&name, "c", LONG, 1).await, "claim");
    assert_eq!(
        ok(q.nack(&name, &id, LONG, 0).await, "nack"),
        NackOutcome::DeadLettered,
        "max_attempts 0 is a permanent failure"
    );
    assert_eq!(ok(q.stats(&name).await, "stats").dead_letters, 1);
}

pub async fn ack_and_nack_unknown(q: &Arc<dyn Queue>) {
    let name = fresh("unknown");
    let ghost = JobId("999999999".into());
    assert!(
        !ok(q.ack(&name, &ghost).await, "ack"),
        "ack of an unknown job reports false"
    );
    match q.nack(&name, &ghost, Duration::ZERO, 3).await {
        Err(QueueError::UnknownJob(id)) => assert_eq!(id, ghost),
        other => panic!("nack of an unknown job must be UnknownJob, got {other:?}"),
    }
    let garbage = JobId("not-a-job".into());
    assert!(!ok(q.ack(&name, &garbage).await, "ack"));
    assert!(matches!(
        q.nack(&name, &garbage, Duration::ZERO, 3).await,
        Err(QueueError::UnknownJob(_))
    ));
}

pub async fn stats_depth_and_oldest_age(q: &Arc<dyn Queue>) {
    let name = fresh("stats");
    let empty = ok(q.stats(&name).await, "stats");
    assert_eq!(
        (empty.depth, empty.oldest_age, empty.dead_letters),
        (0, None, 0),
        "an unused queue is empty"
    );
    let first = ok(q.enqueue(&name, b("1"), Duration::ZERO).await, "enqueue");
    tokio::time::sleep(SHORT).await;
    ok(q.enqueue(&name, b("2"), LONG).await, "enqueue");
    let s = ok(q.stats(&name).await, "stats");
    assert_eq!(s.depth, 2, "depth counts due and delayed jobs");
    let age = s.oldest_age.unwrap_or_default();
    assert!(
        age >= SHORT - Duration::from_millis(20),
        "oldest_age is measured from the oldest enqueue ({age:?})"
    );
    assert!(age < LONG, "oldest_age is an age, not a due time ({age:?})");
    ok(q.claim(&name, "c", LONG, 10).await, "claim");
    assert!(ok(q.ack(&name, &first).await, "ack"));
    let s = ok(q.stats(&name).await, "stats");
    assert_eq!(s.depth, 1);
    assert!(
        s.oldest_age.unwrap_or(LONG) < SHORT,
        "after the oldest is acked the next one is the oldest"
    );
}

pub async fn concurrent_claims_never_share_a_job(q: &Arc<dyn Queue>) {
    let name = Arc::new(fresh("concurrent"));
    const JOBS: usize = 200;
    for i in 0..JOBS {
        ok(
            q.enqueue(&name, b(&i.to_string()), Duration::ZERO).await,
            "enqueue",
        );
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (q, name) = (Arc::clone(q), Arc::clone(&name));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = ok(q.claim(&name, &format!("w{w}"), LONG, 7).await, "claim");
                if jobs.is_empty() {
                    return mine;
                }
                for j in jobs {
                    ok(q.ack(&name, &j.id).await, "ack");
                    mine.push(j.id);
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap_or_default() {
            assert!(
                seen.insert(id.clone()),
                "job {id} was claimed by two consumers within its lease"
            );
        }
    }
    assert_eq!(seen.len(), JOBS, "every job was claimed");
}

pub async fn queues_isolated(q: &Arc<dyn Queue>) {
    let (a, b_name) = (fresh("iso-a"), fresh("iso-b"));
    ok(q.enqueue(&a, b("a"), Duration::ZERO).await, "enqueue");
    assert!(
        ok(q.claim(&b_name, "c", LONG, 10).await, "claim").is_empty(),
        "queues do not share jobs"
    );
    assert_eq!(ok(q.stats(&b_name).await, "stats").depth, 0);
    assert_eq!(ok(q.claim(&a, "c", LONG, 10).await, "claim").len(), 1);
}

pub async fn payload_bytes_round_trip(q: &Arc<dyn Queue>) {
    let name = fresh("bytes");
    let payload = Bytes::from((0u8..=255).chain([0, 0, 255]).collect::<Vec<u8>>());
    ok(
        q.enqueue(&name, payload.clone(), Duration::ZERO).await,
        "enqueue",
    );
    ok(
        q.enqueue(&name, Bytes::new(), Duration::ZERO).await,
        "enqueue empty",
    );
    let mut got: Vec<Bytes> = ok(q.claim(&name, "c", LONG, 10).await, "claim")
        .into_iter()
        .map(|j| j.payload)
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![Bytes::new(), payload],
        "payloads are returned byte for byte"
    );
}
