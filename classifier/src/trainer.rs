//! Streaming training: the caller pushes every row through each pass the trainer asks for.
//!
//! ```text
//! let mut trainer = Trainer::new(options)?;
//! while let Some(pass) = trainer.next_pass() {
//!     for batch in read_all_rows() { trainer.feed(batch)?; }
//!     trainer.end_pass()?;
//! }
//! let trained = trainer.finish()?;
//! ```
//!
//! Passes, in order: [`PassKind::Split`] (labels, dimension, the per-label split histogram),
//! [`PassKind::Moments`] (mean and standard deviation of the training rows, initial
//! prototypes), [`PassKind::Optimize`] as many times as L-BFGS and k-means need (one loss and
//! gradient evaluation of the logistic regression and one Lloyd step per pass), and
//! [`PassKind::Score`] (predictions and unknown scores of the validation rows, the threshold).
//! Every pass must see the same rows, in any order; the same rows in the same order and the
//! same seed give bit-identical models. Memory does not grow with the rows except for one
//! score per validation row and candidate score.

use crate::error::{ClassifierError, Result};
use crate::kmeans::{InitialRows, KMeans};
use crate::lbfgs::{Lbfgs, Status};
use crate::metrics::{ClassMetrics, ConfusionMatrix, Metrics, TrainingSummary, UnknownMetrics};
use crate::model::{LinearHead, MODEL_FORMAT_VERSION, Model};
use crate::score::{ScoreKind, UnknownScore, auroc, calibrate_threshold};
use crate::split::{SplitCounter, ValidationSplit};
use crate::standardize::{MomentsAccumulator, Standardizer};

/// How to train. [`Default`] is what reaches 0.99+ validation accuracy on the sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Decides the split and the initial prototypes.
    pub seed: u64,
    /// Share of each label's rows held out for validation, in (0, 1).
    pub validation_fraction: f64,
    /// L2 penalty `l2 / 2 * |W|^2` on the weights (not the biases), added to the mean loss.
    pub l2: f64,
    /// Most loss-and-gradient passes of L-BFGS.
    pub max_optimizer_passes: usize,
    /// L-BFGS stops when no gradient component exceeds this.
    pub gradient_tolerance: f64,
    /// Curvature pairs L-BFGS remembers.
    pub lbfgs_memory: usize,
    /// The unknown score the model ships.
    pub score: ScoreKind,
    /// More scores to evaluate beside [`Self::score`] (reported, not shipped).
    pub extra_scores: Vec<ScoreKind>,
    /// Most Lloyd steps of the prototype k-means.
    pub kmeans_iterations: usize,
    /// Share of known validation rows the unknown threshold keeps, in (0, 1].
    pub keep_known: f64,
    /// Labels left out of training altogether; their rows are scored as unknowns, which gives
    /// [`ScoreEvaluation::auroc`] and [`ScoreEvaluation::rejected`].
    pub held_out_labels: Vec<String>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            validation_fraction: 0.2,
            l2: 1e-3,
            max_optimizer_passes: 100,
            gradient_tolerance: 1e-5,
            lbfgs_memory: 10,
            score: ScoreKind::DEFAULT,
            extra_scores: Vec::new(),
            kmeans_iterations: 20,
            keep_known: 0.95,
            held_out_labels: Vec::new(),
        }
    }
}

impl TrainOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |option, message: String| Err(ClassifierError::InvalidOption { option, message });
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return invalid("validation_fraction", format!("{} is not in (0, 1)", self.validation_fraction));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return invalid("l2", format!("{} is not a finite non-negative number", self.l2));
        }
        if !(self.keep_known > 0.0 && self.keep_known <= 1.0) {
            return invalid("keep_known", format!("{} is not in (0, 1]", self.keep_known));
        }
        if self.max_optimizer_passes == 0 || self.lbfgs_memory == 0 {
            return invalid("max_optimizer_passes", "it and lbfgs_memory must be at least 1".into());
        }
        if let Some(bad) = self.scores().into_iter().find(|k| matches!(k, ScoreKind::Prototypes { per_class: 0, .. })) {
            return invalid("score", format!("{bad}: a prototype score needs at least 1 prototype per class"));
        }
        Ok(())
    }

    /// The shipped score first, then the extra ones, without repeats.
    pub(crate) fn scores(&self) -> Vec<ScoreKind> {
        let mut all = vec![self.score];
        for &kind in &self.extra_scores {
            if !all.contains(&kind) {
                all.push(kind);
            }
        }
        all
    }
}

/// What the next pass computes (for progress messages; every pass reads all rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    Split,
    Moments,
    Optimize,
    Score,
}

impl PassKind {
    pub fn name(self) -> &'static str {
        match self {
            PassKind::Split => "split",
            PassKind::Moments => "moments",
            PassKind::Optimize => "optimize",
            PassKind::Score => "score",
        }
    }
}

/// A pass the caller must run: feed every row, then call `end_pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// 0-based.
    pub index: usize,
    pub kind: PassKind,
}

/// One input row: the image's key (its path), its label and its features.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub key: &'a str,
    pub label: &'a str,
    pub features: &'a [f32],
}

/// How one candidate score does on the validation rows (and on held-out labels, if any).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreEvaluation {
    /// The score's name.
    pub score: String,
    pub threshold: f32,
    /// Share of known validation rows at or under the threshold.
    pub kept: f64,
    /// Known validation rows against held-out rows; `None` without held-out labels.
    pub auroc: Option<f64>,
    /// Share of held-out rows above the threshold.
    pub rejected: Option<f64>,
}

/// The result of training.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub model: Model,
    pub metrics: Metrics,
    pub split: ValidationSplit,
    /// The shipped score first, then [`TrainOptions::extra_scores`].
    pub scores: Vec<ScoreEvaluation>,
    /// Every evaluated score, in the order of `scores`, with what shipping it needs: which one
    /// is best is only known after the leave-classes-out evaluation, which runs beside training.
    candidates: Vec<Candidate>,
}

/// An evaluated score as the model would ship it.
#[derive(Debug, Clone)]
struct Candidate {
    score: UnknownScore,
    /// Per class, the share of its validation rows under the score's threshold.
    class_kept: Vec<Option<f64>>,
}

impl TrainedModel {
    /// Ships the evaluated score named `name` (one of [`Self::scores`]) instead of the current
    /// one: its prototypes and threshold go into the model, its figures into the metrics, and it
    /// becomes `scores[0]`.
    pub fn ship(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.scores.iter().position(|s| s.score == name) else {
            let evaluated: Vec<&str> = self.scores.iter().map(|s| s.score.as_str()).collect();
            return Err(ClassifierError::InvalidOption {
                option: "score",
                message: format!("{name} was not evaluated in this training (evaluated: {})", evaluated.join(", ")),
            });
        };
        let evaluation = self.scores.remove(index);
        let candidate = self.candidates.remove(index);
        let mut model = self.model.clone();
        model.score = candidate.score.clone();
        model.unknown_threshold = evaluation.threshold;
        model.validate()?;
        self.model = model;
        for (class, kept) in self.metrics.classes.iter_mut().zip(&candidate.class_kept) {
            class.kept = *kept;
        }
        self.metrics.unknown.score = evaluation.score.clone();
        self.metrics.unknown.threshold = evaluation.threshold;
        self.metrics.unknown.kept = evaluation.kept;
        self.scores.insert(0, evaluation);
        self.candidates.insert(0, candidate);
        Ok(())
    }
}

enum Stage {
    Split(SplitCounter),
    Moments {
        moments: MomentsAccumulator,
        init: InitialRows,
    },
    Optimize(Box<Optimizing>),
    Score(Box<Scoring>),
    Done(Box<TrainedModel>),
    /// An error left the trainer in an unknown state.
    Failed,
}

struct Optimizing {
    standardizer: Standardizer,
    lbfgs: Lbfgs,
    optimizer_done: bool,
    kmeans: Vec<KMeans>,
    loss: f64,
    gradient: Vec<f64>,
    rows: u64,
    z: Vec<f64>,
    logits: Vec<f64>,
}

struct Scoring {
    model: Model,
    candidates: Vec<UnknownScore>,
    confusion: ConfusionMatrix,
    /// Class of each known validation row, and per candidate its score.
    known_classes: Vec<u32>,
    known: Vec<Vec<f32>>,
    unknown: Vec<Vec<f32>>,
    summary: TrainingSummary,
    scratch: Vec<f32>,
}

/// The streaming trainer; see the module docs for the protocol.
pub struct Trainer {
    options: TrainOptions,
    pass: usize,
    open: bool,
    pass_rows: u64,
    first_pass_rows: u64,
    dim: usize,
    /// Every label of the first pass (sorted), and its class index unless held out.
    all_labels: Vec<String>,
    class_of: Vec<Option<usize>>,
    classes: Vec<String>,
    split: Option<ValidationSplit>,
    stage: Stage,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("pass", &self.pass).field("stage", &self.stage_name()).finish_non_exhaustive()
    }
}

impl Trainer {
    pub fn new(options: TrainOptions) -> Result<Self> {
        options.validate()?;
        let seed = options.seed;
        Ok(Self {
            options,
            pass: 0,
            open: false,
            pass_rows: 0,
            first_pass_rows: 0,
            dim: 0,
            all_labels: Vec::new(),
            class_of: Vec::new(),
            classes: Vec::new(),
            split: None,
            stage: Stage::Split(SplitCounter::new(seed)),
        })
    }

    /// A trainer that starts after a split pass someone else ran (the leave-classes-out
    /// evaluation runs one split pass for all its trainers).
    pub(crate) fn after_split(options: TrainOptions, counter: &SplitCounter, rows: u64, dim: usize) -> Result<Self> {
        let mut trainer = Self::new(options)?;
        trainer.stage = Stage::Split(counter.clone());
        (trainer.pass_rows, trainer.dim, trainer.open) = (rows, dim, true);
        trainer.end_pass()?;
        Ok(trainer)
    }

    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Labels of the first pass (sorted), held-out ones included; empty before it ends.
    pub fn labels(&self) -> &[String] {
        &self.all_labels
    }

    /// The pass to run next, `None` when training is done (call [`Self::finish`]). Calling it
    /// again before [`Self::end_pass`] returns the same pass.
    pub fn next_pass(&mut self) -> Option<Pass> {
        let kind = match self.stage {
            Stage::Split(_) => PassKind::Split,
            Stage::Moments { .. } => PassKind::Moments,
            Stage::Optimize(_) => PassKind::Optimize,
            Stage::Score(_) => PassKind::Score,
            Stage::Done(_) | Stage::Failed => return None,
        };
        if !self.open {
            (self.open, self.pass_rows) = (true, 0);
        }
        Some(Pass { index: self.pass, kind })
    }

    /// Feeds rows of the current pass.
    pub fn feed<'a>(&mut self, rows: impl IntoIterator<Item = Row<'a>>) -> Result<()> {
        for row in rows {
            self.feed_row(row.key, row.label, row.features)?;
        }
        Ok(())
    }

    /// Feeds a batch in columns: `features` holds `keys.len()` rows of `dim` values.
    pub fn feed_columns<K: AsRef<str>, L: AsRef<str>>(
        &mut self,
        keys: &[K],
        labels: &[L],
        features: &[f32],
        dim: usize,
    ) -> Result<()> {
        for_each_row(keys, labels, features, dim, |key, label, x| self.feed_row(key, label, x))
    }

    /// Feeds one row of the current pass.
    pub fn feed_row(&mut self, key: &str, label: &str, features: &[f32]) -> Result<()> {
        if !self.open {
            return Err(ClassifierError::protocol("feed", format!("outside a pass (stage {})", self.stage_name())));
        }
        self.check_row(key, label, features)?;
        if let Stage::Split(counter) = &mut self.stage {
            counter.add(key, label);
            self.pass_rows += 1;
            return Ok(());
        }
        let Ok(index) = self.all_labels.binary_search_by(|l| l.as_str().cmp(label)) else {
            return Err(ClassifierError::NewLabel {
                pass: self.pass,
                kind: self.stage_name(),
                label: label.to_owned(),
            });
        };
        let class = self.class_of[index];
        let validation = self.split.as_ref().is_some_and(|s| s.is_validation(index, key));
        match &mut self.stage {
            Stage::Moments { moments, init } => {
                if let (Some(class), false) = (class, validation) {
                    moments.add(features);
                    init.offer(class, key, features);
                }
            }
            Stage::Optimize(opt) => {
                if let (Some(class), false) = (class, validation) {
                    opt.add(class, features);
                }
            }
            Stage::Score(scoring) => match class {
                None => scoring.add_unknown(features),
                Some(class) if validation => scoring.add_known(class, features),
                Some(_) => {}
            },
            Stage::Split(_) | Stage::Done(_) | Stage::Failed => {}
        }
        self.pass_rows += 1;
        Ok(())
    }

    fn check_row(&mut self, key: &str, label: &str, features: &[f32]) -> Result<()> {
        if self.dim == 0 {
            if features.is_empty() {
                return Err(ClassifierError::ZeroDimension);
            }
            self.dim = features.len();
        }
        if features.len() != self.dim {
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
        Ok(())
    }

    /// Ends the current pass and prepares the next.
    pub fn end_pass(&mut self) -> Result<()> {
        if !self.open {
            return Err(ClassifierError::protocol("end_pass", format!("outside a pass (stage {})", self.stage_name())));
        }
        if self.pass > 0 && self.pass_rows != self.first_pass_rows {
            self.stage = Stage::Failed;
            return Err(ClassifierError::RowCountChanged {
                pass: self.pass,
                kind: self.stage_name(),
                expected: self.first_pass_rows,
                got: self.pass_rows,
            });
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Failed);
        self.stage = self.advance(stage)?;
        self.open = false;
        self.pass += 1;
        Ok(())
    }

    fn advance(&mut self, stage: Stage) -> Result<Stage> {
        Ok(match stage {
            Stage::Split(counter) => self.end_split(&counter)?,
            Stage::Moments { moments, init } => {
                let standardizer = moments.finish();
                let kmeans = self
                    .options
                    .scores()
                    .into_iter()
                    .filter_map(|kind| KMeans::new(kind, &init, &standardizer, self.options.kmeans_iterations))
                    .collect();
                let parameters = (self.dim + 1) * self.classes.len();
                let lbfgs =
                    Lbfgs::new(vec![0.0; parameters], self.options.lbfgs_memory, self.options.gradient_tolerance);
                let opt = Optimizing::new(standardizer, lbfgs, kmeans, self.classes.len());
                Stage::Optimize(Box::new(opt))
            }
            Stage::Optimize(mut opt) => {
                opt.end_pass(&self.options);
                if opt.optimizer_done && opt.kmeans.iter().all(|k| k.converged) {
                    Stage::Score(Box::new(self.start_scoring(*opt)))
                } else {
                    Stage::Optimize(opt)
                }
            }
            Stage::Score(scoring) => Stage::Done(Box::new(self.end_scoring(*scoring)?)),
            done @ (Stage::Done(_) | Stage::Failed) => done,
        })
    }

    fn end_split(&mut self, counter: &SplitCounter) -> Result<Stage> {
        if self.pass_rows == 0 {
            return Err(ClassifierError::NoRows);
        }
        self.first_pass_rows = self.pass_rows;
        self.all_labels = counter.labels();
        let missing: Vec<String> =
            self.options.held_out_labels.iter().filter(|l| !self.all_labels.contains(l)).cloned().collect();
        if !missing.is_empty() {
            return Err(ClassifierError::UnknownHeldOut { held_out: missing, labels: self.all_labels.clone() });
        }
        self.class_of = Vec::with_capacity(self.all_labels.len());
        for label in &self.all_labels {
            if self.options.held_out_labels.contains(label) {
                self.class_of.push(None);
            } else {
                self.class_of.push(Some(self.classes.len()));
                self.classes.push(label.clone());
            }
        }
        if self.classes.len() < 2 {
            return Err(ClassifierError::TooFewLabels { found: self.classes.len(), labels: self.classes.clone() });
        }
        let split = counter.finish(self.options.validation_fraction);
        if let Some(l) = split.labels.iter().find(|l| l.rows == l.validation) {
            return Err(ClassifierError::NoTrainingRows { label: l.label.clone(), rows: l.rows });
        }
        self.split = Some(split);
        let classes = self.classes.len();
        let per_class = self.options.scores().iter().map(ScoreKind::prototypes_per_class).max().unwrap_or(0);
        Ok(Stage::Moments {
            moments: MomentsAccumulator::new(self.dim),
            init: InitialRows::new(self.options.seed, per_class, classes),
        })
    }

    fn start_scoring(&self, opt: Optimizing) -> Scoring {
        let (dim, classes) = (self.dim, self.classes.len());
        let head = fold_standardization(opt.lbfgs.best(), &opt.standardizer, dim, classes);
        let candidates: Vec<UnknownScore> = self
            .options
            .scores()
            .into_iter()
            .map(|kind| match opt.kmeans.iter().find(|k| k.kind == kind) {
                Some(kmeans) => kmeans.score(),
                None => UnknownScore { kind, prototypes: Vec::new(), prototype_classes: Vec::new() },
            })
            .collect();
        let summary = TrainingSummary {
            seed: self.options.seed,
            passes: self.pass + 2, // this pass and the scoring pass
            optimizer_evaluations: opt.lbfgs.evaluations(),
            loss: opt.lbfgs.loss(),
            gradient_norm: opt.lbfgs.gradient_norm(),
            converged: opt.lbfgs.gradient_norm() <= self.options.gradient_tolerance,
            kmeans_iterations: opt.kmeans.iter().map(|k| k.iterations).max().unwrap_or(0),
        };
        let model = Model {
            format_version: MODEL_FORMAT_VERSION,
            labels: self.classes.clone(),
            dim,
            head,
            standardizer: opt.standardizer,
            score: candidates[0].clone(),
            unknown_threshold: f32::INFINITY,
        };
        let n = candidates.len();
        Scoring {
            model,
            candidates,
            confusion: ConfusionMatrix::new(self.classes.clone()),
            known_classes: Vec::new(),
            known: vec![Vec::new(); n],
            unknown: vec![Vec::new(); n],
            summary,
            scratch: Vec::new(),
        }
    }

    fn end_scoring(&self, scoring: Scoring) -> Result<TrainedModel> {
        let Scoring { mut model, candidates, confusion, known_classes, known, unknown, summary, .. } = scoring;
        let accuracy = confusion.accuracy().ok_or(ClassifierError::NoValidationRows)?;
        let keep = self.options.keep_known;
        let mut scores = Vec::with_capacity(candidates.len());
        for ((candidate, known), unknown) in candidates.iter().zip(&known).zip(&unknown) {
            let threshold = calibrate_threshold(known, keep).ok_or(ClassifierError::NoValidationRows)?;
            let kept = known.iter().filter(|&&s| s <= threshold).count() as f64 / known.len() as f64;
            let rejected = (!unknown.is_empty())
                .then(|| unknown.iter().filter(|&&s| s > threshold).count() as f64 / unknown.len() as f64);
            scores.push(ScoreEvaluation {
                score: candidate.kind.to_string(),
                threshold,
                kept,
                auroc: auroc(known, unknown),
                rejected,
            });
        }
        model.unknown_threshold = scores[0].threshold;
        model.validate()?;
        let split = self.split.clone().ok_or(ClassifierError::NoRows)?;
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .zip(&known)
            .zip(&scores)
            .map(|((score, known), evaluation)| Candidate {
                score,
                class_kept: (0..self.classes.len())
                    .map(|class| class_kept(&known_classes, known, class, evaluation.threshold))
                    .collect(),
            })
            .collect();
        let classes = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let label_split = split.labels.iter().find(|l| &l.label == label);
                let rows = label_split.map_or(0, |l| l.rows);
                let validation = label_split.map_or(0, |l| l.validation);
                ClassMetrics {
                    label: label.clone(),
                    training_rows: rows - validation,
                    validation_rows: validation,
                    precision: confusion.precision(i),
                    recall: confusion.recall(i),
                    kept: candidates[0].class_kept[i],
                }
            })
            .collect::<Vec<_>>();
        let metrics = Metrics {
            labels: self.classes.clone(),
            training_rows: classes.iter().map(|c| c.training_rows).sum(),
            validation_rows: confusion.total(),
            accuracy,
            classes,
            confusion,
            unknown: UnknownMetrics {
                score: scores[0].score.clone(),
                threshold: model.unknown_threshold,
                keep_target: keep,
                kept: scores[0].kept,
            },
            training: summary,
        };
        Ok(TrainedModel { model, metrics, split, scores, candidates })
    }

    /// The trained model, its metrics and score evaluations, once [`Self::next_pass`] returned
    /// `None`.
    pub fn finish(self) -> Result<TrainedModel> {
        match self.stage {
            Stage::Done(trained) => Ok(*trained),
            _ => {
                Err(ClassifierError::protocol("finish", format!("before training ended (stage {})", self.stage_name())))
            }
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done(_) | Stage::Failed)
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Split(_) => "split",
            Stage::Moments { .. } => "moments",
            Stage::Optimize(_) => "optimize",
            Stage::Score(_) => "score",
            Stage::Done(_) => "done",
            Stage::Failed => "failed",
        }
    }
}

/// Share of the known validation rows of `class` (`classes[i]` is row `i`'s) whose `scores` are
/// at or under `threshold`; `None` when the class has no validation rows.
fn class_kept(classes: &[u32], scores: &[f32], class: usize, threshold: f32) -> Option<f64> {
    let mine: Vec<f32> = classes.iter().zip(scores).filter(|(c, _)| **c as usize == class).map(|(_, &s)| s).collect();
    (!mine.is_empty()).then(|| mine.iter().filter(|&&s| s <= threshold).count() as f64 / mine.len() as f64)
}

/// Calls `f` with each row of a batch in columns (`features` holds `keys.len()` rows of `dim`
/// values), after checking that the columns fit together: what `feed_columns` of the trainer
/// and of the leave-out evaluation share.
pub(crate) fn for_each_row<K: AsRef<str>, L: AsRef<str>>(
    keys: &[K],
    labels: &[L],
    features: &[f32],
    dim: usize,
    mut f: impl FnMut(&str, &str, &[f32]) -> Result<()>,
) -> Result<()> {
    let (rows, values) = (keys.len(), features.len());
    if rows != labels.len() {
        return Err(ClassifierError::BatchLength { keys: rows, labels: labels.len() });
    }
    if dim == 0 {
        return Err(ClassifierError::ZeroDimension);
    }
    if values != rows * dim {
        return Err(ClassifierError::RaggedBatch { values, rows, dim });
    }
    for ((key, label), x) in keys.iter().zip(labels).zip(features.chunks_exact(dim)) {
        f(key.as_ref(), label.as_ref(), x)?;
    }
    Ok(())
}

impl Optimizing {
    fn new(standardizer: Standardizer, lbfgs: Lbfgs, kmeans: Vec<KMeans>, classes: usize) -> Self {
        let dim = standardizer.dim();
        let parameters = lbfgs.point().len();
        Self {
            standardizer,
            lbfgs,
            optimizer_done: false,
            kmeans,
            loss: 0.0,
            gradient: vec![0.0; parameters],
            rows: 0,
            z: vec![0.0; dim],
            logits: vec![0.0; classes],
        }
    }

    /// Adds one training row's cross-entropy and gradient at the point L-BFGS proposed, and
    /// assigns it in every k-means.
    fn add(&mut self, class: usize, x: &[f32]) {
        for kmeans in &mut self.kmeans {
            kmeans.add(class, x, &self.standardizer);
        }
        if self.optimizer_done {
            return;
        }
        let classes = self.logits.len();
        let dim = self.z.len();
        let point = self.lbfgs.point();
        let (weights, bias) = point.split_at(dim * classes);
        for ((z, &x), (&m, &s)) in
            self.z.iter_mut().zip(x).zip(self.standardizer.mean.iter().zip(&self.standardizer.inv_std))
        {
            *z = (f64::from(x) - f64::from(m)) * f64::from(s);
        }
        self.logits.copy_from_slice(bias);
        for (&z, w) in self.z.iter().zip(weights.chunks_exact(classes)) {
            self.logits.iter_mut().zip(w).for_each(|(l, &w)| *l += z * w);
        }
        let max = self.logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
        let sum: f64 = self.logits.iter().map(|&l| (l - max).exp()).sum();
        let log_sum = max + sum.ln();
        self.loss += log_sum - self.logits[class];
        // logits become the residual p - onehot(class).
        for (c, l) in self.logits.iter_mut().enumerate() {
            *l = (*l - log_sum).exp() - if c == class { 1.0 } else { 0.0 };
        }
        let (g_weights, g_bias) = self.gradient.split_at_mut(dim * classes);
        for (&z, g) in self.z.iter().zip(g_weights.chunks_exact_mut(classes)) {
            g.iter_mut().zip(&self.logits).for_each(|(g, &r)| *g += z * r);
        }
        g_bias.iter_mut().zip(&self.logits).for_each(|(g, &r)| *g += r);
        self.rows += 1;
    }

    fn end_pass(&mut self, options: &TrainOptions) {
        for kmeans in &mut self.kmeans {
            kmeans.end_pass();
        }
        if self.optimizer_done {
            return;
        }
        let n = self.rows.max(1) as f64;
        let weights = self.lbfgs.point().len() - self.logits.len();
        let point = self.lbfgs.point();
        let penalty: f64 = point[..weights].iter().map(|w| w * w).sum::<f64>() * options.l2 / 2.0;
        let mut gradient = std::mem::replace(&mut self.gradient, vec![0.0; point.len()]);
        for (i, g) in gradient.iter_mut().enumerate() {
            *g = *g / n + if i < weights { options.l2 * point[i] } else { 0.0 };
        }
        let status = self.lbfgs.update(self.loss / n + penalty, gradient);
        self.optimizer_done = status == Status::Converged || self.lbfgs.evaluations() >= options.max_optimizer_passes;
        (self.loss, self.rows) = (0.0, 0);
    }
}

impl Scoring {
    /// Scores one row with every candidate, into the known or the unknown lists.
    fn scores_into(&mut self, features: &[f32], known: bool) -> Vec<f32> {
        let probabilities = self.model.probabilities(features);
        let into = if known { &mut self.known } else { &mut self.unknown };
        for (candidate, scores) in self.candidates.iter().zip(into.iter_mut()) {
            scores.push(candidate.score(features, &probabilities, &self.model.standardizer, &mut self.scratch));
        }
        probabilities
    }

    fn add_known(&mut self, class: usize, features: &[f32]) {
        let probabilities = self.scores_into(features, true);
        let predicted = crate::model::argmax(&probabilities);
        self.confusion.add(class, predicted);
        self.known_classes.push(class as u32);
    }

    fn add_unknown(&mut self, features: &[f32]) {
        self.scores_into(features, false);
    }
}

/// Weights trained on `z = (x - mean) * inv_std` as weights on `x`:
/// `W'[d] = W[d] * inv_std[d]`, `b' = b - sum_d mean[d] * inv_std[d] * W[d]`.
fn fold_standardization(point: &[f64], standardizer: &Standardizer, dim: usize, classes: usize) -> LinearHead {
    let (weights, bias) = point.split_at(dim * classes);
    let mut folded_bias: Vec<f64> = bias.to_vec();
    let mut folded = Vec::with_capacity(dim * classes);
    for ((w, &m), &s) in weights.chunks_exact(classes).zip(&standardizer.mean).zip(&standardizer.inv_std) {
        let (m, s) = (f64::from(m), f64::from(s));
        for (c, &w) in w.iter().enumerate() {
            folded.push((w * s) as f32);
            folded_bias[c] -= m * s * w;
        }
    }
    LinearHead { weights: folded, bias: folded_bias.into_iter().map(|b| b as f32).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{Metric, Space};
    use crate::testing::{clusters, train};

    fn options() -> TrainOptions {
        TrainOptions {
            extra_scores: vec![
                ScoreKind::MaxSoftmax,
                ScoreKind::Prototypes { space: Space::Raw, metric: Metric::Euclidean, per_class: 1 },
            ],
            ..TrainOptions::default()
        }
    }

    #[test]
    fn separates_clusters_and_calibrates() {
        let rows = clusters(4, 250, 24, 1.0, 1);
        let trained = train(options(), &rows).unwrap();
        let m = &trained.metrics;
        assert!(m.accuracy >= 0.97, "accuracy {}", m.accuracy);
        assert_eq!(m.labels, ["class 0", "class 1", "class 2", "class 3"]);
        assert_eq!(m.validation_rows, 200);
        assert_eq!(m.training_rows, 800);
        assert_eq!(m.confusion.total(), 200);
        assert!(m.training.converged, "{:?}", m.training);
        assert!(m.classes.iter().all(|c| c.recall.unwrap() > 0.9 && c.precision.unwrap() > 0.9), "{:?}", m.classes);
        // The threshold keeps at least 95 % of the known validation rows, for every score.
        assert_eq!(trained.scores.len(), 3);
        for s in &trained.scores {
            // max-softmax has ties (probabilities of 1.0) and may keep more.
            assert!(s.kept >= 0.95 && (s.kept < 0.96 || s.score == "max-softmax"), "{s:?}");
            assert_eq!((s.auroc, s.rejected), (None, None));
        }
        assert_eq!(trained.model.unknown_threshold, trained.scores[0].threshold);
        assert_eq!(m.unknown.score, "cosine-raw-k16");
        // Re-check the kept share with the model's own predictions on the validation rows.
        let split = &trained.split;
        let (mut kept, mut total) = (0, 0);
        for i in 0..rows.len() {
            let label = split.labels.iter().position(|l| l.label == rows.labels[i]).unwrap();
            if split.is_validation(label, &rows.keys[i]) {
                total += 1;
                kept += usize::from(!trained.model.predict(rows.row(i).features).unwrap().unknown);
            }
        }
        assert_eq!(total, 200);
        assert!(kept as f64 / total as f64 >= 0.95, "{kept} of {total}");
    }

    #[test]
    fn ships_another_evaluated_score() {
        let rows = clusters(4, 100, 12, 1.0, 6);
        let mut trained = train(options(), &rows).unwrap();
        let euclidean = trained.scores[2].clone();
        assert_eq!(euclidean.score, "euclidean-raw-k1");
        trained.ship("euclidean-raw-k1").unwrap();
        assert_eq!(trained.scores[0], euclidean);
        assert_eq!(trained.scores.len(), 3);
        assert_eq!(trained.model.score.kind.to_string(), "euclidean-raw-k1");
        assert_eq!(trained.model.score.prototype_count(), 4);
        assert_eq!(trained.model.unknown_threshold, euclidean.threshold);
        assert_eq!(
            (trained.metrics.unknown.score.as_str(), trained.metrics.unknown.kept),
            ("euclidean-raw-k1", euclidean.kept)
        );
        // The per-class kept shares are the shipped score's: together they give its kept share.
        let kept: f64 = trained.metrics.classes.iter().map(|c| c.kept.unwrap() * c.validation_rows as f64).sum();
        assert!((kept / trained.metrics.validation_rows as f64 - euclidean.kept).abs() < 1e-9);
        let err = trained.ship("nearest-guess").unwrap_err();
        assert!(err.to_string().contains("nearest-guess was not evaluated"), "{err}");
        trained.ship("cosine-raw-k16").unwrap();
        assert_eq!(trained.model.score.kind, ScoreKind::DEFAULT);
    }

    #[test]
    fn deterministic_and_order_independent() {
        let rows = clusters(3, 120, 10, 1.5, 2);
        let a = train(options(), &rows).unwrap();
        let b = train(options(), &rows).unwrap();
        assert_eq!(a.model, b.model, "same rows, order and seed: the same model");
        assert_eq!(a.metrics, b.metrics);
        let other_seed = train(TrainOptions { seed: 7, ..options() }, &rows).unwrap();
        assert_ne!(a.split, other_seed.split);
        assert_ne!(a.model.head, other_seed.model.head);
        // Another order changes rounding only: same split, (nearly) the same weights.
        let shuffled = train(options(), &rows.shuffled(5)).unwrap();
        assert_eq!(a.split, shuffled.split);
        assert_eq!(a.metrics.confusion, shuffled.metrics.confusion);
        let diff = a
            .model
            .head
            .weights
            .iter()
            .zip(&shuffled.model.head.weights)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-3, "weights differ by {diff}");
    }

    #[test]
    fn split_is_stratified() {
        let mut rows = clusters(3, 300, 4, 2.0, 3);
        // Uneven classes: drop most of class 2.
        let keep: Vec<usize> = (0..rows.len()).filter(|&i| rows.labels[i] != "class 2" || i % 6 == 0).collect();
        rows = crate::testing::Rows {
            keys: keep.iter().map(|&i| rows.keys[i].clone()).collect(),
            labels: keep.iter().map(|&i| rows.labels[i].clone()).collect(),
            features: keep.iter().flat_map(|&i| rows.row(i).features.to_vec()).collect(),
            dim: 4,
        };
        let trained = train(TrainOptions { validation_fraction: 0.25, ..options() }, &rows).unwrap();
        let rows_per_label: Vec<u64> = trained.split.labels.iter().map(|l| l.rows).collect();
        assert_eq!(rows_per_label, [300, 300, 50]);
        for l in &trained.split.labels {
            let target = 0.25 * l.rows as f64;
            assert!((l.validation as f64 - target).abs() <= 1.0, "{}: {} of {}", l.label, l.validation, l.rows);
        }
        let per_class: Vec<u64> = trained.metrics.classes.iter().map(|c| c.validation_rows).collect();
        assert_eq!(per_class, trained.split.labels.iter().map(|l| l.validation).collect::<Vec<_>>());
        assert_eq!(trained.metrics.confusion.total(), per_class.iter().sum::<u64>());
    }

    #[test]
    fn protocol_and_input_errors() {
        let rows = clusters(2, 20, 3, 2.0, 4);
        let mut t = Trainer::new(options()).unwrap();
        assert!(matches!(t.feed_row("k", "a", &[1.0, 2.0, 3.0]), Err(ClassifierError::Protocol { .. })));
        assert_eq!(t.next_pass(), Some(Pass { index: 0, kind: PassKind::Split }));
        assert_eq!(t.next_pass(), Some(Pass { index: 0, kind: PassKind::Split }));
        t.feed((0..rows.len()).map(|i| rows.row(i))).unwrap();
        let err = t.feed_row("bad", "class 0", &[1.0, 2.0]).unwrap_err();
        assert_eq!(err.to_string(), "row 'bad' has 2 features, but earlier rows had 3");
        let err = t.feed_row("nan", "class 0", &[1.0, f32::NAN, 0.0]).unwrap_err();
        assert!(err.to_string().starts_with("feature 1 of row 'nan' is NaN"), "{err}");
        assert!(matches!(t.feed_row("e", "", &[0.0; 3]), Err(ClassifierError::EmptyLabel { .. })));
        t.end_pass().unwrap();
        assert_eq!(t.next_pass().map(|p| p.kind), Some(PassKind::Moments));
        let err = t.feed_row("x", "class 9", &[0.0; 3]).unwrap_err();
        assert!(matches!(err, ClassifierError::NewLabel { pass: 1, .. }), "{err}");
        t.feed((0..rows.len() - 1).map(|i| rows.row(i))).unwrap();
        let err = t.end_pass().unwrap_err();
        assert!(matches!(err, ClassifierError::RowCountChanged { pass: 1, expected: 40, got: 39, .. }), "{err}");
        assert_eq!(t.next_pass(), None);
        assert!(matches!(t.finish(), Err(ClassifierError::Protocol { .. })));

        let one_label = clusters(1, 20, 3, 1.0, 5);
        assert!(matches!(train(options(), &one_label), Err(ClassifierError::TooFewLabels { found: 1, .. })));
        let bad = TrainOptions { validation_fraction: 1.0, ..options() };
        assert!(matches!(Trainer::new(bad), Err(ClassifierError::InvalidOption { option: "validation_fraction", .. })));
        let held = TrainOptions { held_out_labels: vec!["nope".into()], ..options() };
        assert!(matches!(train(held, &rows), Err(ClassifierError::UnknownHeldOut { .. })));
    }
}
