//! A Prometheus exposition as the tests read it.

use super::DEADLINE;
use std::collections::BTreeMap;

/// An exposition: its text and its samples (`name{labels}` as written, to
/// the value as written).
pub struct Metrics {
    pub text: String,
    pub samples: BTreeMap<String, String>,
    /// Sample lines in order (for the histogram's buckets).
    pub lines: Vec<(String, String)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let lines: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line");
                (k.to_string(), v.to_string())
            })
            .collect();
        let samples: BTreeMap<String, String> = lines.iter().cloned().collect();
        assert_eq!(samples.len(), lines.len(), "a series twice:\n{text}");
        assert!(text.ends_with('\n'));
        Self {
            text: text.to_string(),
            samples,
            lines,
        }
    }

    /// The value of series `key`, which must be an integer.
    pub fn n(&self, key: &str) -> u64 {
        let v = self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in\n{}", self.text));
        v.parse()
            .unwrap_or_else(|_| panic!("{key} = {v} is not a count"))
    }

    /// The label values and counts of the series of `name` with one label.
    pub fn by_label(&self, name: &str) -> BTreeMap<String, u64> {
        self.lines
            .iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix(name)?.strip_prefix('{')?;
                let (_, v) = rest.strip_suffix("\"}")?.split_once("=\"")?;
                Some((v.to_string(), self.n(k)))
            })
            .collect()
    }

    /// Checks the transaction histogram's shape; its count.
    pub fn histogram_count(&self) -> u64 {
        let name = "smtpsink_transaction_duration_seconds";
        let buckets: Vec<(f64, u64)> = self
            .lines
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&format!("{name}_bucket{{le=\""))?;
                let le = le.strip_suffix("\"}").expect("one label");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("a bound")
                };
                Some((le, v.parse().expect("a count")))
            })
            .collect();
        assert_eq!(buckets.len(), 19, "{}", self.text);
        for w in buckets.windows(2) {
            assert!(w[0].0 < w[1].0, "bounds rise: {buckets:?}");
            assert!(w[0].1 <= w[1].1, "cumulative counts: {buckets:?}");
        }
        let (top, inf) = buckets[buckets.len() - 1];
        assert!(top.is_infinite());
        let count = self.n(&format!("{name}_count"));
        assert_eq!(inf, count, "+Inf is the count");
        let sum: f64 = self.samples[&format!("{name}_sum")].parse().expect("sum");
        assert!(
            (count == 0) == (sum <= 0.0) && sum < DEADLINE.as_secs_f64() * 5.0,
            "sum {sum} for {count}"
        );
        count
    }
}
