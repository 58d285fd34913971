//! `HdrHistogram` interval logs, written the way `HdrHistogram`'s own log
//! writers write them, so its tools (Java `HistogramLogProcessor`, Python
//! `hdrh`, Rust `IntervalLogIterator`) read ours as they read theirs: an
//! optional comment, the format-version line, `StartTime` and `BaseTime`, the
//! legend, then one line per tagged interval histogram (V2 compressed,
//! base64), timestamps in seconds relative to `BaseTime`. Used by smtpload
//! (`--hist-log`, per phase) and by `smtpsink --transit-log`.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The log format version `HdrHistogram`'s Java writer declares.
pub const FORMAT_VERSION: &str = "1.3";

/// The legend line of `HdrHistogram`'s writers.
pub const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// An open interval log.
pub struct HistLog {
    out: BufWriter<File>,
    ser: V2DeflateSerializer,
}

impl HistLog {
    /// Creates `path` and writes the header; `start` is the log's start
    /// (and base) time, `comment` says what the values are.
    pub fn create(path: &Path, comment: &str, start: SystemTime) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        let secs = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        writeln!(out, "#{comment}")?;
        writeln!(out, "#[Histogram log format version {FORMAT_VERSION}]")?;
        writeln!(
            out,
            "#[StartTime: {secs:.3} (seconds since epoch), {}]",
            httpdate::fmt_http_date(start)
        )?;
        writeln!(out, "#[BaseTime: {secs:.3} (seconds since epoch)]")?;
        writeln!(out, "{LEGEND}")?;
        out.flush()?;
        Ok(Self {
            out,
            ser: V2DeflateSerializer::new(),
        })
    }

    /// Appends one interval: `offset` from the start, lasting `length`.
    /// Empty histograms are skipped, as `HdrHistogram`'s recorders do.
    pub fn write(
        &mut self,
        tag: &str,
        offset: Duration,
        length: Duration,
        h: &Histogram<u64>,
    ) -> io::Result<()> {
        if h.is_empty() {
            return Ok(());
        }
        // A builder with no headers writes nothing itself: our header is out.
        let mut w = IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.ser)?;
        w.write_histogram(h, offset, length, Tag::new(tag))
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }

    /// Writes what is buffered (once per interval, so a reader sees whole lines).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn header_lines_and_intervals_read_back() {
        let dir = std::env::temp_dir().join(format!("histlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.hlog");
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_489_320_123);
        let mut log = HistLog::create(&path, "values in microseconds", start).unwrap();
        let mut h = crate::stats::histogram();
        h.record(250).unwrap();
        h.record(1000).unwrap();
        log.write(
            "transit",
            Duration::from_secs(1),
            Duration::from_secs(1),
            &h,
        )
        .unwrap();
        log.write(
            "empty",
            Duration::ZERO,
            Duration::ZERO,
            &crate::stats::histogram(),
        )
        .unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#values in microseconds");
        assert_eq!(lines[1], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[2],
            "#[StartTime: 1764489320.123 (seconds since epoch), Sun, 30 Nov 2025 07:55:20 GMT]"
        );
        assert_eq!(
            lines[3],
            "#[BaseTime: 1764489320.123 (seconds since epoch)]"
        );
        assert_eq!(lines[4], LEGEND);
        assert!(lines[5].starts_with("Tag=transit,1.000,1.000,1000.000,HIST"));
        assert_eq!(lines.len(), 6, "empty intervals are skipped");
        let entries: Vec<_> = IntervalLogIterator::new(text.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(matches!(entries[0], LogEntry::StartTime(_)));
        assert!(matches!(entries[1], LogEntry::BaseTime(_)));
        let LogEntry::Interval(iv) = &entries[2] else {
            panic!("{entries:?}")
        };
        assert_eq!(iv.tag().map(|t| t.as_str()), Some("transit"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
