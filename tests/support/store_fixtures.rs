//! Object-store fixtures for tests against the stack of `scripts/stack.sh`: a raw S3 client
//! (independent of the crate's `store` module, so tests check it rather than trust it), bulk
//! uploads, counts and existence checks.
#![allow(dead_code)] // each test crate uses a different part

use anyhow::Context as _;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt as _, TryStreamExt as _};

/// Uploads in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 32;

/// What [`upload_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub keys: Vec<String>,
    pub bytes: u64,
}

/// An S3 client for the test stack, from `MODEL_PRUNER__STORE__{ENDPOINT,REGION,ACCESS_KEY_ID,
/// SECRET_ACCESS_KEY}` (and `FORCE_PATH_STYLE`, default true), as `scripts/stack.sh env` sets.
pub fn client() -> anyhow::Result<Client> {
    let endpoint = env("ENDPOINT")?;
    let credentials = Credentials::new(
        env("ACCESS_KEY_ID")?,
        env("SECRET_ACCESS_KEY")?,
        None,
        None,
        "model-pruner-tests",
    );
    let path_style = match std::env::var("MODEL_PRUNER__STORE__FORCE_PATH_STYLE") {
        Ok(value) => value
            .parse()
            .context("MODEL_PRUNER__STORE__FORCE_PATH_STYLE")?,
        Err(_) => true,
    };
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint.trim_end_matches('/'))
        .region(Region::new(env("REGION")?))
        .credentials_provider(credentials)
        .force_path_style(path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(config))
}

fn env(name: &str) -> anyhow::Result<String> {
    let var = format!("MODEL_PRUNER__STORE__{name}");
    std::env::var(&var).with_context(|| {
        format!("{var} is not set; start the stack and run: eval \"$(scripts/stack.sh env)\"")
    })
}

/// Uploads `count` small files under `prefix` (`{prefix}data/part-00000.bin`, ...),
/// [`UPLOAD_CONCURRENCY`] at a time. Returns the keys in order and the bytes written.
pub async fn upload_files(
    client: &Client,
    bucket: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Uploaded> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let key = format!("{prefix}data/part-{i:05}.bin");
            let body = format!("model file {i:05}\n").into_bytes();
            (key, body)
        })
        .collect();
    let bytes = files.iter().map(|(_, body)| body.len() as u64).sum();
    futures::stream::iter(files.iter())
        .map(|(key, body)| put_object(client, bucket, key, body.clone()))
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let keys = files.into_iter().map(|(key, _)| key).collect();
    Ok(Uploaded { keys, bytes })
}

/// Writes one object.
pub async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    body: impl Into<Vec<u8>>,
) -> anyhow::Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.into()))
        .send()
        .await
        .with_context(|| format!("PutObject s3://{bucket}/{key}"))?;
    Ok(())
}

/// Objects under `prefix` (used as given).
pub async fn count_objects(client: &Client, bucket: &str, prefix: &str) -> anyhow::Result<u64> {
    Ok(usage(client, bucket, prefix).await?.0)
}

/// Objects and bytes under `prefix` (used as given).
pub async fn usage(client: &Client, bucket: &str, prefix: &str) -> anyhow::Result<(u64, u64)> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let (mut count, mut bytes) = (0, 0);
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("ListObjectsV2 s3://{bucket}/{prefix}"))?;
        count += page.contents().len() as u64;
        bytes += page
            .contents()
            .iter()
            .map(|o| o.size().unwrap_or_default().max(0) as u64)
            .sum::<u64>();
    }
    Ok((count, bytes))
}

/// Whether `key` exists (HeadObject).
pub async fn object_exists(client: &Client, bucket: &str, key: &str) -> anyhow::Result<bool> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
        Err(err) => Err(err).with_context(|| format!("HeadObject s3://{bucket}/{key}")),
    }
}
