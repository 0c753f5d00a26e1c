//! A throwaway single-node Garage S3 server for tests, reached with the [`super::s3`] client.
//!
//! Each [`Garage`] is its own server: own temporary folder, own loopback ports, own credentials,
//! so tests that start one can run in parallel. It is killed when the value is dropped.
//!
//! ```ignore
//! let garage = Garage::start();
//! garage.upload_dir(&sample_dir(), garage.bucket(), "Test");
//! let input = format!("s3://{}/Test", garage.bucket());
//! let out = garage.configure(&mut Command::new(binary("fruits"))).args(["run", "--input", &input]).output();
//! ```
//!
//! The binary comes from `scripts/setup-garage.sh` (`make setup-s3`); `FRUITS_GARAGE` overrides.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use tempfile::TempDir;

use super::free_port;
use super::s3::{S3Account, S3Bucket, block_on, random_hex};

/// The region Garage is configured with; S3 signatures must name it.
pub const REGION: &str = "garage";

/// How long the server may take to answer before the test gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one readiness probe may take (it answers in milliseconds when all is well).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How Garage reports a port it could not bind (the OS's text for EADDRINUSE).
const ADDRESS_IN_USE: &str = "Address already in use";

/// A running single-node Garage with one bucket and one access key that may do anything with it
/// (and create more buckets).
pub struct Garage {
    child: Child,
    ports: Ports,
    credentials: Credentials,
    /// Holds the config, metadata, data and log; declared last so it is removed after `Drop`
    /// has stopped the server.
    _dir: TempDir,
}

impl Garage {
    /// Starts a server with a fresh bucket named `fruits-test-<random hex>`.
    pub fn start() -> Garage {
        Garage::start_with_bucket(&format!("fruits-test-{}", random_hex(6)))
    }

    /// Starts a server whose first bucket is `bucket`.
    ///
    /// Panics, with the end of the server's log, if it does not come up.
    pub fn start_with_bucket(bucket: &str) -> Garage {
        let binary = garage_binary();
        let dir = tempfile::Builder::new().prefix("fruits-garage-").tempdir().expect("temporary folder for garage");
        let config = dir.path().join("garage.toml");
        let log = dir.path().join("garage.log");
        // Made up here and handed to the server, which imports them: nothing to parse back.
        let credentials = Credentials {
            access_key_id: format!("GK{}", random_hex(12)),
            secret_access_key: random_hex(32),
            bucket: bucket.to_owned(),
        };
        // The ports are free when picked but may be taken before Garage binds them (by another
        // process, or an outgoing connection); then the server is started again on new ones.
        let mut attempt = 1;
        let (child, ports) = loop {
            let ports = Ports::pick();
            fs::write(&config, config_toml(dir.path(), &ports)).expect("write garage.toml");
            let child = spawn_server(&binary, &config, &log, &credentials);
            let endpoint = ports.s3_endpoint();
            match wait_until_answering(&binary, &config, &log, &endpoint, &credentials, child) {
                Ok(child) => break (child, ports),
                Err(_) if attempt < 3 && log_mentions(&log, ADDRESS_IN_USE) => attempt += 1,
                Err(why) => panic!("garage did not start (config {}): {why}", config.display()),
            }
        };
        Garage { child, ports, credentials, _dir: dir }
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>` (path-style addressing).
    pub fn endpoint(&self) -> String {
        self.ports.s3_endpoint()
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.credentials.bucket
    }

    /// The variables with which `AmazonS3Builder::from_env` (and so a `fruits` binary) reaches
    /// this server: object_store reads every `AWS_*` variable whose lower-cased name is one of
    /// its config keys. Path-style requests are object_store's default; it is spelled out
    /// because Garage here has no `root_domain` and would not understand virtual-hosted ones.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", self.credentials.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.credentials.secret_access_key.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Points `command` at this server: drops every `AWS_*` variable it would inherit (a stray
    /// `AWS_SESSION_TOKEN` or `AWS_PROFILE` would break signing) and sets [`Garage::env`].
    pub fn configure<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("AWS_")) {
                command.env_remove(name);
            }
        }
        command.envs(self.env())
    }

    /// Where the server is, with the key of this test.
    pub fn account(&self) -> S3Account {
        self.credentials.account(&self.endpoint())
    }

    fn bucket_client(&self, bucket: &str) -> S3Bucket {
        self.account().bucket(bucket)
    }

    /// Uploads every file under `local_dir`, recursively, to `bucket` as `<prefix>/<relative
    /// path>` (just the relative path if `prefix` is empty); returns how many.
    pub fn upload_dir(&self, local_dir: &Path, bucket: &str, prefix: &str) -> usize {
        self.bucket_client(bucket).upload_dir(local_dir, prefix)
    }

    /// Every object under the folder `prefix`, as `(key, size)` sorted by key.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        self.bucket_client(bucket).list(prefix)
    }

    /// The content of one object, which must exist.
    pub fn get(&self, bucket: &str, key: &str) -> Bytes {
        self.bucket_client(bucket).get(key)
    }

    /// Stops the server now (a test of what happens when S3 goes away); dropping does it too.
    pub fn kill(&mut self) {
        // Killing an exited child is harmless; waiting reaps it so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Garage binary: `FRUITS_GARAGE`, else where `scripts/setup-garage.sh` installs it.
pub fn garage_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FRUITS_GARAGE") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("FRUITS_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .expect("HOME is not set")
            .join("fruits")
    });
    let path = cache.join("tools/bin/garage");
    assert!(
        path.is_file(),
        "Garage is not installed at {}: run `make setup-s3` (scripts/setup-garage.sh), or set FRUITS_GARAGE \
         to a garage 2.5.0 binary",
        path.display()
    );
    path
}

/// The loopback ports one server listens on.
struct Ports {
    s3: u16,
    rpc: u16,
    admin: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports { s3: free_port(), rpc: free_port(), admin: free_port() }
    }

    fn s3_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }
}

/// A single-node cluster: one copy of everything, SQLite metadata (no LMDB map to size), all
/// state inside `dir`, nothing listening beyond loopback. The K2V and web endpoints are left out.
fn config_toml(dir: &Path, ports: &Ports) -> String {
    let Ports { s3, rpc, admin } = ports;
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        secret = random_hex(32),
    )
}

/// `garage -c <config>`, isolated from the caller's `GARAGE_*` variables (which would override
/// the config file, e.g. `GARAGE_RPC_HOST`), with an uncoloured log on stderr.
fn garage_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("GARAGE_")) {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "garage=warn,netapp=warn").env("NO_COLOR", "1").arg("-c").arg(config).stdin(Stdio::null());
    command
}

/// The access key and the bucket it owns, which the server creates as it starts.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    bucket: String,
}

impl Credentials {
    fn account(&self, endpoint: &str) -> S3Account {
        S3Account {
            endpoint: endpoint.to_owned(),
            region: REGION.to_owned(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }
}

/// Starts the server in Garage's single-node mode: before it answers RPC it gives itself the
/// whole layout (zone `dc1`, the data disk's capacity), imports the access key and creates the
/// bucket with read, write and owner rights for it. That is what `layout assign`, `layout apply`,
/// `key import` and `bucket create`/`allow` would do, without five more round trips.
fn spawn_server(binary: &Path, config: &Path, log: &Path, credentials: &Credentials) -> Child {
    let log = File::create(log).expect("create garage.log");
    garage_command(binary, config)
        .env("RUST_LOG", "garage=info,netapp=warn")
        .env("GARAGE_DEFAULT_ACCESS_KEY", &credentials.access_key_id)
        .env("GARAGE_DEFAULT_SECRET_KEY", &credentials.secret_access_key)
        .env("GARAGE_DEFAULT_BUCKET", &credentials.bucket)
        .args(["server", "--single-node", "--default-bucket"])
        .stdout(log.try_clone().expect("garage.log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// Waits until the server answers: `garage status` succeeds (in single-node mode that means the
/// layout, key and bucket are in place), then a signed S3 listing of the bucket does, which only
/// this server can answer. On failure the server is stopped and the end of its log returned.
///
/// A taken RPC port makes Garage abort, but a taken S3 port is only logged while the server runs
/// on, and another program may be listening there: hence the look at the log. Whoever holds a
/// taken port may accept connections and never answer, so each probe has its own time limit.
fn wait_until_answering(
    binary: &Path,
    config: &Path,
    log: &Path,
    endpoint: &str,
    credentials: &Credentials,
    mut child: Child,
) -> Result<Child, String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let failure = loop {
        if let Some(status) = child.try_wait().expect("garage server status") {
            break format!("the server exited ({status})");
        }
        let mut status = garage_command(binary, config);
        if succeeds_within(status.arg("status").stdout(Stdio::null()).stderr(Stdio::null()), PROBE_TIMEOUT) {
            if log_mentions(log, ADDRESS_IN_USE) {
                break "a port was taken".to_owned();
            }
            // No retries: this loop is the retry, and it keeps to the deadline.
            let retry = RetryConfig { max_retries: 0, ..RetryConfig::default() };
            let client = ClientOptions::new().with_timeout(PROBE_TIMEOUT);
            let store = credentials.account(endpoint).builder(&credentials.bucket, client).with_retry(retry);
            match block_on(store.build().expect("S3 client for garage").list_with_delimiter(None)) {
                Ok(_) => return Ok(child),
                Err(e) if Instant::now() > deadline => break format!("S3 at {endpoint} fails: {e}"),
                Err(_) => {}
            }
        } else if Instant::now() > deadline {
            break format!("`garage status` still fails after {STARTUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{failure}; end of the server log:\n{}", log_tail(log)))
}

/// Runs `command` and tells whether it exited with 0 before `limit`; kills it otherwise.
fn succeeds_within(command: &mut Command, limit: Duration) -> bool {
    let mut child = command.spawn().expect("cannot run garage");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("garage status") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_mentions(log: &Path, text: &str) -> bool {
    fs::read_to_string(log).is_ok_and(|content| content.contains(text))
}

/// The last lines of the server log, without the backtrace Garage prints after a panic message.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let text = text.split("\nBACKTRACE:").next().unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
