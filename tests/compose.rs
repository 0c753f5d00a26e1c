//! The Docker local cluster (`docker/docker-compose.yml`) end to end, with the images built from
//! this checkout's release binaries: the documented job on the sample (upload, featurize on the
//! executors, commit, PCA, outputs in S3 and on the host), then the job again with one executor
//! killed mid-job, then with one executor cut off the network mid-job; each time every image is
//! committed exactly once. Finally `down -v` leaves no container, network or volume behind.
//!
//! Needs a Docker engine and Compose (`docker compose` or `docker-compose`); without them the test
//! prints a loud SKIPPED line and passes. Building the base image the first time needs root and
//! the Debian mirror (scripts/docker-base.sh); later runs reuse it.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::http_request;
use crate::support::docker::{compose_or_skip, docker, one_container_cluster_at_a_time};
use crate::support::s3::{S3Account, S3Bucket, random_hex};
use crate::support::*;

/// The bucket docker-compose.yml gives the fruits services.
const BUCKET: &str = "fruits";

/// How long the cluster may take to come up, and a job to finish.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Executors of the test cluster: one per core of a small machine.
const EXECUTORS: usize = 2;

#[test]
fn compose_cluster_runs_the_job_and_survives_a_killed_and_a_disconnected_executor() {
    let Some(compose_program) = compose_or_skip("the Docker compose test") else { return };
    let _alone = one_container_cluster_at_a_time();
    let started = Instant::now();
    build_images();
    let built = started.elapsed();

    let compose = Compose::new(compose_program);
    compose.up();
    let up = started.elapsed();
    let images: usize = SAMPLE_COUNTS.iter().map(|(_, n)| n).sum();

    // 1. The documented job: `run --rm client`, here with --json for a parseable summary.
    let job = compose.command(&["run", "--rm", "-T", "client", "--json"]).output().expect("compose run");
    compose.assert_success(&job, "the job");
    let summary = last_summary(&job.stdout);
    assert_eq!((summary.rows_in, summary.rows_out, summary.featurized), (images as u64, images as u64, images as u64));
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert!(summary.engine.contains("df://scheduler:50050"), "{}", summary.engine);
    // The outputs, downloaded to the host folder mounted at /out.
    let out = compose.output_dir.path();
    let Committed { manifest, rows } = read_committed(&out.join("features"));
    assert_each_image_once(&rows, images);
    assert!(rows.iter().all(|r| r.features.as_ref().is_some_and(|f| f.len() == 1280)), "every image featurized");
    for file in ["summary.json".to_owned(), "pca.png".to_owned(), format!("pca/part-{}.parquet", summary.run_id)] {
        let size = std::fs::metadata(out.join(&file)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{file} is missing from the host output folder {}", out.display());
    }
    assert_eq!(read_summary(out).run_id, summary.run_id);
    // Both executors worked, each registered under its container's hostname.
    let executors = compose.containers("executor");
    let hostnames: HashSet<String> = executors.iter().map(|id| id[..12].to_owned()).collect();
    let writers: HashSet<String> =
        manifest.files.iter().map(|f| f.written_by.split(':').next().unwrap_or_default().to_owned()).collect();
    assert_eq!(writers, hostnames, "the files are written by the executor containers");
    // And the same objects are in S3.
    let s3 = compose.s3();
    assert!(s3.list("out/features").iter().any(|(key, _)| key == "out/features/_SUCCESS"));
    let first_job = started.elapsed();

    // 2. An executor killed mid-job.
    compose.run_interrupted(&s3, "out-kill", images, |victim| {
        compose.docker(&["kill", victim]);
    });
    let killed = started.elapsed();

    // Back to full strength: `up` starts the killed container again.
    compose.up();

    // 3. An executor cut off the network mid-job: it keeps running but can reach no one.
    compose.run_interrupted(&s3, "out-disconnect", images, |victim| {
        let networks = compose.docker(&[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            victim,
        ]);
        let network = networks.split_whitespace().next().expect("the executor is on a network").to_owned();
        compose.docker(&["network", "disconnect", &network, victim]);
    });
    let disconnected = started.elapsed();

    // 4. Down: nothing of the project is left.
    compose.down();
    let label = compose.project_label();
    for kind in ["container", "network", "volume"] {
        let mut args = vec![kind, "ls", "--quiet", "--filter", &label];
        if kind == "container" {
            args.push("--all"); // stopped ones too
        }
        let left = compose.docker(&args);
        assert!(left.trim().is_empty(), "{kind}s left after down -v: {left}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "compose test: images built {:.0} s, cluster up {:.0} s, job {:.0} s, job with a killed executor {:.0} s, \
         job with a disconnected executor {:.0} s, total {:.0} s",
        built.as_secs_f64(),
        (up - built).as_secs_f64(),
        (first_job - up).as_secs_f64(),
        (killed - first_job).as_secs_f64(),
        (disconnected - killed).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `scripts/docker-build.sh` on the binaries this test run uses.
fn build_images() {
    let bin_dir = binary("fruits").parent().expect("binary folder").to_path_buf();
    let output = Command::new(repo_root().join("scripts/docker-build.sh"))
        .env("FRUITS_BIN_DIR", &bin_dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/docker-build.sh");
    assert_success(&output);
}

/// One Compose project made for this test: its own name, host ports, S3 key and output folder.
/// Dropping it runs `down -v`, so a failed assertion leaves nothing running either.
struct Compose {
    program: Vec<String>,
    file: PathBuf,
    project: String,
    env: Vec<(String, String)>,
    s3_port: u16,
    scheduler_port: u16,
    key_id: String,
    secret: String,
    output_dir: tempfile::TempDir,
}

impl Compose {
    fn new(program: Vec<String>) -> Self {
        let (s3_port, scheduler_port) = (free_port(), free_port());
        let key_id = format!("GK{}", random_hex(12));
        let secret = random_hex(32);
        let output_dir = tempfile::Builder::new().prefix("fruits-compose-out-").tempdir().expect("temp dir");
        let model = canonical(&model_path());
        let env = [
            ("FRUITS_S3_PORT", s3_port.to_string()),
            ("FRUITS_SCHEDULER_PORT", scheduler_port.to_string()),
            ("FRUITS_S3_KEY_ID", key_id.clone()),
            ("FRUITS_S3_SECRET", secret.clone()),
            ("FRUITS_INPUT_DIR", canonical(&sample_dir()).display().to_string()),
            ("FRUITS_OUTPUT_DIR", output_dir.path().display().to_string()),
            ("FRUITS_MODEL_DIR", model.parent().expect("model folder").display().to_string()),
            ("FRUITS_MODEL_FILE", model.file_name().expect("model file").to_string_lossy().into_owned()),
            // Lost executors are noticed in 10 s, the Compose file's default: with containers on
            // two shared cores, a busy executor's heartbeats were seen to lag past 5 s.
            ("FRUITS_EXECUTOR_TIMEOUT", "10".to_owned()),
            ("FRUITS_VCORES", "1".to_owned()),
            ("FRUITS_INFERENCE_THREADS", "1".to_owned()),
        ];
        Compose {
            program,
            file: repo_root().join("docker/docker-compose.yml"),
            project: format!("fruits-test-{}-{}", std::process::id(), random_hex(3)),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            s3_port,
            scheduler_port,
            key_id,
            secret,
            output_dir,
        }
    }

    /// `<compose> -f docker/docker-compose.yml -p <project> <args>` with this project's settings.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.project])
            .args(args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        command
    }

    /// Runs a Compose command that must succeed; returns its stdout.
    fn compose(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("cannot run compose");
        self.assert_success(&output, &format!("compose {}", args.join(" ")));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs a docker command that must succeed; returns its stdout.
    fn docker(&self, args: &[&str]) -> String {
        docker(args, || self.logs())
    }

    fn assert_success(&self, output: &Output, what: &str) {
        assert!(
            output.status.success(),
            "{what}: exit status {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
    }

    /// The end of every service's log, for assertion messages.
    fn logs(&self) -> String {
        match self.command(&["logs", "--no-color", "--tail", "60"]).output() {
            Ok(output) => format!("--- compose logs\n{}", String::from_utf8_lossy(&output.stdout)),
            Err(e) => format!("(cannot read the compose logs: {e})"),
        }
    }

    /// `up -d` with the test's executors, then waits until every one of them is healthy and
    /// registered with the scheduler, and no other is.
    fn up(&self) {
        self.compose(&["up", "-d", "--scale", &format!("executor={EXECUTORS}")]);
        let started = Instant::now();
        loop {
            let executors = self.containers("executor");
            let healthy = executors.len() == EXECUTORS
                && executors.iter().all(|id| {
                    let output =
                        Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", id]).output();
                    output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "healthy")
                });
            if healthy && self.registered_executors() == Some(EXECUTORS) {
                return;
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "the cluster did not come up with {EXECUTORS} registered executors in {STARTUP_TIMEOUT:?} \
                 (containers {executors:?}, registered {:?})\n{}",
                self.registered_executors(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn down(&self) {
        self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
    }

    /// Full ids of the running containers of `service`.
    fn containers(&self, service: &str) -> Vec<String> {
        let ids = self.compose(&["ps", "-q", service]);
        let running: Vec<String> = ids
            .lines()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .filter(|id| {
                let state = Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", id]).output();
                state.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
            })
            .map(str::to_owned)
            .collect();
        running
    }

    /// Executors the scheduler knows, through its REST API on the host port, with the cluster's
    /// secret as the bearer token (the API refuses calls without it).
    fn registered_executors(&self) -> Option<usize> {
        let secret = self.cluster_secret()?;
        let address = format!("127.0.0.1:{}", self.scheduler_port);
        let response = http_request(&address, "GET", "/api/executors", Some(&secret))?;
        let executors: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        executors.as_array().map(Vec::len)
    }

    /// The secret secret-init wrote into the cluster's volume, read in the scheduler container;
    /// `None` until the scheduler runs.
    fn cluster_secret(&self) -> Option<String> {
        let output =
            self.command(&["exec", "-T", "scheduler", "cat", "/var/lib/fruits-secret/cluster.secret"]).output().ok()?;
        let secret = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !secret.is_empty()).then_some(secret)
    }

    fn project_label(&self) -> String {
        format!("label=com.docker.compose.project={}", self.project)
    }

    /// The project's bucket, through the host port.
    fn s3(&self) -> S3Bucket {
        S3Account::garage_on_host_port(self.s3_port, &self.key_id, &self.secret).bucket(BUCKET)
    }

    /// Runs `fruits run` in the client container on the images the first job uploaded, into
    /// `s3://fruits/<prefix>`; as soon as its first task has committed a file, does `interrupt`
    /// to one executor. The job must still succeed, with every image exactly once and no file of
    /// a lost attempt left.
    fn run_interrupted(&self, s3: &S3Bucket, prefix: &str, images: usize, interrupt: impl FnOnce(&str)) {
        let input = format!("s3://{BUCKET}/input");
        let output = format!("s3://{BUCKET}/{prefix}");
        let args = ["run", "--rm", "-T", "--entrypoint", "fruits", "client", "--json", "run"];
        let job = self
            .command(&args)
            // The PCA is checked in the first job; here only the featurize job is at stake.
            .args(["--input", &input, "--output", &output, "--no-pca"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("compose run");
        let mut job = KillOnDrop(Some(job));

        // Mid-job: work done, work running, work waiting.
        let started = Instant::now();
        let features = format!("{prefix}/features");
        while !s3.list(&features).iter().any(|(key, _)| key.ends_with(".parquet")) {
            assert!(started.elapsed() < JOB_TIMEOUT, "no task of the {prefix} job finished\n{}", self.logs());
            if let Some(status) = job.child().try_wait().expect("job status") {
                panic!("the {prefix} job ended ({status}) before any file was written\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let victim = self.containers("executor").into_iter().next().expect("a running executor");
        interrupt(&victim);

        let result = job.wait_with_output(JOB_TIMEOUT).unwrap_or_else(|| {
            panic!("the {prefix} job did not finish in {JOB_TIMEOUT:?}\n{}", self.logs());
        });
        self.assert_success(&result, &format!("the {prefix} job"));
        let summary = last_summary(&result.stdout);
        assert_eq!((summary.rows_in, summary.rows_out), (images as u64, images as u64), "{prefix}");
        assert!(summary.failed.is_empty(), "{prefix}: {:?}", summary.failed);

        let present: HashSet<String> = s3.list(&features).into_iter().map(|(key, _)| key).collect();
        let Committed { manifest, rows } = read_committed_with(|name| {
            let key = format!("{features}/{name}");
            present.contains(&key).then(|| s3.get(&key))
        });
        assert_each_image_once(&rows, images);
        let mut left: Vec<String> =
            present.iter().map(|k| k.trim_start_matches(&format!("{features}/")).to_owned()).collect();
        let mut expected: Vec<String> = manifest.files.iter().map(|f| f.file.clone()).collect();
        expected.push("_SUCCESS".to_owned());
        left.sort();
        expected.sort();
        assert_eq!(left, expected, "{prefix}: only the committed files are left");
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // Also after a failure: nothing of the test may keep running.
        let _ = self.command(&["down", "-v", "--remove-orphans", "--timeout", "5"]).output();
    }
}

/// The client process of a job: killed if the test fails before it ends.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Waits at most `limit` for the process to end and returns what it printed.
    fn wait_with_output(&mut self, limit: Duration) -> Option<Output> {
        let mut child = self.0.take().expect("running");
        // Read both pipes while waiting, so a chatty process cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stdout.read_to_end(&mut buffer);
            buffer
        });
        let err = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stderr.read_to_end(&mut buffer);
            buffer
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("job status") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Some(Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") })
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
