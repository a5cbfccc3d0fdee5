//! model-pruner keeps the best N models of each MLflow experiment and deletes the others' files
//! from an S3-compatible bucket, driven by RabbitMQ events.
//!
//! # Layout
//! - [`domain`]: pure logic without I/O: the event contract, retention policy resolution,
//!   ranking, artifact-location resolution, the marking contract with MLflow, run states and
//!   error classification.
//! - [`mlflow`]: the MLflow tracking server's REST API.
//! - [`store`]: the S3-compatible object store (listing and batch deletion).
//! - [`limit`]: the adaptive limit of requests in flight towards MLflow and the store.
//! - [`broker`]: RabbitMQ: connection, topology, confirmed publishing and header names.
//! - [`engine`]: one ranking-and-pruning pass, the step the worker, the CLI and tests all drive.
//! - [`worker`]: the consume loop: per-experiment scheduling, routing by error class, shutdown.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` listener.
//! - [`settings`]: typed settings from `config/default.toml`, a file and the environment.
//! - [`telemetry`]: the tracing subscriber (JSON in production, readable on a terminal).
//! - [`cli`]: the `model-pruner` command line.
//!
//! # Dependency direction
//! Each module uses only modules below it; nothing below knows what is above:
//!
//! ```text
//! cli ─▶ worker ─▶ engine ─▶ mlflow, store ─▶ limit ─▶ metrics ─▶ domain
//!   └──────┴──▶ broker ──────────────────────────────────▶ domain
//! settings ─▶ domain          (every module above may read settings; telemetry reads them)
//! ```
//!
//! `domain` is pure (no I/O, no other module); `metrics` knows labels and counts, not the
//! errors or reports they come from: each error type names its own reason
//! ([`domain::classify::Classified`]) and the worker turns a pass into counts.

pub mod broker;
pub mod cli;
pub mod domain;
pub mod engine;
pub mod limit;
pub mod metrics;
pub mod mlflow;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod worker;
