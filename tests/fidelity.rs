//! Preprocessing reproduces the reference pipeline's pixels exactly: libjpeg decoding and
//! Pillow's bicubic resize, checked against hashes Pillow produced for the same files.

use crate::support::{Reference, sample_dir};
use fruits_udfs::{DecodeLimits, decode_rgb, resize_bicubic};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn decode_and_resize_match_pillow_bit_for_bit() {
    let reference = Reference::load();
    assert_eq!(reference.images.len(), 30);
    for image in &reference.images {
        let bytes = std::fs::read(sample_dir().join(&image.path)).expect("sample image");
        let decoded = decode_rgb(&bytes, &DecodeLimits::default()).expect("decode");
        assert_eq!(sha256(&decoded.pixels), image.decoded_sha256, "decoded pixels of {}", image.path);
        let resized = resize_bicubic(&decoded, 224, 224);
        assert_eq!(sha256(&resized.pixels), image.resized_sha256, "resized pixels of {}", image.path);
    }
}

#[test]
fn reference_was_made_with_the_shared_model() {
    let reference = Reference::load();
    let model = std::fs::read(crate::support::model_path()).expect("model");
    assert_eq!(sha256(&model), reference.model_sha256);
}
