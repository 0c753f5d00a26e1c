//! The Python that `scripts/setup-quantize.sh` sets up: a venv with onnxruntime (the very
//! release whose library fruits loads), onnx and numpy, all pinned. `fruits quantize` writes int8
//! models with it and `fruits bench` measures Python onnxruntime's rate with it; `fruits run`
//! never needs it.
//!
//! The scripts are part of the binary (`include_str!`), written to a scratch folder for each
//! call, so an installed fruits without the checkout runs them too. Tensors go to them as
//! `.npy` files and their report comes back as the last JSON line they print.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

/// Where `scripts/setup-quantize.sh` puts the venv, below the fruits cache folder.
const VENV: &str = "quantize-venv";

/// How to make the Python available, for every message that says it is not.
pub const SETUP: &str = "run `make setup-quantize` (scripts/setup-quantize.sh) to set it up, or give a Python with \
                         onnxruntime, onnx and numpy with --python or FRUITS_QUANTIZE_PYTHON";

/// `$FRUITS_CACHE_DIR/quantize-venv/bin/python`, the cache folder defaulting as in the scripts
/// (`$XDG_CACHE_HOME/fruits`, then `~/.cache/fruits`).
pub fn default_python() -> PathBuf {
    let cache = std::env::var_os("FRUITS_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("fruits")
    });
    cache.join(VENV).join("bin/python")
}

/// `python` (default: [`default_python`]) if it exists and runs `import_check`; otherwise why not.
pub fn locate(python: Option<&Path>, import_check: &str) -> Result<PathBuf> {
    let python = python.map_or_else(default_python, Path::to_path_buf);
    if !python.exists() {
        bail!("{} does not exist", python.display());
    }
    match Command::new(&python).args(["-c", import_check]).output() {
        Ok(output) if output.status.success() => Ok(python),
        Ok(output) => bail!("{} cannot run `{import_check}` ({})", python.display(), last_line(&output.stderr)),
        Err(e) => bail!("cannot run {}: {e}", python.display()),
    }
}

/// Runs `script` (saved as `scratch/name`) with `args` and parses the last line it prints that
/// starts with `{`. A failure says what `what` was and carries the script's stderr.
pub fn run_script<T: DeserializeOwned>(
    python: &Path,
    scratch: &Path,
    (name, script): (&str, &str),
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    what: &str,
) -> Result<T> {
    let path = scratch.join(name);
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let result = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !result.status.success() {
        bail!("{what} failed ({}): {}", result.status, String::from_utf8_lossy(&result.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&result.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed no report: {stdout}"))
}

/// The last line of `bytes` that is not blank, for one-line error messages.
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").to_owned()
}

/// Writes `values` as a little-endian float32 NumPy array of `shape` (format 1.0: magic, header
/// length, a Python dict literal padded to a multiple of 64 bytes, then the data).
pub fn write_npy(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let dims = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let length = u16::try_from(header.len()).context("NumPy header too long")?;

    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        out.write_all(b"\x93NUMPY\x01\x00")?;
        out.write_all(&length.to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        for chunk in values.chunks(16 * 1024) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes)?;
        }
        out.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
    };
    write().with_context(|| format!("cannot write tensors to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy(&path, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), "{header}");
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 6.0);
    }

    #[test]
    fn a_missing_python_is_named() {
        let error = locate(Some(Path::new("/nonexistent/bin/python")), "import onnxruntime").unwrap_err();
        assert_eq!(error.to_string(), "/nonexistent/bin/python does not exist");
    }
}
