//! The object store (S3, MinIO, Garage) holding the model files: lists folders and deletes keys
//! in batches. The only module that talks to S3.
//!
//! # Layout
//! - `mod.rs`: [`ObjectStore`], built from [`StoreSettings`], and the result types.
//! - `list.rs`: paginated listing ([`ObjectStore::list_page`], [`ObjectStore::list`],
//!   [`ObjectStore::usage`]).
//! - `delete.rs`: [`ObjectStore::delete_objects`], one batch of keys per request.
//! - `error.rs`: [`StoreError`] and its transient/permanent classification.

mod delete;
mod error;
mod list;

use std::future::Future;
use std::ops::AddAssign;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use secrecy::ExposeSecret;

use crate::domain::classify::Classified as _;
use crate::domain::size::Bytes;
use crate::limit::{Limiter, MAX_FREE_RESENDS};
use crate::metrics::{Metrics, Target};
use crate::settings::StoreSettings;

pub use error::{Cause, Reason, StoreError};
pub use list::Page;

/// S3 caps DeleteObjects at 1000 keys per request.
pub const MAX_DELETE_BATCH: usize = 1000;

/// How much lies under a prefix (or was deleted from it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// How many objects lie under the prefix (or were deleted).
    pub objects: u64,
    /// Their total size, as the listing reported it.
    pub bytes: Bytes,
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

impl Usage {
    /// Objects and bytes of a list of objects.
    pub fn of(objects: &[ObjectInfo]) -> Self {
        Usage {
            objects: objects.len() as u64,
            bytes: objects.iter().map(|o| o.size).sum(),
        }
    }
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's full key in its bucket, e.g. `12/<run_id>/artifacts/model/MLmodel`.
    pub key: String,
    /// The object's size in bytes, as the listing reported it.
    pub size: Bytes,
}

/// A client of the S3-compatible store, cheap to clone.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    /// Keys per DeleteObjects request, 1..=1000.
    batch: usize,
    metrics: Metrics,
    /// Requests in flight towards the store, over every clone (one limit per process).
    limiter: Arc<Limiter>,
}

impl ObjectStore {
    /// Builds the client from the settings alone: static credentials, no environment or profile
    /// lookups, no SDK retries (the worker retries, and retries must not multiply).
    pub fn new(settings: &StoreSettings, metrics: &Metrics) -> Self {
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.expose_secret().to_owned(),
            None,
            None,
            "model-pruner-settings",
        );
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.force_path_style)
            // Newer SDKs add CRC32 checksums to every upload and validate them on downloads;
            // some MinIO and Garage versions reject those. DeleteObjects still gets the checksum
            // S3 requires for it (CRC32 in a header), which Garage 2.x verifies and accepts.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint.expose().as_str());
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            batch: batch_size(settings.delete_batch_size),
            metrics: metrics.clone(),
            limiter: Arc::new(Limiter::new(
                Target::Store,
                &settings.requests_in_flight,
                metrics,
            )),
        }
    }

    /// Keys per DeleteObjects request, from `store.delete_batch_size`.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Sends one request (`send` builds and sends it) under the adaptive limit and counts it.
    /// A timeout or overload answer cuts the limit; the request is then sent again at once
    /// while that slows the worker down ([`crate::limit`]), before it becomes an error.
    async fn limited<T, F, Fut>(
        &self,
        operation: &'static str,
        mut send: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut resends = 0;
        loop {
            let permit = self.limiter.acquire().await;
            let started = Instant::now();
            let result = send().await;
            let status = match &result {
                Ok(_) => Some(200),
                Err(e) => e.status(),
            };
            self.metrics
                .request(Target::Store, operation, status, started.elapsed());
            match &result {
                Err(e) if e.is_overload() => {
                    if permit.overloaded() && resends < MAX_FREE_RESENDS {
                        resends += 1;
                        self.metrics.retry(Target::Store.as_str(), e.reason());
                        tracing::warn!(
                            operation,
                            error = %e,
                            limit = self.limiter.limit(),
                            "the store is overloaded: fewer requests in flight, sending again"
                        );
                        continue;
                    }
                }
                // No answer: says nothing about the store's load (the place is freed).
                Err(e) if e.status().is_none() => {}
                _ => permit.answered(operation),
            }
            return result;
        }
    }
}

/// The deepest folder (ending in `/`) holding every key; empty for keys with nothing in common.
pub fn common_folder<'k>(keys: impl IntoIterator<Item = &'k str>) -> &'k str {
    let mut keys = keys.into_iter();
    let Some(mut common) = keys.next() else {
        return "";
    };
    for key in keys {
        let shared = common
            .char_indices()
            .zip(key.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((at, c), _)| at + c.len_utf8());
        common = &common[..shared];
    }
    common.rfind('/').map_or("", |slash| &common[..=slash])
}

/// Settings validation keeps the batch in 1..=1000; clamp anyway so a bad value cannot turn
/// into an endless loop (0) or requests S3 refuses (> 1000).
fn batch_size(configured: u16) -> usize {
    usize::from(configured).clamp(1, MAX_DELETE_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_stays_within_the_s3_limit() {
        assert_eq!(batch_size(0), 1);
        assert_eq!(batch_size(1), 1);
        assert_eq!(batch_size(250), 250);
        assert_eq!(batch_size(1000), 1000);
        assert_eq!(batch_size(5000), 1000);
    }

    #[test]
    fn the_common_folder_ends_at_a_slash() {
        assert_eq!(common_folder([]), "");
        assert_eq!(
            common_folder(["1/a/artifacts/model/f"]),
            "1/a/artifacts/model/"
        );
        assert_eq!(common_folder(["1/ab/m/f", "1/ac/m/f"]), "1/");
        assert_eq!(common_folder(["1/a/m/f", "1/a/m/g/h"]), "1/a/m/");
        assert_eq!(common_folder(["1/a", "2/a"]), "");
        assert_eq!(common_folder(["é/a/x", "é/b/x"]), "é/");
        assert_eq!(common_folder(["1/éa/x", "1/éb/x", "1/è"]), "1/");
    }

    #[test]
    fn usage_adds_up() {
        let mut total = Usage::default();
        total += Usage {
            objects: 2,
            bytes: Bytes(10),
        };
        total += Usage {
            objects: 3,
            bytes: Bytes(5),
        };
        assert_eq!(
            total,
            Usage {
                objects: 5,
                bytes: Bytes(15)
            }
        );
    }
}
