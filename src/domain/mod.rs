//! Pure domain logic, free of I/O: events, retention policy, ranking, artifact locations, the
//! marking contract with MLflow, error classification, the one backoff, and the types for
//! times ([`time::EpochMs`]) and sizes ([`size::Bytes`]). Most unit tests live here.

pub mod adaptive;
pub mod audit;
pub mod backoff;
pub mod classify;
pub mod event;
pub mod location;
pub mod marks;
pub mod policy;
pub mod ranking;
pub mod run;
pub mod size;
pub mod time;
