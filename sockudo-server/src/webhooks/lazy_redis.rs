//! A [`RedisQueue`] that connects on first use, so a node can be built synchronously. A
//! failed connection attempt is retried by the next operation.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sockudo_core::queue::{
    Job, JobId, NackOutcome, Queue, QueueError, QueueStats, RedisQueue, RedisQueueOptions,
};
use sockudo_core::redis_conn::RedisEndpoint;
use tokio::sync::OnceCell;

#[derive(Debug)]
pub(super) struct LazyRedisQueue {
    endpoint: RedisEndpoint,
    /// Key prefix (`{cluster prefix}:queue:`).
    prefix: String,
    queue: OnceCell<RedisQueue>,
}

impl LazyRedisQueue {
    pub(super) fn new(endpoint: RedisEndpoint, prefix: String) -> Self {
        LazyRedisQueue {
            endpoint,
            prefix,
            queue: OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&RedisQueue, QueueError> {
        self.queue
            .get_or_try_init(|| {
                let options = RedisQueueOptions {
                    prefix: self.prefix.clone(),
                    ..RedisQueueOptions::default()
                };
                RedisQueue::connect_with(self.endpoint.clone(), options)
            })
            .await
    }
}

#[async_trait]
impl Queue for LazyRedisQueue {
    async fn enqueue(
        &self,
        queue: &str,
        payload: Bytes,
        delay: Duration,
    ) -> Result<JobId, QueueError> {
        self.get().await?.enqueue(queue, payload, delay).await
    }

    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, QueueError> {
        self.get().await?.claim(queue, consumer, lease, max).await
    }

    async fn ack(&self, queue: &str, id: &JobId) -> Result<bool, QueueError> {
        self.get().await?.ack(queue, id).await
    }

    async fn nack(
        &self,
        queue: &str,
        id: &JobId,
        retry_in: Duration,
        max_attempts: u32,
    ) -> Result<NackOutcome, QueueError> {
        self.get()
            .await?
            .nack(queue, id, retry_in, max_attempts)
            .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.get().await?.stats(queue).await
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, QueueError> {
        self.get().await?.dead_letters(queue, limit).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.get().await?.ping().await
    }
}
