//! The scikit-learn reference PCA of the sample's features (`tests/fixtures/reference_pca.json`,
//! made by `tests/reference/make_pca_reference.py`), and how a run's PCA is compared with it.

use std::collections::HashMap;

use bytes::Bytes;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Deserialize;

use super::{label_and_file, repo_root};

#[derive(Debug, Deserialize)]
pub struct ReferencePca {
    pub rows: usize,
    pub explained_variance_ratio: Vec<f64>,
    /// `Label/file` -> (pc1, pc2).
    pub projections: HashMap<String, [f64; 2]>,
}

impl ReferencePca {
    pub fn load() -> Self {
        let path = repo_root().join("tests/fixtures/reference_pca.json");
        serde_json::from_slice(&std::fs::read(path).expect("reference_pca.json")).expect("fixture JSON")
    }

    /// Panics unless `pca` (the `pca` part of a summary) and `projections` (from
    /// [`parse_projections`]) agree with the reference: explained variance within 1e-4,
    /// projections within 1e-3 up to the sign of each component.
    pub fn assert_matches(&self, pca: &serde_json::Value, projections: &HashMap<String, Vec<f64>>) {
        assert_eq!(pca["rows"], self.rows, "{pca}");
        assert_eq!(pca["rows_without_features"], 0, "{pca}");
        let ratios: Vec<f64> = serde_json::from_value(pca["explained_variance_ratio"].clone()).expect("ratios");
        assert_eq!(ratios.len(), 2);
        for (ours, theirs) in ratios.iter().zip(&self.explained_variance_ratio) {
            assert!((ours - theirs).abs() < 1e-4, "explained variance ratio {ours} vs scikit-learn {theirs}");
        }
        assert_eq!(projections.len(), self.rows);
        let by_relative: HashMap<String, &Vec<f64>> =
            projections.iter().map(|(path, pcs)| (label_and_file(path), pcs)).collect();
        let expected: HashMap<String, Vec<f64>> =
            self.projections.iter().map(|(path, pcs)| (path.clone(), pcs.to_vec())).collect();
        let worst = largest_difference_up_to_sign(&by_relative, &expected);
        assert!(worst < 1e-3, "largest projection difference from scikit-learn: {worst}");
    }
}

/// The largest difference between the projections of `theirs` and those of the same keys in
/// `ours` (which must have them all), each component compared up to its sign (a component is
/// defined up to sign).
pub fn largest_difference_up_to_sign<A: AsRef<[f64]>, B: AsRef<[f64]>>(
    ours: &HashMap<String, A>,
    theirs: &HashMap<String, B>,
) -> f64 {
    let first = theirs.values().next().map_or(0, |v| v.as_ref().len());
    let mut worst = 0f64;
    for c in 0..first {
        // One sign per component, decided on all rows together.
        let (mut same, mut flipped) = (0f64, 0f64);
        for (key, expected) in theirs {
            let got = ours.get(key).unwrap_or_else(|| panic!("{key} has no projection"));
            let (a, b) = (got.as_ref()[c], expected.as_ref()[c]);
            same = same.max((a - b).abs());
            flipped = flipped.max((a + b).abs());
        }
        worst = worst.max(same.min(flipped));
    }
    worst
}

/// `pca/part-<run>.parquet` as `path -> [pc1, pc2, ...]`.
pub fn parse_projections(parquet: Bytes) -> HashMap<String, Vec<f64>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet).expect("metadata").build().expect("reader");
    let mut rows = HashMap::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let paths = batch.column(0).as_string::<i32>();
        let components: Vec<_> =
            (2..batch.num_columns()).map(|c| batch.column(c).as_primitive::<Float64Type>()).collect();
        for row in 0..batch.num_rows() {
            rows.insert(paths.value(row).to_owned(), components.iter().map(|c| c.value(row)).collect());
        }
    }
    rows
}
