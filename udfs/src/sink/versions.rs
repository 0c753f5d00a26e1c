//! What an incremental run needs of a committed result: which version of which image each of
//! its files holds, and a file rewritten without the rows of images that changed or left.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use datafusion::common::exec_datafusion_err;
use datafusion::error::Result;
// Deprecated in parquet 59 in favour of a reader of one's own; it still reads only the byte
// ranges a projection needs, which is what a version listing of large files relies on.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::arrow::{AsyncArrowWriter, ProjectionMask};
use datafusion::parquet::file::metadata::KeyValue;
use futures::TryStreamExt;
use object_store::ObjectMeta;

use super::exec::process_name;
use super::manifest::{CommittedFile, FeaturesDir, PartFile, RunId};
use super::{MODEL_METADATA_KEY, parquet_writer_properties};
use crate::location::write_error;

/// The version of an image file that a listing saw: a file whose version differs is featurized
/// again. Size and modification time on a local disk; on S3 also the ETag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub modified: Option<i64>,
    pub etag: Option<String>,
}

impl FileVersion {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self { size: meta.size, modified: meta.last_modified.timestamp_nanos_opt(), etag: meta.e_tag.clone() }
    }
}

impl FeaturesDir {
    #[allow(deprecated)]
    fn reader(&self, file: &str) -> ParquetObjectReader {
        ParquetObjectReader::new(Arc::clone(self.location().store()), self.location().path(file))
    }

    /// The path and version of every row of the features file `file`, reading only those
    /// columns.
    pub async fn versions(&self, file: &str) -> Result<Vec<(String, FileVersion)>> {
        let url = self.file_url(file);
        let builder = ParquetRecordBatchStreamBuilder::new(self.reader(file)).await?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["path", "size", "modified", "etag"]);
        let batches: Vec<RecordBatch> = builder.with_projection(mask).build()?.try_collect().await?;
        let mut versions = Vec::new();
        for batch in &batches {
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| exec_datafusion_err!("{url} has no {name} column: was it written by fruits?"))
            };
            let type_error = |name: &str| exec_datafusion_err!("{url}: the {name} column has an unexpected type");
            let paths = column("path")?.as_string_opt::<i32>().ok_or_else(|| type_error("path"))?;
            let sizes = column("size")?.as_primitive_opt::<UInt64Type>().ok_or_else(|| type_error("size"))?;
            let modified =
                column("modified")?.as_primitive_opt::<TimestampNanosecondType>().ok_or_else(|| type_error("modified"))?;
            let etags = column("etag")?.as_string_opt::<i32>().ok_or_else(|| type_error("etag"))?;
            for row in 0..batch.num_rows() {
                let version = FileVersion {
                    size: sizes.value(row),
                    modified: modified.is_valid(row).then(|| modified.value(row)),
                    etag: etags.is_valid(row).then(|| etags.value(row).to_owned()),
                };
                versions.push((paths.value(row).to_owned(), version));
            }
        }
        Ok(versions)
    }

    /// Writes the rows of the committed `file` whose path is not in `drop` into a new part file
    /// of `run`, features and metadata as they were: nothing is featurized again. `None` when no
    /// row is left.
    pub async fn rewrite_without(
        &self,
        file: &CommittedFile,
        drop: &HashSet<String>,
        run: &RunId,
    ) -> Result<Option<CommittedFile>> {
        let source = self.file_url(&file.file);
        let builder = ParquetRecordBatchStreamBuilder::new(self.reader(&file.file)).await?;
        let model = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == MODEL_METADATA_KEY))
            .cloned();
        let schema = Arc::clone(builder.schema());
        let mut batches = builder.build()?;

        let name = PartFile::new(run).name();
        let url = self.file_url(&name);
        let mut writer =
            AsyncArrowWriter::try_new(self.location().upload(&name), schema, Some(parquet_writer_properties()))?;
        let (mut rows, mut failed, mut first_path) = (0u64, 0u64, None);
        while let Some(batch) = batches.try_next().await? {
            let paths = batch
                .column_by_name("path")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| exec_datafusion_err!("{source} has no Utf8 path column"))?;
            let keep: BooleanArray = paths.iter().map(|path| Some(!path.is_some_and(|p| drop.contains(p)))).collect();
            let kept = filter_record_batch(&batch, &keep)?;
            if kept.num_rows() == 0 {
                continue;
            }
            if first_path.is_none() {
                first_path = kept.column_by_name("path").and_then(|c| c.as_string_opt::<i32>()).map(|p| p.value(0).to_owned());
            }
            rows += kept.num_rows() as u64;
            failed += kept.column_by_name("error").map_or(0, |e| e.len() - e.null_count()) as u64;
            writer.write(&kept).await.map_err(|e| write_error(format!("cannot write {url}"), e))?;
        }
        if rows == 0 {
            // Nothing to keep: the upload is dropped unfinished, so no object is left.
            return Ok(None);
        }
        if let Some(model) = model {
            writer.append_key_value_metadata(KeyValue::new(model.key, model.value));
        }
        writer.close().await.map_err(|e| write_error(format!("cannot write {url}"), e))?;
        Ok(Some(CommittedFile { file: name, rows, failed, written_by: process_name().to_owned(), first_path }))
    }
}
