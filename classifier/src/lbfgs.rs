//! L-BFGS with a backtracking (Armijo) line search, driven one function evaluation at a time.
//!
//! Streaming training evaluates the loss and its gradient with one full pass over the rows, so
//! the optimiser cannot call the objective: it proposes a point ([`Lbfgs::point`]), the pass
//! evaluates it, and [`Lbfgs::update`] takes the result and proposes the next. A full-batch
//! gradient makes every pass independent of the order rows arrive in (mini-batch SGD on rows
//! sorted by label, as files written per folder are, would chase one class at a time), and
//! L-BFGS needs a few dozen passes where plain gradient descent needs hundreds.

use std::collections::VecDeque;

const ARMIJO: f64 = 1e-4;
const MIN_STEP: f64 = 1e-12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Evaluate [`Lbfgs::point`] in the next pass.
    Continue,
    /// The gradient is small enough, or no step decreases the loss: [`Lbfgs::best`] is final.
    Converged,
}

#[derive(Debug, Clone)]
pub(crate) struct Lbfgs {
    memory: usize,
    gradient_tolerance: f64,
    /// The best point evaluated so far and its loss and gradient (after the first update).
    x: Vec<f64>,
    fx: f64,
    gx: Vec<f64>,
    /// The point the next pass evaluates: `x + step * direction`.
    trial: Vec<f64>,
    direction: Vec<f64>,
    step: f64,
    history: VecDeque<(Vec<f64>, Vec<f64>, f64)>,
    evaluations: usize,
}

impl Lbfgs {
    pub(crate) fn new(x0: Vec<f64>, memory: usize, gradient_tolerance: f64) -> Self {
        Self {
            memory: memory.max(1),
            gradient_tolerance,
            trial: x0.clone(),
            x: x0,
            fx: f64::INFINITY,
            gx: Vec::new(),
            direction: Vec::new(),
            step: 0.0,
            history: VecDeque::new(),
            evaluations: 0,
        }
    }

    pub(crate) fn point(&self) -> &[f64] {
        &self.trial
    }

    /// The best point evaluated so far (the start before any update).
    pub(crate) fn best(&self) -> &[f64] {
        &self.x
    }

    pub(crate) fn loss(&self) -> f64 {
        self.fx
    }

    pub(crate) fn gradient_norm(&self) -> f64 {
        self.gx.iter().fold(0.0f64, |m, g| m.max(g.abs()))
    }

    pub(crate) fn evaluations(&self) -> usize {
        self.evaluations
    }

    /// Takes the loss `f` and gradient `g` at [`Self::point`] and proposes the next point.
    pub(crate) fn update(&mut self, f: f64, g: Vec<f64>) -> Status {
        self.evaluations += 1;
        if self.gx.is_empty() {
            self.x.clone_from(&self.trial);
            (self.fx, self.gx) = (f, g);
            return self.new_direction(true);
        }
        let slope: f64 = dot(&self.gx, &self.direction);
        if f.is_finite() && f <= self.fx + ARMIJO * self.step * slope {
            let s: Vec<f64> = self.trial.iter().zip(&self.x).map(|(t, x)| t - x).collect();
            let y: Vec<f64> = g.iter().zip(&self.gx).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
                if self.history.len() == self.memory {
                    self.history.pop_front();
                }
                self.history.push_back((s, y, 1.0 / sy));
            }
            self.x.clone_from(&self.trial);
            (self.fx, self.gx) = (f, g);
            self.new_direction(false)
        } else {
            // Backtrack: the minimiser of the quadratic through f(x), f'(x) and f(trial),
            // kept within [0.1, 0.5] of the step so that a bad model cannot stall the search.
            let quadratic = -slope * self.step * self.step / (2.0 * (f - self.fx - slope * self.step));
            let next =
                if quadratic.is_finite() { quadratic.clamp(0.1 * self.step, 0.5 * self.step) } else { 0.5 * self.step };
            self.step = next;
            if self.step < MIN_STEP {
                return Status::Converged;
            }
            self.move_trial();
            Status::Continue
        }
    }

    fn new_direction(&mut self, first: bool) -> Status {
        if self.gradient_norm() <= self.gradient_tolerance {
            return Status::Converged;
        }
        // Two-loop recursion: direction = -H g.
        let mut q = self.gx.clone();
        let mut alphas = Vec::with_capacity(self.history.len());
        for (s, y, rho) in self.history.iter().rev() {
            let a = rho * dot(s, &q);
            axpy(-a, y, &mut q);
            alphas.push(a);
        }
        if let Some((s, y, _)) = self.history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in self.history.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            axpy(a - b, s, &mut q);
        }
        q.iter_mut().for_each(|v| *v = -*v);
        if dot(&q, &self.gx) >= 0.0 {
            // Not a descent direction (a stale history): restart from steepest descent.
            self.history.clear();
            q = self.gx.iter().map(|g| -g).collect();
        }
        // Without curvature information yet, a first step of unit length in parameter space.
        self.step = if first || self.history.is_empty() { 1.0 / dot(&q, &q).sqrt().max(1e-300) } else { 1.0 };
        self.direction = q;
        self.move_trial();
        Status::Continue
    }

    fn move_trial(&mut self) {
        self.trial = self.x.iter().zip(&self.direction).map(|(x, d)| x + self.step * d).collect();
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rosenbrock's valley: the classic test an optimiser without curvature fails in 100 steps.
    fn rosenbrock(x: &[f64]) -> (f64, Vec<f64>) {
        let (a, b) = (x[0], x[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        (f, vec![-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)])
    }

    #[test]
    fn minimises_rosenbrock() {
        let mut opt = Lbfgs::new(vec![-1.2, 1.0], 8, 1e-8);
        let mut status = Status::Continue;
        while status == Status::Continue && opt.evaluations() < 200 {
            let (f, g) = rosenbrock(opt.point());
            status = opt.update(f, g);
        }
        assert_eq!(status, Status::Converged, "after {} evaluations", opt.evaluations());
        let x = opt.best();
        assert!((x[0] - 1.0).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5, "{x:?}");
        assert!(opt.loss() < 1e-10);
    }
}
