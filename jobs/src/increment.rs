//! Incremental runs: the listing compared with the committed result, so that a run featurizes
//! only the images that are new or changed and keeps the rest.
//!
//! The rule: an image is kept when the committed result holds a row of the same path and the
//! same version (size, modification time, ETag), made by the same model and preprocessing
//! (the fingerprint in `_SUCCESS`). Committed files whose rows are all kept stay as they are,
//! listed again by the new manifest; a file with rows of changed or deleted images is
//! rewritten without them (its features copied, not computed). A result made by another model,
//! or by a fruits that did not record one, is never mixed with new rows: the run is full.

use std::collections::HashSet;

use anyhow::{Context, Result};
use fruits_udfs::{CommittedFile, Entry, FeaturesDir, FileVersion, HashKey, Location, Manifest, RunId};
use futures::{StreamExt, TryStreamExt};

use crate::summary::Incremental;

/// Committed files read or rewritten at once.
const CONCURRENT_FILES: usize = 16;

/// How a run compares what it lists with the committed result, entry by entry as the listing
/// goes: nothing holds the listing.
pub enum Comparison {
    /// Every listed entry is featurized; `reason` says why when a committed result was there.
    Full {
        reason: Option<String>,
    },
    Incremental(Diff),
}

/// The committed rows, and what the listing found of them so far.
pub struct Diff {
    previous: Manifest,
    committed: CommittedRows,
    /// For each committed file, the paths of its rows the new result drops.
    dropped: Vec<HashSet<HashKey>>,
    counts: Incremental,
}

/// What a run did with the committed result, once its listing is done.
pub enum Decision {
    /// Every listed image was featurized; `reason` says why when a committed result was there.
    Full {
        reason: Option<String>,
    },
    Incremental(Increment),
}

/// An incremental run: what it keeps of the committed result.
pub struct Increment {
    /// The committed result it starts from.
    pub previous: Manifest,
    pub counts: Incremental,
    /// Committed files whose rows are all kept.
    kept: Vec<CommittedFile>,
    /// Committed files with rows of changed or deleted images, and the paths of those rows.
    trimmed: Vec<(CommittedFile, HashSet<HashKey>)>,
}

/// How to bring the result in `features` up to date, for features made by `model`: against
/// the committed rows' versions when the committed result has the same model, else a full run.
pub async fn compare_with(features: &FeaturesDir, model: &str, full: bool) -> Result<Comparison> {
    let Some(previous) = features.manifest().await? else {
        return Ok(Comparison::Full { reason: None });
    };
    let reason = match previous.model.as_deref() {
        _ if full => Some("--full was given".to_owned()),
        None => Some(format!(
            "the committed run {} does not record its model (it was made by an earlier fruits)",
            previous.run_id
        )),
        Some(committed) if committed != model => Some(format!(
            "the committed run {} was made by another model ({committed}; this run uses {model})",
            previous.run_id
        )),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        return Ok(Comparison::Full { reason: Some(reason) });
    }
    let committed = CommittedRows::read(features, &previous).await?;
    Ok(Comparison::Incremental(Diff::new(previous, committed)))
}

impl Comparison {
    /// Whether the run featurizes `entry`, listed under `input`: in a full run every entry, in
    /// an incremental one the new and changed ones.
    pub fn featurize(&mut self, input: &Location, entry: &Entry) -> bool {
        match self {
            Comparison::Full { .. } => true,
            Comparison::Incremental(diff) => {
                diff.compare(HashKey::of_path(&input.url_of(entry.location())), FileVersion::of(&entry.meta()).key())
            }
        }
    }

    /// The decision, once every listed entry went through [`Self::featurize`].
    pub fn decide(self) -> Decision {
        match self {
            Comparison::Full { reason } => Decision::Full { reason },
            Comparison::Incremental(diff) => Decision::Incremental(diff.finish()),
        }
    }
}

/// Every committed row as keys (36 bytes a row, in one allocation): its path, the index of its
/// file in the manifest and its version, sorted by path; and whether the listing reached it. The
/// rows not reached at the end are the deleted images.
struct CommittedRows {
    rows: Vec<(HashKey, u32, HashKey)>,
    listed: Vec<bool>,
}

impl CommittedRows {
    async fn read(features: &FeaturesDir, manifest: &Manifest) -> Result<Self> {
        let mut rows = Vec::with_capacity(usize::try_from(manifest.rows).unwrap_or(0));
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
            let index = u32::try_from(index).context("more than 2^32 committed files")?;
            rows.extend(versions.into_iter().map(|(path, version)| (path, index, version)));
        }
        Ok(Self::new(rows))
    }

    fn new(mut rows: Vec<(HashKey, u32, HashKey)>) -> Self {
        rows.sort_unstable_by_key(|(path, _, _)| *path);
        let listed = vec![false; rows.len()];
        Self { rows, listed }
    }

    /// The file index and version of the committed row of `path`, marked as listed.
    fn take(&mut self, path: &HashKey) -> Option<(u32, HashKey)> {
        let index = self.rows.binary_search_by_key(path, |(path, _, _)| *path).ok()?;
        self.listed[index] = true;
        let (_, file, version) = self.rows[index];
        Some((file, version))
    }

    /// The rows the listing did not reach: path and file index.
    fn not_listed(&self) -> impl Iterator<Item = (HashKey, u32)> + '_ {
        self.rows.iter().zip(&self.listed).filter(|(_, listed)| !**listed).map(|((path, file, _), _)| (*path, *file))
    }
}

impl Diff {
    fn new(previous: Manifest, committed: CommittedRows) -> Self {
        let counts = Incremental { since_run: previous.run_id.clone(), ..Incremental::default() };
        let dropped = vec![HashSet::new(); previous.files.len()];
        Self { previous, committed, dropped, counts }
    }

    /// Counts the listed `path` of version `version` as new, changed or unchanged; true when
    /// it is to be featurized.
    fn compare(&mut self, path: HashKey, version: HashKey) -> bool {
        match self.committed.take(&path) {
            None => {
                self.counts.new += 1;
                true
            }
            Some((_, committed)) if committed == version => {
                self.counts.unchanged += 1;
                false
            }
            Some((file, _)) => {
                self.counts.changed += 1;
                self.dropped[file as usize].insert(path);
                true
            }
        }
    }

    /// The committed rows left over are the deleted images.
    fn finish(mut self) -> Increment {
        for (path, file) in self.committed.not_listed() {
            self.counts.deleted += 1;
            self.dropped[file as usize].insert(path);
        }
        let (mut kept, mut trimmed) = (Vec::new(), Vec::new());
        for (file, drop) in self.previous.files.iter().zip(self.dropped) {
            if drop.is_empty() {
                kept.push(file.clone());
            } else {
                trimmed.push((file.clone(), drop));
            }
        }
        Increment { previous: self.previous, counts: self.counts, kept, trimmed }
    }
}

impl Increment {
    /// Whether the committed result is up to date: nothing to featurize, nothing to drop.
    pub fn is_empty(&self) -> bool {
        self.counts.new == 0 && self.counts.changed == 0 && self.trimmed.is_empty()
    }

    /// The committed files the new result keeps: those kept whole, and the trimmed ones
    /// rewritten under run `run`'s names without their dropped rows.
    pub async fn carry_over(self, features: &FeaturesDir, run: &RunId) -> Result<Vec<CommittedFile>> {
        let rewritten: Vec<Option<CommittedFile>> = futures::stream::iter(self.trimmed)
            .map(|(file, drop)| async move {
                features.rewrite_without(&file, &drop, run).await.with_context(|| {
                    format!("cannot rewrite {} without its changed rows", features.file_url(&file.file))
                })
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
        let version = |size| FileVersion::of(&image("x", size).meta).key();
        let key = |p: &str| HashKey::of_path(&url(p));
        let rows = CommittedRows::new(vec![
            (key("A/1.jpg"), 0, version(10)),
            (key("A/2.jpg"), 0, version(20)),
            (key("B/1.jpg"), 1, version(30)),
            (key("B/2.jpg"), 1, version(40)),
        ]);
        // A/1 unchanged, A/2 deleted, B/1 changed (size), B/2 unchanged, C/1 new; a new unreadable folder.
        let listed =
            [image("in/A/1.jpg", 10), image("in/B/1.jpg", 31), image("in/B/2.jpg", 40), image("in/C/1.jpg", 5)]
                .into_iter()
                .map(Entry::Image)
                .chain([Entry::Skipped(Skipped { location: Path::from("in/D"), reason: "cannot read it".into() })]);
        let mut comparison = Comparison::Incremental(Diff::new(previous, rows));
        let work: Vec<String> =
            listed.filter(|entry| comparison.featurize(&input, entry)).map(|e| e.location().to_string()).collect();
        assert_eq!(work, ["in/B/1.jpg", "in/C/1.jpg", "in/D"]);
        let Decision::Incremental(increment) = comparison.decide() else { panic!("a result of the same model") };
        assert_eq!(
            increment.counts,
            Incremental { new: 2, changed: 1, deleted: 1, unchanged: 2, since_run: "r".into() }
        );
        assert!(increment.kept.is_empty(), "both files lose a row");
        let mut trimmed: Vec<(String, Vec<HashKey>)> =
            increment.trimmed.iter().map(|(f, drop)| (f.file.clone(), drop.iter().copied().collect())).collect();
        trimmed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            trimmed,
            [("part-a.parquet".into(), vec![key("A/2.jpg")]), ("part-b.parquet".into(), vec![key("B/1.jpg")])]
        );
        assert!(!increment.is_empty());
    }
}
