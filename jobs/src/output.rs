//! Writing results: the output folder, the job summary, and Parquet parts for `fruits sql`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use fruits_udfs::sink::UPLOAD_BUFFER;
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;

/// Rows per Parquet file: about 500 MB of 1280-float features, a size that every reader
/// handles well and that keeps the file count low.
const ROWS_PER_FILE: usize = 100_000;
/// Rows per row group (about 5 MB of features): readers can skip and parallelise.
const ROWS_PER_GROUP: usize = 1024;

/// The folder a run writes into: a local folder or an object-store prefix.
pub struct OutputDir {
    url: ListingTableUrl,
    store: Arc<dyn ObjectStore>,
}

impl OutputDir {
    /// `output` is a local path (created if missing) or a URL such as `s3://bucket/prefix`.
    pub fn resolve(output: &str, runtime: &RuntimeEnv) -> Result<Self> {
        let url = if output.contains("://") {
            format!("{}/", output.trim_end_matches('/'))
        } else {
            let dir = Path::new(output);
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
            let dir = dir.canonicalize().with_context(|| format!("cannot resolve output folder {}", dir.display()))?;
            url::Url::from_directory_path(&dir)
                .map_err(|()| anyhow::anyhow!("output folder {} is not an absolute path", dir.display()))?
                .to_string()
        };
        let url = ListingTableUrl::parse(&url).with_context(|| format!("invalid output location {output}"))?;
        let store =
            runtime.object_store(url.object_store()).with_context(|| format!("no store for output {output}"))?;
        Ok(Self { url, store })
    }

    /// The folder that holds the features folder `features` (`OUT/features` -> `OUT`).
    pub fn parent_of(features: &str, runtime: &RuntimeEnv) -> Result<Self> {
        let trimmed = features.trim_end_matches('/');
        let parent = match trimmed.rsplit_once('/') {
            Some((parent, _)) if !parent.is_empty() && !parent.ends_with(':') && !parent.ends_with("//") => parent,
            _ => ".",
        };
        Self::resolve(parent, runtime)
    }

    /// Reads `name`, `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match self.store.get(&path).await {
            Ok(result) => Ok(Some(result.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.child_url(name))),
        }
    }

    /// `name` (which may contain `/`) inside the folder.
    fn path(&self, name: &str) -> object_store::path::Path {
        name.split('/').filter(|part| !part.is_empty()).fold(self.url.prefix().clone(), |path, part| path.join(part))
    }

    /// The URL of `name` inside the folder; a name ending in `/` is a sub-folder.
    pub fn child_url(&self, name: &str) -> String {
        format!("{}{name}", self.url.as_str())
    }

    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(name);
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("cannot write {}", self.child_url(name)))?;
        Ok(())
    }

    /// A streaming writer of `name`: a multipart upload on object stores, visible once
    /// `shutdown` completes it.
    pub fn upload(&self, name: &str) -> BufWriter {
        BufWriter::with_capacity(Arc::clone(&self.store), self.path(name), UPLOAD_BUFFER)
    }

    /// Removes `name` if it exists.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", self.child_url(name))),
        }
    }
}

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
    /// URL of the output folder.
    pub output: String,
    /// The model, when it ran in this process (on a cluster, the executors name theirs).
    pub model: Option<String>,
    pub engine: String,
    /// Names this run's files in features/.
    pub run_id: String,
    /// Image files listed under the input.
    pub rows_in: u64,
    /// Rows written to features/ (one per listed file; failed ones have NULL features).
    pub rows_out: u64,
    /// Rows whose features were computed.
    pub featurized: u64,
    pub failed: Vec<FailedImage>,
    /// The committed Parquet files, relative to features/.
    pub files: Vec<String>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Bytes this process read (files and network) during the run, on Linux. On a cluster the
    /// images go from the store to the executors and only small reports come back, so this
    /// stays far below the size of the images.
    pub client_bytes_read: Option<u64>,
    /// The PCA stage, unless `--no-pca`.
    pub pca: Option<crate::pca::PcaSummary>,
}

/// `value` as pretty JSON with a final newline.
pub fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    Ok(text)
}
