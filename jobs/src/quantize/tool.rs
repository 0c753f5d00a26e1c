//! onnxruntime's quantization tool, run with the Python that `scripts/setup-quantize.sh` sets up
//! ([`crate::python`]).
//!
//! `fruits quantize` needs Python only to write the int8 file. Featurizing with the written
//! model is fruits' own ONNX Runtime, as for any model.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::python::{self, SETUP};

/// The script the tool runs.
const SCRIPT: &str = include_str!("quantize.py");

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
        let check = "from onnxruntime.quantization import quantize_static; import onnx, numpy";
        python::locate(python, check)
            .map(|python| Self { python })
            .map_err(|e| anyhow!("the quantization tool is not set up: {e}; {SETUP}"))
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
        let args = [
            "--model".as_ref(),
            model.as_os_str(),
            "--calibration".as_ref(),
            calibration.as_os_str(),
            "--input-name".as_ref(),
            input_name.as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ];
        let what = format!("onnxruntime's quantization of {}", model.display());
        python::run_script(&self.python, scratch, ("quantize.py", SCRIPT), args, &what)
    }
}
