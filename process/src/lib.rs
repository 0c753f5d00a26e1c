//! What every fruits binary shares: the client, the scheduler and the executor take the same
//! model and S3 flags, spelled the same way, and log the same way.

pub mod auth;
pub mod logging;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fruits_udfs::{DecodeLimits, InputSpec, Layout, ModelConfig, ORT_LIBRARY_ENV, S3Options, Scaling};

/// The embedding model and how to feed it.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// ONNX model producing one embedding per image.
    #[arg(long, env = "FRUITS_MODEL")]
    pub model: Option<PathBuf>,

    /// ONNX Runtime shared library (default: found next to the binary, in ../lib, or in the checkout's .runtime/).
    #[arg(long, env = ORT_LIBRARY_ENV)]
    pub ort_library: Option<PathBuf>,

    /// Name of the model's image input.
    #[arg(long, default_value = "input")]
    pub model_input: String,

    /// Name of the model's embedding output, of shape [N, D].
    #[arg(long, default_value = "features")]
    pub model_output: String,

    /// Memory layout of the input tensor: nhwc or nchw.
    #[arg(long, default_value_t = InputSpec::default().layout)]
    pub model_layout: Layout,

    /// Pixel scaling: symmetric (x/127.5-1), unit (x/255) or imagenet (mean/std).
    #[arg(long, default_value_t = InputSpec::default().scaling)]
    pub model_scaling: Scaling,

    /// Input width and height, in pixels.
    #[arg(long, default_value_t = InputSpec::default().width, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub model_size: u32,

    /// Most images per inference call (default 1: MobileNetV2 on ONNX Runtime's CPU provider runs
    /// fastest one image at a time, each task slot on its own single-threaded session).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,

    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// How much one image may cost to decode: every process that decodes photos takes these.
#[derive(Debug, Clone, Args)]
pub struct DecodeArgs {
    /// Largest image accepted, in pixels (width x height); a larger one fails with its reason,
    /// before any of it is decoded.
    #[arg(long, env = "FRUITS_MAX_IMAGE_PIXELS", default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_pixels: u64,

    /// Most memory the decoding of one image may take, in bytes: its pixels and the decoder's
    /// buffers (a progressive JPEG holds all its coefficients). Each task decodes one image at a time.
    #[arg(long, env = "FRUITS_MAX_DECODE_MEMORY", default_value_t = DecodeLimits::DEFAULT_MAX_MEMORY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_decode_memory: u64,
}

impl DecodeArgs {
    pub fn limits(&self) -> DecodeLimits {
        DecodeLimits { max_pixels: self.max_image_pixels, max_memory: self.max_decode_memory }
    }
}

impl ModelArgs {
    /// The model configuration; `None` when no model was given (`--model` or `FRUITS_MODEL`).
    pub fn config(&self) -> Option<ModelConfig> {
        let model = self.model.as_ref()?;
        let mut config = ModelConfig::new(model);
        config.ort_library = self.ort_library.clone();
        config.input_name = self.model_input.clone();
        config.output_name = self.model_output.clone();
        config.input = InputSpec {
            width: self.model_size,
            height: self.model_size,
            layout: self.model_layout,
            scaling: self.model_scaling,
        };
        config.max_batch = self.batch_size as usize;
        config.limits = self.decode.limits();
        Some(config)
    }
}

/// Where S3 is and how to talk to it. Credentials are not flags: each process takes them from
/// its own environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or,
/// on EC2, from the instance role, so they never travel with a query.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// S3 endpoint for S3-compatible servers such as Garage or MinIO (default: AWS).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// Path-style addressing (endpoint/bucket/key) instead of virtual-hosted (bucket.endpoint/key).
    #[arg(long, env = "FRUITS_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Allow plain-HTTP endpoints (local servers).
    #[arg(long, env = "AWS_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,

    /// Seconds of retrying a failing S3 request before giving up.
    #[arg(long, env = "FRUITS_S3_RETRY_TIMEOUT", default_value_t = S3Options::DEFAULT_RETRY_TIMEOUT.as_secs())]
    pub s3_retry_timeout: u64,
}

impl S3Args {
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: Some(self.s3_path_style),
            allow_http: Some(self.s3_allow_http),
            retry_timeout: Some(Duration::from_secs(self.s3_retry_timeout)),
        }
    }
}
