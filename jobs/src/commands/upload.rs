//! `fruits upload`: copies the images under a local folder to an object-store prefix, keeping
//! the folder layout (and so the labels). The first step of a cluster run; handy where no AWS
//! CLI is installed.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use fruits_udfs::{Location, ObjectStores, list_images};

use crate::cli::UploadArgs;
use crate::progress::counting_bar;
use crate::transfer::copy_concurrently;

pub async fn run(args: &UploadArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    let folder = std::path::Path::new(&args.from);
    ensure!(folder.is_dir(), "folder {} does not exist or is not a folder", folder.display());
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let source = Location::parse(&args.from, &runtime)?;
    let target = Location::parse(&args.to, &runtime)?;

    let listing = list_images(&source).await?;
    for entry in &listing.skipped {
        eprintln!("warning: skipped {}: {}", source.url_of(&entry.location), entry.reason);
    }
    let files = listing.images;
    ensure!(!files.is_empty(), "no image files (.jpg, .jpeg, .png) found under {}", args.from);
    let bar = counting_bar(files.len() as u64, "images", quiet);
    let copies = files.iter().map(|file| {
        let (source, target, bar) = (&source, &target, &bar);
        async move {
            let relative = source
                .relative_name(file.location())
                .with_context(|| format!("{} is not under {}", file.location(), args.from))?;
            let bytes = source
                .get_path(file.location())
                .await?
                .with_context(|| format!("{} disappeared while uploading", source.child_url(&relative)))?;
            target.put(&relative, bytes).await?;
            bar.inc(1);
            anyhow::Ok(file.size())
        }
    });
    let bytes = copy_concurrently(copies).await?;
    bar.finish_and_clear();
    if !quiet {
        println!(
            "uploaded {} images ({:.1} MB) to {} in {:.1} s",
            files.len(),
            bytes as f64 / 1e6,
            target.url(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
