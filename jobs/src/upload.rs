//! `fruits upload`: copies the images under a local folder to an object-store prefix, keeping
//! the folder layout (and so the labels). The first step of a cluster run; handy where no AWS
//! CLI is installed.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use datafusion::datasource::listing::ListingTableUrl;
use fruits_udfs::ObjectStores;
use fruits_udfs::table::list_images;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::cli::UploadArgs;
use crate::progress::counting_bar;

/// Files in flight at once: enough to hide S3 latency, few enough for a laptop's uplink.
const CONCURRENCY: usize = 32;

/// Runs `copies` (each returning the bytes it copied) `CONCURRENCY` at a time; the total bytes,
/// or the first error.
pub async fn copy_concurrently(copies: impl Iterator<Item = impl Future<Output = Result<u64>>>) -> Result<u64> {
    futures::stream::iter(copies).buffer_unordered(CONCURRENCY).try_fold(0, |sum, n| async move { Ok(sum + n) }).await
}

pub async fn run(args: &UploadArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let folder = std::path::Path::new(&args.from);
    ensure!(folder.is_dir(), "folder {} does not exist or is not a folder", folder.display());
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let source = ListingTableUrl::parse(&args.from).with_context(|| format!("invalid folder {}", args.from))?;
    let target = ListingTableUrl::parse(format!("{}/", args.to.trim_end_matches('/')))
        .with_context(|| format!("invalid destination {}", args.to))?;
    let (from, to) = (runtime.object_store(source.object_store())?, runtime.object_store(target.object_store())?);

    let files = list_images(from.as_ref(), &source).await?;
    ensure!(!files.is_empty(), "no image files (.jpg, .jpeg, .png) found under {}", args.from);
    let bar = counting_bar(files.len() as u64, "images", quiet);
    let copies = files.iter().map(|file| {
        let (from, to, bar, target) = (&from, &to, &bar, &target);
        let relative = file.location.as_ref().strip_prefix(source.prefix().as_ref()).unwrap_or_default();
        let destination = Path::parse(format!("{}/{}", target.prefix(), relative.trim_start_matches('/')));
        async move {
            let destination = destination.with_context(|| format!("cannot name {relative} under {}", args.to))?;
            let bytes = from.get(&file.location).await?.bytes().await?;
            to.put(&destination, PutPayload::from(bytes))
                .await
                .with_context(|| format!("cannot upload {} to {}{relative}", file.location, target))?;
            bar.inc(1);
            anyhow::Ok(file.size)
        }
    });
    let bytes = copy_concurrently(copies).await?;
    bar.finish_and_clear();
    if !quiet {
        println!(
            "uploaded {} images ({:.1} MB) to {} in {:.1} s",
            files.len(),
            bytes as f64 / 1e6,
            target,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
