//! Learning-rate schedules, as HF transformers computes them: linear warmup over
//! `ceil(warmup x total)` steps, then cosine or linear decay to `min_lr_ratio x lr`.
//! `step` counts optimizer steps already taken, so the first update uses `lr(0)` (zero
//! when there is warmup, as in HF).

use crate::config::{Schedule, StageConfig};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub total: u64,
    pub warmup: u64,
    pub kind: Schedule,
    pub floor: f64,
}

impl LrSchedule {
    /// Linear warmup over `warmup` (a fraction of `total`), then cosine to 0: the
    /// backbone pretraining schedule.
    pub fn warmup_cosine(base: f64, total: u64, warmup: f64) -> Self {
        LrSchedule {
            base,
            total,
            warmup: (warmup * total as f64).ceil() as u64,
            kind: Schedule::Cosine,
            floor: 0.0,
        }
    }

    pub fn new(cfg: &StageConfig, base: f64, total: u64) -> Self {
        LrSchedule {
            base,
            total,
            warmup: (cfg.warmup * total as f64).ceil() as u64,
            kind: cfg.schedule,
            floor: cfg.min_lr_ratio,
        }
    }

    /// The multiplier of the base rate at `step`.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let decay = match self.kind {
            Schedule::Constant => return 1.0,
            Schedule::Linear => 1.0 - progress,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.floor + (1.0 - self.floor) * decay
    }

    pub fn lr(&self, step: u64) -> f64 {
        self.base * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Schedule, warmup: f64, floor: f64) -> LrSchedule {
        let cfg = StageConfig {
            warmup,
            schedule: kind,
            min_lr_ratio: floor,
            ..Default::default()
        };
        LrSchedule::new(&cfg, 1.0, 100)
    }

    #[test]
    fn warmup_then_cosine_like_hf() {
        let s = sched(Schedule::Cosine, 0.03, 0.0);
        assert_eq!(s.warmup, 3);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.lr(3), 1.0);
        // Halfway through the decay the cosine is at one half.
        assert!(
            (s.lr(3 + 97 / 2) - 0.5 * (1.0 + (std::f64::consts::PI * 48.0 / 97.0).cos())).abs()
                < 1e-12
        );
        assert!(s.lr(100).abs() < 1e-12);
    }

    #[test]
    fn floor_and_other_kinds() {
        assert!((sched(Schedule::Cosine, 0.0, 0.1).lr(100) - 0.1).abs() < 1e-12);
        assert!((sched(Schedule::Linear, 0.0, 0.0).lr(50) - 0.5).abs() < 1e-12);
        assert_eq!(sched(Schedule::Constant, 0.0, 0.0).lr(77), 1.0);
    }
}
