//! What the tests share: where the sample data, the model and the built binaries are, how to
//! run a binary, and how to read what it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// The read-only shared folder beside the repository (`FRUITS_SHARED` overrides).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FRUITS_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared"))
}

/// The 4,835 Fruits-360 images, one folder per class.
pub fn sample_dir() -> PathBuf {
    shared_dir().join("data/fruits-360")
}

pub fn model_path() -> PathBuf {
    shared_dir().join("models/mobilenetv2_features.onnx")
}

/// Images per class in the sample, from its README.
pub const SAMPLE_COUNTS: [(&str, usize); 10] = [
    ("Apple Golden 1", 480),
    ("Avocado", 427),
    ("Banana", 490),
    ("Blueberry", 462),
    ("Mangostan", 300),
    ("Orange", 479),
    ("Pear", 492),
    ("Strawberry", 492),
    ("Tomato 1", 738),
    ("Watermelon", 475),
];

/// A binary of this workspace, built by `cargo build --release` (the Makefile's `test` target
/// builds them before running the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} is not built: run `cargo build --release --bins` (or `make test`)", path.display());
    path
}

/// Runs `fruits` with `args` and returns what it printed and its exit status.
pub fn fruits(args: &[&str]) -> Output {
    Command::new(binary("fruits")).args(args).output().expect("cannot start fruits")
}

/// Panics with the process output unless it exited with 0.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One row of the features Parquet files.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub path: String,
    pub label: Option<String>,
    pub features: Option<Vec<f32>>,
}

/// Reads every `*.parquet` file in `dir` (sorted by name).
pub fn read_features(dir: &Path) -> Vec<FeatureRow> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).expect("open parquet"))
            .expect("parquet metadata")
            .build()
            .expect("parquet reader");
        for batch in reader {
            let batch = batch.expect("parquet batch");
            let paths = batch.column_by_name("path").expect("path column").as_string::<i32>();
            let labels = batch.column_by_name("label").expect("label column").as_string::<i32>();
            let features = batch.column_by_name("features").expect("features column").as_list::<i32>();
            for row in 0..batch.num_rows() {
                rows.push(FeatureRow {
                    path: paths.value(row).to_owned(),
                    label: labels.is_valid(row).then(|| labels.value(row).to_owned()),
                    features: features
                        .is_valid(row)
                        .then(|| features.value(row).as_primitive::<Float32Type>().values().to_vec()),
                });
            }
        }
    }
    rows
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// `tests/fixtures/reference_features.json`, made by `tests/reference/make_reference.py`
/// with Pillow and onnxruntime.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub model_sha256: String,
    pub images: Vec<ReferenceImage>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceImage {
    /// `<label>/<file>` relative to the sample folder.
    pub path: String,
    pub label: String,
    pub decoded_sha256: String,
    pub resized_sha256: String,
    pub features: Vec<f32>,
}

impl Reference {
    pub fn load() -> Self {
        let path = repo_root().join("tests/fixtures/reference_features.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("reference fixture JSON")
    }
}

/// The `summary.json` fields the tests check.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub rows_in: usize,
    pub rows_out: usize,
    pub featurized: usize,
    pub failed: Vec<FailedImage>,
    pub feature_dim: usize,
    pub files: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct FailedImage {
    pub path: String,
    pub label: Option<String>,
    pub error: String,
}

pub fn read_summary(output: &Path) -> Summary {
    let path = output.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("summary.json")
}
