//! RabbitMQ: the connection, the topology, confirmed publishing and the header names. The
//! worker consumes through it; the ops CLI publishes and replays through it.

pub mod headers;
mod topology;

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event,
};

pub use topology::{BINDINGS, DelayQueue, Origin, Topology, delay_queue_name};

use crate::settings::BrokerSettings;

/// AMQP delivery mode of messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;
/// Content type of every event body.
pub const JSON: &str = "application/json";

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The cause is part of the message (not a separate `source`), so a chain printed with
    /// `{:#}` says it once.
    #[error("RabbitMQ: {op}: {cause}")]
    Amqp {
        /// The AMQP operation that failed, e.g. `basic.publish` or `declare topology`.
        op: &'static str,
        /// lapin's error; a channel or connection the broker closed carries its reply code and
        /// text (see [`BrokerError::soft`]).
        cause: lapin::Error,
    },
    /// The connection could not be opened (TCP, TLS or the AMQP handshake, credentials
    /// included).
    #[error("RabbitMQ at {url}: cannot connect: {cause}")]
    Connect {
        /// `broker.url` with its credentials redacted.
        url: String,
        /// Why lapin could not connect: refused, unreachable, or the broker turned it down.
        cause: lapin::Error,
    },
    /// `broker.url` is not an AMQP URI lapin can use (`url` has its credentials redacted).
    #[error("broker.url {url} is not an AMQP URI: {reason}")]
    Url {
        /// `broker.url` with its credentials redacted.
        url: String,
        /// The URI parser's complaint, any copy of the URL in it replaced by "the URL".
        reason: String,
    },
    /// The broker did not answer within `broker.connect_timeout` (connecting, declaring,
    /// consuming, closing) or `broker.confirm_timeout` (a publisher confirm).
    #[error("RabbitMQ: {op}: no answer within {after:?}")]
    Timeout {
        /// The operation that was waited for, e.g. `connect` or `publisher confirm`.
        op: &'static str,
        /// The time limit that ran out.
        after: Duration,
    },
    /// The worker gave up on a copy: a resource alarm kept the connection blocked until
    /// shortly before the delivery's ack deadline.
    #[error("RabbitMQ has blocked the publishing connection (a memory or disk alarm)")]
    Blocked,
    /// The worker found a connection closed; its session ends and a new one reconnects.
    #[error("RabbitMQ closed the {connection} connection")]
    Closed {
        /// Which connection, as it reads in the message: `publishing` (the one copies go out on).
        connection: &'static str,
    },
    /// An earlier copy came back unroutable, so one of the worker's own queues is gone; the
    /// session ends and the next one declares the topology again.
    #[error("a copy to one of the worker's own queues was unroutable: declaring them again")]
    TopologyGone,
    /// A queue whose messages were to be counted does not exist.
    #[error("RabbitMQ has no queue {queue:?}")]
    NoQueue {
        /// The name looked up, e.g. `broker.dead_letter_queue` for the `dlq` commands.
        queue: String,
    },
    /// The worker's consumer stream ended: the broker cancelled it, e.g. because its queue was
    /// deleted.
    #[error("RabbitMQ cancelled the consumer of queue {queue:?} (was the queue deleted?)")]
    ConsumerCancelled {
        /// The queue the worker consumed (`broker.work_queue`).
        queue: String,
    },
    /// The broker refused a publication; for the worker's copies, the target queue is full
    /// (reject-publish overflow).
    #[error(
        "RabbitMQ refused (nacked) the message published to {exchange:?} with key {routing_key:?}"
    )]
    Nacked {
        /// The exchange published to; empty for the default exchange (straight into a queue).
        exchange: String,
        /// The routing key; the queue's name when published through the default exchange.
        routing_key: String,
    },
    /// The broker returned a mandatory publication that no queue is bound for.
    #[error(
        "RabbitMQ could not route the message published to {exchange:?} with key {routing_key:?}: {reply}"
    )]
    Unroutable {
        /// The exchange published to; empty for the default exchange (straight into a queue).
        exchange: String,
        /// The routing key; the queue's name when published through the default exchange.
        routing_key: String,
        /// The broker's reply code and text from basic.return, e.g. `312 NO_ROUTE`.
        reply: String,
    },
}

impl BrokerError {
    /// The soft error (a channel closed by the broker) this is, if any.
    pub fn soft(&self) -> Option<AMQPSoftError> {
        let (BrokerError::Amqp { cause, .. } | BrokerError::Connect { cause, .. }) = self else {
            return None;
        };
        match cause.kind() {
            lapin::ErrorKind::ProtocolError(e) => match e.kind() {
                AMQPErrorKind::Soft(soft) => Some(soft.clone()),
                AMQPErrorKind::Hard(_) => None,
            },
            _ => None,
        }
    }

    /// The broker's reply text when it closed the channel or connection (for PRECONDITION_FAILED
    /// on a queue: the first argument that differs, with both values).
    pub fn reply_text(&self) -> Option<String> {
        let (BrokerError::Amqp { cause, .. } | BrokerError::Connect { cause, .. }) = self else {
            return None;
        };
        match cause.kind() {
            lapin::ErrorKind::ProtocolError(e) => Some(e.get_message().to_string()),
            _ => None,
        }
    }

    /// RabbitMQ refused the user a permission (ACCESS_REFUSED): the broker's text names the
    /// resource and the kind of access.
    pub fn is_access_refused(&self) -> bool {
        self.soft() == Some(AMQPSoftError::ACCESSREFUSED)
    }

    /// The broker refused a declaration (PRECONDITION_FAILED: a queue exists with other
    /// arguments) or an access (ACCESS_REFUSED): reconnecting will not help, the configuration
    /// must change.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.soft(),
            Some(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED)
        )
    }
}

/// The properties of a copy of a message the worker or the ops tools publish: the original
/// content type, ids, timestamp and app id, persistent, with `headers`. Nothing else (an
/// expiration, a user id, a priority) is carried over.
pub fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type(original.content_type().clone().unwrap_or(JSON.into()))
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

/// The properties of a copy that stands for the original message itself (a replayed or moved
/// dead letter): [`copy_properties`] plus the type, priority, reply-to and content encoding,
/// and the expiration if `keep_expiration`.
pub fn faithful_properties(
    original: &BasicProperties,
    headers: FieldTable,
    keep_expiration: bool,
) -> BasicProperties {
    let mut p = copy_properties(original, headers);
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.expiration().as_ref().filter(|_| keep_expiration) {
        p = p.with_expiration(v.clone());
    }
    p
}

fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |cause| BrokerError::Amqp { op, cause }
}

/// Runs `call` (the broker operation `op`) for at most `limit`.
async fn within<T>(
    op: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(BrokerError::Timeout { op, after: limit }))
}

/// One connection with a channel in publisher-confirm mode. Every call is bounded in time:
/// opening and declaring by `broker.connect_timeout`, a publication and its confirm by
/// `broker.confirm_timeout`.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    connect_timeout: Duration,
    confirm_timeout: Duration,
}

impl Broker {
    /// Connects and opens the publishing channel. `name` shows in the management UI.
    pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        within("connect", settings.connect_timeout, async {
            // Parsed here rather than by lapin, whose error quotes the whole URL, password
            // included.
            let uri: AMQPUri =
                settings
                    .url
                    .expose()
                    .as_str()
                    .parse()
                    .map_err(|reason: String| BrokerError::Url {
                        url: settings.url.to_string(),
                        // The parser quotes the whole URL in some messages: never its secret.
                        reason: reason.replace(settings.url.expose().as_str(), "the URL"),
                    })?;
            let connection = Connection::connect_uri(uri, properties)
                .await
                .map_err(|cause| BrokerError::Connect {
                    url: settings.url.to_string(),
                    cause,
                })?;
            let publisher = connection
                .create_channel()
                .await
                .map_err(amqp("open channel"))?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp("confirm.select"))?;
            Ok(Broker {
                connection,
                publisher,
                connect_timeout: settings.connect_timeout,
                confirm_timeout: settings.confirm_timeout,
            })
        })
        .await
    }

    /// Declares the exchange and queues (idempotent).
    pub async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        within("declare topology", self.connect_timeout, async {
            topology
                .declare(&self.publisher)
                .await
                .map_err(amqp("declare topology"))
        })
        .await
    }

    /// `broker.confirm_timeout`: the longest a publication waits for its confirm.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// Whether the connection and its publishing channel are still open.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Whether RabbitMQ has blocked this connection (a memory or disk alarm); lapin sends
    /// nothing while it is.
    pub fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// The connection's events: errors (the connection is gone), and RabbitMQ blocking or
    /// unblocking it under a resource alarm.
    pub fn events(&self) -> impl futures::Stream<Item = Event> + Send + 'static {
        self.connection.events_listener()
    }

    /// Publishes an event body to `exchange` with confirms and the mandatory flag: returns once
    /// the broker has taken responsibility for the message, and fails if nothing is bound to
    /// `routing_key`. `headers` are added to the message as given.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_content_type(JSON.into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        self.publish_with(exchange, routing_key, body, properties)
            .await
    }

    /// Publishes straight into `queue` through the default exchange, with confirms and the
    /// mandatory flag, keeping `properties` (made persistent).
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.publish_with("", queue, body, properties.with_delivery_mode(PERSISTENT))
            .await
    }

    /// Publishes with `properties` as given, the mandatory flag and a publisher confirm: an
    /// unroutable or nacked message is an error, and so is a confirm that does not come within
    /// `broker.confirm_timeout` (a connection blocked by a resource alarm).
    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirmation = within("publisher confirm", self.confirm_timeout, async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .map_err(amqp("basic.publish"))?
                .await
                .map_err(amqp("publisher confirm"))
        })
        .await?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(BrokerError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                reply: format!("{} {}", returned.reply_code, returned.reply_text),
            }),
            Confirmation::Nack(_) => Err(BrokerError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// Opens a channel with `prefetch` unacked deliveries at most and consumes `queue` with
    /// manual acks.
    pub async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        within("basic.consume", self.connect_timeout, async {
            let channel = self
                .connection
                .create_channel()
                .await
                .map_err(amqp("open channel"))?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp("basic.qos"))?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    consumer_tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp("basic.consume"))?;
            Ok((channel, consumer))
        })
        .await
    }

    /// Messages ready in `queue` (not those delivered and unacked); an error if it does not
    /// exist.
    pub async fn ready_messages(&self, queue: &str) -> Result<u32, BrokerError> {
        match self.lookup(queue).await? {
            Some((ready, _)) => Ok(ready),
            None => Err(BrokerError::NoQueue {
                queue: queue.to_owned(),
            }),
        }
    }

    /// Messages ready in `queue` and its consumers, or `None` if it does not exist. On a
    /// channel of its own, which the broker closes when the queue is missing.
    pub async fn lookup(&self, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let channel = self.open_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("passive queue.declare"));
        match declared {
            Ok(q) => {
                let _ = channel.close(200, "OK".into()).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(e) if e.soft() == Some(AMQPSoftError::NOTFOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new channel on this connection, for a call that may close it (a declaration the
    /// broker can refuse).
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        within("open channel", self.connect_timeout, async {
            self.connection
                .create_channel()
                .await
                .map_err(amqp("open channel"))
        })
        .await
    }

    /// The publishing channel, for one-off operations (basic.get, queue.delete...).
    pub fn channel(&self) -> &Channel {
        &self.publisher
    }

    /// Closes the connection, waiting at most `broker.connect_timeout` for the broker's answer;
    /// unacked deliveries return to their queues.
    pub async fn close(&self) -> Result<(), BrokerError> {
        within("close", self.connect_timeout, async {
            self.connection
                .close(200, "OK".into())
                .await
                .map_err(amqp("close"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[tokio::test]
    async fn a_url_lapin_cannot_use_is_named_without_its_secret() {
        let mut settings = Settings::load(None).unwrap().broker;
        for url in [
            "amqp:guest:hunter2@rabbit/%2f",
            "http://guest:hunter2@rabbit/%2f",
        ] {
            settings.url = url.parse().unwrap();
            let error = match Broker::connect(&settings, "test").await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} connected"),
            };
            assert!(error.starts_with("broker.url "), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}
