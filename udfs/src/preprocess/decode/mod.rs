//! Decoding JPEG and PNG bytes to 8-bit RGB, pixel for pixel the way the reference pipeline's
//! `Image.open(f).convert("RGB")` (Pillow) does.
//!
//! JPEG goes through libjpeg (the mozjpeg build of libjpeg-turbo, compiled from source by the
//! `mozjpeg-sys` crate): it is the decoder Pillow uses, and a different decoder (zune-jpeg in
//! the `image` crate) moves pixels by up to 20 levels, enough to pull the feature cosine
//! against the Pillow-based reference down to 0.998. PNG goes through the `png` crate, whose
//! samples are then narrowed to 8 bits with Pillow's rules, not the usual rounding ones.
//!
//! Decoding never panics, never aborts and never allocates without bound: every failure is a
//! [`DecodeError`] that says why, so the caller can report the file and carry on with the
//! others, and every decoder call runs under `catch_unwind`, so that a bug a crafted file finds
//! in a decoder costs that file only.

mod jpeg;
mod png;

#[cfg(test)]
mod fuzz;

use std::any::Any;

/// A decoded image: `width * height` pixels, 3 bytes each, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Self {
        assert_eq!(pixels.len(), width as usize * height as usize * 3, "RGB buffer size");
        Self { width, height, pixels }
    }
}

/// Guards against decompression bombs: a few kilobytes of JPEG or PNG can declare an image of
/// gigapixels, and a progressive JPEG makes libjpeg hold every DCT coefficient of the image at
/// once. The header is checked before any pixel buffer is allocated, and the decoders' own
/// allocations are counted against [`Self::max_memory`] as they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Most bytes the decoding of one image may take: the decoded RGB pixels plus the
    /// decoder's working memory (libjpeg's coefficient buffers and rows, the PNG decoder's
    /// frame, rows and inflate state).
    pub max_memory: u64,
}

impl DecodeLimits {
    /// 64 megapixels: above any phone camera, far below what would exhaust an executor.
    pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;
    /// 1 GiB: room for the costliest image under the default pixel limit, a progressive
    /// four-channel JPEG without subsampling (3 bytes of RGB and 8 bytes of coefficients per
    /// pixel, 704 MiB at 64 megapixels), with a margin for libjpeg's rows and tables.
    pub const DEFAULT_MAX_MEMORY: u64 = 1024 * 1024 * 1024;
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: Self::DEFAULT_MAX_PIXELS, max_memory: Self::DEFAULT_MAX_MEMORY }
    }
}

/// Why an image could not be decoded. The `Display` text is what users see in the failed-file
/// report, so it names the problem in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("not a JPEG or PNG image (file starts with {0})")]
    UnknownFormat(String),
    #[error("image of {width}x{height} pixels is above the limit of {limit} pixels")]
    TooLarge { width: u64, height: u64, limit: u64 },
    #[error("decoding this {format} needs more than the limit of {limit} bytes of memory")]
    OutOfMemory { format: &'static str, limit: u64 },
    #[error("truncated {0}: the data ends before the image does")]
    Truncated(&'static str),
    #[error("corrupt {format}: {message}")]
    Corrupt { format: &'static str, message: String },
    /// A decoder panicked on this file: a bug in the decoder, contained to the one image.
    #[error("the {format} decoder failed on this file: {message}")]
    DecoderPanic { format: &'static str, message: String },
}

/// Decodes JPEG or PNG `bytes` (recognised by their signature, not by the file name) to RGB.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::decode(bytes, limits)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png::decode(bytes, limits)
    } else {
        Err(DecodeError::UnknownFormat(describe_start(bytes)))
    }
}

fn describe_start(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text = head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if text {
        format!("{} \"{}\"", hex.join(" "), String::from_utf8_lossy(head).escape_default())
    } else {
        hex.join(" ")
    }
}

fn check_size(width: u64, height: u64, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt { format: "image", message: format!("declared size {width}x{height}") });
    }
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height, limit: limits.max_pixels });
    }
    Ok(())
}

/// A zeroed buffer of `len` bytes, or `OutOfMemory` when the allocator refuses it, rather than
/// the abort a plain `vec!` would end in.
fn zeroed_buffer(len: usize, format: &'static str, limits: &DecodeLimits) -> Result<Vec<u8>, DecodeError> {
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(len).map_err(|_| DecodeError::OutOfMemory { format, limit: limits.max_memory })?;
    buffer.resize(len, 0);
    Ok(buffer)
}

/// The text of a panic payload, for [`DecodeError::DecoderPanic`].
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A JPEG made by libjpeg itself, so the test does not depend on files on disk.
    pub(super) fn encode_jpeg(width: usize, height: usize) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 256) as u8).collect();
        encode_jpeg_from(mozjpeg::ColorSpace::JCS_RGB, width, height, &pixels, |_| {})
    }

    /// `pixels` in `color_space` as a JPEG, after `configure` had its say on the compressor.
    pub(super) fn encode_jpeg_from(
        color_space: mozjpeg::ColorSpace,
        width: usize,
        height: usize,
        pixels: &[u8],
        configure: impl FnOnce(&mut mozjpeg::Compress),
    ) -> Vec<u8> {
        let mut compress = mozjpeg::Compress::new(color_space);
        compress.set_size(width, height);
        compress.set_quality(95.0);
        configure(&mut compress);
        let mut started = compress.start_compress(Vec::new()).expect("start");
        started.write_scanlines(pixels).expect("write");
        started.finish().expect("finish")
    }

    /// An 8-bit RGBA PNG: red rises along x, green along y, alpha half.
    fn encode_png(width: u32, height: u32) -> Vec<u8> {
        let rows: Vec<Vec<u8>> =
            (0..height).map(|y| (0..width).flat_map(|x| [x as u8 * 10, y as u8 * 20, 7, 128]).collect()).collect();
        let rows: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        super::png::tests::encode(width, height, 8, 6, &rows, &[])
    }

    /// The decoder corpus committed under `tests/fixtures/decode`.
    pub(super) fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/decode").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn decodes_jpeg_to_rgb_of_its_size() {
        let image = decode_rgb(&encode_jpeg(16, 8), &DecodeLimits::default()).expect("decode");
        assert_eq!((image.width, image.height, image.pixels.len()), (16, 8, 16 * 8 * 3));
    }

    #[test]
    fn decodes_png_dropping_alpha() {
        let image = decode_rgb(&encode_png(5, 3), &DecodeLimits::default()).expect("decode");
        assert_eq!((image.width, image.height), (5, 3));
        assert_eq!(&image.pixels[..3], &[0, 0, 7]);
        let last = &image.pixels[image.pixels.len() - 3..];
        assert_eq!(last, &[40, 40, 7]);
    }

    #[test]
    fn empty_input_is_reported_as_empty() {
        assert_eq!(decode_rgb(&[], &DecodeLimits::default()), Err(DecodeError::Empty));
    }

    #[test]
    fn text_is_not_an_image_and_the_message_shows_its_start() {
        let err = decode_rgb(b"hello world", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFormat(_)));
        assert_eq!(err.to_string(), "not a JPEG or PNG image (file starts with 68 65 6c 6c 6f 20 77 6f \"hello wo\")");
    }

    #[test]
    fn truncated_jpeg_is_an_error_not_a_grey_image() {
        let jpeg = encode_jpeg(64, 64);
        for cut in [jpeg.len() / 2, jpeg.len() - 2] {
            let err = decode_rgb(&jpeg[..cut], &DecodeLimits::default()).unwrap_err();
            assert_eq!(err, DecodeError::Truncated("JPEG"), "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_jpeg_header_is_reported_with_libjpegs_reason() {
        let mut jpeg = encode_jpeg(16, 8);
        // The start-of-frame segment (FF C0 baseline, FF C2 progressive): length, then precision.
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2]).expect("SOF marker");
        jpeg[sof + 4] = 7;
        let err = decode_rgb(&jpeg, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "corrupt JPEG: Unsupported JPEG data precision 7");
    }

    #[test]
    fn signature_followed_by_garbage_is_truncated() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0x00];
        bytes.extend_from_slice(&[0x42; 100]);
        assert_eq!(decode_rgb(&bytes, &DecodeLimits::default()), Err(DecodeError::Truncated("JPEG")));
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let limits = DecodeLimits { max_pixels: 100, ..DecodeLimits::default() };
        let err = decode_rgb(&encode_jpeg(16, 8), &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { width: 16, height: 8, limit: 100 });
        let err = decode_rgb(&encode_png(20, 20), &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { width: 20, height: 20, limit: 100 });
    }

    #[test]
    fn truncated_png_is_an_error() {
        let png = encode_png(32, 32);
        let err = decode_rgb(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated("PNG") | DecodeError::Corrupt { format: "PNG", .. }), "{err:?}");
    }

    /// A phone-sized photo (24 megapixels) decodes under the default limits, and a memory limit
    /// below its pixels refuses it without decoding.
    #[test]
    fn large_valid_image_decodes_and_obeys_the_memory_limit() {
        let (width, height) = (6000, 4000);
        let pixels: Vec<u8> = (0..width * height)
            .flat_map(|i| [(i % width * 255 / width) as u8, (i / width * 255 / height) as u8, 90])
            .collect();
        let jpeg = encode_jpeg_from(mozjpeg::ColorSpace::JCS_RGB, width, height, &pixels, |c| c.set_fastest_defaults());
        let image = decode_rgb(&jpeg, &DecodeLimits::default()).expect("decode");
        assert_eq!((image.width, image.height), (6000, 4000));
        // Smooth gradients survive JPEG coding within a few levels.
        let worst = image.pixels.iter().zip(&pixels).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(worst.is_some_and(|w| w <= 12), "largest pixel error {worst:?}");

        let limits = DecodeLimits { max_memory: 64 * 1024 * 1024, ..DecodeLimits::default() };
        assert_eq!(decode_rgb(&jpeg, &limits), Err(DecodeError::OutOfMemory { format: "JPEG", limit: 64 << 20 }));
    }
}
