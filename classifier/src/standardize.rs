//! Per-feature standardisation, `z = (x - mean) / std`, estimated in one streaming pass.
//!
//! Logistic regression by gradient descent converges in far fewer passes on standardised
//! features (MobileNetV2's pooled ReLU6 activations range from always-zero to a few units), and
//! Euclidean distances in standardised space weigh every feature alike.

use serde::{Deserialize, Serialize};

/// A feature whose standard deviation is below this is constant on the training rows: it is
/// centred but not scaled, so that a feature dead in training cannot blow up at prediction.
pub const MIN_STD: f64 = 1e-6;

/// Count, shifted sum and shifted sum of squares per feature, in f64. The shift (the first
/// row) keeps `sum((x - shift)^2) - sum(x - shift)^2 / n` from cancelling catastrophically.
#[derive(Debug, Clone)]
pub(crate) struct MomentsAccumulator {
    count: u64,
    shift: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl MomentsAccumulator {
    pub(crate) fn new(dim: usize) -> Self {
        Self { count: 0, shift: Vec::new(), sum: vec![0.0; dim], sum_sq: vec![0.0; dim] }
    }

    pub(crate) fn add(&mut self, x: &[f32]) {
        if self.shift.is_empty() {
            self.shift = x.iter().map(|&v| f64::from(v)).collect();
        }
        for (((&v, s), sum), sq) in x.iter().zip(&self.shift).zip(&mut self.sum).zip(&mut self.sum_sq) {
            let d = f64::from(v) - s;
            *sum += d;
            *sq += d * d;
        }
        self.count += 1;
    }

    pub(crate) fn finish(&self) -> Standardizer {
        let n = self.count.max(1) as f64;
        let mut mean = Vec::with_capacity(self.sum.len());
        let mut inv_std = Vec::with_capacity(self.sum.len());
        for (i, (&sum, &sq)) in self.sum.iter().zip(&self.sum_sq).enumerate() {
            let shift = self.shift.get(i).copied().unwrap_or(0.0);
            let var = ((sq - sum * sum / n) / n).max(0.0);
            let std = var.sqrt();
            mean.push((shift + sum / n) as f32);
            inv_std.push(if std < MIN_STD { 1.0 } else { (1.0 / std) as f32 });
        }
        Standardizer { mean, inv_std }
    }
}

/// `z = (x - mean) * inv_std`, in f32 exactly as the ONNX graph's `Sub` and `Mul` compute it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

impl Standardizer {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    pub fn apply_into(&self, x: &[f32], out: &mut [f32]) {
        for (((o, &v), &m), &s) in out.iter_mut().zip(x).zip(&self.mean).zip(&self.inv_std) {
            *o = (v - m) * s;
        }
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        self.apply_into(x, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_survive_a_large_offset() {
        let mut acc = MomentsAccumulator::new(3);
        for i in 0..1000 {
            let v = (i % 10) as f32;
            acc.add(&[1e4 + v, v * 2.0, 5.0]);
        }
        let s = acc.finish();
        assert!((s.mean[0] - 10_004.5).abs() < 1e-2 && (s.mean[1] - 9.0).abs() < 1e-5, "{:?}", s.mean);
        let std = 8.25f32.sqrt(); // of 0..9
        assert!((1.0 / s.inv_std[0] - std).abs() < 1e-4 && (1.0 / s.inv_std[1] - 2.0 * std).abs() < 1e-4);
        assert_eq!(s.inv_std[2], 1.0, "a constant feature is not scaled");
        assert_eq!(s.apply(&[5.0, 9.0, 5.0])[1..], [0.0, 0.0]);
    }
}
