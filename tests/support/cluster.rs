//! A loopback Ballista cluster of real processes: one `fruits-scheduler` and N
//! `fruits-executor`s, each on its own free ports, logging into a temporary folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{binary, free_port, model_path};

/// How long processes may take to come up and register.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process that is killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: String, mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child, log }
    }

    /// SIGKILL, as a machine dying would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- {} ({})\n{}", self.name, self.log.display(), text)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub executors: usize,
    /// Task slots of each executor.
    pub vcores: usize,
    /// `NAME=value` pairs for every process (S3 endpoint and credentials).
    pub env: Vec<(String, String)>,
    /// More flags for every executor (`--classifier DIR`).
    pub executor_args: Vec<String>,
}

/// A running scheduler and its executors.
pub struct Cluster {
    pub scheduler_port: u16,
    pub scheduler: Process,
    pub executors: Vec<Process>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts the scheduler and the executors and waits until every executor has registered.
    /// Heartbeats and timeouts are short, so that a killed executor is noticed in seconds.
    pub fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::Builder::new().prefix("fruits-cluster-").tempdir().expect("temp dir");
        let scheduler_port = free_port();
        let mut command = Command::new(binary("fruits-scheduler"));
        command
            .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
            .args(["--bind-port", &scheduler_port.to_string()])
            .args(["--executor-timeout-seconds", "5", "--expire-dead-executor-interval-seconds", "1"])
            .envs(options.env.iter().cloned());
        let scheduler = Process::spawn("fruits-scheduler".into(), command, dir.path().join("scheduler.log"));
        let mut cluster = Self { scheduler_port, scheduler, executors: Vec::new(), _dir: dir };
        cluster.wait_until(|c| c.rest("/api/executors").is_some(), "the scheduler to answer");

        for i in 0..options.executors {
            let work_dir = cluster._dir.path().join(format!("executor-{i}"));
            std::fs::create_dir_all(&work_dir).expect("work dir");
            let mut command = Command::new(binary("fruits-executor"));
            command
                .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
                .args(["--bind-port", &free_port().to_string()])
                .args(["--bind-grpc-port", &free_port().to_string()])
                .args(["--bind-health-port", &free_port().to_string()])
                .args(["--scheduler-host", "127.0.0.1", "--scheduler-port", &scheduler_port.to_string()])
                .args(["--vcores", &options.vcores.to_string(), "--executor-heartbeat-interval-seconds", "1"])
                // Several executors share this machine's cores: one inference thread per slot.
                .args(["--inference-threads", "1"])
                .args(["--work-dir", work_dir.to_str().expect("utf-8 path")])
                .args(["--model", model_path().to_str().expect("utf-8 path")])
                .args(&options.executor_args)
                .envs(options.env.iter().cloned());
            let log = cluster._dir.path().join(format!("executor-{i}.log"));
            cluster.executors.push(Process::spawn(format!("fruits-executor {i}"), command, log));
        }
        let expected = options.executors;
        cluster.wait_until(|c| c.executor_count() == Some(expected), "every executor to register");
        cluster
    }

    /// `df://127.0.0.1:<port>`, for `fruits --scheduler`.
    pub fn scheduler_url(&self) -> String {
        format!("df://127.0.0.1:{}", self.scheduler_port)
    }

    /// The body of a successful GET on the scheduler's REST API.
    pub fn rest(&self, path: &str) -> Option<String> {
        http_get(&format!("127.0.0.1:{}", self.scheduler_port), path)
    }

    /// Executors the scheduler currently knows.
    pub fn executor_count(&self) -> Option<usize> {
        let body = self.rest("/api/executors")?;
        let executors: serde_json::Value = serde_json::from_str(&body).ok()?;
        executors.as_array().map(Vec::len)
    }

    /// Every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        std::iter::once(&self.scheduler).chain(&self.executors).map(Process::log).collect::<Vec<_>>().join("\n")
    }

    fn wait_until(&mut self, ready: impl Fn(&Self) -> bool, what: &str) {
        let started = Instant::now();
        while !ready(self) {
            let exited = !self.scheduler.is_running() || self.executors.iter_mut().any(|e| !e.is_running());
            if exited || started.elapsed() > STARTUP_TIMEOUT {
                panic!("timed out waiting for {what} (a process exited: {exited})\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A plain HTTP/1.1 GET; `None` unless it answered 200.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Some(if chunked { dechunk(body) } else { body.to_owned() })
}

/// The payload of a chunked transfer encoding.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
