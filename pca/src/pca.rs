use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linalg::traits::evd::EVDDecomposable;

use crate::{FeatureMatrix, Moments, PcaError, Projection};

/// A fitted principal component analysis: the `k` leading eigenvectors of the sample covariance
/// matrix, as scikit-learn's `PCA` reports them (same scaling, same signs), so numbers and plots
/// can be compared with it directly.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    projection: Projection,
    explained_variance: Vec<f64>,
    explained_variance_ratio: Vec<f64>,
    total_variance: f64,
    n_samples: u64,
}

impl Pca {
    /// Fits `k` components to rows held in memory.
    ///
    /// Rows pass through f64 one block of 1,024 at a time ([`Moments`]): no f64 copy of the data
    /// is made, and the extra memory is one block and one `d x d` state per thread (23 MB at
    /// d = 1,280) whatever `n`. Measured here (2 cores, `examples/pca_bench.rs`): the sample's
    /// 4,835 x 1,280 in 0.065 s plus 0.005 s of projection, where scikit-learn's
    /// `PCA(n_components=2).fit_transform` took 0.08 s at best and 0.13-0.27 s typically in the
    /// same runs; 50,000 x 1,280 in 0.55 s at 363 MB peak RSS for the whole process, 256 MB of it
    /// the f32 input (an f64 copy alone would be 512 MB).
    pub fn fit(rows: FeatureMatrix<'_>, k: usize) -> Result<Self, PcaError> {
        check_k(k, rows.dim())?;
        Self::from_moments(&Moments::from_rows(rows)?, k)
    }

    /// Finishes a PCA from moments accumulated anywhere, for example by a distributed aggregate.
    pub fn from_moments(moments: &Moments, k: usize) -> Result<Self, PcaError> {
        check_k(k, moments.dim())?;
        let covariance = moments.covariance()?;
        let total_variance = covariance.diagonal().column_vector().sum();
        if total_variance <= 0.0 {
            return Err(PcaError::ZeroVariance(moments.n_samples()));
        }
        let (values, vectors) = top_eigenpairs(covariance.as_ref(), k)?;
        let dim = moments.dim();
        let mut components = Vec::with_capacity(k * dim);
        for j in 0..k {
            let column = vectors.col(j);
            // scikit-learn's `svd_flip(u_based_decision=False)`: the entry of largest magnitude
            // (the first such, as `argmax` picks) is made positive, so reruns plot the same way.
            let mut largest = 0;
            for i in 1..dim {
                if column[i].abs() > column[largest].abs() {
                    largest = i;
                }
            }
            let sign = if column[largest] < 0.0 { -1.0 } else { 1.0 };
            components.extend(column.iter().map(|v| sign * v));
        }
        // Rounding can leave the smallest eigenvalues a hair below zero; variance cannot be.
        let explained_variance: Vec<f64> = values.iter().map(|v| v.max(0.0)).collect();
        let explained_variance_ratio = explained_variance.iter().map(|v| v / total_variance).collect();
        Ok(Self {
            projection: Projection::new(moments.mean().to_vec(), components),
            explained_variance,
            explained_variance_ratio,
            total_variance,
            n_samples: moments.n_samples(),
        })
    }

    /// Coordinates of `rows` on the components: `k` values per row, row-major.
    pub fn project(&self, rows: FeatureMatrix<'_>) -> Result<Vec<f64>, PcaError> {
        self.projection.project(rows)
    }

    /// What projecting rows takes, for a process that did not fit the PCA.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    pub fn n_components(&self) -> usize {
        self.explained_variance.len()
    }

    pub fn dim(&self) -> usize {
        self.projection.dim()
    }

    pub fn n_samples(&self) -> u64 {
        self.n_samples
    }

    pub fn mean(&self) -> &[f64] {
        self.projection.mean()
    }

    /// Component `i` (0-based: PC1 is 0), a unit vector of `dim` values.
    pub fn component(&self, i: usize) -> Option<&[f64]> {
        self.projection.component(i)
    }

    /// Variance of the data along each component (eigenvalues of the covariance, divisor `n - 1`).
    pub fn explained_variance(&self) -> &[f64] {
        &self.explained_variance
    }

    /// Share of the total variance along each component.
    pub fn explained_variance_ratio(&self) -> &[f64] {
        &self.explained_variance_ratio
    }

    /// Share of the total variance kept by the first 1, 2, ..., k components.
    pub fn cumulative_explained_variance_ratio(&self) -> Vec<f64> {
        self.explained_variance_ratio
            .iter()
            .scan(0.0, |sum, r| {
                *sum += r;
                Some(*sum)
            })
            .collect()
    }

    /// Sum of the variances of all features: the trace of the covariance matrix.
    pub fn total_variance(&self) -> f64 {
        self.total_variance
    }
}

fn check_k(k: usize, dim: usize) -> Result<(), PcaError> {
    match k {
        0 => Err(PcaError::NoComponents),
        k if k > dim => Err(PcaError::TooManyComponents { k, dim }),
        _ => Ok(()),
    }
}

/// Extra directions iterated beyond the `k` wanted: the error of eigenvector `i` shrinks by
/// `λ(l+1) / λ(i)` per iteration, so a wider block converges in fewer, slightly dearer, steps.
const OVERSAMPLING: usize = 10;
/// A residual `‖C v - θ v‖ ≤ 1e-10 λ1` puts `θ` within `1e-10 λ1` of an eigenvalue and `v`
/// within an angle of `1e-10 λ1 / gap` of its eigenvector (Davis-Kahan): far inside the 1e-4 and
/// 1e-3 asked of the comparison with scikit-learn, and above what rounding in `C` (~1e-14 λ1)
/// allows.
const RESIDUAL_TOLERANCE: f64 = 1e-10;
/// Past this many iterations (a spectrum too flat to separate; ~1 ms each at d = 1,280) the full
/// decomposition (0.21 s) is cheaper.
const MAX_ITERATIONS: usize = 200;

/// The `k` largest eigenvalues (descending) and their eigenvectors (columns) of the symmetric
/// positive semi-definite `c`.
///
/// Why block subspace iteration with a Rayleigh-Ritz step, not a full decomposition: PCA needs a
/// handful of the 1,280 eigenpairs. Measured here on the sample's 1,280 x 1,280 covariance (one
/// core): faer's full `self_adjoint_eigen` takes 0.21 s and smartcore's `evd` 11 s, while
/// iterating a block of `k + max(k, 10)` vectors reaches [`RESIDUAL_TOLERANCE`] in 12 steps for k = 2
/// (0.01 s) and 23 for k = 10 (0.03 s). Each step's small `l x l` eigenproblem is smartcore's
/// (microseconds at that size). A spectrum that has not converged after [`MAX_ITERATIONS`]
/// falls back to faer's full decomposition, so the answer is always exact.
fn top_eigenpairs(c: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>), PcaError> {
    let d = c.nrows();
    let l = (k + OVERSAMPLING.max(k)).min(d);
    if l == d {
        return full_eigenpairs(c, k);
    }
    // A fixed seed: no run-to-run variation from the start.
    let mut rng = Lcg(0x5eed_f00d);
    let mut q = Mat::from_fn(d, l, |_, _| rng.next_f64() - 0.5).qr().compute_thin_Q();
    let mut cq = Mat::zeros(d, l);
    for _ in 0..MAX_ITERATIONS {
        // Top and bottom rows of C Q on two threads: the one product that costs anything here.
        let (c_top, c_bottom) = c.split_at_row(d / 2);
        let (cq_top, cq_bottom) = cq.as_mut().split_at_row_mut(d / 2);
        rayon::join(
            || matmul(cq_top, Accum::Replace, c_top, q.as_ref(), 1.0, Par::Seq),
            || matmul(cq_bottom, Accum::Replace, c_bottom, q.as_ref(), 1.0, Par::Seq),
        );
        let (theta, w) = small_symmetric_eigen((q.transpose() * &cq).as_ref())?;
        let ritz = &q * &w;
        let c_ritz = &cq * &w;
        let tolerance = RESIDUAL_TOLERANCE * theta[0].abs();
        let converged = (0..k).all(|j| (c_ritz.col(j) - ritz.col(j) * faer::Scale(theta[j])).norm_l2() <= tolerance);
        if converged {
            return Ok((theta[..k].to_vec(), ritz.subcols(0, k).to_owned()));
        }
        q = c_ritz.qr().compute_thin_Q();
    }
    full_eigenpairs(c, k)
}

/// Eigenvalues (descending) and eigenvectors of a small symmetric matrix, with smartcore.
fn small_symmetric_eigen(h: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), PcaError> {
    let l = h.nrows();
    // Symmetrise: rounding makes Qᵀ(CQ) a hair asymmetric, and the solver assumes symmetry.
    let values = (0..l * l).map(|i| 0.5 * (h[(i % l, i / l)] + h[(i / l, i % l)])).collect();
    let matrix = DenseMatrix::new(l, l, values, true).map_err(|e| PcaError::Eigen(e.to_string()))?;
    let evd = matrix.evd(true).map_err(|e| PcaError::Eigen(e.to_string()))?;
    Ok((evd.d, Mat::from_fn(l, l, |i, j| *evd.V.get((i, j)))))
}

fn full_eigenpairs(c: MatRef<'_, f64>, k: usize) -> Result<(Vec<f64>, Mat<f64>), PcaError> {
    let evd = c.self_adjoint_eigen(Side::Lower).map_err(|e| PcaError::Eigen(format!("{e:?}")))?;
    let d = c.nrows();
    // faer sorts ascending.
    let values = (0..k).map(|j| evd.S()[d - 1 - j]).collect();
    Ok((values, Mat::from_fn(d, k, |i, j| evd.U()[(i, d - 1 - j)])))
}

/// Knuth's MMIX linear congruential generator: deterministic start vectors without a `rand`
/// dependency, and seeded data in the tests.
pub(crate) struct Lcg(pub u64);

impl Lcg {
    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    #[cfg(test)]
    pub(crate) fn next_f32(&mut self) -> f32 {
        self.next_f64() as f32
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smartcore::decomposition::pca::{PCA, PCAParameters};

    /// Rows from a few latent factors of decaying strength plus noise, shifted into [0, ~10] like
    /// MobileNetV2 features: a spectrum with distinct, well separated leading eigenvalues.
    pub(crate) fn random_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = Lcg(seed);
        let factors = d.min(8);
        let loadings: Vec<f64> = (0..factors * d).map(|_| rng.next_f64() - 0.5).collect();
        let offsets: Vec<f64> = (0..d).map(|_| 2.0 + 3.0 * rng.next_f64()).collect();
        let mut rows = Vec::with_capacity(n * d);
        for _ in 0..n {
            let z: Vec<f64> = (0..factors).map(|f| (rng.next_f64() - 0.5) * 4.0 / (1.0 + f as f64)).collect();
            for c in 0..d {
                let signal: f64 = (0..factors).map(|f| z[f] * loadings[f * d + c]).sum();
                rows.push((offsets[c] + signal + 0.05 * (rng.next_f64() - 0.5)) as f32);
            }
        }
        rows
    }

    fn fit(rows: &[f32], d: usize, k: usize) -> Pca {
        Pca::fit(FeatureMatrix::new(rows, d).unwrap(), k).unwrap()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn agrees_with_smartcore() {
        let (n, d, k) = (300, 40, 4);
        let rows = random_rows(n, d, 1);
        let ours = fit(&rows, d, k);

        let x = DenseMatrix::new(n, d, rows.iter().map(|&v| f64::from(v)).collect(), false).unwrap();
        let reference = PCA::fit(&x, PCAParameters::default().with_n_components(k)).unwrap();
        let projected = reference.transform(&x).unwrap();
        // smartcore keeps its eigenvalues private: the variance of each projected column is the
        // same number, and the total is the sum of the per-feature variances.
        let variance = |values: &mut dyn Iterator<Item = f64>| {
            let values: Vec<f64> = values.collect();
            let mean = values.iter().sum::<f64>() / n as f64;
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        };
        let total: f64 = (0..d).map(|c| variance(&mut (0..n).map(|r| *x.get((r, c))))).sum();
        let our_projection = ours.project(FeatureMatrix::new(&rows, d).unwrap()).unwrap();
        for j in 0..k {
            let ratio = variance(&mut (0..n).map(|r| *projected.get((r, j)))) / total;
            assert!((ratio - ours.explained_variance_ratio()[j]).abs() < 1e-6, "PC{}: {ratio}", j + 1);
            let theirs: Vec<f64> = (0..d).map(|i| *reference.components().get((i, j))).collect();
            let sign = dot(&theirs, ours.component(j).unwrap()).signum();
            let worst =
                theirs.iter().zip(ours.component(j).unwrap()).map(|(t, o)| (sign * t - o).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-6, "PC{} differs by {worst}", j + 1);
            for r in 0..n {
                assert!((sign * projected.get((r, j)) - our_projection[r * k + j]).abs() < 1e-6);
            }
        }
        assert!((ours.total_variance() - total).abs() < 1e-9 * total);
    }

    #[test]
    fn components_are_orthonormal_with_sklearn_signs() {
        let (d, k) = (30, 5);
        let pca = fit(&random_rows(200, d, 2), d, k);
        for i in 0..k {
            let ci = pca.component(i).unwrap();
            for j in 0..k {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot(ci, pca.component(j).unwrap()) - expected).abs() < 1e-12);
            }
            let largest = ci.iter().copied().fold(0.0, |m: f64, v| if v.abs() > m.abs() { v } else { m });
            assert!(largest > 0.0, "PC{} has its largest entry negative", i + 1);
        }
        let ratios = pca.explained_variance_ratio();
        assert!(ratios.windows(2).all(|w| w[0] >= w[1]));
        let cumulative = pca.cumulative_explained_variance_ratio();
        assert!((cumulative[k - 1] - ratios.iter().sum::<f64>()).abs() < 1e-15 && cumulative[k - 1] <= 1.0);
        assert!(pca.component(k).is_none());
    }

    #[test]
    fn subspace_iteration_matches_full_decomposition() {
        let d = 60;
        let rows = random_rows(500, d, 7);
        let covariance = Moments::from_rows(FeatureMatrix::new(&rows, d).unwrap()).unwrap().covariance().unwrap();
        let (values, vectors) = top_eigenpairs(covariance.as_ref(), 6).unwrap();
        let (exact_values, exact_vectors) = full_eigenpairs(covariance.as_ref(), 6).unwrap();
        for j in 0..6 {
            assert!((values[j] - exact_values[j]).abs() < 1e-12 * exact_values[0]);
            let cosine = vectors.col(j).transpose() * exact_vectors.col(j);
            assert!((cosine.abs() - 1.0).abs() < 1e-9, "eigenvector {j}: cosine {cosine}");
        }
    }

    #[test]
    fn a_flat_spectrum_falls_back_to_the_full_decomposition() {
        // Eigenvalues 1 - 1e-4 i: subspace iteration would need ~1e5 steps, so it must give up
        // and still return the exact answer.
        let d = 40;
        let mut rng = Lcg(3);
        let q = Mat::from_fn(d, d, |_, _| rng.next_f64() - 0.5).qr().compute_thin_Q();
        let spectrum = Mat::from_fn(d, d, |i, j| if i == j { 1.0 - 1e-4 * i as f64 } else { 0.0 });
        let c = &q * &spectrum * q.transpose();
        let (values, vectors) = top_eigenpairs(c.as_ref(), 2).unwrap();
        for j in 0..2 {
            assert!((values[j] - (1.0 - 1e-4 * j as f64)).abs() < 1e-12, "{values:?}");
            let cosine = vectors.col(j).transpose() * q.col(j);
            assert!((cosine.abs() - 1.0).abs() < 1e-8, "eigenvector {j}: cosine {cosine}");
        }
    }

    #[test]
    fn repeated_eigenvalues_still_give_an_orthonormal_basis() {
        // Isotropic data: every direction is an eigenvector with the same eigenvalue.
        let d = 20;
        let mut rows = vec![0.0f32; 2 * d * d];
        for i in 0..d {
            rows[2 * i * d + i] = 1.0;
            rows[(2 * i + 1) * d + i] = -1.0;
        }
        let pca = fit(&rows, d, 3);
        let expected = 2.0 / (2 * d - 1) as f64;
        assert!(
            pca.explained_variance().iter().all(|v| (v - expected).abs() < 1e-12),
            "{:?}",
            pca.explained_variance()
        );
        assert!((dot(pca.component(0).unwrap(), pca.component(2).unwrap())).abs() < 1e-12);
    }

    #[test]
    fn from_merged_moments_equals_fit() {
        let d = 25;
        let rows = random_rows(1000, d, 9);
        let whole = fit(&rows, d, 3);
        let mut merged = Moments::new(d).unwrap();
        for part in rows.chunks(333 * d) {
            let state = Moments::from_rows(FeatureMatrix::new(part, d).unwrap()).unwrap().to_flat();
            merged.merge(&Moments::from_flat(&state).unwrap()).unwrap();
        }
        let pca = Pca::from_moments(&merged, 3).unwrap();
        let diffs = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diffs(pca.explained_variance_ratio(), whole.explained_variance_ratio()) < 1e-12);
        for j in 0..3 {
            assert!(diffs(pca.component(j).unwrap(), whole.component(j).unwrap()) < 1e-9);
        }
        assert_eq!(pca.n_samples(), 1000);
    }

    #[test]
    fn explains_bad_input() {
        let err = |rows: &[f32], d, k| Pca::fit(FeatureMatrix::new(rows, d).unwrap(), k).unwrap_err().to_string();
        assert_eq!(err(&[1.0, 2.0, 3.0], 3, 2), "need at least 2 rows with features, got 1");
        assert_eq!(err(&[], 3, 2), "need at least 2 rows with features, got 0");
        assert_eq!(err(&[1.0; 6], 3, 5), "k = 5 is larger than the feature dimension 3");
        assert_eq!(err(&[1.0; 6], 3, 0), "k must be at least 1");
        assert_eq!(err(&[1.0; 6], 3, 1), "all 2 rows are identical: there is no variance to explain");
        assert_eq!(FeatureMatrix::new(&[], 0).unwrap_err().to_string(), "the feature dimension must be at least 1");

        let pca = fit(&[0.0, 1.0, 2.0, 4.0, 1.0, 1.0], 2, 1);
        let wrong = pca.project(FeatureMatrix::new(&[1.0; 3], 3).unwrap()).unwrap_err();
        assert_eq!(wrong.to_string(), "expected rows of 2 features, got 3");
        let inf = pca.project(FeatureMatrix::new(&[1.0, f32::INFINITY], 2).unwrap()).unwrap_err();
        assert_eq!(inf.to_string(), "feature 1 of row 0 is inf: features must be finite");
    }
}
