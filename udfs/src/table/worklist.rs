//! The work list of a run: the listing a client made, written as a Parquet file beside the
//! output, so that the scan planned elsewhere (on the scheduler, in a cluster) reads exactly the
//! images the client decided to featurize, and the input is listed once per run.

use std::sync::Arc;

use bytes::Bytes;
use chrono::DateTime;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampNanosecondType, UInt64Type};
use datafusion::common::exec_datafusion_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::{modified_array, modified_type};
use super::listing::{ImageFile, Listing, Skipped};
use crate::sink::parquet_writer_properties;

/// Rows per batch written: bounded memory for a list of millions.
const ROWS_PER_BATCH: usize = 65_536;

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

impl Listing {
    /// This listing as a work-list file.
    pub fn to_parquet(&self) -> Result<Bytes> {
        let skipped: Vec<ObjectMeta> = self.skipped.iter().map(Skipped::meta).collect();
        let images = self.images.iter().map(|image| (&image.meta, None));
        let skipped = skipped.iter().zip(&self.skipped).map(|(meta, entry)| (meta, Some(entry.reason.as_str())));
        let rows: Vec<(&ObjectMeta, Option<&str>)> = images.chain(skipped).collect();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, worklist_schema(), Some(parquet_writer_properties()))?;
        for chunk in rows.chunks(ROWS_PER_BATCH) {
            let metas = || chunk.iter().map(|(meta, _)| *meta);
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(metas().map(|m| m.location.as_ref()))),
                Arc::new(UInt64Array::from_iter_values(metas().map(|m| m.size))),
                Arc::new(modified_array(metas())),
                Arc::new(StringArray::from_iter(metas().map(|m| m.e_tag.as_deref()))),
                Arc::new(StringArray::from_iter(chunk.iter().map(|(_, reason)| *reason))),
            ];
            writer.write(&RecordBatch::try_new(worklist_schema(), columns)?)?;
        }
        writer.close()?;
        Ok(Bytes::from(out))
    }

    /// The listing a work-list file holds.
    pub fn from_parquet(bytes: Bytes) -> Result<Self> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(ROWS_PER_BATCH).build()?;
        let mut listing = Listing::default();
        for batch in reader {
            let batch = batch?;
            let column = |name: &str| {
                batch.column_by_name(name).ok_or_else(|| exec_datafusion_err!("the work list has no {name} column"))
            };
            let locations = column("location")?.as_string_opt::<i32>().ok_or_else(|| type_error("location"))?;
            let sizes = column("size")?.as_primitive_opt::<UInt64Type>().ok_or_else(|| type_error("size"))?;
            let modified =
                column("modified")?.as_primitive_opt::<TimestampNanosecondType>().ok_or_else(|| type_error("modified"))?;
            let etags = column("etag")?.as_string_opt::<i32>().ok_or_else(|| type_error("etag"))?;
            let skipped = column("skipped")?.as_string_opt::<i32>().ok_or_else(|| type_error("skipped"))?;
            for row in 0..batch.num_rows() {
                // Parsed, not built from parts: the text is the store's own encoding already.
                let location = Path::parse(locations.value(row))
                    .map_err(|e| exec_datafusion_err!("the work list names an invalid path: {e}"))?;
                if skipped.is_valid(row) {
                    listing.skipped.push(Skipped { location, reason: skipped.value(row).to_owned() });
                    continue;
                }
                let last_modified = modified
                    .is_valid(row)
                    .then(|| DateTime::from_timestamp_nanos(modified.value(row)))
                    .unwrap_or_default();
                let e_tag = etags.is_valid(row).then(|| etags.value(row).to_owned());
                let meta = ObjectMeta { location, last_modified, size: sizes.value(row), e_tag, version: None };
                listing.images.push(ImageFile { meta });
            }
        }
        Ok(listing)
    }
}

fn type_error(column: &str) -> DataFusionError {
    exec_datafusion_err!("the work list's {column} column has an unexpected type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_survives_its_work_list() {
        let mut image = ImageFile::new(Path::from_iter(["in", "Pêche 50%", "a b.jpg"]), 1234);
        image.meta.last_modified = DateTime::from_timestamp_nanos(1_764_650_000_123_456_789);
        image.meta.e_tag = Some("\"abc\"".into());
        let listing = Listing {
            images: vec![image, ImageFile::new(Path::from("in/Apple/1.jpg"), 7)],
            skipped: vec![Skipped { location: Path::from("in/locked"), reason: "cannot read it: denied".into() }],
        };
        let back = Listing::from_parquet(listing.to_parquet().unwrap()).unwrap();
        assert_eq!(back.images, listing.images);
        assert_eq!(back.skipped, listing.skipped);
    }
}
