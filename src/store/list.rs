//! Paginated listing with ListObjectsV2. Pages are chained with `start-after` (the last key
//! seen) rather than continuation tokens, so a caller can also skip ahead to any key; every page
//! is checked to be in key order, which skipping relies on.

use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use futures::TryFutureExt as _;

use super::{ObjectInfo, ObjectStore, Reason, StoreError, Usage};
use crate::domain::size::Bytes;

const LIST: &str = "ListObjectsV2";

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// At most 1,000 objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

impl ObjectStore {
    /// Objects and bytes under `prefix`, used as given (callers pass a trailing `/`).
    #[tracing::instrument(
        name = "store.usage",
        skip_all,
        fields(bucket = %bucket, prefix = %prefix),
        err(level = "warn")
    )]
    pub async fn usage(&self, bucket: &str, prefix: &str) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        self.for_each_page(bucket, prefix, |page| usage += Usage::of(&page))
            .await?;
        Ok(usage)
    }

    /// Every object key and size under `prefix`, for audits and tests.
    #[tracing::instrument(
        name = "store.list",
        skip_all,
        fields(bucket = %bucket, prefix = %prefix),
        err(level = "warn")
    )]
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut all = Vec::new();
        self.for_each_page(bucket, prefix, |page| all.extend(page))
            .await?;
        Ok(all)
    }

    async fn for_each_page(
        &self,
        bucket: &str,
        prefix: &str,
        mut each: impl FnMut(Vec<ObjectInfo>),
    ) -> Result<(), StoreError> {
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(bucket, prefix, after.as_deref()).await?;
            after = page.objects.last().map(|o| o.key.clone());
            each(page.objects);
            if !page.more {
                return Ok(());
            }
        }
    }

    /// One ListObjectsV2 request: up to 1,000 objects under `prefix` (used as given; callers
    /// pass a trailing `/`) whose keys sort after `start_after`. Failed calls can simply be
    /// repeated. An empty prefix is refused: it would cover the whole bucket. A page out of
    /// order, or announcing more keys without giving any, is a permanent error.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Page, StoreError> {
        let error = |reason| StoreError::new(LIST, bucket, prefix, reason);
        if prefix.is_empty() {
            return Err(error(Reason::EmptyPrefix));
        }
        let output = self
            .limited(LIST, || {
                self.client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_start_after(start_after.map(str::to_owned))
                    .send()
                    .map_err(|err| StoreError::request(LIST, bucket, prefix, err))
            })
            .await?;
        let page = page(&output);
        check_order(start_after, &page).map_err(error)?;
        Ok(page)
    }
}

/// The page's objects, and whether more follow. Sizes are never negative; a missing one counts
/// as 0; objects without a key are skipped.
fn page(output: &ListObjectsV2Output) -> Page {
    let objects = output
        .contents()
        .iter()
        .filter_map(|object| {
            Some(ObjectInfo {
                key: object.key()?.to_owned(),
                size: Bytes(object.size().unwrap_or(0).try_into().unwrap_or(0)),
            })
        })
        .collect();
    Page {
        objects,
        more: output.is_truncated() == Some(true),
    }
}

/// Keys strictly increasing, all after `start_after`, and no empty page announcing more: what
/// S3 promises, and what chaining pages by their last key needs to end and to miss nothing.
fn check_order(start_after: Option<&str>, page: &Page) -> Result<(), Reason> {
    let mut previous = start_after;
    for object in &page.objects {
        if previous.is_some_and(|p| object.key.as_str() <= p) {
            return Err(Reason::BadListing {
                detail: format!(
                    "key {} listed after {}: not in key order",
                    object.key,
                    previous.unwrap_or_default()
                ),
            });
        }
        previous = Some(&object.key);
    }
    if page.more && page.objects.is_empty() {
        return Err(Reason::BadListing {
            detail: "an empty page announced more keys".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::Object;

    use super::*;

    fn output(truncated: Option<bool>) -> ListObjectsV2Output {
        ListObjectsV2Output::builder()
            .set_is_truncated(truncated)
            .contents(Object::builder().key("p/a").size(3).build())
            .contents(Object::builder().key("p/b").build())
            .contents(Object::builder().size(7).build())
            .build()
    }

    fn keys(keys: &[&str], more: bool) -> Page {
        Page {
            objects: keys
                .iter()
                .map(|k| ObjectInfo {
                    key: (*k).to_owned(),
                    size: Bytes(1),
                })
                .collect(),
            more,
        }
    }

    #[test]
    fn only_a_truncated_page_has_more() {
        assert!(page(&output(Some(true))).more);
        assert!(!page(&output(Some(false))).more);
        assert!(!page(&output(None)).more);
    }

    #[test]
    fn objects_without_key_are_skipped_and_missing_sizes_count_as_zero() {
        let objects = page(&output(None)).objects;
        assert_eq!(
            objects,
            vec![
                ObjectInfo {
                    key: "p/a".into(),
                    size: Bytes(3)
                },
                ObjectInfo {
                    key: "p/b".into(),
                    size: Bytes(0)
                },
            ]
        );
        assert_eq!(
            Usage::of(&objects),
            Usage {
                objects: 2,
                bytes: Bytes(3)
            }
        );
    }

    #[test]
    fn pages_in_key_order_after_the_start_pass() {
        assert!(check_order(None, &keys(&["a/1", "a/10", "a/2"], true)).is_ok());
        assert!(check_order(Some("a/0"), &keys(&["a/1"], false)).is_ok());
        assert!(check_order(Some("a/9"), &keys(&[], false)).is_ok());
        assert!(check_order(Some("a/é"), &keys(&["a/ê"], false)).is_ok());
    }

    #[test]
    fn keys_out_of_order_or_not_after_the_start_are_refused() {
        let err = check_order(None, &keys(&["a/2", "a/1"], false)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the listing is unusable: key a/1 listed after a/2: not in key order"
        );
        assert!(check_order(None, &keys(&["a/1", "a/1"], false)).is_err());
        assert!(check_order(Some("a/1"), &keys(&["a/1"], false)).is_err());
        assert!(check_order(Some("a/5"), &keys(&["a/2"], false)).is_err());
    }

    #[test]
    fn an_empty_page_announcing_more_is_refused() {
        let err = check_order(Some("a/1"), &keys(&[], true)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the listing is unusable: an empty page announced more keys"
        );
    }
}
