//! The last look before files go: which planned deletions still stand once the candidates are
//! read afresh and the registry versions pointing at them are known, and which logged models
//! shared by several runs may go at all. Pure: the engine does the lookups (`confirm.rs`).
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

use super::inventory::{InventoryOptions, ModelSources, is_pruned};
use super::{PlannedDeletion, RankedOn};
use crate::domain::location::LocationRules;
use crate::domain::marks;
use crate::domain::ranking::{Decision, Protection, SkipReason};
use crate::domain::run::{LifecycleStage, RunStatus};
use crate::mlflow::{ModelVersion, Run};

/// What to do with one logged model of a run about to be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
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
pub fn share(
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
pub fn source_patterns<'a>(
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
pub fn folder_patterns(uri: &str, rules: &LocationRules) -> Option<BTreeSet<String>> {
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
pub fn points_at(
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
pub struct Keeper {
    pub run_id: String,
    pub ranked_on: RankedOn,
}

/// What a look read afresh.
pub struct Fresh<'a> {
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

/// The last look at runs `group` of `planned`: `None` where the deletion still stands, else the
/// decision that replaces it. `settled` holds the runs of the pass decided by an earlier look
/// (true: it stands); `fresh` what was read again; `sources` what each planned run's models
/// are; `options` how the ranking read runs (its metric and `group_by` key).
///
/// A run that carries a shared logged model stays, whole, when another run linked to the model
/// stays: the next pass deletes its own files and leaves the model to the other run.
pub fn check(
    planned: &[PlannedDeletion],
    group: &[usize],
    settled: &HashMap<&str, bool>,
    fresh: &Fresh<'_>,
    sources: &HashMap<String, ModelSources>,
    rules: &LocationRules,
    options: &InventoryOptions<'_>,
) -> Vec<(usize, Option<Decision>)> {
    let versions = fresh.versions;
    let empty = ModelSources::default();
    let mut verdicts: Vec<(usize, Option<Decision>)> = group
        .iter()
        .map(|&at| {
            let plan = &planned[at];
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
            (at, verdict)
        })
        .collect();
    let fresh = fresh.runs;
    // A sharer of a carried model must be gone or going: in this look and still standing, or
    // looked at earlier and standing, or pruned before; and, read just now, neither protected
    // nor unfinished. Withdrawing a carrier can block another carrier that shares a model with
    // it, so this runs until nothing changes.
    loop {
        let standing: HashMap<&str, bool> = verdicts
            .iter()
            .map(|(at, v)| (planned[*at].run_id.as_str(), v.is_none()))
            .collect();
        let gone = |other: &str| {
            let looked = standing.get(other).or(settled.get(other)).copied();
            if looked == Some(false) {
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
            !protected && ended && (looked == Some(true) || is_pruned(run))
        };
        let mut changed = false;
        for (at, verdict) in verdicts.iter_mut().filter(|(_, v)| v.is_none()) {
            let blocker = planned[*at].shared_with.iter().find_map(|(model, with)| {
                with.iter()
                    .find(|other| !gone(other))
                    .map(|other| (model.clone(), other.clone()))
            });
            if let Some((model_id, run_id)) = blocker {
                *verdict = Some(Decision::Skipped {
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
pub fn keepers_to_read<'a>(
    planned: &[PlannedDeletion],
    group: &[usize],
    keepers: &'a [Keeper],
) -> impl Iterator<Item = &'a str> {
    let groups: Vec<Option<String>> = group
        .iter()
        .map(|&at| &planned[at])
        .filter(|p| !p.resume)
        .map(|p| p.ranked_on.group.clone())
        .collect();
    keepers
        .iter()
        .filter(move |k| groups.contains(&k.ranked_on.group))
        .map(|k| k.run_id.as_str())
}

/// What changed in `run`, read again, among the inputs it `was` ranked on, if anything did.
pub fn changed(was: &RankedOn, run: &Run, options: &InventoryOptions<'_>) -> Option<String> {
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
        let show =
            |t: Option<i64>| t.map_or_else(|| "none".to_owned(), crate::domain::ranking::rfc3339);
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
mod tests {

    use crate::domain::run::Fields;

    use super::*;
    use crate::domain::location::ModelLocation;
    use crate::engine::RankedOn;

    fn rules() -> LocationRules {
        LocationRules {
            allowed_buckets: vec!["mlflow".into()],
            artifacts_destination: "s3://mlflow/".parse().unwrap(),
        }
    }

    fn sources(run: &str) -> ModelSources {
        ModelSources {
            artifact_uri: format!("mlflow-artifacts:/1/{run}/artifacts"),
            logged_models: vec![(
                "m-1".into(),
                "mlflow-artifacts:/1/models/m-1/artifacts".into(),
            )],
        }
    }

    fn version(source: &str, run_id: Option<&str>, model_id: Option<&str>) -> ModelVersion {
        ModelVersion {
            name: "reg".into(),
            version: "1".into(),
            source: source.into(),
            run_id: run_id.map(str::to_owned),
            model_id: model_id.map(str::to_owned),
        }
    }

    #[test]
    fn versions_point_at_a_run_by_every_kind_of_source() {
        let cases = [
            version("runs:/a/model", None, None),
            version("runs:/a", None, None),
            version("s3://elsewhere/x", Some("a"), None),
            version("models:/m-1", None, None),
            version("s3://x/y", None, Some("m-1")),
            // The S3 path of a model the server hands out as mlflow-artifacts:/ URIs.
            version("s3://mlflow/1/a/artifacts/model", None, None),
            version("s3://mlflow/1/a/artifacts", None, None),
            version("s3://mlflow/1/models/m-1/artifacts", None, None),
            version("mlflow-artifacts:/1/models/m-1/artifacts/", None, None),
            version(
                "mlflow-artifacts://host:5000/1/a/artifacts/model",
                None,
                None,
            ),
            // A form that cannot be resolved but names the run: kept, to be safe.
            version("gs://bucket/1/a/artifacts/model", None, None),
        ];
        for v in cases {
            assert!(points_at(&v, "a", &sources("a"), &rules()), "{v:?}");
        }
    }

    #[test]
    fn versions_of_other_runs_do_not_point_at_a_run() {
        let cases = [
            version("runs:/ab/model", Some("ab"), None),
            version("models:/m-10", None, Some("m-10")),
            version("models:/reg/3", None, None),
            version("s3://mlflow/1/ab/artifacts/model", None, None),
            version("s3://mlflow/1/a/artifactsX", None, None),
            version("s3://other/1/a/artifacts/model", None, None),
            version("gs://bucket/1/b/artifacts/model", None, None),
        ];
        for v in cases {
            assert!(!points_at(&v, "a", &sources("a"), &rules()), "{v:?}");
        }
    }

    #[test]
    fn source_patterns_cover_the_experiment_root_in_both_forms() {
        let rules = LocationRules {
            allowed_buckets: vec!["mlflow".into()],
            artifacts_destination: "s3://mlflow/proxied".parse().unwrap(),
        };
        let folders = [
            ("mlflow-artifacts:/7/r1/artifacts", "r1"),
            ("mlflow-artifacts:/7/models/m-2/artifacts", "m-2"),
            ("s3://mlflow/proxied/7/r3/artifacts", "r3"),
            ("s3://mlflow/r4/artifacts", "r4"),
            ("gs://bucket/8/r5/artifacts", "r5"),
        ];
        let patterns: Vec<String> = source_patterns(folders, &rules).into_iter().collect();
        assert_eq!(
            patterns,
            [
                "%r4%",
                "%r5%",
                "mlflow-artifacts://%/7",
                "mlflow-artifacts://%/7/%",
                "mlflow-artifacts:/7",
                "mlflow-artifacts:/7/%",
                "s3://mlflow/proxied/7",
                "s3://mlflow/proxied/7/%",
            ]
        );
        let found = |source: &str| patterns.iter().any(|p| like(p, source));
        for source in [
            "s3://mlflow/proxied/7",
            "s3://mlflow/proxied/7/r1/artifacts/model",
            "mlflow-artifacts:/7/models/m-2/artifacts",
            "mlflow-artifacts://host:5000/7/r1/artifacts/model",
        ] {
            assert!(found(source), "{source} must be found");
        }
        for source in [
            "s3://mlflow/proxied/70/r1/artifacts/model",
            "s3://mlflow/proxied/17/r1/artifacts",
            "mlflow-artifacts:/71/r1/artifacts",
            "mlflow-artifacts:/17/r1/artifacts",
            "mlflow-artifacts://host:5000/70/x",
        ] {
            assert!(!found(source), "{source} is another experiment's");
        }
    }

    /// SQL `LIKE` as MLflow's store evaluates it: `%` any text, `_` any character.
    fn like(pattern: &str, s: &str) -> bool {
        let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
        fn go(p: &[char], s: &[char]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some(('%', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
                Some(('_', rest)) => !s.is_empty() && go(rest, &s[1..]),
                Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
            }
        }
        go(&p, &s)
    }

    fn linked(runs: &[&str]) -> BTreeSet<String> {
        runs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn a_shared_model_is_carried_by_the_last_pruned_run_only_when_all_go() {
        let deleting = HashMap::from([("a", 0), ("b", 1)]);
        let pruned = HashSet::from(["old"]);
        assert_eq!(
            share("a", &linked(&["a", "b", "old"]), &deleting, &pruned),
            Share::CarriedBy("b".into())
        );
        assert_eq!(
            share("b", &linked(&["a", "b", "old"]), &deleting, &pruned),
            Share::Carry {
                with: vec!["a".into(), "old".into()]
            }
        );
        assert_eq!(
            share("a", &linked(&["a", "kept"]), &deleting, &pruned),
            Share::KeptFor("kept".into())
        );
        assert_eq!(
            share("a", &linked(&["a"]), &deleting, &pruned),
            Share::Carry { with: vec![] }
        );
    }

    fn run(id: &str, status: &str) -> Run {
        Run {
            run_id: id.into(),
            run_name: id.into(),
            experiment_id: "1".into(),
            status: RunStatus::parse(status),
            lifecycle_stage: LifecycleStage::Active,
            start_time: Some(1),
            end_time: Some(2),
            artifact_uri: format!("mlflow-artifacts:/1/{id}/artifacts"),
            metrics: Fields::default(),
            params: Fields::default(),
            tags: Fields::default(),
            model_output_ids: vec![],
        }
    }

    fn plan(id: &str, shared: &[(&str, &[&str])]) -> PlannedDeletion {
        PlannedDeletion {
            run_id: id.into(),
            run_name: id.into(),
            reason: "rank 3".into(),
            locations: vec![(
                ModelLocation {
                    bucket: "mlflow".into(),
                    prefix: format!("1/{id}/artifacts/model/"),
                },
                None,
            )],
            shared_with: shared
                .iter()
                .map(|(m, with)| (m.to_string(), with.iter().map(|r| r.to_string()).collect()))
                .collect(),
            ranked_on: RankedOn {
                metric: None,
                group: None,
                end_time: Some(2),
            },
            resume: false,
            writes_deleted_param: true,
        }
    }

    const OPTIONS: InventoryOptions<'static> = InventoryOptions {
        metric: "acc",
        model_uploaded_param: "model_uploaded",
        group_by: None,
    };

    fn look<'a>(runs: &'a HashMap<&'a str, &'a Run>, versions: &'a [ModelVersion]) -> Fresh<'a> {
        Fresh {
            keepers: &[],
            runs,
            versions,
            policy_change: None,
        }
    }

    #[test]
    fn a_change_in_what_the_ranking_used_withdraws_the_run() {
        let group_key = crate::domain::policy::GroupKey::Param("base".into());
        let options = InventoryOptions {
            group_by: Some(&group_key),
            ..OPTIONS
        };
        let mut planned = plan("r", &[]);
        planned.ranked_on = RankedOn {
            metric: Some(0.3),
            group: Some("bert".into()),
            end_time: Some(2),
        };
        let mut same = run("r", "FINISHED");
        same.metrics.insert("acc".into(), 0.3);
        same.params.insert("base".into(), "bert".into());
        assert_eq!(changed(&planned.ranked_on, &same, &options), None);

        let mut better = same.clone();
        better.metrics.insert("acc".into(), 0.99);
        assert_eq!(
            changed(&planned.ranked_on, &better, &options).as_deref(),
            Some("acc 0.3 -> 0.99")
        );
        let mut regrouped = same.clone();
        regrouped.params.insert("base".into(), "roberta".into());
        assert_eq!(
            changed(&planned.ranked_on, &regrouped, &options).as_deref(),
            Some("params.base Some(\"bert\") -> Some(\"roberta\")")
        );
        let mut resumed = same.clone();
        resumed.end_time = Some(5);
        assert!(
            changed(&planned.ranked_on, &resumed, &options)
                .unwrap()
                .starts_with("end time")
        );
        let mut lost = same.clone();
        lost.metrics.clear();
        assert_eq!(
            changed(&planned.ranked_on, &lost, &options).as_deref(),
            Some("acc 0.3 -> none")
        );
        // NaN stays NaN.
        planned.ranked_on.metric = Some(f64::NAN);
        let mut nan = same.clone();
        nan.metrics.insert("acc".into(), f64::NAN);
        assert_eq!(changed(&planned.ranked_on, &nan, &options), None);

        // Through the look: withdrawn with rule changed; a resumed deletion is not ranked, so
        // only its protections count; a policy change withdraws every ranked run.
        let runs: HashMap<&str, &Run> = HashMap::from([("r", &better)]);
        let sources = HashMap::new();
        planned.ranked_on.metric = Some(0.3);
        let verdicts = check(
            &[planned.clone()],
            &[0],
            &HashMap::new(),
            &look(&runs, &[]),
            &sources,
            &rules(),
            &options,
        );
        assert!(matches!(
            &verdicts[0].1,
            Some(Decision::Skipped { reason: SkipReason::Changed { what } }) if what == "acc 0.3 -> 0.99"
        ));
        let mut resume = planned.clone();
        resume.resume = true;
        let verdicts = check(
            &[resume],
            &[0],
            &HashMap::new(),
            &look(&runs, &[]),
            &sources,
            &rules(),
            &options,
        );
        assert_eq!(verdicts[0].1, None);
        let runs: HashMap<&str, &Run> = HashMap::from([("r", &same)]);
        let fresh = Fresh {
            policy_change: Some("policy acc max, keep_top 1 -> acc max, keep_top 3".into()),
            ..look(&runs, &[])
        };
        let verdicts = check(
            &[planned],
            &[0],
            &HashMap::new(),
            &fresh,
            &sources,
            &rules(),
            &options,
        );
        assert!(matches!(
            &verdicts[0].1,
            Some(Decision::Skipped { reason: SkipReason::Changed { what } }) if what.starts_with("policy")
        ));
    }

    #[test]
    fn fresh_reads_versions_and_kept_sharers_withdraw_runs() {
        let mut keep = run("keep", "FINISHED");
        keep.tags.insert(marks::TAG_KEEP.into(), "true".into());
        let mut pruned = run("pruned", "FINISHED");
        pruned
            .tags
            .insert("model_pruner.deleted".into(), "true".into());
        let fresh_runs = [
            run("ok", "FINISHED"),
            keep,
            run("running", "RUNNING"),
            run("registered", "FINISHED"),
            run("sharer", "FINISHED"),
            run("late", "FINISHED"),
            pruned,
            run("unpruned", "FINISHED"),
            run("earlier", "FINISHED"),
        ];
        let fresh: HashMap<&str, &Run> =
            fresh_runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
        let planned = vec![
            plan("ok", &[("m-old", &["pruned"])]),
            plan("keep", &[]),
            plan("running", &[]),
            plan("registered", &[]),
            plan("vanished", &[]),
            plan("sharer", &[("m-s", &["keep"])]),
            plan("late", &[("m-t", &["ok", "earlier"])]),
            plan("again", &[("m-u", &["unpruned"])]),
        ];
        let versions = [version(
            "s3://mlflow/1/registered/artifacts/model",
            None,
            None,
        )];
        let sources: HashMap<String, ModelSources> = planned
            .iter()
            .map(|p| {
                let artifact_uri = format!("mlflow-artifacts:/1/{}/artifacts", p.run_id);
                let sources = ModelSources {
                    artifact_uri,
                    logged_models: vec![],
                };
                (p.run_id.clone(), sources)
            })
            .collect();
        let settled = HashMap::from([("earlier", true)]);
        let group: Vec<usize> = (0..planned.len()).collect();
        let verdicts = check(
            &planned,
            &group,
            &settled,
            &look(&fresh, &versions),
            &sources,
            &rules(),
            &OPTIONS,
        );
        let labels: Vec<(&str, Option<&str>)> = verdicts
            .iter()
            .map(|(at, v)| {
                (
                    planned[*at].run_id.as_str(),
                    v.as_ref().map(Decision::label),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("ok", None),
                ("keep", Some("protected")),
                ("running", Some("skipped")),
                ("registered", Some("protected")),
                ("vanished", Some("skipped")),
                // Shares m-s with "keep", which stays.
                ("sharer", Some("skipped")),
                ("late", None),
                // Its sharer is no longer marked pruned.
                ("again", Some("skipped")),
            ]
        );
        let settled = HashMap::from([("earlier", false)]);
        let verdicts = check(
            &planned,
            &[6],
            &settled,
            &look(&fresh, &versions),
            &sources,
            &rules(),
            &OPTIONS,
        );
        assert!(
            verdicts[0].1.is_some(),
            "an earlier sharer that stayed keeps the model"
        );
    }
}
