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

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::TimestampNanosecondArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{Statistics, exec_datafusion_err, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;

pub use listing::{ImageFile, Listing, Skipped, list_images};
pub(crate) use source::ImageSource;

use crate::location::Location;

/// Name under which `fruits` registers the table.
pub const IMAGES_TABLE: &str = "images";

/// The columns read from each file: `path` (full URL of the file, as people name it), `label`
/// (name of its parent folder, NULL for a file at the root of a bucket), `content` (the
/// file's bytes, NULL when it was not read), then the version the listing saw: `size`,
/// `modified` and `etag` (NULL on a local disk). The version travels with the features, so
/// that the next run knows which images changed.
pub(crate) fn images_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("content", DataType::Binary, true),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified", modified_type(), true),
        Field::new("etag", DataType::Utf8, true),
    ]))
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

/// Name of the column saying why `content` is NULL.
pub const READ_ERROR: &str = "read_error";

/// The columns of `images`: those of [`images_file_schema`], then `read_error`, set when the
/// listing already knows the file is not to be read (above the size limit, or an entry the
/// listing could not look into). It travels with each scan file as a partition value, so the
/// decision made when planning reaches the executors with the plan.
pub(crate) fn images_table_schema() -> TableSchema {
    let read_error = Arc::new(Field::new(READ_ERROR, DataType::Utf8, true));
    TableSchema::builder(images_file_schema()).with_table_partition_cols(vec![read_error]).build()
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
    /// URL of a work list ([`Listing::to_parquet`]): the files to scan, instead of listing
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

    /// The scan files of `listing`: every image, the ones above the size limit marked with
    /// the reason they are not read, then every skipped entry with its reason. Each is one row.
    fn scan_files(&self, listing: Listing) -> Vec<PartitionedFile> {
        let limit = self.options.max_image_bytes;
        let images = listing.images.into_iter().map(|image| {
            let reason = (image.size() > limit).then(|| {
                format!("file of {} is above the limit of {} (--max-image-bytes)", bytes(image.size()), bytes(limit))
            });
            image.into_partitioned_file().with_partition_values(vec![ScalarValue::Utf8(reason)])
        });
        let skipped = listing.skipped.into_iter().map(|entry| {
            let reason = format!("skipped while listing: {}", entry.reason);
            PartitionedFile::new_from_meta(entry.meta())
                .with_partition_values(vec![ScalarValue::Utf8(Some(reason))])
        });
        images.chain(skipped).collect()
    }

    /// Groups files into partitions: as many as `files_per_partition` asks, rounded up to a
    /// multiple of `target_partitions` so that the last wave of tasks keeps every slot busy.
    fn file_groups(&self, files: Vec<PartitionedFile>, target_partitions: usize) -> Vec<FileGroup> {
        if files.is_empty() {
            return Vec::new();
        }
        let slots = target_partitions.max(1);
        let needed = files.len().div_ceil(self.options.files_per_partition);
        let groups = needed.div_ceil(slots) * slots;
        let groups = groups.min(files.len());
        let per_group = files.len().div_ceil(groups);
        let mut files = files.into_iter().peekable();
        let mut out = Vec::with_capacity(groups);
        while files.peek().is_some() {
            out.push(FileGroup::new(files.by_ref().take(per_group).collect()));
        }
        out
    }
}

/// The listing in the work list at `url`.
async fn read_worklist(url: &str, runtime: &Arc<datafusion::execution::runtime_env::RuntimeEnv>) -> Result<Listing> {
    let (folder, name) = Location::of_file(url, runtime)?;
    let bytes = folder
        .get(&name)
        .await?
        .ok_or_else(|| exec_datafusion_err!("the work list {url} is gone (was the run stopped?)"))?;
    Listing::from_parquet(bytes)
}

/// `123 B`, `4.5 MiB`, `2.0 GiB`: sizes in messages.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
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
            .map(|f| if prune::prunable(f) { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store_url = self.location.object_store();
        let folder = Location::parse(self.location.as_str(), state.runtime_env())?;
        let listing = match &self.worklist {
            Some(url) => read_worklist(url, state.runtime_env()).await?,
            None => list_images(&folder).await?,
        };
        // Whoever wrote a work list listed the input and warned already.
        for entry in listing.skipped.iter().filter(|_| self.worklist.is_none()) {
            log::warn!("images: skipped {}: {}", folder.url_of(&entry.location), entry.reason);
        }
        let (images, skipped) = (listing.images.len(), listing.skipped.len());
        let files = prune::prune(self.scan_files(listing), filters, &store_url, state)?;
        let total = files.len();
        let groups = self.file_groups(files, state.config().target_partitions());
        log::info!("images: {images} files under {} ({skipped} entries skipped) in {} partitions", self.location, groups.len());

        // Exactly one row per entry: the count is exact, so `count(*)` needs no read at all.
        let table_schema = images_table_schema();
        let statistics = Statistics::new_unknown(table_schema.table_schema()).with_num_rows(Precision::Exact(total));
        let source = Arc::new(ImageSource::new(table_schema));
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

    fn files(n: usize) -> Vec<PartitionedFile> {
        (0..n).map(|i| ImageFile::new(format!("data/Apple/{i}.jpg").into(), 10).into_partitioned_file()).collect()
    }

    fn sizes(groups: &[FileGroup]) -> Vec<usize> {
        groups.iter().map(FileGroup::len).collect()
    }

    #[test]
    fn groups_are_a_multiple_of_the_task_slots() {
        let table = ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 256, ..Default::default() }).unwrap();
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
        let err = ImagesTable::try_new("/tmp", ScanOptions { files_per_partition: 0, ..Default::default() }).unwrap_err();
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
