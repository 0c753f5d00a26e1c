//! The calibration sample: which of the user's images calibrate the int8 model, preprocessed
//! once by fruits' own featurizer.
//!
//! The same tensors later go through both models to measure fidelity, so the tool calibrates
//! on exactly the inputs `fruits run` would feed (fruits' decode and Pillow-exact resize, not a
//! Python re-implementation of them).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use fruits_classifier::key_hash;
use fruits_udfs::{Featurizer, ImageFile, Location, list_images};

/// The preprocessed calibration images.
#[derive(Debug)]
pub struct Calibration {
    /// The images' URLs, in sample order.
    pub keys: Vec<String>,
    /// Each image's label: the folder it is in (`None` for an image directly in the folder).
    pub labels: Vec<Option<String>>,
    /// `keys.len()` preprocessed images, one after the other, as the model's input takes them.
    pub tensors: Vec<f32>,
    pub values_per_image: usize,
    /// Images of the sample that could not be read or decoded, with why; others took their place.
    pub undecodable: Vec<(String, String)>,
    /// Images listed under the folder.
    pub listed: usize,
}

impl Calibration {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Takes up to `n` decodable images under `folder`, every label in turn (labels sorted, each
/// label's images in the order of a hash of their path seeded with `seed`: a spread of the
/// label, the same for the same seed), and preprocesses them as `featurizer` does.
pub async fn sample(folder: &Location, featurizer: &Featurizer, n: usize, seed: u64) -> Result<Calibration> {
    let listing = list_images(folder).await.with_context(|| format!("cannot list {}", folder.url()))?;
    if listing.images.is_empty() {
        bail!(
            "no images under {}: --calibrate needs a folder of the photos the model will featurize \
             (.jpg, .jpeg, .png files, one folder per label)",
            folder.url()
        );
    }
    let listed = listing.images.len();
    let values_per_image = featurizer.config().input.values_per_image();
    let mut calibration = Calibration {
        keys: Vec::new(),
        labels: Vec::new(),
        tensors: Vec::with_capacity(n.min(listed) * values_per_image),
        values_per_image,
        undecodable: Vec::new(),
        listed,
    };
    let mut tensor = vec![0f32; values_per_image];
    for (image, label) in interleave(folder, listing.images, seed) {
        if calibration.len() == n {
            break;
        }
        let url = folder.url_of(image.location());
        let outcome = match folder.get_path(image.location()).await {
            Ok(Some(bytes)) => featurizer.preprocess_into(&bytes, &mut tensor).map_err(|e| e.to_string()),
            Ok(None) => Err("it vanished after listing".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                calibration.keys.push(url);
                calibration.labels.push(label);
                calibration.tensors.extend_from_slice(&tensor);
            }
            Err(reason) => calibration.undecodable.push((url, reason)),
        }
    }
    if calibration.keys.is_empty() {
        let (url, reason) = &calibration.undecodable[0];
        bail!("none of the {listed} images under {} could be decoded (for example {url}: {reason})", folder.url());
    }
    Ok(calibration)
}

/// The images with their labels, label by label in turn.
fn interleave(folder: &Location, images: Vec<ImageFile>, seed: u64) -> Vec<(ImageFile, Option<String>)> {
    let mut by_label: BTreeMap<Option<String>, Vec<(u64, ImageFile)>> = BTreeMap::new();
    for image in images {
        let name = folder.relative_name(image.location()).unwrap_or_else(|| image.location().to_string());
        let label = name.rsplit_once('/').map(|(dirs, _)| dirs.rsplit('/').next().unwrap_or(dirs).to_owned());
        by_label.entry(label).or_default().push((key_hash(&name, seed), image));
    }
    let mut queues: Vec<_> = by_label
        .into_iter()
        .map(|(label, mut images)| {
            images.sort_by_key(|(hash, _)| *hash);
            (label, images.into_iter().map(|(_, image)| image))
        })
        .collect();
    let mut order = Vec::new();
    loop {
        let before = order.len();
        for (label, images) in &mut queues {
            if let Some(image) = images.next() {
                order.push((image, label.clone()));
            }
        }
        if order.len() == before {
            return order;
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::path::Path as StorePath;

    use super::*;

    #[test]
    fn labels_take_turns_and_the_order_is_seeded() {
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let dir = tempfile::tempdir().unwrap();
        let folder = Location::parse(dir.path().to_str().unwrap(), &runtime).unwrap();
        let image = |name: &str| ImageFile::new(folder.path(name), 1);
        let images = vec![image("A/1.jpg"), image("A/2.jpg"), image("A/3.jpg"), image("B b/1.jpg"), image("top.jpg")];
        let order = interleave(&folder, images.clone(), 1);
        let labels: Vec<Option<&str>> = order.iter().map(|(_, l)| l.as_deref()).collect();
        assert_eq!(labels, [None, Some("A"), Some("B b"), Some("A"), Some("A")]);
        let names = |order: &[(ImageFile, Option<String>)]| -> Vec<StorePath> {
            order.iter().map(|(i, _)| i.location().clone()).collect()
        };
        assert_eq!(names(&interleave(&folder, images.iter().rev().cloned().collect(), 1)), names(&order));
        let seeds: std::collections::BTreeSet<Vec<StorePath>> =
            (0..8).map(|seed| names(&interleave(&folder, images.clone(), seed))).collect();
        assert!(seeds.len() > 1, "the seed changes which images of a label come first");
    }
}
