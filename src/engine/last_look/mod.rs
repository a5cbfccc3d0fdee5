//! The last look before files go: the lookups here, the rules that decide in [`rules`]. The
//! planned runs (and the other runs of their shared models) read again by id, and the registry versions
//! that may point at them, found by targeted searches (`run_id IN (...)`, `source_path LIKE` the
//! experiment's artifact root in its `s3://` and `mlflow-artifacts:` forms, and `models:/<id>`
//! for each logged model) rather than a read of the whole registry: what a pass reads grows with
//! the experiment, not with the registry. The experiment is read again too, so that a change
//! of its policy tags is seen. All read-only and sent at once, within the process's adaptive limit
//! of requests in flight towards MLflow.

use std::collections::{BTreeSet, HashMap};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use super::inventory::{InventoryOptions, ModelSources};
use super::run_index::RunIndex;
use super::{Engine, PlannedDeletion, PruneError};
use crate::domain::policy::{self, PolicyOverrides, RetentionPolicy};
use crate::domain::ranking::Decision;
use crate::mlflow::{MlflowError, ModelVersion, Run, RunFields, VersionFilter};

mod rules;

pub(super) use rules::{Fresh, Keeper, Share, folder_patterns, share};

/// What the last look says of one planned deletion.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Read again just now, nothing keeps the run: its files may go.
    Stands,
    /// The run stays after all, with the decision that replaces `Delete`.
    Withdrawn(Decision),
}

impl Verdict {
    /// The verdict without its decision, as later looks weigh it.
    pub(super) fn settled(&self) -> Settled {
        match self {
            Verdict::Stands => Settled::Stands,
            Verdict::Withdrawn(_) => Settled::Withdrawn,
        }
    }
}

/// A look's verdicts, each with its run's place in the plan.
pub(super) type Verdicts = Vec<(RunIndex, Verdict)>;

/// A verdict an earlier look of the pass gave, as a later look weighs it (a sharer of a carried
/// model must be standing or gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Stands,
    Withdrawn,
}

/// Run ids per `model-versions/search` by `run_id IN (...)`: keeps the GET's URL short.
pub(super) const RUN_IDS_PER_VERSION_SEARCH: usize = 50;

/// How much a look searches the registry for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// Versions by `run_id` only: one request per 50 runs. Enough to leave out most registered
    /// runs before the safety valve counts, not enough to delete on.
    RunIds,
    /// Also every version whose source names a run or one of its logged models.
    Full,
}

/// What a pass planned, as its looks compare it with fresh reads.
pub(super) struct Planned<'a> {
    pub experiment_id: &'a str,
    pub runs: &'a [PlannedDeletion],
    pub sources: &'a HashMap<String, ModelSources>,
    pub options: &'a InventoryOptions<'a>,
    /// The request's policy overrides, to resolve the experiment's policy again.
    pub overrides: &'a PolicyOverrides,
    /// The policy the pass ranked under.
    pub policy: &'a RetentionPolicy,
    /// The runs the pass keeps by rank or as latest, read again with the planned runs of their
    /// group.
    pub keepers: &'a [Keeper],
    /// A run of the experiment was pruned before this pass.
    pub pruned_before: bool,
}

impl Engine {
    /// The last look at runs `group` of the plan (see [`rules::check`]); reads the group's runs
    /// and the other runs of their shared models again, the experiment, and the registry
    /// versions that may point at them. `settled` holds the runs of the pass an earlier look
    /// decided on.
    pub(super) async fn last_look(
        &self,
        plan: &Planned<'_>,
        group: &[RunIndex],
        settled: &HashMap<&str, Settled>,
        depth: Depth,
    ) -> Result<Verdicts, PruneError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        let (experiment_id, planned, sources, options) =
            (plan.experiment_id, plan.runs, plan.sources, plan.options);
        let runs = || group.iter().map(|at| at.of(planned));
        let mut ids: BTreeSet<&str> = runs().map(|p| p.run_id.as_str()).collect();
        ids.extend(runs().flat_map(|p| p.shared_with.values().flatten().map(String::as_str)));
        // The keepers of the look's groups are read again too: one that changed may have freed
        // a slot a planned run now deserves.
        let reread: Vec<&str> = ids
            .iter()
            .copied()
            .chain(rules::keepers_to_read(planned, group, plan.keepers))
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .collect();
        let ids: Vec<&str> = ids.into_iter().collect();
        let mut searches: Vec<VersionFilter> = ids
            .chunks(RUN_IDS_PER_VERSION_SEARCH)
            .map(VersionFilter::RunIds)
            .collect();
        let patterns = match depth {
            Depth::RunIds => BTreeSet::new(),
            Depth::Full => {
                let run_sources =
                    runs().filter_map(|p| Some((p.run_id.as_str(), sources.get(&p.run_id)?)));
                let folders = run_sources.flat_map(|(run_id, s)| {
                    let models = s
                        .logged_models
                        .iter()
                        .map(|(id, uri)| (uri.as_str(), id.as_str()));
                    std::iter::once((s.artifact_uri.as_str(), run_id)).chain(models)
                });
                let mut patterns = rules::source_patterns(folders, &self.rules);
                // `models:/<id>` sources of versions that carry neither run_id nor model_id.
                patterns.extend(runs().filter_map(|p| sources.get(&p.run_id)).flat_map(|s| {
                    s.logged_models
                        .iter()
                        .map(|(id, _)| format!("models:/{id}%"))
                }));
                patterns
            }
        };
        searches.extend(patterns.iter().map(|p| VersionFilter::SourceLike(p)));
        let params = options.params();
        let tags = options.tags();
        let fields = RunFields {
            metrics: &[options.metric],
            params: &params,
            tags: &tags,
        };
        let fresh = self.retry.run("mlflow", "runs/search", || {
            self.mlflow
                .search_runs_by_id(experiment_id, &reread, &fields)
        });
        let experiment = self.retry.run("mlflow", "experiments/get", || {
            self.mlflow.get_experiment(experiment_id)
        });
        // The reads start now: a keep tag, a version or a policy tag written before this look
        // is seen.
        let (versions, fresh, experiment) =
            tokio::try_join!(self.registry_versions(searches), fresh, experiment).map_err(
                |source| PruneError::Mlflow {
                    experiment_id: experiment_id.to_owned(),
                    cause: source,
                },
            )?;
        let policy_change = match policy::resolve(plan.overrides, &experiment.tags, &self.defaults)
        {
            Ok(now) if now == *plan.policy => None,
            Ok(now) => Some(format!("policy {} -> {now}", plan.policy)),
            Err(e) => Some(format!("policy tags now invalid: {e}")),
        };
        let runs: HashMap<&str, &Run> = fresh.iter().map(|r| (r.run_id.as_str(), r)).collect();
        let fresh = Fresh {
            keepers: plan.keepers,
            runs: &runs,
            versions: &versions,
            policy_change,
        };
        tracing::debug!(
            runs = group.len(),
            versions = versions.len(),
            ?depth,
            "looked at the planned runs and their registry versions again"
        );
        Ok(rules::check(
            planned,
            group,
            settled,
            &fresh,
            sources,
            &self.rules,
            options,
        ))
    }

    /// Every version the searches find, all in flight at once: a look's few searches (one per
    /// 50 runs and one per root pattern) are on its critical path, and the process's adaptive
    /// limit on MLflow requests ([`crate::limit`]) is what keeps the server from overload.
    pub(super) async fn registry_versions(
        &self,
        searches: Vec<VersionFilter<'_>>,
    ) -> Result<Vec<ModelVersion>, MlflowError> {
        let width = searches.len().max(1);
        let mut searches = searches.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut versions = Vec::new();
        loop {
            while in_flight.len() < width
                && let Some(filter) = searches.next()
            {
                in_flight.push(self.search_versions(filter));
            }
            match in_flight.next().await {
                Some(found) => versions.extend(found?),
                None => return Ok(versions),
            }
        }
    }

    async fn search_versions(
        &self,
        filter: VersionFilter<'_>,
    ) -> Result<Vec<ModelVersion>, MlflowError> {
        self.retry
            .run("mlflow", "model-versions/search", || {
                self.mlflow.search_model_versions(&filter)
            })
            .await
    }
}
