//! `deploy/emr/` for real, on a simulated EMR cluster in containers (`scripts/emr-sim.sh`): a
//! master and two core nodes with systemd as PID 1, EMR's node metadata from fixture files, Garage
//! as S3. The release is packaged and uploaded with the deploy scripts, every node fetches and runs
//! the bootstrap action as EMR does, then the test checks what a user relies on: the scheduler on
//! the master and an executor on each core node run as enabled systemd units, both executors
//! register, the step's `fruits run` commits each of the 4,835 sample images exactly once with the
//! work spread over both core nodes, a killed executor is restarted by systemd and registers again,
//! and the bootstrap refuses a machine without EMR's metadata. Finally nothing of the simulation is
//! left.
//!
//! Needs a Docker engine; without one the test prints a loud SKIPPED line and passes. The first run
//! on a machine builds the node image (apt-get in a container: a minute or two; then cached).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::docker::{docker, engine_or_skip, one_container_cluster_at_a_time};
use crate::support::s3::{S3Account, S3Bucket};
use crate::support::*;

/// The simulated nodes' host names: what job-flow.json and the containers say.
const MASTER_HOST: &str = "ip-10-0-0-10.ec2.internal";
const CORE_HOSTS: [&str; 2] = ["ip-10-0-0-11.ec2.internal", "ip-10-0-0-12.ec2.internal"];

/// How long a killed executor may take to be restarted by systemd (RestartSec=5) and register.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /api/executors` on the master's scheduler, run as root there.
const AUTHENTICATED_EXECUTORS: &str = "curl -fsS -m 5 \\
    -H @<(printf 'Authorization: Bearer %s\\n' \"$(cat /etc/fruits/cluster.secret)\") \\
    http://localhost:50050/api/executors";

#[test]
fn emr_bootstrap_starts_a_cluster_that_runs_the_step() {
    if !engine_or_skip("the EMR simulation test") {
        return;
    }
    let _alone = one_container_cluster_at_a_time();
    let started = Instant::now();
    let sim = Sim::up();
    let up = started.elapsed();

    // 1. What the bootstrap left on each node: the right unit, enabled, restarting, unprivileged.
    for (node, unit, other) in [
        ("master", "fruits-scheduler", "fruits-executor"),
        ("core-1", "fruits-executor", "fruits-scheduler"),
        ("core-2", "fruits-executor", "fruits-scheduler"),
    ] {
        let show = sim.exec(node, &["systemctl", "show", unit, "-p", "ActiveState,UnitFileState,Restart,User"]);
        let show: BTreeMap<&str, &str> = show.lines().filter_map(|l| l.split_once('=')).collect();
        assert_eq!(show.get("ActiveState"), Some(&"active"), "{unit} on {node}: {show:?}");
        assert_eq!(show.get("UnitFileState"), Some(&"enabled"), "{unit} on {node} starts at boot: {show:?}");
        assert_eq!(show.get("Restart"), Some(&"always"), "{unit} on {node}: {show:?}");
        assert_eq!(show.get("User"), Some(&"fruits"), "{unit} on {node}: {show:?}");
        let other_state = sim.try_exec(node, &["systemctl", "is-active", other]);
        assert_ne!(String::from_utf8_lossy(&other_state.stdout).trim(), "active", "{other} must not run on {node}");
        // The S3 settings may hold a secret key: root only.
        assert_eq!(sim.exec(node, &["stat", "-c", "%U %a", "/etc/fruits/fruits.env"]).trim(), "root 600");
    }
    // The model each executor loads is the one uploaded, byte for byte.
    let model_sha = hex(&Sha256::digest(std::fs::read(model_path()).expect("read the model")));
    for node in ["core-1", "core-2"] {
        let sum = sim.exec(node, &["sha256sum", "/opt/fruits/models/mobilenetv2_features.onnx"]);
        assert_eq!(sum.split_whitespace().next(), Some(model_sha.as_str()), "model on {node}");
    }
    // Each node found its role and the master in the metadata fixtures.
    let log = sim.bootstrap_log("master");
    assert!(log.contains(&format!("node {MASTER_HOST}: master, runs fruits-scheduler")), "{log}");
    for (node, host) in [("core-1", CORE_HOSTS[0]), ("core-2", CORE_HOSTS[1])] {
        let log = sim.bootstrap_log(node);
        let expected = format!("node {host}: core/task, runs fruits-executor for the scheduler on {MASTER_HOST}");
        assert!(log.contains(&expected), "{log}");
    }
    // Both fetch paths ran: the AWS CLI (as on EMR) on master and core-1, curl's SigV4 on core-2.
    for (node, with) in [("master", "aws"), ("core-1", "aws"), ("core-2", "curl")] {
        let log = sim.bootstrap_log(node);
        assert!(
            log.contains(&format!("reading S3 with {with}")),
            "bootstrap on {node} should fetch with {with}:\n{log}"
        );
    }

    // 2. Both executors registered with the scheduler on the master, under their node's name.
    let registered = sim.executors();
    assert_eq!(
        registered.iter().map(|(host, _)| host.as_str()).collect::<BTreeSet<_>>(),
        CORE_HOSTS.into(),
        "{registered:?}"
    );

    // 3. The step: `fruits run` on the master against its scheduler, S3 to S3.
    let step_started = Instant::now();
    let step = sim.step(&["--json"]);
    let step_time = step_started.elapsed();
    assert_success(&step);
    let summary = last_json_line(&step.stdout);
    let images: u64 = SAMPLE_COUNTS.iter().map(|(_, n)| *n as u64).sum();
    for field in ["rows_in", "rows_out", "featurized"] {
        assert_eq!(summary[field].as_u64(), Some(images), "{field} in {summary}");
    }
    assert_eq!(summary["failed"].as_array().map(Vec::len), Some(0), "{summary}");
    assert!(summary["engine"].as_str().is_some_and(|e| e.contains("df://localhost:50050")), "{summary}");

    let s3 = sim.s3();
    let Committed { manifest, rows } = read_committed_with(|name| s3.try_get(&format!("out/features/{name}")));
    assert_each_image_once(&rows, images as usize);
    assert!(rows.iter().all(|r| r.features.as_ref().is_some_and(|f| f.len() == 1280)), "every image featurized");
    assert!(rows.iter().all(|r| r.path.starts_with("s3://fruits/Test/")), "rows are the S3 images");
    let writers: BTreeSet<&str> =
        manifest.files.iter().map(|f| f.written_by.split(':').next().unwrap_or_default()).collect();
    assert_eq!(writers, CORE_HOSTS.into(), "both core nodes write features");
    let projections = format!("out/pca/part-{}.parquet", manifest.run_id);
    for file in ["out/summary.json", "out/pca.png", projections.as_str()] {
        assert!(s3.try_get(file).is_some_and(|b| !b.is_empty()), "s3://fruits/{file} is missing");
    }

    // 4. An executor that dies is started again by systemd and registers again.
    let restarts = |node: &str| -> u32 {
        let shown = sim.exec(node, &["systemctl", "show", "fruits-executor", "-p", "NRestarts", "--value"]);
        shown.trim().parse().unwrap_or_else(|e| panic!("NRestarts {shown:?}: {e}"))
    };
    let before = restarts("core-1");
    sim.exec("core-1", &["systemctl", "kill", "--signal", "SIGKILL", "fruits-executor"]);
    let killed_at = Instant::now();
    loop {
        let ready =
            sim.try_exec("core-1", &["curl", "-fsS", "-m", "2", "-o", "/dev/null", "http://127.0.0.1:50053/readyz"]);
        if restarts("core-1") > before && ready.status.success() {
            break;
        }
        assert!(
            killed_at.elapsed() < RESTART_TIMEOUT,
            "the killed executor on core-1 was not restarted and registered within {RESTART_TIMEOUT:?}:\n{}",
            sim.exec("core-1", &["journalctl", "-u", "fruits-executor", "-n", "30", "--no-pager"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let restart_time = killed_at.elapsed();

    // 5. The bootstrap refuses a machine that has no EMR metadata, before it changes anything.
    let refused = sim.try_exec_env(
        "core-1",
        &[("EMR_INFO_DIR", "/nonexistent")],
        &[
            "bash",
            "/home/hadoop/bootstrap.sh",
            "--release",
            "s3://fruits/deploy/x.tar.gz",
            "--model",
            "s3://fruits/deploy/m.onnx",
            "--secret",
            "s3://fruits/deploy/cluster.secret",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("/nonexistent/instance.json is missing: this is not an EMR node"), "{stderr}");

    // 6. The cluster create-cluster.sh asks EMR for (the AWS CLI builds and validates the request;
    //    nothing is sent) bootstraps the nodes with exactly the action the simulation ran and runs
    //    exactly its step; the reference's shape, and task nodes on spot when asked for.
    let request = sim.create_cluster_request(&["TASK_COUNT=2", "AUTO_TERMINATE=true"]);
    let (bootstrap_path, bootstrap_args) = sim.bootstrap_action();
    let action = &request["BootstrapActions"][0]["ScriptBootstrapAction"];
    assert_eq!(action["Path"].as_str(), Some(bootstrap_path.as_str()), "{request}");
    assert_eq!(strings(&action["Args"]), bootstrap_args, "{request}");
    let step = &request["Steps"][0]["HadoopJarStep"];
    assert_eq!(step["Jar"].as_str(), Some("command-runner.jar"), "{request}");
    assert_eq!(strings(&step["Args"]), sim.step_args(), "{request}");
    let groups: Vec<(String, String, u64, String)> = request["Instances"]["InstanceGroups"]
        .as_array()
        .expect("instance groups")
        .iter()
        .map(|g| {
            let text = |k: &str| g[k].as_str().unwrap_or_default().to_owned();
            (text("InstanceRole"), text("InstanceType"), g["InstanceCount"].as_u64().unwrap_or(0), text("Market"))
        })
        .collect();
    let expected = [("MASTER", 1, "ON_DEMAND"), ("CORE", 2, "ON_DEMAND"), ("TASK", 2, "SPOT")]
        .map(|(role, n, market)| (role.to_owned(), "m5.xlarge".to_owned(), n, market.to_owned()));
    assert_eq!(groups, expected, "{request}");
    assert!(request["LogUri"].as_str().is_some_and(|u| u.starts_with("s3://")), "logs to S3: {request}");
    assert_eq!(request["Instances"]["KeepJobFlowAliveWhenNoSteps"], false, "auto-terminate: {request}");
    let idle = sim.create_cluster_request(&[]);
    assert_eq!(idle["AutoTerminationPolicy"]["IdleTimeout"], 3600, "{idle}");

    // 7. Down: nothing of the simulation is left.
    let project = sim.project.clone();
    drop(sim);
    for kind in ["container", "network"] {
        let label = format!("label=fruits.emr-sim={project}");
        let mut args = vec![kind, "ls", "--quiet", "--filter", &label];
        if kind == "container" {
            args.push("--all");
        }
        let left = docker(&args, String::new);
        assert!(left.trim().is_empty(), "{kind}s left after down: {left}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "emr test: image, package, upload, 3 nodes bootstrapped and registered {:.0} s, step {:.0} s, \
         executor restarted and registered {:.0} s, total {:.0} s",
        up.as_secs_f64(),
        step_time.as_secs_f64(),
        restart_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// One simulated cluster (`scripts/emr-sim.sh up`); dropping it runs `down`, so a failed assertion
/// leaves nothing running either.
struct Sim {
    dir: tempfile::TempDir,
    project: String,
    s3_port: u16,
    key_id: String,
    secret: String,
}

impl Sim {
    fn up() -> Sim {
        let dir = tempfile::Builder::new().prefix("fruits-emr-sim-").tempdir().expect("temporary folder");
        let bin_dir = binary("fruits").parent().expect("binary folder").to_path_buf();
        let output = script()
            .arg("up")
            .arg(dir.path())
            .env("FRUITS_BIN_DIR", &bin_dir)
            .env("FRUITS_MODEL_FILE", canonical(&model_path()))
            .env("FRUITS_SAMPLE", canonical(&sample_dir()))
            .output()
            .expect("cannot run scripts/emr-sim.sh");
        // Shown in the test's output whether it passes or not: what each step took and where the
        // logs are. (`up` removes what it started when it fails.)
        let _ = std::io::stderr().write_all(&output.stderr);
        assert_success(&output);
        let state = std::fs::read_to_string(dir.path().join("state")).expect("the simulation's state file");
        let state: HashMap<&str, &str> = state.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| state.get(key).unwrap_or_else(|| panic!("{key} missing from the state file")).to_string();
        Sim {
            project: get("project"),
            s3_port: get("s3_port").parse().expect("s3_port"),
            key_id: get("key_id"),
            secret: get("secret"),
            dir,
        }
    }

    fn container(&self, node: &str) -> String {
        format!("{}-{node}", self.project)
    }

    fn try_exec_env(&self, node: &str, env: &[(&str, &str)], command: &[&str]) -> Output {
        let mut docker = Command::new("docker");
        docker.args(["exec", "-u", "hadoop", "-w", "/home/hadoop"]);
        for (name, value) in env {
            docker.arg("-e").arg(format!("{name}={value}"));
        }
        docker.arg(self.container(node)).args(command).stdin(Stdio::null()).output().expect("cannot run docker exec")
    }

    /// Runs `command` on `node` as root.
    fn try_exec(&self, node: &str, command: &[&str]) -> Output {
        Command::new("docker")
            .arg("exec")
            .arg(self.container(node))
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run docker exec")
    }

    /// Runs `command` on `node` as root; it must succeed. Returns its stdout.
    fn exec(&self, node: &str, command: &[&str]) -> String {
        let output = self.try_exec(node, command);
        assert!(
            output.status.success(),
            "{} on {node}: {:?}\n{}{}",
            command.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn bootstrap_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("bootstrap-{node}.log"))).unwrap_or_default()
    }

    /// The executors the scheduler lists (`GET /api/executors` on the master): host and id.
    fn executors(&self) -> Vec<(String, String)> {
        // With the cluster secret as the bearer token, passed to curl as a header file so that it
        // is on no command line.
        let json = self.exec("master", &["bash", "-c", AUTHENTICATED_EXECUTORS]);
        let list: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let list = list.as_array().unwrap_or_else(|| panic!("not a list: {json}"));
        list.iter()
            .map(|e| {
                let field = |name: &str| e[name].as_str().unwrap_or_else(|| panic!("no {name} in {e}")).to_owned();
                (field("host"), field("id"))
            })
            .collect()
    }

    /// `scripts/emr-sim.sh step` with `args` appended to the step's `fruits run`.
    fn step(&self, args: &[&str]) -> Output {
        script().arg("step").arg(self.dir.path()).args(args).output().expect("cannot run scripts/emr-sim.sh step")
    }

    /// The RunJobFlow request of `deploy/emr/create-cluster.sh` for this simulation's uploads, with
    /// `settings` (VAR=VALUE) for the script.
    fn create_cluster_request(&self, settings: &[&str]) -> serde_json::Value {
        let output = script()
            .arg("create-cluster-request")
            .arg(self.dir.path())
            .args(settings)
            .output()
            .expect("cannot run scripts/emr-sim.sh create-cluster-request");
        assert_success(&output);
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
    }

    /// The bootstrap action the simulation ran on every node: its S3 path and arguments.
    fn bootstrap_action(&self) -> (String, Vec<String>) {
        let mut lines = self.state_lines("bootstrap-action");
        let path = lines.remove(0);
        (path, lines)
    }

    /// The step's command line the simulation ran on the master (without the test's `--json`).
    fn step_args(&self) -> Vec<String> {
        self.state_lines("step-args")
    }

    fn state_lines(&self, file: &str) -> Vec<String> {
        let path = self.dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(str::to_owned).collect()
    }

    /// The simulation's bucket, through Garage's port published on the host.
    fn s3(&self) -> S3Bucket {
        S3Account::garage_on_host_port(self.s3_port, &self.key_id, &self.secret).bucket("fruits")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        match script().arg("down").arg(self.dir.path()).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("emr-sim.sh down failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(e) => eprintln!("cannot run emr-sim.sh down: {e}"),
        }
    }
}

fn script() -> Command {
    let mut command = Command::new(repo_root().join("scripts/emr-sim.sh"));
    command.stdin(Stdio::null());
    command
}

fn strings(list: &serde_json::Value) -> Vec<String> {
    list.as_array().expect("a JSON list").iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
