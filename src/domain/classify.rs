//! Error classification: the one place that decides whether a failure is worth retrying, and
//! the few words (`throttled`, `timeout`...) a failure's reason is labelled with.

use std::error::Error as StdError;
use std::fmt;
use std::fmt::Write as _;

/// Every reason [`Classified::reason`] gives, so counters can start each series at zero.
pub const REASONS: [&str; 12] = [
    "throttled",
    "server_error",
    "client_error",
    "timeout",
    "connect",
    "transport",
    "unstable_read",
    "decode",
    "build",
    "key_errors",
    "bad_listing",
    "refused",
];

/// Errors of an external system that know whether retrying can help, and why they failed in a
/// word fit for a label. The error types keep the detail for logs.
pub trait Classified: fmt::Display {
    /// Whether retrying can help.
    fn class(&self) -> ErrorClass;

    /// One of [`REASONS`].
    fn reason(&self) -> &'static str;
}

/// The reason of a failed HTTP answer.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        429 => "throttled",
        408 => "timeout",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

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

/// "a: b: c" from an error and its sources, skipping a source that repeats its parent.
pub fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if text != last {
            let _ = write!(out, ": {text}");
            last = text;
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn a_chain_says_each_cause_once_in_order() {
        let refused = Layer("connection refused", None);
        let repeated = Layer("tcp connect error", Some(Box::new(refused)));
        let tcp = Layer("tcp connect error", Some(Box::new(repeated)));
        let top = Layer("error sending request", Some(Box::new(tcp)));
        assert_eq!(
            chain(&top),
            "error sending request: tcp connect error: connection refused"
        );
    }

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
    fn statuses_map_to_a_few_listed_reasons() {
        for (status, reason) in [
            (400, "client_error"),
            (404, "client_error"),
            (408, "timeout"),
            (429, "throttled"),
            (500, "server_error"),
            (503, "server_error"),
            (599, "server_error"),
        ] {
            assert_eq!(status_reason(status), reason, "{status}");
            assert!(REASONS.contains(&reason));
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
