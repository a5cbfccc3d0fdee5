//! The MLflow tracking server's REST API (`{tracking_uri}/api/2.0/mlflow/...`): experiments,
//! runs, MLflow 3 logged models and registered model versions.
//!
//! The client translates MLflow's protobuf-shaped JSON into the plain structs of [`types`] and
//! every failure into an [`MlflowError`] that knows its [`ErrorClass`](crate::domain::classify::ErrorClass).
//! It never retries: the worker decides that from the class. Public methods open a span with
//! the experiment, run or model id; their errors are recorded at debug level only, since the
//! caller logs them once, classified, with the cause chain.
//!
//! # Layout
//! - `client`: [`MlflowClient`], authentication and the request/response plumbing.
//! - `experiments`, `runs`, `models`: the endpoints, one file per resource family.
//! - [`types`]: the domain-facing structs returned by the client.
//! - `wire`: the JSON shapes MLflow sends, with its quirks (int64 as strings, `"NaN"` metrics).
//! - `error`: [`MlflowError`] and its classification.
//! - `features`: what the server offers (MLflow 2.x has no logged models), learnt and remembered.

mod client;
mod error;
mod experiments;
mod features;
mod models;
mod runs;
pub mod types;
mod wire;

pub use client::MlflowClient;
pub use error::MlflowError;
pub use models::VersionFilter;
pub use types::{Experiment, LoggedModel, ModelVersion, Run, RunFields};
