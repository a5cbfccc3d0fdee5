//! The audit's pure half: where an experiment's files live, which stored folders belong to no
//! known run or logged model, and the findings an audit reports. No I/O; `cli::audit` gathers
//! the facts.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::domain::location::{LocationError, LocationRules, ModelLocation, Owner};

/// Folder of the logged models under an experiment's root (`<root>/models/<model_id>/`).
pub const MODELS_FOLDER: &str = "models";

/// Something about an experiment that needs an operator's attention.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A run or logged model is marked deleted but files remain under its model folder: a
    /// deletion that did not finish, or files written back after it. The engine skips marked
    /// runs, so only a manual deletion repairs this.
    UnfinishedDeletion {
        owner: String,
        location: String,
        objects: u64,
        bytes: u64,
    },
    /// An unprotected model stored beyond the top N: an `experiment.prune` repairs it.
    BeyondTopN {
        run_id: String,
        reason: String,
        objects: u64,
        bytes: u64,
    },
    /// A run planned for deletion whose model folders hold no file: its model lives elsewhere
    /// (another artifact path than `model/`, or a wrong `store.artifacts_destination`). A pass
    /// reports it and never marks it; only fixing the layout or the setting helps.
    EmptyModelFolder { run_id: String, location: String },
    /// Objects under the experiment's root that belong to no run or logged model MLflow knows.
    Orphan {
        location: String,
        objects: u64,
        bytes: u64,
    },
    /// The engine could not plan a pass (bad policy, no run has the metric...).
    PlanFailed { error: String },
}

impl Finding {
    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Finding::UnfinishedDeletion { .. } => "unfinished deletion",
            Finding::BeyondTopN { .. } => "beyond top N",
            Finding::EmptyModelFolder { .. } => "empty model folder",
            Finding::Orphan { .. } => "orphan",
            Finding::PlanFailed { .. } => "plan failed",
        }
    }

    /// Whether publishing `experiment.prune` repairs it.
    pub fn fixed_by_prune(&self) -> bool {
        matches!(self, Finding::BeyondTopN { .. })
    }
}

/// Objects and bytes under one folder nobody owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanFolder {
    /// Key prefix, ending with `/` (or a whole key for a file lying directly at the root).
    pub prefix: String,
    pub objects: u64,
    pub bytes: u64,
}

/// The folder holding every file of the experiment, from its `artifact_location`
/// (`s3://mlflow/12`, `mlflow-artifacts:/12`), under the same rules as model locations: an
/// unsupported scheme, a bucket not allowed or the bucket's root is refused.
pub fn experiment_root(
    rules: &LocationRules,
    artifact_location: &str,
) -> Result<ModelLocation, LocationError> {
    // The last path segment stands in for the owner: the root must be a folder of its own.
    let last = artifact_location
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    rules.resolve(artifact_location, "", Owner::Run(last))
}

/// Groups the objects under `root` (keys and sizes) that are neither in a known run's folder
/// (`<root><run_id>/`) nor in a known logged model's (`<root>models/<model_id>/`), by folder.
pub fn orphans<'a>(
    root: &str,
    objects: impl IntoIterator<Item = (&'a str, u64)>,
    run_ids: &HashSet<&str>,
    model_ids: &HashSet<&str>,
) -> Vec<OrphanFolder> {
    let mut folders: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (key, size) in objects {
        let Some(rest) = key.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let folder = match parts.as_slice() {
            // A file directly under the root, or directly in its models folder.
            [_] | [MODELS_FOLDER, _] => key.to_owned(),
            [MODELS_FOLDER, id, ..] if model_ids.contains(id) => continue,
            [MODELS_FOLDER, id, ..] => format!("{root}{MODELS_FOLDER}/{id}/"),
            [run, ..] if run_ids.contains(run) => continue,
            [first, ..] => format!("{root}{first}/"),
            [] => continue,
        };
        let entry = folders.entry(folder).or_default();
        entry.0 += 1;
        entry.1 += size;
    }
    folders
        .into_iter()
        .map(|(prefix, (objects, bytes))| OrphanFolder {
            prefix,
            objects,
            bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LocationRules {
        LocationRules {
            allowed_buckets: vec!["mlflow".into()],
            artifacts_destination: url::Url::parse("s3://mlflow").unwrap(),
        }
    }

    #[test]
    fn experiment_root_from_s3_and_proxied_locations() {
        let root = experiment_root(&rules(), "s3://mlflow/12").unwrap();
        assert_eq!(root.to_string(), "s3://mlflow/12/");
        let root = experiment_root(&rules(), "mlflow-artifacts:/12/").unwrap();
        assert_eq!(root.to_string(), "s3://mlflow/12/");
    }

    #[test]
    fn experiment_root_refuses_a_whole_bucket_or_a_foreign_one() {
        assert!(experiment_root(&rules(), "s3://mlflow").is_err());
        assert!(experiment_root(&rules(), "s3://mlflow/").is_err());
        assert!(experiment_root(&rules(), "s3://other/12").is_err());
        assert!(experiment_root(&rules(), "file:///tmp/12").is_err());
    }

    #[test]
    fn known_run_and_model_folders_are_not_orphans() {
        let runs = HashSet::from(["r1"]);
        let models = HashSet::from(["m-1"]);
        let objects = [
            ("12/r1/artifacts/model/a.bin", 3),
            ("12/models/m-1/artifacts/b.bin", 4),
        ];
        assert!(orphans("12/", objects, &runs, &models).is_empty());
    }

    #[test]
    fn unknown_folders_are_grouped_with_their_counts() {
        let runs = HashSet::from(["r1"]);
        let models = HashSet::from(["m-1"]);
        let objects = [
            ("12/r2/artifacts/a.bin", 3),
            ("12/r2/artifacts/b.bin", 4),
            ("12/models/m-2/artifacts/c.bin", 5),
            ("12/stray.txt", 1),
            ("12/models/loose.txt", 2),
            ("12/r1/artifacts/kept.bin", 9),
            ("13/r9/elsewhere.bin", 9),
        ];
        let found = orphans("12/", objects, &runs, &models);
        let summary: Vec<_> = found
            .iter()
            .map(|o| (o.prefix.as_str(), o.objects, o.bytes))
            .collect();
        assert_eq!(
            summary,
            [
                ("12/models/loose.txt", 1, 2),
                ("12/models/m-2/", 1, 5),
                ("12/r2/", 2, 7),
                ("12/stray.txt", 1, 1),
            ]
        );
    }

    #[test]
    fn a_run_id_equal_to_models_does_not_hide_model_folders() {
        // Run ids are hex, so `models` never collides; known model ids still decide.
        let found = orphans(
            "1/",
            [("1/models/m-9/x", 1)],
            &HashSet::new(),
            &HashSet::from(["m-1"]),
        );
        assert_eq!(found[0].prefix, "1/models/m-9/");
    }

    #[test]
    fn only_beyond_top_n_is_fixed_by_a_prune() {
        let beyond = Finding::BeyondTopN {
            run_id: "r".into(),
            reason: "rank 3".into(),
            objects: 1,
            bytes: 1,
        };
        let orphan = Finding::Orphan {
            location: "s3://mlflow/1/x/".into(),
            objects: 1,
            bytes: 1,
        };
        assert!(beyond.fixed_by_prune());
        assert!(!orphan.fixed_by_prune());
    }
}
