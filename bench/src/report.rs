//! One line of the report: a figure, its spread over rounds, its ratio to the baseline.

use serde::Serialize;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) bench: String,
    pub(crate) what: String,
    /// Median over rounds (or the single value).
    pub(crate) value: f64,
    pub(crate) unit: String,
    /// Smallest and largest over rounds.
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// Value divided by the baseline's, where there is one.
    pub(crate) ratio: Option<f64>,
    /// The target this figure should meet, in words.
    pub(crate) target: Option<String>,
}

impl Row {
    pub(crate) fn from_samples(bench: &str, what: &str, unit: &str, samples: &[f64]) -> Row {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Row {
            bench: bench.into(),
            what: what.into(),
            value: s[s.len() / 2],
            unit: unit.into(),
            min: s[0],
            max: s[s.len() - 1],
            ratio: None,
            target: None,
        }
    }

    pub(crate) fn single(bench: &str, what: &str, unit: &str, value: f64) -> Row {
        Row::from_samples(bench, what, unit, &[value])
    }

    pub(crate) fn against(mut self, baseline: &Row) -> Row {
        self.ratio = Some(self.value / baseline.value);
        self
    }

    pub(crate) fn target(mut self, t: &str) -> Row {
        self.target = Some(t.into());
        self
    }
}
