//! Leave-classes-out evaluation of the unknown scores: train without some labels, then ask how
//! well each score tells their rows from the known validation rows.
//!
//! All rotations train side by side on the same passes (one read of the rows feeds every
//! trainer), so evaluating five pairs costs the I/O of one training and the compute of five.

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::score::ScoreKind;
use crate::split::SplitCounter;
use crate::trainer::{Pass, PassKind, Row, ScoreEvaluation, TrainOptions, Trainer, for_each_row};

/// Which label sets to hold out, one trainer each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOut {
    /// Labels (sorted) 0+1, 2+3, ...: every label held out once (a last odd label goes with
    /// the first).
    DisjointPairs,
    /// Every pair of labels: `n (n - 1) / 2` trainers.
    AllPairs,
    /// These label sets.
    Sets(Vec<Vec<String>>),
}

impl HoldOut {
    fn sets(&self, labels: &[String]) -> Vec<Vec<String>> {
        match self {
            HoldOut::DisjointPairs => {
                let mut sets: Vec<Vec<String>> = labels.chunks(2).map(|c| c.to_vec()).collect();
                if let Some(last) = sets.last_mut().filter(|s| s.len() == 1 && labels.len() > 2) {
                    last.push(labels[0].clone());
                }
                sets
            }
            HoldOut::AllPairs => {
                let mut sets = Vec::new();
                for (i, a) in labels.iter().enumerate() {
                    for b in &labels[i + 1..] {
                        sets.push(vec![a.clone(), b.clone()]);
                    }
                }
                sets
            }
            HoldOut::Sets(sets) => sets.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaveOutOptions {
    /// Training options of every rotation; `score` and `extra_scores` are replaced by `scores`.
    pub train: TrainOptions,
    pub hold_out: HoldOut,
    /// The scores to compare.
    pub scores: Vec<ScoreKind>,
}

impl Default for LeaveOutOptions {
    fn default() -> Self {
        Self { train: TrainOptions::default(), hold_out: HoldOut::DisjointPairs, scores: ScoreKind::candidates() }
    }
}

/// One rotation: the held-out labels, the accuracy on the remaining labels' validation rows,
/// and every score's AUROC and rejected share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaveOutRow {
    pub held_out: Vec<String>,
    pub accuracy: f64,
    pub held_out_rows: u64,
    pub scores: Vec<ScoreEvaluation>,
}

/// A score over all rotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub score: String,
    pub mean_auroc: f64,
    pub min_auroc: f64,
    pub mean_rejected: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaveOutReport {
    pub rows: Vec<LeaveOutRow>,
    /// Best mean AUROC first.
    pub summary: Vec<ScoreSummary>,
}

impl LeaveOutReport {
    /// The summary of the score with the best mean AUROC (ties: the most rejected); `None` when
    /// no rotation had held-out rows to measure.
    pub fn best(&self) -> Option<&ScoreSummary> {
        self.summary.iter().find(|s| s.mean_auroc.is_finite())
    }

    /// A plain-text table, one line per rotation and score, then the summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self.rows.iter().map(|r| r.held_out.join(" + ").len()).max().unwrap_or(8).max(8);
        let score_width = self.summary.iter().map(|s| s.score.len()).max().unwrap_or(5).max(5);
        out.push_str(&format!(
            "{:<width$}  {:<score_width$}  {:>6}  {:>8}\n",
            "held out", "score", "AUROC", "rejected"
        ));
        for row in &self.rows {
            for s in &row.scores {
                out.push_str(&format!(
                    "{:<width$}  {:<score_width$}  {:>6.4}  {:>7.1} %\n",
                    row.held_out.join(" + "),
                    s.score,
                    s.auroc.unwrap_or(f64::NAN),
                    100.0 * s.rejected.unwrap_or(f64::NAN)
                ));
            }
        }
        out.push_str(&format!(
            "{:<width$}  {:<score_width$}  {:>6}  {:>8}  {:>6}\n",
            "mean", "score", "AUROC", "rejected", "min"
        ));
        for s in &self.summary {
            out.push_str(&format!(
                "{:<width$}  {:<score_width$}  {:>6.4}  {:>7.1} %  {:>6.4}\n",
                "",
                s.score,
                s.mean_auroc,
                100.0 * s.mean_rejected,
                s.min_auroc
            ));
        }
        out
    }
}

/// The evaluation, driven like a [`Trainer`]: `next_pass`, `feed`, `end_pass`, `finish`.
pub struct LeaveClassesOut {
    options: LeaveOutOptions,
    pass: usize,
    open: bool,
    /// The shared split pass, until it ends.
    counter: Option<SplitCounter>,
    rows: u64,
    dim: usize,
    trainers: Vec<Trainer>,
}

impl std::fmt::Debug for LeaveClassesOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaveClassesOut").field("pass", &self.pass).field("trainers", &self.trainers.len()).finish()
    }
}

impl LeaveClassesOut {
    pub fn new(options: LeaveOutOptions) -> Result<Self> {
        if options.scores.is_empty() {
            return Err(ClassifierError::InvalidOption { option: "scores", message: "no score to evaluate".into() });
        }
        let mut train = options.train.clone();
        train.score = options.scores[0];
        train.extra_scores = options.scores[1..].to_vec();
        train.validate()?;
        let seed = train.seed;
        Ok(Self {
            options: LeaveOutOptions { train, ..options },
            pass: 0,
            open: false,
            counter: Some(SplitCounter::new(seed)),
            rows: 0,
            dim: 0,
            trainers: Vec::new(),
        })
    }

    /// The pass to run next, `None` when every rotation is done.
    pub fn next_pass(&mut self) -> Option<Pass> {
        if self.counter.is_some() {
            self.open = true;
            return Some(Pass { index: 0, kind: PassKind::Split });
        }
        let mut kind = None;
        for trainer in self.trainers.iter_mut().filter(|t| !t.is_done()) {
            if let Some(pass) = trainer.next_pass() {
                kind = Some(kind.map_or(pass.kind, |k: PassKind| least_advanced(k, pass.kind)));
            }
        }
        self.open = kind.is_some();
        kind.map(|kind| Pass { index: self.pass, kind })
    }

    pub fn feed<'a>(&mut self, rows: impl IntoIterator<Item = Row<'a>>) -> Result<()> {
        for row in rows {
            self.feed_row(row.key, row.label, row.features)?;
        }
        Ok(())
    }

    pub fn feed_columns<K: AsRef<str>, L: AsRef<str>>(
        &mut self,
        keys: &[K],
        labels: &[L],
        features: &[f32],
        dim: usize,
    ) -> Result<()> {
        for_each_row(keys, labels, features, dim, |key, label, x| self.feed_row(key, label, x))
    }

    pub fn feed_row(&mut self, key: &str, label: &str, features: &[f32]) -> Result<()> {
        if !self.open {
            return Err(ClassifierError::protocol("feed", "outside a pass of the leave-classes-out evaluation"));
        }
        if let Some(counter) = &mut self.counter {
            // The checks every trainer would make, once.
            if self.dim == 0 {
                self.dim = features.len();
            }
            if features.is_empty() || features.len() != self.dim {
                return Err(ClassifierError::DimensionMismatch {
                    key: key.to_owned(),
                    expected: self.dim,
                    got: features.len(),
                });
            }
            if let Some((index, &value)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(ClassifierError::NonFinite { key: key.to_owned(), index, value });
            }
            if label.is_empty() {
                return Err(ClassifierError::EmptyLabel { key: key.to_owned() });
            }
            counter.add(key, label);
            self.rows += 1;
            return Ok(());
        }
        for trainer in self.trainers.iter_mut().filter(|t| !t.is_done()) {
            trainer.feed_row(key, label, features)?;
        }
        Ok(())
    }

    pub fn end_pass(&mut self) -> Result<()> {
        if !self.open {
            return Err(ClassifierError::protocol("end_pass", "outside a pass of the leave-classes-out evaluation"));
        }
        if let Some(counter) = self.counter.take() {
            if self.rows == 0 {
                return Err(ClassifierError::NoRows);
            }
            for held_out in self.options.hold_out.sets(&counter.labels()) {
                let options = TrainOptions { held_out_labels: held_out, ..self.options.train.clone() };
                self.trainers.push(Trainer::after_split(options, &counter, self.rows, self.dim)?);
            }
        } else {
            for trainer in self.trainers.iter_mut().filter(|t| !t.is_done()) {
                trainer.end_pass()?;
            }
        }
        self.open = false;
        self.pass += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<LeaveOutReport> {
        let mut rows = Vec::with_capacity(self.trainers.len());
        for trainer in self.trainers {
            let held_out = trainer.options().held_out_labels.clone();
            let trained = trainer.finish()?;
            let held_out_rows =
                trained.split.labels.iter().filter(|l| held_out.contains(&l.label)).map(|l| l.rows).sum();
            rows.push(LeaveOutRow {
                held_out,
                accuracy: trained.metrics.accuracy,
                held_out_rows,
                scores: trained.scores,
            });
        }
        if rows.is_empty() {
            return Err(ClassifierError::protocol("finish", "before the first pass ended"));
        }
        let mut summary: Vec<ScoreSummary> = rows[0]
            .scores
            .iter()
            .enumerate()
            .map(|(i, first)| {
                let aurocs: Vec<f64> = rows.iter().filter_map(|r| r.scores.get(i).and_then(|s| s.auroc)).collect();
                let rejected: Vec<f64> = rows.iter().filter_map(|r| r.scores.get(i).and_then(|s| s.rejected)).collect();
                ScoreSummary {
                    score: first.score.clone(),
                    mean_auroc: mean(&aurocs),
                    min_auroc: aurocs.iter().copied().fold(f64::INFINITY, f64::min),
                    mean_rejected: mean(&rejected),
                }
            })
            .collect();
        summary.sort_by(|a, b| b.mean_auroc.total_cmp(&a.mean_auroc).then(b.mean_rejected.total_cmp(&a.mean_rejected)));
        Ok(LeaveOutReport { rows, summary })
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 }
}

fn least_advanced(a: PassKind, b: PassKind) -> PassKind {
    let rank = |k: PassKind| match k {
        PassKind::Split => 0,
        PassKind::Moments => 1,
        PassKind::Optimize => 2,
        PassKind::Score => 3,
    };
    if rank(a) <= rank(b) { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_out_sets() {
        let labels: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let pairs = HoldOut::DisjointPairs.sets(&labels);
        assert_eq!(pairs, vec![vec!["a", "b"], vec!["c", "d"], vec!["e", "a"]]);
        assert_eq!(HoldOut::AllPairs.sets(&labels).len(), 10);
    }
}

#[cfg(test)]
mod evaluation_tests {
    use super::*;
    use crate::testing::{Rows, clusters};

    fn evaluate(options: LeaveOutOptions, rows: &Rows) -> LeaveOutReport {
        let mut eval = LeaveClassesOut::new(options).unwrap();
        while eval.next_pass().is_some() {
            eval.feed_columns(&rows.keys, &rows.labels, &rows.features, rows.dim).unwrap();
            eval.end_pass().unwrap();
        }
        eval.finish().unwrap()
    }

    #[test]
    fn held_out_clusters_are_rejected() {
        let rows = clusters(6, 150, 16, 2.0, 11);
        let report = evaluate(LeaveOutOptions::default(), &rows);
        assert_eq!(report.rows.len(), 3);
        assert_eq!(report.rows[1].held_out, ["class 2", "class 3"]);
        assert_eq!(report.rows[1].held_out_rows, 300);
        assert!(report.rows.iter().all(|r| r.accuracy > 0.95 && r.scores.len() == ScoreKind::candidates().len()));
        // Unit-variance clusters whose centres are ~11 apart: distances separate unknown ones.
        let best = report.best().unwrap();
        assert!(best.mean_auroc > 0.99 && best.mean_rejected > 0.9, "{best:?}");
        let centroid = report.summary.iter().find(|s| s.score == "euclidean-raw-k1").unwrap();
        assert!(centroid.mean_auroc > 0.99, "{centroid:?}");
        let table = report.table();
        assert_eq!(table.lines().count(), 1 + 3 * 9 + 1 + 9, "{table}");
        // The same evaluation again: the same numbers.
        assert_eq!(evaluate(LeaveOutOptions::default(), &rows), report);
    }
}
