//! Reading the features of a run the way every reader must: through its manifest, only the files
//! it lists. A committed run is opened from the `_SUCCESS` manifest; a run that has just
//! written its files is read through the manifest it is about to commit (so that its PCA is
//! ready before the commit). The client reads them with a local DataFusion session on its own
//! object stores, without a round trip through the cluster, except where the engine's
//! executors should do the reading (see [`FeatureFiles::engine_frame`]).

use anyhow::{Context, Result, bail, ensure};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col};
use fruits_udfs::{FeaturesDir, Manifest};
use futures::{Stream, StreamExt};

use crate::summary::FailedImage;

/// The feature files of one run: a features folder and the manifest that lists them.
pub struct FeatureFiles {
    pub folder: FeaturesDir,
    pub manifest: Manifest,
}

/// Committed feature rows, one batch at a time: rows without features are counted, not kept.
pub struct Block {
    pub paths: Vec<String>,
    pub labels: Vec<String>,
    /// Row-major, `dim` values per row.
    pub values: Vec<f32>,
    pub dim: usize,
    pub without_features: u64,
}

impl FeatureFiles {
    /// The committed run in `folder`; an error saying what to do if there is none.
    pub async fn open(folder: FeaturesDir) -> Result<Self> {
        let Some(manifest) = folder.manifest().await? else {
            bail!("no committed features in {} (no _SUCCESS manifest): run `fruits run` first", folder.url());
        };
        Ok(Self { folder, manifest })
    }

    /// The URLs of the committed files.
    pub fn file_urls(&self) -> Vec<String> {
        self.manifest.files.iter().map(|f| self.folder.file_url(&f.file)).collect()
    }

    /// Every committed row, as a frame of a local session on `ctx`'s object stores.
    pub async fn frame(&self, ctx: &SessionContext) -> Result<DataFrame> {
        read_parquet(ctx, self.file_urls()).await
    }

    /// Every committed row, as a frame of `ctx` itself: on a cluster's session the executors
    /// read the files, and only what the query returns reaches this process.
    pub async fn engine_frame(&self, ctx: &SessionContext) -> Result<DataFrame> {
        Ok(ctx.read_parquet(self.file_urls(), ParquetReadOptions::default()).await?)
    }

    /// The committed rows as [`Block`]s, streamed: at most a batch of features in memory.
    pub async fn blocks(&self, ctx: &SessionContext) -> Result<impl Stream<Item = Result<Block>> + use<>> {
        let stream = self
            .frame(ctx)
            .await?
            .select_columns(&["path", "label", "features"])?
            .execute_stream()
            .await
            .context("cannot read the committed features")?;
        Ok(stream.map(|batch| Block::try_from(&batch.context("cannot read the committed features")?)))
    }

    /// The images that could not be featurized, sorted by path, read from the files that have any.
    pub async fn failures(&self, ctx: &SessionContext) -> Result<Vec<FailedImage>> {
        let files: Vec<String> =
            self.manifest.files.iter().filter(|f| f.failed > 0).map(|f| self.folder.file_url(&f.file)).collect();
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let batches = read_parquet(ctx, files)
            .await?
            .filter(col("error").is_not_null())?
            .select_columns(&["path", "label", "error"])?
            .sort(vec![col("path").sort(true, false)])?
            .collect()
            .await
            .context("cannot read the failed images back from the committed files")?;
        let mut failed = Vec::new();
        for batch in &batches {
            let (paths, labels, errors) = (utf8_column(batch, 0)?, utf8_column(batch, 1)?, utf8_column(batch, 2)?);
            let (paths, labels, errors) =
                (paths.as_string::<i32>(), labels.as_string::<i32>(), errors.as_string::<i32>());
            for row in 0..batch.num_rows() {
                failed.push(FailedImage {
                    path: paths.value(row).to_owned(),
                    label: labels.is_valid(row).then(|| labels.value(row).to_owned()),
                    error: errors.value(row).to_owned(),
                });
            }
        }
        Ok(failed)
    }
}

/// `files` as a frame of a local DataFusion session on `ctx`'s object stores.
async fn read_parquet(ctx: &SessionContext, files: Vec<String>) -> Result<DataFrame> {
    let local = SessionContext::new_with_config_rt(SessionConfig::new(), ctx.runtime_env());
    Ok(local.read_parquet(files, ParquetReadOptions::default()).await?)
}

/// Column `i` of `batch` as Utf8: Parquet strings may come back as string views.
fn utf8_column(batch: &RecordBatch, i: usize) -> Result<ArrayRef> {
    Ok(cast(batch.column(i), &DataType::Utf8)?)
}

impl TryFrom<&RecordBatch> for Block {
    type Error = anyhow::Error;

    fn try_from(batch: &RecordBatch) -> Result<Self> {
        let (paths, labels) = (utf8_column(batch, 0)?, utf8_column(batch, 1)?);
        let (paths, labels) = (paths.as_string::<i32>(), labels.as_string::<i32>());
        let lists = batch.column(2).as_list_opt::<i32>().context("features is not a list column")?;
        let mut block =
            Block { paths: Vec::new(), labels: Vec::new(), values: Vec::new(), dim: 0, without_features: 0 };
        for row in 0..batch.num_rows() {
            if lists.is_null(row) {
                block.without_features += 1;
                continue;
            }
            let vector = lists.value(row);
            let values = vector.as_primitive_opt::<Float32Type>().context("features are not float32")?;
            if block.dim == 0 {
                block.dim = values.len();
            }
            ensure!(
                values.len() == block.dim,
                "{} has {} features, earlier rows {}",
                paths.value(row),
                values.len(),
                block.dim
            );
            block.values.extend_from_slice(values.values());
            block.paths.push(paths.value(row).to_owned());
            block.labels.push(if labels.is_valid(row) { labels.value(row).to_owned() } else { String::new() });
        }
        Ok(block)
    }
}
