//! The commit: the `_SUCCESS` manifest of a features folder, the only thing readers trust.

use std::collections::HashSet;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::common::exec_datafusion_err;
use datafusion::error::{DataFusionError, Result};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::write_report_schema;
use crate::location::Location;

/// Name of the manifest inside the features folder.
pub const MANIFEST_FILE: &str = "_SUCCESS";
/// Written into every manifest, so a reader can refuse a layout it does not know.
pub const MANIFEST_FORMAT: &str = "fruits-features/1";
/// Written and removed by [`FeaturesDir::begin`] to check that the folder can be written.
const WRITE_CHECK_FILE: &str = "_write_check";

/// The committed result of a run: every file of it, with its row counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub run_id: String,
    /// Rows in all files: one per listed image.
    pub rows: u64,
    /// Rows whose features are NULL (the image could not be featurized; `error` says why).
    pub failed: u64,
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
        let mut files = Vec::new();
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
            for row in 0..batch.num_rows() {
                files.push(CommittedFile {
                    file: names.value(row).to_owned(),
                    rows: rows.value(row),
                    failed: failed.value(row),
                    written_by: writers.value(row).to_owned(),
                    first_path: first_paths.is_valid(row).then(|| first_paths.value(row).to_owned()),
                });
            }
        }
        // Listing order: the files read in sequence give the images in listing order.
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

    /// Starts a run: checks that the folder can be written (so a wrong bucket or missing
    /// permission fails here, not in every task), then withdraws the previous manifest, so that
    /// if this run fails, no reader takes the folder for a finished result.
    pub async fn begin(&self) -> Result<()> {
        let check = async {
            self.location.put(WRITE_CHECK_FILE, Bytes::from_static(b"fruits")).await?;
            self.location.delete(WRITE_CHECK_FILE).await
        };
        check.await.map_err(|e| DataFusionError::from(e).context(format!("cannot write in {}", self.url())))?;
        self.location.delete(MANIFEST_FILE).await?;
        Ok(())
    }

    /// Publishes `manifest`, then deletes every other file of the folder (earlier runs, failed
    /// attempts). Returns how many were deleted.
    pub async fn commit(&self, manifest: &Manifest) -> Result<usize> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.location.put(MANIFEST_FILE, json).await?;

        let keep: HashSet<&str> =
            manifest.files.iter().map(|f| f.file.as_str()).chain(std::iter::once(MANIFEST_FILE)).collect();
        let stale: Vec<Path> = self
            .location
            .list()
            .await?
            .into_iter()
            .map(|meta| meta.location)
            .filter(|path| match self.location.relative_name(path) {
                // Nested objects are never written by a run.
                Some(name) => name.contains('/') || !keep.contains(name.as_str()),
                None => false,
            })
            .collect();
        for path in &stale {
            self.location.delete_path(path).await?;
        }
        Ok(stale.len())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{BinaryArray, StringArray, UInt64Array};

    use super::*;

    /// Report rows `(file, rows, failed, first path)`.
    fn report(files: &[(&str, u64, u64, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            write_report_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.0))),
                Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.1))),
                Arc::new(UInt64Array::from_iter_values(files.iter().map(|f| f.2))),
                Arc::new(StringArray::from_iter_values(files.iter().map(|_| "host:1"))),
                Arc::new(StringArray::from_iter(files.iter().map(|f| (!f.3.is_empty()).then_some(f.3)))),
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
    fn two_attempts_of_one_task_are_refused() {
        let reports = [report(&[
            ("part-r-a.parquet", 5, 0, "s3://b/Pear/1.jpg"),
            ("part-r-b.parquet", 5, 0, "s3://b/Pear/1.jpg"),
        ])];
        let err = Manifest::from_reports("r", &reports).unwrap_err();
        assert!(err.to_string().contains("two files starting at s3://b/Pear/1.jpg"), "{err}");
    }

    #[tokio::test]
    async fn commit_keeps_only_the_manifest_files() {
        let dir = tempfile::tempdir().unwrap();
        let features = dir.path().join("features");
        std::fs::create_dir_all(features.join("nested")).unwrap();
        for name in ["part-old-x.parquet", "part-new-a.parquet", "part-new-b.parquet", "nested/x"] {
            std::fs::write(features.join(name), b"x").unwrap();
        }
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let folder = FeaturesDir::new(Location::parse(&features.display().to_string(), &runtime).unwrap());
        assert_eq!(folder.manifest().await.unwrap(), None);

        let manifest =
            Manifest::from_reports("new", &[report(&[("part-new-a.parquet", 1, 0, "file:///a/b.jpg")])]).unwrap();
        folder.begin().await.unwrap();
        assert_eq!(folder.commit(&manifest).await.unwrap(), 3);
        let mut left: Vec<_> = std::fs::read_dir(&features)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| features.join(name).is_file())
            .collect();
        left.sort();
        assert_eq!(left, ["_SUCCESS", "part-new-a.parquet"]);
        assert_eq!(folder.manifest().await.unwrap(), Some(manifest));

        folder.begin().await.unwrap();
        assert_eq!(folder.manifest().await.unwrap(), None);
    }
}
