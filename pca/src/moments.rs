use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{BLOCK_ROWS, FeatureMatrix, PcaError};

/// Count, mean and scatter matrix `Σ (x - mean)(x - mean)ᵀ` of a set of feature rows, in f64:
/// everything a PCA needs, in `O(d²)` memory whatever the number of rows.
///
/// Why mean-centred rather than the plain `n, Σx, ΣxxT`: the plain form gets the covariance as
/// `(ΣxxT - n·mean·meanᵀ) / (n - 1)`, a difference that loses about `2·log10(mean / std)` digits.
/// The sample's MobileNetV2 features (mean / std at most 3.1) would get away with it in f64
/// (2e-14 measured), but that is a property of one model, not a guarantee: with a large common
/// offset (mean / std ≈ 3,000 over a million rows, in the tests) the plain form is off by 4e-6,
/// the centred one by 1e-13. Centring costs nothing extra: each block of rows is centred on its
/// own exact mean before its products are taken, and two states combine with the pairwise
/// update of Chan, Golub and LeVeque (1979),
/// `S = S_a + S_b + (n_a n_b / n) δδᵀ`, `δ = mean_b - mean_a`,
/// which involves no cancellation, so merges in any order and any tree shape agree to rounding.
#[derive(Clone, PartialEq)]
pub struct Moments {
    n: u64,
    mean: Vec<f64>,
    /// Column-major `d x d`; only the lower triangle is kept up to date, the rest stays zero.
    scatter: Vec<f64>,
}

impl std::fmt::Debug for Moments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moments").field("n", &self.n).field("dim", &self.dim()).finish_non_exhaustive()
    }
}

impl Moments {
    pub fn new(dim: usize) -> Result<Self, PcaError> {
        if dim == 0 {
            return Err(PcaError::ZeroDimension);
        }
        Ok(Self::zeros(dim))
    }

    /// The moments of `rows` alone.
    pub fn from_rows(rows: FeatureMatrix<'_>) -> Result<Self, PcaError> {
        let mut moments = Self::new(rows.dim())?;
        moments.add_rows(rows)?;
        Ok(moments)
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    pub fn n_samples(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Adds rows, all or none: on error (wrong width, a NaN) the state is unchanged.
    ///
    /// Up to 1,024 rows (a record batch) are added on the calling thread. More are cut into
    /// equal blocks that rayon's threads take one at a time, each into its own state, merged at
    /// the end. Why not faer's parallel product instead: measured here it ran slower than one
    /// thread as soon as the other core had other work, while blocks taken on demand balance
    /// themselves.
    pub fn add_rows(&mut self, rows: FeatureMatrix<'_>) -> Result<(), PcaError> {
        let dim = self.dim();
        if rows.dim() != dim {
            return Err(PcaError::DimensionMismatch { expected: dim, got: rows.dim() });
        }
        rows.check_finite()?;
        let n = rows.rows();
        if n <= BLOCK_ROWS {
            self.add_block(rows, &mut Vec::new());
            return Ok(());
        }
        // Equal blocks, as many per thread: a short last block, or one thread left with an extra
        // block while the others wait, would leave cores idle.
        let threads = rayon::current_num_threads();
        let count = n.div_ceil(BLOCK_ROWS).next_multiple_of(threads);
        let blocks: Vec<FeatureMatrix<'_>> = rows.blocks(n.div_ceil(count)).collect();
        // One state per thread, each thread taking the next block when it is free: the work
        // balances itself, and memory stays at one state and one block per thread.
        let next = AtomicUsize::new(0);
        let added = (0..threads.min(blocks.len()))
            .into_par_iter()
            .filter_map(|_| {
                let (mut moments, mut buffer) = (None::<Self>, Vec::new());
                while let Some(block) = blocks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    moments.get_or_insert_with(|| Self::zeros(dim)).add_block(*block, &mut buffer);
                }
                moments
            })
            .reduce_with(|mut a, b| {
                a.merge_unchecked(&b);
                a
            });
        match added {
            Some(added) if self.n == 0 => *self = added,
            Some(added) => self.merge_unchecked(&added),
            None => {}
        }
        Ok(())
    }

    fn zeros(dim: usize) -> Self {
        Self { n: 0, mean: vec![0.0; dim], scatter: vec![0.0; dim * dim] }
    }

    /// Centres the block on its own mean in f64 (`buffer` is reused), takes its scatter and
    /// merges it in.
    fn add_block(&mut self, rows: FeatureMatrix<'_>, buffer: &mut Vec<f64>) {
        let (m, dim) = (rows.rows(), self.dim());
        if m == 0 {
            return;
        }
        let mut block_mean = vec![0.0; dim];
        for row in rows.values().chunks_exact(dim) {
            block_mean.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x));
        }
        block_mean.iter_mut().for_each(|s| *s /= m as f64);
        buffer.clear();
        for row in rows.values().chunks_exact(dim) {
            buffer.extend(row.iter().zip(&block_mean).map(|(&x, mu)| f64::from(x) - mu));
        }
        let centred = MatRef::from_row_major_slice(buffer, m, dim);
        matmul(
            MatMut::from_column_major_slice_mut(&mut self.scatter, dim, dim),
            BlockStructure::TriangularLower,
            Accum::Add,
            centred.transpose(),
            BlockStructure::Rectangular,
            centred,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        self.combine(m as u64, &block_mean);
    }

    /// Adds the rows summarised by `other`, as if they had been passed to [`Moments::add_rows`].
    pub fn merge(&mut self, other: &Moments) -> Result<(), PcaError> {
        if other.dim() != self.dim() {
            return Err(PcaError::DimensionMismatch { expected: self.dim(), got: other.dim() });
        }
        self.merge_unchecked(other);
        Ok(())
    }

    fn merge_unchecked(&mut self, other: &Moments) {
        self.scatter.iter_mut().zip(&other.scatter).for_each(|(s, o)| *s += o);
        self.combine(other.n, &other.mean);
    }

    /// The count and mean of a merge, and its between-groups term, once the other side's scatter
    /// has been added.
    fn combine(&mut self, other_n: u64, other_mean: &[f64]) {
        if other_n == 0 {
            return;
        }
        let (n_a, n_b) = (self.n as f64, other_n as f64);
        let n = n_a + n_b;
        let delta: Vec<f64> = other_mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let weight = n_a * n_b / n;
        if weight > 0.0 {
            let dim = self.dim();
            for (j, column) in self.scatter.chunks_exact_mut(dim).enumerate() {
                let scale = weight * delta[j];
                column[j..].iter_mut().zip(&delta[j..]).for_each(|(s, d)| *s += scale * d);
            }
        }
        self.mean.iter_mut().zip(&delta).for_each(|(mu, d)| *mu += d * (n_b / n));
        self.n += other_n;
    }

    /// The sample covariance `S / (n - 1)`, both triangles filled.
    pub(crate) fn covariance(&self) -> Result<Mat<f64>, PcaError> {
        if self.n < 2 {
            return Err(PcaError::TooFewRows(self.n));
        }
        let dim = self.dim();
        let scale = 1.0 / (self.n - 1) as f64;
        let lower = |i: usize, j: usize| self.scatter[i.max(j) + i.min(j) * dim] * scale;
        Ok(Mat::from_fn(dim, dim, lower))
    }

    /// A flat form for a DataFusion aggregate state (a `List<Float64>`):
    /// `[dim, n, mean (dim), lower triangle of the scatter column by column (dim (dim + 1) / 2)]`.
    /// 820,482 values (6.6 MB) for 1,280 features.
    pub fn to_flat(&self) -> Vec<f64> {
        let dim = self.dim();
        let mut flat = Vec::with_capacity(2 + dim + dim * (dim + 1) / 2);
        flat.extend([dim as f64, self.n as f64]);
        flat.extend(&self.mean);
        for (j, column) in self.scatter.chunks_exact(dim).enumerate() {
            flat.extend(&column[j..]);
        }
        flat
    }

    /// The inverse of [`Moments::to_flat`]; checks the shape and the values, since the bytes may
    /// have crossed a network.
    pub fn from_flat(flat: &[f64]) -> Result<Self, PcaError> {
        let invalid = |reason: String| PcaError::InvalidState(reason);
        let as_count = |v: f64, what: &str| {
            if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
                Ok(v as u64)
            } else {
                Err(invalid(format!("{what} is {v}, not a count")))
            }
        };
        let (&[dim, n], rest) =
            flat.split_first_chunk::<2>().ok_or_else(|| invalid("shorter than its header".into()))?;
        let dim = as_count(dim, "the dimension")? as usize;
        let n = as_count(n, "the row count")?;
        if dim == 0 {
            return Err(invalid("the dimension is 0".into()));
        }
        let expected = dim.checked_mul(dim + 1).map(|t| dim + t / 2);
        if expected != Some(rest.len()) {
            return Err(invalid(format!("{} values after the header do not fit dimension {dim}", rest.len())));
        }
        if let Some(v) = rest.iter().find(|v| !v.is_finite()) {
            return Err(invalid(format!("it holds {v}")));
        }
        let (mean, mut packed) = rest.split_at(dim);
        let mut scatter = vec![0.0; dim * dim];
        for (j, column) in scatter.chunks_exact_mut(dim).enumerate() {
            let (head, tail) = packed.split_at(dim - j);
            column[j..].copy_from_slice(head);
            packed = tail;
        }
        Ok(Self { n, mean: mean.to_vec(), scatter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pca::Lcg;
    use crate::pca::tests::random_rows;

    /// Two-pass covariance in f64: the textbook definition, as a reference.
    fn reference_covariance(rows: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
        let n = rows.len() / dim;
        let mut mean = vec![0.0; dim];
        for row in rows.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += f64::from(x) / n as f64);
        }
        let mut cov = vec![0.0; dim * dim];
        for row in rows.chunks_exact(dim) {
            for i in 0..dim {
                for j in 0..dim {
                    cov[i * dim + j] += (f64::from(row[i]) - mean[i]) * (f64::from(row[j]) - mean[j]) / (n - 1) as f64;
                }
            }
        }
        (mean, cov)
    }

    fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
        a.into_iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }

    fn covariance_of(moments: &Moments) -> Vec<f64> {
        let c = moments.covariance().unwrap();
        let d = moments.dim();
        (0..d * d).map(|i| c[(i / d, i % d)]).collect()
    }

    #[test]
    fn matches_two_pass_covariance_across_blocks() {
        let (n, d) = (BLOCK_ROWS * 2 + 37, 6);
        let rows = random_rows(n, d, 3);
        let moments = Moments::from_rows(FeatureMatrix::new(&rows, d).unwrap()).unwrap();
        let (mean, cov) = reference_covariance(&rows, d);
        assert_eq!(moments.n_samples(), n as u64);
        assert!(max_abs_diff(moments.mean().iter().copied(), mean) < 1e-12);
        assert!(max_abs_diff(covariance_of(&moments), cov) < 1e-12);
    }

    #[test]
    fn merge_in_any_grouping_equals_one_pass() {
        let (n, d) = (500, 5);
        let rows = random_rows(n, d, 4);
        let whole = Moments::from_rows(FeatureMatrix::new(&rows, d).unwrap()).unwrap();
        // Uneven pieces, one empty, merged right to left into a fresh state.
        let cuts = [0, 1, 1, 120, 377, 500];
        let mut merged = Moments::new(d).unwrap();
        for w in cuts.windows(2).rev() {
            let piece = Moments::from_rows(FeatureMatrix::new(&rows[w[0] * d..w[1] * d], d).unwrap()).unwrap();
            merged.merge(&piece).unwrap();
        }
        assert_eq!(merged.n_samples(), whole.n_samples());
        assert!(max_abs_diff(merged.mean().iter().copied(), whole.mean().iter().copied()) < 1e-12);
        assert!(max_abs_diff(covariance_of(&merged), covariance_of(&whole)) < 1e-12);
    }

    /// A large common offset and little spread (mean / std ≈ 3,000) is where the plain
    /// `(ΣxxT - n·mean·meanᵀ) / (n - 1)` cancels; the centred state keeps full accuracy over a
    /// million rows streamed in small batches.
    #[test]
    fn stays_accurate_for_a_million_offset_rows() {
        let (n, d, batch) = (1_000_000, 4, 1000);
        let mut rng = Lcg(11);
        let rows: Vec<f32> = (0..n * d).map(|i| 9.0 + 0.001 * (i % d) as f32 + 0.01 * rng.next_f32()).collect();
        let mut moments = Moments::new(d).unwrap();
        let (mut sum, mut products) = (vec![0.0; d], vec![0.0; d * d]);
        for batch in rows.chunks(batch * d) {
            moments.add_rows(FeatureMatrix::new(batch, d).unwrap()).unwrap();
            for row in batch.chunks_exact(d) {
                for i in 0..d {
                    sum[i] += f64::from(row[i]);
                    for j in 0..d {
                        products[i * d + j] += f64::from(row[i]) * f64::from(row[j]);
                    }
                }
            }
        }
        let plain = (0..d * d).map(|ij| (products[ij] - sum[ij / d] * sum[ij % d] / n as f64) / (n - 1) as f64);
        let (mean, cov) = reference_covariance(&rows, d);
        assert!(max_abs_diff(moments.mean().iter().copied(), mean) < 1e-12);
        let scale = cov.iter().fold(0.0_f64, |m, c| m.max(c.abs()));
        let centred_error = max_abs_diff(covariance_of(&moments), cov.iter().copied()) / scale;
        let plain_error = max_abs_diff(plain, cov) / scale;
        assert!(centred_error < 1e-11, "centred: {centred_error:e}");
        assert!(plain_error > 1000.0 * centred_error, "plain: {plain_error:e}, centred: {centred_error:e}");
    }

    #[test]
    fn flat_form_round_trips_and_rejects_garbage() {
        let d = 7;
        let rows = random_rows(40, d, 5);
        let moments = Moments::from_rows(FeatureMatrix::new(&rows, d).unwrap()).unwrap();
        let flat = moments.to_flat();
        assert_eq!(flat.len(), 2 + d + d * (d + 1) / 2);
        assert_eq!(Moments::from_flat(&flat).unwrap(), moments);

        let err = |flat: &[f64]| Moments::from_flat(flat).unwrap_err().to_string();
        assert_eq!(err(&[]), "not a serialised Moments state: shorter than its header");
        assert!(err(&flat[..flat.len() - 1]).contains("do not fit dimension 7"), "{}", err(&flat[..flat.len() - 1]));
        let mut bad = flat.clone();
        bad[1] = 2.5;
        assert!(err(&bad).contains("the row count is 2.5"));
        bad[1] = 40.0;
        bad[5] = f64::NAN;
        assert!(err(&bad).contains("NaN"));
    }

    #[test]
    fn rejects_bad_rows_without_changing_state() {
        let mut moments = Moments::from_rows(FeatureMatrix::new(&[1.0, 2.0, 3.0, 5.0], 2).unwrap()).unwrap();
        let before = moments.clone();
        let err = moments.add_rows(FeatureMatrix::new(&[1.0, 2.0, 3.0, f32::NAN], 2).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "feature 1 of row 1 is NaN: features must be finite");
        let err = moments.add_rows(FeatureMatrix::new(&[1.0, 2.0, 3.0], 3).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "expected rows of 2 features, got 3");
        let err = moments.merge(&Moments::new(3).unwrap()).unwrap_err();
        assert_eq!(err, PcaError::DimensionMismatch { expected: 2, got: 3 });
        assert_eq!(moments, before);
        assert_eq!(
            FeatureMatrix::new(&[1.0; 5], 2).unwrap_err().to_string(),
            "5 values do not split into rows of 2 features"
        );
    }
}
