//! The message contract: events that trigger a ranking pass, parsed from a routing key and a
//! JSON body. Unknown fields are ignored; missing or mistyped required fields are errors.

use serde::{Deserialize, Serialize};

use crate::domain::policy::PolicyOverrides;

/// Routing key of [`RunFinished`].
pub const RUN_FINISHED: &str = "run.finished";
/// Routing key of [`ExperimentPrune`].
pub const EXPERIMENT_PRUNE: &str = "experiment.prune";

/// A training run ended: rank its experiment and prune what fell out of the top N.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RunFinished {
    /// MLflow id of the experiment to rank (a string, as MLflow's API writes it); not empty.
    pub experiment_id: String,
    /// MLflow id of the run that ended; not empty. The event fails if the run is not in
    /// `experiment_id`.
    pub run_id: String,
    /// Policy fields that take precedence over the experiment's tags and the settings; none
    /// when absent.
    #[serde(default)]
    pub policy: PolicyOverrides,
}

/// Sweep a whole experiment, optionally deleting it afterwards.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ExperimentPrune {
    /// MLflow id of the experiment to sweep (a string, as MLflow's API writes it); not empty.
    pub experiment_id: String,
    /// Policy fields that take precedence over the experiment's tags and the settings; none
    /// when absent.
    #[serde(default)]
    pub policy: PolicyOverrides,
    /// Soft-delete the experiment in MLflow once all its unprotected models are gone.
    #[serde(default)]
    pub delete_experiment: bool,
    /// Report the plan; delete and mark nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Go past `policy.max_deletions_per_pass`.
    #[serde(default)]
    pub force: bool,
}

/// An event the engine handles.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A `run.finished` message.
    RunFinished(RunFinished),
    /// An `experiment.prune` message.
    ExperimentPrune(ExperimentPrune),
}

/// A message that does not follow the contract. Always permanent.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The routing key is neither `run.finished` nor `experiment.prune`.
    #[error("unknown routing key {0:?} (expected run.finished or experiment.prune)")]
    UnknownRoutingKey(String),
    /// The parser's message is part of this one (not an error `source`), so a chain printed
    /// with `{:#}` says it once.
    #[error("invalid {routing_key} message: {cause}")]
    Json {
        /// The routing key the body was parsed for.
        routing_key: &'static str,
        /// What the JSON parser refused: malformed JSON, a missing or mistyped field.
        cause: serde_json::Error,
    },
    /// A required id is empty or only whitespace.
    #[error("invalid {routing_key} message: {field} must not be empty")]
    Empty {
        /// The routing key of the message.
        routing_key: &'static str,
        /// The empty field: `experiment_id` or `run_id`.
        field: &'static str,
    },
}

impl Event {
    /// Parses a message body according to its routing key.
    pub fn parse(routing_key: &str, body: &[u8]) -> Result<Self, EventError> {
        let event = match routing_key {
            RUN_FINISHED => Event::RunFinished(json(RUN_FINISHED, body)?),
            EXPERIMENT_PRUNE => Event::ExperimentPrune(json(EXPERIMENT_PRUNE, body)?),
            other => return Err(EventError::UnknownRoutingKey(other.to_owned())),
        };
        let routing_key = event.routing_key();
        let empty = |field| EventError::Empty { routing_key, field };
        if event.experiment_id().trim().is_empty() {
            return Err(empty("experiment_id"));
        }
        if let Event::RunFinished(e) = &event
            && e.run_id.trim().is_empty()
        {
            return Err(empty("run_id"));
        }
        Ok(event)
    }

    /// The routing key this event is published with: [`RUN_FINISHED`] or [`EXPERIMENT_PRUNE`].
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::RunFinished(_) => RUN_FINISHED,
            Event::ExperimentPrune(_) => EXPERIMENT_PRUNE,
        }
    }

    /// The experiment the event is about, as MLflow's id.
    pub fn experiment_id(&self) -> &str {
        match self {
            Event::RunFinished(e) => &e.experiment_id,
            Event::ExperimentPrune(e) => &e.experiment_id,
        }
    }

    /// The run a `run.finished` event names; none for a sweep.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Event::RunFinished(e) => Some(&e.run_id),
            Event::ExperimentPrune(_) => None,
        }
    }

    /// The JSON body of this event, as published.
    pub fn to_body(&self) -> Vec<u8> {
        match self {
            Event::RunFinished(e) => serde_json::to_vec(e),
            Event::ExperimentPrune(e) => serde_json::to_vec(e),
        }
        .expect("events always serialise")
    }
}

fn json<T: for<'de> Deserialize<'de>>(
    routing_key: &'static str,
    body: &[u8],
) -> Result<T, EventError> {
    serde_json::from_slice(body).map_err(|cause| EventError::Json { routing_key, cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_finished_with_policy_parses() {
        let e = Event::parse(
            RUN_FINISHED,
            br#"{"experiment_id":"12","run_id":"9f1c","policy":{"metric":"accuracy","direction":"max","keep_top":5}}"#,
        )
        .unwrap();
        let Event::RunFinished(e) = e else { panic!() };
        assert_eq!(e.experiment_id, "12");
        assert_eq!(e.run_id, "9f1c");
        assert_eq!(e.policy.keep_top, Some(5));
        assert_eq!(e.policy.direction.as_deref(), Some("max"));
    }

    #[test]
    fn experiment_prune_defaults_its_flags() {
        let e = Event::parse(EXPERIMENT_PRUNE, br#"{"experiment_id":"12"}"#).unwrap();
        assert_eq!(
            e,
            Event::ExperimentPrune(ExperimentPrune {
                experiment_id: "12".into(),
                policy: PolicyOverrides::default(),
                delete_experiment: false,
                dry_run: false,
                force: false,
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(
            Event::parse(
                RUN_FINISHED,
                br#"{"experiment_id":"1","run_id":"r","future":{"x":1},"policy":{"new":true}}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_run_id_is_an_error_naming_the_field() {
        let err = Event::parse(RUN_FINISHED, br#"{"experiment_id":"1"}"#).unwrap_err();
        assert!(err.to_string().contains("run_id"), "{err}");
    }

    #[test]
    fn numeric_experiment_id_is_mistyped() {
        let err = Event::parse(EXPERIMENT_PRUNE, br#"{"experiment_id":12}"#).unwrap_err();
        assert!(
            err.to_string().contains("invalid experiment.prune message"),
            "{err}"
        );
    }

    #[test]
    fn string_keep_top_is_mistyped() {
        assert!(
            Event::parse(
                EXPERIMENT_PRUNE,
                br#"{"experiment_id":"1","policy":{"keep_top":"5"}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn malformed_json_is_an_error() {
        let err = Event::parse(RUN_FINISHED, b"{not json").unwrap_err();
        assert!(matches!(err, EventError::Json { .. }));
        assert!(err.to_string().contains("key must be a string"), "{err}");
        let source = std::error::Error::source(&err);
        assert!(
            source.is_none(),
            "the parser's message is said once: {source:?}"
        );
    }

    #[test]
    fn empty_ids_are_errors() {
        assert!(Event::parse(EXPERIMENT_PRUNE, br#"{"experiment_id":" "}"#).is_err());
        assert!(Event::parse(RUN_FINISHED, br#"{"experiment_id":"1","run_id":""}"#).is_err());
    }

    #[test]
    fn unknown_routing_key_is_an_error() {
        assert!(matches!(
            Event::parse("run.started", b"{}"),
            Err(EventError::UnknownRoutingKey(_))
        ));
    }

    #[test]
    fn events_round_trip_through_their_body() {
        let e = Event::parse(
            EXPERIMENT_PRUNE,
            br#"{"experiment_id":"7","policy":{"keep_top":0},"delete_experiment":true,"force":true}"#,
        )
        .unwrap();
        assert_eq!(Event::parse(e.routing_key(), &e.to_body()).unwrap(), e);
    }
}
