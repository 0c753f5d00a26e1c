//! Writing results: Parquet parts and the job summary.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use serde::Serialize;

/// Rows per Parquet file: about 500 MB of 1280-float features, a size that every reader
/// handles well and that keeps the file count low.
const ROWS_PER_FILE: usize = 100_000;
/// Rows per row group (about 5 MB of features): readers can skip and parallelise.
const ROWS_PER_GROUP: usize = 1024;

/// Streams batches into `part-00000.parquet`, `part-00001.parquet`, ... in one folder.
pub struct PartWriter {
    dir: PathBuf,
    schema: SchemaRef,
    current: Option<(ArrowWriter<File>, usize)>,
    files: Vec<PathBuf>,
}

impl PartWriter {
    /// Starts writing into `dir`, replacing whatever Parquet files a previous run left there.
    pub fn create(dir: &Path, schema: SchemaRef) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir: dir.to_path_buf(), schema, current: None, files: Vec::new() })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open_next()?;
            }
            let (writer, rows) = self.current.as_mut().expect("a part is open");
            let take = (ROWS_PER_FILE - *rows).min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, take)).context("cannot write Parquet")?;
            *rows += take;
            offset += take;
            if *rows == ROWS_PER_FILE {
                self.close_current()?;
            }
        }
        Ok(())
    }

    /// Closes the last part and returns every file written. An empty result still gets one
    /// (empty) file, so readers find the schema.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if self.current.is_none() && self.files.is_empty() {
            self.open_next()?;
        }
        self.close_current()?;
        Ok(self.files)
    }

    fn open_next(&mut self) -> Result<()> {
        let path = self.dir.join(format!("part-{:05}.parquet", self.files.len()));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .build();
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))?;
        self.files.push(path);
        self.current = Some((writer, 0));
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((writer, _)) = self.current.take() {
            writer.close().context("cannot finish Parquet file")?;
        }
        Ok(())
    }
}

/// A file that could not be featurized, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedImage {
    pub path: String,
    pub label: Option<String>,
    pub error: String,
}

/// `summary.json`: what a run did, for people and scripts.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub input: String,
    pub output: String,
    pub model: String,
    pub engine: String,
    /// Image files listed under the input.
    pub rows_in: usize,
    /// Rows written to features/ (one per listed file; failed ones have NULL features).
    pub rows_out: usize,
    /// Rows whose features were computed.
    pub featurized: usize,
    pub failed: Vec<FailedImage>,
    pub feature_dim: usize,
    pub files: Vec<String>,
    pub seconds: f64,
    pub images_per_second: f64,
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}
