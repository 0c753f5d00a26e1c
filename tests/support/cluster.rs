//! A loopback Ballista cluster of real processes: one `fruits-scheduler` and N
//! `fruits-executor`s, each on its own free ports, logging into a temporary folder.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
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

    /// How the process ended, if it does within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
    /// `NAME=value` pairs for every process (S3 endpoint and credentials; `FRUITS_SECRET_FILE`
    /// for an authenticated cluster, whose REST API [`Cluster::rest`] then calls with the secret).
    pub env: Vec<(String, String)>,
    /// More flags for every executor (`--classifier DIR`).
    pub executor_args: Vec<String>,
}

/// A running scheduler and its executors.
pub struct Cluster {
    pub scheduler_port: u16,
    pub scheduler: Process,
    pub executors: Vec<Process>,
    /// The cluster's secret, for REST calls.
    secret: Option<String>,
    /// [`ClusterOptions::executor_args`], given to every executor this cluster starts.
    executor_args: Vec<String>,
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
            .env_remove("FRUITS_SECRET_FILE")
            .envs(options.env.iter().cloned());
        let scheduler = Process::spawn("fruits-scheduler".into(), command, dir.path().join("scheduler.log"));
        let secret =
            options.env.iter().find(|(name, _)| name == "FRUITS_SECRET_FILE").map(|(_, path)| {
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_owned()
            });
        let mut cluster = Self {
            scheduler_port,
            scheduler,
            executors: Vec::new(),
            secret,
            executor_args: options.executor_args.clone(),
            _dir: dir,
        };
        cluster.wait_until(|c| c.rest("/api/executors").is_some(), "the scheduler to answer");

        for i in 0..options.executors {
            let executor = cluster.spawn_executor(&format!("executor-{i}"), options.vcores, &options.env);
            cluster.executors.push(executor);
        }
        let expected = options.executors;
        cluster.wait_until(|c| c.executor_count() == Some(expected), "every executor to register");
        cluster
    }

    /// Starts one more `fruits-executor` for this scheduler, with `vcores` task slots and only
    /// the variables in `env` and the cluster's executor flags, logging to `<name>.log`; does not
    /// wait for it to register.
    pub fn spawn_executor(&self, name: &str, vcores: usize, env: &[(String, String)]) -> Process {
        let work_dir = self._dir.path().join(name);
        std::fs::create_dir_all(&work_dir).expect("work dir");
        let mut command = Command::new(binary("fruits-executor"));
        command
            .args(["--bind-host", "127.0.0.1", "--external-host", "127.0.0.1"])
            .args(["--bind-port", &free_port().to_string()])
            .args(["--bind-grpc-port", &free_port().to_string()])
            .args(["--bind-health-port", &free_port().to_string()])
            .args(["--scheduler-host", "127.0.0.1", "--scheduler-port", &self.scheduler_port.to_string()])
            .args(["--vcores", &vcores.to_string(), "--executor-heartbeat-interval-seconds", "1"])
            // Several executors share this machine's cores: one inference thread per slot.
            .args(["--inference-threads", "1"])
            .args(["--work-dir", work_dir.to_str().expect("utf-8 path")])
            .args(["--model", model_path().to_str().expect("utf-8 path")])
            .args(&self.executor_args)
            .env_remove("FRUITS_SECRET_FILE")
            .envs(env.iter().cloned());
        let log = self._dir.path().join(format!("{name}.log"));
        Process::spawn(format!("fruits-executor {name}"), command, log)
    }

    /// `df://127.0.0.1:<port>`, for `fruits --scheduler`.
    pub fn scheduler_url(&self) -> String {
        format!("df://127.0.0.1:{}", self.scheduler_port)
    }

    /// The body of a successful GET on the scheduler's REST API (with the cluster's secret, if
    /// it has one).
    pub fn rest(&self, path: &str) -> Option<String> {
        let response = http_request(&self.scheduler_address(), "GET", path, self.secret.as_deref())?;
        (response.status == 200).then_some(response.body)
    }

    /// `127.0.0.1:<port>`, where the scheduler's gRPC and REST API listen.
    pub fn scheduler_address(&self) -> String {
        format!("127.0.0.1:{}", self.scheduler_port)
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

/// An HTTP response: status, header lines and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A plain HTTP/1.1 request without a body, with `Authorization: Bearer <bearer>` if given;
/// `None` if the server cannot be reached or answers no HTTP.
pub fn http_request(address: &str, method: &str, path: &str, bearer: Option<&str>) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let authorization = bearer.map(|b| format!("Authorization: Bearer {b}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Some(HttpResponse { status, head: head.to_owned(), body })
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
