//! The `smtpsink` binary: parse the configuration, bind, run the reactor
//! (or, with `--threads N`, N of them and the reporting loop that merges
//! their figures), print the final statistics. Start-up errors are one line
//! and exit code 1.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use smtpsink::completion::Completer;
use smtpsink::config::{Config, ListenOn};
use smtpsink::group::{Group, GroupControl};
use smtpsink::histlog::HistLog;
use smtpsink::reactor::control::ControlPort;
use smtpsink::reactor::listener;
use smtpsink::reactor::{Report, Server, ShutdownHandle};
use smtpsink::run_summary::RunSummary;
use smtpsink::sink::maildir::MaildirOptions;
use smtpsink::sink::verify::RunState;
use smtpsink::sink::{Discard, Maildir, Merge, Sink, Summary, Verify};
use smtpsink::stats::Counters;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

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
            Verify::default,
            "discarding mail, verifying smtpload headers",
            watch,
        )
    } else {
        serve(config, Discard::default, "discarding mail", NoWatch)
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
/// hard one so `--max-connections` (in every loop) is reachable (the
/// default soft limit is often 1024), and say so when it still is not.
fn raise_fd_limit(config: &Config) {
    let want = u64::from(config.max_connections) * u64::from(config.threads) + 64;
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
    let mut line = IntervalLine::default();
    let mut stopping = false;
    server.on_tick(
        every,
        Box::new(move |stats, sink, elapsed| {
            line.maybe_print(interval, &stats.counters, stats, elapsed);
            if !stopping && watch.tick(sink, SystemTime::now()) {
                stopping = true;
                handle.request();
            }
        }),
    );
}

/// The `--stats-interval` line: totals and rates since the last one.
#[derive(Default)]
struct IntervalLine {
    prev: Counters,
    last: Duration,
}

impl IntervalLine {
    fn maybe_print(
        &mut self,
        interval: Option<Duration>,
        now: &Counters,
        stats: &smtpsink::stats::Stats,
        elapsed: Duration,
    ) {
        let Some(i) = interval else { return };
        let since = elapsed.saturating_sub(self.last);
        if since >= i {
            eprintln!("{}", stats.interval_line(&self.prev, elapsed, since));
            self.prev = *now;
            self.last = elapsed;
        }
    }
}

/// One loop, or `--threads N` of them.
fn serve<S, W>(config: &Config, make_sink: fn() -> S, what: &str, watch: W) -> Result<(), String>
where
    S: Sink + Summary + Merge + Send + 'static,
    W: Watch<S>,
{
    if config.threads > 1 {
        serve_group(config, make_sink, what, watch)
    } else {
        serve_with(config, |_| make_sink(), what, watch)
    }
}

/// Without --seed a fresh one each start, printed so a run can be replayed.
fn seed(config: &Config) -> u64 {
    config.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
    })
}

/// Loop `index` as `config` says, its rules seeded with `seed + index`.
fn build<S: Sink>(
    config: &Config,
    make_sink: impl FnOnce(Completer) -> S,
    seed: u64,
    index: u16,
) -> Result<Server<S>, String> {
    let mut server = Server::from_config_with(config, make_sink)?;
    let engine = config.loop_engine(seed, index)?;
    if let (Some(engine), 0) = (&engine, index) {
        eprintln!(
            "smtpsink: {} rule(s){}{}, seed {}{}",
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
            engine.seed(),
            if config.threads > 1 {
                " (loop i: seed + i)"
            } else {
                ""
            }
        );
    }
    server.set_rules(engine, seed.wrapping_add(u64::from(index)));
    Ok(server)
}

/// The "listening on" line.
fn announce<S: Sink>(server: &Server<S>, config: &Config, what: &str) {
    let tls = server.tls_addrs();
    let mut addrs: Vec<String> = server
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
    addrs.extend(
        server
            .unix_paths()
            .iter()
            .map(|p| ListenOn::Unix(p.to_path_buf()).to_string()),
    );
    let offers = match (config.no_tls, config.no_auth) {
        (true, true) => "",
        (true, false) => ", AUTH",
        (false, true) => ", STARTTLS",
        (false, false) => ", STARTTLS, AUTH",
    };
    let loops = if config.threads > 1 {
        format!(", {} event loops", config.threads)
    } else {
        String::new()
    };
    eprintln!(
        "smtpsink: listening on {} ({what}{offers}{loops})",
        addrs.join(", ")
    );
}

/// Signals are turned into shutdown requests (to every loop) on a tiny
/// thread, so a reactor only ever sees its own waker.
fn on_signals(handles: Vec<ShutdownHandle>) -> Result<(), String> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            for h in &handles {
                h.request();
            }
        }
    });
    Ok(())
}

/// Serves with the sink `make_sink` builds from the loop's completer, on
/// this thread.
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
    let mut server = build(config, make_sink, seed(config), 0)?;
    if let Some(addr) = config.control {
        let bound = server
            .serve_control(addr)
            .map_err(|e| format!("control endpoint: {e}"))?;
        announce_control(bound);
    }
    let handle = server.shutdown_handle();
    install_tick(&mut server, config, watch, handle.clone());
    announce(&server, config, what);
    on_signals(vec![handle])?;
    let report = server
        .run()
        .map_err(|e| format!("event loop failed: {e}"))?;
    print_report(config, &report, &[])
}

fn announce_control(bound: std::net::SocketAddr) {
    eprintln!(
        "smtpsink: control endpoint on http://{bound}/ (metrics, stats, rules, reset, health)"
    );
}

/// How often the reporting side of several loops looks at them: the sink's
/// chores, `--exit-after-messages`, a loop that ended.
const GROUP_TICK: Duration = Duration::from_millis(100);

/// The loops of `--threads N`, bound and ready.
fn build_group<S: Sink>(config: &Config, make_sink: fn() -> S) -> Result<Vec<Server<S>>, String> {
    let all_tcp = config.tcp_listen();
    for addr in all_tcp
        .iter()
        .chain(&config.listen_tls)
        .chain(&config.listen_lmtp)
        .chain(&config.listen_proxy)
    {
        listener::check_free(*addr).map_err(|e| e.to_string())?;
    }
    let seed = seed(config);
    // Counted over all loops here, not per loop.
    let mut each = config.clone();
    each.exit_after_messages = None;
    let first = build(&each, |_| make_sink(), seed, 0)?;
    // The others join loop 0's sockets (its real ports when 0 was asked
    // for); UNIX listeners stay with loop 0.
    let tls = first.tls_addrs();
    // With --lmtp every listener speaks LMTP: then all are --listen ones.
    let lmtp = if config.lmtp {
        Vec::new()
    } else {
        first.lmtp_addrs()
    };
    // Likewise with --proxy-protocol every listener expects the header.
    let proxied = if config.proxy_protocol {
        Vec::new()
    } else {
        first.proxied_addrs()
    };
    each.listen = first
        .local_addrs()
        .iter()
        .filter(|a| !tls.contains(a) && !lmtp.contains(a) && !proxied.contains(a))
        .map(|a| ListenOn::Tcp(*a))
        .collect();
    each.listen_tls = tls;
    each.listen_lmtp = lmtp;
    each.listen_proxy = proxied;
    let mut servers = vec![first];
    for i in 1..config.threads {
        servers.push(build(&each, |_| make_sink(), seed, i)?);
    }
    Ok(servers)
}

/// `--threads N`: N loops on their own threads; this thread serves the
/// control endpoint and does the reporting from their merged figures.
fn serve_group<S, W>(
    config: &Config,
    make_sink: fn() -> S,
    what: &str,
    mut watch: W,
) -> Result<(), String>
where
    S: Sink + Summary + Merge + Send + 'static,
    W: Watch<S>,
{
    raise_fd_limit(config);
    let servers = build_group(config, make_sink)?;
    let mut poll = mio::Poll::new().map_err(|e| format!("cannot poll: {e}"))?;
    let mut port = match config.control {
        Some(addr) => {
            let p = ControlPort::bind(addr, poll.registry())
                .map_err(|e| format!("control endpoint: {e}"))?;
            announce_control(p.addr());
            Some(p)
        }
        None => None,
    };
    let settings = config.settings();
    if let Some(s) = servers.first() {
        announce(s, config, what);
    }
    let group = Group::spawn(servers);
    on_signals(group.handles())?;

    let started = Instant::now();
    let mut events = mio::Events::with_capacity(64);
    let mut next_tick = started + GROUP_TICK;
    let mut line = IntervalLine::default();
    let interval = config.stats_interval();
    // What the watch decided on the last merged copy (the run it expects,
    // whether the missing are lost): merged copies are made afresh.
    let mut earlier: Option<S> = None;
    let looks =
        interval.is_some() || watch.every().is_some() || config.exit_after_messages.is_some();
    let mut stopping = false;
    while !group.any_finished() {
        let wake = [
            Some(next_tick),
            port.as_ref().and_then(ControlPort::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_tick);
        if let Err(e) = poll.poll(
            &mut events,
            Some(wake.saturating_duration_since(Instant::now())),
        ) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                group.stop();
                return Err(format!("control loop failed: {e}"));
            }
        }
        let now = Instant::now();
        if let Some(p) = port.as_mut() {
            let mut target = GroupControl {
                group: &group,
                settings: &settings,
            };
            for ev in &events {
                p.event(ev.token(), poll.registry(), now, &mut target);
            }
            p.expire(now, poll.registry());
        }
        if now < next_tick {
            continue;
        }
        next_tick = now + GROUP_TICK;
        if !looks {
            continue;
        }
        let Some(mut snap) = group.snapshot() else {
            continue;
        };
        line.maybe_print(interval, &snap.stats.counters, &snap.stats, now - started);
        if let Some(e) = &earlier {
            snap.sink.adopt(e);
        }
        let c = &snap.stats.counters;
        let enough = config
            .exit_after_messages
            .is_some_and(|n| c.messages + c.messages_rejected + c.messages_dropped >= n);
        if !stopping && (enough || watch.tick(&mut snap.sink, SystemTime::now())) {
            stopping = true;
            group.stop();
        }
        earlier = Some(snap.sink);
    }
    group.stop();
    if let Some(p) = port.as_mut() {
        p.close_all(poll.registry());
    }
    let (mut report, connections) = group
        .join()
        .map_err(|e| format!("event loop failed: {e}"))?;
    if let Some(e) = &earlier {
        report.sink.adopt(e);
    }
    print_report(config, &report, &connections)
}

/// The final statistics on stdout (and `--json`); with several loops, the
/// connections each took.
fn print_report<S: Summary>(
    config: &Config,
    report: &Report<S>,
    connections: &[u64],
) -> Result<(), String> {
    print!("{}", report.stats.summary(report.elapsed));
    if connections.len() > 1 {
        let each: Vec<String> = connections.iter().map(u64::to_string).collect();
        println!(
            "  loops          {}  (connections per event loop)",
            each.join(" ")
        );
    }
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
        if connections.len() > 1 {
            j["loops"] = connections
                .iter()
                .map(|n| serde_json::json!({ "connections": n }))
                .collect();
        }
        std::fs::write(path, j.to_string() + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
