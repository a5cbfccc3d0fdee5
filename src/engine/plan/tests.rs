use std::collections::BTreeMap;

use crate::domain::run::Fields;

use super::*;
use crate::domain::policy::{Direction, PolicyOverrides};
use crate::domain::run::{LifecycleStage, RunStatus};
use crate::engine::run_index::RunIndex;

const NOW_MS: i64 = 1_800_000_000_000;
const NOW: EpochMs = EpochMs::from_millis(NOW_MS);

fn defaults() -> PolicyDefaults {
    PolicyDefaults {
        metric: "acc".into(),
        direction: Direction::Max,
        keep_top: 1,
        max_deletions_per_pass: 2,
        keep_latest: 0,
        grace: None,
        group_by: None,
        min_metric: None,
        max_metric: None,
        older_than: None,
    }
}

fn rules() -> LocationRules {
    LocationRules {
        allowed_buckets: vec!["mlflow".into()],
        artifacts_destination: "s3://mlflow".parse().unwrap(),
    }
}

/// A finished run with a classic model and `acc`, ended in the order of `acc`.
fn run(id: &str, acc: f64) -> Run {
    Run {
        run_id: id.into(),
        run_name: id.into(),
        experiment_id: "1".into(),
        status: RunStatus::Finished,
        lifecycle_stage: LifecycleStage::Active,
        start_time: Some(EpochMs::from_millis(1)),
        end_time: Some(EpochMs::from_millis(1_000 + (acc * 100.0) as i64)),
        artifact_uri: format!("s3://mlflow/1/{id}/artifacts"),
        metrics: [("acc".to_string(), acc)].into_iter().collect(),
        params: [("model_uploaded".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
        tags: Fields::default(),
        model_output_ids: vec![],
    }
}

fn logged(id: &str, source: &str) -> LoggedModel {
    LoggedModel {
        model_id: id.into(),
        experiment_id: "1".into(),
        name: "model".into(),
        source_run_id: Some(source.into()),
        artifact_uri: format!("s3://mlflow/1/models/{id}/artifacts"),
        status: "LOGGED_MODEL_READY".into(),
        tags: BTreeMap::new(),
    }
}

fn request(run_ids: &[&str], kind: PassKind) -> PassRequest {
    PassRequest {
        experiment_id: "1".into(),
        policy: PolicyOverrides::default(),
        run_ids: run_ids.iter().map(|s| s.to_string()).collect(),
        kind,
        dry_run: false,
    }
}

fn plan_of(req: &PassRequest, runs: Vec<Run>, models: &[LoggedModel]) -> Result<Plan, PruneError> {
    let (defaults, rules) = (defaults(), rules());
    let planner = Planner {
        defaults: &defaults,
        rules: &rules,
        model_uploaded_param: "model_uploaded",
    };
    let experiment = Experiment {
        experiment_id: "1".into(),
        name: "e".into(),
        lifecycle_stage: LifecycleStage::Active,
        artifact_location: "s3://mlflow/1".into(),
        tags: BTreeMap::new(),
    };
    let policy = planner.policy(req, &experiment)?;
    let foreign = foreign_runs(req, &runs)?;
    planner.plan(req, policy, (runs, foreign), models, NOW)
}

fn planned(plan: &Plan) -> Vec<(&str, Vec<&str>)> {
    plan.planned
        .iter()
        .map(|p| {
            let prefixes = p.locations.iter().map(|(l, _)| l.prefix.as_str()).collect();
            (p.run_id.as_str(), prefixes)
        })
        .collect()
}

#[test]
fn the_runs_out_of_the_top_are_planned_with_every_folder_resolved() {
    let mut b = run("b", 0.5);
    b.params.clear();
    b.model_output_ids = vec!["m-b".into()];
    let plan = plan_of(
        &request(
            &[],
            PassKind::Sweep {
                delete_experiment: false,
                force: false,
            },
        ),
        vec![run("a", 0.9), b, run("c", 0.1)],
        &[logged("m-b", "b")],
    )
    .unwrap();
    assert_eq!(
        planned(&plan),
        [
            ("b", vec!["1/models/m-b/artifacts/"]),
            ("c", vec!["1/c/artifacts/model/"])
        ]
    );
    assert_eq!(plan.planned[1].reason, "rank 3 of 3 by acc max, keep_top 1");
}

#[test]
fn a_pass_for_runs_of_another_experiment_only_fails_and_plans_nothing() {
    let runs = || vec![run("a", 0.9), run("b", 0.1)];
    let err = foreign_runs(&request(&["x", "y"], PassKind::RunFinished), &runs()).unwrap_err();
    assert!(
        matches!(err, PruneError::RunNotInExperiment { ref run_ids, .. } if run_ids == &["x", "y"])
    );
    // One of ours among them: the pass goes on and names the other.
    let plan = plan_of(&request(&["x", "b"], PassKind::RunFinished), runs(), &[]).unwrap();
    assert_eq!(plan.foreign_run_ids, ["x"]);
    assert_eq!(planned(&plan).len(), 1);
}

#[test]
fn a_refused_folder_fails_the_whole_plan() {
    let mut foreign = run("f", 0.1);
    foreign.artifact_uri = "s3://elsewhere/1/f/artifacts".into();
    let err = plan_of(
        &request(&[], PassKind::RunFinished),
        vec![run("a", 0.9), run("b", 0.5), foreign],
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(err, PruneError::Location { ref run_id, .. } if run_id == "f"),
        "{err}"
    );
}

#[test]
fn a_logged_model_another_run_keeps_is_not_planned() {
    let mut keeper = run("keeper", 0.9);
    keeper.params.clear();
    let mut loser = run("loser", 0.1);
    loser.params.clear();
    loser.model_output_ids = vec!["m-1".into()];
    let plan = plan_of(
        &request(&[], PassKind::RunFinished),
        vec![keeper, loser],
        &[logged("m-1", "keeper")],
    )
    .unwrap();
    // The loser is out of the top but its only model stays with the keeper.
    assert_eq!(planned(&plan), [("loser", vec![])]);
}

#[test]
fn the_valve_stops_a_large_pass_unless_it_is_a_forced_sweep() {
    let runs = || {
        (0..4)
            .map(|i| run(&format!("r{i}"), f64::from(i) / 10.0))
            .collect()
    };
    let plan = plan_of(&request(&[], PassKind::RunFinished), runs(), &[]).unwrap();
    let err = plan.check_valve("1", PassKind::RunFinished, 2).unwrap_err();
    assert!(matches!(
        err,
        PruneError::SafetyValve {
            count: 3,
            max: 2,
            ..
        }
    ));
    let sweep = PassKind::Sweep {
        delete_experiment: false,
        force: false,
    };
    assert!(plan.check_valve("1", sweep, 2).is_err());
    let forced = PassKind::Sweep {
        delete_experiment: false,
        force: true,
    };
    assert!(plan.check_valve("1", forced, 2).is_ok());
    assert!(plan.check_valve("1", PassKind::RunFinished, 3).is_ok());
}

#[test]
fn a_withdrawn_run_leaves_the_plan_and_keeps_its_rank_in_the_reason() {
    let runs = vec![run("a", 0.9), run("b", 0.5), run("c", 0.1)];
    let mut plan = plan_of(&request(&[], PassKind::RunFinished), runs, &[]).unwrap();
    let protected = Decision::Protected {
        protection: crate::domain::ranking::Protection::KeepTag,
    };
    plan.withdraw(vec![
        (RunIndex::new(0), Verdict::Withdrawn(protected)),
        (RunIndex::new(1), Verdict::Stands),
    ]);
    assert_eq!(planned(&plan), [("c", vec!["1/c/artifacts/model/"])]);
    let b = plan
        .ranking
        .runs
        .iter()
        .find(|r| r.run.run_id == "b")
        .unwrap();
    assert_eq!(b.decision.label(), "protected");
    assert!(b.reason.starts_with("rank 2 of 3"), "{}", b.reason);
}

#[test]
fn retirement_waits_for_kept_graced_young_and_unfinished_runs() {
    let mut running = run("running", 0.2);
    running.status = RunStatus::Running;
    // Unfinished without a model yet: it may still write one.
    let mut starting = run("starting", 0.2);
    starting.status = RunStatus::Other("PAUSED".into());
    starting.params.clear();
    // Failed without a model: nothing stored, nothing to wait for.
    let mut failed = run("failed", 0.2);
    failed.status = RunStatus::Failed;
    failed.params.clear();
    let mut young = run("young", 0.3);
    young.end_time = Some(EpochMs::from_millis(NOW_MS - 1_000));
    let sweep = PassKind::Sweep {
        delete_experiment: true,
        force: true,
    };
    let mut req = request(&[], sweep);
    req.policy.keep_top = Some(1);
    req.policy.older_than = Some("1h".into());
    let runs = vec![
        run("best", 0.9),
        run("gone", 0.1),
        running,
        starting,
        failed,
        young,
    ];
    let plan = plan_of(&req, runs, &[]).unwrap();
    let blockers = retirement_blockers(&plan.ranking);
    let ids: Vec<&str> = blockers
        .iter()
        .map(|b| b.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids, ["best", "running", "starting", "young"]);

    // A run in its grace window stays, and so does the experiment.
    let mut req = request(&[], sweep);
    req.policy.keep_top = Some(0);
    req.policy.grace = Some("1h".into());
    let mut fresh = run("fresh", 0.5);
    fresh.end_time = Some(EpochMs::from_millis(NOW_MS - 1_000));
    let plan = plan_of(&req, vec![fresh, run("old", 0.1)], &[]).unwrap();
    let blockers = retirement_blockers(&plan.ranking);
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    assert!(
        blockers[0].starts_with("fresh (rank 1 of 2"),
        "{blockers:?}"
    );
    assert!(blockers[0].contains("grace until"), "{blockers:?}");

    let mut req = request(
        &[],
        PassKind::Sweep {
            delete_experiment: true,
            force: true,
        },
    );
    req.policy.keep_top = Some(0);
    let plan = plan_of(&req, vec![run("a", 0.9), run("b", 0.1)], &[]).unwrap();
    assert!(retirement_blockers(&plan.ranking).is_empty());
}
