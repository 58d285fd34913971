//! The `smtpsink` binary: parse the configuration, bind, run the reactor,
//! print the final statistics. Start-up errors are one line and exit code 1.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smtpsink::completion::Completer;
use smtpsink::config::Config;
use smtpsink::histlog::HistLog;
use smtpsink::reactor::{Server, ShutdownHandle};
use smtpsink::run_summary::RunSummary;
use smtpsink::sink::maildir::MaildirOptions;
use smtpsink::sink::verify::RunState;
use smtpsink::sink::{Discard, Maildir, Sink, Summary, Verify};
use smtpsink::stats::Counters;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

fn main() -> ExitCode {
    let config = Config::parse();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("smtpsink: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), String> {
    config.check()?;
    if let Some(dir) = &config.maildir {
        let opts = MaildirOptions {
            dir: dir.clone(),
            fsync: config.fsync,
            hostname: config.hostname.clone(),
            max_stored: config.max_stored,
            queue_limit: smtpsink::sink::maildir::QUEUE_LIMIT,
        };
        Maildir::prepare(&opts)?;
        let what = format!(
            "storing mail in {}{}",
            dir.display(),
            if config.fsync { ", fsync" } else { "" }
        );
        return serve_with(config, |c| Maildir::start(opts, &c), &what, NoWatch);
    }
    if config.verifying() {
        let watch = VerifyWatch::new(config)?;
        serve(
            config,
            Verify::default(),
            "discarding mail, verifying smtpload headers",
            watch,
        )
    } else {
        serve(config, Discard::default(), "discarding mail", NoWatch)
    }
}

/// What a sink does on the loop's tick beyond the interval line.
trait Watch<S>: Send + 'static {
    /// How often [`Watch::tick`] wants to run, if at all.
    fn every(&self) -> Option<Duration>;
    /// Housekeeping; true asks the server to stop.
    fn tick(&mut self, sink: &mut S, now: SystemTime) -> bool;
}

/// No chores.
struct NoWatch;

impl<S> Watch<S> for NoWatch {
    fn every(&self) -> Option<Duration> {
        None
    }
    fn tick(&mut self, _: &mut S, _: SystemTime) -> bool {
        false
    }
}

/// The verify sink's chores: read the run summary when it appears, stop
/// when the run is complete or quiet, write the transit log.
struct VerifyWatch {
    summary: Option<std::path::PathBuf>,
    loaded: bool,
    complained: bool,
    linger: Duration,
    log: Option<(HistLog, SystemTime)>,
    last_log: SystemTime,
}

impl VerifyWatch {
    fn new(config: &Config) -> Result<Self, String> {
        let start = SystemTime::now();
        let log = match &config.transit_log {
            Some(p) => Some((
                HistLog::create(
                    p,
                    "smtpsink transit latency (X-Smtpload-Sent to end of data), microseconds",
                    start,
                )
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?,
                start,
            )),
            None => None,
        };
        Ok(Self {
            summary: config.run_summary.clone(),
            loaded: false,
            complained: false,
            linger: config.linger,
            log,
            last_log: start,
        })
    }

    fn load(&mut self, sink: &mut Verify, now: SystemTime) {
        let Some(path) = &self.summary else { return };
        // smtpload writes it atomically (a rename), so a file that is there
        // is whole; until it is there, keep looking.
        let Ok(text) = std::fs::read(path) else {
            return;
        };
        match RunSummary::parse(&text) {
            Ok(s) => {
                eprintln!(
                    "smtpsink: run {:016x}: {} messages acknowledged, waiting for them",
                    s.run,
                    s.acknowledged()
                );
                sink.expect(s, now);
                self.loaded = true;
            }
            Err(e) if !self.complained => {
                eprintln!("smtpsink: cannot use {}: {e}", path.display());
                self.complained = true;
            }
            Err(_) => {}
        }
    }
}

impl VerifyWatch {
    /// Whether the expected run is done with: complete, or quiet for the
    /// linger time (then its missing messages are lost).
    fn stop_now(&self, sink: &mut Verify, now: SystemTime) -> bool {
        match sink.run_state(now, self.linger) {
            RunState::Waiting => false,
            RunState::Complete => {
                eprintln!("smtpsink: every acknowledged message arrived; stopping");
                true
            }
            RunState::Quiet => {
                eprintln!(
                    "smtpsink: nothing arrived for {:.1}s; the missing messages count as lost",
                    self.linger.as_secs_f64()
                );
                sink.finish(true);
                true
            }
        }
    }
}

impl Watch<Verify> for VerifyWatch {
    fn every(&self) -> Option<Duration> {
        (self.summary.is_some() || self.log.is_some()).then_some(Duration::from_millis(100))
    }

    fn tick(&mut self, sink: &mut Verify, now: SystemTime) -> bool {
        let stop = self.loaded && self.stop_now(sink, now);
        if !self.loaded {
            self.load(sink, now);
        }
        if let Some((log, start)) = &mut self.log {
            let since = now.duration_since(self.last_log).unwrap_or_default();
            // Each second, and the last part when stopping.
            if since >= Duration::from_secs(1) || stop {
                let offset = self.last_log.duration_since(*start).unwrap_or_default();
                let h = sink.take_interval();
                if let Err(e) = log
                    .write("transit", offset, since, &h)
                    .and_then(|()| log.flush())
                {
                    eprintln!("smtpsink: cannot write the transit log: {e}");
                    self.log = None;
                }
                self.last_log = now;
            }
        }
        stop
    }
}

/// Each connection is a file descriptor: raise the soft limit towards the
/// hard one so `--max-connections` is reachable (the default soft limit is
/// often 1024), and say so when it still is not.
fn raise_fd_limit(config: &Config) {
    let want = u64::from(config.max_connections) + 64;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => eprintln!(
            "smtpsink: warning: the open-files limit is {got}; fewer than --max-connections {} can be served",
            config.max_connections
        ),
        _ => {}
    }
}

/// The tick: the interval line every `--stats-interval`, the sink's chores
/// as often as they want.
fn install_tick<S: Sink + 'static, W: Watch<S>>(
    server: &mut Server<S>,
    config: &Config,
    mut watch: W,
    handle: ShutdownHandle,
) {
    let interval = config.stats_interval();
    let Some(every) = [interval, watch.every()].into_iter().flatten().min() else {
        return;
    };
    let mut prev = Counters::default();
    let mut last_line = Duration::ZERO;
    let mut stopping = false;
    server.on_tick(
        every,
        Box::new(move |stats, sink, elapsed| {
            if let Some(i) = interval {
                if elapsed.saturating_sub(last_line) >= i {
                    eprintln!(
                        "{}",
                        stats.interval_line(&prev, elapsed, elapsed.saturating_sub(last_line))
                    );
                    prev = stats.counters;
                    last_line = elapsed;
                }
            }
            if !stopping && watch.tick(sink, SystemTime::now()) {
                stopping = true;
                handle.request();
            }
        }),
    );
}

fn serve<S, W>(config: &Config, sink: S, what: &str, watch: W) -> Result<(), String>
where
    S: Sink + Summary + Send + 'static,
    W: Watch<S>,
{
    serve_with(config, |_| sink, what, watch)
}

/// Serves with the sink `make_sink` builds from the loop's completer.
fn serve_with<S, W>(
    config: &Config,
    make_sink: impl FnOnce(Completer) -> S,
    what: &str,
    watch: W,
) -> Result<(), String>
where
    S: Sink + Summary + Send + 'static,
    W: Watch<S>,
{
    raise_fd_limit(config);
    let mut server = Server::from_config_with(config, make_sink)?;
    // Without --seed a fresh one each start, printed so a run can be replayed.
    let seed = config.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
    });
    let engine = config.engine(seed)?;
    if let Some(engine) = &engine {
        eprintln!(
            "smtpsink: {} rule(s){}{}, seed {}",
            engine.set().rules.len(),
            if engine.set().limits.is_empty() {
                ""
            } else {
                ", rate limits"
            },
            if engine.set().magic {
                ", magic addresses"
            } else {
                ""
            },
            engine.seed()
        );
    }
    server.set_rules(engine, seed);
    if let Some(addr) = config.control {
        let bound = server
            .serve_control(addr)
            .map_err(|e| format!("control endpoint: {e}"))?;
        eprintln!(
            "smtpsink: control endpoint on http://{bound}/ (metrics, stats, rules, reset, health)"
        );
    }
    let handle = server.shutdown_handle();
    install_tick(&mut server, config, watch, handle.clone());
    let tls = server.tls_addrs();
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|a| {
            if tls.contains(a) {
                format!("{a} (TLS)")
            } else {
                a.to_string()
            }
        })
        .collect();
    let offers = match (config.no_tls, config.no_auth) {
        (true, true) => "",
        (true, false) => ", AUTH",
        (false, true) => ", STARTTLS",
        (false, false) => ", STARTTLS, AUTH",
    };
    eprintln!(
        "smtpsink: listening on {} ({what}{offers})",
        addrs.join(", ")
    );

    // Signals are turned into shutdown requests on a tiny thread, so the
    // reactor only ever sees its own waker.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            handle.request();
        }
    });

    let report = server
        .run()
        .map_err(|e| format!("event loop failed: {e}"))?;
    print!("{}", report.stats.summary(report.elapsed));
    print!("{}", report.sink.summary());
    if let Some(e) = &report.rules {
        print!("{}", e.summary());
    }
    if let Some(path) = &config.json {
        let mut j = report.stats.json(report.elapsed);
        if let Some((key, figures)) = report.sink.json() {
            j[key] = figures;
        }
        if let Some(e) = &report.rules {
            j["rules"] = e.json();
        }
        std::fs::write(path, j.to_string() + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
