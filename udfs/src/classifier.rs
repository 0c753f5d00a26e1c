//! The trained classifier a process serves `predict` with: a model directory written by
//! `fruits train` (its `head.json` and `model.json`), read once and checked against the
//! featurize model whose features it was trained on, and how `model.json` describes feeding
//! that model.

use datafusion::execution::runtime_env::RuntimeEnv;
use fruits_classifier::{HEAD_FILE, MANIFEST_FILE, Manifest, Model, Prediction, Preprocessing, read_model};

use crate::location::{Location, StoreError};
use crate::model::{Featurizer, ModelError};
use crate::preprocess::{DecodeError, InputSpec, Layout, Scaling};

/// Why a model directory cannot serve predictions.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierLoadError {
    #[error("no {file} in {url}: train a classifier there with `fruits train --output {url}`")]
    Missing { url: String, file: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the classifier in {url} is not usable: {source}")]
    Invalid { url: String, source: fruits_classifier::ClassifierError },
    #[error("the classifier in {url} was trained on other features than this backbone gives: {message}")]
    Backbone { url: String, message: String },
}

/// A trained classifier head (`head.json`) and its manifest (`model.json`), from a model
/// directory. The backbone is not part of it: the features come from a [`Featurizer`].
#[derive(Debug)]
pub struct Classifier {
    url: String,
    model: Model,
    manifest: Manifest,
}

impl Classifier {
    /// Reads and checks `head.json` and `model.json` in `dir` (local or object store).
    pub async fn load(dir: &Location) -> Result<Self, ClassifierLoadError> {
        let url = dir.url().to_owned();
        let read = async |file: &'static str| match dir.get(file).await? {
            Some(bytes) => Ok(bytes),
            None => Err(ClassifierLoadError::Missing { url: url.clone(), file }),
        };
        let (head, manifest) = (read(HEAD_FILE).await?, read(MANIFEST_FILE).await?);
        let (model, manifest) =
            read_model(&head, &manifest).map_err(|source| ClassifierLoadError::Invalid { url: url.clone(), source })?;
        Ok(Self { url, model, manifest })
    }

    /// The classifier in the model directory `dir` (a path or URL), checked against
    /// `featurizer`: what a process that runs `predict` loads once when it starts.
    pub async fn open(dir: &str, runtime: &RuntimeEnv, featurizer: &Featurizer) -> Result<Self, ClassifierLoadError> {
        let classifier = Self::load(&Location::parse(dir, runtime)?).await?;
        classifier.check_backbone(featurizer)?;
        Ok(classifier)
    }

    /// The directory it was read from.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The input the head's features were computed from, as a featurize model is fed; `None`
    /// if `model.json` describes preprocessing this project does not implement.
    pub fn input_spec(&self) -> Option<InputSpec> {
        input_spec(&self.manifest.preprocessing)
    }

    /// Checks that `featurizer` gives the features the head was trained on: the same
    /// dimension and the same preprocessing.
    pub fn check_backbone(&self, featurizer: &Featurizer) -> Result<(), ClassifierLoadError> {
        let mismatch = |message: String| Err(ClassifierLoadError::Backbone { url: self.url.clone(), message });
        if featurizer.feature_dim() != self.model.dim {
            return mismatch(format!(
                "{} has {} features, the classifier {}",
                featurizer.config().model_path.display(),
                featurizer.feature_dim(),
                self.model.dim
            ));
        }
        let fed = &featurizer.config().input;
        if self.input_spec().as_ref() != Some(fed) {
            return mismatch(format!(
                "{MANIFEST_FILE} asks for {:?}, the featurize model is fed {fed:?}",
                self.manifest.preprocessing
            ));
        }
        Ok(())
    }

    /// Featurizes each image with `featurizer` and predicts it; an image that cannot be decoded
    /// gives its reason. Only a failure of the runtime itself fails the whole call.
    pub fn predict(
        &self,
        featurizer: &Featurizer,
        images: &[&[u8]],
    ) -> Result<Vec<Result<Prediction, DecodeError>>, ModelError> {
        featurizer
            .featurize(images)?
            .into_iter()
            .map(|features| match features {
                Ok(features) => self.model.predict(&features).map(Ok).map_err(|e| ModelError::Inference(e.to_string())),
                Err(e) => Ok(Err(e)),
            })
            .collect()
    }
}

/// How `spec` feeds a model, in the words of `model.json`; `None` for a scaling that is not
/// `pixel * scale + offset` with one scale for every channel (ImageNet's mean and std).
pub fn preprocessing(spec: &InputSpec) -> Option<Preprocessing> {
    let (scale, offset) = match spec.scaling {
        Scaling::Symmetric => (1.0 / 127.5, -1.0),
        Scaling::Unit => (1.0 / 255.0, 0.0),
        Scaling::ImageNet => return None,
    };
    let layout = match spec.layout {
        Layout::Nhwc => "NHWC",
        Layout::Nchw => "NCHW",
    };
    Some(Preprocessing {
        width: spec.width,
        height: spec.height,
        layout: layout.to_owned(),
        scale,
        offset,
        ..Default::default()
    })
}

/// The [`InputSpec`] that `preprocessing` describes, if this project implements it.
pub fn input_spec(preprocessing: &Preprocessing) -> Option<InputSpec> {
    [Scaling::Symmetric, Scaling::Unit]
        .into_iter()
        .flat_map(|scaling| [Layout::Nhwc, Layout::Nchw].map(|layout| (scaling, layout)))
        .map(|(scaling, layout)| InputSpec {
            width: preprocessing.width,
            height: preprocessing.height,
            layout,
            scaling,
        })
        .find(|spec| self::preprocessing(spec).as_ref() == Some(preprocessing))
}
