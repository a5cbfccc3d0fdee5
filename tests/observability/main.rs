//! Observability against the real stack: metric values scraped from a worker's `/metrics` after
//! real events, `/readyz` following the broker connection, and the deploy files naming only
//! metrics the worker exports. The registry is process-wide, so tests assert deltas, and each
//! test asserts on label sets no other test of this crate touches.

#[path = "../support/mod.rs"]
mod support;

mod dashboard;
mod deploy;
mod events;
mod readiness;
mod scrape;
