//! The `FileSource` that reads image files whole: one file, one row.
//!
//! DataFusion's file stream keeps a single read in flight. An image is small and its
//! featurizing short, so on an object store one-at-a-time reads would leave a task waiting on
//! request latency most of the time; the opener therefore fetches the next files of its
//! partition ahead, a few at once, within a byte budget.
//!
//! A file is never read when the listing marked it (`read_error`: above the size limit, or an
//! entry that could not be listed), and a file that vanished after listing is a row without
//! content; `featurize_or_error` reports both. Any other failed read fails the task, as an I/O
//! error (retried by Ballista) when it may pass. The bytes read become the `content` column
//! without a copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileOpenFuture, FileOpener, FileScanConfig, FileSource};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::task::JoinHandle;

use super::listing::label_of;
use super::modified_array;
use super::worklist::Worklist;
use crate::location::{Naming, StoreError};

/// Reads whole image files as rows of `images` ([`super::images_file_schema`]).
///
/// A scan file is either one image (its `read_error` as its partition value) or, when the
/// source reads a work list, a range of the work list's rows: then the task reads those entries
/// first, and each becomes a row.
#[derive(Clone)]
pub(crate) struct ImageSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
    worklist: Option<Arc<Worklist>>,
}

impl ImageSource {
    pub(crate) fn new(table_schema: TableSchema) -> Self {
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
            worklist: None,
        }
    }

    /// The same source, its scan files slices of `worklist`.
    pub(crate) fn with_worklist(self, worklist: Worklist) -> Self {
        Self { worklist: Some(Arc::new(worklist)), ..self }
    }

    pub(crate) fn worklist(&self) -> Option<&Worklist> {
        self.worklist.as_deref()
    }
}

impl FileSource for ImageSource {
    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        config: &FileScanConfig,
        partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let columns = self.projection.file_indices.clone();
        // A work list's slice lists its entries only when the task reads it.
        let files = match (&self.worklist, config.file_groups.get(partition)) {
            (None, Some(group)) => unread_files(group.iter().map(|f| (&f.object_meta, read_error(f)))),
            _ => Vec::new(),
        };
        let opener = Arc::new(ImageOpener {
            prefetch: Prefetch::new(Arc::clone(&store), files),
            rows: Arc::new(Rows {
                store,
                store_url: config.object_store_url.clone(),
                schema: Arc::new(file_schema.project(&columns)?),
                columns,
            }),
            worklist: self.worklist.clone(),
        });
        ProjectionOpener::try_new(self.projection.clone(), opener, file_schema)
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    /// Every file is a batch of its own: rows carry whole images, so batches stay small.
    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(self.clone())
    }

    fn try_pushdown_projection(&self, projection: &ProjectionExprs) -> Result<Option<Arc<dyn FileSource>>> {
        let merged = self.projection.source.try_merge(projection)?;
        let projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(Self { projection, ..self.clone() })))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "images"
    }

    /// A file is one row: splitting it by byte ranges would read it twice.
    fn supports_repartitioning(&self) -> bool {
        false
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }
}

/// Opens a scan file: one image as a one-row batch, or a slice of the work list as a stream of
/// one-row batches, one per entry.
struct ImageOpener {
    /// The reads ahead of a partition of images (empty for a work list's slices, which start
    /// their own).
    prefetch: Arc<Prefetch>,
    rows: Arc<Rows>,
    worklist: Option<Arc<Worklist>>,
}

impl FileOpener for ImageOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let rows = Arc::clone(&self.rows);
        let Some(worklist) = self.worklist.clone() else {
            let reason = read_error(&file).map(str::to_owned);
            let fetch =
                (rows.reads_content() && reason.is_none()).then(|| self.prefetch.take(&file.object_meta.location));
            let meta = file.object_meta;
            return Ok(async move {
                let batch = rows.row(&meta, reason, fetch).await?;
                Ok(futures::stream::once(async { Ok(batch) }).boxed())
            }
            .boxed());
        };
        Ok(async move {
            let limit = worklist.max_image_bytes();
            let entries: Vec<(ObjectMeta, Option<String>)> = worklist
                .read(&file)
                .await?
                .into_iter()
                .map(|entry| (entry.meta().into_owned(), entry.read_error(limit)))
                .collect();
            let unread = unread_files(entries.iter().map(|(meta, reason)| (meta, reason.as_deref())));
            let prefetch = Prefetch::new(Arc::clone(&rows.store), unread);
            let batches = futures::stream::iter(entries).then(move |(meta, reason)| {
                let fetch = (rows.reads_content() && reason.is_none()).then(|| prefetch.take(&meta.location));
                let rows = Arc::clone(&rows);
                async move { rows.row(&meta, reason, fetch).await }
            });
            Ok(batches.boxed())
        }
        .boxed())
    }
}

/// The files of `entries` that are read (those without a `read_error`), with their sizes: what a
/// [`Prefetch`] fetches ahead.
fn unread_files<'a>(entries: impl Iterator<Item = (&'a ObjectMeta, Option<&'a str>)>) -> Vec<(Path, u64)> {
    entries.filter(|(_, reason)| reason.is_none()).map(|(meta, _)| (meta.location.clone(), meta.size)).collect()
}

/// Makes the row of one entry: the projected columns of `images`. The bytes are fetched only if
/// `content` is among them, so `SELECT label, count(*) ...` lists without reading.
struct Rows {
    store: Arc<dyn ObjectStore>,
    store_url: ObjectStoreUrl,
    /// Projected file-schema column indices: 0 path, 1 label, 2 content, 3 size, 4 modified,
    /// 5 etag, 6 read_error.
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl Rows {
    fn reads_content(&self) -> bool {
        self.columns.contains(&2)
    }

    /// The row of the file `meta`, with its content from `fetch` (no fetch: no content).
    async fn row(&self, meta: &ObjectMeta, read_error: Option<String>, fetch: Option<Fetch>) -> Result<RecordBatch> {
        let url = Naming::of(&self.store_url).display_url(&self.store_url, &meta.location);
        let content = match fetch {
            Some(fetch) => {
                let fetched = fetch.await.map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?;
                content_or_missing(fetched, &url)?
            }
            None => None,
        };
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|column| -> ArrayRef {
                match column {
                    0 => Arc::new(StringArray::from(vec![url.as_str()])),
                    1 => Arc::new(StringArray::from(vec![label_of(&meta.location, &self.store_url)])),
                    2 => Arc::new(binary_column(content.clone())),
                    3 => Arc::new(UInt64Array::from(vec![meta.size])),
                    4 => Arc::new(modified_array([meta])),
                    5 => Arc::new(StringArray::from(vec![meta.e_tag.clone()])),
                    _ => Arc::new(StringArray::from(vec![read_error.clone()])),
                }
            })
            .collect();
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), arrays)?)
    }
}

/// The reason the listing gave for not reading the image `file`, if any: its partition value
/// (see `ImagesTable::scan_files`).
pub(crate) fn read_error(file: &PartitionedFile) -> Option<&str> {
    match file.partition_values.first() {
        Some(ScalarValue::Utf8(Some(reason))) => Some(reason),
        _ => None,
    }
}

/// A one-row binary column over `content`'s bytes, without copying them.
fn binary_column(content: Option<Bytes>) -> BinaryArray {
    match content {
        Some(bytes) => {
            let offsets = OffsetBuffer::from_lengths([bytes.len()]);
            BinaryArray::new(offsets, Buffer::from(bytes), None)
        }
        None => BinaryArray::new_null(1),
    }
}

/// Files fetched ahead of time at most, per partition: enough to hide object-store latency
/// behind inference.
const PREFETCH_FILES: usize = 16;
/// Bytes fetched ahead at most, per partition (the file asked for is always fetched): a few
/// large images are enough to wait on, and memory stays bounded whatever the files weigh.
const PREFETCH_BYTES: u64 = 64 << 20;

type Fetch = JoinHandle<object_store::Result<Bytes>>;

/// The reads of one partition's files, started up to [`PREFETCH_FILES`] files and
/// [`PREFETCH_BYTES`] bytes ahead of the file the stream asks for.
struct Prefetch {
    store: Arc<dyn ObjectStore>,
    /// Path and listed size of each file to read, in the order the stream asks for them.
    files: Vec<(Path, u64)>,
    position: HashMap<Path, usize>,
    state: Mutex<PrefetchState>,
}

#[derive(Default)]
struct PrefetchState {
    /// Index of the first file whose read has not been started.
    next: usize,
    started: HashMap<usize, Fetch>,
}

impl Prefetch {
    fn new(store: Arc<dyn ObjectStore>, files: Vec<(Path, u64)>) -> Arc<Self> {
        let position = files.iter().enumerate().map(|(i, (f, _))| (f.clone(), i)).collect();
        Arc::new(Self { store, files, position, state: Mutex::default() })
    }

    /// The read of `location`, started now if it was not already, with the reads of the files
    /// after it in the partition, as far as the budgets allow.
    fn take(&self, location: &Path) -> Fetch {
        let Some(&index) = self.position.get(location) else {
            return self.spawn(location.clone());
        };
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fetch = state.started.remove(&index).unwrap_or_else(|| self.spawn(location.clone()));
        state.next = state.next.max(index + 1);
        // In flight ahead: the reads started and not yet taken.
        let mut ahead_bytes: u64 = state.started.keys().map(|&i| self.files[i].1).sum();
        while state.next < self.files.len() && state.next < index + 1 + PREFETCH_FILES {
            let (path, size) = &self.files[state.next];
            if ahead_bytes + size > PREFETCH_BYTES {
                break;
            }
            ahead_bytes += size;
            let ahead = self.spawn(path.clone());
            let next = state.next;
            state.started.insert(next, ahead);
            state.next += 1;
        }
        fetch
    }

    fn spawn(&self, location: Path) -> Fetch {
        let store = Arc::clone(&self.store);
        tokio::spawn(async move { store.get(&location).await?.bytes().await })
    }
}

impl Drop for Prefetch {
    /// A cancelled or failed task leaves reads nobody will wait for.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for fetch in state.started.values() {
            fetch.abort();
        }
    }
}

/// The file's bytes; `None` if it was deleted since listing, which leaves a row with NULL
/// content (reported by `featurize`) instead of failing a job over one missing file. A transient
/// failure is an I/O error, so Ballista retries the task; a refusal (permissions) fails it.
fn content_or_missing(fetched: object_store::Result<Bytes>, url: &str) -> Result<Option<Bytes>> {
    match fetched {
        Ok(bytes) => Ok(Some(bytes)),
        Err(object_store::Error::NotFound { .. }) => {
            log::warn!("{url} disappeared after listing; its row has no content");
            Ok(None)
        }
        Err(error) => Err(StoreError::Store { action: "read", url: url.to_owned(), error }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_ahead_stay_within_the_byte_budget() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let mib = 1 << 20;
        let files: Vec<(Path, u64)> = [40 * mib, 40 * mib, 40 * mib, 1, 1]
            .iter()
            .enumerate()
            .map(|(i, &size)| (Path::from(format!("{i}.jpg")), size))
            .collect();
        let prefetch = Prefetch::new(store, files.clone());
        let ahead = |prefetch: &Prefetch| {
            let mut started: Vec<usize> = prefetch.state.lock().unwrap().started.keys().copied().collect();
            started.sort();
            started
        };
        drop(prefetch.take(&files[0].0));
        assert_eq!(ahead(&prefetch), [1], "a second 40 MiB file would pass 64 MiB");
        drop(prefetch.take(&files[1].0));
        assert_eq!(ahead(&prefetch), [2, 3, 4]);
        // A file that is not in the partition's list is still read, on its own.
        assert!(prefetch.take(&Path::from("other.jpg")).await.unwrap().is_err());
    }

    #[test]
    fn a_vanished_file_is_a_row_and_a_failed_read_is_retried() {
        let url = "s3://b/Apple/1.jpg";
        let gone = object_store::Error::NotFound { path: "Apple/1.jpg".into(), source: "404".into() };
        assert_eq!(content_or_missing(Err(gone), url).unwrap(), None);
        assert_eq!(content_or_missing(Ok(Bytes::from_static(b"jpg")), url).unwrap().as_deref(), Some(&b"jpg"[..]));

        let reset = object_store::Error::Generic { store: "S3", source: "connection reset".into() };
        let error = content_or_missing(Err(reset), url).unwrap_err();
        assert!(matches!(error.find_root(), DataFusionError::IoError(_)), "{error:?}");
        assert!(error.to_string().contains("cannot read s3://b/Apple/1.jpg"), "{error}");

        let denied = object_store::Error::PermissionDenied { path: "Apple/1.jpg".into(), source: "403".into() };
        let error = content_or_missing(Err(denied), url).unwrap_err();
        assert!(!matches!(error.find_root(), DataFusionError::IoError(_)), "{error:?}");
    }
}
