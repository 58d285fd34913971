//! Measurements and how they are reported: HDR histograms per phase (in
//! microseconds, recorded saturating), errors by stage and reply code, the
//! progress line, the final human report, `--json`, and `--hist-log` in the
//! standard `HdrHistogram` interval log format (mergeable with `smtpload
//! merge` or any `HdrHistogram` tool).

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use smtpsink::proto::client::{Event, Phase, Stage};
use smtpsink::stats::{histogram, micros};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The measured phases, in report order, with their log tags.
pub const PHASES: [&str; 7] = [
    "connect",
    "greeting",
    "ehlo",
    "envelope",
    "data",
    "message",
    "message-uncorrected",
];

const CONNECT: usize = 0;
const MESSAGE: usize = 5;
const UNCORRECTED: usize = 6;

fn index(p: Phase) -> usize {
    match p {
        Phase::Greeting => 1,
        Phase::Ehlo => 2,
        Phase::Envelope => 3,
        Phase::Data => 4,
    }
}

/// Collects events during a run.
pub struct Recorder {
    measure_from: Instant,
    message_len: u64,
    total: Vec<Histogram<u64>>,
    interval: Vec<Histogram<u64>>,
    interval_start: Instant,
    t0: Instant,
    started: u64,
    ok: u64,
    failed: u64,
    warmup_ok: u64,
    connections: u64,
    errors: BTreeMap<(Stage, u16), u64>,
    error_total: u64,
    last_progress: (Instant, u64),
    hist_log: Option<(PathBuf, Duration)>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
}

impl Recorder {
    /// A recorder that measures events from `measure_from` on (after the warm-up).
    pub fn new(measure_from: Instant) -> Self {
        let now = Instant::now();
        Self {
            measure_from,
            message_len: 0,
            total: (0..PHASES.len()).map(|_| histogram()).collect(),
            interval: (0..PHASES.len()).map(|_| histogram()).collect(),
            interval_start: now,
            t0: now,
            started: 0,
            ok: 0,
            failed: 0,
            warmup_ok: 0,
            connections: 0,
            errors: BTreeMap::new(),
            error_total: 0,
            last_progress: (now, 0),
            hist_log: None,
            aborted: None,
        }
    }

    /// Bytes each accepted message adds to the MB/s figure.
    pub fn set_message_len(&mut self, n: usize) {
        self.message_len = n as u64;
    }

    /// Writes interval histograms to `path` as the run goes.
    pub fn log_to(&mut self, path: PathBuf) -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let start = SystemTime::now();
        let since_epoch = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut ser = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("smtpload latency log, values in microseconds")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut f, &mut ser)?;
        self.hist_log = Some((path, since_epoch));
        Ok(())
    }

    fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from
    }

    fn record(&mut self, i: usize, d: Duration) {
        let v = micros(d);
        if let Some(h) = self.total.get_mut(i) {
            h.saturating_record(v);
        }
        if let Some(h) = self.interval.get_mut(i) {
            h.saturating_record(v);
        }
    }

    /// A connection was established `d` after its connect began.
    pub fn connected(&mut self, d: Duration) {
        self.connections += 1;
        if self.measuring(Instant::now()) {
            self.record(CONNECT, d);
        }
    }

    /// A message was started.
    pub fn started(&mut self, _seq: u64, _now: Instant) {
        self.started += 1;
    }

    /// Counts one error at `stage` (`code` 0: no reply).
    pub fn error(&mut self, stage: Stage, code: u16) {
        *self.errors.entry((stage, code)).or_insert(0) += 1;
        self.error_total += 1;
    }

    /// Errors so far.
    pub fn error_count(&self) -> u64 {
        self.error_total
    }

    /// Records one event of a client session.
    pub fn event(&mut self, e: Event) {
        match e {
            Event::Latency(p, d) => {
                if self.measuring(Instant::now()) {
                    self.record(index(p), d);
                }
            }
            Event::Error { stage, code } => self.error(stage, code),
            Event::Done {
                ok,
                intended,
                started,
                finished,
                ..
            } => {
                if !ok {
                    self.failed += 1;
                } else if !self.measuring(started) {
                    self.warmup_ok += 1;
                } else {
                    self.ok += 1;
                    self.record(MESSAGE, finished.saturating_duration_since(intended));
                    self.record(UNCORRECTED, finished.saturating_duration_since(started));
                }
            }
        }
    }

    /// The once-a-second progress line.
    pub fn progress_line(&mut self, now: Instant) -> String {
        let (then, done_then) = self.last_progress;
        let done = self.ok + self.warmup_ok;
        let secs = now.saturating_duration_since(then).as_secs_f64().max(1e-9);
        self.last_progress = (now, done);
        let p99 = self
            .total
            .get(MESSAGE)
            .map_or(0, |h| h.value_at_quantile(0.99));
        format!(
            "smtpload: {:.0}s sent={} ok={} ({:.0}/s) failed={} errors={} p99={}",
            now.saturating_duration_since(self.t0).as_secs_f64(),
            self.started,
            done,
            (done - done_then) as f64 / secs,
            self.failed,
            self.error_total,
            fmt_us(p99),
        )
    }

    /// Closes the current interval, writing it to the histogram log.
    pub fn interval(&mut self, now: Instant) {
        let start = self.interval_start;
        self.interval_start = now;
        let Some((path, _)) = &self.hist_log else {
            for h in &mut self.interval {
                h.reset();
            }
            return;
        };
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().append(true).open(path)?;
            let mut ser = V2DeflateSerializer::new();
            let mut w = IntervalLogWriterBuilder::new().begin_log_with(&mut f, &mut ser)?;
            for (name, h) in PHASES.iter().zip(&self.interval) {
                if h.is_empty() {
                    continue;
                }
                let offset = start.saturating_duration_since(self.t0);
                w.write_histogram(
                    h,
                    offset,
                    now.saturating_duration_since(start),
                    Tag::new(name),
                )
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            eprintln!(
                "smtpload: cannot write histogram log {}: {e}",
                path.display()
            );
            self.hist_log = None;
        }
        for h in &mut self.interval {
            h.reset();
        }
    }

    /// Ends the run: the results, and the last interval logged.
    pub fn finish(mut self, now: Instant) -> Results {
        self.interval(now);
        let measured = now.saturating_duration_since(self.measure_from.min(now));
        Results {
            measured,
            started: self.started,
            ok: self.ok,
            failed: self.failed,
            warmup_ok: self.warmup_ok,
            bytes: self.ok * self.message_len,
            connections: self.connections,
            phases: PHASES.iter().copied().zip(self.total).collect(),
            errors: self.errors,
            aborted: self.aborted,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// From the end of the warm-up to the end of the run.
    pub measured: Duration,
    /// Messages started.
    pub started: u64,
    /// Accepted messages started after the warm-up.
    pub ok: u64,
    /// Messages that failed (refused, dropped, timed out).
    pub failed: u64,
    /// Messages accepted during the warm-up (not measured).
    pub warmup_ok: u64,
    /// Message bytes accepted in the measured time.
    pub bytes: u64,
    /// Connections established.
    pub connections: u64,
    /// Latency per phase, in microseconds, in report order.
    pub phases: Vec<(&'static str, Histogram<u64>)>,
    /// Errors by stage and reply code (0: no reply).
    pub errors: BTreeMap<(Stage, u16), u64>,
    /// Set when the run stopped early, with the reason.
    pub aborted: Option<String>,
}

impl Results {
    /// All errors.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Accepted messages per second of measured time.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let secs = self.measured.as_secs_f64().max(1e-9);
        let _ = writeln!(s, "smtpload: {secs:.3}s measured");
        let _ = writeln!(
            s,
            "  messages   {} accepted, {} failed, {} started ({} during warm-up)",
            self.ok, self.failed, self.started, self.warmup_ok
        );
        let _ = writeln!(
            s,
            "  throughput {:.1} msg/s, {:.2} MB/s  over {} connections",
            self.rate(),
            self.bytes as f64 / secs / 1e6,
            self.connections
        );
        let _ = writeln!(s, "  latency    {}", histogram_header("", 20));
        for (name, h) in &self.phases {
            if !h.is_empty() {
                let _ = writeln!(s, "             {}", histogram_row(name, 20, h));
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors     none");
        } else {
            let _ = writeln!(s, "  errors     {} in all:", self.error_total());
            for ((stage, code), n) in &self.errors {
                let code = if *code == 0 {
                    "-".to_string()
                } else {
                    code.to_string()
                };
                let _ = writeln!(s, "             {:>12} {:>4} {:>9}", stage.name(), code, n);
            }
        }
        if let Some(why) = &self.aborted {
            let _ = writeln!(s, "  aborted    {why}");
        }
        s
    }

    /// The machine-readable report for `--json`.
    pub fn json(&self) -> serde_json::Value {
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .map(|(name, h)| {
                (
                    (*name).to_string(),
                    serde_json::json!({
                        "count": h.len(),
                        "p50_us": h.value_at_quantile(0.5),
                        "p90_us": h.value_at_quantile(0.9),
                        "p99_us": h.value_at_quantile(0.99),
                        "p999_us": h.value_at_quantile(0.999),
                        "max_us": h.max(),
                        "mean_us": h.mean(),
                    }),
                )
            })
            .collect();
        let errors: Vec<serde_json::Value> = self
            .errors
            .iter()
            .map(|((stage, code), n)| serde_json::json!({"stage": stage.name(), "code": code, "count": n}))
            .collect();
        serde_json::json!({
            "measured_s": self.measured.as_secs_f64(),
            "messages": {"accepted": self.ok, "failed": self.failed, "started": self.started, "warmup": self.warmup_ok},
            "throughput": {"messages_per_s": self.rate(), "mb_per_s": self.bytes as f64 / self.measured.as_secs_f64().max(1e-9) / 1e6},
            "connections": self.connections,
            "latency": phases,
            "errors": errors,
            "aborted": self.aborted,
        })
    }
}

/// Column titles matching [`histogram_row`].
pub fn histogram_header(first: &str, width: usize) -> String {
    format!(
        "{first:>width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "n", "p50", "p90", "p99", "p99.9", "max"
    )
}

/// One histogram as a table row: count and percentiles.
pub fn histogram_row(name: &str, width: usize, h: &Histogram<u64>) -> String {
    format!(
        "{name:>width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        h.len(),
        fmt_us(h.value_at_quantile(0.5)),
        fmt_us(h.value_at_quantile(0.9)),
        fmt_us(h.value_at_quantile(0.99)),
        fmt_us(h.value_at_quantile(0.999)),
        fmt_us(h.max()),
    )
}

/// Microseconds in a short human unit.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}
