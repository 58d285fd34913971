//! The load generator's event loop: one mio `Poll` driving many
//! [`ClientSession`]s, one per connection, the same shape as the server's
//! reactor. Owns sockets, buffers, the schedule and the clock; the sessions
//! own the protocol.
//!
//! Closed loop (default): every connection starts a new message as soon as
//! its window allows. Open loop (`rate`): message k is due at `t0 + k/rate`
//! (for a timed run, only those due before the end); a due message goes to
//! an idle connection first, else waits for room, and its latency is
//! measured from when it was due (coordinated omission corrected, as wrk2
//! does) as well as from when the server could start it. When no connection
//! has room the loop sleeps until one does: falling behind is counted and
//! reported ("could not keep up"), never spun on.
//!
//! Clocks: each connection's connect is timed from its own `connect` call,
//! and the initial connections are opened a few per turn, so neither the
//! set-up nor the opening of the others is charged to a connection, and a
//! greeting is timed from the moment its connection was established.

use crate::payload::Payload;
use crate::report::{Recorder, Results};
use ipnet::IpNet;
use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use rand::RngExt;
use rustls::pki_types::ServerName;
use smtpsink::histlog::HistLog;
use smtpsink::net::tls::rustls;
use smtpsink::net::{Consumed, Flush, IoCounts, Keep, Link, ReadEnd, Stream, Transport};
use smtpsink::proto::client::{
    ClientSession, ClientSettings, Event, MessageSource, Phase, Stage, Tls,
};
use smtpsink::proto::proxy;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The servers to load: connection k goes to the (k mod n)th.
    pub targets: Vec<Target>,
    /// Connections kept open at once.
    pub connections: usize,
    /// Stop after this many messages (`None`: run for `duration`).
    pub messages: Option<u64>,
    /// Stop starting messages after this long (`None`: run to `messages`).
    pub duration: Option<Duration>,
    /// Messages per connection before it is closed and replaced, drawn
    /// for each connection from this range (0: no limit).
    pub per_connection: RangeInclusive<u64>,
    /// Seeds the draws (of `per_connection`): the same seed, the same run.
    pub seed: u64,
    /// Open loop: messages per second over all connections.
    pub rate: Option<f64>,
    /// Measurements start after this long.
    pub warmup: Duration,
    /// No reply for this long counts as a timeout and closes the connection.
    pub timeout: Duration,
    /// Stop the run once errors exceed this.
    pub max_errors: Option<u64>,
    /// How each connection speaks SMTP.
    pub client: ClientSettings,
    /// Print a progress line to stderr about once a second.
    pub progress: bool,
    /// TLS, if any connection uses it.
    pub tls: Option<TlsOptions>,
    /// Begin at this wall-clock time (several generators together).
    pub start_at: Option<SystemTime>,
    /// Local addresses to connect from, one per connection in turn
    /// (empty: the system picks).
    pub bind: Vec<IpAddr>,
    /// Speak as a proxy: each connection starts with a PROXY protocol
    /// header naming a client address drawn from `.1`.
    pub proxy: Option<(proxy::Version, IpNet)>,
    /// Name a client drawn from this network with XCLIENT, per connection.
    pub xclient: Option<IpNet>,
    /// This loop's share of a run split over threads.
    pub lane: Lane,
}

/// One of `count` independent loops (threads) that share a run, nothing
/// else: the loop takes the message sequence numbers `index`, `index +
/// count`, ..., so the lanes' messages are exactly the run's (`--messages`
/// and the open loop's schedule `k/rate` are the same as for one loop), and
/// the numbers stay unique for `--summary` and the sink's `--verify`.
#[derive(Debug, Clone)]
pub struct Lane {
    /// This loop's place, from 0.
    pub index: u64,
    /// Loops in the run.
    pub count: u64,
    /// Errors counted by all of them, for `max_errors`.
    pub errors: Arc<AtomicU64>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            index: 0,
            count: 1,
            errors: Arc::default(),
        }
    }
}

impl Lane {
    /// Of the sequence numbers below `n`, how many are this lane's.
    pub fn share(&self, n: u64) -> u64 {
        n.saturating_sub(self.index).div_ceil(self.count.max(1))
    }
}

/// A server to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Over TCP.
    Tcp(SocketAddr),
    /// Over the UNIX stream socket at this path.
    Unix(PathBuf),
}

impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Target::Tcp(a)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How far in the past `--start-at` may be and still start at once: clocks
/// of machines that start together differ a little, a late launch more.
const START_LATE: Duration = Duration::from_secs(1);

/// How connections use TLS.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The client configuration (trust, resumption).
    pub config: Arc<rustls::ClientConfig>,
    /// The name asked for (SNI) and checked in the certificate.
    pub name: ServerName<'static>,
    /// TLS from the first byte, or STARTTLS.
    pub implicit: bool,
    /// The share of connections that use TLS (spread evenly: connection k
    /// does when `floor((k+1)·f) > floor(k·f)`).
    pub fraction: f64,
}

/// Why a run could not be carried out at all.
#[derive(Debug)]
pub enum RunError {
    /// No connection could ever be established.
    Unreachable(Target, io::Error),
    /// The event loop itself failed.
    Io(io::Error),
    /// The start time had passed by this much.
    StartPassed(Duration),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Unreachable(a, e) => write!(f, "cannot connect to {a}: {}", plain(e)),
            RunError::Io(e) => write!(f, "event loop failed: {e}"),
            RunError::StartPassed(d) => {
                write!(f, "the start time passed {:.1} s ago", d.as_secs_f64())
            }
        }
    }
}

fn plain(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => smtpsink::net::plain_error(e),
    }
}

struct Conn {
    link: Link,
    session: Option<ClientSession>,
    connecting_since: Instant,
    /// How this connection is secured.
    tls: Tls,
    /// A TLS handshake under way: the start of its `tls` phase.
    tls_since: Option<Instant>,
    /// The client XCLIENT names, if any.
    xclient: Option<IpAddr>,
    /// Listed in `touched` for this turn.
    touched: bool,
    /// Listed in the driver's `idle`.
    idle_listed: bool,
    /// Messages it carries before it is replaced (0: no limit).
    limit: u64,
    /// The server it connects to (an index into the targets).
    target: usize,
}

/// The client keeps its buffers: the same message sizes come again and again.
const KEEP: Keep = Keep {
    carry: usize::MAX,
    out: usize::MAX,
};

const SCRATCH: usize = 64 * 1024;
/// XCLIENT draws its addresses apart from a PROXY header's.
const XCLIENT_SALT: u64 = 0x0058_434c_4945_4e54;
/// Connections opened per loop turn at the start: few enough that the
/// events of the first ones are seen promptly.
const OPEN_BATCH: usize = 8;
/// Wait before replacing a connection whose connect failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

struct Driver<'a> {
    opts: &'a Options,
    src: &'a dyn MessageSource,
    poll: Poll,
    conns: slab::Slab<Conn>,
    rec: Recorder,
    events: Vec<Event>,
    scratch: Vec<u8>,
    next_seq: u64,
    t0: Instant,
    /// No new messages after this (duration runs, errors, the end).
    stop_starting: bool,
    ever_connected: bool,
    last_connect_error: Option<(usize, io::Error)>,
    /// Servers (indexes) a connect to failed (a run gives up only when all
    /// have, before any connect succeeded).
    refused: Vec<usize>,
    connect_failures: u64,
    /// Connections to open again at these times.
    reconnects: Vec<Instant>,
    /// Initial connections not yet opened.
    to_open: usize,
    /// Bytes and syscalls on the wire.
    io: IoCounts,
    cursor: usize,
    /// Connections that had events (or new output) this turn.
    touched: Vec<usize>,
    /// Open loop: connections seen idle (greeted, nothing in flight), the
    /// first to take a due message; checked again when taken.
    idle: VecDeque<usize>,
    /// Connections opened so far (for the TLS fraction).
    opened: u64,
    /// Some connection became ready (greeted, secured, logged in).
    any_ready: bool,
    /// Connections that ended before they were ready.
    unready_ends: u64,
    /// Errors already added to the lanes' shared count.
    errors_shared: u64,
}

/// Runs the load; returns what was measured. With `hist_log`, interval
/// histograms are written to that file every second.
pub fn run(
    opts: &Options,
    payload: &Payload,
    hist_log: Option<PathBuf>,
) -> Result<Results, RunError> {
    let log = hist_log
        .map(|p| new_hist_log(&p).map(|l| Arc::new(Mutex::new(l))))
        .transpose()
        .map_err(RunError::Io)?;
    run_lane(opts, payload, log)
}

/// A `--hist-log` for the loops of one run to share.
pub fn new_hist_log(path: &std::path::Path) -> io::Result<HistLog> {
    HistLog::create(
        path,
        "smtpload latency log, values in microseconds",
        SystemTime::now(),
    )
}

/// Runs `opts.lane`'s share of the load, writing its intervals to `log`
/// (which other lanes may share: each adds its own interval lines, and
/// readers add them up).
pub fn run_lane(
    opts: &Options,
    payload: &Payload,
    log: Option<Arc<Mutex<HistLog>>>,
) -> Result<Results, RunError> {
    if opts.targets.is_empty() {
        return Err(RunError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no server to connect to",
        )));
    }
    if let Some(at) = opts.start_at {
        wait_until(at)?;
    }
    let poll = Poll::new().map_err(RunError::Io)?;
    let mut rec = Recorder::new(opts);
    rec.set_message_len(payload.message_len());
    if let Some(log) = log {
        rec.log_to(log);
    }
    // The schedule starts once everything is set up.
    let t0 = Instant::now();
    rec.begin(t0);
    let mut d = Driver {
        opts,
        src: payload,
        poll,
        conns: slab::Slab::new(),
        rec,
        events: Vec::new(),
        scratch: vec![0; SCRATCH],
        next_seq: opts.lane.index,
        t0,
        stop_starting: false,
        ever_connected: false,
        last_connect_error: None,
        refused: Vec::new(),
        connect_failures: 0,
        reconnects: Vec::new(),
        to_open: opts.connections.max(1),
        io: IoCounts::default(),
        cursor: 0,
        touched: Vec::new(),
        idle: VecDeque::new(),
        opened: 0,
        any_ready: false,
        unready_ends: 0,
        errors_shared: 0,
    };
    d.run_loop()?;
    let now = Instant::now();
    let scheduled = d.scheduled(now);
    Ok(d.rec.finish(now, scheduled, d.io))
}

/// How many messages connection `k` (counted from 0) carries before it is
/// replaced: drawn uniformly from `range`, the same for the same `seed`
/// (0: no limit).
pub fn connection_limit(range: &RangeInclusive<u64>, seed: u64, k: u64) -> u64 {
    if range.start() >= range.end() {
        return *range.start();
    }
    smtpsink::rules::session_rng(seed, k).random_range(range.clone())
}

/// The client address connection `k` claims in its PROXY header: a host
/// of `net` and a port from 1024 up, drawn (the same for the same `seed`).
pub fn proxy_client(net: &IpNet, seed: u64, k: u64) -> SocketAddr {
    // Not the stream of `connection_limit`: the two draws are independent.
    let mut rng = smtpsink::rules::session_rng(seed.rotate_left(17) ^ 0x0050_524f_5859, k);
    let port = rng.random_range(1024..=u16::MAX);
    let ip = match net {
        // The network's bits, and random host bits below them.
        IpNet::V4(n) => {
            let host = rng
                .random::<u32>()
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
        }
        IpNet::V6(n) => {
            let host = rng
                .random::<u128>()
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
        }
    };
    SocketAddr::new(ip, port)
}

/// Sleeps until `at` (wall clock); an error when it passed more than
/// [`START_LATE`] ago.
fn wait_until(at: SystemTime) -> Result<(), RunError> {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => std::thread::sleep(ahead),
        Err(e) if e.duration() > START_LATE => return Err(RunError::StartPassed(e.duration())),
        Err(_) => {}
    }
    Ok(())
}

/// A non-blocking connect to `to` from `from` (any port).
fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::new(from, 0).into())?;
    match sock.connect(&to.into()) {
        Ok(()) => {}
        // Non-blocking: the handshake goes on; WRITABLE says when it ended.
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

impl Driver<'_> {
    /// How the `k`th connection to its server is secured.
    fn tls_for(&self, k: u64) -> Tls {
        let Some(t) = &self.opts.tls else {
            return Tls::Off;
        };
        // Evenly spread: connection k uses TLS when floor((k+1)f) > floor(kf).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let uses = ((k + 1) as f64 * t.fraction).floor() > (k as f64 * t.fraction).floor();
        match (uses, t.implicit) {
            (false, _) => Tls::Off,
            (true, true) => Tls::Implicit,
            (true, false) => Tls::StartTls,
        }
    }

    /// A TLS client connection, as the options say.
    fn tls_conn(&self) -> Option<rustls::client::UnbufferedClientConnection> {
        let t = self.opts.tls.as_ref()?;
        rustls::client::UnbufferedClientConnection::new(Arc::clone(&t.config), t.name.clone()).ok()
    }

    /// Opens one connection; its connect is timed from here.
    fn open(&mut self) {
        let since = Instant::now();
        let k = self.opened;
        self.opened += 1;
        // Connection k goes to server k mod n, as its (k div n)th there:
        // the TLS share and the local addresses spread over each server's
        // own connections, not over every nth of them.
        let n = self.opts.targets.len().max(1) as u64;
        // Lanes start at different servers, so each server gets its share
        // of every lane's connections; draws (limits, proxy clients) take
        // the run-wide connection number, unique across lanes.
        let lane = &self.opts.lane;
        let (nth, j) = ((k + lane.index) % n, k / n);
        let k = k * lane.count + lane.index;
        let Some((target, to)) = usize::try_from(nth)
            .ok()
            .and_then(|i| Some((i, self.opts.targets.get(i)?)))
        else {
            return;
        };
        let tls = self.tls_for(j);
        let bind = usize::try_from(j)
            .ok()
            .and_then(|j| self.opts.bind.get(j % self.opts.bind.len().max(1)));
        // `--bind` and `--proxy` are refused for UNIX targets at start.
        let sock = match (to, bind) {
            (Target::Tcp(to), Some(&ip)) => connect_from(ip, *to).map(Stream::from),
            (Target::Tcp(to), None) => TcpStream::connect(*to).map(Stream::from),
            (Target::Unix(path), _) => UnixStream::connect(path).map(Stream::from),
        };
        match sock {
            Ok(sock) => {
                // On loopback the handshake often completes inside the call
                // (on a UNIX socket always): then the connection is
                // established now, and its greeting is timed from here
                // rather than from the next poll.
                let established = sock.connected().then(Instant::now);
                // Only now for implicit TLS: making a client connection takes
                // a cached session ticket, which a STARTTLS connection must
                // find after its 220.
                let implicit = (tls == Tls::Implicit).then(|| self.tls_conn()).flatten();
                let transport = match implicit {
                    Some(c) => Transport::tls_client(sock, c),
                    None => Transport::Plain(sock),
                };
                let mut link = Link::new(transport, KEEP);
                if let (Some((version, net)), Target::Tcp(to)) = (&self.opts.proxy, to) {
                    let from = proxy_client(net, self.opts.seed, k);
                    let header = proxy::header(*version, from, *to).unwrap_or_default();
                    if !link.transport_mut().send_first(&header) {
                        link.out_mut().extend_from_slice(&header);
                    }
                }
                let entry = self.conns.vacant_entry();
                let token = Token(entry.key());
                // WRITABLE says when the connect has finished.
                let interest = Interest::READABLE | Interest::WRITABLE;
                if link
                    .register(self.poll.registry(), token, interest)
                    .is_err()
                {
                    return;
                }
                let xclient = self
                    .opts
                    .xclient
                    .map(|net| proxy_client(&net, self.opts.seed ^ XCLIENT_SALT, k).ip());
                let session = established.map(|at| {
                    self.ever_connected = true;
                    self.rec.connected(at - since, at);
                    ClientSession::with_tls(at, tls).xclient_as(xclient)
                });
                let tls_since = established.filter(|_| tls == Tls::Implicit);
                entry.insert(Conn {
                    link,
                    session,
                    connecting_since: since,
                    tls,
                    tls_since,
                    xclient,
                    touched: false,
                    idle_listed: false,
                    limit: connection_limit(&self.opts.per_connection, self.opts.seed, k),
                    target,
                });
            }
            Err(e) => self.connect_failed(target, e, since),
        }
    }

    fn connect_failed(&mut self, target: usize, e: io::Error, now: Instant) {
        self.connect_failures += 1;
        if !self.refused.contains(&target) {
            self.refused.push(target);
        }
        self.rec.error(Stage::Connect, 0);
        self.last_connect_error = Some((target, e));
        self.reconnects.push(now + RECONNECT_BACKOFF);
    }

    /// Messages may still be started.
    fn work_left(&self) -> bool {
        !self.stop_starting
            && self.opts.messages.is_none_or(|m| self.next_seq < m)
            && self.offset(self.next_seq).is_some()
    }

    /// When message `seq` is due, from the start: in an open loop `seq/rate`
    /// if that is before the end of a timed run (a message due exactly at
    /// the end is not sent); in a closed loop always "now" (zero).
    fn offset(&self, seq: u64) -> Option<Duration> {
        let Some(rate) = self.opts.rate else {
            return Some(Duration::ZERO);
        };
        let at = Duration::try_from_secs_f64(seq as f64 / rate).ok()?;
        self.opts.duration.is_none_or(|d| at < d).then_some(at)
    }

    /// The schedule's next due time, if a message is due at all.
    fn due(&self, now: Instant) -> Option<Instant> {
        if !self.work_left() {
            return None;
        }
        match self.opts.rate {
            None => Some(now),
            Some(_) => self.offset(self.next_seq).map(|o| self.t0 + o),
        }
    }

    /// Open loop: messages the schedule had due by `now` (never more than
    /// a timed run's schedule or `messages`), for the accounting of what was
    /// never started. `None` in a closed loop.
    fn scheduled(&self, now: Instant) -> Option<u64> {
        let rate = self.opts.rate?;
        let elapsed = now.saturating_duration_since(self.t0);
        let due_by = |k: u64| self.offset(k).is_some_and(|o| o <= elapsed);
        let until = self.opts.duration.map_or(elapsed, |d| d.min(elapsed));
        // A first guess (rate is positive and finite, so the cast saturates
        // harmlessly); the loops make it exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let mut n = (until.as_secs_f64() * rate) as u64;
        while due_by(n) {
            n += 1;
        }
        while n > 0 && !due_by(n - 1) {
            n -= 1;
        }
        let n = self.opts.messages.map_or(n, |m| n.min(m));
        Some(self.opts.lane.share(n))
    }

    /// Open loop: messages due now and not started, and how late the oldest is.
    fn behind(&self, now: Instant) -> Option<(u64, Duration)> {
        self.opts.rate?;
        let due = self.due(now).filter(|d| *d <= now)?;
        let scheduled = self.scheduled(now).unwrap_or(0);
        let started = self.opts.lane.share(self.next_seq);
        Some((scheduled.saturating_sub(started).max(1), now - due))
    }

    fn run_loop(&mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = self.t0 + Duration::from_secs(1);
        let deadline = self.opts.duration.map(|d| self.t0 + d);
        loop {
            for _ in 0..OPEN_BATCH.min(self.to_open) {
                self.to_open -= 1;
                self.open();
            }
            let now = Instant::now();
            self.dispatch(now);
            self.flush_touched();
            if self.finished() {
                return Ok(());
            }
            let mut wake = next_tick;
            // A message already due could not be started: no connection has
            // room, and only a reply (an event) can make some. Don't spin.
            if let Some(at) = self
                .due(now)
                .filter(|at| self.opts.rate.is_some() && *at > now)
            {
                wake = wake.min(at);
            }
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if let Some(r) = self.reconnects.iter().min() {
                wake = wake.min(*r);
            }
            let mut timeout = wake.saturating_duration_since(now);
            if self.to_open > 0 {
                timeout = Duration::ZERO;
            } else if self.opts.rate.is_some() {
                // mio rounds poll timeouts up to whole milliseconds: sleep a
                // millisecond short and spin the rest, so messages leave on
                // time rather than up to 1 ms late.
                timeout = timeout.saturating_sub(Duration::from_millis(1));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(RunError::Io(e));
                }
            }
            let now = Instant::now();
            for ev in &events {
                let key = ev.token().0;
                self.serve(
                    key,
                    ev.is_writable(),
                    ev.is_read_closed() || ev.is_error(),
                    now,
                );
            }
            if deadline.is_some_and(|d| now >= d) {
                self.stop_starting = true;
            }
            // Every lane stops once the run's errors exceed the limit.
            let new = self.rec.error_count() - self.errors_shared;
            self.errors_shared += new;
            let errors = self.opts.lane.errors.fetch_add(new, Ordering::Relaxed) + new;
            if self.opts.max_errors.is_some_and(|m| errors > m) {
                self.stop_starting = true;
                self.rec.aborted = Some("too many errors".into());
                self.close_all(now);
                return Ok(());
            }
            if !self.ever_connected
                && self.to_open == 0
                && self.connect_failures >= self.opts.connections.max(1) as u64
                && self.refused.len() >= self.opts.targets.len()
            {
                let (target, e) = self
                    .last_connect_error
                    .take()
                    .unwrap_or_else(|| (0, io::Error::from(io::ErrorKind::ConnectionRefused)));
                let target = self.opts.targets.get(target).cloned();
                let unspecified = Target::Tcp(SocketAddr::from(([0, 0, 0, 0], 0)));
                return Err(RunError::Unreachable(target.unwrap_or(unspecified), e));
            }
            if now >= next_tick {
                next_tick = now + Duration::from_secs(1);
                self.check_timeouts(now);
                // One lane speaks for the run (its own share of it).
                if self.opts.progress && self.opts.lane.index == 0 {
                    eprintln!("{}", self.rec.progress_line(now, self.behind(now)));
                }
                self.rec.interval(now);
            }
            let due_reconnects = self.reconnects.iter().filter(|t| **t <= now).count();
            self.reconnects.retain(|t| *t > now);
            for _ in 0..due_reconnects {
                if self.work_left() || self.in_flight() > 0 {
                    self.open();
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.conns
            .iter()
            .map(|(_, c)| c.session.as_ref().map_or(0, ClientSession::in_flight))
            .sum()
    }

    /// Done when nothing is left to start, in flight, or open.
    fn finished(&self) -> bool {
        !self.work_left() && self.conns.is_empty() && self.to_open == 0
    }

    /// Lists `key` for this turn's dispatch and flush.
    fn touch(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.touched {
                c.touched = true;
                self.touched.push(key);
            }
        }
    }

    /// Starts due messages on connections that can take them; QUITs idle
    /// connections that have nothing more to do. The closed loop only looks
    /// at connections that had events this turn (only they can have room);
    /// the open loop and the end of the run look at all of them.
    fn dispatch(&mut self, now: Instant) {
        let open_loop = self.opts.rate.is_some();
        let mut touched = std::mem::take(&mut self.touched);
        if open_loop {
            for &key in &touched {
                self.list_if_idle(key);
            }
            // Due messages go to idle connections first, taken from the
            // list in O(1) each: walking all 19,000 connections for every
            // due message made the generator the bottleneck.
            self.start_on_idle(now, &mut touched);
        }
        // Every connection is looked at only when a message is still due
        // (none is idle: the walk finds room in a busy one) or at the end.
        let due_now = open_loop && self.due(now).is_some_and(|d| d <= now);
        let everyone = due_now || !self.work_left();
        let keys: Vec<usize> = if everyone {
            // Those touched stay listed (and flagged) for the flush.
            self.touched = touched;
            self.conns.iter().map(|(k, _)| k).collect()
        } else {
            touched
        };
        if !keys.is_empty() {
            // Round robin, one message per connection per pass, so due
            // messages spread over the connections before any takes two;
            // in an open loop idle connections first, so a message does not
            // queue behind another while a connection is free.
            let passes: &[bool] = if self.opts.rate.is_some() {
                &[true, false]
            } else {
                &[false]
            };
            for &idle_only in passes {
                let mut started_any = true;
                while started_any {
                    started_any = false;
                    for i in 0..keys.len() {
                        let key = keys[(self.cursor + i) % keys.len()];
                        if self.start_one(key, idle_only, now) {
                            started_any = true;
                        }
                    }
                    self.cursor = (self.cursor + 1) % keys.len();
                }
            }
            for &key in &keys {
                self.say_goodbye(key, now);
            }
        }
        if everyone {
            for key in keys {
                if self.conns.get(key).is_some_and(|c| c.link.pending() > 0) {
                    self.touch(key);
                }
            }
        } else {
            self.touched = keys;
        }
    }

    /// Lists `key` among the idle connections if it is idle and not listed.
    fn list_if_idle(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let idle = conn.session.as_ref().is_some_and(ClientSession::is_idle);
        if idle && !conn.idle_listed {
            conn.idle_listed = true;
            self.idle.push_back(key);
        }
    }

    /// Open loop: starts due messages on listed idle connections (each
    /// checked again: it may have closed, or its slot be another's now);
    /// those started join `touched`.
    fn start_on_idle(&mut self, now: Instant, touched: &mut Vec<usize>) {
        while self.due(now).is_some_and(|d| d <= now) {
            let Some(key) = self.idle.pop_front() else {
                return;
            };
            if let Some(c) = self.conns.get_mut(key) {
                c.idle_listed = false;
            }
            if self.start_one(key, true, now) {
                self.touch_into(key, touched);
            }
        }
    }

    /// Marks `key` touched into `touched` (a list taken out of `self`).
    fn touch_into(&mut self, key: usize, touched: &mut Vec<usize>) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.touched {
                c.touched = true;
                touched.push(key);
            }
        }
    }

    /// Starts one due message on `key` if it has room (and, with
    /// `idle_only`, nothing in flight); true if it did.
    fn start_one(&mut self, key: usize, idle_only: bool, now: Instant) -> bool {
        let Some(due) = self.due(now).filter(|d| *d <= now) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(session) = conn.session.as_mut() else {
            return false;
        };
        let s = &self.opts.client;
        let spent = conn.limit > 0 && session.started() >= conn.limit;
        if spent || !session.can_start(s) || (idle_only && session.in_flight() > 0) {
            return false;
        }
        let due = self.opts.rate.map(|_| due);
        session.start(s, self.src, self.next_seq, due, now, conn.link.out_mut());
        self.rec.started(due, now);
        self.next_seq += self.opts.lane.count;
        true
    }

    /// QUITs `key` if it is idle and has nothing more to do.
    fn say_goodbye(&mut self, key: usize, now: Instant) {
        let work_left = self.work_left();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let limit = conn.limit;
        // At the end, a connection that never got as far as its EHLO reply
        // carries nothing: close it rather than wait for its timeout.
        let unready = conn
            .session
            .as_ref()
            .is_none_or(|s| !s.is_ready() && s.in_flight() == 0);
        if !work_left && unready {
            return self.drop_conn(key, None, now);
        }
        let Some(session) = conn.session.as_mut() else {
            return;
        };
        let spent = limit > 0 && session.started() >= limit;
        let unusable = session.lacks_chunking(&self.opts.client);
        if session.is_idle() && (!work_left || spent || unusable) {
            if unusable {
                self.rec.error(Stage::Ehlo, 0);
                self.rec.aborted = Some("the server does not offer CHUNKING".into());
                self.stop_starting = true;
            }
            session.quit(self.src, now, conn.link.out_mut());
        }
    }

    fn serve(&mut self, key: usize, writable: bool, hup: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.session.is_none() {
            if !writable && !hup {
                return;
            }
            // The connect finished, one way or the other.
            let t = conn.link.transport();
            match t.take_error() {
                Ok(None) if t.connected() => {
                    self.ever_connected = true;
                    self.rec.connected(now - conn.connecting_since, now);
                    conn.session =
                        Some(ClientSession::with_tls(now, conn.tls).xclient_as(conn.xclient));
                    if conn.tls == Tls::Implicit {
                        conn.tls_since = Some(now);
                    }
                }
                Ok(_) if !hup => return, // spurious: still connecting
                Ok(_) => {
                    let e = io::Error::from(io::ErrorKind::ConnectionRefused);
                    return self.drop_conn(key, Some(e), now);
                }
                Err(e) => return self.drop_conn(key, Some(e), now),
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let io = &mut self.io;
        if writable && conn.link.flush(io) == Flush::Failed {
            return self.lost(key, now);
        }
        if conn.tls_since.is_some() && !self.handshake(key, now) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let io = &mut self.io;
        let Some(session) = conn.session.as_mut() else {
            return;
        };
        let (opts, src, events) = (self.opts, self.src, &mut self.events);
        let end = conn
            .link
            .read_with(&mut self.scratch, usize::MAX, hup, io, |input, out| {
                let used = session.on_input(&opts.client, src, input, now, out, events);
                Consumed {
                    used,
                    stop: session.is_closed(),
                }
            });
        let eof = end == ReadEnd::Closed;
        self.drain_events();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.session.as_ref().is_some_and(ClientSession::wants_tls) && !eof {
            // STARTTLS answered: whatever the server sent after its 220 is
            // dropped unread with the carry; the hello goes out now.
            let Some(tls) = self.tls_conn() else {
                return self.tls_failed(key, now);
            };
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            conn.link.start_tls(tls);
            conn.tls_since = conn.session.as_ref().map(ClientSession::starttls_sent);
            if !self.handshake(key, now) {
                return;
            }
            return self.touch(key);
        }
        if conn.tls_since.is_none() && conn.link.transport().tls_failure().is_some() {
            return self.tls_failed(key, now);
        }
        let closed = conn.session.as_ref().is_some_and(ClientSession::is_closed);
        if eof || closed {
            let _ = conn.link.flush(&mut self.io);
            self.lost(key, now);
        } else {
            self.touch(key);
        }
    }

    /// Drives `key`'s TLS handshake; once it is done, records it and lets
    /// the session go on. False when the connection was dropped.
    fn handshake(&mut self, key: usize, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        match conn.link.transport_mut().handshake() {
            Ok(true) => {
                // The client's first flight (or more) may wait to be sent.
                self.touch(key);
                true
            }
            Ok(false) => {
                let since = conn.tls_since.take().unwrap_or(now);
                if let Some(info) = conn.link.transport().tls_info() {
                    self.rec.tls_handshake(info, now - since);
                }
                self.events.push(Event::Latency(Phase::Tls, now - since));
                if let Some(session) = conn.session.as_mut() {
                    session.handshake_done(&self.opts.client, now, conn.link.out_mut());
                }
                self.drain_events();
                self.touch(key);
                true
            }
            Err(_) => {
                self.tls_failed(key, now);
                false
            }
        }
    }

    /// The TLS handshake (or a record) failed: counted, the connection ends.
    fn tls_failed(&mut self, key: usize, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            if let Some(why) = conn.link.transport().tls_failure() {
                self.rec.tls_failure(why);
            }
            if let Some(s) = conn.session.as_mut() {
                s.closed(Some(Stage::Tls), now, &mut self.events);
            }
        }
        self.drain_events();
        self.drop_conn(key, None, now);
    }

    fn drain_events(&mut self) {
        for e in self.events.drain(..) {
            // A server that does not offer what the run needs will not on
            // the next connection either: stop rather than reconnect.
            let missing = match e {
                Event::Error {
                    stage: Stage::StartTls,
                    code: 0,
                } => Some("STARTTLS"),
                Event::Error {
                    stage: Stage::Auth,
                    code: 0,
                } => Some("AUTH with that mechanism"),
                _ => None,
            };
            if let Some(what) = missing {
                if self.rec.aborted.is_none() {
                    self.rec.aborted = Some(format!("the server does not offer {what}"));
                }
                self.stop_starting = true;
            }
            self.rec.event(e);
        }
    }

    /// The connection ended: fail what was in flight, replace it if needed.
    fn lost(&mut self, key: usize, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            if let Some(s) = conn.session.as_mut() {
                s.closed(Some(Stage::Disconnect), now, &mut self.events);
            }
        }
        self.drain_events();
        self.drop_conn(key, None, now);
    }

    fn drop_conn(&mut self, key: usize, connect_error: Option<io::Error>, now: Instant) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        conn.link.deregister(self.poll.registry());
        let unready = conn.session.as_ref().is_some_and(|s| !s.ever_ready());
        self.any_ready |= conn.session.as_ref().is_some_and(ClientSession::ever_ready);
        match connect_error {
            Some(e) => self.connect_failed(conn.target, e, now),
            None if unready => self.unready(now),
            None if self.work_left() => self.open(),
            None => {}
        }
    }

    /// A connection ended before it was ready (greeting refused, TLS or
    /// AUTH failed): replaced after a pause, and when none has ever got
    /// ready after three rounds of connections, the run stops — the server
    /// refuses everyone, and reconnecting at full speed would only hammer it.
    fn unready(&mut self, now: Instant) {
        self.unready_ends += 1;
        let limit = 3 * self.opts.connections.max(1) as u64;
        if !self.any_ready && self.unready_ends >= limit {
            self.stop_starting = true;
            if self.rec.aborted.is_none() {
                self.rec.aborted = Some(format!(
                    "no connection got ready: {} in a row ended before their first message (see errors)",
                    self.unready_ends
                ));
            }
            return;
        }
        if self.work_left() {
            self.reconnects.push(now + RECONNECT_BACKOFF);
        }
    }

    /// Writes the output of every connection touched this turn.
    fn flush_touched(&mut self) {
        let keys = std::mem::take(&mut self.touched);
        for &key in &keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.touched = false;
            if conn.session.is_none() {
                continue;
            }
            match conn.link.flush(&mut self.io) {
                Flush::Failed => self.lost(key, Instant::now()),
                Flush::Done | Flush::Blocked => {
                    let want = conn.link.pending() > 0;
                    conn.link.want_write(self.poll.registry(), Token(key), want);
                }
            }
        }
        // Keep the allocation; `lost` may have touched new connections.
        let mut keys = keys;
        keys.clear();
        keys.append(&mut self.touched);
        self.touched = keys;
    }

    fn check_timeouts(&mut self, now: Instant) {
        let t = self.opts.timeout;
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| match &c.session {
                Some(s) => s.waiting_since().is_some_and(|w| now - w >= t),
                None => now - c.connecting_since >= t,
            })
            .map(|(k, _)| k)
            .collect();
        for key in late {
            if let Some(conn) = self.conns.get_mut(key) {
                match conn.session.as_mut() {
                    Some(s) => s.closed(Some(Stage::Timeout), now, &mut self.events),
                    None => self.rec.error(Stage::Timeout, 0),
                }
            }
            self.drain_events();
            self.drop_conn(key, None, now);
        }
    }

    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key) {
                if let Some(s) = conn.session.as_mut() {
                    s.closed(None, now, &mut self.events);
                }
            }
            self.drain_events();
            if self.conns.contains(key) {
                let mut conn = self.conns.remove(key);
                conn.link.deregister(self.poll.registry());
            }
        }
    }
}
