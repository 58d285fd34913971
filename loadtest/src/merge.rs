//! `smtpload merge`: one report from several generators' files (processes
//! on one host or pods on a cluster). Either their `--json` reports, which
//! carry every histogram whole, merged into the run's full report
//! ([`Results::merge`], printed by the same code as a run's); or their
//! `--hist-log` interval logs, summed per tag. Histograms add, so
//! percentiles are those of all samples, never averages of percentiles;
//! the time span runs from the earliest start to the latest end.

use crate::report::{hdr_decode, histogram_header, histogram_row, Results, PHASES};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What a file holds, judged by its first byte.
pub fn is_json(data: &[u8]) -> bool {
    data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// One `--json` report read back.
pub fn report(data: &[u8]) -> Result<Results, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    Results::from_json(&v)
}

/// Interval logs summed: per tag, and the span they cover.
#[derive(Debug, Default)]
pub struct Logs {
    /// Per tag, the sum of every interval histogram.
    pub tags: BTreeMap<String, Histogram<u64>>,
    /// The earliest interval start and latest interval end, since the epoch.
    pub span: Option<(Duration, Duration)>,
    /// Logs added.
    pub files: usize,
}

impl Logs {
    /// Adds one interval log.
    pub fn add(&mut self, log: &[u8]) -> Result<(), String> {
        let (mut start, mut base) = (None, None);
        for entry in IntervalLogIterator::new(log) {
            let iv =
                match entry.map_err(|_| "neither a --json report nor a --hist-log interval log")? {
                    LogEntry::StartTime(t) => {
                        start = Some(t);
                        continue;
                    }
                    LogEntry::BaseTime(t) => {
                        base = Some(t);
                        continue;
                    }
                    LogEntry::Interval(iv) => iv,
                };
            let h = hdr_decode(iv.encoded_histogram())?;
            let tag = iv.tag().map_or("untagged", |t| t.as_str()).to_string();
            match self.tags.get_mut(&tag) {
                Some(total) => total.add(&h).map_err(|e| format!("{tag}: {e:?}"))?,
                None => drop(self.tags.insert(tag, h)),
            }
            // Timestamps are relative to BaseTime (else StartTime).
            let at = base.or(start).unwrap_or_default() + iv.start_timestamp();
            let end = at + iv.duration();
            self.span = Some(
                self.span
                    .map_or((at, end), |(a, b)| (a.min(at), b.max(end))),
            );
        }
        self.files += 1;
        Ok(())
    }

    /// The merged report: the span, messages and their rate over it, and
    /// one line per tag.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let secs = self
            .span
            .map_or(0.0, |(a, b)| b.saturating_sub(a).as_secs_f64());
        let messages = self.tags.get("message").map_or(0, Histogram::len);
        let _ = writeln!(
            s,
            "smtpload merge: {} interval logs, {secs:.3}s from the earliest start to the latest end",
            self.files
        );
        let _ = writeln!(
            s,
            "  messages   {messages} measured, {:.1} msg/s over the span",
            messages as f64 / secs.max(1e-9)
        );
        let _ = writeln!(s, "  latency    {}", histogram_header("", 20));
        // In the run report's order; tags of other writers after them.
        let mut tags: Vec<_> = self.tags.iter().collect();
        tags.sort_by_key(|(t, _)| PHASES.iter().position(|p| p == t).unwrap_or(PHASES.len()));
        for (tag, h) in tags {
            let _ = writeln!(s, "             {}", histogram_row(tag, 20, h));
        }
        s
    }
}
