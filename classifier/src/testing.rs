//! Synthetic data for the unit tests: seeded Gaussian clusters, and a driver that runs the
//! pass protocol over rows held in memory.

use crate::error::Result;
use crate::rng::SplitMix64;
use crate::trainer::{Row, TrainOptions, TrainedModel, Trainer};

pub(crate) struct Rows {
    pub keys: Vec<String>,
    pub labels: Vec<String>,
    pub features: Vec<f32>,
    pub dim: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn row(&self, i: usize) -> Row<'_> {
        Row { key: &self.keys[i], label: &self.labels[i], features: &self.features[i * self.dim..(i + 1) * self.dim] }
    }

    /// The rows in a seeded random order (as a different file layout would give them).
    pub fn shuffled(&self, seed: u64) -> Rows {
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = SplitMix64::new(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        Rows {
            keys: order.iter().map(|&i| self.keys[i].clone()).collect(),
            labels: order.iter().map(|&i| self.labels[i].clone()).collect(),
            features: order.iter().flat_map(|&i| self.row(i).features.to_vec()).collect(),
            dim: self.dim,
        }
    }
}

/// `classes` Gaussian clusters of `per_class` rows each (sorted by class, as files per folder
/// are): centres drawn with spread `separation`, unit noise.
pub(crate) fn clusters(classes: usize, per_class: usize, dim: usize, separation: f64, seed: u64) -> Rows {
    let mut rng = SplitMix64::new(seed);
    let centres: Vec<Vec<f64>> =
        (0..classes).map(|_| (0..dim).map(|_| rng.next_gaussian() * separation).collect()).collect();
    let mut rows = Rows { keys: Vec::new(), labels: Vec::new(), features: Vec::new(), dim };
    for (c, centre) in centres.iter().enumerate() {
        for i in 0..per_class {
            rows.keys.push(format!("data/class {c}/{i}_100.jpg"));
            rows.labels.push(format!("class {c}"));
            rows.features.extend(centre.iter().map(|&m| (m + rng.next_gaussian()) as f32));
        }
    }
    rows
}

/// Runs every pass the trainer asks for over `rows`, fed in batches of 64.
pub(crate) fn train(options: TrainOptions, rows: &Rows) -> Result<TrainedModel> {
    let mut trainer = Trainer::new(options)?;
    while trainer.next_pass().is_some() {
        for start in (0..rows.len()).step_by(64) {
            trainer.feed((start..rows.len().min(start + 64)).map(|i| rows.row(i)))?;
        }
        trainer.end_pass()?;
    }
    trainer.finish()
}
