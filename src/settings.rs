//! Typed settings: `config/default.toml`, then the standard variables of MLflow's and AWS's own
//! clients as fallbacks (`MLFLOW_TRACKING_URI`, `AWS_ACCESS_KEY_ID`...), then an optional file,
//! then `MODEL_PRUNER__*` environment variables. Unknown keys are errors; secrets never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::domain::location::LocationRules;
use crate::domain::policy::{self, PolicyDefaults, PolicyOverrides};

/// Environment variable naming the optional settings file.
pub const CONFIG_ENV: &str = "MODEL_PRUNER_CONFIG";
/// Prefix of the environment variables that override settings (`MODEL_PRUNER__MLFLOW__...`).
pub const ENV_PREFIX: &str = "MODEL_PRUNER";

/// The defaults shipped with the binary, so it runs without the `config/` folder too.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Optional settings the defaults file leaves out.
const OPTIONAL_KEYS: [&str; 11] = [
    "mlflow.token",
    "mlflow.username",
    "mlflow.password",
    "store.endpoint",
    "store.access_key_id",
    "store.secret_access_key",
    "policy.grace",
    "policy.group_by",
    "policy.min_metric",
    "policy.max_metric",
    "policy.older_than",
];

/// The standard variables of MLflow's and AWS's own clients that stand in for settings nobody
/// set (`explicit`: the settings file or a `MODEL_PRUNER__*` variable sets that key), as a
/// TOML source. They go by groups, never mixed with what the file says: MLflow's credentials
/// only with MLflow's address from the same place, AWS's key id only with its secret.
fn standard_env(var: impl Fn(&str) -> Option<String>, explicit: impl Fn(&str) -> bool) -> String {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let mut set: Vec<(&str, String)> = Vec::new();
    if !explicit("mlflow.tracking_uri") {
        set.extend(get("MLFLOW_TRACKING_URI").map(|v| ("mlflow.tracking_uri", v)));
        let auth = ["mlflow.token", "mlflow.username", "mlflow.password"];
        if !auth.iter().any(|k| explicit(k)) {
            for (name, key) in [
                ("MLFLOW_TRACKING_TOKEN", "mlflow.token"),
                ("MLFLOW_TRACKING_USERNAME", "mlflow.username"),
                ("MLFLOW_TRACKING_PASSWORD", "mlflow.password"),
            ] {
                set.extend(get(name).map(|v| (key, v)));
            }
        }
    }
    if !explicit("store.endpoint") {
        set.extend(get("MLFLOW_S3_ENDPOINT_URL").map(|v| ("store.endpoint", v)));
    }
    if !explicit("store.access_key_id")
        && !explicit("store.secret_access_key")
        && let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY"))
    {
        set.push(("store.access_key_id", id));
        set.push(("store.secret_access_key", secret));
    }
    if !explicit("store.region") {
        // The AWS SDKs prefer AWS_REGION.
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
        set.extend(region.map(|v| ("store.region", v)));
    }
    let mut table = toml::Table::new();
    for (key, value) in set {
        let (section, field) = key.split_once('.').expect("section.field");
        let section = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(section) = section {
            section.insert(field.to_owned(), toml::Value::String(value));
        }
    }
    table.to_string()
}

/// The `MODEL_PRUNER__SECTION__KEY` variables.
fn env_source() -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .list_separator(",")
        .with_list_parse_key("store.allowed_buckets")
        .with_list_parse_key("retry.delays")
        .try_parsing(true)
}

/// Every setting as `section.key`.
fn known_keys() -> Vec<String> {
    let defaults: toml::Table = DEFAULTS.parse().expect("the defaults file is TOML");
    let mut keys: Vec<String> = defaults
        .iter()
        .filter_map(|(section, v)| Some((section, v.as_table()?)))
        .flat_map(|(section, t)| t.keys().map(move |k| format!("{section}.{k}")))
        .collect();
    keys.extend(OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()));
    keys
}

/// Warnings about environment variables that look like settings but are not read: one
/// underscore after `MODEL_PRUNER` or between the parts (`MODEL_PRUNER_MLFLOW_TRACKING_URI`
/// for `MODEL_PRUNER__MLFLOW__TRACKING_URI`).
pub fn env_warnings(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let keys = known_keys();
    let mut warnings = Vec::new();
    for (name, _) in vars {
        let Some(rest) = name.strip_prefix("MODEL_PRUNER") else {
            continue;
        };
        let flat = rest.trim_start_matches('_').to_ascii_lowercase();
        let meant = keys
            .iter()
            .find(|k| k.replace('.', "_") == flat.replace("__", "_"));
        let proper = meant.map(|k| {
            format!(
                "MODEL_PRUNER__{}",
                k.replace('.', "__").to_ascii_uppercase()
            )
        });
        if let Some(proper) = proper.filter(|p| *p != name) {
            warnings.push(format!(
                "{name} is not read: settings variables take two underscores between their \
                 parts, e.g. {proper}"
            ));
        }
    }
    warnings
}

/// The `MODEL_PRUNER__*` variables that name no setting, to point at when loading fails.
fn unknown_env_keys(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let keys = known_keys();
    vars.into_iter()
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("MODEL_PRUNER__")?;
            let key = rest.to_ascii_lowercase().replacen("__", ".", 1);
            (!keys.contains(&key)).then_some(name)
        })
        .collect()
}

/// Every setting, one field per section of `config/default.toml` ([`Settings::load`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[broker]`: RabbitMQ, the exchange and queues, and the bounds on deliveries.
    pub broker: BrokerSettings,
    /// `[mlflow]`: the tracking server and how it is called.
    pub mlflow: MlflowSettings,
    /// `[store]`: the S3-compatible store holding the models, and where deletion may go.
    pub store: StoreSettings,
    /// `[policy]`: the default retention policy; experiment tags and event fields override it.
    pub policy: PolicyDefaults,
    /// `[retry]`: retries inside the worker and the delays between deliveries.
    pub retry: RetrySettings,
    /// `[concurrency]`: how much one worker does at once, and its shutdown grace.
    pub concurrency: ConcurrencySettings,
    /// `[metrics]`: the listener of `/metrics`, `/healthz` and `/readyz`.
    pub metrics: MetricsSettings,
    /// `[log]`: the format of log lines.
    pub log: LogSettings,
    /// `[fleet]`: which experiments `sweep --all` covers.
    pub fleet: FleetSettings,
}

/// The commands over many experiments (`sweep`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// `sweep --all` selects every active experiment, not only those that opted in with a
    /// `model_pruner.*` policy tag.
    pub manage_all_experiments: bool,
}

/// RabbitMQ: where it is, the exchange and queues the worker declares, and the bounds on
/// deliveries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Printed with its credentials redacted, host and vhost shown.
    pub url: CredentialedUrl,
    /// Topic exchange the events are published to (declared durable).
    pub exchange: String,
    /// Durable quorum queue the workers consume, bound to run.finished and experiment.prune.
    pub work_queue: String,
    /// Queue holding messages that failed permanently or ran out of attempts.
    pub dead_letter_queue: String,
    /// Most letters the dead-letter queue holds; over it RabbitMQ refuses new ones.
    pub dead_letter_max_length: u32,
    /// Prefix of the delay queues, one per step of `retry.delays` (`<prefix>.30s`).
    pub delay_queue_prefix: String,
    /// The work queue's quorum delivery limit: RabbitMQ dead-letters a message redelivered more
    /// often, a backstop against one that crashes workers.
    pub delivery_limit: u32,
    /// Deliveries the broker hands a worker before it acks any (AMQP basic.qos prefetch).
    pub prefetch: u16,
    /// Largest message body the worker handles; a larger one is dead-lettered unread.
    pub max_message_bytes: usize,
    /// Longest wait for a connection to open (TCP, AMQP handshake, first channel) and for the
    /// broker to answer a declaration.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the broker to confirm a published message.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Longest time the worker holds a delivery unacknowledged: a waiting one is handed back
    /// through the first delay queue, a pass still running is cancelled and retried. Must stay
    /// under RabbitMQ's `consumer_timeout`.
    #[serde(with = "humantime_serde")]
    pub ack_deadline: Duration,
}

/// The MLflow tracking server and how the pruner calls it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowSettings {
    /// Base URL of the tracking server (the REST API lives under `/api/2.0/mlflow`); printed
    /// with its credentials redacted.
    pub tracking_uri: CredentialedUrl,
    /// Bearer token for a server behind auth (secret); the alternative to `username`.
    #[serde(default, serialize_with = "redact_opt")]
    pub token: Option<SecretString>,
    /// Basic-auth user, set together with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (secret), set together with `username`.
    #[serde(default, serialize_with = "redact_opt")]
    pub password: Option<SecretString>,
    /// Timeout of one HTTP request to MLflow.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Results asked for per search page (runs, logged models), 1 to 1000 (MLflow's cap).
    pub page_size: u32,
    /// Param that classic (pre-MLflow 3) trainers set true (`1`) once the model files are
    /// uploaded.
    pub model_uploaded_param: String,
    /// Also log the param `model_deleted = 1` on pruned runs, besides the tags (EmbeddingStudio's
    /// trainer filters on it).
    pub log_deleted_param: bool,
    /// Requests in flight towards MLflow, per process.
    pub requests_in_flight: AdaptiveLimit,
}

/// The S3-compatible store holding the models, and the bounds on what may be deleted there.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// S3 endpoint of MinIO or Garage; `None` for AWS S3. Printed with credentials redacted.
    #[serde(default)]
    pub endpoint: Option<CredentialedUrl>,
    /// Region sent in request signatures (Garage wants its `s3_region`).
    pub region: String,
    /// Empty when unset: refused by [`StoreSettings::check_keys`] before a command uses the store.
    #[serde(default)]
    pub access_key_id: String,
    /// Secret of `access_key_id`; empty when unset, printed as `[redacted]`.
    #[serde(serialize_with = "redact", default = "no_secret")]
    pub secret_access_key: SecretString,
    /// Path-style addressing (`http://host/bucket/key`), needed by MinIO and Garage.
    pub force_path_style: bool,
    /// Buckets the pruner may delete from; a model anywhere else is refused and reported.
    pub allowed_buckets: Vec<String>,
    /// Where an MLflow server that proxies artifacts stores them (an `s3://` URL DEST):
    /// `mlflow-artifacts:/x` maps to DEST/x.
    pub artifacts_destination: Url,
    /// Timeout of one request to the store.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Keys per DeleteObjects request, 1 to 1000 (the S3 limit).
    pub delete_batch_size: u16,
    /// Requests in flight towards the store, per process.
    pub requests_in_flight: AdaptiveLimit,
}

impl StoreSettings {
    /// Both store keys are set: there is no built-in one. Checked by what uses the store (the
    /// worker, `plan`, `prune`, `audit`, `report`, `config check --connect`), not by commands
    /// that only publish or read the broker.
    pub fn check_keys(&self) -> Result<(), SettingsError> {
        if self.access_key_id.is_empty() || self.secret_access_key.expose_secret().is_empty() {
            return Err(SettingsError::Rule(
                "store.access_key_id and store.secret_access_key must both be set (there is \
                 no built-in key): in the settings file, as MODEL_PRUNER__STORE__ACCESS_KEY_ID \
                 and MODEL_PRUNER__STORE__SECRET_ACCESS_KEY, or as AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The rules every location to delete is checked against.
    pub fn location_rules(&self) -> LocationRules {
        LocationRules {
            allowed_buckets: self.allowed_buckets.clone(),
            artifacts_destination: self.artifacts_destination.clone(),
        }
    }
}

/// Retries: of one step inside the worker, then of the whole message through the delay queues.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts of one step inside the worker before the message is delayed (1: no retry).
    pub in_process_attempts: u32,
    /// First backoff between in-process attempts; it doubles each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest backoff between in-process attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Deliveries of one message, the first included, before it is dead-lettered.
    pub max_attempts: u32,
    /// Waits before a transiently failed message returns to the work queue, one delay queue
    /// each: the n-th delay uses the n-th step, the last step repeats.
    pub delays: Vec<humantime_serde::Serde<Duration>>,
}

/// How much one worker does at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySettings {
    /// Experiments processed at the same time (one pass per experiment at a time).
    pub max_in_flight: usize,
    /// Requests one pass keeps in flight for each kind: folder listings, DeleteObjects batches
    /// and MLflow marks of pruned runs.
    pub parallel_deletions: usize,
    /// Time given to in-flight work after SIGTERM or SIGINT before the worker exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Bounds of an adaptive limit of requests in flight ([`crate::limit::Limiter`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveLimit {
    /// Where the limit starts.
    pub initial: usize,
    /// The fewest it goes down to.
    pub min: usize,
    /// The most it goes up to.
    pub max: usize,
}

/// The HTTP listener for Prometheus and health probes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Address and port `/metrics`, `/healthz` and `/readyz` are served on.
    pub listen: SocketAddr,
}

/// Logging; `RUST_LOG` sets the filter (default `info`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `json` for production, `pretty` for a terminal.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, the event's fields flattened in, with the current span.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Settings could not be loaded; the message names the source and the bad key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings did not load or deserialise (a bad value, an unknown key), with no settings
    /// file and no `MODEL_PRUNER__*` variable naming no setting to point at.
    #[error("invalid settings: {0}")]
    Invalid(config::ConfigError),
    /// As `Invalid`, naming the sources beyond the built-in defaults that could hold the error.
    #[error("invalid settings: {error} (look at: {sources})")]
    InvalidFrom {
        /// What the config crate reported.
        error: config::ConfigError,
        /// The settings file and the `MODEL_PRUNER__*` variables naming no setting, `; `-joined.
        sources: String,
    },
    /// The settings loaded but break a rule the types cannot express (a range, settings that
    /// go together, missing store keys); the message names the keys.
    #[error("invalid settings: {0}")]
    Rule(String),
}

impl Settings {
    /// Loads the defaults, then `file` (or the file named by `MODEL_PRUNER_CONFIG`), then the
    /// `MODEL_PRUNER__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let file: Option<PathBuf> = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        // What the file and MODEL_PRUNER__* set themselves, which no standard variable replaces.
        let mut own = config::Config::builder();
        if let Some(path) = &file {
            own = own.add_source(config::File::from(path.clone()).required(false));
        }
        let own = own.add_source(env_source()).build().ok();
        let explicit = |key: &str| {
            own.as_ref()
                .is_some_and(|c| c.get::<config::Value>(key).is_ok())
        };
        let standard = standard_env(|name| std::env::var(name).ok(), explicit);
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(&standard, config::FileFormat::Toml));
        if let Some(path) = &file {
            builder = builder.add_source(config::File::from(path.clone()).required(true));
        }
        let loaded: Result<Settings, config::ConfigError> = builder
            .add_source(env_source())
            .build()
            .and_then(config::Config::try_deserialize);
        let settings = loaded.map_err(|e| {
            let unknown = unknown_env_keys(std::env::vars());
            let mut sources = Vec::new();
            if !unknown.is_empty() {
                sources.push(format!(
                    "variables naming no setting: {}",
                    unknown.join(", ")
                ));
            }
            if let Some(path) = &file {
                sources.push(format!("settings file {}", path.display()));
            }
            match sources.is_empty() {
                true => SettingsError::Invalid(e),
                false => SettingsError::InvalidFrom {
                    error: e,
                    sources: sources.join("; "),
                },
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rules the types alone cannot express.
    fn validate(&self) -> Result<(), SettingsError> {
        let rule = |ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::Rule(msg.to_owned()))
            }
        };
        // The settings' policy must resolve on its own, for an experiment without tags.
        policy::resolve(&PolicyOverrides::default(), &BTreeMap::new(), &self.policy)
            .map_err(|e| SettingsError::Rule(format!("[policy]: {e}")))?;
        rule(
            (1..=1000).contains(&self.store.delete_batch_size),
            "store.delete_batch_size must be between 1 and 1000 (the S3 limit)",
        )?;
        rule(
            (1..=1000).contains(&self.mlflow.page_size),
            "mlflow.page_size must be between 1 and 1000",
        )?;
        rule(
            !self.store.allowed_buckets.is_empty(),
            "store.allowed_buckets must name at least one bucket",
        )?;
        rule(
            self.retry.in_process_attempts >= 1,
            "retry.in_process_attempts must be at least 1",
        )?;
        rule(
            self.retry.max_attempts >= 1,
            "retry.max_attempts must be at least 1",
        )?;
        rule(
            !self.retry.delays.is_empty(),
            "retry.delays must have at least one step",
        )?;
        rule(
            self.broker.dead_letter_max_length >= 1,
            "broker.dead_letter_max_length must be at least 1",
        )?;
        rule(
            self.broker.prefetch >= 1,
            "broker.prefetch must be at least 1 (0 would let RabbitMQ send unacked messages \
             without limit)",
        )?;
        rule(
            self.broker.max_message_bytes >= 1024,
            "broker.max_message_bytes must be at least 1024 (an event is a few hundred bytes)",
        )?;
        rule(
            !self.broker.connect_timeout.is_zero() && !self.broker.confirm_timeout.is_zero(),
            "broker.connect_timeout and broker.confirm_timeout must be above zero",
        )?;
        rule(
            self.broker.ack_deadline > self.broker.confirm_timeout,
            "broker.ack_deadline must be longer than broker.confirm_timeout (handing a delivery \
             back publishes a copy)",
        )?;
        rule(
            self.concurrency.max_in_flight >= 1,
            "concurrency.max_in_flight must be at least 1",
        )?;
        rule(
            self.concurrency.parallel_deletions >= 1,
            "concurrency.parallel_deletions must be at least 1",
        )?;
        for (name, limit) in [
            ("mlflow", &self.mlflow.requests_in_flight),
            ("store", &self.store.requests_in_flight),
        ] {
            if !(1 <= limit.min && limit.min <= limit.initial && limit.initial <= limit.max) {
                return Err(SettingsError::Rule(format!(
                    "{name}.requests_in_flight needs 1 <= min <= initial <= max (got min {}, initial {}, \
                     max {})",
                    limit.min, limit.initial, limit.max
                )));
            }
        }
        rule(
            self.mlflow.token.is_none() || self.mlflow.username.is_none(),
            "mlflow.token and mlflow.username are alternatives: set one",
        )?;
        rule(
            self.mlflow.username.is_some() == self.mlflow.password.is_some(),
            "mlflow.username and mlflow.password go together",
        )?;
        Ok(())
    }

    /// The effective settings as TOML, secrets replaced by `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings always serialise to TOML")
    }
}

/// A URL that may carry credentials (`https://user:secret@host`): printed (`Debug`, `Display`,
/// `config check`) with them replaced by `redacted`; [`CredentialedUrl::expose`] gives the real
/// one to the client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialedUrl(Url);

/// Parsed by hand: `Url`'s own deserializer quotes the whole input in its error, which would
/// print a password (a generated one with an unencoded `/` or `#` breaks the URL).
impl<'de> Deserialize<'de> for CredentialedUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Url::parse(&text).map(CredentialedUrl).map_err(|e| {
            serde::de::Error::custom(format!(
                "not a valid URL ({e}); characters such as / # ? @ in a user name or password \
                 must be percent-encoded"
            ))
        })
    }
}

impl CredentialedUrl {
    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl From<Url> for CredentialedUrl {
    fn from(url: Url) -> Self {
        CredentialedUrl(url)
    }
}

impl std::str::FromStr for CredentialedUrl {
    type Err = url::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Url::parse(s).map(CredentialedUrl)
    }
}

impl fmt::Display for CredentialedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.cannot_be_a_base() {
            // `amqp:user:secret@host` (no `//`): the credentials are an opaque path.
            return write!(f, "{}:(redacted)", shown.scheme());
        }
        if !shown.username().is_empty() {
            // Only fails for URLs that cannot carry credentials, which then have none.
            let _ = shown.set_username("redacted");
        }
        if shown.password().is_some() {
            let _ = shown.set_password(Some("redacted"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for CredentialedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for CredentialedUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn no_secret() -> SecretString {
    SecretString::from("")
}

fn redact<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with `overrides` (TOML) on top, without the environment.
    fn settings_with(overrides: &str) -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn credentials_inside_urls_are_never_printed() {
        let s = settings_with(
            r#"
            [broker]
            url = "amqps://mq-user:mq-secret@rabbit.example:5671/prod"
            [mlflow]
            tracking_uri = "https://ml-user:ml-secret@mlflow.example/prefix"
            [store]
            endpoint = "https://s3-user:s3-secret@s3.example"
            "#,
        );
        assert!(
            s.to_redacted_toml()
                .contains("amqps://redacted:redacted@rabbit.example:5671/prod"),
            "the host and vhost show"
        );
        let printed = [
            format!("{s:?}"),
            s.to_redacted_toml(),
            s.mlflow.tracking_uri.to_string(),
            s.broker.url.to_string(),
        ];
        for text in printed {
            for secret in [
                "ml-user",
                "ml-secret",
                "s3-user",
                "s3-secret",
                "mq-user",
                "mq-secret",
            ] {
                assert!(!text.contains(secret), "{secret} printed in {text}");
            }
        }
        assert_eq!(
            s.mlflow.tracking_uri.to_string(),
            "https://redacted:redacted@mlflow.example/prefix"
        );
        let opaque: CredentialedUrl = "amqp:mq-user:mq-secret@rabbit".parse().unwrap();
        assert_eq!(
            opaque.to_string(),
            "amqp:(redacted)",
            "a URL without // keeps its credentials in an opaque path: none of it shows"
        );
        assert_eq!(
            s.mlflow.tracking_uri.expose().password(),
            Some("ml-secret"),
            "the client still gets them"
        );
    }

    const KEYS: &str = "[store]\naccess_key_id = \"AKIA1\"\nsecret_access_key = \"s\"\n";

    #[test]
    fn an_unbounded_prefetch_or_a_tiny_size_bound_is_refused() {
        assert!(settings_with("").validate().is_ok());
        for bad in ["[broker]\nprefetch = 0", "[broker]\nmax_message_bytes = 10"] {
            let err = settings_with(bad).validate().unwrap_err().to_string();
            assert!(err.contains("broker."), "{bad}: {err}");
        }
    }

    #[test]
    fn there_is_no_built_in_store_key() {
        assert!(settings_with(KEYS).store.check_keys().is_ok());
        for partial in ["", "[store]\naccess_key_id = \"AKIA1\""] {
            let s = settings_with(partial);
            assert!(s.validate().is_ok(), "only what uses the store needs keys");
            let err = s.store.check_keys().unwrap_err().to_string();
            assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
            assert!(err.contains("MODEL_PRUNER__STORE__ACCESS_KEY_ID"), "{err}");
        }
    }

    fn vars(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), "x".to_owned()))
            .collect()
    }

    #[test]
    fn standard_variables_stand_for_their_settings_and_aws_region_wins() {
        let env: BTreeMap<&str, &str> = [
            ("MLFLOW_TRACKING_URI", "https://mlflow.example"),
            ("MLFLOW_TRACKING_TOKEN", "t0k3n"),
            ("MLFLOW_S3_ENDPOINT_URL", "https://s3.example"),
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-central-1"),
            ("MLFLOW_TRACKING_USERNAME", " "),
        ]
        .into();
        let var = |name: &str| env.get(name).map(|v| (*v).to_owned());
        let s = settings_with(&standard_env(var, |_| false));
        assert_eq!(s.mlflow.tracking_uri.to_string(), "https://mlflow.example/");
        assert!(s.mlflow.token.is_some());
        assert_eq!(s.mlflow.username, None, "blank is unset");
        assert_eq!(s.store.access_key_id, "AKIA1");
        assert_eq!(s.store.region, "eu-central-1");
        assert_eq!(
            s.store.endpoint.map(|e| e.to_string()).as_deref(),
            Some("https://s3.example/")
        );
        assert_eq!(standard_env(|_| None, |_| false), "");

        // Never mixed with what the file or MODEL_PRUNER__* say.
        let file_sets = |keys: &'static [&'static str]| move |k: &str| keys.contains(&k);
        let toml = standard_env(var, file_sets(&["mlflow.tracking_uri"]));
        assert!(
            !toml.contains("mlflow"),
            "no token for another server: {toml}"
        );
        let toml = standard_env(var, file_sets(&["mlflow.username"]));
        assert!(
            toml.contains("tracking_uri") && !toml.contains("token"),
            "{toml}"
        );
        let toml = standard_env(var, file_sets(&["store.access_key_id"]));
        assert!(
            !toml.contains("AKIA1") && !toml.contains("s3cr3t"),
            "{toml}"
        );
        let only_id = |name: &str| (name == "AWS_ACCESS_KEY_ID").then(|| "AKIA1".to_owned());
        assert_eq!(
            standard_env(only_id, |_| false),
            "",
            "a key id without its secret"
        );
    }

    #[test]
    fn a_settings_variable_with_single_underscores_is_warned_about() {
        let warnings = env_warnings(vars(&[
            "MODEL_PRUNER_MLFLOW_TRACKING_URI",
            "MODEL_PRUNER_STORE__ACCESS_KEY_ID",
            "MODEL_PRUNER__POLICY__KEEP_TOP",
            "MODEL_PRUNER_CONFIG",
            "MODEL_PRUNER_PYTHON",
            "MODEL_PRUNER_MLFLOW_SPEC",
        ]));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("e.g. MODEL_PRUNER__MLFLOW__TRACKING_URI"));
        assert!(warnings[1].contains("e.g. MODEL_PRUNER__STORE__ACCESS_KEY_ID"));
    }

    #[test]
    fn variables_naming_no_setting_are_pointed_at() {
        let unknown = unknown_env_keys(vars(&[
            "MODEL_PRUNER__POLICY__KEEPTOP",
            "MODEL_PRUNER__POLICY__KEEP_TOP",
            "MODEL_PRUNER__MLFLOW__TOKEN",
            "MODEL_PRUNER__STORE__ALLOWED_BUCKETS",
        ]));
        assert_eq!(unknown, ["MODEL_PRUNER__POLICY__KEEPTOP"]);
    }

    #[test]
    fn a_url_that_does_not_parse_is_reported_without_its_password() {
        let err = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(
                r#"
                [broker]
                url = "amqp://user:pa/ss#word@rabbit.example:5672/%2f"
                "#,
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize::<Settings>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid URL"), "{err}");
        assert!(!err.contains("pa/ss"), "{err}");
        assert!(!err.contains("word@"), "{err}");
    }
}
