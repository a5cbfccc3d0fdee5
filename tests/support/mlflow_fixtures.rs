//! MLflow fixtures for tests against a real tracking server: a raw REST client (independent of
//! the crate's `mlflow` module, so tests check it rather than trust it) that creates uniquely
//! named experiments, runs with metrics, params and tags, MLflow 3 logged models linked to their
//! run, and registered model versions; plus a few raw reads to assert on.
//!
//! ```ignore
//! let mlflow = Mlflow::from_env()?;
//! let exp = mlflow.experiment("ranking").await?;
//! let best = exp.run(RunSpec::new("best").metric("acc", 0.9).logged_model()).await?;
//! let nan = exp.run(RunSpec::new("nan").metric("acc", f64::NAN)).await?;
//! mlflow.register_model_version("prod", ModelSource::Run(&best.run_id, "model")).await?;
//! ```
#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// Environment variable holding the tracking server URL, as `scripts/stack.sh env` sets it.
pub const TRACKING_URI_ENV: &str = "MODEL_PRUNER__MLFLOW__TRACKING_URI";

/// A raw client for the MLflow REST API at one base URL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mlflow {
    http: reqwest::Client,
    base: String,
}

/// The status a run ends up in: the product's own reading of MLflow's statuses.
pub use model_pruner::domain::run::RunStatus;

/// What [`ExperimentFixture::run`] creates. Start with [`RunSpec::new`] (a `FINISHED` run that
/// started and ended now) and adjust with the builder methods.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub status: RunStatus,
    /// Milliseconds since the epoch.
    pub start_time: i64,
    /// Milliseconds since the epoch; only sent for ended statuses.
    pub end_time: Option<i64>,
    /// Logged at `start_time`, step 0, in order (a repeated key keeps the last value).
    pub metrics: Vec<(String, f64)>,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// Also create an MLflow 3 logged model from this run and log it as the run's output.
    pub logged_model: bool,
    /// Move the run to the `deleted` lifecycle stage at the end.
    pub deleted: bool,
}

impl RunSpec {
    pub fn new(name: impl Into<String>) -> Self {
        let now = now_ms();
        RunSpec {
            name: name.into(),
            status: RunStatus::Finished,
            start_time: now,
            end_time: Some(now),
            metrics: Vec::new(),
            params: Vec::new(),
            tags: Vec::new(),
            logged_model: false,
            deleted: false,
        }
    }

    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = status;
        self
    }

    /// Any `f64`, NaN and infinities included (sent as MLflow's `"NaN"`, `"Infinity"`).
    pub fn metric(mut self, key: impl Into<String>, value: f64) -> Self {
        self.metrics.push((key.into(), value));
        self
    }

    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((key.into(), value.into()));
        self
    }

    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    pub fn start_time(mut self, ms: i64) -> Self {
        self.start_time = ms;
        self
    }

    pub fn end_time(mut self, ms: Option<i64>) -> Self {
        self.end_time = ms;
        self
    }

    pub fn logged_model(mut self) -> Self {
        self.logged_model = true;
        self
    }

    pub fn deleted(mut self) -> Self {
        self.deleted = true;
        self
    }
}

/// An experiment created for one test.
#[derive(Debug, Clone)]
pub struct ExperimentFixture {
    pub id: String,
    pub name: String,
    /// e.g. `s3://mlflow/12`.
    pub artifact_location: String,
    mlflow: Mlflow,
}

/// A run created by [`ExperimentFixture::run`].
#[derive(Debug, Clone)]
pub struct RunFixture {
    pub run_id: String,
    /// e.g. `s3://mlflow/12/<run_id>/artifacts`.
    pub artifact_uri: String,
    pub model: Option<LoggedModelFixture>,
}

/// An MLflow 3 logged model.
#[derive(Debug, Clone)]
pub struct LoggedModelFixture {
    pub model_id: String,
    /// e.g. `s3://mlflow/12/models/<model_id>/artifacts`: under the experiment, not the run.
    pub artifact_uri: String,
}

/// What a registered model version points to.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// `runs:/<run_id>/<path>`, with `run_id` set.
    Run(&'a str, &'a str),
    /// `models:/<model_id>`, with `model_id` set (the server fills in the source run).
    LoggedModel(&'a str),
    /// Any artifact URI (e.g. a model's `s3://` path), with neither `run_id` nor `model_id`.
    Uri(&'a str),
}

impl Mlflow {
    /// A client for the tracking server at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: &str) -> Self {
        Mlflow {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client for the server named by `MODEL_PRUNER__MLFLOW__TRACKING_URI`.
    pub fn from_env() -> anyhow::Result<Self> {
        let base = std::env::var(TRACKING_URI_ENV).with_context(|| {
            format!(
                "{TRACKING_URI_ENV} is not set; start the stack and run: eval \"$(scripts/stack.sh env)\""
            )
        })?;
        Ok(Mlflow::new(&base))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A new experiment named `{prefix}-{unique suffix}`.
    pub async fn experiment(&self, prefix: &str) -> anyhow::Result<ExperimentFixture> {
        self.experiment_with_tags(prefix, &[]).await
    }

    /// A new experiment named `{prefix}-{unique suffix}`, with experiment tags.
    pub async fn experiment_with_tags(
        &self,
        prefix: &str,
        tags: &[(&str, &str)],
    ) -> anyhow::Result<ExperimentFixture> {
        self.create_experiment(prefix, tags, None).await
    }

    /// A new experiment whose artifacts live at `artifact_location` instead of the server's
    /// default root (e.g. another bucket).
    pub async fn experiment_at(
        &self,
        prefix: &str,
        artifact_location: &str,
    ) -> anyhow::Result<ExperimentFixture> {
        self.create_experiment(prefix, &[], Some(artifact_location))
            .await
    }

    /// A new experiment named `{prefix}-{unique suffix}`, with tags and, if given, its own
    /// artifact location.
    pub async fn create_experiment(
        &self,
        prefix: &str,
        tags: &[(&str, &str)],
        artifact_location: Option<&str>,
    ) -> anyhow::Result<ExperimentFixture> {
        let name = unique_name(prefix);
        let mut body = json!({ "name": name, "tags": key_values(tags.iter().copied()) });
        if let Some(location) = artifact_location {
            body["artifact_location"] = json!(location);
        }
        let created = self.post("experiments/create", body).await?;
        let id = string_at(&created, "/experiment_id")?;
        let experiment = self.get_experiment(&id).await?;
        Ok(ExperimentFixture {
            artifact_location: string_at(&experiment, "/experiment/artifact_location")?,
            id,
            name,
            mlflow: self.clone(),
        })
    }

    /// Creates a `RUNNING` run; returns its id and artifact URI.
    pub async fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_time: i64,
        tags: &[(&str, &str)],
    ) -> anyhow::Result<(String, String)> {
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_time,
            "tags": key_values(tags.iter().copied()),
        });
        let created = self.post("runs/create", body).await?;
        Ok((
            string_at(&created, "/run/info/run_id")?,
            string_at(&created, "/run/info/artifact_uri")?,
        ))
    }

    /// Logs one metric value; NaN and infinities are sent as MLflow's strings.
    pub async fn log_metric(
        &self,
        run_id: &str,
        key: &str,
        value: f64,
        timestamp: i64,
    ) -> anyhow::Result<()> {
        let body = json!({ "run_id": run_id, "key": key, "value": metric_value(value),
            "timestamp": timestamp, "step": 0 });
        self.post("runs/log-metric", body).await.map(drop)
    }

    pub async fn log_param(&self, run_id: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let body = json!({ "run_id": run_id, "key": key, "value": value });
        self.post("runs/log-parameter", body).await.map(drop)
    }

    pub async fn set_tag(&self, run_id: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let body = json!({ "run_id": run_id, "key": key, "value": value });
        self.post("runs/set-tag", body).await.map(drop)
    }

    /// Sets the run's status and, when given, its end time.
    pub async fn update_run(
        &self,
        run_id: &str,
        status: RunStatus,
        end_time: Option<i64>,
    ) -> anyhow::Result<()> {
        let mut body = json!({ "run_id": run_id, "status": status.as_str() });
        if let Some(end_time) = end_time {
            body["end_time"] = json!(end_time);
        }
        self.post("runs/update", body).await.map(drop)
    }

    /// Moves the run to the `deleted` lifecycle stage.
    pub async fn delete_run(&self, run_id: &str) -> anyhow::Result<()> {
        self.post("runs/delete", json!({ "run_id": run_id }))
            .await
            .map(drop)
    }

    /// Creates a logged model (status `LOGGED_MODEL_PENDING`), optionally from a run. Does not
    /// link it as the run's output: see [`Mlflow::log_model_output`].
    pub async fn create_logged_model(
        &self,
        experiment_id: &str,
        source_run_id: Option<&str>,
        name: &str,
    ) -> anyhow::Result<LoggedModelFixture> {
        let mut body = json!({ "experiment_id": experiment_id, "name": name });
        if let Some(run_id) = source_run_id {
            body["source_run_id"] = json!(run_id);
        }
        let created = self.post("logged-models", body).await?;
        Ok(LoggedModelFixture {
            model_id: string_at(&created, "/model/info/model_id")?,
            artifact_uri: string_at(&created, "/model/info/artifact_uri")?,
        })
    }

    /// Records the model as an output of the run, as `mlflow.<flavor>.log_model` does
    /// (`POST runs/outputs`); `runs/get` and `runs/search` then list it in
    /// `outputs.model_outputs`.
    pub async fn log_model_output(&self, run_id: &str, model_id: &str) -> anyhow::Result<()> {
        let body = json!({ "run_id": run_id, "models": [{ "model_id": model_id, "step": 0 }] });
        self.post("runs/outputs", body).await.map(drop)
    }

    /// Sets the logged model's final status (`PATCH logged-models/{id}`), as `log_model` does
    /// once the artifacts are uploaded.
    pub async fn finalize_logged_model(&self, model_id: &str, ready: bool) -> anyhow::Result<()> {
        let status = if ready {
            "LOGGED_MODEL_READY"
        } else {
            "LOGGED_MODEL_UPLOAD_FAILED"
        };
        let body = json!({ "model_id": model_id, "status": status });
        let path = format!("logged-models/{model_id}");
        self.call(Method::PATCH, &path, Some(body)).await.map(drop)
    }

    /// Registers a new version of `name` (creating the registered model if needed); returns the
    /// version number.
    pub async fn register_model_version(
        &self,
        name: &str,
        source: ModelSource<'_>,
    ) -> anyhow::Result<String> {
        match self
            .post("registered-models/create", json!({ "name": name }))
            .await
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("RESOURCE_ALREADY_EXISTS") => {}
            Err(e) => return Err(e),
        }
        let body = match source {
            ModelSource::Run(run_id, path) => json!({
                "name": name, "source": format!("runs:/{run_id}/{path}"), "run_id": run_id,
            }),
            ModelSource::LoggedModel(model_id) => json!({
                "name": name, "source": format!("models:/{model_id}"), "model_id": model_id,
            }),
            ModelSource::Uri(uri) => json!({ "name": name, "source": uri }),
        };
        let created = self.post("model-versions/create", body).await?;
        string_at(&created, "/model_version/version")
    }

    /// Deletes a registered model and all its versions, so a test leaves no registry
    /// references behind.
    pub async fn delete_registered_model(&self, name: &str) -> anyhow::Result<()> {
        self.call(
            Method::DELETE,
            "registered-models/delete",
            Some(json!({ "name": name })),
        )
        .await
        .map(drop)
    }

    /// `experiments/get` as raw JSON (`{"experiment": {...}}`).
    pub async fn get_experiment(&self, experiment_id: &str) -> anyhow::Result<Value> {
        self.get("experiments/get", &[("experiment_id", experiment_id)])
            .await
    }

    /// The experiment's `lifecycle_stage`: `active` or `deleted`.
    pub async fn experiment_lifecycle(&self, experiment_id: &str) -> anyhow::Result<String> {
        let experiment = self.get_experiment(experiment_id).await?;
        string_at(&experiment, "/experiment/lifecycle_stage")
    }

    /// `runs/get` as raw JSON (`{"run": {"info", "data", "inputs", "outputs"}}`).
    pub async fn get_run(&self, run_id: &str) -> anyhow::Result<Value> {
        self.get("runs/get", &[("run_id", run_id)]).await
    }

    /// The run's params.
    pub async fn run_params(&self, run_id: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let run = self.get_run(run_id).await?;
        Ok(map_at(&run, "/run/data/params"))
    }

    /// The run's tags (MLflow's own `mlflow.*` tags included).
    pub async fn run_tags(&self, run_id: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let run = self.get_run(run_id).await?;
        Ok(map_at(&run, "/run/data/tags"))
    }

    /// `logged-models/{id}` as raw JSON (`{"model": {"info", "data"}}`).
    pub async fn get_logged_model(&self, model_id: &str) -> anyhow::Result<Value> {
        self.get(&format!("logged-models/{model_id}"), &[]).await
    }

    /// The logged model's tags.
    pub async fn logged_model_tags(
        &self,
        model_id: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let model = self.get_logged_model(model_id).await?;
        Ok(map_at(&model, "/model/info/tags"))
    }

    /// `POST {base}/api/2.0/mlflow/{path}` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `GET {base}/api/2.0/mlflow/{path}` with query parameters.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let request = self.http.get(&url).query(query);
        finish(request, "GET", &url).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        finish(request, method.as_str(), &url).await
    }
}

impl ExperimentFixture {
    /// Creates a run as `spec` says: tags at creation, then metrics, params and tags in one
    /// `runs/log-batch`, then the logged model (created, logged as output, finalized), then the
    /// final status and end time, then the deletion.
    pub async fn run(&self, spec: RunSpec) -> anyhow::Result<RunFixture> {
        let m = &self.mlflow;
        let (run_id, artifact_uri) = m
            .create_run(&self.id, &spec.name, spec.start_time, &[])
            .await?;
        let metrics: Vec<Value> = spec
            .metrics
            .iter()
            .map(|(key, value)| {
                json!({ "key": key, "value": metric_value(*value),
                    "timestamp": spec.start_time, "step": 0 })
            })
            .collect();
        let params = key_values(spec.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let tags = key_values(spec.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !(metrics.is_empty() && params.is_empty() && tags.is_empty()) {
            let body =
                json!({ "run_id": run_id, "metrics": metrics, "params": params, "tags": tags });
            m.post("runs/log-batch", body).await?;
        }
        let model = if spec.logged_model {
            let model = m
                .create_logged_model(&self.id, Some(&run_id), "model")
                .await?;
            m.log_model_output(&run_id, &model.model_id).await?;
            m.finalize_logged_model(&model.model_id, true).await?;
            Some(model)
        } else {
            None
        };
        if spec.status != RunStatus::Running {
            let end_time = spec.end_time.filter(|_| !spec.status.is_active());
            m.update_run(&run_id, spec.status.clone(), end_time).await?;
        }
        if spec.deleted {
            m.delete_run(&run_id).await?;
        }
        Ok(RunFixture {
            run_id,
            artifact_uri,
            model,
        })
    }

    /// Creates `count` finished runs `{prefix}-0..` whose `metric` is `values[i]`.
    pub async fn runs_with_metric(
        &self,
        prefix: &str,
        metric: &str,
        values: &[f64],
    ) -> anyhow::Result<Vec<RunFixture>> {
        let mut runs = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let spec = RunSpec::new(format!("{prefix}-{i}")).metric(metric, *value);
            runs.push(self.run(spec).await?);
        }
        Ok(runs)
    }

    /// A logged model of this experiment that no run lists as its output.
    pub async fn orphan_logged_model(&self, name: &str) -> anyhow::Result<LoggedModelFixture> {
        self.mlflow.create_logged_model(&self.id, None, name).await
    }

    /// Moves the experiment to the `deleted` lifecycle stage.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.mlflow
            .post("experiments/delete", json!({ "experiment_id": self.id }))
            .await
            .map(drop)
    }

    pub fn mlflow(&self) -> &Mlflow {
        &self.mlflow
    }
}

/// Sends the request; a non-success answer is an error carrying the status and body.
async fn finish(
    request: reqwest::RequestBuilder,
    method: &str,
    url: &str,
) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{method} {url}: reading the body"))?;
    if !status.is_success() {
        bail!("{method} {url}: HTTP {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
}

/// MLflow's JSON for a double: NaN and infinities as strings, since JSON numbers cannot hold
/// them (a bare `NaN` token is silently logged as 0 by MLflow 3.17).
pub fn metric_value(value: f64) -> Value {
    if value.is_nan() {
        json!("NaN")
    } else if value == f64::INFINITY {
        json!("Infinity")
    } else if value == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(value)
    }
}

fn key_values<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Value> {
    pairs
        .into_iter()
        .map(|(key, value)| json!({ "key": key, "value": value }))
        .collect()
}

fn string_at(value: &Value, pointer: &str) -> anyhow::Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no string at {pointer} in {value}"))
}

fn map_at(value: &Value, pointer: &str) -> BTreeMap<String, String> {
    let pairs = value.pointer(pointer).and_then(Value::as_array);
    pairs
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv.get("key")?.as_str()?;
            let value = kv.get("value")?.as_str()?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `{prefix}-{pid}-{ms}-{n}`: unique across parallel tests and test processes.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{}-{n}", std::process::id(), now_ms())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("ms fit in i64")
}
