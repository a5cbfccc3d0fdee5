//! The dashboard, the alert rules and both READMEs name only metrics the worker exports (or
//! `report --textfile` writes).

use std::collections::BTreeSet;
use std::path::Path;

use crate::scrape::{Endpoint, settings};

/// Every `model_pruner_*` name in `text` (the bare prefix, as prose names it, is not one), each
/// with the label names of the selector that follows it (`{label="v", ...}`), if any.
fn mentions_in(text: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("model_pruner_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if end > "model_pruner_".len() {
            let labels = tail[end..]
                .strip_prefix('{')
                .and_then(|s| s.split('}').next())
                .into_iter()
                .flat_map(|inside| inside.split(','))
                .filter_map(|pair| pair.split_once('='))
                .map(|(label, _)| label.trim().trim_end_matches('!').to_owned())
                .collect();
            found.push((tail[..end].to_owned(), labels));
        }
        rest = &tail[end..];
    }
    found
}

#[test]
fn deploy_files_name_only_metrics_the_worker_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "deploy/grafana/dashboards/model-pruner.json",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts.test.yml",
        "deploy/README.md",
        "README.md",
    ];
    let metrics = model_pruner::metrics::Metrics::new();
    let mut exported = metrics.exported_names().clone();
    // What `report --textfile` leaves for a textfile collector.
    exported.extend(
        model_pruner::metrics::REPORT_GAUGES
            .iter()
            .map(|(name, _)| (*name).to_owned()),
    );
    let mut unknown = Vec::new();
    let mut named = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        for (name, _) in mentions_in(&text) {
            if !exported.contains(&name) {
                unknown.push(format!("{file}: {name}"));
            }
            named.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the worker: {unknown:#?}"
    );
    assert!(
        named.len() >= 10,
        "the files name too few metrics: {named:?}"
    );
}

#[test]
fn the_readmes_name_only_labels_the_worker_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let metrics = model_pruner::metrics::Metrics::new();
    let families = metrics.registry().gather();
    let labels_of = |name: &str| -> Option<BTreeSet<String>> {
        let family = families.iter().find(|f| f.name() == name)?;
        Some(
            family
                .get_metric()
                .iter()
                .flat_map(|m| m.get_label().iter().map(|l| l.name().to_owned()))
                .collect(),
        )
    };
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in ["README.md", "deploy/README.md"] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let selectors = mentions_in(&text)
            .into_iter()
            .flat_map(|(name, labels)| labels.into_iter().map(move |l| (name.clone(), l)));
        for (name, label) in selectors {
            // Families whose series appear only with their first event have no labels yet.
            let Some(labels) = labels_of(&name).filter(|l| !l.is_empty()) else {
                continue;
            };
            checked += 1;
            if !labels.contains(&label) {
                wrong.push(format!(
                    "{file}: {name}{{{label}=...}}, labels are {labels:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(checked >= 3, "too few selectors checked: {checked}");
}

#[tokio::test]
async fn a_fresh_worker_exports_its_families_before_any_event() {
    let s = settings();
    let app = crate::support::app::TestApp::spawn(s).await;
    let endpoint = Endpoint::at(app.address());
    endpoint
        .wait("/healthz", "the listener answers", |status, _| {
            status == 200
        })
        .await;
    let scraped: BTreeSet<String> = endpoint
        .metrics()
        .await
        .names()
        .map(str::to_owned)
        .collect();
    for name in [
        "model_pruner_build_info",
        "model_pruner_messages_received_total",
        "model_pruner_messages_finished_total",
        "model_pruner_messages_in_flight",
        "model_pruner_passes_total",
        "model_pruner_pass_duration_seconds_count",
        "model_pruner_runs_total",
        "model_pruner_last_successful_pass_timestamp_seconds",
    ] {
        assert!(scraped.contains(name), "{name} missing from {scraped:#?}");
    }
    let exported = app.metrics().exported_names();
    for name in &scraped {
        assert!(exported.contains(name), "{name} not in exported_names()");
    }
    app.finish().await;
}
