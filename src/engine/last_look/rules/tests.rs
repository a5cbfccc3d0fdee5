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
        start_time: Some(EpochMs::from_millis(1)),
        end_time: Some(EpochMs::from_millis(2)),
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
            end_time: Some(EpochMs::from_millis(2)),
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
        end_time: Some(EpochMs::from_millis(2)),
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
    resumed.end_time = Some(EpochMs::from_millis(5));
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
        &[RunIndex::new(0)],
        &HashMap::new(),
        &look(&runs, &[]),
        &sources,
        &rules(),
        &options,
    );
    assert!(matches!(
        &verdicts[0].1,
        Verdict::Withdrawn(Decision::Skipped { reason: SkipReason::Changed { what } }) if what == "acc 0.3 -> 0.99"
    ));
    let mut resume = planned.clone();
    resume.resume = true;
    let verdicts = check(
        &[resume],
        &[RunIndex::new(0)],
        &HashMap::new(),
        &look(&runs, &[]),
        &sources,
        &rules(),
        &options,
    );
    assert_eq!(verdicts[0].1, Verdict::Stands);
    let runs: HashMap<&str, &Run> = HashMap::from([("r", &same)]);
    let fresh = Fresh {
        policy_change: Some("policy acc max, keep_top 1 -> acc max, keep_top 3".into()),
        ..look(&runs, &[])
    };
    let verdicts = check(
        &[planned],
        &[RunIndex::new(0)],
        &HashMap::new(),
        &fresh,
        &sources,
        &rules(),
        &options,
    );
    assert!(matches!(
        &verdicts[0].1,
        Verdict::Withdrawn(Decision::Skipped { reason: SkipReason::Changed { what } }) if what.starts_with("policy")
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
    let fresh: HashMap<&str, &Run> = fresh_runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
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
    let settled = HashMap::from([("earlier", Settled::Stands)]);
    let group: Vec<RunIndex> = RunIndex::all(planned.len()).collect();
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
                at.of(&planned).run_id.as_str(),
                match v {
                    Verdict::Stands => None,
                    Verdict::Withdrawn(decision) => Some(decision.label()),
                },
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
    let settled = HashMap::from([("earlier", Settled::Withdrawn)]);
    let verdicts = check(
        &planned,
        &[RunIndex::new(6)],
        &settled,
        &look(&fresh, &versions),
        &sources,
        &rules(),
        &OPTIONS,
    );
    assert!(
        !matches!(verdicts[0].1, Verdict::Stands),
        "an earlier sharer that stayed keeps the model"
    );
}
