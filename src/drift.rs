//! Has the line stopped looking like validation? The pipeline records, in the manifest's
//! `validation_distribution`, how often each label was predicted on the validation split and
//! how the calibrated top-1 confidence was spread; the service keeps the same two
//! distributions over its most recent verdicts and compares them with the population
//! stability index (PSI = Σ (actual − expected) · ln(actual / expected)).
//!
//! By the usual reading, a PSI below 0.1 is no shift, 0.1 to 0.25 a moderate one, and above
//! 0.25 a shift worth a look (new product, a camera or lighting change, a model problem). The
//! gauges stay unset until the window holds [`MIN_SAMPLES`] verdicts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use anyhow::ensure;
use serde::{Deserialize, Serialize};

/// Verdicts needed before a PSI means anything.
pub const MIN_SAMPLES: usize = 100;
/// Stands in for an empty bin, so the logarithm stays finite.
const FLOOR: f64 = 1e-4;

/// The manifest's `validation_distribution` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationDistribution {
    /// Share of validation predictions per label name.
    pub labels: HashMap<String, f64>,
    /// Bin edges of the calibrated top-1 confidence, increasing from 0 to 1.
    pub confidence_bins: Vec<f64>,
    /// Share of validation predictions per confidence bin (one fewer than the edges).
    pub confidence_hist: Vec<f64>,
}

impl ValidationDistribution {
    /// Checks the shapes a PSI needs.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.confidence_bins.len() >= 2
                && self.confidence_hist.len() + 1 == self.confidence_bins.len(),
            "validation_distribution: confidence_hist needs one value per confidence bin"
        );
        ensure!(
            self.confidence_bins.windows(2).all(|w| w[0] < w[1]),
            "validation_distribution: confidence_bins must increase"
        );
        Ok(())
    }
}

/// The two PSIs of the recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Of the predicted labels.
    pub labels: f64,
    /// Of the confidence histogram.
    pub confidence: f64,
}

/// Recent verdicts of one model version against its validation distribution.
pub struct DriftMonitor {
    expected_labels: Vec<f64>,
    expected_confidence: Vec<f64>,
    edges: Vec<f64>,
    window: Mutex<Window>,
}

struct Window {
    recent: VecDeque<(usize, usize)>,
    labels: Vec<u64>,
    confidence: Vec<u64>,
    capacity: usize,
}

impl DriftMonitor {
    /// A monitor of the last `capacity` verdicts for labels named `names` (in logits order).
    pub fn new(reference: &ValidationDistribution, names: &[String], capacity: usize) -> Self {
        let expected_labels = names
            .iter()
            .map(|n| reference.labels.get(n).copied().unwrap_or(0.0))
            .collect();
        DriftMonitor {
            expected_labels,
            expected_confidence: reference.confidence_hist.clone(),
            edges: reference.confidence_bins.clone(),
            window: Mutex::new(Window {
                recent: VecDeque::new(),
                labels: vec![0; names.len()],
                confidence: vec![0; reference.confidence_hist.len()],
                capacity: capacity.max(MIN_SAMPLES),
            }),
        }
    }

    /// Adds one verdict (label index, calibrated confidence); the PSIs once there are enough.
    pub fn observe(&self, label: usize, confidence: f32) -> Option<Drift> {
        let bin = self.bin(f64::from(confidence));
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if label >= window.labels.len() {
            return None;
        }
        window.recent.push_back((label, bin));
        window.labels[label] += 1;
        window.confidence[bin] += 1;
        if window.recent.len() > window.capacity
            && let Some((old_label, old_bin)) = window.recent.pop_front()
        {
            window.labels[old_label] -= 1;
            window.confidence[old_bin] -= 1;
        }
        (window.recent.len() >= MIN_SAMPLES).then(|| Drift {
            labels: psi(&self.expected_labels, &window.labels),
            confidence: psi(&self.expected_confidence, &window.confidence),
        })
    }

    /// The histogram bin of a confidence (the last bin includes its upper edge).
    fn bin(&self, confidence: f64) -> usize {
        let bins = self.edges.len() - 1;
        self.edges[1..]
            .iter()
            .position(|&upper| confidence < upper)
            .unwrap_or(bins - 1)
    }
}

/// PSI of observed counts against expected shares.
fn psi(expected: &[f64], counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let expected_total: f64 = expected.iter().sum::<f64>().max(FLOOR);
    expected
        .iter()
        .zip(counts)
        .map(|(&e, &c)| {
            let e = (e / expected_total).max(FLOOR);
            let a = (c as f64 / total as f64).max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> ValidationDistribution {
        ValidationDistribution {
            labels: HashMap::from([("normal".into(), 0.5), ("void".into(), 0.5)]),
            confidence_bins: vec![0.0, 0.5, 1.0],
            confidence_hist: vec![0.2, 0.8],
        }
    }

    fn names() -> Vec<String> {
        vec!["normal".into(), "void".into()]
    }

    #[test]
    fn the_same_distribution_shows_no_drift_and_a_new_one_does() {
        let monitor = DriftMonitor::new(&reference(), &names(), 200);
        let mut last = None;
        for i in 0..200 {
            let confidence = if i % 5 == 0 { 0.4 } else { 0.9 };
            last = monitor.observe(i % 2, confidence);
        }
        let steady = last.unwrap();
        assert!(
            steady.labels < 1e-9 && steady.confidence < 1e-9,
            "{steady:?}"
        );
        for _ in 0..200 {
            last = monitor.observe(1, 0.3);
        }
        let shifted = last.unwrap();
        assert!(
            shifted.labels > 0.25 && shifted.confidence > 0.25,
            "{shifted:?}"
        );
    }

    #[test]
    fn nothing_is_said_before_the_window_has_enough() {
        let monitor = DriftMonitor::new(&reference(), &names(), 500);
        for _ in 0..MIN_SAMPLES - 1 {
            assert_eq!(monitor.observe(0, 0.9), None);
        }
        assert!(monitor.observe(0, 0.9).is_some());
        assert_eq!(monitor.observe(7, 0.9), None, "an unknown label is ignored");
    }

    #[test]
    fn confidences_land_in_their_bins() {
        let monitor = DriftMonitor::new(&reference(), &names(), 100);
        assert_eq!(monitor.bin(0.0), 0);
        assert_eq!(monitor.bin(0.49), 0);
        assert_eq!(monitor.bin(0.5), 1);
        assert_eq!(monitor.bin(1.0), 1);
    }
}
