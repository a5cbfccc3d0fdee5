//! The audit's pure half: where an experiment's files live, which stored folders belong to no
//! known run or logged model, and the findings an audit reports. No I/O; `cli::audit` gathers
//! the facts.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::domain::location::{LocationError, LocationRules, ModelLocation, Owner};
use crate::domain::size::Bytes;

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
        /// Who the folder belongs to, for people: `run <id> (marked deleted)` or `logged model
        /// <id> (marked deleted)`.
        owner: String,
        /// The model folder that should be empty, as `s3://<bucket>/<prefix>`.
        location: String,
        /// Objects still stored under it.
        objects: u64,
        /// Their total size.
        bytes: Bytes,
    },
    /// An unprotected model stored beyond the top N: an `experiment.prune` repairs it.
    BeyondTopN {
        /// The MLflow run whose model a pass would delete.
        run_id: String,
        /// Why the plan deletes it (`rank 3 of 6 by accuracy max, keep_top 2`), as a pass would
        /// write in `model_pruner.reason`.
        reason: String,
        /// Objects stored under its model folders.
        objects: u64,
        /// Their total size.
        bytes: Bytes,
    },
    /// A run planned for deletion whose model folders hold no file: its model lives elsewhere
    /// (another artifact path than `model/`, or a wrong `store.artifacts_destination`). A pass
    /// reports it and never marks it; only fixing the layout or the setting helps.
    EmptyModelFolder {
        /// The MLflow run planned for deletion.
        run_id: String,
        /// Its first model folder, found empty, as `s3://<bucket>/<prefix>`.
        location: String,
    },
    /// Objects under the experiment's root that belong to no run or logged model MLflow knows.
    Orphan {
        /// The orphan folder (or loose file at the root), as `s3://<bucket>/<prefix>`.
        location: String,
        /// Objects stored under it.
        objects: u64,
        /// Their total size.
        bytes: Bytes,
        /// Tied to this experiment on this server ([`tie`]): removing it by hand is safe.
        removable: bool,
        /// What was checked, and why it is or is not removable.
        checked: String,
    },
    /// The engine could not plan a pass (bad policy, no run has the metric...).
    PlanFailed {
        /// The engine's error message.
        error: String,
    },
}

impl Finding {
    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Finding::UnfinishedDeletion { .. } => "unfinished deletion",
            Finding::BeyondTopN { .. } => "beyond top N",
            Finding::EmptyModelFolder { .. } => "empty model folder",
            Finding::Orphan {
                removable: true, ..
            } => "orphan",
            Finding::Orphan { .. } => "unverified orphan",
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
    /// Objects stored under the prefix.
    pub objects: u64,
    /// Their total size.
    pub bytes: Bytes,
    /// The run id (`<root><id>/`) or logged model id (`<root>models/<id>/`) the folder is
    /// named for; none for a loose file.
    pub named_for: Option<FolderOwner>,
}

/// What a folder under an experiment's root is named for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderOwner {
    /// A folder `<root><name>/`, named for the run id `<name>` (not checked to look like one).
    Run(String),
    /// A folder `<root>models/<id>/`, named for the logged model id `<id>`.
    LoggedModel(String),
}

/// What lies under an experiment's root besides its known runs' and models' folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Folders and loose files owned by no known run or logged model, sorted by prefix.
    pub orphans: Vec<OrphanFolder>,
    /// Known runs' and logged models' folders found under the root: the proof that the root
    /// is this experiment's on this server (and not another server's with the same ids).
    pub known_folders: usize,
}

/// What the tracking server says about the run or logged model an orphan folder is named for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnServer {
    /// No such run or logged model on this server.
    Absent,
    /// It exists, in this experiment (deleted from its lists) or another.
    In {
        /// The id of the experiment the server files it under.
        experiment_id: String,
    },
    /// The server could not be asked (no logged-models API, say).
    CannotTell(String),
}

/// MLflow's run ids are 32 lowercase hex digits (a UUID without dashes).
fn looks_like_run_id(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether an orphan folder may be removed by hand, and what was checked. It is tied to this
/// experiment on this server only when the root holds folders of the experiment's own runs or
/// models (`known_folders`: the root is this experiment's, not another server's under a wrong
/// mapping), a run folder is named like an MLflow run id (not a nested experiment's root or
/// another tool's folder), and the server has no run or logged model by that name
/// (`on_server`, asked for every named folder). Another tracking server writing under the same
/// root cannot be seen from here; the advice says so.
pub fn tie(
    orphan: &OrphanFolder,
    known_folders: usize,
    on_server: Option<&OnServer>,
    experiment_id: &str,
) -> (bool, String) {
    let refuse = |why: String| (false, format!("{why}; not safe to remove"));
    if known_folders == 0 {
        return refuse(format!(
            "no folder of experiment {experiment_id}'s runs or logged models lies beside it, so \
             nothing ties this root to this tracking server: it may hold another server's or \
             experiment's files (check store.artifacts_destination and store.endpoint)"
        ));
    }
    let what = match &orphan.named_for {
        Some(FolderOwner::Run(id)) if !looks_like_run_id(id) => {
            return refuse(format!(
                "{id:?} is not named like an MLflow run id: it may be another experiment's root \
                 or another tool's folder"
            ));
        }
        Some(FolderOwner::Run(id)) => format!("run {id}"),
        Some(FolderOwner::LoggedModel(id)) => format!("logged model {id}"),
        None => String::new(),
    };
    match on_server {
        Some(OnServer::In {
            experiment_id: other,
        }) => refuse(format!(
            "the tracking server has {what} in experiment {other}"
        )),
        Some(OnServer::CannotTell(why)) => refuse(format!("cannot ask about {what}: {why}")),
        Some(OnServer::Absent) | None => {
            let asked = if what.is_empty() {
                String::new()
            } else {
                format!("the tracking server has no {what}; ")
            };
            (
                true,
                format!(
                    "{asked}{known_folders} folders of experiment {experiment_id}'s runs and \
                     models lie beside it under the same root (assuming no other tracking \
                     server writes there)"
                ),
            )
        }
    }
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
/// (`<root><run_id>/`) nor in a known logged model's (`<root>models/<model_id>/`), by folder,
/// and counts the known folders found.
pub fn orphans<'a>(
    root: &str,
    objects: impl IntoIterator<Item = (&'a str, Bytes)>,
    run_ids: &HashSet<&str>,
    model_ids: &HashSet<&str>,
) -> Stray {
    let mut folders: BTreeMap<String, (u64, Bytes, Option<FolderOwner>)> = BTreeMap::new();
    let mut known = HashSet::new();
    for (key, size) in objects {
        let Some(rest) = key.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (folder, named_for) = match parts.as_slice() {
            // A file lying directly at the root or directly in models/.
            [_] | [MODELS_FOLDER, _] => (key.to_owned(), None),
            [MODELS_FOLDER, id, ..] if model_ids.contains(id) => {
                known.insert(format!("{MODELS_FOLDER}/{id}"));
                continue;
            }
            [MODELS_FOLDER, id, ..] => (
                format!("{root}{MODELS_FOLDER}/{id}/"),
                Some(FolderOwner::LoggedModel((*id).to_owned())),
            ),
            [run, ..] if run_ids.contains(run) => {
                known.insert((*run).to_owned());
                continue;
            }
            [first, ..] => (
                format!("{root}{first}/"),
                Some(FolderOwner::Run((*first).to_owned())),
            ),
            [] => continue,
        };
        let entry = folders.entry(folder).or_insert((0, Bytes(0), named_for));
        entry.0 += 1;
        entry.1 += size;
    }
    Stray {
        orphans: folders
            .into_iter()
            .map(|(prefix, (objects, bytes, named_for))| OrphanFolder {
                prefix,
                objects,
                bytes,
                named_for,
            })
            .collect(),
        known_folders: known.len(),
    }
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
        let stray = orphans("12/", objects.map(|(k, n)| (k, Bytes(n))), &runs, &models);
        assert!(stray.orphans.is_empty());
        assert_eq!(stray.known_folders, 2);
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
        let found = orphans("12/", objects.map(|(k, n)| (k, Bytes(n))), &runs, &models);
        assert_eq!(found.known_folders, 1);
        assert_eq!(
            found.orphans[2].named_for,
            Some(FolderOwner::Run("r2".into()))
        );
        let summary: Vec<_> = found
            .orphans
            .iter()
            .map(|o| (o.prefix.as_str(), o.objects, o.bytes.0))
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
            [("1/models/m-9/x", Bytes(1))],
            &HashSet::new(),
            &HashSet::from(["m-1"]),
        );
        assert_eq!(found.orphans[0].prefix, "1/models/m-9/");
    }

    #[test]
    fn only_beyond_top_n_is_fixed_by_a_prune() {
        let beyond = Finding::BeyondTopN {
            run_id: "r".into(),
            reason: "rank 3".into(),
            objects: 1,
            bytes: Bytes(1),
        };
        let orphan = Finding::Orphan {
            location: "s3://mlflow/1/x/".into(),
            objects: 1,
            bytes: Bytes(1),
            removable: true,
            checked: String::new(),
        };
        assert!(beyond.fixed_by_prune());
        assert!(!orphan.fixed_by_prune());
    }

    #[test]
    fn an_orphan_is_removable_only_beside_known_folders_and_unknown_to_the_server() {
        let run = "0123456789abcdef0123456789abcdef";
        let orphan = OrphanFolder {
            prefix: format!("1/{run}/"),
            objects: 1,
            bytes: Bytes(1),
            named_for: Some(FolderOwner::Run(run.into())),
        };
        let (removable, checked) = tie(&orphan, 0, Some(&OnServer::Absent), "1");
        assert!(!removable);
        assert!(checked.contains("store.artifacts_destination"), "{checked}");
        let elsewhere = OnServer::In {
            experiment_id: "7".into(),
        };
        let (removable, checked) = tie(&orphan, 3, Some(&elsewhere), "1");
        assert!(!removable);
        assert!(checked.contains("experiment 7"), "{checked}");
        let unknown = OnServer::CannotTell("no logged-models API".into());
        assert!(!tie(&orphan, 3, Some(&unknown), "1").0);
        let (removable, checked) = tie(&orphan, 3, Some(&OnServer::Absent), "1");
        assert!(removable);
        assert!(checked.contains(&format!("no run {run}")), "{checked}");
        assert!(checked.contains("3 folders"), "{checked}");

        // A nested experiment's root, or a folder of another tool, is never a run's.
        let nested = OrphanFolder {
            prefix: "1/B/".into(),
            named_for: Some(FolderOwner::Run("B".into())),
            ..orphan
        };
        let (removable, checked) = tie(&nested, 3, Some(&OnServer::Absent), "1");
        assert!(!removable, "{checked}");
    }
}
