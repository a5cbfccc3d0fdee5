//! Deleting a prefix: list a page, delete it in DeleteObjects batches while the next page is
//! being listed. At most two pages (2000 keys) are held, whatever the size of the prefix.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::error::{Reason, is_already_gone, is_transient_code};
use super::list::Listing;
use super::{ObjectInfo, ObjectStore, StoreError, Usage};
use crate::domain::classify::ErrorClass;

const DELETE: &str = "DeleteObjects";

impl ObjectStore {
    /// Deletes every object under `prefix` (used as given; callers pass a trailing `/`) and
    /// returns what was deleted. Keys that vanish meanwhile count as deleted, so deleting a
    /// prefix again succeeds with nothing deleted. An empty prefix is refused.
    #[tracing::instrument(
        name = "store.delete_prefix",
        skip_all,
        fields(bucket = %bucket, prefix = %prefix),
        err(level = "warn")
    )]
    pub async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<Usage, StoreError> {
        if prefix.is_empty() {
            return Err(StoreError::new(DELETE, bucket, prefix, Reason::EmptyPrefix));
        }
        let mut listing = Listing::new(self, bucket, prefix);
        let mut deleted = Usage::default();
        let mut page = listing.next().await?;
        while let Some(objects) = page {
            // The continuation token points past this page's keys, so deleting them while the
            // next page is listed does not disturb the listing.
            let (next, done) =
                tokio::join!(listing.next(), self.delete_page(bucket, prefix, &objects));
            deleted += done?;
            page = next?;
        }
        tracing::debug!(
            objects = deleted.objects,
            bytes = deleted.bytes,
            "prefix deleted"
        );
        Ok(deleted)
    }

    /// Deletes one listed page, `self.batch` keys per request.
    async fn delete_page(
        &self,
        bucket: &str,
        prefix: &str,
        objects: &[ObjectInfo],
    ) -> Result<Usage, StoreError> {
        let mut deleted = Usage::default();
        for batch in objects.chunks(self.batch) {
            self.delete_batch(bucket, prefix, batch).await?;
            deleted += Usage::of(batch);
        }
        Ok(deleted)
    }

    /// One quiet DeleteObjects request: the store answers only with the keys it failed on.
    async fn delete_batch(
        &self,
        bucket: &str,
        prefix: &str,
        batch: &[ObjectInfo],
    ) -> Result<(), StoreError> {
        let to_request_error = |err| StoreError::request(DELETE, bucket, prefix, err);
        let objects = batch
            .iter()
            .map(|object| ObjectIdentifier::builder().key(&object.key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| to_request_error(SdkError::from(err)))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|err| to_request_error(SdkError::from(err)))?;
        let started = std::time::Instant::now();
        let output = self
            .client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(to_request_error);
        crate::metrics::store_request(DELETE, &output, started);
        let output = output?;
        check_key_errors(bucket, prefix, output.errors())?;
        tracing::debug!(objects = batch.len(), "batch deleted");
        Ok(())
    }
}

/// Fails on the per-key errors of a DeleteObjects response, ignoring keys already gone. One
/// permanent error makes the whole failure permanent: retrying cannot get past it.
fn check_key_errors(
    bucket: &str,
    prefix: &str,
    errors: &[aws_sdk_s3::types::Error],
) -> Result<(), StoreError> {
    let mut failed = errors.iter().filter(|e| !is_already_gone(e.code()));
    let Some(first) = failed.next() else {
        return Ok(());
    };
    let transient = |e: &aws_sdk_s3::types::Error| e.code().is_some_and(is_transient_code);
    let class = if transient(first) && failed.clone().all(transient) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    };
    let reason = Reason::KeysNotDeleted {
        key: first.key().unwrap_or("(no key)").to_owned(),
        code: first.code().unwrap_or("(no code)").to_owned(),
        message: first.message().unwrap_or("(no message)").to_owned(),
        failed: 1 + failed.count(),
        class,
    };
    Err(StoreError::new(DELETE, bucket, prefix, reason))
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::Error as KeyError;

    use super::*;

    fn key_error(key: &str, code: &str) -> KeyError {
        KeyError::builder()
            .key(key)
            .code(code)
            .message(format!("{code} on {key}"))
            .build()
    }

    fn check(errors: &[KeyError]) -> Result<(), StoreError> {
        check_key_errors("mlflow", "1/abc/artifacts/model/", errors)
    }

    #[test]
    fn no_errors_or_only_missing_keys_is_success() {
        assert!(check(&[]).is_ok());
        assert!(check(&[key_error("a", "NoSuchKey"), key_error("b", "NoSuchKey")]).is_ok());
    }

    #[test]
    fn throttled_keys_fail_transiently_with_the_first_key_named() {
        let err = check(&[
            key_error("1/abc/artifacts/model/a", "NoSuchKey"),
            key_error("1/abc/artifacts/model/b", "SlowDown"),
            key_error("1/abc/artifacts/model/c", "InternalError"),
        ])
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient);
        assert_eq!(err.code(), Some("SlowDown"));
        assert_eq!(
            err.to_string(),
            "S3 DeleteObjects in bucket mlflow under 1/abc/artifacts/model/ failed: \
             2 key(s) not deleted, first 1/abc/artifacts/model/b: SlowDown: SlowDown on 1/abc/artifacts/model/b"
        );
    }

    #[test]
    fn one_denied_key_makes_the_failure_permanent() {
        let err = check(&[
            key_error("a", "ServiceUnavailable"),
            key_error("b", "AccessDenied"),
        ])
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
        let err = check(&[key_error("a", "AccessDenied")]).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
    }

    #[test]
    fn an_error_without_code_is_permanent() {
        let err = check(&[KeyError::builder().key("a").build()]).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
}
