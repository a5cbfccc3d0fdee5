//! [`MlflowError`]: what failed, for which experiment, run or model, and whether retrying helps.

use crate::domain::classify::{Classified, ErrorClass, chain, status_reason};

/// MLflow's code for a missing experiment, run or model.
const RESOURCE_DOES_NOT_EXIST: &str = "RESOURCE_DOES_NOT_EXIST";
/// MLflow's code for a rejected argument, also used for a malformed (non-numeric) experiment id.
const INVALID_PARAMETER_VALUE: &str = "INVALID_PARAMETER_VALUE";
/// MLflow's code for a path its API does not have (a tracking URI with a wrong base path that
/// still reaches an MLflow server).
const ENDPOINT_NOT_FOUND: &str = "ENDPOINT_NOT_FOUND";
/// Start of MLflow's message for a non-numeric experiment id: such an experiment cannot exist.
const INVALID_EXPERIMENT_ID: &str = "Invalid experiment ID";

/// A failed MLflow call. `operation` is the endpoint (`runs/search`), `target` what it was
/// about (`experiment 12`, `run 0400b9f4...`, `logged model m-...`).
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// The server answered with a non-success status.
    #[error("MLflow {operation} for {target} failed: HTTP {status}{}: {message}", code_suffix(.error_code))]
    Status {
        /// The endpoint called, e.g. `runs/search`.
        operation: &'static str,
        /// What the request was about, e.g. `experiment 12` or `run 0400b9f4...`.
        target: String,
        /// The HTTP status code of the answer.
        status: u16,
        /// MLflow's `error_code`, e.g. `RESOURCE_DOES_NOT_EXIST`; `None` for non-MLflow bodies.
        error_code: Option<String>,
        /// MLflow's `message`; else the body's first 300 characters, or the status's reason phrase.
        message: String,
    },
    /// No answer within the configured request timeout.
    #[error("MLflow {operation} for {target} timed out")]
    Timeout {
        /// The endpoint called, e.g. `runs/search`.
        operation: &'static str,
        /// What the request was about, e.g. `experiment 12` or `run 0400b9f4...`.
        target: String,
    },
    /// The server could not be reached.
    #[error("MLflow {operation} for {target}: cannot connect: {}", chain(cause))]
    Connect {
        /// The endpoint called, e.g. `runs/search`.
        operation: &'static str,
        /// What the request was about, e.g. `experiment 12` or `run 0400b9f4...`.
        target: String,
        /// The HTTP client's error, with its URL removed (it may carry credentials); its
        /// causes are part of the message.
        cause: reqwest::Error,
    },
    /// The request or response broke off in transit (connection reset, truncated body).
    #[error("MLflow {operation} for {target}: transport error: {}", chain(cause))]
    Transport {
        /// The endpoint called, e.g. `runs/search`.
        operation: &'static str,
        /// What the request was about, e.g. `experiment 12` or `run 0400b9f4...`.
        target: String,
        /// The HTTP client's error, with its URL removed (it may carry credentials); its
        /// causes are part of the message.
        cause: reqwest::Error,
    },
    /// A success response whose body is not what the API documents.
    #[error("MLflow {operation} for {target}: unexpected response body: {cause}")]
    Decode {
        /// The endpoint called, e.g. `runs/search`.
        operation: &'static str,
        /// What the request was about, e.g. `experiment 12` or `run 0400b9f4...`.
        target: String,
        /// Where and why the JSON body did not parse.
        cause: serde_json::Error,
    },
    /// A search that spans several pages read differently each time: the server is written to
    /// faster than it can be read consistently. Tried again later.
    #[error(
        "MLflow {operation} for {target}: {reads} reads over several pages each found other \
         rows (written to while paging); not trusted"
    )]
    Unstable {
        /// The search endpoint, e.g. `model-versions/search`.
        operation: &'static str,
        /// What the search was for, e.g. `filter "run_id IN ('...')"`.
        target: String,
        /// How many complete reads were made; no two in a row found the same rows.
        reads: usize,
    },
    /// The client could not be built from the settings.
    #[error("cannot build the MLflow client: {0}")]
    Build(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

/// A unique-constraint violation from the tracking server's database (SQLite, PostgreSQL,
/// MySQL), which MLflow reports as a 400 when two clients write the same key concurrently.
fn is_write_conflict(message: &str) -> bool {
    [
        "UNIQUE constraint failed",
        "duplicate key value",
        "Duplicate entry",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

impl MlflowError {
    /// Whether retrying can help: by HTTP status for answers, transient for timeouts and broken
    /// connections, permanent for bodies we cannot read and for construction failures. A client
    /// error that is not MLflow's own (no `error_code`: an HTML page from a proxy, another
    /// service, a wrong base path; or MLflow's "no such endpoint") says the tracking URI is
    /// wrong, not the event: transient, so the event waits in the delay queues for the fix
    /// instead of being dead-lettered for good.
    pub fn class(&self) -> ErrorClass {
        match self {
            MlflowError::Status { .. } if self.is_not_the_api() => ErrorClass::Transient,
            // Two writers inserting the same tag or param at once: the loser's retry becomes
            // an update (tags) or an identical re-log (params), both of which succeed.
            MlflowError::Status { message, .. } if is_write_conflict(message) => {
                ErrorClass::Transient
            }
            MlflowError::Status { status, .. } => ErrorClass::from_http_status(*status),
            MlflowError::Timeout { .. }
            | MlflowError::Connect { .. }
            | MlflowError::Transport { .. }
            | MlflowError::Unstable { .. } => ErrorClass::Transient,
            MlflowError::Decode { .. } | MlflowError::Build(_) => ErrorClass::Permanent,
        }
    }

    /// The request timed out, or the server (or a gateway before it) said it is overloaded:
    /// the worker should send fewer requests at once ([`crate::limit`]).
    pub fn is_overload(&self) -> bool {
        match self {
            MlflowError::Timeout { .. } => true,
            MlflowError::Status { status, .. } => {
                crate::domain::adaptive::is_overload_status(*status)
            }
            _ => false,
        }
    }

    /// The experiment, run or model does not exist, as MLflow's API says it:
    /// `RESOURCE_DOES_NOT_EXIST`, or the 400 `INVALID_PARAMETER_VALUE` it answers for a
    /// non-numeric experiment id. A bare 404 (no MLflow error body) is not: it comes from
    /// something that is not MLflow's API ([`MlflowError::is_not_the_api`]).
    pub fn is_not_found(&self) -> bool {
        match self {
            MlflowError::Status {
                error_code,
                message,
                ..
            } => match error_code.as_deref() {
                Some(RESOURCE_DOES_NOT_EXIST) => true,
                Some(INVALID_PARAMETER_VALUE) => message.starts_with(INVALID_EXPERIMENT_ID),
                _ => false,
            },
            _ => false,
        }
    }

    /// A path MLflow's API does not have: a 404 or 405 without MLflow's `error_code` (an HTML
    /// or plain-text page from whatever answers at a wrong URL), or MLflow's own
    /// `ENDPOINT_NOT_FOUND`. The tracking URI (or a proxy in front of it) is wrong. A 401 or 403
    /// without a code stays a refusal: MLflow's basic-auth app answers those in plain text.
    pub fn is_not_the_api(&self) -> bool {
        match self {
            MlflowError::Status {
                status, error_code, ..
            } => match error_code.as_deref() {
                None => matches!(status, 404 | 405),
                Some(code) => code == ENDPOINT_NOT_FOUND,
            },
            _ => false,
        }
    }

    /// MLflow refused a write for a reason of the run's own: a value it will not take
    /// (`INVALID_PARAMETER_VALUE`: an immutable param, a value too long), a run gone
    /// (`RESOURCE_DOES_NOT_EXIST`) or no longer active (`INVALID_STATE`). Anything else (no
    /// permission, a broken server) concerns every run alike.
    pub fn is_about_the_run(&self) -> bool {
        matches!(
            self,
            MlflowError::Status { status: 400 | 404, error_code: Some(code), .. }
                if matches!(code.as_str(), INVALID_PARAMETER_VALUE | RESOURCE_DOES_NOT_EXIST | "INVALID_STATE")
        )
    }

    /// MLflow's `error_code`, when the server sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            MlflowError::Status { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// Maps a failed send (or body read) to a timeout, connection or transport error.
    pub(crate) fn from_transport(
        operation: &'static str,
        target: String,
        source: reqwest::Error,
    ) -> Self {
        // The URL may carry credentials (https://user:secret@host); `target` says what the
        // request was about.
        let source = source.without_url();
        if source.is_timeout() {
            MlflowError::Timeout { operation, target }
        } else if source.is_builder() {
            MlflowError::Build(format!("{operation} for {target}: {source}"))
        } else if source.is_connect() {
            MlflowError::Connect {
                operation,
                target,
                cause: source,
            }
        } else {
            MlflowError::Transport {
                operation,
                target,
                cause: source,
            }
        }
    }
}

impl Classified for MlflowError {
    fn class(&self) -> ErrorClass {
        MlflowError::class(self)
    }

    fn reason(&self) -> &'static str {
        match self {
            MlflowError::Status { status, .. } => status_reason(*status),
            MlflowError::Timeout { .. } => "timeout",
            MlflowError::Connect { .. } => "connect",
            MlflowError::Transport { .. } => "transport",
            MlflowError::Unstable { .. } => "unstable_read",
            MlflowError::Decode { .. } => "decode",
            MlflowError::Build(_) => "build",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_status_or_the_failure() {
        let status = |status| MlflowError::Status {
            operation: "runs/search",
            target: "experiment 1".into(),
            status,
            error_code: None,
            message: String::new(),
        };
        assert_eq!(status(429).reason(), "throttled");
        assert_eq!(status(503).reason(), "server_error");
        assert_eq!(status(408).reason(), "timeout");
        assert_eq!(status(404).reason(), "client_error");
        let timeout = MlflowError::Timeout {
            operation: "runs/search",
            target: "experiment 1".into(),
        };
        assert_eq!(timeout.reason(), "timeout");
    }
    use crate::mlflow::client::status_error;
    use reqwest::StatusCode;

    fn answer(status: u16, body: &str) -> MlflowError {
        let status = StatusCode::from_u16(status).unwrap();
        status_error(
            "experiments/get",
            "experiment 12".into(),
            status,
            body.as_bytes(),
        )
    }

    #[test]
    fn missing_experiment_is_not_found_and_permanent() {
        let err = answer(
            404,
            r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No Experiment with id=12 exists"}"#,
        );
        assert!(err.is_not_found());
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(
            err.to_string(),
            "MLflow experiments/get for experiment 12 failed: HTTP 404 RESOURCE_DOES_NOT_EXIST: \
             No Experiment with id=12 exists"
        );
    }

    #[test]
    fn a_client_error_that_is_not_mlflow_s_api_is_transient_and_never_not_found() {
        for (status, body) in [
            (404, "<!doctype html><title>404 Not Found</title>"),
            (404, ""),
            (405, "<html>Method Not Allowed</html>"),
            (
                404,
                r#"{"error_code": "ENDPOINT_NOT_FOUND", "message": "No such endpoint"}"#,
            ),
        ] {
            let err = answer(status, body);
            assert!(err.is_not_the_api(), "{status} {body}");
            assert!(!err.is_not_found(), "{status} {body}");
            assert_eq!(err.class(), ErrorClass::Transient, "{status} {body}");
        }
        // MLflow's own client errors stay what they are.
        let missing = answer(
            404,
            r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No Experiment"}"#,
        );
        assert!(!missing.is_not_the_api());
        let denied = answer(
            403,
            r#"{"error_code": "PERMISSION_DENIED", "message": "no"}"#,
        );
        assert_eq!(denied.class(), ErrorClass::Permanent);
        // MLflow's basic-auth app refuses in plain text: still a refusal, not a wrong URL.
        let refused = answer(403, "Permission denied");
        assert!(!refused.is_not_the_api());
        assert_eq!(refused.class(), ErrorClass::Permanent);
    }

    #[test]
    fn non_numeric_experiment_id_is_not_found() {
        let err = answer(
            400,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid experiment ID 'abc'. Experiment ID must be a valid integer."}"#,
        );
        assert!(err.is_not_found());
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[test]
    fn changed_param_value_is_permanent_but_not_not_found() {
        let err = answer(
            400,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed."}"#,
        );
        assert!(!err.is_not_found());
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(err.error_code(), Some(INVALID_PARAMETER_VALUE));
    }

    #[test]
    fn concurrent_insert_of_the_same_tag_is_transient() {
        for message in [
            "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid",
            "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint",
            "(pymysql.err.IntegrityError) (1062, \"Duplicate entry 'x' for key 'PRIMARY'\")",
        ] {
            let body = serde_json::json!({"error_code": "BAD_REQUEST", "message": message});
            let err = answer(400, &body.to_string());
            assert_eq!(err.class(), ErrorClass::Transient, "{message}");
        }
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        let err = answer(
            503,
            r#"{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}"#,
        );
        assert_eq!(err.class(), ErrorClass::Transient);
        assert_eq!(answer(429, "").class(), ErrorClass::Transient);
    }

    #[test]
    fn non_mlflow_error_bodies_keep_their_start_as_the_message() {
        let err = answer(502, &format!("<html>{}</html>", "x".repeat(1000)));
        let MlflowError::Status {
            error_code,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*error_code, None);
        assert!(
            message.starts_with("<html>") && message.len() == 300,
            "{message}"
        );
        assert_eq!(
            answer(502, "").to_string().rsplit(": ").next(),
            Some("Bad Gateway")
        );
    }

    #[test]
    fn undecodable_success_bodies_are_permanent() {
        let source = serde_json::from_str::<serde_json::Value>("nope").unwrap_err();
        let said = source.to_string();
        let err = MlflowError::Decode {
            operation: "runs/get",
            target: "run r".into(),
            cause: source,
        };
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(!err.is_not_found());
        assert!(
            err.to_string().ends_with(&said),
            "the parser's reason is said: {err}"
        );
    }
}
