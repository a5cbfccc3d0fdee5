//! Pure domain logic, free of I/O: events, retention policy, ranking, artifact locations and
//! error classification. Most unit tests live here.

pub mod audit;
pub mod classify;
pub mod event;
pub mod location;
pub mod policy;
pub mod ranking;
