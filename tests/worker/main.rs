//! The worker against the real RabbitMQ (and MLflow and S3 where noted): routing by error
//! class, topology, shutdown, reconnection, and end-to-end pruning under concurrency, crashes
//! and store faults. Each test uses its own exchange, queues and experiment.

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

mod broker_wide;
mod burst;
mod crash;
mod faults;
mod grace;
mod helpers;
mod mlflow2;
mod outage;
mod permissions;
mod reconnect;
mod restart;
mod routing;
mod schemas;
mod shutdown;
mod topology;
