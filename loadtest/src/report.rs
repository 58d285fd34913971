//! Measurements and how they are reported: HDR histograms per phase (in
//! microseconds, recorded saturating), errors by stage and reply code, the
//! open loop's schedule (requested, achieved, never started, start lag), the
//! progress line, the final human report, `--json`, `--hist-log` (an
//! `HdrHistogram` interval log, see `smtpsink::histlog`) and the run
//! summary for `smtpsink --run-summary`.
//!
//! Phases (each only the server's own time for it; see `smtpload --help`):
//! connect, greeting, ehlo, envelope, data, message; in an open loop also
//! message-uncorrected (from when the server could start the message rather
//! than from when it was due).

use crate::driver::Options;
use hdrhistogram::Histogram;
use smtpsink::histlog::HistLog;
use smtpsink::net::{IoCounts, TlsFailure, TlsInfo};
use smtpsink::proto::client::{Event, Phase, Stage};
use smtpsink::run_summary::{self, RunSummary};
use smtpsink::stats::{fmt_us, histogram, histogram_json, micros, spread, TlsStats};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// The measured phases, in report order, with their log tags.
pub const PHASES: [&str; 9] = [
    "connect",
    "greeting",
    "ehlo",
    "tls",
    "auth",
    "envelope",
    "data",
    "message",
    "message-uncorrected",
];

const CONNECT: usize = 0;
const MESSAGE: usize = 7;
const UNCORRECTED: usize = 8;

/// An open loop that starts less than this share of the requested rate, or
/// whose start lag p99 is over [`LATE`], could not keep up. (One message
/// due in the last microseconds of a timed run and not started while the
/// generator ran a few ms behind does not make a run that did not keep up.)
const KEEP_UP: f64 = 0.99;
/// How late a due message may start; the progress line too says "could not
/// keep up" once the oldest due message waits longer than this.
const LATE: Duration = Duration::from_millis(100);

fn index(p: Phase) -> usize {
    match p {
        Phase::Greeting => 1,
        Phase::Ehlo => 2,
        Phase::Tls => 3,
        Phase::Auth => 4,
        Phase::Envelope => 5,
        Phase::Data => 6,
    }
}

/// What kind of run it was, for the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Open loop at this many messages per second (`None`: closed loop).
    pub rate: Option<f64>,
    /// The sending mode asked for, e.g. "pipelined DATA".
    pub mode: String,
    /// Connections kept open.
    pub connections: usize,
    /// Messages asked for (`--messages`).
    pub messages: Option<u64>,
    /// Run length asked for (`--duration`).
    pub duration: Option<Duration>,
    /// Bytes of each message.
    pub message_len: u64,
}

impl RunInfo {
    fn new(o: &Options) -> Self {
        let c = &o.client;
        let mode = match (c.bdat, c.pipelining && c.ehlo) {
            (true, true) => format!("pipelined BDAT, window {}", c.window),
            (true, false) => "lock-step BDAT".into(),
            (false, true) => "pipelined DATA".into(),
            (false, false) => "lock-step DATA".into(),
        };
        Self {
            rate: o.rate,
            mode,
            connections: o.connections,
            messages: o.messages,
            duration: o.duration,
            message_len: 0,
        }
    }

    fn loop_kind(&self) -> &'static str {
        if self.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }
}

/// Collects events during a run.
pub struct Recorder {
    info: RunInfo,
    measure_from: Instant,
    warmup: Duration,
    total: Vec<Histogram<u64>>,
    interval: Vec<Histogram<u64>>,
    interval_start: Instant,
    t0: Instant,
    started_wall: SystemTime,
    started: u64,
    last_start: Option<Instant>,
    start_lag: Histogram<u64>,
    ok: u64,
    failed: u64,
    warmup_ok: u64,
    acked: Vec<u64>,
    connections: u64,
    /// Connections that pipelined / went lock-step after EHLO.
    pipelined: u64,
    lockstep: u64,
    errors: BTreeMap<(Stage, u16), u64>,
    error_total: u64,
    last_progress: (Instant, u64),
    hist_log: Option<HistLog>,
    tls: TlsStats,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
}

impl Recorder {
    /// A recorder for a run with options `o`; [`Recorder::begin`] starts it.
    pub fn new(o: &Options) -> Self {
        let now = Instant::now();
        Self {
            info: RunInfo::new(o),
            measure_from: now + o.warmup,
            warmup: o.warmup,
            total: (0..PHASES.len()).map(|_| histogram()).collect(),
            interval: (0..PHASES.len()).map(|_| histogram()).collect(),
            interval_start: now,
            t0: now,
            started_wall: SystemTime::now(),
            started: 0,
            last_start: None,
            start_lag: histogram(),
            ok: 0,
            failed: 0,
            warmup_ok: 0,
            acked: Vec::new(),
            connections: 0,
            pipelined: 0,
            lockstep: 0,
            errors: BTreeMap::new(),
            error_total: 0,
            last_progress: (now, 0),
            hist_log: None,
            tls: TlsStats::new(),
            aborted: None,
        }
    }

    /// A TLS handshake finished after `took` (the `tls` phase).
    pub fn tls_handshake(&mut self, info: TlsInfo, took: Duration) {
        self.tls.handshake(info, took);
    }

    /// A TLS handshake failed.
    pub fn tls_failure(&mut self, why: TlsFailure) {
        self.tls.failure(why);
    }

    /// The run (and its schedule) starts at `t0`.
    pub fn begin(&mut self, t0: Instant) {
        self.t0 = t0;
        self.started_wall = SystemTime::now();
        self.measure_from = t0 + self.warmup;
        self.interval_start = t0;
        self.last_progress = (t0, 0);
    }

    /// Bytes each accepted message adds to the MB/s figure.
    pub fn set_message_len(&mut self, n: usize) {
        self.info.message_len = n as u64;
    }

    /// Writes interval histograms to `path` as the run goes.
    pub fn log_to(&mut self, path: &Path) -> std::io::Result<()> {
        self.hist_log = Some(HistLog::create(
            path,
            "smtpload latency log, values in microseconds",
            SystemTime::now(),
        )?);
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

    /// A connection was established at `at`, `d` after its connect began.
    pub fn connected(&mut self, d: Duration, at: Instant) {
        self.connections += 1;
        if self.measuring(at) {
            self.record(CONNECT, d);
        }
    }

    /// A message was started at `now`; `due` is when the schedule wanted it.
    pub fn started(&mut self, due: Option<Instant>, now: Instant) {
        self.started += 1;
        self.last_start = Some(now);
        if let Some(due) = due {
            self.start_lag
                .saturating_record(micros(now.saturating_duration_since(due)));
        }
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
            Event::Ready { pipelining } => {
                if pipelining {
                    self.pipelined += 1;
                } else {
                    self.lockstep += 1;
                }
            }
            Event::Error { stage, code } => self.error(stage, code),
            Event::Done {
                seq,
                ok,
                intended,
                started,
                finished,
            } => {
                if !ok {
                    self.failed += 1;
                    return;
                }
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                if self.acked.len() <= word {
                    self.acked.resize(word + 1, 0);
                }
                if let Some(w) = self.acked.get_mut(word) {
                    *w |= 1 << bit;
                }
                if !self.measuring(started) {
                    self.warmup_ok += 1;
                    return;
                }
                self.ok += 1;
                self.record(MESSAGE, finished.saturating_duration_since(intended));
                if self.info.rate.is_some() {
                    self.record(UNCORRECTED, finished.saturating_duration_since(started));
                }
            }
        }
    }

    /// The once-a-second progress line; `behind` is the open loop's count
    /// of due messages not yet started and how late the oldest is.
    pub fn progress_line(&mut self, now: Instant, behind: Option<(u64, Duration)>) -> String {
        let (then, done_then) = self.last_progress;
        let done = self.ok + self.warmup_ok;
        let secs = now.saturating_duration_since(then).as_secs_f64().max(1e-9);
        self.last_progress = (now, done);
        let p99 = self
            .total
            .get(MESSAGE)
            .map_or(0, |h| h.value_at_quantile(0.99));
        let mut line = format!(
            "smtpload: {:.0}s sent={} ok={} ({:.0}/s) failed={} errors={} message-p99={}",
            now.saturating_duration_since(self.t0).as_secs_f64(),
            self.started,
            done,
            (done - done_then) as f64 / secs,
            self.failed,
            self.error_total,
            fmt_us(p99),
        );
        if let Some((n, late)) = behind {
            let _ = write!(line, " behind={n} ({} late)", fmt_us(micros(late)));
            if late > LATE {
                line.push_str(" COULD NOT KEEP UP");
            }
        }
        line
    }

    /// Closes the current interval, writing it to the histogram log.
    pub fn interval(&mut self, now: Instant) {
        let start = self.interval_start;
        self.interval_start = now;
        if let Some(log) = &mut self.hist_log {
            let offset = start.saturating_duration_since(self.t0);
            let length = now.saturating_duration_since(start);
            let written = PHASES
                .iter()
                .zip(&self.interval)
                .try_for_each(|(name, h)| log.write(name, offset, length, h))
                .and_then(|()| log.flush());
            if let Err(e) = written {
                eprintln!("smtpload: cannot write the histogram log: {e}");
                self.hist_log = None;
            }
        }
        for h in &mut self.interval {
            h.reset();
        }
    }

    /// Ends the run: the results, and the last interval logged. `scheduled`
    /// is the open loop's count of messages due by the end.
    pub fn finish(mut self, now: Instant, scheduled: Option<u64>, io: IoCounts) -> Results {
        self.interval(now);
        let measured = now.saturating_duration_since(self.measure_from.min(now));
        let schedule = match (self.info.rate, scheduled) {
            (Some(rate), Some(scheduled)) => {
                // The schedule needed scheduled/rate; a generator that fell
                // behind needed longer to start what it started.
                let needed = scheduled as f64 / rate;
                let took = self.last_start.map_or(0.0, |t| {
                    t.saturating_duration_since(self.t0).as_secs_f64() + 1.0 / rate
                });
                let achieved = self.started as f64 / needed.max(took).max(1e-9);
                let never = scheduled.saturating_sub(self.started);
                Some(Schedule {
                    requested_rate: rate,
                    achieved_rate: achieved,
                    scheduled,
                    never_started: never,
                    kept_up: achieved >= KEEP_UP * rate
                        && self.start_lag.value_at_quantile(0.99) <= micros(LATE),
                    start_lag: self.start_lag,
                })
            }
            _ => None,
        };
        let phases = PHASES
            .iter()
            .copied()
            .zip(self.total)
            .filter(|(name, _)| self.info.rate.is_some() || *name != "message-uncorrected")
            .collect();
        let ended_wall = SystemTime::now();
        let bytes = self.ok * self.info.message_len;
        Results {
            info: self.info,
            measured,
            started: self.started,
            ok: self.ok,
            failed: self.failed,
            warmup_ok: self.warmup_ok,
            acked: run_summary::ranges(&self.acked),
            bytes,
            sent: io,
            connections: self.connections,
            pipelined: self.pipelined,
            lockstep: self.lockstep,
            schedule,
            phases,
            errors: self.errors,
            aborted: self.aborted,
            wall: (self.started_wall, ended_wall),
            tls: self.tls,
        }
    }
}

/// The open loop's schedule, as kept.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `--rate`.
    pub requested_rate: f64,
    /// Messages started per second of the time their starting took.
    pub achieved_rate: f64,
    /// Messages due by the end of the run.
    pub scheduled: u64,
    /// Due messages that were never started.
    pub never_started: u64,
    /// At least 99% of the requested rate started, p99 start lag <= 100 ms.
    pub kept_up: bool,
    /// How late messages started after they were due (µs).
    pub start_lag: Histogram<u64>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// What kind of run it was.
    pub info: RunInfo,
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
    /// Every accepted message's sequence number, as ranges (warm-up too).
    pub acked: Vec<(u64, u64)>,
    /// Message bytes accepted in the measured time.
    pub bytes: u64,
    /// What went over the wire, all of it.
    pub sent: IoCounts,
    /// Connections established.
    pub connections: u64,
    /// Connections that pipelined, and that went lock-step, after EHLO.
    pub pipelined: u64,
    /// See `pipelined`.
    pub lockstep: u64,
    /// The open loop's schedule (`None` in a closed loop).
    pub schedule: Option<Schedule>,
    /// Latency per phase, in microseconds, in report order.
    pub phases: Vec<(&'static str, Histogram<u64>)>,
    /// Errors by stage and reply code (0: no reply).
    pub errors: BTreeMap<(Stage, u16), u64>,
    /// Set when the run stopped early, with the reason.
    pub aborted: Option<String>,
    /// Wall-clock start and end of the run.
    pub wall: (SystemTime, SystemTime),
    /// TLS handshakes: full and resumed, versions, failures by class.
    pub tls: TlsStats,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

    /// The histogram of phase `name`, if it is reported.
    pub fn phase(&self, name: &str) -> Option<&Histogram<u64>> {
        self.phases.iter().find(|(n, _)| *n == name).map(|(_, h)| h)
    }

    /// The mode as it happened: the one asked for, and where the server
    /// did not offer PIPELINING, that those connections went lock-step.
    pub fn mode(&self) -> String {
        let mut m = self.info.mode.clone();
        if m.starts_with("pipelined") && self.lockstep > 0 {
            let _ = write!(
                m,
                " (lock-step on {} of {} connections: no PIPELINING offered)",
                self.lockstep,
                self.lockstep + self.pipelined
            );
        }
        m
    }

    /// The run summary for `smtpsink --run-summary`.
    pub fn summary(&self, run: u64) -> RunSummary {
        RunSummary {
            run,
            started_unix: unix_secs(self.wall.0),
            ended_unix: unix_secs(self.wall.1),
            failed: self.failed,
            acked: self.acked.clone(),
        }
    }

    /// The report's TLS line, when there were handshakes.
    fn tls_line(&self, s: &mut String) {
        let t = &self.tls;
        if t.any() {
            let _ = writeln!(
                s,
                "  tls        {} handshakes: {} full, {} resumed; {}; failed: {}",
                t.handshakes,
                t.handshakes - t.resumed,
                t.resumed,
                t.versions_text(),
                t.failures_text()
            );
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let i = &self.info;
        let secs = self.measured.as_secs_f64().max(1e-9);
        let amount = match (i.messages, i.duration) {
            (Some(m), Some(d)) => format!("{m} messages within {:.1}s", d.as_secs_f64()),
            (Some(m), None) => format!("{m} messages"),
            (None, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            s,
            "smtpload: {} loop{}, {}, {} connections, {amount} of {} bytes",
            i.loop_kind(),
            i.rate
                .map(|r| format!(" at {r} msg/s requested"))
                .unwrap_or_default(),
            self.mode(),
            i.connections,
            i.message_len,
        );
        let _ = writeln!(s, "  measured   {secs:.3}s");
        let _ = writeln!(
            s,
            "  messages   {} accepted, {} failed, {} started ({} accepted during warm-up)",
            self.ok, self.failed, self.started, self.warmup_ok
        );
        let _ = writeln!(
            s,
            "  throughput {:.1} msg/s, {:.2} MB/s  over {} connections",
            self.rate(),
            self.bytes as f64 / secs / 1e6,
            self.connections
        );
        let _ = writeln!(
            s,
            "  sent       {} bytes in {} writes",
            self.sent.bytes_out, self.sent.writes
        );
        if let Some(sc) = &self.schedule {
            let _ = writeln!(
                s,
                "  schedule   requested {:.1} msg/s, achieved {:.1} msg/s; {} due, {} never started; start lag p50={} p99={} max={}{}",
                sc.requested_rate,
                sc.achieved_rate,
                sc.scheduled,
                sc.never_started,
                fmt_us(sc.start_lag.value_at_quantile(0.5)),
                fmt_us(sc.start_lag.value_at_quantile(0.99)),
                fmt_us(sc.start_lag.max()),
                if sc.kept_up {
                    ""
                } else {
                    "  -- COULD NOT KEEP UP: the server (or smtpload) is slower than the rate"
                }
            );
        }
        self.tls_line(&mut s);
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
        let i = &self.info;
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .map(|(name, h)| ((*name).to_string(), histogram_json(h)))
            .collect();
        let errors: Vec<serde_json::Value> = self
            .errors
            .iter()
            .map(|((stage, code), n)| serde_json::json!({"stage": stage.name(), "code": code, "count": n}))
            .collect();
        let schedule = self.schedule.as_ref().map(|sc| {
            serde_json::json!({
                "requested_rate": sc.requested_rate,
                "achieved_rate": sc.achieved_rate,
                "scheduled": sc.scheduled,
                "never_started": sc.never_started,
                "kept_up": sc.kept_up,
                "start_lag": histogram_json(&sc.start_lag),
            })
        });
        serde_json::json!({
            "run": {
                "loop": i.loop_kind(),
                "requested_rate": i.rate,
                "achieved_rate": self.schedule.as_ref().map(|sc| sc.achieved_rate),
                "kept_up": self.schedule.as_ref().map(|sc| sc.kept_up),
                "mode": self.mode(),
                "connections": i.connections,
                "messages_requested": i.messages,
                "duration_s": i.duration.map(|d| d.as_secs_f64()),
                "message_bytes": i.message_len,
                "started_unix": unix_secs(self.wall.0),
                "ended_unix": unix_secs(self.wall.1),
            },
            "measured_s": self.measured.as_secs_f64(),
            "messages": {"accepted": self.ok, "failed": self.failed, "started": self.started, "warmup": self.warmup_ok},
            "sent": {"messages": self.started, "bytes": self.sent.bytes_out, "writes": self.sent.writes},
            "throughput": {"messages_per_s": self.rate(), "mb_per_s": self.bytes as f64 / self.measured.as_secs_f64().max(1e-9) / 1e6},
            "connections": self.connections,
            "schedule": schedule,
            "latency": phases,
            "errors": errors,
            "aborted": self.aborted,
            "tls": {
                "handshakes": self.tls.handshakes,
                "resumed": self.tls.resumed,
                "versions": self.tls.versions,
                "failures": self.tls.failures,
            },
        })
    }
}

/// Column titles matching [`histogram_row`].
pub fn histogram_header(first: &str, width: usize) -> String {
    let mut s = format!("{first:>width$} {:>9}", "n");
    for (name, _) in spread(&histogram()) {
        let _ = write!(s, " {name:>9}");
    }
    s
}

/// One histogram as a table row: count, min and percentiles.
pub fn histogram_row(name: &str, width: usize, h: &Histogram<u64>) -> String {
    let mut s = format!("{name:>width$} {:>9}", h.len());
    for (_, v) in spread(h) {
        let _ = write!(s, " {:>9}", fmt_us(v));
    }
    s
}
