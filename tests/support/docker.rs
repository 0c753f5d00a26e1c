//! What the container tests (Compose, the EMR simulation) share: whether Docker is there, and
//! running its commands.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Held by each test that runs a cluster of containers, so that two such clusters never share
/// the machine's cores: on two cores, two clusters featurizing at once starve each other's
/// heartbeats past the executor timeout, and a healthy executor is declared lost.
pub fn one_container_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static CLUSTERS: Mutex<()> = Mutex::new(());
    // A test that failed while holding it leaves the lock poisoned, not the next test wrong.
    CLUSTERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a Docker engine answers; if not, prints why `test` is skipped, straight to stderr
/// past the harness's capture, so that it shows in a passing run.
pub fn engine_or_skip(test: &str) -> bool {
    let why = match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => format!("no Docker engine (docker info: {})", String::from_utf8_lossy(&output.stderr).trim()),
        Err(e) => format!("no Docker engine (cannot run docker: {e})"),
    };
    skip(&why, test);
    false
}

/// The Compose command (`docker compose` preferred, else `docker-compose`), or `None` after
/// printing why `test` is skipped.
pub fn compose_or_skip(test: &str) -> Option<Vec<String>> {
    if !engine_or_skip(test) {
        return None;
    }
    let works = |program: &[&str]| {
        Command::new(program[0]).args(&program[1..]).arg("version").output().is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if works(&["docker-compose"]) {
        Some(vec!["docker-compose".into()])
    } else {
        skip("a Docker engine but neither `docker compose` nor `docker-compose`", test);
        None
    }
}

fn skip(why: &str, test: &str) {
    let line = "=".repeat(78);
    let _ = writeln!(std::io::stderr(), "\n{line}\nSKIPPED: {why}: {test} did not run\n{line}\n");
}

/// Runs a docker command that must succeed; returns its stdout. `context` is added to the
/// panic message (service logs, say).
pub fn docker(args: &[&str], context: impl FnOnce() -> String) -> String {
    let output = Command::new("docker").args(args).stdin(Stdio::null()).output().expect("cannot run docker");
    assert!(
        output.status.success(),
        "docker {}: exit status {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
        args.join(" "),
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        context()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
