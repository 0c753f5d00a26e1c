//! Copies between a local folder and an object store, many files in flight at once: what
//! `fruits upload` and `fruits download` share.

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};

/// Files in flight at once: enough to hide S3 latency, few enough for a laptop's uplink.
const CONCURRENCY: usize = 32;

/// Runs `copies` (each returning the bytes it copied) `CONCURRENCY` at a time; the total bytes,
/// or the first error.
pub async fn copy_concurrently(copies: impl Iterator<Item = impl Future<Output = Result<u64>>>) -> Result<u64> {
    futures::stream::iter(copies).buffer_unordered(CONCURRENCY).try_fold(0, |sum, n| async move { Ok(sum + n) }).await
}
