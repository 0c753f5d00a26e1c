//! Cluster authentication: one shared secret, as Spark's `spark.authenticate` has it.
//!
//! `fruits`, `fruits-scheduler` and `fruits-executor` read the secret from the file named by
//! [`SECRET_FILE_ENV`] (never from a command line, where `ps` shows it to every user). Every gRPC
//! call between them and every REST call to the scheduler must carry it; the servers refuse any
//! other call before Ballista sees it, so a refused client or executor has nothing run and is not
//! registered.
//!
//! How it travels: Ballista 55 builds its gRPC clients itself (the executor's to the scheduler,
//! executors' to each other's Flight servers for shuffle data, the client's to the scheduler and
//! the executors for results) and lets an embedder change only the tonic `Endpoint` of each
//! (`override_create_grpc_client_endpoint`). The one request header an `Endpoint` can set is
//! `user-agent`, so the secret rides there as a `fruits-secret/<secret>` product token. REST
//! callers send the standard `Authorization: Bearer <secret>`; the servers accept either header.
//! Both are plain HTTP headers: without TLS, whoever can read the network traffic can read them.

use std::fmt;
use std::future::Ready;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::EndpointOverrideFn;
use ballista_core::serde::protobuf::GetJobStatusParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use clap::Args;
use futures::future::Either;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use tonic::transport::Endpoint;

/// The variable naming the file that holds the cluster's secret.
pub const SECRET_FILE_ENV: &str = "FRUITS_SECRET_FILE";

/// The `user-agent` product token that carries the secret on Ballista's own gRPC calls.
const USER_AGENT_TOKEN: &str = "fruits-secret/";

/// Fewer characters than this are guessable; `openssl rand -hex 32` gives 64.
const MIN_SECRET_LEN: usize = 32;

/// Why a secret cannot be used, or a process may not start or connect.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the cluster secret {} (named by {env}): {source}", path.display(), env = SECRET_FILE_ENV)]
    Read { path: PathBuf, source: std::io::Error },

    #[error(
        "the cluster secret {} can be read by other users (mode {mode:03o}): make it private with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },

    #[error(
        "the cluster secret in {} is {len} characters long; it needs at least {min} (make one with \
         `openssl rand -hex 32`)",
        path.display(),
        min = MIN_SECRET_LEN
    )]
    TooShort { path: PathBuf, len: usize },

    #[error(
        "the cluster secret in {} may only hold visible ASCII characters, without spaces (make one with \
         `openssl rand -hex 32`)",
        path.display()
    )]
    NotAToken { path: PathBuf },

    #[error(
        "refusing to listen on {host} without a cluster secret: anyone who can reach it could run jobs with this \
         machine's credentials. Set {env} to a file holding the cluster's secret, bind a loopback \
         address (--bind-host 127.0.0.1), or pass --allow-unauthenticated",
        env = SECRET_FILE_ENV
    )]
    OpenListener { host: String },

    #[error(
        "{env} is set, so this cluster runs pull-staged scheduling: push-staged scheduling sends tasks to \
         an executor port that Ballista 55 serves without any check. Drop the push-staged setting (or set \
         pull-staged) on the scheduler and every executor",
        env = SECRET_FILE_ENV
    )]
    PushStaged,

    #[error("the fruits scheduler at {scheduler} refused this {who}: {message}")]
    Refused { scheduler: String, who: &'static str, message: String },
}

/// The cluster's shared secret. Kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a request carried, as a server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// Neither header carries a secret.
    Missing,
    /// A secret came, and it is not this cluster's.
    Wrong,
}

impl Secret {
    /// The secret in the file named by [`SECRET_FILE_ENV`]; `None` when the variable is unset or
    /// empty (an unauthenticated cluster).
    pub fn from_env() -> Result<Option<Self>, AuthError> {
        match std::env::var_os(SECRET_FILE_ENV) {
            Some(path) if !path.is_empty() => Self::read(Path::new(&path)).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the secret from `path`, which only its owner may read: a secret other users can read
    /// authenticates them too.
    pub fn read(path: &Path) -> Result<Self, AuthError> {
        use std::os::unix::fs::PermissionsExt;

        let read_error = |source| AuthError::Read { path: path.to_owned(), source };
        let mode = std::fs::metadata(path).map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AuthError::Exposed { path: path.to_owned(), mode: mode & 0o777 });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text, path)
    }

    /// The secret in `text` (a file's contents: surrounding whitespace, such as the final newline,
    /// does not count).
    fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let secret = text.trim();
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::NotAToken { path: path.to_owned() });
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::TooShort { path: path.to_owned(), len: secret.len() });
        }
        Ok(Self(secret.into()))
    }

    /// Whether `candidate` is the secret, in time that depends on its length only, so that the
    /// time of a refusal does not tell an attacker how many leading characters were right.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        if secret.len() != candidate.len() {
            return false;
        }
        let difference = secret.iter().zip(candidate).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }

    /// Whether `headers` carry the secret, as `Authorization: Bearer <secret>` or as the
    /// `user-agent` token Ballista's own calls carry.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        let mut offered = false;
        for value in headers.get_all(header::AUTHORIZATION) {
            let Some(token) = value.to_str().ok().and_then(bearer_token) else { continue };
            offered = true;
            if self.matches(token.as_bytes()) {
                return Verdict::Admitted;
            }
        }
        for value in headers.get_all(header::USER_AGENT) {
            let Ok(agent) = value.to_str() else { continue };
            for token in agent.split_ascii_whitespace().filter_map(|t| t.strip_prefix(USER_AGENT_TOKEN)) {
                offered = true;
                if self.matches(token.as_bytes()) {
                    return Verdict::Admitted;
                }
            }
        }
        if offered { Verdict::Wrong } else { Verdict::Missing }
    }

    /// `Bearer <secret>`, the `Authorization` header of REST calls.
    pub fn bearer(&self) -> HeaderValue {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.0))
            .expect("a secret of visible ASCII characters is a valid header value");
        value.set_sensitive(true);
        value
    }

    /// The endpoint hook that makes every gRPC client Ballista builds carry the secret.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let agent = format!("{USER_AGENT_TOKEN}{}", self.0);
        Arc::new(move |endpoint: Endpoint| -> Result<Endpoint, Box<dyn std::error::Error + Send + Sync>> {
            Ok(endpoint.user_agent(agent.clone())?)
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Flags of the scheduler and the executor about who may connect.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Listen on a non-loopback address without a cluster secret (FRUITS_SECRET_FILE). Anyone who
    /// can reach the ports can then submit jobs, register executors and read results.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

impl ListenArgs {
    /// Refuses to serve `bind_host` to the network without a secret, unless told to: loopback
    /// addresses only reach this machine, any other may reach the world.
    pub fn check(&self, bind_host: &str, secret: Option<&Secret>) -> Result<(), AuthError> {
        if secret.is_some() {
            return Ok(());
        }
        let loopback = bind_host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        if self.allow_unauthenticated {
            log::warn!(
                "listening on {bind_host} without authentication (--allow-unauthenticated): anyone who can reach \
                 this port can run jobs"
            );
            return Ok(());
        }
        Err(AuthError::OpenListener { host: bind_host.to_owned() })
    }
}

/// The task scheduling policy of an authenticated cluster: pull-staged, because under
/// push-staged scheduling the scheduler sends tasks to a gRPC server inside
/// `start_executor_process` that cannot be given a check. `explicit` says whether the policy
/// was asked for (a flag or variable) rather than Ballista's default.
pub fn authenticated_policy(policy: TaskSchedulingPolicy, explicit: bool) -> Result<TaskSchedulingPolicy, AuthError> {
    match policy {
        TaskSchedulingPolicy::PullStaged => Ok(policy),
        TaskSchedulingPolicy::PushStaged if explicit => Err(AuthError::PushStaged),
        TaskSchedulingPolicy::PushStaged => {
            log::info!("a cluster secret is set: pull-staged task scheduling (executors poll the scheduler)");
            Ok(TaskSchedulingPolicy::PullStaged)
        }
    }
}

/// Asks the scheduler at `url` (`http://HOST:PORT`) whether it accepts `secret`, by a harmless
/// call (the status of a job that does not exist) through the same header Ballista's own calls
/// carry, so that a refused client or executor stops at once with the scheduler's reason instead
/// of failing later, or retrying forever, deep inside Ballista. Only an explicit refusal is an
/// error: while the scheduler cannot be reached (for up to `wait`), Ballista's own connection
/// handling reports that.
pub async fn check_scheduler(
    url: &str,
    secret: Option<&Secret>,
    who: &'static str,
    wait: Duration,
) -> Result<(), AuthError> {
    let refused = |message: String| AuthError::Refused { scheduler: url.to_owned(), who, message };
    let Ok(mut endpoint) = Endpoint::from_shared(url.to_owned()) else { return Ok(()) };
    endpoint = endpoint.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10));
    if let Some(secret) = secret {
        endpoint = (secret.endpoint_override())(endpoint).map_err(|e| refused(e.to_string()))?;
    }
    let started = Instant::now();
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) if started.elapsed() < wait => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(_) => return Ok(()),
        }
    };
    let params = GetJobStatusParams { job_id: "fruits-authentication-check".to_owned() };
    match SchedulerGrpcClient::new(channel).get_job_status(params).await {
        Err(status) if status.code() == tonic::Code::Unauthenticated => Err(refused(status.message().to_owned())),
        _ => Ok(()),
    }
}

/// A tower layer that lets through only requests carrying the secret, except to `open_paths`
/// (liveness and readiness probes, which tell nothing but "up").
#[derive(Debug, Clone)]
pub struct RequireSecretLayer {
    secret: Secret,
    open_paths: &'static [&'static str],
}

impl RequireSecretLayer {
    pub fn new(secret: Secret, open_paths: &'static [&'static str]) -> Self {
        Self { secret, open_paths }
    }
}

impl<S> tower_layer::Layer<S> for RequireSecretLayer {
    type Service = RequireSecret<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireSecret { inner, secret: self.secret.clone(), open_paths: self.open_paths }
    }
}

/// The service of [`RequireSecretLayer`]: refuses gRPC calls with the `unauthenticated` status
/// and REST calls with 401, saying why in the gRPC message or the `WWW-Authenticate` header.
#[derive(Debug, Clone)]
pub struct RequireSecret<S> {
    inner: S,
    secret: Secret,
    open_paths: &'static [&'static str],
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RequireSecret<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.open_paths.contains(&request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        let verdict = self.secret.check(request.headers());
        if verdict == Verdict::Admitted {
            return Either::Left(self.inner.call(request));
        }
        log::warn!("refused {} {}: {}", request.method(), request.uri().path(), refusal(verdict));
        Either::Right(std::future::ready(Ok(refuse(&request, verdict))))
    }
}

fn refusal(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Missing => {
            "this fruits cluster requires its shared secret and none was sent: set FRUITS_SECRET_FILE to the file \
             holding it (REST: send Authorization: Bearer <secret>)"
        }
        _ => "the secret sent is not this fruits cluster's: check FRUITS_SECRET_FILE",
    }
}

/// The refusal of `request`, in its protocol.
fn refuse<B, ResBody: Default>(request: &Request<B>, verdict: Verdict) -> Response<ResBody> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unauthenticated(refusal(verdict)).into_http();
    }
    let error = if verdict == Verdict::Missing { "" } else { "error=\"invalid_token\", " };
    let challenge = format!("Bearer realm=\"fruits\", {error}error_description=\"{}\"", refusal(verdict));
    let mut response = Response::new(ResBody::default());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    if let Ok(value) = HeaderValue::try_from(challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn secret_file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn reads_a_private_file_and_refuses_a_shared_one() {
        let (_dir, path) = secret_file(&format!("{SECRET}\n"), 0o600);
        let secret = Secret::read(&path).expect("a private secret file");
        assert!(secret.matches(SECRET.as_bytes()));
        assert_eq!(format!("{secret:?}"), "Secret(..)");

        for mode in [0o640, 0o604, 0o644] {
            let (_dir, path) = secret_file(SECRET, mode);
            let error = Secret::read(&path).unwrap_err().to_string();
            assert!(error.contains("can be read by other users") && error.contains("chmod 600"), "{mode:o}: {error}");
        }
        let missing = Secret::read(Path::new("/nonexistent/secret")).unwrap_err().to_string();
        assert!(missing.contains("cannot read the cluster secret /nonexistent/secret"), "{missing}");
    }

    #[test]
    fn refuses_short_or_spaced_secrets() {
        let path = Path::new("s");
        assert!(matches!(Secret::parse("short", path), Err(AuthError::TooShort { len: 5, .. })));
        let spaced = format!("{SECRET} {SECRET}");
        assert!(matches!(Secret::parse(&spaced, path), Err(AuthError::NotAToken { .. })));
    }

    #[test]
    fn admits_either_header_and_tells_missing_from_wrong() {
        let secret = Secret::parse(SECRET, Path::new("s")).expect("secret");
        let with = |name: header::HeaderName, value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::try_from(value).expect("header"));
            secret.check(&headers)
        };
        assert_eq!(with(header::AUTHORIZATION, format!("Bearer {SECRET}")), Verdict::Admitted);
        assert_eq!(with(header::AUTHORIZATION, format!("bearer {SECRET}")), Verdict::Admitted);
        assert_eq!(with(header::USER_AGENT, format!("fruits-secret/{SECRET} tonic/0.14.9")), Verdict::Admitted);
        assert_eq!(with(header::AUTHORIZATION, format!("Bearer {SECRET}x")), Verdict::Wrong);
        assert_eq!(with(header::USER_AGENT, "fruits-secret/guess tonic/0.14.9".into()), Verdict::Wrong);
        assert_eq!(with(header::USER_AGENT, "tonic/0.14.9".into()), Verdict::Missing);
        assert_eq!(secret.check(&HeaderMap::new()), Verdict::Missing);
    }

    #[test]
    fn the_endpoint_hook_accepts_every_secret() {
        // Any secret that parses is a valid user-agent token (the integration tests check that
        // the servers find it there).
        let secret = Secret::parse(&format!("{SECRET}!#$%&'*+-.^_`|~"), Path::new("s")).expect("secret");
        assert!((secret.endpoint_override())(Endpoint::from_static("http://127.0.0.1:1")).is_ok());
    }

    /// A service that answers 200 "ran": whether a request got through.
    #[derive(Clone)]
    struct Ran;

    impl tower_service::Service<Request<()>> for Ran {
        type Response = Response<String>;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new("ran".to_owned())))
        }
    }

    #[test]
    fn the_layer_refuses_grpc_and_rest_calls_in_their_protocols() {
        use tower_layer::Layer;
        use tower_service::Service;

        let secret = Secret::parse(SECRET, Path::new("s")).expect("secret");
        let mut service = RequireSecretLayer::new(secret.clone(), &["/healthz"]).layer(Ran);
        let mut call = |path: &str, headers: &[(header::HeaderName, String)]| {
            let mut request = Request::builder().uri(path);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            futures::executor::block_on(service.call(request.body(()).expect("request"))).expect("response")
        };

        let grpc = (header::CONTENT_TYPE, "application/grpc".to_owned());
        let refused = call("/ballista.protobuf.SchedulerGrpc/PollWork", &[grpc.clone()]);
        assert_eq!(refused.headers()["grpc-status"], "16", "unauthenticated");
        assert!(refused.body().is_empty());
        let agent = (header::USER_AGENT, format!("fruits-secret/{SECRET} tonic/0.14.9"));
        assert_eq!(call("/ballista.protobuf.SchedulerGrpc/PollWork", &[grpc, agent]).body(), "ran");

        let refused = call("/api/jobs", &[]);
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenge = refused.headers()[header::WWW_AUTHENTICATE].to_str().expect("ASCII");
        assert!(challenge.starts_with("Bearer realm=\"fruits\"") && challenge.contains("none was sent"), "{challenge}");
        let bearer = (header::AUTHORIZATION, format!("Bearer {SECRET}"));
        assert_eq!(call("/api/jobs", &[bearer]).body(), "ran");
        assert_eq!(call("/healthz", &[]).body(), "ran", "open paths need no secret");
        assert_eq!(secret.bearer().to_str().expect("ASCII"), format!("Bearer {SECRET}"));
    }

    #[test]
    fn loopback_listeners_need_no_secret() {
        let args = ListenArgs { allow_unauthenticated: false };
        assert!(args.check("127.0.0.1", None).is_ok());
        assert!(args.check("::1", None).is_ok());
        let open = args.check("0.0.0.0", None).unwrap_err().to_string();
        assert!(open.contains("refusing to listen on 0.0.0.0 without a cluster secret"), "{open}");
        assert!(args.check("10.0.0.5", None).is_err());
        let secret = Secret::parse(SECRET, Path::new("s")).expect("secret");
        assert!(args.check("0.0.0.0", Some(&secret)).is_ok());
        assert!(ListenArgs { allow_unauthenticated: true }.check("0.0.0.0", None).is_ok());
    }

    #[test]
    fn an_authenticated_cluster_polls() {
        use TaskSchedulingPolicy::*;
        assert!(matches!(authenticated_policy(PushStaged, false), Ok(PullStaged)));
        assert!(matches!(authenticated_policy(PullStaged, true), Ok(PullStaged)));
        assert!(matches!(authenticated_policy(PushStaged, true), Err(AuthError::PushStaged)));
    }
}
