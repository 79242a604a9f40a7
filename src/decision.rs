//! What a line does with a unit: pass it, fail it, or send it to a human verify station.
//!
//! A model's manifest may carry a `decision` section, chosen by the pipeline on the validation
//! split: a temperature that calibrates the probabilities (`softmax(logits / T)`) and an
//! operating point. A unit **passes** when the calibrated probability of the normal class
//! reaches `pass_threshold` (set so that few defects pass: the missed-defect target); otherwise
//! it **fails** with its most likely defect class when that class's probability reaches
//! `fail_threshold`; everything else goes to **review**. AOI stations differ, so the operator
//! may override either threshold per station or per line in the configuration file. A model
//! without the section keeps the arg-max verdict and gets no disposition.

use std::fmt;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

/// The manifest's `decision` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionSpec {
    /// Divides the logits before the softmax (temperature scaling).
    pub temperature: f32,
    /// Pass when the calibrated normal probability is at least this.
    pub pass_threshold: f32,
    /// Otherwise fail when the top defect class's calibrated probability is at least this.
    pub fail_threshold: f32,
    /// The missed-defect rate the operating point was chosen for.
    #[serde(default)]
    pub target_missed_defect_rate: Option<f64>,
    /// The validation figures it was chosen from, passed through to clients.
    #[serde(default)]
    pub validation: serde_json::Value,
}

impl DecisionSpec {
    /// Checks the numbers a verdict depends on.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "decision.temperature must be a positive number, not {}",
            self.temperature
        );
        check_threshold("decision.pass_threshold", self.pass_threshold)?;
        check_threshold("decision.fail_threshold", self.fail_threshold)
    }
}

fn check_threshold(name: &str, value: f32) -> anyhow::Result<()> {
    ensure!(
        (0.0..=1.0).contains(&value),
        "{name} must be between 0 and 1, not {value}"
    );
    Ok(())
}

/// What the line does with the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// Confidently normal: the unit goes on.
    Pass,
    /// Confidently a defect (of the class in [`Decision::defect_class`]).
    Fail,
    /// Neither: a human at a verify station decides.
    Review,
}

impl Disposition {
    /// The lowercase name used in JSON, metrics, filters and topics.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Pass => "pass",
            Disposition::Fail => "fail",
            Disposition::Review => "review",
        }
    }
}

impl std::str::FromStr for Disposition {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "pass" => Ok(Disposition::Pass),
            "fail" => Ok(Disposition::Fail),
            "review" => Ok(Disposition::Review),
            other => Err(format!(
                "disposition must be pass, fail or review, not {other:?}"
            )),
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a verdict's disposition was reached, recorded with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// For `fail`: the defect class the unit failed for (the most likely defect class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect_class: Option<String>,
    /// The pass threshold in force.
    pub pass_threshold: f32,
    /// The fail threshold in force.
    pub fail_threshold: f32,
    /// The temperature the probabilities were calibrated with.
    pub temperature: f32,
    /// Where the thresholds came from: `manifest`, `station <id>` or `line <id>`.
    pub thresholds_from: String,
}

/// One override from the configuration file (`[[thresholds]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ThresholdOverride {
    /// The station it applies to (exactly one of `station` and `line`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// The line it applies to: requests whose `line` metadata field is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Only this model (every model with a decision section when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Replaces the manifest's pass threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_threshold: Option<f32>,
    /// Replaces the manifest's fail threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_threshold: Option<f32>,
}

impl ThresholdOverride {
    /// Checks that the entry names one station or one line and sets a valid threshold.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.station, &self.line) {
            (Some(_), Some(_)) => {
                bail!("a [[thresholds]] entry names a station or a line, not both")
            }
            (None, None) => {
                bail!("a [[thresholds]] entry needs station = \"...\" or line = \"...\"")
            }
            _ => {}
        }
        ensure!(
            self.pass_threshold.is_some() || self.fail_threshold.is_some(),
            "a [[thresholds]] entry for {} sets neither pass-threshold nor fail-threshold",
            self.scope()
        );
        if let Some(pass) = self.pass_threshold {
            check_threshold("pass-threshold", pass)?;
        }
        if let Some(fail) = self.fail_threshold {
            check_threshold("fail-threshold", fail)?;
        }
        Ok(())
    }

    /// `station <id>` or `line <id>`.
    fn scope(&self) -> String {
        match (&self.station, &self.line) {
            (Some(station), _) => format!("station {station}"),
            (None, Some(line)) => format!("line {line}"),
            (None, None) => "nothing".into(),
        }
    }

    fn applies_to_model(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
    }
}

/// One model's decision rule: its manifest's section and the overrides that apply to it.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionPolicy {
    /// The manifest's section.
    #[serde(flatten)]
    pub spec: DecisionSpec,
    /// The configuration's overrides for this model, in the order they were written.
    pub overrides: Vec<ThresholdOverride>,
}

impl DecisionPolicy {
    /// The rule for `model`: its spec and the overrides that name it or no model.
    pub fn new(model: &str, spec: DecisionSpec, overrides: &[ThresholdOverride]) -> Self {
        DecisionPolicy {
            spec,
            overrides: overrides
                .iter()
                .filter(|o| o.applies_to_model(model))
                .cloned()
                .collect(),
        }
    }

    /// Pass and fail thresholds for a request and where they came from. A station's entry wins
    /// over its line's, and a later entry over an earlier one for the same scope; each
    /// threshold falls back separately (an entry may set only one).
    fn thresholds(&self, station: &str, line: Option<&str>) -> (f32, f32, String) {
        let station_entry = self
            .overrides
            .iter()
            .rev()
            .find(|o| o.station.as_deref() == Some(station));
        let line_entry = line.and_then(|line| {
            self.overrides
                .iter()
                .rev()
                .find(|o| o.line.as_deref() == Some(line))
        });
        let mut pass = self.spec.pass_threshold;
        let mut fail = self.spec.fail_threshold;
        let mut from = "manifest".to_string();
        for entry in [line_entry, station_entry].into_iter().flatten() {
            if let Some(p) = entry.pass_threshold {
                pass = p;
            }
            if let Some(f) = entry.fail_threshold {
                fail = f;
            }
            from = entry.scope();
        }
        (pass, fail, from)
    }

    /// Decides a unit from its calibrated probabilities (in label order; `normal` is the index
    /// of the normal label, `names` the label names).
    pub fn decide(
        &self,
        probabilities: &[f32],
        normal: usize,
        names: &[&str],
        station: &str,
        line: Option<&str>,
    ) -> (Disposition, Decision) {
        let (pass_threshold, fail_threshold, thresholds_from) = self.thresholds(station, line);
        let normal_p = probabilities.get(normal).copied().unwrap_or(0.0);
        let top_defect = probabilities
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != normal)
            .max_by(|a, b| a.1.total_cmp(b.1));
        let (disposition, defect_class) = if normal_p >= pass_threshold {
            (Disposition::Pass, None)
        } else {
            match top_defect {
                Some((i, p)) if *p >= fail_threshold => {
                    (Disposition::Fail, names.get(i).map(|n| n.to_string()))
                }
                _ => (Disposition::Review, None),
            }
        };
        (
            disposition,
            Decision {
                defect_class,
                pass_threshold,
                fail_threshold,
                temperature: self.spec.temperature,
                thresholds_from,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(overrides: &[ThresholdOverride]) -> DecisionPolicy {
        let spec = DecisionSpec {
            temperature: 1.5,
            pass_threshold: 0.9,
            fail_threshold: 0.7,
            target_missed_defect_rate: Some(0.01),
            validation: serde_json::Value::Null,
        };
        DecisionPolicy::new("m", spec, overrides)
    }

    const NAMES: [&str; 3] = ["normal", "void", "residue"];

    #[test]
    fn pass_fail_and_review_follow_the_thresholds() {
        let policy = policy(&[]);
        let decide = |p: [f32; 3]| policy.decide(&p, 0, &NAMES, "s", None);
        assert_eq!(decide([0.95, 0.03, 0.02]).0, Disposition::Pass);
        let (fail, decision) = decide([0.05, 0.15, 0.8]);
        assert_eq!(fail, Disposition::Fail);
        assert_eq!(decision.defect_class.as_deref(), Some("residue"));
        assert_eq!(decision.thresholds_from, "manifest");
        assert_eq!(
            decide([0.6, 0.3, 0.1]).0,
            Disposition::Review,
            "normal but unsure"
        );
        assert_eq!(
            decide([0.2, 0.45, 0.35]).0,
            Disposition::Review,
            "defect, class unsure"
        );
    }

    #[test]
    fn a_station_entry_wins_over_its_line_and_thresholds_fall_back_separately() {
        let line = ThresholdOverride {
            line: Some("L3".into()),
            pass_threshold: Some(0.99),
            fail_threshold: Some(0.5),
            station: None,
            model: None,
        };
        let station = ThresholdOverride {
            station: Some("aoi-07".into()),
            pass_threshold: Some(0.8),
            line: None,
            model: None,
            fail_threshold: None,
        };
        let other_model = ThresholdOverride {
            station: Some("aoi-07".into()),
            model: Some("other".into()),
            pass_threshold: Some(0.1),
            line: None,
            fail_threshold: None,
        };
        let policy = policy(&[line, station, other_model]);
        assert_eq!(
            policy.overrides.len(),
            2,
            "the other model's entry does not apply"
        );
        assert_eq!(
            policy.thresholds("aoi-07", Some("L3")),
            (0.8, 0.5, "station aoi-07".into())
        );
        assert_eq!(
            policy.thresholds("aoi-08", Some("L3")),
            (0.99, 0.5, "line L3".into())
        );
        assert_eq!(
            policy.thresholds("aoi-08", None),
            (0.9, 0.7, "manifest".into())
        );
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let both = ThresholdOverride {
            station: Some("a".into()),
            line: Some("b".into()),
            model: None,
            pass_threshold: Some(0.5),
            fail_threshold: None,
        };
        assert!(both.validate().is_err());
        let nothing = ThresholdOverride {
            station: Some("a".into()),
            line: None,
            model: None,
            pass_threshold: None,
            fail_threshold: None,
        };
        assert!(nothing.validate().is_err());
        let out_of_range = ThresholdOverride {
            pass_threshold: Some(1.5),
            ..nothing.clone()
        };
        assert!(
            out_of_range
                .validate()
                .unwrap_err()
                .to_string()
                .contains("1.5")
        );
    }
}
