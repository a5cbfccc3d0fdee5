//! Test support shared by the integration suites: fixtures that create MLflow experiments, runs
//! and models through the real REST API, and objects in the real S3 store; a worker app on
//! isolated broker names; the RabbitMQ management API; one test's MLflow/S3 world; and waiting
//! until something holds.
#![allow(dead_code)] // Each suite uses a different part of the support code.

pub mod app;
pub mod eventually;
pub mod management;
pub mod mlflow_fixtures;
pub mod pika;
pub mod proxy;
pub mod store_fixtures;
pub mod world;
