//! Times the PCA stage on real features.
//!
//! ```text
//! cargo run --release --example pca_bench -- FEATURES.f32 DIM [PATHS.txt]
//! ```
//!
//! FEATURES.f32 is row-major little-endian f32 (`features.astype("<f4").tofile(path)` in numpy;
//! `tests/reference/make_pca_reference.py --save-features` writes one). With PATHS.txt (one
//! `label/file` per row) it also draws `pca.png` in the current folder.
//!
//! Prints, for k = 2: the in-memory fit and fit + projection of the input, the same for 50,000
//! rows (the input repeated with tiny noise), the Moments path (8 partial states, serialised,
//! merged), smartcore's `PCA::fit` on 1,000 rows as the slow baseline (skip with
//! FRUITS_PCA_BENCH_SKIP_SMARTCORE=1), and the peak resident memory after each step.

use std::time::Instant;

use fruits_pca::{FeatureMatrix, Moments, Pca, scatter_png};
use smartcore::decomposition::pca::{PCA, PCAParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;

type Error = Box<dyn std::error::Error>;

const K: usize = 2;
const RUNS: usize = 7;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, dim, rest @ ..] = args.as_slice() else {
        return Err("usage: pca_bench FEATURES.f32 DIM [PATHS.txt]".into());
    };
    let dim: usize = dim.parse()?;
    let values: Vec<f32> =
        std::fs::read(path)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let rows = FeatureMatrix::new(&values, dim)?;
    let n = rows.rows();
    println!("{n} x {dim} features from {path}");

    // A shared machine makes single timings noisy: the fastest of a few runs is the one least
    // disturbed, the median the typical one.
    let mut runs = Vec::new();
    let mut fitted = None;
    for _ in 0..RUNS {
        let (pca, fit_s) = timed(|| Pca::fit(rows, K));
        let pca = pca?;
        let (projected, project_s) = timed(|| pca.project(rows));
        runs.push((fit_s + project_s, fit_s, project_s));
        fitted = Some((pca, projected?));
    }
    let (pca, projected) = fitted.ok_or("no run")?;
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (best, fit_s, project_s) = runs[0];
    println!(
        "in-memory fit + projection {n} x {dim}, k = {K}: best of {RUNS} {best:.3} s (fit {fit_s:.3} s, projection \
         {project_s:.3} s), median {:.3} s; ratios {:.4?}{}",
        runs[RUNS / 2].0,
        pca.explained_variance_ratio(),
        peak()
    );

    let (moments, moments_s) = timed(|| Moments::from_rows(rows));
    let moments = moments?;
    let (_, eigen2_s) = timed(|| Pca::from_moments(&moments, 2));
    let (_, eigen10_s) = timed(|| Pca::from_moments(&moments, 10));
    drop(moments);
    println!(
        "  of which mean + scatter {moments_s:.3} s; eigen-decomposition k = 2: {eigen2_s:.3} s, k = 10: {eigen10_s:.3} s"
    );

    let partitions = 8;
    let (from_moments, moments_s) = timed(|| -> Result<Pca, Error> {
        let mut merged = Moments::new(dim)?;
        for part in values.chunks(n.div_ceil(partitions) * dim) {
            let state = Moments::from_rows(FeatureMatrix::new(part, dim)?)?.to_flat();
            merged.merge(&Moments::from_flat(&state)?)?;
        }
        Ok(Pca::from_moments(&merged, K)?)
    });
    let from_moments = from_moments?;
    let ratio_diff = max_diff(from_moments.explained_variance_ratio(), pca.explained_variance_ratio());
    let component_diff = (0..K)
        .map(|j| max_diff(from_moments.component(j).unwrap_or(&[]), pca.component(j).unwrap_or(&[])))
        .fold(0.0, f64::max);
    println!(
        "Moments path ({partitions} states, flat round trip, merge, eigen): {moments_s:.3} s; vs in-memory: \
         ratios {ratio_diff:.1e}, components {component_diff:.1e}"
    );

    if let [paths, ..] = rest {
        let labels: Vec<String> = std::fs::read_to_string(paths)?
            .lines()
            .map(|p| p.rsplit_once('/').map_or(p, |(label, _)| label).to_string())
            .collect();
        let points: Vec<[f64; 2]> = projected.chunks_exact(K).map(|p| [p[0], p[1]]).collect();
        let ratio = pca.explained_variance_ratio();
        let (png, plot_s) = timed(|| scatter_png(&points, &labels, [ratio[0], ratio[1]], 1200, 900));
        std::fs::write("pca.png", png?)?;
        println!("pca.png, {} points: {plot_s:.3} s", points.len());
    }

    let big_n = 50_000;
    let mut noise = 0x2545_f491_4f6c_dd1d_u64;
    let big: Vec<f32> = values
        .iter()
        .cycle()
        .take(big_n * dim)
        .map(|&v| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            v + 1e-3 * ((noise >> 40) as f32 / (1u32 << 24) as f32 - 0.5)
        })
        .collect();
    drop(values);
    let big_rows = FeatureMatrix::new(&big, dim)?;
    let (big_pca, big_fit_s) = timed(|| Pca::fit(big_rows, K));
    let big_pca = big_pca?;
    let (big_projected, big_project_s) = timed(|| big_pca.project(big_rows));
    big_projected?;
    println!("in-memory fit {big_n} x {dim}: {big_fit_s:.3} s, + projection {big_project_s:.3} s{}", peak());
    drop(big);

    if std::env::var_os("FRUITS_PCA_BENCH_SKIP_SMARTCORE").is_none() {
        let small_n = 1000.min(n);
        let values: Vec<f64> = read_head(path, small_n * dim)?;
        let x = DenseMatrix::new(small_n, dim, values, false)?;
        let (reference, smartcore_s) = timed(|| PCA::fit(&x, PCAParameters::default().with_n_components(K)));
        reference?;
        println!("smartcore 0.7 PCA::fit {small_n} x {dim}: {smartcore_s:.3} s{}", peak());
    }
    Ok(())
}

fn read_head(path: &str, count: usize) -> Result<Vec<f64>, Error> {
    let bytes = std::fs::read(path)?;
    Ok(bytes.chunks_exact(4).take(count).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// The process's peak resident memory so far (Linux), to put a number on "does not blow memory".
fn peak() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_string()))
        .map_or(String::new(), |kb| format!("  [peak RSS so far {kb}]"))
}
