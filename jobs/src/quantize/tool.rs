//! onnxruntime's quantization tool, run with the Python that `scripts/setup-quantize.sh` sets up.
//!
//! Only `fruits quantize` needs Python, and only to write the int8 file: the script is part of
//! this binary (`quantize.py`, written to the scratch folder of each call), so a fruits
//! installed without the checkout quantizes too. Featurizing with the written model is fruits'
//! own ONNX Runtime, as for any model.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The script the tool runs.
const SCRIPT: &str = include_str!("quantize.py");

/// Where `scripts/setup-quantize.sh` puts the venv, below the fruits cache folder.
const VENV: &str = "quantize-venv";

/// How to make the tool available, for every message that says it is not.
const SETUP: &str = "run `make setup-quantize` (scripts/setup-quantize.sh) to set it up, or give a Python with \
                     onnxruntime, onnx and numpy with --python or FRUITS_QUANTIZE_PYTHON";

/// The Python that runs the tool.
#[derive(Debug, Clone)]
pub struct Tool {
    python: PathBuf,
}

/// What the tool reports on its last line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolReport {
    /// onnxruntime's version in the tool's Python.
    pub onnxruntime: String,
    pub calibration_images: usize,
    pub seconds: f64,
}

impl Tool {
    /// `python` if given, else the venv of `scripts/setup-quantize.sh`; checked to import the
    /// quantization tool, so that a missing set-up stops before any image is read.
    pub fn locate(python: Option<&Path>) -> Result<Self> {
        let python = match python {
            Some(python) => python.to_path_buf(),
            None => {
                let python = default_python();
                if !python.exists() {
                    bail!("the quantization tool is not set up: {} does not exist; {SETUP}", python.display());
                }
                python
            }
        };
        let probe = Command::new(&python)
            .args(["-c", "from onnxruntime.quantization import quantize_static; import onnx, numpy"])
            .output();
        match probe {
            Ok(output) if output.status.success() => Ok(Self { python }),
            Ok(output) => bail!(
                "{} cannot import onnxruntime's quantization tool ({}); {SETUP}",
                python.display(),
                last_line(&output.stderr)
            ),
            Err(e) => bail!("cannot run {}: {e}; {SETUP}", python.display()),
        }
    }

    /// Quantizes `model` into `output`, calibrated on the `.npy` of preprocessed images
    /// `calibration`, fed as the model's input `input_name`. `scratch` receives the script.
    pub fn quantize(
        &self,
        model: &Path,
        calibration: &Path,
        input_name: &str,
        output: &Path,
        scratch: &Path,
    ) -> Result<ToolReport> {
        let script = scratch.join("quantize.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("cannot write {}", script.display()))?;
        let result = Command::new(&self.python)
            .arg(&script)
            .arg("--model")
            .arg(model)
            .arg("--calibration")
            .arg(calibration)
            .args(["--input-name", input_name])
            .arg("--output")
            .arg(output)
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !result.status.success() {
            bail!(
                "onnxruntime's quantization of {} failed ({}): {}",
                model.display(),
                result.status,
                String::from_utf8_lossy(&result.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&result.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("the quantization tool printed no report: {stdout}"))
    }
}

/// `$FRUITS_CACHE_DIR/quantize-venv/bin/python`, the cache folder defaulting as in the scripts
/// (`$XDG_CACHE_HOME/fruits`, then `~/.cache/fruits`).
fn default_python() -> PathBuf {
    let cache = std::env::var_os("FRUITS_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("fruits")
    });
    cache.join(VENV).join("bin/python")
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").to_owned()
}
