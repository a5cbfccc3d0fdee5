//! `model-pruner audit`: checks an experiment's stored files against MLflow and its retention
//! policy, and with `--fix` publishes the `experiment.prune` that repairs what a pass can.
//!
//! Checks: files left under the model folders of runs or logged models marked deleted;
//! unprotected models stored beyond the top N (the engine's own dry-run plan); objects under
//! the experiment's root that belong to no run or logged model MLflow knows. Exit 0 consistent,
//! 1 needs attention, 2 the audit itself failed.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{ExperimentArgs, Failure, format};
use crate::domain::audit::{self, Finding, FolderOwner, OnServer};
use crate::domain::event::{Event, ExperimentPrune};
use crate::domain::location::{LocationRules, ModelLocation};
use crate::domain::marks::{self, PARAM_DELETED, TAG_DELETED};
use crate::domain::size::Bytes;
use crate::engine::{Engine, PassKind};
use crate::metrics::Metrics;
use crate::mlflow::{LoggedModel, MlflowClient, Run, RunFields};
use crate::settings::Settings;
use crate::store::ObjectStore;

/// Arguments of `audit`.
#[derive(Debug, Args)]
pub(super) struct AuditArgs {
    #[command(flatten)]
    target: ExperimentArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Publish the experiment.prune that deletes the models stored beyond the top N (a worker
    /// carries it out). Unfinished deletions and orphans are reported for manual removal.
    #[arg(long)]
    fix: bool,
    /// With --fix: let the prune go past policy.max_deletions_per_pass. Without it, --fix
    /// refuses to publish a prune the worker would refuse.
    #[arg(long, requires = "fix")]
    force: bool,
}

/// What the audit found.
#[derive(Debug, Serialize)]
struct Report {
    experiment_id: String,
    experiment_name: String,
    root: String,
    policy: Option<String>,
    findings: Vec<Finding>,
    /// Runs marked deleted whose model folders are empty, as they should be.
    pruned_runs_verified: usize,
    objects_checked: usize,
    /// What --fix did, if asked.
    fix: Option<String>,
}

impl AuditArgs {
    /// `--json`: errors are written as JSON too.
    pub(super) fn json(&self) -> bool {
        self.json
    }
}

/// Runs `audit`: exit 0 consistent, [`NEEDS_ATTENTION`] when findings remain, and as every
/// command, 1 when the audit itself failed and 2 for bad settings or usage.
pub(super) async fn run(settings: &Settings, args: AuditArgs) -> ExitCode {
    if let Err(failure) = args.target.policy.check(&settings.policy) {
        return failure.exit(args.json);
    }
    match audit(settings, &args).await {
        Ok(code) => code,
        Err(e) => Failure {
            code: 1,
            message: format!("audit failed: {e:#}"),
        }
        .exit(args.json),
    }
}

/// The exit code of an audit that worked and found what needs attention: apart from 1 (the
/// audit failed) so a script can tell them apart.
pub(super) const NEEDS_ATTENTION: u8 = 3;

async fn audit(settings: &Settings, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let experiment_id = &args.target.id(settings).await?;
    let metrics = Metrics::new();
    let mlflow =
        MlflowClient::new(&settings.mlflow, &metrics).context("building the MLflow client")?;
    let store = ObjectStore::new(&settings.store, &metrics);
    let rules = settings.store.location_rules();
    let experiment = mlflow
        .get_experiment(experiment_id)
        .await
        .with_context(|| format!("reading experiment {experiment_id}"))?;
    let fields = RunFields {
        metrics: &[],
        params: &[&settings.mlflow.model_uploaded_param, PARAM_DELETED],
        tags: &[TAG_DELETED],
    };
    let runs = mlflow.search_runs(experiment_id, &fields).await?;
    let models = mlflow.search_logged_models(experiment_id).await?;

    let mut findings = Vec::new();
    let mut verified = 0;
    for (owner, location) in marked_locations(settings, &rules, &runs, &models) {
        let usage = store
            .usage(&location.bucket, &location.prefix)
            .await
            .with_context(|| format!("measuring {location}"))?;
        if usage.objects == 0 {
            verified += 1;
        } else {
            findings.push(Finding::UnfinishedDeletion {
                owner,
                location: location.to_string(),
                objects: usage.objects,
                bytes: usage.bytes,
            });
        }
    }

    let engine = Engine::new(settings, &metrics).context("building the MLflow client")?;
    let plan = engine
        .run_pass(&args.target.request(
            experiment_id,
            PassKind::Sweep {
                delete_experiment: false,
                force: true,
            },
            true,
        ))
        .await;
    let policy = match plan {
        Ok(report) => {
            for p in &report.planned {
                let (mut objects, mut bytes) = (0, Bytes(0));
                for (location, _) in &p.locations {
                    let usage = store
                        .usage(&location.bucket, &location.prefix)
                        .await
                        .with_context(|| format!("measuring {location}"))?;
                    objects += usage.objects;
                    bytes += usage.bytes;
                }
                let finding = match p.locations.first() {
                    Some((location, _)) if objects == 0 && !p.resume => Finding::EmptyModelFolder {
                        run_id: p.run_id.clone(),
                        location: location.to_string(),
                    },
                    _ => Finding::BeyondTopN {
                        run_id: p.run_id.clone(),
                        reason: p.reason.clone(),
                        objects,
                        bytes,
                    },
                };
                findings.push(finding);
            }
            Some(report.policy.to_string())
        }
        Err(e) => {
            findings.push(Finding::PlanFailed {
                error: e.to_string(),
            });
            None
        }
    };

    let root = audit::experiment_root(&rules, &experiment.artifact_location)
        .with_context(|| format!("experiment {experiment_id}'s artifact location"))?;
    let objects = store
        .list(&root.bucket, &root.prefix)
        .await
        .with_context(|| format!("listing {root}"))?;
    let run_ids: HashSet<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    let model_ids: HashSet<&str> = models.iter().map(|m| m.model_id.as_str()).collect();
    let keys = objects.iter().map(|o| (o.key.as_str(), o.size));
    let stray = audit::orphans(&root.prefix, keys, &run_ids, &model_ids);
    for orphan in stray.orphans {
        // Asked only once the root is tied to this experiment (otherwise nothing is removable).
        let on_server = match &orphan.named_for {
            Some(owner) if stray.known_folders > 0 => Some(ask(&mlflow, owner).await?),
            _ => None,
        };
        let (removable, checked) = audit::tie(
            &orphan,
            stray.known_folders,
            on_server.as_ref(),
            experiment_id,
        );
        findings.push(Finding::Orphan {
            location: format!("s3://{}/{}", root.bucket, orphan.prefix),
            objects: orphan.objects,
            bytes: orphan.bytes,
            removable,
            checked,
        });
    }

    let mut report = Report {
        experiment_id: experiment_id.to_owned(),
        experiment_name: experiment.name,
        root: root.to_string(),
        policy,
        findings,
        pruned_runs_verified: verified,
        objects_checked: objects.len(),
        fix: None,
    };
    let manual = report.findings.iter().any(|f| !f.fixed_by_prune());
    let mut fixed = false;
    if args.fix {
        let (message, published) = fix(settings, args, experiment_id, &report.findings).await?;
        report.fix = Some(message);
        fixed = published;
    }
    print(&report, args.json)?;
    let consistent = report.findings.is_empty() || (fixed && !manual);
    Ok(if consistent {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NEEDS_ATTENTION)
    })
}

/// What the tracking server knows of the run or logged model a folder is named for.
async fn ask(mlflow: &MlflowClient, owner: &FolderOwner) -> anyhow::Result<OnServer> {
    let found = match owner {
        FolderOwner::Run(id) => mlflow
            .run_experiment(id)
            .await
            .with_context(|| format!("looking up run {id}")),
        FolderOwner::LoggedModel(id) => match mlflow.logged_model_experiment(id).await {
            Err(e) if e.is_not_the_api() => {
                return Ok(OnServer::CannotTell(format!(
                    "the tracking server has no logged-models API ({e})"
                )));
            }
            found => found.with_context(|| format!("looking up logged model {id}")),
        },
    }?;
    Ok(match found {
        Some(experiment_id) => OnServer::In { experiment_id },
        None => OnServer::Absent,
    })
}

/// The model folders that must be empty: those of runs marked deleted (their classic model and
/// linked logged models) and of logged models marked deleted. Folders that cannot be resolved
/// are skipped: the engine would refuse them too, and `plan` reports them.
fn marked_locations(
    settings: &Settings,
    rules: &LocationRules,
    runs: &[Run],
    models: &[LoggedModel],
) -> Vec<(String, ModelLocation)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |owner: &str, location: Option<ModelLocation>| {
        if let Some(l) = location
            && seen.insert(l.clone())
        {
            out.push((owner.to_owned(), l));
        }
    };
    let logged = |m: &LoggedModel| marks::logged_location(rules, &m.artifact_uri, &m.model_id).ok();
    for m in models.iter().filter(|m| marks::is_model_marked(&m.tags)) {
        add(
            &format!("logged model {} (marked deleted)", m.model_id),
            logged(m),
        );
    }
    for run in runs {
        if !marks::is_marked(&run.tags, &run.params) {
            continue;
        }
        let owner = format!("run {} (marked deleted)", run.run_id);
        if marks::has_classic_model(&run.params, &settings.mlflow.model_uploaded_param) {
            let classic = marks::classic_location(rules, &run.artifact_uri, &run.run_id);
            add(&owner, classic.ok());
        }
        for m in models.iter().filter(|m| {
            m.source_run_id.as_deref() == Some(run.run_id.as_str())
                || run.model_output_ids.contains(&m.model_id)
        }) {
            add(&owner, logged(m));
        }
    }
    out
}

/// Publishes the repairing prune when a pass can repair something; returns what was done and
/// whether the prune was published.
async fn fix(
    settings: &Settings,
    args: &AuditArgs,
    experiment_id: &str,
    findings: &[Finding],
) -> anyhow::Result<(String, bool)> {
    let fixable = findings.iter().filter(|f| f.fixed_by_prune()).count();
    if fixable == 0 {
        return Ok(("nothing a prune can repair".into(), false));
    }
    let max = settings.policy.max_deletions_per_pass as usize;
    if fixable > max && !args.force {
        return Ok((
            format!(
                "not published: the prune would delete {fixable} models, more than \
                 policy.max_deletions_per_pass = {max}; repeat with --fix --force"
            ),
            false,
        ));
    }
    let event = Event::ExperimentPrune(ExperimentPrune {
        experiment_id: experiment_id.to_owned(),
        policy: args.target.policy.overrides(),
        delete_experiment: false,
        dry_run: false,
        force: args.force,
    });
    super::publish::publish_event(settings, &event)
        .await
        .context("publishing the repairing experiment.prune")?;
    Ok((
        format!(
            "published experiment.prune {} to exchange {:?}",
            String::from_utf8_lossy(&event.to_body()),
            settings.broker.exchange
        ),
        true,
    ))
}

/// `3 objects, 1.5 KiB`.
fn size(objects: u64, bytes: Bytes) -> String {
    format!("{}, {}", format::count(objects, "object"), bytes)
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "experiment {} ({}) at {} — policy: {}",
        report.experiment_id,
        report.experiment_name,
        report.root,
        report.policy.as_deref().unwrap_or("-")
    )?;
    for f in &report.findings {
        let detail = match f {
            Finding::UnfinishedDeletion {
                owner,
                location,
                objects,
                bytes,
            } => format!("{owner}: {location} still holds {}", size(*objects, *bytes)),
            Finding::BeyondTopN {
                run_id,
                reason,
                objects,
                bytes,
            } => format!("run {run_id} ({reason}): {}", size(*objects, *bytes)),
            Finding::Orphan {
                location,
                objects,
                bytes,
                checked,
                ..
            } => format!(
                "{location}: {} of no known run or model; {checked}",
                size(*objects, *bytes)
            ),
            Finding::EmptyModelFolder { run_id, location } => format!(
                "run {run_id}: {location} holds no file; is the model logged under another \
                 artifact path, or store.artifacts_destination wrong?"
            ),
            Finding::PlanFailed { error } => error.clone(),
        };
        writeln!(out, "{:<20} {detail}", f.label())?;
    }
    writeln!(
        out,
        "{}; {} checked; {} marked runs and models verified empty",
        format::count(report.findings.len() as u64, "finding"),
        format::count(report.objects_checked as u64, "object"),
        report.pruned_runs_verified
    )?;
    let unfinished = |f: &Finding| matches!(f, Finding::UnfinishedDeletion { .. });
    let removable = |f: &Finding| {
        matches!(
            f,
            Finding::Orphan {
                removable: true,
                ..
            }
        )
    };
    let unverified = |f: &Finding| {
        matches!(
            f,
            Finding::Orphan {
                removable: false,
                ..
            }
        )
    };
    if report
        .findings
        .iter()
        .any(|f| unfinished(f) || removable(f))
    {
        writeln!(
            out,
            "unfinished deletions and orphans tied to this experiment are not repaired by a \
             prune: check and remove them by hand (e.g. aws s3 rm --recursive <location>)"
        )?;
    }
    if report.findings.iter().any(unverified) {
        writeln!(
            out,
            "orphans not tied to this experiment on this tracking server: remove nothing there \
             before finding out whose files they are"
        )?;
    }
    if let Some(fix) = &report.fix {
        writeln!(out, "fix: {fix}")?;
    }
    Ok(())
}
