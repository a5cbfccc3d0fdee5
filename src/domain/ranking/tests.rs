use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn run(id: &str, metric: Option<f64>, end: i64) -> RunFacts {
    RunFacts {
        run_id: id.into(),
        run_name: format!("name-{id}"),
        status: RunStatus::Finished,
        active: true,
        end_time: Some(ms(end)),
        metric,
        has_model: true,
        pruned: false,
        deletion_started: None,
        protection: None,
        group: None,
    }
}

/// "Now" in the tests: well after every end time they use.
const NOW_MS: i64 = 1_000_000;
const NOW: EpochMs = EpochMs::from_millis(NOW_MS);

/// The time `ms` milliseconds after the epoch.
fn ms(ms: i64) -> EpochMs {
    EpochMs::from_millis(ms)
}

fn policy(direction: Direction, keep_top: u32) -> RetentionPolicy {
    RetentionPolicy::top("accuracy", direction, keep_top)
}

fn decisions(r: &Ranking) -> Vec<(&str, &'static str)> {
    r.runs
        .iter()
        .map(|x| (x.run.run_id.as_str(), x.decision.label()))
        .collect()
}

#[test]
fn max_keeps_the_highest_values() {
    let runs = vec![
        run("a", Some(0.1), 1),
        run("b", Some(0.9), 2),
        run("c", Some(0.5), 3),
    ];
    let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [("b", "keep"), ("c", "keep"), ("a", "delete")]
    );
    assert_eq!(r.runs[2].reason, "rank 3 of 3 by accuracy max, keep_top 2");
}

#[test]
fn min_keeps_the_lowest_values() {
    let runs = vec![
        run("a", Some(0.1), 1),
        run("b", Some(0.9), 2),
        run("c", Some(0.5), 3),
    ];
    let r = rank(runs, &policy(Direction::Min, 1), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [("a", "keep"), ("c", "delete"), ("b", "delete")]
    );
}

#[test]
fn nan_metric_ranks_last_when_maximising() {
    let runs = vec![run("nan", Some(f64::NAN), 1), run("low", Some(-1e9), 2)];
    let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    assert_eq!(decisions(&r), [("low", "keep"), ("nan", "delete")]);
}

#[test]
fn nan_metric_ranks_last_when_minimising() {
    let runs = vec![run("nan", Some(f64::NAN), 1), run("high", Some(1e9), 2)];
    let r = rank(runs, &policy(Direction::Min, 1), NOW).unwrap();
    assert_eq!(decisions(&r), [("high", "keep"), ("nan", "delete")]);
}

#[test]
fn infinities_are_ordinary_extremes() {
    let runs = vec![
        run("neg", Some(f64::NEG_INFINITY), 1),
        run("pos", Some(f64::INFINITY), 2),
        run("zero", Some(0.0), 3),
    ];
    let r = rank(runs, &policy(Direction::Max, 3), NOW).unwrap();
    let order: Vec<_> = r.runs.iter().map(|x| x.run.run_id.as_str()).collect();
    assert_eq!(order, ["pos", "zero", "neg"]);
}

#[test]
fn ties_go_to_the_run_that_ended_earlier_then_to_run_id() {
    let runs = vec![
        run("late", Some(0.5), 30),
        run("b-early", Some(0.5), 10),
        run("a-early", Some(0.5), 10),
    ];
    let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [
            ("a-early", "keep"),
            ("b-early", "delete"),
            ("late", "delete")
        ]
    );
}

#[test]
fn missing_end_time_ranks_after_known_end_times_on_a_tie() {
    let mut no_end = run("a", Some(0.5), 0);
    no_end.end_time = None;
    let r = rank(
        vec![no_end, run("b", Some(0.5), 99)],
        &policy(Direction::Max, 1),
        NOW,
    )
    .unwrap();
    assert_eq!(decisions(&r), [("b", "keep"), ("a", "delete")]);
}

#[test]
fn missing_metric_is_kept_and_reported_not_ranked() {
    let runs = vec![
        run("a", Some(0.1), 1),
        run("b", Some(0.2), 2),
        run("none", None, 3),
    ];
    let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [("b", "keep"), ("a", "delete"), ("none", "skipped")]
    );
    assert_eq!(r.missing_metric().count(), 1);
    assert_eq!(r.ranked, 2);
}

#[test]
fn no_candidate_with_the_metric_is_an_error_naming_it() {
    let err = rank(
        vec![run("a", None, 1), run("b", None, 2)],
        &policy(Direction::Max, 0),
        NOW,
    )
    .unwrap_err();
    assert_eq!(
        err,
        RankingError::NoMetric {
            metric: "accuracy".into(),
            candidates: 2
        }
    );
    assert!(err.to_string().contains("\"accuracy\""));
}

#[test]
fn an_experiment_without_candidates_ranks_to_nothing() {
    let mut running = run("a", None, 1);
    running.status = RunStatus::Running;
    let r = rank(vec![running], &policy(Direction::Max, 0), NOW).unwrap();
    assert_eq!(decisions(&r), [("a", "skipped")]);
}

#[test]
fn non_finished_runs_are_never_touched_even_with_a_bad_metric() {
    let mut runs = Vec::new();
    for status in ["RUNNING", "SCHEDULED", "FAILED", "KILLED"] {
        let mut r = run(status, Some(-100.0), 1);
        r.status = RunStatus::parse(status);
        runs.push(r);
    }
    runs.push(run("ok", Some(1.0), 1));
    let r = rank(runs, &policy(Direction::Max, 0), NOW).unwrap();
    assert_eq!(r.to_delete().count(), 1);
    assert_eq!(r.count("skipped"), 4);
}

#[test]
fn deleted_lifecycle_pruned_and_modelless_runs_are_skipped() {
    let mut trashed = run("trashed", Some(0.0), 1);
    trashed.active = false;
    let mut pruned = run("pruned", Some(0.0), 1);
    pruned.pruned = true;
    let mut bare = run("bare", Some(0.0), 1);
    bare.has_model = false;
    let r = rank(
        vec![trashed, pruned, bare, run("x", Some(1.0), 1)],
        &policy(Direction::Max, 0),
        NOW,
    )
    .unwrap();
    assert_eq!(
        r.to_delete()
            .map(|x| x.run.run_id.as_str())
            .collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(r.ranked, 1);
}

#[test]
fn protected_runs_inside_top_n_count_toward_it_and_outside_are_kept_in_addition() {
    let mut reg = run("reg", Some(0.1), 1);
    reg.protection = Some(Protection::Registered {
        name: "m".into(),
        version: "3".into(),
    });
    let mut pinned = run("pinned", Some(0.99), 1);
    pinned.protection = Some(Protection::KeepTag);
    let runs = vec![
        reg,
        pinned,
        run("mid", Some(0.5), 1),
        run("low", Some(0.2), 1),
    ];
    let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [
            ("pinned", "keep"),
            ("mid", "delete"),
            ("low", "delete"),
            ("reg", "protected")
        ]
    );
    assert!(r.runs[3].reason.contains("registered model m version 3"));
}

#[test]
fn keep_top_zero_deletes_every_unprotected_candidate() {
    let r = rank(
        vec![run("a", Some(1.0), 1), run("b", Some(2.0), 1)],
        &policy(Direction::Max, 0),
        NOW,
    )
    .unwrap();
    assert_eq!(r.to_delete().count(), 2);
}

#[test]
fn a_repeated_row_is_ranked_once_and_cannot_push_a_keeper_out() {
    let best = run("best", Some(0.9), 1);
    let runs = vec![
        best.clone(),
        run("second", Some(0.8), 2),
        best,
        run("third", Some(0.1), 3),
    ];
    let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [("best", "keep"), ("second", "keep"), ("third", "delete")]
    );
    assert_eq!(r.ranked, 3);
    assert_eq!(r.repeated, ["best"]);
    assert_eq!(r.runs[2].reason, "rank 3 of 3 by accuracy max, keep_top 2");
}

#[test]
fn withdrawing_a_deletion_keeps_the_rank_in_the_reason() {
    let runs = vec![run("a", Some(0.9), 1), run("b", Some(0.1), 2)];
    let mut r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    let protected = Decision::Protected {
        protection: Protection::KeepTag,
    };
    assert!(
        !r.withdraw("a", protected.clone()),
        "a kept run is not withdrawn"
    );
    assert!(r.withdraw("b", protected.clone()));
    assert_eq!(r.runs[1].decision, protected);
    assert_eq!(
        r.runs[1].reason,
        "rank 2 of 2 by accuracy max, keep_top 1; protected: tagged model_pruner.keep = true"
    );
    assert_eq!(r.to_delete().count(), 0);
    let skipped = Decision::Skipped {
        reason: SkipReason::NotActive,
    };
    assert!(!r.withdraw("b", skipped), "withdrawn once");
}

fn with(policy: RetentionPolicy, f: impl FnOnce(&mut RetentionPolicy)) -> RetentionPolicy {
    let mut policy = policy;
    f(&mut policy);
    policy
}

fn rules(r: &Ranking) -> Vec<(&str, &'static str, Rule)> {
    r.runs
        .iter()
        .map(|x| (x.run.run_id.as_str(), x.decision.label(), x.rule))
        .collect()
}

#[test]
fn keep_latest_keeps_the_most_recently_finished_besides_the_top() {
    let runs = vec![
        run("best", Some(0.9), 10),
        run("old", Some(0.5), 20),
        run("newest", Some(0.1), 40),
        run("newer", Some(0.2), 30),
    ];
    let p = with(policy(Direction::Max, 1), |p| p.keep_latest = 2);
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("best", "keep", Rule::Rank),
            ("old", "delete", Rule::Rank),
            ("newer", "keep", Rule::Latest),
            ("newest", "keep", Rule::Latest),
        ]
    );
    assert!(
        r.runs[2].reason.contains("keep_latest"),
        "{}",
        r.runs[2].reason
    );
}

#[test]
fn keep_latest_counts_a_run_without_end_time_as_the_latest() {
    let mut no_end = run("no-end", Some(0.1), 0);
    no_end.end_time = None;
    let runs = vec![
        run("best", Some(0.9), 10),
        run("recent", Some(0.2), 50),
        no_end,
    ];
    let p = with(policy(Direction::Max, 1), |p| p.keep_latest = 1);
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        decisions(&r),
        [("best", "keep"), ("recent", "delete"), ("no-end", "keep")]
    );
}

#[test]
fn grace_keeps_a_recent_run_out_of_the_top_until_its_window_ends() {
    let runs = vec![
        run("best", Some(0.9), 1_000),
        run("recent", Some(0.1), NOW_MS - 5_000),
        run("later", Some(0.2), NOW_MS - 2_000),
        run("old", Some(0.3), NOW_MS - 60_000),
    ];
    let p = with(policy(Direction::Max, 1), |p| {
        p.grace = Some(Duration::from_secs(20))
    });
    let r = rank(runs.clone(), &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("best", "keep", Rule::Rank),
            ("old", "delete", Rule::Rank),
            ("later", "grace", Rule::Grace),
            ("recent", "grace", Rule::Grace),
        ]
    );
    assert_eq!(
        r.runs[3].decision,
        Decision::Grace {
            until: Some(ms(NOW_MS + 15_000))
        }
    );
    assert!(
        r.runs[3]
            .reason
            .contains("grace until 1970-01-01T00:16:55Z"),
        "{}",
        r.runs[3].reason
    );
    assert_eq!(r.grace_ends(), Some(ms(NOW_MS + 15_000)));

    // Once the window has passed, the same run is deleted by its rank.
    let r = rank(runs, &p, ms(NOW_MS + 15_000)).unwrap();
    assert_eq!(r.runs[3].decision, Decision::Delete);
    assert_eq!(r.grace_ends(), Some(ms(NOW_MS + 18_000)));
}

#[test]
fn grace_never_ends_for_a_run_without_end_time() {
    let mut no_end = run("no-end", Some(0.1), 0);
    no_end.end_time = None;
    let p = with(policy(Direction::Max, 0), |p| {
        p.grace = Some(Duration::from_secs(1))
    });
    let r = rank(vec![no_end], &p, NOW).unwrap();
    assert_eq!(r.runs[0].decision, Decision::Grace { until: None });
    assert_eq!(r.grace_ends(), None);
}

#[test]
fn group_by_keeps_the_top_of_each_group_and_ranks_runs_without_the_key_apart() {
    let grouped = |id: &str, metric: f64, group: Option<&str>| RunFacts {
        group: group.map(str::to_owned),
        ..run(id, Some(metric), 1)
    };
    let runs = vec![
        grouped("b1", 0.9, Some("bert")),
        grouped("b2", 0.8, Some("bert")),
        grouped("r1", 0.3, Some("roberta")),
        grouped("r2", 0.2, Some("roberta")),
        grouped("n1", 0.5, None),
        grouped("n2", 0.4, None),
    ];
    let p = with(policy(Direction::Max, 1), |p| {
        p.group_by = Some(GroupKey::Param("base_model".into()))
    });
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("b1", "keep", Rule::Group),
            ("b2", "delete", Rule::Group),
            ("r1", "keep", Rule::Group),
            ("r2", "delete", Rule::Group),
            ("n1", "keep", Rule::Group),
            ("n2", "delete", Rule::Group),
        ]
    );
    assert_eq!(
        r.runs[1].reason,
        "rank 2 of 2 in group params.base_model = \"bert\" by accuracy max, keep_top 1 per \
         params.base_model"
    );
    assert!(
        r.runs[5]
            .reason
            .contains("among the runs without params.base_model")
    );
    assert_eq!(r.ungrouped, ["n1", "n2"]);
}

#[test]
fn without_group_by_the_group_values_are_ignored() {
    let runs = vec![
        RunFacts {
            group: Some("a".into()),
            ..run("a", Some(0.9), 1)
        },
        RunFacts {
            group: Some("b".into()),
            ..run("b", Some(0.1), 1)
        },
    ];
    let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
    assert_eq!(decisions(&r), [("a", "keep"), ("b", "delete")]);
    assert!(r.ungrouped.is_empty());
}

#[test]
fn a_run_below_the_floor_does_not_count_towards_the_top() {
    let runs = vec![
        run("good", Some(0.8), 1),
        run("poor", Some(0.3), 2),
        run("worse", Some(0.2), 3),
    ];
    let p = with(policy(Direction::Max, 3), |p| p.min_metric = Some(0.5));
    let r = rank(runs.clone(), &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("good", "keep", Rule::Rank),
            ("poor", "delete", Rule::Floor),
            ("worse", "delete", Rule::Floor),
        ]
    );
    assert!(
        r.runs[1]
            .reason
            .ends_with("outside the floor: accuracy 0.3 < min_metric 0.5"),
        "{}",
        r.runs[1].reason
    );
    // keep_latest still keeps the latest, within the floor or not.
    let p = with(p, |p| p.keep_latest = 1);
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(r.runs[2].rule, Rule::Latest);
}

#[test]
fn a_floor_nothing_is_within_deletes_nothing_and_says_so() {
    let runs = vec![run("a", Some(0.8), 1), run("b", Some(0.3), 2)];
    let p = with(policy(Direction::Max, 1), |p| p.min_metric = Some(80.0));
    let err = rank(runs, &p, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "none of the 2 candidates has a value of \"accuracy\" within the floor (min_metric \
         80): nothing deleted (is the floor on the metric's scale?)"
    );
}

#[test]
fn max_metric_is_the_floor_of_a_loss_and_nan_is_never_within_it() {
    let runs = vec![
        run("low", Some(0.1), 1),
        run("high", Some(2.0), 2),
        run("nan", Some(f64::NAN), 3),
    ];
    let p = with(policy(Direction::Min, 3), |p| p.max_metric = Some(1.0));
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("low", "keep", Rule::Rank),
            ("high", "delete", Rule::Floor),
            ("nan", "delete", Rule::Floor),
        ]
    );
    assert!(r.runs[1].reason.ends_with("accuracy 2 > max_metric 1"));
}

#[test]
fn a_floor_above_the_best_runs_keeps_the_ones_within_it() {
    // max_metric on a maximised metric: the best values are outside the floor.
    let runs = vec![run("suspicious", Some(1.0), 1), run("fine", Some(0.7), 2)];
    let p = with(policy(Direction::Max, 1), |p| p.max_metric = Some(0.99));
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("suspicious", "delete", Rule::Floor),
            ("fine", "keep", Rule::Rank),
        ]
    );
}

#[test]
fn older_than_leaves_recent_runs_out_of_the_candidates() {
    let mut no_end = run("no-end", Some(0.0), 0);
    no_end.end_time = None;
    let runs = vec![
        run("old-good", Some(0.9), NOW_MS - 100_000),
        run("old-poor", Some(0.1), NOW_MS - 100_000),
        run("young", Some(0.0), NOW_MS - 1_000),
        no_end,
    ];
    let p = with(policy(Direction::Max, 1), |p| {
        p.older_than = Some(Duration::from_secs(60))
    });
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("old-good", "keep", Rule::Rank),
            ("old-poor", "delete", Rule::Rank),
            ("no-end", "skipped", Rule::Age),
            ("young", "skipped", Rule::Age),
        ]
    );
    assert_eq!(r.ranked, 2);
    assert_eq!(
        r.runs[3].reason,
        "finished less than 1m ago (older_than): not a candidate until 1970-01-01T00:17:39Z"
    );
    assert_eq!(
        r.runs[2].reason,
        "finished less than 1m ago (older_than): not a candidate (no end time)"
    );
    // The young run becomes a candidate 59 s from now: a pass should look again then.
    assert_eq!(r.next_look(), Some(ms(NOW_MS + 59_000)));
    assert_eq!(r.grace_ends(), None);
}

#[test]
fn the_next_look_is_the_earlier_of_a_grace_end_and_a_run_coming_of_age() {
    let runs = vec![
        run("best", Some(0.9), NOW_MS - 100_000),
        run("in-grace", Some(0.1), NOW_MS - 5_000),
        run("young", Some(0.0), NOW_MS - 1_000),
    ];
    let p = with(policy(Direction::Max, 1), |p| {
        p.older_than = Some(Duration::from_secs(2));
        p.grace = Some(Duration::from_secs(10));
    });
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(r.grace_ends(), Some(ms(NOW_MS + 5_000)));
    assert_eq!(r.next_look(), Some(ms(NOW_MS + 1_000)));
}

#[test]
fn a_run_without_the_metric_fails_nothing_when_other_runs_have_it() {
    // Every candidate is too young or already pruned; one run lacks the metric. The metric's
    // name is right (other runs logged it): the run is kept and reported, the pass goes on.
    let mut pruned = run("pruned", Some(0.5), NOW_MS - 100_000);
    pruned.pruned = true;
    let runs = vec![
        pruned,
        run("young", Some(0.2), NOW_MS - 1_000),
        run("no-metric", None, NOW_MS - 100_000),
    ];
    let p = with(policy(Direction::Max, 1), |p| {
        p.older_than = Some(Duration::from_secs(60))
    });
    let r = rank(runs, &p, NOW).unwrap();
    assert_eq!(r.missing_metric().count(), 1);
    assert_eq!(r.ranked, 0);
    assert_eq!(r.count("delete"), 0);
}

#[test]
fn a_run_whose_deletion_did_not_finish_is_completed_and_never_takes_a_slot() {
    let started = |id: &str, metric: f64| RunFacts {
        deletion_started: Some("2026-12-01T10:00:00Z".into()),
        ..run(id, Some(metric), 1)
    };
    let mut registered = started("registered", 0.95);
    registered.protection = Some(Protection::KeepTag);
    let mut trashed = started("trashed", 0.97);
    trashed.active = false;
    // The best value of all, but its files may be partly gone: it is not ranked, and the
    // two whole models keep their slots.
    let runs = vec![
        started("half-gone", 0.99),
        registered,
        trashed,
        run("a", Some(0.5), 1),
        run("b", Some(0.4), 1),
    ];
    let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
    assert_eq!(
        rules(&r),
        [
            ("a", "keep", Rule::Rank),
            ("b", "keep", Rule::Rank),
            ("half-gone", "delete", Rule::Resume),
            ("registered", "protected", Rule::Protected),
            ("trashed", "skipped", Rule::Candidacy),
        ]
    );
    assert_eq!(r.ranked, 2);
    assert_eq!(
        r.runs[2].reason,
        "deletion started at 2026-12-01T10:00:00Z and did not finish: completing it"
    );
    assert!(
        r.runs[3].reason.contains("files may be partly gone"),
        "{}",
        r.runs[3].reason
    );
}

#[test]
fn withdrawals_for_an_empty_folder_or_a_change_name_their_own_rule() {
    let mut r = rank(
        vec![
            run("a", Some(0.5), 1),
            run("b", Some(0.4), 1),
            run("c", Some(0.3), 1),
        ],
        &policy(Direction::Max, 1),
        NOW,
    )
    .unwrap();
    let empty = SkipReason::EmptyFolder {
        folder: "s3://mlflow/1/b/artifacts/model/".into(),
    };
    assert!(r.withdraw("b", Decision::Skipped { reason: empty }));
    let changed = SkipReason::Changed {
        what: "accuracy 0.3 -> 0.99".into(),
    };
    assert!(r.withdraw("c", Decision::Skipped { reason: changed }));
    assert_eq!(
        rules(&r),
        [
            ("a", "keep", Rule::Rank),
            ("b", "skipped", Rule::Empty),
            ("c", "skipped", Rule::Changed),
        ]
    );
    assert!(
        r.runs[1].reason.contains("holds no file"),
        "{}",
        r.runs[1].reason
    );
}

#[test]
fn protection_is_named_before_latest_and_grace() {
    let mut kept = run("kept", Some(0.1), NOW_MS - 1);
    kept.protection = Some(Protection::KeepTag);
    let p = with(policy(Direction::Max, 0), |p| {
        p.keep_latest = 1;
        p.grace = Some(Duration::from_secs(60));
    });
    let r = rank(vec![kept], &p, NOW).unwrap();
    assert_eq!(rules(&r), [("kept", "protected", Rule::Protected)]);
}

fn arb_run() -> impl Strategy<Value = RunFacts> {
    (
        "[a-f0-9]{4}",
        prop_oneof![
            Just(RunStatus::Finished),
            Just(RunStatus::Running),
            Just(RunStatus::Failed)
        ],
        any::<bool>(),
        proptest::option::of((0i64..5).prop_map(EpochMs::from_millis)),
        proptest::option::of(prop_oneof![
            (-3i32..3).prop_map(f64::from),
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]),
        any::<(bool, bool, bool, u8)>(),
        proptest::option::of(prop_oneof![Just("x".to_string()), Just("y".to_string())]),
    )
        .prop_map(
            |(id, status, active, end, metric, (model, pruned, keep, started), group)| {
                RunFacts {
                    run_name: id.clone(),
                    run_id: id,
                    status,
                    active: active || model,
                    end_time: end,
                    metric,
                    has_model: model,
                    pruned,
                    // One run in eight was left half deleted by an earlier pass.
                    deletion_started: (started % 8 == 0).then(|| "2026-01-01T00:00:00Z".into()),
                    protection: keep.then_some(Protection::KeepTag),
                    group,
                }
            },
        )
}

/// Any policy the new rules allow, around the end times `arb_run` draws (0..5 ms).
fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
    (
        0u32..4,
        any::<bool>(),
        0u32..3,
        proptest::option::of(0u64..6),
        any::<bool>(),
        proptest::option::of(-2i32..2),
        proptest::option::of(-1i32..3),
        proptest::option::of(0u64..6),
    )
        .prop_map(
            |(keep_top, max, keep_latest, grace, grouped, min, max_metric, older_than)| {
                let direction = if max { Direction::Max } else { Direction::Min };
                RetentionPolicy {
                    keep_latest,
                    grace: grace.map(Duration::from_millis),
                    group_by: grouped.then(|| GroupKey::Param("base".into())),
                    min_metric: min.map(f64::from),
                    max_metric: max_metric.map(f64::from),
                    older_than: older_than.map(Duration::from_millis),
                    ..RetentionPolicy::top("accuracy", direction, keep_top)
                }
            },
        )
}

/// What the rules promise to keep, computed from the policy's definition without the
/// ranking code: per group (or all), the best `keep_top` within the floor, the
/// `keep_latest` most recently finished, runs within grace, protected or not finished. A
/// run whose deletion started is never a candidate.
fn must_keep(runs: &[RunFacts], p: &RetentionPolicy, now: EpochMs) -> HashSet<String> {
    let mut keep = HashSet::new();
    let candidates: Vec<&RunFacts> = runs
        .iter()
        .filter(|r| r.deletion_started.is_none() && skip_reason(r, p, now).is_none())
        .collect();
    let group_of = |r: &RunFacts| p.group_by.as_ref().and(r.group.clone());
    for run in &candidates {
        let peers: Vec<&&RunFacts> = candidates
            .iter()
            .filter(|o| group_of(o) == group_of(run))
            .collect();
        let better_within = peers
            .iter()
            .filter(|o| {
                p.within_floor(o.metric.unwrap_or(f64::NAN))
                    && compare(o, run, p.direction) == Ordering::Less
            })
            .count();
        let later = peers
            .iter()
            .filter(|o| {
                let end = |r: &RunFacts| r.end_time.unwrap_or(EpochMs::MAX);
                (Reverse(end(o)), &o.run_id) < (Reverse(end(run)), &run.run_id)
            })
            .count();
        let top =
            p.within_floor(run.metric.unwrap_or(f64::NAN)) && better_within < p.keep_top as usize;
        let latest = later < p.keep_latest as usize;
        let in_grace = p
            .grace
            .is_some_and(|g| run.end_time.is_none_or(|end| now < end.saturating_add(g)));
        if top || latest || in_grace || run.protection.is_some() {
            keep.insert(run.run_id.clone());
        }
    }
    for run in runs {
        if run.status != RunStatus::Finished || !run.active || run.protection.is_some() {
            keep.insert(run.run_id.clone());
        }
    }
    keep
}

/// A run whose deletion did not finish: completed unless settled or protected.
fn resumable(run: &RunFacts) -> bool {
    run.deletion_started.is_some()
        && run.active
        && run.status == RunStatus::Finished
        && !run.pruned
        && run.protection.is_none()
}

fn unique(mut runs: Vec<RunFacts>) -> Vec<RunFacts> {
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    runs.dedup_by(|a, b| a.run_id == b.run_id);
    runs
}

proptest! {
    #[test]
    fn ranking_invariants_hold(
        runs in proptest::collection::vec(arb_run(), 0..40).prop_map(unique),
        keep_top in 0u32..8,
        max in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let direction = if max { Direction::Max } else { Direction::Min };
        let p = policy(direction, keep_top);
        let Ok(r) = rank(runs.clone(), &p, NOW) else {
            // Only possible when nothing is rankable but some candidate lacks the metric.
            prop_assert!(runs.iter().all(|x| skip_reason(x, &p, NOW).is_some()));
            return Ok(());
        };

        // Deterministic whatever the input order.
        let mut shuffled = runs.clone();
        let n = shuffled.len();
        for i in 0..n {
            let j = (seed as usize).wrapping_mul(i + 7) % n;
            shuffled.swap(i, j);
        }
        // (Compared by projection: NaN metrics make whole-struct equality fail.)
        let project = |r: &Ranking| -> Vec<(String, Option<usize>, Decision, String)> {
            r.runs
                .iter()
                .map(|x| (x.run.run_id.clone(), x.rank, x.decision.clone(), x.reason.clone()))
                .collect()
        };
        prop_assert_eq!(project(&rank(shuffled, &p, NOW).unwrap()), project(&r));

        // Nothing outside the candidates, nothing protected, is ever deleted, but for the
        // completion of an unfinished deletion.
        for x in r.to_delete() {
            prop_assert!(x.run.protection.is_none());
            if x.rule == Rule::Resume {
                prop_assert!(resumable(&x.run) && x.rank.is_none());
                continue;
            }
            prop_assert!(skip_reason(&x.run, &p, NOW).is_none());
            prop_assert!(x.run.deletion_started.is_none());
            prop_assert!(x.rank.unwrap() > keep_top as usize);
        }
        // Every resumable run is completed.
        for x in r.runs.iter().filter(|x| resumable(&x.run)) {
            prop_assert_eq!(x.rule, Rule::Resume);
        }
        // Exactly min(keep_top, ranked) runs are kept by rank.
        prop_assert_eq!(r.count("keep"), r.ranked.min(keep_top as usize));
        // Every kept run is at least as good as every deleted one.
        for k in r.runs.iter().filter(|x| x.decision == Decision::Keep) {
            for d in r.to_delete().filter(|d| d.rule != Rule::Resume) {
                prop_assert_ne!(compare(&k.run, &d.run, direction), Ordering::Greater);
            }
        }
        // Every input run appears exactly once.
        prop_assert_eq!(r.runs.len(), runs.len());
    }

    /// Whatever the policy, a run that is in the top N of its group, among its latest K,
    /// within grace, protected or unfinished is never deleted; and a deletion always names
    /// the rule that made it.
    #[test]
    fn no_policy_deletes_a_run_any_rule_keeps(
        runs in proptest::collection::vec(arb_run(), 0..40).prop_map(unique),
        p in arb_policy(),
        now in (0i64..10).prop_map(EpochMs::from_millis),
    ) {
        let Ok(r) = rank(runs.clone(), &p, now) else {
            return Ok(());
        };
        let keep = must_keep(&runs, &p, now);
        for x in r.to_delete() {
            prop_assert!(!keep.contains(&x.run.run_id), "{} deleted: {}", x.run.run_id, x.reason);
            if x.rule == Rule::Resume {
                prop_assert!(resumable(&x.run), "{}", x.reason);
                continue;
            }
            prop_assert!(matches!(x.rule, Rule::Rank | Rule::Group | Rule::Floor));
            prop_assert!(x.reason.starts_with("rank "), "{}", x.reason);
        }
        // And the rest is deleted: nothing kept that no rule keeps.
        for x in &r.runs {
            if x.rank.is_some() && !keep.contains(&x.run.run_id) {
                prop_assert_eq!(&x.decision, &Decision::Delete, "{}", x.reason);
            }
        }
        prop_assert_eq!(r.runs.len(), runs.len());
    }

    /// Pages read while MLflow is written to may repeat rows and come in any order: the
    /// ranking of such a read is the ranking of the distinct runs.
    #[test]
    fn repeated_and_reordered_pages_rank_like_the_distinct_runs(
        runs in proptest::collection::vec(arb_run(), 1..40).prop_map(unique),
        repeats in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        keep_top in 0u32..8,
        seed in any::<u64>(),
    ) {
        let p = policy(Direction::Max, keep_top);
        let mut paged = runs.clone();
        paged.extend(repeats.iter().map(|i| runs[i.index(runs.len())].clone()));
        let n = paged.len();
        for i in 0..n {
            let j = (seed as usize).wrapping_mul(i + 3) % n;
            paged.swap(i, j);
        }
        let project = |r: Result<Ranking, RankingError>| {
            r.map(|r| {
                r.runs
                    .iter()
                    .map(|x| (x.run.run_id.clone(), x.rank, x.decision.clone(), x.reason.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let ranked = rank(paged, &p, NOW);
        if let Ok(r) = &ranked {
            prop_assert_eq!(r.repeated.len(), repeats.len());
        }
        prop_assert_eq!(project(ranked), project(rank(runs, &p, NOW)));
    }
}
