//! The pull task of [`super::GooglePubSubTransport`]: keeps topic and subscription in
//! existence, owns the streaming pull, deduplicates, routes by logical topic and acknowledges.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, ExpirationPolicy, StreamingPullRequest, StreamingPullResponse,
};
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use gcloud_pubsub::subscription::{Subscription, SubscriptionConfig};
use gcloud_pubsub::topic::Topic;
use tokio::sync::mpsc;

use super::{no_retry, timed, GooglePubSubTransportOptions, Shared, TOPIC_ATTRIBUTE};

/// Shortest retention Pub/Sub accepts for a subscription.
const RETENTION: Duration = Duration::from_secs(600);
/// Shortest expiration policy Pub/Sub accepts: an unused subscription is deleted after it.
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);
/// Ack deadline of the subscription and the stream (Pub/Sub's minimum).
const ACK_DEADLINE_SECS: i32 = 10;
/// Acknowledgements sent in one request at most.
const ACK_BATCH: usize = 2_500;

/// The last `capacity` message ids, to drop redeliveries.
#[derive(Debug)]
pub(super) struct Dedup {
    capacity: usize,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedup {
    pub(super) fn new(capacity: usize) -> Self {
        Dedup {
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `id` is new (and remember it).
    fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    fn clear(&mut self) {
        self.seen.clear();
        self.order.clear();
    }
}

pub(super) struct Puller {
    topic: Topic,
    subscription: Subscription,
    opts: GooglePubSubTransportOptions,
    /// Stable across reconnections, so Pub/Sub keeps ordered keys with this client.
    client_id: String,
}

impl Puller {
    pub(super) fn new(
        topic: Topic,
        subscription: Subscription,
        opts: GooglePubSubTransportOptions,
    ) -> Self {
        Puller {
            topic,
            subscription,
            opts,
            client_id: format!("sockudo-{:016x}", rand::random::<u64>()),
        }
    }

    fn subscription_config(&self) -> SubscriptionConfig {
        SubscriptionConfig {
            ack_deadline_seconds: ACK_DEADLINE_SECS,
            enable_message_ordering: true,
            message_retention_duration: Some(RETENTION),
            expiration_policy: Some(ExpirationPolicy {
                ttl: EXPIRATION.try_into().ok(),
            }),
            ..SubscriptionConfig::default()
        }
    }

    /// Create the topic and the subscription when missing. Returns whether the subscription
    /// was created now (then `seen` is cleared: a new subscription numbers anew).
    pub(super) async fn ensure(&self, seen: &mut Dedup) -> Result<bool, String> {
        self.ensure_topic().await?;
        let created = timed(
            self.opts.connect_timeout,
            self.subscription.create(
                self.topic.fully_qualified_name(),
                self.subscription_config(),
                Some(no_retry()),
            ),
        )
        .await;
        match created {
            Ok(()) => {
                seen.clear();
                Ok(true)
            }
            Err(e) if e.starts_with("AlreadyExists") => Ok(false),
            Err(e) => Err(format!(
                "creating subscription {}: {e}",
                self.subscription.id()
            )),
        }
    }

    async fn ensure_topic(&self) -> Result<(), String> {
        match timed(
            self.opts.connect_timeout,
            self.topic.create(None, Some(no_retry())),
        )
        .await
        {
            Ok(()) => {
                tracing::info!(topic = %self.topic.id(), "google pubsub transport: topic created");
                Ok(())
            }
            Err(e) if e.starts_with("AlreadyExists") => Ok(()),
            Err(e) => Err(format!("creating topic {}: {e}", self.topic.id())),
        }
    }

    /// Reconnect forever (until aborted with the transport).
    pub(super) async fn run(self, shared: Arc<Shared>) {
        let mut seen = Dedup::new(self.opts.dedup_capacity);
        let (acks, ack_rx) = mpsc::unbounded_channel();
        let client = self.subscription.get_client();
        // Ends when `acks` is dropped, i.e. with this task.
        tokio::spawn(ack_task(
            client.clone(),
            self.subscription.fully_qualified_name().to_owned(),
            ack_rx,
            self.opts.connect_timeout,
        ));
        let mut backoff = self.opts.reconnect_min;
        loop {
            let why = self
                .session(&client, &shared, &mut seen, &acks, &mut backoff)
                .await;
            if shared.up.send_replace(false) {
                tracing::warn!(error = %why, "google pubsub transport: stream down; reconnecting");
            } else {
                tracing::debug!(error = %why, "google pubsub transport: reconnect failed");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.opts.reconnect_max);
        }
    }

    /// One streaming pull, from making sure the subscription exists until the stream fails.
    /// Returns why it ended.
    async fn session(
        &self,
        client: &SubscriberClient,
        shared: &Shared,
        seen: &mut Dedup,
        acks: &mpsc::UnboundedSender<Vec<String>>,
        backoff: &mut Duration,
    ) -> String {
        match self.ensure(seen).await {
            Ok(true) => {
                shared.recreated.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subscription = %self.subscription.id(),
                    "google pubsub transport: subscription was gone (broker restarted?): created again"
                );
            }
            Ok(false) => {}
            Err(e) => return e,
        }
        let request = StreamingPullRequest {
            subscription: self.subscription.fully_qualified_name().to_owned(),
            stream_ack_deadline_seconds: ACK_DEADLINE_SECS,
            client_id: self.client_id.clone(),
            max_outstanding_messages: 10_000,
            max_outstanding_bytes: 0,
            ..StreamingPullRequest::default()
        };
        // The emulator (grpc-java) sends the response headers only with the first message, so
        // the call stays pending on an idle subscription. The subscription exists (ensured just
        // now) and keeps everything published from now on, so the transport is up while the
        // call is being made; a refused connection fails it at once.
        let open = client.streaming_pull(request, Duration::from_secs(5), Some(no_retry()));
        tokio::pin!(open);
        shared.streams_opened.fetch_add(1, Ordering::Relaxed);
        if !shared.up.send_replace(true) {
            tracing::info!(
                subscription = %self.subscription.id(),
                "google pubsub transport: streaming pull open"
            );
        }
        *backoff = self.opts.reconnect_min;
        let mut check = tokio::time::interval(self.opts.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut stream = loop {
            tokio::select! {
                r = &mut open => match r {
                    Ok(response) => break response.into_inner(),
                    Err(s) => return format!("opening the streaming pull: {:?}: {}", s.code(), s.message()),
                },
                _ = check.tick() => {
                    if let Err(e) = self.check().await {
                        return e;
                    }
                    shared.publish_ok.store(true, Ordering::SeqCst);
                }
            }
        };
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(response)) => handle(shared, seen, acks, response),
                    Ok(None) => return "the broker ended the stream".into(),
                    Err(s) => return format!("stream failed: {:?}: {}", s.code(), s.message()),
                },
                _ = check.tick() => {
                    prune(shared);
                    if let Err(e) = self.check().await {
                        return e;
                    }
                    shared.publish_ok.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// The subscription still exists (else the session ends, to create it again) and so does
    /// the topic (created again if not: publishes need it).
    async fn check(&self) -> Result<(), String> {
        match timed(
            self.opts.connect_timeout,
            self.subscription.exists(Some(no_retry())),
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => return Err("subscription gone".into()),
            Err(e) => return Err(format!("checking the subscription: {e}")),
        }
        match timed(
            self.opts.connect_timeout,
            self.topic.exists(Some(no_retry())),
        )
        .await
        {
            Ok(true) => Ok(()),
            Ok(false) => self.ensure_topic().await,
            Err(e) => Err(format!("checking the topic: {e}")),
        }
    }
}

/// Deduplicate, route and queue the acknowledgements of one response.
fn handle(
    shared: &Shared,
    seen: &mut Dedup,
    acks: &mpsc::UnboundedSender<Vec<String>>,
    response: StreamingPullResponse,
) {
    let mut ack_ids = Vec::with_capacity(response.received_messages.len());
    let mut routes = shared.routes.lock();
    for received in response.received_messages {
        ack_ids.push(received.ack_id);
        let Some(message) = received.message else {
            continue;
        };
        if !seen.insert(&message.message_id) {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(topic) = message.attributes.get(TOPIC_ATTRIBUTE) else {
            continue;
        };
        route(&mut routes, &shared.dropped, topic, message.data);
    }
    drop(routes);
    let _ = acks.send(ack_ids);
}

/// Hand one message to every queue of its logical topic.
fn route(
    routes: &mut super::Routes,
    dropped: &std::sync::atomic::AtomicU64,
    topic: &str,
    data: Bytes,
) {
    let Some(senders) = routes.get_mut(topic) else {
        return;
    };
    senders.retain(|tx| match tx.try_send(data.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    topic,
                    dropped_total = n + 1,
                    "google pubsub transport: subscriber queue full, message dropped"
                );
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if senders.is_empty() {
        routes.remove(topic);
    }
}

/// Forget logical subscriptions whose streams were dropped.
fn prune(shared: &Shared) {
    shared.routes.lock().retain(|_, senders| {
        senders.retain(|tx| !tx.is_closed());
        !senders.is_empty()
    });
}

/// Acknowledge in batches, off the pull's path.
async fn ack_task(
    client: SubscriberClient,
    subscription: String,
    mut rx: mpsc::UnboundedReceiver<Vec<String>>,
    limit: Duration,
) {
    while let Some(mut ack_ids) = rx.recv().await {
        while ack_ids.len() < ACK_BATCH {
            match rx.try_recv() {
                Ok(more) => ack_ids.extend(more),
                Err(_) => break,
            }
        }
        if ack_ids.is_empty() {
            continue;
        }
        let request = AcknowledgeRequest {
            subscription: subscription.clone(),
            ack_ids,
        };
        // A lost acknowledgement means a redelivery, which the deduplication drops.
        if let Err(e) = timed(limit, client.acknowledge(request, Some(no_retry()))).await {
            tracing::debug!(error = %e, "google pubsub transport: acknowledge failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_remembers_a_bounded_window() {
        let mut d = Dedup::new(2);
        assert!(d.insert("1"));
        assert!(!d.insert("1"));
        assert!(d.insert("2"));
        assert!(d.insert("3"));
        assert!(d.insert("1"), "evicted");
        assert!(!d.insert("3"));
        d.clear();
        assert!(d.insert("3"));
    }
}
