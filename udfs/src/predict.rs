//! `predict(content)`: image bytes in, the trained classifier's answer out, as
//! `Struct<label: Utf8, probability: Float32, unknown: Boolean>`.
//!
//! The classifier is the process's: a model directory written by `fruits train`, loaded once
//! when the process starts (an executor's `--classifier`), next to the featurize model whose
//! features it was trained on. A process without one still registers `predict`, so that plans
//! naming it are built and sent anywhere; only running it there is an error. As with
//! `featurize`, an image that cannot be decoded gives NULL, never a failed job.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float32Builder, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use fruits_classifier::{HEAD_FILE, MANIFEST_FILE, Manifest, Model, Prediction, Preprocessing, read_model};

use crate::location::{Location, StoreError};
use crate::model::{Featurizer, ModelError};
use crate::preprocess::{DecodeError, InputSpec, Layout, Scaling};
use crate::udf::Backend;

/// Name of the SQL function.
pub const PREDICT: &str = "predict";

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

/// `Struct<label: Utf8, probability: Float32, unknown: Boolean>`: what `predict` returns.
pub fn prediction_type() -> DataType {
    DataType::Struct(prediction_fields())
}

fn prediction_fields() -> Fields {
    Fields::from(vec![
        Field::new("label", DataType::Utf8, true),
        Field::new("probability", DataType::Float32, true),
        Field::new("unknown", DataType::Boolean, true),
    ])
}

/// The scalar UDF.
#[derive(Debug)]
pub(crate) struct Predict {
    backend: Backend,
    signature: Signature,
}

impl Predict {
    pub(crate) fn udf(backend: &Backend) -> ScalarUDF {
        let binary = [DataType::Binary, DataType::LargeBinary, DataType::BinaryView];
        let signature = Signature::one_of(
            binary.into_iter().map(|t| TypeSignature::Exact(vec![t])).collect(),
            Volatility::Immutable,
        );
        ScalarUDF::new_from_impl(Self { backend: backend.clone(), signature })
    }
}

impl PartialEq for Predict {
    fn eq(&self, other: &Self) -> bool {
        self.backend.same_as(&other.backend)
    }
}

impl Eq for Predict {}

impl Hash for Predict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        PREDICT.hash(state);
    }
}

impl ScalarUDFImpl for Predict {
    fn name(&self) -> &str {
        PREDICT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(prediction_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [content] = args.args.as_slice() else {
            return exec_err!("{PREDICT} takes exactly one argument, the image bytes");
        };
        let (featurizer, classifier) = match &self.backend {
            Backend::Model { featurizer, classifier: Some(classifier) } => (featurizer, classifier),
            Backend::Model { classifier: None, .. } => {
                return exec_err!(
                    "{PREDICT}: this executor has no classifier: start it with --classifier MODELDIR \
                     (a folder written by `fruits train`)"
                );
            }
            Backend::PlanningOnly => {
                return exec_err!(
                    "{PREDICT} runs on executors, which load the classifier; this process (a client or scheduler) has none"
                );
            }
        };
        let content = cast(&content.to_array(args.number_rows)?, &DataType::Binary)?;
        let content = content.as_binary::<i32>();
        let present: Vec<&[u8]> = content.iter().flatten().collect();
        let mut outcomes =
            classifier.predict(featurizer, &present).map_err(|e| DataFusionError::External(Box::new(e)))?.into_iter();

        let labels = &classifier.model.labels;
        let (mut label, mut probability, mut unknown) =
            (StringBuilder::new(), Float32Builder::new(), BooleanBuilder::new());
        let mut valid = Vec::with_capacity(content.len());
        for bytes in content.iter() {
            let prediction = match bytes {
                None => None,
                Some(_) => outcomes
                    .next()
                    .ok_or_else(|| DataFusionError::Internal("classifier returned fewer results than images".into()))?
                    .ok(),
            };
            valid.push(prediction.is_some());
            match prediction {
                Some(p) => {
                    let best = p.best();
                    label.append_option(labels.get(best));
                    probability.append_value(p.probabilities[best]);
                    unknown.append_value(p.unknown);
                }
                None => {
                    label.append_null();
                    probability.append_null();
                    unknown.append_null();
                }
            }
        }
        let columns: Vec<ArrayRef> =
            vec![Arc::new(label.finish()), Arc::new(probability.finish()), Arc::new(unknown.finish())];
        let nulls = NullBuffer::from(valid);
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(prediction_fields(), columns, Some(nulls))?)))
    }
}
