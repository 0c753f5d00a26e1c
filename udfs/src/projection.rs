//! `pca_project(features, projection)`: the coordinates of feature vectors on the components of
//! a fitted PCA, as a scalar function, so that the processes that hold the features (a
//! cluster's executors) place their own rows and only `k` numbers per row reach the client.
//! `projection` is a constant: the bytes of a [`Projection`], a few tens of KB that travel in
//! the plan.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, ListBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use fruits_pca::{FeatureMatrix, Projection};

use crate::udf::features_type;

/// Name of the projection function.
pub const PCA_PROJECT: &str = "pca_project";

/// `List<Float64>`: the `k` coordinates of a row; what [`PCA_PROJECT`] returns.
pub fn coordinates_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PcaProject {
    signature: Signature,
}

impl PcaProject {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::exact(vec![features_type(), DataType::Binary], Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for PcaProject {
    fn name(&self) -> &str {
        PCA_PROJECT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(coordinates_type())
    }

    /// NULL features (images that could not be featurized) and vectors holding a NaN or an
    /// infinity, which the moments skip too, project to NULL.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [features, projection] = args.args.as_slice() else {
            return exec_err!("{PCA_PROJECT} takes features and a projection");
        };
        let ColumnarValue::Scalar(ScalarValue::Binary(Some(projection))) = projection else {
            return exec_err!("{PCA_PROJECT}: the projection must be a non-NULL Binary constant");
        };
        let projection = Projection::from_bytes(projection).map_err(|e| exec_datafusion_err!("{PCA_PROJECT}: {e}"))?;
        let features = features.to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(project(&projection, &features)?))
    }
}

fn project(projection: &Projection, features: &ArrayRef) -> Result<ArrayRef> {
    let lists = features
        .as_list_opt::<i32>()
        .ok_or_else(|| exec_datafusion_err!("{PCA_PROJECT} needs a list of float32, got {}", features.data_type()))?;
    let (dim, k) = (projection.dim(), projection.n_components());
    // The rows that project, gathered into one matrix: one product for the batch.
    let mut rows = Vec::with_capacity(lists.len());
    let mut values = Vec::with_capacity(lists.len() * dim);
    for row in 0..lists.len() {
        if lists.is_null(row) {
            continue;
        }
        let vector = lists.value(row);
        let vector = vector
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| exec_datafusion_err!("{PCA_PROJECT} needs float32 features, got {}", vector.data_type()))?;
        if vector.len() != dim || vector.null_count() > 0 {
            return exec_err!(
                "{PCA_PROJECT}: a vector has {} values ({} NULL), the PCA {dim}",
                vector.len(),
                vector.null_count()
            );
        }
        if vector.values().iter().all(|v| v.is_finite()) {
            rows.push(row);
            values.extend_from_slice(vector.values());
        }
    }
    let matrix = FeatureMatrix::new(&values, dim).map_err(|e| exec_datafusion_err!("{PCA_PROJECT}: {e}"))?;
    let coordinates = projection.project(matrix).map_err(|e| exec_datafusion_err!("{PCA_PROJECT}: {e}"))?;
    let mut out = ListBuilder::with_capacity(Float64Builder::with_capacity(coordinates.len()), lists.len());
    let mut projected = rows.iter().zip(coordinates.chunks_exact(k)).peekable();
    for row in 0..lists.len() {
        match projected.next_if(|(r, _)| **r == row) {
            Some((_, point)) => out.append_value(point.iter().map(|v| Some(*v))),
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float32Builder, RecordBatch};
    use datafusion::arrow::datatypes::{Float64Type, Schema};
    use datafusion::prelude::{SessionContext, col, lit};
    use fruits_pca::{Moments, Pca};

    use super::*;

    fn features(rows: &[Option<[f32; 2]>]) -> ArrayRef {
        let mut builder = ListBuilder::new(Float32Builder::new());
        for row in rows {
            match row {
                Some(values) => builder.append_value(values.iter().map(|v| Some(*v))),
                None => builder.append_null(),
            }
        }
        Arc::new(builder.finish())
    }

    /// Through a real session, as the PCA stage calls it: the same coordinates as `Pca::project`,
    /// NULL for rows without finite features.
    #[tokio::test]
    async fn projects_like_the_fitted_pca_and_nulls_what_it_cannot_place() {
        let fitted = [1.0f32, 2.0, 2.0, 1.0, 4.0, 5.0, 3.0, 3.5];
        let pca = Pca::from_moments(&Moments::from_rows(FeatureMatrix::new(&fitted, 2).unwrap()).unwrap(), 2).unwrap();
        let expected = pca.project(FeatureMatrix::new(&fitted[..4], 2).unwrap()).unwrap();

        let column = features(&[Some([1.0, 2.0]), None, Some([f32::NAN, 1.0]), Some([2.0, 1.0])]);
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("features", features_type(), true)])),
            vec![column],
        )
        .unwrap();
        let ctx = SessionContext::new();
        let bytes = ScalarValue::Binary(Some(pca.projection().to_bytes()));
        let out = ctx
            .read_batch(batch)
            .unwrap()
            .select(vec![PcaProject::udf().call(vec![col("features"), lit(bytes)]).alias("pc")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let pc = out[0].column(0).as_list::<i32>();
        assert_eq!(pc.null_count(), 2);
        assert!(pc.is_null(1) && pc.is_null(2));
        let point = |row: usize| pc.value(row).as_primitive::<Float64Type>().values().to_vec();
        assert_eq!(point(0), expected[..2]);
        assert_eq!(point(3), expected[2..]);
    }
}
