//! `fruits download`: copies everything under an object-store prefix to a local folder, keeping
//! the layout. How a run's outputs reach a laptop (or a container's host) without an AWS CLI.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use fruits_udfs::{Location, ObjectStores};

use crate::cli::DownloadArgs;
use crate::progress::counting_bar;
use crate::transfer::copy_concurrently;

pub async fn run(args: &DownloadArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let source = Location::parse(&args.from, &runtime)?;
    let objects = source.list().await?;
    ensure!(!objects.is_empty(), "nothing under {}", args.from);

    let bar = counting_bar(objects.len() as u64, "files", quiet);
    let copies = objects.iter().map(|object| {
        let (source, bar) = (&source, &bar);
        async move {
            let relative = source
                .relative_name(&object.location)
                .with_context(|| format!("{} is not under {}", object.location, args.from))?;
            // A key such as `a/%2E%2E/x` must not reach outside the target folder.
            ensure!(
                relative.split('/').all(|part| !part.is_empty() && part != "." && part != ".."),
                "refusing to download {}: its name is not a plain relative path",
                source.child_url(&relative)
            );
            let target: PathBuf = relative.split('/').fold(args.to.clone(), |path, part| path.join(part));
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let bytes = source
                .get_path(&object.location)
                .await?
                .with_context(|| format!("{} disappeared while downloading", source.child_url(&relative)))?;
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
            source.url(),
            args.to.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
