//! JPEG through libjpeg, driven through its C API rather than the `mozjpeg` crate's wrapper:
//! the memory manager has to be reached between creating the decompressor and reading the
//! header, which the wrapper does in one call.
//!
//! Colour follows Pillow: one component is grey and three are RGB (libjpeg converts both to
//! RGB exactly as Pillow's `convert("RGB")` would), and four are CMYK or YCCK, which libjpeg
//! hands over as CMYK and [`cmyk_row_to_rgb`] converts the way Pillow does.

use std::ffi::{c_int, c_long, c_ulong, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as ffi;
use mozjpeg_sys::J_COLOR_SPACE::{JCS_CMYK, JCS_RGB, JCS_YCCK};

use super::{DecodeError, DecodeLimits, RgbImage, check_size, panic_message, zeroed_buffer};

/// How libjpeg gave up, carried through the unwind started in its callbacks.
enum JpegFailure {
    Fatal(String),
    Truncated,
    OutOfMemory,
}

pub(super) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    // libjpeg reports errors through callbacks that must not return; ours unwind, and the
    // unwind is caught here. `resume_unwind` skips the panic hook, so nothing is printed. Any
    // other panic under libjpeg's calls is a bug that this one file found: it fails the file.
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, limits))) {
        Ok(decoded) => decoded,
        Err(payload) => Err(match payload.downcast::<JpegFailure>() {
            Ok(failure) => match *failure {
                JpegFailure::Truncated => DecodeError::Truncated("JPEG"),
                JpegFailure::OutOfMemory => DecodeError::OutOfMemory { format: "JPEG", limit: limits.max_memory },
                JpegFailure::Fatal(message) => DecodeError::Corrupt { format: "JPEG", message },
            },
            Err(other) => DecodeError::DecoderPanic { format: "JPEG", message: panic_message(&*other) },
        }),
    }
}

fn decode_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let out_of_memory = || DecodeError::OutOfMemory { format: "JPEG", limit: limits.max_memory };
    let max_memory = usize::try_from(limits.max_memory).unwrap_or(usize::MAX);
    let mut decompressor = Decompressor::new(bytes, max_memory);
    let cinfo = &mut *decompressor.cinfo;
    // SAFETY: `cinfo` was created with a source; errors unwind out of the call.
    unsafe { ffi::jpeg_read_header(cinfo, 1) };

    let (width, height) = (cinfo.image_width as usize, cinfo.image_height as usize);
    check_size(width as u64, height as u64, limits)?;
    let four_channels = matches!(cinfo.jpeg_color_space, JCS_CMYK | JCS_YCCK);
    let channels = if four_channels { 4 } else { 3 };
    cinfo.out_color_space = if four_channels { JCS_CMYK } else { JCS_RGB };

    // What we hold ourselves (the RGB image, and one CMYK row to convert from) comes off the
    // budget first; libjpeg gets the rest, which also bounds its coefficient buffers.
    let rgb_len = width.checked_mul(height).and_then(|n| n.checked_mul(3)).ok_or_else(out_of_memory)?;
    let row_len = width * channels;
    let own = rgb_len + if four_channels { row_len } else { 0 };
    let libjpeg_budget = max_memory.checked_sub(own).ok_or_else(out_of_memory)?;
    decompressor.memory.limit_to(libjpeg_budget);
    let cinfo = &mut *decompressor.cinfo;
    // SAFETY: `mem` is libjpeg's memory manager, set up by jpeg_create_decompress. Zero means
    // "no limit" to libjpeg, hence at least one byte.
    unsafe { (*cinfo.common.mem).max_memory_to_use = c_long::try_from(libjpeg_budget).unwrap_or(c_long::MAX).max(1) };

    // SAFETY: as for jpeg_read_header.
    unsafe { ffi::jpeg_start_decompress(cinfo) };
    let shape = (cinfo.output_width as usize, cinfo.output_height as usize, cinfo.output_components as usize);
    if shape != (width, height, channels) {
        return Err(DecodeError::Corrupt {
            format: "JPEG",
            message: format!(
                "libjpeg produces {}x{}x{} samples for a {width}x{height} image",
                shape.0, shape.1, shape.2
            ),
        });
    }

    let mut pixels = zeroed_buffer(rgb_len, "JPEG", limits)?;
    if four_channels {
        let mut cmyk = zeroed_buffer(row_len, "JPEG", limits)?;
        for rgb in pixels.chunks_exact_mut(width * 3) {
            read_scanline(cinfo, &mut cmyk)?;
            cmyk_row_to_rgb(&cmyk, rgb);
        }
    } else {
        for rgb in pixels.chunks_exact_mut(width * 3) {
            read_scanline(cinfo, rgb)?;
        }
    }
    // SAFETY: every scanline was read. A file whose end is missing fails here (see on_message).
    unsafe { ffi::jpeg_finish_decompress(cinfo) };
    Ok(RgbImage::new(width as u32, height as u32, pixels))
}

/// Reads the next scanline into `row`, which holds `output_width * output_components` bytes.
fn read_scanline(cinfo: &mut ffi::jpeg_decompress_struct, row: &mut [u8]) -> Result<(), DecodeError> {
    let mut row_pointer = row.as_mut_ptr();
    // SAFETY: `row` is one full scanline (checked against the output shape by the caller) and
    // libjpeg writes one line at most.
    let lines = unsafe { ffi::jpeg_read_scanlines(cinfo, &mut row_pointer, 1) };
    if lines == 1 { Ok(()) } else { Err(DecodeError::Truncated("JPEG")) }
}

/// Pillow's reading of a four-channel JPEG. Pillow takes libjpeg's CMYK samples as inverted, the
/// way Adobe's applications write them (rawmode `CMYK;I`, assumed for every such file, with or
/// without an Adobe marker), so it stores `255 - x` of each; `convert("RGB")` then computes
/// `255 - k - c * (255 - k) / 255` per channel with its own rounded division by 255. Both steps
/// folded into one, on libjpeg's samples:
fn cmyk_row_to_rgb(cmyk: &[u8], rgb: &mut [u8]) {
    for (pixel, out) in cmyk.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
        // Pillow's `255 - k` of its inverted k is libjpeg's sample itself.
        let not_k = u32::from(pixel[3]);
        for (value, &sample) in out.iter_mut().zip(&pixel[..3]) {
            let ink = 255 - u32::from(sample);
            *value = not_k.saturating_sub(mul_div_255(ink, not_k)) as u8;
        }
    }
}

/// `a * b / 255`, rounded as Pillow's `MULDIV255` rounds it.
fn mul_div_255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// One libjpeg decompressor over an in-memory file; destroyed on drop, which also runs when an
/// error unwinds past it, so no failure leaks libjpeg's memory.
struct Decompressor {
    // Boxed, because libjpeg keeps pointers to the error manager and to the memory account
    // (through `client_data`): neither may move while the decompressor lives.
    cinfo: Box<ffi::jpeg_decompress_struct>,
    error_manager: Box<ffi::jpeg_error_mgr>,
    memory: Box<MemoryAccount>,
}

impl Decompressor {
    fn new(bytes: &[u8], budget: usize) -> Self {
        let mut decompressor = Self {
            // SAFETY: all-zero is the state jpeg_CreateDecompress expects to start from (null
            // pointers, zero counts, the first variant of each enum), and the state that
            // jpeg_destroy_decompress treats as "nothing to free".
            cinfo: Box::new(unsafe { std::mem::zeroed() }),
            error_manager: Box::new(error_manager()),
            memory: Box::new(MemoryAccount::new(budget)),
        };
        decompressor.cinfo.common.err = &mut *decompressor.error_manager;
        // SAFETY: `cinfo` is zeroed with an error manager, as required; the source buffer
        // outlives the decompressor, which lives inside `decode_unguarded`'s borrow of it.
        unsafe {
            ffi::jpeg_create_decompress(&mut *decompressor.cinfo);
            decompressor.memory.install(&mut decompressor.cinfo.common);
            ffi::jpeg_mem_src(&mut decompressor.cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
        }
        decompressor
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: frees what libjpeg allocated; safe on a zeroed or half-used decompressor.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
        #[cfg(test)]
        super::fuzz::record_libjpeg_bytes(self.memory.used);
    }
}

type AllocFn = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, c_int, usize) -> *mut c_void;
type SarrayFn = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, c_int, u32, u32) -> ffi::JSAMPARRAY_MUT;
type BarrayFn = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, c_int, u32, u32) -> ffi::JBLOCKARRAY;
type VirtSarrayFn = unsafe extern "C-unwind" fn(
    &mut ffi::jpeg_common_struct,
    c_int,
    ffi::boolean,
    u32,
    u32,
    u32,
) -> *mut ffi::jvirt_sarray_control;
type VirtBarrayFn = unsafe extern "C-unwind" fn(
    &mut ffi::jpeg_common_struct,
    c_int,
    ffi::boolean,
    u32,
    u32,
    u32,
) -> *mut ffi::jvirt_barray_control;

/// libjpeg's own allocators, wrapped so that every byte libjpeg asks for is counted against
/// the budget, and the request that would go past it fails the decode instead of being served.
///
/// libjpeg's `max_memory_to_use` (also set) only governs the whole-image buffers of progressive
/// and multi-scan files; the row buffers, tables and marker data it sizes from header fields
/// are counted here. Sample and block arrays are counted with their row pointers and row
/// alignment, whole-image ("virtual") arrays in full when requested. Nothing is given back
/// before the decode ends, so `used` is the decode's peak.
struct MemoryAccount {
    used: usize,
    budget: usize,
    originals: Option<Originals>,
}

#[derive(Clone, Copy)]
struct Originals {
    alloc_small: AllocFn,
    alloc_large: AllocFn,
    alloc_sarray: SarrayFn,
    alloc_barray: BarrayFn,
    request_virt_sarray: VirtSarrayFn,
    request_virt_barray: VirtBarrayFn,
}

/// libjpeg pads each sample row to a multiple of twice its SIMD alignment (2 x 32 bytes).
const ROW_ALIGNMENT: usize = 64;
const BLOCK_BYTES: usize = std::mem::size_of::<ffi::JBLOCK>();
const POINTER_BYTES: usize = std::mem::size_of::<*mut u8>();

impl MemoryAccount {
    fn new(budget: usize) -> Self {
        Self { used: 0, budget, originals: None }
    }

    /// Lowers the budget; fails if what libjpeg holds is already above it.
    fn limit_to(&mut self, budget: usize) {
        self.budget = budget;
        self.charge(0);
    }

    /// Puts the counting allocators in place of libjpeg's, which they call.
    ///
    /// # Safety
    /// `common` belongs to a created decompressor that does not outlive `self`.
    unsafe fn install(&mut self, common: &mut ffi::jpeg_common_struct) {
        // SAFETY: jpeg_create_decompress set `mem` to its memory manager.
        let manager = unsafe { &mut *common.mem };
        let (Some(alloc_small), Some(alloc_large), Some(alloc_sarray), Some(alloc_barray), Some(sarray), Some(barray)) = (
            manager.alloc_small,
            manager.alloc_large,
            manager.alloc_sarray,
            manager.alloc_barray,
            manager.request_virt_sarray,
            manager.request_virt_barray,
        ) else {
            // A memory manager without its methods cannot allocate at all; libjpeg fails on
            // its own the first time it tries.
            return;
        };
        self.originals = Some(Originals {
            alloc_small,
            alloc_large,
            alloc_sarray,
            alloc_barray,
            request_virt_sarray: sarray,
            request_virt_barray: barray,
        });
        manager.alloc_small = Some(counted_alloc_small);
        manager.alloc_large = Some(counted_alloc_large);
        manager.alloc_sarray = Some(counted_alloc_sarray);
        manager.alloc_barray = Some(counted_alloc_barray);
        manager.request_virt_sarray = Some(counted_request_virt_sarray);
        manager.request_virt_barray = Some(counted_request_virt_barray);
        common.client_data = (self as *mut Self).cast();
    }

    /// Counts `bytes` and returns libjpeg's allocators, or unwinds when the budget is spent.
    fn charge(&mut self, bytes: usize) -> Option<Originals> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            resume_unwind(Box::new(JpegFailure::OutOfMemory));
        }
        self.originals
    }
}

/// The account of the decompressor `cinfo` belongs to, charged `bytes`.
///
/// # Safety
/// `cinfo` is a decompressor whose account was installed by [`MemoryAccount::install`].
unsafe fn charge(cinfo: &mut ffi::jpeg_common_struct, bytes: usize) -> Originals {
    // SAFETY: `client_data` points at the boxed account, which outlives the decompressor.
    let account = unsafe { &mut *cinfo.client_data.cast::<MemoryAccount>() };
    // The wrappers are only installed together with the originals.
    account.charge(bytes).unwrap_or_else(|| resume_unwind(Box::new(JpegFailure::OutOfMemory)))
}

fn array_bytes(per_row: u32, element: usize, rows: u32) -> usize {
    let row = (per_row as usize).saturating_mul(element).saturating_add(ROW_ALIGNMENT);
    row.saturating_add(POINTER_BYTES).saturating_mul(rows as usize)
}

unsafe extern "C-unwind" fn counted_alloc_small(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    size: usize,
) -> *mut c_void {
    // SAFETY: installed by MemoryAccount::install, called by libjpeg with its arguments.
    unsafe { (charge(cinfo, size).alloc_small)(cinfo, pool, size) }
}

unsafe extern "C-unwind" fn counted_alloc_large(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    size: usize,
) -> *mut c_void {
    // SAFETY: as for counted_alloc_small.
    unsafe { (charge(cinfo, size).alloc_large)(cinfo, pool, size) }
}

unsafe extern "C-unwind" fn counted_alloc_sarray(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    samples_per_row: u32,
    rows: u32,
) -> ffi::JSAMPARRAY_MUT {
    let bytes = array_bytes(samples_per_row, 1, rows);
    // SAFETY: as for counted_alloc_small.
    unsafe { (charge(cinfo, bytes).alloc_sarray)(cinfo, pool, samples_per_row, rows) }
}

unsafe extern "C-unwind" fn counted_alloc_barray(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    blocks_per_row: u32,
    rows: u32,
) -> ffi::JBLOCKARRAY {
    let bytes = array_bytes(blocks_per_row, BLOCK_BYTES, rows);
    // SAFETY: as for counted_alloc_small.
    unsafe { (charge(cinfo, bytes).alloc_barray)(cinfo, pool, blocks_per_row, rows) }
}

unsafe extern "C-unwind" fn counted_request_virt_sarray(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    pre_zero: ffi::boolean,
    samples_per_row: u32,
    rows: u32,
    max_access: u32,
) -> *mut ffi::jvirt_sarray_control {
    let bytes = array_bytes(samples_per_row, 1, rows);
    // SAFETY: as for counted_alloc_small.
    unsafe { (charge(cinfo, bytes).request_virt_sarray)(cinfo, pool, pre_zero, samples_per_row, rows, max_access) }
}

unsafe extern "C-unwind" fn counted_request_virt_barray(
    cinfo: &mut ffi::jpeg_common_struct,
    pool: c_int,
    pre_zero: ffi::boolean,
    blocks_per_row: u32,
    rows: u32,
    max_access: u32,
) -> *mut ffi::jvirt_barray_control {
    let bytes = array_bytes(blocks_per_row, BLOCK_BYTES, rows);
    // SAFETY: as for counted_alloc_small.
    unsafe { (charge(cinfo, bytes).request_virt_barray)(cinfo, pool, pre_zero, blocks_per_row, rows, max_access) }
}

/// libjpeg's standard error manager with two changes: fatal errors unwind instead of calling
/// `exit()`, and the "premature end of data" warning is fatal. libjpeg would otherwise pad a
/// truncated file with grey and call it a success, and the features of half a photo would
/// silently enter the data set (Pillow refuses such files too).
fn error_manager() -> ffi::jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is a plain C struct of integers and nullable function pointers, for
    // which all-zero is valid; jpeg_std_error then fills in every field.
    let mut manager: ffi::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { ffi::jpeg_std_error(&mut manager) };
    manager.error_exit = Some(on_fatal_error);
    manager.emit_message = Some(on_message);
    manager
}

unsafe extern "C-unwind" fn on_fatal_error(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with the error manager installed above.
    let code = unsafe { (*cinfo.err).msg_code };
    if code == ffi::JERR_OUT_OF_MEMORY as c_int || code == ffi::JERR_NO_BACKING_STORE as c_int {
        // Out of memory, or a whole-image buffer above `max_memory_to_use` (libjpeg would
        // spill it to a temporary file, which this build cannot).
        resume_unwind(Box::new(JpegFailure::OutOfMemory));
    }
    let message = format_message(cinfo);
    resume_unwind(Box::new(JpegFailure::Fatal(message)));
}

unsafe extern "C-unwind" fn on_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // SAFETY: libjpeg calls this with the error manager installed above.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == ffi::JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(JpegFailure::Truncated));
    }
}

fn format_message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    // SAFETY: `err` points at our error manager; libjpeg's format_message writes at most
    // JMSG_LENGTH_MAX (80) bytes, NUL-terminated, into the buffer it is given. The binding
    // declares the buffer `&[u8; 80]` although C writes to it, hence the cast to a mutable one.
    unsafe {
        let err = &*cinfo.err;
        let Some(format) = err.format_message else {
            return format!("libjpeg error {}", err.msg_code);
        };
        let mut buffer = [0u8; 80];
        type Writer = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, &mut [u8; 80]);
        let format: Writer = std::mem::transmute(format);
        format(cinfo, &mut buffer);
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{encode_jpeg_from, fixture};
    use super::super::{DecodeError, DecodeLimits, decode_rgb};
    use super::*;

    /// Pillow 13's `Image.fromarray(cmyk, "CMYK").convert("RGB")` on Pillow's inverted samples
    /// (255 minus libjpeg's), for a few (libjpeg c, libjpeg k) pairs.
    #[test]
    fn cmyk_conversion_matches_pillow() {
        // (c, k) as libjpeg returns them -> Pillow's red.
        for (c, k, red) in [(255, 255, 255), (0, 255, 0), (0, 0, 0), (255, 0, 0), (128, 200, 100), (17, 91, 6)] {
            let mut rgb = [0u8; 3];
            cmyk_row_to_rgb(&[c, c, c, k], &mut rgb);
            assert_eq!(rgb, [red; 3], "c {c} k {k}");
        }
    }

    /// Smooth ramps, which JPEG coding keeps within a few levels.
    fn four_channel_pixels(width: usize, height: usize) -> Vec<u8> {
        (0..width * height)
            .flat_map(|i| [(i % width * 8) as u8, (i / width * 16) as u8, 200, (255 - i % width * 2) as u8])
            .collect()
    }

    #[test]
    fn cmyk_and_ycck_jpegs_decode_to_the_same_rgb() {
        let (width, height) = (32, 16);
        let cmyk = four_channel_pixels(width, height);
        let plain = encode_jpeg_from(mozjpeg::ColorSpace::JCS_CMYK, width, height, &cmyk, |_| {});
        let ycck = encode_jpeg_from(mozjpeg::ColorSpace::JCS_CMYK, width, height, &cmyk, |c| {
            c.set_color_space(mozjpeg::ColorSpace::JCS_YCCK);
        });
        let limits = DecodeLimits::default();
        let plain = decode_rgb(&plain, &limits).expect("CMYK");
        let ycck = decode_rgb(&ycck, &limits).expect("YCCK");
        assert_eq!((plain.width, plain.height, ycck.width, ycck.height), (32, 16, 32, 16));
        let mut expected = vec![0u8; width * height * 3];
        for (source, out) in cmyk.chunks_exact(4 * width).zip(expected.chunks_exact_mut(3 * width)) {
            cmyk_row_to_rgb(source, out);
        }
        // Lossy coding moves samples a little; YCCK's colour transform a little more.
        for (name, image, tolerance) in [("CMYK", &plain, 8), ("YCCK", &ycck, 12)] {
            let worst = image.pixels.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max();
            assert!(worst.is_some_and(|w| w <= tolerance), "{name}: largest error {worst:?}");
        }
    }

    #[test]
    fn grey_jpeg_decodes_to_equal_channels() {
        let grey: Vec<u8> = (0..24 * 8).map(|i| (i % 24 * 10 + i / 24 * 2) as u8).collect();
        let jpeg = encode_jpeg_from(mozjpeg::ColorSpace::JCS_GRAYSCALE, 24, 8, &grey, |_| {});
        let image = decode_rgb(&jpeg, &DecodeLimits::default()).expect("decode");
        assert_eq!((image.width, image.height), (24, 8));
        assert!(image.pixels.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let worst = image.pixels.chunks_exact(3).zip(&grey).map(|(p, g)| p[0].abs_diff(*g)).max();
        assert!(worst.is_some_and(|w| w <= 6), "largest error {worst:?}");
    }

    /// A progressive JPEG keeps every coefficient of the image in memory (2 bytes per sample):
    /// libjpeg's share of the budget is what refuses it, before the pixels are decoded.
    #[test]
    fn progressive_jpeg_is_refused_when_its_coefficients_exceed_the_memory_limit() {
        let (width, height) = (1024, 1024);
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i / 3 % 256) as u8).collect();
        let jpeg = encode_jpeg_from(mozjpeg::ColorSpace::JCS_RGB, width, height, &pixels, |c| {
            c.set_progressive_mode();
        });
        // 3 MiB of RGB and about 3 MiB of coefficients (4:2:0): 5 MiB is not enough, 16 MiB is.
        let tight = DecodeLimits { max_memory: 5 << 20, ..DecodeLimits::default() };
        assert_eq!(decode_rgb(&jpeg, &tight), Err(DecodeError::OutOfMemory { format: "JPEG", limit: 5 << 20 }));
        let roomy = DecodeLimits { max_memory: 16 << 20, ..DecodeLimits::default() };
        assert_eq!(decode_rgb(&jpeg, &roomy).map(|i| (i.width, i.height)), Ok((1024, 1024)));
    }

    /// The pixel-exact comparison with Pillow is the fidelity suite's; here, the committed
    /// four-channel files decode at all, to their size.
    #[test]
    fn committed_cmyk_and_ycck_fixtures_decode() {
        for name in ["cmyk_adobe.jpg", "cmyk_progressive.jpg", "ycck_444.jpg", "ycck_420.jpg"] {
            let image = decode_rgb(&fixture(name), &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((image.width, image.height), (100, 100), "{name}");
        }
    }
}
