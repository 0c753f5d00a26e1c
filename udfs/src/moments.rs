//! `feature_moments(features)`: the count, mean and scatter matrix of feature vectors as a
//! DataFusion aggregate, so a PCA over more rows than one process holds can be fitted from what
//! the executors computed. Only the `d x d` state (6.6 MB at d = 1,280) crosses the network, once
//! per task, whatever the number of rows.
//!
//! `merge_feature_moments(state)` combines states that an earlier step produced: the features
//! write emits one per task (its rows are gone once written), and a final aggregate merges them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};
use fruits_pca::{FeatureMatrix, Moments, PcaError};

use crate::udf::features_type;

/// Name of the aggregate over feature vectors.
pub const FEATURE_MOMENTS: &str = "feature_moments";
/// Name of the aggregate over states of [`FEATURE_MOMENTS`].
pub const MERGE_FEATURE_MOMENTS: &str = "merge_feature_moments";

/// Rows buffered before they are added: one row at a time would make every update a rank-1
/// `d x d` product; blocks let the matrix product run at full speed.
const PENDING_ROWS: usize = 256;

/// A [`Moments`] state as bytes: the little-endian `f64`s of [`Moments::to_flat`].
pub fn encode_moments(moments: &Moments) -> Vec<u8> {
    moments.to_flat().iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The inverse of [`encode_moments`]; the bytes may come from another process, so the shape and
/// values are checked.
pub fn decode_moments(bytes: &[u8]) -> Result<Moments, PcaError> {
    if bytes.len() % 8 != 0 {
        return Err(PcaError::InvalidState(format!("{} bytes is not a whole number of f64", bytes.len())));
    }
    let flat: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    Moments::from_flat(&flat)
}

/// Accumulates [`Moments`] from feature lists or from encoded states; what the aggregate
/// functions and the features write use alike.
#[derive(Debug, Default)]
pub(crate) struct MomentsAccumulator {
    moments: Option<Moments>,
    /// Rows not added yet, row-major.
    pending: Vec<f32>,
    dim: usize,
}

impl MomentsAccumulator {
    /// Adds every non-NULL vector of a `List<Float32>` column; NULL rows (images that could not
    /// be featurized) are skipped, and so are vectors holding a NaN or an infinity: one bad
    /// vector must not fail the task that writes a thousand good ones. The count of the moments
    /// then falls short of the featurized rows, which readers check.
    pub fn add_features(&mut self, features: &ListArray) -> Result<()> {
        for row in 0..features.len() {
            if features.is_null(row) {
                continue;
            }
            let vector = features.value(row);
            let values = vector.as_primitive_opt::<Float32Type>().ok_or_else(|| {
                exec_datafusion_err!("{FEATURE_MOMENTS} needs float32 features, got {}", vector.data_type())
            })?;
            if self.dim == 0 {
                self.dim = values.len();
            }
            if values.len() != self.dim || values.null_count() > 0 {
                return exec_err!(
                    "{FEATURE_MOMENTS}: a vector has {} values ({} NULL), earlier ones {}",
                    values.len(),
                    values.null_count(),
                    self.dim
                );
            }
            if !values.values().iter().all(|v| v.is_finite()) {
                continue;
            }
            self.pending.extend_from_slice(values.values());
            if self.pending.len() >= PENDING_ROWS * self.dim {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Merges a state produced by [`MomentsAccumulator::finish`] elsewhere.
    pub fn add_state(&mut self, bytes: &[u8]) -> Result<()> {
        let other = decode_moments(bytes).map_err(|e| exec_datafusion_err!("{MERGE_FEATURE_MOMENTS}: {e}"))?;
        self.flush()?;
        match &mut self.moments {
            Some(moments) => moments.merge(&other).map_err(|e| exec_datafusion_err!("{MERGE_FEATURE_MOMENTS}: {e}"))?,
            None => {
                self.dim = other.dim();
                self.moments = Some(other);
            }
        }
        Ok(())
    }

    /// The state so far, encoded; `None` when no row was seen.
    pub fn finish(&mut self) -> Result<Option<Vec<u8>>> {
        self.flush()?;
        Ok(self.moments.as_ref().map(encode_moments))
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows =
            FeatureMatrix::new(&self.pending, self.dim).map_err(|e| exec_datafusion_err!("{FEATURE_MOMENTS}: {e}"))?;
        let moments = match &mut self.moments {
            Some(moments) => moments,
            None => {
                self.moments.insert(Moments::new(self.dim).map_err(|e| exec_datafusion_err!("{FEATURE_MOMENTS}: {e}"))?)
            }
        };
        moments.add_rows(rows).map_err(|e| exec_datafusion_err!("{FEATURE_MOMENTS}: {e}"))?;
        self.pending.clear();
        Ok(())
    }

    fn merge_states(&mut self, states: &ArrayRef) -> Result<()> {
        let states = states.as_binary_opt::<i32>().ok_or_else(|| {
            exec_datafusion_err!("{MERGE_FEATURE_MOMENTS} needs Binary states, got {}", states.data_type())
        })?;
        for state in states.iter().flatten() {
            self.add_state(state)?;
        }
        Ok(())
    }
}

/// What the aggregate's input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Input {
    /// `List<Float32>` feature vectors.
    Features,
    /// Binary states from [`MomentsAccumulator::finish`].
    States,
}

/// The aggregate behind [`FEATURE_MOMENTS`] and [`MERGE_FEATURE_MOMENTS`]; both return the
/// encoded state (Binary, NULL over no rows), which [`decode_moments`] reads.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct FeatureMoments {
    input: Input,
    signature: Signature,
}

impl FeatureMoments {
    /// Both aggregates.
    pub(crate) fn udafs() -> [AggregateUDF; 2] {
        [
            AggregateUDF::new_from_impl(Self {
                input: Input::Features,
                signature: Signature::exact(vec![features_type()], Volatility::Immutable),
            }),
            Self::merge(),
        ]
    }

    /// [`MERGE_FEATURE_MOMENTS`].
    pub(crate) fn merge() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            input: Input::States,
            signature: Signature::exact(vec![DataType::Binary], Volatility::Immutable),
        })
    }
}

impl AggregateUDFImpl for FeatureMoments {
    fn name(&self) -> &str {
        match self.input {
            Input::Features => FEATURE_MOMENTS,
            Input::States => MERGE_FEATURE_MOMENTS,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(UdafAccumulator { input: self.input, inner: MomentsAccumulator::default() }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}[moments]", args.name), DataType::Binary, true))])
    }
}

#[derive(Debug)]
struct UdafAccumulator {
    input: Input,
    inner: MomentsAccumulator,
}

impl Accumulator for UdafAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [values] = values else {
            return exec_err!("{FEATURE_MOMENTS} takes one argument");
        };
        match self.input {
            Input::Features => {
                let lists = values.as_list_opt::<i32>().ok_or_else(|| {
                    exec_datafusion_err!("{FEATURE_MOMENTS} needs a list of float32, got {}", values.data_type())
                })?;
                self.inner.add_features(lists)
            }
            Input::States => self.inner.merge_states(values),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [states] = states else {
            return exec_err!("{FEATURE_MOMENTS} has one state column");
        };
        self.inner.merge_states(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(self.inner.finish()?))
    }

    fn size(&self) -> usize {
        let state = self.inner.moments.as_ref().map_or(0, |m| (m.dim() * (m.dim() + 2)) * size_of::<f64>());
        size_of::<Self>() + state + self.inner.pending.capacity() * size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{BinaryArray, Float32Builder, ListBuilder, RecordBatch};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::prelude::{SessionContext, col};

    use super::*;

    /// `rows` vectors of `dim` values, the `i`th row at `null_every` multiples being NULL.
    fn features(rows: usize, dim: usize, offset: usize, null_every: usize) -> (ListArray, Vec<f32>) {
        let mut builder = ListBuilder::new(Float32Builder::new());
        let mut kept = Vec::new();
        for r in 0..rows {
            if null_every > 0 && r % null_every == 0 {
                builder.append_null();
                continue;
            }
            for c in 0..dim {
                let v = (((r + offset) * 7 + c * 13) % 17) as f32 * 0.25 + c as f32;
                builder.values().append_value(v);
                kept.push(v);
            }
            builder.append(true);
        }
        (builder.finish(), kept)
    }

    fn assert_close(a: &Moments, b: &Moments) {
        assert_eq!(a.n_samples(), b.n_samples());
        let (fa, fb) = (a.to_flat(), b.to_flat());
        let worst = fa.iter().zip(&fb).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-9, "largest difference {worst}");
    }

    #[test]
    fn the_accumulator_skips_nulls_and_equals_moments_of_the_rows() {
        let (list, kept) = features(700, 5, 0, 9);
        let mut acc = MomentsAccumulator::default();
        acc.add_features(&list).unwrap();
        let state = decode_moments(&acc.finish().unwrap().unwrap()).unwrap();
        let expected = Moments::from_rows(FeatureMatrix::new(&kept, 5).unwrap()).unwrap();
        assert_eq!(state.n_samples(), 700 - 78);
        assert_close(&state, &expected);
    }

    #[test]
    fn vectors_that_are_not_finite_are_left_out() {
        let mut builder = ListBuilder::new(Float32Builder::new());
        for row in [[1.0, 2.0], [f32::NAN, 2.0], [3.0, 5.0], [f32::INFINITY, 0.0]] {
            builder.values().append_slice(&row);
            builder.append(true);
        }
        let mut acc = MomentsAccumulator::default();
        acc.add_features(&builder.finish()).unwrap();
        let state = decode_moments(&acc.finish().unwrap().unwrap()).unwrap();
        assert_eq!(state.n_samples(), 2);
        assert_eq!(state.mean(), &[2.0, 3.5]);
    }

    #[test]
    fn ragged_vectors_are_an_error_that_says_so() {
        let mut builder = ListBuilder::new(Float32Builder::new());
        builder.values().append_slice(&[1.0, 2.0]);
        builder.append(true);
        builder.values().append_slice(&[1.0]);
        builder.append(true);
        let error = MomentsAccumulator::default().add_features(&builder.finish()).unwrap_err().to_string();
        assert!(error.contains("a vector has 1 values"), "{error}");
    }

    #[test]
    fn corrupt_states_are_refused() {
        let error = MomentsAccumulator::default().add_state(&[1, 2, 3]).unwrap_err().to_string();
        assert!(error.contains("not a whole number of f64"), "{error}");
    }

    /// Both aggregates in a real DataFusion plan over several partitions: partial states,
    /// merged, equal the moments of all rows; merging the per-partition states again gives the
    /// same.
    #[tokio::test]
    async fn the_aggregates_in_sql_equal_the_moments_of_all_rows() {
        let ctx = SessionContext::new();
        for udaf in FeatureMoments::udafs() {
            ctx.register_udaf(udaf);
        }
        let schema = Arc::new(Schema::new(vec![Field::new("features", features_type(), true)]));
        let mut partitions = Vec::new();
        let mut all = Vec::new();
        let mut states = Vec::new();
        for p in 0..3 {
            let (list, kept) = features(300 + p * 50, 4, p * 1000, 7);
            let mut acc = MomentsAccumulator::default();
            acc.add_features(&list).unwrap();
            states.push(acc.finish().unwrap());
            all.extend(kept);
            partitions.push(vec![RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(list)]).unwrap()]);
        }
        states.push(None);
        let table = datafusion::datasource::MemTable::try_new(schema, partitions).unwrap();
        let expected = Moments::from_rows(FeatureMatrix::new(&all, 4).unwrap()).unwrap();

        let [feature_moments, merge_feature_moments] = FeatureMoments::udafs();
        let df = ctx.read_table(Arc::new(table)).unwrap();
        assert_close(&aggregate(df, &feature_moments, "features").await, &expected);

        let states: Arc<BinaryArray> = Arc::new(states.iter().map(|s| s.as_deref()).collect());
        let schema = Arc::new(Schema::new(vec![Field::new("moments", DataType::Binary, true)]));
        let df = ctx.read_batch(RecordBatch::try_new(schema, vec![states]).unwrap()).unwrap();
        assert_close(&aggregate(df, &merge_feature_moments, "moments").await, &expected);
    }

    /// `udaf(column)` over all of `df`, decoded.
    async fn aggregate(df: datafusion::dataframe::DataFrame, udaf: &AggregateUDF, column: &str) -> Moments {
        let batches = df.aggregate(vec![], vec![udaf.call(vec![col(column)])]).unwrap().collect().await.unwrap();
        decode_moments(batches[0].column(0).as_binary::<i32>().value(0)).unwrap()
    }
}
