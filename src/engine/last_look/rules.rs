//! The last look before files go: which planned deletions still stand once the candidates are
//! read afresh and the registry versions pointing at them are known, and which logged models
//! shared by several runs may go at all. Pure: the engine does the lookups (`mod.rs`).
//!
//! The rules:
//! - a run is deleted only if, read again just now, it is still active, `FINISHED`, not tagged
//!   `model_pruner.keep`, not already marked, and no registry version points at its models;
//! - and only if what it was ranked on is unchanged: its metric value, its `group_by` value, its
//!   end time, and the experiment's policy (resolved again from its tags). A change keeps the run
//!   this pass (rule `changed`) and the next pass decides; a resumed deletion (rule `resume`)
//!   was not ranked, so only its protections are checked;
//! - a registry version points at a run's models when its `run_id` is the run, its `model_id` is
//!   one of the run's logged models, its source is `runs:/<run>/...` or `models:/<model>`, or
//!   its source, resolved to a bucket and key prefix (`mlflow-artifacts:/` mapped through the
//!   destination), overlaps the run's artifact folder or one of its logged models' folders; a
//!   source in a form that cannot be resolved but names the run or a model protects it (when
//!   unsure, keep);
//! - a logged model linked to several runs goes only when every one of them is being pruned in
//!   this pass or was pruned before, and none of them is, read again, protected or unfinished;
//!   the last of them in plan order carries its folder, and stays whole when a sharer stays.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{Settled, Verdict, Verdicts};
use crate::domain::location::LocationRules;
use crate::domain::marks;
use crate::domain::ranking::{Decision, Protection, SkipReason};
use crate::domain::run::{LifecycleStage, RunStatus};
use crate::domain::time::EpochMs;
use crate::engine::inventory::{InventoryOptions, ModelSources, is_pruned};
use crate::engine::run_index::RunIndex;
use crate::engine::{PlannedDeletion, RankedOn};
use crate::mlflow::{ModelVersion, Run};

/// What to do with one logged model of a run about to be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Share {
    /// This run deletes the model; `with` are the other runs it is linked to (all pruned).
    Carry { with: Vec<String> },
    /// Another run of the pass, later in the plan, deletes it.
    CarriedBy(String),
    /// A linked run keeps it (kept, protected, unfinished, or not a run of this experiment).
    KeptFor(String),
}

/// Decides, for a logged model linked to `linked` runs, what run `run_id` does with it.
/// `deleting` maps the runs of the pass to their plan position; `pruned` holds runs already
/// marked.
pub(crate) fn share(
    run_id: &str,
    linked: &BTreeSet<String>,
    deleting: &HashMap<&str, usize>,
    pruned: &HashSet<&str>,
) -> Share {
    if let Some(keeper) = linked
        .iter()
        .find(|r| !deleting.contains_key(r.as_str()) && !pruned.contains(r.as_str()))
    {
        return Share::KeptFor(keeper.clone());
    }
    let last = linked
        .iter()
        .filter_map(|r| deleting.get(r.as_str()).map(|at| (*at, r)))
        .max()
        .map(|(_, r)| r.as_str());
    match last {
        Some(last) if last != run_id => Share::CarriedBy(last.to_owned()),
        _ => Share::Carry {
            with: linked
                .iter()
                .filter(|r| r.as_str() != run_id)
                .cloned()
                .collect(),
        },
    }
}

/// `source_path LIKE` patterns that find every registry version whose source lies in the folders
/// `folders` (`(artifact URI, owner id)`): the folder's root (the experiment's artifact
/// location, the part before the owner's folder) in its `s3://` form and, when it lies under the
/// artifacts destination, in its `mlflow-artifacts:` forms (`mlflow-artifacts:/<path>` and
/// `mlflow-artifacts://<host>/<path>`), each anchored at folder boundaries: the root itself and
/// `<root>/%`, so that experiment 1's root never reads experiments 10 to 19's versions. Shared by
/// all runs of an experiment, so a look costs a few searches whatever its size, and the rows
/// found grow with the versions of this experiment, not with the registry. A folder whose root
/// cannot be told is searched by its owner's id instead. (`_` and `%` inside a path match more
/// than themselves in `LIKE`: such a search reads more rows, never fewer.)
pub(super) fn source_patterns<'a>(
    folders: impl IntoIterator<Item = (&'a str, &'a str)>,
    rules: &LocationRules,
) -> BTreeSet<String> {
    let destination = rules.place(rules.artifacts_destination.as_str(), "").ok();
    let mut patterns = BTreeSet::new();
    for (uri, id) in folders {
        let root = rules.place(uri, "").ok().and_then(|place| {
            let at = place.segments.iter().position(|s| s == id)?;
            let mut root = place.segments[..at].to_vec();
            if id.starts_with("m-") && root.last().is_some_and(|s| s == "models") {
                root.pop();
            }
            (!root.is_empty()).then_some((place.bucket, root))
        });
        match root {
            Some((bucket, root)) => anchored(&bucket, &root, destination.as_ref(), &mut patterns),
            None => {
                patterns.insert(format!("%{id}%"));
            }
        }
    }
    patterns
}

/// The patterns of [`source_patterns`] for every version whose source lies in the folder `uri`
/// itself (an experiment's artifact location); none when the folder cannot be resolved.
pub(crate) fn folder_patterns(uri: &str, rules: &LocationRules) -> Option<BTreeSet<String>> {
    let destination = rules.place(rules.artifacts_destination.as_str(), "").ok();
    let place = rules.place(uri, "").ok()?;
    let mut patterns = BTreeSet::new();
    anchored(
        &place.bucket,
        &place.segments,
        destination.as_ref(),
        &mut patterns,
    );
    Some(patterns)
}

/// Adds the anchored patterns of folder `root` of `bucket`: the folder and `<folder>/%`, as
/// `s3://` and, under the artifacts destination, as both `mlflow-artifacts:` forms.
fn anchored(
    bucket: &str,
    root: &[String],
    destination: Option<&crate::domain::location::Place>,
    patterns: &mut BTreeSet<String>,
) {
    let mut add = |base: String| {
        patterns.insert(format!("{base}/%"));
        patterns.insert(base);
    };
    add(format!("s3://{bucket}/{}", root.join("/")));
    if let Some(dest) = destination
        && dest.bucket == bucket
        && root.starts_with(&dest.segments)
    {
        let rest = root[dest.segments.len()..].join("/");
        if rest.is_empty() {
            // The folder is the destination itself: every proxied source lies in it.
            patterns.insert("mlflow-artifacts:%".to_owned());
        } else {
            add(format!("mlflow-artifacts:/{rest}"));
            add(format!("mlflow-artifacts://%/{rest}"));
        }
    }
}

/// Whether registry version `v` points at the models of run `run_id`.
pub(super) fn points_at(
    v: &ModelVersion,
    run_id: &str,
    sources: &ModelSources,
    rules: &LocationRules,
) -> bool {
    let model_ids = || sources.logged_models.iter().map(|(id, _)| id.as_str());
    if v.run_id.as_deref() == Some(run_id)
        || v.model_id
            .as_deref()
            .is_some_and(|m| model_ids().any(|id| id == m))
    {
        return true;
    }
    let source = v.source.as_str();
    if let Some(rest) = source.strip_prefix("runs:/") {
        return rest.split('/').next() == Some(run_id);
    }
    if let Some(rest) = source.strip_prefix("models:/") {
        let first = rest.split(['/', '@']).next().unwrap_or("");
        return model_ids().any(|id| id == first);
    }
    let Ok(place) = rules.place(source, "") else {
        // Not a form we can resolve: it protects whatever it names as a folder.
        let mut names = source.split(['/', ':', '?', '#', '@']);
        return names.any(|name| name == run_id || model_ids().any(|id| id == name));
    };
    let folders = std::iter::once(sources.artifact_uri.as_str())
        .chain(sources.logged_models.iter().map(|(_, uri)| uri.as_str()));
    folders
        .filter_map(|uri| rules.place(uri, "").ok())
        .any(|folder| folder.overlaps(&place))
}

/// A run the pass keeps in the top N (or among the latest), as ranked: a change to it (trashed,
/// a worse value, another group) may free a slot a planned run now deserves.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    pub run_id: String,
    pub ranked_on: RankedOn,
}

/// What a look read afresh.
pub(crate) struct Fresh<'a> {
    /// The keepers of the pass (read afresh in `runs` when they share a group with the look).
    pub keepers: &'a [Keeper],
    /// The runs read again just now (the group and the other runs of their shared models).
    pub runs: &'a HashMap<&'a str, &'a Run>,
    /// Every registry version the targeted lookups found.
    pub versions: &'a [ModelVersion],
    /// How the experiment's policy, resolved again from its tags, differs from the one the
    /// pass ranked under, if it does.
    pub policy_change: Option<String>,
}

/// The last look at runs `group` of `planned`: the [`Verdict`] on each. `settled` holds the runs
/// of the pass an earlier look decided on; `fresh` what was read again; `sources` what each planned run's models
/// are; `options` how the ranking read runs (its metric and `group_by` key).
///
/// A run that carries a shared logged model stays, whole, when another run linked to the model
/// stays: the next pass deletes its own files and leaves the model to the other run.
pub(super) fn check(
    planned: &[PlannedDeletion],
    group: &[RunIndex],
    settled: &HashMap<&str, Settled>,
    fresh: &Fresh<'_>,
    sources: &HashMap<String, ModelSources>,
    rules: &LocationRules,
    options: &InventoryOptions<'_>,
) -> Verdicts {
    let versions = fresh.versions;
    let empty = ModelSources::default();
    let mut verdicts: Verdicts = group
        .iter()
        .map(|&at| {
            let plan = at.of(planned);
            let run_id = plan.run_id.as_str();
            let run_sources = sources.get(run_id).unwrap_or(&empty);
            let fresh_run = fresh.runs.get(run_id).copied();
            let verdict =
                withdrawal(fresh_run, run_id, run_sources, versions, rules).or_else(|| {
                    if plan.resume {
                        return None;
                    }
                    let what = fresh
                        .policy_change
                        .clone()
                        .or_else(|| changed(&plan.ranked_on, fresh_run?, options))
                        .or_else(|| keeper_change(&plan.ranked_on, fresh, options))?;
                    Some(Decision::Skipped {
                        reason: SkipReason::Changed { what },
                    })
                });
            (at, verdict.map_or(Verdict::Stands, Verdict::Withdrawn))
        })
        .collect();
    let fresh = fresh.runs;
    // A sharer of a carried model must be gone or going: in this look and still standing, or
    // looked at earlier and standing, or pruned before; and, read just now, neither protected
    // nor unfinished. Withdrawing a carrier can block another carrier that shares a model with
    // it, so this runs until nothing changes.
    loop {
        let standing: HashMap<&str, Settled> = verdicts
            .iter()
            .map(|(at, v)| (at.of(planned).run_id.as_str(), v.settled()))
            .collect();
        let gone = |other: &str| {
            let looked = standing.get(other).or(settled.get(other)).copied();
            if looked == Some(Settled::Withdrawn) {
                return false;
            }
            let Some(run) = fresh.get(other).copied() else {
                return false;
            };
            let other_sources = sources.get(other).unwrap_or(&empty);
            let protected = marks::is_kept(&run.tags)
                || versions
                    .iter()
                    .any(|v| points_at(v, other, other_sources, rules));
            let ended =
                run.lifecycle_stage == LifecycleStage::Active && run.status == RunStatus::Finished;
            !protected && ended && (looked == Some(Settled::Stands) || is_pruned(run))
        };
        let mut changed = false;
        for (at, verdict) in verdicts.iter_mut().filter(|(_, v)| *v == Verdict::Stands) {
            let blocker = at.of(planned).shared_with.iter().find_map(|(model, with)| {
                with.iter()
                    .find(|other| !gone(other))
                    .map(|other| (model.clone(), other.clone()))
            });
            if let Some((model_id, run_id)) = blocker {
                *verdict = Verdict::Withdrawn(Decision::Skipped {
                    reason: SkipReason::SharedModelKept { model_id, run_id },
                });
                changed = true;
            }
        }
        if !changed {
            return verdicts;
        }
    }
}

/// What changed in a keeper of the group a run `was` ranked in, read again, if anything did:
/// gone, trashed, unfinished, pruned, or ranked on other values.
fn keeper_change(
    was: &RankedOn,
    fresh: &Fresh<'_>,
    options: &InventoryOptions<'_>,
) -> Option<String> {
    fresh
        .keepers
        .iter()
        .filter(|k| k.ranked_on.group == was.group)
        .find_map(|k| {
            let what = match fresh.runs.get(k.run_id.as_str()) {
                None => "gone".to_owned(),
                Some(run) if run.lifecycle_stage != LifecycleStage::Active => "trashed".to_owned(),
                Some(run) if run.status != RunStatus::Finished => format!("status {}", run.status),
                Some(run) if is_pruned(run) => "pruned".to_owned(),
                Some(run) => changed(&k.ranked_on, run, options)?,
            };
            Some(format!("kept run {}: {what}", k.run_id))
        })
}

/// The runs whose fresh reads a look needs beside the planned ones: the keepers of the groups
/// of its ranked (not resumed) runs.
pub(super) fn keepers_to_read<'a>(
    planned: &[PlannedDeletion],
    group: &[RunIndex],
    keepers: &'a [Keeper],
) -> impl Iterator<Item = &'a str> {
    let groups: Vec<Option<String>> = group
        .iter()
        .map(|at| at.of(planned))
        .filter(|p| !p.resume)
        .map(|p| p.ranked_on.group.clone())
        .collect();
    keepers
        .iter()
        .filter(move |k| groups.contains(&k.ranked_on.group))
        .map(|k| k.run_id.as_str())
}

/// What changed in `run`, read again, among the inputs it `was` ranked on, if anything did.
pub(super) fn changed(was: &RankedOn, run: &Run, options: &InventoryOptions<'_>) -> Option<String> {
    let metric = run.metrics.get(options.metric).copied();
    let same_metric = match (was.metric, metric) {
        (Some(a), Some(b)) => a.total_cmp(&b).is_eq() || (a.is_nan() && b.is_nan()),
        (None, None) => true,
        _ => false,
    };
    let show = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    if !same_metric {
        return Some(format!(
            "{} {} -> {}",
            options.metric,
            show(was.metric),
            show(metric)
        ));
    }
    let group = options.group(run);
    if group != was.group
        && let Some(key) = options.group_by
    {
        return Some(format!("{key} {:?} -> {:?}", was.group, group));
    }
    if run.end_time != was.end_time {
        let show = |t: Option<EpochMs>| t.map_or_else(|| "none".to_owned(), |t| t.to_string());
        return Some(format!(
            "end time {} -> {}",
            show(was.end_time),
            show(run.end_time)
        ));
    }
    None
}

/// Why a planned run must stay after all, if it must.
fn withdrawal(
    fresh: Option<&Run>,
    run_id: &str,
    sources: &ModelSources,
    versions: &[ModelVersion],
    rules: &LocationRules,
) -> Option<Decision> {
    let skipped = |reason| Some(Decision::Skipped { reason });
    let Some(run) = fresh else {
        // Gone from MLflow since the ranking read it: keep its files.
        return skipped(SkipReason::NotActive);
    };
    if run.lifecycle_stage != LifecycleStage::Active {
        return skipped(SkipReason::NotActive);
    }
    if run.status != RunStatus::Finished {
        return skipped(SkipReason::NotFinished {
            status: run.status.clone(),
        });
    }
    if is_pruned(run) {
        return skipped(SkipReason::AlreadyPruned);
    }
    if marks::is_kept(&run.tags) {
        return Some(Decision::Protected {
            protection: Protection::KeepTag,
        });
    }
    versions
        .iter()
        .find(|v| points_at(v, run_id, sources, rules))
        .map(|v| Decision::Protected {
            protection: Protection::Registered {
                name: v.name.clone(),
                version: v.version.clone(),
            },
        })
}

#[cfg(test)]
mod tests;
