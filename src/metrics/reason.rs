//! Why a call failed, in a few words fit for a label: `throttled`, `server_error`, `timeout`,
//! `connect`, `transport`... The error types keep the detail for logs.

use crate::mlflow::MlflowError;
use crate::store::{Reason, StoreError};

/// Every reason the functions below give, so the retry counter can start each series at zero.
pub const REASONS: [&str; 11] = [
    "throttled",
    "server_error",
    "client_error",
    "timeout",
    "connect",
    "transport",
    "decode",
    "build",
    "key_errors",
    "bad_listing",
    "refused",
];

/// S3 codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// The reason of a failed MLflow call.
pub fn mlflow_reason(error: &MlflowError) -> &'static str {
    match error {
        MlflowError::Status { status, .. } => by_status(*status),
        MlflowError::Timeout { .. } => "timeout",
        MlflowError::Connect { .. } => "connect",
        MlflowError::Transport { .. } => "transport",
        MlflowError::Decode { .. } => "decode",
        MlflowError::Build(_) => "build",
    }
}

/// The reason of a failed store call.
pub fn store_reason(error: &StoreError) -> &'static str {
    if error.code().is_some_and(|c| THROTTLING_CODES.contains(&c)) {
        return "throttled";
    }
    match (&*error.reason, error.status()) {
        (Reason::KeysNotDeleted { .. }, _) => "key_errors",
        (Reason::BadListing { .. }, _) => "bad_listing",
        (Reason::EmptyPrefix, _) => "refused",
        (Reason::Request { .. }, Some(status)) => by_status(status),
        (Reason::Request { .. }, None) => "transport",
    }
}

fn by_status(status: u16) -> &'static str {
    match status {
        429 => "throttled",
        408 => "timeout",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reason_is_listed() {
        for status in [400, 404, 408, 429, 500, 503, 599] {
            assert!(REASONS.contains(&by_status(status)), "{status}");
        }
    }

    #[test]
    fn statuses_map_to_a_few_reasons() {
        let status = |status| MlflowError::Status {
            operation: "runs/search",
            target: "experiment 1".into(),
            status,
            error_code: None,
            message: String::new(),
        };
        assert_eq!(mlflow_reason(&status(429)), "throttled");
        assert_eq!(mlflow_reason(&status(503)), "server_error");
        assert_eq!(mlflow_reason(&status(408)), "timeout");
        assert_eq!(mlflow_reason(&status(404)), "client_error");
        let timeout = MlflowError::Timeout {
            operation: "runs/search",
            target: "experiment 1".into(),
        };
        assert_eq!(mlflow_reason(&timeout), "timeout");
    }
}
