//! The JSON Schemas in `schemas/` agree with the parser: their examples parse (and their
//! policies resolve), every policy field is described, and removing a field they require is an
//! error.

use std::collections::BTreeMap;

use model_pruner::domain::event::{EXPERIMENT_PRUNE, Event, RUN_FINISHED};
use model_pruner::domain::policy::{self, PolicyOverrides};
use model_pruner::settings::Settings;
use serde_json::Value;

fn schema(routing_key: &str) -> Value {
    let path = format!(
        "{}/schemas/{routing_key}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn schema_examples_parse_and_required_fields_are_required() {
    for key in [RUN_FINISHED, EXPERIMENT_PRUNE] {
        let s = schema(key);
        assert_eq!(s["title"], key);
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let examples = s["examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            let body = serde_json::to_vec(example).unwrap();
            let event = Event::parse(key, &body).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(Event::parse(key, &event.to_body()).unwrap(), event);
            for field in s["required"].as_array().expect("required") {
                let mut without = example.clone();
                without
                    .as_object_mut()
                    .unwrap()
                    .remove(field.as_str().unwrap());
                let body = serde_json::to_vec(&without).unwrap();
                assert!(Event::parse(key, &body).is_err(), "{key} without {field}");
            }
        }
        let directions = &s["$defs"]["policy"]["properties"]["direction"]["enum"];
        assert_eq!(directions, &serde_json::json!(["max", "min"]));
    }
}

#[test]
fn schema_properties_cover_every_field_the_worker_reads() {
    let rf = schema(RUN_FINISHED);
    let ep = schema(EXPERIMENT_PRUNE);
    for f in ["experiment_id", "run_id", "policy"] {
        assert!(rf["properties"].get(f).is_some(), "run.finished.{f}");
    }
    for f in [
        "experiment_id",
        "policy",
        "delete_experiment",
        "dry_run",
        "force",
    ] {
        assert!(ep["properties"].get(f).is_some(), "experiment.prune.{f}");
    }
}

#[test]
fn schema_policy_covers_every_policy_field_and_examples_resolve() {
    let every = PolicyOverrides {
        metric: Some("m".into()),
        direction: Some("max".into()),
        keep_top: Some(1),
        keep_latest: Some(1),
        grace: Some("1h".into()),
        group_by: Some("params.p".into()),
        min_metric: Some(0.0),
        max_metric: Some(1.0),
        older_than: Some("1d".into()),
    };
    let fields = serde_json::to_value(&every).unwrap();
    let defaults = Settings::load(None).expect("default settings").policy;
    for key in [RUN_FINISHED, EXPERIMENT_PRUNE] {
        let s = schema(key);
        let properties = &s["$defs"]["policy"]["properties"];
        for field in fields.as_object().unwrap().keys() {
            assert!(properties.get(field).is_some(), "{key}: policy.{field}");
        }
        for example in s["examples"].as_array().unwrap() {
            let policy: PolicyOverrides =
                serde_json::from_value(example["policy"].clone()).unwrap_or_default();
            policy::resolve(&policy, &BTreeMap::new(), &defaults)
                .unwrap_or_else(|e| panic!("{key} example {example}: {e}"));
        }
    }
}
