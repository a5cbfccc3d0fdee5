//! What can go wrong talking to the store, and whether trying again can help.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::domain::classify::{Classified, ErrorClass, chain, status_reason};

/// The SDK error behind a failed request.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// S3 error codes worth retrying whatever the HTTP status (per-key DeleteObjects errors carry
/// no status, and S3 answers an idle upload with `400 RequestTimeout`).
const TRANSIENT_CODES: &[&str] = &[
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// S3 error codes asking the client to send fewer requests.
const OVERLOAD_CODES: &[&str] = &[
    "SlowDown",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// A per-key DeleteObjects error meaning the key is already gone: a success.
const ALREADY_GONE: &str = "NoSuchKey";

/// A failed store operation: what was done where, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "S3 {operation} in bucket {bucket} under {} failed: {reason}",
    shown(prefix)
)]
pub struct StoreError {
    /// `ListObjectsV2` or `DeleteObjects`.
    pub operation: &'static str,
    /// The bucket the request went to.
    pub bucket: String,
    /// The folder listed, or for DeleteObjects the folder the batch's keys have in common.
    pub prefix: String,
    /// Boxed: errors stay small on the happy path.
    pub reason: Box<Reason>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// A request failed as a whole: no answer, a garbled one, or an error response.
    #[error("{detail}")]
    Request {
        /// Transient or permanent, from the SDK error kind, the HTTP status and the S3 code.
        class: ErrorClass,
        /// HTTP status of the error response, when the store answered.
        status: Option<u16>,
        /// S3 error code (`SlowDown`, `AccessDenied`, `NoSuchBucket`), when the store answered.
        code: Option<String>,
        /// A timeout, or an answer asking for fewer requests ([`StoreError::is_overload`]).
        overload: bool,
        /// Status, code and message, or the transport failure with its causes.
        detail: String,
        /// The SDK error. Not `source()`: `detail` already renders it, and a cause chain would
        /// print it twice.
        cause: Cause,
    },
    /// DeleteObjects answered, but could not delete some keys.
    #[error("{failed} key(s) not deleted, first {key}: {code}: {message}")]
    KeysNotDeleted {
        /// The first key that failed.
        key: String,
        /// The first failed key's S3 error code, e.g. `AccessDenied`.
        code: String,
        /// The store's message for the first failed key.
        message: String,
        /// How many keys of the request failed.
        failed: usize,
        /// Transient only when every failed key's code is worth retrying (e.g. `SlowDown`).
        class: ErrorClass,
    },
    /// ListObjectsV2 answered with a page S3 never sends: keys out of order, or an empty page
    /// announcing more. Paging on would skip keys or never end.
    #[error("the listing is unusable: {detail}")]
    BadListing {
        /// What was wrong with the page, e.g. the key listed out of order.
        detail: String,
    },
    /// Refused without a request: an empty prefix would list (and so delete) the whole bucket.
    #[error("refused: an empty prefix would cover the whole bucket")]
    EmptyPrefix,
}

impl StoreError {
    pub(super) fn new(operation: &'static str, bucket: &str, prefix: &str, reason: Reason) -> Self {
        StoreError {
            operation,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            reason: Box::new(reason),
        }
    }

    /// The request timed out, or the store asked for fewer requests: the worker should send
    /// fewer at once ([`crate::limit`]).
    pub fn is_overload(&self) -> bool {
        matches!(&*self.reason, Reason::Request { overload: true, .. })
    }

    /// Whether trying again later can help.
    pub fn class(&self) -> ErrorClass {
        match &*self.reason {
            Reason::Request { class, .. } | Reason::KeysNotDeleted { class, .. } => *class,
            Reason::BadListing { .. } | Reason::EmptyPrefix => ErrorClass::Permanent,
        }
    }

    /// The S3 error code, when the store answered with one.
    pub fn code(&self) -> Option<&str> {
        match &*self.reason {
            Reason::Request { code, .. } => code.as_deref(),
            Reason::KeysNotDeleted { code, .. } => Some(code),
            Reason::BadListing { .. } | Reason::EmptyPrefix => None,
        }
    }

    /// The HTTP status of the error response, when the store answered with one.
    pub fn status(&self) -> Option<u16> {
        match &*self.reason {
            Reason::Request { status, .. } => *status,
            Reason::KeysNotDeleted { .. } | Reason::BadListing { .. } | Reason::EmptyPrefix => None,
        }
    }

    /// Wraps an SDK error of `operation` on `bucket`/`prefix`.
    pub(super) fn request<E>(
        operation: &'static str,
        bucket: &str,
        prefix: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let (class, status) = classify(&err);
        let code = err.code().map(str::to_owned);
        let overload = matches!(err, SdkError::TimeoutError(_))
            || status.is_some_and(crate::domain::adaptive::is_overload_status)
            || code.as_deref().is_some_and(|c| OVERLOAD_CODES.contains(&c));
        let detail = match (&err, status) {
            (SdkError::ServiceError(_), Some(status)) => format!(
                "HTTP {status} {}: {}",
                code.as_deref().unwrap_or("(no error code)"),
                err.message().unwrap_or("(no message)")
            ),
            _ => chain(&err),
        };
        let reason = Reason::Request {
            class,
            status,
            code,
            overload,
            detail,
            cause: Box::new(err),
        };
        StoreError::new(operation, bucket, prefix, reason)
    }
}

/// The prefix for messages; an empty one would read as a gap.
fn shown(prefix: &str) -> &str {
    if prefix.is_empty() {
        "(empty prefix)"
    } else {
        prefix
    }
}

/// vector's AWS retry logic: timeouts, failed connections and garbled responses are transient,
/// requests that cannot be built are permanent, error responses go by status and code.
fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> (ErrorClass, Option<u16>) {
    let status = err.raw_response().map(|raw| raw.status().as_u16());
    let class = match err {
        SdkError::ConstructionFailure(_) => ErrorClass::Permanent,
        // A "user" dispatch failure is a request the HTTP client refused to send.
        SdkError::DispatchFailure(failure) if failure.is_user() => ErrorClass::Permanent,
        SdkError::ServiceError(_) => match status {
            Some(_) if err.code().is_some_and(is_transient_code) => ErrorClass::Transient,
            Some(status) => ErrorClass::from_http_status(status),
            None => ErrorClass::Transient,
        },
        // Timeouts, dispatch failures, response errors, and kinds added later.
        _ => ErrorClass::Transient,
    };
    (class, status)
}

/// Whether an S3 error code says "try again later".
pub(super) fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Whether a per-key DeleteObjects error means the key is already gone.
pub(super) fn is_already_gone(code: Option<&str>) -> bool {
    code == Some(ALREADY_GONE)
}

/// S3 codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
];

impl Classified for StoreError {
    fn class(&self) -> ErrorClass {
        StoreError::class(self)
    }

    fn reason(&self) -> &'static str {
        if self.code().is_some_and(|c| THROTTLING_CODES.contains(&c)) {
            return "throttled";
        }
        match (&*self.reason, self.status()) {
            (Reason::KeysNotDeleted { .. }, _) => "key_errors",
            (Reason::BadListing { .. }, _) => "bad_listing",
            (Reason::EmptyPrefix, _) => "refused",
            (Reason::Request { .. }, Some(status)) => status_reason(status),
            (Reason::Request { .. }, None) => "transport",
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    type ListError = SdkError<ListObjectsV2Error, HttpResponse>;

    fn service_error(status: u16, code: &str, message: &str) -> ListError {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(ListObjectsV2Error::generic(meta), raw)
    }

    fn wrap(err: ListError) -> StoreError {
        StoreError::request("ListObjectsV2", "mlflow", "1/abc/artifacts/model/", err)
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for (status, code) in [
            (503, "SlowDown"),
            (503, "ServiceUnavailable"),
            (500, "InternalError"),
            (429, "TooManyRequests"),
            (502, "BadGateway"),
            (400, "RequestTimeout"),
        ] {
            let err = wrap(service_error(status, code, "try later"));
            assert_eq!(err.class(), ErrorClass::Transient, "{status} {code}");
        }
    }

    #[test]
    fn refusals_and_missing_buckets_are_permanent() {
        for (status, code) in [
            (403, "AccessDenied"),
            (403, "SignatureDoesNotMatch"),
            (403, "InvalidAccessKeyId"),
            (404, "NoSuchBucket"),
            (400, "InvalidRequest"),
        ] {
            let err = wrap(service_error(status, code, "no"));
            assert_eq!(err.class(), ErrorClass::Permanent, "{status} {code}");
        }
    }

    #[test]
    fn message_names_operation_bucket_prefix_status_and_code() {
        let err = wrap(service_error(
            503,
            "SlowDown",
            "Please reduce your request rate.",
        ));
        assert_eq!(
            err.to_string(),
            "S3 ListObjectsV2 in bucket mlflow under 1/abc/artifacts/model/ failed: \
             HTTP 503 SlowDown: Please reduce your request rate."
        );
        assert_eq!(err.code(), Some("SlowDown"));
        assert!(
            err.source().is_none(),
            "the cause is in the message, not repeated"
        );
    }

    #[test]
    fn timeouts_and_connection_failures_are_transient() {
        let timeout = wrap(ListError::timeout_error("operation timed out"));
        assert_eq!(timeout.class(), ErrorClass::Transient);
        assert!(timeout.to_string().contains("timed out"), "{timeout}");

        let refused = wrap(ListError::dispatch_failure(ConnectorError::io(
            "Connection refused (os error 111)".into(),
        )));
        assert_eq!(refused.class(), ErrorClass::Transient);
        assert!(
            refused.to_string().contains("Connection refused"),
            "{refused}"
        );

        let garbled = wrap(ListError::response_error(
            "unexpected end of XML",
            HttpResponse::new(200.try_into().unwrap(), SdkBody::empty()),
        ));
        assert_eq!(garbled.class(), ErrorClass::Transient);
    }

    #[test]
    fn requests_that_cannot_be_built_are_permanent() {
        let err = wrap(ListError::construction_failure("missing bucket"));
        assert_eq!(err.class(), ErrorClass::Permanent);
        let err = wrap(ListError::dispatch_failure(ConnectorError::user(
            "invalid header".into(),
        )));
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[test]
    fn only_no_such_key_counts_as_already_gone() {
        assert!(is_already_gone(Some("NoSuchKey")));
        assert!(!is_already_gone(Some("AccessDenied")));
        assert!(!is_already_gone(None));
    }

    #[test]
    fn an_empty_prefix_is_refused_permanently() {
        let err = StoreError::new("ListObjectsV2", "mlflow", "", Reason::EmptyPrefix);
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(
            err.to_string(),
            "S3 ListObjectsV2 in bucket mlflow under (empty prefix) failed: \
             refused: an empty prefix would cover the whole bucket"
        );
    }
}
