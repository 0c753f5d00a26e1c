//! The parts of `fruits quantize`: the calibration sample ([`calibration`]), onnxruntime's
//! quantization tool ([`tool`]) and the fidelity of the int8 model against the fp32 one
//! ([`fidelity`]). The pipeline is `commands::quantize`.

pub mod calibration;
pub mod fidelity;
pub mod tool;
