//! What an incremental run needs of a committed result: which version of which image each of
//! its files holds, and a file rewritten without the rows of images that changed or left.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use datafusion::common::exec_datafusion_err;
use datafusion::error::Result;
// Deprecated in parquet 59: see `parquet_reader`.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::arrow::{AsyncArrowWriter, ProjectionMask};
use datafusion::parquet::file::metadata::KeyValue;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use sha2::{Digest, Sha256};

use super::exec::process_name;
use super::manifest::{CommittedFile, FeaturesDir, PartFile, RunId};
use super::{MODEL_METADATA_KEY, parquet_writer_properties};
use crate::location::{parquet_reader, write_error};

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

    /// The version as 16 bytes (of its SHA-256): two versions that differ have different keys
    /// but with a chance of 2^-128.
    pub fn key(&self) -> HashKey {
        let mut hash = Sha256::new();
        hash.update(self.size.to_le_bytes());
        // A tag byte before each optional part, so that absent and empty differ.
        match self.modified {
            Some(nanos) => {
                hash.update([1u8]);
                hash.update(nanos.to_le_bytes());
            }
            None => hash.update([0u8]),
        }
        match &self.etag {
            Some(etag) => {
                hash.update([1u8]);
                hash.update(etag.as_bytes());
            }
            None => hash.update([0u8]),
        }
        HashKey::of_hash(hash)
    }
}

/// 16 bytes of a SHA-256: how an incremental run holds the committed rows' paths and versions,
/// so that a million rows cost tens of megabytes, not hundreds. Two different paths share a key
/// with a chance of 2^-128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashKey([u8; 16]);

impl HashKey {
    /// The key of the `path` column's value `path`.
    pub fn of_path(path: &str) -> Self {
        Self::of_hash(Sha256::new_with_prefix(path.as_bytes()))
    }

    fn of_hash(hash: Sha256) -> Self {
        let digest = hash.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

impl FeaturesDir {
    #[allow(deprecated)]
    fn reader(&self, file: &str) -> ParquetObjectReader {
        parquet_reader(Arc::clone(self.location().store()), self.location().path(file), None)
    }

    /// The path and version of every row of the features file `file`, as keys, reading only
    /// those columns.
    pub async fn versions(&self, file: &str) -> Result<Vec<(HashKey, HashKey)>> {
        let url = self.file_url(file);
        let builder = ParquetRecordBatchStreamBuilder::new(self.reader(file)).await?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["path", "size", "modified", "etag"]);
        let mut batches = builder.with_projection(mask).build()?;
        let mut versions = Vec::new();
        // Batch by batch: a file of many rows is never held whole.
        while let Some(batch) = batches.try_next().await? {
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| exec_datafusion_err!("{url} has no {name} column: was it written by fruits?"))
            };
            let type_error = |name: &str| exec_datafusion_err!("{url}: the {name} column has an unexpected type");
            let paths = column("path")?.as_string_opt::<i32>().ok_or_else(|| type_error("path"))?;
            let sizes = column("size")?.as_primitive_opt::<UInt64Type>().ok_or_else(|| type_error("size"))?;
            let modified = column("modified")?
                .as_primitive_opt::<TimestampNanosecondType>()
                .ok_or_else(|| type_error("modified"))?;
            let etags = column("etag")?.as_string_opt::<i32>().ok_or_else(|| type_error("etag"))?;
            for row in 0..batch.num_rows() {
                let version = FileVersion {
                    size: sizes.value(row),
                    modified: modified.is_valid(row).then(|| modified.value(row)),
                    etag: etags.is_valid(row).then(|| etags.value(row).to_owned()),
                };
                versions.push((HashKey::of_path(paths.value(row)), version.key()));
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
        drop: &HashSet<HashKey>,
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
            let keep: BooleanArray =
                paths.iter().map(|path| Some(!path.is_some_and(|p| drop.contains(&HashKey::of_path(p))))).collect();
            let kept = filter_record_batch(&batch, &keep)?;
            if kept.num_rows() == 0 {
                continue;
            }
            if first_path.is_none() {
                first_path =
                    kept.column_by_name("path").and_then(|c| c.as_string_opt::<i32>()).map(|p| p.value(0).to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_differ_in_any_part_have_different_keys() {
        let base = FileVersion { size: 10, modified: Some(0), etag: None };
        let others = [
            FileVersion { size: 11, ..base.clone() },
            FileVersion { modified: None, ..base.clone() },
            FileVersion { modified: Some(1), ..base.clone() },
            FileVersion { etag: Some(String::new()), ..base.clone() },
            FileVersion { etag: Some("\"a\"".into()), ..base.clone() },
        ];
        let mut keys: Vec<HashKey> = others.iter().map(FileVersion::key).collect();
        keys.push(base.key());
        let distinct: HashSet<HashKey> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(base.key(), base.clone().key());
        assert_eq!(HashKey::of_path("s3://b/Apple/1.jpg"), HashKey::of_path("s3://b/Apple/1.jpg"));
        assert_ne!(HashKey::of_path("s3://b/Apple/1.jpg"), HashKey::of_path("s3://b/Apple/2.jpg"));
    }
}
