//! What the suites share: where the sample data, the model and the built binaries are, how to
//! run a binary, and how to read what it wrote; real servers and clusters to run against
//! ([`garage`], [`cluster`]), an S3 client ([`s3`]) and Docker ([`docker`]).

pub mod cluster;
pub mod docker;
pub mod garage;
pub mod pca;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use fruits_udfs::{MANIFEST_FILE, Manifest};
use serde::Deserialize;

pub use bytes::Bytes;

/// A loopback port the OS reports free. Ports once handed out are never handed out again in
/// this process, so servers started by tests running in parallel threads cannot get the same
/// one even before either has bound it.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// The read-only shared folder beside the repository (`FRUITS_SHARED` overrides).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FRUITS_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared"))
}

/// `path` made absolute and clean, as bind mounts need it.
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// Copies `n` images of `label` from the sample into `dir/label/`.
pub fn copy_sample_images(dir: &Path, label: &str, n: usize) -> Vec<String> {
    let from = sample_dir().join(label);
    let to = dir.join(label);
    std::fs::create_dir_all(&to).expect("mkdir");
    let mut names: Vec<_> =
        std::fs::read_dir(&from).expect("read sample").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|name| {
            std::fs::copy(from.join(&name), to.join(&name)).expect("copy");
            name.to_string_lossy().into_owned()
        })
        .collect()
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

/// Featurizes the sample into `dir/out` on the embedded engine (no PCA) and trains the
/// classifier on it into `dir/classifier`; returns `fruits train --json`'s summary and the
/// model directory.
pub fn train_on_sample(dir: &Path) -> (serde_json::Value, PathBuf) {
    let (sample, out, model) =
        (sample_dir().display().to_string(), dir.join("out").display().to_string(), model_path().display().to_string());
    assert_success(&fruits(&["run", "--input", &sample, "--output", &out, "--model", &model, "--no-pca", "--quiet"]));
    let (features, classifier) = (dir.join("out/features"), dir.join("classifier"));
    let (features, classifier_arg) = (features.display().to_string(), classifier.display().to_string());
    let train = fruits(&["train", "--features", &features, "--output", &classifier_arg, "--model", &model, "--json"]);
    assert_success(&train);
    (last_json_line(&train.stdout), classifier)
}

/// One row of the features Parquet files.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub path: String,
    pub label: Option<String>,
    pub features: Option<Vec<f32>>,
    /// Why `features` is NULL (absent from files that have no `error` column).
    pub error: Option<String>,
}

/// The rows of one Parquet file.
pub fn parse_features(parquet: Bytes) -> Vec<FeatureRow> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet).expect("parquet metadata").build().expect("reader");
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("parquet batch");
        let paths = batch.column_by_name("path").expect("path column").as_string::<i32>();
        let labels = batch.column_by_name("label").expect("label column").as_string::<i32>();
        let features = batch.column_by_name("features").expect("features column").as_list::<i32>();
        let errors = batch.column_by_name("error").map(|c| c.as_string::<i32>());
        for row in 0..batch.num_rows() {
            rows.push(FeatureRow {
                path: paths.value(row).to_owned(),
                label: labels.is_valid(row).then(|| labels.value(row).to_owned()),
                features: features
                    .is_valid(row)
                    .then(|| features.value(row).as_primitive::<Float32Type>().values().to_vec()),
                error: errors.and_then(|e| e.is_valid(row).then(|| e.value(row).to_owned())),
            });
        }
    }
    rows
}

/// Reads every `*.parquet` file in `dir` (sorted by name): what `fruits sql --output` writes.
pub fn read_parquet_dir(dir: &Path) -> Vec<FeatureRow> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| parse_features(Bytes::from(std::fs::read(f).expect("read parquet")))).collect()
}

/// A committed features folder: its manifest and the rows of the files it lists.
#[derive(Debug)]
pub struct Committed {
    pub manifest: Manifest,
    pub rows: Vec<FeatureRow>,
}

/// Reads a committed features folder through `get` (file name to bytes, `None` if missing),
/// the way a reader must: the `_SUCCESS` manifest first, then only the files it lists, whose
/// row counts must match it.
pub fn read_committed_with(get: impl Fn(&str) -> Option<Bytes>) -> Committed {
    let manifest = get(MANIFEST_FILE).expect("no _SUCCESS manifest: the run was not committed");
    let manifest: Manifest = serde_json::from_slice(&manifest).expect("_SUCCESS is a fruits manifest");
    let mut rows = Vec::new();
    for file in &manifest.files {
        let bytes = get(&file.file).unwrap_or_else(|| panic!("{} is in the manifest but missing", file.file));
        let file_rows = parse_features(bytes);
        assert_eq!(file_rows.len() as u64, file.rows, "row count of {}", file.file);
        assert_eq!(file_rows.iter().filter(|r| r.features.is_none()).count() as u64, file.failed, "{}", file.file);
        rows.extend(file_rows);
    }
    assert_eq!(rows.len() as u64, manifest.rows);
    Committed { manifest, rows }
}

/// [`read_committed_with`] on a local features folder.
pub fn read_committed(dir: &Path) -> Committed {
    read_committed_with(|name| std::fs::read(dir.join(name)).ok().map(Bytes::from))
}

/// `Label/file.jpg`: an image path without its store and folder prefix, to compare runs over
/// different stores.
pub fn label_and_file(path: &str) -> String {
    let mut parts = path.rsplit('/');
    let file = parts.next().unwrap_or_default();
    let label = parts.next().unwrap_or_default();
    format!("{label}/{file}")
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
    /// The decoder corpus in `tests/fixtures/decode`.
    pub decode_fixtures: Vec<ReferenceFixture>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceFixture {
    /// File name in [`decode_fixtures_dir`].
    pub file: String,
    pub decoded_sha256: String,
    pub resized_sha256: String,
    pub features: Vec<f32>,
}

/// Images in the formats the sample lacks (four-channel JPEGs, 16-bit, palette and grey-alpha
/// PNGs, grey JPEG), made by `tests/reference/make_decode_fixtures.py`.
pub fn decode_fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/decode")
}

#[derive(Debug, Deserialize)]
pub struct ReferenceImage {
    /// `<label>/<file>` relative to the sample folder.
    pub path: String,
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
    pub engine: String,
    pub run_id: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub featurized: u64,
    pub failed: Vec<FailedImage>,
    pub files: Vec<String>,
    pub client_bytes_read: Option<u64>,
    pub incremental: Option<Incremental>,
    pub full_run_reason: Option<String>,
    pub featurized_this_run: u64,
}

/// `summary.json`'s `incremental`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct Incremental {
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub since_run: String,
}

#[derive(Debug, Deserialize, Clone)]
pub struct FailedImage {
    pub path: String,
    pub label: Option<String>,
    pub error: String,
}

pub fn read_summary(output: &Path) -> Summary {
    let path = output.join("summary.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_summary(&text)
}

pub fn parse_summary(json: &[u8]) -> Summary {
    serde_json::from_slice(json).expect("summary.json")
}

/// The last line of `stdout` that is a JSON object: what `--json` prints at the end. On a
/// terminal the line also holds what the progress bar drew and erased (`\r`, `ESC[2K`) before it.
pub fn last_json_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .filter_map(|l| l.rsplit(['\r', '\u{1b}']).next())
        .map(|l| l.trim_start_matches("[2K").trim())
        .filter(|l| l.starts_with('{'))
        .last()
        .unwrap_or_else(|| panic!("no JSON line in:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The summary that `fruits --json` prints as its last JSON line.
pub fn last_summary(stdout: &[u8]) -> Summary {
    serde_json::from_value(last_json_line(stdout)).expect("the last JSON line is a summary")
}

/// Panics unless every sample image is in `rows` exactly once, labelled with its folder, and
/// there are `expected` of them with the sample's count per label.
pub fn assert_each_image_once(rows: &[FeatureRow], expected: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in rows {
        *seen.entry(label_and_file(&row.path)).or_insert(0) += 1;
        assert_eq!(row.path.rsplit('/').nth(1), row.label.as_deref(), "{}", row.path);
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated rows: {duplicated:?}");
    assert_eq!(seen.len(), expected, "distinct images");
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        *per_label.entry(row.label.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    let sample: BTreeMap<String, usize> = SAMPLE_COUNTS.iter().map(|(l, n)| (l.to_string(), *n)).collect();
    assert_eq!(per_label, sample);
}
