//! The commit: the `_SUCCESS` manifest of a features folder, the only thing readers trust.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::common::exec_datafusion_err;
use datafusion::error::{DataFusionError, Result};
use serde::{Deserialize, Serialize};

use super::write_report_schema;
use crate::lease::Lease;
use crate::location::Location;

/// Name of the manifest inside the features folder.
pub const MANIFEST_FILE: &str = "_SUCCESS";
/// Written into every manifest, so a reader can refuse a layout it does not know.
pub const MANIFEST_FORMAT: &str = "fruits-features/1";
/// Written and removed by [`FeaturesDir::begin`] to check that the folder can be written.
const WRITE_CHECK_FILE: &str = "_write_check";
/// A run's work list is `_worklist-<run>.parquet` (see [`crate::ImagesTable::with_worklist`]).
const WORKLIST_PREFIX: &str = "_worklist-";

/// Names one run: `<unix seconds>-<6 hex digits>`, so run ids sort by time and two clients
/// starting in the same second still differ.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    /// A new run id, from the clock and a random part.
    pub fn new() -> Self {
        let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self(format!("{seconds}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]))
    }

    /// `text` if it is a run id.
    pub fn parse(text: &str) -> Option<Self> {
        let (seconds, random) = text.split_once('-')?;
        let digits = !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit());
        let hex = random.len() == 6 && random.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        (digits && hex).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a file a write task of a run wrote: `part-<run>-<attempt>.parquet`, each
/// attempt of a task under its own name. The only names fruits deletes in a features folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFile {
    pub run: RunId,
    pub attempt: String,
}

impl PartFile {
    /// A new name for an attempt of a task of `run`.
    pub fn new(run: &RunId) -> Self {
        Self { run: run.clone(), attempt: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned() }
    }

    /// The part file named `name` (relative to the features folder), `None` for any other name.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let (run, attempt) = stem.rsplit_once('-')?;
        let hex = attempt.len() == 12 && attempt.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        hex.then_some(())?;
        Some(Self { run: RunId::parse(run)?, attempt: attempt.to_owned() })
    }

    pub fn name(&self) -> String {
        format!("part-{}-{}.parquet", self.run, self.attempt)
    }
}

/// The committed result of a run: every file of it, with its row counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub run_id: String,
    /// Rows in all files: one per listed image.
    pub rows: u64,
    /// Rows whose features are NULL (the image could not be featurized; `error` says why).
    pub failed: u64,
    /// Fingerprint of the model that made every feature of the result (see
    /// [`crate::Featurizer::fingerprint`]); `None` in manifests of fruits before it was recorded,
    /// or for a result without rows.
    #[serde(default)]
    pub model: Option<String>,
    pub files: Vec<CommittedFile>,
}

/// One Parquet file of a committed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    /// File name, relative to the features folder.
    pub file: String,
    pub rows: u64,
    pub failed: u64,
    /// `host:pid` of the process that wrote it.
    pub written_by: String,
    /// Path of its first image (files hold disjoint runs of the listing), `None` if empty.
    pub first_path: Option<String>,
}

impl Manifest {
    /// The manifest of run `run_id` from the report rows its write tasks returned.
    pub fn from_reports(run_id: &str, reports: &[RecordBatch]) -> Result<Self> {
        let (mut files, mut models) = (Vec::new(), Vec::<(String, String)>::new());
        for batch in reports {
            // By name: the reports may come back through an aggregate, with other nullability.
            let column = |name: &str| {
                let expected = write_report_schema();
                let (_, field) =
                    expected.column_with_name(name).ok_or_else(|| exec_datafusion_err!("no report column {name}"))?;
                batch
                    .column_by_name(name)
                    .filter(|c| c.data_type() == field.data_type())
                    .ok_or_else(|| exec_datafusion_err!("unexpected write report columns: {}", batch.schema()))
            };
            let names = column("file")?.as_string::<i32>();
            let rows = column("rows")?.as_primitive::<UInt64Type>();
            let failed = column("failed")?.as_primitive::<UInt64Type>();
            let writers = column("written_by")?.as_string::<i32>();
            let first_paths = column("first_path")?.as_string::<i32>();
            let file_models = column("model")?.as_string::<i32>();
            for row in 0..batch.num_rows() {
                if file_models.is_valid(row) {
                    models.push((file_models.value(row).to_owned(), writers.value(row).to_owned()));
                }
                files.push(CommittedFile {
                    file: names.value(row).to_owned(),
                    rows: rows.value(row),
                    failed: failed.value(row),
                    written_by: writers.value(row).to_owned(),
                    first_path: first_paths.is_valid(row).then(|| first_paths.value(row).to_owned()),
                });
            }
        }
        let model = match models.split_first() {
            None => None,
            Some(((model, writer), rest)) => {
                if let Some((other, other_writer)) = rest.iter().find(|(m, _)| m != model) {
                    return Err(exec_datafusion_err!(
                        "the executors ran different models ({model} on {writer}, {other} on {other_writer}); \
                         nothing was committed: give every executor the same --model"
                    ));
                }
                Some(model.clone())
            }
        };
        Self::of_files(run_id, model, files)
    }

    /// The manifest of run `run_id` committing `files` (which may come from earlier runs: an
    /// incremental run keeps the files whose rows have not changed), all made by `model`.
    pub fn of_files(run_id: &str, model: Option<String>, mut files: Vec<CommittedFile>) -> Result<Self> {
        // By first image: the files of one job read in sequence give its images in listing order.
        files.sort_by(|a, b| (&a.first_path, &a.file).cmp(&(&b.first_path, &b.file)));
        let mut starts = HashSet::new();
        for start in files.iter().filter_map(|f| f.first_path.as_deref()) {
            // Two attempts of one task in the result would mean its rows counted twice.
            if !starts.insert(start) {
                return Err(exec_datafusion_err!("the job returned two files starting at {start}"));
            }
        }
        Ok(Self {
            format: MANIFEST_FORMAT.to_owned(),
            run_id: run_id.to_owned(),
            rows: files.iter().map(|f| f.rows).sum(),
            failed: files.iter().map(|f| f.failed).sum(),
            model,
            files,
        })
    }
}

/// A features folder (`OUTPUT/features/`) in a local or remote store.
#[derive(Debug, Clone)]
pub struct FeaturesDir {
    location: Location,
}

impl FeaturesDir {
    pub fn new(location: Location) -> Self {
        Self { location }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn url(&self) -> &str {
        self.location.url()
    }

    /// The URL of a file in the folder.
    pub fn file_url(&self, file: &str) -> String {
        self.location.child_url(file)
    }

    /// Starts a run: checks that the folder can be written, so that a wrong bucket or a missing
    /// permission fails here, not in every task. The previous result stays committed.
    pub async fn begin(&self, lease: &Lease) -> Result<()> {
        lease.check().await.map_err(external)?;
        let check = async {
            self.location.put(WRITE_CHECK_FILE, Bytes::from_static(b"fruits")).await?;
            self.location.delete(WRITE_CHECK_FILE).await
        };
        check.await.map_err(|e| DataFusionError::from(e).context(format!("cannot write in {}", self.url())))?;
        Ok(())
    }

    /// Publishes `manifest` in place of the previous one, in one write: readers see the
    /// previous run or this one, never a mix. Refused unless `lease` is still held.
    pub async fn commit(&self, manifest: &Manifest, lease: &Lease) -> Result<()> {
        lease.check().await.map_err(external)?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.location.put(MANIFEST_FILE, json).await?;
        Ok(())
    }

    /// Deletes the files runs wrote here that the committed manifest does not list: earlier
    /// runs, failed attempts, killed runs. Nothing else is touched: files are recognised by
    /// their names (see [`PartFile`]). Returns the names deleted.
    pub async fn remove_leftovers(&self, lease: &Lease) -> Result<Vec<String>> {
        lease.check().await.map_err(external)?;
        let committed = self.manifest().await?;
        let keep: HashSet<&str> = committed.iter().flat_map(|m| m.files.iter().map(|f| f.file.as_str())).collect();
        let mut removed = Vec::new();
        for object in self.location.list().await? {
            let Some(name) = self.location.relative_name(&object.location) else { continue };
            let ours = name == WRITE_CHECK_FILE || PartFile::parse(&name).is_some() || is_worklist(&name);
            if ours && !keep.contains(name.as_str()) {
                self.location.delete_path(&object.location).await?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The committed manifest, or `None` if the folder holds no finished run.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        let Some(bytes) = self.location.get(MANIFEST_FILE).await? else {
            return Ok(None);
        };
        let url = self.url();
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| exec_datafusion_err!("{url}{MANIFEST_FILE} is not a fruits manifest: {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(exec_datafusion_err!(
                "{url}{MANIFEST_FILE} has format {}, this fruits reads {MANIFEST_FORMAT}",
                manifest.format
            ));
        }
        Ok(Some(manifest))
    }
}

/// The name of run `run`'s work list in its features folder: fruits' own, removed with the
/// leftovers if a killed run left it.
pub fn worklist_name(run: &RunId) -> String {
    format!("{WORKLIST_PREFIX}{run}.parquet")
}

/// Whether `name` (relative to a features folder) is a run's work list.
pub fn is_worklist(name: &str) -> bool {
    name.strip_prefix(WORKLIST_PREFIX)
        .and_then(|n| n.strip_suffix(".parquet"))
        .is_some_and(|r| RunId::parse(r).is_some())
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{BinaryArray, StringArray, UInt64Array};

    use super::*;

    /// Report rows `(file, rows, failed, first path)`, made by `model-a`.
    fn report(files: &[(&str, u64, u64, &str)]) -> RecordBatch {
        report_by(files, "model-a")
    }

    fn report_by(files: &[(&str, u64, u64, &str)], model: &str) -> RecordBatch {
        RecordBatch::try_new(
            write_report_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.0))),
                Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.1))),
                Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.2))),
                Arc::new(StringArray::from_iter_values(files.iter().map(|_| "host:1"))),
                Arc::new(StringArray::from_iter(files.iter().map(|f| (!f.3.is_empty()).then_some(f.3)))),
                Arc::new(StringArray::from_iter(files.iter().map(|f| (f.1 > 0).then_some(model)))),
                Arc::new(BinaryArray::from(vec![None::<&[u8]>; files.len()])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn manifest_sums_the_reports_in_listing_order() {
        let reports = [
            report(&[("part-r-b.parquet", 5, 1, "s3://b/Pear/1.jpg")]),
            report(&[("part-r-a.parquet", 3, 0, "s3://b/Apple/1.jpg")]),
        ];
        let manifest = Manifest::from_reports("r", &reports).unwrap();
        assert_eq!((manifest.rows, manifest.failed), (8, 1));
        assert_eq!(manifest.files[0].file, "part-r-a.parquet");
    }

    #[test]
    fn the_model_is_recorded_and_two_models_are_refused() {
        let one = [report(&[("part-r-a.parquet", 3, 0, "s3://b/A/1.jpg"), ("part-r-e.parquet", 0, 0, "")])];
        assert_eq!(Manifest::from_reports("r", &one).unwrap().model.as_deref(), Some("model-a"));
        let two = [
            report(&[("part-r-a.parquet", 3, 0, "s3://b/A/1.jpg")]),
            report_by(&[("part-r-b.parquet", 2, 0, "s3://b/B/1.jpg")], "model-b"),
        ];
        let err = Manifest::from_reports("r", &two).unwrap_err().to_string();
        assert!(err.contains("different models (model-a on host:1, model-b on host:1)"), "{err}");
        // A manifest of an earlier fruits, without the field, still reads.
        let old = r#"{"format": "fruits-features/1", "run_id": "r", "rows": 0, "failed": 0, "files": []}"#;
        assert_eq!(serde_json::from_str::<Manifest>(old).unwrap().model, None);
    }

    #[test]
    fn two_attempts_of_one_task_are_refused() {
        let reports = [report(&[
            ("part-r-a.parquet", 5, 0, "s3://b/Pear/1.jpg"),
            ("part-r-b.parquet", 5, 0, "s3://b/Pear/1.jpg"),
        ])];
        let err = Manifest::from_reports("r", &reports).unwrap_err();
        assert!(err.to_string().contains("two files starting at s3://b/Pear/1.jpg"), "{err}");
    }

    #[test]
    fn only_part_files_of_runs_are_recognised() {
        let run = RunId::new();
        let part = PartFile::new(&run);
        assert_eq!(PartFile::parse(&part.name()), Some(part.clone()));
        assert_eq!(PartFile::parse(&part.name()).unwrap().run, run);
        for other in [
            "part-00000.parquet",
            "readme.txt",
            "part-1764650000-abcdef.parquet",
            "part-1764650000-abcdef-0123456789ab.parquet.bak",
            "nested/part-1764650000-abcdef-0123456789ab.parquet",
            "part-1764650000-ABCDEF-0123456789ab.parquet",
        ] {
            assert_eq!(PartFile::parse(other), None, "{other}");
        }
        assert!(PartFile::parse("part-1764650000-abcdef-0123456789ab.parquet").is_some());
    }

    #[tokio::test]
    async fn the_previous_result_stays_until_the_commit_and_only_run_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let features = dir.path().join("features");
        std::fs::create_dir_all(features.join("nested")).unwrap();
        let (old, new) = (PartFile::new(&RunId::new()), PartFile::new(&RunId::new()));
        let failed_attempt = PartFile { attempt: "0123456789ab".into(), ..new.clone() };
        let user_files = ["readme.txt", "nested/x", "part-00000.parquet"];
        for name in [old.name(), new.name(), failed_attempt.name()].iter().map(String::as_str).chain(user_files) {
            std::fs::write(features.join(name), b"x").unwrap();
        }
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let folder = FeaturesDir::new(Location::parse(&features.display().to_string(), &runtime).unwrap());
        let out = Location::parse(&dir.path().display().to_string(), &runtime).unwrap();
        let lease = Lease::acquire(&out, new.run.as_str()).await.unwrap();

        let first =
            Manifest::from_reports(old.run.as_str(), &[report(&[(&old.name(), 1, 0, "file:///a/b.jpg")])]).unwrap();
        folder.commit(&first, &lease).await.unwrap();
        folder.begin(&lease).await.unwrap();
        assert_eq!(folder.manifest().await.unwrap(), Some(first), "begin leaves the previous result committed");

        let second =
            Manifest::from_reports(new.run.as_str(), &[report(&[(&new.name(), 1, 0, "file:///a/b.jpg")])]).unwrap();
        folder.commit(&second, &lease).await.unwrap();
        let mut removed = folder.remove_leftovers(&lease).await.unwrap();
        removed.sort();
        let mut expected = vec![old.name(), failed_attempt.name()];
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = walk(&features);
        left.sort();
        let mut kept = vec!["_SUCCESS".to_owned(), new.name(), "nested/x".into(), "part-00000.parquet".into()];
        kept.push("readme.txt".into());
        kept.sort();
        assert_eq!(left, kept);
        assert_eq!(folder.manifest().await.unwrap(), Some(second));

        lease.release().await.unwrap();
        let other = Lease::acquire(&out, "someone-else").await.unwrap();
        let err = folder.remove_leftovers(&lease_of(&out).await).await.unwrap_err();
        assert!(err.to_string().contains("lost the lease"), "{err}");
        other.release().await.unwrap();
    }

    /// A lease value that does not hold `out` (for the refusal check).
    async fn lease_of(out: &Location) -> Lease {
        Lease::stale_for_tests(out, "not-the-holder")
    }

    fn walk(root: &std::path::Path) -> Vec<String> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
            .collect()
    }
}
