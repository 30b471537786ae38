//! The connection side of [`super::RabbitmqTransport`]: opening a connection with its
//! topology, and the task that owns it (routing deliveries, binding and unbinding topics,
//! reconnecting). See the transport's module docs for the behaviour.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::rabbitmq_transport::{RabbitmqTransportOptions, Shared};

/// A request to the connection task.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe {
        /// The topic's routing key.
        key: String,
        tx: mpsc::Sender<Bytes>,
        /// `Ok` once the broker confirmed the binding (`Queue.BindOk`).
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Each routing key's subscription queues.
type Topics = HashMap<String, Vec<mpsc::Sender<Bytes>>>;

/// One live connection with its channels, queue and consumer.
pub(super) struct Link {
    conn: Connection,
    /// Confirm-mode channel for publishing (handed to the transport).
    pub publisher: Channel,
    /// The channel of the queue, its bindings and its consumer.
    subscriber: Channel,
    queue: ShortString,
    consumer: Consumer,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected()
            && self.publisher.status().connected()
            && self.subscriber.status().connected()
    }

    async fn bind(&self, exchange: &str, key: &str) -> lapin::Result<()> {
        self.subscriber
            .queue_bind(
                self.queue.clone(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    async fn unbind(&self, exchange: &str, key: &str) -> lapin::Result<()> {
        self.subscriber
            .queue_unbind(
                self.queue.clone(),
                exchange.into(),
                key.into(),
                FieldTable::default(),
            )
            .await
    }
}

async fn bounded<T>(
    d: Duration,
    f: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", d.as_millis())),
    }
}

/// Connect, declare the exchange and this node's queue, bind `keys`, start consuming; all
/// within the connect timeout.
pub(super) async fn open(
    uri: &AMQPUri,
    opts: &RabbitmqTransportOptions,
    keys: impl Iterator<Item = &String>,
) -> Result<Link, String> {
    let deadline = opts.connect_timeout;
    let props = ConnectionProperties::default().with_connection_name("sockudo".into());
    let conn = bounded(deadline, Connection::connect_uri(uri.clone(), props)).await?;
    let publisher = bounded(deadline, conn.create_channel()).await?;
    bounded(
        deadline,
        publisher.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    bounded(
        deadline,
        publisher.exchange_declare(
            opts.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: false,
                auto_delete: false,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let subscriber = bounded(deadline, conn.create_channel()).await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(opts.broker_backlog.max(1))),
    );
    let queue = bounded(
        deadline,
        subscriber.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                durable: false,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        ),
    )
    .await?
    .name()
    .clone();
    let consumer = bounded(
        deadline,
        subscriber.basic_consume(
            queue.clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let link = Link {
        conn,
        publisher,
        subscriber,
        queue,
        consumer,
    };
    for key in keys {
        bounded(deadline, link.bind(&opts.exchange, key)).await?;
    }
    Ok(link)
}

/// Hand one delivery to every queue of its routing key; returns the key when it is left
/// without subscribers (to unbind).
fn route(topics: &mut Topics, dropped: &AtomicU64, key: &str, payload: Vec<u8>) -> Option<String> {
    let senders = topics.get_mut(key)?;
    let bytes = Bytes::from(payload);
    senders.retain(|tx| match tx.try_send(bytes.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    topic = key,
                    dropped_total = n + 1,
                    "rabbitmq transport: subscriber queue full, message dropped"
                );
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if senders.is_empty() {
        topics.remove(key);
        return Some(key.to_owned());
    }
    None
}

/// Drop closed subscriptions; returns the keys left without any (to unbind).
fn prune(topics: &mut Topics) -> Vec<String> {
    let mut gone = Vec::new();
    topics.retain(|key, senders| {
        senders.retain(|tx| !tx.is_closed());
        if senders.is_empty() {
            gone.push(key.clone());
        }
        !senders.is_empty()
    });
    gone
}

/// A subscription asked for while disconnected is refused.
fn refuse(cmd: Command) {
    let Command::Subscribe { done, .. } = cmd;
    let _ = done.send(Err("disconnected from RabbitMQ".to_owned()));
}

/// The connection task: serve `link` until it fails, then reconnect (see the module docs).
pub(super) async fn run(
    link: Link,
    uri: AMQPUri,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    opts: RabbitmqTransportOptions,
) {
    let mut topics: Topics = HashMap::new();
    let mut backoff = opts.reconnect_min;
    let mut current = Some(link);
    loop {
        let mut link = match current.take() {
            Some(link) => link,
            None => {
                // Wait out the back-off, refusing subscriptions meanwhile.
                let until = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        cmd = commands.recv() => match cmd {
                            Some(cmd) => refuse(cmd),
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(opts.reconnect_max);
                prune(&mut topics);
                match open(&uri, &opts, topics.keys()).await {
                    Ok(link) => {
                        *shared.publisher.lock() = Some(link.publisher.clone());
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        shared.healthy.store(true, Ordering::SeqCst);
                        tracing::info!(
                            topics = topics.len(),
                            "rabbitmq transport: connection restored, bindings re-established"
                        );
                        link
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "rabbitmq transport: reconnect failed; retrying");
                        continue;
                    }
                }
            }
        };
        backoff = opts.reconnect_min;
        let mut check = tokio::time::interval(opts.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let reason = loop {
            tokio::select! {
                delivery = link.consumer.next() => match delivery {
                    Some(Ok(d)) => {
                        if let Some(gone) = route(&mut topics, &shared.dropped, d.routing_key.as_str(), d.data) {
                            // Inline: a bind of the same key issued next must reach the
                            // broker after this unbind, never before it.
                            if let Err(e) = bounded(opts.connect_timeout, link.unbind(&opts.exchange, &gone)).await {
                                break format!("unbind failed: {e}");
                            }
                        }
                    }
                    Some(Err(e)) => break format!("consumer failed: {e}"),
                    None => break "consumer cancelled by the broker".to_owned(),
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Subscribe { key, tx, done }) => {
                        let new = !topics.contains_key(&key);
                        topics.entry(key.clone()).or_default().push(tx);
                        let r = if new {
                            bounded(opts.connect_timeout, link.bind(&opts.exchange, &key)).await
                        } else {
                            Ok(())
                        };
                        // Registered either way (re-bound on reconnection for long-lived
                        // streams), but the caller learns it is not confirmed.
                        let _ = done.send(r.clone().map_err(|e| format!("bind failed: {e}")));
                        if let Err(e) = r {
                            break format!("bind failed: {e}");
                        }
                    }
                    None => return,
                },
                _ = check.tick() => {
                    if !link.alive() {
                        break "connection or channel closed".to_owned();
                    }
                    let blocked = link.conn.status().blocked();
                    if shared.blocked.swap(blocked, Ordering::SeqCst) != blocked {
                        if blocked {
                            tracing::warn!("rabbitmq transport: the broker blocks publishing (memory or disk alarm)");
                        } else {
                            tracing::info!("rabbitmq transport: the broker accepts publishing again");
                        }
                    }
                    // Topics whose last stream was dropped and that stayed quiet since.
                    let mut failed = None;
                    for key in prune(&mut topics) {
                        if let Err(e) = bounded(opts.connect_timeout, link.unbind(&opts.exchange, &key)).await {
                            failed = Some(format!("unbind failed: {e}"));
                            break;
                        }
                    }
                    if let Some(reason) = failed {
                        break reason;
                    }
                }
            }
        };
        shared.healthy.store(false, Ordering::SeqCst);
        shared.blocked.store(false, Ordering::SeqCst);
        *shared.publisher.lock() = None;
        tracing::warn!(reason = %reason, "rabbitmq transport: connection lost; reconnecting");
        // Best effort: the broker may already be gone.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            link.conn.close(200, "reconnecting".into()),
        )
        .await;
    }
}
