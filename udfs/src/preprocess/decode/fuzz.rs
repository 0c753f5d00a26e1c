//! A seeded mutation fuzzer for [`decode_rgb`], inside the unit tests so it costs no extra
//! test binary: valid JPEGs and PNGs (the committed decoder corpus, images made here, sample
//! photos when the shared folder is there) are bit-flipped, cut, spliced and given absurd
//! header fields, then decoded under small limits. A run fails on any panic that escapes the
//! decoder, any panic the decoder contains (a decoder bug a file can trigger), and any decode
//! whose memory goes past the limit it was given.
//!
//! Memory is measured two ways: the Rust heap, per thread, through the counting global
//! allocator below (the decoded pixels, the PNG decoder); and what libjpeg takes from its
//! memory manager, which the JPEG decoder counts anyway (libjpeg allocates with C's `malloc`,
//! which a Rust allocator does not see) and reports here.
//!
//! A short deterministic run is part of every `cargo test`; a long one is
//! `FRUITS_FUZZ_SECONDS=600 cargo test --release --workspace --lib fuzz -- --ignored --nocapture`
//! (`FRUITS_FUZZ_SEED` repeats a run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::png::tests::encode as encode_png;
use super::tests::{encode_jpeg, encode_jpeg_from, fixture};
use super::{DecodeError, DecodeLimits, decode_rgb};

/// The system allocator, counting what each thread holds and the most it held since
/// [`start_measuring`]. Frees on another thread than the allocation's make counts low there
/// and high here; the decoders do not hand memory between threads.
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LIBJPEG: Cell<usize> = const { Cell::new(0) };
}

fn grow(bytes: usize) {
    // `try_with`: these cells have no destructor, but a thread's last frees come late.
    let _ = HELD.try_with(|held| {
        let now = held.get().saturating_add(bytes);
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrink(bytes: usize) {
    let _ = HELD.try_with(|held| held.set(held.get().saturating_sub(bytes)));
}

// SAFETY: every method forwards to `System` unchanged; the counting touches thread-local
// integers only and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grow(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grow(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        moved
    }
}

/// Called by the JPEG decoder when a decompressor ends: the bytes libjpeg took for it.
pub(super) fn record_libjpeg_bytes(bytes: usize) {
    let _ = LIBJPEG.try_with(|libjpeg| libjpeg.set(libjpeg.get().max(bytes)));
}

/// Starts measuring one decode on this thread; returns the bytes held before it.
fn start_measuring() -> usize {
    let held = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(held));
    LIBJPEG.with(|libjpeg| libjpeg.set(0));
    held
}

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that tend to sit on boundaries of length and size checks.
const INTERESTING_U16: [u16; 8] = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF];
const INTERESTING_U32: [u32; 8] = [0, 1, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 46341];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if input.is_empty() {
            input.push(rng.next() as u8);
        }
        let at = rng.below(input.len());
        match rng.below(9) {
            0 => input[at] ^= 1 << rng.below(8),
            1 => input[at] = rng.next() as u8,
            2 => input[at] = [0x00, 0xFF, 0x7F, 0x80, 0xD8, 0xD9, 0xDA][rng.below(7)],
            3 => {
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(input.len());
                input.drain(at..end);
            }
            5 => input.truncate(at.max(1)),
            6 => {
                // Copy a stretch of the file elsewhere: duplicated markers, chunks, scans.
                let len = (1 + rng.below(256)).min(input.len() - at);
                let stretch = input[at..at + len].to_vec();
                let to = rng.below(input.len());
                input.splice(to..to, stretch);
            }
            _ => corrupt_header(rng, input),
        }
    }
}

/// Puts a boundary or random value into a size field: a JPEG frame's height, width or
/// component count, a PNG's width, height, depth or colour type.
fn corrupt_header(rng: &mut Rng, input: &mut [u8]) {
    if input.starts_with(b"\x89PNG") && input.len() >= 29 {
        match rng.below(3) {
            0 => {
                let field = 16 + 4 * rng.below(2);
                let value = if rng.chance(2) { INTERESTING_U32[rng.below(8)] } else { rng.next() as u32 };
                input[field..field + 4].copy_from_slice(&value.to_be_bytes());
            }
            1 => input[24] = [1, 2, 4, 8, 16, 0, 3, 32][rng.below(8)],
            _ => input[25] = [0, 2, 3, 4, 6, 1, 5, 7][rng.below(8)],
        }
        return;
    }
    let frame = input.windows(2).position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2));
    if let Some(sof) = frame.filter(|&sof| sof + 10 <= input.len()) {
        let value = if rng.chance(2) { INTERESTING_U16[rng.below(8)] } else { rng.next() as u16 };
        match rng.below(4) {
            0 => input[sof + 5..sof + 7].copy_from_slice(&value.to_be_bytes()),
            1 => input[sof + 7..sof + 9].copy_from_slice(&value.to_be_bytes()),
            2 => input[sof + 9] = [0, 1, 2, 3, 4, 5, 255][rng.below(7)],
            _ => {
                // A component's sampling factors.
                if sof + 12 <= input.len() {
                    input[sof + 11] = rng.next() as u8;
                }
            }
        }
    }
}

/// Rewrites every PNG chunk's CRC, so that mutations get past the checksum and into the
/// decoder's parsing and inflating.
fn fix_png_crcs(input: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= input.len() {
        let len = u32::from_be_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]]) as usize;
        let Some(end) = at.checked_add(8).and_then(|e| e.checked_add(len)).filter(|&e| e + 4 <= input.len()) else {
            return;
        };
        let crc = crc32(&input[at + 4..end]);
        input[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The seeds: the committed corpus, JPEGs made here in every mode the encoder has (baseline,
/// progressive, no subsampling, grey, CMYK, YCCK), PNGs of every colour type, and up to a
/// dozen sample photos when the shared folder is beside the checkout.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = [
        "cmyk_adobe.jpg",
        "cmyk_progressive.jpg",
        "ycck_444.jpg",
        "ycck_420.jpg",
        "grey.jpg",
        "rgb16.png",
        "grey16.png",
        "palette.png",
        "palette4_trns.png",
        "grey_alpha.png",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), fixture(name)))
    .collect();

    let (width, height) = (40, 24);
    let rgb: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 256) as u8).collect();
    let cmyk: Vec<u8> = (0..width * height * 4).map(|i| (i * 13 % 256) as u8).collect();
    let grey: Vec<u8> = (0..width * height).map(|i| (i * 3 % 256) as u8).collect();
    use mozjpeg::ColorSpace::{JCS_CMYK, JCS_GRAYSCALE, JCS_RGB, JCS_YCCK};
    seeds.push(("default".into(), encode_jpeg(width, height)));
    seeds.push(("baseline".into(), encode_jpeg_from(JCS_RGB, width, height, &rgb, |c| c.set_fastest_defaults())));
    seeds.push(("progressive".into(), encode_jpeg_from(JCS_RGB, width, height, &rgb, |c| c.set_progressive_mode())));
    let no_subsampling = |c: &mut mozjpeg::Compress| c.set_chroma_sampling_pixel_sizes((1, 1), (1, 1));
    seeds.push(("4:4:4".into(), encode_jpeg_from(JCS_RGB, width, height, &rgb, no_subsampling)));
    seeds.push(("grey".into(), encode_jpeg_from(JCS_GRAYSCALE, width, height, &grey, |_| {})));
    seeds.push(("cmyk".into(), encode_jpeg_from(JCS_CMYK, width, height, &cmyk, |c| c.set_progressive_mode())));
    seeds.push(("ycck".into(), encode_jpeg_from(JCS_CMYK, width, height, &cmyk, |c| c.set_color_space(JCS_YCCK))));
    for (color_type, channels) in [(0u8, 1usize), (2, 3), (3, 1), (4, 2), (6, 4)] {
        for depth in [8u8, 16] {
            if color_type == 3 && depth == 16 {
                continue;
            }
            let row: Vec<u8> = (0..12 * channels * usize::from(depth / 8)).map(|i| (i * 29 % 256) as u8).collect();
            let rows: Vec<&[u8]> = (0..6).map(|_| row.as_slice()).collect();
            let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
            let chunks: Vec<(&[u8; 4], &[u8])> =
                if color_type == 3 { vec![(b"PLTE", palette.as_slice())] } else { vec![] };
            seeds.push((format!("png{color_type}x{depth}"), encode_png(12, 6, depth, color_type, &rows, &chunks)));
        }
    }

    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/fruits-360");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&samples)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|class| std::fs::read_dir(class.path()).ok()?.flatten().map(|f| f.path()).min())
        .collect();
    photos.sort();
    for photo in photos.into_iter().take(12) {
        if let Ok(bytes) = std::fs::read(&photo) {
            seeds.push((photo.display().to_string(), bytes));
        }
    }
    seeds
}

/// What a fuzz run saw.
#[derive(Debug, Default)]
struct Report {
    iterations: u64,
    outcomes: BTreeMap<&'static str, u64>,
    /// Most Rust heap one decode held beyond what was held before it.
    peak_heap: usize,
    /// Most bytes libjpeg took for one decode.
    peak_libjpeg: usize,
    /// Most of both together in one decode.
    peak_total: usize,
    /// Inputs on which the decoder panicked (contained), or went over its memory.
    failures: Vec<String>,
}

fn outcome(result: &Result<super::RgbImage, DecodeError>) -> &'static str {
    match result {
        Ok(_) => "decoded",
        Err(DecodeError::Empty) => "empty",
        Err(DecodeError::UnknownFormat(_)) => "unknown format",
        Err(DecodeError::TooLarge { .. }) => "too large",
        Err(DecodeError::OutOfMemory { .. }) => "out of memory",
        Err(DecodeError::Truncated(_)) => "truncated",
        Err(DecodeError::Corrupt { .. }) => "corrupt",
        Err(DecodeError::DecoderPanic { .. }) => "decoder panic",
    }
}

/// Slack over the limit for what no budget counts: the decoder structs themselves, libjpeg's
/// allocations before its allocators are wrapped, an error message.
const SLACK: usize = 256 * 1024;

/// Decodes mutants of the seeds until `stop(iterations, elapsed)` says so.
fn fuzz(seed: u64, limits: DecodeLimits, stop: impl Fn(u64, Duration) -> bool) -> Report {
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let bound = limits.max_memory as usize + SLACK;
    let started = Instant::now();
    while !stop(report.iterations, started.elapsed()) {
        let (name, original) = &seeds[rng.below(seeds.len())];
        let mut input = original.clone();
        mutate(&mut rng, &mut input);
        if input.starts_with(b"\x89PNG") && rng.chance(2) {
            fix_png_crcs(&mut input);
        }

        let before = start_measuring();
        let result = std::panic::catch_unwind(|| decode_rgb(&input, &limits));
        let heap = PEAK.with(Cell::get).saturating_sub(before);
        let libjpeg = LIBJPEG.with(Cell::get);
        report.iterations += 1;
        // The decoded image counts too: the limit covers it.
        report.peak_heap = report.peak_heap.max(heap);
        report.peak_libjpeg = report.peak_libjpeg.max(libjpeg);
        report.peak_total = report.peak_total.max(heap + libjpeg);
        let label = match &result {
            Ok(decoded) => outcome(decoded),
            Err(_) => "escaped panic",
        };
        *report.outcomes.entry(label).or_default() += 1;
        let failure = match &result {
            Err(_) => Some("a panic escaped decode_rgb".to_owned()),
            Ok(Err(e @ DecodeError::DecoderPanic { .. })) => Some(e.to_string()),
            Ok(_) if heap + libjpeg > bound => Some(format!("{heap} heap + {libjpeg} libjpeg bytes, above {bound}")),
            Ok(_) => None,
        };
        if let Some(failure) = failure {
            let saved = std::env::temp_dir().join(format!("fruits-fuzz-{seed}-{}.bin", report.iterations));
            let saved = match std::fs::write(&saved, &input) {
                Ok(()) => saved.display().to_string(),
                Err(e) => format!("(not saved: {e})"),
            };
            report.failures.push(format!("mutant of {name}, saved as {saved}: {failure}"));
        }
    }
    report
}

/// Small enough to reach quickly from a mutated header, large enough for every seed.
const FUZZ_LIMITS: DecodeLimits = DecodeLimits { max_pixels: 4 * 1024 * 1024, max_memory: 32 * 1024 * 1024 };

fn print(report: &Report, seed: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "fuzz seed {seed}: {} iterations in {seconds:.1} s ({:.0}/s); peak per decode: heap {} B, libjpeg {} B, \
         both {} B (limit {} B); peak RSS {}; outcomes {:?}",
        report.iterations,
        report.iterations as f64 / seconds,
        report.peak_heap,
        report.peak_libjpeg,
        report.peak_total,
        FUZZ_LIMITS.max_memory,
        peak_rss().unwrap_or_else(|| "unknown".to_owned()),
        report.outcomes
    );
}

/// The process's peak resident set (`VmHWM`), which includes what no counter sees.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_owned())
}

/// The same thousand mutants on every run (about a second): a regression test for what
/// fuzzing finds, and a check that the harness still reaches every kind of outcome.
#[test]
fn fuzz_decoder_briefly() {
    let started = Instant::now();
    let report = fuzz(20261202, FUZZ_LIMITS, |iterations, _| iterations >= 1000);
    print(&report, 20261202, started.elapsed());
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    // The mutants reach every kind of outcome, the decoded ones included.
    for kind in ["decoded", "too large", "truncated", "corrupt"] {
        assert!(report.outcomes.get(kind).is_some_and(|&n| n > 0), "no '{kind}' in {:?}", report.outcomes);
    }
}

/// `FRUITS_FUZZ_SECONDS` (default 60) of fuzzing, seeded by `FRUITS_FUZZ_SEED` or the clock.
#[test]
#[ignore = "long-running: FRUITS_FUZZ_SECONDS=600 cargo test --release --workspace --lib fuzz -- --ignored --nocapture"]
fn fuzz_decoder_for_a_while() {
    let seconds: u64 = std::env::var("FRUITS_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = std::env::var("FRUITS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let started = Instant::now();
    let report = fuzz(seed, FUZZ_LIMITS, |_, elapsed| elapsed >= Duration::from_secs(seconds));
    print(&report, seed, started.elapsed());
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
}
