//! The ops commands (`publish`, `dlq`, `audit`) run as the real binary against the real
//! RabbitMQ, MLflow and S3. Each test uses its own exchange, queues and experiment.

#![allow(
    unreachable_pub,
    reason = "a test or bench crate has no public API: `pub` only shares items between its modules"
)]
#![allow(
    clippy::unwrap_used,
    reason = "tests and the bench fail loudly on the unexpected; the lint is for the product"
)]

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod connect;
mod demo;
mod dlq;
mod fleet;
mod helpers;
mod hostile;
mod migrate;
mod mlflow2;
mod output;
mod publish;
