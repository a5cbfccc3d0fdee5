//! `model-pruner report`: where the tracking server's storage is and what the retention policy
//! would free, per experiment, without changing anything.
//!
//! Each experiment gets the dry run a pass makes (the same plan, no second ranking), a
//! measurement of its planned folders, and one listing of its artifact root. Experiments are
//! read a few at a time and only their summaries are kept. An experiment whose policy cannot
//! apply (no run has the metric, a bucket outside `store.allowed_buckets`) is reported with the
//! problem; one that could not be read (MLflow or the store failing) is reported as skipped, and
//! the command then exits 1.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::{Failure, PolicyArgs, format};
use crate::domain::audit;
use crate::domain::classify::ErrorClass;
use crate::domain::policy::PolicySource;
use crate::domain::size::Bytes;
use crate::engine::{Engine, PassKind, PassRequest};
use crate::metrics::{Metrics, REPORT_GAUGES};
use crate::mlflow::{Experiment, MlflowClient};
use crate::settings::Settings;
use crate::store::Usage;

/// Arguments of `report`.
#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    /// Only experiments matching this MLflow experiment-search filter, e.g. "tags.team = 'nlp'"
    /// (default: every active experiment).
    #[arg(long, default_value = "")]
    filter: String,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    csv: bool,
    /// Experiments read at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Also write the totals to this file in Prometheus' text format, for node_exporter's
    /// textfile collector (written whole, then renamed into place).
    #[arg(long, value_name = "PATH")]
    textfile: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
}

impl ReportArgs {
    /// `--json`: errors are written as JSON too.
    pub(super) fn json(&self) -> bool {
        self.json
    }
}

/// Models, objects and bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Amount {
    models: u64,
    objects: u64,
    bytes: Bytes,
}

/// One experiment's line of the report.
#[derive(Debug, Serialize)]
struct Line {
    experiment_id: String,
    name: String,
    /// The policy a pass would apply, when it resolves.
    policy: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    policy_sources: BTreeMap<PolicySource, Vec<&'static str>>,
    runs: Option<usize>,
    /// Runs and logged models that still have a model stored, with what lies under the
    /// experiment's artifact root (models and anything else).
    stored: Option<Amount>,
    /// What a pass would delete now.
    reclaimable: Amount,
    protected: usize,
    in_grace: usize,
    problems: Vec<String>,
    /// Not read to the end (MLflow or the store failed): its figures are incomplete.
    skipped: bool,
}

/// What the whole report holds.
#[derive(Debug, Serialize)]
struct Report {
    filter: String,
    experiments: Vec<Line>,
    totals: Totals,
    /// Requests the report made, to MLflow and to the store.
    requests: Requests,
}

#[derive(Debug, Default, Serialize)]
struct Requests {
    mlflow: u64,
    store: u64,
}

#[derive(Debug, Default, Serialize)]
struct Totals {
    experiments: usize,
    skipped: usize,
    with_problems: usize,
    stored: Amount,
    reclaimable: Amount,
}

/// Runs `report`.
pub(super) async fn run(settings: &Settings, args: ReportArgs) -> anyhow::Result<ExitCode> {
    if let Err(failure) = args.policy.check(&settings.policy) {
        return Ok(failure.exit(args.json));
    }
    let metrics = Metrics::new();
    let mlflow =
        MlflowClient::new(&settings.mlflow, &metrics).context("building the MLflow client")?;
    let experiments = match mlflow.search_experiments(&args.filter).await {
        Ok(found) => found,
        Err(e) if e.error_code() == Some("INVALID_PARAMETER_VALUE") => {
            let message = format!("--filter {:?}: MLflow cannot read it: {e}", args.filter);
            return Ok(Failure { code: 2, message }.exit(args.json));
        }
        Err(e) => return Err(e).context("listing the experiments"),
    };
    let engine = Engine::new(settings, &metrics).context("building the MLflow client")?;
    let progress = format::progress_bar(experiments.len() as u64, "experiments");
    let listed = std::sync::atomic::AtomicU64::new(0);
    let mut lines: Vec<Line> = futures::stream::iter(experiments)
        .map(|experiment| {
            let (engine, args, progress, listed) = (&engine, &args, &progress, &listed);
            async move {
                let line = summarize(engine, settings, args, experiment).await;
                let bytes = line.stored.map_or(0, |s| s.bytes.0);
                let total = listed.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
                progress.set_message(format!("{} listed", Bytes(total)));
                progress.inc(1);
                line
            }
        })
        .buffer_unordered(usize::from(args.concurrency))
        .collect()
        .await;
    progress.finish_and_clear();
    lines.sort_by(|a, b| {
        b.reclaimable
            .bytes
            .cmp(&a.reclaimable.bytes)
            .then_with(|| a.experiment_id.cmp(&b.experiment_id))
    });
    let progress = metrics.progress();
    let report = Report {
        filter: args.filter.clone(),
        totals: totals(&lines),
        experiments: lines,
        requests: Requests {
            mlflow: progress.mlflow_requests,
            store: progress.store_requests,
        },
    };
    if let Some(path) = &args.textfile {
        write_textfile(path, &report.totals)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else if args.csv {
        write!(out, "{}", csv(&report))?;
    } else {
        write!(out, "{}", table(&report))?;
    }
    Ok(if report.totals.skipped > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One experiment: the dry run of a sweep, its planned folders measured, its root listed.
async fn summarize(
    engine: &Engine,
    settings: &Settings,
    args: &ReportArgs,
    experiment: Experiment,
) -> Line {
    let mut line = Line {
        experiment_id: experiment.experiment_id.clone(),
        name: experiment.name.clone(),
        policy: None,
        policy_sources: BTreeMap::new(),
        runs: None,
        stored: None,
        reclaimable: Amount::default(),
        protected: 0,
        in_grace: 0,
        problems: Vec::new(),
        skipped: false,
    };
    let id = experiment.experiment_id.as_str();
    let request = PassRequest {
        experiment_id: id.to_owned(),
        policy: args.policy.overrides(),
        run_ids: vec![],
        kind: PassKind::Sweep {
            delete_experiment: false,
            force: true,
        },
        dry_run: true,
    };
    let mut stored_models = None;
    let mut planned: Vec<(String, String)> = Vec::new();
    match engine.run_pass(&request).await {
        Ok(report) => {
            line.policy = Some(report.policy.to_string());
            line.policy_sources = report.policy_sources.clone();
            line.runs = Some(report.ranking.runs.len());
            line.protected = report.ranking.count("protected");
            line.in_grace = report.ranking.count("grace");
            line.reclaimable.models = report.planned.len() as u64;
            stored_models = Some(
                report
                    .ranking
                    .runs
                    .iter()
                    .filter(|r| r.run.has_model && !r.run.pruned)
                    .count() as u64,
            );
            planned = report
                .planned
                .iter()
                .flat_map(|p| &p.locations)
                .map(|(l, _)| (l.bucket.clone(), l.prefix.clone()))
                .collect();
        }
        Err(e) => {
            line.skipped = e.class() == ErrorClass::Transient;
            line.problems.push(e.to_string());
        }
    }
    let rules = settings.store.location_rules();
    let root = match audit::experiment_root(&rules, &experiment.artifact_location) {
        Ok(root) => Some(root),
        Err(e) => {
            line.problems.push(format!(
                "artifact location {:?} not measured: {e}",
                experiment.artifact_location
            ));
            None
        }
    };
    // One walk of the root measures what is stored and the planned folders inside it; a
    // planned folder elsewhere is listed on its own.
    let (inside, outside): (Vec<_>, Vec<_>) = planned.into_iter().partition(|(bucket, prefix)| {
        root.as_ref()
            .is_some_and(|r| *bucket == r.bucket && prefix.starts_with(&r.prefix))
    });
    if let Some(root) = &root {
        let prefixes: Vec<String> = inside.into_iter().map(|(_, prefix)| prefix).collect();
        match walk(engine, &root.bucket, &root.prefix, prefixes).await {
            Ok((stored, reclaimable)) => {
                line.stored = Some(Amount {
                    models: stored_models.unwrap_or_default(),
                    objects: stored.objects,
                    bytes: stored.bytes,
                });
                line.reclaimable.objects += reclaimable.objects;
                line.reclaimable.bytes += reclaimable.bytes;
            }
            Err(e) => {
                line.skipped = true;
                line.problems.push(format!("listing {root}: {e}"));
            }
        }
    }
    for (bucket, prefix) in outside {
        match engine.store().usage(&bucket, &prefix).await {
            Ok(usage) => {
                line.reclaimable.objects += usage.objects;
                line.reclaimable.bytes += usage.bytes;
            }
            Err(e) => {
                line.skipped = true;
                line.problems
                    .push(format!("measuring s3://{bucket}/{prefix}: {e}"));
            }
        }
    }
    line
}

/// Walks the listing of `root` page by page, keeping no key: everything under it, and what lies
/// under one of `prefixes` (folders inside it).
async fn walk(
    engine: &Engine,
    bucket: &str,
    root: &str,
    prefixes: Vec<String>,
) -> Result<(Usage, Usage), crate::store::StoreError> {
    let prefixes = outermost(prefixes);
    let (mut all, mut under) = (Usage::default(), Usage::default());
    let mut after: Option<String> = None;
    loop {
        let page = engine
            .store()
            .list_page(bucket, root, after.as_deref())
            .await?;
        for object in &page.objects {
            all += Usage {
                objects: 1,
                bytes: object.size,
            };
            if within(&prefixes, &object.key) {
                under += Usage {
                    objects: 1,
                    bytes: object.size,
                };
            }
        }
        after = page.objects.last().map(|o| o.key.clone());
        if !page.more {
            return Ok((all, under));
        }
    }
}

/// The prefixes sorted, without those inside another (the keys under a prefix sort right
/// after it, so a nested one follows its parent).
fn outermost(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort();
    let mut kept: Vec<String> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        if kept
            .last()
            .is_none_or(|last| !prefix.starts_with(last.as_str()))
        {
            kept.push(prefix);
        }
    }
    kept
}

/// Whether `key` lies under one of `prefixes` ([`outermost`]: sorted, none inside another):
/// the greatest one not after it.
fn within(prefixes: &[String], key: &str) -> bool {
    let at = prefixes.partition_point(|p| p.as_str() <= key);
    at > 0 && key.starts_with(prefixes[at - 1].as_str())
}

fn totals(lines: &[Line]) -> Totals {
    let mut t = Totals {
        experiments: lines.len(),
        ..Totals::default()
    };
    for line in lines {
        t.skipped += usize::from(line.skipped);
        t.with_problems += usize::from(!line.problems.is_empty());
        if let Some(s) = line.stored {
            t.stored.models += s.models;
            t.stored.objects += s.objects;
            t.stored.bytes += s.bytes;
        }
        t.reclaimable.models += line.reclaimable.models;
        t.reclaimable.objects += line.reclaimable.objects;
        t.reclaimable.bytes += line.reclaimable.bytes;
    }
    t
}

const COLUMNS: [&str; 11] = [
    "EXPERIMENT",
    "NAME",
    "RUNS",
    "MODELS",
    "STORED",
    "DELETE",
    "FREES",
    "PROTECTED",
    "IN GRACE",
    "POLICY",
    "PROBLEMS",
];

fn table(report: &Report) -> String {
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| (*c).to_owned()).collect()];
    for l in &report.experiments {
        rows.push(vec![
            l.experiment_id.clone(),
            l.name.clone(),
            l.runs.map_or_else(dash, |n| n.to_string()),
            l.stored.map_or_else(dash, |s| s.models.to_string()),
            l.stored.map_or_else(dash, |s| s.bytes.to_string()),
            l.reclaimable.models.to_string(),
            l.reclaimable.bytes.to_string(),
            l.protected.to_string(),
            l.in_grace.to_string(),
            l.policy
                .as_ref()
                .map_or_else(dash, |p| format!("{p}{}", from(&l.policy_sources))),
            match (l.skipped, l.problems.join("; ")) {
                (true, p) => format!("SKIPPED: {p}"),
                (false, p) => p,
            },
        ]);
    }
    let mut s = format::columns(&rows);
    let t = &report.totals;
    s.push_str(&format!(
        "{}: {} stored in {} ({}); a pass would delete {} and free {} ({})",
        format::count(t.experiments as u64, "experiment"),
        format::count(t.stored.models, "model"),
        format::count(t.stored.objects, "object"),
        t.stored.bytes,
        format::count(t.reclaimable.models, "model"),
        t.reclaimable.bytes,
        format::count(t.reclaimable.objects, "object"),
    ));
    if t.with_problems > 0 {
        s.push_str(&format!("; {} with problems", t.with_problems));
    }
    if t.skipped > 0 {
        s.push_str(&format!(
            "; {} skipped (incomplete figures)",
            format::count(t.skipped as u64, "experiment")
        ));
    }
    s.push('\n');
    s
}

/// ` [tags]`, ` [options, tags]`: where a policy came from besides the settings.
fn from(sources: &BTreeMap<PolicySource, Vec<&'static str>>) -> String {
    let named: Vec<&str> = sources
        .keys()
        .filter_map(|s| match s {
            PolicySource::Event => Some("options"),
            PolicySource::ExperimentTag => Some("tags"),
            PolicySource::Settings => None,
        })
        .collect();
    if named.is_empty() {
        String::new()
    } else {
        format!(" [{}]", named.join(", "))
    }
}

/// RFC 4180 CSV, raw numbers, one line per experiment.
fn csv(report: &Report) -> String {
    let field = |v: &str| {
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    };
    let mut s = String::from(
        "experiment_id,name,runs,models_stored,objects_stored,bytes_stored,models_to_delete,\
         objects_to_delete,bytes_to_delete,protected,in_grace,policy,skipped,problems\r\n",
    );
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    for l in &report.experiments {
        let cells = [
            field(&l.experiment_id),
            field(&l.name),
            opt(l.runs.map(|n| n as u64)),
            opt(l.stored.map(|s| s.models)),
            opt(l.stored.map(|s| s.objects)),
            opt(l.stored.map(|s| s.bytes.0)),
            l.reclaimable.models.to_string(),
            l.reclaimable.objects.to_string(),
            l.reclaimable.bytes.0.to_string(),
            l.protected.to_string(),
            l.in_grace.to_string(),
            field(l.policy.as_deref().unwrap_or_default()),
            l.skipped.to_string(),
            field(&l.problems.join("; ")),
        ];
        s.push_str(&cells.join(","));
        s.push_str("\r\n");
    }
    s
}

/// The totals as [`REPORT_GAUGES`], without labels (the textfile collector adds its own).
fn textfile(totals: &Totals, now_s: u64) -> String {
    let values = [
        totals.stored.bytes.0,
        totals.stored.objects,
        totals.reclaimable.bytes.0,
        totals.reclaimable.models,
        totals.experiments as u64,
        totals.skipped as u64,
        now_s,
    ];
    let mut s = String::new();
    for ((name, help), value) in REPORT_GAUGES.iter().zip(values) {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    s
}

fn write_textfile(path: &Path, totals: &Totals) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut partial = path.as_os_str().to_owned();
    partial.push(".tmp");
    std::fs::write(&partial, textfile(totals, now))?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, name: &str, reclaim: u64, problems: &[&str], skipped: bool) -> Line {
        Line {
            experiment_id: id.into(),
            name: name.into(),
            policy: Some("accuracy max, keep_top 2".into()),
            policy_sources: BTreeMap::from([
                (PolicySource::ExperimentTag, vec!["keep_top"]),
                (PolicySource::Settings, vec!["metric", "direction"]),
            ]),
            runs: Some(5),
            stored: Some(Amount {
                models: 5,
                objects: 50,
                bytes: Bytes(5000),
            }),
            reclaimable: Amount {
                models: 3,
                objects: 30,
                bytes: Bytes(reclaim),
            },
            protected: 0,
            in_grace: 0,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            skipped,
        }
    }

    fn report(lines: Vec<Line>) -> Report {
        Report {
            filter: String::new(),
            totals: totals(&lines),
            experiments: lines,
            requests: Requests::default(),
        }
    }

    #[test]
    fn a_key_is_within_the_folder_that_sorts_just_before_it() {
        let prefixes = outermost(vec![
            "1/b/c/".to_owned(),
            "1/a/".to_owned(),
            "1/b/".to_owned(),
            "1/a/".to_owned(),
        ]);
        assert_eq!(prefixes, ["1/a/", "1/b/"]);
        assert!(within(&prefixes, "1/a/x"));
        assert!(within(&prefixes, "1/b/c/x"));
        assert!(within(&prefixes, "1/b/x"));
        assert!(!within(&prefixes, "1/ab"));
        assert!(!within(&prefixes, "1/"));
        assert!(!within(&prefixes, "0/a/x"));
        assert!(!within(&prefixes, "1/c/x"));
        assert!(!within(&[], "1/a/x"));
    }

    #[test]
    fn totals_add_up_and_count_skipped_and_troubled_experiments() {
        let r = report(vec![
            line("1", "a", 3000, &[], false),
            line("2", "b", 1000, &["no metric"], false),
            line("3", "c", 0, &["MLflow down"], true),
        ]);
        assert_eq!(r.totals.experiments, 3);
        assert_eq!(r.totals.skipped, 1);
        assert_eq!(r.totals.with_problems, 2);
        assert_eq!(r.totals.stored.bytes, Bytes(15000));
        assert_eq!(r.totals.reclaimable.bytes, Bytes(4000));
        assert_eq!(r.totals.reclaimable.models, 9);
        let text = table(&r);
        assert!(text.contains("SKIPPED: MLflow down"), "{text}");
        assert!(
            text.contains("keep_top 2 [tags]"),
            "the policy's source: {text}"
        );
        assert!(text.contains("1 experiment skipped"), "{text}");
        let first = text.lines().find(|l| l.starts_with("1 ")).unwrap();
        assert!(
            first.contains("4.9 KiB") && first.contains("2.9 KiB"),
            "stored and reclaimable sizes in binary units: {first}"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_raw_numbers() {
        let r = report(vec![line("1", "a, \"quoted\"", 3000, &[], false)]);
        let text = csv(&r);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("1,\"a, \"\"quoted\"\"\",5,5,50,5000,3,30,3000,0,0,"),
            "{row}"
        );
    }

    #[test]
    fn the_textfile_has_one_unlabelled_gauge_per_total() {
        let r = report(vec![line("1", "a", 3000, &[], false)]);
        let text = textfile(&r.totals, 1_700_000_000);
        assert!(
            text.contains("model_pruner_report_reclaimable_bytes 3000\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE model_pruner_report_stored_bytes gauge\n"),
            "{text}"
        );
        assert!(!text.contains('{'), "no labels: {text}");
    }
}
