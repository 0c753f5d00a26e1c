//! `fruits download`: copies everything under an object-store prefix to a local folder, keeping
//! the layout. How a run's outputs reach a laptop (or a container's host) without an AWS CLI.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use datafusion::datasource::listing::ListingTableUrl;
use fruits_udfs::ObjectStores;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::cli::DownloadArgs;
use crate::progress::counting_bar;
use crate::upload::copy_concurrently;

pub async fn run(args: &DownloadArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let source = ListingTableUrl::parse(format!("{}/", args.from.trim_end_matches('/')))
        .with_context(|| format!("invalid source {}", args.from))?;
    let store = runtime.object_store(source.object_store())?;
    let objects: Vec<_> =
        store.list(Some(source.prefix())).try_collect().await.with_context(|| format!("cannot list {}", args.from))?;
    ensure!(!objects.is_empty(), "nothing under {}", args.from);

    let bar = counting_bar(objects.len() as u64, "files", quiet);
    let copies = objects.iter().map(|object| {
        let (store, bar) = (&store, &bar);
        let relative = object.location.prefix_match(source.prefix()).map(|parts| parts.collect::<Vec<_>>());
        async move {
            let relative = relative.with_context(|| format!("{} is not under {}", object.location, args.from))?;
            let target: PathBuf = relative.iter().fold(args.to.clone(), |path, part| path.join(part.as_ref()));
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let bytes = store.get(&object.location).await?.bytes().await?;
            tokio::fs::write(&target, &bytes).await.with_context(|| format!("cannot write {}", target.display()))?;
            bar.inc(1);
            anyhow::Ok(object.size)
        }
    });
    let bytes = copy_concurrently(copies).await?;
    bar.finish_and_clear();
    if !quiet {
        println!(
            "downloaded {} files ({:.1} MB) from {} to {} in {:.1} s",
            objects.len(),
            bytes as f64 / 1e6,
            source,
            args.to.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
