//! PNG through the `png` crate, narrowed to 8-bit RGB by Pillow's rules.
//!
//! The `png` crate expands palettes, low bit depths (1, 2 and 4 bits, scaled to 0..255 by bit
//! replication, as Pillow's `L;2`/`L;4` and mode `1` do) and `tRNS` transparency; the rest
//! follows Pillow's `Image.open(f).convert("RGB")`:
//! - alpha is dropped, not composited, and `tRNS` transparency is ignored;
//! - 16-bit samples keep their high byte (Pillow's `RGB;16B`, `RGBA;16B` and `LA;16B` raw
//!   modes truncate, they do not round), except 16-bit grey without alpha: Pillow opens it as
//!   mode `I;16`, whose conversion clips every value above 255 to 255 rather than scaling it;
//! - a palette index past the end of the palette is black.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ::png::{BitDepth, ColorType, DecodingError, Transformations};

use super::{DecodeError, DecodeLimits, RgbImage, check_size, panic_message, zeroed_buffer};

pub(super) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, limits))) {
        Ok(decoded) => decoded,
        Err(payload) => Err(DecodeError::DecoderPanic { format: "PNG", message: panic_message(&*payload) }),
    }
}

fn decode_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let out_of_memory = || DecodeError::OutOfMemory { format: "PNG", limit: limits.max_memory };
    let max_memory = usize::try_from(limits.max_memory).unwrap_or(usize::MAX);
    let reader = |budget: usize| {
        let mut decoder = ::png::Decoder::new_with_limits(Cursor::new(bytes), ::png::Limits { bytes: budget });
        decoder.set_transformations(Transformations::EXPAND);
        // Text and ICC profiles do not change the pixels Pillow's conversion gives; skipping them
        // keeps a file of megabytes of zTXt from costing memory.
        decoder.set_ignore_text_chunk(true);
        decoder.set_ignore_iccp_chunk(true);
        decoder.read_info().map_err(|e| error(e, limits))
    };

    // The header (up to the first image data) tells how large the frame and the RGB image will
    // be; the decoder that reads the pixels gets what remains of the budget for its own use.
    let header = reader(max_memory)?;
    let info = header.info();
    let (width, height) = (info.width as usize, info.height as usize);
    check_size(width as u64, height as u64, limits)?;
    let frame_len = header.output_buffer_size().ok_or_else(out_of_memory)?;
    let rgb_len = width.checked_mul(height).and_then(|n| n.checked_mul(3)).ok_or_else(out_of_memory)?;
    let decoder_budget =
        max_memory.checked_sub(frame_len).and_then(|b| b.checked_sub(rgb_len)).ok_or_else(out_of_memory)?;
    drop(header);

    let mut reader = reader(decoder_budget)?;
    let grey_16 = reader.info().color_type == ColorType::Grayscale && reader.info().bit_depth == BitDepth::Sixteen;
    let mut frame = zeroed_buffer(frame_len, "PNG", limits)?;
    let output = reader.next_frame(&mut frame).map_err(|e| error(e, limits))?;
    if (output.width as usize, output.height as usize) != (width, height) {
        // An APNG whose first frame is not the default image: Pillow shows the default image,
        // which the `png` crate does not decode separately.
        return Err(DecodeError::Corrupt {
            format: "PNG",
            message: format!("first frame is {}x{}, not the image's {width}x{height}", output.width, output.height),
        });
    }

    let channels = output.color_type.samples();
    let sample_bytes = match output.bit_depth {
        BitDepth::Eight => 1,
        BitDepth::Sixteen => 2,
        other => {
            return Err(DecodeError::Corrupt { format: "PNG", message: format!("unexpected {other:?}-bit output") });
        }
    };
    if output.color_type == ColorType::Indexed {
        return Err(DecodeError::Corrupt { format: "PNG", message: "palette left unexpanded".to_owned() });
    }
    let narrow = |sample: &[u8]| match sample {
        [value] => *value,
        [0, low] if grey_16 => *low,
        [_, _] if grey_16 => 255,
        [high, _] => *high,
        _ => unreachable!("samples are one or two bytes"),
    };

    let mut pixels = zeroed_buffer(rgb_len, "PNG", limits)?;
    let pixel_bytes = channels * sample_bytes;
    for (source, rgb) in frame.chunks_exact(output.line_size).zip(pixels.chunks_exact_mut(width * 3)) {
        for (pixel, out) in source.chunks_exact(pixel_bytes).zip(rgb.chunks_exact_mut(3)) {
            if channels >= 3 {
                for (value, sample) in out.iter_mut().zip(pixel.chunks_exact(sample_bytes)) {
                    *value = narrow(sample);
                }
            } else {
                out.fill(narrow(&pixel[..sample_bytes]));
            }
        }
    }
    Ok(RgbImage::new(width as u32, height as u32, pixels))
}

fn error(e: DecodingError, limits: &DecodeLimits) -> DecodeError {
    match e {
        DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => DecodeError::Truncated("PNG"),
        DecodingError::LimitsExceeded => DecodeError::OutOfMemory { format: "PNG", limit: limits.max_memory },
        other => DecodeError::Corrupt { format: "PNG", message: other.to_string() },
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::fixture;
    use super::super::{DecodeError, DecodeLimits, decode_rgb};

    /// A minimal PNG: the rows are given unfiltered (filter type 0 is prepended here).
    pub(in super::super) fn encode(
        width: u32,
        height: u32,
        bit_depth: u8,
        color_type: u8,
        rows: &[&[u8]],
        chunks: &[(&[u8; 4], &[u8])],
    ) -> Vec<u8> {
        let mut image = Vec::new();
        for row in rows {
            image.push(0);
            image.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
        write_chunk(&mut out, b"IHDR", &header);
        for (kind, data) in chunks {
            write_chunk(&mut out, kind, data);
        }
        write_chunk(&mut out, b"IDAT", &zlib_stored(&image));
        write_chunk(&mut out, b"IEND", &[]);
        out
    }

    pub(in super::super) fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(kind.iter().chain(data));
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// zlib with stored (uncompressed) deflate blocks: enough for test images.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(65535).collect() };
        for (i, block) in blocks.iter().enumerate() {
            out.push(u8::from(i + 1 == blocks.len()));
            let len = block.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(block);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend_from_slice(&((b << 16) | a).to_be_bytes());
        out
    }

    fn crc32<'a>(bytes: impl Iterator<Item = &'a u8>) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn decode(png: &[u8]) -> Vec<[u8; 3]> {
        let image = decode_rgb(png, &DecodeLimits::default()).expect("decode");
        image.pixels.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect()
    }

    fn be16(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    const SIXTEEN_BIT: [u16; 8] = [0, 1, 255, 256, 1000, 32768, 65280, 65535];

    // The expected values below are what Pillow 13 gives for the same files
    // (`Image.open(f).convert("RGB")`).

    #[test]
    fn grey_16_bit_is_clipped_like_pillows_i16() {
        let png = encode(8, 1, 16, 0, &[&be16(&SIXTEEN_BIT)], &[]);
        let grey: Vec<u8> = decode(&png).iter().map(|p| p[0]).collect();
        assert_eq!(grey, [0, 1, 255, 255, 255, 255, 255, 255]);
    }

    #[test]
    fn rgb_16_bit_keeps_the_high_byte() {
        let row: Vec<u16> = SIXTEEN_BIT.iter().flat_map(|&v| [v, v, 65535 - v]).collect();
        let png = encode(8, 1, 16, 2, &[&be16(&row)], &[]);
        let expected = [
            [0, 0, 255],
            [0, 0, 255],
            [0, 0, 255],
            [1, 1, 254],
            [3, 3, 252],
            [128, 128, 127],
            [255, 255, 0],
            [255, 255, 0],
        ];
        assert_eq!(decode(&png), expected);
    }

    #[test]
    fn grey_alpha_16_bit_keeps_the_high_byte_and_drops_alpha() {
        let row: Vec<u16> = SIXTEEN_BIT.iter().flat_map(|&v| [v, 65535 - v]).collect();
        let png = encode(8, 1, 16, 4, &[&be16(&row)], &[]);
        let grey: Vec<u8> = decode(&png).iter().map(|p| p[0]).collect();
        assert_eq!(grey, [0, 0, 0, 1, 3, 128, 255, 255]);
    }

    #[test]
    fn grey_alpha_8_bit_drops_alpha() {
        let png = encode(4, 1, 8, 4, &[&[0, 255, 100, 0, 200, 10, 255, 128]], &[]);
        assert_eq!(decode(&png), [[0; 3], [100; 3], [200; 3], [255; 3]]);
    }

    #[test]
    fn palette_ignores_transparency_and_indexes_past_the_end_are_black() {
        let palette = [10, 20, 30, 40, 50, 60, 70, 80, 90];
        let png = encode(6, 1, 8, 3, &[&[0, 1, 2, 3, 4, 5]], &[(b"PLTE", &palette), (b"tRNS", &[0, 128])]);
        assert_eq!(decode(&png), [[10, 20, 30], [40, 50, 60], [70, 80, 90], [0; 3], [0; 3], [0; 3]]);
        let palette = [10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3];
        let png = encode(4, 1, 4, 3, &[&[0x01, 0x23]], &[(b"PLTE", &palette)]);
        assert_eq!(decode(&png), [[10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3]]);
    }

    #[test]
    fn low_bit_depth_grey_is_scaled_to_full_range() {
        let g1 = encode(8, 1, 1, 0, &[&[0b1010_0000]], &[]);
        let g2 = encode(4, 1, 2, 0, &[&[0b0001_1011]], &[]);
        let g4 = encode(2, 1, 4, 0, &[&[0x1f]], &[]);
        let grey = |png: &[u8]| decode(png).iter().map(|p| p[0]).collect::<Vec<_>>();
        assert_eq!(grey(&g1), [255, 0, 255, 0, 0, 0, 0, 0]);
        assert_eq!(grey(&g2), [0, 85, 170, 255]);
        assert_eq!(grey(&g4), [17, 255]);
    }

    #[test]
    fn transparency_of_grey_and_rgb_is_ignored() {
        let grey = encode(2, 1, 8, 0, &[&[5, 7]], &[(b"tRNS", &[0, 5])]);
        assert_eq!(decode(&grey), [[5; 3], [7; 3]]);
        let rgb = encode(2, 1, 8, 2, &[&[5, 7, 9, 1, 2, 3]], &[(b"tRNS", &[0, 5, 0, 7, 0, 9])]);
        assert_eq!(decode(&rgb), [[5, 7, 9], [1, 2, 3]]);
    }

    #[test]
    fn memory_limit_counts_the_frame_and_the_rgb_image() {
        // 1000x1000 RGBA at 16 bits: an 8 MB frame and 3 MB of RGB.
        let row = vec![0x80u8; 1000 * 8];
        let rows: Vec<&[u8]> = (0..1000).map(|_| row.as_slice()).collect();
        let png = encode(1000, 1000, 16, 6, &rows, &[]);
        let tight = DecodeLimits { max_memory: 10 << 20, ..DecodeLimits::default() };
        assert_eq!(decode_rgb(&png, &tight), Err(DecodeError::OutOfMemory { format: "PNG", limit: 10 << 20 }));
        let roomy = DecodeLimits { max_memory: 16 << 20, ..DecodeLimits::default() };
        let image = decode_rgb(&png, &roomy).expect("decode");
        assert!(image.pixels.iter().all(|&v| v == 0x80));
    }

    #[test]
    fn committed_png_fixtures_decode() {
        for name in ["rgb16.png", "grey16.png", "palette.png", "palette4_trns.png", "grey_alpha.png"] {
            let image = decode_rgb(&fixture(name), &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((image.width, image.height), (100, 100), "{name}");
        }
    }
}
