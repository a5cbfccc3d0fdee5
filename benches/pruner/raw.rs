//! The store's own limit, measured with a plain S3 client (not the crate's `store` module):
//! list and batch-delete objects laid out like an experiment's models.

use std::time::Instant;

use anyhow::Context as _;
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::seed::BUCKET;

/// DeleteObjects requests in flight at once in the raw baselines (the engine's default
/// `concurrency.parallel_deletions`).
pub const RAW_CONCURRENCY: usize = 4;

/// Objects deleted and the time it took.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timed {
    pub objects: u64,
    pub seconds: f64,
}

impl Timed {
    pub fn rate(&self) -> f64 {
        self.objects as f64 / self.seconds.max(1e-9)
    }
}

/// Bulk: one paginated listing of `root` (1,000 keys a page), each page deleted with one
/// DeleteObjects of 1,000 keys, up to [`RAW_CONCURRENCY`] in flight while listing continues.
pub async fn bulk(s3: &Client, root: &str) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let (pages_tx, pages_rx) = tokio::sync::mpsc::channel::<Vec<String>>(RAW_CONCURRENCY);
    let lister = {
        let s3 = s3.clone();
        let root = root.to_owned();
        tokio::spawn(async move {
            let mut pages = s3
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(&root)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                if pages_tx.send(page_keys(&page?)).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        })
    };
    let deleted: Vec<u64> = tokio_stream_from(pages_rx)
        .map(|keys| delete_keys(s3, keys))
        .buffer_unordered(RAW_CONCURRENCY)
        .try_collect()
        .await?;
    lister.await??;
    Ok(Timed {
        objects: deleted.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Per run: for each model folder, list it and delete its keys (one DeleteObjects), up to
/// [`RAW_CONCURRENCY`] folders at once: folder-by-folder deletion, for comparison.
pub async fn per_prefix(s3: &Client, prefixes: &[String]) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let deleted: Vec<u64> = futures::stream::iter(prefixes)
        .map(|prefix| async move {
            let mut total = 0;
            let mut pages = s3
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                total += delete_keys(s3, page_keys(&page?)).await?;
            }
            anyhow::Ok(total)
        })
        .buffer_unordered(RAW_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Timed {
        objects: deleted.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Objects left under `prefix`.
pub async fn count(s3: &Client, prefix: &str) -> anyhow::Result<u64> {
    crate::store_fixtures::count_objects(s3, BUCKET, prefix).await
}

/// Deletes whatever is left under `prefix` (clean-up; not timed).
pub async fn clean(s3: &Client, prefix: &str) -> anyhow::Result<()> {
    bulk(s3, prefix).await.map(drop)
}

async fn delete_keys(s3: &Client, keys: Vec<String>) -> anyhow::Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let n = keys.len() as u64;
    let objects = keys
        .into_iter()
        .map(|k| ObjectIdentifier::builder().key(k).build())
        .collect::<Result<Vec<_>, _>>()?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()?;
    let out = s3
        .delete_objects()
        .bucket(BUCKET)
        .delete(delete)
        .send()
        .await
        .context("DeleteObjects")?;
    if let Some(e) = out.errors().first() {
        anyhow::bail!(
            "DeleteObjects: {} key(s) failed, first {:?}: {:?}",
            out.errors().len(),
            e.key(),
            e.code()
        );
    }
    Ok(n)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The keys of one ListObjectsV2 page.
fn page_keys(page: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output) -> Vec<String> {
    page.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}
