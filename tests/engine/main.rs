//! The pruning engine against the real MLflow tracking server and S3 store: each test creates
//! its own experiment, runs and model files, runs a pass and checks what is left.

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
