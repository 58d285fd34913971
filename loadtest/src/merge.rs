//! `smtpload merge`: combines `HdrHistogram` interval logs (from `--hist-log`,
//! possibly from several generator hosts) into one report per tag.

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Per tag, the sum of every interval histogram in `logs`.
pub fn merge(logs: &[Vec<u8>]) -> Result<BTreeMap<String, Histogram<u64>>, String> {
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut de = Deserializer::new();
    for (i, log) in logs.iter().enumerate() {
        for entry in IntervalLogIterator::new(log) {
            let entry = entry.map_err(|e| format!("log {}: {e:?}", i + 1))?;
            let LogEntry::Interval(iv) = entry else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(iv.encoded_histogram())
                .map_err(|e| format!("log {}: bad base64: {e}", i + 1))?;
            let h: Histogram<u64> = de
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| format!("log {}: bad histogram: {e:?}", i + 1))?;
            let tag = iv.tag().map_or("untagged", |t| t.as_str()).to_string();
            if let Some(total) = out.get_mut(&tag) {
                total.add(&h).map_err(|e| format!("log {}: {e:?}", i + 1))?;
            } else {
                let mut total = smtpsink::stats::histogram();
                total.add(&h).map_err(|e| format!("log {}: {e:?}", i + 1))?;
                out.insert(tag, total);
            }
        }
    }
    Ok(out)
}

/// The merged report, one line per tag.
pub fn text(merged: &BTreeMap<String, Histogram<u64>>) -> String {
    use crate::report::{histogram_header, histogram_row};
    let mut s = String::new();
    let _ = writeln!(s, "{}", histogram_header("tag", 20));
    for (tag, h) in merged {
        let _ = writeln!(s, "{}", histogram_row(tag, 20, h));
    }
    s
}
