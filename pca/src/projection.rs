use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::{BLOCK_ROWS, FeatureMatrix, PcaError};

/// The part of a fitted [`crate::Pca`] that places rows on its components: the mean and the
/// `k` components, and nothing that depends on the number of rows. It is what a process that
/// did not fit the PCA needs to project its own rows, so it has a byte form
/// ([`Projection::to_bytes`]) to travel in a query plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    mean: Vec<f64>,
    /// `k x d`, row-major, orthonormal rows.
    components: Vec<f64>,
}

/// Bytes before the values in [`Projection::to_bytes`]: `k` and `d` as little-endian `u32`.
const HEADER: usize = 8;

impl Projection {
    /// `components` holds `k` rows of `mean.len()` values.
    pub(crate) fn new(mean: Vec<f64>, components: Vec<f64>) -> Self {
        debug_assert!(!mean.is_empty() && components.len() % mean.len() == 0);
        Self { mean, components }
    }

    pub fn n_components(&self) -> usize {
        self.components.len() / self.dim()
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Component `i` (0-based: PC1 is 0), a unit vector of `dim` values.
    pub fn component(&self, i: usize) -> Option<&[f64]> {
        self.components.chunks_exact(self.dim()).nth(i)
    }

    /// Coordinates of `rows` on the components: `k` values per row, row-major.
    pub fn project(&self, rows: FeatureMatrix<'_>) -> Result<Vec<f64>, PcaError> {
        let (dim, k) = (self.dim(), self.n_components());
        if rows.dim() != dim {
            return Err(PcaError::DimensionMismatch { expected: dim, got: rows.dim() });
        }
        rows.check_finite()?;
        let components = MatRef::from_row_major_slice(&self.components, k, dim);
        let mut out = vec![0.0; rows.rows() * k];
        let blocks: Vec<FeatureMatrix<'_>> = rows.blocks(BLOCK_ROWS).collect();
        out.par_chunks_mut(BLOCK_ROWS * k).zip(&blocks).for_each_init(Vec::new, |block, (out, rows)| {
            block.clear();
            for row in rows.values().chunks_exact(dim) {
                block.extend(row.iter().zip(&self.mean).map(|(&x, mu)| f64::from(x) - mu));
            }
            let centred = MatRef::from_row_major_slice(block, rows.rows(), dim);
            let out = MatMut::from_row_major_slice_mut(out, rows.rows(), k);
            matmul(out, Accum::Replace, centred, components.transpose(), 1.0, Par::Seq);
        });
        Ok(out)
    }

    /// `k`, `d` (little-endian `u32`), then the mean and the components as little-endian `f64`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER + 8 * (self.mean.len() + self.components.len()));
        for size in [self.n_components(), self.dim()] {
            bytes.extend(u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
        }
        bytes.extend(self.mean.iter().chain(&self.components).flat_map(|v| v.to_le_bytes()));
        bytes
    }

    /// The inverse of [`Projection::to_bytes`]; the bytes may come from another process, so the
    /// shape and values are checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PcaError> {
        let invalid = |why: String| PcaError::InvalidState(format!("not a PCA projection: {why}"));
        let size = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let (Some(k), Some(dim)) = (size(0), size(4)) else {
            return Err(invalid(format!("{} bytes is shorter than its header", bytes.len())));
        };
        let (k, dim) = (k as usize, dim as usize);
        if k == 0 || dim == 0 {
            return Err(invalid(format!("{k} components of {dim} values")));
        }
        let values = &bytes[HEADER..];
        if values.len() != 8 * dim * (k + 1) {
            return Err(invalid(format!("{} bytes of values for {k} components of {dim}", values.len())));
        }
        let values: Vec<f64> =
            values.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        if !values.iter().all(|v| v.is_finite()) {
            return Err(invalid("a value is not finite".into()));
        }
        let (mean, components) = values.split_at(dim);
        Ok(Self::new(mean.to_vec(), components.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_survives_its_bytes_and_refuses_damaged_ones() {
        let projection = Projection::new(vec![1.0, 2.0, 3.0], vec![1.0, 0.0, 0.0, 0.0, 0.6, 0.8]);
        let bytes = projection.to_bytes();
        assert_eq!(Projection::from_bytes(&bytes).unwrap(), projection);
        let rows = [2.0f32, 2.0, 3.0, 1.0, 3.0, 4.0];
        let projected = projection.project(FeatureMatrix::new(&rows, 3).unwrap()).unwrap();
        assert_eq!(projected, vec![1.0, 0.0, 0.0, 1.4]);

        for damaged in [&bytes[..5], &bytes[..bytes.len() - 8], &[0u8; 8][..]] {
            assert!(matches!(Projection::from_bytes(damaged), Err(PcaError::InvalidState(_))), "{damaged:?}");
        }
        let mut nan = bytes.clone();
        nan[HEADER..HEADER + 8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(Projection::from_bytes(&nan).is_err());
    }
}
