//! Decoding JPEG and PNG bytes to 8-bit RGB.
//!
//! JPEG goes through libjpeg (the mozjpeg build of libjpeg-turbo, compiled from source by the
//! `mozjpeg-sys` crate): it is the decoder Pillow uses, and a different decoder (zune-jpeg in
//! the `image` crate) moves pixels by up to 20 levels, enough to pull the feature cosine
//! against the Pillow-based reference down to 0.998. PNG goes through the `image` crate.
//!
//! Decoding never panics and never aborts: every failure is a [`DecodeError`] that says why, so
//! the caller can report the file and carry on with the others.

use std::ffi::c_int;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as jpeg;

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
/// gigapixels. The header is checked before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 64 megapixels: above any phone camera, far below what would exhaust an executor.
    fn default() -> Self {
        Self { max_pixels: 64 * 1024 * 1024 }
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
    #[error("truncated {0}: the data ends before the image does")]
    Truncated(&'static str),
    #[error("corrupt {format}: {message}")]
    Corrupt { format: &'static str, message: String },
}

/// Decodes JPEG or PNG `bytes` (recognised by their signature, not by the file name) to RGB.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes, limits)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, limits)
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

/// How libjpeg gave up, carried through the unwind started in its callbacks.
enum JpegFailure {
    Fatal(String),
    Truncated,
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    // libjpeg reports errors through callbacks that must not return; ours unwind, and the
    // unwind is caught here. `resume_unwind` skips the panic hook, so nothing is printed.
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<RgbImage, DecodeError> {
        let io_error = |e: std::io::Error| DecodeError::Corrupt { format: "JPEG", message: e.to_string() };
        let header = mozjpeg::Decompress::with_err(error_manager()).from_mem(bytes).map_err(io_error)?;
        let (width, height) = header.size();
        check_size(width as u64, height as u64, limits)?;
        let mut started = header.rgb().map_err(io_error)?;
        let pixels: Vec<u8> = started.read_scanlines().map_err(io_error)?;
        started.finish().map_err(io_error)?;
        if pixels.len() != width * height * 3 {
            return Err(DecodeError::Truncated("JPEG"));
        }
        Ok(RgbImage::new(width as u32, height as u32, pixels))
    }));
    match result {
        Ok(decoded) => decoded,
        Err(payload) => match payload.downcast::<JpegFailure>() {
            Ok(failure) => Err(match *failure {
                JpegFailure::Truncated => DecodeError::Truncated("JPEG"),
                JpegFailure::Fatal(message) => DecodeError::Corrupt { format: "JPEG", message },
            }),
            // A panic that is not ours is a bug: let it go on.
            Err(other) => resume_unwind(other),
        },
    }
}

/// libjpeg's standard error manager with two changes: fatal errors unwind instead of calling
/// `exit()`, and the "premature end of data" warning is fatal. libjpeg would otherwise pad a
/// truncated file with grey and call it a success, and the features of half a photo would
/// silently enter the data set (Pillow refuses such files too).
fn error_manager() -> jpeg::jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is a plain C struct of integers and nullable function pointers, for
    // which all-zero is valid; jpeg_std_error then fills in every field.
    let mut manager: jpeg::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg::jpeg_std_error(&mut manager) };
    manager.error_exit = Some(on_fatal_error);
    manager.emit_message = Some(on_message);
    manager
}

unsafe extern "C-unwind" fn on_fatal_error(cinfo: &mut jpeg::jpeg_common_struct) {
    let message = format_message(cinfo);
    resume_unwind(Box::new(JpegFailure::Fatal(message)));
}

unsafe extern "C-unwind" fn on_message(cinfo: &mut jpeg::jpeg_common_struct, level: c_int) {
    // SAFETY: libjpeg calls this with the error manager installed above.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == jpeg::JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(JpegFailure::Truncated));
    }
}

fn format_message(cinfo: &mut jpeg::jpeg_common_struct) -> String {
    // SAFETY: `err` points at our error manager; libjpeg's format_message writes at most
    // JMSG_LENGTH_MAX (80) bytes, NUL-terminated, into the buffer it is given. The binding
    // declares the buffer `&[u8; 80]` although C writes to it, hence the cast to a mutable one.
    unsafe {
        let err = &*cinfo.err;
        let Some(format) = err.format_message else {
            return format!("libjpeg error {}", err.msg_code);
        };
        let mut buffer = [0u8; 80];
        type Writer = unsafe extern "C-unwind" fn(&mut jpeg::jpeg_common_struct, &mut [u8; 80]);
        let format: Writer = std::mem::transmute(format);
        format(cinfo, &mut buffer);
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    }
}

fn decode_png(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let reader = || {
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
        let mut image_limits = image::Limits::default();
        // Room for the decoded image in its widest pixel format (16-bit RGBA) and nothing more.
        image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
        reader.limits(image_limits);
        reader
    };
    let error = |e: image::ImageError| match e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated("PNG")
        }
        other => DecodeError::Corrupt { format: "PNG", message: other.to_string() },
    };
    let (width, height) = reader().into_dimensions().map_err(error)?;
    check_size(width as u64, height as u64, limits)?;
    let decoded = reader().decode().map_err(error)?;
    // Like Pillow's convert("RGB"): alpha is dropped, not composited.
    let rgb = decoded.into_rgb8();
    Ok(RgbImage::new(rgb.width(), rgb.height(), rgb.into_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16x8 JPEG made by libjpeg itself, so the test does not depend on files on disk.
    fn encode_jpeg(width: usize, height: usize) -> Vec<u8> {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_size(width, height);
        compress.set_quality(95.0);
        let mut started = compress.start_compress(Vec::new()).expect("start");
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 256) as u8).collect();
        started.write_scanlines(&pixels).expect("write");
        started.finish().expect("finish")
    }

    fn encode_png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8 * 10, y as u8 * 20, 7, 128]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).expect("png");
        out.into_inner()
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
        let limits = DecodeLimits { max_pixels: 100 };
        let err = decode_rgb(&encode_jpeg(16, 8), &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { width: 16, height: 8, limit: 100 });
        let err = decode_rgb(&encode_png(20, 20), &limits).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn truncated_png_is_an_error() {
        let png = encode_png(32, 32);
        let err = decode_rgb(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated("PNG") | DecodeError::Corrupt { format: "PNG", .. }), "{err:?}");
    }
}
