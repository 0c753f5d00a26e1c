//! Preprocessing reproduces the reference pipeline's pixels exactly: libjpeg decoding and
//! Pillow's bicubic resize, checked against hashes Pillow produced for the same files; for the
//! formats the sample lacks, the features too.

use std::num::NonZeroUsize;

use crate::support::{Reference, cosine, decode_fixtures_dir, model_path, sample_dir};
use fruits_udfs::{DecodeLimits, Featurizer, ModelConfig, Parallelism, decode_rgb, resize_bicubic};
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
    let model = std::fs::read(model_path()).expect("model");
    assert_eq!(sha256(&model), reference.model_sha256);
}

/// CMYK and YCCK JPEGs, 16-bit, palette and grey-alpha PNGs and a grey JPEG decode to Pillow's
/// pixels, bit for bit, and their features agree with Pillow + onnxruntime.
#[test]
fn other_formats_match_pillow_pixels_and_reference_features() {
    let reference = Reference::load();
    assert_eq!(reference.decode_fixtures.len(), 10);
    let one = NonZeroUsize::MIN;
    let featurizer = Featurizer::load(ModelConfig::new(model_path()), Parallelism::new(one, one)).expect("model");
    let mut worst = 1.0f64;
    for fixture in &reference.decode_fixtures {
        let bytes = std::fs::read(decode_fixtures_dir().join(&fixture.file)).expect("fixture");
        let decoded = decode_rgb(&bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{}: {e}", fixture.file));
        assert_eq!(sha256(&decoded.pixels), fixture.decoded_sha256, "decoded pixels of {}", fixture.file);
        let resized = resize_bicubic(&decoded, 224, 224);
        assert_eq!(sha256(&resized.pixels), fixture.resized_sha256, "resized pixels of {}", fixture.file);

        let mut features = featurizer.featurize(&[&bytes]).expect("inference");
        let features = features.pop().expect("one result").expect("decoded");
        let similarity = cosine(&features, &fixture.features);
        println!("{}: cosine {similarity:.7}", fixture.file);
        assert!(similarity >= 0.999, "{}: cosine {similarity}", fixture.file);
        worst = worst.min(similarity);
    }
    println!("minimum cosine over the {} decoder fixtures: {worst:.7}", reference.decode_fixtures.len());
}
