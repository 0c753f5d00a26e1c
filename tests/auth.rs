//! The authenticated cluster: a real `fruits-scheduler` and `fruits-executor` sharing a secret
//! file, executors and `fruits` clients with and without it, and the scheduler's REST API with and
//! without the bearer token. The images are local files (the processes share this machine's
//! filesystem), so no S3 server is needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::cluster::{Cluster, ClusterOptions, http_request};
use crate::support::*;

/// A 64-character secret, different on every run.
fn new_secret(salt: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{:032x}{:016x}{:>16}", nanos, std::process::id(), salt).replace(' ', "0")
}

/// Writes `secret` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod secret");
    path
}

fn secret_env(path: &Path) -> Vec<(String, String)> {
    vec![("FRUITS_SECRET_FILE".to_owned(), path.display().to_string())]
}

/// Two images of each of two classes, in `<dir>/<Class>/`.
fn few_images(dir: &Path) -> usize {
    let mut copied = 0;
    for class in ["Banana", "Pear"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(sample_dir().join(class))
            .expect("sample class folder")
            .map(|entry| entry.expect("dir entry").path())
            .collect();
        files.sort();
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        for file in files.iter().take(2) {
            std::fs::copy(file, dir.join(class).join(file.file_name().expect("file name"))).expect("copy image");
            copied += 1;
        }
    }
    copied
}

/// `fruits run` against `cluster` with exactly the variables in `env` about the secret.
fn run_job(cluster: &Cluster, env: &[(String, String)], input: &Path, output: &Path) -> std::process::Output {
    let (input, output) = (input.display().to_string(), output.display().to_string());
    Command::new(binary("fruits"))
        .args(["run", "--scheduler", &cluster.scheduler_url(), "--input", &input, "--output", &output])
        .args(["--no-pca", "--quiet"])
        .env_remove("FRUITS_SECRET_FILE")
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .expect("cannot start fruits")
}

fn jobs(cluster: &Cluster) -> Vec<serde_json::Value> {
    let body = cluster.rest("/api/jobs").unwrap_or_else(|| panic!("GET /api/jobs failed\n{}", cluster.logs()));
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap_or_else(|e| panic!("/api/jobs: {e}: {body}"))
}

#[test]
fn only_holders_of_the_secret_use_the_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret("right");
    let good = secret_file(dir.path(), "secret", &secret, 0o600);
    let wrong = secret_file(dir.path(), "wrong", &new_secret("wrong"), 0o600);
    let cluster =
        Cluster::start(ClusterOptions { executors: 1, vcores: 1, env: secret_env(&good), executor_args: Vec::new() });
    let address = cluster.scheduler_address();

    // REST: refused without the bearer token or with a wrong one, saying why; the probes stay open.
    let anonymous = http_request(&address, "GET", "/api/executors", None).expect("an HTTP answer");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer") && challenge.contains("FRUITS_SECRET_FILE"), "{anonymous:?}");
    let guessed = http_request(&address, "GET", "/api/executors", Some("0123456789abcdef0123456789abcdef"))
        .expect("an HTTP answer");
    assert_eq!(guessed.status, 401, "{guessed:?}");
    assert!(guessed.header("www-authenticate").is_some_and(|c| c.contains("invalid_token")), "{guessed:?}");
    let cancel = http_request(&address, "PATCH", "/api/job/anything", None).expect("an HTTP answer");
    assert_eq!(cancel.status, 401, "cancelling jobs needs the secret too: {cancel:?}");
    let healthz = http_request(&address, "GET", "/healthz", None).expect("an HTTP answer");
    assert_eq!(healthz.status, 200, "{healthz:?}");
    let executors = http_request(&address, "GET", "/api/executors", Some(&secret)).expect("an HTTP answer");
    assert_eq!(executors.status, 200, "{executors:?}");

    // Executors without the secret, or with another one, are refused, say so and stop; the
    // scheduler never lists them.
    let cases = [
        ("no-secret", Vec::new(), "requires its shared secret and none was sent"),
        ("wrong-secret", secret_env(&wrong), "is not this fruits cluster's"),
    ];
    for (name, env, expected) in cases {
        let mut executor = cluster.spawn_executor(name, 1, &env);
        let status = executor.wait_exit(Duration::from_secs(60));
        let log = executor.log();
        assert!(status.is_some_and(|s| !s.success()), "{name}: the executor kept running ({status:?})\n{log}");
        assert!(log.contains("refused this executor") && log.contains(expected), "{name}:\n{log}");
        assert_eq!(cluster.executor_count(), Some(1), "{name}: listed by the scheduler\n{}", cluster.logs());
    }

    // A client without the secret, or with another one: a clear error, and no job reaches the
    // scheduler.
    let images = dir.path().join("images");
    let count = few_images(&images);
    let output = dir.path().join("out");
    for (case, env, expected) in [
        ("no secret", Vec::new(), "requires its shared secret and none was sent"),
        ("wrong secret", secret_env(&wrong), "is not this fruits cluster's"),
    ] {
        let refused = run_job(&cluster, &env, &images, &output);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains("refused this client") && stderr.contains(expected), "{case}: {stderr}");
    }
    assert!(jobs(&cluster).is_empty(), "a refused client ran a job: {:?}", jobs(&cluster));
    assert!(!output.join("features").exists(), "a refused client wrote output");

    // With the secret, the job runs on the executor and commits every image.
    let done = run_job(&cluster, &secret_env(&good), &images, &output);
    assert!(
        done.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr),
        cluster.logs()
    );
    let Committed { manifest, rows } = read_committed(&output.join("features"));
    assert_eq!((manifest.rows as usize, manifest.failed), (count, 0));
    let mut labels: Vec<(String, String)> =
        rows.iter().map(|r| (r.label.clone().unwrap_or_default(), label_and_file(&r.path))).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), count, "each image once: {labels:?}");
    assert!(labels.iter().all(|(label, file)| file.starts_with(&format!("{label}/"))), "{labels:?}");
    assert!(rows.iter().all(|r| r.features.as_ref().is_some_and(|f| f.len() == 1280)), "{rows:?}");
    assert!(!jobs(&cluster).is_empty(), "the job is not in the scheduler's list");
}

/// What `command` printed and how it exited; killed if still running after 30 s (a server that
/// should have refused to start).
fn output_within(command: &mut Command, name: &str) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let started = std::time::Instant::now();
    while child.try_wait().expect("process status").is_none() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().expect("process output")
}

#[test]
fn servers_refuse_to_listen_openly_or_with_a_readable_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readable = secret_file(dir.path(), "readable", &new_secret("readable"), 0o644);
    let scheduler = |host: &str, env: &[(String, String)]| {
        let mut command = Command::new(binary("fruits-scheduler"));
        command
            .args(["--bind-host", host, "--bind-port", &free_port().to_string()])
            .env_remove("FRUITS_SECRET_FILE")
            .envs(env.iter().cloned())
            .stdin(Stdio::null());
        output_within(&mut command, "fruits-scheduler")
    };
    let executor = |host: &str, env: &[(String, String)]| {
        let mut command = Command::new(binary("fruits-executor"));
        command
            .args(["--bind-host", host, "--bind-port", &free_port().to_string()])
            .args(["--scheduler-host", "127.0.0.1", "--scheduler-port", &free_port().to_string()])
            .args(["--model", model_path().to_str().expect("utf-8 path")])
            .env_remove("FRUITS_SECRET_FILE")
            .envs(env.iter().cloned())
            .stdin(Stdio::null());
        output_within(&mut command, "fruits-executor")
    };
    let outcomes = [
        ("scheduler on 0.0.0.0", scheduler("0.0.0.0", &[]), "refusing to listen on 0.0.0.0 without a cluster secret"),
        ("executor on 0.0.0.0", executor("0.0.0.0", &[]), "refusing to listen on 0.0.0.0 without a cluster secret"),
        ("scheduler, readable secret", scheduler("127.0.0.1", &secret_env(&readable)), "chmod 600"),
        ("executor, readable secret", executor("127.0.0.1", &secret_env(&readable)), "chmod 600"),
    ];
    for (case, output, expected) in outcomes {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(expected), "{case}: expected {expected:?} in\n{stderr}");
    }
}
