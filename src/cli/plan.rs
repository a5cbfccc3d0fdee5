//! Renders a pass report as a table or JSON, with the models and bytes it frees.

use std::collections::BTreeMap;
use std::io::Write;

use std::io::IsTerminal;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::format;
use crate::domain::policy::PolicySource;
use crate::domain::ranking::{Decision, RankedRun};
use crate::domain::size::Bytes;
use crate::engine::{Engine, PassReport};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Usage;

/// A spinner on stderr while a pass runs, when stderr is a terminal and the output is not
/// JSON: requests so far and the models deleted and marked, from the pass's `metrics`.
pub(super) struct Watch {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(super) fn start(metrics: &Metrics, json: bool) -> Watch {
        if json || !std::io::stderr().is_terminal() {
            return Watch {
                bar: ProgressBar::hidden(),
                task: tokio::spawn(async {}),
            };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        let (shown, metrics) = (bar.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            loop {
                tick.tick().await;
                let p = metrics.progress();
                shown.set_message(format!(
                    "{} to MLflow, {} to the store; {} deleted and marked ({}, {})",
                    format::count(p.mlflow_requests, "request"),
                    format::count(p.store_requests, "request"),
                    format::count(p.models_deleted, "model"),
                    format::count(p.objects_deleted, "object"),
                    Bytes(p.bytes_deleted),
                ));
                shown.tick();
            }
        });
        Watch { bar, task }
    }

    /// Stops and clears the spinner.
    pub(super) fn done(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// Objects and bytes under every planned location, for a dry run's summary.
pub(super) async fn measure(engine: &Engine, report: &PassReport) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    for (location, _) in report.planned.iter().flat_map(|p| &p.locations) {
        let usage = engine
            .store()
            .usage(&location.bucket, &location.prefix)
            .await
            .with_context(|| format!("measuring {location}"))?;
        total.objects += usage.objects;
        total.bytes += usage.bytes;
    }
    Ok(total)
}

/// When every planned folder is empty, what that means: a pass would stop (kind
/// `empty_folders`) and delete nothing, because the models are not where the settings say.
pub(super) fn nothing_stored(
    report: &PassReport,
    usage: &Usage,
    settings: &Settings,
) -> Option<String> {
    let folders = report.planned.iter().flat_map(|p| &p.locations).count();
    if folders == 0 || usage.objects > 0 || report.planned.iter().all(|p| p.resume) {
        return None;
    }
    Some(format!(
        "the {} planned for deletion hold no file: a pass would stop and delete nothing. The \
         models live elsewhere: check store.endpoint ({}) and, for mlflow-artifacts:/ URIs, \
         that store.artifacts_destination ({}) is the tracking server's \
         --artifacts-destination",
        format::count(folders as u64, "folder"),
        settings
            .store
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "AWS S3".into()),
        settings.store.artifacts_destination,
    ))
}

/// Prints the report on stdout.
pub(super) fn print(report: &PassReport, freed: &Usage, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        // The report's own fields, each run with its outcome, and what was (or would be) freed.
        let mut value = serde_json::to_value(report)?;
        if let Some(runs) = value["ranking"]["runs"].as_array_mut() {
            for (json, run) in runs.iter_mut().zip(&report.ranking.runs) {
                json["outcome"] = outcome(report, run).into();
            }
        }
        value["freed"] = json!({
            "models": report.planned.len(),
            "objects": freed.objects,
            "bytes": freed.bytes,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(out, "{}", table(report, freed))?;
    }
    Ok(())
}

/// Shows a dry run's plan on stderr and asks on the terminal whether to go ahead; true for
/// `y` or `yes`.
pub(super) async fn confirm(
    preview: &PassReport,
    usage: &Usage,
    delete_experiment: bool,
) -> anyhow::Result<bool> {
    eprint!("{}", table(preview, usage));
    let mut question = format!(
        "delete {} ({}, {}) of experiment {} ({:?})",
        format::count(preview.planned.len() as u64, "model"),
        format::count(usage.objects, "object"),
        usage.bytes,
        preview.experiment_id,
        preview.experiment_name,
    );
    if delete_experiment {
        question.push_str(" and delete the experiment");
    }
    eprint!("{question}? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await?
    .context("reading the answer")?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

fn table(report: &PassReport, freed: &Usage) -> String {
    let mut rows = vec![[
        "RANK".to_string(),
        "RUN ID".into(),
        "RUN NAME".into(),
        report.policy.metric.to_uppercase(),
        "ENDED".into(),
        "OUTCOME".into(),
        "RULE".into(),
        "WHY".into(),
    ]];
    // The reasons name the policy for MLflow's tag; the header names it once here.
    let by_policy = format!(" by {}", report.policy);
    for r in &report.ranking.runs {
        rows.push([
            r.rank.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.run.run_id.clone(),
            r.run.run_name.clone(),
            r.run
                .metric
                .map(format::metric)
                .unwrap_or_else(|| "-".into()),
            r.run
                .end_time
                .map(|end| end.to_string())
                .unwrap_or_else(|| "-".into()),
            outcome(report, r).into(),
            serde_json::to_value(r.rule)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.reason.replacen(&by_policy, "", 1),
        ]);
    }
    let mut s = format!(
        "experiment {} ({:?}){}\npolicy: {} (from {})\n",
        report.experiment_id,
        report.experiment_name,
        if report.dry_run {
            " — dry run: nothing changed"
        } else {
            ""
        },
        report.policy,
        sources(&report.policy_sources),
    );
    s.push_str(&format::columns(&rows));
    let verb = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    // Each outcome with its count, in the order first seen (the ranking's order).
    let mut outcomes: Vec<(&str, usize)> = Vec::new();
    for run in &report.ranking.runs {
        let outcome = outcome(report, run);
        match outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => outcomes.push((outcome, 1)),
        }
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
    s.push_str(&format!(
        "{} ranked{}{}; {verb} {}, {}, {}\n",
        report.ranking.ranked,
        if outcomes.is_empty() { "" } else { ": " },
        outcomes.join(", "),
        format::count(report.planned.len() as u64, "model"),
        format::count(freed.objects, "object"),
        freed.bytes,
    ));
    for run in &report.unmarked {
        s.push_str(&format!(
            "run {}: files deleted, but MLflow refused the mark ({}); the next pass completes it\n",
            run.run_id, run.error
        ));
    }
    if let Some(until) = report.ranking.grace_ends() {
        s.push_str(&format!(
            "the first grace window ends at {}: a pass after that deletes what is still out of the top\n",
            until
        ));
    }
    if let Some(at) = report.ranking.next_look()
        && report.ranking.grace_ends() != Some(at)
    {
        s.push_str(&format!(
            "the first run held back by older_than becomes a candidate at {}\n",
            at
        ));
    }
    if !report.ranking.ungrouped.is_empty() {
        s.push_str(&format!(
            "ranked apart, without {}: {}\n",
            report
                .policy
                .group_by
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            report.ranking.ungrouped.join(", ")
        ));
    }
    if report.experiment_deleted {
        s.push_str("experiment deleted\n");
    }
    s
}

/// What happened to a run, or would in a dry run.
fn outcome(report: &PassReport, run: &RankedRun) -> &'static str {
    let id = run.run.run_id.as_str();
    match (&run.decision, report.dry_run) {
        (Decision::Delete, true) => "would delete",
        (Decision::Delete, false) if report.unmarked.iter().any(|u| u.run_id == id) => {
            "deleted, not marked"
        }
        (Decision::Delete, false) if report.pruned.iter().any(|p| p.run_id == id) => "deleted",
        (Decision::Delete, false) => "not deleted",
        (Decision::Keep, true) => "keep",
        (Decision::Keep, false) => "kept",
        (Decision::Grace { .. }, _) => "in grace",
        (Decision::Protected { .. }, _) => "protected",
        (Decision::Skipped { .. }, _) => "skipped",
    }
}

/// `keep_top: options; metric, direction: experiment tags; the rest: settings`.
fn sources(sources: &BTreeMap<PolicySource, Vec<&str>>) -> String {
    let name = |source: &PolicySource| match source {
        PolicySource::Event => "options",
        PolicySource::ExperimentTag => "experiment tags",
        PolicySource::Settings => "settings",
    };
    if sources.len() == 1 {
        return sources.keys().map(|s| format!("the {}", name(s))).collect();
    }
    sources
        .iter()
        .map(|(source, fields)| match source {
            PolicySource::Settings => format!("the rest: {}", name(source)),
            _ => format!("{}: {}", fields.join(", "), name(source)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
