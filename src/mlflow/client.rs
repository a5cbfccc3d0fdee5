//! [`MlflowClient`]: one `reqwest::Client` with the tracking server's API root and credentials,
//! plus the plumbing every endpoint shares (URL building, auth, status and body handling).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::error::MlflowError;
use super::features::Features;
use super::wire::ErrorBody;
use crate::domain::classify::Classified as _;
use crate::limit::{Limiter, MAX_FREE_RESENDS, Permit};
use crate::metrics::{Metrics, Target};
use crate::settings::MlflowSettings;

/// How much of a non-MLflow error body (an HTML page from a proxy, say) goes into the message.
const MAX_ERROR_BODY_CHARS: usize = 300;

/// Client for the MLflow tracking server's REST API. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct MlflowClient {
    http: reqwest::Client,
    /// `{tracking_uri}/api/2.0/mlflow`, the root every endpoint path is appended to.
    api: Url,
    auth: Auth,
    pub(super) page_size: u32,
    metrics: Metrics,
    /// What the server offers, as its answers showed (shared by clones).
    pub(super) features: Arc<Features>,
    /// Requests in flight towards the server, over every clone (one limit per process).
    limiter: Arc<Limiter>,
}

#[derive(Clone)]
enum Auth {
    None,
    Bearer(SecretString),
    Basic {
        username: String,
        password: Option<SecretString>,
    },
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer",
            Auth::Basic { .. } => "basic",
        };
        let api = crate::settings::CredentialedUrl::from(self.api.clone());
        f.debug_struct("MlflowClient")
            .field("api", &api)
            .field("auth", &auth)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// What a request is about, for error messages: the endpoint and the object it targets.
pub(super) struct Call {
    pub operation: &'static str,
    pub target: String,
}

impl Call {
    pub(super) fn new(operation: &'static str, target: impl Into<String>) -> Self {
        Call {
            operation,
            target: target.into(),
        }
    }
}

impl MlflowClient {
    /// Builds the client: request timeout, credentials (a bearer token wins over basic auth, as
    /// in MLflow's own client) and the API root under `tracking_uri`, which may carry a path
    /// prefix such as `https://host/mlflow`.
    pub fn new(settings: &MlflowSettings, metrics: &Metrics) -> Result<Self, MlflowError> {
        let mut api = settings.tracking_uri.expose().clone();
        if !matches!(api.scheme(), "http" | "https") || api.cannot_be_a_base() {
            return Err(MlflowError::Build(format!(
                "tracking URI {} must be an http or https URL",
                settings.tracking_uri
            )));
        }
        api.path_segments_mut()
            .expect("an http URL can have a path")
            .pop_if_empty()
            .extend(["api", "2.0", "mlflow"]);
        if settings.page_size == 0 {
            return Err(MlflowError::Build(
                "mlflow.page_size must be positive".into(),
            ));
        }
        let auth = match (&settings.token, &settings.username) {
            (Some(token), _) => Auth::Bearer(token.clone()),
            (None, Some(username)) => Auth::Basic {
                username: username.clone(),
                password: settings.password.clone(),
            },
            (None, None) => Auth::None,
        };
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("model-pruner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MlflowError::Build(e.to_string()))?;
        Ok(MlflowClient {
            http,
            api,
            auth,
            page_size: settings.page_size,
            metrics: metrics.clone(),
            features: Arc::default(),
            limiter: Arc::new(Limiter::new(
                Target::Mlflow,
                &settings.requests_in_flight,
                metrics,
            )),
        })
    }

    /// The tracking server's address with credentials redacted, for logs.
    pub(super) fn server(&self) -> String {
        let mut base = self.api.clone();
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop().pop().pop();
        }
        crate::settings::CredentialedUrl::from(base).to_string()
    }

    /// `{api}/{segments...}`, each segment percent-encoded (ids go into paths safely).
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("checked in new: the API root can have a path")
            .extend(segments);
        url
    }

    /// `GET` with query parameters.
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        call: Call,
        url: Url,
        query: &[(&str, &str)],
    ) -> Result<T, MlflowError> {
        let request = self.http.get(url).query(query);
        self.execute(call, request).await
    }

    /// `POST`, `PATCH`, ... with a JSON body.
    pub(super) async fn send<T: DeserializeOwned>(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: &impl Serialize,
    ) -> Result<T, MlflowError> {
        let request = self.http.request(method, url).json(body);
        self.execute(call, request).await
    }

    /// The server's version from `GET {tracking_uri}/version` (outside the REST API root; MLflow
    /// 2.x and 3.x answer it in plain text, e.g. `2.22.5`).
    pub(super) async fn server_version(&self) -> Result<String, MlflowError> {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("checked in new: the API root can have a path")
            .pop()
            .pop()
            .pop()
            .push("version");
        let call = Call::new("version", "the tracking server");
        let request = self.http.get(url);
        let body = self.execute_raw(call, request).await?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        call: Call,
        request: RequestBuilder,
    ) -> Result<T, MlflowError> {
        let (operation, target) = (call.operation, call.target.clone());
        let body = self.execute_raw(call, request).await?;
        serde_json::from_slice(&body).map_err(|cause| MlflowError::Decode {
            operation,
            target,
            cause,
        })
    }

    /// Sends `request` with the credentials under the adaptive limit and returns the body of a
    /// success. A timeout or overload answer cuts the limit; the request is then sent again at
    /// once while that slows the worker down ([`crate::limit`]), before it becomes an error.
    async fn execute_raw(
        &self,
        call: Call,
        request: RequestBuilder,
    ) -> Result<bytes::Bytes, MlflowError> {
        let Call { operation, target } = call;
        let request = match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
            Auth::Basic { username, password } => {
                request.basic_auth(username, password.as_ref().map(|p| p.expose_secret()))
            }
        };
        let mut resends = 0;
        let mut original = Some(request);
        loop {
            // Bodies are JSON bytes, so a request clones; the last try sends the original.
            let copy = match &original {
                Some(r) if resends < MAX_FREE_RESENDS => r.try_clone(),
                _ => None,
            };
            let this = copy
                .or_else(|| original.take())
                .expect("the loop ends at the latest with the try that takes the original");
            let (permit, result) = self.send_once(operation, &target, this).await;
            match result {
                Err(e) if e.is_overload() => {
                    if !permit.overloaded() || original.is_none() {
                        return Err(e);
                    }
                    resends += 1;
                    self.metrics.retry(Target::Mlflow.as_str(), e.reason());
                    tracing::warn!(
                        operation,
                        %target,
                        error = %e,
                        limit = self.limiter.limit(),
                        "MLflow is overloaded: fewer requests in flight, sending again"
                    );
                }
                // Not an answer: says nothing about the server's load (the place is freed).
                Err(e @ (MlflowError::Connect { .. } | MlflowError::Transport { .. })) => {
                    return Err(e);
                }
                result => {
                    permit.answered(operation);
                    return result;
                }
            }
        }
    }

    /// One try of a request under a place of the limit, counted in the metrics; the place is
    /// returned with the result for the caller to report how it ended.
    async fn send_once(
        &self,
        operation: &'static str,
        target: &str,
        request: RequestBuilder,
    ) -> (Permit<'_>, Result<bytes::Bytes, MlflowError>) {
        let permit = self.limiter.acquire().await;
        let started = std::time::Instant::now();
        let observe = |status: Option<u16>| {
            self.metrics
                .request(Target::Mlflow, operation, status, started.elapsed());
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                observe(None);
                let e = MlflowError::from_transport(operation, target.to_owned(), e);
                return (permit, Err(e));
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                observe(None);
                let e = MlflowError::from_transport(operation, target.to_owned(), e);
                return (permit, Err(e));
            }
        };
        tracing::trace!(operation, %target, status = status.as_u16(), "MLflow answered");
        if !status.is_success() {
            let error = status_error(operation, target.to_owned(), status, &body);
            // Something at the tracking URI that is not MLflow's API: for `/readyz`, MLflow
            // did not answer.
            self.metrics.request_answered(
                Target::Mlflow,
                operation,
                Some(status.as_u16()),
                status.as_u16() < 500 && !error.is_not_the_api(),
                started.elapsed(),
            );
            return (permit, Err(error));
        }
        observe(Some(status.as_u16()));
        (permit, Ok(body))
    }
}

/// Collects every page of a paginated search: `fetch` gets the page token (none for the first
/// page) and returns the page's items and the next token; an empty token ends the search.
///
/// Items are de-duplicated by `key`, whatever the server returns: MLflow pages by offset, so a
/// row written between two page requests can shift another row onto the next page as well. The
/// later copy (the newer read) replaces the earlier one in place; repeats are logged.
///
/// A plain closure returning a future rather than an async closure: async closures make the
/// caller's future fail `Send` checks when the worker spawns it (rust-lang/rust#64552 family).
pub(super) async fn all_pages<T, K, F, Fut>(
    operation: &'static str,
    key: K,
    mut fetch: F,
) -> Result<Vec<T>, MlflowError>
where
    K: Fn(&T) -> String,
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), MlflowError>>,
{
    let mut items: Vec<T> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut repeated = 0usize;
    let mut token = None;
    loop {
        let (page, next) = fetch(token.take()).await?;
        for item in page {
            match index.entry(key(&item)) {
                Entry::Occupied(at) => {
                    repeated += 1;
                    items[*at.get()] = item;
                }
                Entry::Vacant(slot) => {
                    slot.insert(items.len());
                    items.push(item);
                }
            }
        }
        match next.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    if repeated > 0 {
        tracing::warn!(
            operation,
            repeated,
            "the server returned rows more than once across pages (written to while paging): \
             each is counted once"
        );
    }
    Ok(items)
}

/// `('a', 'b')` for an `IN` clause of MLflow's search syntax. Only for ids MLflow itself
/// returned (hex strings): a quote in a value would make the filter malformed, which MLflow
/// answers with a 400.
pub(super) fn in_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = values.into_iter().map(|v| format!("'{v}'")).collect();
    format!("({})", quoted.join(", "))
}

/// Turns a non-success answer into [`MlflowError::Status`], keeping MLflow's `error_code` and
/// `message` when the body is MLflow's error JSON, else the start of whatever the body was.
pub(super) fn status_error(
    operation: &'static str,
    target: String,
    status: reqwest::StatusCode,
    body: &[u8],
) -> MlflowError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed.message.unwrap_or_else(|| {
        // An HTML page or other text, on one line: it ends up in log lines and headers.
        let text = String::from_utf8_lossy(body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no body").to_owned()
        } else {
            text.chars().take(MAX_ERROR_BODY_CHARS).collect()
        }
    });
    MlflowError::Status {
        operation,
        target,
        status: status.as_u16(),
        error_code: parsed.error_code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::classify::ErrorClass;

    fn settings(uri: &str) -> MlflowSettings {
        MlflowSettings {
            tracking_uri: uri.parse().unwrap(),
            token: None,
            username: None,
            password: None,
            request_timeout: Duration::from_millis(300),
            page_size: 100,
            model_uploaded_param: "model_uploaded".into(),
            log_deleted_param: true,
            requests_in_flight: crate::settings::AdaptiveLimit {
                initial: 4,
                min: 1,
                max: 8,
            },
        }
    }

    #[test]
    fn the_client_never_prints_credentials_of_its_tracking_uri() {
        let client = MlflowClient::new(
            &settings("https://ml-user:ml-secret@mlflow.example/p"),
            &Metrics::new(),
        )
        .unwrap();
        let printed = format!("{client:?}");
        for secret in ["ml-user", "ml-secret"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
    }

    #[test]
    fn endpoints_sit_under_the_tracking_uri_path_with_ids_encoded() {
        let client = MlflowClient::new(&settings("http://mlflow:5000"), &Metrics::new()).unwrap();
        assert_eq!(
            client.url(&["runs", "search"]).as_str(),
            "http://mlflow:5000/api/2.0/mlflow/runs/search"
        );
        let client =
            MlflowClient::new(&settings("https://host/tools/mlflow/"), &Metrics::new()).unwrap();
        assert_eq!(
            client.url(&["logged-models", "m-1/../x?", "tags"]).as_str(),
            "https://host/tools/mlflow/api/2.0/mlflow/logged-models/m-1%2F..%2Fx%3F/tags"
        );
    }

    #[tokio::test]
    async fn pages_that_repeat_a_row_yield_it_once_with_the_newest_copy() {
        let pages = [
            (vec![("a", 1), ("b", 1)], Some("1")),
            (vec![("b", 2), ("c", 1)], Some("2")),
            (vec![("a", 3)], Some("")),
        ];
        let mut pages = pages.into_iter();
        let items = all_pages(
            "test",
            |(id, _): &(&str, i32)| id.to_string(),
            |_| {
                let page = pages.next().expect("no page after an empty token");
                async move { Ok((page.0, page.1.map(str::to_owned))) }
            },
        )
        .await
        .unwrap();
        assert_eq!(items, [("a", 3), ("b", 2), ("c", 1)]);
    }

    #[test]
    fn version_filters_quote_ids() {
        let runs = crate::mlflow::VersionFilter::RunIds(&["a1", "b2"]);
        assert_eq!(runs.to_string(), "run_id IN ('a1', 'b2')");
        let named = crate::mlflow::VersionFilter::SourceLike("models:/m-9%");
        assert_eq!(named.to_string(), "source_path LIKE 'models:/m-9%'");
    }

    #[test]
    fn non_http_tracking_uris_are_rejected() {
        let err = MlflowClient::new(&settings("file:///tmp/mlruns"), &Metrics::new()).unwrap_err();
        assert!(matches!(err, MlflowError::Build(_)), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    /// Serves one canned experiment and returns the request head it received.
    async fn capture_request(settings: &mut MlflowSettings) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        settings.tracking_uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = vec![0; 4096];
            let n = socket.read(&mut head).await.unwrap();
            let body = r#"{"experiment": {"experiment_id": "7", "name": "e"}}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let client = MlflowClient::new(settings, &Metrics::new()).unwrap();
        let experiment = client.get_experiment("7").await.unwrap();
        assert_eq!(experiment.name, "e");
        server.await.unwrap()
    }

    #[tokio::test]
    async fn bearer_token_wins_over_basic_auth() {
        let mut s = settings("http://unused");
        s.token = Some("t0k3n".into());
        s.username = Some("user".into());
        let head = capture_request(&mut s).await;
        assert!(
            head.starts_with("GET /api/2.0/mlflow/experiments/get?experiment_id=7 "),
            "{head}"
        );
        assert!(head.contains("authorization: Bearer t0k3n\r\n"), "{head}");
    }

    #[tokio::test]
    async fn basic_auth_is_sent_when_a_username_is_set() {
        let mut s = settings("http://unused");
        s.username = Some("user".into());
        s.password = Some("pass".into());
        let head = capture_request(&mut s).await;
        // base64("user:pass")
        assert!(
            head.contains("authorization: Basic dXNlcjpwYXNz\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refused_connections_are_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri = format!("http://user:s3cr3t@{addr}");
        let client = MlflowClient::new(&settings(&uri), &Metrics::new()).unwrap();
        let err = client.get_experiment("12").await.unwrap_err();
        assert!(matches!(err, MlflowError::Connect { .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Transient);
        assert!(
            err.to_string()
                .contains("experiments/get for experiment 12"),
            "{err}"
        );
        let debug = format!("{err:?}");
        let chain = format!("{debug} {:#}", anyhow::Error::from(err));
        assert!(!chain.contains("s3cr3t"), "credentials printed: {chain}");
    }

    #[tokio::test]
    async fn silent_servers_time_out_as_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let client =
            MlflowClient::new(&settings(&format!("http://{addr}")), &Metrics::new()).unwrap();
        let fields = crate::mlflow::RunFields {
            metrics: &[],
            params: &[],
            tags: &[],
        };
        let err = client.search_runs("12", &fields).await.unwrap_err();
        assert!(matches!(err, MlflowError::Timeout { .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Transient);
        server.abort();
    }
}
