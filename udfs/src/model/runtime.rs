//! Finding and loading the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: the library is opened at run time, so the binaries build
//! without network access and one build works with any compatible ONNX Runtime. The library is
//! looked for, in order: the explicit path (flag or `FRUITS_ORT_LIBRARY`), next to the running
//! executable (installed and container layouts), and where `scripts/setup-onnxruntime.sh` puts it
//! in the source checkout the binary was built from. Users of the README never set anything.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use super::ModelError;

/// The ONNX Runtime release that `scripts/setup-onnxruntime.sh` installs and the code is tested with.
pub const ORT_VERSION: &str = "1.31.1";

/// Environment variable naming the library file, for layouts the search does not cover.
pub const ORT_LIBRARY_ENV: &str = "FRUITS_ORT_LIBRARY";

fn library_file_name() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// Places to look for the library when none is given, most specific first.
fn default_candidates() -> Vec<PathBuf> {
    let name = library_file_name();
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        candidates.push(dir.join(&name));
        candidates.push(dir.join("../lib").join(&name));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.runtime/onnxruntime").join(&name));
    candidates
}

/// Resolves the ONNX Runtime library path: `explicit`, else `FRUITS_ORT_LIBRARY`, else the
/// first default location that exists.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    let from_env = std::env::var_os(ORT_LIBRARY_ENV).map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        return if path.is_file() { Ok(path) } else { Err(ModelError::RuntimeNotFound { searched: vec![path] }) };
    }
    let candidates = default_candidates();
    candidates
        .iter()
        .find(|path| path.is_file())
        .map(|path| path.canonicalize().unwrap_or_else(|_| path.clone()))
        .ok_or(ModelError::RuntimeNotFound { searched: candidates })
}

/// The process's ONNX Runtime environment. ONNX Runtime allows one per process and the
/// library can be loaded once, so the first successful call wins and later calls share it.
pub fn environment(library: &Path) -> Result<&'static Environment, ModelError> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());

    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let load_error = |message: String| ModelError::RuntimeLoad { path: library.to_path_buf(), message };
    let environment = ort::init_from(library)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("fruits")
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}
