//! The `images` table: one row per image file under a location (a local directory or an
//! object-store prefix such as `s3://bucket/photos/`), with the label taken from the folder the
//! file sits in.
//!
//! Listing happens when the query is planned (on the scheduler in a cluster). The scan is a
//! `DataSourceExec` over a `FileScanConfig` whose file groups are the units of work: Ballista
//! turns each group into its own task, so a thousand executors can share a million files. A
//! custom leaf plan would not be split this way: every task would read every file.

mod listing;
mod prune;
mod source;
mod worklist;

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::TimestampNanosecondArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::common::stats::Precision;
use datafusion::common::{Statistics, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;

pub use listing::{Entry, ImageFile, Listing, Skipped, list_entries, list_images};
pub(crate) use source::ImageSource;
pub(crate) use worklist::Worklist;
pub use worklist::{WorklistCounts, WorklistWriter};

use crate::location::Location;

/// Name under which `fruits` registers the table.
pub const IMAGES_TABLE: &str = "images";

/// Name of the column saying why `content` is NULL.
pub const READ_ERROR: &str = "read_error";

/// The columns of `images`: `path` (full URL of the file, as people name it), `label` (name of
/// its parent folder, NULL for a file at the root of a bucket), `content` (the file's bytes,
/// NULL when it was not read), then the version the listing saw: `size`, `modified` and `etag`
/// (NULL on a local disk); last `read_error`, set when the listing already knows the file is
/// not to be read (above the size limit, or an entry the listing could not look into). The
/// version travels with the features, so that the next run knows which images changed.
///
/// `read_error` is decided with the listing but is not a partition column: one scan file of
/// a work list ([`worklist`]) holds many entries, each with its own.
pub(crate) fn images_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("content", DataType::Binary, true),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified", modified_type(), true),
        Field::new("etag", DataType::Utf8, true),
        Field::new(READ_ERROR, DataType::Utf8, true),
    ]))
}

pub(crate) fn images_table_schema() -> TableSchema {
    TableSchema::builder(images_file_schema()).build()
}

/// Type of the `modified` column: nanoseconds, so that a local file rewritten within the same
/// second still counts as changed.
pub(crate) fn modified_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(MODIFIED_TIME_ZONE.into()))
}

const MODIFIED_TIME_ZONE: &str = "UTC";

/// A `modified` column of the listed times of `metas`.
pub(crate) fn modified_array<'a>(metas: impl IntoIterator<Item = &'a ObjectMeta>) -> TimestampNanosecondArray {
    TimestampNanosecondArray::from_iter(metas.into_iter().map(|m| m.last_modified.timestamp_nanos_opt()))
        .with_timezone(MODIFIED_TIME_ZONE)
}

/// How the listed files are cut into units of work, and which are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most files in one partition (one Ballista task). Small enough that a lost executor costs
    /// little rework and the last wave of tasks is short; large enough that per-task overhead
    /// (tens of milliseconds) stays small against a few seconds of inference.
    pub files_per_partition: usize,
    /// Files larger than this are not read: their row says why. A photo is a few megabytes; a
    /// file of gigabytes under an image name is a mistake or an attack, and one file of 2 GiB
    /// or more does not fit an Arrow binary column at all.
    pub max_image_bytes: u64,
}

impl ScanOptions {
    /// The largest `max_image_bytes` accepted: well below Arrow's 2 GiB per binary array, with
    /// room for the decoded pixels.
    pub const MAX_IMAGE_BYTES_LIMIT: u64 = 1 << 30;
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { files_per_partition: 256, max_image_bytes: 256 << 20 }
    }
}

/// The `images` table provider.
#[derive(Debug, Clone)]
pub struct ImagesTable {
    location: ListingTableUrl,
    options: ScanOptions,
    /// URL of a work list ([`WorklistWriter`]): the files to scan, instead of listing
    /// `location` when the scan is planned.
    worklist: Option<String>,
}

impl ImagesTable {
    /// `location` is a directory path (absolute or relative) or a URL such as `s3://bucket/prefix`.
    pub fn try_new(location: &str, options: ScanOptions) -> Result<Self> {
        if options.files_per_partition == 0 {
            return plan_err!("files_per_partition must be at least 1");
        }
        if !(1..=ScanOptions::MAX_IMAGE_BYTES_LIMIT).contains(&options.max_image_bytes) {
            return plan_err!(
                "max_image_bytes must be between 1 and {} (1 GiB), not {}",
                ScanOptions::MAX_IMAGE_BYTES_LIMIT,
                options.max_image_bytes
            );
        }
        Ok(Self { location: ListingTableUrl::parse(location)?, options, worklist: None })
    }

    /// The same table over the files of the work list at `url` (written by whoever listed
    /// `location`), not over a new listing.
    pub fn with_worklist(self, url: impl Into<String>) -> Self {
        Self { worklist: Some(url.into()), ..self }
    }

    pub fn worklist(&self) -> Option<&str> {
        self.worklist.as_deref()
    }

    /// The location as a URL string (`file:///...` or `s3://...`), as it travels in plans.
    pub fn location(&self) -> &str {
        self.location.as_str()
    }

    pub fn options(&self) -> ScanOptions {
        self.options
    }

    /// The scan files of `listing`, one per entry; each carries its `read_error` as its one
    /// partition value (DataFusion's encoding of a file keeps it), for the opener.
    fn scan_files(&self, listing: Listing) -> Vec<PartitionedFile> {
        let limit = self.options.max_image_bytes;
        listing
            .into_entries()
            .map(|entry| {
                let reason = entry.read_error(limit);
                // From the listed path as is: built from its text, it would be percent-encoded a
                // second time and name another object.
                PartitionedFile::new_from_meta(entry.meta().into_owned())
                    .with_partition_values(vec![ScalarValue::Utf8(reason)])
            })
            .collect()
    }

    /// The listing path's partitions: `files` cut by [`partition_ranges`].
    fn file_groups(&self, files: Vec<PartitionedFile>, target_partitions: usize) -> Vec<FileGroup> {
        let ranges = partition_ranges(files.len(), self.options.files_per_partition, target_partitions);
        let mut files = files.into_iter();
        ranges.into_iter().map(|range| FileGroup::new(files.by_ref().take(range.len()).collect())).collect()
    }

    /// The scan of the listing made now (on the scheduler in a cluster): one scan file per
    /// entry, pruned by the filters on listing columns.
    async fn scan_listing(
        &self,
        state: &dyn Session,
        filters: &[Expr],
    ) -> Result<(Vec<FileGroup>, usize, ImageSource)> {
        let store_url = self.location.object_store();
        let folder = Location::parse(self.location.as_str(), state.runtime_env())?;
        let listing = list_images(&folder).await?;
        for entry in &listing.skipped {
            log::warn!("images: skipped {}: {}", folder.url_of(&entry.location), entry.reason);
        }
        let (images, skipped) = (listing.images.len(), listing.skipped.len());
        let files = prune::prune(self.scan_files(listing), filters, &store_url, state)?;
        let total = files.len();
        let groups = self.file_groups(files, state.config().target_partitions());
        log::info!(
            "images: {images} files under {} ({skipped} entries skipped) in {} partitions",
            self.location,
            groups.len()
        );
        Ok((groups, total, ImageSource::new(images_table_schema())))
    }

    /// The scan of the work list at `url`: each partition a range of its rows, read by the
    /// task. The filters are not used to prune: they apply to the rows.
    async fn scan_worklist(&self, url: &str, state: &dyn Session) -> Result<(Vec<FileGroup>, usize, ImageSource)> {
        let worklist = Worklist::at(url, state.runtime_env(), self.options.max_image_bytes)?;
        let (groups, rows) =
            worklist.slices(self.options.files_per_partition, state.config().target_partitions()).await?;
        log::info!("images: {rows} entries of the work list {url} in {} partitions", groups.len());
        Ok((groups, rows, ImageSource::new(images_table_schema()).with_worklist(worklist)))
    }
}

/// How `count` entries are cut into partitions: as many as `files_per_partition` asks, rounded
/// up to a multiple of `target_partitions` so that the last wave of tasks keeps every slot
/// busy, and contiguous, so that the order of the entries is the order of the rows.
pub(crate) fn partition_ranges(
    count: usize,
    files_per_partition: usize,
    target_partitions: usize,
) -> Vec<Range<usize>> {
    if count == 0 {
        return Vec::new();
    }
    let slots = target_partitions.max(1);
    let needed = count.div_ceil(files_per_partition.max(1));
    let groups = (needed.div_ceil(slots) * slots).min(count);
    let per_group = count.div_ceil(groups);
    (0..count).step_by(per_group).map(|start| start..(start + per_group).min(count)).collect()
}

#[async_trait]
impl TableProvider for ImagesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(images_table_schema().table_schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters on the listing's columns prune files at planning; they are applied again to
    /// the rows (`Inexact`), so a filter's meaning never depends on the pruning.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if prune::prunable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (groups, total, source) = match &self.worklist {
            Some(url) => self.scan_worklist(url, state).await?,
            None => self.scan_listing(state, filters).await?,
        };
        // Exactly one row per entry: the count is exact, so `count(*)` needs no read at all.
        let table_schema = images_table_schema();
        let statistics = Statistics::new_unknown(table_schema.table_schema()).with_num_rows(Precision::Exact(total));
        let config = FileScanConfigBuilder::new(self.location.object_store(), Arc::new(source))
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

    fn sizes(count: usize, files_per_partition: usize, slots: usize) -> Vec<usize> {
        let ranges = partition_ranges(count, files_per_partition, slots);
        // Contiguous and complete.
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!((ranges.first().map_or(0, |r| r.start), ranges.last().map_or(0, |r| r.end)), (0, count));
        ranges.iter().map(ExactSizeIterator::len).collect()
    }

    #[test]
    fn groups_are_a_multiple_of_the_task_slots() {
        let groups = sizes(4835, 256, 2);
        assert_eq!(groups.len(), 20);
        assert!(groups.iter().all(|&n| n <= 256));
    }

    #[test]
    fn few_files_still_use_every_slot_but_no_empty_group() {
        assert_eq!(sizes(3, 256, 8), vec![1, 1, 1]);
        assert_eq!(sizes(10, 256, 4), vec![3, 3, 3, 1]);
        assert!(sizes(0, 256, 4).is_empty());
    }

    #[test]
    fn the_listing_path_cuts_its_files_by_the_same_ranges() {
        let table = ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 4, ..Default::default() }).unwrap();
        let listing = Listing {
            images: (0..10).map(|i| ImageFile::new(format!("data/Apple/{i}.jpg").into(), 10)).collect(),
            skipped: Vec::new(),
        };
        let groups = table.file_groups(table.scan_files(listing), 2);
        assert_eq!(groups.iter().map(FileGroup::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(groups[1].files()[0].object_meta.location.as_ref(), "data/Apple/3.jpg");
    }

    #[test]
    fn zero_files_per_partition_is_refused() {
        let err =
            ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 0, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("files_per_partition"));
        let huge = ScanOptions { max_image_bytes: 2 << 30, ..Default::default() };
        assert!(ImagesTable::try_new("/tmp", huge).unwrap_err().to_string().contains("max_image_bytes"));
    }

    #[tokio::test]
    async fn filters_on_listing_columns_prune_files_when_planning() {
        use datafusion::datasource::physical_plan::FileScanConfig;
        use datafusion::prelude::{SessionContext, col, lit};

        let dir = tempfile::tempdir().unwrap();
        for (label, name, bytes) in [("A", "1.jpg", 1), ("B", "1.jpg", 2), ("B", "2.jpg", 3)] {
            std::fs::create_dir_all(dir.path().join(label)).unwrap();
            std::fs::write(dir.path().join(label).join(name), vec![0u8; bytes]).unwrap();
        }
        let table = ImagesTable::try_new(&dir.path().display().to_string(), ScanOptions::default()).unwrap();
        let state = SessionContext::new().state();
        let scanned = |filters: Vec<Expr>| {
            let (table, state) = (&table, &state);
            async move {
                let plan = table.scan(state, None, &filters, None).await.unwrap();
                let exec = plan.downcast_ref::<DataSourceExec>().unwrap();
                let config = exec.data_source().downcast_ref::<FileScanConfig>().unwrap();
                config.file_groups.iter().map(FileGroup::len).sum::<usize>()
            }
        };
        assert_eq!(scanned(vec![]).await, 3);
        assert_eq!(scanned(vec![col("images.label").eq(lit("B"))]).await, 2);
        assert_eq!(scanned(vec![col("label").eq(lit("B")), col("size").gt(lit(2u64))]).await, 1);
        assert_eq!(scanned(vec![col("path").like(lit("%/A/%"))]).await, 1);
        // A filter on the content cannot prune: every file is scanned, the filter runs on rows.
        let filters = [col("content").is_null()];
        assert!(!prune::prunable(&filters[0]));
        assert_eq!(scanned(filters.to_vec()).await, 3);
        let pushdown = table.supports_filters_pushdown(&[&col("label").eq(lit("B")), &filters[0]]).unwrap();
        assert_eq!(pushdown, [TableProviderFilterPushDown::Inexact, TableProviderFilterPushDown::Unsupported]);
    }

    #[test]
    fn files_above_the_limit_and_skipped_entries_are_rows_that_say_why() {
        let options = ScanOptions { max_image_bytes: 1000, ..Default::default() };
        let table = ImagesTable::try_new("/tmp", options).unwrap();
        let listing = Listing {
            images: vec![ImageFile::new("a/small.jpg".into(), 1000), ImageFile::new("a/huge.jpg".into(), 3 << 30)],
            skipped: vec![Skipped { location: "a/locked".into(), reason: "cannot read it: denied".into() }],
        };
        let reasons: Vec<ScalarValue> =
            table.scan_files(listing).into_iter().map(|f| f.partition_values[0].clone()).collect();
        assert_eq!(
            reasons,
            [
                ScalarValue::Utf8(None),
                ScalarValue::Utf8(Some("file of 3.0 GiB is above the limit of 1000 B (--max-image-bytes)".into())),
                ScalarValue::Utf8(Some("skipped while listing: cannot read it: denied".into())),
            ]
        );
    }
}
