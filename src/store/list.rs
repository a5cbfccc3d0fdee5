//! Paginated listing with ListObjectsV2 continuation tokens.

use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;

use super::{ObjectInfo, ObjectStore, Reason, StoreError, Usage};

const LIST: &str = "ListObjectsV2";

impl ObjectStore {
    /// Objects and bytes under `prefix`, used as given (callers pass a trailing `/`).
    #[tracing::instrument(
        name = "store.usage",
        skip_all,
        fields(bucket = %bucket, prefix = %prefix),
        err(level = "warn")
    )]
    pub async fn usage(&self, bucket: &str, prefix: &str) -> Result<Usage, StoreError> {
        let mut listing = Listing::new(self, bucket, prefix);
        let mut usage = Usage::default();
        while let Some(page) = listing.next().await? {
            usage += Usage::of(&page);
        }
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
        let mut listing = Listing::new(self, bucket, prefix);
        let mut all = Vec::new();
        while let Some(page) = listing.next().await? {
            all.extend(page);
        }
        Ok(all)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

impl ObjectStore {
    /// One ListObjectsV2 request: up to 1,000 objects under `prefix` (used as given; callers
    /// pass a trailing `/`), from `token` on. Failed calls can be repeated with the same token.
    /// An empty prefix is refused: it would cover the whole bucket.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<Page, StoreError> {
        if prefix.is_empty() {
            return Err(StoreError::new(LIST, bucket, prefix, Reason::EmptyPrefix));
        }
        let started = std::time::Instant::now();
        let page = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.map(str::to_owned))
            .send()
            .await
            .map_err(|err| StoreError::request(LIST, bucket, prefix, err));
        crate::metrics::store_request(LIST, &page, started);
        let page = page?;
        Ok(Page {
            objects: objects(&page),
            next: next_token(&page),
        })
    }
}

/// The pages of one prefix, fetched one request at a time.
struct Listing<'a> {
    store: &'a ObjectStore,
    bucket: &'a str,
    prefix: &'a str,
    token: Option<String>,
    done: bool,
}

impl<'a> Listing<'a> {
    fn new(store: &'a ObjectStore, bucket: &'a str, prefix: &'a str) -> Self {
        Self {
            store,
            bucket,
            prefix,
            token: None,
            done: false,
        }
    }

    /// The next page, `None` after the last one.
    async fn next(&mut self) -> Result<Option<Vec<ObjectInfo>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .list_page(self.bucket, self.prefix, self.token.as_deref())
            .await?;
        self.token = page.next;
        self.done = self.token.is_none();
        Ok(Some(page.objects))
    }
}

/// The token of the following page; none when the listing is complete. A truncated page without
/// a token (a broken store) ends the listing rather than restarting it from the beginning.
fn next_token(page: &ListObjectsV2Output) -> Option<String> {
    if page.is_truncated() != Some(true) {
        return None;
    }
    page.next_continuation_token()
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

/// The objects of a page. Sizes are never negative; a missing one counts as 0.
fn objects(page: &ListObjectsV2Output) -> Vec<ObjectInfo> {
    page.contents()
        .iter()
        .filter_map(|object| {
            Some(ObjectInfo {
                key: object.key()?.to_owned(),
                size: object.size().unwrap_or(0).try_into().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::Object;

    use super::*;

    fn page(truncated: Option<bool>, token: Option<&str>) -> ListObjectsV2Output {
        ListObjectsV2Output::builder()
            .set_is_truncated(truncated)
            .set_next_continuation_token(token.map(str::to_owned))
            .contents(Object::builder().key("p/a").size(3).build())
            .contents(Object::builder().key("p/b").build())
            .contents(Object::builder().size(7).build())
            .build()
    }

    #[test]
    fn a_truncated_page_continues_with_its_token() {
        assert_eq!(
            next_token(&page(Some(true), Some("t1"))).as_deref(),
            Some("t1")
        );
    }

    #[test]
    fn a_complete_page_ends_the_listing_even_with_a_token() {
        assert_eq!(next_token(&page(Some(false), Some("t1"))), None);
        assert_eq!(next_token(&page(None, Some("t1"))), None);
    }

    #[test]
    fn a_truncated_page_without_token_ends_the_listing() {
        assert_eq!(next_token(&page(Some(true), None)), None);
        assert_eq!(next_token(&page(Some(true), Some(""))), None);
    }

    #[test]
    fn objects_without_key_are_skipped_and_missing_sizes_count_as_zero() {
        let objects = objects(&page(None, None));
        assert_eq!(
            objects,
            vec![
                ObjectInfo {
                    key: "p/a".into(),
                    size: 3
                },
                ObjectInfo {
                    key: "p/b".into(),
                    size: 0
                },
            ]
        );
        assert_eq!(
            Usage::of(&objects),
            Usage {
                objects: 2,
                bytes: 3
            }
        );
    }
}
