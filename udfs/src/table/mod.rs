//! The `images` table: one row per image file under a location (a local directory or an
//! object-store prefix such as `s3://bucket/photos/`), with the label taken from the folder the
//! file sits in.
//!
//! Listing happens when the query is planned (on the scheduler in a cluster). The scan is a
//! `DataSourceExec` over a `FileScanConfig` whose file groups are the units of work: Ballista
//! turns each group into its own task, so a thousand executors can share a million files. A
//! custom leaf plan would not be split this way: every task would read every file.

mod listing;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{Statistics, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

pub use listing::{ImageFile, list_images};
pub(crate) use source::ImageSource;

use crate::location::Location;

/// Name under which `fruits` registers the table.
pub const IMAGES_TABLE: &str = "images";

/// The columns of `images`: `path` (full URL of the file), `label` (name of its parent
/// folder, NULL for a file at the root of a bucket) and `content` (the file's bytes, NULL if the
/// file disappeared between listing and reading).
pub(crate) fn images_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("content", DataType::Binary, true),
    ]))
}

/// How the listed files are cut into units of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most files in one partition (one Ballista task). Small enough that a lost executor costs
    /// little rework and the last wave of tasks is short; large enough that per-task overhead
    /// (tens of milliseconds) stays small against a few seconds of inference.
    pub files_per_partition: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { files_per_partition: 256 }
    }
}

/// The `images` table provider.
#[derive(Debug, Clone)]
pub struct ImagesTable {
    location: ListingTableUrl,
    options: ScanOptions,
}

impl ImagesTable {
    /// `location` is a directory path (absolute or relative) or a URL such as `s3://bucket/prefix`.
    pub fn try_new(location: &str, options: ScanOptions) -> Result<Self> {
        if options.files_per_partition == 0 {
            return plan_err!("files_per_partition must be at least 1");
        }
        Ok(Self { location: ListingTableUrl::parse(location)?, options })
    }

    /// The location as a URL string (`file:///...` or `s3://...`), as it travels in plans.
    pub fn location(&self) -> &str {
        self.location.as_str()
    }

    pub fn options(&self) -> ScanOptions {
        self.options
    }

    /// Groups files into partitions: as many as `files_per_partition` asks, rounded up to a
    /// multiple of `target_partitions` so that the last wave of tasks keeps every slot busy.
    fn file_groups(&self, files: Vec<ImageFile>, target_partitions: usize) -> Vec<FileGroup> {
        if files.is_empty() {
            return Vec::new();
        }
        let slots = target_partitions.max(1);
        let needed = files.len().div_ceil(self.options.files_per_partition);
        let groups = needed.div_ceil(slots) * slots;
        let groups = groups.min(files.len());
        let per_group = files.len().div_ceil(groups);
        let mut files = files.into_iter().map(ImageFile::into_partitioned_file).peekable();
        let mut out = Vec::with_capacity(groups);
        while files.peek().is_some() {
            out.push(FileGroup::new(files.by_ref().take(per_group).collect()));
        }
        out
    }
}

#[async_trait]
impl TableProvider for ImagesTable {
    fn schema(&self) -> SchemaRef {
        images_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store_url = self.location.object_store();
        let folder = Location::parse(self.location.as_str(), state.runtime_env())?;
        let files = list_images(&folder).await?;
        let total = files.len();
        let groups = self.file_groups(files, state.config().target_partitions());
        log::info!("images: {total} files under {} in {} partitions", self.location, groups.len());

        // Exactly one row per file: the count is exact, so `count(*)` needs no read at all.
        let schema = images_schema();
        let statistics = Statistics::new_unknown(&schema).with_num_rows(Precision::Exact(total));
        let source = Arc::new(ImageSource::new(TableSchema::from(schema)));
        let config = FileScanConfigBuilder::new(store_url, source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_limit(limit)
            .with_projection_indices(projection.cloned())?
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<ImageFile> {
        (0..n).map(|i| ImageFile::new(format!("data/Apple/{i}.jpg").into(), 10)).collect()
    }

    fn sizes(groups: &[FileGroup]) -> Vec<usize> {
        groups.iter().map(FileGroup::len).collect()
    }

    #[test]
    fn groups_are_a_multiple_of_the_task_slots() {
        let table = ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 256 }).unwrap();
        let groups = table.file_groups(files(4835), 2);
        assert_eq!(groups.len(), 20);
        assert_eq!(sizes(&groups).iter().sum::<usize>(), 4835);
        assert!(sizes(&groups).iter().all(|&n| n <= 256));
    }

    #[test]
    fn few_files_still_use_every_slot_but_no_empty_group() {
        let table = ImagesTable::try_new("/tmp", ScanOptions::default()).unwrap();
        assert_eq!(sizes(&table.file_groups(files(3), 8)), vec![1, 1, 1]);
        assert_eq!(sizes(&table.file_groups(files(10), 4)), vec![3, 3, 3, 1]);
        assert!(table.file_groups(Vec::new(), 4).is_empty());
    }

    #[test]
    fn zero_files_per_partition_is_refused() {
        let err = ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 0 }).unwrap_err();
        assert!(err.to_string().contains("files_per_partition"));
    }
}
