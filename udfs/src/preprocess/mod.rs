//! Turning image file bytes into model input: decode, resize, scale.
//!
//! Every step here is a pure function of the bytes and the [`InputSpec`], so the same image
//! gives the same tensor on the client, on any executor and in the tests.

mod decode;
mod resize;
mod tensor;

pub use decode::{DecodeError, DecodeLimits, RgbImage, decode_rgb};
pub use resize::resize_bicubic;
pub use tensor::{InputSpec, Layout, Scaling};

/// Decodes `bytes`, resizes to the model's input size and writes the scaled pixels of one image
/// into `out` (exactly [`InputSpec::values_per_image`] floats) in the model's layout.
pub fn preprocess_into(
    bytes: &[u8],
    limits: &DecodeLimits,
    spec: &InputSpec,
    out: &mut [f32],
) -> Result<(), DecodeError> {
    let image = decode_rgb(bytes, limits)?;
    let resized = resize_bicubic(&image, spec.width, spec.height);
    spec.write_tensor(&resized, out);
    Ok(())
}
