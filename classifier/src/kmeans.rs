//! Prototypes for the distance scores: k-means within each class, one Lloyd step per pass.
//!
//! Initial prototypes are the training rows of each class with the smallest seeded key hashes
//! (kept during the moments pass: `k` rows per class, whatever the row order), then every
//! optimisation pass assigns each training row to the nearest prototype of its own class and
//! moves the prototypes to the means of their rows. For the cosine metric rows and prototypes
//! are unit vectors (spherical k-means). Memory: the prototypes and one sum per prototype.

use crate::rng::key_hash;
use crate::score::{Metric, ScoreKind, Space, UnknownScore};
use crate::standardize::Standardizer;

/// Stop when a Lloyd step lowers the summed distance by less than this share.
const RELATIVE_IMPROVEMENT: f64 = 1e-7;
/// The hash that picks initial prototypes is independent of the split's.
const INIT_SEED_SALT: u64 = 0x6b6d_6561_6e73_2b2b;

/// The `k` training rows of each class with the smallest init hash, raw.
#[derive(Debug, Clone)]
pub(crate) struct InitialRows {
    seed: u64,
    k: usize,
    per_class: Vec<Vec<(u64, Vec<f32>)>>,
}

impl InitialRows {
    pub(crate) fn new(seed: u64, k: usize, classes: usize) -> Self {
        Self { seed: seed ^ INIT_SEED_SALT, k, per_class: vec![Vec::new(); classes] }
    }

    pub(crate) fn offer(&mut self, class: usize, key: &str, x: &[f32]) {
        if self.k == 0 {
            return;
        }
        let hash = key_hash(key, self.seed);
        let rows = &mut self.per_class[class];
        if rows.len() < self.k {
            rows.push((hash, x.to_vec()));
        } else if let Some(worst) = rows.iter().enumerate().max_by_key(|(_, (h, _))| *h).map(|(i, _)| i)
            && hash < rows[worst].0
        {
            rows[worst] = (hash, x.to_vec());
        }
    }

    /// Each class's rows in hash order, so that a smaller `k` takes a prefix of a larger one.
    fn sorted(&self, class: usize) -> Vec<&[f32]> {
        let mut rows: Vec<&(u64, Vec<f32>)> = self.per_class[class].iter().collect();
        rows.sort_by_key(|(h, _)| *h);
        rows.into_iter().map(|(_, x)| x.as_slice()).collect()
    }
}

/// Maps a raw row into a score's space, in place into `out`.
pub(crate) fn transform(space: Space, metric: Metric, x: &[f32], standardizer: &Standardizer, out: &mut [f32]) {
    match space {
        Space::Raw => out.copy_from_slice(x),
        Space::Standardized => standardizer.apply_into(x, out),
    }
    if metric == Metric::Cosine {
        normalize(out);
    }
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|a| *a = (f64::from(*a) / norm) as f32);
    }
}

/// One prototype score's k-means, advanced one Lloyd step per pass.
#[derive(Debug, Clone)]
pub(crate) struct KMeans {
    pub(crate) kind: ScoreKind,
    space: Space,
    metric: Metric,
    dim: usize,
    /// Row-major prototypes and each one's class.
    prototypes: Vec<f32>,
    classes: Vec<u32>,
    /// `first[c]..first[c + 1]` are class c's prototypes.
    first: Vec<usize>,
    sums: Vec<f64>,
    counts: Vec<u64>,
    objective: f64,
    previous_objective: f64,
    pub(crate) iterations: usize,
    max_iterations: usize,
    pub(crate) converged: bool,
    scratch: Vec<f32>,
}

impl KMeans {
    /// `None` for scores without prototypes.
    pub(crate) fn new(
        kind: ScoreKind,
        init: &InitialRows,
        standardizer: &Standardizer,
        max_iterations: usize,
    ) -> Option<Self> {
        let ScoreKind::Prototypes { space, metric, per_class } = kind else { return None };
        let dim = standardizer.dim();
        let (mut prototypes, mut classes, mut first) = (Vec::new(), Vec::new(), vec![0]);
        for class in 0..init.per_class.len() {
            for row in init.sorted(class).into_iter().take(per_class) {
                let start = prototypes.len();
                prototypes.resize(start + dim, 0.0);
                transform(space, metric, row, standardizer, &mut prototypes[start..]);
                classes.push(class as u32);
            }
            first.push(classes.len());
        }
        let n = classes.len();
        Some(Self {
            kind,
            space,
            metric,
            dim,
            prototypes,
            classes,
            first,
            sums: vec![0.0; n * dim],
            counts: vec![0; n],
            objective: 0.0,
            previous_objective: f64::INFINITY,
            iterations: 0,
            max_iterations,
            converged: max_iterations == 0,
            scratch: vec![0.0; dim],
        })
    }

    /// Assigns one training row of `class` to its nearest prototype.
    pub(crate) fn add(&mut self, class: usize, x: &[f32], standardizer: &Standardizer) {
        if self.converged {
            return;
        }
        let mut v = std::mem::take(&mut self.scratch);
        transform(self.space, self.metric, x, standardizer, &mut v);
        let (mut best, mut best_distance) = (usize::MAX, f64::INFINITY);
        for j in self.first[class]..self.first[class + 1] {
            let p = &self.prototypes[j * self.dim..(j + 1) * self.dim];
            let distance = match self.metric {
                Metric::Cosine => 1.0 - p.iter().zip(&v).map(|(&a, &b)| a * b).sum::<f32>() as f64,
                Metric::Euclidean => p.iter().zip(&v).map(|(&a, &b)| (a - b) * (a - b)).sum::<f32>() as f64,
            };
            if distance < best_distance {
                (best, best_distance) = (j, distance);
            }
        }
        if best != usize::MAX {
            self.objective += best_distance;
            self.counts[best] += 1;
            for (s, &a) in self.sums[best * self.dim..(best + 1) * self.dim].iter_mut().zip(&v) {
                *s += f64::from(a);
            }
        }
        self.scratch = v;
    }

    /// Moves the prototypes to their rows' means (an empty cluster keeps its prototype).
    pub(crate) fn end_pass(&mut self) {
        if self.converged {
            return;
        }
        for (j, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                let p = &mut self.prototypes[j * self.dim..(j + 1) * self.dim];
                for (p, s) in p.iter_mut().zip(&self.sums[j * self.dim..(j + 1) * self.dim]) {
                    *p = (s / count as f64) as f32;
                }
                if self.metric == Metric::Cosine {
                    normalize(p);
                }
            }
        }
        self.iterations += 1;
        let improvement = self.previous_objective - self.objective;
        self.converged = self.iterations >= self.max_iterations
            || improvement <= RELATIVE_IMPROVEMENT * self.objective.abs().max(f64::MIN_POSITIVE);
        self.previous_objective = self.objective;
        self.objective = 0.0;
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    pub(crate) fn score(&self) -> UnknownScore {
        UnknownScore { kind: self.kind, prototypes: self.prototypes.clone(), prototype_classes: self.classes.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn finds_the_modes_of_a_class() {
        // One class with two well-separated modes; two prototypes must land on them.
        let standardizer = Standardizer { mean: vec![0.0; 2], inv_std: vec![1.0; 2] };
        let mut rng = SplitMix64::new(3);
        let rows: Vec<(String, [f32; 2])> = (0..400)
            .map(|i| {
                let centre = if i % 2 == 0 { [10.0, 0.0] } else { [0.0, 10.0] };
                let x = [centre[0] + rng.next_gaussian() as f32 * 0.1, centre[1] + rng.next_gaussian() as f32 * 0.1];
                (format!("row{i}"), x)
            })
            .collect();
        let mut init = InitialRows::new(9, 2, 1);
        rows.iter().for_each(|(k, x)| init.offer(0, k, x));
        let kind = ScoreKind::Prototypes { space: Space::Raw, metric: Metric::Euclidean, per_class: 2 };
        let mut kmeans = KMeans::new(kind, &init, &standardizer, 20).unwrap();
        while !kmeans.converged {
            rows.iter().for_each(|(_, x)| kmeans.add(0, x, &standardizer));
            kmeans.end_pass();
        }
        let score = kmeans.score();
        let mut ps: Vec<[f32; 2]> = score.prototypes.chunks(2).map(|p| [p[0], p[1]]).collect();
        ps.sort_by(|a, b| a[0].total_cmp(&b[0]));
        // If both initial rows came from one mode, Lloyd still splits them: check both modes.
        assert!((ps[0][1] - 10.0).abs() < 0.1 && (ps[1][0] - 10.0).abs() < 0.1, "{ps:?}");
        assert!(kmeans.iterations < 20);
    }
}
