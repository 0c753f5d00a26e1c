//! Agreement with scikit-learn on the sample, from `tests/fixtures/reference_pca.json` (made by
//! `tests/reference/make_pca_reference.py`).

use std::path::PathBuf;

use crate::{FeatureMatrix, Moments, Pca};
use serde_json::Value;

fn fixture() -> Value {
    let path = std::env::var_os("FRUITS_PCA_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference_pca.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// The fixture's components obey the sign rule `Pca` applies, so ours can be compared without
/// flipping: the convention is scikit-learn's, not merely compatible with it.
#[test]
fn reference_components_follow_our_sign_convention() {
    let fixture = fixture();
    for component in fixture["components"].as_array().unwrap() {
        let c = floats(component);
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        let largest = c.iter().copied().fold(0.0, |m: f64, v| if v.abs() > m.abs() { v } else { m });
        assert!(largest > 0.0);
    }
}

/// Refits the sample's features and compares everything the fixture holds. The features are not
/// in the repository: `make_pca_reference.py ... --save-features PREFIX`, then
/// `FRUITS_PCA_FEATURES=PREFIX cargo test --release -p fruits-pca -- --ignored --nocapture`.
#[test]
#[ignore = "needs FRUITS_PCA_FEATURES=PREFIX written by make_pca_reference.py --save-features"]
fn matches_scikit_learn_on_the_sample() {
    let prefix = std::env::var("FRUITS_PCA_FEATURES").expect("set FRUITS_PCA_FEATURES");
    let bytes = std::fs::read(format!("{prefix}.f32")).unwrap();
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let paths = std::fs::read_to_string(format!("{prefix}.paths.txt")).unwrap();
    let paths: Vec<&str> = paths.lines().collect();
    let fixture = fixture();
    let dim = fixture["features"].as_u64().unwrap() as usize;
    let rows = FeatureMatrix::new(&values, dim).unwrap();
    assert_eq!(rows.rows() as u64, fixture["rows"].as_u64().unwrap());
    assert_eq!(rows.rows(), paths.len());

    let reference_ratio = floats(&fixture["explained_variance_ratio"]);
    let pca = Pca::fit(rows, reference_ratio.len()).unwrap();
    let ratio = max_abs_diff(pca.explained_variance_ratio(), &reference_ratio);
    let variance = pca
        .explained_variance()
        .iter()
        .zip(floats(&fixture["explained_variance"]))
        .map(|(a, b)| (a - b).abs() / b)
        .fold(0.0, f64::max);
    let mean = max_abs_diff(pca.mean(), &floats(&fixture["mean"]));
    let components: Vec<f64> = fixture["components"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(j, c)| max_abs_diff(pca.component(j).unwrap(), &floats(c)))
        .collect();

    let two = Pca::fit(rows, 2).unwrap();
    let projected = two.project(rows).unwrap();
    let mut projection: f64 = 0.0;
    for (key, expected) in fixture["projections"].as_object().unwrap() {
        let row = paths.iter().position(|p| p == key).unwrap_or_else(|| panic!("{key} not among the features"));
        projection = projection.max(max_abs_diff(&projected[row * 2..row * 2 + 2], &floats(expected)));
    }

    let mut moments = Moments::new(dim).unwrap();
    for part in values.chunks(700 * dim) {
        moments.merge(&Moments::from_rows(FeatureMatrix::new(part, dim).unwrap()).unwrap()).unwrap();
    }
    let merged = Pca::from_moments(&moments, reference_ratio.len()).unwrap();
    let moments_ratio = max_abs_diff(merged.explained_variance_ratio(), pca.explained_variance_ratio());
    let moments_components =
        (0..2).map(|j| max_abs_diff(merged.component(j).unwrap(), pca.component(j).unwrap())).fold(0.0, f64::max);

    println!(
        "max |Δ| vs scikit-learn: explained variance ratio (k=10) {ratio:.1e}, explained variance (relative) {variance:.1e}"
    );
    println!(
        "  mean {mean:.1e}, PC1 {:.1e}, PC2 {:.1e}, projections of {} images {projection:.1e}",
        components[0],
        components[1],
        fixture["projections"].as_object().unwrap().len()
    );
    println!(
        "Moments path (7 merged states) vs in-memory: ratios {moments_ratio:.1e}, components {moments_components:.1e}"
    );
    assert!(ratio < 1e-4 && variance < 1e-4);
    assert!(components.iter().all(|&c| c < 1e-4), "{components:?}");
    assert!(projection < 1e-3);
    assert!(moments_ratio < 1e-4 && moments_components < 1e-4);
}
