//! Incremental runs on the embedded engine: a re-run featurizes only new and changed images,
//! drops deleted ones, keeps the rest, and commits what a `--full` run would have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

use crate::embedded::run_job;
use crate::support::*;

/// The committed rows by path: label, features, error.
type Rows = BTreeMap<String, (Option<String>, Option<Vec<f32>>, Option<String>)>;

fn committed_rows(out: &Path) -> Rows {
    read_committed(&out.join("features")).rows.into_iter().map(|r| (r.path, (r.label, r.features, r.error))).collect()
}

/// Asserts `a` and `b` hold the same images, labels and errors, with features within 1e-6.
fn assert_same_rows(a: &Rows, b: &Rows, context: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{context}: other images");
    for (path, (label, features, error)) in a {
        let (other_label, other_features, other_error) = &b[path];
        assert_eq!((label, error), (other_label, other_error), "{context}: {path}");
        match (features, other_features) {
            (Some(x), Some(y)) => {
                let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
                assert!(x.len() == y.len() && worst <= 1e-6, "{context}: {path} differs by {worst}");
            }
            (None, None) => {}
            _ => panic!("{context}: {path} has features in one result only"),
        }
    }
}

fn incremental(out: &Path) -> Incremental {
    read_summary(out).incremental.expect("an incremental run")
}

/// The `fruits.model` entry of a Parquet file's key-value metadata.
fn model_of(file: &Path) -> Option<String> {
    let reader = SerializedFileReader::new(std::fs::File::open(file).expect("open")).expect("parquet");
    let metadata = reader.metadata().file_metadata().key_value_metadata()?.clone();
    metadata.into_iter().find(|kv| kv.key == "fruits.model").and_then(|kv| kv.value)
}

/// A copy of the model that differs only in its `doc_string`: the same network, another file.
fn retitled_model(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(model_path()).expect("model");
    // ModelProto field 6 (doc_string), length-delimited: the last occurrence wins.
    bytes.extend_from_slice(&[0x32, 4]);
    bytes.extend_from_slice(b"copy");
    let path = dir.join("retitled.onnx");
    std::fs::write(&path, bytes).expect("write model");
    path
}

#[test]
fn reruns_featurize_only_new_and_changed_images_and_match_a_full_run() {
    let input = tempfile::tempdir().expect("temp dir");
    for label in ["Banana", "Pear", "Blueberry"] {
        copy_sample_images(input.path(), label, 10);
    }
    let out = tempfile::tempdir().expect("temp dir");
    assert_success(&run_job(input.path(), out.path(), &[]));
    let first = read_summary(out.path());
    assert_eq!((first.incremental, first.full_run_reason, first.featurized_this_run), (None, None, 30));
    let first_manifest = read_committed(&out.path().join("features")).manifest;
    let model = first_manifest.model.clone().expect("the manifest names the model");
    assert!(model.starts_with("sha256:"), "{model}");
    for file in &first_manifest.files {
        assert_eq!(model_of(&out.path().join("features").join(&file.file)).as_ref(), Some(&model), "{}", file.file);
    }

    // Nothing changed: nothing featurized or written, the committed run and its views stand.
    let output = run_job(input.path(), out.path(), &["--json"]);
    assert_success(&output);
    let again = parse_summary(last_json_line(&output.stdout).to_string().as_bytes());
    let since = first.run_id.clone();
    let nothing = Incremental { new: 0, changed: 0, deleted: 0, unchanged: 30, since_run: since.clone() };
    assert_eq!(again.incremental.as_ref(), Some(&nothing));
    assert_eq!((again.run_id.as_str(), again.featurized_this_run, again.rows_out), (since.as_str(), 0, 30));
    assert_eq!(read_summary(out.path()).run_id, since, "summary.json still describes the committed run");
    assert_eq!(read_committed(&out.path().join("features")).manifest, first_manifest);

    // Two new images (one of them corrupt), one changed in place, one deleted.
    copy_sample_images(input.path(), "Avocado", 1);
    std::fs::write(input.path().join("Avocado/broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").expect("write");
    let pears = sorted_files(&input.path().join("Pear"));
    let bananas = sorted_files(&input.path().join("Banana"));
    std::fs::copy(&pears[1], &pears[0]).expect("change a pear in place");
    std::fs::remove_file(&bananas[0]).expect("delete a banana");
    let output = run_job(input.path(), out.path(), &[]);
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("2 new, 1 changed, 1 deleted, 28 unchanged (kept)"), "{stdout}");
    let third = read_summary(out.path());
    assert_eq!(
        incremental(out.path()),
        Incremental { new: 2, changed: 1, deleted: 1, unchanged: 28, since_run: since }
    );
    assert_eq!((third.rows_in, third.rows_out, third.featurized, third.featurized_this_run), (31, 31, 30, 3));
    assert_eq!(third.failed.len(), 1, "{:?}", third.failed);
    let rows = committed_rows(out.path());
    let changed = &rows[&format!("file://{}", canonical(&pears[0]).display())];
    let twin = &rows[&format!("file://{}", canonical(&pears[1]).display())];
    assert_eq!(changed.1, twin.1, "the changed pear has its new content's features");

    // The same rows as a full run into a fresh output.
    let fresh = tempfile::tempdir().expect("temp dir");
    assert_success(&run_job(input.path(), fresh.path(), &[]));
    assert_same_rows(&rows, &committed_rows(fresh.path()), "incremental vs fresh full run");

    // --full and another model both featurize everything, and say why.
    assert_success(&run_job(input.path(), out.path(), &["--full"]));
    let full = read_summary(out.path());
    assert_eq!(
        (full.incremental, full.full_run_reason.as_deref(), full.featurized_this_run),
        (None, Some("--full was given"), 31)
    );
    let models = tempfile::tempdir().expect("temp dir");
    let other = retitled_model(models.path()).display().to_string();
    let (input_arg, out_arg) = (input.path().display().to_string(), out.path().display().to_string());
    let output = fruits(&["run", "--input", &input_arg, "--output", &out_arg, "--model", &other]);
    assert_success(&output);
    let reason = read_summary(out.path()).full_run_reason.expect("a full run");
    assert!(reason.contains("was made by another model"), "{reason}");
    let retitled = read_committed(&out.path().join("features")).manifest.model.expect("model");
    assert_ne!(retitled, model);
    assert_same_rows(&committed_rows(out.path()), &rows, "another file of the same network");
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
}

/// A small deterministic generator (xorshift64*), so that a failing sequence can be replayed
/// from its seed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// Property: any sequence of adds, in-place changes and deletes, each followed by an
/// incremental run, commits the same rows as a `--full` run over the final input. Replay a
/// failure with `FRUITS_PROPERTY_SEED=<seed>`.
#[test]
fn any_sequence_of_changes_commits_what_a_full_run_commits() {
    let seeds: Vec<u64> = match std::env::var("FRUITS_PROPERTY_SEED") {
        Ok(seed) => vec![seed.parse().expect("FRUITS_PROPERTY_SEED is a number")],
        Err(_) => vec![
            0x5eed_0001,
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1,
        ],
    };
    // The pool the changes draw from: images of four labels, and a file that does not decode.
    let pool = tempfile::tempdir().expect("temp dir");
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for label in ["Apple Golden 1", "Mangostan", "Orange", "Strawberry"] {
        for name in copy_sample_images(pool.path(), label, 12) {
            sources.push((label.to_owned(), pool.path().join(label).join(name)));
        }
    }
    let broken = pool.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not really").expect("write");
    sources.push(("Orange".to_owned(), broken));

    for seed in seeds {
        let mut random = Random(seed);
        let input = tempfile::tempdir().expect("temp dir");
        let out = tempfile::tempdir().expect("temp dir");
        let mut present: Vec<PathBuf> = Vec::new();
        let mut history = Vec::new();
        let mut next_name = 0;
        let mut add = |present: &mut Vec<PathBuf>, random: &mut Random, history: &mut Vec<String>| {
            let (label, source) = &sources[random.below(sources.len())];
            let folder = input.path().join(label);
            std::fs::create_dir_all(&folder).expect("mkdir");
            next_name += 1;
            let target = folder.join(format!("img {next_name}.jpg"));
            std::fs::copy(source, &target).expect("add");
            history.push(format!("add {}", target.display()));
            present.push(target);
        };
        for _ in 0..8 {
            add(&mut present, &mut random, &mut history);
        }
        assert_success(&run_job(input.path(), out.path(), &["--no-pca"]));
        for step in 0..3 {
            for _ in 0..1 + random.below(4) {
                match random.below(3) {
                    0 => add(&mut present, &mut random, &mut history),
                    1 if present.len() > 2 => {
                        let victim = &present[random.below(present.len())];
                        let (_, source) = &sources[random.below(sources.len())];
                        std::fs::copy(source, victim).expect("change");
                        history.push(format!("change {}", victim.display()));
                    }
                    _ if present.len() > 2 => {
                        let victim = present.swap_remove(random.below(present.len()));
                        std::fs::remove_file(&victim).expect("delete");
                        history.push(format!("delete {}", victim.display()));
                    }
                    _ => add(&mut present, &mut random, &mut history),
                }
            }
            let output = run_job(input.path(), out.path(), &["--no-pca"]);
            assert_success(&output);
            let summary = read_summary(out.path());
            assert!(
                summary.incremental.is_some(),
                "seed {seed} step {step}: not incremental: {:?}",
                summary.full_run_reason
            );
            assert_eq!(summary.rows_out, present.len() as u64, "seed {seed} step {step}\n{}", history.join("\n"));
        }
        let fresh = tempfile::tempdir().expect("temp dir");
        assert_success(&run_job(input.path(), fresh.path(), &["--no-pca"]));
        let context = format!("seed {seed} after:\n{}", history.join("\n"));
        assert_same_rows(&committed_rows(out.path()), &committed_rows(fresh.path()), &context);
    }
}
