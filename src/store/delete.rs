//! Batch deletion: one quiet DeleteObjects request for up to 1,000 keys.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::TryFutureExt as _;

use super::error::{Reason, is_already_gone, is_transient_code};
use super::{ObjectInfo, ObjectStore, StoreError, common_folder};
use crate::domain::classify::ErrorClass;

const DELETE: &str = "DeleteObjects";

impl ObjectStore {
    /// Deletes `objects` with one request (S3 takes at most [`super::MAX_DELETE_BATCH`] keys; callers
    /// send [`ObjectStore::batch_size`] at most). Keys already gone count as deleted, so sending
    /// the same batch again succeeds. Errors name the folder the keys have in common.
    #[tracing::instrument(
        name = "store.delete_objects",
        skip_all,
        fields(bucket = %bucket, objects = objects.len()),
        err(level = "warn")
    )]
    pub async fn delete_objects(
        &self,
        bucket: &str,
        objects: &[ObjectInfo],
    ) -> Result<(), StoreError> {
        let folder = common_folder(objects.iter().map(|o| o.key.as_str()));
        if objects.is_empty() {
            return Ok(());
        }
        let to_request_error = |err| StoreError::request(DELETE, bucket, folder, err);
        let identifiers = objects
            .iter()
            .map(|object| ObjectIdentifier::builder().key(&object.key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| to_request_error(SdkError::from(err)))?;
        let delete = Delete::builder()
            .set_objects(Some(identifiers))
            .quiet(true)
            .build()
            .map_err(|err| to_request_error(SdkError::from(err)))?;
        let output = self
            .limited(DELETE, || {
                self.client
                    .delete_objects()
                    .bucket(bucket)
                    .delete(delete.clone())
                    .send()
                    .map_err(to_request_error)
            })
            .await?;
        check_key_errors(bucket, folder, output.errors())
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
