//! The PCA stage of `fruits run` and `fruits pca`, against a scikit-learn reference
//! (`tests/fixtures/reference_pca.json`, made by `tests/reference/make_pca_reference.py`).

use std::collections::HashMap;
use std::path::Path;

use crate::support::pca::{ReferencePca, largest_difference_up_to_sign, parse_projections};
use crate::support::*;

/// `pca/part-<run>.parquet` of a local output, for the run its `summary.json` names.
fn read_projections(output: &Path) -> HashMap<String, Vec<f64>> {
    let file = output.join(format!("pca/part-{}.parquet", read_summary(output).run_id));
    parse_projections(Bytes::from(std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))))
}

/// Panics unless two `pca` summaries explain the same variance per component, within 1e-4.
fn assert_same_variance(distributed: &serde_json::Value, memory: &serde_json::Value) {
    let ratios = |pca: &serde_json::Value| -> Vec<f64> {
        serde_json::from_value(pca["explained_variance_ratio"].clone()).expect("explained_variance_ratio")
    };
    let (distributed, memory) = (ratios(distributed), ratios(memory));
    assert_eq!(distributed.len(), memory.len());
    for (a, b) in distributed.iter().zip(&memory) {
        assert!((a - b).abs() < 1e-4, "distributed {a} vs memory {b}");
    }
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

    let reference = ReferencePca::load();
    let memory = summary_json(out.path())["pca"].clone();
    assert_eq!(memory["mode"], "memory", "auto picks memory for the sample: {memory}");
    let memory_projections = read_projections(out.path());
    reference.assert_matches(&memory, &memory_projections);

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

    // The distributed mode (moments aggregated by DataFusion, streamed projections) gives the
    // same PCA; `--json` prints the summary as the last line.
    let features = out.path().join("features").display().to_string();
    let result = fruits(&["pca", "--features", &features, "--pca-mode", "distributed", "--json"]);
    assert_success(&result);
    let printed = last_json_line(&result.stdout);
    assert_eq!(printed["pca"], summary_json(out.path())["pca"], "--json prints what summary.json holds");
    let distributed = &printed["pca"];
    assert_eq!(distributed["mode"], "distributed");
    let distributed_projections = read_projections(out.path());
    reference.assert_matches(distributed, &distributed_projections);
    assert_same_variance(distributed, &memory);
    assert_eq!(distributed_projections.len(), memory_projections.len());
    let worst = largest_difference_up_to_sign(&distributed_projections, &memory_projections);
    assert!(worst < 1e-4, "largest projection difference between the modes: {worst}");
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

    // Distributed, the failed image is left out and counted the same way.
    let result = fruits(&["pca", "--features", &features_arg, "--pca-k", "3", "--pca-mode", "distributed", "--json"]);
    assert_success(&result);
    let distributed = &last_json_line(&result.stdout)["pca"];
    assert_eq!((distributed["rows"].as_u64(), distributed["rows_without_features"].as_u64()), (Some(6), Some(1)));
    assert_same_variance(distributed, pca);

    let empty = tempfile::tempdir().expect("temp dir");
    let missing = empty.path().join("features").display().to_string();
    let result = fruits(&["pca", "--features", &missing]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("no committed features") && stderr.contains("no _SUCCESS manifest"), "{stderr}");
}
