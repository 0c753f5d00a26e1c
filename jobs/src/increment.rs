//! Incremental runs: the listing compared with the committed result, so that a run featurizes
//! only the images that are new or changed and keeps the rest.
//!
//! The rule: an image is kept when the committed result holds a row of the same path and the
//! same version (size, modification time, ETag), made by the same model and preprocessing
//! (the fingerprint in `_SUCCESS`). Committed files whose rows are all kept stay as they are,
//! listed again by the new manifest; a file with rows of changed or deleted images is
//! rewritten without them (its features copied, not computed). A result made by another model,
//! or by a fruits that did not record one, is never mixed with new rows: the run is full.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use fruits_udfs::{CommittedFile, FeaturesDir, FileVersion, Listing, Location, Manifest, RunId};
use futures::{StreamExt, TryStreamExt};

use crate::summary::Incremental;

/// Committed files read or rewritten at once.
const CONCURRENT_FILES: usize = 16;

/// What a run featurizes.
pub enum Decision {
    /// Every listed image; `reason` says why when a committed result was there.
    Full { reason: Option<String>, work: Listing },
    Incremental(Increment),
}

impl Decision {
    /// The entries the featurize job reads.
    pub fn work(&self) -> &Listing {
        match self {
            Decision::Full { work, .. } => work,
            Decision::Incremental(increment) => &increment.work,
        }
    }
}

/// An incremental run: the images to featurize, and what is kept of the committed result.
pub struct Increment {
    /// The committed result it starts from.
    pub previous: Manifest,
    pub counts: Incremental,
    /// New and changed images (and entries the listing could not read that are new).
    pub work: Listing,
    /// Committed files whose rows are all kept.
    kept: Vec<CommittedFile>,
    /// Committed files with rows of changed or deleted images, and the paths of those rows.
    trimmed: Vec<(CommittedFile, HashSet<String>)>,
}

/// Decides how to bring the result in `features` up to date with `listing` (of `input`), for
/// features made by `model`.
pub async fn decide(
    features: &FeaturesDir,
    input: &Location,
    listing: Listing,
    model: &str,
    full: bool,
) -> Result<Decision> {
    let Some(previous) = features.manifest().await? else {
        return Ok(Decision::Full { reason: None, work: listing });
    };
    let reason = match previous.model.as_deref() {
        _ if full => Some("--full was given".to_owned()),
        None => Some(format!(
            "the committed run {} does not record its model (it was made by an earlier fruits)",
            previous.run_id
        )),
        Some(committed) if committed != model => {
            Some(format!("the committed run {} was made by another model ({committed}; this run uses {model})", previous.run_id))
        }
        Some(_) => None,
    };
    if let Some(reason) = reason {
        return Ok(Decision::Full { reason: Some(reason), work: listing });
    }
    let versions = committed_versions(features, &previous).await?;
    Ok(Decision::Incremental(diff(previous, versions, listing, input)))
}

/// The version of every committed row, by path, with the index of its file in `manifest`.
async fn committed_versions(features: &FeaturesDir, manifest: &Manifest) -> Result<HashMap<String, (usize, FileVersion)>> {
    let mut rows = HashMap::new();
    let mut reads = futures::stream::iter(manifest.files.iter().enumerate())
        .map(|(index, file)| async move {
            let versions = features
                .versions(&file.file)
                .await
                .with_context(|| format!("cannot read the committed {}", features.file_url(&file.file)))?;
            anyhow::Ok((index, versions))
        })
        .buffer_unordered(CONCURRENT_FILES);
    while let Some((index, versions)) = reads.try_next().await? {
        rows.extend(versions.into_iter().map(|(path, version)| (path, (index, version))));
    }
    Ok(rows)
}

/// Sorts every listed entry into new, changed and unchanged against the committed rows; the
/// committed rows left over are the deleted images.
fn diff(
    previous: Manifest,
    mut committed: HashMap<String, (usize, FileVersion)>,
    listing: Listing,
    input: &Location,
) -> Increment {
    let mut counts = Incremental { since_run: previous.run_id.clone(), ..Incremental::default() };
    let mut dropped: Vec<HashSet<String>> = vec![HashSet::new(); previous.files.len()];
    let mut work = Listing::default();
    let mut compare = |path: String, version: FileVersion| -> bool {
        match committed.remove(&path) {
            None => {
                counts.new += 1;
                true
            }
            Some((_, committed_version)) if committed_version == version => {
                counts.unchanged += 1;
                false
            }
            Some((file, _)) => {
                counts.changed += 1;
                dropped[file].insert(path);
                true
            }
        }
    };
    for image in listing.images {
        if compare(input.url_of(image.location()), FileVersion::of(&image.meta)) {
            work.images.push(image);
        }
    }
    for entry in listing.skipped {
        if compare(input.url_of(&entry.location), FileVersion::of(&entry.meta())) {
            work.skipped.push(entry);
        }
    }
    drop(compare);
    counts.deleted = committed.len() as u64;
    for (path, (file, _)) in committed {
        dropped[file].insert(path);
    }
    let (mut kept, mut trimmed) = (Vec::new(), Vec::new());
    for (file, drop) in previous.files.iter().zip(dropped) {
        if drop.is_empty() {
            kept.push(file.clone());
        } else {
            trimmed.push((file.clone(), drop));
        }
    }
    Increment { previous, counts, work, kept, trimmed }
}

impl Increment {
    /// Whether the committed result is up to date: nothing to featurize, nothing to drop.
    pub fn is_empty(&self) -> bool {
        self.work.images.is_empty() && self.work.skipped.is_empty() && self.trimmed.is_empty()
    }

    /// The committed files the new result keeps: those kept whole, and the trimmed ones
    /// rewritten under run `run`'s names without their dropped rows.
    pub async fn carry_over(self, features: &FeaturesDir, run: &RunId) -> Result<Vec<CommittedFile>> {
        let rewritten: Vec<Option<CommittedFile>> = futures::stream::iter(self.trimmed)
            .map(|(file, drop)| async move {
                features
                    .rewrite_without(&file, &drop, run)
                    .await
                    .with_context(|| format!("cannot rewrite {} without its changed rows", features.file_url(&file.file)))
            })
            .buffer_unordered(CONCURRENT_FILES)
            .try_collect()
            .await?;
        Ok(self.kept.into_iter().chain(rewritten.into_iter().flatten()).collect())
    }
}

#[cfg(test)]
mod tests {
    use fruits_udfs::{ImageFile, Skipped};
    use object_store::path::Path;

    use super::*;

    fn image(path: &str, size: u64) -> ImageFile {
        ImageFile::new(Path::from(path), size)
    }

    fn committed(file: &str, rows: u64, first: &str) -> CommittedFile {
        CommittedFile { file: file.into(), rows, failed: 0, written_by: "h:1".into(), first_path: Some(first.into()) }
    }

    #[test]
    fn new_changed_deleted_and_unchanged_images_are_told_apart() {
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let memory = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&memory, std::sync::Arc::new(object_store::memory::InMemory::new()));
        let input = Location::parse("memory:///in/", &runtime).unwrap();
        let url = |p: &str| format!("memory:///in/{p}");
        let previous = Manifest::of_files(
            "r",
            Some("m".into()),
            vec![committed("part-a.parquet", 2, &url("A/1.jpg")), committed("part-b.parquet", 2, &url("B/1.jpg"))],
        )
        .unwrap();
        let version = |size| FileVersion::of(&image("x", size).meta);
        let rows = HashMap::from([
            (url("A/1.jpg"), (0, version(10))),
            (url("A/2.jpg"), (0, version(20))),
            (url("B/1.jpg"), (1, version(30))),
            (url("B/2.jpg"), (1, version(40))),
        ]);
        // A/1 unchanged, A/2 deleted, B/1 changed (size), B/2 unchanged, C/1 new; a new unreadable folder.
        let listing = Listing {
            images: vec![image("in/A/1.jpg", 10), image("in/B/1.jpg", 31), image("in/B/2.jpg", 40), image("in/C/1.jpg", 5)],
            skipped: vec![Skipped { location: Path::from("in/D"), reason: "cannot read it".into() }],
        };
        let increment = diff(previous, rows, listing, &input);
        assert_eq!(
            increment.counts,
            Incremental { new: 2, changed: 1, deleted: 1, unchanged: 2, since_run: "r".into() }
        );
        let work: Vec<&str> = increment.work.images.iter().map(|i| i.location().as_ref()).collect();
        assert_eq!(work, ["in/B/1.jpg", "in/C/1.jpg"]);
        assert_eq!(increment.work.skipped.len(), 1);
        assert!(increment.kept.is_empty(), "both files lose a row");
        let mut trimmed: Vec<(String, Vec<String>)> = increment
            .trimmed
            .iter()
            .map(|(f, drop)| (f.file.clone(), drop.iter().cloned().collect()))
            .collect();
        trimmed.sort();
        assert_eq!(
            trimmed,
            [("part-a.parquet".into(), vec![url("A/2.jpg")]), ("part-b.parquet".into(), vec![url("B/1.jpg")])]
        );
        assert!(!increment.is_empty());
    }
}
