//! The work list of a run: the entries a client decided to featurize, written as a Parquet file
//! beside the output while it lists them, so that the input is listed once per run and the scan
//! planned elsewhere (on the scheduler, in a cluster) reads exactly those entries.
//!
//! Neither side holds the list. The client writes it in batches as the listing goes. The scan's
//! partitions are row ranges of the file ([`Worklist::slices`]): the plan carries one file and
//! two numbers per task, and each task reads its own rows. Planned as one scan file per image,
//! a million images cost the scheduler 1.5 GB and every task a plan of all its files.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use chrono::DateTime;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampNanosecondType, UInt64Type};
use datafusion::common::exec_datafusion_err;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileGroup;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder};
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::listing::{Entry, ImageFile, Skipped};
use super::{modified_array, modified_type, partition_ranges};
use crate::location::{Location, StoreError, parquet_reader};
use crate::sink::parquet_writer_properties;

/// Rows per batch written and read: a few megabytes of entries at a time.
const ROWS_PER_BATCH: usize = 8192;

/// One row per entry: `location` is the store path as listed (encoded as the store encodes
/// it); `skipped` the reason an entry could not be listed, NULL for an image.
fn worklist_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("location", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified", modified_type(), true),
        Field::new("etag", DataType::Utf8, true),
        Field::new("skipped", DataType::Utf8, true),
    ]))
}

/// Writes a work list as its entries come, [`ROWS_PER_BATCH`] at a time, as a streaming upload:
/// the file appears when [`Self::finish`] completes it.
pub struct WorklistWriter {
    url: String,
    writer: AsyncArrowWriter<BufWriter>,
    pending: Vec<Entry>,
    counts: WorklistCounts,
}

/// What a work list holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorklistCounts {
    pub images: u64,
    pub skipped: u64,
}

impl WorklistCounts {
    /// Its rows: one per entry.
    pub fn rows(&self) -> u64 {
        self.images + self.skipped
    }
}

impl WorklistWriter {
    /// A new work list `name` in `folder`.
    pub fn create(folder: &Location, name: &str) -> Result<Self> {
        let writer =
            AsyncArrowWriter::try_new(folder.upload(name), worklist_schema(), Some(parquet_writer_properties()))?;
        Ok(Self {
            url: folder.child_url(name),
            writer,
            pending: Vec::with_capacity(ROWS_PER_BATCH),
            counts: WorklistCounts::default(),
        })
    }

    pub async fn push(&mut self, entry: Entry) -> Result<()> {
        match &entry {
            Entry::Image(_) => self.counts.images += 1,
            Entry::Skipped(_) => self.counts.skipped += 1,
        }
        self.pending.push(entry);
        if self.pending.len() == ROWS_PER_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let metas: Vec<Cow<'_, ObjectMeta>> = self.pending.iter().map(Entry::meta).collect();
        let reasons = self.pending.iter().map(|entry| match entry {
            Entry::Image(_) => None,
            Entry::Skipped(skipped) => Some(skipped.reason.as_str()),
        });
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(metas.iter().map(|m| m.location.as_ref()))),
            Arc::new(UInt64Array::from_iter_values(metas.iter().map(|m| m.size))),
            Arc::new(modified_array(metas.iter().map(AsRef::as_ref))),
            Arc::new(StringArray::from_iter(metas.iter().map(|m| m.e_tag.as_deref()))),
            Arc::new(StringArray::from_iter(reasons)),
        ];
        self.writer.write(&RecordBatch::try_new(worklist_schema(), columns)?).await?;
        self.pending.clear();
        Ok(())
    }

    /// Completes the file; returns what it holds and its URL, for [`super::ImagesTable::with_worklist`].
    pub async fn finish(mut self) -> Result<(WorklistCounts, String)> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        self.writer.close().await?;
        Ok((self.counts, self.url))
    }
}

/// A work list as a scan reads it.
#[derive(Debug, Clone)]
pub(crate) struct Worklist {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The largest file read (`--max-image-bytes`): the rows of larger ones say so.
    max_image_bytes: u64,
}

impl Worklist {
    pub(crate) fn at(url: &str, runtime: &RuntimeEnv, max_image_bytes: u64) -> Result<Self> {
        let (folder, name) = Location::of_file(url, runtime)?;
        Ok(Self { url: url.to_owned(), path: folder.path(&name), store: Arc::clone(folder.store()), max_image_bytes })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn max_image_bytes(&self) -> u64 {
        self.max_image_bytes
    }

    /// The scan's partitions (see [`partition_ranges`]), each one scan file: the work list with
    /// the range of its rows as the file's range; and the number of rows.
    pub(crate) async fn slices(
        &self,
        files_per_partition: usize,
        target_partitions: usize,
    ) -> Result<(Vec<FileGroup>, usize)> {
        let meta = match self.store.head(&self.path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(exec_datafusion_err!("the work list {} is gone (was the run stopped?)", self.url));
            }
            Err(error) => return Err(StoreError::Store { action: "read", url: self.url.clone(), error }.into()),
        };
        let reader = parquet_reader(Arc::clone(&self.store), self.path.clone(), Some(meta.size));
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        let rows = usize::try_from(builder.metadata().file_metadata().num_rows())
            .map_err(|_| exec_datafusion_err!("the work list {} has a negative row count", self.url))?;
        let groups = partition_ranges(rows, files_per_partition, target_partitions)
            .into_iter()
            .map(|range| {
                let file =
                    PartitionedFile::new_from_meta(meta.clone()).with_range(range.start as i64, range.end as i64);
                FileGroup::new(vec![file])
            })
            .collect();
        Ok((groups, rows))
    }

    /// The entries of the slice `file` (one of [`Self::slices`]), reading only the row groups
    /// that hold them.
    pub(crate) async fn read(&self, file: &PartitionedFile) -> Result<Vec<Entry>> {
        let range =
            file.range.as_ref().ok_or_else(|| exec_datafusion_err!("a work-list scan file without its rows"))?;
        let rows = usize::try_from(range.start).unwrap_or(0)..usize::try_from(range.end).unwrap_or(0);
        let reader =
            parquet_reader(Arc::clone(&self.store), file.object_meta.location.clone(), Some(file.object_meta.size));
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        let (groups, selection) = select(builder.metadata().row_groups().iter().map(|g| g.num_rows() as usize), &rows);
        let stream =
            builder.with_row_groups(groups).with_row_selection(selection).with_batch_size(ROWS_PER_BATCH).build()?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let mut entries = Vec::with_capacity(rows.len());
        for batch in &batches {
            entries.extend(entries_of(batch)?);
        }
        if entries.len() != rows.len() {
            return Err(exec_datafusion_err!(
                "the work list {} holds {} of the rows {}..{}",
                self.url,
                entries.len(),
                rows.start,
                rows.end
            ));
        }
        Ok(entries)
    }
}

/// The row groups (of `group_rows` rows each) that overlap `rows`, and the selection of `rows`
/// within them.
fn select(group_rows: impl Iterator<Item = usize>, rows: &Range<usize>) -> (Vec<usize>, RowSelection) {
    let (mut groups, mut selectors) = (Vec::new(), Vec::new());
    let mut start = 0;
    for (index, count) in group_rows.enumerate() {
        let group = start..start + count;
        start = group.end;
        let (from, to) = (group.start.max(rows.start), group.end.min(rows.end));
        if from >= to {
            continue;
        }
        groups.push(index);
        selectors.extend([RowSelector::skip(from - group.start), RowSelector::select(to - from)]);
        selectors.push(RowSelector::skip(group.end - to));
    }
    selectors.retain(|s| s.row_count > 0);
    (groups, RowSelection::from(selectors))
}

/// The entries of a batch of work-list rows.
fn entries_of(batch: &RecordBatch) -> Result<Vec<Entry>> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| exec_datafusion_err!("the work list has no {name} column"))
    };
    let locations = column("location")?.as_string_opt::<i32>().ok_or_else(|| type_error("location"))?;
    let sizes = column("size")?.as_primitive_opt::<UInt64Type>().ok_or_else(|| type_error("size"))?;
    let modified =
        column("modified")?.as_primitive_opt::<TimestampNanosecondType>().ok_or_else(|| type_error("modified"))?;
    let etags = column("etag")?.as_string_opt::<i32>().ok_or_else(|| type_error("etag"))?;
    let skipped = column("skipped")?.as_string_opt::<i32>().ok_or_else(|| type_error("skipped"))?;
    (0..batch.num_rows())
        .map(|row| {
            // Parsed, not built from parts: the text is the store's own encoding already.
            let location = Path::parse(locations.value(row))
                .map_err(|e| exec_datafusion_err!("the work list names an invalid path: {e}"))?;
            if skipped.is_valid(row) {
                return Ok(Entry::Skipped(Skipped { location, reason: skipped.value(row).to_owned() }));
            }
            let last_modified =
                modified.is_valid(row).then(|| DateTime::from_timestamp_nanos(modified.value(row))).unwrap_or_default();
            let e_tag = etags.is_valid(row).then(|| etags.value(row).to_owned());
            let meta = ObjectMeta { location, last_modified, size: sizes.value(row), e_tag, version: None };
            Ok(Entry::Image(ImageFile { meta }))
        })
        .collect()
}

fn type_error(column: &str) -> DataFusionError {
    exec_datafusion_err!("the work list's {column} column has an unexpected type")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_runtime() -> RuntimeEnv {
        let runtime = RuntimeEnv::default();
        let url = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&url, Arc::new(object_store::memory::InMemory::new()));
        runtime
    }

    #[tokio::test]
    async fn every_slice_reads_back_its_own_entries() {
        let runtime = memory_runtime();
        let folder = Location::parse("memory:///out/features", &runtime).unwrap();
        let mut image = ImageFile::new(Path::from_iter(["in", "Pêche 50%", "a b.jpg"]), 1234);
        image.meta.last_modified = DateTime::from_timestamp_nanos(1_764_650_000_123_456_789);
        image.meta.e_tag = Some("\"abc\"".into());
        let mut entries = vec![Entry::Image(image)];
        entries.extend((0..20_000).map(|i| Entry::Image(ImageFile::new(Path::from(format!("in/Apple/{i}.jpg")), i))));
        entries.push(Entry::Skipped(Skipped {
            location: Path::from("in/locked"),
            reason: "cannot read it: denied".into(),
        }));

        let mut writer = WorklistWriter::create(&folder, "_worklist-x.parquet").unwrap();
        for entry in entries.clone() {
            writer.push(entry).await.unwrap();
        }
        let (counts, url) = writer.finish().await.unwrap();
        assert_eq!(counts, WorklistCounts { images: 20_001, skipped: 1 });
        assert_eq!(url, "memory:///out/features/_worklist-x.parquet");

        let worklist = Worklist::at(&url, &runtime, 1000).unwrap();
        let (groups, rows) = worklist.slices(3000, 2).await.unwrap();
        assert_eq!((groups.len(), rows), (8, 20_002));
        let mut back = Vec::new();
        for group in &groups {
            let [slice] = group.files() else { panic!("a slice is one scan file") };
            back.extend(worklist.read(slice).await.unwrap());
        }
        assert_eq!(back, entries);
        assert_eq!(back[1001].read_error(1000), None);
        let too_big = back[1501].read_error(1000);
        assert_eq!(too_big.as_deref(), Some("file of 1.5 KiB is above the limit of 1000 B (--max-image-bytes)"));
        let skipped = back[20_001].read_error(1000);
        assert_eq!(skipped.as_deref(), Some("skipped while listing: cannot read it: denied"));
    }

    #[tokio::test]
    async fn a_work_list_that_is_gone_says_so() {
        let runtime = memory_runtime();
        let worklist = Worklist::at("memory:///out/features/_worklist-gone.parquet", &runtime, 1000).unwrap();
        let error = worklist.slices(256, 2).await.unwrap_err();
        assert!(
            error.to_string().contains("the work list memory:///out/features/_worklist-gone.parquet is gone"),
            "{error}"
        );
    }

    #[test]
    fn a_selection_covers_exactly_the_rows_asked_for() {
        let (groups, selection) = select([1024, 1024, 1024, 500].into_iter(), &(1000..2100));
        assert_eq!(groups, [0, 1, 2]);
        let selected: usize = selection.iter().filter(|s| !s.skip).map(|s| s.row_count).sum();
        let total: usize = selection.iter().map(|s| s.row_count).sum();
        assert_eq!((selected, total), (1100, 3072));
        let (groups, _) = select([1024, 1024].into_iter(), &(1024..2048));
        assert_eq!(groups, [1]);
    }
}
