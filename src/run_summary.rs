//! The run summary: what one smtpload run had acknowledged, written by
//! smtpload (`--summary FILE`) and read by `smtpsink --run-summary FILE`, so
//! the sink can tell lost mail (acknowledged by the server under test, never
//! delivered) from mail that was refused, even at the very end of a run.
//!
//! The format is one JSON object:
//! `{"format":"smtpload-run-summary","version":1,"run":"<16 hex>",
//!   "started_unix":S,"ended_unix":E,"acknowledged":N,"failed":F,
//!   "acked":[[first,last],...]}` — `acked` lists the acknowledged sequence
//! numbers as sorted, disjoint, inclusive ranges (a run with no refusals is
//! one range, so the file stays tiny however long the run).

use serde_json::{json, Value};

/// The `format` field's value.
pub const FORMAT: &str = "smtpload-run-summary";

/// One run's acknowledged messages.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run id (the `X-Smtpload-Run` header's value).
    pub run: u64,
    /// When the run began, seconds since the Unix epoch.
    pub started_unix: f64,
    /// When the run ended.
    pub ended_unix: f64,
    /// Messages that failed (refused, dropped, timed out).
    pub failed: u64,
    /// Acknowledged sequence numbers: sorted, disjoint, inclusive ranges.
    pub acked: Vec<(u64, u64)>,
}

impl RunSummary {
    /// Messages acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acked.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Whether `seq` was acknowledged.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.acked.partition_point(|(_, last)| *last < seq);
        self.acked.get(i).is_some_and(|(first, _)| *first <= seq)
    }

    /// The JSON text, one line.
    pub fn to_json(&self) -> String {
        let acked: Vec<Value> = self.acked.iter().map(|(a, b)| json!([a, b])).collect();
        json!({
            "format": FORMAT,
            "version": 1,
            "run": format!("{:016x}", self.run),
            "started_unix": self.started_unix,
            "ended_unix": self.ended_unix,
            "acknowledged": self.acknowledged(),
            "failed": self.failed,
            "acked": acked,
        })
        .to_string()
    }

    /// Reads the JSON text; says what is wrong with it if it is not one.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if v["format"] != FORMAT || v["version"] != 1 {
            return Err(format!("not a version 1 {FORMAT}"));
        }
        let run = v["run"]
            .as_str()
            .and_then(|r| u64::from_str_radix(r, 16).ok())
            .ok_or("bad \"run\"")?;
        let mut acked: Vec<(u64, u64)> = Vec::new();
        for r in v["acked"].as_array().ok_or("bad \"acked\"")? {
            let (Some(a), Some(b)) = (r[0].as_u64(), r[1].as_u64()) else {
                return Err("bad range in \"acked\"".into());
            };
            if a > b || acked.last().is_some_and(|(_, last)| *last >= a) {
                return Err("\"acked\" ranges must be sorted and disjoint".into());
            }
            acked.push((a, b));
        }
        let s = Self {
            run,
            started_unix: v["started_unix"].as_f64().unwrap_or(0.0),
            ended_unix: v["ended_unix"].as_f64().unwrap_or(0.0),
            failed: v["failed"].as_u64().unwrap_or(0),
            acked,
        };
        if v["acknowledged"].as_u64() != Some(s.acknowledged()) {
            return Err("\"acknowledged\" does not match \"acked\"".into());
        }
        Ok(s)
    }
}

/// Builds the sorted ranges from a bit set of sequence numbers (bit `s % 64`
/// of word `s / 64`).
pub fn ranges(bits: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (w, word) in bits.iter().enumerate() {
        let mut word = *word;
        while word != 0 {
            let seq = w as u64 * 64 + u64::from(word.trailing_zeros());
            word &= word - 1;
            match out.last_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ => out.push((seq, seq)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let mut bits = vec![0u64; 3];
        for s in [0, 1, 2, 5, 63, 64, 65, 130] {
            bits[s / 64] |= 1 << (s % 64);
        }
        let acked = ranges(&bits);
        assert_eq!(acked, [(0, 2), (5, 5), (63, 65), (130, 130)]);
        let s = RunSummary {
            run: 0xab,
            started_unix: 1.5,
            ended_unix: 2.5,
            failed: 3,
            acked,
        };
        assert_eq!(s.acknowledged(), 8);
        let back = RunSummary::parse(s.to_json().as_bytes()).unwrap();
        assert_eq!(back, s);
        for seq in 0..140 {
            assert_eq!(
                back.contains(seq),
                [0, 1, 2, 5, 63, 64, 65, 130].contains(&seq),
                "{seq}"
            );
        }
        assert!(RunSummary::parse(b"{}").is_err());
        let overlapping = s.to_json().replace("[5,5]", "[1,5]");
        assert!(RunSummary::parse(overlapping.as_bytes()).is_err());
        let miscounted = s
            .to_json()
            .replace("\"acknowledged\":8", "\"acknowledged\":9");
        assert!(RunSummary::parse(miscounted.as_bytes()).is_err());
    }
}
