//! Where a model's files live: artifact URIs resolved to a bucket and a key prefix, refused when
//! they point anywhere the pruner must not delete.

use std::fmt;

use url::Url;

/// A folder of one model in the object store. `prefix` always ends with `/`, so listing it
/// never matches a sibling whose name merely starts the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ModelLocation {
    /// The bucket, one of `store.allowed_buckets` once resolved.
    pub bucket: String,
    /// The folder's key prefix in the bucket, without a leading `/` and ending with `/`
    /// (`12/<run_id>/artifacts/model/`).
    pub prefix: String,
}

impl fmt::Display for ModelLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// An artifact URI the pruner refuses to delete under; nothing is deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// The URI is neither `s3://` nor `mlflow-artifacts:` (a local path, `gs://`...).
    #[error("artifact URI {uri:?} is not supported (only s3:// and mlflow-artifacts:/ are)")]
    UnsupportedScheme {
        /// The artifact URI, as MLflow gave it.
        uri: String,
    },
    /// The URI (or `store.artifacts_destination` it maps through) cannot be read as a place.
    #[error("artifact URI {uri:?} is malformed: {reason}")]
    Malformed {
        /// The artifact URI, as MLflow gave it.
        uri: String,
        /// What is wrong with it (`no bucket name`, `relative path segments`...).
        reason: &'static str,
    },
    /// The URI points into a bucket deletion may not touch.
    #[error("artifact URI {uri:?} is in bucket {bucket:?}, which is not in store.allowed_buckets")]
    BucketNotAllowed {
        /// The artifact URI, as MLflow gave it.
        uri: String,
        /// The bucket it resolves to.
        bucket: String,
    },
    /// The folder does not name its owner's id, so it could hold other runs' or models' files.
    #[error(
        "artifact URI {uri:?} resolves to prefix {prefix:?}, which is not inside the folder of \
         {owner} (it could cover other runs' or models' files)"
    )]
    TooBroad {
        /// The artifact URI, as MLflow gave it.
        uri: String,
        /// The key prefix it resolves to (empty for a bucket's root).
        prefix: String,
        /// The run or logged model it should belong to (`run <id>`, `logged model <id>`).
        owner: String,
    },
}

/// Resolves artifact URIs under the configured rules.
#[derive(Debug, Clone)]
pub struct LocationRules {
    /// Buckets deletion may touch.
    pub allowed_buckets: Vec<String>,
    /// Where `mlflow-artifacts:/x` lives: `s3://bucket[/root]`.
    pub artifacts_destination: Url,
}

/// What a location belongs to; its id must appear as a whole folder name in the prefix.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// A run, by its MLflow run id.
    Run(&'a str),
    /// An MLflow 3 logged model, by its model id (`m-...`).
    LoggedModel(&'a str),
}

impl Owner<'_> {
    fn id(&self) -> &str {
        match self {
            Owner::Run(id) | Owner::LoggedModel(id) => id,
        }
    }
}

impl fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Run(id) => write!(f, "run {id}"),
            Owner::LoggedModel(id) => write!(f, "logged model {id}"),
        }
    }
}

impl LocationRules {
    /// The folder `sub_path` (e.g. `model`, or empty) below artifact URI `uri` of `owner`.
    pub fn resolve(
        &self,
        uri: &str,
        sub_path: &str,
        owner: Owner<'_>,
    ) -> Result<ModelLocation, LocationError> {
        let Place { bucket, segments } = self.place(uri, sub_path)?;
        if !self.allowed_buckets.contains(&bucket) {
            return Err(LocationError::BucketNotAllowed {
                uri: uri.to_owned(),
                bucket,
            });
        }
        let prefix = if segments.is_empty() {
            String::new()
        } else {
            format!("{}/", segments.join("/"))
        };
        let id = owner.id();
        if id.is_empty() || id.contains('/') || !segments.iter().any(|s| s == id) {
            return Err(LocationError::TooBroad {
                uri: uri.to_owned(),
                prefix,
                owner: owner.to_string(),
            });
        }
        Ok(ModelLocation { bucket, prefix })
    }

    /// Where `uri` (then `sub_path` below it) is in the store, `mlflow-artifacts:` mapped
    /// through the destination, without the checks deletion needs: for comparing locations.
    pub fn place(&self, uri: &str, sub_path: &str) -> Result<Place, LocationError> {
        let malformed = |reason| LocationError::Malformed {
            uri: uri.to_owned(),
            reason,
        };
        let (bucket, key) = if let Some(rest) = uri.strip_prefix("s3://") {
            split_bucket(rest).ok_or_else(|| malformed("no bucket name"))?
        } else if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
            // Both mlflow-artifacts:/path and mlflow-artifacts://host:port/path occur.
            let path = match rest.strip_prefix("//") {
                Some(authority_and_path) => authority_and_path
                    .find('/')
                    .map(|i| &authority_and_path[i..])
                    .unwrap_or(""),
                None => rest,
            };
            let dest = self.artifacts_destination.as_str();
            let dest = dest
                .strip_prefix("s3://")
                .ok_or_else(|| malformed("store.artifacts_destination is not an s3:// URL"))?;
            let (bucket, root) =
                split_bucket(dest).ok_or_else(|| malformed("no bucket in destination"))?;
            (bucket, format!("{root}/{path}"))
        } else {
            return Err(LocationError::UnsupportedScheme {
                uri: uri.to_owned(),
            });
        };
        let mut segments = Vec::new();
        for segment in key.split('/').chain(sub_path.split('/')) {
            match segment {
                "" => {}
                "." | ".." => return Err(malformed("relative path segments")),
                s => segments.push(s.to_owned()),
            }
        }
        Ok(Place { bucket, segments })
    }
}

/// A place in the store: a bucket and the key's folder names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The bucket, whether allowed or not.
    pub bucket: String,
    /// The key's folder names in order, `sub_path`'s included and empty ones dropped
    /// (`["12", "<run_id>", "artifacts", "model"]`).
    pub segments: Vec<String>,
}

impl Place {
    /// One place contains the other (same bucket, one's folders start the other's): files
    /// under one may be files under the other.
    pub fn overlaps(&self, other: &Place) -> bool {
        let n = self.segments.len().min(other.segments.len());
        self.bucket == other.bucket && self.segments[..n] == other.segments[..n]
    }
}

fn split_bucket(rest: &str) -> Option<(String, String)> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LocationRules {
        LocationRules {
            allowed_buckets: vec!["mlflow".into(), "models".into()],
            artifacts_destination: Url::parse("s3://mlflow").unwrap(),
        }
    }

    fn loc(bucket: &str, prefix: &str) -> ModelLocation {
        ModelLocation {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn places_overlap_when_one_contains_the_other() {
        let r = rules();
        let run = r.place("mlflow-artifacts:/12/abc/artifacts", "").unwrap();
        let model = r.place("s3://mlflow/12/abc/artifacts/model", "").unwrap();
        let sibling = r.place("s3://mlflow/12/abcd/artifacts", "").unwrap();
        let other_bucket = r.place("s3://models/12/abc/artifacts", "").unwrap();
        let experiment = r.place("s3://mlflow/12/", "").unwrap();
        assert!(run.overlaps(&model) && model.overlaps(&run));
        assert!(experiment.overlaps(&model));
        assert!(!run.overlaps(&sibling));
        assert!(!run.overlaps(&other_bucket));
        assert!(r.place("gs://mlflow/12", "").is_err());
    }

    #[test]
    fn classic_run_model_folder_under_s3() {
        let l = rules()
            .resolve("s3://mlflow/12/abc/artifacts", "model", Owner::Run("abc"))
            .unwrap();
        assert_eq!(l, loc("mlflow", "12/abc/artifacts/model/"));
        assert_eq!(l.to_string(), "s3://mlflow/12/abc/artifacts/model/");
    }

    #[test]
    fn logged_model_artifacts_under_s3() {
        let l = rules()
            .resolve(
                "s3://mlflow/12/models/m-1f/artifacts",
                "",
                Owner::LoggedModel("m-1f"),
            )
            .unwrap();
        assert_eq!(l, loc("mlflow", "12/models/m-1f/artifacts/"));
    }

    #[test]
    fn trailing_and_double_slashes_are_normalised() {
        let l = rules()
            .resolve(
                "s3://mlflow//12/abc/artifacts/",
                "/model/",
                Owner::Run("abc"),
            )
            .unwrap();
        assert_eq!(l, loc("mlflow", "12/abc/artifacts/model/"));
    }

    #[test]
    fn mlflow_artifacts_maps_through_the_destination() {
        let l = rules()
            .resolve(
                "mlflow-artifacts:/12/abc/artifacts",
                "model",
                Owner::Run("abc"),
            )
            .unwrap();
        assert_eq!(l, loc("mlflow", "12/abc/artifacts/model/"));
    }

    #[test]
    fn mlflow_artifacts_with_authority_maps_through_the_destination() {
        let l = rules()
            .resolve(
                "mlflow-artifacts://tracking:5000/12/abc/artifacts",
                "model",
                Owner::Run("abc"),
            )
            .unwrap();
        assert_eq!(l, loc("mlflow", "12/abc/artifacts/model/"));
    }

    #[test]
    fn destination_with_a_root_folder_is_prepended() {
        let mut r = rules();
        r.artifacts_destination = Url::parse("s3://models/mlartifacts").unwrap();
        let l = r
            .resolve(
                "mlflow-artifacts:/3/models/m-9/artifacts",
                "",
                Owner::LoggedModel("m-9"),
            )
            .unwrap();
        assert_eq!(l, loc("models", "mlartifacts/3/models/m-9/artifacts/"));
    }

    #[test]
    fn other_schemes_are_refused() {
        for uri in [
            "file:///tmp/mlruns/1/abc/artifacts",
            "gs://mlflow/1/abc/artifacts",
            "wasbs://c@a.blob.core.windows.net/1/abc",
            "/local/1/abc/artifacts",
            "S3://mlflow/1/abc/artifacts",
            "",
        ] {
            assert!(
                matches!(
                    rules().resolve(uri, "model", Owner::Run("abc")),
                    Err(LocationError::UnsupportedScheme { .. })
                ),
                "{uri}"
            );
        }
    }

    #[test]
    fn buckets_outside_the_allowed_list_are_refused() {
        let err = rules()
            .resolve("s3://foreign/1/abc/artifacts", "model", Owner::Run("abc"))
            .unwrap_err();
        assert!(
            matches!(err, LocationError::BucketNotAllowed { ref bucket, .. } if bucket == "foreign")
        );
        assert!(err.to_string().contains("allowed_buckets"));
    }

    #[test]
    fn bucket_names_must_match_exactly() {
        assert!(
            rules()
                .resolve(
                    "s3://mlflow-old/1/abc/artifacts",
                    "model",
                    Owner::Run("abc")
                )
                .is_err()
        );
    }

    #[test]
    fn prefixes_that_do_not_contain_the_owner_folder_are_refused() {
        for uri in [
            "s3://mlflow",
            "s3://mlflow/",
            "s3://mlflow/12",
            "s3://mlflow/12/",
            "s3://mlflow/12/other/artifacts",
            "s3://mlflow/12/abcd/artifacts",
            "mlflow-artifacts:/",
        ] {
            assert!(
                matches!(
                    rules().resolve(uri, "", Owner::Run("abc")),
                    Err(LocationError::TooBroad { .. })
                ),
                "{uri}"
            );
        }
    }

    #[test]
    fn empty_bucket_is_malformed() {
        assert!(matches!(
            rules().resolve("s3:///12/abc", "", Owner::Run("abc")),
            Err(LocationError::Malformed { .. })
        ));
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(matches!(
            rules().resolve("s3://mlflow/12/abc/../../", "", Owner::Run("abc")),
            Err(LocationError::Malformed { .. })
        ));
    }

    #[test]
    fn empty_owner_id_is_refused() {
        assert!(
            rules()
                .resolve("s3://mlflow/12/abc/artifacts", "", Owner::Run(""))
                .is_err()
        );
    }

    #[test]
    fn non_s3_destination_is_reported() {
        let mut r = rules();
        r.artifacts_destination = Url::parse("file:///tmp/artifacts").unwrap();
        assert!(matches!(
            r.resolve(
                "mlflow-artifacts:/1/abc/artifacts",
                "model",
                Owner::Run("abc")
            ),
            Err(LocationError::Malformed { .. })
        ));
    }
}
