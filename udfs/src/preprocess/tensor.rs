//! The model's input contract: size, memory layout and pixel scaling.

use std::fmt;
use std::str::FromStr;

use super::RgbImage;

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, H, W, C]`: Keras and TFLite exports, including the bundled MobileNetV2.
    Nhwc,
    /// `[N, C, H, W]`: PyTorch exports.
    Nchw,
}

/// How 8-bit pixel values become model inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// `x / 127.5 - 1`, range [-1, 1]: Keras `mobilenet_v2.preprocess_input`, TF-slim.
    Symmetric,
    /// `x / 255`, range [0, 1].
    Unit,
    /// `(x / 255 - mean[c]) / std[c]` with ImageNet's mean and std: torchvision exports.
    ImageNet,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Scaling {
    #[inline]
    fn apply(self, value: u8, channel: usize) -> f32 {
        let v = f32::from(value);
        match self {
            Scaling::Symmetric => v / 127.5 - 1.0,
            Scaling::Unit => v / 255.0,
            Scaling::ImageNet => (v / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel],
        }
    }

    /// `apply` of every 8-bit value, per channel.
    fn table(self) -> [[f32; 256]; 3] {
        std::array::from_fn(|channel| std::array::from_fn(|value| self.apply(value as u8, channel)))
    }
}

/// What the model expects of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub scaling: Scaling,
}

impl Default for InputSpec {
    /// The contract of `mobilenetv2_features.onnx`: 224x224 RGB, NHWC, scaled to [-1, 1].
    fn default() -> Self {
        Self { width: 224, height: 224, layout: Layout::Nhwc, scaling: Scaling::Symmetric }
    }
}

impl InputSpec {
    pub fn values_per_image(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// Tensor shape for a batch of `n` images.
    pub fn shape(&self, n: usize) -> [usize; 4] {
        let (h, w) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nhwc => [n, h, w, 3],
            Layout::Nchw => [n, 3, h, w],
        }
    }

    /// Writes `image` (already of this spec's size) scaled and in this layout into `out`.
    pub fn write_tensor(&self, image: &RgbImage, out: &mut [f32]) {
        assert_eq!((image.width, image.height), (self.width, self.height), "image not resized to the model size");
        assert_eq!(out.len(), self.values_per_image(), "tensor slot size");
        // One table lookup per value instead of a division: the same floats, computed 768 times.
        let table = self.scaling.table();
        match self.layout {
            Layout::Nhwc => {
                for (dst, rgb) in out.chunks_exact_mut(3).zip(image.pixels.chunks_exact(3)) {
                    for (c, (dst, &value)) in dst.iter_mut().zip(rgb).enumerate() {
                        *dst = table[c][usize::from(value)];
                    }
                }
            }
            Layout::Nchw => {
                let plane = image.width as usize * image.height as usize;
                for (p, rgb) in image.pixels.chunks_exact(3).enumerate() {
                    for (c, &value) in rgb.iter().enumerate() {
                        out[c * plane + p] = table[c][usize::from(value)];
                    }
                }
            }
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nhwc => "nhwc",
            Layout::Nchw => "nchw",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "nhwc" => Ok(Layout::Nhwc),
            "nchw" => Ok(Layout::Nchw),
            other => Err(format!("unknown layout '{other}' (expected nhwc or nchw)")),
        }
    }
}

impl fmt::Display for Scaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scaling::Symmetric => "symmetric",
            Scaling::Unit => "unit",
            Scaling::ImageNet => "imagenet",
        })
    }
}

impl FromStr for Scaling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "symmetric" => Ok(Scaling::Symmetric),
            "unit" => Ok(Scaling::Unit),
            "imagenet" => Ok(Scaling::ImageNet),
            other => Err(format!("unknown scaling '{other}' (expected symmetric, unit or imagenet)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_one() -> RgbImage {
        RgbImage::new(2, 1, vec![0, 255, 51, 102, 153, 204])
    }

    #[test]
    fn nhwc_symmetric_matches_keras_preprocess_input() {
        let spec = InputSpec { width: 2, height: 1, ..InputSpec::default() };
        let mut out = vec![0.0; 6];
        spec.write_tensor(&two_by_one(), &mut out);
        let expected: Vec<f32> = [0u8, 255, 51, 102, 153, 204].iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
        assert_eq!(out, expected);
        assert_eq!((out[0], out[1]), (-1.0, 1.0));
    }

    #[test]
    fn nchw_puts_each_channel_in_its_own_plane() {
        let spec = InputSpec { width: 2, height: 1, layout: Layout::Nchw, scaling: Scaling::Unit };
        let mut out = vec![0.0; 6];
        spec.write_tensor(&two_by_one(), &mut out);
        let expected: Vec<f32> = [0u8, 102, 255, 153, 51, 204].iter().map(|&v| f32::from(v) / 255.0).collect();
        assert_eq!(out, expected);
        assert_eq!(spec.shape(5), [5, 3, 1, 2]);
    }

    #[test]
    fn imagenet_scaling_uses_mean_and_std_per_channel() {
        let spec = InputSpec { width: 2, height: 1, layout: Layout::Nhwc, scaling: Scaling::ImageNet };
        let mut out = vec![0.0; 6];
        spec.write_tensor(&two_by_one(), &mut out);
        assert!((out[1] - (1.0 - 0.456) / 0.224).abs() < 1e-6);
    }

    #[test]
    fn layout_and_scaling_parse_from_flags() {
        assert_eq!("NCHW".parse::<Layout>(), Ok(Layout::Nchw));
        assert_eq!("imagenet".parse::<Scaling>(), Ok(Scaling::ImageNet));
        assert!("rgb".parse::<Layout>().unwrap_err().contains("nhwc or nchw"));
    }
}
