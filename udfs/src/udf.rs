//! `featurize(content)` and `featurize_or_error(content [, read_error])`: image bytes in,
//! embeddings out.
//!
//! A bad image never fails the query (Ballista would fail the whole job over one error): its
//! features are NULL. `featurize_or_error` returns the reason alongside, so a job can report
//! every failed file without decoding anything twice; given the `images` table's `read_error`,
//! it reports why a file was not read.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Builder, ListBuilder, StringBuilder, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

use crate::classifier::Classifier;
use crate::model::Featurizer;

/// Name of the function returning the feature vector (NULL for an unreadable image).
pub const FEATURIZE: &str = "featurize";
/// Name of the function returning `{features, error}`.
pub const FEATURIZE_OR_ERROR: &str = "featurize_or_error";
/// Name of the function returning the fingerprint of the model `featurize` runs here.
pub const MODEL_FINGERPRINT: &str = "model_fingerprint";

/// Reason given for a row whose content is NULL with no other reason (the file vanished after
/// listing).
pub const NO_CONTENT: &str = "no content (the file disappeared after it was listed)";

/// `List<Float32>`: what `featurize` returns.
pub fn features_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
}

/// `Struct<features: List<Float32>, error: Utf8>`: what `featurize_or_error` returns.
pub fn features_or_error_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("features", features_type(), true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    Features,
    FeaturesOrError,
}

/// What runs a process's `featurize` and `predict` calls.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An executor's (or the embedded engine's) loaded model, and the classifier trained on its
    /// features if the process was given one (`--classifier`): without it `predict` is planned
    /// but fails to run, saying so.
    Model { featurizer: Arc<Featurizer>, classifier: Option<Arc<Classifier>> },
    /// A client or scheduler: enough to plan a query, which then runs on the executors.
    PlanningOnly,
}

impl Backend {
    /// A loaded model without a classifier.
    pub fn model(featurizer: Arc<Featurizer>) -> Self {
        Backend::Model { featurizer, classifier: None }
    }

    /// True when both run on the very same loaded model and classifier.
    pub(crate) fn same_as(&self, other: &Backend) -> bool {
        match (self, other) {
            (Backend::Model { featurizer: a, classifier: x }, Backend::Model { featurizer: b, classifier: y }) => {
                Arc::ptr_eq(a, b)
                    && match (x, y) {
                        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                        (None, None) => true,
                        _ => false,
                    }
            }
            (Backend::PlanningOnly, Backend::PlanningOnly) => true,
            _ => false,
        }
    }
}

/// The scalar UDF behind both functions.
#[derive(Debug)]
pub(crate) struct Featurize {
    output: Output,
    backend: Backend,
    signature: Signature,
}

impl Featurize {
    fn new(output: Output, backend: Backend) -> Self {
        let binary = [DataType::Binary, DataType::LargeBinary, DataType::BinaryView];
        let text = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut signatures: Vec<TypeSignature> = binary.iter().map(|t| TypeSignature::Exact(vec![t.clone()])).collect();
        if output == Output::FeaturesOrError {
            for content in &binary {
                signatures
                    .extend(text.iter().map(|reason| TypeSignature::Exact(vec![content.clone(), reason.clone()])));
            }
        }
        let signature = Signature::one_of(signatures, Volatility::Immutable);
        Self { output, backend, signature }
    }

    /// Both functions, on `backend`.
    pub(crate) fn udfs(backend: &Backend) -> [ScalarUDF; 2] {
        [
            ScalarUDF::new_from_impl(Self::new(Output::Features, backend.clone())),
            ScalarUDF::new_from_impl(Self::new(Output::FeaturesOrError, backend.clone())),
        ]
    }
}

impl PartialEq for Featurize {
    fn eq(&self, other: &Self) -> bool {
        self.output == other.output && self.backend.same_as(&other.backend)
    }
}

impl Eq for Featurize {}

impl Hash for Featurize {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.output.hash(state);
    }
}

impl ScalarUDFImpl for Featurize {
    fn name(&self) -> &str {
        match self.output {
            Output::Features => FEATURIZE,
            Output::FeaturesOrError => FEATURIZE_OR_ERROR,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.output {
            Output::Features => features_type(),
            Output::FeaturesOrError => features_or_error_type(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (content, reasons) = match args.args.as_slice() {
            [content] => (content, None),
            [content, reason] if self.output == Output::FeaturesOrError => {
                (content, Some(cast(&reason.to_array(args.number_rows)?, &DataType::Utf8)?))
            }
            _ => {
                return exec_err!(
                    "{} takes the image bytes (and, for {FEATURIZE_OR_ERROR}, why they are missing)",
                    self.name()
                );
            }
        };
        let reasons = reasons.as_ref().map(|r| r.as_string::<i32>());
        let Backend::Model { featurizer, .. } = &self.backend else {
            return exec_err!(
                "{} runs on executors, which load the model; this process (a client or scheduler) has none",
                self.name()
            );
        };
        let content = cast(&content.to_array(args.number_rows)?, &DataType::Binary)?;
        let content = content.as_binary::<i32>();

        let present: Vec<&[u8]> = content.iter().flatten().collect();
        let mut outcomes =
            featurizer.featurize(&present).map_err(|e| DataFusionError::External(Box::new(e)))?.into_iter();

        let dim = featurizer.feature_dim();
        let mut features =
            ListBuilder::with_capacity(Float32Builder::with_capacity(present.len() * dim), content.len());
        let mut errors = StringBuilder::new();
        for row in 0..content.len() {
            let outcome = if content.is_null(row) {
                let reason = reasons.filter(|r| r.is_valid(row)).map_or(NO_CONTENT, |r| r.value(row));
                Err(reason.to_owned())
            } else {
                outcomes
                    .next()
                    .ok_or_else(|| DataFusionError::Internal("featurizer returned fewer results than images".into()))?
                    .map_err(|e| e.to_string())
            };
            match outcome {
                Ok(vector) => {
                    features.values().append_slice(&vector);
                    features.append(true);
                    errors.append_null();
                }
                Err(reason) => {
                    features.append_null();
                    errors.append_value(reason);
                }
            }
        }
        let features: ArrayRef = Arc::new(features.finish());
        Ok(ColumnarValue::Array(match self.output {
            Output::Features => features,
            Output::FeaturesOrError => {
                let DataType::Struct(fields) = features_or_error_type() else { unreachable!("struct type") };
                Arc::new(StructArray::try_new(fields, vec![features, Arc::new(errors.finish())], None)?)
            }
        }))
    }
}

/// `model_fingerprint()`: the [`Featurizer::fingerprint`] of the process evaluating it. Volatile,
/// so a client never folds it while planning: it is evaluated where `featurize` runs, and a
/// features write records, per row, which model made it.
#[derive(Debug)]
pub(crate) struct ModelFingerprint {
    backend: Backend,
    signature: Signature,
}

impl ModelFingerprint {
    pub(crate) fn udf(backend: &Backend) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self { backend: backend.clone(), signature: Signature::nullary(Volatility::Volatile) })
    }
}

impl PartialEq for ModelFingerprint {
    fn eq(&self, other: &Self) -> bool {
        self.backend.same_as(&other.backend)
    }
}

impl Eq for ModelFingerprint {}

impl Hash for ModelFingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        MODEL_FINGERPRINT.hash(state);
    }
}

impl ScalarUDFImpl for ModelFingerprint {
    fn name(&self) -> &str {
        MODEL_FINGERPRINT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &self.backend {
            Backend::Model { featurizer, .. } => {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(featurizer.fingerprint().to_owned()))))
            }
            Backend::PlanningOnly => {
                exec_err!("{MODEL_FINGERPRINT} runs on executors, which load the model; this process has none")
            }
        }
    }
}
