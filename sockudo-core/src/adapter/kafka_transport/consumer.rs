//! The partition readers of [`super::KafkaTransport`]: one task per partition, fetching from
//! its position, routing records to the subscriptions by key, and recovering after outages
//! (see the parent module's docs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::client::Client;
use tokio::sync::mpsc;

use super::{
    bounded, ensure_topic, is_protocol, partition_count, KafkaTransportOptions, Shared,
    FETCH_GRACE, PRUNE_INTERVAL,
};

/// Hand one record to every queue of its logical topic.
fn route(shared: &Shared, topic: &[u8], payload: Bytes) {
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let mut topics = shared.topics.lock();
    let Some(senders) = topics.get_mut(topic) else {
        return;
    };
    senders.retain(|tx| match tx.try_send(payload.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let n = shared.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    topic,
                    dropped_total = n + 1,
                    "kafka transport: subscriber queue full, message dropped"
                );
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if senders.is_empty() {
        topics.remove(topic);
    }
}

pub(super) struct Consumer {
    pub(super) index: usize,
    pub(super) client: Arc<Client>,
    pub(super) consumer: Arc<PartitionClient>,
    pub(super) producer: Arc<PartitionClient>,
    pub(super) offset: i64,
    /// The last record consumed: offset, timestamp (ms) and key, to recognise the log.
    pub(super) last: Option<(i64, i64, Vec<u8>)>,
    /// A fetch failed since the log was last recognised (see [`Consumer::verify`]).
    pub(super) verify: bool,
    pub(super) shared: Arc<Shared>,
    pub(super) opts: KafkaTransportOptions,
}

impl Consumer {
    fn set_up(&self, up: bool) {
        if let Some(flag) = self.shared.partitions_up.get(self.index) {
            let was = flag.swap(up, Ordering::SeqCst);
            if was && !up {
                tracing::warn!(
                    partition = self.index,
                    "kafka transport: partition consumer down; reconnecting"
                );
            } else if !was && up {
                tracing::info!(
                    partition = self.index,
                    offset = self.offset,
                    "kafka transport: partition consumer resumed"
                );
            }
        }
    }

    /// The log no longer holds `self.offset`: restart at its earliest offset.
    async fn reset(&mut self) -> Result<(), String> {
        let earliest = bounded(
            self.opts.connect_timeout,
            self.consumer.get_offset(OffsetAt::Earliest),
        )
        .await?;
        tracing::warn!(
            partition = self.index,
            from = self.offset,
            to = earliest,
            "kafka transport: offset no longer in the log (broker lost data or retention); \
             resuming at the earliest offset"
        );
        self.offset = earliest;
        Ok(())
    }

    /// A request failed although the broker answered. The topic may be gone (a broker
    /// restarted without its data says "unknown topic", or lists no topic at all): create it
    /// again. Or our offset may be outside the log (some brokers answer a fetch there with an
    /// empty response rather than "offset out of range"): restart at the log's start. Returns
    /// the error to report.
    async fn recover(&mut self, e: KafkaError) -> String {
        if matches!(e, KafkaError::Connection(_) | KafkaError::Request(_)) {
            return e.to_string();
        }
        match self.repair().await {
            Some(failed) => format!("{e}; {failed}"),
            None => e.to_string(),
        }
    }

    /// See [`Consumer::recover`]; also after a fetch that timed out (a broker may hold a fetch
    /// for a missing topic or an offset beyond its log instead of answering).
    async fn repair(&mut self) -> Option<String> {
        let count = partition_count(&self.client, &self.opts).await;
        tracing::debug!(
            partition = self.index,
            ?count,
            "kafka transport: partitions in the metadata"
        );
        if matches!(count, Ok(0)) {
            if let Err(create) = ensure_topic(&self.client, &self.shared.ensure, &self.opts).await {
                return Some(format!("creating the topic again failed: {create}"));
            }
        }
        let t = self.opts.connect_timeout.min(Duration::from_secs(1));
        let range = async {
            let earliest = bounded(t, self.consumer.get_offset(OffsetAt::Earliest)).await?;
            let latest = bounded(t, self.consumer.get_offset(OffsetAt::Latest)).await?;
            Ok::<_, String>((earliest, latest))
        };
        let range = range.await;
        tracing::debug!(
            partition = self.index,
            ?range,
            "kafka transport: offsets of the log"
        );
        if let Ok((earliest, latest)) = range {
            if self.offset < earliest || self.offset > latest {
                tracing::warn!(
                    partition = self.index,
                    from = self.offset,
                    to = earliest,
                    "kafka transport: offset outside the log (broker lost data or retention); \
                     resuming at the earliest offset"
                );
                self.offset = earliest;
                self.last = None;
            }
        }
        None
    }

    /// After an outage: is this still the log we were reading? A broker that lost its data
    /// (or a partition whose log was replaced) may already hold new records at and beyond our
    /// offset, which offsets alone cannot tell. The record we consumed last must still be
    /// there, unchanged (offset, timestamp and key); otherwise resume at the log's start.
    async fn verify(&mut self) -> Result<(), String> {
        let Some((offset, timestamp, key)) = self.last.clone() else {
            return Ok(());
        };
        let fetched = tokio::time::timeout(
            self.opts.connect_timeout,
            self.consumer.fetch_records(offset, 1..(1 << 20), 0),
        )
        .await
        .map_err(|_| "fetch timed out".to_owned())?;
        let same = match fetched {
            Ok((records, _)) => records.first().is_some_and(|r| {
                r.offset == offset
                    && r.record.timestamp.timestamp_millis() == timestamp
                    && r.record.key.as_deref() == Some(key.as_slice())
            }),
            Err(e) if is_protocol(&e, ProtocolError::OffsetOutOfRange) => false,
            // An answer without our partition for a record the log's offsets say it holds
            // (Tansu 0.6 after a restart that lost its data, for a log re-created by its
            // automatic topic creation, answers every such fetch like that): the record
            // cannot be checked, so this is not a log we recognise. Read it from its start.
            Err(KafkaError::InvalidResponse(_)) => false,
            Err(e) => {
                let before = self.offset;
                let error = self.recover(e).await;
                if self.offset != before {
                    return Ok(()); // reset: nothing left to recognise
                }
                return Err(error);
            }
        };
        if !same {
            self.reset().await?;
            self.last = None;
        }
        Ok(())
    }

    /// One fetch; `Err` when the partition is unreachable.
    async fn step(&mut self) -> Result<(), String> {
        if self.verify {
            self.verify().await?;
            self.verify = false;
        }
        let wait = i32::try_from(self.opts.fetch_wait.as_millis()).unwrap_or(i32::MAX);
        let max_bytes = i32::try_from(self.opts.max_message_bytes.saturating_mul(4))
            .unwrap_or(i32::MAX)
            .max(1 << 20);
        let fetched = tokio::time::timeout(
            self.opts.fetch_wait + FETCH_GRACE,
            self.consumer.fetch_records(self.offset, 1..max_bytes, wait),
        )
        .await;
        let (records, high_watermark) = match fetched {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if is_protocol(&e, ProtocolError::OffsetOutOfRange) => {
                return self.reset().await;
            }
            Ok(Err(e)) => return Err(self.recover(e).await),
            Err(_) => {
                let failed = self.repair().await.unwrap_or_default();
                return Err(format!("fetch timed out {failed}"));
            }
        };
        if records.is_empty() && high_watermark < self.offset {
            // A broker that answers "nothing yet" below our position lost its log.
            return self.reset().await;
        }
        self.set_up(true);
        if !self.shared.publish_ok.load(Ordering::SeqCst)
            && bounded(
                self.opts.connect_timeout,
                self.producer.get_offset(OffsetAt::Latest),
            )
            .await
            .is_ok()
        {
            self.shared.publish_ok.store(true, Ordering::SeqCst);
        }
        for r in records {
            if r.offset < self.offset {
                continue;
            }
            self.offset = r.offset + 1;
            if let (Some(key), Some(value)) = (r.record.key, r.record.value) {
                route(&self.shared, &key, Bytes::from(value));
                self.last = Some((r.offset, r.record.timestamp.timestamp_millis(), key));
            }
        }
        Ok(())
    }
}

pub(super) async fn consume(mut c: Consumer) {
    let mut backoff = c.opts.reconnect_min;
    let mut pruned = tokio::time::Instant::now();
    loop {
        if c.index == 0 && pruned.elapsed() >= PRUNE_INTERVAL {
            // Queues of dropped streams whose topic stayed quiet since.
            pruned = tokio::time::Instant::now();
            c.shared.topics.lock().retain(|_, senders| {
                senders.retain(|tx| !tx.is_closed());
                !senders.is_empty()
            });
        }
        match c.step().await {
            Ok(()) => backoff = c.opts.reconnect_min,
            Err(e) => {
                c.set_up(false);
                c.verify = true;
                tracing::debug!(partition = c.index, offset = c.offset, error = %e, "kafka transport: fetch failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(c.opts.reconnect_max);
            }
        }
    }
}
