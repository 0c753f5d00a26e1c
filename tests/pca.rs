//! The PCA stage of `fruits run` and `fruits pca`, against a scikit-learn reference
//! (`tests/fixtures/reference_pca.json`, made by `tests/reference/make_pca_reference.py`).

use std::collections::HashMap;
use std::path::Path;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use fruits_tests::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct ReferencePca {
    rows: usize,
    explained_variance_ratio: Vec<f64>,
    /// `Label/file` -> (pc1, pc2).
    projections: HashMap<String, [f64; 2]>,
}

fn reference() -> ReferencePca {
    let path = repo_root().join("tests/fixtures/reference_pca.json");
    serde_json::from_slice(&std::fs::read(path).expect("reference_pca.json")).expect("fixture JSON")
}

/// `pca/part-00000.parquet` as `path -> [pc1, pc2, ...]`.
fn read_projections(output: &Path) -> HashMap<String, Vec<f64>> {
    let file = std::fs::File::open(output.join("pca/part-00000.parquet")).expect("pca parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("metadata").build().expect("reader");
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

fn summary_json(output: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(output.join("summary.json")).expect("summary.json")).expect("JSON")
}

#[test]
fn run_writes_a_pca_that_matches_scikit_learn() {
    let out = tempfile::tempdir().expect("temp dir");
    let (sample, output, model) =
        (sample_dir().display().to_string(), out.path().display().to_string(), model_path().display().to_string());
    let result = fruits(&["run", "--input", &sample, "--output", &output, "--model", &model, "--csv"]);
    assert_success(&result);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("PCA of 4835 images") && stdout.contains("PC1:") && stdout.contains("PC2:"), "{stdout}");

    let reference = reference();
    let pca = &summary_json(out.path())["pca"];
    assert_eq!(pca["rows"], reference.rows);
    assert_eq!(pca["rows_without_features"], 0);
    let ratios: Vec<f64> = serde_json::from_value(pca["explained_variance_ratio"].clone()).expect("ratios");
    assert_eq!(ratios.len(), 2);
    for (ours, theirs) in ratios.iter().zip(&reference.explained_variance_ratio) {
        assert!((ours - theirs).abs() < 1e-4, "explained variance ratio {ours} vs scikit-learn {theirs}");
    }

    // Projections agree up to the sign of each component.
    let projections = read_projections(out.path());
    assert_eq!(projections.len(), reference.rows);
    let by_relative: HashMap<String, &Vec<f64>> =
        projections.iter().map(|(path, pcs)| (label_and_file(path), pcs)).collect();
    let mut worst = 0f64;
    for (relative, expected) in &reference.projections {
        let ours = by_relative.get(relative).unwrap_or_else(|| panic!("{relative} has no projection"));
        for c in 0..2 {
            let difference = (ours[c] - expected[c]).abs().min((ours[c] + expected[c]).abs());
            worst = worst.max(difference);
        }
    }
    assert!(worst < 1e-3, "largest projection difference from scikit-learn: {worst}");

    // The plot: a PNG of the promised size with every label's colour in it.
    let png = image::load_from_memory(&std::fs::read(out.path().join("pca.png")).expect("pca.png")).expect("a PNG");
    assert_eq!((png.width(), png.height()), (1200, 900));
    let pixels: std::collections::HashSet<[u8; 3]> = png.to_rgb8().pixels().map(|p| p.0).collect();
    for (i, (label, _)) in SAMPLE_COUNTS.iter().enumerate() {
        assert!(pixels.contains(&fruits_pca::label_colour(i)), "no pixel of {label}'s colour");
    }

    // The CSV, as the reference pipeline wrote it: a header and one line per image.
    let csv = std::fs::read_to_string(out.path().join("features.csv")).expect("features.csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next().expect("header").split(',').count(), 2 + 1280);
    assert_eq!(lines.count(), reference.rows);
}

#[test]
fn pca_alone_reads_only_committed_files_and_leaves_out_failed_images() {
    let input = tempfile::tempdir().expect("temp dir");
    for (label, n) in [("Banana", 3), ("Orange", 3)] {
        std::fs::create_dir_all(input.path().join(label)).expect("mkdir");
        let mut names: Vec<_> = std::fs::read_dir(sample_dir().join(label))
            .expect("sample")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for name in names.into_iter().take(n) {
            std::fs::copy(sample_dir().join(label).join(&name), input.path().join(label).join(&name)).expect("copy");
        }
    }
    std::fs::write(input.path().join("Orange/broken.jpg"), b"not an image").expect("write");
    let out = tempfile::tempdir().expect("temp dir");
    let (input_arg, output, model) =
        (input.path().display().to_string(), out.path().display().to_string(), model_path().display().to_string());
    assert_success(&fruits(&["run", "--input", &input_arg, "--output", &output, "--model", &model, "--no-pca"]));
    assert!(!out.path().join("pca.png").exists(), "--no-pca wrote a plot");
    assert!(summary_json(out.path())["pca"].is_null());

    // A stray copy of a committed file is not in the manifest, so it must not count.
    let features = out.path().join("features");
    let committed = read_committed(&features).manifest.files[0].file.clone();
    std::fs::copy(features.join(&committed), features.join("part-stray.parquet")).expect("copy");

    let features_arg = features.display().to_string();
    let result = fruits(&["pca", "--features", &features_arg, "--pca-k", "3"]);
    assert_success(&result);
    let pca = &summary_json(out.path())["pca"];
    assert_eq!((pca["rows"].as_u64(), pca["rows_without_features"].as_u64()), (Some(6), Some(1)), "{pca}");
    assert_eq!(pca["explained_variance_ratio"].as_array().map(Vec::len), Some(3));
    assert_eq!(summary_json(out.path())["rows_in"], 7, "the run's summary is kept");
    let projections = read_projections(out.path());
    assert_eq!(projections.len(), 6);
    assert!(projections.values().all(|pcs| pcs.len() == 3));
    assert!(out.path().join("pca.png").is_file());

    let empty = tempfile::tempdir().expect("temp dir");
    let missing = empty.path().join("features").display().to_string();
    let result = fruits(&["pca", "--features", &missing]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("no committed features") && stderr.contains("no _SUCCESS manifest"), "{stderr}");
}
