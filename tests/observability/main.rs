//! Observability against the real stack: metric values scraped from a worker's `/metrics` after
//! real events, `/readyz` following the broker connection, and the deploy files naming only
//! metrics the worker exports. Each worker binds its own port and counts into its own registry,
//! so the tests run side by side in one process as well as one process each.

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

mod dashboard;
mod deploy;
mod events;
mod readiness;
mod scrape;
