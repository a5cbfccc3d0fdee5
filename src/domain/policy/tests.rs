use super::*;

fn defaults() -> PolicyDefaults {
    PolicyDefaults {
        metric: "accuracy".into(),
        direction: Direction::Max,
        keep_top: 10,
        max_deletions_per_pass: 50,
        keep_latest: 0,
        grace: None,
        group_by: None,
        min_metric: None,
        max_metric: None,
        older_than: None,
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_experiment_opts_in_with_any_policy_tag_and_only_those() {
    assert!(opted_in(&tags(&[(TAG_KEEP_TOP, "3")])));
    assert!(opted_in(&tags(&[(TAG_GRACE, "2h"), ("team", "nlp")])));
    assert!(!opted_in(&tags(&[
        ("team", "nlp"),
        ("model_pruner.other", "x")
    ])));
    assert!(!opted_in(&BTreeMap::new()));
}

#[test]
fn origins_name_the_source_of_each_field_in_resolve_order() {
    let event = PolicyOverrides {
        keep_top: Some(3),
        metric: Some("loss".into()),
        ..Default::default()
    };
    let tags = tags(&[(TAG_METRIC, "f1"), (TAG_DIRECTION, "min")]);
    let found = origins(&event, &tags);
    assert_eq!(found[&PolicySource::Event], ["metric", "keep_top"]);
    assert_eq!(found[&PolicySource::ExperimentTag], ["direction"]);
    assert_eq!(found[&PolicySource::Settings].len(), 6);
    let none = origins(&PolicyOverrides::default(), &BTreeMap::new());
    assert_eq!(none.keys().collect::<Vec<_>>(), [&PolicySource::Settings]);
}

#[test]
fn settings_apply_when_nothing_overrides() {
    let p = resolve(&PolicyOverrides::default(), &tags(&[]), &defaults()).unwrap();
    assert_eq!(p, RetentionPolicy::top("accuracy", Direction::Max, 10));
}

#[test]
fn tags_override_settings_and_event_overrides_tags_field_by_field() {
    let t = tags(&[
        (TAG_METRIC, "loss"),
        (TAG_DIRECTION, "min"),
        (TAG_KEEP_TOP, "3"),
    ]);
    let event = PolicyOverrides {
        keep_top: Some(1),
        ..Default::default()
    };
    let p = resolve(&event, &t, &defaults()).unwrap();
    assert_eq!(p.metric, "loss");
    assert_eq!(p.direction, Direction::Min);
    assert_eq!(p.keep_top, 1);
}

#[test]
fn keep_top_zero_is_valid() {
    let event = PolicyOverrides {
        keep_top: Some(0),
        ..Default::default()
    };
    assert_eq!(
        resolve(&event, &tags(&[]), &defaults()).unwrap().keep_top,
        0
    );
}

#[test]
fn direction_is_case_insensitive() {
    let p = resolve(
        &PolicyOverrides::default(),
        &tags(&[(TAG_DIRECTION, " MIN ")]),
        &defaults(),
    )
    .unwrap();
    assert_eq!(p.direction, Direction::Min);
}

#[test]
fn negative_keep_top_in_event_names_the_event() {
    let event = PolicyOverrides {
        keep_top: Some(-1),
        ..Default::default()
    };
    let err = resolve(&event, &tags(&[]), &defaults()).unwrap_err();
    assert_eq!(err.field, "keep_top");
    assert_eq!(err.origin, PolicySource::Event);
    assert!(err.to_string().contains("the event's policy"), "{err}");
}

#[test]
fn unknown_direction_in_tag_names_the_tag() {
    let err = resolve(
        &PolicyOverrides::default(),
        &tags(&[(TAG_DIRECTION, "up")]),
        &defaults(),
    )
    .unwrap_err();
    assert_eq!(err.field, "direction");
    assert_eq!(err.origin, PolicySource::ExperimentTag);
    assert!(err.to_string().contains("\"up\""), "{err}");
}

#[test]
fn non_numeric_keep_top_tag_is_rejected() {
    let err = resolve(
        &PolicyOverrides::default(),
        &tags(&[(TAG_KEEP_TOP, "ten")]),
        &defaults(),
    )
    .unwrap_err();
    assert_eq!(err.origin, PolicySource::ExperimentTag);
}

#[test]
fn empty_metric_from_event_is_rejected_even_if_tag_is_fine() {
    let event = PolicyOverrides {
        metric: Some("  ".into()),
        ..Default::default()
    };
    let err = resolve(&event, &tags(&[(TAG_METRIC, "loss")]), &defaults()).unwrap_err();
    assert_eq!(err.field, "metric");
    assert_eq!(err.origin, PolicySource::Event);
}

#[test]
fn the_new_rules_are_off_unless_set() {
    let p = resolve(&PolicyOverrides::default(), &tags(&[]), &defaults()).unwrap();
    assert_eq!(p.to_string(), "accuracy max, keep_top 10");
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        serde_json::json!({"metric": "accuracy", "direction": "max", "keep_top": 10, "keep_latest": 0})
    );
}

#[test]
fn every_rule_resolves_from_tags_and_shows_in_the_policy() {
    let t = tags(&[
        (TAG_KEEP_LATEST, "2"),
        (TAG_GRACE, "20s"),
        (TAG_GROUP_BY, "params.base_model"),
        (TAG_MIN_METRIC, "0.5"),
        (TAG_MAX_METRIC, "0.99"),
        (TAG_OLDER_THAN, "30days"),
    ]);
    let p = resolve(&PolicyOverrides::default(), &t, &defaults()).unwrap();
    assert_eq!(p.keep_latest, 2);
    assert_eq!(p.grace, Some(Duration::from_secs(20)));
    assert_eq!(p.group_by, Some(GroupKey::Param("base_model".into())));
    assert_eq!((p.min_metric, p.max_metric), (Some(0.5), Some(0.99)));
    assert_eq!(p.older_than, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(
        p.to_string(),
        "accuracy max, keep_top 10 per params.base_model, keep_latest 2, min_metric 0.5, \
         max_metric 0.99, grace 20s, older_than 30days"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["grace"], "20s");
    assert_eq!(json["group_by"], "params.base_model");
}

#[test]
fn the_event_overrides_the_rules_and_can_turn_them_off() {
    let t = tags(&[
        (TAG_GRACE, "1h"),
        (TAG_GROUP_BY, "tags.dataset"),
        (TAG_OLDER_THAN, "7d"),
        (TAG_MIN_METRIC, "0.5"),
    ]);
    let event = PolicyOverrides {
        grace: Some("0s".into()),
        group_by: Some(String::new()),
        older_than: Some("0".into()),
        keep_latest: Some(3),
        ..Default::default()
    };
    let p = resolve(&event, &t, &defaults()).unwrap();
    assert_eq!((p.grace, p.group_by, p.older_than), (None, None, None));
    assert_eq!(p.keep_latest, 3);
    assert_eq!(p.min_metric, Some(0.5));
}

#[test]
fn the_settings_rules_apply_when_nothing_overrides() {
    let d = PolicyDefaults {
        grace: Some(Duration::from_secs(120)),
        group_by: Some("tags.`data set`".into()),
        keep_latest: 1,
        ..defaults()
    };
    let p = resolve(&PolicyOverrides::default(), &tags(&[]), &d).unwrap();
    assert_eq!(p.grace, Some(Duration::from_secs(120)));
    assert_eq!(p.group_by, Some(GroupKey::Tag("data set".into())));
    assert_eq!(p.group_by.unwrap().to_string(), "tags.`data set`");
    assert_eq!(p.keep_latest, 1);
}

#[test]
fn bad_rule_values_name_the_field_value_and_source() {
    let cases: [(&str, &str, &str); 8] = [
        (TAG_GRACE, "soon", "grace"),
        (TAG_GRACE, "91d", "grace"),
        (TAG_OLDER_THAN, "-1d", "older_than"),
        (TAG_GROUP_BY, "base_model", "group_by"),
        (TAG_GROUP_BY, "metrics.loss", "group_by"),
        (TAG_GROUP_BY, "params.", "group_by"),
        (TAG_MIN_METRIC, "NaN", "min_metric"),
        (TAG_KEEP_LATEST, "-2", "keep_latest"),
    ];
    for (tag, value, field) in cases {
        let err = resolve(
            &PolicyOverrides::default(),
            &tags(&[(tag, value)]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(
            (err.field, err.origin),
            (field, PolicySource::ExperimentTag),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
    }
    let event = PolicyOverrides {
        keep_latest: Some(-1),
        ..Default::default()
    };
    let err = resolve(&event, &tags(&[]), &defaults()).unwrap_err();
    assert_eq!(
        (err.field, err.origin),
        ("keep_latest", PolicySource::Event)
    );
}

#[test]
fn a_floor_whose_min_is_above_its_max_is_rejected() {
    let event = PolicyOverrides {
        min_metric: Some(0.9),
        ..Default::default()
    };
    let err = resolve(&event, &tags(&[(TAG_MAX_METRIC, "0.5")]), &defaults()).unwrap_err();
    assert_eq!(err.field, "max_metric");
    assert!(err.to_string().contains("min_metric 0.9"), "{err}");
}

#[test]
fn group_keys_read_like_mlflow_search() {
    let parse = |s: &str| s.parse::<GroupKey>();
    assert_eq!(parse("params.lr"), Ok(GroupKey::Param("lr".into())));
    assert_eq!(parse("param.lr"), Ok(GroupKey::Param("lr".into())));
    assert_eq!(parse("tags.`my tag`"), Ok(GroupKey::Tag("my tag".into())));
    assert_eq!(parse(" tag.x.y "), Ok(GroupKey::Tag("x.y".into())));
    assert!(parse("attributes.status").is_err());
    assert!(parse("lr").is_err());
}

#[test]
fn overrides_are_checked_on_their_own() {
    let defaults = defaults();
    let with = |o: PolicyOverrides| check_overrides(&o, &defaults);
    assert!(with(PolicyOverrides::default()).is_ok());
    let grace = with(PolicyOverrides {
        grace: Some("2".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!((grace.field, grace.origin), ("grace", PolicySource::Event));
    let group = with(PolicyOverrides {
        group_by: Some("base_model".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(group.field, "group_by");
    assert!(
        with(PolicyOverrides {
            min_metric: Some(0.9),
            max_metric: Some(0.1),
            ..Default::default()
        })
        .is_err()
    );
    // A floor the settings set does not count against the event's: tags may replace it.
    let strict = PolicyDefaults {
        max_metric: Some(0.1),
        ..defaults.clone()
    };
    let o = PolicyOverrides {
        min_metric: Some(0.5),
        ..Default::default()
    };
    assert!(check_overrides(&o, &strict).is_ok());
}
