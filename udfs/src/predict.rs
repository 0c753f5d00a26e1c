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

use crate::udf::Backend;

/// Name of the SQL function.
pub const PREDICT: &str = "predict";

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

        let labels = &classifier.model().labels;
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
