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
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::Value;
use smtpsink::histlog::HistLog;
use smtpsink::net::{IoCounts, TlsFailure, TlsInfo};
use smtpsink::proto::client::{Event, Phase, Stage};
use smtpsink::run_summary::{self, RunSummary};
use smtpsink::stats::{fmt_us, histogram, histogram_json, micros, spread, TlsStats};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
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

/// Every error stage, to read a `--json` report's error table back.
const STAGES: [Stage; 16] = [
    Stage::Connect,
    Stage::Greeting,
    Stage::Ehlo,
    Stage::StartTls,
    Stage::Tls,
    Stage::Auth,
    Stage::Mail,
    Stage::Rcpt,
    Stage::Data,
    Stage::Bdat,
    Stage::EndOfData,
    Stage::Rset,
    Stage::Quit,
    Stage::Protocol,
    Stage::Disconnect,
    Stage::Timeout,
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
    /// What `o` asks of its lane (with one lane, the whole run): its
    /// connections, its share of the messages and of the rate.
    pub fn new(o: &Options) -> Self {
        let c = &o.client;
        let mode = match (c.bdat, c.pipelining && c.ehlo) {
            (true, true) => format!("pipelined BDAT, window {}", c.window),
            (true, false) => "lock-step BDAT".into(),
            (false, true) => "pipelined DATA".into(),
            (false, false) => "lock-step DATA".into(),
        };
        Self {
            #[allow(clippy::cast_precision_loss)]
            rate: o.rate.map(|r| r / o.lane.count.max(1) as f64),
            mode,
            connections: o.connections,
            messages: o.messages.map(|m| o.lane.share(m)),
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

    /// Another generator's part of one run: connections, messages and
    /// rates add, the longest duration stands. Runs of different kinds
    /// (loop, mode, message size) are not one run.
    fn add(&mut self, o: &RunInfo) -> Result<(), String> {
        if (self.loop_kind(), &self.mode, self.message_len)
            != (o.loop_kind(), &o.mode, o.message_len)
        {
            return Err(format!(
                "not parts of one run: {} loop, {}, {} bytes vs {} loop, {}, {} bytes",
                self.loop_kind(),
                self.mode,
                self.message_len,
                o.loop_kind(),
                o.mode,
                o.message_len
            ));
        }
        let sum = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        self.connections += o.connections;
        self.messages = sum(self.messages, o.messages);
        self.rate = self.rate.zip(o.rate).map(|(a, b)| a + b);
        self.duration = self.duration.max(o.duration);
        Ok(())
    }
}

/// `h` as `HdrHistogram`'s V2 compressed encoding in base64, as interval
/// logs carry it: the whole histogram, so reports merge exactly.
pub fn hdr_encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail for a histogram we made.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The histogram [`hdr_encode`] (or an interval log line) encoded.
pub fn hdr_decode(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64: {e}"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("bad histogram: {e:?}"))?;
    // Into our bounds, so that parts add (a histogram of any range may come
    // from elsewhere).
    let mut ours = histogram();
    ours.add(&h)
        .map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(ours)
}

fn add_tls(into: &mut TlsStats, o: &TlsStats) {
    into.handshakes += o.handshakes;
    into.resumed += o.resumed;
    for (into, o) in [
        (&mut into.versions, &o.versions),
        (&mut into.ciphers, &o.ciphers),
        (&mut into.failures, &o.failures),
    ] {
        for (k, n) in o {
            *into.entry(k).or_insert(0) += n;
        }
    }
    let _ = into.latency.add(&o.latency);
    into.latency_sum_us += o.latency_sum_us;
}

/// Whether an open loop kept up: at least [`KEEP_UP`] of the requested
/// rate started, and the p99 start lag within [`LATE`].
fn kept_up(requested: f64, achieved: f64, lag: &Histogram<u64>) -> bool {
    achieved >= KEEP_UP * requested && lag.value_at_quantile(0.99) <= micros(LATE)
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
    hist_log: Option<Arc<Mutex<HistLog>>>,
    /// `Some((index, count))` for one of several lanes, for the progress line.
    lane: Option<(u64, u64)>,
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
            lane: (o.lane.count > 1).then_some((o.lane.index, o.lane.count)),
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

    /// Writes interval histograms to `log` as the run goes.
    pub fn log_to(&mut self, log: Arc<Mutex<HistLog>>) {
        self.hist_log = Some(log);
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
        if let Some((i, n)) = self.lane {
            let _ = write!(line, " (thread {} of {n})", i + 1);
        }
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
        if let Some(log) = &self.hist_log {
            let offset = start.saturating_duration_since(self.t0);
            let length = now.saturating_duration_since(start);
            // Another lane panicking with the lock cannot leave a torn log:
            // lines are whole when the lock is released.
            let mut log = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let written = PHASES
                .iter()
                .zip(&self.interval)
                .try_for_each(|(name, h)| log.write(name, offset, length, h))
                .and_then(|()| log.flush());
            drop(log);
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
                    kept_up: kept_up(rate, achieved, &self.start_lag),
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
    /// Several generators' results (threads, or processes' `--json`
    /// reports) as one run: counts add, histograms add (so percentiles are
    /// those of all the samples), the measured time runs from the earliest
    /// start of measuring to the latest end.
    pub fn merge(parts: Vec<Results>) -> Result<Results, String> {
        let mut parts = parts.into_iter();
        let mut m = parts.next().ok_or("nothing to merge")?;
        let measure_start = |r: &Results| r.wall.1.checked_sub(r.measured).unwrap_or(r.wall.1);
        let mut from = measure_start(&m);
        for r in parts {
            m.info.add(&r.info)?;
            from = from.min(measure_start(&r));
            m.wall = (m.wall.0.min(r.wall.0), m.wall.1.max(r.wall.1));
            m.started += r.started;
            m.ok += r.ok;
            m.failed += r.failed;
            m.warmup_ok += r.warmup_ok;
            m.acked.extend(r.acked);
            m.bytes += r.bytes;
            m.sent += r.sent;
            m.connections += r.connections;
            m.pipelined += r.pipelined;
            m.lockstep += r.lockstep;
            m.schedule = match (m.schedule.take(), r.schedule) {
                (Some(mut a), Some(b)) => {
                    a.requested_rate += b.requested_rate;
                    a.achieved_rate += b.achieved_rate;
                    a.scheduled += b.scheduled;
                    a.never_started += b.never_started;
                    let _ = a.start_lag.add(&b.start_lag);
                    a.kept_up = kept_up(a.requested_rate, a.achieved_rate, &a.start_lag);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            for (name, h) in r.phases {
                match m.phases.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => total.add(&h).map_err(|e| format!("{name}: {e:?}"))?,
                    None => m.phases.push((name, h)),
                }
            }
            for (k, n) in r.errors {
                *m.errors.entry(k).or_insert(0) += n;
            }
            m.aborted = m.aborted.or(r.aborted);
            add_tls(&mut m.tls, &r.tls);
        }
        m.measured = m.wall.1.duration_since(from).unwrap_or_default();
        // Each part's ranges are sorted; the union is coalesced once.
        m.acked.sort_unstable();
        let mut acked: Vec<(u64, u64)> = Vec::with_capacity(m.acked.len());
        for (a, b) in m.acked.drain(..) {
            match acked.last_mut() {
                Some((_, last)) if a <= *last + 1 => *last = (*last).max(b),
                _ => acked.push((a, b)),
            }
        }
        m.acked = acked;
        Ok(m)
    }

    /// Reads back a report [`Results::json`] wrote (for `smtpload merge`):
    /// everything the text report shows, histograms whole. The acknowledged
    /// sequence numbers are not in it.
    pub fn from_json(v: &Value) -> Result<Results, String> {
        let field = |path: &str| {
            path.split('.')
                .try_fold(v, |v, k| v.get(k))
                .ok_or_else(|| format!("no {path}"))
        };
        let num = |path: &str| {
            field(path)?
                .as_u64()
                .ok_or_else(|| format!("{path}: not a count"))
        };
        let real = |path: &str| {
            field(path)?
                .as_f64()
                .ok_or_else(|| format!("{path}: not a number"))
        };
        let opt = |path: &str| field(path).ok().filter(|v| !v.is_null());
        let time = |path: &str| {
            let secs = real(path)?;
            Duration::try_from_secs_f64(secs)
                .map(|d| SystemTime::UNIX_EPOCH + d)
                .map_err(|_| format!("{path}: not a time"))
        };
        let hdr = |v: &Value, what: &str| {
            let s = v.get("hdr").and_then(Value::as_str);
            hdr_decode(
                s.ok_or_else(|| format!("{what}: no hdr (a report from an older smtpload?)"))?,
            )
            .map_err(|e| format!("{what}: {e}"))
        };
        let mode = field("run.mode")?.as_str().ok_or("run.mode: not text")?;
        // The mode as asked, without the lock-step remark `mode()` adds.
        let mode = mode.split(" (").next().unwrap_or(mode).to_string();
        let info = RunInfo {
            rate: opt("run.requested_rate").and_then(Value::as_f64),
            mode,
            connections: usize::try_from(num("run.connections")?).unwrap_or(usize::MAX),
            messages: opt("run.messages_requested").and_then(Value::as_u64),
            duration: opt("run.duration_s")
                .and_then(Value::as_f64)
                .and_then(|d| Duration::try_from_secs_f64(d).ok()),
            message_len: num("run.message_bytes")?,
        };
        let mut phases = Vec::new();
        for (name, h) in field("latency")?
            .as_object()
            .ok_or("latency: not an object")?
        {
            let name = PHASES
                .iter()
                .find(|p| **p == name)
                .ok_or_else(|| format!("latency: unknown phase {name}"))?;
            phases.push((*name, hdr(h, name)?));
        }
        let errors = errors_from_json(field("errors")?)?;
        let schedule = opt("schedule").map(schedule_from_json).transpose()?;
        let tls = tls_from_json(v);
        let ok = num("messages.accepted")?;
        Ok(Results {
            measured: Duration::try_from_secs_f64(real("measured_s")?)
                .map_err(|_| "measured_s: not a duration")?,
            started: num("messages.started")?,
            ok,
            failed: num("messages.failed")?,
            warmup_ok: num("messages.warmup")?,
            acked: Vec::new(),
            bytes: ok * info.message_len,
            sent: IoCounts {
                bytes_out: num("sent.bytes")?,
                writes: num("sent.writes")?,
                ..IoCounts::default()
            },
            connections: num("connections")?,
            pipelined: opt("run.pipelined_connections")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            lockstep: opt("run.lockstep_connections")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            info,
            schedule,
            phases,
            errors,
            aborted: opt("aborted").and_then(Value::as_str).map(String::from),
            wall: (time("run.started_unix")?, time("run.ended_unix")?),
            tls,
        })
    }

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
            .map(|(name, h)| ((*name).to_string(), with_hdr(h)))
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
                "start_lag": with_hdr(&sc.start_lag),
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
                "pipelined_connections": self.pipelined,
                "lockstep_connections": self.lockstep,
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

/// A `--json` report's error table.
fn errors_from_json(v: &Value) -> Result<BTreeMap<(Stage, u16), u64>, String> {
    let mut errors = BTreeMap::new();
    for e in v.as_array().ok_or("errors: not a list")? {
        let stage = e.get("stage").and_then(Value::as_str).unwrap_or_default();
        let stage = STAGES
            .into_iter()
            .find(|s| s.name() == stage)
            .ok_or_else(|| format!("errors: unknown stage {stage:?}"))?;
        let code = e.get("code").and_then(Value::as_u64).unwrap_or(0);
        let n = e.get("count").and_then(Value::as_u64).unwrap_or(0);
        *errors
            .entry((stage, u16::try_from(code).unwrap_or(0)))
            .or_insert(0) += n;
    }
    Ok(errors)
}

/// A `--json` report's open-loop schedule.
fn schedule_from_json(sc: &Value) -> Result<Schedule, String> {
    let f = |k: &str| sc.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let n = |k: &str| sc.get(k).and_then(Value::as_u64).unwrap_or(0);
    let lag = sc
        .get("start_lag")
        .and_then(|l| l.get("hdr"))
        .and_then(Value::as_str)
        .ok_or("start_lag: no hdr")?;
    let lag = hdr_decode(lag).map_err(|e| format!("start_lag: {e}"))?;
    Ok(Schedule {
        requested_rate: f("requested_rate"),
        achieved_rate: f("achieved_rate"),
        scheduled: n("scheduled"),
        never_started: n("never_started"),
        kept_up: kept_up(f("requested_rate"), f("achieved_rate"), &lag),
        start_lag: lag,
    })
}

/// A `--json` report's TLS counts (handshake latency is not in it).
fn tls_from_json(v: &Value) -> TlsStats {
    let mut tls = TlsStats::new();
    let t = &v["tls"];
    tls.handshakes = t["handshakes"].as_u64().unwrap_or(0);
    tls.resumed = t["resumed"].as_u64().unwrap_or(0);
    for (into, key) in [
        (&mut tls.versions, "versions"),
        (&mut tls.failures, "failures"),
    ] {
        for (k, n) in t[key].as_object().into_iter().flatten() {
            // The keys are few and fixed; merge runs once per process.
            let k: &'static str = Box::leak(k.clone().into_boxed_str());
            *into.entry(k).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }
    tls
}

/// A histogram's figures and, as `hdr`, the whole of it (for `smtpload merge`).
fn with_hdr(h: &Histogram<u64>) -> Value {
    let mut v = histogram_json(h);
    if let Some(o) = v.as_object_mut() {
        o.insert("hdr".into(), hdr_encode(h).into());
    }
    v
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
