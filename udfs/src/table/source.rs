//! The `FileSource` that reads image files whole: one file, one row.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
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
use object_store::{ObjectStore, ObjectStoreExt};

use super::listing::{label_of, percent_decode};

/// Reads whole image files as rows of `(path, label, content)`.
#[derive(Clone)]
pub struct ImageSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
}

impl ImageSource {
    pub fn new(table_schema: TableSchema) -> Self {
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl FileSource for ImageSource {
    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        config: &FileScanConfig,
        _partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let columns = self.projection.file_indices.clone();
        let opener = Arc::new(ImageOpener {
            store,
            store_url: config.object_store_url.clone(),
            schema: Arc::new(file_schema.project(&columns)?),
            columns,
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

/// Opens one file as a one-row batch of the projected columns. The bytes are fetched only if
/// `content` is among them, so `SELECT label, count(*) ...` lists without reading.
struct ImageOpener {
    store: Arc<dyn ObjectStore>,
    store_url: ObjectStoreUrl,
    /// Projected file-schema column indices: 0 path, 1 label, 2 content.
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl FileOpener for ImageOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let store = Arc::clone(&self.store);
        let columns = self.columns.clone();
        let schema = Arc::clone(&self.schema);
        let location = file.object_meta.location;
        let url = format!("{}{}", self.store_url.as_str(), percent_decode(location.as_ref()));
        Ok(async move {
            let content =
                if columns.contains(&2) { read_content(store.as_ref(), &location, &url).await? } else { None };
            let arrays: Vec<ArrayRef> = columns
                .iter()
                .map(|column| -> ArrayRef {
                    match column {
                        0 => Arc::new(StringArray::from(vec![url.as_str()])),
                        1 => Arc::new(StringArray::from(vec![label_of(&location)])),
                        _ => Arc::new(BinaryArray::from(vec![content.as_deref()])),
                    }
                })
                .collect();
            let batch = RecordBatch::try_new(schema, arrays)?;
            Ok(futures::stream::once(async { Ok(batch) }).boxed())
        }
        .boxed())
    }
}

/// The file's bytes; `None` if it was deleted since listing, which leaves a row with NULL
/// content (reported by `featurize`) instead of failing a job over one missing file. Other
/// errors are I/O errors, which Ballista retries.
async fn read_content(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    url: &str,
) -> Result<Option<Vec<u8>>> {
    let fetched = match store.get(location).await {
        Ok(result) => result.bytes().await,
        Err(e) => Err(e),
    };
    match fetched {
        Ok(bytes) => Ok(Some(bytes.to_vec())),
        Err(object_store::Error::NotFound { .. }) => {
            log::warn!("{url} disappeared after listing; its row has no content");
            Ok(None)
        }
        Err(e) => Err(DataFusionError::External(format!("cannot read {url}: {e}").into())),
    }
}
