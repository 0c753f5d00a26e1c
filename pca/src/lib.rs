//! The numerical core of fruits' PCA stage and its plot.
//!
//! Two ways in, one result: [`Pca::fit`] for features that fit in the client's memory, and
//! [`Moments`] for everything else: executors accumulate and merge the count, mean and scatter
//! matrix of their rows as an aggregate, and only that `d x d` summary reaches the client, where
//! [`Pca::from_moments`] finishes the job. `fit` is itself `Moments` over one batch, so the two
//! paths agree to rounding.
//!
//! The crate is pure math and drawing: it knows nothing of Arrow, Parquet or Ballista.

mod moments;
mod pca;
mod plot;
mod projection;
#[cfg(test)]
mod reference_tests;

pub use moments::Moments;
pub use pca::Pca;
pub use plot::{label_colour, scatter_png, with_text_chunk};
pub use projection::Projection;

/// Everything that can go wrong, phrased for the person who has to fix the input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PcaError {
    #[error("the feature dimension must be at least 1")]
    ZeroDimension,
    #[error("{values} values do not split into rows of {dim} features")]
    RaggedRows { values: usize, dim: usize },
    #[error("expected rows of {expected} features, got {got}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("feature {column} of row {row} is {value}: features must be finite")]
    NonFinite { row: usize, column: usize, value: f32 },
    #[error("need at least 2 rows with features, got {0}")]
    TooFewRows(u64),
    #[error("k must be at least 1")]
    NoComponents,
    #[error("k = {k} is larger than the feature dimension {dim}")]
    TooManyComponents { k: usize, dim: usize },
    #[error("all {0} rows are identical: there is no variance to explain")]
    ZeroVariance(u64),
    #[error("not a serialised Moments state: {0}")]
    InvalidState(String),
    #[error("eigen-decomposition failed: {0}")]
    Eigen(String),
    #[error("got {points} points but {labels} labels")]
    LabelCount { points: usize, labels: usize },
    #[error("a plot of {width}x{height} pixels is too small to draw (at least {min_width}x{min_height})")]
    PlotTooSmall { width: u32, height: u32, min_width: u32, min_height: u32 },
    #[error("drawing the plot failed: {0}")]
    Plot(String),
}

/// Row-major features with their row length, checked once so that no function taking it can get
/// the shape wrong. Wraps, for example, the values buffer of an Arrow `List<Float32>` column
/// whose lists all have `dim` entries.
#[derive(Clone, Copy, Debug)]
pub struct FeatureMatrix<'a> {
    values: &'a [f32],
    dim: usize,
}

impl<'a> FeatureMatrix<'a> {
    pub fn new(values: &'a [f32], dim: usize) -> Result<Self, PcaError> {
        if dim == 0 {
            return Err(PcaError::ZeroDimension);
        }
        if !values.len().is_multiple_of(dim) {
            return Err(PcaError::RaggedRows { values: values.len(), dim });
        }
        Ok(Self { values, dim })
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.dim
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn values(&self) -> &'a [f32] {
        self.values
    }

    /// Blocks of at most `rows` rows, so that the f64 working copy stays small.
    fn blocks(&self, rows: usize) -> impl Iterator<Item = FeatureMatrix<'a>> + use<'a> {
        let dim = self.dim;
        self.values.chunks(rows.max(1) * dim).map(move |values| FeatureMatrix { values, dim })
    }

    /// NaN or infinity anywhere would silently poison every component: refuse it up front, before
    /// any state is touched.
    fn check_finite(&self) -> Result<(), PcaError> {
        match self.values.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(PcaError::NonFinite { row: i / self.dim, column: i % self.dim, value: self.values[i] }),
            None => Ok(()),
        }
    }
}

/// Rows per block when streaming features through f64: enough for the products to run at full
/// speed (85 GFLOP/s on one core here from 512 rows up), and 10 MB, so a block stays in cache.
const BLOCK_ROWS: usize = 1024;
