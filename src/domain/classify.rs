//! Error classification: the one place that decides whether a failure is worth retrying.

use std::fmt;

/// What a failure means for the event that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Worth retrying: 5xx, 429, timeouts, dropped or refused connections.
    Transient,
    /// Retrying cannot help: other 4xx, bad input, refused locations, policy violations.
    Permanent,
}

impl ErrorClass {
    /// Low-cardinality name used in logs, metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// Classifies an HTTP status of a failed response: 5xx, 429 and 408 are transient.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            408 | 429 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_throttling_and_request_timeouts_are_transient() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                ErrorClass::from_http_status(status),
                ErrorClass::Transient,
                "{status}"
            );
        }
    }

    #[test]
    fn other_client_errors_are_permanent() {
        for status in [400, 401, 403, 404, 409, 410, 422, 200, 301] {
            assert_eq!(
                ErrorClass::from_http_status(status),
                ErrorClass::Permanent,
                "{status}"
            );
        }
    }
}
