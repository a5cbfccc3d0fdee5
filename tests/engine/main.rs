//! The pruning engine against the real MLflow tracking server and S3 store: each test creates
//! its own experiment, runs and model files, runs a pass and checks what is left.

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

mod consistency;
mod failures;
mod mlflow2;
mod policies;
mod protection;
mod python_client;
mod retention;
mod safety;
mod stack;
mod world;
